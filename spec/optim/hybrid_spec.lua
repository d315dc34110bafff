-- spec/optim/hybrid_spec.lua — nc.optim.hybrid: role assignment from model:param_roles() (a
-- stand-in model here, as wt-model provides the real one) and from the name/shape fallback,
-- per-rule lr and lr_mult under one schedule multiplier, GaLore rules, bitwise resume.
package.path = 'spec/optim/?.lua;lua/?.lua;lua/?/init.lua;' .. package.path
local nc = require 'nanochat'
local H = require 'optim_helpers'

-- stand-in for the GPT of INTERFACES.md: a Module with param_roles()
local Tiny = nc.nn.Module:extend('TinyStandIn')
function Tiny:init()
    self.wte = nc.nn.Embedding(12, 16)
    self.blk = nc.nn.Linear(16, 16, { bias = false })
    self.mlp = nc.nn.Linear(16, 32, { bias = false })
    self.ln = nc.nn.RMSNorm(16)
    self:param('gate', nc.ones { 1 })
    self.lm_head = nc.nn.Linear(16, 12, { bias = false })
end
function Tiny:param_roles()
    return { ['wte.weight'] = 'embedding', ['blk.weight'] = 'matrix', ['mlp.weight'] = 'matrix',
             ['ln.weight'] = 'norm', gate = 'scalar', ['lm_head.weight'] = 'head' }
end
function Tiny:forward(idx)
    local h = self.ln(self.wte(idx))
    h = h + self.blk(h) * self.gate
    h = h + self.mlp(h):relu():narrow(-1, 0, 16)
    return self.lm_head(h)
end

local function fresh(seed) nc.manual_seed(seed or 1); return Tiny() end
local idx = nc.tensor({ { 1, 2, 3, 4 }, { 5, 6, 7, 8 } }, { dtype = 'i64' })
local tgt = nc.tensor({ { 2, 3, 4, 5 }, { 6, 7, 8, 9 } }, { dtype = 'i64' })
local function loss(m) return nc.cross_entropy(m(idx):view(8, 12), tgt:view(8)) end

