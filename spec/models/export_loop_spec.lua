-- spec/models/export_loop_spec.lua — GGUF export of LoopLM models (lua/nanochat/export.lua):
--  - unrolled (loop=unroll, the default when the rest of the cfg is bitnet-expressible and the
--    checkpoint does not exit early): the blocks in execution order (prelude, shared x T, coda)
--    as consecutive plain layers of a `bitnet` file, each repeat of a shared block the same
--    tensors bit for bit, no exit gate; the engine loaded back from the file gives EXACTLY the
--    LoopLM engine's full-depth (q = 1) logits — prefill (op by op) and token-by-token decode
--    (fused segments vs all layers in one call) — and the same greedy continuation; the reported
--    size cost equals the bytes of the repeated layers in the file.
--  - kept looped (loop=keep, or early exit / anything else llama.cpp cannot express): our
--    'nanochat' arch with cfg.loop and the fp32 exit gate; the reloaded engine exits at the same
--    loops (q < 1) with the same logits and greedy ids.
--  - arch_for / why_not per config (configs/models/loop_dense.lua -> bitnet unrolled; e3 -> nanochat),
--    mHC and MTP written under the nanochat arch (spec/models/export_e3_spec.lua checks them fully).
--  - configs/models/loop_dense.lua built at full size (random init), saved as a checkpoint, exported
--    with the `nanochat export` command, reloaded with engine.open and compared.
-- (llama.cpp itself runs an unrolled LoopLM in spec/models/llama_cpp_spec.lua.)
package.path = 'lua/?.lua;lua/?/init.lua;' .. package.path
local nc = require 'nanochat'

local function tmp(suffix) local p = os.tmpname(); os.remove(p); return p .. suffix end

-- a random LoopLM made sensitive: sharper attention (Wq/Wk x 8) and block outputs larger than
-- the embedding (wo/w2 x 15), so the blocks and their order decide the logits (greedy ids vary)
local function loop_model(over, loop)
    local cfg = nc.models.config('micro', { mlp = 'swiglu', tie_embeddings = true, embed_norm = false, subln = true,
        embed_std = 0.3, seed = 3 })
    for k, v in pairs(over or {}) do cfg[k] = v end
    cfg.loop = loop
    cfg.n_layer = (loop.prelude or 0) + loop.shared + (loop.coda or 0)
    local m = nc.models.gpt.new(cfg)
    m:eval()
    nc.no_grad(function()
        for _, b in ipairs(m.h) do
            for _, L in ipairs { b.attn.wq, b.attn.wk } do L.weight:copy_(L.weight * 8) end
            for _, L in ipairs { b.attn.wo, b.mlp.w2 } do L.weight:copy_(L.weight * 15) end
        end
    end)
    return m
end

local PROMPT = { 1, 5, 9, 3, 200, 17, 8, 2, 77, 31, 4, 250 }   -- 12 positions: the op-by-op prefill

local function maxdiff(a, b) return (a - b):abs():max():item() end

