-- tools/bench/optim.lua — the optimizer suite on one model, same data, same init, same schedule:
-- per optimizer combination the optimizer state bytes (all / block matrices only), the median
-- optimizer-step and full-training-step times, and the val loss after a fixed number of steps,
-- plus the val loss every combination reaches within the same wall-clock budget; then a short
-- timing phase on the tiny config itself (issue 5's muon_step_frac).
--
--   ./nanochat tools/bench/optim.lua [steps=150] [d=96] [layers=2] [heads=4] [seq=64] [batch=16]
--        [lr_scale=1] [threads=0] [evals=6] [only=muon,muon8] [factory=path/to/factory.lua]
--        [tiny_steps=10] [tiny_batch=8] [tiny_dtypes=auto,f32] [ns_dtype=auto] [ns_form=auto]
--
-- The model/data factory is swappable: `factory=FILE` names a Lua file returning
-- function(cfg) -> { model = <nc.nn.Module with param_roles()>, train_batch = function(step) -> x, y,
-- val_batches = { {x, y}, ... }, loss = function(model, x, y) -> scalar loss }. The built-in one
-- (below) is a 2-layer byte-level transformer (RMSNorm, RoPE, causal GQA attention, ReLU^2 MLP,
-- untied head; as in recipes/quickstart.lua) trained on this repository's own C sources
-- (core/*.c, kernels/cpu/*.c; last 10% of the bytes held out); tools/bench/optim_gpt.lua plugs in
-- the ternary GPT of configs/models/tiny.lua on the tiny recipe's data.
--
-- ns_dtype (auto | f32 | bf16) is the Newton-Schulz precision of the suite's Muon-family combinations,
-- ns_form (auto | standard | gram) its iteration (also the tiny phase's bf16 runs; gram needs bf16).
--
-- Tiny phase (tiny_steps > 0; tiny_steps=0 skips it): the GPT of configs/models/tiny.lua at its own
-- shapes (d_model, n_layer, heads, seq_len from the file; batch tiny_batch = 8 as recipes/tiny.lua)
-- through tools/bench/optim_gpt.lua's factory, trained with the hybrid Muon default twice in
-- alternation, step by step (same init, same batches): Newton-Schulz with ns_dtype = 'auto' (the
-- default: bf16 on AMX / AVX-512 BF16 CPUs, else f32) and with ns_dtype = 'f32' (sgemm), after 2
-- untimed warmup steps. muon_step_frac = median time of the hybrid's Muon part (its step over the
-- block matrices, Newton-Schulz included: hybrid.time_parts) / median full training step (forward
-- + backward + optimizer) of the 'auto' run; opt_step_frac = the same with the whole optimizer step
-- (Muon + AdamW on the embedding, head and norms + zero_grad).
--
-- Baselines in the same run: AdamW is the reference for state bytes and loss; the Muon step time
-- is measured against the full training step (forward + backward + optimizer) of the same run.
-- Last line: JSON with muon8_state_ratio (8-bit / fp32 Muon momentum bytes), muon8_loss_rel
-- ((val 8-bit - val Muon) / val Muon; muon8_dynamic_loss_rel the same for quant = 'dynamic'),
-- galore2_state_ratio (GaLore 2 + AdamW state / AdamW state, projected matrices only),
-- muon_step_frac (the tiny phase's fraction, above; absent with tiny_steps=0), muon_step_frac_f32
-- (the same with the f32 Newton-Schulz), opt_step_frac, tiny = {ms = {[ns_dtype] = {muon_ms, opt_ms, step_ms,
-- frac, opt_frac}}, ns_dtype_auto},
-- muon_step_frac_bench_model (the suite's own model: Muon optimizer step / full training step of
-- the 'muon (hybrid default)' combination), and the per-combination numbers.
local nc = require 'nanochat'
local here = debug.getinfo(1, 'S').source:match('^@(.*/)') or './'
local L = dofile(here .. 'lib.lua')

local args = L.parse_args()
local cfg = { steps = 150, d = 96, layers = 2, heads = 4, kv_heads = 2, seq = 64, batch = 16, lr_scale = 1,
              threads = 0, evals = 6, seed = 1, val_batches = 8, tiny_steps = 10, tiny_batch = 8, ns_dtype = 'auto', ns_form = 'auto',
              tiny_dtypes = 'auto,f32' }
for k, v in pairs(args) do if cfg[k] ~= nil then cfg[k] = v end end
if cfg.threads > 0 then nc.set_num_threads(cfg.threads) end

-- ---- the built-in model/data factory ---------------------------------------------------------
local function builtin_factory(c)
    local V, d, H, Hkv, Lyr = 256, c.d, c.heads, c.kv_heads, c.layers
    local D = math.floor(d / H)
    local Net = nc.nn.Module:extend('BenchTransformer')
    function Net:init()
        self.wte = nc.nn.Embedding(V, d)
        self.blocks = nc.nn.ModuleList()
        for l = 1, Lyr do
            local b = nc.nn.Module()
            b:param('wq', nc.randn({ H * D, d }, { std = d ^ -0.5 }))
            b:param('wk', nc.randn({ Hkv * D, d }, { std = d ^ -0.5 }))
            b:param('wv', nc.randn({ Hkv * D, d }, { std = d ^ -0.5 }))
            b:param('wo', nc.randn({ d, H * D }, { std = (H * D) ^ -0.5 / math.sqrt(2 * Lyr) }))
            b:param('w1', nc.randn({ 4 * d, d }, { std = d ^ -0.5 }))
            b:param('w2', nc.randn({ d, 4 * d }, { std = (4 * d) ^ -0.5 / math.sqrt(2 * Lyr) }))
            b.norm1, b.norm2 = nc.nn.RMSNorm(d), nc.nn.RMSNorm(d)
            self.blocks:append(b)
        end
        self.norm = nc.nn.RMSNorm(d)
        self:param('lm_head', nc.randn({ V, d }, { std = d ^ -0.5 }))
    end
    function Net:param_roles()
        local r = {}
        for _, nt in ipairs(self:named_parameters()) do
            local n = nt[1]
            r[n] = n == 'wte.weight' and 'embedding' or n == 'lm_head' and 'head'
                or (nt[2]:dim() < 2 and 'norm' or 'matrix')
        end
        return r
    end
    function Net:forward(x)
        local B, T = x:size(0), x:size(1)
        local cos, sin = nc.rope_tables(T, D, { base = 10000 })
        local h = self.wte(x)
        for _, b in ipairs(self.blocks) do
            local a = b.norm1(h)
            local q = nc.rope(nc.linear(a, b.wq):view(B, T, H, D), cos, sin)
            local k = nc.rope(nc.linear(a, b.wk):view(B, T, Hkv, D), cos, sin)
            local v = nc.linear(a, b.wv):view(B, T, Hkv, D)
            h = h + nc.linear(nc.attention(q, k, v, { causal = true }):view(B, T, H * D), b.wo)
            h = h + nc.linear(nc.linear(b.norm2(h), b.w1):relu2(), b.w2)
        end
        return nc.linear(self.norm(h), self.lm_head)
    end

    -- data: this repository's C sources, concatenated in sorted order
    local files = {}
    local p = io.popen('ls ' .. nc.core.root .. '/core/*.c ' .. nc.core.root .. '/kernels/cpu/*.c 2>/dev/null | sort')
    for line in p:lines() do files[#files + 1] = line end
    p:close()
    local parts = {}
    for _, f in ipairs(files) do
        local fh = io.open(f, 'rb')
        parts[#parts + 1] = fh:read('*a')
        fh:close()
    end
    local text = table.concat(parts, '\n')
    local n = #text
    local ntrain = math.floor(n * 0.9)
    local bytes = {}
    for i = 1, n do bytes[i] = text:byte(i) end
    local data = nc.tensor(bytes, { dtype = 'i64' })
    local B, T = c.batch, c.seq
    local function window(starts)
        local idx, nxt = {}, {}
        for _, s in ipairs(starts) do
            for t = 0, T - 1 do idx[#idx + 1] = s + t; nxt[#nxt + 1] = s + t + 1 end
        end
        local x = data:index_select(0, nc.tensor(idx, { dtype = 'i64' })):view(#starts, T)
        local y = data:index_select(0, nc.tensor(nxt, { dtype = 'i64' })):view(#starts, T)
        return x, y
    end
    local val = {}
    local vstride = math.floor((n - ntrain - T - 2) / (c.val_batches * B))
    for vb = 0, c.val_batches - 1 do
        local starts = {}
        for b = 0, B - 1 do starts[#starts + 1] = ntrain + (vb * B + b) * vstride end
        local x, y = window(starts)
        val[#val + 1] = { x, y }
    end
    nc.manual_seed(c.seed)
    return {
        model = Net(),
        describe = string.format('byte-level transformer d=%d L=%d H=%d/%d, seq %d, batch %d, on %d bytes of C (%d files)',
            d, Lyr, H, Hkv, T, B, n, #files),
        train_batch = function(step)
            local u = nc.rand({ B }, { generator = nc.generator(c.seed * 100003 + step), lo = 0, hi = ntrain - T - 1 }):tolist()
            for i = 1, B do u[i] = math.floor(u[i]) end
            return window(u)
        end,
        val_batches = val,
        loss = function(model, x, y)
            local logits = model(x)
            return nc.cross_entropy(logits:view(x:numel(), V), y:view(x:numel()))
        end,
    }
end

local factory = builtin_factory
if args.factory then factory = dofile(args.factory) end

-- ---- optimizer combinations -------------------------------------------------------------------
local s = cfg.lr_scale
local ADAM_LR, MUON_LR, LION_LR = 3e-3 * s, 0.02 * s, 3e-4 * s
local NSD = tostring(cfg.ns_dtype)
local NSF = tostring(cfg.ns_form)
local COMBOS = {
    { name = 'adamw', make = function(m) return nc.optim.adamw(m, { lr = ADAM_LR }) end },
    { name = 'lion', make = function(m) return nc.optim.lion(m, { lr = LION_LR }) end },
    { name = 'muon (hybrid default)', key = 'muon', make = function(m)
        return nc.optim.hybrid { model = m, rules = { matrix = { optim = 'muon', lr = MUON_LR, ns_dtype = NSD, ns_form = NSF } } } end },
    { name = 'muon8', make = function(m)
        return nc.optim.hybrid { model = m, rules = { matrix = { optim = 'muon8', lr = MUON_LR, ns_dtype = NSD, ns_form = NSF } } } end },
    { name = 'muon8-dynamic', make = function(m)
        return nc.optim.hybrid { model = m, rules = { matrix = { optim = 'muon8', lr = MUON_LR, quant = 'dynamic', ns_dtype = NSD, ns_form = NSF } } } end },
    { name = 'galore2+adamw', make = function(m)
        return nc.optim.hybrid { model = m, rules = { matrix = { optim = 'adamw', lr = ADAM_LR * 4,
            galore = { rank_frac = 0.25, update_gap = 50, alpha = 0.25 } } } } end },
    { name = 'galore2+muon8', make = function(m)
        return nc.optim.hybrid { model = m, rules = { matrix = { optim = 'muon8', lr = MUON_LR, ns_dtype = NSD, ns_form = NSF,
            galore = { rank_frac = 0.25, update_gap = 50 } } } } end },
}
local only
if args.only then
    only = {}
    for w in tostring(args.only):gmatch('[^,]+') do only[w] = true end
end

local function matrix_names(model)
    local r, out = model:param_roles(), {}
    for name, role in pairs(r) do if role == 'matrix' then out[name] = true end end
    return out
end

local function val_loss(f)
    local tot = 0
    nc.no_grad(function()
        for _, xy in ipairs(f.val_batches) do tot = tot + f.loss(f.model, xy[1], xy[2]):item() end
    end)
    return tot / #f.val_batches
end

local results = {}
local sched = nc.sched.wsd { warmup = math.max(1, math.floor(cfg.steps / 10)), total = cfg.steps, cooldown = 0.2 }
local describe
for _, combo in ipairs(COMBOS) do
    local key = combo.key or combo.name
    if not only or only[key] then
        local f = factory(cfg)   -- same seed: same init and data for every combination
        describe = f.describe
        local opt = combo.make(f.model)
        local mats = matrix_names(f.model)
        local by = opt:state_bytes_by_param()
        local mat_bytes = 0
        for name, b in pairs(by) do if mats[name] then mat_bytes = mat_bytes + b end end
        local step_t, opt_t, curve = {}, {}, {}
        local train_time = 0
        local eval_every = math.max(1, math.floor(cfg.steps / cfg.evals))
        curve[1] = { t = 0, step = 0, loss = val_loss(f) }
        for st = 0, cfg.steps - 1 do
            local x, y = f.train_batch(st)
            collectgarbage('step')
            local t0 = L.now()
            local loss = f.loss(f.model, x, y)
            loss:backward()
            local t1 = L.now()
            opt:step(sched(st))
            opt:zero_grad()
            local t2 = L.now()
            step_t[#step_t + 1], opt_t[#opt_t + 1] = t2 - t0, t2 - t1
            train_time = train_time + (t2 - t0)
            if (st + 1) % eval_every == 0 or st == cfg.steps - 1 then
                curve[#curve + 1] = { t = train_time, step = st + 1, loss = val_loss(f) }
            end
        end
        local r = { name = combo.name, key = key, state = opt:state_bytes(), mat_state = mat_bytes,
            step_ms = 1e3 * L.median(step_t), opt_ms = 1e3 * L.median(opt_t), train_s = train_time,
            val = curve[#curve].loss, curve = curve }
        results[#results + 1] = r
        io.stderr:write(string.format('%-22s val %.4f  step %.1f ms  (opt %.1f ms)  %.1f s\n', combo.name, r.val,
            r.step_ms, r.opt_ms, train_time))
    end
end

-- val loss at a common wall-clock budget (the shortest run), interpolated on each eval curve
local budget = math.huge
for _, r in ipairs(results) do budget = math.min(budget, r.train_s) end
for _, r in ipairs(results) do
    local c = r.curve
    local v = c[#c].loss
    for i = 2, #c do
        if c[i].t >= budget then
            local a, b = c[i - 1], c[i]
            v = a.loss + (b.loss - a.loss) * (budget - a.t) / math.max(b.t - a.t, 1e-12)
            break
        end
    end
    r.val_at_budget = v
end

local by = {}
for _, r in ipairs(results) do by[r.key] = r end
local adam = by.adamw
print(string.format('optimizer suite: %s, %d steps, WSD schedule, %d threads, kernel %s, Muon ns_dtype %s ns_form %s', describe or '?',
    cfg.steps, nc.get_num_threads(), nc.cpu_kernel(), NSD, NSF))
local rows = {}
for _, r in ipairs(results) do
    rows[#rows + 1] = { r.name, r.state / 1024, r.mat_state / 1024,
        adam and r.mat_state / adam.mat_state or nil, r.opt_ms, r.step_ms, r.opt_ms / r.step_ms, r.val,
        r.val_at_budget }
end
L.print_table({ 'optimizer', 'state KiB', 'matrix KiB', 'vs adamw', 'opt ms', 'step ms', 'opt frac',
    'val loss', string.format('val @%.0fs', budget) }, rows,
    { nil, '%.1f', '%.1f', '%.3f', '%.2f', '%.1f', '%.3f', '%.4f', '%.4f' })
local best, best_v = nil, math.huge
for _, r in ipairs(results) do if r.val_at_budget < best_v then best, best_v = r.name, r.val_at_budget end end
print(string.format('equal wall-clock winner (%.1f s of training each): %s (val %.4f)', budget, best or '-', best_v))

-- ---- tiny phase: muon_step_frac on configs/models/tiny.lua ----------------------------------------
local tiny
if cfg.tiny_steps > 0 then
    local mc = dofile(nc.core.root .. '/configs/models/tiny.lua')
    local tc = { d = mc.d_model, layers = mc.n_layer, heads = mc.n_head, kv_heads = mc.n_kv_head, seq = mc.seq_len,
                 batch = cfg.tiny_batch, seed = cfg.seed, val_batches = 1 }
    local gpt = dofile(here .. 'optim_gpt.lua')
    local DT, runs, WARM = {}, {}, 2
    for w in tostring(cfg.tiny_dtypes):gmatch('[^,]+') do DT[#DT + 1] = w end
    for _, dt in ipairs(DT) do
        local f = gpt(tc)
        runs[dt] = { f = f, step = {}, opt = {}, muon = {},
            o = nc.optim.hybrid { model = f.model, rules = { matrix = { optim = 'muon', lr = MUON_LR, ns_dtype = dt,
                ns_form = dt == 'f32' and 'standard' or NSF } } } }
        runs[dt].o.time_parts = L.now   -- the Muon part's own time (hybrid.part_s.muon)
    end
    for st = 0, WARM + cfg.tiny_steps - 1 do
        for _, dt in ipairs(DT) do
            local r = runs[dt]
            local x, y = r.f.train_batch(st)
            collectgarbage('step')
            local t0 = L.now()
            r.f.loss(r.f.model, x, y):backward()
            local t1 = L.now()
            r.o:step(sched(math.min(st, cfg.steps - 1)))
            r.o:zero_grad()
            local t2 = L.now()
            if st >= WARM then
                r.step[#r.step + 1], r.opt[#r.opt + 1] = t2 - t0, t2 - t1
                r.muon[#r.muon + 1] = r.o.part_s.muon
            end
        end
    end
    tiny = { describe = runs[DT[1]].f.describe, ns_dtype_auto = require('nanochat.optim.linalg').ns_dtype_auto(), ms = {} }
    print(string.format('tiny phase: %s, hybrid Muon default, %d timed steps (+%d warmup), ns_dtype auto and f32 '
        .. 'alternating step by step', tiny.describe, cfg.tiny_steps, WARM))
    local rows = {}
    for _, dt in ipairs(DT) do
        local r = runs[dt]
        local o, s_, mu = 1e3 * L.median(r.opt), 1e3 * L.median(r.step), 1e3 * L.median(r.muon)
        tiny.ms[dt] = { opt_ms = L.round(o, 2), muon_ms = L.round(mu, 2), step_ms = L.round(s_, 2),
                        frac = L.round(mu / s_, 4), opt_frac = L.round(o / s_, 4) }
        rows[#rows + 1] = { dt == 'auto' and ('auto (' .. tiny.ns_dtype_auto .. ')') or dt, mu, o, s_, mu / s_, o / s_ }
    end
    L.print_table({ 'ns_dtype', 'muon ms', 'opt ms', 'step ms', 'muon_step_frac', 'opt_step_frac' }, rows,
        { nil, '%.1f', '%.1f', '%.1f', '%.3f', '%.3f' })
    print('  muon = the hybrid\'s Muon part (the block matrices; NS included); opt = the whole optimizer step '
        .. '(+ AdamW on embedding / head / norms, + zero_grad); step = forward + backward + opt')
end

local function ratio(a, b) if a and b and b ~= 0 then return a / b end end
local out = {
    bench = 'optim', steps = cfg.steps, d = cfg.d, layers = cfg.layers, threads = nc.get_num_threads(), ns_dtype = NSD, ns_form = NSF,
    muon8_state_ratio = by.muon and by.muon8 and L.round(ratio(by.muon8.mat_state, by.muon.mat_state), 4),
    muon8_loss_rel = by.muon and by.muon8 and L.round((by.muon8.val - by.muon.val) / by.muon.val, 5),
    muon8_dynamic_loss_rel = by.muon and by['muon8-dynamic']
        and L.round((by['muon8-dynamic'].val - by.muon.val) / by.muon.val, 5),
    galore2_state_ratio = adam and by['galore2+adamw'] and L.round(ratio(by['galore2+adamw'].mat_state, adam.mat_state), 4),
    muon_step_frac = tiny and tiny.ms.auto and tiny.ms.auto.frac,
    opt_step_frac = tiny and tiny.ms.auto and tiny.ms.auto.opt_frac,
    muon_step_frac_f32 = tiny and tiny.ms.f32 and tiny.ms.f32.frac,
    tiny = tiny and { ms = tiny.ms, ns_dtype_auto = tiny.ns_dtype_auto, steps = cfg.tiny_steps,
                      order = cfg.tiny_dtypes },
    muon_step_frac_bench_model = by.muon and L.round(by.muon.opt_ms / by.muon.step_ms, 4),
    equal_wallclock_winner = best, budget_s = L.round(budget, 2),
    results = {},
}
for _, r in ipairs(results) do
    out.results[r.key] = { state_bytes = r.state, matrix_state_bytes = r.mat_state, opt_ms = L.round(r.opt_ms, 3),
        step_ms = L.round(r.step_ms, 2), val_loss = L.round(r.val, 4), val_at_budget = L.round(r.val_at_budget, 4) }
end
print(L.json(out))
