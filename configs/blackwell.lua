-- configs/blackwell.lua — recipes/e3.lua preset for one Blackwell GPU (B200 180 GB class, or an
-- RTX PRO 6000 96 GB with grad_accum doubled): `./nanochat recipes/e3.lua config=configs/blackwell.lua`.
-- FP8/FP4 matmuls are future work; the preset assumes BF16 compute like configs/h200.lua.
return {
    device = 'cuda',
    model = 'configs/models/e3_gpu.lua',
    vocab = 32768,
    batch = 96, seq = 2048, grad_accum = 3, steps = 20000,
    lr = 3e-3, matrix_lr = 0.02, warmup = 500, cooldown = 0.2,
    eval_every = 500, eval_batches = 64,
    out = 'runs/e3-blackwell',
}
