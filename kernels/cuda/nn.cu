/* kernels/cuda/nn.cu — the neural-net ops of the CUDA backend (nc_cuda_api API 4): embedding and its
 * scatter-add backward, RMSNorm, RoPE, softmax / log-softmax, the BitNet fake quantizers (absmean ternary weights, absmax
 * int8 activations), the fused cross-entropy and causal GQA attention (forward and backward).
 *
 * Promise: the same f32 formulas as the CPU reference kernels (kernels/cpu/{index,norm,rope,quant,
 * loss,attention,softmax}.c), compiled with -fmad=false (no contraction, as the CPU's scalar reference) and
 * with the CPU's exp (nc_expf_fast, ported below with explicit round-to-nearest operations) where
 * the CPU uses it. What differs is only the summation order of reductions, stated per kernel:
 *   - bit-identical to the CPU reference: embedding, embedding_backward (one thread per column walks
 *     the tokens in order), rope, quant_act (max is exact), the rmsnorm weight gradient (rows summed
 *     in order in double);
 *   - tree-ordered sums (block reductions): softmax's exp-sum (double) and backward row sum (f32),
 *     rmsnorm's sum of squares and backward dot (double, so
 *     the f32 results agree to ~1 ulp), the absmean sum (double), the cross-entropy max / exp-sum /
 *     plain sum (f32: lse and loss agree to a few ulp of the row's scale), attention's scores, its
 *     softmax denominator and D = rowsum(dO O) (f32; outputs agree to ~1e-6 relative);
 *   - log is CUDA's logf (max 1 ulp) where the CPU calls glibc's.
 * Every kernel is a straightforward first version (correct, not tuned): attention runs one warp per
 * query row (four rows per block sharing 32-key K/V tiles in shared memory, online softmax, no
 * T x S matrix), its backward one warp per query row for dQ and one warp per key row for dK / dV
 * (no atomics, so results are deterministic). None of this has run on a GPU yet.
 */
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>

#include "backend.h"
#include "common.cuh"

namespace nc_cu {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 1 << 16;
constexpr int kMaxK = NC_CUDA_ATTN_MAXD / 32;   /* head-dim registers per lane */
constexpr int kKT = 32;                          /* keys per attention tile */
constexpr int kRowsPerBlock = 4;                 /* attention query rows (warps) per block */

unsigned grid_for(int64_t n) {
    int64_t b = (n + kThreads - 1) / kThreads;
    return (unsigned)(b < 1 ? 1 : (b > kMaxBlocks ? kMaxBlocks : b));
}

/* nc_expf_fast (kernels/cpu/nn_common.h), operation for operation */
__device__ __forceinline__ float expf_fast(float x) {
    const float lo = -87.3f, hi = 88.7f;
    float xc = x < lo ? lo : x;
    xc = xc > hi ? hi : xc;
    float nf = __fsub_rn(__fadd_rn(__fmul_rn(xc, 1.44269504088896341f), 12582912.0f), 12582912.0f);
    float r = __fsub_rn(xc, __fmul_rn(nf, 0.693145751953125f));
    r = __fsub_rn(r, __fmul_rn(nf, 1.428606765330187e-06f));
    float p = 1.0f / 5040.0f;
    p = __fadd_rn(__fmul_rn(p, r), 1.0f / 720.0f);
    p = __fadd_rn(__fmul_rn(p, r), 1.0f / 120.0f);
    p = __fadd_rn(__fmul_rn(p, r), 1.0f / 24.0f);
    p = __fadd_rn(__fmul_rn(p, r), 1.0f / 6.0f);
    p = __fadd_rn(__fmul_rn(p, r), 0.5f);
    p = __fadd_rn(__fmul_rn(p, r), 1.0f);
    p = __fadd_rn(__fmul_rn(p, r), 1.0f);
    int n = (int)nf;
    float y = __fmul_rn(p, __int_as_float((n + 127) << 23));
    y = x < lo ? 0.0f : y;
    y = x > hi ? INFINITY : y;
    return y;
}

__device__ __forceinline__ int64_t ld_idx(const void *p, int32_t dt, int64_t i) {
    return dt == NC_I64 ? ((const int64_t *)p)[i] : (int64_t)((const int32_t *)p)[i];
}

struct Sum {
    template <typename T> __device__ T operator()(T a, T b) const { return a + b; }
};
struct Max {   /* the CPU's `a > m ? a : m` */
    __device__ float operator()(float a, float b) const { return b > a ? b : a; }
};

template <typename T, typename Op>
__device__ __forceinline__ T warp_all(T v, Op op) {
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* The reduction of v over the block (blockDim.x a multiple of 32, <= 1024), returned to every
 * thread; a fixed tree, so the result does not depend on timing. */
template <typename T, typename Op>
__device__ T block_all(T v, T ident, Op op) {
    __shared__ T sh[32];
    __shared__ T res;
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_down_sync(0xffffffffu, v, o));
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    __syncthreads();   /* sh / res of a previous call are no longer read */
    if (lane == 0) sh[w] = v;
    __syncthreads();
    if (w == 0) {
        T x = lane < (int)(blockDim.x >> 5) ? sh[lane] : ident;
        for (int o = 16; o > 0; o >>= 1) x = op(x, __shfl_down_sync(0xffffffffu, x, o));
        if (lane == 0) res = x;
    }
    __syncthreads();
    return res;
}

nc_status done(const char *op, int64_t n) { return launch_check(op, n); }

/* ---- embedding ------------------------------------------------------------------------------ */
__global__ void embedding_kernel(float *out, const float *w, const void *idx, int32_t dt, int64_t n, int64_t D) {
    int64_t total = n * D, step = (int64_t)gridDim.x * blockDim.x;
    for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += step) {
        int64_t i = e / D, j = e - i * D;
        out[e] = w[ld_idx(idx, dt, i) * D + j];
    }
}

