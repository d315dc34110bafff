-- spec/looplm_spec.lua — nc.looplm (LoopLM / Ouro, algorithms.md §11) and the per-token
-- cross-entropy backward it needs: config errors, the §11.5 exit-distribution numbers, T = 1
-- against the plain model, q-exit selection, finite-difference gradients of the exit objective
-- and of the per-token CE, KV-cached decoding (q = 1 and early exit) against the full forward,
-- the B > 1 rule, stage II, the Collider hook, nc.generate, roles/counts, and a training curve.
package.path = 'lua/?.lua;lua/?/init.lua;' .. package.path
local nc = require 'nanochat'
package.path = 'spec/helpers/?.lua;' .. package.path
local Fx = require 'model_fixtures'
local L = nc.looplm
local gpt = nc.models.gpt

-- Tolerances (named)
local F32_ATOL = 1e-6        -- f32 values of order 1 vs a float64 reference
local GRAD_ATOL = 1e-5       -- f32 autograd gradient vs float64 finite differences of the reference
local CACHE_ATOL = 1e-5      -- cached decoding vs full-forward logits (same kernels, other GEMM shapes)
local T1_ATOL = 1e-6         -- T = 1 loss vs the plain model's mean CE (f32 sums in another order)
local FD_H = 1e-4            -- central-difference step for the float64 references

local function loop_cfg(over, loop)
    local cfg = nc.models.config('micro')
    cfg.n_layer = 3
    cfg.loop = loop or { prelude = 1, shared = 1, coda = 1, T = 3, beta = 0.1 }
    -- the f32 head in training-mode forwards too: these specs compare them bitwise with
    -- no_grad / cached ones (head_matmul = 'auto' runs it in bf16 during training steps)
    cfg.head_matmul = 'fp32'
    for k, v in pairs(over or {}) do cfg[k] = v end
    return cfg
end

local batch = Fx.batch

local function maxdiff(a, b) return (a - b):abs():max():item() end

local function sig(z) return 1 / (1 + math.exp(-z)) end

describe('nc.looplm config', function()
    it('fills defaults and validates against n_layer', function()
        local c = L.config({ prelude = 1, shared = 2, coda = 1, T = 3, beta = 0.05 }, { n_layer = 4 })
        assert.are.equal(1.0, c.exit_q)
        assert.are.equal(1, c.stage)
        local d = L.config({}, { n_layer = 5 })
        assert.are.same({ 0, 5, 0, 4 }, { d.prelude, d.shared, d.coda, d.T })
        local e3 = dofile('configs/models/e3.lua')
        local ce = L.config(e3.loop, e3)
        assert.are.equal(10, L.n_slots(ce))
    end)

    it('rejects bad configs with clear errors', function()
        assert.has_error(function() gpt.config(loop_cfg({ n_layer = 4 })) end,
            'looplm: cfg.n_layer (4) must equal loop.prelude + loop.shared + loop.coda = 1 + 1 + 1')
        assert.has_error(function() gpt.config(loop_cfg({}, { shared = 3, T = 0 })) end,
            'looplm: cfg.loop.T must be an integer >= 1, got 0')
        assert.has_error(function() gpt.config(loop_cfg({}, { shared = 3, exit_q = 1.5 })) end,
            'looplm: cfg.loop.exit_q must be a number in [0, 1], got 1.5')
        assert.has_error(function() gpt.config(loop_cfg({}, { shared = 3, stage = 3 })) end,
            'looplm: cfg.loop.stage must be 1 or 2, got 3')
        assert.has_error(function() gpt.config(loop_cfg({}, { shared = 3, beta = -1 })) end,
            'looplm: cfg.loop.beta must be a number >= 0, got -1')
        assert.has_error(function() gpt.config(loop_cfg({}, { shared = 3, loops = 2 })) end,
            'looplm: unknown cfg.loop field loops')
        assert.has_error(function() gpt.config(loop_cfg({}, { prelude = -1, shared = 4 })) end,
            'looplm: cfg.loop.prelude must be an integer >= 0, got -1')
        local m = gpt.new(loop_cfg())
        assert.has_error(function() m:new_cache(1, 8, { exit_q = 2 }) end,
            'gpt: new_cache: exit_q must be a number in [0, 1], got 2')
    end)
end)

