-- spec/mtp_spec.lua — nc.mtp (multi-token prediction, algorithms.md §7) on micro models: config
-- checks, identical main weights with and without MTP, parameter roles/counts/FLOPs, lambda = 0
-- reproducing the plain loss bitwise, the loss as main + (lambda / D) sum_k L_k, T - k loss
-- positions at depth k, the shifted embedding / target indices on the toy sequence 0..T-1,
-- finite-difference gradients of the MTP term (fp32), training lowering the main and the MTP
-- losses, and self-speculative decoding equal to plain greedy decoding (random and trained models,
-- both kinds, several depths, stop tokens and context limits).
package.path = 'lua/?.lua;lua/?/init.lua;' .. package.path
local nc = require 'nanochat'
package.path = 'spec/helpers/?.lua;' .. package.path
local Fx = require 'model_fixtures'
local gpt = nc.models.gpt
local mtp = nc.mtp

local FD_H = 1e-2       -- central-difference step (weights of std ~0.3, as gpt_spec)
local FD_ATOL = 2e-4    -- f32 loss noise / (2 h) + O(h^2)
local FD_RTOL = 3e-2

local micro = Fx.micro

local batch = Fx.batch

local function same_bits(a, b)
    local la, lb = a:reshape { -1 }:tolist(), b:reshape { -1 }:tolist()
    if #la ~= #lb then return false end
    for i = 1, #la do if la[i] ~= lb[i] then return false end end
    return true
end

-- a learnable stream: t_{i+1} = perm[t_i] over a small alphabet (every depth is predictable)
local function perm_batch(B, T, seed, V)
    V = V or 32
    local g = nc.generator(seed)
    local starts = nc.rand({ B }, { lo = 0, hi = V, generator = g }):to('i64'):tolist()
    local function nxt(t) return (5 * t + 3) % V end
    local xs, ys = {}, {}
    for b = 1, B do
        local t = starts[b]
        xs[b], ys[b] = {}, {}
        for i = 1, T do
            xs[b][i] = t
            t = nxt(t)
            ys[b][i] = t
        end
    end
    return nc.tensor(xs, { dtype = 'i64' }), nc.tensor(ys, { dtype = 'i64' })
end

-- micro sizes run fastest on one thread (results do not depend on the thread count)
local prev_threads
setup(function() prev_threads = nc.get_num_threads(); nc.set_num_threads(1) end)
teardown(function() nc.set_num_threads(prev_threads) end)

describe('nc.mtp config', function()
    it('fills defaults and rejects bad fields with clear errors', function()
        local c = gpt.config(micro { mtp = {} })
        assert.are.same({ depth = 1, lambda = 0.3, kind = 'sequential', per_depth_backward = false }, c.mtp)
        local p = gpt.config(micro { mtp = { depth = 2, lambda = 0, kind = 'parallel' } })
        assert.are.same({ depth = 2, lambda = 0, kind = 'parallel', per_depth_backward = false }, p.mtp)
        assert.has_error(function() gpt.config(micro { mtp = { depht = 1 } }) end,
            'mtp: unknown cfg.mtp field depht (known: depth, lambda, kind, per_depth_backward)')
        assert.has_error(function() gpt.config(micro { mtp = { depth = 0 } }) end,
            'mtp: cfg.mtp.depth must be a positive integer, got 0')
        assert.has_error(function() gpt.config(micro { mtp = { lambda = -1 } }) end,
            'mtp: cfg.mtp.lambda must be a finite number >= 0, got -1')
        assert.has_error(function() gpt.config(micro { mtp = { kind = 'tree' } }) end,
            "mtp: cfg.mtp.kind must be 'sequential' or 'parallel', got 'tree'")
        assert.has_error(function() gpt.config(micro { mtp = { depth = '2' } }) end,
            'mtp: cfg.mtp.depth must be a number, got string')
        assert.has_error(function() gpt.config(micro { mtp = { depth = 32 } }) end,
            'mtp: cfg.mtp.depth 32 must be below seq_len 32')
    end)
end)

