/* kernels/cpu/ternary_vnni.c — AVX-512 VNNI kernel for packed ternary linear layers (layout
 * "i2b128", core/nanochat.h; scalar reference and dispatch in ternary.c, AVX2 kernel in
 * ternary_avx2.c).
 *
 * Promise: bit-identical to the scalar reference (exact int32 sums, the same float epilogue).
 * Used when the kernel selection is "avx512" (the default on such CPUs) and the CPU has AVX-512
 * BW + VL + VNNI and GFNI (nc_ternary_kernel_name() says "avx512vnni").
 *
 * One 128-weight block is 32 bytes; it is broadcast to both halves of a zmm (a load-port-only
 * vbroadcasti64x4). One vgf2p8affineqb per half-pair moves the 2-bit codes of group g into the low
 * bits of every byte with a per-qword bit matrix: groups 0 | 1 in the low | high 256 bits, then
 * groups 2 | 3 — exactly the order of the block's 128 activations, so the activations are two
 * plain 64-byte loads. vpdpbusd multiplies the u8 codes c in {0, 1, 2} with the s8 activations and
 * adds 4 products into each int32 lane (|lane step| <= 4 * 2 * 128, no saturation: vpdpbusd, not
 * vpdpbusds); the sum over k of c q minus the row's sum of q is sum t q, as in the reference.
 * Every lane sum is a partial sum of the reference's int32 sum (|.| <= 256 K < 2^31 for K < 2^23,
 * the format's documented bound), so the totals are equal and the epilogue
 * y = (float)isum * (1.0f / s) * gamma uses the same float operations.
 * Decode (one activation row): 4 weight rows per pass share each activation load (two
 * accumulators per row so the vpdpbusd chains overlap), and software-prefetch the next 4 rows when
 * rows are long (NC_PF_MIN_ROW, nc_gemv_prefetch: the hardware prefetcher alone left one Zen 4
 * thread at ~7 GB/s from DRAM on 768-byte rows). Several activation rows (prefill, batched
 * decode): tiles of 4, 3 or 2 activation rows x 2 weight rows, each block unpacked once for all of
 * them and the matrix read once per tile rather than once per row; a last single row is a GEMV.
 */
#include "nanochat.h"
#include <immintrin.h>
#include <stdint.h>

#define TB 128

extern int nc_k_gemv_pf;   /* ternary.c: nc_gemv_prefetch */
/* Software prefetch of the next 4 weight rows only for rows longer than this many bytes. Zen 4, one
 * thread, ring of cold matrices (interleaved C timing): rows of 192 / 256 bytes stream faster
 * without it (20.6 vs 16.2, 19.8 vs 16.7 GB/s: the four short rows are one sequential region the
 * hardware prefetcher follows), rows of 320 / 384 / 512 / 768 bytes faster with it (16.1 vs 12.5,
 * 14.1 vs 11.3, 19.5 vs 7.6, 17.2 vs 6.7 GB/s: four interleaved row streams too short to train it). */
#define NC_PF_MIN_ROW 256

/* bit matrix of vgf2p8affineqb taking bits 2g, 2g+1 of a byte to bits 0, 1: output bit i is the
 * parity of (matrix byte 7 - i) & x */
#define GF_SEL(g) (((uint64_t)(1u << (2 * (g))) << 56) | ((uint64_t)(1u << (2 * (g) + 1)) << 48))

typedef struct {
    __m512i a01, a23;
} unpackers;

static inline unpackers make_unpackers(void) {
    unpackers u;
    u.a01 = _mm512_set_epi64(GF_SEL(1), GF_SEL(1), GF_SEL(1), GF_SEL(1), GF_SEL(0), GF_SEL(0), GF_SEL(0), GF_SEL(0));
    u.a23 = _mm512_set_epi64(GF_SEL(3), GF_SEL(3), GF_SEL(3), GF_SEL(3), GF_SEL(2), GF_SEL(2), GF_SEL(2), GF_SEL(2));
    return u;
}

