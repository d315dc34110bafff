-- lua/nanochat/cmd/generate.lua — `nanochat generate CKPT prompt="fn main() {" n=200
--   [temperature=0.8 top_k=50 top_p= min_p= repetition_penalty= seed=0 tok=FILE bos=1 exit_q=
--   threads=N|auto]` (threads=auto: decode picks 1..N threads by measured speed, engine:set_threads)
--   several prompts, decoded as one batch: `prompt=A prompt2=B prompt3=C ...` or `prompts=FILE`
--   (one prompt per line, empty lines skipped) [batch=SLOTS]
--
-- Promise: packs the checkpoint (nc.pack) and, for one prompt, streams prompt + continuation to
-- stdout (the prompt first, then each piece as the tokenizer's incremental decoder completes it),
-- then a newline. CKPT: a checkpoint dir or a GGUF of ours (nanochat export). Tokenizer: tok=FILE,
-- else CKPT/tokenizer.bin (for a .gguf: tokenizer.bin next to it). The prompt is encoded with BOS
-- first (bos=0 to drop it). Sampling options and rules are nc.generate's (exit_q: a LoopLM
-- checkpoint's q-exit threshold, default its cfg.loop.exit_q). Exit status 0; errors name the cause.
-- Several prompts: decoded together by the engine's continuous batcher (engine:batch, nanochat.batch)
-- with `batch` rows (default: the number of prompts, at most 16); prompts beyond that join as rows
-- free up. Each completion is printed when it finishes, as one block "[k] prompt+continuation\n"
-- (k = the prompt's 1-based number), and equals what `nanochat generate` prints for that prompt
-- alone with the same options.
local function usage()
    return 'usage: nanochat generate CKPT prompt="..." [prompt2="..." ... | prompts=FILE] [batch=SLOTS n=200 ' ..
        'temperature= top_k= top_p= min_p= repetition_penalty= seed= tok=FILE exit_q= threads=N|auto]'
end

-- the prompts of kv: prompt, prompt2, prompt3, ... (consecutive) or the lines of prompts=FILE
local function prompt_list(kv)
    local list = {}
    if kv.prompts ~= nil then
        if kv.prompt ~= nil then error('nanochat generate: give prompt= (prompt2= ...) or prompts=FILE, not both', 0) end
        local f, err = io.open(tostring(kv.prompts), 'rb')
        if not f then error('nanochat generate: prompts=' .. tostring(kv.prompts) .. ': ' .. tostring(err), 0) end
        for line in f:lines() do
            line = line:gsub('\r$', '')
            if line ~= '' then list[#list + 1] = line end
        end
        f:close()
        if #list == 0 then error('nanochat generate: prompts=' .. tostring(kv.prompts) .. ' has no prompt lines', 0) end
        return list
    end
    list[1] = kv.prompt ~= nil and tostring(kv.prompt) or ''
    local k = 2
    while kv['prompt' .. k] ~= nil do
        list[k] = tostring(kv['prompt' .. k])
        k = k + 1
    end
    for key in pairs(kv) do
        local j = type(key) == 'string' and tonumber(key:match('^prompt(%d+)$'))
        if j and (j < 2 or j >= k) then
            error('nanochat generate: ' .. key .. '= without prompt' .. (k) .. '= (number the prompts 2, 3, ... in order)', 0)
        end
    end
    return list
end

return function(kv, pos)
    local E = require 'nanochat.engine'
    local ckpt = pos[1]
    if not ckpt then error(usage(), 0) end
    local prompts = prompt_list(kv)
    local tok = E.tokenizer_for(ckpt, { tok = kv.tok })
    local engine = E.apply_threads(E.open(ckpt), kv)
    local function encode(text)
        local ids = {}
        if kv.bos ~= 0 and kv.bos ~= false then ids[1] = tok.bos_id end
        for _, id in ipairs(tok:encode(text)) do ids[#ids + 1] = id end
        return ids
    end
    local o = E.sample_opts(kv)
    o.max_tokens = tonumber(kv.n) or 200
    if #prompts == 1 then
        io.write(prompts[1])
        io.flush()
        E.stream(engine, tok, encode(prompts[1]), o, function(s) io.write(s); io.flush() end)
        io.write('\n')
        return 0
    end
    -- several prompts: one batch; rows free up as sequences finish and waiting prompts join
    local enc, longest = {}, 0
    for i, p in ipairs(prompts) do
        enc[i] = encode(p)
        longest = math.max(longest, #enc[i])
    end
    local slots = kv.batch ~= nil and tonumber(kv.batch) or math.min(#prompts, 16)
    if not slots or slots < 1 or slots ~= math.floor(slots) then
        error('nanochat generate: batch must be an integer >= 1, got ' .. tostring(kv.batch), 0)
    end
    local ctx = engine.cfg.seq_len
    local bd = engine:batch { slots = slots, max_T = math.max(1, math.min(ctx, longest + o.max_tokens)) }
    local which, nexti = {}, 1
    local function fill()
        while nexti <= #prompts and bd:free() > 0 do
            which[bd:add(enc[nexti], o)] = nexti
            nexti = nexti + 1
        end
    end
    fill()
    while true do
        local any = false
        for id, t in bd:tokens() do
            any = true
            if t == nil then
                local out = bd:output(id)
                io.write('[', which[id], '] ', prompts[which[id]], tok:decode(out), '\n')
                io.flush()
                bd:remove(id)
                fill()
            end
        end
        if not any and nexti > #prompts then break end
        fill()
    end
    return 0
end
