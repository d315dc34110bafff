-- spec/nn_spec.lua — nc.nn: Module registration and order, state dicts (also through
-- nc.save/nc.load), modes, gradients, and the Linear / Embedding / RMSNorm layers against float64
-- references computed here in Lua.
package.path = 'lua/?.lua;lua/?/init.lua;' .. package.path
local nc = require 'nanochat'

local F32_ATOL = 1e-5   -- f32 layer output vs float64 reference, values of order 1
local F32_RTOL = 1e-5

local function close(got, want, what)
    if type(got) == 'table' and got._c then got = got:tolist() end
    assert.are.equal(#want, #got, (what or '') .. ': length')
    local worst, wi = 0, 0
    for i = 1, #want do
        local e = math.abs(got[i] - want[i]) - F32_RTOL * math.abs(want[i])
        if e ~= e then e = math.huge end
        if e > worst then worst, wi = e, i end
    end
    assert(worst <= F32_ATOL, string.format('%s: element %d: got %.9g, want %.9g', what or 'values', wi,
        got[wi] or 0 / 0, want[wi] or 0 / 0))
end

local function names_of(list)
    local out = {}
    for i, nv in ipairs(list) do out[i] = nv[1] end
    return out
end

-- a two-level test network: registration order is fc1, scale, block (norm, proj), head, steps
local Block = nc.nn.Module:extend('Block')
function Block:init(d)
    self.norm = nc.nn.RMSNorm(d)
    self.proj = nc.nn.Linear(d, d, { bias = false })
end
function Block:forward(x) return self.proj(self.norm(x)) end

local Net = nc.nn.Module:extend('Net')
function Net:init(d, out)
    self.fc1 = nc.nn.Linear(d, 2 * d)
    self:param('scale', nc.ones { 2 * d })
    self.block = Block(2 * d)
    self:buffer('steps', nc.zeros({ 1 }, { dtype = 'i64' }))
    self:buffer('cache', nc.zeros { 3 }, { persistent = false })
    self.head = nc.nn.Linear(2 * d, out)
    self.not_a_param = nc.zeros { 5 }     -- plain state: a tensor never registered
end
function Net:forward(x) return self.head(self.block(self.fc1(x))) end

describe('nc.nn.Module', function()
    it('builds subclasses with init/forward; calling an instance calls forward', function()
        local Double = nc.nn.Module:extend('Double')
        function Double:init(k) self.k = k end
        function Double:forward(x, y) return x * self.k + (y or 0) end
        local m = Double(3)
        assert.are.equal(7, m(2, 1))
        assert.are.equal(6, Double.new(3):forward(2))
        assert.are.equal('Double()', tostring(m))
        -- a subclass of a subclass inherits methods and metamethods
        local Triple = Double:extend('Triple')
        function Triple:init() Double.init(self, 3) end
        local t = Triple()
        assert.are.equal(9, t(3))
        assert.are.equal(Double, Triple.super)
        assert.is_true(nc.nn.is_module(t))
        assert.is_false(nc.nn.is_module(Triple))
        local ok, err = pcall(function() return nc.nn.Module()(1) end)
        assert.is_false(ok)
        assert.is_truthy(tostring(err):find('must define forward', 1, true))
    end)

    it('lists parameters in registration order with dotted names', function()
        nc.manual_seed(7)
        local net = Net(4, 3)
        assert.are.same({ 'fc1.weight', 'fc1.bias', 'scale', 'block.norm.weight', 'block.proj.weight',
                          'head.weight', 'head.bias' }, names_of(net:named_parameters()))
        local params = net:parameters()
        assert.are.equal(7, #params)
        assert.are.equal(net.fc1.weight, params[1])
        assert.are.equal(net.head.bias, params[7])
        for _, p in ipairs(params) do assert.is_true(p.requires_grad) end
        assert.are.equal(8 * 4 + 8 + 8 + 8 + 8 * 8 + 3 * 8 + 3, net:num_params())
        assert.are.same({ 'steps', 'cache' }, names_of(net:named_buffers()))
        assert.are.same({ 'fc1', 'block', 'block.norm', 'block.proj', 'head' }, names_of(net:named_modules()))
        -- the order is stable across instances
        assert.are.same(names_of(net:named_parameters()), names_of(Net(4, 3):named_parameters()))
    end)

    it('sees replaced fields, lists a shared tensor once, and rejects bad names', function()
        nc.manual_seed(1)
        local net = Net(2, 2)
        local w = nc.zeros({ 2, 4 }):requires_grad_()
        net.head.weight = w                          -- plain reassignment of a registered param
        assert.are.equal(w, net:state_dict()['head.weight'])
        net.block.proj.weight = net.block.proj.weight   -- no duplicate registration
        local tied = nc.nn.Module()
        tied.a = nc.nn.Linear(2, 2, { bias = false })
        tied.b = nc.nn.Linear(2, 2, { bias = false })
        tied.b.weight = tied.a.weight
        assert.are.same({ 'a.weight' }, names_of(tied:named_parameters()))
        local sd = tied:state_dict()
        assert.are.equal(sd['a.weight'], sd['b.weight'])
        local m = nc.nn.Module()
        for _, bad in ipairs { 'a.b', '', '_x', 'forward', 'training' } do
            local ok = pcall(m.param, m, bad, nc.zeros { 1 })
            assert.is_false(ok, 'accepted name ' .. bad)
        end
        assert.is_false((pcall(m.param, m, 'w', 3)))
        assert.is_false((pcall(m.add, m, 'w', nc.zeros { 1 })))
    end)

    it('supports ModuleList and Sequential with numbered children', function()
        nc.manual_seed(3)
        local layers = nc.nn.ModuleList { nc.nn.Linear(3, 3), nc.nn.Linear(3, 3, { bias = false }) }
        layers:append(nc.nn.RMSNorm(3))
        assert.are.equal(3, #layers)
        local Stack = nc.nn.Module:extend('Stack')
        function Stack:init() self.h = layers end
        assert.are.same({ 'h.0.weight', 'h.0.bias', 'h.1.weight', 'h.2.weight' }, names_of(Stack():named_parameters()))
        local seq = nc.nn.Sequential(nc.nn.Linear(3, 4), nc.nn.Linear(4, 2))
        assert.are.same({ '0.weight', '0.bias', '1.weight', '1.bias' }, names_of(seq:named_parameters()))
        local x = nc.randn { 5, 3 }
        close(seq(x), seq[2](seq[1](x)):tolist(), 'sequential')
        assert.are.same({ 5, 2 }, seq(x):shape())
    end)

    it('switches train/eval recursively', function()
        local net = Net(2, 2)
        assert.is_true(net.training)
        assert.are.equal(net, net:eval())
        for _, m in ipairs(net:modules()) do assert.is_false(m.training) end
        assert.is_false(net.training)
        net:train()
        assert.is_true(net.block.norm.training)
        net:train(false)
        assert.is_false(net.block.proj.training)
    end)

    it('zero_grad drops gradients, or zeroes them in place with set_to_none = false', function()
        local net = Net(2, 2)
        for _, p in ipairs(net:parameters()) do p.grad = nc.ones(p:shape()) end
        local g = net.fc1.weight.grad
        net:zero_grad { set_to_none = false }
        assert.are.equal(g, net.fc1.weight.grad)
        for _, p in ipairs(net:parameters()) do
            for _, v in ipairs(p.grad:tolist()) do assert.are.equal(0, v) end
        end
        net:zero_grad()
        for _, p in ipairs(net:parameters()) do assert.is_nil(p.grad) end
    end)

    it('round-trips state_dict through nc.save / nc.load', function()
        nc.manual_seed(11)
        local a = Net(3, 2)
        a.steps:fill_(42)
        nc.manual_seed(12)
        local b = Net(3, 2)
        assert.are_not.same(a.fc1.weight:tolist(), b.fc1.weight:tolist())
        local sd = a:state_dict()
        assert.is_nil(sd.cache)                      -- non-persistent buffer
        assert.is_nil(sd.not_a_param)
        assert.are.equal(a.steps, sd.steps)
        local path = os.tmpname()
        nc.save(path, sd, { step = 5 })
        local loaded, meta = nc.load(path)
        os.remove(path)
        assert.are.equal('5', meta.step)
        local w_before = b.fc1.weight
        local res = b:load_state_dict(loaded)
        assert.are.same({ missing = {}, unexpected = {} }, res)
        assert.are.equal(w_before, b.fc1.weight)     -- copied in place: same tensor object
        assert.is_true(b.fc1.weight.requires_grad)
        for name, t in pairs(a:state_dict()) do
            assert.are.same(t:tolist(), b:state_dict()[name]:tolist(), name)
        end
        assert.are.equal(42, b.steps:item())
        local x = nc.randn { 2, 3 }
        assert.are.same(a(x):tolist(), b(x):tolist())
    end)

    it('load_state_dict names the key and the shapes on mismatch, missing or unexpected keys', function()
        local net = Net(2, 2)
        local sd = {}
        for k, v in pairs(net:state_dict()) do sd[k] = v:clone() end

        local bad = {}
        for k, v in pairs(sd) do bad[k] = v end
        bad['head.weight'] = nc.zeros { 4, 2 }
        local ok, err = pcall(net.load_state_dict, net, bad)
        assert.is_false(ok)
        err = tostring(err)
        assert.is_truthy(err:find('shape mismatch for head.weight', 1, true), err)
        assert.is_truthy(err:find('(2, 4)', 1, true), err)
        assert.is_truthy(err:find('(4, 2)', 1, true), err)

        local missing = {}
        for k, v in pairs(sd) do missing[k] = v end
        missing['block.norm.weight'] = nil
        ok, err = pcall(net.load_state_dict, net, missing)
        assert.is_false(ok)
        assert.is_truthy(tostring(err):find('missing key block.norm.weight (the model expects shape (4))', 1, true), tostring(err))

        local extra = {}
        for k, v in pairs(sd) do extra[k] = v end
        extra['head.extra'] = nc.zeros { 3 }
        ok, err = pcall(net.load_state_dict, net, extra)
        assert.is_false(ok)
        assert.is_truthy(tostring(err):find('unexpected key head.extra (shape (3))', 1, true), tostring(err))

        -- a failed load changes nothing
        local before = net.fc1.weight:tolist()
        bad['fc1.weight'] = nc.ones { 4, 2 }
        assert.is_false((pcall(net.load_state_dict, net, bad)))
        assert.are.same(before, net.fc1.weight:tolist())

        -- non-strict: reports instead of failing, loads what matches
        missing['fc1.weight'] = nc.ones { 4, 2 }
        missing['zzz'] = nc.zeros { 1 }
        local res = net:load_state_dict(missing, { strict = false })
        assert.are.same({ 'block.norm.weight' }, res.missing)
        assert.are.same({ 'zzz' }, res.unexpected)
        for _, v in ipairs(net.fc1.weight:tolist()) do assert.are.equal(1, v) end
        -- shape mismatches fail even when not strict
        assert.is_false((pcall(net.load_state_dict, net, bad, { strict = false })))
    end)

    it('to() converts parameters and buffers, keeping trainable f32 leaves', function()
        nc.manual_seed(9)
        local net = Net(2, 2)
        local before = net.fc1.weight:tolist()
        net:to('f64')
        assert.are.equal('f64', net.fc1.weight:dtype())
        assert.are.equal('i64', net.steps:dtype())        -- integer buffers keep their dtype
        net:to('f32')
        assert.are.equal('f32', net.fc1.weight:dtype())
        assert.is_true(net.fc1.weight.requires_grad)
        assert.is_true(net.fc1.weight:is_leaf())
        assert.are.same(before, net.fc1.weight:tolist())
        assert.are.same({ 'fc1.weight', 'fc1.bias', 'scale', 'block.norm.weight', 'block.proj.weight',
                          'head.weight', 'head.bias' }, names_of(net:named_parameters()))
    end)

    it('prints a module tree', function()
        local s = tostring(Net(2, 3))
        assert.is_truthy(s:find('^Net%(\n'), s)
        assert.is_truthy(s:find('(fc1): Linear(in=2, out=4, bias=true)', 1, true), s)
        assert.is_truthy(s:find('  (block): Block(\n    (norm): RMSNorm(4, eps=1e-06, weight=true)', 1, true), s)
        assert.is_truthy(s:find('(head): Linear(in=4, out=3, bias=true)', 1, true), s)
    end)
end)

describe('nc.nn layers', function()
    -- float64 reference y[r][o] = sum_i x[r][i] w[o][i] + b[o] on flat lists
    local function ref_linear(x, w, b, rows, fin, fout)
        local y = {}
        for r = 0, rows - 1 do
            for o = 0, fout - 1 do
                local s = b and b[o + 1] or 0
                for i = 0, fin - 1 do s = s + x[r * fin + i + 1] * w[o * fin + i + 1] end
                y[r * fout + o + 1] = s
            end
        end
        return y
    end

    it('Linear initializes W (out, in) uniformly in +-1/sqrt(in), reproducibly from the seed', function()
        nc.manual_seed(5)
        local l = nc.nn.Linear(9, 40)
        assert.are.same({ 40, 9 }, l.weight:shape())
        assert.are.same({ 40 }, l.bias:shape())
        local bound = 1 / 3
        local sum, n = 0, 0
        for _, v in ipairs(l.weight:tolist()) do
            assert.is_true(v >= -bound and v < bound, 'weight outside the bound: ' .. v)
            sum, n = sum + v, n + 1
        end
        assert.is_true(math.abs(sum / n) < 0.05, 'mean far from 0: ' .. sum / n)
        for _, v in ipairs(l.bias:tolist()) do assert.is_true(v >= -bound and v < bound) end
        nc.manual_seed(5)
        assert.are.same(l.weight:tolist(), nc.nn.Linear(9, 40).weight:tolist())
        assert.is_nil(nc.nn.Linear(9, 4, { bias = false }).bias)
        assert.are.same({ 'weight' }, names_of(nc.nn.Linear(9, 4, { bias = false }):named_parameters()))
    end)

    it('Linear forward matches the float64 reference (2-D, 3-D, transposed input, no bias)', function()
        nc.manual_seed(21)
        local l = nc.nn.Linear(7, 5)
        local w, b = l.weight:tolist(), l.bias:tolist()
        local x = nc.randn { 3, 7 }
        close(l(x), ref_linear(x:tolist(), w, b, 3, 7, 5), 'linear 2-D')
        local x3 = nc.randn { 2, 3, 7 }
        local y3 = l(x3)
        assert.are.same({ 2, 3, 5 }, y3:shape())
        close(y3, ref_linear(x3:tolist(), w, b, 6, 7, 5), 'linear 3-D')
        local xt = nc.randn { 7, 4 }:t()            -- (4, 7), strided
        close(l(xt), ref_linear(xt:tolist(), w, b, 4, 7, 5), 'linear transposed input')
        local nb = nc.nn.Linear(7, 5, { bias = false })
        close(nb(x), ref_linear(x:tolist(), nb.weight:tolist(), nil, 3, 7, 5), 'linear no bias')
    end)

    it('Linear backward gives dW = gy^T x and db = column sums of gy', function()
        nc.manual_seed(22)
        local l = nc.nn.Linear(3, 2)
        local x = nc.randn { 4, 3 }
        local gy = nc.randn { 4, 2 }
        l(x):backward(gy)
        local xs, gs = x:tolist(), gy:tolist()
        local gw, gb = {}, {}
        for o = 0, 1 do
            local sb = 0
            for r = 0, 3 do sb = sb + gs[r * 2 + o + 1] end
            gb[o + 1] = sb
            for i = 0, 2 do
                local s = 0
                for r = 0, 3 do s = s + gs[r * 2 + o + 1] * xs[r * 3 + i + 1] end
                gw[o * 3 + i + 1] = s
            end
        end
        close(l.weight.grad, gw, 'dW')
        close(l.bias.grad, gb, 'db')
        l:zero_grad()
        assert.is_nil(l.weight.grad)
    end)

    it('Embedding draws N(0, 1) weights and gathers rows', function()
        nc.manual_seed(31)
        local e = nc.nn.Embedding(100, 50)
        assert.are.same({ 100, 50 }, e.weight:shape())
        local s, s2, n = 0, 0, 0
        for _, v in ipairs(e.weight:tolist()) do s, s2, n = s + v, s2 + v * v, n + 1 end
        local mean = s / n
        local std = math.sqrt(s2 / n - mean * mean)
        assert.is_true(math.abs(mean) < 0.05, 'mean ' .. mean)
        assert.is_true(math.abs(std - 1) < 0.05, 'std ' .. std)
        local small = nc.nn.Embedding(7, 3)
        local idx = nc.tensor({ { 6, 0, 3 }, { 3, 3, 1 } }, { dtype = 'i64' })
        local out = small(idx)
        assert.are.same({ 2, 3, 3 }, out:shape())
        local w = small.weight:tolist()
        local want = {}
        for _, i in ipairs { 6, 0, 3, 3, 3, 1 } do
            for j = 1, 3 do want[#want + 1] = w[i * 3 + j] end
        end
        assert.are.same(want, out:tolist())
    end)

    it('RMSNorm matches the float64 reference with and without weight', function()
        nc.manual_seed(41)
        local D, rows = 6, 5
        local x = nc.randn { rows, D }
        local xs = x:tolist()
        local function ref(weight, eps)
            local y = {}
            for r = 0, rows - 1 do
                local ms = 0
                for i = 1, D do ms = ms + xs[r * D + i] ^ 2 end
                local rstd = 1 / math.sqrt(ms / D + eps)
                for i = 1, D do y[r * D + i] = xs[r * D + i] * rstd * (weight and weight[i] or 1) end
            end
            return y
        end
        local n = nc.nn.RMSNorm(D)
        assert.are.same({ 1, 1, 1, 1, 1, 1 }, n.weight:tolist())
        n.weight:copy_(nc.randn { D })
        close(n(x), ref(n.weight:tolist(), 1e-6), 'rmsnorm weight')
        local nw = nc.nn.RMSNorm(D, { weight = false, eps = 0.5 })
        assert.are.equal(0, nw:num_params())
        close(nw(x), ref(nil, 0.5), 'rmsnorm no weight, eps 0.5')
        close(n(x:t():contiguous():t()), ref(n.weight:tolist(), 1e-6), 'rmsnorm strided input')
    end)
end)
