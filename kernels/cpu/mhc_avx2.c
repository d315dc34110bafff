/* kernels/cpu/mhc_avx2.c — the mHC row kernels of mhc.c compiled with AVX2/FMA (the Makefile adds
 * -mavx2 -mfma for *_avx2.c). mhc.c itself stays the reference. */
#define NC_KSUFFIX _avx2
#include "mhc.c"
