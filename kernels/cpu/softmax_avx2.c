/* kernels/cpu/softmax_avx2.c — the softmax row kernels of softmax.c compiled with AVX2/FMA
 * (the Makefile adds -mavx2 -mfma for *_avx2.c). softmax.c itself stays the reference. */
#define NC_KSUFFIX _avx2
#include "softmax.c"
