/* kernels/cpu/nn_cuda.c — helpers the nn entry points (index, norm, rope, quant, loss, attention) use
 * to hand CUDA tensors to the CUDA backend (core/backend.h API 4, kernels/cuda/nn.cu).
 *
 * Promise: every helper either succeeds or leaves an error naming the op; nothing here touches
 * device memory from the host. A CUDA tensor on a machine without a GPU gets the clean
 * "op: the tensors are on cuda but <why>" NC_ERR_DEVICE error before any data is read.
 */
#include "nn_common.h"

#include <stdio.h>

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

