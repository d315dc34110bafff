/* spec/c/test_core.c — C unit tests of the tensor core: dtype traits, refcounts and storage
 * lifetime, views and their bounds checks, copies and conversions, the Philox RNG (known-answer
 * vector from the Random123 paper), and error reporting. Prints TAP; exits 1 on any failure. */
#include "nanochat.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

static int n_test, n_fail;

static void ok(int cond, const char *name) {
    n_test++;
    if (!cond) n_fail++;
    printf("%sok %d - core: %s\n", cond ? "" : "not ", n_test, name);
    if (!cond) printf("# last error: %s\n", nc_last_error());
}

static int64_t live(void) { nc_mem_stats s; nc_mem_stats_get(&s); return s.tensors_live; }
static int64_t host(void) { nc_mem_stats s; nc_mem_stats_get(&s); return s.host_bytes; }

static void test_traits(void) {
    static const struct { int32_t dt; const char *name; int32_t size; } want[] = {
        {NC_F32, "f32", 4}, {NC_BF16, "bf16", 2}, {NC_F16, "f16", 2}, {NC_I8, "i8", 1},
        {NC_I32, "i32", 4}, {NC_I64, "i64", 8}, {NC_U8, "u8", 1}, {NC_F64, "f64", 8}};
    int good = 1;
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const nc_dtype_traits *t = nc_dtype_info(want[i].dt);
        good &= t && !strcmp(t->name, want[i].name) && t->elem_size == want[i].size && t->dtype == want[i].dt &&
                nc_dtype_from_name(want[i].name) == want[i].dt && !t->is_packed;
    }
    ok(good, "traits of every plain dtype (name, size, round trip by name)");
    const nc_dtype_traits *tq = nc_dtype_info(NC_TQ2);
    ok(tq && tq->is_packed && tq->block_elems == 256 && tq->block_bytes == 66, "packed ternary TQ2 traits");
    ok(nc_dtype_info(NC_DTYPE_COUNT) == NULL && nc_dtype_info(-1) == NULL, "out-of-range dtype has no traits");
    ok(nc_abi_sizeof("nc_tensor") == (int64_t)sizeof(nc_tensor) && nc_abi_sizeof("bogus") == -1, "ABI sizes");
}

static void test_refcounts(void) {
    int64_t l0 = live(), h0 = host();
    int64_t shape[2] = {3, 4};
    nc_tensor *a = nc_tensor_new_zeros(NC_F32, NC_CPU, 2, shape);
    ok(a && a->refcount == 1 && a->storage->refcount == 1 && live() == l0 + 1, "new tensor has one reference");
    nc_tensor *v = nc_tensor_view_transpose(a, 0, 1);
    ok(v && a->storage->refcount == 2 && v->shape[0] == 4 && v->strides[0] == 1, "view shares and retains storage");
    nc_tensor_release(a);
    ok(v->storage->refcount == 1 && live() == l0 + 1, "releasing the base keeps the view's storage alive");
    int64_t idx[2] = {3, 2};
    ok(nc_tensor_set(v, idx, 7.0) == NC_OK, "write through the surviving view");
    double x = 0;
    ok(nc_tensor_get(v, idx, &x) == NC_OK && x == 7.0, "read it back");
    nc_tensor_release(v);
    ok(live() == l0 && host() == h0, "all memory returned after the last release");
}

static void test_cache(void) {
    nc_mem_trim();
    int64_t shape[1] = {1 << 20};   /* 4 MiB */
    nc_tensor *a = nc_tensor_new(NC_F32, NC_CPU, 1, shape);
    void *pa = a->storage->data;
    nc_mem_stats s0, s1, s2;
    nc_tensor_release(a);
    nc_mem_stats_get(&s0);
    nc_tensor *b = nc_tensor_new(NC_F32, NC_CPU, 1, shape);
    nc_mem_stats_get(&s1);
    ok(b->storage->data == pa && s0.host_cached >= (4 << 20) && s1.host_cached == s0.host_cached - (4 << 20),
       "a freed large block is reused from the cache and leaves it");
    ok(s1.host_bytes == s0.host_bytes + (4 << 20), "cached bytes do not count as live");
    nc_tensor_release(b);
    nc_mem_trim();
    nc_mem_stats_get(&s2);
    ok(s2.host_cached == 0, "trim empties the cache");
}

