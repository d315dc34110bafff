-- lua/nanochat/collider.lua — nc.collider: Collider token filtering (algorithms.md §8,
-- arXiv 2502.00340) that makes the backward pass cheaper, not only the loss sparser.
--
--   local F = nc.collider.new { rho = 0.4, score = 'loss' }               -- or
--   local F = nc.collider.new { rho = 0.4, score = 'excess', ref = ref_model }
--   local loss, logits = F:forward(model, x, y, { z_loss = 1e-4 })        -- instead of model:forward
--   loss:backward()
--   nc.train { ..., collider = F }                                        -- the same, in the loop
--
-- Promise:
--  - Scores (no gradient, on the final logits): 'loss' = the current per-token cross-entropy;
--    'excess' = current minus the reference model's per-token cross-entropy on the same ids
--    (Rho-1, 2404.07965). Of the micro-batch's N = B*T targets, those equal to ignore_index are
--    never kept; of the others (n_valid), exactly round((1 - rho) n_valid) with the highest scores
--    are kept (ties: lower flat position first; at least 1 while n_valid > 0), the rest become
--    ignore_index, so the loss is the mean cross-entropy over the kept tokens only.
--  - The forward pass is unchanged (filtered tokens stay context). F:forward makes a fresh step
--    context, activates it as the autograd row filter (nanochat.autograd.set_row_filter) while
--    model:forward(x, y, opts + { collider = ctx }) runs, and the model calls ctx:select(logits,
--    targets, idx) on its final logits (models/gpt.lua _loss). Ops recorded meanwhile whose row
--    count is N (CPU) backpropagate through the kept rows K only: the AMX BitLinear and bf16 head
--    (ops/nn.lua bitlinear, linear_bf16) as row-indexed AMX GEMMs reading / writing the kept rows in
--    place (dX[K] = dY[K] W, dW += dY[K]^T X[K]; nc_gemm_bf16_rows), the fp32 linear as sgemms on
--    gathered rows, attention on each query block's kept rows, rmsnorm, RoPE and the elementwise
--    unary ops (ops/elementwise.lua) on kept rows. So every activation-gradient row of a filtered
--    token below the head is exactly 0: Collider's "backward activation filtering", an
--    approximation that drops the gradient paths through filtered tokens' hidden states (the
--    attention backward computes no dK / dV for filtered keys). Other ops (binary
--    elementwise, views, quantizer STEs) stay dense; the zeros pass through them unchanged.
--  - rho = 0 keeps every valid token; the backward is then bitwise the dense one (spec).
local ag = require 'nanochat.autograd'

local function nc() return require 'nanochat' end

local M = {}

local Filter = {}
Filter.__index = Filter
M.Filter = Filter

local Step = {}
Step.__index = Step
M.Step = Step

local SCORES = { loss = true, excess = true }
local KNOWN = { rho = true, score = true, ref = true }

-- Validated filter. opts: rho (fraction filtered, [0, 1)), score ('loss' | 'excess', default
-- 'loss'), ref (a model whose forward(idx) returns logits; required by and only for 'excess').
function M.new(opts)
    if type(opts) ~= 'table' then error('collider.new: expected a table of options, got ' .. type(opts), 2) end
    for k in pairs(opts) do
        if not KNOWN[k] then error('collider.new: unknown option ' .. tostring(k) .. ' (rho, score, ref)', 2) end
    end
    local rho = opts.rho
    if type(rho) ~= 'number' or rho ~= rho or rho < 0 or rho >= 1 then
        error('collider.new: rho (the fraction of tokens filtered) must be a number in [0, 1), got ' .. tostring(rho), 2)
    end
    local score = opts.score or 'loss'
    if not SCORES[score] then
        error("collider.new: score must be 'loss' or 'excess', got " .. tostring(score), 2)
    end
    local ref = opts.ref
    if score == 'excess' then
        if ref == nil then error("collider.new: score = 'excess' needs ref (a reference model with forward(idx))", 2) end
        if type(ref) ~= 'table' or type(ref.forward) ~= 'function' then
            error('collider.new: ref must be a model with a forward(idx) method, got ' .. type(ref), 2)
        end
    elseif ref ~= nil then
        error("collider.new: ref is only used with score = 'excess' (score is '" .. score .. "')", 2)
    end
    return setmetatable({ rho = rho, score = score, ref = ref, kept_total = 0, rows_total = 0 }, Filter)
end

-- A fresh step context for one micro-batch of N = numel(x) tokens; opts.ignore_index (-1) is the
-- value filtered targets get.
function Filter:step(N, opts)
    opts = opts or {}
    return setmetatable({ filter = self, N = N, ignore_index = opts.ignore_index or -1 }, Step)
end

-- loss, logits = F:forward(model, x, y, opts): model:forward(x, y, opts) with this filter applied.
function Filter:forward(model, x, y, opts)
    if getmetatable(self) ~= Filter then error('collider: call F:forward(model, x, y, opts) with a colon', 2) end
    if type(model) ~= 'table' or type(model.forward) ~= 'function' then
        error('collider: forward: expected a model with forward(x, y, opts), got ' .. type(model), 2)
    end
    local N = nc()
    if not (N.is_tensor(x) and N.is_tensor(y)) then error('collider: forward: expected tensors x and y', 2) end
    if x:numel() ~= y:numel() then
        error(string.format('collider: forward: x has %d tokens, y %d', x:numel(), y:numel()), 2)
    end
    local ctx = self:step(y:numel(), opts)
    local o = {}
    for k, v in pairs(opts or {}) do o[k] = v end
    o.collider = ctx
    local prev = ag.set_row_filter(ctx)
    local ok, loss, logits = pcall(model.forward, model, x, y, o)
    ag.set_row_filter(prev)
    if not ok then error(loss, 0) end
    if not ctx.keep then
        error('collider: forward: the model never called opts.collider:select(logits, targets, idx); '
            .. 'it does not support Collider filtering', 2)
    end
    self.last = ctx
    self.kept_total = self.kept_total + ctx.kept
    self.rows_total = self.rows_total + ctx.N
    return loss, logits
