-- spec/models/export_e3_spec.lua — GGUF export of mHC and MTP models under our 'nanochat' arch
-- (lua/nanochat/export.lua), up to the whole e3 architecture (configs/models/e3_micro.lua:
-- LoopLM + mHC-lite 4 streams + one MTP module):
--  - every key (nanochat.*, nanochat.loop.*, nanochat.mhc.*, nanochat.mtp.*) and every tensor (the
--    list of names built here independently of the writer; ternary values, per-row scales, exit gate,
--    the mHC layers' bias / phi / alpha, the MTP projection and block) re-read with our reader and
--    compared with the source, bit for bit; pip `gguf` (when python3 has it) reads the same keys
--    and tensors (names, types, shapes, scalar values, and per tensor the float64 sum, sum of
--    squares and first / last values of its dequantized data);
--  - the engine loaded back (export.load) has EXACTLY nc.pack(source)'s logits: full depth (q = 1)
--    prefill and token-by-token decode, early exit (q = 0.6: same exit loops per token), the same
--    greedy continuation; nc.mtp.generate (self-speculative) on the reloaded engine equals its plain
--    greedy stream and drafts exactly what the source engine's modules draft, round by round;
--  - mHC alone (lite n 4 at d 256: TQ2_0 / TQ1_0 blocks; Sinkhorn n 2 static) and MTP alone
--    (sequential depth 2, parallel heads depth 2); e3 unrolled (loop=unroll) keeps mHC + MTP;
--  - a truncated or corrupted e3 file (tensor name, key name, key value) gives a clear error;
--  - `nanochat export` on an e3_micro checkpoint dir, engine.open and `nanochat generate` on the file.
package.path = 'lua/?.lua;lua/?/init.lua;spec/helpers/?.lua;' .. package.path
local nc = require 'nanochat'
local LM = nc.looplm

local function tmp(suffix) local p = os.tmpname(); os.remove(p); return p .. suffix end
local function maxdiff(a, b) return (a - b):abs():max():item() end
local function ids(t) return nc.tensor({ t }, { dtype = 'i64' }) end

local PROMPT = { 1, 5, 9, 3, 200, 17, 8, 2, 77, 31, 4, 250 }   -- 12 positions: the op-by-op prefill

-- random mHC coefficients (streams that really differ) and a N(0, 1) exit gate (tokens exit at
-- different loops with q < 1), so that every exported parameter matters to the logits
local function perturb(m, seed)
    local g = require('model_fixtures').perturb_mhc(m, seed)
    nc.no_grad(function()
        if m.exit_gate then m.exit_gate.weight:copy_(nc.randn(m.exit_gate.weight:shape(), { generator = g, std = 1.0 })) end
    end)
end

local function model_of(name, over)
    local cfg = nc.models.config(name, { head_std = 0.3 })
    for k, v in pairs(over or {}) do cfg[k] = v end
    local m = nc.models.gpt.new(cfg)
    m:eval()
    perturb(m, 7)
    return m
end

local function have_pygguf() return os.execute('python3 -c "import gguf" 2>/dev/null') == 0 end

-- the tensors a nanochat file of cfg c must hold: name -> shape (built from the cfg, not the writer)
local function expected_tensors(c)
    local d, qd, kvd = c.d_model, c.n_head * c.head_dim, c.n_kv_head * c.head_dim
    local want = { ['token_embd.weight'] = { c.vocab_size, d } }
    if not c.tie_embeddings then want['output.weight'] = { c.vocab_size, d } end
    if c.loop then want['exit_gate.weight'], want['exit_gate.bias'] = { 1, d }, { 1 } end
    local projs = { attn_q = { qd, d }, attn_k = { kvd, d }, attn_v = { kvd, d }, attn_output = { d, qd },
        ffn_up = { c.d_ff, d }, ffn_down = { d, c.d_ff } }
    if c.mlp == 'swiglu' then projs.ffn_gate = { c.d_ff, d } end
    local function block(pre, mhc)
        for nm, s in pairs(projs) do want[pre .. nm .. '.weight'], want[pre .. nm .. '.scale'] = s, { s[1] } end
        if c.subln then want[pre .. 'attn_sub_norm.weight'], want[pre .. 'ffn_sub_norm.weight'] = { qd }, { c.d_ff } end
        if mhc then
            local n = c.mhc.n
            local K = 2 * n + (c.mhc.kind == 'lite' and ({ 1, 2, 6, 24 })[n] or n * n)
            for _, sub in ipairs { 'mhc_attn', 'mhc_mlp' } do
                want[pre .. sub .. '.bias'] = { K }
                if c.mhc.dynamic then want[pre .. sub .. '.phi'], want[pre .. sub .. '.alpha'] = { K, n * d }, { 3 } end
            end
        end
    end
    for i = 1, c.n_layer do block('blk.' .. (i - 1) .. '.', c.mhc) end
    if c.mtp then
        for k = 1, c.mtp.depth do
            local pre = 'mtp.' .. (k - 1) .. '.'
            if c.mtp.kind == 'sequential' then want[pre .. 'proj.weight'], want[pre .. 'proj.scale'] = { d, 2 * d }, { d } end
            block(pre, false)
        end
    end
    return want
end

-- every key and tensor of the file at path against the source model m and its engine e (which
-- was exported: layers = e.layers, cfg = e.cfg); returns the File
local function check_file(path, m, e, ty)
    local f = nc.gguf.read(path)
    local md, c = f.metadata, e.cfg
    assert.equal('nanochat', md['general.architecture'])
    for _, k in ipairs { 'vocab_size', 'seq_len', 'd_model', 'n_layer', 'n_head', 'n_kv_head', 'head_dim', 'd_ff', 'mlp',
        'qk_norm', 'tie_embeddings', 'quant_group', 'subln', 'embed_norm' } do
        assert.equal(c[k], md['nanochat.' .. k], k)
    end
    if c.loop then
        for k, v in pairs(c.loop) do assert.is_true(math.abs(md['nanochat.loop.' .. k] - v) < 1e-12, 'loop.' .. k) end
    else
        assert.is_nil(md['nanochat.loop.T'])
    end
    for _, feat in ipairs { 'mhc', 'mtp' } do
        local n_keys = 0
        for _, k in ipairs(f.keys) do if k:find('nanochat.' .. feat .. '.', 1, true) == 1 then n_keys = n_keys + 1 end end
        if c[feat] then
            local n_want = 0
            for k, v in pairs(c[feat]) do
                n_want = n_want + 1
                if type(v) == 'number' then assert.is_true(math.abs(md['nanochat.' .. feat .. '.' .. k] - v) < 1e-12, k)
                else assert.equal(v, md['nanochat.' .. feat .. '.' .. k], k) end
            end
            assert.equal(n_want, n_keys)
        else
            assert.equal(0, n_keys)
        end
    end
    -- the tensor list: exactly the expected names and shapes
    local want = expected_tensors(c)
    local n_want = 0
    for name, shape in pairs(want) do
        n_want = n_want + 1
        assert.is_truthy(f.tensor_index[name], 'missing ' .. name)
        assert.same(shape, f.tensor_index[name].shape, name)
    end
    assert.equal(n_want, #f.tensors)
    -- values, bit for bit
    assert.equal(0, maxdiff(f:tensor('token_embd.weight'), e.wte))
    if not c.tie_embeddings then assert.equal(0, maxdiff(f:tensor('output.weight'), e.head)) end
    if c.loop then
        assert.equal(0, maxdiff(f:tensor('exit_gate.weight'), m.exit_gate.weight))
        assert.equal(0, maxdiff(f:tensor('exit_gate.bias'), m.exit_gate.bias))
    end
    local map = { attn_q = 'wq', attn_k = 'wk', attn_v = 'wv', attn_output = 'wo', ffn_up = c.mlp == 'swiglu' and 'w3' or 'w1',
        ffn_down = 'w2', ffn_gate = c.mlp == 'swiglu' and 'w1' or nil }
    local function block(pre, L, b)
        for gname, ours in pairs(map) do
            local P = L[ours]
            assert.equal(P.in_features % 256 == 0 and (ty or 'tq2_0'):upper() or 'I8', f.tensor_index[pre .. gname .. '.weight'].type_name)
            assert.equal(0, maxdiff(f:tensor_f32(pre .. gname .. '.weight'), P:ternary()), pre .. gname)
            assert.equal(0, maxdiff(f:tensor(pre .. gname .. '.scale'), P.scale), pre .. gname .. '.scale')
        end
        if c.subln then
            assert.equal(0, maxdiff(f:tensor(pre .. 'attn_sub_norm.weight'), b.attn.sub_norm.weight))
            assert.equal(0, maxdiff(f:tensor(pre .. 'ffn_sub_norm.weight'), b.mlp.sub_norm.weight))
        end
        if b.mhc_attn then
            -- the training model's own mHC parameters (not the engine's copies)
            for _, sub in ipairs { 'mhc_attn', 'mhc_mlp' } do
                for _, p in ipairs { 'bias', 'phi', 'alpha' } do
                    if b[sub][p] then assert.equal(0, maxdiff(f:tensor(pre .. sub .. '.' .. p), b[sub][p]), pre .. sub .. '.' .. p) end
                end
            end
        end
    end
    for i, L in ipairs(e.layers) do block('blk.' .. (i - 1) .. '.', L, m.h[i]) end
    if c.mtp then
        for k, mod in ipairs(e.mtp) do
            local pre = 'mtp.' .. (k - 1) .. '.'
            if mod.proj then
                assert.equal(mod.proj.P.in_features % 256 == 0 and (ty or 'tq2_0'):upper() or 'I8',
                    f.tensor_index[pre .. 'proj.weight'].type_name)
                assert.equal(0, maxdiff(f:tensor_f32(pre .. 'proj.weight'), mod.proj.P:ternary()))
                assert.equal(0, maxdiff(f:tensor(pre .. 'proj.scale'), mod.proj.P.scale))
            end
            block(pre, mod.block.L, m.mtp[k].block)
        end
    end
    return f
end

-- pip gguf re-reads every key and tensor: names, ggml types, shapes, scalar values, and the
-- dequantized data's float64 sum / sum of squares / first and last value per tensor
local function check_pygguf(path, f)
    if not have_pygguf() then return false end
    local py = [[
import gguf, sys, json
import numpy as np
from gguf import quants
r = gguf.GGUFReader(sys.argv[1])
kv = {}
for k, fl in r.fields.items():
    if k.startswith("GGUF."): continue
    v = fl.contents()
    kv[k] = v if isinstance(v, (int, float, str, bool)) else len(v)
ts = []
for t in r.tensors:
    raw = t.tensor_type.name in ("F32", "F16", "I8", "I32", "F64")
    x = (np.asarray(t.data) if raw else quants.dequantize(t.data, t.tensor_type)).astype(np.float64).reshape(-1)
    ts.append([t.name, t.tensor_type.name, [int(s) for s in t.shape], float(x.sum()), float((x * x).sum()),
               float(x[0]), float(x[-1])])
print(json.dumps({"kv": kv, "tensors": ts}))
]]
    local pf = tmp('.py')
    local fh = io.open(pf, 'w'); fh:write(py); fh:close()
    local p = io.popen('python3 ' .. pf .. ' ' .. path .. ' 2>&1')
    local text = p:read('*a')
    p:close(); os.remove(pf)
    local got = require('dkjson').decode(text)
    assert.is_table(got, text)
    local nk = 0
    for _ in pairs(got.kv) do nk = nk + 1 end
    assert.equal(#f.keys, nk)
    for _, k in ipairs(f.keys) do
        local v = f.metadata[k]
        if type(v) == 'number' then assert.is_true(math.abs(got.kv[k] - v) <= 1e-6 * math.max(1, math.abs(v)), k)
        elseif type(v) ~= 'table' then assert.equal(v, got.kv[k], k) end
    end
    assert.equal(#f.tensors, #got.tensors)
    for i, t in ipairs(f.tensors) do
        local g = got.tensors[i]
        assert.equal(t.name, g[1])
        assert.equal(t.type_name, g[2])
        assert.same(t.ne, g[3])
        local l = f:tensor_f32(t.name):reshape({ -1 }):tolist()
        local s, s2 = 0, 0
        for j = 1, #l do s, s2 = s + l[j], s2 + l[j] * l[j] end     -- float64, as numpy
        assert.is_true(math.abs(s - g[4]) <= 1e-9 * math.max(1, s2), t.name .. ' sum')
        assert.is_true(math.abs(s2 - g[5]) <= 1e-9 * math.max(1, s2), t.name .. ' sum of squares')
        assert.equal(l[1], g[6], t.name)
        assert.equal(l[#l], g[7], t.name)
    end
    return true
end

local function greedy(e, n, q, prompt)
    return nc.generate.collect(e, prompt or { 1, 5, 9 }, { max_tokens = n, temperature = 0, exit_q = q })
end

-- token-by-token decode of PROMPT on both engines: the largest logit difference, and the caches
local function decode_diff(e1, e2, q)
    local c1, c2 = e1:new_cache(1, #PROMPT, { exit_q = q }), e2:new_cache(1, #PROMPT, { exit_q = q })
    local worst = 0
    for _, id in ipairs(PROMPT) do
        worst = math.max(worst, maxdiff(e1:forward_cached(ids({ id }), c1), e2:forward_cached(ids({ id }), c2)))
    end
    return worst, c1, c2
end

-- MTP self-speculative greedy on the reloaded engine e2 = its plain greedy; drafts = the source's
local function check_mtp(e, e2, prompt)
    local got, st = nc.mtp.generate(e2, prompt, { max_tokens = 16, trace = true })
    assert.same(greedy(e2, 16, 1, prompt), got)
    assert.is_true(st.drafted > 0)
    local ref, rst = nc.mtp.generate(e, prompt, { max_tokens = 16, trace = true })
    assert.same(ref, got)
    assert.equal(#rst.trace, #st.trace)
    for r = 1, #st.trace do assert.same(rst.trace[r].drafts, st.trace[r].drafts) end
    return st
end

describe('export: e3 (LoopLM + mHC-lite + MTP) under the nanochat arch', function()
    it('e3_micro: every key and tensor, exact logits at full depth and with early exit, greedy, MTP drafting', function()
        local m = model_of('e3_micro')
        local e = nc.pack(m)
        local path = tmp('.gguf')
        local _, info = nc.export.gguf(e, path)
        assert.equal('nanochat', info.arch)
        assert.equal('keep', info.loop)
        for _, w in ipairs(info.warnings) do assert.matches('no tokenizer', w, 1, true) end
        local f = check_file(path, m, e)
        check_pygguf(path, f)
        local e2 = nc.export.load(path)
        assert.same(e.cfg.mhc, e2.cfg.mhc)
        assert.same(e.cfg.mtp, e2.cfg.mtp)
        assert.same(e.cfg.loop, e2.cfg.loop)
        -- full depth (q = 1): prefill (op by op) and decode, exactly
        local idx = ids(PROMPT)
        local ref = e:forward(idx)
        assert.equal(0, maxdiff(ref, e2:forward(idx)))
        assert.equal(0, (decode_diff(e, e2, 1)))
        -- the mHC parameters matter: the file's model without its mixing gives other logits
        local plain = nc.pack(m)
        nc.no_grad(function() for _, L in ipairs(plain.layers) do L.mhc_attn.bias:fill_(0) end end)
        assert.is_true(maxdiff(ref, plain:forward(idx)) > 1e-3)
        -- early exit: the same exit loop for every token, the same logits
        local d, c1, c2 = decode_diff(e, e2, 0.6)
        assert.equal(0, d)
        local s1 = LM.stats(c1)
        assert.same(s1.hist, LM.stats(c2).hist)
        local n_exits = 0
        for _ in pairs(s1.hist) do n_exits = n_exits + 1 end
        assert.is_true(n_exits >= 2, 'the gate should make tokens exit at different loops')
        assert.same(greedy(e, 16, 1), greedy(e2, 16, 1))
        assert.same(greedy(e, 16, 0.6), greedy(e2, 16, 0.6))
        -- MTP self-speculative greedy = plain greedy, the same drafts as the source's modules
        check_mtp(e, e2, PROMPT)
        check_mtp(e, e2, { 42 })
        os.remove(path)
    end)

    it('e3_micro unrolled (loop=unroll): still nanochat, with mHC + MTP; exact q = 1 logits and MTP drafting', function()
        local m = model_of('e3_micro')
        local e = nc.pack(m)
        local path = tmp('.gguf')
        local _, info = nc.export.gguf(e, path, { loop = 'unroll', type = 'tq1_0' })
        assert.equal('nanochat', info.arch)
        assert.equal('unroll', info.loop)
        local e2, f = nc.export.load(path)
        assert.is_nil(e2.cfg.loop)
        assert.equal(1 + 2 * 2 + 1, e2.cfg.n_layer)
        assert.is_truthy(f.tensor_index['blk.5.mhc_mlp.phi'])
        assert.is_truthy(f.tensor_index['mtp.0.proj.weight'])
        local idx = ids(PROMPT)
        assert.equal(0, maxdiff(e:forward(idx), e2:forward(idx)))
        check_mtp(e, e2, PROMPT)
        os.remove(path)
    end)
end)

describe('export: mHC alone, MTP alone', function()
    local cases = {
        { 'mHC-lite n 4 dynamic, d 256 (TQ2_0)', 'micro', { d_model = 256, head_dim = 64, d_ff = 256, mhc = { n = 4, kind = 'lite' } }, 'tq2_0' },
        { 'mHC-lite n 3, d 256 (TQ1_0), swiglu subln', 'micro', { d_model = 256, head_dim = 64, d_ff = 256, mlp = 'swiglu',
            subln = true, mhc = { n = 3, kind = 'lite' } }, 'tq1_0' },
        { 'mHC Sinkhorn n 2 static (bias only), 5 iterations', 'micro', { mhc = { n = 2, kind = 'sinkhorn', dynamic = false, iters = 5 } }, 'tq2_0' },
        { 'mHC Sinkhorn n 3 dynamic, qk_norm softcap', 'micro', { mhc = { n = 3, kind = 'sinkhorn' }, qk_norm = true, logit_softcap = 15 }, 'tq2_0' },
        { 'MTP sequential depth 2', 'micro', { mtp = { depth = 2, lambda = 0.1 } }, 'tq2_0' },
        { 'MTP parallel depth 2, swiglu subln', 'micro', { mtp = { depth = 2, kind = 'parallel' }, mlp = 'swiglu', subln = true }, 'tq2_0' },
        { 'MTP sequential depth 1, d 256 (TQ2_0 projection and block)', 'micro', { d_model = 256, head_dim = 64, d_ff = 256,
            mtp = { depth = 1 } }, 'tq2_0' },
    }
    for _, cs in ipairs(cases) do
        it(cs[1] .. ': every key and tensor, exact logits and greedy ids', function()
            local m = model_of(cs[2], cs[3])
            local e = nc.pack(m)
            local path = tmp('.gguf')
            local _, info = nc.export.gguf(m, path, { type = cs[4] })
            assert.equal('nanochat', info.arch)
            local f = check_file(path, m, e, cs[4])
            check_pygguf(path, f)
            local e2 = nc.export.load(path)
            local idx = ids(PROMPT)
            assert.equal(0, maxdiff(e:forward(idx), e2:forward(idx)))
            assert.equal(0, (decode_diff(e, e2)))
            assert.same(greedy(e, 12), greedy(e2, 12))
            if m.cfg.mtp then check_mtp(e, e2, PROMPT) end
            os.remove(path)
        end)
    end
end)

-- the bytes of a file with the first occurrence of `from` replaced by `to` (same length)
local function patched(data, from, to)
    assert.equal(#from, #to)
    local i = data:find(from, 1, true)
    assert.is_truthy(i, from)
    return data:sub(1, i - 1) .. to .. data:sub(i + #from)
end

describe('export: damaged e3 files', function()
    it('truncated, a renamed tensor / key, a bad key value, a wrong tensor shape: clear errors naming the file', function()
        local m = model_of('e3_micro')
        local path = tmp('.gguf')
        nc.export.gguf(m, path)
        local fh = io.open(path, 'rb'); local data = fh:read('*a'); fh:close()
        local bad = tmp('.gguf')
        local function try(bytes)
            local w = io.open(bad, 'wb'); w:write(bytes); w:close()
            local ok, err = pcall(nc.export.load, bad)
            assert.is_false(ok)
            assert.matches(bad, err, 1, true)
            return err
        end
        assert.matches('truncated', try(data:sub(1, #data - 100)), 1, true)
        try(data:sub(1, 200))                     -- inside the metadata
        assert.matches('missing tensor blk.1.mhc_mlp.phi', try(patched(data, 'blk.1.mhc_mlp.phi', 'blk.1.mhc_mlp.phX')), 1, true)
        assert.matches('missing tensor mtp.0.proj.weight', try(patched(data, 'mtp.0.proj.weight', 'mtp.0.proj.weighX')), 1, true)
        assert.matches('missing key nanochat.mhc.kind', try(patched(data, 'nanochat.mhc.kind', 'nanochat.mhc.kinX')), 1, true)
        local err = try(patched(data, 'nanochat.mtp.kind', 'nanochat.mtp.kinX'))
        assert.matches('missing key nanochat.mtp.kind', err, 1, true)
        err = try(patched(data, 'lite', 'lute'))   -- the value of nanochat.mhc.kind
        assert.matches('bad nanochat.* config', err, 1, true)
        assert.matches('lute', err, 1, true)
        -- a phi of the wrong shape (an exported model with another n): the shape is named
        local m2 = model_of('e3_micro', { mhc = { n = 2, kind = 'lite' } })
        local p2 = tmp('.gguf')
        nc.export.gguf(m2, p2)
        fh = io.open(p2, 'rb'); local d2 = fh:read('*a'); fh:close()
        -- nanochat.mhc.n is a u32 key: its value follows the key name and the type tag (4 bytes)
        local k = d2:find('nanochat.mhc.n', 1, true)
        local at = k + #'nanochat.mhc.n' + 4
        assert.equal(2, d2:byte(at))
        err = try(d2:sub(1, at - 1) .. string.char(3) .. d2:sub(at + 1))
        assert.matches('tensor blk.0.mhc_attn.bias has shape 6, expected 12', err, 1, true)
        os.remove(bad); os.remove(path); os.remove(p2)
    end)
end)

describe('e3 through `nanochat export`, engine.open and `nanochat generate`', function()
    it('checkpoint dir -> nanochat GGUF with mHC + MTP; the file runs the same greedy stream', function()
        local tokf = 'spec/fixtures/tok_small.tok'
        local tok = nc.tokenizer.load(tokf)
        local m = model_of('e3_micro', { vocab_size = math.max(256, tok:vocab_size()) })
        local dir = tmp('')
        nc.checkpoint.save(dir, { model = m, meta = { config = m:config() } })
        local out = dir .. '/e3.gguf'
        local lines = {}
        local orig = _G.print
        _G.print = function(...) lines[#lines + 1] = table.concat({ ... }, ' ') end
        local ok, rc = pcall(require 'nanochat.cmd.export', { tok = tokf }, { dir, out })
        _G.print = orig
        assert.is_true(ok, tostring(rc))
        assert.equal(0, rc)
        local text = table.concat(lines, '\n')
        assert.matches('arch nanochat', text, 1, true)
        assert.matches('mHC', text, 1, true)
        assert.is_nil(text:find('warning', 1, true), text)
        local E = require 'nanochat.engine'
        local ref, got = nc.pack(dir), E.open(out)
        assert.equal(4, got.cfg.mhc.n)
        assert.equal(1, #got.mtp)
        assert.equal(0, maxdiff(ref:forward(ids(PROMPT)), got:forward(ids(PROMPT))))
        -- the CLI on the .gguf (tokenizer embedded in the file): the reloaded engine's greedy stream
        local prompt = 'fn main'
        local pids = { tok.bos_id }
        for _, id in ipairs(tok:encode(prompt)) do pids[#pids + 1] = id end
        local want = nc.generate.collect(ref, pids, { max_tokens = 6, temperature = 0 })
        local p = io.popen('./nanochat generate ' .. out .. ' prompt="' .. prompt .. '" n=6 temperature=0 2>&1')
        local o = p:read('*a')
        local okp = p:close()
        assert.is_true(okp, o)
        assert.equal(prompt .. tok:decode(want) .. '\n', o)
        os.execute('rm -rf ' .. dir)
    end)
end)
