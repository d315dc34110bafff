/* kernels/cpu/simd_avx2.h — AVX2/FMA helpers for the *_avx2.c builds of the kernels.
 *
 * Promise: only compiled where __AVX2__ and __FMA__ are defined (the Makefile's *_avx2.c flags);
 * the portable .c files include it under `#if NC_SIMD_AVX2` and keep their scalar loops as the
 * reference (NC_KERNEL=scalar). These paths use FMA contraction and a polynomial exp, so their
 * specs compare them against float64 references with stated tolerances, not bit-equality with
 * the scalar path:
 *   nc_exp256:  max relative error ~3 ulp for x in [-87.3, 88.376]; exactly 0 below -87.3 and
 *               +inf above 88.376 (the last 0.3 before f32 overflow round up to inf); NaN -> NaN.
 *   nc_erfc256: erfc(z) for z >= 0 with relative error < 1.3e-6 (Chebyshev fit of
 *               Numerical Recipes' erfcc, fractional error 1.2e-7, plus f32 rounding).
 */
#ifndef NC_SIMD_AVX2_H
#define NC_SIMD_AVX2_H

#if defined(__AVX2__) && defined(__FMA__)
#define NC_SIMD_AVX2 1
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

/* exp(x) = 2^n exp(r), n = round(x / ln2), r = x - n ln2 (ln2 split in two), exp(r) by a degree-6
 * minimax polynomial (Cephes expf coefficients). nc_exp256_in requires xc in [-87.3, 88.376]
 * (callers that clamp themselves); nc_exp256 handles every input. */
static inline __m256 nc_exp256_in(__m256 xc) {
    __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), xc);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    /* Estrin's scheme (dependency depth 3 instead of Horner's 6: the loops are latency-bound) */
    __m256 r2 = _mm256_mul_ps(r, r), r4 = _mm256_mul_ps(r2, r2);
    __m256 q0 = _mm256_fmadd_ps(_mm256_set1_ps(1.6666665459e-1f), r, _mm256_set1_ps(5.0000001201e-1f));
    __m256 q1 = _mm256_fmadd_ps(_mm256_set1_ps(8.3334519073e-3f), r, _mm256_set1_ps(4.1665795894e-2f));
    __m256 q2 = _mm256_fmadd_ps(_mm256_set1_ps(1.9875691500e-4f), r, _mm256_set1_ps(1.3981999507e-3f));
    __m256 p = _mm256_fmadd_ps(q2, r4, _mm256_fmadd_ps(q1, r2, q0));
    p = _mm256_fmadd_ps(p, r2, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

static inline __m256 nc_exp256(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-87.3f), hi = _mm256_set1_ps(88.3762626647949f);
    __m256 y = nc_exp256_in(_mm256_min_ps(_mm256_max_ps(x, lo), hi));
    y = _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps(x, lo, _CMP_LT_OQ));
    y = _mm256_blendv_ps(y, _mm256_set1_ps(INFINITY), _mm256_cmp_ps(x, hi, _CMP_GT_OQ));
    return _mm256_blendv_ps(y, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));   /* NaN stays NaN */
}

/* 1 / d, correctly rounded (rcp + a Newton step measured no faster here and is 1 ulp off at d = 1) */
static inline __m256 nc_recip256(__m256 d) { return _mm256_div_ps(_mm256_set1_ps(1.0f), d); }

/* exp(x) for x <= 88.37 (softmax / cross-entropy arguments x - max <= 0, -inf, NaN): no upper
 * clamp; exactly 0 below -87.3; NaN stays NaN (max_ps returns its second operand on NaN) */
static inline __m256 nc_exp256_le(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-87.3f);
    __m256 y = nc_exp256_in(_mm256_max_ps(lo, x));
    return _mm256_andnot_ps(_mm256_cmp_ps(x, lo, _CMP_LT_OQ), y);
}

/* erfc(z) for z >= 0 (NaN -> NaN): t = 1 / (1 + z/2), erfc = t exp(-z^2 + P(t)); z is capped at 10
 * (erfc(10) = 2e-45 is 0 in f32), which keeps every intermediate finite */
