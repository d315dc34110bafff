-- recipes/quickstart.lua — the foundation end to end: a byte-level transformer (embedding,
-- RMSNorm, RoPE, causal GQA attention, ReLU² MLP, cross-entropy) trained with autograd on a
-- small built-in Rust text, then sampled greedily. Checkpoints are safetensors.
--
-- Target hardware: any x86-64 CPU (2 cores is plenty). Expected runtime: ~1 minute.
-- Overrides: ./nanochat recipes/quickstart.lua steps=300 lr=3e-3 d=64 layers=2 seq=64 batch=16
--            seed=1 out=runs/quickstart threads=2
-- (The ternary GPT recipes, recipes/tiny.lua and recipes/e3.lua, come with the training issue.)
local nc = require 'nanochat'

-- ---- settings: defaults, overridden by key=value arguments ---------------------------------
local cfg = {
    steps = 300, lr = 3e-3, d = 64, heads = 4, kv_heads = 2, layers = 2, seq = 64, batch = 16,
    seed = 1, out = 'runs/quickstart', threads = 0, sample = 160,
}
nc.cli.settings(cfg, 'quickstart')   -- key=value arguments (unknown keys / wrong types are errors)
if cfg.threads > 0 then nc.set_num_threads(cfg.threads) end
nc.manual_seed(cfg.seed)

-- ---- data: bytes of a built-in Rust snippet -----------------------------------------------
local text = [[
use std::collections::HashMap;

/// Counts how often each word occurs in the text.
fn word_counts(text: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for word in text.split_whitespace() {
        *counts.entry(word.to_string()).or_insert(0) += 1;
    }
    counts
}

/// Returns the largest element of the slice, if any.
fn largest(values: &[i32]) -> Option<i32> {
    let mut best = None;
    for &v in values {
        best = match best {
            None => Some(v),
            Some(b) if v > b => Some(v),
            keep => keep,
        };
    }
    best
}

fn main() {
    let counts = word_counts("the quick brown fox jumps over the lazy dog the end");
    println!("{:?}", counts.get("the"));
    let values = vec![3, 1, 4, 1, 5, 9, 2, 6];
    println!("{:?}", largest(&values));
}
]]
local V = 128
local bytes = {}
for i = 1, #text do bytes[i] = text:byte(i) % V end
local data = nc.tensor(bytes, { dtype = 'i64' })

