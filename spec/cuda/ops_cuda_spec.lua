-- spec/cuda/ops_cuda_spec.lua — the nn ops of the CUDA backend (kernels/cuda/nn.cu, API 4) against the
-- CPU kernels on the same inputs, through the same Lua ops and C entry points.
--
-- Promise:
--  - Without a GPU (runs everywhere): the device checks of the fourteen entry points run before any
--    CUDA call or data access, so they are tested with tensor headers that claim the CUDA device over
--    host storage: one CUDA operand among CPU ones is NC_ERR_DEVICE naming the op and a CPU operand
--    (output untouched); all-CUDA operands are the clean "op: the tensors are on cuda but <why>"
--    NC_ERR_DEVICE (no crash); a CPU-only op (rows_gather) on CUDA names itself; moving a model to
--    'cuda' is a Lua error carrying nc.cuda_status().
--  - With a GPU (pending otherwise, with nc.cuda_status()'s reason): every op's forward and (through
--    autograd, loss = sum(out * r)) backward on CUDA equals the CPU within the stated tolerance:
--    embedding (i32 / i64, repeated ids), rope (strided x), quant_act exactly (EXACT); softmax / log-
--    softmax (last and strided dim), rmsnorm (with
--    and without weight, strided x), quant_weight (per tensor and grouped), cross-entropy (ignore
--    index, label smoothing, z-loss, i32 targets) and causal / full GQA attention (T not a multiple
--    of the tiles, decode T = 1, cross S != T) within their tolerances; and a configs/models/tiny.lua
--    GPT's loss and every parameter gradient on CUDA agree with the CPU's; nc.train trains a micro GPT
--    on CUDA from CPU batches (first loss = the CPU's within E2E_LOSS_RTOL; the loss descends);
--    KV-cached decoding on CUDA matches the CPU's logits and nc.generate runs on a CUDA model.
package.path = 'lua/?.lua;lua/?/init.lua;spec/helpers/?.lua;' .. package.path
local nc = require 'nanochat'
local core = require 'nanochat.core'
local C, ffi = core.C, core.ffi

-- Tolerances: |cuda - cpu| <= RTOL * max(1, |cpu|) per element (values of order 1 here).
local EXACT = 0            -- same f32 operations in the same order (embedding, rope, quant_act, STE grads)
local NORM_RTOL = 1e-6     -- rmsnorm: double sums in tree vs sequential order, then one f32 rounding (~1 ulp)
local QUANT_W_RTOL = 1e-6  -- absmean: gamma from a double tree sum (last-bit differences at most)
local CE_RTOL = 1e-5       -- cross-entropy: f32 max / exp-sum / sum in tree order, CUDA logf (few ulp of lse)
local SOFTMAX_RTOL = 1e-6  -- softmax: exp-sum in double (tree order), the CPU's exp; backward f32 row sums
local ATTN_RTOL = 1e-4     -- attention: f32 dot products, softmax sums and D = rowsum(dO O) in other orders
-- End to end (tiny GPT): a one-ulp difference before an int8 / ternary rounding can flip one
-- quantized value (a step of max|x|/127), so whole-model results get a norm-wise tolerance.
local E2E_LOSS_RTOL = 1e-3
local E2E_GRAD_REL = 2e-2  -- ||g_cuda - g_cpu|| / ||g_cpu|| per parameter tensor

local CU = require 'cuda_helpers'
local HAVE_CUDA, WHY = CU.HAVE_CUDA, CU.WHY

local gpu_it = CU.gpu_it   -- pending (inside the test) without a GPU

local function last_error() return ffi.string(C.nc_last_error()) end

local seed = 9100
local function randn(shape, std)
    seed = seed + 1
    return nc.randn(shape, { generator = nc.generator(seed), std = std or 1 })
end
local function ids(shape, V, dtype)
    seed = seed + 1
    return nc.rand(shape, { generator = nc.generator(seed), lo = 0, hi = V }):to(dtype or 'i64')
end

local function shape_str(t) return '(' .. table.concat(t:shape(), ', ') .. ')' end

local function assert_close(got, want, rtol, what)
    assert.same(want:shape(), got:shape(), what .. ': shape')
    local g, w = got:to('cpu'):tolist(), want:to('cpu'):tolist()
    for i = 1, #w do
        local a, b = g[i], w[i]
        local ok
        if a ~= a or b ~= b then ok = (a ~= a) and (b ~= b)
        elseif a == b then ok = true
        else ok = math.abs(a - b) <= rtol * math.max(1, math.abs(b)) end
        if not ok then
            error(string.format('%s: element %d (of %d, shape %s): cuda %.9g vs cpu %.9g (tolerance %g)', what, i, #w,
                shape_str(want), a, b, rtol), 2)
        end
    end
end

-- Runs fn(args...) on the CPU inputs and on CUDA copies. Tensors in `inputs` marked grad = true get
-- gradients of sum(out * r) (r fixed random), compared on both devices with rtol (grad_rtol).
local function both(what, inputs, fn, rtol, grad_rtol)
    local cpu, dev = {}, {}
    for i, x in ipairs(inputs) do
        local t = x.t or x
        cpu[i] = t:clone()
        dev[i] = t:to('cuda')
        if x.grad then cpu[i]:requires_grad_(true); dev[i]:requires_grad_(true) end
    end
    local oc, od = fn(table.unpack(cpu)), fn(table.unpack(dev))
    assert.are.equal('cuda', od:device(), what .. ': output device')
    assert_close(od, oc, rtol, what .. ' forward')
    local any = false
    for _, x in ipairs(inputs) do any = any or x.grad end
    if not any then return end
    local r = randn(oc:shape())
    local lc = oc:dim() == 0 and oc or (oc * r):sum()
    local ld = od:dim() == 0 and od or (od * r:to('cuda')):sum()
    lc:backward(); ld:backward()
    for i, x in ipairs(inputs) do
        if x.grad then assert_close(dev[i].grad, cpu[i].grad, grad_rtol or rtol, what .. ' grad of input ' .. i) end
    end
end

-- ---- without a GPU: device checks -----------------------------------------------------------------
-- A header that claims `device` over t's host storage (cuda_helpers.claim). Only ever passed to
-- entry points whose device check fails before any data is read.
local claim = CU.claim

describe('CUDA nn ops without a GPU: dispatch and device errors', function()
    local B, T, H, Hkv, D, V, E = 2, 5, 4, 2, 8, 11, 6
    local x = randn({ B, T, E })
    local w = randn({ E })
    local rstd, out = nc.zeros({ B * T }), nc.zeros({ B, T, E })
    local qx, qo = randn({ B, T, H, D }), nc.zeros({ B, T, H, D })
    local cs, sn = nc.rope_tables(T, D)
    local k, v = randn({ B, T, Hkv, D }), randn({ B, T, Hkv, D })
    local alse = nc.zeros({ B, H, T })
    local emb, idx, eout = randn({ V, E }), ids({ B, T }, V), nc.zeros({ B, T, E })
    local logits, tg, lse, loss = randn({ B * T, V }), ids({ B * T }, V), nc.zeros({ B * T }), nc.zeros({})
    local wq, wscale = nc.zeros({ V, E }), nc.zeros({ 1 })
    local ascale = nc.zeros({ B * T })

    -- op name, the C call taking d(tensor, name) -> header, the output whose bytes must not change,
    -- the operand put on cuda in the mixed case
    local cases = {
        { 'embedding', function(d) return C.nc_embedding(d(eout, 'out'), d(emb, 'weight'), d(idx, 'idx')) end, eout, 'idx' },
        { 'embedding backward', function(d) return C.nc_embedding_backward(d(emb, 'gweight'), d(idx, 'idx'), d(eout, 'gout')) end, emb, 'gout' },
        { 'rmsnorm', function(d) return C.nc_rmsnorm(d(out, 'out'), d(rstd, 'rstd'), d(x, 'x'), d(w, 'weight'), 1e-6) end, out, 'weight' },
        { 'rmsnorm_backward', function(d)
            return C.nc_rmsnorm_backward(d(out, 'gx'), d(w, 'gweight'), d(x, 'x'), d(w, 'weight'), d(rstd, 'rstd'), d(x, 'gout'))
        end, out, 'rstd' },
        { 'rope', function(d) return C.nc_rope(d(qo, 'out'), d(qx, 'x'), d(cs, 'cos'), d(sn, 'sin')) end, qo, 'sin' },
        { 'rope_backward', function(d) return C.nc_rope_backward(d(qo, 'gx'), d(qx, 'gout'), d(cs, 'cos'), d(sn, 'sin')) end, qo, 'gout' },
        { 'quant_weight_absmean', function(d) return C.nc_quant_weight_absmean(d(wq, 'out'), d(wscale, 'scale'), d(emb, 'w'), 0, 1e-5) end, wq, 'w' },
        { 'quant_act_absmax', function(d) return C.nc_quant_act_absmax(d(out, 'out'), d(ascale, 'scale'), d(x, 'x'), 1e-5) end, out, 'scale' },
        { 'cross_entropy', function(d)
            return C.nc_cross_entropy(d(loss, 'loss'), d(lse, 'lse'), d(logits, 'logits'), d(tg, 'targets'), -1, 0.1, 1e-4)
        end, lse, 'targets' },
        { 'cross_entropy_backward', function(d)
            return C.nc_cross_entropy_backward(d(logits, 'glogits'), d(lse, 'lse'), d(logits, 'logits'), d(tg, 'targets'), 1, -1, 0, 0)
        end, logits, 'lse' },
        { 'attention', function(d)
            return C.nc_attention(d(qo, 'out'), d(alse, 'lse'), d(qx, 'q'), d(k, 'k'), d(v, 'v'), 1, 0.35)
        end, qo, 'v' },
        { 'attention_backward', function(d)
            return C.nc_attention_backward(d(qo, 'gq'), d(k, 'gk'), d(v, 'gv'), d(qx, 'out'), d(alse, 'lse'), d(qx, 'q'),
                d(k, 'k'), d(v, 'v'), d(qx, 'gout'), 1, 0.35)
        end, qo, 'gout' },
        { 'softmax', function(d) return C.nc_softmax(d(out, 'out'), d(x, 'a'), 1) end, out, 'a' },
        { 'softmax_backward', function(d) return C.nc_softmax_backward(d(out, 'ga'), d(x, 'out'), d(x, 'gout'), 0) end, out, 'gout' },
    }

    it('one cuda operand among cpu ones is NC_ERR_DEVICE naming the op and a cpu operand; output untouched', function()
        for _, cs_ in ipairs(cases) do
            local op, call, watched, wrong = cs_[1], cs_[2], cs_[3], cs_[4]
            local before = watched:tolist()
            local st = call(function(t, name) return name == wrong and claim(t, C.NC_CUDA) or t._c end)
            assert.are.equal(C.NC_ERR_DEVICE, st, op .. ': status')
            local msg = last_error()
            assert.truthy(msg:find(op .. ': expected ', 1, true), op .. ': ' .. msg)
            assert.truthy(msg:find(' on cuda, got ', 1, true), op .. ': ' .. msg)
            assert.are.same(before, watched:tolist(), op .. ': output changed')
        end
    end)

    it('all-cuda operands without a GPU are the clean "the tensors are on cuda but" error (no crash)', function()
        if HAVE_CUDA then
            pending('a GPU is present: these headers over host memory must not reach the kernels')
            return
        end
        for _, cs_ in ipairs(cases) do
            local st = cs_[2](function(t) return claim(t, C.NC_CUDA) end)
            assert.are.equal(C.NC_ERR_DEVICE, st, cs_[1])
            assert.matches(cs_[1] .. ': the tensors are on cuda but ', last_error(), 1, true)
        end
        -- and through the Lua wrapper: a Lua error carrying the message
        local ok, err = pcall(core.check, cases[3][2](function(t) return claim(t, C.NC_CUDA) end), 'rmsnorm')
        assert.is_false(ok)
        assert.matches('rmsnorm: the tensors are on cuda but', tostring(err), 1, true)
    end)

    it('a CPU-only op on cuda tensors names itself (rows_gather) and the kept-rows norm backward', function()
        local src, rows = randn({ 4, 3 }), nc.tensor({ 0, 2 }):to('i64')
        local o = nc.zeros({ 2, 3 })
        local st = C.nc_rows_gather(claim(o, C.NC_CUDA), claim(src, C.NC_CUDA), rows._c)
        assert.are_not.equal(C.NC_OK, st)
        assert.matches('rows_gather', last_error(), 1, true)
        local kr = nc.tensor({ 1 }):to('i64')
        local d = function(t) return claim(t, C.NC_CUDA) end
        st = C.nc_rmsnorm_backward_rows(d(out), d(w), d(x), d(w), d(rstd), d(x), d(kr))
        if HAVE_CUDA then
            assert.are.equal(C.NC_ERR_UNSUPPORTED, st)
            assert.matches('no CUDA kernel for the kept%-rows', last_error())
        else
            assert.are_not.equal(C.NC_OK, st)
            assert.matches('rmsnorm_backward_rows', last_error(), 1, true)
        end
    end)

    it('moving a model to cuda without a GPU is a Lua error with the reason', function()
        if HAVE_CUDA then pending('a GPU is present') return end
        local m = nc.models.gpt.new(require('model_fixtures').micro())
        local ok, err = pcall(function() m:to('cuda') end)
        assert.is_false(ok)
        assert.truthy(#tostring(err) > 0)
        assert.is_nil(tostring(err):find('segmentation', 1, true))
    end)
end)

-- ---- with a GPU: every op against the CPU ---------------------------------------------------------
describe('CUDA nn ops vs the CPU (GPU only)', function()
    gpu_it('embedding forward and scatter-add backward (i64 and i32 ids, repeats): exact', function()
        for _, dt in ipairs({ 'i64', 'i32' }) do
            local idx = ids({ 3, 17 }, 7, dt)   -- 51 ids over 7 rows: many repeats
            both('embedding ' .. dt, { { t = randn({ 7, 40 }), grad = true } },
                function(w) return nc.embedding(w:device() == 'cuda' and idx:to('cuda') or idx, w) end, EXACT)
        end
    end)

    gpu_it('embedding: an out-of-range id is the CPU\'s NC_ERR_INDEX message', function()
        local w = randn({ 5, 4 }):to('cuda')
        local bad = nc.tensor({ 1, 5 }):to('i64'):to('cuda')
        local ok, err = pcall(nc.embedding, bad, w)
        assert.is_false(ok)
        assert.matches('index 5 out of range [0, 5)', tostring(err), 1, true)
    end)

    gpu_it('rmsnorm forward / backward with and without weight, contiguous and strided x', function()
        both('rmsnorm w', { { t = randn({ 3, 7, 300 }), grad = true }, { t = randn({ 300 }), grad = true } },
            function(x, w) return nc.rmsnorm(x, w, 1e-6) end, NORM_RTOL)
        both('rmsnorm', { { t = randn({ 5, 33 }), grad = true } }, function(x) return nc.rmsnorm(x, nil, 1e-5) end, NORM_RTOL)
        both('rmsnorm strided', { { t = randn({ 40, 6 }), grad = true }, { t = randn({ 40 }), grad = true } },
            function(x, w) return nc.rmsnorm(x:transpose(0, 1), w) end, NORM_RTOL)
    end)

    gpu_it('rope forward / backward (contiguous and permuted x): exact', function()
        local cs, sn = nc.rope_tables(9, 16)
        both('rope', { { t = randn({ 2, 9, 3, 16 }), grad = true } }, function(x)
            local c, s = cs, sn
            if x:device() == 'cuda' then c, s = cs:to('cuda'), sn:to('cuda') end
            return nc.rope(x, c, s)
        end, EXACT)
        both('rope strided', { { t = randn({ 2, 3, 9, 16 }), grad = true } }, function(x)
            local c, s = cs, sn
            if x:device() == 'cuda' then c, s = cs:to('cuda'), sn:to('cuda') end
            return nc.rope(x:permute { 0, 2, 1, 3 }, c, s)
        end, EXACT)
    end)

    gpu_it('quant_act (exact) and quant_weight per tensor / grouped, with their STE gradients', function()
        both('quant_act', { { t = randn({ 6, 129 }, 3), grad = true } }, function(x) return (nc.quant_act(x)) end, EXACT)
        both('quant_weight', { { t = randn({ 48, 70 }, 0.05), grad = true } }, function(w) return (nc.quant_weight(w)) end,
            QUANT_W_RTOL, EXACT)
        both('quant_weight grouped', { { t = randn({ 48, 70 }, 0.05), grad = true } },
            function(w) return (nc.quant_weight(w, { group_size = 70 })) end, QUANT_W_RTOL, EXACT)
        -- the scales themselves
        local w = randn({ 33, 20 }, 0.1)
        local _, sc = nc.quant_weight(w, { group_size = 20 })
        local _, sd = nc.quant_weight(w:to('cuda'), { group_size = 20 })
        assert_close(sd, sc, QUANT_W_RTOL, 'absmean scales')
        local _, ac = nc.quant_act(w)
        local _, ad = nc.quant_act(w:to('cuda'))
        assert_close(ad, ac, EXACT, 'absmax scales')
    end)

    gpu_it('cross-entropy: plain, ignore_index, label smoothing, z-loss, i32 targets (loss and gradient)', function()
        local N, V = 37, 1000
        local tg = ids({ N }, V)
        local tl = tg:tolist()
        tl[3], tl[20] = -100, -100
        local tig = nc.tensor(tl):to('i64')
        for _, case in ipairs({
            { 'plain', tg, {} },
            { 'ignore+ls+z', tig, { ignore_index = -100, label_smoothing = 0.1, z_loss = 1e-3 } },
            { 'i32', tg:to('i32'), { label_smoothing = 0.05 } },
        }) do
            local name, t, o = case[1], case[2], case[3]
            both('cross_entropy ' .. name, { { t = randn({ N, V }, 2), grad = true } }, function(l)
                return nc.cross_entropy(l, l:device() == 'cuda' and t:to('cuda') or t, o)
            end, CE_RTOL)
        end
        local ok, err = pcall(nc.cross_entropy, randn({ 2, 5 }):to('cuda'), nc.tensor({ 1, 7 }):to('i64'):to('cuda'))
        assert.is_false(ok)
        assert.matches('target 7 at row 1 is outside [0, 5)', tostring(err), 1, true)
    end)

    gpu_it('softmax and log-softmax forward / backward (last dim and a strided dim, wide rows)', function()
        for _, lg in ipairs({ false, true }) do
            local f = lg and nc.log_softmax or nc.softmax
            local name = lg and 'log_softmax' or 'softmax'
            both(name, { { t = randn({ 7, 1500 }, 3), grad = true } }, function(x) return f(x, -1) end, SOFTMAX_RTOL)
            both(name .. ' dim 0', { { t = randn({ 9, 5 }), grad = true } }, function(x) return f(x, 0) end, SOFTMAX_RTOL)
        end
    end)

    gpu_it('attention: causal GQA, odd T, decode T = 1, full cross S != T, D = 16 / 64 / 128', function()
        local cases = {
            { 'causal gqa', 2, 37, 37, 4, 2, 16, true },
            { 'causal mha D64', 1, 70, 70, 2, 2, 64, true },
            { 'decode', 2, 1, 9, 4, 1, 16, true },
            { 'cross', 1, 5, 40, 4, 2, 32, false },
            { 'causal D128', 1, 33, 33, 2, 1, 128, true },
        }
        for _, c in ipairs(cases) do
            local name, B, T, S, H, Hkv, D, causal = table.unpack(c)
            both('attention ' .. name, {
                { t = randn({ B, T, H, D }), grad = true }, { t = randn({ B, S, Hkv, D }), grad = true },
                { t = randn({ B, S, Hkv, D }), grad = true },
            }, function(q, k, v) return nc.attention(q, k, v, { causal = causal }) end, ATTN_RTOL)
        end
        -- strided q (a transpose view) takes the strided path
        both('attention strided q', { { t = randn({ 1, 4, 21, 16 }), grad = true }, { t = randn({ 1, 21, 2, 16 }) },
            { t = randn({ 1, 21, 2, 16 }) } },
            function(q, k, v) return nc.attention(q:transpose(1, 2), k, v) end, ATTN_RTOL)
    end)

    gpu_it('tiny GPT (configs/models/tiny.lua): loss and every gradient on cuda match the cpu', function()
        local cfg = nc.models.config('tiny', { seq_len = 64 })
        local mc = nc.models.gpt.new(cfg)
        local md = nc.models.gpt.new(cfg)
        md:to('cuda')
        local Fx = require 'model_fixtures'
        local x, y = Fx.batch(2, 64, cfg.vocab_size)
        local opts = { z_loss = 1e-4, label_smoothing = 0.1 }
        local lc = mc:forward(x, y, opts)
        local ld = md:forward(x:to('cuda'), y:to('cuda'), opts)
        assert.are.equal('cuda', ld:device())
        local a, b = ld:item(), lc:item()
        assert.truthy(math.abs(a - b) <= E2E_LOSS_RTOL * math.abs(b), string.format('loss cuda %.7g vs cpu %.7g', a, b))
        lc:backward(); ld:backward()
        local pc, pd = mc:named_parameters(), md:named_parameters()
        local n = 0
        assert.are.equal(#pc, #pd)
        for i, e in ipairs(pc) do
            local name = e[1]
            assert.are.equal(name, pd[i][1])
            local gc, gd = e[2].grad, pd[i][2].grad
            assert.truthy(gc and gd, name .. ': missing gradient')
            assert.are.equal('cuda', gd:device(), name)
            local diff = (gd:to('cpu') - gc)
            local num, den = math.sqrt((diff * diff):sum():item()), math.sqrt((gc * gc):sum():item())
            assert.truthy(num <= E2E_GRAD_REL * math.max(den, 1e-12),
                string.format('%s: ||g_cuda - g_cpu|| / ||g_cpu|| = %.3g', name, num / math.max(den, 1e-30)))
            n = n + 1
        end
        assert.truthy(n > 10)
    end)

    gpu_it('KV-cached decoding on cuda: logits match the cpu\'s (norm-wise) and nc.generate runs there', function()
        local Fx = require 'model_fixtures'
        local cfg = Fx.micro()
        local mc, md = nc.models.gpt.new(cfg), nc.models.gpt.new(cfg)
        md:to('cuda')
        local cc, cd = mc:new_cache(1, 12), md:new_cache(1, 12)
        local steps = { { 3, 1, 4, 1, 5 }, { 9 }, { 2 }, { 6 } }
        for i, ids_ in ipairs(steps) do
            local idx = nc.tensor({ ids_ }, { dtype = 'i64' })
            local lc = nc.no_grad(function() return mc:forward_cached(idx, cc) end)
            local ld = nc.no_grad(function() return md:forward_cached(idx:to('cuda'), cd) end)
            assert.are.equal('cuda', ld:device())
            local diff = ld:to('cpu') - lc
            local num, den = math.sqrt((diff * diff):sum():item()), math.sqrt((lc * lc):sum():item())
            assert.truthy(num <= E2E_GRAD_REL * den, string.format('step %d: relative logits error %.3g', i, num / den))
        end
        local got = {}
        for id in nc.generate(md, { 1, 2, 3 }, { max_tokens = 5, temperature = 0 }) do got[#got + 1] = id end
        assert.are.equal(5, #got)
        for _, id in ipairs(got) do assert.truthy(id >= 0 and id < cfg.vocab_size) end
    end)

    gpu_it('nc.train runs a micro GPT on cuda (batches moved to the model): the CPU\'s first loss, and it descends', function()
        local Fx = require 'model_fixtures'
        local cfg = Fx.micro()
        local x, y = Fx.batch(4, 16, cfg.vocab_size)
        local function run(dev)
            local m = nc.models.gpt.new(cfg)
            if dev ~= 'cpu' then m:to(dev) end
            local opt = nc.optim.adamw(m:parameters(), { lr = 3e-3 })
            local L = { next = function() return x, y end }   -- cpu batches; nc.train moves them
            return nc.train { model = m, optimizer = opt, loader = L, steps = 4, progress = false, clip = 1.0 }
        end
        local rc, rd = run('cpu'), run('cuda')
        assert.are.equal(4, rd.step)
        assert.truthy(math.abs(rd.losses[1] - rc.losses[1]) <= E2E_LOSS_RTOL * rc.losses[1],
            string.format('first loss cuda %.7g vs cpu %.7g', rd.losses[1], rc.losses[1]))
        assert.truthy(rd.losses[4] < rd.losses[1], 'cuda loss did not descend')
    end)
end)
