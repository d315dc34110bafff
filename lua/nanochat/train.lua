-- lua/nanochat/train.lua — nc.train{...}: the training loop.
--
--   local result = nc.train {
--       model = model, optimizer = opt, schedule = nc.sched.wsd{...}, loader = L, steps = 1000,
--       grad_accum = 1, clip = 1.0, z_loss = 1e-4, label_smoothing = 0,
--       val_loader = function() return nc.data.loader{..., sampling = 'sequential', loop = false} end,
--       eval_every = 100, eval_batches = 20, tokenizer = tok,
--       sample_every = 500, sample_prompts = { 'fn main() {' },
--       log_dir = 'runs/x', ckpt_dir = 'runs/x/ckpt', ckpt_every = 200, keep = 3, resume = true,
--       max_bad_steps = 5, progress = true, collider = nc.collider.new{ rho = 0.4 },
--   }
--
-- Promise:
--  - Step i (0-based) multiplies the optimizer's learning rates by schedule(i); the first step
--    calls schedule(0). Each step runs grad_accum micro-batches: loss = model:forward(x, y,
--    {z_loss, label_smoothing}), backward with gradient 1/grad_accum, so the gradients are those
--    of the mean loss over the micro-batches. With collider = F (nanochat.collider) each micro-batch
--    runs F:forward(model, x, y, opts) instead (Collider token filtering: loss and backward on the
--    kept tokens) and the step record logs kept_frac (kept / all target tokens). The global L2 norm of all gradients is computed in
--    one pass (C, double accumulation); when it exceeds clip the gradients are scaled by
--    clip / norm. A non-finite loss or gradient norm skips the step (no update, gradients
--    dropped, a 'bad_step' record logged); max_bad_steps of them in a row abort with an error.
--  - Every eval_every completed steps (and after the last): val loss and bits-per-byte over
--    eval_batches batches of a fresh val_loader() (bpb = sum of the per-token losses in nats over
--    targets with a non-zero byte length / (ln 2 * sum of those byte lengths), from
--    tokenizer:token_bytes(); loss = mean over all target tokens), and a few samples through
--    nc.generate when it exists.
--  - Logs: a progress line (one redrawn line on a TTY, plain lines every log_every steps otherwise)
--    with step, loss, lr, tokens/s, MFU (model:flops_per_token(T) / peak FLOP/s, the peak passed
--    as peak_flops or measured once with a short sgemm) and ETA; log_dir/metrics.jsonl (one JSON
--    object per step, eval and bad step, appended); TensorBoard events in log_dir (nc.tboard).
--  - Checkpoints (nc.checkpoint.save_step) every ckpt_every steps, after the last step and on
--    Ctrl-C; resume = true continues from the newest valid checkpoint in ckpt_dir (model,
--    optimizer, loader position, RNG state, step), bitwise identical to an uninterrupted run.
--  - SIGINT and SIGTERM during nc.train set a flag (C handler); the loop checks it before each
--    step, saves a checkpoint and returns normally with result.interrupted = true. The previous
--    handlers (e.g. the REPL's) are restored on every way out.
--  - Devices: the loop runs where the model's parameters are (model:to('cuda') before building the
--    optimizer): each batch (x, y) from the loader is moved to that device. Evaluation computes the
--    logits there and the per-token losses on the CPU (the 'none' cross-entropy uses ops that are
--    CPU-only); nc.generate feeds sampling prompts to the model's device.
-- Returns { step = completed steps, losses = { [step] = loss }, evals = {...}, interrupted =,
--           checkpoint = last checkpoint dir, bad_steps = total skipped }.
local core = require 'nanochat.core'
local C = core.C

local M = {}

local SIGINT, SIGTERM = 2, 15
local LN2 = math.log(2)

local function nc() return require 'nanochat' end
local function finite(x) return x == x and x ~= math.huge and x ~= -math.huge end
local function now() return C.nc_monotonic_time() end

