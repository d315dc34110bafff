-- spec/ops/matmul_spec.lua — nc.matmul / nc.linear and the C nc_matmul (sgemm) against float64.
package.path = 'lua/?.lua;lua/?/init.lua;spec/ops/?.lua;' .. package.path
local nc = require 'nanochat'
local H = require 'nn_helpers'
local C = nc.C

-- flat float64 list of a tensor's (M, K) matrix at batch index list (logical order)
local function mat(t) return t:contiguous():tolist() end

describe('matmul forward vs float64', function()
    it('2-D with odd sizes M=7, K=13, N=5', function()
        local a, b = H.randn { 7, 13 }, H.randn { 13, 5 }
        local y = nc.matmul(a, b)
        assert.same({ 7, 5 }, y:shape())
        H.close(y, H.ref_matmul(a:tolist(), b:tolist(), 7, 13, 5), H.F32_ATOL * 10, H.F32_RTOL, 'matmul')
    end)

    it('transposed views map to sgemm transpose flags (a^T, b^T, both)', function()
        local at, bt = H.randn { 13, 7 }, H.randn { 5, 13 }
        local a, b = at:t(), bt:t()
        assert.is_false(a:is_contiguous())
        local want = H.ref_matmul(mat(a), mat(b), 7, 13, 5)
        H.close(nc.matmul(a, b), want, 1e-4, 1e-5, 'a^T b^T')
        H.close(nc.matmul(a, b:contiguous()), want, 1e-4, 1e-5, 'a^T b')
        H.close(nc.matmul(a:contiguous(), b), want, 1e-4, 1e-5, 'a b^T')
    end)

    it('row-strided (narrowed) and element-strided (copied) operands', function()
        local big = H.randn { 7, 20 }
        local a = big:narrow(1, 3, 13)                 -- row stride 20: sgemm lda, no copy
        local x3 = H.randn { 13, 5, 2 }
        local b = x3:select(2, 1)                      -- strides (10, 2): needs a copy
        H.close(nc.matmul(a, b), H.ref_matmul(mat(a), mat(b), 7, 13, 5), 1e-4, 1e-5, 'strided')
    end)

    it('batched (2, 3, 7, 13) x (2, 3, 13, 5)', function()
        local a, b = H.randn { 2, 3, 7, 13 }, H.randn { 2, 3, 13, 5 }
        local y = nc.matmul(a, b)
        assert.same({ 2, 3, 7, 5 }, y:shape())
        local al, bl, want = a:tolist(), b:tolist(), {}
        for bi = 0, 5 do
            local A, B = {}, {}
            for i = 1, 91 do A[i] = al[bi * 91 + i] end
            for i = 1, 65 do B[i] = bl[bi * 65 + i] end
            local Cm = H.ref_matmul(A, B, 7, 13, 5)
            for i = 1, 35 do want[bi * 35 + i] = Cm[i] end
        end
        H.close(y, want, 1e-4, 1e-5, 'batched')
    end)

    it('2-D b broadcast over a batch (one flattened sgemm), and over a non-collapsible batch', function()
        local a, w = H.randn { 3, 7, 13 }, H.randn { 13, 5 }
        local want = H.ref_matmul(a:tolist(), w:tolist(), 21, 13, 5)
        H.close(nc.matmul(a, w), want, 1e-4, 1e-5, 'flattened')
        -- rows of each batch are contiguous but batches are not (narrow of a bigger middle dim)
        local big = H.randn { 3, 9, 13 }
        local an = big:narrow(1, 1, 7)
        H.close(nc.matmul(an, w), H.ref_matmul(mat(an), w:tolist(), 21, 13, 5), 1e-4, 1e-5, 'per-batch loop')
        -- a transposed per batch
        local at = H.randn { 3, 13, 7 }:transpose(1, 2)
        H.close(nc.matmul(at, w), H.ref_matmul(mat(at), w:tolist(), 21, 13, 5), 1e-4, 1e-5, 'batched a^T')
    end)

    it('2-D a against batched b broadcasts a', function()
        local a, b = H.randn { 7, 13 }, H.randn { 2, 13, 5 }
        local y = nc.matmul(a, b)
        assert.same({ 2, 7, 5 }, y:shape())
        local bl, want = b:tolist(), {}
        for bi = 0, 1 do
            local B = {}
            for i = 1, 65 do B[i] = bl[bi * 65 + i] end
            local Cm = H.ref_matmul(a:tolist(), B, 7, 13, 5)
            for i = 1, 35 do want[bi * 35 + i] = Cm[i] end
        end
        H.close(y, want, 1e-4, 1e-5, 'broadcast a')
    end)

    it('alpha and beta: out = 2 a b + 0.5 out, and beta = 1 accumulates', function()
        local a, b = H.randn { 7, 13 }, H.randn { 13, 5 }
        local out = H.randn { 7, 5 }
        local o0 = out:tolist()
        nc.core.check(C.nc_matmul(out._c, a._c, b._c, 0, 0, 2.0, 0.5), 'matmul')
        local ab = H.ref_matmul(a:tolist(), b:tolist(), 7, 13, 5)
        local want = {}
        for i = 1, 35 do want[i] = 2 * ab[i] + 0.5 * o0[i] end
        H.close(out, want, 1e-4, 1e-5, 'alpha/beta')
        local o1 = out:tolist()
        nc.core.check(C.nc_matmul(out._c, a._c, b._c, 0, 0, 1.0, 1.0), 'matmul')
        for i = 1, 35 do want[i] = o1[i] + ab[i] end
        H.close(out, want, 1e-4, 1e-5, 'beta=1')
    end)

    it('explicit trans flags on contiguous operands', function()
        local at, bt = H.randn { 13, 7 }, H.randn { 5, 13 }
        local out = nc.zeros { 7, 5 }
        nc.core.check(C.nc_matmul(out._c, at._c, bt._c, 1, 1, 1.0, 0.0), 'matmul')
        H.close(out, H.ref_matmul(mat(at:t()), mat(bt:t()), 7, 13, 5), 1e-4, 1e-5, 'trans flags')
    end)

    it('K = 0 gives beta * out', function()
        local a, b = nc.zeros { 3, 0 }, nc.zeros { 0, 4 }
        local y = nc.matmul(a, b)
        assert.same({ 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0 }, y:tolist())
    end)

    it('linear = x W^T + bias over (B, T, in)', function()
        local x, w, bias = H.randn { 2, 3, 13 }, H.randn { 5, 13 }, H.randn { 5 }
        local y = nc.linear(x, w, bias)
        assert.same({ 2, 3, 5 }, y:shape())
        local want = H.ref_matmul(x:tolist(), mat(w:t()), 6, 13, 5)
        local bl = bias:tolist()
        for i = 0, 5 do for j = 1, 5 do want[i * 5 + j] = want[i * 5 + j] + bl[j] end end
        H.close(y, want, 1e-4, 1e-5, 'linear')
        local x1 = H.randn { 13 }
        local y1 = nc.linear(x1, w)
        assert.same({ 5 }, y1:shape())
        H.close(y1, H.ref_matmul(x1:tolist(), mat(w:t()), 1, 13, 5), 1e-4, 1e-5, 'linear 1-D')
    end)
end)

