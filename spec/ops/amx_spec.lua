-- spec/ops/amx_spec.lua — the AMX training GEMMs (kernels/cpu/amx.c) and the fused BitLinear op
-- (nc.bitlinear_act / nc.bitlinear, ops/nn.lua) with cfg.matmul in the GPT.
--
-- Checks: the bf16 GEMM reference (AMX off) equals a float64 recomputation from bf16-rounded
-- inputs; the AMX bf16 GEMM is within the f32-accumulation bound K * 2^-23 * sum|a_k b_k| of it,
-- over odd shapes, all transposes, kscale (multiply / divide, per k / broadcast), alpha / beta;
-- the int8 GEMM's int32 sums are bit-exact (AMX and reference vs integer sums in Lua) and its
-- scaled f32 output bitwise equals the reference; quant_codes reproduces the quantizers' integers;
-- the fused op's forward against the exact int64 recomputation and the composite path, its
-- gradients against the composite path within the bf16 bound (2^-8 * (|dY| |Wq|) elementwise, see
-- below), per-row quant groups, the composite fallback for other groups and with AMX off (bitwise
-- the composite), gradient accumulation through a shared activation, Collider keep-all bitwise equal
-- to dense inside the AMX path; nc_gemm_bf16_rows (row lists for op(a)'s rows / out rows and the
-- reduction) bitwise equal to gather + nc_gemm_bf16 + scatter (AMX and reference), against float64,
-- zero_rest, empty lists, i32 lists, bad lists; the micro GPT with matmul = 'auto' vs 'fp32' (same loss at init up
-- to float rounding, a few AdamW steps lower it and stay close); cfg validation.
-- "AMX" in the test names means the hardware GEMM path: every test marked so runs once per backend
-- available here, AMX tiles and the AVX-512 BF16 / VNNI block kernels (nc.set_gemm_backend), so an
-- AMX machine checks both; without either they are pending with the reason.
package.path = 'lua/?.lua;lua/?/init.lua;' .. package.path
local nc = require 'nanochat'
local ag = require 'nanochat.autograd'
local core = require 'nanochat.core'
local ffi, C, check = core.ffi, core.C, core.check

-- the backend to return to after a test switches: what $NC_GEMM asked for (the process default)
local DEFAULT_GEMM = os.getenv('NC_GEMM') or 'auto'
local HAVE = nc.cpu_gemm_fast()
local WHY = nc.gemm_backend() .. '; ' .. nc.amx_status()
local U = 2 ^ -24   -- f32 unit roundoff

