/* kernels/cpu/ternary_avx2.c — AVX2 kernels for packed ternary linear layers (layout "i2b128",
 * core/nanochat.h; scalar reference and dispatch in ternary.c).
 *
 * Promise: bit-identical to the scalar reference. One 32-byte load gives 128 codes c in {0,1,2};
 * (v >> 2g) & 3 (16-bit shifts, the mask drops the neighbour byte's bits) gives the 32 codes of
 * group g, multiplied with 32 int8 activations by vpmaddubsw (u8 x s8 -> pairs summed in int16).
 * Bounds: |pair| <= 2*2*128 = 512, a block adds 4 pairs per lane (<= 2048), so int16 lanes hold
 * 8 blocks (<= 16384) exactly; then vpmaddwd with ones widens them into int32 lanes. No
 * saturation ever happens, so the integer sums equal the scalar ones.
 * Decode (one activation row): 4 weight rows per pass share each activation load.
 * Prefill (M >= 4): each weight block is unpacked once and used for 4 activation rows.
 */
#include "nanochat.h"
#include <immintrin.h>
#include <stdint.h>

#define TB 128

extern int nc_k_gemv_pf;   /* ternary.c: nc_gemv_prefetch */
#define NC_PF_MIN_ROW 256   /* prefetch only rows longer than this (bytes): see ternary_vnni.c */
#define WIDEN 8     /* blocks accumulated in int16 before widening to int32 */

static inline __m128i hsum4(__m256i a0, __m256i a1, __m256i a2, __m256i a3) {
    __m256i s = _mm256_hadd_epi32(_mm256_hadd_epi32(a0, a1), _mm256_hadd_epi32(a2, a3));
    return _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
}

static inline int32_t hsum1(__m256i a) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

/* dot of one packed block (32 bytes at w) with 128 activations at x, as int16 lanes */
static inline __m256i block_dot(const uint8_t *w, const int8_t *x, __m256i mask) {
    __m256i v = _mm256_loadu_si256((const __m256i *)w);
    __m256i p0 = _mm256_maddubs_epi16(_mm256_and_si256(v, mask), _mm256_loadu_si256((const __m256i *)x));
    __m256i p1 = _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v, 2), mask),
                                      _mm256_loadu_si256((const __m256i *)(x + 32)));
    __m256i p2 = _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v, 4), mask),
                                      _mm256_loadu_si256((const __m256i *)(x + 64)));
    __m256i p3 = _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v, 6), mask),
                                      _mm256_loadu_si256((const __m256i *)(x + 96)));
    return _mm256_add_epi16(_mm256_add_epi16(p0, p1), _mm256_add_epi16(p2, p3));
}

/* one activation row x 4 weight rows (stride rs bytes) -> 4 code sums */
static inline __m128i dot_a1_w4(const uint8_t *w, int64_t rs, const int8_t *x, int64_t nb) {
    const __m256i mask = _mm256_set1_epi8(3), ones = _mm256_set1_epi16(1);
    __m256i c0 = _mm256_setzero_si256(), c1 = c0, c2 = c0, c3 = c0;
    const int pf = nc_k_gemv_pf && rs > NC_PF_MIN_ROW;
    for (int64_t b0 = 0; b0 < nb; b0 += WIDEN) {
        int64_t b1 = b0 + WIDEN < nb ? b0 + WIDEN : nb;
        __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
        for (int64_t b = b0; b < b1; b++) {
            const uint8_t *wb = w + b * 32;
            const int8_t *xb = x + b * TB;
            if (pf) {   /* the next 4 rows (contiguous after these), 128 bytes per block */
                _mm_prefetch((const char *)(w + 4 * rs + b * 128), _MM_HINT_T0);
                _mm_prefetch((const char *)(w + 4 * rs + b * 128 + 64), _MM_HINT_T0);
            }
            s0 = _mm256_add_epi16(s0, block_dot(wb, xb, mask));
            s1 = _mm256_add_epi16(s1, block_dot(wb + rs, xb, mask));
            s2 = _mm256_add_epi16(s2, block_dot(wb + 2 * rs, xb, mask));
            s3 = _mm256_add_epi16(s3, block_dot(wb + 3 * rs, xb, mask));
        }
        c0 = _mm256_add_epi32(c0, _mm256_madd_epi16(s0, ones));
        c1 = _mm256_add_epi32(c1, _mm256_madd_epi16(s1, ones));
        c2 = _mm256_add_epi32(c2, _mm256_madd_epi16(s2, ones));
        c3 = _mm256_add_epi32(c3, _mm256_madd_epi16(s3, ones));
    }
    return hsum4(c0, c1, c2, c3);
}

