/* kernels/cpu/engine_attn.h — the arithmetic of the decode engine's attention (one query head over
 * the KV cache), defined once so that the scalar reference (engine.c, NC_KERNEL=scalar) and the AVX2
 * kernel (engine_avx2.c) give the same bits. Private to kernels/cpu.
 *
 * Definition ("lane-8 order"), for a query q (hd floats) and cached rows k_j, v_j, j < S:
 *  - dot(q, k) = hsum8(a), a_l = the fmaf chain over e = l, l + 8, l + 16, ... (e < hd; a last
 *    partial group of 8 runs fmaf(0, 0, a_l) in the lanes past hd, as a masked vector load does);
 *    hsum8(a) = ((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7)) (the AVX2 lane reduction);
 *  - s_j = dot(q, k_j) * scale, m = max_j s_j;
 *  - e_j = nc_attn_exp(s_j - m): exp by the shifter / polynomial of simd_avx2.h's nc_exp256_in (its
 *    FMAs as fmaf), argument clamped at ln(FLT_MIN) (the weight of such a position is < 1.2e-38 of
 *    the largest: rounding-level, and never a denormal);
 *  - l = hsum8 of the lane sums a_l = sum over j = l, l + 8, ... of e_j (plain adds, in j order);
 *  - o[e] = the fmaf chain over j of (e_j / l) * v_j[e], in j order, from 0.
 * Every step is an IEEE operation on the same operands in the same order in both builds (fmaf is
 * the FMA instruction's single rounding), so the results agree bit for bit. Compared with the
 * training model's attention this is a different summation order and a ~2-ulp exp: float rounding.
 */
#ifndef NC_ENGINE_ATTN_H
#define NC_ENGINE_ATTN_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#define NC_ATTN_SHIFT 12583039.0f     /* 1.5 * 2^23 + 127 */
#define NC_ATTN_LO -87.33654475f      /* ln(FLT_MIN) */
#define NC_ATTN_LOG2E 1.44269504088896341f
#define NC_ATTN_LN2_HI 0.693359375f
#define NC_ATTN_LN2_LO -2.12194440e-4f
#define NC_ATTN_C0 5.0000001201e-1f
#define NC_ATTN_C1 1.6666665459e-1f
#define NC_ATTN_C2 4.1665795894e-2f
#define NC_ATTN_C3 8.3334519073e-3f
#define NC_ATTN_C4 1.3981999507e-3f
#define NC_ATTN_C5 1.9875691500e-4f

static inline float nc_attn_hsum8(const float a[8]) {
    float t0 = a[0] + a[4], t1 = a[1] + a[5], t2 = a[2] + a[6], t3 = a[3] + a[7];
    return (t0 + t2) + (t1 + t3);
}

/* exp(x) for x <= 0 in the lane-8 arithmetic (x < ln(FLT_MIN) is taken as ln(FLT_MIN)) */
static inline float nc_attn_exp(float x) {
    x = x < NC_ATTN_LO ? NC_ATTN_LO : x;
    float t = fmaf(x, NC_ATTN_LOG2E, NC_ATTN_SHIFT);
    float n = t - NC_ATTN_SHIFT;
    float r = fmaf(-n, NC_ATTN_LN2_HI, x);
    r = fmaf(-n, NC_ATTN_LN2_LO, r);
    float r2 = r * r, r4 = r2 * r2;
    float q0 = fmaf(NC_ATTN_C1, r, NC_ATTN_C0);
    float q1 = fmaf(NC_ATTN_C3, r, NC_ATTN_C2);
    float q2 = fmaf(NC_ATTN_C5, r, NC_ATTN_C4);
    float p = fmaf(q2, r4, fmaf(q1, r2, q0));
    float y = fmaf(p, r2, r + 1.0f);
    uint32_t tb;
    memcpy(&tb, &t, 4);
    tb <<= 23;
    float s;
    memcpy(&s, &tb, 4);
    return y * s;
}

#endif
