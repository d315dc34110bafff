/* kernels/cpu/nn_cuda.c — helpers the nn entry points (index, norm, rope, quant, loss, attention) use
 * to hand CUDA tensors to the CUDA backend (core/backend.h API 4, kernels/cuda/nn.cu).
 *
 * Promise: every helper either succeeds or leaves an error naming the op; nothing here touches
 * device memory from the host. A CUDA tensor on a machine without a GPU gets the clean
 * "op: the tensors are on cuda but <why>" NC_ERR_DEVICE error before any data is read.
 */
#include "nn_common.h"

#include <stdio.h>

const nc_cuda_api *nc_nn_cuda(const char *op) {
    const nc_cuda_api *cu = nc_cuda();
    if (!cu) nc_fail(NC_ERR_DEVICE, "%s: the tensors are on cuda but %s", op, nc_cuda_status());
    return cu;
}

nc_status nc_nn_cuda_err(const char *op, const nc_cuda_api *cu, nc_status st) {
    return nc_fail(st, "%s: CUDA: %s", op, cu && cu->last_error ? cu->last_error() : "unknown error");
}

/* "op: <what>: <the error left by the failed call>" */
static void fail_with_cause(nc_status st, const char *op, const char *what) {
    char cause[512];
    snprintf(cause, sizeof cause, "%s", nc_last_error());
    nc_fail(st, "%s: %s: %s", op, what, cause);
}

const nc_tensor *nc_nn_contig(const char *op, const nc_tensor *t, nc_tensor **tmp) {
    *tmp = NULL;
    if (!t || nc_tensor_is_contiguous(t)) return t;
    *tmp = nc_tensor_new_clone(t);
    if (!*tmp) fail_with_cause(NC_ERR_OOM, op, "cannot make a contiguous copy of a strided input");
    return *tmp;
}

nc_tensor *nc_nn_to_host(const char *op, const nc_tensor *t) {
    nc_tensor *h = nc_tensor_new_to(t, t->dtype, NC_CPU);
    if (!h) fail_with_cause(NC_ERR_DEVICE, op, "cannot copy an index tensor to the host");
    return h;
}

nc_tensor *nc_nn_cuda_buffer(const char *op, int32_t dtype, int64_t n) {
    int64_t shp[1] = { n > 0 ? n : 1 };
    nc_tensor *t = nc_tensor_new(dtype, NC_CUDA, 1, shp);
    if (!t) fail_with_cause(NC_ERR_OOM, op, "cannot allocate a CUDA workspace");
    return t;
}

nc_status nc_nn_no_cuda(const char *op, const char *what) {
    return nc_fail(NC_ERR_UNSUPPORTED, "%s: no CUDA kernel for %s; move the tensors to the CPU with :to('cpu')", op,
                   what);
}
