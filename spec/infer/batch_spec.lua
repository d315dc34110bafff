-- spec/infer/batch_spec.lua — continuous batching (nanochat.batch, engine:decode_rows, the
-- per-sequence positions / cache rows of nc_engine_decode) on tiny random packed models:
--   * decode_rows: sequences at different positions in scattered cache rows, joining at different
--     steps, give logits equal (bit for bit with the f32 / int8 heads; within 1e-5 always) to each
--     sequence decoded alone with a B = 1 cache; the f32 head kernel (rows in groups of 4 / 2 / 1)
--     matches float64 and gives each row the same bits in any group;
--   * engine:batch: three prompts of different lengths (op-by-op prefill, fused prefill, one token)
--     joining at different steps give exactly nc.generate's ids alone — greedy, and sampled with
--     each sequence's own options; a finished or removed sequence frees its row and a new one
--     reusing it is correct; the pull iterator streams the same ids;
--   * LoopLM (per-sequence q-exit: sequences exiting at different loops in one call; logits, stats
--     and every KV slot equal to each alone), mHC (stream mixing inside nc_engine_decode: batched =
--     alone bit for bit, fused vs the op path within 1e-5 relative), e3-style loop + mHC + MTP and
--     MTP models are batched (same ids as alone); engine.fused = false falls back;
--   * bad input (too many sequences, cache overflow, bad ids / rows / positions, at the Lua API and
--     at nc_engine_decode itself) gives clear errors.
package.path = 'lua/?.lua;lua/?/init.lua;' .. package.path
local nc = require 'nanochat'
local ffi = require 'ffi'
package.path = 'spec/helpers/?.lua;' .. package.path
local fx = require 'model_fixtures'

local PROMPTS = {
    { 1, 5, 9, 3, 200, 17, 8, 2, 4, 4, 4, 11 },   -- 12 > FUSED_MAX_T: the op-by-op prefill
    { 42 },
    { 7, 7, 7, 7, 7 },                              -- fused short prefill
}

local function model(over)
    local m = nc.models.gpt.new(fx.micro(over))
    m:eval()
    return m
end

local function packed(over, popts)
    return nc.pack(model(over), popts)
end

local function ids(t) return nc.tensor({ t }, { dtype = 'i64' }) end

local function max_diff(a, b) return (a - b):abs():max():item() end

local function errmsg(fn, ...)
    local ok, err = pcall(fn, ...)
    assert.is_false(ok, 'expected an error')
    return tostring(err)
end

