-- tools/bench/pools.lua — what the thread-pool settings of the launcher (core/launcher.c,
-- lua/nanochat/core.lua) do to a training step and to decode.
--
--   ./nanochat tools/bench/pools.lua [rounds=3] [config=tiny] [steps=3] [threads=2] [decode=1]
--
-- Two thread pools share the cores: OpenBLAS's pthreads (every sgemm) and libgomp's (every other
-- kernel). Both runtimes read their spin settings once, when the library loads, so each setting
-- runs in its own process (`./nanochat ...` with the environment below; NC_POOL_DEFAULTS=1 makes
-- the launcher leave the runtimes' defaults alone), the settings interleaved round by round:
--   defaults : the runtimes' own defaults (OpenBLAS spins ~2^28 cycles after a call, libgomp
--              300000 spins before sleeping)
--   nanochat : what the launcher sets (OPENBLAS_THREAD_TIMEOUT=4, GOMP_SPINCOUNT=10000)
--   passive  : OPENBLAS_THREAD_TIMEOUT=4, OMP_WAIT_POLICY=passive (libgomp threads sleep at once)
-- Training: tools/bench/train.lua (forward + backward + AdamW, B 8, T 256, torch=0), tokens/s of
-- its f32 row (BitLinear through OpenBLAS sgemm) and, on AMX machines, its AMX row (BitLinear on
-- the tile unit; only the LM head uses sgemm).
-- Decode (decode=1): the packed engine (nc.pack of a random 50M-shape model: d 512, 10 layers)
-- decoding 32 tokens after a 64-token prompt, tokens/s (this script with child=decode).
-- Reported: the median over rounds per setting and the ratio to `defaults`. Last line: JSON
-- { train_speedup, decode_speedup, ... } (nanochat vs defaults).
local here = debug.getinfo(1, 'S').source:match('^@(.*/)') or './'
local L = dofile(here .. 'lib.lua')
local json = require 'dkjson'

local args = L.parse_args()
local rounds = tonumber(args.rounds) or 3
local config = args.config or 'tiny'
local steps = tonumber(args.steps) or 3
local threads = tonumber(args.threads) or 2
local exe = (arg and arg[-1]) or './nanochat'
-- every child starts from the user's environment: this process's launcher already set its pool
-- variables, which the children would otherwise inherit
local clean = require('nanochat.core').unset_pool_env()

if args.child == 'decode' then   -- one decode measurement in this process's pool settings
    local nc = require 'nanochat'
    nc.set_num_threads(threads)
    local model = nc.models.gpt.new { vocab_size = 8192, d_model = 512, n_layer = 10, n_head = 8, seq_len = 256, seed = 1 }
    model:eval()
    local e = nc.pack(model)
    local prompt = {}
    for i = 1, 64 do prompt[i] = (i * 37) % 8192 end
    local pidx, one = nc.tensor({ prompt }, { dtype = 'i64' }), nc.tensor({ { 5 } }, { dtype = 'i64' })
    local cache = e:new_cache(1, 128)
    e:forward_cached(pidx, cache)
    local ts = {}
    for r = 1, 3 do
        cache.pos = 64
        local t0 = L.now()
        for _ = 1, 32 do e:forward_cached(one, cache) end
        ts[r] = L.now() - t0
    end
    table.sort(ts)
    print(L.json { decode_tok_s = 32 / ts[2] })
    return
end

local SETTINGS = {
    { name = 'defaults', env = 'NC_POOL_DEFAULTS=1' },
    { name = 'nanochat', env = '' },
    { name = 'passive', env = 'OPENBLAS_THREAD_TIMEOUT=4 OMP_WAIT_POLICY=passive' },
}

-- run a command, return the JSON object of its last line
local function last_json(cmd)
    local p = io.popen(cmd .. ' 2>/dev/null')
    local last
    for line in p:lines() do last = line end
    p:close()
    local obj = last and json.decode(last)
    if type(obj) ~= 'table' then error('pools: no JSON from: ' .. cmd) end
    return obj
end

local function median(t)
    local s = {}
    for i, v in ipairs(t) do s[i] = v end
    table.sort(s)
    local n = #s
    if n == 0 then return 0 / 0 end
    return n % 2 == 1 and s[(n + 1) / 2] or (s[n / 2] + s[n / 2 + 1]) / 2
end

local train, amx, decode = {}, {}, {}
for _, s in ipairs(SETTINGS) do train[s.name], amx[s.name], decode[s.name] = {}, {}, {} end
for r = 1, rounds do
    for _, s in ipairs(SETTINGS) do
        local o = last_json(string.format(clean .. ' env %s %s tools/bench/train.lua configs=%s steps=%d warmup=1 threads=%d torch=0',
            s.env, exe, config, steps, threads))
        local c = o.configs or {}
        train[s.name][r] = (c[config] or o).tokens_per_s
        amx[s.name][r] = c[config .. '+amx'] and c[config .. '+amx'].tokens_per_s or 0 / 0
        if tostring(args.decode) ~= '0' then
            local d = last_json(string.format(clean .. ' env %s %s tools/bench/pools.lua child=decode threads=%d', s.env, exe, threads))
            decode[s.name][r] = d.decode_tok_s
        end
        io.stderr:write(string.format('round %d %-9s train f32 %.0f / amx %.0f tok/s  decode %s tok/s\n', r, s.name,
            train[s.name][r], amx[s.name][r], tostring(decode[s.name][r])))
    end
end

local rows = {}
local base_t, base_a, base_d = median(train.defaults), median(amx.defaults), median(decode.defaults)
for _, s in ipairs(SETTINGS) do
    local t, a, d = median(train[s.name]), median(amx[s.name]), median(decode[s.name])
    rows[#rows + 1] = { s.name, s.env == '' and '(launcher default)' or s.env, t, t / base_t, a, a / base_a, d, d / base_d }
end
print(string.format('Thread-pool settings, %d interleaved rounds (medians): train = %s step (B 8, T 256, %d threads), '
    .. 'decode = 50M packed engine', rounds, config, threads))
L.print_table({ 'setting', 'environment', 'train f32 tok/s', 'vs defaults', 'train AMX tok/s', 'vs defaults',
                'decode tok/s', 'vs defaults' }, rows, { nil, nil, '%.0f', '%.2f', '%.0f', '%.2f', '%.1f', '%.2f' })
print(L.json {
    train_speedup = L.round(median(train.nanochat) / base_t, 3),
    train_amx_speedup = base_a == base_a and L.round(median(amx.nanochat) / base_a, 3) or nil,
    train_amx_tok_s = base_a == base_a and { defaults = L.round(base_a, 1), nanochat = L.round(median(amx.nanochat), 1),
                      passive = L.round(median(amx.passive), 1) } or nil,
    decode_speedup = base_d == base_d and L.round(median(decode.nanochat) / base_d, 3) or nil,
    train_tok_s = { defaults = L.round(base_t, 1), nanochat = L.round(median(train.nanochat), 1),
                    passive = L.round(median(train.passive), 1) },
    decode_tok_s = { defaults = L.round(base_d, 2), nanochat = L.round(median(decode.nanochat), 2),
                     passive = L.round(median(decode.passive), 2) },
    rounds = rounds, config = config, threads = threads,
})
