/* kernels/cpu/nn_common.h — small helpers shared by the neural-net kernels (matmul, softmax,
 * loss, norm, rope, attention, quant). Header-only, private to kernels/cpu.
 *
 * Promise: nc_expf_fast is a branch-free exp that vectorizes under `#pragma omp simd`
 * (max relative error ~2 ulp on the float range; 0 below -87.3, +inf above 88.7); row helpers
 * walk "all dims but the last" of a strided tensor in logical order.
 */
#ifndef NC_NN_COMMON_H
#define NC_NN_COMMON_H

/* FP exceptions are never inspected by this library; without trapping-math semantics GCC can
 * if-convert the clamps and selects in the kernels below, so `omp simd` loops vectorize. */
#pragma GCC optimize("no-trapping-math")

#include "internal.h"
#include <math.h>
#include <stdint.h>
#include <string.h>

/* exp(x) = 2^n * exp(r), x = n ln2 + r, |r| <= ln2/2; exp(r) by its Taylor series to degree 7
 * (truncation error r^8/8! < 6e-9 relative), evaluated in Horner form. ln2 is split in a high
 * part exact in float and a low correction so r keeps full precision. */
static inline float nc_expf_fast(float x) {
    const float lo_clamp = -87.3f, hi_clamp = 88.7f;
    float xc = x < lo_clamp ? lo_clamp : x;
    xc = xc > hi_clamp ? hi_clamp : xc;
    /* round to nearest through the 1.5 * 2^23 shifter (no floorf: vectorizes on plain SSE2) */
    float nf = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = xc - nf * 0.693145751953125f;          /* ln2 high part (exact product) */
    r = r - nf * 1.428606765330187e-06f;             /* ln2 low part */
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t n = (int32_t)nf;
    union { uint32_t u; float f; } bits;
    bits.u = (uint32_t)(n + 127) << 23;
    float scale = bits.f;
    float y = p * scale;
    y = x < lo_clamp ? 0.0f : y;
    y = x > hi_clamp ? INFINITY : y;
    return y;
}

/* Element offset (relative to t->offset) of row r, rows being all dims but the last. */
static inline int64_t nc_row_offset(const nc_tensor *t, int64_t r) {
    int64_t off = 0;
    for (int32_t d = t->ndim - 2; d >= 0; d--) {
        int64_t n = t->shape[d];
        off += (r % n) * t->strides[d];
        r /= n;
    }
    return off;
}

/* rows = product of all dims but the last (1 for a 1-D tensor) */
static inline int64_t nc_rows_of(const nc_tensor *t) {
    int64_t r = 1;
    for (int32_t d = 0; d < t->ndim - 1; d++) r *= t->shape[d];
    return r;
}

static inline int64_t nc_last_dim(const nc_tensor *t) { return t->ndim ? t->shape[t->ndim - 1] : 1; }
static inline int64_t nc_last_stride(const nc_tensor *t) {
    return (t->ndim && t->shape[t->ndim - 1] > 1) ? t->strides[t->ndim - 1] : 1;
}

/* Check that a float tensor is on the CPU and f32. */
static inline nc_status nc_check_f32_cpu(const char *op, const char *arg, const nc_tensor *t) {
    NC_TRY(nc_check_dtype(op, arg, t, NC_F32));
    return nc_check_cpu(op, arg, t);
}

/* ---- devices of the nn ops (kernels/cpu/nn_cuda.c; CUDA kernels in kernels/cuda/nn.cu) --------- */
/* The device rule is core/internal.h's (nc_check_one_device, NC_DEV_OF): an nn op runs on CUDA when
 * any of its tensors is a CUDA tensor; nc_check_f32_on names a tensor that is not on it. */
/* f32 and on the op's device dev */
static inline nc_status nc_check_f32_on(const char *op, const char *arg, const nc_tensor *t, int32_t dev) {
    NC_TRY(nc_check_dtype(op, arg, t, NC_F32));
    return nc_check_device(op, arg, t, dev);
}

/* t itself when contiguous, else a contiguous clone on t's device stored in *tmp (release it);
 * NULL (NC_ERR_OOM set) when the clone cannot be made */
const nc_tensor *nc_nn_contig(const char *op, const nc_tensor *t, nc_tensor **tmp);
/* a host copy of a (small) device tensor, or NULL with the error set; release it */
nc_tensor *nc_nn_to_host(const char *op, const nc_tensor *t);

#endif
