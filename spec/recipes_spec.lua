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