__global__ void embedding_bwd_kernel(float *gw, const void *idx, int32_t dt, const float *g, int64_t n, int64_t D) {
    int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= D) return;
    for (int64_t i = 0; i < n; i++) gw[ld_idx(idx, dt, i) * D + j] += g[i * D + j];
}

nc_status nn_embedding(float *out, const float *w, const void *idx, int32_t dt, int64_t n, int64_t D) {
    if (n * D == 0) return NC_OK;
    embedding_kernel<<<grid_for(n * D), kThreads>>>(out, w, idx, dt, n, D);
    return done("embedding", n * D);
}

nc_status nn_embedding_backward(float *gw, const void *idx, int32_t dt, const float *g, int64_t n, int64_t D) {
    if (n * D == 0) return NC_OK;
    embedding_bwd_kernel<<<(unsigned)((D + kThreads - 1) / kThreads), kThreads>>>(gw, idx, dt, g, n, D);
    return done("embedding backward", n * D);
}

/* ---- RMSNorm -------------------------------------------------------------------------------- */
__global__ void rmsnorm_kernel(float *y, float *rstd, const float *x, const float *w, int64_t D, double eps) {
    int64_t r = blockIdx.x;
    const float *xr = x + r * D;
    double ss = 0.0;
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x) ss += (double)xr[j] * (double)xr[j];
    ss = block_all(ss, 0.0, Sum());
    float inv = (float)(1.0 / sqrt(ss / (double)(D ? D : 1) + eps));
    if (rstd && threadIdx.x == 0) rstd[r] = inv;
    float *yr = y + r * D;
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x) yr[j] = w ? xr[j] * inv * w[j] : xr[j] * inv;
}

__global__ void rmsnorm_bwd_x_kernel(float *gx, const float *x, const float *w, const float *rstd, const float *g,
                                     int64_t D) {
    int64_t r = blockIdx.x;
    const float *xr = x + r * D, *gr = g + r * D;
    double dot = 0.0;
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x)
        dot += w ? (double)w[j] * gr[j] * xr[j] : (double)gr[j] * xr[j];
    dot = block_all(dot, 0.0, Sum());
    float inv = rstd[r];
    float c = (float)(dot * (double)inv * inv * inv / (double)D);
    float *o = gx + r * D;
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x)
        o[j] += w ? inv * w[j] * gr[j] - xr[j] * c : inv * gr[j] - xr[j] * c;
}

__global__ void rmsnorm_bwd_w_kernel(float *gw, const float *x, const float *rstd, const float *g, int64_t rows,
                                     int64_t D) {
    int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= D) return;
    double acc = 0.0;
    for (int64_t r = 0; r < rows; r++) acc += (double)g[r * D + j] * x[r * D + j] * (double)rstd[r];
    gw[j] += (float)acc;
}

nc_status nn_rmsnorm(float *y, float *rstd, const float *x, const float *w, int64_t rows, int64_t D, double eps) {
    if (rows == 0) return NC_OK;
    if (rows > INT32_MAX) return fail(NC_ERR_UNSUPPORTED, "rmsnorm: %lld rows exceed the CUDA grid", (long long)rows);
    rmsnorm_kernel<<<(unsigned)rows, kThreads>>>(y, rstd, x, w, D, eps);
    return done("rmsnorm", rows * D);
}

