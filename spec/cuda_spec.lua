-- spec/cuda_spec.lua — the CUDA backend (lib/libnanochat_cuda.so) against the CPU, op by op.
--
-- Promise: with a GPU, every vtable entry is exercised through the public C ABI on odd sizes
-- and strided / broadcast layouts: round-trip copies and device-side conversions for every
-- plain dtype (bit-exact against the CPU), fills, strided gather/scatter, binary (broadcast),
-- binary_scalar, every unary op and its backward, add_scaled and matmul (plain, transposed,
-- batched, 2-D b, alpha/beta), plus the mixed-device error. Without a GPU each test is pending
-- (inside its `it`, never at describe level) with the reason from nc.cuda_status(), and one test
-- checks that asking for a CUDA tensor is then a clean Lua error, not a crash.
package.path = 'lua/?.lua;lua/?/init.lua;spec/helpers/?.lua;' .. package.path
local nc = require 'nanochat'
local core = require 'nanochat.core'
local Tensor = require 'nanochat.tensor'
local C = core.C
local ffi = core.ffi

-- Tolerances: |cuda - cpu| <= RTOL * max(1, |cpu|) (values here are of order 1).
local ELEMENTWISE_RTOL = 1e-5   -- f32 elementwise: CUDA libm and glibc differ by a few ulp
local MATMUL_RTOL = 1e-4        -- f32 sgemm: cuBLAS and OpenBLAS sum in different orders

local CU = require 'cuda_helpers'
local HAVE_CUDA, WHY = CU.HAVE_CUDA, CU.WHY

local gpu_it = CU.gpu_it   -- pending (inside the test) without a GPU

local seed = 4321
local function randn(shape, std)
    seed = seed + 1
    return nc.randn(shape, { generator = nc.generator(seed), std = std or 1 })
end
local function rand(shape, lo, hi)
    seed = seed + 1
    return nc.rand(shape, { generator = nc.generator(seed), lo = lo, hi = hi })
end

local function shape_str(t) return '(' .. table.concat(t:shape(), ', ') .. ')' end

-- assert two tensors (any devices) have the same shape and values within rtol (0 = exact)
local function assert_close(got, want, rtol, what)
    assert.same(want:shape(), got:shape(), what .. ': shape')
    local g, w = got:tolist(), want:tolist()
    local worst, wi = -1, 0
    for i = 1, #w do
        local a, b = g[i], w[i]
        local ok
        if a ~= a or b ~= b then ok = (a ~= a) and (b ~= b)           -- NaN must match NaN
        elseif a == b then ok = true                                   -- also equal infinities
        else
            local e = math.abs(a - b) / math.max(1, math.abs(b))
            ok = e <= rtol
            if e > worst then worst, wi = e, i end
        end
        if not ok then
            error(string.format('%s: element %d (of %d, shape %s): cuda %.9g vs cpu %.9g (tolerance %g)', what, i, #w,
                shape_str(want), a, b, rtol), 2)
        end
    end
end

local function check(status, op) core.check(status, op) end

local DTYPES = { 'f32', 'f64', 'bf16', 'f16', 'i8', 'i32', 'i64', 'u8' }

-- CPU values in dtype's range, with fractions and out-of-range values for conversions
local function sample(shape, dtype)
    local x = rand(shape, -300, 300)
    if dtype == 'u8' then return rand(shape, 0, 255):to(dtype) end
    if dtype == 'i8' then return rand(shape, -128, 127):to(dtype) end
    return x:to(dtype)
end

