-- lua/nanochat/gguf.lua — GGUF v3 writer and reader (`nc.gguf`), formats.md §1.
--
-- Promise:
--  - gguf.write(path, { metadata = ..., tensors = ..., alignment = 32 }) writes a GGUF v3 file
--    atomically (path.tmp.<pid>, then rename): header, typed KV metadata (all 13 value types,
--    arrays included), tensor infos (ne = reversed PyTorch shape), zero padding to the alignment,
--    tensor data in info order at offsets that are the running sum of aligned sizes (what
--    llama.cpp's gguf.cpp demands). Ternary tensors are written as TQ2_0 / TQ1_0 blocks made by
--    kernels/cpu/tq.c (byte-exact to ggml's reference quantizer), others as F32 / F16 / BF16.
--  - gguf.read(path) parses and checks everything before returning: magic, version (2 or 3),
--    counts against the file size, every string and array length, value types, duplicate keys
--    and names, n_dims <= 4, known ggml types, ne[0] a multiple of the block, aligned offsets that
--    tile the data region in order, and data that ends inside the file. Any problem raises
--    "gguf: <path>: <what is wrong>" (a truncated file says how many bytes were missing where).
--  - f:tensor(name) loads one tensor as a CPU Tensor (f32, f16, bf16, i8, i32, i64, f64, tq2, tq1).
--
-- Metadata values: a Lua string -> STRING, boolean -> BOOL, integer number -> UINT32 (INT32 when
-- negative, UINT64 / INT64 when it does not fit), other number -> FLOAT32, list of strings ->
-- ARRAY of STRING, list of numbers -> ARRAY of (same rule over all elements). Use the typed
-- wrappers gguf.u8 .. gguf.f64, gguf.bool, gguf.str, gguf.array(elem_type, list) to choose.
-- metadata is a list of { key, value } pairs (order kept) or a map (general.* keys first, then
-- sorted).
--
-- ---- What the post-merge exporter must write (formats.md §1.6-1.7; llama.cpp at 0253fb21) ----
-- general.architecture = 'llama' | 'bitnet' (or our own, e.g. 'nanochat', for mHC / exit gates /
--   MTP); general.name; general.alignment (u32, optional, default 32); general.file_type (u32:
--   ALL_F32 0, MOSTLY_F16 1, MOSTLY_TQ1_0 36, MOSTLY_TQ2_0 37); general.quantization_version = 2.
-- {A}.context_length, {A}.embedding_length, {A}.block_count (u32, required);
-- {A}.feed_forward_length, {A}.attention.head_count, {A}.attention.head_count_kv (u32);
-- {A}.rope.freq_base (f32), {A}.rope.dimension_count (u32; for llama must be n_embd / n_head);
-- {A}.attention.layer_norm_rms_epsilon (f32, required by llama and bitnet); {A}.vocab_size (u32).
-- Tensors (PyTorch (out, in) is written ne = [in, out]):
--   token_embd.weight (vocab, d), output_norm.weight (d), output.weight (vocab, d) (llama only;
--   absent = tied; bitnet ALWAYS ties to token_embd), per layer blk.N.: attn_norm.weight,
--   attn_q.weight, attn_k.weight, attn_v.weight, attn_output.weight, ffn_norm.weight,
--   ffn_gate.weight (d_ff, d), ffn_up.weight (d_ff, d), ffn_down.weight (d, d_ff); bitnet adds
--   attn_sub_norm.weight (d), ffn_sub_norm.weight (d_ff) and optional <proj>.scale (1) F32
--   multipliers of each matmul output (store raw {-1,0,1} with d = 1 then, or gamma * t with d =
--   gamma rounded to f16 and no .scale).
--   FFN is SiLU-gated (SwiGLU) in both: a relu2 MLP is NOT expressible; norms are RMSNorm.
--   Scales: a TQ block stores d = max|x| of its 256 weights in f16, so writing gamma * t keeps the
--   ternary pattern exact and rounds gamma to f16 (relative error <= 2^-11); per-row groups
--   (quant_group a multiple of in) also fit, since every block lies in one row. For an exact gamma
--   use bitnet's F32 .scale tensors with t written at d = 1 (per-tensor gamma only).
--   Reading back: nc.infer.from_values(f:tensor(name)) packs a TQ tensor for our kernels.
--   RoPE: llama uses NORM (adjacent pairs) -> half-split (rotate_half) q/k rows must be permuted
--   per head: rows reshape(n_head, 2, hd/2, in):swapaxes(1, 2); bitnet uses NEOX (half split, as
--   we do) but rotates by +angle where our kernel (nanochat's) rotates by -angle: export.lua
--   negates the second half of each head's q/k rows. Ternary tensors need ne[0] (= in) % 256 == 0
--   for TQ1_0/TQ2_0. (What export.lua actually writes, and why llama never fits: its header.)
-- Tokenizer (byte-level BPE): tokenizer.ggml.model = 'gpt2'; tokenizer.ggml.pre = 'llama-bpe' (only
--   if the split regex is exactly GPT-4's \p{N}{1,3} one); tokenizer.ggml.tokens (string[],
--   GPT-2 bytes_to_unicode text, unique); tokenizer.ggml.merges (string[] "A B" in rank order);
--   tokenizer.ggml.token_type (int32[]: 1 normal, 3 control for specials); tokenizer.ggml.
--   bos_token_id / eos_token_id / eot_token_id / padding_token_id (u32); tokenizer.ggml.add_bos_token
--   (bool); tokenizer.chat_template (string, Jinja).
local core = require 'nanochat.core'
local Tensor = require 'nanochat.tensor'
local ffi, C = core.ffi, core.C
local bit = require 'bit'

local M = {}

M.MAGIC = 0x46554747
M.VERSION = 3
M.DEFAULT_ALIGNMENT = 32

-- metadata value types
local VT = { u8 = 0, i8 = 1, u16 = 2, i16 = 3, u32 = 4, i32 = 5, f32 = 6, bool = 7, str = 8, array = 9,
             u64 = 10, i64 = 11, f64 = 12 }
M.VT = VT
local VT_NAME = {}
for k, v in pairs(VT) do VT_NAME[v] = k end
M.VT_NAME = VT_NAME
local SCALAR = { [0] = { 'uint8_t', 1 }, { 'int8_t', 1 }, { 'uint16_t', 2 }, { 'int16_t', 2 }, { 'uint32_t', 4 },
                 { 'int32_t', 4 }, { 'float', 4 }, { 'uint8_t', 1 }, nil, nil, { 'uint64_t', 8 }, { 'int64_t', 8 },
                 { 'double', 8 } }

-- ggml tensor types: id -> { name, block elements, block bytes, our dtype or nil }
local GT = {
    [0] = { 'F32', 1, 4, 'f32' }, [1] = { 'F16', 1, 2, 'f16' }, [2] = { 'Q4_0', 32, 18 }, [3] = { 'Q4_1', 32, 20 },
    [6] = { 'Q5_0', 32, 22 }, [7] = { 'Q5_1', 32, 24 }, [8] = { 'Q8_0', 32, 34 }, [9] = { 'Q8_1', 32, 40 },
    [10] = { 'Q2_K', 256, 84 }, [11] = { 'Q3_K', 256, 110 }, [12] = { 'Q4_K', 256, 144 }, [13] = { 'Q5_K', 256, 176 },
    [14] = { 'Q6_K', 256, 210 }, [15] = { 'Q8_K', 256, 292 }, [16] = { 'IQ2_XXS', 256, 66 }, [17] = { 'IQ2_XS', 256, 74 },
    [18] = { 'IQ3_XXS', 256, 98 }, [19] = { 'IQ1_S', 256, 50 }, [20] = { 'IQ4_NL', 32, 18 }, [21] = { 'IQ3_S', 256, 110 },
    [22] = { 'IQ2_S', 256, 82 }, [23] = { 'IQ4_XS', 256, 136 }, [24] = { 'I8', 1, 1, 'i8' }, [25] = { 'I16', 1, 2 },
    [26] = { 'I32', 1, 4, 'i32' }, [27] = { 'I64', 1, 8, 'i64' }, [28] = { 'F64', 1, 8, 'f64' }, [29] = { 'IQ1_M', 256, 56 },
    [30] = { 'BF16', 1, 2, 'bf16' }, [34] = { 'TQ1_0', 256, 54, 'tq1' }, [35] = { 'TQ2_0', 256, 66, 'tq2' },
    [39] = { 'MXFP4', 32, 17 },
}
M.GGML_TYPES = GT
local GT_ID = {}
for id, t in pairs(GT) do GT_ID[t[1]] = id; GT_ID[t[1]:lower()] = id end
M.GGML_TYPE_ID = GT_ID
-- our dtype -> ggml type id
local DT_TO_GT = { f32 = 0, f16 = 1, bf16 = 30, i8 = 24, i32 = 26, i64 = 27, f64 = 28, tq1 = 34, tq2 = 35 }

-- llama_ftype values for general.file_type
M.FILE_TYPE = { ALL_F32 = 0, MOSTLY_F16 = 1, MOSTLY_Q8_0 = 7, MOSTLY_BF16 = 32, MOSTLY_TQ1_0 = 36, MOSTLY_TQ2_0 = 37 }

-- ---- typed metadata values -------------------------------------------------------------------
local Typed = {}
Typed.__index = Typed
local function typed(t, v) return setmetatable({ type = t, value = v }, Typed) end
for name in pairs(VT) do
    if name ~= 'array' then M[name] = function(v) return typed(VT[name], v) end end
end
-- gguf.array('u32', {1, 2, 3}); elem_type a VT name or id
function M.array(elem, list)
    local et = type(elem) == 'string' and VT[elem] or elem
    if not et or et == VT.array then error('gguf.array: unsupported element type ' .. tostring(elem), 2) end
    return setmetatable({ type = VT.array, elem = et, value = list }, Typed)
end

local function is_int(v) return v == math.floor(v) and v > -2 ^ 63 and v < 2 ^ 64 end
local function number_type(vals)
    local all_int, lo, hi = true, 0, 0
    for _, v in ipairs(vals) do
        if not is_int(v) then all_int = false break end
        if v < lo then lo = v end
        if v > hi then hi = v end
    end
    if not all_int then return VT.f32 end
    if lo >= 0 then return hi < 2 ^ 32 and VT.u32 or VT.u64 end
    return (lo >= -2 ^ 31 and hi < 2 ^ 31) and VT.i32 or VT.i64
end

-- (type, value, elem) of a Lua value
local function classify(key, v)
    if getmetatable(v) == Typed then return v.type, v.value, v.elem end
    local tv = type(v)
    if tv == 'string' then return VT.str, v end
    if tv == 'boolean' then return VT.bool, v end
    if tv == 'number' then return number_type({ v }), v end
    if tv == 'table' then
        if #v == 0 then error('gguf.write: metadata ' .. key .. ' is an empty table; use gguf.array(type, {})', 4) end
        local ts = type(v[1])
        for i = 2, #v do
            if type(v[i]) ~= ts then error('gguf.write: metadata ' .. key .. ' mixes value types in an array', 4) end
        end
        if ts == 'string' then return VT.array, v, VT.str end
        if ts == 'boolean' then return VT.array, v, VT.bool end
        if ts == 'number' then return VT.array, v, number_type(v) end
    end
    error('gguf.write: metadata ' .. key .. ' has an unsupported value (' .. tv .. ')', 4)
end

-- ---- byte buffer -----------------------------------------------------------------------------
local Buf = {}
Buf.__index = Buf
local function newbuf() return setmetatable({ parts = {}, n = 0 }, Buf) end
local scratch = ffi.new('uint8_t[8]')
function Buf:raw(s) self.parts[#self.parts + 1] = s; self.n = self.n + #s end
function Buf:scalar(vt, v)
    local ct, sz = SCALAR[vt][1], SCALAR[vt][2]
    if vt == VT.bool then v = v and 1 or 0 end
    if (vt == VT.u64 or vt == VT.i64) and type(v) == 'number' then
        v = vt == VT.u64 and ffi.new('uint64_t', v) or ffi.new('int64_t', v)
    end
    ffi.cast(ct .. '*', scratch)[0] = v
    self:raw(ffi.string(scratch, sz))
end
function Buf:str(s) self:scalar(VT.u64, #s); self:raw(s) end
function Buf:value(vt, v, elem)
    if vt == VT.str then self:str(v)
    elseif vt == VT.array then
        self:scalar(VT.u32, elem)
        self:scalar(VT.u64, #v)
        for i = 1, #v do self:value(elem, v[i]) end
    else self:scalar(vt, v) end
end
function Buf:string() return table.concat(self.parts) end

local function align_up(x, a) return math.ceil(x / a) * a end

local function ordered_metadata(md)
    if md == nil then return {} end
    if #md > 0 or next(md) == nil then return md end
    local keys = {}
    for k in pairs(md) do keys[#keys + 1] = k end
    table.sort(keys, function(a, b)
        local ga, gb = a:sub(1, 8) == 'general.', b:sub(1, 8) == 'general.'
        if ga ~= gb then return ga end
        if a == 'general.architecture' or b == 'general.architecture' then return a == 'general.architecture' end
        return a < b
    end)
    local out = {}
    for i, k in ipairs(keys) do out[i] = { k, md[k] } end
    return out
end

-- stdio through the FFI; each declaration on its own, so one made elsewhere first is harmless
for _, decl in ipairs { 'typedef struct FILE FILE;', 'FILE *fopen(const char *path, const char *mode);',
                        'size_t fwrite(const void *ptr, size_t size, size_t n, FILE *f);', 'int fclose(FILE *f);',
                        'int getpid(void);' } do
    pcall(ffi.cdef, decl)
end

-- the tensor to write: contiguous CPU data of the file's type
local function prepare_tensor(i, spec)
    local name, t, ty = spec.name or spec[1], spec.tensor or spec[2], spec.type or spec[3]
    if type(name) ~= 'string' or #name == 0 or #name > 63 then
        error(string.format('gguf.write: tensor %d needs a name of 1..63 bytes, got %s', i, tostring(name)), 3)
    end
    if not Tensor.is(t) then error('gguf.write: tensor ' .. name .. ' is not a Tensor', 3) end
    if t:dim() < 1 or t:dim() > 4 then error('gguf.write: tensor ' .. name .. ' must have 1..4 dims', 3) end
    if t:device() ~= 'cpu' then t = t:to('cpu') end
    local want = ty and (ty:lower():gsub('_0$', ''):gsub('^tq(%d)$', 'tq%1')) or t:dtype()
    want = ({ f32 = 'f32', f16 = 'f16', bf16 = 'bf16', tq1 = 'tq1', tq2 = 'tq2', i8 = 'i8', i32 = 'i32', i64 = 'i64',
              f64 = 'f64' })[want]
    if not want then error('gguf.write: tensor ' .. name .. ': unsupported type ' .. tostring(ty), 3) end
    if (want == 'tq1' or want == 'tq2') and t:size(-1) % 256 ~= 0 then
        error(string.format('gguf.write: tensor %s: %s needs the last dim (ne[0]) to be a multiple of 256, got %d',
            name, want, t:size(-1)), 3)
    end
    if t:dtype() ~= want then
        local src = t
        if (want == 'tq1' or want == 'tq2') and src:dtype() ~= 'f32' then src = src:to('f32') end
        t = src:contiguous():to(want)
    else
        t = t:contiguous()
    end
    local gt = DT_TO_GT[want]
    local shape = t:shape()
    local ne = {}
    for d = 1, #shape do ne[d] = shape[#shape + 1 - d] end
    local nel = t:numel()
    local nbytes = nel / GT[gt][2] * GT[gt][3]
    return { name = name, tensor = t, ggml_type = gt, ne = ne, nbytes = nbytes }
end

-- Write a GGUF file. opts: metadata (pairs list or map), tensors = list of { name=, tensor=,
-- type= 'f32'|'f16'|'bf16'|'tq2_0'|'tq1_0' (default: the tensor's dtype) } (or {name, tensor, type}),
-- alignment (default 32; written as general.alignment when not 32). Returns the file size.
function M.write(path, opts)
    opts = opts or {}
    local align = opts.alignment or M.DEFAULT_ALIGNMENT
    if align < 1 or align % 1 ~= 0 or bit.band(align, align - 1) ~= 0 then
        error('gguf.write: alignment must be a power of two, got ' .. tostring(align), 2)
    end
    local md = ordered_metadata(opts.metadata)
    local seen = {}
    local kv = {}
    for _, p in ipairs(md) do
        local k, v = p[1] or p.key, p[2]
        if p.value ~= nil then v = p.value end
        if type(k) ~= 'string' or #k == 0 then error('gguf.write: metadata key must be a non-empty string', 2) end
        if seen[k] then error('gguf.write: duplicate metadata key ' .. k, 2) end
        seen[k] = true
        local vt, val, elem = classify(k, v)
        if k == 'general.alignment' then
            if vt ~= VT.u32 then error('gguf.write: general.alignment must be u32', 2) end
            align = val
        end
        kv[#kv + 1] = { k, vt, val, elem }
    end
    if align ~= M.DEFAULT_ALIGNMENT and not seen['general.alignment'] then
        kv[#kv + 1] = { 'general.alignment', VT.u32, align }
    end
    local tens, names = {}, {}
    for i, spec in ipairs(opts.tensors or {}) do
        local t = prepare_tensor(i, spec)
        if names[t.name] then error('gguf.write: duplicate tensor name ' .. t.name, 2) end
        names[t.name] = true
        tens[i] = t
    end
    local b = newbuf()
    b:scalar(VT.u32, M.MAGIC)
    b:scalar(VT.u32, M.VERSION)
    b:scalar(VT.u64, #tens)
    b:scalar(VT.u64, #kv)
    for _, e in ipairs(kv) do
        b:str(e[1])
        b:scalar(VT.u32, e[2])
        b:value(e[2], e[3], e[4])
    end
    local off = 0
    for _, t in ipairs(tens) do
        t.offset = off
        b:str(t.name)
        b:scalar(VT.u32, #t.ne)
        for _, n in ipairs(t.ne) do b:scalar(VT.u64, n) end
        b:scalar(VT.u32, t.ggml_type)
        b:scalar(VT.u64, off)
        off = off + align_up(t.nbytes, align)
    end
    local header = b:string()
    local pad = align_up(#header, align) - #header
    local tmp = path .. '.tmp.' .. ffi.C.getpid()
    local f = ffi.C.fopen(tmp, 'wb')
    if f == nil then error('gguf.write: cannot open ' .. tmp .. ' for writing', 2) end
    local zeros = string.rep('\0', align)
    local ok = true
    local function put(p, n) if n > 0 and ffi.C.fwrite(p, 1, n, f) ~= n then ok = false end end
    put(header, #header)
    put(zeros, pad)
    for _, t in ipairs(tens) do
        put(C.nc_tensor_data(t.tensor._c), t.nbytes)
        put(zeros, align_up(t.nbytes, align) - t.nbytes)
    end
    if ffi.C.fclose(f) ~= 0 then ok = false end
    if not ok then
        os.remove(tmp)
        error('gguf.write: writing ' .. path .. ' failed (disk full?)', 2)
    end
    local rok, rerr = os.rename(tmp, path)
    if not rok then os.remove(tmp); error('gguf.write: cannot rename ' .. tmp .. ' to ' .. path .. ': ' .. tostring(rerr), 2) end
    return #header + pad + off
end

-- ---- reader ----------------------------------------------------------------------------------
local Reader = {}
Reader.__index = Reader

local CHUNK = 1048576

local function fail(path, fmt, ...) error('gguf: ' .. path .. ': ' .. string.format(fmt, ...), 0) end

function Reader:need(n, what)
    if self.pos + n > self.size then
        fail(self.path, 'truncated: %s needs %d bytes at offset %d, but the file ends at %d', what, n, self.pos,
            self.size)
    end
    while self.buf_end - self.pos < n do
        local chunk = self.f:read(math.max(CHUNK, n))
        if not chunk then fail(self.path, 'read failed at offset %d (%s)', self.buf_end, what) end
        self.buf = self.buf:sub(self.pos - self.buf_start + 1) .. chunk
        self.buf_start = self.pos
        self.buf_end = self.buf_start + #self.buf
    end
end

function Reader:bytes(n, what)
    self:need(n, what)
    local i = self.pos - self.buf_start
    self.pos = self.pos + n
    return self.buf:sub(i + 1, i + n)
end

function Reader:scalar(vt, what)
    local ct, sz = SCALAR[vt][1], SCALAR[vt][2]
    self:need(sz, what)
    local p = ffi.cast('const uint8_t *', self.buf) + (self.pos - self.buf_start)
    ffi.copy(scratch, p, sz)
    self.pos = self.pos + sz
    local v = ffi.cast(ct .. '*', scratch)[0]
    if vt == VT.u64 or vt == VT.i64 then v = tonumber(v) end
    if vt == VT.bool then
        if v > 1 then fail(self.path, 'bool value %d at offset %d (%s) is not 0 or 1', v, self.pos - 1, what) end
        return v == 1
    end
    return v
end

function Reader:str(what)
    local at = self.pos
    local n = self:scalar(VT.u64, what)
    if n > self.size - self.pos then
        fail(self.path, 'string length %d at offset %d (%s) exceeds the rest of the file (%d bytes): corrupt or truncated',
            n, at, what, self.size - self.pos)
    end
    return self:bytes(n, what)
end

function Reader:value(vt, what)
    if vt == VT.str then return self:str(what) end
    if vt == VT.array then
        local at = self.pos
        local et = self:scalar(VT.u32, what .. ' array type')
        if not (SCALAR[et] or et == VT.str) then
            fail(self.path, 'array element type %d at offset %d (%s) is invalid', et, at, what)
        end
        local n = self:scalar(VT.u64, what .. ' array length')
        local min = et == VT.str and 8 or SCALAR[et][2]
        if n * min > self.size - self.pos then
            fail(self.path, 'array of %d elements at offset %d (%s) exceeds the rest of the file: corrupt or truncated',
                n, at, what)
        end
        local out = {}
        for i = 1, n do out[i] = self:value(et, what) end
        return out, et
    end
    if not SCALAR[vt] then fail(self.path, 'invalid value type %d (%s) at offset %d', vt, what, self.pos - 4) end
    return self:scalar(vt, what)
end

local File = {}
File.__index = File

-- Parse and check a GGUF file. Returns a File: version, alignment, data_offset, file_size,
-- keys (ordered list), metadata {key = value}, kv_type {key = VT name}, array_type {key = VT
-- name of the elements}, tensors (ordered list of {name, ggml_type, type_name, ne, shape (PyTorch
-- order), offset (relative to data_offset), nbytes, dtype (ours or nil)}), tensor_index {name = info}.
function M.read(path)
    local f, err = io.open(path, 'rb')
    if not f then error('gguf: cannot open ' .. tostring(path) .. ': ' .. tostring(err), 2) end
    local size = f:seek('end')
    f:seek('set', 0)
    local r = setmetatable({ f = f, path = path, size = size, pos = 0, buf = '', buf_start = 0, buf_end = 0 }, Reader)
    local ok, res = pcall(function()
        local magic = r:scalar(VT.u32, 'magic')
        if magic ~= M.MAGIC then
            fail(path, 'not a GGUF file (magic 0x%08x, expected 0x%08x "GGUF")', magic, M.MAGIC)
        end
        local version = r:scalar(VT.u32, 'version')
        if version < 2 or version > 3 then fail(path, 'unsupported GGUF version %d (expected 2 or 3)', version) end
        local nt = r:scalar(VT.u64, 'tensor count')
        local nkv = r:scalar(VT.u64, 'kv count')
        if nt > size / 24 then fail(path, 'tensor count %d cannot fit in a file of %d bytes: truncated or corrupt', nt, size) end
        if nkv > size / 13 then fail(path, 'kv count %d cannot fit in a file of %d bytes: truncated or corrupt', nkv, size) end
        local file = setmetatable({ path = path, version = version, keys = {}, metadata = {}, kv_type = {},
                                    array_type = {}, tensors = {}, tensor_index = {}, file_size = size }, File)
        for i = 1, nkv do
            local key = r:str('key of kv ' .. i)
            if file.metadata[key] ~= nil then fail(path, 'duplicate key %s', key) end
            local at = r.pos
            local vt = r:scalar(VT.u32, 'type of ' .. key)
            if not (SCALAR[vt] or vt == VT.str or vt == VT.array) then
                fail(path, 'key %s has invalid value type %d at offset %d', key, vt, at)
            end
            local v, et = r:value(vt, key)
            file.keys[i] = key
            file.metadata[key] = v
            file.kv_type[key] = VT_NAME[vt]
            if et then file.array_type[key] = VT_NAME[et] end
        end
        local align = M.DEFAULT_ALIGNMENT
        if file.metadata['general.alignment'] ~= nil then
            align = file.metadata['general.alignment']
            if file.kv_type['general.alignment'] ~= 'u32' or align < 1 or bit.band(align, align - 1) ~= 0 then
                fail(path, 'general.alignment must be a u32 power of two, got %s %s', file.kv_type['general.alignment'],
                    tostring(align))
            end
        end
        file.alignment = align
        local expect = 0
        for i = 1, nt do
            local name = r:str('name of tensor ' .. i)
            if file.tensor_index[name] then fail(path, 'duplicate tensor name %s', name) end
            local nd = r:scalar(VT.u32, 'n_dims of ' .. name)
            if nd < 1 or nd > 4 then fail(path, 'tensor %s has %d dims (expected 1..4)', name, nd) end
            local ne, shape, nel = {}, {}, 1
            for d = 1, nd do
                ne[d] = r:scalar(VT.i64, 'ne of ' .. name)
                if ne[d] < 0 then fail(path, 'tensor %s has a negative dim %d', name, ne[d]) end
                nel = nel * ne[d]
            end
            for d = 1, nd do shape[d] = ne[nd + 1 - d] end
            local gt = r:scalar(VT.u32, 'type of ' .. name)
            local info = GT[gt]
            if not info then fail(path, 'tensor %s has unknown ggml type %d', name, gt) end
            if ne[1] % info[2] ~= 0 then
                fail(path, 'tensor %s: ne[0] = %d is not a multiple of the %s block size %d', name, ne[1], info[1], info[2])
            end
            local off = r:scalar(VT.u64, 'offset of ' .. name)
            if off % align ~= 0 then fail(path, 'tensor %s offset %d is not a multiple of the alignment %d', name, off, align) end
            if off ~= expect then fail(path, 'tensor %s has offset %d, expected %d (data must follow the info order)', name, off, expect) end
            local nbytes = nel / info[2] * info[3]
            expect = off + align_up(nbytes, align)
            local t = { name = name, ggml_type = gt, type_name = info[1], ne = ne, shape = shape, offset = off,
                        nbytes = nbytes, dtype = info[4] }
            file.tensors[i] = t
            file.tensor_index[name] = t
        end
        file.data_offset = align_up(r.pos, align)
        for _, t in ipairs(file.tensors) do
            -- llama.cpp reads the data blob with every tensor's padding, the last one's included
            local e = file.data_offset + t.offset + align_up(t.nbytes, align)
            if e > size then
                fail(path, 'truncated: tensor %s data with padding [%d, %d) extends past the end of the file (%d bytes)', t.name,
                    file.data_offset + t.offset, e, size)
            end
        end
        return file
    end)
    f:close()
    if not ok then error(res, 0) end
    return res
end

-- Load tensor `name` as a CPU Tensor in its own dtype (PyTorch shape order).
function File:tensor(name)
    local t = self.tensor_index[name]
    if not t then error('gguf: ' .. self.path .. ': no tensor named ' .. tostring(name), 2) end
    if not t.dtype then
        error(string.format('gguf: %s: tensor %s has type %s, which nanochat cannot load', self.path, name, t.type_name), 2)
    end
    local sh = ffi.new('int64_t[?]', #t.shape, t.shape)
    local p = C.nc_tensor_new_from_file(self.path, self.data_offset + t.offset, t.nbytes, core.dtype_ids[t.dtype],
        #t.shape, sh)
    return Tensor.wrap(core.check_ptr(p, 'gguf: ' .. self.path .. ': tensor ' .. name))
end

-- Load tensor `name` converted to f32 (TQ blocks dequantized: (code - 1) * d).
function File:tensor_f32(name)
    local t = self:tensor(name)
    if t:dtype() == 'f32' then return t end
    return t:to('f32')
end

return M
