-- tools/bench/barrier.lua — the syncs of the fused decode (kernels/cpu/engine.c), measured in one run:
--   1. the barrier alone: ns per barrier of the engine's spin barrier (one cache line, bounded spin
--      then sched_yield) vs `#pragma omp barrier`, a 2-thread region doing nothing else
--      (nc_engine_barrier_bench), samples alternating;
--   2. decode tokens/s of the packed engine at the 10M / 50M / 125M shapes of tools/bench/infer.lua
--      (random weights, f32 head, one token at a time after a 64-token prompt), 1 and 2 threads, per
--      parallel split, samples interleaved so every setting sees the same machine load:
--        heads      — q/k/v by whole KV-head groups, spin barrier (the default; 4 syncs per layer)
--        heads_omp  — the same with omp barriers
--        rows       — q/k/v by 16-row chunks (5 syncs per layer)
--        o_full     — heads + every thread computes the whole o-projection (3 syncs per layer)
--      (1 thread: only `heads`; the split does not matter there).
--   2b. old=PATH/libnanochat.so: the layers alone (nc_engine_decode, no embedding / head), another
--      build's library vs this one in the same process, interleaved; also whether the bits agree.
--   3. LoopLM's per-row exit gate in engine:decode_rows (e3 model, q = 0.5, 4 sequences, 1 thread):
--      the time in the gate and _final calls inside the steps / the step time (an upper bound), and
--      the step time with the gate as one C call (engine:exit_logits, the default) vs the ops, interleaved.
--   ./nanochat tools/bench/barrier.lua [reps=5] [ndec=16] [shapes=10M,50M,125M] [settings=all|default] [loop=0]
--                                    [old=/path/to/older/lib/libnanochat.so]
--   settings=default times only the default path — with another checkout's ./nanochat (an older
--   engine) this gives paired before/after runs of the same script.
-- Last line: one JSON object (barrier_ns_{spin,omp}, decode_tok_s_<shape>_<setting>_<t>t,
-- looplm_step_ms, looplm_gate_evals_per_step, looplm_gate_share, looplm_step_ms_gate_{c,ops},
-- looplm_gate_c_speedup).
if not package.path:find('lua/?/init.lua', 1, true) then
    package.path = 'lua/?.lua;lua/?/init.lua;' .. package.path
end
local here = (debug.getinfo(1, 'S').source:match('^@(.*/)') or './')
local L = dofile(here .. 'lib.lua')
local args = L.parse_args()
local nc = require 'nanochat'
local C = nc.C

local reps = tonumber(args.reps) or 5
local ndec = tonumber(args.ndec) or 16
local only_default = args.settings == 'default'
local want = {}
for s in tostring(args.shapes or '10M,50M,125M'):gmatch('[^,]+') do want[s] = true end
local out = {}

