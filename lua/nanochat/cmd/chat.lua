-- lua/nanochat/cmd/chat.lua — `nanochat chat CKPT [temperature=0.8 top_k=50 n=512 tok=FILE system="..." threads=N|auto]`
--
-- Interactive chat over the packed engine: each user line is appended to the conversation, the
-- whole conversation is rendered with tok:render_chat (+ '<|assistant_start|>'), and the reply
-- streams through the tokenizer's incremental decoder until '<|assistant_end|>' or n tokens.
-- Commands: /temp X, /topk K, /reset (forget the conversation), /quit (or end of input).
-- Input is read with io.read (line editing is the terminal's; the launcher's readline is
-- reserved for its REPL).
local M = {}

-- one command line -> handled (true) or nil; state: { opts, messages, quit }
function M.command(line, state, write)
    local cmd, arg = line:match('^/(%a+)%s*(.-)%s*$')
    if not cmd then return nil end
    if cmd == 'quit' or cmd == 'exit' then state.quit = true
    elseif cmd == 'reset' then state.messages = {}; write('(conversation cleared)\n')
    elseif cmd == 'temp' and tonumber(arg) and tonumber(arg) >= 0 then
        state.opts.temperature = tonumber(arg); write('(temperature ' .. arg .. ')\n')
    elseif cmd == 'topk' and tonumber(arg) then
        state.opts.top_k = tonumber(arg); write('(top_k ' .. arg .. ')\n')
    else write('(commands: /temp X, /topk K, /reset, /quit)\n') end
    return true
end

-- one turn: user text -> reply text (streamed to write)
function M.turn(engine, tok, state, text, write)
    local E = require 'nanochat.engine'
    state.messages[#state.messages + 1] = { role = 'user', content = text }
    local o = {}
    for k, v in pairs(state.opts) do o[k] = v end
    o.messages, o.tokenizer = state.messages, tok
    local parts = {}
    E.stream(engine, tok, nil, o, function(s) parts[#parts + 1] = s; write(s) end)
    write('\n')
    local reply = table.concat(parts)
    state.messages[#state.messages + 1] = { role = 'assistant', content = reply }
    return reply
end

function M.run(kv, pos)
    local nc = require 'nanochat'
    local E = require 'nanochat.engine'
    local ckpt = pos[1]
    if not ckpt then error('usage: nanochat chat CKPT [temperature= top_k= n= tok=FILE system="..." threads=N|auto]', 0) end
    local tok = E.tokenizer_for(ckpt, { tok = kv.tok })
    local engine = E.apply_threads(E.open(ckpt), kv)
    local opts = E.sample_opts(kv)
    if opts.temperature == nil then opts.temperature = 0.8 end
    if opts.top_k == nil then opts.top_k = 50 end
    opts.max_tokens = tonumber(kv.n) or 512
    local state = { opts = opts, messages = {} }
    if kv.system then state.messages[1] = { role = 'system', content = tostring(kv.system) } end
    local function write(s) io.write(s); io.flush() end
    write(tostring(engine) .. '\n(commands: /temp X, /topk K, /reset, /quit)\n')
    while not state.quit do
        write('> ')
        local line = io.read('*l')
        if not line then break end
        if not M.command(line, state, write) and line:match('%S') then
            local n0 = #state.messages
            local ok, err = pcall(M.turn, engine, tok, state, line, write)
            if not ok then   -- e.g. the conversation outgrew the context: report, keep the session
                for i = #state.messages, n0 + 1, -1 do state.messages[i] = nil end
                write('\n(' .. tostring(err) .. '; /reset starts over)\n')
            end
        end
    end
    return 0
end

return M
