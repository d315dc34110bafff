-- spec/mhc_spec.lua — nanochat.mhc (mHC / mHC-lite, algorithms.md §12): the config contract, the
-- §12.4 properties of Sinkhorn-Knopp and of the Birkhoff-von Neumann (lite) map, the fused C
-- stream-mixing kernels against the composite ops (AVX2 and scalar) and a float64 reference,
-- finite-difference gradients of the layer (every parameter and the input, both kinds, fused and
-- composite) and of the whole fp32 model, init equivalence with the plain GPT (n = 1, 2, 4, both
-- kinds, rel 1e-6), parameter roles and counts, the optimizer path, training, KV-cached decoding
-- and nc.mhc.report.
package.path = 'lua/?.lua;lua/?/init.lua;' .. package.path
local nc = require 'nanochat'
package.path = 'spec/helpers/?.lua;' .. package.path
local Fx = require 'model_fixtures'
local gpt = nc.models.gpt
local mhc = nc.mhc
local H = dofile('spec/ops/nn_helpers.lua')

-- Tolerances (named)
local ROW_EXACT = 1e-6        -- the axis Sinkhorn normalizes last / both axes of mHC-lite (f32)
local COL_20_ITERS = 1e-3     -- the other axis after 20 iterations, N(0, 1) logits (§12.4: worst seen 4e-4)
local CONVERGED = 1e-5        -- Sinkhorn invariance after 300 iterations (f32)
local INIT_REL = 1e-6         -- mHC at init vs the plain model: max |diff| / max |logit|
local MIX_ATOL = 2e-5         -- fused kernels vs composite ops / float64 reference (values ~1, d <= 40)
local CACHE_ATOL = 1e-5       -- cached decoding vs the full forward
local FD_ATOL, FD_RTOL = 2e-3, 2e-2

local micro = Fx.micro

local batch = Fx.batch

local function max_abs(t) return t:abs():max():item() end
local function max_abs_diff(a, b) return max_abs(a - b) end

local function same_bits(a, b)
    local la, lb = a:tolist(), b:tolist()
    if #la ~= #lb then return false end
    for i = 1, #la do if la[i] ~= lb[i] then return false end end
    return true
end

-- max |sum over dim - 1| of (..., n, n) matrices; dim -1 = rows, -2 = columns
local function sum_err(Hm, dim) return max_abs(Hm:sum(dim) - 1) end

local perturb_mhc = Fx.perturb_mhc   -- seeded random mHC coefficients

describe('nc.mhc config', function()
    it('fills defaults and is what gpt.config validates', function()
        local c = gpt.config(micro { mhc = {} })
        assert.are.same({ n = 4, kind = 'lite', iters = 20, dynamic = true, alpha_init = 0.01 }, c.mhc)
        local s = gpt.config(micro { mhc = { n = 2, kind = 'sinkhorn', iters = 7, dynamic = false } })
        assert.are.same({ n = 2, kind = 'sinkhorn', iters = 7, dynamic = false, alpha_init = 0.01 }, s.mhc)
        assert.are.equal(3, gpt.config(micro { mhc = { n = 3, kind = 'lite' } }).mhc.n)   -- 6 permutations: fine
        assert.are.equal(6, gpt.config(micro { mhc = { n = 6, kind = 'sinkhorn' } }).mhc.n)
    end)

    it('rejects bad configs with clear messages', function()
        local function bad(sub) return function() gpt.config(micro { mhc = sub }) end end
        assert.has_error(bad { n = 5, kind = 'lite' },
            "mhc: kind 'lite' mixes all n! permutation matrices: n = 5 would need 120; use n <= 4 or kind = 'sinkhorn'")
        assert.has_error(bad { n = 0 }, 'mhc: cfg.mhc.n must be an integer in 1..16, got 0')
        assert.has_error(bad { n = 2.5, kind = 'sinkhorn' }, 'mhc: cfg.mhc.n must be an integer in 1..16, got 2.5')
        assert.has_error(bad { kind = 'hc' }, "mhc: cfg.mhc.kind must be 'lite' or 'sinkhorn', got hc")
        assert.has_error(bad { iters = 0, kind = 'sinkhorn' }, 'mhc: cfg.mhc.iters must be a positive integer, got 0')
        assert.has_error(bad { streams = 4 }, 'mhc: unknown cfg.mhc field streams')
        assert.has_error(bad { dynamic = 1 }, 'mhc: cfg.mhc.dynamic must be a boolean, got number')
        assert.has_error(bad { alpha_init = -1 }, 'mhc: cfg.mhc.alpha_init must be >= 0, got -1')
        assert.has_error(function() gpt.config(micro { mhc = 4 }) end, 'gpt: cfg.mhc must be a table, got number')
    end)
end)

