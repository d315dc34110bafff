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

/* Devices (optim.c). The device every given tensor lives on (NULL entries skipped: the argument
 * checks name them); mixed devices are NC_ERR_DEVICE "op: all tensors must be on one device (all
 * cpu or all cuda), got p on cuda, g on cpu, ...". */
nc_status nc_optim_one_device(const char *op, int32_t *dev, int n, const char *const *names, const nc_tensor *const *ts);
/* the CUDA backend for an op whose tensors are on the GPU (NULL + error naming op when absent) */
const nc_cuda_api *nc_optim_cuda(const char *op);
/* "op: <the backend's last error>" with status st */
nc_status nc_optim_cuda_err(const char *op, const nc_cuda_api *cu, nc_status st);
/* a transient f32 CUDA tensor of n elements (counted device memory); NULL + error on failure */
nc_tensor *nc_optim_cuda_buffer(const char *op, int64_t n);

/* Muon's quintic coefficients (algorithms.md §2.2). */
extern const double nc_ns_quintic[3];

#endif
