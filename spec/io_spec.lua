-- spec/io_spec.lua — nc.save / nc.load (safetensors): round trips, layout, interop with a
-- Python-written file and a Python reader, corrupt-file diagnostics, atomic and safe saves.
package.path = 'lua/?.lua;lua/?/init.lua;' .. package.path
local nc = require 'nanochat'
local json = require 'dkjson'
local ffi = require 'ffi'

pcall(ffi.cdef, 'int getpid(void);')

local PY_FIXTURE = 'spec/fixtures/py_written.safetensors'
local DTYPES = { 'f32', 'bf16', 'f16', 'i8', 'i32', 'i64', 'u8', 'f64' }
local ST_NAME = { f32 = 'F32', bf16 = 'BF16', f16 = 'F16', i8 = 'I8', i32 = 'I32', i64 = 'I64', u8 = 'U8', f64 = 'F64' }
local ELEM = { f32 = 4, bf16 = 2, f16 = 2, i8 = 1, i32 = 4, i64 = 8, u8 = 1, f64 = 8 }
-- values exactly representable in each dtype (so a round trip must be bit-exact)
local VALUES = {
    f32 = { 0.5, -1.25, 2 ^ -9, 2 ^ 100, -7, 0 },
    bf16 = { 1, -0.5, 256, 0.0078125, -3, 0 },
    f16 = { 1.5, -2, 65504, 0.0999755859375, -0.25, 0 },
    i8 = { -128, -1, 0, 1, 127, 5 },
    i32 = { -2147483648, 2147483647, 7, -7, 0, 1 },
    i64 = { 2 ^ 40, -(2 ^ 33) + 5, 0, -1, 2 ^ 53, 3 },
    u8 = { 0, 1, 255, 128, 7, 9 },
    f64 = { 1 / 3, -math.pi, 1e-300, 2 ^ 60, 0, -0.5 },
}

local function shell_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

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

local function exists(path)
    local f = io.open(path, 'rb')
    if f then f:close() return true end
    return false
end

local function u64le(n)
    local b = {}
    for i = 1, 8 do
        b[i] = string.char(n % 256)
        n = math.floor(n / 256)
    end
    return table.concat(b)
end

