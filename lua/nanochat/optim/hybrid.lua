-- lua/nanochat/optim/hybrid.lua — one optimizer object over several: parameters are assigned by
-- role (roles.lua: model:param_roles() or the name/shape fallback) to a rule per role, and
-- step(mult) steps every part with the same schedule multiplier.
--
--   nc.optim.hybrid{
--     model = m,                      -- or named_params = {{name, tensor}, ...}
--     rules = {                       -- merged over hybrid.DEFAULTS, role by role
--       matrix    = { optim = 'muon', lr = 0.02, galore = { rank_frac = 0.25, ... } },  -- galore optional
--       embedding = { optim = 'adamw', lr = 3e-3 },
--       head      = { optim = 'adamw', lr = 3e-3 },
--       norm      = { optim = 'adamw', lr = 3e-3 },
--       scalar    = { optim = 'lion', lr = 3e-4, lr_mult = 0.5 },
--     },
--     roles = { ['pattern'] = 'role' } or function(name, t) -> role,   -- optional overrides
--   }
-- optim: 'adamw' | 'lion' | 'muon' | 'muon8'; a rule with `galore = {...}` runs GaLore 2 with that
-- optimizer inside. A rule's other fields are the optimizer's options for that role's group;
-- its lr is multiplied by lr_mult (default 1). Same interface as every optimizer: step(mult),
-- zero_grad, state_dict / load_state_dict (tensors prefixed '<part>/'), state_bytes,
-- reset_state; plus assignments() -> {name = {role =, optim =}} and parts (kind -> optimizer).
local base = require 'nanochat.optim.base'
local roles = require 'nanochat.optim.roles'

local CLASSES = {
    adamw = require 'nanochat.optim.adamw',
    lion = require 'nanochat.optim.lion',
    muon = require 'nanochat.optim.muon',
    galore = require 'nanochat.optim.galore',
}

local Hybrid = {}
Hybrid.__index = Hybrid
Hybrid.kind = 'hybrid'

Hybrid.DEFAULTS = {
    matrix = { optim = 'muon', lr = 0.02 },
    embedding = { optim = 'adamw', lr = 3e-3 },
    head = { optim = 'adamw', lr = 3e-3 },
    norm = { optim = 'adamw', lr = 3e-3, weight_decay = 0 },
    scalar = { optim = 'adamw', lr = 3e-3, weight_decay = 0 },
}
local ROLE_ORDER = { 'matrix', 'embedding', 'head', 'norm', 'scalar' }

local function merged_rule(role, user)
    local r = base.deepcopy(Hybrid.DEFAULTS[role])
    if user then
        if user.optim and user.optim ~= r.optim then r = { optim = user.optim } end
        for k, v in pairs(user) do r[k] = base.deepcopy(v) end
    end
    return r
end

-- (part key, group table) for a role's rule
local function group_for(role, rule)
    local optim = rule.optim
    if optim ~= 'adamw' and optim ~= 'lion' and optim ~= 'muon' and optim ~= 'muon8' then
        error(string.format("hybrid: rule %s: optim must be 'adamw', 'lion', 'muon' or 'muon8', got %s", role,
            tostring(optim)), 4)
    end
    local g = { role = role }
    for k, v in pairs(rule) do
        if k ~= 'optim' and k ~= 'galore' and k ~= 'lr_mult' then g[k] = base.deepcopy(v) end
    end
    if rule.lr == nil then error('hybrid: rule ' .. role .. ' has no lr', 4) end
    g.lr = rule.lr * (rule.lr_mult or 1)
    if rule.galore then
        for k, v in pairs(rule.galore) do g[k] = base.deepcopy(v) end
        g.inner = optim
        return 'galore', g
    end
    if optim == 'muon8' then g.state_bits = 8; return 'muon', g end
    return optim, g
end

