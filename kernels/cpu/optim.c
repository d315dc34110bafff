/* kernels/cpu/optim.c — fused optimizer steps: AdamW, Lion, Muon (f32 and 8-bit blockwise
 * momentum), GaLore (AdamW / Muon / 8-bit Muon / Lion inside a low-rank projection), and the
 * blockwise 8-bit quantizer (algorithms.md §2-§5).
 *
 * Promise: one pass over memory per elementwise update (AdamW and Lion read p, g, state once and
 * write them once); OpenMP over elements or over 8-bit blocks; no result depends on the thread
 * count (per-element math, per-block absmax, chunked Frobenius norms, Philox counters indexed by
 * element). The 8-bit momentum is dequantized, updated and requantized block by block inside the
 * step; the only full-precision copy is the transient Newton-Schulz input buffer, freed (returned
 * to the host block cache) before the call returns.
 *
 * Devices: every entry point takes CPU tensors or CUDA tensors (all of one call on one device;
 * mixing is an NC_ERR_DEVICE error naming the op and each tensor's device). For CUDA tensors the
 * same argument checks run here, the constants are computed here exactly as for the CPU, and the
 * work goes to the CUDA backend (core/backend.h optimizer entries, kernels/cuda/optim.cu):
 * elementwise results are the CPU's bits; Newton-Schulz and GaLore's projections use cuBLAS sgemm
 * (agreement within f32 tolerance; the CPU's bf16 Newton-Schulz, hp->ns_dtype, has no CUDA
 * version: CUDA tensors always get f32). Transient CUDA buffers are device tensors freed on return.
 * nc_muon_step_many: a step's matrices in one call (CPU + bf16 NS: one matrix per thread).
 */
#pragma GCC optimize("no-math-errno", "no-trapping-math")

#include "optim_internal.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Elementwise passes next to OpenBLAS calls (Muon, 8-bit Muon, GaLore) go parallel only from
 * this size on: an OpenMP region right before or after an sgemm leaves OpenMP workers spinning
 * on the cores OpenBLAS's threads need (a 384 x 96 Muon step: 7.2 ms with NC_PAR_MIN, 1.3 ms
 * serial, on 2 threads). Below it a pass costs < ~0.3 ms. */
#define NC_OPTIM_PAR_MIN (1 << 20)

