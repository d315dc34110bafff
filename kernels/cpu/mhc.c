/* kernels/cpu/mhc.c — mHC stream mixing (algorithms.md §12.2), forward and backward.
 *
 * Promise: per token t (rows of the leading dims), with n streams of width d:
 *   pre:   h[t, k]      = sum_j hp[t, j] x[t, j, k]
 *   post:  out[t, i, k] = sum_j hres[t, i, j] x[t, j, k] + hpost[t, i] y[t, k]
 * (H_res convention: row i = output stream, column j = input stream.) Backwards accumulate (+=)
 * into every non-NULL gradient:
 *   pre:   gx[j, k] += hp[j] gh[k];                 ghp[j] += sum_k x[j, k] gh[k]
 *   post:  gx[j, k] += sum_i hres[i, j] g[i, k];    gy[k] += sum_i hpost[i] g[i, k]
 *          ghres[i, j] += sum_k g[i, k] x[j, k];    ghpost[i] += sum_k g[i, k] y[k]
 * Dot products over k accumulate in f32 (vector lanes: the order depends on the build, not on the
 * thread count; fine for d up to a few thousand). Every tensor is f32, CPU and contiguous; tokens run in
 * parallel (each token's outputs are written by one thread, so results do not depend on the
 * thread count). The row kernels are compiled twice (NC_KSUFFIX pattern): here as the reference
 * (NC_KERNEL=scalar), and from mhc_avx2.c with -mavx2 -mfma (the same loops, vectorized by the
 * compiler under `omp simd`, FMA contraction allowed).
 */
#include "nn_common.h"

#include <cblas.h>

#include "kvariant.h"

/* h (d) = sum_j hp[j] x[j] ; x (n, d) */
void KFN(nc_k_mhc_pre_row)(float *h, const float *x, const float *hp, int64_t n, int64_t d) {
    float a0 = hp[0];
#pragma omp simd
    for (int64_t k = 0; k < d; k++) h[k] = a0 * x[k];
    for (int64_t j = 1; j < n; j++) {
        const float *xj = x + j * d;
        float a = hp[j];
#pragma omp simd
        for (int64_t k = 0; k < d; k++) h[k] += a * xj[k];
    }
}

void KFN(nc_k_mhc_pre_bwd_row)(float *gx, float *ghp, const float *x, const float *hp, const float *gh, int64_t n,
                               int64_t d) {
    for (int64_t j = 0; j < n; j++) {
        const float *xj = x + j * d;
        if (ghp) {
            float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
            for (int64_t k = 0; k < d; k++) dot += xj[k] * gh[k];
            ghp[j] += (float)dot;
        }
        if (gx) {
            float *gj = gx + j * d;
            float a = hp[j];
#pragma omp simd
            for (int64_t k = 0; k < d; k++) gj[k] += a * gh[k];
        }
    }
}

/* out (n, d) = R x + p y ; R (n, n), p (n), y (d) */
void KFN(nc_k_mhc_post_row)(float *out, const float *x, const float *y, const float *R, const float *p, int64_t n,
                            int64_t d) {
    for (int64_t i = 0; i < n; i++) {
        float *o = out + i * d;
        const float *Ri = R + i * n;
        float pi = p[i];
#pragma omp simd
        for (int64_t k = 0; k < d; k++) o[k] = pi * y[k];
        for (int64_t j = 0; j < n; j++) {
            const float *xj = x + j * d;
            float a = Ri[j];
#pragma omp simd
            for (int64_t k = 0; k < d; k++) o[k] += a * xj[k];
        }
    }
}

void KFN(nc_k_mhc_post_bwd_row)(float *gx, float *gy, float *gR, float *gp, const float *x, const float *y,
                                const float *R, const float *p, const float *g, int64_t n, int64_t d, int fresh) {
    int gx_init = fresh & 1;
    for (int64_t i = 0; i < n; i++) {
        const float *gi = g + i * d;
        if (gp) {
            float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
            for (int64_t k = 0; k < d; k++) dot += gi[k] * y[k];
            gp[i] += (float)dot;
        }
        if (gR) {
            for (int64_t j = 0; j < n; j++) {
                const float *xj = x + j * d;
                float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
                for (int64_t k = 0; k < d; k++) dot += gi[k] * xj[k];
                gR[i * n + j] += (float)dot;
            }
        }
        if (gy) {
            float pi = p[i];
            if (i == 0 && (fresh & 2)) {   /* gy holds garbage: the first term writes */
#pragma omp simd
                for (int64_t k = 0; k < d; k++) gy[k] = pi * gi[k];
            } else {
#pragma omp simd
                for (int64_t k = 0; k < d; k++) gy[k] += pi * gi[k];
            }
        }
    }
    if (gx) {
        for (int64_t j = 0; j < n; j++) {
            float *gj = gx + j * d;
            if (gx_init) {   /* gx holds garbage: the first term writes */
                float a = R[j];
#pragma omp simd
                for (int64_t k = 0; k < d; k++) gj[k] = a * g[k];
            }
            for (int64_t i = gx_init ? 1 : 0; i < n; i++) {
                const float *gi = g + i * d;
                float a = R[i * n + j];
#pragma omp simd
                for (int64_t k = 0; k < d; k++) gj[k] += a * gi[k];
            }
        }
    }
}

/* the dynamic projection of the fused decode (engine.c), in two steps: the raw dots for outputs
 * j in [j0, j1) of nr rows, out[b os + j] = sum_k x[b xs + k] phi[j M + k] (each phi row read once
 * for all rows; the dots accumulate in f32 vector lanes, the order set by the build, never by the
 * rows decoded together or the j split), then per row the factor rstd = 1 / sqrt(mean(x^2) + eps)
 * with the sum of squares in double (as nc_mhc_proj; it uses sgemm for the dots: the two agree up
 * to float rounding). */
