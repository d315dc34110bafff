/* kernels/cpu/engine.c — one decode step of the packed ternary GPT, all layers in one call.
 *
 * Promise: nc_engine_decode advances B sequences by one token (all at position pos) — or by a short
 * chunk of cfg->n_pos tokens each (positions pos .. pos + n_pos - 1, causal within the chunk: each
 * row attends to the cache up to its own position; used for speculative verification); with
 * cfg->seq_pos / cfg->seq_slot each sequence has its own position and its own cache row
 * (continuous batching: sequences join and leave a batch at any position) — through every
 * layer of a packed model (core/nanochat.h, inference section): the same math as the op-by-op
 * engine path (lua/nanochat/engine.lua, forward_cached with T = 1) — parameter-free RMSNorm
 * (double-accumulated mean square), per-token int8 activations with exactly nc_ternary_quant_act's
 * codes, the packed GEMV kernels of ternary*.c, optional QK-norm, half-split RoPE, causal
 * attention over the cache with GQA, ReLU² or SwiGLU, optional SubLN gains — with one OpenMP
 * parallel region for the whole step instead of one fork-join per op and no Lua per op.
 * Split and syncs: the q/k/v GEMVs by whole KV-head groups (thread t: KV heads
 * [Hkv t / T, Hkv (t + 1) / T) with their query heads; the default when T divides n_kv_head), so
 * the thread that computed a head's q/k/v also writes its K/V to the cache and runs its attention,
 * with no sync in between; the o, up and down GEMVs by 16-row chunks of their outputs (the same
 * row kernel as nc_ternary_matmul). The small per-token steps between the GEMVs (norm + int8
 * quantization of a row of d, n_head head_dim or d_ff floats, the MLP activation) run on EVERY
 * thread for every row, each into its own buffers: the same arithmetic, so every thread gets the
 * same codes, and no single-thread section with its second barrier. So a layer has 4 syncs, one
 * per GEMV stage (after attention, after o + residual, after up, after down + residual): with
 * exact per-token absmax quantization each GEMV's input needs the whole output row of the stage
 * before, i.e. every other thread's rows — the minimum while all 4 GEMVs are split (README).
 * Options (nc_engine_cfg split / o_full / barrier): the q/k/v by rows (the fallback when T does
 * not divide n_kv_head: one more sync, then each (sequence, KV head) pair's cache write +
 * attention on one thread), the o-projection whole on every thread (one sync fewer, its weights
 * read T times), `omp barrier` instead of the spin barrier below. Every option gives the same
 * bits: the GEMV rows come from the same kernel, and each norm, attention head and activation
 * runs the same code on the same values whichever thread runs it. The GEMV results are
 * bit-identical to nc_ternary_matmul's; norm, attention and activation arithmetic differ from the
 * op path only in summation order (float rounding).
 * Every row's arithmetic depends only on its own sequence (the GEMV reads each weight row once for
 * all rows but sums each row's int32 dot exactly), so a sequence decoded in a batch of others, at
 * any positions, gets bit-identical results to the same sequence decoded alone.
 * mHC (cfg->mhc_n = n > 0): x holds each row's n residual streams (n d floats); each sublayer's
 * branch input is the pre-mixed h = sum_j H_pre[j] x[j] and its output y is mixed back as
 * x'[i] = sum_j H_res[i][j] x[j] + H_post[i] y (nanochat.mhc's Layer:forward), with the coefficients
 * from the dynamic projection + lite / Sinkhorn — with mhc.c's row kernels (threads split the
 * projection's outputs, then a token per thread; 3 more syncs per sublayer with dynamic
 * coefficients, 2 with static ones). Only the
 * projection's summation order differs from the op path (sgemm there): equal up to float
 * rounding; still row-wise exact.
 */
#include "nn_common.h"
#include "engine_attn.h"
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* ternary.c: the row kernel behind nc_ternary_matmul (AVX2 or scalar by nc_cpu_avx2()) and the
 * activation quantizer of one contiguous row */
void nc_k_ternary_rows(float *y, int64_t M, int64_t N, const int8_t *q, const float *act_inv, const int32_t *act_sum,
                       const uint8_t *w, const float *gamma, int64_t kp, int64_t n0, int64_t n1, int avx2);
int32_t nc_k_ternary_quant_row(int8_t *q, float *s, const float *x, int64_t xs, int64_t k, int64_t kp, float eps,
                               int avx2);

/* mhc.c: the mHC row kernels (the same ones nc_mhc_pre / _post / _coef_* run per token) */
void nc_k_mhc_pre_row_base(float *, const float *, const float *, int64_t, int64_t);
void nc_k_mhc_pre_row_avx2(float *, const float *, const float *, int64_t, int64_t);
void nc_k_mhc_post_row_base(float *, const float *, const float *, const float *, const float *, int64_t, int64_t);
void nc_k_mhc_post_row_avx2(float *, const float *, const float *, const float *, const float *, int64_t, int64_t);
void nc_k_mhc_coef_lite_row(float *c, float *wr, const float *pj, const float *al, const float *b, const float *P,
                            int64_t n, int64_t R);
void nc_k_mhc_coef_sinkhorn_row(float *c, float *Y, const float *pj, const float *al, const float *b, int64_t n,
                                int32_t iters);
void nc_k_mhc_proj_dots_base(float *, int64_t, const float *, int64_t, int64_t, const float *, int64_t, int64_t,
                             int64_t);
void nc_k_mhc_proj_dots_avx2(float *, int64_t, const float *, int64_t, int64_t, const float *, int64_t, int64_t,
                             int64_t);
float nc_k_mhc_rstd_base(const float *, int64_t, double);
float nc_k_mhc_rstd_avx2(const float *, int64_t, double);

#define QEPS 1e-5f   /* nc.quant_act / infer.quant_act default */

static void rms_row(float *y, const float *x, const float *w, int64_t D, double eps) {
    double ss = 0.0;
    for (int64_t j = 0; j < D; j++) ss += (double)x[j] * (double)x[j];
    float inv = (float)(1.0 / sqrt(ss / (double)(D ? D : 1) + eps));
    if (w)
        for (int64_t j = 0; j < D; j++) y[j] = x[j] * inv * w[j];
    else
        for (int64_t j = 0; j < D; j++) y[j] = x[j] * inv;
}

/* engine_avx2.c: the AVX2 twin of attn_head below (the same bits), and the same for two query heads
 * of one KV head at once (each key and value row read once for both) */
void nc_k_engine_attn_avx2(float *o, const float *q, const float *K, const float *V, int64_t stride, int64_t S,
                           int64_t hd, float scale, float *sc);
