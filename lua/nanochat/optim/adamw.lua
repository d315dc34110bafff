-- lua/nanochat/optim/adamw.lua — AdamW (decoupled weight decay, bias correction), one fused C
-- call per parameter (nc_adamw_step).
--
-- Options (per group too): lr = 1e-3, betas = {0.9, 0.95}, eps = 1e-8, weight_decay = 0,
-- eps_mode = 'torch' (PyTorch's placement of eps) | 'galore' (eps on the uncorrected sqrt(v),
-- the correction folded into the step size, as in the GaLore reference).
-- State: m and v, f32, the parameter's shape (8 bytes per element).
local B = require 'nanochat.optim.base'
local C, check = B.C, B.check

local AdamW = B.class('adamw', { lr = 1e-3, betas = { 0.9, 0.95 }, eps = 1e-8, weight_decay = 0.0, eps_mode = 'torch' })

local EPS_MODES = { torch = C.NC_ADAM_EPS_TORCH, galore = C.NC_ADAM_EPS_GALORE }

-- fill the shared hyperparameter struct for an Adam update (also used by GaLore)
function AdamW.fill_hp(hp, kind, g, lr, step)
    local b1, b2 = B.betas(kind, g)
    hp.lr, hp.weight_decay, hp.beta1, hp.beta2, hp.eps, hp.step = lr, g.weight_decay, b1, b2, g.eps, step
    local mode = EPS_MODES[g.eps_mode]
    if not mode then error(kind .. ": eps_mode must be 'torch' or 'galore', got " .. tostring(g.eps_mode), 3) end
    hp.eps_mode = mode
end

function AdamW:check_group(g)
    B.betas(self.kind, g)
    if not EPS_MODES[g.eps_mode] then error("adamw: eps_mode must be 'torch' or 'galore', got " .. tostring(g.eps_mode), 4) end
end

function AdamW:init_state(e, st)
    local shape = e.param:shape()
    self:_slot(st, 'm', shape)
    self:_slot(st, 'v', shape)
end

function AdamW:update(e, grad, st, lr)
    local hp = self.hp
    AdamW.fill_hp(hp, 'adamw', e.group, lr, st.meta.step)
    check(C.nc_adamw_step(e.param._c, grad._c, st.slots.m._c, st.slots.v._c, hp), 'adamw (' .. e.name .. ')')
end

return AdamW
