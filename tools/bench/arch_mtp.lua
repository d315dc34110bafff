-- tools/bench/arch_mtp.lua — self-speculative decoding with the MTP modules vs plain greedy decoding.
--
-- Model: the e3 widths (configs/models/e3.lua: d 256, 4 layers, 4 heads / 2 KV heads, ReLU² 1024,
-- vocab of the tokenizer, one sequential MTP module, lambda 0.3) WITHOUT e3's LoopLM and mHC
-- (plain blocks: the decoding loop measured here is the MTP one). It is trained briefly on the
-- built-in Rust corpus (nc.data.prepare{}, as recipes/tiny.lua; cached after the first build) —
-- `steps` AdamW steps of B x T tokens — because a random model's modules accept almost nothing.
-- A brief run is far from a trained model: the acceptance rate it shows is a lower bound.
-- Then for each of `prompts` validation-text prompts (first `prompt` tokens of a val sequence):
-- nc.generate (temperature 0 = plain greedy), nc.mtp.generate (greedy, drafts checked by the
-- main model) and nc.mtp.generate with depth = 0 (the same loop without drafts: one token per
-- forward, so `vs depth 0` isolates what the drafts buy from how the loop picks the argmax) each
-- decode `new` tokens; wall clock of each whole call (prefill included in all), the three streams
-- must match. Rows: the untrained model (same cfg) and the trained one.
--
-- Returns / prints: rows (state, steps, main loss, MTP loss on a val batch, accept rate, tokens
-- per main forward, the three tok/s, speedups, identical) and the JSON { mtp_spec_speedup (vs
-- nc.generate), mtp_spec_speedup_vs_depth0, mtp_accept_rate, mtp_tokens_per_forward, plain_tok_s,
-- depth0_tok_s, spec_tok_s, steps, main_loss, mtp_loss, identical, threads } (the trained model).
--
-- Usage: ./nanochat tools/bench/arch_mtp.lua [steps=200] [B=8] [T=32] [lr=3e-3] [prompts=4]
--                                            [prompt=32] [new=48] [threads=1] [depth=1] [draft_vocab=2048] [engine=1]
-- engine = 1 (default) adds a row decoding the trained model through the packed engine (nc.pack):
-- nc.generate, nc.mtp.generate and depth 0 on the Engine, streams checked identical; 0 leaves it out.
-- draft_vocab > 0 adds a row for the trained model drafting over ids < draft_vocab only (the
-- modules' head reads that many rows; see nc.mtp.generate); 0 leaves it out.
-- or require it: local run = dofile('tools/bench/arch_mtp.lua'); local r = run{ steps = 10 }
-- (threads defaults to 1: at these sizes one thread is faster than two on a shared machine).
if not package.path:find('lua/?/init.lua', 1, true) then
    package.path = 'lua/?.lua;lua/?/init.lua;' .. package.path
end
local here = (debug.getinfo(1, 'S').source:match('^@(.*/)') or './')
local L = dofile(here .. 'lib.lua')
local nc = require 'nanochat'

local DEFAULTS = { steps = 200, B = 8, T = 32, lr = 3e-3, prompts = 4, prompt = 32, new = 48, threads = 1, depth = 1,
                   draft_vocab = 2048, quiet = false, engine = 1 }

local HEADERS = { 'model', 'steps', 'main loss', 'mtp loss', 'accept', 'tok/fwd', 'greedy tok/s', 'depth-0 tok/s',
                  'spec tok/s', 'vs greedy', 'vs depth 0', 'identical' }
local FMTS = { nil, '%d', '%.3f', '%.3f', '%.3f', '%.2f', '%.1f', '%.1f', '%.1f', '%.2fx', '%.2fx', nil }

local function run(opts)
    local o = {}
    for k, v in pairs(DEFAULTS) do o[k] = v end
    for k, v in pairs(opts or {}) do
        if DEFAULTS[k] == nil then error('arch_mtp: unknown option ' .. tostring(k), 2) end
        o[k] = v
    end
    local say = o.quiet and function() end or function(...) io.stderr:write(string.format(...), '\n') end
    local prev_threads = nc.get_num_threads()
    nc.set_num_threads(o.threads)
    local tok, shard_dir = nc.data.prepare { quiet = true }

    local cfg = dofile('configs/models/e3.lua')
    cfg.loop, cfg.mhc = nil, nil
    cfg.vocab_size = tok:vocab_size()
    cfg.mtp = { depth = o.depth, lambda = 0.3, kind = 'sequential' }
    local model = nc.models.gpt.new(cfg)

    -- prompts and a fixed eval batch from the validation split
    local val = nc.data.loader { shards = nc.data.shards(shard_dir, 'val'), B = 1, T = o.prompt, sampling = 'sequential',
                                 loop = true, tok_hash = tok:hash() }
    local prompts = {}
    for i = 1, o.prompts do
        for _ = 1, 7 do val:next() end   -- spread the prompts over the split
        local x = val:next()
        prompts[i] = x:reshape { -1 }:tolist()
    end
    local ev = nc.data.loader { shards = nc.data.shards(shard_dir, 'val'), B = o.B, T = o.T, sampling = 'sequential',
                                loop = true, tok_hash = tok:hash() }
    local ex, ey = ev:next()

    local rows, res = {}, nil
    local function measure(label, steps, dv, dec)
        local main, ls = nc.mtp.eval_losses(model, ex, ey)
        dec = dec or model
        local t_plain, t_spec, t_d0, n_tok, identical = 0, 0, 0, 0, true
        local acc, drafted, fwd_tok, fwd = 0, 0, 0, 0
        for _, p in ipairs(prompts) do
            local t0 = L.now()
            local ref = nc.generate.collect(dec, p, { temperature = 0, max_tokens = o.new })
            local t1 = L.now()
            local ids, st = nc.mtp.generate(dec, p, { max_tokens = o.new, draft_vocab = dv })
            local t2 = L.now()
            local ids0 = nc.mtp.generate(dec, p, { max_tokens = o.new, depth = 0 })
            local t3 = L.now()
            t_plain, t_spec, t_d0, n_tok = t_plain + (t1 - t0), t_spec + (t2 - t1), t_d0 + (t3 - t2), n_tok + #ref
            for i = 1, math.max(#ids, #ref, #ids0) do
                if ids[i] ~= ref[i] or ids0[i] ~= ref[i] then identical = false end
            end
            acc, drafted = acc + st.accepted, drafted + st.drafted
            fwd_tok, fwd = fwd_tok + #ids - 1, fwd + st.main_forwards - 1
        end
        local r = { label = label, steps = steps, main_loss = main, mtp_loss = ls[1], accept = drafted > 0 and acc / drafted or 0,
                    tpf = fwd > 0 and fwd_tok / fwd or 0, plain = n_tok / t_plain, spec = n_tok / t_spec,
                    d0 = n_tok / t_d0, identical = identical }
        r.speedup, r.speedup_d0 = r.spec / r.plain, r.spec / r.d0
        rows[#rows + 1] = { label, steps, r.main_loss, r.mtp_loss, r.accept, r.tpf, r.plain, r.d0, r.spec, r.speedup,
                            r.speedup_d0, identical and 'yes' or 'NO' }
        say('arch_mtp: %s: accept %.3f, %.2f tokens/forward, greedy %.1f tok/s (depth 0 loop %.1f), speculative %.1f tok/s '
            .. '(%.2fx, %.2fx)%s', label, r.accept, r.tpf, r.plain, r.d0, r.spec, r.speedup, r.speedup_d0,
            identical and '' or ', STREAMS DIFFER')
        return r
    end

    measure('untrained', 0)
    local dv = o.draft_vocab > 0 and math.min(o.draft_vocab, cfg.vocab_size) or nil
    -- brief training on the corpus: AdamW, linear warmup over the first tenth, then constant
    local opt = nc.optim.adamw(model:parameters(), { lr = o.lr, betas = { 0.9, 0.95 }, weight_decay = 0 })
    local loader = nc.data.loader { shards = nc.data.shards(shard_dir, 'train'), B = o.B, T = o.T, seed = 1,
                                    sampling = 'random', tok_hash = tok:hash() }
    local warm = math.max(1, math.floor(o.steps / 10))
    local t0 = L.now()
    for s = 1, o.steps do
        local x, y = loader:next()
        local loss = model:forward(x, y)
        loss:backward()
        opt:step(math.min(1, s / warm))
        opt:zero_grad()
        if s % 20 == 0 or s == o.steps then
            say('arch_mtp: step %d/%d loss %.3f (%.1f s)', s, o.steps, loss:item(), L.now() - t0)
        end
    end
    model:eval()
    local state = o.steps > 0 and 'trained' or 'untrained'
    res = measure(state, o.steps)
    local res_dv = dv and measure(string.format('%s, draft head %d', state, dv), o.steps, dv)
    -- the same three decoders on the packed engine (nc.pack: the MTP modules packed too)
    local res_e = o.engine ~= 0 and measure(state .. ', packed engine', o.steps, nil, nc.pack(model)) or nil
    nc.set_num_threads(prev_threads)
    return {
        headers = HEADERS, fmts = FMTS, rows = rows,
        json = { mtp_spec_speedup = L.round(res.speedup, 3), mtp_accept_rate = L.round(res.accept, 3),
                 mtp_spec_speedup_vs_depth0 = L.round(res.speedup_d0, 3), depth0_tok_s = L.round(res.d0, 2),
                 mtp_tokens_per_forward = L.round(res.tpf, 3), plain_tok_s = L.round(res.plain, 2),
                 spec_tok_s = L.round(res.spec, 2), steps = o.steps, main_loss = L.round(res.main_loss, 4),
                 mtp_loss = L.round(res.mtp_loss, 4), identical = res.identical and (not res_dv or res_dv.identical),
                 threads = o.threads,
                 mtp_spec_speedup_draft_vocab = res_dv and L.round(res_dv.speedup, 3) or nil,
                 mtp_accept_rate_draft_vocab = res_dv and L.round(res_dv.accept, 3) or nil, draft_vocab = dv,
                 engine_mtp_spec_speedup = res_e and L.round(res_e.speedup, 3) or nil,
                 engine_mtp_accept_rate = res_e and L.round(res_e.accept, 3) or nil,
                 engine_plain_tok_s = res_e and L.round(res_e.plain, 2) or nil,
                 engine_spec_tok_s = res_e and L.round(res_e.spec, 2) or nil,
                 engine_identical = res_e and res_e.identical or nil },
    }
end

-- standalone (this file is the script being run: arg[0]); dofile/require only return run
local main = rawget(_G, 'arg') and rawget(_G, 'arg')[0]
if type(main) == 'string' and main:match('arch_mtp%.lua$') then
    local args = L.parse_args()
    local o = {}
    for k in pairs(DEFAULTS) do if args[k] ~= nil then o[k] = args[k] end end
    local r = run(o)
    print(string.format('self-speculative (MTP depth %d) vs plain greedy decoding, e3 widths without loop/mHC, %d threads',
        o.depth or DEFAULTS.depth, o.threads or DEFAULTS.threads))
    L.print_table(r.headers, r.rows, r.fmts)
    print(L.json(r.json))
end

return run
