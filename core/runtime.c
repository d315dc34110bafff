/* core/runtime.c — errors, dtype traits, memory accounting, threads, kernel selection and the
 * CUDA backend loader.
 *
 * Promise: every failure message is thread-local and names the op plus expected vs actual;
 * memory counters are exact (atomic) for every byte the library allocates; the CUDA backend is
 * optional and loaded lazily, so this library runs without a GPU or CUDA runtime.
 */
#include "internal.h"

#include <dlfcn.h>
#include <errno.h>
#include <omp.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <string.h>

/* ---- version / ABI ------------------------------------------------------------------------ */
const char *nc_version(void) { return "0.1.0"; }
int32_t nc_abi_version(void) { return NC_ABI_VERSION; }

int64_t nc_abi_sizeof(const char *type_name) {
    if (!type_name) return -1;
    if (!strcmp(type_name, "nc_tensor")) return (int64_t)sizeof(nc_tensor);
    if (!strcmp(type_name, "nc_storage")) return (int64_t)sizeof(nc_storage);
    if (!strcmp(type_name, "nc_dtype_traits")) return (int64_t)sizeof(nc_dtype_traits);
    if (!strcmp(type_name, "nc_mem_stats")) return (int64_t)sizeof(nc_mem_stats);
    return -1;
}

/* ---- errors ------------------------------------------------------------------------------- */
static _Thread_local char err_msg[1024];

nc_status nc_fail(nc_status code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err_msg, sizeof err_msg, fmt, ap);
    va_end(ap);
    return code;
}

const char *nc_last_error(void) { return err_msg[0] ? err_msg : "no error"; }
void nc_clear_error(void) { err_msg[0] = 0; }

const char *nc_status_name(nc_status s) {
    static const char *names[] = {"ok", "shape error", "dtype error", "device error", "index error",
                                  "I/O error", "format error", "out of memory", "invalid argument",
                                  "unsupported"};
    return (s >= 0 && s <= NC_ERR_UNSUPPORTED) ? names[s] : "unknown status";
}

/* ---- dtype traits ------------------------------------------------------------------------- */
static const nc_dtype_traits traits[NC_DTYPE_COUNT] = {
    [NC_F32] = {"f32", NC_F32, 4, 1, 4, 1, 1, 0},
    [NC_BF16] = {"bf16", NC_BF16, 2, 1, 2, 1, 1, 0},
    [NC_F16] = {"f16", NC_F16, 2, 1, 2, 1, 1, 0},
    [NC_I8] = {"i8", NC_I8, 1, 1, 1, 0, 1, 0},
    [NC_I32] = {"i32", NC_I32, 4, 1, 4, 0, 1, 0},
    [NC_I64] = {"i64", NC_I64, 8, 1, 8, 0, 1, 0},
    [NC_U8] = {"u8", NC_U8, 1, 1, 1, 0, 0, 0},
    [NC_F64] = {"f64", NC_F64, 8, 1, 8, 1, 1, 0},
    /* TQ2_0-like: 256 weights in 64 bytes of 2-bit codes + an f16 scale */
    [NC_TQ2] = {"tq2", NC_TQ2, 0, 256, 66, 0, 1, 1},
    /* TQ1_0-like: 256 weights in 48 + 4 bytes of base-3 codes + an f16 scale */
    [NC_TQ1] = {"tq1", NC_TQ1, 0, 256, 54, 0, 1, 1},
};
_Static_assert(NC_DTYPE_COUNT == 10, "update the traits table when adding a dtype");
_Static_assert(sizeof(float) == 4 && sizeof(double) == 8, "IEEE-754 binary32/64 required");
_Static_assert(sizeof(nc_tensor) == 8 + 8 + 8 + 64 + 64 + 16, "nc_tensor layout is ABI");

const nc_dtype_traits *nc_dtype_info(int32_t dtype) {
    return (dtype >= 0 && dtype < NC_DTYPE_COUNT) ? &traits[dtype] : NULL;
}

int32_t nc_dtype_from_name(const char *name) {
    if (!name) return -1;
    for (int32_t i = 0; i < NC_DTYPE_COUNT; i++)
        if (!strcmp(traits[i].name, name)) return i;
    return -1;
}

