-- configs/models/small.lua — d=512, 8 layers: ~31.5M parameters (27.3M in matmuls), ternary.
return {
    name = 'small',
    vocab_size = 8192, seq_len = 512,
    d_model = 512, n_layer = 8, n_head = 8, n_kv_head = 4, d_ff = 2048,
    mlp = 'relu2', rope_theta = 10000, ternary = true, quant_group = 0,
    qk_norm = false, subln = false, tie_embeddings = false,
    init_std = 0.02, seed = 1,
}
