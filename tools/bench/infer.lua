-- tools/bench/infer.lua — how fast are the packed ternary kernels, against this machine's limits?
--
-- Measured in one run:
--   1. DRAM read bandwidth: nc_mem_read_sum over a `mb` MiB buffer (default 1024), 1 and 2 threads.
--   2. Ternary GEMV (one activation row, int8 x 2-bit, kernels/cpu/ternary_vnni.c or ternary_avx2.c:
--      the row kernel the selection runs, JSON `ternary_kernel`) in G weights/s
--      at the FFN shapes of 10M / 50M / 125M-parameter models (d = 256 / 512 / 768, up (4d, d) and
--      down (d, 4d)) plus 2048 x 2048 (bitnet.cpp's published kernel shape), 1 and 2 threads,
--      with the matrix in cache (the same matrix again and again) and out of cache (a ring of
--      copies totalling `ring_mb` MiB, default 256, every call on a cold matrix). Out-of-cache
--      rates are also given as a fraction of the measured DRAM bandwidth (roofline: 2.03 bits per
--      weight incl. the f32 row scales). When the selected row kernel is not the AVX2 one, the
--      in-cache 1-thread GEMV and the 125M engine decode are also timed with the AVX2 kernel in
--      the same run (JSON *_avx2 keys, gemv_vs_avx2_core; decode samples interleaved with the
--      selected kernel's: decode_interleaved_*, decode_vs_avx2_{1t,2t}, decode_vs_avx2_i8_head_*).
--   3. The fp32 baseline: OpenBLAS cblas_sgemv on the same shapes, in and out of cache.
--   4. (run first, on fresh memory) Decode of all linear layers of the 125M shape (12 layers x q, k, v, o (d, d), up (4d, d),
--      down (d, 4d); int8 quantization of each input included): tokens/s, fraction of the DRAM
--      roofline (packed bytes per token / bandwidth) and the speedup over the same decode with
--      fp32 sgemv. Attention, norms, embeddings and the LM head are not in it (item 6
--      is the whole engine). The packed weights (21 MB) fit this machine's 32 MiB L3, so the fraction can
--      exceed 1 on a quiet machine.
--   5. Prefill GEMM: 64 activation rows x the 125M up matrix (quantization included) vs sgemm.
--   6. The packed engine (nc.pack) end to end at the 10M / 50M / 125M shapes: decode and prefill
--      tokens/s, 1 and 2 threads; decode_roofline_frac (125M, 2 threads, engine weight bytes per
--      token / DRAM bandwidth) and decode_vs_fp32 (vs the fp32 training model's forward_cached).
--      Item 4's keys are decode_linears_* (linear layers only).
--   6b. Continuous batching on the 125M engine (tools/bench/batch.lua): aggregate decode tokens/s
--      of 1, 2, 4 concurrent sequences at different positions (64 / 48 / 32 / 16), one fused
--      nc_engine_decode per step (engine:decode_rows) and through engine:batch's step (incl. the
--      per-sequence Lua sampling), 1 and 2 threads; JSON batch_decode_tok_s_{1,2,4}seq_{1,2}t,
--      batch_step_tok_s_*, batch_speedup_4seq_{1,2}t.
--   7. LoopLM on the engine (tools/bench/arch_loop.lua engine=1, int8 head): decode with the q-exit
--      early stop (q = 0.5, hand-set random gate) vs q = 1 (always T = 3 loops), the e3 loop shape
--      at d 256 and d 768, 1 thread; JSON looplm_engine_early_exit_speedup_d256 / _d768.
-- The machine is shared: every number is the median of `reps` samples (best also printed).
-- Prints tables and, as the LAST line, one JSON object.
--
-- Usage: ./nanochat tools/bench/infer.lua [reps=5] [quick=1] [mb=1024] [ring_mb=256] [kernel=auto]
--   kernel: auto | avx512 | avx2 | scalar (nc.set_cpu_kernel; NC_KERNEL=... works too)
--    or: LUA_PATH='lua/?.lua;lua/?/init.lua;;' luajit tools/bench/infer.lua ...
if not package.path:find('lua/?/init.lua', 1, true) then
    package.path = 'lua/?.lua;lua/?/init.lua;' .. package.path
end
local ffi = require 'ffi'
local here = (debug.getinfo(1, 'S').source:match('^@(.*/)') or './')
local L = dofile(here .. 'lib.lua')
local args = L.parse_args()
local nc = require 'nanochat'
local C = nc.C
local infer = nc.infer

pcall(ffi.cdef, [[
void cblas_sgemv(int order, int trans, int m, int n, float alpha, const float *a, int lda,
                 const float *x, int incx, float beta, float *y, int incy);
void openblas_set_num_threads(int n);
]])

if args.kernel then nc.set_cpu_kernel(tostring(args.kernel)) end
local KERNEL, TKERNEL = nc.cpu_kernel(), infer.kernel()
-- the AVX2 row kernel as the in-run baseline, when another one is selected and this CPU has AVX2
local compare_avx2 = TKERNEL ~= 'avx2' and TKERNEL ~= 'scalar' and pcall(nc.set_cpu_kernel, 'avx2')
nc.set_cpu_kernel(KERNEL)
-- fn() with the AVX2 kernel selected
local function on_avx2(fn)
    nc.set_cpu_kernel('avx2')
    local ok, a, b = pcall(fn)
    nc.set_cpu_kernel(KERNEL)
    if not ok then error(a, 0) end
    return a, b
end
print(string.format('kernel %s, packed ternary row kernel %s%s', KERNEL, TKERNEL,
    compare_avx2 and ' (AVX2 row kernel timed alongside)' or ''))

local quick = args.quick == 1 or args.quick == true
local reps = tonumber(args.reps) or (quick and 3 or 5)
local stream_mb = tonumber(args.mb) or (quick and 256 or 1024)
local ring_mb = tonumber(args.ring_mb) or (quick and 96 or 256)
local target = quick and 0.01 or 0.03
local THREADS = { 1, 2 }

local function set_threads(n)
    nc.set_num_threads(n)
    pcall(function() C.openblas_set_num_threads(n) end)
end

-- median and best (min) seconds of `reps` samples, each calling fn `inner` times
local function timeit(fn, inner)
    inner = inner or L.calibrate(fn, target, 100000)
    local _, st = L.time(fn, { inner = inner, reps = reps, warmup = 1 })
    return st.median, st.min
end

-- ---- 1. DRAM bandwidth ---------------------------------------------------------------------------
local nbytes = stream_mb * 1048576
local sbuf = nc.Tensor.empty({ nbytes }, 'u8'):fill_(1)
local sptr = C.nc_tensor_data(sbuf._c)
local bw = {}
local rows = {}
for _, th in ipairs(THREADS) do
    local med, best = timeit(function() C.nc_mem_read_sum(sptr, nbytes, th) end, 1)
    bw[th] = { median = nbytes / med / 1e9, best = nbytes / best / 1e9 }
    rows[#rows + 1] = { th, bw[th].median, bw[th].best }
end
sbuf = nil
collectgarbage('collect')
nc.mem_trim()
print(string.format('DRAM read bandwidth (%d MiB buffer)', stream_mb))
L.print_table({ 'threads', 'GB/s median', 'GB/s best' }, rows, { '%d', '%.1f', '%.1f' })
print()

-- ---- 4. decode of all linear layers, 125M shape ----------------------------------------------------------
local d, nl = 768, 12
local layers = {}
local lbytes = 0
for l = 1, nl do
    local g = function(i) return { generator = nc.generator(l * 100 + i), std = 0.02 } end
    local mats = { q = infer.pack(nc.randn({ d, d }, g(1))), k = infer.pack(nc.randn({ d, d }, g(2))),
                   v = infer.pack(nc.randn({ d, d }, g(3))), o = infer.pack(nc.randn({ d, d }, g(4))),
                   up = infer.pack(nc.randn({ 4 * d, d }, g(5))), down = infer.pack(nc.randn({ d, 4 * d }, g(6))) }
    for _, P in pairs(mats) do lbytes = lbytes + P:nbytes() end
    layers[l] = mats
end
local x = nc.randn({ 1, d }, { generator = nc.generator(5) })
local h = nc.randn({ 1, 4 * d }, { generator = nc.generator(6) })
local ad, a4 = infer.quant_act(x), infer.quant_act(h)
local yq, yk, yv, yo = {}, {}, {}, {}
local yd = nc.Tensor.empty({ 1, d }, 'f32')
local yu = nc.Tensor.empty({ 1, 4 * d }, 'f32')
local function mm(y, a, P) C.nc_ternary_matmul(y._c, a.q._c, a.scale._c, a.sum._c, P.codes._c, P.scale._c) end
local function qa(a, t) C.nc_ternary_quant_act(a.q._c, a.scale._c, a.sum._c, t._c, 1e-5) end
local function decode_token()
    for l = 1, nl do
        local m = layers[l]
        qa(ad, x)
        mm(yd, ad, m.q); mm(yd, ad, m.k); mm(yd, ad, m.v)
        qa(ad, yd)
        mm(yd, ad, m.o)
        qa(ad, x)
        mm(yu, ad, m.up)
        qa(a4, yu)
        mm(yd, a4, m.down)
    end
end
-- fp32: the same 72 matrices as f32 (340 MB), sgemv
local f32m = {}
local fbytes = 0
for l = 1, nl do
    local t = {}
    for i, shp in ipairs { { d, d }, { d, d }, { d, d }, { d, d }, { 4 * d, d }, { d, 4 * d } } do
        local W = nc.Tensor.empty(shp, 'f32'):fill_(0.01)
        t[i] = { W = W, p = ffi.cast('float *', C.nc_tensor_data(W._c)), n = shp[1], k = shp[2] }
        fbytes = fbytes + 4 * shp[1] * shp[2]
    end
    f32m[l] = t
end
local fx = ffi.new('float[?]', 4 * d, 0.5)
local fy = ffi.new('float[?]', 4 * d)
local function decode_f32()
    for l = 1, nl do
        for _, m in ipairs(f32m[l]) do C.cblas_sgemv(101, 111, m.n, m.k, 1, m.p, m.k, fx, 1, 0, fy, 1) end
    end
end
local dec = {}
rows = {}
for _, th in ipairs(THREADS) do
    set_threads(th)
    local med, best = timeit(decode_token)
    local fmed = timeit(decode_f32)
    dec[th] = { tok_s = 1 / med, tok_s_best = 1 / best, f32_tok_s = 1 / fmed,
                roof = (lbytes / med) / (bw[th].median * 1e9), vs_f32 = fmed / med }
    rows[#rows + 1] = { th, dec[th].tok_s, dec[th].tok_s_best, dec[th].roof, dec[th].f32_tok_s, dec[th].vs_f32 }
end
print(string.format('Decode, all linear layers of the 125M shape (%d layers, %.1f MB packed, %.0f MB f32)', nl,
    lbytes / 1e6, fbytes / 1e6))
L.print_table({ 'threads', 'tok/s med', 'tok/s best', 'roofline', 'f32 tok/s', 'vs f32' }, rows,
    { '%d', '%.0f', '%.0f', '%.2f', '%.0f', '%.1fx' })
print()

layers, f32m = nil, nil
collectgarbage('collect')
nc.mem_trim()

-- ---- 2./3. GEMV in and out of cache ------------------------------------------------------------------
local BYTES_PER_W = 0.25   -- + 4 bytes per row (scale), added below

local function packed_ring(P, copies)
    local n, rb = P.out_features, P.kpad / 4
    local big = nc.Tensor.empty({ n * copies, rb }, 'u8')
    local src = C.nc_tensor_data(P.codes._c)
    local dst = ffi.cast('uint8_t *', C.nc_tensor_data(big._c))
    for c = 0, copies - 1 do ffi.copy(dst + c * n * rb, src, n * rb) end
    local views = {}
    for c = 1, copies do views[c] = big:narrow(0, (c - 1) * n, n) end
    return big, views
end

local function f32_ring(n, k, copies)
    local big = nc.Tensor.empty({ copies * n, k }, 'f32'):fill_(0.01)
    local ptrs = {}
    local base = ffi.cast('float *', C.nc_tensor_data(big._c))
    for c = 1, copies do ptrs[c] = base + (c - 1) * n * k end
    return big, ptrs
end

local shapes = {
    { 'd256 up', '10M', 1024, 256 }, { 'd256 down', '10M', 256, 1024 },
    { 'd512 up', '50M', 2048, 512 }, { 'd512 down', '50M', 512, 2048 },
    { 'd768 up', '125M', 3072, 768 }, { 'd768 down', '125M', 768, 3072 },
    { '2048x2048', '-', 2048, 2048 },
}
local res = {}
rows = {}
for _, sh in ipairs(shapes) do
    local label, model, N, K = sh[1], sh[2], sh[3], sh[4]
    local P = infer.pack(nc.randn({ N, K }, { generator = nc.generator(N * 7 + K) }))
    local a = infer.quant_act(nc.randn({ 1, K }, { generator = nc.generator(K) }))
    local y = nc.Tensor.empty({ 1, N }, 'f32')
    local pbytes = N * K * BYTES_PER_W + 4 * N
    local copies = math.max(2, math.ceil(ring_mb * 1048576 / pbytes))
    local big, views = packed_ring(P, copies)
    local vc = {}
    for i, v in ipairs(views) do vc[i] = v._c end
    local yc, qc, sc, smc, gc = y._c, a.q._c, a.scale._c, a.sum._c, P.scale._c
    local pc = P.codes._c
    local W32 = nc.Tensor.empty({ N, K }, 'f32'):fill_(0.01)
    local w32 = ffi.cast('float *', C.nc_tensor_data(W32._c))
    local x32 = ffi.new('float[?]', K, 0.5)
    local y32 = ffi.new('float[?]', N)
    local fcopies = math.max(2, math.ceil(ring_mb * 1048576 / (4 * N * K)))
    local fbig, fptrs = f32_ring(N, K, fcopies)
    local r = { label = label, model = model, N = N, K = K }
    for _, th in ipairs(THREADS) do
        set_threads(th)
        local med, best = timeit(function() C.nc_ternary_matmul(yc, qc, sc, smc, pc, gc) end)
        r['in_' .. th] = { N * K / med / 1e9, N * K / best / 1e9 }
        if compare_avx2 and th == 1 then
            med = on_avx2(function() return timeit(function() C.nc_ternary_matmul(yc, qc, sc, smc, pc, gc) end) end)
            r.in_avx2 = N * K / med / 1e9
        end
        -- out of cache: the kernel as shipped (software prefetch of the next rows) and without it
        -- (nc_gemv_prefetch(0)), samples interleaved so both see the same machine
        local function ring() for i = 1, copies do C.nc_ternary_matmul(yc, qc, sc, smc, vc[i], gc) end end
        local pres = L.compare({ { fn = ring, inner = 1 },
                                 { fn = function() C.nc_gemv_prefetch(0); ring(); C.nc_gemv_prefetch(1) end, inner = 1 } },
                               { reps = reps, warmup = 1 })
        med, best = pres[1].median, pres[1].min
        r['out_' .. th] = { N * K * copies / med / 1e9, N * K * copies / best / 1e9 }
        r['outnopf_' .. th] = N * K * copies / pres[2].median / 1e9
        med = timeit(function() C.cblas_sgemv(101, 111, N, K, 1, w32, K, x32, 1, 0, y32, 1) end)
        r['f32in_' .. th] = N * K / med / 1e9
        med = timeit(function()
            for i = 1, fcopies do C.cblas_sgemv(101, 111, N, K, 1, fptrs[i], K, x32, 1, 0, y32, 1) end
        end, 1)
        r['f32out_' .. th] = N * K * fcopies / med / 1e9
        r['roof_' .. th] = r['out_' .. th][1] * 1e9 * (pbytes / (N * K)) / (bw[th].median * 1e9)
        rows[#rows + 1] = { label, th, r['in_' .. th][1], r['in_' .. th][2],
                            th == 1 and r.in_avx2 or nil,
                            r['out_' .. th][1], r['out_' .. th][2], r['outnopf_' .. th],
                            r['roof_' .. th], r['f32in_' .. th], r['f32out_' .. th],
                            r['out_' .. th][1] / r['f32out_' .. th] }
    end
    res[#res + 1] = r
    big, views, fbig, fptrs, W32 = nil, nil, nil, nil, nil
    collectgarbage('collect')
end
print(string.format('Ternary GEMV (%s row kernel), G weights/s (median, best); in avx2 = the AVX2 row kernel in cache, '
    .. '1 thread, same run; out of cache = ring of cold copies (no pf: software prefetch off, interleaved); '
    .. 'roof = out / DRAM bw', TKERNEL))
L.print_table({ 'shape', 'thr', 'in med', 'in best', 'in avx2', 'out med', 'out best', 'out no pf', 'roof', 'f32 in',
    'f32 out', 'out vs f32' }, rows,
    { '%s', '%d', '%.1f', '%.1f', '%.1f', '%.1f', '%.1f', '%.1f', '%.2f', '%.1f', '%.1f', '%.1fx' })
print()

-- ---- 5. prefill GEMM (64 activation rows), 125M FFN up shape, vs OpenBLAS sgemm -------------------------
pcall(ffi.cdef, [[
void cblas_sgemm(int order, int transa, int transb, int m, int n, int k, float alpha,
                 const float *a, int lda, const float *b, int ldb, float beta, float *c, int ldc);
]])
local gemm = {}
do
    local Mr, N, K = 64, 3072, 768
    local P = infer.pack(nc.randn({ N, K }, { generator = nc.generator(77) }))
    local X = nc.randn({ Mr, K }, { generator = nc.generator(78) })
    local a = infer.quant_act(X)
    local Y = nc.Tensor.empty({ Mr, N }, 'f32')
    local W = nc.randn({ N, K }, { generator = nc.generator(79) })
    local wp, xp = ffi.cast('float *', C.nc_tensor_data(W._c)), ffi.cast('float *', C.nc_tensor_data(X._c))
    local yp = ffi.cast('float *', C.nc_tensor_data(Y._c))
    rows = {}
    for _, th in ipairs(THREADS) do
        set_threads(th)
        local med = timeit(function() C.nc_ternary_matmul(Y._c, a.q._c, a.scale._c, a.sum._c, P.codes._c, P.scale._c) end)
        local qmed = timeit(function() C.nc_ternary_quant_act(a.q._c, a.scale._c, a.sum._c, X._c, 1e-5) end)
        local fmed = timeit(function() C.cblas_sgemm(101, 111, 112, Mr, N, K, 1, xp, K, wp, K, 0, yp, N) end)
        gemm[th] = { gmac = Mr * N * K / (med + qmed) / 1e9, f32 = Mr * N * K / fmed / 1e9 }
        gemm[th].vs = gemm[th].gmac / gemm[th].f32
        rows[#rows + 1] = { th, gemm[th].gmac, gemm[th].f32, gemm[th].vs }
    end
    print('Prefill GEMM, 64 rows x (3072, 768) incl. activation quantization, G MAC/s (median)')
    L.print_table({ 'threads', 'ternary', 'sgemm f32', 'vs f32' }, rows, { '%d', '%.1f', '%.1f', '%.2fx' })
    print()
end

-- ---- 6. the packed engine end to end (nc.pack): decode and prefill tokens/s --------------------------
-- Random-weight GPTs of the 10M / 50M / 125M shapes (vocab 32768 for 125M as GPT-2 small; 8192
-- otherwise); prefill = one forward_cached of `prefill_T` (64) tokens; decode = one token at a
-- time after a 64-token prompt (attention over ~64-80 positions), 1 and 2 threads. The 125M
-- model is also decoded with the fp32 training model's forward_cached (nc.generate's path) for
-- decode_vs_fp32; decode_roofline_frac = engine weight bytes per token / DRAM bandwidth (2 threads).
local ENGINE_SHAPES = {}   -- lib.lua's, in size order, each with its name
for _, name in ipairs { '10M', '50M', '125M' } do
    local t = { name = name }
    for k, v in pairs(L.ENGINE_SHAPES[name]) do t[k] = v end
    ENGINE_SHAPES[#ENGINE_SHAPES + 1] = t
end
local prefill_T = 64
local eng = {}
print(string.format('%-6s %6s %4s %12s %12s %10s', 'shape', 'params', 'thr', 'decode tok/s', 'prefill tok/s', 'MB/token'))
for _, sh in ipairs(ENGINE_SHAPES) do
    local cfg = { vocab_size = sh.vocab_size, d_model = sh.d_model, n_layer = sh.n_layer, n_head = sh.n_head,
        seq_len = 256, seed = 1 }
    local model = nc.models.gpt.new(cfg)
    model:eval()
    local e = nc.pack(model)
    local prompt = {}
    for i = 1, prefill_T do prompt[i] = (i * 37) % sh.vocab_size end
    local pidx = nc.tensor({ prompt }, { dtype = 'i64' })
    local one = nc.tensor({ { 5 } }, { dtype = 'i64' })
    local r = { params = model:num_params(), bytes = e:weight_bytes() }
    -- decode tokens/s of an engine (or the training model) after the prompt, on the current threads
    local function decode_rate(m, ndec)
        ndec = ndec or (quick and 8 or 16)
        local cache = m:new_cache(1, 256)
        m:forward_cached(pidx, cache)
        local med = timeit(function()
            cache.pos = prefill_T
            for _ = 1, ndec do m:forward_cached(one, cache) end
        end, 1)
        return ndec / med
    end
    for _, th in ipairs(THREADS) do
        set_threads(th)
        local pmed = timeit(function() e:forward_cached(pidx, e:new_cache(1, prefill_T)) end, 1)
        r['dec_' .. th] = decode_rate(e)
        r['pre_' .. th] = prefill_T / pmed
        print(string.format('%-6s %5.0fM %4d %12.1f %12.1f %10.2f', sh.name, r.params / 1e6, th, r['dec_' .. th],
            r['pre_' .. th], r.bytes / 1e6))
    end
    -- the selected row kernel vs the AVX2 one on engine m, samples interleaved (selected, avx2,
    -- selected, ...) so both see the same machine load: tok/s medians of `reps` samples of ndec tokens
    local function decode_vs_avx2(m)
        local ndec = quick and 8 or 16
        local cache = m:new_cache(1, 256)
        m:forward_cached(pidx, cache)
        local sel, avx2 = {}, {}
        local function sample()
            cache.pos = prefill_T
            local t0 = L.now()
            for _ = 1, ndec do m:forward_cached(one, cache) end
            return (L.now() - t0) / ndec
        end
        sample()
        for _ = 1, reps do
            sel[#sel + 1] = sample()
            avx2[#avx2 + 1] = on_avx2(sample)
        end
        return 1 / L.median(sel), 1 / L.median(avx2)
    end
    if sh.name == '125M' and compare_avx2 then
        local e8 = nc.pack(model, { head_dtype = 'i8' })
        for _, th in ipairs(THREADS) do
            set_threads(th)
            r['isel_' .. th], r['avx2_' .. th] = decode_vs_avx2(e)
            r['isel8_' .. th], r['avx28_' .. th] = decode_vs_avx2(e8)
            print(string.format('125M engine decode, %s vs AVX2 row kernel interleaved (%d threads): %.1f vs %.1f tok/s, '
                .. '%.2fx; int8 head %.1f vs %.1f, %.2fx', TKERNEL, th, r['isel_' .. th], r['avx2_' .. th],
                r['isel_' .. th] / r['avx2_' .. th], r['isel8_' .. th], r['avx28_' .. th],
                r['isel8_' .. th] / r['avx28_' .. th]))
        end
        e8 = nil
    end
    if sh.name == '125M' then
        for _, th in ipairs(THREADS) do
            set_threads(th)
            r['f32_' .. th] = decode_rate(model, 4)
            print(string.format('125M fp32 training-model decode (%d threads): %.1f tok/s; engine %.2fx', th,
                r['f32_' .. th], r['dec_' .. th] / r['f32_' .. th]))
        end
        -- decode op by op (engine.fused = false: one Lua call + OpenMP fork per op) vs the fused
        -- one-C-call-per-token step measured above
        for _, th in ipairs(THREADS) do
            set_threads(th)
            e.fused = false
            r['ops_' .. th] = decode_rate(e)
            e.fused = nil
            print(string.format('125M engine decode op by op (%d threads): %.1f tok/s; fused %.2fx', th, r['ops_' .. th],
                r['dec_' .. th] / r['ops_' .. th]))
        end
        -- the int8 head option (nc.pack(model, {head_dtype = 'i8'})): a quarter of the head's bytes
        local e8 = nc.pack(model, { head_dtype = 'i8' })
        r.bytes_i8 = e8:weight_bytes()
        for _, th in ipairs(THREADS) do
            set_threads(th)
            r['i8_' .. th] = decode_rate(e8)
            print(string.format('125M engine, int8 head (%d threads): %.1f tok/s, %.2f MB/token (f32 head: %.1f tok/s)', th,
                r['i8_' .. th], r.bytes_i8 / 1e6, r['dec_' .. th]))
        end
        r.roof_i8 = r.bytes_i8 * r.i8_2 / (bw[2].median * 1e9)
        e8 = nil
        -- 6b. continuous batching: 1, 2, 4 sequences at different positions, same engine
        local bres = dofile(here .. 'batch.lua') { engine = e, threads = THREADS, reps = reps, ndec = quick and 4 or 8 }
        print('125M engine, continuous batching: aggregate decode tokens/s, sequences at positions 64 / 48 / 32 / 16')
        L.print_table(bres.headers, bres.rows, bres.fmts)
        r.batch_json = bres.json
        r.roof = r.bytes * r.dec_2 / (bw[2].median * 1e9)
        if r.avx2_2 then
            r.roof_isel = r.bytes * r.isel_2 / (bw[2].median * 1e9)
            r.roof_avx2 = r.bytes * r.avx2_2 / (bw[2].median * 1e9)
        end
        print(string.format('125M engine decode, 2 threads: %.3f of the DRAM roofline (%.1f MB/token, %.2f GB/s)',
            r.roof, r.bytes / 1e6, bw[2].median))
    end
    eng[sh.name] = r
    model, e = nil, nil
    collectgarbage()
end
print()

-- ---- 7. LoopLM on the engine: q-exit early stop vs always T loops ----------------------------------
local loop_rows, loop_json = {}, {}
do
    local run_loop = dofile(here .. 'arch_loop.lua')
    set_threads(1)
    for _, D in ipairs { 256, 768 } do
        local res = run_loop { engine = 1, head = 'i8', d = D, q = 0.5, prompt = 32, new = quick and 16 or 32,
                               reps = quick and 2 or 3 }
        for _, row in ipairs(res.rows) do loop_rows[#loop_rows + 1] = { D, unpack(row) } end
        loop_json['looplm_engine_early_exit_speedup_d' .. D] = res.json.looplm_early_exit_speedup
        loop_json['looplm_engine_avg_loops_d' .. D] = res.json.looplm_avg_loops
        loop_json['looplm_engine_tok_s_q1_d' .. D] = L.round(res.rows[1][5], 1)
        collectgarbage()
    end
    print('LoopLM engine decode (e3 loop shape, int8 head, 1 thread): q-exit early stop vs T loops')
    L.print_table({ 'd', 'setting', 'exit_q', 'avg_loops', 'ms/token', 'tokens/s', 'speedup', 'matmul_ratio' },
        loop_rows, { '%d', nil, '%.2f', '%.3f', '%.2f', '%.1f', '%.3f', '%.3f' })
    print()
end

-- ---- JSON ---------------------------------------------------------------------------------------------
local by = {}
for _, r in ipairs(res) do by[r.label] = r end
local up, down = by['d768 up'], by['d768 down']
-- in cache, 1 thread, 125M FFN matrices: total weights / total time (harmonic mean of the two)
local function hm(a, b) return 2 / (1 / a + 1 / b) end
local out = {
    bench = 'infer', kernel = KERNEL, ternary_kernel = TKERNEL, reps = reps,
    gemv_gw_per_s_core = L.round(hm(up.in_1[1], down.in_1[1]), 2),
    gemv_gw_per_s_core_best = L.round(hm(up.in_1[2], down.in_1[2]), 2),
    gemv_gw_per_s_2t = L.round(hm(up.in_2[1], down.in_2[1]), 2),
    gemv_2048_gw_per_s_core = L.round(by['2048x2048'].in_1[1], 2),
    gemv_out_of_cache_gw_per_s_1t = L.round(hm(up.out_1[1], down.out_1[1]), 2),
    gemv_out_of_cache_gw_per_s_2t = L.round(hm(up.out_2[1], down.out_2[1]), 2),
    gemv_out_of_cache_no_prefetch_gw_per_s_1t = L.round(hm(up.outnopf_1, down.outnopf_1), 2),
    gemv_out_of_cache_no_prefetch_gw_per_s_2t = L.round(hm(up.outnopf_2, down.outnopf_2), 2),
    gemv_prefetch_speedup_1t = L.round(hm(up.out_1[1], down.out_1[1]) / hm(up.outnopf_1, down.outnopf_1), 2),
    gemv_prefetch_speedup_2t = L.round(hm(up.out_2[1], down.out_2[1]) / hm(up.outnopf_2, down.outnopf_2), 2),
    gemv_roofline_frac_1t = L.round(hm(up.roof_1, down.roof_1), 3),
    gemv_roofline_frac_2t = L.round(hm(up.roof_2, down.roof_2), 3),
    dram_gb_s_1t = L.round(bw[1].median, 2), dram_gb_s_2t = L.round(bw[2].median, 2),
    gemv_vs_fp32_in_cache_1t = L.round(hm(up.in_1[1], down.in_1[1]) / hm(up.f32in_1, down.f32in_1), 2),
    gemv_vs_fp32_out_of_cache_2t = L.round(hm(up.out_2[1], down.out_2[1]) / hm(up.f32out_2, down.f32out_2), 2),
    decode_linears_tok_s_125m_2t = L.round(dec[2].tok_s, 1),
    decode_linears_roofline_frac = L.round(dec[2].roof, 3),
    decode_linears_vs_fp32 = L.round(dec[2].vs_f32, 2),
    decode_linears_vs_fp32_1t = L.round(dec[1].vs_f32, 2),
    decode_roofline_frac = L.round(eng['125M'].roof, 3),
    decode_roofline_frac_i8_head = L.round(eng['125M'].roof_i8, 3),
    decode_fused_vs_ops_1t = L.round(eng['125M'].dec_1 / eng['125M'].ops_1, 2),
    decode_fused_vs_ops_2t = L.round(eng['125M'].dec_2 / eng['125M'].ops_2, 2),
    decode_tok_s_125m_i8_head_1t = L.round(eng['125M'].i8_1, 1),
    decode_tok_s_125m_i8_head_2t = L.round(eng['125M'].i8_2, 1),
    decode_vs_fp32 = L.round(eng['125M'].dec_2 / eng['125M'].f32_2, 2),
    decode_vs_fp32_1t = L.round(eng['125M'].dec_1 / eng['125M'].f32_1, 2),
    decode_fp32_tok_s_125m_1t = L.round(eng['125M'].f32_1, 1),
    decode_fp32_tok_s_125m_2t = L.round(eng['125M'].f32_2, 1),
    gemm_gmac_s_1t = L.round(gemm[1].gmac, 1), gemm_gmac_s_2t = L.round(gemm[2].gmac, 1),
    gemm_vs_sgemm_2t = L.round(gemm[2].vs, 2),
}
if compare_avx2 then
    local a2 = hm(up.in_avx2, down.in_avx2)
    out.gemv_gw_per_s_core_avx2 = L.round(a2, 2)
    out.gemv_vs_avx2_core = L.round(hm(up.in_1[1], down.in_1[1]) / a2, 2)
    out.gemv_2048_gw_per_s_core_avx2 = L.round(by['2048x2048'].in_avx2, 2)
    -- interleaved pair (selected row kernel, AVX2 row kernel), 125M engine decode
    local e125 = eng['125M']
    out.decode_interleaved_tok_s_125m_1t = L.round(e125.isel_1, 1)
    out.decode_interleaved_tok_s_125m_2t = L.round(e125.isel_2, 1)
    out.engine_decode_tok_s_125m_1t_avx2 = L.round(e125.avx2_1, 1)
    out.engine_decode_tok_s_125m_2t_avx2 = L.round(e125.avx2_2, 1)
    out.decode_vs_avx2_1t = L.round(e125.isel_1 / e125.avx2_1, 2)
    out.decode_vs_avx2_2t = L.round(e125.isel_2 / e125.avx2_2, 2)
    out.decode_vs_avx2_i8_head_1t = L.round(e125.isel8_1 / e125.avx28_1, 2)
    out.decode_vs_avx2_i8_head_2t = L.round(e125.isel8_2 / e125.avx28_2, 2)
    out.decode_roofline_frac_interleaved = L.round(e125.roof_isel, 3)
    out.decode_roofline_frac_avx2 = L.round(e125.roof_avx2, 3)
end
for _, sh in ipairs(ENGINE_SHAPES) do
    local r, k = eng[sh.name], sh.name:lower()
    for _, th in ipairs(THREADS) do
        out['engine_decode_tok_s_' .. k .. '_' .. th .. 't'] = L.round(r['dec_' .. th], 1)
        out['engine_prefill_tok_s_' .. k .. '_' .. th .. 't'] = L.round(r['pre_' .. th], 1)
    end
end
for k, v in pairs(loop_json) do out[k] = v end
for k, v in pairs(eng['125M'].batch_json or {}) do if k ~= 'batch_model' then out[k] = v end end
print(L.json(out))
