/* core/tensor.c — storage, tensors, views, copies, conversions, fills and the counter-based RNG.
 *
 * Promise: a tensor is a refcounted header over a refcounted storage; views share the storage
 * and keep it alive; every view is bounds-checked against its storage, so no sequence of view
 * calls can reach memory outside an allocation. Copies convert between every plain dtype and
 * move data between devices. Random fills are a pure function of (seed, offset, logical index).
 */
#include "internal.h"
#include "dtype_conv.h"
#include "philox.h"

#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern _Atomic int64_t nc_tensors_live;

/* ---- half-precision conversions ------------------------------------------------------------ */
/* The conversions themselves: core/dtype_conv.h (shared with the CUDA backend). */
float nc_bf16_to_f32(uint16_t h) { return nc_conv_bf16_f32(h); }
uint16_t nc_f32_to_bf16(float f) { return nc_conv_f32_bf16(f); }
float nc_f16_to_f32(uint16_t h) { return nc_conv_f16_f32(h); }
uint16_t nc_f32_to_f16(float f) { return nc_conv_f32_f16(f); }
double nc_load_as_f64(const void *base, int32_t dtype, int64_t off) { return nc_conv_load_f64(base, dtype, off); }
void nc_store_from_f64(void *base, int32_t dtype, int64_t off, double v) { nc_conv_store_f64(base, dtype, off, v); }

/* ---- storage ------------------------------------------------------------------------------ */
static nc_storage *storage_new(int64_t nbytes, int32_t device, int zero) {
    nc_storage *s = calloc(1, sizeof *s);
    if (!s) { nc_fail(NC_ERR_OOM, "alloc: out of memory for a storage header"); return NULL; }
    s->refcount = 1;
    s->nbytes = nbytes;
    s->device = device;
    s->flags = NC_STORAGE_OWNS;
    if (device == NC_CPU) {
        s->data = nc_host_alloc(nbytes);
        if (!s->data) { free(s); return NULL; }
        if (zero) memset(s->data, 0, (size_t)nbytes);
    } else if (device == NC_CUDA) {
        const nc_cuda_api *cu = nc_cuda();
        if (!cu) { free(s); return NULL; }
        if (cu->malloc(&s->data, nbytes > 0 ? nbytes : 1) != NC_OK) {
            nc_fail(NC_ERR_OOM, "alloc: cuda malloc of %lld bytes failed: %s", (long long)nbytes, cu->last_error());
            free(s);
            return NULL;
        }
        nc_count_device(nbytes);
        if (zero && cu->memset0(s->data, nbytes) != NC_OK) {
            nc_fail(NC_ERR_DEVICE, "alloc: cuda memset failed: %s", cu->last_error());
            cu->free(s->data);
            nc_count_device(-nbytes);
            free(s);
            return NULL;
        }
    } else {
        nc_fail(NC_ERR_DEVICE, "alloc: unknown device %d", device);
        free(s);
        return NULL;
    }
    return s;
}

/* A small CPU tensor (data of at most NC_SMALL_DATA bytes: scalars, losses, tiny temporaries)
 * is one block from nc_small_alloc: header, storage, then the data at SMALL_HDR (64-aligned).
 * The block belongs to the storage: the header holds a reference to the storage, views of the
 * tensor hold more, and the block is recycled when the last of them is released. Until then a
 * released header just sits unused in its block (its refcount is 0 and nothing points to it). */
typedef struct small_tensor {
    nc_tensor t;
    nc_storage s;
} small_tensor;
#define SMALL_HDR 256
_Static_assert(sizeof(small_tensor) <= SMALL_HDR && SMALL_HDR % 64 == 0, "small tensor header layout");
_Static_assert(SMALL_HDR + NC_SMALL_DATA == NC_SMALL_BLOCK, "small tensor block layout");

static void storage_release(nc_storage *s) {
    if (!s || atomic_fetch_sub((_Atomic int64_t *)&s->refcount, 1) != 1) return;
    if (s->flags & NC_STORAGE_SMALL) {
        nc_small_free((char *)s - offsetof(small_tensor, s), s->nbytes);
        return;
    }
    if (s->flags & NC_STORAGE_OWNS) {
        if (s->device == NC_CPU) nc_host_free(s->data, s->nbytes);
        else if (s->device == NC_CUDA) {
            const nc_cuda_api *cu = nc_cuda();
            if (cu) cu->free(s->data);
            nc_count_device(-s->nbytes);
        }
    }
    free(s);
}

/* ---- tensor headers ----------------------------------------------------------------------- */
static nc_status check_shape_args(const char *op, int32_t ndim, const int64_t *shape) {
    if (ndim < 0 || ndim > NC_MAX_DIMS)
        return nc_fail(NC_ERR_SHAPE, "%s: ndim must be in [0, %d], got %d", op, NC_MAX_DIMS, ndim);
    if (ndim > 0 && !shape) return nc_fail(NC_ERR_ARG, "%s: shape is NULL", op);
    for (int32_t d = 0; d < ndim; d++)
        if (shape[d] < 0)
            return nc_fail(NC_ERR_SHAPE, "%s: dim %d has negative size %lld", op, d, (long long)shape[d]);
    return NC_OK;
}

static void set_contiguous_strides(nc_tensor *t) {
    int64_t st = 1;
    for (int32_t d = t->ndim - 1; d >= 0; d--) { t->strides[d] = st; st *= t->shape[d]; }
}