describe('nc.looplm exit distribution (§11.5)', function()
    it('lambda = (0.2, 0.5, 1.0) -> p = (0.2, 0.4, 0.4), depth 2.2, sum 1', function()
        local p, depth = L.exit_distribution { 0.2, 0.5, 1.0 }
        local want = { 0.2, 0.4, 0.4 }
        for t = 1, 3 do assert(math.abs(p[t] - want[t]) < 1e-15, 'p ' .. t) end
        assert(math.abs(depth - 2.2) < 1e-15, 'depth ' .. depth)
        assert.are.equal(1, p[1] + p[2] + p[3])
        -- the tensor form (gate logits z = logit(lambda); lambda_T is never used)
        local zs = { nc.tensor { math.log(0.2 / 0.8) }, nc.tensor { 0.0 } }
        local pt = L.exit_probs(zs, 3)
        local s = 0
        for t = 1, 3 do
            assert(math.abs(pt[t]:item() - want[t]) < F32_ATOL, 'tensor p ' .. t)
            s = s + pt[t]:item()
        end
        assert(math.abs(s - 1) < F32_ATOL)
    end)

    it('q = 1 selects T for every token and q = 0 selects t = 1', function()
        local g = nc.generator(3)
        for _ = 1, 50 do
            local lam = nc.rand({ 4 }, { generator = g }):tolist()
            lam[1] = lam[1] < 0.1 and 1.0 or lam[1]      -- include a certain exit at loop 1
            local p = L.exit_distribution(lam)
            assert.are.equal(4, L.q_exit(p, 1))
            assert.are.equal(1, L.q_exit(p, 0))
        end
        assert.are.equal(2, L.q_exit({ 0.2, 0.4, 0.4 }, 0.5))
        assert.are.equal(3, L.q_exit({ 0.2, 0.4, 0.4 }, 0.7))
    end)

    it('gradient of sum_t p(t) CE_t - beta H(p) w.r.t. the gate logits matches finite differences', function()
        local T, N, beta = 4, 5, 0.3
        local g = nc.generator(5)
        local zv, cev = {}, {}
        for t = 1, T - 1 do zv[t] = nc.randn({ N }, { generator = g, std = 1.5 }):tolist() end
        for t = 1, T do cev[t] = nc.rand({ N }, { generator = g, lo = 0.5, hi = 4 }):tolist() end
        local valid = { 1, 1, 0, 1, 1 }
        -- float64 reference: mean over valid tokens of sum_t p (CE + beta log p)
        local function ref(z)
            local tot, cnt = 0, 0
            for i = 1, N do
                if valid[i] == 1 then
                    local lam = {}
                    for t = 1, T - 1 do lam[t] = sig(z[t][i]) end
                    lam[T] = 1
                    local p = L.exit_distribution(lam)
                    for t = 1, T do tot = tot + p[t] * (cev[t][i] + beta * math.log(p[t])) end
                    cnt = cnt + 1
                end
            end
            return tot / cnt
        end
        local zs, ces = {}, {}
        for t = 1, T - 1 do zs[t] = nc.tensor(zv[t], { requires_grad = true }) end
        for t = 1, T do ces[t] = nc.tensor(cev[t]) end
        local loss = L.exit_objective(zs, ces, beta, nc.tensor(valid))
        assert(math.abs(loss:item() - ref(zv)) < F32_ATOL, 'value')
        loss:backward()
        for t = 1, T - 1 do
            local got = zs[t].grad:tolist()
            for i = 1, N do
                local old = zv[t][i]
                zv[t][i] = old + FD_H
                local up = ref(zv)
                zv[t][i] = old - FD_H
                local dn = ref(zv)
                zv[t][i] = old
                local fd = (up - dn) / (2 * FD_H)
                assert(math.abs(got[i] - fd) < GRAD_ATOL, string.format('dz[%d][%d]: %.8g vs fd %.8g', t, i, got[i], fd))
            end
        end
        assert.are.equal(0, zs[1].grad:tolist()[3])   -- the ignored token
    end)
end)

