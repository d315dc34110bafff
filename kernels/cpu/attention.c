/* kernels/cpu/attention.c — memory-efficient (flash-style) scaled dot-product attention with GQA.
 *
 * Promise: q (B, T, H, D), k and v (B, S, Hkv, D) in any strides; out (B, T, H, D) and
 * lse (B, H, T) contiguous. Query head j reads kv head j / (H / Hkv). Causal: query t (absolute
 * position S - T + t) sees keys s <= S - T + t, so decoding with a KV cache (T = 1, S = cache
 * length) works. A query that sees no key gets out = 0 and lse = -inf (and zero gradient).
 *
 * Forward: for each (b, h, block of BR queries) an online softmax over key blocks of BC keys:
 * scores of one block row are computed, the running max m, sum l and accumulator are rescaled
 * by exp(m_old - m_new), and out = acc / l, lse = m + log l at the end. No T x S matrix ever
 * exists: per thread scratch is a few BR x D / BC x D tiles. Scores of full groups of 4 query rows
 * are computed together as 4 x 16 register tiles (dot4; the same sums as dot_row, bit for bit).
 * Backward (FlashAttention-2): D_i = rowsum(dO_i * O_i); per block P = exp(S - lse),
 * dP = dO V^T, dS = P * (dP - D), dV += P^T dO, dK += scale dS^T Q, dQ += scale dS K. It runs in
 * two race-free passes: one parallel over (b, kv head, key block) owning dK and dV rows (it
 * loops over every query head of the group and every query block), one parallel over
 * (b, head, query block) owning dQ rows. Each gradient element is summed in a fixed order, so
 * results do not depend on the thread count. When both dQ and dK/dV are wanted and there is one
 * thread or >= 4 (b, kv head) items per thread, a fused single pass runs instead: one item per
 * (b, kv head) walks the key blocks in ascending order doing pass 1's work and also adding dS K into
 * a per-thread copy of its group's dQ rows (G x T x D floats), so P and dS are computed once, not
 * twice; every dQ element is summed in pass 2's order, so both paths give bit-identical results.
 * Pass 1 (and the fused pass) handle query rows in groups of 4: the scores Q K^T and dP = dO V^T
 * of the group are 4 x 16 register tiles over the head dim (dot4); after the whole query block's P
 * and dS, kv_sweep adds the block's terms to each dK/dV row in row order.
 * Collider (algorithms.md §8.4): nc_attention_backward_masked takes a kept-query mask qkeep (B, T);
 * a masked query row contributes nothing anywhere (each query block holds only its kept rows,
 * compacted; its dQ row is left untouched), which equals the dense backward with that row of dO
 * set to zero (then P (dP - D) = 0 and P dO = 0 exactly). For self-attention (S == T) the mask
 * also marks keys: dK / dV rows of masked keys are not computed (left untouched; Centrifuge), the
 * kept keys' rows equal the dense ones bit for bit. Without a mask the arithmetic is the dense
 * backward's, bit for bit.
 *
 * Compiled three times: as itself (portable baseline, the reference), from attention_avx2.c with
 * AVX2/FMA and from attention_avx512.c with AVX-512F; ATT_PICK follows the kernel selection. Inner
 * loops are `omp simd` over keys or over head dims; the AVX-512 build replaces the score tiles (dot4,
 * dot_row), P V / dS K (axpy_rows, axpy4_rows) and the dK/dV sweep (kv_sweep) by zmm register tiles
 * with FMA. Pass 1 computes P and dS of a whole query block before the dK/dV sweep; P and dS are
 * zero past a row's visible keys, and a +-0 term leaves every sum (which starts at +0) unchanged.
 * CUDA tensors (all on one device, any strides for q, k, v, out, gout) run kernels/cuda/nn.cu's
 * attention (the same online softmax and backward formulas; head dim <= NC_CUDA_ATTN_MAXD).
 */
#include "nn_common.h"
#if defined(__AVX512F__)
#include "simd_avx512.h"
/* lanes [0, n) of 16 (n may be <= 0 or >= 16) */
static inline __mmask16 att_mask(int64_t n) {
    return n >= 16 ? (__mmask16)0xffff : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1u);
}
#endif

#include "kvariant.h"

#ifndef NC_ATTN_TYPES
#define NC_ATTN_TYPES
enum { ATT_BR = 64, ATT_BC = 64 };

typedef struct {
    int64_t B, T, S, H, Hkv, D;
    int causal;
    float scale;
    const float *q, *k, *v, *o, *go;       /* element 0 of each input */
    int64_t qs[4], ks[4], vs[4], os[4], gs[4];
    float *out, *lse;                      /* forward outputs (contiguous) */
    const float *lse_in, *dvec;            /* backward: saved lse and D = rowsum(dO * O), (B, H, T) */
    float *gq, *gk, *gv;                   /* backward outputs (contiguous, accumulate), may be NULL */
    const uint8_t *qkeep;                  /* backward: kept-query mask (B, T) contiguous, or NULL = all */
    const uint8_t *kkeep;                  /* backward: kept-key mask (B, S): qkeep when S == T, else NULL */
} attn_args;

/* floats of per-thread scratch */
static inline int64_t attn_scratch_floats(int64_t D) {
    return 4 * (int64_t)ATT_BR * D + 6 * (int64_t)ATT_BC * D + 2 * (int64_t)ATT_BR * ATT_BC + 12 * (int64_t)ATT_BC +
           2 * (int64_t)ATT_BR + 64;
}
#endif

/* rows [r0, r0+n) of a (B, L, Hx, D) tensor at (b, hx), optionally scaled, into dst (n x D) */
static inline void load_rows(float *dst, const float *base, const int64_t *st, int64_t b, int64_t r0, int64_t n,
                             int64_t hx, int64_t D, float mul) {
    for (int64_t i = 0; i < n; i++) {
        const float *src = base + b * st[0] + (r0 + i) * st[1] + hx * st[2];
        float *d = dst + i * D;
        if (st[3] == 1) {
#pragma omp simd
            for (int64_t e = 0; e < D; e++) d[e] = src[e] * mul;
        } else {
            for (int64_t e = 0; e < D; e++) d[e] = src[e * st[3]] * mul;
        }
    }
}

/* rows r0 + idx[i], i < n, of a (B, L, Hx, D) tensor at (b, hx), scaled, into dst (n x D) */
static inline void load_rows_idx(float *dst, const float *base, const int64_t *st, int64_t b, int64_t r0,
                                 const int64_t *idx, int64_t n, int64_t hx, int64_t D, float mul) {
    for (int64_t i = 0; i < n; i++) load_rows(dst + i * D, base, st, b, r0 + idx[i], 1, hx, D, mul);
}

/* Collider: the kept rows of query block [t0, t0 + nq) of batch b as offsets into rowi (ascending);
 * their count */
static inline int64_t kept_rows(const uint8_t *qkeep, int64_t T, int64_t b, int64_t t0, int64_t nq, int64_t *rowi) {
    int64_t n = 0;
    for (int64_t i = 0; i < nq; i++)
        if (qkeep[b * T + t0 + i]) rowi[n++] = i;
    return n;
}

/* the same rows transposed into dst (D x ATT_BC) */
static inline void load_rows_t(float *dst, const float *base, const int64_t *st, int64_t b, int64_t r0, int64_t n,
                               int64_t hx, int64_t D) {
#if defined(__AVX512F__)
    if (st[1] > 0 && st[1] * 16 < ((int64_t)1 << 31)) {   /* 16 rows per gather, one per head dim */
        const float *src0 = base + b * st[0] + r0 * st[1] + hx * st[2];
        __m512i idx = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                         _mm512_set1_epi32((int32_t)st[1]));
        for (int64_t j = 0; j < n; j += 16) {
            __mmask16 k = att_mask(n - j);
            const float *src = src0 + j * st[1];
            for (int64_t e = 0; e < D; e++)
                _mm512_mask_storeu_ps(dst + e * ATT_BC + j, k,
                                      _mm512_mask_i32gather_ps(_mm512_setzero_ps(), k, idx, src + e * st[3], 4));
        }
        return;
    }
#endif
    for (int64_t j = 0; j < n; j++) {
        const float *src = base + b * st[0] + (r0 + j) * st[1] + hx * st[2];
        for (int64_t e = 0; e < D; e++) dst[e * ATT_BC + j] = src[e * st[3]];
    }
}

