-- tools/bench/arch_collider.lua — what Collider token filtering (nanochat.collider) saves in backward
-- and what it does to the loss, on the e3 base widths without LoopLM / mHC / MTP:
--
--   ./nanochat tools/bench/arch_collider.lua [rho=0.4] [B=8] [T=256] [reps=9] [train_steps=30]
--                                            [lr=3e-3] [eval_batches=4] [threads=0] [data=corpus|random]
--
-- Model: configs/models/tiny.lua (d 256, 6 layers, 4 heads / 2 KV heads, ReLU² 1024, vocab 8192,
-- ternary). Batches: the default Rust corpus (nc.data.prepare, random-sampling loader, seed 1) or,
-- with data=random (or when the corpus cannot be prepared), uniform random tokens.
-- (1) Backward time: one fixed batch; every repeat runs one dense step (model:forward, then timed
--     loss:backward()) and one Collider step at rho (F:forward, timed backward), order alternated
--     per repeat, after one untimed warmup of each. Reported: the medians and
--     collider_backward_saving = 1 - median(collider) / median(dense); also the median of the
--     per-repeat ratios (drift on a shared machine hits both alike).
--     Also the process CPU time of the same backward calls (os.clock: all threads; on a shared,
--     oversubscribed machine it tracks the work done better than wall time; with threads=1 the two
--     agree when the machine is idle): the saving of the medians and of the minima.
-- (2) Loss at equal tokens: two runs of nc.train from the same initial weights on the same batches
--     (AdamW lr, constant schedule, clip 1), dense and with collider = F; then the mean
--     cross-entropy over ALL tokens of eval_batches held-out batches (val shards, or fresh random
--     ones), for each run: collider_loss_dense, collider_loss_filtered. Both runs forward the same
--     tokens; the Collider run backpropagates (1 - rho) of them.
-- As a module (dofile / tools/bench/arch.lua): returns run(opts) -> { rows = { {feature, metric,
-- value, baseline, note}, ... }, json = {...} }; run directly it prints the table and, as the last
-- line, the JSON object.
local nc = require 'nanochat'
local here = debug.getinfo(1, 'S').source:match('^@(.*/)') or './'
local L = dofile(here .. 'lib.lua')

local function num(v, d) return tonumber(v) or d end

local function make_data(opts, V, B, T)
    local kind = opts.data or 'corpus'
    if kind == 'corpus' then
        local ok, tok, dir = pcall(function() return nc.data.prepare { vocab = V, quiet = true } end)
        if ok and tok:vocab_size() == V then
            local train = nc.data.loader { shards = nc.data.shards(dir, 'train'), B = B, T = T, seed = 1,
                                           sampling = 'random' }
            local vl = nc.data.loader { shards = nc.data.shards(dir, 'val'), B = B, T = T, sampling = 'sequential',
                                        loop = true }
            local val = {}
            for i = 1, num(opts.eval_batches, 4) do
                local x, y = vl:next()
                val[i] = { x, y }
            end
            vl:close()
            -- a replayable loader: batch k is a pure function of (seed, k), so both runs see the same
            local batches = {}
            for i = 1, num(opts.train_steps, 30) + 2 do
                local x, y = train:next()
                batches[i] = { x, y }
            end
            train:close()
            return batches, val, 'default Rust corpus'
        end
        kind = 'random'
    end
    local g = nc.generator(7)
    local function batch()
        local x = nc.rand({ B, T + 1 }, { lo = 0, hi = V, generator = g }):to('i64')
        return { x:narrow(1, 0, T):contiguous(), x:narrow(1, 1, T):contiguous() }
    end
    local batches, val = {}, {}
    for i = 1, num(opts.train_steps, 30) + 2 do batches[i] = batch() end
    for i = 1, num(opts.eval_batches, 4) do val[i] = batch() end
    return batches, val, 'uniform random tokens'
end

local function replay(batches)
    local i = 0
    return { next = function() i = i + 1; local b = batches[i]; return b[1], b[2] end }
end

