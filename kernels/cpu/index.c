/* kernels/cpu/index.c — indexing ops: embedding, index_select / index_add, gather / scatter_add
 * (torch semantics) and cat.
 *
 * Promise: index tensors are i32 or i64 of any strides; every index is validated before anything
 * is written, and an out-of-range one fails with NC_ERR_INDEX naming the value, the bound and
 * the position. Accumulating ops (embedding_backward, index_add, scatter_add) split work so that
 * no two threads write the same element and each element's additions happen in index order:
 * results are deterministic and independent of the thread count. Forward copies (index_select,
 * gather, cat) accept any plain dtype; accumulations are f32. CPU only, except nc_cat, which
 * works on any device through nc_tensor_copy when all tensors share it, and nc_embedding /
 * nc_embedding_backward, which run on CUDA tensors (kernels/cuda/nn.cu; indices checked on a host
 * copy; the backward adds in token order per column, bit-identical to the CPU).
 * Row gather / scatter (nc_rows_gather, nc_rows_scatter: Collider's compact kept-row buffers,
 * algorithms.md §8.4) take a strictly increasing i64 row list, copy whole f32 rows (memcpy on unit
 * column stride) on ONE thread; they never add, so results are exact copies. One thread on purpose:
 * they run between OpenBLAS sgemm calls, whose pthread workers keep spinning for a while after each
 * call, and an OpenMP team started there fights them for the cores (Collider's linear backward on
 * 2 cores measured 0.56-0.69x of dense with threaded copies, 1.23-1.45x with single-threaded ones).
 */
#include "nn_common.h"
#include <stdio.h>
#include <string.h>

static inline int64_t load_index(const void *base, int32_t dtype, int64_t off) {
    return dtype == NC_I64 ? ((const int64_t *)base)[off] : (int64_t)((const int32_t *)base)[off];
}

/* Logical element i of t -> element offset (t's own strides). */
static inline int64_t off_of(const nc_tensor *t, int64_t i) { return nc_offset_of(t, i); }

/* Every index of idx must be in [0, bound). */
static nc_status check_indices(const char *op, const nc_tensor *idx, int64_t bound, const char *what) {
    int64_t n = nc_tensor_numel(idx);
    const void *base = nc_ptr(idx);
    int contig = nc_tensor_is_contiguous(idx);
    int64_t bad = -1;
    for (int64_t i = 0; i < n; i++) {
        int64_t v = load_index(base, idx->dtype, contig ? i : off_of(idx, i));
        if (v < 0 || v >= bound) {
            bad = i;
            break;
        }
    }
    if (bad < 0) return NC_OK;
    int64_t v = load_index(base, idx->dtype, contig ? bad : off_of(idx, bad));
    char b[NC_DESC_LEN];
    return nc_fail(NC_ERR_INDEX, "%s: index %lld out of range [0, %lld) for %s, at flat position %lld of idx %s", op,
                   (long long)v, (long long)bound, what, (long long)bad, nc_describe(idx, b, sizeof b));
}

static nc_status cpu_only(const char *op, int n, const nc_tensor *const *ts, const char *const *names) {
    for (int i = 0; i < n; i++)
        if (ts[i] && ts[i]->device == NC_CUDA) return nc_no_cuda(op, NULL);
    for (int i = 0; i < n; i++)
        if (ts[i]) NC_TRY(nc_check_cpu(op, names[i], ts[i]));
    return NC_OK;
}

static nc_status check_plain(const char *op, const char *arg, const nc_tensor *t) {
    const nc_dtype_traits *tr = nc_dtype_info(t->dtype);
    if (tr && !tr->is_packed) return NC_OK;
    char b[NC_DESC_LEN];
    return nc_fail(NC_ERR_DTYPE, "%s: expected %s of a plain (unpacked) dtype, got %s", op, arg,
                   nc_describe(t, b, sizeof b));
}

static nc_status check_same_dtype(const char *op, const char *an, const nc_tensor *a, const char *bn,
                                  const nc_tensor *b) {
    if (a->dtype == b->dtype) return NC_OK;
    char b1[NC_DESC_LEN], b2[NC_DESC_LEN];
    return nc_fail(NC_ERR_DTYPE, "%s: expected %s and %s to have the same dtype, got %s and %s", op, an, bn,
                   nc_describe(a, b1, sizeof b1), nc_describe(b, b2, sizeof b2));
}

