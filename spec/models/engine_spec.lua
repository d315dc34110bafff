-- spec/models/engine_spec.lua — nc.pack / the packed engine: train = serve.
-- The packed engine's logits match the training model's (fake-quantized, eval mode) logits within
-- TOL (relative to max |logit|) on a prompt set, for micro and tiny-shaped random models and the
-- cfg variants (swiglu, subln, qk_norm, tied embeddings, softcap, GQA); greedy continuations through
-- nc.generate are identical; incremental decode = full forward; B > 1 batched decode = B = 1 runs;
-- a checkpoint dir (model.safetensors + meta.json) packs to the same engine.
package.path = 'lua/?.lua;lua/?/init.lua;' .. package.path
local nc = require 'nanochat'

-- Both paths do the same int arithmetic; the float epilogue differs in order (int32 dot * 1/s *
-- gamma vs fp32 matmul of dequantized values), so the difference is float rounding only.
local TOL = 1e-4

local PROMPTS = { { 1, 5, 9, 3, 200, 17, 8, 2 }, { 42 }, { 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7 } }

local function model_of(name, over)
    local cfg = nc.models.config(name, { head_std = 0.3 })
    -- the f32 composite training path (matmul = 'auto' runs the AMX GEMMs where available: the same
    -- int arithmetic with another float rounding order, which can flip a rare activation code at a
    -- rounding tie and so move a logit by more than TOL; spec/ops/amx_spec.lua covers that path)
    cfg.matmul = 'fp32'
    cfg.head_matmul = 'fp32'   -- (the default 'auto' is f32 outside training steps anyway)
    for k, v in pairs(over or {}) do cfg[k] = v end
    local m = nc.models.gpt.new(cfg)
    m:eval()
    return m
end

local function rel_diff(a, b)
    return (a - b):abs():max():item() / math.max(a:abs():max():item(), 1e-30)
end

local function check_logits(m, e)
    for _, p in ipairs(PROMPTS) do
        local idx = nc.tensor({ p }, { dtype = 'i64' })
        local ref = nc.no_grad(function() return m:forward(idx) end)
        local got = e:forward(idx)
        assert.same(ref:shape(), got:shape())
        local r = rel_diff(ref, got)
        assert.is_true(r < TOL, 'relative logit difference ' .. r)
    end
end

