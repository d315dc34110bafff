/* kernels/cpu/loss_avx2.c — the cross-entropy row kernels of loss.c compiled with AVX2/FMA
 * (the Makefile adds -mavx2 -mfma for *_avx2.c). loss.c itself stays the reference. */
#define NC_KSUFFIX _avx2
#include "loss.c"
