/* kernels/cpu/loss.c — fused cross-entropy (with label smoothing and z-loss) over (N, V) logits.
 *
 * Promise: numerically stable (max-subtracted log-sum-exp per row, lse saved for backward);
 * rows run in parallel but the mean is summed in a fixed order in double, so the loss does not
 * depend on the thread count. Targets equal to ignore_index contribute nothing; when every
 * target is ignored the loss is 0 and the gradient is 0. Compiled twice like softmax.c
 * (loss_avx2.c adds AVX2/FMA; its rows use nc_exp256 and FMA, checked against float64 references
 * with tolerances in spec/ops/simd_spec.lua); this file is the reference.
 *
 * Per row with lse = log sum_j exp(x_j), p = softmax(x):
 *   loss_row = (1-ls) (lse - x_t) + ls (lse - mean_j x_j) + z lse^2
 *   d loss_row / d x_j = p_j (1 + 2 z lse) - (1-ls) [j == t] - ls / V
 * nc_cross_entropy_backward_rows is the per-token form: glogits_r += grows[r] * d loss_row / d x
 * (the gradient of sum_r grows[r] loss_r, e.g. LoopLM's exit-weighted per-loop CE).
 * CUDA tensors: targets are range-checked and counted on a host copy, the rows run in
 * kernels/cuda/nn.cu (tree-ordered f32 max / exp-sum: lse within a few ulp of the CPU's), and the
 * per-row losses (f64) come back to the host to be averaged in row order as here.
 */
#include "nn_common.h"
#include "simd_avx2.h"

#include "kvariant.h"

/* lse and sum of one contiguous row of V logits */
void KFN(nc_k_ce_row)(const float *x, int64_t V, float *lse, float *sum) {
#if NC_SIMD_AVX2
    {
        /* pass 1: max and plain sum together; pass 2 (row still in L2): sum of exp(x - max) */
        __m256 m0 = _mm256_set1_ps(-INFINITY), m1 = m0, a0 = _mm256_setzero_ps(), a1 = a0;
        int64_t j = 0;
        for (; j + 16 <= V; j += 16) {
            __m256 u = _mm256_loadu_ps(x + j), w = _mm256_loadu_ps(x + j + 8);
            m0 = _mm256_max_ps(m0, u);
            m1 = _mm256_max_ps(m1, w);
            a0 = _mm256_add_ps(a0, u);
            a1 = _mm256_add_ps(a1, w);
        }
        float m = nc_hmax256(_mm256_max_ps(m0, m1)), sx = nc_hsum256(_mm256_add_ps(a0, a1));
        for (; j < V; j++) {
            m = x[j] > m ? x[j] : m;
            sx += x[j];
        }
        *lse = m + logf(nc_rowexpsum_avx2(NULL, x, V, m));
        *sum = sx;
        return;
    }
#endif
    float m = -INFINITY;
#pragma omp simd reduction(max : m)
    for (int64_t j = 0; j < V; j++) m = x[j] > m ? x[j] : m;
    float s = 0.0f, sx = 0.0f;
#pragma omp simd reduction(+ : s, sx)
    for (int64_t j = 0; j < V; j++) {
        s += nc_expf_fast(x[j] - m);
        sx += x[j];
    }
    *lse = m + logf(s);
    *sum = sx;
}

/* g (V) += a * exp(x - lse) - c */
void KFN(nc_k_ce_backward_row)(float *g, const float *x, int64_t V, float lse, float a, float c) {
#if NC_SIMD_AVX2
    {
        __m256 vl = _mm256_set1_ps(lse), va = _mm256_set1_ps(a), vc = _mm256_set1_ps(c);
        int64_t j = 0;
        for (; j + 8 <= V; j += 8) {
            __m256 e = nc_exp256_le(_mm256_sub_ps(_mm256_loadu_ps(x + j), vl));
            _mm256_storeu_ps(g + j, _mm256_sub_ps(_mm256_fmadd_ps(va, e, _mm256_loadu_ps(g + j)), vc));
        }
        if (j < V) {
            __m256i mk = nc_tailmask256(V - j);
            __m256 e = nc_exp256_le(_mm256_sub_ps(_mm256_maskload_ps(x + j, mk), vl));
            _mm256_maskstore_ps(g + j, mk, _mm256_sub_ps(_mm256_fmadd_ps(va, e, _mm256_maskload_ps(g + j, mk)), vc));
        }
        return;
    }
#endif
#pragma omp simd
    for (int64_t j = 0; j < V; j++) g[j] += a * nc_expf_fast(x[j] - lse) - c;
}

