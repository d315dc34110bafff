-- tools/bench/tok.lua — tokenizer training time and encode throughput on real Rust.
--
--   ./nanochat tools/bench/tok.lua [corpus=DIR] [vocab=8192] [max_mb=50] [threads=2] [quick=1]
--
-- corpus: a corpus directory (tools/corpus.lua; default: the built-in small default corpus,
-- built on first use). Trains a vocab-`vocab` BPE on up to max_mb MB of its train split, then
-- encodes the same documents with encode_docs on 1 and `threads` threads. The training time is
-- reported for the measured size and, when that is below 50 MB, linearly scaled to 50 MB (and
-- marked so). Last line: JSON with tok_train_seconds_50mb, tok_encode_mb_per_s (threads).
local nc = require 'nanochat'
local here = (debug.getinfo(1, 'S').source:match('^@(.*/)') or './')
local L = dofile(here .. 'lib.lua')
local args = L.parse_args(rawget(_G, 'ARGS') or arg)

local quick = args.quick ~= nil
local vocab = tonumber(args.vocab) or 8192
local max_mb = tonumber(args.max_mb) or (quick and 4 or 50)
local threads = tonumber(args.threads) or 2
local dir = args.corpus or nc.corpus.default_dir()

-- the documents the trainer will read (same order, same cap)
local docs, bytes = {}, 0
for d in nc.corpus.docs(dir, 'train') do
    if bytes + #d > max_mb * 1e6 then break end
    docs[#docs + 1] = d
    bytes = bytes + #d
end
if #docs == 0 then error('tok bench: no documents in ' .. dir) end

local t0 = L.now()
local tok = nc.tokenizer.train { texts = docs, vocab = vocab, threads = threads }
local train_s = L.now() - t0

local rows, enc = {}, {}
for _, th in ipairs { 1, threads } do
    local s = L.time(function() tok:encode_docs(docs, { bos = true, threads = th }) end, { warmup = 1, reps = quick and 1 or 3 })
    enc[th] = bytes / s / 1e6
    rows[#rows + 1] = { th, bytes / 1e6, s, enc[th] }
end
local ids = tok:encode_docs(docs, { bos = false, threads = threads })

print(string.format('tokenizer bench: %s, %d docs, %.1f MB, vocab %d', dir, #docs, bytes / 1e6, vocab))
print(string.format('train: %.2f s on %.1f MB with %d threads%s', train_s, bytes / 1e6, threads,
    bytes < 49.5e6 and string.format(' (scaled to 50 MB: %.2f s)', train_s * 50e6 / bytes) or ''))
L.print_table({ 'threads', 'MB', 'encode s', 'MB/s' }, rows, { '%d', '%.1f', '%.3f', '%.1f' })
print(string.format('compression: %.2f bytes per token', bytes / ids:numel()))
print(L.json {
    bench = 'tok', corpus_mb = L.round(bytes / 1e6, 2), vocab = vocab, threads = threads,
    tok_train_seconds = L.round(train_s, 3),
    tok_train_seconds_50mb = L.round(train_s * 50e6 / bytes, 3),
    tok_train_50mb_extrapolated = bytes < 49.5e6,
    tok_encode_mb_per_s = L.round(enc[threads], 2),
    tok_encode_mb_per_s_1thread = L.round(enc[1], 2),
    bytes_per_token = L.round(bytes / ids:numel(), 3),
})