nc_status nn_rmsnorm_backward(float *gx, float *gw, const float *x, const float *w, const float *rstd,
                              const float *g, int64_t rows, int64_t D) {
    if (rows == 0 || D == 0) return NC_OK;
    if (rows > INT32_MAX)
        return fail(NC_ERR_UNSUPPORTED, "rmsnorm_backward: %lld rows exceed the CUDA grid", (long long)rows);
    if (gx) {
        rmsnorm_bwd_x_kernel<<<(unsigned)rows, kThreads>>>(gx, x, w, rstd, g, D);
        nc_status s = done("rmsnorm_backward (gx)", rows * D);
        if (s != NC_OK) return s;
    }
    if (gw) {
        rmsnorm_bwd_w_kernel<<<(unsigned)((D + kThreads - 1) / kThreads), kThreads>>>(gw, x, rstd, g, rows, D);
        return done("rmsnorm_backward (gweight)", rows * D);
    }
    return NC_OK;
}

/* ---- RoPE ----------------------------------------------------------------------------------- */
__global__ void rope_kernel(float *out, const float *x, const float *cs, const float *sn, int64_t rows, int64_t T,
                            int64_t H, int64_t D, float sign, int32_t acc) {
    int64_t h = D / 2, total = rows * h, step = (int64_t)gridDim.x * blockDim.x;
    for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += step) {
        int64_t r = e / h, i = e - r * h, t = (r / H) % T;
        float c = cs[t * h + i], s = sign * sn[t * h + i];
        float x1 = x[r * D + i], x2 = x[r * D + i + h];
        float y1 = x1 * c + x2 * s, y2 = x2 * c - x1 * s;
        float *o = out + r * D;
        if (acc) { o[i] += y1; o[i + h] += y2; }
        else { o[i] = y1; o[i + h] = y2; }
    }
}

nc_status nn_rope(float *out, const float *x, const float *cs, const float *sn, int64_t rows, int64_t T, int64_t H,
                  int64_t D, float sign, int32_t acc) {
    int64_t n = rows * (D / 2);
    if (n == 0) return NC_OK;
    rope_kernel<<<grid_for(n), kThreads>>>(out, x, cs, sn, rows, T, H, D, sign, acc);
    return done(acc ? "rope_backward" : "rope", n);
}

/* ---- BitNet quantizers ---------------------------------------------------------------------- */
__global__ void absmean_kernel(float *scale, const float *w, int64_t gs, double eps) {
    const float *wg = w + (int64_t)blockIdx.x * gs;
    double s = 0.0;
    for (int64_t i = threadIdx.x; i < gs; i += blockDim.x) s += fabsf(wg[i]);
    s = block_all(s, 0.0, Sum());
    double g = s / (double)gs;
    if (threadIdx.x == 0) scale[blockIdx.x] = (float)(g > eps ? g : eps);
}

__global__ void ternary_kernel(float *out, const float *w, const float *scale, int64_t n, int64_t gs) {
    int64_t step = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
        float gamma = scale[i / gs];
        float q = rintf(w[i] / gamma);
        q = q > 1.0f ? 1.0f : (q < -1.0f ? -1.0f : q);
        out[i] = gamma * q;
    }
}

__global__ void act_quant_kernel(float *out, float *scale, const float *x, int64_t D, float feps) {
    int64_t r = blockIdx.x;
    const float *xr = x + r * D;
    float m = 0.0f;
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
        float a = fabsf(xr[j]);
        m = a > m ? a : m;
    }
    m = block_all(m, 0.0f, Max());
    float s = 127.0f / (m > feps ? m : feps);
    if (threadIdx.x == 0) scale[r] = s;
    float *o = out + r * D;
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
        float q = rintf(xr[j] * s);
        q = q > 127.0f ? 127.0f : (q < -128.0f ? -128.0f : q);
        o[j] = q / s;
    }
}

nc_status nn_quant_weight(float *out, float *scale, const float *w, int64_t n, int64_t group_size, double eps) {
    if (n == 0) return NC_OK;
    int64_t gs = group_size == 0 ? n : group_size, ng = n / gs;
    if (ng > INT32_MAX) return fail(NC_ERR_UNSUPPORTED, "quant_weight_absmean: %lld groups exceed the CUDA grid", (long long)ng);
    absmean_kernel<<<(unsigned)ng, ng == 1 ? 1024 : kThreads>>>(scale, w, gs, eps);
    nc_status s = done("quant_weight_absmean (absmean)", n);
    if (s != NC_OK) return s;
    ternary_kernel<<<grid_for(n), kThreads>>>(out, w, scale, n, gs);
    return done("quant_weight_absmean", n);
}

nc_status nn_quant_act(float *out, float *scale, const float *x, int64_t rows, int64_t D, double eps) {
    if (rows == 0) return NC_OK;
    if (rows > INT32_MAX) return fail(NC_ERR_UNSUPPORTED, "quant_act_absmax: %lld rows exceed the CUDA grid", (long long)rows);
    act_quant_kernel<<<(unsigned)rows, kThreads>>>(out, scale, x, D, (float)eps);
    return done("quant_act_absmax", rows * D);
}

