-- spec/models/export_spec.lua — nc.export: GGUF under arch 'nanochat' and llama.cpp's 'bitnet'
-- re-read key by key and tensor by tensor (our reader; pip gguf too when python3 has it), the
-- engine loaded from the GGUF reproduces the engine's logits exactly (TQ2_0, TQ1_0, I8 and F16
-- paths), export.arch_for's choice per config, the embedded tokenizer (GPT-2 byte-to-unicode
-- text checked against Python's table, unique tokens, the extended merge list reproducing our
-- encoder under llama.cpp's pair-rank BPE, written in Lua here), and a truncated or corrupt file
-- gives a clear error. Also the `nanochat export` command on a checkpoint dir.
-- (llama.cpp itself runs the exported files in spec/models/llama_cpp_spec.lua.)
package.path = 'lua/?.lua;lua/?/init.lua;' .. package.path
local nc = require 'nanochat'

local function tmp(suffix) local p = os.tmpname(); os.remove(p); return p .. suffix end

local function model_of(over)
    local cfg = nc.models.config('micro', { head_std = 0.3 })
    for k, v in pairs(over or {}) do cfg[k] = v end
    local m = nc.models.gpt.new(cfg)
    m:eval()
    return m
end

local function have_pygguf() return os.execute('python3 -c "import gguf" 2>/dev/null') == 0 end

local function same_logits(e1, e2)
    local idx = nc.tensor({ { 1, 5, 9, 3, 200, 17, 8, 2 } }, { dtype = 'i64' })
    return (e1:forward(idx) - e2:forward(idx)):abs():max():item()
end