static inline void copy_elem(char *d, const char *s, int32_t esz) {
    switch (esz) {
    case 1: *d = *s; break;
    case 2: memcpy(d, s, 2); break;
    case 4: memcpy(d, s, 4); break;
    case 8: memcpy(d, s, 8); break;
    default: memcpy(d, s, (size_t)esz); break;
    }
}

/* every tensor on dev (the op's device) */
static nc_status on_device(const char *op, int32_t dev, int n, const nc_tensor *const *ts, const char *const *names) {
    for (int i = 0; i < n; i++)
        if (ts[i]) NC_TRY(nc_check_device(op, names[i], ts[i], dev));
    return NC_OK;
}

/* ---- embedding ---------------------------------------------------------------------------- */
/* CUDA (kernels/cuda/nn.cu): indices are range-checked on a host copy (the CPU's message), then
 * forward (gout NULL): out = weight[idx] rows; backward (weight NULL): gw (out) += scatter of gout */
static nc_status embedding_cuda(const char *op, nc_tensor *out, const nc_tensor *weight, const nc_tensor *idx,
                                const nc_tensor *gout) {
    const nc_cuda_api *cu = nc_cuda_for(op);
    if (!cu) return NC_ERR_DEVICE;
    int64_t n = nc_tensor_numel(idx), V = weight ? weight->shape[0] : out->shape[0];
    int64_t D = weight ? weight->shape[1] : out->shape[1];
    nc_tensor *hidx = nc_nn_to_host(op, idx);
    if (!hidx) return NC_ERR_DEVICE;
    nc_status st = check_indices(op, hidx, V, "weight rows");
    nc_tensor_release(hidx);
    if (st != NC_OK || n == 0 || D == 0) return st;
    nc_tensor *ti, *tx;
    const nc_tensor *ic = nc_nn_contig(op, idx, &ti), *xc = nc_nn_contig(op, weight ? weight : gout, &tx);
    st = NC_ERR_OOM;
    if (ic && xc) {
        st = weight ? cu->embedding(nc_f32p(out), nc_f32p(xc), nc_ptr(ic), idx->dtype, n, D)
                    : cu->embedding_backward(nc_f32p(out), nc_ptr(ic), idx->dtype, nc_f32p(xc), n, D);
        if (st != NC_OK) nc_cuda_err(op, cu, st);
    }
    nc_tensor_release(ti);
    nc_tensor_release(tx);
    return st;
}

nc_status nc_embedding(nc_tensor *out, const nc_tensor *weight, const nc_tensor *idx) {
    static const char *op = "embedding";
    NC_TRY(nc_check_not_null(op, "out", out));
    NC_TRY(nc_check_not_null(op, "weight", weight));
    NC_TRY(nc_check_not_null(op, "idx", idx));
    const nc_tensor *ts[3] = { out, weight, idx };
    static const char *const tn[3] = { "out", "weight", "idx" };
    int32_t dev = nc_dev_of(3, ts);
    NC_TRY(on_device(op, dev, 3, ts, tn));
    NC_TRY(nc_check_dtype(op, "out", out, NC_F32));
    NC_TRY(nc_check_dtype(op, "weight", weight, NC_F32));
    NC_TRY(nc_check_index_dtype(op, "idx", idx));
    NC_TRY(nc_check_ndim(op, "weight", weight, 2));
    if (idx->ndim + 1 > NC_MAX_DIMS)
        return nc_fail(NC_ERR_SHAPE, "embedding: idx has %d dims; out would exceed %d", idx->ndim, NC_MAX_DIMS);
    int64_t V = weight->shape[0], D = weight->shape[1];
    int64_t want[NC_MAX_DIMS];
    memcpy(want, idx->shape, sizeof(int64_t) * (size_t)idx->ndim);
    want[idx->ndim] = D;
    NC_TRY(nc_check_shape(op, "out", out, idx->ndim + 1, want));
    NC_TRY(nc_check_contiguous(op, "out", out));
    if (dev == NC_CUDA) return embedding_cuda(op, out, weight, idx, NULL);
    NC_TRY(check_indices(op, idx, V, "weight rows"));
    int64_t n = nc_tensor_numel(idx);
    const void *ib = nc_ptr(idx);
    int icontig = nc_tensor_is_contiguous(idx);
    const float *w = nc_f32p(weight);
    float *o = nc_f32p(out);
    int64_t ws0 = weight->strides[0], ws1 = weight->strides[1];
#pragma omp parallel for schedule(static) if (n * D >= NC_PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        int64_t r = load_index(ib, idx->dtype, icontig ? i : off_of(idx, i));
        const float *src = w + r * ws0;
        float *dst = o + i * D;
        if (ws1 == 1) memcpy(dst, src, sizeof(float) * (size_t)D);
        else for (int64_t j = 0; j < D; j++) dst[j] = src[j * ws1];
    }
    return NC_OK;
}

