-- spec/ops/nn_spec.lua — softmax, log_softmax, cross_entropy, rmsnorm and RoPE against float64
-- references and finite differences (matmul, attention and quant have their own spec files).
package.path = 'lua/?.lua;lua/?/init.lua;spec/ops/?.lua;' .. package.path
local nc = require 'nanochat'
local H = require 'nn_helpers'
local C = nc.C

local REL_1E6 = 1e-6     -- algorithms.md §14.8 RoPE properties (relative)
local RMS_TOL = 1e-3     -- algorithms.md §14.8 RMSNorm output RMS

-- float64 softmax / log-softmax of each row of a flat (rows, n) list
local function ref_softmax(x, rows, n, log)
    local y = {}
    for r = 0, rows - 1 do
        local m = -math.huge
        for j = 1, n do m = math.max(m, x[r * n + j]) end
        local s = 0
        for j = 1, n do s = s + math.exp(x[r * n + j] - m) end
        for j = 1, n do
            local v = x[r * n + j]
            y[r * n + j] = log and (v - m - math.log(s)) or math.exp(v - m) / s
        end
    end
    return y
end

describe('softmax and log_softmax', function()
    it('match float64 over the last dim (odd sizes)', function()
        local x = H.randn({ 3, 5, 37 }, 3)
        H.close(nc.softmax(x), ref_softmax(x:tolist(), 15, 37, false), 1e-6, 1e-5, 'softmax')
        H.close(nc.log_softmax(x), ref_softmax(x:tolist(), 15, 37, true), 1e-5, 1e-5, 'log_softmax')
    end)

    it('are stable for huge logits and rows sum to 1', function()
        local x = nc.tensor { { 1000, 1001, 999 }, { -1000, -1000, -1000 } }
        local y = nc.softmax(x):tolist()
        H.close(y, ref_softmax(x:tolist(), 2, 3, false), 1e-6, 1e-5, 'huge logits')
        H.close(nc.log_softmax(x), ref_softmax(x:tolist(), 2, 3, true), 1e-4, 1e-6, 'huge logits (log)')
        local big = nc.softmax(H.randn({ 4, 1001 }, 5)):tolist()
        for r = 0, 3 do
            local s = 0
            for j = 1, 1001 do s = s + big[r * 1001 + j] end
            assert.is_true(math.abs(s - 1) < 1e-5, 'row sum ' .. s)
        end
    end)

    it('over dim 0 and on strided input equal the transposed reference', function()
        local x = H.randn { 6, 4 }
        local xt = x:t():contiguous():tolist()      -- (4, 6)
        local want_t = ref_softmax(xt, 4, 6, false)
        local y = nc.softmax(x, 0)
        assert.same({ 6, 4 }, y:shape())
        local yt = y:t():contiguous():tolist()
        H.close(yt, want_t, 1e-6, 1e-5, 'softmax dim 0')
        H.close(nc.log_softmax(x:t()), ref_softmax(xt, 4, 6, true), 1e-5, 1e-5, 'log_softmax of a transpose')
    end)

    it('backward matches finite differences (softmax, log_softmax, dim 0)', function()
        H.fd_check(function(x) return nc.softmax(x) end, { H.randn { 3, 7 } })
        H.fd_check(function(x) return nc.log_softmax(x) end, { H.randn { 3, 7 } })
        H.fd_check(function(x) return nc.softmax(x, 0) end, { H.randn { 5, 3 } })
    end)

    it('rejects a bad dim with the op name', function()
        local ok, err = pcall(nc.softmax, nc.zeros { 2, 3 }, 2)
        assert.is_false(ok)
        assert.matches('softmax: dim 2 out of range', err, 1, true)
    end)
end)

-- float64 cross-entropy: mean over non-ignored rows
local function ref_ce(x, t, N, V, ii, ls, z)
    local total, count = 0, 0
    for r = 0, N - 1 do
        local tr = t[r + 1]
        if tr ~= ii then
            local m, s, sx = -math.huge, 0, 0
            for j = 1, V do m = math.max(m, x[r * V + j]) end
            for j = 1, V do s = s + math.exp(x[r * V + j] - m); sx = sx + x[r * V + j] end
            local lse = m + math.log(s)
            total = total + (1 - ls) * (lse - x[r * V + tr + 1]) + ls * (lse - sx / V) + z * lse * lse
            count = count + 1
        end
    end
    return count > 0 and total / count or 0
