-- tools/bench/arch_loop.lua — LoopLM decode speed: q-exit early stop vs always running T loops.
--
-- Model: the e3 widths and loop shape (configs/models/e3.lua: d 256, 4 heads / 2 KV heads, ReLU²
-- 1024, vocab 8192; loop prelude 1, shared 2 x T 3, coda 1) with LoopLM only — mhc and mtp are
-- removed so the number isolates the early exit (opts.full = true keeps them). Two modes:
--   train = 0 (default): UNTRAINED weights; the exit gate is set by hand so exits happen — weight
--     ~ N(0, gate_std / sqrt(d)) (the gate reads a RMS-normalized hidden, so the gate logit has std
--     ~ gate_std) and bias gate_bias: the exit loops follow a random per-token gate.
--   train = N: N steps of the stage-I loss (nc.optim.hybrid defaults, B 4 x T 64) on a synthetic
--     phrase language (16 random 8-token phrases in random order; the loss floor is ln(16)/8 ~ 0.35
--     nats), so the gate is a learned one; the decode stream is drawn from the same language.
--     Slow on 2 cores (seconds per step).
-- Speed per token depends only on how many loops run, not on the weight values.
-- Procedure (same run, same model, same token stream): prefill a prompt of `prompt` tokens, then
-- decode `new` tokens one position at a time through model:forward_cached (teacher-forced from
-- a fixed id sequence, so both settings see identical inputs), wall clock, median of `reps`.
-- Baseline: the same decode with exit_q = 1 (always T loops); the settings alternate rep by rep
-- and the minimum time per setting is reported. matmul_ratio = the speedup the matmul work alone
-- predicts (block applications x block matrices + the head, at the measured average loops).
-- engine = 1: decode through the packed engine (nc.pack(model): 2-bit ternary weights, one
-- nc_engine_decode call per segment: prelude, each shared loop, coda) instead of the fp32
-- training model; the same looplm.forward_cached drives both (tools/bench/infer.lua item 7 uses it);
-- head = f32 | f16 | i8 the engine's head_dtype. d = D: other widths (n_head = D / 64, n_kv_head =
-- n_head / 2, d_ff = 4 D; same loop shape and vocabulary).
-- Prints a table and, standalone, as the LAST line one JSON object
-- {"looplm_early_exit_speedup", "looplm_avg_loops", "looplm_q", "threads"}.
--
-- Usage: ./nanochat tools/bench/arch_loop.lua [q=0.5] [prompt=32] [new=64] [reps=3] [gate_std=1]
--        [gate_bias=0] [train=0] [threads=N] [engine=0] [head=f32] [d=256]
-- As a module: require/dofile returns run(opts) -> { rows = {...}, json = {...} } (prints nothing).
if not package.path:find('lua/?/init.lua', 1, true) then
    package.path = 'lua/?.lua;lua/?/init.lua;' .. package.path
end
local here = (debug.getinfo(1, 'S').source:match('^@(.*/)') or './')
local L = dofile(here .. 'lib.lua')

local HEADERS = { 'setting', 'exit_q', 'avg_loops', 'ms/token', 'tokens/s', 'speedup', 'matmul_ratio' }