function Hybrid.new(opts)
    opts = opts or {}
    local target = opts.model or opts.named_params
    if not target then error('hybrid: expected model = <module> or named_params = {{name, tensor}, ...}', 2) end
    local named, model = roles.named(target, 'hybrid')
    local assigned = roles.assign(named, model, opts.roles, 'hybrid')
    local rules = {}
    for _, role in ipairs(ROLE_ORDER) do rules[role] = merged_rule(role, opts.rules and opts.rules[role]) end
    for k in pairs(opts.rules or {}) do
        if not rules[k] then error('hybrid: unknown role ' .. tostring(k) .. ' in rules', 2) end
    end
    -- groups per part, one per role, parameters in model order
    local parts, part_order, groups_of = {}, {}, {}
    local self = setmetatable({ parts = parts, part_order = part_order, roles = assigned, t = 0, where = {} }, Hybrid)
    for _, role in ipairs(ROLE_ORDER) do
        local list = {}
        for _, nt in ipairs(named) do if assigned[nt[1]] == role then list[#list + 1] = nt end end
        if #list > 0 then
            local key, g = group_for(role, rules[role])
            g.params = list
            if not groups_of[key] then groups_of[key] = {}; part_order[#part_order + 1] = key end
            local gl = groups_of[key]
            gl[#gl + 1] = g
            for _, nt in ipairs(list) do
                self.where[nt[1]] = { role = role, optim = rules[role].galore and ('galore+' .. rules[role].optim) or rules[role].optim }
            end
        end
    end
    for _, key in ipairs(part_order) do parts[key] = CLASSES[key](groups_of[key]) end
    return self
end

-- hybrid.time_parts = a clock function (seconds): each step records its parts' times in
-- hybrid.part_s[key] (key: 'muon', 'adamw', ...; benchmarks use it)
function Hybrid:step(mult)
    self.t = self.t + 1
    local clock = self.time_parts
    if clock then self.part_s = self.part_s or {} end
    for _, key in ipairs(self.part_order) do
        local t0 = clock and clock()
        self.parts[key]:step(mult)
        if clock then self.part_s[key] = clock() - t0 end
    end
end

function Hybrid:zero_grad()
    for _, key in ipairs(self.part_order) do self.parts[key]:zero_grad() end
end

function Hybrid:state_bytes()
    local n = 0
    for _, key in ipairs(self.part_order) do n = n + self.parts[key]:state_bytes() end
    return n
end

function Hybrid:state_bytes_by_param()
    local out = {}
    for _, key in ipairs(self.part_order) do
        for k, v in pairs(self.parts[key]:state_bytes_by_param()) do out[k] = v end
    end
    return out
end

function Hybrid:named_params()
    local out = {}
    for _, key in ipairs(self.part_order) do
        for _, nt in ipairs(self.parts[key]:named_params()) do out[#out + 1] = nt end
    end
    return out
end

-- {name = {role = ..., optim = ...}}
function Hybrid:assignments() return base.deepcopy(self.where) end

function Hybrid:state_dict()
    local tensors, metas = {}, {}
    for _, key in ipairs(self.part_order) do
        local sd = self.parts[key]:state_dict()
        for k, v in pairs(sd.tensors) do tensors[key .. '/' .. k] = v end
        metas[key] = sd.meta
    end
    return { tensors = tensors, meta = { kind = 'hybrid', version = 1, t = self.t, parts = metas } }
end

function Hybrid:load_state_dict(sd)
    if type(sd) ~= 'table' or type(sd.tensors) ~= 'table' or type(sd.meta) ~= 'table' then
        error('hybrid:load_state_dict: expected {tensors = {...}, meta = {...}}', 2)
    end
    if sd.meta.kind ~= 'hybrid' then
        error('hybrid:load_state_dict: the state dict is from a ' .. tostring(sd.meta.kind) .. ' optimizer, not hybrid', 2)
    end
    local split, extra = {}, {}
    for k, v in pairs(sd.tensors) do
        local key, rest = k:match('^([^/]+)/(.*)$')
        if key and self.parts[key] then
            split[key] = split[key] or {}
            split[key][rest] = v
        else extra[#extra + 1] = k end
    end
    if #extra > 0 then
        table.sort(extra)
        error('hybrid:load_state_dict: unexpected state tensors ' .. table.concat(extra, ', '), 2)
    end
    for _, key in ipairs(self.part_order) do
        local meta = sd.meta.parts and sd.meta.parts[key]
        if not meta then error('hybrid:load_state_dict: the state dict has no ' .. key .. ' part', 2) end
        local ok, err = pcall(self.parts[key].load_state_dict, self.parts[key], { tensors = split[key] or {}, meta = meta })
        if not ok then error('hybrid:load_state_dict: ' .. tostring(err), 2) end
    end
    self.t = sd.meta.t or 0
end

function Hybrid:reset_state(params)
    local n = 0
    for _, key in ipairs(self.part_order) do n = n + self.parts[key]:reset_state(params) end
    return n
end

function Hybrid:__tostring()
    local lines = { string.format('hybrid(state %.1f KiB)', self:state_bytes() / 1024) }
    for _, key in ipairs(self.part_order) do lines[#lines + 1] = '  ' .. key .. ': ' .. tostring(self.parts[key]) end
    return table.concat(lines, '\n')
end

return setmetatable(Hybrid, { __call = function(_, opts) return Hybrid.new(opts) end })