describe('Sinkhorn-Knopp (log domain)', function()
    it('20 iterations on 4 x 4 N(0, 1) logits: rows within 1e-6, columns within 1e-3, entries >= 0', function()
        local L = H.randn({ 256, 4, 4 })
        local S = mhc.sinkhorn(L, 20)
        assert.is_true(sum_err(S, -1) <= ROW_EXACT, 'rows ' .. sum_err(S, -1))
        local ce = sum_err(S, -2)
        assert.is_true(ce <= COL_20_ITERS, 'columns ' .. ce)
        assert.is_true(ce > 0)   -- finite iterations: columns are not exact (the test can see the difference)
        assert.is_true(S:min():item() >= 0)
        -- many iterations: both axes
        local S300 = mhc.sinkhorn(L, 300)
        assert.is_true(sum_err(S300, -2) <= CONVERGED and sum_err(S300, -1) <= ROW_EXACT)
    end)

    it('is invariant to adding a constant to a row or a column of the logits (converged)', function()
        local L = H.randn({ 4, 4 })
        local base = mhc.sinkhorn(L, 300)
        for _, case in ipairs { { dim = 0, idx = 2, c = 3.7 }, { dim = 1, idx = 1, c = -2.5 }, { dim = 0, idx = 0, c = 9 } } do
            local L2 = L:clone()
            local v = L2:select(case.dim, case.idx)
            nc.no_grad(function() v:copy_(v + case.c) end)
            local e = max_abs_diff(mhc.sinkhorn(L2, 300), base)
            assert.is_true(e <= CONVERGED, string.format('dim %d: %.3g', case.dim, e))
        end
    end)

    it('near-identity init (0 on the diagonal, -8 off it): off-diagonal entries < 1e-3', function()
        local m = gpt.new(micro { mhc = { n = 4, kind = 'sinkhorn' } })
        local _, _, Hr = m.h[1].mhc_attn:coefficients(nil)
        local t = Hr:tolist()
        for i = 0, 3 do
            for j = 0, 3 do
                local v = t[i * 4 + j + 1]
                if i == j then assert.is_true(v > 0.99) else assert.is_true(v < 1e-3 and v > 0) end
            end
        end
    end)

    it('rejects bad arguments', function()
        assert.has_error(function() mhc.sinkhorn(nc.zeros { 3, 4 }) end, 'mhc.sinkhorn: expected logits (..., n, n)')
        assert.has_error(function() mhc.sinkhorn(nc.zeros { 3, 3 }, 0) end, 'mhc.sinkhorn: iters must be a positive integer, got 0')
    end)
end)