/* ---- cross-entropy -------------------------------------------------------------------------- */
__global__ void ce_kernel(float *lse, double *row_loss, const float *x, const void *tg, int32_t dt, int64_t V,
                          int64_t ignore_index, double ls, double z) {
    int64_t r = blockIdx.x;
    const float *xr = x + r * V;
    float m = -INFINITY;
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) m = xr[j] > m ? xr[j] : m;
    m = block_all(m, -INFINITY, Max());
    float s = 0.0f, sx = 0.0f;
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
        s += expf_fast(xr[j] - m);
        sx += xr[j];
    }
    s = block_all(s, 0.0f, Sum());
    sx = block_all(sx, 0.0f, Sum());
    if (threadIdx.x != 0) return;
    float l = m + logf(s);
    lse[r] = l;
    int64_t t = ld_idx(tg, dt, r);
    if (t == ignore_index) { row_loss[r] = 0.0; return; }
    double lse_d = l;
    row_loss[r] = (1.0 - ls) * (lse_d - xr[t]) + ls * (lse_d - (double)sx / (double)V) + z * lse_d * lse_d;
}

__global__ void ce_bwd_kernel(float *g, const float *x, const float *lse, const void *tg, int32_t dt,
                              const float *grows, int64_t V, double scale_all, int64_t ignore_index, double ls,
                              double z) {
    int64_t r = blockIdx.x;
    int64_t t = ld_idx(tg, dt, r);
    double scale = grows ? (double)grows[r] : scale_all;
    if (t == ignore_index || (grows && scale == 0.0)) return;
    const float *xr = x + r * V;
    float *gr = g + r * V;
    float l = lse[r];
    float a = (float)(scale * (1.0 + 2.0 * z * l));
    float c = (float)(scale * ls / (double)V);
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) gr[j] += a * expf_fast(xr[j] - l) - c;
    __syncthreads();
    if (threadIdx.x == 0) gr[t] -= (float)(scale * (1.0 - ls));
}

nc_status nn_cross_entropy(float *lse, double *row_loss, const float *x, const void *tg, int32_t dt, int64_t N,
                           int64_t V, int64_t ignore_index, double ls, double z) {
    if (N == 0) return NC_OK;
    if (N > INT32_MAX) return fail(NC_ERR_UNSUPPORTED, "cross_entropy: %lld rows exceed the CUDA grid", (long long)N);
    ce_kernel<<<(unsigned)N, kThreads>>>(lse, row_loss, x, tg, dt, V, ignore_index, ls, z);
    return done("cross_entropy", N * V);
}

nc_status nn_cross_entropy_backward(float *g, const float *x, const float *lse, const void *tg, int32_t dt,
                                    const float *grows, int64_t N, int64_t V, double scale_all, int64_t ignore_index,
                                    double ls, double z) {
    if (N == 0 || V == 0) return NC_OK;
    if (N > INT32_MAX)
        return fail(NC_ERR_UNSUPPORTED, "cross_entropy_backward: %lld rows exceed the CUDA grid", (long long)N);
    ce_bwd_kernel<<<(unsigned)N, kThreads>>>(g, x, lse, tg, dt, grows, V, scale_all, ignore_index, ls, z);
    return done("cross_entropy_backward", N * V);
}

/* ---- softmax / log-softmax (kernels/cpu/softmax.c's reference rows) ------------------------ */
__global__ void softmax_kernel(float *y, const float *x, int64_t n, int32_t log) {
    int64_t r = blockIdx.x;
    const float *xr = x + r * n;
    float *yr = y + r * n;
    float m = -INFINITY;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) m = xr[j] > m ? xr[j] : m;
    m = block_all(m, -INFINITY, Max());
    if (m == -INFINITY) m = 0.0f;   /* all -inf row: NaN results, as the CPU */
    double s = 0.0;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) s += expf_fast(xr[j] - m);
    s = block_all(s, 0.0, Sum());
    if (log) {
        float lse = m + logf((float)s);
        for (int64_t j = threadIdx.x; j < n; j += blockDim.x) yr[j] = xr[j] - lse;
    } else {
        float inv = (float)(1.0 / s);
        for (int64_t j = threadIdx.x; j < n; j += blockDim.x) yr[j] = expf_fast(xr[j] - m) * inv;
    }
}

__global__ void softmax_bwd_kernel(float *ga, const float *y, const float *g, int64_t n, int32_t log) {
    int64_t r = blockIdx.x;
    const float *yr = y + r * n, *gr = g + r * n;
    float *o = ga + r * n;
    float s = 0.0f;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) s += log ? gr[j] : gr[j] * yr[j];
    s = block_all(s, 0.0f, Sum());
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x)
        o[j] += log ? gr[j] - expf_fast(yr[j]) * s : yr[j] * (gr[j] - s);
}

