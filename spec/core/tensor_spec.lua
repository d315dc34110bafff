-- spec/core/tensor_spec.lua — the Lua tensor core: creation, dtypes, views with autograd,
-- element access, determinism of the seeded generator, and error messages.
package.path = 'lua/?.lua;lua/?/init.lua;' .. package.path
local nc = require 'nanochat'

local function list_eq(a, b)
    if #a ~= #b then return false end
    for i = 1, #a do if a[i] ~= b[i] then return false end end
    return true
end

describe('tensor creation', function()
    it('zeros, ones, full, arange, tensor', function()
        assert.same({ 0, 0, 0, 0, 0, 0 }, nc.zeros { 2, 3 }:tolist())
        assert.same({ 2, 3 }, nc.zeros(2, 3):shape())
        assert.same({ 1, 1 }, nc.ones { 2 }:tolist())
        assert.same({ 2.5, 2.5, 2.5 }, nc.full({ 3 }, 2.5):tolist())
        assert.same({ 0, 1, 2, 3 }, nc.arange(4):tolist())
        assert.same({ 2, 4, 6 }, nc.arange(2, 8, 2):tolist())
        assert.same({ { 1, 2 }, { 3, 4 } }, nc.tensor { { 1, 2 }, { 3, 4 } }:totable())
        assert.equals(7, nc.tensor(7):item())
        assert.equals(0, nc.tensor(7):dim())
    end)

    it('supports every plain dtype', function()
        for _, dt in ipairs { 'f32', 'bf16', 'f16', 'i8', 'i32', 'i64', 'u8', 'f64' } do
            local t = nc.tensor({ 1, 2, 3 }, { dtype = dt })
            assert.equals(dt, t:dtype())
            assert.same({ 1, 2, 3 }, t:tolist())
            assert.same({ 1, 2, 3 }, t:to('f32'):tolist())
        end
    end)

    it('handles empty tensors', function()
        local t = nc.zeros { 0, 3 }
        assert.equals(0, t:numel())
        assert.same({}, t:tolist())
        assert.same({ 0, 3 }, t:t():contiguous():t():shape())
    end)

    it('rejects ragged tables and bad shapes with clear errors', function()
        assert.has_error(function() nc.tensor { { 1, 2 }, { 3 } } end)
        local ok, err = pcall(nc.zeros, { 2, -1 })
        assert.is_false(ok)
        assert.truthy(err:find('negative size', 1, true))
        ok, err = pcall(nc.zeros, { 2, 3 }, { dtype = 'f128' })
        assert.truthy(err:find('unknown dtype', 1, true))
    end)
end)

describe('views', function()
    local x
    before_each(function() x = nc.tensor { { 1, 2, 3 }, { 4, 5, 6 } } end)

    it('transpose, contiguous, reshape', function()
        local y = x:t()
        assert.is_false(y:is_contiguous())
        assert.same({ 1, 4, 2, 5, 3, 6 }, y:tolist())
        assert.same({ 1, 4, 2, 5, 3, 6 }, y:reshape { 6 }:tolist())
        local ok, err = pcall(function() return y:view(6) end)
        assert.is_false(ok)
        assert.truthy(err:find('contiguous', 1, true))
        assert.same({ 3, 2 }, x:view(3, 2):shape())
        assert.same({ 6 }, x:view(-1):shape())
    end)

    it('narrow, select, expand, permute, squeeze, unsqueeze', function()
        assert.same({ 2, 3, 5, 6 }, x:narrow(1, 1, 2):tolist())
        assert.same({ 4, 5, 6 }, x:select(0, -1):tolist())
        assert.same({ 1, 1, 2, 2 }, nc.tensor { 1, 2 }:view(2, 1):expand(2, 2):tolist())
        assert.same({ 3, 1, 2 }, x:unsqueeze(0):permute { 2, 0, 1 }:shape())
        assert.same({ 2, 3 }, x:unsqueeze(1):squeeze(1):shape())
        assert.same({ 2, 3 }, x:unsqueeze(1):squeeze():shape())
    end)

    it('writes through views reach the base', function()
        x:narrow(1, 0, 1):fill_(9)
        assert.same({ 9, 2, 3, 9, 5, 6 }, x:tolist())
        x:t():set(2, 1, -1)
        assert.equals(-1, x:get(1, 2))
    end)

    it('errors name the op and the shapes', function()
        local ok, err = pcall(function() return x:narrow(1, 2, 5) end)
        assert.truthy(err:find('narrow', 1, true) and err:find('(2, 3)', 1, true))
        ok, err = pcall(function() return x:select(2, 0) end)
        assert.truthy(err:find('dim 2 out of range', 1, true))
        ok, err = pcall(function() return x:get(0, 3) end)
        assert.truthy(err:find('index 3 out of range', 1, true))
    end)

    it('gradients flow through every view back to the base', function()
        local w = nc.tensor({ { 1, 2, 3 }, { 4, 5, 6 } }, { requires_grad = true })
        -- each view is summed into the loss with a distinct weight so the gradient is checkable
        local parts = {
            w:t():contiguous(),                         -- all elements once
            w:narrow(1, 1, 2):contiguous(),             -- columns 1..2
            w:select(0, 1):contiguous(),                -- row 1
            w:view(3, 2):permute { 1, 0 }:contiguous(), -- all elements once
            w:unsqueeze(0):expand(3, 2, 3):contiguous(),-- all elements three times
        }
        local loss
        for _, p in ipairs(parts) do
            local s = p:sum()
            loss = loss and loss + s or s
        end
        loss:backward()
        assert.same({ 5, 6, 6, 6, 7, 7 }, w.grad:tolist())
    end)
end)

describe('generator', function()
    it('is deterministic for a seed and advances between draws', function()
        nc.manual_seed(1234)
        local a, b = nc.randn { 1000 }:tolist(), nc.randn { 1000 }:tolist()
        nc.manual_seed(1234)
        local c = nc.randn { 1000 }:tolist()
        assert.is_true(list_eq(a, c))
        assert.is_false(list_eq(a, b))
    end)

    it('does not depend on the thread count', function()
        local n = nc.get_num_threads()
        nc.set_num_threads(1)
        local a = nc.randn({ 100000 }, { generator = nc.generator(5) }):tolist()
        nc.set_num_threads(2)
        local b = nc.randn({ 100000 }, { generator = nc.generator(5) }):tolist()
        nc.set_num_threads(n)
        assert.is_true(list_eq(a, b))
    end)

    it('rand respects its bounds', function()
        local t = nc.rand({ 10000 }, { lo = -3, hi = -2 }):tolist()
        for _, v in ipairs(t) do assert.is_true(v >= -3 and v < -2) end
    end)
end)

describe('runtime', function()
    it('reports kernels, threads and CUDA status', function()
        assert.truthy(nc.cpu_kernel() == 'avx512' or nc.cpu_kernel() == 'avx2' or nc.cpu_kernel() == 'scalar')
        assert.is_true(nc.get_num_threads() >= 1)
        assert.is_string(nc.cuda_status())
        local s = nc.mem_stats()
        assert.is_true(s.host_bytes >= 0 and s.tensors_live >= 0)
    end)
end)
