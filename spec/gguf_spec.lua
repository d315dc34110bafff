-- spec/gguf_spec.lua — GGUF v3 writer/reader (nc.gguf) and the TQ2_0/TQ1_0 block quantizers
-- (kernels/cpu/tq.c): round trip of every value type and tensor type, the byte layout, ternary
-- blocks decoded by an independent Lua reading of formats.md §1.5, byte equality with gguf-py's
-- quantizers through a committed fixture (tools/gen_gguf_fixture.py), a live cross-check with
-- gguf.GGUFReader / gguf.quants when python3 + pip gguf exist (skipped otherwise), and clear
-- errors for corrupt or truncated files.
package.path = 'lua/?.lua;lua/?/init.lua;' .. package.path
local nc = require 'nanochat'
local ffi = require 'ffi'
local json = require 'dkjson'
local gguf = nc.gguf
local bit = require 'bit'

local F16_RTOL = 1e-3      -- f16 keeps 11 significant bits (relative error <= 2^-11)

local seed = 900
local function randn(shape, std)
    seed = seed + 1
    return nc.randn(shape, { generator = nc.generator(seed), std = std or 1 })
end

local function tmpfile(ext)
    local p = os.tmpname()
    os.remove(p)
    return p .. (ext or '.gguf')
end

local function bytes_of(t) return ffi.string(nc.C.nc_tensor_data(t._c), t._c.storage.nbytes) end
local function read_all(p) local f = assert(io.open(p, 'rb')); local s = f:read('*a'); f:close(); return s end
local function write_all(p, s) local f = assert(io.open(p, 'wb')); f:write(s); f:close() end

-- ternary weights gamma * t as the exporter will hand them over (rows of 512)
local function ternary_weight(n, k)
    return nc.quant_weight(randn({ n, k }, 0.02))
end

local function sample_file(path, alignment)
    local w = ternary_weight(6, 512)
    local md = {
        { 'general.architecture', 'llama' },
        { 'general.name', 'nanochat-test' },
        { 'llama.block_count', gguf.u32(2) },
        { 'llama.rope.freq_base', gguf.f32(10000) },
        { 'v.u8', gguf.u8(255) }, { 'v.i8', gguf.i8(-128) }, { 'v.u16', gguf.u16(65535) }, { 'v.i16', gguf.i16(-32768) },
        { 'v.u32', gguf.u32(4294967295) }, { 'v.i32', gguf.i32(-2147483648) }, { 'v.f32', gguf.f32(0.1) },
        { 'v.bool', false }, { 'v.str', 'Ġhello\nwörld' }, { 'v.u64', gguf.u64(2 ^ 52 + 3) },
        { 'v.i64', gguf.i64(-(2 ^ 52) - 5) }, { 'v.f64', gguf.f64(0.1) },
        { 'v.strs', { 'a', '', 'Ġb' } }, { 'v.i32s', gguf.array('i32', { 1, -2, 3 }) },
        { 'v.u8s', gguf.array('u8', { 0, 255 }) }, { 'v.f32s', { 0.5, -1.5 } }, { 'v.bools', { true, false } },
        { 'v.empty', gguf.array('str', {}) },
    }
    local tensors = {
        { name = 'blk.0.attn_q.weight', tensor = w, type = 'tq2_0' },
        { name = 'blk.0.attn_k.weight', tensor = w, type = 'tq1_0' },
        { name = 'token_embd.weight', tensor = randn { 10, 24 }, type = 'f16' },
        { name = 'output_norm.weight', tensor = randn { 24 } },
        { name = 'x.bf16', tensor = randn { 3, 5 }, type = 'bf16' },
        { name = 'x.i32', tensor = nc.Tensor.from_table({ 1, -2, 3 }, 'i32') },
    }
    gguf.write(path, { metadata = md, tensors = tensors, alignment = alignment })
    return md, tensors, w
end