nc_status nn_softmax(float *y, const float *x, int64_t rows, int64_t n, int32_t log) {
    if (rows == 0 || n == 0) return NC_OK;
    if (rows > INT32_MAX) return fail(NC_ERR_UNSUPPORTED, "softmax: %lld rows exceed the CUDA grid", (long long)rows);
    softmax_kernel<<<(unsigned)rows, kThreads>>>(y, x, n, log);
    return done(log ? "log_softmax" : "softmax", rows * n);
}

nc_status nn_softmax_backward(float *ga, const float *y, const float *g, int64_t rows, int64_t n, int32_t log) {
    if (rows == 0 || n == 0) return NC_OK;
    if (rows > INT32_MAX)
        return fail(NC_ERR_UNSUPPORTED, "softmax_backward: %lld rows exceed the CUDA grid", (long long)rows);
    softmax_bwd_kernel<<<(unsigned)rows, kThreads>>>(ga, y, g, n, log);
    return done("softmax_backward", rows * n);
}

/* ---- attention ------------------------------------------------------------------------------ */
/* last key index + 1 visible to query t (all S when not causal) */
__device__ __forceinline__ int64_t key_end(const nc_cuda_attn &a, int64_t t) {
    if (!a.causal) return a.S;
    int64_t e = a.S - a.T + t + 1;
    return e < 0 ? 0 : (e > a.S ? a.S : e);
}

/* grid: B H ceil(T / 4) blocks of 4 warps; warp w owns query row t0 + w. Dynamic shared memory:
 * Qs (4 x D, scaled), Ks and Vs (32 x (D + 1)). */
__global__ void attn_fwd_kernel(float *out, float *lse, const float *q, const float *k, const float *v,
                                nc_cuda_attn a) {
    extern __shared__ float smem[];
    int64_t D = a.D, DP = a.D + 1, T = a.T, H = a.H;
    int64_t nqb = (T + kRowsPerBlock - 1) / kRowsPerBlock;
    int64_t item = blockIdx.x;
    int64_t qb = item % nqb, h = (item / nqb) % H, b = item / (nqb * H);
    int64_t hk = h / (H / a.Hkv);
    int64_t t0 = qb * kRowsPerBlock;
    int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int64_t t = t0 + w;
    bool row_ok = t < T;
    float *Qs = smem, *Ks = Qs + kRowsPerBlock * D, *Vs = Ks + kKT * DP;
    for (int64_t e = threadIdx.x; e < kRowsPerBlock * D; e += blockDim.x) {
        int64_t i = e / D, d = e - i * D;
        float val = 0.0f;
        if (t0 + i < T) val = q[b * a.qs[0] + (t0 + i) * a.qs[1] + h * a.qs[2] + d * a.qs[3]] * a.scale;
        Qs[e] = val;
    }
    int64_t last = t0 + kRowsPerBlock - 1 < T ? t0 + kRowsPerBlock - 1 : T - 1;
    int64_t kend = key_end(a, last);
    int64_t my_end = row_ok ? key_end(a, t) : 0;
    float acc[kMaxK];
#pragma unroll
    for (int c = 0; c < kMaxK; c++) acc[c] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    const float *qi = Qs + w * D;
    for (int64_t s0 = 0; s0 < kend; s0 += kKT) {
        int64_t nk = kend - s0 < kKT ? kend - s0 : kKT;
        __syncthreads();   /* the previous tile is no longer read */
        for (int64_t e = threadIdx.x; e < nk * D; e += blockDim.x) {
            int64_t j = e / D, d = e - j * D, s = s0 + j;
            Ks[j * DP + d] = k[b * a.ks[0] + s * a.ks[1] + hk * a.ks[2] + d * a.ks[3]];
            Vs[j * DP + d] = v[b * a.vs[0] + s * a.vs[1] + hk * a.vs[2] + d * a.vs[3]];
        }
        __syncthreads();
        if (!row_ok) continue;
        int64_t jn = my_end - s0 < nk ? my_end - s0 : nk;   /* visible keys of this tile (warp-uniform) */
        if (jn <= 0) continue;
        float sc = -INFINITY;
        if (lane < jn) {
            float sum = 0.0f;
            for (int64_t d = 0; d < D; d++) sum += qi[d] * Ks[lane * DP + d];
            sc = sum;
        }
        float mx = warp_all(sc, Max());
        float mnew = mx > m ? mx : m;
        float corr = m == -INFINITY ? 0.0f : expf_fast(m - mnew);
        float p = lane < jn ? expf_fast(sc - mnew) : 0.0f;
        float ps = warp_all(p, Sum());
        l = l * corr + ps;
        m = mnew;
#pragma unroll
        for (int c = 0; c < kMaxK; c++) acc[c] *= corr;
        for (int j = 0; j < jn; j++) {
            float pj = __shfl_sync(0xffffffffu, p, j);
#pragma unroll
            for (int c = 0; c < kMaxK; c++) {
                int64_t d = lane + 32 * c;
                if (d < D) acc[c] += pj * Vs[j * DP + d];
            }
        }
    }
    if (!row_ok) return;
    float inv = l > 0.0f ? 1.0f / l : 0.0f;
    float *o = out + ((b * T + t) * H + h) * D;
#pragma unroll
    for (int c = 0; c < kMaxK; c++) {
        int64_t d = lane + 32 * c;
        if (d < D) o[d] = acc[c] * inv;
    }
    if (lane == 0) lse[(b * H + h) * T + t] = l > 0.0f ? m + logf(l) : -INFINITY;
}

