-- The attention backward picks a fused single pass per (b, kv head) on one thread or with >= 4 such items
-- per thread, else the two passes; both sum every gradient element in the same order, so the
-- result must be bit-identical whatever the thread count (and whichever path runs).
local nc = require 'nanochat'
local C = require('nanochat.core').C

local function flat(t, out)
    out = out or {}
    if type(t) == 'table' then for _, x in ipairs(t) do flat(x, out) end else out[#out + 1] = t end
    return out
end

-- Cases: head dim 16 (the generic tiles) and 64 (the AVX-512 build's 4-row dQ kernel), dense and
-- with a kept-query mask (masked rows inside full 4-row groups give zero P / dS rows).
local function compare(D, masked)
    local B, T, H, Hk = 2, 150, 4, 2
    local q, k, v, go = nc.randn { B, T, H, D }, nc.randn { B, T, Hk, D }, nc.randn { B, T, Hk, D }, nc.randn { B, T, H, D }
    local o, lse = nc.zeros { B, T, H, D }, nc.zeros { B, H, T }
    local scale = 1 / math.sqrt(D)
    assert.are.equal(0, C.nc_attention(o._c, lse._c, q._c, k._c, v._c, 1, scale))
    local keep
    if masked then
        local rows = {}
        for b = 1, B do
            rows[b] = {}
            for t = 1, T do rows[b][t] = ((t * 7 + b) % 3 == 0) and 0 or 1 end
        end
        keep = nc.tensor(rows):to('u8')
    end
    local before = nc.get_num_threads()
    local function run(th)
        nc.set_num_threads(th)
        local gq, gk, gv = nc.zeros { B, T, H, D }, nc.zeros { B, T, Hk, D }, nc.zeros { B, T, Hk, D }
        if keep then
            assert.are.equal(0, C.nc_attention_backward_masked(gq._c, gk._c, gv._c, o._c, lse._c, q._c, k._c, v._c,
                go._c, keep._c, 1, scale))
        else
            assert.are.equal(0, C.nc_attention_backward(gq._c, gk._c, gv._c, o._c, lse._c, q._c, k._c, v._c, go._c, 1,
                scale))
        end
        return { flat(gq:tolist()), flat(gk:tolist()), flat(gv:tolist()) }
    end
    local a, b = run(1), run(2)
    nc.set_num_threads(before)
    for i = 1, 3 do
        local n, nz = 0, 0
        for j = 1, #a[i] do
            if a[i][j] ~= b[i][j] then n = n + 1 end
            if a[i][j] ~= 0 then nz = nz + 1 end
        end
        assert.are.equal(0, n)
        assert.is_true(nz > #a[i] / 2)   -- the gradients are really there
    end
end

describe('attention backward paths', function()
    it('fused (1 thread) and two-pass (2 threads) give bit-identical gradients (D 16)', function() compare(16) end)
    it('fused and two-pass give bit-identical gradients (D 64)', function() compare(64) end)
    it('fused and two-pass give bit-identical gradients with a kept-query mask (D 64)', function()
        compare(64, true)
    end)
end)
