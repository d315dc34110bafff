-- spec/helpers/model_fixtures.lua — shared helpers of the model specs (gpt, mhc, mtp, looplm,
-- collider): a micro cfg with overrides and a seeded random (x, y) token batch.
local nc = require 'nanochat'

local M = {}

-- the micro model cfg (configs/models/micro.lua) with fields of `over` replaced
function M.micro(over)
    local cfg = nc.models.config('micro')
    for k, v in pairs(over or {}) do cfg[k] = v end
    return cfg
end

-- x, y: (B, T) i64 token ids uniform in [0, V), from generator `seed` (default 7)
function M.batch(B, T, V, seed)
    local g = nc.generator(seed or 7)
    local x = nc.rand({ B, T }, { lo = 0, hi = V, generator = g }):to('i64')
    local y = nc.rand({ B, T }, { lo = 0, hi = V, generator = g }):to('i64')
    return x, y
end

return M
