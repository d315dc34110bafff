-- lua/nanochat/export.lua — GGUF export of a ternary GPT under our own architecture key and
-- loading it back into the packed engine (`nc.export`).
--
-- Promise: `export.gguf(model_or_ckpt_dir, path, { type = 'tq2_0' | 'tq1_0', tokenizer = tok })`
-- writes general.architecture = 'nanochat': the full model cfg as nanochat.* keys (so the
-- parameter-free pre-norms, per-token int8 activations, relu2/swiglu, SubLN, qk_norm, softcap and
-- the half-split RoPE are all implied by the arch, nothing approximated), token_embd.weight F32,
-- output.weight F32 (absent when tied), blk.N.attn_{q,k,v,output}.weight and
-- blk.N.ffn_{up,gate,down}.weight as ternary values {-1, 0, 1} (TQ2_0 / TQ1_0 blocks with d = 1
-- when in_features % 256 == 0, else I8) plus blk.N.<proj>.scale F32 (out) per-row scales = the
-- training gamma exactly, blk.N.attn_sub_norm / ffn_sub_norm F32 gains with SubLN. MLP naming:
-- relu2 -> ffn_up = W1; swiglu -> ffn_gate = W1 (SiLU side), ffn_up = W3, as llama.
-- `export.load(path)` reads such a file (gguf.read checks structure; a missing key/tensor or wrong
-- shape is a clear error) and returns an Engine with the same packed weights (logits identical
-- to nc.pack of the source model).
--
-- NOT done (see README): the llama / bitnet arch variants loadable by llama.cpp and the embedded
-- tokenizer.ggml.* keys (written only when opts.tokenizer is given and has merges()).
local infer = require 'nanochat.infer'

local function nc() return require 'nanochat' end

local M = {}

local CFG_KEYS = { 'vocab_size', 'seq_len', 'd_model', 'n_layer', 'n_head', 'n_kv_head', 'head_dim', 'd_ff', 'mlp',
    'rope_theta', 'qk_norm', 'tie_embeddings', 'logit_softcap', 'quant_group', 'subln', 'norm_eps' }
local FLOAT_KEYS = { rope_theta = true, logit_softcap = true, norm_eps = true }

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

function M.gguf(src, path, opts)
    opts = opts or {}
    local n = nc()
    local gguf = n.gguf
    local ty = opts.type or 'tq2_0'
    if ty ~= 'tq2_0' and ty ~= 'tq1_0' then error("export: type must be 'tq2_0' or 'tq1_0', got " .. tostring(ty), 2) end
    local e = getmetatable(src) == require('nanochat.engine').Engine and src or n.pack(src)
    local c = e.cfg
    local md = { { 'general.architecture', 'nanochat' }, { 'general.name', c.name or 'nanochat' },
        { 'general.file_type', gguf.u32(ty == 'tq2_0' and 37 or 36) }, { 'general.quantization_version', gguf.u32(2) } }
    for _, k in ipairs(CFG_KEYS) do
        local v = c[k]
        if v ~= nil then
            if FLOAT_KEYS[k] then v = gguf.f32(v) elseif type(v) == 'number' then v = gguf.u32(v) end
            md[#md + 1] = { 'nanochat.' .. k, v }
        end
    end
    local tok = opts.tokenizer
    if tok then md[#md + 1] = { 'tokenizer.ggml.bos_token_id', gguf.u32(tok.bos_id) } end
    local tens = { { name = 'token_embd.weight', tensor = e.wte:to('f32'), type = 'f32' } }
    if e.head ~= e.wte then tens[#tens + 1] = { name = 'output.weight', tensor = e.head:to('f32'), type = 'f32' } end
    for i, L in ipairs(e.layers) do
        local pre = 'blk.' .. (i - 1) .. '.'
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
    end
    return gguf.write(path, { metadata = md, tensors = tens })
end

-- GGUF (arch 'nanochat') -> Engine
function M.load(path)
    local n = nc()
    local E = require 'nanochat.engine'
    local f = n.gguf.read(path)
    local md = f.metadata
    local arch = md['general.architecture']
    if arch ~= 'nanochat' then
        error('export.load: ' .. path .. ": architecture '" .. tostring(arch) .. "' is not 'nanochat' (only our own GGUF files load into the engine)", 2)
    end
    local cfg = {}
    for _, k in ipairs(CFG_KEYS) do cfg[k] = md['nanochat.' .. k] end
    local ok, c = pcall(n.models.gpt.config, cfg)
    if not ok then error('export.load: ' .. path .. ': bad nanochat.* config: ' .. tostring(c), 2) end
    local function get(name, shape)
        if not f.tensor_index[name] then error('export.load: ' .. path .. ': missing tensor ' .. name, 3) end
        local t = f:tensor(name)
        if shape and table.concat(t:shape(), 'x') ~= table.concat(shape, 'x') then
            error(string.format('export.load: %s: tensor %s has shape %s, expected %s', path, name,
                table.concat(t:shape(), 'x'), table.concat(shape, 'x')), 3)
        end
        return t
    end
    local e = setmetatable({ cfg = c, head_dtype = 'f32', layers = {} }, E.Engine)
    e.wte = get('token_embd.weight', { c.vocab_size, c.d_model }):to('f32')
    e.head = c.tie_embeddings and e.wte or get('output.weight', { c.vocab_size, c.d_model }):to('f32')
    local qd, kvd = c.n_head * c.head_dim, c.n_kv_head * c.head_dim
    local shapes = { wq = { qd, c.d_model }, wk = { kvd, c.d_model }, wv = { kvd, c.d_model }, wo = { c.d_model, qd },
        w1 = { c.d_ff, c.d_model }, w3 = { c.d_ff, c.d_model }, w2 = { c.d_model, c.d_ff } }
    for i = 1, c.n_layer do
        local pre, L = 'blk.' .. (i - 1) .. '.', {}
        for _, pn in ipairs(proj_names(c)) do
            local t = get(pre .. pn[1] .. '.weight', shapes[pn[2]])
            local s = get(pre .. pn[1] .. '.scale', { shapes[pn[2]][1] })
            L[pn[2]] = infer.from_ternary(t:to('f32'), s)
        end
        if c.subln then
            L.attn_gain = get(pre .. 'attn_sub_norm.weight', { qd }):to('f32')
            L.mlp_gain = get(pre .. 'ffn_sub_norm.weight', { c.d_ff }):to('f32')
        end
        e.layers[i] = L
    end
    return e, f
end

return M
