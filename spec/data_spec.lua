-- spec/data_spec.lua — nc.data: token shards (round trips, validation of every corrupt-file
-- case), the background loader (determinism across thread counts, resume, document-aligned and
-- sequential sampling, x/y shift, errors) and corpus tokenization with a stand-in tokenizer.
package.path = 'lua/?.lua;lua/?/init.lua;' .. package.path
local nc = require 'nanochat'
local json = require 'dkjson'
local ffi = require 'ffi'
local data = nc.data
local C = nc.C

local HASH = '0123456789abcdef'
local OTHER_HASH = 'fedcba9876543210'
local BOS = 256

local lfs = require 'lfs'

local function mkdir_p(path)
    if lfs.attributes(path, 'mode') == 'directory' then return end
    local parent = path:match('^(.*)/[^/]+$')
    if parent and parent ~= '' then mkdir_p(parent) end
    assert(lfs.mkdir(path))
end

local function tmpdir()
    local base = os.tmpname()
    os.remove(base)
    mkdir_p(base)
    return base
end

local function rm_rf(path)
    if lfs.attributes(path, 'mode') == 'directory' then
        for name in lfs.dir(path) do
            if name ~= '.' and name ~= '..' then rm_rf(path .. '/' .. name) end
        end
    end
    os.remove(path)
end

local function read_bytes(path)
    local f = assert(io.open(path, 'rb'))
    local s = f:read('*a')
    f:close()
    return s
end

local function write_bytes(path, s)
    local f = assert(io.open(path, 'wb'))
    f:write(s)
    f:close()
end

-- the ids of a 1-D/2-D integer tensor as a flat Lua list (fast path through the data pointer)
local function ids_of(t)
    t = t:contiguous()
    local n = t:numel()
    local out = {}
    if t:dtype() == 'i64' then
        local p = ffi.cast('const int64_t *', C.nc_tensor_data(t._c))
        for i = 0, n - 1 do out[i + 1] = tonumber(p[i]) end
    else
        local p = ffi.cast('const int32_t *', C.nc_tensor_data(t._c))
        for i = 0, n - 1 do out[i + 1] = p[i] end
    end
    return out
end

local function same_list(a, b)
    if #a ~= #b then return false end
    for i = 1, #a do if a[i] ~= b[i] then return false end end
    return true
end

-- error message of fn(...), or nil when it succeeds
local function err_of(fn, ...)
    local ok, e = pcall(fn, ...)
    if ok then return nil end
    return tostring(e)
end

local function assert_err(fn, ...)
    local e = err_of(fn, ...)
    assert.is_not_nil(e, 'expected an error')
    return e
end

local function has(msg, s) return msg:find(s, 1, true) ~= nil end

