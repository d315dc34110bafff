-- spec/models/generate_spec.lua — nc.generate: each filtering rule on hand-made logits, seeded
-- determinism, greedy = argmax of the full forward, top_k = 1 = greedy, stop tokens, stop strings
-- (with a stand-in tokenizer), chat prompts through render_chat, and the length limits.
package.path = 'lua/?.lua;lua/?/init.lua;' .. package.path
local nc = require 'nanochat'
local G = nc.generate

local EPS = 1e-12   -- probabilities computed in double on hand-made logits

local function micro(over)
    local cfg = nc.models.config('micro', { head_std = 0.3 })   -- a peaked head: greedy is well defined
    for k, v in pairs(over or {}) do cfg[k] = v end
    return nc.models.gpt.new(cfg)
end

-- Stand-in tokenizer (the real one comes from nc.tokenizer): id i < 256 decodes to byte i; 256 + k
-- are specials; render_chat wraps each message in <|role_start|> content-bytes <|role_end|>.
local SPECIALS = { '<|bos|>', '<|user_start|>', '<|user_end|>', '<|assistant_start|>', '<|assistant_end|>' }
local function stand_in_tokenizer()
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
    function tok:encode(s)
        local out = {}
        for i = 1, #s do out[i] = s:byte(i) end
        return out
    end
    function tok:render_chat(messages)
        local ids, mask = { self.bos_id }, { 0 }
        for _, m in ipairs(messages) do
            local start = self:special('<|' .. m.role .. '_start|>')
            local stop = self:special('<|' .. m.role .. '_end|>')
            local a = m.role == 'assistant' and 1 or 0
            ids[#ids + 1], mask[#mask + 1] = start, 0
            for _, b in ipairs(self:encode(m.content)) do ids[#ids + 1], mask[#mask + 1] = b, a end
            ids[#ids + 1], mask[#mask + 1] = stop, a
        end
        return ids, mask
    end
    return tok
end

describe('nc.generate filtering rules (hand-made logits)', function()
    it('softmax with temperature', function()
        local p = G.softmax({ 0, math.log(3) }, 1)
        assert.is_true(math.abs(p[1] - 0.25) < EPS and math.abs(p[2] - 0.75) < EPS)
        local q = G.softmax({ 0, math.log(3) }, 0.5)   -- logits doubled: 1 : 9
        assert.is_true(math.abs(q[2] - 0.9) < EPS)
    end)

    it('repetition penalty divides positive and multiplies negative logits of seen ids, once each', function()
        local l = G.repetition_penalty({ 2, -2, 3, 1 }, { 0, 1, 1, 0 }, 2)
        assert.are.same({ 1, -4, 3, 1 }, l)
        assert.are.same({ 2, -2 }, G.repetition_penalty({ 2, -2 }, { 0, 1 }, 1))
        assert.has_error(function() G.repetition_penalty({ 1 }, { 0 }, 0) end)
    end)

    it('top_k keeps the k most probable (ties by lower id)', function()
        assert.are.same({ 0, 0.4, 0.3, 0 }, G.top_k({ 0.1, 0.4, 0.3, 0.2 }, 2))
        assert.are.same({ 0.25, 0.25, 0, 0 }, G.top_k({ 0.25, 0.25, 0.25, 0.25 }, 2))
        assert.are.same({ 0.1, 0.9 }, G.top_k({ 0.1, 0.9 }, 0))
        -- the one-pass selection against a full sort, on random probabilities with many ties
        local g = nc.generator(17)
        local r = nc.rand({ 500 }, { lo = 0, hi = 20, generator = g }):tolist()
        for i = 1, #r do r[i] = math.floor(r[i]) / 20 end
        for _, k in ipairs { 1, 3, 37, 499 } do
            local got = G.top_k({ unpack(r) }, k)
            local idx = {}
            for i = 1, #r do if r[i] > 0 then idx[#idx + 1] = i end end
            table.sort(idx, function(a, b) if r[a] ~= r[b] then return r[a] > r[b] end return a < b end)
            local want = {}
            for i = 1, #r do want[i] = 0 end
            for j = 1, math.min(k, #idx) do want[idx[j]] = r[idx[j]] end
            assert.are.same(want, got, 'k = ' .. k)
        end
    end)

    it('top_p keeps the shortest prefix by probability whose mass reaches p', function()
        assert.are.same({ 0, 0.5, 0.3, 0 }, G.top_p({ 0.05, 0.5, 0.3, 0.15 }, 0.8))
        assert.are.same({ 0, 0.5, 0.3, 0.15 }, G.top_p({ 0.05, 0.5, 0.3, 0.15 }, 0.81))
        assert.are.same({ 0, 0.5, 0, 0 }, G.top_p({ 0.05, 0.5, 0.3, 0.15 }, 0.1))   -- at least one
        assert.are.same({ 0.05, 0.5, 0.3, 0.15 }, G.top_p({ 0.05, 0.5, 0.3, 0.15 }, 1))
    end)

    it('min_p drops ids below min_p times the top probability', function()
        assert.are.same({ 0, 0.5, 0.3, 0.15 }, G.min_p({ 0.05, 0.5, 0.3, 0.15 }, 0.2))
        assert.are.same({ 0, 0.5, 0.3, 0 }, G.min_p({ 0.05, 0.5, 0.3, 0.15 }, 0.31))
    end)

    it('pick draws by cumulative mass in id order; next_token runs the documented pipeline', function()
        local probs = { 0.2, 0, 0.5, 0.3 }
        assert.are.equal(0, G.pick(probs, 0))
        assert.are.equal(0, G.pick(probs, 0.199))
        assert.are.equal(2, G.pick(probs, 0.2))
        assert.are.equal(3, G.pick(probs, 0.999))
        assert.has_error(function() G.pick({ 0, 0 }, 0.5) end, 'generate: every token was filtered out')
        -- penalty demotes id 2, greedy then picks id 1
        assert.are.equal(1, G.next_token({ 0, 1.5, 2, -1 }, { temperature = 0, repetition_penalty = 2 }, { 2 }))
        -- top_k = 2 leaves ids 1, 2; u = 0.99 must land on the larger of them after renormalization
        local draws = 0
        local id = G.next_token({ 0, 1.5, 2, -1 }, { temperature = 1, top_k = 2 }, {}, function() draws = draws + 1; return 0.99 end)
        assert.are.equal(2, id)
        assert.are.equal(1, draws)
        -- greedy never draws
        G.next_token({ 0, 1 }, { temperature = 0 }, {}, function() error('drew') end)
    end)
end)

describe('nc.generate with a model', function()
    local model = micro()
    local prompt = { 10, 20, 30, 40 }

    it('is a pull iterator and is deterministic for a seed', function()
        local it = nc.generate(model, prompt, { max_tokens = 5, seed = 3 })
        assert.are.equal('function', type(it))
        local first = it()
        assert.is_true(first >= 0 and first < 256)
        local opts = { max_tokens = 24, temperature = 1.0, top_k = 40, top_p = 0.95, min_p = 0.01, seed = 11 }
        local a = G.collect(model, prompt, opts)
        local b = G.collect(model, prompt, opts)
        assert.are.equal(24, #a)
        assert.are.same(a, b)
        local c = G.collect(model, prompt, { max_tokens = 24, temperature = 1.0, top_k = 40, top_p = 0.95, min_p = 0.01, seed = 12 })
        assert.are_not.same(a, c)
        assert.are.same(a, G.collect(model, nc.tensor(prompt, { dtype = 'i64' }), opts))   -- a tensor prompt
    end)

    it('greedy (temperature 0) is the argmax of the full forward at every step; top_k = 1 equals it', function()
        local ids = G.collect(model, prompt, { max_tokens = 16, temperature = 0 })
        assert.are.equal(16, #ids)
        local seq = {}
        for _, v in ipairs(prompt) do seq[#seq + 1] = v end
        for _, v in ipairs(ids) do seq[#seq + 1] = v end
        local logits = model:forward(nc.tensor({ seq }, { dtype = 'i64' }))
        local am = nc.argmax(logits, -1):tolist()
        for i, id in ipairs(ids) do
            assert.are.equal(am[#prompt + i - 1], id, 'step ' .. i)
        end
        assert.are.same(ids, G.collect(model, prompt, { max_tokens = 16, temperature = 0.7, top_k = 1, seed = 5 }))
    end)

    it('stops at a stop token without yielding it', function()
        local ids = G.collect(model, prompt, { max_tokens = 16, temperature = 0 })
        local stop = ids[5]
        local first = 5
        for i = 1, 5 do if ids[i] == stop then first = i; break end end
        local got = G.collect(model, prompt, { max_tokens = 16, temperature = 0, stop_tokens = { 999, stop } })
        assert.are.same({ unpack(ids, 1, first - 1) }, got)
    end)

    it('stops at a stop string, yielding only the tokens entirely before it', function()
        local tok = stand_in_tokenizer()
        local ids = G.collect(model, prompt, { max_tokens = 16, temperature = 0 })
        -- a stop string made of the tail of token 6's byte and token 7's byte
        local stop = tok:decode { ids[6], ids[7] }
        local got = G.collect(model, prompt, { max_tokens = 16, temperature = 0, tokenizer = tok, stop_strings = { stop } })
        local text = tok:decode(ids)
        local p = text:find(stop, 1, true)
        assert.are.same({ unpack(ids, 1, p - 1) }, got)
        -- a string that never occurs: everything comes out, held-back tokens included
        local all = G.collect(model, prompt, { max_tokens = 16, temperature = 0, tokenizer = tok,
                                               stop_strings = { tok:decode { ids[16] } .. '\0never' } })
        assert.are.same(ids, all)
        assert.has_error(function() nc.generate(model, prompt, { stop_strings = { 'x' } }) end,
            'generate: stop_strings need opts.tokenizer (to decode tokens)')
    end)

    it('builds chat prompts with render_chat + <|assistant_start|> and stops at <|assistant_end|>', function()
        local tok = stand_in_tokenizer()
        local model = micro { vocab_size = 264 }   -- room for the stand-in specials (256..260)
        local messages = { { role = 'user', content = 'fn main() {' } }
        local ids = tok:render_chat(messages)
        ids[#ids + 1] = tok:special('<|assistant_start|>')
        local want = G.collect(model, ids, { max_tokens = 8, temperature = 0 })
        local got = G.collect(model, nil, { max_tokens = 8, temperature = 0, messages = messages, tokenizer = tok })
        local cut = #want
        for i, id in ipairs(want) do if id == tok:special('<|assistant_end|>') then cut = i - 1; break end end
        assert.are.same({ unpack(want, 1, cut) }, got)
        -- with a scripted stand-in model: the exact prompt fed, and the stop at <|assistant_end|>
        local script, fed = { 104, 105, 260, 33 }, {}
        local stub = { cfg = { seq_len = 64 } }
        function stub:new_cache(B, max_T) return { pos = 0, max_T = max_T } end
        function stub:forward_cached(idx, cache)
            local T = idx:size(1)
            for _, v in ipairs(idx:tolist()) do fed[#fed + 1] = v end
            cache.pos = cache.pos + T
            local logits = nc.zeros { 1, T, 264 }
            logits:set(0, T - 1, script[cache.pos - #ids + 1], 10)
            return logits
        end
        assert.are.same({ 104, 105 }, G.collect(stub, nil, { temperature = 0, messages = messages, tokenizer = tok }))
        assert.are.same(ids, { unpack(fed, 1, #ids) })
        assert.are.same({ 104, 105 }, { unpack(fed, #ids + 1) })
        assert.has_error(function() nc.generate(model, nil, { messages = messages }) end,
            'generate: opts.messages needs opts.tokenizer (render_chat)')
    end)

    it('respects max_tokens and the context length; rejects bad prompts', function()
        assert.are.equal(3, #G.collect(model, prompt, { max_tokens = 3 }))
        -- seq_len 32: a 30-token prompt leaves room for 3 new tokens (the last needs no slot)
        local long = {}
        for i = 1, 30 do long[i] = i end
        assert.are.equal(3, #G.collect(model, long, { max_tokens = 10, temperature = 0 }))
        for i = 31, 33 do long[i] = i end
        assert.has_error(function() nc.generate(model, long, {}) end,
            'generate: the prompt has 33 tokens, more than the context of 32')
        assert.has_error(function() nc.generate(model, {}, {}) end)
        assert.has_error(function() nc.generate(model, { 1.5 }, {}) end, 'generate: prompt entry 1 is not a token id: 1.5')
    end)
end)
