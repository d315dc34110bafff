-- spec/optim/muon8_spec.lua — 8-bit Muon (algorithms.md §3.4): blockwise absmax round trip
-- bound, zero blocks, state size, stochastic rounding (seeded, deterministic, unbiased), the
-- dynamic code map (codebook construction, nearest entry, round trip on Gaussian and heavy-tailed
-- blocks, fused state under muon8 and GaLore), and 200 least-squares steps tracking fp32 Muon
-- (final loss within 1%; update cosine: mean > 0.99 with the dynamic map, but NOT > 0.99 at every
-- step for any 8-bit option; the measured numbers and the reason are above that test).
package.path = 'spec/optim/?.lua;lua/?.lua;lua/?/init.lua;' .. package.path
local nc = require 'nanochat'
local H = require 'optim_helpers'

describe('8-bit blockwise quantization', function()
    it('round trip error <= s_b / 254 per element (nearest), tail block included', function()
        local n, block = 5000, 2048   -- 3 blocks, the last one partial
        local x = H.randn({ n })
        local codes, scales = nc.optim.quant8(x, { block = block })
        assert.are.equal(math.ceil(n / block), scales:numel())
        local y = nc.optim.dequant8(codes, scales, { n }, block):tolist()
        local xl, s = x:tolist(), scales:tolist()
        for i = 1, n do
            local sb = s[math.floor((i - 1) / block) + 1]
            local e = math.abs(xl[i] - y[i])
            assert(e <= sb / 254 + 1e-7, string.format('element %d: error %.3g > %.3g', i, e, sb / 254))
        end
    end)

    it('an all-zero block gives zero codes, scale 0 and exact zeros (no NaN)', function()
        local x = nc.zeros { 100 }
        x:narrow(0, 64, 36):copy_(H.randn { 36 })
        local codes, scales = nc.optim.quant8(x, { block = 32 })
        assert.are.equal(0, scales:tolist()[1])
        local y = nc.optim.dequant8(codes, scales, { 100 }, 32):tolist()
        for i = 1, 64 do assert.are.equal(0, y[i]) end
        for i = 1, 100 do assert(y[i] == y[i], 'NaN at ' .. i) end
    end)

    it('stochastic rounding is seeded, deterministic and unbiased', function()
        local x = nc.full({ 4096 }, 0.3)
        x:set(0, 1.0)   -- scale 1: 127 * 0.3 = 38.1 lies between codes 38 and 39
        local c1 = nc.optim.quant8(x, { block = 4096, stochastic = true, seed = 5, counter = 0 })
        local c2 = nc.optim.quant8(x, { block = 4096, stochastic = true, seed = 5, counter = 0 })
        local c3 = nc.optim.quant8(x, { block = 4096, stochastic = true, seed = 6, counter = 0 })
        H.bitwise(c1, c2, 'same seed')
        assert.are_not.same(c1:tolist(), c3:tolist())
        local l, mean, hi = c1:tolist(), 0, 0
        for i = 2, #l do
            assert(l[i] == 38 or l[i] == 39, 'code ' .. l[i])
            mean = mean + l[i]
            if l[i] == 39 then hi = hi + 1 end
        end
        mean = mean / (#l - 1)
        -- E[code] = 38.1; the mean of 4095 Bernoulli(0.1) draws has sd 0.0047
        assert(math.abs(mean - 38.1) < 0.03, 'mean code ' .. mean)
    end)
end)

-- the dynamic code map (nanochat.h enum nc_quant8_map): codebook, nearest entry, round trip
describe('8-bit dynamic code map', function()
    local function top10_rel(x, y)   -- ||x - y|| / ||x|| over the 10% largest |x|
        local idx = {}
        for i = 1, #x do idx[i] = i end
        table.sort(idx, function(a, b) return math.abs(x[a]) > math.abs(x[b]) end)
        local e2, x2 = 0, 0
        for j = 1, math.floor(#x / 10) do
            local i = idx[j]
            e2 = e2 + (x[i] - y[i]) ^ 2
            x2 = x2 + x[i] ^ 2
        end
        return math.sqrt(e2 / x2)
    end
    local function roundtrip(x, quant)
        local codes, scales = nc.optim.quant8(x, { block = 2048, quant = quant })
        return nc.optim.dequant8(codes, scales, { x:numel() }, 2048, quant):tolist(), codes, scales
    end
    -- heavy-tailed blocks: Laplace, and Gaussian / u^(1/a) with u uniform (0, 1] (a Pareto tail
    -- of index a: block absmax ~10x (a = 5) or ~30x (a = 3) the median magnitude)
    local function heavy(n, kind)
        local g = H.randn({ n }):tolist()
        local u = nc.rand({ n }, { generator = nc.generator(4242) }):tolist()
        for i = 1, n do
            local uu = math.max(u[i], 1e-12)
            if kind == 'laplace' then g[i] = (g[i] > 0 and 1 or -1) * -math.log(uu)
            else g[i] = g[i] / uu ^ (1 / kind) end
        end
        return nc.tensor(g)
    end

    it('codebook: 128 ascending magnitudes 0 .. 1, spacing shrinking towards 0 (denser than linear)', function()
        local m = nc.optim.codebook('dynamic'):tolist()
        local l = nc.optim.codebook('linear'):tolist()
        assert.are.equal(128, #m)
        assert.are.equal(0, m[1]); assert.are.equal(1, m[128])
        for k = 2, 128 do
            assert(m[k] > m[k - 1], 'not ascending at ' .. k)
            assert(math.abs(l[k] - (k - 1) / 127) < 1e-7, 'linear map at ' .. k)
        end
        for k = 4, 128 do   -- gaps between nonzero entries never shrink going up (1e-7: f32 rounding)
            assert(m[k] - m[k - 1] >= m[k - 1] - m[k - 2] - 1e-7, 'gap shrinks at ' .. k)
        end
        assert(m[2] < 1 / 127 and m[3] - m[2] < 1 / 254, 'entries near 0: ' .. m[2] .. ', ' .. m[3])
        -- the construction in nanochat.h: group z spans (0.4^(z+1), 0.4^z] with 2^(6-z) entries
        for k = 1, 127 do
            local top = math.floor(math.log(k) / math.log(2) + 1e-9)
            local z, nf = 6 - top, 2 ^ top
            local hi, lo = 0.4 ^ z, 0.4 ^ (z + 1)
            local want = lo + (hi - lo) * (k - nf + 1) / nf
            assert(math.abs(m[k + 1] - want) < 1e-6, string.format('map[%d] = %.7g, want %.7g', k, m[k + 1], want))
        end
    end)

    it('stores the nearest codebook entry (both signs) and decodes it times the block absmax', function()
        local x = H.randn { 3000 }
        local y, codes, scales = roundtrip(x, 'dynamic')
        local m = nc.optim.codebook('dynamic'):tolist()
        local xl, cl, sl = x:tolist(), codes:tolist(), scales:tolist()
        for i = 1, #xl do
            local s = sl[math.floor((i - 1) / 2048) + 1]
            local c = cl[i]
            local k = math.abs(c)
            assert(c == 0 or (c > 0) == (xl[i] > 0), 'sign at ' .. i)
            local a = math.abs(xl[i]) / s
            local e = math.abs(a - m[k + 1])
            if k > 0 then assert(e <= math.abs(a - m[k]) + 1e-6, 'not nearest (below) at ' .. i) end
            if k < 127 then assert(e <= math.abs(a - m[k + 2]) + 1e-6, 'not nearest (above) at ' .. i) end
            local want = (c < 0 and -1 or 1) * m[k + 1] * s
            assert(math.abs(y[i] - want) <= 1e-6 * s, 'decode at ' .. i)
        end
    end)

    it('round trip: relative error of the 10% largest entries < 1% (Gaussian and heavy-tailed)', function()
        local g, lap, p5, p3 = H.randn { 8192 }, heavy(8192, 'laplace'), heavy(8192, 5), heavy(8192, 3)
        local function top_err(x, q) return top10_rel(x:tolist(), (roundtrip(x, q))) end
        -- ||x - y|| / ||x|| over the top 10%; measured (dynamic / linear): Gaussian 0.43% / 0.37%,
        -- Laplace 0.57% / 0.55%, Pareto-5 0.6-0.7% / 0.6-0.7% (4 seeds)
        for name, x in pairs { gaussian = g, laplace = lap, pareto5 = p5 } do
            local e = top_err(x, 'dynamic')
            assert(e < 0.01, name .. ': ' .. e)
        end
        -- Pareto-3 (absmax ~30x the median) is past what either 8-bit map keeps under 1% (dynamic
        -- 0.80-1.12%, linear 0.91-1.22% over seeds); the dynamic map is the better of the two there
        assert(top_err(p3, 'dynamic') < top_err(p3, 'linear'), 'Pareto-3: dynamic not better than linear')
        -- over all entries the map beats linear (more codes where most entries are)
        local function all_rel(x, q)
            local xl, y = x:tolist(), roundtrip(x, q)
            local e2, x2 = 0, 0
            for i = 1, #xl do e2 = e2 + (xl[i] - y[i]) ^ 2; x2 = x2 + xl[i] ^ 2 end
            return math.sqrt(e2 / x2)
        end
        for name, x in pairs { gaussian = g, laplace = lap, pareto3 = p3 } do
            assert(all_rel(x, 'dynamic') < all_rel(x, 'linear'), name .. ', all entries')
        end
    end)

    it('an all-zero block decodes to exact zeros; bad quant names are errors', function()
        local x = nc.zeros { 100 }
        x:narrow(0, 64, 36):copy_(H.randn { 36 })
        local codes, scales = nc.optim.quant8(x, { block = 32, quant = 'dynamic' })
        assert.are.equal(0, scales:tolist()[1])
        local y = nc.optim.dequant8(codes, scales, { 100 }, 32, 'dynamic'):tolist()
        for i = 1, 64 do assert.are.equal(0, y[i]) end
        for i = 1, 100 do assert(y[i] == y[i], 'NaN at ' .. i) end
        assert.has_error(function() nc.optim.quant8(x, { quant = 'log' }) end,
            "quant8: quant must be 'linear' or 'dynamic', got log")
        local ok, err = pcall(nc.optim.muon8, { nc.zeros({ 4, 4 }, { requires_grad = true }) }, { quant = 'fp8' })
        assert(not ok and tostring(err):find("muon: quant must be 'linear' or 'dynamic', got fp8", 1, true), tostring(err))
    end)

    it('stochastic rounding picks one of the two neighbouring entries, unbiased', function()
        local m = nc.optim.codebook('dynamic'):tolist()
        local v = 0.3 * m[101] + 0.7 * m[102]   -- between entries 100 and 101
        local x = nc.full({ 4096 }, v)
        x:set(0, 1.0)
        local c1 = nc.optim.quant8(x, { block = 4096, stochastic = true, seed = 5, quant = 'dynamic' })
        local c2 = nc.optim.quant8(x, { block = 4096, stochastic = true, seed = 5, quant = 'dynamic' })
        H.bitwise(c1, c2, 'same seed')
        local l, hi = c1:tolist(), 0
        for i = 2, #l do
            assert(l[i] == 100 or l[i] == 101, 'code ' .. l[i])
            if l[i] == 101 then hi = hi + 1 end
        end
        -- P(upper) = 0.7; sd of the mean of 4095 draws 0.0072
        assert(math.abs(hi / 4095 - 0.7) < 0.03, 'upper fraction ' .. hi / 4095)
    end)

    it('muon8 and GaLore + muon8 keep the fused state equal to quant8(dynamic) of the momentum', function()
        local P = H.randn({ 40, 60 }):requires_grad_(true)
        local g = H.randn { 40, 60 }
        local opt = nc.optim.muon8({ P }, { block = 256, quant = 'dynamic' })
        assert.are.equal(2400 + 4 * 10, opt:state_bytes())
        P.grad = g
        opt:step()
        local codes, scales = nc.optim.quant8(g:mul(0.05), { block = 256, quant = 'dynamic' })
        local sd = opt:state_dict().tensors
        H.bitwise(sd['p1.codes'], codes, 'codes')
        H.bitwise(sd['p1.scales'], scales, 'scales')
        -- under GaLore with the identity projector (R = G exactly) the low-rank state is the same
        local Q = H.randn({ 40, 60 }):requires_grad_(true)
        local og = nc.optim.galore({ Q }, { inner = 'muon8', svd = 'identity', block = 256, quant = 'dynamic' })
        Q.grad = g
        og:step()
        local sg = og:state_dict().tensors
        H.bitwise(sg['p1.codes'], codes, 'galore codes')
        H.bitwise(sg['p1.scales'], scales, 'galore scales')
    end)
end)

describe('nc.optim.muon8', function()
    it('stores numel + 4 ceil(numel / 2048) bytes, <= 30% of fp32 Muon', function()
        local X = nc.zeros({ 96, 100 }, { requires_grad = true })
        local n = X:numel()
        local b8 = nc.optim.muon8({ X }):state_bytes()
        assert.are.equal(n + 4 * math.ceil(n / 2048), b8)
        assert(b8 / nc.optim.muon({ X }):state_bytes() <= 0.30)
    end)

    it('matches the fused state to quant8 of the fp32 momentum after a step', function()
        local P = H.randn({ 40, 60 }):requires_grad_(true)
        local g = H.randn { 40, 60 }
        local opt = nc.optim.muon8({ P }, { block = 256 })
        P.grad = g
        opt:step()
        local codes, scales = nc.optim.quant8(g:mul(0.05), { block = 256 })   -- m1 = (1 - 0.95) g
        local sd = opt:state_dict().tensors
        H.bitwise(sd['p1.codes'], codes, 'codes')
        H.bitwise(sd['p1.scales'], scales, 'scales')
    end)

    -- A noisy least-squares problem (minibatches of 32 of 512 rows): 200 steps.
    local A = H.randn { 512, 48 }
    local Y = nc.linear(A, H.randn({ 96, 48 }, 0.5)) + H.randn({ 512, 96 }, 0.5)
    local function loss_mb(X, s)
        local r = nc.rand({ 32 }, { generator = nc.generator(1000 + s), lo = 0, hi = 512 }):tolist()
        for i = 1, 32 do r[i] = math.floor(r[i]) end
        local it = nc.tensor(r, { dtype = 'i64' })
        return (nc.linear(A:index_select(0, it), X) - Y:index_select(0, it)):square():mean()
    end
    local function full_loss(X) return (nc.linear(A, X) - Y):square():mean():item() end
    local X0 = H.randn({ 96, 48 }, 0.05)
    local sched = nc.sched.wsd { warmup = 10, total = 200, cooldown = 0.3, final = 0.05 }

    -- lockstep: a shadow fp32 Muon gets the same parameters and gradients as the 8-bit one every
    -- step, so only the stored momentum differs (not the trajectory); returns the mean and the
    -- minimum over the 200 steps of cosine(update_8bit, update_fp32). Both sides run the
    -- Newton-Schulz products in f32 (ns_dtype = 'f32'; the default 'auto' is bf16 on AMX /
    -- AVX-512 BF16 CPUs): the cosines measure the quantization of the momentum alone, not that
    -- plus bf16 rounding inside NS5, and stay the same numbers on every CPU.
    local function lockstep(o8)
        local B = X0:clone():requires_grad_(true)
        local S = X0:clone():requires_grad_(true)
        local o = { lr = 0.05, ns_dtype = 'f32' }
        for k, v in pairs(o8) do o[k] = v end
        local ob = nc.optim.muon8({ B }, o)
        local os_ = nc.optim.muon({ S }, { lr = 0.05, ns_dtype = 'f32' })
        local worst, sum = 1, 0
        for s = 0, 199 do
            S:detach():copy_(B)
            local before = B:tolist()
            loss_mb(B, s):backward()
            S.grad = B.grad
            ob:step(sched(s)); os_:step(sched(s))
            ob:zero_grad(); os_:zero_grad()
            local qb, qs = B:tolist(), S:tolist()
            local dot, nb, ns = 0, 0, 0
            for i = 1, #qb do
                local db, ds = qb[i] - before[i], qs[i] - before[i]
                dot = dot + db * ds; nb = nb + db * db; ns = ns + ds * ds
            end
            local cos = dot / math.sqrt(nb * ns)
            worst = math.min(worst, cos)
            sum = sum + cos
        end
        return sum / 200, worst
    end

    -- algorithms.md §3.4 asks for cosine > 0.99 at EVERY step. No 8-bit option reaches it on this
    -- problem (measured mean / min over the 200 steps, nearest rounding unless said):
    --   block 2048: linear 0.9890 / 0.952, dynamic 0.9913 / 0.964; stochastic: linear 0.9817 /
    --   0.931, dynamic 0.9847 / 0.940; block 256: linear 0.9917 / 0.967, dynamic 0.9929 / 0.971;
    --   block 64: 0.9940 / 0.969, 0.9946 / 0.975; block 16 (25% scale overhead): 0.9960 / 0.983,
    --   0.9963 / 0.985. Final losses agree within 0.1% in every case.
    -- Why: the minimum sits at steps ~50-90, where u = (1-mu) g + mu m has a spread spectrum
    -- (smallest / largest singular value ~0.011-0.015) and NS5 maps all 48 singular values to ~1.
    -- The momentum's accumulated requantization error is ~3% of ||m|| by then (each requantization
    -- adds ~0.8%; the EMA keeps the last ~1/(1 - mu^2) = 10 of them: 0.8% x sqrt(10) = 2.6%), and
    -- fresh isotropic Gaussian noise of that same norm added to the fp32 u (no quantization at
    -- all) gives nearly the same cosines (0.965 vs 0.952 measured at step 69, 0.974 vs 0.970 at
    -- step 53, 0.979 vs 0.974 at step 89; `./nanochat tools/bench/muon8_cosine.lua` prints this
    -- table): the bound is set mostly by the error's norm and NS5's lifting of the weak
    -- directions (the rest: the quantization error is a bit more aligned with them), not by the
    -- shape of the code map. Even block 16 (1.25 bytes per element) stays at 0.985; 0.99 at every
    -- step needs a clearly smaller momentum error than 8 bits per element give. Stochastic rounding is
    -- unbiased but has twice the error variance, so it is worse here. The fused state itself is
    -- exact (see the bitwise tests above).
    it('tracks fp32 Muon over 200 noisy least-squares steps (update cosine, final loss within 1%)', function()
        local mean_l, min_l = lockstep { quant = 'linear' }
        assert(mean_l > 0.985, 'linear: mean update cosine ' .. mean_l)
        assert(min_l > 0.94, 'linear: worst update cosine ' .. min_l)
        local mean_d, min_d = lockstep { quant = 'dynamic' }
        assert(mean_d > 0.99, 'dynamic: mean update cosine ' .. mean_d)
        assert(min_d > 0.955, 'dynamic: worst update cosine ' .. min_d)
        assert(mean_d > mean_l and min_d > min_l, 'dynamic map not closer to fp32 than linear')
        -- (2) independent runs: final full-batch losses within 1%
        local P = X0:clone():requires_grad_(true)
        local Q = X0:clone():requires_grad_(true)
        local op = nc.optim.muon({ P }, { lr = 0.05 })
        local R = X0:clone():requires_grad_(true)
        local oq = nc.optim.muon8({ Q }, { lr = 0.05 })
        local or_ = nc.optim.muon8({ R }, { lr = 0.05, quant = 'dynamic' })
        for s = 0, 199 do
            loss_mb(P, s):backward(); op:step(sched(s)); op:zero_grad()
            loss_mb(Q, s):backward(); oq:step(sched(s)); oq:zero_grad()
            loss_mb(R, s):backward(); or_:step(sched(s)); or_:zero_grad()
        end
        local lp, lq, lr = full_loss(P), full_loss(Q), full_loss(R)
        assert(lp < 0.1 * full_loss(X0), 'fp32 Muon did not converge: ' .. lp)
        assert(math.abs(lq - lp) <= 0.01 * lp, string.format('final loss 8-bit %.5g vs fp32 %.5g', lq, lp))
        assert(math.abs(lr - lp) <= 0.01 * lp, string.format('final loss 8-bit dynamic %.5g vs fp32 %.5g', lr, lp))
    end)
end)
