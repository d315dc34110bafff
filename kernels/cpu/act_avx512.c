/* kernels/cpu/act_avx512.c — AVX-512F versions of the exp-bound kernels: exp, sigmoid, silu, gelu
 * (erf and tanh forms), tanh forward; silu / gelu / gelu_tanh backward; softmax / log-softmax rows;
 * fused cross-entropy rows; and one-pass streaming paths for large exact ops (add / sub / mul / div,
 * relu / relu2).
 *
 * Promise: used only when the CPU has AVX-512F and the kernel selection is "avx512" (the default
 * "auto" on such CPUs; NC_KERNEL=avx2 or scalar select the other paths). Same algorithms as the
 * AVX2 helpers in simd_avx2.h, 16 lanes wide, except the erf-form GELU, the sigmoid / SiLU
 * forward and tanh, which take Phi, sigmoid and tanh(x)/x from tables of polynomials on
 * [-4, 5.45), [-8, 8) and [0, 9) (act_tables.h; the exp-based paths or +-1 outside, per lane); the AVX-512
 * instructions remove most special-value work: vscalefps applies 2^n with correct overflow to inf
 * and correctly rounded denormal results, vrcp14ps + one Newton step replaces the division, masks
 * replace blends. Bounds (checked by spec/ops/simd_spec.lua, which runs every AVX2 check on this
 * path too): exp <= 2 ulp over the whole range incl. denormal results; sigmoid, tanh, silu,
 * gelu_tanh <= 4 ulp (gelu_tanh times its argument's condition number); gelu (erf) <= 4 ulp on the
 * table's range, relative 1.3e-6 (2e-5 in the far left tail) outside. The exact ops give the
 * reference's bits. Large outputs (>= nc_nt_bytes()) are written with streaming stores, inputs
 * prefetched ahead. Results never depend on the thread count or the (dynamic) schedule.
 */
#include "internal.h"
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#include "simd_avx512.h"
#include "sched.h"

/* 1 / d for d >= 1: rcp14 + one Newton step (error ~2^-28 before rounding; 1 / 1 = 1) */
static inline __m512 rcp512(__m512 d) {
    __m512 r = _mm512_rcp14_ps(d);
    return _mm512_fmadd_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(1.0f)), r);
}

/* sigmoid(x) = 1 / (1 + e), e = exp(-x), -x clamped to [-104, 88] (1 + e finite; exp's own
 * clamps and zero mask are not needed: below -104, 2^n p rounds to 0 or a denormal that 1 + e
 * absorbs); 0 below x = -87.33 (the true value is below FLT_MIN; as the AVX2 path); *e_out = e */
static inline __m512 sigmoid_e512(__m512 x, __m512 *e_out) {
    __mmask16 keep = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.33654475f), _CMP_NLT_UQ);   /* NaN: kept */
    __m512 nx = _mm512_max_ps(_mm512_set1_ps(-104.0f),
                              _mm512_min_ps(_mm512_set1_ps(88.0f), _mm512_sub_ps(_mm512_setzero_ps(), x)));   /* keeps NaN */
    __m512 n, p = poly512(nx, &n);
    __m512 e = _mm512_scalef_ps(p, n);
    *e_out = e;
    return _mm512_maskz_mov_ps(keep, rcp512(_mm512_add_ps(_mm512_set1_ps(1.0f), e)));
}

static inline __m512 sigmoid512(__m512 x) {
    __m512 e;
    return sigmoid_e512(x, &e);
}

static inline __m512 silu_d512(__m512 x) {
    __m512 e, s = sigmoid_e512(x, &e);
    return _mm512_mul_ps(s, _mm512_fmadd_ps(x, _mm512_mul_ps(e, s), _mm512_set1_ps(1.0f)));
}