static int64_t shape_numel(int32_t ndim, const int64_t *shape) {
    int64_t n = 1;
    for (int32_t d = 0; d < ndim; d++) n *= shape[d];
    return n;
}

static int64_t bytes_for(int32_t dtype, int64_t numel) {
    const nc_dtype_traits *tr = nc_dtype_info(dtype);
    return (numel + tr->block_elems - 1) / tr->block_elems * tr->block_bytes;
}

static void header_init(nc_tensor *t, nc_storage *s, int32_t dtype, int32_t ndim, const int64_t *shape) {
    memset(t, 0, sizeof *t);
    t->refcount = 1;
    t->storage = s;
    t->dtype = dtype;
    t->device = s->device;
    t->ndim = ndim;
    for (int32_t d = 0; d < ndim; d++) t->shape[d] = shape[d];
    set_contiguous_strides(t);
    atomic_fetch_add(&nc_tensors_live, 1);
}

static nc_tensor *header_new(nc_storage *s, int32_t dtype, int32_t ndim, const int64_t *shape) {
    nc_tensor *t = malloc(sizeof *t);
    if (!t) { nc_fail(NC_ERR_OOM, "alloc: out of memory for a tensor header"); return NULL; }
    header_init(t, s, dtype, ndim, shape);
    return t;
}

static nc_tensor *small_new(int32_t dtype, int32_t ndim, const int64_t *shape, int64_t nbytes, int zero) {
    char *b = nc_small_alloc(nbytes);
    if (!b) return NULL;
    small_tensor *st = (small_tensor *)b;
    st->s = (nc_storage){ .refcount = 1, .data = b + SMALL_HDR, .nbytes = nbytes, .device = NC_CPU,
                          .flags = NC_STORAGE_OWNS | NC_STORAGE_SMALL };
    if (zero && nbytes) memset(b + SMALL_HDR, 0, (size_t)nbytes);
    header_init(&st->t, &st->s, dtype, ndim, shape);
    st->t.flags = NC_TENSOR_SMALL;
    return &st->t;
}

static nc_tensor *tensor_alloc(const char *op, int32_t dtype, int32_t device, int32_t ndim,
                               const int64_t *shape, int zero) {
    if (!nc_dtype_info(dtype)) { nc_fail(NC_ERR_DTYPE, "%s: unknown dtype %d", op, dtype); return NULL; }
    if (check_shape_args(op, ndim, shape) != NC_OK) return NULL;
    if (nc_dtype_info(dtype)->is_packed && ndim > 0 && shape[ndim - 1] % nc_dtype_info(dtype)->block_elems) {
        nc_fail(NC_ERR_SHAPE, "%s: packed dtype %s needs the last dim to be a multiple of %d, got %lld", op,
                nc_dtype_info(dtype)->name, nc_dtype_info(dtype)->block_elems, (long long)shape[ndim - 1]);
        return NULL;
    }
    int64_t nbytes = bytes_for(dtype, shape_numel(ndim, shape));
    if (device == NC_CPU && nbytes <= NC_SMALL_DATA) return small_new(dtype, ndim, shape, nbytes, zero);
    nc_storage *s = storage_new(nbytes, device, zero);
    if (!s) return NULL;
    nc_tensor *t = header_new(s, dtype, ndim, shape);
    if (!t) storage_release(s);
    return t;
}

nc_tensor *nc_tensor_new(int32_t dtype, int32_t device, int32_t ndim, const int64_t *shape) {
    return tensor_alloc("new", dtype, device, ndim, shape, 0);
}

nc_tensor *nc_tensor_new_zeros(int32_t dtype, int32_t device, int32_t ndim, const int64_t *shape) {
    return tensor_alloc("zeros", dtype, device, ndim, shape, 1);
}

nc_tensor *nc_tensor_new_from_data(int32_t dtype, int32_t ndim, const int64_t *shape, const void *data,
                                   int64_t nbytes) {
    nc_tensor *t = tensor_alloc("from_data", dtype, NC_CPU, ndim, shape, 0);
    if (!t) return NULL;
    if (nbytes != t->storage->nbytes) {
        nc_fail(NC_ERR_SHAPE, "from_data: expected %lld bytes for the shape, got %lld", (long long)t->storage->nbytes,
                (long long)nbytes);
        nc_tensor_release(t);
        return NULL;
    }
    if (nbytes) memcpy(t->storage->data, data, (size_t)nbytes);
    return t;
}

void nc_tensor_retain(nc_tensor *t) {
    if (t) atomic_fetch_add((_Atomic int64_t *)&t->refcount, 1);
}

void nc_tensor_release(nc_tensor *t) {
    if (!t || atomic_fetch_sub((_Atomic int64_t *)&t->refcount, 1) != 1) return;
    nc_storage *s = t->storage;
    atomic_fetch_sub(&nc_tensors_live, 1);
    if (!(t->flags & NC_TENSOR_SMALL)) free(t);   /* a small header goes with its storage's block */
    storage_release(s);
}

int64_t nc_tensor_numel(const nc_tensor *t) { return t ? shape_numel(t->ndim, t->shape) : 0; }

int32_t nc_tensor_is_contiguous(const nc_tensor *t) {
    if (!t) return 0;
    int64_t st = 1;
    for (int32_t d = t->ndim - 1; d >= 0; d--) {
        if (t->shape[d] != 1 && t->strides[d] != st) return 0;
        st *= t->shape[d];
    }
    return 1;
}

void *nc_tensor_data(const nc_tensor *t) { return t ? (void *)nc_ptr(t) : NULL; }