describe('nc.cross_entropy per-token form with gradient', function()
    local function ref_rows(lg, tg, ii, ls, z)
        local out = {}
        for r = 1, #lg do
            local row, V = lg[r], #lg[r]
            local m = -math.huge
            for j = 1, V do m = math.max(m, row[j]) end
            local s, sx = 0, 0
            for j = 1, V do s = s + math.exp(row[j] - m); sx = sx + row[j] end
            local lse = m + math.log(s)
            if tg[r] == ii then out[r] = 0
            else out[r] = (1 - ls) * (lse - row[tg[r] + 1]) + ls * (lse - sx / V) + z * lse * lse end
        end
        return out
    end

    for _, case in ipairs { { 0, 0 }, { 0.1, 1e-2 } } do
        local ls, zl = case[1], case[2]
        it(string.format('weighted sum matches finite differences (label_smoothing %g, z_loss %g)', ls, zl), function()
            local g = nc.generator(9)
            local N, V = 5, 7
            local lg = nc.randn({ N, V }, { generator = g, std = 2 }):totable()
            local tg = { 3, -1, 0, 6, 2 }
            local w = nc.randn({ N }, { generator = g }):tolist()
            local function ref(x)
                local r, tot = ref_rows(x, tg, -1, ls, zl), 0
                for i = 1, N do tot = tot + w[i] * r[i] end
                return tot
            end
            local logits = nc.tensor(lg, { requires_grad = true })
            local targets = nc.tensor(tg, { dtype = 'i64' })
            local rows = nc.cross_entropy(logits, targets, { reduction = 'none', label_smoothing = ls, z_loss = zl })
            local want = ref_rows(lg, tg, -1, ls, zl)
            for i = 1, N do assert(math.abs(rows:tolist()[i] - want[i]) < 1e-5, 'row ' .. i) end
            local loss = (rows * nc.tensor(w)):sum()
            loss:backward()
            local got = logits.grad:totable()
            for r = 1, N do
                for j = 1, V do
                    local old = lg[r][j]
                    lg[r][j] = old + FD_H
                    local up = ref(lg)
                    lg[r][j] = old - FD_H
                    local dn = ref(lg)
                    lg[r][j] = old
                    local fd = (up - dn) / (2 * FD_H)
                    assert(math.abs(got[r][j] - fd) < GRAD_ATOL, string.format('d[%d][%d] %.8g vs fd %.8g', r, j, got[r][j], fd))
                end
            end
        end)
    end

    it('with weights 1/count equals the mean form (value and gradient)', function()
        local g = nc.generator(10)
        local lg = nc.randn({ 6, 11 }, { generator = g })
        local targets = nc.tensor({ 1, 4, -1, 10, 0, 7 }, { dtype = 'i64' })
        local a = lg:clone():requires_grad_(true)
        local b = lg:clone():requires_grad_(true)
        local m = nc.cross_entropy(a, targets, { z_loss = 1e-3 })
        m:backward()
        local s = nc.cross_entropy(b, targets, { reduction = 'none', z_loss = 1e-3 }):sum() * (1 / 5)
        s:backward()
        assert(math.abs(m:item() - s:item()) < F32_ATOL)
        assert(maxdiff(a.grad, b.grad) < F32_ATOL)
    end)
end)

