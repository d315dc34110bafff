/* kernels/cpu/norm.c — RMSNorm over the last dim, forward and backward.
 *
 * Promise: rstd = 1 / sqrt(mean(x^2) + eps) with the mean accumulated in double (then stored
 * as f32 for backward); out = x * rstd (* weight). Backward (y = x r w, r = rstd):
 *   gx_i  += r w_i g_i - x_i r^3 / D * sum_j w_j g_j x_j
 *   gw_i  += sum over rows of g_i x_i r
 * gx rows run in parallel; gweight is reduced per column block (each column summed over rows in
 * a fixed order), so results do not depend on the thread count.
 * Rows with unit stride go through row kernels compiled twice (NC_KSUFFIX pattern): here as the
 * reference, and from norm_avx2.c with AVX2/FMA intrinsics (sums of squares still accumulated in
 * double, four accumulators; outputs of at least nc_nt_bytes() written with streaming stores).
 * The AVX2 rows use FMA contraction, so spec/ops/simd_spec.lua checks them against float64
 * references with a tolerance; NC_KERNEL=scalar forces the reference rows.
 * CUDA tensors (all of a call on one device) go to the CUDA backend's rmsnorm entries
 * (kernels/cuda/nn.cu; strided inputs are first copied contiguous); the kept-rows backward is CPU-only.
 */
#include "nn_common.h"
#include "simd_avx2.h"
#include "sched.h"

#include "kvariant.h"

/* y (D) = x * rstd (* w); returns rstd. Contiguous x, y, w (w may be NULL). nt: streaming stores.
 * next, next2: NULL, or the rows (D floats) the caller does next and after it: the vector build
 * prefetches them (into L1 and L2), one line each per 16 elements, so their reads overlap this
 * row's work (a row of 1024 floats is one 4 KiB page,
 * where the hardware stream prefetcher stops). */
float KFN(nc_k_rmsnorm_row)(float *y, const float *x, const float *w, int64_t D, double eps, int nt,
                            const float *next, const float *next2) {
#if NC_SIMD_AVX2
    __m256d s0 = _mm256_setzero_pd(), s1 = s0, s2 = s0, s3 = s0;
    int64_t j = 0;
    for (; j + 16 <= D; j += 16) {
        if (next) _mm_prefetch((const char *)(next + j), _MM_HINT_T0);
        if (next2) _mm_prefetch((const char *)(next2 + j), _MM_HINT_T1);
        __m256 a = _mm256_loadu_ps(x + j), b = _mm256_loadu_ps(x + j + 8);
        __m256d a0 = _mm256_cvtps_pd(_mm256_castps256_ps128(a)), a1 = _mm256_cvtps_pd(_mm256_extractf128_ps(a, 1));
        __m256d b0 = _mm256_cvtps_pd(_mm256_castps256_ps128(b)), b1 = _mm256_cvtps_pd(_mm256_extractf128_ps(b, 1));
        s0 = _mm256_fmadd_pd(a0, a0, s0);
        s1 = _mm256_fmadd_pd(a1, a1, s1);
        s2 = _mm256_fmadd_pd(b0, b0, s2);
        s3 = _mm256_fmadd_pd(b1, b1, s3);
    }
    double ss = nc_hsum256d(_mm256_add_pd(_mm256_add_pd(s0, s1), _mm256_add_pd(s2, s3)));
    for (; j < D; j++) ss += (double)x[j] * (double)x[j];
    float inv = (float)(1.0 / sqrt(ss / (double)(D ? D : 1) + eps));
    __m256 vi = _mm256_set1_ps(inv);
    j = 0;
    if (nt) {   /* scalar head up to a 32-byte boundary of y, then streaming stores */
        for (; j < D && ((uintptr_t)(y + j) & 31); j++) y[j] = w ? x[j] * inv * w[j] : x[j] * inv;
        if (w) for (; j + 8 <= D; j += 8)
            _mm256_stream_ps(y + j, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + j), vi), _mm256_loadu_ps(w + j)));
        else for (; j + 8 <= D; j += 8) _mm256_stream_ps(y + j, _mm256_mul_ps(_mm256_loadu_ps(x + j), vi));
    } else {
        if (w) for (; j + 8 <= D; j += 8)
            _mm256_storeu_ps(y + j, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + j), vi), _mm256_loadu_ps(w + j)));
        else for (; j + 8 <= D; j += 8) _mm256_storeu_ps(y + j, _mm256_mul_ps(_mm256_loadu_ps(x + j), vi));
    }
    for (; j < D; j++) y[j] = w ? x[j] * inv * w[j] : x[j] * inv;
    return inv;