/* ---- describing and checking tensors ------------------------------------------------------ */
static const char *device_name(int32_t d) { return d == NC_CPU ? "cpu" : d == NC_CUDA ? "cuda" : "?"; }

const char *nc_describe(const nc_tensor *t, char *buf, size_t n) {
    if (!t) { snprintf(buf, n, "NULL"); return buf; }
    size_t k = 0;
    k += snprintf(buf + k, n - k, "(");
    for (int32_t d = 0; d < t->ndim && k < n; d++)
        k += snprintf(buf + k, n - k, d ? ", %lld" : "%lld", (long long)t->shape[d]);
    const nc_dtype_traits *tr = nc_dtype_info(t->dtype);
    if (k < n) snprintf(buf + k, n - k, ") %s %s", tr ? tr->name : "?", device_name(t->device));
    return buf;
}

nc_status nc_check_not_null(const char *op, const char *arg, const nc_tensor *t) {
    return t ? NC_OK : nc_fail(NC_ERR_ARG, "%s: %s is NULL (a tensor is required)", op, arg);
}

nc_status nc_check_dtype(const char *op, const char *arg, const nc_tensor *t, int32_t dtype) {
    NC_TRY(nc_check_not_null(op, arg, t));
    if (t->dtype == dtype) return NC_OK;
    char b[NC_DESC_LEN];
    return nc_fail(NC_ERR_DTYPE, "%s: expected %s to be %s, got %s", op, arg, traits[dtype].name,
                   nc_describe(t, b, sizeof b));
}

nc_status nc_check_index_dtype(const char *op, const char *arg, const nc_tensor *t) {
    NC_TRY(nc_check_not_null(op, arg, t));
    if (t->dtype == NC_I32 || t->dtype == NC_I64) return NC_OK;
    char b[NC_DESC_LEN];
    return nc_fail(NC_ERR_DTYPE, "%s: expected %s to be i32 or i64 indices, got %s", op, arg,
                   nc_describe(t, b, sizeof b));
}

nc_status nc_check_device(const char *op, const char *arg, const nc_tensor *t, int32_t device) {
    NC_TRY(nc_check_not_null(op, arg, t));
    if (t->device == device) return NC_OK;
    char b[NC_DESC_LEN];
    return nc_fail(NC_ERR_DEVICE, "%s: expected %s on %s, got %s", op, arg, device_name(device),
                   nc_describe(t, b, sizeof b));
}

nc_status nc_check_cpu(const char *op, const char *arg, const nc_tensor *t) {
    return nc_check_device(op, arg, t, NC_CPU);
}

nc_status nc_check_writable(const char *op, const char *arg, const nc_tensor *t) {
    for (int32_t d = 0; d < t->ndim; d++)
        if (t->strides[d] == 0 && t->shape[d] > 1) {
            char b[NC_DESC_LEN];
            return nc_fail(NC_ERR_ARG, "%s: %s is written but is a broadcast view (stride 0 on dim %d) %s", op, arg,
                           d, nc_describe(t, b, sizeof b));
        }
    return NC_OK;
}

int32_t nc_dev_of(int n, const nc_tensor *const *ts) {
    for (int i = 0; i < n; i++)
        if (ts[i] && ts[i]->device == NC_CUDA) return NC_CUDA;
    return NC_CPU;
}

nc_status nc_check_one_device(const char *op, int32_t *dev, int n, const char *const *names, const nc_tensor *const *ts) {
    *dev = nc_dev_of(n, ts);
    for (int i = 0; i < n; i++)
        if (ts[i]) NC_TRY(nc_check_device(op, names[i], ts[i], *dev));
    return NC_OK;
}

nc_status nc_check_contiguous(const char *op, const char *arg, const nc_tensor *t) {
    NC_TRY(nc_check_not_null(op, arg, t));
    if (nc_tensor_is_contiguous(t)) return NC_OK;
    char b[NC_DESC_LEN];
    return nc_fail(NC_ERR_ARG, "%s: expected %s to be contiguous, got a strided view %s", op, arg,
                   nc_describe(t, b, sizeof b));
}

nc_status nc_check_ndim(const char *op, const char *arg, const nc_tensor *t, int32_t ndim) {
    NC_TRY(nc_check_not_null(op, arg, t));
    if (t->ndim == ndim) return NC_OK;
    char b[NC_DESC_LEN];
    return nc_fail(NC_ERR_SHAPE, "%s: expected %s to have %d dims, got %s", op, arg, ndim,
                   nc_describe(t, b, sizeof b));
}

