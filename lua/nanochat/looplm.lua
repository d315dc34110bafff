-- lua/nanochat/looplm.lua — nc.looplm: LoopLM (Ouro-style looped stack with a learned exit),
-- algorithms.md §11. Wired into nc.models.gpt through cfg.loop.
--
-- Config (cfg.loop, validated by M.config):
--   { prelude = 1, shared = 2, coda = 1, T = 3, beta = 0.05, exit_q = 1.0, stage = 1 }
--   cfg.n_layer == prelude + shared + coda (the unique blocks, in that order in model.h).
--   T       loops of the shared stack (>= 1)          beta    entropy weight of the stage-I loss
--   exit_q  q-exit threshold in [0, 1] (1 = always T) stage   1 (joint LM + gate) or 2 (gate only)
--
-- Architecture (x = the residual state, _final/_logits the model's norm/head hooks):
--   x0 = prelude(embed(idx));  x_t = shared(x_{t-1}) for t = 1..T   (same weights every loop)
--   exit gate  lambda_t = sigmoid(gate(_final(x_t)))   t < T (lambda_T is never used: p(T) absorbs)
--   exit logits logits_t = _logits(_final(coda(x_t)))
-- Where the coda sits (a documented choice): the coda is the output stage, applied to the state
-- of the loop the token exits from. The Ouro paper has no coda; folding it into the head keeps
-- every exit's logits exactly what inference computes when it exits there, and the gate reads
-- the shared-stack output, so deciding to exit costs one d -> 1 dot product and the coda runs once
-- per decoded token. The price is training compute: the loss needs the logits of every loop, so
-- the coda runs T times there (prelude + (shared + coda) * T block applications; e3: 1 + 3*3 = 10,
-- not 8). The plain forward (model:forward(idx), no targets) is the full-depth model:
-- prelude, shared x T, coda once -> logits_T.
--
-- Exit distribution (§11.2): S_0 = 1, p(t) = lambda_t S_{t-1} (t < T), S_t = S_{t-1} (1 - lambda_t),
-- p(T) = S_{T-1}. log p is formed from log-sigmoids (log lambda = log sigmoid(z), log(1 - lambda)
-- = log sigmoid(-z)), so the entropy has no 0 * log 0; gate logits are clamped to [-30, 30]
-- (lambda within 1e-13 of 0 or 1; the gradient is 0 beyond).
--
-- Loss, stage I (§11.3): mean over valid tokens of  sum_t p(t) CE_t - beta H(p),  H = -sum p log p,
-- CE_t per token with gradient (nc.cross_entropy reduction = 'none'). With opts.collider the
-- targets are first re-selected from logits_T (filtered tokens -> ignore_index); with cfg.mtp the
-- MTP loss on h_final = _final(coda(x_T)) is added. Returns loss, logits_T.
-- Stage II (§11.3): the LM runs under no_grad; I_t = max(0, CE_{t-1} - CE_t) (detached), the
-- continuation target w_t = sigmoid(50 (I_t - 0.005)), and the gate at loop t - 1 is trained with
-- binary cross-entropy towards exit probability 1 - w_t (mean over valid tokens and the T - 1
-- gates). Only exit_gate.* get gradients: optimize those (model.exit_gate:parameters()). Collider
-- and MTP are not applied in stage II (the LM is frozen).
--
-- Inference (§11.4), KV cache per (loop, block): slots prelude j -> j; shared block j at loop t
-- -> P + (t-1) S + j; coda block j at loop t -> P + S T + (t-1) C + j (model:new_cache makes all
-- P + (S + C) T). q-exit: a token exits at the first t with sum_{j<=t} p(j) >= q; q >= 1 always
-- runs T, q = 0 exits at t = 1. Decoding (a chunk of one position) stops at runtime: loops after
-- the exit are not computed. Reuse policy (the paper's decode-time KV reuse): the KV entries a
-- token never computed are filled from what it did compute — shared slots of loops after its
-- exit from its exit loop, and every coda slot from the coda it ran at its exit loop — so a later
-- token exiting at any loop finds an entry. B > 1: the batch runs loops until its last row exits;
-- each row takes the logits of its own exit loop (the coda runs for the batch at every loop where
-- some row exits) and afterwards each row's KV is overwritten per the reuse policy from its own
-- exit loop, so every row gets exactly what it would get decoded alone (up to GEMM rounding).
-- Prefill (a chunk of several positions) computes all T loops for every position (true KV in every
-- slot; with q < 1 the coda runs at every loop so each position's logits come from its own exit
-- loop). A cache's exit_q is fixed at creation; with q >= 1 every token runs T loops and reads only
-- loop-T coda entries, so the reuse fill is skipped. Statistics: M.stats(cache) -> { tokens, loops, avg_loops, decode_tokens, decode_loops,
-- avg_decode_loops, hist = { [t] = tokens that exited at t } } (loops = loops actually computed).
local nn = require 'nanochat.nn'
local Module = nn.Module

local function nc() return require 'nanochat' end

local M = {}

M.LOGIT_CLAMP = 30          -- gate logits are clamped to +-30 before the sigmoid (see the header)
M.STAGE2_SHARP = 50         -- stage II continuation target: sigmoid(50 (I - 0.005))  (§11.3)
M.STAGE2_MARGIN = 0.005

-- ---- config ----------------------------------------------------------------------------------
local KNOWN = { prelude = true, shared = true, coda = true, T = true, beta = true, exit_q = true, stage = true }

local function is_int(v, lo) return type(v) == 'number' and v == math.floor(v) and v >= lo end

-- A filled, validated copy of cfg.loop for the model config c (c.n_layer is checked against it).
function M.config(sub, c)
    if type(sub) ~= 'table' then error('looplm: cfg.loop must be a table, got ' .. type(sub), 3) end
    local o = {}
    for k, v in pairs(sub) do
        if not KNOWN[k] then error('looplm: unknown cfg.loop field ' .. tostring(k), 3) end
        o[k] = v
    end
    o.prelude = o.prelude or 0
    o.coda = o.coda or 0
    local L = c and c.n_layer
    if o.shared == nil and type(L) == 'number' then o.shared = L - o.prelude - o.coda end
    o.T = o.T or 4
    o.beta = o.beta or 0.05
    o.exit_q = o.exit_q or 1.0
    o.stage = o.stage or 1
    for _, k in ipairs { 'prelude', 'coda' } do
        if not is_int(o[k], 0) then error('looplm: cfg.loop.' .. k .. ' must be an integer >= 0, got ' .. tostring(o[k]), 3) end
    end
    for _, k in ipairs { 'shared', 'T' } do
        if not is_int(o[k], 1) then error('looplm: cfg.loop.' .. k .. ' must be an integer >= 1, got ' .. tostring(o[k]), 3) end
    end
    if type(o.beta) ~= 'number' or o.beta < 0 then
        error('looplm: cfg.loop.beta must be a number >= 0, got ' .. tostring(o.beta), 3)
    end
    if type(o.exit_q) ~= 'number' or o.exit_q < 0 or o.exit_q > 1 then
        error('looplm: cfg.loop.exit_q must be a number in [0, 1], got ' .. tostring(o.exit_q), 3)
    end
    if o.stage ~= 1 and o.stage ~= 2 then error('looplm: cfg.loop.stage must be 1 or 2, got ' .. tostring(o.stage), 3) end
    if L ~= nil and L ~= o.prelude + o.shared + o.coda then
        error(string.format('looplm: cfg.n_layer (%s) must equal loop.prelude + loop.shared + loop.coda = %d + %d + %d',
            tostring(L), o.prelude, o.shared, o.coda), 3)
    end
    return o
end

-- number of KV-cache slots: prelude + (shared + coda) * T
function M.n_slots(lc) return lc.prelude + (lc.shared + lc.coda) * lc.T end
-- block applications per token in training (the coda runs once per loop, see the header)
function M.applications(lc) return lc.prelude + (lc.shared + lc.coda) * lc.T end

local function shared_slot(lc, t, j) return lc.prelude + (t - 1) * lc.shared + j end
local function coda_slot(lc, t, j) return lc.prelude + lc.shared * lc.T + (t - 1) * lc.coda + j end
M.shared_slot, M.coda_slot = shared_slot, coda_slot

-- ---- the exit gate ----------------------------------------------------------------------------
-- Linear d -> 1 with bias, fp32 (never quantized). weight ~ N(0, init_std) from the model's
-- generator, bias 0: lambda ~ 0.5 at init.
local ExitGate = Module:extend('ExitGate')
M.ExitGate = ExitGate

function ExitGate:init(c, gen)
    local n = nc()
    self:param('weight', n.randn({ 1, c.d_model }, { std = c.init_std, generator = gen }))
    self:param('bias', n.zeros({ 1 }))
end

-- h (..., d) normed hidden -> gate logits z (...)
function ExitGate:forward(h)
    local z = nc().linear(h, self.weight, self.bias)
    local s = z:shape()
    s[#s] = nil
    return z:reshape(s)
end

-- ---- exit distribution ------------------------------------------------------------------------
-- Plain-number form: lambdas (a list of T numbers; the last is ignored) -> p (list of T), depth.
function M.exit_distribution(lambdas)
    local T = #lambdas
    if T < 1 then error('looplm.exit_distribution: expected at least one lambda', 2) end
    local p, S, depth = {}, 1.0, 0.0
    for t = 1, T - 1 do
        local l = lambdas[t]
        if type(l) ~= 'number' or l < 0 or l > 1 then
            error('looplm.exit_distribution: lambda ' .. t .. ' must be in [0, 1], got ' .. tostring(l), 2)
        end
        p[t] = l * S
        S = S * (1 - l)
    end
    p[T] = S
    for t = 1, T do depth = depth + t * p[t] end
    return p, depth
end

-- q-exit (§11.4) on a plain list p: the first t with sum_{j<=t} p(j) >= q; q >= 1 -> T.
function M.q_exit(p, q)
    local T = #p
    if q >= 1 then return T end
    local cum = 0
    for t = 1, T - 1 do
        cum = cum + p[t]
        if cum >= q then return t end
    end
    return T
end

-- Tensor form with autograd: zs = list of T - 1 gate-logit tensors (same shape) -> p, logp (lists
-- of T tensors of that shape). T = 1 (zs empty) needs `like` for the shape: p = {1}, logp = {0}.
function M.exit_probs(zs, T, like)
    local n = nc()
    local p, logp = {}, {}
    local S, logS
    for t = 1, T - 1 do
        local z = n.clamp(zs[t], -M.LOGIT_CLAMP, M.LOGIT_CLAMP)
        local lam, keep = n.sigmoid(z), n.sigmoid(-z)         -- lambda, 1 - lambda (both accurate)
        local loglam, logkeep = n.log(lam), n.log(keep)
        p[t] = S and lam * S or lam
        logp[t] = logS and loglam + logS or loglam
        S = S and S * keep or keep
        logS = logS and logS + logkeep or logkeep
    end
    if T == 1 then
        p[1] = n.ones(like:shape(), { device = like:device() })
        logp[1] = n.zeros(like:shape(), { device = like:device() })
    else
        p[T], logp[T] = S, logS
    end
    return p, logp
end

-- The stage-I objective from gate logits and per-token CEs (each a tensor of one shape, e.g. (N)):
-- mean over valid tokens (valid: f32 0/1 of that shape, or nil = all) of
--   sum_t p(t) CE_t - beta H(p) = sum_t p(t) (CE_t + beta log p(t)).
-- Returns the scalar loss and the list p.
function M.exit_objective(zs, ces, beta, valid)
    local n = nc()
    local T = #ces
    local p, logp = M.exit_probs(zs, T, ces[1])
    local per
    for t = 1, T do
        local term = beta ~= 0 and p[t] * (ces[t] + logp[t] * beta) or p[t] * ces[t]
        per = per and per + term or term
    end
    local count
    if valid then
        per = per * valid
        count = valid:sum():item()
    else
        count = per:numel()
    end
    return n.sum(per) * (1 / math.max(count, 1)), p
end

-- ---- the trunk --------------------------------------------------------------------------------
-- A segment is the list of (block index in model.h, KV slot) pairs one stage applies: 'prelude',
-- ('shared', t) or ('coda', t). Built once per loop cfg (memoized), with seg.key naming it.
-- A model with a run_blocks(x, cos, sin, cache, seg) method (the packed engine, nanochat.engine)
-- runs a segment itself (decode: one C call per segment); otherwise block by block.
local seg_memo = setmetatable({}, { __mode = 'k' })

function M.segment(lc, kind, t)
    local memo = seg_memo[lc]
    if not memo then memo = {}; seg_memo[lc] = memo end
    local key = kind .. ':' .. (t or 0)
    local seg = memo[key]
    if seg then return seg end
    seg = { key = key }
    if kind == 'prelude' then
        for j = 1, lc.prelude do seg[j] = { j, j } end
    elseif kind == 'shared' then
        for j = 1, lc.shared do seg[j] = { lc.prelude + j, shared_slot(lc, t, j) } end
    elseif kind == 'coda' then
        for j = 1, lc.coda do seg[j] = { lc.prelude + lc.shared + j, coda_slot(lc, t, j) } end
    else
        error('looplm.segment: unknown segment kind ' .. tostring(kind), 2)
    end
    memo[key] = seg
    return seg
end

local function run_segment(model, x, cos, sin, cache, seg)
    if #seg == 0 then return x end
    if model.run_blocks then return model:run_blocks(x, cos, sin, cache, seg) end
    for _, bs in ipairs(seg) do x = model.h[bs[1]](x, cos, sin, cache, bs[2]) end
    return x
end

local function run_prelude(model, x, cos, sin, cache)
    return run_segment(model, x, cos, sin, cache, M.segment(model.cfg.loop, 'prelude'))
end

local function run_shared(model, x, cos, sin, cache, t)
    return run_segment(model, x, cos, sin, cache, M.segment(model.cfg.loop, 'shared', t))
end

local function run_coda(model, x, cos, sin, cache, t)
    return run_segment(model, x, cos, sin, cache, M.segment(model.cfg.loop, 'coda', t))
end

-- GPT:_trunk with cfg.loop: the full-depth model (prelude, shared x T, coda once at loop T).
function M.trunk(model, x, cos, sin, cache)
    local lc = model.cfg.loop
    x = run_prelude(model, x, cos, sin, cache)
    for t = 1, lc.T do x = run_shared(model, x, cos, sin, cache, t) end
    return run_coda(model, x, cos, sin, cache, lc.T)
end

-- Every loop's outputs (with autograd when it is on): { logits = {T}, z = {T-1} gate logits
-- (B, Tn), h_final = _final(coda(x_T)) }.
function M.loop_outputs(model, idx, cos, sin)
    local lc = model.cfg.loop
    local x = run_prelude(model, model:_embed(idx), cos, sin, nil)
    local out = { logits = {}, z = {} }
    for t = 1, lc.T do
        x = run_shared(model, x, cos, sin, nil, t)
        if t < lc.T then out.z[t] = model.exit_gate(model:_final(x)) end
        local h = model:_final(run_coda(model, x, cos, sin, nil, t))
        out.logits[t] = model:_logits(h)
        if t == lc.T then out.h_final = h end
    end
    return out
end

-- no-grad convenience: idx (B, Tn) -> list of T logits (B, Tn, V) and T - 1 gate logits (B, Tn)
function M.loop_logits(model, idx)
    local Tn = idx:size(1)
    local cos, sin = model.rope_cos:narrow(0, 0, Tn), model.rope_sin:narrow(0, 0, Tn)
    local o = nc().no_grad(M.loop_outputs, model, idx, cos, sin)
    return o.logits, o.z
end

-- ---- the loss -----------------------------------------------------------------------------------
local function ce_opts(opts)
    return { reduction = 'none', ignore_index = opts.ignore_index, label_smoothing = opts.label_smoothing,
             z_loss = opts.z_loss }
end

local function valid_mask(targets, ii)
    local n = nc()
    return n.ne(targets, ii or -1):to('f32'):reshape { -1 }
end

local function stage2_loss(model, idx, targets, opts, cos, sin)
    local n = nc()
    local lc = model.cfg.loop
    local o = n.no_grad(function()
        local x = run_prelude(model, model:_embed(idx), cos, sin, nil)
        local r = { h = {}, ce = {} }
        for t = 1, lc.T do
            x = run_shared(model, x, cos, sin, nil, t)
            if t < lc.T then r.h[t] = model:_final(x) end
            local logits = model:_logits(model:_final(run_coda(model, x, cos, sin, nil, t)))
            r.ce[t] = n.cross_entropy(logits, targets, ce_opts(opts)):reshape { -1 }
            if t == lc.T then r.logits = logits end
        end
        return r
    end)
    local valid = valid_mask(targets, opts.ignore_index)
    if lc.T == 1 then error('looplm: stage 2 trains the exit gate and needs cfg.loop.T >= 2', 3) end
    local total
    for t = 1, lc.T - 1 do
        -- gate at loop t decides whether to run loop t + 1: target exit prob = 1 - w_{t+1}
        local y = n.no_grad(function()
            local I = n.clamp(o.ce[t] - o.ce[t + 1], 0, nil)
            return 1 - n.sigmoid((I - M.STAGE2_MARGIN) * M.STAGE2_SHARP)
        end)
        local z = n.clamp(model.exit_gate(o.h[t]):reshape { -1 }, -M.LOGIT_CLAMP, M.LOGIT_CLAMP)
        local bce = -(y * n.log(n.sigmoid(z)) + (1 - y) * n.log(n.sigmoid(-z)))
        total = total and total + bce or bce
    end
    local count = math.max(valid:sum():item(), 1)
    return n.sum(total * valid) * (1 / (count * (lc.T - 1))), o.logits
end

-- GPT:_loss with cfg.loop -> loss, logits of the last loop
function M.loss(model, idx, targets, opts, cos, sin)
    opts = opts or {}
    local n = nc()
    local lc = model.cfg.loop
    if lc.stage == 2 then return stage2_loss(model, idx, targets, opts, cos, sin) end
    local o = M.loop_outputs(model, idx, cos, sin)
    local logits_T = o.logits[lc.T]
    if opts.collider then targets = opts.collider:select(logits_T, targets, idx) end
    local ces = {}
    for t = 1, lc.T do ces[t] = n.cross_entropy(o.logits[t], targets, ce_opts(opts)):reshape { -1 } end
    local zs = {}
    for t = 1, lc.T - 1 do zs[t] = o.z[t]:reshape { -1 } end
    local loss = M.exit_objective(zs, ces, lc.beta, valid_mask(targets, opts.ignore_index))
    if model.cfg.mtp then loss = loss + require('nanochat.mtp').loss(model, o.h_final, idx, targets, opts, cos, sin) end
    return loss, logits_T
end

-- ---- cached decoding with early exit ------------------------------------------------------------
-- cache fields added by GPT:new_cache for a loop model: exit_q, loop_stats
function M.init_cache(cache, lc, opts)
    local q = opts and opts.exit_q
    if q == nil then q = lc.exit_q end
    if type(q) ~= 'number' or q < 0 or q > 1 then
        error('gpt: new_cache: exit_q must be a number in [0, 1], got ' .. tostring(q), 3)
    end
    cache.exit_q = q
    M.reset_stats(cache)
end

function M.reset_stats(cache)
    cache.loop_stats = { tokens = 0, loops = 0, decode_tokens = 0, decode_loops = 0, hist = {} }
end

function M.stats(cache)
    local s = cache.loop_stats
    if not s then error('looplm.stats: not a LoopLM cache', 2) end
    local out = { tokens = s.tokens, loops = s.loops, decode_tokens = s.decode_tokens, decode_loops = s.decode_loops,
                  hist = {} }
    for k, v in pairs(s.hist) do out.hist[k] = v end
    out.avg_loops = s.tokens > 0 and s.loops / s.tokens or 0
    out.avg_decode_loops = s.decode_tokens > 0 and s.decode_loops / s.decode_tokens or 0
    return out
end

-- copy KV slot src -> dst for batch row b at positions pos .. pos+Tn-1
local function copy_slot(cache, dst, src, b, pos, Tn)
    if cache.copy_kv then return cache:copy_kv(dst, src, b, pos, Tn) end   -- (the packed engine's: one memcpy each)
    for _, kv in ipairs { cache.k, cache.v } do
        local d, s = kv[dst], kv[src]
        if cache.B ~= 1 then d, s = d:narrow(0, b, 1), s:narrow(0, b, 1) end   -- (B = 1: fewer views per token)
        d:narrow(1, pos, Tn):copy_(s:narrow(1, pos, Tn))
    end
end

-- the reuse policy for row b that exited at loop e (coda computed at loop e only when coda_all is false)
local function fill_reuse(cache, lc, b, e, pos, Tn, coda_all)
    for t = e + 1, lc.T do
        for j = 1, lc.shared do copy_slot(cache, shared_slot(lc, t, j), shared_slot(lc, e, j), b, pos, Tn) end
    end
    if not coda_all then
        for t = 1, lc.T do
            if t ~= e then
                for j = 1, lc.coda do copy_slot(cache, coda_slot(lc, t, j), coda_slot(lc, e, j), b, pos, Tn) end
            end
        end
    end
end

M.fill_reuse = fill_reuse

-- h (m, 1, d) normed -> logits (m, 1, V) in chunks of <= 8 rows (the engine's decode head path:
-- each row gets the bits it gets alone)
local function logits_rows(model, h)
    local m = h:size(0)
    if m <= 8 then return model:_logits(h) end
    local parts = {}
    for r0 = 0, m - 1, 8 do parts[#parts + 1] = model:_logits(h:narrow(0, r0, math.min(8, m - r0))) end
    return nc().cat(parts, 0)
end

-- rows of x (dim 0) picked by the 1-based list ks
local function pick_rows(x, ks)
    if #ks == x:size(0) then return x end
    local idx = {}
    for j, k in ipairs(ks) do idx[j] = k - 1 end
    return nc().index_select(x, 0, nc().tensor(idx, { dtype = 'i64' }))
end

-- the exit-gate logits of every row of x (B, 1, ...) as a Lua list of B numbers: the model's
-- batched kernel when it has one (the packed engine's exit_logits: nc_engine_exit_gate, ONE C call,
-- each row's value independent of the others), else the gate on _final — all rows at once
-- (forward_cached) or, per_row, row by row (B = 1 ops: every row gets the bits it gets alone)
local function gate_z(model, x, per_row)
    if model.exit_logits then return model:exit_logits(x) end
    if not per_row or x:size(0) == 1 then return model.exit_gate(model:_final(x)):tolist() end
    local z = {}
    for k = 1, x:size(0) do z[k] = model.exit_gate(model:_final(x:narrow(0, k - 1, 1))):tolist()[1] end
    return z
end
M.gate_z = gate_z

-- Batched decode (continuous batching, engine:decode_rows): nb sequences, one token each, sequence
-- i in cache row rows[i] (dim 0 of every K/V slot of `cache`) at position positions[i]; x (nb, 1,
-- ...) the embedded tokens. model:run_rows(x, cache, seg, rows, positions) runs a segment on a
-- subset of the rows (one fused call). Per loop t the shared stack runs on the sequences still
-- active; each decides its exit with its own q (seqs[i].exit_q, default cache.exit_q) exactly as
-- forward_cached decoding it alone (gate_z: row-wise exact, one C call on the engine); the coda
-- at loop t runs on the sequences exiting there, the head once at the end for all (chunks of <= 8
-- rows, one pass over the head's weights instead of one per exit loop); afterwards each
-- sequence's KV gets the reuse fill from its own exit loop and its statistics go to
-- seqs[i].loop_stats (default cache.loop_stats). Returns logits (nb, V) and the exit loops.
function M.decode_rows(model, x, cache, rows, positions, seqs)
    local lc = model.cfg.loop
    local T = lc.T
    local nb = #rows
    local q, S, cum, exit_at = {}, {}, {}, {}
    for i = 1, nb do
        q[i] = seqs and seqs[i] and seqs[i].exit_q or cache.exit_q
        S[i], cum[i] = 1.0, 0.0
    end
    x = model:run_rows(x, cache, M.segment(lc, 'prelude'), rows, positions)
    local act = {}                       -- act[k]: the sequence of x's row k
    for i = 1, nb do act[i] = i end
    local hs, order = {}, {}   -- the normed final states of the exiting rows, per exit loop; their sequences
    local t = 0
    while #act > 0 do
        t = t + 1
        local r, p = {}, {}
        for k, i in ipairs(act) do r[k], p[k] = rows[i], positions[i] end
        x = model:run_rows(x, cache, M.segment(lc, 'shared', t), r, p)
        local ex, keep = {}, {}          -- row indices (1-based) of x exiting / continuing
        local z                          -- the gate of every active row, evaluated once (when needed)
        for k, i in ipairs(act) do
            local done = t == T or q[i] <= 0
            if not done and q[i] < 1 then
                z = z or gate_z(model, x, true)
                local zc = math.max(-M.LOGIT_CLAMP, math.min(M.LOGIT_CLAMP, z[k]))
                local lam = 1 / (1 + math.exp(-zc))
                cum[i] = cum[i] + lam * S[i]
                S[i] = S[i] * (1 - lam)
                done = cum[i] >= q[i]
            end
            if done then ex[#ex + 1] = k else keep[#keep + 1] = k end
        end
        if #ex > 0 then
            local re, pe = {}, {}
            for j, k in ipairs(ex) do re[j], pe[j] = r[k], p[k] end
            local xe = model:run_rows(pick_rows(x, ex), cache, M.segment(lc, 'coda', t), re, pe)
            hs[#hs + 1] = model:_final(xe)   -- (the head runs once, after the last loop)
            for _, k in ipairs(ex) do
                order[#order + 1] = act[k]
                exit_at[act[k]] = t
            end
            local nact = {}
            for j, k in ipairs(keep) do nact[j] = act[k] end
            if #keep > 0 then x = pick_rows(x, keep) end
            act = nact
        end
    end
    -- the head once for all rows (one pass over its weights, not one per exit loop; chunks of <= 8
    -- rows: each row's bits do not depend on its neighbours)
    local V = model.cfg.vocab_size
    local lg = logits_rows(model, #hs == 1 and hs[1] or nc().cat(hs, 0)):reshape { nb, V }
    local logits = lg
    if #hs > 1 then
        logits = nc().empty { nb, V }
        for j, i in ipairs(order) do logits:narrow(0, i - 1, 1):copy_(lg:narrow(0, j - 1, 1)) end
    end
    for i = 1, nb do
        if q[i] < 1 then fill_reuse(cache, lc, rows[i], exit_at[i], positions[i], 1, false) end
        local st = seqs and seqs[i] and seqs[i].loop_stats or cache.loop_stats
        local e = exit_at[i]
        st.hist[e] = (st.hist[e] or 0) + 1
        st.decode_loops = st.decode_loops + e
        st.loops = st.loops + e
        st.tokens = st.tokens + 1
        st.decode_tokens = st.decode_tokens + 1
    end
    return logits, exit_at
end

-- GPT:forward_cached with cfg.loop (runs under no_grad; the caller advances cache.pos)
function M.forward_cached(model, idx, cache, cos, sin)
    local n = nc()
    local lc = model.cfg.loop
    local T, q = lc.T, cache.exit_q
    local B, Tn = idx:size(0), idx:size(1)
    local pos = cache.pos
    local st = cache.loop_stats
    local x = run_prelude(model, model:_embed(idx), cos, sin, cache)
    if Tn > 1 then
        -- prefill: every loop for every position
        local pick = {}                                 -- per loop t: logits (B, Tn, V) if some token exits there
        local zs = {}
        for t = 1, T do
            x = run_shared(model, x, cos, sin, cache, t)
            if q < 1 and t < T then zs[t] = model.exit_gate(model:_final(x)) end
            if q < 1 or t == T then pick[t] = model:_logits(model:_final(run_coda(model, x, cos, sin, cache, t))) end
        end
        if q >= 1 then   -- (a q >= 1 cache only ever reads loop-T coda slots: no reuse fill needed)
            st.tokens = st.tokens + B * Tn
            st.loops = st.loops + B * Tn * T
            st.hist[T] = (st.hist[T] or 0) + B * Tn
            return pick[T]
        end
        -- per-position exit loop from the gate logits
        local zl = {}
        for t = 1, T - 1 do zl[t] = zs[t]:tolist() end
        local out = pick[T]:clone()
        for b = 1, B do
            for i = 1, Tn do
                local lam = {}
                for t = 1, T - 1 do lam[t] = 1 / (1 + math.exp(-math.max(-M.LOGIT_CLAMP, math.min(M.LOGIT_CLAMP, zl[t][(b - 1) * Tn + i])))) end
                lam[T] = 1
                local e = M.q_exit((M.exit_distribution(lam)), q)
                if e < T then out:narrow(0, b - 1, 1):narrow(1, i - 1, 1):copy_(pick[e]:narrow(0, b - 1, 1):narrow(1, i - 1, 1)) end
                st.hist[e] = (st.hist[e] or 0) + 1
            end
        end
        st.tokens = st.tokens + B * Tn
        st.loops = st.loops + B * Tn * T
        return out
    end
    -- decode (one position): runtime early stop
    local exit_at, S, cum = {}, {}, {}
    for b = 1, B do S[b], cum[b] = 1.0, 0.0 end
    local remaining = B
    local out
    local t = 0
    while remaining > 0 do
        t = t + 1
        x = run_shared(model, x, cos, sin, cache, t)
        local newly = {}
        if t == T or q <= 0 then
            for b = 1, B do if not exit_at[b] then newly[#newly + 1] = b end end
        elseif q < 1 then
            local z = gate_z(model, x)   -- B values
            for b = 1, B do
                if not exit_at[b] then
                    local zc = math.max(-M.LOGIT_CLAMP, math.min(M.LOGIT_CLAMP, z[b]))
                    local lam = 1 / (1 + math.exp(-zc))
                    cum[b] = cum[b] + lam * S[b]
                    S[b] = S[b] * (1 - lam)
                    if cum[b] >= q then newly[#newly + 1] = b end
                end
            end
        end
        if #newly > 0 then
            local logits = model:_logits(model:_final(run_coda(model, x, cos, sin, cache, t)))
            if #newly == B then
                out = logits
            else
                out = out or n.zeros(logits:shape())
                for _, b in ipairs(newly) do out:narrow(0, b - 1, 1):copy_(logits:narrow(0, b - 1, 1)) end
            end
            for _, b in ipairs(newly) do exit_at[b] = t end
            remaining = remaining - #newly
        end
    end
    for b = 1, B do
        if q < 1 then fill_reuse(cache, lc, b - 1, exit_at[b], pos, 1, false) end
        st.hist[exit_at[b]] = (st.hist[exit_at[b]] or 0) + 1
        st.decode_loops = st.decode_loops + exit_at[b]
        st.loops = st.loops + exit_at[b]
    end
    st.tokens = st.tokens + B
    st.decode_tokens = st.decode_tokens + B
    return out
end

-- ---- counting ----------------------------------------------------------------------------------
-- FLOPs per token of the training forward+backward (6 per multiply-add parameter): every block
-- application, the head once per loop, the gate on T - 1 loops, plus attention 6 d Tseq per block
-- application. blk = matmul parameters of one block, V d = the head matrix.
function M.flops_per_token(lc, blk, head, d, Tseq)
    local A = M.applications(lc)
    return 6 * (A * blk + lc.T * head + (lc.T - 1) * d) + 6 * A * d * Tseq
end

return M