#if defined(__AVX512F__)
/* AVX-512 build: the same three helpers as explicit zmm register tiles with FMA (one rounding per
 * multiply-add instead of two; every element still summed over d, resp. j, in ascending order, and
 * dot_row and dot4 give the same bits). Columns past jn are computed from whatever kt holds and
 * not stored (masked stores). */

static inline void dot_row(float *restrict row, const float *restrict qi, const float *restrict kt, int64_t D,
                           int64_t jn) {
    int64_t nt = (jn + 15) >> 4;
    __m512 c0 = _mm512_setzero_ps(), c1 = c0, c2 = c0, c3 = c0;
    for (int64_t d = 0; d < D; d++) {
        const float *kr = kt + d * ATT_BC;
        __m512 a = _mm512_set1_ps(qi[d]);
        c0 = _mm512_fmadd_ps(a, _mm512_loadu_ps(kr), c0);
        if (nt > 1) c1 = _mm512_fmadd_ps(a, _mm512_loadu_ps(kr + 16), c1);
        if (nt > 2) c2 = _mm512_fmadd_ps(a, _mm512_loadu_ps(kr + 32), c2);
        if (nt > 3) c3 = _mm512_fmadd_ps(a, _mm512_loadu_ps(kr + 48), c3);
    }
    _mm512_mask_storeu_ps(row, att_mask(jn), c0);
    if (nt > 1) _mm512_mask_storeu_ps(row + 16, att_mask(jn - 16), c1);
    if (nt > 2) _mm512_mask_storeu_ps(row + 32, att_mask(jn - 32), c2);
    if (nt > 3) _mm512_mask_storeu_ps(row + 48, att_mask(jn - 48), c3);
}

/* 4 rows x NT key tiles of 16 (NT constant after inlining) */
static inline __attribute__((always_inline)) void dot4_nt(float *restrict out, const float *restrict q,
                                                          const float *restrict kt, int64_t D, int64_t jn,
                                                          const int NT) {
    __m512 c[4][4];
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++)
#pragma GCC unroll 4
        for (int t = 0; t < NT; t++) c[r][t] = _mm512_setzero_ps();
    for (int64_t d = 0; d < D; d++) {
        const float *kr = kt + d * ATT_BC;
        __m512 kv[4];
#pragma GCC unroll 4
        for (int t = 0; t < NT; t++) kv[t] = _mm512_loadu_ps(kr + 16 * t);
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++) {
            __m512 a = _mm512_set1_ps(q[r * D + d]);
#pragma GCC unroll 4
            for (int t = 0; t < NT; t++) c[r][t] = _mm512_fmadd_ps(a, kv[t], c[r][t]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++)
#pragma GCC unroll 4
        for (int t = 0; t < NT; t++) _mm512_mask_storeu_ps(out + r * ATT_BC + 16 * t, att_mask(jn - 16 * t), c[r][t]);
}

static inline void dot4(float *restrict out, const float *restrict q, const float *restrict kt, int64_t D, int64_t jn) {
    switch ((jn + 15) >> 4) {
    case 1: dot4_nt(out, q, kt, D, jn, 1); break;
    case 2: dot4_nt(out, q, kt, D, jn, 2); break;
    case 3: dot4_nt(out, q, kt, D, jn, 3); break;
    default: dot4_nt(out, q, kt, D, jn, 4); break;
    }
}

/* acc[d] += sum_j p[j] * vb[j][d] (j ascending per element; acc chunk held in a register) */
static inline void axpy_rows(float *restrict acc, const float *restrict p, const float *restrict vb, int64_t D,
                             int64_t jn) {
    if (jn <= 0) return;
    int64_t d0 = 0;
    for (; d0 + 64 <= D; d0 += 64) {
        __m512 x0 = _mm512_loadu_ps(acc + d0), x1 = _mm512_loadu_ps(acc + d0 + 16);
        __m512 x2 = _mm512_loadu_ps(acc + d0 + 32), x3 = _mm512_loadu_ps(acc + d0 + 48);
        for (int64_t j = 0; j < jn; j++) {
            __m512 pj = _mm512_set1_ps(p[j]);
            const float *vr = vb + j * D + d0;
            x0 = _mm512_fmadd_ps(pj, _mm512_loadu_ps(vr), x0);
            x1 = _mm512_fmadd_ps(pj, _mm512_loadu_ps(vr + 16), x1);
            x2 = _mm512_fmadd_ps(pj, _mm512_loadu_ps(vr + 32), x2);
            x3 = _mm512_fmadd_ps(pj, _mm512_loadu_ps(vr + 48), x3);
        }
        _mm512_storeu_ps(acc + d0, x0);
        _mm512_storeu_ps(acc + d0 + 16, x1);
        _mm512_storeu_ps(acc + d0 + 32, x2);
        _mm512_storeu_ps(acc + d0 + 48, x3);
    }
    for (; d0 < D; d0 += 16) {
        __mmask16 m = att_mask(D - d0);
        __m512 x = _mm512_maskz_loadu_ps(m, acc + d0);
        for (int64_t j = 0; j < jn; j++)
            x = _mm512_fmadd_ps(_mm512_set1_ps(p[j]), _mm512_maskz_loadu_ps(m, vb + j * D + d0), x);
        _mm512_mask_storeu_ps(acc + d0, m, x);
    }
}

/* acc rows r < 4 (stride D) += sum_j p[r][j] * vb[j] (p rows stride ATT_BC, j < jn ascending): four
 * axpy_rows with one load of each vb row; zero entries of p add +-0, which leaves every sum unchanged */
static inline void axpy4_rows(float *restrict acc, const float *restrict p, const float *restrict vb, int64_t D,
                              int64_t jn) {
    if (D != 64) {
        for (int r = 0; r < 4; r++) axpy_rows(acc + r * D, p + r * ATT_BC, vb, D, jn);
        return;
    }
    __m512 x[4][4];
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++)
#pragma GCC unroll 4
        for (int t = 0; t < 4; t++) x[r][t] = _mm512_loadu_ps(acc + r * 64 + 16 * t);
    for (int64_t j = 0; j < jn; j++) {
        const float *vr = vb + j * 64;
        __m512 v0 = _mm512_loadu_ps(vr), v1 = _mm512_loadu_ps(vr + 16), v2 = _mm512_loadu_ps(vr + 32),
               v3 = _mm512_loadu_ps(vr + 48);
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++) {
            __m512 pj = _mm512_set1_ps(p[r * ATT_BC + j]);
            x[r][0] = _mm512_fmadd_ps(pj, v0, x[r][0]);
            x[r][1] = _mm512_fmadd_ps(pj, v1, x[r][1]);
            x[r][2] = _mm512_fmadd_ps(pj, v2, x[r][2]);
            x[r][3] = _mm512_fmadd_ps(pj, v3, x[r][3]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++)
#pragma GCC unroll 4
        for (int t = 0; t < 4; t++) _mm512_storeu_ps(acc + r * 64 + 16 * t, x[r][t]);
}

/* dv[d] += p * o[d], dk[d] += s * q[d] (one row's terms; FMA as in the 4-row sweep) */
static inline void kv_axpy(float *restrict dv, float *restrict dk, float p, const float *restrict o, float s,
                           const float *restrict q, int64_t D) {
    __m512 pv = _mm512_set1_ps(p), sv = _mm512_set1_ps(s);
    for (int64_t d0 = 0; d0 < D; d0 += 16) {
        __mmask16 m = att_mask(D - d0);
        _mm512_mask_storeu_ps(dv + d0, m,
                              _mm512_fmadd_ps(pv, _mm512_maskz_loadu_ps(m, o + d0), _mm512_maskz_loadu_ps(m, dv + d0)));
        _mm512_mask_storeu_ps(dk + d0, m,
                              _mm512_fmadd_ps(sv, _mm512_maskz_loadu_ps(m, q + d0), _mm512_maskz_loadu_ps(m, dk + d0)));
    }
}

