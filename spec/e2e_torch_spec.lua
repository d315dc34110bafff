-- spec/e2e_torch_spec.lua — numerics check (d) of design.md: a tiny composite model built from
-- nanochat ops (embedding, rmsnorm, linear, views, RoPE, causal GQA attention, relu^2 MLP, fused
-- cross-entropy with ignore_index, label smoothing and z-loss) against the committed PyTorch
-- fixture spec/fixtures/composite.json (tools/gen_fixture.py: float64 reference on the same
-- float32 weights). Checks logits, loss, the gradient of every weight and a 10-step SGD curve,
-- then the same model written as an nc.nn.Module and reloaded through nc.save/nc.load.
package.path = 'lua/?.lua;lua/?/init.lua;' .. package.path
local nc = require 'nanochat'
local json = require 'dkjson'

-- Tolerances: our f32 kernels vs a float64 reference on identical weights. Observed errors are
-- ~2e-7 on logits of order 1 and ~1e-8 on gradients of order 0.01..0.3 (AVX2 and scalar kernels);
-- the bounds leave ~20x headroom while still catching any wrong term (the z-loss alone moves the
-- loss by ~6e-4, a wrong GQA head mapping moves gradients by ~1e-2).
local LOGITS_ATOL = 5e-6    -- logits, absolute ...
local LOGITS_RTOL = 1e-5    -- ... plus relative to the reference value
local GRAD_ATOL = 5e-7      -- every weight gradient, absolute ...
local GRAD_RTOL = 1e-5      -- ... plus relative
local LOSS_ATOL = 3e-6      -- the scalar loss (about 2.6)
local CURVE_ATOL = 5e-6     -- each of the 10 SGD losses (error compounds a little per step)

local FIXTURE = 'spec/fixtures/composite.json'

local function read_fixture()
    local f = assert(io.open(FIXTURE, 'rb'), 'missing ' .. FIXTURE .. ' (python3 tools/gen_fixture.py --all)')
    local text = f:read('*a')
    f:close()
    local obj, _, err = json.decode(text)
    assert(obj, 'bad fixture JSON: ' .. tostring(err))
    return obj
end

local FX = read_fixture()
local cfg = FX.config
local B, T, V, d, H, Hkv, D = cfg.B, cfg.T, cfg.V, cfg.d, cfg.H, cfg.Hkv, cfg.D
local CE_OPTS = { ignore_index = cfg.ignore_index, label_smoothing = cfg.label_smoothing, z_loss = cfg.z_loss }

