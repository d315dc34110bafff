-- spec/infer/adapt_threads_spec.lua — the decode thread-count controller (lua/nanochat/adapt_threads.lua)
-- and engine:set_threads / threads= on the commands.
-- The controller is driven with synthetic step times (no clock, no timing assertions): it keeps the
-- faster count, probes on schedule, switches when the other count becomes faster (a loaded machine)
-- and back, ignores the settling step after a switch, and rejects bad arguments. On the engine,
-- 'auto' and fixed thread counts give the same greedy tokens and logits (the decode is bit-identical
-- on any count), the controller sees every decode step (prefill is not timed), the global thread
-- count is restored after each call, and bad values are clear errors.
package.path = 'lua/?.lua;lua/?/init.lua;' .. package.path
local nc = require 'nanochat'
local A = require 'nanochat.adapt_threads'
local E = require 'nanochat.engine'

-- run n steps of the controller where a step on k threads takes cost(k, step) seconds; returns the
-- list of counts it picked
local function drive(ad, n, cost)
    local picks = {}
    for s = 1, n do
        local k = ad:pick()
        picks[s] = k
        ad:record(k, cost(k, s))
    end
    return picks
end

local function count(picks, k, from, to)
    local c = 0
    for s = from or 1, to or #picks do if picks[s] == k then c = c + 1 end end
    return c
end

