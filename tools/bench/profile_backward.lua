-- tools/bench/profile_backward.lua — where a training step's backward time goes, per autograd op.
--
--   ./nanochat tools/bench/profile_backward.lua [model=configs/models/tiny.lua] [B=8] [T=256]
--        [steps=3] [threads=0] [rho=0]      (rho > 0: through a Collider filter)
--
-- Every autograd closure is wrapped with a timer keyed by the op's source line (ops/nn.lua:NNN =
-- linear, attention, rmsnorm, ...); the forward and backward of `steps` steps after one warmup
-- are timed. Prints the ops by share of the backward and, as the last line, a JSON object with
-- forward_s, backward_s and the shares. Random tokens; gradients are dropped between steps as the
-- optimizers' zero_grad does.
local nc = require 'nanochat'
local ag = require 'nanochat.autograd'
local here = debug.getinfo(1, 'S').source:match('^@(.*/)') or './'
local L = dofile(here .. 'lib.lua')

local args = L.parse_args()
local B, T, steps = tonumber(args.B) or 8, tonumber(args.T) or 256, tonumber(args.steps) or 3
if (tonumber(args.threads) or 0) > 0 then nc.set_num_threads(tonumber(args.threads)) end
local rho = tonumber(args.rho) or 0

local acc, cnt = {}, {}
local record = ag.record
ag.record = function(out, inputs, backward)
    local info = debug.getinfo(2, 'Sl')
    local key = info.short_src:match('[^/]*$') .. ':' .. info.currentline
    return record(out, inputs, function(g)
        local t0 = L.now()
        backward(g)
        acc[key] = (acc[key] or 0) + L.now() - t0
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

local tf, tb = 0, 0
for s = 0, steps do
    if s == 1 then acc, cnt, tf, tb = {}, {}, 0, 0 end
    for _, p in ipairs(params) do p.grad = nil end
    local t0 = L.now()
    local loss = F and F:forward(model, x, y) or model:forward(x, y)
    local t1 = L.now()
    loss:backward()
    tf, tb = tf + t1 - t0, tb + L.now() - t1
end
ag.record = record

local keys, total = {}, 0
for k, v in pairs(acc) do keys[#keys + 1] = k; total = total + v end
table.sort(keys, function(a, b) return acc[a] > acc[b] end)
local rows, shares = {}, {}
for _, k in ipairs(keys) do
    rows[#rows + 1] = { k, acc[k] / steps, acc[k] / math.max(total, 1e-12), cnt[k] / steps }
    shares[k] = L.round(acc[k] / math.max(total, 1e-12), 3)
end
print(string.format('%s, B=%d T=%d, %d threads%s: forward %.3f s, backward %.3f s per step', cfg.name or 'model', B,
    T, nc.get_num_threads(), F and string.format(', Collider rho %.2f', rho) or '', tf / steps, tb / steps))
L.print_table({ 'op (source line)', 'backward s/step', 'share', 'nodes/step' }, rows, { nil, '%.3f', '%.3f', '%d' })
print(L.json { bench = 'profile_backward', forward_s = L.round(tf / steps, 4), backward_s = L.round(tb / steps, 4),
               shares = shares, threads = nc.get_num_threads(), B = B, T = T, rho = rho })
