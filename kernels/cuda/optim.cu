/* kernels/cuda/optim.cu — the optimizer kernels of the CUDA backend (nc_cuda_api, API 3): AdamW,
 * Lion, Muon momentum (f32 and 8-bit blockwise), the parameter update, the blockwise 8-bit
 * quantizer / dequantizer (LINEAR and DYNAMIC code maps) and Newton-Schulz through cuBLAS sgemm.
 * The C entry points (nc_adamw_step, ...) in kernels/cpu/optim*.c check the arguments, compute
 * every constant on the host and call these when the tensors are on the CUDA device.
 *
 * Promise (numerics): every elementwise formula repeats the CPU kernel's f32 operation order
 * with explicitly rounded intrinsics (__fmul_rn, __fadd_rn, __fsub_rn, __fdiv_rn, __fsqrt_rn),
 * which nvcc never contracts into FMA (the CPU build has no FMA contraction either: ISO C11 mode,
 * no -mfma for optim.c). So AdamW, Lion, the Muon momentum (f32 and 8-bit: codes, scales and the
 * NS input), the parameter update and quant8 / dequant8 give the CPU's bits for the same inputs.
 * The 8-bit path uses the CPU's own code-map table (built by kernels/cpu/optim.c, copied to
 * __constant__ memory once per map) and the same counter-based Philox-4x32-10 uniform for
 * stochastic rounding (element i: counter + i / 4, lane i % 4, top 24 bits). Newton-Schulz
 * computes the Frobenius norm in the CPU's order (4096-element chunks, double, chunk order), so
 * its only difference from the CPU is cuBLAS's summation order inside the sgemms (f32, no TF32):
 * agreement within a tolerance, not bitwise.
 *
 * Launches: elementwise kernels grid-stride over n; the 8-bit kernels run one CUDA block of 256
 * threads per quantization block (absmax reduced in shared memory; dequantize, update and
 * requantize in one kernel). Everything runs on the legacy default stream, ordered with cuBLAS
 * and cudaMemcpy. These kernels compile here but have not yet run on a GPU (README).
 */
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <mutex>

#include "common.cuh"
#include "philox.h"

namespace {

using nc_cu::fail;
using nc_cu::cuda_fail;
using nc_cu::launch_check;

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 1 << 16;

unsigned blocks_for(int64_t n) {
    int64_t b = (n + kThreads - 1) / kThreads;
    return (unsigned)(b < 1 ? 1 : (b > kMaxBlocks ? kMaxBlocks : b));
}

/* exactly rounded f32 / f64 arithmetic, never fused */
__device__ __forceinline__ float fmul(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ float fadd(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ float fsub(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ float fdiv(float a, float b) { return __fdiv_rn(a, b); }

/* ---- AdamW / Lion / Muon momentum (kernels/cpu/optim.c adam_elem, lion_elem, muon_momentum) --- */
__device__ __forceinline__ float adam_elem(float g, float *m, float *v, const nc_cuda_optc &c) {
    float mi = fadd(fmul(c.b1, *m), fmul(fsub(1.0f, c.b1), g));
    float vi = fadd(fmul(c.b2, *v), fmul(fsub(1.0f, c.b2), fmul(g, g)));
    *m = mi;
    *v = vi;
    float denom = c.galore_eps ? fadd(__fsqrt_rn(vi), c.eps) : fadd(fdiv(__fsqrt_rn(vi), c.bc2s), c.eps);
    return fmul(c.coef, fdiv(mi, denom));
}

__global__ void adam_kernel(float *p, float *d_out, const float *g, float *m, float *v, int64_t n, nc_cuda_optc c) {
    int64_t step = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
        float d = adam_elem(g[i], &m[i], &v[i], c);
        if (p) p[i] = fsub(fmul(p[i], c.decay), fmul(c.step, d));
        else d_out[i] = d;
    }
}

__device__ __forceinline__ float signf_(float x) { return (float)((x > 0.0f) - (x < 0.0f)); }

__global__ void lion_kernel(float *p, float *d_out, const float *g, float *m, int64_t n, nc_cuda_optc c) {
    int64_t step = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
        float gi = g[i], mi = m[i];
        float cc = fadd(fmul(c.b1, mi), fmul(fsub(1.0f, c.b1), gi));
        m[i] = fadd(fmul(c.b2, mi), fmul(fsub(1.0f, c.b2), gi));
        float s = signf_(cc);
        if (p) p[i] = fsub(fmul(p[i], c.decay), fmul(c.step, s));
        else d_out[i] = s;
    }
}

__global__ void muon_momentum_kernel(float *u, float *m, const float *g, int64_t n, nc_cuda_optc c) {
    int64_t step = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
        float gi = g[i];
        float mi = fadd(fmul(c.mu, m[i]), fmul(c.damp, gi));
        m[i] = mi;
        u[i] = c.nesterov ? fadd(fmul(c.damp, gi), fmul(c.mu, mi)) : mi;
    }
}

__global__ void apply_update_kernel(float *p, const float *u, int64_t n, float decay, float stepv) {
    int64_t step = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step)
        p[i] = u ? fsub(fmul(p[i], decay), fmul(stepv, u[i])) : fmul(p[i], decay);
}