describe('gguf write/read', function()
    it('round-trips every value type and tensor type', function()
        local path = tmpfile()
        local md, tensors, w = sample_file(path)
        local f = gguf.read(path)
        assert.are.equal(3, f.version)
        assert.are.equal(32, f.alignment)
        assert.are.equal(#md, #f.keys)
        for i, p in ipairs(md) do
            local k, v = p[1], p[2]
            assert.are.equal(k, f.keys[i])
            local want = type(v) == 'table' and v.value ~= nil and v.value or v
            local got = f.metadata[k]
            if k == 'v.f32' then assert.are.equal(tonumber(ffi.new('float', 0.1)), got)
            elseif k == 'v.f32s' then assert.are.same({ 0.5, -1.5 }, got)
            else assert.are.same(want, got, k) end
        end
        assert.are.equal('u32', f.kv_type['llama.block_count'])
        assert.are.equal('f64', f.kv_type['v.f64'])
        assert.are.equal('i32', f.array_type['v.i32s'])
        assert.are.equal('str', f.array_type['v.strs'])
        assert.are.equal('f32', f.array_type['v.f32s'])
        assert.are.equal(#tensors, #f.tensors)
        local info = f.tensor_index['blk.0.attn_q.weight']
        assert.are.equal('TQ2_0', info.type_name)
        assert.are.same({ 512, 6 }, info.ne)
        assert.are.same({ 6, 512 }, info.shape)
        assert.are.equal('TQ1_0', f.tensor_index['blk.0.attn_k.weight'].type_name)
        -- ternary tensors: t * f16(gamma) exactly
        local gamma = nc.Tensor.from_table({ w:abs():max():item() }):to('f16'):to('f32'):item()
        local t = w:div(w:abs():max():item())
        for _, nm in ipairs { 'blk.0.attn_q.weight', 'blk.0.attn_k.weight' } do
            local got = f:tensor_f32(nm)
            assert.are.equal(0, (got - t:mul(gamma)):abs():max():item(), nm)
        end
        local e = tensors[3].tensor
        local eg = f:tensor_f32('token_embd.weight')
        assert.is_true((eg - e):abs():max():item() <= F16_RTOL * e:abs():max():item())
        assert.are.equal('f16', f:tensor('token_embd.weight'):dtype())
        assert.are.equal(0, (f:tensor('output_norm.weight') - tensors[4].tensor):abs():max():item())
        assert.are.same({ 1, -2, 3 }, f:tensor('x.i32'):tolist())
        assert.are.equal('bf16', f:tensor('x.bf16'):dtype())
        os.remove(path)
    end)

    it('lays out bytes as formats.md says (header, aligned tensor data in info order)', function()
        local path = tmpfile()
        sample_file(path, 64)
        local s = read_all(path)
        assert.are.equal('GGUF', s:sub(1, 4))
        local p = ffi.cast('const uint8_t *', s)
        assert.are.equal(3, ffi.cast('const uint32_t *', p + 4)[0])
        assert.are.equal(6, tonumber(ffi.cast('const uint64_t *', p + 8)[0]))
        local f = gguf.read(path)
        assert.are.equal(64, f.alignment)
        assert.are.equal('u32', f.kv_type['general.alignment'])
        assert.are.equal(0, f.data_offset % 64)
        local off = 0
        for _, t in ipairs(f.tensors) do
            assert.are.equal(off, t.offset)
            off = off + math.ceil(t.nbytes / 64) * 64
        end
        assert.are.equal(f.data_offset + off, #s)
        -- TQ2_0 is 66 bytes per 256 weights, TQ1_0 54
        assert.are.equal(6 * 2 * 66, f.tensor_index['blk.0.attn_q.weight'].nbytes)
        assert.are.equal(6 * 2 * 54, f.tensor_index['blk.0.attn_k.weight'].nbytes)
        os.remove(path)
    end)

    it('TQ2_0 / TQ1_0 blocks decode per formats.md §1.5 (independent Lua decoder)', function()
        local w = ternary_weight(2, 256)
        local t = w:div(w:abs():max():item()):tolist()
        local gamma = w:abs():max():item()
        local function f16(b, i) return ffi.cast('const uint16_t *', b + i)[0] end
        local function half_to_float(h)
            local sgn = bit.rshift(h, 15) == 1 and -1 or 1
            local e, m = bit.band(bit.rshift(h, 10), 31), bit.band(h, 1023)
            if e == 0 then return sgn * m * 2 ^ -24 end
            return sgn * (1 + m / 1024) * 2 ^ (e - 15)
        end
        local q2 = bytes_of(w:to('tq2'))
        local q1 = bytes_of(w:to('tq1'))
        assert.are.equal(2 * 66, #q2)
        assert.are.equal(2 * 54, #q1)
        local p2, p1 = ffi.cast('const uint8_t *', q2), ffi.cast('const uint8_t *', q1)
        for r = 0, 1 do
            local b2, b1 = p2 + r * 66, p1 + r * 54
            local d2, d1 = half_to_float(f16(b2, 64)), half_to_float(f16(b1, 52))
            assert.is_true(math.abs(d2 - gamma) <= gamma * 2 ^ -11)
            assert.are.equal(d2, d1)
            local v2, v1 = {}, {}
            for h = 0, 1 do
                for n = 0, 3 do
                    for m = 0, 31 do
                        v2[128 * h + 32 * n + m + 1] = bit.band(bit.rshift(b2[32 * h + m], 2 * n), 3) - 1
                    end
                end
            end
            local function trit(byte, n)
                local q = (byte * 3 ^ n) % 256
                return math.floor(q * 3 / 256) - 1
            end
            for n = 0, 4 do for m = 0, 31 do v1[m + 32 * n + 1] = trit(b1[m], n) end end
            for n = 0, 4 do for m = 0, 15 do v1[160 + m + 16 * n + 1] = trit(b1[32 + m], n) end end
            for n = 0, 3 do for j = 0, 3 do v1[240 + j + 4 * n + 1] = trit(b1[48 + j], n) end end
            for i = 1, 256 do
                assert.are.equal(t[r * 256 + i], v2[i], 'tq2 ' .. i)
                assert.are.equal(t[r * 256 + i], v1[i], 'tq1 ' .. i)
            end
        end
    end)

    it('reads the gguf-py fixture and quantizes byte-identically to gguf-py (TQ2_0, TQ1_0)', function()
        local f = gguf.read('spec/fixtures/gguf_py.gguf')
        assert.are.equal('llama', f.metadata['general.architecture'])
        assert.are.equal(200, f.metadata['t.u8'])
        assert.are.equal(-100, f.metadata['t.i8'])
        assert.are.equal(4000000000, f.metadata['t.u32'])
        assert.are.equal(-2000000000, f.metadata['t.i32'])
        assert.are.equal(12345678901234, f.metadata['t.u64'])
        assert.are.equal(-1234567890123, f.metadata['t.i64'])
        assert.are.equal(3.141592653589793, f.metadata['t.f64'])
        assert.are.equal(true, f.metadata['t.bool'])
        assert.are.equal('fn main() { println!("héllo"); }', f.metadata['t.str'])
        assert.are.same({ 'a', 'Ġb', 'c d' }, f.metadata['t.strs'])
        assert.are.same({ 1, -2, 3 }, f.metadata['t.i32s'])
        for _, nm in ipairs { 'src', 'tern' } do
            local s = f:tensor(nm)
            assert.is_true(bytes_of(s:to('tq2')) == bytes_of(f:tensor(nm .. '_tq2')), nm .. ' tq2')
            assert.is_true(bytes_of(s:to('tq1')) == bytes_of(f:tensor(nm .. '_tq1')), nm .. ' tq1')
        end
        assert.are.same({ 4, 8 }, f:tensor('half'):shape())
    end)

    it('agrees with gguf.GGUFReader and gguf.quants (python3 + pip gguf; skipped without)', function()
        local ok = os.execute('python3 -c "import gguf, numpy" >/dev/null 2>&1')
        if not (ok == 0 or ok == true) then pending('python3 with pip gguf not installed') return end
        local path, out, script = tmpfile(), tmpfile('.json'), tmpfile('.py')
        local md, tensors = sample_file(path)
        write_all(script, [[
import sys, json, numpy as np, gguf
from gguf.quants import dequantize
r = gguf.GGUFReader(sys.argv[1])
kv = {}
for k, f in r.fields.items():
    if k.startswith("GGUF."): continue
    v = f.contents()
    kv[k] = {"types": [int(t) for t in f.types], "value": v}
ts = []
for t in r.tensors:
    try:
        d = dequantize(t.data, t.tensor_type)
    except NotImplementedError:
        d = np.array(t.data)
    d = d.astype(np.float64).reshape(-1)
    ts.append({"name": t.name, "type": t.tensor_type.name, "ne": [int(x) for x in t.shape],
               "values": [float(x) for x in d]})
json.dump({"kv": kv, "tensors": ts}, open(sys.argv[2], "w"))
]])
        local rc = os.execute(string.format('python3 %s %s %s', script, path, out))
        assert.is_true(rc == 0 or rc == true, 'python reader failed')
        local res = json.decode(read_all(out))
        local f = gguf.read(path)
        for _, k in ipairs(f.keys) do
            local e = res.kv[k]
            assert.is_not_nil(e, 'python lacks key ' .. k)
            assert.are.equal(gguf.VT[f.kv_type[k]], e.types[1], k)
            if f.array_type[k] and #f.metadata[k] > 0 then assert.are.equal(gguf.VT[f.array_type[k]], e.types[2], k) end
            if f.kv_type[k] == 'f32' then
                assert.is_true(math.abs(e.value - f.metadata[k]) <= 1e-7 * math.abs(e.value), k)
            elseif k ~= 'v.f32s' then
                assert.are.same(f.metadata[k], e.value, k)
            end
        end
        assert.are.equal(#f.tensors, #res.tensors)
        for i, t in ipairs(f.tensors) do
            local e = res.tensors[i]
            assert.are.equal(t.name, e.name)
            assert.are.equal(t.type_name, e.type)
            assert.are.same(t.ne, e.ne)
            local ours = f:tensor(t.name)
            ours = ours:dtype() == 'f32' and ours or ours:to('f32')
            local v = ours:tolist()
            assert.are.equal(#v, #e.values)
            for j = 1, #v do assert.are.equal(v[j], e.values[j], t.name .. ' value ' .. j) end
        end
        os.remove(path); os.remove(out); os.remove(script)
    end)
end)

describe('gguf -> packed inference weights', function()
    it('a TQ2_0 / TQ1_0 tensor read back packs to the f16-rounded training weight', function()
        local path = tmpfile()
        local w = nc.quant_weight(randn({ 5, 512 }, 0.02))
        gguf.write(path, { tensors = { { name = 'a', tensor = w, type = 'tq2_0' }, { name = 'b', tensor = w, type = 'tq1_0' } } })
        local f = gguf.read(path)
        local gamma16 = nc.Tensor.from_table({ w:abs():max():item() }):to('f16'):to('f32'):item()
        for _, nm in ipairs { 'a', 'b' } do
            local P = nc.infer.from_values(f:tensor(nm), nm)
            assert.are.equal(0, (P:ternary() - w:div(w:abs():max():item())):abs():max():item())
            for _, s in ipairs(P.scale:tolist()) do assert.are.equal(gamma16, s) end
        end
        local mixed = nc.Tensor.from_table({ { 0.5, -0.5, 0 }, { 0.25, 0.5, 0 } })
        local ok, err = pcall(nc.infer.from_values, mixed, 'mixed')
        assert.is_false(ok)
        assert.truthy(tostring(err):find('mixed row 1 mixes magnitudes', 1, true), err)
        os.remove(path)
    end)
end)

describe('gguf errors', function()
    local function expect_error(path, pattern)
        local ok, err = pcall(gguf.read, path)
        assert.is_false(ok, 'reading should fail: ' .. pattern)
        err = tostring(err)
        assert.truthy(err:find(path, 1, true), 'message names the file: ' .. err)
        assert.truthy(err:find(pattern, 1, true), 'expected "' .. pattern .. '" in: ' .. err)
    end

    it('names the file and the problem for truncated files at every region', function()
        local path = tmpfile()
        sample_file(path)
        local s = read_all(path)
        local f = gguf.read(path)
        local cut = tmpfile()
        for _, n in ipairs { 0, 3, 10, 23, 40, 200, f.data_offset - 30, f.data_offset + 5, #s - 1 } do
            write_all(cut, s:sub(1, n))
            expect_error(cut, 'truncated')
        end
        os.remove(path); os.remove(cut)
    end)

    it('rejects bad magic, version, types, offsets, duplicates and absurd lengths', function()
        local path = tmpfile()
        sample_file(path)
        local s = read_all(path)
        local f = gguf.read(path)
        local bad = tmpfile()
        local function patch(at, bytes) return s:sub(1, at) .. bytes .. s:sub(at + #bytes + 1) end
        write_all(bad, 'GGML' .. s:sub(5)); expect_error(bad, 'not a GGUF file')
        write_all(bad, patch(4, '\7\0\0\0')); expect_error(bad, 'unsupported GGUF version 7')
        write_all(bad, patch(24, '\255\255\255\255\255\255\0\0')); expect_error(bad, 'exceeds the rest of the file')
        -- first key's value type (after the 8-byte length and the 20-byte key)
        write_all(bad, patch(24 + 8 + 20, '\99\0\0\0')); expect_error(bad, 'invalid value type 99')
        -- duplicate key: rename v.i16 to v.u16 (same length)
        write_all(bad, s:gsub('v%.i16', 'v.u16', 1)); expect_error(bad, 'duplicate key v.u16')
        -- tensor type and offset: find the info of the first tensor
        local name = 'blk.0.attn_q.weight'
        local at = s:find(name, 1, true) - 1 + #name   -- after the name
        -- n_dims(4) ne(16) type(4) offset(8)
        write_all(bad, patch(at + 4 + 16, '\200\0\0\0')); expect_error(bad, 'unknown ggml type 200')
        write_all(bad, patch(at + 4 + 16 + 4, '\64\0\0\0\0\0\0\0')); expect_error(bad, 'has offset 64, expected 0')
        write_all(bad, patch(at + 4 + 16 + 4, '\3\0\0\0\0\0\0\0')); expect_error(bad, 'not a multiple of the alignment')
        write_all(bad, patch(at, '\9\0\0\0')); expect_error(bad, 'has 9 dims')
        write_all(bad, patch(at + 4, '\100\0\0\0\0\0\0\0')); expect_error(bad, 'not a multiple of the TQ2_0 block size 256')
        assert.is_not_nil(f)
        os.remove(path); os.remove(bad)
        local ok, err = pcall(gguf.read, '/nonexistent/x.gguf')
        assert.is_false(ok)
        assert.truthy(tostring(err):find('cannot open /nonexistent/x.gguf', 1, true))
    end)

    it('refuses to write what llama.cpp cannot read', function()
        local path = tmpfile()
        local ok, err = pcall(gguf.write, path, { tensors = { { name = 'a', tensor = randn { 2, 100 }, type = 'tq2_0' } } })
        assert.is_false(ok)
        assert.truthy(tostring(err):find('multiple of 256', 1, true), err)
        ok, err = pcall(gguf.write, path, { metadata = { { 'a', 1 }, { 'a', 2 } } })
        assert.is_false(ok)
        assert.truthy(tostring(err):find('duplicate metadata key a', 1, true), err)
        ok, err = pcall(gguf.write, path, { tensors = { { name = string.rep('x', 64), tensor = randn { 2 } } } })
        assert.is_false(ok)
        assert.truthy(tostring(err):find('1..63 bytes', 1, true), err)
        assert.is_nil(io.open(path, 'rb'))
    end)
end)
