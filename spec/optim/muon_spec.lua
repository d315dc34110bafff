-- spec/optim/muon_spec.lua — quintic Newton-Schulz and the Muon step (algorithms.md §2.7):
-- singular-value range, transpose / scale / orthogonal equivariance, rank-k inputs, agreement
-- with the exact polar factor, Moonlight RMS scaling, Keller vs Moonlight momentum conventions,
-- and the fused C step against a float64 Lua reference. The §2.7 unit tests are stated for fp32:
-- they run with ns_dtype = 'f32' (sgemm). The bf16 Newton-Schulz (ns_dtype = 'bf16', the default
-- 'auto' on AMX / AVX-512 BF16 CPUs) has its own tests below with bf16-sized tolerances, the Gram
-- form of the iteration (ns_form = 'gram', the default for bf16 products on matrices with one side
-- >= 3x the other) too, and nc_muon_step_many (what Muon:step calls) is checked bitwise against
-- one C call per matrix.
package.path = 'spec/optim/?.lua;lua/?.lua;lua/?/init.lua;' .. package.path
local nc = require 'nanochat'
local H = require 'optim_helpers'

local function ns(x) return nc.optim.newton_schulz(x, { dtype = 'f32' }) end
local function ns16(x) return nc.optim.newton_schulz(x, { dtype = 'bf16', form = 'standard' }) end
local function gram16(x) return nc.optim.newton_schulz(x, { dtype = 'bf16', form = 'gram' }) end
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
            local opt = nc.optim.muon({ P }, { lr = lr, weight_decay = wd, scale = scale, ns_dtype = 'f32' })
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
        local oa = nc.optim.muon({ A }, { momentum_form = 'ema', ns_dtype = 'f32' })
        local ob = nc.optim.muon({ B }, { momentum_form = 'sum', ns_dtype = 'f32' })
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
        local opt = nc.optim.muon({ P }, { momentum_warmup = 2, momentum_start = 0.5, ns_dtype = 'f32' })
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

