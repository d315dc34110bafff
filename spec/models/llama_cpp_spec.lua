-- spec/models/llama_cpp_spec.lua — llama.cpp (pip llama-cpp-python, through tools/llama_check.py)
-- loads and runs what `nc.export.gguf` writes under the `bitnet` arch (plain models, and LoopLM
-- models unrolled into prelude + shared x T + coda layers): its logits on a prompt are compared
-- with our packed engine's (per-token int8 activations; for a LoopLM the looped engine at full
-- depth, exit_q = 1) and with the same ternary network run with float activations, its greedy
-- continuation with ours, and its tokenization of a text (from the embedded tokenizer.ggml.* keys)
-- with our tokenizer's. Skipped (pending) when python3 cannot import llama_cpp.
--
-- Tolerance (measured, see README "GGUF export"): llama.cpp quantizes each TQ matmul input to
-- Q8_K: int8 with scale 127 / max|x| per block of 256 values, round half to even — exactly our
-- per-token int8 when the row is 256 wide, one scale per 256-block (finer) when it is wider — and
-- keeps K/V in f16 by default. So: all widths 256 + an F32 K/V cache -> logits equal up to float
-- rounding (asserted <= 1e-3 absolute; measured 4.6e-5 with logits std 16) until an activation
-- that lies within float rounding of an int8 rounding boundary rounds the other way in llama.cpp
-- (the more layers, the likelier: the 8-layer unrolled LoopLM has one); from that position on the
-- spec asserts that flipping that one int8 step in our engine reproduces llama.cpp there (1e-3),
-- and the noise bound of the next case; d_ff 512 + F16 K/V ->
-- noise whose reference scale is how far our own int8 activations move the logits from float
-- activations (same ternary weights): mean and max |llama.cpp - engine| <= 1.5 x mean / max
-- |engine - float-act|. The model is random but made
-- sensitive: Wq/Wk scaled (sharp attention, so a wrong RoPE convention shows: measured ~25x the
-- bound) and wo/w2 scaled (block outputs comparable to the tied embedding in the residual).
package.path = 'lua/?.lua;lua/?/init.lua;' .. package.path
local nc = require 'nanochat'
local json = require 'dkjson'

local function tmp(suffix) local p = os.tmpname(); os.remove(p); return p .. suffix end

local QK_SCALE = tonumber(os.getenv('QK_SCALE') or '') or 8
local OUT_SCALE = tonumber(os.getenv('OUT_SCALE') or '') or 15
local have = os.execute('python3 -c "import llama_cpp" 2>/dev/null') == 0

local TEXTS = {}
for i = 1, 40 do
    TEXTS[i] = 'fn main() { let x' .. i .. ' = vec![1, 2, 3]; println!("{}", x' .. i .. '.len()); } // the then there\n'
end

-- run tools/llama_check.py; returns the decoded last JSON line
local function llama_check(path, args)
    local p = io.popen('python3 tools/llama_check.py ' .. path .. ' ' .. args .. ' 2>&1')
    local out = p:read('*a')
    p:close()
    local last = out:match('([^\n]*)%s*$')
    local ok, obj = pcall(json.decode, last)
    if not ok or type(obj) ~= 'table' then error('llama_check failed:\n' .. out) end
    return obj, out
end

-- the same ternary network with float activations (Qw(W) baked in, both quantizers off)
local function float_act_model(cfg, m)
    local f = nc.models.gpt.new(cfg)
    f:load_state_dict(m:state_dict())
    f:eval()
    nc.no_grad(function()
        for _, b in ipairs(f.h) do
            b.attn.ternary, b.mlp.ternary = false, false
            for _, L in ipairs { b.attn.wq, b.attn.wk, b.attn.wv, b.attn.wo, b.mlp.w1, b.mlp.w2, b.mlp.w3 } do
                L.weight:copy_((nc.quant_weight(L.weight, { group_size = L.group })))
                L.ternary = false
            end
        end
    end)
    return f
