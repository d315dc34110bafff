-- lua/nanochat/optim/linalg.lua — the optimizers' linear algebra, callable from Lua and specs.
--
-- Promise: thin wrappers over the C kernels (kernels/cpu/optim_linalg.c, optim.c) that allocate
-- outputs and raise Lua errors carrying the C message:
--   newton_schulz(x, {steps = 5, coefs = 'quintic' | 'cubic' | {{a, b, c}, ...}, fro_mult = 1,
--                 eps = 1e-7, dtype = 'f32' | 'bf16' | 'auto', form = 'auto' | 'standard' | 'gram'})
--        -> new tensor (rows, cols)
--        dtype: the products' precision (nanochat.h enum nc_ns_dtype): 'f32' = sgemm (default
--        here: FIRE's cubic iteration needs it), 'bf16' = bf16 inputs / f32 accumulation,
--        'auto' = bf16 where a hardware bf16 GEMM runs (AMX, AVX-512 BF16), else f32
--        form: the iteration (enum nc_ns_form): 'standard', 'gram' (run on the small r x r side,
--        restarting every 3 steps), 'auto' (default: 'gram' when the long side is >= 3x the short
--        one and the short one >= 64, as Muon does)
--   ns_dtype_auto() -> 'bf16' | 'f32': what 'auto' means on this CPU now
--   svd(a) -> u (m, k), s (k), vt (k, n)            (f32 or f64, LAPACK gesdd)
--   rsvd(g, r, {side = 'left'|'right', oversample = 8, power_iters = 2, seed = 0, counter = 0})
--        -> proj (d, r) with orthonormal columns
--   quant8(x, {block = 2048, stochastic = false, seed = 0, counter = 0, quant = 'linear' | 'dynamic'})
--        -> codes i8, scales f32
--   dequant8(codes, scales, shape, block, quant = 'linear' | 'dynamic') -> f32 tensor
--   codebook(quant) -> the 128 ascending magnitudes of the code map (f32), value = sign(c) map[|c|] s_b
-- Outputs are on the input's device (newton_schulz, rsvd, quant8, dequant8 run on CUDA tensors too;
-- svd and codebook are CPU-only).
local core = require 'nanochat.core'
local Tensor = require 'nanochat.tensor'
local ffi, C = core.ffi, core.C

local M = {}

M.QUINTIC = { { 3.4445, -4.7750, 2.0315 } }
M.CUBIC = { { 1.5, -0.5, 0.0 } }