void nc_k_engine_attn2_avx2(float *o0, float *o1, const float *q0, const float *q1, const float *K, const float *V,
                            int64_t stride, int64_t S, int64_t hd, float scale, float *sc0, float *sc1);

/* o (hd) = attention of query q over S cached positions, key / value row j at K / V + j * stride,
 * in engine_attn.h's lane-8 arithmetic; sc: S floats of scratch. The scalar reference; with AVX2
 * the kernel in engine_avx2.c (bit-identical). */
static void attn_head(float *o, const float *q, const float *K, const float *V, int64_t stride, int64_t S, int64_t hd,
                      float scale, float *sc, int avx2) {
    if (avx2) {
        nc_k_engine_attn_avx2(o, q, K, V, stride, S, hd, scale, sc);
        return;
    }
    float m = -INFINITY;
    for (int64_t j = 0; j < S; j++) {
        const float *kr = K + j * stride;
        float a[8] = { 0 };
        for (int64_t e0 = 0; e0 < hd; e0 += 8)
            for (int l = 0; l < 8; l++) {
                int64_t e = e0 + l;
                a[l] = e < hd ? fmaf(q[e], kr[e], a[l]) : fmaf(0.0f, 0.0f, a[l]);
            }
        sc[j] = nc_attn_hsum8(a) * scale;
        m = sc[j] > m ? sc[j] : m;
    }
    float a[8] = { 0 };
    for (int64_t j = 0; j < S; j++) {
        sc[j] = nc_attn_exp(sc[j] - m);
        a[j % 8] += sc[j];
    }
    float l = nc_attn_hsum8(a);
    for (int64_t e = 0; e < hd; e++) o[e] = 0.0f;
    for (int64_t j = 0; j < S; j++) {
        const float *vr = V + j * stride;
        float pj = sc[j] / l;
        for (int64_t e = 0; e < hd; e++) o[e] = fmaf(pj, vr[e], o[e]);
    }
}

/* the G query heads of one KV head (GQA): o, q (G, hd) rows; sc: 2 S floats of scratch. With AVX2
 * the heads go in pairs through nc_k_engine_attn2_avx2 (at long context the cache reads dominate a
 * decode step, and a pair reads each K / V row once); every head's result is attn_head's, bit for
 * bit, whichever way it is computed. */
static void attn_group(float *o, const float *q, const float *K, const float *V, int64_t stride, int64_t S, int64_t hd,
                       float scale, float *sc, int64_t G, int avx2) {
    int64_t g = 0;
    if (avx2)
        for (; g + 2 <= G; g += 2)
            nc_k_engine_attn2_avx2(o + g * hd, o + (g + 1) * hd, q + g * hd, q + (g + 1) * hd, K, V, stride, S, hd,
                                   scale, sc, sc + S);
    for (; g < G; g++) attn_head(o + g * hd, q + g * hd, K, V, stride, S, hd, scale, sc, avx2);
}

static void rope_row(float *x, const float *c, const float *s, int64_t D) {
    int64_t h = D / 2;
    for (int64_t i = 0; i < h; i++) {
        float x1 = x[i], x2 = x[i + h];
        x[i] = x1 * c[i] + x2 * s[i];
        x[i + h] = x2 * c[i] - x1 * s[i];
    }
}

/* [n0, n1) of N rows for thread tid of nt, in 16-row chunks */
static void split(int64_t N, int tid, int nt, int64_t *n0, int64_t *n1) {
    int64_t chunks = (N + 15) / 16;
    int64_t c0 = chunks * tid / nt, c1 = chunks * (tid + 1) / nt;
    *n0 = c0 * 16 < N ? c0 * 16 : N;
    *n1 = c1 * 16 < N ? c1 * 16 : N;
}

typedef struct {
    int8_t *q;      /* (B, kp) codes */
    float *inv;     /* (B) 1 / s */
    int32_t *sum;   /* (B) */
    int64_t kp;
} qbuf;

static void gemv(float *y, const qbuf *a, int64_t B, const nc_tensor *w, const nc_tensor *g, int tid, int nt,
                 int avx2) {
    int64_t N = w->shape[0], n0, n1;
    split(N, tid, nt, &n0, &n1);
    if (n0 < n1)
        nc_k_ternary_rows(y, B, N, a->q, a->inv, a->sum, (const uint8_t *)nc_tensor_data(w), nc_f32p(g), a->kp, n0, n1,
                          avx2);
}

/* rows [n0, n1) of y (R, N) = a W^T on the calling thread */
static void rows_range(float *y, const qbuf *a, int64_t B, const nc_tensor *w, const nc_tensor *g, int64_t n0,
                       int64_t n1, int avx2) {
    if (n0 < n1)
        nc_k_ternary_rows(y, B, w->shape[0], a->q, a->inv, a->sum, (const uint8_t *)nc_tensor_data(w), nc_f32p(g),
                          a->kp, n0, n1, avx2);
}

static double nc_now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* row b of a: codes of rmsnorm(x) (* gain) */
static void norm_quant(qbuf *a, int64_t b, float *row, const float *x, const nc_tensor *gain, int64_t k, double eps,
                       int avx2) {
    rms_row(row, x, gain ? nc_f32p(gain) : NULL, k, eps);
    float s;
    a->sum[b] = nc_k_ternary_quant_row(a->q + b * a->kp, &s, row, 1, k, a->kp, QEPS, avx2);
    a->inv[b] = 1.0f / s;
}

/* X (B, d) += a W^T on this thread's rows of W (an output projection + the residual) */
static void gemv_residual(float *X, float *yo, const qbuf *a, int64_t B, int64_t d, const nc_tensor *w,
                          const nc_tensor *g, int tid, int nt, int avx2) {
    int64_t n0, n1;
    split(d, tid, nt, &n0, &n1);
    if (n0 >= n1) return;
    nc_k_ternary_rows(yo, B, d, a->q, a->inv, a->sum, (const uint8_t *)nc_tensor_data(w), nc_f32p(g), a->kp, n0, n1,
                      avx2);
    for (int64_t b = 0; b < B; b++)
        for (int64_t n = n0; n < n1; n++) X[b * d + n] += yo[b * d + n];
}

