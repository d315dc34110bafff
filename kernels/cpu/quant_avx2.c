/* kernels/cpu/quant_avx2.c — the quantizer row kernels of quant.c compiled with AVX2 (the
 * Makefile adds -mavx2 -mfma for *_avx2.c); bit-identical to quant.c's reference rows. */
#define NC_KSUFFIX _avx2
#include "quant.c"
