/* kernels/cpu/reduce.c — reductions: nc_sum_to (the gradient of broadcasting), nc_reduce_dim
 * (sum / mean / max / min over one dim, with argmax / argmin) and its backward.
 *
 * Promise: sums accumulate in double in a fixed order (kept positions are processed in blocks,
 * the reduced index space in logical order, or in fixed segments combined in order when few
 * positions are kept), so results never depend on the thread count. Inputs may have any strides.
 * max/min propagate NaN (the first NaN wins) and report the first position of the extreme value.
 * CPU only, except nc_sum_to (the backend's sum_to, same geometry) and SUM / MEAN of
 * nc_reduce_dim and its backward (built on sum_to and add_scaled), which also run on CUDA;
 * other CUDA calls (max / min, integer tensors) fail with NC_ERR_UNSUPPORTED.
 */
#include "internal.h"
#include <math.h>
#include <stdio.h>
#include <string.h>

enum { RED_KB = 64, RED_SEG = 65536 };

/* The iteration split of a source tensor into kept dims (one output position each) and reduced
 * dims (summed over). kst_dst are the output's strides on the kept dims. */
typedef nc_reduce_geo red_geo;   /* core/backend.h: shared with the CUDA sum_to */

static void kept_offsets(const red_geo *g, int64_t k, int64_t *so, int64_t *dof) {
    int64_t s = 0, d = 0;
    for (int32_t i = g->nk - 1; i >= 0; i--) {
        int64_t n = g->kshape[i], c = k % n;
        k /= n;
        s += c * g->kst_src[i];
        d += c * g->kst_dst[i];
    }
    *so = s;
    *dof = d;
}

static int64_t red_offset(const red_geo *g, int64_t r, int64_t *ridx) {
    int64_t off = 0;
    for (int32_t i = g->nr - 1; i >= 0; i--) {
        int64_t n = g->rshape[i];
        ridx[i] = r % n;
        r /= n;
        off += ridx[i] * g->rst_src[i];
    }
    return off;
}

/* acc[kk] += sum over r in [r0, r1) of src[so[kk] + roff(r)], kk < m. The innermost reduced dim
 * runs as a tight loop; when the block's kept offsets are consecutive (kept dims innermost) the
 * kk loop is contiguous and vectorizes. The order of additions depends only on the shapes. */
static void red_sum_block(const red_geo *g, const float *src, const int64_t *so, int64_t m, int64_t r0, int64_t r1,
                          double *acc) {
    int64_t ridx[NC_MAX_DIMS];
    int64_t roff = red_offset(g, r0, ridx);
    int32_t last = g->nr - 1;
    int64_t rn = g->rshape[last], rs = g->rst_src[last];
    int consecutive = 1;
    for (int64_t kk = 1; kk < m && consecutive; kk++) consecutive = so[kk] == so[0] + kk;
    int64_t r = r0;
    while (r < r1) {
        int64_t len = rn - ridx[last];
        if (len > r1 - r) len = r1 - r;
        if (len <= 0) break;   /* cannot happen for a well-formed geometry; never spin */
        if (m == 1) {
            const float *p = src + so[0] + roff;
            double s = 0.0;
            if (rs == 1) {
#pragma omp simd reduction(+ : s)
                for (int64_t j = 0; j < len; j++) s += (double)p[j];
            } else {
                for (int64_t j = 0; j < len; j++) s += (double)p[j * rs];
            }
            acc[0] += s;
        } else if (consecutive) {
            for (int64_t j = 0; j < len; j++) {
                const float *p = src + so[0] + roff + j * rs;
#pragma omp simd
                for (int64_t kk = 0; kk < m; kk++) acc[kk] += (double)p[kk];
            }
        } else {
            for (int64_t j = 0; j < len; j++)
                for (int64_t kk = 0; kk < m; kk++) acc[kk] += src[so[kk] + roff + j * rs];
        }
        r += len;
        /* advance the reduced multi-index by len (len ends at the innermost dim's end or at r1) */
        ridx[last] += len;
        roff += len * rs;
        for (int32_t i = last; i > 0 && ridx[i] >= g->rshape[i]; i--) {
            roff -= g->rst_src[i] * g->rshape[i];
            ridx[i] = 0;
            ridx[i - 1]++;
            roff += g->rst_src[i - 1];
        }
    }
}

