-- spec/core/abi_spec.lua — the FFI view of the ABI comes from the header and matches the library.
package.path = 'lua/?.lua;lua/?/init.lua;' .. package.path
local nc = require 'nanochat'
local core = nc.core
local ffi = core.ffi

describe('ABI', function()
    it('the FFI region of core/nanochat.h has no preprocessor lines', function()
        local region = core.ffi_region()
        assert.is_true(#region > 1000)
        for line in region:gmatch('[^\n]+') do
            assert.is_nil(line:match('^%s*#'), 'preprocessor line inside the FFI region: ' .. line)
        end
    end)

    it('struct sizes and the ABI version agree between C and the FFI view', function()
        for _, ty in ipairs { 'nc_tensor', 'nc_storage', 'nc_dtype_traits', 'nc_mem_stats' } do
            assert.equals(ffi.sizeof(ty), tonumber(core.C.nc_abi_sizeof(ty)))
        end
        assert.equals(core.C.NC_ABI_VERSION, core.C.nc_abi_version())
    end)

    it('every prototype in the FFI region resolves to a symbol in the library', function()
        local missing = {}
        for name in core.ffi_region():gmatch('[%w_%*]+%s+%**(nc_[%w_]+)%s*%(') do
            local ok = pcall(function() return core.C[name] end)
            if not ok then missing[#missing + 1] = name end
        end
        assert.same({}, missing)
    end)

    it('dtype names come from the C traits table', function()
        for id = 0, core.C.NC_DTYPE_COUNT - 1 do
            assert.equals(ffi.string(core.C.nc_dtype_info(id).name), core.dtype_names[id])
        end
    end)
end)
