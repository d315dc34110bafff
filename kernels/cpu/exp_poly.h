/* kernels/cpu/exp_poly.h — the constants of the float exp used by the vector kernels (simd_avx2.h's
 * nc_exp256_*, simd_avx512.h's poly512) and its scalar twin. Plain C: safe in baseline builds.
 *
 * exp(x) = 2^n exp(r): n = round(x log2 e) through a 1.5 * 2^23 shifter, r = x - n ln2 with ln2
 * split in a part exact in float and a correction, exp(r) = 1 + r + r^2 p(r), p of degree 5 in
 * Estrin form. nc_exp1_in is nc_exp256_in lane for lane (the same IEEE operations, each FMA as
 * fmaf), for x in [NC_EXP_LO_IN, NC_EXP_HI_IN]; engine_attn.h builds its scalar attention on it so
 * that the scalar and AVX2 engines give the same bits.
 */
#ifndef NC_EXP_POLY_H
#define NC_EXP_POLY_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#define NC_EXP_SHIFT 12583039.0f          /* 1.5 * 2^23 + 127: n + 127 lands in t's low mantissa */
#define NC_EXP_LO_IN -87.33654475f        /* ln(FLT_MIN): below, 2^n is not a normal float */
#define NC_EXP_HI_IN 88.3762626647949f    /* 127.5 ln2: above, n = 128 */
#define NC_EXP_ZERO -103.972077f          /* ln(2^-150): exp rounds to 0 below */
#define NC_EXP_LOG2E 1.44269504088896341f
#define NC_EXP_LN2_HI 0.693359375f
#define NC_EXP_LN2_LO -2.12194440e-4f
#define NC_EXP_C0 5.0000001201e-1f        /* p(r) = (C0 + C1 r) + (C2 + C3 r) r^2 + (C4 + C5 r) r^4 */
#define NC_EXP_C1 1.6666665459e-1f
#define NC_EXP_C2 4.1665795894e-2f
#define NC_EXP_C3 8.3334519073e-3f
#define NC_EXP_C4 1.3981999507e-3f
#define NC_EXP_C5 1.9875691500e-4f

/* exp(x) for x in [NC_EXP_LO_IN, NC_EXP_HI_IN]: nc_exp256_in's arithmetic on one float */
static inline float nc_exp1_in(float x) {
    float t = fmaf(x, NC_EXP_LOG2E, NC_EXP_SHIFT);
    float n = t - NC_EXP_SHIFT;
    float r = fmaf(-n, NC_EXP_LN2_HI, x);
    r = fmaf(-n, NC_EXP_LN2_LO, r);
    float r2 = r * r, r4 = r2 * r2;
    float p = fmaf(fmaf(NC_EXP_C5, r, NC_EXP_C4), r4, fmaf(fmaf(NC_EXP_C3, r, NC_EXP_C2), r2, fmaf(NC_EXP_C1, r, NC_EXP_C0)));
    float y = fmaf(p, r2, r + 1.0f);
    uint32_t tb;
    memcpy(&tb, &t, 4);
    tb <<= 23;   /* the bits of 2^n */
    float s;
    memcpy(&s, &tb, 4);
    return y * s;
}

#endif