/* erfc(z), z >= 0 (the same fit as nc_erfc256) */
static inline __m512 erfc512(__m512 z) {
    z = _mm512_min_ps(_mm512_set1_ps(10.0f), z);
    __m512 t = rcp512(_mm512_fmadd_ps(z, _mm512_set1_ps(0.5f), _mm512_set1_ps(1.0f)));
    __m512 t2 = _mm512_mul_ps(t, t), t4 = _mm512_mul_ps(t2, t2), t8 = _mm512_mul_ps(t4, t4);
    __m512 e0 = _mm512_fmadd_ps(_mm512_set1_ps(1.00002368f), t, _mm512_set1_ps(-1.26551223f));
    __m512 e1 = _mm512_fmadd_ps(_mm512_set1_ps(0.09678418f), t, _mm512_set1_ps(0.37409196f));
    __m512 e2 = _mm512_fmadd_ps(_mm512_set1_ps(0.27886807f), t, _mm512_set1_ps(-0.18628806f));
    __m512 e3 = _mm512_fmadd_ps(_mm512_set1_ps(1.48851587f), t, _mm512_set1_ps(-1.13520398f));
    __m512 e4 = _mm512_fmadd_ps(_mm512_set1_ps(0.17087277f), t, _mm512_set1_ps(-0.82215223f));
    __m512 f0 = _mm512_fmadd_ps(e1, t2, e0), f1 = _mm512_fmadd_ps(e3, t2, e2);
    __m512 p = _mm512_fmadd_ps(e4, t8, _mm512_fmadd_ps(f1, t4, f0));
    __m512 n, q = poly512(_mm512_fnmadd_ps(z, z, p), &n);   /* argument in [-100, 0]: in range */
    return _mm512_mul_ps(t, _mm512_scalef_ps(q, n));
}

static inline __m512 phi512(__m512 x) {
    __m512 ax = _mm512_abs_ps(x);
    __m512 h = _mm512_mul_ps(_mm512_set1_ps(0.5f), erfc512(_mm512_mul_ps(ax, _mm512_set1_ps(0.70710678118654752f))));
    __mmask16 neg = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
    return _mm512_mask_mov_ps(_mm512_sub_ps(_mm512_set1_ps(1.0f), h), neg, h);
}

/* Tables of polynomials (act_tables.h, fitted by tools/fit_act_tables.py for relative error:
 * <= 1.5e-7 in f32): the interval index from one FMA + the 1.5 * 2^23 shifter (its low 5 bits pick
 * the coefficient with vpermi2ps from two registers), u = x - center exactly (the centers have few
 * mantissa bits), 6 FMAs. No exp, no division: about half the instructions of the exp paths. Only
 * for x in the table's range (the callers check; other lanes get garbage). */
#include "act_tables.h"
static inline __m512 tab512(__m512 x, const float (*tab)[32], float a, float h) {
    const __m512 sh = _mm512_set1_ps(12582912.0f);
    __m512 v = _mm512_fmadd_ps(x, _mm512_set1_ps(1.0f / h), _mm512_set1_ps(-a / h - 0.5f));
    __m512 f = _mm512_add_ps(v, sh);                              /* low bits: j = round(v) */
    __m512 c = _mm512_fmadd_ps(_mm512_sub_ps(f, sh), _mm512_set1_ps(h), _mm512_set1_ps(a + 0.5f * h));   /* exact */
    __m512 u = _mm512_sub_ps(x, c);
    __m512i j = _mm512_castps_si512(f);
#define GT_(k) _mm512_permutex2var_ps(_mm512_load_ps(tab[k]), j, _mm512_load_ps(tab[k] + 16))
    __m512 p = _mm512_fmadd_ps(GT_(6), u, GT_(5));
    p = _mm512_fmadd_ps(p, u, GT_(4));
    p = _mm512_fmadd_ps(p, u, GT_(3));
    p = _mm512_fmadd_ps(p, u, GT_(2));
    p = _mm512_fmadd_ps(p, u, GT_(1));
    return _mm512_fmadd_ps(p, u, GT_(0));
#undef GT_
}

/* GELU, erf form, x Phi(x): Phi from the table on [-4, 5.45); above 5.45 Phi rounds to 1 (gelu =
 * x); lanes below -4, NaN and -inf take the erfc path (phi512), which is exact to 1.3e-6 (2e-5 in
 * the far tail): per lane, so a result never depends on its neighbours. */
static inline __m512 gelu_erf512(__m512 x) {
    __m512 g = _mm512_mul_ps(x, tab512(x, NC_GELU_TAB, NC_GELU_TAB_A, NC_GELU_TAB_H));
    g = _mm512_mask_mov_ps(g, _mm512_cmp_ps_mask(x, _mm512_set1_ps(5.45f), _CMP_GE_OQ), x);
    __mmask16 in = _mm512_cmp_ps_mask(x, _mm512_set1_ps(NC_GELU_TAB_A), _CMP_GE_OQ);   /* NaN: out */
    if (__builtin_expect(in != (__mmask16)0xffff, 0)) g = _mm512_mask_mov_ps(g, (__mmask16)~in, _mm512_mul_ps(x, phi512(x)));
    return g;
}

