/* core/backend.h — the device backend vtable.
 *
 * Promise: the CPU backend is always compiled into libnanochat.so; the CUDA backend lives in
 * lib/libnanochat_cuda.so (kernels/cuda/ sources, built when nvcc exists) and is dlopen'ed on first
 * use, so libnanochat.so runs on machines without a GPU or CUDA runtime. The CUDA library exports
 * exactly one symbol, nc_cuda_api_get, returning a filled nc_cuda_api of this ABI version.
 *
 * All pointers are device pointers unless named host_*. Element counts and strides are in
 * elements. Every function returns nc_status and reports failures through set_error-free
 * strings in last_error() (the core copies them into its own thread-local message).
 */
#ifndef NC_BACKEND_H
#define NC_BACKEND_H

#include "nanochat.h"

#define NC_CUDA_API_VERSION 4   /* 3: the optimizer entries (kernels/cuda/optim.cu); 4: the nn entries (kernels/cuda/nn.cu) */

/* Up to three strided operands sharing one logical shape (broadcast operands have stride 0). */
typedef struct nc_strided3 {
    int32_t ndim;
    int64_t shape[NC_MAX_DIMS];
    int64_t st_out[NC_MAX_DIMS];
    int64_t st_a[NC_MAX_DIMS];
    int64_t st_b[NC_MAX_DIMS];
} nc_strided3;

/* A reduction split (nc_sum_to): kept dims (one output element each, strides in src and dst)
 * and reduced dims (summed over, strides in src); nkept / nred are the products of the shapes. */
typedef struct nc_reduce_geo {
    int32_t nk, nr;
    int64_t kshape[NC_MAX_DIMS], kst_src[NC_MAX_DIMS], kst_dst[NC_MAX_DIMS];
    int64_t rshape[NC_MAX_DIMS], rst_src[NC_MAX_DIMS];
    int64_t nkept, nred;
} nc_reduce_geo;

enum nc_copy_kind { NC_COPY_H2D = 0, NC_COPY_D2H = 1, NC_COPY_D2D = 2 };

/* ---- optimizer steps (API 3; kernels/cuda/optim.cu, dispatched from kernels/cpu/optim*.c) ----
 * Every constant is computed once on the host by the same C code the CPU kernels use (so the f32
 * values are identical bits) and passed in this struct; the device kernels then repeat the CPU's
 * f32 operation order without contraction (no FMA), so elementwise results match the CPU bitwise. */
typedef struct nc_cuda_optc {
    /* AdamW (kernels/cpu/optim.c adam_consts) and Lion (b1, b2) */
    float b1, b2, eps, coef, bc2s;
    int32_t galore_eps;     /* 1 = enum nc_adam_eps GALORE placement, 0 = TORCH */
    /* Muon momentum: m = mu m + damp g; u = nesterov ? damp g + mu m : m */
    float mu, damp;
    int32_t nesterov;
    /* 8-bit momentum / block quantizer */
    int32_t stochastic, map;   /* map: enum nc_quant8_map */
    int64_t block;
    uint64_t seed, counter;
    /* parameter update p = p * decay - step * u */
    float decay, step;
} nc_cuda_optc;

/* The 8-bit code map exactly as the CPU builds it (kernels/cpu/optim.c build_map): 128 ascending
 * magnitudes, nearest-entry thresholds mid (mid[127] = 2, a sentinel) and a 1025-entry start table
 * for the threshold search. The CUDA side copies the host table into __constant__ memory. */
#define NC_MAP_BINS 1024
typedef struct nc_code_map {
    float mag[128];
    float mid[128];
    uint8_t lut[NC_MAP_BINS + 1];
} nc_code_map;

/* Floats of device workspace newton_schulz needs for a (rows, cols) matrix: the per-4096-chunk
 * double partial sums of the Frobenius norm (2 floats each), the scale (2), X, Y (r c), A, B (r r)
 * with r = min(rows, cols), c = max(rows, cols). */
#define NC_CUDA_NS_CHUNK 4096
static inline int64_t nc_cuda_ns_ws_floats(int64_t rows, int64_t cols) {
    int64_t r = rows < cols ? rows : cols, n = rows * cols;
    return 2 * ((n + NC_CUDA_NS_CHUNK - 1) / NC_CUDA_NS_CHUNK) + 2 + 2 * n + 2 * r * r;
}

/* Attention geometry (API 4): q (B, T, H, D), k, v (B, S, Hkv, D), out / gout (B, T, H, D) with the
 * given element strides (0 for size-1 dims); lse and the backward outputs gq, gk, gv contiguous. */
typedef struct nc_cuda_attn {
    int64_t B, T, S, H, Hkv, D;
    int32_t causal;
    float scale;
    int64_t qs[4], ks[4], vs[4], os[4], gs[4];
} nc_cuda_attn;

