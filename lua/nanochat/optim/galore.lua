-- lua/nanochat/optim/galore.lua — GaLore 2: low-rank gradient projection with the inner
-- optimizer's state in the r-dimensional space (algorithms.md §4).
--
-- For each 2-D parameter W (m, n) with rank r < min(m, n): every update_gap steps (step 0
-- included) the projector is recomputed from the current raw gradient — by randomized SVD
-- (svd = 'randomized', GaLore 2; oversample p, power_iters q, Philox-seeded) or exact LAPACK SVD
-- (svd = 'exact', GaLore 1). If m >= n the right singular vectors Q (n, r) are kept and
-- R = G Q (m, r); else the left ones P (m, r) and R = P^T G (r, n). The inner optimizer (AdamW,
-- Lion, Muon or 8-bit Muon, all in C: nc_galore_step) keeps its state at R's shape, and
-- W -= lr * alpha * backproject(N), then W *= 1 - lr wd. Moments continue across refreshes (as
-- in the reference). Parameters that are not matrices, or too small for rank r, get the inner
-- optimizer unprojected. The projector and the low-rank state are in state_dict.
--
-- Options (per group too): lr = 0.01, inner = 'adamw' | 'lion' | 'muon' | 'muon8', rank (absolute;
-- default rank_frac = 0.25 of min(m, n)), update_gap = 200, alpha ('auto' = 0.25 for AdamW/Lion,
-- 1 for Muon), svd = 'randomized' | 'exact' | 'identity' (projector forced to I, for tests),
-- oversample = 8, power_iters = 2, seed = 0, and the inner optimizer's options (betas, eps,
-- eps_mode = 'galore', weight_decay, momentum, nesterov, ns_steps, scale, momentum_form, block,
-- rounding, quant, ns_dtype, ns_form, momentum_warmup/_start/_cooldown/_end, total_steps).
local B = require 'nanochat.optim.base'
local linalg = require 'nanochat.optim.linalg'
local AdamW = require 'nanochat.optim.adamw'
local Lion = require 'nanochat.optim.lion'
local Muon = require 'nanochat.optim.muon'
local C, check = B.C, B.check

local Galore = B.class('galore', {
    lr = 0.01, inner = 'adamw', rank = 0, rank_frac = 0.25, update_gap = 200, alpha = 'auto',
    svd = 'randomized', oversample = 8, power_iters = 2, seed = 0,
    betas = { 0.9, 0.95 }, eps = 1e-8, eps_mode = 'galore', weight_decay = 0.0,
    momentum = 0.95, nesterov = true, ns_steps = 5, scale = 'spectral', momentum_form = 'ema', block = 2048,
    rounding = 'nearest', quant = 'linear', ns_dtype = 'auto', ns_form = 'auto',
    momentum_warmup = 0, momentum_start = 0.85, momentum_cooldown = 0, momentum_end = 0.85, total_steps = 0,
})

local INNER = { adamw = C.NC_OPTIM_ADAMW, lion = C.NC_OPTIM_LION, muon = C.NC_OPTIM_MUON, muon8 = C.NC_OPTIM_MUON8 }

function Galore:check_group(g)
    if not INNER[g.inner] then
        error("galore: inner must be 'adamw', 'lion', 'muon' or 'muon8', got " .. tostring(g.inner), 4)
    end
    if g.svd ~= 'randomized' and g.svd ~= 'exact' and g.svd ~= 'identity' then
        error("galore: svd must be 'randomized', 'exact' or 'identity', got " .. tostring(g.svd), 4)
    end
    if type(g.update_gap) ~= 'number' or g.update_gap < 1 then
        error('galore: update_gap must be >= 1, got ' .. tostring(g.update_gap), 4)
    end
    g.state_bits = g.inner == 'muon8' and 8 or 32
    if g.inner == 'muon' or g.inner == 'muon8' then Muon.check_muon_group('galore', g) else B.betas('galore', g) end
end

local function is_muon(g) return g.inner == 'muon' or g.inner == 'muon8' end

local function alpha_of(g)
    if g.alpha == 'auto' then return is_muon(g) and 1.0 or 0.25 end
    return g.alpha
end

