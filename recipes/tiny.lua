-- recipes/tiny.lua — a ternary (BitNet b1.58) Rust code model, end to end, on 2 CPU cores.
--
-- Target hardware: any x86-64 machine, 2 cores, ~2 GB RAM. Expected runtime: ~15 minutes
-- (corpus + tokenizer + shards are built once and cached; later runs start training at once).
--
--   ./nanochat recipes/tiny.lua                       # defaults below
--   ./nanochat recipes/tiny.lua steps=200 out=runs/t  # any setting as key=value
--   ./nanochat recipes/tiny.lua model=configs/models/micro.lua steps=50
--   ./nanochat recipes/tiny.lua device=cuda           # train on the GPU (README "CUDA nn ops": never
--                                                     # run on a GPU yet; fails cleanly without one)
--
-- What it does, top to bottom: (1) the built-in default Rust corpus (Debian librust-*-dev
-- packages, a few MB), (2) a byte-level BPE tokenizer trained on it, (3) zstd token shards,
-- (4) a ternary GPT from configs/models/tiny.lua, (5) AdamW with a warmup + WSD schedule,
-- training with val loss / bits-per-byte every `eval_every` steps, TensorBoard + JSONL logs and
-- checkpoints, (6) Rust samples from a few prompts, (7) a final checkpoint.
local nc = require 'nanochat'

-- ---- settings ---------------------------------------------------------------------------------
local cfg = {
    model = 'configs/models/tiny.lua',
    corpus = '',           -- a corpus directory (tools/corpus.lua); '' = the built-in default
    vocab = 8192,
    steps = 400, batch = 8, seq = 0, grad_accum = 1,    -- seq 0 = the model's seq_len
    lr = 3e-3, weight_decay = 0.0, warmup = 50, cooldown = 0.3,
    clip = 1.0, z_loss = 0.0,
    eval_every = 100, eval_batches = 16, sample_every = 0,
    threads = 0, seed = 1, device = 'cpu',
    out = 'runs/tiny', resume = true,
}
nc.cli.settings(cfg, 'tiny')   -- key=value arguments (unknown keys / wrong types are errors)
if cfg.device ~= 'cpu' and not nc.cuda_available() then
    error('tiny: device=' .. cfg.device .. ' needs a GPU, but ' .. nc.cuda_status())
end
if cfg.threads > 0 then nc.set_num_threads(cfg.threads) end
nc.manual_seed(cfg.seed)

-- ---- (1) corpus, (2) tokenizer, (3) shards — each built once and cached ------------------------
local tok, shard_dir = nc.data.prepare { corpus = cfg.corpus, vocab = cfg.vocab }

-- ---- (4) model ----------------------------------------------------------------------------------
local mcfg = dofile(cfg.model)
mcfg.vocab_size = tok:vocab_size()
mcfg.seed = cfg.seed
if cfg.seq > 0 then mcfg.seq_len = cfg.seq end
local T = mcfg.seq_len
local model = nc.models.gpt.new(mcfg)
if cfg.device ~= 'cpu' then model:to(cfg.device) end   -- before the optimizer (its state follows); nc.train moves the batches
local counts = model:param_counts()
print(string.format('tiny: %s, %.2fM params (%.2fM in matmuls), %d layers, d=%d, T=%d, batch %d x %d, %d threads',
    cfg.model, counts.total / 1e6, counts.matmul / 1e6, mcfg.n_layer,
    mcfg.d_model, T, cfg.batch, cfg.grad_accum, nc.get_num_threads()))

-- ---- (5) optimizer, schedule, data, training -----------------------------------------------------
local opt = nc.optim.adamw(model:parameters(), { lr = cfg.lr, betas = { 0.9, 0.95 }, weight_decay = cfg.weight_decay })
local warmup = math.max(1, math.min(cfg.warmup, math.floor(cfg.steps / 10)))   -- short runs stay valid
local schedule = nc.sched.wsd { warmup = warmup, total = cfg.steps, cooldown = cfg.cooldown, shape = 'linear' }
local loader = nc.data.loader { shards = nc.data.shards(shard_dir, 'train'), B = cfg.batch, T = T,
                                seed = cfg.seed, sampling = 'random', tok_hash = tok:hash() }
local function val_loader()
    return nc.data.loader { shards = nc.data.shards(shard_dir, 'val'), B = cfg.batch, T = T,
                            sampling = 'sequential', loop = false, tok_hash = tok:hash() }
end
local prompts = { 'fn main() {', 'pub struct ', 'impl Iterator for ', '/// Returns ' }

local result = nc.train {
    model = model, optimizer = opt, schedule = schedule, loader = loader, val_loader = val_loader,
    steps = cfg.steps, grad_accum = cfg.grad_accum, clip = cfg.clip, z_loss = cfg.z_loss,
    eval_every = cfg.eval_every, eval_batches = cfg.eval_batches,
    sample_every = cfg.sample_every, sample_prompts = prompts, tokenizer = tok,
    log_dir = cfg.out .. '/logs', ckpt_dir = cfg.out .. '/ckpt', ckpt_every = 100, keep = 2,
    resume = cfg.resume, config = model:config(),
}

tok:save(cfg.out .. '/tokenizer.tok')

-- ---- (6) samples ---------------------------------------------------------------------------------
model:eval()
for _, p in ipairs(prompts) do
    local out = {}
    for id in nc.generate(model, tok:encode(p), { max_tokens = 96, temperature = 0.7, top_k = 40, seed = 1,
                                                  stop_tokens = { tok.bos_id } }) do
        out[#out + 1] = id
    end
    print(string.format('--- %s\n%s%s\n', p, p, tok:decode(out)))
end
local last = result.evals[#result.evals] or {}
print(string.format('tiny: done after %d steps. final val loss %.4f, val bpb %.4f; checkpoint %s; tokenizer %s',
    result.step, last.loss or 0 / 0, last.bpb or 0 / 0, tostring(result.checkpoint), cfg.out .. '/tokenizer.tok'))
