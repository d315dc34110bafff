-- lua/nanochat/generate.lua — nc.generate: sampling from a model with a KV cache, pull style.
--
--   for id in nc.generate(model, prompt_ids, opts) do io.write(tok:decode{ id }) end
--
-- Promise: `nc.generate(model, prompt, opts)` returns an iterator yielding 0-based token ids one
-- at a time (a pull-style stream; nothing runs until the caller asks for the next id). The prompt
-- (a Lua array of ids or a 1-D integer tensor) is prefilled in one forward_cached call; each new
-- token costs one forward_cached of a single position. model needs new_cache(B, max_T) and
-- forward_cached(idx, cache) (nc.models.gpt provides both) and cfg.seq_len. The per-sequence
-- rules (prompt checks, sampling, stops, limits, the output queue) live in a Sequence
-- (M.sequence, below) that nc.generate drives with its own cache and the continuous batcher
-- (nanochat.batch) drives with one row of a shared cache: one implementation for both.
--
-- opts:
--   max_tokens (64)        new tokens at most (an integer >= 0); generation also ends when the
--                          context is full
--   max_context            cache length (default cfg.seq_len); the prompt must fit in it
--   temperature (1.0)      0 = greedy (argmax, lowest id on ties; no random draws)
--   top_k, top_p, min_p    filters (see below); nil/0 = off (top_p 1 = off)
--   repetition_penalty     > 0, 1 = off (CTRL / HF rule, below)
--   stop_tokens            list of ids that end generation (not yielded)
--   stop_strings           list of strings that end generation; needs opts.tokenizer (decode)
--   seed (0)               the counter-based generator (nc.generator(seed)): one uniform draw
--                          per sampled token, so a seed reproduces the stream exactly
--   messages + tokenizer   chat prompt: ids = tokenizer:render_chat(messages), then
--                          '<|assistant_start|>' is appended (unless already last) and
--                          '<|assistant_end|>' joins stop_tokens; prompt must be nil then
--   exit_q, on_cache       LoopLM models: the q-exit threshold of this generation's cache, and a
--                          function(cache) called once with it (read nc.looplm.stats(cache) later)
--
-- Sampling, per step, on the last position's logits l (fp32 -> Lua numbers, all in double):
--   1. repetition penalty p: for every distinct id in prompt + generated so far,
--      l[id] = l[id] / p if l[id] > 0 else l[id] * p
--   2. temperature 0 -> argmax of l. Else probs = softmax(l / temperature)
--   3. top_k: keep the k most probable (ties broken by lower id)
--   4. top_p: sort by prob (desc, ties by id); keep the shortest prefix whose mass >= top_p
--      (at least one token); mass measured on the distribution left by step 3
--   5. min_p: drop ids with prob < min_p * (largest remaining prob)
--   6. renormalize what is left and draw with u ~ U[0, 1) from the generator: the first id (in
--      id order) whose cumulative mass exceeds u * total.
-- Stop strings: decoded text is held back while its tail could still begin a stop string; when a
-- stop string appears, the tokens entirely before it are released and the stream ends (tokens
-- overlapping the stop string are not yielded). Held tokens are released at the normal end.
-- The filtering rules are exported (repetition_penalty, softmax, top_k, top_p, min_p, pick,
-- next_token) for specs and for other samplers; they take 1-based Lua arrays (entry i = id i-1).
local M = {}

local function nc() return require 'nanochat' end

-- ---- the filtering rules ---------------------------------------------------------------------
-- in place on logits; history: array of 0-based ids
function M.repetition_penalty(logits, history, p)
    if not p or p == 1 then return logits end
    if p <= 0 then error('generate: repetition_penalty must be > 0, got ' .. tostring(p), 2) end
    local seen = {}
    for _, id in ipairs(history) do
        if not seen[id] then
            seen[id] = true
            local i = id + 1
            local v = logits[i]
            if v then logits[i] = v > 0 and v / p or v * p end
        end
    end
    return logits
end

function M.argmax(logits)
    local best, bi = -math.huge, 1
    for i = 1, #logits do
        if logits[i] > best then best, bi = logits[i], i end
    end
    return bi - 1
end

