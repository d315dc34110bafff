-- spec/optim/galore_spec.lua — GaLore 2 (algorithms.md §4.6): projector orthonormality, exact
-- reconstruction of low-rank gradients, captured energy, randomized SVD subspace accuracy,
-- equivalence with Adam when the projector is the identity, low-rank state shapes and the
-- state-size ratio against AdamW, and the projector living in the state dict.
package.path = 'spec/optim/?.lua;lua/?.lua;lua/?/init.lua;' .. package.path
local nc = require 'nanochat'
local H = require 'optim_helpers'

local function eye_err(P)   -- max |P^T P - I|
    local G = P:t():matmul(P):tolist()
    local r = P:size(1)
    local worst = 0
    for i = 0, r - 1 do
        for j = 0, r - 1 do worst = math.max(worst, math.abs(G[i * r + j + 1] - (i == j and 1 or 0))) end
    end
    return worst
end

local function energy(X) local s = 0; for _, v in ipairs(X:tolist()) do s = s + v * v end; return s end

describe('GaLore projector', function()
    it('has orthonormal columns (randomized and exact, both sides)', function()
        local G = H.randn { 48, 80 }
        for _, side in ipairs { 'left', 'right' } do
            local P = nc.optim.rsvd(G, 12, { side = side })
            assert.are.same({ side == 'left' and 48 or 80, 12 }, P:shape())
            assert(eye_err(P) < 1e-5, side .. ': |P^T P - I| = ' .. eye_err(P))
        end
    end)

    it('reconstructs a gradient of rank <= r exactly (alpha = 1)', function()
        local G = H.randn({ 40, 6 }):matmul(H.randn { 6, 70 })
        local P = nc.optim.rsvd(G, 8, { side = 'left' })          -- R = P^T G, back = P R
        assert(H.rel_fro(P:matmul(P:t():matmul(G)), G) < 1e-5, 'left')
        local Q = nc.optim.rsvd(G, 8, { side = 'right' })         -- R = G Q, back = R Q^T
        assert(H.rel_fro(G:matmul(Q):matmul(Q:t()), G) < 1e-5, 'right')
    end)

    it('captures the top-r energy, more than a random subspace', function()
        local G = H.randn({ 64, 64 }):matmul(nc.tensor(nc.arange(64):tolist()):add(1):pow(-1):unsqueeze(1):mul(H.randn { 64, 64 }))
        local r = 8
        local _, s = nc.optim.svd(G:to('f64'))
        local sl, top, tot = s:tolist(), 0, 0
        for i, v in ipairs(sl) do tot = tot + v * v; if i <= r then top = top + v * v end end
        local P = nc.optim.rsvd(G, r, { side = 'left', power_iters = 2 })
        local frac = energy(P:t():matmul(G)) / energy(G)
        assert(math.abs(frac - top / tot) < 1e-3 * (top / tot), string.format('captured %.6f, top-r %.6f', frac, top / tot))
        local Rnd = nc.optim.svd(H.randn { 64, r })   -- a random orthonormal basis
        assert(frac > energy(Rnd:t():matmul(G)) / energy(G))
    end)

    it('randomized SVD finds the rank-r subspace of a noisy 512 x 256 matrix (angle < 1e-2 rad, q = 2)', function()
        local r = 16
        local G = H.randn({ 512, r }):matmul(H.randn { r, 256 }) + H.randn({ 512, 256 }, 1e-3)
        local u = nc.optim.svd(G:to('f64'))
        local U = u:narrow(1, 0, r):to('f32')
        for _, side in ipairs { 'left', 'right' } do
            local P, E = nc.optim.rsvd(G, r, { side = side, power_iters = 2 })
            if side == 'left' then E = U else E = ({ nc.optim.svd(G:t():contiguous():to('f64')) })[1]:narrow(1, 0, r):to('f32') end
            local _, c = nc.optim.svd(E:t():matmul(P):to('f64'))   -- cosines of the principal angles
            local cl = c:tolist()
            local angle = math.acos(math.min(1, cl[#cl]))
            assert(angle < 1e-2, side .. ': largest principal angle ' .. angle)
        end
    end)
end)

describe('nc.optim.galore', function()
    it('equals Adam (GaLore eps placement) with the identity projector, alpha 1, wd 0, over 10 steps', function()
        for _, shape in ipairs { { 10, 6 }, { 6, 10 } } do
            local P0 = H.randn(shape)
            local A = P0:clone():requires_grad_(true)
            local B = P0:clone():requires_grad_(true)
            local oa = nc.optim.galore({ A }, { svd = 'identity', alpha = 1, lr = 1e-2, eps = 1e-6 })
            local ob = nc.optim.adamw({ B }, { eps_mode = 'galore', lr = 1e-2, eps = 1e-6 })
            assert.is_true(oa:projection_info().p1.projected)
            for _ = 1, 10 do
                local g = H.randn(shape)
                A.grad, B.grad = g, g
                oa:step(); ob:step()
            end
            H.close(A, B:tolist(), 1e-6, 1e-6, 'galore(identity) vs adam')
        end
    end)

    it('keeps the inner state at the low-rank shape, side chosen by shape', function()
        local W1 = nc.zeros({ 64, 32 }, { requires_grad = true })   -- m >= n: right, R (64, 8)
        local W2 = nc.zeros({ 32, 64 }, { requires_grad = true })   -- m < n: left, R (8, 64)
        local b = nc.zeros({ 32 }, { requires_grad = true })        -- not a matrix: unprojected
        for _, inner in ipairs { 'adamw', 'muon8' } do
            local list = { { 'w1', W1 }, { 'w2', W2 } }
            if inner == 'adamw' then list[3] = { 'b', b } end   -- a Muon inner optimizer takes matrices only
            local opt = nc.optim.galore(list, { inner = inner, block = 64 })
            local info = opt:projection_info()
            assert.are.same({ projected = true, side = 'right', rank = 8, lowrank = { 64, 8 } }, info.w1)
            assert.are.same({ projected = true, side = 'left', rank = 8, lowrank = { 8, 64 } }, info.w2)
            local t = opt:state_dict().tensors
            assert.are.same({ 32, 8 }, t['w1.proj']:shape())
            assert.are.same({ 32, 8 }, t['w2.proj']:shape())
            if inner == 'adamw' then
                assert.are.same({ 64, 8 }, t['w1.m']:shape())
                assert.are.same({ 64, 8 }, t['w1.v']:shape())
                assert.are.same({ 8, 64 }, t['w2.v']:shape())
                assert.are.same({ 32 }, t['b.m']:shape())
                assert.is_false(info.b.projected)
            else
                assert.are.same({ 512 }, t['w1.codes']:shape())
                assert.are.same({ 8 }, t['w1.scales']:shape())
            end
        end
    end)

    it('needs <= 40% of AdamW state for the projected matrices at rank = min/4', function()
        for _, shape in ipairs { { 64, 64 }, { 64, 256 }, { 256, 64 } } do
            local W = nc.zeros(shape, { requires_grad = true })
            local ratio = nc.optim.galore({ W }):state_bytes() / nc.optim.adamw({ W }):state_bytes()
            assert(ratio <= 0.40, string.format('%dx%d: ratio %.3f', shape[1], shape[2], ratio))
        end
    end)

    it('refreshes the projector every update_gap steps and restores it from the state dict', function()
        local W = H.randn({ 20, 12 }):requires_grad_(true)
        local opt = nc.optim.galore({ W }, { rank = 3, update_gap = 2 })
        local projs = {}
        for s = 1, 4 do
            W.grad = H.randn { 20, 12 }
            opt:step()
            projs[s] = opt:state_dict().tensors['p1.proj']:clone()
        end
        H.bitwise(projs[2], projs[1], 'no refresh at step 2')
        assert.are_not.same(projs[3]:tolist(), projs[2]:tolist())
        H.bitwise(projs[4], projs[3], 'no refresh at step 4')
        assert.are.equal(2, opt:state_dict().meta.params.p1.refreshes)
    end)

    it('exact-SVD projector (GaLore 1) spans the top singular vectors', function()
        local W = nc.zeros({ 30, 18 }, { requires_grad = true })
        local opt = nc.optim.galore({ W }, { rank = 4, svd = 'exact' })
        local G = H.randn { 30, 18 }
        W.grad = G
        opt:step()
        local Q = opt:state_dict().tensors['p1.proj']
        local _, _, vt = nc.optim.svd(G)
        H.close(Q:t():matmul(vt:narrow(0, 0, 4):t()):abs():sum(0), { 1, 1, 1, 1 }, 1e-5, 0, 'basis')
    end)
end)
