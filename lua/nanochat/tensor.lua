-- lua/nanochat/tensor.lua — the Lua Tensor class over nc_tensor*.
--
-- Promise: a Tensor is a Lua table { _c = nc_tensor*, _slot = n } whose pointer is released
-- exactly once, by the ownership registry below, after its cdata box (t._c) became garbage
-- (Tensor.wrap/_empty_c are the only places that take ownership). Views share storage and
-- record autograd like any op. Dims are 0-based and may be negative. C memory churn drives
-- Lua's collector (pressure(): small tensors pace it like Lua objects of their block size,
-- large ones force a full collection past 64 MiB), so C memory stays bounded even though the
-- Lua GC cannot see it.
local core = require 'nanochat.core'
local ag = require 'nanochat.autograd'
local ffi, C = core.ffi, core.C

local Tensor = {}
Tensor.__index = Tensor
Tensor.__name = 'Tensor'
ag._set_tensor_class(Tensor)

-- ---- ownership: the registry ------------------------------------------------------------------
-- Each owned nc_tensor* sits in one slot s: owned[s] holds the raw pointer (a C array, so it
-- does not keep the box alive) and alive[s] the cdata box that t._c holds, in a weak-valued
-- table. When the collector finds the box unreachable it clears alive[s] (in its atomic phase);
-- release_dead() then releases owned[s] and frees the slot, so every pointer is released once,
-- when its box dies, as with ffi.gc. release_dead() runs at the first allocation after each GC
-- cycle (counted by a finalizer, see gc_cycles), after pressure()'s forced collection,
-- in nc.mem_stats(), nc.mem_trim() and nc.mem_reset_peak(), and at lua_close.
-- Why not ffi.gc(p, nc_tensor_release) on every box (as before): LuaJIT then inserts each box
-- into its finalizer table, resurrects every dead box for one more cycle, and calls each
-- finalizer through a protected call into the FFI from the interpreter; in the ops bench
-- (section 3) that ownership step costs 2-3x the registry's, and a finalizer that runs while a
-- trace is being recorded aborts it ("error thrown or hook called during recording"). The
-- registry costs two stores per tensor and a compiled scan of the slots per GC cycle (cycles
-- are paced so that this is O(1) per tensor: see pressure()).
-- Rule: a box returned by a C *_new*/*_view* call is registered once (never wrap the same box
-- twice); code that keeps a raw pointer must keep its Tensor (or its box) alive, as before.
-- owned[] and the free-slot stack live in malloc'd memory, outside the Lua heap: the collector
-- paces its cycles by the Lua heap size, and arrays of a slot per tensor in it would lengthen
-- the cycles, hence the number of tensors waiting in each (measured: 5-10x more).
pcall(ffi.cdef, 'void *realloc(void *ptr, size_t size);')
pcall(ffi.cdef, 'void free(void *ptr);')
local release = C.nc_tensor_release
local cap, nfree, hi = 0, 0, 0
local owned, free_slots          -- nc_tensor *[cap + 1], int32_t[cap + 1]; slots 1..cap
local alive = setmetatable({}, { __mode = 'v' })
-- GC cycle counter: an unreferenced proxy whose finalizer counts and makes the next one, so it
-- runs once per collection cycle. (A weak-valued marker table is not reliable: a stale stack
-- slot of a long-lived frame can keep the marker alive forever.)
local gc_cycles, seen_cycles, closing = 0, 0, false
local canary = newproxy(true)
getmetatable(canary).__gc = function()
    gc_cycles = gc_cycles + 1
    if not closing then newproxy(canary) end
end
newproxy(canary)
Tensor._gc_canary = canary   -- the prototype stays reachable; only its copies are collected

-- Release every registered pointer whose box was collected; returns how many. The scan also
-- rebuilds the free-slot stack with the lowest slot on top and lowers hi to the highest slot in
-- use, so slots stay packed at the bottom and a scan costs O(tensors in use), not O(the most
-- there ever were): cycles are frequent (see pressure()), and after a burst of tensors a scan up
-- to the old high-water mark cost 5 µs per tiny op. alive[] is rebuilt smaller for the same
-- reason (the collector walks its whole array part at every cycle).
-- Re-entrancy: a GC step (and with it any __gc finalizer, which might make a tensor) can only
-- run where Lua allocates. own() allocates only in its `alive[s] = p` store, after the slot is
-- taken; a scan started from there (busy) is skipped, since owned[s] is set and alive[s] not
-- yet. The scan itself allocates nothing but the smaller alive table, made before copying.
local table_new = require 'table.new'
local alive_cap = 0                -- highest index stored in alive since it was (re)built
local busy = 0                     -- own() calls between owned[s] = p and alive[s] = p
local function release_dead()
    if busy > 0 then return 0 end
    local n, top = 0, 0
    nfree = 0
    for s = hi, 1, -1 do
        local p = owned[s]
        if p ~= nil and alive[s] == nil then
            owned[s] = nil
            release(p)
            n = n + 1
            p = nil
        end
        if p ~= nil then
            if top == 0 then top = s end
        elseif top ~= 0 then
            nfree = nfree + 1
            free_slots[nfree] = s
        end
    end
    hi = top
    if alive_cap > 4096 and 4 * hi < alive_cap then
        local size = 2 * hi + 64
        local a = setmetatable(table_new(size, 0), getmetatable(alive))   -- may run a GC step
        if hi <= size then
            for s = 1, hi do a[s] = alive[s] end     -- into the preallocated array: no allocation
            alive, alive_cap = a, hi
        end
    end
    return n
end
Tensor._release_dead = release_dead

local function grow()
    local n = math.max(1024, 2 * cap)
    local o = ffi.C.realloc(owned, (n + 1) * ffi.sizeof('nc_tensor *'))
    if o == nil then error('tensor registry: out of memory for ' .. n .. ' slots', 0) end
    owned = ffi.cast('nc_tensor **', o)
    local f = ffi.C.realloc(free_slots, (n + 1) * 4)
    if f == nil then error('tensor registry: out of memory for ' .. n .. ' slots', 0) end
    free_slots = ffi.cast('int32_t *', f)
    ffi.fill(owned + cap + 1, (n - cap) * ffi.sizeof('nc_tensor *'))
    cap = n
end
grow()

-- Register p (a fresh +1 pointer); returns its slot.
local function own(p)
    if gc_cycles ~= seen_cycles then
        seen_cycles = gc_cycles
        release_dead()
    end
    local s
    if nfree > 0 then
        s = free_slots[nfree]
        nfree = nfree - 1
    else
        if hi >= cap then grow() end
        hi = hi + 1
        s = hi
    end
    owned[s] = p
    busy = busy + 1
    alive[s] = p
    busy = busy - 1
    if s > alive_cap then alive_cap = s end
    return s
end

-- Release t's pointer now rather than after the next GC cycle. Neither t nor any copy of t._c
-- may be used afterwards. Returns true when it released (false if t owned nothing).
function Tensor._free_now(t)
    local p, s = t._c, t._slot
    t._c, t._slot = nil, nil
    if s == nil or p == nil or alive[s] ~= p or owned[s] ~= p then return false end
    alive[s] = nil
    owned[s] = nil
    release(p)
    nfree = nfree + 1
    free_slots[nfree] = s
    return true
end

-- registry counters, for specs and the ops bench: slots in use, the highest slot in use, capacity
function Tensor._registry_stats() return { used = hi - nfree, high = hi, cap = cap } end

-- at lua_close everything still owned is released (the os.exit paths skip this, like ffi.gc)
local closer = newproxy(true)
getmetatable(closer).__gc = function()
    closing = true
    for s = 1, hi do
        local p = owned[s]
        if p ~= nil then owned[s] = nil; release(p) end
    end
    hi, nfree = 0, 0
    ffi.C.free(owned)
    ffi.C.free(free_slots)
    owned, free_slots, cap = nil, nil, 0
end
Tensor._closer = closer   -- reachable for the state's lifetime

-- ---- memory pressure ---------------------------------------------------------------------------
-- The Lua collector paces itself by the Lua heap, which does not include C memory. Two rules
-- make it see ours:
--  * small tensors (at most NC_SMALL_DATA bytes: one NC_SMALL_BLOCK-byte block each, core/tensor.c)
--    are made at op rate with ~120 bytes of Lua garbage each; left alone, a GC cycle lasts tens
--    of thousands of them (10-50k measured with 1.5 MB of Lua heap), tens of MB of blocks wait
--    for it, cold, and overflow the block cache. Every SMALL_STEP_N of them we do the GC work
--    that SMALL_STEP_KB of Lua allocation would cause (collectgarbage('step', KB)): each small
--    tensor counts as 128 more bytes of Lua memory, about doubling the pace for them. Per
--    nc.add (cachegrind, instructions / last-level misses), by Lua heap 0.4 / 3 / 10 MB:
--    no pacing 2890 / - / - (LL 4.9); 128 B: 2330 (0) / 2820 (0.06) / 4150 (4.1); 512 B (the
--    whole block): 2320 (0) / 4200 (0) / 4760 (0.4) — more marking; the old ffi.gc path:
--    5050 (2.6) / 4240 (6.3) / 4090 (6.4).
--  * large ones: once enough bytes were allocated since the last forced collection (more than
--    what was live after it or half the host block cache, whichever is less, and at least 64 MiB)
--    a full collection runs. The cache bound matters for big transients: with 384 MiB outputs and
--    a few GiB live, waiting for "more than live" let five or more dead outputs pile up, the
--    1 GiB cache kept two, and every other allocation came fresh from the system, page faults and
--    kernel zeroing included (`nc.relu` on 384 MiB ran at 0.38 of memcpy, its bare kernel at 1.10:
--    tools/bench/ops.lua); collecting every half cache lets each output reuse a dead one's block.
local since_gc, live_after_gc = 0, 0
local GC_MIN = 64 * 1024 * 1024
local CACHE_HALF = tonumber(C.nc_host_cache_limit()) / 2
local SMALL_DATA = C.NC_SMALL_DATA
local SMALL_STEP_N, SMALL_STEP_KB = 1024, 128
local small_n = 0
local stats = ffi.new('nc_mem_stats')

local function pressure(nbytes)
    if nbytes <= SMALL_DATA then
        small_n = small_n + 1
        if small_n >= SMALL_STEP_N then
            small_n = 0
            if collectgarbage('step', SMALL_STEP_KB) then release_dead() end
        end
        return
    end
    since_gc = since_gc + nbytes
    if since_gc > GC_MIN and (since_gc > live_after_gc or (CACHE_HALF > 0 and since_gc > CACHE_HALF)) then
        collectgarbage('collect')
        release_dead()
        C.nc_mem_stats_get(stats)
        live_after_gc = tonumber(stats.host_bytes) + tonumber(stats.device_bytes)
        since_gc = 0
    end
end

-- Take ownership of a +1 nc_tensor* (NULL -> Lua error with the C message).
function Tensor.wrap(p, op)
    if p == nil then
        local msg = ffi.string(C.nc_last_error())
        if op and msg:sub(1, #op + 1) ~= op .. ':' then msg = op .. ': ' .. msg end
        error(msg, 0)
    end
    return setmetatable({ _c = p, _slot = own(p) }, Tensor)
end
local wrap = Tensor.wrap

function Tensor.is(x) return getmetatable(x) == Tensor end

local check = core.check
local dtype_id, device_id = core.dtype_id, core.device_id

-- scratch arrays for passing shapes (the C side copies them)
local shape_buf = ffi.new('int64_t[8]')
local shape_buf2 = ffi.new('int64_t[8]')
local perm_buf = ffi.new('int32_t[8]')

-- shape arguments: a list {2, 3}, varargs numbers (2, 3), or another tensor's shape
local function to_shape(shape, ...)
    if type(shape) == 'number' then shape = { shape, ... } end
    if type(shape) ~= 'table' then error('expected a shape (a list of sizes), got ' .. type(shape), 3) end
    if Tensor.is(shape) then shape = shape:shape() end
    local n = #shape
    if n > 8 then error('a shape has at most 8 dims, got ' .. n, 3) end
    for i = 1, n do
        local s = shape[i]
        if type(s) ~= 'number' or s ~= math.floor(s) then
            error('shape entries must be integers, got ' .. tostring(s) .. ' at position ' .. i, 3)
        end
        shape_buf[i - 1] = s
    end
    return n, shape_buf, shape
end
Tensor._to_shape = to_shape

local function bytes_of(p)
    return tonumber(p.storage.nbytes)
end

-- ---- creation ------------------------------------------------------------------------------
function Tensor.empty(shape, dtype, device)
    local n, buf = to_shape(shape)
    local p = C.nc_tensor_new(dtype_id(dtype), device_id(device), n, buf)
    local t = wrap(p, 'empty')
    pressure(bytes_of(p))
    return t
end

-- A fresh contiguous tensor from a C shape array (int64_t[ndim]) and numeric dtype/device ids:
-- the allocation path of the elementwise ops, with no Lua shape table.
function Tensor._empty_c(ndim, cshape, dtype_n, device_n)
    local p = C.nc_tensor_new(dtype_n, device_n, ndim, cshape)
    if p == nil then return wrap(p, 'empty') end
    local t = setmetatable({ _c = p, _slot = own(p) }, Tensor)
    pressure(tonumber(p.storage.nbytes))
    return t
end

function Tensor.zeros(shape, dtype, device)
    local n, buf = to_shape(shape)
    local p = C.nc_tensor_new_zeros(dtype_id(dtype), device_id(device), n, buf)
    local t = wrap(p, 'zeros')
    pressure(bytes_of(p))
    return t
end

function Tensor.ones(shape, dtype, device)
    local t = Tensor.empty(shape, dtype, device)
    check(C.nc_tensor_fill(t._c, 1), 'ones')
    return t
end

function Tensor.empty_like(t, dtype, device)
    return Tensor.empty(t:shape(), dtype or t:dtype(), device or t:device())
end

function Tensor.zeros_like(t, dtype, device)
    return Tensor.zeros(t:shape(), dtype or t:dtype(), device or t:device())
end

-- ---- properties ----------------------------------------------------------------------------
function Tensor:dim() return self._c.ndim end
function Tensor:numel() return tonumber(C.nc_tensor_numel(self._c)) end
function Tensor:dtype() return core.dtype_names[self._c.dtype] end
function Tensor:device() return core.device_names[self._c.device] end
function Tensor:is_contiguous() return C.nc_tensor_is_contiguous(self._c) == 1 end

function Tensor:shape()
    local c, s = self._c, {}
    for i = 0, c.ndim - 1 do s[i + 1] = tonumber(c.shape[i]) end
    return s
end

function Tensor:strides()
    local c, s = self._c, {}
    for i = 0, c.ndim - 1 do s[i + 1] = tonumber(c.strides[i]) end
    return s
end

local function norm_dim(self, d, extra)
    local n = self._c.ndim + (extra or 0)
    if type(d) ~= 'number' then error('expected a dim number, got ' .. type(d), 3) end
    local dd = d < 0 and d + n or d
    if dd < 0 or dd >= n then
        error(string.format('dim %d out of range for a tensor with %d dims', d, self._c.ndim), 3)
    end
    return dd
end
Tensor._norm_dim = norm_dim

function Tensor:size(d)
    if d == nil then return self:shape() end
    return tonumber(self._c.shape[norm_dim(self, d)])
end

function Tensor.__len(self) return self._c.ndim > 0 and tonumber(self._c.shape[0]) or 0 end

-- ---- autograd entry points -----------------------------------------------------------------
function Tensor:requires_grad_(on)
    if on == nil then on = true end
    if on and not (self._c.dtype == C.NC_F32) then
        error('requires_grad_: only f32 tensors can require grad, got ' .. self:dtype(), 2)
    end
    self.requires_grad = on and true or false
    return self
end

function Tensor:backward(grad, opts) ag.backward(self, grad, opts) end
function Tensor:retain_grad() self._retain_grad = true; return self end
function Tensor:zero_grad() self.grad = nil end
function Tensor:is_leaf() return self._node == nil end

-- A tensor sharing storage with self, cut from the graph.
function Tensor:detach()
    local p = C.nc_tensor_view_as_strided(self._c, self._c.ndim, self._c.shape, self._c.strides, self._c.offset)
    return wrap(p, 'detach')
end

-- ---- in-place data ops (no autograd: they act on data, like torch's no_grad updates) --------
function Tensor:fill_(v) check(C.nc_tensor_fill(self._c, v), 'fill_'); return self end
function Tensor:zero_() return self:fill_(0) end
function Tensor:copy_(src)
    if type(src) == 'number' then return self:fill_(src) end
    check(C.nc_tensor_copy(self._c, src._c), 'copy_')
    return self
end
-- self += alpha * src (src broadcast to self); used by the autograd engine and optimizers
function Tensor:add_scaled_(src, alpha)
    check(C.nc_add_scaled(self._c, src._c, alpha or 1), 'add_scaled_')
    return self
end

-- ---- views (with autograd) -----------------------------------------------------------------
-- g_view(ga) must return the view of the input's gradient that matches the output.
-- reshape: the view keeps the element order (view/reshape/unsqueeze/squeeze), so a contiguous
-- gout can become x's gradient buffer itself, viewed with x's shape (ag.take), when x has none yet.
local function record_view(out, x, g_view, reshape)
    if ag.needs(x) then
        ag.record(out, { x }, function(gout)
            if reshape and rawget(x, 'grad') == nil and x.requires_grad and ag.take(gout) then
                x.grad = gout:_raw_view(x:shape())
                return
            end
            local ga = ag.grad_of(x)
            if ga then check(C.nc_add_scaled(g_view(ga)._c, gout._c, 1), 'view backward') end
        end)
    end
    return out
end

function Tensor:view(shape, ...)
    local n, buf = to_shape(shape, ...)
    local out = wrap(C.nc_tensor_view_reshape(self._c, n, buf), 'view')
    -- the input's gradient buffer is contiguous with the input's shape: view it like the output
    return record_view(out, self, function(ga) return ga:_raw_view(out:shape()) end, true)
end

-- reshape: a view when the strides allow, else a contiguous copy
function Tensor:reshape(shape, ...)
    local n, buf = to_shape(shape, ...)
    local p = C.nc_tensor_view_reshape(self._c, n, buf)
    if p == nil then
        C.nc_clear_error()
        return self:contiguous():view(shape, ...)
    end
    local out = wrap(p, 'reshape')
    return record_view(out, self, function(ga) return ga:_raw_view(out:shape()) end, true)
end

-- a reshape view without autograd (for gradient buffers)
function Tensor:_raw_view(shape)
    local n, buf = to_shape(shape)
    return wrap(C.nc_tensor_view_reshape(self._c, n, buf), 'view')
end

function Tensor:flatten(start_dim, end_dim)
    local s = self:shape()
    local nd = #s
    if nd == 0 then return self:reshape { 1 } end
    start_dim = start_dim and norm_dim(self, start_dim) or 0
    end_dim = end_dim and norm_dim(self, end_dim) or nd - 1
    local out, prod = {}, 1
    for i = 0, nd - 1 do
        if i < start_dim or i > end_dim then out[#out + 1] = s[i + 1]
        else
            prod = prod * s[i + 1]
            if i == end_dim then out[#out + 1] = prod end
        end
    end
    return self:reshape(out)
end

function Tensor:permute(perm, ...)
    if type(perm) == 'number' then perm = { perm, ... } end
    local nd = self._c.ndim
    if #perm ~= nd then error(string.format('permute: expected %d dims in the permutation, got %d', nd, #perm), 2) end
    for i = 1, nd do perm_buf[i - 1] = perm[i] end
    local out = wrap(C.nc_tensor_view_permute(self._c, perm_buf), 'permute')
    local p = {}
    for i = 1, nd do p[i] = perm[i] end
    return record_view(out, self, function(ga)
        for i = 1, nd do perm_buf[i - 1] = p[i] end
        return wrap(C.nc_tensor_view_permute(ga._c, perm_buf), 'permute')
    end)
end

function Tensor:transpose(d0, d1)
    d0, d1 = d0 or 0, d1 or 1
    local out = wrap(C.nc_tensor_view_transpose(self._c, d0, d1), 'transpose')
    return record_view(out, self, function(ga)
        return wrap(C.nc_tensor_view_transpose(ga._c, d0, d1), 'transpose')
    end)
end

-- matrix transpose of the last two dims
function Tensor:t() return self:transpose(-2, -1) end

function Tensor:narrow(dim, start, length)
    local out = wrap(C.nc_tensor_view_narrow(self._c, dim, start, length), 'narrow')
    return record_view(out, self, function(ga)
        return wrap(C.nc_tensor_view_narrow(ga._c, dim, start, length), 'narrow')
    end)
end

function Tensor:select(dim, index)
    local out = wrap(C.nc_tensor_view_select(self._c, dim, index), 'select')
    return record_view(out, self, function(ga)
        return wrap(C.nc_tensor_view_select(ga._c, dim, index), 'select')
    end)
end

function Tensor:unsqueeze(dim)
    local out = wrap(C.nc_tensor_view_unsqueeze(self._c, dim), 'unsqueeze')
    return record_view(out, self, function(ga) return ga:_raw_view(out:shape()) end, true)
end

function Tensor:squeeze(dim)
    if dim == nil then
        local s = {}
        for _, n in ipairs(self:shape()) do if n ~= 1 then s[#s + 1] = n end end
        return self:reshape(s)
    end
    local out = wrap(C.nc_tensor_view_squeeze(self._c, dim), 'squeeze')
    return record_view(out, self, function(ga) return ga:_raw_view(out:shape()) end, true)
end

-- expand: the gradient sums over broadcast dims
function Tensor:expand(shape, ...)
    local n, buf = to_shape(shape, ...)
    local out = wrap(C.nc_tensor_view_expand(self._c, n, buf), 'expand')
    if ag.needs(self) then
        local x = self
        ag.record(out, { x }, function(gout)
            local ga = ag.grad_of(x)
            if ga then check(C.nc_sum_to(ga._c, gout._c, 1), 'expand backward') end
        end)
    end
    return out
end

function Tensor:expand_as(other) return self:expand(other:shape()) end

-- ---- copies (with autograd) ----------------------------------------------------------------
local function record_copy(out, x)
    if ag.needs(x) then
        ag.record(out, { x }, function(gout)
            local ga = ag.grad_of(x)
            if ga then
                if gout._c.device ~= ga._c.device then gout = gout:to(ga:device()) end
                check(C.nc_add_scaled(ga._c, gout._c, 1), 'copy backward')
            end
        end)
    end
    return out
end

function Tensor:contiguous()
    if C.nc_tensor_is_contiguous(self._c) == 1 then return self end
    local p = C.nc_tensor_new_clone(self._c)
    local out = wrap(p, 'contiguous')
    pressure(bytes_of(p))
    return record_copy(out, self)
end

function Tensor:clone()
    local p = C.nc_tensor_new_clone(self._c)
    local out = wrap(p, 'clone')
    pressure(bytes_of(p))
    return record_copy(out, self)
end

-- t:to('cuda'), t:to('f64'), t:to{dtype='bf16', device='cpu'}, t:to('cpu', 'f32')
function Tensor:to(a, b)
    local dtype, device = -1, -1
    local function take(x)
        if x == nil then return end
        if type(x) == 'table' then
            if x.dtype then dtype = dtype_id(x.dtype) end
            if x.device then device = device_id(x.device) end
        elseif core.device_ids[x] then device = core.device_ids[x]
        else dtype = dtype_id(x) end
    end
    take(a)
    take(b)
    if (dtype < 0 or dtype == self._c.dtype) and (device < 0 or device == self._c.device) then return self end
    local p = C.nc_tensor_new_to(self._c, dtype, device)
    local out = wrap(p, 'to')
    pressure(bytes_of(p))
    if out._c.dtype == C.NC_F32 and self._c.dtype == C.NC_F32 then record_copy(out, self) end
    return out
end

function Tensor:float() return self:to('f32') end
function Tensor:long() return self:to('i64') end
function Tensor:cuda() return self:to('cuda') end
function Tensor:cpu() return self:to('cpu') end

-- ---- element access ------------------------------------------------------------------------
local idx_buf = ffi.new('int64_t[8]')
local val_buf = ffi.new('double[1]')

function Tensor:get(...)
    local n = select('#', ...)
    if n ~= self._c.ndim then error(string.format('get: expected %d indices, got %d', self._c.ndim, n), 2) end
    for i = 1, n do idx_buf[i - 1] = select(i, ...) end
    check(C.nc_tensor_get(self._c, idx_buf, val_buf), 'get')
    return val_buf[0]
end

function Tensor:set(...)
    local n = select('#', ...) - 1
    if n ~= self._c.ndim then error(string.format('set: expected %d indices and a value', self._c.ndim), 2) end
    for i = 1, n do idx_buf[i - 1] = select(i, ...) end
    check(C.nc_tensor_set(self._c, idx_buf, (select(n + 1, ...))), 'set')
    return self
end

function Tensor:item()
    if self:numel() ~= 1 then
        error('item: expected a 1-element tensor, got shape (' .. table.concat(self:shape(), ', ') .. ')', 2)
    end
    local buf = ffi.new('double[1]')
    check(C.nc_tensor_read_f64(self._c, buf, 1), 'item')
    return buf[0]
end

-- flat list of values in logical order (1-based Lua list)
function Tensor:tolist()
    local n = self:numel()
    local buf = ffi.new('double[?]', math.max(n, 1))
    check(C.nc_tensor_read_f64(self._c, buf, n), 'tolist')
    local out = {}
    for i = 0, n - 1 do out[i + 1] = buf[i] end
    return out
end

-- nested Lua tables (a number for a scalar)
function Tensor:totable()
    local flat, shape = self:tolist(), self:shape()
    if #shape == 0 then return flat[1] end
    local pos = 0
    local function build(d)
        local out = {}
        for i = 1, shape[d] do
            if d == #shape then pos = pos + 1; out[i] = flat[pos]
            else out[i] = build(d + 1) end
        end
        return out
    end
    return build(1)
end

-- ---- from Lua data --------------------------------------------------------------------------
-- nested tables (or a number) -> tensor
function Tensor.from_table(data, dtype, device)
    local shape, flat = {}, {}
    if type(data) == 'number' or type(data) == 'boolean' then
        flat[1] = data == true and 1 or data == false and 0 or data
    else
        local d = data
        while type(d) == 'table' do
            shape[#shape + 1] = #d
            d = d[1]
        end
        local function walk(x, depth)
            if depth > #shape then
                if type(x) == 'boolean' then x = x and 1 or 0 end
                if type(x) ~= 'number' then error('tensor: expected numbers, got ' .. type(x), 4) end
                flat[#flat + 1] = x
                return
            end
            if type(x) ~= 'table' or #x ~= shape[depth] then
                error(string.format('tensor: ragged nested table: expected %d entries at depth %d', shape[depth], depth), 4)
            end
            for i = 1, #x do walk(x[i], depth + 1) end
        end
        walk(data, 1)
    end
    local n = #flat
    local buf = ffi.new('double[?]', math.max(n, 1))
    for i = 1, n do buf[i - 1] = flat[i] end
    local t = Tensor.empty(shape, dtype, 'cpu')
    check(C.nc_tensor_write_f64(t._c, buf, n), 'tensor')
    if device and device_id(device) ~= 0 then t = t:to(device) end
    return t
end

-- ---- printing --------------------------------------------------------------------------------
function Tensor.__tostring(t)
    local ok, pretty = pcall(require, 'nanochat.pretty')
    if ok and pretty.tensor then return pretty.tensor(t) end
    return string.format('Tensor(shape=(%s), dtype=%s, device=%s)', table.concat(t:shape(), ', '), t:dtype(), t:device())
end

-- ---- operators (the functions come from the ops modules merged by init.lua) -----------------
Tensor.__add = function(a, b) return Tensor.add(a, b) end
Tensor.__sub = function(a, b) return Tensor.sub(a, b) end
Tensor.__mul = function(a, b) return Tensor.mul(a, b) end
Tensor.__div = function(a, b) return Tensor.div(a, b) end
Tensor.__pow = function(a, b) return Tensor.pow(a, b) end
Tensor.__unm = function(a) return Tensor.neg(a) end

return Tensor
