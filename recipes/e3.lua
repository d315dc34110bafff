-- recipes/e3.lua — the flagship: a looped, multi-stream, multi-token ternary Rust model.
--
-- Target hardware: any x86-64 machine, 2 cores, ~4 GB RAM. Expected runtime: ~20-30 minutes
-- at the defaults (the corpus, tokenizer and shards are built once and cached, shared with
-- recipes/tiny.lua). Larger machines: a preset with `config=` (plain Lua tables of these same
-- settings): configs/h200.lua, configs/blackwell.lua, configs/workstation.lua.
--
--   ./nanochat recipes/e3.lua                                  # defaults below
--   ./nanochat recipes/e3.lua steps=50 out=runs/e3-short       # any setting as key=value
--   ./nanochat recipes/e3.lua mtp=false collider=false         # switch features off
--   ./nanochat recipes/e3.lua loop_T=4 mhc_n=2 rho=0.3         # or resize them
--
-- What it runs, top to bottom:
--   (1) the default Rust corpus, tokenizer and token shards (nc.data.prepare, as tiny.lua);
--   (2) the e3 model (configs/models/e3.lua): a ternary GPT with
--         LoopLM  — 1 prelude block, a 2-block shared stack applied loop_T times, 1 coda block;
--                   exit gate per loop, loss sum_t p(t) CE(t) - beta H(p) (nanochat.looplm)
--         mHC-lite — mhc_n residual streams mixed by convex combinations of permutation
--                   matrices (exactly doubly stochastic; nanochat.mhc)
--         MTP     — mtp_depth DeepSeek-style sequential modules, weight lambda 0.3 -> 0.1 at
--                   2/3 of training (nanochat.mtp)
--   (3) Collider token filtering: the rho fraction of tokens with the lowest loss is dropped
--       from the loss AND from every layer's backward (nanochat.collider);
--   (4) the hybrid optimizer: block matrices on 8-bit Muon under GaLore 2 (rank 1/4; momentum
--       warmup 0.85 -> 0.95 over `momentum_warmup` steps), embedding,
--       head, norms and mHC/gate scalars on AdamW (or Lion with rest=lion); WSD schedule;
--   (5) val loss / bits-per-byte, Rust samples (early exit at q = exit_q), self-speculative
--       decoding through the MTP module, the mHC report, the packed engine (nc.pack: train = serve
--       and decode speed), a checkpoint and a summary table.
local nc = require 'nanochat'

-- ---- settings ---------------------------------------------------------------------------------
local cfg = {
    config = '',            -- a preset file (configs/h200.lua, ...): a table of these settings
    model = 'configs/models/e3.lua',
    corpus = '',            -- a corpus directory (tools/corpus.lua); '' = the built-in default
    vocab = 8192,
    -- architecture switches (false removes the feature from the model / the training step)
    loop = true, loop_T = 0, exit_q = 0.9,          -- 0 = the model file's T
    mhc = true, mhc_n = 0, mhc_kind = '',           -- 0 / '' = the model file's
    mtp = true, mtp_depth = 0, mtp_lambda = 0.3, mtp_lambda_late = 0.1,
    collider = true, rho = 0.4,
    -- optimization
    steps = 300, batch = 8, seq = 0, grad_accum = 1,     -- seq 0 = the model's seq_len
    lr = 3e-3, matrix_lr = 0.02, galore = true, muon8 = true, rest = 'adamw',
    momentum_warmup = 30,   -- Muon momentum 0.85 -> 0.95 over these steps (modded-nanogpt; 0 = off)
    weight_decay = 0.0, warmup = 30, cooldown = 0.3, clip = 1.0, z_loss = 0.0,
    eval_every = 100, eval_batches = 16, sample_tokens = 80,
    threads = 0, seed = 1, device = 'cpu',
    out = 'runs/e3', resume = true,
}
local args = rawget(_G, 'ARGS') or {}
if args.config and args.config ~= '' then          -- a preset first, then the command line on top
    local preset = dofile(args.config)
    if type(preset) ~= 'table' then error('e3: ' .. args.config .. ' must return a table of settings') end
    nc.cli.settings(cfg, 'e3', preset, args.config)
end
nc.cli.settings(cfg, 'e3', args)
if cfg.device ~= 'cpu' then
    -- the presets for GPUs name device = 'cuda'; training needs every op on the device
    if not nc.cuda_available() then
        error('e3: this preset needs device ' .. cfg.device .. ', but ' .. nc.cuda_status())
    end
    -- the plain ternary GPT trains on CUDA (recipes/tiny.lua device=cuda; README "CUDA nn ops"), but
    -- e3's features still call CPU-only kernels: mHC (kernels/cpu/mhc.c), Collider's row gather /
    -- scatter and selection, LoopLM's exit distribution and MTP's extra heads are not ported yet
    error('e3: device ' .. cfg.device .. ': the CUDA backend runs the plain GPT forward/backward and the '
        .. 'optimizers, but not yet e3\'s LoopLM / mHC / MTP / Collider kernels (README "CUDA nn ops"); use '
        .. 'device=cpu, or recipes/tiny.lua device=cuda for the plain model')