#ifdef NC_KPRIMARY
void nc_k_ce_row_avx2(const float *x, int64_t V, float *lse, float *sum);
void nc_k_ce_backward_row_avx2(float *g, const float *x, int64_t V, float lse, float a, float c);
void nc_k_ce_row_avx512(const float *x, int64_t V, float *lse, float *sum);   /* act_avx512.c */
void nc_k_ce_backward_row_avx512(float *g, const float *x, int64_t V, float lse, float a, float c);

static int64_t target_at(const nc_tensor *t, int64_t i) {
    int64_t off = i * (t->ndim ? t->strides[0] : 0);
    if (t->dtype == NC_I32) return ((const int32_t *)nc_tensor_data(t))[off];
    return ((const int64_t *)nc_tensor_data(t))[off];
}

static nc_status check_args(const char *op, const nc_tensor *logits, const nc_tensor *targets, const nc_tensor *lse,
                            int32_t dev) {
    NC_TRY(nc_check_f32_on(op, "logits", logits, dev));
    NC_TRY(nc_check_ndim(op, "logits", logits, 2));
    NC_TRY(nc_check_index_dtype(op, "targets", targets));
    NC_TRY(nc_check_device(op, "targets", targets, dev));
    int64_t n = logits->shape[0];
    NC_TRY(nc_check_shape(op, "targets", targets, 1, &n));
    NC_TRY(nc_check_f32_on(op, "lse", lse, dev));
    NC_TRY(nc_check_shape(op, "lse", lse, 1, &n));
    return NC_OK;
}

/* a contiguous view of logits row r (gathered into buf when the vocab stride is not 1) */
static const float *logit_row(const nc_tensor *x, int64_t r, float *buf) {
    const float *p = nc_f32p(x) + r * x->strides[0];
    int64_t V = x->shape[1], st = x->strides[1];
    if (st == 1 || V <= 1) return p;
    for (int64_t j = 0; j < V; j++) buf[j] = p[j * st];
    return buf;
}

/* ---- CUDA (kernels/cuda/nn.cu): targets are range-checked and counted on a host copy ---------- */
/* ht: host targets; *count = rows whose target is not ignore_index; out-of-range targets fail */
static nc_status ce_count(const char *op, const nc_tensor *ht, int64_t V, int64_t ignore_index, int64_t *count) {
    int64_t N = ht->shape[0];
    *count = 0;
    for (int64_t r = 0; r < N; r++) {
        int64_t t = target_at(ht, r);
        if (t == ignore_index) continue;
        if (t < 0 || t >= V)
            return nc_fail(NC_ERR_INDEX, "%s: target %lld at row %lld is outside [0, %lld) and is not ignore_index (%lld)",
                           op, (long long)t, (long long)r, (long long)V, (long long)ignore_index);
        (*count)++;
    }
    return NC_OK;
}

/* device copies of logits / targets in the kernels' contiguous layout and the host count */
typedef struct {
    const nc_cuda_api *cu;
    nc_tensor *tl, *tt, *host;
    const nc_tensor *l, *t;
    int64_t count;
} ce_dev;

static void ce_dev_free(ce_dev *d) {
    nc_tensor_release(d->tl);
    nc_tensor_release(d->tt);
    nc_tensor_release(d->host);
}

static nc_status ce_dev_open(const char *op, ce_dev *d, const nc_tensor *logits, const nc_tensor *targets,
                             int64_t ignore_index) {
    memset(d, 0, sizeof *d);
    d->cu = nc_cuda_for(op);
    if (!d->cu) return NC_ERR_DEVICE;
    d->host = nc_nn_to_host(op, targets);
    if (!d->host) return NC_ERR_DEVICE;
    nc_status st = ce_count(op, d->host, logits->shape[1], ignore_index, &d->count);
    if (st != NC_OK) return st;
    d->l = nc_nn_contig(op, logits, &d->tl);
    d->t = nc_nn_contig(op, targets, &d->tt);
    return d->l && d->t ? NC_OK : NC_ERR_OOM;
}