/* Largest head dim the CUDA attention kernels take (registers per lane: NC_CUDA_ATTN_MAXD / 32). */
#define NC_CUDA_ATTN_MAXD 256

typedef struct nc_cuda_api {
    int32_t api_version;                       /* NC_CUDA_API_VERSION */
    const char *(*last_error)(void);
    int32_t (*device_count)(void);             /* 0 when no GPU / driver */
    nc_status (*malloc)(void **p, int64_t nbytes);
    nc_status (*free)(void *p);
    nc_status (*memcpy)(void *dst, const void *src, int64_t nbytes, int32_t kind);
    nc_status (*memset0)(void *p, int64_t nbytes);
    nc_status (*synchronize)(void);
    /* fill n elements of a contiguous buffer of dtype (f32, f64, i32, i64, u8, i8, f16, bf16) */
    nc_status (*fill)(void *p, int64_t n, int32_t dtype, double value);
    /* out[idx_out] = convert(a[idx_a]) over the strided shape; dtype_out/dtype_a any plain dtype */
    nc_status (*strided_copy)(void *out, int32_t dtype_out, const void *a, int32_t dtype_a, const nc_strided3 *g);
    /* Row-major semantics: C (m, n) = alpha * op(A) op(B) + beta * C for `batch` matrices with the
     * given element strides between matrices (0 = shared). lda/ldb/ldc are row strides. */
    nc_status (*sgemm)(int32_t trans_a, int32_t trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                       const float *a, int64_t lda, int64_t stride_a,
                       const float *b, int64_t ldb, int64_t stride_b, float beta,
                       float *c, int64_t ldc, int64_t stride_c, int64_t batch);
    /* f32 elementwise, strided with broadcasting; op from enum nc_binary_op / nc_unary_op */
    nc_status (*binary)(float *out, const float *a, const float *b, const nc_strided3 *g, int32_t op);
    nc_status (*binary_scalar)(float *out, const float *a, const nc_strided3 *g, double s, int32_t op);
    nc_status (*unary)(float *out, const float *a, const nc_strided3 *g, int32_t op);
    /* ga (contiguous, n) += gout * f'(a) with out = f(a); all contiguous, n elements */
    nc_status (*unary_backward)(float *ga, const float *out, const float *a, const float *gout, int64_t n, int32_t op);
    /* out (strided dst, may be a view) += alpha * a (broadcast strided) */
    nc_status (*add_scaled)(float *out, const float *a, const nc_strided3 *g, double alpha);
    /* dst[kept] += alpha * sum over the reduced dims of src (double accumulation in a fixed order,
     * one thread per kept element); dst's kept positions must be distinct (no stride-0 dims) */
    nc_status (*sum_to)(float *dst, const float *src, const nc_reduce_geo *g, double alpha);

    /* ---- optimizers (API 3); all buffers contiguous f32 / i8 device memory of n elements ---- */
    /* AdamW on n elements: updates m, v; with p: p = p * decay - step * d (d = the Adam direction),
     * else writes d into d_out (GaLore's low-rank direction). */
    nc_status (*adam)(float *p, float *d_out, const float *g, float *m, float *v, int64_t n, const nc_cuda_optc *c);
    /* Lion: updates m; with p: p = p * decay - step * sign(b1 m + (1-b1) g), else d_out = that sign */
    nc_status (*lion)(float *p, float *d_out, const float *g, float *m, int64_t n, const nc_cuda_optc *c);
    /* Muon f32 momentum: m updated in place, u = the NS input (nesterov or plain) */
    nc_status (*muon_momentum)(float *u, float *m, const float *g, int64_t n, const nc_cuda_optc *c);
    /* Muon 8-bit momentum: one CUDA block per quantization block dequantizes, updates,
     * requantizes (codes, scales in place) and writes u; map_host: the CPU's table of c->map */
    nc_status (*muon8_momentum)(float *u, int8_t *codes, float *scales, const float *g, int64_t n,
                                const nc_cuda_optc *c, const nc_code_map *map_host);
    /* p = p * decay - step * u (u NULL: p = p * decay) */
    nc_status (*apply_update)(float *p, const float *u, int64_t n, float decay, float step);
    /* blockwise 8-bit codes of x (n), as nc_quant8_block_map: uses c->block, stochastic, seed, counter, map */
    nc_status (*quant8)(int8_t *codes, float *scales, const float *x, int64_t n, const nc_cuda_optc *c,
                        const nc_code_map *map_host);
    nc_status (*dequant8)(float *out, const int8_t *codes, const float *scales, int64_t n, int64_t block, int32_t map,
                          const nc_code_map *map_host);
    /* In-place Newton-Schulz of x (rows, cols) as nc_newton_schulz (host_abc: steps' (a, b, c) triples
     * on the host); ws: nc_cuda_ns_ws_floats(rows, cols) floats of device memory (8-byte aligned). */
    nc_status (*newton_schulz)(float *x, int64_t rows, int64_t cols, int32_t steps, const double *host_abc,
                               int32_t n_abc, double fro_mult, double eps, float *ws);

    /* ---- nn ops (API 4; kernels/cuda/nn.cu, dispatched from kernels/cpu/{index,norm,rope,quant,loss,
     * attention}.c after the same argument checks as the CPU). Tensors are contiguous unless a
     * geometry says otherwise; index tensors (idx_dtype NC_I32 / NC_I64) are already range-checked
     * on the host. Each entry says where its summation order differs from the CPU's. ---- */
    /* out (n, D) = w[idx[i]] rows; w (V, D) */
    nc_status (*embedding)(float *out, const float *w, const void *idx, int32_t idx_dtype, int64_t n, int64_t D);
    /* gw (V, D) += scatter of g (n, D) rows; one thread per column walks the tokens in order (the
     * CPU's order: bit-identical) */
    nc_status (*embedding_backward)(float *gw, const void *idx, int32_t idx_dtype, const float *g, int64_t n, int64_t D);
    /* y = x rstd (* w), rstd = 1/sqrt(mean x^2 + eps) (double sum: tree order); rstd may be NULL */
    nc_status (*rmsnorm)(float *y, float *rstd, const float *x, const float *w, int64_t rows, int64_t D, double eps);
    /* gx += rstd w g - x c (gx may be NULL); gw += sum over rows of g x rstd (gw may be NULL; double,
     * rows in order: the CPU's order); w may be NULL (ones) */
    nc_status (*rmsnorm_backward)(float *gx, float *gw, const float *x, const float *w, const float *rstd,
                                  const float *g, int64_t rows, int64_t D);
    /* rows = B T H rows of D; cos, sin (T, D/2); sign +1 forward / -1 inverse; acc: out += */
    nc_status (*rope)(float *out, const float *x, const float *cos, const float *sin, int64_t rows, int64_t T,
                      int64_t H, int64_t D, float sign, int32_t acc);
    /* absmean ternary: per group of group_size (n: one group) gamma = max(mean |w|, eps) (double
     * sum: tree order), out = gamma clamp(rint(w / gamma), -1, 1), scale[g] = gamma */
    nc_status (*quant_weight)(float *out, float *scale, const float *w, int64_t n, int64_t group_size, double eps);
    /* absmax int8 per row: s = 127 / max(max |x|, eps), out = clamp(rint(x s), -128, 127) / s (exact) */
    nc_status (*quant_act)(float *out, float *scale, const float *x, int64_t rows, int64_t D, double eps);
    /* per row: lse (f32), row_loss (f64, 0 for ignored rows) as kernels/cpu/loss.c (the mean is
     * taken on the host in row order); x (N, V) */
    nc_status (*cross_entropy)(float *lse, double *row_loss, const float *x, const void *targets, int32_t idx_dtype,
                               int64_t N, int64_t V, int64_t ignore_index, double label_smoothing, double z_loss);
    /* g (N, V) += scale_r (p (1 + 2 z lse) - (1-ls) onehot - ls / V); scale_r = grows[r] (grows != NULL,
     * rows with 0 skipped) else scale_all */
    nc_status (*cross_entropy_backward)(float *g, const float *x, const float *lse, const void *targets,
                                        int32_t idx_dtype, const float *grows, int64_t N, int64_t V, double scale_all,
                                        int64_t ignore_index, double label_smoothing, double z_loss);
    /* out, lse (B, H, T) of causal / full GQA attention (online softmax over key tiles) */
    nc_status (*attention)(float *out, float *lse, const float *q, const float *k, const float *v,
                           const nc_cuda_attn *g);
    /* gq, gk, gv (+=, each may be NULL); qkeep (B, T) u8 or NULL; dvec: B H T floats of workspace */
    nc_status (*attention_backward)(float *gq, float *gk, float *gv, const float *out, const float *lse,
                                    const float *q, const float *k, const float *v, const float *gout,
                                    const uint8_t *qkeep, const nc_cuda_attn *g, float *dvec);
    /* softmax / log-softmax (log != 0) over rows of n (exp-sum in double, tree order) */
    nc_status (*softmax)(float *y, const float *x, int64_t rows, int64_t n, int32_t log);
    /* ga += backward of softmax / log-softmax given y = the forward output (f32 row sum, tree order) */
    nc_status (*softmax_backward)(float *ga, const float *y, const float *g, int64_t rows, int64_t n, int32_t log);
} nc_cuda_api;

typedef const nc_cuda_api *(*nc_cuda_api_get_fn)(void);

#endif
