-- lua/nanochat/models/gpt.lua — nc.models.gpt: the ternary (BitNet b1.58) GPT.
--
-- Promise: `nc.models.gpt.new(cfg)` builds a decoder-only transformer from a plain cfg table
-- (configs/models/*.lua), deterministically from cfg.seed (its own nc.generator; the global
-- generator is not touched). Architecture (algorithms.md §1, §14):
--
--   x = rmsnorm(wte[idx])                                  token embedding (fp32), then a norm
--                                                          (cfg.embed_norm = false: x = wte[idx],
--                                                          as llama.cpp's llama/bitnet graphs do)
--   per block (pre-norm, residual):
--     h = rmsnorm(x); xq = Qa(h) (one int8 quantization shared by q, k and v)
--     q, k, v = xq Qw(Wq)^T, xq Qw(Wk)^T, xq Qw(Wv)^T     GQA: n_head query, n_kv_head kv heads
--     [qk_norm: parameter-free rmsnorm of q and k per head]; RoPE (half split, base rope_theta)
--     a = causal attention(q, k, v), scale 1/sqrt(head_dim)
--     x = x + BitLinear_o(a)       BitLinear_o normalizes its own input (parameter-free), or with
--                                  cfg.subln a learnable-gain RMSNorm (SubLN, 2B4T) comes first
--     h = rmsnorm(x); xq = Qa(h)
--     relu2:  u = relu(xq Qw(W1)^T)^2          swiglu: u = silu(xq Qw(W1)^T) * (xq Qw(W3)^T)
--     x = x + BitLinear_2(u)       (own norm, or SubLN like the attention output)
--   logits = rmsnorm(x) Whead^T   (fp32 head; tied to wte with cfg.tie_embeddings)
--   [logit_softcap c: logits = c tanh(logits / c)]
-- so the input of every ternary matmul is RMS-normalized (§1.4). All pre-norms are parameter-
-- free (nanochat); no biases. cfg.ternary = false switches both quantizers off and leaves the same
-- network in fp32 (an ablation, and what the finite-difference specs differentiate).
--
-- Init (a documented choice): block matrices W ~ N(0, init_std = 0.02); the two output
-- projections (wo, w2) N(0, init_std / sqrt(2 n_layer)) (GPT-2); wte ~ N(0, embed_std = 1) (a norm
-- follows it); the untied head ~ N(0, head_std = 0.001) so the loss starts at ln(V); tied
-- embeddings use init_std for the shared matrix. SubLN gains start at 1. Note the ternary forward
-- is scale invariant per matrix, so the std only sets the latent scale the optimizer moves.
--
-- Parameter names: wte.weight, h.<i>.attn.{wq,wk,wv,wo}.weight, h.<i>.attn.sub_norm.weight,
-- h.<i>.mlp.{w1,w3,w2}.weight, h.<i>.mlp.sub_norm.weight, lm_head.weight; with cfg.loop (LoopLM,
-- nanochat.looplm) also exit_gate.{weight,bias}; with cfg.mhc also
-- h.<i>.mhc_{attn,mlp}.{bias,phi,alpha} (nanochat.mhc; role 'scalar').
--
-- FLOPs (design.md): flops_per_token(T) = 6 N + 6 L d T with N = the parameters that take part in
-- a matmul (every block matrix plus the head matrix; the token embedding is a lookup and norm
-- gains are elementwise, so neither counts; a tied matrix counts once, as the head). With cfg.mtp,
-- N includes the MTP modules' matrices (mtp.<k>.*) and each depth adds 6 (V d + d T) (nanochat.mtp).
-- LoopLM (cfg.loop, nanochat.looplm): every block application counts (prelude + (shared + coda) * T),
-- the head once per loop and the exit gate on T - 1 loops.
--
-- Generation: model:new_cache(B, max_T) preallocates per-layer K/V (B, max_T, n_kv_head, head_dim)
-- and RoPE tables for positions 0 .. max_T-1; model:forward_cached(idx, cache) runs idx (B, T) at
-- positions cache.pos .. cache.pos+T-1 (no autograd), appends its K/V and returns logits (B, T, V).
-- A cache also snapshots the ternary weights Qw(W) at its first use (decoding would otherwise
-- re-quantize every matrix per token): weights changed afterwards are seen after cache:reset().
-- LoopLM: new_cache(B, max_T, { exit_q = q }) holds one K/V slot per (loop, block) application and
-- forward_cached stops each decoded token at its q-exit loop (nanochat.looplm's header: reuse policy).
local nn = require 'nanochat.nn'
local BitLinear = require 'nanochat.layers.bitlinear'
local Module = nn.Module

local function nc() return require 'nanochat' end

local M = {}

-- ---- config ----------------------------------------------------------------------------------
local KNOWN = {
    vocab_size = 'number', seq_len = 'number', d_model = 'number', n_layer = 'number', n_head = 'number',
    n_kv_head = 'number', head_dim = 'number', d_ff = 'number', mlp = 'string', rope_theta = 'number',
    qk_norm = 'boolean', tie_embeddings = 'boolean', logit_softcap = 'number', ternary = 'boolean',
    quant_group = 'number', subln = 'boolean', init_std = 'number', embed_std = 'number',
    head_std = 'number', norm_eps = 'number', seed = 'number', name = 'string', arch = 'string',
    embed_norm = 'boolean', matmul = 'string', head_matmul = 'string',
    -- feature sub-configs (issue 6), each validated by its own module's config():
    loop = 'table',   -- LoopLM:   nanochat.looplm
    mhc = 'table',    -- mHC/lite: nanochat.mhc
    mtp = 'table',    -- MTP:      nanochat.mtp
}

-- feature sub-config key -> the module that validates it (module.config(sub, c) returns a filled copy)
local FEATURES = { loop = 'nanochat.looplm', mhc = 'nanochat.mhc', mtp = 'nanochat.mtp' }
M.FEATURES = FEATURES

local function is_posint(v) return type(v) == 'number' and v >= 1 and v == math.floor(v) end

-- A complete, validated copy of cfg with the defaults filled in (errors name the bad field).
function M.config(cfg)
    if type(cfg) ~= 'table' then error('gpt: expected a cfg table, got ' .. type(cfg), 2) end
    local c = {}
    for k, v in pairs(cfg) do
        local want = KNOWN[k]
        if not want then error('gpt: unknown cfg field ' .. tostring(k), 2) end
        if type(v) ~= want then error(string.format('gpt: cfg.%s must be a %s, got %s', k, want, type(v)), 2) end
        c[k] = v
    end
    for _, k in ipairs { 'vocab_size', 'd_model', 'n_layer', 'n_head' } do
        if not is_posint(c[k]) then error('gpt: cfg.' .. k .. ' must be a positive integer, got ' .. tostring(c[k]), 2) end
    end
    c.arch = c.arch or 'gpt'
    c.seq_len = c.seq_len or 256
    c.n_kv_head = c.n_kv_head or c.n_head
    c.head_dim = c.head_dim or c.d_model / c.n_head
    c.mlp = c.mlp or 'relu2'
    if c.mlp ~= 'relu2' and c.mlp ~= 'swiglu' then error("gpt: cfg.mlp must be 'relu2' or 'swiglu', got " .. c.mlp, 2) end
    if not c.d_ff then
        -- relu2: 4d; swiglu: 8/3 d rounded up to a multiple of 64 (same params/FLOPs as 4d, §14.5)
        c.d_ff = c.mlp == 'relu2' and 4 * c.d_model or 64 * math.ceil(8 * c.d_model / 3 / 64)
    end
    c.rope_theta = c.rope_theta or 10000
    if c.qk_norm == nil then c.qk_norm = false end
    if c.tie_embeddings == nil then c.tie_embeddings = false end
    if c.ternary == nil then c.ternary = true end
    c.quant_group = c.quant_group or 0
    -- BitLinear matmul backend (layers/bitlinear.lua): 'auto' = int8 forward, bf16 backward on AMX
    -- or the AVX-512 BF16 / VNNI kernels when nc.cpu_gemm_fast(), else fp32; 'fp32' = the f32
    -- composite path; 'amx' = 'auto' + a note when neither exists
    c.matmul = c.matmul or 'auto'
    if not BitLinear.MATMUL[c.matmul] then
        error("gpt: cfg.matmul must be 'auto', 'amx' or 'fp32', got " .. c.matmul, 2)
    end
    -- the fp32 LM head: 'bf16' = nc.linear_bf16 (bf16 operands, f32 accumulation on AMX; fp32
    -- without AMX); 'fp32' = nc.linear (sgemm); 'auto' (default) = bf16 in training steps (train
    -- mode with gradients recorded: mixed precision, as on GPUs) and fp32 otherwise (eval mode or
    -- no_grad: validation, sampling, the logits the packed engine reproduces, "Train = serve")
    c.head_matmul = c.head_matmul or 'auto'
    if c.head_matmul ~= 'fp32' and c.head_matmul ~= 'bf16' and c.head_matmul ~= 'auto' then
        error("gpt: cfg.head_matmul must be 'auto', 'fp32' or 'bf16', got " .. c.head_matmul, 2)
    end
    if c.subln == nil then c.subln = false end
    if c.embed_norm == nil then c.embed_norm = true end
    c.init_std = c.init_std or 0.02
    c.embed_std = c.embed_std or (c.tie_embeddings and c.init_std or 1.0)
    c.head_std = c.head_std or 0.001
    c.norm_eps = c.norm_eps or 1e-6
    c.seed = c.seed or 0
    for _, k in ipairs { 'seq_len', 'n_kv_head', 'head_dim', 'd_ff' } do
        if not is_posint(c[k]) then error('gpt: cfg.' .. k .. ' must be a positive integer, got ' .. tostring(c[k]), 2) end
    end
    if c.head_dim % 2 ~= 0 then error('gpt: head_dim ' .. c.head_dim .. ' must be even (RoPE rotates pairs)', 2) end
    if c.n_head % c.n_kv_head ~= 0 then
        error(string.format('gpt: n_head %d must be a multiple of n_kv_head %d (GQA)', c.n_head, c.n_kv_head), 2)
    end
    if c.logit_softcap and c.logit_softcap <= 0 then error('gpt: cfg.logit_softcap must be > 0', 2) end
    if c.quant_group < 0 or c.quant_group ~= math.floor(c.quant_group) then
        error('gpt: cfg.quant_group must be 0 (per tensor) or a positive group size', 2)
    end
    for key, mod in pairs(FEATURES) do
        if c[key] then c[key] = require(mod).config(c[key], c) end
    end
    return c
end

-- Closed-form parameter counts of a cfg: { total, embedding, head, matrix, norm, matmul }.
function M.count_params(cfg)
    local c = M.config(cfg)
    local d, hd, L = c.d_model, c.head_dim, c.n_layer
    local attn = d * c.n_head * hd * 2 + d * c.n_kv_head * hd * 2
    local mlp = (c.mlp == 'swiglu' and 3 or 2) * d * c.d_ff
    local norm = c.subln and L * (c.n_head * hd + c.d_ff) or 0
    local emb = c.vocab_size * d
    local head = c.tie_embeddings and 0 or c.vocab_size * d
    local matrix = L * (attn + mlp)
    if c.mtp then   -- the MTP modules' projections and blocks (nanochat.mtp)
        local m = require('nanochat.mtp').count_params(c)
        matrix, norm = matrix + m.matrix, norm + m.norm
    end
    local scalar = c.loop and d + 1 or 0   -- LoopLM exit gate: weight (1, d) + bias
    -- mHC: per sublayer bias (2n + R) and, when dynamic, phi (2n + R, n d) and alpha (3); role 'scalar'
    if c.mhc then
        local m = c.mhc
        local R = m.n * m.n
        if m.kind == 'lite' then R = 1; for i = 2, m.n do R = R * i end end
        local K = 2 * m.n + R
        scalar = scalar + 2 * L * (K + (m.dynamic and (K * m.n * d + 3) or 0))
    end
    return { total = emb + head + matrix + norm + scalar, embedding = emb, head = head, matrix = matrix, norm = norm,
             scalar = scalar, matmul = matrix + c.vocab_size * d }
end

-- ---- layers ------------------------------------------------------------------------------------
-- A bare weight holder (embedding table / head matrix), so names read wte.weight, lm_head.weight.
local Weight = Module:extend('Weight')
function Weight:init(rows, cols, std, gen)
    self:param('weight', nc().randn({ rows, cols }, { std = std, generator = gen }))
end
function Weight:extra_repr() return table.concat(self.weight:shape(), ', ') end

local Attention = Module:extend('Attention')
M.Attention = Attention

function Attention:init(c, gen)
    local d, H, Hkv, hd = c.d_model, c.n_head, c.n_kv_head, c.head_dim
    self.n_head, self.n_kv_head, self.head_dim = H, Hkv, hd
    self.ternary, self.qk_norm, self.eps, self.matmul = c.ternary, c.qk_norm, c.norm_eps, c.matmul
    local o = { ternary = c.ternary, group = c.quant_group, std = c.init_std, generator = gen, eps = c.norm_eps,
                matmul = c.matmul }
    self.wq = BitLinear(d, H * hd, o)
    self.wk = BitLinear(d, Hkv * hd, o)
    self.wv = BitLinear(d, Hkv * hd, o)
    if c.subln then self.sub_norm = nn.RMSNorm(H * hd, { eps = c.norm_eps }) end
    self.wo = BitLinear(H * hd, d, { ternary = c.ternary, group = c.quant_group, generator = gen, eps = c.norm_eps,
                                     matmul = c.matmul, std = c.init_std / math.sqrt(2 * c.n_layer), norm = not c.subln })
end

-- h (B, T, d) already RMS-normalized; cos, sin (T, head_dim/2) for these positions.
-- With a cache (no autograd) K/V are appended at cache.pos and attention runs over the whole prefix.
function Attention:forward(h, cos, sin, cache, layer)
    local n = nc()
    local B, T = h:size(0), h:size(1)
    local H, Hkv, hd = self.n_head, self.n_kv_head, self.head_dim
    local snap = cache and cache.qw
    local xq = BitLinear.prepare(h, { ternary = self.ternary, matmul = self.matmul })
    local q = self.wq:forward_prepared(xq, snap):view { B, T, H, hd }
    local k = self.wk:forward_prepared(xq, snap):view { B, T, Hkv, hd }
    local v = self.wv:forward_prepared(xq, snap):view { B, T, Hkv, hd }
    if self.qk_norm then
        q, k = n.rmsnorm(q, nil, self.eps), n.rmsnorm(k, nil, self.eps)
    end
    q, k = n.rope(q, cos, sin), n.rope(k, cos, sin)
    if cache then
        local pos = cache.pos
        cache.k[layer]:narrow(1, pos, T):copy_(k)
        cache.v[layer]:narrow(1, pos, T):copy_(v)
        k = cache.k[layer]:narrow(1, 0, pos + T)
        v = cache.v[layer]:narrow(1, 0, pos + T)
    end
    local a = n.attention(q, k, v, { causal = true }):view { B, T, H * hd }
    if self.sub_norm then a = self.sub_norm(a) end
    return self.wo(a, snap)
end

local MLP = Module:extend('MLP')
M.MLP = MLP

function MLP:init(c, gen)
    local d, f = c.d_model, c.d_ff
    self.kind, self.ternary, self.matmul = c.mlp, c.ternary, c.matmul
    local o = { ternary = c.ternary, group = c.quant_group, std = c.init_std, generator = gen, eps = c.norm_eps,
                matmul = c.matmul }
    self.w1 = BitLinear(d, f, o)
    if c.mlp == 'swiglu' then self.w3 = BitLinear(d, f, o) end
    if c.subln then self.sub_norm = nn.RMSNorm(f, { eps = c.norm_eps }) end
    self.w2 = BitLinear(f, d, { ternary = c.ternary, group = c.quant_group, generator = gen, eps = c.norm_eps,
                                matmul = c.matmul, std = c.init_std / math.sqrt(2 * c.n_layer), norm = not c.subln })
end

-- h (B, T, d) already RMS-normalized; snap: a cache's quantized-weight snapshot or nil
function MLP:forward(h, snap)
    local n = nc()
    local xq = BitLinear.prepare(h, { ternary = self.ternary, matmul = self.matmul })
    local u
    if self.kind == 'relu2' then
        u = n.relu2(self.w1:forward_prepared(xq, snap))
    else
        u = n.silu(self.w1:forward_prepared(xq, snap)) * self.w3:forward_prepared(xq, snap)
    end
    if self.sub_norm then u = self.sub_norm(u) end
    return self.w2(u, snap)
end

local Block = Module:extend('Block')
M.Block = Block

-- [mHC region] blocks built from one generator are numbered 1, 2, ... in construction order (a
-- weak table keyed by the generator), unless the caller passes `index`: block i's attention
-- sublayer favours stream 2(i-1) mod n at init and its MLP sublayer stream 2(i-1)+1 mod n
-- (nanochat.mhc), so the streams are not interchangeable. The mHC layers draw nothing from gen.
local block_counter = setmetatable({}, { __mode = 'k' })

function Block:init(c, gen, index)
    self.eps = c.norm_eps
    self.attn = Attention(c, gen)
    self.mlp = MLP(c, gen)
    if c.mhc then
        if not index then
            index = (block_counter[gen] or 0) + 1
            block_counter[gen] = index
        end
        local mhc = require 'nanochat.mhc'
        self.mhc_attn = mhc.Layer(c, 2 * (index - 1))
        self.mhc_mlp = mhc.Layer(c, 2 * (index - 1) + 1)
    end
end

-- Pre-norm residual block. `layer` indexes the KV cache slot (LoopLM gives each (loop, block) its own).
-- [mHC region: with cfg.mhc, x carries n residual streams (B, T, n, d) and each residual update
-- goes through its nanochat.mhc layer: x = H_res x + H_post^T branch(H_pre x) per sublayer.]
function Block:forward(x, cos, sin, cache, layer)
    local n = nc()
    if self.mhc_attn then
        if x:dim() ~= 4 then
            error('gpt: Block: cfg.mhc is set, so a block expects the (B, T, n, d) stream state, got ' .. x:dim() ..
                ' dims (build blocks that run outside the mHC trunk, e.g. MTP modules, from a cfg without mhc)', 2)
        end
        local eps = self.eps
        x = self.mhc_attn(x, function(h) return self.attn(n.rmsnorm(h, nil, eps), cos, sin, cache, layer) end)
        return self.mhc_mlp(x, function(h) return self.mlp(n.rmsnorm(h, nil, eps), cache and cache.qw) end)
    end
    x = x + self.attn(n.rmsnorm(x, nil, self.eps), cos, sin, cache, layer)
    return x + self.mlp(n.rmsnorm(x, nil, self.eps), cache and cache.qw)
end

-- ---- the model -----------------------------------------------------------------------------------
local GPT = Module:extend('GPT')
M.GPT = GPT

-- [LoopLM region: with cfg.loop the block list is prelude + shared + coda and an exit gate is added]
-- [MTP region: with cfg.mtp the MTP modules are built after the head]
function GPT:init(cfg)
    local c = M.config(cfg)
    rawset(self, 'cfg', c)
    local n = nc()
    local gen = n.generator(c.seed)
    self.wte = Weight(c.vocab_size, c.d_model, c.embed_std, gen)
    local blocks = {}
    for i = 1, c.n_layer do blocks[i] = Block(c, gen) end
    self.h = nn.ModuleList(blocks)
    if not c.tie_embeddings then self.lm_head = Weight(c.vocab_size, c.d_model, c.head_std, gen) end
    -- LoopLM: h holds the unique blocks in order prelude, shared, coda (cfg.n_layer = their sum,
    -- checked by looplm.config); the fp32 exit gate (Linear d -> 1 with bias) is drawn after the
    -- head, so a loop model and a plain one with the same seed have the same blocks and head.
    if c.loop then self.exit_gate = require('nanochat.looplm').ExitGate(c, gen) end
    -- MTP modules from their own generator (derived from cfg.seed): the main weights are the same
    -- with or without cfg.mtp
    if c.mtp then self.mtp = require('nanochat.mtp').build(c) end
    local cos, sin = n.rope_tables(c.seq_len, c.head_dim, { base = c.rope_theta })
    self:buffer('rope_cos', cos, { persistent = false })
    self:buffer('rope_sin', sin, { persistent = false })
end

function M.new(cfg) return GPT(cfg) end

function GPT:head_weight() return self.lm_head and self.lm_head.weight or self.wte.weight end

-- rope tables for positions pos .. pos+T-1 (from the model's tables or the cache's)
local function rope_slice(cos, sin, pos, T, what)
    if pos + T > cos:size(0) then
        error(string.format('gpt: %s: positions %d..%d exceed the %d positions available', what, pos, pos + T - 1,
            cos:size(0)), 3)
    end
    return cos:narrow(0, pos, T), sin:narrow(0, pos, T)
end

local function check_idx(idx, what)
    if not nc().is_tensor(idx) or idx:dim() ~= 2 then
        error('gpt: ' .. what .. ': expected idx (B, T) integer tensor', 3)
    end
    local dt = idx:dtype()
    if dt ~= 'i64' and dt ~= 'i32' then error('gpt: ' .. what .. ': expected i64/i32 token ids, got ' .. dt, 3) end
end

-- The forward pass is split into hook points so the issue-6 features each own one region:
--   _embed(idx)                 token ids -> residual state x      [mHC: expands to n streams]
--   _trunk(x, cos, sin, cache)  runs the blocks                    [LoopLM: prelude/shared x T/coda]
--   _final(x)                   residual state -> normed hidden h  [mHC: reduces the streams]
--   _logits(h)                  h (B, T, d) -> logits (B, T, V)    (shared head, softcap)
--   _loss(idx, targets, opts)   the training loss                  [LoopLM, MTP, Collider terms]
function GPT:_embed(idx)
    local n = nc()
    local x = n.embedding(idx, self.wte.weight)
    if self.cfg.embed_norm then x = n.rmsnorm(x, nil, self.cfg.norm_eps) end
    if self.cfg.mhc then x = require('nanochat.mhc').expand(x, self.cfg.mhc.n) end   -- (B, T, n, d)
    return x
end

function GPT:_trunk(x, cos, sin, cache)
    if self.cfg.loop then return require('nanochat.looplm').trunk(self, x, cos, sin, cache) end
    for i, block in ipairs(self.h) do x = block(x, cos, sin, cache, i) end
    return x
end

function GPT:_final(x)
    if self.cfg.mhc then x = require('nanochat.mhc').reduce(x) end   -- mean of the n streams
    return nc().rmsnorm(x, nil, self.cfg.norm_eps)
end

function GPT:_logits(h)
    local n = nc()
    local hm = self.cfg.head_matmul
    local bf16 = hm == 'bf16' or (hm == 'auto' and self.training and n.grad_enabled())
    local logits = bf16 and n.linear_bf16(h, self:head_weight()) or n.linear(h, self:head_weight())
    local cap = self.cfg.logit_softcap
    if cap then logits = n.tanh(logits * (1 / cap)) * cap end
    return logits
end

-- shared trunk: idx (B, T) -> logits (B, T, V)
function GPT:_run(idx, cos, sin, cache)
    return self:_logits(self:_final(self:_trunk(self:_embed(idx), cos, sin, cache)))
end

-- The training loss; returns loss, logits. Plain model: mean cross-entropy of the next-token logits.
--   cfg.loop      -> nanochat.looplm.loss owns the whole loss (per-loop CE weighted by the exit
--                    distribution); it applies opts.collider and the MTP term itself
--   opts.collider -> a Collider step context: targets of filtered tokens become ignore_index
--                    (nanochat.collider; :select sees the final logits and the input ids)
--   cfg.mtp       -> + the multi-token-prediction loss on the final hidden state (nanochat.mtp)
function GPT:_loss(idx, targets, opts, cos, sin)
    opts = opts or {}
    local c = self.cfg
    if c.loop then return require('nanochat.looplm').loss(self, idx, targets, opts, cos, sin) end
    local h = self:_final(self:_trunk(self:_embed(idx), cos, sin, nil))
    local logits = self:_logits(h)
    if opts.collider then targets = opts.collider:select(logits, targets, idx) end
    local loss = nc().cross_entropy(logits, targets, opts)
    if c.mtp then loss = loss + require('nanochat.mtp').loss(self, h, idx, targets, opts, cos, sin) end
    return loss, logits
end

-- forward(idx) -> logits (B, T, V); forward(idx, targets, opts) -> mean loss (scalar), logits.
-- opts: z_loss, label_smoothing, ignore_index (nc.cross_entropy's).
function GPT:forward(idx, targets, opts)
    check_idx(idx, 'forward')
    local cos, sin = rope_slice(self.rope_cos, self.rope_sin, 0, idx:size(1), 'forward')
    if targets == nil then return self:_run(idx, cos, sin, nil) end
    return self:_loss(idx, targets, opts, cos, sin)
end

-- ---- KV cache ------------------------------------------------------------------------------------
local Cache = {}
Cache.__index = Cache

-- back to position 0; the quantized-weight snapshot is dropped too (re-taken on the next use)
function Cache:reset()
    self.pos = 0; self.qw = {}
    if self.loop_stats then require('nanochat.looplm').reset_stats(self) end
    return self
end
function Cache:bytes()
    local b = 0
    for i = 1, #self.k do b = b + 8 * self.k[i]:numel() end
    return b
end

-- A cache for B sequences of up to max_T positions (default cfg.seq_len); RoPE tables beyond the
-- training length are computed here (extrapolation is the caller's choice).
-- LoopLM: one K/V slot per (loop, block) application (nanochat.looplm: prelude + (shared + coda) * T);
-- opts.exit_q (default cfg.loop.exit_q) sets the q-exit threshold of this cache.
function GPT:new_cache(B, max_T, opts)
    local c = self.cfg
    max_T = max_T or c.seq_len
    if not is_posint(B) or not is_posint(max_T) then error('gpt: new_cache: expected positive integers (B, max_T)', 2) end
    local n = nc()
    local dev = self.wte.weight:device()
    local cache = setmetatable({ B = B, max_T = max_T, pos = 0, k = {}, v = {}, qw = {} }, Cache)
    local slots = c.n_layer
    if c.loop then
        local L = require 'nanochat.looplm'
        slots = L.n_slots(c.loop)
        L.init_cache(cache, c.loop, opts)
    end
    for i = 1, slots do
        cache.k[i] = n.zeros({ B, max_T, c.n_kv_head, c.head_dim }, { device = dev })
        cache.v[i] = n.zeros({ B, max_T, c.n_kv_head, c.head_dim }, { device = dev })
    end
    if max_T <= self.rope_cos:size(0) then
        cache.cos, cache.sin = self.rope_cos, self.rope_sin
    else
        cache.cos, cache.sin = n.rope_tables(max_T, c.head_dim, { base = c.rope_theta, device = dev })
    end
    return cache
end

-- idx (B, T) at positions cache.pos .. cache.pos+T-1 -> logits (B, T, V); advances cache.pos.
function GPT:forward_cached(idx, cache)
    check_idx(idx, 'forward_cached')
    if getmetatable(cache) ~= Cache then error('gpt: forward_cached: expected a cache from model:new_cache', 2) end
    local B, T = idx:size(0), idx:size(1)
    if B ~= cache.B then error(string.format('gpt: forward_cached: idx has B = %d, the cache %d', B, cache.B), 2) end
    if cache.pos + T > cache.max_T then
        error(string.format('gpt: forward_cached: cache full (%d + %d positions > max_T %d)', cache.pos, T, cache.max_T), 2)
    end
    local cos, sin = rope_slice(cache.cos, cache.sin, cache.pos, T, 'forward_cached')
    local logits
    if self.cfg.loop then
        logits = nc().no_grad(require('nanochat.looplm').forward_cached, self, idx, cache, cos, sin)
    else
        logits = nc().no_grad(function() return self:_run(idx, cos, sin, cache) end)
    end
    cache.pos = cache.pos + T
    return logits
end

-- ---- introspection -------------------------------------------------------------------------------
-- { [name] = 'matrix' | 'embedding' | 'head' | 'norm' | 'scalar' }: block BitLinear weights are
-- 'matrix'; a tied wte is 'embedding' (the optimizer treats it as the embedding). mHC coefficient
-- parameters (bias, alpha and the 2-D phi) are 'scalar': AdamW/Lion in the hybrid optimizer, never
-- Muon (phi is a zero-initialized gate projection, not a weight matrix to orthogonalize).
function GPT:param_roles()
    local roles = { ['wte.weight'] = 'embedding' }
    if self.lm_head then roles['lm_head.weight'] = 'head' end
    local MHCLayer = self.cfg.mhc and require('nanochat.mhc').Layer
    for _, nm in ipairs(self:named_modules()) do
        local name, m = nm[1], nm[2]
        if getmetatable(m) == BitLinear then roles[name .. '.weight'] = 'matrix'
        elseif getmetatable(m) == nn.RMSNorm and m.weight then roles[name .. '.weight'] = 'norm'
        elseif MHCLayer and getmetatable(m) == MHCLayer then
            for _, pn in ipairs { 'bias', 'phi', 'alpha' } do
                if rawget(m, pn) then roles[name .. '.' .. pn] = 'scalar' end
            end
        end
    end
    -- LoopLM exit gate: a (1, d) row and a bias, AdamW without decay (never Muon)
    if self.exit_gate then roles['exit_gate.weight'], roles['exit_gate.bias'] = 'scalar', 'scalar' end
    for _, nv in ipairs(self:named_parameters()) do
        if not roles[nv[1]] then roles[nv[1]] = 'scalar' end
    end
    return roles
end

-- counted from the actual parameters: { total, embedding, head, matrix, norm, matmul }
function GPT:param_counts()
    local roles = self:param_roles()
    local out = { total = 0, embedding = 0, head = 0, matrix = 0, norm = 0, scalar = 0 }
    for _, nv in ipairs(self:named_parameters()) do
        local r, k = roles[nv[1]], nv[2]:numel()
        out.total = out.total + k
        out[r] = out[r] + k
    end
    out.matmul = out.matrix + (self.lm_head and out.head or out.embedding)
    return out
end

-- all parameters (a tied matrix once)
function GPT:num_params() return self:param_counts().total end

-- 6 N + 6 L d T with N = matmul parameters (see the file header); T defaults to cfg.seq_len
function GPT:flops_per_token(T)
    local c = self.cfg
    T = T or c.seq_len
    local pc = self:param_counts()
    local mtp = c.mtp and require('nanochat.mtp') or nil
    local mtp_matrix = mtp and mtp.count_params(c).matrix or 0
    local f
    if c.loop then
        -- looped: every block application counts (nanochat.looplm.flops_per_token)
        local head = c.vocab_size * c.d_model
        f = require('nanochat.looplm').flops_per_token(c.loop, (pc.matmul - head - mtp_matrix) / c.n_layer, head,
            c.d_model, T) + 6 * mtp_matrix
    else
        f = 6 * pc.matmul + 6 * c.n_layer * c.d_model * T
    end
    if mtp then f = f + mtp.extra_flops(c, T) end   -- the head and attention per depth
    return f
end

function GPT:config()
    local out = {}
    for k, v in pairs(self.cfg) do out[k] = v end
    return out
end

function GPT:extra_repr()
    local c = self.cfg
    return string.format('V=%d, d=%d, L=%d, H=%d, Hkv=%d, ff=%d %s, ternary=%s', c.vocab_size, c.d_model, c.n_layer,
        c.n_head, c.n_kv_head, c.d_ff, c.mlp, tostring(c.ternary))
end

return M
