-- tools/bench/optim_ns.lua — one Muon step over the matrices of a GPT config (default
-- configs/models/tiny.lua: per layer wq, wk, wv, wo, w1, w2), timed per Newton-Schulz variant,
-- interleaved in the same run (rep k: every variant in turn), medians; plus each variant's
-- agreement with the f32 update.
--
--   ./nanochat tools/bench/optim_ns.lua [config=configs/models/tiny.lua] [reps=15] [threads=0]
--        [variants=f32-standard,f32,bf16-standard,bf16]
--
-- Variants: f32-standard = ns_dtype 'f32' (OpenBLAS sgemm / ssyrk), standard form (the reference);
-- f32 = the same products with ns_form 'auto' (Gram where the long side is >= 3x the short one:
-- what Muon runs on a CPU without a hardware bf16 GEMM); bf16-standard = bf16 products
-- (nc_gemm_bf16: AMX / AVX-512 BF16), standard form; bf16-gram = bf16, Gram form on every
-- non-square matrix; bf16 = bf16 with ns_form 'auto' (the default on such a CPU).
-- Last line: JSON with the median ms per step per variant, bf16_speedup (f32 ms / bf16 ms),
-- gram_speedup (bf16-standard ms / bf16 ms), gram_speedup_f32 (f32-standard ms / f32 ms) and cos
-- (per variant: cosine of its parameter update to the f32-standard one, one step from the same state).
local nc = require 'nanochat'
local here = debug.getinfo(1, 'S').source:match('^@(.*/)') or './'
local L = dofile(here .. 'lib.lua')

local args = L.parse_args()
local cfg = { config = 'configs/models/tiny.lua', reps = 15, threads = 0, variants = 'f32-standard,f32,bf16-standard,bf16' }
for k, v in pairs(args) do if cfg[k] ~= nil then cfg[k] = v end end
if cfg.threads > 0 then nc.set_num_threads(cfg.threads) end
local mc = dofile(cfg.config)
local d, H, Hkv, dff = mc.d_model, mc.n_head, mc.n_kv_head, mc.d_ff
local D = math.floor(d / H)
local shapes = {}
for _ = 1, mc.n_layer do
    for _, s in ipairs { { H * D, d }, { Hkv * D, d }, { Hkv * D, d }, { d, H * D }, { dff, d }, { d, dff } } do
        shapes[#shapes + 1] = s
    end
end
local VARIANTS = {
    ['f32-standard'] = { ns_dtype = 'f32', ns_form = 'standard' },
    f32 = { ns_dtype = 'f32', ns_form = 'auto' },
    ['bf16-standard'] = { ns_dtype = 'bf16', ns_form = 'standard' },
    ['bf16-gram'] = { ns_dtype = 'bf16', ns_form = 'gram' },
    bf16 = { ns_dtype = 'bf16', ns_form = 'auto' },
}
local dtypes = {}   -- the variant names, in order
for w in tostring(cfg.variants):gmatch('[^,]+') do
    if not VARIANTS[w] then error('optim_ns: unknown variant ' .. w .. ' (f32-standard, f32, bf16-standard, bf16-gram, bf16)') end
    dtypes[#dtypes + 1] = w
end

nc.manual_seed(1)
local params, grads = {}, {}
for i, s in ipairs(shapes) do
    params[i] = nc.randn(s, { std = 0.02 }):requires_grad_(true)
    grads[i] = nc.randn(s)
end
local function make(dt)
    local v = VARIANTS[dt]
    return nc.optim.muon(params, { lr = 0.02, ns_dtype = v.ns_dtype, ns_form = v.ns_form })
end
local opts = {}
for _, dt in ipairs(dtypes) do opts[dt] = make(dt) end

local function step(opt)
    for i, p in ipairs(params) do p.grad = grads[i] end
    local t0 = L.now()
    opt:step()
    return L.now() - t0
end

-- agreement: one step of each variant from the same parameters and zero momentum, against f32-standard
local cos = {}
do
    local p0 = {}
    for i, p in ipairs(params) do p0[i] = p:clone() end
    local delta = {}
    for _, dt in ipairs { 'f32-standard', unpack(dtypes) } do
        if not delta[dt] then
            step(make(dt))
            delta[dt] = {}
            for i, p in ipairs(params) do delta[dt][i] = (p - p0[i]); p:copy_(p0[i]) end
        end
    end
    for _, dt in ipairs(dtypes) do
        local dot, na, nb = 0, 0, 0
        for i = 1, #params do
            dot = dot + (delta['f32-standard'][i] * delta[dt][i]):sum():item()
            na = na + (delta['f32-standard'][i] * delta['f32-standard'][i]):sum():item()
            nb = nb + (delta[dt][i] * delta[dt][i]):sum():item()
        end
        cos[dt] = dot / math.sqrt(na * nb)
    end
end

local times = {}
for _, dt in ipairs(dtypes) do times[dt] = {}; step(opts[dt]) end   -- warmup
for _ = 1, cfg.reps do
    for _, dt in ipairs(dtypes) do
        collectgarbage('step')
        local t = times[dt]
        t[#t + 1] = step(opts[dt])
    end
end
print(string.format('Muon step over %d matrices of %s (d=%d L=%d d_ff=%d), %d threads, %d reps interleaved',
    #shapes, cfg.config, d, mc.n_layer, dff, nc.get_num_threads(), cfg.reps))
local rows, out = {}, { bench = 'optim_ns', config = cfg.config, threads = nc.get_num_threads(), ms = {} }
out.cos = {}
for _, dt in ipairs(dtypes) do
    local ms = 1e3 * L.median(times[dt])
    out.ms[dt] = L.round(ms, 3)
    out.cos[dt] = L.round(cos[dt], 6)
    rows[#rows + 1] = { dt, ms, 1e3 * math.min(unpack(times[dt])), cos[dt] }
end
L.print_table({ 'variant', 'median ms', 'min ms', 'update cos to f32-standard' }, rows, { nil, '%.2f', '%.2f', '%.6f' })
if out.ms.f32 and out.ms.bf16 then out.bf16_speedup = L.round(out.ms.f32 / out.ms.bf16, 3) end
if out.ms['bf16-standard'] and out.ms.bf16 then out.gram_speedup = L.round(out.ms['bf16-standard'] / out.ms.bf16, 3) end
if out.ms['f32-standard'] and out.ms.f32 then out.gram_speedup_f32 = L.round(out.ms['f32-standard'] / out.ms.f32, 3) end
print(L.json(out))