end

describe('cross_entropy', function()
    local N, V = 9, 11
    local targets_l = { 3, 0, 10, -1, 5, 7, -1, 2, 10 }

    it('matches float64 plain, with ignore_index, label smoothing and z-loss', function()
        local x = H.randn({ N, V }, 2)
        local xl = x:tolist()
        local t = nc.tensor(targets_l, { dtype = 'i64' })
        local cases = {
            { ii = -100, ls = 0, z = 0, tl = { 3, 0, 10, 1, 5, 7, 4, 2, 10 } },
            { ii = -1, ls = 0, z = 0 },
            { ii = -1, ls = 0.1, z = 0 },
            { ii = -1, ls = 0, z = 1e-2 },
            { ii = -1, ls = 0.2, z = 1e-4 },
        }
        for ci, c in ipairs(cases) do
            local tt = c.tl and nc.tensor(c.tl, { dtype = 'i64' }) or t
            local loss = nc.cross_entropy(x, tt, { ignore_index = c.ii, label_smoothing = c.ls, z_loss = c.z })
            assert.same({}, loss:shape())
            local want = ref_ce(xl, c.tl or targets_l, N, V, c.ii, c.ls, c.z)
            H.close({ loss:item() }, { want }, 1e-5, 1e-6, 'case ' .. ci)
        end
    end)

    it('accepts i32 targets, (B, T, V) logits and vocab-strided logits', function()
        local x = H.randn { 3, 3, V }
        local t = nc.tensor({ { 1, 2, 3 }, { 4, -1, 6 }, { 7, 8, 9 } }, { dtype = 'i32' })
        local want = ref_ce(x:tolist(), { 1, 2, 3, 4, -1, 6, 7, 8, 9 }, 9, V, -1, 0, 0)
        H.close({ nc.cross_entropy(x, t):item() }, { want }, 1e-5, 1e-6, '3-D logits')
        local xt = H.randn { V, N }                 -- logits = xt^T: vocab stride N
        local tl = { 3, 0, 10, 1, 5, 7, 4, 2, 10 }
        local want2 = ref_ce(xt:t():contiguous():tolist(), tl, N, V, -1, 0.1, 1e-3)
        local got2 = nc.cross_entropy(xt:t(), nc.tensor(tl, { dtype = 'i64' }), { label_smoothing = 0.1, z_loss = 1e-3 })
        H.close({ got2:item() }, { want2 }, 1e-5, 1e-6, 'strided logits')
    end)

    it('backward matches finite differences with every option on', function()
        local t = nc.tensor({ 3, 0, -1, 5, 7 }, { dtype = 'i64' })
        H.fd_check(function(x) return nc.cross_entropy(x, t, { label_smoothing = 0.1, z_loss = 1e-2 }) end,
            { H.randn { 5, 8 } }, { atol = 5e-4 })
        H.fd_check(function(x) return nc.cross_entropy(x, t) end, { H.randn { 5, 8 } }, { atol = 5e-4 })
        -- through a transposed (vocab-strided) view
        H.fd_check(function(x) return nc.cross_entropy(x:t(), t, { z_loss = 1e-2 }) end, { H.randn { 8, 5 } }, { atol = 5e-4 })
    end)

    it('z-loss gradient is 2 z lse softmax (algorithms.md §13.3), rel 1e-4', function()
        local x = H.randn({ 1, 6 }, 2)
        x:requires_grad_()
        local t = nc.tensor({ -1 }, { dtype = 'i64' })
        -- with the only target ignored there is no loss; use a real target and subtract the plain part
        local t0 = nc.tensor({ 2 }, { dtype = 'i64' })
        local z = 0.05
        nc.cross_entropy(x, t0, { z_loss = z }):backward()
        local gz = x.grad:tolist()
        x.grad = nil
        nc.cross_entropy(x, t0):backward()
        local g0 = x.grad:tolist()
        local xl = x:tolist()
        local m, s = -math.huge, 0
        for j = 1, 6 do m = math.max(m, xl[j]) end
        for j = 1, 6 do s = s + math.exp(xl[j] - m) end
        local lse = m + math.log(s)
        local want, diff = {}, {}
        for j = 1, 6 do want[j] = 2 * z * lse * math.exp(xl[j] - lse); diff[j] = gz[j] - g0[j] end
        H.close(diff, want, 1e-7, 1e-4, 'z-loss gradient')
        assert.is_truthy(t)
    end)

    it('all targets ignored: loss 0 and zero gradient', function()
        local x = H.randn { 4, 5 }:requires_grad_()
        local loss = nc.cross_entropy(x, nc.tensor({ -1, -1, -1, -1 }, { dtype = 'i64' }))
        assert.equal(0, loss:item())
        loss:backward()
        for _, v in ipairs(x.grad:tolist()) do assert.equal(0, v) end
    end)

    it('an out-of-range target is an index error naming the row', function()
        local ok, err = pcall(nc.cross_entropy, nc.zeros { 3, 5 }, nc.tensor({ 1, 5, 2 }, { dtype = 'i64' }))
        assert.is_false(ok)
        assert.matches('cross_entropy: target 5 at row 1 is outside [0, 5)', err, 1, true)
        ok, err = pcall(nc.cross_entropy, nc.zeros { 3, 5 }, nc.tensor({ 1, -2, 2 }, { dtype = 'i32' }))
        assert.is_false(ok)
        assert.matches('target -2', err, 1, true)
        ok, err = pcall(nc.cross_entropy, nc.zeros { 3, 5 }, nc.tensor({ 1, 2 }, { dtype = 'i64' }))
        assert.is_false(ok)
        assert.matches('targets', err, 1, true)
        ok, err = pcall(nc.cross_entropy, nc.zeros { 3, 5 }, nc.tensor({ 1, 2, 3 }, { dtype = 'f32' }))
        assert.is_false(ok)
        assert.matches('i32 or i64', err, 1, true)
    end)
end)

