/* kernels/cpu/elementwise.c — f32 elementwise ops: binary (with broadcasting), binary with a
 * scalar, unary activations, their backward passes, add_scaled, clamp, where and compare.
 *
 * Promise: inputs may have any strides (0 = broadcast); the iteration space is coalesced (size-1
 * dims dropped, adjacent dims merged when every operand allows) so a contiguous same-shape call
 * becomes one flat loop, which runs `omp parallel for simd` above NC_PAR_MIN elements. That flat
 * loop is compiled twice: here (the portable reference, `_base`) and from elementwise_avx2.c with
 * -mavx2 -mfma (`_avx2`); nc_cpu_avx2() picks one. Exact ops (+ - * / max min neg relu relu2 abs
 * square sqrt rsqrt recip, add_scaled) give bit-identical results on both paths: the build is ISO
 * C11, so GCC never contracts a*b+c into an FMA, and both loops evaluate the same expressions.
 * The AVX2 build computes exp, sigmoid, silu, gelu (erf and tanh forms) and tanh (and the silu /
 * gelu backward) with vector polynomials (simd_avx2.h; checked against float64 references with
 * ulp / relative bounds in spec/ops/simd_spec.lua); log, sin, cos, pow call the same libm
 * functions on both paths. Outputs of at least nc_nt_bytes() are written through an L1 chunk with streaming stores
 * (same arithmetic, no read-for-ownership of the output). Results never depend on the thread
 * count (every element is computed independently).
 * Device rules: CUDA tensors go to the CUDA backend for binary, binary_scalar, unary,
 * unary_backward (contiguous) and add_scaled; the other ops here are CPU-only.
 */
#pragma GCC optimize("no-trapping-math")

#include "internal.h"
#include "simd_avx2.h"
#include "sched.h"
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "kvariant.h"

/* ---- scalar math shared by every path (identical expressions on both builds) --------------- */
#define EW_SQRT1_2 0.70710678118654752f      /* 1/sqrt(2) */
#define EW_INV_SQRT_2PI 0.39894228040143268f /* 1/sqrt(2 pi) */
#define EW_GELU_C 0.79788456080286536f       /* sqrt(2/pi) */
#define EW_GELU_A 0.044715f

static inline float ew_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

static inline float ew_binary_f(int32_t op, float x, float y) {
    switch (op) {
    case NC_OP_ADD: return x + y;
    case NC_OP_SUB: return x - y;
    case NC_OP_MUL: return x * y;
    case NC_OP_DIV: return x / y;
    case NC_OP_MAXIMUM: return (x >= y || x != x) ? x : y;   /* NaN propagates (torch.maximum) */
    case NC_OP_MINIMUM: return (x <= y || x != x) ? x : y;
    default: return powf(x, y);
    }
}

static inline float ew_unary_f(int32_t op, float x) {
    switch (op) {
    case NC_OP_NEG: return -x;
    case NC_OP_EXP: return expf(x);
    case NC_OP_LOG: return logf(x);
    case NC_OP_TANH: return tanhf(x);
    case NC_OP_SIGMOID: return ew_sigmoid(x);
    case NC_OP_RELU: return x > 0.0f ? x : 0.0f;
    case NC_OP_RELU2: { float r = x > 0.0f ? x : 0.0f; return r * r; }
    case NC_OP_SILU: return x * ew_sigmoid(x);
    case NC_OP_GELU: return 0.5f * x * (1.0f + erff(x * EW_SQRT1_2));
    case NC_OP_GELU_TANH: return 0.5f * x * (1.0f + tanhf(EW_GELU_C * (x + EW_GELU_A * x * x * x)));
    case NC_OP_SQRT: return sqrtf(x);
    case NC_OP_RSQRT: return 1.0f / sqrtf(x);
    case NC_OP_ABS: return fabsf(x);
    case NC_OP_SQUARE: return x * x;
    case NC_OP_RECIP: return 1.0f / x;
    case NC_OP_SIN: return sinf(x);
    default: return cosf(x);
    }
}

/* d f(x) / dx given x and y = f(x) (ops listed in ew_uses_out read only y) */
static inline float ew_unary_df(int32_t op, float x, float y) {
    switch (op) {
    case NC_OP_NEG: return -1.0f;
    case NC_OP_EXP: return y;
    case NC_OP_LOG: return 1.0f / x;
    case NC_OP_TANH: return 1.0f - y * y;
    case NC_OP_SIGMOID: return y * (1.0f - y);
    case NC_OP_RELU: return x > 0.0f ? 1.0f : 0.0f;
    case NC_OP_RELU2: return x > 0.0f ? 2.0f * x : 0.0f;
    case NC_OP_SILU: { float s = ew_sigmoid(x); return s * (1.0f + x * (1.0f - s)); }
    case NC_OP_GELU:   /* Phi(x) + x phi(x) */
        return 0.5f * (1.0f + erff(x * EW_SQRT1_2)) + x * EW_INV_SQRT_2PI * expf(-0.5f * x * x);
    case NC_OP_GELU_TANH: {
        float x2 = x * x;
        float t = tanhf(EW_GELU_C * (x + EW_GELU_A * x2 * x));
        return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * EW_GELU_C * (1.0f + 3.0f * EW_GELU_A * x2);
    }
    case NC_OP_SQRT: return 0.5f / y;
    case NC_OP_RSQRT: return -0.5f * y * y * y;
    case NC_OP_ABS: return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : 0.0f);
    case NC_OP_SQUARE: return 2.0f * x;
    case NC_OP_RECIP: return -y * y;
    case NC_OP_SIN: return cosf(x);
    default: return -sinf(x);
    }
}

static inline int ew_uses_out(int32_t op) {
    return op == NC_OP_EXP || op == NC_OP_TANH || op == NC_OP_SIGMOID || op == NC_OP_SQRT ||
           op == NC_OP_RSQRT || op == NC_OP_RECIP;
}

/* ---- flat contiguous kernels (compiled per instruction set) ---------------------------------- */
/* Each `case` is its own simple loop so the exact ops vectorize; `par` allows OpenMP. The
 * serial branch has no `omp parallel` at all: an `if(0)` parallel region still costs a trip
 * through the OpenMP runtime, which the strided engine would pay once per row. */
#define EW_LOOP(N, PAR, BODY)                                                                  \
    do {                                                                                       \
        if ((PAR) && (N) >= NC_PAR_MIN) {                                                      \
            int64_t ch_ = nc_dyn_chunk(N, 4096, 65536);                                        \
            _Pragma("omp parallel for simd schedule(dynamic, ch_)")                            \
            for (int64_t i = 0; i < N; i++) { BODY; }                                          \
        } else {                                                                               \
            _Pragma("omp simd")                                                                \
            for (int64_t i = 0; i < N; i++) { BODY; }                                          \
        }                                                                                      \
    } while (0)

/* Streaming-store wrapper (AVX2 build): large outputs are produced chunk by chunk into an L1
 * buffer by the very same loop (serial), then streamed out; in-place calls (o == a) are safe. */
#if NC_SIMD_AVX2
enum { EW_NT_CHUNK = 2048 };
/* PA, PB: the inputs (PB NULL for one): the next chunk of each is prefetched while this one is stored */
#define EW_NT_RUN(N, PA, PB, CALL_INTO_TMP)                                                        \
    do {                                                                                           \
        int64_t nch_ = (N + EW_NT_CHUNK - 1) / EW_NT_CHUNK;                                        \
        int64_t ch_ = nc_dyn_chunk(nch_, 1, 32);                                                   \
        _Pragma("omp parallel for schedule(dynamic, ch_)")                                         \
        for (int64_t c_ = 0; c_ < nch_; c_++) {                                                    \
            float tmp[EW_NT_CHUNK] __attribute__((aligned(32)));                                   \
            int64_t i0 = c_ * EW_NT_CHUNK, len = N - i0 < EW_NT_CHUNK ? N - i0 : EW_NT_CHUNK;     \
            CALL_INTO_TMP;                                                                         \
            const float *pb_ = (PB);                                                               \
            nc_stream_store_pf(o + i0, tmp, len, (PA) + i0 + EW_NT_CHUNK, pb_ ? pb_ + i0 + EW_NT_CHUNK : NULL); \
        }                                                                                          \
        _mm_sfence();                                                                              \
    } while (0)
#define EW_USE_NT(N, PAR) ((PAR) && (N) * (int64_t)sizeof(float) >= nc_nt_bytes())

/* one-input vector loop; tails use masked loads/stores so every element takes the same path */
#define EW_V1_BODY(N, VEXPR)                                                                       \
    {                                                                                              \
        int64_t i = k_ * 8;                                                                        \
        if (i + 8 <= N) {                                                                          \
            __m256 v = _mm256_loadu_ps(a + i);                                                     \
            _mm256_storeu_ps(o + i, VEXPR);                                                        \
        } else {                                                                                   \
            __m256i mk_ = nc_tailmask256(N - i);                                                   \
            __m256 v = _mm256_maskload_ps(a + i, mk_);                                             \
            _mm256_maskstore_ps(o + i, mk_, VEXPR);                                                \
        }                                                                                          \
    }
#define EW_V1(N, PAR, VEXPR)                                                                       \
    do {                                                                                           \
        int64_t nv_ = (N + 7) / 8;                                                                 \
        if ((PAR) && (N) >= NC_PAR_MIN) {                                                          \
            int64_t ch_ = nc_dyn_chunk(nv_, 512, 8192);                                            \
            _Pragma("omp parallel for schedule(dynamic, ch_)")                                     \
            for (int64_t k_ = 0; k_ < nv_; k_++) EW_V1_BODY(N, VEXPR)                             \
        } else {                                                                                   \
            for (int64_t k_ = 0; k_ < nv_; k_++) EW_V1_BODY(N, VEXPR)                             \
        }                                                                                          \
    } while (0)
#endif

static void KFN(ew_binary_body)(float *o, const float *a, const float *b, int64_t n, int32_t op, int par) {
    switch (op) {
    case NC_OP_ADD: EW_LOOP(n, par, o[i] = a[i] + b[i]); break;
    case NC_OP_SUB: EW_LOOP(n, par, o[i] = a[i] - b[i]); break;
    case NC_OP_MUL: EW_LOOP(n, par, o[i] = a[i] * b[i]); break;
    case NC_OP_DIV: EW_LOOP(n, par, o[i] = a[i] / b[i]); break;
    case NC_OP_MAXIMUM: EW_LOOP(n, par, float x = a[i]; float y = b[i]; o[i] = (x >= y || x != x) ? x : y); break;
    case NC_OP_MINIMUM: EW_LOOP(n, par, float x = a[i]; float y = b[i]; o[i] = (x <= y || x != x) ? x : y); break;
    default: EW_LOOP(n, par, o[i] = powf(a[i], b[i])); break;
    }
}

void KFN(nc_ew_binary)(float *o, const float *a, const float *b, int64_t n, int32_t op, int par) {
#if NC_SIMD_AVX2
    if (EW_USE_NT(n, par)) {
        EW_NT_RUN(n, a, b, KFN(ew_binary_body)(tmp, a + i0, b + i0, len, op, 0));
        return;
    }
#endif
    KFN(ew_binary_body)(o, a, b, n, op, par);
}

