-- spec/ops/simd_spec.lua — the vector fast paths that are NOT bit-identical to the scalar reference
-- (polynomial exp / sigmoid / tanh / silu / gelu (erf and tanh forms) and their backward, softmax,
-- log-softmax, RMSNorm, fused cross-entropy) against float64 Lua references with stated tolerances,
-- on every kernel this CPU has (NC_KERNEL=scalar, avx2, avx512), on odd row lengths (vector tails),
-- with and without the streaming-store path; special values (NaN, +-inf, -0, denormal inputs and
-- results, the overflow edge); the ulp bounds simd_avx2.h / act_avx512.c state; scalar-vs-vector
-- agreement; softmax rows summing to 1 within 1e-6; and bit-equality of the streaming and the
-- plain store paths (same arithmetic).
package.path = 'lua/?.lua;lua/?/init.lua;spec/helpers/?.lua;' .. package.path
local nc = require 'nanochat'
local ffi = require 'ffi'
local C = nc.C

-- ---- tolerances (|got - want| <= ATOL + RTOL * |want|) -------------------------------------------
local EXP_RTOL, EXP_ATOL = 1e-6, 1.2e-38    -- exp: a few ulp; results below FLT_MIN may flush to 0
local ACT_RTOL, ACT_ATOL = 4e-6, 1e-7       -- sigmoid, silu, gelu and their derivatives
local ROW_RTOL, ROW_ATOL = 2e-5, 1e-7       -- softmax / rmsnorm / cross-entropy (f32 sums over a row)
local LSM_ATOL = 2e-6                        -- log-softmax: x - lse rounds at the scale of lse (|lse| <= ~16)

