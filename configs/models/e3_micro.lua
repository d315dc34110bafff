-- configs/models/e3_micro.lua — the e3 architecture at test size (specs, CI smoke runs of recipes/e3.lua):
-- every feature of configs/models/e3.lua (LoopLM 1 + 2x2 + 1, mHC-lite n = 4, one MTP module) on micro widths.
return {
    name = 'e3-micro',
    vocab_size = 256, seq_len = 32,
    d_model = 32, n_layer = 4, n_head = 4, n_kv_head = 2, d_ff = 128,
    mlp = 'relu2', rope_theta = 10000, ternary = true, quant_group = 0,
    qk_norm = false, subln = false, tie_embeddings = false,
    init_std = 0.02, seed = 1,
    loop = { prelude = 1, shared = 2, coda = 1, T = 2, beta = 0.05 },
    mhc = { n = 4, kind = 'lite' },
    mtp = { depth = 1, lambda = 0.3 },
}