/* dst[kept] = beta * dst[kept] + alpha * sum(src over reduced dims). beta is 0 or 1. */
static nc_status red_sum(const red_geo *g, float *dst, const float *src, double alpha, int beta) {
    int64_t nk = g->nkept, nr = g->nred;
    if (nk == 0) return NC_OK;
    int64_t total = nk * nr;
    if (nk >= RED_KB || nr < 2 * RED_SEG) {
        int64_t nblk = (nk + RED_KB - 1) / RED_KB;
#pragma omp parallel for schedule(static) if (total >= NC_PAR_MIN && nblk > 1)
        for (int64_t b = 0; b < nblk; b++) {
            int64_t k0 = b * RED_KB, m = nk - k0 < RED_KB ? nk - k0 : RED_KB;
            int64_t so[RED_KB], dof[RED_KB];
            double acc[RED_KB];
            for (int64_t kk = 0; kk < m; kk++) {
                kept_offsets(g, k0 + kk, &so[kk], &dof[kk]);
                acc[kk] = 0.0;
            }
            red_sum_block(g, src, so, m, 0, nr, acc);
            for (int64_t kk = 0; kk < m; kk++) {
                double v = alpha * acc[kk];
                dst[dof[kk]] = beta ? (float)(dst[dof[kk]] + v) : (float)v;
            }
        }
        return NC_OK;
    }
    /* few kept positions, long reductions: fixed segments of the reduced space in parallel,
     * partial sums combined in segment order (independent of the thread count) */
    int64_t nseg = (nr + RED_SEG - 1) / RED_SEG;
    int64_t bytes = nseg * nk * (int64_t)sizeof(double);
    double *part = nc_host_alloc(bytes);
    if (!part) return NC_ERR_OOM;
    int64_t so[RED_KB], dof[RED_KB];
    for (int64_t kk = 0; kk < nk; kk++) kept_offsets(g, kk, &so[kk], &dof[kk]);
#pragma omp parallel for schedule(static)
    for (int64_t sgi = 0; sgi < nseg; sgi++) {
        double *acc = part + sgi * nk;
        for (int64_t kk = 0; kk < nk; kk++) acc[kk] = 0.0;
        int64_t r0 = sgi * RED_SEG, r1 = r0 + RED_SEG < nr ? r0 + RED_SEG : nr;
        red_sum_block(g, src, so, nk, r0, r1, acc);
    }
    for (int64_t kk = 0; kk < nk; kk++) {
        double s = 0.0;
        for (int64_t sgi = 0; sgi < nseg; sgi++) s += part[sgi * nk + kk];
        double v = alpha * s;
        dst[dof[kk]] = beta ? (float)(dst[dof[kk]] + v) : (float)v;
    }
    nc_host_free(part, bytes);
    return NC_OK;
}

/* ---- sum_to ----------------------------------------------------------------------------------- */
nc_status nc_sum_to(nc_tensor *dst, const nc_tensor *src, double alpha) {
    static const char *name = "sum_to";
    NC_TRY(nc_check_not_null(name, "dst", dst));
    NC_TRY(nc_check_not_null(name, "src", src));
    int cuda = dst->device == NC_CUDA || src->device == NC_CUDA;
    NC_TRY(nc_check_device(name, "dst", dst, cuda ? NC_CUDA : NC_CPU));
    NC_TRY(nc_check_device(name, "src", src, cuda ? NC_CUDA : NC_CPU));
    NC_TRY(nc_check_dtype(name, "dst", dst, NC_F32));
    NC_TRY(nc_check_dtype(name, "src", src, NC_F32));
    int ok = dst->ndim <= src->ndim;
    for (int32_t d = 0; ok && d < dst->ndim; d++) {
        int64_t ds = dst->shape[d], ss = src->shape[d + src->ndim - dst->ndim];
        ok = ds == ss || ds == 1;
    }
    if (!ok) {
        char b1[NC_DESC_LEN], b2[NC_DESC_LEN];
        return nc_fail(NC_ERR_SHAPE, "%s: expected dst's shape to broadcast to src's, got dst %s and src %s", name,
                       nc_describe(dst, b1, sizeof b1), nc_describe(src, b2, sizeof b2));
    }
    NC_TRY(nc_check_writable(name, "dst", dst));
    red_geo g;
    memset(&g, 0, sizeof g);
    g.nkept = g.nred = 1;
    for (int32_t d = 0; d < src->ndim; d++) {
        int64_t n = src->shape[d];
        if (n == 1) continue;
        int32_t dd = d - (src->ndim - dst->ndim);
        if (dd >= 0 && dst->shape[dd] == n) {
            g.kshape[g.nk] = n;
            g.kst_src[g.nk] = src->strides[d];
            g.kst_dst[g.nk] = dst->strides[dd];
            g.nk++;
            g.nkept *= n;
        } else {
            g.rshape[g.nr] = n;
            g.rst_src[g.nr] = src->strides[d];
            g.nr++;
            g.nred *= n;
        }
    }
    if (g.nr == 0) {   /* nothing reduced: one reduced position of size 1 */
        g.nr = 1;
        g.rshape[0] = 1;
        g.rst_src[0] = 0;
    }
    if (nc_tensor_numel(src) == 0) return NC_OK;   /* dst += 0 */
    if (cuda) {
        const nc_cuda_api *cu = nc_cuda_for(name);
        if (!cu) return NC_ERR_DEVICE;
        nc_status st = cu->sum_to(nc_f32p(dst), nc_f32p(src), &g, alpha);
        if (st != NC_OK)
            return nc_fail(st, "%s: CUDA: %s", name, cu->last_error ? cu->last_error() : "unknown error");
        return NC_OK;
    }
    return red_sum(&g, nc_f32p(dst), nc_f32p(src), alpha, 1);
}