nc_status nc_embedding_backward(nc_tensor *gweight, const nc_tensor *idx, const nc_tensor *gout) {
    static const char *op = "embedding backward";
    if (!gweight) return NC_OK;
    NC_TRY(nc_check_not_null(op, "idx", idx));
    NC_TRY(nc_check_not_null(op, "gout", gout));
    const nc_tensor *ts[3] = { gweight, idx, gout };
    static const char *const tn[3] = { "gweight", "idx", "gout" };
    int32_t dev = nc_dev_of(3, ts);
    NC_TRY(on_device(op, dev, 3, ts, tn));
    NC_TRY(nc_check_dtype(op, "gweight", gweight, NC_F32));
    NC_TRY(nc_check_dtype(op, "gout", gout, NC_F32));
    NC_TRY(nc_check_index_dtype(op, "idx", idx));
    NC_TRY(nc_check_ndim(op, "gweight", gweight, 2));
    NC_TRY(nc_check_writable(op, "gweight", gweight));
    int64_t V = gweight->shape[0], D = gweight->shape[1];
    int64_t want[NC_MAX_DIMS];
    if (idx->ndim + 1 > NC_MAX_DIMS)
        return nc_fail(NC_ERR_SHAPE, "%s: idx has %d dims; gout would exceed %d", op, idx->ndim, NC_MAX_DIMS);
    memcpy(want, idx->shape, sizeof(int64_t) * (size_t)idx->ndim);
    want[idx->ndim] = D;
    NC_TRY(nc_check_shape(op, "gout", gout, idx->ndim + 1, want));
    if (dev == NC_CUDA) {
        NC_TRY(nc_check_contiguous(op, "gweight", gweight));
        return embedding_cuda(op, gweight, NULL, idx, gout);
    }
    NC_TRY(check_indices(op, idx, V, "weight rows"));
    int64_t n = nc_tensor_numel(idx);
    if (n == 0 || D == 0) return NC_OK;
    const void *ib = nc_ptr(idx);
    int icontig = nc_tensor_is_contiguous(idx), gcontig = nc_tensor_is_contiguous(gout);
    float *gw = nc_f32p(gweight);
    const float *g = nc_f32p(gout);
    int64_t ws0 = gweight->strides[0], ws1 = gweight->strides[1];
    /* column blocks: each thread owns a slice of D for every token (no races, token order kept) */
    const int64_t CB = 64;
    int64_t nb = (D + CB - 1) / CB;
#pragma omp parallel for schedule(static) if (n * D >= NC_PAR_MIN && nb > 1)
    for (int64_t b = 0; b < nb; b++) {
        int64_t c0 = b * CB, c1 = c0 + CB < D ? c0 + CB : D;
        for (int64_t i = 0; i < n; i++) {
            int64_t r = load_index(ib, idx->dtype, icontig ? i : off_of(idx, i));
            float *dst = gw + r * ws0;
            if (gcontig) {
                const float *src = g + i * D;
                for (int64_t j = c0; j < c1; j++) dst[j * ws1] += src[j];
            } else {
                for (int64_t j = c0; j < c1; j++) dst[j * ws1] += g[off_of(gout, i * D + j)];
            }
        }
    }
    return NC_OK;
}

/* ---- gather / scatter_add core --------------------------------------------------------------- */
/* torch.gather: out[p] = a[p with p[dim] = idx[p]]; out, idx share a shape. Any plain dtype. */
static nc_status gather_core(const char *op, nc_tensor *out, const nc_tensor *a, int32_t dim, const nc_tensor *idx) {
    int64_t n = nc_tensor_numel(idx);
    if (n == 0) return NC_OK;
    int32_t nd = idx->ndim, esz = nc_dtype_info(a->dtype)->elem_size;
    const char *ab = nc_ptr(a);
    char *ob = nc_ptr(out);
    const void *ib = nc_ptr(idx);
    (void)op;
#pragma omp parallel for schedule(static) if (n >= NC_PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        int64_t rem = i, oo = 0, io = 0, ao = 0;
        int64_t cdim = 0;
        for (int32_t d = nd - 1; d >= 0; d--) {
            int64_t c = rem % idx->shape[d];
            rem /= idx->shape[d];
            oo += c * out->strides[d];
            io += c * idx->strides[d];
            if (d == dim) cdim = c;
            else ao += c * a->strides[d];
        }
        (void)cdim;
        int64_t j = load_index(ib, idx->dtype, io);
        ao += j * a->strides[dim];
        copy_elem(ob + oo * esz, ab + ao * esz, esz);
    }
    return NC_OK;
}

