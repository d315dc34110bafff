-- tools/bench/lib.lua — shared helpers for the benchmarks under tools/bench/.
--
-- Promise: a wall clock (clock_gettime(CLOCK_MONOTONIC) through the FFI; os.clock is CPU time
-- and would sum the time of every OpenMP/OpenBLAS thread), timing as the median of N repeats
-- after warmup, key=value argument parsing (the launcher's ARGS table or the script's `arg`),
-- a plain-text table printer and a JSON encoder for the one-object-per-run last line.
-- Loading it twice, or next to another module that declared clock_gettime, is harmless.
local ffi = require 'ffi'

local L = {}

-- ---- wall clock ------------------------------------------------------------------------------
-- Declarations may already exist (another benchmark, a second load of this file): every cdef is
-- guarded, and the call goes through a function pointer of our own type so a different earlier
-- declaration of clock_gettime (e.g. with another struct name) does not matter.
pcall(ffi.cdef, 'typedef struct nc_bench_timespec { int64_t tv_sec; int64_t tv_nsec; } nc_bench_timespec;')
pcall(ffi.cdef, 'int clock_gettime(int clk_id, struct timespec *tp);')
pcall(ffi.cdef, 'long sysconf(int name);')
pcall(ffi.cdef, 'void *memcpy(void *dst, const void *src, size_t n);')

local CLOCK_MONOTONIC = 1
local clock_fn = ffi.cast('int (*)(int, nc_bench_timespec *)', ffi.C.clock_gettime)
local ts = ffi.new('nc_bench_timespec')

-- seconds since an arbitrary fixed point (monotonic, wall time)
function L.now()
    clock_fn(CLOCK_MONOTONIC, ts)
    return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

-- CPU seconds used by the whole process (all threads: OpenMP and OpenBLAS workers included)
function L.process_cpu()
    clock_fn(2, ts)   -- CLOCK_PROCESS_CPUTIME_ID
    return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

-- online CPUs (sysconf(_SC_NPROCESSORS_ONLN), 84 on Linux/glibc)
function L.ncpus()
    local ok, n = pcall(function() return tonumber(ffi.C.sysconf(84)) end)
    if ok and n and n > 0 then return n end
    return 1
end

-- ---- statistics ------------------------------------------------------------------------------
function L.median(xs)
    local s = {}
    for i = 1, #xs do s[i] = xs[i] end
    table.sort(s)
    local n = #s
    if n == 0 then return 0 / 0 end
    if n % 2 == 1 then return s[(n + 1) / 2] end
    return 0.5 * (s[n / 2] + s[n / 2 + 1])
end

function L.min(xs)
    local m = math.huge
    for i = 1, #xs do if xs[i] < m then m = xs[i] end end
    return m
end

-- A full collection, then (when nanochat is loaded) the release of the tensors it collected:
-- tensor.lua releases them at its next allocation otherwise, which would land inside the next
-- timed sample.
function L.collect()
    collectgarbage('collect')
    local T = package.loaded['nanochat.tensor']
    if type(T) == 'table' and T._release_dead then T._release_dead() end
end

-- Time fn. opts: warmup (untimed calls, default 2), reps (timed samples, default 5, at least 1),
-- inner (calls per sample, default 1; the sample is divided by it), setup (called before each
-- sample, untimed), gc (collect garbage before each sample, untimed; default true).
-- Returns median seconds per call, and a table {median=, min=, samples={...}}.
function L.time(fn, opts)
    opts = opts or {}
    local warmup = opts.warmup or 2
    local reps = math.max(1, opts.reps or 5)
    local inner = math.max(1, opts.inner or 1)
    local setup = opts.setup
    local gc = opts.gc ~= false
    for _ = 1, warmup do
        if setup then setup() end
        for _ = 1, inner do fn() end
    end
    local samples = {}
    for r = 1, reps do
        if setup then setup() end
        if gc then L.collect() end
        local t0 = L.now()
        for _ = 1, inner do fn() end
        samples[r] = (L.now() - t0) / inner
    end
    local med = L.median(samples)
    return med, { median = med, min = L.min(samples), samples = samples }
end

-- Calls of fn needed so that one sample lasts about target seconds (1 .. max_inner).
function L.calibrate(fn, target, max_inner)
    fn()
    local t0 = L.now()
    fn()
    local dt = L.now() - t0
    return math.max(1, math.min(max_inner or 1000, math.ceil((target or 0.05) / math.max(dt, 1e-7))))