int32_t nc_tensor_same_shape(const nc_tensor *a, const nc_tensor *b) {
    if (!a || !b || a->ndim != b->ndim) return 0;
    for (int32_t d = 0; d < a->ndim; d++)
        if (a->shape[d] != b->shape[d]) return 0;
    return 1;
}

/* ---- views -------------------------------------------------------------------------------- */
/* The extent of a view in elements: [lo, hi] reached offsets. Empty views reach nothing. */
static nc_status check_view_bounds(const char *op, const nc_tensor *base, int32_t ndim, const int64_t *shape,
                                   const int64_t *strides, int64_t offset) {
    const nc_dtype_traits *tr = nc_dtype_info(base->dtype);
    if (tr->is_packed) return nc_fail(NC_ERR_UNSUPPORTED, "%s: views of packed %s tensors are not supported", op, tr->name);
    if (shape_numel(ndim, shape) == 0) return NC_OK;
    int64_t lo = offset, hi = offset;
    for (int32_t d = 0; d < ndim; d++) {
        int64_t ext = (shape[d] - 1) * strides[d];
        if (ext < 0) lo += ext; else hi += ext;
    }
    int64_t cap = base->storage->nbytes / tr->elem_size;
    if (lo < 0 || hi >= cap)
        return nc_fail(NC_ERR_INDEX, "%s: view reaches elements [%lld, %lld] outside its storage of %lld elements", op,
                       (long long)lo, (long long)hi, (long long)cap);
    return NC_OK;
}

nc_tensor *nc_tensor_view_as_strided(const nc_tensor *t, int32_t ndim, const int64_t *shape,
                                     const int64_t *strides, int64_t offset) {
    if (nc_check_not_null("as_strided", "tensor", t) != NC_OK) return NULL;
    if (check_shape_args("as_strided", ndim, shape) != NC_OK) return NULL;
    if (ndim > 0 && !strides) { nc_fail(NC_ERR_ARG, "as_strided: strides is NULL"); return NULL; }
    if (check_view_bounds("as_strided", t, ndim, shape, strides, offset) != NC_OK) return NULL;
    nc_tensor *v = calloc(1, sizeof *v);
    if (!v) { nc_fail(NC_ERR_OOM, "view: out of memory for a tensor header"); return NULL; }
    v->refcount = 1;
    v->storage = t->storage;
    atomic_fetch_add((_Atomic int64_t *)&t->storage->refcount, 1);
    v->offset = offset;
    v->ndim = ndim;
    v->dtype = t->dtype;
    v->device = t->device;
    for (int32_t d = 0; d < ndim; d++) { v->shape[d] = shape[d]; v->strides[d] = strides[d]; }
    atomic_fetch_add(&nc_tensors_live, 1);
    return v;
}

nc_tensor *nc_tensor_view_reshape(const nc_tensor *t, int32_t ndim, const int64_t *shape_in) {
    if (nc_check_not_null("reshape", "tensor", t) != NC_OK) return NULL;
    if (ndim < 0 || ndim > NC_MAX_DIMS) {
        nc_fail(NC_ERR_SHAPE, "reshape: ndim must be in [0, %d], got %d", NC_MAX_DIMS, ndim);
        return NULL;
    }
    int64_t shape[NC_MAX_DIMS], known = 1, numel = nc_tensor_numel(t);
    int32_t infer = -1;
    for (int32_t d = 0; d < ndim; d++) {
        shape[d] = shape_in[d];
        if (shape[d] == -1) {
            if (infer >= 0) { nc_fail(NC_ERR_SHAPE, "reshape: only one dim may be -1"); return NULL; }
            infer = d;
        } else if (shape[d] < 0) {
            nc_fail(NC_ERR_SHAPE, "reshape: dim %d has negative size %lld", d, (long long)shape[d]);
            return NULL;
        } else known *= shape[d];
    }
    char b[NC_DESC_LEN];
    if (infer >= 0) {
        if (known == 0 || numel % known) {
            nc_fail(NC_ERR_SHAPE, "reshape: cannot infer dim %d: %lld elements of %s do not divide by %lld", infer,
                    (long long)numel, nc_describe(t, b, sizeof b), (long long)known);
            return NULL;
        }
        shape[infer] = numel / known;
        known = numel;
    }
    if (known != numel) {
        nc_fail(NC_ERR_SHAPE, "reshape: %s has %lld elements, the new shape has %lld", nc_describe(t, b, sizeof b),
                (long long)numel, (long long)known);
        return NULL;
    }
    /* Compute strides without copying when every group of merged/split old dims is contiguous
     * within itself (the usual "view" rule). Walk old and new dims in lockstep by products. */
    int64_t strides[NC_MAX_DIMS];
    int32_t o = 0, n = 0;
    /* drop size-1 old dims from consideration */
    int64_t oshape[NC_MAX_DIMS], ostr[NC_MAX_DIMS];
    int32_t ond = 0;
    for (int32_t d = 0; d < t->ndim; d++)
        if (t->shape[d] != 1) { oshape[ond] = t->shape[d]; ostr[ond] = t->strides[d]; ond++; }
    if (numel == 0) {
        int64_t st = 1;
        for (int32_t d = ndim - 1; d >= 0; d--) { strides[d] = st; st *= shape[d] ? shape[d] : 1; }
        return nc_tensor_view_as_strided(t, ndim, shape, strides, t->offset);
    }
    while (n < ndim) {
        if (shape[n] == 1) { strides[n] = 1; n++; continue; }
        /* take a group of old dims [o, o2) and new dims [n, n2) with equal products */
        int32_t o2 = o + 1, n2 = n + 1;
        int64_t po = oshape[o], pn = shape[n];
        while (po != pn) {
            if (po < pn) po *= oshape[o2++];
            else { pn *= shape[n2++]; }
        }
        /* old group must be contiguous within itself */
        for (int32_t d = o; d < o2 - 1; d++)
            if (ostr[d] != ostr[d + 1] * oshape[d + 1]) {
                nc_fail(NC_ERR_SHAPE, "reshape: the strides of %s do not allow this shape without a copy "
                        "(call contiguous() first)", nc_describe(t, b, sizeof b));
                return NULL;
            }
        int64_t st = ostr[o2 - 1];
        for (int32_t d = n2 - 1; d >= n; d--) {
            if (shape[d] == 1) { strides[d] = st; continue; }
            strides[d] = st;
            st *= shape[d];
        }
        o = o2;
        n = n2;
    }
    return nc_tensor_view_as_strided(t, ndim, shape, strides, t->offset);
}