-- float64 RMSNorm of rows
local function ref_rmsnorm(x, rows, D, w, eps)
    local y = {}
    for r = 0, rows - 1 do
        local ss = 0
        for j = 1, D do ss = ss + x[r * D + j] ^ 2 end
        local inv = 1 / math.sqrt(ss / D + eps)
        for j = 1, D do y[r * D + j] = x[r * D + j] * inv * (w and w[j] or 1) end
    end
    return y
end

describe('rmsnorm', function()
    it('matches float64 with and without weight, contiguous and strided', function()
        local x, w = H.randn({ 4, 3, 19 }, 2), H.randn { 19 }
        H.close(nc.rmsnorm(x), ref_rmsnorm(x:tolist(), 12, 19, nil, 1e-6), 1e-6, 1e-5, 'no weight')
        H.close(nc.rmsnorm(x, w, 1e-5), ref_rmsnorm(x:tolist(), 12, 19, w:tolist(), 1e-5), 1e-6, 1e-5, 'weight')
        local xs = H.randn { 19, 6 }:t()               -- last-dim stride 6
        H.close(nc.rmsnorm(xs, w), ref_rmsnorm(xs:contiguous():tolist(), 6, 19, w:tolist(), 1e-6), 1e-6, 1e-5, 'strided')
    end)

    it('output has RMS 1 within 1e-3 (eps 1e-6, algorithms.md §14.8)', function()
        local y = nc.rmsnorm(H.randn({ 8, 64 }, 7)):tolist()
        for r = 0, 7 do
            local ss = 0
            for j = 1, 64 do ss = ss + y[r * 64 + j] ^ 2 end
            assert.is_true(math.abs(math.sqrt(ss / 64) - 1) < RMS_TOL)
        end
    end)

    it('backward matches finite differences for x and weight', function()
        H.fd_check(function(x, w) return nc.rmsnorm(x, w) end, { H.randn { 3, 7 }, H.randn { 7 } })
        H.fd_check(function(x) return nc.rmsnorm(x) end, { H.randn { 2, 3, 5 } })
        H.fd_check(function(x, w) return nc.rmsnorm(x:t(), w) end, { H.randn { 4, 6 }, H.randn { 4 } })
    end)

    it('rejects a weight of the wrong size', function()
        local ok, err = pcall(nc.rmsnorm, nc.zeros { 2, 5 }, nc.zeros { 4 })
        assert.is_false(ok)
        assert.matches('rmsnorm: expected weight of shape (5)', err, 1, true)
    end)
end)