/* ---- devices (helpers declared in optim_internal.h) -------------------------------------------- */
#define DEV2(a, b) nc_check_one_device(op, &dev, 2, (const char *const[]){ #a, #b }, (const nc_tensor *const[]){ a, b })
#define DEV3(a, b, c) nc_check_one_device(op, &dev, 3, (const char *const[]){ #a, #b, #c }, (const nc_tensor *const[]){ a, b, c })
#define DEV4(a, b, c, d) \
    nc_check_one_device(op, &dev, 4, (const char *const[]){ #a, #b, #c, #d }, (const nc_tensor *const[]){ a, b, c, d })

/* ---- argument checks ---------------------------------------------------------------------- */
static nc_status want_f32(const char *op, const char *arg, const nc_tensor *t, int32_t dev) {
    NC_TRY(nc_check_not_null(op, arg, t));
    NC_TRY(nc_check_dtype(op, arg, t, NC_F32));
    NC_TRY(nc_check_device(op, arg, t, dev));
    return nc_check_contiguous(op, arg, t);
}

static nc_status want_numel(const char *op, const char *arg, const nc_tensor *t, int64_t n) {
    if (nc_tensor_numel(t) != n) {
        char b[NC_DESC_LEN];
        return nc_fail(NC_ERR_SHAPE, "%s: %s must have %lld elements (like the parameter), got %s", op, arg,
                       (long long)n, nc_describe(t, b, sizeof b));
    }
    return NC_OK;
}

static nc_status check_pg(const char *op, const nc_tensor *p, const nc_tensor *g, const nc_optim_hp *hp, int32_t dev) {
    NC_TRY(want_f32(op, "p", p, dev));
    NC_TRY(want_f32(op, "g", g, dev));
    NC_TRY(want_numel(op, "g", g, nc_tensor_numel(p)));
    if (!hp) return nc_fail(NC_ERR_ARG, "%s: hp is NULL", op);
    if (!(hp->lr >= 0) || !isfinite(hp->lr)) return nc_fail(NC_ERR_ARG, "%s: lr must be finite and >= 0, got %g", op, hp->lr);
    return NC_OK;
}

static nc_status as_matrix(const char *op, const nc_tensor *p, int64_t *rows, int64_t *cols) {
    char b[NC_DESC_LEN];
    if (p->ndim < 2)
        return nc_fail(NC_ERR_SHAPE, "%s: p must be a matrix (2 or more dims), got %s", op, nc_describe(p, b, sizeof b));
    *rows = p->shape[0];
    *cols = *rows ? nc_tensor_numel(p) / *rows : 0;
    return NC_OK;
}

/* ---- AdamW --------------------------------------------------------------------------------- */
typedef nc_adam_c adam_c;   /* and adam_elem: optim_internal.h (shared with optim_avx512.c) */

static adam_c adam_consts(const nc_optim_hp *hp) {
    double t = (double)(hp->step < 1 ? 1 : hp->step);
    double bc1 = 1.0 - pow(hp->beta1, t), bc2 = 1.0 - pow(hp->beta2, t);
    adam_c c;
    c.b1 = (float)hp->beta1;
    c.b2 = (float)hp->beta2;
    c.eps = (float)hp->eps;
    c.galore = hp->eps_mode == NC_ADAM_EPS_GALORE;
    c.bc2s = (float)sqrt(bc2);
    c.coef = (float)(c.galore ? sqrt(bc2) / bc1 : 1.0 / bc1);
    return c;
}

static nc_status check_hp_adam(const char *op, const nc_optim_hp *hp) {
    if (!(hp->beta1 >= 0 && hp->beta1 < 1 && hp->beta2 >= 0 && hp->beta2 < 1))
        return nc_fail(NC_ERR_ARG, "%s: betas must lie in [0, 1), got (%g, %g)", op, hp->beta1, hp->beta2);
    if (!(hp->eps >= 0)) return nc_fail(NC_ERR_ARG, "%s: eps must be >= 0, got %g", op, hp->eps);
    if (hp->step < 1) return nc_fail(NC_ERR_ARG, "%s: step must be >= 1 (bias correction), got %lld", op, (long long)hp->step);
    return NC_OK;
}

/* the CUDA kernels' constants: the same f32 values the CPU loops use */
static nc_cuda_optc optc_of(const nc_optim_hp *hp) {
    nc_cuda_optc c;
    memset(&c, 0, sizeof c);
    adam_c a = adam_consts(hp);
    c.b1 = a.b1;
    c.b2 = a.b2;
    c.eps = a.eps;
    c.coef = a.coef;
    c.bc2s = a.bc2s;
    c.galore_eps = a.galore;
    c.mu = (float)hp->momentum;
    c.damp = (float)hp->dampening;
    c.nesterov = hp->nesterov;
    c.stochastic = hp->stochastic;
    c.map = hp->quant;
    c.block = hp->block;
    c.seed = hp->seed;
    c.counter = hp->counter;
    c.decay = (float)(1.0 - hp->lr * hp->weight_decay);
    c.step = (float)hp->lr;
    return c;
}

nc_status nc_adamw_step(nc_tensor *p, const nc_tensor *g, nc_tensor *m, nc_tensor *v, const nc_optim_hp *hp) {
    static const char *op = "adamw_step";
    int32_t dev;
    NC_TRY(DEV4(p, g, m, v));
    NC_TRY(check_pg(op, p, g, hp, dev));
    int64_t n = nc_tensor_numel(p);
    NC_TRY(want_f32(op, "m", m, dev));
    NC_TRY(want_numel(op, "m", m, n));
    NC_TRY(want_f32(op, "v", v, dev));
    NC_TRY(want_numel(op, "v", v, n));
    NC_TRY(check_hp_adam(op, hp));
    if (dev == NC_CUDA) {
        const nc_cuda_api *cu = nc_cuda_for(op);
        if (!cu) return NC_ERR_DEVICE;
        nc_cuda_optc c = optc_of(hp);
        nc_status st = cu->adam(nc_f32p(p), NULL, nc_f32p(g), nc_f32p(m), nc_f32p(v), n, &c);
        return st == NC_OK ? NC_OK : nc_cuda_err(op, cu, st);
    }
    adam_c c = adam_consts(hp);
    float decay = (float)(1.0 - hp->lr * hp->weight_decay), lr = (float)hp->lr;
    float *P = nc_f32p(p), *M = nc_f32p(m), *V = nc_f32p(v);
    const float *G = nc_f32p(g);
    if (nc_cpu_avx512()) {   /* the same loop in AVX-512 (bitwise equal; see optim_avx512.c) */
        nc_optim_adamw_avx512(P, G, M, V, n, &c, decay, lr);
        return NC_OK;
    }
#pragma omp parallel for simd schedule(static) if (n >= NC_PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        float d = adam_elem(G[i], &M[i], &V[i], &c);
        P[i] = P[i] * decay - lr * d;
    }
    return NC_OK;
}

/* ---- Lion ---------------------------------------------------------------------------------- */
static inline float signf_(float x) { return (float)((x > 0.0f) - (x < 0.0f)); }

/* updates m; returns sign(c) */
static inline float lion_elem(float g, float *m, float b1, float b2) {
    float c = b1 * *m + (1.0f - b1) * g;
    *m = b2 * *m + (1.0f - b2) * g;
    return signf_(c);
}

nc_status nc_lion_step(nc_tensor *p, const nc_tensor *g, nc_tensor *m, const nc_optim_hp *hp) {
    static const char *op = "lion_step";
    int32_t dev;
    NC_TRY(DEV3(p, g, m));
    NC_TRY(check_pg(op, p, g, hp, dev));
    int64_t n = nc_tensor_numel(p);
    NC_TRY(want_f32(op, "m", m, dev));
    NC_TRY(want_numel(op, "m", m, n));
    if (dev == NC_CUDA) {
        const nc_cuda_api *cu = nc_cuda_for(op);
        if (!cu) return NC_ERR_DEVICE;
        nc_cuda_optc c = optc_of(hp);
        nc_status st = cu->lion(nc_f32p(p), NULL, nc_f32p(g), nc_f32p(m), n, &c);
        return st == NC_OK ? NC_OK : nc_cuda_err(op, cu, st);
    }
    float b1 = (float)hp->beta1, b2 = (float)hp->beta2;
    float decay = (float)(1.0 - hp->lr * hp->weight_decay), lr = (float)hp->lr;
    float *P = nc_f32p(p), *M = nc_f32p(m);
    const float *G = nc_f32p(g);
#pragma omp parallel for simd schedule(static) if (n >= NC_PAR_MIN)
    for (int64_t i = 0; i < n; i++) P[i] = P[i] * decay - lr * lion_elem(G[i], &M[i], b1, b2);
    return NC_OK;
}

/* ---- 8-bit blockwise codes ------------------------------------------------------------------- */
/* uniform [0, 1) for element i from Philox(seed, counter + i / 4), lane i % 4 */
static inline float sr_uniform(uint64_t seed, uint64_t counter, int64_t i) {
    uint32_t r[4];
    nc_philox4x32(seed, counter + (uint64_t)(i >> 2), r);
    return (float)(r[i & 3] >> 8) * (1.0f / 16777216.0f);
}

/* The block's absmax scale. 0 when it is all zero, inf / NaN when it holds a non-finite value:
 * then the codes are already written (all 0) and the caller returns the scale as it is — a
 * non-finite block keeps its inf / NaN scale, so the corruption is visible instead of silently
 * zeroed. Returns 1 when the caller must quantize. */
static inline int block_scale(int8_t *codes, const float *x, int64_t len, float *scale) {
    float amax = 0.0f;
    for (int64_t i = 0; i < len; i++) {
        float a = fabsf(x[i]);
        amax = a > amax ? a : amax;
    }
    if (!(amax > 0.0f) || !isfinite(amax)) {
        if (len > 0) memset(codes, 0, (size_t)len);
        *scale = amax > 0.0f || amax != amax ? amax : 0.0f;
        return 0;
    }
    *scale = amax;
    return 1;
}

/* quantize x[0..len) (global element offset base) into codes; returns the block scale */
static inline float quant_block(int8_t *codes, const float *x, int64_t len, int64_t base, int stochastic,
                                uint64_t seed, uint64_t counter) {
    float amax;
    if (!block_scale(codes, x, len, &amax)) return amax;
    float inv = 127.0f / amax;
    if (stochastic) {
        for (int64_t i = 0; i < len; i++) {
            float q = floorf(x[i] * inv + sr_uniform(seed, counter, base + i));
            q = q > 127.0f ? 127.0f : (q < -127.0f ? -127.0f : q);
            codes[i] = (int8_t)q;
        }
    } else {
        for (int64_t i = 0; i < len; i++) {
            float q = rintf(x[i] * inv);
            q = q > 127.0f ? 127.0f : (q < -127.0f ? -127.0f : q);
            codes[i] = (int8_t)q;
        }
    }
    return amax;
}

/* ---- 8-bit code maps (nanochat.h, enum nc_quant8_map) ------------------------------------------
 * A code map is 128 ascending magnitudes mag[0] = 0 ... mag[127] = 1; code c in [-127, 127] means
 * sign(c) mag[|c|] s_b. LINEAR keeps its own arithmetic (code * s_b / 127, round(127 x / s_b)) so
 * its bits never change; DYNAMIC searches the table. */
/* R of the dynamic map: group z spans (R^(z+1), R^z]. 0.4 was picked by a scan of R in
 * {0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5} on spec/optim/muon8_spec.lua's least-squares run
 * (best update cosine to fp32 Muon at 0.4) and the round-trip error of Gaussian / heavy-tailed
 * blocks (README "Optimizers"). R = 0.5 would be the linear map again (binary fractions). */
#define NC_DYN_BASE 0.4

/* code_map = core/backend.h nc_code_map (the CUDA kernels get this very table):
 *   mag[128]: magnitudes; mid[128]: mid[j] = (mag[j] + mag[j + 1]) / 2, the nearest-entry
 *   thresholds, mid[127] = 2; lut[NC_MAP_BINS + 1]: lut[b] = number of mid[j] < b / NC_MAP_BINS,
 *   the search start. */
typedef nc_code_map code_map;

static void build_map(code_map *cm, int32_t map) {
    cm->mag[0] = 0.0f;
    for (int k = 1; k < 128; k++) {
        if (map == NC_QUANT8_DYNAMIC) {
            int top = 0;   /* floor(log2 k) */
            while ((k >> (top + 1)) != 0) top++;
            int z = 6 - top, nf = 1 << top, f = k - nf;
            double hi = pow(NC_DYN_BASE, z), lo = hi * NC_DYN_BASE;
            cm->mag[k] = (float)(lo + (hi - lo) * (double)(f + 1) / (double)nf);
        } else {
            cm->mag[k] = (float)((double)k / 127.0);
        }
    }
    cm->mag[127] = 1.0f;
    for (int j = 0; j < 127; j++) cm->mid[j] = 0.5f * (cm->mag[j] + cm->mag[j + 1]);
    cm->mid[127] = 2.0f;   /* sentinel: no a in [0, 1] passes it */
    for (int b = 0, k = 0; b <= NC_MAP_BINS; b++) {
        float lo = (float)b / (float)NC_MAP_BINS;
        while (k < 127 && cm->mid[k] < lo) k++;
        cm->lut[b] = (uint8_t)k;
    }
}

/* the map, built once per process (a benign race: every thread writes the same bytes) */
static const code_map *get_map(int32_t map) {
    static code_map maps[2];
    static volatile int ready[2];
    int i = map == NC_QUANT8_DYNAMIC;
    if (!ready[i]) {
        code_map tmp;
        build_map(&tmp, map);
        maps[i] = tmp;
        __atomic_store_n(&ready[i], 1, __ATOMIC_RELEASE);
    }
    return &maps[i];
}

/* index of the nearest magnitude to a in [0, 1] (ties to the smaller one) = the number of mid[j]
 * < a: start at the count below a's bin and step up (the bins are narrower than the gaps between
 * thresholds, so this is 0 or 1 step; the loop keeps it exact regardless) */
static inline int map_nearest(const code_map *cm, float a) {
    int k = cm->lut[(int)(a * (float)NC_MAP_BINS)];
    while (cm->mid[k] < a) k++;
    return k;
}

/* stochastic: the entry below or above a, the upper one with probability (a - lo) / (hi - lo) */
static inline int map_stochastic(const code_map *cm, float a, float u) {
    int k = map_nearest(cm, a);
    int lo = cm->mag[k] <= a ? k : k - 1;   /* the largest j with mag[j] <= a */
    if (lo >= 127) return 127;
    float d = cm->mag[lo + 1] - cm->mag[lo];
    return u * d < a - cm->mag[lo] ? lo + 1 : lo;
}

static inline float map_decode(const code_map *cm, int8_t c) {
    int k = c < 0 ? -(int)c : (int)c;
    float v = cm->mag[k > 127 ? 127 : k];
    return c < 0 ? -v : v;
}

/* quant_block for any map */
static inline float quant_block_map(int8_t *codes, const float *x, int64_t len, int64_t base, int stochastic,
                                    uint64_t seed, uint64_t counter, int32_t map) {
    if (map != NC_QUANT8_DYNAMIC) return quant_block(codes, x, len, base, stochastic, seed, counter);
    float amax;
    if (!block_scale(codes, x, len, &amax)) return amax;
    const code_map *cm = get_map(map);
    float inv = 1.0f / amax;
    for (int64_t i = 0; i < len; i++) {
        float a = fabsf(x[i]) * inv;
        a = a > 1.0f ? 1.0f : (a >= 0.0f ? a : 0.0f);   /* NaN -> 0 */
        int k = stochastic ? map_stochastic(cm, a, sr_uniform(seed, counter, base + i)) : map_nearest(cm, a);
        codes[i] = (int8_t)(x[i] < 0.0f ? -k : k);
    }
    return amax;
}

static nc_status check_map(const char *op, int32_t map) {
    if (map != NC_QUANT8_LINEAR && map != NC_QUANT8_DYNAMIC)
        return nc_fail(NC_ERR_ARG, "%s: quant (code map) must be NC_QUANT8_LINEAR (0) or NC_QUANT8_DYNAMIC (1), got %d",
                       op, map);
    (void)get_map(map);   /* built here, before any parallel region reads it */
    return NC_OK;
}

nc_status nc_quant8_codebook(nc_tensor *out, int32_t map) {
    static const char *op = "quant8_codebook";
    NC_TRY(check_map(op, map));
    NC_TRY(want_f32(op, "out", out, NC_CPU));
    NC_TRY(want_numel(op, "out", out, 128));
    memcpy(nc_f32p(out), get_map(map)->mag, sizeof(float) * 128);
    return NC_OK;
}

static nc_status check_codes(const char *op, const nc_tensor *codes, const nc_tensor *scales, int64_t n, int64_t block,
                             int32_t dev) {
    if (block < 1) return nc_fail(NC_ERR_ARG, "%s: block must be >= 1, got %lld", op, (long long)block);
    NC_TRY(nc_check_not_null(op, "codes", codes));
    NC_TRY(nc_check_dtype(op, "codes", codes, NC_I8));
    NC_TRY(nc_check_device(op, "codes", codes, dev));
    NC_TRY(nc_check_contiguous(op, "codes", codes));
    NC_TRY(want_numel(op, "codes", codes, n));
    NC_TRY(want_f32(op, "scales", scales, dev));
    int64_t nb = (n + block - 1) / block;
    if (nc_tensor_numel(scales) != nb) {
        char b[NC_DESC_LEN];
        return nc_fail(NC_ERR_SHAPE, "%s: scales must have ceil(%lld / %lld) = %lld elements, got %s", op,
                       (long long)n, (long long)block, (long long)nb, nc_describe(scales, b, sizeof b));
    }
    return NC_OK;
}

nc_status nc_quant8_block(nc_tensor *codes, nc_tensor *scales, const nc_tensor *x, int64_t block, int32_t stochastic,
                          uint64_t seed, uint64_t counter) {
    return nc_quant8_block_map(codes, scales, x, block, stochastic, seed, counter, NC_QUANT8_LINEAR);
}

nc_status nc_quant8_block_map(nc_tensor *codes, nc_tensor *scales, const nc_tensor *x, int64_t block,
                              int32_t stochastic, uint64_t seed, uint64_t counter, int32_t map) {
    static const char *op = "quant8_block";
    int32_t dev;
    NC_TRY(DEV3(codes, scales, x));
    NC_TRY(check_map(op, map));
    NC_TRY(want_f32(op, "x", x, dev));
    int64_t n = nc_tensor_numel(x);
    NC_TRY(check_codes(op, codes, scales, n, block, dev));
    if (dev == NC_CUDA) {
        const nc_cuda_api *cu = nc_cuda_for(op);
        if (!cu) return NC_ERR_DEVICE;
        nc_cuda_optc c;
        memset(&c, 0, sizeof c);
        c.block = block;
        c.stochastic = stochastic;
        c.seed = seed;
        c.counter = counter;
        c.map = map;
        nc_status st = cu->quant8((int8_t *)nc_tensor_data(codes), nc_f32p(scales), nc_f32p(x), n, &c, get_map(map));
        return st == NC_OK ? NC_OK : nc_cuda_err(op, cu, st);
    }
    const float *X = nc_f32p(x);
    int8_t *Cd = (int8_t *)nc_tensor_data(codes);
    float *S = nc_f32p(scales);
    int64_t nb = (n + block - 1) / block;
#pragma omp parallel for schedule(static) if (n >= NC_PAR_MIN)
    for (int64_t b = 0; b < nb; b++) {
        int64_t s = b * block, len = s + block < n ? block : n - s;
        S[b] = quant_block_map(Cd + s, X + s, len, s, stochastic, seed, counter, map);
    }
    return NC_OK;
}

nc_status nc_dequant8_block(nc_tensor *out, const nc_tensor *codes, const nc_tensor *scales, int64_t block) {
    return nc_dequant8_block_map(out, codes, scales, block, NC_QUANT8_LINEAR);
}

nc_status nc_dequant8_block_map(nc_tensor *out, const nc_tensor *codes, const nc_tensor *scales, int64_t block,
                                int32_t map) {
    static const char *op = "dequant8_block";
    int32_t dev;
    NC_TRY(DEV3(out, codes, scales));
    NC_TRY(check_map(op, map));
    NC_TRY(want_f32(op, "out", out, dev));
    int64_t n = nc_tensor_numel(out);
    NC_TRY(check_codes(op, codes, scales, n, block, dev));
    if (dev == NC_CUDA) {
        const nc_cuda_api *cu = nc_cuda_for(op);
        if (!cu) return NC_ERR_DEVICE;
        nc_status st = cu->dequant8(nc_f32p(out), (const int8_t *)nc_tensor_data(codes), nc_f32p(scales), n, block, map,
                                    get_map(map));
        return st == NC_OK ? NC_OK : nc_cuda_err(op, cu, st);
    }
    float *O = nc_f32p(out);
    const int8_t *Cd = (const int8_t *)nc_tensor_data(codes);
    const float *S = nc_f32p(scales);
    if (map == NC_QUANT8_DYNAMIC) {
        const code_map *cm = get_map(map);
#pragma omp parallel for schedule(static) if (n >= NC_PAR_MIN)
        for (int64_t i = 0; i < n; i++) O[i] = map_decode(cm, Cd[i]) * S[i / block];
        return NC_OK;
    }
#pragma omp parallel for schedule(static) if (n >= NC_PAR_MIN)
    for (int64_t i = 0; i < n; i++) O[i] = (float)Cd[i] * (S[i / block] / 127.0f);
    return NC_OK;
}

/* ---- Muon ------------------------------------------------------------------------------------ */
static nc_status check_hp_muon(const char *op, const nc_optim_hp *hp) {
    if (!(hp->momentum >= 0 && hp->momentum < 1))
        return nc_fail(NC_ERR_ARG, "%s: momentum must lie in [0, 1), got %g", op, hp->momentum);
    NC_TRY(check_map(op, hp->quant));
    if (hp->ns_steps < 0 || hp->ns_steps > 100)
        return nc_fail(NC_ERR_ARG, "%s: ns_steps must lie in [0, 100], got %d", op, hp->ns_steps);
    /* (CUDA runs the f32 standard Newton-Schulz whatever ns_dtype / ns_form say; both are checked) */
    return nc_optim_check_ns(op, hp->ns_dtype, hp->ns_form);
}

/* f32 momentum: M = mu M + damp G; U = nesterov ? damp G + mu M : M */
static void muon_momentum(float *U, float *M, const float *G, int64_t n, const nc_optim_hp *hp) {
    float mu = (float)hp->momentum, damp = (float)hp->dampening;
    int nest = hp->nesterov;
#pragma omp parallel for simd schedule(static) if (n >= NC_OPTIM_PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        float mi = mu * M[i] + damp * G[i];
        M[i] = mi;
        U[i] = nest ? damp * G[i] + mu * mi : mi;
    }
}

