-- spec/ops/index_spec.lua — embedding, index_select / index_add, gather / scatter_add, cat,
-- split and chunk against float64 Lua references (contiguous and strided inputs, i32 and i64
-- indices, repeated indices, odd sizes), every backward against central finite differences,
-- and the errors (index out of range with value and bound, shape and dtype mismatches).
package.path = 'lua/?.lua;lua/?/init.lua;' .. package.path
local nc = require 'nanochat'
local ffi = require 'ffi'

local FD_EPS = 1e-2       -- central-difference step
local FD_RTOL = 1e-2      -- finite differences on f32 kernels
local FD_ATOL = 2e-3

local seed = 500
local function randn(shape, requires_grad)
    seed = seed + 1
    local t = nc.randn(shape, { generator = nc.generator(seed) })
    if requires_grad then t:requires_grad_(true) end
    return t
end

-- random integer indices in [0, bound) as a tensor of the given index dtype
local function randidx(shape, bound, dtype)
    seed = seed + 1
    local u = nc.rand(shape, { generator = nc.generator(seed) }):tolist()
    local n = 1
    for _, s in ipairs(shape) do n = n * s end
    local t = nc.zeros(shape, { dtype = dtype or 'i64' })
    local flat = {}
    for i = 1, n do flat[i] = math.min(bound - 1, math.floor(u[i] * bound)) end
    if n > 0 then t:_raw_view { n }:copy_(nc.tensor(flat, { dtype = 'f64' })) end
    return t, flat
end