-- Position-coded shards: token i of shard s is s * 100000 + i (u32, vocab unknown), so any
-- window tells where it came from. sizes: tokens per shard.
local function position_shards(dir, sizes, opts)
    opts = opts or {}
    local paths = {}
    for s, n in ipairs(sizes) do
        local t = nc.empty({ n }, { dtype = 'i32' })
        local p = ffi.cast('int32_t *', C.nc_tensor_data(t._c))
        for i = 0, n - 1 do p[i] = s * 100000 + i end
        local path = string.format('%s/train_%05d.shard', dir, s - 1)
        data.write_shard(path, t, { tok_hash = opts.tok_hash or HASH })
        paths[#paths + 1] = path
    end
    return paths
end

-- Document shards: BOS (256) then 3..40 byte tokens, deterministic pseudo-random lengths.
local function doc_tokens(n_docs, seed)
    local ids, state = {}, seed * 7 + 1
    for _ = 1, n_docs do
        state = (state * 16807) % 2147483647   -- Park-Miller: exact in doubles
        local len = 3 + state % 38
        ids[#ids + 1] = BOS
        for j = 1, len do ids[#ids + 1] = (state + j * 31) % 256 end
    end
    return ids
end

local function take(L, k)
    local out = {}
    for i = 1, k do
        local x, y = L:next()
        out[i] = { x = ids_of(x), y = ids_of(y) }
    end
    return out
end

local function same_batches(a, b)
    if #a ~= #b then return false end
    for i = 1, #a do
        if not same_list(a[i].x, b[i].x) or not same_list(a[i].y, b[i].y) then return false end
    end
    return true
end

describe('nc_xxh64', function()
    local function hx(s)
        local h = C.nc_xxh64(s, #s, 0)
        return string.format('%08x%08x', tonumber(h / 4294967296ULL), tonumber(h % 4294967296ULL))
    end
    it('matches the published XXH64 values', function()
        assert.are.equal('ef46db3751d8e999', hx(''))
        assert.are.equal('d24ec4f1a98c6e5b', hx('a'))
        assert.are.equal('44bc2cf5ad770999', hx('abc'))
    end)
    it('matches the low 32 bits zstd --check stores, on a long input (4-lane path)', function()
        if not (os.execute('command -v zstd >/dev/null 2>&1') == 0) then
            pending('zstd command not installed')
            return
        end
        local dir = tmpdir()
        local s = {}
        for i = 1, 1000 do s[i] = string.char((i * 37 + 11) % 256) end
        s = table.concat(s)
        write_bytes(dir .. '/in', s)
        assert(os.execute('zstd -q -f --check ' .. dir .. '/in -o ' .. dir .. '/in.zst') == 0)
        local z = read_bytes(dir .. '/in.zst')
        local b1, b2, b3, b4 = z:byte(#z - 3, #z)
        local h = hx(s)
        assert.are.equal(string.format('%02x%02x%02x%02x', b4, b3, b2, b1), h:sub(9, 16))
        rm_rf(dir)
    end)
end)

describe('token shards', function()
    local dir
    setup(function() dir = tmpdir() end)
    teardown(function() rm_rf(dir) end)

    it('round-trips uint16 ids exactly, with the header fields', function()
        local ids = doc_tokens(50, 7)
        local path = dir .. '/u16.shard'
        local h = data.write_shard(path, ids, { tok_hash = HASH, vocab = 257, bos_id = BOS })
        assert.are.equal(2, h.token_bytes)
        local t, hdr = data.read_shard(path)
        assert.are.equal('i32', t:dtype())
        assert.are.same({ #ids }, t:shape())
        assert.is_true(same_list(ids, ids_of(t)))
        assert.are.equal(1, hdr.version)
        assert.are.equal(#ids, hdr.count)
        assert.are.equal(50, hdr.docs)
        assert.are.equal(BOS, hdr.bos_id)
        assert.are.equal(257, hdr.vocab)
        assert.are.equal(HASH, hdr.tok_hash)
        assert.are.equal(80 + hdr.compressed_bytes, hdr.file_bytes)
        assert.are.equal(hdr.file_bytes, #read_bytes(path))
        assert.are.equal('NCSHARD\0', read_bytes(path):sub(1, 8))
        assert.are.same(hdr, data.read_header(path))
    end)

    it('round-trips uint32 ids (vocab > 65536), including the largest ids', function()
        local ids = { 0, 65535, 65536, 69999, 123, 70000 - 1 }
        local path = dir .. '/u32.shard'
        data.write_shard(path, nc.tensor(ids, { dtype = 'i64' }), { tok_hash = HASH, vocab = 70000 })
        local t, hdr = data.read_shard(path)
        assert.are.equal(4, hdr.token_bytes)
        assert.are.equal(-1, hdr.bos_id)
        assert.are.equal(0, hdr.docs)
        assert.is_true(same_list(ids, ids_of(t)))
    end)

    it('picks the width from the ids when no vocab is given, and handles an empty shard', function()
        assert.are.equal(2, data.write_shard(dir .. '/w2.shard', { 1, 65535 }).token_bytes)
        assert.are.equal(4, data.write_shard(dir .. '/w4.shard', { 1, 65536 }).token_bytes)
        local h = data.write_shard(dir .. '/empty.shard', nc.empty({ 0 }, { dtype = 'i32' }), { tok_hash = HASH })
        assert.are.equal(0, h.count)
        local t = data.read_shard(dir .. '/empty.shard')
        assert.are.equal(0, t:numel())
    end)

    it('refuses ids outside the vocab or the width, and bad hashes, naming the file', function()
        local p = dir .. '/bad.shard'
        local e = assert_err(data.write_shard, p, { 1, 300 }, { vocab = 257 })
        assert.is_true(has(e, p) and has(e, '300'), e)
        e = assert_err(data.write_shard, p, { 1, -2 }, { vocab = 257 })
        assert.is_true(has(e, p), e)
        e = assert_err(data.write_shard, p, { 1, 70000 }, { token_bytes = 2 })
        assert.is_true(has(e, p), e)
        e = assert_err(data.write_shard, p, { 1 }, { tok_hash = 'XYZ' })
        assert.is_true(has(e, 'tok_hash'), e)
        assert.is_nil(io.open(p, 'rb'))   -- nothing was written
    end)

    describe('validation', function()
        local good, bytes
        setup(function()
            good = dir .. '/good.shard'
            data.write_shard(good, doc_tokens(400, 3), { tok_hash = HASH, vocab = 257, bos_id = BOS })
            bytes = read_bytes(good)
        end)

        local function variant(name, s)
            local p = dir .. '/' .. name .. '.shard'
            write_bytes(p, s)
            return p
        end

        local function flip(s, pos)   -- pos 1-based
            return s:sub(1, pos - 1) .. string.char((s:byte(pos) + 1) % 256) .. s:sub(pos + 1)
        end

        it('detects a flipped payload byte (corrupt / checksum), naming the file', function()
            for _, pos in ipairs { 81, 100, math.floor(#bytes / 2), #bytes - 3, #bytes } do
                local p = variant('flip' .. pos, flip(bytes, pos))
                local e = assert_err(data.read_shard, p)
                assert.is_true(has(e, p) and has(e, 'corrupt'), e)
            end
        end)

        -- the documented header layout, rebuilt field by field (little-endian)
        local function build_header(f)
            local buf = ffi.new('uint8_t[80]')
            ffi.copy(buf, 'NCSHARD\0', 8)
            ffi.cast('uint32_t *', buf + 8)[0] = f.version
            ffi.cast('uint32_t *', buf + 12)[0] = f.token_bytes
            ffi.cast('uint64_t *', buf + 16)[0] = f.count
            ffi.cast('uint64_t *', buf + 24)[0] = f.docs
            ffi.cast('int32_t *', buf + 32)[0] = f.bos_id
            ffi.cast('uint32_t *', buf + 36)[0] = f.vocab
            if f.tok_hash ~= '' then ffi.copy(buf + 40, f.tok_hash, 16) end
            local hi, lo = tonumber(f.checksum:sub(1, 8), 16), tonumber(f.checksum:sub(9), 16)
            ffi.cast('uint64_t *', buf + 56)[0] = ffi.cast('uint64_t', hi) * 4294967296ULL + lo
            ffi.cast('uint64_t *', buf + 64)[0] = f.compressed_bytes
            ffi.cast('uint64_t *', buf + 72)[0] = C.nc_xxh64(buf, 72, 0)
            return ffi.string(buf, 80)
        end

        it('has exactly the documented 80-byte header layout', function()
            assert.are.equal(bytes:sub(1, 80), build_header(data.read_header(good)))
        end)

        it('detects a payload that decompresses but does not match the checksum', function()
            -- a valid zstd frame of the same length holding other tokens, under a valid header
            -- that carries the original checksum: only the checksum can catch it
            local ids = doc_tokens(400, 3)
            ids[10] = (ids[10] + 1) % 256
            local other = dir .. '/other.shard'
            local oh = data.write_shard(other, ids, { tok_hash = HASH, vocab = 257, bos_id = BOS })
            local gh = data.read_header(good)
            gh.compressed_bytes = oh.compressed_bytes
            local p = variant('spliced', build_header(gh) .. read_bytes(other):sub(81))
            local e = assert_err(data.read_shard, p)
            assert.is_true(has(e, p) and has(e, 'checksum mismatch') and has(e, gh.checksum), e)
        end)

        it('detects truncation (header, payload, empty file) and trailing bytes', function()
            for _, n in ipairs { 0, 10, 79, 80, #bytes - 1 } do
                local p = variant('trunc' .. n, bytes:sub(1, n))
                local e = assert_err(data.read_shard, p)
                assert.is_true(has(e, p) and has(e, 'truncated'), e)
                e = assert_err(data.read_header, p)
                assert.is_true(has(e, p), e)
            end
            local p = variant('trailing', bytes .. 'xyz')
            local e = assert_err(data.read_shard, p)
            assert.is_true(has(e, p) and has(e, 'trailing'), e)
        end)

        it('detects a wrong magic, a bad version and a corrupt header field', function()
            local p = variant('magic', 'XCSHARD\0' .. bytes:sub(9))
            local e = assert_err(data.read_shard, p)
            assert.is_true(has(e, p) and has(e, 'wrong magic'), e)
            p = variant('text', string.rep('hello world ', 20))
            e = assert_err(data.read_shard, p)
            assert.is_true(has(e, p) and has(e, 'wrong magic'), e)
            p = variant('version', bytes:sub(1, 8) .. '\2\0\0\0' .. bytes:sub(13))
            e = assert_err(data.read_shard, p)
            assert.is_true(has(e, p) and has(e, 'version 2'), e)
            for _, pos in ipairs { 17, 25, 33, 41, 57, 65, 73 } do   -- count, docs, bos, hash, checksum, size, check
                p = variant('hdr' .. pos, flip(bytes, pos))
                e = assert_err(data.read_shard, p)
                assert.is_true(has(e, p) and has(e, 'corrupt header'), e)
            end
        end)

        it('checks the tokenizer hash when one is expected', function()
            local t = data.read_shard(good, HASH)
            assert.is_true(t:numel() > 0)
            local e = assert_err(data.read_shard, good, OTHER_HASH)
            assert.is_true(has(e, good) and has(e, 'tokenizer hash mismatch') and has(e, HASH) and has(e, OTHER_HASH), e)
            e = assert_err(data.read_shard, good, { tok_hash = OTHER_HASH })
            assert.is_true(has(e, 'tokenizer hash mismatch'), e)
        end)

        it('names a missing file', function()
            local p = dir .. '/does-not-exist.shard'
            local e = assert_err(data.read_shard, p)
            assert.is_true(has(e, p) and has(e, 'cannot open'), e)
        end)
    end)

    it('lists shards of a split in order', function()
        local d = tmpdir()
        for _, n in ipairs { 'train_00002.shard', 'train_00000.shard', 'val_00000.shard', 'train_00001.shard',
                             'train_00001.shard.tmp.5', 'info.json' } do
            write_bytes(d .. '/' .. n, 'x')
        end
        assert.are.same({ d .. '/train_00000.shard', d .. '/train_00001.shard', d .. '/train_00002.shard' },
            data.shards(d, 'train'))
        assert.are.same({ d .. '/val_00000.shard' }, data.shards(d .. '/', 'val'))
        local e = assert_err(data.shards, d .. '/missing', 'train')
        assert.is_true(has(e, d .. '/missing'), e)
        rm_rf(d)
    end)
end)

describe('nc.data.loader', function()
    local dir, paths, docdir
    local SIZES = { 3000, 700, 5000, 40, 1200 }   -- one shard shorter than T + 1
    setup(function()
        dir = tmpdir()
        paths = position_shards(dir, SIZES)
        docdir = tmpdir()
        for s = 1, 3 do
            data.write_shard(string.format('%s/train_%05d.shard', docdir, s - 1), doc_tokens(150 + 40 * s, s),
                { tok_hash = HASH, vocab = 257, bos_id = BOS })
        end
    end)
    teardown(function()
        rm_rf(dir)
        rm_rf(docdir)
    end)

    it('returns (B, T) i64 x and y, y being x shifted by one, from real shard windows', function()
        local L = data.loader { shards = dir, B = 6, T = 64, seed = 5 }
        for _ = 1, 10 do
            local x, y = L:next()
            assert.are.same({ 6, 64 }, x:shape())
            assert.are.same({ 6, 64 }, y:shape())
            assert.are.equal('i64', x:dtype())
            assert.are.equal('cpu', y:device())
            local xs, ys = ids_of(x), ids_of(y)
            for r = 0, 5 do
                local first = xs[r * 64 + 1]
                local s, i = math.floor(first / 100000), first % 100000
                assert.is_true(s >= 1 and s <= #SIZES and i + 65 <= SIZES[s], 'window inside its shard')
                for t = 1, 64 do
                    assert.are.equal(first + t - 1, xs[r * 64 + t])     -- contiguous window
                    assert.are.equal(first + t, ys[r * 64 + t])         -- y = x shifted by one
                end
            end
        end
        L:close()
    end)

    it('samples shards in proportion to their size (random mode)', function()
        local L = data.loader { shards = paths, B = 32, T = 16, seed = 11 }
        local hits = {}
        for _ = 1, 40 do
            local x = ids_of((L:next()))
            for r = 0, 31 do
                local s = math.floor(x[r * 16 + 1] / 100000)
                hits[s] = (hits[s] or 0) + 1
            end
        end
        L:close()
        -- starts per shard: count - T; shard 4 (40 tokens) has 24 starts of ~9.9k
        local starts, total = {}, 0
        for s, n in ipairs(SIZES) do starts[s] = math.max(0, n - 16); total = total + starts[s] end
        for s = 1, #SIZES do
            local expect = 1280 * starts[s] / total
            local sd = math.sqrt(expect * (1 - starts[s] / total))
            assert.is_true(math.abs((hits[s] or 0) - expect) < 5 * sd + 2,
                string.format('shard %d: %d hits, expected %.1f', s, hits[s] or 0, expect))
        end
    end)

    it('is deterministic for a seed whatever the thread count and prefetch depth', function()
        local a = data.loader { shards = paths, B = 8, T = 32, seed = 42, threads = 1, prefetch = 1 }
        local b = data.loader { shards = paths, B = 8, T = 32, seed = 42, threads = 3, prefetch = 7, cache_mb = 0.01 }
        local c = data.loader { shards = paths, B = 8, T = 32, seed = 43, threads = 2 }
        local ba, bb, bc = take(a, 25), take(b, 25), take(c, 25)
        assert.is_true(same_batches(ba, bb), 'same seed -> same batches')
        assert.is_false(same_batches(ba, bc), 'another seed -> other batches')
        assert.is_true(b:stats().shard_loads > #paths, 'the tiny cache cap forced re-loads')
        assert.is_true(b:stats().cache_bytes < 50000)
        a:close(); b:close(); c:close()
    end)

    it('resumes exactly from a saved state (JSON round trip, fresh loader, other threads)', function()
        for _, sampling in ipairs { 'random', 'doc', 'sequential' } do
            local src = sampling == 'doc' and docdir or dir
            local base = { shards = src, B = 4, T = 24, seed = 9, sampling = sampling }
            local full = data.loader(base)
            local whole = take(full, 12)
            local first = data.loader(base)
            take(first, 5)
            local st = json.decode(json.encode(first:state()))
            assert.are.equal(5, st.cursor)
            first:close()
            local opts2 = { threads = 3, prefetch = 2 }
            for k, v in pairs(base) do opts2[k] = v end
            opts2.seed = 1234   -- the state's seed wins
            local resumed = data.loader(opts2)
            take(resumed, 2)          -- consuming before set_state must not matter
            resumed:set_state(st)
            local rest = take(resumed, 7)
            for i = 1, 7 do
                assert.is_true(same_list(whole[5 + i].x, rest[i].x), sampling .. ': batch ' .. (5 + i))
                assert.is_true(same_list(whole[5 + i].y, rest[i].y), sampling .. ': batch ' .. (5 + i))
            end
            full:close(); resumed:close()
        end
    end)

    it('refuses a state from another configuration', function()
        local L = data.loader { shards = dir, B = 4, T = 24, seed = 9 }
        local st = L:state()
        local other = data.loader { shards = dir, B = 5, T = 24, seed = 9 }
        local e = assert_err(other.set_state, other, st)
        assert.is_true(has(e, 'B = 4') and has(e, 'B = 5'), e)
        local seq = data.loader { shards = dir, B = 4, T = 24, sampling = 'sequential' }
        e = assert_err(seq.set_state, seq, st)
        assert.is_true(has(e, 'sampling'), e)
        local fewer = data.loader { shards = { paths[1] }, B = 4, T = 24 }
        e = assert_err(fewer.set_state, fewer, st)
        assert.is_true(has(e, 'total_tokens'), e)
        L:close(); other:close(); seq:close(); fewer:close()
    end)

    it("starts every row at a BOS token with sampling = 'doc', covering many documents", function()
        local L = data.loader { shards = docdir, B = 16, T = 20, seed = 3, sampling = 'doc', threads = 2 }
        local starts = {}
        for _ = 1, 20 do
            local x, y = L:next()
            local xs, ys = ids_of(x), ids_of(y)
            for r = 0, 15 do
                assert.are.equal(BOS, xs[r * 20 + 1])
                for t = 1, 19 do assert.are.equal(xs[r * 20 + t + 1], ys[r * 20 + t]) end
                local key = table.concat(xs, ',', r * 20 + 1, r * 20 + 20)
                starts[key] = true
            end
        end
        local distinct = 0
        for _ in pairs(starts) do distinct = distinct + 1 end
        assert.is_true(distinct > 150, 'distinct windows: ' .. distinct)
        L:close()
    end)

    it("needs a BOS id for doc sampling and finds none in BOS-less shards", function()
        local e = assert_err(data.loader, { shards = dir, B = 2, T = 8, sampling = 'doc' })
        assert.is_true(has(e, 'BOS') and has(e, paths[1]), e)
        e = assert_err(data.loader, { shards = dir, B = 2, T = 8, sampling = 'doc', bos_id = 7 })
        assert.is_true(has(e, 'no BOS token'), e)
    end)

    it('covers every token exactly once in sequential mode, then ends', function()
        -- stream = concatenation of the shards (40 + 700 + 3000 + ... tokens); with T = 8 and
        -- (N - 1) % T == 0 the windows cover it exactly
        local d = tmpdir()
        local sizes = { 41, 0, 7, 300, 1, 160 }   -- N = 509, (N - 1) / 8 = 63.5 -> adjust below
        sizes[6] = 160 - 4                        -- N = 505, 504 / 8 = 63 windows
        local ps = position_shards(d, sizes)
        local stream = {}
        for s, n in ipairs(sizes) do for i = 0, n - 1 do stream[#stream + 1] = s * 100000 + i end end
        assert.are.equal(0, (#stream - 1) % 8)
        local L = data.loader { shards = ps, B = 5, T = 8, sampling = 'sequential', loop = false, threads = 2 }
        assert.are.equal(13, L:num_batches())   -- ceil(63 / 5)
        local xs, ys, batches = {}, {}, 0
        for x, y in L:batches() do
            batches = batches + 1
            assert.are.equal(8, x:size(1))
            assert.are.equal(batches < 13 and 5 or 3, x:size(0))
            for _, v in ipairs(ids_of(x)) do xs[#xs + 1] = v end
            for _, v in ipairs(ids_of(y)) do ys[#ys + 1] = v end
        end
        assert.are.equal(13, batches)
        assert.is_nil(L:next())
        assert.is_nil(L:next())
        -- x is the stream without its last token, y without its first: each exactly once, in order
        assert.are.equal(#stream - 1, #xs)
        for i = 1, #stream - 1 do
            assert.are.equal(stream[i], xs[i])
            assert.are.equal(stream[i + 1], ys[i])
        end
        L:close()
        -- loop = true wraps around: window w of batch k row r is (k*B + r) mod 63, so the 13th
        -- batch is full and its rows 4, 5 are the first batch's rows 1, 2
        local W = data.loader { shards = ps, B = 5, T = 8, sampling = 'sequential' }
        assert.is_nil(W:num_batches())
        local got = take(W, 13)
        assert.are.equal(40, #got[13].x)
        assert.is_true(same_list({ unpack(got[1].x, 1, 16) }, { unpack(got[13].x, 25, 40) }))
        assert.is_true(same_list({ unpack(got[1].y, 1, 16) }, { unpack(got[13].y, 25, 40) }))
        W:close()
        rm_rf(d)
    end)

    it('gives clear errors for an empty shard list, an empty directory, short shards and bad options', function()
        local e = assert_err(data.loader, { shards = {}, B = 2, T = 8 })
        assert.is_true(has(e, 'no shards'), e)
        local d = tmpdir()
        e = assert_err(data.loader, { shards = d, B = 2, T = 8 })
        assert.is_true(has(e, 'no shards') and has(e, d), e)
        e = assert_err(data.loader, { shards = paths, B = 2, T = 6000 })
        assert.is_true(has(e, 'T+1') and has(e, '5000'), e)
        e = assert_err(data.loader, { shards = paths, B = 2, T = 8, sampling = 'shuffle' })
        assert.is_true(has(e, 'sampling'), e)
        e = assert_err(data.loader, { shards = paths, B = 0, T = 8 })
        assert.is_true(has(e, 'B'), e)
        e = assert_err(data.loader, { shards = { d .. '/nope.shard' }, B = 2, T = 8 })
        assert.is_true(has(e, d .. '/nope.shard'), e)
        rm_rf(d)
    end)

    it('checks the tokenizer hash of every shard and refuses mixed tokenizers', function()
        local L = data.loader { shards = dir, B = 2, T = 8, tok_hash = HASH }
        L:close()
        local e = assert_err(data.loader, { shards = dir, B = 2, T = 8, tok_hash = OTHER_HASH })
        assert.is_true(has(e, paths[1]) and has(e, 'tokenizer hash mismatch'), e)
        local d = tmpdir()
        local mixed = position_shards(d, { 100, 100 })
        data.write_shard(mixed[2], { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 }, { tok_hash = OTHER_HASH })
        e = assert_err(data.loader, { shards = mixed, B = 2, T = 8 })
        assert.is_true(has(e, mixed[2]) and has(e, 'mixed tokenizers'), e)
        rm_rf(d)
    end)

    it('reports a shard corrupted after opening from next(), naming the file', function()
        local d = tmpdir()
        local ps = position_shards(d, { 2000 })
        local L = data.loader { shards = ps, B = 2, T = 8, threads = 2 }
        local s = read_bytes(ps[1])
        write_bytes(ps[1], s:sub(1, 100) .. string.char((s:byte(101) + 1) % 256) .. s:sub(102))
        local e = assert_err(L.next, L)
        assert.is_true(has(e, ps[1]) and has(e, 'corrupt'), e)
        assert_err(L.next, L)   -- stays failed, no hang
        L:close()
        rm_rf(d)
    end)

    it('counts consumer wait time, closes idempotently and survives garbage collection', function()
        local L = data.loader { shards = dir, B = 4, T = 32 }
        assert.are.equal(0, L:wait_seconds())
        take(L, 3)
        local w = L:wait_seconds()
        assert.is_true(w >= 0 and w < 60)
        L:close()
        L:close()
        local e = assert_err(L.next, L)
        assert.is_true(has(e, 'closed'), e)
        for _ = 1, 5 do
            local G = data.loader { shards = dir, B = 4, T = 32, threads = 2 }
            G:next()
        end
        collectgarbage('collect')
        collectgarbage('collect')
    end)
end)

describe('nc.data.tokenize_corpus', function()
    -- a stand-in byte-level tokenizer: ids are bytes, BOS = 256 (the real one is nc.tokenizer)
    local ByteTok = { bos_id = BOS, calls = 0 }
    function ByteTok:hash() return HASH end
    function ByteTok:vocab_size() return 257 end
    function ByteTok:encode_docs(docs, opts)
        self.calls = self.calls + 1
        assert(opts and opts.bos == true and opts.threads, 'encode_docs called with bos = true and threads')
        local ids = {}
        for _, d in ipairs(docs) do
            ids[#ids + 1] = BOS
            for i = 1, #d do ids[#ids + 1] = d:byte(i) end
        end
        local t = nc.empty({ #ids }, { dtype = 'i32' })
        local p = ffi.cast('int32_t *', C.nc_tensor_data(t._c))
        for i = 1, #ids do p[i - 1] = ids[i] end
        return t
    end

    local function make_corpus(root, train_parts, val_parts)
        mkdir_p(root .. '/train')
        mkdir_p(root .. '/val')
        for i, docs in ipairs(train_parts) do
            write_bytes(string.format('%s/train/part-%05d.docs', root, i - 1), table.concat(docs, '\0') .. '\0')
        end
        for i, docs in ipairs(val_parts or {}) do
            write_bytes(string.format('%s/val/part-%05d.docs', root, i - 1), table.concat(docs, '\0') .. '\0')
        end
    end

    local function rust_docs(n, seed)
        local out = {}
        for i = 1, n do
            local len = 5 + (i * 7919 + seed) % 90
            local s = {}
            for j = 1, len do s[j] = string.char(32 + (i * 31 + j * 17 + seed) % 95) end
            out[i] = '// doc ' .. i .. '\nfn f' .. i .. '() { ' .. table.concat(s) .. ' }\n'
        end
        return out
    end

    it('writes train/val shards whose tokens are the encoded documents, with BOS between them', function()
        local root, out = tmpdir(), tmpdir() .. '/shards'
        local p1, p2, v1 = rust_docs(40, 1), rust_docs(25, 2), rust_docs(10, 3)
        p1[41] = ''   -- an empty document is skipped
        make_corpus(root, { p1, p2 }, { v1 })
        local info = data.tokenize_corpus { corpus = root, tok = ByteTok, out = out, threads = 2, shard_tokens = 700 }
        local train, val = data.shards(out, 'train'), data.shards(out, 'val')
        assert.is_true(#train >= 4, 'several train shards: ' .. #train)
        assert.are.equal(#train, info.splits.train.shards)
        assert.is_true(#val >= 1)
        assert.are.equal(#val, info.splits.val.shards)
        assert.are.equal(65, info.splits.train.docs)
        assert.are.equal(10, info.splits.val.docs)
        -- concatenated shard tokens == BOS + bytes of each document, in order
        local expect = {}
        for _, docs in ipairs { p1, p2 } do
            for _, d in ipairs(docs) do
                if #d > 0 then
                    expect[#expect + 1] = BOS
                    for i = 1, #d do expect[#expect + 1] = d:byte(i) end
                end
            end
        end
        local got = {}
        for _, p in ipairs(train) do
            local t, h = data.read_shard(p, HASH)
            local ids = ids_of(t)
            assert.are.equal(BOS, ids[1], p .. ' starts with BOS')
            assert.is_true(#ids <= 700)
            assert.are.equal(2, h.token_bytes)
            assert.are.equal(BOS, h.bos_id)
            assert.are.equal(257, h.vocab)
            for _, v in ipairs(ids) do got[#got + 1] = v end
        end
        assert.is_true(same_list(expect, got))
        assert.are.equal(#expect, info.splits.train.tokens)
        local disk = data.info(out)
        assert.is_nil((data.info(root)))
        assert.are.equal(HASH, disk.tok_hash)
        assert.are.equal(#expect, disk.splits.train.tokens)
        assert.are.equal(info.splits.val.tokens, disk.splits.val.tokens)
        -- the result feeds the loader directly
        local L = data.loader { shards = out, split = 'val', B = 2, T = 16, sampling = 'doc', tok_hash = HASH }
        local x = L:next()
        assert.are.equal(BOS, x:get(0, 0))
        L:close()
        -- a second run replaces the shards (no stale files from a bigger earlier run)
        data.tokenize_corpus { corpus = root, tok = ByteTok, out = out, shard_tokens = 100000 }
        assert.are.equal(1, #data.shards(out, 'train'))
        rm_rf(root); rm_rf(out)
    end)

    it('splits a document longer than a shard', function()
        local root, out = tmpdir(), tmpdir()
        make_corpus(root, { { string.rep('x', 250), 'short' } })
        local info = data.tokenize_corpus { corpus = root, tok = ByteTok, out = out, shard_tokens = 100 }
        assert.are.equal(257, info.splits.train.tokens)
        assert.are.equal(0, info.splits.val.shards)
        local total = 0
        for _, p in ipairs(data.shards(out, 'train')) do total = total + data.read_header(p).count end
        assert.are.equal(257, total)
        rm_rf(root); rm_rf(out)
    end)

    it('gives clear errors for a missing or empty corpus and a truncated part file', function()
        local root, out = tmpdir(), tmpdir()
        local e = assert_err(data.tokenize_corpus, { corpus = root .. '/nope', tok = ByteTok, out = out })
        assert.is_true(has(e, root .. '/nope'), e)
        e = assert_err(data.tokenize_corpus, { corpus = root, tok = ByteTok, out = out })
        assert.is_true(has(e, 'no documents') and has(e, root), e)
        make_corpus(root, { {} })
        write_bytes(root .. '/train/part-00000.docs', '')
        e = assert_err(data.tokenize_corpus, { corpus = root, tok = ByteTok, out = out })
        assert.is_true(has(e, 'no documents'), e)
        write_bytes(root .. '/train/part-00000.docs', 'fn main() {}\0fn trunc')
        e = assert_err(data.tokenize_corpus, { corpus = root, tok = ByteTok, out = out })
        assert.is_true(has(e, root .. '/train/part-00000.docs') and has(e, 'NUL'), e)
        e = assert_err(data.tokenize_corpus, { corpus = root, tok = {}, out = out })
        assert.is_true(has(e, 'tokenizer'), e)
        rm_rf(root); rm_rf(out)
    end)
end)

describe('tools/bench/data.lua (quick mode)', function()
    it('runs and ends with a JSON line holding the loader and tokenizer keys', function()
        local exe = io.open('./nanochat', 'rb') and './nanochat' or "env LUA_PATH='lua/?.lua;lua/?/init.lua;;' luajit"
        if exe == './nanochat' then io.open('./nanochat', 'rb'):close() end
        local p = io.popen('timeout 300 ' .. exe .. ' tools/bench/data.lua quick=1 2>&1; echo "__EXIT__:$?"')
        local text = p:read('*a')
        p:close()
        local lines = {}
        for line in text:gmatch('[^\n]+') do lines[#lines + 1] = line end
        assert.are.equal('__EXIT__:0', lines[#lines], text)
        local last = lines[#lines - 1]
        local obj = json.decode(last)
        assert.is_table(obj, text)
        for _, k in ipairs { 'loader_tokens_per_s', 'loader_tokens_per_s_small_cache', 'shard_read_tokens_per_s',
                             'shard_write_mb_per_s' } do
            assert.is_true(type(obj[k]) == 'number' and obj[k] > 0 and obj[k] < math.huge, k .. ' in ' .. last)
        end
        -- present even when the tokenizer is not available (then null)
        assert.is_truthy(last:find('"tok_encode_mb_per_s":', 1, true))
        assert.is_truthy(last:find('"tok_train_seconds_50mb":', 1, true))
    end)
end)

describe('tools/tokenize.lua', function()
    local function run(argstr)
        local exe = io.open('./nanochat', 'rb') and './nanochat' or "env LUA_PATH='lua/?.lua;lua/?/init.lua;;' luajit"
        local p = io.popen('timeout 300 ' .. exe .. ' tools/tokenize.lua ' .. argstr .. ' 2>&1; echo "__EXIT__:$?"')
        local text = p:read('*a')
        p:close()
        return tonumber(text:match('__EXIT__:(%d+)%s*$')), text
    end

    it('prints usage and exits 2 without a tokenizer file', function()
        local code, text = run('corpus=/nonexistent out=/tmp/nowhere')
        assert.are.equal(2, code, text)
        assert.is_truthy(text:find('tok=FILE', 1, true), text)
    end)

    it('tokenizes a small corpus with a real tokenizer (when nc.tokenizer exists)', function()
        if not package.searchpath('nanochat.tokenizer', package.path) then
            pending('nc.tokenizer is not in this tree')
            return
        end
        local root, out = tmpdir(), tmpdir()
        mkdir_p(root .. '/train')
        mkdir_p(root .. '/val')
        local docs = {}
        for i = 1, 60 do docs[i] = 'fn f' .. i .. '(x: u32) -> u32 { x * ' .. i .. ' + 1 }\n' end
        write_bytes(root .. '/train/part-00000.docs', table.concat(docs, '\0') .. '\0')
        write_bytes(root .. '/val/part-00000.docs', 'fn main() {}\n\0')
        local tok = nc.tokenizer.train { texts = docs, vocab = 300, threads = 1 }
        tok:save(root .. '/tok.bin')
        local code, text = run('corpus=' .. root .. ' tok=' .. root .. '/tok.bin out=' .. out .. ' quiet=true')
        assert.are.equal(0, code, text)
        local info = json.decode(read_bytes(out .. '/info.json'))
        assert.are.equal(tok:hash(), info.tok_hash)
        assert.are.equal(60, info.splits.train.docs)
        local shards = data.shards(out, 'train')
        assert.are.equal(1, #shards)
        local ids, h = data.read_shard(shards[1], tok:hash())
        assert.are.equal(60, h.docs)
        -- decoding the shard without its BOS tokens gives the documents back
        local text_ids = {}
        for _, v in ipairs(ids_of(ids)) do if v ~= tok.bos_id then text_ids[#text_ids + 1] = v end end
        assert.are.equal(table.concat(docs), tok:decode(text_ids))
        assert.are.equal(1, #data.shards(out, 'val'))
        rm_rf(root); rm_rf(out)
    end)
end)
