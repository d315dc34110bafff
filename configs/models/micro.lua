-- configs/models/micro.lua — test-size GPT (~39k parameters) for specs and fixtures.
return {
    name = 'micro',
    vocab_size = 256, seq_len = 32,
    d_model = 32, n_layer = 2, n_head = 4, n_kv_head = 2, d_ff = 128,
    mlp = 'relu2', rope_theta = 10000, ternary = true, quant_group = 0,
    qk_norm = false, subln = false, tie_embeddings = false,
    init_std = 0.02, seed = 1,
}
