-- lua/nanochat/data.lua — nc.data: token shards, the background batch loader, corpus tokenization.
--
-- Promise:
--  - write_shard / read_shard / read_header wrap core/shards.c (format: README "Data: shards and
--    loader" and the top of core/shards.c); every error names the file.
--  - shards(dir, split) lists DIR/<split>_NNNNN.shard in sorted order.
--  - loader{...} returns a pull-style loader over core/loader.c: L:next() -> x, y (B, T) i64 CPU
--    tensors (y is x shifted by one, both from one [B, T+1] block). Batch k depends only on
--    (shards, B, T, sampling, seed, k), so L:state() is the cursor k (+ what identifies the
--    stream) and L:set_state(st) makes the loader continue exactly where st was taken.
--    The C loader is freed by L:close() or by the garbage collector (ffi.gc), never twice.
--  - tokenize_corpus{corpus=, tok=, out=} turns a corpus directory (INTERFACES.md layout) into
--    train/val shards + info.json with any tokenizer object offering encode_docs, hash,
--    vocab_size and bos_id.
local core = require 'nanochat.core'
local Tensor = require 'nanochat.tensor'
local ffi, C = core.ffi, core.C

local M = {}

local DEFAULT_SHARD_TOKENS = 2 ^ 21     -- 2M tokens: 4 MB of u16 ids per shard
local DEFAULT_LEVEL = 3                 -- zstd level: ~3x smaller than raw u16 ids at >200 MB/s

-- ---- small helpers -------------------------------------------------------------------------
local function u64_hex(v)
    return string.format('%08x%08x', tonumber(v / 4294967296ULL), tonumber(v % 4294967296ULL))
end

local function header_table(info)
    return {
        version = tonumber(info.version),
        token_bytes = tonumber(info.token_bytes),
        count = tonumber(info.count),
        docs = tonumber(info.docs),
        bos_id = tonumber(info.bos_id),
        vocab = tonumber(info.vocab),
        tok_hash = ffi.string(info.tok_hash),
        checksum = u64_hex(info.checksum),
        compressed_bytes = tonumber(info.compressed_bytes),
        file_bytes = tonumber(info.file_bytes),
    }
end

local function check_hash_arg(h, op)
    if h == nil or h == '' then return nil end
    if type(h) ~= 'string' or not h:match('^[0-9a-f]+$') or #h ~= 16 then
        error(op .. ': tok_hash must be 16 lowercase hex digits, got ' .. tostring(h), 3)
    end
    return h
end

-- a 1-D contiguous i32 CPU tensor from a tensor or a Lua array of ids
local function as_i32(ids, op)
    if type(ids) == 'table' and not Tensor.is(ids) then ids = Tensor.from_table(ids, 'i32') end
    if not Tensor.is(ids) then error(op .. ': ids must be a 1-D integer tensor or a Lua array, got ' .. type(ids), 3) end
    if ids:dim() ~= 1 then error(op .. ': ids must be 1-D, got ' .. ids:dim() .. ' dims', 3) end
    if ids:dtype() ~= 'i32' or ids:device() ~= 'cpu' then ids = ids:to('i32', 'cpu') end
    return ids:contiguous()
end

local lfs_ok, lfs = pcall(require, 'lfs')

local function list_dir(dir)
    local names = {}
    if lfs_ok then
        local ok, iter, state = pcall(lfs.dir, dir)
        if not ok then return nil, tostring(iter) end
        for name in iter, state do names[#names + 1] = name end
    else
        local p = io.popen("ls -1a '" .. dir:gsub("'", "'\\''") .. "' 2>/dev/null")
        for name in p:lines() do names[#names + 1] = name end
        p:close()
        if #names == 0 then return nil, 'cannot read directory' end
    end
    return names
end

local function is_dir(path)
    if lfs_ok then return lfs.attributes(path, 'mode') == 'directory' end
    local r = os.execute("test -d '" .. path:gsub("'", "'\\''") .. "'")
    return r == 0 or r == true
end

local function mkdir_p(path)
    if is_dir(path) then return end
    if lfs_ok then
        local parent = path:match('^(.*)/[^/]+/*$')
        if parent and parent ~= '' then mkdir_p(parent) end
        lfs.mkdir(path)
    else
        os.execute("mkdir -p '" .. path:gsub("'", "'\\''") .. "'")
    end
    if not is_dir(path) then error('tokenize: cannot create directory ' .. path, 0) end
end

local function sorted_matching(dir, pattern)
    local names, err = list_dir(dir)
    if not names then return nil, err end
    local out = {}
    for _, n in ipairs(names) do
        if n:match(pattern) then out[#out + 1] = dir .. '/' .. n end
    end
    table.sort(out)
    return out
end

-- ---- shards --------------------------------------------------------------------------------
-- nc.data.write_shard(path, ids, {tok_hash=, vocab=, bos_id=, token_bytes=, level=}) -> header
-- u16 ids when vocab <= 65536 (without vocab: when every id < 65536), else u32.
function M.write_shard(path, ids, opts)
    opts = opts or {}
    if type(path) ~= 'string' or path == '' then error('nc.data.write_shard: expected a file path, got ' .. tostring(path), 2) end
    ids = as_i32(ids, 'nc.data.write_shard')
    local vocab = opts.vocab or 0
    local tb = opts.token_bytes
    if not tb then
        if vocab > 0 then
            tb = vocab <= 65536 and 2 or 4
        else
            local n, p, mx = ids:numel(), ffi.cast('const int32_t *', C.nc_tensor_data(ids._c)), 0
            for i = 0, n - 1 do if p[i] > mx then mx = p[i] end end
            tb = mx < 65536 and 2 or 4
        end
    end
    local hash = check_hash_arg(opts.tok_hash, 'nc.data.write_shard')
    core.check(C.nc_shard_write(path, ids._c, tb, vocab, opts.bos_id or -1, hash, opts.level or DEFAULT_LEVEL),
        'nc.data.write_shard')
    return M.read_header(path)
end

-- nc.data.read_header(path) -> header table (validated against the file size; no payload read)
function M.read_header(path)
    local info = ffi.new('nc_shard_info')
    core.check(C.nc_shard_read_info(path, info), 'nc.data.read_header')
    return header_table(info)
end

-- nc.data.read_shard(path [, tok_hash]) -> 1-D i32 tensor, header table. With tok_hash (or
-- {tok_hash = ...}) a shard written by another tokenizer is an error.
function M.read_shard(path, expect)
    if type(expect) == 'table' then expect = expect.tok_hash end
    expect = check_hash_arg(expect, 'nc.data.read_shard')
    if type(path) ~= 'string' then error('nc.data.read_shard: expected a file path, got ' .. tostring(path), 2) end
    local info = ffi.new('nc_shard_info')
    local t = Tensor.wrap(C.nc_shard_read_new(path, expect, info), 'nc.data.read_shard')
    return t, header_table(info)
end

-- nc.data.shards(dir, split) -> sorted list of DIR/<split>_NNNNN.shard paths (may be empty)
function M.shards(dir, split)
    split = split or 'train'
    if type(dir) ~= 'string' then error('nc.data.shards: expected a directory, got ' .. tostring(dir), 2) end
    if type(split) ~= 'string' or not split:match('^[%w_%-]+$') then
        error("nc.data.shards: split must be a name like 'train' or 'val', got " .. tostring(split), 2)
    end
    dir = dir:gsub('/+$', '')
    if dir == '' then dir = '/' end
    local out, err = sorted_matching(dir, '^' .. split:gsub('%-', '%%-') .. '_%d+%.shard$')
    if not out then error('nc.data.shards: cannot read directory ' .. dir .. ': ' .. tostring(err), 2) end
    return out
end

-- nc.data.info(dir) -> the decoded OUT/info.json written by tokenize_corpus (tok_hash, vocab,
-- bos_id, splits = {train = {docs, bytes, tokens, shards}, val = ...}), or nil + message.
function M.info(dir)
    local path = tostring(dir):gsub('/+$', '') .. '/info.json'
    local f = io.open(path, 'rb')
    if not f then return nil, 'nc.data.info: no ' .. path end
    local text = f:read('*a')
    f:close()
    local obj = require('dkjson').decode(text)
    if type(obj) ~= 'table' then error('nc.data.info: ' .. path .. ' is not a JSON object', 2) end
    return obj
end

-- ---- loader --------------------------------------------------------------------------------
local SAMPLING = { random = C.NC_SAMPLE_RANDOM, doc = C.NC_SAMPLE_DOC, sequential = C.NC_SAMPLE_SEQUENTIAL }
local STATE_VERSION = 1

local Loader = {}
Loader.__index = Loader

local function int_opt(v, name, lo, hi)
    if type(v) ~= 'number' or v ~= math.floor(v) or v < lo or v > hi then
        error(string.format('nc.data.loader: %s must be an integer in [%d, %d], got %s', name, lo, hi, tostring(v)), 3)
    end
    return v
end

-- nc.data.loader{ shards = list_or_dir, split = 'train', B = 8, T = 256, seed = 1, threads = 1,
--   sampling = 'random'|'doc'|'sequential', loop = true, tok_hash = nil, prefetch = 4,
--   cache_mb = 1024, bos_id = nil }
function M.loader(opts)
    opts = opts or {}
    local split = opts.split or 'train'
    local list = opts.shards
    local where
    if type(list) == 'string' then
        where = list
        list = M.shards(list, split)
    elseif type(list) ~= 'table' then
        error('nc.data.loader: shards must be a list of shard paths or a directory, got ' .. tostring(list), 2)
    end
    if #list == 0 then
        error('nc.data.loader: no shards' .. (where and (': ' .. where .. ' has no ' .. split .. '_*.shard files')
            or ' (empty shard list)'), 2)
    end
    local sampling = opts.sampling or 'random'
    if not SAMPLING[sampling] then
        error("nc.data.loader: sampling must be 'random', 'doc' or 'sequential', got " .. tostring(sampling), 2)
    end
    local B = int_opt(opts.B or 8, 'B', 1, 2 ^ 20)
    local T = int_opt(opts.T or 256, 'T', 1, 2 ^ 24)
    local seed = int_opt(opts.seed or 1, 'seed', 0, 2 ^ 53)
    local threads = int_opt(opts.threads or 1, 'threads', 1, 64)
    local prefetch = int_opt(opts.prefetch or 4, 'prefetch', 1, 1024)
    local hash = check_hash_arg(opts.tok_hash, 'nc.data.loader')
    local loop = opts.loop
    if loop == nil then loop = true end

    local n = #list
    local cpaths = ffi.new('const char *[?]', n)
    for i = 1, n do
        if type(list[i]) ~= 'string' then error('nc.data.loader: shard ' .. i .. ' is not a path: ' .. tostring(list[i]), 2) end
        cpaths[i - 1] = list[i]
    end
    local o = ffi.new('nc_loader_opts')
    o.B, o.T, o.seed = B, T, seed
    o.sampling = SAMPLING[sampling]
    o.loop = loop and 1 or 0
    o.threads, o.prefetch = threads, prefetch
    o.cache_bytes = (opts.cache_mb or 1024) * 1048576
    o.bos_id = opts.bos_id or -1
    o.tok_hash = hash
    local p = C.nc_loader_new(n, cpaths, o)
    core.check_ptr(p, 'nc.data.loader')
    local self = setmetatable({
        _p = ffi.gc(p, C.nc_loader_free),
        B = B, T = T, seed = seed, sampling = sampling, loop = loop, threads = threads,
        shards = { unpack(list) },
        _rows = ffi.new('int64_t[1]'),
        _stats = ffi.new('nc_loader_stats'),
    }, Loader)
    local st = self:stats()
    self.total_tokens, self.positions = st.total_tokens, st.positions
    self.tok_hash = hash or M.read_header(list[1]).tok_hash
    return self
end

local function live(self, what)
    if self._p == nil then error('nc.data.loader: ' .. what .. ' on a closed loader', 3) end
    return self._p
end

-- x, y: (B, T) i64; nil at the end of a sequential pass with loop = false (the last batch of
-- such a pass may have fewer than B rows).
function Loader:next()
    local p = live(self, 'next')
    local x = Tensor.empty({ self.B, self.T }, 'i64')
    local y = Tensor.empty({ self.B, self.T }, 'i64')
    core.check(C.nc_loader_next(p, x._c, y._c, self._rows), 'nc.data.loader')
    local rows = tonumber(self._rows[0])
    if rows == 0 then return nil end
    if rows < self.B then x, y = x:narrow(0, 0, rows), y:narrow(0, 0, rows) end
    return x, y
end

-- for x, y in L:batches() do ... end
function Loader:batches()
    return function() return self:next() end
end

function Loader:stats()
    C.nc_loader_get_stats(live(self, 'stats'), self._stats)
    local s = self._stats
    return {
        wait_seconds = tonumber(s.wait_seconds), cursor = tonumber(s.cursor),
        batches_total = tonumber(s.batches_total) >= 0 and tonumber(s.batches_total) or nil,
        batches_made = tonumber(s.batches_made), shard_loads = tonumber(s.shard_loads),
        cache_bytes = tonumber(s.cache_bytes), total_tokens = tonumber(s.total_tokens),
        positions = tonumber(s.positions), n_shards = tonumber(s.n_shards), threads = tonumber(s.threads),
    }
end

function Loader:wait_seconds() return self:stats().wait_seconds end

-- batches in one pass (sequential with loop = false), else nil (endless)
function Loader:num_batches() return self:stats().batches_total end

-- Plain JSON-able table: the cursor (index of the next batch) plus what identifies the stream.
function Loader:state()
    local st = self:stats()
    return {
        version = STATE_VERSION, cursor = st.cursor, seed = self.seed, sampling = self.sampling,
        B = self.B, T = self.T, total_tokens = st.total_tokens, n_shards = st.n_shards,
        tok_hash = self.tok_hash,
    }
end

function Loader:set_state(st)
    local p = live(self, 'set_state')
    if type(st) ~= 'table' then error('nc.data.loader:set_state: expected a state table, got ' .. type(st), 2) end
    if st.version ~= STATE_VERSION then
        error('nc.data.loader:set_state: state version ' .. tostring(st.version) .. ' is not ' .. STATE_VERSION, 2)
    end
    for _, k in ipairs { 'sampling', 'B', 'T', 'total_tokens', 'n_shards' } do
        local mine = k == 'total_tokens' and self.total_tokens or k == 'n_shards' and #self.shards or self[k]
        if st[k] ~= mine then
            error(string.format('nc.data.loader:set_state: the state was saved with %s = %s but this loader has %s = %s '
                .. '(same shards, B, T and sampling are needed to resume exactly)', k, tostring(st[k]), k, tostring(mine)), 2)
        end
    end
    if st.tok_hash and st.tok_hash ~= '' and self.tok_hash ~= '' and st.tok_hash ~= self.tok_hash then
        error('nc.data.loader:set_state: the state was saved with tokenizer ' .. st.tok_hash .. ' but the shards have '
            .. self.tok_hash, 2)
    end
    local cursor = int_opt(st.cursor, 'state.cursor', 0, 2 ^ 53)
    local seed = int_opt(st.seed, 'state.seed', 0, 2 ^ 53)
    core.check(C.nc_loader_seek(p, cursor, seed), 'nc.data.loader:set_state')
    self.seed = seed
end

-- Stops and joins the producer threads and frees the C loader (idempotent).
function Loader:close()
    if self._p ~= nil then
        local p = self._p
        self._p = nil
        C.nc_loader_free(ffi.gc(p, nil))
    end
end

M.Loader = Loader

-- ---- corpus tokenization -------------------------------------------------------------------
local function read_file(path)
    local s, err = require('nanochat.io').read_file(path)
    if not s then error('tokenize: cannot open ' .. path .. ': ' .. tostring(err), 0) end
    return s
end

-- documents of one part file (NUL-terminated; empty documents skipped)
local function part_docs(path)
    local s = read_file(path)
    if #s > 0 and s:byte(#s) ~= 0 then
        error('tokenize: ' .. path .. ' does not end with a NUL byte (truncated part file?)', 0)
    end
    local docs, bytes = {}, 0
    for d in s:gmatch('([^%z]*)%z') do
        if #d > 0 then
            docs[#docs + 1] = d
            bytes = bytes + #d
        end
    end
    return docs, bytes
end

-- A growable i32 token buffer that writes a shard whenever it holds shard_tokens ids, cutting
-- at the last BOS so every shard but a giant document's continuation starts with BOS.
local function shard_writer(out, split, o)
    local cap = o.shard_tokens * 2
    local buf = Tensor.empty({ cap }, 'i32')
    local ptr = ffi.cast('int32_t *', C.nc_tensor_data(buf._c))
    local n, index = 0, 0
    local w = { shards = 0, tokens = 0, added = 0 }
    local function flush(len)
        local path = string.format('%s/%s_%05d.shard', out, split, index)
        index = index + 1
        M.write_shard(path, buf:narrow(0, 0, len), { tok_hash = o.tok_hash, vocab = o.vocab, bos_id = o.bos_id, level = o.level })
        w.shards, w.tokens = w.shards + 1, w.tokens + len
        n = n - len
        if n > 0 then ffi.C.memmove(ptr, ptr + len, n * 4) end
    end
    function w.add(ids)
        local m = ids:numel()
        w.added = w.added + m
        local src = ffi.cast('const int32_t *', C.nc_tensor_data(ids._c))
        local done = 0
        while done < m do
            local take = math.min(m - done, cap - n)
            ffi.copy(ptr + n, src + done, take * 4)
            n, done = n + take, done + take
            -- strictly more than shard_tokens: ptr[shard_tokens] exists, so a cut there is
            -- known to start the next shard with BOS or not
            while n > o.shard_tokens do
                local p = o.shard_tokens
                while p > 0 and ptr[p] ~= o.bos_id do p = p - 1 end
                flush(p > 0 and p or o.shard_tokens)
            end
        end
    end
    function w.finish()
        if n > 0 then flush(n) end
        return w
    end
    return w
end
pcall(ffi.cdef, 'void *memmove(void *dst, const void *src, size_t n);')

local function remove_old_shards(out, split)
    for _, path in ipairs(sorted_matching(out, '^' .. split .. '_%d+%.shard$') or {}) do os.remove(path) end
end

-- nc.data.tokenize_corpus{ corpus = DIR, tok = tokenizer object, out = DIR, threads = 2,
--   shard_tokens = 2^21, level = 3, progress = function(msg) end } -> info table (also written
-- to OUT/info.json). Shards: OUT/train_NNNNN.shard, OUT/val_NNNNN.shard.
function M.tokenize_corpus(opts)
    opts = opts or {}
    local corpus, tok, out = opts.corpus, opts.tok, opts.out
    if type(corpus) ~= 'string' then error('tokenize: corpus must be a directory path, got ' .. tostring(corpus), 2) end
    if type(out) ~= 'string' then error('tokenize: out must be a directory path, got ' .. tostring(out), 2) end
    if type(tok) ~= 'table' and type(tok) ~= 'userdata' or not tok.encode_docs then
        error('tokenize: tok must be a tokenizer object (with encode_docs, hash, vocab_size, bos_id)', 2)
    end
    corpus = corpus:gsub('/+$', '')
    if not is_dir(corpus) then error('tokenize: corpus directory ' .. corpus .. ' does not exist', 2) end
    local threads = opts.threads or 2
    local progress = opts.progress or function() end
    local o = {
        shard_tokens = int_opt(opts.shard_tokens or DEFAULT_SHARD_TOKENS, 'shard_tokens', 2, 2 ^ 31),
        tok_hash = tok:hash(), vocab = tok:vocab_size(), bos_id = tok.bos_id, level = opts.level or DEFAULT_LEVEL,
    }
    if type(o.bos_id) ~= 'number' then error('tokenize: the tokenizer has no bos_id', 2) end
    local parts = {}
    for _, split in ipairs { 'train', 'val' } do
        parts[split] = sorted_matching(corpus .. '/' .. split, '^part%-%d+%.docs$') or {}
    end
    if #parts.train == 0 then
        error('tokenize: corpus ' .. corpus .. ' has no documents: no ' .. corpus .. '/train/part-*.docs files', 2)
    end
    mkdir_p(out)
    local info = {
        version = 1, tok_hash = o.tok_hash, vocab = o.vocab, bos_id = o.bos_id, shard_tokens = o.shard_tokens,
        token_bytes = o.vocab <= 65536 and 2 or 4, corpus = corpus, splits = {},
    }
    for _, split in ipairs { 'train', 'val' } do
        remove_old_shards(out, split)
        local w = shard_writer(out, split, o)
        local docs, bytes = 0, 0
        for _, path in ipairs(parts[split]) do
            local list, nbytes = part_docs(path)
            if #list > 0 then
                local ids = tok:encode_docs(list, { bos = true, threads = threads })
                if not Tensor.is(ids) then error('tokenize: encode_docs must return a tensor, got ' .. type(ids), 0) end
                if ids:dtype() ~= 'i32' then ids = ids:to('i32') end
                w.add(ids:contiguous())
            end
            docs, bytes = docs + #list, bytes + nbytes
            progress(string.format('%s: %s: %d documents, %d tokens so far', split, path, docs, w.added))
        end
        w.finish()
        if split == 'train' and docs == 0 then
            error('tokenize: corpus ' .. corpus .. ' has no documents (its train/part-*.docs files are empty)', 2)
        end
        info.splits[split] = { shards = w.shards, tokens = w.tokens, docs = docs, bytes = bytes }
    end
    local json = require 'dkjson'
    local f = assert(io.open(out .. '/info.json', 'wb'))
    f:write(json.encode(info, { indent = true }), '\n')
    f:close()
    return info
end

-- ---- the default pipeline: corpus -> tokenizer -> shards, each built once and cached ----------
-- nc.data.prepare{ corpus = DIR (default: nc.corpus.default_dir()), vocab = 8192, threads = n,
--                  quiet = false } -> tok, shard_dir, corpus_dir
-- The tokenizer is cached as <cache>/tok-<corpus key>-<vocab>.tok and the shards as
-- <cache>/shards-<corpus key>-<tokenizer hash>/ (complete once info.json exists), so recipes and
-- benchmarks that name the same corpus and vocab share them.
function M.prepare(opts)
    opts = opts or {}
    local nc = require 'nanochat'
    local corpus_dir = (opts.corpus and opts.corpus ~= '') and opts.corpus or nc.corpus.default_dir()
    local cache = nc.corpus.cache_dir()
    local vocab = opts.vocab or 8192
    local threads = opts.threads or nc.get_num_threads()
    local say = opts.quiet and function() end or print
    local key = corpus_dir:gsub('[^%w]+', '_'):sub(-48)
    local tok_path = string.format('%s/tok-%s-%d.tok', cache, key, vocab)
    local tok
    local f = io.open(tok_path, 'rb')
    if f then
        f:close()
        tok = nc.tokenizer.load(tok_path)
    else
        say(string.format('data: training a %d-token BPE tokenizer on %s', vocab, corpus_dir))
        tok = nc.tokenizer.train { corpus = corpus_dir, vocab = vocab, threads = threads }
        tok:save(tok_path)
    end
    local shard_dir = string.format('%s/shards-%s-%s', cache, key, tok:hash())
    if not M.info(shard_dir) then
        say('data: tokenizing the corpus into ' .. shard_dir)
        M.tokenize_corpus { corpus = corpus_dir, tok = tok, out = shard_dir, threads = threads }
    end
    return tok, shard_dir, corpus_dir
end

return M
