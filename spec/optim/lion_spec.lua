-- spec/optim/lion_spec.lua — Lion (algorithms.md §5.4): the sign property, the two hand-computed
-- steps, and the fused step against a float64 reference with weight decay.
package.path = 'spec/optim/?.lua;lua/?.lua;lua/?/init.lua;' .. package.path
local nc = require 'nanochat'
local H = require 'optim_helpers'

describe('nc.optim.lion', function()
    it('moves every element by exactly lr where c ~= 0 and not at all where c = 0 (wd = 0)', function()
        local P = H.randn({ 9, 11 })
        local g = H.randn({ 9, 11 })
        -- a few exact zeros in the gradient: with m = 0, c = 0 there
        for i = 0, 8 do g:set(i, i, 0) end
        local before = P:tolist()
        P:requires_grad_(true)
        local lr = 0.01
        local opt = nc.optim.lion({ P }, { lr = lr, betas = { 0.9, 0.99 } })
        P.grad = g
        opt:step()
        local after, gl = P:tolist(), g:tolist()
        for i = 1, #before do
            local d = math.abs(after[i] - before[i])
            if gl[i] == 0 then assert.are.equal(0, d)
            else assert(math.abs(d - lr) <= 1e-7 * math.max(1, math.abs(before[i])),
                string.format('element %d moved by %.9g, want %g', i, d, lr)) end
        end
    end)

    it('reproduces the two hand-computed steps', function()
        local P = nc.zeros({ 3 }, { requires_grad = true })
        local opt = nc.optim.lion({ P }, { lr = 1, betas = { 0.9, 0.99 } })
        P.grad = nc.tensor { 1, -2, 0 }
        opt:step()
        H.close(P, { -1, 1, 0 }, 0, 0, 'step 1 = -sign [1, -1, 0]')
        H.close(opt:state_dict().tensors['p1.m'], { 0.01, -0.02, 0 }, 1e-9, 1e-6, 'm1')
        P.grad = nc.tensor { -1, 1, 0 }
        opt:step()
        -- c2 = 0.9 m1 + 0.1 g2 = [-0.091, 0.082, 0] -> sign [-1, 1, 0]: p = [-1, 1, 0] - [-1, 1, 0]
        H.close(P, { 0, 0, 0 }, 0, 0, 'step 2')
    end)

    it('matches a float64 reference with weight decay over 4 steps', function()
        local P = H.randn({ 5, 6 })
        local p, m = P:tolist(), {}
        for i = 1, #p do m[i] = 0 end
        P:requires_grad_(true)
        local lr, wd, b1, b2 = 3e-3, 0.5, 0.95, 0.98
        local opt = nc.optim.lion({ P }, { lr = lr, betas = { b1, b2 }, weight_decay = wd })
        for t = 1, 4 do
            local g = H.randn { 5, 6 }
            local gl = g:tolist()
            P.grad = g
            opt:step(t / 4)
            local l = lr * t / 4
            for i = 1, #p do
                local c = b1 * m[i] + (1 - b1) * gl[i]
                p[i] = p[i] * (1 - l * wd) - l * (c > 0 and 1 or (c < 0 and -1 or 0))
                m[i] = b2 * m[i] + (1 - b2) * gl[i]
            end
        end
        H.close(P, p, 3e-7, 2e-7, 'lion')
    end)
end)
