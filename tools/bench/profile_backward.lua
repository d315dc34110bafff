-- tools/bench/profile_backward.lua — where a training step's backward time goes, per autograd op.
--
--   ./nanochat tools/bench/profile_backward.lua [model=configs/models/tiny.lua] [B=8] [T=256]
--        [steps=3] [threads=0] [rho=0] [paired=0] [clock=wall|cpu]
--
-- Every autograd closure is wrapped with a timer keyed by the op's source line (ops/nn.lua:NNN =
-- linear, attention, rmsnorm, ...); the forward and backward of `steps` steps after one warmup
-- are timed. rho > 0: the steps run through a Collider filter. paired=1 (with rho > 0): every step
-- runs one dense and one filtered step (order alternating), so load drift on a shared machine
-- hits both alike; each op then shows dense and filtered time side by side (medians over the
-- steps) and the filtered / dense ratio. clock=cpu times with the process CPU time (os.clock, all
-- threads) instead of wall time. Prints the ops by share of the backward and, as the last line, a
-- JSON object with forward_s, backward_s and the shares (paired: also the filtered numbers and
-- the per-op ratios). Random tokens; gradients are dropped between steps as the optimizers'
-- zero_grad does.
local nc = require 'nanochat'
local ag = require 'nanochat.autograd'
local here = debug.getinfo(1, 'S').source:match('^@(.*/)') or './'
local L = dofile(here .. 'lib.lua')

local args = L.parse_args()
local B, T, steps = tonumber(args.B) or 8, tonumber(args.T) or 256, tonumber(args.steps) or 3
if (tonumber(args.threads) or 0) > 0 then nc.set_num_threads(tonumber(args.threads)) end
local rho = tonumber(args.rho) or 0
local paired = rho > 0 and (args.paired == 1 or args.paired == true or args.paired == 'true')
local now = args.clock == 'cpu' and os.clock or L.now

-- acc[mode][key] = time of the current step; per[mode][key] = list over steps
local acc, cnt = {}, {}
local record = ag.record
ag.record = function(out, inputs, backward)
    local info = debug.getinfo(2, 'Sl')
    local key = info.short_src:match('[^/]*$') .. ':' .. info.currentline
    return record(out, inputs, function(g)
        local t0 = now()
        backward(g)
        acc[key] = (acc[key] or 0) + now() - t0
        cnt[key] = (cnt[key] or 0) + 1
    end)
end

local cfg = dofile(args.model or 'configs/models/tiny.lua')
cfg.seq_len = math.max(cfg.seq_len, T)
local model = nc.models.gpt.new(cfg)
local params = model:parameters()
local g = nc.generator(1)
local x = nc.rand({ B, T }, { lo = 0, hi = cfg.vocab_size, generator = g }):to('i64')
local y = nc.rand({ B, T }, { lo = 0, hi = cfg.vocab_size, generator = g }):to('i64')
local F = rho > 0 and nc.collider.new { rho = rho } or nil

local modes = paired and { 'dense', 'filtered' } or { F and 'filtered' or 'dense' }
local per, fwd, bwd, counts = {}, {}, {}, {}
for _, m in ipairs(modes) do per[m], fwd[m], bwd[m], counts[m] = {}, {}, {}, {} end

local function step(mode, s)
    for _, p in ipairs(params) do p.grad = nil end
    acc, cnt = {}, {}
    collectgarbage('collect')
    local t0 = now()
    local loss = mode == 'filtered' and F:forward(model, x, y) or model:forward(x, y)
    local t1 = now()
    loss:backward()
    local t2 = now()
    if s == 0 then return end   -- warmup
    fwd[mode][#fwd[mode] + 1], bwd[mode][#bwd[mode] + 1] = t1 - t0, t2 - t1
    for k, v in pairs(acc) do
        per[mode][k] = per[mode][k] or {}
        local l = per[mode][k]
        l[#l + 1] = v
        counts[mode][k] = cnt[k]
    end
end

for s = 0, steps do
    if #modes == 1 then step(modes[1], s)
    elseif s % 2 == 0 then step('dense', s); step('filtered', s)
    else step('filtered', s); step('dense', s) end
end
ag.record = record

-- per-op medians (an op absent in some steps counts 0 there)
local function med(mode, k)
    local l, out = per[mode][k] or {}, {}
    for i = 1, #bwd[mode] do out[i] = l[i] or 0 end
    return L.median(out)
end
local main = modes[1]
local keys, total = {}, 0
local seen = {}
for _, m in ipairs(modes) do
    for k in pairs(per[m]) do if not seen[k] then seen[k] = true; keys[#keys + 1] = k end end
end
for _, k in ipairs(keys) do total = total + med(main, k) end
table.sort(keys, function(a, b) return med(main, a) > med(main, b) end)
local rows, shares, ratios = {}, {}, {}
for _, k in ipairs(keys) do
    local d = med(main, k)
    shares[k] = L.round(d / math.max(total, 1e-12), 3)
    if paired then
        local f = med('filtered', k)
        ratios[k] = L.round(d > 0 and f / d or 0, 3)
        rows[#rows + 1] = { k, d, f, ratios[k], shares[k], counts.dense[k] or counts.filtered[k] or 0 }
    else
        rows[#rows + 1] = { k, d, shares[k], counts[main][k] or 0 }
    end
end
local clock = args.clock == 'cpu' and 'process CPU s' or 'wall s'
local fm, bm = L.median(fwd[main]), L.median(bwd[main])
if paired then
    local ff, bf = L.median(fwd.filtered), L.median(bwd.filtered)
    print(string.format('%s, B=%d T=%d, %d threads, dense vs Collider rho %.2f paired over %d steps (%s, medians): '
        .. 'forward %.3f / %.3f, backward %.3f / %.3f (saving %.3f)', cfg.name or 'model', B, T, nc.get_num_threads(),
        rho, steps, clock, fm, ff, bm, bf, 1 - bf / bm))
    L.print_table({ 'op (source line)', 'dense s/step', 'filtered s/step', 'ratio', 'dense share', 'nodes/step' }, rows,
        { nil, '%.4f', '%.4f', '%.3f', '%.3f', '%d' })
    print(L.json { bench = 'profile_backward', forward_s = L.round(fm, 4), backward_s = L.round(bm, 4),
                   filtered_forward_s = L.round(ff, 4), filtered_backward_s = L.round(bf, 4),
                   saving = L.round(1 - bf / bm, 4), shares = shares, ratios = ratios, threads = nc.get_num_threads(),
                   B = B, T = T, rho = rho, steps = steps, clock = args.clock == 'cpu' and 'cpu' or 'wall' })
else
    print(string.format('%s, B=%d T=%d, %d threads%s: forward %.3f s, backward %.3f s per step (%s, medians)',
        cfg.name or 'model', B, T, nc.get_num_threads(), F and string.format(', Collider rho %.2f', rho) or '', fm, bm,
        clock))
    L.print_table({ 'op (source line)', 'backward s/step', 'share', 'nodes/step' }, rows, { nil, '%.3f', '%.3f', '%d' })
    print(L.json { bench = 'profile_backward', forward_s = L.round(fm, 4), backward_s = L.round(bm, 4),
                   shares = shares, threads = nc.get_num_threads(), B = B, T = T, rho = rho, steps = steps,
                   clock = args.clock == 'cpu' and 'cpu' or 'wall' })
end
