-- spec/ops/quant_spec.lua — BitNet b1.58 fake quantizers: the algorithms.md §1.8 unit tests plus
-- float64 references, grouping, rounding rule and the straight-through gradient.
package.path = 'lua/?.lua;lua/?/init.lua;spec/ops/?.lua;' .. package.path
local nc = require 'nanochat'
local H = require 'nn_helpers'

local ZERO_FRAC_TOL = 0.01        -- §1.8: 0.310 +- 0.01 (Gaussian), 0.25 (uniform)
local SCALE_RTOL = 1e-6           -- Qw(cW) = c Qw(W) for non power-of-two c

-- round half to even in float64
local function rne(x)
    local f = math.floor(x)
    local d = x - f
    if d > 0.5 then return f + 1 elseif d < 0.5 then return f end
    return (f % 2 == 0) and f or f + 1
end

local function ref_quant_weight(w, gs)
    local n = #w
    gs = gs == 0 and n or gs
    local out, gammas = {}, {}
    for g0 = 0, n - 1, gs do
        local s = 0
        for i = g0 + 1, g0 + gs do s = s + math.abs(w[i]) end
        local gamma = math.max(s / gs, 1e-5)
        gammas[#gammas + 1] = gamma
        for i = g0 + 1, g0 + gs do out[i] = gamma * math.max(-1, math.min(1, rne(w[i] / gamma))) end
    end
    return out, gammas
end

describe('quant_weight (absmean ternary)', function()
    it('matches float64 per tensor and per group; values are {-1, 0, 1} * gamma', function()
        local w = H.randn { 12, 10 }
        local q, scale = nc.quant_weight(w)
        local wo, wg = ref_quant_weight(w:tolist(), 0)
        H.close(scale, wg, 0, 1e-6, 'gamma')
        H.close(q, wo, 1e-6, 1e-6, 'per tensor')
        local gamma = scale:tolist()[1]
        for _, v in ipairs(q:tolist()) do
            local t = v / gamma
            assert.is_true(t == -1 or t == 0 or t == 1, 'ternary value ' .. t)
        end
        local qg, sg = nc.quant_weight(w, { group_size = 40 })
        assert.same({ 3 }, sg:shape())
        local go, gg = ref_quant_weight(w:tolist(), 40)
        H.close(sg, gg, 0, 1e-6, 'group gammas')
        H.close(qg, go, 1e-6, 1e-6, 'per group')
    end)

    it('Qw(cW) = c Qw(W) for c > 0', function()
        local w = H.randn { 16, 9 }
        local q = nc.quant_weight(w):tolist()
        for _, c in ipairs { 4, 2.5, 0.01 } do
            local wc, wl, cl = nc.empty { 16, 9 }, w:tolist(), {}
            for i = 1, #wl do cl[i] = c * wl[i] end
            H.write(wc, cl)
            local qc = nc.quant_weight(wc):tolist()
            local want = {}
            for i = 1, #q do want[i] = c * q[i] end
            H.close(qc, want, 0, c == 4 and 0 or SCALE_RTOL, 'c = ' .. c)
        end
    end)

    it('zero fraction is 0.310 for Gaussian and 0.25 for uniform weights', function()
        local function zero_frac(q)
            local z, l = 0, q:tolist()
            for _, v in ipairs(l) do if v == 0 then z = z + 1 end end
            return z / #l
        end
        local g = nc.randn({ 500, 400 }, { generator = nc.generator(99), std = 0.02 })
        local fz = zero_frac((nc.quant_weight(g)))
        assert.is_true(math.abs(fz - 0.310) < ZERO_FRAC_TOL, 'Gaussian zero fraction ' .. fz)
        local u = nc.rand({ 500, 400 }, { generator = nc.generator(98), lo = -0.3, hi = 0.3 })
        local fu = zero_frac((nc.quant_weight(u)))
        assert.is_true(math.abs(fu - 0.25) < ZERO_FRAC_TOL, 'uniform zero fraction ' .. fu)
    end)

    it('rounds half to even (w / gamma = 0.5 -> 0, not 1)', function()
        local w = nc.tensor { 0.5, 1.5, 1, 1, -0.5, -1.5, 1, 1 }   -- mean |w| = 1 -> gamma = 1
        local q, s = nc.quant_weight(w)
        assert.equal(1, s:item())
        assert.same({ 0, 1, 1, 1, 0, -1, 1, 1 }, q:tolist())
    end)

    it('a strided (transposed) weight equals its contiguous copy; eps clamps gamma', function()
        local w = H.randn { 7, 5 }
        H.close(nc.quant_weight(w:t()), nc.quant_weight(w:t():contiguous()):tolist(), 0, 0, 'strided')
        local _, s = nc.quant_weight(nc.zeros { 4, 4 })
        H.close(s, { 1e-5 }, 0, 1e-6, 'eps clamp')
    end)

    it('a group size that does not divide numel is an error', function()
        local ok, err = pcall(nc.quant_weight, nc.zeros { 3, 5 }, { group_size = 4 })
        assert.is_false(ok)
        assert.matches('group_size 4 does not divide the 15 elements', err, 1, true)
    end)
end)

describe('quant_act (per-row absmax int8)', function()
    it('matches float64; each row max maps to exactly 127; error <= max|x_row| / 254', function()
        local x = H.randn { 6, 33 }
        local q, s = nc.quant_act(x)
        assert.same({ 6 }, s:shape())
        local xl, ql, sl = x:tolist(), q:tolist(), s:tolist()
        for r = 0, 5 do
            local m = 0
            for j = 1, 33 do m = math.max(m, math.abs(xl[r * 33 + j])) end
            H.close({ sl[r + 1] }, { 127 / m }, 0, 1e-6, 'row scale')
            local qmax = 0
            for j = 1, 33 do
                local i = r * 33 + j
                local level = ql[i] * sl[r + 1]
                assert.is_true(math.abs(level - rne(level)) < 1e-4, 'integer level ' .. level)
                qmax = math.max(qmax, math.abs(rne(level)))
                -- half a step, plus float rounding of the dequantized value
                assert.is_true(math.abs(xl[i] - ql[i]) <= m / 254 * (1 + 1e-5) + 1e-7,
                    string.format('row %d: |x - Qa(x)| = %.3g > %.3g', r, math.abs(xl[i] - ql[i]), m / 254))
                local want = rne(xl[i] * (127 / m)) / (127 / m)
                assert.is_true(math.abs(ql[i] - want) <= 1e-6 * m, 'vs float64')
            end
            assert.equal(127, qmax)
        end
    end)

    it('rounds half to even and works on (B, T, D) and strided input', function()
        local x = nc.tensor { { 127, 0.5, 1.5, 2.5, -0.5, -126.5 } }   -- max 127 -> s = 1
        local q = nc.quant_act(x)
        assert.same({ 127, 0, 2, 2, 0, -126 }, q:tolist())
        local x3 = H.randn { 2, 3, 7 }
        local q3, s3 = nc.quant_act(x3)
        assert.same({ 6 }, s3:shape())
        H.close(q3, nc.quant_act(x3:view { 6, 7 }):tolist(), 0, 0, '3-D')
        local xt = H.randn { 7, 4 }:t()
        H.close(nc.quant_act(xt), nc.quant_act(xt:contiguous()):tolist(), 0, 0, 'strided')
    end)
end)

describe('straight-through estimator', function()
    it('gradients pass unchanged through both quantizers (bitwise)', function()
        local w = H.randn { 5, 6 }:requires_grad_()
        local R = H.randn { 5, 6 }
        local q = nc.quant_weight(w)
        q:backward(R)
        assert.same(R:tolist(), w.grad:tolist())
        local x = H.randn { 3, 6 }:requires_grad_()
        local Rx = H.randn { 3, 6 }
        nc.quant_act(x):backward(Rx)
        assert.same(Rx:tolist(), x.grad:tolist())
    end)

    it('dL/dW through the quantized path equals dL/dWq (bitwise, §1.8)', function()
        local x, w = H.randn { 4, 6 }, H.randn { 5, 6 }
        w:requires_grad_()
        local R = H.randn { 4, 5 }
        nc.linear(nc.quant_act(x), (nc.quant_weight(w))):backward(R)
        local gw = w.grad:tolist()
        local wq = nc.no_grad(function() return (nc.quant_weight(w)) end):clone():requires_grad_()
        local xq = nc.no_grad(function() return (nc.quant_act(x)) end)
        nc.linear(xq, wq):backward(R)
        assert.same(wq.grad:tolist(), gw)
    end)
end)

describe('quantizers: NC_KERNEL=scalar and avx2', function()
    it('give bit-identical outputs and scales (odd sizes, per tensor, per group, ties, NaN-free extremes)', function()
        local has_avx2 = pcall(nc.set_cpu_kernel, 'avx2')
        nc.set_cpu_kernel(os.getenv('NC_KERNEL') or 'auto')
        if not has_avx2 then pending('this CPU has no AVX2') return end
        local function bits(t)
            local ffi = require 'ffi'
            local c = t:contiguous()
            local p = ffi.cast('const uint32_t *', nc.C.nc_tensor_data(c._c))
            local out = {}
            for i = 0, c:numel() - 1 do out[i + 1] = p[i] end
            return out
        end
        local g = nc.generator(5)
        -- values on exact ties: w / gamma = +-0.5, +-1.5 and x s = k + 0.5 happen for these integers
        local ties = nc.tensor({ { 0.5, -0.5, 1.5, -1.5, 2.5, 0, -0, 3, -3, 127, -128, 0.25, 1e-7, -1e-7, 1e30 } })
        local cases = {
            { 'w 333x77', nc.randn({ 333, 77 }, { generator = g }) },
            { 'w 1023x1', nc.randn({ 1023, 1 }, { generator = g }) },
            { 'ties', ties },
            { 'x 3x2053', nc.randn({ 3, 2053 }, { generator = g, std = 4 }) },
        }
        local function run()
            local r = {}
            for _, c in ipairs(cases) do
                local q, s = nc.quant_weight(c[2])
                r[#r + 1] = { c[1] .. ' weight', q, s }
                if c[2]:numel() % 7 == 0 then
                    local q7, s7 = nc.quant_weight(c[2], { group_size = 7 })
                    r[#r + 1] = { c[1] .. ' weight/7', q7, s7 }
                end
                local qa, sa = nc.quant_act(c[2])
                r[#r + 1] = { c[1] .. ' act', qa, sa }
            end
            return r
        end
        nc.set_cpu_kernel('scalar')
        local rs = run()
        nc.set_cpu_kernel('avx2')
        local rv = run()
        nc.set_cpu_kernel(os.getenv('NC_KERNEL') or 'auto')
        for i = 1, #rs do
            assert.are.same(bits(rs[i][2]), bits(rv[i][2]), rs[i][1] .. ' values')
            assert.are.same(bits(rs[i][3]), bits(rv[i][3]), rs[i][1] .. ' scales')
        end
    end)
end)