static nc_status check_packed_w(const char *op, const char *name, int li, const nc_tensor *w, const nc_tensor *s,
                                int64_t N, int64_t K) {
    if (!w || !s) return nc_fail(NC_ERR_ARG, "%s: layer %d: %s or its scale is NULL", op, li, name);
    int64_t kp = nc_ternary_kpad(K);
    if (w->dtype != NC_U8 || w->device != NC_CPU || w->ndim != 2 || w->shape[0] != N || w->shape[1] != kp / 4 ||
        !nc_tensor_is_contiguous(w))
        return nc_fail(NC_ERR_SHAPE, "%s: layer %d: %s must be packed u8 (%lld, %lld) on the cpu, contiguous", op, li,
                       name, (long long)N, (long long)(kp / 4));
    if (s->dtype != NC_F32 || s->device != NC_CPU || nc_tensor_numel(s) != N || !nc_tensor_is_contiguous(s))
        return nc_fail(NC_ERR_SHAPE, "%s: layer %d: %s's row scale must be f32 (%lld) contiguous", op, li, name,
                       (long long)N);
    return NC_OK;
}

/* ---- the syncs of the parallel region ----
 * A sense-reversing (generation-counting) spin barrier on one cache line: a thread reads the
 * generation, arrives (atomic add on the count); the last to arrive resets the count and bumps the
 * generation (release), the others spin on it (acquire) with a pause, then yield the CPU after
 * NC_SPIN_PAUSES pauses (an oversubscribed machine: the thread we wait for may need our core).
 * The acq_rel arrival + release bump + acquire spin order every write before the barrier before
 * every read after it. cfg->barrier = 1 uses `#pragma omp barrier` at the same places instead. */
#define NC_SPIN_PAUSES 4000
typedef struct {
    _Alignas(64) atomic_int count;
    atomic_uint gen;
    char pad[64 - sizeof(atomic_int) - sizeof(atomic_uint)];
} spin_bar;

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static void spin_bar_wait(spin_bar *b, int T) {
    unsigned g = atomic_load_explicit(&b->gen, memory_order_acquire);
    if (atomic_fetch_add_explicit(&b->count, 1, memory_order_acq_rel) == T - 1) {
        atomic_store_explicit(&b->count, 0, memory_order_relaxed);
        atomic_store_explicit(&b->gen, g + 1u, memory_order_release);
        return;
    }
    for (int i = 0; atomic_load_explicit(&b->gen, memory_order_acquire) == g; i++) {
        if (i < NC_SPIN_PAUSES) cpu_relax();
        else sched_yield();
    }
}

/* one thread's view of the region's syncs; n counts the syncs this thread passed */
typedef struct {
    spin_bar *bar;
    int T, omp;
    int64_t n;
} syncer;

static void sync_all(syncer *s) {
    if (s->T < 2) return;
    s->n++;
    if (s->omp) {
#pragma omp barrier
    } else
        spin_bar_wait(s->bar, s->T);
}

static int64_t last_syncs;   /* syncs of the last nc_engine_decode call (thread 0's count) */
int64_t nc_engine_last_syncs(void) { return last_syncs; }

/* the q/k/v split of T threads: 1 = heads (each thread the q/k/v rows of whole KV-head groups,
 * [Hkv t / T, Hkv (t + 1) / T)), 0 = rows (16-row chunks of each projection). Auto: heads when T
 * divides n_kv_head (balanced), rows otherwise. */
static int heads_split(const nc_engine_cfg *cfg, int T) {
    if (cfg->split == 1) return 0;
    if (cfg->split == 2) return 1;
    return cfg->n_kv_head % T == 0;
}
/* the o-projection computed whole on every thread (drops the sync between o and the MLP up);
 * only without mHC (its post-mix needs the whole branch output) */
static int o_full(const nc_engine_cfg *cfg) { return cfg->o_full == 2 && cfg->mhc_n == 0; }

int32_t nc_engine_barriers_per_layer(const nc_engine_cfg *cfg, int32_t threads) {
    if (!cfg || threads < 2) return 0;
    int32_t n = heads_split(cfg, threads) ? 4 : 5;   /* [q/k/v rows], attention, o, up, down */
    if (cfg->mhc_n > 0) n += 2 + 2 * 2;              /* 2 post-mixes + 2 pre-mixes (dynamic: projection + coefficients) */
    else if (o_full(cfg)) n -= 1;
    return n;
}

/* nanoseconds per barrier of `kind` (0 spin, 1 omp) over iters barriers of a `threads` region */
double nc_engine_barrier_bench(int32_t kind, int64_t iters, int32_t threads) {
    spin_bar *bar = nc_host_alloc((int64_t)sizeof(spin_bar));
    if (!bar || threads < 1 || iters < 1) {
        if (bar) nc_host_free(bar, (int64_t)sizeof(spin_bar));
        return -1.0;
    }
    atomic_init(&bar->count, 0);
    atomic_init(&bar->gen, 0u);
    double t0 = 0, t1 = 0;
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        int T = 1;
#ifdef _OPENMP
        T = omp_get_num_threads();
#endif
        syncer sy = {bar, T, kind == 1, 0};
        sync_all(&sy);
#pragma omp master
        t0 = nc_now_s();
        for (int64_t i = 0; i < iters; i++) sync_all(&sy);
#pragma omp master
        t1 = nc_now_s();
    }
    nc_host_free(bar, (int64_t)sizeof(spin_bar));
    return (t1 - t0) * 1e9 / (double)iters;
}

/* mHC sublayer j of layer L, inside the parallel region (every thread calls it): the branch inputs
 * h (R, d) = sum_j H_pre[j] x[j] of every row, with the coefficients (c: [H_pre | H_post | H_res],
 * row stride cs) from the stream state X (R, W = n d). Dynamic layers: the projection's dots first
 * (threads split its K outputs; pr: (R, ps)), then per token (a token per thread) the rstd factor,
 * the lite / Sinkhorn coefficients (wk: the lite weights or Sinkhorn half-steps, stride ws) and the
 * pre-mix (rows round robin). Ends with a sync (every thread quantizes every row of h). */
