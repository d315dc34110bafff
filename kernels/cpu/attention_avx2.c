/* kernels/cpu/attention_avx2.c — the attention tile kernels of attention.c compiled with AVX2/FMA
 * (the Makefile adds -mavx2 -mfma for *_avx2.c). attention.c itself stays the reference. */
#define NC_KSUFFIX _avx2
#include "attention.c"