local function run(opts)
    opts = opts or {}
    local nc = require 'nanochat'
    local q = tonumber(opts.q) or 0.5
    local P, NEW, REPS = tonumber(opts.prompt) or 32, tonumber(opts.new) or 64, tonumber(opts.reps) or 3
    local cfg = dofile((opts.root or '') .. 'configs/models/e3.lua')
    if not opts.full then cfg.mhc, cfg.mtp = nil, nil end
    if tonumber(opts.d) then
        local D = tonumber(opts.d)
        cfg.d_model, cfg.n_head, cfg.n_kv_head, cfg.d_ff = D, D / 64, math.max(1, D / 128), 4 * D
    end
    local model = nc.models.gpt.new(cfg)
    local d = cfg.d_model
    local gen = nc.generator(tonumber(opts.seed) or 1)
    local steps_train = tonumber(opts.train) or 0
    local ids = {}
    local train_loss
    if steps_train > 0 then
        local phrases = {}
        for p = 1, 16 do phrases[p] = nc.rand({ 8 }, { generator = gen, lo = 0, hi = cfg.vocab_size }):to('i64'):tolist() end
        local function stream(n)
            local r = {}
            while #r < n do
                local ph = phrases[math.floor(nc.rand({ 1 }, { generator = gen }):item() * 16) + 1]
                for _, v in ipairs(ph) do r[#r + 1] = v end
            end
            return { unpack(r, 1, n) }
        end
        local opt = nc.optim.hybrid { model = model }
        for _ = 1, steps_train do
            local rows = {}
            for b = 1, 4 do rows[b] = stream(65) end
            local t = nc.tensor(rows, { dtype = 'i64' })
            local loss = model:forward(t:narrow(1, 0, 64):contiguous(), t:narrow(1, 1, 64):contiguous())
            loss:backward(); opt:step(); opt:zero_grad()
            train_loss = loss:item()
        end
        ids = stream(P + NEW)
    else
        model.exit_gate.weight:copy_(nc.randn({ 1, d }, { generator = gen, std = (tonumber(opts.gate_std) or 1) / math.sqrt(d) }))
        model.exit_gate.bias:fill_(tonumber(opts.gate_bias) or 0)
        for i = 1, P + NEW do ids[i] = (i * 7919 + 13) % cfg.vocab_size end
    end
    local prompt = nc.tensor({ { unpack(ids, 1, P) } }, { dtype = 'i64' })
    local steps = {}
    for i = 1, NEW do steps[i] = nc.tensor({ { ids[P + i] } }, { dtype = 'i64' }) end

    local engine = opts.engine == true or tonumber(opts.engine) == 1
    model:eval()
    local dec = engine and nc.pack(model, { head_dtype = opts.head or 'f32' }) or model
    local function decode_once(exit_q)
        local cache = dec:new_cache(1, P + NEW, { exit_q = exit_q })
        dec:forward_cached(prompt, cache)
        local s0 = nc.looplm.stats(cache)
        local t0 = L.now()
        for i = 1, NEW do dec:forward_cached(steps[i], cache) end
        local sec = (L.now() - t0) / NEW
        local s = nc.looplm.stats(cache)
        return sec, (s.decode_loops - s0.decode_loops) / (s.decode_tokens - s0.decode_tokens)
    end
    -- the two settings alternate rep by rep (load drifts on a shared machine); the minimum per
    -- setting is reported (the least-disturbed run)
    local per_full, per_q, avg_full, avg_q = {}, {}, 0, 0
    for r = 1, REPS do
        per_full[r], avg_full = decode_once(1.0)
        per_q[r], avg_q = decode_once(q)
    end
    local s_full, s_q = L.min(per_full), L.min(per_q)
    local speedup = s_full / s_q
    -- what the matmul work alone predicts: block applications per token + the head
    local pc = model:param_counts()
    local head = cfg.vocab_size * d
    local blk = (pc.matmul - head) / cfg.n_layer
    local lc = model.cfg.loop
    local function work(loops) return blk * (lc.prelude + lc.shared * loops + lc.coda) + head end
    local predicted = work(lc.T) / (work(avg_q) + d * math.min(avg_q, lc.T - 1))
    local rows = {
        { 'always T loops', 1.0, avg_full, 1e3 * s_full, 1 / s_full, 1.0, 1.0 },
        { 'q-exit early stop', q, avg_q, 1e3 * s_q, 1 / s_q, speedup, predicted },
    }
    return {
        rows = rows, headers = HEADERS,
        json = { looplm_early_exit_speedup = L.round(speedup, 3), looplm_avg_loops = L.round(avg_q, 3),
                 looplm_matmul_ratio = L.round(predicted, 3),
                 looplm_q = q, looplm_T = cfg.loop.T, threads = nc.get_num_threads(), train_steps = steps_train,
                 engine = engine, head = engine and (opts.head or 'f32') or nil, d_model = d,
                 train_loss = train_loss and L.round(train_loss, 4) or nil },
    }
end

-- standalone when run as a script (the launcher / luajit pass key=value args); a module otherwise
local argv = rawget(_G, 'arg')
local is_main = type(argv) == 'table' and type(argv[0]) == 'string' and argv[0]:match('arch_loop%.lua$') ~= nil
if is_main then
    local a = L.parse_args()
    local nc = require 'nanochat'
    nc.set_num_threads(tonumber(a.threads) or math.min(L.ncpus(), 2))
    local res = run(a)
    L.print_table(res.headers, res.rows, { nil, '%.2f', '%.3f', '%.2f', '%.1f', '%.3f', '%.3f' })
    print(L.json(res.json))
end
return run