describe('matmul backward vs finite differences', function()
    it('2-D a and b', function()
        H.fd_check(function(a, b) return nc.matmul(a, b) end, { H.randn { 4, 5 }, H.randn { 5, 3 } })
    end)
    it('transposed operands', function()
        H.fd_check(function(a, b) return nc.matmul(a:t(), b:t()) end, { H.randn { 5, 4 }, H.randn { 3, 5 } })
    end)
    it('batched a with a shared 2-D b (dB is one gemm over flattened rows)', function()
        H.fd_check(function(a, b) return nc.matmul(a, b) end, { H.randn { 2, 3, 5 }, H.randn { 5, 4 } })
    end)
    it('batched a and b, and 2-D a broadcast over batched b', function()
        H.fd_check(function(a, b) return nc.matmul(a, b) end, { H.randn { 2, 3, 4 }, H.randn { 2, 4, 3 } })
        H.fd_check(function(a, b) return nc.matmul(a, b) end, { H.randn { 3, 4 }, H.randn { 2, 4, 3 } })
    end)
    it('linear with bias', function()
        H.fd_check(function(x, w, b) return nc.linear(x, w, b) end, { H.randn { 2, 3, 5 }, H.randn { 4, 5 }, H.randn { 4 } })
    end)
    it('gradients accumulate across two uses of a weight', function()
        local w = H.randn { 4, 5 }:requires_grad_()
        local x = H.randn { 3, 5 }
        local y = nc.linear(x, w)
        local z = nc.linear(x, w)
        local g = nc.ones { 3, 4 }
        y:backward(g)
        z:backward(g)
        -- d/dW sum(x W^T) = ones^T x, twice
        local xl, want = x:tolist(), {}
        for o = 0, 3 do
            for i = 0, 4 do
                local s = 0
                for r = 0, 2 do s = s + xl[r * 5 + i + 1] end
                want[o * 5 + i + 1] = 2 * s
            end
        end
        H.close(w.grad, want, 1e-5, 1e-5, 'accumulated dW')
    end)
end)

describe('matmul errors', function()
    it('K mismatch names both shapes', function()
        local ok, err = pcall(nc.matmul, nc.zeros { 7, 13 }, nc.zeros { 12, 5 })
        assert.is_false(ok)
        assert.matches('matmul', err)
        assert.matches('(7, 13)', err, 1, true)
        assert.matches('(12, 5)', err, 1, true)
    end)
    it('batch mismatch and 1-D operands are errors naming shapes', function()
        local ok, err = pcall(nc.matmul, nc.zeros { 2, 3, 4 }, nc.zeros { 3, 4, 5 })
        assert.is_false(ok)
        assert.matches('(2, 3, 4)', err, 1, true)
        ok, err = pcall(nc.matmul, nc.zeros { 4 }, nc.zeros { 4, 5 })
        assert.is_false(ok)
        assert.matches('at least 2 dims', err, 1, true)
        ok, err = pcall(nc.linear, nc.zeros { 3, 4 }, nc.zeros { 5, 6 })
        assert.is_false(ok)
        assert.matches('(3, 4)', err, 1, true)
        assert.matches('(5, 6)', err, 1, true)
    end)
    it('a wrongly shaped out is rejected by the C op', function()
        local out = nc.zeros { 7, 4 }
        local st = C.nc_matmul(out._c, nc.zeros { 7, 13 }._c, nc.zeros { 13, 5 }._c, 0, 0, 1, 0)
        assert.are_not.equal(0, st)
        assert.matches('out', nc.core.ffi.string(C.nc_last_error()))
    end)
end)
