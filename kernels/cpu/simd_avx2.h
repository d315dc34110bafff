/* kernels/cpu/simd_avx2.h — AVX2/FMA helpers for the *_avx2.c builds of the kernels.
 *
 * Promise: only compiled where __AVX2__ and __FMA__ are defined (the Makefile's *_avx2.c flags);
 * the portable .c files include it under `#if NC_SIMD_AVX2` and keep their scalar loops as the
 * reference (NC_KERNEL=scalar). These paths use FMA contraction, polynomials and rcp + Newton
 * instead of division, so their specs (spec/ops/simd_spec.lua) compare them against float64
 * references with stated bounds, not bit-equality with the scalar path. Measured bounds (ulp =
 * f32 ulp of the float64 reference value; "rel" = relative error):
 *   nc_exp256:        <= 2 ulp over the whole f32 range incl. denormal results; NaN, +-inf exact
 *   nc_sigmoid256:    <= 3 ulp; 0 below x = -87.33 (true value < FLT_MIN)
 *   nc_tanh256:       <= 3 ulp
 *   silu / gelu_tanh: <= 4 ulp away from the zero crossing, abs error <= 1e-7 * |x| near it
 *   nc_erfc256 / gelu: rel 1.3e-6 (Chebyshev fit of Numerical Recipes' erfcc, fractional
 *                      error 1.2e-7, plus f32 rounding)
 */
#ifndef NC_SIMD_AVX2_H
#define NC_SIMD_AVX2_H

#if defined(__AVX2__) && defined(__FMA__)
#define NC_SIMD_AVX2 1
#include "exp_poly.h"
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

/* ---- exp -------------------------------------------------------------------------------------
 * exp(x) = 2^n exp(r), n = round(x log2 e), r = x - n ln2 (ln2 split in a 9-bit high part, so
 * n ln2_hi is exact, and a low correction), exp(r) on |r| <= ln2/2 by the degree-7 Cephes
 * polynomial in Estrin form (dependency depth 3: the loops are latency-bound).
 * n comes from the 1.5 * 2^23 shifter: t = x log2e + (1.5 * 2^23 + 127) rounded by one FMA holds
 * n + 127 in its low mantissa bits, so 2^n is (bits of t) << 23 — no round/convert instructions.
 * nc_exp256_poly returns exp(r) and t; callers pick the scaling:
 *   nc_exp256_in   x in [-87.33, 88.37] (n in [-126, 127]): one multiply by 2^n;
 *   nc_exp256_wide every input: 2^n applied as 2^(n/2) 2^(n - n/2), so results in f32's
 *                  denormal range and the last 0.35 before overflow are right; 0 below
 *                  ln(2^-150) (without computing a denormal there: no microcode assist);
 *   nc_exp256      the fast path when every lane is in range, else the wide path (one
 *                  compare + movemask per vector);
 *   nc_exp256_le   the same for arguments <= 0 (softmax, sigmoid): one compare against the
 *                  low end only.
 * Accuracy (spec/ops/simd_spec.lua measures it against math.exp in float64): <= 2 ulp for
 * normal results, NaN -> NaN, +inf -> +inf, -inf -> 0, denormal results within 1 denormal ulp. */
/* the argument reduction and p(r) (exp_poly.h): returns p, with t (the shifter sum), r and r^2;
 * exp(r) = fma(p, r^2, r + 1), expm1(r) = fma(p, r^2, r) */
static inline __m256 nc_exp256_red(__m256 x, __m256 *t_out, __m256 *r_out, __m256 *r2_out) {
    const __m256 sh = _mm256_set1_ps(NC_EXP_SHIFT);
    __m256 t = _mm256_fmadd_ps(x, _mm256_set1_ps(NC_EXP_LOG2E), sh);
    __m256 n = _mm256_sub_ps(t, sh);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(NC_EXP_LN2_HI), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(NC_EXP_LN2_LO), r);
    __m256 r2 = _mm256_mul_ps(r, r), r4 = _mm256_mul_ps(r2, r2);
    __m256 q0 = _mm256_fmadd_ps(_mm256_set1_ps(NC_EXP_C1), r, _mm256_set1_ps(NC_EXP_C0));
    __m256 q1 = _mm256_fmadd_ps(_mm256_set1_ps(NC_EXP_C3), r, _mm256_set1_ps(NC_EXP_C2));
    __m256 q2 = _mm256_fmadd_ps(_mm256_set1_ps(NC_EXP_C5), r, _mm256_set1_ps(NC_EXP_C4));
    *t_out = t;
    *r_out = r;
    *r2_out = r2;
    return _mm256_fmadd_ps(q2, r4, _mm256_fmadd_ps(q1, r2, q0));
}