local function run(opts)
    opts = opts or {}
    if num(opts.threads, 0) > 0 then nc.set_num_threads(num(opts.threads, 0)) end
    local rho = num(opts.rho, 0.4)
    local B, T = num(opts.B, 8), num(opts.T, 256)
    local reps = num(opts.reps, 9)   -- 9 pairs: the medians of a shared 2-core machine need them
    local steps = num(opts.train_steps, 30)
    local cfg = dofile('configs/models/tiny.lua')
    cfg.seq_len = math.max(cfg.seq_len, T)
    local batches, val, data_name = make_data(opts, cfg.vocab_size, B, T)

    -- (1) backward time, dense vs Collider, interleaved
    local model = nc.models.gpt.new(cfg)
    local F = nc.collider.new { rho = rho }
    local x, y = batches[1][1], batches[1][2]
    -- gradients are dropped between steps as the optimizers' zero_grad does in training (p.grad =
    -- nil: the next backward writes fresh buffers), not zero-filled in place
    local params = model:parameters()
    local function step(filtered)
        for _, p in ipairs(params) do p.grad = nil end
        local loss = filtered and F:forward(model, x, y) or model:forward(x, y)
        collectgarbage('collect')
        local t0, c0 = L.now(), os.clock()
        loss:backward()
        local dt, dc = L.now() - t0, os.clock() - c0
        return dt, loss:item(), dc
    end
    step(false); step(true)
    local td, tc, ratios, cd, cc = {}, {}, {}, {}, {}
    for r = 1, reps do
        if r % 2 == 1 then
            td[r], _, cd[r] = step(false); tc[r], _, cc[r] = step(true)
        else
            tc[r], _, cc[r] = step(true); td[r], _, cd[r] = step(false)
        end
        ratios[r] = tc[r] / td[r]
    end
    for _, p in ipairs(params) do p.grad = nil end
    local md, mc = L.median(td), L.median(tc)
    local saving = 1 - mc / md
    local saving_paired = 1 - L.median(ratios)
    local saving_cpu = 1 - L.median(cc) / L.median(cd)
    local saving_min = 1 - L.min(cc) / L.min(cd)   -- least-disturbed step of each (interference only adds time)
    local kept = F:kept_fraction()

    -- (2) loss at equal tokens after a short training
    local function train(filter)
        local m = nc.models.gpt.new(cfg)   -- same seed: the same initial weights
        local opt = nc.optim.adamw(m:parameters(), { lr = num(opts.lr, 3e-3), betas = { 0.9, 0.95 } })
        local t0 = L.now()
        local res = nc.train { model = m, optimizer = opt, loader = replay(batches), steps = steps, clip = 1.0,
                               collider = filter, progress = false }
        local secs = L.now() - t0
        local sum, n = 0, 0
        nc.no_grad(function()
            for _, b in ipairs(val) do
                local per = nc.cross_entropy(m:forward(b[1]), b[2], { reduction = 'none' })
                sum, n = sum + per:sum():item(), n + per:numel()
            end
        end)
        return sum / n, res.losses[steps], secs
    end
    local loss_dense, last_dense, secs_dense, loss_filt, last_filt, secs_filt
    if steps > 0 then
        loss_dense, last_dense, secs_dense = train(nil)
        loss_filt, last_filt, secs_filt = train(nc.collider.new { rho = rho })
    end

    local rows = {
        { 'collider', 'backward s (median)', mc, md,
          string.format('rho %.2f, kept %.1f%%, %d interleaved reps', rho, 100 * kept, reps) },
        { 'collider', 'backward saving', saving, 0,
          string.format('paired-ratio median %.3f; target >= 0.25', saving_paired) },
        { 'collider', 'backward CPU s (median)', L.median(cc), L.median(cd),
          string.format('process CPU time (all threads): saving %.3f', saving_cpu) },
        { 'collider', 'backward CPU s (min)', L.min(cc), L.min(cd), string.format('saving %.3f', saving_min) },
    }
    if steps > 0 then
        rows[#rows + 1] = { 'collider', 'eval loss after training', loss_filt, loss_dense,
                            string.format('%d steps x %d tokens, %s', steps, B * T, data_name) }
        rows[#rows + 1] = { 'collider', 'train step s (mean)', secs_filt / steps, secs_dense / steps,
                            'nc.train: forward + backward + AdamW' }
    end
    local json = {
        collider_backward_saving = saving,
        collider_backward_saving_paired = saving_paired, collider_backward_saving_cpu = saving_cpu,
        collider_backward_saving_cpu_min = saving_min,
        collider_backward_s = mc, dense_backward_s = md,
        collider_kept_fraction = kept, collider_rho = rho,
        collider_loss_dense = loss_dense, collider_loss_filtered = loss_filt,
        collider_train_loss_dense = last_dense, collider_train_loss_filtered = last_filt,
        collider_train_steps = steps, collider_B = B, collider_T = T,
    }
    return { rows = rows, json = json }
end

-- run directly (the launcher sets arg[0] to the script path): print; loaded by another script: a module
local direct = type(arg) == 'table' and type(arg[0]) == 'string' and arg[0]:match('arch_collider%.lua$')
if direct then
    local args = L.parse_args(rawget(_G, 'ARGS') or arg)
    local out = run(args)
    print(string.format('Collider token filtering, tiny widths (d 256, 6 layers, vocab 8192), %d threads, kernel %s',
        nc.get_num_threads(), nc.cpu_kernel()))
    L.print_table({ 'feature', 'metric', 'value', 'baseline', 'note' }, out.rows)
    print(L.json(out.json))
end

return run
