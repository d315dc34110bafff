-- spec/cuda/optim_cuda_spec.lua — the optimizer steps on CUDA tensors (kernels/cuda/optim.cu) against
-- the CPU kernels on the same inputs, through the same C entry points.
--
-- Promise:
--  - Without a GPU (runs everywhere): the device checks run before any CUDA call or data access,
--    so they are tested with tensor headers that claim the CUDA device over host storage: every
--    entry point (adamw, lion, muon, muon8, galore, quant8, dequant8, newton_schulz,
--    rsvd_projector) rejects mixed devices with NC_ERR_DEVICE and a message naming the op and each
--    tensor's device, leaving the parameter untouched; all-CUDA inputs are a clean device error;
--    the CPU's f32 NS5 is within 2e-6 of float64 (the basis of NS_RTOL).
--  - With a GPU (pending otherwise, with nc.cuda_status()'s reason): AdamW (both eps modes), Lion,
--    the Muon momentum (f32 and 8-bit: codes, scales) and quant8 / dequant8 (LINEAR and DYNAMIC,
--    nearest and stochastic) equal the CPU bitwise; Newton-Schulz, Muon's parameter update and
--    GaLore (cuBLAS sgemm) agree within NS_RTOL; the rSVD refresh equals the CPU bitwise; the Lua
--    optimizers run unchanged on CUDA parameters (state on the device, same state_bytes), AdamW's
--    trajectory equals the CPU's bitwise and Muon / 8-bit Muon lower a least-squares loss.
package.path = 'spec/optim/?.lua;lua/?.lua;lua/?/init.lua;spec/helpers/?.lua;' .. package.path
local nc = require 'nanochat'
local core = require 'nanochat.core'
local H = require 'optim_helpers'
local C, ffi = core.C, core.ffi

-- Tolerance of the sgemm-based results: |cuda - cpu| <= NS_RTOL * max |cpu| (per tensor). The f32
-- NS5 of the CPU differs from a float64 reference by <= 1.6e-6 of max |x| on 37x53, 64x24, 96x96
-- and 5x200 matrices (measured; cuBLAS's different summation order is another f32 rounding of the
-- same size), so 2e-5 leaves a 6x margin over twice that and still catches any wrong
-- transposition or coefficient (those are O(1)).
local NS_RTOL = 2e-5

local CU = require 'cuda_helpers'
local HAVE_CUDA, WHY = CU.HAVE_CUDA, CU.WHY

local gpu_it = CU.gpu_it   -- pending (inside the test) without a GPU

local function last_error() return ffi.string(C.nc_last_error()) end

local function max_abs(l)
    local m = 0
    for i = 1, #l do m = math.max(m, math.abs(l[i])) end
    return m
end

local function hp_new(t)
    local hp = ffi.new('nc_optim_hp')
    hp.lr, hp.weight_decay, hp.beta1, hp.beta2, hp.eps, hp.step = 0.01, 0.1, 0.9, 0.95, 1e-8, 1
    hp.momentum, hp.dampening, hp.nesterov, hp.ns_steps, hp.scale = 0.95, 0.05, 1, 5, 1.0
    hp.block, hp.alpha, hp.seed, hp.counter = 64, 1.0, 11, 0
    hp.ns_dtype = C.NC_NS_F32   -- the CPU side in f32 like CUDA's cuBLAS sgemm (auto = bf16 on AVX-512 BF16 / AMX)
    hp.ns_form = C.NC_NS_FORM_STANDARD   -- and in CUDA's form (auto = Gram on wide matrices)
    for k, v in pairs(t or {}) do hp[k] = v end
    return hp
end

-- ---- device checks without a GPU -------------------------------------------------------------------
-- A header that claims `device` over t's host storage (cuda_helpers.claim). Only ever passed to
-- entry points whose device check fails before any data is read.
local claim = CU.claim

describe('optimizer steps without a GPU: device checks and the NS tolerance', function()
    local p = H.randn({ 6, 8 })
    local g, m, v = H.randn({ 6, 8 }), nc.zeros({ 6, 8 }), nc.zeros({ 6, 8 })
    local codes, scales = nc.zeros({ 48 }, { dtype = 'i8' }), nc.zeros({ 1 })
    local proj = H.randn({ 8, 2 })
    local lr_m, lr_v = nc.zeros({ 6, 2 }), nc.zeros({ 6, 2 })
    local abc = ffi.new('double[3]', 3.4445, -4.7750, 2.0315)

    -- each case: op name, the argument put on the "wrong" device, another argument (left on the
    -- CPU), a call taking a function d(tensor, name) that returns the header to pass
    local cases = {
        { 'adamw_step', 'g', 'p', function(d) return C.nc_adamw_step(d(p, 'p'), d(g, 'g'), d(m, 'm'), d(v, 'v'), hp_new()) end },
        { 'lion_step', 'm', 'p', function(d) return C.nc_lion_step(d(p, 'p'), d(g, 'g'), d(m, 'm'), hp_new()) end },
        { 'muon_step', 'p', 'g', function(d) return C.nc_muon_step(d(p, 'p'), d(g, 'g'), d(m, 'm'), hp_new()) end },
        { 'muon8_step', 'scales', 'codes', function(d)
            return C.nc_muon8_step(d(p, 'p'), d(g, 'g'), d(codes, 'codes'), d(scales, 'scales'), hp_new({ block = 64 }))
        end },
        { 'galore_step', 'proj', 's1', function(d)
            return C.nc_galore_step(d(p, 'p'), d(g, 'g'), d(proj, 'proj'), C.NC_GALORE_RIGHT, C.NC_OPTIM_ADAMW,
                d(lr_m, 's0'), d(lr_v, 's1'), hp_new())
        end },
        { 'quant8_block', 'x', 'codes', function(d)
            return C.nc_quant8_block_map(d(codes, 'codes'), d(scales, 'scales'), d(p, 'x'), 64, 0, 0, 0, 1)
        end },
        { 'dequant8_block', 'codes', 'out', function(d)
            return C.nc_dequant8_block_map(d(p, 'out'), d(codes, 'codes'), d(scales, 'scales'), 64, 0)
        end },
        { 'newton_schulz', 'out', 'x', function(d) return C.nc_newton_schulz(d(m, 'out'), d(p, 'x'), 5, abc, 1, 1, 1e-7) end },
        { 'rsvd_projector', 'g', 'proj', function(d)
            return C.nc_rsvd_projector(d(proj, 'proj'), d(p, 'g'), C.NC_GALORE_RIGHT, 2, 1, 0, 0)
        end },
    }

    it('mixed cpu / cuda inputs are NC_ERR_DEVICE naming the op and a tensor on the other device', function()
        for _, cs in ipairs(cases) do
            local op, wrong, other, call = cs[1], cs[2], cs[3], cs[4]
            local before = p:tolist()
            local st = call(function(t, name) return name == wrong and claim(t, C.NC_CUDA) or t._c end)
            assert.are.equal(C.NC_ERR_DEVICE, st, op .. ': status')
            local msg = last_error()
            -- the one device rule (core/internal.h nc_check_one_device): a CUDA tensor makes the call a
            -- CUDA call, and the message names a tensor left on the CPU and what it is
            local named = msg:match('^' .. op .. ': expected (%w+) on cuda, got .* cpu')
            assert.truthy(named, op .. ': ' .. msg)
            assert.are_not.equal(wrong, named, op .. ': ' .. msg)
            assert.are.same(before, p:tolist(), op .. ': p changed')
        end
    end)

    it('the Lua wrapper raises the message as a Lua error', function()
        local ok, err = pcall(core.check, cases[1][4](function(t, name) return name == 'v' and claim(t, C.NC_CUDA) or t._c end),
            'adamw (w)')
        assert.is_false(ok)
        assert.matches('adamw_step: expected p on cuda, got ', tostring(err), 1, true)
    end)

    it('without a GPU, all-cuda inputs are a clean device error (no crash)', function()
        if HAVE_CUDA then
            pending('a GPU is present: these headers over host memory must not reach the kernels')
            return
        end
        for _, cs in ipairs(cases) do
            local st = cs[4](function(t) return claim(t, C.NC_CUDA) end)
            assert.are_not.equal(C.NC_OK, st, cs[1])
            assert.truthy(#last_error() > 0)
        end
        local st = C.nc_adamw_step(claim(p, C.NC_CUDA), claim(g, C.NC_CUDA), claim(m, C.NC_CUDA), claim(v, C.NC_CUDA), hp_new())
        assert.are.equal(C.NC_ERR_DEVICE, st)
        assert.matches('adamw_step: the tensors are on cuda but', last_error(), 1, true)
    end)

    it('the basis of NS_RTOL: the CPU\'s f32 NS5 is within 2e-6 * max |x| of float64', function()
        -- measured 1.2e-6, 1.5e-6, 0.8e-6 (and 1.6e-6 on 96x96); cuBLAS is another f32 rounding
        for _, sh in ipairs { { 37, 53 }, { 64, 24 }, { 5, 200 } } do
            local x = H.randn(sh)
            local y = nc.optim.newton_schulz(x, { steps = 5 }):tolist()
            local ref = H.ns_ref(x:tolist(), sh[1], sh[2], 5, { 3.4445, -4.7750, 2.0315 }, 1e-7)
            local worst = 0
            for i = 1, #ref do worst = math.max(worst, math.abs(y[i] - ref[i])) end
            local rel = worst / max_abs(ref)
            assert(rel < 2e-6, string.format('%dx%d: %.3g', sh[1], sh[2], rel))
            assert(rel < NS_RTOL / 10)
        end
    end)

    it('optimizer state is allocated on the parameter\'s device', function()
        local w = H.randn({ 4, 6 })
        local opt = nc.optim.muon({ { 'w', w } }, { state_bits = 8, block = 8 })
        for _, t in pairs(opt.state[w].slots) do assert.are.equal('cpu', t:device()) end
        assert.are.equal(24 + 3 * 4, opt:state_bytes())
    end)
end)

-- ---- CUDA against the CPU ---------------------------------------------------------------------------------
local function dev(t) return t:cuda() end

-- |got - want| <= rtol * max |want| + atol, elementwise
local function near(got, want, rtol, what, atol)
    local g, w = got:tolist(), want:tolist()
    assert.are.equal(#w, #g, what .. ': numel')
    local tol = rtol * max_abs(w) + (atol or 0)
    for i = 1, #w do
        local e = math.abs(g[i] - w[i])
        if not (e <= tol) then
            error(string.format('%s: element %d: cuda %.9g vs cpu %.9g (|diff| %.3g > %.3g)', what, i, g[i], w[i], e, tol), 2)
        end
    end
end

local function bitwise(got, want, what) H.bitwise(got:cpu(), want, what) end

describe('optimizer steps on CUDA vs the CPU', function()
    gpu_it('AdamW (torch and galore eps placement, weight decay) is bitwise the CPU over 3 steps', function()
        for _, mode in ipairs { C.NC_ADAM_EPS_TORCH, C.NC_ADAM_EPS_GALORE } do
            local p, m, v = H.randn({ 37, 53 }), nc.zeros({ 37, 53 }), nc.zeros({ 37, 53 })
            local pd, md, vd = dev(p), dev(m), dev(v)
            for s = 1, 3 do
                local g = H.randn({ 37, 53 })
                local hp = hp_new({ step = s, eps_mode = mode })
                core.check(C.nc_adamw_step(p._c, g._c, m._c, v._c, hp), 'cpu')
                core.check(C.nc_adamw_step(pd._c, dev(g)._c, md._c, vd._c, hp), 'cuda')
            end
            bitwise(pd, p, 'p'); bitwise(md, m, 'm'); bitwise(vd, v, 'v')
        end
    end)

    gpu_it('Lion is bitwise the CPU over 3 steps', function()
        local p, m = H.randn({ 1001 }), nc.zeros({ 1001 })
        local pd, md = dev(p), dev(m)
        for _ = 1, 3 do
            local g = H.randn({ 1001 })
            local hp = hp_new({ beta1 = 0.9, beta2 = 0.99 })
            core.check(C.nc_lion_step(p._c, g._c, m._c, hp), 'cpu')
            core.check(C.nc_lion_step(pd._c, dev(g)._c, md._c, hp), 'cuda')
        end
        bitwise(pd, p, 'p'); bitwise(md, m, 'm')
    end)

    gpu_it('quant8 / dequant8: codes, scales and values bitwise (linear, dynamic; nearest, stochastic)', function()
        local n = 5000
        local x = H.randn({ n })
        x:narrow(0, 128, 64):zero_()   -- an all-zero block at block 64
        for _, map in ipairs { 'linear', 'dynamic' } do
            for _, sto in ipairs { false, true } do
                for _, block in ipairs { 1, 7, 64, 2048 } do
                    local o = { block = block, quant = map, stochastic = sto, seed = 3, counter = 17 }
                    local c1, s1 = nc.optim.quant8(x, o)
                    local c2, s2 = nc.optim.quant8(dev(x), o)
                    assert.are.equal('cuda', c2:device())
                    local what = string.format('%s %s block %d', map, sto and 'stochastic' or 'nearest', block)
                    bitwise(c2, c1, what .. ' codes'); bitwise(s2, s1, what .. ' scales')
                    local y1 = nc.optim.dequant8(c1, s1, { n }, block, map)
                    local y2 = nc.optim.dequant8(c2, s2, { n }, block, map)
                    bitwise(y2, y1, what .. ' dequant')
                end
            end
        end
    end)

    gpu_it('Newton-Schulz (quintic, cubic; wide, tall) within NS_RTOL of the CPU', function()
        for _, sh in ipairs { { 37, 53 }, { 64, 24 }, { 5, 200 }, { 3, 2, 4 } } do
            local x = H.randn(sh)
            for _, coefs in ipairs { 'quintic', 'cubic' } do
                local a = nc.optim.newton_schulz(x, { coefs = coefs, form = 'standard' })
                local b = nc.optim.newton_schulz(dev(x), { coefs = coefs })
                assert.are.equal('cuda', b:device())
                near(b:cpu(), a, NS_RTOL, string.format('NS %s (%s)', coefs, table.concat(sh, 'x')))
            end
        end
    end)

    -- Muon: the momentum is bitwise, the parameter delta within NS_RTOL of the CPU's delta
    local function muon_compare(shape, hpt, eight, map, sto)
        local n = 1
        for _, d in ipairs(shape) do n = n * d end
        local p = H.randn(shape)
        local pd = dev(p)
        local m, md, codes, scales, cd, sd
        if eight then
            codes, scales = nc.zeros({ n }, { dtype = 'i8' }), nc.zeros({ math.ceil(n / 64) })
            cd, sd = dev(codes), dev(scales)
        else
            m = nc.zeros(shape); md = dev(m)
        end
        local what = string.format('muon%s %s nesterov %d', eight and ('8 ' .. map .. (sto and ' sr' or '')) or '',
            table.concat(shape, 'x'), hpt.nesterov or 1)
        for s = 1, 3 do
            local g = H.randn(shape)
            local hp = hp_new(hpt)
            hp.block, hp.quant, hp.stochastic, hp.counter = 64, map == 'dynamic' and 1 or 0, sto and 1 or 0, 100 * s
            local p0 = p:clone()
            if eight then
                core.check(C.nc_muon8_step(p._c, g._c, codes._c, scales._c, hp), 'cpu')
                core.check(C.nc_muon8_step(pd._c, dev(g)._c, cd._c, sd._c, hp), 'cuda')
                bitwise(cd, codes, what .. ' codes step ' .. s)
                bitwise(sd, scales, what .. ' scales step ' .. s)
            else
                core.check(C.nc_muon_step(p._c, g._c, m._c, hp), 'cpu')
                core.check(C.nc_muon_step(pd._c, dev(g)._c, md._c, hp), 'cuda')
                bitwise(md, m, what .. ' m step ' .. s)
            end
            -- compare the updates from the same starting point, then continue both from the CPU's
            local d_cpu, d_cuda = p - p0, pd:cpu() - p0
            near(d_cuda, d_cpu, NS_RTOL, what .. ' update step ' .. s, 1e-6 * max_abs(p0:tolist()))
            pd:copy_(p)
        end
    end

    gpu_it('Muon f32 momentum (nesterov or not, ema or sum form): m bitwise, update within NS_RTOL', function()
        muon_compare({ 24, 40 }, { nesterov = 1 })
        muon_compare({ 40, 24 }, { nesterov = 0 })
        muon_compare({ 8, 3, 5 }, { nesterov = 1, dampening = 1, weight_decay = 0 })
    end)

    gpu_it('8-bit Muon (linear, dynamic; nearest, stochastic): codes and scales bitwise, update within NS_RTOL', function()
        for _, map in ipairs { 'linear', 'dynamic' } do
            for _, sto in ipairs { false, true } do muon_compare({ 20, 33 }, { nesterov = 1 }, true, map, sto) end
        end
        muon_compare({ 33, 20 }, { nesterov = 0 }, true, 'dynamic', false)
    end)

    gpu_it('GaLore (adamw, lion, muon, muon8 inside; left and right) within NS_RTOL of the CPU', function()
        local inners = { adamw = C.NC_OPTIM_ADAMW, lion = C.NC_OPTIM_LION, muon = C.NC_OPTIM_MUON, muon8 = C.NC_OPTIM_MUON8 }
        for name, inner in pairs(inners) do
            for _, sd in ipairs { { 'left', C.NC_GALORE_LEFT, 12, 30 }, { 'right', C.NC_GALORE_RIGHT, 30, 12 } } do
                local m_, n_ = sd[3], sd[4]
                local r = 4
                local d = sd[2] == C.NC_GALORE_LEFT and m_ or n_
                local lrs = sd[2] == C.NC_GALORE_LEFT and { r, n_ } or { m_, r }
                local ln = lrs[1] * lrs[2]
                local p, g = H.randn({ m_, n_ }), H.randn({ m_, n_ })
                local proj = nc.optim.rsvd(g, r, { side = sd[1] })
                local s0, s1
                if name == 'muon8' then s0, s1 = nc.zeros({ ln }, { dtype = 'i8' }), nc.zeros({ math.ceil(ln / 64) })
                elseif name == 'adamw' then s0, s1 = nc.zeros(lrs), nc.zeros(lrs)
                else s0 = nc.zeros(lrs) end
                local pd, s0d, s1d = dev(p), dev(s0), s1 and dev(s1)
                local hp = hp_new({ alpha = 0.25, eps_mode = C.NC_ADAM_EPS_GALORE })
                local p0 = p:clone()
                core.check(C.nc_galore_step(p._c, g._c, proj._c, sd[2], inner, s0._c, s1 and s1._c or nil, hp), 'cpu')
                core.check(C.nc_galore_step(pd._c, dev(g)._c, dev(proj)._c, sd[2], inner, s0d._c, s1d and s1d._c or nil, hp),
                    'cuda')
                local what = 'galore ' .. name .. ' ' .. sd[1]
                near(pd:cpu() - p0, p - p0, 1e-4, what .. ' update', 1e-6 * max_abs(p0:tolist()))
                if name == 'muon8' then
                    -- R comes out of an sgemm: a code may sit on the other side of a rounding edge
                    local a, b, same = s0d:cpu():tolist(), s0:tolist(), 0
                    for i = 1, #a do
                        assert(math.abs(a[i] - b[i]) <= 1, what .. ': code ' .. i .. ' differs by more than 1')
                        if a[i] == b[i] then same = same + 1 end
                    end
                    assert(same >= 0.98 * #a, what .. ': only ' .. same .. ' of ' .. #a .. ' codes equal')
                    near(s1d:cpu(), s1, 1e-5, what .. ' scales')
                else
                    near(s0d:cpu(), s0, 1e-5, what .. ' s0')
                    if s1 then near(s1d:cpu(), s1, 1e-5, what .. ' s1') end
                end
                assert.are.equal(d, proj:size(0))
            end
        end
    end)

    gpu_it('the randomized-SVD projector refresh on CUDA tensors equals the CPU bitwise', function()
        local g = H.randn({ 30, 12 })
        for _, side in ipairs { 'left', 'right' } do
            local a = nc.optim.rsvd(g, 3, { side = side, seed = 9 })
            local b = nc.optim.rsvd(dev(g), 3, { side = side, seed = 9 })
            assert.are.equal('cuda', b:device())
            bitwise(b, a, 'rsvd ' .. side)
        end
    end)
end)

describe('Lua optimizers on CUDA parameters', function()
    -- k steps of opt on a least-squares problem; the gradient is computed on the CPU from the
    -- parameter's current value and handed to the optimizer on the parameter's device
    local function run(prob, w, make, k)
        local opt = make({ { 'w', w } })
        local losses = {}
        for s = 1, k do
            local x = w:cpu():detach():requires_grad_(true)
            local loss = prob.loss(x)
            losses[s] = loss:item()
            loss:backward()
            w.grad = x.grad:to(w:device())
            opt:step()
            opt:zero_grad()
        end
        losses[k + 1] = prob.loss(w:cpu()):item()
        return losses, opt
    end

    gpu_it('AdamW: the CUDA trajectory is the CPU one bitwise; state on the device, same state_bytes', function()
        local prob = H.lstsq(12, 20, 64)
        local w0 = H.randn({ 12, 20 }, 0.1)
        local make = function(p) return nc.optim.adamw(p, { lr = 0.05, weight_decay = 0.01 }) end
        local wc, wd = w0:clone(), dev(w0)
        local lc, oc = run(prob, wc, make, 10)
        local ld, od = run(prob, wd, make, 10)
        bitwise(wd, wc, 'adamw weights after 10 steps')
        assert.are.same(lc, ld)
        assert(ld[11] < 0.5 * ld[1], string.format('loss %.4g -> %.4g', ld[1], ld[11]))
        for _, t in pairs(od.state[wd].slots) do assert.are.equal('cuda', t:device()) end
        assert.are.equal(oc:state_bytes(), od:state_bytes())
    end)

    gpu_it('Muon (f32 and 8-bit dynamic) lowers the loss on CUDA and tracks the CPU run', function()
        -- ns_dtype f32: CUDA's Newton-Schulz is f32 (cuBLAS sgemm); the CPU's default is bf16 on AVX-512 BF16 / AMX
        for _, o in ipairs { { lr = 0.2, ns_dtype = 'f32', ns_form = 'standard' },
                             { lr = 0.2, state_bits = 8, block = 32, quant = 'dynamic', ns_dtype = 'f32', ns_form = 'standard' } } do
            local prob = H.lstsq(16, 24, 64)
            local w0 = H.randn({ 16, 24 }, 0.1)
            local make = function(p) return nc.optim.muon(p, o) end
            local wc, wd = w0:clone(), dev(w0)
            local lc, oc = run(prob, wc, make, 10)
            local ld, od = run(prob, wd, make, 10)
            -- on the CPU these runs go 6.4 -> 1.1 (f32) and 7.2 -> 1.4 (8-bit)
            assert(ld[11] < 0.5 * ld[1], string.format('loss %.4g -> %.4g', ld[1], ld[11]))
            -- the runs differ by sgemm rounding each step (and a rare flipped 8-bit code)
            assert(math.abs(ld[11] - lc[11]) <= 1e-2 * lc[11], string.format('final loss cuda %.6g vs cpu %.6g', ld[11], lc[11]))
            for _, t in pairs(od.state[wd].slots) do assert.are.equal('cuda', t:device()) end
            assert.are.equal(oc:state_bytes(), od:state_bytes())
        end
    end)

    gpu_it('a CPU gradient for a CUDA parameter is a clear Lua error naming the op and devices', function()
        local w = dev(H.randn({ 4, 6 }))
        local opt = nc.optim.adamw({ { 'w', w } }, { lr = 0.1 })
        w.grad = H.randn({ 4, 6 })
        local ok, err = pcall(opt.step, opt)
        assert.is_false(ok)
        assert.matches('adamw_step: expected g on cuda, got ', tostring(err), 1, true)
    end)
end)
