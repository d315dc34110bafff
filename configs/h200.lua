-- configs/h200.lua — recipes/e3.lua preset for one NVIDIA H200 (141 GB HBM3e, ~990 dense BF16
-- TFLOP/s): `./nanochat recipes/e3.lua config=configs/h200.lua`. A plain table of e3 settings;
-- any of them can still be overridden on the command line.
-- Budget: 524k tokens per step (B 64 x T 2048 x accum 4), 20k steps = ~10B tokens.
return {
    device = 'cuda',
    model = 'configs/models/e3_gpu.lua',
    vocab = 32768,
    batch = 64, seq = 2048, grad_accum = 4, steps = 20000,
    lr = 3e-3, matrix_lr = 0.02, warmup = 500, cooldown = 0.2,
    eval_every = 500, eval_batches = 64,
    out = 'runs/e3-h200',
}