describe('nc.looplm model', function()
    it('T = 1 reduces to the standard LM loss of a plain model with the same blocks', function()
        local pc = loop_cfg({ n_layer = 2 })
        pc.loop = nil
        local plain = gpt.new(pc)
        local looped = gpt.new(loop_cfg({ n_layer = 2 }, { prelude = 1, shared = 1, coda = 0, T = 1, beta = 0.1 }))
        local x, y = batch(2, 9, 256, 3)
        y:narrow(1, 0, 2):fill_(-1)   -- some ignored targets
        local lp, logits_p = plain:forward(x, y)
        local ll, logits_l = looped:forward(x, y)
        assert(math.abs(lp:item() - ll:item()) < T1_ATOL, string.format('%.9g vs %.9g', lp:item(), ll:item()))
        assert.are.equal(0, maxdiff(logits_p, logits_l))
        lp:backward()
        ll:backward()
        assert(maxdiff(plain.h[2].mlp.w1.weight.grad, looped.h[2].mlp.w1.weight.grad) < 1e-7)
        assert(maxdiff(plain.lm_head.weight.grad, looped.lm_head.weight.grad) < 1e-7)
    end)

    it('the loss is the exit-weighted per-loop CE of the per-loop logits', function()
        local m = gpt.new(loop_cfg())
        local x, y = batch(2, 6, 256, 4)
        local logits, z = L.loop_logits(m, x)
        local ces, zs = {}, {}
        for t = 1, 3 do ces[t] = nc.cross_entropy(logits[t], y, { reduction = 'none' }):reshape { -1 } end
        for t = 1, 2 do zs[t] = z[t]:reshape { -1 } end
        local want = L.exit_objective(zs, ces, 0.1)
        local loss, lT = m:forward(x, y)
        assert(math.abs(loss:item() - want:item()) < F32_ATOL)
        assert.are.equal(0, maxdiff(lT, logits[3]))
        assert.are.equal(0, maxdiff(m:forward(x), logits[3]))   -- the plain forward is the full-depth model
        loss:backward()
        assert(m.exit_gate.weight.grad:abs():sum():item() > 0)
        assert(m.h[2].attn.wq.weight.grad:abs():sum():item() > 0)
    end)

    it('parameter roles, counts and FLOPs count the gate and the looped applications', function()
        local c = loop_cfg()
        local m = gpt.new(c)
        local roles = m:param_roles()
        assert.are.equal('scalar', roles['exit_gate.weight'])
        assert.are.equal('scalar', roles['exit_gate.bias'])
        local want, got = gpt.count_params(c), m:param_counts()
        for _, k in ipairs { 'total', 'embedding', 'head', 'matrix', 'scalar', 'matmul' } do
            assert.are.equal(want[k], got[k], k)
        end
        assert.are.equal(c.d_model + 1, got.scalar)
        local V, d, f, dkv = c.vocab_size, c.d_model, c.d_ff, c.n_kv_head * c.d_model / c.n_head
        local blk = 2 * d * d + 2 * d * dkv + 2 * d * f
        local A = 1 + (1 + 1) * 3    -- prelude + (shared + coda) * T
        assert.are.equal(6 * (A * blk + 3 * V * d + 2 * d) + 6 * A * d * 17, m:flops_per_token(17))
    end)

    it('KV-cached decoding with q = 1 equals the full forward (token by token and after a prefill)', function()
        local m = gpt.new(loop_cfg())
        local x = batch(2, 10, 256, 5)
        local full = m:forward(x)
        local cache = m:new_cache(2, 16)
        assert.are.equal(1 + 2 * 3, #cache.k)
        for i = 0, 9 do
            assert(maxdiff(m:forward_cached(x:narrow(1, i, 1), cache), full:narrow(1, i, 1)) < CACHE_ATOL, 'pos ' .. i)
        end
        local s = L.stats(cache)
        assert.are.equal(3, s.avg_loops)
        assert.are.equal(20, s.hist[3])
        local c2 = m:new_cache(2, 16)
        local pre = m:forward_cached(x:narrow(1, 0, 6), c2)
        assert(maxdiff(pre, full:narrow(1, 0, 6)) < CACHE_ATOL)
        for i = 6, 9 do
            assert(maxdiff(m:forward_cached(x:narrow(1, i, 1), c2), full:narrow(1, i, 1)) < CACHE_ATOL, 'pos ' .. i)
        end
    end)

    it('early exit with q < 1 runs fewer loops, reports them, and matches the exit loop of the full forward', function()
        local m = gpt.new(loop_cfg())
        local x = batch(1, 8, 256, 6)
        local logits = L.loop_logits(m, x)
        -- a constant gate: lambda = 0.3 everywhere -> p = (0.3, 0.21, 0.49); q = 0.5 exits at t = 2
        m.exit_gate.weight:fill_(0)
        m.exit_gate.bias:fill_(math.log(0.3 / 0.7))
        local cache = m:new_cache(1, 8, { exit_q = 0.5 })
        for i = 0, 7 do
            local got = m:forward_cached(x:narrow(1, i, 1), cache)
            assert(maxdiff(got, logits[2]:narrow(1, i, 1)) < CACHE_ATOL, 'pos ' .. i)
        end
        local s = L.stats(cache)
        assert.are.equal(2, s.avg_decode_loops)
        assert.are.equal(8, s.hist[2])
        -- q = 0: exit at loop 1 regardless of the gate
        local c0 = m:new_cache(1, 8, { exit_q = 0 })
        for i = 0, 7 do
            assert(maxdiff(m:forward_cached(x:narrow(1, i, 1), c0), logits[1]:narrow(1, i, 1)) < CACHE_ATOL, 'q0 pos ' .. i)
        end
        assert.are.equal(1, L.stats(c0).avg_loops)
        c0:reset()
        assert.are.equal(0, L.stats(c0).tokens)
    end)

    it('B > 1: each row decodes exactly as it would alone (per-row exits and KV reuse)', function()
        local m = gpt.new(loop_cfg())
        m.exit_gate.weight:copy_(nc.randn({ 1, 32 }, { generator = nc.generator(2), std = 1.0 }))
        m.exit_gate.bias:fill_(0)
        local x = batch(2, 8, 256, 8)
        local q = 0.6
        local cb = m:new_cache(2, 8, { exit_q = q })
        local c1, c2 = m:new_cache(1, 8, { exit_q = q }), m:new_cache(1, 8, { exit_q = q })
        for i = 0, 7 do
            local both = m:forward_cached(x:narrow(1, i, 1), cb)
            local a = m:forward_cached(x:narrow(0, 0, 1):narrow(1, i, 1), c1)
            local b = m:forward_cached(x:narrow(0, 1, 1):narrow(1, i, 1), c2)
            assert(maxdiff(both:narrow(0, 0, 1), a) < CACHE_ATOL, 'row 0 pos ' .. i)
            assert(maxdiff(both:narrow(0, 1, 1), b) < CACHE_ATOL, 'row 1 pos ' .. i)
        end
        local s = L.stats(cb)
        local kinds = 0
        for t = 1, 3 do if (s.hist[t] or 0) > 0 then kinds = kinds + 1 end end
        assert(kinds >= 2, 'the test gate should make tokens exit at different loops')
        assert(s.avg_loops < 3)
        assert.are.equal(s.loops, L.stats(c1).loops + L.stats(c2).loops)
    end)

    it('nc.generate runs a LoopLM model (greedy, same ids with q = 1 as a full-forward argmax)', function()
        local m = gpt.new(loop_cfg())
        local seen
        local ids = nc.generate.collect(m, { 1, 2, 3 }, { max_tokens = 5, temperature = 0, exit_q = 0.5,
            on_cache = function(c) seen = c end })
        assert.are.equal(5, #ids)
        assert(L.stats(seen).decode_tokens == 4 and L.stats(seen).tokens == 7)
        local ids1 = nc.generate.collect(m, { 1, 2, 3 }, { max_tokens = 4, temperature = 0 })
        local seq = { 1, 2, 3 }
        for k = 1, 4 do
            local logits = m:forward(nc.tensor({ seq }, { dtype = 'i64' }))
            local nxt = logits:select(1, #seq - 1):argmax():item()
            assert.are.equal(nxt, ids1[k])
            seq[#seq + 1] = nxt
        end
    end)

    it('hands the last-loop logits to opts.collider and uses the targets it returns', function()
        local m = gpt.new(loop_cfg())
        local x, y = batch(2, 6, 256, 11)
        local seen_logits
        local fake = { select = function(_, logits, targets, idx)
            seen_logits = logits
            local t = targets:clone()
            t:narrow(1, 0, 3):fill_(-1)
            return t
        end }
        local loss = m:forward(x, y, { collider = fake })
        local y2 = y:clone()
        y2:narrow(1, 0, 3):fill_(-1)
        local want = m:forward(x, y2)
        assert(math.abs(loss:item() - want:item()) < F32_ATOL)
        assert.are.equal(0, maxdiff(seen_logits, L.loop_logits(m, x)[3]))
    end)

    it('stage 2 trains only the gate with the BCE continuation target', function()
        local c = loop_cfg({}, { prelude = 1, shared = 1, coda = 1, T = 3, stage = 2 })
        local m = gpt.new(c)
        local x, y = batch(2, 6, 256, 12)
        local loss = m:forward(x, y)
        -- float64 reference from the per-loop CEs and gate logits
        local logits, z = L.loop_logits(m, x)
        local ce = {}
        for t = 1, 3 do ce[t] = nc.cross_entropy(logits[t], y, { reduction = 'none' }):reshape { -1 }:tolist() end
        local zl = {}
        for t = 1, 2 do zl[t] = z[t]:reshape { -1 }:tolist() end
        local tot, N = 0, #ce[1]
        for i = 1, N do
            for t = 1, 2 do
                local I = math.max(0, ce[t][i] - ce[t + 1][i])
                local yt = 1 - sig(50 * (I - 0.005))
                local lam = sig(zl[t][i])
                tot = tot - (yt * math.log(lam) + (1 - yt) * math.log(1 - lam))
            end
        end
        assert(math.abs(loss:item() - tot / (2 * N)) < 1e-5)
        loss:backward()
        assert(m.exit_gate.weight.grad:abs():sum():item() > 0)
        assert.is_nil(rawget(m.h[1].attn.wq.weight, 'grad'))
        assert.is_nil(rawget(m.lm_head.weight, 'grad'))
        local opt = nc.optim.adamw(m.exit_gate:parameters(), { lr = 0.05 })
        local first, last
        for _ = 1, 15 do
            local l = m:forward(x, y)
            l:backward(); opt:step(); opt:zero_grad()
            first = first or l:item(); last = l:item()
        end
        assert(last < first, string.format('stage 2 loss %.4f -> %.4f', first, last))
        assert.has_error(function()
            gpt.new(loop_cfg({ n_layer = 2 }, { prelude = 1, shared = 1, T = 1, stage = 2 })):forward(x, y)
        end, 'looplm: stage 2 trains the exit gate and needs cfg.loop.T >= 2')
    end)

    it('round-trips through a checkpoint (gate included) and packs (nc.pack) to the same logits', function()
        local m = gpt.new(loop_cfg())
        m.exit_gate.bias:fill_(0.7)
        local x = batch(1, 6, 256, 13)
        local dir = os.tmpname()
        os.remove(dir)
        nc.checkpoint.save(dir, { model = m, meta = { config = m:config() } })
        local ck = nc.checkpoint.load(dir)
        local other = gpt.new(ck.meta.config)            -- the nested cfg.loop survives meta.json
        other:load_state_dict(ck.model)
        os.execute('rm -rf ' .. dir)
        assert.are.same(m.cfg.loop, other.cfg.loop)
        assert.are.equal(0, maxdiff(m.exit_gate.bias, other.exit_gate.bias))
        assert.are.equal(0, maxdiff(m:forward(x), other:forward(x)))
        assert.are.equal(0, maxdiff(L.loop_logits(m, x)[1], L.loop_logits(other, x)[1]))
        -- the packed engine runs loop models (spec/models/engine_e3_spec.lua has the details)
        local ref = m:forward(x)
        assert(maxdiff(ref, nc.pack(m):forward(x)) < 1e-4 * ref:abs():max():item())
    end)

    it('training a micro loop model lowers the loss', function()
        local m = gpt.new(loop_cfg({ seed = 7 }))
        local g = nc.generator(11)
        local toks = nc.rand({ 4, 13 }, { generator = g, lo = 0, hi = 256 }):to('i64')
        local x, y = toks:narrow(1, 0, 12):contiguous(), toks:narrow(1, 1, 12):contiguous()
        local opt = nc.optim.adamw(m:parameters(), { lr = 1e-2 })
        local first, last
        for _ = 1, 20 do
            local loss = m:forward(x, y)
            loss:backward(); opt:step(); opt:zero_grad()
            first = first or loss:item(); last = loss:item()
        end
        assert(last < first - 0.5, string.format('loss %.4f -> %.4f', first, last))
    end)
end)

describe('tools/bench/arch_loop.lua', function()
    it('is a module returning run(opts) -> rows and the two JSON numbers (no timing asserted)', function()
        local run = dofile('tools/bench/arch_loop.lua')
        assert.are.equal('function', type(run))
        local res = run { prompt = 2, new = 3, reps = 1, q = 0.5 }
        assert.are.equal(2, #res.rows)
        local j = res.json
        assert(j.looplm_early_exit_speedup > 0 and j.looplm_early_exit_speedup < math.huge)
        assert(j.looplm_avg_loops >= 1 and j.looplm_avg_loops <= 3)
        assert.are.equal(3, res.rows[1][3])   -- the baseline always runs T loops
    end)
end)