/* the 4-row term of one dK/dV row: dv += p0 o0 + .. + p3 o3, dk += s0 q0 + .. + s3 q3 (row order) */
static inline void kv_axpy4(float *restrict dv, float *restrict dk, const float *p, const float *const *o,
                            const float *s, const float *const *q, int64_t D) {
    __m512 p0 = _mm512_set1_ps(p[0]), p1 = _mm512_set1_ps(p[1]), p2 = _mm512_set1_ps(p[2]), p3 = _mm512_set1_ps(p[3]);
    __m512 s0 = _mm512_set1_ps(s[0]), s1 = _mm512_set1_ps(s[1]), s2 = _mm512_set1_ps(s[2]), s3 = _mm512_set1_ps(s[3]);
    for (int64_t d0 = 0; d0 < D; d0 += 16) {
        __mmask16 m = att_mask(D - d0);
        __m512 x = _mm512_maskz_loadu_ps(m, dv + d0), y = _mm512_maskz_loadu_ps(m, dk + d0);
        x = _mm512_fmadd_ps(p0, _mm512_maskz_loadu_ps(m, o[0] + d0), x);
        y = _mm512_fmadd_ps(s0, _mm512_maskz_loadu_ps(m, q[0] + d0), y);
        x = _mm512_fmadd_ps(p1, _mm512_maskz_loadu_ps(m, o[1] + d0), x);
        y = _mm512_fmadd_ps(s1, _mm512_maskz_loadu_ps(m, q[1] + d0), y);
        x = _mm512_fmadd_ps(p2, _mm512_maskz_loadu_ps(m, o[2] + d0), x);
        y = _mm512_fmadd_ps(s2, _mm512_maskz_loadu_ps(m, q[2] + d0), y);
        x = _mm512_fmadd_ps(p3, _mm512_maskz_loadu_ps(m, o[3] + d0), x);
        y = _mm512_fmadd_ps(s3, _mm512_maskz_loadu_ps(m, q[3] + d0), y);
        _mm512_mask_storeu_ps(dv + d0, m, x);
        _mm512_mask_storeu_ps(dk + d0, m, y);
    }
}

/* dK/dV of a key block += the query block's terms: dv_j += sum_i P[i][j] o_i, dk_j += sum_i dS[i][j] q_i,
 * rows i ascending from the first row that sees key j (P, dS are zero past each row's jns[i]).
 * Keys in pairs, a 64-float slice of the head dim of both dK and dV rows held in 16 zmm registers.
 * kj (may be NULL = every key < jcap): only the keys kj[0 .. nkj) (ascending; Collider's kept keys);
 * a pair (j, j2) starts at j's first row, and the rows before j2's add exact zeros. */
static inline void kv_sweep(float *restrict dV, float *restrict dK, const float *restrict P, const float *restrict dS,
                            const float *restrict dO, const float *restrict Qs, const int64_t *jns, int64_t nq,
                            int64_t jcap, int64_t D, const int64_t *kj, int64_t nkj) {
    int64_t ifirst = 0, n = jcap;
    if (kj) for (n = 0; n < nkj && kj[n] < jcap; n++) {}
    for (int64_t u = 0; u < n; u += 2) {
        int64_t j = kj ? kj[u] : u;
        int two = u + 1 < n;
        int64_t j2 = two ? (kj ? kj[u + 1] : u + 1) : j;
        while (ifirst < nq && jns[ifirst] <= j) ifirst++;
        for (int64_t d0 = 0; d0 < D; d0 += 64) {
            __mmask16 m0 = att_mask(D - d0), m1 = att_mask(D - d0 - 16), m2 = att_mask(D - d0 - 32),
                      m3 = att_mask(D - d0 - 48);
            float *v0 = dV + j * D + d0, *k0 = dK + j * D + d0, *v1 = dV + j2 * D + d0, *k1 = dK + j2 * D + d0;
            __m512 a0 = _mm512_maskz_loadu_ps(m0, v0), a1 = _mm512_maskz_loadu_ps(m1, v0 + 16);
            __m512 a2 = _mm512_maskz_loadu_ps(m2, v0 + 32), a3 = _mm512_maskz_loadu_ps(m3, v0 + 48);
            __m512 b0 = _mm512_maskz_loadu_ps(m0, k0), b1 = _mm512_maskz_loadu_ps(m1, k0 + 16);
            __m512 b2 = _mm512_maskz_loadu_ps(m2, k0 + 32), b3 = _mm512_maskz_loadu_ps(m3, k0 + 48);
            __m512 c0 = _mm512_setzero_ps(), c1 = c0, c2 = c0, c3 = c0, e0 = c0, e1 = c0, e2 = c0, e3 = c0;
            if (two) {
                c0 = _mm512_maskz_loadu_ps(m0, v1); c1 = _mm512_maskz_loadu_ps(m1, v1 + 16);
                c2 = _mm512_maskz_loadu_ps(m2, v1 + 32); c3 = _mm512_maskz_loadu_ps(m3, v1 + 48);
                e0 = _mm512_maskz_loadu_ps(m0, k1); e1 = _mm512_maskz_loadu_ps(m1, k1 + 16);
                e2 = _mm512_maskz_loadu_ps(m2, k1 + 32); e3 = _mm512_maskz_loadu_ps(m3, k1 + 48);
            }
            for (int64_t i = ifirst; i < nq; i++) {
                const float *o = dO + i * D + d0, *q = Qs + i * D + d0;
                __m512 o0 = _mm512_maskz_loadu_ps(m0, o), o1 = _mm512_maskz_loadu_ps(m1, o + 16);
                __m512 o2 = _mm512_maskz_loadu_ps(m2, o + 32), o3 = _mm512_maskz_loadu_ps(m3, o + 48);
                __m512 q0 = _mm512_maskz_loadu_ps(m0, q), q1 = _mm512_maskz_loadu_ps(m1, q + 16);
                __m512 q2 = _mm512_maskz_loadu_ps(m2, q + 32), q3 = _mm512_maskz_loadu_ps(m3, q + 48);
                __m512 p = _mm512_set1_ps(P[i * ATT_BC + j]), g = _mm512_set1_ps(dS[i * ATT_BC + j]);
                a0 = _mm512_fmadd_ps(p, o0, a0); a1 = _mm512_fmadd_ps(p, o1, a1);
                a2 = _mm512_fmadd_ps(p, o2, a2); a3 = _mm512_fmadd_ps(p, o3, a3);
                b0 = _mm512_fmadd_ps(g, q0, b0); b1 = _mm512_fmadd_ps(g, q1, b1);
                b2 = _mm512_fmadd_ps(g, q2, b2); b3 = _mm512_fmadd_ps(g, q3, b3);
                if (two) {
                    p = _mm512_set1_ps(P[i * ATT_BC + j2]);
                    g = _mm512_set1_ps(dS[i * ATT_BC + j2]);
                    c0 = _mm512_fmadd_ps(p, o0, c0); c1 = _mm512_fmadd_ps(p, o1, c1);
                    c2 = _mm512_fmadd_ps(p, o2, c2); c3 = _mm512_fmadd_ps(p, o3, c3);
                    e0 = _mm512_fmadd_ps(g, q0, e0); e1 = _mm512_fmadd_ps(g, q1, e1);
                    e2 = _mm512_fmadd_ps(g, q2, e2); e3 = _mm512_fmadd_ps(g, q3, e3);
                }
            }
            _mm512_mask_storeu_ps(v0, m0, a0); _mm512_mask_storeu_ps(v0 + 16, m1, a1);
            _mm512_mask_storeu_ps(v0 + 32, m2, a2); _mm512_mask_storeu_ps(v0 + 48, m3, a3);
            _mm512_mask_storeu_ps(k0, m0, b0); _mm512_mask_storeu_ps(k0 + 16, m1, b1);
            _mm512_mask_storeu_ps(k0 + 32, m2, b2); _mm512_mask_storeu_ps(k0 + 48, m3, b3);
            if (two) {
                _mm512_mask_storeu_ps(v1, m0, c0); _mm512_mask_storeu_ps(v1 + 16, m1, c1);
                _mm512_mask_storeu_ps(v1 + 32, m2, c2); _mm512_mask_storeu_ps(v1 + 48, m3, c3);
                _mm512_mask_storeu_ps(k1, m0, e0); _mm512_mask_storeu_ps(k1 + 16, m1, e1);
                _mm512_mask_storeu_ps(k1 + 32, m2, e2); _mm512_mask_storeu_ps(k1 + 48, m3, e3);
            }
        }
    }
}
#else
/* row[j] = sum_d qi[d] * kt[d][j] for j < jn */
static inline void dot_row(float *restrict row, const float *restrict qi, const float *restrict kt, int64_t D,
                           int64_t jn) {
#pragma omp simd
    for (int64_t j = 0; j < jn; j++) row[j] = 0.0f;
    for (int64_t d = 0; d < D; d++) {
        float qd = qi[d];
        const float *kr = kt + d * ATT_BC;
#pragma omp simd
        for (int64_t j = 0; j < jn; j++) row[j] += qd * kr[j];
    }
}