static void mhc_pre(const nc_engine_layer *L, int j, const float *X, int64_t R, int64_t n, int64_t d, float *h,
                    float *c, int64_t cs, float *pr, int64_t ps, float *wk, int64_t ws, int32_t iters, double eps,
                    int avx2, int tid, int nt, syncer *sy) {
    const nc_tensor *phi = L->mhc_phi[j], *perms = L->mhc_perms[j];
    const int64_t W = n * d, Rp = perms ? perms->shape[0] : n * n, K = 2 * n + Rp;
    const float *al = phi ? nc_f32p(L->mhc_alpha[j]) : NULL, *b = nc_f32p(L->mhc_bias[j]);
    if (phi) {
        int64_t j0 = K * tid / nt, j1 = K * (tid + 1) / nt;
        (avx2 ? nc_k_mhc_proj_dots_avx2 : nc_k_mhc_proj_dots_base)(pr, ps, X, R, W, nc_f32p(phi), W, j0, j1);
        sync_all(sy);
    }
    for (int64_t r = tid; r < R; r += nt) {
        const float *x = X + r * W;
        float *cr = c + r * cs, *p = pr + r * ps;
        if (phi) {
            float inv = (avx2 ? nc_k_mhc_rstd_avx2 : nc_k_mhc_rstd_base)(x, W, eps);
            for (int64_t k = 0; k < K; k++) p[k] *= inv;
        }
        if (perms) nc_k_mhc_coef_lite_row(cr, wk + r * ws, phi ? p : NULL, al, b, nc_f32p(perms), n, Rp);
        else nc_k_mhc_coef_sinkhorn_row(cr, wk + r * ws, phi ? p : NULL, al, b, n, iters);
        (avx2 ? nc_k_mhc_pre_row_avx2 : nc_k_mhc_pre_row_base)(h + r * d, x, cr, n, d);
    }
    sync_all(sy);
}

/* the mHC parameters of layer li, sublayer j: K = 2n + R (R = perms rows, or n n for Sinkhorn) */
static nc_status check_mhc(const char *op, int li, int j, const nc_engine_layer *L, int64_t n, int64_t d,
                           int32_t iters, int64_t *Kout) {
    const char *sub = j ? "MLP" : "attention";
    const nc_tensor *phi = L->mhc_phi[j], *al = L->mhc_alpha[j], *b = L->mhc_bias[j], *P = L->mhc_perms[j];
    int64_t R = n * n;
    if (P) {
        if (P->dtype != NC_F32 || P->device != NC_CPU || P->ndim != 2 || P->shape[1] != n * n ||
            !nc_tensor_is_contiguous(P) || P->shape[0] < 1)
            return nc_fail(NC_ERR_SHAPE, "%s: layer %d: the %s mHC perms must be f32 (R, %lld) contiguous", op, li, sub,
                           (long long)(n * n));
        R = P->shape[0];
    } else if (iters < 1)
        return nc_fail(NC_ERR_ARG, "%s: layer %d: %s mHC without perms (Sinkhorn) needs cfg mhc_iters >= 1, got %d",
                       op, li, sub, (int)iters);
    const int64_t K = 2 * n + R;
    if (!b || b->dtype != NC_F32 || b->device != NC_CPU || nc_tensor_numel(b) != K || !nc_tensor_is_contiguous(b))
        return nc_fail(NC_ERR_SHAPE, "%s: layer %d: the %s mHC bias must be f32 (%lld) contiguous", op, li, sub,
                       (long long)K);
    if ((phi == NULL) != (al == NULL))
        return nc_fail(NC_ERR_ARG, "%s: layer %d: %s mHC phi and alpha must be both set or both NULL", op, li, sub);
    if (phi && (phi->dtype != NC_F32 || phi->device != NC_CPU || phi->ndim != 2 || phi->shape[0] != K ||
                phi->shape[1] != n * d || !nc_tensor_is_contiguous(phi) || al->dtype != NC_F32 ||
                nc_tensor_numel(al) != 3 || !nc_tensor_is_contiguous(al)))
        return nc_fail(NC_ERR_SHAPE, "%s: layer %d: the %s mHC phi must be f32 (%lld, %lld) and alpha (3), contiguous",
                       op, li, sub, (long long)K, (long long)(n * d));
    *Kout = K;
    return NC_OK;
}

