-- spec/ops/elementwise_spec.lua — elementwise, comparison and reduction ops against float64 Lua
-- references (contiguous, transposed, narrowed and broadcast inputs, odd sizes), every backward
-- against central finite differences, error messages, and bitwise equality of the scalar and
-- AVX2 kernels for the exact ops.
package.path = 'lua/?.lua;lua/?/init.lua;' .. package.path
local nc = require 'nanochat'
local ffi = require 'ffi'

-- ---- tolerances ---------------------------------------------------------------------------------
local F32_RTOL = 2e-6     -- one f32 op (or a libm f32 function) vs the float64 reference
local F32_ATOL = 1e-6
local RED_RTOL = 1e-5     -- f32 reductions (accumulated in double, rounded once)
local RED_ATOL = 1e-5
local FD_EPS = 1e-2       -- central-difference step
local FD_RTOL = 1e-2      -- finite differences on f32 kernels
local FD_ATOL = 2e-3
local LARGE = 100003      -- above NC_PAR_MIN (32768) and not a multiple of 8

-- ---- helpers ------------------------------------------------------------------------------------
local seed = 100
local function randn(shape, opts)
    seed = seed + 1
    opts = opts or {}
    local t = nc.randn(shape, { generator = nc.generator(seed), std = opts.std or 1 })
    if opts.requires_grad then t:requires_grad_(true) end
    return t
end

-- uniform in [lo, hi)
local function rand(shape, lo, hi, requires_grad)
    seed = seed + 1
    local t = nc.rand(shape, { generator = nc.generator(seed), lo = lo, hi = hi })
    if requires_grad then t:requires_grad_(true) end
    return t
end

-- multiples of 0.25 plus `offset` (maximum/minimum inputs: a grid with offset 0 and one with
-- offset 0.125 never come closer than 0.125 > FD_EPS, so finite differences never cross a kink)
local function grid(shape, offset, requires_grad)
    local t = randn(shape)
    local l = t:tolist()
    for i = 1, #l do l[i] = math.floor(l[i] * 4 + 0.5) / 4 + offset end
    local out = nc.zeros(shape)
    if #l > 0 then out:_raw_view { #l }:copy_(nc.tensor(l)) end
    if requires_grad then out:requires_grad_(true) end
    return out
end

