-- tools/bench/ns_forms.lua — Newton-Schulz's standard and Gram forms (ns_form), accuracy and speed,
-- in one run:
--   1. accuracy: NS5 of test inputs with bf16 products in the standard and the Gram form, and the
--      Gram form with f32 products, each against the f32 standard iteration (the reference):
--      cosine, and the output's smallest / largest singular value (f32 reference's too). Inputs: Gaussian, log-spaced spectra, one
--      dominant direction, exactly rank-deficient products of Gaussians (rank k), low rank + noise.
--   2. real momentum (real=1, the default): the 36 block matrices of configs/models/tiny.lua after
--      30 training steps on the tiny recipe's data (the hybrid default; momentum = the EMA of the
--      last 10 gradients, beta 0.95): worst and mean cosine of each form to f32.
--   3. speed: ms per NS5 on one thread, standard vs Gram, bf16 and f32 products, per shape
--      (interleaved, best of `reps`).
--
--   ./nanochat tools/bench/ns_forms.lua [real=1] [reps=5] [seed=7]
--
-- Last line: JSON (accuracy rows, real-momentum worst / mean, ms per shape and form).
local nc = require 'nanochat'
local here = debug.getinfo(1, 'S').source:match('^@(.*/)') or './'
local L = dofile(here .. 'lib.lua')
local args = L.parse_args()
local reps = tonumber(args.reps) or 5
local want_real = tostring(args.real or '1') ~= '0'
nc.manual_seed(tonumber(args.seed) or 7)

local function cosine(a, b)
    local d = (a * b):sum():item()
    return d / math.sqrt((a * a):sum():item() * (b * b):sum():item())
end
local function svals(x) local _, s = nc.optim.svd(x); return s:tolist() end
-- U diag(fn(i)) V^T with random orthonormal U, V
local function with_svals(m, n, fn)
    local k = math.min(m, n)
    local U, V = nc.optim.svd(nc.randn { m, k }), nc.optim.svd(nc.randn { n, k })
    local s = {}
    for i = 1, k do s[i] = fn(i, k) end
    return (U * nc.tensor(s):reshape { 1, k }):matmul(V:t())
end
local function rank_k(m, k, n) return nc.randn({ m, k }):matmul(nc.randn { k, n }) end

local out = { bench = 'ns_forms', accuracy = {}, ms = {} }