nc_status nc_engine_decode(nc_tensor *x, const nc_engine_layer *layers, int32_t n_layers, const nc_engine_cfg *cfg,
                           int64_t pos, const nc_tensor *cos_t, const nc_tensor *sin_t) {
    static const char *op = "engine_decode";
    if (!cfg || (!layers && n_layers > 0)) return nc_fail(NC_ERR_ARG, "%s: cfg or layers is NULL", op);
    NC_TRY(nc_check_f32_cpu(op, "x", x));
    NC_TRY(nc_check_contiguous(op, "x", x));
    NC_TRY(nc_check_ndim(op, "x", x, 2));
    /* R rows = B sequences x P consecutive positions (row r: sequence r / P at position pos + r % P) */
    const int64_t R = x->shape[0], P = cfg->n_pos > 0 ? cfg->n_pos : 1, d = cfg->d, H = cfg->n_head,
                  Hkv = cfg->n_kv_head, hd = cfg->head_dim, ff = cfg->d_ff;
    const int64_t mn = cfg->mhc_n, W = mn > 0 ? mn * d : d;   /* W: the row width of x (mHC: n streams) */
    if (mn < 0 || mn > 16) return nc_fail(NC_ERR_ARG, "%s: cfg mhc_n must be in 0..16, got %lld", op, (long long)mn);
    if (x->shape[1] != W) return nc_fail(NC_ERR_SHAPE, "%s: x must be (B, %lld)%s, got last dim %lld", op, (long long)W,
                                         mn > 0 ? " (mHC: n streams x d)" : "", (long long)x->shape[1]);
    if (R % P) return nc_fail(NC_ERR_SHAPE, "%s: x has %lld rows, not a multiple of n_pos %lld", op, (long long)R,
                              (long long)P);
    const int64_t B = R / P;
    if (H < 1 || Hkv < 1 || H % Hkv || hd < 2 || hd % 2 || ff < 1 || d < 1)
        return nc_fail(NC_ERR_ARG, "%s: bad cfg (d %lld, heads %lld/%lld, head_dim %lld, d_ff %lld)", op, (long long)d,
                       (long long)H, (long long)Hkv, (long long)hd, (long long)ff);
    NC_TRY(nc_check_f32_cpu(op, "cos", cos_t));
    NC_TRY(nc_check_f32_cpu(op, "sin", sin_t));
    NC_TRY(nc_check_contiguous(op, "cos", cos_t));
    NC_TRY(nc_check_contiguous(op, "sin", sin_t));
    /* per-sequence positions and cache rows: [p0, pend) spans every position written / read */
    const int64_t *spos = cfg->seq_pos;
    const int32_t *sslot = cfg->seq_slot;
    int64_t p0 = pos, pend = pos + P, rows_min = B; /* the caches need >= rows_min rows (exactly B without seq_slot) */
    if (spos) {
        if (pos != 0)
            return nc_fail(NC_ERR_ARG, "%s: with cfg->seq_pos the pos argument must be 0, got %lld", op, (long long)pos);
        p0 = B ? INT64_MAX : 0;
        pend = 0;
        for (int64_t b = 0; b < B; b++) {
            if (spos[b] < 0)
                return nc_fail(NC_ERR_ARG, "%s: sequence %lld: position %lld < 0", op, (long long)b, (long long)spos[b]);
            if (spos[b] < p0) p0 = spos[b];
            if (spos[b] + P > pend) pend = spos[b] + P;
        }
    }
    if (sslot) {
        rows_min = 0;
        for (int64_t b = 0; b < B; b++) {
            if (sslot[b] < 0)
                return nc_fail(NC_ERR_ARG, "%s: sequence %lld: cache row %d < 0", op, (long long)b, (int)sslot[b]);
            if (sslot[b] + 1 > rows_min) rows_min = sslot[b] + 1;
            for (int64_t b2 = 0; b2 < b; b2++)
                if (sslot[b2] == sslot[b])
                    return nc_fail(NC_ERR_ARG, "%s: sequences %lld and %lld share cache row %d", op, (long long)b2,
                                   (long long)b, (int)sslot[b]);
        }
    }
    if (cos_t->ndim != 2 || cos_t->shape[1] != hd / 2 || p0 < 0 || pend > cos_t->shape[0] ||
        !nc_tensor_same_shape(cos_t, sin_t))
        return nc_fail(NC_ERR_SHAPE, "%s: cos/sin must be (>= %lld, %lld) tables, positions %lld..%lld", op,
                       (long long)pend, (long long)(hd / 2), (long long)p0, (long long)(pend - 1));
    const int64_t Nq = H * hd, Nkv = Hkv * hd;
    int64_t mK = 0;   /* mHC: the largest K = 2n + R of any sublayer */
    for (int li = 0; li < n_layers; li++) {
        const nc_engine_layer *L = &layers[li];
        static const char *names[7] = {"wq", "wk", "wv", "wo", "w1", "w3", "w2"};
        const int64_t outs[7] = {Nq, Nkv, Nkv, d, ff, ff, d}, ins[7] = {d, d, d, Nq, d, d, ff};
        for (int j = 0; j < 7; j++) {
            if (j == 5 && !cfg->swiglu) continue;
            NC_TRY(check_packed_w(op, names[j], li, L->w[j], L->s[j], outs[j], ins[j]));
        }
        for (int j = 0; j < 2; j++) {
            const nc_tensor *c = j ? L->vc : L->kc;
            if (!c || c->dtype != NC_F32 || c->device != NC_CPU || !nc_tensor_is_contiguous(c) || c->ndim != 4 ||
                (sslot ? c->shape[0] < rows_min : c->shape[0] != B) || c->shape[1] < pend || c->shape[2] != Hkv ||
                c->shape[3] != hd)
                return nc_fail(NC_ERR_SHAPE, "%s: layer %d: the %s cache must be f32 (%s%lld, >= %lld, %lld, %lld) "
                               "contiguous (positions up to %lld), got (%lld, %lld, %lld, %lld)", op, li, j ? "V" : "K",
                               sslot ? ">= " : "", (long long)rows_min, (long long)pend, (long long)Hkv, (long long)hd,
                               (long long)(pend - 1), (long long)(c && c->ndim == 4 ? c->shape[0] : -1),
                               (long long)(c && c->ndim == 4 ? c->shape[1] : -1),
                               (long long)(c && c->ndim == 4 ? c->shape[2] : -1),
                               (long long)(c && c->ndim == 4 ? c->shape[3] : -1));
        }
        if (mn > 0)
            for (int j = 0; j < 2; j++) {
                int64_t K = 0;
                NC_TRY(check_mhc(op, li, j, L, mn, d, cfg->mhc_iters, &K));
                if (K > mK) mK = K;
            }
        const nc_tensor *gains[2] = {L->attn_gain, L->mlp_gain};
        const int64_t glen[2] = {Nq, ff};
        for (int j = 0; j < 2; j++)
            if (gains[j] && (gains[j]->dtype != NC_F32 || nc_tensor_numel(gains[j]) != glen[j] ||
                             !nc_tensor_is_contiguous(gains[j])))
                return nc_fail(NC_ERR_SHAPE, "%s: layer %d: the %s gain must be f32 (%lld) contiguous", op, li,
                               j ? "MLP" : "attention", (long long)glen[j]);
    }
    if (R == 0 || n_layers == 0) return NC_OK;

    /* scratch, shared: q|k|v, attention output, MLP hidden (2), GEMV out, the spin barrier;
     * per thread (every thread quantizes every GEMV input itself: no single-thread section and no
     * second sync per stage): quantized inputs of width d / Nq / ff with their 1/s and sums, a
     * normed row, attention scores, and (o_full) the whole o-projection output */
    const int64_t kpd = nc_ternary_kpad(d), kpq = nc_ternary_kpad(Nq), kpf = nc_ternary_kpad(ff);
    int nt = nc_threads();
    if (nt < 1) nt = 1;
    const int64_t S = pend;   /* the longest attention span (the last position) */
    const int ofull = o_full(cfg);
    const int64_t rowlen = (ff > Nq ? ff : Nq) > d ? (ff > Nq ? ff : Nq) : d;
    const int64_t tby = ((R * (kpd + kpq + kpf) + 63) / 64 * 64) +
                        ((3 * R * (int64_t)(sizeof(float) + sizeof(int32_t)) + (rowlen + 2 * S) * (int64_t)sizeof(float) +
                          (ofull ? R * d * (int64_t)sizeof(float) : 0) + 63) / 64 * 64);
    int64_t fl = R * (Nq + 2 * Nkv) + R * Nq + 2 * R * ff + R * d;
    int64_t by = fl * (int64_t)sizeof(float) + 2 * B * (int64_t)sizeof(int64_t) + (int64_t)sizeof(spin_bar) +
                 (int64_t)nt * tby + 256;
    /* mHC: branch inputs h (R, d), the mixed state (R, n d), coefficients (R, 2n + n n), projections
     * (R, K), lite weights / Sinkhorn half-steps (R, max(K, 2 iters n n)) */
    const int64_t mC = 2 * mn + mn * mn, mWk = mn > 0 ? (mK > 2 * (int64_t)cfg->mhc_iters * mn * mn ? mK
                                                        : 2 * (int64_t)cfg->mhc_iters * mn * mn) : 0;
    const int64_t mfl = mn > 0 ? R * (d + W + mC + mK + mWk) + 16 : 0;
    by += mfl * (int64_t)sizeof(float);
    char *mem = nc_host_alloc(by);
    if (!mem) return NC_ERR_OOM;
    spin_bar *bar = (spin_bar *)mem;   /* 64-aligned */
    atomic_init(&bar->count, 0);
    atomic_init(&bar->gen, 0u);
    char *tmem = mem + sizeof(spin_bar);   /* nt blocks of tby bytes, 64-aligned */
    float *f = (float *)(tmem + (int64_t)nt * tby);
    float *qkv = f;                  f += R * (Nq + 2 * Nkv);
    float *att = f;                  f += R * Nq;
    float *u1 = f;                   f += R * ff;
    float *u3 = f;                   f += R * ff;
    float *yo = f;                   f += R * d;
    /* sequence b: first position bpos[b], cache row brow[b] (pos and b without seq_pos / seq_slot) */
    int64_t *bpos = (int64_t *)(((uintptr_t)f + 7) & ~(uintptr_t)7), *brow = bpos + B;
    for (int64_t b = 0; b < B; b++) {
        bpos[b] = spos ? spos[b] : pos;
        brow[b] = sslot ? sslot[b] : b;
    }
    float *mh = NULL, *mx = NULL, *mc = NULL, *mp = NULL, *mw = NULL;
    if (mn > 0) {
        mh = (float *)(((uintptr_t)(brow + B) + 63) & ~(uintptr_t)63);
        mx = mh + R * d;
        mc = mx + R * W;
        mp = mc + R * mC;
        mw = mp + R * mK;
    }
    const int32_t iters = cfg->mhc_iters;
    void (*post_row)(float *, const float *, const float *, const float *, const float *, int64_t, int64_t) =
        nc_cpu_avx2() ? nc_k_mhc_post_row_avx2 : nc_k_mhc_post_row_base;
    float *IN = mn > 0 ? mh : NULL;   /* the branch inputs: the pre-mixed h (mHC) or the residual X */

    float *X = nc_f32p(x);
    if (!IN) IN = X;
    const float *cos0 = nc_f32p(cos_t), *sin0 = nc_f32p(sin_t);
    const int avx2 = nc_cpu_avx2(), qkn = cfg->qk_norm, swiglu = cfg->swiglu, use_omp = cfg->barrier == 1;
    const double eps = cfg->eps;
    const float scale = 1.0f / sqrtf((float)hd);
    const int64_t group = H / Hkv;
    float *qo_ = qkv, *ko_ = qkv + R * Nq, *vo_ = qkv + R * (Nq + Nkv);   /* (R, Nq), (R, Nkv), (R, Nkv) */
    last_syncs = 0;

#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        int tid = 0, T = 1;
#ifdef _OPENMP
        tid = omp_get_thread_num();
        T = omp_get_num_threads();
#endif
        syncer sy = {bar, T, use_omp, 0};
        /* this thread's scratch */
        char *tp = tmem + (int64_t)tid * tby;
        qbuf qa = {(int8_t *)tp, NULL, NULL, kpd}, qo = {(int8_t *)tp + R * kpd, NULL, NULL, kpq},
             qf = {(int8_t *)tp + R * (kpd + kpq), NULL, NULL, kpf};
        float *tf = (float *)(tp + (R * (kpd + kpq + kpf) + 63) / 64 * 64);
        float *row = tf, *sc = tf + rowlen, *yt = tf + rowlen + 2 * S;   /* sc: 2 S (attn_group) */
        tf += rowlen + 2 * S + (ofull ? R * d : 0);
        qa.inv = tf; qo.inv = tf + R; qf.inv = tf + 2 * R;
        int32_t *ti = (int32_t *)(tf + 3 * R);
        qa.sum = ti; qo.sum = ti + R; qf.sum = ti + 2 * R;
        /* q/k/v: the KV heads [g0, g1) this thread computes (heads split) — it then owns their
         * cache writes and attention; rows split: (sequence, KV head) pairs round robin after a sync */
        const int hs = heads_split(cfg, T);
        const int64_t g0 = Hkv * tid / T, g1 = Hkv * (tid + 1) / T;
        for (int li = 0; li < n_layers; li++) {
            const nc_engine_layer *L = &layers[li];
            float *K = nc_f32p(L->kc), *V = nc_f32p(L->vc);
            const int64_t cT = L->kc->shape[1];
            if (mn > 0)   /* the attention sublayer's coefficients and pre-mix */
                mhc_pre(L, 0, X, R, mn, d, mh, mc, mC, mp, mK, mw, mWk, iters, eps, avx2, tid, T, &sy);
            for (int64_t b = 0; b < R; b++) norm_quant(&qa, b, row, IN + b * d, NULL, d, eps, avx2);
            if (hs) {
                rows_range(qo_, &qa, R, L->w[0], L->s[0], g0 * group * hd, g1 * group * hd, avx2);
                rows_range(ko_, &qa, R, L->w[1], L->s[1], g0 * hd, g1 * hd, avx2);
                rows_range(vo_, &qa, R, L->w[2], L->s[2], g0 * hd, g1 * hd, avx2);
            } else {
                gemv(qo_, &qa, R, L->w[0], L->s[0], tid, T, avx2);
                gemv(ko_, &qa, R, L->w[1], L->s[1], tid, T, avx2);
                gemv(vo_, &qa, R, L->w[2], L->s[2], tid, T, avx2);
                sync_all(&sy);
            }
            /* K/V of the new tokens of this thread's (sequence, KV head) pairs into the cache
             * (QK-norm, RoPE on K): every row of a pair first, so a chunk's rows see each other */
            for (int64_t i = 0; i < R; i++) {
                const int64_t b = i / P, ps = bpos[b] + i % P, cb = brow[b];
                for (int64_t h = 0; h < Hkv; h++) {
                    if (hs ? (h < g0 || h >= g1) : (b * Hkv + h) % T != tid) continue;
                    float *kr = ko_ + i * Nkv + h * hd;
                    if (qkn) rms_row(kr, kr, NULL, hd, eps);
                    rope_row(kr, cos0 + ps * (hd / 2), sin0 + ps * (hd / 2), hd);
                    float *kd = K + ((cb * cT + ps) * Hkv + h) * hd, *vd = V + ((cb * cT + ps) * Hkv + h) * hd;
                    memcpy(kd, kr, (size_t)hd * sizeof(float));
                    memcpy(vd, vo_ + i * Nkv + h * hd, (size_t)hd * sizeof(float));
                }
            }
            /* attention of each (row, query head) of those pairs over positions 0..its own (causal) */
            for (int64_t i = 0; i < R; i++) {
                const int64_t b = i / P, ps = bpos[b] + i % P, cb = brow[b], Sr = ps + 1;
                for (int64_t kh = 0; kh < Hkv; kh++) {
                    if (hs ? (kh < g0 || kh >= g1) : (b * Hkv + kh) % T != tid) continue;
                    for (int64_t h = kh * group; h < (kh + 1) * group; h++) {
                        float *q = qo_ + i * Nq + h * hd;
                        if (qkn) rms_row(q, q, NULL, hd, eps);
                        rope_row(q, cos0 + ps * (hd / 2), sin0 + ps * (hd / 2), hd);
                    }
                    const int64_t base = (cb * cT * Hkv + kh) * hd, h0 = kh * group * hd;
                    attn_group(att + i * Nq + h0, qo_ + i * Nq + h0, K + base, V + base, Hkv * hd, Sr, hd, scale, sc,
                               group, avx2);
                }
            }
            sync_all(&sy);   /* every head's attention output: the o input's norm and absmax need the whole row */
            for (int64_t b = 0; b < R; b++) norm_quant(&qo, b, row, att + b * Nq, L->attn_gain, Nq, eps, avx2);
            if (mn > 0) {   /* branch output, then post-mix + residual mixing of the streams */
                gemv(yo, &qo, R, L->w[3], L->s[3], tid, T, avx2);
                sync_all(&sy);
                for (int64_t b = tid; b < R; b += T) {
                    const float *c = mc + b * mC;
                    post_row(mx + b * W, X + b * W, yo + b * d, c + 2 * mn, c + mn, mn, d);
                    memcpy(X + b * W, mx + b * W, (size_t)W * sizeof(float));
                }
                sync_all(&sy);
                mhc_pre(L, 1, X, R, mn, d, mh, mc, mC, mp, mK, mw, mWk, iters, eps, avx2, tid, T, &sy);
            } else if (ofull) {   /* the whole o output on this thread: the MLP input X + o needs no sync */
                rows_range(yt, &qo, R, L->w[3], L->s[3], 0, d, avx2);
            } else {
                gemv_residual(X, yo, &qo, R, d, L->w[3], L->s[3], tid, T, avx2);
                sync_all(&sy);
            }
            for (int64_t b = 0; b < R; b++) {
                const float *in = IN + b * d;
                if (ofull) {   /* X + o, the sum gemv_residual stores (added to X with the down output) */
                    for (int64_t j = 0; j < d; j++) row[j] = in[j] + yt[b * d + j];
                    in = row;
                }
                norm_quant(&qa, b, row, in, NULL, d, eps, avx2);
            }
            gemv(u1, &qa, R, L->w[4], L->s[4], tid, T, avx2);
            if (swiglu) gemv(u3, &qa, R, L->w[5], L->s[5], tid, T, avx2);
            sync_all(&sy);
            for (int64_t b = 0; b < R; b++) {   /* the activation into this thread's row, then its codes */
                const float *u = u1 + b * ff;
                if (swiglu) {
                    const float *g3 = u3 + b * ff;
                    for (int64_t j = 0; j < ff; j++) row[j] = u[j] / (1.0f + expf(-u[j])) * g3[j];
                } else {
                    for (int64_t j = 0; j < ff; j++) row[j] = u[j] > 0.0f ? u[j] * u[j] : 0.0f;
                }
                norm_quant(&qf, b, row, row, L->mlp_gain, ff, eps, avx2);
            }
            if (mn > 0) {
                gemv(yo, &qf, R, L->w[6], L->s[6], tid, T, avx2);
                sync_all(&sy);
                for (int64_t b = tid; b < R; b += T) {
                    const float *c = mc + b * mC;
                    post_row(mx + b * W, X + b * W, yo + b * d, c + 2 * mn, c + mn, mn, d);
                    memcpy(X + b * W, mx + b * W, (size_t)W * sizeof(float));
                }
                sync_all(&sy);
            } else if (ofull) {
                int64_t n0, n1;
                split(d, tid, T, &n0, &n1);
                if (n0 < n1) {
                    rows_range(yo, &qf, R, L->w[6], L->s[6], n0, n1, avx2);
                    for (int64_t b = 0; b < R; b++)
                        for (int64_t n = n0; n < n1; n++) {
                            float xo = X[b * d + n] + yt[b * d + n];
                            X[b * d + n] = xo + yo[b * d + n];
                        }
                }
                sync_all(&sy);
            } else {
                gemv_residual(X, yo, &qf, R, d, L->w[6], L->s[6], tid, T, avx2);
                sync_all(&sy);
            }
        }
        if (tid == 0) last_syncs = sy.n;
    }
    nc_host_free(mem, by);
    return NC_OK;
}

