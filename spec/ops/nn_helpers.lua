-- spec/ops/nn_helpers.lua — shared helpers for the neural-net op specs (not a spec itself).
--
-- Promise: float64 reference math on flat Lua lists, closeness asserts that print the worst
-- element, and central finite differences in float64 evaluated on the f32 kernels.
local nc = require 'nanochat'
local ffi = require 'ffi'

local H = {}

-- Tolerances (named, per what is compared)
H.F32_ATOL = 1e-5      -- f32 kernel vs float64 reference, values of order 1
H.F32_RTOL = 1e-5
H.FD_H = 1e-2          -- central-difference step on inputs of order 1
H.FD_ATOL = 2e-3       -- f32 forward noise / (2h) plus O(h^2) truncation
H.FD_RTOL = 1e-2

local gen_seed = 1234
-- fresh standard-normal tensor with a private seed (specs do not depend on each other's draws)
function H.randn(shape, std)
    gen_seed = gen_seed + 1
    local g = nc.generator(gen_seed)
    return nc.randn(shape, { generator = g, std = std or 1 })
end

function H.list(t) return t:tolist() end

function H.max_err(got, want)
    local worst, wi = 0, 0
    assert(#got == #want, string.format('length mismatch: got %d, want %d', #got, #want))
    for i = 1, #want do
        local e = math.abs(got[i] - want[i])
        if e ~= e then return math.huge, i end
        if e > worst then worst, wi = e, i end
    end
    return worst, wi
end

-- assert |got - want| <= atol + rtol |want| elementwise
function H.close(got, want, atol, rtol, what)
    if type(got) == 'table' and got._c then got = got:tolist() end
    atol, rtol = atol or H.F32_ATOL, rtol or H.F32_RTOL
    assert(#got == #want, string.format('%s: length mismatch: got %d, want %d', what or 'values', #got, #want))
    for i = 1, #want do
        local e = math.abs(got[i] - want[i])
        if not (e <= atol + rtol * math.abs(want[i])) then
            error(string.format('%s: element %d: got %.9g, want %.9g (|diff| %.3g > %.3g)', what or 'values', i,
                got[i], want[i], e, atol + rtol * math.abs(want[i])), 2)
        end
    end
    return true
end

-- row-major flat index helpers
function H.idx(shape, ...)
    local i = 0
    for d = 1, #shape do i = i * shape[d] + (select(d, ...)) end
    return i + 1
end

-- float64 C (M, N) = A (M, K) B (K, N), all flat row-major lists
function H.ref_matmul(A, B, M, K, N)
    local C = {}
    for i = 0, M - 1 do
        for j = 0, N - 1 do
            local s = 0
            for k = 0, K - 1 do s = s + A[i * K + k + 1] * B[k * N + j + 1] end
            C[i * N + j + 1] = s
        end
    end
    return C
end

-- write a flat Lua list into a contiguous tensor
function H.write(t, list)
    local n = #list
    local buf = ffi.new('double[?]', math.max(n, 1))
    for i = 1, n do buf[i - 1] = list[i] end
    nc.core.check(nc.C.nc_tensor_write_f64(t._c, buf, n), 'write')
end

-- Central finite differences of L = sum(fn(inputs...) * R) against autograd.
-- inputs: list of contiguous f32 leaf tensors; opts.sample = n checks n random elements per input.
function H.fd_check(fn, inputs, opts)
    opts = opts or {}
    local h = opts.h or H.FD_H
    local atol, rtol = opts.atol or H.FD_ATOL, opts.rtol or H.FD_RTOL
    -- analytic
    for _, x in ipairs(inputs) do x.grad = nil; x:requires_grad_(true) end
    local out = fn(unpack(inputs))
    local R = H.randn(out:shape())
    local Rl = R:tolist()
    out:backward(R)
    local grads = {}
    for i, x in ipairs(inputs) do
        grads[i] = x.grad and x.grad:tolist() or nil
        x.grad = nil
        x:requires_grad_(false)
    end
    local function L()
        local y = nc.no_grad(function() return fn(unpack(inputs)) end)
        local yl, s = y:tolist(), 0
        for j = 1, #yl do s = s + yl[j] * Rl[j] end
        return s
    end
    local rng = 7
    for i, x in ipairs(inputs) do
        if not (opts.skip and opts.skip[i]) then
            assert(grads[i], 'fd_check: input ' .. i .. ' got no gradient')
            local base = x:tolist()
            local n = #base
            local picks = {}
            if opts.sample and opts.sample < n then
                for s = 1, opts.sample do
                    rng = (rng * 1103515245 + 12345) % 2147483648
                    picks[s] = rng % n + 1
                end
            else
                for e = 1, n do picks[e] = e end
            end
            for _, e in ipairs(picks) do
                local v = base[e]
                base[e] = v + h; H.write(x, base); local lp = L()
                base[e] = v - h; H.write(x, base); local lm = L()
                base[e] = v; H.write(x, base)
                local num = (lp - lm) / (2 * h)
                local ana = grads[i][e]
                if not (math.abs(num - ana) <= atol + rtol * math.abs(num)) then
                    error(string.format('fd_check: input %d element %d: autograd %.7g, finite difference %.7g', i, e, ana, num), 2)
                end
            end
        end
    end
    return true
end

return H
