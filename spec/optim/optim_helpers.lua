-- spec/optim/optim_helpers.lua — shared helpers for the optimizer specs (not a spec itself).
--
-- Promise: float64 reference math on flat row-major Lua lists (matmul, transpose, Frobenius
-- norm, Newton-Schulz), seeded random tensors that do not depend on other specs' draws, a small
-- least-squares problem, closeness / bitwise asserts that name the worst element, and a
-- resume-equivalence driver (k steps, state_dict through safetensors + JSON, new optimizer,
-- continue == uninterrupted).
package.path = 'lua/?.lua;lua/?/init.lua;' .. package.path
local nc = require 'nanochat'
local json = require 'dkjson'

local H = {}

local seed = 7000
function H.randn(shape, std)
    seed = seed + 1
    return nc.randn(shape, { generator = nc.generator(seed), std = std or 1 })
end

-- ---- float64 reference math on flat lists (row-major) ---------------------------------------
function H.matmul(a, b, m, k, n)   -- (m, k) x (k, n)
    local c = {}
    for i = 0, m - 1 do
        for j = 0, n - 1 do
            local s = 0
            for l = 0, k - 1 do s = s + a[i * k + l + 1] * b[l * n + j + 1] end
            c[i * n + j + 1] = s
        end
    end
    return c
end

function H.transpose(a, m, n)
    local t = {}
    for i = 0, m - 1 do for j = 0, n - 1 do t[j * m + i + 1] = a[i * n + j + 1] end end
    return t
end

function H.fro(a)
    local s = 0
    for i = 1, #a do s = s + a[i] * a[i] end
    return math.sqrt(s)
end

function H.axpby(a, x, b, y)   -- a x + b y
    local out = {}
    for i = 1, #x do out[i] = a * x[i] + b * y[i] end
    return out
end

-- Newton-Schulz in float64 on a flat (rows, cols) list, same rule as nc_newton_schulz
function H.ns_ref(x, rows, cols, steps, abc, eps)
    local tall = rows > cols
    local r, c = rows, cols
    local X = x
    if tall then X = H.transpose(x, rows, cols); r, c = cols, rows end
    local nrm = H.fro(X) + (eps or 1e-7)
    local Y = {}
    for i = 1, #X do Y[i] = X[i] / nrm end
    X = Y
    for _ = 1, steps do
        local a, b, cc = abc[1], abc[2], abc[3]
        local A = H.matmul(X, H.transpose(X, r, c), r, c, r)
        local AA = H.matmul(A, A, r, r, r)
        local Bm = H.axpby(b, A, cc, AA)
        local BX = H.matmul(Bm, X, r, r, c)
        X = H.axpby(a, X, 1, BX)
    end
    if tall then X = H.transpose(X, r, c) end
    return X
end

-- ---- asserts -----------------------------------------------------------------------------------
function H.close(got, want, atol, rtol, what)
    if type(got) == 'table' and got._c then got = got:tolist() end
    if type(want) == 'table' and want._c then want = want:tolist() end
    assert(#got == #want, string.format('%s: length %d vs %d', what or 'values', #got, #want))
    local worst, wi = -math.huge, 1
    for i = 1, #want do
        local e = math.abs(got[i] - want[i]) - rtol * math.abs(want[i])
        if e ~= e then e = math.huge end
        if e > worst then worst, wi = e, i end
    end
    assert(worst <= atol, string.format('%s: element %d: got %.9g, want %.9g (atol %g, rtol %g)', what or 'values',
        wi, got[wi], want[wi], atol, rtol))
end

function H.rel_fro(got, want)
    if type(got) == 'table' and got._c then got = got:tolist() end
    if type(want) == 'table' and want._c then want = want:tolist() end
    local d, w = 0, 0
    for i = 1, #want do d = d + (got[i] - want[i]) ^ 2; w = w + want[i] ^ 2 end
    return math.sqrt(d) / math.max(math.sqrt(w), 1e-300)
end

function H.bitwise(a, b, what)
    local x, y = a:tolist(), b:tolist()
    assert(#x == #y, (what or '') .. ': length differs')
    for i = 1, #x do
        if x[i] ~= y[i] then
            error(string.format('%s: element %d differs: %.9g vs %.9g', what or 'tensor', i, x[i], y[i]), 2)
        end
    end
end

-- ---- least squares -----------------------------------------------------------------------------
-- A problem min_X mean((A X^T - Y)^2) with X (n_out, n_in); returns the problem and a loss fn.
function H.lstsq(n_out, n_in, n_rows)
    local A = H.randn({ n_rows, n_in })
    local Xt = H.randn({ n_out, n_in }, 0.5)
    local Y = nc.linear(A, Xt)
    return {
        A = A, Y = Y,
        loss = function(X) return (nc.linear(A, X) - Y):square():mean() end,
    }
end

-- ---- resume equivalence ------------------------------------------------------------------------
-- make_params() -> list of {name, tensor}; make_opt(named) -> optimizer; loss_fn(named) -> loss.
-- Runs k + k steps uninterrupted, and k steps + state_dict (through a safetensors file with the
-- meta as JSON) + a fresh optimizer on copies of the parameters + k steps; returns both
-- parameter lists for a bitwise comparison.
function H.resume_pair(make_params, make_opt, loss_fn, k, sched)
    sched = sched or function() return 1 end
    local function run(named, opt, from, to)
        for s = from, to - 1 do
            local loss = loss_fn(named)
            loss:backward()
            opt:step(sched(s))
            opt:zero_grad()
        end
    end
    local a = make_params()
    local oa = make_opt(a)
    run(a, oa, 0, 2 * k)

    local b = make_params()
    local ob = make_opt(b)
    run(b, ob, 0, k)
    local sd = ob:state_dict()
    local path = os.tmpname()
    nc.save(path, sd.tensors, { meta = sd.meta })
    local tensors, md = nc.load(path)
    os.remove(path)
    local meta = json.decode(md.meta)
    -- a new process would rebuild the model from its checkpoint: copy the parameters
    local c = {}
    for i, nt in ipairs(b) do c[i] = { nt[1], nt[2]:detach():clone():requires_grad_(true) } end
    local oc = make_opt(c)
    oc:load_state_dict({ tensors = tensors, meta = meta })
    run(c, oc, k, 2 * k)
    return a, c, oa, oc
end

return H