end
if cfg.threads > 0 then nc.set_num_threads(cfg.threads) end
nc.manual_seed(cfg.seed)

-- ---- (1) corpus, tokenizer, shards ----------------------------------------------------------------
local tok, shard_dir = nc.data.prepare { corpus = cfg.corpus, vocab = cfg.vocab }

-- ---- (2) model ------------------------------------------------------------------------------------
local mcfg = dofile(cfg.model)
mcfg.vocab_size = tok:vocab_size()
mcfg.seed = cfg.seed
if cfg.seq > 0 then mcfg.seq_len = cfg.seq end
if not cfg.loop then
    mcfg.loop = nil                      -- the unique blocks run once: a plain n_layer-block GPT
elseif mcfg.loop then
    if cfg.loop_T > 0 then mcfg.loop.T = cfg.loop_T end
    mcfg.loop.exit_q = cfg.exit_q
end
if not cfg.mhc then mcfg.mhc = nil
elseif mcfg.mhc then
    if cfg.mhc_n > 0 then mcfg.mhc.n = cfg.mhc_n end
    if cfg.mhc_kind ~= '' then mcfg.mhc.kind = cfg.mhc_kind end
end
if not cfg.mtp then mcfg.mtp = nil
elseif mcfg.mtp then
    if cfg.mtp_depth > 0 then mcfg.mtp.depth = cfg.mtp_depth end
    mcfg.mtp.lambda = cfg.mtp_lambda
