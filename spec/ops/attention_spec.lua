-- spec/ops/attention_spec.lua — flash-style GQA attention against a float64 reference, finite
-- differences, GQA/MHA identities (algorithms.md §14.8) and its O(T) memory promise.
package.path = 'lua/?.lua;lua/?/init.lua;spec/ops/?.lua;' .. package.path
local nc = require 'nanochat'
local H = require 'nn_helpers'
local C = nc.C

local ATT_ATOL = 2e-5      -- f32 online softmax vs float64, values of order 1
local ATT_RTOL = 1e-4

-- float64 reference: returns out (B, T, Hq, D) and lse (B, Hq, T) flat lists
local function ref_attention(q, k, v, B, T, S, Hq, Hkv, D, causal, scale)
    local out, lse = {}, {}
    local G = Hq / Hkv
    for b = 0, B - 1 do for h = 0, Hq - 1 do
        local hk = math.floor(h / G)
        for t = 0, T - 1 do
            local lim = causal and (S - T + t) or (S - 1)
            local sc, m = {}, -math.huge
            for s = 0, math.min(lim, S - 1) do
                local dot = 0
                for d = 0, D - 1 do
                    dot = dot + q[((b * T + t) * Hq + h) * D + d + 1] * k[((b * S + s) * Hkv + hk) * D + d + 1]
                end
                sc[s] = dot * scale
                m = math.max(m, sc[s])
            end
            local l = 0
            for s = 0, math.min(lim, S - 1) do sc[s] = math.exp(sc[s] - m); l = l + sc[s] end
            local o = ((b * T + t) * Hq + h) * D
            for d = 0, D - 1 do
                local acc = 0
                for s = 0, math.min(lim, S - 1) do acc = acc + sc[s] * v[((b * S + s) * Hkv + hk) * D + d + 1] end
                out[o + d + 1] = l > 0 and acc / l or 0
            end
            lse[(b * Hq + h) * T + t + 1] = l > 0 and m + math.log(l) or -math.huge
        end
    end end
    return out, lse
end

local function check_case(B, T, S, Hq, Hkv, D, causal)
    local q, k, v = H.randn { B, T, Hq, D }, H.randn { B, S, Hkv, D }, H.randn { B, S, Hkv, D }
    local scale = 1 / math.sqrt(D)
    local out, lse = nc.attention(q, k, v, { causal = causal })
    assert.same({ B, T, Hq, D }, out:shape())
    assert.same({ B, Hq, T }, lse:shape())
    local wo, wl = ref_attention(q:tolist(), k:tolist(), v:tolist(), B, T, S, Hq, Hkv, D, causal, scale)
    local what = string.format('B=%d T=%d S=%d H=%d Hkv=%d D=%d causal=%s', B, T, S, Hq, Hkv, D, tostring(causal))
    H.close(out, wo, ATT_ATOL, ATT_RTOL, what .. ' out')
    H.close(lse, wl, ATT_ATOL, ATT_RTOL, what .. ' lse')
end

describe('attention forward vs float64', function()
    it('T = 70 (not a multiple of the block), H = 4, Hkv = 2, D = 8, causal and not', function()
        check_case(1, 70, 70, 4, 2, 8, true)
        check_case(2, 70, 70, 4, 2, 8, false)
    end)
    it('T = 130 spans three query and key blocks', function()
        check_case(1, 130, 130, 2, 1, 8, true)
    end)
    it('decode: T = 1 against a cache of S = 37 and S = 129, and T = 5 < S = 70 (offset S - T)', function()
        check_case(2, 1, 37, 4, 2, 8, true)
        check_case(1, 1, 129, 4, 2, 8, true)
        check_case(1, 5, 70, 4, 4, 8, true)
        check_case(1, 5, 9, 2, 1, 8, false)
    end)
    it('strided q, k, v (permuted from (B, H, T, D))', function()
        local B, T, Hq, Hkv, D = 1, 67, 4, 2, 8
        local qb, kb, vb = H.randn { B, Hq, T, D }, H.randn { B, Hkv, T, D }, H.randn { B, Hkv, T, D }
        local q, k, v = qb:transpose(1, 2), kb:transpose(1, 2), vb:transpose(1, 2)
        assert.is_false(q:is_contiguous())
        local out = nc.attention(q, k, v)
        local wo = ref_attention(q:contiguous():tolist(), k:contiguous():tolist(), v:contiguous():tolist(), B, T, T,
            Hq, Hkv, D, true, 1 / math.sqrt(D))
        H.close(out, wo, ATT_ATOL, ATT_RTOL, 'strided')
    end)
    it('a custom scale and a query that sees no key (T > S, causal) gives 0 and lse -inf', function()
        local q, k, v = H.randn { 1, 4, 2, 8 }, H.randn { 1, 2, 1, 8 }, H.randn { 1, 2, 1, 8 }
        local out, lse = nc.attention(q, k, v, { scale = 0.3 })
        local wo, wl = ref_attention(q:tolist(), k:tolist(), v:tolist(), 1, 4, 2, 2, 1, 8, true, 0.3)
        H.close(out, wo, ATT_ATOL, ATT_RTOL, 'T > S out')
        local l = lse:tolist()
        assert.equal(-math.huge, l[1])              -- head 0, t = 0 sees s <= -2
        assert.equal(-math.huge, l[2])
        H.close({ l[3], l[4] }, { wl[3], wl[4] }, ATT_ATOL, ATT_RTOL, 'T > S lse')
    end)
end)