local gen = nc.generator(cfg.seed + 1)
local function batch()
    local B, T = cfg.batch, cfg.seq
    local starts = nc.rand({ B }, { generator = gen, lo = 0, hi = #bytes - T - 1 }):tolist()
    local idx, nxt = {}, {}
    for b = 1, B do
        local s = math.floor(starts[b])
        for t = 0, T - 1 do idx[#idx + 1] = s + t; nxt[#nxt + 1] = s + t + 1 end
    end
    local x = data:index_select(0, nc.tensor(idx, { dtype = 'i64' })):view(B, T)
    local y = data:index_select(0, nc.tensor(nxt, { dtype = 'i64' })):view(B, T)
    return x, y
end

-- ---- model ----------------------------------------------------------------------------------
local d, H, Hkv, L = cfg.d, cfg.heads, cfg.kv_heads, cfg.layers
local D = math.floor(d / H)
local params, names = {}, {}
local function param(name, shape, std)
    local t = nc.randn(shape, { std = std, requires_grad = true })
    params[name] = t
    names[#names + 1] = name
    return t
end
param('wte', { V, d }, 1.0)
for l = 1, L do
    param('h' .. l .. '.wq', { H * D, d }, d ^ -0.5)
    param('h' .. l .. '.wk', { Hkv * D, d }, d ^ -0.5)
    param('h' .. l .. '.wv', { Hkv * D, d }, d ^ -0.5)
    param('h' .. l .. '.wo', { d, H * D }, (H * D) ^ -0.5 / math.sqrt(2 * L))
    param('h' .. l .. '.w1', { 4 * d, d }, d ^ -0.5)
    param('h' .. l .. '.w2', { d, 4 * d }, (4 * d) ^ -0.5 / math.sqrt(2 * L))
end
param('lm_head', { V, d }, d ^ -0.5)

local function forward(x)
    local B, T = x:size(0), x:size(1)
    local cos, sin = nc.rope_tables(T, D, { base = 10000 })
    local h = nc.embedding(x, params.wte)
    for l = 1, L do
        local p = 'h' .. l .. '.'
        local a = nc.rmsnorm(h)
        local q = nc.rope(nc.linear(a, params[p .. 'wq']):view(B, T, H, D), cos, sin)
        local k = nc.rope(nc.linear(a, params[p .. 'wk']):view(B, T, Hkv, D), cos, sin)
        local v = nc.linear(a, params[p .. 'wv']):view(B, T, Hkv, D)
        local o = nc.attention(q, k, v, { causal = true }):view(B, T, H * D)
        h = h + nc.linear(o, params[p .. 'wo'])
        h = h + nc.linear(nc.linear(nc.rmsnorm(h), params[p .. 'w1']):relu2(), params[p .. 'w2'])
    end
    return nc.linear(nc.rmsnorm(h), params.lm_head)
end

-- ---- optimizer: Adam written with tensor ops (the fused C optimizers arrive with training) ----
local state = {}
local function adam_step(lr, t)
    local b1, b2, eps = 0.9, 0.95, 1e-8
    nc.no_grad(function()
        for _, name in ipairs(names) do
            local p = params[name]
            local g = p.grad
            local s = state[name] or { m = nc.zeros_like(p), v = nc.zeros_like(p) }
            state[name] = s
            s.m = s.m * b1 + g * (1 - b1)
            s.v = s.v * b2 + g:square() * (1 - b2)
            local mhat = s.m / (1 - b1 ^ t)
            local vhat = s.v / (1 - b2 ^ t)
            p:add_scaled_(mhat / (vhat:sqrt() + eps), -lr)
        end
    end)
end

-- ---- train ----------------------------------------------------------------------------------
local nparams = 0
for _, name in ipairs(names) do nparams = nparams + params[name]:numel() end
print(string.format('quickstart: %d params, %d layers, d=%d, %d heads (%d kv), seq %d, batch %d, %d threads, kernel %s',
    nparams, L, d, H, Hkv, cfg.seq, cfg.batch, nc.get_num_threads(), nc.cpu_kernel()))
local t0 = os.time()
local first, last
for step = 1, cfg.steps do
    local x, y = batch()
    local loss = nc.cross_entropy(forward(x), y)
    loss:backward()
    local lr = cfg.lr * math.min(1, step / 20)
    adam_step(lr, step)
    nc.zero_grad((function() local l = {} for _, n in ipairs(names) do l[#l + 1] = params[n] end return l end)())
    local lv = loss:item()
    first = first or lv
    last = lv
    if step == 1 or step % 25 == 0 or step == cfg.steps then
        print(string.format('step %4d  loss %.4f  lr %.2e', step, lv, lr))
    end
end
print(string.format('loss %.3f -> %.3f in %d s', first, last, os.time() - t0))

-- ---- sample greedily from a prompt ------------------------------------------------------------
local prompt = 'fn main() {'
local ids = {}
for i = 1, #prompt do ids[i] = prompt:byte(i) end
nc.no_grad(function()
    for _ = 1, cfg.sample do
        local ctx = {}
        for i = math.max(1, #ids - cfg.seq + 1), #ids do ctx[#ctx + 1] = ids[i] end
        local logits = forward(nc.tensor({ ctx }, { dtype = 'i64' }))
        local last_row = logits:select(0, 0):select(0, -1)
        local _, best = last_row:max(0)
        ids[#ids + 1] = best:item()
    end
end)
local out = {}
for i = 1, #ids do out[i] = string.char(ids[i]) end
print('--- sample ---\n' .. table.concat(out) .. '\n--------------')

-- ---- save ------------------------------------------------------------------------------------
os.execute('mkdir -p ' .. cfg.out)
nc.save(cfg.out .. '/model.safetensors', params, { recipe = 'quickstart', steps = tostring(cfg.steps) })
print('saved ' .. cfg.out .. '/model.safetensors')
