-- spec/core/grad_buf_spec.lua — gradients that GEMMs write with beta = 0 into fresh (uninitialised)
-- buffers, and the caller's gradient used directly as the root's: accumulation stays exact when a
-- tensor feeds several ops, across backward calls, and the caller's tensor is never modified.
package.path = 'lua/?.lua;lua/?/init.lua;' .. package.path
local nc = require 'nanochat'

local function max_abs_diff(a, b)
    local la, lb, m = a:tolist(), b:tolist(), 0
    for i = 1, #la do m = math.max(m, math.abs(la[i] - lb[i])) end
    return m
end

describe('linear backward into fresh gradient buffers', function()
    it('accumulates over two uses and two backward calls like the reference', function()
        nc.manual_seed(7)
        local x = nc.randn({ 5, 4 }):requires_grad_(true)
        local w = nc.randn({ 3, 4 }):requires_grad_(true)
        local g1, g2 = nc.randn { 5, 3 }, nc.randn { 5, 3 }
        local g1_copy = g1:clone()
        -- y = x w^T used twice: dL/dx = (g1 + g2) w, dL/dw = (g1 + g2)^T x
        local y1 = nc.linear(x, w)
        local y2 = nc.linear(x, w)
        local s = y1 * 1 + y2 * 1
        s:backward(g1)
        local gx_ref = nc.matmul(g1 + g1, w)
        local gw_ref = nc.matmul((g1 + g1):t(), x)
        assert.is_true(max_abs_diff(x.grad, gx_ref) < 1e-5)
        assert.is_true(max_abs_diff(w.grad, gw_ref) < 1e-5)
        -- a second backward accumulates into the existing buffers
        nc.linear(x, w):backward(g2)
        assert.is_true(max_abs_diff(x.grad, gx_ref + nc.matmul(g2, w)) < 1e-5)
        assert.is_true(max_abs_diff(w.grad, gw_ref + nc.matmul(g2:t(), x)) < 1e-5)
        -- the caller's gradient tensor is untouched
        assert.are.equal(0, max_abs_diff(g1, g1_copy))
    end)

    it('a leaf root still gets a gradient of its own (no aliasing of the caller tensor)', function()
        local x = nc.zeros({ 3 }):requires_grad_(true)
        local g = nc.ones { 3 }
        x:backward(g)
        x:backward(g)
        assert.are.same({ 2, 2, 2 }, x.grad:tolist())
        assert.are.same({ 1, 1, 1 }, g:tolist())
    end)
end)