describe('nc.mtp modules in the model', function()
    it('leave the main weights bit-identical to the same cfg without MTP', function()
        local a = gpt.new(micro())
        local b = gpt.new(micro { mtp = { depth = 2 } })
        local pa = a:named_parameters()
        local pb = {}
        for _, nv in ipairs(b:named_parameters()) do pb[nv[1]] = nv[2] end
        for _, nv in ipairs(pa) do assert.is_true(same_bits(nv[2], pb[nv[1]]), nv[1]) end
        assert.is_not_nil(pb['mtp.1.proj.weight'])
        assert.is_not_nil(pb['mtp.1.block.mlp.w2.weight'])
    end)

    it('have roles (matrix / norm) and closed-form counts and FLOPs', function()
        for _, over in ipairs {
            { mtp = { depth = 2 } }, { mtp = { depth = 3, kind = 'parallel' } },
            { mtp = { depth = 1 }, subln = true, mlp = 'swiglu', tie_embeddings = true },
        } do
            local c = micro(over)
            local m = gpt.new(c)
            local roles = m:param_roles()
            local n_mtp = 0
            for _, nv in ipairs(m:named_parameters()) do
                local name = nv[1]
                if name:match('^mtp%.') then
                    n_mtp = n_mtp + 1
                    local want = name:match('sub_norm') and 'norm' or 'matrix'
                    assert.are.equal(want, roles[name], name)
                end
            end
            assert.is_true(n_mtp > 0)
            local want, got = gpt.count_params(c), m:param_counts()
            for _, k in ipairs { 'total', 'matrix', 'norm', 'matmul' } do assert.are.equal(want[k], got[k], k) end
            -- spelled out for the module count: D (proj 2 d^2 + block matrices)
            local plain = gpt.count_params(micro { subln = c.subln, mlp = c.mlp, tie_embeddings = c.tie_embeddings })
            local d, D = c.d_model, c.mtp.depth
            local per_block = (plain.matrix) / c.n_layer
            local proj = (c.mtp.kind or 'sequential') == 'sequential' and 2 * d * d or 0
            assert.are.equal(plain.matrix + D * (per_block + proj), got.matrix)
            local T = 17
            assert.are.equal(6 * got.matmul + 6 * c.n_layer * d * T + 6 * D * (c.vocab_size * d + d * T),
                m:flops_per_token(T))
        end
    end)
end)

