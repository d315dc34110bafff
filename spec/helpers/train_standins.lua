-- spec/helpers/train_standins.lua — small stand-ins for the train/checkpoint specs: a tiny
-- bigram language model (an nc.nn.Module), an SGD-with-momentum optimizer honouring the
-- nc.optim contract (step(mult), zero_grad, state_dict, load_state_dict, state_bytes), a
-- deterministic in-memory loader with next/state/set_state, and a tokenizer with token_bytes
-- and hash. They exist only for the specs; the real ones are nc.models / nc.optim / nc.data.
local nc = require 'nanochat'

local S = {}

-- ---- model: logits = Linear(Embedding(idx)) ---------------------------------------------------
local Bigram = nc.nn.Module:extend('BigramStandIn')
function Bigram:init(V, d)
    self.config = { vocab_size = V, d_model = d }
    self.emb = nc.nn.Embedding(V, d)
    self.head = nc.nn.Linear(d, V, { bias = false })
end
function Bigram:forward(idx, targets, opts)
    local logits = self.head(self.emb(idx))
    if targets then return nc.cross_entropy(logits, targets, opts), logits end
    return logits
end
function Bigram:flops_per_token() return 6 * self:num_params() end

function S.model(V, d, seed)
    nc.manual_seed(seed or 1)
    return Bigram(V or 16, d or 8)
end

-- ---- optimizer: SGD with momentum, per-group lr ------------------------------------------------------
local SGD = {}
SGD.__index = SGD
function S.sgd(params, opts)
    opts = opts or {}
    local self = setmetatable({ params = params, lr = opts.lr or 0.1, momentum = opts.momentum or 0.9,
                                bufs = {}, t = 0, mults = {} }, SGD)
    for i, p in ipairs(params) do self.bufs[i] = nc.zeros(p:shape()) end
    return self
end
function SGD:step(mult)
    mult = mult or 1
    self.t = self.t + 1
    self.mults[#self.mults + 1] = mult
    for i, p in ipairs(self.params) do
        local g = rawget(p, 'grad')
        if g then
            local b = self.bufs[i]
            b:copy_(b * self.momentum)
            b:add_scaled_(g, 1)
            p:add_scaled_(b, -self.lr * mult)
        end
    end
end
function SGD:zero_grad() for _, p in ipairs(self.params) do p.grad = nil end end
function SGD:state_dict()
    local t = {}
    for i, b in ipairs(self.bufs) do t['buf.' .. i] = b end
    return { tensors = t, meta = { t = self.t, lr = self.lr, momentum = self.momentum } }
end
function SGD:load_state_dict(sd)
    for i, b in ipairs(self.bufs) do b:copy_(sd.tensors['buf.' .. i]) end
    self.t = sd.meta.t
end
function SGD:state_bytes()
    local n = 0
    for _, b in ipairs(self.bufs) do n = n + 4 * b:numel() end
    return n
end

-- ---- loader: batches cut from a fixed pseudo-random token stream --------------------------------------
local Loader = {}
Loader.__index = Loader
-- opts: V, B, T, n_tokens (stream length), seed, loop (default true), pos (start)
function S.loader(opts)
    opts = opts or {}
    local V, n = opts.V or 16, opts.n_tokens or 4096
    local seed = opts.seed or 7
    local toks = {}
    local x = seed
    for i = 1, n do
        x = (x * 1103515245 + 12345) % 2147483648
        -- mostly a deterministic successor (learnable), sometimes noise
        local prev = toks[i - 1] or 0
        toks[i] = (math.floor(x / 65536) % 4 == 0) and (math.floor(x / 1024) % V) or ((prev * 3 + 1) % V)
    end
    return setmetatable({ toks = toks, B = opts.B or 4, T = opts.T or 8, pos = opts.pos or 0,
                          loop = opts.loop ~= false, calls = 0 }, Loader)
end
function Loader:next()
    local B, T, n = self.B, self.T, #self.toks
    local need = B * (T + 1)
    if self.pos + need > n then
        if not self.loop then return nil end
        self.pos = 0
    end
    local xs, ys = {}, {}
    for b = 1, B do
        local row_x, row_y = {}, {}
        local base = self.pos + (b - 1) * (T + 1)
        for t = 1, T do
            row_x[t] = self.toks[base + t]
            row_y[t] = self.toks[base + t + 1]
        end
        xs[b], ys[b] = row_x, row_y
    end
    self.pos = self.pos + need
    self.calls = self.calls + 1
    return nc.tensor(xs, { dtype = 'i64' }), nc.tensor(ys, { dtype = 'i64' })
end
function Loader:state() return { pos = self.pos, calls = self.calls } end
function Loader:set_state(st) self.pos, self.calls = st.pos, st.calls end
function Loader:close() self.closed = true end

-- ---- tokenizer: token_bytes and hash only ---------------------------------------------------------------
function S.tokenizer(V, bytes)
    local tok = { bos_id = 0 }
    function tok:token_bytes()
        local t = {}
        for i = 1, V do t[i] = bytes and bytes[i] or ((i - 1) == 0 and 0 or 1 + (i - 1) % 3) end
        return nc.tensor(t, { dtype = 'i32' })
    end
    function tok:hash() return 'feedfacecafebeef' end
    function tok:vocab_size() return V end
    return tok
end

function S.tmpdir()
    local d = os.tmpname()
    os.remove(d)
    assert(os.execute("mkdir -p '" .. d .. "'"))
    return d
end

function S.rmtree(d) os.execute("rm -rf '" .. d .. "'") end

-- a file-like sink collecting writes
function S.sink()
    local buf = {}
    return {
        write = function(self, ...) for i = 1, select('#', ...) do buf[#buf + 1] = tostring((select(i, ...))) end return self end,
        flush = function() end,
        text = function() return table.concat(buf) end,
    }
end

-- parameter values as one Lua table of floats (for bitwise comparisons)
function S.flat_params(model)
    local out = {}
    for _, np in ipairs(model:named_parameters()) do
        for _, v in ipairs(np[2]:reshape { -1 }:tolist()) do out[#out + 1] = v end
    end
    return out
end

return S