/* sigmoid from the table on [-8, 8), the exp path (sigmoid512) for the other lanes, per lane */
static inline __m512 sigmoid_tab512(__m512 x) {
    __m512 s = tab512(x, NC_SIGMOID_TAB, NC_SIGMOID_TAB_A, NC_SIGMOID_TAB_H);
    __mmask16 in = _mm512_cmp_ps_mask(x, _mm512_set1_ps(NC_SIGMOID_TAB_A), _CMP_GE_OQ) &
                   _mm512_cmp_ps_mask(x, _mm512_set1_ps(NC_SIGMOID_TAB_HI), _CMP_LT_OQ);   /* NaN: out */
    if (__builtin_expect(in != (__mmask16)0xffff, 0)) s = _mm512_mask_mov_ps(s, (__mmask16)~in, sigmoid512(x));
    return s;
}

/* tanh(x) = sign(x) |x| g(|x|), g(x) = tanh(x) / x from the table on [0, 9): g is even, smooth and
 * in (0.11, 1], so there is no cancellation near 0 and the relative error stays g's (<= 1.04e-7)
 * plus the product's rounding. |x| >= 9 gives +-1 (tanh(9) = 1 - 3.05e-8, 1 ulp below 1 only up to
 * 9.01); NaN propagates through the table arithmetic; -0 stays -0. About half the instructions of
 * the expm1 form (simd_avx2.h's tanh, which the AVX2 build keeps). */
static inline __m512 tanh512(__m512 x) {
    const __m512i sign = _mm512_set1_epi32((int)0x80000000u);
    __m512 ax = _mm512_abs_ps(x);
    __m512 t = _mm512_mul_ps(ax, tab512(ax, NC_TANH_TAB, NC_TANH_TAB_A, NC_TANH_TAB_H));
    t = _mm512_mask_mov_ps(t, _mm512_cmp_ps_mask(ax, _mm512_set1_ps(NC_TANH_TAB_HI), _CMP_GE_OQ), _mm512_set1_ps(1.0f));
    /* |t| with the sign of x: (t & ~sign) | (x & sign) */
    return _mm512_castsi512_ps(_mm512_ternarylogic_epi32(_mm512_castps_si512(t), _mm512_castps_si512(x), sign, 0xD8));
}

#define GC2 1.59576912160573072f     /* 2 sqrt(2/pi) */
#define GC2A 0.0713548162726008f     /* 2 sqrt(2/pi) 0.044715 */
static inline __m512 gelu_tanh512(__m512 x) {
    __m512 x2 = _mm512_mul_ps(x, x);
    __m512 u2 = _mm512_mul_ps(x, _mm512_fmadd_ps(x2, _mm512_set1_ps(GC2A), _mm512_set1_ps(GC2)));
    return _mm512_mul_ps(x, sigmoid512(u2));
}

static inline __m512 gelu_tanh_d512(__m512 x) {
    __m512 x2 = _mm512_mul_ps(x, x);
    __m512 u2 = _mm512_mul_ps(x, _mm512_fmadd_ps(x2, _mm512_set1_ps(GC2A), _mm512_set1_ps(GC2)));
    __m512 e, s = sigmoid_e512(u2, &e);
    __m512 du2 = _mm512_fmadd_ps(x2, _mm512_set1_ps(3.0f * GC2A), _mm512_set1_ps(GC2));
    return _mm512_fmadd_ps(_mm512_mul_ps(_mm512_mul_ps(x, s), _mm512_mul_ps(e, s)), du2, s);
}

static inline __m512 gelu_d512(__m512 x) {   /* Phi(x) + x phi(x) */
    __m512 e = exp512_le(_mm512_mul_ps(_mm512_set1_ps(-0.5f), _mm512_mul_ps(x, x)));
    return _mm512_fmadd_ps(_mm512_mul_ps(x, _mm512_set1_ps(0.39894228040143268f)), e, phi512(x));
}

/* ---- flat loops -------------------------------------------------------------------------------- */
static inline __mmask16 tail16(int64_t n) { return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1); }