#else
    (void)nt;
    (void)next;
    (void)next2;
    double ss = 0.0;
#pragma omp simd reduction(+ : ss)
    for (int64_t j = 0; j < D; j++) ss += (double)x[j] * (double)x[j];
    float inv = (float)(1.0 / sqrt(ss / (double)(D ? D : 1) + eps));
    if (w) {
#pragma omp simd
        for (int64_t j = 0; j < D; j++) y[j] = x[j] * inv * w[j];
    } else {
#pragma omp simd
        for (int64_t j = 0; j < D; j++) y[j] = x[j] * inv;
    }
    return inv;
#endif
}

/* gx (D) += inv w g - x c with c = inv^3 / D * sum_j w_j g_j x_j (w may be NULL = ones); contiguous */
void KFN(nc_k_rmsnorm_bwd_row)(float *gx, const float *x, const float *w, const float *g, int64_t D, float inv) {
#if NC_SIMD_AVX2
    __m256d d0 = _mm256_setzero_pd(), d1 = d0;
    int64_t j = 0;
    for (; j + 8 <= D; j += 8) {
        __m256 p = _mm256_mul_ps(_mm256_loadu_ps(g + j), _mm256_loadu_ps(x + j));
        if (w) p = _mm256_mul_ps(p, _mm256_loadu_ps(w + j));
        d0 = _mm256_add_pd(d0, _mm256_cvtps_pd(_mm256_castps256_ps128(p)));
        d1 = _mm256_add_pd(d1, _mm256_cvtps_pd(_mm256_extractf128_ps(p, 1)));
    }
    double dot = nc_hsum256d(_mm256_add_pd(d0, d1));
    for (; j < D; j++) dot += (double)(w ? w[j] : 1.0f) * g[j] * x[j];
    float c = (float)(dot * (double)inv * inv * inv / (double)D);
    __m256 vi = _mm256_set1_ps(inv), vc = _mm256_set1_ps(c);
    j = 0;
    for (; j + 8 <= D; j += 8) {
        __m256 gg = _mm256_loadu_ps(g + j);
        if (w) gg = _mm256_mul_ps(gg, _mm256_loadu_ps(w + j));
        __m256 r = _mm256_fmadd_ps(vi, gg, _mm256_loadu_ps(gx + j));
        _mm256_storeu_ps(gx + j, _mm256_fnmadd_ps(_mm256_loadu_ps(x + j), vc, r));
    }
    for (; j < D; j++) gx[j] += inv * (w ? w[j] : 1.0f) * g[j] - x[j] * c;
#else
    double dot = 0.0;
    if (w) {
#pragma omp simd reduction(+ : dot)
        for (int64_t j = 0; j < D; j++) dot += (double)w[j] * g[j] * x[j];
    } else {
#pragma omp simd reduction(+ : dot)
        for (int64_t j = 0; j < D; j++) dot += (double)g[j] * x[j];
    }
    float c = (float)(dot * (double)inv * inv * inv / (double)D);
    if (w) {
#pragma omp simd
        for (int64_t j = 0; j < D; j++) gx[j] += inv * w[j] * g[j] - x[j] * c;
    } else {
#pragma omp simd
        for (int64_t j = 0; j < D; j++) gx[j] += inv * g[j] - x[j] * c;
    }
#endif
}

#ifdef NC_KPRIMARY
float nc_k_rmsnorm_row_avx2(float *y, const float *x, const float *w, int64_t D, double eps, int nt,
                            const float *next, const float *next2);
void nc_k_rmsnorm_bwd_row_avx2(float *gx, const float *x, const float *w, const float *g, int64_t D, float inv);

static nc_status check_x(const char *op, const nc_tensor *x, const nc_tensor *weight, int32_t dev) {
    NC_TRY(nc_check_f32_on(op, "x", x, dev));
    if (x->ndim < 1) return nc_fail(NC_ERR_SHAPE, "%s: expected x with at least 1 dim, got a scalar", op);
    if (weight) {
        NC_TRY(nc_check_f32_on(op, "weight", weight, dev));
        int64_t D = nc_last_dim(x);
        NC_TRY(nc_check_shape(op, "weight", weight, 1, &D));
    }
    return NC_OK;
}