/* engine_avx2.c: the AVX2/FMA head rows (each weight row read once for up to 4 activation rows) */
void nc_k_engine_head_avx2(float *Y, const float *X, const float *W, int64_t R, int64_t K, int64_t N, int64_t n0,
                           int64_t n1);

nc_status nc_engine_attn_head(nc_tensor *o, const nc_tensor *q, const nc_tensor *k, const nc_tensor *v, double scale) {
    static const char *op = "engine_attn_head";
    NC_TRY(nc_check_f32_cpu(op, "o", o));
    NC_TRY(nc_check_f32_cpu(op, "q", q));
    NC_TRY(nc_check_f32_cpu(op, "k", k));
    NC_TRY(nc_check_f32_cpu(op, "v", v));
    NC_TRY(nc_check_contiguous(op, "q", q));
    NC_TRY(nc_check_contiguous(op, "o", o));
    NC_TRY(nc_check_ndim(op, "k", k, 2));
    NC_TRY(nc_check_ndim(op, "v", v, 2));
    const int64_t S = k->shape[0], hd = k->shape[1];
    const int64_t G = hd > 0 ? nc_tensor_numel(q) / hd : 0;
    if (v->shape[0] != S || v->shape[1] != hd || G < 1 || nc_tensor_numel(q) != G * hd ||
        nc_tensor_numel(o) != G * hd || S < 1 || k->strides[1] != 1 || v->strides[1] != 1 ||
        k->strides[0] != v->strides[0])
        return nc_fail(NC_ERR_SHAPE, "%s: expected q, o (G x hd), k, v (S >= 1, hd) with the same contiguous-row "
                       "layout, got q %lld, o %lld, k (%lld, %lld), v (%lld, %lld)", op, (long long)nc_tensor_numel(q),
                       (long long)nc_tensor_numel(o), (long long)S, (long long)hd, (long long)v->shape[0],
                       (long long)v->shape[1]);
    float *sc = nc_host_alloc(2 * S * (int64_t)sizeof(float));
    if (!sc) return nc_fail(NC_ERR_OOM, "%s: cannot allocate %lld scores", op, (long long)(2 * S));
    attn_group(nc_f32p(o), nc_f32p(q), nc_f32p(k), nc_f32p(v), k->strides[0], S, hd, (float)scale, sc, G,
               nc_cpu_avx2());
    nc_host_free(sc, 2 * S * (int64_t)sizeof(float));
    return NC_OK;
}