static inline int32_t dot_a1_w1(const uint8_t *w, const int8_t *x, int64_t nb) {
    const __m256i mask = _mm256_set1_epi8(3), ones = _mm256_set1_epi16(1);
    __m256i c = _mm256_setzero_si256();
    for (int64_t b0 = 0; b0 < nb; b0 += WIDEN) {
        int64_t b1 = b0 + WIDEN < nb ? b0 + WIDEN : nb;
        __m256i s = _mm256_setzero_si256();
        for (int64_t b = b0; b < b1; b++) s = _mm256_add_epi16(s, block_dot(w + b * 32, x + b * TB, mask));
        c = _mm256_add_epi32(c, _mm256_madd_epi16(s, ones));
    }
    return hsum1(c);
}

/* 4 activation rows (stride kp) x one weight row: each block is unpacked once */
static inline __m128i dot_a4_w1(const uint8_t *w, const int8_t *x, int64_t kp, int64_t nb) {
    const __m256i mask = _mm256_set1_epi8(3), ones = _mm256_set1_epi16(1);
    __m256i c0 = _mm256_setzero_si256(), c1 = c0, c2 = c0, c3 = c0;
    for (int64_t b0 = 0; b0 < nb; b0 += WIDEN) {
        int64_t b1 = b0 + WIDEN < nb ? b0 + WIDEN : nb;
        __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
        for (int64_t b = b0; b < b1; b++) {
            __m256i v = _mm256_loadu_si256((const __m256i *)(w + b * 32));
            __m256i u0 = _mm256_and_si256(v, mask);
            __m256i u1 = _mm256_and_si256(_mm256_srli_epi16(v, 2), mask);
            __m256i u2 = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
            __m256i u3 = _mm256_and_si256(_mm256_srli_epi16(v, 6), mask);
            const int8_t *xb = x + b * TB;
#define NC_ROW(S, R)                                                                                              \
    do {                                                                                                          \
        const int8_t *xr = xb + (R) * kp;                                                                         \
        __m256i p0 = _mm256_maddubs_epi16(u0, _mm256_loadu_si256((const __m256i *)xr));                           \
        __m256i p1 = _mm256_maddubs_epi16(u1, _mm256_loadu_si256((const __m256i *)(xr + 32)));                    \
        __m256i p2 = _mm256_maddubs_epi16(u2, _mm256_loadu_si256((const __m256i *)(xr + 64)));                    \
        __m256i p3 = _mm256_maddubs_epi16(u3, _mm256_loadu_si256((const __m256i *)(xr + 96)));                    \
        S = _mm256_add_epi16(S, _mm256_add_epi16(_mm256_add_epi16(p0, p1), _mm256_add_epi16(p2, p3)));            \
    } while (0)
            NC_ROW(s0, 0);
            NC_ROW(s1, 1);
            NC_ROW(s2, 2);
            NC_ROW(s3, 3);
#undef NC_ROW
        }
        c0 = _mm256_add_epi32(c0, _mm256_madd_epi16(s0, ones));
        c1 = _mm256_add_epi32(c1, _mm256_madd_epi16(s1, ones));
        c2 = _mm256_add_epi32(c2, _mm256_madd_epi16(s2, ones));
        c3 = _mm256_add_epi32(c3, _mm256_madd_epi16(s3, ones));
    }
    return hsum4(c0, c1, c2, c3);
}

