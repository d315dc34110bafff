-- lua/nanochat/optim/init.lua — nc.optim: the optimizers (update math in C, kernels/cpu/optim*.c;
-- hyperparameters and grouping here). INTERFACES.md "Optimizers and schedules".
--
--   nc.optim.adamw(params, opts)   lr, betas = {0.9, 0.95}, eps = 1e-8, weight_decay = 0, eps_mode
--   nc.optim.lion(params, opts)    lr = 1e-4, betas = {0.9, 0.99}, weight_decay
--   nc.optim.muon(params, opts)    lr = 0.02, momentum = 0.95, nesterov, ns_steps = 5, scale, state_bits
--   nc.optim.muon8(params, opts)   muon with state_bits = 8 (block = 2048, rounding = 'nearest'|'stochastic',
--                                  quant = 'linear'|'dynamic'); nc.optim.quant8/dequant8/codebook
--   nc.optim.galore(params, opts)  GaLore 2 with inner = 'adamw'|'lion'|'muon'|'muon8', rank / rank_frac
--   nc.optim.hybrid{model =, rules =}  per-role parts, one step(mult)
--   nc.optim.fire(model_or_params, {params =, iters =, optimizer =})
-- params: a list of tensors, {name, tensor} pairs, a Module, or groups {params =, names =, lr =, ...}.
-- Every optimizer: step(mult), zero_grad(), state_dict(), load_state_dict(sd), state_bytes(),
-- reset_state(params), named_params().
local M = {}

local classes = {
    adamw = require 'nanochat.optim.adamw',
    lion = require 'nanochat.optim.lion',
    muon = require 'nanochat.optim.muon',
    galore = require 'nanochat.optim.galore',
}
M.classes = classes

function M.adamw(params, opts) return classes.adamw(params, opts) end
function M.lion(params, opts) return classes.lion(params, opts) end
function M.muon(params, opts) return classes.muon(params, opts) end
function M.galore(params, opts) return classes.galore(params, opts) end

function M.muon8(params, opts)
    local o = {}
    for k, v in pairs(opts or {}) do o[k] = v end
    if o.state_bits == nil then o.state_bits = 8 end
    return classes.muon(params, o)
end

M.hybrid = require 'nanochat.optim.hybrid'
M.fire = require 'nanochat.optim.fire'
M.roles = require 'nanochat.optim.roles'

local linalg = require 'nanochat.optim.linalg'
M.linalg = linalg
M.newton_schulz = linalg.newton_schulz
M.svd = linalg.svd
M.rsvd = linalg.rsvd
M.quant8 = linalg.quant8
M.dequant8 = linalg.dequant8
M.codebook = linalg.codebook

-- Optimizer by name with options, for recipes and benchmarks:
-- nc.optim.build('muon8', params, opts); 'galore+muon8' means galore{inner = 'muon8'}.
function M.build(name, params, opts)
    local o = {}
    for k, v in pairs(opts or {}) do o[k] = v end
    local inner = name:match('^galore%+(.+)$')
    if inner then o.inner = inner; return M.galore(params, o) end
    local f = M[name]
    if type(f) ~= 'function' or name == 'build' or name == 'fire' or name == 'hybrid' then
        error('nc.optim.build: unknown optimizer ' .. tostring(name), 2)
    end
    return f(params, o)
end

return M