nc_status nc_rmsnorm(nc_tensor *out, nc_tensor *rstd, const nc_tensor *x, const nc_tensor *weight, double eps) {
    static const char *op = "rmsnorm";
    int32_t dev = NC_DEV_OF(out, rstd, x, weight);
    NC_TRY(check_x(op, x, weight, dev));
    NC_TRY(nc_check_f32_on(op, "out", out, dev));
    NC_TRY(nc_check_contiguous(op, "out", out));
    NC_TRY(nc_check_same_shape(op, "out", out, "x", x));
    int64_t rows = nc_rows_of(x), D = nc_last_dim(x), xs = nc_last_stride(x);
    if (rstd) {
        NC_TRY(nc_check_f32_on(op, "rstd", rstd, dev));
        NC_TRY(nc_check_contiguous(op, "rstd", rstd));
        if (nc_tensor_numel(rstd) != rows) {
            char b[NC_DESC_LEN];
            return nc_fail(NC_ERR_SHAPE, "%s: expected rstd with %lld elements (one per row), got %s", op,
                           (long long)rows, nc_describe(rstd, b, sizeof b));
        }
    }
    if (dev == NC_CUDA) {
        const nc_cuda_api *cu = nc_cuda_for(op);
        if (!cu) return NC_ERR_DEVICE;
        if (rows == 0) return NC_OK;
        nc_tensor *tx, *tw;
        const nc_tensor *xc = nc_nn_contig(op, x, &tx), *wc = nc_nn_contig(op, weight, &tw);
        nc_status st = NC_ERR_OOM;
        if (xc && (wc || !weight)) {
            st = cu->rmsnorm(nc_f32p(out), rstd ? nc_f32p(rstd) : NULL, nc_f32p(xc), wc ? nc_f32p(wc) : NULL, rows, D, eps);
            if (st != NC_OK) nc_cuda_err(op, cu, st);
        }
        nc_tensor_release(tx);
        nc_tensor_release(tw);
        return st;
    }
    if (rows == 0) return NC_OK;
    float *y = nc_f32p(out), *rs = rstd ? nc_f32p(rstd) : NULL;
    const float *w = weight ? nc_f32p(weight) : NULL;
    int64_t ws = weight && D > 1 ? weight->strides[0] : 1;
    if (xs == 1 && ws == 1) {
        float (*row)(float *, const float *, const float *, int64_t, double, int, const float *, const float *) =
            nc_cpu_avx2() ? nc_k_rmsnorm_row_avx2 : nc_k_rmsnorm_row_base;
        int nt = rows * D * (int64_t)sizeof(float) >= nc_nt_bytes();
        int64_t rch = nc_dyn_chunk(rows, 1, 65536 / (D > 0 ? D : 1) > 1 ? 65536 / (D > 0 ? D : 1) : 1);
#pragma omp parallel for schedule(dynamic, rch) if (rows * D >= NC_PAR_MIN && rows > 1) num_threads(nc_threads())
        for (int64_t r = 0; r < rows; r++) {
            const float *next = r + 1 < rows ? nc_f32p(x) + nc_row_offset(x, r + 1) : NULL;
            const float *next2 = r + 2 < rows ? nc_f32p(x) + nc_row_offset(x, r + 2) : NULL;
            float inv = row(y + r * D, nc_f32p(x) + nc_row_offset(x, r), w, D, eps, nt, next, next2);
            if (rs) rs[r] = inv;
        }
#if defined(__SSE2__)
        if (nt) __builtin_ia32_sfence();
#endif
        return NC_OK;
    }
#pragma omp parallel for schedule(static) if (rows * D >= NC_PAR_MIN && rows > 1) num_threads(nc_threads())
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = nc_f32p(x) + nc_row_offset(x, r);
        double ss = 0.0;
#pragma omp simd reduction(+ : ss)
        for (int64_t j = 0; j < D; j++) ss += (double)xr[j * xs] * (double)xr[j * xs];
        float inv = (float)(1.0 / sqrt(ss / (double)(D ? D : 1) + eps));
        if (rs) rs[r] = inv;
        float *yr = y + r * D;
        if (w) {
#pragma omp simd
            for (int64_t j = 0; j < D; j++) yr[j] = xr[j * xs] * inv * w[j * ws];
        } else {
#pragma omp simd
            for (int64_t j = 0; j < D; j++) yr[j] = xr[j * xs] * inv;
        }
    }
    return NC_OK;
}