static void KFN(ew_binary_scalar_body)(float *o, const float *a, float s, int64_t n, int32_t op, int par) {
    switch (op) {
    case NC_OP_ADD: EW_LOOP(n, par, o[i] = a[i] + s); break;
    case NC_OP_SUB: EW_LOOP(n, par, o[i] = a[i] - s); break;
    case NC_OP_MUL: EW_LOOP(n, par, o[i] = a[i] * s); break;
    case NC_OP_DIV: EW_LOOP(n, par, o[i] = a[i] / s); break;
    case NC_OP_MAXIMUM: EW_LOOP(n, par, float x = a[i]; o[i] = (x >= s || x != x) ? x : s); break;
    case NC_OP_MINIMUM: EW_LOOP(n, par, float x = a[i]; o[i] = (x <= s || x != x) ? x : s); break;
    default: EW_LOOP(n, par, o[i] = powf(a[i], s)); break;
    }
}

void KFN(nc_ew_binary_scalar)(float *o, const float *a, float s, int64_t n, int32_t op, int par) {
#if NC_SIMD_AVX2
    if (EW_USE_NT(n, par)) {
        EW_NT_RUN(n, a, (const float *)NULL, KFN(ew_binary_scalar_body)(tmp, a + i0, s, len, op, 0));
        return;
    }
#endif
    KFN(ew_binary_scalar_body)(o, a, s, n, op, par);
}

static void KFN(ew_unary_body)(float *o, const float *a, int64_t n, int32_t op, int par) {
    switch (op) {
#if NC_SIMD_AVX2
    case NC_OP_EXP: EW_V1(n, par, nc_exp256(v)); break;
    case NC_OP_SIGMOID: EW_V1(n, par, nc_sigmoid256(v)); break;
    case NC_OP_SILU: EW_V1(n, par, _mm256_mul_ps(v, nc_sigmoid256(v))); break;
    case NC_OP_GELU: EW_V1(n, par, _mm256_mul_ps(v, nc_phi256(v))); break;
    case NC_OP_TANH: EW_V1(n, par, nc_tanh256(v)); break;
    case NC_OP_GELU_TANH: EW_V1(n, par, nc_gelu_tanh256(v)); break;
#endif
    case NC_OP_NEG: EW_LOOP(n, par, o[i] = -a[i]); break;
    case NC_OP_RELU: EW_LOOP(n, par, float x = a[i]; o[i] = x > 0.0f ? x : 0.0f); break;
    case NC_OP_RELU2: EW_LOOP(n, par, float x = a[i]; float r = x > 0.0f ? x : 0.0f; o[i] = r * r); break;
    case NC_OP_ABS: EW_LOOP(n, par, o[i] = fabsf(a[i])); break;
    case NC_OP_SQUARE: EW_LOOP(n, par, o[i] = a[i] * a[i]); break;
    case NC_OP_RECIP: EW_LOOP(n, par, o[i] = 1.0f / a[i]); break;
    case NC_OP_SQRT: EW_LOOP(n, par, o[i] = sqrtf(a[i])); break;
    case NC_OP_RSQRT: EW_LOOP(n, par, o[i] = 1.0f / sqrtf(a[i])); break;
    default: EW_LOOP(n, par, o[i] = ew_unary_f(op, a[i])); break;
    }
}

void KFN(nc_ew_unary)(float *o, const float *a, int64_t n, int32_t op, int par) {
#if NC_SIMD_AVX2
    if (EW_USE_NT(n, par)) {
        EW_NT_RUN(n, a, (const float *)NULL, KFN(ew_unary_body)(tmp, a + i0, len, op, 0));
        return;
    }
#endif
    KFN(ew_unary_body)(o, a, n, op, par);
}

#if NC_SIMD_AVX2
/* o (= ga) += g * d_, d_ computed by DEF from v = a[i .. i+8) (a = x) */
#define EW_BWD_BODY(N, ...)                                                                        \
    {                                                                                              \
        int64_t i = k_ * 8;                                                                        \
        __m256i mk_ = nc_tailmask256(N - i < 8 ? N - i : 8);                                       \
        __m256 v = _mm256_maskload_ps(a + i, mk_);                                                 \
        __VA_ARGS__;                                                                               \
        __m256 r_ = _mm256_fmadd_ps(_mm256_maskload_ps(g + i, mk_), d_, _mm256_maskload_ps(o + i, mk_)); \
        _mm256_maskstore_ps(o + i, mk_, r_);                                                       \
    }
#define EW_BWD_V(N, PAR, ...)                                                                      \
    do {                                                                                           \
        int64_t nv_ = (N + 7) / 8;                                                                 \
        if ((PAR) && (N) >= NC_PAR_MIN) {                                                          \
            int64_t ch_ = nc_dyn_chunk(nv_, 512, 8192);                                            \
            _Pragma("omp parallel for schedule(dynamic, ch_)")                                     \
            for (int64_t k_ = 0; k_ < nv_; k_++) EW_BWD_BODY(N, __VA_ARGS__)                       \
        } else {                                                                                   \
            for (int64_t k_ = 0; k_ < nv_; k_++) EW_BWD_BODY(N, __VA_ARGS__)                       \
        }                                                                                          \
    } while (0)
#endif

/* ga += g * f'(x); y = f(x) is read instead of x for the ew_uses_out ops */
void KFN(nc_ew_unary_bwd)(float *ga, const float *y, const float *x, const float *g, int64_t n, int32_t op,
                          int par) {
    switch (op) {
    case NC_OP_NEG: EW_LOOP(n, par, ga[i] += -g[i]); break;
    case NC_OP_RELU: EW_LOOP(n, par, ga[i] += x[i] > 0.0f ? g[i] : 0.0f); break;
    case NC_OP_RELU2: EW_LOOP(n, par, float v = x[i]; ga[i] += g[i] * (v > 0.0f ? 2.0f * v : 0.0f)); break;
    case NC_OP_SQUARE: EW_LOOP(n, par, ga[i] += g[i] * (2.0f * x[i])); break;
    /* the output-based derivatives as plain loops (exact ops: both builds give the same bits) */
    case NC_OP_EXP: EW_LOOP(n, par, ga[i] += g[i] * y[i]); break;
    case NC_OP_TANH: EW_LOOP(n, par, float t = y[i]; ga[i] += g[i] * (1.0f - t * t)); break;
    case NC_OP_SIGMOID: EW_LOOP(n, par, float t = y[i]; ga[i] += g[i] * (t * (1.0f - t))); break;
#if NC_SIMD_AVX2
    case NC_OP_SILU: {   /* s (1 + x (1 - s)) */
        const float *a = x;
        float *o = ga;
        EW_BWD_V(n, par, __m256 d_ = nc_silu_d256(v));
        break;
    }
    case NC_OP_GELU: {   /* Phi(x) + x phi(x) */
        const float *a = x;
        float *o = ga;
        EW_BWD_V(n, par, __m256 e_ = nc_exp256(_mm256_mul_ps(_mm256_set1_ps(-0.5f), _mm256_mul_ps(v, v)));
                 __m256 d_ = _mm256_fmadd_ps(_mm256_mul_ps(v, _mm256_set1_ps(EW_INV_SQRT_2PI)), e_, nc_phi256(v)));
        break;
    }
    case NC_OP_GELU_TANH: {
        const float *a = x;
        float *o = ga;
        EW_BWD_V(n, par, __m256 d_ = nc_gelu_tanh_d256(v));
        break;
    }
#endif
    default:
        if (ew_uses_out(op)) EW_LOOP(n, par, ga[i] += g[i] * ew_unary_df(op, 0.0f, y[i]));
        else EW_LOOP(n, par, ga[i] += g[i] * ew_unary_df(op, x[i], 0.0f));
        break;
    }
}

void KFN(nc_ew_add_scaled)(float *o, const float *a, float alpha, int64_t n, int par) {
    if (alpha == 1.0f) EW_LOOP(n, par, o[i] += a[i]);
    else EW_LOOP(n, par, o[i] += alpha * a[i]);
}

#ifdef NC_KPRIMARY
/* ================================================================================================
 * Everything below is compiled once (the op entry points, checks and the strided engine).
 * ============================================================================================== */
void nc_ew_binary_avx2(float *o, const float *a, const float *b, int64_t n, int32_t op, int par);
void nc_ew_binary_scalar_avx2(float *o, const float *a, float s, int64_t n, int32_t op, int par);
void nc_ew_unary_avx2(float *o, const float *a, int64_t n, int32_t op, int par);
void nc_ew_unary_bwd_avx2(float *ga, const float *y, const float *x, const float *g, int64_t n, int32_t op,
                          int par);
void nc_ew_add_scaled_avx2(float *o, const float *a, float alpha, int64_t n, int par);

int nc_ew_binary_avx512(float *o, const float *a, const float *b, float s, int64_t n, int32_t op, int par);

static void k_binary(float *o, const float *a, const float *b, int64_t n, int32_t op, int par) {
    if (nc_cpu_avx512() && nc_ew_binary_avx512(o, a, b, 0.0f, n, op, par)) return;
    if (nc_cpu_avx2()) nc_ew_binary_avx2(o, a, b, n, op, par);
    else nc_ew_binary_base(o, a, b, n, op, par);
}
static void k_binary_scalar(float *o, const float *a, float s, int64_t n, int32_t op, int par) {
    if (nc_cpu_avx512() && nc_ew_binary_avx512(o, a, NULL, s, n, op, par)) return;
    if (nc_cpu_avx2()) nc_ew_binary_scalar_avx2(o, a, s, n, op, par);
    else nc_ew_binary_scalar_base(o, a, s, n, op, par);
}
int nc_ew_unary_avx512(float *o, const float *a, int64_t n, int32_t op, int par);
int nc_ew_unary_bwd_avx512(float *ga, const float *x, const float *g, int64_t n, int32_t op, int par);

static void k_unary(float *o, const float *a, int64_t n, int32_t op, int par) {
    if (nc_cpu_avx512() && nc_ew_unary_avx512(o, a, n, op, par)) return;
    if (nc_cpu_avx2()) nc_ew_unary_avx2(o, a, n, op, par);
    else nc_ew_unary_base(o, a, n, op, par);
}
static void k_unary_bwd(float *ga, const float *y, const float *x, const float *g, int64_t n, int32_t op, int par) {
    if (nc_cpu_avx512() && nc_ew_unary_bwd_avx512(ga, x, g, n, op, par)) return;
    if (nc_cpu_avx2()) nc_ew_unary_bwd_avx2(ga, y, x, g, n, op, par);
    else nc_ew_unary_bwd_base(ga, y, x, g, n, op, par);
}
static void k_add_scaled(float *o, const float *a, float alpha, int64_t n, int par) {
    if (nc_cpu_avx2()) nc_ew_add_scaled_avx2(o, a, alpha, n, par);
    else nc_ew_add_scaled_base(o, a, alpha, n, par);
}

static const char *const bin_names[] = { "add", "sub", "mul", "div", "maximum", "minimum", "pow", "floor_div" };
static const char *const un_names[] = { "neg", "exp", "log", "tanh", "sigmoid", "relu", "relu2", "silu",
                                        "gelu", "gelu_tanh", "sqrt", "rsqrt", "abs", "square", "recip",
                                        "sin", "cos" };
static const char *const cmp_names[] = { "eq", "ne", "lt", "le", "gt", "ge" };