describe('nc.optim.hybrid', function()
    it('assigns parameters by role (param_roles) to the default rules', function()
        local opt = nc.optim.hybrid { model = fresh() }
        local a = opt:assignments()
        assert.are.same({ role = 'matrix', optim = 'muon' }, a['blk.weight'])
        assert.are.same({ role = 'embedding', optim = 'adamw' }, a['wte.weight'])
        assert.are.same({ role = 'head', optim = 'adamw' }, a['lm_head.weight'])
        assert.are.same({ role = 'scalar', optim = 'adamw' }, a.gate)
        assert.are.same({ role = 'norm', optim = 'adamw' }, a['ln.weight'])
        assert.are.same({ 'muon', 'adamw' }, opt.part_order)
    end)

    it('falls back to names and shapes without param_roles, with pattern overrides', function()
        local named = {
            { 'tok_emb', H.randn({ 10, 4 }):requires_grad_(true) },
            { 'h.0.attn.wq', H.randn({ 4, 4 }):requires_grad_(true) },
            { 'h.0.norm.weight', nc.ones({ 4 }, { requires_grad = true }) },
            { 'h.0.bias', nc.ones({ 4 }, { requires_grad = true }) },
            { 'lm_head', H.randn({ 10, 4 }):requires_grad_(true) },
            { 'proj', H.randn({ 4, 4 }):requires_grad_(true) },
        }
        local opt = nc.optim.hybrid { named_params = named, roles = { ['^proj$'] = 'head' },
            rules = { norm = { optim = 'lion', lr = 1e-4 } } }
        local a = opt:assignments()
        assert.are.same('embedding', a.tok_emb.role)
        assert.are.same('matrix', a['h.0.attn.wq'].role)
        assert.are.same({ role = 'norm', optim = 'lion' }, a['h.0.norm.weight'])
        assert.are.same('scalar', a['h.0.bias'].role)
        assert.are.same('head', a.lm_head.role)
        assert.are.same('head', a.proj.role)
    end)

    it('steps every part with the same multiplier and the rule lr times lr_mult', function()
        local m = fresh()
        local opt = nc.optim.hybrid { model = m, rules = {
            matrix = { optim = 'muon', lr = 0.02 },
            scalar = { optim = 'lion', lr = 0.1, lr_mult = 0.5 },
            norm = { optim = 'lion', lr = 0.01 } } }
        loss(m):backward()
        local g0 = m.gate:tolist()[1]
        local ln0 = m.ln.weight:tolist()
        opt:step(0.4)
        -- Lion moves each element by exactly lr: gate by 0.1 * 0.5 * 0.4, norm gains by 0.01 * 0.4
        assert(math.abs(math.abs(m.gate:tolist()[1] - g0) - 0.02) < 1e-7)
        local ln1 = m.ln.weight:tolist()
        for i = 1, #ln1 do assert(math.abs(math.abs(ln1[i] - ln0[i]) - 0.004) < 1e-7) end
    end)

    it('runs GaLore 2 (+ 8-bit Muon) on the matrices when the rule asks, and lowers the loss', function()
        local m = fresh()
        local opt = nc.optim.hybrid { model = m, rules = {
            matrix = { optim = 'muon8', lr = 0.02, block = 64, galore = { rank = 4, update_gap = 5 } } } }
        assert.are.same({ role = 'matrix', optim = 'galore+muon8' }, opt:assignments()['blk.weight'])
        assert.truthy(opt.parts.galore)
        local first, last
        for s = 0, 39 do
            local l = loss(m)
            l:backward()
            opt:step(nc.sched.constant { warmup = 5 }(s))
            opt:zero_grad()
            last = l:item(); first = first or last
        end
        assert(last < 0.7 * first, string.format('loss %.4g -> %.4g', first, last))
    end)

    it('resumes bitwise through a state dict', function()
        local function make()
            local mm = fresh(5)
            local out = mm:named_parameters()
            out.model = mm
            return out
        end
        local function mk(named)
            return nc.optim.hybrid { named_params = named, roles = function(n)
                return ({ ['wte.weight'] = 'embedding', ['lm_head.weight'] = 'head', gate = 'scalar', ['ln.weight'] = 'norm' })[n]
            end, rules = { matrix = { optim = 'muon8', lr = 0.02, block = 64, rounding = 'stochastic' },
                           head = { optim = 'lion', lr = 1e-3 } } }
        end
        -- the loss reads the parameters through the list (copies after resume)
        local function lossn(named)
            local p = {}
            for _, nt in ipairs(named) do p[nt[1]] = nt[2] end
            local h = nc.rmsnorm(nc.embedding(idx, p['wte.weight']), p['ln.weight'])
            h = h + nc.linear(h, p['blk.weight']) * p.gate
            h = h + nc.linear(h, p['mlp.weight']):relu():narrow(-1, 0, 16)
            return nc.cross_entropy(nc.linear(h, p['lm_head.weight']):view(8, 12), tgt:view(8))
        end
        local a, c = H.resume_pair(make, mk, lossn, 4, nc.sched.cosine { warmup = 2, total = 8 })
        for i = 1, #a do H.bitwise(c[i][2], a[i][2], a[i][1]) end
    end)

    it('rejects unknown roles and optimizers', function()
        assert.has_error(function() nc.optim.hybrid { model = fresh(), rules = { blocks = {} } } end,
            'hybrid: unknown role blocks in rules')
        local ok, err = pcall(nc.optim.hybrid, { model = fresh(), rules = { matrix = { optim = 'sgd', lr = 1 } } })
        assert.is_false(ok)
        assert.truthy(tostring(err):find("rule matrix: optim must be", 1, true), err)
    end)
end)
