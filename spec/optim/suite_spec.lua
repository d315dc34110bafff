-- spec/optim/suite_spec.lua — properties every optimizer shares: it lowers a least-squares loss,
-- resumes bitwise from a state_dict that went through a safetensors file (k steps + save + load
-- + k steps == 2k steps), skips parameters without a gradient, zero_grad drops gradients,
-- state_bytes counts its state exactly, and bad input gives errors naming the problem.
package.path = 'spec/optim/?.lua;lua/?.lua;lua/?/init.lua;' .. package.path
local nc = require 'nanochat'
local H = require 'optim_helpers'

-- name -> options for a 24 x 16 least-squares problem (lrs picked for 100-300 steps)
local CASES = {
    { 'adamw', { lr = 0.05, weight_decay = 0.01 } },
    { 'lion', { lr = 0.01, weight_decay = 0.01 } },
    { 'muon', { lr = 0.05 } },
    { 'muon8', { lr = 0.05, block = 64 } },
    { 'muon8', { lr = 0.05, block = 64, rounding = 'stochastic', seed = 3 }, 'stochastic' },
    -- the dynamic code map, with a momentum warmup that is still ramping at the resume point
    { 'muon8', { lr = 0.05, block = 64, quant = 'dynamic', momentum_warmup = 8 }, 'dynamic + momentum warmup' },
    { 'galore+adamw', { lr = 0.05, rank = 8, update_gap = 3, alpha = 1 } },
    { 'galore+muon', { lr = 0.05, rank = 8, update_gap = 3 } },
    { 'galore+muon8', { lr = 0.05, rank = 8, update_gap = 3, block = 64, rounding = 'stochastic' } },
    { 'galore+muon8', { lr = 0.05, rank = 8, update_gap = 3, block = 64, quant = 'dynamic' }, 'dynamic' },
    { 'galore+lion', { lr = 0.01, rank = 8, update_gap = 3, alpha = 1 } },
}

local function label(c) return c[1] .. (c[3] and (' ' .. c[3]) or '') end