/* ---- broadcasting ------------------------------------------------------------------------- */
static void shape_str(char *buf, size_t n, int32_t nd, const int64_t *shape) {
    size_t k = (size_t)snprintf(buf, n, "(");
    for (int32_t d = 0; d < nd && k < n; d++)
        k += (size_t)snprintf(buf + k, n - k, d ? ", %lld" : "%lld", (long long)shape[d]);
    if (k < n) snprintf(buf + k, n - k, ")");
}

/* broadcast(shape, t.shape) into shape (in place); 0 when they do not broadcast */
static int bcast_into(int32_t *nd, int64_t *shape, const nc_tensor *t) {
    int32_t n = *nd > t->ndim ? *nd : t->ndim;
    int64_t res[NC_MAX_DIMS];
    for (int32_t i = 0; i < n; i++) {
        int32_t da = i - (n - *nd), db = i - (n - t->ndim);
        int64_t sa = da >= 0 ? shape[da] : 1, sb = db >= 0 ? t->shape[db] : 1;
        if (sa != sb && sa != 1 && sb != 1) return 0;
        res[i] = sa == 1 ? sb : sa;
    }
    *nd = n;
    memcpy(shape, res, sizeof(int64_t) * (size_t)n);
    return 1;
}

static nc_status bcast2(const char *op, int32_t *nd, int64_t *shape, const nc_tensor *a, const char *an,
                        const nc_tensor *b, const char *bn) {
    *nd = a->ndim;
    memcpy(shape, a->shape, sizeof(int64_t) * (size_t)a->ndim);
    if (bcast_into(nd, shape, b)) return NC_OK;
    char ba[NC_DESC_LEN], bb[NC_DESC_LEN];
    return nc_fail(NC_ERR_SHAPE, "%s: cannot broadcast %s %s with %s %s", op, an, nc_describe(a, ba, sizeof ba), bn,
                   nc_describe(b, bb, sizeof bb));
}

nc_status nc_broadcast_shape(int32_t *ndim_out, int64_t *shape_out, const nc_tensor *a, const nc_tensor *b) {
    NC_TRY(nc_check_not_null("broadcast_shape", "a", a));
    NC_TRY(nc_check_not_null("broadcast_shape", "b", b));
    if (!ndim_out || !shape_out) return nc_fail(NC_ERR_ARG, "broadcast_shape: output pointers must not be NULL");
    return bcast2("broadcast_shape", ndim_out, shape_out, a, "a", b, "b");
}

/* out must have exactly the broadcast shape of its inputs */
static nc_status check_out_shape(const char *op, const nc_tensor *out, int32_t nd, const int64_t *shape,
                                 const char *what) {
    int ok = out->ndim == nd;
    for (int32_t d = 0; ok && d < nd; d++) ok = out->shape[d] == shape[d];
    if (ok) return NC_OK;
    char want[NC_DESC_LEN], got[NC_DESC_LEN];
    shape_str(want, sizeof want, nd, shape);
    return nc_fail(NC_ERR_SHAPE, "%s: expected out of shape %s (%s), got %s", op, want, what,
                   nc_describe(out, got, sizeof got));
}


/* ---- strided engine ------------------------------------------------------------------------ */
enum { EW_MAXOPS = 4, EW_CHUNK = 16384 };

typedef struct {
    int32_t nd, nops;
    int64_t n;
    int64_t shape[NC_MAX_DIMS];
    int64_t st[EW_MAXOPS][NC_MAX_DIMS];
} ew_geo;

/* Geometry over `shape` for operands ts (each broadcasts to shape; checked by the caller). */
static void geo_build(ew_geo *g, int32_t nd, const int64_t *shape, int nops, const nc_tensor *const *ts) {
    g->nops = nops;
    g->n = 1;
    int32_t k = 0;
    int64_t sh[NC_MAX_DIMS], st[EW_MAXOPS][NC_MAX_DIMS];
    for (int32_t d = 0; d < nd; d++) {
        g->n *= shape[d];
        if (shape[d] == 1) continue;   /* size-1 dims contribute nothing */
        sh[k] = shape[d];
        for (int o = 0; o < nops; o++) {
            const nc_tensor *t = ts[o];
            int32_t td = d - (nd - t->ndim);
            st[o][k] = (td >= 0 && t->shape[td] != 1) ? t->strides[td] : 0;
        }
        k++;
    }
    /* merge dim j into the running inner dim when every operand is contiguous across them */
    int32_t m = 0;
    for (int32_t j = 0; j < k; j++) {
        if (m > 0) {
            int ok = 1;
            for (int o = 0; o < nops && ok; o++) ok = g->st[o][m - 1] == st[o][j] * sh[j];
            if (ok) {
                g->shape[m - 1] *= sh[j];
                for (int o = 0; o < nops; o++) g->st[o][m - 1] = st[o][j];
                continue;
            }
        }
        g->shape[m] = sh[j];
        for (int o = 0; o < nops; o++) g->st[o][m] = st[o][j];
        m++;
    }
    if (m == 0) {   /* a scalar (or all size-1 dims) */
        g->shape[0] = 1;
        for (int o = 0; o < nops; o++) g->st[o][0] = 0;
        m = 1;
    }
    g->nd = m;
}

static int geo_flat(const ew_geo *g) {
    if (g->nd != 1) return 0;
    for (int o = 0; o < g->nops; o++)
        if (g->st[o][0] != 1 && g->shape[0] != 1) return 0;
    return 1;
}

/* A row: n elements, operand o at p[o] (element pointer) with element stride s[o]. */
typedef void (*ew_row_fn)(const void *ctx, char *const *p, const int64_t *s, int64_t n);

static void geo_run(const ew_geo *g, char *const *base, const int32_t *esz, ew_row_fn fn, const void *ctx) {
    int64_t n = g->n;
    if (n <= 0) return;
    int32_t nd = g->nd, nops = g->nops;
    int64_t inner = g->shape[nd - 1];
    int64_t nchunks = (n + EW_CHUNK - 1) / EW_CHUNK;
    int64_t ist[EW_MAXOPS];
    for (int o = 0; o < nops; o++) ist[o] = g->st[o][nd - 1];
#pragma omp parallel for schedule(static) if (n >= NC_PAR_MIN)
    for (int64_t c = 0; c < nchunks; c++) {
        int64_t i = c * EW_CHUNK, i1 = i + EW_CHUNK < n ? i + EW_CHUNK : n;
        int64_t idx[NC_MAX_DIMS], rem = i;
        for (int32_t d = nd - 1; d >= 0; d--) {
            idx[d] = rem % g->shape[d];
            rem /= g->shape[d];
        }
        while (i < i1) {
            int64_t len = inner - idx[nd - 1];
            if (len > i1 - i) len = i1 - i;
            char *p[EW_MAXOPS];
            for (int o = 0; o < nops; o++) {
                int64_t off = 0;
                for (int32_t d = 0; d < nd; d++) off += idx[d] * g->st[o][d];
                p[o] = base[o] + off * esz[o];
            }
            fn(ctx, p, ist, len);
            i += len;
            idx[nd - 1] += len;
            for (int32_t d = nd - 1; d > 0 && idx[d] >= g->shape[d]; d--) {
                idx[d] = 0;
                idx[d - 1]++;
            }
        }
    }
}

/* ---- row functions ------------------------------------------------------------------------- */
typedef struct { int32_t op; float s; int32_t which; } ew_ctx;

static void row_binary(const void *cv, char *const *p, const int64_t *s, int64_t n) {
    const ew_ctx *c = cv;
    float *o = (float *)p[0];
    const float *a = (const float *)p[1], *b = (const float *)p[2];
    if (s[0] == 1 && s[1] == 1 && s[2] == 1) { k_binary(o, a, b, n, c->op, 0); return; }
    if (s[0] == 1 && s[1] == 1 && s[2] == 0) { k_binary_scalar(o, a, b[0], n, c->op, 0); return; }
    for (int64_t i = 0; i < n; i++) o[i * s[0]] = ew_binary_f(c->op, a[i * s[1]], b[i * s[2]]);
}

static void row_binary_scalar(const void *cv, char *const *p, const int64_t *s, int64_t n) {
    const ew_ctx *c = cv;
    float *o = (float *)p[0];
    const float *a = (const float *)p[1];
    if (s[0] == 1 && s[1] == 1) { k_binary_scalar(o, a, c->s, n, c->op, 0); return; }
    for (int64_t i = 0; i < n; i++) o[i * s[0]] = ew_binary_f(c->op, a[i * s[1]], c->s);
}

static void row_unary(const void *cv, char *const *p, const int64_t *s, int64_t n) {
    const ew_ctx *c = cv;
    float *o = (float *)p[0];
    const float *a = (const float *)p[1];
    if (s[0] == 1 && s[1] == 1) { k_unary(o, a, n, c->op, 0); return; }
    for (int64_t i = 0; i < n; i++) o[i * s[0]] = ew_unary_f(c->op, a[i * s[1]]);
}

/* operands: ga, y (out), x (a), g; y or x may be absent (stride 0 on a dummy) */
static void row_unary_bwd(const void *cv, char *const *p, const int64_t *s, int64_t n) {
    const ew_ctx *c = cv;
    float *ga = (float *)p[0];
    const float *y = (const float *)p[1], *x = (const float *)p[2], *g = (const float *)p[3];
    if (s[0] == 1 && s[1] == 1 && s[2] == 1 && s[3] == 1) { k_unary_bwd(ga, y, x, g, n, c->op, 0); return; }
    int uo = ew_uses_out(c->op);
    for (int64_t i = 0; i < n; i++) {
        float d = uo ? ew_unary_df(c->op, 0.0f, y[i * s[1]]) : ew_unary_df(c->op, x[i * s[2]], 0.0f);
        ga[i * s[0]] += g[i * s[3]] * d;
    }
}

static void row_add_scaled(const void *cv, char *const *p, const int64_t *s, int64_t n) {
    const ew_ctx *c = cv;
    float *o = (float *)p[0];
    const float *a = (const float *)p[1];
    if (s[0] == 1 && s[1] == 1) { k_add_scaled(o, a, c->s, n, 0); return; }
    float al = c->s;
    if (al == 1.0f) for (int64_t i = 0; i < n; i++) o[i * s[0]] += a[i * s[1]];
    else for (int64_t i = 0; i < n; i++) o[i * s[0]] += al * a[i * s[1]];
}

/* d op(x, y) / d x (which 0) or / d y (which 1), times g */
static inline float bin_grad(int32_t op, int32_t which, float x, float y, float g) {
    switch (op) {
    case NC_OP_ADD: return g;
    case NC_OP_SUB: return which ? -g : g;
    case NC_OP_MUL: return which ? g * x : g * y;
    case NC_OP_DIV: return which ? (-g * x) / (y * y) : g / y;
    case NC_OP_MAXIMUM:   /* ties split the gradient evenly, like torch */
        if (which) return y > x ? g : (y == x ? 0.5f * g : 0.0f);
        return x > y ? g : (x == y ? 0.5f * g : 0.0f);
    case NC_OP_MINIMUM:
        if (which) return y < x ? g : (y == x ? 0.5f * g : 0.0f);
        return x < y ? g : (x == y ? 0.5f * g : 0.0f);
    default:   /* pow */
        if (which) return (x == 0.0f && y >= 0.0f) ? 0.0f : g * powf(x, y) * logf(x);
        return y == 0.0f ? 0.0f : g * y * powf(x, y - 1.0f);
    }
}