static inline __m256 nc_exp256_poly(__m256 x, __m256 *t_out) {
    __m256 r, r2, p = nc_exp256_red(x, t_out, &r, &r2);
    return _mm256_fmadd_ps(p, r2, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
}

/* x in [NC_EXP_LO_IN, NC_EXP_HI_IN] (callers that clamp themselves) */
static inline __m256 nc_exp256_in(__m256 x) {
    __m256 t;
    __m256 p = nc_exp256_poly(x, &t);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(t), 23)));
}

/* every input (see above) */
static inline __m256 nc_exp256_wide(__m256 x) {
    __m256 zero = _mm256_cmp_ps(x, _mm256_set1_ps(NC_EXP_ZERO), _CMP_LT_OQ);
    __m256 xc = _mm256_andnot_ps(zero, x);                                   /* those lanes: exp(0) */
    xc = _mm256_min_ps(_mm256_set1_ps(89.0f), xc);                          /* n <= 128; NaN stays */
    __m256 t;
    __m256 p = nc_exp256_poly(xc, &t);
    __m256i n = _mm256_sub_epi32(_mm256_castps_si256(t), _mm256_castps_si256(_mm256_set1_ps(NC_EXP_SHIFT)));
    __m256i n1 = _mm256_srai_epi32(n, 1), n2 = _mm256_sub_epi32(n, n1);     /* each in [-75, 64] */
    const __m256i bias = _mm256_set1_epi32(127);
    __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
    __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
    return _mm256_andnot_ps(zero, _mm256_mul_ps(_mm256_mul_ps(p, s1), s2));
}

static inline __m256 nc_exp256(__m256 x) {
    __m256 ax = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x);
    /* |x| > 87.33 or NaN (unordered compares true) */
    if (__builtin_expect(_mm256_movemask_ps(_mm256_cmp_ps(ax, _mm256_set1_ps(-NC_EXP_LO_IN), _CMP_NLE_UQ)), 0))
        return nc_exp256_wide(x);
    return nc_exp256_in(x);
}

/* exp(x) for x <= 88.37 or NaN (softmax / cross-entropy arguments x - max <= 0, sigmoid's -|x|) */
static inline __m256 nc_exp256_le(__m256 x) {
    if (__builtin_expect(_mm256_movemask_ps(_mm256_cmp_ps(x, _mm256_set1_ps(NC_EXP_LO_IN), _CMP_NGE_UQ)), 0))
        return nc_exp256_wide(x);
    return nc_exp256_in(x);
}

/* 1 / d for d in [1, 2^100]: rcp (12 bits) refined by one third-order step r (1 + e + e^2),
 * e = 1 - d r (error ~e^3 < 1e-10, so the result is the rounded quotient up to the last FMA's
 * rounding; 1 / 1 = 1 exactly). A division costs ~5 cycles per vector on the ports the
 * polynomials need; this is 4 uops. */
static inline __m256 nc_rcp256(__m256 d) {
    __m256 r = _mm256_rcp_ps(d);
    __m256 e = _mm256_fnmadd_ps(d, r, _mm256_set1_ps(1.0f));
    return _mm256_fmadd_ps(r, _mm256_fmadd_ps(e, e, e), r);
}

/* 1 / d, correctly rounded (any d) */
static inline __m256 nc_recip256(__m256 d) { return _mm256_div_ps(_mm256_set1_ps(1.0f), d); }

/* erfc(z) for z >= 0 (NaN -> NaN): t = 1 / (1 + z/2), erfc = t exp(-z^2 + P(t)); z is capped at 10
 * (erfc(10) = 2e-45 is 0 in f32), which keeps every intermediate finite */
