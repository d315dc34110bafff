-- lua/nanochat/cmd/export.lua — `nanochat export CKPT out.gguf [type=tq2_0|tq1_0]`
--
-- Promise: packs the checkpoint dir and writes it as a GGUF under our own architecture key
-- 'nanochat' (lua/nanochat/export.lua: exact training scales, every option of our GPT), which
-- `nanochat chat` / `generate` load. Prints the file size. llama.cpp's llama/bitnet arches are not
-- written yet (README: Inference).
return function(kv, pos)
    local nc = require 'nanochat'
    local ckpt, out = pos[1], pos[2]
    if not ckpt or not out then error('usage: nanochat export CKPT out.gguf [type=tq2_0|tq1_0]', 0) end
    local bytes = nc.export.gguf(ckpt, out, { type = kv.type })
    print(string.format('wrote %s (%d bytes, arch nanochat, %s)', out, bytes, kv.type or 'tq2_0'))
    return 0
end