/* operands: dst, a, b, g */
static void row_binary_bwd(const void *cv, char *const *p, const int64_t *s, int64_t n) {
    const ew_ctx *c = cv;
    float *d = (float *)p[0];
    const float *a = (const float *)p[1], *b = (const float *)p[2], *g = (const float *)p[3];
    for (int64_t i = 0; i < n; i++) d[i * s[0]] += bin_grad(c->op, c->which, a[i * s[1]], b[i * s[2]], g[i * s[3]]);
}

/* operands: dst, a, g (scalar on the right) */
static void row_binary_scalar_bwd(const void *cv, char *const *p, const int64_t *s, int64_t n) {
    const ew_ctx *c = cv;
    float *d = (float *)p[0];
    const float *a = (const float *)p[1], *g = (const float *)p[2];
    for (int64_t i = 0; i < n; i++) d[i * s[0]] += bin_grad(c->op, 0, a[i * s[1]], c->s, g[i * s[2]]);
}

/* ---- CUDA glue ----------------------------------------------------------------------------- */
/* strides of t aligned to an nd-dim broadcast shape */
static void bstrides(int64_t *st, int32_t nd, const int64_t *shape, const nc_tensor *t) {
    for (int32_t d = 0; d < nd; d++) {
        int32_t td = d - (nd - t->ndim);
        st[d] = (td >= 0 && t->shape[td] != 1) ? t->strides[td] : 0;
        (void)shape;
    }
}

static void fill_s3(nc_strided3 *g, const nc_tensor *out, const nc_tensor *a, const nc_tensor *b) {
    memset(g, 0, sizeof *g);
    g->ndim = out->ndim;
    memcpy(g->shape, out->shape, sizeof(int64_t) * (size_t)out->ndim);
    memcpy(g->st_out, out->strides, sizeof(int64_t) * (size_t)out->ndim);
    if (a) bstrides(g->st_a, out->ndim, out->shape, a);
    if (b) bstrides(g->st_b, out->ndim, out->shape, b);
}

static nc_status cuda_err(const char *op, const nc_cuda_api *cu, nc_status s) {
    return nc_fail(s, "%s: CUDA: %s", op, cu->last_error ? cu->last_error() : "unknown error");
}

/* ---- a temporary contiguous f32 CPU tensor (for gradients of broadcast operands) -------------- */
static nc_tensor *tmp_zeros(int32_t nd, const int64_t *shape) {
    return nc_tensor_new_zeros(NC_F32, NC_CPU, nd, shape);
}

/* ---- integer tensors (i32, i64) ------------------------------------------------------------ *
 * Exact two's-complement arithmetic: + - * wrap (computed in the unsigned type, no UB), floor_div
 * rounds toward -inf (INT_MIN floor_div -1 wraps to INT_MIN), division by zero is reported. No
 * autograd, CPU only. One row function per dtype (macro-instantiated) serves the flat and the
 * strided cases alike through geo_run. */
static int ew_is_int(int32_t dt) { return dt == NC_I32 || dt == NC_I64; }

typedef struct { int32_t op; int64_t s; int *zero; } ew_ictx;

#define EW_INT_FUNCS(T, UT)                                                                          \
    static inline T ew_ibin_##T(int32_t op, T x, T y, int *zero) {                                   \
        switch (op) {                                                                                \
        case NC_OP_ADD: return (T)((UT)x + (UT)y);                                                   \
        case NC_OP_SUB: return (T)((UT)x - (UT)y);                                                   \
        case NC_OP_MUL: return (T)((UT)x * (UT)y);                                                   \
        case NC_OP_MAXIMUM: return x >= y ? x : y;                                                   \
        case NC_OP_MINIMUM: return x <= y ? x : y;                                                   \
        default: {                                                                                   \
            if (y == 0) { __atomic_store_n(zero, 1, __ATOMIC_RELAXED); return 0; }                   \
            if (y == -1) return (T)((UT)0 - (UT)x);                                                  \
            T q = (T)(x / y);                                                                        \
            if ((T)(x % y) != 0 && ((x < 0) != (y < 0))) q--;                                        \
            return q;                                                                                \
        }                                                                                            \
        }                                                                                            \
    }                                                                                                \
    static void row_ibin_##T(const void *cv, char *const *p, const int64_t *s, int64_t n) {          \
        const ew_ictx *c = cv;                                                                       \
        T *o = (T *)p[0];                                                                            \
        const T *a = (const T *)p[1], *b = (const T *)p[2];                                          \
        int32_t op = c->op;                                                                          \
        if (op == NC_OP_ADD && s[0] == 1 && s[1] == 1 && s[2] == 1) {                                \
            for (int64_t i = 0; i < n; i++) o[i] = (T)((UT)a[i] + (UT)b[i]);                         \
            return;                                                                                  \
        }                                                                                            \
        for (int64_t i = 0; i < n; i++) o[i * s[0]] = ew_ibin_##T(op, a[i * s[1]], b[i * s[2]], c->zero); \
    }                                                                                                \
    static void row_ibin_s_##T(const void *cv, char *const *p, const int64_t *s, int64_t n) {        \
        const ew_ictx *c = cv;                                                                       \
        T *o = (T *)p[0];                                                                            \
        const T *a = (const T *)p[1];                                                                \
        T y = (T)c->s;                                                                               \
        int32_t op = c->op;                                                                          \
        if (op == NC_OP_ADD && s[0] == 1 && s[1] == 1) {                                             \
            for (int64_t i = 0; i < n; i++) o[i] = (T)((UT)a[i] + (UT)y);                            \
            return;                                                                                  \
        }                                                                                            \
        for (int64_t i = 0; i < n; i++) o[i * s[0]] = ew_ibin_##T(op, a[i * s[1]], y, c->zero);      \
    }                                                                                                \
    static void row_iun_##T(const void *cv, char *const *p, const int64_t *s, int64_t n) {           \
        const ew_ictx *c = cv;                                                                       \
        T *o = (T *)p[0];                                                                            \
        const T *a = (const T *)p[1];                                                                \
        if (c->op == NC_OP_NEG)                                                                      \
            for (int64_t i = 0; i < n; i++) o[i * s[0]] = (T)((UT)0 - (UT)a[i * s[1]]);              \
        else                                                                                         \
            for (int64_t i = 0; i < n; i++) {                                                        \
                T x = a[i * s[1]];                                                                   \
                o[i * s[0]] = x < 0 ? (T)((UT)0 - (UT)x) : x;                                        \
            }                                                                                        \
    }                                                                                                \
    static void row_iclamp_##T(const void *cv, char *const *p, const int64_t *s, int64_t n) {        \
        const int64_t *lh = cv;                                                                      \
        T lo = (T)lh[0], hi = (T)lh[1];                                                              \
        T *o = (T *)p[0];                                                                            \
        const T *a = (const T *)p[1];                                                                \
        for (int64_t i = 0; i < n; i++) {                                                            \
            T x = a[i * s[1]];                                                                       \
            x = x < lo ? lo : x;                                                                     \
            o[i * s[0]] = x > hi ? hi : x;                                                           \
        }                                                                                            \
    }
EW_INT_FUNCS(int32_t, uint32_t)
EW_INT_FUNCS(int64_t, uint64_t)

/* dtype rules shared by the ops below: every given operand has a's dtype; a message names both */
static nc_status same_dtypes(const char *op, int n, const nc_tensor *const *ts, const char *const *names) {
    for (int i = 1; i < n; i++) {
        if (!ts[i] || ts[i]->dtype == ts[0]->dtype) continue;
        char b0[NC_DESC_LEN], b1[NC_DESC_LEN];
        return nc_fail(NC_ERR_DTYPE,
                       "%s: expected %s and %s of the same dtype, got %s %s and %s %s (convert one with :to('%s') "
                       "or :to('%s'))",
                       op, names[0], names[i], names[0], nc_describe(ts[0], b0, sizeof b0), names[i],
                       nc_describe(ts[i], b1, sizeof b1), nc_dtype_info(ts[0]->dtype)->name,
                       nc_dtype_info(ts[i]->dtype)->name);
    }
    return NC_OK;
}

static nc_status int_cpu_only(const char *op, int n, const nc_tensor *const *ts) {
    for (int i = 0; i < n; i++)
        if (ts[i] && ts[i]->device != NC_CPU)
            return nc_fail(NC_ERR_UNSUPPORTED, "%s: integer tensors are CPU-only; move them with :to('cpu')", op);
    return NC_OK;
}

static nc_status int_op_ok(const char *name, int32_t op, int32_t dtype) {
    const char *dn = nc_dtype_info(dtype)->name;
    if (op == NC_OP_DIV)
        return nc_fail(NC_ERR_DTYPE, "%s: integer division of %s tensors is not defined; convert with :to('f32') "
                       "first, or use nc.floor_div for floor division", name, dn);
    if (op == NC_OP_POW)
        return nc_fail(NC_ERR_DTYPE, "%s: pow of %s tensors is not supported; convert with :to('f32') first", name, dn);
    return NC_OK;
}

static nc_status int_binary(const char *name, nc_tensor *out, const nc_tensor *a, const nc_tensor *b, int32_t op,
                            int32_t nd, const int64_t *shape) {
    NC_TRY(int_op_ok(name, op, a->dtype));
    const nc_tensor *ts[3] = { out, a, b };
    NC_TRY(int_cpu_only(name, 3, ts));
    ew_geo g;
    geo_build(&g, nd, shape, 3, ts);
    char *base[3] = { nc_ptr(out), nc_ptr(a), nc_ptr(b) };
    int32_t es = nc_dtype_info(a->dtype)->elem_size, esz[3] = { es, es, es };
    int zero = 0;
    ew_ictx c = { op, 0, &zero };
    geo_run(&g, base, esz, a->dtype == NC_I32 ? row_ibin_int32_t : row_ibin_int64_t, &c);
    if (zero) return nc_fail(NC_ERR_ARG, "%s: division by zero (b has a 0 element)", name);
    return NC_OK;
}

static nc_status int_binary_scalar(const char *name, nc_tensor *out, const nc_tensor *a, double s, int32_t op) {
    NC_TRY(int_op_ok(name, op, a->dtype));
    const nc_tensor *ts[2] = { out, a };
    NC_TRY(int_cpu_only(name, 2, ts));
    double lim = a->dtype == NC_I32 ? 2147483648.0 : 9223372036854775808.0;
    if (s != floor(s) || s < -lim || s >= lim)
        return nc_fail(NC_ERR_ARG, "%s: expected an integral scalar in the range of %s for an %s tensor, got %.17g "
                       "(convert the tensor with :to('f32') for fractional values)", name,
                       nc_dtype_info(a->dtype)->name, nc_dtype_info(a->dtype)->name, s);
    if (op == NC_OP_FLOOR_DIV && s == 0.0) return nc_fail(NC_ERR_ARG, "%s: division by zero (the scalar is 0)", name);
    ew_geo g;
    geo_build(&g, out->ndim, out->shape, 2, ts);
    char *base[2] = { nc_ptr(out), nc_ptr(a) };
    int32_t es = nc_dtype_info(a->dtype)->elem_size, esz[2] = { es, es };
    int zero = 0;
    ew_ictx c = { op, (int64_t)s, &zero };
    geo_run(&g, base, esz, a->dtype == NC_I32 ? row_ibin_s_int32_t : row_ibin_s_int64_t, &c);
    return NC_OK;
}

