-- spec/repl_spec.lua — the REPL, driven through a pseudo-terminal (spec/helpers/pty.lua), plus
-- in-process unit tests of lua/nanochat/repl.lua (eval, completion) and lua/nanochat/pretty.lua.
-- Every wait is bounded by TIMEOUT and every child is killed in a finally block.
package.path = 'lua/?.lua;lua/?/init.lua;' .. package.path
local nc = require 'nanochat'
local pty = require 'spec.helpers.pty'
local repl = require 'nanochat.repl'
local pretty = require 'nanochat.pretty'

local TIMEOUT = 10          -- seconds for any single expected output
local BIN = './nanochat'
local ESC_UP = '\27[A'

local function tmpdir()
    local d = os.tmpname()
    os.remove(d)
    assert(os.execute("mkdir -p '" .. d .. "'"))
    return d
end

local function read_lines(p)
    local out = {}
    local f = io.open(p, 'rb')
    if not f then return out end
    for l in f:lines() do out[#out + 1] = l end
    f:close()
    return out
end

-- start the REPL with a private HOME/history; returns the session and the history path
local function start(dir, hist)
    local p = pty.spawn({ BIN }, { env = {
        TERM = 'xterm', HOME = dir, NANOCHAT_HISTORY = hist or (dir .. '/history'), INPUTRC = '/dev/null',
        PATH = os.getenv('PATH') or '/usr/bin:/bin', LANG = 'C', OMP_NUM_THREADS = '1',
    } })
    local ok, seen = p:expect('nc> ', TIMEOUT)
    assert(ok, 'no prompt; output: ' .. seen)
    return p
end

-- send a line and wait for `want` in what follows
local function line(p, text, want)
    p:send(text .. '\r')
    local ok, seen = p:expect(want, TIMEOUT)
    assert(ok, string.format('after %q expected %q, got: %s', text, want, seen))
    return seen
end

describe('REPL (pty)', function()
    setup(function()
        local f = io.open(BIN, 'rb')
        assert(f, 'the launcher ' .. BIN .. ' is not built (run `make nanochat`)')
        f:close()
    end)

    it('evaluates expressions and statements, with continuation lines', function()
        local dir = tmpdir()
        local p = start(dir)
        finally(function() p:close(); os.execute("rm -rf '" .. dir .. "'") end)
        line(p, '1+1', '\n2\nnc> ')
        line(p, 'x = 20', 'nc> ')
        line(p, 'x + 22, "s"', '\n42\t"s"\nnc> ')
        line(p, 'for i = 1, 2 do', '..> ')
        line(p, 'print(i * 11)', '..> ')
        line(p, 'end', '\n11\n22\nnc> ')
        line(p, '{a = 1, 2}', '{2, a = 1}')
        line(p, 'print(type(nc), nc.version)', 'table\t' .. nc.version .. '\nnc> ')
        -- Ctrl-D exits cleanly (sent once the prompt is up: the terminal is then in readline's mode)
        p:send('\4')
        assert.are.equal(0, p:wait(TIMEOUT))
    end)

    it('prints errors and keeps answering', function()
        local dir = tmpdir()
        local p = start(dir)
        finally(function() p:close(); os.execute("rm -rf '" .. dir .. "'") end)
        line(p, "error('boom')", 'error: stdin:1: boom\nnc> ')
        line(p, '2+3', '\n5\nnc> ')
        line(p, 'local = 1', 'error: ')
        line(p, '6*7', '\n42\nnc> ')
        local seen = line(p, 'nc.zeros{2,3} + nc.zeros{4,5}', 'nc> ')
        assert.truthy(seen:find('error: ', 1, true), seen)
        if rawget(nc, 'add') then
            assert.truthy(seen:find('(2, 3)', 1, true) and seen:find('(4, 5)', 1, true), seen)
        end
        seen = line(p, 'nc.zeros{2,3}:view{4,4}', 'nc> ')
        assert.truthy(seen:find('error: view', 1, true), seen)
        line(p, '"still" .. " alive"', '"still alive"')
    end)

    it('pretty-prints tensors', function()
        local dir = tmpdir()
        local p = start(dir)
        finally(function() p:close(); os.execute("rm -rf '" .. dir .. "'") end)
        local seen = line(p, 'nc.zeros{2,3}', 'shape=(2, 3), dtype=f32, device=cpu)')
        assert.truthy(seen:find('tensor([[0., 0., 0.],\n        [0., 0., 0.]]', 1, true), seen)
        line(p, 'nc.arange(4)', 'tensor([0, 1, 2, 3], shape=(4,), dtype=i64, device=cpu)')
    end)

    it('saves history and recalls it with the up arrow in a new session', function()
        local dir = tmpdir()
        local hist = dir .. '/hist'
        local p = start(dir, hist)
        finally(function() p:close(); os.execute("rm -rf '" .. dir .. "'") end)
        line(p, '1000+234', '\n1234\nnc> ')
        line(p, "'hist' .. 'ory'", '"history"\nnc> ')
        -- written after each line, before the session ends
        local lines = read_lines(hist)
        assert.are.same({ '1000+234', "'hist' .. 'ory'" }, { lines[#lines - 1], lines[#lines] })
        p:send('\4')
        assert.are.equal(0, p:wait(TIMEOUT))
        p:close()

        local q = start(dir, hist)
        finally(function() q:close() end)
        q:send(ESC_UP .. ESC_UP .. '\r')
        local ok, seen = q:expect('\n1234\nnc> ', TIMEOUT)
        assert(ok, 'recalled line did not run: ' .. seen)
        q:send('\4')
        assert.are.equal(0, q:wait(TIMEOUT))
    end)

    it('caps the history file', function()
        local dir = tmpdir()
        local hist = dir .. '/hist'
        local f = assert(io.open(hist, 'wb'))
        for i = 1, 1500 do f:write('old_line_', i, '\n') end
        f:close()
        local p = start(dir, hist)
        finally(function() p:close(); os.execute("rm -rf '" .. dir .. "'") end)
        line(p, '"newest"', '\n"newest"\nnc> ')
        p:send('\4')
        assert.are.equal(0, p:wait(TIMEOUT))
        local lines = read_lines(hist)
        assert.is_true(#lines <= 1000, 'history has ' .. #lines .. ' lines')
        assert.are.equal('"newest"', lines[#lines])
        assert.are.equal('old_line_1500', lines[#lines - 1])
    end)

    it('completes with TAB: nc fields, candidate lists and tensor methods', function()
        local dir = tmpdir()
        local p = start(dir)
        finally(function() p:close(); os.execute("rm -rf '" .. dir .. "'") end)
        -- a unique completion
        line(p, 'nc.ara\t(4)', 'shape=(4,)')
        -- nc.zer -> nc.zero (zeros, zeros_like, zero_grad share it); a second TAB lists them
        p:send('nc.zer\t\t')
        local ok, seen = p:expect('zeros_like', TIMEOUT)
        assert(ok, 'no candidate list: ' .. seen)
        line(p, 's{2,3}', 'shape=(2, 3)')   -- the line now reads nc.zeros{2,3}
        -- methods of a tensor variable after ':'
        line(p, 't = nc.zeros{2,3}', 'nc> ')
        line(p, 't:resh\t{3,2}', 'shape=(3, 2)')
        -- globals
        line(p, 'string.up\t("ok")', '"OK"')
    end)

    it('Ctrl-C clears the line at the prompt and interrupts running code', function()
        local dir = tmpdir()
        local p = start(dir)
        finally(function() p:close(); os.execute("rm -rf '" .. dir .. "'") end)
        p:send('this is not lua')
        p:drain(0.3)
        p:send('\3')
        assert(p:expect('nc> ', TIMEOUT))
        line(p, '7*6', '\n42\nnc> ')
        -- a pending continuation is dropped too
        line(p, 'for i = 1, 3 do', '..> ')
        p:send('\3')
        assert(p:expect('nc> ', TIMEOUT))
        line(p, '1+2', '\n3\nnc> ')
        -- interpreted code is interrupted (compiled LuaJIT loops cannot check the hook)
        p:send('jit.off() while true do end\r')
        p:drain(0.5)
        p:send('\3')
        local ok, seen = p:expect('error: interrupted', TIMEOUT)
        assert(ok, seen)
        line(p, 'jit.on()', 'nc> ')
        line(p, '2*21', '\n42\nnc> ')
    end)
end)

describe('repl.eval / repl.complete (in process)', function()
    local function capture(fn)
        local buf = {}
        local real = io.stdout
        local fake = { write = function(self, ...) for i = 1, select('#', ...) do buf[#buf + 1] = tostring((select(i, ...))) end return self end,
                       flush = function() end }
        io.stdout = fake
        local ok, r = pcall(fn)
        io.stdout = real
        assert(ok, r)
        return table.concat(buf), r
    end

    it('evaluates, reports incomplete chunks and errors', function()
        local out, st = capture(function() return repl.eval('1 + 1') end)
        assert.are.equal('2\n', out)
        assert.are.equal('ok', st)
        out, st = capture(function() return repl.eval('for i = 1, 2 do') end)
        assert.are.equal('', out)
        assert.are.equal('incomplete', st)
        out, st = capture(function() return repl.eval('x = [[abc') end)
        assert.are.equal('incomplete', st)
        out, st = capture(function() return repl.eval('error("boom")') end)
        assert.are.equal('error: stdin:1: boom\n', out)
        assert.are.equal('error', st)
        out, st = capture(function() return repl.eval('error({code = 1})') end)
        assert.are.equal('error: {code = 1}\n', out)
        out, st = capture(function() return repl.eval('"unfinished') end)
        assert.are.equal('error', st)
        out, st = capture(function() return repl.eval('   ') end)
        assert.are.equal('', out)
        out, st = capture(function() return repl.eval('return 1, nil, "a"') end)
        assert.are.equal('1\tnil\t"a"\n', out)
        out, st = capture(function() return repl.eval('=2^10') end)
        assert.are.equal('1024\n', out)
    end)

    it('completes globals, nc fields, table fields and tensor methods', function()
        local had_nc = rawget(_G, 'nc')
        rawset(_G, 'nc', nc)   -- the REPL preloads nc as a global
        finally(function() rawset(_G, 'nc', had_nc) end)
        local function has(list, x)
            for _, v in ipairs(list) do if v == x then return true end end
            return false
        end
        local c = repl.complete('nc.zer')
        assert.is_true(has(c, 'nc.zeros'), table.concat(c, ' '))
        assert.is_true(has(c, 'nc.zeros_like'))
        for _, v in ipairs(c) do assert.are.equal('nc.zer', v:sub(1, 6)) end
        c = repl.complete('x = nc.ara')
        assert.are.same({ 'nc.arange' }, c)
        rawset(_G, 'repl_spec_t', nc.zeros { 2 })
        rawset(_G, 'repl_spec_tbl', { alpha = 1, beta = { gamma = 2 } })
        finally(function() rawset(_G, 'repl_spec_t', nil); rawset(_G, 'repl_spec_tbl', nil) end)
        c = repl.complete('repl_spec_t:')
        assert.is_true(has(c, 'repl_spec_t:view') and has(c, 'repl_spec_t:shape') and has(c, 'repl_spec_t:to'))
        assert.is_false(has(c, 'repl_spec_t:_c'))
        c = repl.complete('print(repl_spec_t:resh')
        assert.are.same({ 'repl_spec_t:reshape' }, c)
        c = repl.complete('repl_spec_tbl.')
        assert.are.same({ 'repl_spec_tbl.alpha', 'repl_spec_tbl.beta' }, c)
        c = repl.complete('repl_spec_tbl.beta.g')
        assert.are.same({ 'repl_spec_tbl.beta.gamma' }, c)
        c = repl.complete('repl_spec')
        assert.is_true(has(c, 'repl_spec_t') and has(c, 'repl_spec_tbl'))
        c = repl.complete('fun')
        assert.is_true(has(c, 'function'))
        c = repl.complete('("x"):up')
        assert.are.same({}, c)   -- only plain name paths are resolved, nothing is evaluated
        local s = 'abc'
        rawset(_G, 'repl_spec_s', s)
        c = repl.complete('repl_spec_s:up')
        rawset(_G, 'repl_spec_s', nil)
        assert.are.same({ 'repl_spec_s:upper' }, c)
        assert.are.same({}, repl.complete('no_such_global.x'))
        assert.are.same({}, repl.complete(nil))
        assert.are.same({}, repl.complete('1.5'))
    end)
end)

describe('pretty.tensor', function()
    it('prints like PyTorch with shape, dtype and device', function()
        assert.are.equal('tensor([[0., 0., 0.],\n        [0., 0., 0.]], shape=(2, 3), dtype=f32, device=cpu)',
            pretty.tensor(nc.zeros { 2, 3 }))
        assert.are.equal('tensor([[ 0.1234, -1.0000],\n        [ 2.0000,  3.0000]], shape=(2, 2), dtype=f32, device=cpu)',
            pretty.tensor(nc.tensor { { 0.1234, -1 }, { 2, 3 } }))
        assert.are.equal('tensor([0, 1, 2, 3, 4], shape=(5,), dtype=i64, device=cpu)', pretty.tensor(nc.arange(5)))
        assert.are.equal(pretty.tensor(nc.arange(5)), tostring(nc.arange(5)))
    end)

    it('handles scalars, empty tensors, 3-d and strided views', function()
        assert.are.equal('tensor(3.5000, shape=(), dtype=f32, device=cpu)', pretty.tensor(nc.tensor(3.5)))
        assert.are.equal('tensor([], shape=(0, 3), dtype=f32, device=cpu)', pretty.tensor(nc.zeros { 0, 3 }))
        assert.are.equal('tensor([[0, 3],\n        [1, 4],\n        [2, 5]], shape=(3, 2), dtype=i64, device=cpu)',
            pretty.tensor(nc.arange(6):view { 2, 3 }:t()))
        assert.are.equal('tensor([[[0, 1],\n         [2, 3]],\n\n        [[4, 5],\n         [6, 7]]], shape=(2, 2, 2), dtype=i64, device=cpu)',
            pretty.tensor(nc.arange(8):view { 2, 2, 2 }))
    end)

    it('abbreviates large tensors to the first and last entries of each dim', function()
        local s = pretty.tensor(nc.arange(2000))
        assert.are.equal('tensor([   0,    1,    2, ..., 1997, 1998, 1999], shape=(2000,), dtype=i64, device=cpu)', s)
        s = pretty.tensor(nc.arange(100 * 100):view { 100, 100 })
        local rows = {}
        for l in s:gmatch('[^\n]+') do rows[#rows + 1] = l end
        assert.are.equal(7, #rows)
        assert.truthy(rows[1]:find('tensor([[   0,    1,    2, ...,   97,   98,   99],', 1, true), rows[1])
        assert.are.equal('        ...,', rows[4])
        assert.truthy(rows[7]:find('[9900, 9901, 9902, ..., 9997, 9998, 9999]], shape=(100, 100)', 1, true), rows[7])
        -- a 4-d tensor of 10^4 elements prints quickly and is bounded in size
        s = pretty.tensor(nc.zeros { 10, 10, 10, 10 })
        assert.is_true(#s < 20000)
        assert.truthy(s:find('shape=(10, 10, 10, 10)', 1, true))
    end)

    it('works for every dtype, notes requires_grad, and formats special values', function()
        for _, d in ipairs { 'f32', 'f64', 'bf16', 'f16' } do
            assert.are.equal('tensor([ 1., -2.,  3.], shape=(3,), dtype=' .. d .. ', device=cpu)',
                pretty.tensor(nc.tensor({ 1, -2, 3 }, { dtype = d })))
        end
        for _, d in ipairs { 'i8', 'i32', 'i64' } do
            assert.are.equal('tensor([ 1, -2,  3], shape=(3,), dtype=' .. d .. ', device=cpu)',
                pretty.tensor(nc.tensor({ 1, -2, 3 }, { dtype = d })))
        end
        assert.are.equal('tensor([1, 0, 3], shape=(3,), dtype=u8, device=cpu)', pretty.tensor(nc.tensor({ 1, 0, 3 }, { dtype = 'u8' })))
        -- packed formats never raise
        local ok, packed = pcall(function() return nc.Tensor.zeros({ 256 }, 'tq2') end)
        if ok then
            local s = pretty.tensor(packed)
            assert.truthy(s:find('shape=(256,), dtype=tq2, device=cpu)', 1, true), s)
        end
        local g = nc.zeros({ 2 }, { requires_grad = true })
        assert.are.equal('tensor([0., 0.], shape=(2,), dtype=f32, device=cpu, requires_grad=true)', pretty.tensor(g))
        assert.are.equal('tensor([   nan,    inf,   -inf, 1.5000], shape=(4,), dtype=f32, device=cpu)',
            pretty.tensor(nc.tensor { 0 / 0, 1 / 0, -1 / 0, 1.5 }))
        assert.are.equal('tensor([1.0000e-06, 1.0000e+00, 1.0000e+05], shape=(3,), dtype=f64, device=cpu)',
            pretty.tensor(nc.tensor({ 1e-6, 1, 1e5 }, { dtype = 'f64' })))
    end)

    it('prints CUDA tensors with the same values', function()
        if not nc.cuda_available() then
            pending('CUDA not available')
            return
        end
        local x = nc.tensor { { 0.5, -1 }, { 2, 3 } }
        local s = pretty.tensor(x:to('cuda'))
        assert.are.equal(pretty.tensor(x):gsub('device=cpu', 'device=cuda'), s)
        local big = nc.arange(3000, { dtype = 'f32' })
        assert.are.equal(pretty.tensor(big):gsub('device=cpu', 'device=cuda'), pretty.tensor(big:to('cuda')))
    end)
end)

describe('pretty.value', function()
    it('formats numbers compactly and strings quoted', function()
        assert.are.equal('1', pretty.value(1))
        assert.are.equal('-3', pretty.value(-3))
        assert.are.equal('1.5', pretty.value(1.5))
        assert.are.equal('0.1', pretty.value(0.1))
        assert.are.equal('1e+300', pretty.value(1e300))
        assert.are.equal('inf', pretty.value(1 / 0))
        assert.are.equal('-inf', pretty.value(-1 / 0))
        assert.are.equal('nan', pretty.value(0 / 0))
        assert.are.equal('"a\\nb\\"c\\\\"', pretty.value('a\nb"c\\'))
        assert.are.equal('"\\000x"', pretty.value('\0x'))
        assert.are.equal('nil', pretty.value(nil))
        assert.are.equal('true', pretty.value(true))
    end)

    it('formats tables nested with sorted keys, cycle-safe and limited', function()
        assert.are.equal('{}', pretty.value({}))
        assert.are.equal('{1, 2, "x", [1.5] = 2, a = 1, b = {c = true}, ["end"] = 3, ["two words"] = 4}',
            pretty.value({ 1, 2, 'x', a = 1, b = { c = true }, [1.5] = 2, ['end'] = 3, ['two words'] = 4 }))
        local t = { name = 'loop' }
        t.self = t
        assert.are.equal('{name = "loop", self = <cycle>}', pretty.value(t))
        -- shared (non-cyclic) references print in full each time
        local shared = { 1 }
        assert.are.equal('{a = {1}, b = {1}}', pretty.value({ a = shared, b = shared }))
        assert.are.equal('{{{{{...}}}}}', pretty.value({ { { { { { 1 } } } } } }))
        local many = {}
        for i = 1, 500 do many[i] = i end
        local s = pretty.value(many)
        assert.truthy(s:find('...', 1, true))
        assert.falsy(s:find('500', 1, true))
        -- long tables break into one entry per line
        local wide = {}
        for i = 1, 20 do wide['key' .. i] = 'value number ' .. i end
        s = pretty.value(wide)
        assert.truthy(s:find('^{\n  key1 = "value number 1",\n'), s)
        assert.truthy(s:find('\n}$'), s)
        -- tensors and __tostring inside tables
        assert.are.equal('{w = tensor([0., 0.], shape=(2,), dtype=f32, device=cpu)}', pretty.value({ w = nc.zeros { 2 } }))
        local obj = setmetatable({}, { __tostring = function() return 'OBJ' end })
        assert.are.equal('{OBJ}', pretty.value({ obj }))
        local bad = setmetatable({}, { __tostring = function() error('no') end })
        assert.truthy(pretty.value(bad):find('__tostring failed', 1, true))
    end)
end)