-- ---- gradients ------------------------------------------------------------------------------------
local Grads = {}
Grads.__index = Grads

local function grads_of(params)
    local list = {}
    for _, p in ipairs(params) do
        local g = rawget(p, 'grad')
        if g then list[#list + 1] = g end
    end
    return list
end

-- global L2 norm over the gradients (one pass; C for contiguous CPU f32, ops otherwise)
function M.grad_norm(grads)
    local ffi = core.ffi
    local fast, slow = {}, {}
    for _, g in ipairs(grads) do
        if g:device() == 'cpu' and g:dtype() == 'f32' and g:is_contiguous() then fast[#fast + 1] = g else slow[#slow + 1] = g end
    end
    local total = 0
    if #fast > 0 then
        local arr = ffi.new('const nc_tensor *[?]', #fast)
        for i, g in ipairs(fast) do arr[i - 1] = g._c end
        local out = ffi.new('double[1]')
        core.check(C.nc_sum_squares(out, #fast, arr), 'train: grad norm')
        total = out[0]
    end
    for _, g in ipairs(slow) do total = total + (g * g):sum():item() end
    return math.sqrt(total)
end

function M.scale_grads(grads, s)
    local ffi = core.ffi
    local fast = {}
    for _, g in ipairs(grads) do
        if g:device() == 'cpu' and g:dtype() == 'f32' and g:is_contiguous() then fast[#fast + 1] = g
        else g:copy_(g * s) end
    end
    if #fast > 0 then
        local arr = ffi.new('nc_tensor *[?]', #fast)
        for i, g in ipairs(fast) do arr[i - 1] = g._c end
        core.check(C.nc_scale_tensors(#fast, arr, s), 'train: clip')
    end
end

-- clip the gradients to a global norm <= max_norm; returns the norm before clipping
function M.clip_grads(params, max_norm)
    local grads = grads_of(params)
    local norm = M.grad_norm(grads)
    if max_norm and max_norm > 0 and finite(norm) and norm > max_norm then M.scale_grads(grads, max_norm / norm) end
    return norm
end

-- ---- formatting -------------------------------------------------------------------------------------
local function fmt_time(s)
    if not finite(s) or s < 0 then return '?' end
    s = math.floor(s + 0.5)
    if s >= 3600 then return string.format('%dh%02dm', math.floor(s / 3600), math.floor(s % 3600 / 60)) end
    if s >= 60 then return string.format('%dm%02ds', math.floor(s / 60), s % 60) end
    return string.format('%ds', s)
end
M.fmt_time = fmt_time

local function fmt_num(x)
    if not finite(x) then return tostring(x) end
    if x >= 1e6 then return string.format('%.2fM', x / 1e6) end
    if x >= 1e4 then return string.format('%.1fk', x / 1e3) end
    return string.format('%.0f', x)
end

-- one progress line (no newline) from a step record
function M.progress_line(r, steps)
    local parts = { string.format('step %d/%d', r.step, steps) }
    parts[#parts + 1] = r.loss and string.format('loss %.4f', r.loss) or 'loss nan'
    if r.lr then parts[#parts + 1] = string.format('lr %.2e', r.lr)
    else parts[#parts + 1] = string.format('lr x%.3f', r.lr_mult) end
    parts[#parts + 1] = string.format('%s tok/s', fmt_num(r.tok_per_s or 0))
    if r.mfu then parts[#parts + 1] = string.format('mfu %.1f%%', 100 * r.mfu) end
    if r.kept_frac then parts[#parts + 1] = string.format('kept %.0f%%', 100 * r.kept_frac) end
    parts[#parts + 1] = 'eta ' .. fmt_time(r.eta)
    return table.concat(parts, ' | ')
end

-- ---- peak FLOP/s (measured once per process) -----------------------------------------------------------
local peak_cache
function M.measure_peak_flops(n)
    if peak_cache then return peak_cache end
    n = n or 1024   -- the same shape tools/bench/train.lua calls the peak
    local N = nc()
    local a, b = N.randn({ n, n }, { generator = N.generator(1) }), N.randn({ n, n }, { generator = N.generator(2) })
    local out = N.empty { n, n }
    local ffi = core.ffi
    local function mm() core.check(C.nc_matmul(out._c, a._c, b._c, 0, 0, 1, 0), 'sgemm peak') end
    mm()
    local best = math.huge
    for _ = 1, 5 do
        local t0 = now()
        mm(); mm()
        best = math.min(best, (now() - t0) / 2)
    end
    local _ = ffi
    peak_cache = 2 * n * n * n / math.max(best, 1e-9)
    return peak_cache
end

-- the device of the model's parameters ('cpu' for a model without any)
function M.device_of(model)
    local ps = model.parameters and model:parameters() or {}
    return ps[1] and ps[1]:device() or 'cpu'
end

-- ---- evaluation ------------------------------------------------------------------------------------------
-- Returns { loss = mean per-token loss, bpb = bits per byte or nil, tokens = n, batches = n }.
-- opts: val_loader (a function returning a fresh loader, or a loader), eval_batches, tokenizer,
-- token_bytes (a 1-D tensor, instead of tokenizer:token_bytes()).
function M.evaluate(model, opts)
    local N = nc()
    local L = opts.val_loader
    if type(L) == 'function' then L = L() end
    if not L then error('train.evaluate: no val_loader', 2) end
    local tb = opts.token_bytes
    if not tb and opts.tokenizer and opts.tokenizer.token_bytes then tb = opts.tokenizer:token_bytes() end
    if tb then tb = tb:to('f32'):reshape { -1 } end
    local was_training = model.training
    if model.eval then model:eval() end
    local dev = M.device_of(model)
    local sum_loss, sum_tok, sum_nats, sum_bytes, batches = 0, 0, 0, 0, 0
    local ok, err = pcall(N.no_grad, function()
        while not opts.eval_batches or batches < opts.eval_batches do
            local x, y = L:next()
            if x == nil then break end
            local logits = model:forward(dev ~= 'cpu' and x:to(dev) or x)
            if logits:device() ~= 'cpu' then logits = logits:to('cpu') end
            local per = N.cross_entropy(logits, y, { reduction = 'none' })
            sum_loss = sum_loss + per:sum():item()
            sum_tok = sum_tok + y:numel()
            if tb then
                local bytes = N.index_select(tb, 0, y:reshape { -1 }):reshape(y:shape())
                local counted = N.where(N.gt(bytes, 0), per, 0)
                sum_nats = sum_nats + counted:sum():item()
                sum_bytes = sum_bytes + bytes:sum():item()
            end
            batches = batches + 1
        end
    end)
    if model.train and was_training ~= false then model:train(true) end
    if type(opts.val_loader) == 'function' and L.close then L:close() end
    if not ok then error(err, 0) end
    local res = { loss = sum_tok > 0 and sum_loss / sum_tok or nil, tokens = sum_tok, batches = batches }
    if tb and sum_bytes > 0 then res.bpb = sum_nats / (LN2 * sum_bytes) end
    return res
end

-- a few samples through nc.generate (skipped when nc.generate or the tokenizer is missing)
local function samples(model, opts, out)
    if not opts.tokenizer or not package.searchpath('nanochat.generate', package.path) then return nil end
    local N = nc()
    local was_training = model.training
    local ok, res = pcall(function()
        local texts = {}
        if model.eval then model:eval() end
        for _, prompt in ipairs(opts.sample_prompts or { 'fn main() {' }) do
            local ids = opts.tokenizer:encode(prompt)
            if opts.tokenizer.bos_id then table.insert(ids, 1, opts.tokenizer.bos_id) end
            local got = {}
            N.no_grad(function()
                for id in N.generate(model, ids, { max_tokens = opts.sample_tokens or 48, temperature = opts.sample_temperature or 0, seed = 1 }) do
                    got[#got + 1] = id
                end
            end)
            texts[#texts + 1] = prompt .. opts.tokenizer:decode(got)
        end
        return texts
    end)
    if model.train and was_training ~= false then model:train(true) end   -- also after a failed sample
    if not ok then
        if out then out:write('samples skipped: ' .. tostring(res) .. '\n') end
        return nil
    end
    if out then
        for _, t in ipairs(res) do out:write('sample: ' .. t:gsub('\n', '\n        ') .. '\n') end
    end
    return res
end

-- ---- the loop ---------------------------------------------------------------------------------------------
local function base_lr(opt)
    if type(opt) ~= 'table' then return nil end
    if type(opt.lr) == 'number' then return opt.lr end
    local g = opt.groups or opt.param_groups
    if type(g) == 'table' and type(g[1]) == 'table' and type(g[1].lr) == 'number' then return g[1].lr end
end

local function need(opts, k, what)
    if opts[k] == nil then error('nc.train: missing option ' .. k .. ' (' .. what .. ')', 3) end
end

function M.train(opts)
    local N = nc()
    local ckpt = require 'nanochat.checkpoint'
    if type(opts) ~= 'table' then error('nc.train: expected a table of options', 2) end
    need(opts, 'model', 'an nn.Module whose forward(x, y, opts) returns the mean loss')
    need(opts, 'optimizer', 'an object with step(mult) and zero_grad()')
    need(opts, 'loader', 'an object whose next() returns x, y')
    need(opts, 'steps', 'the number of optimizer steps')
    local model, opt, loader = opts.model, opts.optimizer, opts.loader
    local steps = opts.steps
    local accum = opts.grad_accum or 1
    if accum < 1 or accum ~= math.floor(accum) then error('nc.train: grad_accum must be a positive integer, got ' .. tostring(accum), 2) end
    local clip = opts.clip
    if clip == nil then clip = 1.0 end
    local max_bad = opts.max_bad_steps or 5
    local schedule = opts.schedule or function() return 1 end
    local keep = opts.keep or 3
    local fwd_opts = { z_loss = opts.z_loss, label_smoothing = opts.label_smoothing }
    local collider = opts.collider
    local params = model:parameters()
    local dev = M.device_of(model)   -- batches follow the model (file header: Devices)
    local out = opts.out or io.stdout
    local progress = opts.progress ~= false
    local tty = opts.tty
    if tty == nil then tty = out == io.stdout and C.nc_isatty(1) == 1 end
    local log_every = opts.log_every or 10
    local result = { losses = {}, evals = {}, interrupted = false, bad_steps = 0 }

    -- resume
    local start = 0
    if opts.ckpt_dir and opts.resume ~= false then
        local dir, problems = ckpt.latest(opts.ckpt_dir)
        for _, p in ipairs(problems or {}) do out:write('checkpoint skipped: ' .. p .. '\n') end
        if dir then
            local meta = ckpt.verify(dir)
            if opts.tokenizer and meta.tok_hash and opts.tokenizer.hash and meta.tok_hash ~= opts.tokenizer:hash() then
                error(string.format('nc.train: %s was trained with tokenizer %s, this run uses %s', dir, meta.tok_hash,
                    opts.tokenizer:hash()), 2)
            end
            meta = ckpt.restore(dir, { model = model, optimizer = opt, loader = loader, generators = opts.generators })
            start = meta.step or 0
            result.checkpoint = dir
            if progress then out:write(string.format('resumed from %s (step %d)\n', dir, start)) end
        end
    end
    result.step = start

    -- logs
    local jsonl, tb
    if opts.log_dir then
        ckpt.mkdir_p(opts.log_dir)
        local path = opts.log_dir .. '/metrics.jsonl'
        local err
        jsonl, err = io.open(path, 'ab')
        if not jsonl then error('nc.train: cannot open ' .. path .. ': ' .. tostring(err), 2) end
        if opts.tensorboard ~= false then tb = require('nanochat.tboard').writer(opts.log_dir) end
    end
    local function log(rec)
        if jsonl then
            jsonl:write(ckpt.json_encode(rec), '\n')
            jsonl:flush()
        end
    end
    local function tb_log(vals, step)
        if tb then
            local clean = {}
            for k, v in pairs(vals) do if type(v) == 'number' and finite(v) then clean[k] = v end end
            if next(clean) then tb:add_scalars(clean, step) end
        end
    end
    local line_open = false
    local function say(s)
        if line_open then out:write('\n'); line_open = false end
        out:write(s, '\n')
        out:flush()
    end

    local fpt, peak
    local lr0 = base_lr(opt)

    local function save(step)
        if not opts.ckpt_dir then return nil end
        local meta = {
            step = step,
            schedule = { step = step },
            data = loader.state and loader:state() or nil,
            rng = ckpt.rng_state(opts.generators),
            tok_hash = opts.tokenizer and opts.tokenizer.hash and opts.tokenizer:hash() or nil,
            config = opts.config or rawget(model, 'config') or rawget(model, 'cfg'),
            train = { steps = steps, grad_accum = accum, clip = clip, z_loss = opts.z_loss,
                      label_smoothing = opts.label_smoothing },
        }
        local dir = ckpt.save_step(opts.ckpt_dir, step, { model = model, optimizer = opt, meta = meta }, { keep = keep })
        result.checkpoint = dir
        return dir
    end

    local function do_eval(step)
        if not opts.val_loader then return end
        local ev = M.evaluate(model, opts)
        ev.step = step
        result.evals[#result.evals + 1] = ev
        log { type = 'eval', step = step, val_loss = ev.loss, val_bpb = ev.bpb, tokens = ev.tokens, wall = C.nc_wall_time() }
        tb_log({ ['val/loss'] = ev.loss, ['val/bpb'] = ev.bpb }, step)
        if progress then
            say(string.format('eval step %d | val loss %.4f%s', step, ev.loss or 0 / 0, ev.bpb and string.format(' | val bpb %.4f', ev.bpb) or ''))
        end
    end

    local installed = {}
    for _, sig in ipairs { SIGINT, SIGTERM } do
        core.check(C.nc_signal_install(sig), 'nc.train')
        installed[#installed + 1] = sig
    end
    local function interrupted()
        return C.nc_signal_pending(SIGINT) > 0 or C.nc_signal_pending(SIGTERM) > 0
    end

    local bad_run = 0
    local t_start, steps_timed, time_timed = now(), 0, 0
    local grad_scale = N.full({}, 1 / accum)
    local last_saved

    local ok, err = pcall(function()
        for s = start, steps - 1 do
            if interrupted() then
                result.interrupted = true
                say(string.format('interrupted at step %d: saving a checkpoint and stopping', s))
                last_saved = save(s)
                if last_saved then say('checkpoint: ' .. last_saved) end
                return
            end
            local t0 = now()
            local mult = schedule(s)
            local loss_sum, ntok, T, nkept = 0, 0, nil, 0
            for _ = 1, accum do
                local x, y = loader:next()
                if x == nil then error(string.format('nc.train: the loader ran out of batches at step %d', s), 0) end
                if dev ~= 'cpu' then x, y = x:to(dev), y:to(dev) end
                local loss
                if collider then
                    loss = collider:forward(model, x, y, fwd_opts)
                    nkept = nkept + collider.last.kept
                else
                    loss = model:forward(x, y, fwd_opts)
                end
                loss_sum = loss_sum + loss:item()
                loss:backward(grad_scale)
                ntok = ntok + y:numel()
                T = y:size(-1)
            end
            local loss_v = loss_sum / accum
            local grads = grads_of(params)
            local norm = M.grad_norm(grads)
            local step = s + 1
            if not finite(loss_v) or not finite(norm) then
                bad_run = bad_run + 1
                result.bad_steps = result.bad_steps + 1
                opt:zero_grad()
                if model.zero_grad then model:zero_grad() end
                local why = not finite(loss_v) and 'non-finite loss' or 'non-finite gradient norm'
                log { type = 'bad_step', step = step, reason = why, loss = finite(loss_v) and loss_v or tostring(loss_v),
                      grad_norm = finite(norm) and norm or tostring(norm), in_a_row = bad_run }
                say(string.format('step %d skipped: %s (loss %s, grad norm %s), %d in a row', step, why,
                    tostring(loss_v), tostring(norm), bad_run))
                if bad_run >= max_bad then
                    error(string.format('nc.train: aborting at step %d: %d steps in a row had a non-finite loss or '
                        .. 'gradient norm (max_bad_steps = %d); lower the learning rate, enable clipping or check the data',
                        step, bad_run, max_bad), 0)
                end
            else
                bad_run = 0
                if clip and clip > 0 and norm > clip then M.scale_grads(grads, clip / norm) end
                opt:step(mult)
                opt:zero_grad()
                if model.zero_grad then model:zero_grad() end
            end
            result.losses[step] = loss_v
            result.step = step
            local dt = now() - t0
            if s > start or steps - start == 1 then steps_timed, time_timed = steps_timed + 1, time_timed + dt end
            local avg = steps_timed > 0 and time_timed / steps_timed or dt
            local rec = { type = 'step', step = step, loss = finite(loss_v) and loss_v or nil, lr_mult = mult,
                          lr = lr0 and lr0 * mult or nil, grad_norm = finite(norm) and norm or nil, tokens = ntok,
                          dt = dt, tok_per_s = ntok / math.max(dt, 1e-9), wall = C.nc_wall_time(),
                          eta = avg * (steps - step), kept_frac = collider and nkept / ntok or nil }
            if progress or tb then
                if fpt == nil then
                    fpt = model.flops_per_token and model:flops_per_token(T) or false
                    if fpt then peak = opts.peak_flops or M.measure_peak_flops() end
                end
                if fpt and peak and peak > 0 then rec.mfu = rec.tok_per_s * fpt / peak end
            end
            log(rec)
            tb_log({ ['train/loss'] = rec.loss, ['train/lr'] = rec.lr or mult, ['train/grad_norm'] = rec.grad_norm,
                     ['train/tok_per_s'] = rec.tok_per_s, ['train/mfu'] = rec.mfu, ['train/kept_frac'] = rec.kept_frac }, step)
            if progress then
                local line = M.progress_line(rec, steps)
                if tty then
                    out:write('\r', line, '\27[K')
                    out:flush()
                    line_open = true
                elseif step % log_every == 0 or step == steps or step == start + 1 then
                    say(line)
                end
            end
            if opts.eval_every and opts.eval_every > 0 and (step % opts.eval_every == 0 or step == steps) then do_eval(step) end
            if opts.sample_every and opts.sample_every > 0 and (step % opts.sample_every == 0 or step == steps) then
                if line_open then out:write('\n'); line_open = false end
                samples(model, opts, progress and out or nil)
            end
            if opts.ckpt_every and opts.ckpt_every > 0 and step % opts.ckpt_every == 0 and step < steps then
                last_saved = save(step)
            end
        end
        if result.step == steps and start < steps then
            last_saved = save(steps)
            if last_saved and progress then say('checkpoint: ' .. last_saved) end
        end
    end)
    for i = #installed, 1, -1 do C.nc_signal_restore(installed[i]) end
    if line_open then out:write('\n') end
    if jsonl then jsonl:close() end
    if tb then tb:close() end
    result.seconds = now() - t_start
    if not ok then error(err, 0) end
    return result
end

return setmetatable(M, { __call = function(_, opts) return M.train(opts) end })