/* 8-bit momentum, one fused pass per block: dequantize, update, requantize, write U */
static void muon8_momentum(float *U, int8_t *Cd, float *S, const float *G, int64_t n, const nc_optim_hp *hp) {
    float mu = (float)hp->momentum, damp = (float)hp->dampening;
    int nest = hp->nesterov, sto = hp->stochastic;
    int64_t block = hp->block, nb = (n + block - 1) / block;
    uint64_t seed = hp->seed, counter = hp->counter;
    int32_t map = hp->quant;
    const code_map *cm = get_map(map);
#pragma omp parallel for schedule(static) if (n >= NC_OPTIM_PAR_MIN)
    for (int64_t b = 0; b < nb; b++) {
        int64_t s = b * block, len = s + block < n ? block : n - s;
        if (map == NC_QUANT8_DYNAMIC) {
            float sb = S[b];
            for (int64_t i = s; i < s + len; i++) U[i] = mu * (map_decode(cm, Cd[i]) * sb) + damp * G[i];
        } else {
            float deq = S[b] / 127.0f;
            for (int64_t i = s; i < s + len; i++) U[i] = mu * ((float)Cd[i] * deq) + damp * G[i];
        }
        S[b] = quant_block_map(Cd + s, U + s, len, s, sto, seed, counter, map);
        if (nest)
            for (int64_t i = s; i < s + len; i++) U[i] = damp * G[i] + mu * U[i];
    }
}

