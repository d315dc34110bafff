-- lua/nanochat/cli.lua — what the `nanochat` launcher does with its command line.
--
-- Promise: `cli.parse(list)` splits arguments into a {key = value} table (from `key=value`,
-- `--key=value` and `--flag`; numbers become numbers, true/false become booleans, everything
-- else stays a string) and a positional list, never touching the input. `cli.main(argv, tty)`
-- (called by core/launcher.c with argv[0] at index 0) runs `-e` chunks, a script file, stdin or
-- a subcommand (lua/nanochat/cmd/NAME.lua) and returns an exit status, or the string 'repl' when
-- the launcher should start the interactive loop. Errors in user code print the message and a
-- traceback to stderr and give status 1; nothing here calls os.exit.
local M = {}

M.usage = [==[
usage: nanochat [options] [script.lua [key=value ...] [args ...]]
       nanochat SUBCOMMAND [args ...]
       nanochat                      (no arguments on a terminal: the REPL)

options:
  -e CHUNK     run the Lua chunk CHUNK (may be repeated; `nc` is available as a global)
  -i           enter the REPL after running -e chunks / the script
  -v, --version  print the nanochat version
  -h, --help   print this help
  -            run the script read from stdin
  --           stop handling options

Scripts see `arg` as in luajit (arg[0] = the script, arg[1..n] = the rest, also passed as `...`)
and a global table ARGS holding the key=value arguments, e.g.
  nanochat recipes/quickstart.lua steps=100 lr=3e-3 out=runs/q   ->  ARGS.steps == 100
]==]

-- ---- key=value parsing ----------------------------------------------------------------------
local function convert(v)
    if v == 'true' then return true end
    if v == 'false' then return false end
    -- tonumber accepts '0x10', '1e3', ' 5'; keep strings with surrounding spaces as strings
    if v:match('^%s') or v:match('%s$') then return v end
    local n = tonumber(v)
    if n ~= nil then return n end
    return v
end
M.convert = convert