end

-- Paired, interleaved timing of several functions, for ratios that survive a noisy machine
-- (shared VMs drift by 2x within seconds): every repeat times each function once, in an order
-- rotated per repeat, so drift hits all of them alike. fns: list of functions or of tables
-- {fn = f, inner = n, setup = g}. opts: warmup (default 2), reps (default 5), target (seconds
-- per sample when inner is not given; default 0.05), gc (collect before each sample; default
-- true). Returns a list of {median=, min=, samples=, inner=} (seconds per call) and a list of
-- paired ratios: ratio[i] = median over repeats of (time of fns[1] / time of fns[i]), i.e. how
-- fast fns[i] is relative to fns[1] (> 1 = faster).
-- opts.cpu: also take the process CPU time of every sample (all threads); then each result has
-- cpu_median (CPU seconds per call) and util (median CPU / wall: ~threads when no thread waited for
-- a core), and a third list holds the paired ratios of CPU times. A thread that another process
-- keeps off its core adds wall time but no CPU time, so the CPU ratios show what the code costs
-- on a busy machine (waiting threads must not spin long: the launcher sets GOMP_SPINCOUNT=10000
-- and OPENBLAS_THREAD_TIMEOUT=4).
function L.compare(fns, opts)
    opts = opts or {}
    local warmup = opts.warmup or 2
    local reps = math.max(1, opts.reps or 5)
    local gc = opts.gc ~= false
    local cases = {}
    for i, f in ipairs(fns) do
        local c = type(f) == 'table' and f or { fn = f }
        if c.setup then c.setup() end
        c.inner = c.inner or (c.setup and 1) or L.calibrate(c.fn, opts.target)
        cases[i] = c
    end
    local samples, csamples = {}, {}
    local cpu = opts.cpu
    for i, c in ipairs(cases) do
        samples[i], csamples[i] = {}, {}
        for _ = 1, warmup do
            if c.setup then c.setup() end
            for _ = 1, c.inner do c.fn() end
        end
    end
    local n = #cases
    for r = 1, reps do
        for k = 0, n - 1 do
            local i = (r + k - 1) % n + 1
            local c = cases[i]
            if c.setup then c.setup() end
            if gc then L.collect() end
            local fn, inner = c.fn, c.inner
            local u0 = cpu and L.process_cpu()
            local t0 = L.now()
            for _ = 1, inner do fn() end
            samples[i][r] = (L.now() - t0) / inner
            if cpu then csamples[i][r] = (L.process_cpu() - u0) / inner end
        end
    end
    local res, ratios, cratios = {}, {}, cpu and {} or nil
    for i = 1, n do
        res[i] = { median = L.median(samples[i]), min = L.min(samples[i]), samples = samples[i], inner = cases[i].inner }
        local rs = {}
        for r = 1, reps do rs[r] = samples[1][r] / samples[i][r] end
        ratios[i] = L.median(rs)
        if cpu then
            local cs, us = {}, {}
            for r = 1, reps do
                cs[r] = csamples[1][r] / csamples[i][r]
                us[r] = csamples[i][r] / samples[i][r]
            end
            cratios[i] = L.median(cs)
            res[i].cpu_median, res[i].cpu_samples = L.median(csamples[i]), csamples[i]
            res[i].util = L.median(us)
        end
    end
    return res, ratios, cratios
end

