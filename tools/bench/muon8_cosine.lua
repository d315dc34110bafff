-- tools/bench/muon8_cosine.lua — how closely 8-bit Muon's updates follow fp32 Muon's, per 8-bit
-- option (code map, rounding, block), on the least-squares problem of spec/optim/muon8_spec.lua
-- (same seeds: X (96, 48), A (512, 48), minibatches of 32 rows, lr 0.05, WSD over 200 steps).
--
--   ./nanochat tools/bench/muon8_cosine.lua [steps=200] [mb=32] [noise=0.5]
--
-- mb = rows per minibatch (512 = the full batch), noise = std of the noise in Y: other toy
-- problems for the same lockstep comparison (measured, linear / dynamic nearest 2048, mean / min
-- cosine: mb 32 0.989 / 0.952, 0.991 / 0.964 (the spec's problem); mb 64 0.985 / 0.940,
-- 0.987 / 0.954; mb 128 0.979 / 0.931, 0.982 / 0.939; full batch 0.757 / 0.440, 0.773 / 0.472,
-- also without noise: the converged full-batch problem's gradients are small and structured, so
-- the stored momentum's error dominates its updates).
--
-- Lockstep: a shadow fp32 Muon gets the 8-bit run's parameters and gradients every step, so only
-- the stored momentum differs. Per option: mean and min of cosine(update_8bit, update_fp32), the
-- number of steps <= 0.99, the relative final-loss difference of independent runs, and state
-- bytes. Then, for linear / block 2048, a noise model at a few steps: the fp32 u plus fresh
-- isotropic Gaussian noise of the norm of (momentum error x mu), orthogonalized, against the fp32
-- update — the cosine that error norm alone explains — with u's smallest/largest singular value.
-- Baseline in the same run: fp32 Muon itself (cosine 1 by construction). Last line: JSON.
local nc = require 'nanochat'
local here = debug.getinfo(1, 'S').source:match('^@(.*/)') or './'
local L = dofile(here .. 'lib.lua')
local args = L.parse_args()
local STEPS = args.steps or 200
nc.set_num_threads(1)

-- the spec's draws: optim_helpers' H.randn uses generator seeds 7001, 7002, ... in call order
local function rn(seed, shape, std) return nc.randn(shape, { generator = nc.generator(seed), std = std or 1 }) end
local A = rn(7001, { 512, 48 })
local MB, NOISE = tonumber(args.mb) or 32, tonumber(args.noise) or 0.5
local Y = nc.linear(A, rn(7002, { 96, 48 }, 0.5)) + rn(7003, { 512, 96 }, NOISE)
local X0 = rn(7004, { 96, 48 }, 0.05)
local function loss_mb(X, s)
    if MB >= 512 then return (nc.linear(A, X) - Y):square():mean() end
    local r = nc.rand({ MB }, { generator = nc.generator(1000 + s), lo = 0, hi = 512 }):tolist()
    for i = 1, MB do r[i] = math.floor(r[i]) end
    local it = nc.tensor(r, { dtype = 'i64' })
    return (nc.linear(A:index_select(0, it), X) - Y:index_select(0, it)):square():mean()
end
local function full_loss(X) return (nc.linear(A, X) - Y):square():mean():item() end
local sched = nc.sched.wsd { warmup = 10, total = STEPS, cooldown = 0.3, final = 0.05 }

local function cos(a, b)
    local d, na, nb = 0, 0, 0
    for i = 1, #a do d = d + a[i] * b[i]; na = na + a[i] ^ 2; nb = nb + b[i] ^ 2 end
    return d / math.sqrt(na * nb)
end

-- probe(step, opt8, opt32, grad) is called after each lockstep step (for the noise model)
local function lockstep(o8, probe)
    local B = X0:clone():requires_grad_(true)
    local S = X0:clone():requires_grad_(true)
    local o = { lr = 0.05 }
    for k, v in pairs(o8) do o[k] = v end
    local ob = nc.optim.muon8({ B }, o)
    local os_ = nc.optim.muon({ S }, { lr = 0.05 })
    local worst, wstep, sum, nbad = 1, -1, 0, 0
    for s = 0, STEPS - 1 do
        S:detach():copy_(B)
        local before = B:tolist()
        loss_mb(B, s):backward()
        S.grad = B.grad
        local g = B.grad:clone()
        ob:step(sched(s)); os_:step(sched(s))
        ob:zero_grad(); os_:zero_grad()
        local qb, qs, db, ds = B:tolist(), S:tolist(), {}, {}
        for i = 1, #qb do db[i] = qb[i] - before[i]; ds[i] = qs[i] - before[i] end
        local c = cos(db, ds)
        if c < worst then worst, wstep = c, s end
        if c <= 0.99 then nbad = nbad + 1 end
        sum = sum + c
        if probe then probe(s, ob, os_, g, c, o) end
    end
    local P = X0:clone():requires_grad_(true)
    local Q = X0:clone():requires_grad_(true)
    local op, oq = nc.optim.muon({ P }, { lr = 0.05 }), nc.optim.muon8({ Q }, o)
    for s = 0, STEPS - 1 do
        loss_mb(P, s):backward(); op:step(sched(s)); op:zero_grad()
        loss_mb(Q, s):backward(); oq:step(sched(s)); oq:zero_grad()
    end
    local lp, lq = full_loss(P), full_loss(Q)
    return { mean = sum / STEPS, min = worst, min_step = wstep, n_le_099 = nbad, loss_rel = (lq - lp) / lp,
             bytes = ob:state_bytes(), bytes32 = os_:state_bytes() }
end

local opts = {
    { quant = 'linear', rounding = 'nearest', block = 2048 }, { quant = 'dynamic', rounding = 'nearest', block = 2048 },
    { quant = 'linear', rounding = 'stochastic', block = 2048 }, { quant = 'dynamic', rounding = 'stochastic', block = 2048 },
    { quant = 'linear', rounding = 'nearest', block = 256 }, { quant = 'dynamic', rounding = 'nearest', block = 256 },
    { quant = 'linear', rounding = 'nearest', block = 64 }, { quant = 'dynamic', rounding = 'nearest', block = 64 },
    { quant = 'linear', rounding = 'nearest', block = 16 }, { quant = 'dynamic', rounding = 'nearest', block = 16 },
}
local rows, out = {}, {}
for _, o in ipairs(opts) do
    local r = lockstep(o)
    local name = string.format('%s/%s/%d', o.quant, o.rounding, o.block)
    rows[#rows + 1] = { name, r.mean, r.min, r.min_step, r.n_le_099, r.loss_rel * 100, r.bytes / r.bytes32 }
    out[name] = { mean = L.round(r.mean, 5), min = L.round(r.min, 5), n_le_099 = r.n_le_099,
                  loss_rel = L.round(r.loss_rel, 6) }
end
print(string.format('8-bit vs fp32 Muon update cosine, %d lockstep steps (fp32 vs itself: 1 by construction)', STEPS))
L.print_table({ 'quant/rounding/block', 'mean cos', 'min cos', '@step', '#<=0.99', 'loss rel %', 'bytes vs fp32' }, rows,
    { '%s', '%.4f', '%.4f', '%d', '%d', '%+.3f', '%.3f' })

-- noise model for linear / 2048
local gen = nc.generator(99)
local nrows = {}
local probe_at = { [29] = true, [53] = true, [69] = true, [89] = true, [129] = true, [189] = true }
lockstep({ quant = 'linear' }, function(s, ob, os_, g, c, o)
    if not probe_at[s] then return end
    local n = g:numel()
    local sd8, sd32 = ob:state_dict().tensors, os_:state_dict().tensors
    local m8 = nc.optim.dequant8(sd8['p1.codes'], sd8['p1.scales'], { n }, 2048):tolist()
    local m32, gl = sd32['p1.m']:tolist(), g:tolist()
    local e2, n2, u = 0, 0, {}
    for i = 1, n do
        e2 = e2 + (m8[i] - m32[i]) ^ 2; n2 = n2 + m32[i] ^ 2
        u[i] = 0.05 * gl[i] + 0.95 * m32[i]   -- nesterov, EMA form
    end
    local ut = nc.tensor(u):view(96, 48)
    local _, sv = nc.optim.svd(ut)
    local svl = sv:tolist()
    local z = nc.randn({ n }, { generator = gen }):tolist()
    local z2 = 0
    for i = 1, n do z2 = z2 + z[i] ^ 2 end
    local k, un = 0.95 * math.sqrt(e2 / z2), {}
    for i = 1, n do un[i] = u[i] + k * z[i] end
    local cn = cos(nc.optim.newton_schulz(ut):tolist(), nc.optim.newton_schulz(nc.tensor(un):view(96, 48)):tolist())
    nrows[#nrows + 1] = { s, c, math.sqrt(e2 / n2) * 100, svl[#svl] / svl[1], cn }
end)
print('\nlinear/nearest/2048: measured cosine vs the noise model (same error norm, isotropic, no quantization)')
L.print_table({ 'step', 'measured cos', '|m8-m32|/|m32| %', 'u: s_min/s_max', 'noise-model cos' }, nrows,
    { '%d', '%.4f', '%.2f', '%.4f', '%.4f' })
print(L.json({ bench = 'muon8_cosine', steps = STEPS, options = out }))
