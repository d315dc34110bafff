/* kernels/cpu/attention_avx512.c — the attention tile kernels of attention.c compiled with AVX-512F
 * (the Makefile adds -mavx512f -mavx2 -mfma for *_avx512.c): the same C, 16 lanes per vector, so a
 * 16-key score tile or a 64-float head-dim row is one / four zmm registers. Used when
 * nc_cpu_avx512() (NC_KERNEL=avx2 or scalar select the other builds). */
#define NC_KSUFFIX _avx512
#include "attention.c"
