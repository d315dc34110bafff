/* kernels/cpu/simd_avx512.h — AVX-512F exp shared by the *_avx512.c kernels (act_avx512.c's
 * activations, softmax and cross-entropy rows; attention_avx512.c's softmax). Include only from
 * translation units compiled with -mavx512f. Bound (spec/ops/simd_spec.lua): <= 2 ulp over the whole
 * range incl. denormal results. */
#ifndef NC_SIMD_AVX512_H
#define NC_SIMD_AVX512_H
#include "exp_poly.h"
#include <immintrin.h>

#define X_LO NC_EXP_ZERO   /* ln(2^-150): exp rounds to 0 below */

/* exp(r) polynomial on x (|x log2 e| < 2^22); *n_out = round(x log2 e) as float */
static inline __m512 poly512(__m512 x, __m512 *n_out) {
    const __m512 sh = _mm512_set1_ps(12582912.0f);   /* 1.5 * 2^23 */
    __m512 n = _mm512_sub_ps(_mm512_fmadd_ps(x, _mm512_set1_ps(NC_EXP_LOG2E), sh), sh);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(NC_EXP_LN2_HI), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(NC_EXP_LN2_LO), r);
    __m512 r2 = _mm512_mul_ps(r, r), r4 = _mm512_mul_ps(r2, r2);
    __m512 q0 = _mm512_fmadd_ps(_mm512_set1_ps(NC_EXP_C1), r, _mm512_set1_ps(NC_EXP_C0));
    __m512 q1 = _mm512_fmadd_ps(_mm512_set1_ps(NC_EXP_C3), r, _mm512_set1_ps(NC_EXP_C2));
    __m512 q2 = _mm512_fmadd_ps(_mm512_set1_ps(NC_EXP_C5), r, _mm512_set1_ps(NC_EXP_C4));
    __m512 p = _mm512_fmadd_ps(q2, r4, _mm512_fmadd_ps(q1, r2, q0));
    *n_out = n;
    return _mm512_fmadd_ps(p, r2, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
}

/* exp of every input: x clamped to [-104, 89] (n in [-150, 128], vscalefps handles both ends);
 * 0 below ln(2^-150) without computing a denormal (no microcode assist); NaN -> NaN */
static inline __m512 exp512(__m512 x) {
    __mmask16 keep = _mm512_cmp_ps_mask(x, _mm512_set1_ps(X_LO), _CMP_NLT_UQ);   /* NaN: kept */
    __m512 xc = _mm512_min_ps(_mm512_set1_ps(89.0f), _mm512_max_ps(_mm512_set1_ps(-104.0f), x));   /* keeps NaN */
    __m512 n, p = poly512(xc, &n);
    return _mm512_maskz_scalef_ps(keep, p, n);
}

/* exp for x <= 0 (softmax and cross-entropy rows: x - max, x - lse; also -inf and NaN): exp512
 * without the upper clamp, same results */
static inline __m512 exp512_le(__m512 x) {
    __mmask16 keep = _mm512_cmp_ps_mask(x, _mm512_set1_ps(X_LO), _CMP_NLT_UQ);   /* NaN: kept */
    __m512 xc = _mm512_max_ps(_mm512_set1_ps(-104.0f), x);                       /* keeps NaN */
    __m512 n, p = poly512(xc, &n);
    return _mm512_maskz_scalef_ps(keep, p, n);
}

#endif
