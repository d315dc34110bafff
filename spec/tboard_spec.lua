-- spec/tboard_spec.lua — nc.tboard: CRC-32C, the exact bytes of a scalar event (formats.md §3),
-- writer -> our reader round trip (every scalar, step and the event count), corruption and
-- truncation errors naming the file and offset, and the same files read by pip `tensorboard`
-- (skipped when it is not installed).
package.path = 'lua/?.lua;lua/?/init.lua;spec/helpers/?.lua;' .. package.path
local nc = require 'nanochat'
local S = require 'train_standins'
local tboard = nc.tboard
local ffi = require 'ffi'

local function f32(x) return tonumber(ffi.new('float', x)) end

local function read_all(p)
    local f = assert(io.open(p, 'rb'))
    local s = f:read('*a')
    f:close()
    return s
end

local function write_all(p, s)
    local f = assert(io.open(p, 'wb'))
    f:write(s)
    f:close()
end

local function has_tensorboard()
    return os.execute('python3 -c "import tensorboard.backend.event_processing.event_accumulator" >/dev/null 2>&1') == 0
end

describe('tboard', function()
    it('CRC-32C matches the Castagnoli check value and chains', function()
        assert.are.equal(0xE3069283, nc.C.nc_crc32c(0, '123456789', 9))
        local a = nc.C.nc_crc32c(0, '1234', 4)
        assert.are.equal(0xE3069283, nc.C.nc_crc32c(a, '56789', 5))
        assert.are.equal(0, nc.C.nc_crc32c(0, '', 0))
        -- longer than the 8-byte stride, odd length
        local s = string.rep('nanochat', 37) .. 'xyz'
        local c1 = nc.C.nc_crc32c(0, s, #s)
        local c2 = nc.C.nc_crc32c(nc.C.nc_crc32c(0, s:sub(1, 101), 101), s:sub(102), #s - 101)
        assert.are.equal(c1, c2)
        -- masked form: ((crc >> 15) | (crc << 17)) + 0xA282EAD8 mod 2^32
        local crc = 0xE3069283
        local rot = (math.floor(crc / 2 ^ 15) + (crc % 2 ^ 15) * 2 ^ 17) % 2 ^ 32
        assert.are.equal((rot + 0xA282EAD8) % 2 ^ 32, tboard._masked_crc('123456789'))
    end)

    it('encodes a scalar event exactly as formats.md §3 lays it out', function()
        local wall = 1234.5
        local ev = tboard.encode_event(wall, 300, { { 'loss', 0.25 } })
        local d = ffi.new('double[1]', wall)
        local fl = ffi.new('float[1]', 0.25)
        local value = '\x0A\x04loss' .. '\x15' .. ffi.string(fl, 4)
        local summary = '\x0A' .. string.char(#value) .. value
        -- 300 = 0b100101100 -> varint AC 02
        local want = '\x09' .. ffi.string(d, 8) .. '\x10\xAC\x02' .. '\x2A' .. string.char(#summary) .. summary
        assert.are.equal(want, ev)
        -- step 0 is omitted; file_version event
        local fv = tboard.encode_event(wall, 0, nil, 'brain.Event:2')
        assert.are.equal('\x09' .. ffi.string(d, 8) .. '\x1A\x0Dbrain.Event:2', fv)
        -- framing: u64 length, masked crc of length, data, masked crc of data
        local fr = tboard.frame('abc')
        assert.are.equal(3 + 16, #fr)
        assert.are.equal('\3\0\0\0\0\0\0\0', fr:sub(1, 8))
        assert.are.equal('abc', fr:sub(13, 15))
    end)

    local dir
    local written   -- { {step, {tag = value}} }
    before_each(function()
        dir = S.tmpdir()
        local w = tboard.writer(dir)
        written = {}
        for step = 1, 25 do
            local vals = { ['train/loss'] = 3 / step + 0.1, ['train/lr'] = 1e-3 * step }
            if step % 5 == 0 then vals['val/bpb'] = 1.5 - step / 100 end
            w:add_scalars(vals, step, 1000 + step)
            written[#written + 1] = { step, vals }
        end
        w:add_scalar('big/step', 12345.678, 2 ^ 40, 2000)   -- a step needing a multi-byte varint
        written[#written + 1] = { 2 ^ 40, { ['big/step'] = 12345.678 } }
        w:close()
        assert.are.equal(27, w.events)
    end)
    after_each(function() S.rmtree(dir) end)

    it('names the file events.out.tfevents.<time>.<host>...', function()
        local files = tboard.files(dir)
        assert.are.equal(1, #files)
        assert.truthy(files[1]:match('/events%.out%.tfevents%.%d+%.[^/]+$'))
    end)

    it('reads back every scalar, step, wall time and the event count', function()
        local evs = tboard.read(dir)
        assert.are.equal(1 + #written, #evs)
        assert.are.equal('brain.Event:2', evs[1].file_version)
        for i, w in ipairs(written) do
            local e = evs[i + 1]
            assert.are.equal(w[1], e.step)
            local n = 0
            for tag, v in pairs(w[2]) do
                n = n + 1
                local got
                for _, tv in ipairs(e.values) do if tv[1] == tag then got = tv[2] end end
                assert.are.equal(f32(v), got)
            end
            assert.are.equal(n, #e.values)
        end
        assert.are.equal(1005, evs[6].wall_time)
        local sc = tboard.scalars(dir)
        assert.are.equal(25, #sc['train/loss'])
        assert.are.equal(5, #sc['val/bpb'])
        assert.are.equal(f32(1.5 - 25 / 100), sc['val/bpb'][5].value)
    end)

    it('rejects a corrupted byte and a truncated file, naming the file and the offset', function()
        local path = tboard.files(dir)[1]
        local s = read_all(path)
        local bad = s:sub(1, 60) .. string.char((s:byte(61) + 1) % 256) .. s:sub(62)
        write_all(path, bad)
        local ok, err = pcall(tboard.read, path)
        assert.is_false(ok)
        assert.truthy(err:find(path, 1, true))
        assert.truthy(err:find('CRC mismatch'))
        assert.truthy(err:find('record at byte %d+'))
        write_all(path, s:sub(1, #s - 3))
        ok, err = pcall(tboard.read, path)
        assert.is_false(ok)
        assert.truthy(err:find('truncated'))
    end)

    it('gives the same events and scalars as pip tensorboard', function()
        if not has_tensorboard() then pending('python3 tensorboard is not installed') return end
        local script = [[
import sys, json, glob
from tensorboard.backend.event_processing import event_file_loader, event_accumulator
d = sys.argv[1]
n = 0
for f in sorted(glob.glob(d + '/*tfevents*')):
    for e in event_file_loader.EventFileLoader(f).Load():
        n += 1
ea = event_accumulator.EventAccumulator(d, size_guidance={event_accumulator.SCALARS: 0})
ea.Reload()
out = {t: [[s.step, s.value, s.wall_time] for s in ea.Scalars(t)] for t in ea.Tags()['scalars']}
print(json.dumps({'events': n, 'scalars': out}))
]]
        write_all(dir .. '/read.py', script)
        local p = io.popen('python3 ' .. dir .. '/read.py ' .. dir .. ' 2>/dev/null')
        local text = p:read('*a')
        p:close()
        local got = require('dkjson').decode(text)
        assert.is_table(got, 'tensorboard reader printed: ' .. tostring(text))
        assert.are.equal(1 + #written, got.events)
        local ours = tboard.scalars(dir)
        local ntags = 0
        for tag, list in pairs(ours) do
            ntags = ntags + 1
            local theirs = got.scalars[tag]
            assert.is_table(theirs, 'tensorboard lacks tag ' .. tag)
            assert.are.equal(#list, #theirs)
            for i, r in ipairs(list) do
                assert.are.equal(r.step, theirs[i][1])
                assert.are.equal(r.value, theirs[i][2])
                assert.are.equal(r.wall_time, theirs[i][3])
            end
        end
        local ttags = 0
        for _ in pairs(got.scalars) do ttags = ttags + 1 end
        assert.are.equal(ntags, ttags)
    end)
end)