-- a safetensors file from a header (table or raw JSON text) and raw data bytes
local function make_st(path, header, data)
    local text = type(header) == 'string' and header or json.encode(header)
    write_bytes(path, u64le(#text) .. text .. (data or ''))
end

local function listdir(dir)
    local p = io.popen('ls -A ' .. shell_quote(dir))
    local out = {}
    for line in p:lines() do out[#out + 1] = line end
    p:close()
    return out
end

local function same_list(a, b)
    if #a ~= #b then return false end
    for i = 1, #a do
        if a[i] ~= b[i] and not (a[i] ~= a[i] and b[i] ~= b[i]) then return false end
    end
    return true
end

-- os.execute returns 0 (Lua 5.1) or true (5.2 compatibility mode) on success
local function run_ok(cmd)
    local r = os.execute(cmd)
    return r == 0 or r == true
end

local function python_ok() return run_ok('python3 -c "import struct, json" >/dev/null 2>&1') end

local function expect_load_error(path, pattern)
    local ok, err = pcall(nc.load, path)
    assert.is_false(ok, 'nc.load accepted a bad file')
    err = tostring(err)
    assert.are.equal('nc.load: ' .. path .. ': ', err:sub(1, #path + 11), 'error does not start with the prefix: ' .. err)
    if pattern then
        assert.is_truthy(err:find(pattern), 'error "' .. err .. '" does not mention ' .. pattern)
    end
    return err
end

describe('nc.save / nc.load', function()
    local dir
    setup(function()
        local p = io.popen('mktemp -d')
        dir = p:read('*l')
        p:close()
    end)
    teardown(function()
        if dir and #dir > 1 then os.execute('chmod -R u+w ' .. shell_quote(dir) .. '; rm -rf ' .. shell_quote(dir)) end
    end)

    it('round-trips every dtype bit-exactly, with scalar and empty shapes', function()
        local tensors = {}
        for _, dt in ipairs(DTYPES) do
            tensors[dt .. '.mat'] = nc.tensor({ { VALUES[dt][1], VALUES[dt][2], VALUES[dt][3] },
                                                { VALUES[dt][4], VALUES[dt][5], VALUES[dt][6] } }, { dtype = dt })
            tensors[dt .. '.scalar'] = nc.tensor(VALUES[dt][2], { dtype = dt })
            tensors[dt .. '.empty'] = nc.zeros({ 0 }, { dtype = dt })
            tensors[dt .. '.empty3'] = nc.zeros({ 2, 0, 4 }, { dtype = dt })
            tensors[dt .. '.4d'] = nc.tensor({ { { { VALUES[dt][1] }, { VALUES[dt][6] } } } }, { dtype = dt })
        end
        local path = dir .. '/all.safetensors'
        nc.save(path, tensors)
        local back, meta = nc.load(path)
        assert.are.same({}, meta)
        local n = 0
        for name, t in pairs(tensors) do
            n = n + 1
            local b = back[name]
            assert.is_truthy(b, 'missing ' .. name)
            assert.are.equal(t:dtype(), b:dtype(), name)
            assert.are.same(t:shape(), b:shape(), name)
            assert.are.equal('cpu', b:device())
            assert.is_true(same_list(t:tolist(), b:tolist()), name .. ': values differ')
        end
        local m = 0
        for _ in pairs(back) do m = m + 1 end
        assert.are.equal(n, m)
        -- and the stored values are the intended ones (the dtype conversions were exact)
        for _, dt in ipairs(DTYPES) do
            assert.are.same(VALUES[dt], back[dt .. '.mat']:tolist(), dt)
            assert.are.same({}, back[dt .. '.mat']:narrow(0, 0, 0):tolist())
            assert.are.equal(VALUES[dt][2], back[dt .. '.scalar']:item(), dt)
            assert.are.same({}, back[dt .. '.scalar']:shape())
        end
    end)

    it('writes strided, transposed, narrowed and broadcast tensors in logical order', function()
        local base = nc.arange(0, 12, { dtype = 'f32' }):view { 3, 4 }
        local tensors = {
            t = base:t(),                                   -- (4, 3) transposed
            narrow = base:narrow(1, 1, 2),                  -- (3, 2) with row stride 4
            expand = nc.tensor({ 1, 2, 3 }):view { 1, 3 }:expand { 4, 3 },   -- stride 0
            perm = nc.arange(0, 24, { dtype = 'i64' }):view { 2, 3, 4 }:permute { 2, 0, 1 },
            sel = base:select(1, 2),                        -- (3) with stride 4
        }
        assert.is_false(tensors.t:is_contiguous())
        local path = dir .. '/strided.safetensors'
        nc.save(path, tensors)
        local back = nc.load(path)
        for name, t in pairs(tensors) do
            assert.are.same(t:shape(), back[name]:shape(), name)
            assert.are.same(t:tolist(), back[name]:tolist(), name)
            assert.is_true(back[name]:is_contiguous())
        end
        assert.are.same({ 0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11 }, back.t:tolist())
        assert.are.same({ 2, 6, 10 }, back.sel:tolist())
    end)

    it('lays out the file as the format says: sorted names, packed data, 8-byte aligned header', function()
        local path = dir .. '/layout.safetensors'
        nc.save(path, { zeta = nc.tensor({ 1, 2, 3 }), alpha = nc.tensor({ { 5 } }, { dtype = 'i64' }),
                        mid = nc.zeros({ 0 }, { dtype = 'u8' }) })
        local bytes = read_bytes(path)
        local n = 0
        for i = 8, 1, -1 do n = n * 256 + bytes:byte(i) end
        assert.are.equal(0, (8 + n) % 8)
        local header = bytes:sub(9, 8 + n)
        assert.is_nil(header:find('__metadata__', 1, true))
        local a, m, z = header:find('"alpha"', 1, true), header:find('"mid"', 1, true), header:find('"zeta"', 1, true)
        assert.is_true(a < m and m < z, 'names are not sorted in the header: ' .. header)
        local obj = json.decode(header)
        assert.are.same({ 0, 8 }, obj.alpha.data_offsets)
        assert.are.same({ 8, 8 }, obj.mid.data_offsets)
        assert.are.same({ 8, 20 }, obj.zeta.data_offsets)
        assert.are.equal('I64', obj.alpha.dtype)
        assert.are.same({ 1, 1 }, obj.alpha.shape)
        assert.are.equal(8 + n + 20, #bytes)
        -- the data: i64 5 then f32 1, 2, 3 little-endian
        assert.are.equal(string.char(5, 0, 0, 0, 0, 0, 0, 0), bytes:sub(9 + n, 16 + n))
        assert.are.equal(string.char(0, 0, 0x80, 0x3f), bytes:sub(17 + n, 20 + n))
    end)

    it('is deterministic: the same tensors give the same bytes', function()
        local t = { b = nc.tensor({ 1, 2 }), a = nc.tensor({ 3 }, { dtype = 'i32' }), c = nc.tensor(1.5) }
        nc.save(dir .. '/d1.safetensors', t, { x = '1', y = 2 })
        nc.save(dir .. '/d2.safetensors', t, { y = 2, x = '1' })
        assert.are.equal(read_bytes(dir .. '/d1.safetensors'), read_bytes(dir .. '/d2.safetensors'))
    end)

    it('round-trips metadata, converting values to strings', function()
        local path = dir .. '/meta.safetensors'
        local meta = { step = 1200, lr = 0.1, ratio = 1 / 3, big = 2 ^ 40, name = 'quote " back\\slash\nnewline\ttab',
                       unicode = 'héllo ✓', flag = true, config = { d = 16 }, empty = '' }
        nc.save(path, { w = nc.zeros { 2 } }, meta)
        local _, back = nc.load(path)
        assert.are.equal('1200', back.step)
        assert.are.equal(0.1, tonumber(back.lr))
        assert.are.equal('0.1', back.lr)
        assert.are.equal(1 / 3, tonumber(back.ratio))
        assert.are.equal('1099511627776', back.big)
        assert.are.equal(meta.name, back.name)
        assert.are.equal(meta.unicode, back.unicode)
        assert.are.equal('true', back.flag)
        assert.are.same({ d = 16 }, json.decode(back.config))
        assert.are.equal('', back.empty)
        for k, v in pairs(back) do assert.are.equal('string', type(v), k) end
    end)

    it('escapes tensor names as JSON', function()
        local path = dir .. '/names.safetensors'
        local names = { 'a"b', 'back\\slash', 'new\nline', 'ctl\1x', 'ünï', 'h.0.attn.wq.weight' }
        local t = {}
        for i, n in ipairs(names) do t[n] = nc.full({ 1 }, i) end
        nc.save(path, t)
        local back = nc.load(path)
        for i, n in ipairs(names) do
            assert.is_truthy(back[n], 'missing ' .. n)
            assert.are.equal(i, back[n]:item())
        end
    end)

    it('loads a file written by Python (struct) with the right dtypes, shapes and values', function()
        local t, meta = nc.load(PY_FIXTURE)
        assert.are.same({ format = 'pt', written_by = 'tools/gen_fixture.py (python struct)' }, meta)
        local want = {
            ['weight.f32'] = { 'f32', { 2, 3 }, { 0.5, -1.25, 3.0, 0.125, -7.5, 1024.0 } },
            ['ids.i64'] = { 'i64', { 4 }, { 0, -1, 2 ^ 40, -(2 ^ 33) + 5 } },
            ['scalar.f64'] = { 'f64', {}, { 3.141592653589793 } },
            ['empty.u8'] = { 'u8', { 0, 3 }, {} },
            ['half.f16'] = { 'f16', { 3 }, { 1.5, -2.0, 65504.0 } },
            ['brain.bf16'] = { 'bf16', { 2, 2 }, { 1.0, -0.5, 256.0, 0.0078125 } },
            ['bytes.i8'] = { 'i8', { 5 }, { -128, -1, 0, 1, 127 } },
            ['ints.i32'] = { 'i32', { 2, 2 }, { -2147483648, 2147483647, 7, -7 } },
            ['flags.u8'] = { 'u8', { 3 }, { 0, 1, 255 } },
        }
        local n = 0
        for name, w in pairs(want) do
            n = n + 1
            local x = t[name]
            assert.is_truthy(x, 'missing ' .. name)
            assert.are.equal(w[1], x:dtype(), name)
            assert.are.same(w[2], x:shape(), name)
            assert.are.same(w[3], x:tolist(), name)
        end
        local m = 0
        for _ in pairs(t) do m = m + 1 end
        assert.are.equal(n, m)
    end)

    it('writes files Python reads back (stdlib struct reader in tools/gen_fixture.py)', function()
        if not python_ok() then pending('python3 is not available') return end
        local path = dir .. '/for_python.safetensors'
        local tensors = {}
        for _, dt in ipairs(DTYPES) do
            tensors[dt] = nc.tensor({ { VALUES[dt][1], VALUES[dt][2], VALUES[dt][3] },
                                      { VALUES[dt][4], VALUES[dt][5], VALUES[dt][6] } }, { dtype = dt }):t()
        end
        tensors.scalar = nc.tensor(-2.5)
        tensors.empty = nc.zeros({ 3, 0 })
        nc.save(path, tensors, { source = 'nanochat', step = 7 })
        local p = io.popen('python3 tools/gen_fixture.py --dump ' .. shell_quote(path) .. ' 2>/dev/null')
        local out = p:read('*a')
        p:close()
        local obj = json.decode(out)
        assert.is_truthy(obj, 'python output is not JSON: ' .. out)
        assert.are.same({ source = 'nanochat', step = '7' }, obj.metadata)
        for name, t in pairs(tensors) do
            local e = obj.tensors[name]
            assert.is_truthy(e, 'python did not see ' .. name)
            assert.are.equal(ST_NAME[t:dtype()], e.dtype, name)
            assert.are.same(t:shape(), e.shape, name)
            assert.are.same(t:tolist(), e.data, name)
        end
    end)

    it('saves CUDA tensors of any layout and loads onto CUDA (skipped without a GPU)', function()
        if not nc.cuda_available() then pending('no CUDA device: ' .. nc.cuda_status()) return end
        local a = nc.arange(0, 12, { dtype = 'f32' }):view { 3, 4 }:to('cuda')
        local ids = nc.tensor({ 2 ^ 40, -3, 7 }, { dtype = 'i64' }):to('cuda')
        local path = dir .. '/cuda.safetensors'
        nc.save(path, { a = a, at = a:t(), ids = ids })
        local host = nc.load(path)
        assert.are.equal('cpu', host.a:device())
        assert.are.same({ 0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11 }, host.at:tolist())
        assert.are.same({ 2 ^ 40, -3, 7 }, host.ids:tolist())
        local dev = nc.load(path, { device = 'cuda' })
        assert.are.equal('cuda', dev.a:device())
        assert.are.same(a:tolist(), dev.a:tolist())
        assert.are.same({ 3, 4 }, dev.a:shape())
    end)

    it('rejects corrupt and truncated files with "nc.load: <path>: ..." errors', function()
        local good = dir .. '/good.safetensors'
        nc.save(good, { a = nc.tensor({ 1, 2, 3 }), b = nc.tensor({ { 1, 2 } }, { dtype = 'i64' }) })
        local bytes = read_bytes(good)
        local p = dir .. '/bad.safetensors'

        expect_load_error(dir .. '/does_not_exist.safetensors', 'No such file')

        write_bytes(p, 'abc')
        expect_load_error(p, 'too short')

        write_bytes(p, u64le(1000000) .. '{}')
        expect_load_error(p, 'header length 1000000 exceeds file size 10')

        write_bytes(p, u64le(2 ^ 40) .. string.rep(' ', 100))
        expect_load_error(p, 'exceeds file size')

        make_st(p, '{"a": {"dtype": "F32", "shape": [1], ')
        expect_load_error(p, 'not valid JSON')

        make_st(p, '[1, 2]')
        expect_load_error(p, 'must be a JSON object')

        make_st(p, { a = { dtype = 'F8_E4M3', shape = { 1 }, data_offsets = { 0, 1 } } }, 'x')
        expect_load_error(p, 'unknown dtype F8_E4M3')

        make_st(p, { a = { dtype = 'F32', shape = { -1 }, data_offsets = { 0, 4 } } }, 'xxxx')
        expect_load_error(p, 'shape must be a list of non%-negative integers')

        make_st(p, { a = { dtype = 'F32', shape = { 1.5 }, data_offsets = { 0, 4 } } }, 'xxxx')
        expect_load_error(p, 'shape must be')

        make_st(p, { a = { dtype = 'F32', shape = { 1 }, data_offsets = { 0 } } }, 'xxxx')
        expect_load_error(p, 'data_offsets must be two')

        make_st(p, { a = { dtype = 'F32', shape = { 2 }, data_offsets = { 0, 8 } } }, 'xxxx')
        expect_load_error(p, 'run past the data region of 4 bytes')

        make_st(p, { a = { dtype = 'F32', shape = { 2 }, data_offsets = { 0, 4 } } }, 'xxxx')
        expect_load_error(p, 'needs 8 bytes')

        make_st(p, { a = { dtype = 'F32', shape = { 1 }, data_offsets = { 4, 0 } } }, 'xxxx')
        expect_load_error(p, 'backwards')

        make_st(p, { a = { dtype = 'F32', shape = { 1 }, data_offsets = { 0, 4 } },
                     b = { dtype = 'F32', shape = { 1 }, data_offsets = { 2, 6 } } }, 'xxxxxx')
        expect_load_error(p, 'overlap')

        make_st(p, { a = { dtype = 'F32', shape = { 1 }, data_offsets = { 4, 8 } } }, 'xxxxxxxx')
        expect_load_error(p, 'gap of 4 bytes before tensor a')

        make_st(p, { a = { dtype = 'F32', shape = { 1 }, data_offsets = { 0, 4 } } }, 'xxxxyy')
        expect_load_error(p, 'trailing bytes')

        make_st(p, { __metadata__ = { step = 3 } }, '')
        expect_load_error(p, 'not a string')

        -- our own good file, truncated at every interesting place
        for _, cut in ipairs { 4, 8, 20, #bytes - 25, #bytes - 1 } do
            write_bytes(p, bytes:sub(1, cut))
            expect_load_error(p)
        end
        -- a flipped header-length byte
        write_bytes(p, string.char(bytes:byte(1) + 8) .. bytes:sub(2))
        expect_load_error(p)
        -- and the intact file still loads
        local t = nc.load(good)
        assert.are.same({ 1, 2, 3 }, t.a:tolist())
    end)

    it('nc_tensor_new_from_file checks byte counts and bounds itself', function()
        local C = nc.C
        local path = dir .. '/raw.bin'
        write_bytes(path, string.rep('\0', 16))
        local shape = ffi.new('int64_t[1]', 2)
        local p = C.nc_tensor_new_from_file(path, 8, 8, C.NC_F32, 1, shape)
        assert.is_truthy(p ~= nil)
        C.nc_tensor_release(p)
        assert.is_true(C.nc_tensor_new_from_file(path, 12, 8, C.NC_F32, 1, shape) == nil)
        assert.is_truthy(ffi.string(C.nc_last_error()):find('outside the file of 16 bytes', 1, true))
        assert.is_true(C.nc_tensor_new_from_file(path, 0, 12, C.NC_F32, 1, shape) == nil)
        assert.is_truthy(ffi.string(C.nc_last_error()):find('need 8 bytes, got 12', 1, true))
    end)

    it('rejects bad arguments to nc.save with clear messages', function()
        local path = dir .. '/args.safetensors'
        local ok, err = pcall(nc.save, path, { a = 3 })
        assert.is_false(ok)
        assert.is_truthy(tostring(err):find('value for a is a number, not a tensor', 1, true))
        ok, err = pcall(nc.save, path, nc.zeros { 2 })
        assert.is_false(ok)
        assert.is_truthy(tostring(err):find('expected a table', 1, true))
        ok, err = pcall(nc.save, path, { a = nc.zeros { 2 } }, { f = print })
        assert.is_false(ok)
        assert.is_truthy(tostring(err):find('metadata value for key f', 1, true))
        ok, err = pcall(nc.save, path, { __metadata__ = nc.zeros { 2 } })
        assert.is_false(ok)
        assert.is_truthy(tostring(err):find('reserved', 1, true))
        local okp, packed = pcall(nc.Tensor.zeros, { 256 }, 'tq2')
        if okp then
            ok, err = pcall(nc.save, path, { q = packed })
            assert.is_false(ok)
            assert.is_truthy(tostring(err):find('no safetensors name', 1, true), tostring(err))
        end
        assert.is_false(exists(path))
    end)

    describe('failed saves', function()
        local function no_temp_left(d)
            for _, name in ipairs(listdir(d)) do
                assert.is_nil(name:find('.tmp.', 1, true), 'temp file left behind: ' .. name)
            end
        end

        it('report a missing directory with the path and strerror', function()
            local path = dir .. '/no/such/dir/x.safetensors'
            local ok, err = pcall(nc.save, path, { a = nc.zeros { 2 } })
            assert.is_false(ok)
            err = tostring(err)
            assert.are.equal('nc.save: ', err:sub(1, 9))
            assert.is_truthy(err:find(path, 1, true), err)
            assert.is_truthy(err:find('No such file or directory', 1, true), err)
        end)

        it('leave a pre-existing file untouched when the temp file cannot be created', function()
            local path = dir .. '/keep.safetensors'
            nc.save(path, { a = nc.tensor({ 1, 2, 3 }) })
            local before = read_bytes(path)
            -- a directory squatting on this process's temp name makes the open fail (works as root too)
            local tmp = path .. '.tmp.' .. ffi.C.getpid()
            os.execute('mkdir ' .. shell_quote(tmp))
            local ok, err = pcall(nc.save, path, { a = nc.tensor({ 9, 9, 9 }) })
            os.execute('rmdir ' .. shell_quote(tmp))
            assert.is_false(ok)
            assert.is_truthy(tostring(err):find('cannot create', 1, true), tostring(err))
            assert.are.equal(before, read_bytes(path))
            assert.are.same({ 1, 2, 3 }, nc.load(path).a:tolist())
        end)

        it('leave the target alone and remove the temp file when the rename fails', function()
            local path = dir .. '/adir'
            os.execute('mkdir -p ' .. shell_quote(path .. '/inside'))
            local ok, err = pcall(nc.save, path, { a = nc.zeros { 4 } })
            assert.is_false(ok)
            assert.is_truthy(tostring(err):find('renaming', 1, true), tostring(err))
            assert.are.same({ 'inside' }, listdir(path))
            no_temp_left(dir)
        end)

        it('in a read-only directory give a clear error (skipped as root, who may write anyway)', function()
            local p = io.popen('id -u')
            local uid = p:read('*l')
            p:close()
            if uid == '0' then pending('running as root: directory permissions do not apply') return end
            local ro = dir .. '/ro'
            os.execute('mkdir -p ' .. shell_quote(ro))
            nc.save(ro .. '/x.safetensors', { a = nc.tensor({ 1 }) })
            local before = read_bytes(ro .. '/x.safetensors')
            os.execute('chmod 0555 ' .. shell_quote(ro))
            local ok, err = pcall(nc.save, ro .. '/x.safetensors', { a = nc.tensor({ 2 }) })
            os.execute('chmod 0755 ' .. shell_quote(ro))
            assert.is_false(ok)
            assert.is_truthy(tostring(err):find('Permission denied', 1, true), tostring(err))
            assert.are.equal(before, read_bytes(ro .. '/x.safetensors'))
            no_temp_left(ro)
        end)

        it('mid-write (file size limit: EFBIG) leave the old file and no temp file', function()
            if not run_ok('command -v bash >/dev/null 2>&1') then pending('bash is not available') return end
            local path = dir .. '/big.safetensors'
            nc.save(path, { a = nc.tensor({ 1, 2, 3 }) })
            local before = read_bytes(path)
            local script = dir .. '/efbig.lua'
            write_bytes(script, table.concat({
                "package.path = 'lua/?.lua;lua/?/init.lua;' .. package.path",
                "local nc = require 'nanochat'",
                "local ok, err = pcall(nc.save, arg[1], { a = nc.zeros { 64 * 1024 } })",   -- 256 KiB
                "io.write(ok and 'SAVED' or tostring(err))",
            }, '\n'))
            -- an ignored SIGXFSZ is inherited, so the write past the limit fails with EFBIG
            local cmd = string.format("bash -c \"trap '' XFSZ; ulimit -f 64; luajit %s %s\" 2>&1",
                shell_quote(script), shell_quote(path))
            local pp = io.popen(cmd)
            local out = pp:read('*a')
            pp:close()
            assert.is_truthy(out:find('nc.save: ', 1, true), out)
            assert.is_truthy(out:find('File too large', 1, true), out)
            assert.is_truthy(out:find(path, 1, true), out)
            assert.are.equal(before, read_bytes(path))
            no_temp_left(dir)
        end)
    end)
end)
