-- lua/nanochat/ops/nn.lua — neural-net ops with autograd: matmul, linear, softmax, log_softmax,
-- cross_entropy, rmsnorm, rope, attention and the BitNet fake quantizers.
--
-- Promise: each op allocates its (contiguous) outputs, calls one C kernel (shapes and dtypes are
-- checked there, so error messages name the op and both shapes), and records one autograd node
-- whose closure accumulates (+=) into the inputs' gradients with the C backward kernels.
-- Matmul-shaped gradients are sgemm calls with beta = 1; when a 2-D weight is shared across a
-- batch its gradient is ONE gemm over the flattened (rows, features) views.
-- Collider (algorithms.md §8, nanochat.collider): linear, bitlinear, linear_bf16, attention, rmsnorm
-- and rope recorded while an autograd row filter is active, on CPU tensors with the filter's N rows
-- (tokens), run their backward on the filter's kept rows only (see row_filter_for below); otherwise
-- the dense code runs.
local core = require 'nanochat.core'
local Tensor = require 'nanochat.tensor'
local ag = require 'nanochat.autograd'
local ffi, C = core.ffi, core.C
local check = core.check

local M = {}

local function shape_str(t)
    return '(' .. table.concat(t:shape(), ', ') .. ')'
end

local function cptr(t) return t and t._c or nil end

-- (rows, last) view of t without autograd (a contiguous copy when the strides do not allow)
local function rows2d(t)
    local n = t:size(-1)
    local p = C.nc_tensor_view_reshape(t._c, 2, ffi.new('int64_t[2]', -1, n))
    if p == nil then
        C.nc_clear_error()
        local c = Tensor.wrap(C.nc_tensor_new_clone(t._c), 'reshape')
        p = C.nc_tensor_view_reshape(c._c, 2, ffi.new('int64_t[2]', -1, n))
    end
    return Tensor.wrap(p, 'reshape')
end

local function empty_like_shape(shape, like)
    return Tensor.empty(shape, 'f32', like:device())
end

-- ---- Collider row filter ------------------------------------------------------------------------
-- The active row filter when it applies to an op on t with `rows` rows (checked at forward time,
-- only when a gradient will be recorded); the backward reads filter.keep / filter.mask, which the
-- filter's select() sets after the forward. nil = dense.
local function row_filter_for(t, rows)
    local f = ag.row_filter()
    if f and f.N == rows and t._c.device == C.NC_CPU then return f end
    return nil
end

-- (k, D) = src2 (N, D) rows listed in keep (sorted i64)
local function gather_rows(src2, keep)
    local out = Tensor.empty({ keep:size(0), src2:size(1) }, 'f32', 'cpu')
    check(C.nc_rows_gather(out._c, src2._c, keep._c), 'collider: gather rows')
    return out
end

-- Release a temporary that never escapes now (its block goes back to the host cache, still warm,
-- for the next gather) instead of at the next Lua GC: the compact buffers are allocated per op.
local function free_now(t)
    Tensor._free_now(t)
end

-- Collider's linear backward (algorithms.md §8.3): with g2 = dY and x2 = X as (N, .) rows and the
-- kept rows K: dX[K] = dY[K] W (other rows of a fresh dX are zero, of an existing one untouched) and
-- dW += dY[K]^T X[K], as dense sgemms on gathered compact buffers. With K = all rows every sgemm
-- sees the same operands as the dense path, so the result is bitwise the dense one.
local function sgemm(out, a, b, ta, tb, beta, what)
    check(C.nc_matmul(out._c, a._c, b._c, ta, tb, 1, beta), what)
end