/* Small CPU tensors (data <= NC_SMALL_DATA bytes) are one recycled block: header, storage, data. */
static void test_small(void) {
    nc_mem_trim();
    int64_t l0 = live(), h0 = host();
    int64_t s64[1] = {NC_SMALL_DATA / 4}, s65[1] = {NC_SMALL_DATA / 4 + 1};
    nc_tensor *a = nc_tensor_new(NC_F32, NC_CPU, 1, s64), *big = nc_tensor_new(NC_F32, NC_CPU, 1, s65);
    ok(a && (a->flags & NC_TENSOR_SMALL) && (a->storage->flags & NC_STORAGE_SMALL) &&
       ((uintptr_t)a->storage->data % 64) == 0 && a->storage->nbytes == NC_SMALL_DATA,
       "a tensor of NC_SMALL_DATA bytes is small, its data 64-byte aligned");
    ok(big && !(big->flags & NC_TENSOR_SMALL) && !(big->storage->flags & NC_STORAGE_SMALL), "one more element is not");
    ok(live() == l0 + 2 && host() == h0 + NC_SMALL_DATA + NC_SMALL_DATA + 4, "both count as live tensors and host bytes");
    nc_tensor_release(big);
    /* a view outlives its small base; the block goes back only after the view */
    nc_tensor_fill(a, 7);
    nc_tensor *v = nc_tensor_view_narrow(a, 0, 10, 3);
    void *block = a;
    nc_tensor_release(a);
    int64_t i0[1] = {2};
    double x = 0;
    ok(v && v->storage->refcount == 1 && nc_tensor_get(v, i0, &x) == NC_OK && x == 7 && live() == l0 + 1,
       "a view of a small tensor keeps the block alive after the base is released");
    nc_mem_stats s0;
    nc_mem_stats_get(&s0);
    nc_tensor_release(v);
    nc_mem_stats s1;
    nc_mem_stats_get(&s1);
    ok(live() == l0 && host() == h0 && s1.host_cached == s0.host_cached + 512 /* NC_SMALL_BLOCK */ && s1.host_frees == s0.host_frees + 1,
       "releasing the view returns the block once (to the small-block cache)");
    /* the next small tensor reuses that block (LIFO), and zeros clears the old contents */
    int64_t s3[2] = {3, 5};
    nc_tensor *z = nc_tensor_new_zeros(NC_F64, NC_CPU, 2, s3);
    int zero = z && (void *)z == block;
    for (int64_t i = 0; zero && i < 15; i++) zero = ((double *)z->storage->data)[i] == 0.0;
    ok(zero && z->ndim == 2 && z->strides[0] == 5 && z->offset == 0 && z->refcount == 1,
       "the recycled block comes back as a fresh zeroed header and storage");
    nc_tensor_release(z);
    /* churn: many small tensors with views, released in mixed order, return everything */
    nc_tensor *keep[64];
    for (int r = 0; r < 2000; r++) {
        for (int k = 0; k < 64; k++) {
            int64_t sh[1] = {1 + (k % 32)};
            keep[k] = nc_tensor_new(k % 2 ? NC_F32 : NC_F64, NC_CPU, 1, sh);
            if (k % 3 == 0) {
                nc_tensor *w = nc_tensor_view_narrow(keep[k], 0, 0, 1);
                nc_tensor_release(keep[k]);
                keep[k] = w;
            }
        }
        for (int k = 0; k < 64; k++) nc_tensor_release(keep[(k * 37 + r) % 64]);
    }
    nc_mem_stats s2;
    nc_mem_stats_get(&s2);
    ok(live() == l0 && host() == h0 && s2.host_allocs - s1.host_allocs == s2.host_frees - s1.host_frees &&
       s2.host_cached <= 8 * 1048576 + s1.host_cached,
       "128k small tensors and views: every one freed once, no growth, the cache stays bounded");
    int64_t one[1] = {3};
    float src[3] = {1.5f, -2.0f, 3.25f};
    nc_tensor *d = nc_tensor_new_from_data(NC_F32, 1, one, src, sizeof src);
    ok(d && (d->flags & NC_TENSOR_SMALL) && !memcmp(d->storage->data, src, sizeof src), "from_data into a small tensor");
    nc_tensor_release(d);
    nc_mem_trim();
    nc_mem_stats s3m;
    nc_mem_stats_get(&s3m);
    ok(s3m.host_cached == 0, "trim also empties the small-block cache");
}

