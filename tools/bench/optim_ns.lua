-- tools/bench/optim_ns.lua — one Muon step over the matrices of a GPT config (default
-- configs/models/tiny.lua: per layer wq, wk, wv, wo, w1, w2), timed with the Newton-Schulz
-- products in f32 (OpenBLAS sgemm) and in bf16 (nc_gemm_bf16: AMX / AVX-512 BF16), interleaved
-- in the same run (rep k times f32 then bf16), medians; plus the agreement of the two updates.
--
--   ./nanochat tools/bench/optim_ns.lua [config=configs/models/tiny.lua] [reps=15] [threads=0]
--        [dtypes=f32,bf16]
--
-- Last line: JSON with the median ms per step per dtype, bf16_speedup (f32 ms / bf16 ms) and
-- update_cos (cosine of the bf16 and f32 parameter updates of one step from the same state).
local nc = require 'nanochat'
local here = debug.getinfo(1, 'S').source:match('^@(.*/)') or './'
local L = dofile(here .. 'lib.lua')

local args = L.parse_args()
local cfg = { config = 'configs/models/tiny.lua', reps = 15, threads = 0, dtypes = 'f32,bf16' }
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
local dtypes = {}
for w in tostring(cfg.dtypes):gmatch('[^,]+') do dtypes[#dtypes + 1] = w end

nc.manual_seed(1)
local params, grads = {}, {}
for i, s in ipairs(shapes) do
    params[i] = nc.randn(s, { std = 0.02 }):requires_grad_(true)
    grads[i] = nc.randn(s)
end
local opts = {}
for _, dt in ipairs(dtypes) do opts[dt] = nc.optim.muon(params, { lr = 0.02, ns_dtype = dt }) end

local function step(opt)
    for i, p in ipairs(params) do p.grad = grads[i] end
    local t0 = L.now()
    opt:step()
    return L.now() - t0
end

-- agreement: one step of each dtype from the same parameters and zero momentum
local cos
if opts.f32 and opts.bf16 then
    local p0 = {}
    for i, p in ipairs(params) do p0[i] = p:clone() end
    local delta = {}
    for _, dt in ipairs { 'f32', 'bf16' } do
        local o = nc.optim.muon(params, { lr = 0.02, ns_dtype = dt })
        step(o)
        delta[dt] = {}
        for i, p in ipairs(params) do delta[dt][i] = (p - p0[i]); p:copy_(p0[i]) end
    end
    local dot, na, nb = 0, 0, 0
    for i = 1, #params do
        dot = dot + (delta.f32[i] * delta.bf16[i]):sum():item()
        na = na + (delta.f32[i] * delta.f32[i]):sum():item()
        nb = nb + (delta.bf16[i] * delta.bf16[i]):sum():item()
    end
    cos = dot / math.sqrt(na * nb)
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
for _, dt in ipairs(dtypes) do
    local ms = 1e3 * L.median(times[dt])
    out.ms[dt] = L.round(ms, 3)
    rows[#rows + 1] = { dt, ms, 1e3 * math.min(unpack(times[dt])) }
end
L.print_table({ 'ns_dtype', 'median ms', 'min ms' }, rows, { nil, '%.2f', '%.2f' })
if out.ms.f32 and out.ms.bf16 then out.bf16_speedup = L.round(out.ms.f32 / out.ms.bf16, 3) end
if cos then out.update_cos = L.round(cos, 6); print(string.format('update cosine bf16 vs f32: %.6f', cos)) end
print(L.json(out))