nc_status nc_check_same_shape(const char *op, const char *an, const nc_tensor *a, const char *bn,
                              const nc_tensor *b) {
    NC_TRY(nc_check_not_null(op, an, a));
    NC_TRY(nc_check_not_null(op, bn, b));
    if (nc_tensor_same_shape(a, b)) return NC_OK;
    char ba[NC_DESC_LEN], bb[NC_DESC_LEN];
    return nc_fail(NC_ERR_SHAPE, "%s: expected %s and %s to have the same shape, got %s and %s", op, an,
                   bn, nc_describe(a, ba, sizeof ba), nc_describe(b, bb, sizeof bb));
}

nc_status nc_check_shape(const char *op, const char *arg, const nc_tensor *t, int32_t ndim,
                         const int64_t *shape) {
    NC_TRY(nc_check_not_null(op, arg, t));
    bool ok = t->ndim == ndim;
    for (int32_t d = 0; ok && d < ndim; d++)
        if (shape[d] >= 0 && shape[d] != t->shape[d]) ok = false;
    if (ok) return NC_OK;
    char want[NC_DESC_LEN], got[NC_DESC_LEN];
    size_t k = snprintf(want, sizeof want, "(");
    for (int32_t d = 0; d < ndim && k < sizeof want; d++) {
        if (shape[d] >= 0) k += snprintf(want + k, sizeof want - k, d ? ", %lld" : "%lld", (long long)shape[d]);
        else k += snprintf(want + k, sizeof want - k, d ? ", *" : "*");
    }
    if (k < sizeof want) snprintf(want + k, sizeof want - k, ")");
    return nc_fail(NC_ERR_SHAPE, "%s: expected %s of shape %s, got %s", op, arg, want,
                   nc_describe(t, got, sizeof got));
}

nc_status nc_norm_dim(const char *op, int32_t *dim, int32_t ndim) {
    int32_t d = *dim < 0 ? *dim + ndim : *dim;
    if (d < 0 || d >= ndim)
        return nc_fail(NC_ERR_INDEX, "%s: dim %d out of range for a tensor with %d dims", op, *dim, ndim);
    *dim = d;
    return NC_OK;
}

/* ---- memory accounting -------------------------------------------------------------------- */
static _Atomic int64_t host_bytes, host_peak, host_allocs, host_frees;
static _Atomic int64_t dev_bytes, dev_peak, dev_allocs, dev_frees;
_Atomic int64_t nc_tensors_live;

static void raise_peak(_Atomic int64_t *peak, int64_t v) {
    int64_t p = atomic_load(peak);
    while (v > p && !atomic_compare_exchange_weak(peak, &p, v)) {}
}

/* Size classes: 8 per octave above 64 KiB, so a cached block wastes at most 12.5%. Freed blocks
 * of a class form a list threaded through their first bytes. Big buffers (activations,
 * gradients) are freed and re-allocated every training step; recycling them avoids a
 * munmap/mmap and the page faults of touching fresh pages each time. When a freed block does not
 * fit under the cap, blocks of other classes (largest first) go back to the system to make room:
 * the block just freed is the likeliest to be asked for again (a loop's dead output), while a
 * full cache of other sizes would send every such block, and its next allocation, to the system.
 * (tools/bench/ops.lua's 384 MiB ops ran at 0.35-0.38 of memcpy from Lua, 0.7-1.0 as bare kernels,
 * before this and the GC pacing in tensor.lua.) */
#define CACHE_MIN (64 * 1024)
#define CACHE_CLASSES (8 * 48)
static void *cache_head[CACHE_CLASSES];
static int64_t cache_bytes, cache_cap = -1;
static pthread_mutex_t cache_mu = PTHREAD_MUTEX_INITIALIZER;

static int size_class(int64_t n, int64_t *rounded) {
    int e = 63 - __builtin_clzll((unsigned long long)n);          /* 2^e <= n < 2^(e+1) */
    int64_t step = (int64_t)1 << (e - 3);
    int64_t r = (n + step - 1) / step * step;                      /* 8 steps per octave */
    int k = (int)((r >> (e - 3)) - 8);                             /* 0..8 */
    int cls = (e - 16) * 8 + k;
    *rounded = r;
    return cls;
}

