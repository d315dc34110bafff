-- tools/bench/arch.lua — what each issue-6 architecture feature costs or buys, measured:
--
--   ./nanochat tools/bench/arch.lua [only=collider,mhc,mtp,loop] [threads=0] [<feature>.<option>=v ...]
--
-- A feature module's own options go through with its name as prefix (mhc.steps=5, mtp.steps=200,
-- collider.reps=9, loop.q=0.5); see each module's header for them.
--
-- One module per feature (tools/bench/arch_<feature>.lua) returns run(opts) ->
-- { rows = { {feature, metric, value, baseline, note}, ... }, json = { key = number, ... } };
-- each measures its own baseline in the same run (dense backward for Collider, n = 1 streams for
-- mHC, plain greedy decoding for MTP, always-T loops for LoopLM). Each module also runs alone
-- (`./nanochat tools/bench/arch_mhc.lua`). This driver runs them in turn, prints one table and,
-- as its last line, one JSON object with at least collider_backward_saving (fraction of backward
-- time saved at rho = 0.4), mhc4_overhead (step-time overhead at n = 4 vs n = 1), mtp_spec_speedup
-- (self-speculative vs plain greedy decode) and looplm_early_exit_speedup (q-exit vs all loops).
local nc = require 'nanochat'
local here = debug.getinfo(1, 'S').source:match('^@(.*/)') or './'
local L = dofile(here .. 'lib.lua')

local args = L.parse_args()
if (args.threads or 0) > 0 then nc.set_num_threads(args.threads) end
local FEATURES = { 'collider', 'mhc', 'mtp', 'loop' }
local wanted = {}
for name in tostring(args.only or ''):gmatch('[^,%s]+') do wanted[name] = true end

local tables, json = {}, { threads = nc.get_num_threads() }
for _, f in ipairs(FEATURES) do
    if next(wanted) == nil or wanted[f] then
        local run = dofile(here .. 'arch_' .. f .. '.lua')
        local o = {}
        for k, v in pairs(args) do
            local feat, key = tostring(k):match('^(%w+)%.(.+)$')
            if feat == f then o[key] = v end
        end
        if args.threads then o.threads = args.threads end
        local res = run(o)
        tables[#tables + 1] = { name = f, headers = res.headers or { 'feature', 'metric', 'value', 'baseline', 'note' },
                                rows = res.rows or {}, fmts = res.fmts }
        -- module JSON keys are namespaced by the module unless they already carry the feature's prefix
        for k, v in pairs(res.json or {}) do
            local key = tostring(k)
            local pre = f == 'loop' and 'looplm_' or (f .. '_')
            if key:sub(1, #pre) ~= pre and key:sub(1, 4) ~= 'mhc4' then key = f .. '.' .. key end
            json[key] = v
        end
    end
end
for _, t in ipairs(tables) do
    print('\n== ' .. t.name)
    L.print_table(t.headers, t.rows, t.fmts)
end
json.bench = 'arch'
print(L.json(json))
