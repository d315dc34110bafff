-- lua/nanochat/init.lua — `local nc = require 'nanochat'`: the library's front door.
--
-- Promise: one table `nc` holding tensor creation, the seeded generator, every op (merged from
-- lua/nanochat/ops/*.lua and io.lua, each also a Tensor method), autograd controls, nn and the
-- runtime knobs (threads, CPU kernel choice, CUDA availability, memory counters).
local core = require 'nanochat.core'
local Tensor = require 'nanochat.tensor'
local ag = require 'nanochat.autograd'
local ffi, C = core.ffi, core.C

local nc = {}
nc.Tensor = Tensor
nc.core = core
nc.C = C

nc.version = ffi.string(C.nc_version())

-- ---- runtime -------------------------------------------------------------------------------
function nc.set_num_threads(n) C.nc_set_num_threads(n) end
function nc.get_num_threads() return C.nc_get_num_threads() end
function nc.cpu_kernel() return ffi.string(C.nc_cpu_kernel_name()) end
function nc.set_cpu_kernel(name) core.check(C.nc_set_cpu_kernel(name), 'set_cpu_kernel') end
-- AMX (kernels/cpu/amx.c): true when the tile GEMMs run (hardware + OS permission, not disabled by
-- NC_AMX=0 / set_amx(false) / the scalar kernel); amx_status says why not; set_amx(true | false | nil)
function nc.cpu_amx() return C.nc_cpu_amx() == 1 end
function nc.amx_status() return ffi.string(C.nc_amx_status()) end
function nc.set_amx(on) core.check(C.nc_set_amx(on == nil and -1 or (on and 1 or 0)), 'set_amx') end
-- cpu_gemm_fast: true when nc_gemm_bf16 / nc_gemm_s8 (the bitlinear training GEMMs) run on hardware:
-- AMX, or AVX-512 BF16 + VNNI without AMX; gemm_backend names it ('amx', 'avx512-bf16-vnni', ...)
function nc.cpu_gemm_fast() return C.nc_cpu_gemm_fast() == 1 end
function nc.gemm_backend() return ffi.string(C.nc_gemm_backend()) end
-- set_gemm_backend('auto' | 'amx' | 'avx512' | 'reference'): an error when unavailable
function nc.set_gemm_backend(name) core.check(C.nc_set_gemm_backend(name or 'auto'), 'set_gemm_backend') end
function nc.cuda_available() return C.nc_cuda_available() == 1 end
function nc.cuda_status() return ffi.string(C.nc_cuda_status()) end
-- these first release the tensors whose Lua side was collected (tensor.lua's registry), so
-- `collectgarbage('collect'); nc.mem_stats()` sees their memory gone
function nc.mem_stats() Tensor._release_dead(); return core.mem_stats() end
function nc.mem_trim() Tensor._release_dead(); C.nc_mem_trim() end
function nc.mem_reset_peak() Tensor._release_dead(); C.nc_mem_reset_peak() end

-- ---- autograd ------------------------------------------------------------------------------
nc.no_grad = ag.no_grad
nc.grad_enabled = ag.enabled
nc.set_grad_enabled = ag.set_enabled
function nc.backward(t, grad, opts) return ag.backward(t, grad, opts) end
-- zero (drop) the gradients of a list of tensors
function nc.zero_grad(params)
    for _, p in ipairs(params) do p.grad = nil end
end

-- ---- seeded generator ----------------------------------------------------------------------
-- Philox counter-based: a generator is (seed, offset); each draw of n values uses counters
-- offset .. offset+n-1 and advances offset, so results never depend on the thread count.
local Generator = {}
Generator.__index = Generator
function nc.generator(seed)
    return setmetatable({ seed = seed or 0, offset = 0 }, Generator)
end
function Generator:manual_seed(s) self.seed, self.offset = s, 0; return self end
function Generator:take(n)
    local off = self.offset
    self.offset = off + n
    return off
end
function Generator:get_state() return { seed = self.seed, offset = self.offset } end
function Generator:set_state(st) self.seed, self.offset = st.seed, st.offset end

nc.default_generator = nc.generator(0)
function nc.manual_seed(s) nc.default_generator:manual_seed(s) end

-- ---- creation ------------------------------------------------------------------------------
-- shape: {2, 3} or 2, 3; opts: {dtype=, device=, requires_grad=, generator=}
local function split_args(...)
    local n = select('#', ...)
    local first = ...
    if type(first) == 'table' and not Tensor.is(first) then
        return first, (select(2, ...)) or {}
    end
    local shape = {}
    local opts = {}
    for i = 1, n do
        local v = select(i, ...)
        if type(v) == 'number' then shape[#shape + 1] = v
        elseif type(v) == 'table' then opts = v end
    end
    return shape, opts
end

local function finish(t, opts)
    if opts.requires_grad then t:requires_grad_(true) end
    return t
end

function nc.empty(...)
    local shape, opts = split_args(...)
    return finish(Tensor.empty(shape, opts.dtype, opts.device), opts)
end

function nc.zeros(...)
    local shape, opts = split_args(...)
    return finish(Tensor.zeros(shape, opts.dtype, opts.device), opts)
end

function nc.ones(...)
    local shape, opts = split_args(...)
    return finish(Tensor.ones(shape, opts.dtype, opts.device), opts)
end

function nc.full(shape, value, opts)
    opts = opts or {}
    local t = Tensor.empty(shape, opts.dtype, opts.device)
    t:fill_(value)
    return finish(t, opts)
end

function nc.zeros_like(t, opts) opts = opts or {}; return finish(Tensor.zeros(t:shape(), opts.dtype or t:dtype(), opts.device or t:device()), opts) end
function nc.ones_like(t, opts) opts = opts or {}; return finish(Tensor.ones(t:shape(), opts.dtype or t:dtype(), opts.device or t:device()), opts) end
function nc.empty_like(t, opts) opts = opts or {}; return finish(Tensor.empty(t:shape(), opts.dtype or t:dtype(), opts.device or t:device()), opts) end

-- nc.arange(n), nc.arange(start, stop), nc.arange(start, stop, step), each with optional opts
function nc.arange(a, b, c, d)
    local opts = {}
    local args = { a, b, c, d }
    local nums = {}
    for _, v in ipairs(args) do
        if type(v) == 'number' then nums[#nums + 1] = v elseif type(v) == 'table' then opts = v end
    end
    local start, stop, step
    if #nums == 1 then start, stop, step = 0, nums[1], 1
    elseif #nums == 2 then start, stop, step = nums[1], nums[2], 1
    elseif #nums == 3 then start, stop, step = nums[1], nums[2], nums[3]
    else error('arange: expected (stop), (start, stop) or (start, stop, step)', 2) end
    if step == 0 then error('arange: step must not be 0', 2) end
    local n = math.max(0, math.ceil((stop - start) / step))
    local t = Tensor.empty({ n }, opts.dtype or (math.floor(start) == start and math.floor(step) == step and 'i64' or 'f32'), 'cpu')
    core.check(C.nc_tensor_arange(t._c, start, step), 'arange')
    if opts.device then t = t:to(opts.device) end
    return finish(t, opts)
end

local function random(kind, shape, a, b, opts)
    opts = opts or {}
    local gen = opts.generator or nc.default_generator
    local t = Tensor.empty(shape, opts.dtype, opts.device)
    local off = gen:take(t:numel())
    local f = kind == 'rand' and C.nc_tensor_rand or C.nc_tensor_randn
    core.check(f(t._c, gen.seed, off, a, b), kind)
    return finish(t, opts)
end

-- nc.rand(shape, opts): uniform [lo, hi) with opts.lo/opts.hi (default [0, 1))
function nc.rand(...)
    local shape, opts = split_args(...)
    return random('rand', shape, opts.lo or 0, opts.hi or 1, opts)
end

-- nc.randn(shape, opts): normal with opts.mean/opts.std (default 0, 1)
function nc.randn(...)
    local shape, opts = split_args(...)
    return random('randn', shape, opts.mean or 0, opts.std or 1, opts)
end

-- nc.tensor({{1, 2}, {3, 4}}, {dtype=, device=, requires_grad=})
function nc.tensor(data, opts)
    opts = opts or {}
    if Tensor.is(data) then return finish(data:clone(), opts) end
    return finish(Tensor.from_table(data, opts.dtype, opts.device), opts)
end

nc.is_tensor = Tensor.is

-- ---- ops modules: each returns a table of functions merged into nc and the Tensor methods ----
nc._modules = {}
-- (as_methods = false: functions join nc only, e.g. nc.save/nc.load are not tensor methods)
local function merge(modname, as_methods)
    if not package.searchpath(modname, package.path) then return end
    local M = require(modname)
    nc._modules[#nc._modules + 1] = modname
    for k, v in pairs(M) do
        nc[k] = v
        if as_methods ~= false and type(v) == 'function' and rawget(Tensor, k) == nil then Tensor[k] = v end
    end
end
merge('nanochat.ops.elementwise')
merge('nanochat.ops.index')
merge('nanochat.ops.nn')
merge('nanochat.io', false)

-- Subsystems load on first use: nc.X is require('nanochat.X') for any module file
-- lua/nanochat/X.lua or X/init.lua (nn, tokenizer, data, optim, sched, models, train, generate...).
setmetatable(nc, {
    __index = function(t, k)
        if type(k) ~= 'string' or not k:match('^[%a_][%w_]*$') then return nil end
        local modname = 'nanochat.' .. k
        if not package.searchpath(modname, package.path) then return nil end
        local m = require(modname)
        rawset(t, k, m)
        return m
    end,
})

return nc
