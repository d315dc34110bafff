-- spec/train_spec.lua — nc.train with stand-in model / optimizer / loader (spec/helpers):
-- schedule indices, gradient accumulation equivalence, global-norm clipping, NaN skip and
-- abort, bits-per-byte on a hand-computed case, progress output (plain and TTY), JSONL records,
-- exact resume (20 steps == 10 + save + load + 10, bitwise), and Ctrl-C (in process, and a
-- SIGINT sent to a child `./nanochat script`), and batches following the model's device.
package.path = 'lua/?.lua;lua/?/init.lua;spec/helpers/?.lua;' .. package.path
local nc = require 'nanochat'
local S = require 'train_standins'
local train = nc.train
local json = require 'dkjson'
local C = nc.C

local ROOT = assert(io.popen('pwd')):read('*l')

local function setup(opts)
    opts = opts or {}
    local m = S.model(16, 8, opts.seed or 1)
    local opt = S.sgd(m:parameters(), { lr = opts.lr or 0.2 })
    local L = S.loader { B = opts.B or 4, T = 8, seed = opts.data_seed or 7 }
    return m, opt, L
end

local function read_lines(p)
    local out = {}
    for l in io.lines(p) do out[#out + 1] = l end
    return out
end

local function max_abs_diff(a, b)
    local d = 0
    for i = 1, #a do d = math.max(d, math.abs(a[i] - b[i])) end
    return d
end

describe('nc.train', function()
    local dir
    before_each(function() dir = S.tmpdir() end)
    after_each(function() S.rmtree(dir) end)

    it('moves each batch to the model\'s device (train.device_of) and leaves cpu batches alone', function()
        local m, opt, L = setup()
        assert.are.equal('cpu', train.device_of(m))
        -- a stand-in device: batches are proxies whose :to(dev) records the call and returns the tensor
        local moved = {}
        local function proxy(t) return { to = function(_, d) moved[#moved + 1] = d; return t end } end
        local PL = { next = function() local x, y = L:next(); return proxy(x), proxy(y) end }
        local saved = train.device_of
        train.device_of = function() return 'standin' end
        local ok, r = pcall(train, { model = m, optimizer = opt, loader = PL, steps = 2, progress = false, grad_accum = 2 })
        train.device_of = saved
        assert.is_true(ok, tostring(r))
        assert.are.equal(2, r.step)
        assert.are.same({ 'standin', 'standin', 'standin', 'standin', 'standin', 'standin', 'standin', 'standin' }, moved)
        -- on the cpu the loader's tensors are used as they are (a proxy would fail in forward)
        local r2 = train { model = m, optimizer = opt, loader = L, steps = 1, progress = false }
        assert.are.equal(1, r2.step)
    end)

    it('is callable and calls the schedule with 0, 1, 2, ... passing the multiplier to step()', function()
        local m, opt, L = setup()
        local calls = {}
        local r = train { model = m, optimizer = opt, loader = L, steps = 5, progress = false,
                          schedule = function(s) calls[#calls + 1] = s; return (s + 1) / 10 end }
        assert.are.same({ 0, 1, 2, 3, 4 }, calls)
        assert.are.same({ 0.1, 0.2, 0.3, 0.4, 0.5 }, opt.mults)
        assert.are.equal(5, r.step)
        assert.are.equal(5, #r.losses)
        assert.is_true(r.losses[5] < r.losses[1])
    end)

    it('reports missing options', function()
        assert.has_error(function() train { steps = 1 } end, 'nc.train: missing option model (an nn.Module whose forward(x, y, opts) returns the mean loss)')
    end)

    it('grad_accum = 2 with B/2 equals grad_accum = 1 with B', function()
        local m1, o1, L1 = setup { B = 4 }
        local r1 = train { model = m1, optimizer = o1, loader = L1, steps = 6, progress = false, clip = 0 }
        local m2, o2, L2 = setup { B = 2 }
        local r2 = train { model = m2, optimizer = o2, loader = L2, steps = 6, progress = false, clip = 0, grad_accum = 2 }
        assert.is_true(max_abs_diff(S.flat_params(m1), S.flat_params(m2)) < 1e-5)
        for i = 1, 6 do assert.is_true(math.abs(r1.losses[i] - r2.losses[i]) < 1e-5) end
        assert.are.equal(L1.pos, L2.pos)   -- the same tokens were consumed
    end)

    it('passes z_loss and label_smoothing to model:forward', function()
        local m, opt, L = setup()
        local seen
        local fwd = m.forward
        m.forward = function(self, x, y, o) seen = o; return fwd(self, x, y, o) end
        train { model = m, optimizer = opt, loader = L, steps = 1, progress = false, z_loss = 1e-4, label_smoothing = 0.1 }
        assert.are.equal(1e-4, seen.z_loss)
        assert.are.equal(0.1, seen.label_smoothing)
    end)

    it('clips the global gradient norm to the limit in one pass (float64 reference)', function()
        nc.manual_seed(5)
        local ps = { nc.randn { 300, 70 }, nc.randn { 17 }, nc.randn { 40000 } }
        local function set_grads(scale)
            for _, p in ipairs(ps) do p.grad = p * scale end
        end
        local function ref_norm()
            local s = 0
            for _, p in ipairs(ps) do for _, v in ipairs(p.grad:reshape { -1 }:tolist()) do s = s + v * v end end
            return math.sqrt(s)
        end
        set_grads(1)
        local want = ref_norm()
        local norm = train.clip_grads(ps, 1.0)
        assert.is_true(math.abs(norm - want) <= 1e-9 * want)
        local after = ref_norm()
        assert.is_true(after <= 1.0 * (1 + 1e-6))
        assert.is_true(after >= 1.0 * (1 - 1e-5))
        -- already below the limit: untouched, bitwise
        set_grads(1e-4)
        local before = ps[1].grad:reshape { -1 }:tolist()
        train.clip_grads(ps, 1e9)
        assert.are.same(before, ps[1].grad:reshape { -1 }:tolist())
        -- thread count does not change the norm
        local n1 = train.grad_norm { ps[3].grad }
        local th = nc.get_num_threads()
        nc.set_num_threads(1)
        local n2 = train.grad_norm { ps[3].grad }
        nc.set_num_threads(th)
        assert.are.equal(n1, n2)
    end)

    it('skips non-finite steps without updating, logs them, and aborts after max_bad_steps in a row', function()
        local m, opt, L = setup()
        local fwd = m.forward
        local calls, bad = 0, { [3] = true, [4] = true }
        m.forward = function(self, x, y, o)
            calls = calls + 1
            local loss, logits = fwd(self, x, y, o)
            if bad[calls] then loss = loss * (0 / 0) end
            return loss, logits
        end
        local snapshot
        local real_step = opt.step
        opt.step = function(self, mult)
            real_step(self, mult)
            if self.t == 2 then snapshot = S.flat_params(m) end
        end
        local sink = S.sink()
        local r = train { model = m, optimizer = opt, loader = L, steps = 6, out = sink, tty = false, log_dir = dir }
        assert.are.equal(6, r.step)
        assert.are.equal(2, r.bad_steps)
        assert.are.equal(4, opt.t)                     -- steps 3 and 4 made no update
        assert.are.equal(6, L.calls)                   -- ... but consumed their batches
        assert.truthy(sink:text():find('step 3 skipped: non%-finite'))
        local recs = {}
        for _, l in ipairs(read_lines(dir .. '/metrics.jsonl')) do recs[#recs + 1] = json.decode(l) end
        local nbad = 0
        for _, rec in ipairs(recs) do if rec.type == 'bad_step' then nbad = nbad + 1 end end
        assert.are.equal(2, nbad)
        -- params after the two skipped steps equal those after step 2
        local m2, o2, L2 = setup()
        train { model = m2, optimizer = o2, loader = L2, steps = 2, progress = false }
        assert.are.same(snapshot, S.flat_params(m2))

        -- every step bad: abort after 3 with a clear message
        local m3, o3, L3 = setup()
        m3.forward = function(self, x, y, o) local l, lg = fwd(self, x, y, o); return l * (1 / 0), lg end
        local ok, err = pcall(train, { model = m3, optimizer = o3, loader = L3, steps = 10, max_bad_steps = 3,
                                       out = S.sink(), tty = false })
        assert.is_false(ok)
        assert.truthy(err:find('aborting at step 3: 3 steps in a row had a non%-finite loss'), err)
        assert.are.equal(0, o3.t)
        assert.are.equal(C.NC_ERR_ARG, C.nc_signal_restore(2))   -- handlers were restored (nothing left to restore)
    end)

    it('computes val loss and bits-per-byte as hand-computed', function()
        -- a "model" with fixed logits (B=1, T=3, V=3) and a fixed val batch
        local lg = { { 1.0, 2.0, 0.5 }, { 0.0, -1.0, 3.0 }, { 2.0, 2.0, 2.0 } }
        local targets = { 1, 0, 2 }
        local bytes = { 0, 2, 5 }   -- token 0 is special (0 bytes)
        local model = { training = true }
        function model:forward() return nc.tensor { lg } end
        local batches = 2
        local function val_loader()
            local n = 0
            return { next = function()
                n = n + 1
                if n > batches then return nil end
                return nc.tensor({ { 0, 0, 0 } }, { dtype = 'i64' }), nc.tensor({ targets }, { dtype = 'i64' })
            end }
        end
        local sum, nats, nbytes = 0, 0, 0
        for t = 1, 3 do
            local lse = 0
            for v = 1, 3 do lse = lse + math.exp(lg[t][v]) end
            local l = math.log(lse) - lg[t][targets[t] + 1]
            sum = sum + l
            if bytes[targets[t] + 1] > 0 then nats = nats + l; nbytes = nbytes + bytes[targets[t] + 1] end
        end
        local ev = train.evaluate(model, { val_loader = val_loader, tokenizer = S.tokenizer(3, bytes) })
        assert.are.equal(6, ev.tokens)
        assert.is_true(math.abs(ev.loss - sum / 3) < 1e-6)
        assert.is_true(math.abs(ev.bpb - nats / (math.log(2) * nbytes)) < 1e-6)
        -- eval_batches caps the pass
        batches = 10
        assert.are.equal(3 * 4, train.evaluate(model, { val_loader = val_loader, eval_batches = 4 }).tokens)
    end)

    it('prints plain progress lines when not on a TTY, one redrawn line on a TTY', function()
        local m, opt, L = setup()
        local sink = S.sink()
        train { model = m, optimizer = opt, loader = L, steps = 5, out = sink, tty = false, log_every = 2,
                peak_flops = 1e9, val_loader = function() return S.loader { loop = false, n_tokens = 100 } end, eval_every = 4 }
        local text = sink:text()
        assert.is_nil(text:find('\r', 1, true))
        local lines = {}
        for l in text:gmatch('[^\n]+') do lines[#lines + 1] = l end
        local pat = '^step (%d+)/5 | loss %d+%.%d%d%d%d | lr [x%d%.e%+%-]+ | [%d%.k]+ tok/s | mfu %d+%.%d%% | eta %d+s$'
        local steps = {}
        for _, l in ipairs(lines) do
            local s = l:match(pat)
            if s then steps[#steps + 1] = tonumber(s) end
        end
        assert.are.same({ 1, 2, 4, 5 }, steps)
        assert.truthy(text:find('\neval step 4 | val loss %d+%.%d+\n'))
        local tty = S.sink()
        train { model = m, optimizer = opt, loader = L, steps = 3, out = tty, tty = true }
        local t = tty:text()
        assert.truthy(t:find('\rstep 1/3 | loss', 1, false))
        assert.truthy(t:find('\27[K', 1, true))
        assert.are.equal('\n', t:sub(-1))
        assert.are.equal(0, select(2, train.progress_line({ step = 1, loss = 1, lr_mult = 1, eta = 3725 }, 2):gsub('\n', '')))
        assert.truthy(train.progress_line({ step = 1, loss = 1, lr = 3e-4, lr_mult = 1, eta = 3725 }, 2):find('lr 3.00e%-04 | 0 tok/s | eta 1h02m'))
    end)

    it('writes JSONL step and eval records and TensorBoard scalars matching them', function()
        local m, opt, L = setup()
        local r = train { model = m, optimizer = opt, loader = L, steps = 6, progress = false, log_dir = dir,
                          peak_flops = 1e9, val_loader = function() return S.loader { loop = false, n_tokens = 200, seed = 3 } end,
                          eval_every = 3, tokenizer = S.tokenizer(16) }
        local steps, evals = {}, {}
        for _, l in ipairs(read_lines(dir .. '/metrics.jsonl')) do
            local rec = json.decode(l)
            if rec.type == 'step' then steps[#steps + 1] = rec elseif rec.type == 'eval' then evals[#evals + 1] = rec end
        end
        assert.are.equal(6, #steps)
        for i, rec in ipairs(steps) do
            assert.are.equal(i, rec.step)
            assert.are.equal(r.losses[i], rec.loss)      -- exact: the JSON keeps every bit
            assert.are.equal(32, rec.tokens)
            assert.are.equal(1, rec.lr_mult)
            assert.is_number(rec.grad_norm)
            assert.is_number(rec.tok_per_s)
            assert.is_number(rec.mfu)
            assert.is_number(rec.wall)
        end
        assert.are.equal(2, #evals)
        assert.are.equal(3, evals[1].step)
        assert.are.equal(6, evals[2].step)
        assert.are.equal(r.evals[2].bpb, evals[2].val_bpb)
        local sc = nc.tboard.scalars(dir)
        assert.are.equal(6, #sc['train/loss'])
        assert.are.equal(2, #sc['val/bpb'])
        assert.are.equal(tonumber(require('ffi').new('float', r.losses[4])), sc['train/loss'][4].value)
        assert.are.equal(1 + 6 + 2, #nc.tboard.read(dir))
    end)

    it('resumes exactly: 20 steps == 10 + save + load (fresh objects) + 10, bitwise', function()
        local sched = function(s) return math.min(1, (s + 1) / 4) * (1 - s / 25) end
        local function run(steps, ck)
            local m, opt, L = setup { seed = 11, data_seed = 5 }
            nc.manual_seed(1234)   -- a run-level RNG draw the checkpoint must carry
            local r = train { model = m, optimizer = opt, loader = L, steps = steps, schedule = sched, progress = false,
                              ckpt_dir = ck, grad_accum = 2, clip = 0.5 }
            return m, r, opt
        end
        local mA, rA = run(20, nil)
        local ck = dir .. '/ck'
        local _, rB1 = run(10, ck)
        assert.are.equal(ck .. '/step_000010', rB1.checkpoint)
        local mB, rB2, oB = run(20, ck)
        assert.is_nil(rB2.losses[10])                  -- started at step 10
        for i = 1, 10 do assert.are.equal(rA.losses[i], rB1.losses[i]) end
        for i = 11, 20 do assert.are.equal(rA.losses[i], rB2.losses[i], 'loss at step ' .. i) end
        assert.are.same(S.flat_params(mA), S.flat_params(mB))
        assert.are.equal(20, oB.t)
        assert.are.equal(ck .. '/step_000020', rB2.checkpoint)
    end)

    it('stops at a SIGINT, saves a checkpoint and restores the previous handler', function()
        local m, opt, L = setup()
        local fwd, calls = m.forward, 0
        m.forward = function(self, x, y, o)
            calls = calls + 1
            if calls == 3 then assert(C.nc_signal_raise(2) == 0) end   -- Ctrl-C during step 3
            return fwd(self, x, y, o)
        end
        local sink = S.sink()
        local r = train { model = m, optimizer = opt, loader = L, steps = 100, ckpt_dir = dir, out = sink, tty = false }
        assert.is_true(r.interrupted)
        assert.are.equal(3, r.step)                        -- step 3 completes, step 4 never starts
        assert.are.equal(dir .. '/step_000003', r.checkpoint)
        assert.are.equal(3, nc.checkpoint.load(dir).meta.step)
        assert.truthy(sink:text():find('interrupted at step 3'))
        assert.are.equal(C.NC_ERR_ARG, C.nc_signal_restore(2))        -- nothing left installed
    end)

    it('Ctrl-C to a `nanochat script` child saves a checkpoint and exits with status 0', function()
        local script = dir .. '/run.lua'
        local f = assert(io.open(script, 'w'))
        f:write(string.format([[
package.path = %q .. '/spec/helpers/?.lua;' .. package.path
local nc = require 'nanochat'
local S = require 'train_standins'
local m = S.model(16, 8, 1)
local fwd, n = m.forward, 0
m.forward = function(self, x, y, o)
    n = n + 1
    if n == 5 then local f = io.open(%q, 'w'); f:write('go'); f:close() end
    return fwd(self, x, y, o)
end
local r = nc.train { model = m, optimizer = S.sgd(m:parameters()), loader = S.loader {}, steps = 2000000,
                     ckpt_dir = %q, progress = false }
print('stopped', r.interrupted, r.step)
]], ROOT, dir .. '/started', dir .. '/ck'))
        f:close()
        os.execute(string.format("(cd %q && ./nanochat %q > %q 2>&1 & echo $! > %q; wait $!; echo $? > %q) &",
            ROOT, script, dir .. '/out', dir .. '/pid', dir .. '/rc'))
        local function exists(p) local h = io.open(p) if h then h:close() return true end return false end
        local tries = 0
        while not (exists(dir .. '/started') and exists(dir .. '/pid')) and tries < 600 do
            os.execute('sleep 0.05'); tries = tries + 1
        end
        local pid = io.open(dir .. '/pid'):read('*l')
        assert.is_true(exists(dir .. '/started'), 'the child never started training')
        os.execute('kill -INT ' .. pid)
        tries = 0
        while not exists(dir .. '/rc') and tries < 600 do os.execute('sleep 0.05'); tries = tries + 1 end
        if not exists(dir .. '/rc') then os.execute('kill -9 ' .. pid .. ' 2>/dev/null') end
        local rc = io.open(dir .. '/rc'):read('*l')
        local out = io.open(dir .. '/out'):read('*a')
        assert.are.equal('0', rc, out)
        local step = tonumber(out:match('stopped\ttrue\t(%d+)'))
        assert.is_number(step, out)
        assert.is_true(step >= 5)
        local meta = nc.checkpoint.load(dir .. '/ck').meta
        assert.are.equal(step, meta.step)
    end)
end)
