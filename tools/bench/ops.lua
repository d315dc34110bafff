-- tools/bench/ops.lua — are the ops as fast as the hardware allows?
--
-- Measures, in one run and against baselines measured in the same run:
--   1. GEMM: raw OpenBLAS cblas_sgemm called through the FFI on plain aligned float buffers vs
--      our nc.linear / nc.matmul through the whole Lua + FFI + C path (and the bare C nc_matmul
--      call the autograd backward makes, beta = 1), for a linear layer x (512, 512), W (2048, 512)
--      forward, its two backward GEMMs, one real autograd forward+backward, and a 1024^3 matmul.
--   2. Streaming kernels on tensors larger than this machine's L3 (sysconf; default 1.25x L3,
--      at least 64 MiB each): add, mul, relu, silu, gelu, exp, tanh, scale, rmsnorm, softmax,
--      log_softmax — GB/s counting bytes read + written (a unary op or a softmax row: N read + N
--      written, like a copy of N), through the Lua op and as a bare C kernel call into a
--      preallocated output. Each kernel is timed interleaved with TWO copy baselines, libc memcpy
--      (1 thread) and memcpy split over the same threads as the kernel; its ratio is against the
--      faster of the two (the smaller paired ratio), so a swing of the machine hits both sides.
--      Info baselines (first table): nc copy_ (contiguous, and a row-strided source that takes
--      the OpenMP path), OpenBLAS saxpy (threaded, y += a x).
--      Also (info rows, not in the worst ratio) the rmsnorm and softmax backward kernels, and the
--      fused cross-entropy forward/backward over logits (1024, 32768) with its speedup over the
--      scalar reference kernel.
--   3. FFI overhead: µs per call of nc.add on 1-element tensors (target <= 1), broken down: a
--      trivial C function (nc_tensor_numel), the bare C nc_binary on preallocated tensors, plus
--      allocating and freeing the output in C (one small block), plus taking ownership in Lua the
--      old way (ffi.gc finalizer per tensor) and the new way (tensor.lua's registry), and nc.add
--      on a 65-float tensor (above NC_SMALL_DATA: header, storage and data malloc'd apart).
--      Wall time and this thread's CPU time (the latter is what the calls cost on a busy machine).
-- Every number is the median of `reps` samples after warmup (wall clock, CLOCK_MONOTONIC). GEMM and
-- streaming rows also take the process CPU time of every sample (all threads): `cpu ratio` is the
-- paired ratio of CPU times (what the code costs, unaffected by threads waiting for a core while
-- other jobs run), `util` the kernel's CPU / wall (about the thread count on a quiet machine).
-- Prints readable tables and, as the LAST line, one JSON object.
--
-- Usage: ./nanochat tools/bench/ops.lua [reps=7] [gemm_reps=15] [threads=N] [quick=1] [mb=N] [only=S[,S]] [kernels=K[,K]]
--    only=ffi: section 3 alone (a few seconds), its table and JSON keys
--    only=gemm | amx | stream | compute | ce (comma-separated): those sections (JSON keys of the
--    others absent); compute: each streaming kernel's arithmetic alone (L2-resident, 1 thread, CPU time)
--    kernels=gelu,tanh: only these rows of the streaming section
--    or: LUA_PATH='lua/?.lua;lua/?/init.lua;;' luajit tools/bench/ops.lua ...
if not package.path:find('lua/?/init.lua', 1, true) then
    package.path = 'lua/?.lua;lua/?/init.lua;' .. package.path
end

local ffi = require 'ffi'
local here = (debug.getinfo(1, 'S').source:match('^@(.*/)') or './')
local L = dofile(here .. 'lib.lua')
local args = L.parse_args()
-- blas_core=SkylakeX: force OpenBLAS's kernel family (OPENBLAS_CORETYPE) before it loads, to see
-- what a correctly detected CPU would give
if args.blas_core then
    pcall(ffi.cdef, 'int setenv(const char *name, const char *value, int overwrite);')
    ffi.C.setenv('OPENBLAS_CORETYPE', tostring(args.blas_core), 1)
end
local nc = require 'nanochat'
local core = require 'nanochat.core'
local C = core.C

-- =============================================================================================
-- 3. FFI / call overhead (a function, so that only=ffi can run it alone)
-- =============================================================================================
-- Each row is a loop of `calls` calls. Rows are interleaved, the order rotated per repeat, so
-- machine drift hits them alike. Every sample starts after a full collection (untimed); rows that
-- allocate end it with a full collection and the release of what it collected (timed), so each
-- sample pays for all the garbage it made, finalizers included (one extra full GC per sample,
-- ~0.01-0.03 µs a call at 100k calls). Reported: medians of wall time and of this thread's CPU
-- time (CLOCK_THREAD_CPUTIME_ID; on a machine shared with other jobs wall time also counts the
-- time they hold the core).
pcall(ffi.cdef, 'typedef struct nc_bench_timespec { int64_t tv_sec; int64_t tv_nsec; } nc_bench_timespec;')
pcall(ffi.cdef, 'int clock_gettime(int clk_id, struct timespec *tp);')
local thread_clock = ffi.cast('int (*)(int, nc_bench_timespec *)', ffi.C.clock_gettime)
local thread_ts = ffi.new('nc_bench_timespec')
local function thread_cpu()
    thread_clock(3, thread_ts)   -- CLOCK_THREAD_CPUTIME_ID
    return tonumber(thread_ts.tv_sec) + tonumber(thread_ts.tv_nsec) * 1e-9
end

local function ffi_overhead(calls, reps, warmup)
    local Tensor = nc.Tensor
    local release = C.nc_tensor_release
    local a1, b1, o1 = nc.rand { 1 }, nc.rand { 1 }, nc.empty { 1 }
    local n65 = C.NC_SMALL_DATA / 4 + 1
    local a65, b65 = nc.rand { n65 }, nc.rand { n65 }
    local ac, bc, oc = a1._c, b1._c, o1._c
    local shape1 = ffi.new('int64_t[1]', 1)
    local ADD = C.NC_OP_ADD
    local sink = 0
    local rows = {
        { key = 'raw', name = 'raw FFI', what = 'C.nc_tensor_numel(t) from compiled Lua (20x the calls)', n = 20 * calls,
          fn = function()
              local s = 0
              for _ = 1, 20 * calls do s = s + tonumber(C.nc_tensor_numel(ac)) end
              sink = sink + s
          end },
        { key = 'kernel', name = 'C kernel', what = 'C.nc_binary(out, a, b, ADD) into a preallocated 1-element out',
          fn = function()
              for _ = 1, calls do
                  if C.nc_binary(oc, ac, bc, ADD) ~= 0 then error('nc_binary failed') end
              end
          end },
        { key = 'c_alloc', name = '+ C alloc/free', what = 'nc_tensor_new (one small block), nc_binary, nc_tensor_release at once',
          fn = function()
              for _ = 1, calls do
                  local p = C.nc_tensor_new(C.NC_F32, C.NC_CPU, 1, shape1)
                  C.nc_binary(p, ac, bc, ADD)
                  release(p)
              end
          end },
        { key = 'own_ffi_gc', name = '+ own: ffi.gc (old)', gc = true,
          what = 'new, nc_binary, the old Tensor.wrap: {_c = ffi.gc(p, release)}',
          fn = function()
              for _ = 1, calls do
                  local p = C.nc_tensor_new(C.NC_F32, C.NC_CPU, 1, shape1)
                  C.nc_binary(p, ac, bc, ADD)
                  local t = setmetatable({ _c = ffi.gc(p, release) }, Tensor)
              end
          end },
        { key = 'own_registry', name = '+ own: registry (new)', gc = true,
          what = 'Tensor._empty_c (new, registry slot, GC pacing), nc_binary',
          fn = function()
              local empty_c = Tensor._empty_c
              for _ = 1, calls do
                  local t = empty_c(1, shape1, C.NC_F32, C.NC_CPU)
                  C.nc_binary(t._c, ac, bc, ADD)
              end
          end },
        { key = 'add', name = 'nc.add', gc = true,
          what = 'nc.add(a, b), 1-element: all of it (target <= 1)',
          fn = function() for _ = 1, calls do nc.add(a1, b1) end end },
        { key = 'add65', name = 'nc.add, 65 f32', gc = true,
          what = 'above NC_SMALL_DATA: 3 mallocs',
          fn = function() for _ = 1, calls do nc.add(a65, b65) end end },
    }
    for _, row in ipairs(rows) do row.wall, row.cpu = {}, {} end
    local settle = L.collect
    for r = 1, warmup + reps do
        for k = 0, #rows - 1 do
            local row = rows[(k + r) % #rows + 1]
            settle()
            local w0, u0 = L.now(), thread_cpu()
            row.fn()
            if row.gc then settle() end
            local w, u = L.now() - w0, thread_cpu() - u0
            if r > warmup then
                row.wall[#row.wall + 1] = w / (row.n or calls) * 1e6
                row.cpu[#row.cpu + 1] = u / (row.n or calls) * 1e6
            end
        end
    end
    local res, out = {}, {}
    for _, row in ipairs(rows) do
        local w, u = L.median(row.wall), L.median(row.cpu)
        table.sort(row.wall)
        res[row.key] = { wall = w, cpu = u, wall_min = row.wall[1], wall_max = row.wall[#row.wall] }
        out[#out + 1] = { row.name, w, u, row.wall[1], row.wall[#row.wall], row.what }
    end
    print(string.format('Call overhead (µs per call; loops of %d, median of %d interleaved repeats)', calls, reps))
    L.print_table({ 'call', 'wall', 'cpu', 'wall min', 'wall max', 'what' }, out,
        { nil, '%.4f', '%.4f', '%.4f', '%.4f' })
    print('  cpu: this thread\'s CPU time; wall also counts time other processes held the core.')
    print('  The + rows add to the row above: kernel, then allocating/freeing the output in C, then')
    print('  owning it from Lua (old: ffi.gc finalizer per tensor; new: the registry in tensor.lua).')
    print('')
    return res
end

local function ffi_json(res)
    local function r4(v) return v and L.round(v, 4) end
    local breakdown = {}
    for k, v in pairs(res) do breakdown[k] = { wall = r4(v.wall), cpu = r4(v.cpu) } end
    return {
        ffi_us_per_call = r4(res.add and res.add.wall),
        ffi_cpu_us_per_call = r4(res.add and res.add.cpu),
        ffi_kernel_us_per_call = r4(res.kernel and res.kernel.wall),
        ffi_raw_us_per_call = res.raw and L.round(res.raw.wall, 5),
        ffi_breakdown = breakdown,
    }
end

local function main()
    local quick = args.quick == 1 or args.quick == true or args.quick == 'true'
    local reps = tonumber(args.reps) or (quick and 3 or 7)
    -- GEMM rows: more repeats (each sample is ~50 ms; the paired ratios of 7 spread by +-15% on the
    -- shared VM, and the reported number is the worst of five shapes)
    local gemm_reps = tonumber(args.gemm_reps) or (quick and reps or math.max(reps, 15))
    local warmup = tonumber(args.warmup) or (quick and 1 or 2)
    local threads = tonumber(args.threads) or L.ncpus()
    -- streaming tensors: each larger than the L3 (1.25x, at least 64 MiB); quick mode: 16 MiB
    pcall(ffi.cdef, 'long sysconf(int name);')
    local okl3, l3 = pcall(function() return tonumber(ffi.C.sysconf(194)) end)   -- _SC_LEVEL3_CACHE_SIZE
    local l3_mib = okl3 and l3 and l3 > 0 and l3 / 2 ^ 20 or nil
    local stream_mb = tonumber(args.mb) or (quick and 16 or math.max(64, math.ceil((l3_mib or 0) * 1.25 / 16) * 16))
    local only = {}
    if args.only and args.only ~= 'ffi' then
        for w in tostring(args.only):gmatch('[^,]+') do only[w] = true end
    end
    local function section(name) return next(only) == nil or only[name] == true end
    local kernel_filter
    if args.kernels then
        kernel_filter = {}
        for w in tostring(args.kernels):gmatch('[^,]+') do kernel_filter[w] = true end
    end
    local target_s = quick and 0.01 or 0.05      -- each timed sample lasts at least this long
    nc.set_num_threads(threads)
    threads = nc.get_num_threads()

    local notes = {}
    local function note(s) notes[#notes + 1] = s end

    if args.only == 'ffi' then
        print(string.format('nanochat ops benchmark, FFI section only: %d thread(s), cpu kernel %s', threads,
            nc.cpu_kernel()))
        print('')
        local j = ffi_json(ffi_overhead(quick and 20000 or 100000, reps, warmup))
        j.threads, j.quick, j.reps, j.only = threads, quick, reps, 'ffi'
        print(L.json(j))
        return
    end

    -- does symbol `name` exist in the library (ops may not have landed yet)
    local function has_sym(name)
        return (pcall(function() return C[name] end))
    end

    -- ---- raw buffers for the baselines -----------------------------------------------------------
    pcall(ffi.cdef, 'int posix_memalign(void **memptr, size_t alignment, size_t size);')
    pcall(ffi.cdef, 'void free(void *ptr);')
    local function aligned_floats(n)
        local pp = ffi.new('void *[1]')
        assert(ffi.C.posix_memalign(pp, 64, n * 4) == 0, 'posix_memalign failed')
        return ffi.gc(ffi.cast('float *', pp[0]), ffi.C.free)
    end
    local function fdata(t) return ffi.cast('float *', C.nc_tensor_data(t._c)) end
    -- a plain aligned float copy of a contiguous f32 tensor
    local function raw_copy_of(t)
        local n = t:numel()
        local p = aligned_floats(n)
        ffi.C.memcpy(p, fdata(t), n * 4)
        return p
    end

    -- =============================================================================================
    -- 1. GEMM vs raw OpenBLAS sgemm
    -- =============================================================================================
    pcall(ffi.cdef, [[
    void cblas_sgemm(int order, int transa, int transb, int m, int n, int k, float alpha,
                     const float *a, int lda, const float *b, int ldb, float beta, float *c, int ldc);
    ]])
    pcall(ffi.cdef, 'void cblas_saxpy(int n, float alpha, const float *x, int incx, float *y, int incy);')
    local ok_blas, blas = pcall(ffi.load, 'openblas')
    if not ok_blas then ok_blas, blas = pcall(ffi.load, 'libopenblas.so.0') end
    if not ok_blas then error('ops bench: cannot load OpenBLAS through the FFI: ' .. tostring(blas)) end
    local RowMajor, NoTrans, Trans = 101, 111, 112
    pcall(ffi.cdef, 'char *openblas_get_corename(void);')
    local okc, blas_core = pcall(function() return ffi.string(blas.openblas_get_corename()) end)
    blas_core = okc and blas_core or '?'
    if blas_core == 'Prescott' or blas_core == 'Core2' or blas_core == 'Nehalem' or blas_core == 'Katmai' then
        note(string.format('OpenBLAS runs its SSE-era "%s" kernels on this CPU (it does not recognise it); '
            .. 'OPENBLAS_CORETYPE=SkylakeX (AVX-512) or Haswell (AVX2) set before the library loads '
            .. 'is several times faster (try blas_core=SkylakeX)', blas_core))
    end

    nc.manual_seed(1234)
    local M_, IN, OUT = 512, 512, 2048
    local x = nc.randn { M_, IN }
    local W = nc.randn({ OUT, IN }, { std = 0.05 })
    local dy = nc.randn { M_, OUT }
    local gx = nc.zeros { M_, IN }
    local gw = nc.zeros { OUT, IN }
    local SQ = 1024
    local sa, sb = nc.randn { SQ, SQ }, nc.randn { SQ, SQ }

    local rx, rW, rdy = raw_copy_of(x), raw_copy_of(W), raw_copy_of(dy)
    local ry, rgx, rgw = aligned_floats(M_ * OUT), aligned_floats(M_ * IN), aligned_floats(OUT * IN)
    ffi.fill(rgx, M_ * IN * 4); ffi.fill(rgw, OUT * IN * 4)
    local rsa, rsb, rsc = raw_copy_of(sa), raw_copy_of(sb), aligned_floats(SQ * SQ)

    local gemm_rows = {}
    local function gemm_case(name, desc, flops, raw_fn, lua_fn, c_fn)
        local fns = { raw_fn, lua_fn }
        if c_fn then fns[3] = c_fn end
        local res, ratio, cratio = L.compare(fns, { warmup = warmup, reps = gemm_reps, target = target_s, cpu = true })
        local t_raw, t_lua, t_c = res[1].median, res[2].median, c_fn and res[3].median
        local r = {
            name = name, desc = desc,
            raw_gflops = flops / t_raw / 1e9,
            lua_gflops = flops / t_lua / 1e9,
            c_gflops = t_c and flops / t_c / 1e9 or nil,
            raw_ms = t_raw * 1e3, lua_ms = t_lua * 1e3, c_ms = t_c and t_c * 1e3 or nil,
            ratio = ratio[2], c_ratio = c_fn and ratio[3] or nil,
            cpu_ratio = cratio[2], c_cpu_ratio = c_fn and cratio[3] or nil,
            raw_util = res[1].util, util = res[2].util,
        }
        gemm_rows[#gemm_rows + 1] = r
        return r
    end

    local lin_flops = 2 * M_ * OUT * IN
    local fwd_raw = function()
        blas.cblas_sgemm(RowMajor, NoTrans, Trans, M_, OUT, IN, 1, rx, IN, rW, IN, 0, ry, OUT)
    end
    local dx_raw = function()
        blas.cblas_sgemm(RowMajor, NoTrans, NoTrans, M_, IN, OUT, 1, rdy, OUT, rW, IN, 1, rgx, IN)
    end
    local dw_raw = function()
        blas.cblas_sgemm(RowMajor, Trans, NoTrans, OUT, IN, M_, 1, rdy, OUT, rx, IN, 1, rgw, IN)
    end

    if section('gemm') then nc.no_grad(function()
        gemm_case('linear_fwd', 'y = x W^T  x(512,512) W(2048,512)', lin_flops, fwd_raw,
            function() return nc.linear(x, W) end,
            function()
                local y = nc.empty { M_, OUT }
                core.check(C.nc_matmul(y._c, x._c, W._c, 0, 1, 1, 0), 'matmul')
            end)
        gemm_case('linear_bwd_dx', 'dX += dY W  (512,2048)x(2048,512)', lin_flops, dx_raw,
            function() return nc.matmul(dy, W) end,
            function() core.check(C.nc_matmul(gx._c, dy._c, W._c, 0, 0, 1, 1), 'matmul') end)
        gemm_case('linear_bwd_dw', 'dW += dY^T X  (2048,512)x(512,512)', lin_flops, dw_raw,
            function() return nc.matmul(dy:t(), x) end,
            function() core.check(C.nc_matmul(gw._c, dy._c, x._c, 1, 0, 1, 1), 'matmul') end)
        gemm_case('square_1024', 'C = A B  1024^3', 2 * SQ * SQ * SQ,
            function() blas.cblas_sgemm(RowMajor, NoTrans, NoTrans, SQ, SQ, SQ, 1, rsa, SQ, rsb, SQ, 0, rsc, SQ) end,
            function() return nc.matmul(sa, sb) end,
            function()
                local c = nc.empty { SQ, SQ }
                core.check(C.nc_matmul(c._c, sa._c, sb._c, 0, 0, 1, 0), 'matmul')
            end)
    end) end

    -- one real autograd step of nc.linear: forward + backward (fresh leaf grads each time, as after
    -- zero_grad), against the three raw sgemm calls it amounts to
    if section('gemm') then
        local xg = x:clone():requires_grad_(true)
        local Wg = W:clone():requires_grad_(true)
        local ok, err = pcall(function()
            gemm_case('linear_autograd', 'nc.linear fwd + loss:backward (3 GEMMs)', 3 * lin_flops,
                function() fwd_raw(); dx_raw(); dw_raw() end,
                function()
                    xg.grad, Wg.grad = nil, nil
                    local y = nc.linear(xg, Wg)
                    nc.backward(y, dy)
                end)
        end)
        if not ok then note('linear_autograd skipped: ' .. tostring(err)) end
    end

    -- AMX (kernels/cpu/amx.c), same shapes, against the raw sgemm of this run: the bf16 GEMM
    -- (f32 in, bf16 packing + rounding included, f32 out) in the three layouts of a linear layer
    -- and 1024^3; the int8 GEMM (codes x ternary codes, scaled f32 out) for the linear forward;
    -- and the fused training op nc.bitlinear fwd + bwd vs the composite fp32 autograd path.
    local amx_rows = {}
    if section('amx') and nc.cpu_gemm_fast() then
        local pre = nc.cpu_amx() and 'amx' or 'avx512'   -- the hardware backend's row prefix
        local function amx_case(name, desc, flops, raw_fn, fn)
            local res, ratio = L.compare({ raw_fn, fn }, { warmup = warmup, reps = reps, target = target_s })
            amx_rows[#amx_rows + 1] = { name = name, desc = desc, raw_gflops = flops / res[1].median / 1e9,
                                        gflops = flops / res[2].median / 1e9, ratio = ratio[2] }
        end
        local a = nc.bitlinear_act(x)
        local wt, gam = nc.empty { OUT, IN }, nc.empty { 1 }
        core.check(C.nc_quant_weight_absmean(wt._c, gam._c, W._c, 0, 1e-5), 'quant_weight')
        core.check(C.nc_quant_codes(wt._c, wt._c, gam._c, 1, -1, 1), 'quant_codes')
        local y = nc.empty { M_, OUT }
        amx_case(pre .. '_s8_linear_fwd', 'int8 codes x ternary codes, scaled (512,512)x(2048,512)^T', lin_flops, fwd_raw,
            function() core.check(C.nc_gemm_s8(y._c, a.q._c, wt._c, 0, 1, gam._c, a.s._c, 1), 'gemm_s8') end)
        amx_case(pre .. '_bf16_linear_fwd', 'y = x W^T  x(512,512) W(2048,512)', lin_flops, fwd_raw,
            function() core.check(C.nc_gemm_bf16(y._c, x._c, W._c, 0, 1, nil, 0, 1, 0), 'gemm_bf16') end)
        amx_case(pre .. '_bf16_linear_bwd_dx', 'dX += dY W  (512,2048)x(2048,512)', lin_flops, dx_raw,
            function() core.check(C.nc_gemm_bf16(gx._c, dy._c, W._c, 0, 0, nil, 0, 1, 1), 'gemm_bf16') end)
        amx_case(pre .. '_bf16_linear_bwd_dw', 'dW += dY^T X  (2048,512)x(512,512)', lin_flops, dw_raw,
            function() core.check(C.nc_gemm_bf16(gw._c, dy._c, x._c, 1, 0, nil, 0, 1, 1), 'gemm_bf16') end)
        local sc = nc.empty { SQ, SQ }
        amx_case(pre .. '_bf16_square_1024', 'C = A B  1024^3', 2 * SQ * SQ * SQ,
            function() blas.cblas_sgemm(RowMajor, NoTrans, NoTrans, SQ, SQ, SQ, 1, rsa, SQ, rsb, SQ, 0, rsc, SQ) end,
            function() core.check(C.nc_gemm_bf16(sc._c, sa._c, sb._c, 0, 0, nil, 0, 1, 0), 'gemm_bf16') end)
        -- the fused op (quantizers included) vs the composite fp32 autograd of the same layer
        local xg, Wg = x:clone():requires_grad_(true), W:clone():requires_grad_(true)
        local function composite()
            xg.grad, Wg.grad = nil, nil
            nc.set_gemm_backend('reference')
            local yy = nc.bitlinear(nc.bitlinear_act(xg), Wg)
            nc.set_gemm_backend('auto')
            nc.backward(yy, dy)
        end
        amx_case('bitlinear_fwd_bwd', 'nc.bitlinear fwd + bwd (x 512x512, W 2048x512) vs composite fp32', 3 * lin_flops,
            composite,
            function()
                xg.grad, Wg.grad = nil, nil
                nc.backward(nc.bitlinear(nc.bitlinear_act(xg), Wg), dy)
            end)
    elseif section('amx') then
        note('AMX / AVX-512 BF16 GEMM rows skipped: backend ' .. nc.gemm_backend() .. '; ' .. nc.amx_status())
    end

    print(string.format('nanochat ops benchmark: %d thread(s), cpu kernel %s, OpenBLAS core %s, reps %d (GEMM %d; median), %s mode',
        threads, nc.cpu_kernel(), blas_core, reps, gemm_reps, quick and 'quick' or 'full'))
    print('')
    if #gemm_rows > 0 then
        print('GEMM (GFLOP/s; ratio = ours / raw cblas_sgemm, target >= 0.90)')
        local rows = {}
        for _, r in ipairs(gemm_rows) do
            rows[#rows + 1] = { r.name, r.raw_gflops, r.lua_gflops, r.ratio, r.cpu_ratio, r.c_gflops, r.c_ratio,
                                r.c_cpu_ratio, r.util, r.desc }
        end
        L.print_table({ 'shape', 'raw sgemm', 'nc (Lua)', 'ratio', 'cpu ratio', 'nc_matmul (C)', 'ratio C',
                        'cpu ratio C', 'util', 'what' }, rows,
            { nil, '%.1f', '%.1f', '%.3f', '%.3f', '%.1f', '%.3f', '%.3f', '%.2f' })
        print('  nc (Lua): nc.linear / nc.matmul (fresh output, beta 0; dW via a transposed view dY:t());')
        print('  nc_matmul (C): the bare C call; for the bwd rows exactly the call autograd makes (beta 1 into a')
        print('  preallocated gradient), for fwd/square into a fresh nc.empty output. Ratios are paired medians;')
        print('  cpu ratio: of process CPU times (all threads); util: CPU / wall of the nc (Lua) row.')
        print('')
    end
    if #amx_rows > 0 then
        print('Hardware GEMMs, backend ' .. nc.gemm_backend() .. ' (GFLOP/s; ratio = it / raw cblas_sgemm f32 of this run; bf16 rounds the inputs, int8 is exact)')
        local rows = {}
        for _, r in ipairs(amx_rows) do rows[#rows + 1] = { r.name, r.raw_gflops, r.gflops, r.ratio, r.desc } end
        L.print_table({ 'shape', 'raw sgemm', nc.cpu_amx() and 'AMX' or 'AVX-512', 'ratio', 'what' }, rows, { nil, '%.1f', '%.1f', '%.2f' })
        print('  bitlinear_fwd_bwd: its "raw sgemm" column is the composite fp32 path (quantizers + 3 sgemm + STE),')
        print('  both counted as 3 linear GEMMs of FLOPs.')
        print('')
    end

    -- =============================================================================================
    -- 2. Streaming kernels vs copy baselines
    -- =============================================================================================
    local N = math.floor(stream_mb * 1024 * 1024 / 4)
    local ROW = 1024
    N = math.floor(N / ROW) * ROW
    local ROWS = math.floor(N / ROW)
    local MiB = N * 4 / (1024 * 1024)
    local function gbps(bytes, t) return bytes / t / 1e9 end
    local par_memcpy, why = L.par_memcpy()
    if not par_memcpy then note('no multi-threaded memcpy baseline: ' .. tostring(why)) end

    local base, base_order = {}, {}
    local stream_rows, stream_json = {}, {}
    local included = setmetatable({}, L.array_mt)   -- kernels that enter elementwise_vs_memcpy
    local worst_stream, worst_stream_kernel, worst_stream_cpu, worst_stream_same = math.huge, math.huge, math.huge, math.huge
    local worst_stream_quiet, quiet_missing = math.huge, setmetatable({}, L.array_mt)
    local worst_stream_name
    if section('stream') then
    local a = nc.rand({ ROWS, ROW }, { lo = -2, hi = 2 })
    local b = nc.rand({ ROWS, ROW }, { lo = -2, hi = 2 })
    local out = nc.empty { ROWS, ROW }
    local rstd = nc.empty { ROWS }
    local bytes1 = N * 4

    -- copy baselines. memcpy (1 thread) and par_memcpy (memcpy split over the kernel's threads) are
    -- timed interleaved with every kernel below; the first table times all of them once, with the
    -- nc copies and saxpy for information
    local src_p, dst_p = fdata(a), fdata(out)
    local wide = nc.rand { ROWS, ROW + 1 }
    local strided = wide:narrow(1, 0, ROW)   -- rows of 1024 with stride 1025: nc copy's OpenMP loop
    local yax = nc.zeros { ROWS, ROW }
    local yax_p = fdata(yax)
    local baselines = {
        { name = 'memcpy', streams = 2, fn = function() ffi.C.memcpy(dst_p, src_p, bytes1) end, paired = true,
          what = 'libc memcpy via FFI, 1 thread (read + write)' },
        { name = 'nc_copy', streams = 2, fn = function() out:copy_(a) end,
          what = 'dst:copy_(src), contiguous (info)' },
        { name = 'nc_copy_omp', streams = 2, fn = function() out:copy_(strided) end,
          what = 'dst:copy_(row-strided src): the OpenMP copy loop (info)' },
        { name = 'saxpy', streams = 3, fn = function() blas.cblas_saxpy(N, 1e-7, src_p, 1, yax_p, 1) end,
          what = 'OpenBLAS cblas_saxpy y += a x, threaded; in place (no write-allocate) (info)' },
    }
    if par_memcpy then
        table.insert(baselines, 2, { name = 'par_memcpy', streams = 2, paired = true,
            fn = function() par_memcpy(dst_p, src_p, bytes1, threads) end,
            what = string.format('memcpy split over %d OpenMP threads (helper compiled at run time)', threads) })
    end
    local paired = {}
    for _, bl in ipairs(baselines) do if bl.paired then paired[#paired + 1] = bl end end
    do
        local fns = {}
        for i, bl in ipairs(baselines) do fns[i] = bl.fn end
        local res = L.compare(fns, { warmup = warmup, reps = reps, target = target_s, cpu = true })
        for i, bl in ipairs(baselines) do
            bl.gbps = gbps(bl.streams * bytes1, res[i].median)
            bl.util = res[i].util
            base[bl.name] = bl.gbps
            base_order[#base_order + 1] = bl
        end
    end

    -- the Lua op for each kernel: probe candidates on a tiny tensor, use the first that works
    local tiny = nc.rand { 4 }
    local function pick(cands)
        for _, f in ipairs(cands) do
            local ok, r = pcall(f, tiny, tiny)
            if ok and nc.is_tensor(r) then return f end
        end
    end

    local gacc = nc.zeros { ROWS, ROW }   -- the gradient the backward rows accumulate into
    local stream_cases = {
        { 'add', 3, { function(p, q) return nc.add(p, q) end, function(p, q) return p + q end },
          'nc_binary', function() return C.nc_binary(out._c, a._c, b._c, C.NC_OP_ADD) end },
        { 'mul', 3, { function(p, q) return nc.mul(p, q) end, function(p, q) return p * q end },
          'nc_binary', function() return C.nc_binary(out._c, a._c, b._c, C.NC_OP_MUL) end },
        { 'relu', 2, { function(p) return nc.relu(p) end }, 'nc_unary', function() return C.nc_unary(out._c, a._c, C.NC_OP_RELU) end },
        { 'silu', 2, { function(p) return nc.silu(p) end }, 'nc_unary', function() return C.nc_unary(out._c, a._c, C.NC_OP_SILU) end },
        { 'gelu', 2, { function(p) return nc.gelu(p) end }, 'nc_unary', function() return C.nc_unary(out._c, a._c, C.NC_OP_GELU) end },
        { 'exp', 2, { function(p) return nc.exp(p) end }, 'nc_unary', function() return C.nc_unary(out._c, a._c, C.NC_OP_EXP) end },
        { 'tanh', 2, { function(p) return nc.tanh(p) end }, 'nc_unary', function() return C.nc_unary(out._c, a._c, C.NC_OP_TANH) end },
        { 'scale', 2, { function(p) return nc.scale(p, 0.5) end, function(p) return nc.mul(p, 0.5) end,
                        function(p) return p * 0.5 end },
          'nc_binary_scalar', function() return C.nc_binary_scalar(out._c, a._c, 0.5, C.NC_OP_MUL) end },
        { 'rmsnorm', 2, { function(p) return nc.rmsnorm(p, nil, 1e-6) end }, 'nc_rmsnorm',
          function() return C.nc_rmsnorm(out._c, rstd._c, a._c, nil, 1e-6) end },
        { 'softmax', 2, { function(p) return nc.softmax(p, -1) end }, 'nc_softmax',
          function() return C.nc_softmax(out._c, a._c, 0) end },
        { 'log_softmax', 2, { function(p) return nc.log_softmax(p, -1) end }, 'nc_softmax',
          function() return C.nc_softmax(out._c, a._c, 1) end },
        -- backward kernels (bare C calls, accumulating into a gradient: info rows, not in the worst ratio)
        { 'rmsnorm_bwd', 4, {}, 'nc_rmsnorm_backward',
          function() return C.nc_rmsnorm_backward(gacc._c, nil, a._c, nil, rstd._c, b._c) end, true },
        { 'softmax_bwd', 4, {}, 'nc_softmax_backward',
          function() return C.nc_softmax_backward(gacc._c, out._c, b._c, 0) end, true },
    }
    C.nc_rmsnorm(out._c, rstd._c, a._c, nil, 1e-6)

    for _, c in ipairs(stream_cases) do
        if not c[6] and (not kernel_filter or kernel_filter[c[1]]) then included[#included + 1] = c[1] end
    end
    for _, c in ipairs(stream_cases) do
        local name, nt, cands, sym, cfn, info = c[1], c[2], c[3], c[4], c[5], c[6]
        if not kernel_filter or kernel_filter[name] then
        local bytes = nt * bytes1
        local lua_f = pick(cands)
        if not lua_f and not info then note(name .. ': no working Lua op (nc.' .. name .. ') yet') end
        local c_ok = has_sym(sym)
        if not c_ok then note(name .. ': C symbol ' .. sym .. ' not in the library yet') end
        local fns, idx = {}, {}
        for i, bl in ipairs(paired) do fns[i] = bl.fn end
        local nb = #fns
        if lua_f then fns[#fns + 1] = function() return lua_f(a, b) end; idx.lua = #fns end
        if c_ok then fns[#fns + 1] = function() core.check(cfn(), sym) end; idx.c = #fns end
        local r = { name = name .. (info and ' (info)' or ''), bytes_per_elem = nt * 4 }
        if #fns > nb then
            -- L.compare's ratios are against its first function: run it once per baseline order
            -- would double the time, so take the paired ratios from the raw samples instead
            local res = L.compare(fns, { warmup = warmup, reps = reps, target = target_s, cpu = true })
            collectgarbage('collect')
            -- bandwidth ratio of kernel k vs baseline j in repeat r: (bytes / t_k) / (base_bytes / t_j);
            -- the median over repeats per baseline, then the smaller over the baselines
            -- (also returned: the ratio against the last paired baseline, par_memcpy: same threads)
            -- quiet repeats: every sample of the repeat (both copies and the kernel) had CPU / wall of
            -- at least 0.85 x the threads it runs on, i.e. no thread waited long for a core
            local quiet = {}
            for rr = 1, reps do
                local ok = true
                for k = 1, #fns do
                    local want = (k <= nb and paired[k].name == 'memcpy') and 1 or threads
                    if res[k].cpu_samples[rr] / res[k].samples[rr] < 0.85 * want then ok = false end
                end
                if ok then quiet[#quiet + 1] = rr end
            end
            local function paired_ratio(k, key, only_rr)
                local worst, v
                for j = 1, nb do
                    local rs = {}
                    if only_rr then
                        for _, rr in ipairs(only_rr) do rs[#rs + 1] = res[j][key][rr] / res[k][key][rr] end
                    else
                        for rr = 1, reps do rs[rr] = res[j][key][rr] / res[k][key][rr] end
                    end
                    v = L.median(rs) * nt / paired[j].streams
                    if not worst or v < worst then worst = v end
                end
                return worst, v
            end
            r.quiet_n = #quiet
            local bg = 0
            for j = 1, nb do bg = math.max(bg, gbps(paired[j].streams * bytes1, res[j].median)) end
            r.base_gbps = bg
            if idx.lua then
                r.gbps = gbps(bytes, res[idx.lua].median)
                r.ratio, r.ratio_same = paired_ratio(idx.lua, 'samples')
                if #quiet >= 3 then r.ratio_quiet = paired_ratio(idx.lua, 'samples', quiet) end
                r.cpu_ratio = paired_ratio(idx.lua, 'cpu_samples')
                r.ms = res[idx.lua].median * 1e3
                r.util = res[idx.lua].util
            end
            if idx.c then
                r.kernel_gbps = gbps(bytes, res[idx.c].median)
                r.kernel_ratio = paired_ratio(idx.c, 'samples')
                r.kernel_cpu_ratio = paired_ratio(idx.c, 'cpu_samples')
                r.kernel_ms = res[idx.c].median * 1e3
                r.util = r.util or res[idx.c].util
            end
        end
        stream_rows[#stream_rows + 1] = r
        stream_json[name] = {
            gbps = r.gbps and L.round(r.gbps, 2), kernel_gbps = r.kernel_gbps and L.round(r.kernel_gbps, 2),
            ratio = r.ratio and L.round(r.ratio, 3), kernel_ratio = r.kernel_ratio and L.round(r.kernel_ratio, 3),
            ratio_same_threads = r.ratio_same and L.round(r.ratio_same, 3),
            ratio_quiet = r.ratio_quiet and L.round(r.ratio_quiet, 3), quiet_repeats = r.quiet_n,
            cpu_ratio = r.cpu_ratio and L.round(r.cpu_ratio, 3),
            kernel_cpu_ratio = r.kernel_cpu_ratio and L.round(r.kernel_cpu_ratio, 3),
            ms = r.ms and L.round(r.ms, 3), base_gbps = r.base_gbps and L.round(r.base_gbps, 2),
            util = r.util and L.round(r.util, 2),
        }
        if not info then
            if r.ratio and r.ratio < worst_stream then worst_stream, worst_stream_name = r.ratio, name end
            if r.kernel_ratio and r.kernel_ratio < worst_stream_kernel then worst_stream_kernel = r.kernel_ratio end
            if r.cpu_ratio and r.cpu_ratio < worst_stream_cpu then worst_stream_cpu = r.cpu_ratio end
            if r.ratio_same and r.ratio_same < worst_stream_same then worst_stream_same = r.ratio_same end
            if r.ratio_quiet then
                if r.ratio_quiet < worst_stream_quiet then worst_stream_quiet = r.ratio_quiet end
            else
                quiet_missing[#quiet_missing + 1] = name
            end
        end
        end
    end

    local pnames = {}
    for _, bl in ipairs(paired) do pnames[#pnames + 1] = bl.name end
    print(string.format('Streaming kernels on (%d, %d) f32 = %.0f MiB per tensor (L3 %s MiB; GB/s counting bytes read + written)',
        ROWS, ROW, MiB, l3_mib and string.format('%.0f', l3_mib) or '?'))
    do
        local rows = {}
        for i, bl in ipairs(base_order) do rows[i] = { bl.name, bl.gbps, bl.util, bl.what } end
        L.print_table({ 'baseline', 'GB/s', 'util', 'what' }, rows, { nil, '%.2f', '%.2f' })
    end
    print(string.format('ratios below: each kernel timed interleaved with %s; ratio = against the faster of them '
        .. '(the smaller paired ratio); target >= 0.70', table.concat(pnames, ' and ')))
    do
        local rows = {}
        for _, r in ipairs(stream_rows) do
            rows[#rows + 1] = { r.name, r.bytes_per_elem, r.gbps, r.ratio, r.ratio_same, r.ratio_quiet,
                                r.quiet_n and string.format('%d/%d', r.quiet_n, reps), r.cpu_ratio, r.kernel_gbps,
                                r.kernel_ratio, r.kernel_cpu_ratio, r.base_gbps, r.util, r.ms }
        end
        L.print_table({ 'kernel', 'B/elem', 'nc (Lua) GB/s', 'ratio', 'same thr', 'quiet', 'quiet n', 'cpu ratio',
                        'C call GB/s', 'ratio C', 'cpu ratio C', 'copy GB/s', 'util', 'Lua ms' }, rows,
            { nil, '%d', '%.2f', '%.3f', '%.3f', '%.3f', nil, '%.3f', '%.2f', '%.3f', '%.3f', '%.2f', '%.2f', '%.2f' })
    end
    print('  nc (Lua): the op as a user calls it (allocates its output); C call: bare kernel into a preallocated output.')
    print('  same thr: the Lua ratio against ' .. pnames[#pnames] .. ' alone (the copy on the same threads; on a busy')
    print('  machine a 1-thread memcpy loses less to a stolen core than any 2-thread loop, kernel or copy).')
    print('  quiet: the ratio over the repeats (quiet n of them) in which every sample had CPU / wall >= 0.85 x its')
    print('  threads (no thread kept off its core); shown from 3 such repeats.')
    print('  copy GB/s: the faster paired copy in those samples; cpu ratio: the Lua ratio of process CPU times;')
    print('  util: CPU / wall of the kernel (~threads when no thread waited for a core).')
    print('  scale = x * 0.5; rmsnorm without weight, rows of 1024; softmax over rows of 1024.')
    print('  (info) rows: backward kernels ga += ..., 4 streams (x or y, gout, ga read + written); not in the worst ratio.')
    print('')
    end


    -- =============================================================================================
    -- 2c. Arithmetic cost of the streaming kernels, without the memory system: one thread, a
    -- (64, 1024) tensor that stays in L2, this thread's CPU time per element (best of `reps`
    -- samples of 200 calls). What a core spends on the arithmetic; a kernel keeps up with a copy on
    -- the same threads while this is below 8 bytes / (copy GB/s per thread).
    -- =============================================================================================
    local compute_json = {}
    if section('compute') then
        local CR, CN = 64, 1024
        local ca = nc.rand({ CR, CN }, { lo = -2, hi = 2 })
        local cb = nc.rand({ CR, CN }, { lo = -2, hi = 2 })
        local co, crs = nc.empty { CR, CN }, nc.empty { CR }
        local cases = {
            { 'relu', function() return C.nc_unary(co._c, ca._c, C.NC_OP_RELU) end },
            { 'add', function() return C.nc_binary(co._c, ca._c, cb._c, C.NC_OP_ADD) end },
            { 'exp', function() return C.nc_unary(co._c, ca._c, C.NC_OP_EXP) end },
            { 'tanh', function() return C.nc_unary(co._c, ca._c, C.NC_OP_TANH) end },
            { 'silu', function() return C.nc_unary(co._c, ca._c, C.NC_OP_SILU) end },
            { 'gelu', function() return C.nc_unary(co._c, ca._c, C.NC_OP_GELU) end },
            { 'softmax', function() return C.nc_softmax(co._c, ca._c, 0) end },
            { 'log_softmax', function() return C.nc_softmax(co._c, ca._c, 1) end },
            { 'rmsnorm', function() return C.nc_rmsnorm(co._c, crs._c, ca._c, nil, 1e-6) end },
        }
        local prev = nc.get_num_threads()
        nc.set_num_threads(1)
        local rows = {}
        for _, c in ipairs(cases) do
            if not kernel_filter or kernel_filter[c[1]] then
                local best = math.huge
                for _ = 1, reps do
                    local u0 = thread_cpu()
                    for _ = 1, 200 do c[2]() end
                    best = math.min(best, (thread_cpu() - u0) / 200 / (CR * CN))
                end
                local ns = best * 1e9
                rows[#rows + 1] = { c[1], ns, 8 / ns }
                compute_json[c[1]] = L.round(ns, 3)
            end
        end
        nc.set_num_threads(prev)
        print(string.format('Arithmetic cost: (%d, %d) f32 in L2, 1 thread, CPU time (best of %d x 200 calls)', CR, CN, reps))
        L.print_table({ 'kernel', 'ns / elem', 'GB/s per core at 8 B/elem' }, rows, { nil, '%.3f', '%.1f' })
        print('  a kernel keeps up with a copy on the same threads while its GB/s per core exceeds the copy\'s per thread.')
        print('')
    end

    -- =============================================================================================
    -- 2b. Fused cross-entropy over a large vocab (the hot loop of training)
    -- =============================================================================================
    local ce_json = {}
    if section('ce') then
        local CN, CV = quick and 256 or 1024, 32768
        local logits = nc.rand({ CN, CV }, { lo = -4, hi = 4 })
        local tl = {}
        for i = 1, CN do tl[i] = (i * 7919) % CV end
        local tgt = nc.tensor(tl, { dtype = 'i64' })
        local lse, loss = nc.empty { CN }, nc.empty {}
        local glog = nc.zeros { CN, CV }
        local bytes = CN * CV * 4
        local lp, gp = fdata(logits), fdata(glog)
        -- baseline: a copy of the logits (same bytes), over the same threads when the helper exists
        local copy = par_memcpy and function() par_memcpy(gp, lp, bytes, threads) end
            or function() ffi.C.memcpy(gp, lp, bytes) end
        local fwd = function() core.check(C.nc_cross_entropy(loss._c, lse._c, logits._c, tgt._c, -100, 0.0, 0.0), 'ce') end
        local bwd = function()
            core.check(C.nc_cross_entropy_backward(glog._c, lse._c, logits._c, tgt._c, 1.0, -100, 0.0, 0.0), 'ce bwd')
        end
        local res, ratio = L.compare({ copy, fwd, bwd }, { warmup = warmup, reps = reps, target = target_s })
        local sc = {}
        if nc.cpu_kernel() ~= 'scalar' then
            nc.set_cpu_kernel('scalar')
            local r2 = L.compare({ fwd, bwd }, { warmup = 1, reps = math.min(reps, 3), target = target_s })
            nc.set_cpu_kernel('auto')
            sc = { fwd = r2[1].median, bwd = r2[2].median }
        end
        local rows = {}
        for i, c in ipairs { { 'ce_fwd', 1, res[2].median, sc.fwd }, { 'ce_bwd', 3, res[3].median, sc.bwd } } do
            local gb = gbps(c[2] * bytes, c[3])
            local rr = ratio[i + 1] * c[2] / 2   -- the copy moves 2 x bytes
            rows[#rows + 1] = { c[1], c[2] * 4, gb, rr, c[3] * 1e3, c[4] and c[4] / c[3] or nil }
            ce_json[c[1]] = { gbps = L.round(gb, 2), ratio = L.round(rr, 3), ms = L.round(c[3] * 1e3, 3),
                              speedup_vs_scalar = c[4] and L.round(c[4] / c[3], 2) or nil }
        end
        print(string.format('Fused cross-entropy, logits (%d, %d) f32 = %.0f MiB (C calls; GB/s of logits/gradient traffic)', CN, CV, bytes / 2 ^ 20))
        L.print_table({ 'kernel', 'B/elem', 'GB/s', 'ratio', 'ms', 'x scalar' }, rows,
            { nil, '%d', '%.2f', '%.3f', '%.2f', '%.2f' })
        print('  ce_fwd reads the logits once (lse per row); ce_bwd: glogits += softmax - onehot (reads logits, read+write grad).')
        print(string.format('  ratio: vs a copy of the logits (%s, paired); x scalar = speedup over NC_KERNEL=scalar. Info only.',
            par_memcpy and 'par_memcpy' or 'memcpy'))
        print('')
        logits, glog = nil, nil
    end
    collectgarbage('collect')

    -- =============================================================================================
    -- 3. FFI / call overhead (ffi_overhead above)
    -- =============================================================================================
    local ffi_res = section('ffi') and ffi_overhead(quick and 20000 or 100000, reps, warmup) or {}
    for _, s in ipairs(notes) do print('note: ' .. s) end

    -- =============================================================================================
    -- JSON (last line)
    -- =============================================================================================
    local worst_gemm, worst_gemm_c, worst_gemm_cpu = math.huge, math.huge, math.huge
    local worst_gemm_name
    local gemm_json = {}
    for _, r in ipairs(gemm_rows) do
        if r.ratio < worst_gemm then worst_gemm, worst_gemm_name = r.ratio, r.name end
        if r.c_ratio and r.c_ratio < worst_gemm_c then worst_gemm_c = r.c_ratio end
        if r.cpu_ratio and r.cpu_ratio < worst_gemm_cpu then worst_gemm_cpu = r.cpu_ratio end
        gemm_json[r.name] = {
            raw_gflops = L.round(r.raw_gflops, 2), gflops = L.round(r.lua_gflops, 2), ratio = L.round(r.ratio, 3),
            c_gflops = r.c_gflops and L.round(r.c_gflops, 2), c_ratio = r.c_ratio and L.round(r.c_ratio, 3),
            cpu_ratio = r.cpu_ratio and L.round(r.cpu_ratio, 3), c_cpu_ratio = r.c_cpu_ratio and L.round(r.c_cpu_ratio, 3),
            util = r.util and L.round(r.util, 2),
        }
    end
    local function num(v, d) if v == nil or v == math.huge then return nil end return L.round(v, d or 4) end
    local fj = ffi_json(ffi_res)
    print(L.json {
        matmul_vs_sgemm = num(worst_gemm, 3),
        matmul_c_vs_sgemm = num(worst_gemm_c, 3),
        matmul_cpu_vs_sgemm = num(worst_gemm_cpu, 3),
        matmul_worst = worst_gemm_name,
        elementwise_vs_memcpy = num(worst_stream, 3),
        elementwise_worst = worst_stream_name,
        elementwise_kernel_vs_memcpy = num(worst_stream_kernel, 3),
        elementwise_cpu_vs_memcpy = num(worst_stream_cpu, 3),
        elementwise_vs_memcpy_same_threads = num(worst_stream_same, 3),
        elementwise_vs_memcpy_quiet = num(worst_stream_quiet, 3),
        elementwise_quiet_missing = quiet_missing,
        ffi_us_per_call = fj.ffi_us_per_call,
        ffi_cpu_us_per_call = fj.ffi_cpu_us_per_call,
        ffi_kernel_us_per_call = fj.ffi_kernel_us_per_call,
        ffi_raw_us_per_call = fj.ffi_raw_us_per_call,
        ffi_breakdown = fj.ffi_breakdown,
        threads = threads,
        kernel = nc.cpu_kernel(),
        openblas_core = blas_core,
        quick = quick,
        reps = reps,
        gemm_reps = gemm_reps,
        stream_mib = L.round(MiB, 1),
        l3_mib = l3_mib and L.round(l3_mib, 1),
        only = next(only) and args.only or nil,
        kernels = args.kernels,
        baseline_gbps = { memcpy = num(base.memcpy, 2), nc_copy = num(base.nc_copy, 2),
                          nc_copy_omp = num(base.nc_copy_omp, 2), par_memcpy = num(base.par_memcpy, 2),
                          saxpy = num(base.saxpy, 2) },
        baseline_paired = 'min over memcpy (1 thread) and par_memcpy (threads)',
        matmul = gemm_json,
        amx = (function()
            if #amx_rows == 0 then return nil end
            local o = {}
            for _, r in ipairs(amx_rows) do
                o[r.name] = { raw_gflops = L.round(r.raw_gflops, 2), gflops = L.round(r.gflops, 2), ratio = L.round(r.ratio, 3) }
            end
            return o
        end)(),
        elementwise = stream_json,
        compute_ns_per_elem = compute_json,
        elementwise_included = included,
        cross_entropy = ce_json,
    })
end

local ok, err = xpcall(main, debug.traceback)
if not ok then io.stderr:write('ops bench failed: ', tostring(err), '\n') end
io.stdout:flush()
io.stderr:flush()
-- Leave without lua_close: LuaJIT's lua_close dlcloses libnanochat (and with it libgomp) while
-- OpenMP worker threads still exist, which segfaults at exit unless the library is linked with
-- -Wl,-z,nodelete. os.exit without `close` exits through C exit() and is safe either way.
os.exit(ok and 0 or 1)
