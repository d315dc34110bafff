-- spec/models/export_spec.lua — nc.export: GGUF under arch 'nanochat' re-read key by key and
-- tensor by tensor (our reader; pip gguf too when python3 has it), the engine loaded from the
-- GGUF reproduces the engine's logits exactly (TQ2_0, TQ1_0 and the I8 path), and a truncated or
-- corrupt file gives a clear error. Also the `nanochat export` command on a checkpoint dir.
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