/* the serial branch has no `omp parallel` at all (an if(0) region still enters the runtime, which
 * the strided engine would pay once per row) */
#define ACT_FWD_BODY(N, NT, VEXPR)                                                                   \
    {                                                                                                \
        int64_t i = k_ * 16;                                                                         \
        if (NT) _mm_prefetch((const char *)(a + i + 2048), _MM_HINT_T1);   /* 8 KiB ahead, into L2 */ \
        if (i + 16 <= N) {                                                                           \
            __m512 v = _mm512_loadu_ps(a + i);                                                       \
            if (NT) _mm512_stream_ps(o + i, VEXPR);                                                  \
            else _mm512_storeu_ps(o + i, VEXPR);                                                     \
        } else {                                                                                     \
            __mmask16 mk_ = tail16(N - i);                                                           \
            __m512 v = _mm512_maskz_loadu_ps(mk_, a + i);                                            \
            _mm512_mask_storeu_ps(o + i, mk_, VEXPR);                                                \
        }                                                                                            \
    }
#define ACT_FWD(N, PAR, NT, VEXPR)                                                                   \
    do {                                                                                             \
        int64_t nv_ = (N + 15) / 16;                                                                 \
        if ((PAR) && (N) >= NC_PAR_MIN) {                                                            \
            int64_t ch_ = nc_dyn_chunk(nv_, 256, 4096);                                              \
            _Pragma("omp parallel")                                                                  \
            {                                                                                        \
                _Pragma("omp for schedule(dynamic, ch_) nowait")                                     \
                for (int64_t k_ = 0; k_ < nv_; k_++) ACT_FWD_BODY(N, NT, VEXPR)                      \
                if (NT) _mm_sfence();   /* each thread orders its own streaming stores */            \
            }                                                                                        \
        } else {                                                                                     \
            for (int64_t k_ = 0; k_ < nv_; k_++) ACT_FWD_BODY(N, NT, VEXPR)                          \
            if (NT) _mm_sfence();                                                                    \
        }                                                                                            \
    } while (0)

/* o = op(a) for the ops above; returns 0 (nothing done) for any other op */
int nc_ew_unary_avx512(float *o, const float *a, int64_t n, int32_t op, int par) {
    int nt = par && n * (int64_t)sizeof(float) >= nc_nt_bytes() && ((uintptr_t)o & 63) == 0;
    switch (op) {
    case NC_OP_EXP: ACT_FWD(n, par, nt, exp512(v)); return 1;
    case NC_OP_SIGMOID: ACT_FWD(n, par, nt, sigmoid_tab512(v)); return 1;
    case NC_OP_SILU: ACT_FWD(n, par, nt, _mm512_mul_ps(v, sigmoid_tab512(v))); return 1;
    case NC_OP_TANH: ACT_FWD(n, par, nt, tanh512(v)); return 1;
    case NC_OP_GELU: ACT_FWD(n, par, nt, gelu_erf512(v)); return 1;
    case NC_OP_GELU_TANH: ACT_FWD(n, par, nt, gelu_tanh512(v)); return 1;
    default: break;
    }
    if (!nt) return 0;   /* the exact ops below: only the large streaming case comes here */
    switch (op) {
    /* max(v, 0) returns its second operand for NaN and for -0: the reference's x > 0 ? x : 0 bits */
    case NC_OP_RELU: ACT_FWD(n, par, nt, _mm512_max_ps(v, _mm512_setzero_ps())); return 1;
    case NC_OP_RELU2: ACT_FWD(n, par, nt, _mm512_mul_ps(_mm512_max_ps(v, _mm512_setzero_ps()), _mm512_max_ps(v, _mm512_setzero_ps()))); return 1;
    default: return 0;
    }
}

/* ---- exact binary ops on large contiguous tensors: one pass, streaming stores, inputs prefetched
 * 8 KiB ahead (the AVX2 build's chunked path goes through an L1 buffer). IEEE add / sub / mul / div
 * round the same on every path: the results are the reference's bits. Returns 0 (nothing done) for
 * other ops and for outputs below nc_nt_bytes(). */