-- inner state at `shape` (the low-rank shape, or the parameter's own)
local function add_inner_state(self, st, g, shape, numel)
    if is_muon(g) then Muon.add_state(self, st, g, shape, numel)
    elseif g.inner == 'lion' then self:_slot(st, 'm', shape)
    else
        self:_slot(st, 'm', shape)
        self:_slot(st, 'v', shape)
    end
end

function Galore:init_state(e, st)
    local p, g = e.param, e.group
    local info = { projected = false }
    if p:dim() == 2 then
        local m, n = p:size(0), p:size(1)
        local mn = math.min(m, n)
        local r = (g.rank and g.rank > 0) and g.rank or math.max(1, math.floor(mn * g.rank_frac))
        if g.svd == 'identity' then r = (m >= n) and n or m end
        if r < mn or g.svd == 'identity' then
            local side = m >= n and 'right' or 'left'
            local d = side == 'left' and m or n
            info = { projected = true, side = side, rank = r, lowrank = side == 'left' and { r, n } or { m, r } }
            self:_slot(st, 'proj', { d, r })
            add_inner_state(self, st, g, info.lowrank, info.lowrank[1] * info.lowrank[2])
            st.meta.refreshes = 0
        end
    end
    if not info.projected then
        if is_muon(g) and p:dim() < 2 then
            error(string.format('galore: parameter %s has shape (%s); a Muon inner optimizer needs matrices',
                e.name, table.concat(p:shape(), ', ')), 4)
        end
        add_inner_state(self, st, g, p:shape(), p:numel())
    end
    e.galore = info
end

-- recompute the projector of a projected parameter from its current gradient
local function refresh(e, st, grad)
    local g, info, proj = e.group, e.galore, st.slots.proj
    if g.svd == 'identity' then
        local d = proj:size(0)
        proj:zero_()
        for i = 0, d - 1 do proj:set(i, i, 1) end
    elseif g.svd == 'exact' then
        local u, _, vt = linalg.svd(grad:device() == 'cpu' and grad or grad:cpu())   -- LAPACK: on the host
        local src = info.side == 'left' and u:narrow(1, 0, info.rank) or vt:narrow(0, 0, info.rank):t()
        proj:copy_(src)
    else
        check(C.nc_rsvd_projector(proj._c, grad._c, linalg.SIDES[info.side], g.oversample, g.power_iters,
            (g.seed or 0) * 65536 + e.index, st.meta.refreshes * 4294967296), 'galore (' .. e.name .. ')')
    end
    st.meta.refreshes = st.meta.refreshes + 1
end

function Galore:update(e, grad, st, lr)
    local p, g, hp, info = e.param, e.group, self.hp, e.galore
    local op = 'galore (' .. e.name .. ')'
    local rows, cols = B.matrix_dims(p)
    local inner = INNER[g.inner]
    if is_muon(g) then
        local n = info.projected and info.lowrank[1] * info.lowrank[2] or p:numel()
        Muon.fill_hp(hp, g, lr, rows, cols, st, e.index, n)
    elseif g.inner == 'lion' then Lion.fill_hp(hp, 'galore', g, lr)
    else AdamW.fill_hp(hp, 'galore', g, lr, st.meta.step) end
    local s = st.slots
    if info.projected then
        if (st.meta.step - 1) % g.update_gap == 0 then refresh(e, st, grad) end
        hp.alpha = alpha_of(g)
        local s0, s1
        if g.inner == 'muon8' then s0, s1 = s.codes, s.scales else s0, s1 = s.m, s.v end
        check(C.nc_galore_step(p._c, grad._c, s.proj._c, linalg.SIDES[info.side], inner, s0._c, s1 and s1._c or nil, hp), op)
    elseif g.inner == 'muon8' then check(C.nc_muon8_step(p._c, grad._c, s.codes._c, s.scales._c, hp), op)
    elseif g.inner == 'muon' then check(C.nc_muon_step(p._c, grad._c, s.m._c, hp), op)
    elseif g.inner == 'lion' then check(C.nc_lion_step(p._c, grad._c, s.m._c, hp), op)
    else check(C.nc_adamw_step(p._c, grad._c, s.m._c, s.v._c, hp), op) end
end

-- {name = {projected, side, rank, lowrank = {rows, cols}}} for reports and specs
function Galore:projection_info()
    local out = {}
    for _, e in ipairs(self.entries) do out[e.name] = e.galore end
    return out
end

return Galore