/* the epilogue, with exactly the scalar reference's float operations */
static inline float finish(int32_t acc, int32_t xsum, float inv, float gamma) {
    int32_t isum = acc - xsum;
    return (float)isum * inv * gamma;
}

void nc_k_ternary_gemm_avx2(float *y, int64_t M, int64_t N, const int8_t *q, const float *act_inv,
                            const int32_t *act_sum, const uint8_t *w, const float *gamma, int64_t kp,
                            int64_t n0, int64_t n1) {
    int64_t nb = kp / TB, rs = kp / 4;
    int64_t m = 0;
    int32_t r[4];
    for (; m + 4 <= M; m += 4) {
        const int8_t *x = q + m * kp;
        for (int64_t n = n0; n < n1; n++) {
            _mm_storeu_si128((__m128i *)r, dot_a4_w1(w + n * rs, x, kp, nb));
            for (int i = 0; i < 4; i++)
                y[(m + i) * N + n] = finish(r[i], act_sum[m + i], act_inv[m + i], gamma[n]);
        }
    }
    for (; m < M; m++) {
        const int8_t *x = q + m * kp;
        int64_t n = n0;
        const __m128i xs4 = _mm_set1_epi32(act_sum[m]);
        const __m128 inv4 = _mm_set1_ps(act_inv[m]);
        for (; n + 4 <= n1; n += 4) {
            /* finish() on 4 outputs at once: the same conversions and products, lane by lane */
            __m128i isum = _mm_sub_epi32(dot_a1_w4(w + n * rs, rs, x, nb), xs4);
            __m128 v = _mm_mul_ps(_mm_mul_ps(_mm_cvtepi32_ps(isum), inv4), _mm_loadu_ps(gamma + n));
            _mm_storeu_ps(y + m * N + n, v);
        }
        for (; n < n1; n++) y[m * N + n] = finish(dot_a1_w1(w + n * rs, x, nb), act_sum[m], act_inv[m], gamma[n]);
    }
}

/* One contiguous activation row -> int8 codes with nc_quant_act_absmax's exact operations:
 * s = 127 / max(max|x|, eps), v = nearbyint(x * s) (vroundps, round to nearest even, the same IEEE product), clamped to
 * [-128, 127]. Returns sum(q). Codes past k up to kp are zeroed. */
int32_t nc_k_ternary_quant_row_avx2(int8_t *q, float *s_out, const float *x, int64_t k, int64_t kp, float eps) {
    /* max |x|: exact in any order; max_ps(v, m) returns m when v is NaN, like the scalar loop */
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 m8 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= k; i += 8) m8 = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(x + i), absmask), m8);
    float mv[8];
    _mm256_storeu_ps(mv, m8);
    float mx = 0.0f;
    for (int u = 0; u < 8; u++) mx = mv[u] > mx ? mv[u] : mx;
    for (; i < k; i++) {
        float a = __builtin_fabsf(x[i]);
        mx = a > mx ? a : mx;
    }
    float s = 127.0f / (mx > eps ? mx : eps);
    *s_out = s;
    const __m256 vs = _mm256_set1_ps(s), lo = _mm256_set1_ps(-128.0f), hi = _mm256_set1_ps(127.0f);
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    __m256i acc = _mm256_setzero_si256();
    int64_t j = 0;
    for (; j + 32 <= k; j += 32) {
        __m256i v[4];
        for (int u = 0; u < 4; u++) {
            __m256 f = _mm256_mul_ps(_mm256_loadu_ps(x + j + 8 * u), vs);
            f = _mm256_round_ps(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            f = _mm256_min_ps(_mm256_max_ps(f, lo), hi);
            v[u] = _mm256_cvtps_epi32(f);
            acc = _mm256_add_epi32(acc, v[u]);
        }
        /* packs work within 128-bit lanes: the result holds 4-element groups in the order
         * 0 2 4 6 1 3 5 7; the dword permute restores 0..7 */
        __m256i p01 = _mm256_packs_epi32(v[0], v[1]), p23 = _mm256_packs_epi32(v[2], v[3]);
        __m256i b = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(p01, p23), perm);
        _mm256_storeu_si256((__m256i *)(q + j), b);
    }
    int32_t sum = hsum1(acc);
    for (; j < k; j++) {
        float v = __builtin_nearbyintf(x[j] * s);
        v = v > 127.0f ? 127.0f : (v < -128.0f ? -128.0f : v);
        q[j] = (int8_t)v;
        sum += (int32_t)v;
    }
    for (; j < kp; j++) q[j] = 0;
    return sum;
}