#define BIN_FWD(N, VEXPR)                                                                             \
    do {                                                                                              \
        int64_t nv_ = (N + 15) / 16, ch_ = nc_dyn_chunk(nv_, 256, 4096);                              \
        _Pragma("omp parallel")                                                                       \
        {                                                                                             \
            _Pragma("omp for schedule(dynamic, ch_) nowait")                                          \
            for (int64_t k_ = 0; k_ < nv_; k_++) {                                                    \
                int64_t i = k_ * 16;                                                                  \
                _mm_prefetch((const char *)(a + i + 2048), _MM_HINT_T1);                              \
                if (B_) _mm_prefetch((const char *)(B_ + i + 2048), _MM_HINT_T1);                    \
                if (i + 16 <= N) {                                                                    \
                    __m512 v = _mm512_loadu_ps(a + i), w = B_ ? _mm512_loadu_ps(B_ + i) : vs;         \
                    _mm512_stream_ps(o + i, VEXPR);                                                   \
                } else {                                                                              \
                    __mmask16 mk_ = tail16(N - i);                                                    \
                    __m512 v = _mm512_maskz_loadu_ps(mk_, a + i), w = B_ ? _mm512_maskz_loadu_ps(mk_, B_ + i) : vs; \
                    _mm512_mask_storeu_ps(o + i, mk_, VEXPR);                                         \
                }                                                                                     \
            }                                                                                         \
            _mm_sfence();                                                                             \
        }                                                                                             \
    } while (0)

/* o = a op b (b != NULL) or a op s (b == NULL) */
int nc_ew_binary_avx512(float *o, const float *a, const float *b, float s, int64_t n, int32_t op, int par) {
    if (!par || n < NC_PAR_MIN || n * (int64_t)sizeof(float) < nc_nt_bytes() || ((uintptr_t)o & 63)) return 0;
    const float *B_ = b;
    __m512 vs = _mm512_set1_ps(s);
    switch (op) {
    case NC_OP_ADD: BIN_FWD(n, _mm512_add_ps(v, w)); return 1;
    case NC_OP_SUB: BIN_FWD(n, _mm512_sub_ps(v, w)); return 1;
    case NC_OP_MUL: BIN_FWD(n, _mm512_mul_ps(v, w)); return 1;
    case NC_OP_DIV: BIN_FWD(n, _mm512_div_ps(v, w)); return 1;
    default: return 0;
    }
}

#define ACT_BWD_BODY(N, DEXPR)                                                                       \
    {                                                                                                \
        int64_t i = k_ * 16;                                                                         \
        __mmask16 mk_ = tail16(N - i);                                                               \
        __m512 v = _mm512_maskz_loadu_ps(mk_, x + i);                                                \
        __m512 r_ = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mk_, g + i), DEXPR,                        \
                                    _mm512_maskz_loadu_ps(mk_, ga + i));                             \
        _mm512_mask_storeu_ps(ga + i, mk_, r_);                                                      \
    }
#define ACT_BWD(N, PAR, DEXPR)                                                                       \
    do {                                                                                             \
        int64_t nv_ = (N + 15) / 16;                                                                 \
        if ((PAR) && (N) >= NC_PAR_MIN) {                                                            \
            int64_t ch_ = nc_dyn_chunk(nv_, 256, 4096);                                              \
            _Pragma("omp parallel for schedule(dynamic, ch_)")                                       \
            for (int64_t k_ = 0; k_ < nv_; k_++) ACT_BWD_BODY(N, DEXPR)                              \
        } else {                                                                                     \
            for (int64_t k_ = 0; k_ < nv_; k_++) ACT_BWD_BODY(N, DEXPR)                              \
        }                                                                                            \
    } while (0)

/* ga += g * f'(x) for silu, gelu, gelu_tanh; returns 0 for any other op */
int nc_ew_unary_bwd_avx512(float *ga, const float *x, const float *g, int64_t n, int32_t op, int par) {
    switch (op) {
    case NC_OP_SILU: ACT_BWD(n, par, silu_d512(v)); return 1;
    case NC_OP_GELU: ACT_BWD(n, par, gelu_d512(v)); return 1;
    case NC_OP_GELU_TANH: ACT_BWD(n, par, gelu_tanh_d512(v)); return 1;
    default: return 0;
    }
}

