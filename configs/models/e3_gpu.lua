-- configs/models/e3_gpu.lua — the e3 architecture at GPU scale (~350M parameters, ~150M in the
-- unique blocks): used by the GPU presets (configs/h200.lua, configs/blackwell.lua,
-- configs/workstation.lua). Same features as configs/models/e3.lua, wider and with a longer loop.
return {
    name = 'e3-gpu',
    vocab_size = 32768, seq_len = 2048,
    d_model = 1024, n_layer = 12, n_head = 16, n_kv_head = 4, d_ff = 4096,
    mlp = 'relu2', rope_theta = 100000, ternary = true, quant_group = 0,
    qk_norm = true, subln = false, tie_embeddings = false,
    init_std = 0.02, seed = 1,
    loop = { prelude = 2, shared = 8, coda = 2, T = 4, beta = 0.05 },
    mhc = { n = 4, kind = 'lite' },
    mtp = { depth = 2, lambda = 0.3 },
}