nc_tensor *nc_tensor_view_permute(const nc_tensor *t, const int32_t *perm) {
    if (nc_check_not_null("permute", "tensor", t) != NC_OK) return NULL;
    int64_t shape[NC_MAX_DIMS], strides[NC_MAX_DIMS];
    int seen[NC_MAX_DIMS] = {0};
    for (int32_t d = 0; d < t->ndim; d++) {
        int32_t p = perm[d];
        if (nc_norm_dim("permute", &p, t->ndim) != NC_OK) return NULL;
        if (seen[p]++) { nc_fail(NC_ERR_ARG, "permute: dim %d appears twice in the permutation", p); return NULL; }
        shape[d] = t->shape[p];
        strides[d] = t->strides[p];
    }
    return nc_tensor_view_as_strided(t, t->ndim, shape, strides, t->offset);
}

nc_tensor *nc_tensor_view_transpose(const nc_tensor *t, int32_t d0, int32_t d1) {
    if (nc_check_not_null("transpose", "tensor", t) != NC_OK) return NULL;
    if (nc_norm_dim("transpose", &d0, t->ndim) != NC_OK || nc_norm_dim("transpose", &d1, t->ndim) != NC_OK)
        return NULL;
    int32_t perm[NC_MAX_DIMS];
    for (int32_t d = 0; d < t->ndim; d++) perm[d] = d;
    perm[d0] = d1;
    perm[d1] = d0;
    return nc_tensor_view_permute(t, perm);
}

nc_tensor *nc_tensor_view_narrow(const nc_tensor *t, int32_t dim, int64_t start, int64_t length) {
    if (nc_check_not_null("narrow", "tensor", t) != NC_OK) return NULL;
    if (nc_norm_dim("narrow", &dim, t->ndim) != NC_OK) return NULL;
    if (start < 0) start += t->shape[dim];
    if (start < 0 || length < 0 || start + length > t->shape[dim]) {
        char b[NC_DESC_LEN];
        nc_fail(NC_ERR_INDEX, "narrow: range [%lld, %lld) out of bounds for dim %d of %s", (long long)start,
                (long long)(start + length), dim, nc_describe(t, b, sizeof b));
        return NULL;
    }
    int64_t shape[NC_MAX_DIMS];
    memcpy(shape, t->shape, sizeof shape);
    shape[dim] = length;
    return nc_tensor_view_as_strided(t, t->ndim, shape, t->strides, t->offset + start * t->strides[dim]);
}

nc_tensor *nc_tensor_view_select(const nc_tensor *t, int32_t dim, int64_t index) {
    if (nc_check_not_null("select", "tensor", t) != NC_OK) return NULL;
    if (nc_norm_dim("select", &dim, t->ndim) != NC_OK) return NULL;
    if (index < 0) index += t->shape[dim];
    if (index < 0 || index >= t->shape[dim]) {
        char b[NC_DESC_LEN];
        nc_fail(NC_ERR_INDEX, "select: index %lld out of range for dim %d of %s", (long long)index, dim,
                nc_describe(t, b, sizeof b));
        return NULL;
    }
    int64_t shape[NC_MAX_DIMS], strides[NC_MAX_DIMS];
    int32_t k = 0;
    for (int32_t d = 0; d < t->ndim; d++)
        if (d != dim) { shape[k] = t->shape[d]; strides[k] = t->strides[d]; k++; }
    return nc_tensor_view_as_strided(t, t->ndim - 1, shape, strides, t->offset + index * t->strides[dim]);
}

nc_tensor *nc_tensor_view_expand(const nc_tensor *t, int32_t ndim, const int64_t *shape_in) {
    if (nc_check_not_null("expand", "tensor", t) != NC_OK) return NULL;
    char b[NC_DESC_LEN];
    if (ndim < t->ndim || ndim > NC_MAX_DIMS) {
        nc_fail(NC_ERR_SHAPE, "expand: cannot expand %s to %d dims", nc_describe(t, b, sizeof b), ndim);
        return NULL;
    }
    int64_t shape[NC_MAX_DIMS], strides[NC_MAX_DIMS];
    int32_t lead = ndim - t->ndim;
    for (int32_t d = 0; d < ndim; d++) {
        int64_t want = shape_in[d];
        if (d < lead) {
            if (want < 0) { nc_fail(NC_ERR_SHAPE, "expand: -1 is not allowed for new leading dim %d", d); return NULL; }
            shape[d] = want;
            strides[d] = 0;
            continue;
        }
        int64_t have = t->shape[d - lead];
        if (want == -1 || want == have) { shape[d] = have; strides[d] = t->strides[d - lead]; }
        else if (have == 1 && want >= 0) { shape[d] = want; strides[d] = 0; }
        else {
            nc_fail(NC_ERR_SHAPE, "expand: dim %d of %s has size %lld, which cannot expand to %lld", d - lead,
                    nc_describe(t, b, sizeof b), (long long)have, (long long)want);
            return NULL;
        }
    }
    return nc_tensor_view_as_strided(t, ndim, shape, strides, t->offset);
}