static nc_status int_unary(const char *name, nc_tensor *out, const nc_tensor *a, int32_t op) {
    if (op != NC_OP_NEG && op != NC_OP_ABS)
        return nc_fail(NC_ERR_DTYPE, "%s: not defined for %s tensors (integer tensors support neg and abs); convert "
                       "with :to('f32') first", name, nc_dtype_info(a->dtype)->name);
    const nc_tensor *ts[2] = { out, a };
    NC_TRY(int_cpu_only(name, 2, ts));
    ew_geo g;
    geo_build(&g, out->ndim, out->shape, 2, ts);
    char *base[2] = { nc_ptr(out), nc_ptr(a) };
    int32_t es = nc_dtype_info(a->dtype)->elem_size, esz[2] = { es, es };
    ew_ictx c = { op, 0, NULL };
    geo_run(&g, base, esz, a->dtype == NC_I32 ? row_iun_int32_t : row_iun_int64_t, &c);
    return NC_OK;
}

/* ---- binary -------------------------------------------------------------------------------- */
nc_status nc_binary(nc_tensor *out, const nc_tensor *a, const nc_tensor *b, int32_t op) {
    if (op < NC_OP_ADD || op > NC_OP_FLOOR_DIV)
        return nc_fail(NC_ERR_ARG, "binary: expected op in [0, %d] (enum nc_binary_op), got %d", NC_OP_FLOOR_DIV, op);
    const char *name = bin_names[op];
    NC_TRY(nc_check_not_null(name, "out", out));
    NC_TRY(nc_check_not_null(name, "a", a));
    NC_TRY(nc_check_not_null(name, "b", b));
    const nc_tensor *ts[3] = { out, a, b };
    static const char *const tn[3] = { "out", "a", "b" };
    int32_t dev;
    NC_TRY(nc_check_one_device(name, &dev, 3, tn, ts));
    {
        const nc_tensor *ab[3] = { a, b, out };
        static const char *const abn[3] = { "a", "b", "out" };
        NC_TRY(same_dtypes(name, 3, ab, abn));
    }
    if (!ew_is_int(a->dtype)) {
        for (int i = 0; i < 3; i++) NC_TRY(nc_check_dtype(name, tn[i], ts[i], NC_F32));
        if (op == NC_OP_FLOOR_DIV)
            return nc_fail(NC_ERR_DTYPE, "floor_div: defined for i32/i64 tensors only, got f32 (use a / b for floats)");
    }
    int32_t nd;
    int64_t shape[NC_MAX_DIMS];
    NC_TRY(bcast2(name, &nd, shape, a, "a", b, "b"));
    NC_TRY(check_out_shape(name, out, nd, shape, "the broadcast of a and b"));
    NC_TRY(nc_check_writable(name, "out", out));
    if (ew_is_int(a->dtype)) return int_binary(name, out, a, b, op, nd, shape);
    if (out->device == NC_CUDA) {
        const nc_cuda_api *cu = nc_cuda_for(name);
        if (!cu) return NC_ERR_DEVICE;
        nc_strided3 g;
        fill_s3(&g, out, a, b);
        nc_status s = cu->binary(nc_f32p(out), nc_f32p(a), nc_f32p(b), &g, op);
        return s == NC_OK ? NC_OK : cuda_err(name, cu, s);
    }
    ew_geo g;
    geo_build(&g, nd, shape, 3, ts);
    if (geo_flat(&g)) {
        k_binary(nc_f32p(out), nc_f32p(a), nc_f32p(b), g.n, op, 1);
        return NC_OK;
    }
    char *base[3] = { (char *)nc_f32p(out), (char *)nc_f32p(a), (char *)nc_f32p(b) };
    int32_t esz[3] = { 4, 4, 4 };
    ew_ctx c = { op, 0.0f, 0 };
    geo_run(&g, base, esz, row_binary, &c);
    return NC_OK;
}

/* dst (shape of dst) += reduction of a full-shape gradient computed by fn over (a, b, g) */
static nc_status grad_into(const char *name, nc_tensor *dst, int32_t nd, const int64_t *shape, int nin,
                           const nc_tensor *const *ins, ew_row_fn fn, const ew_ctx *c) {
    int same = dst->ndim == nd;
    for (int32_t d = 0; same && d < nd; d++) same = dst->shape[d] == shape[d];
    nc_tensor *tmp = NULL, *target = dst;
    if (!same) {
        tmp = tmp_zeros(nd, shape);
        if (!tmp) return NC_ERR_OOM;
        target = tmp;
    } else {
        NC_TRY(nc_check_writable(name, "grad", dst));
    }
    const nc_tensor *ts[EW_MAXOPS] = { target };
    char *base[EW_MAXOPS] = { (char *)nc_f32p(target) };
    int32_t esz[EW_MAXOPS] = { 4, 4, 4, 4 };
    for (int i = 0; i < nin; i++) {
        ts[i + 1] = ins[i];
        base[i + 1] = (char *)nc_f32p(ins[i]);
    }
    ew_geo g;
    geo_build(&g, nd, shape, nin + 1, ts);
    geo_run(&g, base, esz, fn, c);
    nc_status s = NC_OK;
    if (tmp) {
        s = nc_sum_to(dst, tmp, 1.0);
        nc_tensor_release(tmp);
    }
    return s;
}

/* CUDA backward of binary ops, composed from CUDA primitives: dst += alpha * sum_to(gout [op y])
 * (the product/quotient in a temporary of the broadcast shape, then nc_sum_to onto dst's shape). */
static nc_status cuda_bwd_term(nc_tensor *dst, const nc_tensor *gout, const nc_tensor *y, int32_t yop, double alpha,
                               int32_t nd, const int64_t *shape) {
    nc_tensor *tmp = NULL;
    const nc_tensor *src = gout;
    if (y) {
        tmp = nc_tensor_new(NC_F32, NC_CUDA, nd, shape);
        if (!tmp) return NC_ERR_OOM;
        nc_status st = nc_binary(tmp, gout, y, yop);
        if (st != NC_OK) { nc_tensor_release(tmp); return st; }
        src = tmp;
    }
    nc_status st = nc_sum_to(dst, src, alpha);
    nc_tensor_release(tmp);
    return st;
}

static nc_status cuda_binary_backward(const char *name, nc_tensor *ga, nc_tensor *gb, const nc_tensor *a,
                                      const nc_tensor *b, const nc_tensor *gout, int32_t op, int32_t nd,
                                      const int64_t *shape) {
    switch (op) {
    case NC_OP_ADD:
    case NC_OP_SUB:
        if (ga) NC_TRY(cuda_bwd_term(ga, gout, NULL, 0, 1.0, nd, shape));
        if (gb) NC_TRY(cuda_bwd_term(gb, gout, NULL, 0, op == NC_OP_SUB ? -1.0 : 1.0, nd, shape));
        return NC_OK;
    case NC_OP_MUL:
        if (ga) NC_TRY(cuda_bwd_term(ga, gout, b, NC_OP_MUL, 1.0, nd, shape));
        if (gb) NC_TRY(cuda_bwd_term(gb, gout, a, NC_OP_MUL, 1.0, nd, shape));
        return NC_OK;
    case NC_OP_DIV:
        if (ga) NC_TRY(cuda_bwd_term(ga, gout, b, NC_OP_DIV, 1.0, nd, shape));
        if (gb) {   /* gb -= sum_to(gout * a / b / b) */
            nc_tensor *q = nc_tensor_new(NC_F32, NC_CUDA, nd, shape);
            if (!q) return NC_ERR_OOM;
            nc_status st = nc_binary(q, a, b, NC_OP_DIV);
            if (st == NC_OK) st = nc_binary(q, q, b, NC_OP_DIV);
            if (st == NC_OK) st = cuda_bwd_term(gb, gout, q, NC_OP_MUL, -1.0, nd, shape);
            nc_tensor_release(q);
            return st;
        }
        return NC_OK;
    default:
        return nc_fail(NC_ERR_UNSUPPORTED, "%s: no CUDA backward for this op yet (add, sub, mul, div have one); "
                       "compute it on the CPU with :to('cpu')", name);
    }
}

nc_status nc_binary_backward(nc_tensor *ga, nc_tensor *gb, const nc_tensor *out, const nc_tensor *a,
                             const nc_tensor *b, const nc_tensor *gout, int32_t op) {
    if (op < NC_OP_ADD || op > NC_OP_POW)
        return nc_fail(NC_ERR_ARG, "binary_backward: expected a differentiable op in [0, %d] (enum nc_binary_op), "
                       "got %d", NC_OP_POW, op);
    char name[48];
    snprintf(name, sizeof name, "%s backward", bin_names[op]);
    if (!ga && !gb) return NC_OK;
    NC_TRY(nc_check_not_null(name, "a", a));
    NC_TRY(nc_check_not_null(name, "b", b));
    NC_TRY(nc_check_not_null(name, "gout", gout));
    const nc_tensor *ts[5] = { ga, gb, a, b, gout };
    static const char *const tn[5] = { "ga", "gb", "a", "b", "gout" };
    int32_t dev;
    NC_TRY(nc_check_one_device(name, &dev, 5, tn, ts));
    for (int i = 0; i < 5; i++)
        if (ts[i]) NC_TRY(nc_check_dtype(name, tn[i], ts[i], NC_F32));
    int32_t nd;
    int64_t shape[NC_MAX_DIMS];
    NC_TRY(bcast2(name, &nd, shape, a, "a", b, "b"));
    int ok = gout->ndim == nd;
    for (int32_t d = 0; ok && d < nd; d++) ok = gout->shape[d] == shape[d];
    if (!ok) {
        char want[NC_DESC_LEN], got[NC_DESC_LEN];
        shape_str(want, sizeof want, nd, shape);
        return nc_fail(NC_ERR_SHAPE, "%s: expected gout of shape %s (the broadcast of a and b), got %s", name, want,
                       nc_describe(gout, got, sizeof got));
    }
    if (ga) NC_TRY(nc_check_same_shape(name, "ga", ga, "a", a));
    if (gb) NC_TRY(nc_check_same_shape(name, "gb", gb, "b", b));
    if (gout->device == NC_CUDA) return cuda_binary_backward(name, ga, gb, a, b, gout, op, nd, shape);
    const nc_tensor *ins[3] = { a, b, gout };
    ew_ctx c = { op, 0.0f, 0 };
    if (ga) NC_TRY(grad_into(name, ga, nd, shape, 3, ins, row_binary_bwd, &c));
    c.which = 1;
    if (gb) NC_TRY(grad_into(name, gb, nd, shape, 3, ins, row_binary_bwd, &c));
    return NC_OK;
}

