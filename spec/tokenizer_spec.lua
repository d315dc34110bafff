-- spec/tokenizer_spec.lua — nc.tokenizer (core/tokenizer.c): tiktoken parity and the invalid
-- UTF-8 rule (spec/fixtures/tok_parity.json from tools/gen_tok_fixture.py), training against a
-- naive reference trainer and across thread counts, byte round trips, specials, chat masks,
-- the file format (round trip, corrupt files), streaming decode and token_bytes.
package.path = 'lua/?.lua;lua/?/init.lua;' .. package.path
local nc = require 'nanochat'
local json = require 'dkjson'
local ffi = require 'ffi'

local FIXTURE = 'spec/fixtures/tok_parity.json'
local TOKFILE = 'spec/fixtures/tok_small.tok'

local function read(path)
    local f = assert(io.open(path, 'rb'))
    local s = f:read('*a')
    f:close()
    return s
end
local function write(path, s)
    local f = assert(io.open(path, 'wb'))
    f:write(s)
    f:close()
end

local B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'
local function b64decode(s)
    local val = {}
    for i = 1, 64 do val[B64:sub(i, i)] = i - 1 end
    local out, bits, nbits = {}, 0, 0
    for c in s:gmatch('[%w%+/]') do
        bits = bits * 64 + val[c]
        nbits = nbits + 6
        if nbits >= 8 then
            nbits = nbits - 8
            local b = math.floor(bits / 2 ^ nbits)
            out[#out + 1] = string.char(b)
            bits = bits - b * 2 ^ nbits
        end
    end
    return table.concat(out)
end

local function same_list(a, b, what)
    assert(#a == #b, string.format('%s: %d ids, expected %d', what, #a, #b))
    for i = 1, #a do
        if a[i] ~= b[i] then error(string.format('%s: id %d is %s, expected %s', what, i, tostring(a[i]), tostring(b[i])), 2) end
    end
end

-- deterministic pseudo-random bytes (LCG), no dependence on math.random's implementation
local function rng(seed)
    local s = seed
    return function(n)
        s = (s * 1103515245 + 12345) % 2147483648
        return s % n
    end
end
local function random_bytes(r, n)
    local t = {}
    for i = 1, n do
        local k = r(10)
        if k < 4 then t[i] = string.char(97 + r(26))        -- letters
        elseif k < 5 then t[i] = ({ ' ', '  ', '\n', '\t', '\r\n' })[r(5) + 1]
        elseif k < 6 then t[i] = ({ 'é', '€', '😀', '中', 'ß' })[r(5) + 1]
        else t[i] = string.char(r(256)) end                 -- any byte, invalid UTF-8 included
    end
    return table.concat(t)
end

local FX = json.decode(read(FIXTURE))
local small = nc.tokenizer.load(TOKFILE)

-- a Rust-ish corpus generated here, big enough for a few hundred merges
local function synth_corpus(ndocs)
    local r = rng(7)
    local words = { 'fn', 'let', 'mut', 'impl', 'struct', 'self', 'Self', 'pub', 'use', 'match', 'Some', 'None',
                    'Ok', 'Err', 'return', 'where', 'for', 'in', 'while', 'loop', 'vec', 'String', 'usize', 'u8',
                    'é', 'naïve', '日本', '😀', 'x', 'y', 'value', 'count', 'index', 'len', 'iter', 'map' }
    local seps = { ' ', ' ', ' ', '(', ')', ' {\n    ', ';\n', '::', '.', ', ', ' = ', '\n}\n', '&', '<', '>', ' // ', '\t' }
    local docs = {}
    for d = 1, ndocs do
        local t = {}
        for i = 1, 150 + r(100) do
            t[#t + 1] = words[r(#words) + 1]
            t[#t + 1] = seps[r(#seps) + 1]
            if r(20) == 0 then t[#t + 1] = tostring(r(100000)) end
        end
        docs[d] = table.concat(t)
    end
    return docs
end

describe('tokenizer', function()
    it('matches tiktoken on the fixture texts, and the invalid UTF-8 rule', function()
        assert.are.equal(FX.tokenizer_hash, small:hash())
        assert.are.equal(FX.vocab_size, small:vocab_size())
        local kinds = {}
        for i, c in ipairs(FX.cases) do
            local text = b64decode(c.b64)
            local ids = small:encode(text)
            same_list(ids, c.ids, string.format('case %d (%s)', i, c.kind))
            assert.are.equal(text, small:decode(ids))
            kinds[c.kind] = (kinds[c.kind] or 0) + 1
        end
        assert.is_true(kinds.tiktoken >= 20)
        assert.is_true(kinds['invalid-utf8-rule'] >= 10)
    end)

    it('trains the same merges as the naive reference trainer, on 1 or 2 threads', function()
        local tr = FX.train
        for _, threads in ipairs { 1, 2 } do
            local tok = nc.tokenizer.train { texts = tr.texts, vocab = tr.vocab, threads = threads }
            local m = tok:merges()
            assert.are.equal(#tr.merges, #m)
            for k = 1, #m do
                if m[k][1] ~= tr.merges[k][1] or m[k][2] ~= tr.merges[k][2] then
                    error(string.format('merge %d: (%d, %d), reference (%d, %d)', k, m[k][1], m[k][2],
                        tr.merges[k][1], tr.merges[k][2]))
                end
            end
        end
    end)

    it('training is deterministic across thread counts and input forms', function()
        local docs = synth_corpus(200)
        local a = nc.tokenizer.train { texts = docs, vocab = 700, threads = 1 }
        local b = nc.tokenizer.train { texts = docs, vocab = 700, threads = 2 }
        local c = nc.tokenizer.train { texts = { table.concat(docs, '\0') }, vocab = 700, threads = 2 }
        assert.is_true(a:n_merges() > 300)
        assert.are.equal(a:hash(), b:hash())
        assert.are.equal(a:hash(), c:hash())
        -- a corpus directory: only DIR/train is read, documents NUL-separated
        local dir = os.tmpname()
        os.remove(dir)
        assert(os.execute('mkdir -p ' .. dir .. '/train ' .. dir .. '/val') == 0)
        write(dir .. '/train/part-00000.docs', table.concat(docs, '\0', 1, 100) .. '\0')
        write(dir .. '/train/part-00001.docs', table.concat(docs, '\0', 101, 200) .. '\0')
        write(dir .. '/val/part-00000.docs', string.rep('zzzz qqqq ', 5000) .. '\0')
        local d = nc.tokenizer.train { corpus = dir, vocab = 700, threads = 2 }
        assert.are.equal(a:hash(), d:hash())
        assert.are.equal(2, d:stats().files)   -- val/ is never read
        os.execute('rm -rf ' .. dir)
    end)

    it('round-trips arbitrary bytes, long pieces included, and encode_docs agrees with encode', function()
        local tok = nc.tokenizer.train { texts = synth_corpus(100), vocab = 600 }
        local r = rng(42)
        local docs = {}
        for i = 1, 60 do
            local n = ({ 0, 1, 2, 7, 50, 300, 3000 })[r(7) + 1]
            docs[i] = random_bytes(r, n)
        end
        docs[#docs + 1] = string.rep(' ', 5000) .. string.rep('a', 5000) .. string.rep('\n', 300)
        docs[#docs + 1] = string.rep('\xff\xfe', 700)
        for _, t in ipairs { tok, small } do
            local all = {}
            for i, s in ipairs(docs) do
                local ids = t:encode(s)
                assert(t:decode(ids) == s, 'round trip failed for doc ' .. i)
                for _, id in ipairs(ids) do assert(id >= 0 and id < 256 + t:n_merges()) end
                all[#all + 1] = t.bos_id
                for _, id in ipairs(ids) do all[#all + 1] = id end
            end
            for _, threads in ipairs { 1, 2 } do
                local tens = t:encode_docs(docs, { bos = true, threads = threads })
                assert.are.equal('i32', tens:dtype())
                same_list(tens:tolist(), all, 'encode_docs threads=' .. threads)
                assert(t:decode(tens) == (function()
                    local parts = {}
                    for i, s in ipairs(docs) do parts[i] = '<|bos|>' .. s end
                    return table.concat(parts)
                end)())
            end
            same_list(t:encode_docs(docs):tolist(), (function()
                local x = {}
                for _, id in ipairs(all) do if id ~= t.bos_id then x[#x + 1] = id end end
                return x
            end)(), 'encode_docs without bos')
        end
    end)

    it('never produces special tokens from text', function()
        local names = nc.tokenizer.default_specials()
        assert.are.equal(9, #names)
        local text = table.concat(names, ' ') .. table.concat(names)
        local first_special = 256 + small:n_merges()
        for _, id in ipairs(small:encode(text)) do assert(id < first_special) end
        for i, name in ipairs(names) do
            local id = small:special(name)
            assert.are.equal(first_special + i - 1, id)
            assert.are.equal(name, small:decode { id })
        end
        assert.are.equal(small:special('<|bos|>'), small.bos_id)
        assert.has_error(function() small:special('<|nope|>') end)
    end)

    it('renders chats with a mask on assistant tokens only', function()
        local S = function(n) return small:special(n) end
        local ids, mask = small:render_chat {
            { role = 'system', content = 'Be brief.' },
            { role = 'user', content = 'Hi' },
            { role = 'assistant', content = 'Hello!' },
            { role = 'user', content = 'Code?' },
            { role = 'assistant', content = { { type = 'text', text = 'Run ' }, { type = 'code', text = 'f()' },
                                              { type = 'output', text = '42' }, { type = 'text', text = 'done' } } },
        }
        local want, wmask = { S '<|bos|>' }, { 0 }
        local function add(list, m) for _, id in ipairs(list) do want[#want + 1] = id; wmask[#wmask + 1] = m end end
        add({ S '<|user_start|>' }, 0); add(small:encode('Be brief.\n\nHi'), 0); add({ S '<|user_end|>' }, 0)
        add({ S '<|assistant_start|>' }, 0); add(small:encode('Hello!'), 1); add({ S '<|assistant_end|>' }, 1)
        add({ S '<|user_start|>' }, 0); add(small:encode('Code?'), 0); add({ S '<|user_end|>' }, 0)
        add({ S '<|assistant_start|>' }, 0); add(small:encode('Run '), 1)
        add({ S '<|code_start|>' }, 1); add(small:encode('f()'), 1); add({ S '<|code_end|>' }, 1)
        add({ S '<|output_start|>' }, 0); add(small:encode('42'), 0); add({ S '<|output_end|>' }, 0)
        add(small:encode('done'), 1); add({ S '<|assistant_end|>' }, 1)
        same_list(ids, want, 'chat ids')
        same_list(mask, wmask, 'chat mask')
        assert.has_error(function() small:render_chat { { role = 'robot', content = 'x' } } end)
    end)

    it('saves and loads exactly; corrupt or truncated files give errors naming the file', function()
        local tok = nc.tokenizer.train { texts = synth_corpus(50), vocab = 500 }
        local path = os.tmpname()
        tok:save(path)
        local back = nc.tokenizer.load(path)
        assert.are.equal(tok:hash(), back:hash())
        assert.are.equal(tok:pattern(), back:pattern())
        assert.are.equal(nc.tokenizer.default_pattern(), back:pattern())
        assert.are.same(tok:merges(), back:merges())
        local s = 'fn main() { let é = 5; }\n\xff'
        same_list(back:encode(s), tok:encode(s), 'loaded encode')
        local bytes = read(path)
        local path2 = path .. '.2'
        back:save(path2)
        assert(read(path2) == bytes, 'a re-saved file differs')
        os.remove(path2)
        local function load_err(content)
            write(path, content)
            local ok, err = pcall(nc.tokenizer.load, path)
            assert.is_false(ok)
            assert.is_truthy(err:find(path, 1, true), err)
            return err
        end
        assert.is_truthy(load_err(bytes:sub(1, #bytes - 20)):find('corrupt'))
        load_err(bytes:sub(1, 20))
        load_err('')
        load_err('XXXXXXXX' .. bytes:sub(9))
        local mid = math.floor(#bytes / 2)
        assert.is_truthy(load_err(bytes:sub(1, mid) .. string.char((bytes:byte(mid + 1) + 1) % 256) .. bytes:sub(mid + 2)):find('checksum'))
        os.remove(path)
        local ok, err = pcall(nc.tokenizer.load, '/nonexistent/tok.bin')
        assert.is_false(ok)
        assert.is_truthy(err:find('/nonexistent/tok.bin', 1, true))
    end)

    it('streams decoded text without splitting UTF-8 characters', function()
        local text = 'aé€😀中 x\xffy\xe2\x82z'
        local d = small:decoder()
        local pieces = {}
        for i = 1, #text do   -- byte-level ids: every multi-byte character arrives in pieces
            local out = d:push(text:byte(i))
            pieces[#pieces + 1] = out
        end
        pieces[#pieces + 1] = d:flush()
        assert.are.equal(text, table.concat(pieces))
        -- every emitted chunk (before the invalid bytes) is whole characters
        assert.are.same({ 'a', '', 'é', '', '', '€', '', '', '', '😀', '', '', '中', ' ', 'x', '\xff', 'y', '', '' },
            { unpack(pieces, 1, 19) })
        assert.are.equal('\xe2\x82z', pieces[20])
        -- and with real tokens
        local d2 = small:decoder()
        local s = '日本語 emoji 😀👍🏽 done'
        local out = {}
        for _, id in ipairs(small:encode(s)) do out[#out + 1] = d2:push(id) end
        out[#out + 1] = d2:flush()
        assert.are.equal(s, table.concat(out))
        local C = nc.C
        assert.are.equal(1, tonumber(C.nc_utf8_complete_len('a\xe2', 2)))
        assert.are.equal(2, tonumber(C.nc_utf8_complete_len('a\xc3', 2)) + 1)
        assert.are.equal(3, tonumber(C.nc_utf8_complete_len('a\xe0\x80', 3)))   -- can never be valid
        assert.are.equal(1, tonumber(C.nc_utf8_complete_len('a\xf0\x9f\x98', 4)))
        assert.are.equal(5, tonumber(C.nc_utf8_complete_len('a\xf0\x9f\x98\x80', 5)))
    end)

    it('token_bytes gives byte lengths (0 for specials)', function()
        local tb = small:token_bytes()
        assert.are.equal(small:vocab_size(), tb:numel())
        local lens = tb:tolist()
        for id = 0, small:vocab_size() - 1 do
            local want = id >= 256 + small:n_merges() and 0 or #small:token(id)
            assert.are.equal(want, lens[id + 1])
        end
        local s = 'pub fn len(&self) -> usize { self.n }\n'
        local total = 0
        for _, id in ipairs(small:encode(s)) do total = total + lens[id + 1] end
        assert.are.equal(#s, total)
    end)

    it('rejects bad arguments with clear errors', function()
        assert.has_error(function() nc.tokenizer.train { texts = { 'abc' }, vocab = 100 } end)
        local ok, err = pcall(nc.tokenizer.train, { corpus = '/nonexistent/corpus', vocab = 300 })
        assert.is_false(ok)
        assert.is_truthy(err:find('/nonexistent/corpus', 1, true))
        ok, err = pcall(nc.tokenizer.train, { texts = { '' }, vocab = 300 })
        assert.is_false(ok)
        assert.is_truthy(err:find('no training text'))
        ok, err = pcall(function() return small:decode { 1, 99999 } end)
        assert.is_false(ok)
        assert.is_truthy(err:find('99999'))
        ok, err = pcall(nc.tokenizer.train, { texts = { 'abc' }, vocab = 300, pattern = '(' })
        assert.is_false(ok)
        assert.is_truthy(err:find('pattern'))
        -- a tiny corpus runs out of pairs: fewer merges, never an error
        local t = nc.tokenizer.train { texts = { 'ab' }, vocab = 1000 }
        assert.are.equal(1, t:n_merges())
        assert.are.equal(256 + 1 + 9, t:vocab_size())
    end)
end)
