-- lua/nanochat/checkpoint.lua — nc.checkpoint: training checkpoints as directories.
--
-- Layout of one checkpoint directory:
--   model.safetensors   the model's state_dict (any safetensors reader can open it)
--   optim.safetensors   the optimizer's state_dict().tensors (absent when no optimizer was given)
--   meta.json           { format = "nanochat-checkpoint", version, nanochat_version, created,
--                         step, files = { [name] = { crc32c = "8 hex digits", bytes = n } },
--                         optimizer = <optimizer state_dict().meta>, ...caller meta (config,
--                         schedule position, data cursor, rng, tok_hash) }
-- A training run keeps them under one root: ROOT/step_000100, ROOT/step_000200, ... and
-- ROOT/latest (a one-line text file naming the newest step directory).
--
-- Promise:
--  - save(dir, ...) is atomic: everything is written into a temp directory next to dir
--    (".<name>.tmp.<pid>"), every file is fsync'ed, the temp directory is renamed to dir and the
--    parent is fsync'ed. Any failure (full disk, unwritable parent, ...) removes the temp
--    directory and raises "checkpoint.save: <dir>: <what failed>"; a checkpoint already at dir,
--    and every other checkpoint, is untouched.
--  - load(dir) verifies the CRC-32C and size of every file listed in meta.json before parsing a
--    tensor; a corrupt, truncated or missing file raises an error naming that file.
--  - latest(root) returns the newest valid checkpoint: 'latest' first, then the step directories
--    from the highest step down, skipping (and reporting) invalid ones.
--  - JSON numbers are written with enough digits to read back bitwise (dkjson's encoder keeps
--    only 14), so optimizer meta and loader cursors survive a round trip exactly.
local core = require 'nanochat.core'
local Tensor = require 'nanochat.tensor'
local io_ = require 'nanochat.io'
local dkjson = require 'dkjson'
local ffi, C = core.ffi, core.C

local M = {}
M.VERSION = 1
M.FORMAT = 'nanochat-checkpoint'

-- ---- JSON with exact numbers ----------------------------------------------------------------
local function num_str(v)
    if v ~= v or v == math.huge or v == -math.huge then return 'null' end
    if v == math.floor(v) and math.abs(v) < 2 ^ 53 then return string.format('%d', v) end
    for digits = 15, 17 do
        local s = string.format('%.' .. digits .. 'g', v)
        if tonumber(s) == v then return s end
    end
end

local function is_array(t)
    local mt = getmetatable(t)
    if mt and mt.__jsontype then return mt.__jsontype == 'array' end
    local n = 0
    for _ in pairs(t) do n = n + 1 end
    return n > 0 and n == #t
end