void KFN(nc_k_mhc_proj_dots)(float *out, int64_t os, const float *x, int64_t nr, int64_t xs, const float *phi,
                             int64_t M, int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; j++) {
        const float *pj = phi + j * M;
        for (int64_t b = 0; b < nr; b++) {
            const float *xb = x + b * xs;
            float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
            for (int64_t k = 0; k < M; k++) acc += xb[k] * pj[k];
            out[b * os + j] = acc;
        }
    }
}

float KFN(nc_k_mhc_rstd)(const float *x, int64_t M, double eps) {
    double ss = 0.0;
#pragma omp simd reduction(+ : ss)
    for (int64_t k = 0; k < M; k++) ss += (double)x[k] * x[k];
    return (float)(1.0 / sqrt(ss / (double)(M ? M : 1) + eps));
}

#ifdef NC_KPRIMARY
void nc_k_mhc_pre_row_avx2(float *, const float *, const float *, int64_t, int64_t);
void nc_k_mhc_pre_bwd_row_avx2(float *, float *, const float *, const float *, const float *, int64_t, int64_t);
void nc_k_mhc_post_row_avx2(float *, const float *, const float *, const float *, const float *, int64_t, int64_t);
void nc_k_mhc_post_bwd_row_avx2(float *, float *, float *, float *, const float *, const float *, const float *,
                                const float *, const float *, int64_t, int64_t, int);

static nc_status check_t(const char *op, const char *arg, const nc_tensor *t) {
    NC_TRY(nc_check_not_null(op, arg, t));
    NC_TRY(nc_check_f32_cpu(op, arg, t));
    return nc_check_contiguous(op, arg, t);
}

/* x (..., n, d): rows = prod(...), n, d; fails for fewer than 2 dims */
static nc_status x_dims(const char *op, const nc_tensor *x, int64_t *rows, int64_t *n, int64_t *d) {
    NC_TRY(check_t(op, "x", x));
    if (x->ndim < 2) {
        char b[NC_DESC_LEN];
        return nc_fail(NC_ERR_SHAPE, "%s: expected x (..., n, d), got %s", op, nc_describe(x, b, sizeof b));
    }
    *n = x->shape[x->ndim - 2];
    *d = x->shape[x->ndim - 1];
    *rows = 1;
    for (int32_t i = 0; i < x->ndim - 2; i++) *rows *= x->shape[i];
    return NC_OK;
}

/* t must be (lead..., tail...) where lead = x's dims but the last two and tail has ntail entries */
static nc_status check_lead(const char *op, const char *arg, const nc_tensor *t, const nc_tensor *x, int32_t ntail,
                            const int64_t *tail) {
    NC_TRY(check_t(op, arg, t));
    int64_t want[NC_MAX_DIMS];
    int32_t nl = x->ndim - 2;
    if (nl + ntail > NC_MAX_DIMS) return nc_fail(NC_ERR_SHAPE, "%s: too many dims", op);
    for (int32_t i = 0; i < nl; i++) want[i] = x->shape[i];
    for (int32_t i = 0; i < ntail; i++) want[nl + i] = tail[i];
    nc_status st = nc_check_shape(op, arg, t, nl + ntail, want);
    if (st != NC_OK) {
        char bx[NC_DESC_LEN], bt[NC_DESC_LEN];
        return nc_fail(NC_ERR_SHAPE, "%s: %s %s does not match x %s (expected x's leading dims + %d trailing)", op, arg,
                       nc_describe(t, bt, sizeof bt), nc_describe(x, bx, sizeof bx), ntail);
    }
    return NC_OK;
}

/* A coefficient tensor t (lead..., tail...) with x's leading dims whose tail is row-major contiguous
 * and whose leading dims collapse to one row stride *rs (elements): a contiguous tensor or a narrow
 * view into a packed (rows, C) coefficient tensor. */
static nc_status coef_view(const char *op, const char *arg, const nc_tensor *t, const nc_tensor *x, int32_t ntail,
                           const int64_t *tail, int64_t *rs) {
    NC_TRY(nc_check_not_null(op, arg, t));
    NC_TRY(nc_check_f32_cpu(op, arg, t));
    int64_t want[NC_MAX_DIMS];
    int32_t nl = x->ndim - 2;
    if (nl + ntail > NC_MAX_DIMS) return nc_fail(NC_ERR_SHAPE, "%s: too many dims", op);
    for (int32_t i = 0; i < nl; i++) want[i] = x->shape[i];
    for (int32_t i = 0; i < ntail; i++) want[nl + i] = tail[i];
    char bx[NC_DESC_LEN], bt[NC_DESC_LEN];
    if (nc_check_shape(op, arg, t, nl + ntail, want) != NC_OK)
        return nc_fail(NC_ERR_SHAPE, "%s: %s %s does not match x %s (expected x's leading dims + %d trailing)", op, arg,
                       nc_describe(t, bt, sizeof bt), nc_describe(x, bx, sizeof bx), ntail);
    int64_t expect = 1;
    for (int32_t i = nl + ntail - 1; i >= nl; i--) {
        if (t->shape[i] != 1 && t->strides[i] != expect) goto bad;
        expect *= t->shape[i];
    }
    *rs = expect;   /* a contiguous tensor's row stride */
    int found = 0;
    for (int32_t i = nl - 1; i >= 0; i--) {
        if (t->shape[i] == 1) continue;
        if (!found) {
            if (t->strides[i] < expect) goto bad;
            *rs = t->strides[i];
            expect = t->strides[i] * t->shape[i];
            found = 1;
        } else {
            if (t->strides[i] != expect) goto bad;
            expect *= t->shape[i];
        }
    }
    return NC_OK;
bad:
    return nc_fail(NC_ERR_ARG, "%s: %s %s must have a contiguous tail and one row stride over its leading dims", op, arg,
                   nc_describe(t, bt, sizeof bt));
}