static void test_views(void) {
    int64_t shape[3] = {2, 3, 4};
    nc_tensor *a = nc_tensor_new(NC_F32, NC_CPU, 3, shape);
    nc_tensor_arange(a, 0, 1);
    nc_tensor *n = nc_tensor_view_narrow(a, 2, 1, 2);
    int64_t i1[3] = {1, 2, 1};
    double x;
    nc_tensor_get(n, i1, &x);
    ok(x == 1 * 12 + 2 * 4 + 2, "narrow addresses the right element");
    ok(nc_tensor_view_narrow(a, 2, 3, 2) == NULL && strstr(nc_last_error(), "narrow"), "narrow out of range fails");
    nc_tensor *s = nc_tensor_view_select(a, 1, -1);
    int64_t i2[2] = {1, 3};
    nc_tensor_get(s, i2, &x);
    ok(s && s->ndim == 2 && x == 12 + 8 + 3, "select with a negative index");
    int64_t r[2] = {-1, 4};
    nc_tensor *rs = nc_tensor_view_reshape(a, 2, r);
    ok(rs && rs->shape[0] == 6 && rs->strides[0] == 4, "reshape infers -1");
    nc_tensor *t = nc_tensor_view_transpose(a, 0, 2);
    int64_t r2[1] = {24};
    ok(nc_tensor_view_reshape(t, 1, r2) == NULL, "reshape of a transposed view needs a copy");
    nc_tensor *c = nc_tensor_new_contiguous(t);
    ok(c && c != t && nc_tensor_is_contiguous(c), "contiguous copies a strided view");
    nc_tensor *c2 = nc_tensor_new_contiguous(a);
    ok(c2 == a && a->refcount == 2, "contiguous of a contiguous tensor retains it");
    nc_tensor_release(c2);
    int64_t e[4] = {5, 2, 3, 4};
    nc_tensor *ex = nc_tensor_view_expand(a, 4, e);
    ok(ex && ex->strides[0] == 0, "expand adds a broadcast dim with stride 0");
    int64_t bad[3] = {2, 5, 4};
    ok(nc_tensor_view_expand(a, 3, bad) == NULL && strstr(nc_last_error(), "expand"), "expand of a non-1 dim fails");
    int64_t huge_st[1] = {1000};
    int64_t one[1] = {2};
    ok(nc_tensor_view_as_strided(a, 1, one, huge_st, 0) == NULL && strstr(nc_last_error(), "outside its storage"),
       "as_strided cannot reach outside the storage");
    nc_tensor *u = nc_tensor_view_unsqueeze(a, -1);
    ok(u && u->ndim == 4 && u->shape[3] == 1, "unsqueeze at the end");
    nc_tensor *sq = nc_tensor_view_squeeze(u, 3);
    ok(sq && sq->ndim == 3, "squeeze");
    int32_t perm[3] = {2, 0, 1};
    nc_tensor *p = nc_tensor_view_permute(a, perm);
    int64_t i3[3] = {3, 1, 2};
    nc_tensor_get(p, i3, &x);
    ok(p && x == 1 * 12 + 2 * 4 + 3, "permute");
    int32_t dup[3] = {0, 0, 1};
    ok(nc_tensor_view_permute(a, dup) == NULL, "permute rejects a repeated dim");
    nc_tensor *all[] = {n, s, rs, t, c, ex, u, sq, p};
    for (size_t k = 0; k < sizeof all / sizeof all[0]; k++) nc_tensor_release(all[k]);
    nc_tensor_release(a);
}

static void test_copy_convert(void) {
    int64_t shape[2] = {3, 5};
    nc_tensor *a = nc_tensor_new(NC_F32, NC_CPU, 2, shape);
    nc_tensor_arange(a, -7.5, 1.25);
    int good = 1;
    for (int32_t dt = 0; dt < NC_DTYPE_COUNT; dt++) {
        if (nc_dtype_info(dt)->is_packed) continue;
        nc_tensor *b = nc_tensor_new_to(a, dt, NC_CPU);
        nc_tensor *back = nc_tensor_new_to(b, NC_F32, NC_CPU);
        for (int64_t i = 0; i < 15; i++) {
            double want = -7.5 + 1.25 * i, got = ((float *)back->storage->data)[i];
            if (!nc_dtype_info(dt)->is_float) want = dt == NC_U8 ? (want < 0 ? 0 : trunc(want)) : trunc(want);
            if (got != want) { good = 0; printf("# dtype %s: element %lld: %g != %g\n", nc_dtype_info(dt)->name, (long long)i, got, want); }
        }
        nc_tensor_release(b);
        nc_tensor_release(back);
    }
    ok(good, "f32 -> every dtype -> f32 (exact for these values; ints truncate, u8 saturates)");
    nc_tensor *t = nc_tensor_view_transpose(a, 0, 1);
    nc_tensor *c = nc_tensor_new_clone(t);
    int64_t idx[2] = {4, 2};
    double x, y;
    nc_tensor_get(t, idx, &x);
    nc_tensor_get(c, idx, &y);
    ok(x == y && x == -7.5 + 1.25 * (2 * 5 + 4), "clone of a transposed view keeps logical order");
    /* round-to-nearest-even at the halfway points, subnormals and overflow */
    float in[6] = {1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f, 0x1p-24f, 65520.0f, 1.0f + 0x1p-11f, -0x1p-25f};
    float bf_want[2] = {1.0f, 1.0f + 0x1p-6f}, h_want[6] = {0, 0, 0x1p-24f, INFINITY, 1.0f, -0.0f};
    int64_t s6[1] = {6};
    nc_tensor *src = nc_tensor_new_from_data(NC_F32, 1, s6, in, sizeof in);
    nc_tensor *bf = nc_tensor_new_to(src, NC_BF16, NC_CPU), *bf32 = nc_tensor_new_to(bf, NC_F32, NC_CPU);
    nc_tensor *h = nc_tensor_new_to(src, NC_F16, NC_CPU), *h32 = nc_tensor_new_to(h, NC_F32, NC_CPU);
    float *bfp = bf32->storage->data, *hp = h32->storage->data;
    ok(bfp[0] == bf_want[0] && bfp[1] == bf_want[1], "bf16 rounds half to even");
    ok(hp[2] == h_want[2] && isinf(hp[3]) && hp[4] == h_want[4] && hp[5] == 0 && signbit(hp[5]),
       "f16: smallest subnormal exact, 65520 -> inf, half to even, tiny -> signed zero");
    nc_tensor *rel[5] = {src, bf, bf32, h, h32};
    for (int k = 0; k < 5; k++) nc_tensor_release(rel[k]);
    nc_tensor_release(c);
    nc_tensor_release(t);
    nc_tensor_release(a);
}

