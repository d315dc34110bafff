/* kernels/cpu/optim_avx512.c — AVX-512 builds of the optimizers' memory-bound elementwise loops
 * (today: AdamW's update, nc_adamw_step), selected at run time by nc_cpu_avx512().
 *
 * Promise: bitwise the baseline loops of optim.c. Both compile the same adam_elem
 * (optim_internal.h); this file is built with AVX512FLAGS (-mfma among them), so FMA contraction is
 * switched off here: vector mul, add, div and sqrt round exactly like their scalar forms, and the
 * results are those of the baseline build (spec/optim/adamw_spec.lua compares the two bit for
 * bit). Why: the baseline x86-64 build vectorizes this loop 4-wide (SSE) and is compute-bound
 * (division and square root): 4.2M parameters took ~13 ms on 2 Zen 4 threads, ~3x what streaming
 * their 28 bytes each costs.
 */
#pragma GCC optimize("-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off")

#include "optim_internal.h"

#include <immintrin.h>
#include <omp.h>

/* elements [lo, hi): adam_elem and the update, 16 lanes at a time (the same operations in the
 * same order, each rounded: mul, add, sqrt, div; masked tail) */
static void adamw_run(float *P, const float *G, float *M, float *V, int64_t lo, int64_t hi, const nc_adam_c *c,
                      float decay, float lr) {
    const __m512 b1 = _mm512_set1_ps(c->b1), b2 = _mm512_set1_ps(c->b2), eps = _mm512_set1_ps(c->eps);
    const __m512 o1 = _mm512_set1_ps(1.0f - c->b1), o2 = _mm512_set1_ps(1.0f - c->b2);
    const __m512 coef = _mm512_set1_ps(c->coef), bc2s = _mm512_set1_ps(c->bc2s);
    const __m512 dec = _mm512_set1_ps(decay), lrv = _mm512_set1_ps(lr);
    for (int64_t i = lo; i < hi; i += 16) {
        __mmask16 k = hi - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (hi - i)) - 1);
        __m512 g = _mm512_maskz_loadu_ps(k, G + i), m = _mm512_maskz_loadu_ps(k, M + i);
        __m512 v = _mm512_maskz_loadu_ps(k, V + i), p = _mm512_maskz_loadu_ps(k, P + i);
        __m512 mi = _mm512_add_ps(_mm512_mul_ps(b1, m), _mm512_mul_ps(o1, g));
        __m512 vi = _mm512_add_ps(_mm512_mul_ps(b2, v), _mm512_mul_ps(o2, _mm512_mul_ps(g, g)));
        __m512 s = _mm512_sqrt_ps(vi);
        __m512 den = c->galore ? _mm512_add_ps(s, eps) : _mm512_add_ps(_mm512_div_ps(s, bc2s), eps);
        __m512 d = _mm512_mul_ps(coef, _mm512_div_ps(mi, den));
        p = _mm512_sub_ps(_mm512_mul_ps(p, dec), _mm512_mul_ps(lrv, d));
        _mm512_mask_storeu_ps(M + i, k, mi);
        _mm512_mask_storeu_ps(V + i, k, vi);
        _mm512_mask_storeu_ps(P + i, k, p);
    }
}

void nc_optim_adamw_avx512(float *P, const float *G, float *M, float *V, int64_t n, const nc_adam_c *cp, float decay,
                           float lr) {
    nc_adam_c c = *cp;
    int nt = n >= NC_PAR_MIN ? nc_threads() : 1;
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        /* static split in 16-element units (the baseline loop's schedule(static) split differs,
         * but every element's value is the same either way) */
        int64_t units = (n + 15) / 16, t = omp_get_thread_num(), k = omp_get_num_threads();
        int64_t lo = units * t / k * 16, hi = units * (t + 1) / k * 16;
        if (hi > n) hi = n;
        if (lo < hi) {
            adamw_run(P, G, M, V, lo, hi, &c, decay, lr);
        }
    }
}