local function encode(v, out, path)
    local tv = type(v)
    if tv == 'nil' then out[#out + 1] = 'null'
    elseif tv == 'boolean' then out[#out + 1] = tostring(v)
    elseif tv == 'number' then out[#out + 1] = num_str(v)
    elseif tv == 'string' then out[#out + 1] = dkjson.quotestring(v)
    elseif tv == 'table' then
        if is_array(v) then
            out[#out + 1] = '['
            for i = 1, #v do
                if i > 1 then out[#out + 1] = ',' end
                encode(v[i], out, path .. '[' .. i .. ']')
            end
            out[#out + 1] = ']'
        else
            local keys = {}
            for k in pairs(v) do
                if type(k) ~= 'string' and type(k) ~= 'number' then
                    error('json: key of type ' .. type(k) .. ' at ' .. path, 0)
                end
                keys[#keys + 1] = k
            end
            table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
            out[#out + 1] = '{'
            for i, k in ipairs(keys) do
                if i > 1 then out[#out + 1] = ',' end
                out[#out + 1] = dkjson.quotestring(tostring(k))
                out[#out + 1] = ':'
                encode(v[k], out, path .. '.' .. tostring(k))
            end
            out[#out + 1] = '}'
        end
    else
        error('json: cannot encode a ' .. tv .. ' at ' .. path, 0)
    end
end

-- JSON text of a plain Lua value (sorted keys, exact numbers; NaN/inf become null)
function M.json_encode(v)
    local out = {}
    encode(v, out, '$')
    return table.concat(out)
end

function M.json_decode(text, what)
    local ok, obj, _, err = pcall(dkjson.decode, text, 1, nil)
    if not ok or obj == nil then error((what or 'json') .. ': not valid JSON: ' .. tostring(ok and err or obj), 0) end
    return obj
end

-- ---- file helpers -----------------------------------------------------------------------------
local function cerr() return ffi.string(C.nc_last_error()) end

local function dirname(p) return p:match('^(.*)/[^/]*$') or '.' end
local function basename(p) return p:match('([^/]*)$') end
local function strip_slash(p) return (#p > 1 and p:gsub('/+$', '')) or p end

local read_file = require('nanochat.io').read_file

local function mkdir_p(path)
    if C.nc_fs_kind(path) == 2 then return end
    local parent = dirname(path)
    if parent ~= path and parent ~= '' and parent ~= '.' and parent ~= '/' then mkdir_p(parent) end
    if C.nc_fs_mkdir(path) ~= 0 then error(cerr(), 0) end
end
M.mkdir_p = mkdir_p

function M.list_dir(path)
    local p = ffi.new('char *[1]')
    if C.nc_fs_list_dir(path, p) ~= 0 then return nil, cerr() end
    local s = ffi.string(p[0])
    C.nc_free(p[0])
    local names = {}
    for n in s:gmatch('([^\n]+)\n') do names[#names + 1] = n end
    table.sort(names)
    return names
end

local function checksum(path)
    local crc, size = ffi.new('uint32_t[1]'), ffi.new('int64_t[1]')
    if C.nc_fs_checksum(path, crc, size) ~= 0 then return nil, cerr() end
    return string.format('%08x', crc[0]), tonumber(size[0])
end

-- ---- save -------------------------------------------------------------------------------------
local function state_of(model)
    if type(model) ~= 'table' then error('checkpoint.save: model must be a Module or a table name -> tensor', 3) end
    if type(model.state_dict) == 'function' then return model:state_dict() end
    return model
end

-- save(dir, { model = Module | {name = tensor}, optimizer = obj with state_dict() | nil,
--             meta = plain table }) -> dir
function M.save(dir, objs)
    if type(dir) ~= 'string' or dir == '' then error('checkpoint.save: expected a directory path, got ' .. tostring(dir), 2) end
    objs = objs or {}
    dir = strip_slash(dir)
    local parent, name = dirname(dir), basename(dir)
    local ok, e = pcall(mkdir_p, parent)
    if not ok then error('checkpoint.save: ' .. dir .. ': cannot create the parent directory: ' .. tostring(e), 2) end
    local tmp = string.format('%s/.%s.tmp.%d', parent, name, C.nc_getpid())
    C.nc_fs_remove_tree(tmp)
    local meta = {}
    for k, v in pairs(objs.meta or {}) do meta[k] = v end
    meta.format, meta.version, meta.nanochat_version = M.FORMAT, M.VERSION, ffi.string(C.nc_version())
    meta.created = C.nc_wall_time()
    meta.files = {}
    local function work()
        if C.nc_fs_mkdir(tmp) ~= 0 then error(cerr(), 0) end
        local function put(fname, tensors, md)
            local path = tmp .. '/' .. fname
            io_.save(path, tensors, md)
            local crc, size = checksum(path)
            if not crc then error(size, 0) end
            meta.files[fname] = { crc32c = crc, bytes = size }
        end
        put('model.safetensors', state_of(objs.model or {}), { format = M.FORMAT })
        if objs.optimizer then
            local sd = objs.optimizer:state_dict()
            put('optim.safetensors', sd.tensors or {}, { format = M.FORMAT })
            meta.optimizer = sd.meta or {}
        end
        require('nanochat.io').write_file(tmp .. '/meta.json', M.json_encode(meta) .. '\n')
        if C.nc_fs_fsync(tmp) ~= 0 then error(cerr(), 0) end
        -- an existing checkpoint at dir is replaced only once the new one is complete
        local old
        if C.nc_fs_kind(dir) ~= 0 then
            old = string.format('%s/.%s.old.%d', parent, name, C.nc_getpid())
            C.nc_fs_remove_tree(old)
            if C.nc_fs_rename(dir, old) ~= 0 then error(cerr(), 0) end
        end
        if C.nc_fs_rename(tmp, dir) ~= 0 then
            local msg = cerr()
            if old then C.nc_fs_rename(old, dir) end
            error(msg, 0)
        end
        if C.nc_fs_fsync(parent) ~= 0 then error(cerr(), 0) end
        if old then C.nc_fs_remove_tree(old) end
    end
    local ok2, err = pcall(work)
    if not ok2 then
        C.nc_fs_remove_tree(tmp)
        error('checkpoint.save: ' .. dir .. ': ' .. tostring(err), 2)
    end
    return dir
end

-- ---- load -------------------------------------------------------------------------------------
local function fail(dir, fmt, ...) error('checkpoint: ' .. dir .. ': ' .. string.format(fmt, ...), 0) end

-- meta.json of dir, after checking every listed file's size and CRC-32C
function M.verify(dir)
    dir = strip_slash(dir)
    if C.nc_fs_kind(dir) ~= 2 then fail(dir, 'not a checkpoint directory (missing)') end
    local mpath = dir .. '/meta.json'
    local text = read_file(mpath)
    if not text then fail(dir, 'missing meta.json (%s)', mpath) end
    local ok, meta = pcall(M.json_decode, text, mpath)
    if not ok then fail(dir, '%s', meta) end
    if type(meta) ~= 'table' or meta.format ~= M.FORMAT then fail(dir, '%s is not a nanochat checkpoint description', mpath) end
    if type(meta.version) ~= 'number' or meta.version > M.VERSION then
        fail(dir, '%s has format version %s; this nanochat reads up to %d', mpath, tostring(meta.version), M.VERSION)
    end
    if type(meta.files) ~= 'table' or not meta.files['model.safetensors'] then fail(dir, '%s lists no model.safetensors', mpath) end
    local names = {}
    for fname in pairs(meta.files) do names[#names + 1] = fname end
    table.sort(names)
    for _, fname in ipairs(names) do
        local want = meta.files[fname]
        local path = dir .. '/' .. fname
        if C.nc_fs_kind(path) ~= 1 then fail(dir, '%s is missing', path) end
        local crc, size = checksum(path)
        if not crc then fail(dir, '%s', size) end
        if size ~= want.bytes then
            fail(dir, '%s is %d bytes, meta.json says %d (truncated or overwritten)', path, size, want.bytes)
        end
        if crc ~= want.crc32c then
            fail(dir, '%s is corrupt: CRC-32C %s, meta.json says %s', path, crc, tostring(want.crc32c))
        end
    end
    return meta
end

-- load(dir) -> { model = {name = tensor}, optim = {tensors =, meta =} | nil, meta = table, dir = dir }
-- dir may also be a run root holding a 'latest' pointer / step directories.
function M.load(dir, opts)
    if type(dir) ~= 'string' or dir == '' then error('checkpoint.load: expected a directory path, got ' .. tostring(dir), 2) end
    dir = strip_slash(dir)
    if C.nc_fs_kind(dir .. '/meta.json') == 0 and (C.nc_fs_kind(dir .. '/latest') == 1 or #M.list(dir) > 0) then
        local found, problems = M.latest(dir)
        if not found then error('checkpoint.load: ' .. dir .. ': no valid checkpoint (' .. table.concat(problems, '; ') .. ')', 2) end
        dir = found
    end
    local ok, meta = pcall(M.verify, dir)
    if not ok then error(meta, 2) end
    local lopts = opts and { device = opts.device } or nil
    local model = io_.load(dir .. '/model.safetensors', lopts)
    local optim
    if meta.files['optim.safetensors'] then
        optim = { tensors = io_.load(dir .. '/optim.safetensors', lopts), meta = meta.optimizer or {} }
    end
    return { model = model, optim = optim, meta = meta, dir = dir }
end

-- restore(dir, { model =, optimizer =, loader = }) loads dir and applies it: model:load_state_dict,
-- optimizer:load_state_dict, loader:set_state(meta.data), RNG states (meta.rng). Returns the meta.
function M.restore(dir, objs)
    local ck = M.load(dir)
    objs = objs or {}
    if objs.model then
        if type(objs.model.load_state_dict) == 'function' then objs.model:load_state_dict(ck.model)
        else for k, t in pairs(ck.model) do objs.model[k]:copy_(t) end end
    end
    if objs.optimizer then
        if not ck.optim then error('checkpoint.restore: ' .. ck.dir .. ' holds no optimizer state', 2) end
        objs.optimizer:load_state_dict(ck.optim)
    end
    if objs.loader and ck.meta.data ~= nil then objs.loader:set_state(ck.meta.data) end
    M.restore_rng(ck.meta.rng, objs.generators)
    ck.meta.dir = ck.dir
    return ck.meta
end

-- RNG state: { default = nc.default_generator:get_state(), [name] = gen:get_state() ... }
function M.rng_state(generators)
    local nc = require 'nanochat'
    local st = { default = nc.default_generator:get_state() }
    for k, g in pairs(generators or {}) do st[k] = g:get_state() end
    return st
end

function M.restore_rng(st, generators)
    if type(st) ~= 'table' then return end
    local nc = require 'nanochat'
    if st.default then nc.default_generator:set_state(st.default) end
    for k, g in pairs(generators or {}) do
        if st[k] then g:set_state(st[k]) end
    end
end

-- ---- runs: step directories, 'latest', keep the last K ------------------------------------------
function M.step_dir(root, step) return string.format('%s/step_%06d', strip_slash(root), step) end

-- step directories under root, ascending: { {step = n, path = p}, ... }
function M.list(root)
    root = strip_slash(root)
    local names = M.list_dir(root) or {}
    local out = {}
    for _, n in ipairs(names) do
        local s = n:match('^step_(%d+)$')
        if s and C.nc_fs_kind(root .. '/' .. n) == 2 then out[#out + 1] = { step = tonumber(s), path = root .. '/' .. n } end
    end
    table.sort(out, function(a, b) return a.step < b.step end)
    return out
end

-- newest valid checkpoint under root, or nil; second result lists the problems met on the way
function M.latest(root)
    root = strip_slash(root)
    local problems, tried = {}, {}
    local ptr = read_file(root .. '/latest')
    local cands = {}
    if ptr then
        local name = ptr:match('^%s*(.-)%s*$')
        if name ~= '' and not name:find('/', 1, true) then cands[#cands + 1] = root .. '/' .. name end
    end
    local list = M.list(root)
    for i = #list, 1, -1 do cands[#cands + 1] = list[i].path end
    for _, d in ipairs(cands) do
        if not tried[d] then
            tried[d] = true
            local ok, err = pcall(M.verify, d)
            if ok then return d, problems end
            problems[#problems + 1] = tostring(err)
        end
    end
    return nil, problems
end

-- save_step(root, step, objs, {keep = K}) -> dir: writes root/step_NNNNNN, points 'latest' at it
-- (atomically: temp file + rename) and removes all but the newest K step directories.
function M.save_step(root, step, objs, opts)
    root = strip_slash(root)
    local dir = M.save(M.step_dir(root, step), objs)
    local tmp = string.format('%s/.latest.tmp.%d', root, C.nc_getpid())
    local name = basename(dir)
    if C.nc_fs_write_file(tmp, name .. '\n', #name + 1) ~= 0 or C.nc_fs_rename(tmp, root .. '/latest') ~= 0
        or C.nc_fs_fsync(root) ~= 0 then
        local msg = cerr()
        C.nc_fs_remove_tree(tmp)
        error('checkpoint.save: ' .. root .. '/latest: ' .. msg, 2)
    end
    local keep = opts and opts.keep or 3
    if keep and keep > 0 then
        local list = M.list(root)
        for i = 1, #list - keep do
            if list[i].path ~= dir then C.nc_fs_remove_tree(list[i].path) end
        end
    end
    return dir
end

return M