-- (The AMX ops, nc.bitlinear and nc.linear_bf16, read and write the kept rows in place instead:
-- nc_gemm_bf16_rows.)
local function linear_backward_kept(g, x, w, bias, keep)
    local mm = sgemm
    local g2 = rows2d(g)
    local gk = gather_rows(g2, keep)
    local k = keep:size(0)
    local gx, fx = ag.grad_buf(x)
    if gx then
        local gx2 = rows2d(gx)
        local t
        if fx then
            t = Tensor.empty({ k, w:size(1) }, 'f32', 'cpu')
            mm(t, gk, w, 0, 0, 0, 'linear backward (collider)')
        else
            t = gather_rows(gx2, keep)
            mm(t, gk, w, 0, 0, 1, 'linear backward (collider)')
        end
        check(C.nc_rows_scatter(gx2._c, t._c, keep._c, fx and 1 or 0), 'linear backward (collider)')
        free_now(t)
    end
    local gw, fw = ag.grad_buf(w)
    if gw then
        local xk = gather_rows(rows2d(x), keep)
        mm(gw, gk, xk, 1, 0, fw and 0 or 1, 'linear backward (collider)')
        free_now(xk)
    end
    local gbias = bias and ag.grad_of(bias)
    if gbias then check(C.nc_sum_to(gbias._c, gk._c, 1), 'linear backward (collider)') end
    free_now(gk)
end

