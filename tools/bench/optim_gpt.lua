-- tools/bench/optim_gpt.lua — the optimizer benchmark's model/data factory for the ternary GPT on
-- the tiny recipe's data (nc.data.prepare: the default Rust corpus, 8192-token BPE, shards):
--
--   ./nanochat tools/bench/optim.lua factory=tools/bench/optim_gpt.lua d=128 layers=4 seq=128 batch=8
--
-- The model is configs/models/tiny.lua with d, layers, heads, kv_heads, seq and batch taken from
-- the benchmark's settings (a reduced tiny, so the combinations finish in minutes on 2 cores). Train
-- batches come from a random-sampling loader over the train shards (batch k is a pure function of
-- (seed, k), so every combination sees the same data); val batches are the first val_batches of a
-- sequential pass over the val shards.
local nc = require 'nanochat'

return function(c)
    local tok, shard_dir = nc.data.prepare { vocab = 8192, quiet = true }
    local mcfg = dofile('configs/models/tiny.lua')
    mcfg.d_model, mcfg.n_layer, mcfg.n_head, mcfg.n_kv_head = c.d, c.layers, c.heads, c.kv_heads
    mcfg.d_ff = 4 * c.d
    mcfg.vocab_size, mcfg.seq_len, mcfg.seed = tok:vocab_size(), c.seq, c.seed
    local model = nc.models.gpt.new(mcfg)
    local B, T = c.batch, c.seq
    local train = nc.data.loader { shards = nc.data.shards(shard_dir, 'train'), B = B, T = T, seed = c.seed,
                                   sampling = 'random' }
    local val = {}
    local vl = nc.data.loader { shards = nc.data.shards(shard_dir, 'val'), B = B, T = T, sampling = 'sequential', loop = true }
    for i = 1, c.val_batches do
        local x, y = vl:next()
        val[i] = { x, y }
    end
    vl:close()
    return {
        model = model,
        describe = string.format('ternary GPT d=%d L=%d H=%d/%d, seq %d, batch %d, vocab %d, on the default Rust corpus',
            mcfg.d_model, mcfg.n_layer, mcfg.n_head, mcfg.n_kv_head, T, B, tok:vocab_size()),
        train_batch = function() return train:next() end,   -- called for steps 0, 1, 2, ... in order
        val_batches = val,
        loss = function(m, x, y) return (m:forward(x, y)) end,
    }
end
