/* core/philox.h — Philox-4x32-10 (Salmon et al., SC'11), the counter-based generator behind
 * nc_philox4x32 (core/tensor.c: randn / rand / dropout-style draws, the loader's shuffles) and the
 * CUDA optimizer's stochastic rounding (kernels/cuda/optim.cu). One definition, compiled for the
 * host by the C files and for the device by nvcc, so the two streams are bit-identical. */
#ifndef NC_PHILOX_H
#define NC_PHILOX_H
#include <stdint.h>

#ifdef __CUDACC__
#define NC_PHILOX_FN __host__ __device__ __forceinline__
#else
#define NC_PHILOX_FN static inline
#endif

NC_PHILOX_FN void nc_philox4x32_10(uint64_t seed, uint64_t counter, uint32_t out[4]) {
    uint32_t c0 = (uint32_t)counter, c1 = (uint32_t)(counter >> 32), c2 = 0, c3 = 0;
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    for (int r = 0; r < 10; r++) {
        uint64_t p0 = (uint64_t)0xD2511F53u * c0, p1 = (uint64_t)0xCD9E8D57u * c2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0, n1 = (uint32_t)p1;
        uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1, n3 = (uint32_t)p0;
        c0 = n0; c1 = n1; c2 = n2; c3 = n3;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

#endif