/* ---- 8-bit codes ------------------------------------------------------------------------------ */
/* Philox-4x32-10: core/philox.h, the same code as the host's nc_philox4x32 */
__device__ __forceinline__ void philox4x32(uint64_t seed, uint64_t counter, uint32_t out[4]) {
    nc_philox4x32_10(seed, counter, out);
}

/* kernels/cpu/optim.c sr_uniform: uniform [0, 1) for element i */
__device__ __forceinline__ float sr_uniform(uint64_t seed, uint64_t counter, int64_t i) {
    uint32_t r[4];
    philox4x32(seed, counter + (uint64_t)(i >> 2), r);
    return fmul((float)(r[i & 3] >> 8), 1.0f / 16777216.0f);
}

/* the CPU's code maps (index = enum nc_quant8_map), uploaded from the host on first use */
__constant__ nc_code_map c_maps[2];
std::mutex g_map_mu;
bool g_map_ready[2];

nc_status upload_map(const char *op, int32_t map, const nc_code_map *host) {
    if (map != NC_QUANT8_LINEAR && map != NC_QUANT8_DYNAMIC)
        return fail(NC_ERR_ARG, "%s: code map must be 0 (LINEAR) or 1 (DYNAMIC), got %d", op, map);
    if (map == NC_QUANT8_LINEAR) return NC_OK;   /* LINEAR keeps its own arithmetic, no table */
    if (!host) return fail(NC_ERR_ARG, "%s: the DYNAMIC code map needs the host table, got NULL", op);
    std::lock_guard<std::mutex> lock(g_map_mu);
    if (g_map_ready[map]) return NC_OK;
    cudaError_t e = cudaMemcpyToSymbol(c_maps, host, sizeof(nc_code_map), (size_t)map * sizeof(nc_code_map));
    if (e != cudaSuccess) {
        char what[96];
        snprintf(what, sizeof what, "%s: copying the code map to __constant__ memory failed", op);
        return cuda_fail(e, what);
    }
    g_map_ready[map] = true;
    return NC_OK;
}

__device__ __forceinline__ int map_nearest(const nc_code_map &cm, float a) {
    int k = cm.lut[(int)fmul(a, (float)NC_MAP_BINS)];
    while (cm.mid[k] < a) k++;
    return k;
}

__device__ __forceinline__ int map_stochastic(const nc_code_map &cm, float a, float u) {
    int k = map_nearest(cm, a);
    int lo = cm.mag[k] <= a ? k : k - 1;
    if (lo >= 127) return 127;
    float d = fsub(cm.mag[lo + 1], cm.mag[lo]);
    return fmul(u, d) < fsub(a, cm.mag[lo]) ? lo + 1 : lo;
}

__device__ __forceinline__ float map_decode(const nc_code_map &cm, int8_t c) {
    int k = c < 0 ? -(int)c : (int)c;
    float v = cm.mag[k > 127 ? 127 : k];
    return c < 0 ? -v : v;
}

