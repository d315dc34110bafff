-- lua/nanochat/optim/base.lua — what every optimizer shares: parameter groups, per-parameter
-- state, step(mult), zero_grad, state_dict / load_state_dict, state_bytes, reset_state.
--
-- Promise:
--  - params may be a list of tensors, a list of {name, tensor} pairs (model:named_parameters()),
--    a Module, or a list of groups { params = {...}, names = {...}, lr = ..., <hyperparameter> = ... };
--    group fields override the optimizer's options, which override the class defaults.
--  - state is allocated eagerly at construction (state_bytes() is exact before the first step)
--    as plain tensors on the parameter's device (cpu or cuda: the C steps dispatch on the
--    tensors' device, kernels/cuda/optim.cu); hyperparameters never live in C between calls.
--  - step(mult): for each group lr = group.lr * (mult or 1); params whose .grad is nil are
--    skipped (their step count does not advance). The update math is one C call per parameter.
--  - state_dict() -> { tensors = { ['<param name>.<slot>'] = Tensor (the live state, not a copy) },
--    meta = JSON-able table (kind, version, step count, group hyperparameters, per-parameter
--    counters) }. load_state_dict(sd) checks kind, names, shapes and dtypes (clear error naming
--    what is wrong) and copies bit for bit, so a resumed run continues exactly.
local core = require 'nanochat.core'
local Tensor = require 'nanochat.tensor'
local ffi, C = core.ffi, core.C

local B = {}

local Optimizer = {}
Optimizer.__index = Optimizer
B.Optimizer = Optimizer

-- A subclass: cls.kind (string), cls.defaults (hyperparameters and their default values);
-- cls(params, opts) builds an instance.
function B.class(kind, defaults)
    local cls = setmetatable({ kind = kind, defaults = defaults }, {
        __index = Optimizer,
        __call = function(c, params, opts) return setmetatable({}, c):_setup(params, opts) end,
    })
    cls.__index = cls
    cls.__tostring = Optimizer.__tostring
    return cls
end

local function deepcopy(v)
    if type(v) ~= 'table' or Tensor.is(v) then return v end
    local out = {}
    for k, x in pairs(v) do out[k] = deepcopy(x) end
    return out
end
B.deepcopy = deepcopy

local function is_pair(x)
    return type(x) == 'table' and not Tensor.is(x) and type(x[1]) == 'string' and Tensor.is(x[2])
end

-- Normalizes params into a list of groups {params = {tensors}, names = {strings}, ...}.
function B.normalize_groups(kind, params)
    if type(params) ~= 'table' then
        error(kind .. ': expected a list of tensors, {name, tensor} pairs or parameter groups, got ' .. type(params), 4)
    end
    if type(params.named_parameters) == 'function' then params = params:named_parameters() end
    if Tensor.is(params) then params = { params } end
    local groups
    if #params > 0 and type(params[1]) == 'table' and not Tensor.is(params[1]) and params[1].params then
        groups = params
    else
        groups = { { params = params } }
    end
    local out, counter = {}, 0
    for gi, g in ipairs(groups) do
        if type(g) ~= 'table' or type(g.params) ~= 'table' then
            error(string.format('%s: group %d has no params list', kind, gi), 4)
        end
        local ng = {}
        for k, v in pairs(g) do if k ~= 'params' and k ~= 'names' then ng[k] = v end end
        ng.params, ng.names = {}, {}
        for i, x in ipairs(g.params) do
            counter = counter + 1
            local name, t
            if is_pair(x) then name, t = x[1], x[2]
            elseif Tensor.is(x) then t = x; name = g.names and g.names[i] or ('p' .. counter)
            else
                error(string.format('%s: group %d entry %d is a %s, not a tensor or a {name, tensor} pair',
                    kind, gi, i, type(x)), 4)
            end
            ng.params[i], ng.names[i] = t, name
        end
        out[gi] = ng
    end
    return out
end