describe('engine: train = serve', function()
    local variants = {
        { 'micro', {} },
        { 'micro', { mlp = 'swiglu', subln = true } },
        { 'micro', { qk_norm = true, tie_embeddings = true, embed_std = 0.3, logit_softcap = 15 } },
        { 'micro', { n_kv_head = 4 } },
        { 'tiny', { n_layer = 2, vocab_size = 512 } },
    }
    for _, v in ipairs(variants) do
        it('logits within ' .. TOL .. ' and identical greedy continuations: ' .. v[1] .. ' ' .. require('dkjson').encode(v[2]),
            function()
                local m = model_of(v[1], v[2])
                local e = nc.pack(m)
                check_logits(m, e)
                for _, p in ipairs(PROMPTS) do
                    local o = { max_tokens = 10, temperature = 0 }
                    assert.same(nc.generate.collect(m, p, o), nc.generate.collect(e, p, o))
                end
                local o = { max_tokens = 8, temperature = 0.8, top_k = 20, seed = 3 }
                assert.same(nc.generate.collect(m, PROMPTS[1], o), nc.generate.collect(e, PROMPTS[1], o))
            end)
    end

    it('incremental decode equals the full forward; B = 2 batched decode equals B = 1', function()
        local m = model_of('micro')
        local e = nc.pack(m)
        local seqs = { { 3, 1, 4, 1, 5, 9, 2, 6 }, { 2, 7, 1, 8, 2, 8, 1, 8 } }
        local full = e:forward(nc.tensor(seqs, { dtype = 'i64' }))
        local cache = e:new_cache(2, 8)
        e:forward_cached(nc.tensor({ { 3, 1, 4 }, { 2, 7, 1 } }, { dtype = 'i64' }), cache)
        for t = 4, 8 do
            local step = e:forward_cached(nc.tensor({ { seqs[1][t] }, { seqs[2][t] } }, { dtype = 'i64' }), cache)
            assert.is_true(rel_diff(full:narrow(1, t - 1, 1), step) < 1e-5)
            for b = 1, 2 do
                local c1 = e:new_cache(1, 8)
                local row = {}
                for j = 1, t do row[j] = seqs[b][j] end
                local one = e:forward_cached(nc.tensor({ row }, { dtype = 'i64' }), c1):narrow(1, t - 1, 1)
                assert.is_true(rel_diff(one, step:narrow(0, b - 1, 1)) < 1e-5)
            end
        end
        assert.has_error(function() e:forward_cached(nc.tensor({ { 1 }, { 1 } }, { dtype = 'i64' }), cache) end)
    end)

    -- decode runs every layer in one C call (nc_engine_decode); the op-by-op path (engine.fused =
    -- false) is its reference: same integer GEMVs, norms/attention summed in another order.
    local FUSED_TOL = 1e-5
    it('fused decode (one C call per token) equals the op-by-op path, every cfg variant, B = 1 and 2', function()
        for _, v in ipairs(variants) do
            local m = model_of(v[1], v[2])
            local e = nc.pack(m)
            for _, B in ipairs { 1, 2 } do
                local seqs = {}
                for b = 1, B do
                    seqs[b] = {}
                    for t = 1, 9 do seqs[b][t] = (t * 13 + b * 7) % m.cfg.vocab_size end
                end
                local ca, cb = e:new_cache(B, 16), e:new_cache(B, 16)
                local pre = {}
                for b = 1, B do pre[b] = { seqs[b][1], seqs[b][2], seqs[b][3] } end
                e:forward_cached(nc.tensor(pre, { dtype = 'i64' }), ca)
                e:forward_cached(nc.tensor(pre, { dtype = 'i64' }), cb)
                for t = 4, 9 do
                    local col = {}
                    for b = 1, B do col[b] = { seqs[b][t] } end
                    local idx = nc.tensor(col, { dtype = 'i64' })
                    e.fused = true
                    local lf = e:forward_cached(idx, ca)
                    e.fused = false
                    local lo = e:forward_cached(idx, cb)
                    e.fused = nil
                    local r = rel_diff(lo, lf)
                    assert.is_true(r < FUSED_TOL, string.format('%s B=%d t=%d: %g', v[1], B, t, r))
                    for b = 1, B do
                        assert.is_true(rel_diff(cb.k[1]:narrow(0, b - 1, 1):narrow(1, 0, t),
                            ca.k[1]:narrow(0, b - 1, 1):narrow(1, 0, t)) < FUSED_TOL)
                    end
                end
            end
        end
    end)

    it('the decode head GEMV (nc_engine_head_f32) equals nc.linear; more than 8 rows is an error', function()
        for _, sh in ipairs { { 1, 33, 70 }, { 3, 1000, 256 }, { 8, 17, 5 } } do
            local R, N, K = sh[1], sh[2], sh[3]
            local x, w = nc.randn { R, K }, nc.randn { N, K }
            local y = nc.empty { R, N }
            nc.core.check(nc.C.nc_engine_head_f32(y._c, x._c, w._c), 'engine head')
            assert.is_true(rel_diff(nc.linear(x, w), y) < 1e-6)
        end
        local ok, err = pcall(nc.core.check, nc.C.nc_engine_head_f32(nc.empty({ 9, 4 })._c, nc.randn({ 9, 3 })._c,
            nc.randn({ 4, 3 })._c), 'engine head')
        assert.is_false(ok)
        assert.truthy(tostring(err):find('R <= 8', 1, true), err)
    end)

    it('fused decode rejects a full cache and mismatched shapes with clear errors', function()
        local m = model_of('micro')
        local e = nc.pack(m)
        local cache = e:new_cache(1, 2)
        e:forward_cached(nc.tensor({ { 1, 2 } }, { dtype = 'i64' }), cache)
        local ok, err = pcall(e.forward_cached, e, nc.tensor({ { 3 } }, { dtype = 'i64' }), cache)
        assert.is_false(ok)
        assert.truthy(tostring(err):find('cache full', 1, true), err)
        local x = nc.zeros { 1, 7 }
        ok, err = pcall(nc.core.check, nc.C.nc_engine_decode(x._c, cache.layers_c, 1, require('ffi').new('nc_engine_cfg',
            { d = 32, n_head = 4, n_kv_head = 2, head_dim = 8, d_ff = 128, eps = 1e-6 }), 0, cache.cos._c, cache.sin._c),
            'engine decode')
        assert.is_false(ok)
        assert.truthy(tostring(err):find('x must be (B, 32)', 1, true), err)
    end)

    it('packs a checkpoint dir (model.safetensors + meta.json) to the same logits; bad dirs give clear errors', function()
        local m = model_of('micro')
        local dir = os.tmpname()
        os.remove(dir)
        os.execute('mkdir -p ' .. dir)
        nc.save(dir .. '/model.safetensors', m:state_dict())
        local f = io.open(dir .. '/meta.json', 'w')
        f:write(require('dkjson').encode({ step = 1, model = m:config() }))
        f:close()
        local e1, e2 = nc.pack(m), nc.pack(dir)
        local idx = nc.tensor({ PROMPTS[1] }, { dtype = 'i64' })
        assert.equal(0, (e1:forward(idx) - e2:forward(idx)):abs():max():item())
        local f16 = nc.pack(dir, { head_dtype = 'f16' })
        assert.is_true(rel_diff(e1:forward(idx), f16:forward(idx)) < 1e-2)
        assert.is_true(f16:weight_bytes() < e1:weight_bytes())
        -- int8 head: per-row absmax codes (relative step 1/127 of the row max) and int8 activations
        -- into the head: logits within I8_HEAD_TOL of max |logit|, a quarter of the head bytes
        local I8_HEAD_TOL = 3e-2
        local i8 = nc.pack(dir, { head_dtype = 'i8' })
        local r8 = rel_diff(e1:forward(idx), i8:forward(idx))
        assert.is_true(r8 < I8_HEAD_TOL and r8 > 0, 'int8 head relative logit difference ' .. r8)
        local V, d = m.cfg.vocab_size, m.cfg.d_model
        -- head bytes: f32 4 V d; int8 V kpad(d) (rows padded to the 128-wide activation blocks) + 4 V scales
        assert.equal(e1:weight_bytes() - 4 * V * d + V * nc.infer.kpad(d) + 4 * V, i8:weight_bytes())
        os.execute('rm -rf ' .. dir)
        local ok, err = pcall(nc.pack, dir)
        assert.is_false(ok)
        assert.matches('meta.json', err)
        assert.has_error(function() nc.pack(model_of('micro', { ternary = false })) end)
    end)
end)

