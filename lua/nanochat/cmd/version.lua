-- lua/nanochat/cmd/version.lua — `nanochat version`: the library version, LuaJIT and CPU kernel.
--
-- Promise: prints "nanochat <version>" on the first line (what scripts may parse), then one
-- informational line; exit status 0. A subcommand module returns function(kv, positional, argv).
return function(kv, positional)
    local nc = require 'nanochat'
    print('nanochat ' .. nc.version)
    local ok, kernel = pcall(nc.cpu_kernel)
    local tok, tkernel = pcall(nc.infer.kernel)
    print(string.format('%s, cpu kernel %s (packed ternary %s), cuda %s', jit and jit.version or _VERSION,
        ok and kernel or '?', tok and tkernel or '?', nc.cuda_available() and 'available' or 'not available'))
    return 0
end