/* D_i = rowsum(dO_i O_i) per (b, h, t) row (0 for masked rows); one warp per row */
__global__ void attn_dvec_kernel(float *dvec, const float *o, const float *go, const uint8_t *qkeep, nc_cuda_attn a) {
    int64_t row = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (row >= a.B * a.H * a.T) return;
    int64_t t = row % a.T, h = (row / a.T) % a.H, b = row / (a.T * a.H);
    float s = 0.0f;
    if (!qkeep || qkeep[b * a.T + t])
        for (int64_t d = lane; d < a.D; d += 32)
            s += o[b * a.os[0] + t * a.os[1] + h * a.os[2] + d * a.os[3]] *
                 go[b * a.gs[0] + t * a.gs[1] + h * a.gs[2] + d * a.gs[3]];
    s = warp_all(s, Sum());
    if (lane == 0) dvec[row] = s;
}

/* dQ: one warp per query row (b, h, t): gq += scale sum_s dS_s K_s */
__global__ void attn_bwd_q_kernel(float *gq, const float *lse, const float *q, const float *k, const float *v,
                                  const float *go, const uint8_t *qkeep, const float *dvec, nc_cuda_attn a) {
    int64_t row = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (row >= a.B * a.T * a.H) return;
    int64_t h = row % a.H, t = (row / a.H) % a.T, b = row / (a.H * a.T);   /* row = (b T + t) H + h */
    if (qkeep && !qkeep[b * a.T + t]) return;
    int64_t li = (b * a.H + h) * a.T + t;
    float L = lse[li], Di = dvec[li];
    if (L == -INFINITY) return;
    int64_t D = a.D, hk = h / (a.H / a.Hkv), send = key_end(a, t);
    float qr[kMaxK], gr[kMaxK], dq[kMaxK];
#pragma unroll
    for (int c = 0; c < kMaxK; c++) {
        int64_t d = lane + 32 * c;
        bool in = d < D;
        qr[c] = in ? q[b * a.qs[0] + t * a.qs[1] + h * a.qs[2] + d * a.qs[3]] * a.scale : 0.0f;
        gr[c] = in ? go[b * a.gs[0] + t * a.gs[1] + h * a.gs[2] + d * a.gs[3]] : 0.0f;
        dq[c] = 0.0f;
    }
    for (int64_t s = 0; s < send; s++) {
        const float *kr = k + b * a.ks[0] + s * a.ks[1] + hk * a.ks[2];
        const float *vr = v + b * a.vs[0] + s * a.vs[1] + hk * a.vs[2];
        float kc[kMaxK], sc = 0.0f, dp = 0.0f;
#pragma unroll
        for (int c = 0; c < kMaxK; c++) {
            int64_t d = lane + 32 * c;
            kc[c] = d < D ? kr[d * a.ks[3]] : 0.0f;
            if (d < D) {
                sc += qr[c] * kc[c];
                dp += gr[c] * vr[d * a.vs[3]];
            }
        }
        sc = warp_all(sc, Sum());
        dp = warp_all(dp, Sum());
        float p = expf_fast(sc - L);
        float ds = p * (dp - Di);
#pragma unroll
        for (int c = 0; c < kMaxK; c++) dq[c] += ds * kc[c];
    }
    float *o = gq + ((b * a.T + t) * a.H + h) * D;
#pragma unroll
    for (int c = 0; c < kMaxK; c++) {
        int64_t d = lane + 32 * c;
        if (d < D) o[d] += a.scale * dq[c];
    }
}

