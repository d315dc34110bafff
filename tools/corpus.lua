-- tools/corpus.lua — build a Rust corpus directory from Debian librust-*-dev packages.
--
-- usage: nanochat tools/corpus.lua [crates=default|small|all|FILE] [rustc_src=true] [deps=true]
--                                  [val=0.01] [part_mb=16] [timeout=SECONDS] out=DIR
--   crates=default  the curated list (lua/nanochat/corpus_crates.lua, ~270 popular crates)
--   crates=small    the built-in small default (what corpus.default_dir() builds)
--   crates=all      every librust-*-dev package in the apt lists
--   crates=FILE     names from a file (crate or package names, whitespace separated, # comments)
--   rustc_src=true  add the rustc source tree from rust-web-src
--   deps=true       also take the librust dependencies of the listed crates
-- Downloads go to <cache>/debian (cache: $NANOCHAT_CACHE, $XDG_CACHE_HOME/nanochat, ~/.cache/nanochat).
local corpus = require 'nanochat.corpus'
local A = rawget(_G, 'ARGS') or {}
local known = { crates = true, rustc_src = true, deps = true, val = true, part_mb = true, out = true, quiet = true,
                timeout = true }
for k in pairs(A) do
    if not known[k] then error('tools/corpus.lua: unknown setting ' .. tostring(k), 0) end
end
if not A.out then error('tools/corpus.lua: out=DIR is required (see the usage at the top of this file)', 0) end
local t0 = os.clock()
local m = corpus.build({
    out = tostring(A.out), crates = A.crates and tostring(A.crates) or 'default',
    rustc_src = A.rustc_src == true, deps = A.deps == true, val_fraction = A.val,
    part_bytes = A.part_mb and math.floor(A.part_mb * 1024 * 1024) or nil, quiet = A.quiet == true,
    timeout = A.timeout,
})
local c = m.counts
print(string.format('%s: %d crates, %d docs (%d train / %d val), %.2f MB of documents (%.2f MB .rs seen), %d failed packages, %d s wall, %.1f s cpu',
    A.out, c.crates, c.docs, c.train_docs, c.val_docs, m.bytes.docs / 1e6, m.bytes.rs_seen / 1e6,
    #m.failed_packages, m.seconds, os.clock() - t0))
local s = {}
for k, v in pairs(c.skipped) do if v > 0 then s[#s + 1] = k .. '=' .. v end end
table.sort(s)
print('skipped: ' .. table.concat(s, ' '))