-- float64 half-split RoPE of x (B, T, H, D) flat
local function ref_rope(x, B, T, Hh, D, pos0, base)
    local y, h = {}, D / 2
    for b = 0, B - 1 do for t = 0, T - 1 do for hh = 0, Hh - 1 do
        local o = ((b * T + t) * Hh + hh) * D
        for i = 0, h - 1 do
            local ang = (pos0 + t) * base ^ (-2 * i / D)
            local c, s = math.cos(ang), math.sin(ang)
            local x1, x2 = x[o + i + 1], x[o + i + h + 1]
            y[o + i + 1] = x1 * c + x2 * s
            y[o + i + h + 1] = -x1 * s + x2 * c
        end
    end end end
    return y
end

describe('rope', function()
    it('tables and rotation match float64 (half-split pairing, pos0, base)', function()
        local cos, sin = nc.rope_tables(7, 10, { pos0 = 3, base = 100 })
        assert.same({ 7, 5 }, cos:shape())
        local cw, sw = {}, {}
        for t = 0, 6 do for i = 0, 4 do
            local ang = (3 + t) * 100 ^ (-2 * i / 10)
            cw[t * 5 + i + 1], sw[t * 5 + i + 1] = math.cos(ang), math.sin(ang)
        end end
        H.close(cos, cw, 1e-6, 1e-6, 'cos')
        H.close(sin, sw, 1e-6, 1e-6, 'sin')
        local x = H.randn { 2, 7, 3, 10 }
        H.close(nc.rope(x, cos, sin), ref_rope(x:tolist(), 2, 7, 3, 10, 3, 100), 1e-5, 1e-5, 'rope')
        -- strided x: a (B, H, T, D) tensor transposed to (B, T, H, D)
        local xs = H.randn { 2, 3, 7, 10 }:transpose(1, 2)
        H.close(nc.rope(xs, cos, sin), ref_rope(xs:contiguous():tolist(), 2, 7, 3, 10, 3, 100), 1e-5, 1e-5, 'strided')
    end)

    it('decode tables at pos0 equal the matching rows of a full table', function()
        local c_full, s_full = nc.rope_tables(20, 8)
        local c5, s5 = nc.rope_tables(3, 8, { pos0 = 17 })
        H.close(c5, c_full:narrow(0, 17, 3):contiguous():tolist(), 0, 0, 'cos rows')
        H.close(s5, s_full:narrow(0, 17, 3):contiguous():tolist(), 0, 0, 'sin rows')
    end)

    it('dot(R_m q, R_n k) depends only on m - n, and norms are preserved (§14.8)', function()
        local D = 16
        local q, k = H.randn { 1, 1, 1, D }, H.randn { 1, 1, 1, D }
        local function rot(x, pos)
            local c, s = nc.rope_tables(1, D, { pos0 = pos })
            return nc.rope(x, c, s):tolist()
        end
        local function dot(a, b) local s = 0; for i = 1, #a do s = s + a[i] * b[i] end; return s end
        for _, shift in ipairs { 0, 1, 3, 17, 100 } do
            local d1 = dot(rot(q, shift + 5), rot(k, 5))
            local d2 = dot(rot(q, shift + 40), rot(k, 40))
            assert.is_true(math.abs(d1 - d2) <= REL_1E6 * 10 * math.max(1, math.abs(d1)),
                string.format('shift %d: %.9g vs %.9g', shift, d1, d2))
        end
        local ql = q:tolist()
        local r = rot(q, 1234)
        assert.is_true(math.abs(math.sqrt(dot(r, r)) - math.sqrt(dot(ql, ql))) <= REL_1E6 * math.sqrt(dot(ql, ql)))
    end)

    it('backward (inverse rotation) matches finite differences', function()
        local cos, sin = nc.rope_tables(5, 6, { pos0 = 2 })
        H.fd_check(function(x) return nc.rope(x, cos, sin) end, { H.randn { 2, 5, 3, 6 } })
        H.fd_check(function(x) return nc.rope(x:transpose(1, 2), cos, sin) end, { H.randn { 1, 3, 5, 6 } })
    end)

    it('rejects mismatched tables', function()
        local cos, sin = nc.rope_tables(4, 8)
        local ok, err = pcall(nc.rope, nc.zeros { 1, 5, 2, 8 }, cos, sin)
        assert.is_false(ok)
        assert.matches('rope: expected cos of shape (5, 4), got (4, 4)', err, 1, true)
        assert.is_truthy(C)
    end)
end)