-- the hardware backends present: 'amx' and / or 'avx512'
local BACKENDS = {}
for _, b in ipairs { 'amx', 'avx512' } do
    if pcall(nc.set_gemm_backend, b) then BACKENDS[#BACKENDS + 1] = b end
end
nc.set_gemm_backend(DEFAULT_GEMM)

local function amx_it(name, fn)
    it(name, function()
        if not HAVE then pending('no hardware GEMM: ' .. WHY) return end
        for _, b in ipairs(BACKENDS) do
            nc.set_gemm_backend(b)
            local ok, err = pcall(fn)
            nc.set_gemm_backend(DEFAULT_GEMM)
            if not ok then error('[' .. b .. '] ' .. tostring(err), 0) end
        end
    end)
end

-- run fn on the scalar reference (the composite path for nc.bitlinear), restoring the default
local function without_amx(fn, ...)
    nc.set_gemm_backend('reference')
    local ok, a, b, c = pcall(fn, ...)
    nc.set_gemm_backend(DEFAULT_GEMM)
    if not ok then error(a, 0) end
    return a, b, c
end

local function f32(x) return tonumber(ffi.new('float', x)) end

local function bits(t)
    local c = t:contiguous()
    local p = ffi.cast('const uint32_t *', C.nc_tensor_data(c._c))
    local out = {}
    for i = 0, c:numel() - 1 do out[i + 1] = p[i] end
    return out
end

local function same_bits(a, b)
    local x, y = bits(a), bits(b)
    if #x ~= #y then return false, 0 end
    for i = 1, #x do if x[i] ~= y[i] then return false, i end end
    return true
end

local function bf16(t) return t:to('bf16'):to('f32') end

-- (R, C) f32 tensor of integers uniform in [lo, hi] from a seeded LCG (no rounding op needed)
local function randint(R, Cn, lo, hi, seed)
    local st = seed * 2654435761 % 4294967296
    local rows = {}
    for i = 1, R do
        rows[i] = {}
        for j = 1, Cn do
            st = (st * 1103515245 + 12345) % 2147483648
            rows[i][j] = lo + math.floor(st / 2147483648 * (hi - lo + 1))
        end
    end
    return nc.tensor(rows)
end

-- op(t) as a Lua table of rows (float64)
local function optab(t, trans) return (trans == 1 and t:t() or t):contiguous():totable() end

local SHAPES = { { 1, 1, 1 }, { 15, 17, 33 }, { 17, 33, 15 }, { 33, 100, 257 }, { 100, 257, 17 }, { 257, 33, 100 },
                 { 64, 64, 64 }, { 300, 70, 90 } }   -- the last one runs on several threads

describe('AMX GEMMs', function()
    it('detection: cpu_amx is a boolean with a status line; set_amx validates', function()
        local had = nc.cpu_amx()
        assert.is_boolean(had)
        assert.is_string(nc.amx_status())
        assert.is_true(#nc.amx_status() > 0)
        assert.has_error(function() check(C.nc_set_amx(5), 'set_amx') end)
        if nc.amx_status():find('unavailable') then assert.has_error(function() nc.set_amx(true) end) end
        nc.set_amx(false)
        assert.is_false(nc.cpu_amx())
        nc.set_amx(nil)
        assert.are.equal(had, nc.cpu_amx())
    end)

    it('backend selection: gemm_backend names it, set_gemm_backend validates and switches', function()
        assert.is_boolean(nc.cpu_gemm_fast())
        local name = nc.gemm_backend()
        assert.is_true(name == 'amx' or name == 'reference' or name:find('avx512') ~= nil, name)
        assert.are.equal(HAVE, name == 'amx' or name == 'avx512-bf16-vnni')
        local ok, err = pcall(nc.set_gemm_backend, 'tiles')
        assert.is_false(ok)
        assert.truthy(tostring(err):find('expected "auto", "amx", "avx512" or "reference", got "tiles"', 1, true))
        nc.set_gemm_backend('reference')
        assert.are.equal('reference', nc.gemm_backend())
        assert.is_false(nc.cpu_gemm_fast())
        assert.is_false(nc.cpu_amx())
        nc.set_gemm_backend(DEFAULT_GEMM)
        assert.are.equal(name, nc.gemm_backend())
        for _, b in ipairs { 'amx', 'avx512' } do
            local okb, e = pcall(nc.set_gemm_backend, b)
            nc.set_gemm_backend(DEFAULT_GEMM)
            if not okb then assert.truthy(tostring(e):find('is not available', 1, true), tostring(e)) end
        end
    end)

    it('the bf16 reference equals a float64 recomputation from bf16-rounded inputs (scaled, transposed)', function()
        local g = nc.generator(3)
        for _, s in ipairs { { 15, 17, 33 }, { 17, 5, 40 } } do
            local M, N, K = s[1], s[2], s[3]
            for _, tr in ipairs { { 0, 0 }, { 1, 1 } } do
                local ta, tb = tr[1], tr[2]
                local a = ta == 1 and nc.randn({ K, M }, { generator = g }) or nc.randn({ M, K }, { generator = g })
                local b = tb == 1 and nc.randn({ N, K }, { generator = g }) or nc.randn({ K, N }, { generator = g })
                local ks = nc.rand({ K }, { generator = g, lo = 0.5, hi = 2 })
                local out = nc.randn({ M, N }, { generator = g })
                local prev = out:totable()
                without_amx(function() check(C.nc_gemm_bf16(out._c, a._c, b._c, ta, tb, ks._c, 1, 0.5, 1), 'gemm_bf16') end)
                -- op(a) / ks in f32, then bf16; op(b) bf16
                local at = optab(a, ta)
                local ksl = ks:totable()
                local scaled = {}
                for i = 1, M do
                    scaled[i] = {}
                    for k = 1, K do scaled[i][k] = f32(at[i][k] / ksl[k]) end
                end
                local ab = bf16(nc.tensor(scaled)):totable()
                local bb = optab(bf16(b), tb)
                local got = out:totable()
                for i = 1, M do
                    for j = 1, N do
                        local acc = 0
                        for k = 1, K do acc = acc + ab[i][k] * bb[k][j] end
                        assert.are.equal(f32(0.5 * acc + prev[i][j]), got[i][j])
                    end
                end
            end
        end
    end)

    amx_it('AMX bf16 GEMM within K * 2^-23 * sum|a b| of the reference: odd shapes, transposes, kscale, alpha / beta', function()
        local g = nc.generator(5)
        for si, s in ipairs(SHAPES) do
            local M, N, K = s[1], s[2], s[3]
            for ta = 0, 1 do
                for tb = 0, 1 do
                    local a = ta == 1 and nc.randn({ K, M }, { generator = g }) or nc.randn({ M, K }, { generator = g })
                    local b = tb == 1 and nc.randn({ N, K }, { generator = g }) or nc.randn({ K, N }, { generator = g })
                    -- kscale variants: none, per-k multiply, broadcast divide
                    local variant = (si + 2 * ta + tb) % 3
                    local ks, div = nil, 0
                    if variant == 1 then ks = nc.rand({ K }, { generator = g, lo = 0.25, hi = 4 })
                    elseif variant == 2 then ks, div = nc.full({ 1 }, 3), 1 end
                    local beta = (si + ta) % 2
                    local init = nc.randn({ M, N }, { generator = g })
                    local o1, o2 = init:clone(), init:clone()
                    check(C.nc_gemm_bf16(o1._c, a._c, b._c, ta, tb, ks and ks._c or nil, div, 1.5, beta), 'gemm_bf16')
                    without_amx(function()
                        check(C.nc_gemm_bf16(o2._c, a._c, b._c, ta, tb, ks and ks._c or nil, div, 1.5, beta), 'gemm_bf16')
                    end)
                    -- the bound: sum_k |a'_k b'_k| (the abs values through the same reference)
                    local ob = nc.zeros { M, N }
                    without_amx(function()
                        check(C.nc_gemm_bf16(ob._c, a:abs()._c, b:abs()._c, ta, tb, ks and ks._c or nil, div, 1.5, 0), 'gemm_bf16')
                    end)
                    local d = (o1 - o2):abs()
                    local tol = ob * (2 * K * U) + 2 * U * o2:abs() + 1e-30
                    local worst = (d - tol):max():item()
                    assert.is_true(worst <= 0, string.format('M=%d N=%d K=%d ta=%d tb=%d: max excess %g', M, N, K, ta, tb, worst))
                end
            end
        end
    end)

    it('int8 GEMM: int32 sums bit-exact (i8 and f32 codes, transposes) on AMX and the reference', function()
        local g = nc.generator(9)
        for _, s in ipairs(SHAPES) do
            local M, N, K = s[1], s[2], s[3]
            for tb = 0, 1 do
                local a = randint(M, K, -128, 127, M + 3 * tb)
                local b = tb == 1 and randint(N, K, -128, 127, N + 7) or randint(K, N, -128, 127, K + 11)
                local a8 = a:to('i8')
                local o1 = nc.zeros({ M, N }, { dtype = 'i32' })
                local o2 = nc.zeros({ M, N }, { dtype = 'i32' })
                check(C.nc_gemm_s8(o1._c, a8._c, b._c, 0, tb, nil, nil, 0), 'gemm_s8')
                without_amx(function() check(C.nc_gemm_s8(o2._c, a._c, b._c, 0, tb, nil, nil, 0), 'gemm_s8') end)
                local at, bt = a:totable(), optab(b, tb)
                local r1, r2 = o1:totable(), o2:totable()
                for i = 1, M do
                    for j = 1, N do
                        local acc = 0
                        for k = 1, K do acc = acc + at[i][k] * bt[k][j] end
                        assert.are.equal(acc, r1[i][j])
                        assert.are.equal(acc, r2[i][j])
                    end
                end
            end
        end
    end)

    it('int8 GEMM: the scaled f32 output equals the reference bitwise', function()
        local g = nc.generator(10)
        for _, s in ipairs(SHAPES) do
            local M, N, K = s[1], s[2], s[3]
            local a = randint(M, K, -128, 127, M * 5 + 1)
            local t = randint(N, K, -1, 1, N * 3 + 2)
            local cs = nc.rand({ N }, { generator = g, lo = 0.01, hi = 0.1 })
            local rs = nc.rand({ M }, { generator = g, lo = 1, hi = 100 })
            for _, c in ipairs { cs, nc.full({ 1 }, 0.03) } do
                local o1, o2 = nc.zeros { M, N }, nc.zeros { M, N }
                check(C.nc_gemm_s8(o1._c, a._c, t._c, 0, 1, c._c, rs._c, 1), 'gemm_s8')
                without_amx(function() check(C.nc_gemm_s8(o2._c, a._c, t._c, 0, 1, c._c, rs._c, 1), 'gemm_s8') end)
                assert.is_true(same_bits(o1, o2))
                -- and the formula ((float)sum * c[n]) / rs[m] in f32
                local at, tt, got = a:totable(), t:totable(), o2:totable()
                local cl, rl = c:totable(), rs:totable()
                for i = 1, M, 7 do
                    for j = 1, N, 5 do
                        local acc = 0
                        for k = 1, K do acc = acc + at[i][k] * tt[j][k] end
                        assert.are.equal(f32(f32(acc * cl[#cl == 1 and 1 or j]) / rl[i]), got[i][j])
                    end
                end
            end
        end
    end)

    it('quant_codes recovers the quantizers\' integers from the fake-quantized tensors exactly', function()
        local g = nc.generator(12)
        local x = nc.randn({ 37, 45 }, { generator = g }) * 3
        local xq, s = nc.quant_act(x)
        local q = nc.empty { 37, 45 }
        check(C.nc_quant_codes(q._c, xq._c, s._c, 0, -128, 127), 'quant_codes')
        local q2 = nc.empty { 37, 45 }
        check(C.nc_quant_codes(q2._c, x._c, s._c, 0, -128, 127), 'quant_codes')   -- from x: the quantizer's own rounding
        assert.is_true(same_bits(q, q2))
        for _, row in ipairs(q:totable()) do
            for _, v in ipairs(row) do assert.are.equal(math.floor(v), v) end
        end
        assert.is_true(q:abs():max():item() <= 128)
        assert.is_true(((q / s:view { -1, 1 }) - xq):abs():max():item() == 0)   -- q / s is the fake-quantized value
        local w = nc.randn({ 20, 30 }, { generator = g })
        local wq, gamma = nc.quant_weight(w)
        local t8 = nc.empty({ 20, 30 }, { dtype = 'i8' })
        check(C.nc_quant_codes(t8._c, wq._c, gamma._c, 1, -1, 1), 'quant_codes')
        assert.are.equal(0, (t8:to('f32') * gamma:item() - wq):abs():max():item())   -- (-0 vs +0 aside)
        assert.has_error(function() check(C.nc_quant_codes(q._c, x._c, nc.ones { 2 }._c, 0, -128, 127), 'quant_codes') end)
        assert.has_error(function() check(C.nc_quant_codes(q._c, x._c, s._c, 0, 5, 1), 'quant_codes') end)
    end)

    it('clear errors on bad shapes and dtypes', function()
        local a, b = nc.randn { 4, 5 }, nc.randn { 6, 5 }
        local ok, err = pcall(check, C.nc_gemm_bf16(nc.empty { 4, 7 }._c, a._c, b._c, 0, 1, nil, 0, 1, 0), 'gemm_bf16')
        assert.is_false(ok)
        assert.truthy(tostring(err):find('gemm_bf16'))
        ok, err = pcall(check, C.nc_gemm_s8(nc.empty({ 4, 6 }, { dtype = 'i32' })._c, a._c, b._c, 0, 1, nc.ones { 6 }._c, nil, 0), 'gemm_s8')
        assert.is_false(ok)
        ok, err = pcall(check, C.nc_gemm_bf16(nc.empty { 4, 6 }._c, a._c, b._c, 0, 1, nc.ones { 3 }._c, 0, 1, 0), 'gemm_bf16')
        assert.is_false(ok)
        assert.truthy(tostring(err):find('kscale'))
        assert.has_error(function() nc.bitlinear(a, nc.randn { 3, 4 }) end)
    end)
end)

-- the symmetric product of the optimizers' Newton-Schulz (core/internal.h; not in nanochat.h)
pcall(ffi.cdef, [[
int32_t nc_gemm_bf16_f32p(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, int32_t trans_a,
    const float *B, int64_t ldb, int32_t trans_b, float alpha, float beta, float *C, int64_t ldc);
int32_t nc_gemm_bf16_f32p_sym(int64_t n, int64_t K, const float *A, int64_t lda, int32_t trans_a, const float *B,
    int64_t ldb, int32_t trans_b, float alpha, float beta, float *C, int64_t ldc);
]])

describe('nc_gemm_bf16_f32p_sym (upper blocks + mirror, for products known to be symmetric)', function()
    -- C = alpha P Q + beta C: the entries on and above the diagonal are the full product's bit for
    -- bit (same kernel, same sums); the ones below are their mirror, also when P Q is symmetric only
    -- in exact arithmetic (U M, U not symmetric); C's input symmetric (beta != 0 reads it)
    local function run(n, K, nonsym)
        local X = nc.randn { n, K }
        local P, tp, Q, tq, ldp, ldq
        if nonsym then   -- P = U (n, n) not symmetric, Q = S (n, n) symmetric
            P, Q = nc.randn { n, n }, nc.randn { n, n }
            Q = Q + Q:t():contiguous()
            tp, tq, ldp, ldq, K = 0, 0, n, n, n
        else             -- X X^T through (X, X transposed)
            P, Q, tp, tq, ldp, ldq = X, X, 0, 1, K, K
        end
        local C0 = nc.randn { n, n }
        C0 = C0 + C0:t():contiguous()
        local full, sym = C0:clone(), C0:clone()
        local fp = function(t) return ffi.cast('float *', C.nc_tensor_data(t._c)) end
        assert(C.nc_gemm_bf16_f32p(n, n, K, fp(P), ldp, tp, fp(Q), ldq, tq, 0.75, 0.5, fp(full), n) == 0)
        assert(C.nc_gemm_bf16_f32p_sym(n, K, fp(P), ldp, tp, fp(Q), ldq, tq, 0.75, 0.5, fp(sym), n) == 0)
        local f, g = full:tolist(), sym:tolist()
        for i = 1, n do
            for j = 1, n do
                local want = j >= i and f[(i - 1) * n + j] or g[(j - 1) * n + i]
                if j >= i then assert(g[(i - 1) * n + j] == want, string.format('n %d: upper (%d, %d) %.9g vs full %.9g', n, i, j, g[(i - 1) * n + j], want))
                else assert(g[(i - 1) * n + j] == want, string.format('n %d: (%d, %d) is not the mirror', n, i, j)) end
            end
        end
    end
    local function all()
        for _, n in ipairs { 1, 5, 16, 32, 45, 64, 100 } do
            run(n, 37, false)
            run(n, 0, true)
        end
    end
    it('on the reference GEMM', function()
        nc.set_gemm_backend('reference')
        local ok, err = pcall(all)
        nc.set_gemm_backend(DEFAULT_GEMM)
        assert(ok, err)
    end)
    amx_it('AMX: on the hardware GEMM', all)
end)

describe('nc_gemm_bf16_rows (row-indexed bf16 GEMM: Collider kept rows without gathered copies)', function()
    -- a strictly increasing subset of [0, n): every row r with (r * 7 + seed) % 5 < 3, at least one
    local function subset(n, seed)
        local out = {}
        for r = 0, n - 1 do if (r * 7 + seed) % 5 < 3 then out[#out + 1] = r end end
        if #out == 0 then out[1] = n - 1 end
        return out
    end
    local function idx(list, dtype) return nc.tensor(list, { dtype = dtype or 'i64' }) end
    local function sel(t, dim, list) return nc.index_select(t, dim, idx(list)):contiguous() end

    -- gather (rows of op(a) by rm, the reduction by rk) + nc_gemm_bf16 + scatter of the rows, on out0
    local function gathered(out0, a, b, ta, tb, ks, div, alpha, beta, rm, rk, zero_rest)
        local a2, b2, ks2 = a, b, ks
        if rm then a2 = sel(a2, ta == 1 and 1 or 0, rm) end
        if rk then
            a2 = sel(a2, ta == 1 and 0 or 1, rk)
            b2 = sel(b2, tb == 1 and 1 or 0, rk)
            if ks and ks:numel() > 1 then ks2 = sel(ks, 0, rk) end
        end
        local out = out0:clone()
        if not rm then
            check(C.nc_gemm_bf16(out._c, a2._c, b2._c, ta, tb, ks2 and ks2._c or nil, div, alpha, beta), 'gemm_bf16')
            return out
        end
        local comp = sel(out0, 0, rm)
        check(C.nc_gemm_bf16(comp._c, a2._c, b2._c, ta, tb, ks2 and ks2._c or nil, div, alpha, beta), 'gemm_bf16')
        if zero_rest then out = nc.zeros(out0:shape()) end
        check(C.nc_rows_scatter(out._c, comp._c, idx(rm)._c, 0), 'rows_scatter')
        return out
    end

    local function indexed(out0, a, b, ta, tb, ks, div, alpha, beta, rm, rk, zero_rest, dtype)
        local out = out0:clone()
        check(C.nc_gemm_bf16_rows(out._c, a._c, b._c, ta, tb, ks and ks._c or nil, div, alpha, beta,
            rm and idx(rm, dtype)._c or nil, rk and idx(rk, dtype)._c or nil, zero_rest and 1 or 0), 'gemm_bf16_rows')
        return out
    end

    local function each_case(fn)
        local g = nc.generator(41)
        -- the last shape keeps >= 2^20 multiply-adds after filtering rows: several threads, each
        -- zeroing the gaps of its own range of the row list
        for si, s in ipairs { { 1, 1, 1 }, { 15, 17, 33 }, { 33, 100, 70 }, { 70, 33, 100 }, { 100, 40, 257 },
                              { 300, 70, 90 } } do
            local M, N, K = s[1], s[2], s[3]
            for ta = 0, 1 do
                for tb = 0, 1 do
                    local a = ta == 1 and nc.randn({ K, M }, { generator = g }) or nc.randn({ M, K }, { generator = g })
                    local b = tb == 1 and nc.randn({ N, K }, { generator = g }) or nc.randn({ K, N }, { generator = g })
                    local variant = (si + ta + tb) % 3
                    local ks, div = nil, 0
                    if variant == 1 then ks = nc.rand({ K }, { generator = g, lo = 0.25, hi = 4 })
                    elseif variant == 2 then ks, div = nc.full({ 1 }, 3), 1 end
                    fn(M, N, K, a, b, ta, tb, ks, div, nc.randn({ M, N }, { generator = g }), si)
                end
            end
        end
    end

    local function bitwise_vs_gathered()
        each_case(function(M, N, K, a, b, ta, tb, ks, div, init, si)
            local rm, rk = subset(M, si), subset(K, si + 1)
            for _, c in ipairs { { rm, nil, false, 0 }, { rm, nil, true, 0 }, { rm, nil, false, 1 }, { nil, rk, false, 1 },
                                 { rm, rk, true, 0 }, { rm, rk, false, 1 } } do
                local got = indexed(init, a, b, ta, tb, ks, div, 1.5, c[4], c[1], c[2], c[3])
                local want = gathered(init, a, b, ta, tb, ks, div, 1.5, c[4], c[1], c[2], c[3])
                local ok, at = same_bits(got, want)
                assert.is_true(ok, string.format('M=%d N=%d K=%d ta=%d tb=%d rows_m %s rows_k %s zero_rest %s beta %d: '
                    .. 'element %s differs', M, N, K, ta, tb, tostring(c[1] ~= nil), tostring(c[2] ~= nil),
                    tostring(c[3]), c[4], tostring(at)))
            end
            -- an i32 list gives the same bits as an i64 one
            assert.is_true(same_bits(indexed(init, a, b, ta, tb, ks, div, 1, 1, rm, rk, true, 'i32'),
                indexed(init, a, b, ta, tb, ks, div, 1, 1, rm, rk, true)))
        end)
    end

    local function threaded(fn)
        return function()
            local prev = nc.get_num_threads()
            nc.set_num_threads(math.max(prev, 2))
            local ok, err = pcall(fn)
            nc.set_num_threads(prev)
            if not ok then error(err, 0) end
        end
    end
    it('reference (AMX off): bitwise gather + gemm + scatter, odd shapes, transposes, kscale, beta, zero_rest',
        threaded(function() without_amx(bitwise_vs_gathered) end))
    amx_it('AMX: bitwise gather + gemm + scatter, odd shapes, transposes, kscale, beta, zero_rest',
        threaded(bitwise_vs_gathered))

    it('against float64: out[rm] = alpha sum_{k in rk} bf16(op(a)[m, k] / ks[k]) bf16(op(b)[k]) + beta out[rm]; '
        .. 'zero_rest zeroes the rest, else untouched', function()
        local g = nc.generator(43)
        local M, N, K = 37, 19, 45
        local a, b = nc.randn({ K, M }, { generator = g }), nc.randn({ K, N }, { generator = g })   -- ta = 1: dW's layout
        local ks = nc.rand({ K }, { generator = g, lo = 0.5, hi = 2 })
        local init = nc.randn({ M, N }, { generator = g })
        local rm, rk = subset(M, 2), subset(K, 4)
        local at, bt, ksl, prev = optab(a, 1), optab(bf16(b), 0), ks:totable(), init:totable()
        local inm = {}
        for _, r in ipairs(rm) do inm[r + 1] = true end
        local function check_against(got, zero_rest, tol_of)
            local gt = got:totable()
            for i = 1, M do
                for j = 1, N do
                    if inm[i] then
                        local acc, mag = 0, 0
                        for _, k0 in ipairs(rk) do
                            local k = k0 + 1
                            local av = bf16(nc.tensor({ f32(at[i][k] / ksl[k]) })):item()
                            acc, mag = acc + av * bt[k][j], mag + math.abs(av * bt[k][j])
                        end
                        local want = 0.5 * acc + prev[i][j]
                        assert.is_true(math.abs(gt[i][j] - want) <= tol_of(mag, want),
                            string.format('(%d, %d): %.9g vs %.9g', i, j, gt[i][j], want))
                    else
                        assert.are.equal(zero_rest and 0 or prev[i][j], gt[i][j])
                    end
                end
            end
        end
        for _, zr in ipairs { false, true } do
            -- the reference sums in double: one f32 rounding of the result (plus beta's term)
            local r = without_amx(function() return indexed(init, a, b, 1, 0, ks, 1, 0.5, 1, rm, rk, zr) end)
            check_against(r, zr, function(_, want) return 2 * U * (math.abs(want) + 1e-30) + 1e-12 end)
            if HAVE then   -- f32 accumulation: within 2 K' 2^-24 sum|a b|
                local x = indexed(init, a, b, 1, 0, ks, 1, 0.5, 1, rm, rk, zr)
                check_against(x, zr, function(mag, want) return 0.5 * mag * 2 * #rk * U + 2 * U * math.abs(want) + 1e-12 end)
            end
        end
    end)

    it('empty row lists: rows_m empty leaves out untouched (zero_rest: all 0); rows_k empty gives beta * out', function()
        for _, amx in ipairs { false, true } do
            local function go()
                local a, b, init = nc.randn { 9, 5 }, nc.randn { 5, 7 }, nc.randn { 9, 7 }
                local e = nc.empty({ 0 }, { dtype = 'i64' })
                local o = init:clone()
                check(C.nc_gemm_bf16_rows(o._c, a._c, b._c, 0, 0, nil, 0, 1, 0, e._c, nil, 0), 'gemm_bf16_rows')
                assert.is_true(same_bits(o, init))
                check(C.nc_gemm_bf16_rows(o._c, a._c, b._c, 0, 0, nil, 0, 1, 0, e._c, nil, 1), 'gemm_bf16_rows')
                assert.are.equal(0, o:abs():max():item())
                o = init:clone()
                check(C.nc_gemm_bf16_rows(o._c, a._c, b._c, 0, 0, nil, 0, 1, 0.5, nil, e._c, 0), 'gemm_bf16_rows')
                assert.is_true(same_bits(o, init * 0.5))
                o = init:clone()
                check(C.nc_gemm_bf16_rows(o._c, a._c, b._c, 0, 0, nil, 0, 1, 0, idx({ 2, 4 })._c, e._c, 1), 'gemm_bf16_rows')
                assert.are.equal(0, o:abs():max():item())
            end
            if amx then if HAVE then go() end else without_amx(go) end
        end
    end)

    it('bad row lists give clear errors naming the list and the value', function()
        local a, b, o = nc.randn { 6, 5 }, nc.randn { 5, 4 }, nc.zeros { 6, 4 }
        local function err(rm, rk, zr)
            local ok, e = pcall(check, C.nc_gemm_bf16_rows(o._c, a._c, b._c, 0, 0, nil, 0, 1, 0, rm and rm._c or nil,
                rk and rk._c or nil, zr or 0), 'gemm_bf16_rows')
            assert.is_false(ok)
            return tostring(e)
        end
        assert.truthy(err(idx { 0, 6 }):find('rows_m%[1%] = 6 is out of range %[0, 6%)'))
        assert.truthy(err(idx { -1 }):find('rows_m%[0%] = %-1'))
        assert.truthy(err(nil, idx { 1, 5 }):find('rows_k%[1%] = 5 is out of range %[0, 5%)'))
        assert.truthy(err(idx { 3, 2 }):find('rows_m must be strictly increasing'))
        assert.truthy(err(nil, idx { 1, 1 }):find('rows_k must be strictly increasing'))
        assert.truthy(err(nc.tensor { 1, 2 }):find('rows_m a 1%-D i64 or i32'))             -- f32
        assert.truthy(err(nc.tensor({ { 1, 2 } }, { dtype = 'i64' })):find('1%-D'))
        assert.truthy(err(nil, nil, 1):find('zero_rest needs rows_m'))
        assert.truthy(err(idx({ 0, 9 }, 'i32')):find('rows_m%[1%] = 9'))
        assert.are.equal(0, o:abs():max():item())   -- nothing written by a failed call
    end)
end)

describe('nc.bitlinear (fused ternary linear, STE)', function()
    -- composite: linear(quant_act(x), quant_weight(w)) in f32
    local function composite(x0, w0, gy, gs)
        return without_amx(function()
            local x, w = x0:clone():requires_grad_(), w0:clone():requires_grad_()
            local y = nc.linear((nc.quant_act(x)), (nc.quant_weight(w, { group_size = gs })))
            y:backward(gy)
            return y, x.grad, w.grad
        end)
    end

    local function fused(x0, w0, gy, gs)
        local x, w = x0:clone():requires_grad_(), w0:clone():requires_grad_()
        local y = nc.bitlinear(nc.bitlinear_act(x), w, { group_size = gs })
        y:backward(gy)
        return y, x.grad, w.grad
    end

    -- gradient bound: only dY is rounded to bf16 (relative 2^-9 per element, after the exact-ish
    -- per-row / per-column scaling), the codes are exact and AMX accumulates in f32, so
    -- |dX - dX_f32| <= 2^-9 (|dY| |Wq|) + f32 accumulation terms; we allow 2^-8 (|dY| |Wq|) elementwise.
    local function grad_bounds(x0, w0, gy, gs)
        return without_amx(function()
            local xq = nc.quant_act(x0)
            local wq = nc.quant_weight(w0, { group_size = gs })
            local ga = gy:abs():reshape { -1, w0:size(0) }
            local bx = ga:matmul(wq:abs())
            local bw = ga:t():matmul(xq:abs():reshape { -1, w0:size(1) })
            return bx, bw
        end)
    end

    local function data(seed, B, T, K, N)
        local g = nc.generator(seed)
        return nc.randn({ B, T, K }, { generator = g }), nc.randn({ N, K }, { generator = g }) * 0.05,
            nc.randn({ B, T, N }, { generator = g })
    end

    amx_it('forward: exact integer math (vs float64) and the composite path within f32 rounding', function()
        for _, s in ipairs { { 1, 1, 1, 1 }, { 2, 15, 33, 17 }, { 1, 100, 257, 40 }, { 3, 17, 64, 96 } } do
            local x0, w0 = data(21, s[1], s[2], s[3], s[4])
            local a = nc.bitlinear_act(x0)
            local y = nc.bitlinear(a, w0)
            local wq, gamma = nc.quant_weight(w0)
            local t = (wq / gamma:item()):totable()
            local q, sc = a.q:totable(), a.s:totable()
            local yl = y:reshape { -1, s[4] }:totable()
            local gm = gamma:item()
            for i = 1, #q do
                for j = 1, s[4] do
                    local acc = 0
                    for k = 1, s[3] do acc = acc + q[i][k] * t[j][k] end
                    local exact = acc * gm / sc[i]
                    assert.is_true(math.abs(yl[i][j] - exact) <= 2 * U * math.abs(exact) + 1e-38,
                        string.format('y[%d][%d] = %.9g, exact %.9g', i, j, yl[i][j], exact))
                end
            end
            local yc = composite(x0, w0, nc.zeros(y:shape()), 0)
            local bound = without_amx(function()
                return nc.quant_act(x0):abs():reshape { -1, s[3] }:matmul(wq:abs():t())
            end)
            local d = (y - yc):abs():reshape { -1, s[4] }
            assert.is_true((d - bound * ((s[3] + 2) * U)):max():item() <= 0)
        end
    end)

    amx_it('backward: dX and dW within the bf16 bound of the composite path (per tensor and per-row groups)', function()
        for _, s in ipairs { { 2, 15, 33, 17, 0 }, { 1, 100, 64, 48, 64 }, { 2, 16, 32, 64, 128 }, { 1, 1, 1, 1, 0 },
                             { 2, 300, 64, 96, 0 } } do
            local x0, w0, gy = data(22, s[1], s[2], s[3], s[4])
            local gs = s[5]
            local _, gx1, gw1 = fused(x0, w0, gy, gs)
            local _, gx2, gw2 = composite(x0, w0, gy, gs)
            local bx, bw = grad_bounds(x0, w0, gy, gs)
            local ex = ((gx1 - gx2):abs():reshape { -1, s[3] } - bx * 2 ^ -8 - 1e-30):max():item()
            local ew = ((gw1 - gw2):abs() - bw * 2 ^ -8 - 1e-30):max():item()
            assert.is_true(ex <= 0, 'dX exceeds the bound by ' .. ex)
            assert.is_true(ew <= 0, 'dW exceeds the bound by ' .. ew)
            -- and the bound is not vacuous: the difference is non-zero, yet well below 1% of the gradients' scale
            if s[3] > 1 then
                assert.is_true((gx1 - gx2):abs():max():item() > 0)
                assert.is_true((gw1 - gw2):abs():max():item() < 0.01 * gw2:abs():max():item())
            end
        end
    end)

    it('falls back to the composite path (bitwise) for other groups and with AMX off', function()
        local x0, w0, gy = data(23, 2, 8, 32, 16)
        for _, case in ipairs { { 16, false }, { 0, true } } do
            local gs, off = case[1], case[2]
            local y1, gx1, gw1
            if off then y1, gx1, gw1 = without_amx(fused, x0, w0, gy, gs)
            else y1, gx1, gw1 = fused(x0, w0, gy, gs) end
            local y2, gx2, gw2 = composite(x0, w0, gy, gs)
            assert.is_true(same_bits(y1, y2))
            assert.is_true(same_bits(gx1, gx2))
            assert.is_true(same_bits(gw1, gw2))
        end
    end)

    amx_it('a shared activation (q/k/v) accumulates the gradients of every use', function()
        local x0, w0, gy = data(24, 2, 8, 32, 16)
        local w1 = w0 * 2 + 0.01
        local x, wa, wb = x0:clone():requires_grad_(), w0:clone():requires_grad_(), w1:clone():requires_grad_()
        local a = nc.bitlinear_act(x)
        local L = (nc.bitlinear(a, wa) * gy):sum() + (nc.bitlinear(a, wb) * gy * 0.5):sum()
        L:backward()
        local _, gxa = fused(x0, w0, gy, 0)
        local _, gxb = fused(x0, w1, gy * 0.5, 0)
        assert.is_true((x.grad - (gxa + gxb)):abs():max():item() <= 1e-6 * (gxa:abs():max():item() + gxb:abs():max():item()))
    end)

    amx_it('Collider keep-all: the gathered backward equals the dense AMX backward bitwise', function()
        local x0, w0, gy = data(25, 2, 16, 32, 24)
        local xd, gxd, gwd = fused(x0, w0, gy, 0)
        local x, w = x0:clone():requires_grad_(), w0:clone():requires_grad_()
        local ctx = nc.collider.new { rho = 0 }:step(32)
        local prev = ag.set_row_filter(ctx)
        local ok, y = pcall(function() return nc.bitlinear(nc.bitlinear_act(x), w) end)
        ag.set_row_filter(prev)
        assert.is_true(ok, tostring(y))
        local all = {}
        for i = 0, 31 do all[#all + 1] = i end
        ctx:set_keep(all)
        y:backward(gy)
        assert.is_true(same_bits(y, xd))
        assert.is_true(same_bits(x.grad, gxd))
        assert.is_true(same_bits(w.grad, gwd))
    end)
end)

describe('nc.linear_bf16 (mixed precision for the fp32 layers)', function()
    amx_it('forward and gradients within the bf16 bound of nc.linear (both operands rounded: 2^-8 sum|a b|, x 2)', function()
        local g = nc.generator(31)
        for _, s in ipairs { { 2, 17, 33, 50 }, { 1, 64, 256, 512 }, { 1, 1, 1, 1 } } do
            local x0 = nc.randn({ s[1], s[2], s[3] }, { generator = g })
            local w0 = nc.randn({ s[4], s[3] }, { generator = g }) * 0.1
            local gy = nc.randn({ s[1], s[2], s[4] }, { generator = g })
            local x1, w1 = x0:clone():requires_grad_(), w0:clone():requires_grad_()
            local y1 = nc.linear_bf16(x1, w1)
            y1:backward(gy)
            local x2, w2 = x0:clone():requires_grad_(), w0:clone():requires_grad_()
            local y2 = nc.linear(x2, w2)
            y2:backward(gy)
            local x2d, g2d = x0:reshape { -1, s[3] }, gy:reshape { -1, s[4] }
            local by = x2d:abs():matmul(w0:abs():t())
            local bx = g2d:abs():matmul(w0:abs())
            local bw = g2d:abs():t():matmul(x2d:abs())
            local function within(d, b) return (d:abs() - b * 2 ^ -7 - 1e-30):max():item() <= 0 end
            assert.is_true(within((y1 - y2):reshape { -1, s[4] }, by), 'y')
            assert.is_true(within((x1.grad - x2.grad):reshape { -1, s[3] }, bx), 'dX')
            assert.is_true(within(w1.grad - w2.grad, bw), 'dW')
            if s[3] > 1 then assert.is_true((y1 - y2):abs():max():item() > 0) end   -- it did round
        end
    end)

    it('is nc.linear without AMX', function()
        local g = nc.generator(32)
        local x, w = nc.randn({ 5, 7 }, { generator = g }), nc.randn({ 3, 7 }, { generator = g })
        local y = without_amx(nc.linear_bf16, x, w)
        assert.is_true(same_bits(y, nc.linear(x, w)))
        assert.has_error(function() nc.linear_bf16(x, nc.randn { 3, 6 }) end)
    end)
end)

describe('GPT with cfg.matmul', function()
    local function micro(over)
        local cfg = nc.models.config('micro')
        for k, v in pairs(over or {}) do cfg[k] = v end
        return cfg
    end

    it('validates cfg.matmul and defaults to auto', function()
        assert.are.equal('auto', nc.models.gpt.config(micro()).matmul)
        assert.has_error(function() nc.models.gpt.config(micro { matmul = 'bf16x' }) end)
        assert.has_error(function() nc.models.gpt.config(micro { matmul = 3 }) end)
        assert.has_error(function() require('nanochat.layers.bitlinear')(4, 4, { matmul = 'int4' }) end)
        assert.are.equal('auto', nc.models.gpt.config(micro()).head_matmul)
        assert.has_error(function() nc.models.gpt.config(micro { head_matmul = 'int8' }) end)
    end)

    amx_it('micro model on AMX (+ bf16 head): Collider keep-all backward equals the dense backward bitwise', function()
        local g = nc.generator(8)
        local x = nc.rand({ 2, 16 }, { lo = 0, hi = 256, generator = g }):to('i64')
        local y = nc.rand({ 2, 16 }, { lo = 0, hi = 256, generator = g }):to('i64')
        local m = nc.models.gpt.new(micro { matmul = 'auto', head_matmul = 'bf16' })
        local ld = m:forward(x, y)
        ld:backward()
        local gd = {}
        for _, nv in ipairs(m:named_parameters()) do gd[nv[1]] = nv[2].grad:clone() end
        m:zero_grad()
        local F = nc.collider.new { rho = 0 }
        local lf = F:forward(m, x, y)
        assert.are.equal(32, F.last.keep:numel())   -- the gathered path ran
        lf:backward()
        assert.is_true(same_bits(ld, lf))
        for _, nv in ipairs(m:named_parameters()) do
            local ok, at = same_bits(gd[nv[1]], nv[2].grad)
            assert.is_true(ok, nv[1] .. ' differs at ' .. tostring(at))
        end
    end)

    amx_it('micro model: AMX matches fp32 at init and a few AdamW steps lower the loss, staying close', function()
        local g = nc.generator(7)
        local x = nc.rand({ 4, 32 }, { lo = 0, hi = 256, generator = g }):to('i64')
        local y = nc.rand({ 4, 32 }, { lo = 0, hi = 256, generator = g }):to('i64')
        local losses = {}
        for _, mm in ipairs { 'fp32', 'auto', 'head' } do
            local m = nc.models.gpt.new(micro { matmul = mm == 'fp32' and 'fp32' or 'auto',
                                               head_matmul = mm == 'head' and 'bf16' or 'fp32' })
            local opt = nc.optim.adamw(m:parameters(), { lr = 3e-3 })
            local ls = {}
            for i = 1, 6 do
                local loss = m:forward(x, y)
                ls[i] = loss:item()
                loss:backward()
                opt:step()
                opt:zero_grad()
            end
            losses[mm] = ls
        end
        local f = losses.fp32
        for _, name in ipairs { 'auto', 'head' } do
            local a = losses[name]
            -- at init: the int8 forward equals the f32 one up to rounding (bf16 head: 2^-8 relative)
            local tol0 = name == 'auto' and 1e-5 or 1e-3
            assert.is_true(math.abs(a[1] - f[1]) <= tol0 * f[1], string.format('%s init loss %g vs %g', name, a[1], f[1]))
            assert.is_true(a[6] < a[1] - 0.05, string.format('%s loss %g -> %g', name, a[1], a[6]))
            for i = 1, 6 do
                assert.is_true(math.abs(a[i] - f[i]) <= 0.02 * f[i], string.format('%s step %d: %g vs %g', name, i, a[i], f[i]))
            end
        end
    end)
end)
