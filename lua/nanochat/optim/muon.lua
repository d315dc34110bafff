-- lua/nanochat/optim/muon.lua — Muon: Nesterov momentum, quintic Newton-Schulz (5 steps, tall
-- matrices transposed), update scaling, decoupled weight decay; the momentum in f32 or as 8-bit
-- blockwise codes (algorithms.md §2, §3). One fused C call per matrix.
--
-- Options (per group too):
--   lr = 0.02, momentum = 0.95, nesterov = true, ns_steps = 5, weight_decay = 0,
--   scale = 'spectral' (sqrt(max(1, out/in)), Keller) | 'rms' (0.2 sqrt(max(out, in)), Moonlight:
--           reuse AdamW's lr and wd) | a number,
--   momentum_form = 'ema' (m = mu m + (1-mu) g, Keller) | 'sum' (m = mu m + g, Moonlight); the
--           orthogonalized update is the same, only the stored scale differs,
--   state_bits = 32 | 8, block = 2048 (8-bit: elements per absmax scale),
--   rounding = 'nearest' | 'stochastic' (8-bit requantization; Philox, seeded by `seed`),
--   quant = 'linear' (code = round(127 m / s_b)) | 'dynamic' (nearest entry of a fixed codebook
--           denser near 0, nanochat.h enum nc_quant8_map; nc.optim.codebook('dynamic') lists it).
-- Parameters must be matrices (2 or more dims; (shape[0], rest)); send embeddings, the LM head
-- and vectors to AdamW/Lion (nc.optim.hybrid does).
-- State: f32 m (4 bytes per element) or i8 codes + one f32 scale per block (1 + 4/block bytes).
local B = require 'nanochat.optim.base'
local linalg = require 'nanochat.optim.linalg'
local C, check = B.C, B.check

local Muon = B.class('muon', {
    lr = 0.02, momentum = 0.95, nesterov = true, ns_steps = 5, weight_decay = 0.0, scale = 'spectral',
    momentum_form = 'ema', state_bits = 32, block = 2048, rounding = 'nearest', seed = 0, quant = 'linear',
})

local function check_muon_group(kind, g)
    if g.state_bits ~= 32 and g.state_bits ~= 8 then
        error(kind .. ': state_bits must be 32 or 8, got ' .. tostring(g.state_bits), 5)
    end
    if g.momentum_form ~= 'ema' and g.momentum_form ~= 'sum' then
        error(kind .. ": momentum_form must be 'ema' or 'sum', got " .. tostring(g.momentum_form), 5)
    end
    if g.rounding ~= 'nearest' and g.rounding ~= 'stochastic' then
        error(kind .. ": rounding must be 'nearest' or 'stochastic', got " .. tostring(g.rounding), 5)
    end
    linalg.quant_map(kind, g.quant, 4)
    if type(g.block) ~= 'number' or g.block < 1 or g.block ~= math.floor(g.block) then
        error(kind .. ': block must be a positive integer, got ' .. tostring(g.block), 5)
    end
    B.muon_scale(g.scale, 1, 1)
end
Muon.check_muon_group = check_muon_group

function Muon:check_group(g) check_muon_group(self.kind, g) end

-- momentum state for a (rows, cols) update: slots m, or codes + scales
function Muon.add_state(self, st, g, shape, numel)
    if g.state_bits == 8 then
        self:_slot(st, 'codes', { numel }, 'i8')
        self:_slot(st, 'scales', { math.ceil(numel / g.block) }, 'f32')
        st.meta.counter = 0
    else
        self:_slot(st, 'm', shape)
    end
end

function Muon:init_state(e, st)
    local p = e.param
    if p:dim() < 2 then
        error(string.format('%s: parameter %s has shape (%s); Muon updates matrices only (send vectors, '
            .. 'embeddings and the LM head to AdamW or Lion, e.g. with nc.optim.hybrid)', self.kind, e.name,
            table.concat(p:shape(), ', ')), 4)
    end
    Muon.add_state(self, st, e.group, p:shape(), p:numel())
end

-- fill hp for a Muon update of a (rows, cols) matrix with numel n (also used by GaLore)
function Muon.fill_hp(hp, g, lr, rows, cols, st, index, n)
    hp.lr, hp.weight_decay = lr, g.weight_decay
    hp.momentum = g.momentum
    hp.dampening = g.momentum_form == 'sum' and 1 or (1 - g.momentum)
    hp.nesterov = g.nesterov and 1 or 0
    hp.ns_steps = g.ns_steps
    hp.scale = B.muon_scale(g.scale, rows, cols)
    hp.block = g.block
    hp.stochastic = g.rounding == 'stochastic' and 1 or 0
    hp.quant = linalg.quant_map('muon', g.quant)
    if g.state_bits == 8 then
        -- a distinct Philox stream per parameter; the counter advances by the draws of each step
        hp.seed = (g.seed or 0) * 65536 + index
        hp.counter = st.meta.counter
        st.meta.counter = st.meta.counter + math.ceil(n / 4)
    end
end

function Muon:update(e, grad, st, lr)
    local p, g, hp = e.param, e.group, self.hp
    local rows, cols = B.matrix_dims(p)
    Muon.fill_hp(hp, g, lr, rows, cols, st, e.index, p:numel())
    if g.state_bits == 8 then
        check(C.nc_muon8_step(p._c, grad._c, st.slots.codes._c, st.slots.scales._c, hp), self.kind .. ' (' .. e.name .. ')')
    else
        check(C.nc_muon_step(p._c, grad._c, st.slots.m._c, hp), self.kind .. ' (' .. e.name .. ')')
    end
end

return Muon
