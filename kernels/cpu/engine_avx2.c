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
#include "engine_attn.h"
#if defined(__AVX2__) && defined(__FMA__)
#include "simd_avx2.h"

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
/* ---- attention of one query head (engine_attn.h's lane-8 arithmetic; engine.c attn_head is the
 * scalar twin): scores four key rows at a time (independent FMA chains, each row summed as alone),
 * the exp on 8 scores per vector, the weighted sum of the value rows in hd / 8 accumulators. */
/* e^x for x <= 0: nc_exp256_in with the argument clamped at ln(FLT_MIN) as nc_attn_exp clamps it
 * (lo > x ? lo : x keeps NaN like the scalar select) */
static inline __m256 attn_exp8(__m256 x) { return nc_exp256_in(_mm256_max_ps(_mm256_set1_ps(NC_EXP_LO_IN), x)); }

static inline __m256 tail_load(const float *p, int64_t n) { return _mm256_maskload_ps(p, nc_tailmask256(n)); }

/* the scaled scores sc[j] = (q . k_j) scale of one head (eight lanes per row, hsum8) */
static inline void attn_scores1(float *sc, const float *q, const float *K, int64_t stride, int64_t S, int64_t hd,
                                float scale) {
    const int64_t hd8 = hd & ~(int64_t)7, rest = hd - hd8;
    int64_t j = 0;
    for (; j + 4 <= S; j += 4) {
        const float *k0 = K + j * stride, *k1 = k0 + stride, *k2 = k1 + stride, *k3 = k2 + stride;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int64_t e = 0; e < hd8; e += 8) {
            __m256 qv = _mm256_loadu_ps(q + e);
            a0 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + e), a0);
            a1 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k1 + e), a1);
            a2 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k2 + e), a2);
            a3 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k3 + e), a3);
        }
        if (rest) {
            __m256 qv = tail_load(q + hd8, rest);
            a0 = _mm256_fmadd_ps(qv, tail_load(k0 + hd8, rest), a0);
            a1 = _mm256_fmadd_ps(qv, tail_load(k1 + hd8, rest), a1);
            a2 = _mm256_fmadd_ps(qv, tail_load(k2 + hd8, rest), a2);
            a3 = _mm256_fmadd_ps(qv, tail_load(k3 + hd8, rest), a3);
        }
        sc[j] = hsum8(a0) * scale;
        sc[j + 1] = hsum8(a1) * scale;
        sc[j + 2] = hsum8(a2) * scale;
        sc[j + 3] = hsum8(a3) * scale;
    }
    for (; j < S; j++) {
        const float *k0 = K + j * stride;
        __m256 a0 = _mm256_setzero_ps();
        for (int64_t e = 0; e < hd8; e += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + e), _mm256_loadu_ps(k0 + e), a0);
        if (rest) a0 = _mm256_fmadd_ps(tail_load(q + hd8, rest), tail_load(k0 + hd8, rest), a0);
        sc[j] = hsum8(a0) * scale;
    }
}

/* attn_scores1 for two query heads of one KV head: each key row is read once for both, every
 * score summed exactly as attn_scores1 sums it */
