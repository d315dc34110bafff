-- spec/recipes_spec.lua — smoke runs of the shipped recipes through the `nanochat` launcher, on a
-- corpus built from the fixture packages (spec/fixtures/corpus) with a 300-token tokenizer and
-- micro models, a few steps each: they run end to end, print their final lines and leave a
-- checkpoint. NANOCHAT_CACHE points at a temp dir, so nothing touches the user's cache.
package.path = 'lua/?.lua;lua/?/init.lua;' .. package.path
local nc = require 'nanochat'

local tmp = os.tmpname()
os.remove(tmp)
os.execute('mkdir -p ' .. tmp)
local corpus_dir = tmp .. '/corpus'

local function run(cmd)
    local p = io.popen(string.format('cd %s && NANOCHAT_CACHE=%s/cache ./nanochat %s 2>&1; echo "rc=$?"',
        nc.corpus.shell_quote(os.getenv('PWD') or '.'), tmp, cmd))
    local out = p:read('*a')
    p:close()
    return out:match('rc=(%d+)%s*$') == '0', out
end

local function exists(path)
    local f = io.open(path, 'rb')
    if f then f:close() return true end
    return false
end

local COMMON = 'corpus=' .. corpus_dir .. ' vocab=300 batch=2 seq=32 eval_batches=1'

describe('recipes (smoke)', function()
    setup(function()
        nc.corpus.build { out = corpus_dir, extracted = 'spec/fixtures/corpus', val_fraction = 0.3, quiet = true }
    end)
    teardown(function() os.execute('rm -rf ' .. tmp) end)

    it('recipes/tiny.lua trains, evaluates, samples and checkpoints', function()
        local ok, out = run('recipes/tiny.lua model=configs/models/micro.lua steps=3 eval_every=3 out=' .. tmp .. '/tiny '
            .. COMMON)
        assert.is_true(ok, out)
        assert.truthy(out:find('tiny: done after 3 steps. final val loss %d'), out)
        assert.truthy(out:find('--- fn main() {', 1, true), out)
        assert.is_true(exists(tmp .. '/tiny/ckpt/step_000003/model.safetensors'))
        assert.is_true(exists(tmp .. '/tiny/tokenizer.tok'))
    end)

    it('rejects unknown settings with a clear message', function()
        local ok, out = run('recipes/tiny.lua no_such_setting=1')
        assert.is_false(ok)
        assert.truthy(out:find('unknown setting no_such_setting', 1, true), out)
    end)
end)

describe('recipes e3 / ablate (smoke)', function()
    setup(function()
        nc.corpus.build { out = corpus_dir, extracted = 'spec/fixtures/corpus', val_fraction = 0.3, quiet = true }
    end)

    it('recipes/e3.lua trains the e3 architecture with every feature and prints its summary', function()
        local ok, out = run('recipes/e3.lua model=configs/models/e3_micro.lua steps=3 eval_every=3 sample_tokens=4 out='
            .. tmp .. '/e3 ' .. COMMON)
        assert.is_true(ok, out)
        for _, want in ipairs { '| features | loop 1+2x2+1, mhc-lite n=4, mtp D=1, collider rho=0.40 |',
                                '| LoopLM early exit | q=0.90', '| MTP self-speculative |', 'identical output: true',
                                '| mHC | max doubly-stochastic error', '| Collider | kept 60% of tokens' } do
            assert.truthy(out:find(want, 1, true), want .. '\n' .. out)
        end
        assert.truthy(out:find('| val bpb | %d'), out)
        assert.is_true(exists(tmp .. '/e3/ckpt/step_000003/model.safetensors'))
    end)

    it('recipes/e3.lua switches features off from the command line', function()
        local ok, out = run('recipes/e3.lua model=configs/models/e3_micro.lua steps=2 eval_every=2 sample_tokens=2 '
            .. 'loop=false mhc=false mtp=false collider=false out=' .. tmp .. '/e3off ' .. COMMON)
        assert.is_true(ok, out)
        assert.truthy(out:find('| features | plain GPT |', 1, true), out)
        assert.is_nil(out:find('| LoopLM', 1, true))
        ok, out = run('recipes/e3.lua config=configs/h200.lua')
        assert.is_false(ok)
        assert.truthy(out:find('e3: this preset needs device cuda', 1, true) or out:find('but not yet e3\'s LoopLM', 1, true),
            out)
        -- the plain model's recipe takes device=cuda (a clean error without a GPU)
        if not require('nanochat').cuda_available() then
            ok, out = run('recipes/tiny.lua model=configs/models/micro.lua steps=1 device=cuda out=' .. tmp .. '/tinycuda')
            assert.is_false(ok)
            assert.truthy(out:find('tiny: device=cuda needs a GPU, but', 1, true), out)
        end
    end)

    it('recipes/ablate.lua prints one row per variant and a JSON line', function()
        local ok, out = run('recipes/ablate.lua model=configs/models/micro.lua e3=configs/models/e3_micro.lua steps=2 '
            .. 'eval_batches=1 out=' .. tmp .. '/abl ' .. COMMON:gsub('eval_batches=1', ''))
        assert.is_true(ok, out)
        for _, v in ipairs { 'base', 'loop', 'mhc', 'mtp', 'collider', 'hybrid', 'e3' } do
            assert.truthy(out:find('| ' .. v .. ' | ', 1, true), v .. '\n' .. out)
        end
        local last = out:match('(%b{})%s*rc=') or out:match('.*(%b{})')
        assert.truthy(last and last:find('"base": {"val_loss"', 1, true), out)
    end)
end)

describe('nc.cli.settings (the recipes\' key=value settings)', function()
    it('overrides defaults, takes a number as text for string settings, rejects unknown keys and wrong types', function()
        local cfg = nc.cli.settings({ steps = 10, out = 'runs/x', loop = true }, 'r', { steps = 3, out = 123, loop = false })
        assert.same({ steps = 3, out = '123', loop = false }, cfg)
        local ok, err = pcall(nc.cli.settings, { steps = 1 }, 'r', { stpes = 2 })
        assert.is_false(ok)
        assert.equal('r: unknown setting stpes (command line)', err)
        ok, err = pcall(nc.cli.settings, { loop = true }, 'r', { loop = 'yes' }, 'preset.lua')
        assert.is_false(ok)
        assert.equal('r: setting loop must be a boolean (preset.lua), got string', err)
    end)
end)