/* ---- int8 x int8 (the int8 LM head / embedding option; scalar reference in ternary.c) ----------
 * vpmaddubsw needs one unsigned operand: |w| (u8, <= 127) times sign(x, w) (x negated where w < 0,
 * zeroed where w == 0; x in [-127, 127] so the negation never overflows). Each int16 lane holds a
 * sum of two products <= 2 * 127 * 127 = 32258 (no saturation); vpmaddwd with ones widens every
 * 32 weights into int32 lanes, so the sums are exact and equal the scalar reference's. */
static inline __m256i i8_dot32(__m256i w, __m256i x) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(x, w)),
                             _mm256_set1_epi16(1));
}

void nc_k_int8_gemm_avx2(float *y, int64_t M, int64_t N, const int8_t *q, const float *act_inv, const int8_t *w,
                         const float *wscale, int64_t kp, int64_t n0, int64_t n1) {
    int64_t n = n0;
    for (; n + 4 <= n1; n += 4) {
        const int8_t *w0 = w + n * kp;
        for (int64_t m = 0; m < M; m++) {
            const int8_t *x = q + m * kp;
            __m256i c0 = _mm256_setzero_si256(), c1 = c0, c2 = c0, c3 = c0;
            for (int64_t k = 0; k < kp; k += 32) {
                if (nc_k_gemv_pf && m == 0 && kp > NC_PF_MIN_ROW) {   /* the next 4 rows, 128 bytes per step */
                    _mm_prefetch((const char *)(w0 + 4 * kp + 4 * k), _MM_HINT_T0);
                    _mm_prefetch((const char *)(w0 + 4 * kp + 4 * k + 64), _MM_HINT_T0);
                }
                __m256i xv = _mm256_loadu_si256((const __m256i *)(x + k));
                c0 = _mm256_add_epi32(c0, i8_dot32(_mm256_loadu_si256((const __m256i *)(w0 + k)), xv));
                c1 = _mm256_add_epi32(c1, i8_dot32(_mm256_loadu_si256((const __m256i *)(w0 + kp + k)), xv));
                c2 = _mm256_add_epi32(c2, i8_dot32(_mm256_loadu_si256((const __m256i *)(w0 + 2 * kp + k)), xv));
                c3 = _mm256_add_epi32(c3, i8_dot32(_mm256_loadu_si256((const __m256i *)(w0 + 3 * kp + k)), xv));
            }
            int32_t r[4];
            _mm_storeu_si128((__m128i *)r, hsum4(c0, c1, c2, c3));
            for (int i = 0; i < 4; i++) y[m * N + n + i] = (float)r[i] * act_inv[m] * wscale[n + i];
        }
    }
    for (; n < n1; n++) {
        const int8_t *wr = w + n * kp;
        for (int64_t m = 0; m < M; m++) {
            const int8_t *x = q + m * kp;
            __m256i c = _mm256_setzero_si256();
            for (int64_t k = 0; k < kp; k += 32)
                c = _mm256_add_epi32(c, i8_dot32(_mm256_loadu_si256((const __m256i *)(wr + k)),
                                                 _mm256_loadu_si256((const __m256i *)(x + k))));
            y[m * N + n] = (float)hsum1(c) * act_inv[m] * wscale[n];
        }
    }
}