-- ---- 1. the barrier alone ------------------------------------------------------------------------
local has_bench = pcall(function() return C.nc_engine_barrier_bench end)
if has_bench and not only_default then
    local N = 20000
    local spin, omp = {}, {}
    C.nc_engine_barrier_bench(0, N, 2)
    for _ = 1, reps do
        spin[#spin + 1] = C.nc_engine_barrier_bench(0, N, 2)
        omp[#omp + 1] = C.nc_engine_barrier_bench(1, N, 2)
    end
    print(string.format('barrier alone, 2 threads, %d barriers per sample, %d samples alternating', N, reps))
    L.print_table({ 'barrier', 'ns median', 'ns best' }, {
        { 'spin (engine)', L.median(spin), L.min(spin) }, { 'omp barrier', L.median(omp), L.min(omp) },
    }, { '%s', '%.0f', '%.0f' })
    print()
    out.barrier_ns_spin, out.barrier_ns_omp = L.round(L.median(spin), 0), L.round(L.median(omp), 0)
end

-- ---- 2. decode per split ---------------------------------------------------------------------------
local SETTINGS = {
    { 'heads', {} }, { 'heads_omp', { barrier = 'omp' } }, { 'rows', { split = 'rows' } },
    { 'o_full', { split = 'heads', o_full = true } },
}
if only_default then SETTINGS = { SETTINGS[1] } end
local SHAPES = {
    { name = '10M', vocab_size = 8192, d_model = 256, n_layer = 6, n_head = 4 },
    { name = '50M', vocab_size = 8192, d_model = 512, n_layer = 10, n_head = 8 },
    { name = '125M', vocab_size = 32768, d_model = 768, n_layer = 12, n_head = 12 },
}
local P = 64

-- the packed engine of a random model of shape sh, and a P-token prompt for it
local function packed(sh)
    local model = nc.models.gpt.new { vocab_size = sh.vocab_size, d_model = sh.d_model, n_layer = sh.n_layer,
        n_head = sh.n_head, seq_len = 256, seed = 1 }
    model:eval()
    local e = nc.pack(model)
    model = nil
    collectgarbage('collect')
    local prompt = {}
    for i = 1, P do prompt[i] = (i * 37) % sh.vocab_size end
    return e, prompt
end

local rows = {}
for _, sh in ipairs(SHAPES) do
    if want[sh.name] then
        local e, prompt = packed(sh)
        local pidx, one = nc.tensor({ prompt }, { dtype = 'i64' }), nc.tensor({ { 5 } }, { dtype = 'i64' })
        for _, th in ipairs { 1, 2 } do
            nc.set_num_threads(th)
            local cache = e:new_cache(1, 256)
            e:forward_cached(pidx, cache)
            local sets = th == 1 and { SETTINGS[1] } or SETTINGS
            local function sample(s)
                e.split, e.o_full, e.barrier = s[2].split, s[2].o_full, s[2].barrier
                cache.pos = P
                local t0 = L.now()
                for _ = 1, ndec do e:forward_cached(one, cache) end
                return ndec / (L.now() - t0)
            end
            for _, s in ipairs(sets) do sample(s) end   -- warm-up
            local got = {}
            for _ = 1, reps do
                for _, s in ipairs(sets) do
                    got[s[1]] = got[s[1]] or {}
                    table.insert(got[s[1]], sample(s))
                end
            end
            for _, s in ipairs(sets) do
                local med = L.median(got[s[1]])
                local best = -math.huge
                for _, v in ipairs(got[s[1]]) do best = math.max(best, v) end
                rows[#rows + 1] = { sh.name, th, s[1], med, best, med / L.median(got.heads) }
                out[string.format('decode_tok_s_%s_%s_%dt', sh.name:lower(), s[1], th)] = L.round(med, 1)
            end
        end
        e.split, e.o_full, e.barrier = nil, nil, nil
        e = nil
        collectgarbage('collect')
    end
end
-- ---- 2b. (old=PATH) the layers alone, this library vs another build's, in the same process ------
-- old=/path/to/an/older/lib/libnanochat.so: its nc_engine_decode (same nc_tensor / nc_engine_layer
-- ABI; it ignores the nc_engine_cfg fields it does not know) and ours on the same layers, cache and
-- input, samples interleaved — a before/after pair free of the machine's load swings between
-- processes; also checks that both give the same bits. Only the C call: no embedding, no head.
if args.old then
    local ffi = require 'ffi'
    local OLD = ffi.load(tostring(args.old))
    local lrows = {}
    for _, sh in ipairs(SHAPES) do
        if want[sh.name] then
            local e, prompt = packed(sh)
            local cache = e:new_cache(1, 256)
            e:forward_cached(nc.tensor({ prompt }, { dtype = 'i64' }), cache)
            e.split, e.o_full, e.barrier = nil, nil, nil
            e:forward_cached(nc.tensor({ { 5 } }, { dtype = 'i64' }), cache)   -- sets e._cfg_c
            local cf = e._cfg_c
            cf.n_pos = 1
            local x0 = nc.randn({ 1, sh.d_model }, { generator = nc.generator(5) })
            for _, th in ipairs { 1, 2 } do
                nc.set_num_threads(th)
                OLD.nc_set_num_threads(th)
                local ta, tb, same = L.decode_layers_vs(OLD, cache, cf, sh.n_layer, P, x0, ndec, reps)
                local ma, mb = 1 / ta, 1 / tb
                lrows[#lrows + 1] = { sh.name, th, ma, mb, mb / ma, same and 'yes' or 'NO' }
                local k = string.format('layers_tok_s_%s_%dt', sh.name:lower(), th)
                out[k .. '_old'], out[k .. '_new'] = L.round(ma, 1), L.round(mb, 1)
                out[k:gsub('tok_s', 'new_vs_old')] = L.round(mb / ma, 3)
                out['layers_same_bits_' .. sh.name:lower() .. '_' .. th .. 't'] = same
            end
            e = nil
            collectgarbage('collect')
        end
    end
    nc.set_num_threads(2)
    print(string.format('the layers alone (one nc_engine_decode per token, position %d), %s vs this build, '
        .. '%d calls per sample, %d samples interleaved', P, tostring(args.old), ndec, reps))
    L.print_table({ 'shape', 'thr', 'old tok/s', 'new tok/s', 'new/old', 'same bits' }, lrows,
        { '%s', '%d', '%.1f', '%.1f', '%.3f', '%s' })
    print()
end

-- ---- 3. LoopLM's exit gate in engine:decode_rows: what share of a step is it? -------------------
-- configs/models/e3.lua (LoopLM + mHC-lite + MTP), random weights and a random exit gate (logit
-- std 1, as tools/bench/batch.lua arch=e3), q = 0.5, 4 sequences, 1 thread. The gate runs in Lua
-- (looplm.decode_rows: _final + the fp32 gate + tolist, row by row). Timed in place: the gate calls
-- and every _final call (those before the head too: an upper bound) inside the steps.
if not only_default and args.loop ~= 0 then
    nc.set_num_threads(1)
    local m = nc.models.gpt.new(nc.models.config('e3'))
    m:eval()
    m.exit_gate.weight:copy_(nc.randn({ 1, m.cfg.d_model }, { generator = nc.generator(2), std = 1.0 }))
    local e = nc.pack(m)
    m = nil
    local cache = e:new_cache(4, 256, { exit_q = 0.5 })
    local calls, tin = 0, 0
    local g, fin = e.exit_gate, e._final
    local function timed(f)
        return function(...)
            local t0 = L.now()
            local r = f(...)
            tin = tin + (L.now() - t0)
            return r
        end
    end
    local pos = 0
    local function sample()
        local n = 8
        local t0 = L.now()
        for _ = 1, n do
            if pos >= 250 then pos = 0 end
            e:decode_rows({ 5, 6, 7, 8 }, cache, { 0, 1, 2, 3 }, { pos, pos, pos, pos })
            pos = pos + 1
        end
        return (L.now() - t0) / n
    end
    -- the gate as one C call (engine:exit_logits, the default) vs the gate ops row by row, interleaved
    local has_c = e.exit_logits ~= nil
    local sc, so = {}, {}
    e.exit_logits = false
    sample()
    e.exit_logits = nil
    sample()
    for _ = 1, reps do
        if has_c then
            e.exit_logits = nil
            sc[#sc + 1] = sample()
        end
        e.exit_logits = false
        so[#so + 1] = sample()
    end
    local st, share = {}, {}
    local gcall = timed(function(h) calls = calls + 1 return g(h) end)
    e.exit_gate = setmetatable({}, { __call = function(_, h) return gcall(h) end })
    e._final = timed(fin)
    local ncalls = 0
    for _ = 1, reps do
        tin, calls = 0, 0
        local dt = sample()
        st[#st + 1] = dt
        share[#share + 1] = tin / (dt * 8)
        ncalls = calls / 8
    end
    e.exit_gate, e._final, e.exit_logits = g, nil, nil
    print(string.format('LoopLM (e3, q = 0.5, 4 sequences, decode_rows, 1 thread): gate ops row by row: %.2f ms per '
        .. 'step, %.1f gate evaluations per step; the gate + every _final call: %.2f%% of the step (median of %d)',
        L.median(st) * 1e3, ncalls, 100 * L.median(share), reps))
    if has_c then
        print(string.format('  interleaved: gate in C (engine:exit_logits) %.3f ms per step vs gate ops %.3f ms: %.3fx',
            L.median(sc) * 1e3, L.median(so) * 1e3, L.median(so) / L.median(sc)))
        out.looplm_step_ms_gate_c, out.looplm_step_ms_gate_ops = L.round(L.median(sc) * 1e3, 3), L.round(L.median(so) * 1e3, 3)
        out.looplm_gate_c_speedup = L.round(L.median(so) / L.median(sc), 3)
    end
    print()
    out.looplm_step_ms = L.round(L.median(st) * 1e3, 3)
    out.looplm_gate_evals_per_step = L.round(ncalls, 2)
    out.looplm_gate_share = L.round(L.median(share), 4)
end

nc.set_num_threads(2)
print(string.format('decode tokens/s (1 token after a %d-token prompt, %d tokens per sample, %d samples interleaved)',
    P, ndec, reps))
L.print_table({ 'shape', 'thr', 'setting', 'tok/s median', 'tok/s best', 'vs heads' }, rows,
    { '%s', '%d', '%s', '%.1f', '%.1f', '%.3f' })
print(L.json(out))