describe('mHC-lite (convex combination of permutation matrices)', function()
    it('n! distinct permutation matrices, the identity first', function()
        for n, count in pairs { [1] = 1, [2] = 2, [3] = 6, [4] = 24 } do
            local P = mhc.perm_matrices(n)
            assert.are.same({ count, n * n }, P:shape())
            local seen = {}
            local rows = P:totable()
            for k, r in ipairs(rows) do
                local key = table.concat(r, ',')
                assert.is_nil(seen[key], 'duplicate permutation ' .. k)
                seen[key] = true
                for i = 0, n - 1 do   -- a permutation matrix: one 1 per row and per column
                    local rs, cs = 0, 0
                    for j = 0, n - 1 do rs = rs + r[i * n + j + 1]; cs = cs + r[j * n + i + 1] end
                    assert.are.equal(1, rs)
                    assert.are.equal(1, cs)
                end
            end
            for i = 0, n - 1 do for j = 0, n - 1 do assert.are.equal(i == j and 1 or 0, rows[1][i * n + j + 1]) end end
        end
    end)

    it('rows and columns sum to 1 within 1e-6 for arbitrary logits; entries >= 0', function()
        local P = mhc.perm_matrices(4)
        for _, std in ipairs { 1, 3, 30 } do
            local Hm = mhc.lite(H.randn({ 128, 24 }, std), P)
            assert.are.same({ 128, 4, 4 }, Hm:shape())
            assert.is_true(sum_err(Hm, -1) <= ROW_EXACT, 'rows, std ' .. std)
            assert.is_true(sum_err(Hm, -2) <= ROW_EXACT, 'columns, std ' .. std)
            assert.is_true(Hm:min():item() >= 0)
        end
        assert.has_error(function() mhc.lite(nc.zeros { 2, 6 }, P) end, 'mhc.lite: expected logits (..., 24) for 24 permutation matrices')
    end)

    it('init: diagonal (1 + 5 e^-8) / (1 + 23 e^-8), off-diagonal 6 e^-8 / (1 + 23 e^-8) (n = 4)', function()
        local m = gpt.new(micro { mhc = { n = 4, kind = 'lite' } })
        local _, _, Hr = m.h[1].mhc_mlp:coefficients(nil)
        local e8 = math.exp(-8)
        local t = Hr:tolist()
        for i = 0, 3 do
            for j = 0, 3 do
                -- (n-1)! = 6 permutations map i to j; for i = j one of them is the identity (logit 0)
                local want = (i == j) and (1 + 5 * e8) / (1 + 23 * e8) or 6 * e8 / (1 + 23 * e8)
                assert.is_true(math.abs(t[i * 4 + j + 1] - want) <= 1e-7, string.format('(%d, %d)', i, j))
            end
        end
    end)
end)

-- float64 reference of the two mixes on flat lists: x (R, n, d), hp (R, n), y (R, d), hres (R, n, n)
local function ref_pre(x, hp, R, n, d)
    local out = {}
    for r = 0, R - 1 do
        for k = 0, d - 1 do
            local s = 0
            for j = 0, n - 1 do s = s + hp[r * n + j + 1] * x[(r * n + j) * d + k + 1] end
            out[r * d + k + 1] = s
        end
    end
    return out
end
local function ref_post(x, y, hres, hpost, R, n, d)
    local out = {}
    for r = 0, R - 1 do
        for i = 0, n - 1 do
            for k = 0, d - 1 do
                local s = hpost[r * n + i + 1] * y[r * d + k + 1]
                for j = 0, n - 1 do s = s + hres[(r * n + i) * n + j + 1] * x[(r * n + j) * d + k + 1] end
                out[(r * n + i) * d + k + 1] = s
            end
        end
    end
    return out
end

