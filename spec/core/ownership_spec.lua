-- spec/core/ownership_spec.lua — who frees a tensor, and when: tensor.lua's ownership registry
-- (one slot per owned nc_tensor*, released once after its cdata box is collected) together with
-- core/tensor.c's small-tensor blocks (header + storage + data of a tiny CPU tensor in one
-- recycled block). Checks: every tensor is freed exactly once (allocation and free counters
-- match, live counts return), nothing grows over many iterations, views of small tensors outlive
-- their base, a raw pointer stays valid while its box lives, early release (Tensor._free_now)
-- does not release twice, and failing ops still raise clear errors and leak nothing.
package.path = 'lua/?.lua;lua/?/init.lua;' .. package.path
local nc = require 'nanochat'
local Tensor = nc.Tensor
local C = nc.C
local ffi = require 'ffi'

local function full_gc()
    collectgarbage('collect')
    collectgarbage('collect')
end

-- live tensors, live host bytes, and allocations minus frees (all must return to a baseline)
local function snapshot()
    full_gc()
    local s = nc.mem_stats()
    return { live = s.tensors_live, bytes = s.host_bytes, net = s.host_allocs - s.host_frees,
             cached = s.host_cached, used = Tensor._registry_stats().used }
end

local function same_as(before, after, what)
    assert.are.equal(before.live, after.live, what .. ': live tensors')
    assert.are.equal(before.bytes, after.bytes, what .. ': host bytes')
    assert.are.equal(before.net, after.net, what .. ': allocations minus frees')
    assert.are.equal(before.used, after.used, what .. ': registry slots in use')
end

