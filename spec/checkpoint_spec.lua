-- spec/checkpoint_spec.lua — nc.checkpoint: layout, bitwise round trip of model/optimizer/meta,
-- exact JSON numbers, checksums verified on load (corrupt / truncated / missing files named in
-- the error), 'latest' falling back past a bad checkpoint, keep-last-K, and failed saves (full
-- disk injected in C, a parent path that is a file) leaving the previous checkpoint intact.
package.path = 'lua/?.lua;lua/?/init.lua;spec/helpers/?.lua;' .. package.path
local nc = require 'nanochat'
local S = require 'train_standins'
local ck = nc.checkpoint
local C = nc.C

local function read_all(p)
    local f = assert(io.open(p, 'rb'))
    local s = f:read('*a')
    f:close()
    return s
end

local function write_all(p, s)
    local f = assert(io.open(p, 'wb'))
    f:write(s)
    f:close()
end

local function same_bits(a, b)
    local la, lb = a:reshape { -1 }:tolist(), b:reshape { -1 }:tolist()
    if #la ~= #lb then return false end
    for i = 1, #la do if la[i] ~= lb[i] then return false end end
    return true
end

local function hidden_entries(dir)
    local out = {}
    for _, n in ipairs(ck.list_dir(dir) or {}) do if n:sub(1, 1) == '.' then out[#out + 1] = n end end
    return out
end

local function trained_objects(seed)
    local m = S.model(16, 8, seed)
    local opt = S.sgd(m:parameters(), { lr = 0.1 })
    local L = S.loader { seed = seed }
    nc.train { model = m, optimizer = opt, loader = L, steps = 3, progress = false }
    return m, opt, L
end

describe('checkpoint', function()
    local root
    before_each(function() root = S.tmpdir() end)
    after_each(function()
        C.nc_fs_inject_failure(0, 0)
        S.rmtree(root)
    end)

    it('writes model.safetensors, optim.safetensors and meta.json, and loads them back bitwise', function()
        local m, opt, L = trained_objects(3)
        local dir = root .. '/one'
        local meta_in = { step = 3, data = L:state(), x = 0.1 + 0.2, tiny = 1e-300, big = 2 ^ 60, name = 'a"b\n',
                          list = { 1, 2.5, 'three' } }
        assert.are.equal(dir, ck.save(dir, { model = m, optimizer = opt, meta = meta_in }))
        assert.are.same({ 'meta.json', 'model.safetensors', 'optim.safetensors' }, ck.list_dir(dir))
        assert.are.same({}, hidden_entries(root))
        local got = ck.load(dir)
        for name, t in pairs(m:state_dict()) do assert.is_true(same_bits(t, got.model[name]), name) end
        for name, t in pairs(opt:state_dict().tensors) do assert.is_true(same_bits(t, got.optim.tensors[name]), name) end
        assert.are.equal(3, got.optim.meta.t)
        assert.are.equal(0.1 + 0.2, got.meta.x)        -- exact, not 0.3
        assert.are.equal(1e-300, got.meta.tiny)
        assert.are.equal(2 ^ 60, got.meta.big)
        assert.are.equal('a"b\n', got.meta.name)
        assert.are.same({ 1, 2.5, 'three' }, got.meta.list)
        assert.are.same(L:state(), got.meta.data)
        assert.are.equal('nanochat-checkpoint', got.meta.format)
        assert.are.equal(ck.VERSION, got.meta.version)
        assert.truthy(got.meta.files['model.safetensors'].crc32c:match('^%x+$'))
        -- the model file is a plain safetensors file
        local t = nc.load(dir .. '/model.safetensors')
        assert.is_true(same_bits(t['emb.weight'], m.emb.weight))
    end)

    it('restores fresh objects: model, optimizer, loader position and the RNG state', function()
        local m, opt, L = trained_objects(4)
        nc.manual_seed(99); nc.randn { 5 }
        local rng = nc.default_generator:get_state()
        ck.save(root .. '/c', { model = m, optimizer = opt,
                                 meta = { data = L:state(), rng = ck.rng_state(), step = 3 } })
        nc.manual_seed(0)
        local m2 = S.model(16, 8, 77)
        local opt2 = S.sgd(m2:parameters(), { lr = 0.1 })
        local L2 = S.loader { seed = 4 }
        local meta = ck.restore(root .. '/c', { model = m2, optimizer = opt2, loader = L2 })
        assert.are.equal(3, meta.step)
        assert.are.same(rng, nc.default_generator:get_state())
        assert.is_true(same_bits(m.head.weight, m2.head.weight))
        assert.are.equal(opt.t, opt2.t)
        local x1 = L:next()
        local x2 = L2:next()
        assert.is_true(same_bits(x1, x2))
    end)

    it('replaces an existing checkpoint directory only once the new one is complete', function()
        local m, opt = trained_objects(5)
        ck.save(root .. '/c', { model = m, optimizer = opt, meta = { step = 1 } })
        ck.save(root .. '/c', { model = m, optimizer = opt, meta = { step = 2 } })
        assert.are.equal(2, ck.load(root .. '/c').meta.step)
        assert.are.same({}, hidden_entries(root))
    end)

    it('names a corrupt, truncated or missing file in the error', function()
        local m, opt = trained_objects(6)
        local dir = ck.save(root .. '/c', { model = m, optimizer = opt, meta = { step = 1 } })
        local mp, op = dir .. '/model.safetensors', dir .. '/optim.safetensors'
        local model_bytes, optim_bytes = read_all(mp), read_all(op)
        -- one flipped bit in the data region
        write_all(mp, model_bytes:sub(1, -5) .. string.char((model_bytes:byte(-4) + 1) % 256) .. model_bytes:sub(-3))
        local ok, err = pcall(ck.load, dir)
        assert.is_false(ok)
        assert.truthy(err:find(mp, 1, true), err)
        assert.truthy(err:find('corrupt'), err)
        write_all(mp, model_bytes)
        -- truncated
        write_all(op, optim_bytes:sub(1, 100))
        ok, err = pcall(ck.load, dir)
        assert.is_false(ok)
        assert.truthy(err:find(op, 1, true), err)
        assert.truthy(err:find('truncated'), err)
        os.remove(op)
        ok, err = pcall(ck.load, dir)
        assert.is_false(ok)
        assert.truthy(err:find(op .. ' is missing', 1, true), err)
        write_all(op, optim_bytes)
        -- meta.json damaged
        local meta = read_all(dir .. '/meta.json')
        write_all(dir .. '/meta.json', meta:sub(1, 20))
        ok, err = pcall(ck.load, dir)
        assert.is_false(ok)
        assert.truthy(err:find('meta.json', 1, true), err)
        write_all(dir .. '/meta.json', meta)
        assert.are.equal(1, ck.load(dir).meta.step)
        ok, err = pcall(ck.load, root .. '/nope')
        assert.is_false(ok)
        assert.truthy(err:find(root .. '/nope', 1, true))
    end)

    it('keeps the last K step directories and points latest at the newest', function()
        local m, opt = trained_objects(7)
        for step = 10, 50, 10 do ck.save_step(root, step, { model = m, optimizer = opt, meta = { step = step } }, { keep = 2 }) end
        local list = ck.list(root)
        assert.are.equal(2, #list)
        assert.are.equal(40, list[1].step)
        assert.are.equal(50, list[2].step)
        assert.are.equal('step_000050\n', read_all(root .. '/latest'))
        assert.are.equal(root .. '/step_000050', (ck.latest(root)))
        assert.are.equal(50, ck.load(root).meta.step)   -- a run root resolves to its latest
        assert.are.same({}, hidden_entries(root))
    end)

    it('falls back past a corrupt newest checkpoint and never overwrites a good one', function()
        local m, opt = trained_objects(8)
        ck.save_step(root, 1, { model = m, optimizer = opt, meta = { step = 1 } })
        ck.save_step(root, 2, { model = m, optimizer = opt, meta = { step = 2 } })
        local mp = root .. '/step_000002/model.safetensors'
        write_all(mp, read_all(mp):sub(1, 50))
        local dir, problems = ck.latest(root)
        assert.are.equal(root .. '/step_000001', dir)
        assert.are.equal(1, #problems)
        assert.truthy(problems[1]:find(mp, 1, true))
        -- train with resume picks the valid one (and reports the skipped one)
        local sink = S.sink()
        local m2 = S.model(16, 8, 8)
        local r = nc.train { model = m2, optimizer = S.sgd(m2:parameters()), loader = S.loader {}, steps = 1,
                             ckpt_dir = root, out = sink, tty = false }
        assert.are.equal(1, r.step)
        assert.truthy(sink:text():find('checkpoint skipped: .*step_000002'))
        assert.truthy(sink:text():find('resumed from .*step_000001'))
    end)

    it('a full disk during save gives a clear error and leaves the previous checkpoint intact', function()
        local m, opt = trained_objects(9)
        ck.save_step(root, 1, { model = m, optimizer = opt, meta = { step = 1 } })
        local before = read_all(root .. '/step_000001/model.safetensors')
        C.nc_fs_inject_failure(1, 0)   -- the next write (meta.json of the new checkpoint) hits ENOSPC
        local ok, err = pcall(ck.save_step, root, 2, { model = m, optimizer = opt, meta = { step = 2 } })
        assert.is_false(ok)
        assert.truthy(err:find('step_000002', 1, true), err)
        assert.truthy(err:find('No space left on device', 1, true), err)
        assert.are.equal(0, C.nc_fs_kind(root .. '/step_000002'))
        assert.are.same({}, hidden_entries(root))
        assert.are.equal('step_000001\n', read_all(root .. '/latest'))
        assert.are.equal(before, read_all(root .. '/step_000001/model.safetensors'))
        assert.are.equal(1, ck.load(root).meta.step)
        -- same for a save over the existing directory itself
        C.nc_fs_inject_failure(1, 0)
        ok = pcall(ck.save, root .. '/step_000001', { model = m, optimizer = opt, meta = { step = 99 } })
        assert.is_false(ok)
        assert.are.equal(1, ck.load(root .. '/step_000001').meta.step)
    end)

    it('reports an unwritable location (parent is a file) clearly', function()
        write_all(root .. '/file', 'x')
        local m = S.model(16, 8, 1)
        local ok, err = pcall(ck.save, root .. '/file/ckpt', { model = m })
        assert.is_false(ok)
        assert.truthy(err:find('checkpoint.save: ' .. root .. '/file/ckpt', 1, true), err)
        assert.truthy(err:find('Not a directory', 1, true) or err:find('File exists', 1, true), err)
        assert.are.equal('x', read_all(root .. '/file'))
    end)

    it('encodes JSON numbers exactly and rejects non-JSON values', function()
        for _, v in ipairs { 0.1, 1 / 3, -2.5e-7, 123456789012345, 2 ^ 53 + 2, 1e308, 5e-324 } do
            local s = ck.json_encode { v = v }
            assert.are.equal(v, ck.json_decode(s).v, s)
        end
        assert.are.equal('{"a":null}', ck.json_encode { a = 0 / 0 })
        assert.are.equal('{"a":[1,2],"b":{"c":true}}', ck.json_encode { b = { c = true }, a = { 1, 2 } })
        assert.has_error(function() ck.json_encode { f = print } end)
    end)
end)