describe('fused stream-mixing kernels (kernels/cpu/mhc.c)', function()
    local B, T, n, d = 2, 5, 4, 37   -- odd d: vector tails
    local function inputs()
        return H.randn { B, T, n, d }, H.randn { B, T, n }, H.randn { B, T, d }, H.randn { B, T, n, n }, H.randn { B, T, n }
    end

    local function run_both(f)
        -- fused (per CPU kernel) and composite: values and every gradient
        local results = {}
        local prev_kernel = nc.cpu_kernel()
        for _, mode in ipairs { 'composite', 'avx2', 'scalar' } do
            local prev = mhc.set_fused(mode ~= 'composite')
            if mode ~= 'composite' then nc.set_cpu_kernel(mode) end
            local ok, err = pcall(function() results[mode] = f() end)
            mhc.set_fused(prev)
            nc.set_cpu_kernel(prev_kernel)
            assert(ok, err)
        end
        return results
    end

    it('pre and post match a float64 reference and the composite ops, forward and backward (avx2 and scalar)', function()
        local x, hp, y, hres, hpost = inputs()
        local R = B * T
        local want_pre = ref_pre(x:tolist(), hp:tolist(), R, n, d)
        local want_post = ref_post(x:tolist(), y:tolist(), hres:tolist(), hpost:tolist(), R, n, d)
        local gh, gout = H.randn { B, T, d }, H.randn { B, T, n, d }
        local res = run_both(function()
            local leaves = {}
            for i, t in ipairs { x, hp, y, hres, hpost } do leaves[i] = t:detach():clone():requires_grad_(true) end
            local a = mhc.pre_mix(leaves[1], leaves[2])
            local b = mhc.post_mix(leaves[1], leaves[3], leaves[4], leaves[5])
            nc.backward(a, gh)
            nc.backward(b, gout)
            local out = { pre = a:detach(), post = b:detach() }
            for i, l in ipairs(leaves) do out[i] = l.grad end
            return out
        end)
        for mode, r in pairs(res) do
            H.close(r.pre, want_pre, MIX_ATOL, MIX_ATOL, mode .. ' pre')
            H.close(r.post, want_post, MIX_ATOL, MIX_ATOL, mode .. ' post')
            if mode ~= 'composite' then
                for i = 1, 5 do
                    assert.is_true(max_abs_diff(r[i], res.composite[i]) <= MIX_ATOL, mode .. ' grad ' .. i)
                end
            end
        end
    end)

    it('the fused projection rstd(x) x_flat phi^T matches rmsnorm + linear, forward and backward', function()
        local x, phi = H.randn { 2, 5, 4, 9 }, H.randn({ 11, 36 }, 0.3)
        local g = H.randn { 2, 5, 11 }
        local res = run_both(function()
            local xl, pl = x:detach():clone():requires_grad_(true), phi:detach():clone():requires_grad_(true)
            local out = mhc.project(xl, pl, 1e-6)
            nc.backward(out, g)
            return { out:detach(), xl.grad, pl.grad }
        end)
        -- the float64 reference of the forward
        local xs, ps, want = x:tolist(), phi:tolist(), {}
        for r = 0, 9 do
            local ss = 0
            for k = 1, 36 do ss = ss + xs[r * 36 + k] ^ 2 end
            local inv = 1 / math.sqrt(ss / 36 + 1e-6)
            for o = 0, 10 do
                local acc = 0
                for k = 1, 36 do acc = acc + xs[r * 36 + k] * ps[o * 36 + k] end
                want[r * 11 + o + 1] = acc * inv
            end
        end
        for mode, r in pairs(res) do
            H.close(r[1], want, MIX_ATOL, MIX_ATOL, mode .. ' project')
            for i = 2, 3 do assert.is_true(max_abs_diff(r[i], res.composite[i]) <= MIX_ATOL, mode .. ' grad ' .. i) end
        end
        H.fd_check(function(a, b) return mhc.project(a, b) end, { H.randn { 3, 2, 5 }, H.randn({ 4, 10 }, 0.5) })
        assert.has_error(function() mhc.project(nc.zeros { 2, 4, 8 }, nc.zeros { 3, 31 }) end)
    end)

    it('finite differences of the fused backward', function()
        local x, hp, y, hres, hpost = H.randn { 2, 3, 3, 5 }, H.randn { 2, 3, 3 }, H.randn { 2, 3, 5 }, H.randn { 2, 3, 3, 3 },
            H.randn { 2, 3, 3 }
        H.fd_check(function(a, b) return mhc.pre_mix(a, b) end, { x, hp })
        H.fd_check(function(a, b, c, e) return mhc.post_mix(a, b, c, e) end, { x, y, hres, hpost })
    end)

    it('rejects mismatched shapes with the op and both shapes named', function()
        local x = nc.zeros { 2, 3, 4, 8 }
        assert.has_error(function() mhc.pre_mix(x, nc.zeros { 2, 3, 3 }) end,
            'mhc.pre_mix: x (2, 3, 4, 8) and coefficients (2, 3, 3) do not match')
        assert.has_error(function() mhc.post_mix(x, nc.zeros { 2, 3, 8 }, nc.zeros { 2, 3, 4, 3 }, nc.zeros { 2, 3, 4 }) end,
            'mhc.post_mix: x (2, 3, 4, 8) and coefficients (2, 3, 4, 3) do not match')
        local ok, err = pcall(function() mhc.post_mix(x, nc.zeros { 2, 3, 7 }, nc.zeros { 2, 3, 4, 4 }, nc.zeros { 2, 3, 4 }) end)
        assert.is_false(ok)
        assert.is_truthy(tostring(err):find('mhc_post', 1, true))
    end)
end)