/* dst[p with p[dim] = idx[p]] += src[p] for p over idx's shape (f32). Parallel over the lines
 * along dim (distinct lines write distinct dst elements); each line runs in order. */
static void scatter_core(nc_tensor *dst, int32_t dim, const nc_tensor *idx, const nc_tensor *src) {
    int64_t n = nc_tensor_numel(idx);
    if (n == 0) return;
    int32_t nd = idx->ndim;
    int64_t L = idx->shape[dim], lines = n / L;
    float *db = nc_f32p(dst);
    const float *sb = nc_f32p(src);
    const void *ib = nc_ptr(idx);
    int64_t ist = idx->strides[dim], sst = src->strides[dim], dst_st = dst->strides[dim];
#pragma omp parallel for schedule(static) if (n >= NC_PAR_MIN && lines > 1)
    for (int64_t l = 0; l < lines; l++) {
        int64_t rem = l, io = 0, so = 0, dof = 0;
        for (int32_t d = nd - 1; d >= 0; d--) {
            if (d == dim) continue;
            int64_t c = rem % idx->shape[d];
            rem /= idx->shape[d];
            io += c * idx->strides[d];
            so += c * src->strides[d];
            dof += c * dst->strides[d];
        }
        for (int64_t j = 0; j < L; j++) {
            int64_t t = load_index(ib, idx->dtype, io + j * ist);
            db[dof + t * dst_st] += sb[so + j * sst];
        }
    }
}

nc_status nc_gather(nc_tensor *out, const nc_tensor *a, int32_t dim, const nc_tensor *idx) {
    static const char *op = "gather";
    NC_TRY(nc_check_not_null(op, "out", out));
    NC_TRY(nc_check_not_null(op, "a", a));
    NC_TRY(nc_check_not_null(op, "idx", idx));
    const nc_tensor *ts[3] = { out, a, idx };
    static const char *const tn[3] = { "out", "a", "idx" };
    NC_TRY(cpu_only(op, 3, ts, tn));
    NC_TRY(check_plain(op, "a", a));
    NC_TRY(check_same_dtype(op, "out", out, "a", a));
    NC_TRY(nc_check_index_dtype(op, "idx", idx));
    if (a->ndim == 0) return nc_fail(NC_ERR_SHAPE, "gather: expected a with at least 1 dim, got a scalar");
    NC_TRY(nc_norm_dim(op, &dim, a->ndim));
    NC_TRY(nc_check_ndim(op, "idx", idx, a->ndim));
    for (int32_t d = 0; d < a->ndim; d++)
        if (d != dim && idx->shape[d] > a->shape[d]) {
            char b1[NC_DESC_LEN], b2[NC_DESC_LEN];
            return nc_fail(NC_ERR_SHAPE, "gather: expected idx.shape[%d] <= a.shape[%d] (dims other than %d), got idx %s and a %s",
                           d, d, dim, nc_describe(idx, b1, sizeof b1), nc_describe(a, b2, sizeof b2));
        }
    NC_TRY(nc_check_same_shape(op, "out", out, "idx", idx));
    NC_TRY(nc_check_writable(op, "out", out));
    NC_TRY(check_indices(op, idx, a->shape[dim], "dim of a"));
    return gather_core(op, out, a, dim, idx);
}

