-- spec/ops/simd_spec.lua — the AVX2 fast paths that are NOT bit-identical to the scalar reference
-- (vector polynomial exp / sigmoid / silu / gelu and their backward, softmax, log-softmax,
-- RMSNorm, fused cross-entropy) against float64 Lua references with stated tolerances, on both
-- kernels (NC_KERNEL=scalar and avx2), on odd row lengths (vector tails), with and without the
-- streaming-store path; special values (NaN, +-inf, far tails); and bit-equality of the streaming
-- and the plain store paths (same arithmetic).
package.path = 'lua/?.lua;lua/?/init.lua;' .. package.path
local nc = require 'nanochat'
local ffi = require 'ffi'
local C = nc.C

-- ---- tolerances (|got - want| <= ATOL + RTOL * |want|) -------------------------------------------
local EXP_RTOL, EXP_ATOL = 1e-6, 1.2e-38    -- exp: a few ulp; results below FLT_MIN may flush to 0
local ACT_RTOL, ACT_ATOL = 4e-6, 1e-7       -- sigmoid, silu, gelu and their derivatives
local ROW_RTOL, ROW_ATOL = 2e-5, 1e-7       -- softmax / rmsnorm / cross-entropy (f32 sums over a row)
local LSM_ATOL = 2e-6                        -- log-softmax: x - lse rounds at the scale of lse (|lse| <= ~16)

local has_avx2 = pcall(nc.set_cpu_kernel, 'avx2')
nc.set_cpu_kernel('auto')
local KERNELS = has_avx2 and { 'scalar', 'avx2' } or { 'scalar' }

local function with_kernel(k, f)
    nc.set_cpu_kernel(k)
    local ok, err = pcall(f)
    nc.set_cpu_kernel('auto')
    if not ok then error(err, 0) end
end

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

    it('propagate NaN and saturate at +-inf (avx2)', function()
        if not has_avx2 then pending('no AVX2') return end
        with_kernel('avx2', function()
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
    end)
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
            return { a + b, a * 0.25, nc.relu(a), nc.silu(a), nc.gelu(a), nc.maximum(a, b) }
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