-- A multi-threaded memcpy baseline: libc memcpy is single-threaded, and no library at hand
-- offers a threaded out-of-place copy, so this compiles a 10-line OpenMP helper with the system
-- C compiler into a temporary .so (removed after loading). Returns fn(dst, src, nbytes, threads)
-- or nil plus a reason when no compiler is available.
local par_memcpy_cache
function L.par_memcpy()
    if par_memcpy_cache ~= nil then return par_memcpy_cache or nil, 'unavailable' end
    local src = [[
#include <string.h>
#include <omp.h>
void nc_bench_par_memcpy(char *dst, const char *src, long n, int threads) {
#pragma omp parallel num_threads(threads)
    {
        long nt = omp_get_num_threads(), t = omp_get_thread_num();
        long chunk = ((n + nt - 1) / nt + 4095) & ~4095L;
        long s = t * chunk, e = s + chunk < n ? s + chunk : n;
        if (s < e) memcpy(dst + s, src + s, (size_t)(e - s));
    }
}
]]
    local base = os.tmpname()
    local cfile, sofile = base .. '.c', base .. '.so'
    local f = io.open(cfile, 'w')
    if not f then par_memcpy_cache = false; return nil, 'cannot write ' .. cfile end
    f:write(src)
    f:close()
    local cc = os.getenv('CC') or 'cc'
    local r = os.execute(string.format('%s -O2 -fopenmp -shared -fPIC -o %s %s >/dev/null 2>&1', cc, sofile, cfile))
    os.remove(cfile)
    os.remove(base)
    if not (r == 0 or r == true) then
        par_memcpy_cache = false
        return nil, 'no working C compiler (' .. cc .. ') with OpenMP'
    end
    pcall(ffi.cdef, 'void nc_bench_par_memcpy(char *dst, const char *src, long n, int threads);')
    local ok, lib = pcall(ffi.load, sofile)
    os.remove(sofile)
    if not ok then par_memcpy_cache = false; return nil, tostring(lib) end
    L._par_memcpy_lib = lib   -- keep the library loaded
    par_memcpy_cache = function(dst, src_p, n, threads)
        lib.nc_bench_par_memcpy(ffi.cast('char *', dst), ffi.cast('const char *', src_p), n, threads)
    end
    return par_memcpy_cache
end

-- ---- arguments -------------------------------------------------------------------------------
-- key=value pairs from the launcher's global ARGS table (if any) or from `arg`. Values that
-- look like numbers become numbers; a bare word becomes key = true.
function L.parse_args(argv)
    argv = argv or rawget(_G, 'ARGS') or rawget(_G, 'arg') or {}
    local out = {}
    -- a launcher may already hand over a parsed {key = value} table
    for k, v in pairs(argv) do
        if type(k) == 'string' then out[k] = tonumber(v) or v end
    end
    for i = 1, #argv do
        local a = argv[i]
        if type(a) == 'string' then
            local k, v = a:match('^%-*([%w_%.%-]+)=(.*)$')
            if k then out[k] = tonumber(v) or v
            elseif a:match('^%-*[%w_]+$') then out[a:gsub('^%-+', '')] = true end
        end
    end
    return out
end