__device__ __forceinline__ float dequant_one(int8_t code, float sb, float deq_linear, int32_t map) {
    return map == NC_QUANT8_DYNAMIC ? fmul(map_decode(c_maps[1], code), sb) : fmul((float)code, deq_linear);
}

/* max of |x| over the CUDA block (the CPU's `a > amax ? a : amax` from 0: NaN never enters, so
 * the result does not depend on the order); every thread gets it */
__device__ float block_absmax(float local) {
    __shared__ float red[kThreads];
    red[threadIdx.x] = local;
    __syncthreads();
    for (int s = kThreads / 2; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s) {
            float o = red[threadIdx.x + s];
            red[threadIdx.x] = o > red[threadIdx.x] ? o : red[threadIdx.x];
        }
        __syncthreads();
    }
    float r = red[0];
    __syncthreads();   /* red is reused by the next call */
    return r;
}

/* Requantize x[s .. s+len) of this CUDA block into codes (kernels/cpu/optim.c quant_block_map);
 * thread t handles elements s + t, s + t + 256, ... (the caller wrote them with the same mapping).
 * Returns the block scale (thread 0 stores it). */
__device__ float quant_block_dev(int8_t *codes, const float *x, int64_t s, int64_t len, float amax,
                                 const nc_cuda_optc &c) {
    if (!(amax > 0.0f) || !isfinite(amax)) {
        for (int64_t i = threadIdx.x; i < len; i += blockDim.x) codes[s + i] = 0;
        return amax > 0.0f || amax != amax ? amax : 0.0f;
    }
    if (c.map == NC_QUANT8_DYNAMIC) {
        const nc_code_map &cm = c_maps[1];
        float inv = fdiv(1.0f, amax);
        for (int64_t i = threadIdx.x; i < len; i += blockDim.x) {
            float xi = x[s + i];
            float a = fmul(fabsf(xi), inv);
            a = a > 1.0f ? 1.0f : (a >= 0.0f ? a : 0.0f);   /* NaN -> 0 */
            int k = c.stochastic ? map_stochastic(cm, a, sr_uniform(c.seed, c.counter, s + i)) : map_nearest(cm, a);
            codes[s + i] = (int8_t)(xi < 0.0f ? -k : k);
        }
        return amax;
    }
    float inv = fdiv(127.0f, amax);
    for (int64_t i = threadIdx.x; i < len; i += blockDim.x) {
        float xi = x[s + i];
        float q = c.stochastic ? floorf(fadd(fmul(xi, inv), sr_uniform(c.seed, c.counter, s + i))) : rintf(fmul(xi, inv));
        q = q > 127.0f ? 127.0f : (q < -127.0f ? -127.0f : q);
        codes[s + i] = (int8_t)q;
    }
    return amax;
}

__global__ void quant8_kernel(int8_t *codes, float *scales, const float *x, int64_t n, nc_cuda_optc c) {
    int64_t b = blockIdx.x, s = b * c.block, len = s + c.block < n ? c.block : n - s;
    float local = 0.0f;
    for (int64_t i = threadIdx.x; i < len; i += blockDim.x) {
        float a = fabsf(x[s + i]);
        local = a > local ? a : local;
    }
    float amax = block_absmax(local);
    float sc = quant_block_dev(codes, x, s, len, amax, c);
    if (threadIdx.x == 0) scales[b] = sc;
}

__global__ void dequant8_kernel(float *out, const int8_t *codes, const float *scales, int64_t n, int64_t block,
                                int32_t map) {
    int64_t step = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
        float sb = scales[i / block];
        out[i] = map == NC_QUANT8_DYNAMIC ? fmul(map_decode(c_maps[1], codes[i]), sb)
                                          : fmul((float)codes[i], fdiv(sb, 127.0f));
    }
}