/* rows r < 4 of out (stride ATT_BC), columns j < jn: out[r][j] = sum_d q[r][d] * kt[d][j], summed over d
 * in the same order as dot_row (bit-identical per element); register tiles of 4 rows x 16 keys.
 * Columns up to the next multiple of 16 (<= ATT_BC) are computed from whatever kt holds and ignored. */
static inline void dot4(float *restrict out, const float *restrict q, const float *restrict kt, int64_t D, int64_t jn) {
    const float *q0 = q, *q1 = q + D, *q2 = q + 2 * D, *q3 = q + 3 * D;
    for (int64_t j0 = 0; j0 < jn; j0 += 16) {
        float c0[16], c1[16], c2[16], c3[16];
        for (int jj = 0; jj < 16; jj++) c0[jj] = c1[jj] = c2[jj] = c3[jj] = 0.0f;
        for (int64_t d = 0; d < D; d++) {
            const float *kr = kt + d * ATT_BC + j0;
            float a0 = q0[d], a1 = q1[d], a2 = q2[d], a3 = q3[d];
#pragma omp simd
            for (int jj = 0; jj < 16; jj++) {
                float kv = kr[jj];
                c0[jj] += a0 * kv;
                c1[jj] += a1 * kv;
                c2[jj] += a2 * kv;
                c3[jj] += a3 * kv;
            }
        }
        int64_t n = jn - j0 < 16 ? jn - j0 : 16;
        for (int64_t jj = 0; jj < n; jj++) {
            out[j0 + jj] = c0[jj];
            out[ATT_BC + j0 + jj] = c1[jj];
            out[2 * ATT_BC + j0 + jj] = c2[jj];
            out[3 * ATT_BC + j0 + jj] = c3[jj];
        }
    }
}

/* acc[d] += sum_j p[j] * vb[j][d] */
static inline void axpy_rows(float *restrict acc, const float *restrict p, const float *restrict vb, int64_t D,
                             int64_t jn) {
    for (int64_t j = 0; j < jn; j++) {
        float pj = p[j];
        const float *vr = vb + j * D;
#pragma omp simd
        for (int64_t d = 0; d < D; d++) acc[d] += pj * vr[d];
    }
}


/* acc rows r < 4 (stride D) += sum_j p[r][j] * vb[j] (zero entries of p leave the sums unchanged) */
static inline void axpy4_rows(float *restrict acc, const float *restrict p, const float *restrict vb, int64_t D,
                              int64_t jn) {
    for (int r = 0; r < 4; r++) axpy_rows(acc + r * D, p + r * ATT_BC, vb, D, jn);
}

/* dv[d] += p * o[d], dk[d] += s * q[d] */
static inline void kv_axpy(float *restrict dv, float *restrict dk, float p, const float *restrict o, float s,
                           const float *restrict q, int64_t D) {
#pragma omp simd
    for (int64_t d = 0; d < D; d++) {
        dv[d] += p * o[d];
        dk[d] += s * q[d];
    }
}

/* the 4-row term of one dK/dV row, in row order */
static inline void kv_axpy4(float *restrict dv, float *restrict dk, const float *p, const float *const *o,
                            const float *s, const float *const *q, int64_t D) {
    float p0 = p[0], p1 = p[1], p2 = p[2], p3 = p[3], s0 = s[0], s1 = s[1], s2 = s[2], s3 = s[3];
    const float *o0 = o[0], *o1 = o[1], *o2 = o[2], *o3 = o[3], *q0 = q[0], *q1 = q[1], *q2 = q[2], *q3 = q[3];
#pragma omp simd
    for (int64_t d = 0; d < D; d++) {
        float x = dv[d], y = dk[d];
        x += p0 * o0[d];
        y += s0 * q0[d];
        x += p1 * o1[d];
        y += s1 * q1[d];
        x += p2 * o2[d];
        y += s2 * q2[d];
        x += p3 * o3[d];
        y += s3 * q3[d];
        dv[d] = x;
        dk[d] = y;
    }
}

/* dK/dV of a key block += the query block's terms (see the AVX-512 version); 4 rows per sweep of a
 * dK/dV row where all 4 see the key */
static inline void kv_sweep(float *restrict dV, float *restrict dK, const float *restrict P, const float *restrict dS,
                            const float *restrict dO, const float *restrict Qs, const int64_t *jns, int64_t nq,
                            int64_t jcap, int64_t D, const int64_t *kj, int64_t nkj) {
    int64_t ifirst = 0, n = jcap;
    if (kj) for (n = 0; n < nkj && kj[n] < jcap; n++) {}
    for (int64_t u = 0; u < n; u++) {
        int64_t j = kj ? kj[u] : u;
        while (ifirst < nq && jns[ifirst] <= j) ifirst++;
        float *dv = dV + j * D, *dk = dK + j * D;
        int64_t i = ifirst;
        for (; i + 4 <= nq; i += 4) {
            float pj[4] = {P[i * ATT_BC + j], P[(i + 1) * ATT_BC + j], P[(i + 2) * ATT_BC + j], P[(i + 3) * ATT_BC + j]};
            float sj[4] = {dS[i * ATT_BC + j], dS[(i + 1) * ATT_BC + j], dS[(i + 2) * ATT_BC + j],
                           dS[(i + 3) * ATT_BC + j]};
            const float *orow[4] = {dO + i * D, dO + (i + 1) * D, dO + (i + 2) * D, dO + (i + 3) * D};
            const float *qr[4] = {Qs + i * D, Qs + (i + 1) * D, Qs + (i + 2) * D, Qs + (i + 3) * D};
            kv_axpy4(dv, dk, pj, orow, sj, qr, D);
        }
        for (; i < nq; i++) kv_axpy(dv, dk, P[i * ATT_BC + j], dO + i * D, dS[i * ATT_BC + j], Qs + i * D, D);
    }
}
#endif

#if defined(__AVX512F__)
/* max of row[0, jn) (jn >= 1) */
static inline float att_row_max(const float *row, int64_t jn) {
    __m512 mx = _mm512_set1_ps(-INFINITY);
    for (int64_t j = 0; j < jn; j += 16)
        mx = _mm512_mask_max_ps(mx, att_mask(jn - j), mx, _mm512_maskz_loadu_ps(att_mask(jn - j), row + j));
    return _mm512_reduce_max_ps(mx);
}

/* row[j] = exp(row[j] - m) for j < jn; returns their sum */
static inline float att_row_exp(float *row, int64_t jn, float m) {
    __m512 mv = _mm512_set1_ps(m), acc = _mm512_setzero_ps();
    for (int64_t j = 0; j < jn; j += 16) {
        __mmask16 k = att_mask(jn - j);
        __m512 p = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, row + j), mv));
        _mm512_mask_storeu_ps(row + j, k, p);
        acc = _mm512_mask_add_ps(acc, k, acc, p);
    }
    return _mm512_reduce_add_ps(acc);
}

/* P = exp(P - L), dS = P * (dS - Di) for j < jn */
static inline void prob_finish(float *restrict P, float *restrict dS, float L, float Di, int64_t jn) {
    __m512 lv = _mm512_set1_ps(L), dv = _mm512_set1_ps(Di);
    for (int64_t j = 0; j < jn; j += 16) {
        __mmask16 k = att_mask(jn - j);
        __m512 p = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, P + j), lv));
        _mm512_mask_storeu_ps(P + j, k, p);
        _mm512_mask_storeu_ps(dS + j, k, _mm512_mul_ps(p, _mm512_sub_ps(_mm512_maskz_loadu_ps(k, dS + j), dv)));
    }
}
#else
static inline float att_row_max(const float *row, int64_t jn) {
    float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
    for (int64_t j = 0; j < jn; j++) mx = row[j] > mx ? row[j] : mx;
    return mx;
}

static inline float att_row_exp(float *row, int64_t jn, float m) {
    float ps = 0.0f;
#pragma omp simd reduction(+ : ps)
    for (int64_t j = 0; j < jn; j++) {
        float p = nc_expf_fast(row[j] - m);
        row[j] = p;
        ps += p;
    }
    return ps;
}

/* P = exp(P - L), dS = P * (dS - Di) for j < jn */
static inline void prob_finish(float *restrict P, float *restrict dS, float L, float Di, int64_t jn) {
#pragma omp simd
    for (int64_t j = 0; j < jn; j++) {
        float p = nc_expf_fast(P[j] - L);
        P[j] = p;
        dS[j] = p * (dS[j] - Di);
    }
}
#endif