-- softmax(logits / temperature) as a new array (masked -inf entries give 0)
function M.softmax(logits, temperature)
    temperature = temperature or 1
    local m = -math.huge
    for i = 1, #logits do if logits[i] > m then m = logits[i] end end
    local out, s = {}, 0
    for i = 1, #logits do
        local e = math.exp((logits[i] - m) / temperature)
        out[i] = e
        s = s + e
    end
    for i = 1, #out do out[i] = out[i] / s end
    return out
end

-- indices (1-based) of the nonzero probs sorted by prob desc, then index asc
local function ranked(probs)
    local idx = {}
    for i = 1, #probs do if probs[i] > 0 then idx[#idx + 1] = i end end
    table.sort(idx, function(a, b)
        if probs[a] ~= probs[b] then return probs[a] > probs[b] end
        return a < b
    end)
    return idx
end

-- each filter zeroes entries in place and returns probs
function M.top_k(probs, k)
    if not k or k <= 0 or k >= #probs then return probs end
    -- one pass keeping the best k indices sorted (prob desc, index asc): O(V) plus insertions
    local top, n = {}, 0
    for i = 1, #probs do
        local p = probs[i]
        if p > 0 and (n < k or p > probs[top[n]]) then
            local j = n < k and n + 1 or n
            while j > 1 and p > probs[top[j - 1]] do top[j] = top[j - 1]; j = j - 1 end
            top[j] = i
            if n < k then n = n + 1 end
        end
    end
    local keep = {}
    for r = 1, n do keep[top[r]] = true end
    for i = 1, #probs do if not keep[i] then probs[i] = 0 end end
    return probs
end

function M.top_p(probs, p)
    if not p or p >= 1 then return probs end
    if p <= 0 then error('generate: top_p must be in (0, 1], got ' .. tostring(p), 2) end
    local idx = ranked(probs)
    local total = 0
    for _, i in ipairs(idx) do total = total + probs[i] end
    local cum, keep = 0, #idx
    for r, i in ipairs(idx) do
        cum = cum + probs[i]
        if cum >= p * total then keep = r; break end
    end
    for r = keep + 1, #idx do probs[idx[r]] = 0 end
    return probs
end

function M.min_p(probs, mp)
    if not mp or mp <= 0 then return probs end
    local m = 0
    for i = 1, #probs do if probs[i] > m then m = probs[i] end end
    local thr = mp * m
    for i = 1, #probs do if probs[i] < thr then probs[i] = 0 end end
    return probs
end

-- the id drawn by u in [0, 1) from (unnormalized) probs
function M.pick(probs, u)
    local total = 0
    for i = 1, #probs do total = total + probs[i] end
    local target, cum, last = u * total, 0, nil
    for i = 1, #probs do
        local p = probs[i]
        if p > 0 then
            cum = cum + p
            last = i
            if cum > target then return i - 1 end
        end
    end
    if not last then error('generate: every token was filtered out', 2) end
    return last - 1
end

-- One token from a logits array (modified in place by the penalty). draw() -> u in [0, 1) is
-- called only when sampling (temperature > 0).
function M.next_token(logits, opts, history, draw)
    M.repetition_penalty(logits, history or {}, opts.repetition_penalty)
    local temp = opts.temperature
    if temp == nil then temp = 1 end
    if temp < 0 then error('generate: temperature must be >= 0, got ' .. tostring(temp), 2) end
    if temp == 0 then return M.argmax(logits) end
    local probs = M.softmax(logits, temp)
    M.top_k(probs, opts.top_k)
    M.top_p(probs, opts.top_p)
    M.min_p(probs, opts.min_p)
    return M.pick(probs, draw())
end

-- ---- one sequence's stream state (nc.generate and nc.batch share it) ---------------------------
local function prompt_list(prompt, who)
    local n = nc()
    if n.is_tensor(prompt) then
        if prompt:dim() ~= 1 then error(who .. ': expected a 1-D prompt tensor, got ' .. prompt:dim() .. ' dims', 4) end
        prompt = prompt:tolist()
    end
    if type(prompt) ~= 'table' then error(who .. ': expected prompt ids (a Lua array or a 1-D tensor)', 4) end
    local out = {}
    for i, v in ipairs(prompt) do
        if type(v) ~= 'number' or v ~= math.floor(v) or v < 0 then
            error(who .. ': prompt entry ' .. i .. ' is not a token id: ' .. tostring(v), 4)
        end
        out[i] = v
    end
    return out