local has_avx2 = pcall(nc.set_cpu_kernel, 'avx2')
local has_avx512 = pcall(nc.set_cpu_kernel, 'avx512')   -- AVX-512F versions of the exp-bound kernels
nc.set_cpu_kernel(os.getenv('NC_KERNEL') or 'auto')
local KERNELS = has_avx2 and { 'scalar', 'avx2' } or { 'scalar' }
if has_avx512 then KERNELS[#KERNELS + 1] = 'avx512' end
local VECTOR_KERNELS = {}
for _, k in ipairs(KERNELS) do if k ~= 'scalar' then VECTOR_KERNELS[#VECTOR_KERNELS + 1] = k end end

local with_kernel = require('settings').with_kernel

local function with_nt(bytes, f)
    local prev = tonumber(C.nc_get_nt_bytes())
    C.nc_set_nt_bytes(bytes)
    local ok, err = pcall(f)
    C.nc_set_nt_bytes(prev)
    if not ok then error(err, 0) end
end

local function close(got, want, rtol, atol, what)
    assert(#got == #want, what .. ': length ' .. #got .. ' vs ' .. #want)
    for i = 1, #want do
        local g, w = got[i], want[i]
        if w ~= w then
            if g == g then error(string.format('%s: element %d is %.9g, expected NaN', what, i, g), 2) end
        elseif w == math.huge or w == -math.huge then
            if g ~= w then error(string.format('%s: element %d is %.9g, expected %g', what, i, g, w), 2) end
        elseif math.abs(g - w) > atol + rtol * math.abs(w) then
            error(string.format('%s: element %d is %.9g, expected %.9g (diff %.3g)', what, i, g, w, math.abs(g - w)), 2)
        end
    end
end

local seed = 500
local function rand(shape, lo, hi)
    seed = seed + 1
    return nc.rand(shape, { generator = nc.generator(seed), lo = lo, hi = hi })
end

-- values rounded to f32 (what the kernels see)
local function f32list(t) return t:tolist() end

-- ---- float64 references ---------------------------------------------------------------------------
local function erf(x)   -- double-precision erf (series / continued fraction split)
    local ax = math.abs(x)
    local r
    if ax < 2.5 then
        local sum, term, n = ax, ax, 0
        repeat
            n = n + 1
            term = term * -ax * ax / n
            local add = term / (2 * n + 1)
            sum = sum + add
        until math.abs(add) <= 1e-17 * math.abs(sum) or n > 200
        r = 2 / math.sqrt(math.pi) * sum
    else   -- erfc continued fraction (Lentz), accurate for ax >= 2.5
        local tiny = 1e-300
        local f = ax
        local Cc, D = ax, 0
        for k = 1, 200 do
            local an = k / 2
            D = ax + an * D; if D == 0 then D = tiny end
            Cc = ax + an / Cc; if Cc == 0 then Cc = tiny end
            D = 1 / D
            local delta = Cc * D
            f = f * delta
            if math.abs(delta - 1) < 1e-16 then break end
        end
        r = 1 - math.exp(-ax * ax) / math.sqrt(math.pi) / f
    end
    return x < 0 and -r or r
end
-- Phi(x) with relative accuracy in the lower tail: 0.5 erfc(-x / sqrt 2)
local function erfc_pos(z)   -- z >= 2.5 via the continued fraction, else 1 - erf
    if z < 2.5 then return 1 - erf(z) end
    local tiny = 1e-300
    local f, Cc, D = z, z, 0
    for k = 1, 200 do
        local an = k / 2
        D = z + an * D; if D == 0 then D = tiny end
        Cc = z + an / Cc; if Cc == 0 then Cc = tiny end
        D = 1 / D
        local delta = Cc * D
        f = f * delta
        if math.abs(delta - 1) < 1e-16 then break end
    end
    return math.exp(-z * z) / math.sqrt(math.pi) / f
end
local function Phi(x)
    if x >= 0 then return 1 - 0.5 * erfc_pos(x / math.sqrt(2)) end
    return 0.5 * erfc_pos(-x / math.sqrt(2))
end
local function sigmoid(x)
    if x >= 0 then return 1 / (1 + math.exp(-x)) end
    local e = math.exp(x)
    return e / (1 + e)
end

local REF = {
    exp = function(x) return math.exp(x) end,
    sigmoid = sigmoid,
    silu = function(x) return x * sigmoid(x) end,
    gelu = function(x) return x * Phi(x) end,
}
local DREF = {
    silu = function(x) local s = sigmoid(x); return s * (1 + x * (1 - s)) end,
    gelu = function(x) return Phi(x) + x * math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi) end,
}

-- a tensor from a Lua list (f32)
local function T(list) return nc.tensor(list) end

describe('vector activations vs float64', function()
    -- a dense sweep over the interesting range plus the far tails; 1003 elements (vector tail)
    local xs = {}
    for i = 0, 1002 do xs[#xs + 1] = -20 + 40 * i / 1002 end
    for _, v in ipairs { 0, -0.0, 1e-30, -1e-30, 30, -30, 80, -80, 87, -87, 88.3, -88.3, -100, 100 } do xs[#xs + 1] = v end
    local x = T(xs)
    local xf = f32list(x)

    for _, k in ipairs(KERNELS) do
        for _, op in ipairs { 'exp', 'sigmoid', 'silu', 'gelu' } do
            it(op .. ' (' .. k .. ')', function()
                with_kernel(k, function()
                    local want = {}
                    for i, v in ipairs(xf) do
                        local w = REF[op](v)
                        if op == 'exp' and w > 3.4028234663852886e38 then w = math.huge end
                        want[i] = w
                    end
                    -- libm's f32 expf in the scalar kernel is within 1 ulp too; silu/gelu f32 in
                    -- the reference path lose relative accuracy far in the negative tail, which the
                    -- absolute tolerance covers
                    local rtol, atol = op == 'exp' and EXP_RTOL or ACT_RTOL, op == 'exp' and EXP_ATOL or ACT_ATOL
                    if k == 'scalar' and op == 'gelu' then atol = 1e-6 end
                    close(nc[op](x):tolist(), want, rtol, atol, op .. ' ' .. k)
                end)
            end)
        end
        for _, op in ipairs { 'silu', 'gelu' } do
            it(op .. ' backward (' .. k .. ')', function()
                with_kernel(k, function()
                    local xg = x:clone():requires_grad_(true)
                    local g = rand({ #xs }, -2, 2)
                    nc[op](xg):backward(g)
                    local gl, want = g:tolist(), {}
                    for i, v in ipairs(xf) do want[i] = gl[i] * DREF[op](v) end
                    close(xg.grad:tolist(), want, ACT_RTOL, k == 'scalar' and 1e-6 or ACT_ATOL, op .. ' backward ' .. k)
                end)
            end)
        end
    end

    for _, vk in ipairs(VECTOR_KERNELS) do it('propagate NaN and saturate at +-inf (' .. vk .. ')', function()
        with_kernel(vk, function()
            local v = T { 0 / 0, math.huge, -math.huge, 1 }
            local e = nc.exp(v):tolist()
            assert.is_true(e[1] ~= e[1])
            assert.are.equal(math.huge, e[2])
            assert.are.equal(0, e[3])
            local s = nc.sigmoid(v):tolist()
            assert.is_true(s[1] ~= s[1])
            assert.are.same({ 1, 0 }, { s[2], s[3] })
            local g = nc.gelu(v):tolist()
            assert.is_true(g[1] ~= g[1])
            assert.are.equal(math.huge, g[2])
        end)
    end) end
end)

-- ---- softmax / log-softmax ------------------------------------------------------------------------
local function softmax_ref(rows, n, x, log)
    local out = {}
    for r = 0, rows - 1 do
        local m = -math.huge
        for j = 1, n do m = math.max(m, x[r * n + j]) end
        local s = 0
        for j = 1, n do s = s + math.exp(x[r * n + j] - m) end
        for j = 1, n do
            local v = x[r * n + j]
            out[r * n + j] = log and (v - m - math.log(s)) or math.exp(v - m) / s
        end
    end
    return out
end

describe('softmax rows vs float64', function()
    for _, k in ipairs(KERNELS) do
        for _, nt in ipairs { false, true } do
            it(string.format('forward and backward, odd lengths (%s%s)', k, nt and ', streaming stores' or ''), function()
                with_kernel(k, function()
                    with_nt(nt and 1 or 0, function()
                        for _, n in ipairs { 1, 7, 8, 9, 33, 1000, 4099 } do
                            local rows = n > 100 and 3 or 5
                            local x = rand({ rows, n }, -8, 8)
                            local xl = x:tolist()
                            for _, log in ipairs { false, true } do
                                local f = log and nc.log_softmax or nc.softmax
                                local xg = x:clone():requires_grad_(true)
                                local y = f(xg, -1)
                                local want = softmax_ref(rows, n, xl, log)
                                close(y:tolist(), want, ROW_RTOL, log and LSM_ATOL or ROW_ATOL, string.format('%s n=%d %s', log and 'log_softmax' or 'softmax', n, k))
                                local g = rand({ rows, n }, -1, 1)
                                y:backward(g)
                                local gl, gw = g:tolist(), {}
                                for r = 0, rows - 1 do
                                    local s = 0
                                    for j = 1, n do
                                        local i = r * n + j
                                        s = s + (log and gl[i] or gl[i] * want[i])
                                    end
                                    for j = 1, n do
                                        local i = r * n + j
                                        gw[i] = log and (gl[i] - math.exp(want[i]) * s) or want[i] * (gl[i] - s)
                                    end
                                end
                                close(xg.grad:tolist(), gw, 1e-4, 1e-6, string.format('%s backward n=%d %s', log and 'log_softmax' or 'softmax', n, k))
                            end
                        end
                    end)
                end)
            end)
        end
    end

    it('rows with -inf entries give exact zeros; streaming and plain stores agree bitwise', function()
        local x = T { { 0, -math.huge, 1, -math.huge, 2, 3, 4, 5, 6 } }
        local p = nc.softmax(x, -1):tolist()
        assert.are.equal(0, p[2])
        assert.are.equal(0, p[4])
        local big = rand({ 64, 1027 }, -5, 5)
        local a, b
        with_nt(0, function() a = nc.softmax(big, -1) end)
        with_nt(1, function() b = nc.softmax(big, -1) end)
        assert.are.equal(0, nc.sum(nc.ne(a, b):to('f32')):item())
    end)
end)

-- ---- RMSNorm ---------------------------------------------------------------------------------------
describe('rmsnorm rows vs float64', function()
    for _, k in ipairs(KERNELS) do
        for _, nt in ipairs { false, true } do
            it(string.format('forward and backward with and without weight (%s%s)', k, nt and ', streaming stores' or ''), function()
                with_kernel(k, function()
                    with_nt(nt and 1 or 0, function()
                        for _, D in ipairs { 1, 5, 16, 37, 1031 } do
                            local rows = 4
                            local x = rand({ rows, D }, -3, 3)
                            local w = rand({ D }, 0.5, 1.5)
                            local xl, wl = x:tolist(), w:tolist()
                            for _, use_w in ipairs { false, true } do
                                local xg = x:clone():requires_grad_(true)
                                local wg = use_w and w:clone():requires_grad_(true) or nil
                                local y = nc.rmsnorm(xg, wg, 1e-6)
                                local want, rstd = {}, {}
                                for r = 0, rows - 1 do
                                    local ss = 0
                                    for j = 1, D do ss = ss + xl[r * D + j] ^ 2 end
                                    rstd[r] = 1 / math.sqrt(ss / D + 1e-6)
                                    for j = 1, D do want[r * D + j] = xl[r * D + j] * rstd[r] * (use_w and wl[j] or 1) end
                                end
                                local what = string.format('rmsnorm D=%d w=%s %s', D, tostring(use_w), k)
                                close(y:tolist(), want, ROW_RTOL, ROW_ATOL, what)
                                local g = rand({ rows, D }, -1, 1)
                                y:backward(g)
                                local gl, gx, gw = g:tolist(), {}, {}
                                for j = 1, D do gw[j] = 0 end
                                for r = 0, rows - 1 do
                                    local dot = 0
                                    for j = 1, D do
                                        local i = r * D + j
                                        dot = dot + (use_w and wl[j] or 1) * gl[i] * xl[i]
                                    end
                                    local inv = rstd[r]
                                    for j = 1, D do
                                        local i = r * D + j
                                        gx[i] = inv * (use_w and wl[j] or 1) * gl[i] - xl[i] * inv ^ 3 * dot / D
                                        gw[j] = gw[j] + gl[i] * xl[i] * inv
                                    end
                                end
                                close(xg.grad:tolist(), gx, 1e-4, 1e-5, what .. ' gx')
                                if use_w then close(wg.grad:tolist(), gw, 1e-4, 1e-5, what .. ' gw') end
                            end
                        end
                    end)
                end)
            end)
        end
    end
end)

-- ---- cross-entropy ---------------------------------------------------------------------------------
describe('fused cross-entropy rows vs float64', function()
    for _, k in ipairs(KERNELS) do
        it('loss and gradient with label smoothing and z-loss, odd vocab (' .. k .. ')', function()
            with_kernel(k, function()
                for _, V in ipairs { 3, 17, 1001 } do
                    local N = 6
                    local x = rand({ N, V }, -6, 6)
                    local tl = {}
                    for r = 1, N do tl[r] = (r * 7) % V end
                    tl[3] = -100   -- ignored
                    local tgt = nc.tensor(tl, { dtype = 'i64' })
                    local xl = x:tolist()
                    for _, o in ipairs { { ls = 0, z = 0 }, { ls = 0.1, z = 1e-3 } } do
                        local xg = x:clone():requires_grad_(true)
                        local loss = nc.cross_entropy(xg, tgt, { ignore_index = -100, label_smoothing = o.ls, z_loss = o.z })
                        local total, count, gw = 0, 0, {}
                        for i = 1, N * V do gw[i] = 0 end
                        local rows = {}
                        for r = 0, N - 1 do
                            local m = -math.huge
                            for j = 1, V do m = math.max(m, xl[r * V + j]) end
                            local s, sx = 0, 0
                            for j = 1, V do s = s + math.exp(xl[r * V + j] - m); sx = sx + xl[r * V + j] end
                            local lse = m + math.log(s)
                            local t = tl[r + 1]
                            if t ~= -100 then
                                count = count + 1
                                total = total + (1 - o.ls) * (lse - xl[r * V + t + 1]) + o.ls * (lse - sx / V) + o.z * lse * lse
                                rows[#rows + 1] = { r = r, lse = lse, t = t }
                            end
                        end
                        local what = string.format('cross_entropy V=%d ls=%g z=%g %s', V, o.ls, o.z, k)
                        close({ loss:item() }, { total / count }, ROW_RTOL, ROW_ATOL, what)
                        loss:backward()
                        for _, rr in ipairs(rows) do
                            for j = 1, V do
                                local i = rr.r * V + j
                                local p = math.exp(xl[i] - rr.lse)
                                gw[i] = (p * (1 + 2 * o.z * rr.lse) - o.ls / V - ((j - 1 == rr.t) and (1 - o.ls) or 0)) / count
                            end
                        end
                        close(xg.grad:tolist(), gw, 1e-4, 1e-7, what .. ' grad')
                    end
                end
            end)
        end)
    end
end)

describe('streaming stores in elementwise kernels', function()
    it('give the same bits as plain stores (binary, scalar, unary, in place)', function()
        local n = 100003
        local a, b = rand({ n }, -3, 3), rand({ n }, -3, 3)
        local function run()
            return { a + b, a * 0.25, nc.relu(a), nc.silu(a), nc.gelu(a), nc.maximum(a, b),
                     a - b, a / b, a / 3, a + 0.5, nc.relu2(a) }
        end
        local plain, streamed
        with_nt(0, function() plain = run() end)
        with_nt(1, function() streamed = run() end)
        for i = 1, #plain do
            local pa = ffi.cast('const uint32_t *', C.nc_tensor_data(plain[i]._c))
            local pb = ffi.cast('const uint32_t *', C.nc_tensor_data(streamed[i]._c))
            for j = 0, n - 1 do
                if pa[j] ~= pb[j] then error(string.format('result %d differs at %d', i, j)) end
            end
        end
        -- an in-place style call (out aliases a) through the bare C kernel
        local c = a:clone()
        with_nt(1, function() require('nanochat.core').check(C.nc_binary_scalar(c._c, c._c, 2, C.NC_OP_MUL), 'mul') end)
        local al, cl = a:tolist(), c:tolist()
        for j = 1, n, 997 do assert.are.equal(al[j] * 2, cl[j]) end
    end)
end)

-- ---- ulp bounds of the vector math (simd_avx2.h states them) ----------------------------------------
-- ulp(w) = the f32 spacing at the float64 reference value w (2^-149 in the denormal range).
-- Results whose reference is below 1e-30 in magnitude (deep tails of sigmoid / silu / gelu_tanh,
-- where the AVX2 kernels return 0 below x = -87.33) are checked against an absolute 1e-35.
local FLT_MIN = 1.1754943508222875e-38
local function ulp(w)
    local _, e = math.frexp(math.abs(w))
    return 2 ^ (math.max(e - 1, -126) - 23)
end
local GC2 = math.sqrt(2 / math.pi)
local function tanh64(x) return math.tanh(x) end
local ULP_REF = {
    exp = math.exp, sigmoid = sigmoid, tanh = tanh64,
    silu = function(x) return x * sigmoid(x) end,
    gelu_tanh = function(x) return x * sigmoid(2 * GC2 * (x + 0.044715 * x * x * x)) end,
}
local ULP_DREF = {
    exp = math.exp,
    sigmoid = function(x) local s = sigmoid(x); return s * (1 - s) end,
    tanh = function(x) local t = math.tanh(x); return 1 - t * t end,
    gelu_tanh = function(x)
        local s = sigmoid(2 * GC2 * (x + 0.044715 * x * x * x))
        return s + 2 * x * s * (1 - s) * GC2 * (1 + 3 * 0.044715 * x * x)
    end,
}
-- stated bounds (AVX2): exp 2 ulp, the others 4 ulp (gelu_tanh: 4 ulp times max(1, |2u|), u its tanh
-- argument, since u itself is rounded to f32)
local ULP_MAX = { exp = 2, sigmoid = 4, tanh = 4, silu = 4, gelu_tanh = 4 }
local ULP_RANGE = { exp = { -104, 89 }, sigmoid = { -95, 40 }, tanh = { -12, 12 }, silu = { -95, 40 },
                    gelu_tanh = { -14, 14 } }

local function apply(op, t)
    if op == 'gelu_tanh' then return nc.gelu(t, { approximate = 'tanh' }) end
    return nc[op](t)
end

-- max ulp error over x, or an error naming the worst element beyond `bound`
local function ulp_check(op, xl, got, bound, what)
    local worst = 0
    for i = 1, #xl do
        local w = ULP_REF[op](xl[i])
        if w > 3.4028234663852886e38 then w = math.huge end
        local g = got[i]
        if w ~= w or w == math.huge or w == -math.huge then
            if not (g == w or (g ~= g and w ~= w)) then
                error(string.format('%s: x = %.9g gives %.9g, expected %g', what, xl[i], g, w), 2)
            end
        elseif math.abs(w) < 1e-30 then
            if math.abs(g - w) > 1e-35 then
                error(string.format('%s: x = %.9g gives %.9g, expected %.9g (abs bound 1e-35)', what, xl[i], g, w), 2)
            end
        else
            local u = math.abs(g - w) / ulp(w)
            local b = bound
            if op == 'gelu_tanh' then   -- the f32 argument 2u carries its own rounding: exp's condition number |2u|
                local x = xl[i]
                b = bound * math.max(1, math.abs(2 * GC2 * (x + 0.044715 * x * x * x)))
            end
            if u > b then
                error(string.format('%s: x = %.9g gives %.9g, expected %.9g (%.2f ulp > %g)', what, xl[i], g, w, u, b), 2)
            end
            if u > worst then worst = u end
        end
    end
    return worst
end

describe('vector math ulp bounds (exp, sigmoid, tanh, silu, gelu tanh form)', function()
    local sizes = { 1, 7, 8, 9, 15, 17, 31, 1003, 20011 }   -- tails of every length 0..7
    for _, vk in ipairs(VECTOR_KERNELS) do
        for op, bound in pairs(ULP_MAX) do
            it(op .. ': ' .. vk .. ' within ' .. bound .. ' ulp of float64 over many sizes', function()
                with_kernel(vk, function()
                    local worst = 0
                    for _, n in ipairs(sizes) do
                        local r = ULP_RANGE[op]
                        for _, lohi in ipairs { r, { -1, 1 } } do
                            local x = rand({ n }, lohi[1], lohi[2])
                            local xl = f32list(x)
                            worst = math.max(worst, ulp_check(op, xl, apply(op, x):tolist(), bound, op .. ' n=' .. n .. ' ' .. vk))
                        end
                    end
                    assert.is_true(worst > 0)   -- (each element was checked against its bound)
                end)
            end)
        end
    end

    for _, vk in ipairs(VECTOR_KERNELS) do it('special values: +-inf, NaN, -0, denormal inputs, overflow edge, denormal results (' .. vk .. ')', function()
        with_kernel(vk, function()
            local nan, inf = 0 / 0, math.huge
            local dn = 1e-40                          -- a denormal input
            local xs = { nan, inf, -inf, 0, -0.0, dn, -dn, 88.72, 88.73, -100, -103.9, -104, 1e30, -1e30 }
            -- (padding to 17 elements puts the specials in vector bodies and tails)
            for _ = #xs + 1, 17 do xs[#xs + 1] = 0.5 end
            local x = T(xs)
            local xl = f32list(x)
            for op, bound in pairs(ULP_MAX) do
                ulp_check(op, xl, apply(op, x):tolist(), bound, op .. ' specials')
            end
            local e = nc.exp(x):tolist()
            assert.is_true(e[1] ~= e[1])
            assert.are.same({ inf, 0, 1, 1, 1, 1 }, { e[2], e[3], e[4], e[5], e[6], e[7] })
            assert.is_true(e[8] < inf and e[8] > 3.3e38)     -- exp(88.72) = 3.36e38 is finite
            assert.are.equal(inf, e[9])
            assert.is_true(e[10] > 0 and e[10] < FLT_MIN)   -- exp(-100) = 3.7e-44: a denormal
            assert.is_true(e[11] > 0)                        -- exp(-103.9) = 1.1e-45: the smallest denormal
            assert.are.equal(0, e[12])
            local t = nc.tanh(x):tolist()
            assert.are.same({ 1, -1, 0 }, { t[2], t[3], t[4] })
            assert.are.equal(-math.huge, 1 / t[5])          -- tanh(-0) = -0
            assert.are.same({ xl[6], xl[7] }, { t[6], t[7] }) -- tanh(denormal) = itself
            local s = nc.sigmoid(x):tolist()
            assert.are.same({ 1, 0, 0.5, 0.5, 0.5 }, { s[2], s[3], s[4], s[5], s[6] })
            local si = nc.silu(x):tolist()
            assert.are.equal(inf, si[2])
            assert.is_true(si[1] ~= si[1] and si[3] ~= si[3])   -- -inf * 0 = NaN, as in the reference
            local gt = nc.gelu(x, { approximate = 'tanh' }):tolist()
            assert.is_true(gt[1] ~= gt[1])
            assert.are.equal(inf, gt[2])
        end)
    end) end

    it('scalar (libm) and the vector kernels agree within 4 ulp + 1e-35 (exp, sigmoid, tanh), 8 ulp + 1e-7 (silu, gelu tanh)', function()
        if not has_avx2 then pending('no AVX2') return end
        for op in pairs(ULP_MAX) do
            local r = ULP_RANGE[op]
            local x = rand({ 4099 }, r[1], r[2])
            local a
            with_kernel('scalar', function() a = apply(op, x):tolist() end)
            for _, vk in ipairs(VECTOR_KERNELS) do
            local b
            with_kernel(vk, function() b = apply(op, x):tolist() end)
            local exactish = op == 'exp' or op == 'sigmoid' or op == 'tanh'
            for i = 1, #a do
                local d = math.abs(a[i] - b[i])
                -- (the scalar silu / gelu_tanh lose absolute accuracy in 1 + tanh and 1 + exp(-x))
                local lim = exactish and (4 * ulp(a[i]) + 1e-35) or (8 * ulp(a[i]) + 1e-7)
                if a[i] == math.huge then lim = 0; d = (b[i] == math.huge) and 0 or 1 end
                if d > lim then error(string.format('%s: scalar %.9g vs %s %.9g', op, a[i], vk, b[i])) end
            end
            end
        end
    end)

    for _, k in ipairs(KERNELS) do
        it('exp, sigmoid, tanh, gelu (tanh form) backward vs float64 (' .. k .. ')', function()
            with_kernel(k, function()
                local x = rand({ 1003 }, -6, 6)
                local xl = f32list(x)
                for op, dref in pairs(ULP_DREF) do
                    local xg = x:clone():requires_grad_(true)
                    local g = rand({ 1003 }, -2, 2)
                    apply(op, xg):backward(g)
                    local gl, want = g:tolist(), {}
                    for i, v in ipairs(xl) do want[i] = gl[i] * dref(v) end
                    -- tanh and sigmoid differentiate through their f32 output (1 - y^2, y (1 - y)): absolute
                    -- error ~ulp(1) |g| where y is near +-1
                    local atol = (op == 'tanh' or op == 'sigmoid' or (k == 'scalar' and op == 'gelu_tanh')) and 1e-6 or 1e-7
                    close(xg.grad:tolist(), want, 8e-6, atol, op .. ' backward ' .. k)
                end
            end)
        end)
    end
end)

describe('softmax rows sum to 1', function()
    for _, k in ipairs(KERNELS) do
        it('within 1e-6 in float64, odd lengths, wide logit ranges and -inf entries (' .. k .. ')', function()
            with_kernel(k, function()
                for _, n in ipairs { 1, 3, 8, 9, 17, 100, 1001, 4099, 32771 } do
                    for _, span in ipairs { 1, 10, 60, 200 } do
                        local x = rand({ 3, n }, -span, span)
                        if n > 3 then   -- a masked entry per row
                            x:narrow(1, 1, 1):fill_(-math.huge)
                        end
                        local p = nc.softmax(x, -1):tolist()
                        for r = 0, 2 do
                            local s = 0
                            for j = 1, n do s = s + p[r * n + j] end
                            if math.abs(s - 1) > 1e-6 then
                                error(string.format('row %d of n=%d span=%g sums to %.9g', r, n, span, s))
                            end
                        end
                        -- log-softmax: x - lse is rounded at the scale of |x - lse| <= 2 span + ln n
                        local lp = nc.log_softmax(x, -1):tolist()
                        local s = 0
                        for j = 1, n do s = s + math.exp(lp[j]) end
                        local tol = 1e-6 + 2 ^ -23 * (2 * span + math.log(n))
                        if math.abs(s - 1) > tol then
                            error(string.format('log_softmax n=%d span=%g: exp sums to %.9g', n, span, s))
                        end
                    end
                end
            end)
        end)
    end
end)

-- ---- GELU (erf form): the AVX-512 table path -------------------------------------------------------
-- act_avx512.c computes Phi on [-4, 5.45) from 32 degree-6 polynomials (act_tables.h, generated by
-- tools/fit_act_tables.py); lanes below -4, NaN and -inf take the erfc path, lanes from 5.45 return x.
describe('gelu (erf form) table path vs float64', function()
    local function gelu64(x) return x * Phi(x) end
    if not has_avx512 then
        it('needs AVX-512', function() pending('no AVX-512') end)
        return
    end

    it('within 4 ulp on [-4, 5.45): every interval, its boundaries and odd sizes (avx512)', function()
        with_kernel('avx512', function()
            local xs = {}
            -- every interval boundary A + j H (H = 19/64) and its f32 neighbours, plus a dense sweep
            local A, H = -4, 19 / 64
            for j = 0, 32 do
                local b = A + j * H
                for _, d in ipairs { -1e-6, 0, 1e-6 } do
                    if b + d >= -4 and b + d < 5.45 then xs[#xs + 1] = b + d end
                end
            end
            for i = 0, 4000 do xs[#xs + 1] = -4 + 9.449 * i / 4000 end
            for _, n in ipairs { 1, 15, 17, #xs } do
                local part = {}
                for i = 1, n do part[i] = xs[i] end
                local x = T(part)
                local xl, got = f32list(x), nc.gelu(x):tolist()
                for i = 1, n do
                    local w = gelu64(xl[i])
                    local u = math.abs(got[i] - w) / ulp(w)
                    if math.abs(w) > 1e-30 and u > 4 then
                        error(string.format('gelu(%.9g) = %.9g, expected %.9g (%.2f ulp)', xl[i], got[i], w, u))
                    end
                end
            end
        end)
    end)

    it('outside the table: erfc path below -4 (relative 2e-5: x^2 rounding), x from 5.45, specials (avx512)', function()
        with_kernel('avx512', function()
            local xs = { -4.0000005, -4.5, -6, -8, -10, -13, 5.45, 5.5, 6, 10, 1e10, math.huge, -math.huge, 0 / 0 }
            local x = T(xs)
            local xl, got = f32list(x), nc.gelu(x):tolist()
            for i = 1, #xs - 3 do
                local w = gelu64(xl[i])
                if math.abs(got[i] - w) > 2e-5 * math.abs(w) + 1e-37 then
                    error(string.format('gelu(%.9g) = %.9g, expected %.9g', xl[i], got[i], w))
                end
            end
            for i = 7, 11 do assert.are.equal(xl[i], got[i]) end   -- Phi rounds to 1 from 5.45
            assert.are.equal(math.huge, got[12])
            local via_avx2
            with_kernel('avx2', function() via_avx2 = nc.gelu(T { -math.huge }):tolist()[1] end)
            assert.are.equal(via_avx2, got[13])                    -- -inf: the erfc path's result, as on avx2
            assert.is_true(got[14] ~= got[14])
        end)
    end)

    it('a lane does not depend on its neighbours (mixed vectors vs vectors of one value)', function()
        with_kernel('avx512', function()
            local vals = {}
            for i = 1, 200 do vals[i] = -9 + 17 * ((i * 7919) % 200) / 200 end   -- in and out of the table
            local rep = {}
            for i, v in ipairs(vals) do for k = 1, 16 do rep[(i - 1) * 16 + k] = v end end
            local a = nc.gelu(T(vals)):tolist()
            local b = nc.gelu(T(rep)):tolist()
            for i = 1, #vals do
                if a[i] ~= b[(i - 1) * 16 + 1] then
                    error(string.format('gelu(%.9g): %.9g in a mixed vector, %.9g alone', vals[i], a[i], b[(i - 1) * 16 + 1]))
                end
            end
        end)
    end)

    it('the avx512 table, the avx2 erfc path and the scalar reference agree within 2e-6 relative + 1e-7', function()
        local x = rand({ 4099 }, -7, 7)
        local r = {}
        for _, k in ipairs(KERNELS) do with_kernel(k, function() r[k] = nc.gelu(x):tolist() end) end
        for _, k in ipairs(KERNELS) do
            if k ~= 'avx512' then close(r.avx512, r[k], 2e-6, 1e-7, 'gelu avx512 vs ' .. k) end
        end
    end)
end)

-- ---- schedule independence ---------------------------------------------------------------------------
-- The streaming loops hand out chunks dynamically (kernels/cpu/sched.h); every element / row is
-- computed on its own, so 1 and 2 threads (and any interleaving) must give the same bits, on the
-- plain and the streaming-store paths.
describe('streaming kernels: results independent of the thread count and schedule', function()
    for _, k in ipairs(KERNELS) do
        it('unary ops, binary ops, softmax, log-softmax, rmsnorm, 1 vs 2 threads (' .. k .. ')', function()
            with_kernel(k, function()
                local x = rand({ 97, 1031 }, -6, 6)   -- 100007 elements: above NC_PAR_MIN
                local y = rand({ 97, 1031 }, -2, 2)
                local function run()
                    return { nc.exp(x), nc.tanh(x), nc.gelu(x), nc.silu(x), nc.relu(x), x + y, x * 0.5,
                             nc.softmax(x, -1), nc.log_softmax(x, -1), nc.rmsnorm(x, nil, 1e-6) }
                end
                local prev = nc.get_num_threads()
                local res = {}
                for _, th in ipairs { 1, 2 } do
                    nc.set_num_threads(th)
                    for _, nt in ipairs { 0, 1 } do
                        with_nt(nt, function() res[#res + 1] = run() end)
                    end
                end
                nc.set_num_threads(prev)
                for i = 2, #res do
                    for j = 1, #res[1] do
                        assert.are.equal(0, nc.sum(nc.ne(res[1][j], res[i][j]):to('f32')):item(), 'result ' .. j .. ' run ' .. i)
                    end
                end
            end)
        end)
    end
end)

-- ---- softmax rows: the AVX-512 driver carries each row's max from the previous call ------------------
describe('softmax rows with large logits: the max is the right one for every row', function()
    for _, k in ipairs(KERNELS) do
        it('contiguous and strided (transposed) inputs, rows far apart in scale, 1 and 2 threads (' .. k .. ')', function()
            with_kernel(k, function()
                local rows, n = 40, 1031
                local x = rand({ rows, n }, -3, 3)
                -- shift each row by its own large offset: a wrong max overflows exp or underflows the sum
                local off = {}
                for r = 1, rows do off[r] = ((r * 37) % 11 - 5) * 60 end
                local xl = x:tolist()
                for r = 1, rows do for j = 1, n do xl[(r - 1) * n + j] = xl[(r - 1) * n + j] + off[r] end end
                local xs = nc.tensor(xl):reshape { rows, n }
                local xt = xs:t():contiguous():t()   -- same values, last dim strided
                local prev = nc.get_num_threads()
                for _, th in ipairs { 1, 2 } do
                    nc.set_num_threads(th)
                    for _, nt in ipairs { 0, 1 } do
                        with_nt(nt, function()
                            for _, log in ipairs { false, true } do
                                local want = softmax_ref(rows, n, f32list(xs), log)
                                for _, inp in ipairs { xs, xt } do
                                    local f = log and nc.log_softmax or nc.softmax
                                    close(f(inp, -1):contiguous():tolist(), want, ROW_RTOL, log and 1e-4 or ROW_ATOL,
                                        string.format('%s %s th=%d nt=%d', log and 'log_softmax' or 'softmax', k, th, nt))
                                end
                            end
                        end)
                    end
                end
                nc.set_num_threads(prev)
            end)
        end)
    end
end)

-- ---- sigmoid / silu: the AVX-512 table path on [-8, 8) ------------------------------------------------
describe('sigmoid and silu table path vs float64', function()
    if not has_avx512 then
        it('needs AVX-512', function() pending('no AVX-512') end)
        return
    end
    local REF1 = { sigmoid = sigmoid, silu = function(x) return x * sigmoid(x) end }

    it('within 4 ulp on [-8, 8): every interval, its boundaries, both ends and odd sizes (avx512)', function()
        with_kernel('avx512', function()
            local xs = {}
            for j = 0, 32 do   -- interval boundaries -8 + j / 2 and their neighbours
                local b = -8 + j * 0.5
                for _, d in ipairs { -1e-6, 0, 1e-6 } do xs[#xs + 1] = b + d end
            end
            for i = 0, 4000 do xs[#xs + 1] = -9 + 18 * i / 4000 end   -- past both ends: the exp path
            for _, op in ipairs { 'sigmoid', 'silu' } do
                for _, n in ipairs { 1, 15, 17, #xs } do
                    local part = {}
                    for i = 1, n do part[i] = xs[i] end
                    local x = T(part)
                    local xl, got = f32list(x), nc[op](x):tolist()
                    for i = 1, n do
                        local w = REF1[op](xl[i])
                        local u = math.abs(got[i] - w) / ulp(w)
                        if math.abs(w) > 1e-30 and u > 4 then
                            error(string.format('%s(%.9g) = %.9g, expected %.9g (%.2f ulp)', op, xl[i], got[i], w, u))
                        end
                    end
                end
            end
        end)
    end)

    it('a lane does not depend on its neighbours (mixed vectors vs vectors of one value)', function()
        with_kernel('avx512', function()
            local vals = {}
            for i = 1, 200 do vals[i] = -12 + 24 * ((i * 7919) % 200) / 200 end   -- in and out of the table
            vals[#vals + 1] = 0 / 0
            local rep = {}
            for i, v in ipairs(vals) do for k = 1, 16 do rep[(i - 1) * 16 + k] = v end end
            for _, op in ipairs { 'sigmoid', 'silu' } do
                local a = nc[op](T(vals)):tolist()
                local b = nc[op](T(rep)):tolist()
                for i = 1, #vals - 1 do
                    if a[i] ~= b[(i - 1) * 16 + 1] then
                        error(string.format('%s(%.9g): %.9g in a mixed vector, %.9g alone', op, vals[i], a[i], b[(i - 1) * 16 + 1]))
                    end
                end
                assert.is_true(a[#vals] ~= a[#vals])   -- NaN stays NaN
            end
        end)
    end)
end)