static inline __m256 nc_erfc256(__m256 z) {
    z = _mm256_min_ps(_mm256_set1_ps(10.0f), z);   /* NaN (second operand) passes through */
    __m256 t = nc_recip256(_mm256_fmadd_ps(z, _mm256_set1_ps(0.5f), _mm256_set1_ps(1.0f)));
    /* P(t) = sum_i k_i t^i by Estrin's scheme (depth 4 instead of 9) */
    __m256 t2 = _mm256_mul_ps(t, t), t4 = _mm256_mul_ps(t2, t2), t8 = _mm256_mul_ps(t4, t4);
    __m256 e0 = _mm256_fmadd_ps(_mm256_set1_ps(1.00002368f), t, _mm256_set1_ps(-1.26551223f));
    __m256 e1 = _mm256_fmadd_ps(_mm256_set1_ps(0.09678418f), t, _mm256_set1_ps(0.37409196f));
    __m256 e2 = _mm256_fmadd_ps(_mm256_set1_ps(0.27886807f), t, _mm256_set1_ps(-0.18628806f));
    __m256 e3 = _mm256_fmadd_ps(_mm256_set1_ps(1.48851587f), t, _mm256_set1_ps(-1.13520398f));
    __m256 e4 = _mm256_fmadd_ps(_mm256_set1_ps(0.17087277f), t, _mm256_set1_ps(-0.82215223f));
    __m256 f0 = _mm256_fmadd_ps(e1, t2, e0), f1 = _mm256_fmadd_ps(e3, t2, e2);
    __m256 p = _mm256_fmadd_ps(e4, t8, _mm256_fmadd_ps(f1, t4, f0));
    __m256 arg = _mm256_max_ps(_mm256_set1_ps(-87.3f), _mm256_fnmadd_ps(z, z, p));   /* keeps NaN */
    return _mm256_mul_ps(t, nc_exp256_in(arg));
}

/* Phi(x) = P(N(0,1) <= x) = erfc(-x / sqrt 2) / 2, accurate in relative terms on both tails */
static inline __m256 nc_phi256(__m256 x) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 z = _mm256_mul_ps(_mm256_andnot_ps(sign, x), _mm256_set1_ps(0.70710678118654752f));
    __m256 h = _mm256_mul_ps(_mm256_set1_ps(0.5f), nc_erfc256(z));   /* Phi(-|x|) */
    __m256 neg = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ);
    return _mm256_blendv_ps(_mm256_sub_ps(_mm256_set1_ps(1.0f), h), h, neg);
}

/* 1 / (1 + exp(-x)); -x is clamped into exp's range so the reciprocal sees a finite d >= 1, and
 * x < -87.3 gives 0 (the true value is below FLT_MIN there) */
static inline __m256 nc_sigmoid256(__m256 x) {
    __m256 nx = _mm256_sub_ps(_mm256_setzero_ps(), x);
    nx = _mm256_min_ps(_mm256_set1_ps(88.3762626647949f), _mm256_max_ps(_mm256_set1_ps(-87.3f), nx));   /* keeps NaN */
    __m256 e = nc_exp256_in(nx);
    __m256 s = nc_recip256(_mm256_add_ps(_mm256_set1_ps(1.0f), e));
    return _mm256_andnot_ps(_mm256_cmp_ps(x, _mm256_set1_ps(-87.3f), _CMP_LT_OQ), s);   /* 0 far left */
}

/* d silu / dx = s (1 + x (1 - s)) with 1 - s = e s (e = exp(-x)): no cancellation for large x */
static inline __m256 nc_silu_d256(__m256 x) {
    __m256 nx = _mm256_sub_ps(_mm256_setzero_ps(), x);
    nx = _mm256_min_ps(_mm256_set1_ps(88.3762626647949f), _mm256_max_ps(_mm256_set1_ps(-87.3f), nx));
    __m256 e = nc_exp256_in(nx);
    __m256 s = nc_recip256(_mm256_add_ps(_mm256_set1_ps(1.0f), e));
    __m256 oms = _mm256_mul_ps(e, s);
    return _mm256_mul_ps(s, _mm256_fmadd_ps(x, oms, _mm256_set1_ps(1.0f)));
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

/* sum of exp(x - m); stores the terms into y when y != NULL */
static inline float nc_rowexpsum_avx2(float *y, const float *x, int64_t n, float m) {
    __m256 vm = _mm256_set1_ps(m), s0 = _mm256_setzero_ps(), s1 = s0;
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
    return nc_hsum256(_mm256_add_ps(s0, s1));
}

#else
#define NC_SIMD_AVX2 0
#endif

#endif