nc_status nc_scatter_add(nc_tensor *dst, int32_t dim, const nc_tensor *idx, const nc_tensor *src) {
    static const char *op = "scatter_add";
    NC_TRY(nc_check_not_null(op, "dst", dst));
    NC_TRY(nc_check_not_null(op, "idx", idx));
    NC_TRY(nc_check_not_null(op, "src", src));
    const nc_tensor *ts[3] = { dst, idx, src };
    static const char *const tn[3] = { "dst", "idx", "src" };
    NC_TRY(cpu_only(op, 3, ts, tn));
    NC_TRY(nc_check_dtype(op, "dst", dst, NC_F32));
    NC_TRY(nc_check_dtype(op, "src", src, NC_F32));
    NC_TRY(nc_check_index_dtype(op, "idx", idx));
    if (dst->ndim == 0) return nc_fail(NC_ERR_SHAPE, "scatter_add: expected dst with at least 1 dim, got a scalar");
    NC_TRY(nc_norm_dim(op, &dim, dst->ndim));
    NC_TRY(nc_check_ndim(op, "idx", idx, dst->ndim));
    NC_TRY(nc_check_ndim(op, "src", src, dst->ndim));
    for (int32_t d = 0; d < dst->ndim; d++)
        if (idx->shape[d] > src->shape[d] || (d != dim && idx->shape[d] > dst->shape[d])) {
            char b1[NC_DESC_LEN], b2[NC_DESC_LEN], b3[NC_DESC_LEN];
            return nc_fail(NC_ERR_SHAPE,
                           "scatter_add: expected idx.shape[%d] <= src.shape[%d] and (for dims other than %d) <= "
                           "dst.shape[%d], got idx %s, src %s, dst %s",
                           d, d, dim, d, nc_describe(idx, b1, sizeof b1), nc_describe(src, b2, sizeof b2),
                           nc_describe(dst, b3, sizeof b3));
        }
    NC_TRY(nc_check_writable(op, "dst", dst));
    NC_TRY(check_indices(op, idx, dst->shape[dim], "dim of dst"));
    scatter_core(dst, dim, idx, src);
    return NC_OK;
}

/* idx (1-D, length L) as a view with `like`'s shape except L on dim: stride 0 elsewhere */
static void broadcast_index(nc_tensor *v, const nc_tensor *idx, const nc_tensor *like, int32_t dim) {
    *v = *idx;
    v->ndim = like->ndim;
    for (int32_t d = 0; d < like->ndim; d++) {
        v->shape[d] = d == dim ? idx->shape[0] : like->shape[d];
        v->strides[d] = d == dim ? idx->strides[0] : 0;
    }
}

/* ---- index_select / index_add ------------------------------------------------------------------ */
nc_status nc_index_select(nc_tensor *out, const nc_tensor *a, int32_t dim, const nc_tensor *idx) {
    static const char *op = "index_select";
    NC_TRY(nc_check_not_null(op, "out", out));
    NC_TRY(nc_check_not_null(op, "a", a));
    NC_TRY(nc_check_not_null(op, "idx", idx));
    const nc_tensor *ts[3] = { out, a, idx };
    static const char *const tn[3] = { "out", "a", "idx" };
    NC_TRY(cpu_only(op, 3, ts, tn));
    NC_TRY(check_plain(op, "a", a));
    NC_TRY(check_same_dtype(op, "out", out, "a", a));
    NC_TRY(nc_check_index_dtype(op, "idx", idx));
    NC_TRY(nc_check_ndim(op, "idx", idx, 1));
    if (a->ndim == 0) return nc_fail(NC_ERR_SHAPE, "index_select: expected a with at least 1 dim, got a scalar");
    NC_TRY(nc_norm_dim(op, &dim, a->ndim));
    int64_t want[NC_MAX_DIMS];
    memcpy(want, a->shape, sizeof(int64_t) * (size_t)a->ndim);
    want[dim] = idx->shape[0];
    NC_TRY(nc_check_shape(op, "out", out, a->ndim, want));
    NC_TRY(nc_check_writable(op, "out", out));
    NC_TRY(check_indices(op, idx, a->shape[dim], "dim of a"));
    nc_tensor v;
    broadcast_index(&v, idx, out, dim);
    return gather_core(op, out, a, dim, &v);
}