describe('attention GQA identities (algorithms.md §14.8)', function()
    it('GQA with Hkv = H equals MHA computed head by head', function()
        local q, k, v = H.randn { 1, 9, 3, 8 }, H.randn { 1, 9, 3, 8 }, H.randn { 1, 9, 3, 8 }
        local full = nc.attention(q, k, v)
        for h = 0, 2 do
            local one = nc.attention(q:narrow(2, h, 1), k:narrow(2, h, 1), v:narrow(2, h, 1))
            H.close(one, full:narrow(2, h, 1):contiguous():tolist(), 1e-6, 1e-6, 'head ' .. h)
        end
    end)
    it('GQA equals MHA with repeated K/V heads', function()
        local q, k, v = H.randn { 2, 11, 6, 8 }, H.randn { 2, 11, 2, 8 }, H.randn { 2, 11, 2, 8 }
        local gqa = nc.attention(q, k, v)
        -- repeat each kv head 3 times: (B, S, 2, D) -> (B, S, 2, 3, D) -> (B, S, 6, D)
        local kr = k:unsqueeze(3):expand { 2, 11, 2, 3, 8 }:contiguous():view { 2, 11, 6, 8 }
        local vr = v:unsqueeze(3):expand { 2, 11, 2, 3, 8 }:contiguous():view { 2, 11, 6, 8 }
        H.close(gqa, nc.attention(q, kr, vr):tolist(), 1e-6, 1e-6, 'GQA vs repeated MHA')
    end)
end)

describe('attention backward', function()
    it('matches finite differences (causal, GQA, T < S) for q, k and v', function()
        H.fd_check(function(q, k, v) return nc.attention(q, k, v) end,
            { H.randn { 1, 5, 2, 4 }, H.randn { 1, 7, 1, 4 }, H.randn { 1, 7, 1, 4 } })
    end)
    it('matches finite differences (non-causal, B = 2, strided q)', function()
        H.fd_check(function(q, k, v) return nc.attention(q:transpose(1, 2), k, v, { causal = false }) end,
            { H.randn { 2, 4, 3, 4 }, H.randn { 2, 5, 2, 4 }, H.randn { 2, 5, 2, 4 } })
    end)
    it('matches finite differences across block boundaries (T = S = 70, sampled elements)', function()
        H.fd_check(function(q, k, v) return nc.attention(q, k, v) end,
            { H.randn { 1, 70, 2, 8 }, H.randn { 1, 70, 1, 8 }, H.randn { 1, 70, 1, 8 } }, { sample = 40 })
    end)
    it('leaves NULL gradients alone and accumulates into existing ones', function()
        local q, k, v = H.randn { 1, 6, 2, 4 }, H.randn { 1, 6, 2, 4 }, H.randn { 1, 6, 2, 4 }
        local out, lse = nc.attention(q, k, v)
        local g = H.randn { 1, 6, 2, 4 }
        local gq1 = nc.zeros { 1, 6, 2, 4 }
        nc.core.check(C.nc_attention_backward(gq1._c, nil, nil, out._c, lse._c, q._c, k._c, v._c, g._c, 1, 0.5), 'bwd')
        local gq2 = nc.zeros { 1, 6, 2, 4 }
        local gk, gv = nc.zeros { 1, 6, 2, 4 }, nc.zeros { 1, 6, 2, 4 }
        nc.core.check(C.nc_attention_backward(gq2._c, gk._c, gv._c, out._c, lse._c, q._c, k._c, v._c, g._c, 1, 0.5), 'bwd')
        nc.core.check(C.nc_attention_backward(gq2._c, gk._c, gv._c, out._c, lse._c, q._c, k._c, v._c, g._c, 1, 0.5), 'bwd')
        local a, b = gq1:tolist(), gq2:tolist()
        local want = {}
        for i = 1, #a do want[i] = 2 * a[i] end
        H.close(b, want, 1e-6, 1e-6, 'accumulated gq')
    end)
end)