end

-- kept / N of the last forward (nil before the first)
function Filter:kept_fraction()
    local c = self.last
    return c and c.kept / c.N or nil
end

-- Set the kept rows directly (sorted or not, unique 0-based flat positions < N): builds keep
-- (sorted i64), mask (u8, N) and kept. select() calls it; specs use it to filter chosen rows.
function Step:set_keep(list)
    local ffi = require('nanochat.core').ffi
    local Nn = nc()
    local n = self.N
    local rows = {}
    for i, r in ipairs(list) do rows[i] = r end
    table.sort(rows)
    local keep = Nn.empty({ #rows }, { dtype = 'i64' })
    local mask = Nn.zeros({ n }, { dtype = 'u8' })
    local kp = ffi.cast('int64_t *', Nn.C.nc_tensor_data(keep._c))
    local mp = ffi.cast('uint8_t *', Nn.C.nc_tensor_data(mask._c))
    for i, r in ipairs(rows) do
        if type(r) ~= 'number' or r ~= math.floor(r) or r < 0 or r >= n or (i > 1 and r == rows[i - 1]) then
            error(string.format('collider: set_keep: rows must be unique integers in [0, %d), got %s', n, tostring(r)), 2)
        end
        kp[i - 1] = r
        mp[r] = 1
    end
    self.keep, self.mask, self.kept = keep, mask, #rows
    return self
end

-- Per-token importance (N) f64 in a Lua-readable FFI array, from logits (..., V) and targets.
local function scores_of(ctx, logits, targets, idx)
    local Nn = nc()
    local ffi = require('nanochat.core').ffi
    local F = ctx.filter
    local ii = ctx.ignore_index
    local per = Nn.no_grad(function()
        local s = Nn.cross_entropy(logits, targets, { reduction = 'none', ignore_index = ii })
        if F.score == 'excess' then
            local rl = F.ref:forward(idx)
            if not Nn.is_tensor(rl) or rl:size(-1) ~= logits:size(-1) or rl:numel() ~= logits:numel() then
                error(string.format('collider: select: the reference model returned %s, expected logits like %s',
                    Nn.is_tensor(rl) and ('(' .. table.concat(rl:shape(), ', ') .. ')') or type(rl),
                    '(' .. table.concat(logits:shape(), ', ') .. ')'), 0)
            end
            s = s - Nn.cross_entropy(rl, targets, { reduction = 'none', ignore_index = ii })
        end
        return s:to('f32'):contiguous()
    end)
    local p = ffi.cast('const float *', Nn.C.nc_tensor_data(per._c))
    return p, per
end

-- targets with ignore_index at every filtered position (filtered = not kept): the model's loss
-- target. logits (..., V) with N rows, targets (...) i32/i64 with N elements, idx the input ids.
function Step:select(logits, targets, idx)
    if self.masked then return self.masked end   -- one selection per step context
    local Nn = nc()
    local ffi = require('nanochat.core').ffi
    if not (Nn.is_tensor(logits) and Nn.is_tensor(targets)) then
        error('collider: select: expected tensors logits and targets', 2)
    end
    local n = self.N
    if targets:numel() ~= n then
        error(string.format('collider: select: expected %d targets (the micro-batch), got %d', n, targets:numel()), 2)
    end
    if logits:numel() ~= n * logits:size(-1) then
        error(string.format('collider: select: expected logits with %d rows, got (%s)', n,
            table.concat(logits:shape(), ', ')), 2)
    end
    local ii = self.ignore_index
    local t64 = targets:to('cpu'):to('i64'):contiguous()
    local tp = ffi.cast('const int64_t *', Nn.C.nc_tensor_data(t64._c))
    local sp, _keep_alive = scores_of(self, logits, targets, idx)
    local sc = ffi.new('double[?]', n)
    local cand = {}
    for i = 0, n - 1 do
        if tp[i] ~= ii then
            local v = sp[i]
            sc[i] = v == v and v or -math.huge   -- a NaN score ranks last
            cand[#cand + 1] = i
        end
    end
    local nv = #cand
    local k = math.floor((1 - self.filter.rho) * nv + 0.5)
    if nv > 0 and k < 1 then k = 1 end
    if k < nv then
        table.sort(cand, function(a, b)
            local sa, sb = sc[a], sc[b]
            if sa ~= sb then return sa > sb end
            return a < b
        end)
        for i = nv, k + 1, -1 do cand[i] = nil end
    end
    self:set_keep(cand)
    self.valid = nv
    local masked = Nn.full(targets:shape(), ii, { dtype = 'i64' })
    local mp = ffi.cast('int64_t *', Nn.C.nc_tensor_data(masked._c))
    for _, r in ipairs(cand) do mp[r] = tp[r] end
    if targets:device() ~= 'cpu' then masked = masked:to(targets:device()) end
    self.masked = masked
    return masked
end

return M