/* y (R, N) = x (R, K) W^T for a few rows (decode's LM head, f32 weights): threads split the N
 * weight rows, each row read once for all R activation rows. A plain OpenMP loop, no OpenBLAS:
 * at R = 1 sgemm runs far below memory bandwidth, and OpenBLAS's own spinning threads would fight
 * the engine's OpenMP threads for the cores. With AVX2 the rows go to engine_avx2.c's FMA kernel
 * (R activation rows in groups of 4 per weight row: several sequences decoded together cost about
 * one pass over the head); the loop below is the scalar reference (NC_KERNEL=scalar). Either way a
 * row's result does not depend on R (batched decode = decode alone, bit for bit). */
nc_status nc_engine_head_f32(nc_tensor *y, const nc_tensor *x, const nc_tensor *w) {
    static const char *op = "engine_head_f32";
    NC_TRY(nc_check_f32_cpu(op, "x", x));
    NC_TRY(nc_check_f32_cpu(op, "w", w));
    NC_TRY(nc_check_f32_cpu(op, "y", y));
    NC_TRY(nc_check_contiguous(op, "x", x));
    NC_TRY(nc_check_contiguous(op, "w", w));
    NC_TRY(nc_check_contiguous(op, "y", y));
    NC_TRY(nc_check_ndim(op, "x", x, 2));
    NC_TRY(nc_check_ndim(op, "w", w, 2));
    const int64_t R = x->shape[0], K = x->shape[1], N = w->shape[0];
    if (w->shape[1] != K || R > 8)
        return nc_fail(NC_ERR_SHAPE, "%s: expected x (R <= 8, K) and w (N, K), got x (%lld, %lld), w (%lld, %lld)", op,
                       (long long)R, (long long)K, (long long)N, (long long)w->shape[1]);
    int64_t ys[2] = {R, N};
    NC_TRY(nc_check_shape(op, "y", y, 2, ys));
    const float *X = nc_f32p(x), *W = nc_f32p(w);
    float *Y = nc_f32p(y);
    if (nc_cpu_avx2()) {
        const int64_t nb = (N + 63) / 64;   /* blocks of 64 weight rows */
#pragma omp parallel for schedule(static) if (N * K >= NC_PAR_MIN) num_threads(nc_threads())
        for (int64_t i = 0; i < nb; i++)
            nc_k_engine_head_avx2(Y, X, W, R, K, N, i * 64, (i + 1) * 64 < N ? (i + 1) * 64 : N);
        return NC_OK;
    }
#pragma omp parallel for schedule(static) if (N * K >= NC_PAR_MIN) num_threads(nc_threads())
    for (int64_t n = 0; n < N; n++) {
        const float *wr = W + n * K;
        for (int64_t r = 0; r < R; r++) {
            const float *xr = X + r * K;
            float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
            for (int64_t k = 0; k < K; k++) acc += wr[k] * xr[k];
            Y[r * N + n] = acc;
        }
    }
    return NC_OK;
}