describe('engine:decode_rows (nc_engine_decode with seq_pos / seq_slot)', function()
    local variants = {
        { {}, {} },
        { { mlp = 'swiglu', subln = true, qk_norm = true, n_kv_head = 4 }, {} },
        { {}, { head_dtype = 'i8' } },
        { { logit_softcap = 15, tie_embeddings = true, embed_std = 0.3 }, {} },
        { {}, { head_dtype = 'f16' } },   -- (the f16 head is one sgemm: equal up to float rounding)
    }
    for _, v in ipairs(variants) do
        it('equals each sequence decoded alone (different positions, scattered rows, late joins) ' ..
            require('dkjson').encode(v), function()
            local e = packed(v[1], v[2])
            local cache = e:new_cache(4, 32)
            local rows = { 2, 0, 3 }
            local solo, views, next_id, pos = {}, {}, {}, {}
            local function join(i)
                views[i] = e:cache_row(cache, rows[i])
                solo[i] = e:new_cache(1, 32)
                local lv = e:forward_cached(ids(PROMPTS[i]), views[i])
                local ls = e:forward_cached(ids(PROMPTS[i]), solo[i])
                assert.are.equal(0, max_diff(lv, ls))   -- the row view prefills like a B = 1 cache
                next_id[i] = lv:select(1, #PROMPTS[i] - 1):argmax():item()
                pos[i] = #PROMPTS[i]
            end
            join(1)
            local worst = 0
            for step = 1, 8 do
                if step == 3 then join(2) end
                if step == 5 then join(3) end
                local live = {}
                for i = 1, 3 do if pos[i] then live[#live + 1] = i end end
                local tok, rw, ps = {}, {}, {}
                for j, i in ipairs(live) do tok[j], rw[j], ps[j] = next_id[i], rows[i], pos[i] end
                local lg = e:decode_rows(tok, cache, rw, ps)
                assert.same({ #live, e.cfg.vocab_size }, lg:shape())
                for j, i in ipairs(live) do
                    local alone = e:forward_cached(ids({ next_id[i] }), solo[i]):reshape { -1 }
                    local d = max_diff(lg:select(0, j - 1), alone) / math.max(alone:abs():max():item(), 1e-30)
                    assert.is_true(d <= 1e-5, 'relative logit difference ' .. d)
                    worst = math.max(worst, d)
                    next_id[i] = lg:select(0, j - 1):argmax():item()
                    pos[i] = pos[i] + 1
                end
            end
            -- the kernel is row-wise exact and the f32 / int8 heads run the single-sequence path
            if v[2].head_dtype ~= 'f16' then assert.are.equal(0, worst) end
        end)
    end

    it('more than 8 rows (the head in chunks of 8) equals one row at a time', function()
        local e = packed({}, {})
        local n = 11
        local cache = e:new_cache(n, 16)
        local tok, rw, ps = {}, {}, {}
        for i = 1, n do
            local v = e:cache_row(cache, i - 1)
            local p = {}
            for j = 1, i % 4 + 1 do p[j] = (i * 13 + j * 7) % 256 end
            e:forward_cached(ids(p), v)
            tok[i], rw[i], ps[i] = (i * 31) % 256, i - 1, #p
        end
        local lg = e:decode_rows(tok, cache, rw, ps)
        for i = 1, n do
            local one = e:decode_rows({ tok[i] }, cache, { rw[i] }, { ps[i] })
            assert.are.equal(0, max_diff(lg:narrow(0, i - 1, 1), one))
        end
    end)

    it('the f32 head kernel: each row as float64 within 1e-5, and bit-identical alone or in any group', function()
        for _, K in ipairs { 27, 40, 64 } do   -- 16-blocks, an 8-block and a tail; 8-block only; 16-blocks only
            local W = nc.randn({ 70, K }, { generator = nc.generator(K) })
            local X = nc.randn({ 8, K }, { generator = nc.generator(K + 1) })
            local w, x = W:tolist(), X:tolist()
            local all = nc.empty { 8, 70 }
            nc.core.check(nc.C.nc_engine_head_f32(all._c, X._c, W._c), 'head')
            for R = 1, 8 do
                local y = nc.empty { R, 70 }
                nc.core.check(nc.C.nc_engine_head_f32(y._c, X:narrow(0, 8 - R, R):contiguous()._c, W._c), 'head')
                assert.are.equal(0, max_diff(y, all:narrow(0, 8 - R, R)))
            end
            local got = all:tolist()
            for r = 1, 8 do
                for n = 1, 70 do
                    local ref, mag = 0, 0
                    for k = 1, K do
                        local p = w[(n - 1) * K + k] * x[(r - 1) * K + k]   -- (tolist is flat, row-major)
                        ref, mag = ref + p, mag + math.abs(p)
                    end
                    assert.is_true(math.abs(got[(r - 1) * 70 + n] - ref) <= 1e-5 * mag,
                        string.format('K %d row %d col %d', K, r, n))
                end
            end
        end
    end)

    it('rejects bad ids, rows, positions and architectures with clear errors', function()
        local e = packed({}, {})
        local cache = e:new_cache(2, 8)
        local function has(fn, pat) assert.truthy(errmsg(fn):find(pat, 1, true), errmsg(fn)) end
        has(function() e:decode_rows({ 1, 2 }, cache, { 0, 0 }, { 0, 0 }) end, 'share cache row 0')
        has(function() e:decode_rows({ 1 }, cache, { 2 }, { 0 }) end, 'cache row 2 is not in 0..1')
        has(function() e:decode_rows({ 1 }, cache, { 0 }, { 8 }) end, 'position 8 is outside the cache (max_T 8)')
        has(function() e:decode_rows({ 256 }, cache, { 0 }, { 0 }) end, 'token id 256 is not in 0..255')
        has(function() e:decode_rows({ 1, 2, 3 }, cache, { 0, 1, 2 }, { 0, 0, 0 }) end, '3 sequences, the cache has 2 rows')
        has(function() e:decode_rows({ 1 }, cache, { 0, 1 }, { 0 }) end, '1 ids, 2 rows, 1 positions')
        has(function() e:cache_row(cache, 2) end, 'row 2 is not in 0..1')
        local el = packed({}, {})
        el.fused = false
        has(function() el:decode_rows({ 1 }, el:new_cache(1, 8), { 0 }, { 0 }) end, 'needs the fused path')
    end)

    it('nc_engine_decode validates seq_pos / seq_slot itself', function()
        local e = packed({}, {})
        local cache = e:new_cache(3, 8)
        local c = e.cfg
        local keep
        local function call(B, spos, sslot, pos)
            local cfg = ffi.new('nc_engine_cfg', { d = c.d_model, n_head = c.n_head, n_kv_head = c.n_kv_head,
                head_dim = c.head_dim, d_ff = c.d_ff, eps = c.norm_eps, n_pos = 1 })
            local pa = spos and ffi.new('int64_t[?]', #spos, spos) or nil
            local sa = sslot and ffi.new('int32_t[?]', #sslot, sslot) or nil
            cfg.seq_pos, cfg.seq_slot = pa, sa
            keep = { pa, sa }   -- (cfg holds raw pointers)
            local x = nc.zeros { B, c.d_model }
            local ok, err = pcall(nc.core.check, nc.C.nc_engine_decode(x._c, cache.layers_c, #e.layers, cfg, pos or 0,
                cache.cos._c, cache.sin._c), 'engine decode')
            return ok, tostring(err)
        end
        local ok, err = call(2, { 1, 2 }, { 0, 2 })
        assert.is_true(ok, err)
        ok, err = call(2, { 1, 2 }, { 1, 1 })
        assert.is_false(ok); assert.truthy(err:find('sequences 0 and 1 share cache row 1', 1, true), err)
        ok, err = call(2, { 1, 2 }, { 0, 3 })
        assert.is_false(ok); assert.truthy(err:find('the K cache must be f32 (>= 4', 1, true), err)
        ok, err = call(2, { 1, 8 }, { 0, 1 })
        assert.is_false(ok); assert.truthy(err:find('positions up to 8', 1, true), err)
        ok, err = call(1, { -1 }, { 0 })
        assert.is_false(ok); assert.truthy(err:find('sequence 0: position -1 < 0', 1, true), err)
        ok, err = call(1, { 1 }, { -2 })
        assert.is_false(ok); assert.truthy(err:find('cache row -2 < 0', 1, true), err)
        ok, err = call(1, { 1 }, { 0 }, 3)
        assert.is_false(ok); assert.truthy(err:find('the pos argument must be 0', 1, true), err)
        ok, err = call(2, nil, { 0, 1 })   -- seq_slot alone: rows from seq_slot, positions from pos
        assert.is_true(ok, err)
        ok, err = call(2, { 0, 1 }, nil)   -- seq_pos alone: the caches must have exactly B rows
        assert.is_false(ok); assert.truthy(err:find('the K cache must be f32 (2,', 1, true), err)
        ok, err = call(1, { 40 }, { 0 })   -- beyond the RoPE tables too
        assert.is_false(ok)
    end)
end)

-- Batched LoopLM (+ mHC / MTP) decode_rows against each sequence alone: sequences with their own
-- exit_q exit at different loops in the same call; logits, statistics and every K/V slot (the reuse
-- fill) equal the B = 1 path's bit for bit.
local function loop_model(over)
    local o = { loop = { prelude = 1, shared = 1, coda = 1, T = 3 }, n_layer = 3 }
    for k, v in pairs(over or {}) do o[k] = v end
    local m = model(o)
    m.exit_gate.weight:copy_(nc.randn({ 1, m.cfg.d_model }, { generator = nc.generator(2), std = 1.0 }))
    return m
end

-- random dynamic mHC coefficients (phi, alpha), so the streams differ and the projection matters
local function mhc_random(m)
    for k, pl in ipairs(require('nanochat.mhc').layers(m)) do
        local l = pl[2]
        if l.phi then
            l.phi:copy_(nc.randn(l.phi:shape(), { std = 0.5, generator = nc.generator(10 + k) }))
            l.alpha:fill_(0.3)
        end
    end
    return m
end

local function check_rows_vs_alone(e, qs)
    local nseq = #qs
    local loop = e.cfg.loop ~= nil
    local cache = e:new_cache(nseq + 1, 32)
    local rows = {}
    for i = 1, nseq do rows[i] = nseq + 1 - i end   -- reversed rows, row 0 unused
    local solo, views, next_id, pos = {}, {}, {}, {}
    for i = 1, nseq do
        local p = PROMPTS[(i - 1) % #PROMPTS + 1]
        views[i] = e:cache_row(cache, rows[i], loop and { exit_q = qs[i] } or nil)
        solo[i] = e:new_cache(1, 32, loop and { exit_q = qs[i] } or nil)
        local lv = e:forward_cached(ids(p), views[i])
        local ls = e:forward_cached(ids(p), solo[i])
        assert.are.equal(0, max_diff(lv, ls))
        next_id[i] = lv:select(1, #p - 1):argmax():item()
        pos[i] = #p
    end
    local mixed = 0   -- calls where the sequences exited at different loops
    for _ = 1, 6 do
        local tok, rw, ps, before = {}, {}, {}, {}
        for i = 1, nseq do
            tok[i], rw[i], ps[i] = next_id[i], rows[i], pos[i]
            before[i] = loop and views[i].loop_stats.decode_loops or 0
        end
        local lg = e:decode_rows(tok, cache, rw, ps, views)
        local exits = {}
        for i = 1, nseq do
            local alone = e:forward_cached(ids({ next_id[i] }), solo[i]):reshape { -1 }
            assert.are.equal(0, max_diff(lg:select(0, i - 1), alone))
            if loop then exits[views[i].loop_stats.decode_loops - before[i]] = true end
            next_id[i] = lg:select(0, i - 1):argmax():item()
            pos[i] = pos[i] + 1
            views[i].pos = pos[i]
        end
        local k = 0
        for _ in pairs(exits) do k = k + 1 end
        if k > 1 then mixed = mixed + 1 end
    end
    for i = 1, nseq do
        if loop then assert.same(nc.looplm.stats(solo[i]), nc.looplm.stats(views[i])) end
        for sl = 1, #cache.k do   -- every slot, the reuse fill included
            assert.are.equal(0, max_diff(solo[i].k[sl]:narrow(1, 0, pos[i]), views[i].k[sl]:narrow(1, 0, pos[i])))
            assert.are.equal(0, max_diff(solo[i].v[sl]:narrow(1, 0, pos[i]), views[i].v[sl]:narrow(1, 0, pos[i])))
        end
    end
    return mixed
end

describe('engine:decode_rows on LoopLM models (per-sequence q-exit)', function()
    it('sequences exiting at different loops in one call equal each alone (logits, stats, KV fill)', function()
        local e = nc.pack(loop_model())
        assert.is_true(e:batchable())
        local mixed = check_rows_vs_alone(e, { 0.3, 0.6, 1, 0 })
        assert.is_true(mixed > 0, 'no call had sequences exiting at different loops')
    end)

    it('LoopLM + MTP (SwiGLU, QK-norm, GQA, int8 head) equals alone', function()
        local m = loop_model { mtp = { depth = 1 }, mlp = 'swiglu', qk_norm = true, n_kv_head = 4 }
        check_rows_vs_alone(nc.pack(m, { head_dtype = 'i8' }), { 0.5, 0.2, 0.9 })
    end)

    it('more than 8 sequences (coda / head in chunks) equal each alone', function()
        local qs = {}
        for i = 1, 10 do qs[i] = (i - 1) / 9 end
        check_rows_vs_alone(nc.pack(loop_model()), qs)
    end)

    it('mHC alone (lite n = 4 dynamic, Sinkhorn, static) equals each sequence alone', function()
        for _, mc in ipairs { { n = 4, kind = 'lite' }, { n = 3, kind = 'sinkhorn', iters = 5 },
                              { n = 2, kind = 'lite', dynamic = false } } do
            check_rows_vs_alone(nc.pack(mhc_random(model { mhc = mc })), { 0, 0, 0 })
        end
    end)

    it('e3-style LoopLM + mHC-lite (4 streams) + MTP: mixed exits equal each alone', function()
        local m = mhc_random(loop_model { mhc = { n = 4, kind = 'lite' }, mtp = { depth = 1 } })
        local e = nc.pack(m)
        assert.is_true(e:batchable())
        local mixed = check_rows_vs_alone(e, { 0.3, 0.6, 1, 0 })
        assert.is_true(mixed > 0, 'no call had sequences exiting at different loops')
    end)

    it('the fused mHC decode (nc_engine_decode, mhc_n) matches the op path within 1e-5 relative', function()
        -- the op path (engine.fused = false: nanochat.mhc's layer forward) is the reference; the
        -- fused projection sums its dot products in another order than sgemm (float rounding only)
        for _, mc in ipairs { { n = 4, kind = 'lite' }, { n = 3, kind = 'sinkhorn', iters = 5 },
                              { n = 2, kind = 'lite', dynamic = false } } do
            local e = nc.pack(mhc_random(model { mhc = mc, mlp = 'swiglu', subln = true }))
            local function run()
                local cache = e:new_cache(1, 16)
                local out = { e:forward_cached(ids { 1, 5, 9, 3, 7 }, cache) }   -- a fused chunk (T <= 8)
                for _, t in ipairs { 4, 200, 17 } do out[#out + 1] = e:forward_cached(ids { t }, cache) end
                return out
            end
            local fused = run()
            e.fused = false
            local ref = run()
            for i = 1, #ref do
                local rel = max_diff(fused[i], ref[i]) / ref[i]:abs():max():item()
                assert.is_true(rel <= 1e-5, require('dkjson').encode(mc) .. ': relative difference ' .. rel)
            end
        end
    end)

    it('nc_engine_decode rejects bad mHC parameters', function()
        local e = nc.pack(model { mhc = { n = 2, kind = 'lite' } })
        local cache = e:new_cache(1, 8)
        e:forward_cached(ids { 1 }, cache)   -- builds the fused layer array
        local arr = cache.seg_c.all
        local saved = arr[0].mhc_bias[1]
        arr[0].mhc_bias[1] = arr[0].mhc_alpha[1]   -- (3) where (2n + R) = 6 is expected
        local msg = errmsg(function() e:forward_cached(ids { 2 }, cache) end)
        arr[0].mhc_bias[1] = saved
        assert.truthy(msg:find('layer 0: the MLP mHC bias must be f32 (6) contiguous', 1, true), msg)
    end)

    it('rejects a bad per-sequence table', function()
        local e = nc.pack(loop_model())
        local cache = e:new_cache(2, 8)
        local msg = errmsg(function() e:decode_rows({ 1 }, cache, { 0 }, { 0 }, { { exit_q = 2 } }) end)
        assert.truthy(msg:find('seqs[1] needs exit_q in [0, 1]', 1, true), msg)
    end)
end)

describe('engine:batch (continuous batching)', function()
    local GREEDY = { max_tokens = 10, temperature = 0 }

    it('three prompts joining at different steps give exactly the ids of nc.generate alone (greedy)', function()
        local e = packed({}, {})
        local alone = {}
        for i, p in ipairs(PROMPTS) do alone[i] = nc.generate.collect(e, p, GREEDY) end
        local bd = e:batch { slots = 3, max_T = 32 }
        assert.is_true(bd.batched)
        local id = {}
        id[1] = bd:add(PROMPTS[1], GREEDY)
        bd:step(); bd:step()
        id[2] = bd:add(PROMPTS[2], GREEDY)
        bd:step()
        id[3] = bd:add(PROMPTS[3], GREEDY)
        assert.are.equal(3, bd:active())
        assert.are.equal(0, bd:free())
        local out = bd:run()
        for i = 1, 3 do assert.same(alone[i], out[id[i]]) end
        -- one fused call per step for all live sequences: 27 decoded rows (30 ids - 3 from the prefills)
        assert.are.equal(27, bd.stats.rows_decoded)
        assert.is_true(bd.stats.fused_calls < bd.stats.rows_decoded)
        assert.are.equal(3, bd:free())
        assert.are.equal(0, bd:active())
    end)

    it('each sequence samples with its own options (same ids as nc.generate alone)', function()
        local e = packed({ mlp = 'swiglu' }, {})
        local opts = {
            { max_tokens = 9, temperature = 0.8, top_k = 20, seed = 3 },
            { max_tokens = 12, temperature = 1.0, top_p = 0.9, repetition_penalty = 1.3, seed = 11 },
            { max_tokens = 7, temperature = 0.7, min_p = 0.05, seed = 5 },
        }
        local alone = {}
        for i, p in ipairs(PROMPTS) do alone[i] = nc.generate.collect(e, p, opts[i]) end
        local bd = e:batch { slots = 4, max_T = 32 }
        local id = { bd:add(PROMPTS[1], opts[1]) }
        bd:step()
        id[2] = bd:add(PROMPTS[2], opts[2])
        id[3] = bd:add(PROMPTS[3], opts[3])
        local out = bd:run()
        for i = 1, 3 do assert.same(alone[i], out[id[i]]) end
    end)

    it('stop tokens and a full context end a sequence like nc.generate; its row is freed and reused', function()
        local e = packed({}, {})
        local ref = nc.generate.collect(e, PROMPTS[2], GREEDY)
        local stop = { max_tokens = 10, temperature = 0, stop_tokens = { ref[4] } }
        local full = { max_tokens = 40, temperature = 0, max_context = 9 }   -- 5 prompt + 4 new positions
        local bd = e:batch { slots = 2, max_T = 16 }
        local a = bd:add(PROMPTS[2], stop)
        local b = bd:add(PROMPTS[3], full)
        assert.has_error(function() bd:add({ 1 }, GREEDY) end,
            'batch:add: all 2 slots are busy (wait for a sequence to finish or remove one)')
        local row_a = bd.recs[a].row
        while not select(2, bd:output(a)) do bd:step() end
        assert.same(nc.generate.collect(e, PROMPTS[2], stop), (bd:output(a)))
        assert.is_nil(bd.recs[a].row)
        assert.are.equal(1, bd:free())
        -- a new sequence takes the freed row (its old K/V contents are overwritten / never read)
        local c = bd:add(PROMPTS[1], GREEDY)
        assert.are.equal(row_a, bd.recs[c].row)
        local out = bd:run()
        assert.same(nc.generate.collect(e, PROMPTS[3], full), out[b])
        assert.are.equal(4 + 1, #out[b])   -- positions 5..8 fed: 4 decodes + the token sampled last
        -- (the batch's 16-position rows cap its context: 12 prompt + 4 new positions)
        assert.same(nc.generate.collect(e, PROMPTS[1], { max_tokens = 10, temperature = 0, max_context = 16 }), out[c])
        assert.are.equal(5, #out[c])
    end)

    it('remove frees an unfinished sequence\'s row; the next sequence in it is correct', function()
        local e = packed({}, {})
        local bd = e:batch { slots = 1, max_T = 32 }
        local a = bd:add(PROMPTS[1], { max_tokens = 20, temperature = 0 })
        bd:step(); bd:step()
        assert.are.equal(0, bd:free())
        bd:remove(a)
        assert.are.equal(1, bd:free())
        assert.has_error(function() bd:remove(a) end, 'batch:remove: no sequence ' .. a)
        local b = bd:add(PROMPTS[3], GREEDY)
        assert.same(nc.generate.collect(e, PROMPTS[3], GREEDY), bd:run()[b])
    end)

    it('the pull iterator streams every id in order and reports each end once', function()
        local e = packed({}, {})
        local bd = e:batch { slots = 3 }
        local id = {}
        for i, p in ipairs(PROMPTS) do id[i] = bd:add(p, { max_tokens = 3 + i, temperature = 0 }) end
        local got, ends = {}, {}
        for sid, tok in bd:tokens() do
            got[sid] = got[sid] or {}
            if tok then
                assert.is_nil(ends[sid], 'a token after the end')
                got[sid][#got[sid] + 1] = tok
            else
                assert.is_nil(ends[sid], 'two ends')
                ends[sid] = true
            end
        end
        for i, p in ipairs(PROMPTS) do
            assert.is_true(ends[id[i]])
            assert.same(nc.generate.collect(e, p, { max_tokens = 3 + i, temperature = 0 }), got[id[i]])
        end
        -- a sequence added after the stream ended is served by the next tokens() loop
        local late = bd:add({ 9, 9 }, GREEDY)
        local n = 0
        for sid, tok in bd:tokens() do if sid == late and tok then n = n + 1 end end
        assert.are.equal(10, n)
    end)

    it('rejects bad input with clear errors', function()
        local e = packed({}, {})
        local bd = e:batch { slots = 2, max_T = 8 }
        assert.has_error(function() bd:add({ 1, 2, 256 }, GREEDY) end,
            'batch:add: prompt entry 3 is id 256, outside the vocabulary 0..255')
        assert.has_error(function() bd:add({ 1, -1 }, GREEDY) end, 'batch:add: prompt entry 2 is not a token id: -1')
        assert.has_error(function() bd:add({}, GREEDY) end, 'batch:add: the prompt is empty (give at least one token, e.g. BOS)')
        assert.has_error(function() bd:add({ 1, 2, 3, 4, 5, 6, 7, 8, 9 }, GREEDY) end,
            'batch:add: the prompt has 9 tokens, more than the context of 8')
        assert.has_error(function() bd:add({ 1 }, { max_context = 9 }) end,
            'batch:add: max_context 9 is more than the cache length 8')
        assert.has_error(function() bd:add({ 1 }, { max_tokens = -1 }) end,
            'batch:add: max_tokens must be an integer >= 0, got -1')
        assert.are.equal(2, bd:free())   -- failed adds take no row
        assert.has_error(function() e:batch { slots = 0 } end, 'batch: slots must be an integer >= 1, got 0')
        assert.has_error(function() e:batch { slot = 2 } end, 'batch: unknown option slot (known: slots, max_T)')
        assert.has_error(function() require('nanochat.batch').new({}, {}) end,
            'batch: expected a packed engine (nc.pack / nc.engine.open)')
        -- a sequence that reaches max_T ends there (nothing overflows the cache)
        local a = bd:add({ 1, 2, 3 }, { max_tokens = 100, temperature = 0 })
        local out = bd:run()[a]
        assert.same(nc.generate.collect(e, { 1, 2, 3 }, { max_tokens = 100, temperature = 0, max_context = 8 }), out)
        assert.are.equal(6, #out)
    end)
end)

describe('engine:batch on the e3 architectures', function()
    local GREEDY = { max_tokens = 8, temperature = 0 }

    local function check(e, expect_batched, opts)
        local alone = {}
        for i, p in ipairs(PROMPTS) do alone[i] = nc.generate.collect(e, p, opts or GREEDY) end
        local bd = e:batch { slots = 3, max_T = 32 }
        assert.are.equal(expect_batched, bd.batched)
        local id = { bd:add(PROMPTS[1], opts or GREEDY) }
        bd:step()
        id[2] = bd:add(PROMPTS[2], opts or GREEDY)
        bd:step()
        id[3] = bd:add(PROMPTS[3], opts or GREEDY)
        local out = bd:run()
        for i = 1, 3 do assert.same(alone[i], out[id[i]]) end
        return bd
    end

    it('MTP models are batched (main-head decoding, same ids as alone)', function()
        local bd = check(packed({ mtp = { depth = 1 } }, {}), true)
        assert.is_true(bd.stats.fused_calls > 0)
    end)

    it('LoopLM with q-exit: batched, each sequence with its own exit_q and statistics', function()
        local e = nc.pack(loop_model())
        local bd = check(e, true, { max_tokens = 8, temperature = 0, exit_q = 0.5 })
        assert.is_true(bd.stats.fused_calls > 0)
        -- exit_q per sequence: the row view's statistics equal those of a solo generation
        local views = {}
        local bd2 = e:batch { slots = 2, max_T = 32 }
        local solo
        nc.generate.collect(e, PROMPTS[1], { max_tokens = 6, temperature = 0, exit_q = 0.3,
            on_cache = function(c) solo = c end })
        bd2:add(PROMPTS[1], { max_tokens = 6, temperature = 0, exit_q = 0.3, on_cache = function(c) views[1] = c end })
        bd2:add(PROMPTS[2], { max_tokens = 6, temperature = 0, exit_q = 1, on_cache = function(c) views[2] = c end })
        bd2:run()
        assert.same(nc.looplm.stats(solo), nc.looplm.stats(views[1]))
        assert.are.equal(3, nc.looplm.stats(views[2]).avg_decode_loops)
    end)

    it('mHC: batched (stream mixing inside nc_engine_decode), same ids as alone', function()
        local bd = check(nc.pack(mhc_random(model { mhc = { n = 2, kind = 'lite' } })), true)
        assert.is_true(bd.stats.fused_calls > 0)
    end)

    it('e3-style LoopLM + mHC + MTP with q-exit: batched, same ids as alone', function()
        local e = nc.pack(mhc_random(loop_model { mhc = { n = 4, kind = 'lite' }, mtp = { depth = 1 } }))
        local bd = check(e, true, { max_tokens = 8, temperature = 0, exit_q = 0.5 })
        assert.is_true(bd.stats.fused_calls > 0)
    end)

    it('engine.fused = false: one sequence at a time through the op-by-op path', function()
        local e = packed({}, {})
        e.fused = false
        check(e, false)
    end)
end)

describe('nanochat generate with several prompts', function()
    it('decodes them as one batch; each completion equals the single-prompt command', function()
        local m = model { vocab_size = 1024, seq_len = 64 }
        local dir = os.tmpname()
        os.remove(dir)
        nc.checkpoint.save(dir, { model = m, meta = { config = m:config() } })
        local tokf = 'spec/fixtures/tok_small.tok'
        local function run(args)
            local f = io.popen('./nanochat generate ' .. dir .. ' n=6 temperature=0 tok=' .. tokf .. ' ' .. args .. ' 2>&1')
            local out = f:read('*a')
            local ok = f:close()
            assert.is_true(ok, out)
            return out
        end
        local prompts = { 'fn main', 'let x = 1;', 'use std' }
        local single = {}
        for i, p in ipairs(prompts) do single[i] = run('prompt="' .. p .. '"') end
        -- prompt= prompt2= prompt3=, two rows (the third prompt joins when a row frees up)
        local out = run('prompt="fn main" prompt2="let x = 1;" prompt3="use std" batch=2')
        local pf = os.tmpname()
        local f = io.open(pf, 'w')
        f:write(table.concat(prompts, '\n') .. '\n\n')
        f:close()
        local out2 = run('prompts=' .. pf)
        for _, o in ipairs { out, out2 } do
            local blocks = {}
            for k, text in o:gmatch('%[(%d)%] (.-\n)') do blocks[tonumber(k)] = text end
            for i = 1, 3 do assert.equal(single[i], blocks[i], o) end
        end
        local g = io.popen('./nanochat generate ' .. dir .. ' prompt=a prompt3=b tok=' .. tokf .. ' 2>&1; echo "rc=$?"')
        local err = g:read('*a')
        g:close()
        assert.truthy(err:find('prompt3= without prompt2=', 1, true), err)
        assert.truthy(err:find('rc=1', 1, true), err)
        os.remove(pf)
        os.execute('rm -rf ' .. dir)
    end)
end)
