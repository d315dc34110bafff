-- spec/optim/fire_spec.lua — FIRE (algorithms.md §6.4): singular vectors preserved, singular
-- values -> sqrt(out/in), isometry, monotone DfI, Procrustes optimality; and on a model: only
-- the 'matrix'-role weights change, their optimizer state is reset, and training continues.
package.path = 'spec/optim/?.lua;lua/?.lua;lua/?/init.lua;' .. package.path
local nc = require 'nanochat'
local H = require 'optim_helpers'

local function cubic(W, n) return nc.optim.newton_schulz(W, { steps = n, coefs = 'cubic', eps = 1e-12 }) end

-- DfI = ||X^T X - I||_F^2 in float64
local function dfi(X)
    local r, c = X:size(0), X:size(1)
    local x = X:tolist()
    local G = H.matmul(H.transpose(x, r, c), x, c, r, c)
    local s = 0
    for i = 0, c - 1 do for j = 0, c - 1 do s = s + (G[i * c + j + 1] - (i == j and 1 or 0)) ^ 2 end end
    return s
end

local function sfe(A, B) local s = 0; local a, b = A:tolist(), B:tolist(); for i = 1, #a do s = s + (a[i] - b[i]) ^ 2 end; return s end

describe('FIRE', function()
    local W = H.randn { 256, 64 }

    it('converges to the polar factor: singular vectors kept, values sqrt(out/in), DfI ~ 0 (N = 30)', function()
        local m = nc.nn.Module()
        m:param('w', W:clone())
        nc.optim.fire({ { 'w', m.w } }, { iters = 30 })
        local u, _, vt = nc.optim.svd(W:to('f64'))
        local polar = H.matmul(u:tolist(), vt:tolist(), 256, 64, 64)   -- U V^T in float64
        local want = {}
        for i, v in ipairs(polar) do want[i] = 2 * v end                 -- sqrt(out / in) = 2
        H.close(m.w, want, 1e-5, 1e-5, 'FIRE(W) = sqrt(out/in) U V^T')
        local _, s = nc.optim.svd(m.w)
        for i, v in ipairs(s:tolist()) do
            assert(math.abs(v - 2) < 1e-3, string.format('singular value %d = %.6f', i, v))
        end
        assert(dfi(cubic(W, 30)) < 1e-5, 'DfI ' .. dfi(cubic(W, 30)))
    end)

    it('lowers DfI monotonically over N = 1..10 and keeps the singular value order', function()
        local prev = math.huge
        for n = 1, 10 do
            local d = dfi(cubic(W, n))
            assert(d <= prev * (1 + 1e-6), string.format('DfI rose at N = %d: %.6g > %.6g', n, d, prev))
            prev = d
        end
        local _, s0 = nc.optim.svd(W)
        local _, s5 = nc.optim.svd(cubic(W, 5))
        local a, b = s0:tolist(), s5:tolist()
        for i = 2, #a do assert(b[i] <= b[i - 1] + 1e-6, 'order changed at ' .. i) end
        assert(#a == #b)
    end)

    it('is Procrustes-optimal: no random orthogonal Q is closer to W', function()
        local Wn = W:mul(1 / H.fro(W:tolist()))
        local best = sfe(Wn, cubic(W, 30))
        for i = 1, 20 do
            local Q = nc.optim.svd(H.randn { 256, 64 })   -- random 256 x 64 with orthonormal columns
            assert(best <= sfe(Wn, Q), 'a random Q beat the polar factor at try ' .. i)
        end
    end)

    it('on a model: changes only matrix weights, resets their optimizer state, training continues', function()
        local Net = nc.nn.Module:extend('FireNet')
        function Net:init()
            self.emb = nc.nn.Embedding(10, 16)
            self.fc = nc.nn.Linear(16, 32, { bias = false })
            self.out = nc.nn.Linear(32, 16, { bias = false })
            self.norm = nc.nn.RMSNorm(16)
        end
        function Net:forward(idx) return self.out(self.fc(self.norm(self.emb(idx))):relu()) end
        nc.manual_seed(3)
        local net = Net()
        local opt = nc.optim.hybrid { model = net, rules = { embedding = { optim = 'adamw', lr = 1e-2 } } }
        local idx = nc.tensor({ 1, 2, 3, 4, 5 }, { dtype = 'i64' })
        local target = H.randn { 5, 16 }
        local function loss() return (net(idx) - target):square():mean() end
        for _ = 1, 20 do loss():backward(); opt:step(); opt:zero_grad() end
        local emb_before, fc_before = net.emb.weight:tolist(), net.fc.weight:tolist()
        local names = nc.optim.fire(net, { optimizer = opt, iters = 10 })
        assert.are.same({ 'fc.weight', 'out.weight' }, names)
        assert.are.same(emb_before, net.emb.weight:tolist())
        assert.are_not.same(fc_before, net.fc.weight:tolist())
        local sd = opt:state_dict()
        assert.are.equal(0, sd.meta.parts.muon.params['fc.weight'].step)
        assert.are.equal(20, sd.meta.parts.adamw.params['emb.weight'].step)
        for _, v in ipairs(sd.tensors['muon/fc.weight.m']:tolist()) do assert.are.equal(0, v) end
        local l0 = loss():item()
        for _ = 1, 30 do loss():backward(); opt:step(); opt:zero_grad() end
        local l1 = loss():item()
        assert(l1 < l0, string.format('loss after FIRE %.4g did not fall (%.4g)', l1, l0))
    end)
end)