static nc_status ce_cuda(const char *op, nc_tensor *loss, nc_tensor *lse, const nc_tensor *logits,
                         const nc_tensor *targets, int64_t ignore_index, double ls, double z) {
    ce_dev d;
    nc_status st = ce_dev_open(op, &d, logits, targets, ignore_index);
    int64_t N = logits->shape[0], V = logits->shape[1];
    nc_tensor *rl = NULL, *hrl = NULL;
    if (st == NC_OK && N > 0) {
        rl = nc_cuda_buffer(op, NC_F64, N);
        st = rl ? d.cu->cross_entropy(nc_f32p(lse), (double *)nc_tensor_data(rl), nc_f32p(d.l), nc_tensor_data(d.t),
                                      targets->dtype, N, V, ignore_index, ls, z)
                : NC_ERR_OOM;
        if (rl && st != NC_OK) nc_cuda_err(op, d.cu, st);
        if (st == NC_OK) {
            hrl = nc_nn_to_host(op, rl);
            if (!hrl) st = NC_ERR_DEVICE;
        }
    }
    if (st == NC_OK) {
        /* the mean over non-ignored rows, summed in row order in double (as the CPU) */
        double total = 0.0;
        const double *row = hrl ? (const double *)nc_tensor_data(hrl) : NULL;
        for (int64_t r = 0; r < N; r++)
            if (target_at(d.host, r) != ignore_index) total += row[r];
        float v = d.count ? (float)(total / (double)d.count) : 0.0f;
        st = d.cu->fill(nc_tensor_data(loss), 1, NC_F32, (double)v);
        if (st != NC_OK) nc_cuda_err(op, d.cu, st);
    }
    nc_tensor_release(rl);
    nc_tensor_release(hrl);
    ce_dev_free(&d);
    return st;
}

static nc_status ce_backward_cuda(const char *op, nc_tensor *glogits, const nc_tensor *lse, const nc_tensor *logits,
                                  const nc_tensor *targets, const nc_tensor *grows, double gloss, int64_t ignore_index,
                                  double ls, double z) {
    ce_dev d;
    nc_status st = ce_dev_open(op, &d, logits, targets, ignore_index);
    nc_tensor *tg = NULL;
    const nc_tensor *gc = NULL;
    if (st == NC_OK && grows) {
        gc = nc_nn_contig(op, grows, &tg);
        if (!gc) st = NC_ERR_OOM;
    }
    if (st == NC_OK && (grows || d.count > 0)) {
        double scale_all = grows ? 0.0 : gloss / (double)d.count;
        st = d.cu->cross_entropy_backward(nc_f32p(glogits), nc_f32p(d.l), nc_f32p(lse), nc_tensor_data(d.t),
                                          targets->dtype, gc ? nc_f32p(gc) : NULL, logits->shape[0], logits->shape[1],
                                          scale_all, ignore_index, ls, z);
        if (st != NC_OK) nc_cuda_err(op, d.cu, st);
    }
    nc_tensor_release(tg);
    ce_dev_free(&d);
    return st;
}

