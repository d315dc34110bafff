-- lua/nanochat/ops/elementwise.lua — elementwise math, comparisons and reductions with autograd.
--
-- Promise: every function takes Tensors (and plain numbers where a scalar makes sense, on
-- either side: nc.sub(2, t) is 2 - t), broadcasts like PyTorch, allocates a fresh contiguous
-- output, and records one autograd node when an input requires grad. Shape and dtype errors come
-- from the C kernels and name the op and both shapes. Comparisons return u8 tensors without
-- gradient. Dims are 0-based; negative dims count from the end.
local core = require 'nanochat.core'
local Tensor = require 'nanochat.tensor'
local ag = require 'nanochat.autograd'
local C = core.C
local check = core.check

local M = {}

local is = Tensor.is
local function cptr(t) return t and t._c or nil end

local function shape_str(s)
    return '(' .. table.concat(s, ', ') .. ')'
end

-- broadcast of two shape lists (Lua lists of sizes)
local function broadcast_shapes(op, s1, s2)
    local n = math.max(#s1, #s2)
    local out = {}
    for i = 1, n do
        local x = s1[i - (n - #s1)] or 1
        local y = s2[i - (n - #s2)] or 1
        if x ~= y and x ~= 1 and y ~= 1 then
            error(string.format('%s: cannot broadcast shapes %s and %s', op, shape_str(s1), shape_str(s2)), 3)
        end
        out[i] = x == 1 and y or x
    end
    return out
end

-- a 0-dim tensor holding v, on `like`'s device
local function scalar_like(v, like, dtype)
    local t = Tensor.empty({}, dtype or 'f32', 'cpu')
    t:fill_(v)
    if like and like:device() ~= 'cpu' then t = t:to(like:device()) end
    return t
end

-- broadcast shape of two tensors (errors name `op` and both shapes)
local function bshape(op, a, b)
    return broadcast_shapes(op, a:shape(), b:shape())
end

local function want_tensor(op, x, pos)
    if not is(x) then
        error(string.format('%s: expected a Tensor or a number as argument %d, got %s', op, pos, type(x)), 3)
    end
end

-- ---- binary ------------------------------------------------------------------------------------
local BIN = { add = C.NC_OP_ADD, sub = C.NC_OP_SUB, mul = C.NC_OP_MUL, div = C.NC_OP_DIV,
              maximum = C.NC_OP_MAXIMUM, minimum = C.NC_OP_MINIMUM, pow = C.NC_OP_POW,
              floor_div = C.NC_OP_FLOOR_DIV }
local COMMUTES = { add = true, mul = true, maximum = true, minimum = true }

local empty_c = Tensor._empty_c
local needs2 = ag.needs2

-- same ndim and sizes (compared on the C headers, no Lua tables)
local function same_shape_c(ac, bc)
    local nd = ac.ndim
    if bc.ndim ~= nd then return false end
    for i = 0, nd - 1 do
        if ac.shape[i] ~= bc.shape[i] then return false end
    end
    return true
end

-- The autograd closures live in their own functions: a function that creates a closure over its
-- locals ends in a UCLO bytecode, which LuaJIT cannot compile, so the whole forward of every op
-- would run in the interpreter (~2x the cost of a tiny op) even with autograd off.
local function record_binary(name, op, a, b, out)
    if op == C.NC_OP_ADD and same_shape_c(a._c, b._c) then
        -- d(a + b) = g for both: hand g over (ag.pass_grad: the first input without a gradient
        -- takes the buffer itself; the other accumulates)
        ag.record(out, { a, b }, function(gout)
            ag.pass_grad(a, gout)
            ag.pass_grad(b, gout)
        end)
        return
    end
    ag.record(out, { a, b }, function(gout)
        local ga, gb = ag.grad_of(a), ag.grad_of(b)
        check(C.nc_binary_backward(cptr(ga), cptr(gb), nil, a._c, b._c, gout._c, op), name .. ' backward')
    end)
end

local function binary_tt(name, op, a, b)
    local ac, bc = a._c, b._c
    local out
    if same_shape_c(ac, bc) then
        out = empty_c(ac.ndim, ac.shape, ac.dtype, ac.device)
    else
        out = Tensor.empty(bshape(name, a, b), ac.dtype, ac.device)
    end
    check(C.nc_binary(out._c, ac, bc, op), name)
    if needs2(a, b) then record_binary(name, op, a, b, out) end
    return out
end

local function record_binary_scalar(name, op, a, s, out)
    ag.record(out, { a }, function(gout)
        local ga = ag.grad_of(a)
        if ga then check(C.nc_binary_scalar_backward(ga._c, a._c, gout._c, s, op), name .. ' backward') end
    end)
end

local function binary_ts(name, op, a, s)
    local ac = a._c
    local out = empty_c(ac.ndim, ac.shape, ac.dtype, ac.device)
    check(C.nc_binary_scalar(out._c, ac, s, op), name)
    if needs2(a) then record_binary_scalar(name, op, a, s, out) end
    return out
end

local function make_binary(name)
    local op = BIN[name]
    return function(a, b)
        local na, nb = type(a) == 'number', type(b) == 'number'
        if na and nb then error(name .. ': expected at least one Tensor, got two numbers', 2) end
        if nb then
            want_tensor(name, a, 1)
            return binary_ts(name, op, a, b)
        end
        if na then
            want_tensor(name, b, 2)
            if COMMUTES[name] then return binary_ts(name, op, b, a) end
            return binary_tt(name, op, scalar_like(a, b, b._c.dtype), b)
        end
        want_tensor(name, a, 1)
        want_tensor(name, b, 2)
        return binary_tt(name, op, a, b)
    end
end

for name in pairs(BIN) do M[name] = make_binary(name) end

-- t * s
function M.scale(t, s) return M.mul(t, s) end

-- ---- unary -------------------------------------------------------------------------------------
local UN = { neg = C.NC_OP_NEG, exp = C.NC_OP_EXP, log = C.NC_OP_LOG, tanh = C.NC_OP_TANH,
             sigmoid = C.NC_OP_SIGMOID, relu = C.NC_OP_RELU, relu2 = C.NC_OP_RELU2, silu = C.NC_OP_SILU,
             sqrt = C.NC_OP_SQRT, rsqrt = C.NC_OP_RSQRT, abs = C.NC_OP_ABS, square = C.NC_OP_SQUARE,
             reciprocal = C.NC_OP_RECIP, sin = C.NC_OP_SIN, cos = C.NC_OP_COS }

-- Collider (nanochat.collider): the active row filter when a (CPU) has its N token rows (rows = the
-- last dim), else nil; the backward then runs on the kept rows only (the others' gout rows are 0)
local function unary_filter(a)
    local f = ag.row_filter()
    if not f then return nil end
    local ac = a._c
    local D = ac.ndim > 0 and ac.shape[ac.ndim - 1] or 0
    if ac.device ~= C.NC_CPU or D == 0 or a:numel() ~= f.N * D then return nil end
    return f
end

local function contig(t) return C.nc_tensor_is_contiguous(t._c) == 1 end

local function record_unary(name, op, a, out)
    local flt = unary_filter(a)
    ag.record(out, { a }, function(gout)
        local ga = ag.grad_of(a)
        if not ga then return end
        local keep = flt and flt.keep
        if keep and contig(ga) and contig(gout) and contig(a) and contig(out) then
            check(C.nc_unary_backward_rows(ga._c, out._c, a._c, gout._c, op, keep._c), name .. ' backward (collider)')
        else
            check(C.nc_unary_backward(ga._c, out._c, a._c, gout._c, op), name .. ' backward')
        end
    end)
end

local function unary(name, op, a)
    want_tensor(name, a, 1)
    local ac = a._c
    local out = empty_c(ac.ndim, ac.shape, ac.dtype, ac.device)
    check(C.nc_unary(out._c, ac, op), name)
    if needs2(a) then record_unary(name, op, a, out) end
    return out
end

for name, op in pairs(UN) do
    M[name] = function(a) return unary(name, op, a) end
end

-- gelu(t) is the exact erf form (PyTorch's default); gelu(t, {approximate='tanh'}) the tanh form
function M.gelu(a, opts)
    local approx = opts and opts.approximate
    if approx == 'tanh' then return unary('gelu', C.NC_OP_GELU_TANH, a) end
    if approx ~= nil and approx ~= 'none' then
        error("gelu: expected approximate = 'none' or 'tanh', got " .. tostring(approx), 2)
    end
    return unary('gelu', C.NC_OP_GELU, a)
end

-- ---- clamp, where, masked_fill -------------------------------------------------------------------
function M.clamp(a, lo, hi)
    want_tensor('clamp', a, 1)
    lo = lo or -math.huge
    hi = hi or math.huge
    local out = Tensor.empty(a:shape(), a._c.dtype, a:device())
    check(C.nc_clamp(out._c, a._c, lo, hi), 'clamp')
    if ag.needs(a) then
        ag.record(out, { a }, function(gout)
            local ga = ag.grad_of(a)
            if ga then check(C.nc_clamp_backward(ga._c, a._c, gout._c, lo, hi), 'clamp backward') end
        end)
    end
    return out
end

-- cond: u8 mask (any other dtype is compared with 0); a, b: Tensors or numbers
function M.where(cond, a, b)
    want_tensor('where', cond, 1)
    if cond:dtype() ~= 'u8' then cond = M.ne(cond, 0) end
    local like = is(a) and a or (is(b) and b or nil)
    local dt = like and like._c.dtype or 'f32'
    if type(a) == 'number' then a = scalar_like(a, like or cond, dt) end
    if type(b) == 'number' then b = scalar_like(b, like or cond, dt) end
    want_tensor('where', a, 2)
    want_tensor('where', b, 3)
    local shape = broadcast_shapes('where', bshape('where', a, b), cond:shape())
    local out = Tensor.empty(shape, a._c.dtype, a:device())
    check(C.nc_where(out._c, cond._c, a._c, b._c), 'where')
    if ag.needs(a, b) then
        ag.record(out, { a, b }, function(gout)
            local ga, gb = ag.grad_of(a), ag.grad_of(b)
            check(C.nc_where_backward(cptr(ga), cptr(gb), cond._c, gout._c), 'where backward')
        end)
    end
    return out
end

-- t with value where mask is set
function M.masked_fill(t, mask, value) return M.where(mask, value, t) end

-- ---- comparisons (u8 results, no gradient) ---------------------------------------------------------
local CMP = { eq = 0, ne = 1, lt = 2, le = 3, gt = 4, ge = 5 }
local INTLIKE = { [C.NC_I32] = true, [C.NC_I64] = true, [C.NC_I8] = true, [C.NC_U8] = true }
-- the scalar dtype to compare a number with tensor t: exact i64 for an integral number against an
-- integer tensor (no rounding through double beyond 2^53 on the tensor side), else f64
local function cmp_scalar(v, t)
    if is(t) and INTLIKE[t._c.dtype] and v == math.floor(v) and math.abs(v) < 2 ^ 63 then
        return scalar_like(v, t, 'i64')
    end
    return scalar_like(v, t, 'f64')
end
for name, cmp in pairs(CMP) do
    M[name] = function(a, b)
        if type(a) == 'number' and is(b) then a = cmp_scalar(a, b) end
        if type(b) == 'number' then b = cmp_scalar(b, a) end
        want_tensor(name, a, 1)
        want_tensor(name, b, 2)
        local out = Tensor.empty(bshape(name, a, b), 'u8', a:device())
        check(C.nc_compare(out._c, a._c, b._c, cmp), name)
        return out
    end
end

-- ---- reductions ------------------------------------------------------------------------------------
local RED = { sum = C.NC_RED_SUM, mean = C.NC_RED_MEAN, max = C.NC_RED_MAX, min = C.NC_RED_MIN }

-- reduce one (normalized) dim with keepdim; returns values (and i64 indices for max/min)
local function reduce1(name, a, dim, op)
    local shape = a:shape()
    shape[dim + 1] = 1
    local dt = a._c.dtype
    -- integer sums accumulate into i64 (like torch); integer max/min keep the dtype
    if dt ~= C.NC_F32 and op == C.NC_RED_SUM and (dt == C.NC_I32 or dt == C.NC_I64) then dt = C.NC_I64 end
    if dt ~= C.NC_I32 and dt ~= C.NC_I64 then dt = C.NC_F32 end
    local out = Tensor.empty(shape, dt, a:device())
    local idx
    if op == C.NC_RED_MAX or op == C.NC_RED_MIN then idx = Tensor.empty(shape, 'i64', a:device()) end
    check(C.nc_reduce_dim(out._c, cptr(idx), a._c, dim, op), name)
    if ag.needs(a) then
        ag.record(out, { a }, function(gout)
            local ga = ag.grad_of(a)
            if ga then check(C.nc_reduce_dim_backward(ga._c, cptr(idx), gout._c, dim, op), name .. ' backward') end
        end)
    end
    return out, idx
end

-- dims: nil (all), a number or a list -> sorted unique normalized list
local function norm_dims(name, a, dims)
    local nd = a:dim()
    if dims == nil then
        local all = {}
        for d = 0, nd - 1 do all[#all + 1] = d end
        return all, true
    end
    if type(dims) == 'number' then dims = { dims } end
    local seen, out = {}, {}
    for _, d in ipairs(dims) do
        local dd = d < 0 and d + nd or d
        if dd < 0 or dd >= nd then
            error(string.format('%s: dim %d out of range for a tensor with %d dims', name, d, nd), 3)
        end
        if not seen[dd] then seen[dd] = true; out[#out + 1] = dd end
    end
    table.sort(out)
    return out, #out == nd
end

local function reduce(name, a, dims, keepdim)
    want_tensor(name, a, 1)
    local op = RED[name]
    local nd = a:dim()
    local list, all = norm_dims(name, a, dims)
    if nd == 0 then return a:reshape {} * 1 end
    local cur = a
    if all and nd > 1 then
        -- one pass over the flattened tensor (one double accumulator per output)
        local r = reduce1(name, cur:reshape { -1 }, 0, op)
        if keepdim then
            local ks = {}
            for i = 1, nd do ks[i] = 1 end
            return r:reshape(ks)
        end
        return r:reshape {}
    end
    for _, d in ipairs(list) do cur = (reduce1(name, cur, d, op)) end
    if keepdim then return cur end
    local s, keep = {}, {}
    for _, d in ipairs(list) do keep[d] = true end
    for i, n in ipairs(cur:shape()) do if not keep[i - 1] then s[#s + 1] = n end end
    return cur:reshape(s)
end

-- sum / mean over dims (nil = all, a number, or a list)
function M.sum(a, dims, keepdim) return reduce('sum', a, dims, keepdim) end
function M.mean(a, dims, keepdim) return reduce('mean', a, dims, keepdim) end

-- max / min: with one dim, returns values, indices (i64); otherwise values only
local function extreme(name, a, dims, keepdim)
    want_tensor(name, a, 1)
    if type(dims) == 'number' then
        local d = norm_dims(name, a, dims)[1]
        local v, i = reduce1(name, a, d, RED[name])
        if not keepdim then
            local s = {}
            for k, n in ipairs(v:shape()) do if k ~= d + 1 then s[#s + 1] = n end end
            v = v:reshape(s)
            i = i:_raw_view(s)
        end
        return v, i
    end
    return reduce(name, a, dims, keepdim)
end
function M.max(a, dims, keepdim) return extreme('max', a, dims, keepdim) end
function M.min(a, dims, keepdim) return extreme('min', a, dims, keepdim) end

-- indices (i64) of the maximum along dim (nil = over the flattened tensor)
function M.argmax(a, dim, keepdim)
    want_tensor('argmax', a, 1)
    if dim == nil then
        local flat = a:dim() == 0 and a:reshape { 1 } or a:reshape { -1 }
        local _, i = ag.no_grad(reduce1, 'argmax', flat, 0, C.NC_RED_MAX)
        return i:_raw_view {}
    end
    local _, i = ag.no_grad(extreme, 'max', a, dim, keepdim)
    return i
end

function M.argmin(a, dim, keepdim)
    want_tensor('argmin', a, 1)
    if dim == nil then
        local flat = a:dim() == 0 and a:reshape { 1 } or a:reshape { -1 }
        local _, i = ag.no_grad(reduce1, 'argmin', flat, 0, C.NC_RED_MIN)
        return i:_raw_view {}
    end
    local _, i = ag.no_grad(extreme, 'min', a, dim, keepdim)
    return i
end

return M
