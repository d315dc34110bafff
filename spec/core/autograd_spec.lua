-- spec/core/autograd_spec.lua — the autograd engine: accumulation, shared inputs, no_grad,
-- graph release, bitwise determinism, and no memory growth across 1000 iterations.
package.path = 'lua/?.lua;lua/?/init.lua;' .. package.path
local nc = require 'nanochat'

-- a small MLP + cross-entropy step; returns loss and the parameters
local function make_params(seed)
    local g = nc.generator(seed)
    return {
        w1 = nc.randn({ 32, 16 }, { generator = g, std = 0.3, requires_grad = true }),
        w2 = nc.randn({ 10, 32 }, { generator = g, std = 0.3, requires_grad = true }),
    }
end

local function step(p, x, y)
    local h = nc.linear(x, p.w1):relu2()
    local logits = nc.linear(h, p.w2)
    return nc.cross_entropy(logits, y)
end

local function full_gc()
    collectgarbage('collect')
    collectgarbage('collect')
end

describe('autograd', function()
    it('accumulates leaf gradients across backward calls until zero_grad', function()
        local w = nc.tensor({ 1, 2, 3 }, { requires_grad = true })
        local loss = (w * w):sum()
        loss:backward()
        assert.same({ 2, 4, 6 }, w.grad:tolist())
        local loss2 = (w * 3):sum()
        loss2:backward()
        assert.same({ 5, 7, 9 }, w.grad:tolist())
        nc.zero_grad { w }
        assert.is_nil(w.grad)
    end)

    it('sums gradients of a tensor used on several paths', function()
        local x = nc.tensor({ 0.5, -1.5 }, { requires_grad = true })
        local a = x:exp()
        local loss = (a * x + a):sum()      -- d/dx = e^x * x + e^x + e^x
        loss:backward()
        local g = x.grad:tolist()
        for i, v in ipairs { 0.5, -1.5 } do
            assert.near(math.exp(v) * (v + 2), g[i], 1e-5)
        end
    end)

    it('records nothing inside no_grad and restores the mode after an error', function()
        local w = nc.tensor({ 1, 2 }, { requires_grad = true })
        local y = nc.no_grad(function() return w * 2 end)
        assert.is_falsy(y.requires_grad)
        assert.has_error(function() nc.no_grad(function() error('inside') end) end)
        assert.is_true(nc.grad_enabled())
        assert.is_true((w * 2).requires_grad)
    end)

    it('needs an explicit gradient for a non-scalar output', function()
        local w = nc.tensor({ 1, 2 }, { requires_grad = true })
        local y = w * 3
        local ok, err = pcall(function() y:backward() end)
        assert.is_false(ok)
        assert.truthy(err:find('1-element', 1, true))
        y:backward(nc.tensor { 1, 10 })
        assert.same({ 3, 30 }, w.grad:tolist())
    end)

    it('frees the graph after backward (intermediate grads and nodes are dropped)', function()
        local w = nc.tensor({ 1, 2 }, { requires_grad = true })
        local h = w * 2
        local loss = h:sum()
        loss:backward()
        assert.is_nil(h._node)
        assert.is_nil(rawget(h, 'grad'))
        assert.is_not_nil(w.grad)
    end)

    it('is bitwise deterministic for the same seed', function()
        local results = {}
        for r = 1, 2 do
            local p = make_params(7)
            local x = nc.randn({ 64, 16 }, { generator = nc.generator(8) })
            local y = nc.tensor((function() local t = {} for i = 1, 64 do t[i] = (i * 7) % 10 end return t end)(), { dtype = 'i64' })
            local loss = step(p, x, y)
            loss:backward()
            results[r] = { loss:item(), p.w1.grad:tolist(), p.w2.grad:tolist() }
        end
        assert.equals(results[1][1], results[2][1])
        assert.same(results[1][2], results[2][2])
        assert.same(results[1][3], results[2][3])
    end)

    it('does not grow memory over 1000 forward/backward iterations', function()
        local p = make_params(1)
        local x = nc.randn({ 64, 16 }, { generator = nc.generator(2) })
        local labels = {}
        for i = 1, 64 do labels[i] = i % 10 end
        local y = nc.tensor(labels, { dtype = 'i64' })
        local function iter()
            local loss = step(p, x, y)
            loss:backward()
            nc.no_grad(function()
                p.w1:add_scaled_(p.w1.grad, -0.01)
                p.w2:add_scaled_(p.w2.grad, -0.01)
            end)
            nc.zero_grad { p.w1, p.w2 }
        end
        for _ = 1, 10 do iter() end
        full_gc()
        local before = nc.mem_stats()
        local highest = 0
        for i = 1, 1000 do
            iter()
            if i % 10 == 0 then highest = math.max(highest, nc.mem_stats().host_bytes) end
        end
        full_gc()
        local after = nc.mem_stats()
        assert.equals(before.tensors_live, after.tensors_live)
        assert.equals(before.host_bytes, after.host_bytes)
        -- and memory stayed bounded while running, not only after a final collection
        assert.is_true(highest - before.host_bytes < 256 * 1024 * 1024)
    end)
end)

-- ag.pass_grad / ag.take: identity-like backwards (STE quantizers, same-shape add, reshape views)
-- hand the output's gradient buffer to an input instead of zero-fill + accumulate. These check the
-- cases where handing over would be wrong.
describe('autograd: gradient hand-over', function()
    local function leaf(vals) return nc.tensor(vals, { requires_grad = true }) end

    it('x + x gives 2 g (the second use accumulates into the handed buffer)', function()
        local x = leaf { 1, 2, 3 }
        local s = (x + x) * nc.tensor { 1, 10, 100 }
        s:sum():backward()
        assert.same({ 2, 20, 200 }, x.grad:totable())
    end)

    it("never hands over the caller's gradient tensor", function()
        local a, b = leaf { 1, 2 }, leaf { 3, 4 }
        local g = nc.tensor { 5, 7 }
        local s = a + b
        s:backward(g)
        s = a + b
        s:backward(g)        -- accumulates into a.grad / b.grad: must not change g
        assert.same({ 5, 7 }, g:totable())
        assert.same({ 10, 14 }, a.grad:totable())
        assert.same({ 10, 14 }, b.grad:totable())
    end)

    it('a retained gradient is not shared with an input', function()
        local x = leaf { 1, 2, 3 }
        local y = (x * 1):retain_grad()
        local z = y:reshape { 3, 1 }:retain_grad()
        local w = (z + z) * 3
        w:sum():backward()
        assert.same({ { 6 }, { 6 }, { 6 } }, z.grad:totable())
        assert.same({ 6, 6, 6 }, y.grad:totable())
        assert.same({ 6, 6, 6 }, x.grad:totable())
        x.grad:fill_(0)
        assert.same({ 6, 6, 6 }, y.grad:totable())
    end)

    it('STE quantizers and reshape views accumulate correctly over two backward calls', function()
        local w = leaf { { 0.5, -0.2 }, { 0.1, 0.9 } }
        for _ = 1, 2 do
            local q = nc.quant_weight(w)
            local s = q:reshape { 4 } * nc.tensor { 1, 2, 3, 4 }
            s:sum():backward()
        end
        assert.same({ { 2, 4 }, { 6, 8 } }, w.grad:totable())
    end)
end)
