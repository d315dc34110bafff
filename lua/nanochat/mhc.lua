-- lua/nanochat/mhc.lua — nc.mhc: Manifold-constrained Hyper-Connections (mHC) and mHC-lite
-- (algorithms.md §12.2, §12.3) for the GPT residual stream.
--
-- Promise: with cfg.mhc = { n, kind, iters, dynamic, alpha_init } the residual state of the GPT is
-- x (B, T, n, d): n parallel streams per token. Every sublayer (the attention and the MLP branch of
-- every block) owns one nc.mhc.Layer that computes, per token, from the whole state:
--
--   v      = rmsnorm(vec(x))                        (1, n d), parameter-free (only when dynamic)
--   z      = alpha_g (v phi^T) + bias               (2n + R): [pre (n) | post (n) | res (R)]
--   H_pre  = sigmoid(z_pre)                         (n)
--   H_post = 2 sigmoid(z_post)                      (n)
--   H_res  = SinkhornKnopp(mat(z_res), iters)       kind 'sinkhorn', R = n^2 (log domain)
--          = sum_k softmax(z_res)_k P_k             kind 'lite',     R = n!  (exactly doubly stochastic)
--   h      = sum_j H_pre[j] x[j]                    (d)  branch input (the branch RMS-normalizes it)
--   y      = branch(h)                              (d)
--   x'[i]  = sum_j H_res[i][j] x[j] + H_post[i] y   (n, d)
--
-- Transpose convention (one, used everywhere): H_res[i][j] is the weight of INPUT stream j in
-- OUTPUT stream i, i.e. x' = H_res x with x's streams as rows. The Sinkhorn iteration normalizes
-- columns then rows, so after any number of iterations the ROWS sum to 1 exactly (each output
-- stream is a convex combination of the input streams); columns converge (§12.4).
-- alpha_g is alpha[1] (pre), alpha[2] (post) or alpha[3] (res); phi (2n + R, n d) starts at zero and
-- alpha at alpha_init; dynamic = false drops v, phi and alpha (static coefficients only).
--
-- Initialization reproduces the plain pre-norm residual network exactly: the embedding is copied
-- into all n streams; bias_post = 0 so H_post = 1 on every stream; bias_pre = +1 on the layer's own
-- stream (sublayer index mod n) and -1 elsewhere (the branch normalizes h, so only the direction
-- matters, and with identical streams h is a multiple of x); bias_res = 0 on the diagonal / -8 off
-- it (sinkhorn) or 0 for the identity permutation / -8 for the others (lite). With identical
-- streams any row-stochastic H_res keeps them identical, so every stream equals the plain
-- x + branch(x); at the end the streams are reduced by their mean before the final norm.
-- No parameter draws from a generator (zeros and constants), so adding mHC leaves every other
-- weight of a seeded model bit-identical.
--
-- Stream mixing and the dynamic projection run in fused C kernels on the CPU (kernels/cpu/mhc.c:
-- nc_mhc_pre / nc_mhc_post / nc_mhc_proj and their backwards, threaded over tokens); the dynamic
-- variants also compute all their coefficients in one kernel (nc_mhc_coef_lite / _sinkhorn) into a
-- packed (..., 2n + n^2) tensor that the mixing kernels read through strided views: 4 autograd
-- nodes per sublayer. On other devices, or with nc.mhc.set_fused(false), the same math is composed
-- from generic ops (broadcast mul + sum, batched matmul, rmsnorm + linear, sigmoid, softmax,
-- log_softmax); the static variant (dynamic = false) always composes its coefficients. Specs check
-- the two against each other and against finite differences.
local nn = require 'nanochat.nn'
local Module = nn.Module

local function nc() return require 'nanochat' end

local M = {}

local KNOWN = { n = 'number', kind = 'string', iters = 'number', dynamic = 'boolean', alpha_init = 'number' }
M.MAX_LITE_N = 4        -- n! permutation matrices: 24 at n = 4, 120 at n = 5 (§12.3: not for n >= 5)
M.MAX_N = 16
M.RES_OFF = -8          -- static res logit of the off-diagonal entries / non-identity permutations