/* number of keys of block [s0, s0+nk) visible to query t */
static inline int64_t visible(const attn_args *a, int64_t t, int64_t s0, int64_t nk) {
    if (!a->causal) return nk;
    int64_t lim = a->S - a->T + t - s0 + 1;
    return lim < 0 ? 0 : (lim < nk ? lim : nk);
}

/* ---- forward: one (b, h, query block) ------------------------------------------------------- */
void KFN(nc_k_attn_fwd_item)(const attn_args *a, int64_t item, float *scratch) {
    int64_t D = a->D, H = a->H, T = a->T, S = a->S;
    int64_t nqb = (T + ATT_BR - 1) / ATT_BR;
    int64_t qb = item % nqb, h = (item / nqb) % H, b = item / (nqb * H);
    int64_t hk = h / (H / a->Hkv);
    int64_t t0 = qb * ATT_BR, nq = T - t0 < ATT_BR ? T - t0 : ATT_BR;
    float *Qs = scratch, *acc = Qs + ATT_BR * D, *Kt = acc + ATT_BR * D, *Vb = Kt + ATT_BC * D;
    float *rows = Vb + ATT_BC * D, *m = rows + 4 * ATT_BC, *l = m + ATT_BR;
    load_rows(Qs, a->q, a->qs, b, t0, nq, h, D, a->scale);
    for (int64_t i = 0; i < nq; i++) { m[i] = -INFINITY; l[i] = 0.0f; }
    memset(acc, 0, (size_t)(nq * D) * sizeof(float));
    int64_t kend = S;
    if (a->causal) {
        kend = S - T + t0 + nq;
        if (kend > S) kend = S;
    }
    for (int64_t s0 = 0; s0 < kend; s0 += ATT_BC) {
        int64_t nk = kend - s0 < ATT_BC ? kend - s0 : ATT_BC;
        load_rows_t(Kt, a->k, a->ks, b, s0, nk, hk, D);
        load_rows(Vb, a->v, a->vs, b, s0, nk, hk, D, 1.0f);
        for (int64_t i0 = 0; i0 < nq; i0 += 4) {
            /* full groups of 4 rows: their scores as 4 x 16 register tiles (the same sums as dot_row),
             * over the last row's visible keys (visibility grows with t), and P V of the 4 rows
             * together, each P row zero past its visible keys (adds +-0: the same sums as row by row) */
            int64_t ng = nq - i0 < 4 ? nq - i0 : 4, jmax = 0;
            if (ng == 4) {
                jmax = visible(a, t0 + i0 + 3, s0, nk);
                if (jmax > 0) dot4(rows, Qs + i0 * D, Kt, D, jmax);
            }
            for (int64_t r = 0; r < ng; r++) {
                int64_t i = i0 + r, jn = visible(a, t0 + i, s0, nk);
                float *row = rows + r * ATT_BC;
                if (jn <= 0) {
                    for (int64_t j = 0; j < jmax; j++) row[j] = 0.0f;
                    continue;
                }
                if (ng < 4) dot_row(row, Qs + i * D, Kt, D, jn);
                float mx = att_row_max(row, jn);
                float mnew = mx > m[i] ? mx : m[i];
                float corr = m[i] == -INFINITY ? 0.0f : nc_expf_fast(m[i] - mnew);
                float ps = att_row_exp(row, jn, mnew);
                for (int64_t j = jn; j < jmax; j++) row[j] = 0.0f;
                l[i] = l[i] * corr + ps;
                m[i] = mnew;
                float *ai = acc + i * D;
                if (corr != 1.0f) {
#pragma omp simd
                    for (int64_t d = 0; d < D; d++) ai[d] *= corr;
                }
                if (ng < 4) axpy_rows(ai, row, Vb, D, jn);
            }
            if (jmax > 0) axpy4_rows(acc + i0 * D, rows, Vb, D, jmax);
        }
    }
    for (int64_t i = 0; i < nq; i++) {
        int64_t t = t0 + i;
        float *o = a->out + ((b * T + t) * H + h) * D;
        float inv = l[i] > 0.0f ? 1.0f / l[i] : 0.0f;
        const float *ai = acc + i * D;
#pragma omp simd
        for (int64_t d = 0; d < D; d++) o[d] = ai[d] * inv;
        a->lse[(b * H + h) * T + t] = l[i] > 0.0f ? m[i] + logf(l[i]) : -INFINITY;
    }
}

/* keys of block [s0, s0+nk) that carry gradient for query row t of head h (0 = none) */
static inline int64_t row_jn(const attn_args *a, int64_t b, int64_t h, int64_t t, int64_t s0, int64_t nk) {
    if (a->qkeep && !a->qkeep[b * a->T + t]) return 0;   /* a filtered query: no gradient flows */
    int64_t jn = visible(a, t, s0, nk);
    if (jn <= 0) return 0;
    if (a->lse_in[(b * a->H + h) * a->T + t] == -INFINITY) return 0;
    return jn;
}

static inline int64_t prob_row(const attn_args *a, int64_t b, int64_t h, int64_t t, int64_t s0, int64_t nk,
                               const float *qi, const float *doi, const float *Kt, const float *Vt, float *P,
                               float *dS) {
    int64_t jn = row_jn(a, b, h, t, s0, nk);
    if (jn <= 0) return 0;
    float L = a->lse_in[(b * a->H + h) * a->T + t];
    float Di = a->dvec[(b * a->H + h) * a->T + t];
    dot_row(P, qi, Kt, a->D, jn);
    dot_row(dS, doi, Vt, a->D, jn);
    prob_finish(P, dS, L, Di, jn);
    return jn;
}

/* ---- backward pass 1: one (b, kv head, key block) owns its dK and dV rows -------------------- */
/* key block kb of (b, kv head hk): its dK, dV rows; with dqloc (G x T x D, the group's dQ rows)
 * also dQ += dS K for every row it visits (the fused single pass) */