/* p = p * decay - step * U */
static void apply_update(float *P, const float *U, int64_t n, float decay, float step) {
#pragma omp parallel for simd schedule(static) if (n >= NC_OPTIM_PAR_MIN)
    for (int64_t i = 0; i < n; i++) P[i] = P[i] * decay - step * U[i];
}

/* Muon on CUDA: momentum (f32 or 8-bit) into U, Newton-Schulz through cuBLAS, the update. U and
 * the NS workspace are one transient device tensor. */
static nc_status muon_cuda(const char *op, nc_tensor *p, const nc_tensor *g, nc_tensor *m, nc_tensor *codes,
                           nc_tensor *scales, const nc_optim_hp *hp, int64_t rows, int64_t cols, int64_t n) {
    const nc_cuda_api *cu = nc_cuda_for(op);
    if (!cu) return NC_ERR_DEVICE;
    int64_t nsf = nc_cuda_ns_ws_floats(rows, cols);   /* even: U stays 8-byte aligned too */
    nc_tensor *ws = nc_cuda_buffer(op, NC_F32, nsf + n);
    if (!ws) return NC_ERR_OOM;
    float *W = nc_f32p(ws), *U = W + nsf;
    nc_cuda_optc c = optc_of(hp);
    nc_status st = m ? cu->muon_momentum(U, nc_f32p(m), nc_f32p(g), n, &c)
                     : cu->muon8_momentum(U, (int8_t *)nc_tensor_data(codes), nc_f32p(scales), nc_f32p(g), n, &c,
                                          get_map(hp->quant));
    if (st == NC_OK) st = cu->newton_schulz(U, rows, cols, hp->ns_steps, nc_ns_quintic, 1, 1.0, 1e-7, W);
    if (st == NC_OK)
        st = cu->apply_update(nc_f32p(p), U, n, (float)(1.0 - hp->lr * hp->weight_decay), (float)(hp->lr * hp->scale));
    if (st != NC_OK) st = nc_cuda_err(op, cu, st);
    nc_tensor_release(ws);
    return st;
}