/* the bytes of every block of class c (the inverse of size_class) */
static int64_t class_bytes(int c) { return (int64_t)(8 + c % 8) << (c / 8 + 16 - 3); }

/* The cap: NC_HOST_CACHE_MB, else an eighth of physical memory clamped to [1, 8] GiB (2.9 GiB on
 * the 23 GiB build machine). A fixed 1 GiB kept two 384 MiB blocks, too few for an op loop on big
 * tensors (tools/bench/ops.lua); the cap only bounds what freed memory waits, and an allocation
 * that fails empties the cache and retries (nc_host_alloc). */
static int64_t cache_limit(void) {
    if (cache_cap < 0) {
        const char *e = getenv("NC_HOST_CACHE_MB");
        if (e) cache_cap = atoll(e) * 1048576LL;
        else {
            long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
            int64_t ram = pages > 0 && psz > 0 ? (int64_t)pages * psz : 0;
            int64_t cap = ram / 8, lo = 1LL << 30, hi = 8LL << 30;
            cache_cap = cap < lo ? lo : cap > hi ? hi : cap;
        }
    }
    return cache_cap;
}

int64_t nc_host_cache_limit(void) { return cache_limit(); }

void *nc_host_alloc(int64_t nbytes) {
    if (nbytes < 0) { nc_fail(NC_ERR_ARG, "alloc: negative size %lld", (long long)nbytes); return NULL; }
    size_t n = (size_t)((nbytes + 63) / 64 * 64);
    if (n == 0) n = 64;
    void *p = NULL;
    if ((int64_t)n >= CACHE_MIN && cache_limit() > 0) {
        int64_t r;
        int cls = size_class((int64_t)n, &r);
        n = (size_t)r;
        if (cls < CACHE_CLASSES) {
            pthread_mutex_lock(&cache_mu);
            p = cache_head[cls];
            if (p) { cache_head[cls] = *(void **)p; cache_bytes -= r; }
            pthread_mutex_unlock(&cache_mu);
        }
    }
    if (!p) p = aligned_alloc(64, n);
    if (!p) {
        nc_mem_trim();
        p = aligned_alloc(64, n);
    }
    if (!p) {
        nc_fail(NC_ERR_OOM, "alloc: out of host memory allocating %lld bytes (%.1f MiB live)",
                (long long)nbytes, atomic_load(&host_bytes) / 1048576.0);
        return NULL;
    }
    raise_peak(&host_peak, atomic_fetch_add(&host_bytes, nbytes) + nbytes);
    atomic_fetch_add(&host_allocs, 1);
    return p;
}

void nc_host_free(void *p, int64_t nbytes) {
    if (!p) return;
    atomic_fetch_sub(&host_bytes, nbytes);
    atomic_fetch_add(&host_frees, 1);
    int64_t n = (nbytes + 63) / 64 * 64;
    if (n >= CACHE_MIN && cache_limit() > 0) {
        int64_t r;
        int cls = size_class(n, &r);
        if (cls < CACHE_CLASSES) {
            void *evicted = NULL;   /* blocks of other classes making room, freed after the lock */
            pthread_mutex_lock(&cache_mu);
            if (r <= cache_limit()) {
                for (int c = CACHE_CLASSES - 1; c >= 0 && cache_bytes + r > cache_limit(); c--)
                    while (c != cls && cache_head[c] && cache_bytes + r > cache_limit()) {
                        void *q = cache_head[c];
                        cache_head[c] = *(void **)q;
                        cache_bytes -= class_bytes(c);
                        *(void **)q = evicted;
                        evicted = q;
                    }
                if (cache_bytes + r <= cache_limit()) {
                    *(void **)p = cache_head[cls];
                    cache_head[cls] = p;
                    cache_bytes += r;
                    p = NULL;
                }
            }
            pthread_mutex_unlock(&cache_mu);
            while (evicted) { void *next = *(void **)evicted; free(evicted); evicted = next; }
            if (!p) return;
        }
    }
    free(p);
}

