-- tools/bench/data.lua — is the data pipeline fast enough never to stall training?
--
-- Measures, in one run:
--   1. shard write (pack + XXH64 + zstd level 3 + fsync) and read (read + zstd + checksum)
--      throughput on synthetic shards it creates under /tmp (vocab 8192, u16, a skewed token
--      distribution and BOS-separated documents of 50..2000 tokens, so compression is realistic);
--   2. loader throughput: tokens/s delivered by L:next() for B = 8..32, T = 256..1024 with
--      random, doc and sequential sampling and 1 or 2 producer threads, with a consumer that
--      does nothing else (so the number is what the loader can sustain), and the fraction of
--      that time the consumer waited;
--   3. the comparison the issue asks for: the slowest training configuration vs what the tiny
--      training recipe consumes: recipes/tiny.lua measured 1000-1400 tokens/s on 2 cores
--      (tools/bench/train.lua: ~1000); we compare with a generous 10k tokens/s, ~7x that.
--   4. tokenizer numbers (tok_encode_mb_per_s, tok_train_seconds_50mb) from tools/bench/tok.lua
--      when it exists (the tokenizer's own benchmark, run as a subprocess), else measured here
--      when nc.tokenizer loads, else null.
-- Prints tables and, as the LAST line, one JSON object (loader_tokens_per_s = the slowest
-- random/doc training configuration).
--
-- Usage: ./nanochat tools/bench/data.lua [quick=1] [shard_tokens=1048576] [shards=8]
--    or: LUA_PATH='lua/?.lua;lua/?/init.lua;;' luajit tools/bench/data.lua ...
if not package.path:find('lua/?/init.lua', 1, true) then
    package.path = 'lua/?.lua;lua/?/init.lua;' .. package.path
end

local ffi = require 'ffi'
local here = (debug.getinfo(1, 'S').source:match('^@(.*/)') or './')
local L = dofile(here .. 'lib.lua')
local args = L.parse_args()
local nc = require 'nanochat'
local C = nc.C

local RECIPE_TOKENS_PER_S = 10000   -- ~7x the measured tiny recipe, see the header comment
local NULL = 0 / 0                  -- L.json writes non-finite numbers as null
local VOCAB, BOS = 8192, 8191

local quick = args.quick == 1 or args.quick == true or args.quick == 'true'
local shard_tokens = tonumber(args.shard_tokens) or (quick and 262144 or 1048576)
local n_shards = tonumber(args.shards) or (quick and 3 or 8)
local budget = quick and 400000 or 4000000      -- tokens delivered per loader measurement

-- ---- synthetic shards ----------------------------------------------------------------------
local function make_tokens(n, seed)
    local t = nc.empty({ n }, { dtype = 'i32' })
    local p = ffi.cast('int32_t *', C.nc_tensor_data(t._c))
    local s = seed * 7 + 1
    local left = 0
    for i = 0, n - 1 do
        s = (s * 16807) % 2147483647
        if left == 0 then
            p[i] = BOS
            left = 50 + s % 1950
        else
            -- skewed: small ids much more frequent (roughly what BPE ids look like)
            local u = (s % 1000003) / 1000003
            p[i] = math.floor(u * u * u * (VOCAB - 1))
            left = left - 1
        end
    end
    return t
end

local function main()
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p '" .. dir .. "'") == 0 or true)
    local paths, write_s, raw_bytes, file_bytes = {}, 0, 0, 0
    for s = 1, n_shards do
        local ids = make_tokens(shard_tokens, s)
        local path = string.format('%s/train_%05d.shard', dir, s - 1)
        local t0 = L.now()
        local h = nc.data.write_shard(path, ids, { tok_hash = '0123456789abcdef', vocab = VOCAB, bos_id = BOS })
        write_s = write_s + (L.now() - t0)
        raw_bytes, file_bytes = raw_bytes + h.count * 2, file_bytes + h.file_bytes
        paths[s] = path
    end
    local read_s = L.time(function() nc.data.read_shard(paths[1]) end, { warmup = 1, reps = quick and 3 or 5 })
    local write_mb_s = raw_bytes / write_s / 1e6
    local read_tok_s = shard_tokens / read_s
    print(string.format('%d shards x %d tokens (u16, vocab %d): %.1f MB raw -> %.1f MB on disk (%.2fx)', n_shards,
        shard_tokens, VOCAB, raw_bytes / 1e6, file_bytes / 1e6, raw_bytes / file_bytes))
    print(string.format('shard write %.0f MB/s of raw ids; read (zstd + checksum) %.1f M tokens/s', write_mb_s,
        read_tok_s / 1e6))
    print()

    local configs = {
        { 8, 256, 'random', 1 }, { 16, 512, 'random', 1 }, { 32, 1024, 'random', 1 },
        { 8, 256, 'doc', 1 }, { 32, 1024, 'doc', 1 },
        { 32, 1024, 'random', 2 },
        { 32, 1024, 'sequential', 1 },
        -- worst case: the cache holds ~1.5 shards, so most rows decompress a shard
        { 32, 1024, 'random', 2, cache_mb = shard_tokens * 3 / 1048576 },
    }
    local rows, slowest, best, slowest_wait, thrash = {}, math.huge, 0, 0, NULL
    for _, c in ipairs(configs) do
        local B, T, sampling, threads = c[1], c[2], c[3], c[4]
        local Ld = nc.data.loader { shards = paths, B = B, T = T, seed = 1, sampling = sampling, threads = threads,
                                    cache_mb = c.cache_mb }
        Ld:next(); Ld:next()                      -- start the threads, fill the cache
        local w0 = Ld:wait_seconds()
        local n = math.max(8, math.floor(budget / (B * T)))
        collectgarbage('collect')
        local t0 = L.now()
        for _ = 1, n do Ld:next() end
        local dt = L.now() - t0
        local wait = Ld:wait_seconds() - w0
        local st = Ld:stats()
        Ld:close()
        local tps = n * B * T / dt
        rows[#rows + 1] = { B, T, sampling .. (c.cache_mb and ' (small cache)' or ''), threads, tps / 1e6, wait / dt,
                            tps / RECIPE_TOKENS_PER_S, st.shard_loads }
        if c.cache_mb then
            thrash = tps
        elseif sampling ~= 'sequential' then
            if tps < slowest then slowest, slowest_wait = tps, wait / dt end
        end
        if tps > best then best = tps end
    end
    L.print_table({ 'B', 'T', 'sampling', 'threads', 'M tok/s', 'wait frac', 'x recipe', 'shard loads' }, rows,
        { '%d', '%d', '%s', '%d', '%.2f', '%.2f', '%.0f', '%d' })
    print(string.format('\nassumed tiny-recipe consumption: %d tokens/s; slowest loader config %.2f M tok/s = %.0fx; '
        .. 'with a cache smaller than the data %.2f M tok/s = %.0fx', RECIPE_TOKENS_PER_S, slowest / 1e6,
        slowest / RECIPE_TOKENS_PER_S, thrash / 1e6, thrash / RECIPE_TOKENS_PER_S))
    os.execute("rm -rf '" .. dir .. "'")

    -- ---- tokenizer numbers -----------------------------------------------------------------
    local tok_encode, tok_train50, tok_note = NULL, NULL, 'nc.tokenizer not available'
    local f = io.open(here .. 'tok.lua', 'rb')
    if f then
        f:close()
        local exe = arg and arg[-1] or 'luajit'
        if io.open('./nanochat', 'rb') then exe = './nanochat' end
        local cmd = string.format("env LUA_PATH='lua/?.lua;lua/?/init.lua;;' %s %stok.lua%s 2>&1", exe, here,
            quick and ' quick=1' or '')
        local p = io.popen(cmd)
        local last
        for line in p:lines() do last = line end
        p:close()
        local ok, obj = pcall(function() return require('dkjson').decode(last or '') end)
        if ok and type(obj) == 'table' then
            tok_encode = tonumber(obj.tok_encode_mb_per_s) or NULL
            tok_train50 = tonumber(obj.tok_train_seconds_50mb) or NULL
            tok_note = 'from tools/bench/tok.lua'
        else
            tok_note = 'tools/bench/tok.lua gave no JSON: ' .. tostring(last)
        end
    elseif pcall(require, 'nanochat.tokenizer') then
        local tokmod = require 'nanochat.tokenizer'
        local parts = {}
        for i = 1, (quick and 2000 or 20000) do
            parts[i] = string.format('fn item_%d(x: u32) -> u32 {\n    let y = x * %d + %d;\n    y ^ (y >> 3)\n}\n\n',
                i, i % 97, i % 13)
        end
        local text = table.concat(parts)
        local t0 = L.now()
        local tok = tokmod.train { texts = { text }, vocab = 8192, threads = 2 }
        local train_s = L.now() - t0
        local enc_s = L.time(function() tok:encode_docs({ text }, { bos = true, threads = 2 }) end, { warmup = 1, reps = 3 })
        tok_encode = #text / enc_s / 1e6
        tok_train50 = train_s * 50e6 / #text   -- linear extrapolation from the measured size
        tok_note = string.format('measured here: train on %.1f MB in %.2f s (extrapolated to 50 MB)', #text / 1e6, train_s)
    end
    print('tokenizer: ' .. tok_note)

    print(L.json {
        loader_tokens_per_s = L.round(slowest, 0),
        loader_tokens_per_s_best = L.round(best, 0),
        loader_vs_recipe = L.round(slowest / RECIPE_TOKENS_PER_S, 1),
        loader_tokens_per_s_small_cache = L.round(thrash, 0),
        recipe_tokens_per_s_assumed = RECIPE_TOKENS_PER_S,
        consumer_wait_fraction = L.round(slowest_wait, 3),
        shard_write_mb_per_s = L.round(write_mb_s, 1),
        shard_read_tokens_per_s = L.round(read_tok_s, 0),
        shard_compression_ratio = L.round(raw_bytes / file_bytes, 2),
        tok_encode_mb_per_s = tok_encode,
        tok_train_seconds_50mb = tok_train50,
    })
end

main()
