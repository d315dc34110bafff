-- tools/bench/llama.lua — decode speed of the same GGUF file in our packed engine and in llama.cpp
-- (pip llama-cpp-python, through tools/llama_check.py --bench), measured in the same run.
--
--   ./nanochat tools/bench/llama.lua [model=configs/models/dense.lua] [type=tq2_0] [threads=1]
--                                    [prompt=64] [new=64] [reps=3]
--
-- A random-init model of the config (exportable under llama.cpp's bitnet arch) is exported once;
-- our side loads that file (nc.export.load) and decodes `new` tokens one at a time after a
-- `prompt`-token prefill; llama.cpp does the same on the same file and threads (its own process;
-- its JSON carries decode_tok_s). Each side: the median of `reps` runs, the two alternating.
-- Without llama-cpp-python only our side is printed. Last line: JSON with ours_tok_s,
-- llama_cpp_tok_s (null when absent) and ours_vs_llama_cpp.
local nc = require 'nanochat'
local here = debug.getinfo(1, 'S').source:match('^@(.*/)') or './'
local L = dofile(here .. 'lib.lua')
local json = require 'dkjson'
local args = L.parse_args()

local threads = tonumber(args.threads) or 1
local P, NEW, reps = tonumber(args.prompt) or 64, tonumber(args.new) or 64, tonumber(args.reps) or 3
nc.set_num_threads(threads)
local cfg = dofile(args.model or 'configs/models/dense.lua')
local model = nc.models.gpt.new(cfg)
model:eval()
local path = os.tmpname() .. '.gguf'
nc.export.gguf(nc.pack(model), path, { type = args.type or 'tq2_0' })
local e = nc.export.load(path)

local prompt = {}
for i = 1, P do prompt[i] = (i * 37) % cfg.vocab_size end

local function ours()
    local cache = e:new_cache(1, P + NEW)
    local lg = e:forward_cached(nc.tensor({ prompt }, { dtype = 'i64' }), cache)
    local nxt = lg:select(1, P - 1):argmax(-1):item()
    local t0 = L.now()
    for _ = 1, NEW do
        lg = e:forward_cached(nc.tensor({ { nxt } }, { dtype = 'i64' }), cache)
        nxt = lg:select(1, 0):argmax(-1):item()
    end
    return NEW / (L.now() - t0)
end

local have = os.execute('python3 -c "import llama_cpp, numpy" >/dev/null 2>&1')
have = have == 0 or have == true
local function theirs()
    local cmd = string.format('%s python3 tools/llama_check.py %s --ids %s --bench %d --threads %d 2>/dev/null',
        require('nanochat.core').unset_pool_env(), path, table.concat(prompt, ','), NEW, threads)
    local p = io.popen(cmd)
    local last
    for line in p:lines() do last = line end
    p:close()
    local o = last and json.decode(last)
    return type(o) == 'table' and o.decode_tok_s or nil
end

local a, b = {}, {}
for r = 1, reps do
    a[r] = ours()
    if have then b[r] = theirs() end
end
os.remove(path)
local mo = L.median(a)
local mb = have and #b > 0 and L.median(b) or nil
print(string.format('Decode of the same GGUF (%s, %s, %d params), %d threads, %d-token prompt, %d new tokens, median of %d',
    args.model or 'configs/models/dense.lua', args.type or 'tq2_0', model:num_params(), threads, P, NEW, reps))
L.print_table({ 'engine', 'decode tok/s', 'vs llama.cpp' }, {
    { 'nanochat (nc.export.load)', mo, mb and mo / mb or 0 / 0 },
    { have and 'llama.cpp (llama-cpp-python)' or 'llama.cpp: not installed', mb or 0 / 0, 1 },
}, { '%s', '%.1f', '%.2f' })
print(L.json { ours_tok_s = L.round(mo, 1), llama_cpp_tok_s = mb and L.round(mb, 1) or nil,
               ours_vs_llama_cpp = mb and L.round(mo / mb, 3) or nil, threads = threads })