nc_status nc_mhc_pre(nc_tensor *h, const nc_tensor *x, const nc_tensor *hp) {
    static const char *op = "mhc_pre";
    int64_t rows, n, d;
    NC_TRY(x_dims(op, x, &rows, &n, &d));
    NC_TRY(check_lead(op, "h", h, x, 1, &d));
    int64_t ps;
    NC_TRY(coef_view(op, "hp", hp, x, 1, &n, &ps));
    if (rows == 0 || d == 0) return NC_OK;
    if (n == 0) { memset(nc_f32p(h), 0, (size_t)(rows * d) * sizeof(float)); return NC_OK; }
    void (*row)(float *, const float *, const float *, int64_t, int64_t) =
        nc_cpu_avx2() ? nc_k_mhc_pre_row_avx2 : nc_k_mhc_pre_row_base;
    float *hd = nc_f32p(h);
    const float *xd = nc_f32p(x), *pd = nc_f32p(hp);
#pragma omp parallel for schedule(static) if (rows * n * d >= NC_PAR_MIN && rows > 1) num_threads(nc_threads())
    for (int64_t r = 0; r < rows; r++) row(hd + r * d, xd + r * n * d, pd + r * ps, n, d);
    return NC_OK;
}

nc_status nc_mhc_pre_backward(nc_tensor *gx, nc_tensor *ghp, const nc_tensor *x, const nc_tensor *hp,
                              const nc_tensor *gh) {
    static const char *op = "mhc_pre_backward";
    int64_t rows, n, d;
    NC_TRY(x_dims(op, x, &rows, &n, &d));
    int64_t ps, gps = 0;
    NC_TRY(coef_view(op, "hp", hp, x, 1, &n, &ps));
    NC_TRY(check_lead(op, "gh", gh, x, 1, &d));
    if (gx) { NC_TRY(check_t(op, "gx", gx)); NC_TRY(nc_check_same_shape(op, "gx", gx, "x", x)); }
    if (ghp) NC_TRY(coef_view(op, "ghp", ghp, x, 1, &n, &gps));
    if (rows == 0 || n == 0 || d == 0 || (!gx && !ghp)) return NC_OK;
    void (*row)(float *, float *, const float *, const float *, const float *, int64_t, int64_t) =
        nc_cpu_avx2() ? nc_k_mhc_pre_bwd_row_avx2 : nc_k_mhc_pre_bwd_row_base;
    float *gxd = gx ? nc_f32p(gx) : NULL, *gpd = ghp ? nc_f32p(ghp) : NULL;
    const float *xd = nc_f32p(x), *pd = nc_f32p(hp), *gd = nc_f32p(gh);
#pragma omp parallel for schedule(static) if (rows * n * d >= NC_PAR_MIN && rows > 1) num_threads(nc_threads())
    for (int64_t r = 0; r < rows; r++)
        row(gxd ? gxd + r * n * d : NULL, gpd ? gpd + r * gps : NULL, xd + r * n * d, pd + r * ps, gd + r * d, n, d);
    return NC_OK;
}

nc_status nc_mhc_post(nc_tensor *out, const nc_tensor *x, const nc_tensor *y, const nc_tensor *hres,
                      const nc_tensor *hpost) {
    static const char *op = "mhc_post";
    int64_t rows, n, d;
    NC_TRY(x_dims(op, x, &rows, &n, &d));
    NC_TRY(check_t(op, "out", out));
    NC_TRY(nc_check_same_shape(op, "out", out, "x", x));
    NC_TRY(check_lead(op, "y", y, x, 1, &d));
    int64_t nn[2] = { n, n }, Rs, ps;
    NC_TRY(coef_view(op, "hres", hres, x, 2, nn, &Rs));
    NC_TRY(coef_view(op, "hpost", hpost, x, 1, &n, &ps));
    if (rows == 0 || n == 0 || d == 0) return NC_OK;
    void (*row)(float *, const float *, const float *, const float *, const float *, int64_t, int64_t) =
        nc_cpu_avx2() ? nc_k_mhc_post_row_avx2 : nc_k_mhc_post_row_base;
    float *od = nc_f32p(out);
    const float *xd = nc_f32p(x), *yd = nc_f32p(y), *Rd = nc_f32p(hres), *pd = nc_f32p(hpost);
#pragma omp parallel for schedule(static) if (rows * n * d >= NC_PAR_MIN && rows > 1) num_threads(nc_threads())
    for (int64_t r = 0; r < rows; r++)
        row(od + r * n * d, xd + r * n * d, yd + r * d, Rd + r * Rs, pd + r * ps, n, d);
    return NC_OK;
}