describe('every optimizer', function()
    local prob = H.lstsq(24, 16, 64)

    for _, c in ipairs(CASES) do
        it(label(c) .. ' lowers a least-squares loss', function()
            local X = nc.zeros({ 24, 16 }, { requires_grad = true })
            local opt = nc.optim.build(c[1], { X }, c[2])
            local first, last
            -- GaLore moves only in a rank-8 subspace refreshed every 3 steps: give it more steps
            for _ = 1, c[1]:find('galore') and 300 or 100 do
                local loss = prob.loss(X)
                loss:backward()
                opt:step()
                opt:zero_grad()
                last = loss:item()
                first = first or last
            end
            assert(last < 0.1 * first, string.format('%s: loss %.4g -> %.4g', label(c), first, last))
        end)

        it(label(c) .. ' resumes bitwise from a saved state_dict', function()
            local X0 = H.randn({ 24, 16 }, 0.1)
            local function make() return { { 'w', X0:clone():requires_grad_(true) } } end
            local function mk(named) return nc.optim.build(c[1], named, c[2]) end
            local function loss(named) return prob.loss(named[1][2]) end
            local sched = nc.sched.wsd { warmup = 2, total = 10, cooldown = 0.3 }
            local a, b, oa, ob = H.resume_pair(make, mk, loss, 5, sched)
            H.bitwise(b[1][2], a[1][2], label(c) .. ' parameter after resume')
            local sa, sb = oa:state_dict(), ob:state_dict()
            for k, t in pairs(sa.tensors) do H.bitwise(sb.tensors[k], t, label(c) .. ' state ' .. k) end
        end)
    end

    it('skips parameters without a gradient and zero_grad drops gradients', function()
        for _, name in ipairs { 'adamw', 'lion', 'muon', 'muon8', 'galore+adamw' } do
            local X = H.randn({ 8, 6 }):requires_grad_(true)
            local Z = H.randn({ 8, 6 }):requires_grad_(true)
            local before = Z:tolist()
            local opt = nc.optim.build(name, { { 'x', X }, { 'z', Z } }, { lr = 0.1 })
            prob.loss(nc.zeros { 24, 16 }) -- (no graph to Z)
            local loss = X:square():sum()
            loss:backward()
            assert.is_nil(rawget(Z, 'grad'))
            opt:step()
            assert.are.same(before, Z:tolist())
            assert.are.equal(0, opt:state_dict().meta.params.z.step)
            assert.are.equal(1, opt:state_dict().meta.params.x.step)
            opt:zero_grad()
            assert.is_nil(rawget(X, 'grad'))
        end
    end)

    it('state_bytes counts the state exactly', function()
        local X = nc.zeros({ 24, 16 }, { requires_grad = true })
        local n = 24 * 16
        assert.are.equal(8 * n, nc.optim.adamw({ X }):state_bytes())
        assert.are.equal(4 * n, nc.optim.lion({ X }):state_bytes())
        assert.are.equal(4 * n, nc.optim.muon({ X }):state_bytes())
        assert.are.equal(n + 4 * math.ceil(n / 2048), nc.optim.muon8({ X }):state_bytes())
        assert.are.equal(n + 4 * math.ceil(n / 64), nc.optim.muon8({ X }, { block = 64 }):state_bytes())
        -- galore on (24, 16), rank 4, right side: proj (16, 4) + m, v (24, 4)
        assert.are.equal(4 * (16 * 4 + 2 * 24 * 4), nc.optim.galore({ X }, { rank = 4 }):state_bytes())
    end)

    it('applies lr = group.lr * mult per group', function()
        local a = nc.ones({ 4 }, { requires_grad = true })
        local b = nc.ones({ 4 }, { requires_grad = true })
        local opt = nc.optim.lion({ { params = { a }, lr = 0.1 }, { params = { b }, lr = 0.01 } })
        a.grad, b.grad = nc.ones { 4 }, nc.ones { 4 }
        opt:step(0.5)
        H.close(a, { 0.95, 0.95, 0.95, 0.95 }, 1e-7, 0, 'group 1')
        H.close(b, { 0.995, 0.995, 0.995, 0.995 }, 1e-7, 0, 'group 2')
    end)

    it('rejects bad input with errors that name it', function()
        local v = nc.zeros({ 5 }, { requires_grad = true })
        assert.has_error(function() nc.optim.muon({ { 'bias', v } }) end,
            'muon: parameter bias has shape (5); Muon updates matrices only (send vectors, embeddings and the LM head to AdamW or Lion, e.g. with nc.optim.hybrid)')
        local ok, err = pcall(nc.optim.adamw, { v }, { betas = 0.9 })
        assert.is_false(ok)
        assert.truthy(tostring(err):find('betas must be a pair', 1, true))
        local opt = nc.optim.adamw({ { 'w', v } })
        v.grad = nc.zeros { 6 }
        ok, err = pcall(opt.step, opt)
        assert.is_false(ok)
        assert.truthy(tostring(err):find('adamw (w): adamw_step: g must have 5 elements', 1, true), err)
        ok, err = pcall(opt.load_state_dict, opt, nc.optim.lion({ v }):state_dict())
        assert.is_false(ok)
        assert.truthy(tostring(err):find('from a lion optimizer', 1, true), err)
        local other = nc.optim.adamw({ { 'w', nc.zeros({ 6 }, { requires_grad = true }) } }):state_dict()
        ok, err = pcall(opt.load_state_dict, opt, other)
        assert.is_false(ok)
        assert.truthy(tostring(err):find('w.m is (6) f32, expected (5) f32', 1, true), err)
        assert.has_error(function() nc.optim.build('sgdx', { v }) end, 'nc.optim.build: unknown optimizer sgdx')
        assert.has_error(function() opt:step(-1) end)
    end)

    it('reset_state zeroes the state and restarts the step count', function()
        local X = H.randn({ 6, 4 }):requires_grad_(true)
        local opt = nc.optim.adamw({ { 'x', X } })
        X.grad = nc.ones { 6, 4 }
        opt:step()
        assert.are.equal(1, opt:reset_state { 'x' })
        assert.are.equal(0, opt:state_dict().meta.params.x.step)
        for _, t in pairs(opt:state_dict().tensors) do
            for _, v in ipairs(t:tolist()) do assert.are.equal(0, v) end
        end
    end)

    it('allocates nothing that outlives a step (8-bit Muon keeps no f32 momentum)', function()
        local X = H.randn({ 64, 48 }):requires_grad_(true)
        local opt = nc.optim.muon8({ X })
        X.grad = H.randn { 64, 48 }
        opt:step()
        collectgarbage('collect')
        local before = nc.mem_stats().host_bytes
        for _ = 1, 3 do opt:step() end
        collectgarbage('collect')
        assert.are.equal(before, nc.mem_stats().host_bytes)
    end)
end)