/* the checks of a Muon step; *dev, *rows, *cols, *n of p */
static nc_status muon_check(const char *op, const nc_tensor *p, const nc_tensor *g, const nc_tensor *m,
                            const nc_tensor *codes, const nc_tensor *scales, const nc_optim_hp *hp, int32_t *devp,
                            int64_t *rows, int64_t *cols, int64_t *n) {
    int32_t dev;
    if (m) NC_TRY(DEV3(p, g, m));
    else NC_TRY(DEV4(p, g, codes, scales));
    NC_TRY(check_pg(op, p, g, hp, dev));
    NC_TRY(check_hp_muon(op, hp));
    *n = nc_tensor_numel(p);
    NC_TRY(as_matrix(op, p, rows, cols));
    if (m) {
        NC_TRY(want_f32(op, "m", m, dev));
        NC_TRY(want_numel(op, "m", m, *n));
    } else {
        NC_TRY(check_codes(op, codes, scales, *n, hp->block, dev));
    }
    *devp = dev;
    return NC_OK;
}

/* the CPU step of checked arguments: momentum into the transient U, NS, the update */
static nc_status muon_cpu(const char *op, nc_tensor *p, const nc_tensor *g, nc_tensor *m, nc_tensor *codes,
                          nc_tensor *scales, const nc_optim_hp *hp, int64_t rows, int64_t cols, int64_t n) {
    int64_t bytes = n * (int64_t)sizeof(float);
    float *U = nc_host_alloc(bytes);   /* the NS input buffer: transient */
    if (!U) return nc_fail(NC_ERR_OOM, "%s: cannot allocate the %lld-byte update buffer", op, (long long)bytes);
    if (m) muon_momentum(U, nc_f32p(m), nc_f32p(g), n, hp);
    else muon8_momentum(U, (int8_t *)nc_tensor_data(codes), nc_f32p(scales), nc_f32p(g), n, hp);
    nc_status st = nc_optim_ns_inplace(U, rows, cols, hp->ns_steps, nc_ns_quintic, 1, 1.0, 1e-7, hp->ns_dtype,
                                         hp->ns_form);
    if (st == NC_OK)
        apply_update(nc_f32p(p), U, n, (float)(1.0 - hp->lr * hp->weight_decay), (float)(hp->lr * hp->scale));
    nc_host_free(U, bytes);
    return st;
}