/* ---- softmax rows (softmax.c picks these when nc_cpu_avx512()) --------------------------------- */
static float rowmax512(const float *x, int64_t n) {
    __m512 m0 = _mm512_set1_ps(-INFINITY), m1 = m0;
    int64_t j = 0;
    for (; j + 32 <= n; j += 32) {
        m0 = _mm512_max_ps(m0, _mm512_loadu_ps(x + j));
        m1 = _mm512_max_ps(m1, _mm512_loadu_ps(x + j + 16));
    }
    for (; j < n; j += 16) m0 = _mm512_max_ps(m0, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), tail16(n - j), x + j));
    return _mm512_reduce_max_ps(_mm512_max_ps(m0, m1));
}

/* sum of exp(x - m) (terms stored into y when y != NULL); two f32 accumulators folded into
 * double every 256 elements (8 terms per lane) */
static inline __m512d fold512d(__m512d acc, __m512 s) {
    acc = _mm512_add_pd(acc, _mm512_cvtps_pd(_mm512_castps512_ps256(s)));
    return _mm512_add_pd(acc, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(s), 1))));
}

/* pf: NULL, or the next row (n floats) to prefetch into L1 while this one computes; pf2: NULL, or the
 * row after it, into L2 */
static float rowexpsum512(float *y, const float *x, int64_t n, float m, const float *pf, const float *pf2) {
    __m512 vm = _mm512_set1_ps(m), s0 = _mm512_setzero_ps(), s1 = s0;
    __m512d acc = _mm512_setzero_pd();
    int64_t j = 0;
    for (; j + 32 <= n; j += 32) {
        if (pf) {
            _mm_prefetch((const char *)(pf + j), _MM_HINT_T0);
            _mm_prefetch((const char *)(pf + j + 16), _MM_HINT_T0);
            if (pf2) {
                _mm_prefetch((const char *)(pf2 + j), _MM_HINT_T1);
                _mm_prefetch((const char *)(pf2 + j + 16), _MM_HINT_T1);
            }
        }
        __m512 e0 = exp512_le(_mm512_sub_ps(_mm512_loadu_ps(x + j), vm));
        __m512 e1 = exp512_le(_mm512_sub_ps(_mm512_loadu_ps(x + j + 16), vm));
        if (y) {
            _mm512_storeu_ps(y + j, e0);
            _mm512_storeu_ps(y + j + 16, e1);
        }
        s0 = _mm512_add_ps(s0, e0);
        s1 = _mm512_add_ps(s1, e1);
        if ((j & 255) == 224) {   /* every 256 elements: 8 terms per f32 lane, then double */
            acc = fold512d(acc, _mm512_add_ps(s0, s1));
            s0 = s1 = _mm512_setzero_ps();
        }
    }
    for (; j < n; j += 16) {
        __mmask16 mk = tail16(n - j);
        __m512 e = _mm512_maskz_mov_ps(mk, exp512_le(_mm512_sub_ps(_mm512_maskz_loadu_ps(mk, x + j), vm)));
        if (y) _mm512_mask_storeu_ps(y + j, mk, e);
        s0 = _mm512_add_ps(s0, e);
    }
    return (float)_mm512_reduce_add_pd(fold512d(acc, _mm512_add_ps(s0, s1)));
}

/* y = softmax / log-softmax of x (n); tmp: NULL, or a scratch row (then y gets streaming stores
 * where 64-byte aligned; the caller fences); next: NULL, or the row the caller does next (n
 * floats): the exp pass prefetches it (one line per 16 exps), so its reads overlap this row's
 * arithmetic instead of following it (a row of 1024 floats is one 4 KiB page, where the hardware
 * stream prefetcher stops), and the final pass computes its max into *next_max (so the next call,
 * given it as *xmax, skips its max pass); next2: NULL, or the row after next, prefetched into L2 in
 * the same loop (two rows of lead for the memory system). xmax: NULL, or the max of x. */