describe('tensor ownership', function()
    it('makes tiny CPU tensors as one small block, larger ones as before', function()
        local a, b = nc.empty { nc.C.NC_SMALL_DATA / 4 }, nc.empty { nc.C.NC_SMALL_DATA / 4 + 1 }
        assert.is_true(bit.band(a._c.flags, C.NC_TENSOR_SMALL) ~= 0)
        assert.is_true(bit.band(a._c.storage.flags, C.NC_STORAGE_SMALL) ~= 0)
        assert.are.equal(0, bit.band(b._c.flags, C.NC_TENSOR_SMALL))
        assert.are.equal(0, bit.band(b._c.storage.flags, C.NC_STORAGE_SMALL))
    end)

    it('frees every tensor exactly once, with views and early releases mixed in', function()
        local before = snapshot()
        local x, y = nc.tensor { 1.5 }, nc.tensor { 2.25 }
        local kept = {}
        for i = 1, 20000 do
            local z = nc.add(x, y)
            if i % 7 == 0 then z = z:view { 1, 1 } end           -- a view: base collected first
            if i % 11 == 0 then Tensor._free_now(nc.mul(z, 2)) end -- released now, never again
            if i % 1000 == 0 then kept[#kept + 1] = z end
        end
        for _, z in ipairs(kept) do assert.are.equal(3.75, z:sum():item()) end
        kept, x, y = nil, nil, nil
        same_as(before, snapshot(), '20000 adds')
    end)

    it('does not grow over many iterations (registry slots, live memory, the block cache)', function()
        local x = nc.tensor { { 1, 2 }, { 3, 4 } }
        local function round()
            for _ = 1, 20000 do
                local s = (x + x):t()
                s = s * 0.5
            end
        end
        round()
        local base = snapshot()
        local high1 = Tensor._registry_stats().high
        for r = 1, 4 do
            round()
            same_as(base, snapshot(), 'round ' .. r)
        end
        -- a leak of slots would add ~60000 per round; reuse keeps the highest slot where it was
        assert.is_true(Tensor._registry_stats().high <= 2 * high1 + 64,
                       'registry high-water ' .. Tensor._registry_stats().high .. ' vs ' .. high1)
        assert.is_true(snapshot().cached <= base.cached + 8 * 1048576 + 1)
    end)

    it('packs its slots again after a burst, so scans do not stay at the old high-water mark', function()
        snapshot()
        local high0 = Tensor._registry_stats().high
        local burst = {}
        for i = 1, 30000 do burst[i] = nc.empty { 1 } end
        assert.is_true(Tensor._registry_stats().high >= high0 + 30000)
        burst = nil
        snapshot()
        assert.is_true(Tensor._registry_stats().high <= high0 + 64,
                       'high ' .. Tensor._registry_stats().high .. ' vs ' .. high0 .. ' before the burst')
        -- and slots are handed out from the bottom again
        local t = nc.empty { 1 }
        assert.is_true(t._slot <= high0 + 65)
    end)

    it('stays consistent when finalizers make tensors in the middle of registrations', function()
        local before = snapshot()
        local made, armed = {}, true
        local mt_proxy = newproxy(true)
        getmetatable(mt_proxy).__gc = function()
            if not armed then return end
            made[#made + 1] = nc.full({ 2 }, #made)      -- a tensor made inside the collector
            newproxy(mt_proxy)
        end
        newproxy(mt_proxy)
        local x = nc.tensor { 1 }
        for i = 1, 30000 do
            local y = x + i
            if i % 5000 == 0 then full_gc() end
        end
        armed = false
        full_gc()
        assert.is_true(#made > 3)
        for i, t in ipairs(made) do assert.are.same({ i - 1, i - 1 }, t:tolist()) end
        made, x, mt_proxy = nil, nil, nil
        same_as(before, snapshot(), 'finalizers making tensors')
    end)

    it('keeps a small tensor readable through a view after its base is collected', function()
        local v = nc.tensor({ { 1, 2, 3 }, { 4, 5, 6 } }):t():narrow(0, 1, 2)
        full_gc()
        assert.are.same({ 2, 5, 3, 6 }, v:contiguous():tolist())
    end)

    it('keeps a raw pointer valid while its box is reachable, as ffi.gc did', function()
        local c = nc.tensor({ 4, 5, 6 })._c   -- the Tensor table is garbage, the box is not
        full_gc()
        local val = ffi.new('double[1]')
        local idx = ffi.new('int64_t[1]', 2)
        assert.are.equal(C.NC_OK, C.nc_tensor_get(c, idx, val))
        assert.are.equal(6, val[0])
        assert.are.equal(3, tonumber(C.nc_tensor_numel(c)))
    end)

    it('releases early with _free_now exactly once', function()
        local before = snapshot()
        local t = nc.zeros { 4 }
        local during = nc.mem_stats().tensors_live
        assert.is_true(Tensor._free_now(t))
        assert.are.equal(during - 1, nc.mem_stats().tensors_live)
        assert.is_nil(t._c)
        assert.is_false(Tensor._free_now(t))      -- a second call finds nothing to release
        t = nil
        same_as(before, snapshot(), 'free_now')
    end)

    it('still raises clear errors from failing ops and leaks nothing', function()
        local before = snapshot()
        local a, b = nc.zeros { 2, 3 }, nc.zeros { 4 }
        for _ = 1, 100 do
            local ok, err = pcall(nc.add, a, b)
            assert.is_false(ok)
            assert.truthy(tostring(err):find('add', 1, true), err)
            assert.truthy(tostring(err):find('(2, 3)', 1, true) and tostring(err):find('(4)', 1, true), err)
        end
        local ok, err = pcall(nc.add, a, 'x')
        assert.is_false(ok)
        assert.truthy(tostring(err):find('add: expected a Tensor or a number as argument 2', 1, true), err)
        a, b = nil, nil
        same_as(before, snapshot(), 'errors')
    end)
end)

-- tensor.lua's pressure(): a forced collection once the large allocations since the last one
-- exceed min(live after it, half the host block cache) (and 64 MiB), so dead transients go back
-- to the cache instead of piling up to the live size. A child process with a 64 MiB cache keeps
-- 256 MiB live and makes 40 dead 16 MiB outputs: the peak above the end's live bytes stays near
-- the 64 MiB floor (the rule "more than live" alone let ~270 MiB of dead outputs pile up).
describe('memory pressure pacing', function()
    -- runs code in a child nanochat with NC_HOST_CACHE_MB=cache_mb; the number it prints as value=
    local function child(cache_mb, code)
        local path = os.tmpname()
        local f = assert(io.open(path, 'wb'))
        f:write("local nc = require 'nanochat'\n", code, '\n')
        f:close()
        local p = assert(io.popen(string.format('NC_HOST_CACHE_MB=%d ./nanochat %s 2>&1', cache_mb, path)))
        local out = p:read('*a')
        p:close()
        os.remove(path)
        local v = tonumber(out:match('value=([%d.-]+)'))
        assert(v, 'child output: ' .. out)
        return v
    end

    local function excess_mib(cache_mb)
        return child(cache_mb, [[
local keep = nc.zeros { 64, 1024, 1024 }
local x = nc.zeros { 4, 1024, 1024 }
collectgarbage('collect'); collectgarbage('collect')
nc.mem_reset_peak()
for i = 1, 40 do local y = x:relu() end
local s = nc.mem_stats()
print(string.format('value=%.1f', (s.host_peak - s.host_bytes) / 1048576))]])
    end

    it('the host block cache makes room for the block just freed (evicting other sizes)', function()
        -- 64 MiB cap: a dead 40 MiB block is cached; freeing a 48 MiB one evicts it (both do not
        -- fit) instead of sending the new one to the system
        local v = child(64, [[
local function cached() return nc.mem_stats().host_cached / 1048576 end
local function make_and_free(mib) nc.Tensor._free_now(nc.empty { mib / 4, 1024, 1024 }) end
make_and_free(40)
local c1 = cached()
make_and_free(48)
print(string.format('value=%.3f', cached() - c1 + 40))]])
        assert(v >= 48 and v < 48.5, string.format('cached %.3f MiB after the 48 MiB free (want the 48 MiB block)', v))
    end)

    it('collects every half cache: dead 16 MiB outputs do not pile up to the live size', function()
        local v = excess_mib(64)
        assert(v <= 96, string.format('%.1f MiB of dead outputs above the live set (want <= 96)', v))
    end)

    it('the live-size rule still bounds the pile when the cache is off', function()
        local v = excess_mib(0)
        assert(v <= 300, string.format('%.1f MiB above the live set', v))
    end)
end)
