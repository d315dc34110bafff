-- spec/models/gpt_spec.lua — nc.models.gpt and nc.layers.BitLinear: config checks, shapes, parameter
-- roles and counts against the closed form, the FLOP formula, seeded determinism, the loss at
-- init, a descending SGD curve, finite-difference gradients of the whole model (fp32 variant), the
-- straight-through gradient (ternary), KV-cache decoding against the full forward, and a
-- save/load round trip.
package.path = 'lua/?.lua;lua/?/init.lua;' .. package.path
local nc = require 'nanochat'
package.path = 'spec/helpers/?.lua;' .. package.path
local Fx = require 'model_fixtures'
local gpt = nc.models.gpt
local BitLinear = nc.layers.BitLinear

-- Tolerances (named)
local INIT_LOSS_ATOL = 0.02   -- loss at init vs ln(V): the head is N(0, 0.001), logits ~ 1e-2
local CACHE_ATOL = 1e-5       -- cached decoding vs full forward logits (f32, same kernels)
local FD_H = 1e-2             -- central-difference step on weights of std ~0.3
local FD_ATOL = 2e-4          -- f32 loss noise (~5e-7) / (2 h) plus O(h^2) truncation
local FD_RTOL = 3e-2
local F32_ATOL = 1e-5         -- BitLinear vs its formula written with the ops

local micro = Fx.micro

local batch = Fx.batch

local function max_abs_diff(a, b) return (a - b):abs():max():item() end

local function same_bits(a, b)
    local la, lb = a:tolist(), b:tolist()
    if #la ~= #lb then return false end
    for i = 1, #la do if la[i] ~= lb[i] then return false end end
    return true
end

describe('nc.models.gpt config', function()
    it('fills defaults and rejects bad fields with clear errors', function()
        local c = gpt.config { vocab_size = 64, d_model = 32, n_layer = 1, n_head = 4 }
        assert.are.equal(4, c.n_kv_head)
        assert.are.equal(8, c.head_dim)
        assert.are.equal(128, c.d_ff)
        assert.is_true(c.ternary)
        assert.are.equal(64 * math.ceil(8 * 32 / 3 / 64), gpt.config { vocab_size = 64, d_model = 32, n_layer = 1,
            n_head = 4, mlp = 'swiglu' }.d_ff)
        assert.has_error(function() gpt.config { vocab_size = 64, d_model = 32, n_layer = 1, n_head = 4, bogus = 1 } end,
            'gpt: unknown cfg field bogus')
        assert.has_error(function() gpt.config { vocab_size = 64, d_model = 32, n_layer = 1, n_head = 4, n_kv_head = 3 } end,
            'gpt: n_head 4 must be a multiple of n_kv_head 3 (GQA)')
        assert.has_error(function() gpt.config { vocab_size = 64, d_model = 32, n_layer = 1, n_head = 4, mlp = 'gelu' } end,
            "gpt: cfg.mlp must be 'relu2' or 'swiglu', got gelu")
        assert.has_error(function() gpt.config { vocab_size = 64, d_model = 30, n_layer = 1, n_head = 4 } end)
    end)

    it('the committed presets load and have the documented sizes', function()
        local sizes = { micro = 38912, tiny = 8519680, small = 31457280 }
        for name, total in pairs(sizes) do
            assert.are.equal(total, gpt.count_params(nc.models.config(name)).total, name)
        end
        assert.are.equal(8192, nc.models.config('tiny').vocab_size)
        assert.are.equal(99, nc.models.config('tiny', { seed = 99 }).seed)
    end)
end)