static nc_status muon_common(const char *op, nc_tensor *p, const nc_tensor *g, nc_tensor *m, nc_tensor *codes,
                             nc_tensor *scales, const nc_optim_hp *hp) {
    int32_t dev;
    int64_t rows = 0, cols = 0, n = 0;
    NC_TRY(muon_check(op, p, g, m, codes, scales, hp, &dev, &rows, &cols, &n));
    if (n == 0) return NC_OK;
    if (dev == NC_CUDA) return muon_cuda(op, p, g, m, codes, scales, hp, rows, cols, n);
    return muon_cpu(op, p, g, m, codes, scales, hp, rows, cols, n);
}

extern void openblas_set_num_threads(int num_threads);

/* ---- Muon over many matrices ------------------------------------------------------------------ */
typedef struct {
    int64_t cost, rows, cols, n;   /* cost: the NS multiply-adds per iteration, 2 r^2 c + r^3 */
    int32_t i, dev, alone;
} muon_job;

static int job_cmp(const void *x, const void *y) {
    const muon_job *a = x, *b = y;
    if (a->cost != b->cost) return a->cost > b->cost ? -1 : 1;   /* largest first */
    return a->i < b->i ? -1 : a->i > b->i;
}

nc_status nc_muon_step_many(int32_t count, nc_tensor *const *p, const nc_tensor *const *g, nc_tensor *const *m,
                            nc_tensor *const *codes, nc_tensor *const *scales, const nc_optim_hp *hp,
                            int32_t *failed) {
    static const char *op = "muon_step_many";
    if (failed) *failed = -1;
    if (count < 0) return nc_fail(NC_ERR_ARG, "%s: count must be >= 0, got %d", op, count);
    if (count == 0) return NC_OK;
    if (!p || !g || !hp || (!m && (!codes || !scales)))
        return nc_fail(NC_ERR_ARG, "%s: p, g, hp and m (or codes and scales) must be arrays of %d entries", op, count);
    int64_t jbytes = (int64_t)sizeof(muon_job) * count;
    muon_job *jobs = nc_host_alloc(jbytes);
    if (!jobs) return nc_fail(NC_ERR_OOM, "%s: out of memory", op);
    nc_status st = NC_OK;
    int64_t total = 0;
    int32_t nj = 0;
    /* every check first, so that a bad argument changes no state */
    for (int32_t i = 0; i < count && st == NC_OK; i++) {
        nc_tensor *mi = m ? m[i] : NULL, *ci = mi || !codes ? NULL : codes[i], *si = mi || !scales ? NULL : scales[i];
        const char *opi = mi ? "muon_step" : "muon8_step";
        muon_job j = { 0, 0, 0, 0, i, 0, 0 };
        if (!mi && (!ci || !si)) st = nc_fail(NC_ERR_ARG, "%s: entry %d has neither m nor codes and scales", op, i);
        else st = muon_check(opi, p[i], g[i], mi, ci, si, &hp[i], &j.dev, &j.rows, &j.cols, &j.n);
        if (st != NC_OK) { if (failed) *failed = i; break; }
        if (j.n == 0) continue;
        int64_t r = j.rows < j.cols ? j.rows : j.cols, c = j.rows < j.cols ? j.cols : j.rows;
        j.cost = 2 * r * r * c + r * r * r;
        /* in the shared pass: CPU matrices (bf16 GEMM: thread-count independent; f32: OpenBLAS on
         * one thread per matrix for the pass, which gives the bits of its threaded calls, since
         * OpenBLAS splits a product's outputs, never an output's sum, over its threads); CUDA
         * matrices get cost -1 = run alone */
        if (j.dev != NC_CPU || hp[i].ns_steps == 0) j.cost = -1;
        else total += j.cost;
        jobs[nj++] = j;
    }
    if (st != NC_OK) { nc_host_free(jobs, jbytes); return st; }
    qsort(jobs, (size_t)nj, sizeof(muon_job), job_cmp);
    /* Alone (every thread on one matrix, in turn): the jobs marked -1 and a matrix costing more
     * than a thread's share (its GEMMs are threaded). The rest: one matrix per thread, largest
     * first (products this small use 2 threads poorly: barriers, per-thread packing of the
     * shared operand); a thread-count independent GEMM keeps the results those of separate calls. */
    int nt = nc_threads();
    int32_t nshared = 0;
    for (int32_t k = 0; k < nj && st == NC_OK; k++) {
        muon_job *j = &jobs[k];
        j->alone = j->cost < 0 || j->cost * nt > total;
        if (!j->alone) { nshared++; continue; }
        int32_t i = j->i;
        nc_tensor *mi = m ? m[i] : NULL, *ci = mi || !codes ? NULL : codes[i], *si = mi || !scales ? NULL : scales[i];
        const char *opi = mi ? "muon_step" : "muon8_step";
        st = j->dev == NC_CUDA ? muon_cuda(opi, p[i], g[i], mi, ci, si, &hp[i], j->rows, j->cols, j->n)
                               : muon_cpu(opi, p[i], g[i], mi, ci, si, &hp[i], j->rows, j->cols, j->n);
        if (st != NC_OK && failed) *failed = i;
    }
    if (st == NC_OK && nshared > 0) {
        int32_t bad = -1;
        nc_status bst = NC_OK;
        int par = nt > 1 && nshared > 1;
        if (par) openblas_set_num_threads(1);
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt) if (par)
        for (int32_t k = 0; k < nj; k++) {
            if (jobs[k].alone) continue;
            int32_t i = jobs[k].i;
            nc_tensor *mi = m ? m[i] : NULL, *ci = mi || !codes ? NULL : codes[i], *si = mi || !scales ? NULL : scales[i];
            nc_status s1 = muon_cpu(mi ? "muon_step" : "muon8_step", p[i], g[i], mi, ci, si, &hp[i], jobs[k].rows,
                                    jobs[k].cols, jobs[k].n);
            if (s1 != NC_OK) {
#pragma omp critical(nc_muon_many)
                if (bad < 0 || i < bad) { bad = i; bst = s1; }
            }
        }
        if (par) openblas_set_num_threads(nt);
        if (bad >= 0) {   /* the worker's message is thread-local: restate it here */
            if (failed) *failed = bad;
            st = nc_fail(bst, "%s: matrix %d: out of memory in the Muon step", op, bad);
        }
    }
    nc_host_free(jobs, jbytes);
    return st;
}

