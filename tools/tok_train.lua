-- tools/tok_train.lua — train the byte-level BPE tokenizer and save it.
--
--   nanochat tools/tok_train.lua corpus=DIR vocab=8192 out=FILE [threads=N] [max_mb=50]
--
-- corpus: a corpus directory (uses DIR/train/part-*.docs, never DIR/val), any directory (its
-- *.docs, *.rs and *.txt files, recursively, in sorted order) or one text file; several may be
-- given separated by commas. Prints what was read, the timings and the tokenizer hash.
local nc = require 'nanochat'
local args = rawget(_G, 'ARGS') or {}

local function usage(msg)
    io.stderr:write('tok_train: ' .. msg .. '\nusage: nanochat tools/tok_train.lua corpus=DIR vocab=8192 out=FILE [threads=N] [max_mb=MB]\n')
    os.exit(2)
end
if not args.corpus then usage('corpus=DIR is required') end
if not args.out then usage('out=FILE is required') end
local paths = {}
for p in tostring(args.corpus):gmatch('[^,]+') do paths[#paths + 1] = p end

local t0 = os.time()
local tok = nc.tokenizer.train {
    corpus = paths,
    vocab = tonumber(args.vocab) or 8192,
    threads = tonumber(args.threads) or 0,
    max_bytes = args.max_mb and math.floor(tonumber(args.max_mb) * 1e6) or nil,
}
tok:save(args.out)
local s = tok:stats()
print(string.format('read %d files, %.1f MB (%d pieces, %d unique) with %d threads',
    s.files, s.bytes / 1e6, s.pieces, s.unique_pieces, s.threads))
print(string.format('count %.2f s, merges %.2f s, total %.2f s (wall %d s)',
    s.seconds_count, s.seconds_merge, s.seconds_count + s.seconds_merge, os.time() - t0))
print(string.format('vocab %d (%d merges), hash %s -> %s', tok:vocab_size(), tok:n_merges(), tok:hash(), args.out))