/* dK, dV: one warp per key row (b, kv head, s), over the group's query heads and visible queries */
__global__ void attn_bwd_kv_kernel(float *gk, float *gv, const float *lse, const float *q, const float *k,
                                   const float *v, const float *go, const uint8_t *qkeep, const float *dvec,
                                   nc_cuda_attn a) {
    int64_t row = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (row >= a.B * a.S * a.Hkv) return;
    int64_t hk = row % a.Hkv, s = (row / a.Hkv) % a.S, b = row / (a.Hkv * a.S);   /* row = (b S + s) Hkv + hk */
    int64_t D = a.D, G = a.H / a.Hkv;
    int64_t tq0 = a.causal ? s - (a.S - a.T) : 0;
    if (tq0 < 0) tq0 = 0;
    float kc[kMaxK], vc[kMaxK], dk[kMaxK], dv[kMaxK];
#pragma unroll
    for (int c = 0; c < kMaxK; c++) {
        int64_t d = lane + 32 * c;
        bool in = d < D;
        kc[c] = in ? k[b * a.ks[0] + s * a.ks[1] + hk * a.ks[2] + d * a.ks[3]] : 0.0f;
        vc[c] = in ? v[b * a.vs[0] + s * a.vs[1] + hk * a.vs[2] + d * a.vs[3]] : 0.0f;
        dk[c] = 0.0f;
        dv[c] = 0.0f;
    }
    for (int64_t gi = 0; gi < G; gi++) {
        int64_t h = hk * G + gi;
        for (int64_t t = tq0; t < a.T; t++) {
            if (qkeep && !qkeep[b * a.T + t]) continue;
            int64_t li = (b * a.H + h) * a.T + t;
            float L = lse[li], Di = dvec[li];
            if (L == -INFINITY) continue;
            const float *qr = q + b * a.qs[0] + t * a.qs[1] + h * a.qs[2];
            const float *gr = go + b * a.gs[0] + t * a.gs[1] + h * a.gs[2];
            float qv[kMaxK], gv_[kMaxK], sc = 0.0f, dp = 0.0f;
#pragma unroll
            for (int c = 0; c < kMaxK; c++) {
                int64_t d = lane + 32 * c;
                bool in = d < D;
                qv[c] = in ? qr[d * a.qs[3]] : 0.0f;
                gv_[c] = in ? gr[d * a.gs[3]] : 0.0f;
                sc += (qv[c] * a.scale) * kc[c];
                dp += gv_[c] * vc[c];
            }
            sc = warp_all(sc, Sum());
            dp = warp_all(dp, Sum());
            float p = expf_fast(sc - L);
            float ds = p * (dp - Di);
#pragma unroll
            for (int c = 0; c < kMaxK; c++) {
                dv[c] += p * gv_[c];
                dk[c] += ds * qv[c];
            }
        }
    }
    int64_t base = ((b * a.S + s) * a.Hkv + hk) * D;
#pragma unroll
    for (int c = 0; c < kMaxK; c++) {
        int64_t d = lane + 32 * c;
        if (d >= D) continue;
        if (gk) gk[base + d] += a.scale * dk[c];
        if (gv) gv[base + d] += dv[c];
    }
}

nc_status attn_geometry(const char *op, const nc_cuda_attn *g) {
    if (!g) return fail(NC_ERR_ARG, "%s: NULL geometry", op);
    if (g->D > NC_CUDA_ATTN_MAXD)
        return fail(NC_ERR_UNSUPPORTED, "%s: head dim %lld exceeds the CUDA kernels' limit %d", op, (long long)g->D,
                    NC_CUDA_ATTN_MAXD);
    if (g->Hkv <= 0 || g->H % g->Hkv)
        return fail(NC_ERR_ARG, "%s: H %lld is not a multiple of Hkv %lld", op, (long long)g->H, (long long)g->Hkv);
    return NC_OK;
}

unsigned warp_blocks(int64_t rows) { return (unsigned)((rows + kRowsPerBlock - 1) / kRowsPerBlock); }

nc_status nn_attention(float *out, float *lse, const float *q, const float *k, const float *v, const nc_cuda_attn *g) {
    static const char *op = "attention";
    nc_status st = attn_geometry(op, g);
    if (st != NC_OK) return st;
    int64_t items = g->B * g->H * ((g->T + kRowsPerBlock - 1) / kRowsPerBlock);
    if (items == 0 || g->D == 0 || g->S == 0) return NC_OK;   /* the caller fills the degenerate cases */
    if (items > INT32_MAX) return fail(NC_ERR_UNSUPPORTED, "%s: %lld blocks exceed the CUDA grid", op, (long long)items);
    size_t shm = sizeof(float) * (size_t)(kRowsPerBlock * g->D + 2 * kKT * (g->D + 1));
    if (shm > 48 * 1024) {
        cudaError_t e = cudaFuncSetAttribute(attn_fwd_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)shm);
        if (e != cudaSuccess) return cuda_fail(e, "attention: cudaFuncSetAttribute (shared memory)");
    }
    attn_fwd_kernel<<<(unsigned)items, 32 * kRowsPerBlock, shm>>>(out, lse, q, k, v, *g);
    return done(op, items);
}