static void KFN(bwd_kv_block)(const attn_args *a, int64_t b, int64_t hk, int64_t kb, float *scratch, float *dqloc) {
    int64_t D = a->D, H = a->H, T = a->T, S = a->S, Hkv = a->Hkv, G = H / Hkv;
    int64_t s0 = kb * ATT_BC, nk = S - s0 < ATT_BC ? S - s0 : ATT_BC;
    float *Qs = scratch, *dO = Qs + ATT_BR * D, *Kt = dO + ATT_BR * D, *Vt = Kt + ATT_BC * D;
    float *dK = Vt + ATT_BC * D, *dV = dK + ATT_BC * D, *Kb = dV + ATT_BC * D, *P = Kb + ATT_BC * D;
    float *dS = P + ATT_BR * ATT_BC;
    /* Collider, self-attention (kkeep): dK / dV rows only for the kept keys (Centrifuge, algorithms.md
     * §8.4; the K/V projections drop the filtered rows anyway); those of filtered keys stay untouched */
    int64_t kj[ATT_BC], nkj = nk;
    if (a->kkeep) {
        nkj = 0;
        for (int64_t j = 0; j < nk; j++)
            if (a->kkeep[b * S + s0 + j]) kj[nkj++] = j;
        if (nkj == 0 && !dqloc) return;   /* nothing to compute for this key block */
    }
    if (dqloc) load_rows(Kb, a->k, a->ks, b, s0, nk, hk, D, a->scale);
    load_rows_t(Kt, a->k, a->ks, b, s0, nk, hk, D);
    load_rows_t(Vt, a->v, a->vs, b, s0, nk, hk, D);
    memset(dK, 0, (size_t)(nk * D) * sizeof(float));
    memset(dV, 0, (size_t)(nk * D) * sizeof(float));
    /* first query that sees key s0: S - T + t >= s0 */
    int64_t tfirst = a->causal ? s0 - (S - T) : 0;
    if (tfirst < 0) tfirst = 0;
    /* Collider (qkeep): a query block holds only its kept rows, compacted (rowi[i] = the row's offset
     * in the block), so filtered rows cost nothing; in the fused pass dqloc then holds the kept rows
     * only, in order (row rank0 + i), from rank0 = the kept rows before the block */
    int64_t rowi[ATT_BR], rank_first = 0;
    int64_t tstart = (tfirst / ATT_BR) * ATT_BR;
    if (a->qkeep)
        for (int64_t t = 0; t < tstart; t++) rank_first += a->qkeep[b * T + t];
    for (int64_t h = hk * G; h < (hk + 1) * G; h++) {
        int64_t rank0 = rank_first;
        for (int64_t t0 = tstart; t0 < T; t0 += ATT_BR) {
            int64_t nq = T - t0 < ATT_BR ? T - t0 : ATT_BR, dqb = t0;
            if (a->qkeep) {
                dqb = rank0;
                nq = kept_rows(a->qkeep, T, b, t0, nq, rowi);
                rank0 += nq;
                if (nq == 0) continue;
                load_rows_idx(Qs, a->q, a->qs, b, t0, rowi, nq, h, D, a->scale);
                load_rows_idx(dO, a->go, a->gs, b, t0, rowi, nq, h, D, 1.0f);
            } else {
                load_rows(Qs, a->q, a->qs, b, t0, nq, h, D, a->scale);
                load_rows(dO, a->go, a->gs, b, t0, nq, h, D, 1.0f);
            }
            /* P and dS of the whole query block first (rows in groups of 4 as 4 x 16 register tiles),
             * zero past each row's visible keys; then dK/dV take the block's terms row by row in
             * ascending order (the per-element order of the row-at-a-time loop) */
            int64_t jcap = 0, jns[ATT_BR];
            for (int64_t i = 0; i < nq; i++) {
                jns[i] = row_jn(a, b, h, t0 + (a->qkeep ? rowi[i] : i), s0, nk);
                if (jns[i] > jcap) jcap = jns[i];
            }
            if (jcap == 0) continue;
            for (int64_t i0 = 0; i0 < nq; i0 += 4) {
                int64_t ng = nq - i0 < 4 ? nq - i0 : 4, jmax = 0;
                for (int64_t r = 0; r < ng; r++) jmax = jns[i0 + r] > jmax ? jns[i0 + r] : jmax;
                float *Pg = P + i0 * ATT_BC, *dSg = dS + i0 * ATT_BC;
                if (jmax > 0 && ng == 4) {
                    dot4(Pg, Qs + i0 * D, Kt, D, jmax);
                    dot4(dSg, dO + i0 * D, Vt, D, jmax);
                }
                for (int64_t r = 0; r < ng; r++) {
                    int64_t i = i0 + r, jn = jns[i];
                    float *Pi = Pg + r * ATT_BC, *dSi = dSg + r * ATT_BC;
                    if (jn > 0) {
                        if (ng < 4) {
                            dot_row(Pi, Qs + i * D, Kt, D, jn);
                            dot_row(dSi, dO + i * D, Vt, D, jn);
                        }
                        int64_t ri = (b * H + h) * T + t0 + (a->qkeep ? rowi[i] : i);
                        prob_finish(Pi, dSi, a->lse_in[ri], a->dvec[ri], jn);
                        if (dqloc && ng < 4)   /* fused: dQ_i += dS_i K (blocks ascending, as in pass 2) */
                            axpy_rows(dqloc + ((h - hk * G) * T + dqb + i) * D, dSi, Kb, D, jn);
                    }
                    for (int64_t j = jn < 0 ? 0 : jn; j < jcap; j++) Pi[j] = dSi[j] = 0.0f;
                }
                /* a full group's dQ rows together (its zero dS entries past a row's keys add +-0 to
                 * sums that start at +0 and never are -0: the same bits as pass 2's row at a time) */
                if (dqloc && ng == 4 && jmax > 0)
                    axpy4_rows(dqloc + ((h - hk * G) * T + dqb + i0) * D, dSg, Kb, D, jmax);
            }
            kv_sweep(dV, dK, P, dS, dO, Qs, jns, nq, jcap, D, a->kkeep ? kj : NULL, nkj);
        }
    }
    for (int64_t j = 0; j < nk; j++) {
        if (a->kkeep && !a->kkeep[b * S + s0 + j]) continue;
        int64_t off = ((b * S + s0 + j) * Hkv + hk) * D;
        if (a->gk) {
            float *g = a->gk + off;
            const float *src = dK + j * D;
#pragma omp simd
            for (int64_t d = 0; d < D; d++) g[d] += src[d];
        }
        if (a->gv) {
            float *g = a->gv + off;
            const float *src = dV + j * D;
#pragma omp simd
            for (int64_t d = 0; d < D; d++) g[d] += src[d];
        }
    }
}

void KFN(nc_k_attn_bwd_kv_item)(const attn_args *a, int64_t item, float *scratch) {
    int64_t nkb = (a->S + ATT_BC - 1) / ATT_BC;
    KFN(bwd_kv_block)(a, item / (nkb * a->Hkv), (item / nkb) % a->Hkv, item % nkb, scratch, NULL);
}

/* ---- fused backward: one (b, kv head) owns dK, dV and the dQ rows of its query-head group ------
 * Key blocks ascending, so each dQ element is summed in the same order as pass 2's; the result is
 * bit-identical to the two passes (the choice between them does not change any number). */
void KFN(nc_k_attn_bwd_fused_item)(const attn_args *a, int64_t item, float *scratch) {
    int64_t D = a->D, H = a->H, T = a->T, S = a->S, Hkv = a->Hkv, G = H / Hkv;
    int64_t hk = item % Hkv, b = item / Hkv;
    float *dqloc = scratch + attn_scratch_floats(D);
    memset(dqloc, 0, (size_t)(G * T * D) * sizeof(float));
    for (int64_t kb = 0; kb < (S + ATT_BC - 1) / ATT_BC; kb++) KFN(bwd_kv_block)(a, b, hk, kb, scratch, dqloc);
    if (!a->gq) return;
    for (int64_t g = 0; g < G; g++) {
        int64_t h = hk * G + g;
        for (int64_t t = 0, r = 0; t < T; t++) {   /* with qkeep, dqloc row r = the r-th kept row */
            if (a->qkeep && !a->qkeep[b * T + t]) continue;
            float *dst = a->gq + ((b * T + t) * H + h) * D;
            const float *src = dqloc + (g * T + (a->qkeep ? r++ : t)) * D;
#pragma omp simd
            for (int64_t d = 0; d < D; d++) dst[d] += src[d];
        }
    }
}

/* ---- backward pass 2: one (b, head, query block) owns its dQ rows ---------------------------- */
void KFN(nc_k_attn_bwd_q_item)(const attn_args *a, int64_t item, float *scratch) {
    int64_t D = a->D, H = a->H, T = a->T, S = a->S;
    int64_t nqb = (T + ATT_BR - 1) / ATT_BR;
    int64_t qb = item % nqb, h = (item / nqb) % H, b = item / (nqb * H);
    int64_t hk = h / (H / a->Hkv);
    int64_t t0 = qb * ATT_BR, nq = T - t0 < ATT_BR ? T - t0 : ATT_BR;
    float *Qs = scratch, *dO = Qs + ATT_BR * D, *dQ = dO + ATT_BR * D, *Kt = dQ + ATT_BR * D;
    float *Vt = Kt + ATT_BC * D, *Kb = Vt + ATT_BC * D, *P = Kb + ATT_BC * D, *dS = P + 4 * ATT_BC;
    int64_t kend = S;
    if (a->causal) {
        kend = S - T + t0 + nq;
        if (kend > S) kend = S;
    }
    /* Collider (qkeep): the block's kept rows only, compacted (row i is t0 + rowi[i]) */
    int64_t rowi[ATT_BR];
    if (a->qkeep) {
        nq = kept_rows(a->qkeep, T, b, t0, nq, rowi);
        if (nq == 0) return;
        load_rows_idx(Qs, a->q, a->qs, b, t0, rowi, nq, h, D, a->scale);
        load_rows_idx(dO, a->go, a->gs, b, t0, rowi, nq, h, D, 1.0f);
    } else {
        for (int64_t i = 0; i < nq; i++) rowi[i] = i;
        load_rows(Qs, a->q, a->qs, b, t0, nq, h, D, a->scale);
        load_rows(dO, a->go, a->gs, b, t0, nq, h, D, 1.0f);
    }
    memset(dQ, 0, (size_t)(nq * D) * sizeof(float));
    for (int64_t s0 = 0; s0 < kend; s0 += ATT_BC) {
        int64_t nk = kend - s0 < ATT_BC ? kend - s0 : ATT_BC;
        load_rows(Kb, a->k, a->ks, b, s0, nk, hk, D, a->scale);
        load_rows_t(Kt, a->k, a->ks, b, s0, nk, hk, D);
        load_rows_t(Vt, a->v, a->vs, b, s0, nk, hk, D);
        for (int64_t i0 = 0; i0 < nq; i0 += 4) {
            if (i0 + 4 > nq) {   /* a partial group: row at a time */
                for (int64_t i = i0; i < nq; i++) {
                    int64_t jn = prob_row(a, b, h, t0 + rowi[i], s0, nk, Qs + i * D, dO + i * D, Kt, Vt, P, dS);
                    axpy_rows(dQ + i * D, dS, Kb, D, jn);
                }
                continue;
            }
            /* 4 rows: the same P, dS bits as prob_row (dot4 == dot_row), zero past each row's keys */
            int64_t jns[4], jmax = 0;
            for (int r = 0; r < 4; r++) {
                jns[r] = row_jn(a, b, h, t0 + rowi[i0 + r], s0, nk);
                jmax = jns[r] > jmax ? jns[r] : jmax;
            }
            if (jmax == 0) continue;
            dot4(P, Qs + i0 * D, Kt, D, jmax);
            dot4(dS, dO + i0 * D, Vt, D, jmax);
            for (int r = 0; r < 4; r++) {
                float *Pr = P + r * ATT_BC, *dSr = dS + r * ATT_BC;
                if (jns[r] > 0) {
                    int64_t ri = (b * H + h) * T + t0 + rowi[i0 + r];
                    prob_finish(Pr, dSr, a->lse_in[ri], a->dvec[ri], jns[r]);
                }
                for (int64_t j = jns[r]; j < jmax; j++) Pr[j] = dSr[j] = 0.0f;
            }
            axpy4_rows(dQ + i0 * D, dS, Kb, D, jmax);
        }
    }
    for (int64_t i = 0; i < nq; i++) {
        float *g = a->gq + ((b * T + t0 + rowi[i]) * H + h) * D;
        const float *src = dQ + i * D;
#pragma omp simd
        for (int64_t d = 0; d < D; d++) g[d] += src[d];
    }
}

