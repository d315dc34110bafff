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
--           denser near 0, nanochat.h enum nc_quant8_map; nc.optim.codebook('dynamic') lists it),
--   ns_dtype = 'auto' | 'f32' | 'bf16': the Newton-Schulz products (nanochat.h enum nc_ns_dtype):
--           'bf16' rounds each product's inputs to bf16 and accumulates in f32 (the reference
--           Muon runs NS in bfloat16), 'f32' is OpenBLAS sgemm, 'auto' (default) = 'bf16' where a
--           hardware bf16 GEMM runs (AMX, AVX-512 BF16), else 'f32'. CUDA tensors: always f32.
--   ns_form = 'auto' | 'standard' | 'gram': the Newton-Schulz iteration (nanochat.h enum
--           nc_ns_form): 'gram' runs the same polynomial on the small (r x r) side of an (r, c)
--           matrix and restarts every 3 steps (fewer multiply-adds once c >= ~2.5 r; bf16 or f32
--           products), 'standard' the textbook form, 'auto' (default) = 'gram' once c >= 3 r and r >= 64,
--           else 'standard'. README "Gram Newton-Schulz". CUDA: standard.
--   momentum warmup / cooldown (algorithms.md §2.5; off by default): momentum_warmup = N ramps the
--           momentum linearly from momentum_start (0.85) at the parameter's step 0 to `momentum`
--           at step N (modded-nanogpt: 0.85 -> 0.95 over 300); momentum_cooldown = K with
--           total_steps = T ramps it from there to momentum_end (0.85) over the last K steps, the
--           last step (T - 1) at momentum_end exactly (nanochat: 0.97 -> 0.90 in the warmdown).
--           Muon.momentum_at(group, step) gives the value; the step is the parameter's own
--           0-based step count (checkpointed, so a resumed run continues the ramp).
-- Parameters must be matrices (2 or more dims; (shape[0], rest)); send embeddings, the LM head
-- and vectors to AdamW/Lion (nc.optim.hybrid does).
-- State: f32 m (4 bytes per element) or i8 codes + one f32 scale per block (1 + 4/block bytes).
local B = require 'nanochat.optim.base'
local linalg = require 'nanochat.optim.linalg'
local C, check = B.C, B.check
local ffi = require 'ffi'