/* ---- reduce_dim ------------------------------------------------------------------------------ */
static const char *const red_names[] = { "sum", "mean", "max", "min" };

static inline int64_t ld_int(const char *base, int32_t dt, int64_t off) {
    return dt == NC_I32 ? ((const int32_t *)base)[off] : ((const int64_t *)base)[off];
}
static inline void st_int(char *base, int32_t dt, int64_t off, int64_t v) {
    if (dt == NC_I32) ((int32_t *)base)[off] = (int32_t)v;
    else ((int64_t *)base)[off] = v;
}

/* Integer reduction of a along g's single reduced dim: SUM wraps in 64 bits (then narrows to out's
 * dtype), MAX/MIN keep the first position of the extreme. Exact for any i64 value. */
static void red_int(const red_geo *g, const nc_tensor *a, nc_tensor *out, nc_tensor *index, int32_t dim, int32_t op) {
    const char *src = nc_ptr(a);
    char *dst = nc_ptr(out);
    int32_t da = a->dtype, dout = out->dtype;
    int64_t *ip = index ? (int64_t *)nc_tensor_data(index) : NULL;
    int64_t n = g->nred, ist = g->rst_src[0], nk = g->nkept;
#pragma omp parallel for schedule(static) if (nk * n >= NC_PAR_MIN && nk > 1)
    for (int64_t k = 0; k < nk; k++) {
        int64_t so, dof;
        kept_offsets(g, k, &so, &dof);
        if (op == NC_RED_SUM) {
            uint64_t acc = 0;
            for (int64_t j = 0; j < n; j++) acc += (uint64_t)ld_int(src, da, so + j * ist);
            st_int(dst, dout, dof, (int64_t)acc);
            continue;
        }
        int64_t best = ld_int(src, da, so), bi = 0;
        for (int64_t j = 1; j < n; j++) {
            int64_t v = ld_int(src, da, so + j * ist);
            if (op == NC_RED_MAX ? v > best : v < best) { best = v; bi = j; }
        }
        st_int(dst, dout, dof, best);
        if (ip) {
            int64_t kk = k, off = 0;
            for (int32_t d = a->ndim - 1; d >= 0; d--) {
                if (d == dim) continue;
                int64_t sz = a->shape[d];
                off += (kk % sz) * index->strides[d];
                kk /= sz;
            }
            ip[off] = bi;
        }
    }
}

