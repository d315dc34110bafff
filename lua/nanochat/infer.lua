-- lua/nanochat/infer.lua — packed ternary linear layers for inference (`nc.infer`).
--
-- Promise: `infer.pack(w)` turns a latent f32 weight (out, in) into 2-bit codes in the layout the
-- C kernels read directly ("i2b128", core/nanochat.h) plus one f32 scale per output row, with the
-- training quantizer's own absmean gamma (nc_quant_weight_absmean, per tensor or per whole-row
-- group) carried exactly. `infer.quant_act(x)` makes the int8 activations (same q and s as
-- nc.quant_act) with their row sums; `infer.matmul` / `P:forward(x)` give
--   y = (int32 sum of t * q) * (1 / s) * gamma,
-- which equals nc.linear(nc.quant_act(x), nc.quant_weight(w)) up to float rounding (the spec
-- names the tolerance). No autograd: inference only. The AVX-512 VNNI, AVX2 and scalar kernels
-- (NC_KERNEL=avx2 / scalar or nc.set_cpu_kernel('avx512' / 'avx2' / 'scalar')) give bit-identical
-- results; `infer.kernel()` names the one in use ('avx512vnni', 'avx2' or 'scalar').
local core = require 'nanochat.core'
local Tensor = require 'nanochat.tensor'
local C, check = core.C, core.check
local ffi = core.ffi

local M = {}
M.BLOCK = C.NC_TERNARY_BLOCK

local EPS = 1e-5

-- the packed row kernel now in use: 'avx512vnni', 'avx2' or 'scalar' (follows nc.set_cpu_kernel)
function M.kernel() return ffi.string(C.nc_ternary_kernel_name()) end

-- K rounded up to the block (128): the length of packed rows (x4) and of quantized activations.
function M.kpad(k) return tonumber(C.nc_ternary_kpad(k)) end

local Packed = {}
Packed.__index = Packed
M.Packed = Packed

local function is_packed(x) return getmetatable(x) == Packed end
M.is_packed = is_packed

local function shape_str(t)
    return '(' .. table.concat(t:shape(), ', ') .. ')'
end

-- w f32 (out, in) latent weight -> Packed. opts: group_size (0 = per tensor, or a multiple of in),
-- eps (1e-5, as nc.quant_weight).
function M.pack(w, opts)
    opts = opts or {}
    if not Tensor.is(w) or w:dim() ~= 2 then
        error('infer.pack: expected a 2-D weight tensor (out, in), got ' .. (Tensor.is(w) and shape_str(w) or type(w)), 2)
    end
    if w:device() ~= 'cpu' then w = w:to('cpu') end
    if w:dtype() ~= 'f32' then w = w:to('f32') end
    local n, k = w:size(0), w:size(1)
    local kp = M.kpad(k)
    local codes = Tensor.empty({ n, kp / 4 }, 'u8')
    local scale = Tensor.empty({ n }, 'f32')
    check(C.nc_ternary_pack(codes._c, scale._c, w._c, opts.group_size or 0, opts.eps or EPS), 'infer.pack')
    return setmetatable({ codes = codes, scale = scale, out_features = n, in_features = k, kpad = kp }, Packed)
end

-- Already-ternary values t (out, in) in {-1, 0, 1} (f32 or i8) with per-row scales (a Tensor of
-- out f32 values, or one number for the whole tensor) -> Packed. For weights read back from a file.
function M.from_ternary(t, scale)
    if not Tensor.is(t) or t:dim() ~= 2 then error('infer.from_ternary: expected t (out, in)', 2) end
    local n, k = t:size(0), t:size(1)
    local kp = M.kpad(k)
    local codes = Tensor.empty({ n, kp / 4 }, 'u8')
    check(C.nc_ternary_pack_values(codes._c, t._c), 'infer.from_ternary')
    local s
    if type(scale) == 'number' then
        s = Tensor.empty({ n }, 'f32'):fill_(scale)
    elseif Tensor.is(scale) and scale:numel() == n then
        s = scale:to('f32'):contiguous():reshape({ n })
    elseif Tensor.is(scale) and scale:numel() == 1 then
        s = Tensor.empty({ n }, 'f32'):fill_(scale:item())
    else
        error('infer.from_ternary: expected scale to be a number or a tensor of ' .. n .. ' values', 2)
    end
    return setmetatable({ codes = codes, scale = s, out_features = n, in_features = k, kpad = kp }, Packed)