nc_status nc_muon_step(nc_tensor *p, const nc_tensor *g, nc_tensor *m, const nc_optim_hp *hp) {
    static const char *op = "muon_step";
    NC_TRY(nc_check_not_null(op, "m", m));
    return muon_common(op, p, g, m, NULL, NULL, hp);
}

nc_status nc_muon8_step(nc_tensor *p, const nc_tensor *g, nc_tensor *codes, nc_tensor *scales, const nc_optim_hp *hp) {
    static const char *op = "muon8_step";
    if (!hp) return nc_fail(NC_ERR_ARG, "%s: hp is NULL", op);
    return muon_common(op, p, g, NULL, codes, scales, hp);
}

/* ---- GaLore ---------------------------------------------------------------------------------- */
/* GaLore on CUDA: the CPU's sequence below with cuBLAS sgemm for the projection and the
 * back-projection and the CUDA inner steps; R, D (and the NS workspace for Muon) are one
 * transient device tensor. */
static nc_status galore_cuda(const char *op, nc_tensor *p, const nc_tensor *g, const nc_tensor *proj, int32_t side,
                             int32_t inner, nc_tensor *s0, nc_tensor *s1, const nc_optim_hp *hp, int64_t m, int64_t n,
                             int64_t r, int64_t lr_rows, int64_t lr_cols) {
    const nc_cuda_api *cu = nc_cuda_for(op);
    if (!cu) return NC_ERR_DEVICE;
    int64_t ln = lr_rows * lr_cols;
    int muon = inner == NC_OPTIM_MUON || inner == NC_OPTIM_MUON8;
    int64_t nsf = muon ? nc_cuda_ns_ws_floats(lr_rows, lr_cols) : 0;   /* even */
    nc_tensor *ws = nc_cuda_buffer(op, NC_F32, nsf + 2 * ln);
    if (!ws) return NC_ERR_OOM;
    float *W = nc_f32p(ws), *R = W + nsf, *D = R + ln, *P = nc_f32p(p);
    const float *G = nc_f32p(g), *Pj = nc_f32p(proj);
    nc_cuda_optc c = optc_of(hp);
    nc_status st;
    if (side == NC_GALORE_LEFT)   /* R (r, n) = P^T G */
        st = cu->sgemm(1, 0, r, n, m, 1.0f, Pj, r, 0, G, n, 0, 0.0f, R, n, 0, 1);
    else                          /* R (m, r) = G Q */
        st = cu->sgemm(0, 0, m, r, n, 1.0f, G, n, 0, Pj, r, 0, 0.0f, R, r, 0, 1);
    float step = (float)(hp->lr * hp->alpha);
    if (st == NC_OK) {
        if (inner == NC_OPTIM_ADAMW) {
            st = cu->adam(NULL, D, R, nc_f32p(s0), nc_f32p(s1), ln, &c);
        } else if (inner == NC_OPTIM_LION) {
            st = cu->lion(NULL, D, R, nc_f32p(s0), ln, &c);
        } else {
            if (inner == NC_OPTIM_MUON) st = cu->muon_momentum(D, nc_f32p(s0), R, ln, &c);
            else st = cu->muon8_momentum(D, (int8_t *)nc_tensor_data(s0), nc_f32p(s1), R, ln, &c, get_map(hp->quant));
            if (st == NC_OK) st = cu->newton_schulz(D, lr_rows, lr_cols, hp->ns_steps, nc_ns_quintic, 1, 1.0, 1e-7, W);
            step = (float)(hp->lr * hp->alpha * hp->scale);
        }
    }
    if (st == NC_OK) {
        if (side == NC_GALORE_LEFT)   /* p -= step P D */
            st = cu->sgemm(0, 0, m, n, r, -step, Pj, r, 0, D, n, 0, 1.0f, P, n, 0, 1);
        else                          /* p -= step D Q^T */
            st = cu->sgemm(0, 1, m, n, r, -step, D, r, 0, Pj, r, 0, 1.0f, P, n, 0, 1);
    }
    float decay = (float)(1.0 - hp->lr * hp->weight_decay);
    if (st == NC_OK && decay != 1.0f) st = cu->apply_update(P, NULL, m * n, decay, 0.0f);
    if (st != NC_OK) st = nc_cuda_err(op, cu, st);
    nc_tensor_release(ws);
    return st;
}

