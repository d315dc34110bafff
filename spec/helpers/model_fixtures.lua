-- spec/helpers/model_fixtures.lua — shared helpers of the model specs (gpt, mhc, mtp, looplm,
-- collider, engine, export): a micro cfg with overrides, a seeded random (x, y) token batch, and
-- seeded random mHC coefficients.
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

-- Every mHC parameter of `model` moved away from its init (bias + N(0, scale), phi ~ N(0, 0.3),
-- alpha ~ U(0.3, 0.8)) from generator `seed`, so that the streams really differ and the static and
-- dynamic paths matter. Returns the generator (callers may keep drawing from it).
function M.perturb_mhc(model, seed, scale)
    local g = nc.generator(seed)
    nc.no_grad(function()
        for _, nl in ipairs(nc.mhc.layers(model)) do
            local l = nl[2]
            l.bias:add_scaled_(nc.randn(l.bias:shape(), { generator = g }), scale or 1)
            if l.phi then
                l.phi:copy_(nc.randn(l.phi:shape(), { generator = g, std = 0.3 }))
                l.alpha:copy_(nc.rand({ 3 }, { generator = g, lo = 0.3, hi = 0.8 }))
            end
        end
    end)
    return g
end

return M