/* kernels/cpu/optim.c muon8_momentum, one CUDA block per quantization block */
__global__ void muon8_kernel(float *u, int8_t *codes, float *scales, const float *g, int64_t n, nc_cuda_optc c) {
    int64_t b = blockIdx.x, s = b * c.block, len = s + c.block < n ? c.block : n - s;
    float sb = scales[b], deq = fdiv(sb, 127.0f), local = 0.0f;
    for (int64_t i = threadIdx.x; i < len; i += blockDim.x) {
        float ui = fadd(fmul(c.mu, dequant_one(codes[s + i], sb, deq, c.map)), fmul(c.damp, g[s + i]));
        u[s + i] = ui;
        float a = fabsf(ui);
        local = a > local ? a : local;
    }
    float amax = block_absmax(local);   /* its barriers order every read of scales[b] before the write */
    float sc = quant_block_dev(codes, u, s, len, amax, c);
    if (threadIdx.x == 0) scales[b] = sc;
    if (c.nesterov)
        for (int64_t i = threadIdx.x; i < len; i += blockDim.x)
            u[s + i] = fadd(fmul(c.damp, g[s + i]), fmul(c.mu, u[s + i]));
}

/* ---- Newton-Schulz helpers ------------------------------------------------------------------------ */
__global__ void transpose_kernel(float *dst, const float *src, int64_t rows, int64_t cols) {
    int64_t n = rows * cols, step = (int64_t)gridDim.x * blockDim.x;
    for (int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += step) {
        int64_t i = k / cols, j = k - i * cols;
        dst[j * rows + i] = src[k];
    }
}

/* part[ch] = sum of x[i]^2 over chunk ch, in element order, in double (kernels/cpu/optim_linalg.c
 * nc_optim_fro_norm); one thread per chunk */
__global__ void fro_partials_kernel(double *part, const float *x, int64_t n) {
    int64_t nch = (n + NC_CUDA_NS_CHUNK - 1) / NC_CUDA_NS_CHUNK;
    int64_t ch = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= nch) return;
    int64_t b = ch * NC_CUDA_NS_CHUNK, e = b + NC_CUDA_NS_CHUNK < n ? b + NC_CUDA_NS_CHUNK : n;
    double s = 0;
    for (int64_t i = b; i < e; i++) s = __dadd_rn(s, __dmul_rn((double)x[i], (double)x[i]));
    part[ch] = s;
}

/* scale = (float)(1 / (fro_mult sqrt(sum of the partials in chunk order) + eps)) */
__global__ void fro_scale_kernel(float *scale, const double *part, int64_t nch, double fro_mult, double eps) {
    double tot = 0;
    for (int64_t ch = 0; ch < nch; ch++) tot = __dadd_rn(tot, part[ch]);
    double nrm = __dsqrt_rn(tot);
    *scale = (float)__ddiv_rn(1.0, __dadd_rn(__dmul_rn(fro_mult, nrm), eps));
}

/* x = s x, with s from device memory (sp) or the host value s */
__global__ void scale_kernel(float *dst, const float *src, int64_t n, const float *sp, float s) {
    float k = sp ? *sp : s;
    int64_t step = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) dst[i] = fmul(k, src[i]);
}

nc_status d2d(float *dst, const float *src, int64_t n, const char *what) {
    if (n <= 0 || dst == src) return NC_OK;
    cudaError_t e = cudaMemcpy(dst, src, (size_t)n * sizeof(float), cudaMemcpyDeviceToDevice);
    return e == cudaSuccess ? NC_OK : cuda_fail(e, what);
}

nc_status check_n(const char *op, int64_t n, bool any_null) {
    if (n < 0) return fail(NC_ERR_ARG, "%s: expected n >= 0, got %lld", op, (long long)n);
    if (n > 0 && any_null) return fail(NC_ERR_ARG, "%s: NULL operand pointer", op);
    return NC_OK;
}

}  // namespace

