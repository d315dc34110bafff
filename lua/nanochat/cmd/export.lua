-- lua/nanochat/cmd/export.lua — `nanochat export CKPT out.gguf [type=tq2_0|tq1_0] [tok=FILE] [arch=nanochat]
-- [loop=unroll|keep]`
--
-- Promise: packs the checkpoint dir and writes it as a GGUF (lua/nanochat/export.lua): under
-- llama.cpp's `bitnet` architecture when export.arch_for says llama.cpp can express the model
-- (e.g. configs/models/dense.lua, or configs/models/loop_dense.lua unrolled), else under our own
-- 'nanochat' key (printing why). A LoopLM is unrolled (prelude, shared x T, coda as plain layers,
-- no exit gate: the full-depth model) when that makes it bitnet-expressible, else kept looped;
-- loop= overrides; an unrolled export prints what the repeated shared blocks cost. The
-- checkpoint's tokenizer (tok=FILE, or tokenizer.tok / tokenizer.bin next to it, as `nanochat
-- chat` finds it) is embedded as tokenizer.ggml.*; without one the file carries token ids only.
-- `nanochat chat` / `generate` load both kinds. Prints the file size and the arch.
local USAGE = 'usage: nanochat export CKPT out.gguf [type=tq2_0|tq1_0] [tok=FILE] [arch=nanochat] [loop=unroll|keep]'

return function(kv, pos)
    local nc = require 'nanochat'
    local ckpt, out = pos[1], pos[2]
    if not ckpt or not out then error(USAGE, 0) end
    local ok, tok = pcall(require('nanochat.engine').tokenizer_for, ckpt, { tok = kv.tok })
    if not ok then
        if kv.tok then error(tok, 0) end
        tok = nil
    end
    local bytes, info = nc.export.gguf(ckpt, out, { type = kv.type, tokenizer = tok, arch = kv.arch, loop = kv.loop })
    print(string.format('wrote %s (%d bytes, arch %s, %s)', out, bytes, info.arch, info.main_type))
    if info.arch ~= 'bitnet' and #info.why.bitnet == 0 then
        print('written under our own arch on request (without arch=, llama.cpp\'s bitnet arch would be used)')
    elseif info.arch ~= 'bitnet' then
        print('not llama.cpp-loadable (bitnet arch) because: ' .. table.concat(info.why.bitnet, '; '))
    else
        print('llama.cpp loads this file (arch bitnet)')
    end
    if info.unroll then
        local u = info.unroll
        print(string.format('LoopLM unrolled: %d layers from %d unique blocks (exit gate dropped: the full-depth model); ' ..
            'the repeated shared blocks cost %d bytes (+%.0f%% over the %d bytes with each block once)', u.layers, u.unique,
            u.repeated_bytes, 100 * u.repeated_bytes / u.looped_bytes, u.looped_bytes))
    elseif info.loop == 'keep' then
        print('LoopLM kept looped (cfg.loop and the exit gate in the file; our engine only)')
    end
    local c = info.cfg
    if c and c.mhc then
        print(string.format('mHC written: %d streams, %s%s, coefficient parameters in f32 (nanochat.mhc.*, blk.N.mhc_*)',
            c.mhc.n, c.mhc.kind, c.mhc.dynamic and ' dynamic' or ' static'))
    end
    if c and c.mtp then
        print(string.format('MTP written: %d %s module(s) (nanochat.mtp.*, mtp.K.*): self-speculative drafting after reload',
            c.mtp.depth, c.mtp.kind))
    end
    for _, w in ipairs(info.warnings) do print('warning: ' .. w) end
    return 0
end