static inline __m256 nc_erfc256(__m256 z) {
    z = _mm256_min_ps(_mm256_set1_ps(10.0f), z);   /* NaN (second operand) passes through */
    __m256 t = nc_rcp256(_mm256_fmadd_ps(z, _mm256_set1_ps(0.5f), _mm256_set1_ps(1.0f)));
    /* P(t) = sum_i k_i t^i by Estrin's scheme (depth 4 instead of 9) */
    __m256 t2 = _mm256_mul_ps(t, t), t4 = _mm256_mul_ps(t2, t2), t8 = _mm256_mul_ps(t4, t4);
    __m256 e0 = _mm256_fmadd_ps(_mm256_set1_ps(1.00002368f), t, _mm256_set1_ps(-1.26551223f));
    __m256 e1 = _mm256_fmadd_ps(_mm256_set1_ps(0.09678418f), t, _mm256_set1_ps(0.37409196f));
    __m256 e2 = _mm256_fmadd_ps(_mm256_set1_ps(0.27886807f), t, _mm256_set1_ps(-0.18628806f));
    __m256 e3 = _mm256_fmadd_ps(_mm256_set1_ps(1.48851587f), t, _mm256_set1_ps(-1.13520398f));
    __m256 e4 = _mm256_fmadd_ps(_mm256_set1_ps(0.17087277f), t, _mm256_set1_ps(-0.82215223f));
    __m256 f0 = _mm256_fmadd_ps(e1, t2, e0), f1 = _mm256_fmadd_ps(e3, t2, e2);
    __m256 p = _mm256_fmadd_ps(e4, t8, _mm256_fmadd_ps(f1, t4, f0));
    __m256 arg = _mm256_max_ps(_mm256_set1_ps(NC_EXP_LO_IN), _mm256_fnmadd_ps(z, z, p));   /* keeps NaN */
    return _mm256_mul_ps(t, nc_exp256_in(arg));
}

/* Phi(x) = P(N(0,1) <= x) = erfc(-x / sqrt 2) / 2, accurate in relative terms on both tails */
static inline __m256 nc_phi256(__m256 x) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 z = _mm256_mul_ps(_mm256_andnot_ps(sign, x), _mm256_set1_ps(0.70710678118654752f));
    __m256 h = _mm256_mul_ps(_mm256_set1_ps(0.5f), nc_erfc256(z));   /* Phi(-|x|) */
    return _mm256_blendv_ps(_mm256_sub_ps(_mm256_set1_ps(1.0f), h), h, x);   /* sign bit of x picks */
}

/* sigmoid(x) = 1 / (1 + e), e = exp(-x) with -x clamped to [-87.33, 87] (so 1 + e stays within
 * the reciprocal's range); relative accuracy on both tails, 0 below x = -87.33 (the true value is
 * below FLT_MIN there); NaN -> NaN. *e_out = e, from which 1 - s = e s without cancellation. */
static inline __m256 nc_sigmoid_e256(__m256 x, __m256 *e_out) {
    __m256 nx = _mm256_xor_ps(x, _mm256_set1_ps(-0.0f));
    nx = _mm256_min_ps(_mm256_set1_ps(87.0f), _mm256_max_ps(_mm256_set1_ps(NC_EXP_LO_IN), nx));   /* keeps NaN */
    __m256 e = nc_exp256_in(nx);
    __m256 s = nc_rcp256(_mm256_add_ps(_mm256_set1_ps(1.0f), e));
    *e_out = e;
    return _mm256_andnot_ps(_mm256_cmp_ps(x, _mm256_set1_ps(NC_EXP_LO_IN), _CMP_LT_OQ), s);
}

static inline __m256 nc_sigmoid256(__m256 x) {
    __m256 e;
    return nc_sigmoid_e256(x, &e);
}

/* d silu / dx = s (1 + x (1 - s)), 1 - s = e s */
static inline __m256 nc_silu_d256(__m256 x) {
    __m256 e, s = nc_sigmoid_e256(x, &e);
    return _mm256_mul_ps(s, _mm256_fmadd_ps(x, _mm256_mul_ps(e, s), _mm256_set1_ps(1.0f)));
}

/* tanh(x) = sign(x) (1 - e) / (1 + e), e = exp(-2|x|), both sides from exp's own reduction
 * (2^n (1 + t), t = r + r^2 q(r)): e - 1 = 2^n t + (2^n - 1) and e + 1 = 2^n t + (2^n + 1), one FMA
 * each with 2^n -+ 1 exact, so 1 - e does not cancel at small |x| (n = 0: it is -t) and no second
 * polynomial or blend is needed (act_avx512.c's tanh512 is the same algorithm). |x| is capped at
 * 9.5 (tanh rounds to 1 from 9.01; 2^n stays normal). +-inf -> +-1, NaN -> NaN, -0 -> -0. */