-- ---- output ----------------------------------------------------------------------------------
-- Print rows (lists of values) under headers; numbers are formatted with fmt (default %.3f)
-- or per-column formats in fmts[i].
function L.print_table(headers, rows, fmts)
    fmts = fmts or {}
    local cells, widths = {}, {}
    for i, h in ipairs(headers) do widths[i] = #h end
    for r, row in ipairs(rows) do
        cells[r] = {}
        for i = 1, #headers do
            local v = row[i]
            local s
            if type(v) == 'number' then s = string.format(fmts[i] or '%.3f', v)
            elseif v == nil then s = '-'
            else s = tostring(v) end
            cells[r][i] = s
            if #s > widths[i] then widths[i] = #s end
        end
    end
    local function line(vals)
        local parts = {}
        for i = 1, #headers do
            local s = vals[i]
            if i == 1 then parts[i] = s .. string.rep(' ', widths[i] - #s)
            else parts[i] = string.rep(' ', widths[i] - #s) .. s end
        end
        print(table.concat(parts, '  '))
    end
    line(headers)
    local rule = {}
    for i = 1, #headers do rule[i] = string.rep('-', widths[i]) end
    print(table.concat(rule, '  '))
    for r = 1, #cells do line(cells[r]) end
end

-- Minimal JSON encoder with sorted keys (stable output; dkjson is not required). Non-finite
-- numbers become null.
local function encode(v, out)
    local t = type(v)
    if t == 'nil' then out[#out + 1] = 'null'
    elseif t == 'boolean' then out[#out + 1] = v and 'true' or 'false'
    elseif t == 'number' then
        if v ~= v or v == math.huge or v == -math.huge then out[#out + 1] = 'null'
        elseif v == math.floor(v) and math.abs(v) < 2 ^ 53 then out[#out + 1] = string.format('%d', v)
        else out[#out + 1] = string.format('%.6g', v) end
    elseif t == 'string' then
        out[#out + 1] = '"' .. v:gsub('[%c"\\]', function(c)
            local map = { ['"'] = '\\"', ['\\'] = '\\\\', ['\n'] = '\\n', ['\t'] = '\\t', ['\r'] = '\\r' }
            return map[c] or string.format('\\u%04x', c:byte())
        end) .. '"'
    elseif t == 'table' then
        if #v > 0 or next(v) == nil and getmetatable(v) == L.array_mt then
            out[#out + 1] = '['
            for i = 1, #v do
                if i > 1 then out[#out + 1] = ',' end
                encode(v[i], out)
            end
            out[#out + 1] = ']'
        else
            local keys = {}
            for k in pairs(v) do keys[#keys + 1] = tostring(k) end
            table.sort(keys)
            out[#out + 1] = '{'
            for i, k in ipairs(keys) do
                if i > 1 then out[#out + 1] = ', ' end
                encode(k, out)
                out[#out + 1] = ': '
                local val = v[k]
                if val == nil then val = v[tonumber(k)] end
                encode(val, out)
            end
            out[#out + 1] = '}'
        end
    else
        out[#out + 1] = 'null'
    end
end
L.array_mt = {}

function L.json(v)
    local out = {}
    encode(v, out)
    return table.concat(out)
end

-- ---- random-weight packed GPTs of the benchmarks' model sizes -------------------------------------
-- (tools/bench/infer.lua's engine shapes: vocab 32768 for 125M as GPT-2 small, 8192 otherwise)
L.ENGINE_SHAPES = {
    ['10M'] = { vocab_size = 8192, d_model = 256, n_layer = 6, n_head = 4 },
    ['50M'] = { vocab_size = 8192, d_model = 512, n_layer = 10, n_head = 8 },
    ['125M'] = { vocab_size = 32768, d_model = 768, n_layer = 12, n_head = 12 },
}

-- nc.pack of a random GPT of shape name (L.ENGINE_SHAPES), cfg fields from `over` on top
-- (seq_len 256, seed 1 by default); returns the engine and the cfg. The fp32 model is dropped.
function L.packed_engine(name, over)
    local nc = require 'nanochat'
    local sh = L.ENGINE_SHAPES[name] or error('bench: shape must be 10M, 50M or 125M, got ' .. tostring(name), 2)
    local cfg = { seq_len = 256, seed = 1 }
    for k, v in pairs(sh) do cfg[k] = v end
    for k, v in pairs(over or {}) do cfg[k] = v end
    local model = nc.models.gpt.new(cfg)
    model:eval()
    local e = nc.pack(model)
    model = nil
    collectgarbage()
    return e, cfg
end

-- round to `digits` significant decimals for readable JSON
-- The layers alone (one nc_engine_decode per token at position P: no embedding, no head) with
-- another build's library `old` (ffi.load'ed; same nc_tensor / nc_engine_layer ABI) and with this
-- one, on the same cache and input x0 (1, d), samples of ndec calls interleaved (`reps` each): a
-- before / after pair free of the machine's load swings between processes. cf: the engine's
-- nc_engine_cfg (e._cfg_c after a decode step, n_pos = 1). Returns the median seconds per call of
-- old and of this build, and whether both gave the same bits. The caller sets the thread counts.
function L.decode_layers_vs(old, cache, cf, n_layer, P, x0, ndec, reps)
    local C = require('nanochat.core').C
    local function call(lib, y)
        assert(lib.nc_engine_decode(y._c, cache.layers_c, n_layer, cf, P, cache.cos._c, cache.sin._c) == 0,
            'engine decode failed')
    end
    local ya, yb = x0:clone(), x0:clone()
    call(C, ya)
    call(old, yb)
    local same = (ya - yb):abs():max():item() == 0
    local function sample(lib)
        local y = x0:clone()
        local t0 = L.now()
        for _ = 1, ndec do
            y:copy_(x0)
            call(lib, y)
        end
        return (L.now() - t0) / ndec
    end
    local a, b = {}, {}
    for _ = 1, reps do
        a[#a + 1] = sample(old)
        b[#b + 1] = sample(C)
    end
    return L.median(a), L.median(b), same
end

function L.round(x, digits)
    if x ~= x or x == math.huge or x == -math.huge then return x end
    local m = 10 ^ (digits or 4)
    return math.floor(x * m + 0.5) / m
end

return L