nc_status nc_reduce_dim(nc_tensor *out, nc_tensor *index, const nc_tensor *a, int32_t dim, int32_t op) {
    if (op < NC_RED_SUM || op > NC_RED_MIN)
        return nc_fail(NC_ERR_ARG, "reduce_dim: expected op in [0, 3] (sum mean max min), got %d", op);
    const char *name = red_names[op];
    NC_TRY(nc_check_not_null(name, "out", out));
    NC_TRY(nc_check_not_null(name, "a", a));
    if (out->device == NC_CUDA || a->device == NC_CUDA || (index && index->device == NC_CUDA)) {
        /* sum / mean on the device: out = 0, then the CUDA sum_to onto out's keepdim shape */
        if (op != NC_RED_SUM && op != NC_RED_MEAN) return nc_no_cuda(name, NULL);
        NC_TRY(nc_check_device(name, "out", out, NC_CUDA));
        NC_TRY(nc_check_device(name, "a", a, NC_CUDA));
        NC_TRY(nc_check_dtype(name, "out", out, NC_F32));
        NC_TRY(nc_check_dtype(name, "a", a, NC_F32));
        if (a->ndim == 0) return nc_fail(NC_ERR_SHAPE, "%s: expected a tensor with at least 1 dim, got a scalar", name);
        NC_TRY(nc_norm_dim(name, &dim, a->ndim));
        int64_t want[NC_MAX_DIMS];
        memcpy(want, a->shape, sizeof(int64_t) * (size_t)a->ndim);
        want[dim] = 1;
        NC_TRY(nc_check_shape(name, "out", out, a->ndim, want));
        NC_TRY(nc_check_writable(name, "out", out));
        int64_t n = a->shape[dim];
        if (n == 0) return nc_tensor_fill(out, op == NC_RED_SUM ? 0.0 : NAN);
        NC_TRY(nc_tensor_fill(out, 0.0));
        return nc_sum_to(out, a, op == NC_RED_MEAN ? 1.0 / (double)n : 1.0);
    }
    NC_TRY(nc_check_cpu(name, "out", out));
    NC_TRY(nc_check_cpu(name, "a", a));
    int is_int = a->dtype == NC_I32 || a->dtype == NC_I64;
    if (is_int) {
        if (op == NC_RED_MEAN)
            return nc_fail(NC_ERR_DTYPE, "mean: not defined for %s tensors; convert with :to('f32') first",
                           nc_dtype_info(a->dtype)->name);
        if (out->dtype != a->dtype && !(op == NC_RED_SUM && out->dtype == NC_I64)) {
            char b1[NC_DESC_LEN], b2[NC_DESC_LEN];
            return nc_fail(NC_ERR_DTYPE, "%s: expected out of dtype %s%s for a %s, got %s", name,
                           nc_dtype_info(a->dtype)->name, op == NC_RED_SUM ? " or i64" : "",
                           nc_describe(a, b1, sizeof b1), nc_describe(out, b2, sizeof b2));
        }
    } else {
        NC_TRY(nc_check_dtype(name, "out", out, NC_F32));
        NC_TRY(nc_check_dtype(name, "a", a, NC_F32));
    }
    if (index) {
        NC_TRY(nc_check_cpu(name, "index", index));
        NC_TRY(nc_check_dtype(name, "index", index, NC_I64));
    }
    if (a->ndim == 0) return nc_fail(NC_ERR_SHAPE, "%s: expected a tensor with at least 1 dim, got a scalar", name);
    NC_TRY(nc_norm_dim(name, &dim, a->ndim));
    int64_t want[NC_MAX_DIMS];
    memcpy(want, a->shape, sizeof(int64_t) * (size_t)a->ndim);
    want[dim] = 1;
    NC_TRY(nc_check_shape(name, "out", out, a->ndim, want));
    NC_TRY(nc_check_writable(name, "out", out));
    if (index) {
        NC_TRY(nc_check_shape(name, "index", index, a->ndim, want));
        NC_TRY(nc_check_writable(name, "index", index));
    }
    int64_t n = a->shape[dim];
    if (n == 0 && (op == NC_RED_MAX || op == NC_RED_MIN))
        return nc_fail(NC_ERR_SHAPE, "%s: cannot reduce dim %d of size 0 (no identity for %s)", name, dim, name);
    red_geo g;
    memset(&g, 0, sizeof g);
    g.nkept = 1;
    for (int32_t d = 0; d < a->ndim; d++) {
        if (d == dim) continue;
        g.kshape[g.nk] = a->shape[d];
        g.kst_src[g.nk] = a->strides[d];
        g.kst_dst[g.nk] = out->strides[d];
        g.nk++;
        g.nkept *= a->shape[d];
    }
    g.nr = 1;
    g.rshape[0] = n;
    g.rst_src[0] = a->strides[dim];
    g.nred = n;
    if (g.nkept == 0) return NC_OK;
    if (is_int) {
        if (n == 0) return nc_tensor_fill(out, 0.0);   /* sum of nothing */
        red_int(&g, a, out, index, dim, op);
        return NC_OK;
    }
    const float *src = nc_f32p(a);
    float *dst = nc_f32p(out);
    if (op == NC_RED_SUM || op == NC_RED_MEAN) {
        if (n == 0) return nc_tensor_fill(out, op == NC_RED_SUM ? 0.0 : NAN);
        return red_sum(&g, dst, src, op == NC_RED_MEAN ? 1.0 / (double)n : 1.0, 0);
    }
    int64_t *ip = index ? (int64_t *)nc_tensor_data(index) : NULL;
    int64_t ist = a->strides[dim];
    int ismax = op == NC_RED_MAX;
    int64_t nk = g.nkept, nblk = (nk + RED_KB - 1) / RED_KB;
#pragma omp parallel for schedule(static) if (nk * n >= NC_PAR_MIN && nblk > 1)
    for (int64_t b = 0; b < nblk; b++) {
        int64_t k0 = b * RED_KB, m = nk - k0 < RED_KB ? nk - k0 : RED_KB;
        int64_t so[RED_KB], dof[RED_KB], best_i[RED_KB];
        float best[RED_KB];
        for (int64_t kk = 0; kk < m; kk++) {
            kept_offsets(&g, k0 + kk, &so[kk], &dof[kk]);
            best[kk] = src[so[kk]];
            best_i[kk] = 0;
        }
        for (int64_t j = 1; j < n; j++) {
            for (int64_t kk = 0; kk < m; kk++) {
                float v = src[so[kk] + j * ist], bv = best[kk];
                if (bv != bv) continue;   /* a NaN already won */
                int take = v != v || (ismax ? v > bv : v < bv);
                if (take) {
                    best[kk] = v;
                    best_i[kk] = j;
                }
            }
        }
        for (int64_t kk = 0; kk < m; kk++) {
            dst[dof[kk]] = best[kk];
            if (ip) {
                /* index has out's shape; its offset from its own strides */
                int64_t k = k0 + kk, off = 0;
                for (int32_t d = a->ndim - 1; d >= 0; d--) {
                    if (d == dim) continue;
                    int64_t sz = a->shape[d];
                    off += (k % sz) * index->strides[d];
                    k /= sz;
                }
                ip[off] = best_i[kk];
            }
        }
    }
    return NC_OK;
}