-- cli.parse(list) -> kv, positional. `key=value` and `--key=value` set kv[key]; `--flag` sets
-- kv.flag = true; a lone `--` makes every later argument positional. Keys are identifiers that
-- may contain '.', '-' (e.g. optim.lr=3e-3 gives kv['optim.lr']).
function M.parse(list)
    local kv, pos = {}, {}
    local only_pos = false
    for i = 1, #(list or {}) do
        local a = list[i]
        if type(a) ~= 'string' then
            pos[#pos + 1] = a
        elseif only_pos then
            pos[#pos + 1] = a
        elseif a == '--' then
            only_pos = true
        else
            local k, v = a:match('^%-%-([%a_][%w_%.%-]*)=(.*)$')
            if not k then k, v = a:match('^([%a_][%w_%.%-]*)=(.*)$') end
            if k then
                kv[k] = convert(v)
            else
                local flag = a:match('^%-%-([%a_][%w_%.%-]*)$')
                if flag then kv[flag] = true else pos[#pos + 1] = a end
            end
        end
    end
    return kv, pos
end

-- ---- running code ---------------------------------------------------------------------------
local function report(err, tb)
    local msg = type(err) == 'string' and err or tostring(err)
    if type(err) == 'table' then
        local ok, pretty = pcall(require, 'nanochat.pretty')
        if ok then msg = pretty.value(err) end
    end
    io.stderr:write('nanochat: ', msg, '\n')
    if tb then io.stderr:write(tb, '\n') end
    io.stderr:flush()
end

-- the traceback handler: keep the error object, remember the traceback
local last_tb
-- (frames below the user's code — xpcall and this module — are cut from the traceback)
local function handler(err)
    local tb = debug.traceback('', 2):gsub('^\n', '')
    local cut = tb:find("\n%s*%[C%]: in function 'xpcall'")
    last_tb = cut and tb:sub(1, cut - 1) or tb
    return err
end

-- call fn(...) printing message + traceback on error; returns true/false and the results
function M.run(fn, ...)
    last_tb = nil
    local res = { xpcall(fn, handler, ...) }
    if not res[1] then
        report(res[2], last_tb)
        return false
    end
    return true, unpack(res, 2)
end

-- `nc` as a lazy global for -e chunks and the REPL: loaded on first use, so plain Lua works
-- even when libnanochat is not built.
function M.install_lazy_nc()
    local mt = getmetatable(_G)
    if mt and mt.__nanochat_lazy then return end
    mt = mt or {}
    local prev = mt.__index
    mt.__nanochat_lazy = true
    mt.__index = function(t, k)
        if k == 'nc' then
            local nc = require 'nanochat'
            rawset(t, 'nc', nc)
            return nc
        end
        if type(prev) == 'function' then return prev(t, k) end
        if type(prev) == 'table' then return prev[k] end
        return nil
    end
    setmetatable(_G, mt)
end

local function set_script_globals(script, rest, argv0)
    local a = { [-1] = argv0, [0] = script }
    for i = 1, #rest do a[i] = rest[i] end
    _G.arg = a
    local kv = M.parse(rest)
    _G.ARGS = kv
    return a
end

-- subcommand NAME -> module path, if lua/nanochat/cmd/NAME.lua exists
function M.find_command(name)
    if type(name) ~= 'string' or not name:match('^[%a_][%w_%-]*$') then return nil end
    local modname = 'nanochat.cmd.' .. name:gsub('%-', '_')
    if package.searchpath(modname, package.path) then return modname end
    return nil
end

-- list of available subcommands (for -h)
function M.list_commands()
    local names = {}
    for dir in package.path:gmatch('[^;]+') do
        local base = dir:match('^(.*)/%?%.lua$')
        if base then
            local p = io.popen('ls "' .. base .. '/nanochat/cmd" 2>/dev/null')
            if p then
                for f in p:lines() do
                    local n = f:match('^([%w_%-]+)%.lua$')
                    if n then names[n] = true end
                end
                p:close()
            end
        end
    end
    local out = {}
    for n in pairs(names) do out[#out + 1] = n end
    table.sort(out)
    return out
end

-- a subcommand module returns a function(kv, positional, argv) or a table with .run(...);
-- the function's return value (a number) is the exit status, nil means 0.
local function run_command(modname, name, rest, argv0)
    set_script_globals(name, rest, argv0)
    local kv, pos = M.parse(rest)
    local ok, status = M.run(function()
        local cmd = require(modname)
        local fn = type(cmd) == 'function' and cmd or (type(cmd) == 'table' and cmd.run)
        if not fn then error('nanochat ' .. name .. ': ' .. modname .. ' returns no run function', 0) end
        return fn(kv, pos, rest)
    end)
    if not ok then return 1 end
    return type(status) == 'number' and status or 0
end

local function run_script(path, rest, argv0)
    local a = set_script_globals(path, rest, argv0)
    local chunk, err
    if path == '-' then
        chunk, err = load(io.read('*a'), '=stdin')
    else
        chunk, err = loadfile(path)
    end
    if not chunk then
        report(err)
        return 1
    end
    local ok = M.run(chunk, unpack(a, 1, #rest))
    return ok and 0 or 1
end

local function run_chunk(code)
    local chunk, err = load(code, '=(command line)')
    if not chunk then
        report(err)
        return 1
    end
    return M.run(chunk) and 0 or 1
end

-- argv: {[0] = program, [1..n] = arguments}; tty: stdin is a terminal.
-- Returns an exit status (number) or 'repl'.
function M.main(argv, tty)
    argv = argv or {}
    local argv0 = argv[0] or 'nanochat'
    local n = #argv
    local i = 1
    local chunks, interactive = {}, false
    while i <= n do
        local a = argv[i]
        if a == '-h' or a == '--help' then
            io.write(M.usage)
            local cmds = M.list_commands()
            if #cmds > 0 then io.write('\nsubcommands: ', table.concat(cmds, ', '), '\n') end
            return 0
        elseif a == '-v' or a == '--version' then
            local ok, nc = pcall(require, 'nanochat')
            io.write('nanochat ', ok and tostring(nc.version) or '(library not loaded)', '\n')
            return 0
        elseif a == '-e' then
            if i == n then
                io.stderr:write('nanochat: -e needs an argument\n', M.usage)
                return 1
            end
            chunks[#chunks + 1] = argv[i + 1]
            i = i + 2
        elseif a:sub(1, 2) == '-e' and #a > 2 then
            chunks[#chunks + 1] = a:sub(3)
            i = i + 1
        elseif a == '-i' then
            interactive = true
            i = i + 1
        elseif a == '--' then
            i = i + 1
            break
        elseif a ~= '-' and a:sub(1, 1) == '-' then
            io.stderr:write('nanochat: unknown option ', a, '\n', M.usage)
            return 1
        else
            break
        end
    end
    local rest = {}
    for j = i + 1, n do rest[#rest + 1] = argv[j] end
    local target = argv[i]

    if #chunks > 0 then
        M.install_lazy_nc()
        if not target then set_script_globals('-e', {}, argv0) end
        for _, code in ipairs(chunks) do
            local st = run_chunk(code)
            if st ~= 0 then return st end
        end
    end

    if target then
        -- a name without a path separator or extension that names lua/nanochat/cmd/NAME.lua
        local modname = not target:find('[/.]') and M.find_command(target)
        local st
        if modname then st = run_command(modname, target, rest, argv0)
        else
            local f = target ~= '-' and io.open(target, 'rb')
            if target ~= '-' and not f then
                io.stderr:write('nanochat: cannot open ', target,
                    (not target:find('[/.]')) and ' (not a file, and no subcommand of that name)' or '', '\n')
                return 1
            end
            if f then f:close() end
            st = run_script(target, rest, argv0)
        end
        if st ~= 0 or not interactive then return st end
        return 'repl'
    end

    if #chunks > 0 and not interactive then return 0 end
    if tty or interactive then return 'repl' end
    -- stdin is not a terminal: run it as a script, like luajit
    return run_script('-', {}, argv0)
end

-- Recipe settings: overwrite the fields of `defaults` with `kv` (default: the global ARGS of the
-- key=value arguments). Unknown keys and wrong types are errors naming the recipe (`name`) and
-- where the value came from (`where`, default 'command line'); a number given for a string
-- setting is taken as its text (out=123). Returns defaults, changed in place.
function M.settings(defaults, name, kv, where)
    kv = kv or rawget(_G, 'ARGS') or {}
    where = where or 'command line'
    for k, v in pairs(kv) do
        local d = defaults[k]
        if d == nil then error(string.format('%s: unknown setting %s (%s)', name, tostring(k), where), 0) end
        if type(d) == 'string' and type(v) == 'number' then v = tostring(v) end
        if type(d) ~= type(v) then
            error(string.format('%s: setting %s must be a %s (%s), got %s', name, k, type(d), where, type(v)), 0)
        end
        defaults[k] = v
    end
    return defaults
end

return M
