-- spec/optim/muon_spec.lua — quintic Newton-Schulz and the Muon step (algorithms.md §2.7):
-- singular-value range, transpose / scale / orthogonal equivariance, rank-k inputs, agreement
-- with the exact polar factor, Moonlight RMS scaling, Keller vs Moonlight momentum conventions,
-- and the fused C step against a float64 Lua reference.
package.path = 'spec/optim/?.lua;lua/?.lua;lua/?/init.lua;' .. package.path
local nc = require 'nanochat'
local H = require 'optim_helpers'

local ns = nc.optim.newton_schulz
local QUINTIC = { 3.4445, -4.7750, 2.0315 }

local function svals(x) local _, s = nc.optim.svd(x); return s:tolist() end

-- exact polar factor U V^T (f64 SVD)
local function polar(x)
    local u, _, vt = nc.optim.svd(x:to('f64'))
    return u:to('f32'):matmul(vt:to('f32'))
end

describe('quintic Newton-Schulz', function()
    it('puts every singular value of a 128 x 512 Gaussian in [0.6, 1.25], and of its transpose', function()
        local G = H.randn { 128, 512 }
        for _, x in ipairs { G, G:t():contiguous() } do
            local s = svals(ns(x))
            for i, v in ipairs(s) do
                assert(v >= 0.6 and v <= 1.25, string.format('singular value %d = %.4f', i, v))
            end
        end
    end)

    it('commutes with transposition, ignores scale, and is equivariant under orthogonal Q', function()
        local G = H.randn { 32, 80 }
        local O = ns(G)
        assert(H.rel_fro(ns(G:t():contiguous()), O:t():contiguous():tolist()) < 1e-5, 'NS(G^T) = NS(G)^T')
        for _, c in ipairs { 1e-3, 1, 1e3 } do
            local e = H.rel_fro(ns(G:mul(c)), O)
            assert(e < 1e-5, string.format('NS(%g G) differs by %.3g', c, e))
        end
        local Q = nc.optim.svd(H.randn { 32, 32 })   -- U of a random square matrix: orthogonal
        local e = H.rel_fro(ns(Q:matmul(G)), Q:matmul(O))
        assert(e < 1e-5, 'NS(QG) = Q NS(G): ' .. e)
    end)

    it('keeps exactly k singular values of a rank-k input', function()
        local k = 5
        local G = H.randn({ 40, k }):matmul(H.randn { k, 64 })
        local s = svals(ns(G))
        for i, v in ipairs(s) do
            -- fp32: the zero singular values of G are ~1e-7 relative and NS5 amplifies small
            -- values by up to 3.4445^5 ~ 480, so "zero" means < 1e-3 here (~1e-6 in fp64)
            if i <= k then assert(v > 0.5, string.format('s[%d] = %.4g', i, v))
            else assert(v < 1e-3, string.format('s[%d] = %.4g should vanish', i, v)) end
        end
    end)

    it('is close to the exact polar factor U V^T (cosine > 0.95)', function()
        local G = H.randn { 64, 96 }
        local a, b = ns(G):tolist(), polar(G):tolist()
        local dot, na, nb = 0, 0, 0
        for i = 1, #a do dot = dot + a[i] * b[i]; na = na + a[i] ^ 2; nb = nb + b[i] ^ 2 end
        local cos = dot / math.sqrt(na * nb)
        assert(cos > 0.95, 'cosine ' .. cos)
    end)

    it('matches the float64 reference iteration', function()
        for _, shape in ipairs { { 6, 10 }, { 10, 6 } } do
            local G = H.randn(shape)
            local want = H.ns_ref(G:tolist(), shape[1], shape[2], 5, QUINTIC, 1e-7)
            H.close(ns(G), want, 2e-6, 2e-6, 'NS5 ' .. shape[1] .. 'x' .. shape[2])
        end
    end)

    it('Moonlight scaling gives an update RMS in [0.13, 0.24]', function()
        for _, shape in ipairs { { 64, 256 }, { 256, 64 }, { 128, 128 } } do
            local O = ns(H.randn(shape))
            local rms = 0.2 * math.sqrt(math.max(shape[1], shape[2])) * H.fro(O:tolist()) / math.sqrt(O:numel())
            assert(rms >= 0.13 and rms <= 0.24, string.format('rms %.4f for %dx%d', rms, shape[1], shape[2]))
        end
    end)
end)