/* ---- binary with a scalar ------------------------------------------------------------------- */
nc_status nc_binary_scalar(nc_tensor *out, const nc_tensor *a, double s, int32_t op) {
    if (op < NC_OP_ADD || op > NC_OP_FLOOR_DIV)
        return nc_fail(NC_ERR_ARG, "binary_scalar: expected op in [0, %d] (enum nc_binary_op), got %d", NC_OP_FLOOR_DIV,
                       op);
    const char *name = bin_names[op];
    NC_TRY(nc_check_not_null(name, "out", out));
    NC_TRY(nc_check_not_null(name, "a", a));
    NC_TRY(nc_check_device(name, "a", a, out->device));
    if (ew_is_int(a->dtype)) {
        const nc_tensor *ao[2] = { a, out };
        static const char *const aon[2] = { "a", "out" };
        NC_TRY(same_dtypes(name, 2, ao, aon));
        NC_TRY(nc_check_same_shape(name, "out", out, "a", a));
        NC_TRY(nc_check_writable(name, "out", out));
        return int_binary_scalar(name, out, a, s, op);
    }
    NC_TRY(nc_check_dtype(name, "out", out, NC_F32));
    NC_TRY(nc_check_dtype(name, "a", a, NC_F32));
    if (op == NC_OP_FLOOR_DIV)
        return nc_fail(NC_ERR_DTYPE, "floor_div: defined for i32/i64 tensors only, got f32 (use a / s for floats)");
    NC_TRY(nc_check_same_shape(name, "out", out, "a", a));
    NC_TRY(nc_check_writable(name, "out", out));
    if (out->device == NC_CUDA) {
        const nc_cuda_api *cu = nc_cuda_for(name);
        if (!cu) return NC_ERR_DEVICE;
        nc_strided3 g;
        fill_s3(&g, out, a, NULL);
        nc_status st = cu->binary_scalar(nc_f32p(out), nc_f32p(a), &g, s, op);
        return st == NC_OK ? NC_OK : cuda_err(name, cu, st);
    }
    const nc_tensor *ts[2] = { out, a };
    ew_geo g;
    geo_build(&g, out->ndim, out->shape, 2, ts);
    if (geo_flat(&g)) {
        k_binary_scalar(nc_f32p(out), nc_f32p(a), (float)s, g.n, op, 1);
        return NC_OK;
    }
    char *base[2] = { (char *)nc_f32p(out), (char *)nc_f32p(a) };
    int32_t esz[2] = { 4, 4 };
    ew_ctx c = { op, (float)s, 0 };
    geo_run(&g, base, esz, row_binary_scalar, &c);
    return NC_OK;
}

nc_status nc_binary_scalar_backward(nc_tensor *ga, const nc_tensor *a, const nc_tensor *gout, double s, int32_t op) {
    if (op < NC_OP_ADD || op > NC_OP_POW)
        return nc_fail(NC_ERR_ARG, "binary_scalar_backward: expected a differentiable op in [0, %d] (enum "
                       "nc_binary_op), got %d", NC_OP_POW, op);
    char name[48];
    snprintf(name, sizeof name, "%s backward", bin_names[op]);
    if (!ga) return NC_OK;
    NC_TRY(nc_check_not_null(name, "a", a));
    NC_TRY(nc_check_not_null(name, "gout", gout));
    const nc_tensor *ts[3] = { ga, a, gout };
    static const char *const tn[3] = { "ga", "a", "gout" };
    if (ga->device == NC_CUDA) {   /* the linear ops: ga += c * gout (add_scaled on the device) */
        int32_t dev;
        NC_TRY(nc_check_one_device(name, &dev, 3, tn, ts));
        for (int i = 0; i < 3; i++) NC_TRY(nc_check_dtype(name, tn[i], ts[i], NC_F32));
        NC_TRY(nc_check_same_shape(name, "ga", ga, "a", a));
        NC_TRY(nc_check_same_shape(name, "gout", gout, "a", a));
        double c = op == NC_OP_ADD || op == NC_OP_SUB ? 1.0 : op == NC_OP_MUL ? s : op == NC_OP_DIV ? 1.0 / s : 0.0;
        if (op > NC_OP_DIV)
            return nc_fail(NC_ERR_UNSUPPORTED, "%s: no CUDA backward for this op yet (add, sub, mul, div have one); "
                           "compute it on the CPU with :to('cpu')", name);
        return nc_add_scaled(ga, gout, c);
    }
    int32_t dev;
    NC_TRY(nc_check_one_device(name, &dev, 3, tn, ts));
    for (int i = 0; i < 3; i++) NC_TRY(nc_check_dtype(name, tn[i], ts[i], NC_F32));
    NC_TRY(nc_check_same_shape(name, "ga", ga, "a", a));
    NC_TRY(nc_check_same_shape(name, "gout", gout, "a", a));
    NC_TRY(nc_check_writable(name, "ga", ga));
    ew_geo g;
    geo_build(&g, a->ndim, a->shape, 3, ts);
    char *base[3] = { (char *)nc_f32p(ga), (char *)nc_f32p(a), (char *)nc_f32p(gout) };
    int32_t esz[3] = { 4, 4, 4 };
    ew_ctx c = { op, (float)s, 0 };
    if (op == NC_OP_ADD || op == NC_OP_SUB) {   /* ga += gout */
        ew_ctx c1 = { 0, 1.0f, 0 };
        char *b2[2] = { base[0], base[2] };
        const nc_tensor *t2[2] = { ga, gout };
        geo_build(&g, a->ndim, a->shape, 2, t2);
        geo_run(&g, b2, esz, row_add_scaled, &c1);
        return NC_OK;
    }
    geo_run(&g, base, esz, row_binary_scalar_bwd, &c);
    return NC_OK;
}

/* ---- unary --------------------------------------------------------------------------------- */
nc_status nc_unary(nc_tensor *out, const nc_tensor *a, int32_t op) {
    if (op < NC_OP_NEG || op > NC_OP_COS)
        return nc_fail(NC_ERR_ARG, "unary: expected op in [0, %d] (enum nc_unary_op), got %d", NC_OP_COS, op);
    const char *name = un_names[op];
    NC_TRY(nc_check_not_null(name, "out", out));
    NC_TRY(nc_check_not_null(name, "a", a));
    NC_TRY(nc_check_device(name, "a", a, out->device));
    if (ew_is_int(a->dtype)) {
        const nc_tensor *ao[2] = { a, out };
        static const char *const aon[2] = { "a", "out" };
        NC_TRY(same_dtypes(name, 2, ao, aon));
        NC_TRY(nc_check_same_shape(name, "out", out, "a", a));
        NC_TRY(nc_check_writable(name, "out", out));
        return int_unary(name, out, a, op);
    }
    NC_TRY(nc_check_dtype(name, "out", out, NC_F32));
    NC_TRY(nc_check_dtype(name, "a", a, NC_F32));
    NC_TRY(nc_check_same_shape(name, "out", out, "a", a));
    NC_TRY(nc_check_writable(name, "out", out));
    if (out->device == NC_CUDA) {
        const nc_cuda_api *cu = nc_cuda_for(name);
        if (!cu) return NC_ERR_DEVICE;
        nc_strided3 g;
        fill_s3(&g, out, a, NULL);
        nc_status st = cu->unary(nc_f32p(out), nc_f32p(a), &g, op);
        return st == NC_OK ? NC_OK : cuda_err(name, cu, st);
    }
    const nc_tensor *ts[2] = { out, a };
    ew_geo g;
    geo_build(&g, out->ndim, out->shape, 2, ts);
    if (geo_flat(&g)) {
        k_unary(nc_f32p(out), nc_f32p(a), g.n, op, 1);
        return NC_OK;
    }
    char *base[2] = { (char *)nc_f32p(out), (char *)nc_f32p(a) };
    int32_t esz[2] = { 4, 4 };
    ew_ctx c = { op, 0.0f, 0 };
    geo_run(&g, base, esz, row_unary, &c);
    return NC_OK;
}

nc_status nc_unary_backward(nc_tensor *ga, const nc_tensor *out, const nc_tensor *a, const nc_tensor *gout,
                            int32_t op) {
    if (op < NC_OP_NEG || op > NC_OP_COS)
        return nc_fail(NC_ERR_ARG, "unary_backward: expected op in [0, %d] (enum nc_unary_op), got %d", NC_OP_COS, op);
    char name[48];
    snprintf(name, sizeof name, "%s backward", un_names[op]);
    if (!ga) return NC_OK;
    NC_TRY(nc_check_not_null(name, "gout", gout));
    int uo = ew_uses_out(op);
    const nc_tensor *src = uo ? out : a;   /* the tensor the derivative reads */
    if (op != NC_OP_NEG) NC_TRY(nc_check_not_null(name, uo ? "out" : "a", src));
    const nc_tensor *ts[4] = { ga, out, a, gout };
    static const char *const tn[4] = { "ga", "out", "a", "gout" };
    int32_t dev;
    NC_TRY(nc_check_one_device(name, &dev, 4, tn, ts));
    for (int i = 0; i < 4; i++)
        if (ts[i]) NC_TRY(nc_check_dtype(name, tn[i], ts[i], NC_F32));
    NC_TRY(nc_check_same_shape(name, "ga", ga, "gout", gout));
    if (src) NC_TRY(nc_check_same_shape(name, uo ? "out" : "a", src, "gout", gout));
    NC_TRY(nc_check_writable(name, "ga", ga));
    if (ga->device == NC_CUDA) {
        if (!nc_tensor_is_contiguous(ga) || !nc_tensor_is_contiguous(gout) || (src && !nc_tensor_is_contiguous(src)))
            return nc_fail(NC_ERR_UNSUPPORTED, "%s: the CUDA kernel needs contiguous ga, gout and %s; call "
                           ":contiguous() first", name, uo ? "out" : "a");
        const nc_cuda_api *cu = nc_cuda_for(name);
        if (!cu) return NC_ERR_DEVICE;
        nc_status st = cu->unary_backward(nc_f32p(ga), uo ? nc_f32p(out) : NULL, (!uo && src) ? nc_f32p(a) : NULL,
                                          nc_f32p(gout), nc_tensor_numel(ga), op);
        return st == NC_OK ? NC_OK : cuda_err(name, cu, st);
    }
    /* an absent operand is replaced by gout with stride 0 (never read) */
    const nc_tensor *py = (uo && out) ? out : gout, *px = (!uo && a) ? a : gout;
    const nc_tensor *gs[4] = { ga, py, px, gout };
    ew_geo g;
    geo_build(&g, ga->ndim, ga->shape, 4, gs);
    char *base[4] = { (char *)nc_f32p(ga), (char *)nc_f32p(py), (char *)nc_f32p(px), (char *)nc_f32p(gout) };
    int32_t esz[4] = { 4, 4, 4, 4 };
    if (geo_flat(&g)) {
        k_unary_bwd((float *)base[0], (float *)base[1], (float *)base[2], (float *)base[3], g.n, op, 1);
        return NC_OK;
    }
    ew_ctx c = { op, 0.0f, 0 };
    geo_run(&g, base, esz, row_unary_bwd, &c);
    return NC_OK;
}


/* Collider: the same on the rows (last dim = a row) listed in keep only; ga, gout and the operand
 * the derivative reads contiguous (CPU). Other rows of ga are untouched: with a filter their gout
 * rows are zero, so a zero-initialised ga ends bitwise as the full backward leaves it. */
