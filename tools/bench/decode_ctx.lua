-- tools/bench/decode_ctx.lua — packed-engine decode speed against the context length: the attention
-- over the KV cache grows with the position while the weights stay the same.
--
--   ./nanochat tools/bench/decode_ctx.lua [shape=125M|50M|10M] [threads=1,2] [ctx=64,512,1024,2000] [reps=5]
--        [kv_heads=N] [old=/path/to/another/lib/libnanochat.so]
--
-- A random-weight GPT of the shape (as tools/bench/infer.lua, vocab 8192 so the head does not hide
-- the attention; seq_len 2048) is packed; for each context P a prompt of P tokens is prefilled and
-- then 8 one-token decode steps at positions P .. P + 7 are timed (median of `reps`); "over the
-- first" = ms/token minus the first context's (what the longer context costs: the attention over a
-- KV cache of 2 x layers x P x d floats, read strided per head). Also per context: one query head's
-- attention alone (nc_engine_attn_head, rows strided as in the cache but small enough to stay in
-- L2), selected kernel vs the scalar reference (NC_KERNEL=scalar's code: the same bits, its fmaf
-- through libm on a baseline x86-64 build, so that ratio is not the gain over the earlier plain
-- loop; README "Decode at long context" has old vs new builds). Last line: JSON.
local nc = require 'nanochat'
local here = debug.getinfo(1, 'S').source:match('^@(.*/)') or './'
local L = dofile(here .. 'lib.lua')
local core = require 'nanochat.core'
local C = core.C
local args = L.parse_args()
local shape = tostring(args.shape or '125M')
local function list(s, d)
    local t = {}
    for x in tostring(s or d):gmatch('[^,]+') do t[#t + 1] = tonumber(x) end
    return t
end
local threads, ctxs, reps = list(args.threads, '1,2'), list(args.ctx, '64,512,1024,2000'), tonumber(args.reps) or 5

local over = { vocab_size = 8192, seq_len = 2048 }
if args.kv_heads then over.n_kv_head = tonumber(args.kv_heads) end
local e, cfg = L.packed_engine(shape, over)
local OLD = args.old and require('ffi').load(tostring(args.old)) or nil
local hd = cfg.d_model / cfg.n_head
local one = nc.tensor({ { 5 } }, { dtype = 'i64' })

local rows, old_rows = {}, {}
local json = { bench = 'decode_ctx', shape = shape, kv_heads = cfg.n_kv_head or cfg.n_head, kernel = nc.cpu_kernel(),
               results = {} }
local first = {}
for _, P in ipairs(ctxs) do
    local prompt = {}
    for i = 1, P do prompt[i] = (i * 37) % cfg.vocab_size end
    local cache = e:new_cache(1, 2048)
    e:forward_cached(nc.tensor({ prompt }, { dtype = 'i64' }), cache)
    -- one head's attention alone, rows strided as in the cache (all heads of a position together)
    local S = P + 4
    local q = nc.randn({ hd }, { generator = nc.generator(1) })
    local kw, vw = nc.randn({ S, cfg.d_model }, { generator = nc.generator(2) }), nc.randn({ S, cfg.d_model }, { generator = nc.generator(3) })
    local k, v, o = kw:narrow(1, 0, hd), vw:narrow(1, 0, hd), nc.empty { hd }
    local function head() core.check(C.nc_engine_attn_head(o._c, q._c, k._c, v._c, 1 / math.sqrt(hd)), 'attn') end
    local t_head = L.time(head, { reps = reps, inner = 20 })
    local before = nc.cpu_kernel()
    nc.set_cpu_kernel('scalar')
    local t_ref = L.time(head, { reps = reps, inner = 5 })
    nc.set_cpu_kernel(before)
    for _, th in ipairs(threads) do
        nc.set_num_threads(th)
        local t = L.time(function()
            cache.pos = P
            for _ = 1, 8 do e:forward_cached(one, cache) end
        end, { reps = reps }) / 8
        first[th] = first[th] or t
        rows[#rows + 1] = { P, th, 1 / t, t * 1e3, (t - first[th]) * 1e3, t_head * 1e6, t_ref * 1e6, t_ref / t_head }
        local r = { ctx = P, threads = th, tok_s = L.round(1 / t, 1),
            ms_over_first = L.round((t - first[th]) * 1e3, 3), attn_head_us = L.round(t_head * 1e6, 2),
            attn_head_scalar_us = L.round(t_ref * 1e6, 2) }
        if OLD then   -- the layers alone at position P: that build vs this one, interleaved
            cache.pos = P
            e:forward_cached(one, cache)   -- sets e._cfg_c
            local cf = e._cfg_c
            cf.n_pos = 1
            OLD.nc_set_num_threads(th)
            local x0 = nc.randn({ 1, cfg.d_model }, { generator = nc.generator(5) })
            local ta, tb, same = L.decode_layers_vs(OLD, cache, cf, cfg.n_layer, P, x0, 8, 2 * reps + 1)
            r.layers_ms_old, r.layers_ms_new = L.round(ta * 1e3, 3), L.round(tb * 1e3, 3)
            r.same_bits = same
            old_rows[#old_rows + 1] = { P, th, r.layers_ms_old, r.layers_ms_new, r.layers_ms_old / r.layers_ms_new,
                same and 'yes' or 'NO' }
        end
        json.results[#json.results + 1] = r
    end
end
print(string.format('%s engine decode vs context (vocab %d, %d KV heads for %d query heads, kernel %s); attention '
    .. 'head alone: head_dim %d, one query head over the context (L2-resident rows), selected kernel vs scalar reference',
    shape, cfg.vocab_size, cfg.n_kv_head or cfg.n_head, cfg.n_head, nc.cpu_kernel(), hd))
L.print_table({ 'context', 'threads', 'tok/s', 'ms/token', 'over the first', 'attn head us', 'scalar ref us', 'vs scalar' },
    rows, { '%d', '%d', '%.1f', '%.2f', '%.2f', '%.1f', '%.1f', '%.1fx' })
if OLD then
    print(string.format('\nthe layers alone (one nc_engine_decode per token), %s vs this build, medians of %d '
        .. 'interleaved samples of 8 calls', tostring(args.old), 2 * reps + 1))
    L.print_table({ 'context', 'threads', 'old ms', 'new ms', 'old/new', 'same bits' }, old_rows,
        { '%d', '%d', '%.2f', '%.2f', '%.2fx', '%s' })
end
print(L.json(json))
