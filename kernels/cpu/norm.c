/* kernels/cpu/norm.c — RMSNorm over the last dim, forward and backward.
 *
 * Promise: rstd = 1 / sqrt(mean(x^2) + eps) with the mean accumulated in double (then stored
 * as f32 for backward); out = x * rstd (* weight). Backward (y = x r w, r = rstd):
 *   gx_i  += r w_i g_i - x_i r^3 / D * sum_j w_j g_j x_j
 *   gw_i  += sum over rows of g_i x_i r
 * gx rows run in parallel; gweight is reduced per column block (each column summed over rows in
 * a fixed order), so results do not depend on the thread count.
 */
#include "nn_common.h"

static nc_status check_x(const char *op, const nc_tensor *x, const nc_tensor *weight) {
    NC_TRY(nc_check_f32_cpu(op, "x", x));
    if (x->ndim < 1) return nc_fail(NC_ERR_SHAPE, "%s: expected x with at least 1 dim, got a scalar", op);
    if (weight) {
        NC_TRY(nc_check_f32_cpu(op, "weight", weight));
        int64_t D = nc_last_dim(x);
        NC_TRY(nc_check_shape(op, "weight", weight, 1, &D));
    }
    return NC_OK;
}

nc_status nc_rmsnorm(nc_tensor *out, nc_tensor *rstd, const nc_tensor *x, const nc_tensor *weight, double eps) {
    static const char *op = "rmsnorm";
    NC_TRY(check_x(op, x, weight));
    NC_TRY(nc_check_f32_cpu(op, "out", out));
    NC_TRY(nc_check_contiguous(op, "out", out));
    NC_TRY(nc_check_same_shape(op, "out", out, "x", x));
    int64_t rows = nc_rows_of(x), D = nc_last_dim(x), xs = nc_last_stride(x);
    if (rstd) {
        NC_TRY(nc_check_f32_cpu(op, "rstd", rstd));
        NC_TRY(nc_check_contiguous(op, "rstd", rstd));
        if (nc_tensor_numel(rstd) != rows) {
            char b[NC_DESC_LEN];
            return nc_fail(NC_ERR_SHAPE, "%s: expected rstd with %lld elements (one per row), got %s", op,
                           (long long)rows, nc_describe(rstd, b, sizeof b));
        }
    }
    if (rows == 0) return NC_OK;
    float *y = nc_f32p(out), *rs = rstd ? nc_f32p(rstd) : NULL;
    const float *w = weight ? nc_f32p(weight) : NULL;
    int64_t ws = weight && D > 1 ? weight->strides[0] : 1;
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

nc_status nc_rmsnorm_backward(nc_tensor *gx, nc_tensor *gweight, const nc_tensor *x, const nc_tensor *weight,
                              const nc_tensor *rstd, const nc_tensor *gout) {
    static const char *op = "rmsnorm_backward";
    NC_TRY(check_x(op, x, weight));
    NC_TRY(nc_check_f32_cpu(op, "rstd", rstd));
    NC_TRY(nc_check_f32_cpu(op, "gout", gout));
    NC_TRY(nc_check_same_shape(op, "gout", gout, "x", x));
    int64_t rows = nc_rows_of(x), D = nc_last_dim(x);
    if (nc_tensor_numel(rstd) != rows || !nc_tensor_is_contiguous(rstd)) {
        char b[NC_DESC_LEN];
        return nc_fail(NC_ERR_SHAPE, "%s: expected a contiguous rstd with %lld elements, got %s", op, (long long)rows,
                       nc_describe(rstd, b, sizeof b));
    }
    if (gx) {
        NC_TRY(nc_check_f32_cpu(op, "gx", gx));
        NC_TRY(nc_check_contiguous(op, "gx", gx));
        NC_TRY(nc_check_same_shape(op, "gx", gx, "x", x));
    }
    if (gweight) {
        if (!weight) return nc_fail(NC_ERR_ARG, "%s: gweight given but weight is NULL", op);
        NC_TRY(nc_check_f32_cpu(op, "gweight", gweight));
        NC_TRY(nc_check_contiguous(op, "gweight", gweight));
        NC_TRY(nc_check_same_shape(op, "gweight", gweight, "weight", weight));
    }
    if (rows == 0 || D == 0) return NC_OK;
    const float *rs = nc_f32p(rstd);
    const float *w = weight ? nc_f32p(weight) : NULL;
    int64_t ws = weight && D > 1 ? weight->strides[0] : 1;
    int64_t xs = nc_last_stride(x), gs = nc_last_stride(gout);
    int par = rows * D >= NC_PAR_MIN;
    if (gx) {
        float *g = nc_f32p(gx);
#pragma omp parallel for schedule(static) if (par && rows > 1) num_threads(nc_threads())
        for (int64_t r = 0; r < rows; r++) {
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
            for (int64_t r = 0; r < rows; r++) {
                const float *xr = nc_f32p(x) + nc_row_offset(x, r);
                const float *gr = nc_f32p(gout) + nc_row_offset(gout, r);
                double inv = rs[r];
#pragma omp simd
                for (int64_t j = j0; j < j1; j++) acc[j - j0] += (double)gr[j * gs] * xr[j * xs] * inv;
            }
            for (int64_t j = j0; j < j1; j++) gw[j] += (float)acc[j - j0];
        }
    }
    return NC_OK;
}