nc_status nc_unary_backward_rows(nc_tensor *ga, const nc_tensor *out, const nc_tensor *a, const nc_tensor *gout,
                                 int32_t op, const nc_tensor *keep) {
    if (op < NC_OP_NEG || op > NC_OP_COS)
        return nc_fail(NC_ERR_ARG, "unary_backward_rows: expected op in [0, %d] (enum nc_unary_op), got %d", NC_OP_COS,
                       op);
    char name[64];
    snprintf(name, sizeof name, "%s backward (rows)", un_names[op]);
    if (!ga) return NC_OK;
    NC_TRY(nc_check_not_null(name, "gout", gout));
    NC_TRY(nc_check_not_null(name, "keep", keep));
    int uo = ew_uses_out(op);
    const nc_tensor *src = uo ? out : a;
    if (op != NC_OP_NEG) NC_TRY(nc_check_not_null(name, uo ? "out" : "a", src));
    const nc_tensor *ts[4] = { ga, gout, src, keep };
    static const char *const tn[4] = { "ga", "gout", "operand", "keep" };
    for (int i = 0; i < 4; i++) {
        if (!ts[i]) continue;
        NC_TRY(nc_check_cpu(name, tn[i], ts[i]));
        NC_TRY(nc_check_contiguous(name, tn[i], ts[i]));
        if (i < 3) NC_TRY(nc_check_dtype(name, tn[i], ts[i], NC_F32));
    }
    NC_TRY(nc_check_same_shape(name, "ga", ga, "gout", gout));
    if (src) NC_TRY(nc_check_same_shape(name, uo ? "out" : "a", src, "gout", gout));
    NC_TRY(nc_check_dtype(name, "keep", keep, NC_I64));
    NC_TRY(nc_check_ndim(name, "keep", keep, 1));
    int64_t D = ga->ndim ? ga->shape[ga->ndim - 1] : 1, n = nc_tensor_numel(ga);
    int64_t rows = D ? n / D : 0, nk = keep->shape[0];
    const int64_t *kr = (const int64_t *)nc_ptr(keep);
    for (int64_t i = 0; i < nk; i++)
        if (kr[i] < 0 || kr[i] >= rows || (i > 0 && kr[i] <= kr[i - 1]))
            return nc_fail(NC_ERR_INDEX, "%s: keep must list strictly increasing rows in [0, %lld), got %lld at position %lld",
                           name, (long long)rows, (long long)kr[i], (long long)i);
    if (nk == 0 || D == 0) return NC_OK;
    float *g = nc_f32p(ga);
    const float *go = nc_f32p(gout), *sp = src ? nc_f32p(src) : go;
#pragma omp parallel for schedule(static) if (nk * D >= NC_PAR_MIN && nk > 1) num_threads(nc_threads())
    for (int64_t i = 0; i < nk; i++) {
        int64_t o = kr[i] * D;
        k_unary_bwd(g + o, uo ? sp + o : NULL, uo ? NULL : sp + o, go + o, D, op, 0);
    }
    return NC_OK;
}

/* ---- add_scaled ----------------------------------------------------------------------------- */
nc_status nc_add_scaled(nc_tensor *dst, const nc_tensor *src, double alpha) {
    static const char *name = "add_scaled";
    NC_TRY(nc_check_not_null(name, "dst", dst));
    NC_TRY(nc_check_not_null(name, "src", src));
    NC_TRY(nc_check_device(name, "src", src, dst->device));
    NC_TRY(nc_check_dtype(name, "dst", dst, NC_F32));
    NC_TRY(nc_check_dtype(name, "src", src, NC_F32));
    int32_t nd;
    int64_t shape[NC_MAX_DIMS];
    NC_TRY(bcast2(name, &nd, shape, dst, "dst", src, "src"));
    int ok = nd == dst->ndim;
    for (int32_t d = 0; ok && d < nd; d++) ok = shape[d] == dst->shape[d];
    if (!ok) {
        char bd[NC_DESC_LEN], bs[NC_DESC_LEN];
        return nc_fail(NC_ERR_SHAPE, "%s: expected src to broadcast to dst's shape, got dst %s and src %s", name,
                       nc_describe(dst, bd, sizeof bd), nc_describe(src, bs, sizeof bs));
    }
    NC_TRY(nc_check_writable(name, "dst", dst));
    if (dst->device == NC_CUDA) {
        const nc_cuda_api *cu = nc_cuda_for(name);
        if (!cu) return NC_ERR_DEVICE;
        nc_strided3 g;
        fill_s3(&g, dst, src, NULL);
        nc_status st = cu->add_scaled(nc_f32p(dst), nc_f32p(src), &g, alpha);
        return st == NC_OK ? NC_OK : cuda_err(name, cu, st);
    }
    const nc_tensor *ts[2] = { dst, src };
    ew_geo g;
    geo_build(&g, dst->ndim, dst->shape, 2, ts);
    if (geo_flat(&g)) {
        k_add_scaled(nc_f32p(dst), nc_f32p(src), (float)alpha, g.n, 1);
        return NC_OK;
    }
    char *base[2] = { (char *)nc_f32p(dst), (char *)nc_f32p(src) };
    int32_t esz[2] = { 4, 4 };
    ew_ctx c = { 0, (float)alpha, 0 };
    geo_run(&g, base, esz, row_add_scaled, &c);
    return NC_OK;
}

/* ---- clamp ---------------------------------------------------------------------------------- */
static void row_clamp(const void *cv, char *const *p, const int64_t *s, int64_t n) {
    const float *lh = cv;
    float lo = lh[0], hi = lh[1];
    float *o = (float *)p[0];
    const float *a = (const float *)p[1];
    for (int64_t i = 0; i < n; i++) {
        float x = a[i * s[1]];
        x = x < lo ? lo : x;   /* NaN stays NaN */
        o[i * s[0]] = x > hi ? hi : x;
    }
}

static void row_clamp_bwd(const void *cv, char *const *p, const int64_t *s, int64_t n) {
    const float *lh = cv;
    float lo = lh[0], hi = lh[1];
    float *ga = (float *)p[0];
    const float *a = (const float *)p[1], *g = (const float *)p[2];
    for (int64_t i = 0; i < n; i++) {
        float x = a[i * s[1]];
        if (x >= lo && x <= hi) ga[i * s[0]] += g[i * s[2]];
    }
}

static nc_status cpu_f32_args(const char *name, int n, const nc_tensor *const *ts, const char *const *tn) {
    for (int i = 0; i < n; i++) {
        if (!ts[i]) continue;
        if (ts[i]->device == NC_CUDA) return nc_no_cuda(name, NULL);
    }
    int32_t dev;
    NC_TRY(nc_check_one_device(name, &dev, n, tn, ts));
    for (int i = 0; i < n; i++)
        if (ts[i]) NC_TRY(nc_check_dtype(name, tn[i], ts[i], NC_F32));
    return NC_OK;
}

nc_status nc_clamp(nc_tensor *out, const nc_tensor *a, double lo, double hi) {
    static const char *name = "clamp";
    NC_TRY(nc_check_not_null(name, "out", out));
    NC_TRY(nc_check_not_null(name, "a", a));
    const nc_tensor *ts[2] = { out, a };
    static const char *const tn[2] = { "out", "a" };
    if (ew_is_int(a->dtype)) {
        static const char *const aon[2] = { "out", "a" };
        NC_TRY(int_cpu_only(name, 2, ts));
        NC_TRY(same_dtypes(name, 2, ts, aon));
        NC_TRY(nc_check_same_shape(name, "out", out, "a", a));
        NC_TRY(nc_check_writable(name, "out", out));
        if (lo > hi || lo != lo || hi != hi)
            return nc_fail(NC_ERR_ARG, "clamp: expected lo <= hi, got lo %g and hi %g", lo, hi);
        double mn = a->dtype == NC_I32 ? -2147483648.0 : -9223372036854775808.0, mx = -mn;
        int64_t lh[2];
        lh[0] = lo <= mn ? (a->dtype == NC_I32 ? INT32_MIN : INT64_MIN) : lo >= mx ? (a->dtype == NC_I32 ? INT32_MAX : INT64_MAX) : (int64_t)ceil(lo);
        lh[1] = hi >= mx ? (a->dtype == NC_I32 ? INT32_MAX : INT64_MAX) : hi <= mn ? (a->dtype == NC_I32 ? INT32_MIN : INT64_MIN) : (int64_t)floor(hi);
        if (lh[0] > lh[1]) return nc_fail(NC_ERR_ARG, "clamp: no integer lies in [%g, %g]", lo, hi);
        ew_geo g;
        geo_build(&g, out->ndim, out->shape, 2, ts);
        char *base[2] = { nc_ptr(out), nc_ptr(a) };
        int32_t es = nc_dtype_info(a->dtype)->elem_size, esz[2] = { es, es };
        geo_run(&g, base, esz, a->dtype == NC_I32 ? row_iclamp_int32_t : row_iclamp_int64_t, lh);
        return NC_OK;
    }
    NC_TRY(cpu_f32_args(name, 2, ts, tn));
    NC_TRY(nc_check_same_shape(name, "out", out, "a", a));
    NC_TRY(nc_check_writable(name, "out", out));
    if (lo > hi) return nc_fail(NC_ERR_ARG, "clamp: expected lo <= hi, got lo %g and hi %g", lo, hi);
    float lh[2] = { (float)lo, (float)hi };
    ew_geo g;
    geo_build(&g, out->ndim, out->shape, 2, ts);
    char *base[2] = { (char *)nc_f32p(out), (char *)nc_f32p(a) };
    int32_t esz[2] = { 4, 4 };
    geo_run(&g, base, esz, row_clamp, lh);
    return NC_OK;
}

nc_status nc_clamp_backward(nc_tensor *ga, const nc_tensor *a, const nc_tensor *gout, double lo, double hi) {
    static const char *name = "clamp backward";
    if (!ga) return NC_OK;
    NC_TRY(nc_check_not_null(name, "a", a));
    NC_TRY(nc_check_not_null(name, "gout", gout));
    const nc_tensor *ts[3] = { ga, a, gout };
    static const char *const tn[3] = { "ga", "a", "gout" };
    NC_TRY(cpu_f32_args(name, 3, ts, tn));
    NC_TRY(nc_check_same_shape(name, "ga", ga, "a", a));
    NC_TRY(nc_check_same_shape(name, "gout", gout, "a", a));
    NC_TRY(nc_check_writable(name, "ga", ga));
    float lh[2] = { (float)lo, (float)hi };
    ew_geo g;
    geo_build(&g, a->ndim, a->shape, 3, ts);
    char *base[3] = { (char *)nc_f32p(ga), (char *)nc_f32p(a), (char *)nc_f32p(gout) };
    int32_t esz[3] = { 4, 4, 4 };
    geo_run(&g, base, esz, row_clamp_bwd, lh);
    return NC_OK;
}

/* ---- where ---------------------------------------------------------------------------------- */
/* ctx: the element size in bytes (values are moved as bit patterns, so any plain dtype works) */
#define EW_WHERE_ROW(T)                                                                              \
    do {                                                                                             \
        T *o = (T *)p[0];                                                                            \
        const T *a = (const T *)p[2], *b = (const T *)p[3];                                          \
        for (int64_t i = 0; i < n; i++) o[i * s[0]] = c[i * s[1]] ? a[i * s[2]] : b[i * s[3]];       \
    } while (0)
static void row_where(const void *cv, char *const *p, const int64_t *s, int64_t n) {
    int32_t es = *(const int32_t *)cv;
    const uint8_t *c = (const uint8_t *)p[1];
    switch (es) {
    case 1: EW_WHERE_ROW(uint8_t); break;
    case 2: EW_WHERE_ROW(uint16_t); break;
    case 4: EW_WHERE_ROW(uint32_t); break;
    default: EW_WHERE_ROW(uint64_t); break;
    }
}

