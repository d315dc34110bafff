-- spec/optim/sched_spec.lua — nc.sched (algorithms.md §13.5): warmup starts at 1/W (never full
-- lr), continuity at phase boundaries (a jump of at most one step's slope), exact peak in the
-- stable phase, exact final value at the last step, monotone decay, each cooldown shape.
package.path = 'lua/?.lua;lua/?/init.lua;' .. package.path
local nc = require 'nanochat'

local function approx(a, b, what) assert(math.abs(a - b) < 1e-12, string.format('%s: %.15g vs %.15g', what, a, b)) end

describe('nc.sched', function()
    it('warms up linearly from 1/W', function()
        for _, f in ipairs { nc.sched.wsd { warmup = 10, total = 100 }, nc.sched.cosine { warmup = 10, total = 100 },
                             nc.sched.constant { warmup = 10 } } do
            approx(f(0), 0.1, 'first step')
            approx(f(4), 0.5, 'step 4')
            approx(f(9), 1.0, 'last warmup step')
            approx(f(10), 1.0, 'first step after warmup')
        end
        approx(nc.sched.constant {}(0), 1, 'no warmup')
        approx(nc.sched.constant {}(12345), 1, 'constant')
    end)

    for _, shape in ipairs { 'linear', 'cosine', '1-sqrt' } do
        it('wsd ' .. shape .. ': stable peak, continuous, monotone cooldown, exact final', function()
            local W, T, final = 10, 100, 0.05
            local f = nc.sched.wsd { warmup = W, total = T, cooldown = 0.2, shape = shape, final = final }
            local D = 20
            for t = W, T - D - 1 do assert.are.equal(1.0, f(t)) end
            assert.are.equal(final, f(T - 1))
            assert.are.equal(final, f(T + 5))
            local slope = (1 - final) / D
            local worst = 0
            for t = T - D, T - 1 do
                assert(f(t) <= f(t - 1), 'not monotone at ' .. t)
                worst = math.max(worst, f(t - 1) - f(t))
            end
            -- the biggest single-step drop: linear exactly one slope; cosine pi/2 slopes at the
            -- middle; 1-sqrt is steepest at its start (1 - sqrt(1/D))
            local bound = ({ linear = slope, cosine = math.pi / 2 * slope, ['1-sqrt'] = (1 - final) * math.sqrt(1 / D) })[shape]
            assert(worst <= bound * (1 + 1e-9), string.format('drop %.6g > %.6g', worst, bound))
            assert(f(T - D) < 1 and f(T - D) > f(T - 2))
        end)
    end

    it('wsd cooldown may be given in steps, and 0 means none', function()
        local f = nc.sched.wsd { warmup = 0, total = 50, cooldown = 10 }
        assert.are.equal(1, f(39))
        assert.are.equal(0, f(49))
        approx(f(45), 1 - 6 / 10, 'linear in steps')
        local g = nc.sched.wsd { warmup = 0, total = 50, cooldown = 0 }
        assert.are.equal(1, g(49))
    end)

    it('cosine: peak right after warmup, final at the last step, continuous', function()
        local f = nc.sched.cosine { warmup = 5, total = 55, final = 0.1 }
        assert.are.equal(1, f(5))
        approx(f(54), 0.1, 'final')
        approx(f(30), 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 25 / 49)), 'middle')
        for t = 6, 54 do
            assert(f(t) <= f(t - 1))
            assert(f(t - 1) - f(t) <= 0.9 * math.pi / 2 / 49 + 1e-12)
        end
        assert.are.equal(0.1, f(100))
    end)

    it('rejects inconsistent settings', function()
        assert.has_error(function() nc.sched.wsd { warmup = 90, total = 100, cooldown = 0.2 } end,
            'sched.wsd: warmup 90 + cooldown 20 steps exceed total 100')
        assert.has_error(function() nc.sched.wsd { total = 10, shape = 'exp' } end)
        assert.has_error(function() nc.sched.cosine { warmup = 5 } end)
    end)
end)