local function is_posint(v) return type(v) == 'number' and v >= 1 and v == math.floor(v) end

-- A filled copy of the cfg.mhc sub-table; c is the (partly filled) GPT cfg. Errors name the field.
function M.config(sub, c)
    if type(sub) ~= 'table' then error('mhc: cfg.mhc must be a table, got ' .. type(sub), 3) end
    local out = {}
    for k, v in pairs(sub) do
        local want = KNOWN[k]
        if not want then error('mhc: unknown cfg.mhc field ' .. tostring(k), 3) end
        if type(v) ~= want then
            error(string.format('mhc: cfg.mhc.%s must be a %s, got %s', k, want, type(v)), 3)
        end
        out[k] = v
    end
    out.n = out.n or 4
    out.kind = out.kind or 'lite'
    out.iters = out.iters or 20
    if out.dynamic == nil then out.dynamic = true end
    out.alpha_init = out.alpha_init or 0.01
    if not is_posint(out.n) or out.n > M.MAX_N then
        error(string.format('mhc: cfg.mhc.n must be an integer in 1..%d, got %s', M.MAX_N, tostring(out.n)), 3)
    end
    if out.kind ~= 'lite' and out.kind ~= 'sinkhorn' then
        error("mhc: cfg.mhc.kind must be 'lite' or 'sinkhorn', got " .. out.kind, 3)
    end
    if out.kind == 'lite' and out.n > M.MAX_LITE_N then
        local f = 1
        for i = 2, out.n do f = f * i end
        error(string.format("mhc: kind 'lite' mixes all n! permutation matrices: n = %d would need %d; use n <= %d or kind = 'sinkhorn'",
            out.n, f, M.MAX_LITE_N), 3)
    end
    if not is_posint(out.iters) then error('mhc: cfg.mhc.iters must be a positive integer, got ' .. tostring(out.iters), 3) end
    if out.alpha_init < 0 or out.alpha_init ~= out.alpha_init then
        error('mhc: cfg.mhc.alpha_init must be >= 0, got ' .. tostring(out.alpha_init), 3)
    end
    return out
end