static inline void attn_scores2(float *sc0, float *sc1, const float *q0, const float *q1, const float *K, int64_t stride,
                                int64_t S, int64_t hd, float scale) {
    const int64_t hd8 = hd & ~(int64_t)7, rest = hd - hd8;
    int64_t j = 0;
    for (; j + 4 <= S; j += 4) {
        const float *k0 = K + j * stride, *k1 = k0 + stride, *k2 = k1 + stride, *k3 = k2 + stride;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
        for (int64_t e = 0; e < hd8; e += 8) {
            __m256 qa = _mm256_loadu_ps(q0 + e), qb = _mm256_loadu_ps(q1 + e), kv;
            kv = _mm256_loadu_ps(k0 + e); a0 = _mm256_fmadd_ps(qa, kv, a0); b0 = _mm256_fmadd_ps(qb, kv, b0);
            kv = _mm256_loadu_ps(k1 + e); a1 = _mm256_fmadd_ps(qa, kv, a1); b1 = _mm256_fmadd_ps(qb, kv, b1);
            kv = _mm256_loadu_ps(k2 + e); a2 = _mm256_fmadd_ps(qa, kv, a2); b2 = _mm256_fmadd_ps(qb, kv, b2);
            kv = _mm256_loadu_ps(k3 + e); a3 = _mm256_fmadd_ps(qa, kv, a3); b3 = _mm256_fmadd_ps(qb, kv, b3);
        }
        if (rest) {
            __m256 qa = tail_load(q0 + hd8, rest), qb = tail_load(q1 + hd8, rest), kv;
            kv = tail_load(k0 + hd8, rest); a0 = _mm256_fmadd_ps(qa, kv, a0); b0 = _mm256_fmadd_ps(qb, kv, b0);
            kv = tail_load(k1 + hd8, rest); a1 = _mm256_fmadd_ps(qa, kv, a1); b1 = _mm256_fmadd_ps(qb, kv, b1);
            kv = tail_load(k2 + hd8, rest); a2 = _mm256_fmadd_ps(qa, kv, a2); b2 = _mm256_fmadd_ps(qb, kv, b2);
            kv = tail_load(k3 + hd8, rest); a3 = _mm256_fmadd_ps(qa, kv, a3); b3 = _mm256_fmadd_ps(qb, kv, b3);
        }
        sc0[j] = hsum8(a0) * scale; sc0[j + 1] = hsum8(a1) * scale;
        sc0[j + 2] = hsum8(a2) * scale; sc0[j + 3] = hsum8(a3) * scale;
        sc1[j] = hsum8(b0) * scale; sc1[j + 1] = hsum8(b1) * scale;
        sc1[j + 2] = hsum8(b2) * scale; sc1[j + 3] = hsum8(b3) * scale;
    }
    for (; j < S; j++) {
        const float *k0 = K + j * stride;
        __m256 a0 = _mm256_setzero_ps(), b0 = a0;
        for (int64_t e = 0; e < hd8; e += 8) {
            __m256 kv = _mm256_loadu_ps(k0 + e);
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q0 + e), kv, a0);
            b0 = _mm256_fmadd_ps(_mm256_loadu_ps(q1 + e), kv, b0);
        }
        if (rest) {
            __m256 kv = tail_load(k0 + hd8, rest);
            a0 = _mm256_fmadd_ps(tail_load(q0 + hd8, rest), kv, a0);
            b0 = _mm256_fmadd_ps(tail_load(q1 + hd8, rest), kv, b0);
        }
        sc0[j] = hsum8(a0) * scale;
        sc1[j] = hsum8(b0) * scale;
    }
}

/* scores -> probabilities in place: the max, the exps and their lane sums (lane l of the vector sum
 * holds j = l, l + 8, ...; the tail's lanes continue the same lanes, j % 8), then e_j / l */
static inline void attn_probs(float *sc, int64_t S) {
    __m256 vm = _mm256_set1_ps(-INFINITY);
    float m = -INFINITY;
    int64_t j;
    for (j = 0; j + 8 <= S; j += 8) vm = _mm256_max_ps(_mm256_loadu_ps(sc + j), vm);   /* s > m ? s : m */
    float mv[8];
    _mm256_storeu_ps(mv, vm);
    for (int l = 0; l < 8; l++) m = mv[l] > m ? mv[l] : m;
    for (; j < S; j++) m = sc[j] > m ? sc[j] : m;
    __m256 vs = _mm256_setzero_ps();
    const __m256 vmax = _mm256_set1_ps(m);
    for (j = 0; j + 8 <= S; j += 8) {
        __m256 ev = attn_exp8(_mm256_sub_ps(_mm256_loadu_ps(sc + j), vmax));
        _mm256_storeu_ps(sc + j, ev);
        vs = _mm256_add_ps(vs, ev);
    }
    float ls[8];
    _mm256_storeu_ps(ls, vs);
    for (; j < S; j++) {
        sc[j] = nc_attn_exp(sc[j] - m);
        ls[j % 8] += sc[j];
    }
    const float l = nc_attn_hsum8(ls);
    for (j = 0; j < S; j++) sc[j] = sc[j] / l;
}