/* operands: dst, cond, g; ctx which: 0 = take where cond, 1 = where !cond */
static void row_where_bwd(const void *cv, char *const *p, const int64_t *s, int64_t n) {
    const ew_ctx *cx = cv;
    float *d = (float *)p[0];
    const uint8_t *c = (const uint8_t *)p[1];
    const float *g = (const float *)p[2];
    int want = cx->which ? 0 : 1;
    for (int64_t i = 0; i < n; i++)
        if ((c[i * s[1]] != 0) == want) d[i * s[0]] += g[i * s[2]];
}

nc_status nc_where(nc_tensor *out, const nc_tensor *cond, const nc_tensor *a, const nc_tensor *b) {
    static const char *name = "where";
    NC_TRY(nc_check_not_null(name, "out", out));
    NC_TRY(nc_check_not_null(name, "cond", cond));
    NC_TRY(nc_check_not_null(name, "a", a));
    NC_TRY(nc_check_not_null(name, "b", b));
    const nc_tensor *fs[3] = { a, b, out };
    static const char *const fn[3] = { "a", "b", "out" };
    if (cond->device == NC_CUDA) return nc_no_cuda(name, NULL);
    for (int i = 0; i < 3; i++)
        if (fs[i]->device == NC_CUDA) return nc_no_cuda(name, NULL);
    int32_t dev;
    NC_TRY(nc_check_one_device(name, &dev, 3, fn, fs));
    NC_TRY(same_dtypes(name, 3, fs, fn));
    {
        const nc_dtype_traits *tr = nc_dtype_info(a->dtype);
        if (!tr || tr->is_packed) {
            char bb[NC_DESC_LEN];
            return nc_fail(NC_ERR_DTYPE, "%s: expected a of a plain dtype, got %s", name, nc_describe(a, bb, sizeof bb));
        }
    }
    NC_TRY(nc_check_cpu(name, "cond", cond));
    NC_TRY(nc_check_dtype(name, "cond", cond, NC_U8));
    int32_t nd;
    int64_t shape[NC_MAX_DIMS];
    NC_TRY(bcast2(name, &nd, shape, a, "a", b, "b"));
    if (!bcast_into(&nd, shape, cond)) {
        char bc[NC_DESC_LEN], ws[NC_DESC_LEN];
        shape_str(ws, sizeof ws, nd, shape);
        return nc_fail(NC_ERR_SHAPE, "where: cannot broadcast cond %s with the shape %s of a and b", 
                       nc_describe(cond, bc, sizeof bc), ws);
    }
    NC_TRY(check_out_shape(name, out, nd, shape, "the broadcast of cond, a and b"));
    NC_TRY(nc_check_writable(name, "out", out));
    const nc_tensor *ts[4] = { out, cond, a, b };
    ew_geo g;
    geo_build(&g, nd, shape, 4, ts);
    char *base[4] = { nc_ptr(out), nc_ptr(cond), nc_ptr(a), nc_ptr(b) };
    int32_t es = nc_dtype_info(a->dtype)->elem_size;
    int32_t esz[4] = { es, 1, es, es };
    geo_run(&g, base, esz, row_where, &es);
    return NC_OK;
}

static nc_status where_grad(nc_tensor *dst, const nc_tensor *cond, const nc_tensor *gout, int which) {
    int32_t nd = gout->ndim;
    const int64_t *shape = gout->shape;
    int same = dst->ndim == nd;
    for (int32_t d = 0; same && d < nd; d++) same = dst->shape[d] == shape[d];
    nc_tensor *tmp = NULL, *target = dst;
    if (!same) {
        tmp = tmp_zeros(nd, shape);
        if (!tmp) return NC_ERR_OOM;
        target = tmp;
    } else {
        NC_TRY(nc_check_writable("where backward", which ? "gb" : "ga", dst));
    }
    const nc_tensor *ts[3] = { target, cond, gout };
    ew_geo g;
    geo_build(&g, nd, shape, 3, ts);
    char *base[3] = { (char *)nc_f32p(target), nc_ptr(cond), (char *)nc_f32p(gout) };
    int32_t esz[3] = { 4, 1, 4 };
    ew_ctx c = { 0, 0.0f, which };
    geo_run(&g, base, esz, row_where_bwd, &c);
    nc_status s = NC_OK;
    if (tmp) {
        s = nc_sum_to(dst, tmp, 1.0);
        nc_tensor_release(tmp);
    }
    return s;
}

nc_status nc_where_backward(nc_tensor *ga, nc_tensor *gb, const nc_tensor *cond, const nc_tensor *gout) {
    static const char *name = "where backward";
    if (!ga && !gb) return NC_OK;
    NC_TRY(nc_check_not_null(name, "cond", cond));
    NC_TRY(nc_check_not_null(name, "gout", gout));
    const nc_tensor *fs[3] = { ga, gb, gout };
    static const char *const fn[3] = { "ga", "gb", "gout" };
    if (cond->device == NC_CUDA) return nc_no_cuda(name, NULL);
    NC_TRY(cpu_f32_args(name, 3, fs, fn));
    NC_TRY(nc_check_cpu(name, "cond", cond));
    NC_TRY(nc_check_dtype(name, "cond", cond, NC_U8));
    /* cond, ga and gb must each broadcast to gout's shape */
    const nc_tensor *chk[3] = { cond, ga, gb };
    static const char *const cn[3] = { "cond", "ga", "gb" };
    for (int i = 0; i < 3; i++) {
        if (!chk[i]) continue;
        int32_t nd = gout->ndim;
        int64_t shape[NC_MAX_DIMS];
        memcpy(shape, gout->shape, sizeof(int64_t) * (size_t)nd);
        int ok = bcast_into(&nd, shape, chk[i]) && nd == gout->ndim;
        for (int32_t d = 0; ok && d < nd; d++) ok = shape[d] == gout->shape[d];
        if (!ok) {
            char b1[NC_DESC_LEN], b2[NC_DESC_LEN];
            return nc_fail(NC_ERR_SHAPE, "%s: expected %s to broadcast to gout's shape, got %s and gout %s", name,
                           cn[i], nc_describe(chk[i], b1, sizeof b1), nc_describe(gout, b2, sizeof b2));
        }
    }
    if (ga) NC_TRY(where_grad(ga, cond, gout, 0));
    if (gb) NC_TRY(where_grad(gb, cond, gout, 1));
    return NC_OK;
}

/* ---- compare -------------------------------------------------------------------------------- */
typedef struct { int32_t cmp, da, db; } cmp_ctx;

static inline uint8_t cmp_f(int32_t cmp, double x, double y) {
    switch (cmp) {
    case 0: return x == y;
    case 1: return x != y;
    case 2: return x < y;
    case 3: return x <= y;
    case 4: return x > y;
    default: return x >= y;
    }
}

static inline uint8_t cmp_i(int32_t cmp, int64_t x, int64_t y) {
    switch (cmp) {
    case 0: return x == y;
    case 1: return x != y;
    case 2: return x < y;
    case 3: return x <= y;
    case 4: return x > y;
    default: return x >= y;
    }
}

static inline int cmp_is_int(int32_t dt) { return dt == NC_I32 || dt == NC_I64 || dt == NC_I8 || dt == NC_U8; }

static inline int64_t cmp_load_i(const char *base, int32_t dt, int64_t off) {
    switch (dt) {
    case NC_I32: return ((const int32_t *)base)[off];
    case NC_I64: return ((const int64_t *)base)[off];
    case NC_I8: return ((const int8_t *)base)[off];
    default: return ((const uint8_t *)base)[off];
    }
}

static void row_compare(const void *cv, char *const *p, const int64_t *s, int64_t n) {
    const cmp_ctx *c = cv;
    uint8_t *o = (uint8_t *)p[0];
    if (c->da == NC_F32 && c->db == NC_F32) {
        const float *a = (const float *)p[1], *b = (const float *)p[2];
        for (int64_t i = 0; i < n; i++) o[i * s[0]] = cmp_f(c->cmp, a[i * s[1]], b[i * s[2]]);
        return;
    }
    if (cmp_is_int(c->da) && cmp_is_int(c->db)) {   /* exact, also beyond 2^53 */
        if (c->da == NC_I64 && c->db == NC_I64) {
            const int64_t *a = (const int64_t *)p[1], *b = (const int64_t *)p[2];
            for (int64_t i = 0; i < n; i++) o[i * s[0]] = cmp_i(c->cmp, a[i * s[1]], b[i * s[2]]);
            return;
        }
        for (int64_t i = 0; i < n; i++)
            o[i * s[0]] = cmp_i(c->cmp, cmp_load_i(p[1], c->da, i * s[1]), cmp_load_i(p[2], c->db, i * s[2]));
        return;
    }
    for (int64_t i = 0; i < n; i++)
        o[i * s[0]] = cmp_f(c->cmp, nc_load_as_f64(p[1], c->da, i * s[1]), nc_load_as_f64(p[2], c->db, i * s[2]));
}

nc_status nc_compare(nc_tensor *out, const nc_tensor *a, const nc_tensor *b, int32_t cmp) {
    if (cmp < 0 || cmp > 5)
        return nc_fail(NC_ERR_ARG, "compare: expected cmp in [0, 5] (eq ne lt le gt ge), got %d", cmp);
    const char *name = cmp_names[cmp];
    NC_TRY(nc_check_not_null(name, "out", out));
    NC_TRY(nc_check_not_null(name, "a", a));
    NC_TRY(nc_check_not_null(name, "b", b));
    const nc_tensor *ts[3] = { out, a, b };
    static const char *const tn[3] = { "out", "a", "b" };
    for (int i = 0; i < 3; i++)
        if (ts[i]->device == NC_CUDA) return nc_no_cuda(name, NULL);
    int32_t dev;
    NC_TRY(nc_check_one_device(name, &dev, 3, tn, ts));
    NC_TRY(nc_check_dtype(name, "out", out, NC_U8));
    for (int i = 1; i < 3; i++) {
        const nc_dtype_traits *tr = nc_dtype_info(ts[i]->dtype);
        if (!tr || tr->is_packed) {
            char bb[NC_DESC_LEN];
            return nc_fail(NC_ERR_DTYPE, "%s: expected %s of a plain dtype, got %s", name, tn[i],
                           nc_describe(ts[i], bb, sizeof bb));
        }
    }
    int32_t nd;
    int64_t shape[NC_MAX_DIMS];
    NC_TRY(bcast2(name, &nd, shape, a, "a", b, "b"));
    NC_TRY(check_out_shape(name, out, nd, shape, "the broadcast of a and b"));
    NC_TRY(nc_check_writable(name, "out", out));
    ew_geo g;
    geo_build(&g, nd, shape, 3, ts);
    char *base[3] = { nc_ptr(out), nc_ptr(a), nc_ptr(b) };
    int32_t esz[3] = { 1, nc_dtype_info(a->dtype)->elem_size, nc_dtype_info(b->dtype)->elem_size };
    cmp_ctx c = { cmp, a->dtype, b->dtype };
    geo_run(&g, base, esz, row_compare, &c);
    return NC_OK;
}

#endif /* NC_KPRIMARY */
