-- lua/nanochat/tokenizer.lua — `nc.tokenizer`: byte-level BPE over core/tokenizer.c.
--
-- Promise: the API of INTERFACES.md ("Tokenizer"). Token ids are 0-based integers: 0..255 are
-- bytes, 256.. the merges in rank order, then the special tokens. encode never produces a special
-- token; decode(encode(s)) == s for every byte string s (invalid UTF-8 included). The nc_tok*
-- pointer is owned by exactly one ffi.gc finalizer (in wrap).
--
-- Chat template (render_chat): <|bos|>, then for every message
--   user:       <|user_start|> content <|user_end|>                 (mask 0)
--   assistant:  <|assistant_start|> (mask 0) content <|assistant_end|> (mask 1 on both)
-- A system message is not a turn of its own: its content is prepended to the next user
-- message's content followed by a blank line ("SYSTEM\n\nUSER"); a system message with no user
-- message after it becomes a user message. Assistant content may also be a list of parts
-- { {type='text', text=...}, {type='code', text=...}, {type='output', text=...} }: code is
-- wrapped in <|code_start|>..<|code_end|> (mask 1), tool output in <|output_start|>..<|output_end|>
-- (mask 0: the model does not learn to predict what a tool printed).
local core = require 'nanochat.core'
local Tensor = require 'nanochat.tensor'
local ffi, C = core.ffi, core.C
local bit = require 'bit'

local M = {}
local Tok = {}
Tok.__index = Tok
Tok.__name = 'Tokenizer'
M.Tokenizer = Tok

-- scratch buffers grown on demand (C copies out of them before returning)
local ibuf, ibuf_n = nil, 0
local function ids_buffer(n)
    if n > ibuf_n then
        ibuf_n = math.max(n, 2 * ibuf_n, 4096)
        ibuf = ffi.new('int32_t[?]', ibuf_n)
    end
    return ibuf
end
local nout = ffi.new('int64_t[1]')
local len1 = ffi.new('int32_t[1]')

local function wrap(p, op)
    core.check_ptr(p, op)
    local self = setmetatable({ _c = ffi.gc(p, C.nc_tok_release), _strs = {} }, Tok)
    local bos = C.nc_tok_special_id(p, '<|bos|>')
    self.bos_id = bos >= 0 and bos or nil
    return self
end