nc_status nc_mhc_post_backward(nc_tensor *gx, nc_tensor *gy, nc_tensor *ghres, nc_tensor *ghpost, const nc_tensor *x,
                               const nc_tensor *y, const nc_tensor *hres, const nc_tensor *hpost,
                               const nc_tensor *gout, int32_t fresh) {
    static const char *op = "mhc_post_backward";
    int64_t rows, n, d;
    NC_TRY(x_dims(op, x, &rows, &n, &d));
    NC_TRY(check_lead(op, "y", y, x, 1, &d));
    int64_t nn[2] = { n, n }, Rs, ps, gRs = 0, gps = 0;
    NC_TRY(coef_view(op, "hres", hres, x, 2, nn, &Rs));
    NC_TRY(coef_view(op, "hpost", hpost, x, 1, &n, &ps));
    NC_TRY(check_t(op, "gout", gout));
    NC_TRY(nc_check_same_shape(op, "gout", gout, "x", x));
    if (gx) { NC_TRY(check_t(op, "gx", gx)); NC_TRY(nc_check_same_shape(op, "gx", gx, "x", x)); }
    if (gy) { NC_TRY(check_t(op, "gy", gy)); NC_TRY(nc_check_same_shape(op, "gy", gy, "y", y)); }
    if (ghres) NC_TRY(coef_view(op, "ghres", ghres, x, 2, nn, &gRs));
    if (ghpost) NC_TRY(coef_view(op, "ghpost", ghpost, x, 1, &n, &gps));
    if (rows == 0 || n == 0 || d == 0) return NC_OK;
    void (*row)(float *, float *, float *, float *, const float *, const float *, const float *, const float *,
                const float *, int64_t, int64_t, int) =
        nc_cpu_avx2() ? nc_k_mhc_post_bwd_row_avx2 : nc_k_mhc_post_bwd_row_base;
    float *gxd = gx ? nc_f32p(gx) : NULL, *gyd = gy ? nc_f32p(gy) : NULL;
    float *gRd = ghres ? nc_f32p(ghres) : NULL, *gpd = ghpost ? nc_f32p(ghpost) : NULL;
    const float *xd = nc_f32p(x), *yd = nc_f32p(y), *Rd = nc_f32p(hres), *pd = nc_f32p(hpost), *gd = nc_f32p(gout);
#pragma omp parallel for schedule(static) if (rows * n * d >= NC_PAR_MIN && rows > 1) num_threads(nc_threads())
    for (int64_t r = 0; r < rows; r++)
        row(gxd ? gxd + r * n * d : NULL, gyd ? gyd + r * d : NULL, gRd ? gRd + r * gRs : NULL,
            gpd ? gpd + r * gps : NULL, xd + r * n * d, yd + r * d, Rd + r * Rs, pd + r * ps, gd + r * n * d, n, d,
            (int)(fresh & 3));
    return NC_OK;
}

/* ---- the dynamic projection: out (rows, K) = rstd * (x_flat phi^T) ------------------------------ */
/* x (..., n, d) read as x_flat (rows, M = n d); rstd (rows) = 1 / sqrt(mean(x_flat^2) + eps) with the
 * sum of squares in double. out = rmsnorm(x_flat) phi^T without materializing the normalized copy. */
nc_status nc_mhc_proj(nc_tensor *out, nc_tensor *rstd, const nc_tensor *x, const nc_tensor *phi, double eps) {
    static const char *op = "mhc_proj";
    int64_t rows, n, d;
    NC_TRY(x_dims(op, x, &rows, &n, &d));
    NC_TRY(check_t(op, "phi", phi));
    int64_t M = n * d;
    if (phi->ndim != 2 || phi->shape[1] != M) {
        char bp[NC_DESC_LEN], bx[NC_DESC_LEN];
        return nc_fail(NC_ERR_SHAPE, "%s: expected phi (K, %lld) for x %s, got %s", op, (long long)M,
                       nc_describe(x, bx, sizeof bx), nc_describe(phi, bp, sizeof bp));
    }
    int64_t K = phi->shape[0];
    NC_TRY(check_lead(op, "out", out, x, 1, &K));
    NC_TRY(check_lead(op, "rstd", rstd, x, 0, NULL));
    if (rows == 0) return NC_OK;
    float *o = nc_f32p(out), *rs = nc_f32p(rstd);
    const float *xd = nc_f32p(x);
    if (K > 0 && M > 0)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)rows, (blasint)K, (blasint)M, 1.0f, xd,
                    (blasint)M, nc_f32p(phi), (blasint)M, 0.0f, o, (blasint)K);
    else if (K > 0) memset(o, 0, (size_t)(rows * K) * sizeof(float));
#pragma omp parallel for schedule(static) if (rows * M >= NC_PAR_MIN && rows > 1) num_threads(nc_threads())
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = xd + r * M;
        double ss = 0.0;
#pragma omp simd reduction(+ : ss)
        for (int64_t k = 0; k < M; k++) ss += (double)xr[k] * xr[k];
        float inv = (float)(1.0 / sqrt(ss / (double)(M ? M : 1) + eps));
        rs[r] = inv;
        float *orow = o + r * K;
        for (int64_t k = 0; k < K; k++) orow[k] *= inv;
    }
    return NC_OK;
}

/* out = rstd u, u = x_flat phi^T: gu = rstd gout; x_flat gets gu phi + c x_flat with
 * c = -(sum_k gout_k out_k) rstd^2 / M (through rstd); gphi += gu^T x_flat. gx_init: gx holds
 * garbage and is written, not accumulated. */
