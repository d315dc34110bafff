/* kernels/cpu/optim_internal.h — raw-pointer helpers shared by optim.c and optim_linalg.c.
 *
 * Promise: the Newton-Schulz iteration on a bare row-major buffer (in place) and a
 * deterministic Frobenius norm (fixed chunking, double partial sums, independent of the thread
 * count), so the optimizer steps can orthogonalize their transient buffers without tensors.
 */
#ifndef NC_OPTIM_INTERNAL_H
#define NC_OPTIM_INTERNAL_H

#include "internal.h"

#include <math.h>

/* ||x||_F over n floats, summed in fixed 4096-element chunks (double) in chunk order. */
double nc_optim_fro_norm(const float *x, int64_t n);

/* In-place Newton-Schulz on x (rows, cols) row-major; see nc_newton_schulz for the rule. ns_dtype
 * (enum nc_ns_dtype) picks the products: F32 = OpenBLAS sgemm, BF16 = nc_gemm_bf16_f32p, AUTO =
 * BF16 when nc_gemm_bf16_hw(), else F32; ns_form (enum nc_ns_form, checked by the caller with
 * nc_optim_check_ns) the standard or the Gram iteration, with either. */
nc_status nc_optim_ns_inplace(float *x, int64_t rows, int64_t cols, int32_t steps, const double *abc,
                              int32_t n_abc, double fro_mult, double eps, int32_t ns_dtype, int32_t ns_form);

/* NC_OK when ns_dtype and ns_form are enum nc_ns_dtype / nc_ns_form values, else NC_ERR_ARG naming op. */
nc_status nc_optim_check_ns(const char *op, int32_t ns_dtype, int32_t ns_form);

/* AdamW's per-step constants (optim.c adam_consts) and its per-element update, shared by the
 * baseline loop (optim.c) and its AVX-512 build (optim_avx512.c): one definition, so both compile
 * the same IEEE operations in the same order (neither file contracts to FMA). */
typedef struct {
    float b1, b2, eps, coef, bc2s;   /* coef: multiplies m / denom; bc2s = sqrt(bc2) (torch mode) */
    int galore;
} nc_adam_c;

/* updates m, v for one element; returns the direction (update / lr) */
static inline float adam_elem(float g, float *m, float *v, const nc_adam_c *c) {
    float mi = c->b1 * *m + (1.0f - c->b1) * g;
    float vi = c->b2 * *v + (1.0f - c->b2) * (g * g);
    *m = mi;
    *v = vi;
    float denom = c->galore ? sqrtf(vi) + c->eps : sqrtf(vi) / c->bc2s + c->eps;
    return c->coef * (mi / denom);
}

/* optim_avx512.c: nc_adamw_step's loop (P = P decay - lr adam_elem(...)) compiled for AVX-512;
 * call only when nc_cpu_avx512(). */
void nc_optim_adamw_avx512(float *P, const float *G, float *M, float *V, int64_t n, const nc_adam_c *c, float decay,
                           float lr);

/* Devices: core/internal.h's nc_check_one_device (one rule and message for every op). */
/* CUDA: core/internal.h's nc_cuda_for / nc_cuda_err / nc_cuda_buffer. */

/* Muon's quintic coefficients (algorithms.md §2.2). */
extern const double nc_ns_quintic[3];

#endif