end

local function chat_prompt(opts, who)
    local tok = opts.tokenizer
    if not tok then error(who .. ': opts.messages needs opts.tokenizer (render_chat)', 4) end
    local ids = tok:render_chat(opts.messages)
    local out = {}
    for i, v in ipairs(ids) do out[i] = v end
    local ok, start = pcall(tok.special, tok, '<|assistant_start|>')
    if ok and start and out[#out] ~= start then out[#out + 1] = start end
    local ok2, stop = pcall(tok.special, tok, '<|assistant_end|>')
    return out, (ok2 and stop) or nil
end

-- A Sequence: one generation's prompt, sampling options, stop rules and output queue, driven by
-- whoever runs the model (nc.generate: its own B = 1 cache; nc.batch: one row of a shared cache).
--   seq.pending        ids to feed the model next (first the prompt, then the last sampled id);
--                      nil once the sequence is done
--   seq:push(logits)   the logits (a Lua array of V numbers) of the last position of pending:
--                      samples the next id by the rules above, applies the stop rules and limits
--   seq:pop()          the next id ready for the caller (stop strings may hold ids back), or nil
--   seq.done           true once nothing more will be sampled (pop may still return queued ids)
--   seq.limit          positions this sequence may fill (min(context, #prompt + max_tokens)):
--                      the cache length nc.generate allocates
--   seq.produced, seq.prompt, seq.history (prompt + sampled ids)
local Seq = {}
Seq.__index = Seq
M.Sequence = Seq

-- M.sequence(prompt, opts, cfg[, who[, max_context]]): validates like nc.generate (errors name
-- `who`, default 'generate', at the level of the caller's caller); max_context caps the context
-- (opts.max_context above it is an error; default min(cfg.seq_len, max_context)).
function M.sequence(prompt, opts, cfg, who, cap)
    opts = opts or {}
    who = who or 'generate'
    local n = nc()
    local extra_stop
    if opts.messages then
        if prompt ~= nil then error(who .. ': give either prompt ids or opts.messages, not both', 3) end
        prompt, extra_stop = chat_prompt(opts, who)
    else
        prompt = prompt_list(prompt, who)
    end
    if #prompt == 0 then error(who .. ': the prompt is empty (give at least one token, e.g. BOS)', 3) end
    cfg = cfg or {}
    local ctx = opts.max_context or cfg.seq_len
    if not ctx then error(who .. ': opts.max_context is needed (the model has no cfg.seq_len)', 3) end
    if cap then
        if opts.max_context and opts.max_context > cap then
            error(string.format('%s: max_context %d is more than the cache length %d', who, opts.max_context, cap), 3)
        end
        ctx = math.min(ctx, cap)
    end
    if #prompt > ctx then
        error(string.format('%s: the prompt has %d tokens, more than the context of %d', who, #prompt, ctx), 3)
    end
    local max_tokens = opts.max_tokens or 64
    if type(max_tokens) ~= 'number' or max_tokens < 0 or max_tokens ~= math.floor(max_tokens) then
        error(who .. ': max_tokens must be an integer >= 0, got ' .. tostring(max_tokens), 3)
    end
    local stop_tokens = {}
    for _, id in ipairs(opts.stop_tokens or {}) do stop_tokens[id] = true end
    if extra_stop then stop_tokens[extra_stop] = true end
    local stops = opts.stop_strings or {}
    if #stops > 0 and not opts.tokenizer then error(who .. ': stop_strings need opts.tokenizer (to decode tokens)', 3) end
    for _, s in ipairs(stops) do
        if type(s) ~= 'string' or s == '' then error(who .. ': stop_strings must be non-empty strings', 3) end
    end
    local gen = n.generator(opts.seed or 0)
    local self = setmetatable({
        opts = opts, prompt = prompt, pending = prompt, fed = 0, produced = 0, done = false,
        max_tokens = max_tokens, limit = math.min(ctx, #prompt + max_tokens),
        stop_tokens = stop_tokens, stops = stops, tok = opts.tokenizer,
        draw = function() return n.rand({ 1 }, { generator = gen }):item() end,
        queue = {}, qhead = 1, qtail = 0, held = {}, held_text = '', history = {},
    }, Seq)
    for i, v in ipairs(prompt) do self.history[i] = v end
    self:_check_end()
    return self
end

function Seq:_enqueue(id)
    self.qtail = self.qtail + 1
    self.queue[self.qtail] = id
end

function Seq:_release(k)   -- the first k held tokens go to the queue
    local rest, text = {}, ''
    for i, h in ipairs(self.held) do
        if i <= k then self:_enqueue(h.id)
        else rest[#rest + 1] = h; text = text .. h.text end
    end
    self.held, self.held_text = rest, text
end

function Seq:_finish()
    self:_release(#self.held)
    self.done, self.pending = true, nil
end

-- ends the sequence when it may not feed its pending ids (max_tokens reached, context full)
function Seq:_check_end()
    if not self.done and (self.produced >= self.max_tokens or self.fed + #self.pending > self.limit) then
        self:_finish()
    end
end

-- feed the text of a new token; returns true when a stop string completed
function Seq:_scan(id)
    local piece = self.tok:decode({ id })
    self.held[#self.held + 1] = { id = id, text = piece }
    self.held_text = self.held_text .. piece
    local first
    for _, s in ipairs(self.stops) do
        local p = self.held_text:find(s, 1, true)
        if p and (not first or p < first) then first = p end
    end
    local function release_before(limit)   -- tokens whose text ends at or before byte `limit`
        local k, e = 0, 0
        for i, h in ipairs(self.held) do
            e = e + #h.text
            if e <= limit then k = i else break end
        end
        self:_release(k)
    end
    if first then
        release_before(first - 1)
        return true
    end
    local keep = 0   -- longest tail that is a proper prefix of a stop string
    for _, s in ipairs(self.stops) do
        for L = math.min(#s - 1, #self.held_text), 1, -1 do
            if L > keep and self.held_text:sub(-L) == s:sub(1, L) then keep = L; break end
        end
    end
    release_before(#self.held_text - keep)
    return false
end

function Seq:push(logits)
    if self.done then error('generate: Sequence:push after the sequence ended', 2) end
    self.fed = self.fed + #self.pending
    local id = M.next_token(logits, self.opts, self.history, self.draw)
    self.produced = self.produced + 1
    self.history[#self.history + 1] = id
    if self.stop_tokens[id] then return self:_finish() end
    self.pending = { id }
    if #self.stops > 0 then
        if self:_scan(id) then
            self.held = {}
            self.done, self.pending = true, nil
            return
        end
    else
        self:_enqueue(id)
    end
    self:_check_end()
end

function Seq:pop()
    if self.qhead > self.qtail then return nil end
    local id = self.queue[self.qhead]
    self.queue[self.qhead] = nil
    self.qhead = self.qhead + 1
    return id
end

-- ---- the stream --------------------------------------------------------------------------------
function M.generate(model, prompt, opts)
    opts = opts or {}
    local n = nc()
    local seq = M.sequence(prompt, opts, model.cfg, 'generate')
    -- opts.exit_q: a LoopLM model's q-exit threshold for this generation (nanochat.looplm)
    local cache = model:new_cache(1, seq.limit, opts.exit_q and { exit_q = opts.exit_q } or nil)
    if opts.on_cache then opts.on_cache(cache) end   -- e.g. read LoopLM exit statistics afterwards

    -- the ids go where the model's parameters are (a model moved with :to('cuda') decodes there)
    local params = model.parameters and model:parameters() or {}
    local dev = params[1] and params[1]:device() or 'cpu'
    local function step()
        local T = #seq.pending
        local idx = n.tensor({ seq.pending }, { dtype = 'i64', device = dev })
        local logits = model:forward_cached(idx, cache)          -- (1, T, V)
        seq:push(logits:select(1, T - 1):select(0, 0):tolist())
    end

    return function()
        while true do
            local id = seq:pop()
            if id then return id end
            if seq.done then return nil end
            step()
        end
    end
end

-- all ids of one generate() call as a Lua array
function M.collect(model, prompt, opts)
    local out = {}
    for id in M.generate(model, prompt, opts) do out[#out + 1] = id end
    return out
end

return setmetatable(M, { __call = function(_, ...) return M.generate(...) end })
