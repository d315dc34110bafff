-- tools/bench/batch.lua — continuous batching: aggregate decode tokens/s of 1, 2, 4 concurrent
-- sequences at different positions through one packed engine (engine:batch / engine:decode_rows).
--
-- Model: a random-weight ternary GPT packed with nc.pack (default the 125M shape of
-- tools/bench/infer.lua item 6: d 768, 12 layers, 12 heads, vocab 32768, f32 head; d= / layers= /
-- vocab= for others), or opts.engine (infer.lua passes its own). Procedure (same run, same engine):
-- the rows of one cache are prefilled with prompts of 64, 48, 32, 16 tokens, so the sequences sit at
-- different positions; for nb = 1, 2, 4 sequences:
--   fused    `ndec` calls of engine:decode_rows (ONE nc_engine_decode for the nb rows + the head),
--            aggregate tokens/s = nb * ndec / time — the engine alone;
--   step     `ndec` calls of bd:step() of an engine:batch with nb greedy sequences (the fused call
--            plus, per sequence, the logits to Lua and nc.generate's sampler), aggregate tokens/s;
--   solo     (nb = 1 only) the single-sequence path engine:forward_cached on a B = 1 cache.
-- speedup = aggregate tokens/s / the nb = 1 value of the same column. Every number is the median of
-- `reps` samples on the current thread count(s). Decode of one token reads every weight once, so
-- when the GEMVs are bandwidth-bound nb rows cost little more than one (the per-row attention, norm
-- and head work and the Lua sampling grow with nb).
-- Prints a table and, standalone, as the LAST line one JSON object.
--
-- arch=e3: the e3 model instead (configs/models/e3.lua: LoopLM + mHC-lite 4 streams + MTP, d 256,
-- random weights, a random exit gate), every sequence with q-exit q= (default 0.5), head=f32|i8:
-- LoopLM sequences exit at their own loops, the loop segments run on the rows still active.
--
-- Usage: ./nanochat tools/bench/batch.lua [reps=5] [ndec=8] [threads=2 | threads=1,2] [d=768] [layers=12] [vocab=32768]
--        ./nanochat tools/bench/batch.lua arch=e3 [q=0.5] [head=f32|i8] [threads=1,2]
-- As a module: dofile returns run(opts) -> { rows = {...}, headers = {...}, json = {...} } (prints nothing).
if not package.path:find('lua/?/init.lua', 1, true) then
    package.path = 'lua/?.lua;lua/?/init.lua;' .. package.path
end
local here = (debug.getinfo(1, 'S').source:match('^@(.*/)') or './')
local L = dofile(here .. 'lib.lua')

local HEADERS = { 'threads', 'sequences', 'fused tok/s', 'speedup', 'step tok/s', 'speedup', 'solo tok/s' }
local COUNTS = { 1, 2, 4 }
local PROMPT_LENS = { 64, 48, 32, 16 }

local function run(opts)
    opts = opts or {}
    local nc = require 'nanochat'
    local reps = tonumber(opts.reps) or 5
    local ndec = tonumber(opts.ndec) or 8
    local threads = opts.threads or { nc.get_num_threads() }
    if type(threads) == 'number' then threads = { threads } end
    local e = opts.engine
    local q = tonumber(opts.q)   -- LoopLM: the q-exit threshold of every sequence (arch=e3: default 0.5)
    if not e and opts.arch == 'e3' then
        -- configs/models/e3.lua (LoopLM + mHC-lite 4 streams + MTP), random weights; a random exit
        -- gate (logit std 1) so that sequences exit at different loops
        local m = nc.models.gpt.new(nc.models.config('e3'))
        m:eval()
        m.exit_gate.weight:copy_(nc.randn({ 1, m.cfg.d_model }, { generator = nc.generator(2), std = 1.0 }))
        e = nc.pack(m, { head_dtype = opts.head or 'f32' })
        q = q or 0.5
    elseif opts.arch and opts.arch ~= 'gpt' then
        error('bench/batch: arch must be gpt or e3, got ' .. tostring(opts.arch))
    end
    local qo = (e and e.cfg.loop and q) and { exit_q = q } or nil
    if not e then
        local d = tonumber(opts.d) or 768
        local m = nc.models.gpt.new { vocab_size = tonumber(opts.vocab) or 32768, d_model = d,
            n_layer = tonumber(opts.layers) or 12, n_head = math.max(1, math.floor(d / 64)), seq_len = 256, seed = 1 }
        m:eval()
        e = nc.pack(m)
    end
    local V = e.cfg.vocab_size
    local max_T = math.max(e.cfg.seq_len, 256)
    local function prompt(k)
        local p = {}
        for i = 1, PROMPT_LENS[k] do p[i] = (i * 37 + k * 101) % V end
        return p
    end
    -- one cache, rows prefilled at different lengths (positions 64, 48, 32, 16)
    local cache = e:new_cache(4, max_T, qo)
    for k = 1, 4 do e:forward_cached(nc.tensor({ prompt(k) }, { dtype = 'i64' }), e:cache_row(cache, k - 1, qo)) end
    local function median(fn)
        local _, st = L.time(fn, { inner = 1, reps = reps, warmup = 1 })
        return st.median
    end
    local rows, json = {}, {}
    for _, th in ipairs(threads) do
        nc.set_num_threads(th)
        local base_f, base_s
        -- the single-sequence path (nc.generate's): B = 1 cache after the 64-token prompt
        local solo_c = e:new_cache(1, max_T, qo)
        e:forward_cached(nc.tensor({ prompt(1) }, { dtype = 'i64' }), solo_c)
        local one = nc.tensor({ { 5 } }, { dtype = 'i64' })
        local solo = ndec / median(function()
            solo_c.pos = PROMPT_LENS[1]
            for _ = 1, ndec do e:forward_cached(one, solo_c) end
        end)
        for _, nb in ipairs(COUNTS) do
            local ids, rws, pos = {}, {}, {}
            for k = 1, nb do ids[k], rws[k], pos[k] = 5 + k, k - 1, PROMPT_LENS[k] end
            local fused = nb * ndec / median(function()
                for _ = 1, ndec do e:decode_rows(ids, cache, rws, pos) end
            end)
            -- the batcher: nb greedy sequences (enough max_tokens for warmup + reps samples)
            local bd = e:batch { slots = nb, max_T = max_T }
            for k = 1, nb do
                bd:add(prompt(k), { temperature = 0, max_tokens = (reps + 2) * ndec + 1, exit_q = qo and q or nil })
            end
            local step = nb * ndec / median(function()
                for _ = 1, ndec do bd:step() end
            end)
            bd = nil
            base_f, base_s = base_f or fused, base_s or step
            rows[#rows + 1] = { th, nb, fused, fused / base_f, step, step / base_s, nb == 1 and string.format('%.1f', solo) or '-' }
            json['batch_decode_tok_s_' .. nb .. 'seq_' .. th .. 't'] = L.round(fused, 1)
            json['batch_step_tok_s_' .. nb .. 'seq_' .. th .. 't'] = L.round(step, 1)
        end
        json['batch_speedup_4seq_' .. th .. 't'] = L.round(rows[#rows][4], 2)
        json['batch_solo_tok_s_' .. th .. 't'] = L.round(solo, 1)
        collectgarbage()
    end
    json.batch_model = string.format('%sd%d_L%d_V%d', e.cfg.loop and e.cfg.mhc and 'e3_' or '', e.cfg.d_model,
        e.cfg.n_layer, V)
    if e.cfg.loop then json.batch_exit_q = q or e.cfg.loop.exit_q end
    return { rows = rows, headers = HEADERS, json = json, fmts = { '%d', '%d', '%.1f', '%.2fx', '%.1f', '%.2fx', '%s' } }
end

local argv = rawget(_G, 'arg')
local is_main = type(argv) == 'table' and type(argv[0]) == 'string' and argv[0]:match('batch%.lua$') ~= nil
if is_main then
    local a = L.parse_args()
    local nc = require 'nanochat'
    if type(a.threads) == 'string' then   -- threads=1,2: both, in the same run
        local list = {}
        for v in a.threads:gmatch('%d+') do list[#list + 1] = tonumber(v) end
        a.threads = list
    else
        a.threads = tonumber(a.threads) or math.min(L.ncpus(), 2)
    end
    local res = run(a)
    print('Continuous batching: aggregate decode tokens/s, sequences at positions 64 / 48 / 32 / 16' ..
        (a.arch == 'e3' and ' (e3: LoopLM + mHC-lite + MTP, q-exit ' .. tostring(res.json.batch_exit_q) .. ')' or ''))
    L.print_table(res.headers, res.rows, res.fmts)
    res.json.bench = 'batch'
    print(L.json(res.json))
end
return run