/* acc + dot(codes u8, activations s8) per int32 lane. Inline asm rather than _mm512_dpbusd_epi32:
 * GCC 12 copies every loop-carried accumulator around the intrinsic (a vmovdqa before and after
 * each vpdpbusd), which doubles the uops of the decode loop. */
static inline __m512i dpbusd(__m512i acc, __m512i codes, __m512i act) {
    __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(codes), "vm"(act));
    return acc;
}

static inline __m512i bcast_block(const uint8_t *w) {
    return _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)w));
}
/* codes of activations 0..63 / 64..127 of the block */
static inline __m512i codes01(__m512i v, unpackers u) { return _mm512_gf2p8affine_epi64_epi8(v, u.a01, 0); }
static inline __m512i codes23(__m512i v, unpackers u) { return _mm512_gf2p8affine_epi64_epi8(v, u.a23, 0); }

/* the four int32 totals of s0..s3 (16 lanes each) */
static inline __m128i hsum4x16(__m512i s0, __m512i s1, __m512i s2, __m512i s3) {
    /* 512 -> 256: 128-bit chunks [s0 lo+hi, s1 lo+hi] and [s2 .., s3 ..] */
    __m512i a = _mm512_add_epi32(_mm512_shuffle_i64x2(s0, s1, _MM_SHUFFLE(1, 0, 1, 0)),
                                 _mm512_shuffle_i64x2(s0, s1, _MM_SHUFFLE(3, 2, 3, 2)));
    __m512i b = _mm512_add_epi32(_mm512_shuffle_i64x2(s2, s3, _MM_SHUFFLE(1, 0, 1, 0)),
                                 _mm512_shuffle_i64x2(s2, s3, _MM_SHUFFLE(3, 2, 3, 2)));
    /* 256 -> 128: chunk r holds 4 partial sums of row r */
    __m512i c = _mm512_add_epi32(_mm512_shuffle_i64x2(a, b, _MM_SHUFFLE(2, 0, 2, 0)),
                                 _mm512_shuffle_i64x2(a, b, _MM_SHUFFLE(3, 1, 3, 1)));
    c = _mm512_add_epi32(c, _mm512_shuffle_epi32(c, _MM_PERM_BADC));
    c = _mm512_add_epi32(c, _mm512_shuffle_epi32(c, _MM_PERM_CDAB));
    const __m512i idx = _mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    return _mm512_castsi512_si128(_mm512_permutexvar_epi32(idx, c));
}

/* one activation row x 4 weight rows (stride rs bytes) -> 4 code sums */
static inline __m128i dot_a1_w4(const uint8_t *w, int64_t rs, const int8_t *x, int64_t nb, unpackers u) {
    __m512i c0 = _mm512_setzero_si512(), c1 = c0, c2 = c0, c3 = c0, d0 = c0, d1 = c0, d2 = c0, d3 = c0;
    const int pf = nc_k_gemv_pf && rs > NC_PF_MIN_ROW;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *wb = w + b * 32;
        if (pf) {   /* the next 4 rows (contiguous after these), 128 bytes per block */
            _mm_prefetch((const char *)(w + 4 * rs + b * 128), _MM_HINT_T0);
            _mm_prefetch((const char *)(w + 4 * rs + b * 128 + 64), _MM_HINT_T0);
        }
        __m512i x01 = _mm512_loadu_si512((const void *)(x + b * TB));
        __m512i x23 = _mm512_loadu_si512((const void *)(x + b * TB + 64));
        __m512i v0 = bcast_block(wb), v1 = bcast_block(wb + rs), v2 = bcast_block(wb + 2 * rs),
                v3 = bcast_block(wb + 3 * rs);
        c0 = dpbusd(c0, codes01(v0, u), x01);
        d0 = dpbusd(d0, codes23(v0, u), x23);
        c1 = dpbusd(c1, codes01(v1, u), x01);
        d1 = dpbusd(d1, codes23(v1, u), x23);
        c2 = dpbusd(c2, codes01(v2, u), x01);
        d2 = dpbusd(d2, codes23(v2, u), x23);
        c3 = dpbusd(c3, codes01(v3, u), x01);
        d3 = dpbusd(d3, codes23(v3, u), x23);
    }
    return hsum4x16(_mm512_add_epi32(c0, d0), _mm512_add_epi32(c1, d1), _mm512_add_epi32(c2, d2),
                    _mm512_add_epi32(c3, d3));
}

