-- spec/launcher_spec.lua — the `nanochat` program (core/launcher.c + lua/nanochat/cli.lua):
-- key=value parsing, scripts with arg/ARGS/..., -e, stdin scripts, running from another cwd,
-- the installed layout, error exit codes with messages and tracebacks, subcommand dispatch.
package.path = 'lua/?.lua;lua/?/init.lua;' .. package.path
local nc = require 'nanochat'
local cli = require 'nanochat.cli'

local ROOT = assert(io.popen('pwd')):read('*l')
local BIN = ROOT .. '/nanochat'

local function sh_quote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function read_file(p)
    local f = io.open(p, 'rb')
    if not f then return nil end
    local s = f:read('*a')
    f:close()
    return s
end

local function write_file(p, s)
    local f = assert(io.open(p, 'wb'))
    f:write(s)
    f:close()
end

local function tmpdir()
    local d = os.tmpname()
    os.remove(d)
    assert(os.execute('mkdir -p ' .. sh_quote(d)))
    return d
end

-- run a shell command line; returns stdout, stderr, exit status
local function run(cmd, stdin)
    local d = tmpdir()
    local inp = stdin and (d .. '/in') or '/dev/null'
    if stdin then write_file(inp, stdin) end
    -- the layout must come from the binary's location, not from the caller's environment
    os.execute(string.format('( unset NANOCHAT_HOME NANOCHAT_LIBDIR; %s ) < %s > %s/out 2> %s/err; echo $? > %s/rc',
        cmd, sh_quote(inp), d, d, d))
    local out, err, rc = read_file(d .. '/out'), read_file(d .. '/err'), tonumber(read_file(d .. '/rc'))
    os.execute('rm -rf ' .. sh_quote(d))
    return out, err, rc
end

