-- configs/models/loop_dense.lua — configs/models/dense.lua's shape (SwiGLU d_ff 768, tied, SubLN,
-- embed_norm = false, GQA 4/2, per-tensor gamma) as a LoopLM: 1 prelude block, a 2-block shared
-- stack looped 3 times, 1 coda block (4 unique blocks, 8 applied at full depth). No mHC / MTP,
-- exit_q = 1 (no early exit), so `nanochat export` writes it unrolled under llama.cpp's `bitnet`
-- arch (8 layers, the shared blocks' weights written once per loop; README "GGUF export").
-- 5.25M parameters (3.15M in the 4 blocks + the 2.1M tied embedding/head + the 257-value gate).
return {
    name = 'loop_dense',
    vocab_size = 8192, seq_len = 256,
    d_model = 256, n_layer = 4, n_head = 4, n_kv_head = 2, d_ff = 768,
    mlp = 'swiglu', rope_theta = 10000, ternary = true, quant_group = 0,
    qk_norm = false, subln = true, tie_embeddings = true, embed_norm = false,
    init_std = 0.02, seed = 1,
    loop = { prelude = 1, shared = 2, coda = 1, T = 3, exit_q = 1.0 },
}
