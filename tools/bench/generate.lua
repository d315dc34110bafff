-- tools/bench/generate.lua — how fast does nc.generate decode, against the memory roofline?
--
-- For each model config (untrained weights; speed does not depend on values): prefill a prompt,
-- then decode new tokens one at a time with nc.generate (top-k sampling), wall clock. Baseline
-- measured in the same run: a threaded memcpy's bandwidth (bytes read + written per second).
-- Decoding one token must read every fp32 matmul weight once (4 N bytes, N = matmul params), so
-- roofline tokens/s = bandwidth / (4 N); `of_roofline` = measured / roofline. (The packed 2-bit
-- ternary engine, a later issue, moves the roofline up 16x.)
-- Prints a table and, as the LAST line, JSON {"<config>_tokens_per_s", "<config>_of_roofline",
-- "memcpy_gb_s", "threads"}.
--
-- Usage: ./nanochat tools/bench/generate.lua [configs=tiny,small] [prompt=64] [new=128] [reps=3] [threads=N]
if not package.path:find('lua/?/init.lua', 1, true) then
    package.path = 'lua/?.lua;lua/?/init.lua;' .. package.path
end
local here = (debug.getinfo(1, 'S').source:match('^@(.*/)') or './')
local L = dofile(here .. 'lib.lua')
local args = L.parse_args()
local nc = require 'nanochat'

local threads = tonumber(args.threads) or math.min(L.ncpus(), 2)
nc.set_num_threads(threads)
threads = nc.get_num_threads()
local configs = {}
for name in tostring(args.configs or 'tiny,small'):gmatch('[^,]+') do configs[#configs + 1] = name end
local P, NEW, REPS = tonumber(args.prompt) or 64, tonumber(args.new) or 128, tonumber(args.reps) or 3

-- baseline: threaded memcpy of 256 MiB (beyond any cache)
local bw
do
    local n = 256 * 1024 * 1024
    local src, dst = nc.ones { n / 4 }, nc.zeros { n / 4 }
    local cp = L.par_memcpy()
    local function run()
        if cp then cp(nc.C.nc_tensor_data(dst._c), nc.C.nc_tensor_data(src._c), n, threads)
        else dst:copy_(src) end
    end
    local ok = pcall(run)
    if not ok then cp = nil end
    local s = L.time(run, { warmup = 1, reps = 5 })
    bw = 2 * n / s
end

local rows, out = {}, { memcpy_gb_s = L.round(bw / 1e9, 2), threads = threads }
for _, name in ipairs(configs) do
    local model = nc.models.gpt.new(nc.models.config(name))
    local prompt = {}
    for i = 1, P do prompt[i] = (i * 7919) % model.cfg.vocab_size end
    local per = {}
    for r = 1, REPS do
        local it = nc.generate(model, prompt, { max_tokens = NEW + 1, temperature = 0.8, top_k = 50, seed = r })
        it()   -- prefill + the first token are not decode time
        local t0, n = L.now(), 0
        for _ in it do n = n + 1 end
        per[r] = (L.now() - t0) / n
    end
    local s = L.median(per)
    local bytes = 4 * model:param_counts().matmul
    local roof = bw / bytes
    rows[#rows + 1] = { name, model:num_params() / 1e6, bytes / 1e6, 1 / s, roof, (1 / s) / roof }
    out[name .. '_tokens_per_s'] = L.round(1 / s, 2)
    out[name .. '_of_roofline'] = L.round((1 / s) / roof, 3)
end
print(string.format('nc.generate decode, %d-token prompt, %d new tokens, top-k 50, %d threads, median of %d; memcpy %.1f GB/s',
    P, NEW, threads, REPS, bw / 1e9))
L.print_table({ 'config', 'params (M)', 'fp32 matmul MB', 'tokens/s', 'roofline tok/s', 'of roofline' }, rows,
    { nil, '%.2f', '%.1f', '%.1f', '%.1f', '%.3f' })
print(L.json(out))
