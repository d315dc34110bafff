-- lua/nanochat/optim/fire.lua — FIRE (Frobenius-Isometry REinitialization, algorithms.md §6):
-- replace chosen weights by (an approximation of) their nearest orthogonal matrix, scaled by
-- sqrt(out/in), and reset their optimizer state. Meant for phase boundaries (pretrain -> SFT ->
-- RL), not for periodic use.
--
--   nc.optim.fire(model_or_params, { params = {names or tensors} (default: every 'matrix'-role
--                 parameter, see roles.lua), iters = 5, optimizer = opt (its state for these
--                 weights is reset), scale = true })  -> list of the names processed
-- Per weight W (out, in): X = W / ||W||_F, then iters cubic Newton-Schulz steps
-- X <- 1.5 X - 0.5 X X^T X (converges to the polar factor U V^T; C, through sgemm), then
-- W <- sqrt(out/in) X in place. Iters 5 is the reference's partial projection; 10+ converge.
local linalg = require 'nanochat.optim.linalg'
local roles = require 'nanochat.optim.roles'

return function(target, opts)
    opts = opts or {}
    local named, model = roles.named(target, 'fire')
    local chosen = {}
    if opts.params then
        local want = {}
        for _, x in ipairs(opts.params) do want[x] = true end
        for _, nt in ipairs(named) do
            if want[nt[1]] or want[nt[2]] then chosen[#chosen + 1] = nt end
        end
        if #chosen ~= #opts.params then
            error(string.format('fire: %d of the %d requested params were not found in the model', #opts.params - #chosen,
                #opts.params), 2)
        end
    else
        local r = roles.assign(named, model, opts.roles, 'fire')
        for _, nt in ipairs(named) do if r[nt[1]] == 'matrix' then chosen[#chosen + 1] = nt end end
    end
    local iters = opts.iters or 5
    local names, tensors = {}, {}
    for _, nt in ipairs(chosen) do
        local name, w = nt[1], nt[2]
        if w:dim() < 2 then error('fire: ' .. name .. ' is not a matrix', 2) end
        local rows = w:size(0)
        local cols = w:numel() / rows
        local x = linalg.newton_schulz(w:detach():reshape { rows, cols }, { steps = iters, coefs = 'cubic', eps = 1e-12 })
        local s = opts.scale == false and 1 or math.sqrt(rows / cols)
        if s ~= 1 then x = x:mul(s) end
        w:detach():copy_(x:reshape(w:shape()))
        names[#names + 1] = name
        tensors[#tensors + 1] = w
    end
    if opts.optimizer then opts.optimizer:reset_state(tensors) end
    return names
end