describe('export: GGUF (arch nanochat)', function()
    local cases = {
        { 'i8 (in % 256 ~= 0)', {}, 'tq2_0' },
        { 'tq2_0 swiglu subln', { d_model = 256, n_head = 4, d_ff = 256, mlp = 'swiglu', subln = true }, 'tq2_0' },
        { 'tq1_0 tied qk_norm softcap', { d_model = 256, n_head = 4, d_ff = 512, tie_embeddings = true, embed_std = 0.3,
            qk_norm = true, logit_softcap = 10 }, 'tq1_0' },
    }
    for _, cs in ipairs(cases) do
        it('round trip ' .. cs[1] .. ': every key and tensor, identical logits', function()
            local m = model_of(cs[2])
            local e = nc.pack(m)
            local path = tmp('.gguf')
            nc.export.gguf(m, path, { type = cs[3] })
            local e2, f = nc.export.load(path)
            assert.equal(0, same_logits(e, e2))
            local md, c = f.metadata, e.cfg
            assert.equal('nanochat', md['general.architecture'])
            for _, k in ipairs { 'vocab_size', 'd_model', 'n_layer', 'n_head', 'n_kv_head', 'd_ff', 'mlp', 'subln', 'qk_norm',
                'tie_embeddings' } do
                assert.equal(c[k], md['nanochat.' .. k])
            end
            assert.is_true(math.abs(md['nanochat.rope_theta'] - c.rope_theta) < 1e-3)
            -- every tensor: ternary values and exact scales against the packed engine
            local n_t = 0
            for i, L in ipairs(e.layers) do
                local pre = 'blk.' .. (i - 1) .. '.'
                local map = c.mlp == 'swiglu' and { attn_q = 'wq', attn_k = 'wk', attn_v = 'wv', attn_output = 'wo', ffn_gate = 'w1',
                    ffn_up = 'w3', ffn_down = 'w2' } or { attn_q = 'wq', attn_k = 'wk', attn_v = 'wv', attn_output = 'wo',
                    ffn_up = 'w1', ffn_down = 'w2' }
                for gname, ours in pairs(map) do
                    local t = f:tensor_f32(pre .. gname .. '.weight')
                    assert.equal(0, (t - L[ours]:ternary()):abs():max():item())
                    assert.equal(0, (f:tensor(pre .. gname .. '.scale') - L[ours].scale):abs():max():item())
                    n_t = n_t + 2
                end
                if c.subln then n_t = n_t + 2 end
            end
            n_t = n_t + (c.tie_embeddings and 1 or 2)
            assert.equal(n_t, #f.tensors)
            assert.equal(0, (f:tensor('token_embd.weight') - e.wte):abs():max():item())
            if os.execute('python3 -c "import gguf" 2>/dev/null') == 0 then
                local p = io.popen('python3 -c "import gguf,sys; r=gguf.GGUFReader(sys.argv[1]); ' ..
                    'print(len(r.tensors), str(bytes(r.fields[\'general.architecture\'].parts[-1]), \'utf-8\'))" ' .. path)
                local out = p:read('*a')
                p:close()
                assert.equal(n_t .. ' nanochat', out:match('^(.-)%s*$'))
            end
            os.remove(path)
        end)
    end

    it('truncated and corrupt files, wrong arch: clear errors naming the file', function()
        local m = model_of()
        local path = tmp('.gguf')
        nc.export.gguf(m, path)
        local f = io.open(path, 'rb'); local data = f:read('*a'); f:close()
        local bad = tmp('.gguf')
        f = io.open(bad, 'wb'); f:write(data:sub(1, #data - 100)); f:close()
        local ok, err = pcall(nc.export.load, bad)
        assert.is_false(ok)
        assert.matches(bad, err, 1, true)
        f = io.open(bad, 'wb'); f:write('GGUX' .. data:sub(5)); f:close()
        ok, err = pcall(nc.export.load, bad)
        assert.is_false(ok)
        assert.matches(bad, err, 1, true)
        nc.gguf.write(bad, { metadata = { { 'general.architecture', 'llama' } }, tensors = {} })
        ok, err = pcall(nc.export.load, bad)
        assert.is_false(ok)
        assert.matches("not 'nanochat'", err, 1, true)
        assert.has_error(function() nc.export.gguf(m, bad, { type = 'q4_0' }) end)
        os.remove(bad); os.remove(path)
    end)

    it('nanochat export CKPT out.gguf: the command on a checkpoint dir; engine.open loads the result', function()
        local m = model_of()
        local dir = tmp('')
        os.execute('mkdir -p ' .. dir)
        nc.save(dir .. '/model.safetensors', m:state_dict())
        local fh = io.open(dir .. '/meta.json', 'w'); fh:write(require('dkjson').encode({ config = m:config() })); fh:close()
        local out = dir .. '/m.gguf'
        local cmd = require 'nanochat.cmd.export'
        assert.equal(0, cmd({ type = 'tq1_0' }, { dir, out }))
        assert.equal(0, same_logits(nc.pack(m), require('nanochat.engine').open(out)))
        os.execute('rm -rf ' .. dir)
    end)
end)

-- a swiglu / tied / no-embedding-norm model: what llama.cpp's bitnet arch expresses
local function bitnet_model(over)
    local o = { mlp = 'swiglu', tie_embeddings = true, embed_norm = false, embed_std = 1.0 }
    for k, v in pairs(over or {}) do o[k] = v end
    return model_of(o)
end

describe('export: arch_for', function()
    it('chooses bitnet exactly when llama.cpp can express the model, and says why not', function()
        local cfg = function(name, over)
            local c = nc.models.config(name)
            for k, v in pairs(over or {}) do c[k] = v end
            return nc.models.gpt.config(c)
        end
        assert.equal('bitnet', (nc.export.arch_for(cfg('dense'))))
        local a, why = nc.export.arch_for(cfg('tiny'))
        assert.equal('nanochat', a)
        local all = table.concat(why.bitnet, '\n')
        assert.matches('relu2', all, 1, true)
        assert.matches('untied', all, 1, true)
        assert.matches('embedding norm', all, 1, true)
        assert.matches('in front of wo', table.concat(nc.export.why_not(cfg('dense')).llama, '\n'), 1, true)
        for _, over in ipairs { { qk_norm = true }, { logit_softcap = 15 }, { tie_embeddings = false }, { embed_norm = true },
            { mlp = 'relu2', d_ff = 1024 }, { quant_group = 256 }, { head_dim = 32 } } do
            local k = next(over)
            local a2, w = nc.export.arch_for(cfg('dense', over))
            assert.equal('nanochat', a2, k)
            assert.is_true(#w.bitnet >= 1, k)
        end
        local m = model_of()
        assert.has_error(function() nc.export.gguf(m, tmp('.gguf'), { arch = 'bitnet' }) end)
    end)
end)

describe('gpt cfg.embed_norm = false (what llama.cpp computes)', function()
    it('skips the embedding norm: equals the default model on rms-normalized embedding rows; train = serve', function()
        local a = model_of({ embed_norm = false })
        local b = model_of()
        nc.no_grad(function()
            local w = nc.rmsnorm(a.wte.weight, nil, 0)   -- rows of rms exactly 1 (up to rounding)
            a.wte.weight:copy_(w); b.wte.weight:copy_(w)
        end)
        local idx = nc.tensor({ { 1, 5, 9, 3, 200, 17, 8, 2 } }, { dtype = 'i64' })
        local la, lb = a:forward(idx), b:forward(idx)
        assert.is_true((la - lb):abs():max():item() <= 1e-3 * la:abs():max():item())
        -- and differs when the rows are not normalized
        nc.no_grad(function() a.wte.weight:copy_(a.wte.weight * 3); b.wte.weight:copy_(b.wte.weight * 3) end)
        local la3 = a:forward(idx)
        assert.is_true((la3 - b:forward(idx)):abs():max():item() > 1e-2 * la3:abs():max():item())
        -- the packed engine follows the option (train = serve tolerance of engine_spec)
        local ref = a:forward(idx)
        assert.is_true((nc.pack(a):forward(idx) - ref):abs():max():item() <= 1e-4 * ref:abs():max():item())
    end)
end)

describe('export: GGUF (arch bitnet, llama.cpp)', function()
    local cases = {
        { 'f16 (in % 256 ~= 0), no subln', { d_ff = 64 }, 'tq2_0' },
        { 'tq2_0 subln gains', { d_model = 256, n_head = 4, d_ff = 256, subln = true }, 'tq2_0' },
        { 'tq1_0 GQA 4/1', { d_model = 256, n_head = 4, n_kv_head = 1, d_ff = 256 }, 'tq1_0' },
    }
    for _, cs in ipairs(cases) do
        it('round trip ' .. cs[1] .. ': keys, tensors (names, shapes, types, RoPE rows, scales), identical logits', function()
            local m = bitnet_model(cs[2])
            if m.h[1].attn.sub_norm then   -- non-trivial SubLN gains
                for i, b in ipairs(m.h) do
                    b.attn.sub_norm.weight:copy_(nc.randn({ 256 }, { std = 0.2, generator = nc.generator(i) }) + 1)
                    b.mlp.sub_norm.weight:copy_(nc.randn({ b.mlp.sub_norm.weight:size(0) }, { std = 0.2, generator = nc.generator(50 + i) }) + 1)
                end
            end
            local e = nc.pack(m)
            local c = e.cfg
            local path = tmp('.gguf')
            local _, info = nc.export.gguf(m, path, { type = cs[3] })
            assert.equal('bitnet', info.arch)
            local e2, f = nc.export.load(path)
            assert.equal(0, same_logits(e, e2))
            local md = f.metadata
            local want = { ['general.architecture'] = 'bitnet', ['bitnet.context_length'] = c.seq_len,
                ['bitnet.embedding_length'] = c.d_model, ['bitnet.block_count'] = c.n_layer,
                ['bitnet.feed_forward_length'] = c.d_ff, ['bitnet.attention.head_count'] = c.n_head,
                ['bitnet.attention.head_count_kv'] = c.n_kv_head, ['bitnet.rope.dimension_count'] = c.head_dim,
                ['bitnet.vocab_size'] = c.vocab_size, ['general.quantization_version'] = 2,
                ['tokenizer.ggml.model'] = 'no_vocab' }
            for k, v in pairs(want) do assert.equal(v, md[k], k) end
            for _, k in ipairs { 'bitnet.context_length', 'bitnet.embedding_length', 'bitnet.block_count',
                'bitnet.attention.head_count', 'general.file_type' } do
                assert.equal('u32', f.kv_type[k], k)
            end
            assert.equal('f32', f.kv_type['bitnet.attention.layer_norm_rms_epsilon'])
            assert.equal('f32', f.kv_type['bitnet.rope.freq_base'])
            assert.is_true(math.abs(md['bitnet.attention.layer_norm_rms_epsilon'] - c.norm_eps) < 1e-12)
            local tq = c.d_model % 256 == 0 and c.d_ff % 256 == 0
            assert.equal(tq and (cs[3] == 'tq2_0' and 37 or 36) or 1, md['general.file_type'])
            -- every tensor, exactly the set llama.cpp's bitnet loader creates (+ the optional scales)
            local n_t = 2
            assert.equal('F32', f.tensor_index['token_embd.weight'].type_name)
            assert.equal(0, (f:tensor('token_embd.weight') - e.wte):abs():max():item())
            assert.is_nil(f.tensor_index['output.weight'])
            local function ones(name, k)
                assert.same({ k }, f.tensor_index[name].shape)
                assert.equal(0, (f:tensor(name) - 1):abs():max():item(), name)
            end
            ones('output_norm.weight', c.d_model)
            local hd = c.head_dim
            for i, L in ipairs(e.layers) do
                local pre = 'blk.' .. (i - 1) .. '.'
                ones(pre .. 'attn_norm.weight', c.d_model)
                ones(pre .. 'ffn_norm.weight', c.d_model)
                local ga, gm = f:tensor(pre .. 'attn_sub_norm.weight'), f:tensor(pre .. 'ffn_sub_norm.weight')
                assert.equal(0, (ga - (L.attn_gain or nc.ones({ c.d_model }))):abs():max():item())
                assert.equal(0, (gm - (L.mlp_gain or nc.ones({ c.d_ff }))):abs():max():item())
                n_t = n_t + 4
                for gname, ours in pairs { attn_q = 'wq', attn_k = 'wk', attn_v = 'wv', attn_output = 'wo', ffn_gate = 'w1',
                    ffn_up = 'w3', ffn_down = 'w2' } do
                    local info_t = f.tensor_index[pre .. gname .. '.weight']
                    local P = L[ours]
                    assert.same({ P.out_features, P.in_features }, info_t.shape)
                    assert.equal(P.in_features % 256 == 0 and cs[3]:upper() or 'F16', info_t.type_name)
                    local t, want_t = f:tensor_f32(pre .. gname .. '.weight'), P:ternary()
                    if ours == 'wq' or ours == 'wk' then
                        -- RoPE direction: the second half of each head's rows is negated, the first kept
                        local rows = P.out_features
                        local tt, wt = t:totable(), want_t:totable()
                        for r = 1, rows do
                            local sgn = ((r - 1) % hd) < hd / 2 and 1 or -1
                            for j = 1, P.in_features, 7 do assert.equal(sgn * wt[r][j], tt[r][j]) end
                        end
                        assert.is_true((t - want_t):abs():max():item() > 0)
                    else
                        assert.equal(0, (t - want_t):abs():max():item())
                    end
                    local sc = f:tensor(pre .. gname .. '.scale')
                    assert.same({ 1 }, sc:shape())
                    assert.equal(P.scale:tolist()[1], sc:item())   -- the training gamma, exactly
                    n_t = n_t + 2
                end
            end
            assert.equal(n_t, #f.tensors)
            if have_pygguf() then
                -- pip gguf reads every key and tensor: same names, types, shapes, scalar values
                local py = [[
import gguf, sys, json
r = gguf.GGUFReader(sys.argv[1])
kv = {}
for k, f in r.fields.items():
    if k.startswith("GGUF."): continue
    v = f.contents()
    kv[k] = v if isinstance(v, (int, float, str, bool)) else len(v)
ts = [[t.name, t.tensor_type.name, [int(x) for x in t.shape], int(t.n_elements)] for t in r.tensors]
print(json.dumps({"kv": kv, "tensors": ts}))
]]
                local pf = tmp('.py')
                local fh = io.open(pf, 'w'); fh:write(py); fh:close()
                local p = io.popen('python3 ' .. pf .. ' ' .. path)
                local got = require('dkjson').decode(p:read('*a'))
                p:close(); os.remove(pf)
                local nk = 0
                for _ in pairs(got.kv) do nk = nk + 1 end
                assert.equal(#f.keys, nk)
                for _, k in ipairs(f.keys) do
                    local v = md[k]
                    if type(v) == 'number' then assert.is_true(math.abs(got.kv[k] - v) <= 1e-6 * math.max(1, math.abs(v)), k)
                    elseif type(v) ~= 'table' then assert.equal(v, got.kv[k], k) end
                end
                assert.equal(#f.tensors, #got.tensors)
                for i, t in ipairs(f.tensors) do
                    assert.equal(t.name, got.tensors[i][1])
                    assert.equal(t.type_name, got.tensors[i][2])
                    assert.same(t.ne, got.tensors[i][3])
                end
            end
            os.remove(path)
        end)
    end
end)

describe('export: tokenizer.ggml.* metadata', function()
    local texts = {}
    for i = 1, 40 do
        texts[i] = 'fn main() { let x' .. i .. ' = vec![1, 2, 3]; println!("{}", x' .. i .. '.len()); } // the the then there their\n'
    end
    local tok = nc.tokenizer.train { texts = texts, vocab = 340 }

    -- llama.cpp's BPE (llm_tokenizer_bpe_session) over one pre-split piece, in Lua: the whole piece
    -- if it is a token (ignore_merges), else symbols = bytes, repeatedly merge the adjacent pair with
    -- the lowest rank in the "A B" merge list (leftmost on ties)
    local function llama_bpe(piece, text_id, rank)
        local enc = nc.export.byte_encode(piece)
        if text_id[enc] then return { text_id[enc] } end
        local sym = {}
        for i = 1, #piece do sym[i] = nc.export.byte_encode(piece:sub(i, i)) end
        while true do
            local best, at = nil, nil
            for i = 1, #sym - 1 do
                local r = rank[sym[i] .. ' ' .. sym[i + 1]]
                if r and (not best or r < best) then best, at = r, i end
            end
            if not best then break end
            sym[at] = sym[at] .. sym[at + 1]
            table.remove(sym, at + 1)
        end
        local ids = {}
        for i, s in ipairs(sym) do ids[i] = text_id[s] end
        return ids
    end

    it('tokens, types, merges, specials, pre-tokenizer; llama.cpp-style BPE over the merges equals our encoder', function()
        local m = bitnet_model({ vocab_size = 352 })
        local path = tmp('.gguf')
        local _, info = nc.export.gguf(m, path, { tokenizer = tok })
        assert.same({}, info.warnings)
        local f = nc.gguf.read(path)
        local md = f.metadata
        assert.equal('gpt2', md['tokenizer.ggml.model'])
        assert.equal('llama-bpe', md['tokenizer.ggml.pre'])
        local tokens, types = md['tokenizer.ggml.tokens'], md['tokenizer.ggml.token_type']
        assert.equal('i32', f.array_type['tokenizer.ggml.token_type'])
        assert.equal(352, #tokens)
        assert.equal(352, #types)
        local seen, text_id = {}, {}
        for i, t in ipairs(tokens) do
            assert.is_nil(seen[t], 'duplicate token text ' .. t)
            seen[t] = true
            text_id[t] = i - 1
        end
        local nm, tv = tok:n_merges(), tok:vocab_size()
        for id = 0, 351 do
            local want = id < 256 + nm and 1 or (id < tv and 3 or 5)
            assert.equal(want, types[id + 1], 'token_type of ' .. id)
        end
        assert.equal('<|bos|>', tokens[tok.bos_id + 1])
        assert.equal(tok.bos_id, md['tokenizer.ggml.bos_token_id'])
        assert.equal(tok:special('<|assistant_end|>'), md['tokenizer.ggml.eot_token_id'])
        assert.is_true(md['tokenizer.ggml.add_bos_token'])
        assert.is_string(md['tokenizer.chat_template'])
        -- GPT-2 bytes_to_unicode: a few fixed points, and the whole table against Python's when present
        assert.equal('\196\160', tokens[32 + 1])     -- space -> U+0120 'Ġ'
        assert.equal('\196\138', tokens[10 + 1])     -- newline -> U+010A 'Ċ'
        assert.equal('a', tokens[97 + 1])
        if os.execute('python3 -c "" 2>/dev/null') == 0 then
            local py = 'import json\nbs=list(range(33,127))+list(range(161,173))+list(range(174,256))\ncs=bs[:]\nn=0\n' ..
                'for b in range(256):\n    if b not in bs:\n        bs.append(b); cs.append(256+n); n+=1\n' ..
                'd=dict(zip(bs,cs))\nprint(json.dumps([chr(d[b]) for b in range(256)]))\n'
            local pf = tmp('.py')
            local fh = io.open(pf, 'w'); fh:write(py); fh:close()
            local p = io.popen('python3 ' .. pf)
            local ref = require('dkjson').decode(p:read('*a'))
            p:close(); os.remove(pf)
            for b = 0, 255 do assert.equal(ref[b + 1], tokens[b + 1], 'byte ' .. b) end
        end
        -- merges: the training pairs appear in rank order; every entry joins two tokens into a token
        local merges = md['tokenizer.ggml.merges']
        assert.is_true(#merges >= nm)
        local rank, k = {}, 0
        for r, s in ipairs(merges) do
            local a, b = s:match('^(%S+) (%S+)$')
            assert.is_truthy(a, s)
            assert.is_truthy(text_id[a] and text_id[b] and text_id[a .. b], s)
            assert.is_nil(rank[s], 'duplicate merge ' .. s)
            rank[s] = r
        end
        local mlist = tok:merges()
        local last = 0
        for j = 1, nm do
            local r = rank[tokens[mlist[j][1] + 1] .. ' ' .. tokens[mlist[j][2] + 1]]
            assert.is_truthy(r)
            assert.is_true(r > last)
            last = r
        end
        -- every word-like piece: llama.cpp's algorithm over our merges = our encoder
        local n_pieces = 0
        for _, t in ipairs(texts) do
            for piece in t:gmatch(' ?[%a%d]+') do
                assert.same(tok:encode(piece), llama_bpe(piece, text_id, rank), piece)
                n_pieces = n_pieces + 1
            end
        end
        for _, piece in ipairs { 'thethe', ' thenthere', 'mainmain', 'printlnprintln', 'xxxxxxx' } do
            assert.same(tok:encode(piece), llama_bpe(piece, text_id, rank), piece)
        end
        assert.is_true(n_pieces > 100)
        -- a token reachable through a pair that is not its training merge: "abc" = (ab, c) = (a, bc);
        -- "abcx" encodes to [abc, x] (bc merges first, then a+bc), which pair-rank BPE only finds
        -- through the extra "a bc" entry
        local t2 = nc.tokenizer.from_merges({ { 98, 99 }, { 97, 98 }, { 257, 99 } })
        local md2 = {}
        nc.export.tokenizer_metadata(t2, t2:vocab_size(), md2, {})
        local toks2, merges2, rank2 = nil, nil, {}
        for _, kv in ipairs(md2) do
            if kv[1] == 'tokenizer.ggml.tokens' then toks2 = kv[2] end
            if kv[1] == 'tokenizer.ggml.merges' then merges2 = kv[2] end
        end
        for r, s in ipairs(merges2) do rank2[s] = r end
        assert.same({ 'b c', 'a b', 'ab c', 'a bc' }, merges2)
        local tid2 = {}
        for i, t in ipairs(toks2) do tid2[t] = i - 1 end
        assert.same({ 258, 120 }, t2:encode('abcx'))
        assert.same(t2:encode('abcx'), llama_bpe('abcx', tid2, rank2))
        rank2['a bc'] = nil       -- without the extension llama.cpp would stop at [a, bc, x]
        assert.same({ 97, 256, 120 }, llama_bpe('abcx', tid2, rank2))
        -- the embedded vocabulary rebuilds the same tokenizer (same file hash); nanochat chat uses it
        local back = nc.export.tokenizer_from_gguf(f)
        assert.equal(tok:hash(), back:hash())
        assert.equal(tok:hash(), require('nanochat.engine').tokenizer_for(path):hash())
        -- a model vocab smaller than the tokenizer's is refused
        assert.has_error(function() nc.export.gguf(bitnet_model({ vocab_size = 300 }), path, { tokenizer = tok }) end)
        os.remove(path)
    end)
end)