-- Shared constructor: self.groups, self.entries (ordered {name, tensor, group, index}),
-- self.state[tensor] = { slots = {slot = Tensor}, order = {slot names}, meta = {step = 0, ...} }.
function Optimizer:_setup(params, opts)
    opts = opts or {}
    self.opts = opts
    self.hp = ffi.new('nc_optim_hp')
    self.t = 0
    self.groups = B.normalize_groups(self.kind, params)
    self.entries, self.state, self.by_name = {}, {}, {}
    for gi, g in ipairs(self.groups) do
        for k, v in pairs(self.defaults) do
            if g[k] == nil then
                if opts[k] ~= nil then g[k] = deepcopy(opts[k]) else g[k] = deepcopy(v) end
            end
        end
        self:check_group(g, gi)
        for i, p in ipairs(g.params) do
            local name = g.names[i]
            if self.state[p] then error(string.format('%s: parameter %s appears twice', self.kind, name), 3) end
            if self.by_name[name] then error(string.format('%s: two parameters are named %s', self.kind, name), 3) end
            local e = { name = name, param = p, group = g, index = #self.entries + 1 }
            self.entries[#self.entries + 1] = e
            self.by_name[name] = e
            local st = { slots = {}, order = {}, meta = { step = 0 }, device = p:device() }
            self.state[p] = st
            self:init_state(e, st)
        end
    end
    return self
end

-- hooks a subclass may override
function Optimizer:check_group() end
function Optimizer:init_state() end
function Optimizer:on_reset() end

-- add a state tensor to st (zeros, on the parameter's device)
function Optimizer:_slot(st, name, shape, dtype)
    local t = Tensor.zeros(shape, dtype or 'f32', st.device)
    st.slots[name] = t
    st.order[#st.order + 1] = name
    return t
end

function Optimizer:step(mult)
    mult = mult or 1
    if type(mult) ~= 'number' or mult ~= mult or mult < 0 then
        error(self.kind .. ':step: mult must be a number >= 0, got ' .. tostring(mult), 2)
    end
    self.t = self.t + 1
    for _, e in ipairs(self.entries) do
        local g = rawget(e.param, 'grad')
        if g then
            local st = self.state[e.param]
            st.meta.step = st.meta.step + 1
            self:update(e, g, st, e.group.lr * mult)
        end
    end
end

function Optimizer:zero_grad()
    for _, e in ipairs(self.entries) do e.param.grad = nil end
end

-- ordered {name, tensor} list of the parameters this optimizer updates
function Optimizer:named_params()
    local out = {}
    for i, e in ipairs(self.entries) do out[i] = { e.name, e.param } end
    return out
end

function Optimizer:state_bytes()
    local n = 0
    for _, e in ipairs(self.entries) do
        for _, t in pairs(self.state[e.param].slots) do n = n + tonumber(t._c.storage.nbytes) end
    end
    return n
end

-- bytes of state per parameter name (for benchmarks and reports)
function Optimizer:state_bytes_by_param()
    local out = {}
    for _, e in ipairs(self.entries) do
        local n = 0
        for _, t in pairs(self.state[e.param].slots) do n = n + tonumber(t._c.storage.nbytes) end
        out[e.name] = n
    end
    return out
end

-- group hyperparameters saved in meta: every default key except the seed of derived values
local function group_meta(self, g)
    local out = {}
    for k in pairs(self.defaults) do out[k] = deepcopy(g[k]) end
    out.lr = g.lr
    return out
end

function Optimizer:state_dict()
    local tensors, pmeta, groups = {}, {}, {}
    for _, e in ipairs(self.entries) do
        local st = self.state[e.param]
        for _, slot in ipairs(st.order) do tensors[e.name .. '.' .. slot] = st.slots[slot] end
        pmeta[e.name] = deepcopy(st.meta)
    end
    for gi, g in ipairs(self.groups) do groups[gi] = group_meta(self, g) end
    return { tensors = tensors, meta = { kind = self.kind, version = 1, t = self.t, groups = groups, params = pmeta } }
end

local function shape_str(t) return '(' .. table.concat(t:shape(), ', ') .. ')' end

function Optimizer:load_state_dict(sd)
    local kind = self.kind
    if type(sd) ~= 'table' or type(sd.tensors) ~= 'table' or type(sd.meta) ~= 'table' then
        error(kind .. ':load_state_dict: expected {tensors = {...}, meta = {...}}', 2)
    end
    local meta = sd.meta
    if meta.kind ~= kind then
        error(string.format('%s:load_state_dict: the state dict is from a %s optimizer, not %s', kind,
            tostring(meta.kind), kind), 2)
    end
    if type(meta.groups) ~= 'table' or #meta.groups ~= #self.groups then
        error(string.format('%s:load_state_dict: the state dict has %s parameter groups, this optimizer %d', kind,
            type(meta.groups) == 'table' and tostring(#meta.groups) or 'no', #self.groups), 2)
    end
    local problems, seen = {}, {}
    for _, e in ipairs(self.entries) do
        local st = self.state[e.param]
        if type(meta.params) ~= 'table' or type(meta.params[e.name]) ~= 'table' then
            problems[#problems + 1] = 'no meta for parameter ' .. e.name
        end
        for _, slot in ipairs(st.order) do
            local key = e.name .. '.' .. slot
            seen[key] = true
            local src, own = sd.tensors[key], st.slots[slot]
            if src == nil then problems[#problems + 1] = 'missing state tensor ' .. key
            elseif not Tensor.is(src) then problems[#problems + 1] = key .. ' is not a tensor'
            elseif src:dtype() ~= own:dtype() or shape_str(src) ~= shape_str(own) then
                problems[#problems + 1] = string.format('%s is %s %s, expected %s %s', key, shape_str(src),
                    src:dtype(), shape_str(own), own:dtype())
            end
        end
    end
    local extra = {}
    for k in pairs(sd.tensors) do if not seen[k] then extra[#extra + 1] = k end end
    table.sort(extra)
    for _, k in ipairs(extra) do problems[#problems + 1] = 'unexpected state tensor ' .. k end
    if #problems > 0 then error(kind .. ':load_state_dict: ' .. table.concat(problems, '; '), 2) end
    for _, e in ipairs(self.entries) do
        local st = self.state[e.param]
        for _, slot in ipairs(st.order) do st.slots[slot]:copy_(sd.tensors[e.name .. '.' .. slot]) end
        st.meta = deepcopy(meta.params[e.name])
    end
    for gi, g in ipairs(self.groups) do
        for k, v in pairs(meta.groups[gi]) do g[k] = deepcopy(v) end
    end
    self.t = meta.t or 0
end

-- Zero the state of the given parameters (tensors or names; nil = all) and restart their step
-- counts, as if they were new (FIRE calls this for the weights it re-initializes).
function Optimizer:reset_state(params)
    local list = {}
    if params == nil then
        for _, e in ipairs(self.entries) do list[#list + 1] = e end
    else
        for _, x in ipairs(params) do
            local e
            if type(x) == 'string' then e = self.by_name[x]
            elseif is_pair(x) then e = self.by_name[x[1]]
            else
                for _, en in ipairs(self.entries) do if en.param == x then e = en end end
            end
            if e then list[#list + 1] = e end   -- parameters of other optimizers are ignored
        end
    end
    for _, e in ipairs(list) do
        local st = self.state[e.param]
        for _, t in pairs(st.slots) do t:zero_() end
        st.meta.step = 0
        self:on_reset(e, st)
    end
    return #list
end

function Optimizer:__tostring()
    local n = 0
    for _, e in ipairs(self.entries) do n = n + e.param:numel() end
    return string.format('%s(%d tensors, %d params, %d groups, state %.1f KiB)', self.kind, #self.entries, n,
        #self.groups, self:state_bytes() / 1024)
end

-- helpers for subclasses ---------------------------------------------------------------------
-- (rows, cols) of a parameter seen as a matrix
function B.matrix_dims(p)
    local rows = p:size(0)
    return rows, rows > 0 and p:numel() / rows or 0
end

-- Muon's update multiplier for a (rows, cols) matrix
function B.muon_scale(scale, rows, cols)
    if scale == nil or scale == 'spectral' then return math.sqrt(math.max(1, rows / cols)) end
    if scale == 'rms' then return 0.2 * math.sqrt(math.max(rows, cols)) end
    if type(scale) == 'number' then return scale end
    error("muon: scale must be 'spectral', 'rms' or a number, got " .. tostring(scale), 4)
end

function B.betas(kind, g)
    local b = g.betas
    if type(b) ~= 'table' or type(b[1]) ~= 'number' or type(b[2]) ~= 'number' then
        error(kind .. ': betas must be a pair of numbers {beta1, beta2}', 4)
    end
    return b[1], b[2]
end

B.check = core.check
B.C = C
return B
