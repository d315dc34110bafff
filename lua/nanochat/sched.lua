-- lua/nanochat/sched.lua — learning-rate schedules as functions step -> multiplier of the peak lr
-- (step is 0-based; the optimizer's step(mult) takes the value). algorithms.md §13.
--
--   nc.sched.wsd{ warmup = W, total = T, cooldown = 0.2 (fraction of T; or steps when >= 1),
--                 shape = 'linear' | 'cosine' | '1-sqrt', final = 0.0 }
--   nc.sched.cosine{ warmup = W, total = T, final = 0.1 }
--   nc.sched.constant{ warmup = W }
-- Warmup: f(t) = (t + 1) / W for t < W, so the first step runs at 1/W of the peak, never at the
-- full lr. WSD: peak for W <= t < T - D; then over the D cooldown steps progress
-- s = (t - (T - D) + 1) / D in (0, 1], reaching `final` exactly at the last step t = T - 1
-- (linear: 1 - s; cosine: (1 + cos(pi s)) / 2; 1-sqrt: 1 - sqrt(s), scaled between final and 1).
-- Cosine: peak at t = W, final at t = T - 1. After T - 1 every schedule stays at its final value.
-- Schedules are pure functions of the step, so a resumed run continues on the same curve.
local M = {}

local function num(name, v, default, lo)
    if v == nil then v = default end
    if type(v) ~= 'number' or v ~= v or (lo and v < lo) then
        error(string.format('sched: %s must be a number%s, got %s', name, lo and (' >= ' .. lo) or '', tostring(v)), 4)
    end
    return v
end

local function warm(t, W) if t < W then return (t + 1) / W end end

local SHAPES = {
    linear = function(s) return 1 - s end,
    cosine = function(s) return 0.5 * (1 + math.cos(math.pi * s)) end,
    ['1-sqrt'] = function(s) return 1 - math.sqrt(s) end,
}

function M.wsd(o)
    o = o or {}
    local W = num('warmup', o.warmup, 0, 0)
    local T = num('total', o.total, nil, 1)
    local cd = num('cooldown', o.cooldown, 0.2, 0)
    local D = cd < 1 and math.floor(cd * T + 0.5) or math.floor(cd)
    local final = num('final', o.final, 0.0)
    local shape = SHAPES[o.shape or 'linear']
    if not shape then error("sched.wsd: shape must be 'linear', 'cosine' or '1-sqrt', got " .. tostring(o.shape), 2) end
    if W + D > T then error(string.format('sched.wsd: warmup %d + cooldown %d steps exceed total %d', W, D, T), 2) end
    return function(t)
        local w = warm(t, W)
        if w then return w end
        if t < T - D or D == 0 then return 1.0 end
        if t >= T - 1 then return final end
        local s = (t - (T - D) + 1) / D
        return final + (1 - final) * shape(s)
    end
end

function M.cosine(o)
    o = o or {}
    local W = num('warmup', o.warmup, 0, 0)
    local T = num('total', o.total, nil, 1)
    local final = num('final', o.final, 0.1)
    if W > T then error(string.format('sched.cosine: warmup %d exceeds total %d', W, T), 2) end
    return function(t)
        local w = warm(t, W)
        if w then return w end
        local span = T - 1 - W
        if t >= T - 1 or span <= 0 then return final end
        local s = (t - W) / span
        return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * s))
    end
end

function M.constant(o)
    o = o or {}
    local W = num('warmup', o.warmup, 0, 0)
    return function(t) return warm(t, W) or 1.0 end
end

return M
