-- spec/helpers/settings.lua — run a function under a temporary runtime setting, restoring the previous
-- one whatever happens (errors are re-raised after the restore), returning fn's results.
--   S.with_kernel(name, fn, ...)   nc.set_cpu_kernel(name) ('scalar', 'avx2', 'avx512', 'auto')
--   S.with_threads(n, fn, ...)     nc.set_num_threads(n)
local nc = require 'nanochat'

local M = {}

local function finish(restore, ok, ...)
    restore()
    if not ok then error((...), 0) end
    return ...
end

local function around(set, restore, fn, ...)
    set()
    return finish(restore, pcall(fn, ...))
end

function M.with_kernel(name, fn, ...)
    local before = nc.cpu_kernel()
    return around(function() nc.set_cpu_kernel(name) end, function() nc.set_cpu_kernel(before) end, fn, ...)
end

function M.with_threads(n, fn, ...)
    local before = nc.get_num_threads()
    return around(function() nc.set_num_threads(n) end, function() nc.set_num_threads(before) end, fn, ...)
end

return M