nc_status nc_mhc_proj_backward(nc_tensor *gx, nc_tensor *gphi, const nc_tensor *x, const nc_tensor *phi,
                               const nc_tensor *rstd, const nc_tensor *out, const nc_tensor *gout, int32_t gx_init) {
    static const char *op = "mhc_proj_backward";
    int64_t rows, n, d;
    NC_TRY(x_dims(op, x, &rows, &n, &d));
    NC_TRY(check_t(op, "phi", phi));
    int64_t M = n * d;
    if (phi->ndim != 2 || phi->shape[1] != M) {
        char bp[NC_DESC_LEN];
        return nc_fail(NC_ERR_SHAPE, "%s: expected phi (K, %lld), got %s", op, (long long)M,
                       nc_describe(phi, bp, sizeof bp));
    }
    int64_t K = phi->shape[0];
    NC_TRY(check_lead(op, "out", out, x, 1, &K));
    NC_TRY(check_lead(op, "gout", gout, x, 1, &K));
    NC_TRY(check_lead(op, "rstd", rstd, x, 0, NULL));
    if (gx) { NC_TRY(check_t(op, "gx", gx)); NC_TRY(nc_check_same_shape(op, "gx", gx, "x", x)); }
    if (gphi) { NC_TRY(check_t(op, "gphi", gphi)); NC_TRY(nc_check_same_shape(op, "gphi", gphi, "phi", phi)); }
    if (rows == 0 || M == 0) return NC_OK;
    float *gu = K > 0 ? (float *)nc_host_alloc(rows * K * (int64_t)sizeof(float)) : NULL;
    float *cc = (float *)nc_host_alloc(rows * (int64_t)sizeof(float));
    if ((K > 0 && !gu) || !cc) {
        if (gu) nc_host_free(gu, rows * K * (int64_t)sizeof(float));
        if (cc) nc_host_free(cc, rows * (int64_t)sizeof(float));
        return NC_ERR_OOM;
    }
    const float *rs = nc_f32p(rstd), *o = nc_f32p(out), *g = nc_f32p(gout), *xd = nc_f32p(x);
    for (int64_t r = 0; r < rows; r++) {
        double dot = 0.0;
        for (int64_t k = 0; k < K; k++) {
            dot += (double)g[r * K + k] * o[r * K + k];
            gu[r * K + k] = g[r * K + k] * rs[r];
        }
        cc[r] = (float)(-dot * (double)rs[r] * rs[r] / (double)M);
    }
    if (gx) {
        float *gxd = nc_f32p(gx);
        if (K > 0)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (blasint)rows, (blasint)M, (blasint)K, 1.0f, gu,
                        (blasint)K, nc_f32p(phi), (blasint)M, gx_init ? 0.0f : 1.0f, gxd, (blasint)M);
        else if (gx_init) memset(gxd, 0, (size_t)(rows * M) * sizeof(float));
#pragma omp parallel for schedule(static) if (rows * M >= NC_PAR_MIN && rows > 1) num_threads(nc_threads())
        for (int64_t r = 0; r < rows; r++) {
            float c = cc[r];
            float *gr = gxd + r * M;
            const float *xr = xd + r * M;
#pragma omp simd
            for (int64_t k = 0; k < M; k++) gr[k] += c * xr[k];
        }
    }
    if (gphi && K > 0)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (blasint)K, (blasint)M, (blasint)rows, 1.0f, gu, (blasint)K,
                    xd, (blasint)M, 1.0f, nc_f32p(gphi), (blasint)M);
    if (gu) nc_host_free(gu, rows * K * (int64_t)sizeof(float));
    nc_host_free(cc, rows * (int64_t)sizeof(float));
    return NC_OK;
}
/* ---- mHC-lite coefficients ---------------------------------------------------------------------- */
/* Shapes: perms (R, n n) gives n and R; K = 2n + R; C = 2n + n n. proj (rows..., K) or NULL (then
 * z = bias), alpha (3) (NULL with proj NULL), bias (K), coef (rows..., C), w (rows..., R); all
 * contiguous. Per row: z_k = proj_k alpha[g(k)] + bias_k with g = 0 (pre), 1 (post), 2 (res);
 * coef = [sigmoid(z_pre) | 2 sigmoid(z_post) | vec(sum_k w_k P_k)], w = softmax(z_res).
 * Tokens run in parallel; the sums over tokens (gbias, galpha) are serial in token order, so the
 * results do not depend on the thread count. */
static nc_status lite_dims(const char *op, const nc_tensor *perms, const nc_tensor *bias, const nc_tensor *coef,
                           int64_t *n, int64_t *R, int64_t *rows) {
    NC_TRY(check_t(op, "perms", perms));
    NC_TRY(check_t(op, "bias", bias));
    NC_TRY(check_t(op, "coef", coef));
    char b1[NC_DESC_LEN], b2[NC_DESC_LEN];
    if (perms->ndim != 2) return nc_fail(NC_ERR_SHAPE, "%s: expected perms (R, n*n), got %s", op, nc_describe(perms, b1, sizeof b1));
    *R = perms->shape[0];
    int64_t nn = perms->shape[1], k = 0;
    while (k * k < nn) k++;
    if (k * k != nn) return nc_fail(NC_ERR_SHAPE, "%s: perms %s: n*n columns expected", op, nc_describe(perms, b1, sizeof b1));
    *n = k;
    if (bias->ndim != 1 || bias->shape[0] != 2 * k + *R)
        return nc_fail(NC_ERR_SHAPE, "%s: expected bias (%lld), got %s", op, (long long)(2 * k + *R),
                       nc_describe(bias, b1, sizeof b1));
    int64_t C = 2 * k + nn;
    if (coef->ndim < 1 || coef->shape[coef->ndim - 1] != C)
        return nc_fail(NC_ERR_SHAPE, "%s: expected coef (..., %lld), got %s (perms %s)", op, (long long)C,
                       nc_describe(coef, b1, sizeof b1), nc_describe(perms, b2, sizeof b2));
    *rows = nc_tensor_numel(coef) / (C ? C : 1);
    return NC_OK;
}

static nc_status lite_rows_of(const char *op, const char *arg, const nc_tensor *t, int64_t rows, int64_t last) {
    NC_TRY(check_t(op, arg, t));
    if (t->ndim < 1 || t->shape[t->ndim - 1] != last || nc_tensor_numel(t) != rows * last) {
        char b[NC_DESC_LEN];
        return nc_fail(NC_ERR_SHAPE, "%s: expected %s with %lld rows of %lld, got %s", op, arg, (long long)rows,
                       (long long)last, nc_describe(t, b, sizeof b));
    }
    return NC_OK;
}

/* gbias (K) += sum_t gz[t]; galpha[g] += sum_t sum_{k in g} gz[t, k] proj[t, k] (g: pre | post | res);
 * serial in token order with double accumulators: the same bits on any thread count */