nc_status nc_cross_entropy(nc_tensor *loss, nc_tensor *lse, const nc_tensor *logits, const nc_tensor *targets,
                           int64_t ignore_index, double label_smoothing, double z_loss) {
    static const char *op = "cross_entropy";
    int32_t dev = NC_DEV_OF(loss, lse, logits, targets);
    NC_TRY(check_args(op, logits, targets, lse, dev));
    NC_TRY(nc_check_f32_on(op, "loss", loss, dev));
    NC_TRY(nc_check_contiguous(op, "lse", lse));
    if (nc_tensor_numel(loss) != 1) {
        char b[NC_DESC_LEN];
        return nc_fail(NC_ERR_SHAPE, "%s: expected loss to be a scalar (1 element), got %s", op, nc_describe(loss, b, sizeof b));
    }
    int64_t N = logits->shape[0], V = logits->shape[1];
    if (V == 0 && N > 0) return nc_fail(NC_ERR_SHAPE, "%s: logits have an empty vocab dim (%lld, 0)", op, (long long)N);
    if (dev == NC_CUDA) return ce_cuda(op, loss, lse, logits, targets, ignore_index, label_smoothing, z_loss);
    float *lsep = nc_f32p(lse);
    double *row_loss = N ? nc_host_alloc(N * (int64_t)sizeof(double)) : NULL;
    if (N && !row_loss) return NC_ERR_OOM;
    void (*rowfn)(const float *, int64_t, float *, float *) =
        nc_cpu_avx512() ? nc_k_ce_row_avx512 : nc_cpu_avx2() ? nc_k_ce_row_avx2 : nc_k_ce_row_base;
    int need_buf = logits->strides[1] != 1 && V > 1;
    int64_t bad = -1, bad_t = 0;
    int oom = 0;
    double ls = label_smoothing, z = z_loss;
#pragma omp parallel if (N * V >= NC_PAR_MIN && N > 1) num_threads(nc_threads())
    {
        float *buf = need_buf ? nc_host_alloc(V * (int64_t)sizeof(float)) : NULL;
        if (need_buf && !buf) {
#pragma omp atomic write
            oom = 1;
        } else {
#pragma omp for schedule(static)
            for (int64_t r = 0; r < N; r++) {
                const float *x = logit_row(logits, r, buf);
                float l, sx;
                rowfn(x, V, &l, &sx);
                lsep[r] = l;
                int64_t t = target_at(targets, r);
                if (t == ignore_index) { row_loss[r] = 0.0; continue; }
                if (t < 0 || t >= V) {
#pragma omp critical(nc_ce_bad)
                    if (bad < 0 || r < bad) { bad = r; bad_t = t; }
                    row_loss[r] = 0.0;
                    continue;
                }
                double lse_d = l;
                row_loss[r] = (1.0 - ls) * (lse_d - x[t]) + ls * (lse_d - (double)sx / (double)V) + z * lse_d * lse_d;
            }
        }
        nc_host_free(buf, V * (int64_t)sizeof(float));
    }
    if (oom) { nc_host_free(row_loss, N * (int64_t)sizeof(double)); return nc_fail(NC_ERR_OOM, "%s: out of memory", op); }
    if (bad >= 0) {
        nc_host_free(row_loss, N * (int64_t)sizeof(double));
        return nc_fail(NC_ERR_INDEX, "%s: target %lld at row %lld is outside [0, %lld) and is not ignore_index (%lld)", op,
                       (long long)bad_t, (long long)bad, (long long)V, (long long)ignore_index);
    }
    double total = 0.0;
    int64_t count = 0;
    for (int64_t r = 0; r < N; r++) {
        if (target_at(targets, r) == ignore_index) continue;
        total += row_loss[r];
        count++;
    }
    nc_host_free(row_loss, N * (int64_t)sizeof(double));
    *nc_f32p(loss) = count ? (float)(total / (double)count) : 0.0f;
    return NC_OK;
}

/* the shared argument checks of both backward forms; *count = the non-ignored rows */
static nc_status ce_backward_check(const char *op, const nc_tensor *glogits, const nc_tensor *lse,
                                   const nc_tensor *logits, const nc_tensor *targets, int64_t ignore_index,
                                   int64_t *count, int32_t dev) {
    NC_TRY(check_args(op, logits, targets, lse, dev));
    NC_TRY(nc_check_f32_on(op, "glogits", glogits, dev));
    NC_TRY(nc_check_contiguous(op, "glogits", glogits));
    NC_TRY(nc_check_same_shape(op, "glogits", glogits, "logits", logits));
    if (dev == NC_CUDA) {   /* counted on a host copy by ce_backward_cuda */
        NC_TRY(nc_check_contiguous(op, "lse", lse));
        *count = -1;
        return NC_OK;
    }
    return ce_count(op, targets, logits->shape[1], ignore_index, count);
}

/* glogits[r] += scale_r (d loss_r / d logits[r]) for every non-ignored row: scale_r = grows[r]
 * (rows with 0 are skipped) when grows is given, else scale_all */