/* ================================ the vtable entries ========================================== */
namespace nc_cu {

nc_status opt_adam(float *p, float *d_out, const float *g, float *m, float *v, int64_t n, const nc_cuda_optc *c) {
    static const char *op = "adamw_step (cuda)";
    if (!c) return fail(NC_ERR_ARG, "%s: constants are NULL", op);
    nc_status st = check_n(op, n, !g || !m || !v || (!p && !d_out));
    if (st != NC_OK || n == 0) return st;
    adam_kernel<<<blocks_for(n), kThreads>>>(p, d_out, g, m, v, n, *c);
    return launch_check(op, n);
}

nc_status opt_lion(float *p, float *d_out, const float *g, float *m, int64_t n, const nc_cuda_optc *c) {
    static const char *op = "lion_step (cuda)";
    if (!c) return fail(NC_ERR_ARG, "%s: constants are NULL", op);
    nc_status st = check_n(op, n, !g || !m || (!p && !d_out));
    if (st != NC_OK || n == 0) return st;
    lion_kernel<<<blocks_for(n), kThreads>>>(p, d_out, g, m, n, *c);
    return launch_check(op, n);
}

nc_status opt_muon_momentum(float *u, float *m, const float *g, int64_t n, const nc_cuda_optc *c) {
    static const char *op = "muon momentum (cuda)";
    if (!c) return fail(NC_ERR_ARG, "%s: constants are NULL", op);
    nc_status st = check_n(op, n, !u || !m || !g);
    if (st != NC_OK || n == 0) return st;
    muon_momentum_kernel<<<blocks_for(n), kThreads>>>(u, m, g, n, *c);
    return launch_check(op, n);
}

static nc_status check_blocks(const char *op, int64_t n, int64_t block, int64_t *nb) {
    if (block < 1) return fail(NC_ERR_ARG, "%s: block must be >= 1, got %lld", op, (long long)block);
    *nb = (n + block - 1) / block;
    if (*nb > 2147483647LL)
        return fail(NC_ERR_UNSUPPORTED, "%s: %lld blocks exceed the CUDA grid limit", op, (long long)*nb);
    return NC_OK;
}

nc_status opt_muon8_momentum(float *u, int8_t *codes, float *scales, const float *g, int64_t n, const nc_cuda_optc *c,
                             const nc_code_map *map_host) {
    static const char *op = "muon8 momentum (cuda)";
    if (!c) return fail(NC_ERR_ARG, "%s: constants are NULL", op);
    nc_status st = check_n(op, n, !u || !codes || !scales || !g);
    if (st != NC_OK || n == 0) return st;
    int64_t nb = 0;
    if ((st = check_blocks(op, n, c->block, &nb)) != NC_OK) return st;
    if ((st = upload_map(op, c->map, map_host)) != NC_OK) return st;
    muon8_kernel<<<(unsigned)nb, kThreads>>>(u, codes, scales, g, n, *c);
    return launch_check(op, n);
}

nc_status opt_apply_update(float *p, const float *u, int64_t n, float decay, float step) {
    static const char *op = "optimizer update (cuda)";
    nc_status st = check_n(op, n, !p);
    if (st != NC_OK || n == 0) return st;
    apply_update_kernel<<<blocks_for(n), kThreads>>>(p, u, n, decay, step);
    return launch_check(op, n);
}

nc_status opt_quant8(int8_t *codes, float *scales, const float *x, int64_t n, const nc_cuda_optc *c,
                     const nc_code_map *map_host) {
    static const char *op = "quant8_block (cuda)";
    if (!c) return fail(NC_ERR_ARG, "%s: constants are NULL", op);
    nc_status st = check_n(op, n, !codes || !scales || !x);
    if (st != NC_OK || n == 0) return st;
    int64_t nb = 0;
    if ((st = check_blocks(op, n, c->block, &nb)) != NC_OK) return st;
    if ((st = upload_map(op, c->map, map_host)) != NC_OK) return st;
    quant8_kernel<<<(unsigned)nb, kThreads>>>(codes, scales, x, n, *c);
    return launch_check(op, n);
}

nc_status opt_dequant8(float *out, const int8_t *codes, const float *scales, int64_t n, int64_t block, int32_t map,
                       const nc_code_map *map_host) {
    static const char *op = "dequant8_block (cuda)";
    nc_status st = check_n(op, n, !out || !codes || !scales);
    if (st != NC_OK || n == 0) return st;
    int64_t nb = 0;
    if ((st = check_blocks(op, n, block, &nb)) != NC_OK) return st;
    if ((st = upload_map(op, map, map_host)) != NC_OK) return st;
    dequant8_kernel<<<blocks_for(n), kThreads>>>(out, codes, scales, n, block, map);
    return launch_check(op, n);
}

nc_status opt_newton_schulz(float *x, int64_t rows, int64_t cols, int32_t steps, const double *host_abc, int32_t n_abc,
                            double fro_mult, double eps, float *ws) {
    static const char *op = "newton_schulz (cuda)";
    if (rows <= 0 || cols <= 0) return NC_OK;
    if (!x || !ws) return fail(NC_ERR_ARG, "%s: NULL %s pointer", op, x ? "workspace" : "matrix");
    if (steps < 0 || (steps > 0 && (!host_abc || n_abc < 1)))
        return fail(NC_ERR_ARG, "%s: expected steps >= 0 and at least one (a, b, c) triple, got steps %d, %d triples",
                    op, steps, n_abc);
    bool tall = rows > cols;
    int64_t r = tall ? cols : rows, c = tall ? rows : cols, n = r * c;
    int64_t nch = (n + NC_CUDA_NS_CHUNK - 1) / NC_CUDA_NS_CHUNK;
    /* workspace layout (backend.h nc_cuda_ns_ws_floats): partials, scale, X, Y, A, B */
    double *part = (double *)ws;
    float *scale = ws + 2 * nch, *X = scale + 2, *Y = X + n, *A = Y + n, *Bm = A + r * r;
    nc_status st;
    if (tall) {
        transpose_kernel<<<blocks_for(n), kThreads>>>(X, x, rows, cols);
        if ((st = launch_check(op, n)) != NC_OK) return st;
    } else if ((st = d2d(X, x, n, "newton_schulz (cuda): copy in")) != NC_OK) {
        return st;
    }
    fro_partials_kernel<<<(unsigned)((nch + kThreads - 1) / kThreads), kThreads>>>(part, X, n);
    if ((st = launch_check(op, nch)) != NC_OK) return st;
    fro_scale_kernel<<<1, 1>>>(scale, part, nch, fro_mult, eps);
    if ((st = launch_check(op, 1)) != NC_OK) return st;
    scale_kernel<<<blocks_for(n), kThreads>>>(X, X, n, scale, 0.0f);
    if ((st = launch_check(op, n)) != NC_OK) return st;
    for (int32_t k = 0; k < steps; k++) {
        const double *q = host_abc + 3 * (k < n_abc ? k : n_abc - 1);
        float a = (float)q[0], b = (float)q[1], cc = (float)q[2];
        /* A = X X^T */
        if ((st = sgemm(0, 1, r, r, c, 1.0f, X, c, 0, X, c, 0, 0.0f, A, r, 0, 1)) != NC_OK) return st;
        /* B = b A + c A A */
        if (cc != 0.0f) {
            if ((st = d2d(Bm, A, r * r, "newton_schulz (cuda): copy A")) != NC_OK) return st;
            if ((st = sgemm(0, 0, r, r, r, cc, A, r, 0, A, r, 0, b, Bm, r, 0, 1)) != NC_OK) return st;
        } else {
            scale_kernel<<<blocks_for(r * r), kThreads>>>(Bm, A, r * r, nullptr, b);
            if ((st = launch_check(op, r * r)) != NC_OK) return st;
        }
        /* Y = a X + B X */
        if ((st = d2d(Y, X, n, "newton_schulz (cuda): copy X")) != NC_OK) return st;
        if ((st = sgemm(0, 0, r, c, r, 1.0f, Bm, r, 0, X, c, 0, a, Y, c, 0, 1)) != NC_OK) return st;
        float *t = X; X = Y; Y = t;
    }
    if (tall) {
        transpose_kernel<<<blocks_for(n), kThreads>>>(x, X, r, c);
        return launch_check(op, n);
    }
    return d2d(x, X, n, "newton_schulz (cuda): copy out");
}

}  // namespace nc_cu