nc_status nc_galore_step(nc_tensor *p, const nc_tensor *g, const nc_tensor *proj, int32_t side, int32_t inner,
                         nc_tensor *s0, nc_tensor *s1, const nc_optim_hp *hp) {
    static const char *op = "galore_step";
    int32_t dev;
    NC_TRY(nc_check_one_device(op, &dev, 5, (const char *const[]){ "p", "g", "proj", "s0", "s1" },
                      (const nc_tensor *const[]){ p, g, proj, s0, s1 }));
    NC_TRY(check_pg(op, p, g, hp, dev));
    NC_TRY(nc_check_ndim(op, "p", p, 2));
    NC_TRY(want_f32(op, "proj", proj, dev));
    NC_TRY(nc_check_ndim(op, "proj", proj, 2));
    if (side != NC_GALORE_LEFT && side != NC_GALORE_RIGHT)
        return nc_fail(NC_ERR_ARG, "%s: side must be NC_GALORE_LEFT (0) or NC_GALORE_RIGHT (1), got %d", op, side);
    int64_t m = p->shape[0], n = p->shape[1], r = proj->shape[1];
    int64_t d = side == NC_GALORE_LEFT ? m : n;
    char b1[NC_DESC_LEN], b2[NC_DESC_LEN];
    if (proj->shape[0] != d)
        return nc_fail(NC_ERR_SHAPE, "%s: proj must be (%lld, r) for p %s with side %s, got %s", op, (long long)d,
                       nc_describe(p, b1, sizeof b1), side == NC_GALORE_LEFT ? "left" : "right",
                       nc_describe(proj, b2, sizeof b2));
    /* low-rank shape: (r, n) for LEFT, (m, r) for RIGHT */
    int64_t lr_rows = side == NC_GALORE_LEFT ? r : m, lr_cols = side == NC_GALORE_LEFT ? n : r;
    int64_t ln = lr_rows * lr_cols;
    switch (inner) {
    case NC_OPTIM_ADAMW:
        NC_TRY(check_hp_adam(op, hp));
        NC_TRY(want_f32(op, "s0 (m)", s0, dev)); NC_TRY(want_numel(op, "s0 (m)", s0, ln));
        NC_TRY(want_f32(op, "s1 (v)", s1, dev)); NC_TRY(want_numel(op, "s1 (v)", s1, ln));
        break;
    case NC_OPTIM_LION:
        NC_TRY(want_f32(op, "s0 (m)", s0, dev)); NC_TRY(want_numel(op, "s0 (m)", s0, ln));
        break;
    case NC_OPTIM_MUON:
        NC_TRY(check_hp_muon(op, hp));
        NC_TRY(want_f32(op, "s0 (m)", s0, dev)); NC_TRY(want_numel(op, "s0 (m)", s0, ln));
        break;
    case NC_OPTIM_MUON8:
        NC_TRY(check_hp_muon(op, hp));
        NC_TRY(check_codes(op, s0, s1, ln, hp->block, dev));
        break;
    default:
        return nc_fail(NC_ERR_ARG, "%s: inner must be NC_OPTIM_ADAMW, _MUON, _MUON8 or _LION, got %d", op, inner);
    }
    if (ln == 0 || m == 0 || n == 0) return NC_OK;
    if (dev == NC_CUDA) return galore_cuda(op, p, g, proj, side, inner, s0, s1, hp, m, n, r, lr_rows, lr_cols);
    int64_t bytes = 2 * ln * (int64_t)sizeof(float);
    float *R = nc_host_alloc(bytes);   /* projected gradient R and direction D: transient */
    if (!R) return nc_fail(NC_ERR_OOM, "%s: cannot allocate a %lld-byte workspace", op, (long long)bytes);
    float *D = R + ln;
    const float *G = nc_f32p(g), *Pj = nc_f32p(proj);
    if (side == NC_GALORE_LEFT)   /* R (r, n) = P^T G */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (blasint)r, (blasint)n, (blasint)m, 1.0f, Pj, (blasint)r,
                    G, (blasint)n, 0.0f, R, (blasint)n);
    else                          /* R (m, r) = G Q */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (blasint)m, (blasint)r, (blasint)n, 1.0f, G,
                    (blasint)n, Pj, (blasint)r, 0.0f, R, (blasint)r);
    nc_status st = NC_OK;
    float step = (float)(hp->lr * hp->alpha);
    if (inner == NC_OPTIM_ADAMW) {
        adam_c c = adam_consts(hp);
        float *Mm = nc_f32p(s0), *Vv = nc_f32p(s1);
#pragma omp parallel for simd schedule(static) if (ln >= NC_OPTIM_PAR_MIN)
        for (int64_t i = 0; i < ln; i++) D[i] = adam_elem(R[i], &Mm[i], &Vv[i], &c);
    } else if (inner == NC_OPTIM_LION) {
        float *Mm = nc_f32p(s0), bb1 = (float)hp->beta1, bb2 = (float)hp->beta2;
#pragma omp parallel for simd schedule(static) if (ln >= NC_OPTIM_PAR_MIN)
        for (int64_t i = 0; i < ln; i++) D[i] = lion_elem(R[i], &Mm[i], bb1, bb2);
    } else {
        if (inner == NC_OPTIM_MUON) muon_momentum(D, nc_f32p(s0), R, ln, hp);
        else muon8_momentum(D, (int8_t *)nc_tensor_data(s0), nc_f32p(s1), R, ln, hp);
        st = nc_optim_ns_inplace(D, lr_rows, lr_cols, hp->ns_steps, nc_ns_quintic, 1, 1.0, 1e-7, hp->ns_dtype,
                                 hp->ns_form);
        step = (float)(hp->lr * hp->alpha * hp->scale);
    }
    if (st == NC_OK) {
        float *P = nc_f32p(p);
        if (side == NC_GALORE_LEFT)   /* p -= step P D */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (blasint)m, (blasint)n, (blasint)r, -step, Pj,
                        (blasint)r, D, (blasint)n, 1.0f, P, (blasint)n);
        else                          /* p -= step D Q^T */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)m, (blasint)n, (blasint)r, -step, D,
                        (blasint)r, Pj, (blasint)r, 1.0f, P, (blasint)n);
        float decay = (float)(1.0 - hp->lr * hp->weight_decay);
        if (decay != 1.0f) {
            int64_t pn = m * n;
#pragma omp parallel for simd schedule(static) if (pn >= NC_OPTIM_PAR_MIN)
            for (int64_t i = 0; i < pn; i++) P[i] *= decay;
        }
    }
    nc_host_free(R, bytes);
    return st;
}
