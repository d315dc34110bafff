-- spec/collider_spec.lua — Collider token filtering (nanochat.collider, algorithms.md §8.5):
-- keep-all backward bitwise equal to dense; gathered linear dW / dX exactly the dense ones with the
-- filtered rows of dY and X zeroed; exactly round((1 - rho) N) tokens kept, the top scores, and the
-- loss a mean over them (float64 recomputation); filtered activation-gradient rows exactly 0 at
-- every layer (retained gradients of a block-by-block replica of the model's forward) while plain
-- loss masking leaves them non-zero; masked attention (bitwise, filtered keys' dK / dV rows 0;
-- fused and two-pass, both CPU kernel variants), row-subset rmsnorm, elementwise unary and RoPE backward bitwise against the dense
-- kernels with zeroed dO rows; the row gather / scatter kernels;
-- score = 'excess' through a reference model; clear errors on bad input; nc.train with a filter.
package.path = 'lua/?.lua;lua/?/init.lua;' .. package.path
local nc = require 'nanochat'
package.path = 'spec/helpers/?.lua;' .. package.path
local Fx = require 'model_fixtures'
local ag = require 'nanochat.autograd'
local core = require 'nanochat.core'
local ffi, C = core.ffi, core.C

local LOSS_RTOL = 1e-6    -- f32 mean of ~20 losses vs the float64 mean of the same f32 losses

local micro = Fx.micro

local batch = Fx.batch

-- raw f32 bits of a tensor (a contiguous copy), for bitwise comparisons (-0 ~= +0 here)
local function bits(t)
    local c = t:contiguous()
    local n = c:numel()
    local p = ffi.cast('const uint32_t *', C.nc_tensor_data(c._c))
    local out = {}
    for i = 0, n - 1 do out[i + 1] = p[i] end
    return out
end

local function same_bits(a, b)
    local x, y = bits(a), bits(b)
    if #x ~= #y then return false end
    for i = 1, #x do if x[i] ~= y[i] then return false, i end end
    return true
end

-- rows (0-based) of a (N, D) view of t whose entries are all exactly 0
local function zero_rows(t)
    local D = t:size(-1)
    local l = t:reshape { -1, D }:totable()
    local z = {}
    for r, row in ipairs(l) do
        local all = true
        for _, v in ipairs(row) do if v ~= 0 then all = false; break end end
        z[r - 1] = all
    end
    return z
end

local function grads(model)
    local out = {}
    for _, nv in ipairs(model:named_parameters()) do out[nv[1]] = nv[2].grad and nv[2].grad:clone() end
    return out
end

-- a step context with chosen kept rows, active as the row filter while fn runs
local function with_rows(N, keep, fn)
    local ctx = nc.collider.new { rho = 0 }:step(N)
    local prev = ag.set_row_filter(ctx)
    local ok, a, b = pcall(fn, ctx)
    ag.set_row_filter(prev)
    if not ok then error(a, 0) end
    ctx:set_keep(keep)
    return ctx, a, b
end

local function sorted_keep(ctx)
    local out = {}
    for i, v in ipairs(ctx.keep:tolist()) do out[i] = v end
    return out
end

describe('nc.collider', function()
    -- JIT traces can anchor tensors captured in compiled closures until the traces are flushed;
    -- drop them here, so memory-growth specs that run later start from a clean heap
    teardown(function()
        if jit and jit.flush then jit.flush() end
        collectgarbage('collect')
        collectgarbage('collect')
    end)

    it('keep-all (rho = 0): the filtered backward equals the dense backward bitwise for every parameter', function()
        for _, over in ipairs { {}, { subln = true, mlp = 'swiglu' } } do
            local m = nc.models.gpt.new(micro(over))
            local x, y = batch(2, 16, 256, 3)
            local ld = m:forward(x, y)
            ld:backward()
            local gd = grads(m)
            m:zero_grad()
            local F = nc.collider.new { rho = 0 }
            local lf = F:forward(m, x, y)
            assert.are.equal(32, F.last.kept)
            assert.are.equal(32, F.last.keep:numel())   -- the gathered path ran (all rows listed)
            lf:backward()
            local gf = grads(m)
            assert.is_true(same_bits(ld, lf))
            local n = 0
            for name, g in pairs(gd) do
                local ok, at = same_bits(g, gf[name])
                assert.is_true(ok, name .. ' differs at element ' .. tostring(at))
                n = n + 1
            end
            assert.is_true(n >= 10)
        end
    end)

    it('linear: gathered dW and dX equal the dense ones with filtered rows of dY and X zeroed (exact)', function()
        local g = nc.generator(11)
        local B, T, I, O = 2, 16, 24, 20
        local keep = { 0, 3, 4, 9, 15, 16, 17, 22, 30 }
        local kept = {}
        for _, r in ipairs(keep) do kept[r] = true end
        local x0 = nc.randn({ B, T, I }, { generator = g })
        local w0 = nc.randn({ O, I }, { generator = g })
        local b0 = nc.randn({ O }, { generator = g })
        local gy = nc.randn({ B, T, O }, { generator = g })
        local pre = nc.randn({ B, T, I }, { generator = g })   -- an existing x gradient (accumulate path)
        local rowmask = nc.zeros({ B * T, 1 })
        for r in pairs(kept) do rowmask:set(r, 0, 1) end
        local function masked(t) return (t:reshape { B * T, -1 } * rowmask):reshape(t:shape()) end
        for _, accumulate in ipairs { false, true } do
            -- filtered
            local x, w, b = x0:clone():requires_grad_(), w0:clone():requires_grad_(), b0:clone():requires_grad_()
            if accumulate then x.grad = pre:clone() end
            local _, y = with_rows(B * T, keep, function() return nc.linear(x, w, b) end)
            y:backward(gy)
            -- dense with zeroed rows
            local xd, wd, bd = masked(x0):requires_grad_(), w0:clone():requires_grad_(), b0:clone():requires_grad_()
            if accumulate then xd.grad = pre:clone() end
            nc.linear(xd, wd, bd):backward(masked(gy))
            assert.is_true(same_bits(w.grad, wd.grad), 'dW')
            assert.is_true(same_bits(b.grad, bd.grad), 'dbias')
            assert.is_true(same_bits(x.grad, xd.grad), 'dX')
            if not accumulate then
                local z = zero_rows(x.grad)
                for r = 0, B * T - 1 do assert.are.equal(not kept[r], z[r]) end
            end
        end
    end)

    it('keeps exactly round((1 - rho) N) tokens with the highest loss, and the loss is their mean', function()
        local m = nc.models.gpt.new(micro { seed = 5 })
        local x, y = batch(2, 16, 256, 9)
        for _, rho in ipairs { 0.3, 0.4, 0.75 } do
            local F = nc.collider.new { rho = rho }
            local loss = F:forward(m, x, y)
            local ctx = F.last
            local want = math.floor((1 - rho) * 32 + 0.5)
            assert.are.equal(want, ctx.kept)
            assert.are.equal(want, ctx.keep:numel())
            assert.near((1 - rho), F:kept_fraction(), 0.5 / 32 + 1e-12)
            local per = nc.no_grad(function()
                return nc.cross_entropy(m:forward(x), y, { reduction = 'none' }):reshape { -1 }:tolist()
            end)
            local keep = sorted_keep(ctx)
            local is_kept, sum, minkept = {}, 0, math.huge
            for _, r in ipairs(keep) do
                is_kept[r] = true
                sum = sum + per[r + 1]
                minkept = math.min(minkept, per[r + 1])
            end
            for r = 0, 31 do
                if not is_kept[r] then assert.is_true(per[r + 1] <= minkept) end
            end
            local ref = sum / #keep   -- float64 mean over the kept tokens: the denominator is the kept count
            assert.is_true(math.abs(loss:item() - ref) <= LOSS_RTOL * math.abs(ref), loss:item() .. ' vs ' .. ref)
            -- the masked targets: kept positions keep their id, the others are ignore_index
            local mt, yt = ctx.masked:reshape { -1 }:tolist(), y:reshape { -1 }:tolist()
            for r = 0, 31 do assert.are.equal(is_kept[r] and yt[r + 1] or -1, mt[r + 1]) end
            m:zero_grad()
        end
    end)

    it('ignored targets (-1) are never kept and do not count towards N', function()
        local m = nc.models.gpt.new(micro())
        local x, y = batch(2, 16, 256, 4)
        local yl = y:reshape { -1 }:tolist()
        for _, r in ipairs { 1, 5, 6, 20, 31 } do yl[r + 1] = -1 end
        local y2 = nc.tensor(yl, { dtype = 'i64' }):reshape { 2, 16 }
        local F = nc.collider.new { rho = 0.5 }
        F:forward(m, x, y2)
        assert.are.equal(27, F.last.valid)
        assert.are.equal(math.floor(0.5 * 27 + 0.5), F.last.kept)
        for _, r in ipairs(sorted_keep(F.last)) do assert.are_not.equal(-1, yl[r + 1]) end
        -- rho = 0 keeps all valid tokens only
        local F0 = nc.collider.new { rho = 0 }
        F0:forward(m, x, y2)
        assert.are.equal(27, F0.last.kept)
    end)

    it('after backward every activation-gradient row of a filtered token is exactly 0 at every layer', function()
        local m = nc.models.gpt.new(micro { subln = true })
        local B, T = 2, 16
        local x, y = batch(B, T, 256, 12)
        local eps = m.cfg.norm_eps
        local acts
        -- the model's forward written block by block, with every intermediate activation retained
        local replica = { forward = function(_, idx, tgt, opts)
            acts = {}
            local function keep(name, t) t:retain_grad(); acts[#acts + 1] = { name, t }; return t end
            local cos, sin = m.rope_cos:narrow(0, 0, T), m.rope_sin:narrow(0, 0, T)
            local h = keep('embed', m:_embed(idx))
            for i, blk in ipairs(m.h) do
                local a_in = keep('h' .. i .. '.attn_in', nc.rmsnorm(h, nil, eps))
                local a = keep('h' .. i .. '.attn_out', blk.attn(a_in, cos, sin, nil, i))
                h = keep('h' .. i .. '.mid', h + a)
                local m_in = keep('h' .. i .. '.mlp_in', nc.rmsnorm(h, nil, eps))
                local u = keep('h' .. i .. '.mlp_out', blk.mlp(m_in))
                h = keep('h' .. i .. '.out', h + u)
            end
            local logits = m:_logits(keep('final', m:_final(h)))
            local t = opts.collider and opts.collider:select(logits, tgt, idx) or tgt
            return nc.cross_entropy(logits, t), logits
        end }
        local F = nc.collider.new { rho = 0.4 }
        local loss = F:forward(replica, x, y)
        loss:backward()
        local kept = {}
        for _, r in ipairs(sorted_keep(F.last)) do kept[r] = true end
        assert.is_true(#acts >= 10)
        for _, nt in ipairs(acts) do
            local z = zero_rows(nt[2].grad)
            for r = 0, B * T - 1 do
                if not kept[r] then assert.is_true(z[r], nt[1] .. ': filtered row ' .. r .. ' is not 0') end
            end
            local live = 0
            for r in pairs(kept) do if not z[r] then live = live + 1 end end
            assert.is_true(live > 0, nt[1] .. ': every kept row is 0')
        end
        -- the replica is the model: the same parameter gradients as F:forward(model) with that selection
        local gr = grads(m)
        m:zero_grad()
        local F2 = nc.collider.new { rho = 0.4 }
        F2:forward(m, x, y):backward()
        for name, g in pairs(grads(m)) do assert.is_true(same_bits(g, gr[name]), name) end
        -- plain loss masking (no row filter) leaves filtered rows non-zero below the head
        m:zero_grad()
        local masked = F.last.masked
        local plain = { forward = function(self, idx, tgt) return replica.forward(self, idx, masked, {}) end }
        plain:forward(x, y):backward()
        local z = zero_rows(acts[1][2].grad)   -- the embedding output
        local nonzero = 0
        for r = 0, B * T - 1 do if not kept[r] and not z[r] then nonzero = nonzero + 1 end end
        assert.is_true(nonzero > 0)
    end)

    it('attention backward with the kept-query mask equals the dense backward with those dO rows zeroed', function()
        local prev_kernel = nc.cpu_kernel()
        local g = nc.generator(21)
        local B, T, H, Hkv, D = 2, 70, 4, 2, 8   -- T > one 64-row block
        local q0 = nc.randn({ B, T, H, D }, { generator = g })
        local k0 = nc.randn({ B, T, Hkv, D }, { generator = g })
        local v0 = nc.randn({ B, T, Hkv, D }, { generator = g })
        local go = nc.randn({ B, T, H, D }, { generator = g })
        local keep = {}
        for r = 0, B * T - 1 do if (r * 7) % 5 < 3 then keep[#keep + 1] = r end end
        local rowmask = nc.zeros({ B * T, 1 })
        for _, r in ipairs(keep) do rowmask:set(r, 0, 1) end
        local kernels = { prev_kernel }
        if prev_kernel ~= 'scalar' then kernels[2] = 'scalar' end
        local threads0 = nc.get_num_threads()
        local runs = { { prev_kernel, 1 }, { prev_kernel, 2 } }   -- fused pass / two passes
        if kernels[2] then runs[3] = { kernels[2], 1 } end        -- (NC_KERNEL=scalar: already the scalar kernel)
        for _, run in ipairs(runs) do
            local kern = run[1]
            nc.set_cpu_kernel(kern)
            nc.set_num_threads(run[2])
            local q, k, v = q0:clone():requires_grad_(), k0:clone():requires_grad_(), v0:clone():requires_grad_()
            local _, o = with_rows(B * T, keep, function() return (nc.attention(q, k, v)) end)
            o:backward(go)
            local qd, kd, vd = q0:clone():requires_grad_(), k0:clone():requires_grad_(), v0:clone():requires_grad_()
            local od = nc.attention(qd, kd, vd)
            od:backward((go:reshape { B * T, -1 } * rowmask):reshape(go:shape()))
            -- bitwise: the kernel skips the filtered query rows (compacting each block's kept rows), the
            -- dense one adds their exact +-0 terms, which leave every sum unchanged; dK / dV rows of
            -- filtered keys are not computed (Centrifuge: 0 here), the kept keys' rows are the dense ones
            assert.is_true(same_bits(q.grad, qd.grad), kern .. ' dq')
            local kidx = nc.tensor(keep, { dtype = 'i64' })
            for _, p in ipairs { { k.grad, kd.grad, 'dk' }, { v.grad, vd.grad, 'dv' } } do
                local a2, b2 = p[1]:reshape { B * T, -1 }, p[2]:reshape { B * T, -1 }
                assert.is_true(same_bits(nc.index_select(a2, 0, kidx), nc.index_select(b2, 0, kidx)), kern .. ' ' .. p[3])
                local zk = zero_rows(a2)
                for r = 0, B * T - 1 do if (r * 7) % 5 >= 3 then assert.is_true(zk[r], p[3] .. ' row ' .. r) end end
            end
            local z = zero_rows(q.grad:reshape { B * T, H * D })
            for r = 0, B * T - 1 do if (r * 7) % 5 >= 3 then assert.is_true(z[r]) end end
        end
        nc.set_cpu_kernel(prev_kernel)
        nc.set_num_threads(threads0)
        -- a filter for another row count leaves attention dense (no mask)
        local q, k, v = q0:clone():requires_grad_(), k0:clone():requires_grad_(), v0:clone():requires_grad_()
        local _, o = with_rows(B * T + 1, { 0 }, function() return (nc.attention(q, k, v)) end)
        o:backward(go)
        local qd = q0:clone():requires_grad_()
        nc.attention(qd, k0, v0):backward(go)
        assert.is_true(same_bits(q.grad, qd.grad))
    end)

    it('rmsnorm backward on the kept rows equals the dense one with filtered dY rows zeroed', function()
        local g = nc.generator(5)
        local x0 = nc.randn({ 3, 5, 24 }, { generator = g })
        local w0 = nc.rand({ 24 }, { lo = 0.5, hi = 1.5, generator = g })
        local gy = nc.randn({ 3, 5, 24 }, { generator = g })
        local keep = { 1, 2, 7, 11, 14 }
        local rowmask = nc.zeros({ 15, 1 })
        for _, r in ipairs(keep) do rowmask:set(r, 0, 1) end
        local x, w = x0:clone():requires_grad_(), w0:clone():requires_grad_()
        local _, y = with_rows(15, keep, function() return nc.rmsnorm(x, w, 1e-6) end)
        y:backward(gy)
        local xd, wd = x0:clone():requires_grad_(), w0:clone():requires_grad_()
        nc.rmsnorm(xd, wd, 1e-6):backward((gy:reshape { 15, 24 } * rowmask):reshape { 3, 5, 24 })
        assert.is_true(same_bits(x.grad, xd.grad))
        assert.is_true(same_bits(w.grad, wd.grad))
    end)

    it('elementwise unary backward on the kept rows equals the dense one with filtered dY rows zeroed', function()
        local g = nc.generator(6)
        local x0 = nc.randn({ 3, 5, 40 }, { generator = g })
        local gy = nc.randn({ 3, 5, 40 }, { generator = g })
        local keep = { 0, 3, 4, 9, 13 }
        local rowmask = nc.zeros({ 15, 1 })
        for _, r in ipairs(keep) do rowmask:set(r, 0, 1) end
        local gz = (gy:reshape { 15, 40 } * rowmask):reshape { 3, 5, 40 }
        for _, name in ipairs { 'relu2', 'silu', 'sigmoid', 'exp', 'square' } do   -- sigmoid / exp read the output
            local x = x0:clone():requires_grad_()
            local _, y = with_rows(15, keep, function() return nc[name](x) end)
            y:backward(gy)
            local xd = x0:clone():requires_grad_()
            nc[name](xd):backward(gz)
            assert.is_true(same_bits(x.grad, xd.grad), name)
            local z = zero_rows(x.grad:reshape { 15, 40 })
            local m = rowmask:totable()
            for r = 0, 14 do assert.are.equal(m[r + 1][1] == 0, z[r] == true, name .. ' row ' .. r) end
        end
        -- another row count: dense
        local x = x0:clone():requires_grad_()
        local _, y = with_rows(16, { 0 }, function() return nc.relu2(x) end)
        y:backward(gy)
        local xd = x0:clone():requires_grad_()
        nc.relu2(xd):backward(gy)
        assert.is_true(same_bits(x.grad, xd.grad))
        local ga, gk = nc.zeros { 15, 40 }, nc.tensor({ 2, 1 }, { dtype = 'i64' })
        assert.has_error(function()
            core.check(C.nc_unary_backward_rows(ga._c, nil, x0:reshape { 15, 40 }._c, gy:reshape { 15, 40 }._c,
                C.NC_OP_RELU2, gk._c), 'unary_backward_rows')
        end, 'unary_backward_rows: relu2 backward (rows): keep must list strictly increasing rows in [0, 15), got 1 at position 1')
    end)

    it('rope backward on the kept tokens equals the dense one with filtered dY rows zeroed', function()
        local g = nc.generator(8)
        local B, T, H, D = 2, 7, 3, 8
        local x0, gy = nc.randn({ B, T, H, D }, { generator = g }), nc.randn({ B, T, H, D }, { generator = g })
        local cos, sin = nc.rope_tables(T, D)
        local keep = { 0, 2, 3, 8, 12, 13 }
        local rowmask = nc.zeros({ B * T, 1 })
        for _, r in ipairs(keep) do rowmask:set(r, 0, 1) end
        local x = x0:clone():requires_grad_()
        local _, y = with_rows(B * T, keep, function() return nc.rope(x, cos, sin) end)
        y:backward(gy)
        local xd = x0:clone():requires_grad_()
        nc.rope(xd, cos, sin):backward((gy:reshape { B * T, -1 } * rowmask):reshape(gy:shape()))
        assert.is_true(same_bits(x.grad, xd.grad))
        local z = zero_rows(x.grad:reshape { B * T, H * D })
        local m = rowmask:totable()
        for r = 0, B * T - 1 do assert.are.equal(m[r + 1][1] == 0, z[r] == true) end
        assert.has_error(function()
            core.check(C.nc_rope_backward_masked(nc.zeros({ B, T, H, D })._c, gy._c, cos._c, sin._c,
                nc.ones({ B, T + 1 }, { dtype = 'u8' })._c), 'rope_backward_masked')
        end)
    end)

    it('row gather / scatter kernels copy exactly and reject bad row lists', function()
        local src = nc.randn({ 6, 5 }, { generator = nc.generator(2) })
        local st = src:t()   -- a non-contiguous (5, 6) view
        local rows = nc.tensor({ 0, 2, 3 }, { dtype = 'i64' })
        local out = nc.empty { 3, 6 }
        core.check(C.nc_rows_gather(out._c, st._c, rows._c), 'gather')
        local want = nc.index_select(st:contiguous(), 0, rows)
        assert.is_true(same_bits(out, want))
        local dst = nc.full({ 5, 6 }, 7)
        core.check(C.nc_rows_scatter(dst._c, out._c, rows._c, 1), 'scatter')
        local l = dst:totable()
        assert.are.same(out:totable()[2], l[3])
        assert.are.same({ 0, 0, 0, 0, 0, 0 }, l[2])
        assert.are.same({ 0, 0, 0, 0, 0, 0 }, l[5])
        local dst2 = nc.full({ 5, 6 }, 7)
        core.check(C.nc_rows_scatter(dst2._c, out._c, rows._c, 0), 'scatter')
        assert.are.same({ 7, 7, 7, 7, 7, 7 }, dst2:totable()[2])
        assert.has_error(function()
            core.check(C.nc_rows_gather(out._c, st._c, nc.tensor({ 0, 3, 2 }, { dtype = 'i64' })._c), 'rows_gather')
        end, 'rows_gather: rows must be strictly increasing, got 2 after 3 at position 2')
        assert.has_error(function()
            core.check(C.nc_rows_gather(out._c, st._c, nc.tensor({ 0, 3, 5 }, { dtype = 'i64' })._c), 'rows_gather')
        end, 'rows_gather: row 5 out of range [0, 5) at position 2 of rows')
    end)

    it("score = 'excess' ranks by current minus reference loss", function()
        local m = nc.models.gpt.new(micro { seed = 2 })
        local ref = nc.models.gpt.new(micro { seed = 8 })
        local x, y = batch(2, 16, 256, 6)
        local calls = 0
        local spy = { forward = function(_, idx) calls = calls + 1; return ref:forward(idx) end }
        local F = nc.collider.new { rho = 0.5, score = 'excess', ref = spy }
        F:forward(m, x, y)
        assert.are.equal(1, calls)
        local cur, rl = nc.no_grad(function()
            return nc.cross_entropy(m:forward(x), y, { reduction = 'none' }):reshape { -1 }:tolist(),
                nc.cross_entropy(ref:forward(x), y, { reduction = 'none' }):reshape { -1 }:tolist()
        end)
        local order = {}
        for r = 0, 31 do order[r + 1] = r end
        table.sort(order, function(a, b)
            local sa, sb = cur[a + 1] - rl[a + 1], cur[b + 1] - rl[b + 1]
            if sa ~= sb then return sa > sb end
            return a < b
        end)
        local want = {}
        for i = 1, 16 do want[i] = order[i] end
        table.sort(want)
        assert.are.same(want, sorted_keep(F.last))
        -- differs from ranking by the current loss alone (otherwise the test could not tell)
        local Fl = nc.collider.new { rho = 0.5 }
        Fl:forward(m, x, y)
        assert.are_not.same(sorted_keep(Fl.last), sorted_keep(F.last))
    end)

    it('rejects bad input with clear errors', function()
        assert.has_error(function() nc.collider.new { rho = 1 } end,
            'collider.new: rho (the fraction of tokens filtered) must be a number in [0, 1), got 1')
        assert.has_error(function() nc.collider.new { rho = -0.1 } end,
            'collider.new: rho (the fraction of tokens filtered) must be a number in [0, 1), got -0.1')
        assert.has_error(function() nc.collider.new { rho = 'x' } end,
            'collider.new: rho (the fraction of tokens filtered) must be a number in [0, 1), got x')
        assert.has_error(function() nc.collider.new { rho = 0.4, score = 'excess' } end,
            "collider.new: score = 'excess' needs ref (a reference model with forward(idx))")
        assert.has_error(function() nc.collider.new { rho = 0.4, score = 'grad' } end,
            "collider.new: score must be 'loss' or 'excess', got grad")
        assert.has_error(function() nc.collider.new { rho = 0.4, ref = {} } end,
            "collider.new: ref is only used with score = 'excess' (score is 'loss')")
        assert.has_error(function() nc.collider.new { rho = 0.4, keep = 3 } end,
            'collider.new: unknown option keep (rho, score, ref)')
        assert.has_error(function() nc.collider.new(0.4) end, 'collider.new: expected a table of options, got number')
        local F = nc.collider.new { rho = 0.4 }
        local x, y = batch(2, 4, 16, 1)
        assert.has_error(function() F:forward({ forward = function() return nc.zeros {} end }, x, y) end,
            'collider: forward: the model never called opts.collider:select(logits, targets, idx); '
            .. 'it does not support Collider filtering')
        assert.has_error(function() F:forward(nc.models.gpt.new(micro()), x, y:narrow(1, 0, 2)) end,
            'collider: forward: x has 8 tokens, y 4')
        assert.is_nil(ag.row_filter())   -- errors never leave a filter active
    end)

    it('nc.train with collider = F lowers the loss and logs the kept fraction', function()
        local m = nc.models.gpt.new(micro { seed = 4 })
        local x, y = batch(4, 16, 256, 13)
        local function full_loss() return nc.no_grad(function() return m:forward(x, y):item() end) end
        local before = full_loss()
        local F = nc.collider.new { rho = 0.4 }
        local opt = nc.optim.adamw(m:parameters(), { lr = 1e-2 })
        local dir = os.tmpname()
        os.remove(dir)
        local res = nc.train { model = m, optimizer = opt, steps = 15, collider = F, progress = false, log_dir = dir,
                               tensorboard = false, loader = { next = function() return x, y end } }
        assert.are.equal(15, res.step)
        assert.is_true(full_loss() < before - 0.1, 'loss ' .. before .. ' -> ' .. full_loss())
        assert.are.equal(15 * 38, F.kept_total)   -- round(0.6 * 64) kept per step
        local f = assert(io.open(dir .. '/metrics.jsonl'))
        local text = f:read('*a')
        f:close()
        os.execute('rm -rf ' .. dir)
        assert.is_truthy(text:find('"kept_frac":0.59375', 1, true))
    end)
end)