describe('nc.mtp loss', function()
    it('lambda = 0 reproduces the plain LM loss bitwise (cfg and set_lambda)', function()
        local x, y = batch(2, 12, 256, 3)
        local plain = gpt.new(micro())
        local want = plain:forward(x, y)
        local z = gpt.new(micro { mtp = { depth = 2, lambda = 0 } })
        assert.is_true(same_bits(want, (z:forward(x, y))))
        local m = gpt.new(micro { mtp = { depth = 2, lambda = 0.3 } })
        assert.is_false(same_bits(want, (m:forward(x, y))))
        mtp.set_lambda(m, 0)
        assert.is_true(same_bits(want, (m:forward(x, y))))
        assert.has_error(function() mtp.set_lambda(m, -0.1) end, 'mtp.set_lambda: expected a finite number >= 0, got -0.1')
        assert.has_error(function() mtp.set_lambda(plain, 0.1) end, 'mtp.set_lambda: the model has no cfg.mtp')
    end)

    it('is main + (lambda / D) sum_k L_k, each L_k over its own valid targets; linear in set_lambda', function()
        for _, kind in ipairs { 'sequential', 'parallel' } do
            local m = gpt.new(micro { mtp = { depth = 3, lambda = 0.3, kind = kind } })
            local x, y = batch(2, 12, 256, 5)
            y:set(0, 4, -1)   -- a Collider-style ignored target
            local main, ls = mtp.eval_losses(m, x, y)
            assert.are.equal(3, #ls)
            local total = nc.no_grad(function() return (m:forward(x, y)):item() end)
            local want = main + 0.3 / 3 * (ls[1] + ls[2] + ls[3])
            assert.is_true(math.abs(total - want) < 1e-5, kind .. string.format(' %.7f vs %.7f', total, want))
            mtp.set_lambda(m, 0.6)
            local total2 = nc.no_grad(function() return (m:forward(x, y)):item() end)
            assert.is_true(math.abs((total2 - main) - 2 * (total - main)) < 1e-5)
            assert.are.equal(0.6, mtp.lambda(m))
        end
    end)

    it('sees T - k positions at depth k, Emb(t_{i+k}) at position i and predicts t_{i+k+1} (toy 0..T-1)', function()
        local T, D = 10, 3
        local m = gpt.new(micro { mtp = { depth = D } })
        local row = {}
        for i = 1, T do row[i] = i - 1 end            -- t = 0, 1, ..., T-1
        local x = nc.tensor({ row, row }, { dtype = 'i64' })
        local trow = {}
        for i = 1, T do trow[i] = i end               -- targets[i] = t_{i+1} = i + 1 (0-based i)
        local y = nc.tensor({ trow, trow }, { dtype = 'i64' })
        -- record what the MTP loss feeds to the embedding and the cross-entropy
        local emb_ids, ce_targets, ce_rows = {}, {}, {}
        local cos, sin = m.rope_cos:narrow(0, 0, T), m.rope_sin:narrow(0, 0, T)
        local h = nc.no_grad(function() return m:_final(m:_trunk(m:_embed(x), cos, sin, nil)) end)
        local orig_emb, orig_ce = nc.embedding, nc.cross_entropy
        local ok, err = pcall(function()
            nc.embedding = function(idx, w) emb_ids[#emb_ids + 1] = idx:totable(); return orig_emb(idx, w) end
            nc.cross_entropy = function(logits, t, o)
                ce_targets[#ce_targets + 1] = t:totable()
                ce_rows[#ce_rows + 1] = logits:size(1)
                return orig_ce(logits, t, o)
            end
            mtp.depth_losses(m, h, x, y, {}, cos, sin)
        end)
        nc.embedding, nc.cross_entropy = orig_emb, orig_ce
        assert(ok, err)
        assert.are.equal(D, #emb_ids)
        assert.are.equal(D, #ce_targets)
        for k = 1, D do
            assert.are.equal(T - k, ce_rows[k])
            for b = 1, 2 do
                assert.are.equal(T - k, #emb_ids[k][b])
                assert.are.equal(T - k, #ce_targets[k][b])
                for i = 0, T - k - 1 do
                    assert.are.equal(i + k, emb_ids[k][b][i + 1])       -- Emb(t_{i+k})
                    assert.are.equal(i + k + 1, ce_targets[k][b][i + 1]) -- predicts t_{i+k+1}
                end
            end
        end
    end)

    it('depth k >= T contributes nothing; short sequences still work', function()
        local m = gpt.new(micro { mtp = { depth = 3 } })
        local x, y = batch(1, 2, 256, 9)
        local main, ls = mtp.eval_losses(m, x, y)
        assert.are.equal(1, #ls)
        local total = nc.no_grad(function() return (m:forward(x, y)):item() end)
        assert.is_true(math.abs(total - (main + 0.1 * ls[1])) < 1e-5)
    end)

    for _, kind in ipairs { 'sequential', 'parallel' } do
        it('gradient of the MTP term matches finite differences (fp32, ' .. kind .. ', D = 2)', function()
            local m = gpt.new(micro { ternary = false, init_std = 0.3, head_std = 0.3, embed_std = 1, seed = 11,
                                      seq_len = 8, mtp = { depth = 2, lambda = 1, kind = kind } })
            local x, y = batch(2, 8, 256, 21)
            local cos, sin = m.rope_cos, m.rope_sin
            local function term() return mtp.loss(m, m:_final(m:_trunk(m:_embed(x), cos, sin, nil)), x, y, {}, cos, sin) end
            local function term_of() return nc.no_grad(function() return term():item() end) end
            term():backward()
            local checked = 0
            for _, nv in ipairs(m:named_parameters()) do
                local name, p = nv[1], nv[2]
                -- the MTP term reaches every parameter: modules, trunk (through h), embedding, head
                assert.is_not_nil(p.grad, name)
                local g = p.grad:reshape { -1 }
                local _, imax = g:abs():max(0)
                local flat = p:reshape { -1 }
                for _, i in ipairs { imax:item(), math.floor(p:numel() / 2) + 1 } do
                    local w0 = flat:get(i)
                    flat:set(i, w0 + FD_H)
                    local lp = term_of()
                    flat:set(i, w0 - FD_H)
                    local lm = term_of()
                    flat:set(i, w0)
                    local fd = (lp - lm) / (2 * FD_H)
                    local an = g:get(i)
                    assert(math.abs(fd - an) <= FD_ATOL + FD_RTOL * math.abs(an),
                        string.format('%s[%d]: analytic %.6g, finite difference %.6g', name, i, an, fd))
                    checked = checked + 1
                end
            end
            assert.is_true(checked >= 2 * 14)
        end)
    end
end)

describe('nc.mtp per-depth backward (the memory trick, cfg.mtp.per_depth_backward)', function()
    for _, case in ipairs { { 'sequential', false }, { 'parallel', false }, { 'sequential', true } } do
        local kind, ternary = case[1], case[2]
        it(string.format('gives the joint backward\'s loss and gradients (%s, ternary = %s, D = 3)', kind, tostring(ternary)),
            function()
                local x, y = batch(2, 10, 256, 13)
                y:set(1, 3, -1)
                local grads, losses = {}, {}
                for r, pdb in ipairs { false, true } do
                    local m = gpt.new(micro { ternary = ternary, seed = 12,
                                              mtp = { depth = 3, kind = kind, lambda = 0.5, per_depth_backward = pdb } })
                    local loss = m:forward(x, y, { z_loss = 1e-3 })
                    losses[r] = loss:item()
                    loss:backward(nc.full({}, 0.5))   -- an upstream gradient other than 1 (grad_accum)
                    grads[r] = {}
                    for _, nv in ipairs(m:named_parameters()) do grads[r][nv[1]] = nv[2].grad end
                end
                assert.is_true(math.abs(losses[1] - losses[2]) < 1e-5 * math.abs(losses[1]))
                local n = 0
                for name, g in pairs(grads[1]) do
                    local g2 = grads[2][name]
                    assert.is_not_nil(g2, name)
                    local scale = g:abs():max():item()
                    local diff = (g - g2):abs():max():item()
                    assert(diff <= 1e-5 * scale + 1e-12, string.format('%s: max diff %.3g (max |grad| %.3g)', name, diff, scale))
                    n = n + 1
                end
                assert.is_true(n > 14)
            end)
    end
end)

-- a micro MTP model trained briefly on the perm stream (shared by the training and decoding specs)
local trained_cache = {}
local function trained(kind, D, steps)
    local key = kind .. D .. ':' .. steps
    if trained_cache[key] then return unpack(trained_cache[key]) end
    local m = gpt.new(micro { seed = 4, mtp = { depth = D, lambda = 1, kind = kind } })
    local opt = nc.optim.adamw(m:parameters(), { lr = 1e-2, betas = { 0.9, 0.95 }, weight_decay = 0 })
    local hist = {}
    for step = 1, steps do
        local x, y = perm_batch(4, 24, step)
        if step == 1 or step == steps then hist[#hist + 1] = { mtp.eval_losses(m, x, y) } end
        local loss = m:forward(x, y)
        loss:backward()
        opt:step()
        opt:zero_grad()
    end
    trained_cache[key] = { m, hist }
    return m, hist
end

describe('nc.mtp training', function()
    it('lowers both the main and every MTP loss (micro, ternary, sequential D = 2)', function()
        local _, hist = trained('sequential', 2, 40)
        local first, last = hist[1], hist[2]
        assert.is_true(last[1] < first[1] - 1.5, string.format('main %.3f -> %.3f', first[1], last[1]))
        for k = 1, 2 do
            assert.is_true(last[2][k] < first[2][k] - 1.5, string.format('depth %d: %.3f -> %.3f', k, first[2][k], last[2][k]))
        end
    end)
end)

describe('nc.mtp.generate (self-speculative greedy decoding)', function()
    local function check_same(m, prompt, o)
        local ids, st = mtp.generate(m, prompt, o)
        local ref_opts = { temperature = 0, max_tokens = o.max_tokens, max_context = o.max_context, stop_tokens = o.stop_tokens }
        -- (trace / draft_vocab / depth only shape the drafts)
        local ref = nc.generate.collect(m, prompt, ref_opts)
        assert.are.same(ref, ids)
        return ids, st
    end

    it('equals plain greedy decoding on random models (both kinds, depths 0..3, limits, stop tokens)', function()
        for _, kind in ipairs { 'sequential', 'parallel' } do
            local m = gpt.new(micro { mtp = { depth = 3, kind = kind }, seed = 3 })
            for D = 0, 3 do
                local ids, st = check_same(m, { 1, 2, 3 }, { max_tokens = 20, depth = D })
                assert.are.equal(20, #ids)
                if D == 0 then assert.are.equal(0, st.drafted) else assert.is_true(st.drafted > 0) end
            end
            check_same(m, { 5 }, { max_tokens = 40, max_context = 12 })      -- context-limited: 12 ids
            local ids = check_same(m, { 1, 2, 3 }, { max_tokens = 20 })
            check_same(m, { 1, 2, 3 }, { max_tokens = 20, stop_tokens = { ids[7] } })
            check_same(m, { 1, 2, 3 }, { max_tokens = 1 })
            local _, st = check_same(m, { 1, 2, 3 }, { max_tokens = 20, draft_vocab = 16, trace = true })
            for _, r in ipairs(st.trace) do
                for _, dft in ipairs(r.drafts) do assert.is_true(dft < 16) end
            end
            check_same(m, { 1, 2, 3 }, { max_tokens = 0 })
        end
    end)

    for _, case in ipairs { { 'sequential', 2 }, { 'parallel', 2 } } do
        it('equals plain greedy decoding on a trained model and accepts drafts (' .. case[1] .. ')', function()
            local m = trained(case[1], case[2], 40)
            local total_acc, total_draft = 0, 0
            for _, start in ipairs { 0, 7, 19 } do
                local _, st = check_same(m, { start, (5 * start + 3) % 32 }, { max_tokens = 24 })
                total_acc, total_draft = total_acc + st.accepted, total_draft + st.drafted
                assert.is_true(st.tokens_per_forward >= 1)
            end
            -- the stream is learnable, so most drafts are right (and the rollback path runs when not)
            assert.is_true(total_acc > 0.5 * total_draft, string.format('accepted %d of %d', total_acc, total_draft))
            -- a prompt off the learned stream: drafts get rejected, output still equals greedy
            check_same(m, { 200, 31, 9, 150 }, { max_tokens = 24 })
        end)
    end

    for _, kind in ipairs { 'sequential', 'parallel' } do
        it('drafts what the training path predicts at the same positions (' .. kind .. ', D = 2, fp32)', function()
            -- the decoding loop (module KV caches, hidden buffers, recomputation after rollbacks)
            -- must compute exactly the modules' training-time function of the committed sequence
            local m = gpt.new(micro { ternary = false, init_std = 0.3, head_std = 0.3, seed = 4,
                                      mtp = { depth = 2, kind = kind } })
            local prompt = { 1, 2, 3, 4, 5 }
            local ids, st = mtp.generate(m, prompt, { max_tokens = 20, trace = true })
            local seq = {}
            for _, v in ipairs(prompt) do seq[#seq + 1] = v end
            for _, v in ipairs(ids) do seq[#seq + 1] = v end
            local function train_path(ids_list)   -- greedy ids per depth of the training-path logits
                local L = #ids_list
                local xi = nc.tensor({ ids_list }, { dtype = 'i64' })
                local c, s = m.rope_cos:narrow(0, 0, L), m.rope_sin:narrow(0, 0, L)
                return nc.no_grad(function()
                    local lg = mtp.depth_logits(m, m:_final(m:_trunk(m:_embed(xi), c, s, nil)), xi, c, s)
                    return { mtp.greedy_ids(lg[1]:select(0, 0)), lg[2] and mtp.greedy_ids(lg[2]:select(0, 0)) }
                end)
            end
            local want = train_path(seq)
            local checked = { 0, 0 }
            for _, r in ipairs(st.trace) do
                local p = r.pos   -- module k at position p drafted the token at p + 1 + k
                if r.drafts[1] then
                    assert.are.equal(want[1][p + 1], r.drafts[1], 'depth 1 at ' .. p)
                    checked[1] = checked[1] + 1
                end
                if r.drafts[2] then
                    -- depth 2 at p saw tokens 0..p+1 and depth 1's draft at p+2 (sequential)
                    local pre = {}
                    for i = 1, p + 2 do pre[i] = seq[i] end
                    pre[p + 3] = r.drafts[1]
                    assert.are.equal(train_path(pre)[2][p + 1], r.drafts[2], 'depth 2 at ' .. p)
                    checked[2] = checked[2] + 1
                end
            end
            assert.is_true(checked[1] >= 5 and checked[2] >= 5, checked[1] .. ' / ' .. checked[2])
        end)
    end

    it('picks the greedy token by the rule of nc.generate (argmax, lowest id on ties)', function()
        local rows = { { 0.5, 2, 2, -1 }, { 3, 3, 3, 3 }, { -2, -1, -1.5, -1 }, { 0, 0, 0, 1e-7 } }
        local got = mtp.greedy_ids(nc.tensor(rows))
        for i, r in ipairs(rows) do assert.are.equal(nc.generate.argmax(r), got[i]) end
        assert.are.same({ 1, 0, 1, 3 }, got)
    end)

    it('rejects bad input with clear errors', function()
        local plain = gpt.new(micro())
        assert.has_error(function() mtp.generate(plain, { 1 }) end, 'mtp.generate: the model has no MTP modules (cfg.mtp)')
        local m = gpt.new(micro { mtp = { depth = 1 } })
        assert.has_error(function() mtp.generate(m, {}) end,
            'mtp.generate: the prompt is empty (give at least one token, e.g. BOS)')
        assert.has_error(function() mtp.generate(m, { 1 }, { temperature = 1 }) end,
            'mtp.generate: unknown option temperature (known: max_tokens, max_context, stop_tokens, depth, trace, draft_vocab)')
        assert.has_error(function() mtp.generate(m, { 1 }, { depth = 2 }) end,
            'mtp.generate: depth must be an integer in 0..1, got 2')
        assert.has_error(function() mtp.generate(m, { 1 }, { draft_vocab = 0 }) end,
            'mtp.generate: draft_vocab must be an integer in 1..256, got 0')
        assert.has_error(function() mtp.generate(m, { 1, -2 }) end,
            'mtp.generate: prompt entry 2 is not a token id below the vocabulary size 256: -2')
        assert.has_error(function() mtp.generate(m, { 256 }) end,
            'mtp.generate: prompt entry 1 is not a token id below the vocabulary size 256: 256')
        assert.has_error(function() mtp.generate(m, { 1, 2, 3 }, { max_context = 2 }) end,
            'mtp.generate: the prompt has 3 tokens, more than the context of 2')
    end)
end)
