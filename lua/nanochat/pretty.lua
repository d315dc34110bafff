-- lua/nanochat/pretty.lua — human-readable strings for tensors and Lua values (REPL, print).
--
-- Promise: `pretty.tensor(t)` prints like PyTorch —
--   tensor([[ 0.1234, -1.0000],
--           [ 2.0000,  3.0000]], shape=(2, 2), dtype=f32, device=cpu)
-- one common number format per tensor (fixed with 4 decimals, integers-as-floats like `1.`, or
-- scientific when the magnitudes span more than 1e3 or leave [1e-4, 1e8)), right-aligned to a
-- common width; tensors with more than SUMMARY_THRESHOLD elements show the first and last
-- EDGE_ITEMS entries of each dim around `...` and read only those elements. Works for every
-- dtype (packed formats are dequantized when the core allows it, else summarized), scalars,
-- empty tensors, strided views and CUDA tensors (read element-wise or copied to the CPU), and
-- never raises: a failure to read values still yields the shape/dtype/device line.
-- `pretty.value(v)` formats any Lua value: numbers compactly, strings quoted, tables nested
-- with sorted keys, cycle-safe and depth/width-limited.
local M = {}

M.SUMMARY_THRESHOLD = 1000   -- above this many elements, abbreviate (PyTorch's default)
M.EDGE_ITEMS = 3             -- entries kept at each end of an abbreviated dim
M.PRECISION = 4              -- decimals in fixed notation
M.LINE_WIDTH = 80            -- the last dim wraps to stay within this width
M.MAX_DEPTH = 4              -- pretty.value: nested tables deeper than this print as {...}
M.MAX_ITEMS = 100            -- pretty.value: entries shown per table

local floor, abs, huge = math.floor, math.abs, math.huge

-- ---- numbers ----------------------------------------------------------------------------------
local function is_nan(x) return x ~= x end

local function special(x)
    if is_nan(x) then return 'nan' end
    if x == huge then return 'inf' end
    if x == -huge then return '-inf' end
    return nil
end

-- compact number for pretty.value: integers without a decimal point, others with %.14g
function M.number(x)
    local s = special(x)
    if s then return s end
    if x == floor(x) and abs(x) < 2 ^ 53 then return string.format('%d', x) end
    return string.format('%.14g', x)
end

-- One formatter for all shown elements of a float tensor (PyTorch's _Formatter rules).
local function float_formatter(vals, prec)
    local finite = {}
    for _, v in ipairs(vals) do
        if not special(v) then finite[#finite + 1] = abs(v) end
    end
    local int_mode, sci = true, false
    for _, v in ipairs(vals) do
        if not special(v) and v ~= floor(v) then int_mode = false break end
    end
    if #finite > 0 then
        local mx, mn = -huge, huge
        for _, a in ipairs(finite) do
            if a > mx then mx = a end
            if a ~= 0 and a < mn then mn = a end
        end
        if mn == huge then mn = 0 end
        if int_mode then
            sci = mx > 1e8
        else
            sci = mx > 1e8 or (mn > 0 and mn < 1e-4) or (mn > 0 and mx / mn > 1e3)
        end
    end
    if sci then
        local f = '%.' .. prec .. 'e'
        return function(v) return special(v) or string.format(f, v) end
    elseif int_mode then
        return function(v) return special(v) or (string.format('%.0f', v) .. '.') end
    else
        local f = '%.' .. prec .. 'f'
        return function(v) return special(v) or string.format(f, v) end
    end
end

local function int_formatter()
    return function(v) return special(v) or string.format('%d', v) end
end

-- ---- tensors ----------------------------------------------------------------------------------
local function shape_str(shape)
    if #shape == 1 then return '(' .. shape[1] .. ',)' end
    return '(' .. table.concat(shape, ', ') .. ')'
end

local FLOAT = { f32 = true, f64 = true, bf16 = true, f16 = true }

-- indices (0-based) shown along a dim of size n
local function shown_indices(n, summarize)
    local idx = {}
    if summarize and n > 2 * M.EDGE_ITEMS then
        for i = 0, M.EDGE_ITEMS - 1 do idx[#idx + 1] = i end
        idx[#idx + 1] = false   -- the `...` marker
        for i = n - M.EDGE_ITEMS, n - 1 do idx[#idx + 1] = i end
    else
        for i = 0, n - 1 do idx[#idx + 1] = i end
    end
    return idx
end

-- Read the shown values as a nested structure of numbers (false marks `...`).
-- Small tensors: one bulk read. Large ones: only the shown elements, one at a time.
local function gather(t, shape, summarize)
    local nd = #shape
    if not summarize then
        local src = t
        if t:device() ~= 'cpu' then src = t:to('cpu') end
        local flat = src:tolist()
        local pos = 0
        local function build(d)
            local out = {}
            for i = 1, shape[d] do
                if d == nd then pos = pos + 1; out[i] = flat[pos] else out[i] = build(d + 1) end
            end
            return out
        end
        return build(1)
    end
    local idx = {}
    for d = 1, nd do idx[d] = shown_indices(shape[d], true) end
    local cur = {}
    local function build(d)
        local out = {}
        for k, i in ipairs(idx[d]) do
            if i == false then out[k] = false
            else
                cur[d] = i
                if d == nd then out[k] = t:get(unpack(cur, 1, nd)) else out[k] = build(d + 1) end
            end
        end
        return out
    end
    return build(1)
end

local function flatten_values(nested, acc)
    for _, v in ipairs(nested) do
        if type(v) == 'table' then flatten_values(v, acc)
        elseif type(v) == 'number' then acc[#acc + 1] = v end
    end
    return acc
end

-- format the nested values; indent = column where the first '[' sits
local function render(nested, nd, fmt, width, indent)
    local function rec(node, d, col)
        if d == nd then
            local parts = {}
            for k, v in ipairs(node) do
                if v == false then parts[k] = '...'
                else
                    local s = fmt(v)
                    parts[k] = string.rep(' ', width - #s) .. s
                end
            end
            -- wrap long rows at LINE_WIDTH
            local lines, line = {}, ''
            for k, p in ipairs(parts) do
                local piece = p .. (k < #parts and ',' or '')
                if #line > 0 and col + 1 + #line + 1 + #piece > M.LINE_WIDTH then
                    lines[#lines + 1] = line
                    line = piece
                else
                    line = #line > 0 and (line .. ' ' .. piece) or piece
                end
            end
            lines[#lines + 1] = line
            return '[' .. table.concat(lines, '\n' .. string.rep(' ', col + 1)) .. ']'
        end
        local parts = {}
        for k, child in ipairs(node) do
            if child == false then parts[k] = '...'
            else parts[k] = rec(child, d + 1, col + 1) end
        end
        local sep = ',' .. string.rep('\n', nd - d) .. string.rep(' ', col + 1)
        return '[' .. table.concat(parts, sep) .. ']'
    end
    return rec(nested, 1, indent)
end

local function suffix(t, shape)
    local s = ', shape=' .. shape_str(shape) .. ', dtype=' .. tostring(t:dtype()) .. ', device=' .. tostring(t:device())
    if t.requires_grad then s = s .. ', requires_grad=true' end
    return s .. ')'
end

local function tensor_body(t)
    local shape = t:shape()
    local nd = #shape
    local numel = t:numel()
    local dtype = t:dtype()
    local src = t
    -- packed ternary formats: dequantize for printing when the core can
    local ok_traits, core = pcall(require, 'nanochat.core')
    if ok_traits and core.C and core.C.nc_dtype_info then
        local tr = core.C.nc_dtype_info(t._c.dtype)
        if tr ~= nil and tr.is_packed ~= 0 then
            local ok, f = pcall(function() return t:to('f32') end)
            if not ok then return '<' .. numel .. ' packed ' .. dtype .. ' values>' end
            src = f
            dtype = 'f32'
        end
    end
    local fmt_of = function(vals)
        if FLOAT[dtype] then return float_formatter(vals, M.PRECISION) end
        return int_formatter()
    end
    if nd == 0 then
        local v = src:item()
        return fmt_of({ v })(v)
    end
    if numel == 0 then return '[]' end
    local summarize = numel > M.SUMMARY_THRESHOLD
    local nested = gather(src, shape, summarize)
    local vals = flatten_values(nested, {})
    local fmt = fmt_of(vals)
    local width = 0
    for _, v in ipairs(vals) do
        local n = #fmt(v)
        if n > width then width = n end
    end
    return render(nested, nd, fmt, width, #'tensor(')
end

function M.tensor(t)
    local ok, shape = pcall(function() return t:shape() end)
    if not ok then return '<tensor: ' .. tostring(shape) .. '>' end
    local ok2, body = pcall(tensor_body, t)
    if not ok2 then body = '<values unavailable: ' .. tostring(body) .. '>' end
    local ok3, suf = pcall(suffix, t, shape)
    if not ok3 then suf = ', shape=' .. shape_str(shape) .. ')' end
    return 'tensor(' .. body .. suf
end

-- ---- Lua values -------------------------------------------------------------------------------
local keywords = {}
for w in ([[and break do else elseif end false for function goto if in local nil not or repeat
            return then true until while]]):gmatch('%a+') do keywords[w] = true end

local function quote(s)
    return '"' .. s:gsub('[%c"\\]', function(c)
        if c == '\n' then return '\\n' end
        if c == '\t' then return '\\t' end
        if c == '\r' then return '\\r' end
        if c == '"' then return '\\"' end
        if c == '\\' then return '\\\\' end
        return string.format('\\%03d', c:byte())
    end) .. '"'
end
M.quote = quote

local function is_tensor(v)
    local mt = getmetatable(v)
    return type(mt) == 'table' and rawget(mt, '__name') == 'Tensor'
end

local type_order = { number = 1, string = 2, boolean = 3 }
local function key_less(a, b)
    local ta, tb = type(a), type(b)
    if ta ~= tb then return (type_order[ta] or 9) < (type_order[tb] or 9) end
    if ta == 'number' or ta == 'string' then return a < b end
    return tostring(a) < tostring(b)
end

local value
local function key_str(k, seen, depth)
    if type(k) == 'string' and k:match('^[%a_][%w_]*$') and not keywords[k] then return k end
    return '[' .. value(k, seen, depth) .. ']'
end

function value(v, seen, depth, indent)
    local tv = type(v)
    if tv == 'number' then return M.number(v) end
    if tv == 'string' then return quote(v) end
    if tv ~= 'table' then return tostring(v) end
    if is_tensor(v) then return M.tensor(v) end
    local mt = getmetatable(v)
    if type(mt) == 'table' and rawget(mt, '__tostring') then
        local ok, s = pcall(tostring, v)
        return ok and s or '<table: __tostring failed>'
    end
    if seen[v] then return '<cycle>' end
    if depth >= M.MAX_DEPTH then return '{...}' end
    seen[v] = true
    indent = indent or ''
    local parts = {}
    local n = #v
    local count = 0
    local truncated = false
    for i = 1, n do
        count = count + 1
        if count > M.MAX_ITEMS then truncated = true break end
        parts[#parts + 1] = value(v[i], seen, depth + 1, indent .. '  ')
    end
    local keys = {}
    for k in pairs(v) do
        if not (type(k) == 'number' and k >= 1 and k <= n and k == floor(k)) then keys[#keys + 1] = k end
    end
    table.sort(keys, key_less)
    for _, k in ipairs(keys) do
        count = count + 1
        if count > M.MAX_ITEMS then truncated = true break end
        parts[#parts + 1] = key_str(k, seen, depth + 1) .. ' = ' .. value(v[k], seen, depth + 1, indent .. '  ')
    end
    seen[v] = nil
    if truncated then parts[#parts + 1] = '...' end
    if #parts == 0 then return '{}' end
    local one = '{' .. table.concat(parts, ', ') .. '}'
    if #one + #indent <= M.LINE_WIDTH and not one:find('\n') then return one end
    return '{\n' .. indent .. '  ' .. table.concat(parts, ',\n' .. indent .. '  ') .. '\n' .. indent .. '}'
end

function M.value(v)
    local ok, s = pcall(value, v, {}, 0, '')
    if ok then return s end
    return '<' .. type(v) .. ': ' .. tostring(s) .. '>'
end

return M
