/* kernels/cpu/engine_attn.h — the arithmetic of the decode engine's attention (one query head over
 * the KV cache), defined once so that the scalar reference (engine.c, NC_KERNEL=scalar) and the AVX2
 * kernel (engine_avx2.c) give the same bits. Private to kernels/cpu.
 *
 * Definition ("lane-8 order"), for a query q (hd floats) and cached rows k_j, v_j, j < S:
 *  - dot(q, k) = hsum8(a), a_l = the fmaf chain over e = l, l + 8, l + 16, ... (e < hd; a last
 *    partial group of 8 runs fmaf(0, 0, a_l) in the lanes past hd, as a masked vector load does);
 *    hsum8(a) = ((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7)) (the AVX2 lane reduction);
 *  - s_j = dot(q, k_j) * scale, m = max_j s_j;
 *  - e_j = nc_attn_exp(s_j - m): exp_poly.h's nc_exp1_in, the scalar twin of simd_avx2.h's
 *    nc_exp256_in, argument clamped at ln(FLT_MIN) (the weight of such a position is < 1.2e-38 of
 *    the largest: rounding-level, and never a denormal);
 *  - l = hsum8 of the lane sums a_l = sum over j = l, l + 8, ... of e_j (plain adds, in j order);
 *  - o[e] = the fmaf chain over j of (e_j / l) * v_j[e], in j order, from 0.
 * Every step is an IEEE operation on the same operands in the same order in both builds (fmaf is
 * the FMA instruction's single rounding), so the results agree bit for bit. Compared with the
 * training model's attention this is a different summation order and a ~2-ulp exp: float rounding.
 */
#ifndef NC_ENGINE_ATTN_H
#define NC_ENGINE_ATTN_H

#include "exp_poly.h"

static inline float nc_attn_hsum8(const float a[8]) {
    float t0 = a[0] + a[4], t1 = a[1] + a[5], t2 = a[2] + a[6], t3 = a[3] + a[7];
    return (t0 + t2) + (t1 + t3);
}

/* exp(x) for x <= 0 in the lane-8 arithmetic: exp_poly.h's nc_exp1_in (nc_exp256_in lane for lane),
 * x below ln(FLT_MIN) taken as ln(FLT_MIN) */
static inline float nc_attn_exp(float x) { return nc_exp1_in(x < NC_EXP_LO_IN ? NC_EXP_LO_IN : x); }

#endif
