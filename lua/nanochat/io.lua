-- lua/nanochat/io.lua — nc.save / nc.load: tensors to and from safetensors files; nc.read_file /
-- write_file: the one pair of whole-file helpers the library uses for its small files.
--
-- Promise:
--  - nc.save(path, {name = tensor, ...}, metadata) writes one safetensors file atomically (the C
--    side writes path.tmp.<pid>, fsyncs and renames; a failed save leaves an existing file
--    untouched). Names are written in sorted order, so the same tensors give the same bytes.
--    Metadata values are converted to strings: integers without a decimal point, other numbers
--    with the fewest digits (15 to 17) that read back exactly, booleans as "true"/"false",
--    tables as JSON text.
--  - nc.load(path, opts) -> tensors, metadata. The JSON header is parsed with dkjson and checked
--    before any data is read: known dtypes, shapes of non-negative integers, byte ranges that
--    tile the data region exactly (no gap, no overlap, nothing past the end) and byte counts that
--    match the shapes. Any problem raises a Lua error "nc.load: <path>: <what is wrong>".
--    opts.device moves the loaded tensors (default: CPU).
local core = require 'nanochat.core'
local Tensor = require 'nanochat.tensor'
local json = require 'dkjson'
local ffi, C = core.ffi, core.C

local M = {}

-- safetensors dtype names <-> nanochat dtype names. BOOL (written by torch for bool tensors) is
-- read as u8; we never write it.
local ST_TO_NC = { F32 = 'f32', BF16 = 'bf16', F16 = 'f16', I8 = 'i8', I32 = 'i32', I64 = 'i64', U8 = 'u8',
                   F64 = 'f64', BOOL = 'u8' }

local function shape_str(s) return '(' .. table.concat(s, ', ') .. ')' end

local function meta_string(k, v)
    local tv = type(v)
    if tv == 'string' then return v end
    if tv == 'number' then
        if v ~= v then return 'nan' end
        if v == math.huge or v == -math.huge then return v > 0 and 'inf' or '-inf' end
        if v == math.floor(v) and math.abs(v) < 2 ^ 53 then return string.format('%d', v) end
        for digits = 15, 17 do   -- the shortest text that reads back as the same double
            local str = string.format('%.' .. digits .. 'g', v)
            if tonumber(str) == v then return str end
        end
    end
    if tv == 'boolean' then return tostring(v) end
    if tv == 'table' then
        local ok, s = pcall(json.encode, v)
        if ok and s then return s end
    end
    error(string.format('nc.save: metadata value for key %s is a %s (expected a string, number, boolean or table)',
        tostring(k), tv), 3)
end