nc_status nn_attention_backward(float *gq, float *gk, float *gv, const float *out, const float *lse, const float *q,
                                const float *k, const float *v, const float *gout, const uint8_t *qkeep,
                                const nc_cuda_attn *g, float *dvec) {
    static const char *op = "attention_backward";
    nc_status st = attn_geometry(op, g);
    if (st != NC_OK) return st;
    if (!gq && !gk && !gv) return NC_OK;
    int64_t nq = g->B * g->H * g->T, nk = g->B * g->S * g->Hkv;
    if (nq == 0 || g->S == 0 || g->D == 0) return NC_OK;
    if (!dvec) return fail(NC_ERR_ARG, "%s: NULL dvec workspace", op);
    if (warp_blocks(nq) == 0 || nq / kRowsPerBlock > INT32_MAX || nk / kRowsPerBlock > INT32_MAX)
        return fail(NC_ERR_UNSUPPORTED, "%s: the problem exceeds the CUDA grid", op);
    int th = 32 * kRowsPerBlock;
    attn_dvec_kernel<<<warp_blocks(nq), th>>>(dvec, out, gout, qkeep, *g);
    if ((st = done("attention_backward (D = rowsum(dO O))", nq)) != NC_OK) return st;
    if (gq) {
        attn_bwd_q_kernel<<<warp_blocks(nq), th>>>(gq, lse, q, k, v, gout, qkeep, dvec, *g);
        if ((st = done("attention_backward (dQ)", nq)) != NC_OK) return st;
    }
    if (gk || gv) {
        attn_bwd_kv_kernel<<<warp_blocks(nk), th>>>(gk, gv, lse, q, k, v, gout, qkeep, dvec, *g);
        if ((st = done("attention_backward (dK, dV)", nk)) != NC_OK) return st;
    }
    return NC_OK;
}

}  // namespace

/* the nc_cuda_api entries (common.cuh) */
nc_status op_embedding(float *out, const float *w, const void *idx, int32_t dt, int64_t n, int64_t D) {
    return nn_embedding(out, w, idx, dt, n, D);
}
nc_status op_embedding_backward(float *gw, const void *idx, int32_t dt, const float *g, int64_t n, int64_t D) {
    return nn_embedding_backward(gw, idx, dt, g, n, D);
}
nc_status op_rmsnorm(float *y, float *rstd, const float *x, const float *w, int64_t rows, int64_t D, double eps) {
    return nn_rmsnorm(y, rstd, x, w, rows, D, eps);
}
nc_status op_rmsnorm_backward(float *gx, float *gw, const float *x, const float *w, const float *rstd, const float *g,
                              int64_t rows, int64_t D) {
    return nn_rmsnorm_backward(gx, gw, x, w, rstd, g, rows, D);
}
nc_status op_rope(float *out, const float *x, const float *cs, const float *sn, int64_t rows, int64_t T, int64_t H,
                  int64_t D, float sign, int32_t acc) {
    return nn_rope(out, x, cs, sn, rows, T, H, D, sign, acc);
}
nc_status op_quant_weight(float *out, float *scale, const float *w, int64_t n, int64_t group_size, double eps) {
    return nn_quant_weight(out, scale, w, n, group_size, eps);
}
nc_status op_quant_act(float *out, float *scale, const float *x, int64_t rows, int64_t D, double eps) {
    return nn_quant_act(out, scale, x, rows, D, eps);
}
nc_status op_cross_entropy(float *lse, double *row_loss, const float *x, const void *tg, int32_t dt, int64_t N,
                           int64_t V, int64_t ignore_index, double ls, double z) {
    return nn_cross_entropy(lse, row_loss, x, tg, dt, N, V, ignore_index, ls, z);
}
nc_status op_cross_entropy_backward(float *g, const float *x, const float *lse, const void *tg, int32_t dt,
                                    const float *grows, int64_t N, int64_t V, double scale_all, int64_t ignore_index,
                                    double ls, double z) {
    return nn_cross_entropy_backward(g, x, lse, tg, dt, grows, N, V, scale_all, ignore_index, ls, z);
}
nc_status op_attention(float *out, float *lse, const float *q, const float *k, const float *v, const nc_cuda_attn *g) {
    return nn_attention(out, lse, q, k, v, g);
}
nc_status op_attention_backward(float *gq, float *gk, float *gv, const float *out, const float *lse, const float *q,
                                const float *k, const float *v, const float *gout, const uint8_t *qkeep,
                                const nc_cuda_attn *g, float *dvec) {
    return nn_attention_backward(gq, gk, gv, out, lse, q, k, v, gout, qkeep, g, dvec);
}

nc_status op_softmax(float *y, const float *x, int64_t rows, int64_t n, int32_t log) {
    return nn_softmax(y, x, rows, n, log);
}
nc_status op_softmax_backward(float *ga, const float *y, const float *g, int64_t rows, int64_t n, int32_t log) {
    return nn_softmax_backward(ga, y, g, rows, n, log);
}

}  // namespace nc_cu
