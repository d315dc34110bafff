-- lua/nanochat/adapt_threads.lua — the decode thread count under machine load (engine.threads = 'auto').
--
-- Promise: M.new(max[, opts]) -> a controller over the thread counts 1..max. Before each decode step
-- `pick()` returns the count to use; after it `record(k, seconds)` reports how long that step took
-- on k threads. The controller runs the count with the lowest recent mean time per step. Once
-- `first` seconds of steps have run, and then every `gap` seconds, it probes the next other count
-- (round robin) until the probe holds `span` seconds and at least `min_steps` recorded steps, and
-- keeps the probed count if its mean time per step is lower by `margin` (3%) than the current
-- count's mean over its last `span` seconds. The first step after any change of count is not
-- recorded (the OpenMP team and the caches settle). Pure bookkeeping, no clock of its own: the
-- caller times (engine.lua, on_threads).
--
-- Why means over time spans: the engine's decode splits every layer across the threads and meets at
-- 4 barriers per layer (README "Decode threading"). When another process holds a core, most steps
-- still run at full speed and some wait a whole scheduler slice (milliseconds) at a barrier: the
-- median step hides exactly the cost that matters, and a span shorter than a slice cannot see it
-- (seen on the 10M shape: 2 threads 447 tokens/s under load, 1 thread 1645, while the median
-- 2-thread step stayed faster). The engine's results are bit-identical on any thread count, so
-- switching counts only moves time. Cost on an idle machine: at most span / gap (5%) of the time
-- on the slower count.
local M = {}
M.__index = M

local DEFAULTS = { span = 0.05, gap = 1.0, first = 0.05, min_steps = 3, margin = 0.03 }

function M.new(max, opts)
    if type(max) ~= 'number' or max < 1 or max ~= math.floor(max) then
        error('adapt_threads: expected a maximum thread count >= 1, got ' .. tostring(max), 2)
    end
    opts = opts or {}
    local self = setmetatable({ max = max, cur = max, samples = {}, since = 0, probing = nil, last = nil,
                                next_probe = max, switches = 0, steps = 0 }, M)
    for k, v in pairs(DEFAULTS) do
        local o = opts[k]
        if o ~= nil and (type(o) ~= 'number' or o < 0) then
            error(string.format('adapt_threads: %s must be a number >= 0, got %s', k, tostring(o)), 2)
        end
        self[k] = o or v
    end
    for k = 1, max do self.samples[k] = {} end
    self.due = self.first
    return self
end

-- mean seconds per step on k threads over its most recent `span` seconds of samples (nil: none),
-- and the seconds / steps that mean covers
function M:time(k)
    local s = self.samples[k]
    local tot, n = 0, 0
    for i = #s, 1, -1 do
        tot, n = tot + s[i], n + 1
        if tot >= self.span then break end
    end
    if n == 0 then return nil, 0, 0 end
    return tot / n, tot, n
end

-- the thread count for the next step
function M:pick()
    if self.probing then return self.probing end
    if self.max > 1 and self.since >= self.due then
        local k = self.next_probe
        if k == self.cur then k = k % self.max + 1 end
        self.next_probe = k % self.max + 1
        self.probing, self.psum, self.pn = k, 0, 0
        self.samples[k] = {}   -- judged on this probe's own samples only
        return k
    end
    return self.cur
end

-- the step just run on k threads took `seconds`
function M:record(k, seconds)
    self.steps = self.steps + 1
    local settle = k ~= self.last
    self.last = k
    local s = self.samples[k]
    if not settle then
        s[#s + 1] = seconds
        if #s > 4096 then   -- keep the newest half (amortized O(1); far more than a span of steps)
            local t = {}
            for i = 2049, #s do t[#t + 1] = s[i] end
            self.samples[k] = t
        end
        if self.probing then self.psum, self.pn = self.psum + seconds, self.pn + 1 end
    end
    if self.probing then
        if self.psum >= self.span and self.pn >= self.min_steps then
            local p, c = self:time(k), self:time(self.cur)
            if p and (not c or p < c * (1 - self.margin)) then
                self.cur = k
                self.switches = self.switches + 1
            end
            self.probing, self.since, self.due = nil, 0, self.gap
        end
    else
        self.since = self.since + seconds
    end
end

function M:__tostring()
    local parts = {}
    for k = 1, self.max do
        local t = self:time(k)
        parts[#parts + 1] = string.format('%d: %s', k, t and string.format('%.2f ms', t * 1e3) or '-')
    end
    return string.format('adapt_threads(now %d; mean per step %s; %d switches in %d steps)', self.cur,
        table.concat(parts, ', '), self.switches, self.steps)
end

return M