nc_status nc_index_add(nc_tensor *dst, int32_t dim, const nc_tensor *idx, const nc_tensor *src) {
    static const char *op = "index_add";
    NC_TRY(nc_check_not_null(op, "dst", dst));
    NC_TRY(nc_check_not_null(op, "idx", idx));
    NC_TRY(nc_check_not_null(op, "src", src));
    const nc_tensor *ts[3] = { dst, idx, src };
    static const char *const tn[3] = { "dst", "idx", "src" };
    NC_TRY(cpu_only(op, 3, ts, tn));
    NC_TRY(nc_check_dtype(op, "dst", dst, NC_F32));
    NC_TRY(nc_check_dtype(op, "src", src, NC_F32));
    NC_TRY(nc_check_index_dtype(op, "idx", idx));
    NC_TRY(nc_check_ndim(op, "idx", idx, 1));
    if (dst->ndim == 0) return nc_fail(NC_ERR_SHAPE, "index_add: expected dst with at least 1 dim, got a scalar");
    NC_TRY(nc_norm_dim(op, &dim, dst->ndim));
    int64_t want[NC_MAX_DIMS];
    memcpy(want, dst->shape, sizeof(int64_t) * (size_t)dst->ndim);
    want[dim] = idx->shape[0];
    NC_TRY(nc_check_shape(op, "src", src, dst->ndim, want));
    NC_TRY(nc_check_writable(op, "dst", dst));
    NC_TRY(check_indices(op, idx, dst->shape[dim], "dim of dst"));
    nc_tensor v;
    broadcast_index(&v, idx, src, dim);
    scatter_core(dst, dim, &v, src);
    return NC_OK;
}

/* ---- cat ----------------------------------------------------------------------------------------- */
nc_status nc_cat(nc_tensor *out, int32_t n, const nc_tensor *const *inputs, int32_t dim) {
    static const char *op = "cat";
    NC_TRY(nc_check_not_null(op, "out", out));
    if (n < 1 || !inputs) return nc_fail(NC_ERR_ARG, "cat: expected at least 1 input tensor, got %d", n);
    NC_TRY(check_plain(op, "out", out));
    if (out->ndim == 0) return nc_fail(NC_ERR_SHAPE, "cat: cannot concatenate scalars (0-dim tensors)");
    NC_TRY(nc_norm_dim(op, &dim, out->ndim));
    int64_t total = 0;
    for (int32_t i = 0; i < n; i++) {
        const nc_tensor *t = inputs[i];
        char arg[32];
        snprintf(arg, sizeof arg, "inputs[%d]", i);
        NC_TRY(nc_check_not_null(op, arg, t));
        NC_TRY(nc_check_device(op, arg, t, out->device));
        NC_TRY(check_same_dtype(op, arg, t, "out", out));
        const nc_tensor *ref = i ? inputs[0] : out;   /* inputs[0] is checked against out */
        int ok = t->ndim == ref->ndim;
        for (int32_t d = 0; ok && d < t->ndim; d++) ok = d == dim || t->shape[d] == ref->shape[d];
        if (!ok) {
            char b1[NC_DESC_LEN], b2[NC_DESC_LEN];
            return nc_fail(NC_ERR_SHAPE, "cat: expected %s to match %s in every dim but %d, got %s and %s", arg,
                           i ? "inputs[0]" : "out", dim, nc_describe(t, b1, sizeof b1), nc_describe(ref, b2, sizeof b2));
        }
        total += t->shape[dim];
    }
    if (total != out->shape[dim]) {
        char b[NC_DESC_LEN];
        return nc_fail(NC_ERR_SHAPE, "cat: expected out.shape[%d] = %lld (the sum of the inputs' sizes), got out %s", dim,
                       (long long)total, nc_describe(out, b, sizeof b));
    }
    NC_TRY(nc_check_writable(op, "out", out));
    int64_t start = 0;
    for (int32_t i = 0; i < n; i++) {
        const nc_tensor *t = inputs[i];
        int64_t len = t->shape[dim];
        if (len > 0) {
            nc_tensor v = *out;   /* a borrowed narrow view of out (no reference taken) */
            v.shape[dim] = len;
            v.offset = out->offset + start * out->strides[dim];
            NC_TRY(nc_tensor_copy(&v, t));
        }
        start += len;
    }
    return NC_OK;
}

/* ---- row gather / scatter (Collider, algorithms.md §8.4) ---------------------------------------- */
/* rows: 1-D contiguous i64, strictly increasing, every value in [0, bound). */
static nc_status check_row_list(const char *op, const nc_tensor *rows, int64_t bound) {
    NC_TRY(nc_check_not_null(op, "rows", rows));
    NC_TRY(nc_check_cpu(op, "rows", rows));
    NC_TRY(nc_check_dtype(op, "rows", rows, NC_I64));
    NC_TRY(nc_check_ndim(op, "rows", rows, 1));
    NC_TRY(nc_check_contiguous(op, "rows", rows));
    const int64_t *r = (const int64_t *)nc_ptr(rows);
    int64_t k = rows->shape[0];
    for (int64_t i = 0; i < k; i++) {
        if (r[i] < 0 || r[i] >= bound)
            return nc_fail(NC_ERR_INDEX, "%s: row %lld out of range [0, %lld) at position %lld of rows", op,
                           (long long)r[i], (long long)bound, (long long)i);
        if (i > 0 && r[i] <= r[i - 1])
            return nc_fail(NC_ERR_ARG, "%s: rows must be strictly increasing, got %lld after %lld at position %lld",
                           op, (long long)r[i], (long long)r[i - 1], (long long)i);
    }
    return NC_OK;
}