/* o = sum_j p_j v_j: every column one fmaf chain in j order (the vector FMAs and the scalar tail
 * give the same bits), 8 columns per vector; up to 64 columns per pass over the value rows (one
 * pass for the usual head_dim 64: each row read once) */
static inline void attn_values1(float *o, const float *p, const float *V, int64_t stride, int64_t S, int64_t hd) {
    int64_t e = 0, j;
    for (; e + 64 <= hd; e += 64) {
        __m256 acc[8];
#pragma GCC unroll 8
        for (int c = 0; c < 8; c++) acc[c] = _mm256_setzero_ps();
        for (j = 0; j < S; j++) {
            const float *vr = V + j * stride + e;
            __m256 pj = _mm256_set1_ps(p[j]);
#pragma GCC unroll 8
            for (int c = 0; c < 8; c++) acc[c] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vr + 8 * c), acc[c]);
        }
#pragma GCC unroll 8
        for (int c = 0; c < 8; c++) _mm256_storeu_ps(o + e + 8 * c, acc[c]);
    }
    for (; e + 8 <= hd; e += 8) {
        __m256 o0 = _mm256_setzero_ps();
        for (j = 0; j < S; j++) o0 = _mm256_fmadd_ps(_mm256_set1_ps(p[j]), _mm256_loadu_ps(V + j * stride + e), o0);
        _mm256_storeu_ps(o + e, o0);
    }
    for (; e < hd; e++) {
        float acc = 0.0f;
        for (j = 0; j < S; j++) acc = fmaf(p[j], V[j * stride + e], acc);
        o[e] = acc;
    }
}

/* attn_values1 for two heads sharing the value rows: 32 columns of both per pass (each value row
 * read once for the two), the same per-column chains */
static inline void attn_values2(float *o0, float *o1, const float *p0, const float *p1, const float *V, int64_t stride,
                                int64_t S, int64_t hd) {
    int64_t e = 0, j;
    for (; e + 32 <= hd; e += 32) {
        __m256 x[4], y[4];
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) x[c] = y[c] = _mm256_setzero_ps();
        for (j = 0; j < S; j++) {
            const float *vr = V + j * stride + e;
            __m256 pa = _mm256_set1_ps(p0[j]), pb = _mm256_set1_ps(p1[j]);
#pragma GCC unroll 4
            for (int c = 0; c < 4; c++) {
                __m256 v = _mm256_loadu_ps(vr + 8 * c);
                x[c] = _mm256_fmadd_ps(pa, v, x[c]);
                y[c] = _mm256_fmadd_ps(pb, v, y[c]);
            }
        }
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) {
            _mm256_storeu_ps(o0 + e + 8 * c, x[c]);
            _mm256_storeu_ps(o1 + e + 8 * c, y[c]);
        }
    }
    if (e < hd) {   /* the last hd % 32 columns, head by head */
        attn_values1(o0 + e, p0, V + e, stride, S, hd - e);
        attn_values1(o1 + e, p1, V + e, stride, S, hd - e);
    }
}

void nc_k_engine_attn_avx2(float *o, const float *q, const float *K, const float *V, int64_t stride, int64_t S,
                           int64_t hd, float scale, float *sc) {
    attn_scores1(sc, q, K, stride, S, hd, scale);
    attn_probs(sc, S);
    attn_values1(o, sc, V, stride, S, hd);
}

void nc_k_engine_attn2_avx2(float *o0, float *o1, const float *q0, const float *q1, const float *K, const float *V,
                            int64_t stride, int64_t S, int64_t hd, float scale, float *sc0, float *sc1) {
    attn_scores2(sc0, sc1, q0, q1, K, stride, S, hd, scale);
    attn_probs(sc0, S);
    attn_probs(sc1, S);
    attn_values2(o0, o1, sc0, sc1, V, stride, S, hd);
}

#endif
