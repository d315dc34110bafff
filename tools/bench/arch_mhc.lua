-- tools/bench/arch_mhc.lua — training-step cost of mHC / mHC-lite residual streams (nanochat.mhc).
--
--   ./nanochat tools/bench/arch_mhc.lua [layers=6] [B=8] [T=256] [steps=5] [warmup=1] [threads=2]
--                                       [variants=plain,lite1,lite4,lite4_composite,sinkhorn4]
--
-- The model is configs/models/e3.lua without LoopLM and MTP (d 256, 4 heads / 2 KV heads, ReLU² 1024,
-- vocab 8192) with `layers` blocks; a step is forward + backward + AdamW on one fixed random batch.
-- Variants: plain (no mHC), lite<n> / sinkhorn<n> (cfg.mhc = { n, kind }), *_composite (the stream
-- mixing from generic ops instead of the fused C kernels, nc.mhc.set_fused(false)).
-- Steps are interleaved (every repeat runs each variant once, order rotated) and each variant's
-- time is the median over repeats; ratios are paired: the median over repeats of t_variant / t_ref
-- within the same repeat (robust to the machine's drift between repeats).
-- mhc4_overhead = step(lite4) / step(lite1) - 1, the issue's target (<= 0.10); also reported:
-- vs_plain (step / step(plain) - 1) for every variant.
-- As a module: require/dofile returns run(opts) -> { rows = {...}, json = {...} }; run directly it
-- prints the table and, as the last line, the JSON object.
local nc = require 'nanochat'
local here = debug.getinfo(1, 'S').source:match('^@(.*/)') or './'
local L = dofile(here .. 'lib.lua')

local function parse_variant(v)
    if v == 'plain' then return { name = v } end
    local kind, n, comp = v:match('^(%a+)(%d+)(_?%a*)$')
    if not kind or (kind ~= 'lite' and kind ~= 'sinkhorn') or (comp ~= '' and comp ~= '_composite') then
        error('arch_mhc: unknown variant ' .. tostring(v) .. " (plain, lite<n>, sinkhorn<n>, optional suffix _composite)", 3)
    end
    return { name = v, mhc = { n = tonumber(n), kind = kind }, fused = comp == '' }
end

local run_body

-- opts: layers, B, T, steps, warmup, threads, variants (see the header); the thread count in force
-- before the call is restored afterwards
local function run(opts)
    opts = opts or {}
    local prev = nc.get_num_threads()
    local ok, out = pcall(run_body, opts)
    nc.set_num_threads(prev)
    if not ok then error(out, 0) end
    return out
end

run_body = function(opts)
    local layers = tonumber(opts.layers) or 6
    local B, T = tonumber(opts.B) or 8, tonumber(opts.T) or 256
    local steps, warmup = tonumber(opts.steps) or 5, tonumber(opts.warmup) or 1
    local threads = tonumber(opts.threads) or 2
    local vlist = opts.variants or 'plain,lite1,lite4,lite4_composite,sinkhorn4'
    nc.set_num_threads(threads)
    local variants = {}
    for v in tostring(vlist):gmatch('[^,]+') do variants[#variants + 1] = parse_variant(v) end

    local base = nc.models.config('e3')
    base.loop, base.mtp, base.mhc = nil, nil, nil
    base.n_layer = layers
    base.seq_len = math.max(base.seq_len, T)
    local g = nc.generator(1)
    local toks = nc.rand({ B, T + 1 }, { generator = g, lo = 0, hi = base.vocab_size }):to('i64')
    local x, y = toks:narrow(1, 0, T):contiguous(), toks:narrow(1, 1, T):contiguous()

    local cases = {}
    for i, v in ipairs(variants) do
        local cfg = {}
        for k, val in pairs(base) do cfg[k] = val end
        cfg.mhc = v.mhc
        local model = nc.models.gpt.new(cfg)
        local opt = nc.optim.adamw(model:parameters(), { lr = 1e-3, betas = { 0.9, 0.95 } })
        local fused = v.fused ~= false
        cases[i] = { inner = 1, fn = function()
            local prev = nc.mhc.set_fused(fused)
            local loss = model:forward(x, y)
            loss:backward()
            opt:step()
            opt:zero_grad()
            local _ = loss:item()
            nc.mhc.set_fused(prev)
        end, model = model }
    end
    local res = L.compare(cases, { warmup = warmup, reps = steps })
    local function find(name)
        for i, v in ipairs(variants) do if v.name == name then return i end end
    end
    local ip, i1, i4 = find('plain'), find('lite1'), find('lite4')
    -- paired: median over repeats of t_i / t_ref (the same repeat ran both within seconds)
    local function paired(i, ref)
        if not (i and ref) then return 0 / 0 end
        local rs = {}
        for r = 1, #res[i].samples do rs[r] = res[i].samples[r] / res[ref].samples[r] end
        return L.median(rs)
    end
    local rows, per = {}, {}
    for i, v in ipairs(variants) do
        local t = res[i].median
        local vs_plain = paired(i, ip) - 1
        local vs_lite1 = paired(i, i1) - 1
        rows[#rows + 1] = { v.name, cases[i].model:num_params() / 1e6, t, B * T / t, 100 * vs_plain, 100 * vs_lite1 }
        per[v.name] = { step_s = L.round(t, 4), tokens_per_s = L.round(B * T / t, 1), vs_plain = L.round(vs_plain, 4),
                        vs_lite1 = L.round(vs_lite1, 4) }
    end
    local json = {
        bench = 'arch_mhc', layers = layers, B = B, T = T, threads = threads, steps = steps,
        mhc4_overhead = L.round(paired(i4, i1) - 1, 4),
        mhc4_vs_plain = L.round(paired(i4, ip) - 1, 4),
        variants = per,
    }
    return { rows = rows, json = json,
             headers = { 'variant', 'M params', 'step s', 'tok/s', 'vs plain %', 'vs lite1 %' },
             fmts = { '%s', '%.3f', '%.3f', '%.0f', '%+.1f', '%+.1f' } }
end

-- run directly (the launcher sets arg[0] to the script path): print; loaded by another script: a module
local direct = type(arg) == 'table' and type(arg[0]) == 'string' and arg[0]:match('arch_mhc%.lua$')
if direct then
    local args = L.parse_args(rawget(_G, 'ARGS') or arg)
    local out = run(args)
    local j = out.json
    print(string.format('mHC training step (forward + backward + AdamW), e3 widths, %d layers, B=%d T=%d, %d threads, ' ..
        'kernel %s; median of %d interleaved steps', j.layers, j.B, j.T, j.threads, nc.cpu_kernel(), j.steps))
    L.print_table(out.headers, out.rows, out.fmts)
    print(L.json(j))
end

return run
