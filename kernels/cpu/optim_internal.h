/* kernels/cpu/optim_internal.h — raw-pointer helpers shared by optim.c and optim_linalg.c.
 *
 * Promise: the Newton-Schulz iteration on a bare row-major buffer (in place) and a
 * deterministic Frobenius norm (fixed chunking, double partial sums, independent of the thread
 * count), so the optimizer steps can orthogonalize their transient buffers without tensors.
 */
#ifndef NC_OPTIM_INTERNAL_H
#define NC_OPTIM_INTERNAL_H

#include "internal.h"

/* ||x||_F over n floats, summed in fixed 4096-element chunks (double) in chunk order. */
double nc_optim_fro_norm(const float *x, int64_t n);

/* In-place Newton-Schulz on x (rows, cols) row-major; see nc_newton_schulz for the rule. */
nc_status nc_optim_ns_inplace(float *x, int64_t rows, int64_t cols, int32_t steps, const double *abc,
                              int32_t n_abc, double fro_mult, double eps);

/* Devices: core/internal.h's nc_check_one_device (one rule and message for every op). */
/* CUDA: core/internal.h's nc_cuda_for / nc_cuda_err / nc_cuda_buffer. */

/* Muon's quintic coefficients (algorithms.md §2.2). */
extern const double nc_ns_quintic[3];

#endif