-- 1. accuracy
local cases = {
    { 'Gaussian 256x1024', nc.randn { 256, 1024 } },
    { 'Gaussian 1024x256', nc.randn { 1024, 256 } },
    { 'Gaussian 128x512', nc.randn { 128, 512 } },
    { 's log-spaced 1e-4..1, 256x1024', with_svals(256, 1024, function(i, k) return 10 ^ (-4 * (i - 1) / (k - 1)) end) },
    { 's log-spaced 1e-6..1, 256x1024', with_svals(256, 1024, function(i, k) return 10 ^ (-6 * (i - 1) / (k - 1)) end) },
    { 'one s = 1, the rest 1e-3', with_svals(256, 1024, function(i) return i == 1 and 1 or 1e-3 end) },
    { 'rank 8 + 1% noise, 256x1024', rank_k(256, 8, 1024) + nc.randn({ 256, 1024 }) * 0.01 },
}
for _, k in ipairs { 1, 2, 4, 8, 16, 32, 64 } do cases[#cases + 1] = { 'rank ' .. k .. ' of 256x1024', rank_k(256, k, 1024), k } end
cases[#cases + 1] = { 'rank 5 of 40x128', rank_k(40, 5, 128), 5 }
cases[#cases + 1] = { 'rank 1 of 16x64', rank_k(16, 1, 64), 1 }
-- very small matrices (forced gram; 'auto' keeps r < 64 on the standard form)
for _, sh in ipairs { { 1, 50 }, { 2, 3 }, { 6, 10 }, { 33, 100 } } do
    cases[#cases + 1] = { string.format('Gaussian %dx%d', sh[1], sh[2]), nc.randn(sh) }
end
local rows = {}
for _, cs in ipairs(cases) do
    local name, G, k = cs[1], cs[2], cs[3]
    local ref = nc.optim.newton_schulz(G, { dtype = 'f32', form = 'standard' })
    local sr = svals(ref)
    local row, rec = { name, string.format('[%.3g, %.3g]', sr[#sr], sr[1]) }, { input = name }
    for _, f in ipairs { 'standard', 'gram' } do
        local O = nc.optim.newton_schulz(G, { dtype = 'bf16', form = f })
        local s = svals(O)
        local c = cosine(O, ref)
        -- rank-k inputs: the largest singular value of the null directions; else the smallest overall
        local lo = k and s[k + 1] or s[#s]
        row[#row + 1] = string.format('%.5f', c)
        row[#row + 1] = string.format('%.3g / %.3g', lo, s[1])
        rec[f] = { cos = L.round(c, 6), s_lo = lo, s_max = L.round(s[1], 4) }
    end
    -- the Gram form with f32 products against the same reference
    local O32 = nc.optim.newton_schulz(G, { dtype = 'f32', form = 'gram' })
    local s32 = svals(O32)
    local lo32 = k and s32[k + 1] or s32[#s32]
    row[#row + 1] = string.format('%.8f', cosine(O32, ref))
    row[#row + 1] = string.format('%.3g', lo32)
    rec.gram_f32 = { cos = cosine(O32, ref), s_lo = lo32 }
    rows[#rows + 1] = row
    out.accuracy[#out.accuracy + 1] = rec
end
print('NS5 with bf16 products vs the f32 standard iteration (s lo: smallest singular value, or for rank-k inputs the')
print('largest of the null directions)')
L.print_table({ 'input', 'f32 s range', 'standard cos', 'standard s lo / max', 'gram cos', 'gram s lo / max',
    'f32 gram cos', 'f32 gram s lo' }, rows)

-- 2. real momentum
if want_real then
    local f = dofile(here .. 'optim_gpt.lua') { d = 256, layers = 6, heads = 4, kv_heads = 2, seq = 256, batch = 8,
                                                seed = 1, val_batches = 1 }
    local model = f.model
    local opt = nc.optim.hybrid { model = model }
    local roles, names = {}, model:param_roles()
    for _, nv in ipairs(model:named_parameters()) do roles[nv[2]] = names[nv[1]] end
    local mom = {}
    for step = 1, 30 do
        local x, y = f.train_batch()
        f.loss(model, x, y):backward()
        if step >= 21 then
            for p, role in pairs(roles) do
                if role == 'matrix' and p.grad and p:dim() == 2 then
                    mom[p] = mom[p] and (mom[p] * 0.95 + p.grad) or p.grad:clone()
                end
            end
        end
        opt:step()
        opt:zero_grad()
    end
    local worst, sum, n = {}, {}, 0
    local pr_lo, pr_hi, top_lo, top_hi = math.huge, 0, math.huge, 0
    for _, U in pairs(mom) do
        n = n + 1
        -- the spectrum's steepness: participation ratio (sum s^2)^2 / sum s^4 and the top direction's
        -- share of the energy sum s^2
        local _, sv = nc.optim.svd(U)
        local e2, e4, top = 0, 0, 0
        for _, v in ipairs(sv:tolist()) do e2 = e2 + v * v; e4 = e4 + v ^ 4; top = math.max(top, v * v) end
        pr_lo, pr_hi = math.min(pr_lo, e2 * e2 / e4), math.max(pr_hi, e2 * e2 / e4)
        top_lo, top_hi = math.min(top_lo, top / e2), math.max(top_hi, top / e2)
        local ref = nc.optim.newton_schulz(U, { dtype = 'f32', form = 'standard' })
        for _, fm in ipairs { 'standard', 'gram' } do
            local c = cosine(nc.optim.newton_schulz(U, { dtype = 'bf16', form = fm }), ref)
            worst[fm] = math.min(worst[fm] or 1, c)
            sum[fm] = (sum[fm] or 0) + c
        end
    end
    print(string.format('\nthe tiny model\'s %d momentum matrices after 30 steps (participation ratio %.1f-%.1f, top '
        .. 'direction %.0f-%.0f%% of the energy), bf16 vs f32 standard: standard worst %.5f mean %.5f; gram (on the '
        .. 'non-square ones) worst %.5f mean %.5f', n, pr_lo, pr_hi, 100 * top_lo, 100 * top_hi, worst.standard,
        sum.standard / n, worst.gram, sum.gram / n))
    out.real = { matrices = n, participation_ratio = { L.round(pr_lo, 2), L.round(pr_hi, 2) },
                 top_share = { L.round(top_lo, 4), L.round(top_hi, 4) }, standard = { worst = L.round(worst.standard, 6), mean = L.round(sum.standard / n, 6) },
                 gram = { worst = L.round(worst.gram, 6), mean = L.round(sum.gram / n, 6) } }
end

-- 3. speed, one thread
local threads0 = nc.get_num_threads()
nc.set_num_threads(1)
local trows = {}
for _, sh in ipairs { { 128, 256 }, { 128, 384 }, { 256, 256 }, { 256, 512 }, { 256, 768 }, { 256, 1024 }, { 1024, 256 }, { 512, 2048 } } do
    local G = nc.randn(sh)
    local key = sh[1] .. 'x' .. sh[2]
    local best = {}
    local variants = { { 'bf16', 'standard' }, { 'bf16', 'gram' }, { 'f32', 'standard' }, { 'f32', 'gram' } }
    for _ = 1, reps do
        for _, v in ipairs(variants) do
            local t0 = L.now()
            local inner = sh[1] * sh[2] >= 1e6 and 1 or 5
            for _ = 1, inner do nc.optim.newton_schulz(G, { dtype = v[1], form = v[2] }) end
            local t = (L.now() - t0) / inner
            local k = v[1] .. '_' .. v[2]
            best[k] = math.min(best[k] or 1e9, t)
        end
    end
    trows[#trows + 1] = { key, best.bf16_standard * 1e3, best.bf16_gram * 1e3, best.bf16_standard / best.bf16_gram,
        best.f32_standard * 1e3, best.f32_gram * 1e3, best.f32_standard / best.f32_gram }
    out.ms[key] = { bf16_standard = L.round(best.bf16_standard * 1e3, 3), bf16_gram = L.round(best.bf16_gram * 1e3, 3),
                    f32_standard = L.round(best.f32_standard * 1e3, 3), f32_gram = L.round(best.f32_gram * 1e3, 3) }
end
nc.set_num_threads(threads0)
print(string.format('\nms per NS5, one thread, best of %d interleaved (bf16 products: %s GEMM)', reps, nc.gemm_backend()))
L.print_table({ 'shape', 'bf16 standard', 'bf16 gram', 'gain', 'f32 standard', 'f32 gram', 'gain' }, trows,
    { '%s', '%.3f', '%.3f', '%.2fx', '%.3f', '%.3f', '%.2fx' })
print(L.json(out))