local function nanochat(args, stdin)
    local parts = { sh_quote(BIN) }
    for _, a in ipairs(args) do parts[#parts + 1] = sh_quote(a) end
    return run(table.concat(parts, ' '), stdin)
end

describe('cli.parse', function()
    it('splits key=value pairs from positional arguments and converts values', function()
        local kv, pos = cli.parse { 'steps=100', 'lr=3e-3', 'name=abc', 'on=true', 'off=false', 'file.txt',
            'hex=0x10', 'neg=-2.5', 'empty=', 'spaced= 5', 'path=a=b', 'x' }
        assert.are.same({ steps = 100, lr = 3e-3, name = 'abc', on = true, off = false, hex = 16, neg = -2.5,
            empty = '', spaced = ' 5', path = 'a=b' }, kv)
        assert.are.same({ 'file.txt', 'x' }, pos)
        assert.are.equal('number', type(kv.steps))
    end)

    it('accepts --key=value, --flag, dotted/dashed keys and -- to stop', function()
        local kv, pos = cli.parse { '--lr=0.5', '--verbose', 'optim.beta1=0.9', 'warm-up=10', '--', 'k=v', '--x' }
        assert.are.same({ lr = 0.5, verbose = true, ['optim.beta1'] = 0.9, ['warm-up'] = 10 }, kv)
        assert.are.same({ 'k=v', '--x' }, pos)
    end)

    it('keeps strings that only look like assignments positional', function()
        local kv, pos = cli.parse { '=5', '1a=2', '-e', '-', 'a b=1' }
        assert.are.same({}, kv)
        assert.are.same({ '=5', '1a=2', '-e', '-', 'a b=1' }, pos)
    end)

    it('does not modify its input and handles an empty or missing list', function()
        local list = { 'a=1', 'b' }
        cli.parse(list)
        assert.are.same({ 'a=1', 'b' }, list)
        local kv, pos = cli.parse({})
        assert.are.same({}, kv)
        assert.are.same({}, pos)
        kv, pos = cli.parse(nil)
        assert.are.same({}, kv)
        assert.are.same({}, pos)
    end)
end)

describe('nanochat launcher', function()
    setup(function()
        local f = io.open(BIN, 'rb')
        assert(f, 'the launcher ' .. BIN .. ' is not built (run `make nanochat`)')
        f:close()
    end)

    it('runs a script with arg as in luajit, ARGS parsed and ... = arg[1..n]', function()
        local d = tmpdir()
        local script = d .. '/show.lua'
        write_file(script, [[
local keys = {}
for k in pairs(ARGS) do keys[#keys + 1] = k end
table.sort(keys)
for _, k in ipairs(keys) do print('ARGS', k, type(ARGS[k]), tostring(ARGS[k])) end
print('arg0', arg[0])
print('argn', #arg)
for i = 1, #arg do print('arg', i, arg[i]) end
local va = { ... }
print('varargs', select('#', ...), table.concat(va, ' '))
]])
        local out, err, rc = nanochat { script, 'steps=100', 'lr=3e-3', 'out=runs/x', 'flag=true', 'pos1', '--n=2' }
        assert.are.equal(0, rc, err)
        assert.truthy(out:find('ARGS\tflag\tboolean\ttrue\n', 1, true), out)
        assert.truthy(out:find('ARGS\tlr\tnumber\t0.003\n', 1, true), out)
        assert.truthy(out:find('ARGS\tn\tnumber\t2\n', 1, true), out)
        assert.truthy(out:find('ARGS\tout\tstring\truns/x\n', 1, true), out)
        assert.truthy(out:find('ARGS\tsteps\tnumber\t100\n', 1, true), out)
        assert.falsy(out:find('ARGS\tpos1', 1, true), 'positional arguments are not in ARGS')
        assert.truthy(out:find('arg0\t' .. script .. '\n', 1, true), out)
        assert.truthy(out:find('argn\t6\n', 1, true), out)
        assert.truthy(out:find('arg\t1\tsteps=100\n', 1, true), out)
        assert.truthy(out:find('arg\t5\tpos1\n', 1, true), out)
        assert.truthy(out:find('varargs\t6\tsteps=100 lr=3e-3 out=runs/x flag=true pos1 --n=2\n', 1, true), out)
        os.execute('rm -rf ' .. sh_quote(d))
    end)

    it('runs -e chunks in order with nc available', function()
        local out, err, rc = nanochat { '-e', 'x = 20', '-e', 'print(x + 22)', '-e', 'print(nc.version)' }
        assert.are.equal(0, rc, err)
        assert.are.equal('42\n' .. nc.version .. '\n', out)
        out, err, rc = nanochat { '-e', 'print(nc.zeros{2, 3}:shape()[2])' }
        assert.are.equal(0, rc, err)
        assert.are.equal('3\n', out)
    end)

    it('works from another working directory (absolute path to the binary)', function()
        local out, err, rc = run('cd /tmp && ' .. sh_quote(BIN) ..
            [[ -e 'local nc = require "nanochat"; print(nc.version); print(NANOCHAT_HOME); print(NANOCHAT_LIBDIR)']])
        assert.are.equal(0, rc, err)
        assert.are.equal(nc.version .. '\n' .. ROOT .. '\n' .. ROOT .. '/lib\n', out)
        -- a relative script path resolves against the caller's cwd
        local d = tmpdir()
        write_file(d .. '/s.lua', 'print("from cwd", (...))\n')
        out, err, rc = run('cd ' .. sh_quote(d) .. ' && ' .. sh_quote(BIN) .. ' s.lua hello')
        assert.are.equal(0, rc, err)
        assert.are.equal('from cwd\thello\n', out)
        os.execute('rm -rf ' .. sh_quote(d))
    end)

    it('finds its files in the installed layout (P/bin, P/share/nanochat/lua, P/lib/nanochat)', function()
        local p = tmpdir()
        assert(os.execute(string.format(
            'mkdir -p %s/bin %s/lib/nanochat %s/share/nanochat/include && cp %s %s/bin/nanochat && ' ..
            'cp %s/lib/libnanochat.so %s/lib/nanochat/ && cp -r %s/lua %s/share/nanochat/ && ' ..
            'cp %s/core/nanochat.h %s/share/nanochat/include/nanochat.h',
            p, p, p, sh_quote(BIN), p, sh_quote(ROOT), p, sh_quote(ROOT), p, sh_quote(ROOT), p)))
        local out, err, rc = run('cd / && ' .. sh_quote(p .. '/bin/nanochat') ..
            [[ -e 'print(NANOCHAT_HOME); print(NANOCHAT_LIBDIR); print(require("nanochat").version); print(package.searchpath("nanochat.cli", package.path))']])
        os.execute('rm -rf ' .. sh_quote(p))
        assert.are.equal(0, rc, err)
        local home = p .. '/share/nanochat'
        assert.are.equal(home .. '\n' .. p .. '/lib/nanochat\n' .. nc.version .. '\n' .. home .. '/lua/nanochat/cli.lua\n', out)
    end)

    it('exits 1 with the message and a traceback when a script fails', function()
        local d = tmpdir()
        local script = d .. '/bad.lua'
        write_file(script, 'local function inner() error("boom from script") end\nlocal x = 1\ninner()\n')
        local out, err, rc = nanochat { script }
        assert.are.equal(1, rc)
        assert.truthy(err:find('bad.lua:1: boom from script', 1, true), err)
        assert.truthy(err:find('stack traceback:', 1, true), err)
        assert.truthy(err:find("in function 'inner'", 1, true) or err:find('bad.lua:3', 1, true), err)
        assert.falsy(err:find('cli.lua', 1, true), 'the launcher frames are cut: ' .. err)
        -- a syntax error in a script
        write_file(script, 'local x = = 1\n')
        out, err, rc = nanochat { script }
        assert.are.equal(1, rc)
        assert.truthy(err:find('bad.lua:1:', 1, true), err)
        os.execute('rm -rf ' .. sh_quote(d))
        -- a C-side error surfaces as a Lua error with the op name
        out, err, rc = nanochat { '-e', 'nc.zeros{2, 3}:view{4, 4}' }
        assert.are.equal(1, rc)
        assert.truthy(err:find('view', 1, true), err)
        -- -e runtime and syntax errors
        out, err, rc = nanochat { '-e', 'error("bad chunk")' }
        assert.are.equal(1, rc)
        assert.truthy(err:find('bad chunk', 1, true), err)
        out, err, rc = nanochat { '-e', 'x =' }
        assert.are.equal(1, rc)
        assert.truthy(err:find('<eof>', 1, true), err)
        -- a missing script
        out, err, rc = nanochat { '/nonexistent/x.lua' }
        assert.are.equal(1, rc)
        assert.truthy(err:find('cannot open /nonexistent/x.lua', 1, true), err)
        -- os.exit keeps its status
        out, err, rc = nanochat { '-e', 'os.exit(3)' }
        assert.are.equal(3, rc)
    end)

    it('dispatches subcommands to lua/nanochat/cmd/NAME.lua', function()
        local out, err, rc = nanochat { 'version' }
        assert.are.equal(0, rc, err)
        assert.are.equal('nanochat ' .. nc.version, out:match('^[^\n]*'))
        out, err, rc = nanochat { 'no-such-command' }
        assert.are.equal(1, rc)
        assert.truthy(err:find('no subcommand of that name', 1, true), err)
        assert.are.equal('nanochat.cmd.version', cli.find_command('version'))
        assert.is_nil(cli.find_command('../etc'))
        assert.is_nil(cli.find_command('nope'))
    end)

    it('prints usage for -h and rejects unknown options', function()
        local out, err, rc = nanochat { '-h' }
        assert.are.equal(0, rc, err)
        assert.truthy(out:find('usage: nanochat', 1, true), out)
        assert.truthy(out:find('version', 1, true), 'subcommands are listed: ' .. out)
        out, err, rc = nanochat { '--bogus' }
        assert.are.equal(1, rc)
        assert.truthy(err:find('unknown option --bogus', 1, true), err)
        out, err, rc = nanochat { '-v' }
        assert.are.equal(0, rc, err)
        assert.are.equal('nanochat ' .. nc.version .. '\n', out)
    end)

    it('runs a script from stdin when stdin is not a terminal', function()
        local out, err, rc = nanochat({}, 'print(40 + 2)\n')
        assert.are.equal(0, rc, err)
        assert.are.equal('42\n', out)
        out, err, rc = nanochat({ '-', 'a=1' }, 'print(ARGS.a + 1, arg[0])\n')
        assert.are.equal(0, rc, err)
        assert.are.equal('2\t-\n', out)
        -- -i with a non-terminal stdin evaluates line by line like the REPL
        out, err, rc = nanochat({ '-i' }, '1 + 1\nerror("x")\nfor i = 1, 2 do\nprint(i)\nend\n')
        assert.are.equal(0, rc, err)
        assert.truthy(out:find('^2\nerror: stdin:1: x\n1\n2\n'), out)
    end)
end)