describe('nc.models.gpt model', function()
    local cfg = micro()
    local model = gpt.new(cfg)

    it('forward gives logits (B, T, V) and, with targets, a scalar loss and the logits', function()
        local x, y = batch(2, 9, cfg.vocab_size)
        local logits = model:forward(x)
        assert.are.same({ 2, 9, cfg.vocab_size }, logits:shape())
        local loss, l2 = model:forward(x, y)
        assert.are.same({}, loss:shape())
        assert.are.same({ 2, 9, cfg.vocab_size }, l2:shape())
        assert.has_error(function() model:forward(nc.zeros { 2, 40 }:to('i64')) end)   -- > seq_len positions
        assert.has_error(function() model:forward(nc.zeros { 2, 4 }) end, 'gpt: forward: expected i64/i32 token ids, got f32')
    end)

    it('names every parameter with a role; block matrices are "matrix"', function()
        local roles = model:param_roles()
        local n = 0
        for _, nv in ipairs(model:named_parameters()) do
            n = n + 1
            local name, r = nv[1], roles[nv[1]]
            if name == 'wte.weight' then assert.are.equal('embedding', r)
            elseif name == 'lm_head.weight' then assert.are.equal('head', r)
            else
                assert.are.equal('matrix', r, name)
                assert.are.equal(2, nv[2]:dim())
            end
        end
        assert.are.equal(2 + cfg.n_layer * 6, n)
        local tied = gpt.new(micro { tie_embeddings = true, subln = true, mlp = 'swiglu' })
        local tr = tied:param_roles()
        assert.is_nil(tr['lm_head.weight'])
        assert.are.equal('norm', tr['h.0.attn.sub_norm.weight'])
        assert.are.equal('norm', tr['h.1.mlp.sub_norm.weight'])
        assert.are.equal('matrix', tr['h.1.mlp.w3.weight'])
    end)

    it('counts parameters as the closed form says, for every architecture option', function()
        local variants = {
            {}, { tie_embeddings = true }, { mlp = 'swiglu' }, { subln = true }, { n_kv_head = 4 },
            { mlp = 'swiglu', subln = true, tie_embeddings = true, qk_norm = true, d_ff = 96 },
        }
        for i, over in ipairs(variants) do
            local c = micro(over)
            local m = gpt.new(c)
            local want = gpt.count_params(c)
            local got = m:param_counts()
            for _, k in ipairs { 'total', 'embedding', 'head', 'matrix', 'norm', 'matmul' } do
                assert.are.equal(want[k], got[k], 'variant ' .. i .. ' ' .. k)
            end
            assert.are.equal(want.total, m:num_params())
            -- spelled out once more for the default: V d (wte) + V d (head) + L (2 d^2 + 2 d dkv + 2 d f)
            if i == 1 then
                local V, d, L, f, dkv = c.vocab_size, c.d_model, c.n_layer, c.d_ff, c.n_kv_head * c.d_model / c.n_head
                assert.are.equal(2 * V * d + L * (2 * d * d + 2 * d * dkv + 2 * d * f), m:num_params())
            end
        end
    end)

    it('flops_per_token = 6 N + 6 L d T with N = the matmul parameters (block matrices + head)', function()
        local c = cfg
        local V, d, L, f, dkv = c.vocab_size, c.d_model, c.n_layer, c.d_ff, c.n_kv_head * c.d_model / c.n_head
        local N = V * d + L * (2 * d * d + 2 * d * dkv + 2 * d * f)
        assert.are.equal(6 * N + 6 * L * d * 17, model:flops_per_token(17))
        assert.are.equal(6 * N + 6 * L * d * c.seq_len, model:flops_per_token())
        local tied = gpt.new(micro { tie_embeddings = true })   -- the shared matrix counts once, as the head
        assert.are.equal(6 * N + 6 * L * d * 17, tied:flops_per_token(17))
    end)

    it('is deterministic from cfg.seed and leaves the global generator alone', function()
        local before = nc.default_generator:get_state()
        local a, b, c = gpt.new(micro { seed = 5 }), gpt.new(micro { seed = 5 }), gpt.new(micro { seed = 6 })
        assert.are.same(before, nc.default_generator:get_state())
        local pa, pb, pc = a:named_parameters(), b:named_parameters(), c:named_parameters()
        for i = 1, #pa do
            assert.is_true(same_bits(pa[i][2], pb[i][2]), pa[i][1])
            assert.is_false(same_bits(pa[i][2], pc[i][2]), pa[i][1])
        end
    end)

    it('initializes as documented (std per role)', function()
        local m = gpt.new(micro { n_layer = 8, d_model = 64, d_ff = 256, vocab_size = 512 })
        local function std(t) return math.sqrt((t * t):mean():item()) end
        assert.is_true(math.abs(std(m.wte.weight) - 1) < 0.05)
        assert.is_true(math.abs(std(m.lm_head.weight) - 0.001) < 1e-4)
        assert.is_true(math.abs(std(m.h[1].attn.wq.weight) - 0.02) < 2e-3)
        assert.is_true(math.abs(std(m.h[1].mlp.w2.weight) - 0.02 / 4) < 5e-4)
    end)

    it('starts at loss ~ ln(V)', function()
        local x, y = batch(4, 32, cfg.vocab_size)
        local loss = nc.no_grad(function() return (model:forward(x, y)) end)
        assert.is_true(math.abs(loss:item() - math.log(cfg.vocab_size)) < INIT_LOSS_ATOL,
            string.format('loss %.4f vs ln V %.4f', loss:item(), math.log(cfg.vocab_size)))
    end)

    it('learns a repeated batch: 20 plain SGD steps lower the loss (ternary)', function()
        local m = gpt.new(micro { seed = 2 })
        local x, y = batch(2, 16, cfg.vocab_size, 3)
        local lr = { matrix = 0.5, embedding = 0.5, head = 0.5 }
        local roles = m:param_roles()
        local losses = {}
        for step = 1, 20 do
            local loss = m:forward(x, y)
            losses[step] = loss:item()
            loss:backward()
            for _, nv in ipairs(m:named_parameters()) do
                local p = nv[2]
                if p.grad then
                    -- normalized SGD per tensor (latent ternary weights need steps of order gamma)
                    local g = p.grad
                    local gn = math.sqrt((g * g):sum():item()) + 1e-12
                    p:add_scaled_(g, -lr[roles[nv[1]]] * math.sqrt(p:numel()) * 0.02 / gn)
                end
            end
            m:zero_grad()
        end
        assert.is_true(losses[20] < losses[1] - 1.0, string.format('loss %.4f -> %.4f', losses[1], losses[20]))
    end)

    it('round-trips through nc.save(model:state_dict()) / nc.load', function()
        local x = batch(2, 8, cfg.vocab_size)
        local want = model:forward(x)
        local path = os.tmpname()
        nc.save(path, model:state_dict())
        local other = gpt.new(micro { seed = 77 })
        other:load_state_dict(nc.load(path))
        os.remove(path)
        assert.is_true(same_bits(want, other:forward(x)))
        local names = {}
        for name in pairs(model:state_dict()) do names[#names + 1] = name end
        assert.are.equal(#model:named_parameters(), #names)   -- RoPE tables are not saved
    end)
end)

describe('finite-difference gradients of the whole model (ternary = false)', function()
    -- every architecture path at once: swiglu and relu2 blocks, SubLN gains, QK-norm, softcap, GQA;
    -- larger init so every gradient is well above the f32 noise floor
    local variants = {
        { name = 'relu2 + qk_norm + softcap', over = { qk_norm = true, logit_softcap = 3 } },
        { name = 'swiglu + subln + tied', over = { mlp = 'swiglu', subln = true, tie_embeddings = true, d_ff = 64 } },
    }
    for _, v in ipairs(variants) do
        it(v.name, function()
            -- (head_matmul = 'fp32': finite differences need the f32 head in the training step too)
            local over = { ternary = false, init_std = 0.3, head_std = 0.3, embed_std = 1, seed = 11, seq_len = 8,
                           head_matmul = 'fp32' }
            for k, val in pairs(v.over) do over[k] = val end
            local m = gpt.new(micro(over))
            for _, nv in ipairs(m:named_parameters()) do   -- gains away from 1 so they matter
                if nv[2]:dim() == 1 then nv[2]:copy_(nc.rand(nv[2]:shape(), { lo = 0.5, hi = 1.5, generator = nc.generator(3) })) end
            end
            local x, y = batch(2, 8, 256, 21)
            local function loss_of() return nc.no_grad(function() return (m:forward(x, y, { z_loss = 1e-3 })):item() end) end
            local loss = m:forward(x, y, { z_loss = 1e-3 })
            loss:backward()
            local checked = 0
            for _, nv in ipairs(m:named_parameters()) do
                local name, p = nv[1], nv[2]
                local g = p.grad:reshape { -1 }
                -- the largest-|grad| element and the middle element of each tensor
                local _, imax = g:abs():max(0)
                local picks = { imax:item(), math.floor(p:numel() / 2) + 1 }
                local flat = p:reshape { -1 }
                for _, i in ipairs(picks) do
                    local w0 = flat:get(i)
                    flat:set(i, w0 + FD_H)
                    local lp = loss_of()
                    flat:set(i, w0 - FD_H)
                    local lm = loss_of()
                    flat:set(i, w0)
                    local fd = (lp - lm) / (2 * FD_H)
                    local an = g:get(i)
                    assert(math.abs(fd - an) <= FD_ATOL + FD_RTOL * math.abs(an),
                        string.format('%s[%d]: analytic %.6g, finite difference %.6g', name, i, an, fd))
                    checked = checked + 1
                end
            end
            assert.is_true(checked >= 2 * #m:named_parameters())
        end)
    end
end)

describe('straight-through estimator (ternary = true)', function()
    it('dL/dW (latent) equals dL/dWq of the same fake-quantized model, bitwise', function()
        -- matmul = 'fp32': the composite path, whose Qw(W) goes through nc.quant_weight (swapped below)
        local m = gpt.new(micro { seed = 4, init_std = 0.1, matmul = 'fp32', head_matmul = 'fp32' })
        local x, y = batch(2, 12, 256, 5)
        local loss = m:forward(x, y)
        loss:backward()
        -- the same forward with every quantized weight a leaf of its own: swap nc.quant_weight
        local leaves, orig = {}, nc.quant_weight
        for _, nm in ipairs(m:named_modules()) do
            local mod = nm[2]
            if getmetatable(mod) == BitLinear then
                local wq = nc.no_grad(function() return (orig(mod.weight)) end)
                leaves[mod.weight] = { name = nm[1], wq = wq:detach():requires_grad_(true) }
            end
        end
        nc.quant_weight = function(w, opts)
            local e = leaves[w]
            if e then return e.wq, nil end
            return orig(w, opts)
        end
        local ok, err = pcall(function()
            local loss2 = m:forward(x, y)
            assert.are.equal(loss:item(), loss2:item())
            loss2:backward()
        end)
        nc.quant_weight = orig
        assert(ok, err)
        local n = 0
        for w, e in pairs(leaves) do
            assert.is_true(same_bits(w.grad, e.wq.grad), e.name)
            n = n + 1
        end
        assert.are.equal(6 * 2, n)
    end)
end)

describe('nc.layers.BitLinear', function()
    it('computes Qa(rmsnorm(x)) Qw(W)^T with ternary codes and one gamma per tensor or group', function()
        local layer = BitLinear(24, 8, { norm = true, generator = nc.generator(1), std = 0.5 })
        local x = nc.randn({ 3, 5, 24 }, { generator = nc.generator(2) })
        local want = nc.linear(nc.quant_act(nc.rmsnorm(x, nil, 1e-6)), (nc.quant_weight(layer.weight)))
        assert.is_true(max_abs_diff(layer(x), want) <= F32_ATOL)
        local codes, gamma = layer:ternary_weight()
        assert.are.equal(1, gamma:numel())
        for _, c in ipairs(codes:tolist()) do assert.is_true(c == -1 or c == 0 or c == 1) end
        local grouped = BitLinear(24, 8, { group = 24, generator = nc.generator(1) })
        local gc, gg = grouped:ternary_weight()
        assert.are.equal(8, gg:numel())
        for _, c in ipairs(gc:tolist()) do assert.is_true(c == -1 or c == 0 or c == 1) end
        assert.has_error(function() BitLinear(24, 8, { group = 7 }) end, 'BitLinear: quant group 7 does not divide the 8 x 24 weight')
        local plain = BitLinear(24, 8, { ternary = false, generator = nc.generator(1) })
        assert.is_true(max_abs_diff(plain(x), nc.linear(x, plain.weight)) == 0)
    end)

    it('a per-group model trains and decodes like the per-tensor one', function()
        local m = gpt.new(micro { quant_group = 32 })
        local x, y = batch(1, 6, 256)
        local loss = m:forward(x, y)
        loss:backward()
        assert.is_truthy(m.h[1].attn.wq.weight.grad)
    end)
end)

describe('KV cache', function()
    local cases = {
        { name = 'ternary', over = { head_std = 0.05 } },
        { name = 'fp32, qk_norm, swiglu, subln, softcap', over = { ternary = false, qk_norm = true, mlp = 'swiglu',
                                                                   subln = true, logit_softcap = 5, head_std = 0.05 } },
    }
    for _, case in ipairs(cases) do
        it('prefill + one token at a time equals the full forward at every position (' .. case.name .. ')', function()
            local m = gpt.new(micro(case.over))
            local B, T = 2, 20
            local x = batch(B, T, 256, 9)
            local full = nc.no_grad(function() return m:forward(x) end)
            for _, chunks in ipairs { { 1 }, { 7, 1 }, { 5, 3 } } do
                local cache = m:new_cache(B, 24)
                local pos, k = 0, 1
                while pos < T do
                    local len = math.min(chunks[math.min(k, #chunks)], T - pos)
                    local got = m:forward_cached(x:narrow(1, pos, len), cache)
                    local err = max_abs_diff(got, full:narrow(1, pos, len))
                    assert(err <= CACHE_ATOL, string.format('positions %d..%d: max |diff| %.3g', pos, pos + len - 1, err))
                    pos, k = pos + len, k + 1
                end
                assert.are.equal(T, cache.pos)
            end
        end)
    end

    it('rejects overflow and mismatched batches; reset() reuses the buffers', function()
        local m = gpt.new(micro { head_matmul = 'fp32' })   -- m:forward below is a training-mode forward
        local cache = m:new_cache(1, 4)
        local x = batch(1, 4, 256)
        local a = m:forward_cached(x, cache)
        assert.has_error(function() m:forward_cached(x:narrow(1, 0, 1), cache) end,
            'gpt: forward_cached: cache full (4 + 1 positions > max_T 4)')
        assert.has_error(function() m:forward_cached(batch(2, 1, 256), cache:reset()) end,
            'gpt: forward_cached: idx has B = 2, the cache 1')
        assert.is_true(same_bits(a, m:forward_cached(x, cache:reset())))
        assert.are.equal(2 * 2 * 4 * 2 * 8 * 4, cache:bytes())
        -- the cache snapshots Qw(W) at first use; reset() re-takes it after a weight change
        local w = m.h[1].mlp.w1.weight
        nc.no_grad(function() w:copy_(w * -1) end)
        local stale = m:forward_cached(x:narrow(1, 0, 1), m:new_cache(1, 4))
        assert.is_false(same_bits(a:narrow(1, 0, 1), stale))
        assert.is_true(max_abs_diff(m:forward(x), m:forward_cached(x, cache:reset())) <= CACHE_ATOL)
        local long = m:new_cache(1, 40)   -- beyond seq_len: its own RoPE tables
        assert.are.same({ 40, 4 }, long.cos:shape())
    end)
end)