static inline int32_t dot_a1_w1(const uint8_t *w, const int8_t *x, int64_t nb, unpackers u) {
    __m512i c = _mm512_setzero_si512(), d = c;
    for (int64_t b = 0; b < nb; b++) {
        __m512i v = bcast_block(w + b * 32);
        c = dpbusd(c, codes01(v, u), _mm512_loadu_si512((const void *)(x + b * TB)));
        d = dpbusd(d, codes23(v, u), _mm512_loadu_si512((const void *)(x + b * TB + 64)));
    }
    return _mm512_reduce_add_epi32(_mm512_add_epi32(c, d));
}

/* the epilogue, with exactly the scalar reference's float operations */
static inline float finish(int32_t acc, int32_t xsum, float inv, float gamma) {
    int32_t isum = acc - xsum;
    return (float)isum * inv * gamma;
}

/* R activation rows (stride kp) x W weight rows (stride rs), R in 2..4, W in 1..2 (constants after
 * inlining: the accumulator arrays live in registers): each block is unpacked once and used for
 * R rows. out[4 j + i] = weight row j with activation row i. */
static inline __attribute__((always_inline)) void dot_tile(const int R, const int W, int32_t out[8], const uint8_t *w,
                                                           int64_t rs, const int8_t *x, int64_t kp, int64_t nb,
                                                           unpackers u) {
    __m512i c[2][4], d[2][4];
#pragma GCC unroll 2
    for (int j = 0; j < W; j++)
#pragma GCC unroll 4
        for (int i = 0; i < R; i++) c[j][i] = d[j][i] = _mm512_setzero_si512();
    for (int64_t b = 0; b < nb; b++) {
        __m512i p[2], h[2];
#pragma GCC unroll 2
        for (int j = 0; j < W; j++) {
            __m512i v = bcast_block(w + j * rs + b * 32);
            p[j] = codes01(v, u);
            h[j] = codes23(v, u);
        }
        const int8_t *xb = x + b * TB;
#pragma GCC unroll 4
        for (int i = 0; i < R; i++) {
            __m512i x01 = _mm512_loadu_si512((const void *)(xb + i * kp));
            __m512i x23 = _mm512_loadu_si512((const void *)(xb + i * kp + 64));
#pragma GCC unroll 2
            for (int j = 0; j < W; j++) {
                c[j][i] = dpbusd(c[j][i], p[j], x01);
                d[j][i] = dpbusd(d[j][i], h[j], x23);
            }
        }
    }
    const __m512i z = _mm512_setzero_si512();
#pragma GCC unroll 2
    for (int j = 0; j < W; j++) {
        __m512i t[4];
#pragma GCC unroll 4
        for (int i = 0; i < 4; i++) t[i] = i < R ? _mm512_add_epi32(c[j][i], d[j][i]) : z;
        _mm_storeu_si128((__m128i *)(out + 4 * j), hsum4x16(t[0], t[1], t[2], t[3]));
    }
}

/* activation rows [m, m + R) x weight rows [n0, n1) */
static inline __attribute__((always_inline)) void rows_tile(const int R, float *y, int64_t m, int64_t N,
                                                            const int8_t *q, const float *act_inv,
                                                            const int32_t *act_sum, const uint8_t *w,
                                                            const float *gamma, int64_t kp, int64_t n0, int64_t n1,
                                                            unpackers u) {
    int64_t nb = kp / TB, rs = kp / 4;
    const int8_t *x = q + m * kp;
    int32_t r[8];
    int64_t n = n0;
    for (; n + 2 <= n1; n += 2) {
        dot_tile(R, 2, r, w + n * rs, rs, x, kp, nb, u);
        for (int i = 0; i < R; i++) {
            y[(m + i) * N + n] = finish(r[i], act_sum[m + i], act_inv[m + i], gamma[n]);
            y[(m + i) * N + n + 1] = finish(r[4 + i], act_sum[m + i], act_inv[m + i], gamma[n + 1]);
        }
    }
    for (; n < n1; n++) {
        dot_tile(R, 1, r, w + n * rs, rs, x, kp, nb, u);
        for (int i = 0; i < R; i++) y[(m + i) * N + n] = finish(r[i], act_sum[m + i], act_inv[m + i], gamma[n]);
    }
}

