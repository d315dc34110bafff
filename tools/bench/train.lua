-- tools/bench/train.lua — training-step throughput of the ternary GPT: tokens/s, MFU against the
-- sgemm peak measured in the same run, peak RSS, byte growth across steps, and PyTorch eager on
-- the same model, threads and batch (tools/torch_ref.py --bench) when torch is installed.
--
--   ./nanochat tools/bench/train.lua [configs=tiny,small] [B=8] [T=256] [steps=4] [warmup=2] [threads=2]
--                                    [torch=1]   (torch=0: skip the PyTorch run)
--                                    [amx=both|on|off] [head=fp32|bf16]
--
-- A step is forward + backward + a fused AdamW step (nc.optim.adamw) on random tokens.
-- MFU = tokens/s * model:flops_per_token(T) / peak, peak = the median GFLOP/s of a raw
-- 1024 x 1024 x 1024 sgemm (nc.matmul on contiguous f32) in this process. Byte growth: nc's host
-- bytes in use after the last step minus after the first timed step (0 = nothing leaks).
-- amx (default both when nc.cpu_gemm_fast(), else off): each config runs with the model's matmul =
-- 'fp32' (sgemm) and/or 'auto' (the BitLinear matmuls as int8 forward, bf16 backward on the hardware
-- GEMM backend, nc.gemm_backend(): AMX tiles, or the AVX-512 BF16 / VNNI kernels; rows labelled
-- 'amx' or 'avx512' after it; layers/bitlinear.lua) with the head in f32 (head_matmul = 'fp32'), same process; head=bf16 (the
-- default with AMX) adds the row `amx+head` = the model defaults (matmul = 'auto', head_matmul =
-- 'auto': during training steps the fp32 LM head runs through nc.linear_bf16 as well). MFU keeps its definition against the sgemm peak; the AMX
-- rows also print "MFU vs AMX bf16 peak": the same FLOPs against the median GFLOP/s of a raw
-- 1024^3 nc_gemm_bf16 (packing included) measured here, the honest ceiling for that path.
-- Last line: JSON with tokens_per_s, mfu (the first config; its AMX run when there is one),
-- vs_torch (ours / PyTorch's, null without torch), peak_rss_mb, and per-config numbers (key
-- name or name+amx).
local nc = require 'nanochat'
local here = debug.getinfo(1, 'S').source:match('^@(.*/)') or './'
local L = dofile(here .. 'lib.lua')
local args = L.parse_args(rawget(_G, 'ARGS') or arg)