/* Small blocks. Tiny tensors (scalars, losses, 1-element temporaries) are created at op rate
 * and freed by the Lua GC in batches. With malloc, every such tensor cost three allocations,
 * and a batch of frees overflows glibc's per-thread cache (7 chunks per size) into its bins, so
 * the next allocations went through malloc_consolidate: perf showed a 1-element nc.add spending
 * over half its time in malloc/free. A small tensor is one fixed-size block instead, and freed
 * blocks wait on a LIFO list (warm in cache) for the next one, up to NC_SMALL_CACHE_MB (default
 * 8 MiB); blocks beyond that go back to the system.
 * The list is guarded by a spinlock, not a mutex: the critical sections are a few instructions,
 * tensors are made by the Lua thread so it is uncontended, and a spinlock takes one locked
 * instruction per pair instead of a mutex's two plus its call (the mutex was ~9% of a tiny op).
 * The allocation/free counts of small blocks are kept under it too (plain counters, summed into
 * nc_mem_stats); host_bytes and host_peak stay the shared atomics. */
static int64_t small_cache_max(void) {
    static int64_t m = -1;
    if (m < 0) { const char *e = getenv("NC_SMALL_CACHE_MB"); m = (e ? atoll(e) : 8) * 1048576LL / NC_SMALL_BLOCK; }
    return m;
}
static void *small_head;
static int64_t small_count, small_allocs, small_frees;
static atomic_flag small_lock = ATOMIC_FLAG_INIT;

static void small_acquire(void) {
    while (atomic_flag_test_and_set_explicit(&small_lock, memory_order_acquire)) sched_yield();
}
static void small_unlock(void) { atomic_flag_clear_explicit(&small_lock, memory_order_release); }

void *nc_small_alloc(int64_t nbytes) {
    small_acquire();
    void *p = small_head;
    if (p) { small_head = *(void **)p; small_count--; }
    small_allocs++;
    small_unlock();
    if (!p) p = aligned_alloc(64, NC_SMALL_BLOCK);
    if (!p) {
        small_acquire();
        small_allocs--;
        small_unlock();
        nc_fail(NC_ERR_OOM, "alloc: out of host memory allocating a %d-byte tensor block", NC_SMALL_BLOCK);
        return NULL;
    }
    raise_peak(&host_peak, atomic_fetch_add(&host_bytes, nbytes) + nbytes);
    return p;
}

void nc_small_free(void *p, int64_t nbytes) {
    if (!p) return;
    atomic_fetch_sub(&host_bytes, nbytes);
    int64_t max = small_cache_max();
    small_acquire();
    small_frees++;
    if (small_count < max) {
        *(void **)p = small_head;
        small_head = p;
        small_count++;
        p = NULL;
    }
    small_unlock();
    free(p);
}

void nc_mem_trim(void) {
    small_acquire();
    void *list = small_head;
    small_head = NULL;
    small_count = 0;
    small_unlock();
    while (list) { void *next = *(void **)list; free(list); list = next; }
    pthread_mutex_lock(&cache_mu);
    for (int c = 0; c < CACHE_CLASSES; c++) {
        void *p = cache_head[c];
        while (p) { void *next = *(void **)p; free(p); p = next; }
        cache_head[c] = NULL;
    }
    cache_bytes = 0;
    pthread_mutex_unlock(&cache_mu);
}

void nc_count_device(int64_t delta) {
    if (delta > 0) {
        raise_peak(&dev_peak, atomic_fetch_add(&dev_bytes, delta) + delta);
        atomic_fetch_add(&dev_allocs, 1);
    } else {
        atomic_fetch_add(&dev_bytes, delta);
        atomic_fetch_add(&dev_frees, 1);
    }
}

void nc_mem_reset_peak(void) {
    atomic_store(&host_peak, atomic_load(&host_bytes));
    atomic_store(&dev_peak, atomic_load(&dev_bytes));
}

void nc_mem_stats_get(nc_mem_stats *out) {
    if (!out) return;
    out->host_bytes = atomic_load(&host_bytes);
    out->host_peak = atomic_load(&host_peak);
    out->host_allocs = atomic_load(&host_allocs);
    out->host_frees = atomic_load(&host_frees);
    out->device_bytes = atomic_load(&dev_bytes);
    out->device_peak = atomic_load(&dev_peak);
    out->device_allocs = atomic_load(&dev_allocs);
    out->device_frees = atomic_load(&dev_frees);
    out->tensors_live = atomic_load(&nc_tensors_live);
    pthread_mutex_lock(&cache_mu);
    out->host_cached = cache_bytes;
    pthread_mutex_unlock(&cache_mu);
    small_acquire();
    out->host_cached += small_count * NC_SMALL_BLOCK;
    out->host_allocs += small_allocs;
    out->host_frees += small_frees;
    small_unlock();
}