end

-- A ternary tensor read from a GGUF file (tq2 / tq1 dtype, or f32 values gamma * t) -> Packed.
-- Every non-zero value of a row must have the same magnitude (the row's scale): true for what
-- our exporter writes (d = gamma in every block with a non-zero weight); a file whose blocks of
-- one row carry different scales is refused, because i2b128 keeps one scale per row.
function M.from_values(t, name)
    name = name or 'tensor'
    if not Tensor.is(t) or t:dim() ~= 2 then error('infer.from_values: expected ' .. name .. ' (out, in)', 2) end
    local f = t:dtype() == 'f32' and t:contiguous() or t:to('f32')
    local n, k = f:size(0), f:size(1)
    local p = ffi.cast('const float *', C.nc_tensor_data(f._c))
    local tern = Tensor.empty({ n, k }, 'i8')
    local tp = ffi.cast('int8_t *', C.nc_tensor_data(tern._c))
    local scale = Tensor.empty({ n }, 'f32')
    local sp = ffi.cast('float *', C.nc_tensor_data(scale._c))
    for r = 0, n - 1 do
        local row, g = p + r * k, 0
        for i = 0, k - 1 do
            local a = math.abs(row[i])
            if a ~= 0 then
                if g == 0 then g = a
                elseif a ~= g then
                    error(string.format('infer.from_values: %s row %d mixes magnitudes %g and %g; packed rows need one scale',
                        name, r, g, a), 2)
                end
            end
        end
        for i = 0, k - 1 do
            local v = row[i]
            tp[r * k + i] = v > 0 and 1 or (v < 0 and -1 or 0)
        end
        sp[r] = g
    end
    return M.from_ternary(tern, scale)
end

-- ternary values t (out, in) f32 in {-1, 0, 1}
function Packed:ternary()
    local t = Tensor.empty({ self.out_features, self.in_features }, 'f32')
    check(C.nc_ternary_unpack(t._c, self.codes._c), 'infer.ternary')
    return t
end

-- the dequantized weight gamma * t (out, in): equals nc.quant_weight(w) exactly
function Packed:dequantize()
    local t = self:ternary()
    return t:mul(self.scale:reshape({ self.out_features, 1 }))
end

-- bytes of the packed codes + scales
function Packed:nbytes() return self.codes:numel() + 4 * self.out_features end

function Packed:__tostring()
    return string.format('infer.Packed(out=%d, in=%d, %d bytes, layout i2b128)', self.out_features,
        self.in_features, self:nbytes())
end

-- Quantized activations: { q = i8 (M, Kp), scale = f32 (M) (s of nc.quant_act), sum = i32 (M),
-- rows = M, in_features = K }. x: (K) or (M, K) f32. `into` (optional) is a table from an earlier
-- call with the same shape, reused to avoid allocation.
function M.quant_act(x, opts, into)
    opts = opts or {}
    if not Tensor.is(x) or x:dim() < 1 or x:dim() > 2 then error('infer.quant_act: expected x (K) or (M, K)', 2) end
    local m = x:dim() == 2 and x:size(0) or 1
    local k = x:size(-1)
    local a = into
    if not (a and a.rows == m and a.in_features == k) then
        local kp = M.kpad(k)
        a = { q = Tensor.empty({ m, kp }, 'i8'), scale = Tensor.empty({ m }, 'f32'),
              sum = Tensor.empty({ m }, 'i32'), rows = m, in_features = k }
    end
    check(C.nc_ternary_quant_act(a.q._c, a.scale._c, a.sum._c, x._c, opts.eps or EPS), 'infer.quant_act')
    return a
end

-- ---- int8 weights (the LM head option) -------------------------------------------------------------
-- `infer.int8(w)`: w f32 (out, in) -> Int8 { codes i8 (out, Kp), scale f32 (out) }, per-row absmax
-- (codes in [-127, 127], w ~ codes * scale); `infer.matmul(a, W8)` with the same int8 activations:
-- y = (int32 sum of codes * q) * (1 / s) * scale. A quarter of f32's bytes: for a decoded token the
-- head is most of the bytes read at small d (125M shape: 100 of 122 MB in f32, 25 MB in int8).
local Int8 = {}
Int8.__index = Int8
M.Int8 = Int8

function M.int8(w)
    if not Tensor.is(w) or w:dim() ~= 2 then error('infer.int8: expected a 2-D weight tensor (out, in)', 2) end
    if w:device() ~= 'cpu' then w = w:to('cpu') end
    if w:dtype() ~= 'f32' then w = w:to('f32') end
    w = w:contiguous()
    local n, k = w:size(0), w:size(1)
    local kp = M.kpad(k)
    local codes, scale = Tensor.empty({ n, kp }, 'i8'), Tensor.empty({ n }, 'f32')
    check(C.nc_int8_quant_rows(codes._c, scale._c, w._c), 'infer.int8')
    return setmetatable({ codes = codes, scale = scale, out_features = n, in_features = k, kpad = kp }, Int8)
end

function Int8:nbytes() return self.codes:numel() + 4 * self.out_features end

-- the dequantized weight (out, in) f32 (codes * scale), for checks
function Int8:dequantize()
    local f = self.codes:narrow(1, 0, self.in_features):to('f32')
    return f * self.scale:reshape { -1, 1 }
end

function Int8:__tostring()
    return string.format('infer.Int8(out=%d, in=%d, %d bytes)', self.out_features, self.in_features, self:nbytes())
end

-- y (M, N) f32 = packed linear of quantized activations a (from quant_act); `out` optional.
-- P: a Packed ternary weight or an Int8 weight.
function M.matmul(a, P, out)
    if getmetatable(P) == Int8 then
        if a.in_features ~= P.in_features then
            error(string.format('infer.matmul: activations have %d features, the int8 weight expects %d',
                a.in_features, P.in_features), 2)
        end
        local y = out or Tensor.empty({ a.rows, P.out_features }, 'f32')
        check(C.nc_int8_matmul(y._c, a.q._c, a.scale._c, P.codes._c, P.scale._c), 'infer.matmul')
        return y
    end
    if not is_packed(P) then error('infer.matmul: expected a Packed weight (infer.pack) or an Int8 (infer.int8)', 2) end
    if a.in_features ~= P.in_features then
        error(string.format('infer.matmul: activations have %d features, the weight expects %d', a.in_features,
            P.in_features), 2)
    end
    local y = out or Tensor.empty({ a.rows, P.out_features }, 'f32')
    check(C.nc_ternary_matmul(y._c, a.q._c, a.scale._c, a.sum._c, P.codes._c, P.scale._c), 'infer.matmul')
    return y
end

-- y = x W^T through int8 activations: x (K) -> (N), (M, K) -> (M, N)
function Packed:forward(x, opts)
    if not Tensor.is(x) then error('infer.Packed:forward: expected a tensor', 2) end
    if x:size(-1) ~= self.in_features then
        error(string.format('infer.Packed:forward: expected x (..., %d), got %s', self.in_features, shape_str(x)), 2)
    end
    local x2 = x
    if x:dim() == 1 then x2 = x:reshape({ 1, self.in_features })
    elseif x:dim() > 2 then x2 = x:reshape({ -1, self.in_features }) end
    if x2:dtype() ~= 'f32' then x2 = x2:to('f32') end
    local y = M.matmul(M.quant_act(x2, opts), self)
    if x:dim() == 1 then return y:reshape({ self.out_features }) end
    if x:dim() > 2 then
        local sh = x:shape()
        sh[#sh] = self.out_features
        return y:reshape(sh)
    end
    return y
end
Packed.__call = Packed.forward

return M
