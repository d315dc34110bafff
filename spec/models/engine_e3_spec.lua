-- spec/models/engine_e3_spec.lua — the packed engine (nc.pack) on the e3 architectures: train = serve.
--   LoopLM: with q = 1 the engine's logits (prefill and fused per-segment decode) match the
--     training model's within TOL; with q < 1 every decoded token exits at the same loop as in the
--     training model's cached decode (looplm.forward_cached runs on both), logits match, greedy
--     continuations are identical; B = 2 equals B = 1; fused decode equals the op-by-op path.
--   MTP: nc.mtp.generate on the engine gives exactly the engine's own greedy stream (and the
--     training model's), drafting with the packed modules the same tokens as the training modules.
--   Checkpoints: a saved micro e3-style checkpoint (loop + mtp) packs from its dir, and
--     `nanochat generate CKPT` runs it.
package.path = 'lua/?.lua;lua/?/init.lua;spec/helpers/?.lua;' .. package.path
local nc = require 'nanochat'
local LM = nc.looplm

-- the tolerance of spec/models/engine_spec.lua (relative to max |logit|): same integer GEMVs,
-- float epilogues summed in another order
local TOL = 1e-4
local FUSED_TOL = 1e-5

local PROMPTS = { { 1, 5, 9, 3, 200, 17, 8, 2 }, { 42 }, { 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7 } }

local function rel_diff(a, b)
    return (a - b):abs():max():item() / math.max(a:abs():max():item(), 1e-30)
end

local function ids(t) return nc.tensor({ t }, { dtype = 'i64' }) end

-- a micro loop model; the gate gets a N(0, 1) weight so tokens exit at different loops with q < 1
local function loop_model(loop, over)
    local cfg = nc.models.config('micro', { head_std = 0.3 })
    cfg.loop = loop
    cfg.n_layer = loop.prelude + loop.shared + loop.coda
    for k, v in pairs(over or {}) do cfg[k] = v end
    local m = nc.models.gpt.new(cfg)
    m:eval()
    m.exit_gate.weight:copy_(nc.randn({ 1, cfg.d_model }, { generator = nc.generator(2), std = 1.0 }))
    return m
end

local LOOPS = {
    { { prelude = 1, shared = 1, coda = 1, T = 3 }, {} },
    { { prelude = 0, shared = 2, coda = 0, T = 2 }, { mlp = 'swiglu', subln = true } },
    { { prelude = 1, shared = 2, coda = 1, T = 3 }, { qk_norm = true, logit_softcap = 15 } },
}

