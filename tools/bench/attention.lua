-- tools/bench/attention.lua — CPU time of the attention kernels (nc_attention forward and
-- nc_attention_backward, causal GQA) at the tiny model's shape and at T = 1024.
--
-- Timing is PROCESS CPU time (os.clock) on ONE thread by default, so that a loaded machine does not distort it
-- (wall time would). Each row: median over `reps` samples of the bare C call on preallocated tensors.
-- There is no in-run baseline: the old kernel is gone after the change, so README records the numbers
-- measured on the commit before (see "Training performance"). Also prints GFLOP/s counting the useful
-- causal FLOPs (forward 4 B H D T(T+1)/2, backward 2.5x that).
-- threads=N (default 1) times the kernels on N threads instead (still process CPU time, summed over
-- the threads: the work done, not the latency; e.g. threads=2 for the two-pass backward path that
-- B 1, T 1024 takes with several threads and few (b, kv head) items).
-- Usage: ./nanochat tools/bench/attention.lua [reps=5] [long=1] [masked=1] [threads=1]
if not package.path:find('lua/?/init.lua', 1, true) then
    package.path = 'lua/?.lua;lua/?/init.lua;' .. package.path
end
local here = (debug.getinfo(1, 'S').source:match('^@(.*/)') or './')
local L = dofile(here .. 'lib.lua')
local args = L.parse_args()
local nc = require 'nanochat'
local C = require('nanochat.core').C

local reps = tonumber(args.reps) or 5
local long = args.long == nil or tonumber(args.long) == 1
local threads = tonumber(args.threads) or 1
nc.set_num_threads(threads)

local function median(xs) table.sort(xs); return xs[math.floor((#xs + 1) / 2)] end

local function cpu_time(fn)
    local xs = {}
    fn()   -- warmup
    for r = 1, reps do
        local t0 = os.clock(); fn(); xs[r] = os.clock() - t0
    end
    return median(xs)
end

local shapes = { { B = 8, T = 256, H = 4, Hkv = 2, D = 64 } }
if long then shapes[2] = { B = 1, T = 1024, H = 4, Hkv = 2, D = 64 } end
local rows, out = {}, { threads = threads, clock = 'process cpu', reps = reps, shapes = {} }
for _, s in ipairs(shapes) do
    local q = nc.randn { s.B, s.T, s.H, s.D }
    local k = nc.randn { s.B, s.T, s.Hkv, s.D }
    local v = nc.randn { s.B, s.T, s.Hkv, s.D }
    local o = nc.zeros { s.B, s.T, s.H, s.D }
    local lse = nc.zeros { s.B, s.H, s.T }
    local go = nc.randn { s.B, s.T, s.H, s.D }
    local gq, gk, gv = nc.zeros { s.B, s.T, s.H, s.D }, nc.zeros { s.B, s.T, s.Hkv, s.D }, nc.zeros { s.B, s.T, s.Hkv, s.D }
    local scale = 1 / math.sqrt(s.D)
    local function fwd() assert(C.nc_attention(o._c, lse._c, q._c, k._c, v._c, 1, scale) == 0) end
    local function bwd()
        assert(C.nc_attention_backward(gq._c, gk._c, gv._c, o._c, lse._c, q._c, k._c, v._c, go._c, 1, scale) == 0)
    end
    fwd()
    local tf, tb = cpu_time(fwd), cpu_time(bwd)
    local fl = 4 * s.B * s.H * s.D * s.T * (s.T + 1) / 2
    local name = string.format('B%d T%d H%d Hkv%d D%d', s.B, s.T, s.H, s.Hkv, s.D)
    rows[#rows + 1] = { name, tf * 1e3, tb * 1e3, fl / tf / 1e9, 2.5 * fl / tb / 1e9 }
    out.shapes[#out.shapes + 1] = { shape = name, fwd_ms = L.round(tf * 1e3, 2), bwd_ms = L.round(tb * 1e3, 2) }
end
L.print_table({ 'shape', 'fwd ms', 'bwd ms', 'fwd GFLOP/s', 'bwd GFLOP/s' }, rows,
    { '%s', '%.2f', '%.2f', '%.2f', '%.2f' })
print(L.json(out))
