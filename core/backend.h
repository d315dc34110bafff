/* core/backend.h — the device backend vtable.
 *
 * Promise: the CPU backend is always compiled into libnanochat.so; the CUDA backend lives in
 * lib/libnanochat_cuda.so (kernels/cuda/ sources, built when nvcc exists) and is dlopen'ed on first
 * use, so libnanochat.so runs on machines without a GPU or CUDA runtime. The CUDA library exports
 * exactly one symbol, nc_cuda_api_get, returning a filled nc_cuda_api of this ABI version.
 *
 * All pointers are device pointers unless named host_*. Element counts and strides are in
 * elements. Every function returns nc_status and reports failures through set_error-free
 * strings in last_error() (the core copies them into its own thread-local message).
 */
#ifndef NC_BACKEND_H
#define NC_BACKEND_H

#include "nanochat.h"

#define NC_CUDA_API_VERSION 2

/* Up to three strided operands sharing one logical shape (broadcast operands have stride 0). */
typedef struct nc_strided3 {
    int32_t ndim;
    int64_t shape[NC_MAX_DIMS];
    int64_t st_out[NC_MAX_DIMS];
    int64_t st_a[NC_MAX_DIMS];
    int64_t st_b[NC_MAX_DIMS];
} nc_strided3;

/* A reduction split (nc_sum_to): kept dims (one output element each, strides in src and dst)
 * and reduced dims (summed over, strides in src); nkept / nred are the products of the shapes. */
typedef struct nc_reduce_geo {
    int32_t nk, nr;
    int64_t kshape[NC_MAX_DIMS], kst_src[NC_MAX_DIMS], kst_dst[NC_MAX_DIMS];
    int64_t rshape[NC_MAX_DIMS], rst_src[NC_MAX_DIMS];
    int64_t nkept, nred;
} nc_reduce_geo;

enum nc_copy_kind { NC_COPY_H2D = 0, NC_COPY_D2H = 1, NC_COPY_D2D = 2 };

typedef struct nc_cuda_api {
    int32_t api_version;                       /* NC_CUDA_API_VERSION */
    const char *(*last_error)(void);
    int32_t (*device_count)(void);             /* 0 when no GPU / driver */
    nc_status (*malloc)(void **p, int64_t nbytes);
    nc_status (*free)(void *p);
    nc_status (*memcpy)(void *dst, const void *src, int64_t nbytes, int32_t kind);
    nc_status (*memset0)(void *p, int64_t nbytes);
    nc_status (*synchronize)(void);
    /* fill n elements of a contiguous buffer of dtype (f32, f64, i32, i64, u8, i8, f16, bf16) */
    nc_status (*fill)(void *p, int64_t n, int32_t dtype, double value);
    /* out[idx_out] = convert(a[idx_a]) over the strided shape; dtype_out/dtype_a any plain dtype */
    nc_status (*strided_copy)(void *out, int32_t dtype_out, const void *a, int32_t dtype_a, const nc_strided3 *g);
    /* Row-major semantics: C (m, n) = alpha * op(A) op(B) + beta * C for `batch` matrices with the
     * given element strides between matrices (0 = shared). lda/ldb/ldc are row strides. */
    nc_status (*sgemm)(int32_t trans_a, int32_t trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                       const float *a, int64_t lda, int64_t stride_a,
                       const float *b, int64_t ldb, int64_t stride_b, float beta,
                       float *c, int64_t ldc, int64_t stride_c, int64_t batch);
    /* f32 elementwise, strided with broadcasting; op from enum nc_binary_op / nc_unary_op */
    nc_status (*binary)(float *out, const float *a, const float *b, const nc_strided3 *g, int32_t op);
    nc_status (*binary_scalar)(float *out, const float *a, const nc_strided3 *g, double s, int32_t op);
    nc_status (*unary)(float *out, const float *a, const nc_strided3 *g, int32_t op);
    /* ga (contiguous, n) += gout * f'(a) with out = f(a); all contiguous, n elements */
    nc_status (*unary_backward)(float *ga, const float *out, const float *a, const float *gout, int64_t n, int32_t op);
    /* out (strided dst, may be a view) += alpha * a (broadcast strided) */
    nc_status (*add_scaled)(float *out, const float *a, const nc_strided3 *g, double alpha);
    /* dst[kept] += alpha * sum over the reduced dims of src (double accumulation in a fixed order,
     * one thread per kept element); dst's kept positions must be distinct (no stride-0 dims) */
    nc_status (*sum_to)(float *dst, const float *src, const nc_reduce_geo *g, double alpha);
} nc_cuda_api;

typedef const nc_cuda_api *(*nc_cuda_api_get_fn)(void);

#endif