describe('nc.optim.muon', function()
    it('matches a float64 reference (Nesterov, wd, spectral and rms scaling) over 3 steps', function()
        for _, case in ipairs { { { 6, 10 }, 'spectral' }, { { 10, 6 }, 'spectral' }, { { 10, 6 }, 'rms' } } do
            local shape, scale = case[1], case[2]
            local rows, cols = shape[1], shape[2]
            local P = H.randn(shape)
            local p, m = P:tolist(), {}
            for i = 1, #p do m[i] = 0 end
            P:requires_grad_(true)
            local lr, wd, mu = 0.02, 0.1, 0.95
            local opt = nc.optim.muon({ P }, { lr = lr, weight_decay = wd, scale = scale })
            local sc = scale == 'rms' and 0.2 * math.sqrt(math.max(rows, cols)) or math.sqrt(math.max(1, rows / cols))
            for _ = 1, 3 do
                local g = H.randn(shape)
                local gl = g:tolist()
                P.grad = g
                opt:step()
                local u = {}
                for i = 1, #p do
                    m[i] = mu * m[i] + (1 - mu) * gl[i]
                    u[i] = (1 - mu) * gl[i] + mu * m[i]
                end
                local O = H.ns_ref(u, rows, cols, 5, QUINTIC, 1e-7)
                for i = 1, #p do p[i] = p[i] * (1 - lr * wd) - lr * sc * O[i] end
            end
            H.close(P, p, 2e-6, 2e-6, string.format('muon %dx%d %s', rows, cols, scale))
        end
    end)

    it('gives the same updates with Keller (EMA) and Moonlight (sum) momentum over 10 steps', function()
        local P0 = H.randn { 12, 20 }
        local A = P0:clone():requires_grad_(true)
        local B = P0:clone():requires_grad_(true)
        local oa = nc.optim.muon({ A }, { momentum_form = 'ema' })
        local ob = nc.optim.muon({ B }, { momentum_form = 'sum' })
        for _ = 1, 10 do
            local g = H.randn { 12, 20 }
            A.grad, B.grad = g, g
            oa:step()
            ob:step()
        end
        local e = H.rel_fro(B, A)
        assert(e < 1e-5, 'parameters differ by ' .. e)
    end)
end)

-- momentum warmup / cooldown (algorithms.md §2.5)
describe('Muon momentum schedule', function()
    local Muon = require 'nanochat.optim.muon'
    local function near(a, b, what) assert(math.abs(a - b) < 1e-12, string.format('%s: %.15g vs %.15g', what, a, b)) end

    it('ramps 0.85 -> 0.95 over the warmup and down to momentum_end over the last cooldown steps', function()
        local g = { momentum = 0.95, momentum_warmup = 300, momentum_start = 0.85, momentum_cooldown = 50,
                    momentum_end = 0.85, total_steps = 1000 }
        near(Muon.momentum_at(g, 0), 0.85, 'step 0')
        near(Muon.momentum_at(g, 150), 0.90, 'step 150')
        near(Muon.momentum_at(g, 299), 0.85 + 0.1 * 299 / 300, 'step 299')
        near(Muon.momentum_at(g, 300), 0.95, 'step 300')
        near(Muon.momentum_at(g, 949), 0.95, 'step 949 (before the cooldown)')
        near(Muon.momentum_at(g, 950), 0.95 - 0.1 / 50, 'step 950 (first cooldown step)')
        near(Muon.momentum_at(g, 974), 0.95 - 0.1 * 25 / 50, 'step 974')
        near(Muon.momentum_at(g, 999), 0.85, 'last step')
        near(Muon.momentum_at({ momentum = 0.95 }, 0), 0.95, 'no schedule')
    end)

    it('the fused step uses the scheduled momentum (f32 state against a float64 recurrence)', function()
        local P = H.randn({ 6, 10 }):requires_grad_(true)
        local opt = nc.optim.muon({ P }, { momentum_warmup = 2, momentum_start = 0.5 })
        local m = {}
        for i = 1, 60 do m[i] = 0 end
        for t = 0, 3 do
            local g = H.randn { 6, 10 }
            P.grad = g
            opt:step()
            local mu = ({ 0.5, 0.725, 0.95, 0.95 })[t + 1]
            local gl = g:tolist()
            for i = 1, 60 do m[i] = mu * m[i] + (1 - mu) * gl[i] end
            H.close(opt:state_dict().tensors['p1.m'], m, 1e-6, 1e-6, 'momentum after step ' .. t)
        end
    end)

    it('rejects bad schedule options with a clear error', function()
        local X = nc.zeros({ 4, 4 }, { requires_grad = true })
        local ok, err = pcall(nc.optim.muon, { X }, { momentum_warmup = -1 })
        assert(not ok and tostring(err):find('muon: momentum_warmup must be an integer >= 0, got -1', 1, true), tostring(err))
        ok, err = pcall(nc.optim.muon, { X }, { momentum_start = 1.5 })
        assert(not ok and tostring(err):find('muon: momentum_start must lie in [0, 1), got 1.5', 1, true), tostring(err))
        ok, err = pcall(nc.optim.muon8, { X }, { momentum_cooldown = 50 })
        assert(not ok and tostring(err):find('needs total_steps >= 50', 1, true), tostring(err))
    end)
end)
