-- lua/nanochat/nn.lua — nc.nn: the Module base class and the basic layers.
--
-- Promise: modules in the Torch7 / PyTorch spirit, with a deterministic parameter order.
--
--   local MyNet = nc.nn.Module:extend('MyNet')
--   function MyNet:init(d)
--       self.fc = nc.nn.Linear(d, d)              -- a Module assigned to a new field is registered
--       self:param('scale', nc.ones{d})           -- tensors are registered explicitly (requires_grad set)
--       self:buffer('mask', nc.zeros{d})          -- state that is saved but not trained
--   end
--   function MyNet:forward(x) return self.fc(x) * self.scale end
--   local net = MyNet(16)                         -- MyNet.new(16) works too; net(x) calls forward
--
-- Registration rules (the choice this file makes):
--  - self:param(name, t) registers a parameter, self:buffer(name, t) a buffer, self:add(name, m)
--    a submodule; each also sets self[name]. Assigning a Module to a new field (self.fc = ...) is
--    detected by __newindex and registers it like add(). Tensors are never registered implicitly:
--    a tensor field that was not passed to param/buffer is plain state (e.g. RoPE tables), and a
--    plain Lua table of modules is not searched (use nc.nn.ModuleList).
--  - A registry keeps names only; values are read from the fields, so replacing a registered
--    field (self.fc = other, self.weight = t) is seen by parameters() and state_dict().
--  - Order is registration order (parameters, buffers and submodules interleaved as registered),
--    depth first into submodules. Names are dotted paths ("h.0.attn.wq.weight").
--  - Fields whose names start with '_' and the 'training' flag are reserved.
--
-- Layers: Linear(in, out, {bias=true}) with W (out, in) ~ U(-1/sqrt(in), 1/sqrt(in)) (bias too),
-- Embedding(num, dim) ~ N(0, 1), RMSNorm(dim, {eps=1e-6, weight=true}) with weight = ones;
-- all drawn from the global seeded generator (nc.manual_seed). Containers: Sequential(...) and
-- ModuleList{...} (children named "0", "1", ...; list[i] is child i-1).
local M = {}

local function nc() return require 'nanochat' end   -- resolved lazily (nanochat requires us lazily too)
local Tensor = require 'nanochat.tensor'

local function shape_str(t) return '(' .. table.concat(t:shape(), ', ') .. ')' end

-- ---- class machinery ---------------------------------------------------------------------------
local Module = { __name = 'Module' }
M.Module = Module

local function is_module(v)
    return type(v) == 'table' and rawget(v, '_registry') ~= nil
end
M.is_module = is_module