local function assert_exact(got, want, what)
    if type(got) == 'table' and got._c then got = got:tolist() end
    assert(#got == #want, string.format('%s: length %d, want %d', what or '', #got, #want))
    for i = 1, #want do
        if got[i] ~= want[i] then
            error(string.format('%s: element %d: got %.9g, want %.9g', what or 'mismatch', i, got[i], want[i]), 2)
        end
    end
end

local function assert_close(got, want, rtol, atol, what)
    if type(got) == 'table' and got._c then got = got:tolist() end
    assert(#got == #want, string.format('%s: length %d, want %d', what or '', #got, #want))
    for i = 1, #want do
        if math.abs(got[i] - want[i]) > atol + rtol * math.abs(want[i]) then
            error(string.format('%s: element %d: got %.9g, want %.9g', what or 'mismatch', i, got[i], want[i]), 2)
        end
    end
end

-- multi-index helpers (0-based, row-major)
local function unravel(i, shape)
    local idx = {}
    for d = #shape, 1, -1 do idx[d] = i % shape[d]; i = math.floor(i / shape[d]) end
    return idx
end
local function ravel(idx, shape)
    local o = 0
    for d = 1, #shape do o = o * shape[d] + idx[d] end
    return o + 1
end
local function numel(shape)
    local n = 1
    for _, s in ipairs(shape) do n = n * s end
    return n
end

-- central finite differences of L = sum(fn(inputs) * w) vs the analytic gradient of backward(w)
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
    for _, x in ipairs(inputs) do if type(x) == 'table' then x.grad = nil end end
    out:backward(w)
    for k, x in ipairs(inputs) do
        if type(x) == 'table' and x.requires_grad then
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

local function expect_error(fn, ...)
    local ok, err = pcall(fn)
    assert.is_false(ok, 'expected an error')
    for _, pat in ipairs { ... } do assert.matches(pat, err, 1, true) end
    return err
end

describe('embedding', function()
    for _, dtype in ipairs { 'i32', 'i64' } do
        it('gathers rows (' .. dtype .. ' indices, contiguous and transposed weight)', function()
            for _, w in ipairs { randn { 11, 5 }, randn { 5, 11 }:t() } do
                local wl = w:tolist()
                for _, shape in ipairs { { 3, 4 }, { 7 }, { 1 }, { 2, 1, 3 } } do
                    local idx, flat = randidx(shape, 11, dtype)
                    local out = nc.embedding(idx, w)
                    local want_shape = {}
                    for i, s in ipairs(shape) do want_shape[i] = s end
                    want_shape[#want_shape + 1] = 5
                    assert.are.same(want_shape, out:shape())
                    local want = {}
                    for _, r in ipairs(flat) do
                        for j = 1, 5 do want[#want + 1] = wl[r * 5 + j] end
                    end
                    assert_exact(out, want, 'embedding')
                end
            end
        end)
    end

    it('gradient scatter-adds into the weight (repeated indices), matches finite differences', function()
        local idx = nc.tensor({ { 0, 3, 3 }, { 1, 3, 0 } }, { dtype = 'i64' })
        gradcheck(function(w) return nc.embedding(idx, w) end, { randn({ 4, 3 }, true) }, 'embedding')
        local w = randn({ 4, 3 }, true)
        nc.embedding(idx, w):sum():backward()
        assert_exact(w.grad, { 2, 2, 2, 1, 1, 1, 0, 0, 0, 3, 3, 3 }, 'embedding counts')
    end)

    it('is deterministic for a large backward (threads split the columns)', function()
        local idx = randidx({ 4096 }, 50)
        local g = randn { 4096, 130 }
        local C = nc.C
        local prev = nc.get_num_threads()
        local res = {}
        for _, th in ipairs { 1, 2 } do
            nc.set_num_threads(th)
            local gw = nc.zeros { 50, 130 }
            assert.are.equal(0, C.nc_embedding_backward(gw._c, idx._c, g._c))
            res[th] = gw:tolist()
        end
        nc.set_num_threads(prev)
        assert.are.same(res[1], res[2])
    end)

    it('an out-of-range index fails with the value and the bound', function()
        local w = randn { 10, 4 }
        expect_error(function() nc.embedding(nc.tensor({ 1, 10 }, { dtype = 'i64' }), w) end, 'embedding', '10', '[0, 10)')
        expect_error(function() nc.embedding(nc.tensor({ -1 }, { dtype = 'i32' }), w) end, 'embedding', '-1')
        local C = nc.C
        local out = nc.zeros { 1, 4 }
        assert.are.equal(C.NC_ERR_INDEX, C.nc_embedding(out._c, w._c, nc.tensor({ 12 }, { dtype = 'i64' })._c))
        expect_error(function() nc.embedding(nc.tensor { 1, 2 }, w) end, 'embedding', 'i32 or i64')
    end)
end)

describe('index_select / index_add', function()
    it('selects along every dim of a strided 3x5x7 tensor with repeated indices', function()
        local a = randn { 7, 5, 3 }:permute { 2, 1, 0 }   -- (3, 5, 7), strided
        local al, shape = a:tolist(), a:shape()
        for dim = 0, 2 do
            for _, dtype in ipairs { 'i32', 'i64' } do
                local idx, flat = randidx({ 6 }, shape[dim + 1], dtype)
                local out = a:index_select(dim, idx)
                local os = { shape[1], shape[2], shape[3] }
                os[dim + 1] = 6
                assert.are.same(os, out:shape())
                local want = {}
                for i = 0, numel(os) - 1 do
                    local m = unravel(i, os)
                    m[dim + 1] = flat[m[dim + 1] + 1]
                    want[i + 1] = al[ravel(m, shape)]
                end
                assert_exact(out, want, 'index_select dim ' .. dim)
            end
        end
        -- negative dim, and a non-float dtype
        local i64 = nc.tensor({ { 1, 2 }, { 3, 4 } }, { dtype = 'i64' })
        assert.are.same({ 2, 1, 4, 3 }, nc.index_select(i64, -1, nc.tensor({ 1, 0 }, { dtype = 'i32' })):tolist())
    end)

    it('backward (index_add) matches finite differences', function()
        local idx = nc.tensor({ 2, 0, 2, 1 }, { dtype = 'i64' })
        gradcheck(function(t) return nc.index_select(t, 1, idx) end, { randn({ 2, 3, 2 }, true) }, 'index_select')
        gradcheck(function(t) return nc.index_select(t:t(), 0, idx) end, { randn({ 2, 3 }, true) }, 'index_select (t)')
    end)

    it('index_add adds rows in index order', function()
        local C = nc.C
        local dst = nc.ones { 3, 2 }
        local src = nc.tensor { { 1, 2 }, { 3, 4 }, { 5, 6 } }
        assert.are.equal(0, C.nc_index_add(dst._c, 0, nc.tensor({ 2, 0, 2 }, { dtype = 'i32' })._c, src._c))
        assert.are.same({ 4, 5, 1, 1, 7, 9 }, dst:tolist())
        assert.are.equal(C.NC_ERR_INDEX, C.nc_index_add(dst._c, 0, nc.tensor({ 3 }, { dtype = 'i32' })._c,
            nc.zeros({ 1, 2 })._c))
    end)

    it('errors: index out of range, 2-D idx, shape', function()
        local a = randn { 3, 4 }
        expect_error(function() nc.index_select(a, 1, nc.tensor({ 4 }, { dtype = 'i64' })) end, 'index_select', '4',
            '[0, 4)')
        expect_error(function() nc.index_select(a, 0, nc.zeros({ 1, 1 }, { dtype = 'i64' })) end, 'index_select')
        expect_error(function() nc.index_select(a, 2, nc.zeros({ 1 }, { dtype = 'i64' })) end, 'index_select')
    end)
end)

describe('gather / scatter_add', function()
    it('gather matches torch semantics along each dim (idx smaller than a, strided a)', function()
        local a = randn { 5, 4, 3 }:transpose(0, 2)   -- (3, 4, 5)
        local al, as = a:tolist(), a:shape()
        for dim = 0, 2 do
            local is = { 2, 3, 4 }
            local idx, flat = randidx(is, as[dim + 1], dim == 1 and 'i32' or 'i64')
            local out = nc.gather(a, dim, idx)
            assert.are.same(is, out:shape())
            local want = {}
            for i = 0, numel(is) - 1 do
                local m = unravel(i, is)
                m[dim + 1] = flat[i + 1]
                want[i + 1] = al[ravel(m, as)]
            end
            assert_exact(out, want, 'gather dim ' .. dim)
        end
    end)

    it('gather backward (scatter_add) matches finite differences', function()
        local idx = nc.tensor({ { 0, 2, 2 }, { 1, 1, 0 } }, { dtype = 'i64' })
        gradcheck(function(t) return nc.gather(t, 1, idx) end, { randn({ 2, 3 }, true) }, 'gather')
        gradcheck(function(t) return nc.gather(t:t(), 1, idx) end, { randn({ 3, 2 }, true) }, 'gather (t)')
    end)

    it('scatter_add is out of place and matches the reference (idx smaller than src)', function()
        local t = randn { 4, 5 }
        local src = randn { 3, 6 }
        local idx, flat = randidx({ 3, 5 }, 4)
        local tl, sl = t:tolist(), src:tolist()
        local out = nc.scatter_add(t, 0, idx, src)
        local want = {}
        for i = 1, #tl do want[i] = tl[i] end
        for i = 0, 14 do
            local m = unravel(i, { 3, 5 })
            local dst = ravel({ flat[i + 1], m[2] }, { 4, 5 })
            want[dst] = want[dst] + sl[ravel(m, { 3, 6 })]
        end
        assert_close(out, want, 1e-6, 1e-6, 'scatter_add')
        assert_exact(t, tl, 'scatter_add leaves t unchanged')
    end)

    it('scatter_add gradients flow to t and src (finite differences)', function()
        local idx = nc.tensor({ { 2, 0, 2 }, { 1, 2, 2 } }, { dtype = 'i64' })
        gradcheck(function(t, s) return nc.scatter_add(t, 0, idx, s) end, { randn({ 3, 3 }, true), randn({ 2, 4 }, true) },
            'scatter_add')
        gradcheck(function(t, s) return t:scatter_add(1, idx, s:t()) end, { randn({ 2, 3 }, true), randn({ 3, 2 }, true) },
            'scatter_add (t)')
    end)

    it('errors: out of range, wrong ndim, idx larger than src', function()
        local a = randn { 3, 4 }
        expect_error(function() nc.gather(a, 1, nc.tensor({ { 0, 4 } }, { dtype = 'i64' })) end, 'gather', '4', '[0, 4)')
        expect_error(function() nc.gather(a, 0, nc.zeros({ 2 }, { dtype = 'i64' })) end, 'gather', 'dims')
        expect_error(function() nc.scatter_add(a, 0, nc.zeros({ 2, 2 }, { dtype = 'i64' }), nc.zeros { 1, 2 }) end,
            'scatter_add')
        expect_error(function() nc.scatter_add(a, 0, nc.tensor({ { 3 } }, { dtype = 'i64' }), nc.zeros { 1, 1 }) end,
            'scatter_add', '3', '[0, 3)')
    end)
end)

describe('cat / split / chunk', function()
    it('concatenates along each dim (strided inputs, odd sizes)', function()
        for dim = 0, 2 do
            local s1, s2, s3 = { 3, 5, 7 }, { 3, 5, 7 }, { 3, 5, 7 }
            s2[dim + 1], s3[dim + 1] = 2, 1
            local a = randn(s1)
            local b = randn { s2[3], s2[2], s2[1] }:permute { 2, 1, 0 }
            local c = randn(s3)
            local out = nc.cat({ a, b, c }, dim)
            local os = { 3, 5, 7 }
            os[dim + 1] = s1[dim + 1] + s2[dim + 1] + s3[dim + 1]
            assert.are.same(os, out:shape())
            local parts = { { a:tolist(), s1, 0 }, { b:tolist(), s2, s1[dim + 1] }, { c:tolist(), s3, s1[dim + 1] + s2[dim + 1] } }
            local want = {}
            for _, p in ipairs(parts) do
                for i = 0, numel(p[2]) - 1 do
                    local m = unravel(i, p[2])
                    m[dim + 1] = m[dim + 1] + p[3]
                    want[ravel(m, os)] = p[1][i + 1]
                end
            end
            assert_exact(out, want, 'cat dim ' .. dim)
        end
    end)

    it('works for any plain dtype and a negative dim', function()
        for _, dtype in ipairs { 'i64', 'i32', 'u8', 'f64', 'bf16', 'i8', 'f16' } do
            local a = nc.tensor({ { 1, 2 }, { 3, 4 } }, { dtype = dtype })
            local b = nc.tensor({ { 5 }, { 6 } }, { dtype = dtype })
            local out = nc.cat({ a, b }, -1)
            assert.are.equal(dtype, out:dtype())
            assert.are.same({ 1, 2, 5, 3, 4, 6 }, out:tolist())
        end
    end)

    it('backward sends each slice of the gradient to its input', function()
        gradcheck(function(a, b) return nc.cat({ a, b:t() }, 1) end, { randn({ 2, 3 }, true), randn({ 4, 2 }, true) }, 'cat')
    end)

    it('errors: mismatched shapes and dtypes', function()
        expect_error(function() nc.cat({ nc.zeros { 2, 3 }, nc.zeros { 3, 3 } }, 1) end, 'cat', '(3, 3)', '(2, 3)')
        expect_error(function() nc.cat({ nc.zeros { 2 }, nc.zeros({ 2 }, { dtype = 'i64' }) }, 0) end, 'cat', 'i64')
        expect_error(function() nc.cat({}, 0) end, 'cat')
    end)

    it('split and chunk return narrow views (shared storage) with autograd', function()
        local t = nc.arange(10, { dtype = 'f32' }):reshape { 2, 5 }
        local parts = nc.split(t, 2, 1)
        assert.are.equal(3, #parts)
        assert.are.same({ 0, 1, 5, 6 }, parts[1]:tolist())
        assert.are.same({ 4, 9 }, parts[3]:tolist())
        local sz = t:split({ 1, 4 }, -1)
        assert.are.same({ 2, 4 }, sz[2]:shape())
        parts[2]:fill_(-1)
        assert.are.same({ 0, 1, -1, -1, 4, 5, 6, -1, -1, 9 }, t:tolist())
        local ch = nc.chunk(nc.zeros { 7, 2 }, 3, 0)
        assert.are.equal(3, #ch)
        assert.are.same({ 3, 3, 1 }, { ch[1]:size(0), ch[2]:size(0), ch[3]:size(0) })
        assert.are.equal(2, #nc.chunk(nc.zeros { 2 }, 5))
        assert.has_error(function() nc.split(t, { 2, 2 }, 1) end)
        gradcheck(function(x)
            local p = nc.chunk(x, 3, 1)
            return nc.cat({ p[3], p[1] * 2, p[2] }, 1)
        end, { randn({ 2, 7 }, true) }, 'chunk + cat')
    end)
end)
