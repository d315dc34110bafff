-- lua/nanochat/corpus.lua — `nc.corpus`: a Rust training corpus built from Debian's
-- librust-*-dev packages (and optionally the rustc source tree in rust-web-src).
--
-- Promise (the contract in INTERFACES.md):
--   corpus.cache_dir()         -> cache root ($NANOCHAT_CACHE, $XDG_CACHE_HOME/nanochat or
--                                 ~/.cache/nanochat), created on demand
--   corpus.default_dir()       -> directory of the small built-in corpus, built on first use
--                                 (apt-get download of a pinned crate list) and cached
--   corpus.files(dir, split)   -> sorted part paths of split 'train' or 'val'
--   corpus.docs(dir, split)    -> iterator over the documents (strings) of a split
--   corpus.build(opts)         -> manifest table; writes opts.out (layout below)
-- A corpus directory holds manifest.json, train/part-NNNNN.docs and val/part-NNNNN.docs: UTF-8
-- documents, each followed by exactly one NUL byte (never inside one), parts ~16 MB split at
-- document boundaries. Each document starts with `// crate: NAME VERSION, path: REL\n`.
--
-- Packages are fetched with `apt-get download` into <cache>/debian/debs and unpacked with
-- `dpkg-deb -x` into <cache>/debian/x/<package> — nothing is installed system-wide, no root needed.
-- Filters (in this order, first match names the reason): excluded crates (*-sys, winapi and its
-- target crates, windows*), files > 200 KB, empty files, files containing NUL, invalid UTF-8,
-- a line over 1000 bytes, a content duplicate of a file already taken. Files are visited in a
-- fixed order (crate name ascending, version descending, path ascending), so the newest version
-- of a duplicated file is the one kept. Dedup happens before the split; the split key is
-- "crate/path" without the version, so every version of a file lands on the same side.
local ffi = require 'ffi'
local bit = require 'bit'
local json = require 'dkjson'
local crate_lists = require 'nanochat.corpus_crates'

pcall(ffi.cdef, 'int getpid(void);')

local M = {}

M.VERSION = 1
M.MAX_FILE_BYTES = 200 * 1024
M.MAX_LINE_BYTES = 1000
M.PART_BYTES = 16 * 1024 * 1024
M.VAL_FRACTION = 0.01

-- ---- small helpers -------------------------------------------------------------------------
local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end
M.shell_quote = q

-- run a shell command; returns ok (exit status 0), combined output
local function run(cmd)
    local p = assert(io.popen('(' .. cmd .. ') 2>&1; echo "__rc=$?"', 'r'))
    local out = p:read('*a')
    p:close()
    local rc = tonumber(out:match('__rc=(%d+)%s*$')) or 1
    out = out:gsub('__rc=%d+%s*$', '')
    return rc == 0, out, rc
end