/* ---- threads ------------------------------------------------------------------------------ */
extern void openblas_set_num_threads(int num_threads);
static int32_t n_threads = 0;

void nc_set_num_threads(int32_t n) {
    if (n < 1) n = omp_get_num_procs();
    n_threads = n;
    omp_set_num_threads(n);
    openblas_set_num_threads(n);
}

int32_t nc_get_num_threads(void) { return nc_threads(); }

int32_t nc_threads(void) {
    if (n_threads <= 0) {
        const char *e = getenv("NC_THREADS");
        int32_t n = e ? atoi(e) : 0;
        nc_set_num_threads(n > 0 ? n : omp_get_max_threads());
    }
    return n_threads;
}

static int64_t nt_bytes = -1;

int64_t nc_nt_bytes(void) {
    int64_t v = __atomic_load_n(&nt_bytes, __ATOMIC_RELAXED);
    if (v < 0) {
        const char *e = getenv("NC_NT_BYTES");
        v = e ? atoll(e) : (int64_t)32 << 20;
        if (v <= 0) v = INT64_MAX;   /* disabled */
        __atomic_store_n(&nt_bytes, v, __ATOMIC_RELAXED);
    }
    return v;
}

void nc_set_nt_bytes(int64_t bytes) {
    __atomic_store_n(&nt_bytes, bytes <= 0 ? INT64_MAX : bytes, __ATOMIC_RELAXED);
}

int64_t nc_get_nt_bytes(void) { return nc_nt_bytes(); }

/* ---- CPU kernel selection ----------------------------------------------------------------- */
/* -1 unset, 0 scalar, 1 avx2, 2 avx512 (the AVX2 kernels plus the AVX-512F versions of the
 * exp-bound ones, kernels/cpu/act_avx512.c) */
static int kernel_sel = -1;

