/* core/internal.h — private helpers shared by core/ and kernels/ (never seen by Lua).
 *
 * Promise: one way to report errors (nc_fail), to check arguments (nc_check_*), to allocate
 * counted host memory, to walk strided tensors, and to reach the optional CUDA backend.
 */
#ifndef NC_INTERNAL_H
#define NC_INTERNAL_H

#include "nanochat.h"
#include "backend.h"
#include <stdarg.h>
#include <stdbool.h>

/* ---- errors ------------------------------------------------------------------------------ */
/* Sets the thread-local message and returns code, so `return nc_fail(NC_ERR_SHAPE, ...)`. */
nc_status nc_fail(nc_status code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* "(2, 3) f32 cpu" into buf; returns buf. "NULL" for a NULL tensor. */
const char *nc_describe(const nc_tensor *t, char *buf, size_t n);
#define NC_DESC_LEN 160
/* Evaluate an nc_status expression; return it on failure. */
#define NC_TRY(expr) do { nc_status nc_try_s_ = (expr); if (nc_try_s_ != NC_OK) return nc_try_s_; } while (0)

/* Argument checks: each returns NC_OK or fails with "op: arg ..." naming expected vs actual. */
nc_status nc_check_not_null(const char *op, const char *arg, const nc_tensor *t);
nc_status nc_check_dtype(const char *op, const char *arg, const nc_tensor *t, int32_t dtype);
nc_status nc_check_index_dtype(const char *op, const char *arg, const nc_tensor *t); /* i32 or i64 */
nc_status nc_check_device(const char *op, const char *arg, const nc_tensor *t, int32_t device);
nc_status nc_check_cpu(const char *op, const char *arg, const nc_tensor *t);
/* The one device rule of every op that runs on CPU or CUDA: the call runs on CUDA when any of its
 * tensors is a CUDA tensor, and every other tensor must then be on CUDA too. nc_check_one_device
 * sets *dev to that device (NC_CPU when all entries are NULL; NULL entries are skipped, the argument
 * checks name them) and otherwise fails like nc_check_device, naming the first tensor on the other
 * device: "op: expected g on cuda, got (4, 4) f32 cpu". */
int32_t nc_dev_of(int n, const nc_tensor *const *ts);
#define NC_DEV_OF(...) nc_dev_of((int)(sizeof((const nc_tensor *[]){ __VA_ARGS__ }) / sizeof(const nc_tensor *)), \
                                 (const nc_tensor *const[]){ __VA_ARGS__ })
nc_status nc_check_one_device(const char *op, int32_t *dev, int n, const char *const *names, const nc_tensor *const *ts);
nc_status nc_check_contiguous(const char *op, const char *arg, const nc_tensor *t);
/* a written tensor must not repeat elements (stride 0 on a dim longer than 1) */
nc_status nc_check_writable(const char *op, const char *arg, const nc_tensor *t);
nc_status nc_check_ndim(const char *op, const char *arg, const nc_tensor *t, int32_t ndim);
nc_status nc_check_same_shape(const char *op, const char *an, const nc_tensor *a, const char *bn, const nc_tensor *b);
/* shape must equal `shape` (entries < 0 are wildcards) */
nc_status nc_check_shape(const char *op, const char *arg, const nc_tensor *t, int32_t ndim, const int64_t *shape);
/* normalize a possibly negative dim against ndim; fails with NC_ERR_INDEX */
nc_status nc_norm_dim(const char *op, int32_t *dim, int32_t ndim);

/* ---- memory ------------------------------------------------------------------------------ */
void *nc_host_alloc(int64_t nbytes);           /* 64-byte aligned, counted; NULL + error on OOM */
void nc_host_free(void *p, int64_t nbytes);
/* One NC_SMALL_BLOCK-byte, 64-byte aligned block from a free list (core/tensor.c puts a small
 * tensor's header, storage and data in it); nbytes of it are counted as host memory. */
#define NC_SMALL_BLOCK 512
void *nc_small_alloc(int64_t nbytes);
void nc_small_free(void *p, int64_t nbytes);
void nc_count_device(int64_t delta_bytes);     /* the CUDA path reports its allocations here */

/* ---- element access ---------------------------------------------------------------------- */
static inline char *nc_ptr(const nc_tensor *t) {
    const nc_dtype_traits *tr = nc_dtype_info(t->dtype);
    return (char *)t->storage->data + t->offset * (int64_t)tr->elem_size;
}
static inline float *nc_f32p(const nc_tensor *t) { return (float *)t->storage->data + t->offset; }

/* Offset (elements, relative to t->offset) of the element with logical (row-major) index i. */
static inline int64_t nc_offset_of(const nc_tensor *t, int64_t i) {
    int64_t off = 0;
    for (int32_t d = t->ndim - 1; d >= 0; d--) {
        int64_t n = t->shape[d];
        off += (i % n) * t->strides[d];
        i /= n;
    }
    return off;
}