/* The backward over all rows (keep == NULL) or only the rows listed in keep (Collider, algorithms.md
 * §8.4: the other rows of gx are left untouched and add nothing to gweight). The per-row arithmetic
 * and the row order of the gweight sums are the same either way. */
static nc_status rmsnorm_bwd(const char *op, nc_tensor *gx, nc_tensor *gweight, const nc_tensor *x,
                             const nc_tensor *weight, const nc_tensor *rstd, const nc_tensor *gout,
                             const nc_tensor *keep) {
    int32_t dev = NC_DEV_OF(gx, gweight, x, weight, rstd, gout, keep);
    NC_TRY(check_x(op, x, weight, dev));
    NC_TRY(nc_check_f32_on(op, "rstd", rstd, dev));
    NC_TRY(nc_check_f32_on(op, "gout", gout, dev));
    NC_TRY(nc_check_same_shape(op, "gout", gout, "x", x));
    int64_t rows = nc_rows_of(x), D = nc_last_dim(x);
    if (nc_tensor_numel(rstd) != rows || !nc_tensor_is_contiguous(rstd)) {
        char b[NC_DESC_LEN];
        return nc_fail(NC_ERR_SHAPE, "%s: expected a contiguous rstd with %lld elements, got %s", op, (long long)rows,
                       nc_describe(rstd, b, sizeof b));
    }
    if (gx) {
        NC_TRY(nc_check_f32_on(op, "gx", gx, dev));
        NC_TRY(nc_check_contiguous(op, "gx", gx));
        NC_TRY(nc_check_same_shape(op, "gx", gx, "x", x));
    }
    if (gweight) {
        if (!weight) return nc_fail(NC_ERR_ARG, "%s: gweight given but weight is NULL", op);
        NC_TRY(nc_check_f32_on(op, "gweight", gweight, dev));
        NC_TRY(nc_check_contiguous(op, "gweight", gweight));
        NC_TRY(nc_check_same_shape(op, "gweight", gweight, "weight", weight));
    }
    if (dev == NC_CUDA) {
        if (keep) return nc_no_cuda(op, "the kept-rows (Collider) backward");
        const nc_cuda_api *cu = nc_cuda_for(op);
        if (!cu) return NC_ERR_DEVICE;
        if (rows == 0 || D == 0 || (!gx && !gweight)) return NC_OK;
        nc_tensor *tx, *tw, *tg;
        const nc_tensor *xc = nc_nn_contig(op, x, &tx), *wc = nc_nn_contig(op, weight, &tw),
                        *gc = nc_nn_contig(op, gout, &tg);
        nc_status st = NC_ERR_OOM;
        if (xc && gc && (wc || !weight)) {
            st = cu->rmsnorm_backward(gx ? nc_f32p(gx) : NULL, gweight ? nc_f32p(gweight) : NULL, nc_f32p(xc),
                                      wc ? nc_f32p(wc) : NULL, nc_f32p(rstd), nc_f32p(gc), rows, D);
            if (st != NC_OK) nc_cuda_err(op, cu, st);
        }
        nc_tensor_release(tx);
        nc_tensor_release(tw);
        nc_tensor_release(tg);
        return st;
    }
    const int64_t *kr = NULL;   /* kept rows or NULL = all */
    if (keep) {
        NC_TRY(nc_check_cpu(op, "keep", keep));
        NC_TRY(nc_check_dtype(op, "keep", keep, NC_I64));
        NC_TRY(nc_check_ndim(op, "keep", keep, 1));
        NC_TRY(nc_check_contiguous(op, "keep", keep));
        kr = (const int64_t *)nc_ptr(keep);
        for (int64_t i = 0; i < keep->shape[0]; i++)
            if (kr[i] < 0 || kr[i] >= rows || (i > 0 && kr[i] <= kr[i - 1]))
                return nc_fail(NC_ERR_INDEX, "%s: keep must list strictly increasing rows in [0, %lld), got %lld at "
                               "position %lld", op, (long long)rows, (long long)kr[i], (long long)i);
        rows = keep->shape[0];   /* from here on: the number of rows processed */
    }
    if (rows == 0 || D == 0) return NC_OK;
    const float *rs = nc_f32p(rstd);
    const float *w = weight ? nc_f32p(weight) : NULL;
    int64_t ws = weight && D > 1 ? weight->strides[0] : 1;
    int64_t xs = nc_last_stride(x), gs = nc_last_stride(gout);
    int par = rows * D >= NC_PAR_MIN;
    if (gx && xs == 1 && gs == 1 && ws == 1) {
        void (*row)(float *, const float *, const float *, const float *, int64_t, float) =
            nc_cpu_avx2() ? nc_k_rmsnorm_bwd_row_avx2 : nc_k_rmsnorm_bwd_row_base;
        float *g = nc_f32p(gx);
#pragma omp parallel for schedule(static) if (par && rows > 1) num_threads(nc_threads())
        for (int64_t i = 0; i < rows; i++) {
            int64_t r = kr ? kr[i] : i;
            row(g + r * D, nc_f32p(x) + nc_row_offset(x, r), w, nc_f32p(gout) + nc_row_offset(gout, r), D, rs[r]);
        }
    } else if (gx) {
        float *g = nc_f32p(gx);
#pragma omp parallel for schedule(static) if (par && rows > 1) num_threads(nc_threads())
        for (int64_t i = 0; i < rows; i++) {
            int64_t r = kr ? kr[i] : i;
            const float *xr = nc_f32p(x) + nc_row_offset(x, r);
            const float *gr = nc_f32p(gout) + nc_row_offset(gout, r);
            float inv = rs[r];
            double dot = 0.0;
            if (w) {
#pragma omp simd reduction(+ : dot)
                for (int64_t j = 0; j < D; j++) dot += (double)w[j * ws] * gr[j * gs] * xr[j * xs];
            } else {
#pragma omp simd reduction(+ : dot)
                for (int64_t j = 0; j < D; j++) dot += (double)gr[j * gs] * xr[j * xs];
            }
            float c = (float)(dot * (double)inv * inv * inv / (double)D);
            float *o = g + r * D;
            if (w) {
#pragma omp simd
                for (int64_t j = 0; j < D; j++) o[j] += inv * w[j * ws] * gr[j * gs] - xr[j * xs] * c;
            } else {
#pragma omp simd
                for (int64_t j = 0; j < D; j++) o[j] += inv * gr[j * gs] - xr[j * xs] * c;
            }
        }
    }
    if (gweight) {
        float *gw = nc_f32p(gweight);
        const int64_t CB = 256;   /* column block: partial sums stay in L1 */
        int64_t nblk = (D + CB - 1) / CB;
#pragma omp parallel for schedule(static) if (par && nblk > 1) num_threads(nc_threads())
        for (int64_t bk = 0; bk < nblk; bk++) {
            int64_t j0 = bk * CB, j1 = j0 + CB < D ? j0 + CB : D;
            double acc[256];
            for (int64_t j = j0; j < j1; j++) acc[j - j0] = 0.0;
            for (int64_t i = 0; i < rows; i++) {
                int64_t r = kr ? kr[i] : i;
                const float *xr = nc_f32p(x) + nc_row_offset(x, r);
                const float *gr = nc_f32p(gout) + nc_row_offset(gout, r);
                double inv = rs[r];
                if (xs == 1 && gs == 1) {
#pragma omp simd
                    for (int64_t j = j0; j < j1; j++) acc[j - j0] += (double)gr[j] * xr[j] * inv;
                } else {
#pragma omp simd
                    for (int64_t j = j0; j < j1; j++) acc[j - j0] += (double)gr[j * gs] * xr[j * xs] * inv;
                }
            }
            for (int64_t j = j0; j < j1; j++) gw[j] += (float)acc[j - j0];
        }
    }
    return NC_OK;
}

nc_status nc_rmsnorm_backward(nc_tensor *gx, nc_tensor *gweight, const nc_tensor *x, const nc_tensor *weight,
                              const nc_tensor *rstd, const nc_tensor *gout) {
    return rmsnorm_bwd("rmsnorm_backward", gx, gweight, x, weight, rstd, gout, NULL);
}

nc_status nc_rmsnorm_backward_rows(nc_tensor *gx, nc_tensor *gweight, const nc_tensor *x, const nc_tensor *weight,
                                   const nc_tensor *rstd, const nc_tensor *gout, const nc_tensor *keep) {
    if (!keep) return nc_fail(NC_ERR_ARG, "rmsnorm_backward_rows: keep is NULL (use nc_rmsnorm_backward)");
    return rmsnorm_bwd("rmsnorm_backward_rows", gx, gweight, x, weight, rstd, gout, keep);
}
#endif /* NC_KPRIMARY */
