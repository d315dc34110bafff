-- tools/bench/alloc.lua — does the host block cache pay for itself?
-- Allocates, fills (touches every page) and frees a 64 MiB tensor repeatedly, with the cache
-- (default) and without it (NC_HOST_CACHE_MB=0, measured in a child process of this run).
-- Prints a table and, as its last line, JSON {"alloc_fill_ms_cached", "alloc_fill_ms_uncached", "speedup"}.
package.path = 'lua/?.lua;lua/?/init.lua;' .. package.path
local ffi = require 'ffi'
ffi.cdef [[ typedef struct { long tv_sec; long tv_nsec; } nc_bench_ts; int clock_gettime(int, nc_bench_ts *); ]]
local ts = ffi.new('nc_bench_ts')
local function now() ffi.C.clock_gettime(1, ts); return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9 end

local function measure()
    local nc = require 'nanochat'
    local times = {}
    for i = 1, 30 do
        local t0 = now()
        local t = nc.empty { 16 * 1024 * 1024 }
        t:fill_(1)
        t = nil
        collectgarbage('collect')
        times[i] = now() - t0
    end
    table.sort(times)
    return times[15] * 1000
end

if os.getenv('NC_ALLOC_CHILD') then
    io.write(string.format('%.6f\n', measure()))
    os.exit(0)
end

local cached = measure()
local exe = arg and arg[-1] or 'luajit'
local p = io.popen('NC_ALLOC_CHILD=1 NC_HOST_CACHE_MB=0 ' .. exe .. ' ' .. arg[0])
local uncached = tonumber(p:read('*l'))
p:close()
print(string.format('%-34s %10s', 'alloc + fill + free of 64 MiB', 'median ms'))
print(string.format('%-34s %10.3f', 'with the host block cache', cached))
print(string.format('%-34s %10.3f', 'without (NC_HOST_CACHE_MB=0)', uncached))
print(string.format('{"alloc_fill_ms_cached": %.4f, "alloc_fill_ms_uncached": %.4f, "speedup": %.3f}',
    cached, uncached, uncached / cached))
