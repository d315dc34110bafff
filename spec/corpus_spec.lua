-- spec/corpus_spec.lua — nc.corpus: filters on the fixture packages under spec/fixtures/corpus
-- (extracted-.deb layouts: a normal crate with a long-line, a Latin-1, a NUL and an empty file,
-- two versions of one crate sharing a file, a -sys crate), the document header, split
-- determinism and disjointness, part layout, manifest counts and licenses, reading back, the
-- offline error, and one real `apt-get download` of three tiny crates (skipped without apt/network).
package.path = 'lua/?.lua;lua/?/init.lua;' .. package.path
local nc = require 'nanochat'
local corpus = nc.corpus
local json = require 'dkjson'
local ffi = require 'ffi'

pcall(ffi.cdef, 'int getpid(void); int setenv(const char *, const char *, int);')

local FIX = 'spec/fixtures/corpus'
local q = corpus.shell_quote

local function sh(cmd)
    local p = io.popen(cmd .. ' 2>&1; echo "rc=$?"')
    local out = p:read('*a')
    p:close()
    return out:match('rc=(%d+)%s*$') == '0', out
end
local function read(path)
    local f = assert(io.open(path, 'rb'))
    local s = f:read('*a')
    f:close()
    return s
end
local function write(path, s)
    local f = assert(io.open(path, 'wb'))
    f:write(s)
    f:close()
end

local tmp_root = os.tmpname()
os.remove(tmp_root)
assert(sh('mkdir -p ' .. q(tmp_root)))
local n_tmp = 0
local function tmpdir()
    n_tmp = n_tmp + 1
    local d = tmp_root .. '/d' .. n_tmp
    assert(sh('mkdir -p ' .. q(d)))
    return d
end

-- a package root holding one > 200 KB file, made at test time (not committed)
local function large_root()
    local r = tmpdir() .. '/librust-gamma-dev'
    local dir = r .. '/usr/share/cargo/registry/gamma-3.0.0/src'
    assert(sh('mkdir -p ' .. q(dir)))
    write(dir .. '/big.rs', string.rep('pub const X: u32 = 1; // padding padding padding\n', 5000))
    write(dir .. '/small.rs', 'pub fn gamma() {}\n')
    return { package = 'librust-gamma-dev', root = r }
end

