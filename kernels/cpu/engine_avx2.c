/* kernels/cpu/engine_avx2.c — the AVX2/FMA kernel of engine.c's decode LM head (the Makefile adds
 * -mavx2 -mfma for *_avx2.c); engine.c keeps the scalar reference (NC_KERNEL=scalar).
 *
 * Promise: Y[r * N + n] = dot(W row n, X row r) for the weight rows n in [n0, n1) and all R
 * activation rows, each weight row read once (from memory) for all of them, in groups of 4 / 2 / 1 rows:
 * decode of several sequences (continuous batching) costs one pass over the head, not R. Every
 * dot product is summed in the same order whatever R is and whichever group its row falls in (two
 * 8-lane FMA accumulators over alternate 8-column blocks, added, the lanes reduced pairwise, then
 * the K % 8 tail in order), so a sequence's logits are bit-identical decoded alone or in a batch.
 */
#include "nn_common.h"
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* one activation row x against weight row w; the reference order of every row's sum */
static inline float dot1(const float *w, const float *x, int64_t K) {
    __m256 a = _mm256_setzero_ps(), b = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        a = _mm256_fmadd_ps(_mm256_loadu_ps(w + k), _mm256_loadu_ps(x + k), a);
        b = _mm256_fmadd_ps(_mm256_loadu_ps(w + k + 8), _mm256_loadu_ps(x + k + 8), b);
    }
    if (k + 8 <= K) {
        a = _mm256_fmadd_ps(_mm256_loadu_ps(w + k), _mm256_loadu_ps(x + k), a);
        k += 8;
    }
    float s = hsum8(_mm256_add_ps(a, b));
    for (; k < K; k++) s += w[k] * x[k];
    return s;
}

/* four activation rows at once, each summed exactly as dot1 sums it (w loaded once per block) */
static inline void dot4(float *o, const float *w, const float *x0, const float *x1, const float *x2,
                        const float *x3, int64_t K) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        const __m256 w0 = _mm256_loadu_ps(w + k), w1 = _mm256_loadu_ps(w + k + 8);
        a0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x0 + k), a0);
        a1 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x1 + k), a1);
        a2 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x2 + k), a2);
        a3 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x3 + k), a3);
        b0 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x0 + k + 8), b0);
        b1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x1 + k + 8), b1);
        b2 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x2 + k + 8), b2);
        b3 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x3 + k + 8), b3);
    }
    if (k + 8 <= K) {
        const __m256 w0 = _mm256_loadu_ps(w + k);
        a0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x0 + k), a0);
        a1 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x1 + k), a1);
        a2 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x2 + k), a2);
        a3 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x3 + k), a3);
        k += 8;
    }
    float s0 = hsum8(_mm256_add_ps(a0, b0)), s1 = hsum8(_mm256_add_ps(a1, b1)), s2 = hsum8(_mm256_add_ps(a2, b2)),
          s3 = hsum8(_mm256_add_ps(a3, b3));
    for (; k < K; k++) {
        s0 += w[k] * x0[k];
        s1 += w[k] * x1[k];
        s2 += w[k] * x2[k];
        s3 += w[k] * x3[k];
    }
    o[0] = s0, o[1] = s1, o[2] = s2, o[3] = s3;
}

/* two activation rows at once (the same per-row order) */
static inline void dot2(float *o, const float *w, const float *x0, const float *x1, int64_t K) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, b0 = a0, b1 = a0;
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        const __m256 w0 = _mm256_loadu_ps(w + k), w1 = _mm256_loadu_ps(w + k + 8);
        a0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x0 + k), a0);
        a1 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x1 + k), a1);
        b0 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x0 + k + 8), b0);
        b1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x1 + k + 8), b1);
    }
    if (k + 8 <= K) {
        const __m256 w0 = _mm256_loadu_ps(w + k);
        a0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x0 + k), a0);
        a1 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x1 + k), a1);
        k += 8;
    }
    float s0 = hsum8(_mm256_add_ps(a0, b0)), s1 = hsum8(_mm256_add_ps(a1, b1));
    for (; k < K; k++) {
        s0 += w[k] * x0[k];
        s1 += w[k] * x1[k];
    }
    o[0] = s0, o[1] = s1;
}

void nc_k_engine_head_avx2(float *Y, const float *X, const float *W, int64_t R, int64_t K, int64_t N, int64_t n0,
                           int64_t n1) {
    for (int64_t n = n0; n < n1; n++) {
        const float *w = W + n * K;
        int64_t r = 0;
        for (; r + 4 <= R; r += 4) {
            float o[4];
            const float *x = X + r * K;
            dot4(o, w, x, x + K, x + 2 * K, x + 3 * K, K);
            for (int j = 0; j < 4; j++) Y[(r + j) * N + n] = o[j];
        }
        if (r + 2 <= R) {
            float o[2];
            dot2(o, w, X + r * K, X + (r + 1) * K, K);
            Y[r * N + n] = o[0];
            Y[(r + 1) * N + n] = o[1];
            r += 2;
        }
        if (r < R) Y[r * N + n] = dot1(w, X + r * K, K);
    }
}
#endif
