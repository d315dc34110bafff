-- spec/infer/engine_attn_spec.lua — the decode engine's attention of the query heads of one KV head
-- (kernels/cpu/engine_attn.h, nc_engine_attn_head): the scalar reference and the AVX2 kernel give the
-- same bits for head sizes with and without a partial 8-lane group, any number of positions (full
-- groups of 8 and a tail), strided cache rows (all heads of a position side by side, as in the KV
-- cache) and scores far apart (the exp's clamp); and both agree with a float64 softmax-attention.
-- G query heads at once (GQA: the AVX2 kernel takes them in pairs, each K / V row read once for
-- both) give every head the bits it gets alone.
package.path = 'lua/?.lua;lua/?/init.lua;spec/helpers/?.lua;' .. package.path
local nc = require 'nanochat'
local on_kernel = require('settings').with_kernel
local core = require 'nanochat.core'
local C, check = core.C, core.check

local function attn(q, k, v, scale)
    local o = nc.empty { q:numel() }
    check(C.nc_engine_attn_head(o._c, q._c, k._c, v._c, scale), 'engine_attn_head')
    return o
end

local function bits_equal(a, b)
    local x, y = a:tolist(), b:tolist()
    for i = 1, #x do
        if x[i] ~= y[i] and not (x[i] ~= x[i] and y[i] ~= y[i]) then return false, i, x[i], y[i] end
    end
    return true
end

-- float64 reference
local function ref(q, k, v, scale)
    local qt, kt, vt = q:tolist(), k:totable(), v:totable()
    local S, hd = #kt, #qt
    local s, m = {}, -math.huge
    for j = 1, S do
        local d = 0
        for e = 1, hd do d = d + qt[e] * kt[j][e] end
        s[j] = d * scale
        m = math.max(m, s[j])
    end
    local l = 0
    for j = 1, S do s[j] = math.exp(s[j] - m); l = l + s[j] end
    local o = {}
    for e = 1, hd do
        local a = 0
        for j = 1, S do a = a + s[j] / l * vt[j][e] end
        o[e] = a
    end
    return o
end

local HAVE_AVX2 = pcall(nc.set_cpu_kernel, 'avx2')
nc.set_cpu_kernel(os.getenv('NC_KERNEL') or 'auto')

describe('engine attention head', function()
    it('scalar and AVX2 give the same bits; both match float64 (head sizes 3..64, 1..100 positions, strided rows)', function()
        local seed = 0
        for _, hd in ipairs { 8, 10, 64, 3, 17 } do
            for _, S in ipairs { 1, 5, 8, 13, 64, 100 } do
                seed = seed + 1
                local g = function(i) return { generator = nc.generator(seed * 10 + i) } end
                local q = nc.randn({ hd }, g(1))
                local wide_k, wide_v = nc.randn({ S, 3 * hd }, g(2)), nc.randn({ S, 3 * hd }, g(3))
                local k, v = wide_k:narrow(1, hd, hd), wide_v:narrow(1, hd, hd)   -- row stride 3 hd
                local scale = 1 / math.sqrt(hd)
                local o_ref = on_kernel('scalar', function() return attn(q, k, v, scale) end)
                if HAVE_AVX2 then
                    for _, kname in ipairs { 'avx2', 'auto' } do
                        local o = on_kernel(kname, function() return attn(q, k, v, scale) end)
                        local same, i, a, b = bits_equal(o_ref, o)
                        assert.is_true(same, string.format('%s hd %d S %d: element %s: %s vs %s', kname, hd, S,
                            tostring(i), tostring(a), tostring(b)))
                    end
                end
                local want, got = ref(q, k, v, scale), o_ref:tolist()
                for e = 1, hd do
                    assert.is_true(math.abs(got[e] - want[e]) <= 2e-6 * (1 + math.abs(want[e])),
                        string.format('hd %d S %d e %d: %.9g vs %.9g', hd, S, e, got[e], want[e]))
                end
            end
        end
    end)

    it('scores far apart: positions beyond exp\'s range get (almost) no weight, no NaN', function()
        local hd, S = 16, 40
        local q = nc.randn({ hd }, { generator = nc.generator(5) }) * 60
        local k, v = nc.randn({ S, hd }, { generator = nc.generator(6) }), nc.randn({ S, hd }, { generator = nc.generator(7) })
        local o = attn(q, k, v, 1)
        local want, got = ref(q, k, v, 1), o:tolist()
        for e = 1, hd do
            assert.is_true(got[e] == got[e])
            assert.is_true(math.abs(got[e] - want[e]) <= 1e-5 * (1 + math.abs(want[e])))
        end
        if HAVE_AVX2 then
            assert.is_true(bits_equal(o, on_kernel('scalar', function() return attn(q, k, v, 1) end)))
        end
    end)

    it('G query heads of one KV head (pairs on AVX2): each head has its alone bits, on every kernel', function()
        local seed = 500
        for _, G in ipairs { 2, 3, 4 } do
            for _, hd in ipairs { 64, 40, 10, 3 } do
                for _, S in ipairs { 1, 7, 33 } do
                    seed = seed + 1
                    local g = function(i) return { generator = nc.generator(seed * 10 + i) } end
                    local q = nc.randn({ G, hd }, g(1))
                    local wide_k, wide_v = nc.randn({ S, 2 * hd }, g(2)), nc.randn({ S, 2 * hd }, g(3))
                    local k, v = wide_k:narrow(1, 0, hd), wide_v:narrow(1, 0, hd)   -- row stride 2 hd
                    local scale = 1 / math.sqrt(hd)
                    for _, kname in ipairs(HAVE_AVX2 and { 'scalar', 'avx2' } or { 'scalar' }) do
                        local og = on_kernel(kname, function() return attn(q, k, v, scale) end):tolist()
                        for h = 1, G do
                            local alone = on_kernel('scalar', function()
                                return attn(q:narrow(0, h - 1, 1):contiguous(), k, v, scale)
                            end):tolist()
                            for e = 1, hd do
                                local a, b = og[(h - 1) * hd + e], alone[e]
                                assert.is_true(a == b, string.format('%s G %d hd %d S %d head %d e %d: %.9g vs alone %.9g',
                                    kname, G, hd, S, h, e, a, b))
                            end
                        end
                    end
                end
            end
        end
    end)

    it('bad shapes are clear errors', function()
        local q, k, v = nc.randn { 8 }, nc.randn { 4, 8 }, nc.randn { 5, 8 }
        local o = nc.empty { 8 }
        local ok, err = pcall(function() check(C.nc_engine_attn_head(o._c, q._c, k._c, v._c, 1), 'attn') end)
        assert.is_false(ok)
        assert.truthy(tostring(err):find('engine_attn_head: expected q, o (G x hd), k, v (S >= 1, hd)', 1, true), err)
        ok = pcall(function() check(C.nc_engine_attn_head(nc.empty { 16 }._c, nc.randn { 12 }._c, k._c, k._c, 1), 'attn') end)
        assert.is_false(ok)   -- q of 12 = not a whole number of heads of 8
        ok = pcall(function() check(C.nc_engine_attn_head(o._c, q._c, k._c, nc.randn { 4, 7 }._c, 1), 'attn') end)
        assert.is_false(ok)
    end)
end)