/* Reads element at element offset `off` from t's data pointer (any plain dtype) as double. */
double nc_load_as_f64(const void *base, int32_t dtype, int64_t off);
void nc_store_from_f64(void *base, int32_t dtype, int64_t off, double v);
float nc_bf16_to_f32(uint16_t h);
uint16_t nc_f32_to_bf16(float f);      /* round to nearest even, NaN preserved */
float nc_f16_to_f32(uint16_t h);
uint16_t nc_f32_to_f16(float f);       /* round to nearest even, overflow to inf */

/* ---- threads ----------------------------------------------------------------------------- */
int32_t nc_threads(void);              /* OpenMP thread count the ops use */
/* Work below this many elements runs on one thread (OpenMP start-up costs ~1-3 µs). */
#define NC_PAR_MIN 32768
/* Outputs of at least this many bytes are written with non-temporal (streaming) stores by the
 * AVX2 streaming kernels and copied by several threads: they will not stay in cache anyway, and
 * streaming skips the read-for-ownership of every output line. NC_NT_BYTES overrides the default
 * (32 MiB); NC_NT_BYTES=0 disables streaming stores. */
int64_t nc_nt_bytes(void);

/* ---- kernels ----------------------------------------------------------------------------- */
/* 1 when the AVX2+FMA kernels are selected (CPUID at init, NC_KERNEL env, nc_set_cpu_kernel). */
bool nc_cpu_avx2(void);
bool nc_cpu_avx512(void);            /* AVX-512F versions of the exp-bound kernels */
bool nc_cpu_vnni512(void);           /* "avx512" selected and AVX-512 BW/VL/VNNI + GFNI: the ternary VNNI kernel */
/* kernels/cpu/amx.c: nc_gemm_bf16 on raw row-major f32 buffers: C (M x N, row stride ldc) = alpha *
 * bf16(op(A)) bf16(op(B)) + beta C with f32 accumulation; op(A) is A (M x K, row stride lda) or, with
 * trans_a, the transpose of A stored K x M (likewise B: K x N, or N x K with trans_b). Runs on AMX,
 * else the AVX-512 BF16 kernel, else the (slow, double) reference; nc_gemm_bf16_hw says whether a
 * hardware path runs. C may alias A or B only when nc_gemm_bf16_hw(): the tile and AVX-512 drivers
 * pack both operands before any output is written (one barrier apart); the reference reads them
 * while it writes. */
nc_status nc_gemm_bf16_f32p(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, int32_t trans_a,
                            const float *B, int64_t ldb, int32_t trans_b, float alpha, float beta, float *C,
                            int64_t ldc);
int32_t nc_gemm_bf16_hw(void);
/* nc_gemm_bf16_f32p for an n x n product known to be symmetric (X X^T, A A with A symmetric, and
 * products symmetric in exact arithmetic only): the hardware backends compute only the 32 x 32
 * output blocks on or above the diagonal and store each above-diagonal block transposed below it
 * as well, in the epilogue (diagonal blocks: their lower triangle mirrored from the upper); the
 * reference computes the whole product, then mirrors. Either way C[j][i] = alpha P[i][j] +
 * beta C[j][i] for i < j, with P[i][j] the computed upper entry: with beta 0, or C symmetric on
 * input, C comes out exactly symmetric. */
nc_status nc_gemm_bf16_f32p_sym(int64_t n, int64_t K, const float *A, int64_t lda, int32_t trans_a, const float *B,
                                int64_t ldb, int32_t trans_b, float alpha, float beta, float *C, int64_t ldc);
/* C (n x n, row stride ldc): the strict lower triangle := the transpose of the strict upper one */
void nc_sym_mirror(float *C, int64_t n, int64_t ldc);

/* ---- CUDA backend (optional, dlopen'ed) -------------------------------------------------- */
/* Returns the CUDA vtable, loading lib/libnanochat_cuda.so on first use; NULL (with
 * nc_last_error set) when the library or a GPU is missing. */
const nc_cuda_api *nc_cuda(void);
/* For ops whose tensors are on the GPU (one rule and message for every subsystem): the backend, or
 * NULL with "op: the tensors are on cuda but <why>" (NC_ERR_DEVICE); nc_cuda_err returns st with
 * "op: CUDA: <the backend's last error>"; nc_cuda_buffer is a fresh contiguous 1-D CUDA workspace
 * of n (>= 1) elements, or NULL with NC_ERR_OOM set. */
const nc_cuda_api *nc_cuda_for(const char *op);
nc_status nc_cuda_err(const char *op, const nc_cuda_api *cu, nc_status st);
nc_tensor *nc_cuda_buffer(const char *op, int32_t dtype, int64_t n);
/* "op: no CUDA kernel for <what, or 'this op'>; move the tensors to the CPU with :to('cpu')" */
nc_status nc_no_cuda(const char *op, const char *what);

#endif
