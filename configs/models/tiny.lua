-- configs/models/tiny.lua — the CI/recipe model: ~8.5M parameters (6.4M in matmuls; 4.2M in the blocks), ternary,
-- sized for ~15 minutes of training on 2 CPU cores (recipes/tiny.lua).
return {
    name = 'tiny',
    vocab_size = 8192, seq_len = 256,
    d_model = 256, n_layer = 6, n_head = 4, n_kv_head = 2, d_ff = 1024,
    mlp = 'relu2', rope_theta = 10000, ternary = true, quant_group = 0,
    qk_norm = false, subln = false, tie_embeddings = false,
    init_std = 0.02, seed = 1,
}