describe('attention memory', function()
    it('T = 1024 never allocates O(T^2) bytes (forward and backward)', function()
        local B, T, Hq, D = 1, 1024, 4, 64
        local q, k, v = H.randn { B, T, Hq, D }, H.randn { B, T, Hq, D }, H.randn { B, T, Hq, D }
        local g = H.randn { B, T, Hq, D }
        local gq, gk, gv = nc.zeros { B, T, Hq, D }, nc.zeros { B, T, Hq, D }, nc.zeros { B, T, Hq, D }
        local t2 = T * T * 4                      -- one (T, T) f32 score matrix of one head
        -- raise the live bytes above the old high-water mark, so any allocation moves the peak
        local function fresh_baseline()
            collectgarbage('collect')
            local s = nc.mem_stats()
            local ballast = nc.empty { math.floor(math.max(0, s.host_peak - s.host_bytes) / 4) + 16 }
            return ballast, nc.mem_stats()
        end
        local ballast, s0 = fresh_baseline()
        local out, lse = nc.attention(q, k, v)
        local s1 = nc.mem_stats()
        local fwd = s1.host_peak - s0.host_bytes
        local outputs = (B * T * Hq * D + B * Hq * T) * 4
        if os.getenv("NC_SPEC_VERBOSE") then print("attention T=1024 peak delta fwd", fwd, "outputs", outputs) end
        assert.is_true(fwd < outputs + t2 / 4,
            string.format('forward peak delta %d bytes (outputs %d, one T^2 matrix %d)', fwd, outputs, t2))
        ballast = nil
        local ballast2, s2 = fresh_baseline()
        nc.core.check(C.nc_attention_backward(gq._c, gk._c, gv._c, out._c, lse._c, q._c, k._c, v._c, g._c, 1,
            1 / math.sqrt(D)), 'attention backward')
        local s3 = nc.mem_stats()
        local bwd = s3.host_peak - s2.host_bytes
        if os.getenv("NC_SPEC_VERBOSE") then print("attention T=1024 peak delta bwd", bwd) end
        assert.is_true(bwd < t2 / 4, string.format('backward peak delta %d bytes (one T^2 matrix %d)', bwd, t2))
        assert.is_truthy(ballast2)
        -- the result is still right: spot-check one row against float64
        local ql, kl, vl = q:tolist(), k:tolist(), v:tolist()
        local o = out:tolist()
        local t, h = 700, 3
        local m, sc = -math.huge, {}
        for s = 0, t do
            local dot = 0
            for d = 0, D - 1 do dot = dot + ql[(t * Hq + h) * D + d + 1] * kl[(s * Hq + h) * D + d + 1] end
            sc[s] = dot / math.sqrt(D)
            m = math.max(m, sc[s])
        end
        local l = 0
        for s = 0, t do sc[s] = math.exp(sc[s] - m); l = l + sc[s] end
        local want, got = {}, {}
        for d = 0, D - 1 do
            local acc = 0
            for s = 0, t do acc = acc + sc[s] * vl[(s * Hq + h) * D + d + 1] end
            want[d + 1] = acc / l
            got[d + 1] = o[(t * Hq + h) * D + d + 1]
        end
        H.close(got, want, ATT_ATOL, ATT_RTOL, 'T=1024 row')
    end)
end)

describe('attention determinism', function()
    it('forward and backward are bitwise equal on 1 and 2 threads', function()
        local q, k, v = H.randn { 1, 150, 4, 16 }, H.randn { 1, 150, 2, 16 }, H.randn { 1, 150, 2, 16 }
        local g = H.randn { 1, 150, 4, 16 }
        local prev = nc.get_num_threads()
        local function run(n)
            nc.set_num_threads(n)
            local out, lse = nc.attention(q, k, v)
            local gq, gk, gv = nc.zeros { 1, 150, 4, 16 }, nc.zeros { 1, 150, 2, 16 }, nc.zeros { 1, 150, 2, 16 }
            nc.core.check(C.nc_attention_backward(gq._c, gk._c, gv._c, out._c, lse._c, q._c, k._c, v._c, g._c, 1, 0.25), 'bwd')
            return { out:tolist(), gq:tolist(), gk:tolist(), gv:tolist() }
        end
        local a, b = run(1), run(2)
        nc.set_num_threads(prev)
        for i = 1, 4 do assert.same(a[i], b[i]) end
    end)
end)

describe('attention errors', function()
    it('H not a multiple of Hkv and mismatched D name both shapes', function()
        local ok, err = pcall(nc.attention, nc.zeros { 1, 4, 3, 8 }, nc.zeros { 1, 4, 2, 8 }, nc.zeros { 1, 4, 2, 8 })
        assert.is_false(ok)
        assert.matches('attention', err, 1, true)
        assert.matches('(1, 4, 3, 8)', err, 1, true)
        assert.matches('(1, 4, 2, 8)', err, 1, true)
        ok, err = pcall(nc.attention, nc.zeros { 1, 4, 2, 8 }, nc.zeros { 1, 4, 2, 4 }, nc.zeros { 1, 4, 2, 4 })
        assert.is_false(ok)
        assert.matches('(1, 4, 2, 4)', err, 1, true)
    end)
end)