local function metadata_json(metadata)
    if metadata == nil then return nil end
    if type(metadata) ~= 'table' then
        error('nc.save: metadata must be a table of strings, got ' .. type(metadata), 3)
    end
    local m, keys = {}, {}
    for k, v in pairs(metadata) do
        local ks = tostring(k)
        m[ks] = meta_string(ks, v)
        keys[#keys + 1] = ks
    end
    table.sort(keys)
    return json.encode(m, { keyorder = keys })
end

-- nc.save(path, tensors, metadata_or_nil)
function M.save(path, tensors, metadata)
    if type(path) ~= 'string' or path == '' then error('nc.save: expected a file path, got ' .. tostring(path), 2) end
    if type(tensors) ~= 'table' or Tensor.is(tensors) then
        error('nc.save: expected a table {name = tensor, ...}, got ' .. (Tensor.is(tensors) and 'a tensor' or type(tensors)), 2)
    end
    local names = {}
    for k, v in pairs(tensors) do
        if type(k) ~= 'string' then error('nc.save: tensor names must be strings, got ' .. type(k) .. ' ' .. tostring(k), 2) end
        if not Tensor.is(v) then error('nc.save: value for ' .. k .. ' is a ' .. type(v) .. ', not a tensor', 2) end
        names[#names + 1] = k
    end
    table.sort(names)
    local n = #names
    local cnames = ffi.new('const char *[?]', math.max(n, 1))
    local ctensors = ffi.new('const nc_tensor *[?]', math.max(n, 1))
    for i, k in ipairs(names) do
        cnames[i - 1] = k           -- the strings stay alive in `names`
        ctensors[i - 1] = tensors[k]._c
    end
    local meta = metadata_json(metadata)
    core.check(C.nc_safetensors_save(path, n, cnames, ctensors, meta), 'nc.save')
    return path
end

-- ---- load --------------------------------------------------------------------------------------
local function is_int(x) return type(x) == 'number' and x == math.floor(x) and x >= 0 and x < 2 ^ 53 end

local function int_list(v)
    if type(v) ~= 'table' then return false end
    local mt = getmetatable(v)
    if mt and mt.__jsontype == 'object' then return false end   -- dkjson marks {} vs []
    local n = 0
    for _ in pairs(v) do n = n + 1 end
    if n ~= #v then return false end
    for i = 1, n do if not is_int(v[i]) then return false end end
    return true
end

local function parse_header(path, text, data_size)
    local function fail(fmt, ...) error('nc.load: ' .. path .. ': ' .. string.format(fmt, ...), 0) end
    local ok, obj, _, err = pcall(json.decode, text, 1, nil)
    if not ok then fail('header is not valid JSON: %s', tostring(obj)) end
    if obj == nil then fail('header is not valid JSON: %s', tostring(err)) end
    if type(obj) ~= 'table' or (getmetatable(obj) or {}).__jsontype == 'array' then
        fail('header must be a JSON object, got %s', type(obj) == 'table' and 'an array' or type(obj))
    end
    local metadata = {}
    local entries = {}
    for name, e in pairs(obj) do
        if name == '__metadata__' then
            if type(e) ~= 'table' or (getmetatable(e) or {}).__jsontype == 'array' then
                fail('__metadata__ must be an object of strings, got %s', type(e))
            end
            for k, v in pairs(e) do
                if type(v) ~= 'string' then fail('__metadata__ value for key %s is a %s, not a string', tostring(k), type(v)) end
                metadata[k] = v
            end
        else
            if type(e) ~= 'table' then fail('entry %s is a %s, not an object', name, type(e)) end
            local dt = ST_TO_NC[e.dtype]
            if not dt then fail('tensor %s has unknown dtype %s', name, tostring(e.dtype)) end
            if not int_list(e.shape) then fail('tensor %s: shape must be a list of non-negative integers', name) end
            if #e.shape > 8 then fail('tensor %s has %d dims (at most 8)', name, #e.shape) end
            local off = e.data_offsets
            if not int_list(off) or #off ~= 2 then
                fail('tensor %s: data_offsets must be two non-negative integers [begin, end]', name)
            end
            if off[1] > off[2] then fail('tensor %s: data_offsets [%d, %d] run backwards', name, off[1], off[2]) end
            if off[2] > data_size then
                fail('tensor %s: data_offsets [%d, %d] run past the data region of %d bytes (truncated file?)',
                    name, off[1], off[2], data_size)
            end
            local numel = 1
            for _, s in ipairs(e.shape) do numel = numel * s end
            local esize = tonumber(C.nc_dtype_info(core.dtype_ids[dt]).elem_size)
            if off[2] - off[1] ~= numel * esize then
                fail('tensor %s: shape %s of %s needs %d bytes, data_offsets [%d, %d] hold %d', name,
                    shape_str(e.shape), e.dtype, numel * esize, off[1], off[2], off[2] - off[1])
            end
            entries[#entries + 1] = { name = name, dtype = dt, shape = e.shape, b = off[1], e = off[2] }
        end
    end
    -- the byte ranges must tile [0, data_size) exactly
    table.sort(entries, function(x, y)
        if x.b ~= y.b then return x.b < y.b end
        if x.e ~= y.e then return x.e < y.e end
        return x.name < y.name
    end)
    local pos, prev = 0, nil
    for _, en in ipairs(entries) do
        if en.b < pos then
            fail('tensors %s and %s overlap (bytes [%d, %d) and [%d, %d))', prev.name, en.name, prev.b, prev.e, en.b, en.e)
        elseif en.b > pos then
            fail('gap of %d bytes before tensor %s (data_offsets [%d, %d), previous data ends at %d)',
                en.b - pos, en.name, en.b, en.e, pos)
        end
        pos, prev = en.e, en
    end
    if pos ~= data_size then
        fail('data region is %d bytes but the tensors cover %d (trailing bytes)', data_size, pos)
    end
    return entries, metadata
end

-- "nc.load: <path>: <what>" from the C message, without the C side's own " ('<path>')" suffix
local function load_error(path, what)
    local msg = ffi.string(C.nc_last_error())
    local suffix = " ('" .. path .. "')"
    if msg:sub(-#suffix) == suffix then msg = msg:sub(1, -#suffix - 1) end
    return 'nc.load: ' .. path .. ': ' .. what .. msg
end

-- nc.load(path, opts) -> tensors (name -> Tensor), metadata (key -> string)
function M.load(path, opts)
    opts = opts or {}
    if type(path) ~= 'string' or path == '' then error('nc.load: expected a file path, got ' .. tostring(path), 2) end
    local jp = ffi.new('char *[1]')
    local ds, fs = ffi.new('int64_t[1]'), ffi.new('int64_t[1]')
    local st = C.nc_safetensors_read_header(path, jp, ds, fs)
    if st ~= 0 then error(load_error(path, ''), 2) end
    local text = ffi.string(jp[0])
    C.nc_free(jp[0])
    local data_start, file_size = tonumber(ds[0]), tonumber(fs[0])
    local entries, metadata = parse_header(path, text, file_size - data_start)
    local out = {}
    local shape_buf = ffi.new('int64_t[8]')
    for _, en in ipairs(entries) do
        for i, s in ipairs(en.shape) do shape_buf[i - 1] = s end
        local p = C.nc_tensor_new_from_file(path, data_start + en.b, en.e - en.b, core.dtype_ids[en.dtype],
            #en.shape, shape_buf)
        if p == nil then error(load_error(path, 'tensor ' .. en.name .. ': '), 2) end
        local t = Tensor.wrap(p)
        if opts.device and opts.device ~= 'cpu' then t = t:to(opts.device) end
        out[en.name] = t
    end
    return out, metadata
end

-- ---- whole small files (metadata, manifests, markers) ------------------------------------------
-- read_file(path) -> the bytes, or nil and the reason. write_file(path, text) creates or truncates,
-- writes and fsyncs (a Lua error naming the path and strerror; atomicity is the caller's: write
-- into a temporary name and rename, as the checkpoint and corpus writers do).
function M.read_file(path)
    local f, err = io.open(path, 'rb')
    if not f then return nil, err end
    local s = f:read('*a')
    f:close()
    return s
end

function M.write_file(path, text)
    if C.nc_fs_write_file(path, text, #text) ~= 0 then error(ffi.string(C.nc_last_error()), 0) end
end

return M