local function greedy(e, n, q)
    local ids = {}
    for id in e:generate({ 1, 5, 9 }, { max_tokens = n, temperature = 0, exit_q = q }) do ids[#ids + 1] = id end
    return ids
end

-- token-by-token decode of PROMPT on both engines: the largest logit difference over all steps
local function decode_diff(e1, e2, q)
    local c1, c2 = e1:new_cache(1, #PROMPT, { exit_q = q }), e2:new_cache(1, #PROMPT, { exit_q = q })
    local worst = 0
    for _, id in ipairs(PROMPT) do
        local x = nc.tensor({ { id } }, { dtype = 'i64' })
        worst = math.max(worst, maxdiff(e1:forward_cached(x, c1), e2:forward_cached(x, c2)))
    end
    return worst, c1, c2
end

local function distinct(list)
    local s, n = {}, 0
    for _, v in ipairs(list) do if not s[v] then s[v] = true; n = n + 1 end end
    return n
end

describe('export: LoopLM unrolled into a plain bitnet GGUF', function()
    local cases = {
        { 'd 32 (F16 ternary), prelude 1 / shared 2 x 3 / coda 1', {}, { prelude = 1, shared = 2, coda = 1, T = 3 }, 'tq2_0' },
        { 'd 256 TQ2_0, GQA 4/2, prelude 1 / shared 1 x 4 / coda 1',
            { d_model = 256, head_dim = 64, d_ff = 256 }, { prelude = 1, shared = 1, coda = 1, T = 4 }, 'tq2_0' },
        { 'd 256 TQ1_0, no prelude / coda, shared 2 x 2', { d_model = 256, head_dim = 64, d_ff = 512 },
            { prelude = 0, shared = 2, coda = 0, T = 2 }, 'tq1_0' },
    }
    for _, cs in ipairs(cases) do
        it(cs[1] .. ': layers in execution order, exact logits vs the q = 1 LoopLM engine, greedy ids, size cost', function()
            local m = loop_model(cs[2], cs[3])
            local e = nc.pack(m)
            local lc = e.cfg.loop
            local path = tmp('.gguf')
            local bytes, info = nc.export.gguf(e, path, { type = cs[4] })
            assert.equal('bitnet', info.arch)
            assert.equal('unroll', info.loop)
            local N = lc.prelude + lc.shared * lc.T + lc.coda
            -- the file: block_count, no gate, the unrolled_loop record, each layer = its unique block
            local e2, f = nc.export.load(path)
            local md = f.metadata
            assert.equal(N, md['bitnet.block_count'])
            assert.equal(N, e2.cfg.n_layer)
            assert.is_nil(e2.cfg.loop)
            assert.is_nil(f.tensor_index['exit_gate.weight'])
            assert.equal(lc.T, md['nanochat.unrolled_loop.T'])
            assert.equal(lc.shared, md['nanochat.unrolled_loop.shared'])
            local src = {}
            for j = 1, lc.prelude do src[#src + 1] = j end
            for _ = 1, lc.T do for j = 1, lc.shared do src[#src + 1] = lc.prelude + j end end
            for j = 1, lc.coda do src[#src + 1] = lc.prelude + lc.shared + j end
            assert.same(src, info.unroll.src)
            local first = {}
            for i, b in ipairs(src) do
                if first[b] then
                    for _, nm in ipairs { 'attn_q', 'attn_k', 'attn_v', 'attn_output', 'ffn_gate', 'ffn_up', 'ffn_down' } do
                        for _, suf in ipairs { '.weight', '.scale' } do
                            local a = f:tensor_f32('blk.' .. (i - 1) .. '.' .. nm .. suf)
                            local r = f:tensor_f32('blk.' .. (first[b] - 1) .. '.' .. nm .. suf)
                            assert.equal(0, maxdiff(a, r))
                        end
                    end
                else
                    first[b] = i
                    -- a unique block's first copy: its own ternary values (not another block's)
                    local t = e2.layers[i].w2:ternary()
                    assert.equal(0, maxdiff(t, e.layers[b].w2:ternary()))
                end
            end
            -- size cost: the repeated layers' bytes, S (T - 1) copies of the shared stack
            local per = 0
            for _, t in ipairs(f.tensors) do
                local l = tonumber(t.name:match('^blk%.(%d+)%.'))
                if l and l >= lc.prelude and l < lc.prelude + lc.shared then per = per + math.ceil(t.nbytes / 32) * 32 end
            end
            assert.equal(per * (lc.T - 1), info.unroll.repeated_bytes)
            assert.equal(bytes - info.unroll.repeated_bytes, info.unroll.looped_bytes)
            -- logits: prefill (12 positions, op by op) and token-by-token decode (fused), exactly equal
            local idx = nc.tensor({ PROMPT }, { dtype = 'i64' })
            local ref = e:forward(idx)                     -- LoopLM engine, exit_q = 1
            assert.is_true(ref:abs():max():item() > 1)
            assert.equal(0, maxdiff(ref, e2:forward(idx)))
            assert.equal(0, (decode_diff(e, e2, 1)))
            -- the unroll is not the looped model at another depth: one loop fewer changes the logits
            if lc.T > 1 then
                local fewer = nc.pack(m)
                fewer.cfg = {}
                for k, v in pairs(e.cfg) do fewer.cfg[k] = v end
                fewer.cfg.loop = {}
                for k, v in pairs(lc) do fewer.cfg.loop[k] = v end
                fewer.cfg.loop.T = lc.T - 1
                assert.is_true(maxdiff(ref, fewer:forward(idx)) > 1e-3)
            end
            -- greedy continuation identical (and not trivially constant)
            local g1 = greedy(e, 16, 1)
            assert.same(g1, greedy(e2, 16))
            assert.is_true(distinct(g1) >= 2)
            os.remove(path)
        end)
    end

    it('the nanochat arch unrolled on request (relu2, untied: not bitnet): same exact logits', function()
        local m = loop_model({ mlp = 'relu2', tie_embeddings = false, embed_norm = true }, { prelude = 1, shared = 1, coda = 1, T = 3 })
        local e = nc.pack(m)
        local path = tmp('.gguf')
        local _, info = nc.export.gguf(e, path, { loop = 'unroll' })
        assert.equal('nanochat', info.arch)
        assert.equal('unroll', info.loop)
        local e2, f = nc.export.load(path)
        assert.equal(5, f.metadata['nanochat.n_layer'])
        assert.is_nil(e2.cfg.loop)
        local idx = nc.tensor({ PROMPT }, { dtype = 'i64' })
        assert.equal(0, maxdiff(e:forward(idx), e2:forward(idx)))
        os.remove(path)
    end)
end)

describe('export: LoopLM kept looped (nanochat arch, exit gate)', function()
    it('early exit (exit_q 0.6): same exit loops, logits and greedy ids after reload; loop=unroll warns', function()
        local m = loop_model({}, { prelude = 1, shared = 1, coda = 1, T = 4, exit_q = 0.6 })
        nc.no_grad(function() m.exit_gate.weight:copy_(nc.randn({ 1, 32 }, { std = 1.0, generator = nc.generator(5) })) end)
        local e = nc.pack(m)
        local path = tmp('.gguf')
        local _, info = nc.export.gguf(e, path)
        assert.equal('nanochat', info.arch)
        assert.equal('keep', info.loop)
        assert.matches('early exit', table.concat(info.why.bitnet, '\n'), 1, true)
        assert.is_nil(info.unroll)
        local e2, f = nc.export.load(path)
        assert.same({ prelude = 1, shared = 1, coda = 1, T = 4, exit_q = 0.6, beta = e.cfg.loop.beta, stage = 1 }, e2.cfg.loop)
        assert.equal(3, e2.cfg.n_layer)
        assert.equal(0, maxdiff(f:tensor('exit_gate.weight'), e.exit_gate.weight))
        assert.equal(0, maxdiff(f:tensor('exit_gate.bias'), e.exit_gate.bias))
        local idx = nc.tensor({ PROMPT }, { dtype = 'i64' })
        assert.equal(0, maxdiff(e:forward(idx), e2:forward(idx)))
        local d, c1, c2 = decode_diff(e, e2, 0.6)
        assert.equal(0, d)
        local s1, s2 = nc.looplm.stats(c1), nc.looplm.stats(c2)
        assert.same(s1.hist, s2.hist)
        local n_exits = 0
        for _ in pairs(s1.hist) do n_exits = n_exits + 1 end
        assert.is_true(n_exits >= 2, 'the gate should make tokens exit at different loops')
        assert.same(greedy(e, 12), greedy(e2, 12))
        -- forced unroll: bitnet, the full-depth model, with a warning that the early exit is gone
        local _, info2 = nc.export.gguf(e, path, { loop = 'unroll' })
        assert.equal('bitnet', info2.arch)
        assert.matches('exit_q = 0.6', table.concat(info2.warnings, '\n'), 1, true)
        local e3 = nc.export.load(path)
        assert.equal(0, maxdiff(e:forward(idx), e3:forward(idx)))
        os.remove(path)
    end)

    it('loop=keep on a bitnet-expressible LoopLM; arch=nanochat keeps it looped too', function()
        local m = loop_model({}, { prelude = 1, shared = 2, coda = 0, T = 2 })
        local e = nc.pack(m)
        local path = tmp('.gguf')
        for _, o in ipairs { { loop = 'keep' }, { arch = 'nanochat' } } do
            local _, info = nc.export.gguf(e, path, o)
            assert.equal('nanochat', info.arch)
            assert.equal('keep', info.loop)
            local e2 = nc.export.load(path)
            assert.equal(3, e2.cfg.n_layer)
            assert.equal(2, e2.cfg.loop.T)
            local idx = nc.tensor({ PROMPT }, { dtype = 'i64' })
            assert.equal(0, maxdiff(e:forward(idx), e2:forward(idx)))
        end
        assert.has_error(function() nc.export.gguf(e, path, { arch = 'bitnet', loop = 'keep' }) end)
        local ok, err = pcall(nc.export.gguf, e, path, { loop = 'unrolled' })
        assert.is_false(ok)
        assert.matches("loop must be 'unroll' or 'keep'", err, 1, true)
        os.remove(path)
    end)
end)

describe('export: arch_for with LoopLM; mHC and MTP kept', function()
    local function cfg(name, over)
        local c = nc.models.config(name)
        for k, v in pairs(over or {}) do c[k] = v end
        return nc.models.gpt.config(c)
    end

    it('loop_dense -> bitnet unrolled; early exit, keep, e3, relu2 -> nanochat looped', function()
        local a, why, mode = nc.export.arch_for(cfg('loop_dense'))
        assert.equal('bitnet', a)
        assert.equal('unroll', mode)
        assert.equal(0, #why.bitnet)
        local ld_q = cfg('loop_dense', { loop = { prelude = 1, shared = 2, coda = 1, T = 3, exit_q = 0.5 } })
        a, why, mode = nc.export.arch_for(ld_q)
        assert.equal('nanochat', a)
        assert.equal('keep', mode)
        assert.matches('early exit', why.bitnet[1], 1, true)
        a, _, mode = nc.export.arch_for(ld_q, { loop = 'unroll' })
        assert.equal('bitnet', a)
        assert.equal('unroll', mode)
        a, why, mode = nc.export.arch_for(cfg('loop_dense'), { loop = 'keep' })
        assert.equal('nanochat', a)
        assert.equal('keep', mode)
        assert.matches('kept looped', why.bitnet[1], 1, true)
        -- e3: mHC and MTP keep it off llama.cpp even unrolled
        a, why, mode = nc.export.arch_for(cfg('e3'), { loop = 'unroll' })
        assert.equal('nanochat', a)
        assert.equal('unroll', mode)
        local all = table.concat(why.bitnet, '\n')
        assert.matches('mHC', all, 1, true)
        assert.matches('MTP', all, 1, true)
        assert.is_nil(all:find('LoopLM', 1, true))
        a, _, mode = nc.export.arch_for(cfg('e3'))
        assert.equal('nanochat', a)
        assert.equal('keep', mode)
        a, _, mode = nc.export.arch_for(cfg('tiny', { n_layer = 3, loop = { prelude = 1, shared = 1, coda = 1, T = 2 } }))
        assert.equal('nanochat', a)
        assert.equal('keep', mode)
        -- a plain model has no loop mode
        a, _, mode = nc.export.arch_for(cfg('dense'), { loop = 'unroll' })
        assert.equal('bitnet', a)
        assert.is_nil(mode)
        assert.has_error(function() nc.export.why_not(cfg('dense'), { loop = 1 }) end)
    end)

    it('mHC and MTP on a LoopLM: written under the nanochat arch (no refusal, no warning), same logits', function()
        -- (the full checks are spec/models/export_e3_spec.lua's)
        local path = tmp('.gguf')
        for _, over in ipairs { { mhc = { n = 2, kind = 'lite' } }, { mtp = { depth = 1 } } } do
            local m = loop_model(over, { prelude = 1, shared = 1, coda = 1, T = 2 })
            local e = nc.pack(m)
            local _, info = nc.export.gguf(e, path)
            assert.equal('nanochat', info.arch)
            assert.equal('keep', info.loop)
            assert.is_nil(table.concat(info.warnings, '\n'):find('MTP', 1, true))
            local e2 = nc.export.load(path)
            assert.same(e.cfg.mhc, e2.cfg.mhc)
            assert.same(e.cfg.mtp, e2.cfg.mtp)
            if over.mtp then assert.equal(1, #e2.mtp) end
            local idx = nc.tensor({ PROMPT }, { dtype = 'i64' })
            assert.equal(0, maxdiff(e:forward(idx), e2:forward(idx)))
        end
        os.remove(path)
    end)
end)

describe('configs/models/loop_dense.lua through `nanochat export`', function()
    it('builds (random init), exports unrolled as bitnet, prints the size cost; engine.open = the LoopLM engine', function()
        local m = nc.models.gpt.new(nc.models.config('loop_dense'))
        m:eval()
        local dir = tmp('')
        os.execute('mkdir -p ' .. dir)
        nc.save(dir .. '/model.safetensors', m:state_dict())
        local fh = io.open(dir .. '/meta.json', 'w'); fh:write(require('dkjson').encode({ config = m:config() })); fh:close()
        local out = dir .. '/m.gguf'
        local lines = {}
        local orig = _G.print
        _G.print = function(...) lines[#lines + 1] = table.concat({ ... }, ' ') end
        local ok, rc = pcall(require 'nanochat.cmd.export', {}, { dir, out })
        _G.print = orig
        assert.is_true(ok, tostring(rc))
        assert.equal(0, rc)
        local text = table.concat(lines, '\n')
        assert.matches('arch bitnet', text, 1, true)
        assert.matches('LoopLM unrolled: 8 layers from 4 unique blocks', text, 1, true)
        local E = require 'nanochat.engine'
        local ref, got = nc.pack(dir), E.open(out)
        assert.equal(8, got.cfg.n_layer)
        local idx = nc.tensor({ PROMPT }, { dtype = 'i64' })
        assert.equal(0, maxdiff(ref:forward(idx), got:forward(idx)))
        assert.same(greedy(ref, 8, 1), greedy(got, 8))
        os.execute('rm -rf ' .. dir)
    end)
end)
