-- configs/workstation.lua — recipes/e3.lua preset for a 4-GPU workstation (4 x 48 GB class, e.g.
-- RTX 6000 Ada), data-parallel: per-GPU batch 16 x accum 2 x 4 GPUs = the H200 preset's tokens per
-- step. Data-parallel training over NCCL is on the roadmap; until then it runs like h200.lua on one GPU.
return {
    device = 'cuda',
    model = 'configs/models/e3_gpu.lua',
    vocab = 32768,
    batch = 16, seq = 2048, grad_accum = 8, steps = 20000,
    lr = 3e-3, matrix_lr = 0.02, warmup = 500, cooldown = 0.2,
    eval_every = 500, eval_batches = 64,
    out = 'runs/e3-workstation',
}
