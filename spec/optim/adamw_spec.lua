-- spec/optim/adamw_spec.lua — the fused AdamW step (nc_adamw_step) against a float64 Lua
-- reference (both eps placements, weight decay, a schedule multiplier) and against
-- torch.optim.AdamW through the committed fixture spec/fixtures/adamw_torch.json
-- (tools/gen_optim_fixture.py).
package.path = 'spec/optim/?.lua;lua/?.lua;lua/?/init.lua;' .. package.path
local nc = require 'nanochat'
local json = require 'dkjson'
local H = require 'optim_helpers'

-- f32 kernel vs float64 reference after a few steps of updates of size ~lr = 1e-2 on values ~1:
-- f32 rounding of p (6e-8) and of the update (~1e-9) per step.
local ATOL, RTOL = 2e-7, 2e-7

local function adamw_ref(p, grads, mults, o)
    local m, v = {}, {}
    for i = 1, #p do m[i], v[i] = 0, 0 end
    for t, g in ipairs(grads) do
        local lr = o.lr * mults[t]
        local bc1, bc2 = 1 - o.b1 ^ t, 1 - o.b2 ^ t
        for i = 1, #p do
            m[i] = o.b1 * m[i] + (1 - o.b1) * g[i]
            v[i] = o.b2 * v[i] + (1 - o.b2) * g[i] ^ 2
            p[i] = p[i] * (1 - lr * o.wd)
            if o.mode == 'galore' then
                p[i] = p[i] - lr * math.sqrt(bc2) / bc1 * m[i] / (math.sqrt(v[i]) + o.eps)
            else
                p[i] = p[i] - lr / bc1 * m[i] / (math.sqrt(v[i]) / math.sqrt(bc2) + o.eps)
            end
        end
    end
    return p
end

describe('nc.optim.adamw', function()
    for _, mode in ipairs { 'torch', 'galore' } do
        it('matches a float64 reference over 5 steps (eps_mode ' .. mode .. ')', function()
            local P = H.randn({ 7, 9 })
            local p0 = P:tolist()
            P:requires_grad_(true)
            local opt = nc.optim.adamw({ P }, { lr = 1e-2, betas = { 0.9, 0.95 }, eps = 1e-3, weight_decay = 0.1, eps_mode = mode })
            local grads, mults = {}, { 0.2, 0.6, 1, 1, 0.3 }
            for t = 1, 5 do
                local g = H.randn({ 7, 9 }, 10 ^ (t % 3 - 1))
                grads[t] = g:tolist()
                P.grad = g
                opt:step(mults[t])
            end
            local want = adamw_ref(p0, grads, mults, { lr = 1e-2, b1 = 0.9, b2 = 0.95, eps = 1e-3, wd = 0.1, mode = mode })
            H.close(P, want, ATOL, RTOL, 'adamw ' .. mode)
        end)
    end

    it('matches torch.optim.AdamW (committed fixture)', function()
        local f = assert(io.open('spec/fixtures/adamw_torch.json', 'rb'))
        local fx = json.decode(f:read('*a'))
        f:close()
        local w = nc.tensor(fx.init.w):view(fx.shapes.w[1], fx.shapes.w[2]):requires_grad_(true)
        local b = nc.tensor(fx.init.b):requires_grad_(true)
        local opt = nc.optim.adamw({ w, b }, { lr = fx.lr, betas = fx.betas, eps = fx.eps, weight_decay = fx.weight_decay })
        for i, st in ipairs(fx.steps) do
            w.grad = nc.tensor(st.grads.w):view(fx.shapes.w[1], fx.shapes.w[2])
            b.grad = nc.tensor(st.grads.b)
            opt:step(st.mult)
            -- both are f32 with the same formula up to operation order: a few ulp
            H.close(w, st.after.w, 3e-7, 1e-6, 'w after step ' .. i)
            H.close(b, st.after.b, 3e-7, 1e-6, 'b after step ' .. i)
        end
    end)

    it('the AVX-512 loop is bitwise the baseline loop (both eps placements, tails, threaded sizes)', function()
        if nc.cpu_kernel() ~= 'avx512' then
            pending('no AVX-512 here: only the baseline loop runs')
            return
        end
        for _, mode in ipairs { 'torch', 'galore' } do
            for _, n in ipairs { 1, 15, 17, 1000, 70001 } do   -- 70001 >= NC_PAR_MIN: 2 threads
                local P0 = H.randn { n }
                local grads = {}
                for t = 1, 3 do grads[t] = H.randn({ n }, 0.1) end
                local out = {}
                for _, kern in ipairs { 'avx512', 'scalar' } do
                    nc.set_cpu_kernel(kern)
                    local P = P0:clone():requires_grad_(true)
                    local opt = nc.optim.adamw({ P }, { lr = 1e-2, betas = { 0.9, 0.95 }, eps = 1e-3, weight_decay = 0.1,
                        eps_mode = mode })
                    for t = 1, 3 do P.grad = grads[t]; opt:step(1 / t) end
                    out[kern] = { P, opt:state_dict().tensors['p1.m'], opt:state_dict().tensors['p1.v'] }
                end
                nc.set_cpu_kernel('avx512')
                for k, what in ipairs { 'p', 'm', 'v' } do
                    H.bitwise(out.avx512[k], out.scalar[k], string.format('%s n=%d %s', mode, n, what))
                end
            end
        end
    end)
end)