static nc_status ce_backward_run(const char *op, nc_tensor *glogits, const nc_tensor *lse, const nc_tensor *logits,
                                 const nc_tensor *targets, const nc_tensor *grows, double scale_all,
                                 int64_t ignore_index, double label_smoothing, double z_loss) {
    int64_t N = logits->shape[0], V = logits->shape[1];
    void (*rowfn)(float *, const float *, int64_t, float, float, float) =
        nc_cpu_avx512() ? nc_k_ce_backward_row_avx512 : nc_cpu_avx2() ? nc_k_ce_backward_row_avx2 : nc_k_ce_backward_row_base;
    const float *lsep = nc_f32p(lse), *gr = grows ? nc_f32p(grows) : NULL;
    int64_t gst = grows ? grows->strides[0] : 0;
    float *g = nc_f32p(glogits);
    double ls = label_smoothing, z = z_loss;
    int need_buf = logits->strides[1] != 1 && V > 1;
    int oom = 0;
#pragma omp parallel if (N * V >= NC_PAR_MIN && N > 1) num_threads(nc_threads())
    {
        float *buf = need_buf ? nc_host_alloc(V * (int64_t)sizeof(float)) : NULL;
        if (need_buf && !buf) {
#pragma omp atomic write
            oom = 1;
        } else {
#pragma omp for schedule(static)
            for (int64_t r = 0; r < N; r++) {
                int64_t t = target_at(targets, r);
                double scale = gr ? gr[r * gst] : scale_all;
                if (t == ignore_index || (gr && scale == 0.0)) continue;
                const float *x = logit_row(logits, r, buf);
                float l = lsep[r];
                float a = (float)(scale * (1.0 + 2.0 * z * l));
                float c = (float)(scale * ls / (double)V);
                rowfn(g + r * V, x, V, l, a, c);
                g[r * V + t] -= (float)(scale * (1.0 - ls));
            }
        }
        nc_host_free(buf, V * (int64_t)sizeof(float));
    }
    if (oom) return nc_fail(NC_ERR_OOM, "%s: out of memory", op);
    return NC_OK;
}

nc_status nc_cross_entropy_backward(nc_tensor *glogits, const nc_tensor *lse, const nc_tensor *logits,
                                    const nc_tensor *targets, double gloss, int64_t ignore_index,
                                    double label_smoothing, double z_loss) {
    static const char *op = "cross_entropy_backward";
    if (!glogits) return NC_OK;
    int64_t count;
    int32_t dev = NC_DEV_OF(glogits, lse, logits, targets);
    NC_TRY(ce_backward_check(op, glogits, lse, logits, targets, ignore_index, &count, dev));
    if (dev == NC_CUDA)
        return ce_backward_cuda(op, glogits, lse, logits, targets, NULL, gloss, ignore_index, label_smoothing, z_loss);
    if (count == 0) return NC_OK;
    return ce_backward_run(op, glogits, lse, logits, targets, NULL, gloss / (double)count, ignore_index,
                           label_smoothing, z_loss);
}

nc_status nc_cross_entropy_backward_rows(nc_tensor *glogits, const nc_tensor *lse, const nc_tensor *logits,
                                         const nc_tensor *targets, const nc_tensor *grows, int64_t ignore_index,
                                         double label_smoothing, double z_loss) {
    static const char *op = "cross_entropy_backward_rows";
    if (!glogits) return NC_OK;
    int64_t count;
    int32_t dev = NC_DEV_OF(glogits, lse, logits, targets, grows);
    NC_TRY(ce_backward_check(op, glogits, lse, logits, targets, ignore_index, &count, dev));
    int64_t N = logits->shape[0];
    NC_TRY(nc_check_f32_on(op, "grows", grows, dev));
    NC_TRY(nc_check_shape(op, "grows", grows, 1, &N));
    if (dev == NC_CUDA)
        return ce_backward_cuda(op, glogits, lse, logits, targets, grows, 0.0, ignore_index, label_smoothing, z_loss);
    return ce_backward_run(op, glogits, lse, logits, targets, grows, 0.0, ignore_index, label_smoothing, z_loss);
}
#endif
