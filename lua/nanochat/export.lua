-- lua/nanochat/export.lua — GGUF export of a ternary GPT (`nc.export`) and loading a GGUF back
-- into the packed engine.
--
-- Promise: `export.gguf(model_or_ckpt_dir_or_engine, path, opts)` writes one GGUF file and returns
-- (bytes, info) with info = { arch = 'bitnet' | 'nanochat', cfg = the model cfg, why = { llama = {...}, bitnet = {...} },
-- warnings = {...}, loop = 'unroll' | 'keep' | nil, unroll = { layers, unique, src,
-- repeated_bytes, looped_bytes } (unrolled files) }. opts: type = 'tq2_0' | 'tq1_0' (ternary block
-- type), tokenizer = an nc.tokenizer (embedded as tokenizer.ggml.*), arch = force 'nanochat' (or
-- 'bitnet', an error naming the reasons when the model does not fit it), loop = 'unroll' | 'keep'
-- (a LoopLM; default: unroll exactly when that makes it bitnet, see M.unroll / arch_for).
--
-- LoopLM: unrolled, the blocks in the full-depth model's order (prelude, shared x T, coda) are
-- plain layers (shared weights written once per layer: the size cost is reported), no exit gate;
-- looped ('nanochat' only), nanochat.loop.* keys + the fp32 exit_gate.weight / .bias tensors.
-- mHC ('nanochat' only): nanochat.mhc.* keys (n, kind, iters, dynamic, alpha_init) and per block
-- the two sublayers' coefficient parameters in f32: blk.N.mhc_attn.{bias, phi, alpha} and
-- blk.N.mhc_mlp.* (phi / alpha only when dynamic); the reader rebuilds nanochat.mhc.Layer objects
-- (the permutation matrices of mHC-lite are a function of n, not stored).
-- MTP ('nanochat' only): nanochat.mtp.* keys (depth, kind, lambda, per_depth_backward) and per
-- module k the ternary projection mtp.<k-1>.proj.{weight, scale} (sequential modules) and its
-- block as mtp.<k-1>.attn_q.weight ... (named like blk.N.*; one residual stream, no mHC).
-- A file we wrote reloads to an Engine whose packed weights, gains, gate and mHC parameters are
-- those of nc.pack(source) bit for bit, so its logits are identical (spec/models/export_e3_spec.lua).
--
-- The architecture is chosen by ONE function, `export.arch_for(cfg)` (features that llama.cpp
-- cannot express add their reason in `export.why_not(cfg)`); each arch has one writer in
-- `M.WRITERS` and one reader in `M.READERS`.
--
--  - 'bitnet' (llama.cpp's LLM_ARCH_BITNET, src/models/bitnet.cpp; llama.cpp loads and runs it):
--    chosen when the model is exactly expressible: SwiGLU MLP, tied embeddings, no embedding norm
--    (cfg.embed_norm = false), n_head * head_dim == d_model, per-tensor gamma (quant_group 0), no
--    qk_norm / softcap / mHC / MTP, a LoopLM only unrolled. Our parameter-free pre-norms are written as all-ones
--    attn_norm / ffn_norm / output_norm gains; the norm in front of wo / w2 (parameter-free, or
--    SubLN) is bitnet's attn_sub_norm / ffn_sub_norm (ones when the model has no SubLN). Ternary
--    matrices are written as raw {-1, 0, 1} (TQ2_0 / TQ1_0 blocks with d = 1 when in_features is a
--    multiple of 256, else F16 values, which are exact) plus the F32 `<proj>.scale` {1} = the
--    training gamma exactly. RoPE: bitnet uses NEOX (half-split pairs, as we do) but rotates by
--    +angle while our kernel (nanochat's convention) rotates by -angle; negating the second half of
--    every head's rows of Wq and Wk maps one onto the other (q.k is unchanged, since both q and k
--    get their second half negated), so those rows are written negated (and negated back on load).
--  - 'nanochat' (our own arch key): every other model, with the full cfg as nanochat.* keys,
--    ternary tensors (I8 when in_features % 256 ~= 0) plus per-row F32 scales; only our engine
--    loads it.
--  - 'llama' is never chosen: llama.cpp's llama graph has no norm between attention and wo (nor
--    between the FFN activation and w2), while every config of ours normalizes the input of wo and
--    w2 (BitLinear norm = true, or SubLN). README "GGUF export" has the table.
--
-- Tokenizer (opts.tokenizer): tokenizer.ggml.model = 'gpt2', pre = 'llama-bpe' when the split
-- pattern is our default (GPT-4 cl100k, which llama.cpp's llama-bpe pre-tokenizer implements),
-- tokens in GPT-2 byte-to-unicode text (specials raw), token_type (1 normal, 3 control, 5 unused
-- padding up to the model's vocab), merges "A B" extended so that llama.cpp's pair-rank BPE merges
-- exactly what tiktoken-style rank-of-concatenation BPE merges: for every token (in id order) the
-- training pair first, then every other split of its bytes into two tokens. Without a tokenizer the
-- file says tokenizer.ggml.model = 'no_vocab' (llama.cpp then loads it with dummy tokens).
--
-- `export.load(path)` reads a 'nanochat' (plain, looped, mHC, MTP) or 'bitnet' file (gguf.read checks structure; a missing
-- key/tensor or wrong shape is a clear error) and returns an Engine (logits identical to nc.pack
-- of the source model for files we wrote), and the gguf File.
local infer = require 'nanochat.infer'

local function nc() return require 'nanochat' end

local M = {}

local CFG_KEYS = { 'vocab_size', 'seq_len', 'd_model', 'n_layer', 'n_head', 'n_kv_head', 'head_dim', 'd_ff', 'mlp',
    'rope_theta', 'qk_norm', 'tie_embeddings', 'logit_softcap', 'quant_group', 'subln', 'norm_eps', 'embed_norm' }
local FLOAT_KEYS = { rope_theta = true, logit_softcap = true, norm_eps = true }

-- ---- which arch ------------------------------------------------------------------------------
-- LoopLM export modes (opts.loop): 'unroll' writes the blocks in execution order (prelude, shared
-- x T, coda) as consecutive plain layers, without the exit gates (the full-depth, q = 1 model);
-- 'keep' writes the unique blocks once plus cfg.loop and the exit gate (our 'nanochat' arch only).
-- nil (auto): unroll when that makes the model llama.cpp-expressible (see arch_for), else keep.
M.LOOP_MODES = { unroll = true, keep = true }

local function check_loop_mode(mode, lvl)
    if mode ~= nil and not M.LOOP_MODES[mode] then
        error("export: loop must be 'unroll' or 'keep', got " .. tostring(mode), lvl + 1)
    end
end

-- cfg[, opts] -> { llama = {reasons}, bitnet = {reasons} }: why each llama.cpp arch cannot express
-- it (an empty list: it can). opts.loop as in M.gguf: a LoopLM is no obstacle when it is unrolled
-- (opts.loop = 'unroll', or auto and the checkpoint does not exit early: cfg.loop.exit_q = 1).
function M.why_not(cfg, opts)
    local c = cfg
    local mode = opts and opts.loop
    check_loop_mode(mode, 2)
    local common = {}
    local function add(list, s) list[#list + 1] = s end
    if c.qk_norm then add(common, 'qk_norm (no per-head q/k norm in llama/bitnet)') end
    if c.logit_softcap then add(common, 'logit_softcap (no logit soft-capping in llama/bitnet)') end
    if c.loop then
        local q = c.loop.exit_q or 1
        if mode == 'keep' then
            add(common, 'LoopLM kept looped (loop=keep; llama.cpp has no weight-shared layer loop nor exit gate)')
        elseif mode == nil and q < 1 then
            add(common, string.format('LoopLM early exit (cfg.loop.exit_q = %g < 1; llama.cpp runs every layer for ' ..
                'every token: loop=unroll writes the full-depth model without the exit gates)', q))
        end
    end
    if c.mhc then add(common, 'mHC residual streams (cfg.mhc; written under the nanochat arch)') end
    if c.mtp then add(common, 'MTP modules (cfg.mtp; written under the nanochat arch)') end
    if c.embed_norm ~= false then add(common, 'embedding norm (cfg.embed_norm; llama.cpp adds the raw embedding to the residual)') end
    if c.quant_group and c.quant_group ~= 0 then
        add(common, 'quant_group ' .. c.quant_group .. ' (bitnet .scale is one value per tensor)')
    end
    local llama, bitnet = {}, {}
    for _, s in ipairs(common) do add(llama, s); add(bitnet, s) end
    add(llama, 'the norm in front of wo / w2 (BitLinear input norm or SubLN; the llama graph has none)')
    if c.mlp ~= 'swiglu' then
        add(llama, 'mlp ' .. tostring(c.mlp) .. ' (llama FFN is SiLU-gated)')
        add(bitnet, 'mlp ' .. tostring(c.mlp) .. ' (bitnet FFN is SiLU-gated in llama.cpp)')
    end
    if not c.tie_embeddings then add(bitnet, 'untied LM head (bitnet always uses token_embd as the head)') end
    if c.n_head * c.head_dim ~= c.d_model then
        add(bitnet, string.format('n_head * head_dim = %d ~= d_model %d (bitnet wq/wo are d_model x d_model)',
            c.n_head * c.head_dim, c.d_model))
    end
    return { llama = llama, bitnet = bitnet }
end

-- cfg[, opts] -> arch, why, loop_mode: 'bitnet' when llama.cpp can load and run it exactly (a
-- LoopLM unrolled), else 'nanochat'; loop_mode 'unroll' | 'keep' for a LoopLM (nil otherwise):
-- opts.loop, or by default 'unroll' exactly when the arch is bitnet.
function M.arch_for(cfg, opts)
    local why = M.why_not(cfg, opts)
    local arch = #why.bitnet == 0 and 'bitnet' or 'nanochat'
    local mode
    if cfg.loop then mode = (opts and opts.loop) or (arch == 'bitnet' and 'unroll' or 'keep') end
    return arch, why, mode
end

-- A LoopLM Engine -> a plain Engine (cfg.loop removed, n_layer = prelude + shared * T + coda)
-- whose layers are the blocks in the order the full-depth model (q = 1) applies them: prelude,
-- the shared stack T times, the coda once. The shared blocks' packed weights are the same tables
-- (no copy in memory; a writer writes them once per layer). Returns the engine and src, the list
-- of unique block indices (1-based) of each unrolled layer.
function M.unroll(e)
    local c = e.cfg
    local lc = c.loop
    if not lc then error('export.unroll: not a LoopLM engine (cfg.loop is nil)', 2) end
    local LM = require 'nanochat.looplm'
    local segs = { LM.segment(lc, 'prelude') }
    for t = 1, lc.T do segs[#segs + 1] = LM.segment(lc, 'shared', t) end
    segs[#segs + 1] = LM.segment(lc, 'coda', lc.T)
    local layers, src = {}, {}
    for _, seg in ipairs(segs) do
        for _, bs in ipairs(seg) do layers[#layers + 1] = e.layers[bs[1]]; src[#src + 1] = bs[1] end
    end
    local u = {}
    for k, v in pairs(c) do u[k] = v end
    u.loop, u.n_layer = nil, #layers
    local ue = setmetatable({ cfg = u, head_dtype = e.head_dtype, wte = e.wte, head = e.head, layers = layers,
        fused = e.fused, mtp = e.mtp }, getmetatable(e))
    return ue, src
end

-- ---- tokenizer -------------------------------------------------------------------------------
-- GPT-2 bytes_to_unicode: byte -> UTF-8 text of its code point
local BYTE_TEXT
local function utf8_char(cp)
    if cp < 0x80 then return string.char(cp) end
    if cp < 0x800 then return string.char(0xC0 + math.floor(cp / 64), 0x80 + cp % 64) end
    return string.char(0xE0 + math.floor(cp / 4096), 0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64)
end
local function byte_text()
    if BYTE_TEXT then return BYTE_TEXT end
    local printable = {}
    for b = 33, 126 do printable[b] = true end
    for b = 161, 172 do printable[b] = true end
    for b = 174, 255 do printable[b] = true end
    BYTE_TEXT = {}
    local n = 0
    for b = 0, 255 do
        if printable[b] then BYTE_TEXT[b] = utf8_char(b)
        else BYTE_TEXT[b] = utf8_char(256 + n); n = n + 1 end
    end
    return BYTE_TEXT
end
-- raw bytes -> GPT-2 byte-level token text
function M.byte_encode(s)
    local bt = byte_text()
    local out = {}
    for i = 1, #s do out[i] = bt[s:byte(i)] end
    return table.concat(out)
end

-- split pattern -> llama.cpp pre-tokenizer name whose regex is the same (nil: none known)
function M.pre_tokenizer(pattern)
    if pattern == nc().tokenizer.default_pattern() then return 'llama-bpe' end
    return nil
end

local CHAT_TEMPLATE = "{% set ns = namespace(sys='') %}{% for m in messages %}" ..
    "{% if m['role'] == 'system' %}{% set ns.sys = m['content'] + '\n\n' %}" ..
    "{% elif m['role'] == 'user' %}<|user_start|>{{ ns.sys + m['content'] }}<|user_end|>{% set ns.sys = '' %}" ..
    "{% elif m['role'] == 'assistant' %}<|assistant_start|>{{ m['content'] }}<|assistant_end|>{% endif %}" ..
    "{% endfor %}{% if add_generation_prompt %}<|assistant_start|>{% endif %}"

-- tokenizer.ggml.* metadata pairs for tok and a model vocab of V tokens; appends to md and warnings
function M.tokenizer_metadata(tok, V, md, warnings)
    local gguf = nc().gguf
    local tv = tok:vocab_size()
    if tv > V then error(string.format('export: the tokenizer has %d tokens, the model vocab only %d', tv, V), 3) end
    local nm = tok:n_merges()
    local tokens, types, id_of = {}, {}, {}
    for id = 0, V - 1 do
        local text, ty
        if id >= tv then
            text, ty = '<|pad_' .. id .. '|>', 5
        elseif id >= 256 + nm then
            text, ty = tok:token(id), 3
        else
            local b = tok:token(id)
            id_of[b] = id
            text, ty = M.byte_encode(b), 1
        end
        tokens[id + 1], types[id + 1] = text, ty
    end
    -- merges: the training pair of each token, then every other split into two tokens (see header)
    local merges = {}
    local mlist = tok:merges()
    for k = 1, nm do
        local l, r = mlist[k][1], mlist[k][2]
        merges[#merges + 1] = tokens[l + 1] .. ' ' .. tokens[r + 1]
        local bytes = tok:token(255 + k)
        local lb = #tok:token(l)
        for cut = 1, #bytes - 1 do
            if cut ~= lb then
                local a, b = id_of[bytes:sub(1, cut)], id_of[bytes:sub(cut + 1)]
                if a and b and a < 256 + k - 1 and b < 256 + k - 1 then
                    merges[#merges + 1] = tokens[a + 1] .. ' ' .. tokens[b + 1]
                end
            end
        end
    end
    local pre = M.pre_tokenizer(tok:pattern())
    if not pre then
        pre = 'default'
        warnings[#warnings + 1] = 'the tokenizer split pattern matches no llama.cpp pre-tokenizer; wrote pre = default ' ..
            '(llama.cpp will split text differently)'
    end
    local function add(k, v) md[#md + 1] = { k, v } end
    add('tokenizer.ggml.model', 'gpt2')
    add('tokenizer.ggml.pre', pre)
    add('tokenizer.ggml.tokens', tokens)
    add('tokenizer.ggml.token_type', gguf.array('i32', types))
    if #merges > 0 then add('tokenizer.ggml.merges', merges)
    else add('tokenizer.ggml.merges', gguf.array('str', {})) end
    local function special(name)
        local ok, id = pcall(tok.special, tok, name)
        return ok and id or nil
    end
    local bos = tok.bos_id
    if bos then
        add('tokenizer.ggml.bos_token_id', gguf.u32(bos))
        add('tokenizer.ggml.eos_token_id', gguf.u32(bos))      -- a document ends where the next <|bos|> starts
        add('tokenizer.ggml.padding_token_id', gguf.u32(bos))
        add('tokenizer.ggml.add_bos_token', true)
        add('tokenizer.ggml.add_eos_token', false)
    else
        add('tokenizer.ggml.add_bos_token', false)
    end
    local eot = special('<|assistant_end|>')
    if eot then add('tokenizer.ggml.eot_token_id', gguf.u32(eot)) end
    if special('<|user_start|>') and special('<|user_end|>') and special('<|assistant_start|>') and eot then
        add('tokenizer.chat_template', CHAT_TEMPLATE)
    end
end

-- The tokenizer embedded in a GGUF we wrote (or any gpt2-model vocab with ids 0..255 = the bytes
-- in order, the merged tokens next, then the control tokens) -> nc.tokenizer, or nil, why.
-- The training merges are recovered as the first "A B" entry that makes each next id.
function M.tokenizer_from_gguf(f)
    local md = f.metadata
    if md['tokenizer.ggml.model'] ~= 'gpt2' then return nil, 'no gpt2 tokenizer in the file' end
    local tokens, types, merges = md['tokenizer.ggml.tokens'], md['tokenizer.ggml.token_type'], md['tokenizer.ggml.merges'] or {}
    if type(tokens) ~= 'table' or type(types) ~= 'table' or #types ~= #tokens then return nil, 'tokens / token_type missing' end
    local bt = byte_text()
    for b = 0, 255 do
        if tokens[b + 1] ~= bt[b] or types[b + 1] ~= 1 then return nil, 'ids 0..255 are not the 256 bytes in order' end
    end
    local text_id = {}
    for i, t in ipairs(tokens) do text_id[t] = i - 1 end
    local n_norm = 256
    while types[n_norm + 1] == 1 do n_norm = n_norm + 1 end
    local specials = {}
    local i = n_norm + 1
    while types[i] == 3 do specials[#specials + 1] = tokens[i]; i = i + 1 end
    for j = i, #tokens do
        if types[j] ~= 5 then return nil, 'token ' .. (j - 1) .. ' has type ' .. tostring(types[j]) .. ' after the specials' end
    end
    local pairs_ = {}
    local want = 256
    for _, m in ipairs(merges) do
        if want >= n_norm then break end
        local a, b = m:match('^(%S+) (%S+)$')
        if a and text_id[a .. b] == want then
            pairs_[#pairs_ + 1] = { text_id[a], text_id[b] }
            want = want + 1
        end
    end
    if want ~= n_norm then return nil, 'no merge makes token ' .. want end
    local pre = md['tokenizer.ggml.pre']
    if pre ~= 'llama-bpe' then return nil, 'pre-tokenizer ' .. tostring(pre) .. ' is not our split pattern (llama-bpe)' end
    return nc().tokenizer.from_merges(pairs_, { specials = specials })
end

-- ---- writers ---------------------------------------------------------------------------------
local function proj_names(c)
    local p = { { 'attn_q', 'wq' }, { 'attn_k', 'wk' }, { 'attn_v', 'wv' }, { 'attn_output', 'wo' } }
    if c.mlp == 'swiglu' then
        p[#p + 1] = { 'ffn_gate', 'w1' }; p[#p + 1] = { 'ffn_up', 'w3' }
    else
        p[#p + 1] = { 'ffn_up', 'w1' }
    end
    p[#p + 1] = { 'ffn_down', 'w2' }
    return p
end

local function nanochat_keys(c, md)
    local gguf = nc().gguf
    for _, k in ipairs(CFG_KEYS) do
        local v = c[k]
        if v ~= nil then
            if FLOAT_KEYS[k] then v = gguf.f32(v) elseif type(v) == 'number' then v = gguf.u32(v) end
            md[#md + 1] = { 'nanochat.' .. k, v }
        end
    end
end

-- LoopLM keys: nanochat.loop.* (a looped file: the reader rebuilds cfg.loop) or, for an unrolled
-- file, nanochat.unrolled_loop.* (information only: the file is a plain model)
local LOOP_INT = { 'prelude', 'shared', 'coda', 'T', 'stage' }
local LOOP_FLOAT = { 'exit_q', 'beta' }
local function loop_keys(lc, prefix, md)
    local gguf = nc().gguf
    for _, k in ipairs(LOOP_INT) do md[#md + 1] = { prefix .. k, gguf.u32(lc[k]) } end
    for _, k in ipairs(LOOP_FLOAT) do md[#md + 1] = { prefix .. k, gguf.f64(lc[k]) } end
end

-- mHC keys (nanochat.mhc.*: the filled cfg.mhc) and MTP keys (nanochat.mtp.*: the filled cfg.mtp)
local MHC_KEYS = { n = 'u32', kind = 'str', iters = 'u32', dynamic = 'bool', alpha_init = 'f64' }
local MTP_KEYS = { depth = 'u32', kind = 'str', lambda = 'f64', per_depth_backward = 'bool' }
M.MHC_KEYS, M.MTP_KEYS = MHC_KEYS, MTP_KEYS

local function feature_keys(sub, spec, prefix, md)
    local gguf = nc().gguf
    local names = {}
    for k in pairs(spec) do names[#names + 1] = k end
    table.sort(names)
    for _, k in ipairs(names) do
        local v = sub[k]
        if spec[k] == 'u32' then v = gguf.u32(v) elseif spec[k] == 'f64' then v = gguf.f64(v) end
        md[#md + 1] = { prefix .. k, v }
    end
end

-- the f32 parameters of one mHC sublayer (nanochat.mhc.Layer): bias (2n + R), and when dynamic
-- phi (2n + R, n d) and alpha (3); R = n! (lite) or n^2 (sinkhorn)
local function mhc_params(c)
    local m = c.mhc
    local r = m.n * m.n
    if m.kind == 'lite' then
        r = 1
        for i = 2, m.n do r = r * i end
    end
    local k = 2 * m.n + r
    local p = { { 'bias', { k } } }
    if m.dynamic then p[2] = { 'phi', { k, m.n * c.d_model } }; p[3] = { 'alpha', { 3 } } end
    return p
end

-- one packed block L (a trunk layer or an MTP module's block) under the name prefix pre:
-- ternary projections + per-row f32 scales, SubLN gains, and (mHC) the two sublayers' coefficient
-- parameters <pre>mhc_attn.* / <pre>mhc_mlp.* in f32
local function write_block(c, ty, tens, pre, L)
    for _, pn in ipairs(proj_names(c)) do
        local P = L[pn[2]]
        local t = P:ternary()
        if P.in_features % 256 == 0 then
            tens[#tens + 1] = { name = pre .. pn[1] .. '.weight', tensor = t, type = ty }
        else
            tens[#tens + 1] = { name = pre .. pn[1] .. '.weight', tensor = t:to('i8'), type = 'i8' }
        end
        tens[#tens + 1] = { name = pre .. pn[1] .. '.scale', tensor = P.scale, type = 'f32' }
    end
    if L.attn_gain then tens[#tens + 1] = { name = pre .. 'attn_sub_norm.weight', tensor = L.attn_gain, type = 'f32' } end
    if L.mlp_gain then tens[#tens + 1] = { name = pre .. 'ffn_sub_norm.weight', tensor = L.mlp_gain, type = 'f32' } end
    for _, sub in ipairs { 'mhc_attn', 'mhc_mlp' } do
        local layer = L[sub]
        if layer then
            for _, pn in ipairs(mhc_params(c)) do
                tens[#tens + 1] = { name = pre .. sub .. '.' .. pn[1], tensor = layer[pn[1]]:to('f32'):contiguous(), type = 'f32' }
            end
        end
    end
end

-- a ternary packed matrix P without an input norm (the MTP projection) as name.weight / name.scale
local function write_packed(ty, tens, name, P)
    local t = P:ternary()
    if P.in_features % 256 == 0 then
        tens[#tens + 1] = { name = name .. '.weight', tensor = t, type = ty }
    else
        tens[#tens + 1] = { name = name .. '.weight', tensor = t:to('i8'), type = 'i8' }
    end
    tens[#tens + 1] = { name = name .. '.scale', tensor = P.scale, type = 'f32' }
end

local function write_nanochat(e, ty, md, tens)
    local c = e.cfg
    nanochat_keys(c, md)
    if c.loop then
        -- looped (loop=keep): cfg.loop and the fp32 exit gate; the unique blocks follow as blk.*
        loop_keys(c.loop, 'nanochat.loop.', md)
        tens[#tens + 1] = { name = 'exit_gate.weight', tensor = e.exit_gate.weight, type = 'f32' }
        tens[#tens + 1] = { name = 'exit_gate.bias', tensor = e.exit_gate.bias, type = 'f32' }
    end
    if c.mhc then feature_keys(c.mhc, MHC_KEYS, 'nanochat.mhc.', md) end
    if c.mtp then feature_keys(c.mtp, MTP_KEYS, 'nanochat.mtp.', md) end
    tens[#tens + 1] = { name = 'token_embd.weight', tensor = e.wte:to('f32'), type = 'f32' }
    if e.head ~= e.wte then tens[#tens + 1] = { name = 'output.weight', tensor = e.head:to('f32'), type = 'f32' } end
    for i, L in ipairs(e.layers) do write_block(c, ty, tens, 'blk.' .. (i - 1) .. '.', L) end
    if c.mtp then
        -- MTP module k: mtp.<k-1>.proj (sequential: the 2d -> d projection) and its block (one
        -- residual stream: no mHC) under mtp.<k-1>.
        for k, mod in ipairs(e.mtp) do
            local pre = 'mtp.' .. (k - 1) .. '.'
            if mod.proj then write_packed(ty, tens, pre .. 'proj', mod.proj.P) end
            write_block(c, ty, tens, pre, mod.block.L)
        end
    end
    return ty
end

-- per head: +1 for the first half of the rows, -1 for the second (our RoPE <-> llama.cpp NEOX)
local function rope_signs(n_heads, hd)
    local s = {}
    for h = 0, n_heads - 1 do
        for j = 0, hd - 1 do s[h * hd + j + 1] = { j < hd / 2 and 1 or -1 } end
    end
    return nc().tensor(s)
end

-- the one gamma of a per-tensor packed matrix
local function tensor_scale(P, name)
    local s = P.scale:tolist()
    for i = 2, #s do
        if s[i] ~= s[1] then error('export: ' .. name .. ' has per-row scales; the bitnet arch needs one per tensor', 4) end
    end
    return s[1]
end

local function write_bitnet(e, ty, md, tens)
    local n = nc()
    local gguf = n.gguf
    local c = e.cfg
    local A = 'bitnet.'
    local function add(k, v) md[#md + 1] = { A .. k, v } end
    add('context_length', gguf.u32(c.seq_len))
    add('embedding_length', gguf.u32(c.d_model))
    add('block_count', gguf.u32(c.n_layer))
    add('feed_forward_length', gguf.u32(c.d_ff))
    add('attention.head_count', gguf.u32(c.n_head))
    add('attention.head_count_kv', gguf.u32(c.n_kv_head))
    add('rope.freq_base', gguf.f32(c.rope_theta))
    add('rope.dimension_count', gguf.u32(c.head_dim))
    add('attention.layer_norm_rms_epsilon', gguf.f32(c.norm_eps))
    add('vocab_size', gguf.u32(c.vocab_size))
    -- our own cfg too (llama.cpp ignores unknown keys): nanochat chat reloads the file exactly
    nanochat_keys(c, md)
    local d = c.d_model
    local any_tq = false
    local function ones(k) return n.ones({ k }) end
    tens[#tens + 1] = { name = 'token_embd.weight', tensor = e.wte:to('f32'), type = 'f32' }
    tens[#tens + 1] = { name = 'output_norm.weight', tensor = ones(d), type = 'f32' }
    local qsign, ksign = rope_signs(c.n_head, c.head_dim), rope_signs(c.n_kv_head, c.head_dim)
    for i, L in ipairs(e.layers) do
        local pre = 'blk.' .. (i - 1) .. '.'
        tens[#tens + 1] = { name = pre .. 'attn_norm.weight', tensor = ones(d), type = 'f32' }
        tens[#tens + 1] = { name = pre .. 'attn_sub_norm.weight', tensor = L.attn_gain or ones(d), type = 'f32' }
        tens[#tens + 1] = { name = pre .. 'ffn_norm.weight', tensor = ones(d), type = 'f32' }
        tens[#tens + 1] = { name = pre .. 'ffn_sub_norm.weight', tensor = L.mlp_gain or ones(c.d_ff), type = 'f32' }
        for _, pn in ipairs(proj_names(c)) do
            local P = L[pn[2]]
            local t = P:ternary()
            if pn[2] == 'wq' then t = t * qsign elseif pn[2] == 'wk' then t = t * ksign end
            local wty = 'f16'
            if P.in_features % 256 == 0 then wty, any_tq = ty, true end
            tens[#tens + 1] = { name = pre .. pn[1] .. '.weight', tensor = t, type = wty }
            tens[#tens + 1] = { name = pre .. pn[1] .. '.scale', tensor = n.tensor({ tensor_scale(P, pre .. pn[1]) }),
                type = 'f32' }
        end
    end
    return any_tq and ty or 'f16'
end

M.WRITERS = { nanochat = write_nanochat, bitnet = write_bitnet }

local FILE_TYPE = { tq2_0 = 37, tq1_0 = 36, f16 = 1 }

-- aligned data bytes of the tensors of layer blk.<i-1> for each unrolled layer i that repeats an
-- earlier one (src[i] seen before): what unrolling adds to the file
local function repeated_bytes(path, src)
    local f = nc().gguf.read(path)
    local seen, rep = {}, {}
    for i, b in ipairs(src) do
        if seen[b] then rep[i - 1] = true end
        seen[b] = true
    end
    local align = f.metadata['general.alignment'] or 32
    local bytes = 0
    for _, t in ipairs(f.tensors) do
        local l = tonumber(t.name:match('^blk%.(%d+)%.'))
        if l and rep[l] then bytes = bytes + math.ceil(t.nbytes / align) * align end
    end
    return bytes
end

function M.gguf(src, path, opts)
    opts = opts or {}
    local n = nc()
    local gguf = n.gguf
    local ty = opts.type or 'tq2_0'
    if ty ~= 'tq2_0' and ty ~= 'tq1_0' then error("export: type must be 'tq2_0' or 'tq1_0', got " .. tostring(ty), 2) end
    check_loop_mode(opts.loop, 2)
    local e = getmetatable(src) == require('nanochat.engine').Engine and src or n.pack(src)
    local c = e.cfg
    local arch, why, mode = M.arch_for(c, opts)
    if opts.arch then
        if not M.WRITERS[opts.arch] then error('export: unknown arch ' .. tostring(opts.arch), 2) end
        if opts.arch == 'bitnet' and arch ~= 'bitnet' then
            error('export: this model cannot be written as bitnet: ' .. table.concat(why.bitnet, '; '), 2)
        end
        -- our own arch on request: a LoopLM stays looped there unless loop=unroll is asked for
        if opts.arch == 'nanochat' and c.loop and not opts.loop then mode = 'keep' end
        arch = opts.arch
    end
    local info = { arch = arch, why = why, warnings = {}, loop = mode, cfg = c }
    local src_map
    if mode == 'unroll' then
        e, src_map = M.unroll(e)
        if (c.loop.exit_q or 1) < 1 then
            info.warnings[#info.warnings + 1] = string.format('LoopLM unrolled: the file computes the full-depth ' ..
                'model (all %d loops); the checkpoint\'s early exit (exit_q = %g) and its exit gate are dropped',
                c.loop.T, c.loop.exit_q)
        end
    end
    local md = { { 'general.architecture', arch }, { 'general.name', c.name or 'nanochat' } }
    local tens = {}
    local main_type = M.WRITERS[arch](e, ty, md, tens)
    if src_map then loop_keys(c.loop, 'nanochat.unrolled_loop.', md) end
    table.insert(md, 3, { 'general.file_type', gguf.u32(FILE_TYPE[main_type] or FILE_TYPE[ty]) })
    table.insert(md, 4, { 'general.quantization_version', gguf.u32(2) })
    if opts.tokenizer then
        M.tokenizer_metadata(opts.tokenizer, c.vocab_size, md, info.warnings)
    else
        md[#md + 1] = { 'tokenizer.ggml.model', 'no_vocab' }
        info.warnings[#info.warnings + 1] = 'no tokenizer given: tokenizer.ggml.model = no_vocab (token ids only)'
    end
    info.main_type = main_type
    local bytes = gguf.write(path, { metadata = md, tensors = tens })
    if src_map then
        -- the size cost of unrolling: every repeat of a shared block is written again
        info.unroll = { layers = #src_map, unique = c.n_layer, src = src_map, repeated_bytes = repeated_bytes(path, src_map) }
        info.unroll.looped_bytes = bytes - info.unroll.repeated_bytes
    end
    return bytes, info
end

-- ---- readers (GGUF -> Engine) ----------------------------------------------------------------
local function getter(f, path)
    return function(name, shape)
        if not f.tensor_index[name] then error('export.load: ' .. path .. ': missing tensor ' .. name, 3) end
        local t = f:tensor(name)
        if shape and table.concat(t:shape(), 'x') ~= table.concat(shape, 'x') then
            error(string.format('export.load: %s: tensor %s has shape %s, expected %s', path, name,
                table.concat(t:shape(), 'x'), table.concat(shape, 'x')), 3)
        end
        return t
    end
end

local function proj_shapes(c)
    local qd, kvd = c.n_head * c.head_dim, c.n_kv_head * c.head_dim
    return { wq = { qd, c.d_model }, wk = { kvd, c.d_model }, wv = { kvd, c.d_model }, wo = { c.d_model, qd },
        w1 = { c.d_ff, c.d_model }, w3 = { c.d_ff, c.d_model }, w2 = { c.d_model, c.d_ff } }
end

-- the keys of a feature sub-table (nanochat.mhc.* / nanochat.mtp.*) -> the table, or nil when the
-- file has none of them; a partial set is an error naming the missing key
local function read_feature(md, spec, prefix, path)
    local out, n_have, missing = {}, 0, nil
    for k in pairs(spec) do
        local v = md[prefix .. k]
        if v == nil then missing = missing or (prefix .. k) else out[k] = v; n_have = n_have + 1 end
    end
    if n_have == 0 then return nil end
    if missing then error('export.load: ' .. path .. ': missing key ' .. missing, 4) end
    return out
end

-- one packed block under the name prefix pre (see write_block); mhc_own: the gpt Block's 0-based
-- sublayer index of its attention (the mHC layers' `own` stream; no effect once the bias is loaded)
local function read_block(c, get, pre, shapes, mhc_own)
    local L = {}
    for _, pn in ipairs(proj_names(c)) do
        local t = get(pre .. pn[1] .. '.weight', shapes[pn[2]])
        local s = get(pre .. pn[1] .. '.scale', { shapes[pn[2]][1] })
        L[pn[2]] = infer.from_ternary(t:to('f32'), s)
    end
    if c.subln then
        L.attn_gain = get(pre .. 'attn_sub_norm.weight', { c.n_head * c.head_dim }):to('f32')
        L.mlp_gain = get(pre .. 'ffn_sub_norm.weight', { c.d_ff }):to('f32')
    end
    if mhc_own then
        local MHC = require 'nanochat.mhc'
        for j, sub in ipairs { 'mhc_attn', 'mhc_mlp' } do
            local layer = MHC.Layer(c, mhc_own + j - 1)
            local sd = {}
            for _, pn in ipairs(mhc_params(c)) do sd[pn[1]] = get(pre .. sub .. '.' .. pn[1], pn[2]):to('f32') end
            layer:load_state_dict(sd)
            layer:eval()
            L[sub] = layer
        end
    end
    return L
end

local function read_nanochat(f, path)
    local n = nc()
    local md = f.metadata
    local cfg = {}
    for _, k in ipairs(CFG_KEYS) do cfg[k] = md['nanochat.' .. k] end
    if md['nanochat.loop.T'] ~= nil then
        cfg.loop = {}
        for _, k in ipairs(LOOP_INT) do cfg.loop[k] = md['nanochat.loop.' .. k] end
        for _, k in ipairs(LOOP_FLOAT) do cfg.loop[k] = md['nanochat.loop.' .. k] end
    end
    cfg.mhc = read_feature(md, MHC_KEYS, 'nanochat.mhc.', path)
    cfg.mtp = read_feature(md, MTP_KEYS, 'nanochat.mtp.', path)
    local ok, c = pcall(n.models.gpt.config, cfg)
    if not ok then error('export.load: ' .. path .. ': bad nanochat.* config: ' .. tostring(c), 3) end
    local get = getter(f, path)
    local E = require 'nanochat.engine'
    local e = setmetatable({ cfg = c, head_dtype = 'f32', layers = {} }, E.Engine)
    e.wte = get('token_embd.weight', { c.vocab_size, c.d_model }):to('f32')
    e.head = c.tie_embeddings and e.wte or get('output.weight', { c.vocab_size, c.d_model }):to('f32')
    if c.loop then
        e.exit_gate = setmetatable({ weight = get('exit_gate.weight', { 1, c.d_model }):to('f32'),
                                     bias = get('exit_gate.bias', { 1 }):to('f32') }, E.Gate)
    end
    local shapes = proj_shapes(c)
    for i = 1, c.n_layer do
        e.layers[i] = read_block(c, get, 'blk.' .. (i - 1) .. '.', shapes, c.mhc and 2 * (i - 1) or nil)
    end
    if c.mtp then
        e.mtp = {}
        for k = 1, c.mtp.depth do
            local pre = 'mtp.' .. (k - 1) .. '.'
            local proj
            if c.mtp.kind == 'sequential' then
                local P = infer.from_ternary(get(pre .. 'proj.weight', { c.d_model, 2 * c.d_model }):to('f32'),
                    get(pre .. 'proj.scale', { c.d_model }))
                proj = setmetatable({ P = P }, E.PackedLinear)
            end
            e.mtp[k] = { proj = proj, block = setmetatable({ e = e, L = read_block(c, get, pre, shapes, nil) }, E.PackedBlock) }
        end
    end
    return e
end

-- a bitnet file (ours, or any whose pre-norm gains are 1 and whose rows have one magnitude each)
local function read_bitnet(f, path)
    local n = nc()
    local md = f.metadata
    local function key(k, req)
        local v = md['bitnet.' .. k]
        if v == nil and req then error('export.load: ' .. path .. ': missing key bitnet.' .. k, 4) end
        return v
    end
    local d, H = key('embedding_length', true), key('attention.head_count', true)
    local emb = f.tensor_index['token_embd.weight']
    if not emb then error('export.load: ' .. path .. ': missing tensor token_embd.weight', 3) end
    local cfg = {
        vocab_size = key('vocab_size') or emb.shape[1], seq_len = key('context_length', true), d_model = d,
        n_layer = key('block_count', true), n_head = H, n_kv_head = key('attention.head_count_kv') or H,
        head_dim = key('rope.dimension_count') or d / H, d_ff = key('feed_forward_length', true), mlp = 'swiglu',
        rope_theta = key('rope.freq_base') or 10000, tie_embeddings = true, subln = true, embed_norm = false,
        norm_eps = key('attention.layer_norm_rms_epsilon', true), name = md['general.name'],
    }
    local ok, c = pcall(n.models.gpt.config, cfg)
    if not ok then error('export.load: ' .. path .. ': bad bitnet.* config: ' .. tostring(c), 3) end
    local get = getter(f, path)
    local function unit_gain(name, k)
        local g = get(name, { k }):to('f32')
        if (g - 1):abs():max():item() ~= 0 then
            error('export.load: ' .. path .. ': ' .. name .. ' is not all ones; our engine\'s pre-norms are parameter-free', 4)
        end
    end
    local E = require 'nanochat.engine'
    local e = setmetatable({ cfg = c, head_dtype = 'f32', layers = {} }, E.Engine)
    e.wte = get('token_embd.weight', { c.vocab_size, c.d_model }):to('f32')
    e.head = e.wte
    unit_gain('output_norm.weight', d)
    local shapes = proj_shapes(c)
    local qsign, ksign = rope_signs(c.n_head, c.head_dim), rope_signs(c.n_kv_head, c.head_dim)
    for i = 1, c.n_layer do
        local pre, L = 'blk.' .. (i - 1) .. '.', {}
        unit_gain(pre .. 'attn_norm.weight', d)
        unit_gain(pre .. 'ffn_norm.weight', d)
        for _, pn in ipairs(proj_names(c)) do
            local name = pre .. pn[1] .. '.weight'
            local t = get(name, shapes[pn[2]]):to('f32')
            if pn[2] == 'wq' then t = t * qsign elseif pn[2] == 'wk' then t = t * ksign end
            local P = infer.from_values(t, name)
            local sname = pre .. pn[1] .. '.scale'
            if f.tensor_index[sname] then P.scale = P.scale * get(sname, { 1 }):item() end
            L[pn[2]] = P
        end
        L.attn_gain = get(pre .. 'attn_sub_norm.weight', { d }):to('f32')
        L.mlp_gain = get(pre .. 'ffn_sub_norm.weight', { c.d_ff }):to('f32')
        e.layers[i] = L
    end
    return e
end

M.READERS = { nanochat = read_nanochat, bitnet = read_bitnet }

-- GGUF (arch 'nanochat' or 'bitnet') -> Engine, File
function M.load(path)
    local f = nc().gguf.read(path)
    local arch = f.metadata['general.architecture']
    local reader = M.READERS[arch]
    if not reader then
        error('export.load: ' .. path .. ": architecture '" .. tostring(arch) ..
            "' is not 'nanochat' or 'bitnet' (the GGUF kinds our engine loads)", 2)
    end
    return reader(f, path), f
end

return M
