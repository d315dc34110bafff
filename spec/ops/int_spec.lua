-- spec/ops/int_spec.lua — elementwise ops, comparisons, where/masked_fill, clamp and reductions on
-- i32 / i64 tensors against exact integer references (LuaJIT 64-bit integers, which wrap modulo
-- 2^64 like the kernels), including values beyond 2^53 that a double cannot hold; the errors for
-- integer division, pow, mixed dtypes and fractional scalars.
package.path = 'lua/?.lua;lua/?/init.lua;' .. package.path
local nc = require 'nanochat'
local ffi = require 'ffi'
local C = nc.C

local I64 = { dtype = 'i64' }
local BIG = 2LL ^ 60   -- far beyond 2^53

-- an i64 tensor of `shape` holding the int64 values of list (written as raw int64, never via double)
local function i64(list, shape)
    local t = nc.empty(shape or { #list }, I64)
    local p = ffi.cast('int64_t *', C.nc_tensor_data(t._c))
    for i = 1, #list do p[i - 1] = list[i] end
    return t
end

-- raw int64 values of any-layout integer tensor t, in logical order (via a contiguous i64 copy)
local function ints(t)
    local c = t:to('i64'):contiguous()
    if c == t then c = t:clone() end
    local n = c:numel()
    local p = ffi.cast('const int64_t *', C.nc_tensor_data(c._c))
    local out = {}
    for i = 0, n - 1 do out[i + 1] = p[i] end
    return out
end

local function same_ints(t, want, what)
    local got = ints(t)
    assert(#got == #want, string.format('%s: %d values, expected %d', what, #got, #want))
    for i = 1, #want do
        local w = ffi.cast('int64_t', want[i])
        if got[i] ~= w then
            error(string.format('%s: element %d is %s, expected %s', what, i, tostring(got[i]), tostring(w)), 2)
        end
    end
end

-- floor division of int64 cdata (the kernel's definition)
local function floordiv(x, y)
    if y == -1 then return -x end
    local q = x / y   -- LuaJIT int64 division truncates toward zero
    if x % y ~= 0 and ((x < 0) ~= (y < 0)) then q = q - 1 end
    return q
end

local function map2(a, b, f)
    local out = {}
    for i = 1, #a do out[i] = f(a[i], b[i]) end
    return out
end

local A = { BIG + 3, -BIG - 7, 5LL, -9LL, 0LL, 2LL ^ 62, -(2LL ^ 62), 12345678901234567LL, -1LL }
local B = { 7LL, 3LL, -BIG, -4LL, 11LL, 2LL ^ 62, 2LL, -3LL, BIG + 1 }

describe('i64 elementwise arithmetic', function()
    local a, b = i64(A), i64(B)

    it('add, sub, mul, maximum, minimum are exact (wrapping) beyond 2^53', function()
        same_ints(a + b, map2(A, B, function(x, y) return x + y end), 'add')
        same_ints(a - b, map2(A, B, function(x, y) return x - y end), 'sub')
        same_ints(a * b, map2(A, B, function(x, y) return x * y end), 'mul')
        same_ints(nc.maximum(a, b), map2(A, B, function(x, y) return x >= y and x or y end), 'maximum')
        same_ints(nc.minimum(a, b), map2(A, B, function(x, y) return x <= y and x or y end), 'minimum')
        assert.are.equal('i64', (a + b):dtype())
    end)

    it('neg and abs', function()
        same_ints(-a, map2(A, A, function(x) return -x end), 'neg')
        same_ints(nc.abs(a), map2(A, A, function(x) return x < 0 and -x or x end), 'abs')
    end)

    it('with number scalars on either side', function()
        same_ints(a + 1, map2(A, A, function(x) return x + 1 end), 'a + 1')
        same_ints(1 - a, map2(A, A, function(x) return 1 - x end), '1 - a')
        same_ints(a * 3, map2(A, A, function(x) return x * 3 end), 'a * 3')
        same_ints(nc.maximum(a, 0), map2(A, A, function(x) return x > 0 and x or 0LL end), 'maximum(a, 0)')
        same_ints(nc.floor_div(a, -4), map2(A, A, function(x) return floordiv(x, -4LL) end), 'floor_div(a, -4)')
    end)

    it('floor_div rounds toward -inf; INT64_MIN // -1 wraps; division by zero is an error', function()
        local x = { -7LL, 7LL, -7LL, 7LL, -(2LL ^ 63), BIG + 5, -BIG - 5, 0LL }
        local y = { 2LL, 2LL, -2LL, -2LL, -1LL, 3LL, 3LL, -5LL }
        same_ints(nc.floor_div(i64(x), i64(y)), map2(x, y, floordiv), 'floor_div')
        same_ints(nc.floor_div(i64 { -7LL, 7LL }, i64 { 2LL, 2LL }), { -4LL, 3LL }, 'floor_div literal')
        local ok, err = pcall(nc.floor_div, i64 { 1LL, 2LL }, i64 { 1LL, 0LL })
        assert.is_false(ok)
        assert.matches('floor_div: division by zero', err, 1, true)
        ok, err = pcall(nc.floor_div, i64 { 1LL }, 0)
        assert.is_false(ok)
        assert.matches('division by zero', err, 1, true)
    end)

    it('broadcasts and takes strided (transposed) inputs', function()
        local m = {}
        for i = 1, 12 do m[i] = BIG * (i % 3) + i * 1000003 end
        local t = i64(m, { 3, 4 })
        local row = i64({ 1LL, -2LL, BIG, 4LL }, { 4 })
        local want = {}
        for r = 0, 2 do for c = 0, 3 do want[r * 4 + c + 1] = m[r * 4 + c + 1] + ({ 1LL, -2LL, BIG, 4LL })[c + 1] end end
        same_ints(t + row, want, 'broadcast row')
        local tt = t:t()   -- (4, 3) strided view
        local want_t = {}
        for c = 0, 3 do for r = 0, 2 do want_t[#want_t + 1] = m[r * 4 + c + 1] * 2 end end
        same_ints(tt * 2, want_t, 'transposed * 2')
        local col = i64({ 5LL, 6LL, 7LL }, { 3, 1 })
        local want_c = {}
        for r = 0, 2 do for c = 0, 3 do want_c[r * 4 + c + 1] = m[r * 4 + c + 1] - (5LL + r) end end
        same_ints(t - col, want_c, 'broadcast column')
    end)

    it('large tensors (threaded path) match the reference', function()
        local n = 100003
        local t = nc.arange(0, n, 1)   -- i64
        assert.are.equal('i64', t:dtype())
        local s = (t * 3 + 2 ^ 60):contiguous()   -- 2^60 is an exact double
        local p = ffi.cast('const int64_t *', C.nc_tensor_data(s._c))
        for _, i in ipairs { 0, 1, 4095, 50000, n - 1 } do assert.are.equal(BIG + 3 * i, p[i]) end
    end)
end)

describe('i32 elementwise arithmetic', function()
    it('matches 32-bit wrapping references', function()
        local xa = { 1, -2, 2147483647, -2147483648, 40000, 7 }
        local xb = { 5, 9, 1, -1, 70000, -3 }
        local a = nc.tensor(xa, { dtype = 'i32' })
        local b = nc.tensor(xb, { dtype = 'i32' })
        local bit = require 'bit'
        local function w(f) return map2(xa, xb, function(x, y) return bit.tobit(f(x, y)) end) end
        assert.are.equal('i32', (a + b):dtype())
        same_ints(a + b, w(function(x, y) return x + y end), 'i32 add')
        same_ints(a - b, w(function(x, y) return x - y end), 'i32 sub')
        same_ints(a * b, map2(xa, xb, function(x, y)
            return tonumber(ffi.cast('int32_t', ffi.cast('int64_t', x) * y))
        end), 'i32 mul')
        same_ints(nc.maximum(a, b), map2(xa, xb, math.max), 'i32 maximum')
        same_ints(nc.floor_div(a, b), map2(xa, xb, function(x, y) return tonumber(ffi.cast('int32_t', floordiv(ffi.cast('int64_t', x), ffi.cast('int64_t', y)))) end), 'i32 floor_div')
        same_ints(a + 1, w(function(x) return x + 1 end), 'i32 + 1')
        same_ints(-a, map2(xa, xa, function(x) return bit.tobit(-x) end), 'i32 neg')
    end)
end)

describe('integer comparisons, where, masked_fill, clamp', function()
    local two53 = 2LL ^ 53
    local a = i64 { two53, two53 + 1, -two53 - 1, 5LL }
    local b = i64 { two53 + 1, two53 + 1, -two53, 5LL }

    it('compare i64 exactly beyond 2^53 (tensor and number operands)', function()
        assert.are.same({ 0, 1, 0, 1 }, nc.eq(a, b):tolist())
        assert.are.same({ 1, 0, 1, 0 }, nc.lt(a, b):tolist())
        assert.are.same({ 1, 1, 1, 1 }, nc.le(a, b):tolist())
        assert.are.same({ 0, 0, 0, 0 }, nc.gt(a, b):tolist())
        assert.are.same({ 1, 0, 1, 0 }, nc.ne(a, b):tolist())
        -- the number 2^53 is exact; the element 2^53 + 1 must not round onto it
        assert.are.same({ 1, 0, 0, 0 }, nc.eq(a, 2 ^ 53):tolist())
        assert.are.same({ 0, 1, 0, 0 }, nc.gt(a, 2 ^ 53):tolist())
        assert.are.same({ 1, 1, 0, 1 }, nc.ge(a, 5):tolist())
        assert.are.same({ 0, 0, 1, 0 }, nc.lt(a, 0.5):tolist())   -- fractional number: f64 compare
        assert.are.same({ 1, 0 }, nc.eq(nc.tensor({ 3, 4 }, { dtype = 'i32' }), i64 { 3LL, 5LL }):tolist())
    end)

    it('where and masked_fill keep i64 values exact', function()
        local r = nc.where(nc.lt(a, b), a, b)
        assert.are.equal('i64', r:dtype())
        same_ints(r, { two53, two53 + 1, -two53 - 1, 5LL }, 'where')
        same_ints(nc.where(nc.eq(a, b), a, -1), { -1LL, two53 + 1, -1LL, 5LL }, 'where with a number')
        same_ints(a:masked_fill(nc.gt(a, 0), 0), { 0LL, 0LL, -two53 - 1, 0LL }, 'masked_fill')
        local i32 = nc.tensor({ 1, 2, 3 }, { dtype = 'i32' })
        local m = i32:masked_fill(nc.eq(i32, 2), -7)
        assert.are.equal('i32', m:dtype())
        assert.are.same({ 1, -7, 3 }, m:tolist())
    end)

    it('clamp rounds fractional bounds inward and keeps the dtype', function()
        local t = i64 { -BIG, -3LL, 0LL, 3LL, BIG }
        same_ints(nc.clamp(t, -2.5, 2.5), { -2LL, -2LL, 0LL, 2LL, 2LL }, 'clamp')
        same_ints(nc.clamp(t, 0), { 0LL, 0LL, 0LL, 3LL, BIG }, 'clamp lo only')
        same_ints(nc.clamp(t, nil, -1), { -BIG, -3LL, -1LL, -1LL, -1LL }, 'clamp hi only')
        local ok, err = pcall(nc.clamp, t, 0.2, 0.8)
        assert.is_false(ok)
        assert.matches('no integer', err, 1, true)
    end)
end)

describe('integer reductions', function()
    local vals = {}
    for i = 1, 12 do vals[i] = (i % 2 == 0 and BIG or -BIG) + i * 7 - 40 end
    local t = i64(vals, { 3, 4 })

    it('sum over dims and over everything is exact in i64', function()
        local s1 = nc.sum(t, 1)
        assert.are.equal('i64', s1:dtype())
        local want1 = {}
        for r = 0, 2 do
            local s = 0LL
            for c = 0, 3 do s = s + vals[r * 4 + c + 1] end
            want1[r + 1] = s
        end
        same_ints(s1, want1, 'sum dim 1')
        local want0 = {}
        for c = 0, 3 do
            local s = 0LL
            for r = 0, 2 do s = s + vals[r * 4 + c + 1] end
            want0[c + 1] = s
        end
        same_ints(nc.sum(t, 0), want0, 'sum dim 0')
        local all = 0LL
        for i = 1, 12 do all = all + vals[i] end
        same_ints(nc.sum(t), { all }, 'sum all')
        local s32 = nc.sum(nc.tensor({ { 2147483647, 1 }, { 5, 6 } }, { dtype = 'i32' }), 1)
        assert.are.equal('i64', s32:dtype())
        same_ints(s32, { 2147483648LL, 11LL }, 'i32 sum into i64')
    end)

    it('max, min and argmax over dims (first position of ties)', function()
        local v, i = nc.max(t, 1)
        assert.are.equal('i64', v:dtype())
        local wantv, wanti = {}, {}
        for r = 0, 2 do
            local best, bi = vals[r * 4 + 1], 0
            for c = 1, 3 do
                if vals[r * 4 + c + 1] > best then best, bi = vals[r * 4 + c + 1], c end
            end
            wantv[r + 1], wanti[r + 1] = best, bi
        end
        same_ints(v, wantv, 'max values')
        same_ints(i, wanti, 'max indices')
        local mn = nc.min(t, 0)
        local wantm = {}
        for c = 0, 3 do
            local m = vals[c + 1]
            for r = 1, 2 do if vals[r * 4 + c + 1] < m then m = vals[r * 4 + c + 1] end end
            wantm[c + 1] = m
        end
        same_ints(mn, wantm, 'min dim 0')
        -- BIG + 1 and BIG + 2 are the same double: only an exact argmax tells them apart
        local close = i64 { BIG + 1, BIG + 2, BIG + 2, BIG }
        assert.are.equal(1, nc.argmax(close):item())
        assert.are.equal(3, nc.argmin(close):item())
        same_ints(nc.max(close), { BIG + 2 }, 'max all')
        local a32 = nc.tensor({ { 3, 9, 9 }, { -1, -5, 0 } }, { dtype = 'i32' })
        assert.are.same({ 1, 2 }, nc.argmax(a32, 1):tolist())
        assert.are.equal('i32', nc.max(a32, 1):dtype())
    end)
end)

describe('integer op errors', function()
    local t = nc.tensor({ 1, 2, 3 }, I64)
    local function fails(pat, f, ...)
        local ok, err = pcall(f, ...)
        assert.is_false(ok)
        assert.matches(pat, err, 1, true)
    end

    it('name the op and both dtypes', function()
        fails("div: integer division of i64 tensors is not defined; convert with :to('f32')", function() return t / t end)
        fails('nc.floor_div', function() return t / 2 end)
        fails('pow of i64 tensors', function() return t ^ 2 end)
        fails('add: expected a and b of the same dtype, got a (3) i64 cpu and b (3) f32 cpu', function()
            return t + nc.tensor { 1, 2, 3 }
        end)
        fails('mul: expected a and b of the same dtype', function() return nc.tensor { 1, 2, 3 } * t end)
        fails('expected an integral scalar', function() return t + 0.5 end)
        fails('exp: not defined for i64 tensors', nc.exp, t)
        fails("mean: not defined for i64 tensors; convert with :to('f32')", nc.mean, t)
        fails('floor_div: defined for i32/i64 tensors only', nc.floor_div, nc.tensor { 1.0 }, nc.tensor { 2.0 })
        fails('where: expected a and b of the same dtype', nc.where, nc.gt(t, 1), t, nc.tensor { 1, 2, 3 })
    end)
end)