local function coef_array(coefs)
    if coefs == nil or coefs == 'quintic' then coefs = M.QUINTIC
    elseif coefs == 'cubic' then coefs = M.CUBIC end
    if type(coefs) ~= 'table' or #coefs < 1 then
        error("newton_schulz: coefs must be 'quintic', 'cubic' or a list of {a, b, c} triples", 3)
    end
    local buf = ffi.new('double[?]', 3 * #coefs)
    for i, t in ipairs(coefs) do
        for j = 1, 3 do buf[3 * (i - 1) + j - 1] = t[j] end
    end
    return buf, #coefs
end

M.NS_DTYPES = { auto = C.NC_NS_AUTO, f32 = C.NC_NS_F32, bf16 = C.NC_NS_BF16 }

-- what ns_dtype = 'auto' means on this CPU now: 'bf16' (AMX or AVX-512 BF16) or 'f32'
function M.ns_dtype_auto() return C.nc_ns_dtype_auto() == C.NC_NS_BF16 and 'bf16' or 'f32' end

-- 'auto' | 'f32' | 'bf16' -> enum nc_ns_dtype (nil means dflt)
function M.ns_dtype(fn, d, dflt, level)
    if d == nil then d = dflt end
    local v = M.NS_DTYPES[d]
    if not v then error(fn .. ": ns_dtype must be 'auto', 'f32' or 'bf16', got " .. tostring(d), (level or 2) + 1) end
    return v
end

M.NS_FORMS = { auto = C.NC_NS_FORM_AUTO, standard = C.NC_NS_FORM_STANDARD, gram = C.NC_NS_FORM_GRAM }

-- 'auto' | 'standard' | 'gram' -> enum nc_ns_form (nil means 'auto')
function M.ns_form(fn, f, level)
    local v = M.NS_FORMS[f == nil and 'auto' or f]
    if not v then error(fn .. ": ns_form must be 'auto', 'standard' or 'gram', got " .. tostring(f), (level or 2) + 1) end
    return v
end

function M.newton_schulz(x, opts)
    opts = opts or {}
    local abc, n = coef_array(opts.coefs)
    local dt = M.ns_dtype('newton_schulz', opts.dtype, 'f32', 2)
    local form = M.ns_form('newton_schulz', opts.form, 2)
    local xc = x:contiguous()
    local out = Tensor.empty(xc:shape(), 'f32', xc:device())
    core.check(C.nc_newton_schulz_form(out._c, xc._c, opts.steps or 5, abc, n, opts.fro_mult or 1, opts.eps or 1e-7,
        dt, form), 'newton_schulz')
    return out
end

function M.svd(a)
    local m, n = a:size(0), a:size(1)
    local k = math.min(m, n)
    local dt = a:dtype()
    local u, s, vt = Tensor.empty({ m, k }, dt), Tensor.empty({ k }, dt), Tensor.empty({ k, n }, dt)
    core.check(C.nc_svd(u._c, s._c, vt._c, a._c), 'svd')
    return u, s, vt
end

M.SIDES = { left = C.NC_GALORE_LEFT, right = C.NC_GALORE_RIGHT }

function M.rsvd(g, r, opts)
    opts = opts or {}
    local side = M.SIDES[opts.side or 'left']
    if not side then error("rsvd: side must be 'left' or 'right', got " .. tostring(opts.side), 2) end
    local d = g:size(side == C.NC_GALORE_LEFT and 0 or 1)
    local proj = Tensor.empty({ d, r }, 'f32', g:device())
    core.check(C.nc_rsvd_projector(proj._c, g:contiguous()._c, side, opts.oversample or 8, opts.power_iters or 2,
        opts.seed or 0, opts.counter or 0), 'rsvd')
    return proj
end

M.QUANT_MAPS = { linear = C.NC_QUANT8_LINEAR, dynamic = C.NC_QUANT8_DYNAMIC }

-- 'linear' | 'dynamic' -> enum nc_quant8_map (nil means 'linear')
function M.quant_map(fn, q, level)
    local m = M.QUANT_MAPS[q == nil and 'linear' or q]
    if not m then error(fn .. ": quant must be 'linear' or 'dynamic', got " .. tostring(q), (level or 2) + 1) end
    return m
end

function M.quant8(x, opts)
    opts = opts or {}
    local map = M.quant_map('quant8', opts.quant, 2)
    local block = opts.block or 2048
    local n = x:numel()
    local codes = Tensor.empty({ n }, 'i8', x:device())
    local scales = Tensor.empty({ math.ceil(n / block) }, 'f32', x:device())
    core.check(C.nc_quant8_block_map(codes._c, scales._c, x:contiguous()._c, block, opts.stochastic and 1 or 0,
        opts.seed or 0, opts.counter or 0, map), 'quant8')
    return codes, scales
end

function M.dequant8(codes, scales, shape, block, quant)
    local map = M.quant_map('dequant8', quant, 2)
    local out = Tensor.empty(shape or { codes:numel() }, 'f32', codes:device())
    core.check(C.nc_dequant8_block_map(out._c, codes._c, scales._c, block or 2048, map), 'dequant8')
    return out
end

function M.codebook(quant)
    local map = M.quant_map('codebook', quant, 2)
    local out = Tensor.empty({ 128 }, 'f32')
    core.check(C.nc_quant8_codebook(out._c, map), 'codebook')
    return out
end

return M
