-- configs/models/dense.lua — the dense (no LoopLM / mHC / MTP) baseline at the tiny model's size,
-- shaped so that `nanochat export` writes it under llama.cpp's `bitnet` architecture, which
-- llama.cpp loads and runs (README "GGUF export"): SwiGLU MLP (d_ff 768, a multiple of 256 so
-- every ternary matrix is a TQ2_0/TQ1_0 tensor), tied embeddings (bitnet's head is token_embd),
-- no embedding norm (llama.cpp adds the raw embedding to the residual), SubLN (bitnet's
-- attn_sub_norm / ffn_sub_norm), per-tensor gamma, no qk_norm / softcap. ~6.8M parameters
-- (4.7M in the blocks + the 2.1M tied embedding/head), vs tiny's 8.5M (the untied head).
return {
    name = 'dense',
    vocab_size = 8192, seq_len = 256,
    d_model = 256, n_layer = 6, n_head = 4, n_kv_head = 2, d_ff = 768,
    mlp = 'swiglu', rope_theta = 10000, ternary = true, quant_group = 0,
    qk_norm = false, subln = true, tie_embeddings = true, embed_norm = false,
    init_std = 0.02, seed = 1,
}