nc_tensor *nc_tensor_view_unsqueeze(const nc_tensor *t, int32_t dim) {
    if (nc_check_not_null("unsqueeze", "tensor", t) != NC_OK) return NULL;
    if (t->ndim >= NC_MAX_DIMS) { nc_fail(NC_ERR_SHAPE, "unsqueeze: already %d dims", NC_MAX_DIMS); return NULL; }
    if (nc_norm_dim("unsqueeze", &dim, t->ndim + 1) != NC_OK) return NULL;
    int64_t shape[NC_MAX_DIMS], strides[NC_MAX_DIMS];
    for (int32_t d = 0, k = 0; d <= t->ndim; d++) {
        if (d == dim) {
            shape[d] = 1;
            strides[d] = d < t->ndim ? t->strides[k] * t->shape[k] : 1;
        } else { shape[d] = t->shape[k]; strides[d] = t->strides[k]; k++; }
    }
    return nc_tensor_view_as_strided(t, t->ndim + 1, shape, strides, t->offset);
}

nc_tensor *nc_tensor_view_squeeze(const nc_tensor *t, int32_t dim) {
    if (nc_check_not_null("squeeze", "tensor", t) != NC_OK) return NULL;
    if (nc_norm_dim("squeeze", &dim, t->ndim) != NC_OK) return NULL;
    if (t->shape[dim] != 1) {
        char b[NC_DESC_LEN];
        nc_fail(NC_ERR_SHAPE, "squeeze: dim %d of %s has size %lld, expected 1", dim, nc_describe(t, b, sizeof b),
                (long long)t->shape[dim]);
        return NULL;
    }
    int64_t shape[NC_MAX_DIMS], strides[NC_MAX_DIMS];
    for (int32_t d = 0, k = 0; d < t->ndim; d++)
        if (d != dim) { shape[k] = t->shape[d]; strides[k] = t->strides[d]; k++; }
    return nc_tensor_view_as_strided(t, t->ndim - 1, shape, strides, t->offset);
}

/* ---- copies ------------------------------------------------------------------------------- */
static void fill_strided3(nc_strided3 *g, const nc_tensor *dst, const nc_tensor *src) {
    memset(g, 0, sizeof *g);
    g->ndim = dst->ndim;
    int32_t lead = dst->ndim - src->ndim;
    for (int32_t d = 0; d < dst->ndim; d++) {
        g->shape[d] = dst->shape[d];
        g->st_out[d] = dst->strides[d];
        g->st_a[d] = (d < lead || src->shape[d - lead] == 1) ? 0 : src->strides[d - lead];
    }
}

/* src shape must broadcast to dst shape. */
static nc_status check_broadcast_to(const char *op, const nc_tensor *dst, const nc_tensor *src) {
    bool ok = src->ndim <= dst->ndim;
    for (int32_t d = 0; ok && d < src->ndim; d++) {
        int64_t s = src->shape[src->ndim - 1 - d], t = dst->shape[dst->ndim - 1 - d];
        if (s != t && s != 1) ok = false;
    }
    if (ok) return NC_OK;
    char a[NC_DESC_LEN], b[NC_DESC_LEN];
    return nc_fail(NC_ERR_SHAPE, "%s: source %s does not broadcast to destination %s", op,
                   nc_describe(src, a, sizeof a), nc_describe(dst, b, sizeof b));
}