static void sum_over_tokens(nc_tensor *gbias, nc_tensor *galpha, const float *gz, const float *pr, int64_t rows,
                            int64_t n, int64_t K) {
    if (gbias) {
        float *gbd = nc_f32p(gbias);
        for (int64_t k = 0; k < K; k++) {
            double acc = 0.0;
            for (int64_t r = 0; r < rows; r++) acc += gz[r * K + k];
            gbd[k] += (float)acc;
        }
    }
    if (galpha && pr) {
        double ga[3] = { 0.0, 0.0, 0.0 };
        for (int64_t r = 0; r < rows; r++)
            for (int64_t k = 0; k < K; k++) ga[k < n ? 0 : (k < 2 * n ? 1 : 2)] += (double)gz[r * K + k] * pr[r * K + k];
        float *gad = nc_f32p(galpha);
        for (int i = 0; i < 3; i++) gad[i] += (float)ga[i];
    }
}

/* one token's lite coefficients: c (2n + n n) and w (R) from pj (K) or NULL (z = bias); the row
 * kernel of nc_mhc_coef_lite, shared with the fused decode (engine.c) */
void nc_k_mhc_coef_lite_row(float *c, float *wr, const float *pj, const float *al, const float *b, const float *P,
                            int64_t n, int64_t R) {
        for (int64_t j = 0; j < 2 * n; j++) {
            float z = b[j] + (pj ? pj[j] * al[j < n ? 0 : 1] : 0.0f);
            float s = 1.0f / (1.0f + expf(-z));
            c[j] = j < n ? s : 2.0f * s;
        }
        float mx = -INFINITY;
        for (int64_t k = 0; k < R; k++) {
            float z = b[2 * n + k] + (pj ? pj[2 * n + k] * al[2] : 0.0f);
            wr[k] = z;
            if (z > mx) mx = z;
        }
        double sum = 0.0;
        for (int64_t k = 0; k < R; k++) { wr[k] = expf(wr[k] - mx); sum += wr[k]; }
        float inv = (float)(1.0 / sum);
        for (int64_t k = 0; k < R; k++) wr[k] *= inv;
        float *H = c + 2 * n;
        for (int64_t e = 0; e < n * n; e++) H[e] = 0.0f;
        for (int64_t k = 0; k < R; k++) {
            const float *Pk = P + k * n * n;
            float wk = wr[k];
            for (int64_t e = 0; e < n * n; e++) H[e] += wk * Pk[e];
        }
}

nc_status nc_mhc_coef_lite(nc_tensor *coef, nc_tensor *w, const nc_tensor *proj, const nc_tensor *alpha,
                           const nc_tensor *bias, const nc_tensor *perms) {
    static const char *op = "mhc_coef_lite";
    int64_t n, R, rows;
    NC_TRY(lite_dims(op, perms, bias, coef, &n, &R, &rows));
    int64_t K = 2 * n + R, C = 2 * n + n * n;
    NC_TRY(lite_rows_of(op, "w", w, rows, R));
    if (proj) {
        NC_TRY(lite_rows_of(op, "proj", proj, rows, K));
        NC_TRY(check_t(op, "alpha", alpha));
        if (nc_tensor_numel(alpha) != 3) return nc_fail(NC_ERR_SHAPE, "%s: expected alpha (3)", op);
    }
    const float *P = nc_f32p(perms), *b = nc_f32p(bias), *pr = proj ? nc_f32p(proj) : NULL;
    const float *al = proj ? nc_f32p(alpha) : NULL;
    float *cf = nc_f32p(coef), *wd = nc_f32p(w);
#pragma omp parallel for schedule(static) if (rows * R * n * n >= NC_PAR_MIN && rows > 1) num_threads(nc_threads())
    for (int64_t r = 0; r < rows; r++)
        nc_k_mhc_coef_lite_row(cf + r * C, wd + r * R, pr ? pr + r * K : NULL, al, b, P, n, R);
    return NC_OK;
}