describe('the fused mHC layer equals the composite one', function()
    for _, kind in ipairs { 'lite', 'sinkhorn' } do
        it(kind .. ': output and every gradient (packed lite path: nc_mhc_coef_lite + strided coefficient views)', function()
            local c = gpt.config { vocab_size = 16, d_model = 12, n_layer = 1, n_head = 1, mhc = { n = 4, kind = kind } }
            local layer = mhc.Layer(c, 2)
            local g = nc.generator(9)
            nc.no_grad(function()
                layer.bias:add_scaled_(nc.randn(layer.bias:shape(), { generator = g }), 2)
                layer.phi:copy_(nc.randn(layer.phi:shape(), { generator = g, std = 0.5 }))
                layer.alpha:copy_(nc.rand({ 3 }, { generator = g, lo = 0.5, hi = 1.5 }))
            end)
            local W = H.randn({ 12, 12 }, 0.5)
            local function branch(h) return nc.tanh(nc.linear(nc.rmsnorm(h, nil, 1e-6), W)) end
            local x0, gout = H.randn { 3, 5, 4, 12 }, H.randn { 3, 5, 4, 12 }
            local res = {}
            for _, fused in ipairs { true, false } do
                local prev = mhc.set_fused(fused)
                local x = x0:clone():requires_grad_(true)
                local ok, err = pcall(function()
                    local out = layer(x, branch)
                    out:backward(gout)
                    res[fused] = { out = out:detach(), x = x.grad, phi = layer.phi.grad, alpha = layer.alpha.grad,
                                   bias = layer.bias.grad }
                end)
                mhc.set_fused(prev)
                layer:zero_grad()
                assert(ok, err)
            end
            for _, k in ipairs { 'out', 'x', 'phi', 'alpha', 'bias' } do
                local e = max_abs_diff(res[true][k], res[false][k])
                assert.is_true(e <= 1e-4 * math.max(1, max_abs(res[false][k])), string.format('%s: %.3g', k, e))
            end
        end)
    end
end)

describe('thread-count independence of the fused layer', function()
    it('1 and 2 threads give the same bits (outputs and every gradient; parallel coefficient kernels)', function()
        for _, kind in ipairs { 'lite', 'sinkhorn' } do
            local c = gpt.config { vocab_size = 16, d_model = 64, n_layer = 1, n_head = 1, mhc = { n = 4, kind = kind } }
            local layer = mhc.Layer(c, 0)
            local g = nc.generator(2)
            nc.no_grad(function()
                layer.bias:add_scaled_(nc.randn(layer.bias:shape(), { generator = g }), 1)
                layer.phi:copy_(nc.randn(layer.phi:shape(), { generator = g, std = 0.2 }))
            end)
            local x0, gout = H.randn { 4, 40, 4, 64 }, H.randn { 4, 40, 4, 64 }   -- 160 tokens: above the parallel thresholds
            local prev = nc.get_num_threads()
            local res = {}
            for _, th in ipairs { 1, 2 } do
                nc.set_num_threads(th)
                local x = x0:clone():requires_grad_(true)
                local out = layer(x, function(h) return nc.tanh(h) end)
                out:backward(gout)
                res[th] = { out:detach(), x.grad, layer.phi.grad, layer.alpha.grad, layer.bias.grad }
                layer:zero_grad()
            end
            nc.set_num_threads(prev)
            for i = 1, 5 do assert.is_true(same_bits(res[1][i], res[2][i]), kind .. ' tensor ' .. i) end
        end
    end)
end)

