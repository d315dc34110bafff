-- lua/nanochat/core.lua — loads libnanochat through the LuaJIT FFI.
--
-- Promise: the FFI declarations come from the NC_FFI_BEGIN/NC_FFI_END region of
-- core/nanochat.h itself (never a hand-copied cdef), the library found next to this file (or
-- where the launcher says) is checked against the header's ABI version and struct sizes before
-- anything else runs, and every failing C status becomes a Lua error carrying the C message.
local ffi = require 'ffi'

local M = { ffi = ffi }

local function dirname(p) return p:match('^(.*)/[^/]*$') or '.' end
local function exists(p) local f = io.open(p, 'rb'); if f then f:close() return true end return false end

-- lua/nanochat/core.lua -> lua/ -> project root (or share/nanochat after `make install`)
local here = debug.getinfo(1, 'S').source:match('^@(.*)$') or 'lua/nanochat/core.lua'
local luadir = dirname(dirname(here))
local root = rawget(_G, 'NANOCHAT_HOME') or dirname(luadir)
M.root = root

local function first_existing(list)
    for i = 1, table.maxn(list) do
        local p = list[i]
        if p and exists(p) then return p end
    end
end

M.header_path = first_existing {
    os.getenv('NANOCHAT_HEADER'),
    root .. '/core/nanochat.h',
    root .. '/include/nanochat.h',
    luadir .. '/../core/nanochat.h',
}
if not M.header_path then
    error('nanochat: cannot find core/nanochat.h next to ' .. luadir .. ' (set NANOCHAT_HEADER)')
end

local libdir = rawget(_G, 'NANOCHAT_LIBDIR') or os.getenv('NANOCHAT_LIBDIR')
M.lib_path = first_existing {
    libdir and (libdir .. '/libnanochat.so'),
    root .. '/lib/libnanochat.so',
    root .. '/../../lib/nanochat/libnanochat.so',
}
if not M.lib_path then
    error('nanochat: cannot find lib/libnanochat.so under ' .. root .. ' (run `make` first)')
end

-- The FFI region of the header, verbatim (comments are fine for ffi.cdef; '#' lines are not,
-- and a spec checks there are none).
function M.ffi_region(path)
    local f = assert(io.open(path or M.header_path, 'rb'))
    local text = f:read('*a')
    f:close()
    local region = text:match('/%* NC_FFI_BEGIN %*/(.-)/%* NC_FFI_END %*/')
    if not region then error('nanochat: ' .. (path or M.header_path) .. ' has no NC_FFI_BEGIN/END region') end
    return region
end

-- OpenBLAS 0.3.21 (Debian 12) does not recognise some newer CPUs and silently falls back to its
-- slowest (Prescott) kernels, ~6x slower sgemm. It reads OPENBLAS_CORETYPE once, when loaded, so
-- pick the best core type the CPU supports before ffi.load, unless the user has chosen one.
ffi.cdef [[ int setenv(const char *name, const char *value, int overwrite); ]]
function M.openblas_coretype(flags)
    if flags:find('%savx512f%s') and flags:find('%savx512bw%s') then return 'SkylakeX' end
    if flags:find('%savx2%s') and flags:find('%sfma%s') then return 'Haswell' end
end
if not os.getenv('OPENBLAS_CORETYPE') then
    local f = io.open('/proc/cpuinfo', 'rb')
    if f then
        local line = ''
        for l in f:lines() do if l:match('^flags') then line = l .. ' ' break end end
        f:close()
        local core = M.openblas_coretype(line)
        if core then ffi.C.setenv('OPENBLAS_CORETYPE', core, 0) end
    end
end