/* CPU strided copy with conversion. Inner loop over the last dim for speed. */
static void cpu_copy(const nc_tensor *dst, const nc_tensor *src) {
    nc_strided3 g;
    fill_strided3(&g, dst, src);
    char *dp = nc_ptr(dst);
    const char *sp = nc_ptr(src);
    int64_t n = nc_tensor_numel(dst);
    if (n == 0) return;
    bool same = dst->dtype == src->dtype;
    int32_t es = nc_dtype_info(dst->dtype)->elem_size;
    if (same && nc_tensor_is_contiguous(dst) && nc_tensor_is_contiguous(src) && nc_tensor_numel(src) == n) {
        int64_t nb = n * es;
        int32_t nt = nc_threads();
        if (nt < 2 || nb < ((int64_t)4 << 20)) {
            memcpy(dp, sp, (size_t)nb);
            return;
        }
        /* large copies: one page-aligned slice per thread (a single core cannot saturate DRAM) */
        int64_t chunk = ((nb + nt - 1) / nt + 4095) & ~(int64_t)4095;
#pragma omp parallel for schedule(static) num_threads(nt)
        for (int32_t t = 0; t < nt; t++) {
            int64_t s0 = (int64_t)t * chunk, s1 = s0 + chunk < nb ? s0 + chunk : nb;
            if (s0 < s1) memcpy(dp + s0, sp + s0, (size_t)(s1 - s0));
        }
        return;
    }
    int32_t nd = g.ndim;
    int64_t inner = nd ? g.shape[nd - 1] : 1, rows = n / inner;
    int64_t sd = nd ? g.st_out[nd - 1] : 1, ss = nd ? g.st_a[nd - 1] : 1;
    #pragma omp parallel for schedule(static) if (n > NC_PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        int64_t od = 0, os = 0, i = r;
        for (int32_t d = nd - 2; d >= 0; d--) {
            int64_t k = i % g.shape[d];
            i /= g.shape[d];
            od += k * g.st_out[d];
            os += k * g.st_a[d];
        }
        if (same && es == 4) {
            uint32_t *o = (uint32_t *)dp + od;
            const uint32_t *s = (const uint32_t *)sp + os;
            for (int64_t j = 0; j < inner; j++) o[j * sd] = s[j * ss];
        } else if (same) {
            for (int64_t j = 0; j < inner; j++) memcpy(dp + (od + j * sd) * es, sp + (os + j * ss) * es, (size_t)es);
        } else if (dst->dtype == NC_F32 && src->dtype == NC_F64) {
            float *o = (float *)dp + od;
            const double *s = (const double *)sp + os;
            for (int64_t j = 0; j < inner; j++) o[j * sd] = (float)s[j * ss];
        } else {
            for (int64_t j = 0; j < inner; j++)
                nc_store_from_f64(dp, dst->dtype, od + j * sd, nc_load_as_f64(sp, src->dtype, os + j * ss));
        }
    }
}

static nc_status cuda_fail(const char *op, const nc_cuda_api *cu) {
    return nc_fail(NC_ERR_DEVICE, "%s: %s", op, cu->last_error());
}

nc_status nc_tensor_copy(nc_tensor *dst, const nc_tensor *src) {
    NC_TRY(nc_check_not_null("copy", "dst", dst));
    NC_TRY(nc_check_not_null("copy", "src", src));
    const nc_dtype_traits *dt = nc_dtype_info(dst->dtype), *st = nc_dtype_info(src->dtype);
    if (dt->is_packed || st->is_packed) {
        /* ternary block formats convert to/from f32 on the CPU (kernels/cpu/tq.c) */
        if (dst->device == NC_CPU && src->device == NC_CPU && dt->is_packed != st->is_packed) {
            if (dst->dtype == NC_F32 && nc_tensor_is_contiguous(dst)) return nc_tq_dequantize(dst, src);
            if (src->dtype == NC_F32 && nc_tensor_is_contiguous(src)) return nc_tq_quantize(dst, src);
        }
        if (dst->dtype != src->dtype || !nc_tensor_same_shape(dst, src))
            return nc_fail(NC_ERR_UNSUPPORTED, "copy: packed dtypes copy only to the same dtype and shape, or to/from contiguous f32 on the CPU");
        if (dst->device == NC_CPU && src->device == NC_CPU) {
            memcpy(dst->storage->data, src->storage->data, (size_t)src->storage->nbytes);
            return NC_OK;
        }
        const nc_cuda_api *cu = nc_cuda();
        if (!cu) return NC_ERR_DEVICE;
        int kind = dst->device == NC_CUDA ? (src->device == NC_CUDA ? NC_COPY_D2D : NC_COPY_H2D) : NC_COPY_D2H;
        return cu->memcpy(dst->storage->data, src->storage->data, src->storage->nbytes, kind) == NC_OK
                   ? NC_OK : cuda_fail("copy", cu);
    }
    NC_TRY(check_broadcast_to("copy", dst, src));
    if (dst->device == NC_CPU && src->device == NC_CPU) {
        cpu_copy(dst, src);
        return NC_OK;
    }
    const nc_cuda_api *cu = nc_cuda();
    if (!cu) return NC_ERR_DEVICE;
    if (dst->device == NC_CUDA && src->device == NC_CUDA) {
        nc_strided3 g;
        fill_strided3(&g, dst, src);
        return cu->strided_copy(nc_ptr(dst), dst->dtype, nc_ptr(src), src->dtype, &g) == NC_OK ? NC_OK
                                                                                              : cuda_fail("copy", cu);
    }
    if (dst->device == NC_CUDA) {
        /* host -> device: stage a contiguous host tensor of dst's shape and dtype, upload it,
         * then scatter on the device if dst is strided. */
        nc_tensor *h = nc_tensor_new(dst->dtype, NC_CPU, dst->ndim, dst->shape);
        if (!h) return NC_ERR_OOM;
        cpu_copy(h, src);
        nc_status s = NC_OK;
        if (nc_tensor_is_contiguous(dst)) {
            if (cu->memcpy(nc_ptr(dst), nc_ptr(h), h->storage->nbytes, NC_COPY_H2D) != NC_OK) s = cuda_fail("copy", cu);
        } else {
            nc_tensor *d = nc_tensor_new(dst->dtype, NC_CUDA, dst->ndim, dst->shape);
            if (!d) s = NC_ERR_OOM;
            else {
                if (cu->memcpy(nc_ptr(d), nc_ptr(h), h->storage->nbytes, NC_COPY_H2D) != NC_OK) s = cuda_fail("copy", cu);
                else s = nc_tensor_copy(dst, d);
                nc_tensor_release(d);
            }
        }
        nc_tensor_release(h);
        return s;
    }
    /* device -> host: gather into a contiguous device tensor of src's dtype, download, convert */
    nc_tensor *d = nc_tensor_new_contiguous(src);
    if (!d) return NC_ERR_OOM;
    nc_tensor *h = nc_tensor_new(src->dtype, NC_CPU, src->ndim, src->shape);
    nc_status s = NC_OK;
    if (!h) s = NC_ERR_OOM;
    else if (cu->memcpy(nc_ptr(h), nc_ptr(d), h->storage->nbytes, NC_COPY_D2H) != NC_OK) s = cuda_fail("copy", cu);
    else cpu_copy(dst, h);
    nc_tensor_release(h);
    nc_tensor_release(d);
    return s;
}