describe('engine: LoopLM', function()
    for _, v in ipairs(LOOPS) do
        local name = require('dkjson').encode(v[1]) .. ' ' .. require('dkjson').encode(v[2])
        it('q = 1: prefill and decode logits within TOL of the training model, same greedy ids: ' .. name, function()
            local m = loop_model(v[1], v[2])
            local e = nc.pack(m)
            for _, p in ipairs(PROMPTS) do
                local ref = nc.no_grad(function() return m:forward(ids(p)) end)
                local r = rel_diff(ref, e:forward(ids(p)))
                assert.is_true(r < TOL, 'prefill relative logit difference ' .. r)
                -- token by token (fused decode, one C call per segment) vs the full forward
                local c = e:new_cache(1, #p, { exit_q = 1 })
                for i = 1, #p do
                    local step = e:forward_cached(ids({ p[i] }), c)
                    local rr = rel_diff(ref:narrow(1, i - 1, 1), step)
                    assert.is_true(rr < TOL, 'decode position ' .. i .. ': ' .. rr)
                end
                assert.equal(#p * v[1].T, LM.stats(c).loops)
                local o = { max_tokens = 10, temperature = 0, exit_q = 1 }
                assert.same(nc.generate.collect(m, p, o), nc.generate.collect(e, p, o))
            end
        end)

        it('q < 1: every token exits at the training model\'s loop, same logits and greedy ids: ' .. name, function()
            local m = loop_model(v[1], v[2])
            local e = nc.pack(m)
            local q = 0.6
            local seen = {}
            for _, p in ipairs(PROMPTS) do
                local cm, ce = m:new_cache(1, 32, { exit_q = q }), e:new_cache(1, 32, { exit_q = q })
                local P = math.min(3, #p)
                local pre = {}
                for i = 1, P do pre[i] = p[i] end
                assert.is_true(rel_diff(m:forward_cached(ids(pre), cm), e:forward_cached(ids(pre), ce)) < TOL)
                assert.same(LM.stats(cm).hist, LM.stats(ce).hist)
                local seq = { p[P] }
                for i = P + 1, #p + 6 do
                    local tok = p[i] or seq[#seq]
                    local lb_m, lb_e = LM.stats(cm).loops, LM.stats(ce).loops
                    local lm_, le = m:forward_cached(ids({ tok }), cm), e:forward_cached(ids({ tok }), ce)
                    local xm, xe = LM.stats(cm).loops - lb_m, LM.stats(ce).loops - lb_e
                    assert.equal(xm, xe, 'exit loop at position ' .. i)
                    seen[xe] = true
                    assert.is_true(rel_diff(lm_, le) < TOL, 'position ' .. i)
                    seq[#seq + 1] = le:reshape { -1 }:argmax():item()
                end
                local o = { max_tokens = 10, temperature = 0, exit_q = q }
                assert.same(nc.generate.collect(m, p, o), nc.generate.collect(e, p, o))
            end
            local kinds = 0
            for _ in pairs(seen) do kinds = kinds + 1 end
            assert.is_true(kinds >= 2, 'the test gate should make tokens exit at different loops')
        end)
    end

    it('q < 1, B = 2 decode equals B = 1 per row; fused decode equals the op-by-op path', function()
        local m = loop_model(LOOPS[1][1])
        local e = nc.pack(m)
        local q = 0.6
        local seqs = { { 3, 1, 4, 1, 5, 9, 2, 6, 5, 3 }, { 2, 7, 1, 8, 2, 8, 1, 8, 2, 8 } }
        local cb = e:new_cache(2, 16, { exit_q = q })
        local c1, c2 = e:new_cache(1, 16, { exit_q = q }), e:new_cache(1, 16, { exit_q = q })
        local co = e:new_cache(2, 16, { exit_q = q })
        local function col(i) return nc.tensor({ { seqs[1][i] }, { seqs[2][i] } }, { dtype = 'i64' }) end
        for i = 1, #seqs[1] do
            local both = e:forward_cached(col(i), cb)
            e.fused = false
            local ops = e:forward_cached(col(i), co)
            e.fused = nil
            assert.is_true(rel_diff(ops, both) < FUSED_TOL, 'fused vs ops at ' .. i)
            local a = e:forward_cached(ids({ seqs[1][i] }), c1)
            local b = e:forward_cached(ids({ seqs[2][i] }), c2)
            assert.is_true(rel_diff(a, both:narrow(0, 0, 1)) < FUSED_TOL, 'row 1 at ' .. i)
            assert.is_true(rel_diff(b, both:narrow(0, 1, 1)) < FUSED_TOL, 'row 2 at ' .. i)
        end
        assert.equal(LM.stats(cb).loops, LM.stats(c1).loops + LM.stats(c2).loops)
        assert.same(LM.stats(cb).hist, LM.stats(co).hist)
        assert.is_true(LM.stats(cb).avg_loops < 3)
    end)
end)

-- random mHC coefficients: streams that really differ
local perturb_mhc = require('model_fixtures').perturb_mhc

describe('engine: mHC (and the whole e3 combination)', function()
    local cases = {
        { mhc = { n = 4, kind = 'lite' } },
        { mhc = { n = 2, kind = 'sinkhorn' }, mlp = 'swiglu', subln = true },
        { mhc = { n = 4, kind = 'lite' }, loop = { prelude = 1, shared = 1, coda = 1, T = 3 }, mtp = { depth = 1 } },
    }
    for _, over in ipairs(cases) do
        it('logits within TOL (prefill, decode), q-exit loops and greedy ids = the training model: '
            .. require('dkjson').encode(over), function()
            local cfg = nc.models.config('micro', { head_std = 0.3 })
            for k, v in pairs(over) do cfg[k] = v end
            if cfg.loop then cfg.n_layer = 3 end
            local m = nc.models.gpt.new(cfg)
            m:eval()
            perturb_mhc(m, 5)
            if m.exit_gate then m.exit_gate.weight:copy_(nc.randn({ 1, cfg.d_model }, { generator = nc.generator(2), std = 1.0 })) end
            local e = nc.pack(m)
            for _, mode in ipairs { 'fused', 'composite' } do
                nc.mhc.set_fused(mode == 'fused')   -- the engine runs the mHC layers' own forward: both paths
                for _, p in ipairs(PROMPTS) do
                    local ref = nc.no_grad(function() return m:forward(ids(p)) end)
                    local r = rel_diff(ref, e:forward(ids(p)))
                    assert.is_true(r < TOL, mode .. ' prefill relative logit difference ' .. r)
                    local q = cfg.loop and 0.6 or nil
                    local cm, ce = m:new_cache(1, 32, { exit_q = q }), e:new_cache(1, 32, { exit_q = q })
                    for i = 1, #p do
                        local lm_, le = m:forward_cached(ids({ p[i] }), cm), e:forward_cached(ids({ p[i] }), ce)
                        assert.is_true(rel_diff(lm_, le) < TOL, mode .. ' decode position ' .. i)
                    end
                    if cfg.loop then assert.same(LM.stats(cm).hist, LM.stats(ce).hist) end
                    local o = { max_tokens = 8, temperature = 0, exit_q = q }
                    local want = nc.generate.collect(m, p, o)
                    assert.same(want, nc.generate.collect(e, p, o))
                    if cfg.mtp then
                        local o1 = { max_tokens = 8, temperature = 0, exit_q = 1 }
                        assert.same(nc.generate.collect(e, p, o1), (nc.mtp.generate(e, p, { max_tokens = 8 })))
                    end
                end
            end
            nc.mhc.set_fused(true)
        end)
    end
end)

describe('engine: fused short chunks (nc_engine_decode with n_pos > 1)', function()
    it('a chunk of T <= FUSED_MAX_T positions after a prefix equals the op-by-op path (logits and K/V), B = 2', function()
        local E = require 'nanochat.engine'
        for _, over in ipairs { {}, { mlp = 'swiglu', subln = true, qk_norm = true } } do
            local cfg = nc.models.config('micro', { head_std = 0.3 })
            for k, v in pairs(over) do cfg[k] = v end
            local e = nc.pack(nc.models.gpt.new(cfg))
            local pre = nc.tensor({ { 3, 1, 4, 1, 5, 9, 2, 6, 5, 3 }, { 2, 7, 1, 8, 2, 8, 1, 8, 2, 8 } }, { dtype = 'i64' })
            local chunk = nc.tensor({ { 11, 12, 13, 14, 15 }, { 21, 22, 23, 24, 25 } }, { dtype = 'i64' })
            assert.is_true(chunk:size(1) <= E.FUSED_MAX_T and pre:size(1) > E.FUSED_MAX_T)
            local ca, cb = e:new_cache(2, 16), e:new_cache(2, 16)
            e:forward_cached(pre, ca)          -- op by op (longer than FUSED_MAX_T)
            e:forward_cached(pre, cb)
            local lf = e:forward_cached(chunk, ca)
            e.fused = false
            local lo = e:forward_cached(chunk, cb)
            e.fused = nil
            assert.is_true(rel_diff(lo, lf) < FUSED_TOL, 'chunk logits ' .. rel_diff(lo, lf))
            for i = 1, #e.layers do
                assert.is_true(rel_diff(cb.k[i]:narrow(1, 0, 15), ca.k[i]:narrow(1, 0, 15)) < FUSED_TOL)
                assert.is_true(rel_diff(cb.v[i]:narrow(1, 0, 15), ca.v[i]:narrow(1, 0, 15)) < FUSED_TOL)
            end
        end
    end)
end)

describe('engine: MTP drafting', function()
    local function mtp_model(mtp, loop)
        local cfg = nc.models.config('micro', { head_std = 0.3 })
        cfg.mtp = mtp
        if loop then cfg.loop = loop; cfg.n_layer = loop.prelude + loop.shared + loop.coda end
        local m = nc.models.gpt.new(cfg)
        m:eval()
        return m
    end
    local cases = {
        { { depth = 2 } },
        { { depth = 2, kind = 'parallel' } },
        { { depth = 1 }, { prelude = 1, shared = 1, coda = 1, T = 2 } },
    }
    for _, v in ipairs(cases) do
        it('nc.mtp.generate(engine) = the engine\'s own greedy stream = the training model\'s: '
            .. require('dkjson').encode(v), function()
            local m = mtp_model(v[1], v[2])
            local e = nc.pack(m)
            for _, p in ipairs(PROMPTS) do
                local got, st = nc.mtp.generate(e, p, { max_tokens = 16, trace = true })
                local plain = nc.generate.collect(e, p, { max_tokens = 16, temperature = 0, exit_q = 1 })
                assert.same(plain, got)
                local ref, rst = nc.mtp.generate(m, p, { max_tokens = 16, trace = true })
                assert.same(ref, got)
                assert.is_true(st.drafted > 0)
                -- the packed modules draft what the training modules draft (round by round)
                assert.equal(#rst.trace, #st.trace)
                for r = 1, #st.trace do assert.same(rst.trace[r].drafts, st.trace[r].drafts) end
            end
        end)
    end

    it('draft_vocab and the int8 head keep the output', function()
        local m = mtp_model({ depth = 2 })
        local e = nc.pack(m, { head_dtype = 'i8' })
        local p = PROMPTS[1]
        local plain = nc.generate.collect(e, p, { max_tokens = 12, temperature = 0 })
        assert.same(plain, (nc.mtp.generate(e, p, { max_tokens = 12, draft_vocab = 64 })))
    end)
end)

describe('engine: e3-style checkpoints', function()
    it('a saved micro loop + MTP checkpoint packs from its dir and runs under `nanochat generate`', function()
        local cfg = nc.models.config('micro', { head_std = 0.3, vocab_size = 1024 })
        cfg.loop = { prelude = 1, shared = 1, coda = 1, T = 2, exit_q = 0.7 }
        cfg.n_layer = 3
        cfg.mtp = { depth = 1 }
        local m = nc.models.gpt.new(cfg)
        m:eval()
        m.exit_gate.weight:copy_(nc.randn({ 1, cfg.d_model }, { generator = nc.generator(3), std = 1.0 }))
        local dir = os.tmpname()
        os.remove(dir)
        nc.checkpoint.save(dir, { model = m, meta = { config = m:config() } })
        local lm, meta = require('nanochat.engine').load_model(dir)
        assert.same(m.cfg.loop, lm.cfg.loop)
        assert.same(m.cfg.mtp, lm.cfg.mtp)
        local e1, e2 = nc.pack(m), nc.pack(dir)
        assert.is_table(e2.exit_gate)
        assert.equal(1, #e2.mtp)
        local idx = ids(PROMPTS[1])
        assert.equal(0, (e1:forward(idx) - e2:forward(idx)):abs():max():item())
        -- the CLI: greedy stream of the packed checkpoint (cfg.loop.exit_q = 0.7 from the checkpoint)
        local tokf = 'spec/fixtures/tok_small.tok'
        local tok = nc.tokenizer.load(tokf)
        local prompt = 'fn main'
        local pids = { tok.bos_id }
        for _, id in ipairs(tok:encode(prompt)) do pids[#pids + 1] = id end
        local want = nc.generate.collect(e2, pids, { max_tokens = 6, temperature = 0 })
        local f = io.popen('./nanochat generate ' .. dir .. ' prompt="' .. prompt .. '" n=6 temperature=0 tok=' .. tokf
            .. ' 2>&1')
        local out = f:read('*a')
        local ok = f:close()
        assert.is_true(ok, out)
        assert.equal(prompt .. tok:decode(want) .. '\n', out)
        -- exit_q= on the command line overrides the checkpoint's q (here: always T loops)
        local want1 = nc.generate.collect(e2, pids, { max_tokens = 6, temperature = 0, exit_q = 1 })
        f = io.popen('./nanochat generate ' .. dir .. ' prompt="' .. prompt .. '" n=6 temperature=0 exit_q=1 tok=' .. tokf
            .. ' 2>&1')
        out = f:read('*a')
        ok = f:close()
        assert.is_true(ok, out)
        assert.equal(prompt .. tok:decode(want1) .. '\n', out)
        assert.same({ exit_q = 0.5 }, require('nanochat.engine').sample_opts({ exit_q = '0.5' }))
        os.execute('rm -rf ' .. dir)
    end)
end)
