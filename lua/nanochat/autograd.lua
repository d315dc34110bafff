-- lua/nanochat/autograd.lua — reverse-mode autodiff driven from Lua.
--
-- Promise: every op that produces a tensor from inputs needing gradients records one node
-- (inputs + a backward closure). `loss:backward()` visits nodes in reverse topological order,
-- calls each closure exactly once with the gradient of its output, and then drops the node
-- and the intermediate gradient, so nothing from one step stays alive into the next (the
-- memory-growth spec checks this). Leaf gradients accumulate across backward calls until
-- zero_grad. C backward kernels accumulate (+=) into the buffers from grad_of.
local M = {}

local enabled = true
local Tensor  -- set by tensor.lua (breaks the require cycle)

function M._set_tensor_class(T) Tensor = T end

function M.enabled() return enabled end

-- Run fn(...) with gradient recording off; restores the previous mode even on error.
function M.no_grad(fn, ...)
    local prev = enabled
    enabled = false
    local res = { pcall(fn, ...) }
    enabled = prev
    if not res[1] then error(res[2], 0) end
    return unpack(res, 2, table.maxn(res))
end

function M.set_enabled(on)
    local prev = enabled
    enabled = not not on
    return prev
end

-- The active row filter (Collider, algorithms.md §8; nanochat.collider): while set, ops that see
-- rows = filter.N tokens (linear, attention, rmsnorm) keep a reference to it in their backward
-- closure and, once filter.keep (sorted i64 kept rows) exists, run their backward on the kept rows
-- only. nil (the default) = dense backward everywhere.
local row_filter = nil
function M.row_filter() return row_filter end
function M.set_row_filter(f)
    local prev = row_filter
    row_filter = f
    return prev
end

-- needs(a, b) for exactly one or two arguments without varargs (the hot path of every op)
function M.needs2(a, b)
    if not enabled then return false end
    return (type(a) == 'table' and a.requires_grad == true) or (type(b) == 'table' and b.requires_grad == true)
end

-- true when grad mode is on and any Tensor argument requires grad
function M.needs(...)
    if not enabled then return false end
    for i = 1, select('#', ...) do
        local x = select(i, ...)
        if type(x) == 'table' and x.requires_grad then return true end
    end
    return false
end

