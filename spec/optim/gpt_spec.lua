-- spec/optim/gpt_spec.lua — every optimizer (and the hybrid default) lowers the loss of the
-- micro ternary GPT (configs/models/micro.lua) on a fixed batch, through the model's own
-- parameter roles: the optimizers work on the real model, not only on least squares.
package.path = 'lua/?.lua;lua/?/init.lua;' .. package.path
local nc = require 'nanochat'

-- adamw and lion take every parameter; the Muon family (alone or under GaLore 2) takes the block
-- matrices through the hybrid, whose other roles stay on AdamW
local function hybrid(rule) return function(m) return nc.optim.hybrid { model = m, rules = { matrix = rule } } end end
local CASES = {
    { 'adamw', function(m) return nc.optim.adamw(m:parameters(), { lr = 1e-2 }) end },
    { 'lion', function(m) return nc.optim.lion(m:parameters(), { lr = 2e-3 }) end },
    { 'muon', hybrid { optim = 'muon', lr = 0.05 } },
    { 'muon8', hybrid { optim = 'muon8', lr = 0.05 } },
    { 'galore2+adamw', hybrid { optim = 'adamw', lr = 1e-2, galore = { rank_frac = 0.25, update_gap = 5 } } },
    { 'galore2+muon8', hybrid { optim = 'muon8', lr = 0.05, galore = { rank_frac = 0.25, update_gap = 5 } } },
    { 'hybrid default', function(m) return nc.optim.hybrid { model = m } end },
}
local STEPS = 25

local function setup()
    local cfg = nc.models.config('micro')
    cfg.seed = 7
    local m = nc.models.gpt.new(cfg)
    local g = nc.generator(11)
    local V, T = cfg.vocab_size, math.min(cfg.seq_len, 16)
    local toks = nc.rand({ 4, T + 1 }, { generator = g, lo = 0, hi = V }):to('i64')
    return m, toks:narrow(1, 0, T):contiguous(), toks:narrow(1, 1, T):contiguous()
end

local function run(m, opt, x, y)
    local first, last
    for _ = 1, STEPS do
        local loss = m:forward(x, y)
        loss:backward()
        opt:step()
        opt:zero_grad()
        last = loss:item()
        first = first or last
    end
    return first, last
end

describe('optimizers on the micro ternary GPT', function()
    for _, c in ipairs(CASES) do
        it(c[1] .. ' lowers the training loss on a fixed batch', function()
            local m, x, y = setup()
            local first, last = run(m, c[2](m), x, y)
            if os.getenv('NC_VERBOSE') then print(string.format('%s: %.4f -> %.4f', c[1], first, last)) end
            assert(last < first - 0.5, string.format('%s: loss %.4f -> %.4f over %d steps', c[1], first, last, STEPS))
        end)
    end
end)
