-- tools/bench/decode_load.lua — packed-engine decode with a fixed thread count vs engine:set_threads('auto')
-- (lua/nanochat/adapt_threads.lua), on an idle machine and with a competing busy process.
--
--   ./nanochat tools/bench/decode_load.lua [shape=50M|125M|10M] [threads=2] [tokens=192] [rounds=3]
--        [hogs=1]
--
-- A random-weight GPT of the shape (as tools/bench/infer.lua) is packed; each setting (1 thread,
-- `threads` threads, auto over 1..threads) decodes `tokens` tokens greedily after a 16-token
-- prompt, the settings interleaved round by round so drift hits all alike; tokens/s is the median
-- over rounds. "load": `hogs` busy shell loops (one core each, started here, killed after; a load
-- generator, not a measurement) run during the same rounds. The tokens are checked equal across
-- settings (the decode is bit-identical on any thread count). Last line: JSON with the tokens/s per
-- setting and condition, auto_vs_best_fixed (auto / the faster fixed count) and auto_vs_max_threads
-- per condition.
local nc = require 'nanochat'
local here = debug.getinfo(1, 'S').source:match('^@(.*/)') or './'
local L = dofile(here .. 'lib.lua')
local args = L.parse_args()
local shape = tostring(args.shape or '50M')
local T = tonumber(args.threads) or 2
local ntok = tonumber(args.tokens) or 192
local rounds = tonumber(args.rounds) or 3
local hogs = tonumber(args.hogs) or 1

local e, cfg = L.packed_engine(shape)
local prompt = {}
for i = 1, 16 do prompt[i] = (i * 37) % cfg.vocab_size end

local settings = { { name = '1 thread', t = 1 }, { name = T .. ' threads', t = T }, { name = 'auto', t = 'auto' } }
local ref_tokens
local function decode(s)
    nc.set_num_threads(T)
    e:set_threads(s.t)
    local toks = {}
    local t0 = L.now()
    for id in e:generate(prompt, { max_tokens = ntok, temperature = 0 }) do toks[#toks + 1] = id end
    local dt = L.now() - t0
    if ref_tokens then
        for i = 1, #ref_tokens do
            if toks[i] ~= ref_tokens[i] then error('decode_load: ' .. s.name .. ' gave other tokens at ' .. i) end
        end
    else
        ref_tokens = toks
    end
    local info = s.t == 'auto' and tostring(e.adapt) or nil
    e:set_threads(nil)
    return #toks / dt, info
end

local function start_hogs(n)
    local pids = {}
    for _ = 1, n do
        local p = io.popen("sh -c 'timeout 600 sh -c \"while :; do :; done\" >/dev/null 2>&1 & echo $!'")
        pids[#pids + 1] = p:read('*l')
        p:close()
    end
    return pids
end
local function stop_hogs(pids)
    for _, pid in ipairs(pids) do if pid and pid:match('^%d+$') then os.execute('kill ' .. pid .. ' 2>/dev/null') end end
end

local results, rows, infos = {}, {}, {}
for _, cond in ipairs { 'idle', 'load' } do
    local pids = cond == 'load' and start_hogs(hogs) or {}
    local ok, err = pcall(function()
        local samples = {}
        for _, s in ipairs(settings) do samples[s.name] = {} end
        for r = 1, rounds do
            for i = 0, #settings - 1 do
                local s = settings[(r + i - 1) % #settings + 1]
                local tps, info = decode(s)
                table.insert(samples[s.name], tps)
                if info then infos[cond] = info end
            end
        end
        results[cond] = {}
        for _, s in ipairs(settings) do results[cond][s.name] = L.median(samples[s.name]) end
    end)
    stop_hogs(pids)
    if not ok then error(err, 0) end
    local r = results[cond]
    local best = math.max(r['1 thread'], r[T .. ' threads'])
    r.auto_vs_best_fixed = r.auto / best
    r.auto_vs_max_threads = r.auto / r[T .. ' threads']
    rows[#rows + 1] = { cond, r['1 thread'], r[T .. ' threads'], r.auto, r.auto_vs_best_fixed, r.auto_vs_max_threads }
end

print(string.format('decode tokens/s, %s shape, %d tokens after a 16-token prompt, median of %d interleaved rounds; '
    .. 'load = %d busy process(es) on this %d-CPU machine', shape, ntok, rounds, hogs, L.ncpus()))
L.print_table({ 'condition', '1 thread', T .. ' threads', 'auto', 'auto / best fixed', 'auto / ' .. T .. ' threads' }, rows,
    { '%s', '%.1f', '%.1f', '%.1f', '%.2f', '%.2f' })
for _, cond in ipairs { 'idle', 'load' } do print(cond .. ': ' .. tostring(infos[cond])) end
local json = { bench = 'decode_load', shape = shape, threads = T, tokens = ntok, rounds = rounds, hogs = hogs }
for cond, r in pairs(results) do
    json[cond] = { tok_s_1t = L.round(r['1 thread'], 1), tok_s_max = L.round(r[T .. ' threads'], 1),
                   tok_s_auto = L.round(r.auto, 1), auto_vs_best_fixed = L.round(r.auto_vs_best_fixed, 3),
                   auto_vs_max_threads = L.round(r.auto_vs_max_threads, 3) }
end
print(L.json(json))
