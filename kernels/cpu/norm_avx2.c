/* kernels/cpu/norm_avx2.c — the RMSNorm row kernels of norm.c compiled with AVX2/FMA (the
 * Makefile adds -mavx2 -mfma for *_avx2.c). norm.c itself stays the reference. */
#define NC_KSUFFIX _avx2
#include "norm.c"