static nc_status check_2d_f32(const char *op, const char *arg, const nc_tensor *t) {
    NC_TRY(nc_check_not_null(op, arg, t));
    NC_TRY(nc_check_dtype(op, arg, t, NC_F32));
    NC_TRY(nc_check_cpu(op, arg, t));
    return nc_check_ndim(op, arg, t, 2);
}

static inline void copy_row(float *d, int64_t ds, const float *s, int64_t ss, int64_t D) {
    if (ds == 1 && ss == 1) memcpy(d, s, sizeof(float) * (size_t)D);
    else for (int64_t j = 0; j < D; j++) d[j * ds] = s[j * ss];
}

static inline void zero_row(float *d, int64_t ds, int64_t D) {
    if (ds == 1) memset(d, 0, sizeof(float) * (size_t)D);
    else for (int64_t j = 0; j < D; j++) d[j * ds] = 0.0f;
}

nc_status nc_rows_gather(nc_tensor *out, const nc_tensor *src, const nc_tensor *rows) {
    static const char *op = "rows_gather";
    NC_TRY(check_2d_f32(op, "out", out));
    NC_TRY(check_2d_f32(op, "src", src));
    NC_TRY(check_row_list(op, rows, src->shape[0]));
    int64_t k = rows->shape[0], D = src->shape[1];
    int64_t want[2] = { k, D };
    NC_TRY(nc_check_shape(op, "out", out, 2, want));
    NC_TRY(nc_check_writable(op, "out", out));
    if (k == 0 || D == 0) return NC_OK;
    const int64_t *r = (const int64_t *)nc_ptr(rows);
    const float *s = nc_f32p(src);
    float *o = nc_f32p(out);
    int64_t ss0 = src->strides[0], ss1 = D > 1 ? src->strides[1] : 1;
    int64_t os0 = out->strides[0], os1 = D > 1 ? out->strides[1] : 1;
    /* one thread on purpose (file header) */
    for (int64_t i = 0; i < k; i++) copy_row(o + i * os0, os1, s + r[i] * ss0, ss1, D);
    return NC_OK;
}

nc_status nc_rows_scatter(nc_tensor *dst, const nc_tensor *src, const nc_tensor *rows, int32_t zero_rest) {
    static const char *op = "rows_scatter";
    NC_TRY(check_2d_f32(op, "dst", dst));
    NC_TRY(check_2d_f32(op, "src", src));
    NC_TRY(check_row_list(op, rows, dst->shape[0]));
    int64_t k = rows->shape[0], N = dst->shape[0], D = dst->shape[1];
    int64_t want[2] = { k, D };
    NC_TRY(nc_check_shape(op, "src", src, 2, want));
    NC_TRY(nc_check_writable(op, "dst", dst));
    if (D == 0) return NC_OK;
    const int64_t *r = (const int64_t *)nc_ptr(rows);
    const float *s = nc_f32p(src);
    float *d = nc_f32p(dst);
    int64_t ss0 = src->strides[0], ss1 = D > 1 ? src->strides[1] : 1;
    int64_t ds0 = dst->strides[0], ds1 = D > 1 ? dst->strides[1] : 1;
    /* iteration i writes row r[i] and (zero_rest) zeroes the gap of rows (r[i-1], r[i]); the rows
     * after the last kept one are zeroed by iteration k */
    /* one thread on purpose (file header) */
    for (int64_t i = 0; i <= k; i++) {
        if (zero_rest) {
            int64_t lo = i > 0 ? r[i - 1] + 1 : 0, hi = i < k ? r[i] : N;
            for (int64_t z = lo; z < hi; z++) zero_row(d + z * ds0, ds1, D);
        }
        if (i < k) copy_row(d + r[i] * ds0, ds1, s + i * ss0, ss1, D);
    }
    return NC_OK;
}
