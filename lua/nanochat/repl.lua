-- lua/nanochat/repl.lua — the Lua half of the `nanochat` REPL (core/launcher.c owns the
-- terminal, readline, history and signals; it calls into this module).
--
-- Promise:
--   repl.eval(chunk) -> 'ok' | 'error' | 'incomplete'. Tries `return <chunk>` first (so
--     expressions print their values), then the chunk as statements; a syntax error ending at
--     '<eof>' means the chunk is unfinished ('incomplete', nothing printed, the launcher asks
--     for a continuation line). Results are printed with nanochat.pretty, tab-separated;
--     errors print "error: <message>" and never escape (the traceback is kept in
--     repl.last_traceback).
--   repl.complete(text_before_cursor) -> list of candidates, each a full replacement for the
--     trailing word (the run of [%w_.:] characters before the cursor): globals and keywords,
--     `a.b.` fields of tables (through __index tables, e.g. a tensor's class), `x:` methods of
--     tensors, strings and tables with method metatables. Only plain field lookups happen (no
--     calls, no code evaluated), and it never raises.
--   repl.setup() preloads `nc` as a global (a warning, not an error, if the library is missing).
local M = {}

M.last_traceback = nil

local function pretty()
    local ok, p = pcall(require, 'nanochat.pretty')
    if ok then return p end
    return { value = function(v) return tostring(v) end }
end

local function write(...)
    io.stdout:write(...)
    io.stdout:flush()
end

local function handler(err)
    M.last_traceback = debug.traceback('', 2):gsub('^\n', '')
    return err
end

local function errmsg(err)
    if type(err) == 'string' then return err end
    return pretty().value(err)
end

-- A syntax error at the end of the input means more lines may complete the chunk; an
-- unfinished short string cannot continue on the next line (LuaJIT also reports it at <eof>).
function M.is_incomplete(msg)
    if type(msg) ~= 'string' or not msg:find("'?<eof>'?$") then return false end
    return not (msg:find('unfinished string', 1, true))
end

-- Compile a chunk: expression form first, then statements.
-- Returns fn | nil, 'incomplete' | nil, errmsg.
function M.compile(chunk)
    local fn = load('return ' .. chunk, '=stdin')
    if fn then return fn end
    local err
    fn, err = load(chunk, '=stdin')
    if fn then return fn end
    if M.is_incomplete(err) then return nil, 'incomplete' end
    return nil, err
end

local function pack(...) return { n = select('#', ...), ... } end

-- The chunk is called from a frame named "stdin" so that `error('boom')` typed at the prompt
-- (a tail call in the `return error('boom')` form) still reports "stdin:1: boom".
local runner = assert(load('local f, pack = ...; return pack(f())', '=stdin'))

function M.eval(chunk)
    if type(chunk) ~= 'string' then return 'ok' end
    if chunk:match('^%s*$') then return 'ok' end
    -- `=expr` as in the Lua 5.1 REPL
    if chunk:sub(1, 1) == '=' then chunk = chunk:sub(2) end
    local fn, err = M.compile(chunk)
    if not fn then
        if err == 'incomplete' then return 'incomplete' end
        write('error: ', tostring(err), '\n')
        return 'error'
    end
    M.last_traceback = nil
    local ok, res = xpcall(runner, handler, fn, pack)
    if not ok then
        local e = res
        write('error: ', errmsg(e), '\n')
        return 'error'
    end
    if res.n > 0 then
        local p = pretty()
        local parts = {}
        for i = 1, res.n do
            local okp, s = pcall(p.value, res[i])
            parts[i] = okp and s or tostring(res[i])
        end
        write(table.concat(parts, '\t'), '\n')
    end
    return 'ok'
end

-- ---- completion --------------------------------------------------------------------------------
local keywords = {
    'and', 'break', 'do', 'else', 'elseif', 'end', 'false', 'for', 'function', 'goto', 'if', 'in',
    'local', 'nil', 'not', 'or', 'repeat', 'return', 'then', 'true', 'until', 'while',
}

local MAX_CHAIN = 8   -- __index chains followed at most this deep

-- keys of a value usable after '.' (all string keys) or ':' (function-valued keys)
local function keys_of(v, methods_only, out)
    local seen_tables = {}
    local function add_table(t)
        if seen_tables[t] then return end
        seen_tables[t] = true
        for k, val in pairs(t) do
            if type(k) == 'string' and k:match('^[%a_][%w_]*$') then
                if not methods_only or type(val) == 'function' then out[k] = true end
            end
        end
    end
    local cur = v
    for _ = 1, MAX_CHAIN do
        if type(cur) == 'table' then add_table(cur) end
        local mt = getmetatable(cur)
        if type(mt) ~= 'table' then break end
        local idx = rawget(mt, '__index')
        if type(idx) ~= 'table' then break end
        cur = idx
    end
    return out
end

-- look up a dotted path of identifiers from _G without running code (plain indexing only)
local function resolve(path)
    local v = _G
    for name in path:gmatch('[^%.]+') do
        if not name:match('^[%a_][%w_]*$') then return nil end
        local tv = type(v)
        if tv ~= 'table' and tv ~= 'string' then return nil end
        local ok, nv = pcall(function() return v[name] end)
        if not ok then return nil end
        v = nv
        if v == nil then return nil end
    end
    return v
end

local function complete(line)
    local word = line:match('[%w_%.:]*$') or ''
    local out = {}
    local base, sep, partial = word:match('^(.*)([%.:])([%w_]*)$')
    if not base then
        if word:match('^%d') then return out end
        local names = {}
        keys_of(_G, false, names)
        for _, k in ipairs(keywords) do names[k] = true end
        if rawget(_G, 'nc') == nil then names.nc = true end
        for k in pairs(names) do
            if k:sub(1, #word) == word then out[#out + 1] = k end
        end
        table.sort(out)
        return out
    end
    -- a ':' may only be the last separator (x:method), and the base must be a plain path
    if base == '' or base:find(':') or not base:match('^[%a_][%w_%.]*$') or base:find('%.%.') or base:sub(-1) == '.' then
        return out
    end
    local v = resolve(base)
    if v == nil then return out end
    local tv = type(v)
    if tv ~= 'table' and tv ~= 'string' and tv ~= 'userdata' and tv ~= 'cdata' then return out end
    local names = {}
    if tv == 'string' then
        if sep == ':' then keys_of(string, true, names) end
    elseif tv == 'table' then
        keys_of(v, sep == ':', names)
    end
    local hide_private = partial:sub(1, 1) ~= '_'
    for k in pairs(names) do
        if k:sub(1, #partial) == partial and not (hide_private and k:sub(1, 1) == '_') then
            out[#out + 1] = base .. sep .. k
        end
    end
    table.sort(out)
    return out
end

function M.complete(line)
    if type(line) ~= 'string' then return {} end
    local ok, res = pcall(complete, line)
    if ok then return res end
    return {}
end

-- ---- startup -----------------------------------------------------------------------------------
function M.setup()
    if rawget(_G, 'nc') ~= nil then return true end
    local ok, nc = pcall(require, 'nanochat')
    if ok then
        rawset(_G, 'nc', nc)
        return true
    end
    io.stderr:write('nanochat: the library did not load (plain Lua REPL): ', tostring(nc), '\n')
    return false
end

function M.banner()
    local nc = rawget(_G, 'nc')
    local v = nc and nc.version or '?'
    return string.format('nanochat %s (%s) -- `nc` is loaded; Ctrl-D exits, TAB completes', v, jit and jit.version or _VERSION)
end

return M