/* norm.c: the row kernel of nc_rmsnorm (scalar reference / AVX2) */
float nc_k_rmsnorm_row_base(float *y, const float *x, const float *w, int64_t D, double eps, int nt);
float nc_k_rmsnorm_row_avx2(float *y, const float *x, const float *w, int64_t D, double eps, int nt);

/* The LoopLM exit gate of R decode rows in one call (the engine's decode; looplm.gate_z): per row
 * h = rmsnorm(mean of the n streams of x) (n = 1: x itself; nc_rmsnorm's row kernel), then
 * z = h . w + bias with the dot product accumulated in double. Each row's z depends only on that
 * row (batched = alone, bit for bit); vs the op path (nc.mean + nc.rmsnorm + nc.linear) the
 * stream mean and the dot differ in summation order only (float rounding). */
nc_status nc_engine_exit_gate(nc_tensor *z, const nc_tensor *x, const nc_tensor *w, const nc_tensor *bias,
                              int64_t n_streams, double eps) {
    static const char *op = "engine_exit_gate";
    NC_TRY(nc_check_f32_cpu(op, "x", x));
    NC_TRY(nc_check_f32_cpu(op, "w", w));
    NC_TRY(nc_check_f32_cpu(op, "bias", bias));
    NC_TRY(nc_check_f32_cpu(op, "z", z));
    NC_TRY(nc_check_contiguous(op, "x", x));
    NC_TRY(nc_check_contiguous(op, "w", w));
    NC_TRY(nc_check_contiguous(op, "z", z));
    NC_TRY(nc_check_ndim(op, "x", x, 2));
    const int64_t R = x->shape[0], d = nc_tensor_numel(w), n = n_streams;
    if (n < 1 || n > 16 || d < 1 || x->shape[1] != n * d || nc_tensor_numel(bias) != 1 || nc_tensor_numel(z) != R)
        return nc_fail(NC_ERR_SHAPE, "%s: expected x (R, n d) with n = %lld streams in 1..16, w (d), bias (1), z (R); "
                       "got x (%lld, %lld), w %lld, bias %lld, z %lld", op, (long long)n, (long long)R,
                       (long long)x->shape[1], (long long)d, (long long)nc_tensor_numel(bias),
                       (long long)nc_tensor_numel(z));
    float *h = nc_host_alloc(2 * d * (int64_t)sizeof(float));
    if (!h) return NC_ERR_OOM;
    float *m = h + d;
    const float *X = nc_f32p(x), *Wt = nc_f32p(w);
    const float b = nc_f32p(bias)[0];
    float *Z = nc_f32p(z);
    float (*rms)(float *, const float *, const float *, int64_t, double, int) =
        nc_cpu_avx2() ? nc_k_rmsnorm_row_avx2 : nc_k_rmsnorm_row_base;
    for (int64_t r = 0; r < R; r++) {
        const float *xr = X + r * n * d, *src = xr;
        if (n > 1) {
            for (int64_t j = 0; j < d; j++) {
                float s = 0.0f;
                for (int64_t i = 0; i < n; i++) s += xr[i * d + j];
                m[j] = s / (float)n;
            }
            src = m;
        }
        rms(h, src, NULL, d, eps, 0);
        double acc = 0.0;
        for (int64_t j = 0; j < d; j++) acc += (double)h[j] * (double)Wt[j];
        Z[r] = (float)acc + b;
    }
    nc_host_free(h, 2 * d * (int64_t)sizeof(float));
    return NC_OK;
}