local B, T = tonumber(args.B) or 8, tonumber(args.T) or 256
local steps, warmup = tonumber(args.steps) or 4, tonumber(args.warmup) or 2
local threads = tonumber(args.threads) or 2
local configs = {}
for c in tostring(args.configs or 'tiny,small'):gmatch('[^,]+') do configs[#configs + 1] = c end
nc.set_num_threads(threads)
local amx_mode = tostring(args.amx or (nc.cpu_gemm_fast() and 'both' or 'off'))
if amx_mode ~= 'both' and amx_mode ~= 'on' and amx_mode ~= 'off' then
    error('train bench: amx must be both, on or off, got ' .. amx_mode)
end
if amx_mode ~= 'off' and not nc.cpu_gemm_fast() then
    error('train bench: amx=' .. amx_mode .. ' but the GEMM backend is ' .. nc.gemm_backend() .. ' (' .. nc.amx_status() .. ')')
end
local lp = nc.cpu_amx() and 'amx' or 'avx512'   -- the row label of the hardware GEMM path
local head = tostring(args.head or (nc.cpu_gemm_fast() and 'bf16' or 'fp32'))
if head ~= 'fp32' and head ~= 'bf16' then error('train bench: head must be fp32 or bf16, got ' .. head) end
-- { label, cfg.matmul, cfg.head_matmul }; head=bf16 adds an AMX row with the LM head in bf16 too
local variants = {}
if amx_mode ~= 'on' then variants[#variants + 1] = { 'fp32', 'fp32', 'fp32' } end
if amx_mode ~= 'off' then
    variants[#variants + 1] = { lp, 'auto', 'fp32' }
    if head == 'bf16' then variants[#variants + 1] = { lp .. '+head', 'auto', 'auto' } end
end

local function peak_rss_mb()
    local f = io.open('/proc/self/status')
    if not f then return nil end
    local s = f:read('*a')
    f:close()
    local kb = s:match('VmHWM:%s*(%d+)')
    return kb and tonumber(kb) / 1024
end

-- the peaks, measured here: the AMX bf16 one first (OpenBLAS's pthread workers keep spinning for a
-- while after each sgemm and would take a core from the OpenMP threads of the AMX GEMM)
local a, b = nc.randn { 1024, 1024 }, nc.randn { 1024, 1024 }
local amx_peak
if amx_mode ~= 'off' then   -- the AMX bf16 peak: raw 1024^3 nc_gemm_bf16 (f32 in/out, packing included)
    local o = nc.empty { 1024, 1024 }
    local s = L.time(function() nc.core.check(nc.C.nc_gemm_bf16(o._c, a._c, b._c, 0, 0, nil, 0, 1, 0), 'gemm_bf16') end,
        { warmup = 2, reps = 7 })
    amx_peak = 2 * 1024 ^ 3 / s
end
local gemm_s = L.time(function() nc.no_grad(function() return a:matmul(b) end) end, { warmup = 2, reps = 7 })
local peak = 2 * 1024 ^ 3 / gemm_s
a, b = nil, nil

local function torch_bench(name)
    if tostring(args.torch) == '0' then return nil end
    local ok = os.execute('python3 -c "import torch, safetensors" >/dev/null 2>&1')
    if ok ~= 0 and ok ~= true then return nil end
    -- PyTorch runs with the environment the user gave (without the launcher's thread-pool settings)
    local cmd = string.format(require('nanochat.core').unset_pool_env() .. ' python3 tools/torch_ref.py --bench --config %s --B %d --T %d --threads %d --steps %d --warmup %d 2>/dev/null',
        name, B, T, threads, steps, warmup)
    local p = io.popen(cmd)
    local last
    for line in p:lines() do last = line end
    p:close()
    local ok2, obj = pcall(function() return require('dkjson').decode(last or '') end)
    if ok2 and type(obj) == 'table' then return obj.tokens_per_s end
end

local rows, results = {}, {}
local first
for _, name in ipairs(configs) do
  local torch_tps = torch_bench(name)
  for _, mm in ipairs(variants) do
    local cfg = nc.models.config(name)
    cfg.seq_len = math.max(cfg.seq_len or T, T)
    cfg.matmul, cfg.head_matmul = mm[2], mm[3]
    local model = nc.models.gpt.new(cfg)
    local opt = nc.optim.adamw(model:parameters(), { lr = 1e-3, betas = { 0.9, 0.95 } })
    local g = nc.generator(1)
    local toks = nc.rand({ B, T + 1 }, { generator = g, lo = 0, hi = cfg.vocab_size }):to('i64')
    local x, y = toks:narrow(1, 0, T):contiguous(), toks:narrow(1, 1, T):contiguous()
    local times, bytes0 = {}, nil
    for i = 1, warmup + steps do
        collectgarbage()
        local t0 = L.now()
        local loss = model:forward(x, y)
        loss:backward()
        opt:step()
        opt:zero_grad()
        local _ = loss:item()
        local dt = L.now() - t0
        if i > warmup then times[#times + 1] = dt end
        collectgarbage()
        if i == warmup + 1 then bytes0 = nc.mem_stats().host_bytes end
    end
    local st = nc.mem_stats()
    local growth = st.host_bytes - bytes0
    local med = L.median(times)
    local tps = B * T / med
    local mfu = tps * model:flops_per_token(T) / peak
    local amx = mm[1] ~= 'fp32'
    local mfu_amx = amx and tps * model:flops_per_token(T) / amx_peak or 0 / 0
    local key = amx and (name .. '+' .. mm[1]) or name
    results[key] = { tokens_per_s = L.round(tps, 1), step_s = L.round(med, 4), mfu = L.round(mfu, 4),
                     mfu_vs_amx_peak = amx and L.round(mfu_amx, 4) or nil, matmul = mm[1],
                     torch_tokens_per_s = torch_tps and L.round(torch_tps, 1) or 0 / 0,
                     vs_torch = torch_tps and L.round(tps / torch_tps, 3) or 0 / 0,
                     byte_growth = growth, params = model:num_params() }
    if name == configs[1] then first = results[key] end
    rows[#rows + 1] = { name, mm[1], model:num_params() / 1e6, med, tps, 100 * mfu,
                        100 * mfu_amx, torch_tps or 0 / 0, torch_tps and tps / torch_tps or 0 / 0, growth }
  end
end

print(string.format('training step (forward + backward + AdamW), B=%d T=%d, %d threads, kernel %s; sgemm peak %.1f GFLOP/s%s',
    B, T, threads, nc.cpu_kernel(), peak / 1e9,
    amx_peak and string.format('; %s bf16 peak %.1f GFLOP/s (raw 1024^3 nc_gemm_bf16)', nc.gemm_backend(), amx_peak / 1e9) or ''))
L.print_table({ 'config', 'matmul', 'M params', 'step s', 'tok/s', 'MFU % (sgemm peak)', 'MFU % (bf16 peak)',
                'torch tok/s', 'vs torch', 'byte growth' }, rows,
    { '%s', '%s', '%.2f', '%.3f', '%.0f', '%.1f', '%.1f', '%.0f', '%.2f', '%d' })
print(L.json {
    bench = 'train', B = B, T = T, threads = threads, peak_gflops = L.round(peak / 1e9, 1),
    amx_peak_gflops = amx_peak and L.round(amx_peak / 1e9, 1) or nil, gemm_backend = nc.gemm_backend(),
    tokens_per_s = first.tokens_per_s, mfu = first.mfu, vs_torch = first.vs_torch,
    peak_rss_mb = L.round(peak_rss_mb() or 0, 1), byte_growth = first.byte_growth, configs = results,
})
