-- lua/nanochat/batch.lua — continuous batching over a packed engine (`engine:batch{...}`).
--
--   local bd = engine:batch { slots = 4, max_T = 512 }
--   local a = bd:add(prompt_ids, { temperature = 0, max_tokens = 100 })
--   local b = bd:add(other_ids, { temperature = 0.8, top_k = 50, seed = 1 })
--   for id, tok in bd:tokens() do              -- pull-style: steps the batch as needed
--       if tok then io.write(id, ':', tok, ' ') else print(id, 'finished') end
--   end
--
-- Promise: several sequences, each at its own position, decode together: one KV cache of `slots`
-- rows (engine:new_cache(slots, max_T)); bd:add prefills a sequence into a free row (on a B = 1
-- view of that row, engine:cache_row, through the engine's ordinary prefill) and samples its first
-- token; bd:step() advances every unfinished sequence by one token — on the fused path in ONE
-- nc_engine_decode call for all of them (engine:decode_rows: cfg seq_pos / seq_slot, each row at
-- its own position in its own cache row) — and samples each with its own options. The sampling,
-- stop and limit rules are nc.generate's own (nanochat.generate's Sequence: the same code), so a
-- sequence decoded in a batch yields the same ids as nc.generate(engine, prompt, opts) alone (the
-- fused kernel is row-wise exact: bit-identical logits; spec/infer/batch_spec.lua). Sequences join
-- (add) and leave (stop token, stop string, max_tokens, context full, remove) at any step; a
-- finished sequence frees its row at once, and a later add reuses it.
--
-- Architectures: all of them are batched — plain GPT, MTP models (batched decoding samples the
-- main head token by token, i.e. no MTP drafting — nc.mtp.generate drafts for one greedy
-- sequence), mHC (the stream mixing runs inside nc_engine_decode) and LoopLM (each sequence runs
-- loops until its own q-exit: each loop segment runs on the sequences still active, then each gets
-- the reuse fill of its own exit loop; looplm.decode_rows), e3 = all three. LoopLM sequences keep
-- their own exit_q (sample option exit_q) and statistics (opts.on_cache(view):
-- nc.looplm.stats(view)). An engine with engine.fused = false falls back to decoding each sequence
-- on its own row view, one forward_cached per sequence per step: same results, no batching
-- speed-up (bd.batched tells which path is used).
--
-- API:
--   M.new(engine, { slots = 4, max_T = cfg.seq_len })  (= engine:batch(opts))
--   bd:add(prompt, opts) -> id     prompt: ids (array / 1-D tensor) or nil with opts.messages +
--                                  opts.tokenizer; opts: nc.generate's (max_tokens, temperature,
--                                  top_k, top_p, min_p, repetition_penalty, seed, stop_tokens,
--                                  stop_strings + tokenizer, max_context <= max_T, exit_q, on_cache)
--   bd:step() -> events            { { id =, tokens = { ids released this step }, done = bool }, ... }
--                                  for every sequence with news, in id order
--   bd:tokens() -> iterator        yields (id, tok) per token and (id, nil) once when id finishes;
--                                  ends when no sequence is unfinished or has unreported news
--                                  (add more and call tokens() again: a server's loop)
--   bd:run() -> { [id] = ids }     steps until every sequence finished; all outputs
--   bd:remove(id)                  drops a sequence (unfinished: frees its row now)
--   bd:output(id) -> ids, done     what a sequence has released so far
--   bd:active() -> n               unfinished sequences;  bd:free() -> n free rows
--   bd.stats                       { steps, fused_calls, rows_decoded, prefills }
local G = require 'nanochat.generate'

local function nc() return require 'nanochat' end

local M = {}

local Batch = {}
Batch.__index = Batch
M.Batch = Batch

local function int_opt(v, name, lo, default)
    if v == nil then return default end
    if type(v) ~= 'number' or v ~= math.floor(v) or v < lo then
        error(string.format('batch: %s must be an integer >= %d, got %s', name, lo, tostring(v)), 3)
    end
    return v
end

function M.new(engine, opts)
    opts = opts or {}
    if type(engine) ~= 'table' or getmetatable(engine) ~= require('nanochat.engine').Engine then
        error('batch: expected a packed engine (nc.pack / nc.engine.open)', 2)
    end
    if type(opts) ~= 'table' then error('batch: opts must be a table', 2) end
    for k in pairs(opts) do
        if k ~= 'slots' and k ~= 'max_T' then error('batch: unknown option ' .. tostring(k) .. ' (known: slots, max_T)', 2) end
    end
    local slots = int_opt(opts.slots, 'slots', 1, 4)
    local max_T = int_opt(opts.max_T, 'max_T', 1, engine.cfg.seq_len)
    local self = setmetatable({
        engine = engine, slots = slots, max_T = max_T, cache = engine:new_cache(slots, max_T),
        batched = engine:batchable(), free_rows = {}, recs = {}, next_id = 1,
        stats = { steps = 0, fused_calls = 0, rows_decoded = 0, prefills = 0 },
    }, Batch)
    for r = 0, slots - 1 do self.free_rows[r] = true end
    return self
end

-- the lowest free row, or nil
function Batch:_take_row()
    for r = 0, self.slots - 1 do
        if self.free_rows[r] then
            self.free_rows[r] = nil
            return r
        end
    end
end

function Batch:_release_row(rec)
    if rec.row then
        self.free_rows[rec.row] = true
        rec.row, rec.view = nil, nil
    end
end

-- sorted ids of the live records
function Batch:_ids()
    local ids = {}
    for id in pairs(self.recs) do ids[#ids + 1] = id end
    table.sort(ids)
    return ids
end

function Batch:free()
    local k = 0
    for _ in pairs(self.free_rows) do k = k + 1 end
    return k
end

function Batch:active()
    local k = 0
    for _, rec in pairs(self.recs) do if not rec.seq.done then k = k + 1 end end
    return k
end

-- feed a sequence's pending ids through its row view (prefill, or a fallback decode step)
local function feed_view(self, rec)
    local n = nc()
    local seq = rec.seq
    local T = #seq.pending
    local logits = self.engine:forward_cached(n.tensor({ seq.pending }, { dtype = 'i64' }), rec.view)
    seq:push(logits:select(1, T - 1):select(0, 0):tolist())
end

function Batch:add(prompt, opts)
    opts = opts or {}
    if type(opts) ~= 'table' then error('batch:add: opts must be a table', 2) end
    local e = self.engine
    local V = e.cfg.vocab_size
    if not next(self.free_rows) then
        error(string.format('batch:add: all %d slots are busy (wait for a sequence to finish or remove one)',
            self.slots), 2)
    end
    local seq = G.sequence(prompt, opts, e.cfg, 'batch:add', self.max_T)
    for i, id in ipairs(seq.prompt) do
        if id >= V then
            error(string.format('batch:add: prompt entry %d is id %d, outside the vocabulary 0..%d', i, id, V - 1), 2)
        end
    end
    local id = self.next_id
    self.next_id = id + 1
    local rec = { id = id, seq = seq, out = {}, reported_done = false }
    self.recs[id] = rec
    if not seq.done then
        rec.row = self:_take_row()
        rec.view = e:cache_row(self.cache, rec.row, opts.exit_q and { exit_q = opts.exit_q } or nil)
        if opts.on_cache then opts.on_cache(rec.view) end
        local ok, err = pcall(feed_view, self, rec)
        if not ok then
            self:_release_row(rec)
            self.recs[id] = nil
            error(err, 0)
        end
        self.stats.prefills = self.stats.prefills + 1
        if seq.done then self:_release_row(rec) end
    end
    return id
end

-- one token for every unfinished sequence; returns the events (see the header)
function Batch:step()
    local n = nc()
    local live = {}
    for _, id in ipairs(self:_ids()) do
        local rec = self.recs[id]
        if not rec.seq.done then live[#live + 1] = rec end
    end
    if #live > 0 then
        self.stats.steps = self.stats.steps + 1
        self.stats.rows_decoded = self.stats.rows_decoded + #live
        self.batched = self.engine:batchable()   -- (engine.fused may have been switched since)
        if self.batched then
            local ids, rows, pos, views = {}, {}, {}, {}
            for i, rec in ipairs(live) do
                ids[i], rows[i], pos[i], views[i] = rec.seq.pending[1], rec.row, rec.seq.fed, rec.view
            end
            -- (views: a LoopLM sequence's exit_q and statistics)
            local logits = self.engine:decode_rows(ids, self.cache, rows, pos, views)   -- (nb, V)
            self.stats.fused_calls = self.stats.fused_calls + 1
            for i, rec in ipairs(live) do
                rec.seq:push(logits:select(0, i - 1):tolist())
                rec.view.pos = rec.seq.fed
            end
        else
            for _, rec in ipairs(live) do feed_view(self, rec) end
        end
        for _, rec in ipairs(live) do
            if rec.seq.done then self:_release_row(rec) end
        end
    end
    local events = {}
    for _, id in ipairs(self:_ids()) do
        local rec = self.recs[id]
        local toks = {}
        for t in function() return rec.seq:pop() end do
            toks[#toks + 1] = t
            rec.out[#rec.out + 1] = t
        end
        local done = rec.seq.done and not rec.reported_done
        if done then rec.reported_done = true end
        if #toks > 0 or done then events[#events + 1] = { id = id, tokens = toks, done = done } end
    end
    return events
end

-- true while some sequence is unfinished or has news not yet reported
function Batch:_pending()
    for _, rec in pairs(self.recs) do
        if not rec.reported_done or rec.seq.qhead <= rec.seq.qtail then return true end
    end
    return false
end

function Batch:tokens()
    local buf, head, tail = {}, 1, 0
    local function put(id, t)
        tail = tail + 1
        buf[tail] = { id, t }
    end
    return function()
        while true do
            if head <= tail then
                local ev = buf[head]
                buf[head] = nil
                head = head + 1
                return ev[1], ev[2]
            end
            if not self:_pending() then return nil end
            for _, ev in ipairs(self:step()) do
                for _, t in ipairs(ev.tokens) do put(ev.id, t) end
                if ev.done then put(ev.id, nil) end
            end
        end
    end
end

function Batch:run()
    while self:_pending() do self:step() end
    local out = {}
    for id, rec in pairs(self.recs) do out[id] = rec.out end
    return out
end

function Batch:output(id)
    local rec = self.recs[id]
    if not rec then error('batch:output: no sequence ' .. tostring(id), 2) end
    return rec.out, rec.seq.done
end

function Batch:remove(id)
    local rec = self.recs[id]
    if not rec then error('batch:remove: no sequence ' .. tostring(id), 2) end
    self:_release_row(rec)
    self.recs[id] = nil
end

function Batch:__tostring()
    return string.format('nc.Batch(%d slots, max_T %d, %d active, %s)', self.slots, self.max_T, self:active(),
        self.batched and 'fused' or 'one sequence at a time')
end

return M