nc_status nc_reduce_dim_backward(nc_tensor *ga, const nc_tensor *index, const nc_tensor *gout, int32_t dim,
                                 int32_t op) {
    if (op < NC_RED_SUM || op > NC_RED_MIN)
        return nc_fail(NC_ERR_ARG, "reduce_dim_backward: expected op in [0, 3] (sum mean max min), got %d", op);
    char name[40];
    snprintf(name, sizeof name, "%s backward", red_names[op]);
    if (!ga) return NC_OK;
    NC_TRY(nc_check_not_null(name, "gout", gout));
    int cuda = ga->device == NC_CUDA || gout->device == NC_CUDA;
    if (cuda && op != NC_RED_SUM && op != NC_RED_MEAN) return nc_no_cuda(name, NULL);   /* max/min need scatter_add */
    NC_TRY(nc_check_device(name, "ga", ga, cuda ? NC_CUDA : NC_CPU));
    NC_TRY(nc_check_device(name, "gout", gout, cuda ? NC_CUDA : NC_CPU));
    NC_TRY(nc_check_dtype(name, "ga", ga, NC_F32));
    NC_TRY(nc_check_dtype(name, "gout", gout, NC_F32));
    if (ga->ndim == 0) return nc_fail(NC_ERR_SHAPE, "%s: expected ga with at least 1 dim, got a scalar", name);
    NC_TRY(nc_norm_dim(name, &dim, ga->ndim));
    int64_t want[NC_MAX_DIMS];
    memcpy(want, ga->shape, sizeof(int64_t) * (size_t)ga->ndim);
    want[dim] = 1;
    NC_TRY(nc_check_shape(name, "gout", gout, ga->ndim, want));
    int64_t n = ga->shape[dim];
    if (op == NC_RED_SUM || op == NC_RED_MEAN) {
        if (n == 0) return NC_OK;
        return nc_add_scaled(ga, gout, op == NC_RED_MEAN ? 1.0 / (double)n : 1.0);
    }
    if (!index)
        return nc_fail(NC_ERR_ARG, "%s: needs the index tensor saved by the forward (argmax/argmin), got NULL", name);
    NC_TRY(nc_check_shape(name, "index", index, ga->ndim, want));
    return nc_scatter_add(ga, dim, index, gout);
}
