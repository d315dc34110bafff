-- lua/nanochat/engine.lua — the packed ternary inference engine (`nc.engine`, `nc.pack`).
--
-- Promise: `nc.pack(model_or_checkpoint_dir, opts)` → an Engine: every BitLinear of an
-- nc.models.gpt model packed 2 bits per weight (nc.infer.pack: i2b128 layout, the training
-- quantizer's absmean gamma carried exactly, never re-derived from quantized weights); activations
-- quantized per token to int8 (nc.infer.quant_act: the same q and s as nc.quant_act) once per
-- shared input (q/k/v share one, as in training; w1/w3 share one); embeddings and the LM head kept
-- f32 (opts.head_dtype = 'f16' stores them as f16 and widens per call: half the bytes, slower;
-- 'i8' keeps the embedding f32 and the head as int8 rows with an absmax scale each, multiplied
-- with the same int8 activations as the ternary layers: a quarter of the head's bytes, the fastest
-- decode, logits within the tolerance spec/models/engine_spec.lua names);
-- no autograd (everything under nc.no_grad); a KV cache per sequence batch.
--
-- The Engine offers the interface nc.generate needs (cfg, new_cache(B, max_T[, { exit_q }]),
-- forward_cached(idx, cache)), so `engine:generate(prompt, opts)` is nc.generate itself: one
-- implementation of the sampling rules. forward_cached with T > 1 is the batched prefill (packed
-- GEMM over B*T rows); T = 1 is decode (GEMV when B = 1, several sequences batched when B > 1, all
-- at the same position). Continuous batching (sequences at different positions, joining and
-- leaving): engine:decode_rows(ids, cache, rows, positions) decodes one token for each of several
-- sequences, each in its own cache row at its own position, in one fused call; engine:cache_row
-- gives a B = 1 view of one row (its prefill); engine:batch{ slots, max_T } is the decoder built on
-- them (nanochat.batch).
--
-- Architectures (cfg.loop / cfg.mhc / cfg.mtp and their combination): the Engine also offers the
-- model hooks the feature modules call — _embed, _trunk, _final, _logits, run_blocks (a segment of
-- blocks with their KV slots), head_weight / embedding_weight, exit_gate, mtp[k].proj / .block —
-- so the algorithms run unchanged on it: LoopLM decoding with q-exit early stop IS
-- looplm.forward_cached (its segments, KV slot layout, reuse fill and statistics), MTP drafting IS
-- nc.mtp.generate(engine, ...), and mHC stream mixing is the model's own nanochat.mhc layers
-- (copied at pack time) around the packed attention / MLP branches.
--
-- Threads: long prefills (T > FUSED_MAX_T) run op by op with the threaded kernels
-- (nc_ternary_matmul, ...). Decode and short chunks (T <= FUSED_MAX_T: a speculative verify, an MTP
-- module step) run a whole segment of layers (every layer; LoopLM: the prelude, one shared loop or
-- the coda) in ONE C call with one OpenMP parallel region (nc_engine_decode, kernels/cpu/engine.c:
-- q/k/v + attention split by KV-head groups, the other GEMVs by rows, 4 syncs per layer, no Lua
-- per op; engine.split / .o_full / .barrier choose other splits, same bits);
-- `engine.fused = false` selects the op-by-op path everywhere (the reference the specs compare
-- against). mHC models run the stream mixing inside the same call (nc_engine_cfg mhc_n: x is the
-- (rows, n d) stream state; per sublayer mhc.c's row kernels) — equal to the op path (the model's
-- nanochat.mhc layers) up to float rounding in the dynamic projection.
--
-- Checkpoint dirs: DIR/model.safetensors (the model's state_dict) + DIR/meta.json whose `model`
-- or `config` key holds the model cfg table (nc.models.gpt.new(cfg)). M.load_model(dir) builds it.
local infer = require 'nanochat.infer'

local function nc() return require 'nanochat' end

local M = {}

local Engine = {}
Engine.__index = Engine
M.Engine = Engine

-- chunks of at most this many positions run fused (nc_engine_decode); longer prefills op by op
M.FUSED_MAX_T = 8

local read_file = require('nanochat.io').read_file

-- dir -> model (nc.models.gpt), meta table
function M.load_model(dir)
    local n = nc()
    local text, err = read_file(dir .. '/meta.json')
    if not text then error('engine.load_model: ' .. dir .. '/meta.json: ' .. tostring(err), 2) end
    local meta = require('dkjson').decode(text)
    if type(meta) ~= 'table' then error('engine.load_model: ' .. dir .. '/meta.json: not a JSON object', 2) end
    local cfg = meta.model or meta.config
    if type(cfg) ~= 'table' then
        error('engine.load_model: ' .. dir .. "/meta.json has no 'model' or 'config' table with the model cfg", 2)
    end
    if type(cfg.config) == 'table' then cfg = cfg.config end
    local clean = {}
    local known = { vocab_size = 1, seq_len = 1, d_model = 1, n_layer = 1, n_head = 1, n_kv_head = 1, head_dim = 1,
        d_ff = 1, mlp = 1, rope_theta = 1, qk_norm = 1, tie_embeddings = 1, logit_softcap = 1, ternary = 1,
        quant_group = 1, subln = 1, init_std = 1, embed_std = 1, head_std = 1, norm_eps = 1, seed = 1, name = 1, arch = 1,
        embed_norm = 1, loop = 1, mhc = 1, mtp = 1 }   -- feature sub-configs (LoopLM, mHC, MTP) are part of the architecture
    for k, v in pairs(cfg) do if known[k] then clean[k] = v end end
    local model = n.models.gpt.new(clean)
    local tensors = n.load(dir .. '/model.safetensors')
    model:load_state_dict(tensors)
    model:eval()
    return model, meta
end

local function f32(t) return t:dtype() == 'f32' and t:contiguous() or t:to('f32') end

local function wide(t) return t:dtype() == 'f32' and t or t:to('f32') end

-- x (R, K) f32 contiguous -> quantized activations (shared by the matmuls of one input)
local function qa(x) return infer.quant_act(x) end

-- an mHC layer (nanochat.mhc.Layer) -> an independent copy (same coefficients, eval mode)
local function copy_mhc(layer, c)
    local l2 = require('nanochat.mhc').Layer(c, layer.own)
    l2:load_state_dict(layer:state_dict())
    l2:eval()
    return l2
end

-- a gpt Block -> its packed layer table { wq, wk, wv, wo, w1, [w3], w2, [attn_gain, mlp_gain],
-- [mhc_attn, mhc_mlp] } (c: the model cfg)
local function pack_block(b, po, c)
    local a, m = b.attn, b.mlp
    local L = {
        wq = infer.pack(a.wq.weight, po), wk = infer.pack(a.wk.weight, po), wv = infer.pack(a.wv.weight, po),
        wo = infer.pack(a.wo.weight, po), w1 = infer.pack(m.w1.weight, po), w2 = infer.pack(m.w2.weight, po),
    }
    if m.w3 then L.w3 = infer.pack(m.w3.weight, po) end
    if a.sub_norm then L.attn_gain = f32(a.sub_norm.weight):clone() end
    if m.sub_norm then L.mlp_gain = f32(m.sub_norm.weight):clone() end
    if b.mhc_attn then L.mhc_attn, L.mhc_mlp = copy_mhc(b.mhc_attn, c), copy_mhc(b.mhc_mlp, c) end
    return L
end

-- The two branches of a packed block, op by op (the prefill path and the decode reference), on
-- h (B, T, d) (the residual state or, with mHC, the pre-mixed stream): attention at positions
-- cache.pos .. (cos, sin: their RoPE rows; K/V written to cache.k[slot] / cache.v[slot]) and the
-- MLP. Each returns the branch output (B, T, d) (the residual add is the caller's).
local function attn_branch(c, L, h, cos, sin, cache, slot)
    local n = nc()
    local B, T, d = h:size(0), h:size(1), c.d_model
    local H, Hkv, hdim, eps = c.n_head, c.n_kv_head, c.head_dim, c.norm_eps
    local R, pos = B * T, cache.pos
    local a = qa(n.rmsnorm(h:contiguous():reshape { R, d }, nil, eps))
    local q = infer.matmul(a, L.wq):view { B, T, H, hdim }
    local k = infer.matmul(a, L.wk):view { B, T, Hkv, hdim }
    local v = infer.matmul(a, L.wv):view { B, T, Hkv, hdim }
    if c.qk_norm then q, k = n.rmsnorm(q, nil, eps), n.rmsnorm(k, nil, eps) end
    q, k = n.rope(q, cos, sin), n.rope(k, cos, sin)
    cache.k[slot]:narrow(1, pos, T):copy_(k)
    cache.v[slot]:narrow(1, pos, T):copy_(v)
    local att = n.attention(q, cache.k[slot]:narrow(1, 0, pos + T), cache.v[slot]:narrow(1, 0, pos + T),
        { causal = true }):reshape { R, H * hdim }
    return infer.matmul(qa(n.rmsnorm(att, L.attn_gain, eps)), L.wo):view { B, T, d }
end

local function mlp_branch(c, L, h)
    local n = nc()
    local B, T, d = h:size(0), h:size(1), c.d_model
    local eps = c.norm_eps
    local a2 = qa(n.rmsnorm(h:contiguous():reshape { B * T, d }, nil, eps))
    local u
    if L.w3 then
        u = n.silu(infer.matmul(a2, L.w1)) * infer.matmul(a2, L.w3)
    else
        u = n.relu2(infer.matmul(a2, L.w1))
    end
    return infer.matmul(qa(n.rmsnorm(u, L.mlp_gain, eps)), L.w2):view { B, T, d }
end

-- One packed block op by op: x (B, T, d) -> (B, T, d); with mHC (L.mhc_attn / L.mhc_mlp, the
-- model's nanochat.mhc layers) x is the stream state (B, T, n, d) and each residual update is the
-- layer's own forward (coefficients, pre-mix, branch, post-mix: mhc.lua's fused kernels on the CPU).
local function block_ops(c, L, x, cos, sin, cache, slot)
    if L.mhc_attn then
        x = L.mhc_attn(x, function(h) return attn_branch(c, L, h, cos, sin, cache, slot) end)
        return L.mhc_mlp(x, function(h) return mlp_branch(c, L, h) end)
    end
    x = x + attn_branch(c, L, x, cos, sin, cache, slot)
    return x + mlp_branch(c, L, x)
end

-- A packed block with gpt Block's call interface block(x, cos, sin, cache, slot) (the MTP modules'
-- blocks: mtp.lua calls them with its own one-slot caches { pos, k = {K}, v = {V} }): a chunk of
-- <= FUSED_MAX_T positions in one nc_engine_decode call (RoPE rows from the engine's own tables),
-- longer ones op by op.
local PackedBlock = {}
PackedBlock.__index = PackedBlock   -- (__call is set below, after the fused-call helpers)
M.PackedBlock = PackedBlock   -- (export.lua rebuilds the MTP modules from a GGUF file)

-- A packed BitLinear without an input norm (the MTP projection): y = Qa(x) W^T, x (..., K).
-- (snap: BitLinear's weight-snapshot argument, unused: the weights are packed once.)
local PackedLinear = {}
PackedLinear.__index = PackedLinear
PackedLinear.__call = function(self, x, snap)
    local s = x:shape()
    local y = infer.matmul(qa(x:contiguous():reshape { -1, s[#s] }), self.P)
    s[#s] = self.P.out_features
    return y:view(s)
end
M.PackedLinear = PackedLinear

-- The LoopLM exit gate (fp32 weight (1, d) + bias): looplm.ExitGate's own forward on plain tensors.
local Gate = {}
Gate.__index = Gate
Gate.__call = function(self, h) return require('nanochat.looplm').ExitGate.forward(self, h) end
M.Gate = Gate   -- (export.lua builds it from a GGUF file)

-- model (nc.models.gpt) or checkpoint dir -> Engine. opts: head_dtype ('f32' | 'f16')
function M.pack(src, opts)
    opts = opts or {}
    local n = nc()
    local model = src
    if type(src) == 'string' then model = M.load_model(src) end
    if type(model) ~= 'table' or not model.cfg or not model.h then
        error('nc.pack: expected an nc.models.gpt model or a checkpoint directory', 2)
    end
    local c = model:config()
    if not c.ternary then error('nc.pack: the model is not ternary (cfg.ternary = false); nothing to pack', 2) end
    if c.quant_group ~= 0 and c.quant_group % c.d_model ~= 0 and c.quant_group % c.d_ff ~= 0 then
        error('nc.pack: quant_group ' .. c.quant_group .. ' is not whole rows; packed rows keep one scale each', 2)
    end
    local hd = opts.head_dtype or 'f32'
    if hd ~= 'f32' and hd ~= 'f16' and hd ~= 'i8' then error("nc.pack: head_dtype must be 'f32', 'f16' or 'i8'", 2) end
    local e = setmetatable({ cfg = c, head_dtype = hd, layers = {} }, Engine)
    n.no_grad(function()
        local function keep(t)
            t = f32(t:to('cpu'))
            if hd == 'f16' then return t:to('f16') end
            return t:clone()
        end
        if hd == 'i8' then
            e.wte = f32(model.wte.weight:to('cpu')):clone()
            e.head = infer.int8(model.lm_head and model.lm_head.weight or model.wte.weight)
        else
            e.wte = keep(model.wte.weight)
            e.head = model.lm_head and keep(model.lm_head.weight) or e.wte
        end
        local po = { group_size = c.quant_group }
        for i, b in ipairs(model.h) do e.layers[i] = pack_block(b, po, c) end
        if c.loop then
            -- the fp32 exit gate (never quantized), applied with looplm's own ExitGate.forward
            e.exit_gate = setmetatable({ weight = f32(model.exit_gate.weight:to('cpu')):clone(),
                                         bias = f32(model.exit_gate.bias:to('cpu')):clone() }, Gate)
        end
        if c.mtp then
            -- MTP modules (nanochat.mtp): the projection (BitLinear 2d -> d, norm = false) and a Block each
            e.mtp = {}
            for k, mod in ipairs(model.mtp) do
                e.mtp[k] = {
                    proj = mod.proj and setmetatable({ P = infer.pack(mod.proj.weight, po) }, PackedLinear) or nil,
                    block = setmetatable({ e = e, L = pack_block(mod.block, po, c) }, PackedBlock),
                }
            end
        end
    end)
    return e
end

-- bytes read per decoded token (packed matrices + one head row set + embeddings row)
function Engine:weight_bytes()
    local b = 0
    for _, L in ipairs(self.layers) do
        for _, k in ipairs { 'wq', 'wk', 'wv', 'wo', 'w1', 'w3', 'w2' } do
            if L[k] then b = b + L[k]:nbytes() end
        end
    end
    if self.head_dtype == 'i8' then return b + self.head:nbytes() end
    local es = self.head_dtype == 'f16' and 2 or 4
    return b + self.head:numel() * es
end

-- ---- cache ------------------------------------------------------------------------------------
local Cache = {}
Cache.__index = Cache
M.Cache = Cache
function Cache:reset()
    self.pos = 0
    if self.loop_stats then require('nanochat.looplm').reset_stats(self) end
    return self
end

local ffi = require('nanochat.core').ffi
local C = require('nanochat.core').C
local check = require('nanochat.core').check

-- LoopLM's reuse fill (looplm.lua copy_slot): K/V of slot src -> slot dst for cache row b (0-based;
-- a row view: 0) at positions pos .. pos + Tn - 1, one memcpy per tensor (the K/V tensors are f32
-- contiguous (B, max_T, Hkv, hd) on the CPU, a row view's a contiguous slice of its parent's)
function Cache:copy_kv(dst, src, b, pos, Tn)
    for _, kv in ipairs { self.k, self.v } do
        local d, s = kv[dst], kv[src]
        local T, row = d:size(1), d:size(2) * d:size(3)
        local off = (b * T + pos) * row
        ffi.copy(ffi.cast('float *', C.nc_tensor_data(d._c)) + off, ffi.cast('float *', C.nc_tensor_data(s._c)) + off,
            Tn * row * 4)
    end
end
local WNAMES = { 'wq', 'wk', 'wv', 'wo', 'w1', 'w3', 'w2' }

-- the nc_engine_layer array for nc_engine_decode: seg = list of { layer index, KV slot } (weights
-- of e.layers[index], this cache's K/V of that slot)
-- one nc_engine_layer entry: the packed layer L's weights and the K/V tensors kc, vc
local function fill_layer(s, L, kc, vc)
    for j, nm in ipairs(WNAMES) do
        local P = L[nm]
        if P then s.w[j - 1], s.s[j - 1] = P.codes._c, P.scale._c end
    end
    if L.attn_gain then s.attn_gain = L.attn_gain._c end
    if L.mlp_gain then s.mlp_gain = L.mlp_gain._c end
    if L.mhc_attn then   -- the mHC layers' coefficients (nc_engine_cfg mhc_n > 0 reads them)
        for j, ml in ipairs { L.mhc_attn, L.mhc_mlp } do
            s.mhc_bias[j - 1] = ml.bias._c
            if ml.dynamic then s.mhc_phi[j - 1], s.mhc_alpha[j - 1] = ml.phi._c, ml.alpha._c end
            if ml.kind == 'lite' then s.mhc_perms[j - 1] = ml.perms._c end
        end
    end
    s.kc, s.vc = kc._c, vc._c
end

local function decode_layers(e, cache, seg)
    local arr = ffi.new('nc_engine_layer[?]', math.max(#seg, 1))
    for i, bs in ipairs(seg) do fill_layer(arr[i - 1], e.layers[bs[1]], cache.k[bs[2]], cache.v[bs[2]]) end
    return arr
end

-- the segment of a plain (non-loop) model: every layer, slot = layer
local function all_layers(e)
    local seg = e._all_seg
    if not seg then
        seg = { key = 'all' }
        for i = 1, #e.layers do seg[i] = { i, i } end
        e._all_seg = seg
    end
    return seg
end

-- new_cache(B, max_T[, opts]): K/V per layer (LoopLM: per (loop, block) slot, nanochat.looplm's
-- layout, and opts.exit_q = the q-exit threshold of this cache, default cfg.loop.exit_q)
function Engine:new_cache(B, max_T, opts)
    local n, c = nc(), self.cfg
    max_T = max_T or c.seq_len
    local cache = setmetatable({ B = B, max_T = max_T, pos = 0, k = {}, v = {}, seg_c = {} }, Cache)
    local slots = #self.layers
    if c.loop then
        local LM = require 'nanochat.looplm'
        slots = LM.n_slots(c.loop)
        LM.init_cache(cache, c.loop, opts)
    end
    for i = 1, slots do
        cache.k[i] = n.zeros({ B, max_T, c.n_kv_head, c.head_dim })
        cache.v[i] = n.zeros({ B, max_T, c.n_kv_head, c.head_dim })
    end
    cache.cos, cache.sin = n.rope_tables(math.max(max_T, c.seq_len), c.head_dim, { base = c.rope_theta })
    if not c.loop then
        cache.layers_c = decode_layers(self, cache, all_layers(self))   -- raw pointers: the cache keeps the tensors alive
        cache.seg_c.all = cache.layers_c
    end
    return cache
end

-- the parallel split of the fused decode (nc_engine_cfg split / o_full / barrier; every choice
-- gives bit-identical results): engine.split = 'heads' | 'rows' (default: heads when the thread
-- count divides n_kv_head), engine.o_full = true (every thread computes the whole o-projection:
-- one sync fewer per layer), engine.barrier = 'omp' (omp barrier instead of the spin barrier)
local SPLITS = { heads = 2, rows = 1 }
local function set_par(e, s)
    local sp = e.split
    if sp ~= nil and not SPLITS[sp] then
        error("engine: split must be 'heads' or 'rows' (or nil), got " .. tostring(sp), 3)
    end
    local b = e.barrier
    if b ~= nil and b ~= 'omp' and b ~= 'spin' then
        error("engine: barrier must be 'spin' or 'omp' (or nil), got " .. tostring(b), 3)
    end
    s.split, s.o_full, s.barrier = sp and SPLITS[sp] or 0, e.o_full and 2 or 0, b == 'omp' and 1 or 0
end

-- the nc_engine_cfg of this engine (with_mhc: the trunk's blocks of an mHC model, x = n streams;
-- the MTP modules' blocks are plain)
local function decode_cfg(c, with_mhc)
    local s = ffi.new('nc_engine_cfg')
    s.d, s.n_head, s.n_kv_head, s.head_dim, s.d_ff = c.d_model, c.n_head, c.n_kv_head, c.head_dim, c.d_ff
    s.qk_norm = c.qk_norm and 1 or 0
    s.swiglu = c.mlp == 'swiglu' and 1 or 0
    s.eps = c.norm_eps
    if with_mhc and c.mhc then s.mhc_n, s.mhc_iters = c.mhc.n, c.mhc.iters end
    return s
end

-- ---- the model hooks (the interface of nc.models.gpt that looplm.lua and mtp.lua call) ----------
-- _embed(idx) -> x (B, T, d); _trunk(x, cos, sin, cache); _final(x) -> h; _logits(h) -> (B, T, V);
-- run_blocks(x, cos, sin, cache, seg) runs a segment of blocks; head_weight() / embedding_weight()
-- the f32 matrices (MTP drafting).
function Engine:_embed(idx)
    local n = nc()
    local c = self.cfg
    local x = n.embedding(idx, wide(self.wte))
    if c.embed_norm ~= false then x = n.rmsnorm(x, nil, c.norm_eps) end
    if c.mhc then x = require('nanochat.mhc').expand(x, c.mhc.n) end   -- (B, T, n, d) streams
    return x
end

-- Blocks seg = { {layer, slot}, ... } on x (B, T, d) (mHC: the (B, T, n, d) stream state) at
-- positions cache.pos ... Decode and short chunks (T <= M.FUSED_MAX_T, e.g. an MTP verify of 1 + D
-- tokens; an engine cache, engine.fused ~= false): the whole segment in ONE C call
-- (nc_engine_decode with n_pos = T: one OpenMP region, on a copy of x; mHC mixing included);
-- longer prefills op by op (threaded GEMMs; mHC: nanochat.mhc's own layer forward).
-- nl layers of arr (nc_engine_layer) on x (B, T, d) at positions pos .. pos + T - 1 in one C call
-- (mhc: x is the (B, T, n, d) stream state of an mHC trunk)
local function fused_call(e, arr, nl, x, pos, cos_t, sin_t, mhc)
    local c = e.cfg
    local B, T = x:size(0), x:size(1)
    local cf
    if mhc then
        e._cfg_m = e._cfg_m or decode_cfg(c, true)
        cf = e._cfg_m
    else
        e._cfg_c = e._cfg_c or decode_cfg(c)
        cf = e._cfg_c
    end
    cf.n_pos = T
    set_par(e, cf)
    local shape = x:shape()
    local y = x:reshape { B * T, -1 }:clone()
    check(C.nc_engine_decode(y._c, arr, nl, cf, pos, cos_t._c, sin_t._c), 'engine decode')
    return y:view(shape)
end

function Engine:run_blocks(x, cos, sin, cache, seg)
    local c = self.cfg
    if x:size(1) <= M.FUSED_MAX_T and self.fused ~= false and getmetatable(cache) == Cache then
        local arr = cache.seg_c[seg.key]
        if not arr then
            arr = decode_layers(self, cache, seg)
            cache.seg_c[seg.key] = arr
        end
        return fused_call(self, arr, #seg, x, cache.pos, cache.cos, cache.sin, c.mhc ~= nil)
    end
    for _, bs in ipairs(seg) do x = block_ops(c, self.layers[bs[1]], x, cos, sin, cache, bs[2]) end
    return x
end

PackedBlock.__call = function(self, x, cos, sin, cache, slot)
    local e, L = self.e, self.L
    local c = e.cfg
    local T = x:size(1)
    if not e._rope_cos then e._rope_cos, e._rope_sin = nc().rope_tables(c.seq_len, c.head_dim, { base = c.rope_theta }) end
    if T <= M.FUSED_MAX_T and e.fused ~= false and x:dim() == 3 and cache.pos + T <= e._rope_cos:size(0) then
        local arr = ffi.new('nc_engine_layer[1]')   -- (the cache tensors stay referenced by the caller's cache)
        fill_layer(arr[0], L, cache.k[slot], cache.v[slot])
        return fused_call(e, arr, 1, x, cache.pos, e._rope_cos, e._rope_sin)
    end
    return block_ops(c, L, x, cos, sin, cache, slot)
end

function Engine:_trunk(x, cos, sin, cache)
    if self.cfg.loop then return require('nanochat.looplm').trunk(self, x, cos, sin, cache) end
    return self:run_blocks(x, cos, sin, cache, all_layers(self))
end

function Engine:_final(x)
    if self.cfg.mhc then x = require('nanochat.mhc').reduce(x) end   -- mean of the n streams
    return nc().rmsnorm(x, nil, self.cfg.norm_eps)
end

-- LoopLM: the exit-gate logits of x's rows (B, 1, d) (mHC: (B, 1, n, d)) as a Lua list, ONE C call
-- (nc_engine_exit_gate: _final + the gate per row, row-wise exact; looplm.gate_z calls it in decode)
function Engine:exit_logits(x)
    local c, g = self.cfg, self.exit_gate
    local B = x:size(0) * x:size(1)
    local z = nc().empty { B }
    check(C.nc_engine_exit_gate(z._c, x:contiguous():reshape({ B, -1 })._c, g.weight._c, g.bias._c,
        c.mhc and c.mhc.n or 1, c.norm_eps), 'engine exit gate')
    return z:tolist()
end

-- h (..., d) normed -> logits (..., V): the head (f32 / f16 widened / int8 with int8 activations) + softcap
function Engine:_logits(h)
    local n, c = nc(), self.cfg
    local s = h:shape()
    local h2 = h:contiguous():reshape { -1, c.d_model }
    local lg
    if self.head_dtype == 'i8' then
        lg = infer.matmul(qa(h2), self.head)
    elseif self.head_dtype == 'f32' and h2:size(0) <= 8 then
        -- decode / short chunks: a bandwidth-bound GEMV on the engine's threads (sgemm at M = 1 is not)
        lg = n.empty { h2:size(0), c.vocab_size }
        check(C.nc_engine_head_f32(lg._c, h2._c, self.head._c), 'engine head')
    else
        lg = n.linear(h2, wide(self.head))
    end
    local cap = c.logit_softcap
    if cap then lg = n.tanh(lg * (1 / cap)) * cap end
    s[#s] = c.vocab_size
    return lg:view(s)
end

function Engine:embedding_weight() return wide(self.wte) end
function Engine:head_weight()
    if self.head_dtype == 'i8' then
        self._head_f32 = self._head_f32 or self.head:dequantize()
        return self._head_f32
    end
    return wide(self.head)
end

-- idx (B, T) at positions cache.pos .. -> logits (B, T, V); advances cache.pos.
-- LoopLM: looplm.forward_cached itself (prefill: every loop; decode: q-exit early stop per token,
-- the reuse fill, statistics in cache.loop_stats) over these hooks.
-- engine:set_threads(t): nil = the global thread count (nc.set_num_threads), a number = that many
-- threads for this engine's calls, 'auto' = decode steps (T = 1, and decode_rows) pick 1 .. the
-- global count at the time of the call by measured time per step (nanochat.adapt_threads: under
-- load, 2-thread decode can be slower than 1 thread); prefill uses the maximum. Outputs do not
-- depend on the count. engine.adapt is the controller (tostring shows its state).
function Engine:set_threads(t)
    if t == nil then
        self.threads, self.adapt = nil, nil
    elseif t == 'auto' then
        self.threads, self.adapt = 'auto', require('nanochat.adapt_threads').new(nc().get_num_threads())
    elseif type(t) == 'number' and t >= 1 and t == math.floor(t) then
        self.threads, self.adapt = t, nil
    else
        error("engine:set_threads: expected nil, a thread count >= 1 or 'auto', got " .. tostring(t), 2)
    end
    return self
end

-- fn() on this engine's thread count (see set_threads); decode: 0 (not a decode step) or the number
-- of tokens the step decodes, for the 'auto' controller's time per token
local function on_threads(e, decode, fn)
    local t = e.threads
    if not t then return fn() end
    local n = nc()
    local before = n.get_num_threads()
    local ad = t == 'auto' and e.adapt or nil
    local k = ad and (decode > 0 and ad:pick() or ad.max) or t
    n.set_num_threads(k)
    local t0 = ad and decode > 0 and C.nc_monotonic_time()
    local ok, r = pcall(fn)
    if t0 and ok then ad:record(k, (C.nc_monotonic_time() - t0) / decode) end
    n.set_num_threads(before)
    if not ok then error(r, 0) end
    return r
end

function Engine:forward_cached(idx, cache)
    if self.threads then
        local decode = idx:size(1) == 1 and idx:size(0) or 0
        return on_threads(self, decode, function() return self:_forward_cached(idx, cache) end)
    end
    return self:_forward_cached(idx, cache)
end

function Engine:_forward_cached(idx, cache)
    local n, c = nc(), self.cfg
    if getmetatable(cache) ~= Cache then error('engine: forward_cached: expected a cache from engine:new_cache', 2) end
    local B, T = idx:size(0), idx:size(1)
    if B ~= cache.B then error(string.format('engine: forward_cached: idx has B = %d, the cache %d', B, cache.B), 2) end
    if cache.pos + T > cache.max_T then
        error(string.format('engine: forward_cached: cache full (%d + %d positions > max_T %d)', cache.pos, T,
            cache.max_T), 2)
    end
    local cos, sin = cache.cos:narrow(0, cache.pos, T), cache.sin:narrow(0, cache.pos, T)
    local logits = n.no_grad(function()
        if c.loop then return require('nanochat.looplm').forward_cached(self, idx, cache, cos, sin) end
        return self:_logits(self:_final(self:_trunk(self:_embed(idx), cos, sin, cache)))
    end)
    cache.pos = cache.pos + T
    return logits
end

-- full-sequence logits (B, T, V) (a fresh cache; LoopLM: q = 1, the full-depth model)
function Engine:forward(idx)
    return self:forward_cached(idx, self:new_cache(idx:size(0), math.max(idx:size(1), 1), { exit_q = 1 }))
end

-- nc.generate over the engine (same options and sampling rules)
function Engine:generate(prompt, opts) return nc().generate(self, prompt, opts) end

-- ---- continuous batching (nanochat.batch) --------------------------------------------------------
-- Engine:cache_row(cache, r[, opts]): a B = 1 cache over row r (0-based) of `cache` (dim 0 of each
-- contiguous K/V tensor: a contiguous view, same storage), at position 0, with the parent's RoPE
-- tables; LoopLM: its own exit_q (opts.exit_q) and statistics. forward_cached on it prefills /
-- decodes that one sequence with the ordinary paths.
function Engine:cache_row(cache, r, opts)
    if getmetatable(cache) ~= Cache then error('engine: cache_row: expected a cache from engine:new_cache', 2) end
    if type(r) ~= 'number' or r ~= math.floor(r) or r < 0 or r >= cache.B then
        error(string.format('engine: cache_row: row %s is not in 0..%d', tostring(r), cache.B - 1), 2)
    end
    local c = self.cfg
    local v = setmetatable({ B = 1, max_T = cache.max_T, pos = 0, k = {}, v = {}, seg_c = {}, cos = cache.cos,
                             sin = cache.sin, parent = cache, row = r }, Cache)
    for i = 1, #cache.k do v.k[i], v.v[i] = cache.k[i]:narrow(0, r, 1), cache.v[i]:narrow(0, r, 1) end
    if c.loop then
        require('nanochat.looplm').init_cache(v, c.loop, opts)
    else
        v.layers_c = decode_layers(self, v, all_layers(self))
        v.seg_c.all = v.layers_c
    end
    return v
end

-- true when decode_rows can run: the fused path (engine.fused ~= false). Plain GPT, MTP (their
-- trunk is plain), LoopLM (each sequence runs loops until its own q-exit: the loop segments run on
-- the rows still active) and mHC models (the stream mixing runs inside nc_engine_decode) qualify
function Engine:batchable()
    return self.fused ~= false
end

-- Engine:run_rows(x, cache, seg, rows, positions) -> x': the blocks of segment seg ({ {layer, KV
-- slot}, ... }) on x (m, 1, d) — m sequences, sequence k at position positions[k] in row rows[k]
-- of every K/V slot of `cache` (an engine cache, not a row view) — in ONE nc_engine_decode call
-- (cfg seq_pos / seq_slot). Row-wise exact: each row gets the bits it gets decoded alone.
function Engine:run_rows(x, cache, seg, rows, positions)
    if #seg == 0 then return x end
    local m = #rows
    local arr = cache.seg_c[seg.key]
    if not arr then
        arr = decode_layers(self, cache, seg)
        cache.seg_c[seg.key] = arr
    end
    local shape = x:shape()
    local y = x:reshape { m, -1 }:clone()
    local pos_c, row_c = ffi.new('int64_t[?]', m, positions), ffi.new('int32_t[?]', m, rows)
    local cfg_c = decode_cfg(self.cfg, true)
    cfg_c.n_pos, cfg_c.seq_pos, cfg_c.seq_slot = 1, pos_c, row_c
    set_par(self, cfg_c)
    cache._rows_c = { pos_c, row_c, cfg_c }   -- cfg_c holds raw pointers: keep the arrays alive past the call
    check(C.nc_engine_decode(y._c, arr, #seg, cfg_c, 0, cache.cos._c, cache.sin._c), 'engine decode_rows')
    return y:view(shape)
end

-- Engine:decode_rows(ids, cache, rows, positions[, seqs]) -> logits (nb, V): one token per
-- sequence, nb sequences that may each be at its own position and in its own row of `cache` (an
-- engine cache of B >= nb rows), in ONE nc_engine_decode call per segment (cfg seq_pos /
-- seq_slot; plain / MTP models: one call for all layers). ids, rows (0-based cache rows, distinct)
-- and positions (0-based: where each id goes) are Lua arrays of nb numbers. LoopLM: each sequence
-- runs loops until its own q-exit (looplm.decode_rows: the loop segments run on the sequences
-- still active, the coda on those exiting, then each gets the reuse fill of its exit loop);
-- seqs[i] (optional: a cache_row view, or any table) gives sequence i's exit_q and receives its
-- loop_stats (default: the cache's). Each row's logits are bit-identical to decoding that sequence
-- alone (B = 1) at that position: the kernel and the exit gate (one nc_engine_exit_gate call) are
-- row-wise exact, and the f32 / int8 heads run on chunks of <= 8 rows, the path a single sequence
-- takes (f16 head: one sgemm, equal up to float rounding). Does not move cache.pos.
function Engine:decode_rows(ids, cache, rows, positions, seqs)
    local n, c = nc(), self.cfg
    if not self:batchable() then
        error('engine: decode_rows: needs the fused path (engine.fused = false: use forward_cached on a cache_row)', 2)
    end
    if getmetatable(cache) ~= Cache or cache.parent then
        error('engine: decode_rows: expected a cache from engine:new_cache', 2)
    end
    local nb = #ids
    if #rows ~= nb or #positions ~= nb then
        error(string.format('engine: decode_rows: %d ids, %d rows, %d positions (must be equal)', nb, #rows, #positions), 2)
    end
    if nb == 0 then error('engine: decode_rows: no sequences', 2) end
    if nb > cache.B then error(string.format('engine: decode_rows: %d sequences, the cache has %d rows', nb, cache.B), 2) end
    if seqs ~= nil and type(seqs) ~= 'table' then error('engine: decode_rows: seqs must be a table of per-sequence tables', 2) end
    local seen = {}
    for i = 1, nb do
        local id, r, p = ids[i], rows[i], positions[i]
        if type(id) ~= 'number' or id ~= math.floor(id) or id < 0 or id >= c.vocab_size then
            error(string.format('engine: decode_rows: sequence %d: token id %s is not in 0..%d', i, tostring(id),
                c.vocab_size - 1), 2)
        end
        if type(r) ~= 'number' or r ~= math.floor(r) or r < 0 or r >= cache.B then
            error(string.format('engine: decode_rows: sequence %d: cache row %s is not in 0..%d', i, tostring(r),
                cache.B - 1), 2)
        end
        if seen[r] then error(string.format('engine: decode_rows: sequences %d and %d share cache row %d', seen[r], i, r), 2) end
        seen[r] = i
        if type(p) ~= 'number' or p ~= math.floor(p) or p < 0 or p >= cache.max_T then
            error(string.format('engine: decode_rows: sequence %d: position %s is outside the cache (max_T %d)', i,
                tostring(p), cache.max_T), 2)
        end
        if c.loop and seqs and seqs[i] ~= nil then
            local s = seqs[i]
            local q = type(s) == 'table' and s.exit_q
            if type(q) ~= 'number' or q < 0 or q > 1 or type(s.loop_stats) ~= 'table' then
                error(string.format('engine: decode_rows: seqs[%d] needs exit_q in [0, 1] and loop_stats (a cache_row view)', i), 2)
            end
        end
    end
    return on_threads(self, nb, function() return n.no_grad(function()
        local x = self:_embed(n.tensor({ ids }, { dtype = 'i64' }):view { nb, 1 })   -- (nb, 1, d)
        if c.loop then return (require('nanochat.looplm').decode_rows(self, x, cache, rows, positions, seqs)) end
        local h = self:_final(self:run_rows(x, cache, all_layers(self), rows, positions)):view { nb, c.d_model }
        if nb <= 8 then return self:_logits(h) end
        local out = n.empty { nb, c.vocab_size }
        for r0 = 0, nb - 1, 8 do
            local m = math.min(8, nb - r0)
            out:narrow(0, r0, m):copy_(self:_logits(h:narrow(0, r0, m)))
        end
        return out
    end) end)
end

-- engine:batch{ slots = 4, max_T = cfg.seq_len } -> a continuous-batching decoder (nanochat.batch)
function Engine:batch(opts) return require('nanochat.batch').new(self, opts) end

function Engine:__tostring()
    local c = self.cfg
    return string.format('nc.Engine(V=%d, d=%d, L=%d, %s head, %.1f MB weights)', c.vocab_size, c.d_model, c.n_layer,
        self.head_dtype, self:weight_bytes() / 1e6)
end

-- ---- user-facing helpers (nanochat generate / chat) -------------------------------------------
-- The tokenizer of a checkpoint: opts.tokenizer (an object), opts.tok (a path), for a GGUF file the
-- vocabulary embedded in it (export.tokenizer_from_gguf), else the first of
-- tokenizer.tok / tokenizer.bin in the checkpoint dir (the GGUF file's dir), its parent or its
-- grandparent (recipes save RUN/tokenizer.tok next to RUN/ckpt/step_NNNNNN).
function M.tokenizer_for(ckpt, opts)
    opts = opts or {}
    if type(opts.tokenizer) == 'table' then return opts.tokenizer end
    if not opts.tok and ckpt:match('%.gguf$') then
        -- the vocabulary embedded by nanochat export (tokenizer.ggml.*), when there is one
        local ok, tok = pcall(function() return require('nanochat.export').tokenizer_from_gguf(nc().gguf.read(ckpt)) end)
        if ok and tok then return tok end
    end
    local dir = ckpt:match('%.gguf$') and (ckpt:match('^(.*)/[^/]*$') or '.') or ckpt:gsub('/+$', '')
    local tried = {}
    local candidates = {}
    if opts.tok then candidates[1] = opts.tok else
        local d = dir
        for _ = 1, 3 do
            candidates[#candidates + 1] = d .. '/tokenizer.tok'
            candidates[#candidates + 1] = d .. '/tokenizer.bin'
            d = d:match('^(.*)/[^/]*$') or '.'
        end
    end
    for _, path in ipairs(candidates) do
        local f = io.open(path, 'rb')
        if f then f:close(); return nc().tokenizer.load(path) end
        tried[#tried + 1] = path
    end
    error('nanochat: no tokenizer found (tried ' .. table.concat(tried, ', ') .. '); give tok=FILE', 2)
end

-- a checkpoint dir or a GGUF file of ours (export.lua, arch 'nanochat' or 'bitnet') -> Engine
function M.open(path, opts)
    if type(path) == 'string' and path:match('%.gguf$') then return (require('nanochat.export').load(path)) end
    return M.pack(path, opts)
end

-- threads=N | auto from command-line key=values onto the engine (engine:set_threads); absent: unchanged
function M.apply_threads(engine, kv)
    local t = kv.threads
    if t == nil then return engine end
    if t ~= 'auto' then
        t = tonumber(t)
        if not t or t < 1 or t ~= math.floor(t) then
            error("nanochat: threads must be a count >= 1 or 'auto', got " .. tostring(kv.threads), 0)
        end
        nc().set_num_threads(t)   -- the maximum for everything else too (prefill, sampling)
    end
    return engine:set_threads(t)
end

-- sampling options from command-line key=values (strings or numbers); exit_q: a LoopLM model's
-- q-exit threshold for this generation (default: the checkpoint's cfg.loop.exit_q)
function M.sample_opts(kv)
    local o = {}
    for _, k in ipairs { 'temperature', 'top_k', 'top_p', 'min_p', 'repetition_penalty', 'seed', 'exit_q' } do
        if kv[k] ~= nil then
            local v = tonumber(kv[k])
            if not v then error('nanochat: ' .. k .. ' must be a number, got ' .. tostring(kv[k]), 0) end
            o[k] = v
        end
    end
    return o
end

-- Stream a generation to write(text) through the tokenizer's incremental decoder; returns the
-- list of ids. opts: nc.generate's (prompt ids or messages + tokenizer).
function M.stream(engine, tok, prompt, opts, write)
    local dec = tok:decoder()
    local ids = {}
    for id in engine:generate(prompt, opts) do
        ids[#ids + 1] = id
        local s = dec:push(id)
        if s and s ~= '' then write(s) end
    end
    local rest = dec:flush()
    if rest and rest ~= '' then write(rest) end
    return ids
end

return M
