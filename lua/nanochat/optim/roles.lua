-- lua/nanochat/optim/roles.lua — which role each parameter plays, for nc.optim.hybrid and FIRE.
--
-- Promise: roles come from model:param_roles() when the model has it ({name = 'matrix' |
-- 'embedding' | 'head' | 'norm' | 'scalar'}, INTERFACES.md); names it does not list, and models
-- without it, fall back to a rule by name and shape: tensors with fewer than 2 dims are 'norm'
-- when the name says norm/ln/gain, else 'scalar'; 2-D+ tensors are 'embedding' when the name
-- says emb/wte/tok, 'head' when it says head/unembed/lm_out, else 'matrix'. opts.roles
-- overrides: a table {lua_pattern = role} (matched against the name, first match in sorted
-- pattern order wins) or a function(name, tensor) -> role or nil.
local Tensor = require 'nanochat.tensor'

local M = {}

M.ROLES = { matrix = true, embedding = true, head = true, norm = true, scalar = true }

function M.fallback(name, t)
    local n = name:lower()
    if t:dim() < 2 then
        if n:find('norm') or n:find('ln') or n:find('gain') then return 'norm' end
        return 'scalar'
    end
    if n:find('emb') or n:find('wte') or n:find('tok') then return 'embedding' end
    if n:find('head') or n:find('unembed') or n:find('lm_out') then return 'head' end
    return 'matrix'
end

-- named parameter list from a model, a list of {name, tensor} pairs or a list of tensors
function M.named(target, who)
    if type(target) ~= 'table' then error(who .. ': expected a model or a list of parameters, got ' .. type(target), 3) end
    if type(target.named_parameters) == 'function' then return target:named_parameters(), target end
    local out = {}
    for i, x in ipairs(target) do
        if Tensor.is(x) then out[i] = { 'p' .. i, x }
        elseif type(x) == 'table' and type(x[1]) == 'string' and Tensor.is(x[2]) then out[i] = x
        else error(string.format('%s: entry %d is neither a tensor nor a {name, tensor} pair', who, i), 3) end
    end
    return out, nil
end

-- {name = role} for every named parameter
function M.assign(named, model, overrides, who)
    local declared = {}
    if model and type(model.param_roles) == 'function' then declared = model:param_roles() or {} end
    local patterns
    if type(overrides) == 'table' then
        patterns = {}
        for pat in pairs(overrides) do patterns[#patterns + 1] = pat end
        table.sort(patterns)
    end
    local out = {}
    for _, nt in ipairs(named) do
        local name, t = nt[1], nt[2]
        local role
        if type(overrides) == 'function' then role = overrides(name, t)
        elseif patterns then
            for _, pat in ipairs(patterns) do
                if name:find(pat) then role = overrides[pat]; break end
            end
        end
        role = role or declared[name] or M.fallback(name, t)
        if not M.ROLES[role] then
            error(string.format("%s: parameter %s has role %s (expected matrix, embedding, head, norm or scalar)",
                who, name, tostring(role)), 3)
        end
        out[name] = role
    end
    return out
end

return M