local function close(got, want, atol, rtol, what)
    if type(got) == 'table' and got._c then got = got:tolist() end
    assert(#got == #want, string.format('%s: got %d values, want %d', what, #got, #want))
    local worst, wi, worst_abs = -math.huge, 1, 0
    for i = 1, #want do
        local diff = math.abs(got[i] - want[i])
        if diff ~= diff then diff = math.huge end
        local excess = diff - (atol + rtol * math.abs(want[i]))
        if excess > worst then worst, wi, worst_abs = excess, i, diff end
    end
    assert(worst <= 0, string.format('%s: element %d: got %.9g, want %.9g (|diff| %.3g > %.3g)', what, wi,
        got[wi], want[wi], worst_abs, atol + rtol * math.abs(want[wi])))
end

-- fresh leaf tensors holding the fixture weights
local function fixture_weights()
    local w = {}
    for _, name in ipairs(FX.weight_order) do
        local e = FX.weights[name]
        w[name] = nc.tensor(e.data):view(e.shape):contiguous():requires_grad_(true)
    end
    return w
end

local ids = nc.tensor(FX.ids, { dtype = 'i64' })
local targets = nc.tensor(FX.targets, { dtype = 'i64' })

-- the composite of tools/gen_fixture.py, from nanochat ops
local function forward(w)
    local cos, sin = nc.rope_tables(T, D, { base = cfg.rope_base })
    local x = nc.embedding(ids, w.wte)                                  -- (B, T, d)
    local h = nc.rmsnorm(x, nil, cfg.eps)
    local q = nc.linear(h, w.wq):view { B, T, H, D }
    local k = nc.linear(h, w.wk):view { B, T, Hkv, D }
    local v = nc.linear(h, w.wv):view { B, T, Hkv, D }
    q, k = nc.rope(q, cos, sin), nc.rope(k, cos, sin)
    local a = nc.attention(q, k, v, { causal = true, scale = 1 / math.sqrt(D) })   -- (B, T, H, D)
    x = x + nc.linear(a:view { B, T, H * D }, w.wo)
    local m = nc.relu2(nc.linear(nc.rmsnorm(x, nil, cfg.eps), w.w1))  -- (B, T, hidden)
    x = x + nc.linear(m, w.w2)
    local logits = nc.linear(nc.rmsnorm(x, nil, cfg.eps), w.wout)       -- (B, T, V)
    return logits, nc.cross_entropy(logits, targets, CE_OPTS)
end

local function sgd_curve(params_by_name, run)
    local losses = {}
    for step = 1, cfg.steps do
        local loss = run()
        losses[step] = loss:item()
        loss:backward()
        for _, name in ipairs(FX.weight_order) do
            local p = params_by_name[name]
            p:add_scaled_(p.grad, -cfg.lr)
            p.grad = nil
        end
    end
    return losses
end

describe('end to end vs PyTorch (' .. FIXTURE .. ')', function()
    it('the fixture is the documented composite', function()
        assert.are.same({ 2, 7, 11, 16, 4, 2, 4, 32 }, { B, T, V, d, H, Hkv, D, cfg.hidden })
        assert.are.equal(cfg.steps, #FX.losses)
        assert.are.equal(FX.loss, FX.losses[1])
        assert.are.equal(-1, FX.targets[1][4])
        for i = 2, #FX.losses do assert.is_true(FX.losses[i] < FX.losses[i - 1], 'the reference curve should descend') end
    end)

    local w, logits, loss
    setup(function()
        w = fixture_weights()
    end)

    it('logits match', function()
        logits, loss = forward(w)
        assert.are.same(FX.logits.shape, logits:shape())
        close(logits, FX.logits.data, LOGITS_ATOL, LOGITS_RTOL, 'logits')
    end)

    it('loss matches', function()
        if not loss then logits, loss = forward(w) end
        assert.are.same({}, loss:shape())
        close({ loss:item() }, { FX.loss }, LOSS_ATOL, 0, 'loss')
    end)

    describe('gradient of', function()
        local done = false
        local function backward_once()
            if done then return end
            if not loss then logits, loss = forward(w) end
            loss:backward()
            done = true
        end
        for _, name in ipairs(FX.weight_order) do
            it(name, function()
                backward_once()
                local g = w[name].grad
                assert.is_truthy(g, 'no gradient reached ' .. name)
                assert.are.same(FX.grads[name].shape, g:shape())
                close(g, FX.grads[name].data, GRAD_ATOL, GRAD_RTOL, 'grad ' .. name)
            end)
        end
    end)

    it('10-step SGD loss curve matches', function()
        local ws = fixture_weights()
        local losses = sgd_curve(ws, function() local _, l = forward(ws) return l end)
        close(losses, FX.losses, CURVE_ATOL, 0, 'sgd loss curve')
    end)

    it('the same model as an nc.nn.Module, reloaded through nc.save/nc.load, matches too', function()
        local Tiny = nc.nn.Module:extend('Tiny')
        function Tiny:init()
            self.wte = nc.nn.Embedding(V, d)
            self.wq = nc.nn.Linear(d, H * D, { bias = false })
            self.wk = nc.nn.Linear(d, Hkv * D, { bias = false })
            self.wv = nc.nn.Linear(d, Hkv * D, { bias = false })
            self.wo = nc.nn.Linear(H * D, d, { bias = false })
            self.w1 = nc.nn.Linear(d, cfg.hidden, { bias = false })
            self.w2 = nc.nn.Linear(cfg.hidden, d, { bias = false })
            self.norm = nc.nn.RMSNorm(d, { weight = false, eps = cfg.eps })
            self.wout = nc.nn.Linear(d, V, { bias = false })
            self.cos, self.sin = nc.rope_tables(T, D, { base = cfg.rope_base })   -- plain state
        end
        function Tiny:forward(idx, tgt)
            local b, t = idx:size(0), idx:size(1)
            local x = self.wte(idx)
            local h = self.norm(x)
            local q = nc.rope(self.wq(h):view { b, t, H, D }, self.cos, self.sin)
            local k = nc.rope(self.wk(h):view { b, t, Hkv, D }, self.cos, self.sin)
            local v = self.wv(h):view { b, t, Hkv, D }
            x = x + self.wo(nc.attention(q, k, v, { causal = true }):view { b, t, H * D })
            x = x + self.w2(nc.relu2(self.w1(self.norm(x))))
            return nc.cross_entropy(self.wout(self.norm(x)), tgt, CE_OPTS)
        end

        local model = Tiny()
        assert.are.equal(V * d + 2 * H * D * d + 2 * Hkv * D * d + 2 * cfg.hidden * d + V * d, model:num_params())
        local sd = {}
        for _, name in ipairs(FX.weight_order) do
            local e = FX.weights[name]
            sd[name .. '.weight'] = nc.tensor(e.data):view(e.shape)
        end
        local path = os.tmpname()
        nc.save(path, sd, { source = FIXTURE })
        local loaded = nc.load(path)
        os.remove(path)
        model:load_state_dict(loaded)

        local l = model(ids, targets)
        close({ l:item() }, { FX.loss }, LOSS_ATOL, 0, 'module loss')
        l:backward()
        for _, nv in ipairs(model:named_parameters()) do
            local name = nv[1]:match('^(.-)%.weight$')
            close(nv[2].grad, FX.grads[name].data, GRAD_ATOL, GRAD_RTOL, 'module grad ' .. nv[1])
        end
        model:zero_grad()

        local by_name = {}
        for _, name in ipairs(FX.weight_order) do by_name[name] = model[name].weight end
        local losses = sgd_curve(by_name, function() return model(ids, targets) end)
        close(losses, FX.losses, CURVE_ATOL, 0, 'module sgd loss curve')
    end)
end)
