/* kernels/cpu/elementwise_avx2.c — the flat elementwise kernels of elementwise.c compiled with
 * AVX2/FMA (the Makefile adds -mavx2 -mfma for *_avx2.c). elementwise.c stays the reference;
 * ISO C11 mode keeps GCC from contracting into FMAs, so the exact ops match it bit for bit. */
#define NC_KSUFFIX _avx2
#include "elementwise.c"
