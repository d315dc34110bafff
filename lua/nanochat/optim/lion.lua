-- lua/nanochat/optim/lion.lua — Lion (sign of an interpolated momentum, decoupled weight decay),
-- one fused C call per parameter (nc_lion_step; algorithms.md §5).
--
-- Options (per group too): lr = 1e-4, betas = {0.9, 0.99}, weight_decay = 0. Use an lr 3-10x
-- smaller and a weight decay 3-10x larger than AdamW's. State: m, f32 (4 bytes per element).
local B = require 'nanochat.optim.base'
local C, check = B.C, B.check

local Lion = B.class('lion', { lr = 1e-4, betas = { 0.9, 0.99 }, weight_decay = 0.0 })

function Lion.fill_hp(hp, kind, g, lr)
    local b1, b2 = B.betas(kind, g)
    hp.lr, hp.weight_decay, hp.beta1, hp.beta2 = lr, g.weight_decay, b1, b2
end

function Lion:check_group(g) B.betas(self.kind, g) end

function Lion:init_state(e, st) self:_slot(st, 'm', e.param:shape()) end

function Lion:update(e, grad, st, lr)
    local hp = self.hp
    Lion.fill_hp(hp, 'lion', e.group, lr)
    check(C.nc_lion_step(e.param._c, grad._c, st.slots.m._c, hp), 'lion (' .. e.name .. ')')
end

return Lion