nc_tensor *nc_tensor_new_clone(const nc_tensor *t) {
    if (nc_check_not_null("clone", "tensor", t) != NC_OK) return NULL;
    nc_tensor *c = nc_tensor_new(t->dtype, t->device, t->ndim, t->shape);
    if (!c) return NULL;
    if (nc_tensor_copy(c, t) != NC_OK) { nc_tensor_release(c); return NULL; }
    return c;
}

nc_tensor *nc_tensor_new_contiguous(const nc_tensor *t) {
    if (nc_check_not_null("contiguous", "tensor", t) != NC_OK) return NULL;
    if (nc_tensor_is_contiguous(t)) { nc_tensor_retain((nc_tensor *)t); return (nc_tensor *)t; }
    return nc_tensor_new_clone(t);
}

nc_tensor *nc_tensor_new_to(const nc_tensor *t, int32_t dtype, int32_t device) {
    if (nc_check_not_null("to", "tensor", t) != NC_OK) return NULL;
    if (dtype < 0) dtype = t->dtype;
    if (device < 0) device = t->device;
    nc_tensor *c = tensor_alloc("to", dtype, device, t->ndim, t->shape, 0);
    if (!c) return NULL;
    if (nc_tensor_copy(c, t) != NC_OK) { nc_tensor_release(c); return NULL; }
    return c;
}

/* ---- fills and element access --------------------------------------------------------------- */
nc_status nc_tensor_fill(nc_tensor *t, double value) {
    NC_TRY(nc_check_not_null("fill", "tensor", t));
    if (nc_dtype_info(t->dtype)->is_packed) return nc_fail(NC_ERR_UNSUPPORTED, "fill: packed dtypes cannot be filled");
    int64_t n = nc_tensor_numel(t);
    if (n == 0) return NC_OK;
    if (t->device == NC_CUDA) {
        const nc_cuda_api *cu = nc_cuda();
        if (!cu) return NC_ERR_DEVICE;
        if (nc_tensor_is_contiguous(t))
            return cu->fill(nc_ptr(t), n, t->dtype, value) == NC_OK ? NC_OK : cuda_fail("fill", cu);
        nc_tensor *one = nc_tensor_new(t->dtype, NC_CUDA, 0, NULL);
        if (!one) return NC_ERR_OOM;
        nc_status s = cu->fill(nc_ptr(one), 1, t->dtype, value) == NC_OK ? nc_tensor_copy(t, one) : cuda_fail("fill", cu);
        nc_tensor_release(one);
        return s;
    }
    char *base = nc_ptr(t);
    if (t->dtype == NC_F32 && nc_tensor_is_contiguous(t)) {
        float v = (float)value, *p = (float *)base;
        #pragma omp parallel for schedule(static) if (n > NC_PAR_MIN)
        for (int64_t i = 0; i < n; i++) p[i] = v;
        return NC_OK;
    }
    #pragma omp parallel for schedule(static) if (n > NC_PAR_MIN)
    for (int64_t i = 0; i < n; i++) nc_store_from_f64(base, t->dtype, nc_offset_of(t, i), value);
    return NC_OK;
}

static nc_status index_offset(const char *op, const nc_tensor *t, const int64_t *index, int64_t *off) {
    NC_TRY(nc_check_not_null(op, "tensor", t));
    if (nc_dtype_info(t->dtype)->is_packed) return nc_fail(NC_ERR_UNSUPPORTED, "%s: packed dtypes have no elements to address", op);
    int64_t o = 0;
    for (int32_t d = 0; d < t->ndim; d++) {
        int64_t i = index[d] < 0 ? index[d] + t->shape[d] : index[d];
        if (i < 0 || i >= t->shape[d]) {
            char b[NC_DESC_LEN];
            return nc_fail(NC_ERR_INDEX, "%s: index %lld out of range for dim %d of %s", op, (long long)index[d], d,
                           nc_describe(t, b, sizeof b));
        }
        o += i * t->strides[d];
    }
    *off = o;
    return NC_OK;
}

nc_status nc_tensor_get(const nc_tensor *t, const int64_t *index, double *out) {
    int64_t off;
    NC_TRY(index_offset("get", t, index, &off));
    if (t->device == NC_CPU) { *out = nc_load_as_f64(nc_ptr(t), t->dtype, off); return NC_OK; }
    const nc_cuda_api *cu = nc_cuda();
    if (!cu) return NC_ERR_DEVICE;
    int32_t es = nc_dtype_info(t->dtype)->elem_size;
    char buf[8];
    if (cu->memcpy(buf, nc_ptr(t) + off * es, es, NC_COPY_D2H) != NC_OK) return cuda_fail("get", cu);
    *out = nc_load_as_f64(buf, t->dtype, 0);
    return NC_OK;
}