-- values bounded away from 0 (|x| in [0.2, 1.7)), for ops with a kink at 0
local function away_from_zero(shape, requires_grad)
    local t = rand(shape, -1.5, 1.5)
    local l = t:tolist()
    for i = 1, #l do l[i] = l[i] >= 0 and l[i] + 0.2 or l[i] - 0.2 end
    local out = nc.zeros(shape)
    out:_raw_view { #l }:copy_(nc.tensor(l))
    if requires_grad then out:requires_grad_(true) end
    return out
end

local function shape_str(s) return '(' .. table.concat(s, ', ') .. ')' end

local function assert_close(got, want, rtol, atol, what)
    if type(got) == 'table' and got._c then got = got:tolist() end
    assert(#got == #want, string.format('%s: length %d, want %d', what or '', #got, #want))
    for i = 1, #want do
        local g, w = got[i], want[i]
        local ok
        if w ~= w then ok = g ~= g
        elseif w == math.huge or w == -math.huge then ok = g == w
        else ok = math.abs(g - w) <= atol + rtol * math.abs(w) end
        if not ok then
            error(string.format('%s: element %d: got %.9g, want %.9g (rtol %g, atol %g)', what or 'mismatch', i, g, w,
                rtol, atol), 2)
        end
    end
end

local function assert_shape(t, s)
    assert.are.same(s, t:shape())
end

-- broadcast of shape lists
local function bshape(s1, s2)
    local n = math.max(#s1, #s2)
    local out = {}
    for i = 1, n do
        local x, y = s1[i - (n - #s1)] or 1, s2[i - (n - #s2)] or 1
        out[i] = x == 1 and y or x
    end
    return out
end

local function numel(s)
    local n = 1
    for _, v in ipairs(s) do n = n * v end
    return n
end

-- flat position in a tensor of shape `s` of the element at multi-index `idx` of the broadcast shape
local function bpos(s, out_shape, idx)
    local off, mul = 0, 1
    for d = #s, 1, -1 do
        local od = d + (#out_shape - #s)
        local c = s[d] == 1 and 0 or idx[od]
        off = off + c * mul
        mul = mul * s[d]
    end
    return off + 1
end

-- reference for f(a, b) with broadcasting on flat float64 lists
local function bref(a, b, f)
    local sa, sb = a:shape(), b:shape()
    local la, lb = a:tolist(), b:tolist()
    local so = bshape(sa, sb)
    local n = numel(so)
    local out, idx = {}, {}
    for i = 0, n - 1 do
        local r = i
        for d = #so, 1, -1 do idx[d] = r % so[d]; r = math.floor(r / so[d]) end
        out[i + 1] = f(la[bpos(sa, so, idx)], lb[bpos(sb, so, idx)])
    end
    return out, so
end

local function map(t, f)
    local l = t:tolist()
    for i = 1, #l do l[i] = f(l[i]) end
    return l
end

-- erf in float64: Taylor series for |x| <= 4 (error < 1e-9 after cancellation), +-1 beyond
local function erf(x)
    if x > 4 then return 1 elseif x < -4 then return -1 end
    local sum, term, n = x, x, 0
    repeat
        n = n + 1
        term = -term * x * x / n
        local add = term / (2 * n + 1)
        sum = sum + add
    until math.abs(add) < 1e-17 * math.max(1, math.abs(sum))
    return sum * 2 / math.sqrt(math.pi)
end

local function sigmoid(x) return 1 / (1 + math.exp(-x)) end

-- Central finite differences of L = sum(fn(inputs) * w) (w fixed, float64 in Lua) against the
-- analytic gradient from backward(w). Inputs are contiguous leaves requiring grad.
local function gradcheck(fn, inputs, what)
    local out = fn(unpack(inputs))
    seed = seed + 1
    local w = nc.randn(out:shape(), { generator = nc.generator(seed) })
    local wl = w:tolist()
    local function loss()
        local l = nc.no_grad(fn, unpack(inputs)):tolist()
        local s = 0
        for i = 1, #l do s = s + l[i] * wl[i] end
        return s
    end
    for _, x in ipairs(inputs) do x.grad = nil end
    out:backward(w)
    for k, x in ipairs(inputs) do
        if x.requires_grad then
            local flat = x:_raw_view { x:numel() }
            local numeric = {}
            for i = 0, x:numel() - 1 do
                local v = flat:get(i)
                flat:set(i, v + FD_EPS)
                local lp = loss()
                flat:set(i, v - FD_EPS)
                local lm = loss()
                flat:set(i, v)
                numeric[i + 1] = (lp - lm) / (2 * FD_EPS)
            end
            assert(x.grad, (what or 'gradcheck') .. ': input ' .. k .. ' got no gradient')
            assert_close(x.grad:tolist(), numeric, FD_RTOL, FD_ATOL, (what or 'gradcheck') .. ' input ' .. k)
        end
    end
end

-- ---- specs ---------------------------------------------------------------------------------------
local BIN_REF = {
    add = function(x, y) return x + y end,
    sub = function(x, y) return x - y end,
    mul = function(x, y) return x * y end,
    div = function(x, y) return x / y end,
    maximum = function(x, y) return math.max(x, y) end,
    minimum = function(x, y) return math.min(x, y) end,
    pow = function(x, y) return x ^ y end,
}
local BIN_NAMES = { 'add', 'sub', 'mul', 'div', 'maximum', 'minimum', 'pow' }

-- operand pairs: a list of { name, make_a, make_b } covering layouts
local function layouts(positive)
    local function A(shape)
        if positive then return rand(shape, 0.5, 2.0) end
        return randn(shape)
    end
    local function B(shape)
        if positive then return rand(shape, -1.5, 1.5) end
        return away_from_zero(shape)   -- divisors away from 0
    end
    return {
        { 'contiguous 3x5x7', function() return A { 3, 5, 7 } end, function() return B { 3, 5, 7 } end },
        { 'transposed a', function() return A { 7, 5, 3 }:permute { 2, 1, 0 } end, function() return B { 3, 5, 7 } end },
        { 'narrowed b', function() return A { 3, 5, 7 } end, function() return B { 3, 9, 7 }:narrow(1, 2, 5) end },
        { 'broadcast (3,1,7) x (5,1)', function() return A { 3, 1, 7 } end, function() return B { 5, 1 } end },
        { 'expanded view', function() return A { 1, 5, 1 }:expand { 3, 5, 7 } end, function() return B { 7 } end },
        { '1-element and 0-dim', function() return A { 1 } end, function() return B {} end },
        { 'scalar vs tensor', function() return A {} end, function() return B { 4, 1 } end },
        { 'large contiguous', function() return A { LARGE } end, function() return B { LARGE } end },
        { 'large broadcast', function() return A { 331, 1 } end, function() return B { 1, 307 } end },
    }
end

describe('elementwise binary ops', function()
    for _, name in ipairs(BIN_NAMES) do
        for _, case in ipairs(layouts(name == 'pow')) do
            it(name .. ' matches float64 (' .. case[1] .. ')', function()
                local a, b = case[2](), case[3]()
                local want, so = bref(a, b, BIN_REF[name])
                local out = nc[name](a, b)
                assert_shape(out, so)
                assert.is_true(out:is_contiguous())
                assert_close(out, want, F32_RTOL, F32_ATOL, name .. ' ' .. case[1])
            end)
        end
    end

    it('operators map to the ops, numbers on either side', function()
        local a = rand({ 3, 4 }, 0.5, 2)
        local b = randn { 4 }
        local la = a:tolist()
        assert_close(a + b, (bref(a, b, BIN_REF.add)), F32_RTOL, F32_ATOL, '+')
        assert_close(a - 1.5, map(a, function(x) return x - 1.5 end), F32_RTOL, F32_ATOL, 't - s')
        assert_close(2 - a, map(a, function(x) return 2 - x end), F32_RTOL, F32_ATOL, 's - t')
        assert_close(3 * a, map(a, function(x) return 3 * x end), F32_RTOL, F32_ATOL, 's * t')
        assert_close(2 / a, map(a, function(x) return 2 / x end), F32_RTOL, F32_ATOL, 's / t')
        assert_close(a / 4, map(a, function(x) return x / 4 end), F32_RTOL, F32_ATOL, 't / s')
        assert_close(a ^ 2, map(a, function(x) return x * x end), F32_RTOL, F32_ATOL, 't ^ s')
        assert_close(2 ^ a, map(a, function(x) return 2 ^ x end), F32_RTOL, F32_ATOL, 's ^ t')
        assert_close(-a, map(a, function(x) return -x end), 0, 0, '-t')
        assert_close(nc.maximum(1, a), map(a, function(x) return math.max(1, x) end), 0, 0, 'maximum(s, t)')
        assert_close(nc.minimum(a, 1), map(a, function(x) return math.min(1, x) end), 0, 0, 'minimum(t, s)')
        assert_close(nc.sub(2, a), map(a, function(x) return 2 - x end), F32_RTOL, F32_ATOL, 'nc.sub(2, t)')
        assert_close(a:scale(0.5), map(a, function(x) return x * 0.5 end), 0, 0, 'scale')
        assert.are.equal(#la, 12)
    end)

    it('maximum/minimum propagate NaN like torch', function()
        local a = nc.tensor { 0 / 0, 1, 2 }
        local b = nc.tensor { 1, 0 / 0, 1 }
        local mx = nc.maximum(a, b):tolist()
        assert.is_true(mx[1] ~= mx[1] and mx[2] ~= mx[2])
        assert.are.equal(2, mx[3])
    end)
end)

local UN = {
    neg = { function(x) return -x end },
    exp = { math.exp },
    log = { math.log, 'positive' },
    tanh = { function(x) return math.tanh and math.tanh(x) or (math.exp(2 * x) - 1) / (math.exp(2 * x) + 1) end },
    sigmoid = { sigmoid },
    relu = { function(x) return x > 0 and x or 0 end, 'kink' },
    relu2 = { function(x) return x > 0 and x * x or 0 end, 'kink' },
    silu = { function(x) return x * sigmoid(x) end },
    gelu = { function(x) return 0.5 * x * (1 + erf(x / math.sqrt(2))) end },
    sqrt = { math.sqrt, 'positive' },
    rsqrt = { function(x) return 1 / math.sqrt(x) end, 'positive' },
    abs = { math.abs, 'kink' },
    square = { function(x) return x * x end },
    reciprocal = { function(x) return 1 / x end, 'kink' },
    sin = { math.sin },
    cos = { math.cos },
}
local function gelu_tanh(x)
    local c = math.sqrt(2 / math.pi)
    return 0.5 * x * (1 + math.tanh(c * (x + 0.044715 * x ^ 3)))
end

local function unary_input(kind, shape, rg)
    if kind == 'positive' then return rand(shape, 0.3, 3.0, rg) end
    if kind == 'kink' then return away_from_zero(shape, rg) end
    local t = randn(shape)
    if rg then t:requires_grad_(true) end
    return t
end

describe('elementwise unary ops', function()
    local names = {}
    for k in pairs(UN) do names[#names + 1] = k end
    table.sort(names)
    for _, name in ipairs(names) do
        local ref, kind = UN[name][1], UN[name][2]
        it(name .. ' matches float64 (contiguous, transposed, large)', function()
            for _, x in ipairs {
                unary_input(kind, { 3, 5, 7 }),
                unary_input(kind, { 7, 5, 3 }):transpose(0, 2),
                unary_input(kind, { 4, 9 }):narrow(1, 3, 5),
                unary_input(kind, { 1, 1 }),
                unary_input(kind, { LARGE }),
            } do
                local out = nc[name](x)
                assert_shape(out, x:shape())
                assert_close(out, map(x, ref), F32_RTOL, F32_ATOL, name)
            end
        end)
        it(name .. ' backward matches finite differences', function()
            gradcheck(function(x) return nc[name](x) end, { unary_input(kind, { 3, 5 }, true) }, name)
            -- through a transposed view (strided input to the backward kernel)
            gradcheck(function(x) return nc[name](x:t()) end, { unary_input(kind, { 4, 3 }, true) }, name .. ' (t)')
        end)
    end

    it('gelu approximate=tanh matches float64 and finite differences', function()
        local x = randn { 5, 7 }
        assert_close(nc.gelu(x, { approximate = 'tanh' }), map(x, gelu_tanh), F32_RTOL, F32_ATOL, 'gelu tanh')
        gradcheck(function(t) return nc.gelu(t, { approximate = 'tanh' }) end, { randn({ 3, 4 }, { requires_grad = true }) },
            'gelu tanh')
        assert.has_error(function() nc.gelu(x, { approximate = 'cubic' }) end)
    end)

    it('relu2 is relu squared, gelu default is the erf form', function()
        local x = nc.tensor { -2, -0.5, 0, 0.5, 3 }
        assert.are.same({ 0, 0, 0, 0.25, 9 }, nc.relu2(x):tolist())
        assert_close(nc.gelu(nc.tensor { 1 }), { 0.8413447460685429 }, F32_RTOL, F32_ATOL, 'gelu(1)')
    end)
end)

describe('binary backward', function()
    for _, name in ipairs(BIN_NAMES) do
        it(name .. ' gradients match finite differences (same shape, broadcast, transposed)', function()
            local pos, kinked = name == 'pow', name == 'maximum' or name == 'minimum'
            local function A(s)
                if kinked then return grid(s, 0, true) end
                return pos and rand(s, 0.5, 2.0, true) or randn(s, { requires_grad = true })
            end
            local function B(s)
                if kinked then return grid(s, 0.125, true) end
                return pos and rand(s, -1.5, 1.5, true) or away_from_zero(s, true)
            end
            local f = function(a, b) return nc[name](a, b) end
            gradcheck(f, { A { 3, 4 }, B { 3, 4 } }, name .. ' same shape')
            gradcheck(f, { A { 3, 1, 4 }, B { 2, 1 } }, name .. ' broadcast')
            gradcheck(f, { A { 1 }, B { 2, 3 } }, name .. ' 1-element')
            gradcheck(function(a, b) return nc[name](a:t(), b) end, { A { 4, 3 }, B { 3, 4 } }, name .. ' transposed')
        end)
        it(name .. ' with a number on either side: gradient matches finite differences', function()
            local pos, kinked = name == 'pow', name == 'maximum' or name == 'minimum'
            local x = pos and rand({ 2, 3 }, 0.5, 2.0, true) or away_from_zero({ 2, 3 }, true)
            if kinked then x = grid({ 2, 3 }, 0.1, true) end   -- never within FD_EPS of 0.7 or 1.3
            gradcheck(function(t) return nc[name](t, 0.7) end, { x }, name .. ' (t, s)')
            gradcheck(function(t) return nc[name](1.3, t) end, { x }, name .. ' (s, t)')
        end)
    end

    it('maximum splits the gradient evenly on ties (like torch)', function()
        local a = nc.tensor({ 1, 2, 3 }, { requires_grad = true })
        local b = nc.tensor({ 1, 5, 0 }, { requires_grad = true })
        nc.maximum(a, b):sum():backward()
        assert.are.same({ 0.5, 0, 1 }, a.grad:tolist())
        assert.are.same({ 0.5, 1, 0 }, b.grad:tolist())
    end)

    it('a tensor used twice accumulates both gradients', function()
        local a = randn({ 3 }, { requires_grad = true })
        gradcheck(function(t) return t * t + t end, { a }, 'x*x + x')
    end)
end)

describe('clamp, where, masked_fill, compare', function()
    it('clamp matches float64 and its gradient is 1 inside [lo, hi]', function()
        local x = randn { 3, 5, 7 }
        -- bounds exactly representable in f32, so the float64 reference is exact
        assert_close(nc.clamp(x, -0.5, 0.625), map(x, function(v) return math.min(math.max(v, -0.5), 0.625) end), 0, 0,
            'clamp')
        assert_close(nc.clamp(x:transpose(0, 2), nil, 0.25),
            map(x:transpose(0, 2), function(v) return math.min(v, 0.25) end), 0, 0, 'clamp hi only')
        assert_close(nc.clamp(x, 0.125), map(x, function(v) return math.max(v, 0.125) end), 0, 0, 'clamp lo only')
        -- inputs away from the bounds: FD is exact there
        local t = nc.tensor({ { -2, -0.3, 0.1 }, { 0.4, 1.5, 3 } }, { requires_grad = true })
        gradcheck(function(v) return nc.clamp(v, -1, 1) end, { t }, 'clamp')
        assert.has_error(function() nc.clamp(x, 1, -1) end)
    end)

    it('where broadcasts cond, a and b (numbers allowed) and routes gradients', function()
        local cond = nc.gt(randn { 3, 1, 5 }, 0)
        local a = randn { 4, 5 }
        local b = randn { 3, 4, 1 }
        local out = nc.where(cond, a, b)
        assert_shape(out, { 3, 4, 5 })
        local lc, la, lb = cond:tolist(), a:tolist(), b:tolist()
        local want = {}
        for i = 0, 2 do for j = 0, 3 do for k = 0, 4 do
            want[#want + 1] = lc[i * 5 + k + 1] ~= 0 and la[j * 5 + k + 1] or lb[i * 4 + j + 1]
        end end end
        assert_close(out, want, 0, 0, 'where')
        local w2 = nc.where(cond, 1, b):tolist()
        assert.are.equal(60, #w2)
        gradcheck(function(x, y) return nc.where(cond, x, y) end,
            { randn({ 4, 5 }, { requires_grad = true }), randn({ 3, 4, 1 }, { requires_grad = true }) }, 'where')
        gradcheck(function(x) return nc.where(cond, x, 0) end, { randn({ 5 }, { requires_grad = true }) }, 'where number')
    end)

    it('masked_fill puts the value where the mask is set', function()
        local t = nc.tensor { { 1, 2 }, { 3, 4 } }
        local m = nc.tensor({ { 1, 0 }, { 0, 1 } }, { dtype = 'u8' })
        assert.are.same({ -1, 2, 3, -1 }, nc.masked_fill(t, m, -1):tolist())
        assert.are.same({ -9, 2, 3, -9 }, t:masked_fill(m, -9):tolist())
    end)

    it('comparisons give u8 0/1 with broadcasting, numbers and mixed dtypes', function()
        local a = nc.tensor { { 1, 2, 3 }, { 4, 5, 6 } }
        local b = nc.tensor { 2, 2, 6 }
        local checks = {
            eq = { 0, 1, 0, 0, 0, 1 }, ne = { 1, 0, 1, 1, 1, 0 }, lt = { 1, 0, 1, 0, 0, 0 },
            le = { 1, 1, 1, 0, 0, 1 }, gt = { 0, 0, 0, 1, 1, 0 }, ge = { 0, 1, 0, 1, 1, 1 },
        }
        for name, want in pairs(checks) do
            local r = nc[name](a, b)
            assert.are.equal('u8', r:dtype())
            assert.are.same(want, r:tolist())
            assert.is_nil(r.requires_grad or nil)
        end
        assert.are.same({ 0, 0, 1, 1, 1, 1 }, nc.ge(a, 3):tolist())
        assert.are.same({ 1, 1, 0, 0, 0, 0 }, nc.gt(3, a):tolist())
        local i = nc.tensor({ 5, -100, 7 }, { dtype = 'i64' })
        assert.are.same({ 0, 1, 0 }, nc.eq(i, -100):tolist())
        assert.are.same({ 1, 0, 0 }, nc.eq(i:to('f32'), nc.tensor({ 5, 0, 0 }, { dtype = 'i32' })):tolist())
    end)
end)

-- float64 reduction of x over dims (0-based list) with keepdim shape
local function ref_reduce(x, dims, f, init)
    local s, l = x:shape(), x:tolist()
    local red = {}
    for _, d in ipairs(dims) do red[d + 1] = true end
    local os = {}
    for i = 1, #s do os[i] = red[i] and 1 or s[i] end
    local acc, cnt = {}, {}
    local idx = {}
    for i = 0, #l - 1 do
        local r = i
        for d = #s, 1, -1 do idx[d] = r % s[d]; r = math.floor(r / s[d]) end
        local o, mul = 0, 1
        for d = #s, 1, -1 do
            o = o + (red[d] and 0 or idx[d]) * mul
            mul = mul * os[d]
        end
        o = o + 1
        if acc[o] == nil then acc[o], cnt[o] = init(l[i + 1]), 1
        else acc[o], cnt[o] = f(acc[o], l[i + 1]), cnt[o] + 1 end
    end
    return acc, os, cnt
end

local function sum_ref(x, dims)
    return (ref_reduce(x, dims, function(a, v) return a + v end, function(v) return v end))
end

describe('reductions', function()

    it('sum and mean over all dims, one dim, a list of dims, keepdim, strided input', function()
        for _, x in ipairs { randn { 3, 5, 7 }, randn { 7, 5, 3 }:permute { 2, 1, 0 }, randn { 3, 9, 7 }:narrow(1, 2, 5) } do
            local all = sum_ref(x, { 0, 1, 2 })[1]
            assert_close({ nc.sum(x):item() }, { all }, RED_RTOL, RED_ATOL, 'sum all')
            assert_shape(nc.sum(x), {})
            assert_close({ nc.mean(x):item() }, { all / 105 }, RED_RTOL, RED_ATOL, 'mean all')
            assert_shape(nc.sum(x, nil, true), { 1, 1, 1 })
            for _, dims in ipairs { { 0 }, { 1 }, { 2 }, { 0, 2 }, { 1, 2 } } do
                local want, ks = ref_reduce(x, dims, function(a, v) return a + v end, function(v) return v end)
                local got = nc.sum(x, dims, true)
                assert_shape(got, ks)
                assert_close(got, want, RED_RTOL, RED_ATOL, 'sum dims ' .. table.concat(dims, ','))
                local cnt = 1
                for _, d in ipairs(dims) do cnt = cnt * x:size(d) end
                local wm = {}
                for i, v in ipairs(want) do wm[i] = v / cnt end
                assert_close(nc.mean(x, dims), wm, RED_RTOL, RED_ATOL, 'mean dims')
                local dropped = {}
                for i, n in ipairs(x:shape()) do
                    local red = false
                    for _, d in ipairs(dims) do if d == i - 1 then red = true end end
                    if not red then dropped[#dropped + 1] = n end
                end
                assert_shape(nc.sum(x, dims), dropped)
            end
            assert_close(nc.sum(x, -1), sum_ref(x, { 2 }), RED_RTOL, RED_ATOL, 'sum dim -1')
        end
    end)

    it('sum of a large tensor is accurate and independent of the thread count', function()
        local x = randn { 3, 200003 }
        local want = sum_ref(x, { 1 })
        local prev = nc.get_num_threads()
        local got = {}
        for _, th in ipairs { 1, 2 } do
            nc.set_num_threads(th)
            got[th] = { nc.sum(x, 1):tolist(), nc.sum(x):item(), nc.sum(x:t(), 0):tolist() }
        end
        nc.set_num_threads(prev)
        assert_close(got[1][1], want, RED_RTOL, 1e-3, 'large row sums')
        assert.are.same(got[1], got[2])
    end)

    it('max/min over one dim return values and first indices; NaN wins', function()
        local x = randn { 3, 5, 7 }:transpose(0, 1)   -- (5, 3, 7) strided
        for _, pair in ipairs { { 'max', function(a, b) return b > a end }, { 'min', function(a, b) return b < a end } } do
            local name, better = pair[1], pair[2]
            for d = 0, 2 do
                local v, i = nc[name](x, d)
                local s = x:shape()
                table.remove(s, d + 1)
                assert_shape(v, s)
                assert_shape(i, s)
                assert.are.equal('i64', i:dtype())
                local wv = ref_reduce(x, { d }, function(a, b) return better(a, b) and b or a end, function(b) return b end)
                assert_close(v, wv, 0, 0, name .. ' dim ' .. d)
                -- the index points at the value
                local back = nc.gather(x, d, i:unsqueeze(d)):tolist()
                assert_close(back, wv, 0, 0, name .. ' index dim ' .. d)
            end
        end
        local t = nc.tensor { { 1, 3, 3, 2 }, { 0 / 0, 5, 9, 1 } }
        local v, i = nc.max(t, 1)
        assert.are.equal(3, v:tolist()[1])
        assert.are.equal(1, i:tolist()[1])   -- first of the ties
        assert.is_true(v:tolist()[2] ~= v:tolist()[2])
        assert.are.equal(0, i:tolist()[2])
        local v2, i2 = nc.min(t, 1, true)
        assert_shape(v2, { 2, 1 })
        assert_shape(i2, { 2, 1 })
        assert.are.equal(1, v2:tolist()[1])
        assert.are.equal(0, i2:tolist()[1])
        assert.are.equal(0, i2:tolist()[2])   -- the NaN
    end)

    it('argmax / argmin, global and per dim', function()
        local t = nc.tensor { { 1, 7, 3 }, { 9, 0, 2 } }
        assert.are.equal(3, nc.argmax(t):item())
        assert.are.equal(4, nc.argmin(t):item())
        assert.are.same({ 1, 0 }, nc.argmax(t, 1):tolist())
        assert.are.same({ 1, 0, 0 }, nc.argmax(t, 0):tolist())
        assert.are.same({ 0, 1 }, t:argmin(1):tolist())
        assert.are.equal(9, nc.max(t):item())
        assert.are.equal(0, nc.min(t):item())
    end)

    it('sum / mean / max / min backward match finite differences', function()
        local function x() return randn({ 3, 4, 5 }, { requires_grad = true }) end
        gradcheck(function(t) return nc.sum(t) end, { x() }, 'sum all')
        gradcheck(function(t) return nc.sum(t, { 0, 2 }) end, { x() }, 'sum dims')
        gradcheck(function(t) return nc.mean(t, 1, true) end, { x() }, 'mean keepdim')
        gradcheck(function(t) return nc.mean(t:transpose(0, 2), -1) end, { x() }, 'mean transposed')
        gradcheck(function(t) return (nc.max(t, 1)) end, { x() }, 'max dim')
        gradcheck(function(t) return (nc.min(t:t(), 0)) end, { randn({ 4, 6 }, { requires_grad = true }) }, 'min dim')
        gradcheck(function(t) return nc.max(t) end, { x() }, 'max all')
    end)

    it('reduce over a size-0 dim: sum is 0, max is an error', function()
        local e = nc.zeros { 3, 0 }
        assert.are.same({ 0, 0, 0 }, nc.sum(e, 1):tolist())
        assert.has_error(function() nc.max(e, 1) end)
    end)
end)

describe('errors', function()
    it('shape mismatch names the op and both shapes', function()
        local ok, err = pcall(nc.add, nc.zeros { 2, 3 }, nc.zeros { 4 })
        assert.is_false(ok)
        assert.matches('add', err)
        assert.matches('(2, 3)', err, 1, true)
        assert.matches('(4)', err, 1, true)
        ok, err = pcall(function() return nc.zeros { 2, 3 } * nc.zeros { 3, 2 } end)
        assert.is_false(ok)
        assert.matches('mul', err)
        assert.matches('(3, 2)', err, 1, true)
    end)

    it('shape errors from the C kernels name the op and both shapes', function()
        local C = nc.C
        local out = nc.zeros { 2, 2 }
        local st = C.nc_binary(out._c, nc.zeros({ 2, 3 })._c, nc.zeros({ 3 })._c, C.NC_OP_SUB)
        assert.are.equal(C.NC_ERR_SHAPE, st)
        local msg = require('ffi').string(C.nc_last_error())
        assert.matches('sub', msg)
        assert.matches('(2, 2)', msg, 1, true)
        assert.matches('(2, 3)', msg, 1, true)
        st = C.nc_sum_to(nc.zeros({ 4 })._c, nc.zeros({ 2, 3 })._c, 1)
        assert.are.equal(C.NC_ERR_SHAPE, st)
        st = C.nc_add_scaled(nc.zeros({ 3 })._c, nc.zeros({ 2, 3 })._c, 1)
        assert.are.equal(C.NC_ERR_SHAPE, st)
    end)

    it('dtype mismatch is an error naming the dtype', function()
        local ok, err = pcall(nc.add, nc.zeros { 3 }, nc.zeros({ 3 }, { dtype = 'i64' }))
        assert.is_false(ok)
        assert.matches('add', err)
        assert.matches('i64', err)
        ok, err = pcall(nc.exp, nc.zeros({ 3 }, { dtype = 'i32' }))
        assert.is_false(ok)
        assert.matches('exp', err)
        ok, err = pcall(nc.where, nc.zeros({ 3 }, { dtype = 'u8' }), nc.zeros({ 3 }, { dtype = 'f64' }), nc.zeros { 3 })
        assert.is_false(ok)
        assert.matches('where: expected a and b of the same dtype', err, 1, true)
    end)

    it('reduce dim out of range is an error', function()
        assert.has_error(function() nc.sum(nc.zeros { 2, 3 }, 2) end)
        assert.has_error(function() nc.max(nc.zeros { 2, 3 }, -3) end)
        local C = nc.C
        local st = C.nc_reduce_dim(nc.zeros({ 2, 1 })._c, nil, nc.zeros({ 2, 3 })._c, 5, C.NC_RED_SUM)
        assert.are.equal(C.NC_ERR_INDEX, st)
    end)

    it('writing into a broadcast view is refused', function()
        local C = nc.C
        local dst = nc.zeros { 1, 3 }:expand { 4, 3 }
        assert.are.equal(C.NC_ERR_ARG, C.nc_add_scaled(dst._c, nc.ones({ 4, 3 })._c, 1))
    end)
end)

describe('add_scaled and sum_to (the autograd primitives)', function()
    it('add_scaled broadcasts src into a strided dst view', function()
        local base = nc.zeros { 4, 6 }
        local dst = base:narrow(1, 1, 3)   -- (4, 3) strided
        local src = randn { 3 }
        dst:add_scaled_(src, 2)
        local l, s = base:tolist(), src:tolist()
        for r = 0, 3 do
            for c = 0, 5 do
                local want = (c >= 1 and c <= 3) and 2 * s[c] or 0
                assert_close({ l[r * 6 + c + 1] }, { want }, F32_RTOL, F32_ATOL, 'add_scaled')
            end
        end
    end)

    it('sum_to reduces broadcast dims (fewer dims, size-1 dims, strided src)', function()
        local C = nc.C
        local src = randn { 5, 3, 7 }:transpose(0, 2)   -- (7, 3, 5)
        for _, ds in ipairs { { 5 }, { 3, 1 }, { 7, 1, 5 }, { 1, 3, 5 }, { 1 }, {} , { 7, 3, 5 } } do
            local dst = nc.ones(ds)
            assert.are.equal(0, C.nc_sum_to(dst._c, src._c, 0.5))
            local dims = {}
            local ss = src:shape()
            for d = 1, #ss do
                local dd = d - (#ss - #ds)
                if dd < 1 or ds[dd] == 1 then dims[#dims + 1] = d - 1 end
            end
            local want = sum_ref(src, dims)
            for i = 1, #want do want[i] = 1 + 0.5 * want[i] end
            assert_close(dst, want, RED_RTOL, RED_ATOL, 'sum_to ' .. shape_str(ds))
        end
    end)

end)

-- raw bits of a contiguous f32 tensor
local function bits(t)
    local n = t:numel()
    local p = ffi.cast('const uint32_t *', nc.C.nc_tensor_data(t._c))
    local out = {}
    for i = 0, n - 1 do out[i + 1] = p[i] end
    return out
end

local function same_bits(a, b, what)
    local ba, bb = bits(a), bits(b)
    assert(#ba == #bb, what .. ': sizes differ')
    for i = 1, #ba do
        if ba[i] ~= bb[i] then
            error(string.format('%s: element %d differs: 0x%08x vs 0x%08x', what, i, ba[i], bb[i]), 2)
        end
    end
end

describe('NC_KERNEL=scalar and avx2 kernels', function()
    it('give bit-identical results for exact (and libm) ops on large tensors', function()
        local has_avx2 = pcall(nc.set_cpu_kernel, 'avx2')
        nc.set_cpu_kernel(os.getenv('NC_KERNEL') or 'auto')
        if not has_avx2 then
            pending('this CPU has no AVX2+FMA')
            return
        end
        local n = 1000003
        local a = randn { n }
        local b = randn { n }
        local p = rand({ n }, 0.1, 3)
        local function run()
            local r = {}
            for _, op in ipairs { 'add', 'sub', 'mul', 'div', 'maximum', 'minimum' } do r[#r + 1] = { op, nc[op](a, b) } end
            r[#r + 1] = { 'add_s', a + 0.3 }
            r[#r + 1] = { 'mul_s', a * 1.7 }
            r[#r + 1] = { 'div_s', a / 3 }
            r[#r + 1] = { 'max_s', nc.maximum(a, 0.1) }
            -- exp, sigmoid, tanh, silu, gelu use vector polynomials on AVX2 (spec/ops/simd_spec.lua)
            for _, op in ipairs { 'neg', 'relu', 'relu2', 'abs', 'square', 'sin' } do
                r[#r + 1] = { op, nc[op](a) }
            end
            for _, op in ipairs { 'sqrt', 'rsqrt', 'reciprocal', 'log' } do r[#r + 1] = { op, nc[op](p) } end
            local acc = b:clone()
            acc:add_scaled_(a, 0.37)
            r[#r + 1] = { 'add_scaled', acc }
            local acc1 = b:clone()
            acc1:add_scaled_(a, 1)
            r[#r + 1] = { 'add_scaled 1', acc1 }
            -- unary backward (flat kernel)
            for _, op in ipairs { 'relu', 'relu2', 'square', 'neg' } do
                local x = a:detach():requires_grad_(true)
                nc[op](x):backward(b)
                r[#r + 1] = { op .. ' backward', x.grad }
            end
            return r
        end
        nc.set_cpu_kernel('scalar')
        assert.are.equal('scalar', nc.cpu_kernel())
        local rs = run()
        nc.set_cpu_kernel('avx2')
        assert.are.equal('avx2', nc.cpu_kernel())
        local rv = run()
        nc.set_cpu_kernel(os.getenv('NC_KERNEL') or 'auto')
        for i = 1, #rs do same_bits(rs[i][2], rv[i][2], rs[i][1]) end
    end)
end)