describe('adapt_threads', function()
    local O = { span = 0.02, gap = 0.1, first = 0.02, min_steps = 3 }

    it('keeps the faster count and probes the other one after `first`, then every `gap` seconds', function()
        local ad = A.new(2, O)
        local picks = drive(ad, 200, function(k) return k == 2 and 4e-3 or 7e-3 end)
        for s = 1, 5 do assert.are.equal(2, picks[s]) end   -- 5 x 4 ms = first
        for s = 6, 9 do assert.are.equal(1, picks[s], 'probe at step ' .. s) end   -- settle + 3 x 7 ms >= span
        assert.are.equal(2, picks[10])
        assert.are.equal(2, ad.cur)
        assert.are.equal(0, ad.switches)
        -- probes: 4 steps each, one per 0.1 s (25 steps) of 2-thread time
        local n1 = count(picks, 1)
        assert.is_true(n1 >= 4 * 6 and n1 <= 4 * 8, 'probe steps: ' .. n1)
        assert.are.equal(4e-3, ad:time(2))
        assert.are.equal(7e-3, ad:time(1))
    end)

    it('switches to 1 thread when 2-thread steps get a heavy tail (load), and back when it ends', function()
        -- under load most 2-thread steps stay fast (0.3 ms) but every 10th waits a scheduler slice
        -- (8 ms): mean 1.07 ms against 1 thread's 0.5 ms. The median step (0.3 ms) would hide it.
        local ad = A.new(2, { span = 0.02, gap = 0.1, first = 0.01 })
        local loaded = false
        local n2 = 0
        local function cost(k)
            if k == 1 then return 0.5e-3 end
            n2 = n2 + 1
            if loaded and n2 % 10 == 0 then return 8e-3 end
            return 0.3e-3
        end
        local picks = drive(ad, 300, cost)
        assert.are.equal(2, ad.cur)
        assert.are.equal(0, ad.switches)
        loaded = true
        picks = drive(ad, 1500, cost)
        assert.are.equal(1, ad.cur, tostring(ad))
        assert.is_true(count(picks, 1, 501, 1500) >= 800, 'mostly 1 thread under load: ' .. count(picks, 1, 501, 1500))
        loaded = false
        picks = drive(ad, 1500, cost)
        assert.are.equal(2, ad.cur, tostring(ad))
        assert.is_true(count(picks, 2, 501, 1500) >= 800, 'back on 2 threads: ' .. count(picks, 2, 501, 1500))
        assert.is_true(ad.switches >= 2)
    end)

    it('does not record the settling step after a change of count', function()
        local ad = A.new(2, O)
        drive(ad, 5, function() return 4e-3 end)
        -- the probe's first step (the switch to 1 thread) is slow; it must not count
        local first = true
        drive(ad, 4, function(k)
            if k == 1 and first then first = false; return 1.0 end
            return 7e-3
        end)
        assert.are.equal(7e-3, ad:time(1))
        assert.are.equal(3, #ad.samples[1])
        assert.are.equal(2, ad.cur)
    end)

    it('never probes with one thread; with 4 it probes every other count in turn', function()
        local one = A.new(1, O)
        local p1 = drive(one, 50, function() return 1e-3 end)
        assert.are.equal(50, count(p1, 1))
        drive(one, 5000, function() return 1e-3 end)   -- the sample list stays bounded
        assert.is_true(#one.samples[1] <= 4096, #one.samples[1])
        assert.is_true(math.abs(one:time(1) - 1e-3) < 1e-12)
        local four = A.new(4, O)
        local p4 = drive(four, 600, function(k) return 1e-3 * (5 - k) end)   -- 4 threads fastest
        assert.are.equal(4, four.cur)
        for k = 1, 3 do assert.is_true(count(p4, k) > 0, 'count ' .. k .. ' was probed') end
    end)

    it('rejects bad arguments', function()
        assert.has_error(function() A.new(0) end, 'adapt_threads: expected a maximum thread count >= 1, got 0')
        assert.has_error(function() A.new(1.5) end)
        assert.has_error(function() A.new(2, { gap = -1 }) end, 'adapt_threads: gap must be a number >= 0, got -1')
        assert.is_string(tostring(A.new(2)))
    end)
end)

describe('engine:set_threads', function()
    local function engine()
        local cfg = nc.models.config('micro', { head_std = 0.3 })
        cfg.matmul, cfg.head_matmul = 'fp32', 'fp32'
        local m = nc.models.gpt.new(cfg)
        m:eval()
        return nc.pack(m)
    end

    it("'auto' and fixed counts give the same tokens and logits; every decode step is timed", function()
        local before = nc.get_num_threads()
        local e = engine()
        local prompt = { 5, 9, 2, 7 }
        local function run()
            local toks = {}
            for id in e:generate(prompt, { max_tokens = 12, temperature = 0 }) do toks[#toks + 1] = id end
            local cache = e:new_cache(1, 32)
            local lg = e:forward_cached(nc.tensor({ prompt }, { dtype = 'i64' }), cache)
            local l2 = e:forward_cached(nc.tensor({ { 3 } }, { dtype = 'i64' }), cache)
            return toks, nc.cat({ lg:narrow(1, 3, 1), l2 }, 1)
        end
        nc.set_num_threads(2)
        local t_ref, l_ref = run()
        e:set_threads(1)
        local t1, l1 = run()
        e:set_threads('auto')
        assert.are.equal(2, e.adapt.max)
        local ta, la = run()
        assert.are.same(t_ref, t1)
        assert.are.same(t_ref, ta)
        assert.are.equal(0, (l_ref - l1):abs():max():item())
        assert.are.equal(0, (l_ref - la):abs():max():item())
        -- 12 generated tokens: the first comes from the prefill, 11 decode steps; plus 1 decode step
        assert.are.equal(12, e.adapt.steps)
        assert.are.equal(2, nc.get_num_threads(), 'the global count is restored')
        e:set_threads(nil)
        assert.is_nil(e.adapt)
        nc.set_num_threads(before)
    end)

    it('bad values are clear errors (API and threads= on the commands)', function()
        local e = engine()
        assert.has_error(function() e:set_threads(0) end,
            "engine:set_threads: expected nil, a thread count >= 1 or 'auto', got 0")
        assert.has_error(function() e:set_threads('fast') end)
        assert.has_error(function() E.apply_threads(e, { threads = 'x' }) end,
            "nanochat: threads must be a count >= 1 or 'auto', got x")
        local before = nc.get_num_threads()
        assert.are.equal(e, E.apply_threads(e, {}))
        assert.is_nil(e.threads)
        E.apply_threads(e, { threads = 'auto' })
        assert.are.equal('auto', e.threads)
        nc.set_num_threads(before)
    end)
end)
