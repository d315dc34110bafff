-- lua/nanochat/mtp.lua — nc.mtp: multi-token prediction (algorithms.md §7) for nc.models.gpt, and
-- self-speculative greedy decoding with the MTP modules as the draft model.
--
-- Config (cfg.mtp, validated by M.config from gpt.config):
--   depth  (1)             D extra prediction depths
--   lambda (0.3)           weight of the MTP term at the start; M.set_lambda(model, v) changes it
--   kind   ('sequential')  'sequential' = DeepSeek-V3 modules (§7.2), 'parallel' = Gloeckle et al.
--                          independent heads (§7.1)
--   per_depth_backward (false)  the memory trick (below)
--
-- Architecture. h^0 = the main model's final normed hidden (B, T, d) (what _loss passes); t = idx.
--   sequential, module k = 1..D, position i = 0..T-1-k:
--     h'_i^k = M_k [ rmsnorm(h_i^{k-1}) ; rmsnorm(Emb(t_{i+k})) ]     M_k: BitLinear 2d -> d
--     h^k    = Block_k(h'^k) over the T-k positions (RoPE positions 0..T-k-1, causal)
--     logits = head(rmsnorm(h_i^k))  predicts t_{i+k+1} = targets[i+k]
--   parallel, head k = 1..D, position i = 0..T-1-k:
--     h^k = Block_k(h^0) ; logits = head(rmsnorm(h_i^k)) predicts t_{i+k+1} = targets[i+k]
-- Emb (wte) and the head (model:_logits: shared matrix + softcap) are the main model's. Choices:
-- M_k is a BitLinear (ternary when cfg.ternary, like the blocks; fp32 with ternary = false) built
-- with norm = false: its input is two RMS-normalized halves, so it is RMS-normalized already (the
-- §1.4 invariant holds). The norms are parameter-free like every pre-norm of the model. Block_k
-- is gpt.lua's Block built from the model cfg without loop/mhc/mtp (one residual stream). The
-- modules' weights come from their own generator (seed derived from cfg.seed), so a model with
-- MTP has bit-identical main weights to the same cfg without it. Parameter names:
-- mtp.<k-1>.proj.weight, mtp.<k-1>.block.attn.wq.weight, ... (roles: all 'matrix'; SubLN gains
-- 'norm').
--
-- Loss: L_k = mean cross-entropy over the valid targets of depth k (its own count: Collider's -1
-- targets are ignored; positions past the end are never formed, so nothing wraps);
-- L = L_main + (lambda / D) sum_k L_k. M.loss returns the second term (a tensor), or the number 0
-- when lambda = 0 (then nothing is computed: the loss is bitwise the plain LM loss and the MTP
-- parameters get no gradient). Depths with T - k < 1 contribute nothing.
--
-- cfg.mtp.per_depth_backward (false): §7.1's memory trick — the term's value comes from a forward
-- without a graph, and its backward runs one depth at a time (forward + backward, deepest first,
-- the gradient w.r.t. each module's input hidden chained to the depth before), so one (B, T, V)
-- logit tensor is alive instead of D; costs one more forward of the modules. Same gradients as the
-- joint backward (spec: relative 1e-5).
--
-- Lambda schedule: M.set_lambda(model, v) stores v on the model (model.mtp_lambda) and overrides
-- cfg.mtp.lambda from the next forward on; a recipe calls it every step from its own schedule
-- (DeepSeek-V3: 0.3, then 0.1 late in training). The value is not checkpointed: a schedule of the
-- step recomputes it on resume.
--
-- Self-speculative decoding (M.generate, greedy): the main model's hidden at the last committed
-- position m and its greedy next token t_{m+1} feed module 1, which drafts t_{m+2}; module k
-- takes module k-1's hidden and the token just drafted (parallel heads: the main hidden only).
-- One forward of the main model over [t_{m+1}, drafts] verifies them; the longest prefix that
-- equals the main model's own argmax is accepted, plus the main model's next token (bonus), and
-- the main KV cache rolls back (cache.pos) past the rejected positions. Every emitted token is an
-- argmax of the main model's logits given the committed prefix, so the stream equals plain
-- greedy decoding (nc.generate with temperature 0) — up to the float rounding differences
-- between a batched and a one-position forward (bitwise at micro size; ~3e-8 in the logits at
-- d 256, which only matters on exact near-ties). Each module has its own KV cache (one slot, the
-- Block's cache interface) and a buffer of its hidden states; positions whose inputs were drafts
-- are recomputed once the tokens are committed, so module caches always hold true inputs.
local nn = require 'nanochat.nn'
local BitLinear = require 'nanochat.layers.bitlinear'

local function nc() return require 'nanochat' end

local M = {}

local KINDS = { sequential = true, parallel = true }
local KNOWN = { depth = 'number', lambda = 'number', kind = 'string', per_depth_backward = 'boolean' }

-- a filled, validated copy of cfg.mtp; c is the (partly filled) model cfg
function M.config(sub, c)
    if type(sub) ~= 'table' then error('mtp: cfg.mtp must be a table, got ' .. type(sub), 2) end
    local out = {}
    for k, v in pairs(sub) do
        local want = KNOWN[k]
        if not want then error('mtp: unknown cfg.mtp field ' .. tostring(k) .. ' (known: depth, lambda, kind, per_depth_backward)', 2) end
        if type(v) ~= want then error(string.format('mtp: cfg.mtp.%s must be a %s, got %s', k, want, type(v)), 2) end
        out[k] = v
    end
    out.depth = out.depth or 1
    if out.lambda == nil then out.lambda = 0.3 end
    out.kind = out.kind or 'sequential'
    if out.per_depth_backward == nil then out.per_depth_backward = false end
    if out.depth < 1 or out.depth ~= math.floor(out.depth) then
        error('mtp: cfg.mtp.depth must be a positive integer, got ' .. tostring(out.depth), 2)
    end
    if not (out.lambda >= 0 and out.lambda < math.huge) then
        error('mtp: cfg.mtp.lambda must be a finite number >= 0, got ' .. tostring(out.lambda), 2)
    end
    if not KINDS[out.kind] then
        error("mtp: cfg.mtp.kind must be 'sequential' or 'parallel', got '" .. out.kind .. "'", 2)
    end
    if c and c.seq_len and out.depth >= c.seq_len then
        error(string.format('mtp: cfg.mtp.depth %d must be below seq_len %d', out.depth, c.seq_len), 2)
    end
    return out
end

-- the model cfg a module's Block is built from: one residual stream, no features
local function block_cfg(c)
    local b = {}
    for k, v in pairs(c) do b[k] = v end
    b.loop, b.mhc, b.mtp = nil, nil, nil
    return b
end

-- ---- modules -----------------------------------------------------------------------------------
local MTPModule = nn.Module:extend('MTPModule')
M.MTPModule = MTPModule

function MTPModule:init(c, kind, gen)
    local Block = require('nanochat.models.gpt').Block
    self.kind = kind
    if kind == 'sequential' then
        self.proj = BitLinear(2 * c.d_model, c.d_model, { ternary = c.ternary, group = c.quant_group, std = c.init_std,
                                                          generator = gen, eps = c.norm_eps, matmul = c.matmul })
    end
    self.block = Block(block_cfg(c), gen)
end

function MTPModule:extra_repr() return self.kind end

-- seed offset of the modules' own generator (the main weights never see it)
M.SEED_OFFSET = 0x4D545000

-- nn.ModuleList of the D modules of a filled cfg (called from GPT:init's MTP region)
function M.build(c)
    local gen = nc().generator(c.seed + M.SEED_OFFSET)
    local mods = {}
    for k = 1, c.mtp.depth do mods[k] = MTPModule(c, c.mtp.kind, gen) end
    return nn.ModuleList(mods)
end

-- closed-form parameter counts of the modules of a filled cfg: { matrix, norm }
function M.count_params(c)
    local d, hd, D = c.d_model, c.head_dim, c.mtp.depth
    local attn = d * c.n_head * hd * 2 + d * c.n_kv_head * hd * 2
    local mlp = (c.mlp == 'swiglu' and 3 or 2) * d * c.d_ff
    local proj = c.mtp.kind == 'sequential' and 2 * d * d or 0
    local norm = c.subln and (c.n_head * hd + c.d_ff) or 0
    return { matrix = D * (proj + attn + mlp), norm = D * norm }
end

-- training FLOPs per token beyond 6 N (N includes the module matrices): each depth applies the
-- shared head once more (6 V d) and one more attention (6 d T)
function M.extra_flops(c, T)
    return 6 * c.mtp.depth * (c.vocab_size * c.d_model + c.d_model * T)
end

-- ---- lambda ------------------------------------------------------------------------------------
function M.set_lambda(model, v)
    if type(model) ~= 'table' or not (model.cfg and model.cfg.mtp) then
        error('mtp.set_lambda: the model has no cfg.mtp', 2)
    end
    if type(v) ~= 'number' or not (v >= 0 and v < math.huge) then
        error('mtp.set_lambda: expected a finite number >= 0, got ' .. tostring(v), 2)
    end
    model.mtp_lambda = v
    return v
end

function M.lambda(model)
    local v = rawget(model, 'mtp_lambda')
    if v == nil then v = model.cfg.mtp.lambda end
    return v
end

-- ---- loss --------------------------------------------------------------------------------------
-- the f32 token-embedding matrix (V, d): the model's wte, or what model:embedding_weight() gives
-- (the packed engine, nanochat.engine, which offers the hooks this file calls: _embed, _trunk,
-- _final, _logits, head_weight, mtp[k].proj / .block, new_cache)
local function embedding_weight(model)
    if model.embedding_weight then return model:embedding_weight() end
    return model.wte.weight
end

-- Module k on aligned inputs: hin (B, L, d) = h^{k-1} (sequential) or h (parallel) at L positions,
-- ids (B, L) = the tokens t_{i+k} at those positions (sequential only), cos/sin their RoPE rows;
-- cache: a KV cache slot table (decoding) or nil. Returns the module's hidden (B, L, d).
local function module_apply(model, k, hin, ids, cos, sin, cache)
    local n = nc()
    local c = model.cfg
    local mod = model.mtp[k]
    local x = hin
    if c.mtp.kind == 'sequential' then
        local eps = c.norm_eps
        local e = n.rmsnorm(n.embedding(ids, embedding_weight(model)), nil, eps)
        x = mod.proj(n.cat({ n.rmsnorm(hin, nil, eps), e }, 2), cache and cache.qw)
    end
    return mod.block(x, cos, sin, cache, 1)
end

-- One depth in training: module k over the first L = T - k positions -> its hidden x (B, L, d) and
-- logits (B, L, V). prev = h^{k-1} (B, >= L, d) for a sequential module, the main hidden h for a
-- parallel head.
local function depth_forward(model, k, prev, idx, cos, sin)
    local L = idx:size(1) - k
    local x = module_apply(model, k, prev:narrow(1, 0, L):contiguous(), idx:narrow(1, k, L):contiguous(),
        cos:narrow(0, 0, L), sin:narrow(0, 0, L), nil)
    return x, model:_logits(nc().rmsnorm(x, nil, model.cfg.norm_eps))
end

local function ce_opts(opts)
    opts = opts or {}
    return { ignore_index = opts.ignore_index, label_smoothing = opts.label_smoothing, z_loss = opts.z_loss }
end

local function check_inputs(model, h, idx, targets)
    local n = nc()
    if not (model.cfg.mtp and model.mtp) then error('mtp.loss: the model has no MTP modules (cfg.mtp)', 3) end
    if not (n.is_tensor(h) and h:dim() == 3 and n.is_tensor(idx) and idx:dim() == 2) then
        error('mtp.loss: expected h (B, T, d) and idx (B, T)', 3)
    end
    if idx:size(1) ~= h:size(1) then error(string.format('mtp.loss: h has T = %d but idx %d', h:size(1), idx:size(1)), 3) end
    if targets ~= nil and not (n.is_tensor(targets) and targets:dim() == 2 and targets:size(1) == idx:size(1)) then
        error('mtp.loss: expected targets (B, T) like idx', 3)
    end
end

-- The per-depth logits { (B, T-1, V), ..., (B, T-D, V) } (fewer when T - k < 1) from the final
-- hidden h (B, T, d) and the input ids idx (B, T); cos, sin the RoPE rows of positions 0..T-1.
-- Entry k at position i predicts t_{i+k+1} (= targets[i+k]).
function M.depth_logits(model, h, idx, cos, sin)
    check_inputs(model, h, idx)
    local seq = model.cfg.mtp.kind == 'sequential'
    local out, prev = {}, h
    for k = 1, math.min(model.cfg.mtp.depth, h:size(1) - 1) do
        local x
        x, out[k] = depth_forward(model, k, seq and prev or h, idx, cos, sin)
        prev = x
    end
    return out
end

-- The per-depth losses { L_1, ..., L_D } (scalar tensors): L_k = mean cross-entropy of depth k's
-- logits against targets[:, k:] over its own valid (non-ignored) targets.
function M.depth_losses(model, h, idx, targets, opts, cos, sin)
    local n = nc()
    check_inputs(model, h, idx, targets)
    local ce = ce_opts(opts)
    local out = {}
    for k, logits in ipairs(M.depth_logits(model, h, idx, cos, sin)) do
        out[k] = n.cross_entropy(logits, targets:narrow(1, k, logits:size(1)):contiguous(), ce)
    end
    return out
end

-- §7.1's memory trick: the term's value from a forward without a graph; its backward runs each
-- depth's forward + backward in turn (deepest first: a sequential module's gradient w.r.t. its
-- input hidden feeds the depth before it) and hands the accumulated gradient w.r.t. h to the
-- trunk. One depth's logits (B, T, V) and graph are alive at a time instead of D; the modules run
-- forward twice.
local function per_depth_backward(model, h, idx, targets, opts, cos, sin, scale)
    local n = nc()
    local ag = require 'nanochat.autograd'
    local seq = model.cfg.mtp.kind == 'sequential'
    local Dv = math.min(model.cfg.mtp.depth, h:size(1) - 1)
    local ce = ce_opts(opts)
    local function tk(k) return targets:narrow(1, k, h:size(1) - k):contiguous() end
    local prevs, total = { [0] = h:detach() }, 0
    n.no_grad(function()
        for k = 1, Dv do
            local x, logits = depth_forward(model, k, seq and prevs[k - 1] or prevs[0], idx, cos, sin)
            total = total + n.cross_entropy(logits, tk(k), ce):item()
            if seq then prevs[k] = x end
        end
    end)
    local out = n.full({}, total * scale, { device = h:device() })
    ag.record(out, { h }, function(g)
        local gs = g:item() * scale
        local was = ag.set_enabled(true)
        local ok, err = pcall(function()
            local gnext, gh   -- gradient w.r.t. h^k from depth k+1 (sequential); w.r.t. h (parallel)
            for k = Dv, 1, -1 do
                local inp = (seq and prevs[k - 1] or prevs[0]):detach():requires_grad_(true)
                local x, logits = depth_forward(model, k, inp, idx, cos, sin)
                local obj = n.cross_entropy(logits, tk(k), ce) * gs
                if gnext then obj = obj + (x * gnext):sum() end
                obj:backward()
                if seq then gnext = inp.grad else gh = gh and gh + inp.grad or inp.grad end
            end
            local gacc = seq and gnext or gh
            if gacc then ag.grad_of(h):add_scaled_(gacc, 1) end
        end)
        ag.set_enabled(was)
        if not ok then error(err, 0) end
    end)
    return out
end

-- the term GPT:_loss adds: (lambda / D) sum_k L_k, or 0 (a number) when lambda = 0
function M.loss(model, h, idx, targets, opts, cos, sin)
    local lam = M.lambda(model)
    if lam == 0 then return 0 end
    check_inputs(model, h, idx, targets)
    local scale = lam / model.cfg.mtp.depth
    if h:size(1) < 2 then return 0 end
    if model.cfg.mtp.per_depth_backward and h.requires_grad and nc().grad_enabled() then
        return per_depth_backward(model, h, idx, targets, opts, cos, sin, scale)
    end
    local ls = M.depth_losses(model, h, idx, targets, opts, cos, sin)
    local total = ls[1]
    for k = 2, #ls do total = total + ls[k] end
    return total * scale
end

-- Monitoring (no autograd): main next-token loss and the per-depth MTP losses as numbers.
function M.eval_losses(model, idx, targets, opts)
    local n = nc()
    return n.no_grad(function()
        local T = idx:size(1)
        local cos, sin = model.rope_cos:narrow(0, 0, T), model.rope_sin:narrow(0, 0, T)
        local h = model:_final(model:_trunk(model:_embed(idx), cos, sin, nil))
        local main = n.cross_entropy(model:_logits(h), targets, opts):item()
        local ls = M.depth_losses(model, h, idx, targets, opts, cos, sin)
        for k = 1, #ls do ls[k] = ls[k]:item() end
        return main, ls
    end)
end

-- ---- self-speculative greedy decoding -------------------------------------------------------
local GEN_OPTS = { max_tokens = true, max_context = true, stop_tokens = true, depth = true, trace = true,
                   draft_vocab = true }

local function prompt_list(prompt, V)
    local n = nc()
    if n.is_tensor(prompt) then
        if prompt:dim() ~= 1 then error('mtp.generate: expected a 1-D prompt tensor, got ' .. prompt:dim() .. ' dims', 3) end
        prompt = prompt:tolist()
    end
    if type(prompt) ~= 'table' then error('mtp.generate: expected prompt ids (a Lua array or a 1-D tensor)', 3) end
    local out = {}
    for i, v in ipairs(prompt) do
        if type(v) ~= 'number' or v ~= math.floor(v) or v < 0 or v >= V then
            error('mtp.generate: prompt entry ' .. i .. ' is not a token id below the vocabulary size ' .. V .. ': '
                .. tostring(v), 3)
        end
        out[i] = v
    end
    return out
end

-- the greedy choice per row of logits (R, V) as a Lua array: argmax, the lowest id on ties (the
-- rule of nc.generate with temperature 0; nc.argmax keeps the first maximum)
function M.greedy_ids(rows) return rows:argmax(1):tolist() end

-- nc.mtp.generate(model, prompt_ids, opts) -> ids (Lua array), stats
-- opts: max_tokens (64), max_context (cfg.seq_len), stop_tokens (ids that end the stream, not
-- returned), depth (drafts per round, 0..cfg.mtp.depth; 0 = plain greedy), trace (true: stats.trace
-- lists every round as { pos = m, drafts = {...}, pred = the main model's ids, accepted }),
-- draft_vocab (nil = all: the drafts are argmaxes over ids 0..draft_vocab-1 only, so the modules'
-- head matmul reads draft_vocab rows instead of V — BPE ids are roughly in merge (frequency) order;
-- drafts are only proposals, so this changes speed and acceptance, never the output). Same limits as
-- nc.generate: at most max_tokens ids and at most max_context - #prompt + 1.
-- stats: { rounds, drafted, accepted, accept_rate = accepted / drafted, main_forwards,
--          tokens_per_forward = generated tokens / main-model forwards after the prefill }
function M.generate(model, prompt, opts)
    opts = opts or {}
    if type(opts) ~= 'table' then error('mtp.generate: opts must be a table', 2) end
    for k in pairs(opts) do
        if not GEN_OPTS[k] then
            error('mtp.generate: unknown option ' .. tostring(k) .. ' (known: max_tokens, max_context, stop_tokens, depth, trace, draft_vocab)', 2)
        end
    end
    local c = type(model) == 'table' and model.cfg
    if not (c and c.mtp and model.mtp) then error('mtp.generate: the model has no MTP modules (cfg.mtp)', 2) end
    prompt = prompt_list(prompt, c.vocab_size)
    local P = #prompt
    if P == 0 then error('mtp.generate: the prompt is empty (give at least one token, e.g. BOS)', 2) end
    local ctx = opts.max_context or c.seq_len
    if P > ctx then error(string.format('mtp.generate: the prompt has %d tokens, more than the context of %d', P, ctx), 2) end
    local max_tokens = opts.max_tokens or 64
    if type(max_tokens) ~= 'number' or max_tokens < 0 or max_tokens ~= math.floor(max_tokens) then
        error('mtp.generate: max_tokens must be an integer >= 0, got ' .. tostring(max_tokens), 2)
    end
    local D = opts.depth or c.mtp.depth
    if type(D) ~= 'number' or D < 0 or D > c.mtp.depth or D ~= math.floor(D) then
        error(string.format('mtp.generate: depth must be an integer in 0..%d, got %s', c.mtp.depth, tostring(D)), 2)
    end
    local DV = opts.draft_vocab or c.vocab_size
    if type(DV) ~= 'number' or DV < 1 or DV > c.vocab_size or DV ~= math.floor(DV) then
        error(string.format('mtp.generate: draft_vocab must be an integer in 1..%d, got %s', c.vocab_size, tostring(DV)), 2)
    end
    local stop = {}
    for _, id in ipairs(opts.stop_tokens or {}) do stop[id] = true end
    local N = math.min(max_tokens, ctx - P + 1)
    local stats = { rounds = 0, drafted = 0, accepted = 0, main_forwards = 0, accept_rate = 0, tokens_per_forward = 0,
                    trace = opts.trace and {} or nil }
    if N <= 0 then return {}, stats end

    local n = nc()
    local greedy = M.greedy_ids
    local seq = c.mtp.kind == 'sequential'
    local d, eps = c.d_model, c.norm_eps
    local maxT = math.min(ctx, P + max_tokens)
    local out = {}
    n.no_grad(function()
        local cache = model:new_cache(1, maxT)
        local dev = embedding_weight(model):device()
        local H = {}           -- H[k] (maxT, d): hidden rows of depth k (0 = the main model) per position
        for k = 0, D do H[k] = n.zeros({ maxT, d }, { device = dev }) end
        local mc, valid = {}, {}
        for k = 1, D do
            mc[k] = { pos = 0, qw = {},
                      k = { n.zeros({ 1, maxT, c.n_kv_head, c.head_dim }, { device = dev }) },
                      v = { n.zeros({ 1, maxT, c.n_kv_head, c.head_dim }, { device = dev }) } }
            valid[k] = 0       -- leading module-k positions computed from committed inputs
        end
        local draft_head = DV < c.vocab_size and model:head_weight():narrow(0, 0, DV) or nil
        local toks = {}        -- toks[i]: the committed token at 0-based position i
        for i = 1, P do toks[i - 1] = prompt[i] end

        -- main model over ids at positions pos.. (the cache is rolled back to pos first) -> (T, V)
        local function main_forward(ids, pos)
            local T = #ids
            cache.pos = pos
            local idx = n.tensor({ ids }, { dtype = 'i64', device = dev })
            local cos, sin = cache.cos:narrow(0, pos, T), cache.sin:narrow(0, pos, T)
            local h = model:_final(model:_trunk(model:_embed(idx), cos, sin, cache))
            local logits = model:_logits(h)
            cache.pos = pos + T
            H[0]:narrow(0, pos, T):copy_(h:select(0, 0))
            stats.main_forwards = stats.main_forwards + 1
            return logits:select(0, 0)
        end

        -- module k over positions s..e; tok(j) gives the token at position j; returns its draft
        local function module_step(k, s, e, tok)
            local L = e - s + 1
            local mk = mc[k]
            mk.pos = s
            local cos, sin = cache.cos:narrow(0, s, L), cache.sin:narrow(0, s, L)
            local hin = H[seq and k - 1 or 0]:narrow(0, s, L):view { 1, L, d }   -- parallel heads read the main hidden
            local ids
            if seq then
                local list = {}
                for i = s, e do list[#list + 1] = tok(i + k) end
                ids = n.tensor({ list }, { dtype = 'i64', device = dev })
            end
            local x = module_apply(model, k, hin, ids, cos, sin, mk)
            mk.pos = e + 1
            H[k]:narrow(0, s, L):copy_(x:select(0, 0))
            local hl = n.rmsnorm(x:narrow(1, L - 1, 1), nil, eps)
            -- (the softcap is monotonic: the argmax of the plain head rows is the draft)
            local logits = draft_head and n.linear(hl, draft_head) or model:_logits(hl)
            return logits:reshape { -1 }:argmax():item()   -- a draft only: any tie rule will do
        end

        local done = false
        local function emit(id)
            if stop[id] then done = true; return end
            out[#out + 1] = id
            if #out >= N then done = true end
        end

        local lg = main_forward(prompt, 0)
        local m = P - 1
        toks[m + 1] = greedy(lg:narrow(0, P - 1, 1))[1]
        emit(toks[m + 1])
        while not done do
            local Dr = math.min(D, N - #out - 1)
            local drafts = {}
            local function tok(j) if j <= m + 1 then return toks[j] end return drafts[j - m - 1] end
            for k = 1, Dr do
                drafts[k] = module_step(k, valid[k], m, tok)
                valid[k] = seq and math.max(0, m + 2 - k) or m + 1
            end
            local ids = { toks[m + 1] }
            for j = 1, Dr do ids[j + 1] = drafts[j] end
            local pred = greedy(main_forward(ids, m + 1))
            local a = 0
            for j = 0, Dr do
                local p = pred[j + 1]
                emit(p)
                if done then break end
                toks[m + 2 + j] = p
                if j < Dr and p == drafts[j + 1] then a = a + 1 else break end
            end
            if opts.trace then
                stats.trace[#stats.trace + 1] = { pos = m, drafts = drafts, pred = pred, accepted = a }
            end
            stats.rounds = stats.rounds + 1
            stats.drafted = stats.drafted + Dr
            stats.accepted = stats.accepted + a
            m = m + 1 + a
            cache.pos = m + 1
        end
    end)
    stats.accept_rate = stats.drafted > 0 and stats.accepted / stats.drafted or 0
    stats.tokens_per_forward = stats.main_forwards > 1 and (#out - 1) / (stats.main_forwards - 1) or 0
    return out, stats
end

return M