local Muon = B.class('muon', {
    lr = 0.02, momentum = 0.95, nesterov = true, ns_steps = 5, weight_decay = 0.0, scale = 'spectral',
    momentum_form = 'ema', state_bits = 32, block = 2048, rounding = 'nearest', seed = 0, quant = 'linear',
    ns_dtype = 'auto', ns_form = 'auto', momentum_warmup = 0, momentum_start = 0.85, momentum_cooldown = 0, momentum_end = 0.85, total_steps = 0,
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
    linalg.ns_dtype(kind, g.ns_dtype, 'auto', 4)
    linalg.ns_form(kind, g.ns_form, 4)
    local function int_ge0(k)
        local v = g[k]
        if type(v) ~= 'number' or v < 0 or v ~= math.floor(v) then
            error(kind .. ': ' .. k .. ' must be an integer >= 0, got ' .. tostring(v), 6)
        end
    end
    int_ge0('momentum_warmup'); int_ge0('momentum_cooldown'); int_ge0('total_steps')
    for _, k in ipairs { 'momentum_start', 'momentum_end' } do
        local v = g[k]
        if type(v) ~= 'number' or not (v >= 0 and v < 1) then
            error(kind .. ': ' .. k .. ' must lie in [0, 1), got ' .. tostring(v), 5)
        end
    end
    if g.momentum_cooldown > 0 and g.total_steps < g.momentum_cooldown then
        error(string.format('%s: momentum_cooldown = %d needs total_steps >= %d, got total_steps = %d', kind,
            g.momentum_cooldown, g.momentum_cooldown, g.total_steps), 5)
    end
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

-- the momentum at the parameter's 0-based step t (warmup, then cooldown, then `momentum`)
function Muon.momentum_at(g, t)
    local mu = g.momentum
    local w = g.momentum_warmup or 0
    if w > 0 and t < w then mu = g.momentum_start + (mu - g.momentum_start) * (t / w) end
    local k, T = g.momentum_cooldown or 0, g.total_steps or 0
    if k > 0 and t >= T - k then
        local frac = math.min(1, (t - (T - k) + 1) / k)
        mu = mu + (g.momentum_end - mu) * frac
    end
    return mu
end

-- fill hp for a Muon update of a (rows, cols) matrix with numel n (also used by GaLore)
function Muon.fill_hp(hp, g, lr, rows, cols, st, index, n)
    hp.lr, hp.weight_decay = lr, g.weight_decay
    local mu = Muon.momentum_at(g, st.meta.step - 1)
    hp.momentum = mu
    hp.dampening = g.momentum_form == 'sum' and 1 or (1 - mu)
    hp.nesterov = g.nesterov and 1 or 0
    hp.ns_steps = g.ns_steps
    hp.scale = B.muon_scale(g.scale, rows, cols)
    hp.block = g.block
    hp.stochastic = g.rounding == 'stochastic' and 1 or 0
    hp.quant = linalg.quant_map('muon', g.quant)
    hp.ns_dtype = linalg.ns_dtype('muon', g.ns_dtype, 'auto')
    hp.ns_form = linalg.ns_form('muon', g.ns_form)
    if g.state_bits == 8 then
        -- a distinct Philox stream per parameter; the counter advances by the draws of each step
        hp.seed = (g.seed or 0) * 65536 + index
        hp.counter = st.meta.counter
        st.meta.counter = st.meta.counter + math.ceil(n / 4)
    end
end

-- One C call for every matrix with a gradient (nc_muon_step_many: the results of one
-- nc_muon_step / nc_muon8_step per matrix, bit for bit; with the bf16 Newton-Schulz the
-- matrices share the threads one per thread). Same bookkeeping as Optimizer.step.
function Muon:step(mult)
    mult = mult or 1
    if type(mult) ~= 'number' or mult ~= mult or mult < 0 then
        error(self.kind .. ':step: mult must be a number >= 0, got ' .. tostring(mult), 2)
    end
    self.t = self.t + 1
    local list = {}
    for _, e in ipairs(self.entries) do
        local grad = rawget(e.param, 'grad')
        if grad then
            local st = self.state[e.param]
            st.meta.step = st.meta.step + 1
            list[#list + 1] = { e, grad, st }
        end
    end
    local n = #list
    if n == 0 then return end
    local P, G = ffi.new('nc_tensor *[?]', n), ffi.new('const nc_tensor *[?]', n)
    local M, CD, SC = ffi.new('nc_tensor *[?]', n), ffi.new('nc_tensor *[?]', n), ffi.new('nc_tensor *[?]', n)
    local HP = ffi.new('nc_optim_hp[?]', n)
    for k, it in ipairs(list) do
        local e, grad, st = it[1], it[2], it[3]
        local p, g = e.param, e.group
        local rows, cols = B.matrix_dims(p)
        Muon.fill_hp(HP[k - 1], g, g.lr * mult, rows, cols, st, e.index, p:numel())
        P[k - 1], G[k - 1] = p._c, grad._c
        if g.state_bits == 8 then CD[k - 1], SC[k - 1] = st.slots.codes._c, st.slots.scales._c
        else M[k - 1] = st.slots.m._c end
    end
    local failed = ffi.new('int32_t[1]', -1)
    local rc = C.nc_muon_step_many(n, P, G, M, CD, SC, HP, failed)
    if rc ~= 0 then
        -- the C call checks every entry before changing any state: undo this step's bookkeeping
        -- (not after running out of memory, which can come midway, with earlier matrices updated)
        for _, it in ipairs(rc == C.NC_ERR_OOM and {} or list) do
            local st = it[3]
            st.meta.step = st.meta.step - 1
            if it[1].group.state_bits == 8 then st.meta.counter = st.meta.counter - math.ceil(it[1].param:numel() / 4) end
        end
        if rc ~= C.NC_ERR_OOM then self.t = self.t - 1 end
        local bad = list[failed[0] + 1]
        check(rc, self.kind .. (bad and ' (' .. bad[1].name .. ')' or ''))
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