static void test_rng(void) {
    uint32_t r[4];
    nc_philox4x32(0, 0, r);
    /* Random123 known-answer test: philox4x32_10, key {0,0}, counter {0,0,0,0} */
    ok(r[0] == 0x6627e8d5u && r[1] == 0xe169c58du && r[2] == 0xbc57ac4cu && r[3] == 0x9b00dbd8u,
       "Philox4x32-10 known-answer vector");
    int64_t shape[1] = {100000};
    nc_tensor *a = nc_tensor_new(NC_F32, NC_CPU, 1, shape), *b = nc_tensor_new(NC_F32, NC_CPU, 1, shape);
    nc_set_num_threads(1);
    nc_tensor_randn(a, 123, 0, 0.0, 1.0);
    nc_set_num_threads(2);
    nc_tensor_randn(b, 123, 0, 0.0, 1.0);
    ok(!memcmp(a->storage->data, b->storage->data, 400000), "randn is bitwise identical on 1 and 2 threads");
    double m = 0, v = 0;
    float *p = a->storage->data;
    for (int i = 0; i < 100000; i++) m += p[i];
    m /= 100000;
    for (int i = 0; i < 100000; i++) v += (p[i] - m) * (p[i] - m);
    v /= 100000;
    ok(fabs(m) < 0.02 && fabs(v - 1) < 0.02, "randn mean 0 and variance 1 (n = 1e5, 4+ sigma bounds)");
    nc_tensor_rand(a, 7, 0, -2.0, 3.0);
    float lo = 1e9f, hi = -1e9f;
    for (int i = 0; i < 100000; i++) { if (p[i] < lo) lo = p[i]; if (p[i] > hi) hi = p[i]; }
    ok(lo >= -2.0f && hi < 3.0f && lo < -1.99f && hi > 2.99f, "rand covers [lo, hi)");
    nc_tensor_rand(b, 7, 50000, -2.0, 3.0);
    ok(!memcmp((float *)a->storage->data + 50000, b->storage->data, 4 * 50000), "offset continues the same stream");
    nc_tensor_release(a);
    nc_tensor_release(b);
}

static void test_errors(void) {
    int64_t shape[1] = {-3};
    ok(nc_tensor_new(NC_F32, NC_CPU, 1, shape) == NULL && strstr(nc_last_error(), "negative"), "negative size is an error");
    int64_t s2[1] = {4};
    ok(nc_tensor_new(42, NC_CPU, 1, s2) == NULL && strstr(nc_last_error(), "dtype"), "unknown dtype is an error");
    ok(nc_tensor_new(NC_F32, 7, 1, s2) == NULL && strstr(nc_last_error(), "device"), "unknown device is an error");
    int64_t big[2] = {1LL << 40, 1LL << 20};
    ok(nc_tensor_new(NC_F32, NC_CPU, 2, big) == NULL && strstr(nc_last_error(), "out of host memory"),
       "an impossible allocation fails cleanly");
    nc_tensor *a = nc_tensor_new(NC_F32, NC_CPU, 1, s2);
    int64_t i[1] = {4};
    double x;
    ok(nc_tensor_get(a, i, &x) == NC_ERR_INDEX && strstr(nc_last_error(), "index 4 out of range"), "get out of range");
    ok(nc_set_cpu_kernel("sse9") == NC_ERR_ARG, "unknown kernel name");
    ok(!nc_cuda_available() || nc_device_count(NC_CUDA) > 0, "cuda availability is consistent");
    nc_tensor_release(a);
}

int main(void) {
    test_traits();
    test_refcounts();
    test_cache();
    test_small();
    test_views();
    test_copy_convert();
    test_rng();
    test_errors();
    printf("1..%d\n", n_test);
    return n_fail ? 1 : 0;
}