local function lines_of(cmd)
    local ok, out = run(cmd)
    local t = {}
    for l in out:gmatch('[^\n]+') do t[#t + 1] = l end
    return t, ok
end

local function exists(path)
    local f = io.open(path, 'rb')
    if f then f:close(); return true end
    return false
end

local function is_dir(path) return (run('test -d ' .. q(path))) end

local function mkdir_p(path)
    local ok, out = run('mkdir -p ' .. q(path))
    if not ok then error('nc.corpus: cannot create directory ' .. path .. ': ' .. out, 0) end
    return path
end

local files = require 'nanochat.io'
local read_file, write_file = files.read_file, files.write_file


local function obj(t) return setmetatable(t or {}, { __jsontype = 'object' }) end

-- ---- hashing and per-file checks (one FFI pass; LuaJIT compiles it to ~600 MB/s) ------------
local PRIME = 0x100000001b3ULL
local BASIS = 0xcbf29ce484222325ULL
local bxor = bit.bxor

-- FNV-1a 64 of a string -> uint64 cdata
function M.fnv1a64(s)
    local p = ffi.cast('const uint8_t *', s)
    local h = BASIS
    for i = 0, #s - 1 do h = bxor(h, p[i]) * PRIME end
    return h
end

-- strict UTF-8 validation (no overlongs, no surrogates, <= U+10FFFF)
local function valid_utf8(s)
    local p = ffi.cast('const uint8_t *', s)
    local n, i = #s, 0
    while i < n do
        local c = p[i]
        if c < 0x80 then
            i = i + 1
        else
            local need, lo, hi
            if c >= 0xC2 and c <= 0xDF then need, lo, hi = 1, 0x80, 0xBF
            elseif c == 0xE0 then need, lo, hi = 2, 0xA0, 0xBF
            elseif c == 0xED then need, lo, hi = 2, 0x80, 0x9F
            elseif c >= 0xE1 and c <= 0xEF then need, lo, hi = 2, 0x80, 0xBF
            elseif c == 0xF0 then need, lo, hi = 3, 0x90, 0xBF
            elseif c >= 0xF1 and c <= 0xF3 then need, lo, hi = 3, 0x80, 0xBF
            elseif c == 0xF4 then need, lo, hi = 3, 0x80, 0x8F
            else return false end
            if i + need >= n then return false end
            local c1 = p[i + 1]
            if c1 < lo or c1 > hi then return false end
            for k = 2, need do
                local ck = p[i + k]
                if ck < 0x80 or ck > 0xBF then return false end
            end
            i = i + need + 1
        end
    end
    return true
end
M.valid_utf8 = valid_utf8

-- check(content) -> reason or nil, hash (uint64). reason is one of 'empty', 'nul', 'utf8',
-- 'long_line'; the size limit is checked by the caller before reading.
function M.check(s)
    local n = #s
    if n == 0 then return 'empty' end
    local p = ffi.cast('const uint8_t *', s)
    local h = BASIS
    local line_start, max_line, nul, high = 0, 0, false, false
    for i = 0, n - 1 do
        local b = p[i]
        h = bxor(h, b) * PRIME
        if b < 0x20 then
            if b == 10 then
                if i - line_start > max_line then max_line = i - line_start end
                line_start = i + 1
            elseif b == 0 then
                nul = true
            end
        elseif b >= 0x80 then
            high = true
        end
    end
    if n - line_start > max_line then max_line = n - line_start end
    if nul then return 'nul', h end
    if high and not valid_utf8(s) then return 'utf8', h end
    if max_line > M.MAX_LINE_BYTES then return 'long_line', h end
    return nil, h
end

-- ---- split ----------------------------------------------------------------------------------
-- split_of(crate, path, fraction) -> 'val' when fnv1a64(crate .. '/' .. path) % 10000 falls below
-- round(fraction * 10000), else 'train'. The version is not part of the key.
function M.split_key(crate, path) return crate .. '/' .. path end
function M.split_bucket(crate, path)
    return tonumber(M.fnv1a64(M.split_key(crate, path)) % 10000ULL)
end
function M.split_of(crate, path, fraction)
    local cut = math.floor((fraction or M.VAL_FRACTION) * 10000 + 0.5)
    return M.split_bucket(crate, path) < cut and 'val' or 'train'
end

-- ---- crate names, packages ------------------------------------------------------------------
-- excluded_crate(name) -> reason or nil: generated bindings / platform tables
function M.excluded_crate(name)
    local n = name:lower():gsub('_', '-')
    if n:match('%-sys$') then return 'sys_crate' end
    if n == 'winapi' or n:match('^winapi%-.*windows%-gnu$') then return 'winapi' end
    if n:match('^windows') then return 'windows' end
    return nil
end

-- package name of a crate name, a package name or 'rust-web-src'
function M.package_of(name)
    name = name:match('^%s*(.-)%s*$')
    if name == 'rust-web-src' or name:match('^librust%-.+%-dev$') then return name end
    return 'librust-' .. name:lower():gsub('_', '-') .. '-dev'
end

local function crate_of_package(pkg) return pkg:match('^librust%-(.+)%-dev$') end

local function all_packages()
    local names = lines_of('apt-cache pkgnames librust- 2>/dev/null')
    local t = {}
    for _, n in ipairs(names) do
        if n:match('^librust%-[%w%.%-]+%-dev$') and not n:find('+', 1, true) then t[#t + 1] = n end
    end
    table.sort(t)
    return t
end

-- add the librust-*-dev dependencies (recursively) of a package list
local function with_deps(pkgs, known)
    local set, out = {}, {}
    local function add(p) if not set[p] then set[p] = true; out[#out + 1] = p end end
    for _, p in ipairs(pkgs) do add(p) end
    local args = {}
    for _, p in ipairs(pkgs) do if known[p] then args[#args + 1] = q(p) end end
    if #args == 0 then return out end
    local _, text = run('apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts '
        .. '--no-breaks --no-replaces --no-enhances ' .. table.concat(args, ' '))
    for name in text:gmatch('librust%-[%w%.%+%-]-%-dev') do
        local base = name:gsub('%+.*%-dev$', '-dev')
        if known[base] then add(base) end
    end
    table.sort(out)
    return out
end

-- packages(spec, opts) -> sorted package list. spec: 'default', 'small', 'all', a file of names
-- (whitespace separated, '#' comments; crate names or package names) or a Lua list of names.
function M.packages(spec, opts)
    opts = opts or {}
    local names
    if type(spec) == 'table' then
        names = spec
    elseif spec == nil or spec == 'default' or spec == 'small' then
        names = crate_lists[spec or 'default']
    elseif spec == 'all' then
        names = all_packages()
    else
        local text, err = read_file(spec)
        if not text then error('nc.corpus: cannot read crate list ' .. tostring(spec) .. ': ' .. tostring(err), 0) end
        names = {}
        for line in text:gmatch('[^\n]+') do
            for w in line:gsub('#.*', ''):gmatch('%S+') do names[#names + 1] = w end
        end
        if #names == 0 then error('nc.corpus: crate list ' .. spec .. ' names no crates', 0) end
    end
    local set, pkgs = {}, {}
    for _, n in ipairs(names) do
        local p = M.package_of(n)
        if not set[p] then set[p] = true; pkgs[#pkgs + 1] = p end
    end
    if opts.deps then
        local known = {}
        for _, p in ipairs(all_packages()) do known[p] = true end
        pkgs = with_deps(pkgs, known)
    end
    if opts.rustc_src and not set['rust-web-src'] then pkgs[#pkgs + 1] = 'rust-web-src' end
    table.sort(pkgs)
    return pkgs
end

-- ---- cache and fetching ---------------------------------------------------------------------
function M.cache_dir()
    local root = os.getenv('NANOCHAT_CACHE')
    if not root or root == '' then
        local xdg = os.getenv('XDG_CACHE_HOME')
        if xdg and xdg ~= '' then root = xdg .. '/nanochat'
        else root = (os.getenv('HOME') or '/tmp') .. '/.cache/nanochat' end
    end
    return mkdir_p(root)
end

local OFFLINE_HELP = [[
Building the corpus needs `apt-get download` (Debian bookworm package lists and network access).
If this machine is offline, build a corpus elsewhere with
    nanochat tools/corpus.lua crates=small out=DIR
copy DIR here and pass it explicitly (e.g. corpus=DIR), or place the .deb files in
%s/debian/debs/ (or a built corpus at %s) and run again.]]

-- fetch(pkgs, opts) -> roots (list of {package, root, deb}), failed (list of {package, reason}).
-- Downloads missing .deb files into <cache>/debian/debs and extracts each into
-- <cache>/debian/x/<package>. Packages that fail are reported and skipped.
function M.fetch(pkgs, opts)
    opts = opts or {}
    local log = opts.log or function() end
    local cache = opts.cache or M.cache_dir()
    local debs = mkdir_p(cache .. '/debian/debs')
    local xdir = mkdir_p(cache .. '/debian/x')
    local function cached()
        local have = {}
        for _, f in ipairs(lines_of('ls -1 ' .. q(debs))) do
            local p = f:match('^([^_]+)_.*%.deb$')
            if p then have[p] = f end
        end
        return have
    end
    local have = cached()
    -- opts.timeout: seconds allowed per apt-get call (coreutils timeout), so no network cannot hang
    local apt = (opts.timeout and ('timeout ' .. math.floor(opts.timeout) .. ' ') or '') .. 'apt-get download -q '
    local failed, need = {}, {}
    for _, p in ipairs(pkgs) do
        if not p:match('^[%w%.%+%-]+$') then
            failed[#failed + 1] = { package = p, reason = 'invalid package name' }
        elseif not have[p] then
            need[#need + 1] = p
        end
    end
    local first_error
    if #need > 0 then
        local ok_apt, avail = run('apt-cache show --no-all-versions ' .. table.concat(need, ' ') .. ' 2>&1 | grep "^Package: "')
        local known = {}
        for name in avail:gmatch('Package: (%S+)') do known[name] = true end
        local todo = {}
        for _, p in ipairs(need) do
            if known[p] then todo[#todo + 1] = p
            else failed[#failed + 1] = { package = p, reason = 'not in the apt package lists' } end
        end
        if not ok_apt and #todo == 0 and #need > 0 then
            first_error = 'apt-cache knows none of the packages (run `apt-get update`?)'
        end
        log(string.format('downloading %d packages (%d cached)', #todo, #pkgs - #need))
        local B = 64
        for i = 1, #todo, B do
            local batch = {}
            for j = i, math.min(i + B - 1, #todo) do batch[#batch + 1] = todo[j] end
            local ok, out = run('cd ' .. q(debs) .. ' && ' .. apt .. table.concat(batch, ' '))
            if not ok then
                -- retry one by one so one bad package does not sink the batch
                for _, p in ipairs(batch) do
                    local ok1, out1, rc1 = run('cd ' .. q(debs) .. ' && ' .. apt .. p)
                    if not ok1 then
                        local msg = (out1:match('E: [^\n]*') or out1:match('[^\n]+') or 'failed'):sub(1, 300)
                        if rc1 == 124 then msg = 'timed out after ' .. opts.timeout .. ' s' end
                        first_error = first_error or msg
                        failed[#failed + 1] = { package = p, reason = 'apt-get download: ' .. msg }
                    end
                end
            end
            log(string.format('  downloaded %d/%d', math.min(i + B - 1, #todo), #todo))
        end
        have = cached()
    end
    local roots = {}
    for _, p in ipairs(pkgs) do
        if have[p] then
            local root = xdir .. '/' .. p
            local marker = root .. '/.nc-extracted'
            local deb = have[p]
            if read_file(marker) ~= deb then
                run('rm -rf ' .. q(root))
                mkdir_p(root)
                local ok, out = run('dpkg-deb -x ' .. q(debs .. '/' .. deb) .. ' ' .. q(root))
                if ok then write_file(marker, deb)
                else failed[#failed + 1] = { package = p, reason = 'dpkg-deb -x: ' .. out:sub(1, 300) } end
            end
            if exists(marker) then roots[#roots + 1] = { package = p, root = root, deb = deb } end
        end
    end
    table.sort(failed, function(a, b) return a.package < b.package end)
    if #roots == 0 and #pkgs > 0 then
        error(string.format('nc.corpus: none of the %d requested packages could be downloaded%s.\n' .. OFFLINE_HELP,
            #pkgs, first_error and (' (' .. first_error .. ')') or '', cache, cache .. '/corpus'), 0)
    end
    return roots, failed
end

-- ---- scanning extracted packages ------------------------------------------------------------
local function parse_crate_dir(dirname)
    local name, ver = dirname:match('^(.-)%-(%d+%.%d+%.%d+.*)$')
    if not name then name, ver = dirname:match('^(.+)%-(%d[%w%.%+%-]*)$') end
    return name or dirname, ver or '0'
end

-- License: fields of a DEP-5 copyright file, unique, in order of appearance
function M.licenses_of(copyright_text)
    local seen, out = {}, {}
    for v in (copyright_text or ''):gmatch('\n[Ll]icense:[ \t]*([^\n]*)') do
        v = v:match('^%s*(.-)%s*$')
        if v ~= '' and not seen[v] then seen[v] = true; out[#out + 1] = v end
    end
    local first = (copyright_text or ''):match('^[Ll]icense:[ \t]*([^\n]*)')
    if first and first ~= '' and not seen[first] then table.insert(out, 1, first) end
    return out
end

local function copyright_of(root, pkg)
    local t = read_file(root .. '/usr/share/doc/' .. pkg .. '/copyright')
    if t then return t end
    local found = lines_of('find ' .. q(root .. '/usr/share/doc') .. ' -name copyright -type f 2>/dev/null | sort | head -1')
    return found[1] and read_file(found[1]) or nil
end

-- paths under the rustc tree that are not good training text
local function rustc_skip(rel)
    return rel:match('^tests/') or rel:match('/tests/ui/') or rel:match('^src/test/') ~= nil
end

-- scan(roots) -> list of units {crate, version, package, dir, files = {rel...}, licenses}
-- roots: list of {package=, root=} (root = an extracted .deb directory).
function M.scan(roots)
    local units = {}
    for _, r in ipairs(roots) do
        local pkg, root = r.package, r.root
        local licenses = M.licenses_of(copyright_of(root, pkg))
        local files = lines_of('cd ' .. q(root) .. ' && find usr/share/cargo/registry usr/src -type f -name "*.rs" 2>/dev/null')
        local by_dir = {}
        for _, f in ipairs(files) do
            local dir, rel = f:match('^usr/share/cargo/registry/([^/]+)/(.+)$')
            local kind = 'crate'
            if not dir then dir, rel = f:match('^usr/src/(rustc%-[^/]+)/(.+)$'); kind = 'rustc' end
            if dir and not (kind == 'rustc' and rustc_skip(rel)) then
                local u = by_dir[dir]
                if not u then
                    local name, ver = parse_crate_dir(dir)
                    u = { crate = name, version = ver, package = pkg, dir = root .. '/' ..
                        (kind == 'crate' and 'usr/share/cargo/registry/' or 'usr/src/') .. dir,
                        files = {}, licenses = licenses, deb = r.deb }
                    by_dir[dir] = u
                    units[#units + 1] = u
                end
                u.files[#u.files + 1] = rel
            end
        end
        for _, u in pairs(by_dir) do table.sort(u.files) end
    end
    return units
end

-- natural version comparison: true when a > b
local function version_gt(a, b)
    local ta, tb = {}, {}
    for x in a:gmatch('%w+') do ta[#ta + 1] = x end
    for x in b:gmatch('%w+') do tb[#tb + 1] = x end
    for i = 1, math.max(#ta, #tb) do
        local x, y = ta[i], tb[i]
        if x == nil then return false end
        if y == nil then return true end
        local nx, ny = tonumber(x), tonumber(y)
        if nx and ny then
            if nx ~= ny then return nx > ny end
        elseif x ~= y then
            return x > y
        end
    end
    return false
end
M.version_gt = version_gt

-- ---- writing parts --------------------------------------------------------------------------
local function part_writer(dir, part_bytes)
    mkdir_p(dir)
    local w = { dir = dir, n = 0, f = nil, cur = 0, docs = 0, bytes = 0 }
    function w:add(doc)
        if self.f and self.cur > 0 and self.cur + #doc + 1 > part_bytes then
            self.f:close(); self.f = nil
        end
        if not self.f then
            local path = string.format('%s/part-%05d.docs', self.dir, self.n)
            self.f = assert(io.open(path, 'wb'))
            self.n, self.cur = self.n + 1, 0
        end
        self.f:write(doc, '\0')
        self.cur = self.cur + #doc + 1
        self.docs, self.bytes = self.docs + 1, self.bytes + #doc
    end
    function w:close() if self.f then self.f:close(); self.f = nil end end
    return w
end

-- ---- build ----------------------------------------------------------------------------------
-- header line of a document
function M.header(crate, version, path)
    return string.format('// crate: %s %s, path: %s\n', crate, version, path)
end

-- build(opts) -> manifest. opts:
--   out = DIR (required); crates = 'default'|'small'|'all'|FILE|list; rustc_src = false;
--   deps = false (also take librust dependencies); roots = list of {package=, root=} or
--   extracted = DIR (each subdirectory an extracted .deb) instead of downloading;
--   val_fraction = 0.01; part_bytes = 16 MiB; cache = root; log = function(msg) | quiet = true;
--   timeout = seconds per apt-get download call (default: none).
function M.build(opts)
    opts = opts or {}
    local out = opts.out or error('nc.corpus.build: out=DIR is required', 0)
    local t0 = os.time()
    local log = opts.log or (opts.quiet and function() end) or function(m) io.stderr:write('corpus: ', m, '\n') end
    local frac = opts.val_fraction or M.VAL_FRACTION
    local part_bytes = opts.part_bytes or M.PART_BYTES
    local roots, failed, excluded_pkgs = opts.roots, {}, {}
    local requested
    if not roots and opts.extracted then
        roots = {}
        for _, d in ipairs(lines_of('ls -1 ' .. q(opts.extracted))) do
            if is_dir(opts.extracted .. '/' .. d) then roots[#roots + 1] = { package = d, root = opts.extracted .. '/' .. d } end
        end
        if #roots == 0 then error('nc.corpus.build: no package directories in ' .. opts.extracted, 0) end
    end
    if not roots then
        local pkgs = M.packages(opts.crates or 'default', { deps = opts.deps, rustc_src = opts.rustc_src })
        requested = #pkgs
        local keep = {}
        for _, p in ipairs(pkgs) do
            local c = crate_of_package(p)
            local why = c and M.excluded_crate(c)
            if why then excluded_pkgs[#excluded_pkgs + 1] = { package = p, reason = why }
            else keep[#keep + 1] = p end
        end
        roots, failed = M.fetch(keep, { cache = opts.cache, log = log, timeout = opts.timeout })
        for _, f in ipairs(failed) do log('skipped package ' .. f.package .. ': ' .. f.reason) end
    end
    log(string.format('scanning %d packages', #roots))
    local units = M.scan(roots)
    table.sort(units, function(a, b)
        if a.crate ~= b.crate then return a.crate < b.crate end
        if a.version ~= b.version then return version_gt(a.version, b.version) end
        return a.package < b.package
    end)

    local tmp = out .. '.tmp-' .. ffi.C.getpid()
    run('rm -rf ' .. q(tmp))
    mkdir_p(tmp)
    local writers = { train = part_writer(tmp .. '/train', part_bytes), val = part_writer(tmp .. '/val', part_bytes) }
    local skipped = obj({ excluded_crate = 0, large = 0, empty = 0, nul = 0, utf8 = 0, long_line = 0, duplicate = 0 })
    local skipped_files = {}
    local seen = {}
    local files_seen, bytes_seen = 0, 0
    local crates_out, license_counts = {}, obj()
    local pending_val = nil   -- smallest-bucket train doc, moved to val if val would be empty

    for _, u in ipairs(units) do
        local cr = { name = u.crate, version = u.version, package = u.package, files = 0, bytes = 0,
                     licenses = u.licenses }
        local why_crate = M.excluded_crate(u.crate)
        for _, rel in ipairs(u.files) do
            files_seen = files_seen + 1
            local path = u.dir .. '/' .. rel
            local reason, h, s
            if why_crate then
                reason = 'excluded_crate'
            else
                local f = io.open(path, 'rb')
                if not f then
                    reason = 'unreadable'
                else
                    local size = f:seek('end')
                    bytes_seen = bytes_seen + size
                    if size > M.MAX_FILE_BYTES then
                        reason = 'large'
                    else
                        f:seek('set', 0)
                        s = f:read('*a')
                        reason, h = M.check(s)
                    end
                    f:close()
                end
            end
            if not reason then
                local key = bit.tohex(h)
                if seen[key] then reason = 'duplicate' else seen[key] = true end
            end
            if reason then
                skipped[reason] = (skipped[reason] or 0) + 1
                if reason ~= 'duplicate' and reason ~= 'excluded_crate' then
                    local entry = { crate = u.crate, version = u.version, path = rel, reason = reason }
                    if #skipped_files < 5000 then skipped_files[#skipped_files + 1] = entry end
                    if reason == 'utf8' then log(string.format('skipped non-UTF-8 file %s %s %s', u.crate, u.version, rel)) end
                end
            else
                local doc = M.header(u.crate, u.version, rel) .. s
                local split = M.split_of(u.crate, rel, frac)
                if split == 'train' and frac > 0 and writers.val.docs == 0 then
                    local b = M.split_bucket(u.crate, rel)
                    if not pending_val or b < pending_val.bucket then pending_val = { bucket = b, doc = doc } end
                end
                writers[split]:add(doc)
                cr.files, cr.bytes = cr.files + 1, cr.bytes + #doc
            end
        end
        if cr.files > 0 then
            crates_out[#crates_out + 1] = cr
            for _, l in ipairs(u.licenses) do license_counts[l] = (license_counts[l] or 0) + 1 end
        end
    end
    writers.train:close()
    writers.val:close()

    -- val empty but the corpus is not: move the train document with the smallest split bucket
    -- (deterministic) so consumers always get a validation split.
    local moved = nil
    if writers.val.docs == 0 and pending_val and writers.train.docs >= 2 then
        moved = pending_val
        local target = moved.doc
        -- rewrite the train parts without that document
        local parts = M.files(tmp, 'train')
        local docs = {}
        for _, p in ipairs(parts) do
            local data = read_file(p)
            local pos = 1
            while pos <= #data do
                local e = data:find('\0', pos, true)
                local d = data:sub(pos, e - 1)
                if d ~= target then docs[#docs + 1] = d end
                pos = e + 1
            end
            os.remove(p)
        end
        local tw = part_writer(tmp .. '/train', part_bytes)
        for _, d in ipairs(docs) do tw:add(d) end
        tw:close()
        writers.train = tw
        writers.val:add(target)
        writers.val:close()
        log('val split was empty: moved one document (smallest split bucket) to val')
    end

    local total_docs = writers.train.docs + writers.val.docs
    if total_docs == 0 then
        run('rm -rf ' .. q(tmp))
        error('nc.corpus.build: no documents survived the filters (' .. #roots .. ' packages scanned)', 0)
    end
    local cut = math.floor(frac * 10000 + 0.5)
    local licenses = {}
    for _, cr in ipairs(crates_out) do
        licenses[#licenses + 1] = { package = cr.package, crate = cr.name, version = cr.version, licenses = cr.licenses }
    end
    local manifest = {
        format = 'nanochat-corpus', version = M.VERSION,
        source = 'Debian 12 bookworm librust-*-dev packages' .. (opts.rustc_src and ' + rust-web-src' or ''),
        request = { crates = type(opts.crates) == 'table' and 'list' or (opts.crates or (opts.extracted and 'extracted') or 'default'),
                    rustc_src = opts.rustc_src and true or false, deps = opts.deps and true or false,
                    packages = requested or #roots },
        counts = {
            packages = #roots, crates = #crates_out, files_seen = files_seen,
            docs = total_docs, train_docs = writers.train.docs, val_docs = writers.val.docs,
            train_parts = writers.train.n, val_parts = writers.val.n, skipped = skipped,
        },
        bytes = {
            rs_seen = bytes_seen, docs = writers.train.bytes + writers.val.bytes,
            train = writers.train.bytes, val = writers.val.bytes,
        },
        split = {
            rule = string.format('val if fnv1a64(crate .. "/" .. path) %% 10000 < %d, else train '
                .. '(path relative to the crate root, version not included; content dedup first)', cut),
            val_fraction = frac, buckets = 10000, val_cut = cut,
            fallback = moved and ('val was empty: moved ' .. moved.doc:match('^[^\n]*') .. ' from train') or nil,
        },
        filters = {
            excluded_crates = '*-sys, winapi, winapi-*-windows-gnu, windows*',
            max_file_bytes = M.MAX_FILE_BYTES, max_line_bytes = M.MAX_LINE_BYTES,
            reject = 'empty files, files containing NUL, invalid UTF-8, content duplicates (fnv1a64, first in crate asc / version desc / path asc order kept)',
            header = '// crate: NAME VERSION, path: REL',
        },
        document_separator = 'NUL', part_bytes = part_bytes,
        crates = crates_out,
        licenses = licenses,
        license_counts = license_counts,
        excluded_packages = excluded_pkgs,
        failed_packages = failed,
        skipped_files = skipped_files,
        seconds = os.time() - t0,
    }
    local keyorder = { 'format', 'name', 'crate', 'version', 'package', 'path', 'reason', 'source', 'request', 'counts', 'bytes', 'split', 'filters',
        'document_separator', 'part_bytes', 'crates', 'licenses', 'license_counts', 'excluded_packages',
        'failed_packages', 'skipped_files', 'seconds',
        'files',
        'packages', 'files_seen', 'docs', 'train_docs', 'val_docs', 'train_parts', 'val_parts', 'skipped',
        'excluded_crate', 'large', 'empty', 'nul', 'utf8', 'long_line', 'duplicate',
        'rs_seen', 'train', 'val', 'rule', 'val_fraction', 'buckets', 'val_cut', 'fallback' }
    write_file(tmp .. '/manifest.json', json.encode(manifest, { indent = true, keyorder = keyorder }) .. '\n')

    -- move into place: the manifest appears last, so a directory with manifest.json is complete
    if is_dir(out) then
        run('rm -rf ' .. q(out .. '/train') .. ' ' .. q(out .. '/val') .. ' ' .. q(out .. '/manifest.json'))
        local ok, o = run('mv ' .. q(tmp .. '/train') .. ' ' .. q(tmp .. '/val') .. ' ' .. q(out .. '/')
            .. ' && mv ' .. q(tmp .. '/manifest.json') .. ' ' .. q(out .. '/manifest.json') .. ' && rmdir ' .. q(tmp))
        if not ok then error('nc.corpus.build: cannot move the corpus into ' .. out .. ': ' .. o, 0) end
    else
        local parent = out:match('^(.*)/[^/]+$')
        if parent and parent ~= '' then mkdir_p(parent) end
        local ok, err = os.rename(tmp, out)
        if not ok then
            if exists(out .. '/manifest.json') then run('rm -rf ' .. q(tmp))   -- another process won
            else error('nc.corpus.build: cannot rename ' .. tmp .. ' to ' .. out .. ': ' .. tostring(err), 0) end
        end
    end
    log(string.format('%d docs (%d train, %d val), %.2f MB in %d s -> %s', total_docs, writers.train.docs,
        writers.val.docs, manifest.bytes.docs / 1e6, manifest.seconds, out))
    return manifest
end

-- ---- reading a corpus -----------------------------------------------------------------------
local function check_split(split)
    if split ~= 'train' and split ~= 'val' then
        error("nc.corpus: split must be 'train' or 'val', got " .. tostring(split), 0)
    end
end

function M.files(dir, split)
    check_split(split)
    if not is_dir(dir) then error('nc.corpus.files: no corpus directory ' .. tostring(dir), 0) end
    local t = {}
    for _, f in ipairs(lines_of('ls -1 ' .. q(dir .. '/' .. split) .. ' 2>/dev/null')) do
        if f:match('^part%-%d+%.docs$') then t[#t + 1] = dir .. '/' .. split .. '/' .. f end
    end
    table.sort(t)
    return t
end

function M.manifest(dir)
    local text = read_file(dir .. '/manifest.json')
    if not text then error('nc.corpus: ' .. dir .. ' has no manifest.json (not a corpus directory?)', 0) end
    local m, _, err = json.decode(text, 1, nil)
    if type(m) ~= 'table' then error('nc.corpus: bad ' .. dir .. '/manifest.json: ' .. tostring(err), 0) end
    return m
end

-- iterator over the documents of a split (one part in memory at a time)
function M.docs(dir, split)
    local parts = M.files(dir, split)
    local pi, data, pos = 0, nil, 1
    return function()
        while true do
            if data and pos <= #data then
                local e = data:find('\0', pos, true)
                if not e then
                    error('nc.corpus: ' .. parts[pi] .. ' is truncated (last document has no NUL terminator)', 0)
                end
                local d = data:sub(pos, e - 1)
                pos = e + 1
                return d
            end
            pi = pi + 1
            if pi > #parts then data = nil; return nil end
            local err
            data, err = read_file(parts[pi])
            if not data then error('nc.corpus: cannot read ' .. parts[pi] .. ': ' .. tostring(err), 0) end
            pos = 1
        end
    end
end

-- ---- the built-in default -------------------------------------------------------------------
-- directory name of the small default: its crate list's hash, so editing the list rebuilds
function M.default_name()
    return 'small-v' .. M.VERSION .. '-' .. bit.tohex(M.fnv1a64(table.concat(crate_lists.small, ' '))):sub(1, 8)
end

function M.default_dir(opts)
    opts = opts or {}
    local cache = opts.cache or M.cache_dir()
    local dir = cache .. '/corpus/' .. M.default_name()
    if exists(dir .. '/manifest.json') then return dir end
    local log = opts.log or (opts.quiet and function() end) or function(m) io.stderr:write('corpus: ', m, '\n') end
    log('building the built-in default corpus (' .. #crate_lists.small .. ' crates) in ' .. dir)
    M.build({ out = dir, crates = 'small', cache = cache, log = log })
    return dir
end

return M