describe('finite-difference gradients of an mHC layer (parameters and input)', function()
    for _, kind in ipairs { 'lite', 'sinkhorn' } do
        for _, fused in ipairs { true, false } do
            it(kind .. (fused and ' fused' or ' composite'), function()
                local c = gpt.config { vocab_size = 16, d_model = 6, n_layer = 1, n_head = 1, mhc = { n = 3, kind = kind, iters = 6 } }
                local layer = mhc.Layer(c, 1)
                local g = nc.generator(5)
                nc.no_grad(function()
                    layer.bias:add_scaled_(nc.randn(layer.bias:shape(), { generator = g }), 1)
                    layer.phi:copy_(nc.randn(layer.phi:shape(), { generator = g, std = 0.4 }))
                    layer.alpha:copy_(nc.rand({ 3 }, { generator = g, lo = 0.5, hi = 1 }))
                end)
                local W = H.randn({ 6, 6 }, 0.5)
                -- a nonlinear branch with its own normalization, like the model's
                local function branch(h) return nc.tanh(nc.linear(nc.rmsnorm(h, nil, 1e-6), W)) end
                local x = H.randn { 2, 3, 3, 6 }
                local prev = mhc.set_fused(fused)
                local ok, err = pcall(H.fd_check, function(xx) return layer(xx, branch) end,
                    { x, layer.phi, layer.alpha, layer.bias }, { atol = FD_ATOL, rtol = FD_RTOL, sample = 40 })
                mhc.set_fused(prev)
                assert(ok, err)
            end)
        end
    end
end)