function M.is(x) return getmetatable(x) == Tok end
function M.default_pattern() return ffi.string(C.nc_tok_default_pattern()) end
function M.default_specials()
    local t = {}
    for i = 0, C.nc_tok_default_special_count() - 1 do t[#t + 1] = ffi.string(C.nc_tok_default_special(i)) end
    return t
end

local function cstrings(list)
    local n = #list
    local arr = ffi.new('const char *[?]', math.max(n, 1))
    for i = 1, n do arr[i - 1] = list[i] end
    return arr, n
end

local function string_list(list, what)
    if type(list) ~= 'table' then error('tokenizer: ' .. what .. ' must be a list of strings', 3) end
    for i = 1, #list do
        if type(list[i]) ~= 'string' then
            error(string.format('tokenizer: %s[%d] is a %s, expected a string', what, i, type(list[i])), 3)
        end
    end
    return list
end

-- nc.tokenizer.train{ corpus = DIR | {paths}, texts = {...}, vocab = 8192, threads = n,
--   pattern = nil (GPT-4), max_bytes = nil }. corpus: a corpus directory (DIR/train/*.docs), any
-- directory (*.docs, *.rs, *.txt found recursively), a file, or a list of those.
function M.train(opts)
    opts = opts or {}
    local paths = opts.corpus or opts.files or {}
    if type(paths) == 'string' then paths = { paths } end
    string_list(paths, 'corpus')
    local texts = string_list(opts.texts or {}, 'texts')
    if #paths == 0 and #texts == 0 then error('tokenizer.train: give corpus = DIR or texts = {...}', 2) end
    local parr, np = cstrings(paths)
    local tarr, nt = cstrings(texts)
    local lens = ffi.new('int64_t[?]', math.max(nt, 1))
    for i = 1, nt do lens[i - 1] = #texts[i] end
    local vocab = opts.vocab or opts.vocab_size or 8192
    local p = C.nc_tok_new_train(np, parr, nt, tarr, lens, vocab, opts.pattern, opts.threads or 0,
        opts.max_bytes or 0)
    return wrap(p, 'tokenizer.train')
end

-- Build from explicit merges: list of {left, right} (ids); specials default to the 9 standard ones.
function M.from_merges(merges, opts)
    opts = opts or {}
    local n = #merges
    local pairs_ = ffi.new('int32_t[?]', math.max(2 * n, 1))
    for k = 1, n do pairs_[2 * k - 2], pairs_[2 * k - 1] = merges[k][1], merges[k][2] end
    local sp, ns = nil, -1
    if opts.specials then sp, ns = cstrings(string_list(opts.specials, 'specials')) end
    return wrap(C.nc_tok_new_from_merges(opts.pattern, n, pairs_, ns, sp), 'tokenizer.from_merges')
end

function M.load(path)
    if type(path) ~= 'string' then error('tokenizer.load: expected a path, got ' .. type(path), 2) end
    return wrap(C.nc_tok_new_load(path), 'tokenizer.load')
end

function Tok:save(path)
    core.check(C.nc_tok_save(self._c, path), 'tokenizer.save')
    return self
end

function Tok:vocab_size() return C.nc_tok_vocab_size(self._c) end
function Tok:n_merges() return C.nc_tok_n_merges(self._c) end
function Tok:pattern() return ffi.string(C.nc_tok_pattern(self._c)) end
function Tok:hash() return bit.tohex(C.nc_tok_hash(self._c), 16) end

function Tok:special(name)
    local id = C.nc_tok_special_id(self._c, name)
    if id < 0 then error('tokenizer: unknown special token ' .. tostring(name), 2) end
    return id
end

function Tok:specials()
    local t, base = {}, 256 + self:n_merges()
    for i = 0, C.nc_tok_n_specials(self._c) - 1 do t[#t + 1] = self:token(base + i) end
    return t
end

-- the bytes of one token (a special token gives its name)
function Tok:token(id)
    local s = self._strs[id]
    if s then return s end
    local p = C.nc_tok_token_bytes(self._c, id, len1)
    core.check_ptr(p, 'tokenizer.token')
    s = ffi.string(p, len1[0])
    self._strs[id] = s
    return s
end

-- merges in rank order: merges[k] = {left, right} made id 255 + k
function Tok:merges()
    local n = self:n_merges()
    local buf = ffi.new('int32_t[?]', math.max(2 * n, 1))
    core.check(C.nc_tok_get_merges(self._c, buf), 'tokenizer.merges')
    local out = {}
    for k = 1, n do out[k] = { buf[2 * k - 2], buf[2 * k - 1] } end
    return out
end

function Tok:stats()
    local s = ffi.new('nc_tok_stats')
    C.nc_tok_get_stats(self._c, s)
    return { bytes = tonumber(s.bytes), files = tonumber(s.files), spans = tonumber(s.spans),
             pieces = tonumber(s.pieces), unique_pieces = tonumber(s.unique_pieces), threads = s.threads,
             seconds_count = s.seconds_count, seconds_merge = s.seconds_merge }
end

-- string -> Lua array of ids (no BOS)
function Tok:encode(s)
    if type(s) ~= 'string' then error('tokenizer.encode: expected a string, got ' .. type(s), 2) end
    local n = #s
    local buf = ids_buffer(math.max(n, 1))
    core.check(C.nc_tok_encode(self._c, s, n, buf, n, nout), 'tokenizer.encode')
    local out = {}
    for i = 1, tonumber(nout[0]) do out[i] = buf[i - 1] end
    return out
end

-- list of strings -> 1-D i32 Tensor, documents concatenated, each after <|bos|> when opts.bos
function Tok:encode_docs(docs, opts)
    opts = opts or {}
    string_list(docs, 'docs')
    local arr, n = cstrings(docs)
    local lens = ffi.new('int64_t[?]', math.max(n, 1))
    for i = 1, n do lens[i - 1] = #docs[i] end
    local p = C.nc_tok_encode_docs_new(self._c, n, arr, lens, opts.bos and 1 or 0, opts.threads or 0)
    return Tensor.wrap(p, 'tokenizer.encode_docs')
end

-- ids: Lua array or integer Tensor -> string of bytes
function Tok:decode(ids)
    local ptr, n, keep
    if Tensor.is(ids) then
        keep = Tensor.wrap(C.nc_tensor_new_to(ids._c, C.NC_I32, C.NC_CPU), 'tokenizer.decode')
        keep = Tensor.wrap(C.nc_tensor_new_contiguous(keep._c), 'tokenizer.decode')
        n = keep:numel()
        ptr = ffi.cast('const int32_t *', C.nc_tensor_data(keep._c))
    elseif type(ids) == 'table' then
        n = #ids
        ptr = ids_buffer(math.max(n, 1))
        for i = 1, n do
            local v = ids[i]
            if type(v) ~= 'number' then error('tokenizer.decode: ids[' .. i .. '] is not a number', 2) end
            ptr[i - 1] = v
        end
    else
        error('tokenizer.decode: expected a list of ids or a Tensor, got ' .. type(ids), 2)
    end
    core.check(C.nc_tok_decode(self._c, ptr, n, nil, 0, nout), 'tokenizer.decode')
    local need = tonumber(nout[0])
    local out = ffi.new('char[?]', math.max(need, 1))
    core.check(C.nc_tok_decode(self._c, ptr, n, out, need, nout), 'tokenizer.decode')
    local s = ffi.string(out, need)
    if keep then keep = nil end
    return s
end

-- streaming decoder: push(id) returns the text that is complete so far (never half a UTF-8
-- character; bytes that can never become valid UTF-8 are passed through), flush() the rest.
local Decoder = {}
Decoder.__index = Decoder
function Tok:decoder()
    return setmetatable({ tok = self, pending = '' }, Decoder)
end
function Decoder:push(id)
    local s = self.pending .. self.tok:token(id)
    local k = tonumber(C.nc_utf8_complete_len(s, #s))
    self.pending = s:sub(k + 1)
    return s:sub(1, k)
end
function Decoder:flush()
    local s = self.pending
    self.pending = ''
    return s
end

-- 1-D i32 Tensor (vocab): bytes per token, 0 for special tokens (bits-per-byte denominators)
function Tok:token_bytes()
    local t = Tensor.empty({ self:vocab_size() }, 'i32')
    core.check(C.nc_tok_token_lengths(self._c, ffi.cast('int32_t *', C.nc_tensor_data(t._c))), 'tokenizer.token_bytes')
    return t
end

-- messages -> ids, mask (Lua arrays; see the template at the top of this file)
function Tok:render_chat(messages)
    if type(messages) ~= 'table' then error('render_chat: expected a list of messages', 2) end
    local ids, mask = { self:special('<|bos|>') }, { 0 }
    local function add(list, m)
        for i = 1, #list do ids[#ids + 1] = list[i]; mask[#mask + 1] = m end
    end
    local function add_special(name, m) ids[#ids + 1] = self:special(name); mask[#mask + 1] = m end
    local system = nil
    for i, msg in ipairs(messages) do
        local role, content = msg.role, msg.content
        if role == 'system' then
            if type(content) ~= 'string' then error('render_chat: message ' .. i .. ' (system) content must be a string', 2) end
            system = system and (system .. '\n\n' .. content) or content
        elseif role == 'user' then
            if type(content) ~= 'string' then error('render_chat: message ' .. i .. ' (user) content must be a string', 2) end
            if system then content = system .. '\n\n' .. content; system = nil end
            add_special('<|user_start|>', 0)
            add(self:encode(content), 0)
            add_special('<|user_end|>', 0)
        elseif role == 'assistant' then
            if system then
                add_special('<|user_start|>', 0); add(self:encode(system), 0); add_special('<|user_end|>', 0)
                system = nil
            end
            add_special('<|assistant_start|>', 0)
            if type(content) == 'string' then
                add(self:encode(content), 1)
            elseif type(content) == 'table' then
                for j, part in ipairs(content) do
                    local ty, text = part.type, part.text
                    if type(text) ~= 'string' then error(string.format('render_chat: message %d part %d has no text', i, j), 2) end
                    if ty == 'text' then add(self:encode(text), 1)
                    elseif ty == 'code' then
                        add_special('<|code_start|>', 1); add(self:encode(text), 1); add_special('<|code_end|>', 1)
                    elseif ty == 'output' then
                        add_special('<|output_start|>', 0); add(self:encode(text), 0); add_special('<|output_end|>', 0)
                    else
                        error(string.format("render_chat: message %d part %d has type %s (expected 'text', 'code' or 'output')", i, j, tostring(ty)), 2)
                    end
                end
            else
                error('render_chat: message ' .. i .. ' (assistant) content must be a string or a list of parts', 2)
            end
            add_special('<|assistant_end|>', 1)
        else
            error(string.format("render_chat: message %d has role %s (expected 'user', 'assistant' or 'system')", i, tostring(role)), 2)
        end
    end
    if system then
        add_special('<|user_start|>', 0); add(self:encode(system), 0); add_special('<|user_end|>', 0)
    end
    return ids, mask
end

function Tok:__tostring()
    return string.format('Tokenizer(vocab=%d, merges=%d, hash=%s)', self:vocab_size(), self:n_merges(), self:hash())
end

return M