-- Mark `out` as produced from `inputs` (a list that may hold non-tensors) by an op whose
-- gradient is computed by backward(gout).
function M.record(out, inputs, backward)
    local ins = {}
    for _, x in pairs(inputs) do
        if type(x) == 'table' and x.requires_grad then ins[#ins + 1] = x end
    end
    out.requires_grad = true
    out._node = { inputs = ins, backward = backward }
    return out
end

-- The gradient accumulator of t (allocated as zeros on first use), or nil when t needs none.
function M.grad_of(t)
    if type(t) ~= 'table' or not t.requires_grad then return nil end
    local g = rawget(t, 'grad')
    if not g then
        g = Tensor.zeros(t:shape(), 'f32', t:device())
        t.grad = g
    end
    return g
end

-- For kernels that can overwrite (GEMMs with beta = 0): returns t's gradient buffer and true
-- when it was just created UNINITIALISED (the caller must write every element), or the existing
-- buffer and false (the caller accumulates). nil when t needs no gradient.
function M.grad_buf(t)
    if type(t) ~= 'table' or not t.requires_grad then return nil end
    local g = rawget(t, 'grad')
    if g then return g, false end
    g = Tensor.empty(t:shape(), 'f32', t:device())
    t.grad = g
    return g, true
end

-- State of the running backward (pass_grad's aliasing rule): the caller's gradient tensor (never
-- aliased: the caller owns it) and whether the node being processed keeps its gradient.
local foreign, cur_retained = nil, false

-- Hand gradient g of a node's output to input x unchanged (identity-like backward: STE quantizers,
-- add, reshape views). When x has no gradient yet, g itself becomes x.grad (no zero-fill, no
-- add): g is the output's gradient, dropped right after the closure, so nobody else sees it. Not
-- when g belongs to the caller (backward's grad argument), when the output retains its gradient,
-- when g was already handed to another input, or when dtype/shape/layout differ; then x.grad is
-- accumulated (+=) as usual. `shape_ok` = g already has x's shape (caller checked), else compared.
local C_  -- nanochat.core's C (loaded lazily: core requires nothing from here)

-- g may become an input's gradient buffer: f32, contiguous, not the caller's, not retained by the
-- node being processed, not handed to another input before. Marks g as handed when true.
function M.take(g)
    C_ = C_ or require('nanochat.core').C
    local gc = g._c
    if g == foreign or cur_retained or rawget(g, '_handed') or gc.dtype ~= C_.NC_F32
        or C_.nc_tensor_is_contiguous(gc) ~= 1 then
        return false
    end
    rawset(g, '_handed', true)
    return true
end

function M.pass_grad(x, g)
    if type(x) ~= 'table' or not x.requires_grad then return end
    local cur = rawget(x, 'grad')
    if cur then cur:add_scaled_(g, 1) return end
    C_ = C_ or require('nanochat.core').C
    local gc, xc = g._c, x._c
    if gc.device == xc.device and gc.ndim == xc.ndim and C_.nc_tensor_same_shape(gc, xc) == 1
        and gc.dtype == C_.NC_F32 then
        -- the buffer itself, or one contiguous copy (cheaper than zeros + accumulate)
        x.grad = M.take(g) and g or g:clone()
        return
    end
    M.grad_of(x):add_scaled_(g, 1)
end

-- Reverse topological order of the graph under root (iterative: deep graphs do not overflow
-- the Lua stack).
local function topo(root)
    local order, state = {}, {}
    local stack = { root }
    while #stack > 0 do
        local t = stack[#stack]
        local st = state[t]
        if st == nil then
            state[t] = 1
            local node = t._node
            if node then
                for _, x in ipairs(node.inputs) do
                    if state[x] == nil then stack[#stack + 1] = x end
                end
            end
        else
            stack[#stack] = nil
            if st == 1 then
                state[t] = 2
                order[#order + 1] = t
            end
        end
    end
    return order
end

-- Backpropagate from root. grad defaults to ones (root must then be a scalar or 1 element).
function M.backward(root, grad, opts)
    opts = opts or {}
    if not root.requires_grad then
        error('backward: the tensor does not require grad (no parameter with requires_grad reaches it)', 2)
    end
    if grad == nil then
        if root:numel() ~= 1 then
            error('backward: grad can be implicit only for a 1-element output, got shape ('
                .. table.concat(root:shape(), ', ') .. ')', 2)
        end
        grad = Tensor.ones(root:shape(), 'f32', root:device())
    end
    local order = topo(root)
    local C = require('nanochat.core').C
    local rc, gc = root._c, grad._c
    local fresh = rawget(root, 'grad') == nil and root._node and not root._retain_grad
    if fresh and gc.dtype == C.NC_F32 and gc.device == rc.device and gc.ndim == rc.ndim
        and C.nc_tensor_same_shape(gc, rc) == 1 and C.nc_tensor_is_contiguous(gc) == 1 then
        -- a non-leaf root without a gradient yet: its closure only reads the gradient, and the
        -- buffer is dropped right after, so the caller's tensor serves without a zero-fill + copy
        root.grad = grad
    else
        local g = M.grad_of(root)
        g:add_scaled_(grad, 1)
    end
    local prev = enabled
    enabled = false   -- backward closures build no graph
    local prev_foreign, prev_retained = foreign, cur_retained
    foreign = grad
    local ok, err = pcall(function()
        for i = #order, 1, -1 do
            local t = order[i]
            local node = t._node
            if node then
                local gt = rawget(t, 'grad')
                if gt then
                    cur_retained = t._retain_grad and true or false
                    node.backward(gt)
                    if not t._retain_grad then t.grad = nil end
                end
                if not opts.retain_graph then t._node = nil end
            end
        end
    end)
    enabled = prev
    foreign, cur_retained = prev_foreign, prev_retained
    if not ok then error(err, 0) end
end

return M
