-- lua/nanochat/layers/bitlinear.lua — BitLinear (BitNet b1.58, algorithms.md §1.1-1.4).
--
-- Promise: y = Qa(xn) Qw(W)^T with
--   xn = RMSNorm(x)              when opts.norm (parameter-free: no gain, eps opts.eps), else x
--   Qa = per-token int8 absmax   (nc.quant_act: s = 127 / max|row|, round half to even, / s)
--   Qw = absmean ternary         (nc.quant_weight: gamma = mean|W| per tensor, or per group of
--                                 opts.group consecutive elements; clamp(round(W / gamma), -1, 1) * gamma)
-- and the straight-through estimator (both quantizers pass the gradient unchanged; they are
-- recorded by the ops). No bias (BitNet uses none). W (out, in) is the fp32 latent weight; gamma
-- is recomputed from it on every forward. With opts.ternary = false both quantizers are skipped
-- and the layer is a plain (optionally input-normalized) fp32 linear: the same architecture as an
-- fp32 ablation.
--
-- Where the norm sits (§1.4): the invariant is that the input of every ternary matmul is RMS-
-- normalized. The GPT block normalizes once before q/k/v (and before the MLP up projection), so
-- those layers are built with norm = false and share one quantized input through
-- BitLinear.prepare(x, opts) + layer:forward_prepared(xq); the output projections (wo, w2) see
-- an un-normalized input and normalize it themselves (norm = true) unless the model puts a
-- learnable SubLN RMSNorm in front of them.
--
-- Matmul backend (opts.matmul, gpt cfg.matmul): 'fp32' (the composite path above: fake-quantized
-- f32 tensors through sgemm), 'auto' (nc.bitlinear when nc.cpu_gemm_fast(): Intel AMX tiles, or the
-- AVX-512 BF16 + VNNI kernels without AMX (AMD Zen 4, Intel Cooper Lake ...): the forward as an
-- exact int8 x ternary GEMM, dX and dW as bf16 GEMMs with f32 accumulation; fp32 otherwise) or
-- 'amx' (as 'auto', plus a one-time note on stderr when neither exists and fp32 runs instead; the
-- name predates the AVX-512 kernels).
-- Inference with a weight snapshot (snap) always takes the composite path.
--
-- Init: W ~ N(0, opts.std) (default 0.02) from opts.generator (an nc.generator) or the global one.
local Module = require('nanochat.nn').Module

local function nc() return require 'nanochat' end

local BitLinear = Module:extend('BitLinear')

function BitLinear:init(in_features, out_features, opts)
    opts = opts or {}
    if type(in_features) ~= 'number' or type(out_features) ~= 'number' then
        error('BitLinear: expected (in_features, out_features[, opts])', 3)
    end
    self.in_features, self.out_features = in_features, out_features
    self.ternary = opts.ternary ~= false
    self.norm = opts.norm and true or false
    self.eps = opts.eps or 1e-6
    self.group = opts.group or 0
    self.matmul = BitLinear.check_matmul(opts.matmul, 'BitLinear')
    if self.group ~= 0 and (in_features * out_features) % self.group ~= 0 then
        error(string.format('BitLinear: quant group %d does not divide the %d x %d weight', self.group,
            out_features, in_features), 3)
    end
    self:param('weight', nc().randn({ out_features, in_features },
        { std = opts.std or 0.02, generator = opts.generator, device = opts.device }))
end

BitLinear.MATMUL = { fp32 = true, auto = true, amx = true }

-- validated matmul backend name (nil -> 'fp32'); `who` names the caller in the error
function BitLinear.check_matmul(m, who)
    if m == nil then return 'fp32' end
    if not BitLinear.MATMUL[m] then
        error(string.format("%s: matmul must be 'fp32', 'auto' or 'amx', got %s", who, tostring(m)), 3)
    end
    return m
end

local warned_amx = false
-- true when layers with matmul backend m run on AMX now
function BitLinear.use_amx(m)
    if m == 'fp32' or m == nil then return false end
    if nc().cpu_gemm_fast() then return true end
    if m == 'amx' and not warned_amx then
        warned_amx = true
        io.stderr:write('nanochat: matmul = amx requested, running fp32: GEMM backend ' .. nc().gemm_backend() ..
            '; ' .. nc().amx_status() .. '\n')
    end
    return false
end

-- The (normalized, quantized) input a BitLinear consumes; layers built with norm = false can
-- share one prepare() of the same tensor. opts: norm (false), ternary (true), eps (1e-6),
-- matmul ('fp32'). On the AMX path the result is nc.bitlinear_act(x) (int8 codes and scales, a
-- table) instead of the fake-quantized tensor; forward_prepared accepts either.
function BitLinear.prepare(x, opts)
    local n = nc()
    if opts.norm then x = n.rmsnorm(x, nil, opts.eps or 1e-6) end
    if opts.ternary ~= false then
        if BitLinear.use_amx(opts.matmul) then return n.bitlinear_act(x) end
        x = (n.quant_act(x))
    end
    return x
end

-- The weight the matmul uses: Qw(W) through the STE when ternary, else W. The quantizer is looked
-- up on nc at call time (a spec swaps it to check the STE gradient). snap (optional, a table):
-- inference snapshot — the first call stores Qw(W) (no autograd) in snap[self] and later calls
-- reuse it, so decoding does not re-quantize every matrix per token (a KV cache carries one).
function BitLinear:effective_weight(snap)
    if not self.ternary then return self.weight end
    if snap then
        local w = snap[self]
        if not w then
            w = nc().no_grad(function() return (nc().quant_weight(self.weight, { group_size = self.group })) end)
            snap[self] = w
        end
        return w
    end
    return (nc().quant_weight(self.weight, { group_size = self.group }))
end

-- y = xq Wq^T for an input already passed through prepare() with this layer's settings
function BitLinear:forward_prepared(xq, snap)
    local n = nc()
    if type(xq) == 'table' and not n.Tensor.is(xq) then   -- nc.bitlinear_act(x) (AMX path)
        if snap or not self.ternary then
            return n.linear(xq.xq or (n.quant_act(xq.x)), self:effective_weight(snap))
        end
        return n.bitlinear(xq, self.weight, { group_size = self.group })
    end
    return n.linear(xq, self:effective_weight(snap))
end

function BitLinear:forward(x, snap)
    return self:forward_prepared(BitLinear.prepare(x, self), snap)
end

-- Ternary codes and scales for export/inspection (no gradient): codes (out, in) f32 in {-1, 0, 1},
-- gamma (groups) f32. Wq = gamma * codes.
function BitLinear:ternary_weight()
    local n = nc()
    return n.no_grad(function()
        local wq, gamma = n.quant_weight(self.weight, { group_size = self.group })
        if self.group == 0 then return wq / gamma:item(), gamma end
        local g = self.group
        local codes = (wq:reshape { -1, g } / gamma:reshape { -1, 1 }):reshape(self.weight:shape())
        return codes, gamma
    end)
end

function BitLinear:extra_repr()
    return string.format('in=%d, out=%d, ternary=%s, norm=%s%s%s', self.in_features, self.out_features,
        tostring(self.ternary), tostring(self.norm), self.group ~= 0 and (', group=' .. self.group) or '',
        self.matmul ~= 'fp32' and (', matmul=' .. self.matmul) or '')
end

return BitLinear
