-- lua/nanochat/cmd/generate.lua — `nanochat generate CKPT prompt="fn main() {" n=200
--   [temperature=0.8 top_k=50 top_p= min_p= repetition_penalty= seed=0 tok=FILE bos=1 exit_q=]`
--
-- Promise: packs the checkpoint (nc.pack) and streams prompt + continuation to stdout (the prompt
-- first, then each piece as the tokenizer's incremental decoder completes it), then a newline.
-- CKPT: a checkpoint dir or a GGUF of ours (nanochat export). Tokenizer: tok=FILE, else
-- CKPT/tokenizer.bin (for a .gguf: tokenizer.bin next to it). The prompt is encoded with BOS first (bos=0 to
-- drop it). Sampling options and rules are nc.generate's (exit_q: a LoopLM checkpoint's q-exit
-- threshold, default its cfg.loop.exit_q). Exit status 0; errors name the cause.
local function usage()
    return 'usage: nanochat generate CKPT prompt="..." [n=200 temperature= top_k= top_p= min_p= repetition_penalty= seed= tok=FILE exit_q=]'
end

return function(kv, pos)
    local nc = require 'nanochat'
    local E = require 'nanochat.engine'
    local ckpt = pos[1]
    if not ckpt then error(usage(), 0) end
    local tok = E.tokenizer_for(ckpt, { tok = kv.tok })
    local engine = E.open(ckpt)
    local prompt = kv.prompt ~= nil and tostring(kv.prompt) or ''
    local ids = {}
    if kv.bos ~= 0 and kv.bos ~= false then ids[1] = tok.bos_id end
    for _, id in ipairs(tok:encode(prompt)) do ids[#ids + 1] = id end
    local o = E.sample_opts(kv)
    o.max_tokens = tonumber(kv.n) or 200
    io.write(prompt)
    io.flush()
    E.stream(engine, tok, ids, o, function(s) io.write(s); io.flush() end)
    io.write('\n')
    return 0
end
