-- tools/bench/corpus.lua — is LuaJIT fast enough for the corpus's per-file work?
-- Times nc.corpus.check (one FFI byte loop: FNV-1a 64 content hash, NUL, longest line, non-ASCII
-- flag; strict UTF-8 validation on top when the text is not ASCII) against two baselines in C
-- inside LuaJIT: string.find of '\0' (memchr: the floor for touching every byte) and the Lua
-- pattern '%z' (what one plain-Lua pattern scan over the text costs).
-- usage: nanochat tools/bench/corpus.lua [corpus=DIR] [mb=16]
-- Text: the first part of DIR's train split when given, else a synthetic Rust-like text with
-- some non-ASCII. Last line: JSON {"check_mb_per_s", "memchr_mb_per_s", "lua_pattern_mb_per_s", ...}.
package.path = 'lua/?.lua;lua/?/init.lua;' .. package.path
local L = require 'tools.bench.lib'
local corpus = require 'nanochat.corpus'
local A = L.parse_args()
local mb = A.mb or 16

local text
if A.corpus then
    local f = assert(io.open(corpus.files(A.corpus, 'train')[1], 'rb'))
    text = f:read(mb * 1024 * 1024)
    f:close()
    text = text:gsub('%z', '\n')
else
    local unit = '/// Returns the sum — “résumé” ✓\npub fn add(a: u64, b: u64) -> u64 {\n    a.wrapping_add(b)\n}\n'
    text = string.rep(unit, math.floor(mb * 1024 * 1024 / #unit))
end
local n = #text

-- the start index varies per call so the JIT cannot hoist a loop-invariant search
local k = 0
local res = L.compare({
    function() assert(corpus.check(text) == nil) end,
    function() k = k % 2 + 1; assert(text:find('\0', k, true) == nil) end,
    function() k = k % 2 + 1; assert(text:find('%z', k) == nil) end,
}, { reps = 5, warmup = 1 })
local function mbs(r) return n / r.median / 1e6 end
L.print_table({ 'method', 'ms', 'MB/s' }, {
    { 'corpus.check (FFI loop + UTF-8)', res[1].median * 1e3, mbs(res[1]) },
    { 'string.find NUL (memchr)', res[2].median * 1e3, mbs(res[2]) },
    { "Lua pattern '%z'", res[3].median * 1e3, mbs(res[3]) },
}, { nil, '%.1f', '%.0f' })
print(L.json({ bytes = n, check_mb_per_s = L.round(mbs(res[1]), 1), memchr_mb_per_s = L.round(mbs(res[2]), 1),
    lua_pattern_mb_per_s = L.round(mbs(res[3]), 1) }))