describe('cuda availability', function()
    it('reports a reason, and without a GPU a CUDA tensor is a clean Lua error', function()
        assert.is_string(WHY)
        assert.is_true(#WHY > 0)
        if HAVE_CUDA then
            assert.is_true(C.nc_device_count(C.NC_CUDA) >= 1)
            return
        end
        local ok, err = pcall(Tensor.empty, { 2, 3 }, 'f32', 'cuda')
        assert.is_false(ok)
        assert.matches('cuda', tostring(err):lower(), 1, true)
        local ok2 = pcall(function() return nc.zeros({ 2 }):to('cuda') end)
        assert.is_false(ok2)
    end)
end)

describe('cuda copies and fills', function()
    gpu_it('round-trips every plain dtype host -> device -> host bit-exactly', function()
        for _, dt in ipairs(DTYPES) do
            local x = sample({ 3, 5, 7 }, dt)
            local d = x:to('cuda')
            assert.equal('cuda', d:device())
            assert.equal(dt, d:dtype())
            assert_close(d:to('cpu'), x, 0, 'round trip ' .. dt)
        end
    end)

    gpu_it('converts between every pair of dtypes on the device exactly as the CPU does', function()
        for _, from in ipairs(DTYPES) do
            local x = sample({ 5, 9 }, from)
            local xd = x:to('cuda')
            for _, to in ipairs(DTYPES) do
                assert_close(xd:to(to), x:to(to), 0, from .. ' -> ' .. to .. ' on the device')
            end
        end
    end)

    gpu_it('fills every dtype (truncation, saturation and rounding as on the CPU)', function()
        for _, dt in ipairs(DTYPES) do
            for _, v in ipairs { 0, 2.7, -1.5, 1e10, -1e10, 1 / 3 } do
                local d = Tensor.empty({ 4, 33 }, dt, 'cuda'):fill_(v)
                local h = Tensor.empty({ 4, 33 }, dt, 'cpu'):fill_(v)
                assert_close(d, h, 0, 'fill ' .. dt .. ' with ' .. v)
            end
        end
    end)

    gpu_it('fills a strided view and leaves the rest alone', function()
        local h = randn { 6, 9 }
        local d = h:to('cuda')
        d:narrow(1, 2, 4):fill_(7.5)
        h:narrow(1, 2, 4):fill_(7.5)
        assert_close(d, h, 0, 'fill of a narrowed view')
        d:t():select(0, 8):fill_(-2)
        h:t():select(0, 8):fill_(-2)
        assert_close(d, h, 0, 'fill of a column')
    end)

    gpu_it('gathers strided views to contiguous tensors (transpose, permute, narrow, expand)', function()
        local h = randn { 5, 7, 3 }
        local d = h:to('cuda')
        assert_close(d:transpose(0, 2):contiguous(), h:transpose(0, 2):contiguous(), 0, 'transpose')
        assert.is_true(d:transpose(0, 2):contiguous():is_contiguous())
        assert_close(d:permute { 1, 2, 0 }:contiguous(), h:permute { 1, 2, 0 }:contiguous(), 0, 'permute')
        assert_close(d:narrow(1, 2, 4):contiguous(), h:narrow(1, 2, 4):contiguous(), 0, 'narrow')
        local hr = randn { 1, 7, 1 }
        assert_close(hr:to('cuda'):expand { 5, 7, 3 }:contiguous(), hr:expand { 5, 7, 3 }:contiguous(), 0, 'expand')
        -- a strided device tensor straight to the host, and a transposed view converted to bf16
        assert_close(d:transpose(0, 1):to('cpu'), h:transpose(0, 1), 0, 'strided device -> host')
        assert_close(d:transpose(0, 2):to('bf16'), h:transpose(0, 2):to('bf16'), 0, 'strided f32 -> bf16')
    end)

    gpu_it('scatters into strided device destinations (copy_ into a transposed view)', function()
        local src = randn { 7, 5 }
        local hd, dd = nc.zeros({ 5, 7 }), nc.zeros({ 5, 7 }, { device = 'cuda' })
        hd:t():copy_(src)
        dd:t():copy_(src:to('cuda'))
        assert_close(dd, hd, 0, 'device -> device into a transposed view')
        local dd2 = nc.zeros({ 5, 7 }, { device = 'cuda' })
        dd2:t():copy_(src)   -- host -> strided device
        assert_close(dd2, hd, 0, 'host -> device into a transposed view')
    end)

    gpu_it('handles empty tensors and scalars', function()
        local e = Tensor.empty({ 0, 3 }, 'f32', 'cuda')
        assert.equal(0, e:numel())
        assert.same({ 0, 3 }, e:to('cpu'):shape())
        local s = nc.tensor(3.25):to('cuda')
        assert.equal(3.25, s:item())
    end)
end)

-- run an op on CPU tensors and on their CUDA copies; compare the outputs
local function cpu_vs_cuda(what, rtol, inputs, out_shape, fn)
    local cin = {}
    for i, t in ipairs(inputs) do cin[i] = t:to('cuda') end
    local oh = Tensor.empty(out_shape, 'f32', 'cpu')
    local od = Tensor.empty(out_shape, 'f32', 'cuda')
    check(fn(oh, inputs), what .. ' (cpu)')
    check(fn(od, cin), what .. ' (cuda)')
    assert_close(od, oh, rtol, what)
end

local BINARY = { add = C.NC_OP_ADD, sub = C.NC_OP_SUB, mul = C.NC_OP_MUL, div = C.NC_OP_DIV,
                 maximum = C.NC_OP_MAXIMUM, minimum = C.NC_OP_MINIMUM, pow = C.NC_OP_POW }

-- input domain per unary op (lo, hi) so every op is finite and well conditioned
local UNARY = {
    { 'neg', C.NC_OP_NEG, -3, 3 }, { 'exp', C.NC_OP_EXP, -3, 3 }, { 'log', C.NC_OP_LOG, 0.1, 5 },
    { 'tanh', C.NC_OP_TANH, -3, 3 }, { 'sigmoid', C.NC_OP_SIGMOID, -4, 4 }, { 'relu', C.NC_OP_RELU, -3, 3 },
    { 'relu2', C.NC_OP_RELU2, -3, 3 }, { 'silu', C.NC_OP_SILU, -4, 4 }, { 'gelu', C.NC_OP_GELU, -4, 4 },
    { 'gelu_tanh', C.NC_OP_GELU_TANH, -4, 4 }, { 'sqrt', C.NC_OP_SQRT, 0.1, 5 },
    { 'rsqrt', C.NC_OP_RSQRT, 0.1, 5 }, { 'abs', C.NC_OP_ABS, -3, 3 }, { 'square', C.NC_OP_SQUARE, -3, 3 },
    { 'recip', C.NC_OP_RECIP, 0.2, 5 }, { 'sin', C.NC_OP_SIN, -3, 3 }, { 'cos', C.NC_OP_COS, -3, 3 },
}

describe('cuda elementwise vs cpu', function()
    gpu_it('binary ops with broadcasting (4,1,7) op (3,1) and a transposed operand', function()
        for name, op in pairs(BINARY) do
            local a, b = randn { 4, 1, 7 }, randn { 3, 1 }
            if name == 'pow' then a = rand({ 4, 1, 7 }, 0.5, 2) end
            if name == 'div' then b = rand({ 3, 1 }, 0.5, 2) end
            cpu_vs_cuda('binary ' .. name .. ' broadcast', ELEMENTWISE_RTOL, { a, b }, { 4, 3, 7 },
                function(o, x) return C.nc_binary(o._c, x[1]._c, x[2]._c, op) end)
            local at = (name == 'pow' and rand({ 9, 6 }, 0.5, 2) or randn { 9, 6 }):t()   -- (6, 9), strided
            local bt = name == 'div' and rand({ 6, 9 }, 0.5, 2) or randn { 6, 9 }
            cpu_vs_cuda('binary ' .. name .. ' transposed', ELEMENTWISE_RTOL, { at, bt }, { 6, 9 },
                function(o, x) return C.nc_binary(o._c, x[1]._c, x[2]._c, op) end)
        end
    end)

    gpu_it('binary_scalar ops on a strided input', function()
        for name, op in pairs(BINARY) do
            local a = (name == 'pow' and rand({ 11, 5 }, 0.5, 2) or randn { 11, 5 }):t()
            for _, s in ipairs { 0.7, -1.3, 2 } do
                if not (name == 'div' and s == 0) then
                    cpu_vs_cuda(string.format('binary_scalar %s %g', name, s), ELEMENTWISE_RTOL, { a }, { 5, 11 },
                        function(o, x) return C.nc_binary_scalar(o._c, x[1]._c, s, op) end)
                end
            end
        end
    end)

    gpu_it('every unary op forward (contiguous and strided) and backward (accumulating)', function()
        for _, u in ipairs(UNARY) do
            local name, op, lo, hi = u[1], u[2], u[3], u[4]
            local a = rand({ 13, 37 }, lo, hi)
            cpu_vs_cuda('unary ' .. name, ELEMENTWISE_RTOL, { a }, { 13, 37 },
                function(o, x) return C.nc_unary(o._c, x[1]._c, op) end)
            cpu_vs_cuda('unary ' .. name .. ' strided', ELEMENTWISE_RTOL, { a:t() }, { 37, 13 },
                function(o, x) return C.nc_unary(o._c, x[1]._c, op) end)
            -- backward: ga (pre-filled) += gout * f'(a), with out = f(a) from the CPU
            local out = Tensor.empty({ 13, 37 }, 'f32', 'cpu')
            check(C.nc_unary(out._c, a._c, op), 'unary ' .. name)
            local gout, ga0 = randn { 13, 37 }, randn { 13, 37 }
            local gh, gd = ga0:clone(), ga0:to('cuda')
            check(C.nc_unary_backward(gh._c, out._c, a._c, gout._c, op), 'unary_backward ' .. name .. ' (cpu)')
            check(C.nc_unary_backward(gd._c, out:to('cuda')._c, a:to('cuda')._c, gout:to('cuda')._c, op),
                'unary_backward ' .. name .. ' (cuda)')
            assert_close(gd, gh, ELEMENTWISE_RTOL, 'unary_backward ' .. name)
        end
    end)

    gpu_it('add_scaled into a strided destination from a broadcast source', function()
        local base = randn { 9, 6 }
        local src = randn { 9 }
        local hd, dd = base:clone(), base:to('cuda')
        check(C.nc_add_scaled(hd:t()._c, src._c, -0.75), 'add_scaled (cpu)')     -- (6, 9) view += src (9)
        check(C.nc_add_scaled(dd:t()._c, src:to('cuda')._c, -0.75), 'add_scaled (cuda)')
        assert_close(dd, hd, ELEMENTWISE_RTOL, 'add_scaled strided dst, broadcast src')
        local hc, dc = base:clone(), base:to('cuda')
        local full = randn { 9, 6 }
        check(C.nc_add_scaled(hc._c, full._c, 2.5), 'add_scaled (cpu)')
        check(C.nc_add_scaled(dc._c, full:to('cuda')._c, 2.5), 'add_scaled (cuda)')
        assert_close(dc, hc, ELEMENTWISE_RTOL, 'add_scaled contiguous')
    end)

    gpu_it('sum_to (the gradient of broadcasting) over leading, inner and strided dims', function()
        local src = randn { 4, 5, 6 }
        for _, ds in ipairs { { 6 }, { 5, 1 }, { 4, 1, 6 }, { 1 }, { 4, 5, 6 } } do
            local base = randn(ds)
            local hd, dd = base:clone(), base:to('cuda')
            check(C.nc_sum_to(hd._c, src._c, 0.5), 'sum_to (cpu)')
            check(C.nc_sum_to(dd._c, src:to('cuda')._c, 0.5), 'sum_to (cuda)')
            assert_close(dd, hd, 1e-6, 'sum_to ' .. shape_str(base))
        end
        local st = src:transpose(0, 2)   -- (6, 5, 4) strided source, on the device
        local hd, dd = nc.zeros { 6, 1, 1 }, nc.zeros({ 6, 1, 1 }):to('cuda')
        check(C.nc_sum_to(hd._c, st._c, 1), 'sum_to (cpu)')
        check(C.nc_sum_to(dd._c, src:to('cuda'):transpose(0, 2)._c, 1), 'sum_to (cuda)')
        assert_close(dd, hd, 1e-6, 'sum_to strided source')
        -- mixed devices are an error naming the op
        local ok, err = pcall(check, C.nc_sum_to(nc.zeros({ 6 })._c, src:to('cuda')._c, 1), 'sum_to')
        assert.is_false(ok)
        assert.matches('sum_to', err, 1, true)
    end)

    gpu_it('binary backward (add, sub, mul, div with broadcasting) and scalar backward match the cpu', function()
        for _, op in ipairs { 'add', 'sub', 'mul', 'div' } do
            local a0, b0 = randn { 4, 1, 7 }, rand({ 3, 1 }, 0.5, 2)
            local g = randn { 4, 3, 7 }
            local ha, hb = a0:clone():requires_grad_(true), b0:clone():requires_grad_(true)
            nc[op](ha, hb):backward(g)
            local da = a0:to('cuda'):detach():requires_grad_(true)
            local db = b0:to('cuda'):detach():requires_grad_(true)
            nc[op](da, db):backward(g:to('cuda'))
            assert_close(da.grad, ha.grad, 1e-5, op .. ' backward ga')
            assert_close(db.grad, hb.grad, 1e-5, op .. ' backward gb')
            local hs = a0:clone():requires_grad_(true)
            nc[op](hs, 1.5):backward(g:narrow(1, 0, 1))
            local ds = a0:to('cuda'):detach():requires_grad_(true)
            nc[op](ds, 1.5):backward(g:narrow(1, 0, 1):contiguous():to('cuda'))
            assert_close(ds.grad, hs.grad, 1e-6, op .. ' scalar backward')
        end
        local x = randn({ 3 }):to('cuda'):detach():requires_grad_(true)
        local ok, err = pcall(function() nc.maximum(x, x * 2):backward(nc.ones({ 3 }):to('cuda')) end)
        assert.is_false(ok)
        assert.matches('no CUDA backward', err, 1, true)
    end)

    gpu_it('sum and mean over dims, with backward, match the cpu', function()
        local a0 = randn { 4, 5, 6 }
        for _, op in ipairs { 'sum', 'mean' } do
            for _, d in ipairs { 0, 1, 2, -1 } do
                local h = a0:clone():requires_grad_(true)
                local dv = a0:to('cuda'):detach():requires_grad_(true)
                local hr, dr = nc[op](h, d), nc[op](dv, d)
                assert_close(dr, hr, 1e-6, op .. ' dim ' .. d)
                local g = randn(hr:shape())
                hr:backward(g)
                dr:backward(g:to('cuda'))
                assert_close(dv.grad, h.grad, 1e-6, op .. ' backward dim ' .. d)
            end
        end
        assert_close(nc.sum(a0:to('cuda')), nc.sum(a0), 1e-6, 'sum of everything')
    end)

    gpu_it('a tensor larger than one grid (4097 x 4099 > 65536 blocks x 256 threads) matches', function()
        local a, b = randn { 4097, 4099 }, randn { 4099 }
        local oh = Tensor.empty({ 4097, 4099 }, 'f32', 'cpu')
        local od = Tensor.empty({ 4097, 4099 }, 'f32', 'cuda')
        check(C.nc_binary(oh._c, a._c, b._c, C.NC_OP_MUL), 'binary mul (cpu)')
        check(C.nc_binary(od._c, a:to('cuda')._c, b:to('cuda')._c, C.NC_OP_MUL), 'binary mul (cuda)')
        -- compare through raw f32 pointers (a Lua list of 16.8M values would be slow)
        local back = od:to('cpu')
        local g = ffi.cast('const float *', C.nc_tensor_data(back._c))
        local w = ffi.cast('const float *', C.nc_tensor_data(oh._c))
        local n, bad = back:numel(), -1
        for i = 0, n - 1 do
            local e = math.abs(g[i] - w[i]) / math.max(1, math.abs(w[i]))
            if not (e <= ELEMENTWISE_RTOL) then bad = i; break end
        end
        assert.equal(-1, bad, bad >= 0 and string.format('element %d: cuda %.9g vs cpu %.9g', bad, g[bad], w[bad]) or '')
    end)
end)

describe('cuda matmul vs cpu', function()
    local function mm(what, a, b, ta, tb, alpha, beta, out_shape, init)
        local cin = { a:to('cuda'), b:to('cuda') }
        local oh = init and init:clone() or Tensor.zeros(out_shape, 'f32', 'cpu')
        local od = oh:to('cuda')
        check(C.nc_matmul(oh._c, a._c, b._c, ta, tb, alpha, beta), what .. ' (cpu)')
        check(C.nc_matmul(od._c, cin[1]._c, cin[2]._c, ta, tb, alpha, beta), what .. ' (cuda)')
        assert_close(od, oh, MATMUL_RTOL, what)
    end

    gpu_it('plain (7, 13) x (13, 5)', function()
        mm('plain', randn { 7, 13 }, randn { 13, 5 }, 0, 0, 1, 0, { 7, 5 })
        mm('one row', randn { 1, 13 }, randn { 13, 5 }, 0, 0, 1, 0, { 1, 5 })
        mm('large', randn { 129, 257 }, randn { 257, 65 }, 0, 0, 1, 0, { 129, 65 })
    end)

    gpu_it('transposed by flag and by view', function()
        mm('trans_a flag', randn { 13, 7 }, randn { 13, 5 }, 1, 0, 1, 0, { 7, 5 })
        mm('trans_b flag', randn { 7, 13 }, randn { 5, 13 }, 0, 1, 1, 0, { 7, 5 })
        mm('both flags', randn { 13, 7 }, randn { 5, 13 }, 1, 1, 1, 0, { 7, 5 })
        mm('a^T view, b^T view', randn { 13, 7 }:t(), randn { 5, 13 }:t(), 0, 0, 1, 0, { 7, 5 })
        mm('narrowed a (row stride 20)', randn { 7, 20 }:narrow(1, 3, 13), randn { 13, 5 }, 0, 0, 1, 0, { 7, 5 })
    end)

    gpu_it('batched (2, 3, 7, 13) x (2, 3, 13, 5) and with 2-D b', function()
        mm('batched', randn { 2, 3, 7, 13 }, randn { 2, 3, 13, 5 }, 0, 0, 1, 0, { 2, 3, 7, 5 })
        mm('batched trans_b', randn { 2, 3, 7, 13 }, randn { 2, 3, 5, 13 }, 0, 1, 1, 0, { 2, 3, 7, 5 })
        mm('batched 2-D b', randn { 3, 7, 13 }, randn { 13, 5 }, 0, 0, 1, 0, { 3, 7, 5 })
        mm('batched a^T with 2-D b', randn { 3, 13, 7 }:transpose(1, 2), randn { 13, 5 }, 0, 0, 1, 0, { 3, 7, 5 })
        mm('non-collapsible batch, 2-D b', randn { 3, 9, 13 }:narrow(1, 1, 7), randn { 13, 5 }, 0, 0, 1, 0, { 3, 7, 5 })
        mm('batched 2-D b^T', randn { 3, 7, 13 }, randn { 5, 13 }, 0, 1, 1, 0, { 3, 7, 5 })
    end)

    gpu_it('alpha and beta (beta = 1 accumulates, as backward does)', function()
        local init = randn { 7, 5 }
        mm('alpha 2 beta 0.5', randn { 7, 13 }, randn { 13, 5 }, 0, 0, 2, 0.5, { 7, 5 }, init)
        mm('beta 1', randn { 13, 7 }, randn { 13, 5 }, 1, 0, 1, 1, { 7, 5 }, init)
        mm('batched beta 1', randn { 2, 7, 13 }, randn { 2, 13, 5 }, 0, 0, -1, 1, { 2, 7, 5 }, randn { 2, 7, 5 })
    end)

    gpu_it('nc.matmul on CUDA tensors returns a CUDA tensor equal to the CPU result', function()
        local a, b = randn { 4, 7, 13 }, randn { 13, 5 }
        local y = nc.matmul(a:to('cuda'), b:to('cuda'))
        assert.equal('cuda', y:device())
        assert_close(y, nc.matmul(a, b), MATMUL_RTOL, 'nc.matmul')
    end)
end)

describe('cuda errors', function()
    local function expect_device_error(what, fn)
        local ok, err = pcall(fn)
        assert.is_false(ok, what .. ': expected an error')
        err = tostring(err)
        assert.matches('cpu', err, 1, true)
        assert.matches('cuda', err, 1, true)
    end

    gpu_it('mixing devices is a clear Lua error naming both devices', function()
        local ah, bd = randn { 3, 4 }, randn { 3, 4 }:to('cuda')
        expect_device_error('binary', function()
            local o = Tensor.empty({ 3, 4 }, 'f32', 'cuda')
            check(C.nc_binary(o._c, ah._c, bd._c, C.NC_OP_ADD), 'binary')
        end)
        expect_device_error('unary', function()
            local o = Tensor.empty({ 3, 4 }, 'f32', 'cuda')
            check(C.nc_unary(o._c, ah._c, C.NC_OP_EXP), 'unary')
        end)
        expect_device_error('add_scaled', function() check(C.nc_add_scaled(bd._c, ah._c, 1), 'add_scaled') end)
        expect_device_error('matmul', function()
            local o = Tensor.empty({ 3, 3 }, 'f32', 'cuda')
            check(C.nc_matmul(o._c, ah._c, bd._c, 0, 1, 1, 0), 'matmul')
        end)
        expect_device_error('nc.matmul', function() return nc.matmul(ah, randn { 4, 2 }:to('cuda')) end)
    end)

    gpu_it('copies across devices are allowed (not an error)', function()
        local h = randn { 3, 4 }
        local d = Tensor.empty({ 3, 4 }, 'f32', 'cuda')
        d:copy_(h)
        assert_close(d, h, 0, 'copy_ host -> device')
        local h2 = Tensor.empty({ 3, 4 }, 'f32', 'cpu')
        h2:copy_(d)
        assert_close(h2, h, 0, 'copy_ device -> host')
    end)
end)
