-- spec/infer_spec.lua — packed ternary linear layers (nc.infer, kernels/cpu/ternary*.c): the
-- training scale is carried exactly, int8 activations equal nc.quant_act's, the AVX2 and AVX-512
-- VNNI kernels are bit-identical to the scalar reference over many shapes (odd K, N, M = 1..10, K
-- not a multiple of the block, int16 widening, the VNNI 4 x 2 and 1 x 4 tiles and their tails), the
-- kernel selection reports what runs, the integer path equals float64 math and the training path's
-- fake-quantized linear within named tolerances, and bad input gives clear errors.
package.path = 'lua/?.lua;lua/?/init.lua;spec/helpers/?.lua;' .. package.path
local nc = require 'nanochat'
local ffi = require 'ffi'
local infer = nc.infer

-- y vs float64 sum(t q) * gamma / s: the int32 sum is exact; (float)isum, 1/s and two products
-- are each rounded once, so |err| <= ~4 ulp.
local EXACT_RTOL = 5e-7
-- y vs nc.linear(nc.quant_act(x), nc.quant_weight(w)) (sgemm over the fake-quantized floats):
-- float rounding only, bounded relative to sum_k |xq_k wq_k| (sgemm accumulates K products).
local TRAIN_TOL = 1e-5

local seed = 700
local function randn(shape, std)
    seed = seed + 1
    return nc.randn(shape, { generator = nc.generator(seed), std = std or 1 })
end

local with_kernel = require('settings').with_kernel

