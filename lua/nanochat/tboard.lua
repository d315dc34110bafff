-- lua/nanochat/tboard.lua — nc.tboard: TensorBoard event files, written and read by us.
--
-- Format (docs formats.md §3): TFRecord framing (u64 LE length, masked CRC-32C of the length
-- bytes, the data, masked CRC-32C of the data) around hand-encoded Event protos: wall_time
-- (field 1, double), step (2, varint, omitted when 0), file_version (3, string) and summary
-- (5) holding repeated Value{tag (1), simple_value (2, float)}. The first record is
-- Event{wall_time, file_version = "brain.Event:2"}. File name: events.out.tfevents.<unix
-- seconds>.<host>[.<pid>.<suffix>] in the log directory (TensorBoard picks files containing
-- "tfevents").
--
-- Promise:
--  - local w = nc.tboard.writer(log_dir, {suffix = ''}); w:add_scalar(tag, value, step[, wall]);
--    w:add_scalars({tag = value, ...}, step[, wall]) (one event, tags sorted); w:flush(); w:close().
--    Every event is flushed to the OS when written (a crashed run keeps its curve).
--  - nc.tboard.read(path) -> list of events { wall_time, step, file_version, values = {{tag, value}} },
--    checking both CRCs of every record; a bad CRC or a truncated record raises an error naming the
--    file and the byte offset. read(dir) reads every *tfevents* file in it (sorted by name).
--  - nc.tboard.scalars(path_or_dir) -> { [tag] = { {step =, value =, wall_time =}, ... } }.
--  Values are stored as f32 (TensorBoard's simple_value), so they read back rounded to f32.
local core = require 'nanochat.core'
local bit = require 'bit'
local ffi, C = core.ffi, core.C

local M = {}

local band, bor, rshift, lshift = bit.band, bit.bor, bit.rshift, bit.lshift

-- ---- byte helpers ---------------------------------------------------------------------------
local function u32le(n)
    n = n % 4294967296
    return string.char(n % 256, math.floor(n / 256) % 256, math.floor(n / 65536) % 256, math.floor(n / 16777216) % 256)
end

local function read_u32le(s, i)
    local a, b, c, d = s:byte(i, i + 3)
    return a + b * 256 + c * 65536 + d * 16777216
end

local function masked_crc(s)
    local crc = C.nc_crc32c(0, s, #s)   -- uint32_t -> Lua number
    local rot = bor(rshift(crc, 15), lshift(crc, 17))
    return (rot % 4294967296 + 0xA282EAD8) % 4294967296
end
M._masked_crc = masked_crc

local dbuf = ffi.new('double[1]')
local fbuf = ffi.new('float[1]')
local function f64le(x) dbuf[0] = x; return ffi.string(dbuf, 8) end   -- x86/ARM Linux: little-endian
local function f32le(x) fbuf[0] = x; return ffi.string(fbuf, 4) end

local function varint(n)
    assert(n >= 0 and n == math.floor(n), 'varint: expected a non-negative integer')
    local out = {}
    repeat
        local b = n % 128
        n = math.floor(n / 128)
        out[#out + 1] = string.char(n > 0 and b + 128 or b)
    until n == 0
    return table.concat(out)
end

local function len_field(tag_byte, payload) return string.char(tag_byte) .. varint(#payload) .. payload end

-- ---- encoding ---------------------------------------------------------------------------------
-- values: list of {tag, value}
function M.encode_event(wall_time, step, values, file_version)
    local parts = { '\x09', f64le(wall_time) }
    if step and step ~= 0 then parts[#parts + 1] = '\x10' .. varint(step) end
    if file_version then parts[#parts + 1] = len_field(0x1A, file_version) end
    if values and #values > 0 then
        local vs = {}
        for i, tv in ipairs(values) do
            vs[i] = len_field(0x0A, len_field(0x0A, tv[1]) .. '\x15' .. f32le(tv[2]))
        end
        parts[#parts + 1] = len_field(0x2A, table.concat(vs))
    end
    return table.concat(parts)
end

function M.frame(data)
    local len = u32le(#data) .. '\0\0\0\0'
    return len .. u32le(masked_crc(len)) .. data .. u32le(masked_crc(data))
end

-- ---- writer -----------------------------------------------------------------------------------
local Writer = {}
Writer.__index = Writer

local function hostname()
    local buf = ffi.new('char[256]')
    C.nc_hostname(buf, 256)
    local h = ffi.string(buf):gsub('[^%w%.%-_]', '_')
    return h ~= '' and h or 'localhost'
end

function M.writer(log_dir, opts)
    opts = opts or {}
    if type(log_dir) ~= 'string' or log_dir == '' then error('tboard.writer: expected a log directory, got ' .. tostring(log_dir), 2) end
    require('nanochat.checkpoint').mkdir_p(log_dir)
    local now = C.nc_wall_time()
    local name = string.format('events.out.tfevents.%d.%s.%d', math.floor(now), hostname(), C.nc_getpid())
    if opts.suffix and opts.suffix ~= '' then name = name .. '.' .. opts.suffix end
    local path = log_dir:gsub('/+$', '') .. '/' .. name
    local f, err = io.open(path, 'wb')
    if not f then error('tboard.writer: cannot create ' .. path .. ': ' .. tostring(err), 2) end
    local w = setmetatable({ path = path, _f = f, events = 0 }, Writer)
    w:_write(M.encode_event(now, 0, nil, 'brain.Event:2'))
    return w
end

function Writer:_write(data)
    if not self._f then error('tboard: ' .. self.path .. ' is closed', 3) end
    local ok, err = self._f:write(M.frame(data))
    if not ok then error('tboard: writing ' .. self.path .. ' failed: ' .. tostring(err), 3) end
    self._f:flush()
    self.events = self.events + 1
end

function Writer:add_scalars(values, step, wall_time)
    local list = {}
    for tag, v in pairs(values) do
        if type(tag) ~= 'string' then error('tboard.add_scalars: tags must be strings', 2) end
        if type(v) ~= 'number' then error('tboard.add_scalars: value for ' .. tag .. ' is a ' .. type(v) .. ', not a number', 2) end
        list[#list + 1] = { tag, v }
    end
    table.sort(list, function(a, b) return a[1] < b[1] end)
    self:_write(M.encode_event(wall_time or C.nc_wall_time(), step or 0, list))
end

function Writer:add_scalar(tag, value, step, wall_time)
    self:add_scalars({ [tag] = value }, step, wall_time)
end

function Writer:flush() if self._f then self._f:flush() end end
function Writer:close()
    if self._f then self._f:close(); self._f = nil end
end

-- ---- reader -----------------------------------------------------------------------------------
-- a base-128 varint at s[i]: its value and the index after it (what names the kind in errors)
local function varint(s, i, what, kind)
    local v, sh = 0, 1
    repeat
        local b = s:byte(i)
        if not b then error(what .. ': truncated ' .. kind, 0) end
        v = v + (b % 128) * sh
        sh = sh * 128
        i = i + 1
    until b < 128
    return v, i
end

-- minimal protobuf walker: calls fn(field, wire, value, start, stop) for each field of s[i..j]
local function fields(s, i, j, fn, what)
    while i <= j do
        local key
        key, i = varint(s, i, what, 'varint')
        local field, wire = math.floor(key / 8), key % 8
        if wire == 0 then
            local v
            v, i = varint(s, i, what, 'varint')
            fn(field, wire, v)
        elseif wire == 1 then
            fn(field, wire, s:sub(i, i + 7)); i = i + 8
        elseif wire == 5 then
            fn(field, wire, s:sub(i, i + 3)); i = i + 4
        elseif wire == 2 then
            local n
            n, i = varint(s, i, what, 'length')
            fn(field, wire, nil, i, i + n - 1); i = i + n
        else
            error(what .. ': unsupported wire type ' .. wire, 0)
        end
    end
    if i ~= j + 1 then error(what .. ': field runs past the end of its message', 0) end
end

local function as_double(b) ffi.copy(dbuf, b, 8); return dbuf[0] end
local function as_float(b) ffi.copy(fbuf, b, 4); return tonumber(fbuf[0]) end

function M.decode_event(s, what)
    local ev = { step = 0, values = {} }
    fields(s, 1, #s, function(f, w, v, a, b)
        if f == 1 and w == 1 then ev.wall_time = as_double(v)
        elseif f == 2 and w == 0 then ev.step = v
        elseif f == 3 and w == 2 then ev.file_version = s:sub(a, b)
        elseif f == 5 and w == 2 then
            fields(s, a, b, function(f2, w2, _, a2, b2)
                if f2 == 1 and w2 == 2 then
                    local tag, val
                    fields(s, a2, b2, function(f3, w3, v3, a3, b3)
                        if f3 == 1 and w3 == 2 then tag = s:sub(a3, b3)
                        elseif f3 == 2 and w3 == 5 then val = as_float(v3) end
                    end, what)
                    ev.values[#ev.values + 1] = { tag, val }
                end
            end, what)
        end
    end, what)
    return ev
end

local function read_one(path)
    local f, err = io.open(path, 'rb')
    if not f then error('tboard.read: cannot open ' .. path .. ': ' .. tostring(err), 0) end
    local s = f:read('*a')
    f:close()
    local events, i = {}, 1
    while i <= #s do
        local where = string.format('tboard.read: %s: record at byte %d', path, i - 1)
        if i + 11 > #s then error(where .. ': truncated header', 0) end
        local lenb = s:sub(i, i + 7)
        if read_u32le(s, i + 8) ~= masked_crc(lenb) then error(where .. ': length CRC mismatch (corrupt file)', 0) end
        local len = read_u32le(s, i) + read_u32le(s, i + 4) * 4294967296
        local a = i + 12
        if a + len + 3 > #s then error(where .. ': truncated data (' .. len .. ' bytes announced)', 0) end
        local data = s:sub(a, a + len - 1)
        if read_u32le(s, a + len) ~= masked_crc(data) then error(where .. ': data CRC mismatch (corrupt file)', 0) end
        events[#events + 1] = M.decode_event(data, where)
        i = a + len + 4
    end
    return events
end

-- event files in a directory, sorted by name
function M.files(dir)
    local names = require('nanochat.checkpoint').list_dir(dir) or {}
    local out = {}
    for _, n in ipairs(names) do
        if n:find('tfevents', 1, true) then out[#out + 1] = dir:gsub('/+$', '') .. '/' .. n end
    end
    return out
end

function M.read(path)
    if C.nc_fs_kind(path) == 2 then
        local all = {}
        for _, p in ipairs(M.files(path)) do
            for _, e in ipairs(read_one(p)) do all[#all + 1] = e end
        end
        return all
    end
    return read_one(path)
end

function M.scalars(path)
    local out = {}
    for _, e in ipairs(M.read(path)) do
        for _, tv in ipairs(e.values) do
            local l = out[tv[1]]
            if not l then l = {}; out[tv[1]] = l end
            l[#l + 1] = { step = e.step, value = tv[2], wall_time = e.wall_time }
        end
    end
    return out
end

return M