-- OpenBLAS's pthreads and libgomp's threads share the cores, and by default each pool keeps
-- spinning after its work, competing with the other pool's next call (~35% of a tiny training step
-- on 2 cores). Both read these once, when loaded; a value the user set wins, NC_POOL_DEFAULTS=1
-- keeps the runtimes' defaults (core/launcher.c applies the same rule before it loads the library).
-- NC_POOL_APPLIED lists what was set here (a benchmark starts its PyTorch peer without them).
M.THREAD_ENV = { { 'OPENBLAS_THREAD_TIMEOUT', '4' }, { 'GOMP_SPINCOUNT', '10000' } }
if os.getenv('NC_POOL_DEFAULTS') ~= '1' then
    local applied = {}
    for _, kv in ipairs(M.THREAD_ENV) do
        if not os.getenv(kv[1]) then
            ffi.C.setenv(kv[1], kv[2], 0)
            applied[#applied + 1] = kv[1]
        end
    end
    if #applied > 0 then ffi.C.setenv('NC_POOL_APPLIED', table.concat(applied, ' '), 0) end
end
-- 'env -u VAR ...' that removes the variables set above (for starting a non-nanochat peer, or a
-- nanochat child that should see the runtimes' defaults); '' when none were set
function M.unset_pool_env()
    local names = os.getenv('NC_POOL_APPLIED')
    if not names or names == '' then return '' end
    local parts = { 'env' }
    for name in names:gmatch('%S+') do parts[#parts + 1] = '-u ' .. name end
    parts[#parts + 1] = '-u NC_POOL_APPLIED'
    return table.concat(parts, ' ')
end

ffi.cdef(M.ffi_region())
local C = ffi.load(M.lib_path)
M.C = C

-- ABI check: the library must have been built from this header.
if C.nc_abi_version() ~= C.NC_ABI_VERSION then
    error(string.format('nanochat: library ABI %d does not match header ABI %d (rebuild with `make`)',
        C.nc_abi_version(), C.NC_ABI_VERSION))
end
for _, ty in ipairs { 'nc_tensor', 'nc_storage', 'nc_dtype_traits', 'nc_mem_stats' } do
    local c_size, lua_size = tonumber(C.nc_abi_sizeof(ty)), ffi.sizeof(ty)
    if c_size ~= lua_size then
        error(string.format('nanochat: sizeof(%s) is %d in the library but %d in the FFI view (rebuild)',
            ty, c_size, lua_size))
    end
end

-- Raise the C error message when a status is not NC_OK. `level` defaults to the caller's caller.
function M.check(status, op)
    if status ~= 0 then
        local msg = ffi.string(C.nc_last_error())
        if op and msg:sub(1, #op + 1) ~= op .. ':' then msg = op .. ': ' .. msg end
        error(msg, 0)
    end
end

-- For functions returning a +1 pointer (NULL on failure).
function M.check_ptr(p, op)
    if p == nil then
        local msg = ffi.string(C.nc_last_error())
        if op and msg:sub(1, #op + 1) ~= op .. ':' then msg = op .. ': ' .. msg end
        error(msg, 0)
    end
    return p
end

-- dtype and device names, read from the C traits table (never a Lua copy of it).
M.dtype_names, M.dtype_ids = {}, {}
for i = 0, C.NC_DTYPE_COUNT - 1 do
    local tr = C.nc_dtype_info(i)
    local name = ffi.string(tr.name)
    M.dtype_names[i] = name
    M.dtype_ids[name] = i
end
M.dtype_ids.float32, M.dtype_ids.float, M.dtype_ids.int64, M.dtype_ids.long = 0, 0, 5, 5
M.dtype_ids.int32, M.dtype_ids.int, M.dtype_ids.uint8, M.dtype_ids.bool = 4, 4, 6, 6
M.dtype_ids.float64, M.dtype_ids.double, M.dtype_ids.float16, M.dtype_ids.half = 7, 7, 2, 2
M.dtype_ids.bfloat16, M.dtype_ids.int8 = 1, 3
M.device_names = { [0] = 'cpu', [1] = 'cuda' }
M.device_ids = { cpu = 0, cuda = 1 }

function M.dtype_id(d)
    if d == nil then return C.NC_F32 end
    if type(d) == 'number' then
        if M.dtype_names[d] then return d end
    else
        local id = M.dtype_ids[d]
        if id then return id end
    end
    error('unknown dtype ' .. tostring(d) .. ' (expected f32, bf16, f16, i8, i32, i64, u8, f64)', 3)
end

function M.device_id(d)
    if d == nil then return 0 end
    if type(d) == 'number' and M.device_names[d] then return d end
    local id = M.device_ids[d]
    if id then return id end
    error('unknown device ' .. tostring(d) .. " (expected 'cpu' or 'cuda')", 3)
end

function M.mem_stats()
    local s = ffi.new('nc_mem_stats')
    C.nc_mem_stats_get(s)
    local t = {}
    for _, k in ipairs { 'host_bytes', 'host_peak', 'host_allocs', 'host_frees', 'device_bytes',
                         'device_peak', 'device_allocs', 'device_frees', 'tensors_live', 'host_cached' } do
        t[k] = tonumber(s[k])
    end
    return t
end

return M