-- ---- permutations (mHC-lite) -------------------------------------------------------------------
-- All permutations of 0..n-1 in lexicographic order (the identity first), as 0-based Lua lists.
function M.permutations(n)
    local out = {}
    local function rec(prefix, used)
        if #prefix == n then
            local p = {}
            for i = 1, n do p[i] = prefix[i] end
            out[#out + 1] = p
            return
        end
        for v = 0, n - 1 do
            if not used[v] then
                used[v] = true
                prefix[#prefix + 1] = v
                rec(prefix, used)
                prefix[#prefix] = nil
                used[v] = false
            end
        end
    end
    rec({}, {})
    return out
end

-- The n! permutation matrices as one (n!, n*n) f32 tensor: row k is vec(P_k), P_k[i][perm_k[i]] = 1.
function M.perm_matrices(n)
    local perms = M.permutations(n)
    local data = {}
    for k, p in ipairs(perms) do
        local row = {}
        for i = 0, n - 1 do
            for j = 0, n - 1 do row[i * n + j + 1] = (p[i + 1] == j) and 1 or 0 end
        end
        data[k] = row
    end
    return nc().tensor(data)
end

-- ---- the two constraint maps -------------------------------------------------------------------
-- Log-domain Sinkhorn-Knopp: logits (..., n, n) -> a matrix of the same shape with positive
-- entries; each iteration normalizes columns (log_softmax over dim -2) then rows (over dim -1), so
-- rows sum to 1 exactly and columns approach 1 (20 iterations: ~1e-3 for N(0, 1) logits).
function M.sinkhorn(logits, iters)
    local n = nc()
    iters = iters or 20
    if not is_posint(iters) then error('mhc.sinkhorn: iters must be a positive integer, got ' .. tostring(iters), 2) end
    if not n.is_tensor(logits) or logits:dim() < 2 or logits:size(-1) ~= logits:size(-2) then
        error('mhc.sinkhorn: expected logits (..., n, n)', 2)
    end
    local L = logits
    for _ = 1, iters do
        L = n.log_softmax(L, -2)
        L = n.log_softmax(L, -1)
    end
    return n.exp(L)
end

-- mHC-lite: logits (..., n!) -> (..., n, n) = sum_k softmax(logits)_k P_k; perms (n!, n*n).
function M.lite(logits, perms)
    local n = nc()
    local R, nn2 = perms:size(0), perms:size(1)
    if not n.is_tensor(logits) or logits:size(-1) ~= R then
        error(string.format('mhc.lite: expected logits (..., %d) for %d permutation matrices', R, R), 2)
    end
    local k = math.floor(math.sqrt(nn2) + 0.5)
    local w = n.softmax(logits, -1)
    local shape = w:shape()
    local flat = w:dim() == 1 and w:view { 1, R } or w:reshape { -1, R }
    local H = n.matmul(flat, perms)           -- one sgemm (rows, R) x (R, n*n)
    shape[#shape] = k
    shape[#shape + 1] = k
    return H:view(shape)
end

-- ---- stream mixing: fused (C) or composite ------------------------------------------------------
local fused_on = true
-- nc.mhc.set_fused(false) switches the CPU to the composite ops (specs compare both); returns the old value
function M.set_fused(on)
    local prev = fused_on
    fused_on = not not on
    return prev
end

local function use_fused(x) return fused_on and x:device() == 'cpu' end

local function check_mix_shapes(what, x, coef, k)
    local s = x:shape()
    if #s < 2 then error('mhc.' .. what .. ': expected x (..., n, d)', 3) end
    local n = s[#s - 1]
    local cs = coef:shape()
    local ok = #cs == #s - 2 + k
    for i = 1, #s - 2 do ok = ok and cs[i] == s[i] end
    for i = #s - 1, #cs do ok = ok and cs[i] == n end
    if not ok then
        error(string.format('mhc.%s: x (%s) and coefficients (%s) do not match', what, table.concat(s, ', '),
            table.concat(cs, ', ')), 3)
    end
end

-- h (..., d) = sum_j hp[..., j] x[..., j, :];  x (..., n, d), hp (..., n)
function M.pre_mix(x, hp)
    local n = nc()
    check_mix_shapes('pre_mix', x, hp, 1)
    if not use_fused(x) then return n.sum(x * hp:unsqueeze(-1), -2) end
    local core, ag = n.core, require 'nanochat.autograd'
    local C = core.C
    x, hp = x:contiguous(), hp:contiguous()
    local shape = x:shape()
    table.remove(shape, #shape - 1)
    local out = n.empty(shape)
    core.check(C.nc_mhc_pre(out._c, x._c, hp._c), 'mhc.pre_mix')
    if ag.needs(x, hp) then
        ag.record(out, { x, hp }, function(g)
            local gx, ghp = ag.grad_of(x), ag.grad_of(hp)
            g = g:contiguous()
            core.check(C.nc_mhc_pre_backward(gx and gx._c or nil, ghp and ghp._c or nil, x._c, hp._c, g._c),
                'mhc.pre_mix backward')
        end)
    end
    return out
end

-- out (..., n, d) = hres x + hpost^T y:  out[i] = sum_j hres[i][j] x[j] + hpost[i] y
-- x (..., n, d), y (..., d), hres (..., n, n), hpost (..., n)
function M.post_mix(x, y, hres, hpost)
    local n = nc()
    check_mix_shapes('post_mix', x, hres, 2)
    check_mix_shapes('post_mix', x, hpost, 1)
    if not use_fused(x) then
        return n.matmul(hres, x) + hpost:unsqueeze(-1) * y:unsqueeze(-2)
    end
    local core, ag = n.core, require 'nanochat.autograd'
    local C = core.C
    x, y, hres, hpost = x:contiguous(), y:contiguous(), hres:contiguous(), hpost:contiguous()
    local out = n.empty(x:shape())
    core.check(C.nc_mhc_post(out._c, x._c, y._c, hres._c, hpost._c), 'mhc.post_mix')
    if ag.needs(x, y, hres, hpost) then
        ag.record(out, { x, y, hres, hpost }, function(g)
            -- x's gradient usually starts here (the last use of x in the forward): written, not zero-filled + added
            local gx, fx = ag.grad_buf(x)
            local gy, fy = ag.grad_buf(y)
            local gr, gp = ag.grad_of(hres), ag.grad_of(hpost)
            g = g:contiguous()
            local function cp(t) return t and t._c or nil end
            core.check(C.nc_mhc_post_backward(cp(gx), cp(gy), cp(gr), cp(gp), x._c, y._c, hres._c, hpost._c, g._c,
                (fx and 1 or 0) + (fy and 2 or 0)), 'mhc.post_mix backward')
        end)
    end
    return out
end

-- The dynamic projection (..., K) = rmsnorm(x_flat) phi^T, x (..., n, d), x_flat its (..., n d) view,
-- phi (K, n d); rmsnorm parameter-free with eps. Fused on the CPU (nc_mhc_proj: one sgemm on x itself
-- and one pass for the norms, no normalized copy); composite elsewhere.
function M.project(x, phi, eps)
    local n = nc()
    eps = eps or 1e-6
    local s = x:shape()
    if #s < 2 then error('mhc.project: expected x (..., n, d)', 2) end
    if not use_fused(x) then
        local lead = {}
        for i = 1, #s - 2 do lead[i] = s[i] end
        lead[#lead + 1] = s[#s - 1] * s[#s]
        return n.linear(n.rmsnorm(x:reshape(lead), nil, eps), phi)
    end
    local core, ag = n.core, require 'nanochat.autograd'
    local C = core.C
    x = x:contiguous()
    local lead = {}
    for i = 1, #s - 2 do lead[i] = s[i] end
    local rstd = n.empty(lead)
    lead[#lead + 1] = phi:size(0)
    local out = n.empty(lead)
    core.check(C.nc_mhc_proj(out._c, rstd._c, x._c, phi._c, eps), 'mhc.project')
    if ag.needs(x, phi) then
        ag.record(out, { x, phi }, function(g)
            local gx, fresh = ag.grad_buf(x)
            local gphi = ag.grad_of(phi)
            g = g:contiguous()
            core.check(C.nc_mhc_proj_backward(gx and gx._c or nil, gphi and gphi._c or nil, x._c, phi._c, rstd._c,
                out._c, g._c, fresh and 1 or 0), 'mhc.project backward')
        end)
    end
    return out
end

-- ---- packed mHC-lite path (CPU): one coefficient kernel, mixing kernels reading views of it ------
-- coef (..., C = 2n + n^2) = [H_pre | H_post | vec(H_res)] from proj (..., K = 2n + n!) (or nil: the
-- static z = bias), alpha (3), bias (K), perms (n!, n^2); one autograd node (nc_mhc_coef_lite).
function M.lite_coef(proj, alpha, bias, perms)
    local n = nc()
    local core, ag = n.core, require 'nanochat.autograd'
    local C = core.C
    local R, nn2 = perms:size(0), perms:size(1)
    local k = math.floor(math.sqrt(nn2) + 0.5)
    local shape = proj and proj:shape() or {}
    if proj then proj = proj:contiguous() end
    local lead = {}
    for i = 1, #shape - 1 do lead[i] = shape[i] end
    local cs, ws = {}, {}
    for i, v in ipairs(lead) do cs[i], ws[i] = v, v end
    cs[#cs + 1] = 2 * k + nn2
    ws[#ws + 1] = R
    local coef, w = n.empty(cs), n.empty(ws)
    core.check(C.nc_mhc_coef_lite(coef._c, w._c, proj and proj._c or nil, proj and alpha._c or nil, bias._c, perms._c),
        'mhc.lite_coef')
    if ag.needs(proj, alpha, bias) then
        ag.record(coef, { proj, proj and alpha or nil, bias }, function(g)
            local gp = proj and ag.grad_of(proj)
            local ga = proj and ag.grad_of(alpha)
            local gb = ag.grad_of(bias)
            g = g:contiguous()
            local function cp(t) return t and t._c or nil end
            core.check(C.nc_mhc_coef_lite_backward(cp(gp), cp(ga), cp(gb), coef._c, w._c, cp(proj), proj and alpha._c or nil,
                perms._c, g._c), 'mhc.lite_coef backward')
        end)
    end
    return coef
end

-- The same packing for mHC (Sinkhorn): proj (..., 2n + n^2) (or nil), alpha (3), bias (2n + n^2) ->
-- coef (..., 2n + n^2) with H_res after `iters` log-domain iterations (nc_mhc_coef_sinkhorn).
function M.sinkhorn_coef(proj, alpha, bias, n, iters)
    local N = nc()
    local core, ag = N.core, require 'nanochat.autograd'
    local C = core.C
    local K = 2 * n + n * n
    if proj then proj = proj:contiguous() end
    local shape = proj and proj:shape() or { K }
    local lead = {}
    for i = 1, #shape - 1 do lead[i] = shape[i] end
    local cs, ys = {}, {}
    for i, v in ipairs(lead) do cs[i], ys[i] = v, v end
    cs[#cs + 1] = K
    ys[#ys + 1] = 2 * iters * n * n
    local coef, saved = N.empty(cs), N.empty(ys)
    core.check(C.nc_mhc_coef_sinkhorn(coef._c, saved._c, proj and proj._c or nil, proj and alpha._c or nil, bias._c, n,
        iters), 'mhc.sinkhorn_coef')
    if ag.needs(proj, alpha, bias) then
        ag.record(coef, { proj, proj and alpha or nil, bias }, function(g)
            local gp = proj and ag.grad_of(proj)
            local ga = proj and ag.grad_of(alpha)
            local gb = ag.grad_of(bias)
            g = g:contiguous()
            local function cp(t) return t and t._c or nil end
            core.check(C.nc_mhc_coef_sinkhorn_backward(cp(gp), cp(ga), cp(gb), coef._c, saved._c, cp(proj),
                proj and alpha._c or nil, g._c, n, iters), 'mhc.sinkhorn_coef backward')
        end)
    end
    return coef
end

-- views (no autograd) of a packed coef (..., C): H_pre (..., n), H_post (..., n), H_res (..., n, n)
local function coef_views(coef, n)
    local Tensor = require 'nanochat.tensor'
    local C = nc().core.C
    local d = coef:dim() - 1
    local function narrow(s, len) return Tensor.wrap(C.nc_tensor_view_narrow(coef._c, d, s, len), 'narrow') end
    local hr = narrow(2 * n, n * n)
    local shape = hr:shape()
    shape[#shape] = n
    shape[#shape + 1] = n
    return narrow(0, n), narrow(n, n), hr:_raw_view(shape)
end
M._coef_views = coef_views

-- pre / post mixing reading the coefficients from a packed coef (one node each; gradients land in
-- coef's gradient through views of it)
local function pre_packed(x, coef, n)
    local N = nc()
    local core, ag = N.core, require 'nanochat.autograd'
    local C = core.C
    local hp = coef_views(coef, n)
    local shape = x:shape()
    table.remove(shape, #shape - 1)
    local out = N.empty(shape)
    core.check(C.nc_mhc_pre(out._c, x._c, hp._c), 'mhc.pre_mix')
    if ag.needs(x, coef) then
        ag.record(out, { x, coef }, function(g)
            local gx, gc = ag.grad_of(x), ag.grad_of(coef)
            local ghp = gc and coef_views(gc, n)
            g = g:contiguous()
            core.check(C.nc_mhc_pre_backward(gx and gx._c or nil, ghp and ghp._c or nil, x._c, hp._c, g._c),
                'mhc.pre_mix backward')
        end)
    end
    return out
end

local function post_packed(x, y, coef, n)
    local N = nc()
    local core, ag = N.core, require 'nanochat.autograd'
    local C = core.C
    local _, hq, hr = coef_views(coef, n)
    y = y:contiguous()
    local out = N.empty(x:shape())
    core.check(C.nc_mhc_post(out._c, x._c, y._c, hr._c, hq._c), 'mhc.post_mix')
    if ag.needs(x, y, coef) then
        ag.record(out, { x, y, coef }, function(g)
            local gx, fx = ag.grad_buf(x)
            local gy, fy = ag.grad_buf(y)
            local gc = ag.grad_of(coef)
            local ghq, ghr
            if gc then _, ghq, ghr = coef_views(gc, n) end
            g = g:contiguous()
            local function cp(t) return t and t._c or nil end
            core.check(C.nc_mhc_post_backward(cp(gx), cp(gy), cp(ghr), cp(ghq), x._c, y._c, hr._c, hq._c, g._c,
                (fx and 1 or 0) + (fy and 2 or 0)), 'mhc.post_mix backward')
        end)
    end
    return out
end

-- ---- the per-sublayer module -------------------------------------------------------------------
local Layer = Module:extend('MHC')
M.Layer = Layer

local function factorial(n)
    local f = 1
    for i = 2, n do f = f * i end
    return f
end

-- c: the GPT cfg with c.mhc filled; own: the 0-based stream this sublayer reads most at init.
function Layer:init(c, own)
    local m = c.mhc
    local n, d = m.n, c.d_model
    local R = m.kind == 'lite' and factorial(n) or n * n
    local K = 2 * n + R
    rawset(self, 'n', n)
    rawset(self, 'd', d)
    rawset(self, 'R', R)
    rawset(self, 'kind', m.kind)
    rawset(self, 'iters', m.iters)
    rawset(self, 'dynamic', m.dynamic)
    rawset(self, 'eps', c.norm_eps or 1e-6)
    rawset(self, 'own', own % n)
    local b = {}
    for i = 0, n - 1 do b[i + 1] = (i == own % n) and 1 or -1 end           -- pre
    for i = 0, n - 1 do b[n + i + 1] = 0 end                                 -- post: 2 sigmoid(0) = 1
    if m.kind == 'lite' then
        for k = 1, R do b[2 * n + k] = k == 1 and 0 or M.RES_OFF end      -- permutation 1 is the identity
    else
        for i = 0, n - 1 do
            for j = 0, n - 1 do b[2 * n + i * n + j + 1] = i == j and 0 or M.RES_OFF end
        end
    end
    local N = nc()
    self:param('bias', N.tensor(b))
    if m.dynamic then
        self:param('phi', N.zeros { K, n * d })
        self:param('alpha', N.full({ 3 }, m.alpha_init))
        local g = {}
        for k = 1, K do g[k] = k <= n and 0 or (k <= 2 * n and 1 or 2) end
        self:buffer('alpha_group', N.tensor(g, { dtype = 'i64' }), { persistent = false })
    end
    if m.kind == 'lite' then self:buffer('perms', M.perm_matrices(n), { persistent = false }) end
end

function Layer:extra_repr()
    return string.format('n=%d, kind=%s%s, dynamic=%s', self.n, self.kind,
        self.kind == 'sinkhorn' and (', iters=' .. self.iters) or '', tostring(self.dynamic))
end

-- res logits (..., R) -> H_res (..., n, n)
function Layer:res_matrix(zr)
    if self.kind == 'lite' then return M.lite(zr, self.perms) end
    local shape = zr:shape()
    shape[#shape] = self.n
    shape[#shape + 1] = self.n
    return M.sinkhorn(zr:reshape(shape), self.iters)
end

-- x (B, T, n, d) -> H_pre (B, T, n), H_post (B, T, n), H_res (B, T, n, n). Static (dynamic = false)
-- or x = nil: the bias-only coefficients (n), (n), (n, n), not expanded.
function Layer:coefficients(x)
    local N = nc()
    local n = self.n
    local z
    if self.dynamic and x then
        local a = N.index_select(self.alpha, 0, self.alpha_group)
        z = M.project(x, self.phi, self.eps) * a + self.bias
    else
        z = self.bias
    end
    local hp = N.sigmoid(z:narrow(-1, 0, n))
    local hq = N.sigmoid(z:narrow(-1, n, n)) * 2
    local hr = self:res_matrix(z:narrow(-1, 2 * n, self.R))
    return hp, hq, hr
end

-- capture hook for nc.mhc.report: when set, every forward appends its H_res (no grad)
local capture = nil

-- x (B, T, n, d); branch(h (B, T, d)) -> y (B, T, d). Returns the next state (B, T, n, d).
-- Dynamic mHC / mHC-lite on the CPU takes the packed path: 4 autograd nodes per sublayer
-- (projection, coefficients, pre, post) instead of ~15 (lite) or ~50 (Sinkhorn) small ops.
function Layer:forward(x, branch)
    if self.dynamic and use_fused(x) then
        x = x:contiguous()
        local proj = M.project(x, self.phi, self.eps)
        local coef
        if self.kind == 'lite' then coef = M.lite_coef(proj, self.alpha, self.bias, self.perms)
        else coef = M.sinkhorn_coef(proj, self.alpha, self.bias, self.n, self.iters) end
        if capture then
            local _, _, hr = coef_views(coef, self.n)
            capture[#capture + 1] = { layer = self, hres = hr:contiguous():detach() }
        end
        local h = pre_packed(x, coef, self.n)
        return post_packed(x, branch(h), coef, self.n)
    end
    local hp, hq, hr = self:coefficients(x)
    if not (self.dynamic) then
        local s = x:shape()
        local lead = {}
        for i = 1, #s - 1 do lead[i] = s[i] end
        hp = hp:expand(lead)
        hq = hq:expand(lead)
        lead[#lead + 1] = self.n
        hr = hr:expand(lead)
    end
    if capture then capture[#capture + 1] = { layer = self, hres = hr:detach() } end
    local h = M.pre_mix(x, hp)
    local y = branch(h)
    return M.post_mix(x, y, hr, hq)
end

-- ---- model glue --------------------------------------------------------------------------------
-- embedding state (B, T, d) -> (B, T, n, d): the same vector in every stream
function M.expand(x, n)
    local s = x:shape()
    local full = {}
    for i = 1, #s - 1 do full[i] = s[i] end
    full[#full + 1] = n
    full[#full + 1] = s[#s]
    return x:unsqueeze(-2):expand(full):contiguous()
end

-- state (B, T, n, d) -> (B, T, d): the mean of the streams
function M.reduce(x) return nc().mean(x, -2) end

-- ---- diagnostics -----------------------------------------------------------------------------------
-- all mHC layers of a model in module order: { {name, layer}, ... }
function M.layers(model)
    local out = {}
    for _, nm in ipairs(model:named_modules()) do
        if getmetatable(nm[2]) == Layer then out[#out + 1] = { nm[1], nm[2] } end
    end
    return out
end

-- n x n Lua matrices (1-based) from a contiguous (..., n, n) tensor: a list of tokens' matrices
local function matrices(t, n)
    local flat = t:contiguous():tolist()
    local out = {}
    for base = 0, #flat - 1, n * n do
        local m = {}
        for i = 1, n do
            m[i] = {}
            for j = 1, n do m[i][j] = flat[base + (i - 1) * n + j] end
        end
        out[#out + 1] = m
    end
    return out
end

local function ds_error(m, n)
    local row, col, minv = 0, 0, math.huge
    for i = 1, n do
        local rs, cs = 0, 0
        for j = 1, n do
            rs = rs + m[i][j]
            cs = cs + m[j][i]
            if m[i][j] < minv then minv = m[i][j] end
        end
        row = math.max(row, math.abs(rs - 1))
        col = math.max(col, math.abs(cs - 1))
    end
    return row, col, minv
end

local function matmul_lua(a, b, n)
    local c = {}
    for i = 1, n do
        c[i] = {}
        for j = 1, n do
            local s = 0
            for k = 1, n do s = s + a[i][k] * b[k][j] end
            c[i][j] = s
        end
    end
    return c
end

local function gains(m, n)
    local fwd, bwd = 0, 0
    for i = 1, n do
        local rs, cs = 0, 0
        for j = 1, n do rs = rs + math.abs(m[i][j]); cs = cs + math.abs(m[j][i]) end
        fwd, bwd = math.max(fwd, rs), math.max(bwd, cs)
    end
    return fwd, bwd
end

-- nc.mhc.report(model [, idx [, opts]]) -> table; prints it unless opts.quiet.
-- Per mHC sublayer: row_err = max |row sum - 1| and col_err = max |col sum - 1| of H_res, min_entry.
--   With idx (B, T) token ids: H_res of every token of that batch (a no-grad forward; the max over
--   tokens), listed in the order the forward applies the sublayers (a looped block appears once per
--   application). Without idx: the static part only (the bias, i.e. the dynamic term set to 0), in
--   module order.
-- Composite gain of the product H_res(last) ... H_res(first) across depth: fwd_gain = max absolute
--   row sum (the infinity norm: the most any output stream can be amplified) and bwd_gain = max
--   absolute column sum (the 1-norm: the same for gradients flowing back); 1 for exactly doubly
--   stochastic matrices. With idx: per token, the max over tokens.
function M.report(model, idx, opts)
    opts = opts or {}
    local N = nc()
    local entries = {}
    if idx then
        capture = {}
        local ok, err = pcall(function() N.no_grad(function() return model:forward(idx) end) end)
        local got = capture
        capture = nil
        if not ok then error(err, 0) end
        local names = {}
        for _, nl in ipairs(M.layers(model)) do names[nl[2]] = nl[1] end
        for _, e in ipairs(got) do entries[#entries + 1] = { name = names[e.layer] or '?', layer = e.layer, hres = e.hres } end
    else
        for _, nl in ipairs(M.layers(model)) do
            local _, _, hr = N.no_grad(function() return nl[2]:coefficients(nil) end)
            entries[#entries + 1] = { name = nl[1], layer = nl[2], hres = hr }
        end
    end
    if #entries == 0 then error('mhc.report: the model has no mHC layers (cfg.mhc not set)', 2) end
    local n = entries[1].layer.n
    local rows = {}
    local prod        -- per token list of products
    for li, e in ipairs(entries) do
        local ms = matrices(e.hres, n)
        local re, ce, mn = 0, 0, math.huge
        for _, m in ipairs(ms) do
            local r, c, v = ds_error(m, n)
            re, ce, mn = math.max(re, r), math.max(ce, c), math.min(mn, v)
        end
        if not prod then
            prod = ms
        else
            for t = 1, #prod do prod[t] = matmul_lua(ms[t] or ms[1], prod[t], n) end
        end
        rows[li] = { name = e.name, row_err = re, col_err = ce, min_entry = mn }
    end
    local fwd, bwd = 0, 0
    for _, m in ipairs(prod) do
        local f, b = gains(m, n)
        fwd, bwd = math.max(fwd, f), math.max(bwd, b)
    end
    local out = { layers = rows, fwd_gain = fwd, bwd_gain = bwd, n = n, kind = entries[1].layer.kind,
                  source = idx and 'batch' or 'static', tokens = #prod }
    local worst_r, worst_c = 0, 0
    for _, r in ipairs(rows) do worst_r, worst_c = math.max(worst_r, r.row_err), math.max(worst_c, r.col_err) end
    out.max_row_err, out.max_col_err = worst_r, worst_c
    if not opts.quiet then
        print(string.format('mHC report (%s, n=%d, %s H_res over %d token(s))', out.kind, n, out.source, out.tokens))
        print(string.format('  %-24s %12s %12s %12s', 'sublayer', 'row err', 'col err', 'min entry'))
        for _, r in ipairs(rows) do
            print(string.format('  %-24s %12.3e %12.3e %12.3e', r.name, r.row_err, r.col_err, r.min_entry))
        end
        print(string.format('  composite gain over %d sublayers: fwd (max row sum) %.6f, bwd (max col sum) %.6f',
            #rows, fwd, bwd))
    end
    return out
end

return M