-- bf16 Newton-Schulz: every product's inputs rounded to bf16, f32 accumulation and outputs
describe('bf16 Newton-Schulz (ns_dtype = bf16)', function()
    local function cosine(a, b)
        a, b = a:tolist(), b:tolist()
        local dot, na, nb = 0, 0, 0
        for i = 1, #a do dot = dot + a[i] * b[i]; na = na + a[i] ^ 2; nb = nb + b[i] ^ 2 end
        return dot / math.sqrt(na * nb)
    end

    it('puts every singular value of a 128 x 512 Gaussian in [0.6, 1.25], and of its transpose', function()
        local G = H.randn { 128, 512 }
        for _, x in ipairs { G, G:t():contiguous() } do
            local s = svals(ns16(x))
            for i, v in ipairs(s) do
                assert(v >= 0.6 and v <= 1.25, string.format('singular value %d = %.4f', i, v))
            end
        end
    end)

    it('agrees with the f32 iteration (cosine > 0.99) on random and rank-deficient inputs', function()
        -- measured: 0.9999+ everywhere; bf16 rounding of a rank-k input leaves its null
        -- directions below 1e-3 after NS5 (checked too)
        local cases = { H.randn { 128, 512 }, H.randn { 512, 128 }, H.randn { 6, 10 }, H.randn { 100, 37 } }
        for _, k in ipairs { { 40, 5, 64 }, { 512, 32, 128 } } do
            cases[#cases + 1] = H.randn({ k[1], k[2] }):matmul(H.randn { k[2], k[3] })
        end
        for ci, G in ipairs(cases) do
            local c = cosine(ns16(G), ns(G))
            assert(c > 0.99, string.format('case %d (%s): cosine %.5f', ci, table.concat(G:shape(), 'x'), c))
        end
        for ci = 5, 6 do
            local k = ci == 5 and 5 or 32
            local s = svals(ns16(cases[ci]))
            for i, v in ipairs(s) do
                if i <= k then assert(v > 0.5, string.format('rank case %d: s[%d] = %.4g', ci, i, v))
                else assert(v < 1e-3, string.format('rank case %d: s[%d] = %.4g should vanish', ci, i, v)) end
            end
        end
    end)

    it('commutes with transposition and ignores scale (within bf16 rounding)', function()
        -- bf16 keeps 8 significant bits: scaling changes the f32 input's last bits after the
        -- normalization and so which way some roundings go (measured: 0.017 relative for 1e-3
        -- and 1e3, against 0.03 between the bf16 and the f32 results)
        local G = H.randn { 32, 80 }
        local O = ns16(G)
        local e = H.rel_fro(ns16(G:t():contiguous()), O:t():contiguous():tolist())
        assert(e < 0.01, 'NS(G^T) = NS(G)^T: ' .. e)
        for _, c in ipairs { 1e-3, 1, 1e3 } do
            e = H.rel_fro(ns16(G:mul(c)), O)
            assert(e < 0.05, string.format('NS(%g G) differs by %.3g', c, e))
        end
        local Q = nc.optim.svd(H.randn { 32, 32 })
        e = H.rel_fro(ns16(Q:matmul(G)), Q:matmul(O))
        assert(e < 0.05, 'NS(QG) = Q NS(G): ' .. e)
    end)

    it('Muon with ns_dtype = bf16 lowers a least-squares loss like f32', function()
        local prob = H.lstsq(48, 96, 256)
        local X0 = H.randn({ 48, 96 }, 0.05)
        local final = {}
        for _, dt in ipairs { 'f32', 'bf16' } do
            local X = X0:clone():requires_grad_(true)
            local opt = nc.optim.muon({ X }, { lr = 0.1, ns_dtype = dt })
            for s = 0, 199 do
                prob.loss(X):backward()
                opt:step(1 - s / 200)
                opt:zero_grad()
            end
            final[dt] = prob.loss(X):item()
        end
        local l0 = prob.loss(X0):item()
        -- measured: 0.0078 (f32) and 0.0077 (bf16) from 24.5
        assert(final.f32 < 0.01 * l0, 'f32 Muon did not converge: ' .. final.f32 .. ' from ' .. l0)
        assert(final.bf16 < 0.01 * l0, 'bf16 Muon did not converge: ' .. final.bf16 .. ' from ' .. l0)
        assert(math.abs(final.bf16 - final.f32) <= 0.05 * final.f32,
            string.format('final loss bf16 %.5g vs f32 %.5g', final.bf16, final.f32))
    end)

    it('rejects a bad ns_dtype with a clear error (Lua options and the C field)', function()
        local X = nc.zeros({ 4, 4 }, { requires_grad = true })
        local want = "ns_dtype must be 'auto', 'f32' or 'bf16', got fp16"
        for _, mk in ipairs {
            function() return nc.optim.muon({ X }, { ns_dtype = 'fp16' }) end,
            function() return nc.optim.muon8({ X }, { ns_dtype = 'fp16' }) end,
            function() return nc.optim.galore({ X }, { inner = 'muon', ns_dtype = 'fp16' }) end,
            function() return nc.optim.hybrid { named_params = { { 'w', X } }, rules = { matrix = { optim = 'muon', ns_dtype = 'fp16' } } } end,
            function() return nc.optim.newton_schulz(X, { dtype = 'fp16' }) end,
        } do
            local ok, err = pcall(mk)
            assert(not ok and tostring(err):find(want, 1, true), tostring(err))
        end
        local C = require('nanochat.core').C
        local hp = require('ffi').new('nc_optim_hp', { lr = 0.01, momentum = 0.9, ns_steps = 5, ns_dtype = 7 })
        local g = nc.zeros { 4, 4 }
        assert(C.nc_muon_step(X._c, g._c, nc.zeros({ 4, 4 })._c, hp) ~= 0)
        local msg = require('ffi').string(C.nc_last_error())
        assert(msg:find('muon_step: ns_dtype must be NC_NS_AUTO (0), NC_NS_F32 (1) or NC_NS_BF16 (2), got 7', 1, true), msg)
    end)

    it('resumes bitwise (Muon and 8-bit Muon, ns_dtype bf16 and auto)', function()
        local prob = H.lstsq(24, 40, 64)
        local X0 = H.randn({ 24, 40 }, 0.05)
        local function make() return { { 'x', X0:clone():requires_grad_(true) } } end
        local function loss(named) return prob.loss(named[1][2]) end
        for _, o in ipairs { { 'muon', 'bf16' }, { 'muon8', 'bf16' }, { 'muon', 'auto' } } do
            local a, c = H.resume_pair(make, function(named)
                return nc.optim[o[1]]({ named[1][2] }, { lr = 0.02, ns_dtype = o[2] })
            end, loss, 3)
            H.bitwise(a[1][2], c[1][2], o[1] .. ' ' .. o[2] .. ' resumed')
        end
    end)
end)

-- Gram form: the same quintic polynomial run on the small (r x r) side, restarting every 3 steps.
-- Explicit dtype = 'bf16' runs on every CPU (the scalar reference GEMM where no hardware one is).
describe('Gram Newton-Schulz (ns_form = gram)', function()
    local function cosine(a, b)
        local d = (a * b):sum():item()
        return d / math.sqrt((a * a):sum():item() * (b * b):sum():item())
    end
    -- U diag(fn(i)) V^T with random orthonormal U, V
    local function with_svals(m, n, fn)
        local k = math.min(m, n)
        local U, V = nc.optim.svd(H.randn { m, k }), nc.optim.svd(H.randn { n, k })
        local sv = {}
        for i = 1, k do sv[i] = fn(i, k) end
        return (U * nc.tensor(sv):reshape { 1, k }):matmul(V:t())
    end

    it('agrees with the f32 standard iteration, closer than the bf16 standard form on full-rank inputs', function()
        -- measured (gram / bf16 standard): Gaussian 128x512 0.99996 / 0.99987, 512x128 0.99996 /
        -- 0.99984; log-spaced singular values 1e-4..1: 0.9999 / 0.99998. The gram form keeps the
        -- mean diagonal of R, P and Q out of the bf16 products; without that it measured 0.9994.
        local G = H.randn { 128, 512 }
        for _, x in ipairs { G, G:t():contiguous() } do
            local ref = ns(x)
            local cg, cs = cosine(gram16(x), ref), cosine(ns16(x), ref)
            assert(cg > 0.9999, 'gram cosine ' .. cg)
            assert(cg > cs, string.format('gram %.6f not closer than standard bf16 %.6f', cg, cs))
            for i, v in ipairs(svals(gram16(x))) do
                assert(v >= 0.6 and v <= 1.25, string.format('singular value %d = %.4f', i, v))
            end
        end
        local L = with_svals(96, 384, function(i, k) return 10 ^ (-4 * (i - 1) / (k - 1)) end)
        local c = cosine(gram16(L), ns(L))
        assert(c > 0.9995, 'log-spaced spectrum: cosine ' .. c)
    end)

    it('keeps the null directions of rank-deficient inputs small', function()
        -- measured: rank 32 of 512 x 128: null singular values <= 3.6e-3 (bf16 standard 3.2e-4),
        -- cosine to f32 0.9999; rank 5 of 40 x 128: 3.3e-4, cosine 0.99948
        for _, k in ipairs { { 512, 32, 128 }, { 40, 5, 128 } } do
            local G = H.randn({ k[1], k[2] }):matmul(H.randn { k[2], k[3] })
            local O = gram16(G)
            local c = cosine(O, ns(G))
            assert(c > 0.999, string.format('rank %d of %dx%d: cosine %.5f', k[2], k[1], k[3], c))
            for i, v in ipairs(svals(O)) do
                if i <= k[2] then assert(v > 0.5, string.format('rank %d: s[%d] = %.4g', k[2], i, v))
                else assert(v < 1e-2, string.format('rank %d: s[%d] = %.4g should stay near 0', k[2], i, v)) end
            end
        end
    end)

    it('is the same polynomial: the f32 iterate up to bf16 rounding for any step count', function()
        -- measured cosine to f32 (gram / bf16 standard), 48 x 200: 1 step 1.0 / 1.0, 3: 0.99986 /
        -- 0.99980, 5: 0.99968 / 0.99933, 7: 0.99939 / 0.99858 (both drift as steps accumulate
        -- rounding; restarts at steps 3 and 6 exercise the block boundaries)
        local G = H.randn { 48, 200 }
        for _, steps in ipairs { 1, 2, 3, 4, 5, 6, 7 } do
            local b = nc.optim.newton_schulz(G, { dtype = 'f32', steps = steps })
            local cg = cosine(nc.optim.newton_schulz(G, { dtype = 'bf16', form = 'gram', steps = steps }), b)
            local cs = cosine(nc.optim.newton_schulz(G, { dtype = 'bf16', form = 'standard', steps = steps }), b)
            assert(cg > 0.999 and cg > cs - 1e-4, string.format('%d steps: cosine gram %.6f, standard %.6f', steps, cg, cs))
        end
        local z = nc.optim.newton_schulz(G, { dtype = 'bf16', form = 'gram', steps = 0 })
        H.close(z, (G / math.sqrt((G * G):sum():item())):tolist(), 1e-5, 1e-6, 'zero steps: the normalized input')
    end)

    it("'auto' picks gram when the long side is >= 3x the short one and the short one >= 64", function()
        for _, sh in ipairs { { 64, 192 }, { 192, 64 }, { 64, 191 }, { 32, 96 }, { 63, 256 }, { 48, 48 } } do
            local G = H.randn(sh)
            local lo, hi = math.min(sh[1], sh[2]), math.max(sh[1], sh[2])
            local want = hi >= 3 * lo and lo >= 64 and 'gram' or 'standard'
            for _, dt in ipairs { 'bf16', 'f32' } do
                local auto = nc.optim.newton_schulz(G, { dtype = dt })
                H.bitwise(auto, nc.optim.newton_schulz(G, { dtype = dt, form = want }), table.concat(sh, 'x') .. ' auto ' .. dt)
            end
        end
        -- a square matrix has nothing to gain: gram runs the standard form there
        local S = H.randn { 40, 40 }
        H.bitwise(gram16(S), ns16(S), 'square')
    end)

    it('gives the same result on the reference GEMM and the hardware one', function()
        if not nc.cpu_gemm_fast() then pending('no hardware bf16 GEMM: ' .. nc.gemm_backend()) return end
        local G = H.randn { 64, 256 }
        local hw = gram16(G)
        nc.set_gemm_backend('reference')
        local ok, ref = pcall(gram16, G)
        nc.set_gemm_backend(os.getenv('NC_GEMM') or 'auto')
        assert(ok, tostring(ref))
        -- the two GEMMs sum each element's products in different orders (f32): not bitwise
        H.close(ref, hw:tolist(), 1e-4, 1e-3, 'reference vs hardware GEMM')
    end)

    it('Muon with ns_form = gram lowers a least-squares loss like f32, and resumes bitwise', function()
        local prob = H.lstsq(24, 96, 128)
        local X0 = H.randn({ 24, 96 }, 0.05)
        local final = {}
        for _, o in ipairs { { 'f32', 'standard' }, { 'bf16', 'gram' } } do
            local X = X0:clone():requires_grad_(true)
            local opt = nc.optim.muon({ X }, { lr = 0.1, ns_dtype = o[1], ns_form = o[2] })
            for st = 0, 149 do
                prob.loss(X):backward()
                opt:step(1 - st / 150)
                opt:zero_grad()
            end
            final[o[2]] = prob.loss(X):item()
        end
        local l0 = prob.loss(X0):item()
        assert(final.gram < 0.02 * l0, 'gram Muon did not converge: ' .. final.gram .. ' from ' .. l0)
        assert(math.abs(final.gram - final.standard) <= 0.05 * final.standard,
            string.format('final loss gram %.5g vs f32 %.5g', final.gram, final.standard))
        local function make() return { { 'x', X0:clone():requires_grad_(true) } } end
        local function loss(named) return prob.loss(named[1][2]) end
        for _, kind in ipairs { 'muon', 'muon8' } do
            local a, c = H.resume_pair(make, function(named)
                return nc.optim[kind]({ named[1][2] }, { lr = 0.02, ns_dtype = 'bf16', ns_form = 'gram' })
            end, loss, 3)
            H.bitwise(a[1][2], c[1][2], kind .. ' gram resumed')
        end
    end)

    it('rejects a bad ns_form with a clear error (Lua options and the C field)', function()
        local X = nc.zeros({ 4, 8 }, { requires_grad = true })
        local bad = "ns_form must be 'auto', 'standard' or 'gram', got fast"
        for _, mk in ipairs {
            function() return nc.optim.muon({ X }, { ns_form = 'fast' }) end,
            function() return nc.optim.galore({ X }, { inner = 'muon8', ns_form = 'fast' }) end,
            function() return nc.optim.hybrid { named_params = { { 'w', X } }, rules = { matrix = { optim = 'muon', ns_form = 'fast' } } } end,
            function() return nc.optim.newton_schulz(X, { form = 'fast' }) end,
        } do
            local ok, err = pcall(mk)
            assert(not ok and tostring(err):find(bad, 1, true), tostring(err))
        end
        local ffi, C = require 'ffi', require('nanochat.core').C
        local g, m = nc.zeros { 4, 8 }, nc.zeros { 4, 8 }
        local hp = ffi.new('nc_optim_hp', { lr = 0.01, momentum = 0.9, ns_steps = 5, ns_form = 7 })
        assert(C.nc_muon_step(X._c, g._c, m._c, hp) ~= 0)
        local msg = ffi.string(C.nc_last_error())
        assert(msg:find('muon_step: ns_form must be NC_NS_FORM_AUTO (0), NC_NS_FORM_STANDARD (1) or NC_NS_FORM_GRAM (2), got 7', 1, true), msg)
        assert(X:abs():sum():item() == 0 and m:abs():sum():item() == 0, 'a rejected step changed state')
    end)

    it('with f32 products equals the f32 standard form to f32 rounding, rank-deficient inputs included', function()
        -- measured: cosine 1 - <1e-7 and the same singular values to 3 digits on every input of the
        -- bf16 table (README), null directions of a rank-32 input at ~4e-6 as in the standard form
        local cases = { H.randn { 64, 256 }, H.randn { 256, 64 }, H.randn({ 256, 16 }):matmul(H.randn { 16, 64 }) }
        for ci, G in ipairs(cases) do
            local a = nc.optim.newton_schulz(G, { dtype = 'f32', form = 'gram' })
            local b = nc.optim.newton_schulz(G, { dtype = 'f32', form = 'standard' })
            local c = cosine(a, b)
            assert(c > 1 - 1e-6, string.format('case %d: cosine %.9f', ci, c))
        end
        local s = svals(nc.optim.newton_schulz(cases[3], { dtype = 'f32', form = 'gram' }))
        for i = 17, #s do assert(s[i] < 1e-4, string.format('rank 16: s[%d] = %.3g should vanish', i, s[i])) end
    end)
end)

describe('nc_muon_step_many', function()
    it('gives the bits of one nc_muon_step / nc_muon8_step per matrix (shared and alone paths)', function()
        -- a 256 x 512 matrix costs more than a thread's share of this set (runs alone on every
        -- thread); the small ones run one per thread; a group with 8-bit state and one in f32
        local B = require 'nanochat.optim.base'
        for _, dt in ipairs { 'bf16', 'f32', 'auto' } do
            local shapes = { { 256, 512 }, { 64, 32 }, { 32, 96 }, { 48, 48 }, { 96, 16 }, { 8, 40 } }
            local function params()
                local out = {}
                for i, s in ipairs(shapes) do out[i] = H.randn(s, 0.1) end
                return out
            end
            local init = params()
            local function setup()
                local ps = {}
                for i, t in ipairs(init) do ps[i] = t:clone():requires_grad_(true) end
                local opt = nc.optim.muon({ { params = { ps[1], ps[2], ps[3] } },
                    { params = { ps[4], ps[5], ps[6] }, state_bits = 8, block = 256, rounding = 'stochastic' } },
                    { lr = 0.02, weight_decay = 0.1, ns_dtype = dt })
                return ps, opt
            end
            local pa, oa = setup()
            local pb, ob = setup()
            for s = 1, 3 do
                local gs = params()
                for i = 1, #shapes do pa[i].grad, pb[i].grad = gs[i], gs[i] end
                oa:step(1 / s)                 -- Muon:step: one nc_muon_step_many call
                B.Optimizer.step(ob, 1 / s)    -- the generic loop: one C call per matrix
            end
            for i = 1, #shapes do H.bitwise(pa[i], pb[i], dt .. ': matrix ' .. i) end
        end
    end)

    it('f32 products in the shared pass (OpenBLAS on one thread per matrix) give the bits of threaded calls', function()
        -- three 192 x 768 matrices (above the serial threshold: one nc_muon_step runs OpenBLAS on
        -- every thread) share the pass with two small ones; standard and Gram forms
        local B = require 'nanochat.optim.base'
        for _, form in ipairs { 'standard', 'auto' } do
            local shapes = { { 192, 768 }, { 768, 192 }, { 192, 768 }, { 64, 32 }, { 16, 96 } }
            local init, gs = {}, {}
            for i, sh in ipairs(shapes) do init[i], gs[i] = H.randn(sh, 0.1), H.randn(sh) end
            local function setup()
                local ps = {}
                for i, t in ipairs(init) do ps[i] = t:clone():requires_grad_(true) end
                return ps, nc.optim.muon(ps, { lr = 0.02, ns_dtype = 'f32', ns_form = form })
            end
            local pa, oa = setup()
            local pb, ob = setup()
            for s = 1, 2 do
                for i = 1, #shapes do pa[i].grad, pb[i].grad = gs[i], gs[i] end
                oa:step(1 / s)
                B.Optimizer.step(ob, 1 / s)
            end
            for i = 1, #shapes do H.bitwise(pa[i], pb[i], form .. ': matrix ' .. i) end
        end
    end)

    it('names the matrix at fault and changes no state on a bad entry', function()
        local A = nc.zeros({ 8, 8 }, { requires_grad = true })
        local Bp = nc.zeros({ 8, 8 }, { requires_grad = true })
        local opt = nc.optim.muon({ A, Bp })
        A.grad = nc.ones { 8, 8 }
        Bp.grad = nc.ones { 4, 8 }
        local ok, err = pcall(opt.step, opt)
        assert(not ok and tostring(err):find('muon (p2)', 1, true) and tostring(err):find('g must have 64 elements', 1, true),
            tostring(err))
        assert(A:abs():sum():item() == 0, 'the first matrix was updated before the check of the second')
        assert(opt.t == 0 and opt.state[A].meta.step == 0, 'the failed step was counted')
        -- the C entry: an entry with neither m nor codes / scales, a NULL p, a bad count
        local ffi, C = require 'ffi', require('nanochat.core').C
        local P, G = ffi.new('nc_tensor *[2]', { A._c, Bp._c }), ffi.new('const nc_tensor *[2]', { A.grad._c, A.grad._c })
        local m0, m1 = nc.zeros { 8, 8 }, nc.zeros { 8, 8 }   -- kept referenced: the arrays hold raw pointers
        local M = ffi.new('nc_tensor *[2]')   -- (a one-element initializer would be replicated)
        M[0] = m0._c
        local HP = ffi.new('nc_optim_hp[2]')
        for i = 0, 1 do HP[i].lr, HP[i].momentum, HP[i].ns_steps = 0.01, 0.9, 5 end
        local failed = ffi.new('int32_t[1]')
        local rc = C.nc_muon_step_many(2, P, G, M, nil, nil, HP, failed)
        local msg = ffi.string(C.nc_last_error())
        assert(rc ~= 0 and failed[0] == 1, msg .. ' rc ' .. rc .. ' failed ' .. failed[0])
        assert(msg:find('muon_step_many: entry 1 has neither m nor codes and scales', 1, true), msg)
        M[1] = m1._c
        P[0] = nil
        local rc0 = C.nc_muon_step_many(2, P, G, M, nil, nil, HP, failed)
        assert(rc0 ~= 0 and failed[0] == 0, ffi.string(C.nc_last_error()) .. " rc " .. rc0 .. " failed " .. failed[0])
        msg = ffi.string(C.nc_last_error())
        assert(msg:find('muon_step: p is NULL', 1, true) or msg:find('muon_step: expected p', 1, true), msg)
        assert(C.nc_muon_step_many(-1, P, G, M, nil, nil, HP, failed) ~= 0 and failed[0] == -1)
        assert(A:abs():sum():item() == 0 and Bp:abs():sum():item() == 0, 'a failed call changed a parameter')
    end)
end)