local function fixture_roots(extra)
    local roots = {}
    for _, p in ipairs({ 'librust-alpha-dev', 'librust-beta-0.1-dev', 'librust-beta-dev', 'librust-foo-sys-dev' }) do
        roots[#roots + 1] = { package = p, root = FIX .. '/' .. p }
    end
    for _, r in ipairs(extra or {}) do roots[#roots + 1] = r end
    return roots
end

local function all_docs(dir)
    local t = {}
    for _, split in ipairs({ 'train', 'val' }) do
        for d in corpus.docs(dir, split) do t[#t + 1] = { split = split, doc = d, header = d:match('^[^\n]*') } end
    end
    return t
end

local function headers(dir)
    local t = {}
    for _, d in ipairs(all_docs(dir)) do t[#t + 1] = d.header end
    table.sort(t)
    return t
end

describe('corpus checks', function()
    it('validates UTF-8 strictly', function()
        assert.is_true(corpus.valid_utf8('plain ascii'))
        assert.is_true(corpus.valid_utf8('héllo — ✓ 😀 \u{10FFFF}'))
        assert.is_false(corpus.valid_utf8('caf\xe9'))           -- Latin-1
        assert.is_false(corpus.valid_utf8('\xc0\x80'))          -- overlong NUL
        assert.is_false(corpus.valid_utf8('\xe0\x80\xaf'))      -- overlong '/'
        assert.is_false(corpus.valid_utf8('\xed\xa0\x80'))      -- surrogate
        assert.is_false(corpus.valid_utf8('\xf4\x90\x80\x80'))  -- > U+10FFFF
        assert.is_false(corpus.valid_utf8('ok \xe2\x82'))       -- truncated at the end
        assert.is_false(corpus.valid_utf8('\x80'))              -- lone continuation
    end)

    it('names the reason a file is rejected', function()
        assert.is_nil((corpus.check('fn main() {}\n')))
        assert.are.equal('empty', (corpus.check('')))
        assert.are.equal('nul', (corpus.check('a\0b')))
        assert.are.equal('utf8', (corpus.check('// caf\xe9\n')))
        assert.are.equal('long_line', (corpus.check('x\n' .. string.rep('y', 1001) .. '\nz\n')))
        assert.is_nil((corpus.check('x\n' .. string.rep('y', 1000) .. '\n')))
        assert.are.equal('long_line', (corpus.check(string.rep('y', 1001))))   -- last line, no newline
        -- the content hash is FNV-1a 64 (reference value of 'a')
        local _, h = corpus.check('a')
        assert.are.equal('af63dc4c8601ec8c', require('bit').tohex(h))
    end)

    it('excludes generated-binding crates by name', function()
        for _, n in ipairs({ 'foo-sys', 'libgit2_sys', 'web-sys', 'winapi', 'winapi-x86_64-pc-windows-gnu',
                             'windows', 'windows-sys', 'windows_x86_64_msvc' }) do
            assert.is_truthy(corpus.excluded_crate(n), n)
        end
        for _, n in ipairs({ 'serde', 'winapi-util', 'sysinfo', 'system-deps' }) do
            assert.is_nil(corpus.excluded_crate(n), n)
        end
    end)

    it('maps crate names to Debian packages and reads crate lists', function()
        assert.are.equal('librust-serde-json-dev', corpus.package_of('serde_json'))
        assert.are.equal('librust-clap-3-dev', corpus.package_of('librust-clap-3-dev'))
        assert.are.equal('rust-web-src', corpus.package_of('rust-web-src'))
        local f = tmpdir() .. '/list.txt'
        write(f, '# popular\nserde_json  regex\nlibrust-either-dev # comment\nregex\n')
        assert.are.same({ 'librust-either-dev', 'librust-regex-dev', 'librust-serde-json-dev' }, corpus.packages(f))
        assert.are.same({ 'librust-either-dev', 'rust-web-src' }, corpus.packages({ 'either' }, { rustc_src = true }))
        local lists = require 'nanochat.corpus_crates'
        assert.is_true(#lists.small >= 10 and #lists.small <= 20)
        assert.is_true(#lists.default >= 150 and #lists.default <= 300)
        assert.has_error(function() corpus.packages(tmpdir() .. '/missing.txt') end)
    end)

    it('puts ~1% of paths in val, by a hash of crate/path without the version', function()
        local val = 0
        for i = 1, 20000 do
            if corpus.split_of('crate' .. (i % 37), 'src/file' .. i .. '.rs') == 'val' then val = val + 1 end
        end
        assert.is_true(val > 140 and val < 260, 'val count ' .. val)
        assert.are.equal(corpus.split_of('beta', 'src/lib.rs'), corpus.split_of('beta', 'src/lib.rs'))
        assert.are.equal('train', corpus.split_of('beta', 'src/lib.rs', 0))
        assert.are.equal('val', corpus.split_of('beta', 'src/lib.rs', 1))
    end)

    it('compares versions naturally', function()
        assert.is_true(corpus.version_gt('0.10.0', '0.9.1'))
        assert.is_true(corpus.version_gt('1.0.0', '0.99.0'))
        assert.is_false(corpus.version_gt('1.2.3', '1.2.3'))
        assert.is_true(corpus.version_gt('1.2.3', '1.2'))
    end)

    it('reads License: fields of a DEP-5 copyright file', function()
        local c = read(FIX .. '/librust-alpha-dev/usr/share/doc/librust-alpha-dev/copyright')
        assert.are.same({ 'MIT or Apache-2.0', 'MIT' }, corpus.licenses_of(c))
        assert.are.same({}, corpus.licenses_of(nil))
    end)
end)

describe('corpus build on fixtures', function()
    local out, m
    setup(function()
        out = tmpdir() .. '/c'
        m = corpus.build({ out = out, roots = fixture_roots({ large_root() }), quiet = true })
    end)

    it('keeps exactly the good documents, each with its header', function()
        assert.are.same({
            '// crate: alpha 1.0.0, path: src/lib.rs',
            '// crate: alpha 1.0.0, path: src/util.rs',
            '// crate: beta 0.1.5, path: src/lib.rs',
            '// crate: beta 0.2.0, path: examples/demo.rs',
            '// crate: beta 0.2.0, path: src/lib.rs',
            '// crate: beta 0.2.0, path: src/shared.rs',   -- newest version of the duplicate wins
            '// crate: gamma 3.0.0, path: src/small.rs',
        }, headers(out))
        for _, d in ipairs(all_docs(out)) do
            local crate, ver, path = d.header:match('^// crate: (%S+) (%S+), path: (.+)$')
            local reg = ({ alpha = 'librust-alpha-dev', gamma = nil })[crate]
            if crate == 'beta' then reg = ver == '0.2.0' and 'librust-beta-dev' or 'librust-beta-0.1-dev' end
            if reg then
                local src = read(FIX .. '/' .. reg .. '/usr/share/cargo/registry/' .. crate .. '-' .. ver .. '/' .. path)
                assert.are.equal(d.header .. '\n' .. src, d.doc)
            end
            assert.is_nil(d.doc:find('\0', 1, true))
        end
    end)

    it('counts every skip reason in the manifest', function()
        local c = m.counts
        assert.are.same({ excluded_crate = 1, large = 1, empty = 1, nul = 1, utf8 = 1, long_line = 1, duplicate = 1 },
            (function() local t = {} for k, v in pairs(c.skipped) do t[k] = v end return t end)())
        assert.are.equal(7, c.docs)
        assert.are.equal(7, c.train_docs + c.val_docs)
        assert.are.equal(14, c.files_seen)
        local reasons = {}
        for _, s in ipairs(m.skipped_files) do reasons[s.crate .. ' ' .. s.path] = s.reason end
        assert.are.same({ ['alpha src/latin1.rs'] = 'utf8', ['alpha src/nul.rs'] = 'nul',
            ['alpha src/table.rs'] = 'long_line', ['alpha src/empty.rs'] = 'empty',
            ['gamma src/big.rs'] = 'large' }, reasons)
    end)

    it('writes manifest.json with crates, bytes and licenses', function()
        local mj = json.decode(read(out .. '/manifest.json'))
        assert.are.equal('nanochat-corpus', mj.format)
        assert.are.equal(m.counts.docs, mj.counts.docs)
        local names = {}
        for _, cr in ipairs(mj.crates) do names[#names + 1] = cr.name .. ' ' .. cr.version .. ' ' .. cr.files end
        assert.are.same({ 'alpha 1.0.0 2', 'beta 0.2.0 3', 'beta 0.1.5 1', 'gamma 3.0.0 1' }, names)
        local total = 0
        for _, cr in ipairs(mj.crates) do total = total + cr.bytes end
        assert.are.equal(mj.bytes.docs, total)
        assert.are.equal(mj.bytes.train + mj.bytes.val, mj.bytes.docs)
        local lic = {}
        for _, l in ipairs(mj.licenses) do lic[l.package] = table.concat(l.licenses, '|') end
        assert.are.same({ ['librust-alpha-dev'] = 'MIT or Apache-2.0|MIT', ['librust-beta-dev'] = 'MIT',
                          ['librust-beta-0.1-dev'] = 'MIT', ['librust-gamma-dev'] = '' }, lic)
        assert.are.equal(3, mj.license_counts.MIT)   -- alpha, beta 0.2.0, beta 0.1.5
        assert.is_truthy(mj.split.rule:find('fnv1a64', 1, true))
        -- the byte count of the parts matches: docs + one NUL each
        local bytes = 0
        for _, split in ipairs({ 'train', 'val' }) do
            for _, p in ipairs(corpus.files(out, split)) do bytes = bytes + #read(p) end
        end
        assert.are.equal(mj.bytes.docs + mj.counts.docs, bytes)
    end)

    it('splits deterministically, disjointly, and never empties val', function()
        local seen = {}
        for _, d in ipairs(all_docs(out)) do
            assert.is_nil(seen[d.doc]); seen[d.doc] = d.split
        end
        assert.is_true(m.counts.val_docs >= 1)
        -- a second build gives identical bytes
        local out2 = tmpdir() .. '/c'
        corpus.build({ out = out2, roots = fixture_roots({ large_root() }), quiet = true })
        for _, split in ipairs({ 'train', 'val' }) do
            local a, b = corpus.files(out, split), corpus.files(out2, split)
            assert.are.equal(#a, #b)
            for i = 1, #a do assert.are.equal(read(a[i]), read(b[i])) end
        end
        -- with half the buckets in val, each document sits where split_of puts it, and both
        -- versions of beta/src/lib.rs land on the same side
        local out3 = tmpdir() .. '/c'
        corpus.build({ out = out3, roots = fixture_roots(), val_fraction = 0.5, quiet = true })
        local side = {}
        for _, d in ipairs(all_docs(out3)) do
            local crate, path = d.header:match('^// crate: (%S+) %S+, path: (.+)$')
            assert.are.equal(corpus.split_of(crate, path, 0.5), d.split, d.header)
            side[crate .. '/' .. path] = side[crate .. '/' .. path] or d.split
            assert.are.equal(side[crate .. '/' .. path], d.split)
        end
    end)

    it('splits parts at document boundaries', function()
        local out4 = tmpdir() .. '/c'
        corpus.build({ out = out4, roots = fixture_roots(), part_bytes = 150, val_fraction = 0, quiet = true })
        local parts = corpus.files(out4, 'train')
        assert.is_true(#parts >= 3)
        for i, p in ipairs(parts) do
            assert.is_truthy(p:match('/train/part%-%d%d%d%d%d%.docs$'))
            assert.are.equal(string.format('part-%05d.docs', i - 1), p:match('[^/]+$'))
            local s = read(p)
            assert.are.equal('\0', s:sub(-1))
            local n = select(2, s:gsub('%z', ''))
            assert.is_true(#s <= 150 or n == 1)   -- only a single oversized document overflows
        end
        local a, b = {}, {}
        for d in corpus.docs(out4, 'train') do a[#a + 1] = d end
        for _, d in ipairs(all_docs(out)) do if d.header:find('gamma', 1, true) == nil then b[#b + 1] = d.doc end end
        table.sort(a); table.sort(b)
        assert.are.same(b, a)
        assert.are.same({}, corpus.files(out4, 'val'))   -- val_fraction = 0: no val
    end)

    it('rebuilds over an existing corpus and reads extracted= directories', function()
        local m2 = corpus.build({ out = out, extracted = FIX, quiet = true })
        assert.are.equal(6, m2.counts.docs)
        assert.are.equal(6, #all_docs(out))
        assert.are.equal(0, m2.counts.skipped.large)
    end)

    it('reports bad input clearly', function()
        assert.has_error(function() corpus.files(out, 'test') end, "nc.corpus: split must be 'train' or 'val', got test")
        assert.has_error(function() corpus.files(tmp_root .. '/nope', 'train') end)
        local bad = tmpdir()
        assert(sh('mkdir -p ' .. q(bad .. '/train')))
        write(bad .. '/train/part-00000.docs', 'doc one\0doc two without end')
        local it = corpus.docs(bad, 'train')
        assert.are.equal('doc one', it())
        assert.has_error(function() it() end)
        local empty = tmpdir() .. '/e'
        assert.has_error(function()
            corpus.build({ out = empty, roots = { { package = 'librust-foo-sys-dev', root = FIX .. '/librust-foo-sys-dev' } }, quiet = true })
        end)
        assert.has_error(function() corpus.build({ roots = fixture_roots() }) end, 'nc.corpus.build: out=DIR is required')
    end)
end)

describe('corpus download', function()
    local old_cache = os.getenv('NANOCHAT_CACHE')
    after_each(function()
        if old_cache then ffi.C.setenv('NANOCHAT_CACHE', old_cache, 1) end
    end)

    it('uses the cache root from the environment', function()
        local d = tmpdir() .. '/cache'
        ffi.C.setenv('NANOCHAT_CACHE', d, 1)
        assert.are.equal(d, corpus.cache_dir())
        assert.is_true((sh('test -d ' .. q(d))))
        assert.is_truthy(corpus.default_name():match('^small%-v1%-%x+$'))
    end)

    it('says clearly when apt-get download is impossible', function()
        local bin = tmpdir()
        write(bin .. '/apt-get', '#!/bin/sh\necho "E: Failed to fetch http://deb.debian.org/x  Temporary failure resolving deb.debian.org"\nexit 100\n')
        write(bin .. '/apt-cache', '#!/bin/sh\necho "Package: librust-either-dev"\n')
        assert(sh('chmod +x ' .. q(bin .. '/apt-get') .. ' ' .. q(bin .. '/apt-cache')))
        local old_path = os.getenv('PATH')
        ffi.C.setenv('PATH', bin .. ':' .. old_path, 1)
        local ok, err = pcall(corpus.fetch, { 'librust-either-dev' }, { cache = tmpdir() })
        ffi.C.setenv('PATH', old_path, 1)
        assert.is_false(ok)
        assert.is_truthy(err:find('could be downloaded', 1, true))
        assert.is_truthy(err:find('Temporary failure resolving', 1, true))
        assert.is_truthy(err:find('offline', 1, true))
        assert.is_truthy(err:find('corpus=DIR', 1, true))
    end)

    it('downloads and builds three tiny real crates with apt-get download', function()
        local has_apt = sh('command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null && '
            .. 'apt-cache show librust-either-dev librust-scopeguard-dev librust-cfg-if-dev >/dev/null')
        if not has_apt then pending('apt-get/dpkg-deb or the bookworm package lists are not available') return end
        local cache = tmpdir()
        local out = tmpdir() .. '/real'
        local ok, m = pcall(corpus.build, { out = out, crates = { 'either', 'scopeguard', 'cfg_if', 'no-such-crate-xyz' },
                                            cache = cache, quiet = true, timeout = 15 })
        if not ok and tostring(m):find('could be downloaded', 1, true) then
            pending('no network for apt-get download: ' .. tostring(m):match('^[^\n]*')) return
        end
        assert(ok, m)
        assert.are.equal(3, m.counts.crates)
        assert.are.equal(1, #m.failed_packages)
        assert.are.equal('librust-no-such-crate-xyz-dev', m.failed_packages[1].package)
        local crates = {}
        for _, cr in ipairs(m.crates) do crates[#crates + 1] = cr.name; assert.is_true(#cr.licenses >= 1) end
        assert.are.same({ 'cfg-if', 'either', 'scopeguard' }, crates)
        local n = 0
        for _, d in ipairs(all_docs(out)) do
            n = n + 1
            assert.is_truthy(d.header:match('^// crate: [%w%-_]+ %d+%.%d+%.%d+, path: .+%.rs$'), d.header)
        end
        assert.are.equal(m.counts.docs, n)
        assert.is_true(n >= 3)
    end)
end)

teardown(function() sh('rm -rf ' .. q(tmp_root)) end)