static inline __m256 nc_tanh256(__m256 x) {
    const __m256 sign = _mm256_set1_ps(-0.0f), one = _mm256_set1_ps(1.0f);
    __m256 ax = _mm256_min_ps(_mm256_set1_ps(9.5f), _mm256_andnot_ps(sign, x));   /* NaN stays */
    __m256 y = _mm256_mul_ps(ax, _mm256_set1_ps(-2.0f));
    __m256 tt, r, r2, p = nc_exp256_red(y, &tt, &r, &r2);
    __m256 t = _mm256_fmadd_ps(p, r2, r);                                            /* expm1(r) */
    __m256 s = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(tt), 23));   /* 2^n, n in [-28, 0] */
    __m256 em = _mm256_fmadd_ps(s, t, _mm256_sub_ps(s, one));                        /* e - 1 <= 0 */
    __m256 ep = _mm256_fmadd_ps(s, t, _mm256_add_ps(s, one));                        /* e + 1 in (1, 2] */
    __m256 q = _mm256_mul_ps(em, nc_rcp256(ep));                                     /* -tanh|x| */
    return _mm256_or_ps(_mm256_andnot_ps(sign, q), _mm256_and_ps(sign, x));
}

/* GELU, tanh form: 0.5 x (1 + tanh(u)) = x sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3): the
 * sigmoid form has no cancellation in the left tail. Derivative (1 + tanh u = 2s,
 * 1 - tanh^2 u = 4 s (1 - s)): s + 2 x s (1 - s) sqrt(2/pi) (1 + 3 0.044715 x^2). */
#define NC_GELU_C2 1.59576912160573072f          /* 2 sqrt(2/pi) */
#define NC_GELU_C2A 0.0713548162726008f          /* 2 sqrt(2/pi) 0.044715 */
static inline __m256 nc_gelu_tanh256(__m256 x) {
    __m256 x2 = _mm256_mul_ps(x, x);
    __m256 u2 = _mm256_mul_ps(x, _mm256_fmadd_ps(x2, _mm256_set1_ps(NC_GELU_C2A), _mm256_set1_ps(NC_GELU_C2)));
    return _mm256_mul_ps(x, nc_sigmoid256(u2));
}

static inline __m256 nc_gelu_tanh_d256(__m256 x) {
    __m256 x2 = _mm256_mul_ps(x, x);
    __m256 u2 = _mm256_mul_ps(x, _mm256_fmadd_ps(x2, _mm256_set1_ps(NC_GELU_C2A), _mm256_set1_ps(NC_GELU_C2)));
    __m256 e, s = nc_sigmoid_e256(u2, &e);
    __m256 du2 = _mm256_fmadd_ps(x2, _mm256_set1_ps(3.0f * NC_GELU_C2A), _mm256_set1_ps(NC_GELU_C2));   /* d(2u)/dx */
    __m256 oms = _mm256_mul_ps(e, s);
    return _mm256_fmadd_ps(_mm256_mul_ps(_mm256_mul_ps(x, s), oms), du2, s);
}

static inline float nc_hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline double nc_hsum256d(__m256d v) {
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    s = _mm_add_sd(s, _mm_unpackhi_pd(s, s));
    return _mm_cvtsd_f64(s);
}

static inline float nc_hmax256(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* mask loading the first n (0..8) lanes */
static inline __m256i nc_tailmask256(int64_t n) {
    const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int32_t)n), idx);
}

/* dst[0, n) = src[0, n) with streaming stores where dst is 32-byte aligned (callers _mm_sfence) */
static inline void nc_stream_store(float *dst, const float *src, int64_t n) {
    int64_t j = 0;
    while (j < n && ((uintptr_t)(dst + j) & 31)) { dst[j] = src[j]; j++; }
    for (; j + 8 <= n; j += 8) _mm256_stream_ps(dst + j, _mm256_loadu_ps(src + j));
    for (; j < n; j++) dst[j] = src[j];
}

/* nc_stream_store that also prefetches n floats at pa (and pb unless NULL) into L1, one line per
 * 16 floats stored: a chunked streaming loop prefetches its next chunk's inputs while it writes
 * this one out (measured on one core of the 2-vCPU VM: 11.5 -> 14.5 GB/s for a copy-like op) */