nc_status nc_tensor_set(nc_tensor *t, const int64_t *index, double value) {
    int64_t off;
    NC_TRY(index_offset("set", t, index, &off));
    if (t->device == NC_CPU) { nc_store_from_f64(nc_ptr(t), t->dtype, off, value); return NC_OK; }
    const nc_cuda_api *cu = nc_cuda();
    if (!cu) return NC_ERR_DEVICE;
    int32_t es = nc_dtype_info(t->dtype)->elem_size;
    char buf[8];
    nc_store_from_f64(buf, t->dtype, 0, value);
    return cu->memcpy(nc_ptr(t) + off * es, buf, es, NC_COPY_H2D) == NC_OK ? NC_OK : cuda_fail("set", cu);
}

nc_status nc_tensor_read_f64(const nc_tensor *t, double *out, int64_t n) {
    NC_TRY(nc_check_not_null("read_f64", "tensor", t));
    if (n != nc_tensor_numel(t))
        return nc_fail(NC_ERR_SHAPE, "read_f64: buffer holds %lld values, tensor has %lld", (long long)n,
                       (long long)nc_tensor_numel(t));
    int64_t shape1[1] = {n};
    nc_tensor *h = nc_tensor_new(NC_F64, NC_CPU, t->ndim, t->shape);
    if (!h) return NC_ERR_OOM;
    nc_status s = nc_tensor_copy(h, t);
    (void)shape1;
    if (s == NC_OK && n) memcpy(out, h->storage->data, (size_t)n * 8);
    nc_tensor_release(h);
    return s;
}

nc_status nc_tensor_write_f64(nc_tensor *t, const double *src, int64_t n) {
    NC_TRY(nc_check_not_null("write_f64", "tensor", t));
    if (n != nc_tensor_numel(t))
        return nc_fail(NC_ERR_SHAPE, "write_f64: buffer holds %lld values, tensor has %lld", (long long)n,
                       (long long)nc_tensor_numel(t));
    nc_tensor *h = nc_tensor_new(NC_F64, NC_CPU, t->ndim, t->shape);
    if (!h) return NC_ERR_OOM;
    if (n) memcpy(h->storage->data, src, (size_t)n * 8);
    nc_status s = nc_tensor_copy(t, h);
    nc_tensor_release(h);
    return s;
}

/* Fill element i (logical order) with f(i) on the CPU; CUDA tensors are filled through a host
 * staging tensor (these are creation-time ops). */
typedef struct { int kind; double a, b; uint64_t seed, offset; } gen_spec;

static double gen_value(const gen_spec *g, int64_t i);

static nc_status generate(const char *op, nc_tensor *t, const gen_spec *g) {
    NC_TRY(nc_check_not_null(op, "tensor", t));
    if (nc_dtype_info(t->dtype)->is_packed) return nc_fail(NC_ERR_UNSUPPORTED, "%s: packed dtypes cannot be generated", op);
    nc_tensor *h = t;
    if (t->device != NC_CPU) {
        h = nc_tensor_new(NC_F32 == t->dtype ? NC_F32 : NC_F64, NC_CPU, t->ndim, t->shape);
        if (!h) return NC_ERR_OOM;
    }
    int64_t n = nc_tensor_numel(h);
    char *base = nc_ptr(h);
    if (h->dtype == NC_F32 && nc_tensor_is_contiguous(h)) {
        float *p = (float *)base;
        #pragma omp parallel for schedule(static) if (n > NC_PAR_MIN / 8)
        for (int64_t i = 0; i < n; i++) p[i] = (float)gen_value(g, i);
    } else {
        #pragma omp parallel for schedule(static) if (n > NC_PAR_MIN / 8)
        for (int64_t i = 0; i < n; i++) nc_store_from_f64(base, h->dtype, nc_offset_of(h, i), gen_value(g, i));
    }
    nc_status s = NC_OK;
    if (h != t) { s = nc_tensor_copy(t, h); nc_tensor_release(h); }
    return s;
}

nc_status nc_tensor_arange(nc_tensor *t, double start, double step) {
    gen_spec g = {0, start, step, 0, 0};
    return generate("arange", t, &g);
}

nc_status nc_tensor_rand(nc_tensor *t, uint64_t seed, uint64_t offset, double lo, double hi) {
    gen_spec g = {1, lo, hi, seed, offset};
    return generate("rand", t, &g);
}

nc_status nc_tensor_randn(nc_tensor *t, uint64_t seed, uint64_t offset, double mean, double std) {
    gen_spec g = {2, mean, std, seed, offset};
    return generate("randn", t, &g);
}

/* ---- Philox4x32-10 (Salmon et al., SC'11; core/philox.h, shared with the CUDA kernels) -------- */
void nc_philox4x32(uint64_t seed, uint64_t counter, uint32_t out[4]) { nc_philox4x32_10(seed, counter, out); }

/* uniform in (0, 1): 24 random bits, never exactly 0 or 1 */
static double u01(uint32_t x) { return ((double)(x >> 8) + 0.5) * (1.0 / 16777216.0); }

static double gen_value(const gen_spec *g, int64_t i) {
    if (g->kind == 0) return g->a + g->b * (double)i;
    uint32_t r[4];
    nc_philox4x32(g->seed, g->offset + (uint64_t)i, r);
    if (g->kind == 1) return g->a + (g->b - g->a) * u01(r[0]);
    /* Box-Muller on two uniforms with 32-bit resolution each */
    double u1 = ((double)r[0] + 0.5) * (1.0 / 4294967296.0), u2 = ((double)r[1] + 0.5) * (1.0 / 4294967296.0);
    return g->a + g->b * sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}
