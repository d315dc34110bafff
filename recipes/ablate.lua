-- recipes/ablate.lua — the e3 features one at a time against the tiny baseline, same token budget.
--
-- Target hardware: 2 CPU cores; ~15-25 minutes at the defaults (7 runs of `steps` steps).
--
--   ./nanochat recipes/ablate.lua                        # defaults below
--   ./nanochat recipes/ablate.lua steps=40 only=base,mhc  # a subset (comma-separated names)
--   ./nanochat recipes/ablate.lua model=configs/models/micro.lua e3=configs/models/e3_micro.lua seq=32
--
-- Every run starts from the same seed, sees the same batches (same loader seed), uses the same
-- optimizer (AdamW, lr 3e-3, warmup + WSD as recipes/tiny.lua) and is evaluated on the same val
-- batches. Variants:
--   base      configs/models/tiny.lua (6 blocks, d 256, ternary)
--   loop      LoopLM: the 4 unique blocks of e3 (1 prelude, 2 shared x 3 loops, 1 coda)
--   mhc       + mHC-lite, 4 residual streams
--   mtp       + one DeepSeek-style MTP module (lambda 0.3)
--   collider  + Collider token filtering, rho 0.4 (loss and backward on 60% of the tokens)
--   hybrid    the e3 optimizer instead of AdamW (8-bit Muon under GaLore 2 for block matrices)
--   e3        everything together (configs/models/e3.lua + Collider + the hybrid optimizer)
-- The table: val loss and bits per byte after the budget, training tokens/s (all tokens of the
-- batches, filtered or not), peak tensor memory during training, and parameters.
local nc = require 'nanochat'

local cfg = {
    steps = 60, batch = 8, seq = 256, lr = 3e-3, matrix_lr = 0.02, warmup = 10, cooldown = 0.3,
    eval_batches = 8, vocab = 8192, corpus = '', seed = 1, threads = 0,
    only = '', out = 'runs/ablate',
    model = 'configs/models/tiny.lua',   -- the baseline
    e3 = 'configs/models/e3.lua',        -- where the feature settings come from
}
nc.cli.settings(cfg, 'ablate')   -- key=value arguments (unknown keys / wrong types are errors)
if cfg.threads > 0 then nc.set_num_threads(cfg.threads) end

local tok, shard_dir = nc.data.prepare { corpus = cfg.corpus, vocab = cfg.vocab }
local base = dofile(cfg.model)
local e3 = dofile(cfg.e3)

local function model_cfg(features)
    local m = {}
    for k, v in pairs(base) do m[k] = v end
    m.vocab_size, m.seed, m.seq_len = tok:vocab_size(), cfg.seed, cfg.seq
    if features.loop then m.n_layer = e3.n_layer; m.loop = e3.loop end
    if features.mhc then m.mhc = e3.mhc end
    if features.mtp then m.mtp = e3.mtp end
    return m
end

local VARIANTS = {
    { name = 'base' },
    { name = 'loop', loop = true },
    { name = 'mhc', mhc = true },
    { name = 'mtp', mtp = true },
    { name = 'collider', collider = true },
    { name = 'hybrid', hybrid = true },
    { name = 'e3', loop = true, mhc = true, mtp = true, collider = true, hybrid = true },
}
local wanted = {}
for name in cfg.only:gmatch('[^,%s]+') do wanted[name] = true end

local function optimizer(model, hybrid)
    if not hybrid then
        return nc.optim.adamw(model:parameters(), { lr = cfg.lr, betas = { 0.9, 0.95 }, weight_decay = 0 })
    end
    local rest = { optim = 'adamw', lr = cfg.lr }
    return nc.optim.hybrid { model = model, rules = {
        matrix = { optim = 'muon8', lr = cfg.matrix_lr, galore = { rank_frac = 0.25 } },
        embedding = rest, head = rest, norm = rest, scalar = rest } }
end

-- one-time costs (the sgemm peak for MFU, OpenMP/OpenBLAS warm-up) are paid here, not by the first variant
require('nanochat.train').measure_peak_flops()

local rows = {}
for _, v in ipairs(VARIANTS) do
    if next(wanted) == nil or wanted[v.name] then
        collectgarbage(); collectgarbage()
        nc.manual_seed(cfg.seed)
        local mcfg = model_cfg(v)
        local model = nc.models.gpt.new(mcfg)
        local opt = optimizer(model, v.hybrid)
        local warmup = math.max(1, math.min(cfg.warmup, math.floor(cfg.steps / 10)))
        local loader = nc.data.loader { shards = nc.data.shards(shard_dir, 'train'), B = cfg.batch, T = cfg.seq,
                                        seed = cfg.seed, sampling = 'random', tok_hash = tok:hash() }
        local function val_loader()
            return nc.data.loader { shards = nc.data.shards(shard_dir, 'val'), B = cfg.batch, T = cfg.seq,
                                    sampling = 'sequential', loop = false, tok_hash = tok:hash() }
        end
        print(string.format('ablate: %s (%.2fM params)', v.name, model:num_params() / 1e6))
        nc.mem_reset_peak()
        local res = nc.train {
            model = model, optimizer = opt, loader = loader, steps = cfg.steps, clip = 1.0,
            schedule = nc.sched.wsd { warmup = warmup, total = cfg.steps, cooldown = cfg.cooldown, shape = 'linear' },
            collider = v.collider and nc.collider.new { rho = 0.4 } or nil,
            progress = true, log_every = 20, resume = false,
            log_dir = cfg.out .. '/' .. v.name,
        }
        local peak = nc.mem_stats().host_peak
        local ev = nc.train.evaluate(model, { val_loader = val_loader, eval_batches = cfg.eval_batches, tokenizer = tok })
        rows[#rows + 1] = {
            name = v.name, loss = ev.loss, bpb = ev.bpb, params = model:num_params(),
            tok_s = cfg.steps * cfg.batch * cfg.seq / res.seconds, peak_mb = peak / 2 ^ 20,
        }
    end
end

print(string.format('\nablation: %d steps x %d x %d tokens each, same batches and seed, %d threads\n', cfg.steps,
    cfg.batch, cfg.seq, nc.get_num_threads()))
print('| variant | params | val loss | val bpb | vs base bpb | tokens/s | peak tensor MB |')
print('|---|---|---|---|---|---|---|')
local base_bpb
for _, r in ipairs(rows) do if r.name == 'base' then base_bpb = r.bpb end end
for _, r in ipairs(rows) do
    print(string.format('| %s | %.2fM | %.4f | %.4f | %s | %.0f | %.0f |', r.name, r.params / 1e6, r.loss or 0 / 0,
        r.bpb or 0 / 0, base_bpb and r.bpb and string.format('%+.4f', r.bpb - base_bpb) or '-', r.tok_s, r.peak_mb))
end
local json = {}
for _, r in ipairs(rows) do
    json[#json + 1] = string.format('"%s": {"val_loss": %.5f, "val_bpb": %.5f, "tokens_per_s": %.1f, "peak_mb": %.1f}',
        r.name, r.loss or 0, r.bpb or 0, r.tok_s, r.peak_mb)
end
print('{' .. table.concat(json, ', ') .. '}')