static inline void nc_stream_store_pf(float *dst, const float *src, int64_t n, const float *pa, const float *pb) {
    int64_t j = 0;
    while (j < n && ((uintptr_t)(dst + j) & 31)) { dst[j] = src[j]; j++; }
    for (; j + 16 <= n; j += 16) {
        _mm_prefetch((const char *)(pa + j), _MM_HINT_T0);
        if (pb) _mm_prefetch((const char *)(pb + j), _MM_HINT_T0);
        _mm256_stream_ps(dst + j, _mm256_loadu_ps(src + j));
        _mm256_stream_ps(dst + j + 8, _mm256_loadu_ps(src + j + 8));
    }
    for (; j + 8 <= n; j += 8) _mm256_stream_ps(dst + j, _mm256_loadu_ps(src + j));
    for (; j < n; j++) dst[j] = src[j];
}

/* ---- row helpers (softmax, cross-entropy) ---- */
static inline float nc_rowmax_avx2(const float *x, int64_t n) {
    __m256 m0 = _mm256_set1_ps(-INFINITY), m1 = m0, m2 = m0, m3 = m0;
    int64_t j = 0;
    for (; j + 32 <= n; j += 32) {
        m0 = _mm256_max_ps(m0, _mm256_loadu_ps(x + j));
        m1 = _mm256_max_ps(m1, _mm256_loadu_ps(x + j + 8));
        m2 = _mm256_max_ps(m2, _mm256_loadu_ps(x + j + 16));
        m3 = _mm256_max_ps(m3, _mm256_loadu_ps(x + j + 24));
    }
    for (; j + 8 <= n; j += 8) m0 = _mm256_max_ps(m0, _mm256_loadu_ps(x + j));
    float m = nc_hmax256(_mm256_max_ps(_mm256_max_ps(m0, m1), _mm256_max_ps(m2, m3)));
    for (; j < n; j++) m = x[j] > m ? x[j] : m;
    return m;
}

/* f32 lane sums s0 + s1 folded into a double accumulator */
static inline __m256d nc_fold256d(__m256d acc, __m256 s0, __m256 s1) {
    __m256 s = _mm256_add_ps(s0, s1);
    acc = _mm256_add_pd(acc, _mm256_cvtps_pd(_mm256_castps256_ps128(s)));
    return _mm256_add_pd(acc, _mm256_cvtps_pd(_mm256_extractf128_ps(s, 1)));
}

/* sum of exp(x - m); stores the terms into y when y != NULL. Lanes accumulate 64 elements in
 * f32, then fold into double, so a 32k-long row sums with ~1e-7 relative error (softmax rows
 * sum to 1 within 1e-6 at vocabulary sizes). */
static inline float nc_rowexpsum_avx2(float *y, const float *x, int64_t n, float m) {
    __m256 vm = _mm256_set1_ps(m), s0 = _mm256_setzero_ps(), s1 = s0;
    __m256d acc = _mm256_setzero_pd();
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) {
        __m256 e0 = nc_exp256_le(_mm256_sub_ps(_mm256_loadu_ps(x + j), vm));
        __m256 e1 = nc_exp256_le(_mm256_sub_ps(_mm256_loadu_ps(x + j + 8), vm));
        if (y) {
            _mm256_storeu_ps(y + j, e0);
            _mm256_storeu_ps(y + j + 8, e1);
        }
        s0 = _mm256_add_ps(s0, e0);
        s1 = _mm256_add_ps(s1, e1);
        if ((j & 63) == 48) {
            acc = nc_fold256d(acc, s0, s1);
            s0 = s1 = _mm256_setzero_ps();
        }
    }
    if (j < n) {
        __m256i mk = nc_tailmask256(n - j < 8 ? n - j : 8);
        __m256 e0 = nc_exp256_le(_mm256_sub_ps(_mm256_maskload_ps(x + j, mk), vm));
        e0 = _mm256_and_ps(e0, _mm256_castsi256_ps(mk));
        if (y) _mm256_maskstore_ps(y + j, mk, e0);
        s0 = _mm256_add_ps(s0, e0);
        j += 8;
        if (j < n) {
            mk = nc_tailmask256(n - j);
            __m256 e1 = nc_exp256_le(_mm256_sub_ps(_mm256_maskload_ps(x + j, mk), vm));
            e1 = _mm256_and_ps(e1, _mm256_castsi256_ps(mk));
            if (y) _mm256_maskstore_ps(y + j, mk, e1);
            s1 = _mm256_add_ps(s1, e1);
        }
    }
    return (float)nc_hsum256d(nc_fold256d(acc, s0, s1));
}

#else
#define NC_SIMD_AVX2 0
#endif

#endif