#ifdef NC_KPRIMARY
void nc_k_attn_fwd_item_avx2(const attn_args *a, int64_t item, float *scratch);
void nc_k_attn_bwd_kv_item_avx2(const attn_args *a, int64_t item, float *scratch);
void nc_k_attn_bwd_q_item_avx2(const attn_args *a, int64_t item, float *scratch);
void nc_k_attn_bwd_fused_item_avx2(const attn_args *a, int64_t item, float *scratch);
void nc_k_attn_fwd_item_avx512(const attn_args *a, int64_t item, float *scratch);
void nc_k_attn_bwd_kv_item_avx512(const attn_args *a, int64_t item, float *scratch);
void nc_k_attn_bwd_q_item_avx512(const attn_args *a, int64_t item, float *scratch);
void nc_k_attn_bwd_fused_item_avx512(const attn_args *a, int64_t item, float *scratch);

/* the build of an item kernel the kernel selection picks (scalar / avx2 / avx512) */
#define ATT_PICK(name) (nc_cpu_avx512() ? name##_avx512 : nc_cpu_avx2() ? name##_avx2 : name##_base)

typedef void (*attn_item_fn)(const attn_args *, int64_t, float *);

/* Run fn over items in parallel, each thread with its own scratch tile set. */
static nc_status run_items(const char *op, attn_item_fn fn, const attn_args *a, int64_t items, double flops,
                           int64_t extra) {
    int64_t nfl = attn_scratch_floats(a->D) + extra;
    int oom = 0;
#pragma omp parallel if (items > 1 && flops > 2e5) num_threads(nc_threads())
    {
        float *scratch = nc_host_alloc(nfl * (int64_t)sizeof(float));
        if (!scratch) {
#pragma omp atomic write
            oom = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < items; it++)
            if (scratch) fn(a, it, scratch);
        nc_host_free(scratch, nfl * (int64_t)sizeof(float));
    }
    if (oom) return nc_fail(NC_ERR_OOM, "%s: out of memory for attention scratch tiles", op);
    return NC_OK;
}

static void strides4(int64_t *dst, const nc_tensor *t) {
    for (int d = 0; d < 4; d++) dst[d] = t->shape[d] > 1 ? t->strides[d] : 0;
}

static nc_status check_qkv(const char *op, const nc_tensor *q, const nc_tensor *k, const nc_tensor *v, int32_t dev) {
    NC_TRY(nc_check_f32_on(op, "q", q, dev));
    NC_TRY(nc_check_f32_on(op, "k", k, dev));
    NC_TRY(nc_check_f32_on(op, "v", v, dev));
    NC_TRY(nc_check_ndim(op, "q", q, 4));
    NC_TRY(nc_check_ndim(op, "k", k, 4));
    NC_TRY(nc_check_same_shape(op, "k", k, "v", v));
    char bq[NC_DESC_LEN], bk[NC_DESC_LEN];
    if (k->shape[0] != q->shape[0] || k->shape[3] != q->shape[3] || k->shape[2] == 0 || q->shape[2] % k->shape[2])
        return nc_fail(NC_ERR_SHAPE,
                       "%s: expected q (B, T, H, D) and k, v (B, S, Hkv, D) with H %% Hkv == 0, got q %s and k %s", op,
                       nc_describe(q, bq, sizeof bq), nc_describe(k, bk, sizeof bk));
    return NC_OK;
}

static void fill_args(attn_args *a, const nc_tensor *q, const nc_tensor *k, const nc_tensor *v, int32_t causal,
                      double scale) {
    memset(a, 0, sizeof *a);
    a->B = q->shape[0]; a->T = q->shape[1]; a->H = q->shape[2]; a->D = q->shape[3];
    a->S = k->shape[1]; a->Hkv = k->shape[2];
    a->causal = causal != 0;
    a->scale = (float)scale;
    a->q = nc_f32p(q); a->k = nc_f32p(k); a->v = nc_f32p(v);
    strides4(a->qs, q); strides4(a->ks, k); strides4(a->vs, v);
}

/* the CUDA kernels' geometry (core/backend.h nc_cuda_attn) of the checked arguments */
static nc_cuda_attn cuda_geo(const attn_args *a, const nc_tensor *out, const nc_tensor *gout) {
    nc_cuda_attn g;
    memset(&g, 0, sizeof g);
    g.B = a->B; g.T = a->T; g.S = a->S; g.H = a->H; g.Hkv = a->Hkv; g.D = a->D;
    g.causal = a->causal;
    g.scale = a->scale;
    memcpy(g.qs, a->qs, sizeof g.qs);
    memcpy(g.ks, a->ks, sizeof g.ks);
    memcpy(g.vs, a->vs, sizeof g.vs);
    if (out) strides4(g.os, out);
    if (gout) strides4(g.gs, gout);
    return g;
}

nc_status nc_attention(nc_tensor *out, nc_tensor *lse, const nc_tensor *q, const nc_tensor *k, const nc_tensor *v,
                       int32_t causal, double scale) {
    static const char *op = "attention";
    int32_t dev = NC_DEV_OF(out, lse, q, k, v);
    NC_TRY(check_qkv(op, q, k, v, dev));
    NC_TRY(nc_check_f32_on(op, "out", out, dev));
    NC_TRY(nc_check_contiguous(op, "out", out));
    NC_TRY(nc_check_same_shape(op, "out", out, "q", q));
    NC_TRY(nc_check_f32_on(op, "lse", lse, dev));
    NC_TRY(nc_check_contiguous(op, "lse", lse));
    int64_t lshape[3] = {q->shape[0], q->shape[2], q->shape[1]};
    NC_TRY(nc_check_shape(op, "lse", lse, 3, lshape));
    attn_args a;
    fill_args(&a, q, k, v, causal, scale);
    a.out = nc_f32p(out);
    a.lse = nc_f32p(lse);
    if (dev == NC_CUDA) {
        const nc_cuda_api *cu = nc_cuda_for(op);
        if (!cu) return NC_ERR_DEVICE;
        if (a.B * a.T * a.H == 0) return NC_OK;
        nc_status st;
        if (a.D == 0 || a.S == 0) {   /* the degenerate cases of the CPU path below */
            st = cu->fill(a.out, a.B * a.T * a.H * a.D, NC_F32, 0.0);
            if (st == NC_OK)
                st = cu->fill(a.lse, a.B * a.H * a.T, NC_F32, a.S == 0 ? -INFINITY : (double)logf((float)a.S));
        } else {
            nc_cuda_attn g = cuda_geo(&a, NULL, NULL);
            st = cu->attention(a.out, a.lse, a.q, a.k, a.v, &g);
        }
        return st == NC_OK ? NC_OK : nc_cuda_err(op, cu, st);
    }
    if (a.B * a.T * a.H == 0) return NC_OK;
    if (a.D == 0 || a.S == 0) {
        /* no keys: out 0, lse -inf; empty head dim: every score is 0, lse = log S */
        for (int64_t i = 0; i < a.B * a.T * a.H * a.D; i++) a.out[i] = 0.0f;
        for (int64_t i = 0; i < a.B * a.H * a.T; i++) a.lse[i] = a.S == 0 ? -INFINITY : logf((float)a.S);
        return NC_OK;
    }
    int64_t items = a.B * a.H * ((a.T + ATT_BR - 1) / ATT_BR);
    double flops = 4.0 * a.B * a.H * a.T * a.S * a.D;
    return run_items(op, ATT_PICK(nc_k_attn_fwd_item), &a, items, flops, 0);
}