end
local T = mcfg.seq_len
local model = nc.models.gpt.new(mcfg)
local counts = model:param_counts()
local function feature_line()
    local f = {}
    if mcfg.loop then f[#f + 1] = string.format('loop %d+%dx%d+%d', mcfg.loop.prelude, mcfg.loop.shared, mcfg.loop.T,
        mcfg.loop.coda) end
    if mcfg.mhc then f[#f + 1] = string.format('mhc-%s n=%d', mcfg.mhc.kind or 'lite', mcfg.mhc.n) end
    if mcfg.mtp then f[#f + 1] = string.format('mtp D=%d', mcfg.mtp.depth or 1) end
    if cfg.collider then f[#f + 1] = string.format('collider rho=%.2f', cfg.rho) end
    return #f > 0 and table.concat(f, ', ') or 'plain GPT'
end
print(string.format('e3: %s, %.2fM params (%.2fM in matmuls), d=%d, T=%d, batch %d x %d, %d threads; %s',
    cfg.model, counts.total / 1e6, counts.matmul / 1e6, mcfg.d_model, T, cfg.batch, cfg.grad_accum,
    nc.get_num_threads(), feature_line()))

-- ---- (3) Collider ---------------------------------------------------------------------------------
local filter = cfg.collider and nc.collider.new { rho = cfg.rho } or nil

-- ---- (4) optimizer, schedule, data, training -----------------------------------------------------
local matrix_rule = { optim = cfg.muon8 and 'muon8' or 'muon', lr = cfg.matrix_lr, weight_decay = cfg.weight_decay,
                      momentum_warmup = math.min(cfg.momentum_warmup, cfg.steps) }
if cfg.galore then matrix_rule.galore = { rank_frac = 0.25 } end
local rest = { optim = cfg.rest, lr = cfg.rest == 'lion' and cfg.lr / 3 or cfg.lr }
local opt = nc.optim.hybrid { model = model, rules = {
    matrix = matrix_rule, embedding = rest, head = rest,
    norm = { optim = cfg.rest, lr = rest.lr, weight_decay = 0 },
    scalar = { optim = cfg.rest, lr = rest.lr, weight_decay = 0 },
} }
local warmup = math.max(1, math.min(cfg.warmup, math.floor(cfg.steps / 10)))
local wsd = nc.sched.wsd { warmup = warmup, total = cfg.steps, cooldown = cfg.cooldown, shape = 'linear' }
-- the MTP weight follows DeepSeek-V3's two-phase schedule: lambda, then lambda_late for the last third
local function schedule(s)
    if mcfg.mtp then nc.mtp.set_lambda(model, s < 2 * cfg.steps / 3 and cfg.mtp_lambda or cfg.mtp_lambda_late) end
    return wsd(s)
end
local loader = nc.data.loader { shards = nc.data.shards(shard_dir, 'train'), B = cfg.batch, T = T,
                                seed = cfg.seed, sampling = 'random', tok_hash = tok:hash() }
local function val_loader()
    return nc.data.loader { shards = nc.data.shards(shard_dir, 'val'), B = cfg.batch, T = T,
                            sampling = 'sequential', loop = false, tok_hash = tok:hash() }
end

local clock = require('nanochat.core').C.nc_monotonic_time
local t0 = clock()
local result = nc.train {
    model = model, optimizer = opt, schedule = schedule, loader = loader, val_loader = val_loader,
    steps = cfg.steps, grad_accum = cfg.grad_accum, clip = cfg.clip, z_loss = cfg.z_loss,
    collider = filter,
    eval_every = cfg.eval_every, eval_batches = cfg.eval_batches, tokenizer = tok,
    log_dir = cfg.out .. '/logs', ckpt_dir = cfg.out .. '/ckpt', ckpt_every = 100, keep = 2,
    resume = cfg.resume, config = model:config(),
}
local train_s = clock() - t0
tok:save(cfg.out .. '/tokenizer.tok')

-- ---- (5) evaluation, samples, reports ---------------------------------------------------------------
model:eval()
local prompts = { 'fn main() {', 'pub struct ', 'impl Iterator for ', '/// Returns ' }
for _, p in ipairs(prompts) do
    local out = {}
    for id in nc.generate(model, tok:encode(p), { max_tokens = cfg.sample_tokens, temperature = 0.7, top_k = 40,
                                                  seed = 1, stop_tokens = { tok.bos_id } }) do
        out[#out + 1] = id
    end
    print(string.format('--- %s\n%s%s\n', p, p, tok:decode(out)))
end

local summary = {}
local function row(k, v) summary[#summary + 1] = { k, v } end
local last = result.evals[#result.evals] or {}
row('steps', tostring(result.step))
row('train time', string.format('%.0f s', train_s))
row('params', string.format('%.2fM (%.2fM in matmuls)', counts.total / 1e6, counts.matmul / 1e6))
row('features', feature_line())
row('val loss', string.format('%.4f', last.loss or 0 / 0))
row('val bpb', string.format('%.4f', last.bpb or 0 / 0))

local probe = tok:encode('fn main() {\n    let mut v = Vec::new();\n')
while #probe > T / 2 do probe[#probe] = nil end          -- short contexts (test configs)
local n_dec = math.max(1, math.min(48, T - #probe))
local probe_batch = nc.tensor({ probe }, { dtype = 'i64' })
if mcfg.loop then
    -- greedy decoding with q-exit vs always running all T loops (same prompt, same length)
    local function decode(q)
        local cache
        local t0 = clock()
        nc.generate.collect(model, probe, { max_tokens = n_dec, temperature = 0, exit_q = q,
                                            on_cache = function(c) cache = c end })
        return clock() - t0, nc.looplm.stats(cache)
    end
    local t_all = decode(1)
    local t_q, st = decode(cfg.exit_q)
    row('LoopLM early exit', string.format('q=%.2f: %.2f of %d loops per decoded token, %.2fx decode speed vs all loops',
        cfg.exit_q, st.avg_decode_loops, mcfg.loop.T, t_all / t_q))
end
if mcfg.mtp then
    -- self-speculative greedy decoding through the MTP module vs plain greedy decoding
    local t0 = clock()
    local plain = nc.generate.collect(model, probe, { max_tokens = n_dec, temperature = 0 })
    local t_plain = clock() - t0
    t0 = clock()
    local ids, st = nc.mtp.generate(model, probe, { max_tokens = n_dec })
    local t_spec = clock() - t0
    local same = #ids == #plain
    for i = 1, math.min(#ids, #plain) do same = same and ids[i] == plain[i] end
    row('MTP self-speculative', string.format('%.0f%% drafts accepted, %.2f tokens per main forward, %.2fx vs greedy '
        .. 'decoding (identical output: %s)', 100 * st.accept_rate, st.tokens_per_forward, t_plain / t_spec, tostring(same)))
end
if mcfg.mhc then
    local rep = nc.mhc.report(model, probe_batch)
    row('mHC', string.format('max doubly-stochastic error %.1e (rows) / %.1e (cols), composite gain %.3f fwd / %.3f bwd',
        rep.max_row_err, rep.max_col_err, rep.fwd_gain, rep.bwd_gain))
end
if model.cfg.ternary then
    -- the packed inference engine (nc.pack: 2-bit weights, int8 activations; loop / mHC / MTP run
    -- there too): train = serve on the probe, and greedy decoding at q = exit_q against the model
    local e = nc.pack(model)
    local ref = nc.no_grad(function() return model:forward(probe_batch) end)
    local diff = (ref - e:forward(probe_batch)):abs():max():item() / ref:abs():max():item()
    local o = { max_tokens = n_dec, temperature = 0, exit_q = mcfg.loop and cfg.exit_q or nil }
    local t0 = clock()
    local a = nc.generate.collect(model, probe, o)
    local t_model = clock() - t0
    t0 = clock()
    local b = nc.generate.collect(e, probe, o)
    local t_engine = clock() - t0
    local same = #a == #b
    for i = 1, math.min(#a, #b) do same = same and a[i] == b[i] end
    row('packed engine', string.format('logits within %.1e of max |logit| (train = serve), greedy decode %.2fx the '
        .. 'training model%s (identical output: %s)', diff, t_model / t_engine,
        mcfg.loop and string.format(' at q=%.2f', cfg.exit_q) or '', tostring(same)))
end
if filter then row('Collider', string.format('kept %.0f%% of tokens in loss and backward', 100 * (1 - cfg.rho))) end
row('checkpoint', tostring(result.checkpoint))
row('tokenizer', cfg.out .. '/tokenizer.tok')

print('\n| e3 summary | |\n|---|---|')
for _, r in ipairs(summary) do print(string.format('| %s | %s |', r[1], r[2])) end
