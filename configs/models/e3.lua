-- configs/models/e3.lua — the flagship e3 architecture at its 2-CPU-core size (recipes/e3.lua):
-- the tiny model's widths (d 256, 4 heads / 2 KV heads, ReLU² 1024, vocab 8192, T 256) with
-- LoopLM (1 prelude block, a 2-block shared stack looped 3 times, 1 coda block: 4 unique blocks;
-- training applies the coda after every loop for that loop's exit logits, so 1 + (2 + 1) x 3 = 10
-- block applications per token; decoding runs the coda once, at the exit loop), mHC-lite with 4
-- residual streams, and one DeepSeek-style MTP module.
-- Collider token filtering is a training option (recipes/e3.lua collider=), not part of the model.
-- Every feature table can be removed (or set from the recipe command line) to ablate it.
return {
    name = 'e3',
    vocab_size = 8192, seq_len = 256,
    d_model = 256, n_layer = 4, n_head = 4, n_kv_head = 2, d_ff = 1024,
    mlp = 'relu2', rope_theta = 10000, ternary = true, quant_group = 0,
    qk_norm = false, subln = false, tie_embeddings = false,
    init_std = 0.02, seed = 1,
    loop = { prelude = 1, shared = 2, coda = 1, T = 3, beta = 0.05 },
    mhc = { n = 4, kind = 'lite' },
    mtp = { depth = 1, lambda = 0.3 },
}