nc_status nc_mhc_coef_lite_backward(nc_tensor *gproj, nc_tensor *galpha, nc_tensor *gbias, const nc_tensor *coef,
                                    const nc_tensor *w, const nc_tensor *proj, const nc_tensor *alpha,
                                    const nc_tensor *perms, const nc_tensor *gcoef) {
    static const char *op = "mhc_coef_lite_backward";
    int64_t n, R, rows;
    NC_TRY(check_t(op, "perms", perms));
    if (perms->ndim != 2) return nc_fail(NC_ERR_SHAPE, "%s: expected perms (R, n*n)", op);
    R = perms->shape[0];
    int64_t nn = perms->shape[1];
    n = 0;
    while (n * n < nn) n++;
    int64_t K = 2 * n + R, C = 2 * n + nn;
    NC_TRY(check_t(op, "coef", coef));
    rows = nc_tensor_numel(coef) / (C ? C : 1);
    NC_TRY(lite_rows_of(op, "coef", coef, rows, C));
    NC_TRY(lite_rows_of(op, "gcoef", gcoef, rows, C));
    NC_TRY(lite_rows_of(op, "w", w, rows, R));
    if (gbias) {
        NC_TRY(check_t(op, "gbias", gbias));
        if (nc_tensor_numel(gbias) != K) return nc_fail(NC_ERR_SHAPE, "%s: expected gbias (%lld)", op, (long long)K);
    }
    if (gproj || galpha) {
        if (!proj || !alpha) return nc_fail(NC_ERR_ARG, "%s: gproj/galpha need proj and alpha", op);
    }
    if (proj) NC_TRY(lite_rows_of(op, "proj", proj, rows, K));
    if (gproj) NC_TRY(lite_rows_of(op, "gproj", gproj, rows, K));
    if (alpha) { NC_TRY(check_t(op, "alpha", alpha)); if (nc_tensor_numel(alpha) != 3) return nc_fail(NC_ERR_SHAPE, "%s: expected alpha (3)", op); }
    if (galpha) { NC_TRY(check_t(op, "galpha", galpha)); if (nc_tensor_numel(galpha) != 3) return nc_fail(NC_ERR_SHAPE, "%s: expected galpha (3)", op); }
    const float *P = nc_f32p(perms), *cf = nc_f32p(coef), *wd = nc_f32p(w), *gc = nc_f32p(gcoef);
    const float *pr = proj ? nc_f32p(proj) : NULL, *al = alpha ? nc_f32p(alpha) : NULL;
    float *gp = gproj ? nc_f32p(gproj) : NULL;
    /* phase 1 (parallel over tokens): gz (rows, K); phase 2 (serial, fixed order): the sums over tokens */
    float *gzall = (float *)nc_host_alloc(rows * K * (int64_t)sizeof(float));
    if (!gzall) return NC_ERR_OOM;
#pragma omp parallel for schedule(static) if (rows * R * nn >= NC_PAR_MIN && rows > 1) num_threads(nc_threads())
    for (int64_t r = 0; r < rows; r++) {
        float *gz = gzall + r * K;
        const float *c = cf + r * C, *g = gc + r * C, *wr = wd + r * R;
        for (int64_t j = 0; j < n; j++) gz[j] = g[j] * c[j] * (1.0f - c[j]);                       /* sigmoid' */
        for (int64_t j = n; j < 2 * n; j++) gz[j] = g[j] * c[j] * (1.0f - 0.5f * c[j]);            /* 2 sigmoid' */
        const float *gH = g + 2 * n;
        double dot = 0.0;
        for (int64_t k = 0; k < R; k++) {
            const float *Pk = P + k * nn;
            float s = 0.0f;
            for (int64_t e = 0; e < nn; e++) s += gH[e] * Pk[e];
            gz[2 * n + k] = s;
            dot += (double)wr[k] * s;
        }
        for (int64_t k = 0; k < R; k++) gz[2 * n + k] = wr[k] * (gz[2 * n + k] - (float)dot);   /* softmax' */
        if (gp)
            for (int64_t k = 0; k < K; k++) gp[r * K + k] += gz[k] * al[k < n ? 0 : (k < 2 * n ? 1 : 2)];
    }
    sum_over_tokens(gbias, galpha, gzall, pr, rows, n, K);
    nc_host_free(gzall, rows * K * (int64_t)sizeof(float));
    return NC_OK;
}
/* ---- mHC (Sinkhorn) coefficients ----------------------------------------------------------------- */
/* K = 2n + n n, C = 2n + n n. proj (rows..., K) or NULL (z = bias), alpha (3), bias (K); coef (rows...,
 * C) = [sigmoid(z_pre) | 2 sigmoid(z_post) | exp(L)] where L is z_res (n, n) after `iters` log-domain
 * Sinkhorn iterations, each a log-softmax over every column (i) then over every row (j), so rows sum
 * to 1 exactly. ys (rows..., 2 iters, n, n) keeps every half-step's L for backward (a log-softmax's
 * backward needs only its output: g_in = g_out - exp(y) sum_axis g_out). Parallel over tokens. */
static void sk_lse_step(float *L, int64_t n, int by_col) {
    for (int64_t a = 0; a < n; a++) {
        float mx = -INFINITY;
        for (int64_t b = 0; b < n; b++) {
            float v = by_col ? L[b * n + a] : L[a * n + b];
            if (v > mx) mx = v;
        }
        double sum = 0.0;
        for (int64_t b = 0; b < n; b++) sum += exp((double)(by_col ? L[b * n + a] : L[a * n + b]) - mx);
        float lse = mx + (float)log(sum);
        for (int64_t b = 0; b < n; b++) {
            if (by_col) L[b * n + a] -= lse; else L[a * n + b] -= lse;
        }
    }
}

/* one token's Sinkhorn coefficients: c (2n + n n) from pj (K) or NULL (z = bias); Y (2 iters, n, n)
 * receives every half-step; the row kernel of nc_mhc_coef_sinkhorn, shared with engine.c */
void nc_k_mhc_coef_sinkhorn_row(float *c, float *Y, const float *pj, const float *al, const float *b, int64_t n,
                                int32_t iters) {
        const int64_t nn = n * n;
        for (int64_t j = 0; j < 2 * n; j++) {
            float z = b[j] + (pj ? pj[j] * al[j < n ? 0 : 1] : 0.0f);
            float sg = 1.0f / (1.0f + expf(-z));
            c[j] = j < n ? sg : 2.0f * sg;
        }
        float *L = c + 2 * n;   /* work in place, exponentiated at the end */
        for (int64_t e = 0; e < nn; e++) L[e] = b[2 * n + e] + (pj ? pj[2 * n + e] * al[2] : 0.0f);
        for (int32_t t = 0; t < iters; t++) {
            sk_lse_step(L, n, 1);
            memcpy(Y + (2 * t) * nn, L, (size_t)nn * sizeof(float));
            sk_lse_step(L, n, 0);
            memcpy(Y + (2 * t + 1) * nn, L, (size_t)nn * sizeof(float));
        }
        for (int64_t e = 0; e < nn; e++) L[e] = expf(L[e]);
}