static bool cpu_has_avx2(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

static bool cpu_has_avx512(void) { return cpu_has_avx2() && __builtin_cpu_supports("avx512f"); }

/* the packed ternary VNNI kernel (kernels/cpu/ternary_vnni.c): vpdpbusd on zmm and the vgf2p8affineqb
 * unpack */
static bool cpu_has_vnni512(void) {
    return cpu_has_avx512() && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("gfni");
}

static int best_kernel(void) { return cpu_has_avx512() ? 2 : cpu_has_avx2() ? 1 : 0; }

static int kernel_level(void) {
    if (kernel_sel < 0) {
        const char *e = getenv("NC_KERNEL");
        if (e && !strcmp(e, "scalar")) kernel_sel = 0;
        else if (e && !strcmp(e, "avx2")) kernel_sel = cpu_has_avx2() ? 1 : 0;
        else kernel_sel = best_kernel();
    }
    return kernel_sel;
}

bool nc_cpu_avx2(void) { return kernel_level() >= 1; }
bool nc_cpu_avx512(void) { return kernel_level() == 2; }
bool nc_cpu_vnni512(void) {
    static int has = -1;
    if (has < 0) has = cpu_has_vnni512();
    return kernel_level() == 2 && has;
}

const char *nc_cpu_kernel_name(void) {
    static const char *const names[] = { "scalar", "avx2", "avx512" };
    return names[kernel_level()];
}

nc_status nc_set_cpu_kernel(const char *name) {
    if (!name) return nc_fail(NC_ERR_ARG, "set_cpu_kernel: name is NULL");
    if (!strcmp(name, "scalar")) { kernel_sel = 0; return NC_OK; }
    if (!strcmp(name, "auto")) { kernel_sel = best_kernel(); return NC_OK; }
    if (!strcmp(name, "avx2")) {
        if (!cpu_has_avx2())
            return nc_fail(NC_ERR_UNSUPPORTED, "set_cpu_kernel: this CPU lacks AVX2+FMA");
        kernel_sel = 1;
        return NC_OK;
    }
    if (!strcmp(name, "avx512")) {
        if (!cpu_has_avx512())
            return nc_fail(NC_ERR_UNSUPPORTED, "set_cpu_kernel: this CPU lacks AVX-512F (or AVX2+FMA)");
        kernel_sel = 2;
        return NC_OK;
    }
    return nc_fail(NC_ERR_ARG, "set_cpu_kernel: expected \"auto\", \"avx512\", \"avx2\" or \"scalar\", got \"%s\"", name);
}

/* ---- CUDA backend loader ------------------------------------------------------------------ */
static const nc_cuda_api *cuda_api;
static int cuda_tried;
static char cuda_why[4400] = "CUDA backend not loaded yet";

static void cuda_load(void) {
    cuda_tried = 1;
    Dl_info info;
    char path[4096];
    const char *env = getenv("NC_CUDA_LIB");
    if (env) {
        snprintf(path, sizeof path, "%s", env);
    } else if (dladdr((void *)&nc_version, &info) && info.dli_fname) {
        snprintf(path, sizeof path, "%s", info.dli_fname);
        char *slash = strrchr(path, '/');
        if (slash) snprintf(slash + 1, sizeof path - (size_t)(slash + 1 - path), "libnanochat_cuda.so");
        else snprintf(path, sizeof path, "libnanochat_cuda.so");
    } else {
        snprintf(path, sizeof path, "libnanochat_cuda.so");
    }
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        snprintf(cuda_why, sizeof cuda_why, "CUDA backend unavailable: %s", dlerror());
        return;
    }
    nc_cuda_api_get_fn get = (nc_cuda_api_get_fn)dlsym(h, "nc_cuda_api_get");
    const nc_cuda_api *api = get ? get() : NULL;
    if (!api || api->api_version != NC_CUDA_API_VERSION) {
        snprintf(cuda_why, sizeof cuda_why, "CUDA backend %s has a different API version (want %d)", path,
                 NC_CUDA_API_VERSION);
        return;
    }
    int32_t n = api->device_count();
    if (n <= 0) {
        snprintf(cuda_why, sizeof cuda_why, "no CUDA GPU found (%s)", api->last_error());
        return;
    }
    snprintf(cuda_why, sizeof cuda_why, "CUDA backend loaded from %s, %d GPU(s)", path, n);
    cuda_api = api;
}

const nc_cuda_api *nc_cuda(void) {
    #pragma omp critical(nc_cuda_load)
    { if (!cuda_tried) cuda_load(); }
    if (!cuda_api) nc_fail(NC_ERR_DEVICE, "%s", cuda_why);
    return cuda_api;
}

int32_t nc_cuda_available(void) { return nc_cuda() != NULL; }

const nc_cuda_api *nc_cuda_for(const char *op) {
    const nc_cuda_api *cu = nc_cuda();
    if (!cu) nc_fail(NC_ERR_DEVICE, "%s: the tensors are on cuda but %s", op, nc_cuda_status());
    return cu;
}

nc_status nc_cuda_err(const char *op, const nc_cuda_api *cu, nc_status st) {
    return nc_fail(st, "%s: CUDA: %s", op, cu && cu->last_error ? cu->last_error() : "unknown error");
}

nc_status nc_no_cuda(const char *op, const char *what) {
    return nc_fail(NC_ERR_UNSUPPORTED, "%s: no CUDA kernel for %s; move the tensors to the CPU with :to('cpu')", op,
                   what ? what : "this op");
}

nc_tensor *nc_cuda_buffer(const char *op, int32_t dtype, int64_t n) {
    int64_t shp[1] = { n > 0 ? n : 1 };
    nc_tensor *t = nc_tensor_new(dtype, NC_CUDA, 1, shp);
    if (!t) {
        char cause[512];
        snprintf(cause, sizeof cause, "%s", nc_last_error());
        nc_fail(NC_ERR_OOM, "%s: cannot allocate a %lld-element CUDA workspace: %s", op, (long long)shp[0], cause);
    }
    return t;
}

const char *nc_cuda_status(void) {
    (void)nc_cuda();
    return cuda_why;
}

int32_t nc_device_count(int32_t device) {
    if (device == NC_CPU) return 1;
    if (device == NC_CUDA) { const nc_cuda_api *c = nc_cuda(); return c ? c->device_count() : 0; }
    return 0;
}
