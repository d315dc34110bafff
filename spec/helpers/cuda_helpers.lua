-- spec/helpers/cuda_helpers.lua — what the CUDA specs share: whether a GPU is here, an `it` that is
-- pending without one, and headers that claim a device over host memory (for the device checks
-- that run before any data is read, so they can be tested without a GPU).
local nc = require 'nanochat'
local ffi = require('nanochat.core').ffi

local M = {}
M.HAVE_CUDA = nc.cuda_available()
M.WHY = nc.cuda_status()

-- `it` that is pending (inside the test) when there is no GPU (busted's it / pending live in the
-- calling spec's environment, not in this module's)
function M.gpu_it(name, fn)
    local env = getfenv(2)
    env.it(name, function()
        if not M.HAVE_CUDA then
            env.pending('no CUDA GPU: ' .. M.WHY)
            return
        end
        fn()
    end)
end

-- A header that claims `device` (a C device id) over t's host storage, kept alive with t for the
-- rest of the run. Only ever pass it to entry points whose device check fails before any data is read.
local keep = {}
function M.claim(t, device)
    local h = ffi.new('nc_tensor[1]')
    ffi.copy(h, t._c, ffi.sizeof('nc_tensor'))
    h[0].device = device
    h[0].refcount = 1
    keep[#keep + 1] = { h, t }
    return h
end

return M