nc_status nc_mhc_coef_sinkhorn(nc_tensor *coef, nc_tensor *ys, const nc_tensor *proj, const nc_tensor *alpha,
                               const nc_tensor *bias, int64_t n, int32_t iters) {
    static const char *op = "mhc_coef_sinkhorn";
    if (n < 1 || iters < 1) return nc_fail(NC_ERR_ARG, "%s: expected n >= 1 and iters >= 1, got n %lld, iters %d", op, (long long)n, iters);
    int64_t nn = n * n, K = 2 * n + nn, C = K;
    NC_TRY(check_t(op, "coef", coef));
    NC_TRY(check_t(op, "bias", bias));
    if (nc_tensor_numel(bias) != K) return nc_fail(NC_ERR_SHAPE, "%s: expected bias (%lld)", op, (long long)K);
    int64_t rows = nc_tensor_numel(coef) / C;
    NC_TRY(lite_rows_of(op, "coef", coef, rows, C));
    NC_TRY(check_t(op, "ys", ys));
    if (nc_tensor_numel(ys) != rows * 2 * iters * nn)
        return nc_fail(NC_ERR_SHAPE, "%s: expected ys with %lld elements (rows, 2 iters, n, n)", op, (long long)(rows * 2 * iters * nn));
    if (proj) {
        NC_TRY(lite_rows_of(op, "proj", proj, rows, K));
        NC_TRY(check_t(op, "alpha", alpha));
        if (nc_tensor_numel(alpha) != 3) return nc_fail(NC_ERR_SHAPE, "%s: expected alpha (3)", op);
    }
    const float *b = nc_f32p(bias), *pr = proj ? nc_f32p(proj) : NULL, *al = proj ? nc_f32p(alpha) : NULL;
    float *cf = nc_f32p(coef), *yd = nc_f32p(ys);
#pragma omp parallel for schedule(static) if (rows * iters * nn >= NC_PAR_MIN / 8 && rows > 1) num_threads(nc_threads())
    for (int64_t r = 0; r < rows; r++)
        nc_k_mhc_coef_sinkhorn_row(cf + r * C, yd + r * 2 * iters * nn, pr ? pr + r * K : NULL, al, b, n, iters);
    return NC_OK;
}

nc_status nc_mhc_coef_sinkhorn_backward(nc_tensor *gproj, nc_tensor *galpha, nc_tensor *gbias, const nc_tensor *coef,
                                        const nc_tensor *ys, const nc_tensor *proj, const nc_tensor *alpha,
                                        const nc_tensor *gcoef, int64_t n, int32_t iters) {
    static const char *op = "mhc_coef_sinkhorn_backward";
    if (n < 1 || iters < 1 || n > 64) return nc_fail(NC_ERR_ARG, "%s: expected 1 <= n <= 64 and iters >= 1", op);
    int64_t nn = n * n, K = 2 * n + nn, C = K;
    NC_TRY(check_t(op, "coef", coef));
    int64_t rows = nc_tensor_numel(coef) / C;
    NC_TRY(lite_rows_of(op, "coef", coef, rows, C));
    NC_TRY(lite_rows_of(op, "gcoef", gcoef, rows, C));
    NC_TRY(check_t(op, "ys", ys));
    if (nc_tensor_numel(ys) != rows * 2 * iters * nn) return nc_fail(NC_ERR_SHAPE, "%s: ys has the wrong size", op);
    if (gbias) {
        NC_TRY(check_t(op, "gbias", gbias));
        if (nc_tensor_numel(gbias) != K) return nc_fail(NC_ERR_SHAPE, "%s: expected gbias (%lld)", op, (long long)K);
    }
    if ((gproj || galpha) && (!proj || !alpha)) return nc_fail(NC_ERR_ARG, "%s: gproj/galpha need proj and alpha", op);
    if (proj) NC_TRY(lite_rows_of(op, "proj", proj, rows, K));
    if (gproj) NC_TRY(lite_rows_of(op, "gproj", gproj, rows, K));
    if (galpha) { NC_TRY(check_t(op, "galpha", galpha)); if (nc_tensor_numel(galpha) != 3) return nc_fail(NC_ERR_SHAPE, "%s: expected galpha (3)", op); }
    const float *cf = nc_f32p(coef), *gc = nc_f32p(gcoef), *yd = nc_f32p(ys);
    const float *pr = proj ? nc_f32p(proj) : NULL, *al = alpha ? nc_f32p(alpha) : NULL;
    float *gp = gproj ? nc_f32p(gproj) : NULL;
    float *gzall = (float *)nc_host_alloc(rows * K * (int64_t)sizeof(float));
    if (!gzall) return NC_ERR_OOM;
#pragma omp parallel for schedule(static) if (rows * iters * nn >= NC_PAR_MIN / 8 && rows > 1) num_threads(nc_threads())
    for (int64_t r = 0; r < rows; r++) {
        float *gz = gzall + r * K;
        const float *c = cf + r * C, *g = gc + r * C, *Y = yd + r * 2 * iters * nn;
        for (int64_t j = 0; j < n; j++) gz[j] = g[j] * c[j] * (1.0f - c[j]);
        for (int64_t j = n; j < 2 * n; j++) gz[j] = g[j] * c[j] * (1.0f - 0.5f * c[j]);
        float *gL = gz + 2 * n;
        for (int64_t e = 0; e < nn; e++) gL[e] = g[2 * n + e] * c[2 * n + e];   /* through exp */
        for (int32_t s = 2 * iters - 1; s >= 0; s--) {
            const float *Ys = Y + s * nn;
            int by_col = (s % 2) == 0;
            for (int64_t a = 0; a < n; a++) {
                double S = 0.0;
                for (int64_t bb = 0; bb < n; bb++) S += by_col ? gL[bb * n + a] : gL[a * n + bb];
                for (int64_t bb = 0; bb < n; bb++) {
                    int64_t e = by_col ? bb * n + a : a * n + bb;
                    gL[e] -= expf(Ys[e]) * (float)S;
                }
            }
        }
        if (gp)
            for (int64_t k = 0; k < K; k++) gp[r * K + k] += gz[k] * al[k < n ? 0 : (k < 2 * n ? 1 : 2)];
    }
    sum_over_tokens(gbias, galpha, gzall, pr, rows, n, K);
    nc_host_free(gzall, rows * K * (int64_t)sizeof(float));
    return NC_OK;
}
#endif /* NC_KPRIMARY */
