/* kernels/cuda/common.cuh — what the CUDA translation units of lib/libnanochat_cuda.so share.
 *
 * Promise: hidden-visibility helpers only (the library still exports just nc_cuda_api_get):
 * the thread-local error message behind last_error() (backend.cu), launch checks, the row-major
 * sgemm wrapper, and the optimizer (kernels/cuda/optim.cu) and nn (kernels/cuda/nn.cu) entries that
 * backend.cu puts into the nc_cuda_api table.
 */
#ifndef NC_CUDA_COMMON_CUH
#define NC_CUDA_COMMON_CUH

#include <cuda_runtime.h>

#include <cstdint>

#include "backend.h"

#pragma GCC visibility push(hidden)
namespace nc_cu {

/* set the message last_error() returns; returns code */
__attribute__((format(printf, 2, 3))) nc_status fail(nc_status code, const char *fmt, ...);
nc_status cuda_fail(cudaError_t e, const char *what);
nc_status launch_check(const char *op, int64_t n);
/* the nc_cuda_api sgemm entry (row-major, see backend.h) */
nc_status sgemm(int32_t trans_a, int32_t trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float *a,
                int64_t lda, int64_t stride_a, const float *b, int64_t ldb, int64_t stride_b, float beta, float *c,
                int64_t ldc, int64_t stride_c, int64_t batch);

/* kernels/cuda/optim.cu: the optimizer entries of nc_cuda_api (API 3) */
nc_status opt_adam(float *p, float *d_out, const float *g, float *m, float *v, int64_t n, const nc_cuda_optc *c);
nc_status opt_lion(float *p, float *d_out, const float *g, float *m, int64_t n, const nc_cuda_optc *c);
nc_status opt_muon_momentum(float *u, float *m, const float *g, int64_t n, const nc_cuda_optc *c);
nc_status opt_muon8_momentum(float *u, int8_t *codes, float *scales, const float *g, int64_t n, const nc_cuda_optc *c,
                             const nc_code_map *map_host);
nc_status opt_apply_update(float *p, const float *u, int64_t n, float decay, float step);
nc_status opt_quant8(int8_t *codes, float *scales, const float *x, int64_t n, const nc_cuda_optc *c,
                     const nc_code_map *map_host);
nc_status opt_dequant8(float *out, const int8_t *codes, const float *scales, int64_t n, int64_t block, int32_t map,
                       const nc_code_map *map_host);
nc_status opt_newton_schulz(float *x, int64_t rows, int64_t cols, int32_t steps, const double *host_abc, int32_t n_abc,
                            double fro_mult, double eps, float *ws);

/* kernels/cuda/nn.cu: the nn entries of nc_cuda_api (API 4), as documented in core/backend.h */
nc_status op_embedding(float *out, const float *w, const void *idx, int32_t dt, int64_t n, int64_t D);
nc_status op_embedding_backward(float *gw, const void *idx, int32_t dt, const float *g, int64_t n, int64_t D);
nc_status op_rmsnorm(float *y, float *rstd, const float *x, const float *w, int64_t rows, int64_t D, double eps);
nc_status op_rmsnorm_backward(float *gx, float *gw, const float *x, const float *w, const float *rstd, const float *g,
                              int64_t rows, int64_t D);
nc_status op_rope(float *out, const float *x, const float *cs, const float *sn, int64_t rows, int64_t T, int64_t H,
                  int64_t D, float sign, int32_t acc);
nc_status op_quant_weight(float *out, float *scale, const float *w, int64_t n, int64_t group_size, double eps);
nc_status op_quant_act(float *out, float *scale, const float *x, int64_t rows, int64_t D, double eps);
nc_status op_cross_entropy(float *lse, double *row_loss, const float *x, const void *tg, int32_t dt, int64_t N,
                           int64_t V, int64_t ignore_index, double ls, double z);
nc_status op_cross_entropy_backward(float *g, const float *x, const float *lse, const void *tg, int32_t dt,
                                    const float *grows, int64_t N, int64_t V, double scale_all, int64_t ignore_index,
                                    double ls, double z);
nc_status op_attention(float *out, float *lse, const float *q, const float *k, const float *v, const nc_cuda_attn *g);
nc_status op_attention_backward(float *gq, float *gk, float *gv, const float *out, const float *lse, const float *q,
                                const float *k, const float *v, const float *gout, const uint8_t *qkeep,
                                const nc_cuda_attn *g, float *dvec);
nc_status op_softmax(float *y, const float *x, int64_t rows, int64_t n, int32_t log);
nc_status op_softmax_backward(float *ga, const float *y, const float *g, int64_t rows, int64_t n, int32_t log);

}  // namespace nc_cu
#pragma GCC visibility pop

#endif