-- ---- matmul / linear -------------------------------------------------------------------------
-- broadcast the batch dims of a (..., M, K) and b (..., K, N) (b is batched here)
local function broadcast_batch(a, b)
    local sa, sb = a:shape(), b:shape()
    local na, nb = #sa - 2, #sb - 2
    local n = math.max(na, nb)
    local batch = {}
    for i = 1, n do
        local da = sa[na - n + i] or 1
        local db = sb[nb - n + i] or 1
        if da ~= db and da ~= 1 and db ~= 1 then
            error(string.format('matmul: batch dims of a %s and b %s do not broadcast', shape_str(a), shape_str(b)), 3)
        end
        batch[i] = da == 1 and db or da
    end
    local function expand_to(t, s)
        local nb_t = #s - 2
        local same = nb_t == n
        if same then for i = 1, n do if s[i] ~= batch[i] then same = false end end end
        if same then return t end
        local full = {}
        for i = 1, n do full[i] = batch[i] end
        full[n + 1], full[n + 2] = s[#s - 1], s[#s]
        while t:dim() < #full do t = t:unsqueeze(0) end
        return t:expand(full)
    end
    return expand_to(a, sa), expand_to(b, sb)
end

-- a @ b: a (..., M, K), b (..., K, N) or (K, N) (shared across a's batch). Transposed views
-- (e.g. w:t()) reach sgemm as a transpose flag, never as a copy.
function M.matmul(a, b)
    if not (Tensor.is(a) and Tensor.is(b)) then error('matmul: expected two tensors', 2) end
    if a:dim() < 2 or b:dim() < 2 then
        error(string.format('matmul: expected tensors with at least 2 dims, got a %s and b %s', shape_str(a), shape_str(b)), 2)
    end
    if b:dim() > 2 then a, b = broadcast_batch(a, b) end
    local sa = a:shape()
    local oshape = {}
    for i = 1, #sa - 1 do oshape[i] = sa[i] end
    oshape[#sa] = b:size(-1)
    local out = empty_like_shape(oshape, a)
    check(C.nc_matmul(out._c, a._c, b._c, 0, 0, 1, 0), 'matmul')
    if ag.needs(a, b) then
        ag.record(out, { a, b }, function(g)
            local ga = ag.grad_of(a)
            if ga then check(C.nc_matmul(ga._c, g._c, b._c, 0, 1, 1, 1), 'matmul backward') end
            local gb = ag.grad_of(b)
            if gb then
                if b:dim() == 2 and a:dim() > 2 then
                    -- shared weight: ONE gemm over all rows, gb (K, N) += a2^T g2
                    check(C.nc_matmul(gb._c, rows2d(a)._c, rows2d(g)._c, 1, 0, 1, 1), 'matmul backward')
                else
                    check(C.nc_matmul(gb._c, a._c, g._c, 1, 0, 1, 1), 'matmul backward')
                end
            end
        end)
    end
    return out
end

-- y = x W^T (+ bias): x (..., in), w (out, in), bias (out) or nil. One sgemm over all rows.
function M.linear(x, w, bias)
    if not (Tensor.is(x) and Tensor.is(w)) then error('linear: expected tensors x and w', 2) end
    if w:dim() ~= 2 then error('linear: expected w (out, in), got ' .. shape_str(w), 2) end
    if x:dim() == 1 then return M.linear(x:unsqueeze(0), w, bias):squeeze(0) end
    if x:dim() < 1 then error('linear: expected x (..., in), got a scalar', 2) end
    local sx = x:shape()
    local oshape = {}
    for i = 1, #sx - 1 do oshape[i] = sx[i] end
    oshape[#sx] = w:size(0)
    local out = empty_like_shape(oshape, x)
    check(C.nc_matmul(out._c, x._c, w._c, 0, 1, 1, 0), 'linear')
    if bias then
        if bias:dim() ~= 1 or bias:size(0) ~= w:size(0) then
            error(string.format('linear: expected bias (%d) for w %s, got %s', w:size(0), shape_str(w), shape_str(bias)), 2)
        end
        check(C.nc_add_scaled(out._c, bias._c, 1), 'linear')
    end
    if ag.needs(x, w, bias) then
        local flt = row_filter_for(x, x:numel() / math.max(x:size(-1), 1))
        ag.record(out, { x, w, bias }, function(g)
            local keep = flt and flt.keep
            if keep then return linear_backward_kept(g, x, w, bias, keep) end
            -- a gradient buffer created here is written by the GEMM with beta 0 (no zero-fill)
            local gx, fx = ag.grad_buf(x)
            if gx then check(C.nc_matmul(gx._c, g._c, w._c, 0, 0, 1, fx and 0 or 1), 'linear backward') end
            local gw, fw = ag.grad_buf(w)
            if gw then
                check(C.nc_matmul(gw._c, rows2d(g)._c, rows2d(x)._c, 1, 0, 1, fw and 0 or 1), 'linear backward')
            end
            local gbias = bias and ag.grad_of(bias)
            if gbias then check(C.nc_sum_to(gbias._c, g._c, 1), 'linear backward') end
        end)
    end
    return out
end

-- ---- softmax ----------------------------------------------------------------------------------
local function softmax_impl(x, dim, log, name)
    if not Tensor.is(x) then error(name .. ': expected a tensor', 3) end
    local nd = x:dim()
    if nd == 0 then error(name .. ': expected a tensor with at least 1 dim, got a scalar', 3) end
    dim = dim or -1
    local d = dim < 0 and dim + nd or dim
    if d < 0 or d >= nd then error(string.format('%s: dim %d out of range for a tensor with %d dims', name, dim, nd), 3) end
    if d ~= nd - 1 then
        return softmax_impl(x:transpose(d, nd - 1), -1, log, name):transpose(d, nd - 1)
    end
    local out = empty_like_shape(x:shape(), x)
    local flag = log and 1 or 0
    check(C.nc_softmax(out._c, x._c, flag), name)
    if ag.needs(x) then
        ag.record(out, { x }, function(g)
            local gx = ag.grad_of(x)
            if gx then check(C.nc_softmax_backward(gx._c, out._c, g._c, flag), name .. ' backward') end
        end)
    end
    return out
end

function M.softmax(x, dim) return softmax_impl(x, dim, false, 'softmax') end
function M.log_softmax(x, dim) return softmax_impl(x, dim, true, 'log_softmax') end

-- ---- cross-entropy ---------------------------------------------------------------------------
-- Per-token losses (N) from the fused kernel's lse (no autograd; evaluation, bits-per-byte):
-- (1-ls) (lse - x_t) + ls (lse - mean_j x_j) + z lse^2, and 0 where the target is ignore_index.
local function cross_entropy_rows(l2, t2, lse, ii, ls, z)
    local E = require 'nanochat.ops.elementwise'
    local Ix = require 'nanochat.ops.index'
    local valid = E.ne(t2, ii)                                   -- u8 (N)
    local safe = E.where(valid, t2:to('f32'), 0):to('i64')      -- ignored targets -> class 0 (masked below; ids < 2^24)
    local xt = Ix.gather(l2, 1, safe:reshape { -1, 1 }):reshape { -1 }
    local loss = E.sub(lse, xt)
    if ls ~= 0 then loss = E.add(E.mul(loss, 1 - ls), E.mul(E.sub(lse, E.mean(l2, { 1 })), ls)) end
    if z ~= 0 then loss = E.add(loss, E.mul(E.mul(lse, lse), z)) end
    return E.where(valid, loss, 0)
end

-- logits (..., V) -> (N, V); targets (...) i32/i64 -> (N). opts: ignore_index (-1),
-- label_smoothing (0), z_loss (0), reduction ('mean' | 'none'). 'mean' returns the scalar mean
-- loss over non-ignored targets; 'none' returns the per-token losses with targets' shape (0 at
-- ignored targets), differentiable: its backward takes a per-token gradient g_r and adds
-- g_r * d loss_r / d logits_r (C: nc_cross_entropy_backward_rows), so sum_r w_r loss_r is a
-- weighted loss with gradient (LoopLM's exit-weighted per-loop CE).
function M.cross_entropy(logits, targets, opts)
    opts = opts or {}
    if not (Tensor.is(logits) and Tensor.is(targets)) then error('cross_entropy: expected tensors logits and targets', 2) end
    if logits:dim() < 1 then error('cross_entropy: expected logits (..., V), got a scalar', 2) end
    local ii = opts.ignore_index or -1
    local ls = opts.label_smoothing or 0
    local z = opts.z_loss or 0
    local reduction = opts.reduction or 'mean'
    if ls < 0 or ls > 1 then error('cross_entropy: label_smoothing must be in [0, 1], got ' .. tostring(ls), 2) end
    if reduction ~= 'mean' and reduction ~= 'none' then
        error("cross_entropy: reduction must be 'mean' or 'none', got " .. tostring(reduction), 2)
    end
    local V = logits:size(-1)
    local l2 = logits:dim() == 2 and logits or logits:reshape { -1, V }
    local t2 = targets:dim() == 1 and targets or targets:reshape { -1 }
    local N = l2:size(0)
    local loss = Tensor.empty({}, 'f32', logits:device())
    local lse = Tensor.empty({ N }, 'f32', logits:device())
    check(C.nc_cross_entropy(loss._c, lse._c, l2._c, t2._c, ii, ls, z), 'cross_entropy')
    if reduction == 'none' then
        if not ag.needs(l2) then return cross_entropy_rows(l2, t2, lse, ii, ls, z):reshape(targets:shape()) end
        local rows = ag.no_grad(cross_entropy_rows, l2, t2, lse, ii, ls, z)   -- (N), one node below
        ag.record(rows, { l2 }, function(g)
            local gl = ag.grad_of(l2)
            if gl then
                check(C.nc_cross_entropy_backward_rows(gl._c, lse._c, l2._c, t2._c, g._c, ii, ls, z),
                    'cross_entropy backward')
            end
        end)
        return rows:reshape(targets:shape())
    end
    if ag.needs(l2) then
        ag.record(loss, { l2 }, function(g)
            local gl = ag.grad_of(l2)
            if gl then
                check(C.nc_cross_entropy_backward(gl._c, lse._c, l2._c, t2._c, g:item(), ii, ls, z),
                    'cross_entropy backward')
            end
        end)
    end
    return loss
end

-- ---- RMSNorm ------------------------------------------------------------------------------------
-- y = x / sqrt(mean(x^2, -1) + eps) (* weight); weight (D) or nil; eps default 1e-6
function M.rmsnorm(x, weight, eps)
    if not Tensor.is(x) then error('rmsnorm: expected a tensor', 2) end
    if type(weight) == 'number' then weight, eps = nil, weight end
    eps = eps or 1e-6
    if x:dim() < 1 then error('rmsnorm: expected x (..., D), got a scalar', 2) end
    local rows = x:numel() / math.max(x:size(-1), 1)
    if x:size(-1) == 0 then rows = 0 end
    local out = empty_like_shape(x:shape(), x)
    local rstd = Tensor.empty({ rows }, 'f32', x:device())
    check(C.nc_rmsnorm(out._c, rstd._c, x._c, cptr(weight), eps), 'rmsnorm')
    if ag.needs(x, weight) then
        local flt = row_filter_for(x, rows)
        ag.record(out, { x, weight }, function(g)
            local gx, gw = ag.grad_of(x), weight and ag.grad_of(weight)
            local keep = flt and flt.keep
            if keep then   -- Collider: only the kept rows (the others of gx stay 0)
                check(C.nc_rmsnorm_backward_rows(cptr(gx), cptr(gw), x._c, cptr(weight), rstd._c, g._c, keep._c),
                    'rmsnorm backward (collider)')
            else
                check(C.nc_rmsnorm_backward(cptr(gx), cptr(gw), x._c, cptr(weight), rstd._c, g._c), 'rmsnorm backward')
            end
        end)
    end
    return out
end

-- ---- RoPE ---------------------------------------------------------------------------------------
-- cos, sin (T, D/2) for positions pos0 .. pos0+T-1; opts: pos0 (0), base (10000)
function M.rope_tables(T, D, opts)
    opts = opts or {}
    if type(T) ~= 'number' or type(D) ~= 'number' or D % 2 ~= 0 then
        error('rope_tables: expected (T, D) with an even head dim D, got (' .. tostring(T) .. ', ' .. tostring(D) .. ')', 2)
    end
    local cos = Tensor.empty({ T, D / 2 }, 'f32', 'cpu')
    local sin = Tensor.empty({ T, D / 2 }, 'f32', 'cpu')
    check(C.nc_rope_tables(cos._c, sin._c, opts.pos0 or 0, opts.base or 10000), 'rope_tables')
    if opts.device and opts.device ~= 'cpu' then cos, sin = cos:to(opts.device), sin:to(opts.device) end
    return cos, sin
end

-- x (B, T, H, D) rotated with the half-split pairing; cos, sin (T, D/2) carry no gradient
function M.rope(x, cos, sin)
    if not (Tensor.is(x) and Tensor.is(cos) and Tensor.is(sin)) then error('rope: expected tensors x, cos, sin', 2) end
    local out = empty_like_shape(x:shape(), x)
    check(C.nc_rope(out._c, x._c, cos._c, sin._c), 'rope')
    if ag.needs(x) then
        local flt = x:dim() == 4 and row_filter_for(x, x:size(0) * x:size(1)) or nil
        ag.record(out, { x }, function(g)
            local gx = ag.grad_of(x)
            if not gx then return end
            local mask = flt and flt.keep and flt.mask
            if mask then   -- Collider: the kept tokens' rows only (the others stay 0)
                check(C.nc_rope_backward_masked(gx._c, g._c, cos._c, sin._c, mask:reshape { x:size(0), x:size(1) }._c),
                    'rope backward (collider)')
            else
                check(C.nc_rope_backward(gx._c, g._c, cos._c, sin._c), 'rope backward')
            end
        end)
    end
    return out
end

-- ---- attention ----------------------------------------------------------------------------------
-- q (B, T, H, D), k, v (B, S, Hkv, D) -> (B, T, H, D). opts: causal (true), scale (1/sqrt(D)).
-- Memory-efficient: saves only lse (B, H, T) for backward.
function M.attention(q, k, v, opts)
    opts = opts or {}
    if not (Tensor.is(q) and Tensor.is(k) and Tensor.is(v)) then error('attention: expected tensors q, k, v', 2) end
    if q:dim() ~= 4 then error('attention: expected q (B, T, H, D), got ' .. shape_str(q), 2) end
    local causal = opts.causal
    if causal == nil then causal = true end
    local cflag = causal and 1 or 0
    local scale = opts.scale or 1 / math.sqrt(q:size(3))
    local out = empty_like_shape(q:shape(), q)
    local lse = Tensor.empty({ q:size(0), q:size(2), q:size(1) }, 'f32', q:device())
    check(C.nc_attention(out._c, lse._c, q._c, k._c, v._c, cflag, scale), 'attention')
    if ag.needs(q, k, v) then
        -- Collider: the filter applies to self-attention over its N = B*T query rows
        local flt = k:size(1) == q:size(1) and row_filter_for(q, q:size(0) * q:size(1)) or nil
        ag.record(out, { q, k, v }, function(g)
            local gq, gk, gv = ag.grad_of(q), ag.grad_of(k), ag.grad_of(v)
            local mask = flt and flt.keep and flt.mask
            if mask then
                mask = mask:reshape { q:size(0), q:size(1) }   -- filtered queries are skipped (their dO rows are treated as zero)
                check(C.nc_attention_backward_masked(cptr(gq), cptr(gk), cptr(gv), out._c, lse._c, q._c, k._c, v._c,
                    g._c, mask._c, cflag, scale), 'attention backward (collider)')
            else
                check(C.nc_attention_backward(cptr(gq), cptr(gk), cptr(gv), out._c, lse._c, q._c, k._c, v._c, g._c,
                    cflag, scale), 'attention backward')
            end
        end)
    end
    return out, lse
end

-- ---- BitNet fake quantizers (straight-through backward) ------------------------------------------
local function ste(out, x)
    if ag.needs(x) then
        ag.record(out, { x }, function(g) ag.pass_grad(x, g) end)
    end
    return out
end

-- gamma * clamp(round(w / gamma), -1, 1); opts: group_size (0 = per tensor), eps (1e-5).
-- Returns the fake-quantized tensor and the scales (one gamma per group).
function M.quant_weight(w, opts)
    opts = opts or {}
    if not Tensor.is(w) then error('quant_weight: expected a tensor', 2) end
    local gs = opts.group_size or 0
    local n = w:numel()
    local ng = gs == 0 and 1 or math.floor(n / gs)
    local out = empty_like_shape(w:shape(), w)
    local scale = Tensor.empty({ ng }, 'f32', w:device())
    check(C.nc_quant_weight_absmean(out._c, scale._c, w._c, gs, opts.eps or 1e-5), 'quant_weight')
    return ste(out, w), scale
end

-- per row (last dim): s = 127 / max|x_row|, clamp(round(x s), -128, 127) / s; opts: eps (1e-5).
-- Returns the fake-quantized tensor and the per-row scales s (rows).
function M.quant_act(x, opts)
    opts = opts or {}
    if not Tensor.is(x) then error('quant_act: expected a tensor', 2) end
    if x:dim() < 1 then error('quant_act: expected x (..., D), got a scalar', 2) end
    local rows = x:size(-1) == 0 and 0 or x:numel() / x:size(-1)
    local out = empty_like_shape(x:shape(), x)
    local scale = Tensor.empty({ rows }, 'f32', x:device())
    check(C.nc_quant_act_absmax(out._c, scale._c, x._c, opts.eps or 1e-5), 'quant_act')
    return ste(out, x), scale
end

-- ---- BitLinear on AMX: linear(quant_act(x), quant_weight(w)) as integer codes ---------------------
-- The fused training op (algorithms.md §1 with the STE). Xq = q / s per row (q int8 codes, s the
-- quant_act scale), Wq = gamma t (t ternary codes, gamma per tensor or per group of whole rows), so
--   y  = (q t^T) * gamma[n] / s[m]            int8 AMX GEMM: q t^T is exact int32 arithmetic
--   dX = bf16(dY * gamma[n]) t                bf16 AMX GEMM, f32 accumulation (STE: dX = dXq)
--   dW = bf16(dY[m] / s[m])^T q               (STE: dW = dWq)
-- Only dY is rounded to bf16 (the per-row 1/s and per-column gamma are folded into it first); q and
-- t are integers |v| <= 128, exact in bf16. Composite path: the same math through f32 sgemm on the
-- fake-quantized tensors. The GEMMs run on AMX tiles, or without AMX on the AVX-512 BF16 / VNNI
-- kernels (kernels/cpu/amx.c; the int8 forward is exact on both). Without either (nc.cpu_gemm_fast()
-- false), with an unsupported group (not 0 and not a multiple of in_features), or on a non-CPU
-- tensor, bitlinear runs that composite path. ("amx" in the names below predates the AVX-512 path.)

local function amx_ok(t) return C.nc_cpu_gemm_fast() == 1 and t._c.device == C.NC_CPU end

-- The shared activation of one or more bitlinear calls (like quant_act's output shared by q/k/v):
-- { x = x, q = codes f32 (rows, K) contiguous, s = scale (rows), amx = true }; no autograd node of its
-- own (each bitlinear call passes its dX to x). opts: eps (1e-5, as quant_act). On a machine without
-- AMX it returns { x = x, xq = quant_act(x) } for the composite path.
function M.bitlinear_act(x, opts)
    opts = opts or {}
    if not Tensor.is(x) then error('bitlinear_act: expected a tensor', 2) end
    if x:dim() < 1 then error('bitlinear_act: expected x (..., K), got a scalar', 2) end
    if not amx_ok(x) then return { x = x, xq = (M.quant_act(x, opts)) } end
    local K = x:size(-1)
    local rows = K == 0 and 0 or x:numel() / K
    local q = Tensor.empty({ rows, K }, 'f32', 'cpu')
    local s = Tensor.empty({ rows }, 'f32', 'cpu')
    local x2 = rows2d(x)
    check(C.nc_quant_act_absmax(q._c, s._c, x2._c, opts.eps or 1e-5), 'bitlinear_act')
    check(C.nc_quant_codes(q._c, q._c, s._c, 0, -128, 127), 'bitlinear_act')   -- exact: round((q / s) s) = q
    return { x = x, q = q, s = s, amx = true }
end

-- y = linear(quant_act(x), quant_weight(w)) for a = bitlinear_act(x) (or a plain tensor x);
-- w (out, in) the fp32 latent weight. opts: group_size (0), eps (1e-5; the weight quantizer's).
function M.bitlinear(a, w, opts)
    opts = opts or {}
    if Tensor.is(a) then a = M.bitlinear_act(a) end
    if type(a) ~= 'table' or not Tensor.is(a.x) then error('bitlinear: expected x or bitlinear_act(x)', 2) end
    if not Tensor.is(w) or w:dim() ~= 2 then error('bitlinear: expected w (out, in), got ' .. (Tensor.is(w) and shape_str(w) or type(w)), 2) end
    local x = a.x
    local N, K = w:size(0), w:size(1)
    if x:size(-1) ~= K then
        error(string.format('bitlinear: x %s does not match w %s (in_features %d)', shape_str(x), shape_str(w), K), 2)
    end
    local gs = opts.group_size or 0
    if not a.amx or (gs ~= 0 and gs % K ~= 0) or not amx_ok(w) then
        local xq = a.xq or (M.quant_act(x))
        return M.linear(xq, (M.quant_weight(w, opts)))
    end
    -- ternary codes t and gamma (one per tensor, or expanded to one per output row)
    local t = Tensor.empty({ N, K }, 'f32', 'cpu')
    local ng = gs == 0 and 1 or (N * K) / gs
    local gamma = Tensor.empty({ ng }, 'f32', 'cpu')
    check(C.nc_quant_weight_absmean(t._c, gamma._c, w._c, gs, opts.eps or 1e-5), 'bitlinear')
    check(C.nc_quant_codes(t._c, t._c, gamma._c, 1, -1, 1), 'bitlinear')          -- exact: (gamma t) / gamma = t
    if gs ~= 0 and ng ~= N then
        gamma = gamma:view { ng, 1 }:expand { ng, N / ng }:contiguous():view { N }
    end
    local q, s = a.q, a.s
    local sx = x:shape()
    local oshape = {}
    for i = 1, #sx - 1 do oshape[i] = sx[i] end
    oshape[#sx] = N
    local out = Tensor.empty(oshape, 'f32', 'cpu')
    check(C.nc_gemm_s8(rows2d(out)._c, q._c, t._c, 0, 1, gamma._c, s._c, 1), 'bitlinear')
    if ag.needs(x, w) then
        local flt = row_filter_for(x, q:size(0))
        ag.record(out, { x, w }, function(g)
            local g2 = rows2d(g)
            -- Collider (algorithms.md §8.3): only the kept rows K, read and written in place by the
            -- row-indexed GEMM (dX[K] = dY[K] t, the other rows of a fresh dX zeroed; dW over k in K)
            local keep = flt and flt.keep
            local kc = keep and keep._c or nil
            local gx, fx = ag.grad_buf(x)
            if gx then
                check(C.nc_gemm_bf16_rows(rows2d(gx)._c, g2._c, t._c, 0, 0, gamma._c, 0, 1, fx and 0 or 1, kc, nil,
                    (keep and fx) and 1 or 0), 'bitlinear backward')
            end
            local gw, fw = ag.grad_buf(w)
            if gw then
                check(C.nc_gemm_bf16_rows(gw._c, g2._c, q._c, 1, 0, s._c, 1, 1, fw and 0 or 1, nil, kc, 0),
                    'bitlinear backward')
            end
        end)
    end
    return out
end

-- y = x W^T with both operands rounded to bf16 and f32 accumulation on AMX (mixed precision for the
-- fp32 layers, e.g. the LM head): backward dX = bf16(dY) bf16(W), dW = bf16(dY)^T bf16(X); under a
-- Collider row filter on the kept rows only (as nc.linear). Without AMX or on a non-CPU tensor it
-- is nc.linear (fp32).

function M.linear_bf16(x, w)
    if not (Tensor.is(x) and Tensor.is(w)) then error('linear_bf16: expected tensors x and w', 2) end
    if w:dim() ~= 2 then error('linear_bf16: expected w (out, in), got ' .. shape_str(w), 2) end
    if x:dim() < 1 or x:size(-1) ~= w:size(1) then
        error(string.format('linear_bf16: x %s does not match w %s', shape_str(x), shape_str(w)), 2)
    end
    if not (amx_ok(x) and amx_ok(w)) then return M.linear(x, w) end
    local sx = x:shape()
    local oshape = {}
    for i = 1, #sx - 1 do oshape[i] = sx[i] end
    oshape[#sx] = w:size(0)
    local out = Tensor.empty(oshape, 'f32', 'cpu')
    local x2 = rows2d(x)
    check(C.nc_gemm_bf16(rows2d(out)._c, x2._c, w._c, 0, 1, nil, 0, 1, 0), 'linear_bf16')
    if ag.needs(x, w) then
        local flt = row_filter_for(x, x2:size(0))
        ag.record(out, { x, w }, function(g)
            local keep = flt and flt.keep   -- Collider: the kept rows only, in place (as nc.bitlinear)
            local kc = keep and keep._c or nil
            local g2 = rows2d(g)
            local gx, fx = ag.grad_buf(x)
            if gx then
                check(C.nc_gemm_bf16_rows(rows2d(gx)._c, g2._c, w._c, 0, 0, nil, 0, 1, fx and 0 or 1, kc, nil,
                    (keep and fx) and 1 or 0), 'linear_bf16 backward')
            end
            local gw, fw = ag.grad_buf(w)
            if gw then
                check(C.nc_gemm_bf16_rows(gw._c, g2._c, x2._c, 1, 0, nil, 0, 1, fw and 0 or 1, nil, kc, 0),
                    'linear_bf16 backward')
            end
        end)
    end
    return out
end

return M
