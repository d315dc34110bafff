-- lua/nanochat/ops/index.lua — indexing ops with autograd: embedding, index_select, gather,
-- scatter_add, cat, and split / chunk as narrow views.
--
-- Promise: index tensors are i32 or i64; an index out of range is a Lua error naming the op,
-- the bad value and the bound (from the C kernel). Outputs are fresh contiguous tensors except
-- split/chunk, which return views sharing storage (their autograd comes from Tensor:narrow).
-- Dims are 0-based; negative dims count from the end.
local core = require 'nanochat.core'
local Tensor = require 'nanochat.tensor'
local ag = require 'nanochat.autograd'
local ffi, C = core.ffi, core.C
local check = core.check

local M = {}

local is = Tensor.is
local function cptr(t) return t and t._c or nil end

local function want_tensor(op, x, what)
    if not is(x) then error(string.format('%s: expected %s to be a Tensor, got %s', op, what, type(x)), 3) end
end

local function norm_dim(op, t, dim)
    local nd = t:dim()
    dim = dim or 0
    local d = dim < 0 and dim + nd or dim
    if d < 0 or d >= nd then
        error(string.format('%s: dim %d out of range for a tensor with %d dims', op, dim, nd), 3)
    end
    return d
end

-- out (..., D) = weight[idx]; gradient scatter-adds into weight
function M.embedding(idx, weight)
    want_tensor('embedding', idx, 'idx')
    want_tensor('embedding', weight, 'weight')
    local shape = idx:shape()
    shape[#shape + 1] = weight:dim() == 2 and weight:size(1) or 0
    local out = Tensor.empty(shape, 'f32', weight:device())
    check(C.nc_embedding(out._c, weight._c, idx._c), 'embedding')
    if ag.needs(weight) then
        ag.record(out, { weight }, function(gout)
            local gw = ag.grad_of(weight)
            if gw then check(C.nc_embedding_backward(gw._c, idx._c, gout._c), 'embedding backward') end
        end)
    end
    return out
end

-- t.index_select(dim, idx), idx 1-D
function M.index_select(t, dim, idx)
    want_tensor('index_select', t, 't')
    want_tensor('index_select', idx, 'idx')
    local d = norm_dim('index_select', t, dim)
    local shape = t:shape()
    shape[d + 1] = idx:dim() == 1 and idx:size(0) or 0
    local out = Tensor.empty(shape, t:dtype(), t:device())
    check(C.nc_index_select(out._c, t._c, d, idx._c), 'index_select')
    if ag.needs(t) then
        ag.record(out, { t }, function(gout)
            local ga = ag.grad_of(t)
            if ga then check(C.nc_index_add(ga._c, d, idx._c, gout._c), 'index_select backward') end
        end)
    end
    return out
end

-- torch.gather: out[i][j][k] = t[i][idx[i][j][k]][k] for dim 1; out has idx's shape
function M.gather(t, dim, idx)
    want_tensor('gather', t, 't')
    want_tensor('gather', idx, 'idx')
    local d = norm_dim('gather', t, dim)
    local out = Tensor.empty(idx:shape(), t:dtype(), t:device())
    check(C.nc_gather(out._c, t._c, d, idx._c), 'gather')
    if ag.needs(t) then
        ag.record(out, { t }, function(gout)
            local ga = ag.grad_of(t)
            if ga then check(C.nc_scatter_add(ga._c, d, idx._c, gout._c), 'gather backward') end
        end)
    end
    return out
end

-- the leading idx-shaped block of t (a raw view, no autograd): t[0:idx.shape[0], 0:idx.shape[1], ...]
local function leading_view(t, shape)
    local c = t._c
    local nd = c.ndim
    local sh, st = ffi.new('int64_t[8]'), ffi.new('int64_t[8]')
    for i = 0, nd - 1 do
        sh[i] = shape[i + 1]
        st[i] = c.strides[i]
    end
    return Tensor.wrap(C.nc_tensor_view_as_strided(c, nd, sh, st, c.offset), 'scatter_add')
end

-- out-of-place scatter_add: returns t + (src scattered along dim by idx); grads to t and src
function M.scatter_add(t, dim, idx, src)
    want_tensor('scatter_add', t, 't')
    want_tensor('scatter_add', idx, 'idx')
    want_tensor('scatter_add', src, 'src')
    local d = norm_dim('scatter_add', t, dim)
    local out = Tensor.empty(t:shape(), 'f32', t:device())
    check(C.nc_tensor_copy(out._c, t._c), 'scatter_add')
    check(C.nc_scatter_add(out._c, d, idx._c, src._c), 'scatter_add')
    if ag.needs(t, src) then
        ag.record(out, { t, src }, function(gout)
            local gt, gs = ag.grad_of(t), ag.grad_of(src)
            if gt then check(C.nc_add_scaled(gt._c, gout._c, 1), 'scatter_add backward') end
            if gs then
                local g = Tensor.empty(idx:shape(), 'f32', gout:device())
                check(C.nc_gather(g._c, gout._c, d, idx._c), 'scatter_add backward')
                check(C.nc_add_scaled(leading_view(gs, idx:shape())._c, g._c, 1), 'scatter_add backward')
            end
        end)
    end
    return out
end

-- concatenate a list of tensors along dim (default 0)
function M.cat(list, dim)
    if type(list) ~= 'table' or is(list) then error('cat: expected a list of Tensors', 2) end
    local n = #list
    if n == 0 then error('cat: expected at least one Tensor, got an empty list', 2) end
    for i = 1, n do
        if not is(list[i]) then error(string.format('cat: element %d of the list is not a Tensor', i), 2) end
    end
    local first = list[1]
    local d = norm_dim('cat', first, dim)
    local shape = first:shape()
    local total = 0
    local arr = ffi.new('const nc_tensor *[?]', n)
    local sizes = {}
    for i = 1, n do
        local t = list[i]
        sizes[i] = t:dim() > d and t:size(d) or 0
        total = total + sizes[i]
        arr[i - 1] = t._c
    end
    shape[d + 1] = total
    local out = Tensor.empty(shape, first:dtype(), first:device())
    check(C.nc_cat(out._c, n, arr, d), 'cat')
    local needs = false
    for i = 1, n do if ag.needs(list[i]) then needs = true end end
    if needs then
        local ins = {}
        for i = 1, n do ins[i] = list[i] end
        ag.record(out, ins, function(gout)
            local start = 0
            for i = 1, n do
                local g = ag.grad_of(ins[i])
                if g and sizes[i] > 0 then
                    local part = Tensor.wrap(C.nc_tensor_view_narrow(gout._c, d, start, sizes[i]), 'cat backward')
                    check(C.nc_add_scaled(g._c, part._c, 1), 'cat backward')
                end
                start = start + sizes[i]
            end
        end)
    end
    return out
end

-- split(t, 3, dim): pieces of 3 (the last may be shorter); split(t, {2, 5}, dim): those sizes
function M.split(t, size_or_sizes, dim)
    want_tensor('split', t, 't')
    local d = norm_dim('split', t, dim)
    local n = t:size(d)
    local out = {}
    if type(size_or_sizes) == 'number' then
        local s = size_or_sizes
        if s <= 0 or s ~= math.floor(s) then error('split: expected a positive integer size, got ' .. s, 2) end
        local start = 0
        repeat
            local len = math.min(s, n - start)
            out[#out + 1] = t:narrow(d, start, len)
            start = start + len
        until start >= n
    elseif type(size_or_sizes) == 'table' then
        local total = 0
        for _, s in ipairs(size_or_sizes) do total = total + s end
        if total ~= n then
            error(string.format('split: the sizes {%s} sum to %d, but dim %d has size %d',
                table.concat(size_or_sizes, ', '), total, d, n), 2)
        end
        local start = 0
        for _, s in ipairs(size_or_sizes) do
            out[#out + 1] = t:narrow(d, start, s)
            start = start + s
        end
    else
        error('split: expected a size or a list of sizes, got ' .. type(size_or_sizes), 2)
    end
    return out
end

-- chunk(t, n, dim): torch semantics (pieces of ceil(size / n); may return fewer than n)
function M.chunk(t, n, dim)
    want_tensor('chunk', t, 't')
    if type(n) ~= 'number' or n < 1 or n ~= math.floor(n) then
        error('chunk: expected a positive integer number of chunks, got ' .. tostring(n), 2)
    end
    local d = norm_dim('chunk', t, dim)
    local size = t:size(d)
    if size == 0 then return { t:narrow(d, 0, 0) } end
    return M.split(t, math.ceil(size / n), d)
end

return M