end

-- Our engine's logits (B = 1, op by op) with a hook on its per-token int8 activation quantization
-- (nc.infer.quant_act; quantized value y = x * 127 / max|x| of its row = position):
--  - collect = { maxrow =, lim = }: also returns every activation at positions <= maxrow whose y lies
--    within lim int8 steps of a rounding boundary (|y - floor(y) - 0.5| < lim), nearest first;
--  - nudge = one of those: that activation is moved just across its boundary (one int8 step the
--    other way), i.e. what llama.cpp computes when its Q8_K of the same value, reached in another
--    float order, rounds the other way.
local function forward_q(e, idx, nudge, collect)
    local infer = require 'nanochat.infer'
    local orig = infer.quant_act
    local call, ties = 0, {}
    infer.quant_act = function(x, ...)
        call = call + 1
        local mine = nudge and nudge.call == call
        if collect or mine then
            local R, K = x:size(0), x:size(1)
            local l = x:contiguous():tolist()
            for r = 1, R do
                if (collect and r - 1 <= collect.maxrow) or (mine and nudge.row == r - 1) then
                    local mx = 0
                    for k = 1, K do mx = math.max(mx, math.abs(l[(r - 1) * K + k])) end
                    local sc = 127 / math.max(mx, 1e-30)
                    for k = 1, K do
                        local y = l[(r - 1) * K + k] * sc
                        local d = math.abs(y - math.floor(y) - 0.5)
                        if collect and d < collect.lim then ties[#ties + 1] = { call = call, row = r - 1, k = k, d = d } end
                        if mine and nudge.row == r - 1 and nudge.k == k then
                            local bnd = math.floor(y) + 0.5
                            l[(r - 1) * K + k] = (y < bnd and bnd + 0.01 or bnd - 0.01) / sc
                        end
                    end
                end
            end
            if mine then x = nc.tensor(l):view { R, K } end
        end
        return orig(x, ...)
    end
    local fused = e.fused
    e.fused = false
    local ok, out = pcall(e.forward, e, idx)
    e.fused, infer.quant_act = fused, orig
    if not ok then error(out, 0) end
    table.sort(ties, function(p, q) return p.d < q.d end)
    return out, ties
end

-- per position t = 1..T: max over the vocab of |a - b| (a, b (1, T, V))
local function per_position(a, b, T, V)
    local dl = (a - b):abs():reshape({ T * V }):tolist()
    local per = {}
    for t = 1, T do
        per[t] = 0
        for v = 1, V do per[t] = math.max(per[t], dl[(t - 1) * V + v]) end
    end
    return per
end

local function stats(a, b)
    local d = (a - b):abs()
    return d:max():item(), d:mean():item()
end

describe('llama.cpp runs the exported bitnet GGUF', function()
    local cases = {
        -- d_ff 512: llama.cpp quantizes w2's input per 256-block, we per token; F16 K/V cache
        { 'tq2_0, SubLN gains, GQA 4/2, d_ff 512, F16 KV', { d_model = 256, n_head = 4, n_kv_head = 2, d_ff = 512, subln = true },
            'tq2_0', false },
        -- every matmul input 256 wide: Q8_K is our per-token int8 exactly; F32 K/V cache
        { 'tq1_0, no SubLN, GQA 4/1, all widths 256, F32 KV', { d_model = 256, n_head = 4, n_kv_head = 1, d_ff = 256 },
            'tq1_0', true },
        -- LoopLM unrolled (export.lua loop=unroll, the default here): 1 + 2 x 3 + 1 = 8 bitnet layers,
        -- compared with the LoopLM engine at full depth (exit_q = 1)
        { 'LoopLM 1/2x3/1 unrolled, tq2_0, SubLN, GQA 4/2, all widths 256, F32 KV', { d_model = 256, n_head = 4,
            n_kv_head = 2, d_ff = 256, subln = true, n_layer = 4, loop = { prelude = 1, shared = 2, coda = 1, T = 3 } },
            'tq2_0', true },
        { 'LoopLM 1/1x4/1 unrolled, tq1_0, d_ff 512, F16 KV', { d_model = 256, n_head = 4, n_kv_head = 2, d_ff = 512,
            n_layer = 3, loop = { prelude = 1, shared = 1, coda = 1, T = 4 } }, 'tq1_0', false },
    }
    for ci, cs in ipairs(cases) do
        it(cs[1] .. ': logits, greedy tokens, tokenization', function()
            if not have then pending('python3 cannot import llama_cpp (pip install llama-cpp-python)') return end
            local tok = nc.tokenizer.train { texts = TEXTS, vocab = 320 }
            local cfg = nc.models.config('micro', { vocab_size = tok:vocab_size(), seq_len = 64, n_layer = 2, mlp = 'swiglu',
                tie_embeddings = true, embed_norm = false, embed_std = 1.0, seed = 10 + ci })
            for k, v in pairs(cs[2]) do cfg[k] = v end
            local m = nc.models.gpt.new(cfg)
            m:eval()
            -- make the blocks matter: random q/k give near-uniform attention (where the RoPE
            -- convention would hardly show) and the small wo/w2 leave the logits to the tied
            -- embedding; scale Wq, Wk (sharper attention) and wo, w2 (block outputs O(1))
            nc.no_grad(function()
                for _, b in ipairs(m.h) do
                    for _, L in ipairs { b.attn.wq, b.attn.wk } do L.weight:copy_(L.weight * QK_SCALE) end
                    for _, L in ipairs { b.attn.wo, b.mlp.w2 } do L.weight:copy_(L.weight * OUT_SCALE) end
                end
            end)
            if cfg.subln then
                nc.no_grad(function()
                    for i, b in ipairs(m.h) do
                        b.attn.sub_norm.weight:copy_(nc.randn({ cfg.d_model }, { std = 0.2, generator = nc.generator(i) }) + 1)
                        b.mlp.sub_norm.weight:copy_(nc.randn({ cfg.d_ff }, { std = 0.2, generator = nc.generator(9 + i) }) + 1)
                    end
                end)
            end
            local e = nc.pack(m)
            local path = tmp('.gguf')
            local _, info = nc.export.gguf(e, path, { type = cs[3], tokenizer = tok })
            assert.equal('bitnet', info.arch)
            if cfg.loop then assert.equal('unroll', info.loop) end   -- e (the reference below) stays the LoopLM engine
            local text = TEXTS[7]
            local ids = { tok.bos_id }
            for _, id in ipairs(tok:encode(text)) do ids[#ids + 1] = id end
            while #ids > 24 do table.remove(ids) end
            local NG = 8
            local tf = tmp('.txt')
            local fh = io.open(tf, 'wb'); fh:write(text); fh:close()
            local r = llama_check(path, '--ids ' .. table.concat(ids, ',') .. ' --greedy ' .. NG .. ' --tokenize-file ' .. tf ..
                (cs[4] and ' --kv-f32' or ''))
            os.remove(tf)
            -- tokenization through the embedded vocab/merges/pre-tokenizer = ours
            assert.same(tok:encode(text), r.tokenized)
            -- logits
            assert.equal(cfg.vocab_size, r.n_vocab)
            local T, V = #ids, cfg.vocab_size
            local flat = {}
            for t = 1, T do for v = 1, V do flat[#flat + 1] = r.logits[t][v] end end
            local ll = nc.tensor(flat):view { 1, T, V }
            local idx = nc.tensor({ ids }, { dtype = 'i64' })
            local ours = e:forward(idx)
            local fl = nc.no_grad(function() return float_act_model(cfg, m):forward(idx) end)
            local dev = ours - ours:mean():item()
            local std = (dev * dev):mean():item() ^ 0.5
            local mx, mean = stats(ll, ours)
            local mx_f, mean_f = stats(ll, fl)
            local mx_of, mean_of = stats(ours, fl)
            print(string.format('\n[%s] logits std %.3f | llama.cpp vs engine: max %.3g mean %.3g | llama.cpp vs float-act: ' ..
                'max %.4f mean %.5f | engine vs float-act: max %.4f mean %.5f', cs[1], std, mx, mean, mx_f, mean_f, mx_of, mean_of))
            assert.is_true(std > 1)
            if cs[4] then
                -- same int8 activations, f32 K/V: float rounding only (measured max 4.6e-5) ... up to
                -- the first position where one activation of ours lies within float rounding of an
                -- int8 rounding boundary and llama.cpp rounds it the other way (the deeper unrolled
                -- LoopLM, 8 layers, quantizes 4x more values than the 2-layer case: measured a flip at
                -- position 10 that moved the logits by up to 0.31 from there on). Asserted: if some
                -- position p is off by more than 1e-3 (the first such), then moving ONE near-tie
                -- activation of ours at a position <= p across its boundary makes our logits match
                -- llama.cpp's at every position <= p to 1e-3 (the difference is that one int8 step; a
                -- layout / RoPE / layer-order bug is not), and the whole prompt stays within the
                -- noise bound of the F16-K/V case below.
                local per = per_position(ll, ours, T, V)
                local first
                for t = 1, T do if per[t] > 1e-3 then first = t; break end end
                if first then
                    local _, ties = forward_q(e, idx, nil, { maxrow = first - 1, lim = 2e-3 })
                    local explained, tried = nil, 0
                    for i = 1, math.min(#ties, 16) do
                        tried = i
                        local p2 = per_position(ll, (forward_q(e, idx, ties[i])), T, V)
                        local worst = 0
                        for t = 1, first do worst = math.max(worst, p2[t]) end
                        if worst <= 1e-3 then explained = ties[i]; explained.worst = worst; break end
                    end
                    print(string.format('  position %d (of %d) is the first off by > 1e-3 (%.3g); %s', first - 1, T, per[first],
                        explained and string.format('one int8 step at position %d (quantization %d, element %d, %.1e steps from ' ..
                            'the boundary) reproduces llama.cpp there to %.2g', explained.row, explained.call, explained.k,
                            explained.d, explained.worst) or ('no single flip among ' .. tried .. ' near ties explains it')))
                    assert.is_truthy(explained, 'the deviation at position ' .. (first - 1) .. ' is not one activation rounding flip')
                    assert.is_true(mean <= 1.5 * mean_of, string.format('mean |llama.cpp - engine| %.4f > 1.5 x %.4f', mean, mean_of))
                    assert.is_true(mx <= 1.5 * mx_of, string.format('max |llama.cpp - engine| %.4f > 1.5 x %.4f', mx, mx_of))
                end
            else
                -- llama.cpp's per-block activation scales and f16 K/V vs ours: noise of the size of
                -- the activation quantization itself (engine vs float activations); a wrong RoPE
                -- convention or layout is ~25x that
                assert.is_true(mean <= 1.5 * mean_of, string.format('mean |llama.cpp - engine| %.4f > 1.5 x %.4f', mean, mean_of))
                assert.is_true(mx <= 1.5 * mx_of, string.format('max |llama.cpp - engine| %.4f > 1.5 x %.4f', mx, mx_of))
            end
            -- greedy continuation: ours from the engine (argmax, lowest id on ties)
            local seq = {}
            for i, v in ipairs(ids) do seq[i] = v end
            local greedy = {}
            for _ = 1, NG do
                local lg = e:forward(nc.tensor({ seq }, { dtype = 'i64' })):narrow(1, #seq - 1, 1):reshape({ V }):tolist()
                local best = 1
                for v = 2, V do if lg[v] > lg[best] then best = v end end
                greedy[#greedy + 1] = best - 1
                seq[#seq + 1] = best - 1
            end
            assert.same(greedy, r.greedy)
            os.remove(path)
        end)
    end
end)