local initial_kernel = nc.cpu_kernel()   -- NC_KERNEL=scalar stays in force for later specs
local has_avx2 = pcall(nc.set_cpu_kernel, 'avx2')
local has_avx512 = pcall(nc.set_cpu_kernel, 'avx512')
nc.set_cpu_kernel(initial_kernel)
-- every fast selection this CPU has, each checked against the scalar reference
local FAST = {}
if has_avx2 then FAST[#FAST + 1] = 'avx2' end
if has_avx512 then FAST[#FAST + 1] = 'avx512' end

local function bytes_equal(a, b)
    local n = a:numel() * ffi.sizeof('float')
    return ffi.C.memcmp ~= nil and ffi.string(nc.C.nc_tensor_data(a._c), n) == ffi.string(nc.C.nc_tensor_data(b._c), n)
end
pcall(ffi.cdef, 'int memcmp(const void *a, const void *b, size_t n);')

describe('infer.pack', function()
    it('carries the training quantizer scale exactly (per tensor and per whole-row group)', function()
        local w = randn { 24, 200 }
        local P = infer.pack(w)
        local wq, gamma = nc.quant_weight(w)
        assert.are.equal(24, P.scale:numel())
        for _, s in ipairs(P.scale:tolist()) do assert.are.equal(gamma:item(), s) end
        assert.are.equal(0, (P:dequantize() - wq):abs():max():item())
        -- groups of 3 rows
        local Pg = infer.pack(w, { group_size = 600 })
        local wqg, gg = nc.quant_weight(w, { group_size = 600 })
        local gl, sl = gg:tolist(), Pg.scale:tolist()
        for r = 1, 24 do assert.are.equal(gl[math.floor((r - 1) / 3) + 1], sl[r]) end
        assert.are.equal(0, (Pg:dequantize() - wqg):abs():max():item())
        -- ternary values only, 2 bits per weight, rows padded to 128
        for _, v in ipairs(P:ternary():totable()[1]) do assert.is_true(v == -1 or v == 0 or v == 1) end
        assert.are.same({ 24, 64 }, P.codes:shape())
    end)

    it('rejects groups that split rows, non-2-D weights, and non-ternary values', function()
        local ok, err = pcall(infer.pack, randn { 4, 256 }, { group_size = 128 })
        assert.is_false(ok)
        assert.truthy(tostring(err):find('group_size 128 splits rows', 1, true), err)
        ok, err = pcall(infer.pack, randn { 4 })
        assert.is_false(ok)
        assert.truthy(tostring(err):find('2-D weight', 1, true), err)
        ok, err = pcall(infer.from_ternary, nc.Tensor.from_table({ { 0, 1, 0.5 } }), 1)
        assert.is_false(ok)
        assert.truthy(tostring(err):find('not in {-1, 0, 1}', 1, true), err)
    end)

    it('from_ternary round-trips the codes', function()
        local P = infer.pack(randn { 9, 300 })
        local Q = infer.from_ternary(P:ternary(), P.scale)
        assert.are.equal(0, (Q:dequantize() - P:dequantize()):abs():max():item())
        assert.is_true(ffi.string(nc.C.nc_tensor_data(P.codes._c), P.codes:numel()) ==
            ffi.string(nc.C.nc_tensor_data(Q.codes._c), Q.codes:numel()))
    end)
end)

describe('infer.quant_act', function()
    it('gives exactly nc.quant_act (q / s), its scale, the row sums and zero padding', function()
        local x = randn({ 5, 200 }, 3)
        local a = infer.quant_act(x)
        local xq, s = nc.quant_act(x)
        assert.are.same(s:tolist(), a.scale:tolist())
        local q, sl, sums = a.q:totable(), a.scale:tolist(), a.sum:tolist()
        local xl = xq:totable()
        assert.are.equal(256, #q[1])
        for r = 1, 5 do
            local tot = 0
            for k = 1, 256 do
                if k <= 200 then
                    local f = ffi.new('float[3]', q[r][k], sl[r])
                    f[2] = f[0] / f[1]
                    assert.are.equal(xl[r][k], f[2])
                    assert.is_true(q[r][k] >= -127 and q[r][k] <= 127)
                else
                    assert.are.equal(0, q[r][k])
                end
                tot = tot + q[r][k]
            end
            assert.are.equal(tot, sums[r])
        end
    end)
end)

-- float64 reference: y[m][n] = sum_k t[n][k] q[m][k] * gamma[n] / s[m]
local function ref_exact(a, P)
    local q, s, t, g = a.q:totable(), a.scale:tolist(), P:ternary():totable(), P.scale:tolist()
    local out = {}
    for m = 1, #q do
        out[m] = {}
        for n = 1, #t do
            local acc = 0
            for k = 1, #t[n] do acc = acc + t[n][k] * q[m][k] end
            out[m][n] = acc * g[n] / s[m]
        end
    end
    return out
end

describe('infer.quant_act kernels', function()
    it('AVX2 and scalar give identical codes, scales and sums (tails, strided rows)', function()
        if not has_avx2 then pending('this CPU has no AVX2') return end
        for _, K in ipairs { 1, 7, 31, 32, 33, 200, 1000 } do
            local x = randn({ 3, K }, 2)
            local as = with_kernel('scalar', function() return infer.quant_act(x) end)
            local av = with_kernel('avx2', function() return infer.quant_act(x) end)
            assert.are.same(as.q:tolist(), av.q:tolist(), 'q K=' .. K)
            assert.are.same(as.scale:tolist(), av.scale:tolist(), 's K=' .. K)
            assert.are.same(as.sum:tolist(), av.sum:tolist(), 'sum K=' .. K)
            local _, s = nc.quant_act(x)
            assert.are.same(s:tolist(), av.scale:tolist())
        end
        -- a strided (transposed) input takes the generic path and agrees
        local x = randn { 40, 3 }
        local a = infer.quant_act(x:t())
        local b = infer.quant_act(x:t():contiguous())
        assert.are.same(a.q:tolist(), b.q:tolist())
    end)
end)

describe('infer.matmul', function()
    local Ms = { 1, 2, 3, 4, 5, 7, 9 }
    local Ns = { 1, 3, 4, 5, 16, 17, 33 }
    local Ks = { 1, 5, 127, 128, 129, 200, 256, 1000, 1100, 2100 }

    it('the selection names the row kernel it runs (nc.set_cpu_kernel, infer.kernel)', function()
        assert.are.equal('scalar', with_kernel('scalar', infer.kernel))
        if has_avx2 then assert.are.equal('avx2', with_kernel('avx2', infer.kernel)) end
        if not has_avx512 then pending('this CPU has no AVX-512') return end
        local k = with_kernel('avx512', infer.kernel)
        assert.is_true(k == 'avx512vnni' or k == 'avx2', k)
        -- 'avx512vnni' exactly when the CPU has AVX-512 BW/VL/VNNI and GFNI (Linux names them so)
        local f = io.open('/proc/cpuinfo')
        local flags = f and f:read('*a') or ''
        if f then f:close() end
        local vnni = flags:find(' avx512_vnni') and flags:find(' avx512bw') and flags:find(' avx512vl') and flags:find(' gfni')
        if flags:find(' avx512f') then assert.are.equal(vnni and 'avx512vnni' or 'avx2', k) end
    end)

    it('AVX2 and AVX-512 VNNI kernels are bit-identical to the scalar reference over many shapes', function()
        if #FAST == 0 then pending('this CPU has no AVX2') return end
        local cases = 0
        for ki, K in ipairs(Ks) do
            for ni, N in ipairs(Ns) do
                local M = Ms[(ki + ni) % #Ms + 1]
                local P = infer.pack(randn { N, K })
                local a = infer.quant_act(randn { M, K })
                local ys = with_kernel('scalar', function() return infer.matmul(a, P) end)
                for _, kern in ipairs(FAST) do
                    local yv = with_kernel(kern, function() return infer.matmul(a, P) end)
                    assert.is_true(bytes_equal(ys, yv), string.format('%s: M=%d N=%d K=%d differ', kern, M, N, K))
                    cases = cases + 1
                end
            end
        end
        -- every M for a few N, K (4-row activation tiles with 2- and 1-row weight tails, 1-row
        -- activation tails with 4- and 1-row weight tails)
        for _, NK in ipairs { { 37, 520 }, { 4, 128 }, { 6, 300 } } do
            local P = infer.pack(randn(NK))
            for M = 1, 10 do
                local a = infer.quant_act(randn { M, NK[2] })
                local ys = with_kernel('scalar', function() return infer.matmul(a, P) end)
                for _, kern in ipairs(FAST) do
                    local yv = with_kernel(kern, function() return infer.matmul(a, P) end)
                    assert.is_true(bytes_equal(ys, yv), string.format('%s: M=%d N=%d K=%d', kern, M, NK[1], NK[2]))
                    cases = cases + 1
                end
            end
        end
        assert.is_true(cases >= 100 * #FAST)
    end)

    it('equals float64 integer math within EXACT_RTOL, on every kernel', function()
        for _, kern in ipairs { 'scalar', unpack(FAST) } do
            for _, sh in ipairs { { 3, 17, 130 }, { 1, 40, 1100 }, { 6, 9, 256 } } do
                local M, N, K = sh[1], sh[2], sh[3]
                local P = infer.pack(randn { N, K })
                local a = infer.quant_act(randn { M, K })
                local y = with_kernel(kern, function() return infer.matmul(a, P) end):totable()
                local want = ref_exact(a, P)
                for m = 1, M do
                    for n = 1, N do
                        local e = math.abs(y[m][n] - want[m][n])
                        assert.is_true(e <= EXACT_RTOL * math.abs(want[m][n]) + 1e-30,
                            string.format('%s M=%d N=%d K=%d [%d,%d]: %g vs %g', kern, M, N, K, m, n, y[m][n], want[m][n]))
                    end
                end
            end
        end
    end)

    it('matches the training path nc.linear(quant_act(x), quant_weight(w)) within TRAIN_TOL', function()
        for _, sh in ipairs { { 4, 48, 256 }, { 1, 64, 768 }, { 7, 33, 300 } } do
            local M, N, K = sh[1], sh[2], sh[3]
            local w, x = randn({ N, K }, 0.02), randn { M, K }
            local P = infer.pack(w)
            local y = P:forward(x):totable()
            local xq, wq = nc.quant_act(x), nc.quant_weight(w)
            local yr = nc.linear(xq, wq):totable()
            local bound = nc.linear(xq:abs(), wq:abs()):totable()
            local worst = 0
            for m = 1, M do
                for n = 1, N do
                    local r = math.abs(y[m][n] - yr[m][n]) / bound[m][n]
                    if r > worst then worst = r end
                end
            end
            assert.is_true(worst <= TRAIN_TOL, string.format('M=%d N=%d K=%d: relative error %g', M, N, K, worst))
        end
    end)

    it('never overflows: extreme codes and activations over many blocks (int16 widening)', function()
        local K, N = 4096, 8
        local ones = nc.ones { N, K }
        local P = infer.from_ternary(ones, 1)
        local q = nc.Tensor.empty({ 2, K }, 'i8')
        local a = { q = q, scale = nc.ones { 2 }, sum = nc.Tensor.empty({ 2 }, 'i32'), rows = 2, in_features = K }
        q:select(0, 0):fill_(-128)
        q:select(0, 1):fill_(127)
        a.sum:set(0, -128 * K)
        a.sum:set(1, 127 * K)
        -- and t = -1 everywhere (code 0: the sum is all zero point)
        local Pm = infer.from_ternary(nc.ones({ N, K }):mul(-1), 2)
        for _, kern in ipairs { 'scalar', unpack(FAST) } do
            local y = with_kernel(kern, function() return infer.matmul(a, P) end):totable()
            for n = 1, N do
                assert.are.equal(-128 * K, y[1][n], kern)
                assert.are.equal(127 * K, y[2][n], kern)
            end
            y = with_kernel(kern, function() return infer.matmul(a, Pm) end):totable()
            assert.are.equal(2 * 128 * K, y[1][1], kern)
            assert.are.equal(-2 * 127 * K, y[2][N], kern)
        end
    end)

    it('gives the same bits on 1 and 2 threads', function()
        local P = infer.pack(randn { 512, 256 })
        local a1 = infer.quant_act(randn { 1, 256 })
        local a8 = infer.quant_act(randn { 8, 256 })
        local n0 = nc.get_num_threads()
        nc.set_num_threads(1)
        local y1, z1 = infer.matmul(a1, P), infer.matmul(a8, P)
        nc.set_num_threads(2)
        local y2, z2 = infer.matmul(a1, P), infer.matmul(a8, P)
        nc.set_num_threads(n0)
        assert.is_true(bytes_equal(y1, y2))
        assert.is_true(bytes_equal(z1, z2))
    end)

    it('matmul_rows computes any row range on the calling thread, bit-identical to matmul', function()
        local P = infer.pack(randn { 50, 300 })
        for _, M in ipairs { 1, 6 } do
            local a = infer.quant_act(randn { M, 300 })
            local full = infer.matmul(a, P)
            local y = nc.zeros { M, 50 }
            for _, r in ipairs { { 0, 7 }, { 7, 7 }, { 7, 33 }, { 33, 50 } } do
                nc.core.check(nc.C.nc_ternary_matmul_rows(y._c, a.q._c, a.scale._c, a.sum._c, P.codes._c, P.scale._c,
                    r[1], r[2]))
            end
            assert.is_true(bytes_equal(full, y), 'M=' .. M)
        end
        local a = infer.quant_act(randn { 1, 300 })
        local ok, err = pcall(function()
            nc.core.check(nc.C.nc_ternary_matmul_rows(nc.zeros { 1, 50 }._c, a.q._c, a.scale._c, a.sum._c, P.codes._c,
                P.scale._c, 10, 51))
        end)
        assert.is_false(ok)
        assert.truthy(tostring(err):find('row range [10, 51) is not inside [0, 50)', 1, true), err)
    end)

    it('forward handles (K), (M, K) and (B, T, K) inputs', function()
        local P = infer.pack(randn { 6, 130 })
        local x = randn { 2, 3, 130 }
        local y3 = P:forward(x)
        assert.are.same({ 2, 3, 6 }, y3:shape())
        local y2 = P:forward(x:reshape { 6, 130 })
        assert.are.equal(0, (y3:reshape { 6, 6 } - y2):abs():max():item())
        local y1 = P(x:reshape { 6, 130 }:select(0, 4):contiguous())
        assert.are.same({ 6 }, y1:shape())
        assert.are.equal(0, (y1 - y2:select(0, 4)):abs():max():item())
    end)

    it('names the problem on bad input', function()
        local P = infer.pack(randn { 6, 130 })
        local ok, err = pcall(function() return P:forward(randn { 2, 129 }) end)
        assert.is_false(ok)
        assert.truthy(tostring(err):find('expected x (..., 130)', 1, true), err)
        local a = infer.quant_act(randn { 2, 130 })
        local y = nc.Tensor.empty({ 3, 6 }, 'f32')
        ok, err = pcall(infer.matmul, a, P, y)
        assert.is_false(ok)
        assert.truthy(tostring(err):find('ternary_matmul: expected y of shape (2, 6)', 1, true), err)
        local bad = nc.Tensor.empty({ 2, 100 }, 'i8')
        ok, err = pcall(function()
            nc.core.check(nc.C.nc_ternary_matmul(y._c, bad._c, a.scale._c, a.sum._c, P.codes._c, P.scale._c))
        end)
        assert.is_false(ok)
        assert.truthy(tostring(err):find('not a multiple of 128', 1, true), err)
    end)
end)

describe('infer.int8 (the int8 head option)', function()
    it('quantizes rows by absmax: codes in [-127, 127], |w - codes * scale| <= scale / 2, zero padding', function()
        local w = randn({ 9, 150 }, 0.3)
        local W8 = infer.int8(w)
        assert.same({ 9, 256 }, W8.codes:shape())
        local wt, ct, st = w:totable(), W8.codes:totable(), W8.scale:totable()
        for n = 1, 9 do
            local mx = 0
            for k = 1, 150 do mx = math.max(mx, math.abs(wt[n][k])) end
            assert.is_true(math.abs(st[n] - mx / 127) <= 1e-6 * mx)
            local hit = false
            for k = 1, 256 do
                local c = ct[n][k]
                assert.is_true(c >= -127 and c <= 127)
                if k > 150 then assert.equal(0, c)
                else
                    assert.is_true(math.abs(wt[n][k] - c * st[n]) <= st[n] * 0.5 * (1 + 1e-5))
                    if math.abs(c) == 127 then hit = true end
                end
            end
            assert.is_true(hit, 'the absmax element maps to +-127')
        end
    end)

    it('AVX2 and AVX-512 VNNI equal the scalar reference bitwise, and all equal float64 integer math', function()
        for _, sh in ipairs { { 1, 37, 768 }, { 3, 5, 33 }, { 5, 64, 1000 }, { 1, 4, 1 }, { 2, 130, 300 }, { 18, 9, 200 } } do
            local M, N, K = sh[1], sh[2], sh[3]
            local W8 = infer.int8(randn({ N, K }, 0.05))
            local a = infer.quant_act(randn { M, K })
            local ys = with_kernel('scalar', function() return infer.matmul(a, W8) end)
            for _, kname in ipairs(FAST) do   -- avx512 runs the VNNI kernel where the CPU has it
                local yv = with_kernel(kname, function() return infer.matmul(a, W8) end)
                assert.is_true(bytes_equal(ys, yv), string.format('%s: M=%d N=%d K=%d differ', kname, M, N, K))
            end
            local q, c, s, sc = a.q:totable(), W8.codes:totable(), a.scale:totable(), W8.scale:totable()
            local y = ys:totable()
            for m = 1, M do
                for n = 1, N do
                    local acc = 0
                    for k = 1, #q[m] do acc = acc + q[m][k] * c[n][k] end
                    local want = acc / s[m] * sc[n]
                    assert.is_true(math.abs(y[m][n] - want) <= 5e-7 * math.abs(want) + 1e-30)
                end
            end
        end
    end)

    it('nc_int8_matmul with a padded K that is not a multiple of 64 (the kernels\' half-block tail): all kernels equal', function()
        for _, sh in ipairs { { 1, 7, 96 }, { 3, 9, 32 }, { 20, 5, 160 } } do   -- M = 20: more rows than the bias stack
            local M, N, kp = sh[1], sh[2], sh[3]
            local st = M * 7 + kp
            local function ints(R, Cn)   -- a seeded LCG: integers in [-127, 127]
                local rows = {}
                for i = 1, R do
                    rows[i] = {}
                    for j = 1, Cn do
                        st = (st * 1103515245 + 12345) % 2147483648
                        rows[i][j] = math.floor(st / 2147483648 * 255) - 127
                    end
                end
                return nc.tensor(rows, { dtype = 'i8' })
            end
            local q, w = ints(M, kp), ints(N, kp)
            local s, ws = nc.rand({ M }, { lo = 0.5, hi = 2 }), nc.rand({ N }, { lo = 0.5, hi = 2 })
            local function run()
                local y = nc.empty { M, N }
                assert(nc.C.nc_int8_matmul(y._c, q._c, s._c, w._c, ws._c) == 0, 'int8_matmul failed')
                return y
            end
            local ys = with_kernel('scalar', run)
            for _, kname in ipairs(FAST) do
                assert.is_true(bytes_equal(ys, with_kernel(kname, run)), string.format('%s: M=%d N=%d kp=%d', kname, M, N, kp))
            end
            local qt, wt, yt, st, wst = q:to('f32'):totable(), w:to('f32'):totable(), ys:totable(), s:totable(), ws:totable()
            for m = 1, M do
                for n = 1, N do
                    local acc = 0
                    for k = 1, kp do acc = acc + qt[m][k] * wt[n][k] end
                    local want = acc / st[m] * wst[n]
                    assert.is_true(math.abs(yt[m][n] - want) <= 5e-7 * math.abs(want) + 1e-30)
                end
            end
        end
    end)

    it('rejects -128 activation codes and mismatched shapes with clear errors', function()
        local W8 = infer.int8(randn { 4, 64 })
        local a = infer.quant_act(randn { 1, 64 })
        a.q:fill_(-128)
        local ok, err = pcall(infer.matmul, a, W8)
        assert.is_false(ok)
        assert.truthy(tostring(err):find('activation code -128', 1, true), err)
        ok, err = pcall(infer.matmul, infer.quant_act(randn { 1, 65 }), W8)
        assert.is_false(ok)
        assert.truthy(tostring(err):find('the int8 weight expects 64', 1, true), err)
    end)
end)