/* rows [n0, n1) of y (M, N) */
void nc_k_ternary_gemm_vnni(float *y, int64_t M, int64_t N, const int8_t *q, const float *act_inv,
                            const int32_t *act_sum, const uint8_t *w, const float *gamma, int64_t kp, int64_t n0,
                            int64_t n1) {
    const unpackers u = make_unpackers();
    int64_t nb = kp / TB, rs = kp / 4;
    int64_t m = 0;
    /* tiles of 4, 3 or 2 activation rows share each unpacked block; a last single row is a GEMV */
    for (; m + 4 <= M; m += 4) rows_tile(4, y, m, N, q, act_inv, act_sum, w, gamma, kp, n0, n1, u);
    if (M - m == 3) rows_tile(3, y, m, N, q, act_inv, act_sum, w, gamma, kp, n0, n1, u), m += 3;
    if (M - m == 2) rows_tile(2, y, m, N, q, act_inv, act_sum, w, gamma, kp, n0, n1, u), m += 2;
    for (; m < M; m++) {
        const int8_t *x = q + m * kp;
        int64_t n = n0;
        const __m128i xs4 = _mm_set1_epi32(act_sum[m]);
        const __m128 inv4 = _mm_set1_ps(act_inv[m]);
        for (; n + 4 <= n1; n += 4) {
            /* finish() on 4 outputs at once: the same conversions and products, lane by lane */
            __m128i isum = _mm_sub_epi32(dot_a1_w4(w + n * rs, rs, x, nb, u), xs4);
            __m128 v = _mm_mul_ps(_mm_mul_ps(_mm_cvtepi32_ps(isum), inv4), _mm_loadu_ps(gamma + n));
            _mm_storeu_ps(y + m * N + n, v);
        }
        for (; n < n1; n++) y[m * N + n] = finish(dot_a1_w1(w + n * rs, x, nb, u), act_sum[m], act_inv[m], gamma[n]);
    }
}

/* ---- int8 weights (the LM head option): y = (sum_k w q) * act_inv[m] * wscale[n] -----------------
 * Used for two or more activation rows (ternary.c: one row streams faster through the AVX2 kernel).
 * vpdpbusd wants one unsigned operand: the weight bytes enter flipped (w ^ 0x80 = w + 128 as u8)
 * against the s8 activations, and each total loses 128 * sum_k q (once per activation row). Lane
 * sums are partial sums of exact int32 arithmetic (|w + 128| <= 255, |q| <= 127: < 2^31 for any
 * realistic K), so the result equals the scalar and AVX2 kernels' bit for bit. kp is a multiple of
 * 32; a last half block of 32 loads masked (zero activations add nothing). Four weight rows per
 * pass share each activation load, two accumulators per row keep the vpdpbusd chains overlapped. */
static inline __m512i i8_load(const int8_t *p, __mmask64 m) { return _mm512_maskz_loadu_epi8(m, p); }