static nc_status attn_bwd(const char *op, nc_tensor *gq, nc_tensor *gk, nc_tensor *gv, const nc_tensor *out,
                          const nc_tensor *lse, const nc_tensor *q, const nc_tensor *k, const nc_tensor *v,
                          const nc_tensor *gout, const nc_tensor *qkeep, int32_t causal, double scale) {
    if (!gq && !gk && !gv) return NC_OK;
    int32_t dev = NC_DEV_OF(gq, gk, gv, out, lse, q, k, v, gout, qkeep);
    NC_TRY(check_qkv(op, q, k, v, dev));
    NC_TRY(nc_check_f32_on(op, "out", out, dev));
    NC_TRY(nc_check_same_shape(op, "out", out, "q", q));
    NC_TRY(nc_check_f32_on(op, "gout", gout, dev));
    NC_TRY(nc_check_same_shape(op, "gout", gout, "q", q));
    NC_TRY(nc_check_f32_on(op, "lse", lse, dev));
    NC_TRY(nc_check_contiguous(op, "lse", lse));
    int64_t lshape[3] = {q->shape[0], q->shape[2], q->shape[1]};
    NC_TRY(nc_check_shape(op, "lse", lse, 3, lshape));
    if (gq) {
        NC_TRY(nc_check_f32_on(op, "gq", gq, dev));
        NC_TRY(nc_check_contiguous(op, "gq", gq));
        NC_TRY(nc_check_same_shape(op, "gq", gq, "q", q));
    }
    if (gk) {
        NC_TRY(nc_check_f32_on(op, "gk", gk, dev));
        NC_TRY(nc_check_contiguous(op, "gk", gk));
        NC_TRY(nc_check_same_shape(op, "gk", gk, "k", k));
    }
    if (gv) {
        NC_TRY(nc_check_f32_on(op, "gv", gv, dev));
        NC_TRY(nc_check_contiguous(op, "gv", gv));
        NC_TRY(nc_check_same_shape(op, "gv", gv, "v", v));
    }
    if (qkeep) {
        NC_TRY(nc_check_device(op, "qkeep", qkeep, dev));
        NC_TRY(nc_check_dtype(op, "qkeep", qkeep, NC_U8));
        NC_TRY(nc_check_contiguous(op, "qkeep", qkeep));
        int64_t kshape[2] = {q->shape[0], q->shape[1]};
        NC_TRY(nc_check_shape(op, "qkeep", qkeep, 2, kshape));
    }
    attn_args a;
    fill_args(&a, q, k, v, causal, scale);
    a.qkeep = qkeep ? (const uint8_t *)nc_ptr(qkeep) : NULL;
    a.kkeep = a.qkeep && a.S == a.T && dev == NC_CPU ? a.qkeep : NULL;   /* self-attention: key s is token s */
    if (dev == NC_CUDA) {
        const nc_cuda_api *cu = nc_cuda_for(op);
        if (!cu) return NC_ERR_DEVICE;
        if (a.B * a.T * a.H == 0 || a.S == 0 || a.D == 0) return NC_OK;
        nc_tensor *dv = nc_cuda_buffer(op, NC_F32, a.B * a.H * a.T);
        if (!dv) return NC_ERR_OOM;
        nc_cuda_attn g = cuda_geo(&a, out, gout);
        nc_status st = cu->attention_backward(gq ? nc_f32p(gq) : NULL, gk ? nc_f32p(gk) : NULL, gv ? nc_f32p(gv) : NULL,
                                              nc_f32p(out), nc_f32p(lse), a.q, a.k, a.v, nc_f32p(gout), a.qkeep, &g,
                                              nc_f32p(dv));
        nc_tensor_release(dv);
        return st == NC_OK ? NC_OK : nc_cuda_err(op, cu, st);
    }
    if (a.B * a.T * a.H == 0 || a.S == 0 || a.D == 0) return NC_OK;
    a.o = nc_f32p(out);
    a.go = nc_f32p(gout);
    strides4(a.os, out);
    strides4(a.gs, gout);
    a.lse_in = nc_f32p(lse);
    a.gq = gq ? nc_f32p(gq) : NULL;
    a.gk = gk ? nc_f32p(gk) : NULL;
    a.gv = gv ? nc_f32p(gv) : NULL;
    /* D = rowsum(dO * O), (B, H, T) */
    int64_t nrow = a.B * a.H * a.T;
    float *dvec = nc_host_alloc(nrow * (int64_t)sizeof(float));
    if (!dvec) return NC_ERR_OOM;
#pragma omp parallel for schedule(static) if (nrow * a.D >= NC_PAR_MIN) num_threads(nc_threads())
    for (int64_t r = 0; r < nrow; r++) {
        int64_t t = r % a.T, h = (r / a.T) % a.H, b = r / (a.T * a.H);
        if (a.qkeep && !a.qkeep[b * a.T + t]) { dvec[r] = 0.0f; continue; }
        const float *o = a.o + b * a.os[0] + t * a.os[1] + h * a.os[2];
        const float *g = a.go + b * a.gs[0] + t * a.gs[1] + h * a.gs[2];
        float s = 0.0f;
        for (int64_t d = 0; d < a.D; d++) s += o[d * a.os[3]] * g[d * a.gs[3]];
        dvec[r] = s;
    }
    a.dvec = dvec;
    double flops = 4.0 * a.B * a.H * a.T * a.S * a.D;
    nc_status st = NC_OK;
    int64_t G = a.H / a.Hkv, fitems = a.B * a.Hkv;
    int64_t nth = nc_threads();
    if (gq && (gk || gv) && (nth == 1 || fitems >= 4 * nth)) {
        /* one thread, or enough (b, kv head) items to keep the threads busy: one fused pass computes
         * P and dS once (scratch O(T D) per thread: the group's dQ rows) */
        st = run_items(op, ATT_PICK(nc_k_attn_bwd_fused_item), &a, fitems, flops,
                       G * a.T * a.D);
        gq = NULL; gk = NULL; gv = NULL;
    }
    if (gk || gv) {
        int64_t items = a.B * a.Hkv * ((a.S + ATT_BC - 1) / ATT_BC);
        st = run_items(op, ATT_PICK(nc_k_attn_bwd_kv_item), &a, items, flops, 0);
    }
    if (st == NC_OK && gq) {
        int64_t items = a.B * a.H * ((a.T + ATT_BR - 1) / ATT_BR);
        st = run_items(op, ATT_PICK(nc_k_attn_bwd_q_item), &a, items, flops, 0);
    }
    nc_host_free(dvec, nrow * (int64_t)sizeof(float));
    return st;
}

nc_status nc_attention_backward(nc_tensor *gq, nc_tensor *gk, nc_tensor *gv, const nc_tensor *out,
                                const nc_tensor *lse, const nc_tensor *q, const nc_tensor *k, const nc_tensor *v,
                                const nc_tensor *gout, int32_t causal, double scale) {
    return attn_bwd("attention_backward", gq, gk, gv, out, lse, q, k, v, gout, NULL, causal, scale);
}

nc_status nc_attention_backward_masked(nc_tensor *gq, nc_tensor *gk, nc_tensor *gv, const nc_tensor *out,
                                       const nc_tensor *lse, const nc_tensor *q, const nc_tensor *k,
                                       const nc_tensor *v, const nc_tensor *gout, const nc_tensor *qkeep,
                                       int32_t causal, double scale) {
    if (!qkeep) return nc_fail(NC_ERR_ARG, "attention_backward_masked: qkeep is NULL (use nc_attention_backward)");
    return attn_bwd("attention_backward_masked", gq, gk, gv, out, lse, q, k, v, gout, qkeep, causal, scale);
}
#endif