-- Stand-in tokenizer (the real one is nc.tokenizer): id < 256 is byte id; 256 + k specials;
-- the decoder holds back incomplete UTF-8 (here: nothing, bytes pass through).
local SPECIALS = { '<|bos|>', '<|user_start|>', '<|user_end|>', '<|assistant_start|>', '<|assistant_end|>' }
local function stand_in()
    local tok = { bos_id = 256 }
    function tok:special(name)
        for k, s in ipairs(SPECIALS) do if s == name then return 255 + k end end
        error('no special ' .. name)
    end
    function tok:decode(ids)
        local out = {}
        for i, id in ipairs(ids) do out[i] = id < 256 and string.char(id) or '' end
        return table.concat(out)
    end
    function tok:encode(s) local o = {} for i = 1, #s do o[i] = s:byte(i) end return o end
    function tok:decoder()
        local t = self
        return { push = function(_, id) return t:decode({ id }) end, flush = function() return '' end }
    end
    function tok:render_chat(msgs)
        local ids, mask = { 256 }, { 0 }
        for _, m in ipairs(msgs) do
            local s = m.role == 'assistant' and 259 or 257
            ids[#ids + 1] = s
            for _, b in ipairs(self:encode(m.content)) do ids[#ids + 1] = b end
            ids[#ids + 1] = s + 1
        end
        for i = #mask + 1, #ids do mask[i] = 0 end
        return ids, mask
    end
    return tok
end

describe('engine: generate / chat plumbing', function()
    it('stream writes exactly the decoded continuation', function()
        local m = model_of('micro', { vocab_size = 261 })
        local e, tok = nc.pack(m), stand_in()
        local out = {}
        local ids = require('nanochat.engine').stream(e, tok, { 256, 102, 110 }, { max_tokens = 12, temperature = 0 },
            function(s) out[#out + 1] = s end)
        assert.equal(12, #ids)
        assert.same(nc.generate.collect(m, { 256, 102, 110 }, { max_tokens = 12, temperature = 0 }), ids)
        assert.equal(tok:decode(ids), table.concat(out))
    end)

    it('chat: commands change the sampling state; a turn records both messages', function()
        local chat = require 'nanochat.cmd.chat'
        local e, tok = nc.pack(model_of('micro', { vocab_size = 261 })), stand_in()
        local state, log = { opts = { temperature = 0.8, top_k = 50, max_tokens = 6 }, messages = {} }, {}
        local function w(s) log[#log + 1] = s end
        assert.is_true(chat.command('/temp 0', state, w))
        assert.equal(0, state.opts.temperature)
        assert.is_true(chat.command('/topk 5', state, w))
        assert.equal(5, state.opts.top_k)
        assert.is_nil(chat.command('hello', state, w))
        local r = chat.turn(e, tok, state, 'hi', w)
        assert.equal(2, #state.messages)
        assert.equal('assistant', state.messages[2].role)
        assert.equal(r, state.messages[2].content)
        chat.command('/reset', state, w)
        assert.equal(0, #state.messages)
        chat.command('/quit', state, w)
        assert.is_true(state.quit)
    end)

    it('a checkpoint without a tokenizer gives a clear error; bad sampling values too', function()
        local E = require 'nanochat.engine'
        local ok, err = pcall(E.tokenizer_for, '/nonexistent-ckpt')
        assert.is_false(ok)
        assert.matches('tokenizer.bin', err)
        assert.has_error(function() E.sample_opts({ temperature = 'hot' }) end)
        assert.same({ temperature = 0.5, top_k = 3 }, E.sample_opts({ temperature = 0.5, top_k = '3' }))
    end)
end)