void nc_k_softmax_row_avx512(float *y, const float *x, int64_t n, int log, float *tmp, const float *next,
                             const float *next2, const float *xmax, float *next_max) {
    float m = xmax ? *xmax : rowmax512(x, n);
    if (m == -INFINITY) m = 0.0f;
    __m512 nm = _mm512_set1_ps(-INFINITY);
    int64_t j = 0, j0;
    if (log) {
        float lse = m + logf(rowexpsum512(NULL, x, n, m, next, next2));
        __m512 vl = _mm512_set1_ps(lse);
        if (tmp) {   /* large outputs: streaming stores from the first 64-byte boundary */
            for (; j < n && ((uintptr_t)(y + j) & 63); j++) y[j] = x[j] - lse;
        }
        j0 = j;
        if (tmp) {
            for (; j + 16 <= n; j += 16) {
                if (next) nm = _mm512_max_ps(nm, _mm512_loadu_ps(next + j));
                _mm512_stream_ps(y + j, _mm512_sub_ps(_mm512_loadu_ps(x + j), vl));
            }
        } else {
            for (; j + 16 <= n; j += 16) {
                if (next) nm = _mm512_max_ps(nm, _mm512_loadu_ps(next + j));
                _mm512_storeu_ps(y + j, _mm512_sub_ps(_mm512_loadu_ps(x + j), vl));
            }
        }
        if (j < n) {
            __mmask16 mk = tail16(n - j);
            _mm512_mask_storeu_ps(y + j, mk, _mm512_sub_ps(_mm512_maskz_loadu_ps(mk, x + j), vl));
        }
    } else {
        float *e = tmp ? tmp : y;
        float inv = 1.0f / rowexpsum512(e, x, n, m, next, next2);
        __m512 vi = _mm512_set1_ps(inv);
        if (tmp) {
            for (; j < n && ((uintptr_t)(y + j) & 63); j++) y[j] = e[j] * inv;
            j0 = j;
            for (; j + 16 <= n; j += 16) {
                if (next) nm = _mm512_max_ps(nm, _mm512_loadu_ps(next + j));
                _mm512_stream_ps(y + j, _mm512_mul_ps(_mm512_loadu_ps(e + j), vi));
            }
        } else {
            j0 = 0;
            for (; j + 16 <= n; j += 16) {
                if (next) nm = _mm512_max_ps(nm, _mm512_loadu_ps(next + j));
                _mm512_storeu_ps(y + j, _mm512_mul_ps(_mm512_loadu_ps(y + j), vi));
            }
        }
        for (int64_t k = j; k < n; k++) y[k] = e[k] * inv;
    }
    if (next && next_max) {   /* the next row's max: the vector body above, plus head and tail */
        float mn = _mm512_reduce_max_ps(nm);
        for (int64_t k = 0; k < j0; k++) mn = next[k] > mn ? next[k] : mn;
        for (int64_t k = j; k < n; k++) mn = next[k] > mn ? next[k] : mn;
        *next_max = mn;
    }
}

/* ---- fused cross-entropy rows (loss.c picks these when nc_cpu_avx512()) ------------------------ */
/* lse and plain sum of one contiguous row of V logits: max and sum in one pass, then the exp sum
 * (row still in L2) */
void nc_k_ce_row_avx512(const float *x, int64_t V, float *lse, float *sum) {
    __m512 m0 = _mm512_set1_ps(-INFINITY), m1 = m0, a0 = _mm512_setzero_ps(), a1 = a0;
    int64_t j = 0;
    for (; j + 32 <= V; j += 32) {
        __m512 u = _mm512_loadu_ps(x + j), w = _mm512_loadu_ps(x + j + 16);
        m0 = _mm512_max_ps(m0, u);
        m1 = _mm512_max_ps(m1, w);
        a0 = _mm512_add_ps(a0, u);
        a1 = _mm512_add_ps(a1, w);
    }
    for (; j < V; j += 16) {
        __mmask16 mk = tail16(V - j);
        m0 = _mm512_max_ps(m0, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), mk, x + j));
        a0 = _mm512_add_ps(a0, _mm512_maskz_loadu_ps(mk, x + j));
    }
    float m = _mm512_reduce_max_ps(_mm512_max_ps(m0, m1));
    *sum = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
    *lse = m + logf(rowexpsum512(NULL, x, V, m, NULL, NULL));
}

/* g (V) += a exp(x - lse) - c */
void nc_k_ce_backward_row_avx512(float *g, const float *x, int64_t V, float lse, float a, float c) {
    __m512 vl = _mm512_set1_ps(lse), va = _mm512_set1_ps(a), vc = _mm512_set1_ps(c);
    for (int64_t j = 0; j < V; j += 16) {
        __mmask16 mk = tail16(V - j);
        __m512 e = exp512_le(_mm512_sub_ps(_mm512_maskz_loadu_ps(mk, x + j), vl));
        _mm512_mask_storeu_ps(g + j, mk, _mm512_sub_ps(_mm512_fmadd_ps(va, e, _mm512_maskz_loadu_ps(mk, g + j)), vc));
    }
}