static inline void int8_dot_w4(int32_t out[4], const int8_t *w, int64_t kp, const int8_t *x) {
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    __m512i c0 = _mm512_setzero_si512(), c1 = c0, c2 = c0, c3 = c0, d0 = c0, d1 = c0, d2 = c0, d3 = c0;
    int64_t k = 0;
    const char *pf = (const char *)(w + 4 * kp);   /* the next 4 rows, 512 bytes per step */
    const int pfon = nc_k_gemv_pf && kp > NC_PF_MIN_ROW;
    for (; k + 128 <= kp; k += 128) {
        if (pfon)
            for (int l = 0; l < 8; l++) _mm_prefetch(pf + 4 * k + 64 * l, _MM_HINT_T0);
        __m512i xa = _mm512_loadu_si512((const void *)(x + k)), xb = _mm512_loadu_si512((const void *)(x + k + 64));
        c0 = dpbusd(c0, _mm512_xor_si512(_mm512_loadu_si512((const void *)(w + k)), flip), xa);
        d0 = dpbusd(d0, _mm512_xor_si512(_mm512_loadu_si512((const void *)(w + k + 64)), flip), xb);
        c1 = dpbusd(c1, _mm512_xor_si512(_mm512_loadu_si512((const void *)(w + kp + k)), flip), xa);
        d1 = dpbusd(d1, _mm512_xor_si512(_mm512_loadu_si512((const void *)(w + kp + k + 64)), flip), xb);
        c2 = dpbusd(c2, _mm512_xor_si512(_mm512_loadu_si512((const void *)(w + 2 * kp + k)), flip), xa);
        d2 = dpbusd(d2, _mm512_xor_si512(_mm512_loadu_si512((const void *)(w + 2 * kp + k + 64)), flip), xb);
        c3 = dpbusd(c3, _mm512_xor_si512(_mm512_loadu_si512((const void *)(w + 3 * kp + k)), flip), xa);
        d3 = dpbusd(d3, _mm512_xor_si512(_mm512_loadu_si512((const void *)(w + 3 * kp + k + 64)), flip), xb);
    }
    for (; k < kp; k += 64) {
        __mmask64 m = kp - k >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << (kp - k)) - 1);
        __m512i xa = i8_load(x + k, m);
        c0 = dpbusd(c0, _mm512_xor_si512(i8_load(w + k, m), flip), xa);
        c1 = dpbusd(c1, _mm512_xor_si512(i8_load(w + kp + k, m), flip), xa);
        c2 = dpbusd(c2, _mm512_xor_si512(i8_load(w + 2 * kp + k, m), flip), xa);
        c3 = dpbusd(c3, _mm512_xor_si512(i8_load(w + 3 * kp + k, m), flip), xa);
    }
    _mm_storeu_si128((__m128i *)out, hsum4x16(_mm512_add_epi32(c0, d0), _mm512_add_epi32(c1, d1),
                                              _mm512_add_epi32(c2, d2), _mm512_add_epi32(c3, d3)));
}

static inline int32_t int8_dot_w1(const int8_t *w, int64_t kp, const int8_t *x) {
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    __m512i c = _mm512_setzero_si512();
    for (int64_t k = 0; k < kp; k += 64) {
        __mmask64 m = kp - k >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << (kp - k)) - 1);
        c = dpbusd(c, _mm512_xor_si512(i8_load(w + k, m), flip), i8_load(x + k, m));
    }
    return _mm512_reduce_add_epi32(c);
}

/* rows [n0, n1) of y (M, N); the contract of nc_k_int8_gemm_avx2. Activation rows in chunks of 16
 * with their 128 * sum_k q on the stack (each computed once); weight rows in groups of 4. */
void nc_k_int8_gemm_vnni(float *y, int64_t M, int64_t N, const int8_t *q, const float *act_inv, const int8_t *w,
                         const float *wscale, int64_t kp, int64_t n0, int64_t n1) {
    for (int64_t m0 = 0; m0 < M; m0 += 16) {
        const int64_t m1 = m0 + 16 < M ? m0 + 16 : M;
        int32_t bias[16];
        for (int64_t m = m0; m < m1; m++) {
            int32_t s = 0;
            for (int64_t k = 0; k < kp; k++) s += q[m * kp + k];
            bias[m - m0] = 128 * s;
        }
        int64_t n = n0;
        for (; n + 4 <= n1; n += 4)
            for (int64_t m = m0; m < m1; m++) {
                int32_t r[4];
                int8_dot_w4(r, w + n * kp, kp, q + m * kp);
                for (int i = 0; i < 4; i++) y[m * N + n + i] = (float)(r[i] - bias[m - m0]) * act_inv[m] * wscale[n + i];
            }
        for (; n < n1; n++)
            for (int64_t m = m0; m < m1; m++)
                y[m * N + n] = (float)(int8_dot_w1(w + n * kp, kp, q + m * kp) - bias[m - m0]) * act_inv[m] * wscale[n];
    }
}
