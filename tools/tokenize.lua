-- tools/tokenize.lua — corpus directory -> zstd token shards (+ info.json).
--
-- Usage: ./nanochat tools/tokenize.lua corpus=DIR tok=FILE out=DIR [threads=2]
--                                      [shard_tokens=2097152] [level=3] [quiet=true]
-- corpus defaults to the built-in small default corpus (nc.corpus.default_dir()) when nc.corpus
-- exists. Reads DIR/train/part-*.docs and DIR/val/part-*.docs (NUL-terminated documents),
-- encodes them with the tokenizer FILE (BOS before every document, `threads` encoder threads)
-- and writes OUT/train_NNNNN.shard, OUT/val_NNNNN.shard and OUT/info.json. Shards are cut at a
-- document boundary at most shard_tokens long (a longer document is split). The work is
-- nc.data.tokenize_corpus; this file only parses arguments and prints a summary.
if not package.path:find('lua/?/init.lua', 1, true) then
    package.path = 'lua/?.lua;lua/?/init.lua;' .. package.path
end
local nc = require 'nanochat'

local args = rawget(_G, 'ARGS') or {}
if not rawget(_G, 'ARGS') then
    for _, a in ipairs(arg or {}) do
        local k, v = a:match('^%-*([%w_]+)=(.*)$')
        if k then args[k] = tonumber(v) or v end
    end
end

local function usage(msg)
    io.stderr:write('tokenize: ', msg, '\nusage: nanochat tools/tokenize.lua corpus=DIR tok=FILE out=DIR ',
        '[threads=2] [shard_tokens=2097152] [level=3]\n')
    os.exit(2)
end

local corpus = args.corpus
if not corpus then
    local ok, corpus_mod = pcall(function() return nc.corpus end)
    if ok and corpus_mod and corpus_mod.default_dir then
        corpus = corpus_mod.default_dir()
    else
        usage('corpus=DIR is required')
    end
end
if not args.tok then usage('tok=FILE is required (a tokenizer trained with tools/tok_train.lua)') end
if not args.out then usage('out=DIR is required') end

if not nc.tokenizer then usage('nc.tokenizer is not available in this build (lua/nanochat/tokenizer.lua)') end
local tok = nc.tokenizer.load(tostring(args.tok))
local t0 = os.time()
local clock0 = os.clock()
local info = nc.data.tokenize_corpus {
    corpus = tostring(corpus), tok = tok, out = tostring(args.out), threads = args.threads or 2,
    shard_tokens = args.shard_tokens, level = args.level,
    progress = not (args.quiet == true or args.quiet == 'true') and function(msg) print(msg) end or nil,
}
for _, split in ipairs { 'train', 'val' } do
    local s = info.splits[split]
    print(string.format('%-5s %6d documents %12d bytes -> %12d tokens (%.2f bytes/token) in %d shards',
        split, s.docs, s.bytes, s.tokens, s.tokens > 0 and s.bytes / s.tokens or 0, s.shards))
end
print(string.format('tokenizer %s, vocab %d; %s/info.json written (%d s wall, %.1f s CPU)', info.tok_hash,
    info.vocab, args.out, os.time() - t0, os.clock() - clock0))
