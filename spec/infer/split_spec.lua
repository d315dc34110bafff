-- spec/infer/split_spec.lua — the parallel split of the fused decode (kernels/cpu/engine.c).
-- Every split (q/k/v by whole KV-head groups or by 16-row chunks, the o-projection split or whole
-- on every thread, spin or omp barrier) on 1..4 threads gives logits bit-identical to the
-- 1-thread decode (the layers alone: also to the scalar reference kernel's on 1 thread) — for MHA,
-- GQA, MQA and an odd n_kv_head (3 heads on 2 and 4 threads: uneven head groups, or the rows fallback), SwiGLU + SubLN + QK-norm, short chunks (n_pos > 1), batched
-- rows at their own positions (decode_rows), and mHC; and the syncs the decode call actually
-- passed (counted by the barrier itself) are n_layer * nc_engine_barriers_per_layer: 4 per plain
-- layer with the heads split, 5 with rows, 3 with heads + o_full.
package.path = 'lua/?.lua;lua/?/init.lua;spec/helpers/?.lua;' .. package.path
local nc = require 'nanochat'
local ffi = require 'ffi'
local C = nc.C or ffi.C

local function packed(over)
    local cfg = nc.models.config('micro', { head_std = 0.3 })
    cfg.matmul, cfg.head_matmul = 'fp32', 'fp32'
    for k, v in pairs(over) do cfg[k] = v end
    local m = nc.models.gpt.new(cfg)
    m:eval()
    return nc.pack(m), cfg
end

-- logits of: a 3-token chunk prefill of 2 sequences, then 3 one-token steps (B = 2), concatenated
local function run(e)
    local cache = e:new_cache(2, 16)
    local out = { e:forward_cached(nc.tensor({ { 3, 1, 4 }, { 2, 7, 1 } }, { dtype = 'i64' }), cache) }
    for t = 1, 3 do
        out[#out + 1] = e:forward_cached(nc.tensor({ { 10 + t }, { 40 + 3 * t } }, { dtype = 'i64' }), cache)
    end
    return nc.cat(out, 1)
end

local function same_bits(a, b, what)
    assert.same(a:shape(), b:shape())
    local d = (a - b):abs():max():item()
    assert.is_true(d == 0, what .. ': max |difference| ' .. d .. ' (expected bit-identical)')
end

local SETTINGS = {
    { split = nil }, { split = 'heads' }, { split = 'rows' },
    { split = 'heads', o_full = true }, { split = 'rows', o_full = true }, { split = 'heads', barrier = 'omp' },
}

local function label(s)
    return string.format('split=%s o_full=%s barrier=%s', tostring(s.split), tostring(s.o_full), tostring(s.barrier))
end

local with_threads = require('settings').with_threads

describe('fused decode split: bit-identical on any thread count and split', function()
    local variants = {
        { 'MHA 4 heads', { n_kv_head = 4 } },
        { 'GQA 4/2', {} },
        { 'MQA 4/1', { n_kv_head = 1 } },
        { 'odd 6/3 heads', { d_model = 48, n_head = 6, n_kv_head = 3 } },
        { 'swiglu + subln + qk_norm, 6/3', { d_model = 48, n_head = 6, n_kv_head = 3, mlp = 'swiglu', subln = true,
            qk_norm = true } },
        { 'mHC-lite n = 4', { mhc = { n = 4, kind = 'lite' } } },
        { 'mHC static Sinkhorn n = 2', { mhc = { n = 2, kind = 'sinkhorn', dynamic = false } } },
    }
    for _, v in ipairs(variants) do
        it(v[1], function()
            local e = packed(v[2])
            local ref
            with_threads(1, function() ref = run(e) end)
            for _, T in ipairs { 2, 3, 4 } do
                for _, s in ipairs(SETTINGS) do
                    e.split, e.o_full, e.barrier = s.split, s.o_full, s.barrier
                    with_threads(T, function() same_bits(ref, run(e), T .. ' threads, ' .. label(s)) end)
                end
            end
            e.split, e.o_full, e.barrier = nil, nil, nil
        end)
    end

    -- the layers alone (nc_engine_decode on the engine's layer array: no embedding norm, no head —
    -- the f32 head's FMA kernel sums in another order than its scalar reference)
    -- (head_dim 8, and head_dim 10: the attention kernel's masked tail of a partial 8-lane group;
    -- long enough that the attention covers full 8-lane groups of positions and a tail)
    it('the layers: the scalar reference kernel on 1 thread gives the same bits as the selected kernel on 2 and 3 threads',
        function()
          for _, over in ipairs { { d_model = 48, n_head = 6, n_kv_head = 3, mlp = 'swiglu', subln = true, qk_norm = true },
                                  { d_model = 60, n_head = 6, n_kv_head = 3 } } do
            local e, cfg = packed(over)
            e:forward_cached(nc.tensor({ { 1 }, { 2 } }, { dtype = 'i64' }), e:new_cache(2, 8))   -- builds e._cfg_c
            local cf = e._cfg_c
            local x0 = nc.randn({ 2, cfg.d_model }, { generator = nc.generator(9) })
            local function layers_run()
                local cache = e:new_cache(2, 24)
                cf.n_pos = 1
                local outs, y = {}, x0
                for pos = 0, 19 do
                    y = y:clone()
                    local st = C.nc_engine_decode(y._c, cache.layers_c, cfg.n_layer, cf, pos, cache.cos._c, cache.sin._c)
                    assert.equal(0, st)
                    outs[#outs + 1] = y
                    y = y * 0.5   -- the next step's input
                end
                return nc.cat(outs, 0)
            end
            local before = nc.cpu_kernel()
            local ref
            nc.set_cpu_kernel('scalar')
            local ok, err = pcall(with_threads, 1, function()
                cf.split, cf.o_full, cf.barrier = 0, 0, 0
                ref = layers_run()
            end)
            nc.set_cpu_kernel(before)
            if not ok then error(err, 0) end
            for _, T in ipairs { 2, 3 } do
                for _, s in ipairs(SETTINGS) do
                    cf.split = s.split == 'heads' and 2 or s.split == 'rows' and 1 or 0
                    cf.o_full, cf.barrier = s.o_full and 2 or 0, s.barrier == 'omp' and 1 or 0
                    with_threads(T, function() same_bits(ref, layers_run(), before .. ', ' .. T .. ' threads, ' .. label(s)) end)
                end
            end
          end
        end)

    it('decode_rows (sequences at their own positions and cache rows) on 1 vs 3 threads, every split', function()
        local e = packed { d_model = 48, n_head = 6, n_kv_head = 3 }
        local function rows_run()
            local cache = e:new_cache(3, 16)
            e:decode_rows({ 5, 6 }, cache, { 2, 0 }, { 0, 0 })
            e:decode_rows({ 9 }, cache, { 2 }, { 1 })
            return e:decode_rows({ 7, 8 }, cache, { 0, 2 }, { 1, 2 })
        end
        local ref
        with_threads(1, function() ref = rows_run() end)
        for _, s in ipairs(SETTINGS) do
            e.split, e.o_full, e.barrier = s.split, s.o_full, s.barrier
            with_threads(3, function() same_bits(ref, rows_run(), '3 threads, ' .. label(s)) end)
        end
    end)

    it('rejects a bad split / barrier name with a clear error', function()
        local e = packed {}
        e.split = 'cols'
        assert.has_error(function() run(e) end, "engine: split must be 'heads' or 'rows' (or nil), got cols")
        e.split, e.barrier = nil, 'futex'
        assert.has_error(function() run(e) end, "engine: barrier must be 'spin' or 'omp' (or nil), got futex")
    end)
end)

describe('fused decode split: syncs per layer', function()
    -- one decode step; returns the syncs the call passed and the per-layer count the engine states
    local function count(e, cfg, T)
        local n, per
        with_threads(T, function()
            local cache = e:new_cache(1, 8)
            e:forward_cached(nc.tensor({ { 1, 2 } }, { dtype = 'i64' }), cache)
            n = tonumber(C.nc_engine_last_syncs())
            local cf = cfg.mhc and e._cfg_m or e._cfg_c
            per = C.nc_engine_barriers_per_layer(cf, T)
        end)
        return n, per
    end

    it('plain layers: 4 (heads), 5 (rows), 3 (heads + o_full); 0 on one thread', function()
        for _, kv in ipairs { 2, 4, 1 } do
            local e, cfg = packed { n_kv_head = kv }
            local L = cfg.n_layer
            for _, case in ipairs {
                { T = 2, split = nil, want = kv % 2 == 0 and 4 or 5 }, { T = 2, split = 'rows', want = 5 },
                { T = 2, split = 'heads', o_full = true, want = 3 }, { T = 2, split = 'rows', o_full = true, want = 4 },
                { T = 3, split = nil, want = 5 }, { T = 4, split = nil, want = kv % 4 == 0 and 4 or 5 },
                { T = 2, split = 'heads', barrier = 'omp', want = 4 }, { T = 1, split = nil, want = 0 },
            } do
                e.split, e.o_full, e.barrier = case.split, case.o_full, case.barrier
                local n, per = count(e, cfg, case.T)
                local what = string.format('n_kv_head %d, %d threads, %s', kv, case.T, label(case))
                assert.equal(case.want, per, what .. ': nc_engine_barriers_per_layer')
                assert.equal(L * case.want, n, what .. ': syncs passed')
            end
        end
    end)

    it('mHC layers: 6 more with dynamic coefficients, 4 more static (o_full ignored)', function()
        local e, cfg = packed { mhc = { n = 4, kind = 'lite' } }
        e.o_full = true
        local n, per = count(e, cfg, 2)
        assert.equal(4 + 6, per)
        assert.equal(cfg.n_layer * 10, n)
        local e2, cfg2 = packed { mhc = { n = 2, kind = 'sinkhorn', dynamic = false } }
        n = count(e2, cfg2, 2)
        assert.equal(cfg2.n_layer * (4 + 4), n)
    end)
end)

describe('LoopLM exit gate in C (engine:exit_logits, nc_engine_exit_gate)', function()
    for _, over in ipairs { {}, { mhc = { n = 4, kind = 'lite' } } } do
        it('equals the op path (exit_gate(_final(x))) within 1e-5 and is row-wise exact' ..
            (over.mhc and ' (mHC streams)' or ''), function()
            local cfg = nc.models.config('micro', { head_std = 0.3 })
            cfg.loop = { prelude = 1, shared = 1, coda = 0, T = 2 }
            for k, v in pairs(over) do cfg[k] = v end
            local m = nc.models.gpt.new(cfg)
            m.exit_gate.weight:copy_(nc.randn({ 1, cfg.d_model }, { generator = nc.generator(3), std = 1.0 }))
            m.exit_gate.bias:fill_(0.25)
            m:eval()
            local e = nc.pack(m)
            local n = over.mhc and over.mhc.n or 1
            local shape = n > 1 and { 5, 1, n, cfg.d_model } or { 5, 1, cfg.d_model }
            local x = nc.randn(shape, { generator = nc.generator(4) }) * 3
            local got = e:exit_logits(x)
            local ref = e.exit_gate(e:_final(x)):tolist()
            assert.equal(5, #got)
            for k = 1, 5 do
                assert.is_true(math.abs(got[k] - ref[k]) <= 1e-5 * math.max(1, math.abs(ref[k])),
                    string.format('row %d: %.9g vs op path %.9g', k, got[k], ref[k]))
                assert.equal(got[k], e:exit_logits(x:narrow(0, k - 1, 1))[1])   -- alone: the same bits
            end
        end)
    end

    it('a bad shape is a clear error', function()
        local e = packed {}
        e.exit_gate = { weight = nc.zeros { 1, 32 }, bias = nc.zeros { 1 } }
        local ok, err = pcall(function() return e:exit_logits(nc.zeros { 2, 1, 31 }) end)
        assert.is_false(ok)
        assert.truthy(tostring(err):find('engine_exit_gate: expected x (R, n d)', 1, true), tostring(err))
    end)
end)