-- metamethods every class (the metatable of its instances) carries
local function instance_newindex(self, k, v)
    if is_module(v) and type(k) == 'string' and k:sub(1, 1) ~= '_' then
        local reg = rawget(self, '_registry')
        if not reg.kind[k] then
            reg.order[#reg.order + 1] = k
            reg.kind[k] = 'module'
        end
    end
    rawset(self, k, v)
end

local function instance_call(self, ...) return self:forward(...) end

local function construct(cls, ...)
    local obj = setmetatable({ _registry = { order = {}, kind = {} }, training = true }, cls)
    obj:init(...)
    return obj
end

-- Module:extend(name) -> a subclass; Sub(...) or Sub.new(...) builds an instance via Sub:init(...).
function Module:extend(name)
    local cls = {}
    for k, v in pairs(self) do   -- copy metamethods (they are not inherited through __index)
        if type(k) == 'string' and k:sub(1, 2) == '__' then cls[k] = v end
    end
    cls.__name = name or ((self.__name or 'Module') .. 'Subclass')
    cls.__index = cls
    cls.super = self
    cls.new = function(...) return construct(cls, ...) end
    return setmetatable(cls, { __index = self, __call = construct, __tostring = function() return 'class ' .. cls.__name end })
end

Module.__index = Module
Module.__newindex = instance_newindex
Module.__call = instance_call
Module.new = function(...) return construct(Module, ...) end
setmetatable(Module, { __call = construct, __tostring = function() return 'class Module' end })

function Module:init() end
function Module:forward()
    error((self.__name or 'Module') .. ': a Module subclass must define forward(...)', 2)
end

local function check_name(self, what, name)
    if type(name) ~= 'string' or name == '' or name:find('.', 1, true) or name:sub(1, 1) == '_' or name == 'training' then
        error(string.format('%s:%s: invalid name %s (a non-empty string without dots, not starting with _)',
            self.__name, what, tostring(name)), 3)
    end
    local v = self[name]
    if type(v) == 'function' then
        error(string.format('%s:%s: name %s would hide the method %s', self.__name, what, name, name), 3)
    end
end

local function register(self, name, kind)
    local reg = rawget(self, '_registry')
    if not reg.kind[name] then reg.order[#reg.order + 1] = name end
    reg.kind[name] = kind
end

-- Register tensor t as a parameter (requires_grad is switched on); returns t.
function Module:param(name, t)
    check_name(self, 'param', name)
    if not Tensor.is(t) then error(string.format('%s:param: %s must be a tensor, got %s', self.__name, name, type(t)), 2) end
    if not t.requires_grad then t:requires_grad_(true) end
    register(self, name, 'param')
    rawset(self, name, t)
    return t
end

-- Register a buffer: saved in state_dict (unless persistent == false) but not trained.
function Module:buffer(name, t, opts)
    check_name(self, 'buffer', name)
    if t ~= nil and not Tensor.is(t) then
        error(string.format('%s:buffer: %s must be a tensor or nil, got %s', self.__name, name, type(t)), 2)
    end
    register(self, name, (opts and opts.persistent == false) and 'buffer_np' or 'buffer')
    rawset(self, name, t)
    return t
end

-- Register a submodule; returns it.
function Module:add(name, m)
    if type(name) == 'number' then name = tostring(name) end
    if type(name) == 'string' and name:match('^%d+$') then
        -- numeric names are for containers; no field check needed
    else
        check_name(self, 'add', name)
    end
    if not is_module(m) then error(string.format('%s:add: %s must be a module, got %s', self.__name, name, type(m)), 2) end
    register(self, name, 'module')
    rawset(self, name, m)
    return m
end

-- Walk registered entries depth first: fn(kind, full_name, value, owner, local_name)
local function walk(self, prefix, fn, seen)
    seen = seen or {}
    local reg = rawget(self, '_registry')
    for _, name in ipairs(reg.order) do
        local kind = reg.kind[name]
        local v = rawget(self, name)
        local full = prefix .. name
        if kind == 'module' then
            if is_module(v) and not seen[v] then
                seen[v] = true
                walk(v, full .. '.', fn, seen)
            end
        elseif v ~= nil then
            fn(kind, full, v, self, name)
        end
    end
end

-- Ordered list of {name, tensor}; a tensor shared between two places is listed once (first name).
function Module:named_parameters()
    local out, seen = {}, {}
    walk(self, '', function(kind, full, v)
        if kind == 'param' and not seen[v] then
            seen[v] = true
            out[#out + 1] = { full, v }
        end
    end)
    return out
end

function Module:parameters()
    local out = {}
    for i, nv in ipairs(self:named_parameters()) do out[i] = nv[2] end
    return out
end

function Module:named_buffers()
    local out = {}
    walk(self, '', function(kind, full, v)
        if kind == 'buffer' or kind == 'buffer_np' then out[#out + 1] = { full, v } end
    end)
    return out
end

-- Ordered list of {name, module} for every submodule (not self), depth first.
function Module:named_modules()
    local out = {}
    local function rec(m, prefix, seen)
        local reg = rawget(m, '_registry')
        for _, name in ipairs(reg.order) do
            local v = rawget(m, name)
            if reg.kind[name] == 'module' and is_module(v) and not seen[v] then
                seen[v] = true
                out[#out + 1] = { prefix .. name, v }
                rec(v, prefix .. name .. '.', seen)
            end
        end
    end
    rec(self, '', {})
    return out
end

function Module:modules()
    local out = {}
    for i, nv in ipairs(self:named_modules()) do out[i] = nv[2] end
    return out
end

function Module:num_params()
    local n = 0
    for _, p in ipairs(self:parameters()) do n = n + p:numel() end
    return n
end

-- ---- modes and gradients -------------------------------------------------------------------------
function Module:train(on)
    if on == nil then on = true end
    rawset(self, 'training', on and true or false)
    for _, m in ipairs(self:modules()) do rawset(m, 'training', on and true or false) end
    return self
end

function Module:eval() return self:train(false) end

-- Drops every parameter's gradient (like nc.zero_grad); opts.set_to_none = false zeroes the
-- existing buffers in place instead (no allocation in the next backward).
function Module:zero_grad(opts)
    local keep = opts and opts.set_to_none == false
    for _, p in ipairs(self:parameters()) do
        if keep and p.grad then p.grad:zero_() else p.grad = nil end
    end
end

-- ---- state -----------------------------------------------------------------------------------------
-- name -> tensor (parameters and persistent buffers; the tensors themselves, not copies)
function Module:state_dict()
    local sd = {}
    walk(self, '', function(kind, full, v)
        if kind ~= 'buffer_np' and sd[full] == nil then sd[full] = v end
    end)
    return sd
end

-- Copies sd's values into this module's tensors in place (dtype/device converted by copy_).
-- opts.strict (default true): a missing or unexpected key is an error. A shape mismatch is
-- always an error. Returns {missing = {...}, unexpected = {...}} (sorted names).
function Module:load_state_dict(sd, opts)
    opts = opts or {}
    local strict = opts.strict ~= false
    if type(sd) ~= 'table' then error('load_state_dict: expected a table name -> tensor, got ' .. type(sd), 2) end
    local own = self:state_dict()
    local missing, unexpected, problems = {}, {}, {}
    for name, t in pairs(own) do
        local src = sd[name]
        if src == nil then
            missing[#missing + 1] = name
        elseif not Tensor.is(src) then
            problems[#problems + 1] = string.format('value for %s is a %s, not a tensor', name, type(src))
        elseif table.concat(src:shape(), ',') ~= table.concat(t:shape(), ',') then
            problems[#problems + 1] = string.format('shape mismatch for %s: the model has %s, the state dict %s',
                name, shape_str(t), shape_str(src))
        end
    end
    for name in pairs(sd) do
        if own[name] == nil then unexpected[#unexpected + 1] = name end
    end
    table.sort(missing)
    table.sort(unexpected)
    table.sort(problems)
    if strict then
        for _, name in ipairs(missing) do
            problems[#problems + 1] = string.format('missing key %s (the model expects shape %s)', name, shape_str(own[name]))
        end
        for _, name in ipairs(unexpected) do
            local v = sd[name]
            problems[#problems + 1] = string.format('unexpected key %s%s', name,
                Tensor.is(v) and (' (shape ' .. shape_str(v) .. ')') or '')
        end
    end
    if #problems > 0 then
        error('load_state_dict: ' .. table.concat(problems, '; '), 2)
    end
    for name, t in pairs(own) do
        local src = sd[name]
        if src ~= nil then t:copy_(src) end
    end
    return { missing = missing, unexpected = unexpected }
end

-- m:to('cuda'), m:to('bf16'), m:to{device=, dtype=}: moves every parameter and buffer to the
-- device; a dtype applies to floating-point tensors only (integer buffers keep theirs), as in
-- PyTorch. Changed parameters are replaced by new leaf tensors (their gradients are dropped).
function Module:to(...)
    local core = require 'nanochat.core'
    local dev, dt
    for _, a in ipairs { ... } do
        if type(a) == 'table' then dev, dt = a.device or dev, a.dtype or dt
        elseif core.device_ids[a] then dev = a
        else dt = a end
    end
    walk(self, '', function(kind, _, v, owner, name)
        local target = { device = dev }
        if dt and core.C.nc_dtype_info(v._c.dtype).is_float == 1 then target.dtype = dt end
        if target.device == nil and target.dtype == nil then return end
        local nv = v:to(target)
        if nv ~= v then
            nv = nv:detach()
            if kind == 'param' and nv:dtype() == 'f32' then nv:requires_grad_(true) end
            rawset(owner, name, nv)
        end
    end)
    return self
end

-- ---- printing -------------------------------------------------------------------------------------
function Module:extra_repr() return '' end

function Module.__tostring(self)
    local lines = {}
    local head = (self.__name or 'Module') .. '(' .. self:extra_repr()
    local reg = rawget(self, '_registry')
    local children = {}
    for _, name in ipairs(reg.order) do
        local v = rawget(self, name)
        if reg.kind[name] == 'module' and is_module(v) then children[#children + 1] = { name, v } end
    end
    if #children == 0 then return head .. ')' end
    lines[1] = head
    for _, c in ipairs(children) do
        local s = tostring(c[2]):gsub('\n', '\n  ')
        lines[#lines + 1] = '  (' .. c[1] .. '): ' .. s
    end
    lines[#lines + 1] = ')'
    return table.concat(lines, '\n')
end

-- ---- layers ----------------------------------------------------------------------------------------
local Linear = Module:extend('Linear')
M.Linear = Linear

-- y = x W^T + b; W (out, in)
function Linear:init(in_features, out_features, opts)
    opts = opts or {}
    assert(type(in_features) == 'number' and type(out_features) == 'number',
        'Linear: expected (in_features, out_features)')
    self.in_features, self.out_features = in_features, out_features
    local bound = 1 / math.sqrt(math.max(in_features, 1))
    local dev = opts.device
    self:param('weight', nc().rand({ out_features, in_features }, { lo = -bound, hi = bound, device = dev }))
    if opts.bias ~= false then
        self:param('bias', nc().rand({ out_features }, { lo = -bound, hi = bound, device = dev }))
    end
end

function Linear:forward(x) return nc().linear(x, self.weight, self.bias) end

function Linear:extra_repr()
    return string.format('in=%d, out=%d, bias=%s', self.in_features, self.out_features, tostring(self.bias ~= nil))
end

local Embedding = Module:extend('Embedding')
M.Embedding = Embedding

-- weight (num, dim) ~ N(0, 1); forward(idx) -> (..., dim)
function Embedding:init(num, dim, opts)
    opts = opts or {}
    assert(type(num) == 'number' and type(dim) == 'number', 'Embedding: expected (num_embeddings, dim)')
    self.num_embeddings, self.dim = num, dim
    self:param('weight', nc().randn({ num, dim }, { std = opts.std or 1, device = opts.device }))
end

function Embedding:forward(idx) return nc().embedding(idx, self.weight) end

function Embedding:extra_repr() return string.format('%d, %d', self.num_embeddings, self.dim) end

local RMSNorm = Module:extend('RMSNorm')
M.RMSNorm = RMSNorm

-- y = x / sqrt(mean(x^2) + eps) (* weight, ones at init); opts.weight = false for no weight
function RMSNorm:init(dim, opts)
    opts = opts or {}
    self.dim = dim
    self.eps = opts.eps or 1e-6
    if opts.weight ~= false then
        self:param('weight', nc().ones({ dim }, { device = opts.device }))
    end
end

function RMSNorm:forward(x) return nc().rmsnorm(x, self.weight, self.eps) end

function RMSNorm:extra_repr()
    return string.format('%d, eps=%g, weight=%s', self.dim, self.eps, tostring(self.weight ~= nil))
end

-- ---- containers --------------------------------------------------------------------------------------
local Sequential = Module:extend('Sequential')
M.Sequential = Sequential

-- Sequential(m1, m2, ...) or Sequential{m1, m2, ...}: forward feeds each output to the next.
function Sequential:init(...)
    local mods = { ... }
    if #mods == 1 and not is_module(mods[1]) and type(mods[1]) == 'table' then mods = mods[1] end
    for i, m in ipairs(mods) do
        self:add(tostring(i - 1), m)
        rawset(self, i, m)
    end
end

function Sequential:forward(x)
    for i = 1, #self do x = self[i](x) end
    return x
end

local ModuleList = Module:extend('ModuleList')
M.ModuleList = ModuleList

-- ModuleList{m1, m2, ...}: children named "0", "1", ...; list[i] (1-based) is child "i-1".
function ModuleList:init(mods)
    for _, m in ipairs(mods or {}) do self:append(m) end
end

function ModuleList:append(m)
    local i = #self + 1
    self:add(tostring(i - 1), m)
    rawset(self, i, m)
    return self
end

function ModuleList:forward()
    error('ModuleList has no forward; iterate over it with ipairs', 2)
end

return M