describe('mHC in the GPT', function()
    it('at init gives the plain model\'s logits (rel 1e-6) with bit-identical plain weights, n = 1, 2, 4, both kinds', function()
        local x = batch(2, 12, 256, 3)
        local plain = gpt.new(micro { seed = 9 })
        local want = plain:forward(x)
        local scale = max_abs(want)
        local plain_params = {}
        for _, nv in ipairs(plain:named_parameters()) do plain_params[nv[1]] = nv[2] end
        local variants = {}
        for _, kind in ipairs { 'lite', 'sinkhorn' } do
            for _, n in ipairs { 1, 2, 4 } do variants[#variants + 1] = { n = n, kind = kind } end
        end
        variants[#variants + 1] = { n = 4, kind = 'lite', dynamic = false }
        variants[#variants + 1] = { n = 3, kind = 'sinkhorn', dynamic = false }
        for _, v in ipairs(variants) do
            local m = gpt.new(micro { seed = 9, mhc = v })
            local tag = v.kind .. ' n=' .. v.n .. (v.dynamic == false and ' static' or '')
            local matched = 0
            for _, nv in ipairs(m:named_parameters()) do
                local p = plain_params[nv[1]]
                if p then assert.is_true(same_bits(p, nv[2]), tag .. ' ' .. nv[1]); matched = matched + 1 end
            end
            assert.are.equal(#plain:named_parameters(), matched)
            local rel = max_abs_diff(m:forward(x), want) / scale
            assert.is_true(rel <= INIT_REL, string.format('%s: rel %.3g', tag, rel))
        end
        -- and it is not trivially equal once the mHC parameters move
        local m = gpt.new(micro { seed = 9, mhc = { n = 4 } })
        perturb_mhc(m, 1)
        assert.is_true(max_abs_diff(m:forward(x), want) / scale > 1e-3)
    end)

    it('names mHC parameters, gives them the scalar role (AdamW in the hybrid optimizer, never Muon), counts them', function()
        for _, v in ipairs { { n = 4, kind = 'lite' }, { n = 3, kind = 'sinkhorn' }, { n = 2, kind = 'lite', dynamic = false } } do
            local cfg = micro { mhc = v }
            local m = gpt.new(cfg)
            local roles = m:param_roles()
            local n_mhc = 0
            for _, nv in ipairs(m:named_parameters()) do
                if nv[1]:find('mhc_', 1, true) then
                    assert.are.equal('scalar', roles[nv[1]], nv[1])
                    n_mhc = n_mhc + 1
                end
            end
            assert.are.equal(cfg.n_layer * 2 * (v.dynamic == false and 1 or 3), n_mhc)
            local want, got = gpt.count_params(cfg), m:param_counts()
            for _, k in ipairs { 'total', 'embedding', 'head', 'matrix', 'norm', 'matmul', 'scalar' } do
                assert.are.equal(want[k], got[k], k)
            end
            local opt = nc.optim.hybrid { model = m }
            for name, a in pairs(opt:assignments()) do
                if name:find('mhc_', 1, true) then assert.are.equal('adamw', a.optim, name) end
            end
        end
        local m = gpt.new(micro { mhc = { n = 4, kind = 'lite' } })
        local K = 2 * 4 + 24
        assert.are.same({ K, 4 * 32 }, m.h[1].mhc_attn.phi:shape())
        assert.are.same({ K }, m.h[2].mhc_mlp.bias:shape())
        -- own streams: block i's attention favours stream 2(i-1) mod n, its MLP the next one
        assert.are.equal(1, m.h[1].mhc_attn.bias:get(0))   -- (0-based element indices)
        assert.are.equal(-1, m.h[1].mhc_attn.bias:get(1))
        assert.are.equal(1, m.h[1].mhc_mlp.bias:get(1))
        assert.are.equal(1, m.h[2].mhc_attn.bias:get(2))
        assert.are.equal(-1, m.h[2].mhc_attn.bias:get(0))
    end)

    it('finite-difference gradients of the whole fp32 model w.r.t. the mHC parameters', function()
        for _, v in ipairs { { n = 3, kind = 'lite' }, { n = 2, kind = 'sinkhorn', iters = 5 } } do
            local m = gpt.new(micro { ternary = false, init_std = 0.3, head_std = 0.3, seed = 11, seq_len = 8, mhc = v })
            perturb_mhc(m, 4, 0.5)
            local x, y = batch(2, 6, 256, 21)
            local function loss_of() return nc.no_grad(function() return (m:forward(x, y)):item() end) end
            local loss = m:forward(x, y)
            loss:backward()
            local checked = 0
            for _, nv in ipairs(m:named_parameters()) do
                local name, p = nv[1], nv[2]
                if name:find('mhc_', 1, true) then
                    local gflat = p.grad:reshape { -1 }
                    local _, imax = gflat:abs():max(0)
                    local flat = p:reshape { -1 }
                    for _, i in ipairs { imax:item(), math.floor(p:numel() / 2) + 1 } do
                        local w0 = flat:get(i)
                        local h = 1e-2
                        flat:set(i, w0 + h)
                        local lp = loss_of()
                        flat:set(i, w0 - h)
                        local lm = loss_of()
                        flat:set(i, w0)
                        local fd, an = (lp - lm) / (2 * h), gflat:get(i)
                        assert(math.abs(fd - an) <= 2e-4 + 3e-2 * math.abs(an),
                            string.format('%s %s[%d]: analytic %.6g, finite difference %.6g', v.kind, name, i, an, fd))
                        checked = checked + 1
                    end
                end
            end
            assert.are.equal(2 * 2 * 2 * 3, checked)
        end
    end)

    it('a micro mHC-lite model trains with the hybrid optimizer (loss falls, mHC parameters move)', function()
        local m = gpt.new(micro { seed = 2, mhc = { n = 4, kind = 'lite' } })
        local bias0 = m.h[1].mhc_attn.bias:clone()
        local opt = nc.optim.hybrid { model = m, rules = { scalar = { optim = 'adamw', lr = 1e-2 } } }
        local x, y = batch(2, 16, 256, 3)
        local first, last
        for step = 1, 15 do
            local loss = m:forward(x, y)
            if step == 1 then first = loss:item() end
            last = loss:item()
            loss:backward()
            opt:step()
            opt:zero_grad()
        end
        assert.is_true(last < first - 1.0, string.format('loss %.4f -> %.4f', first, last))
        assert.is_true(max_abs_diff(m.h[1].mhc_attn.bias, bias0) > 1e-3)
        local r = mhc.report(m, batch(1, 8, 256, 4), { quiet = true })
        assert.is_true(r.max_row_err <= ROW_EXACT and r.max_col_err <= ROW_EXACT)   -- lite stays doubly stochastic
    end)

    it('KV-cached decoding equals the full forward (trained-like mHC parameters)', function()
        for _, v in ipairs { { n = 4, kind = 'lite' }, { n = 2, kind = 'sinkhorn' } } do
            local m = gpt.new(micro { head_std = 0.05, mhc = v })
            perturb_mhc(m, 8)
            local B, T = 2, 14
            local x = batch(B, T, 256, 9)
            local full = nc.no_grad(function() return m:forward(x) end)
            for _, chunks in ipairs { { 1 }, { 5, 2 } } do
                local cache = m:new_cache(B, 16)
                local pos, k = 0, 1
                while pos < T do
                    local len = math.min(chunks[math.min(k, #chunks)], T - pos)
                    local got = m:forward_cached(x:narrow(1, pos, len), cache)
                    local err = max_abs_diff(got, full:narrow(1, pos, len))
                    assert(err <= CACHE_ATOL, string.format('%s positions %d..%d: %.3g', v.kind, pos, pos + len - 1, err))
                    pos, k = pos + len, k + 1
                end
            end
        end
    end)

    it('nc.mhc.report: per-sublayer doubly-stochastic errors and the composite gain', function()
        local m = gpt.new(micro { mhc = { n = 4, kind = 'sinkhorn' } })
        local r0 = mhc.report(m, nil, { quiet = true })
        assert.are.equal('static', r0.source)
        assert.are.equal(2 * 2, #r0.layers)
        assert.are.equal('h.0.mhc_attn', r0.layers[1].name)
        assert.is_true(math.abs(r0.fwd_gain - 1) <= 1e-5 and math.abs(r0.bwd_gain - 1) <= 1e-5)
        perturb_mhc(m, 3, 3)   -- strong random logits: Sinkhorn's columns are off after 20 iterations
        local r1 = mhc.report(m, batch(2, 5, 256, 1), { quiet = true })
        assert.are.equal('batch', r1.source)
        assert.are.equal(10, r1.tokens)
        assert.is_true(r1.max_row_err <= ROW_EXACT)
        assert.is_true(r1.max_col_err > r1.max_row_err)
        -- rows sum to 1 and entries are >= 0, so the product's row sums are 1: fwd gain 1
        assert.is_true(math.abs(r1.fwd_gain - 1) <= 1e-5)
        assert.is_true(r1.bwd_gain >= 1 - 1e-5)
        assert.has_error(function() mhc.report(gpt.new(micro())) end, 'mhc.report: the model has no mHC layers (cfg.mhc not set)')
    end)

    it('the packed inference engine runs an mHC model (its streams, not as a plain one)', function()
        -- (the full train = serve checks are in spec/models/engine_e3_spec.lua)
        local m = gpt.new(micro { mhc = { n = 2 }, head_std = 0.3 })
        perturb_mhc(m, 3, 1)
        local x = batch(1, 6, 256, 3)
        local ref = nc.no_grad(function() return m:forward(x) end)
        local r = (ref - nc.pack(m):forward(x)):abs():max():item() / ref:abs():max():item()
        assert.is_true(r < 1e-4, 'relative logit difference ' .. r)
    end)
end)

describe('tools/bench/arch_mhc.lua as a module', function()
    it('run(opts) returns table rows and the JSON object (tiny settings; no timing is asserted)', function()
        local run = dofile('tools/bench/arch_mhc.lua')
        assert.are.equal('function', type(run))
        local prev = nc.get_num_threads()
        local out = run { layers = 1, B = 1, T = 8, steps = 1, warmup = 0, threads = prev, variants = 'plain,lite1,lite4' }
        assert.are.equal(3, #out.rows)
        local j = out.json
        assert.are.equal('arch_mhc', j.bench)
        assert.is_true(type(j.mhc4_overhead) == 'number' and j.mhc4_overhead == j.mhc4_overhead and j.mhc4_overhead > -1)
        assert.is_true(j.variants.lite4.step_s > 0)
        assert.has_error(function() run { variants = 'bogus' } end)
    end)
end)
