/* kernels/cpu/softmax.c — softmax / log-softmax over the last dim, and their backward.
 *
 * Promise: rows are max-subtracted before exp (no overflow for any finite input); sums are
 * accumulated in f32 lanes of a fixed order, so results do not depend on the thread count.
 * This file is compiled twice: as itself (portable baseline, the reference) and from
 * softmax_avx2.c with AVX2/FMA enabled; nc_cpu_avx2() picks one at run time. The AVX2 build
 * takes hand-written paths (nc_exp256, FMA, four accumulators): pass 1 finds the row max, pass 2
 * writes exp(x - max) and sums it, pass 3 scales in place. A row up to L2 size is read from
 * memory once (passes 2-3 hit cache), so DRAM traffic is one read and one write per element
 * with one exp per element (an online max+sum pass would need two). These paths are checked
 * against float64 references with tolerances (spec/ops/simd_spec.lua).
 * CUDA tensors run the reference rows' formulas in kernels/cuda/nn.cu (sums in tree order).
 */
#include "nn_common.h"
#include "simd_avx2.h"
#include "sched.h"

#include "kvariant.h"

/* y (n) = softmax or log-softmax of x (n); contiguous rows */

/* tmp: NULL, or a scratch row of n floats; then y is written once, with streaming stores (the
 * caller issues the store fence). The reference build ignores tmp. */
void KFN(nc_k_softmax_row)(float *y, const float *x, int64_t n, int log, float *tmp) {
#if NC_SIMD_AVX2
    {
        float m = nc_rowmax_avx2(x, n);
        if (m == -INFINITY) m = 0.0f;
        int64_t j = 0;
        if (log) {
            float lse = m + logf(nc_rowexpsum_avx2(NULL, x, n, m));
            __m256 vl = _mm256_set1_ps(lse);
            if (tmp) {
                for (; j < n && ((uintptr_t)(y + j) & 31); j++) y[j] = x[j] - lse;
                for (; j + 8 <= n; j += 8) _mm256_stream_ps(y + j, _mm256_sub_ps(_mm256_loadu_ps(x + j), vl));
            } else {
                for (; j + 8 <= n; j += 8) _mm256_storeu_ps(y + j, _mm256_sub_ps(_mm256_loadu_ps(x + j), vl));
            }
            for (; j < n; j++) y[j] = x[j] - lse;
        } else {
            float *e = tmp ? tmp : y;
            float inv = 1.0f / nc_rowexpsum_avx2(e, x, n, m);
            __m256 vi = _mm256_set1_ps(inv);
            if (tmp) {
                for (; j < n && ((uintptr_t)(y + j) & 31); j++) y[j] = e[j] * inv;
                for (; j + 8 <= n; j += 8) _mm256_stream_ps(y + j, _mm256_mul_ps(_mm256_loadu_ps(e + j), vi));
            } else {
                for (; j + 8 <= n; j += 8) _mm256_storeu_ps(y + j, _mm256_mul_ps(_mm256_loadu_ps(y + j), vi));
            }
            for (; j < n; j++) y[j] = e[j] * inv;
        }
        return;
    }
#endif
    (void)tmp;
    float m = -INFINITY;
#pragma omp simd reduction(max : m)
    for (int64_t j = 0; j < n; j++) m = x[j] > m ? x[j] : m;
    if (m == -INFINITY) m = 0.0f;   /* all -inf row: avoid -inf - -inf; the result is NaN like torch */
    double s = 0.0;   /* double: rows of vocabulary length still sum to 1 within 1e-6 */
    if (log) {
#pragma omp simd reduction(+ : s)
        for (int64_t j = 0; j < n; j++) s += nc_expf_fast(x[j] - m);
        float lse = m + logf((float)s);
#pragma omp simd
        for (int64_t j = 0; j < n; j++) y[j] = x[j] - lse;
    } else {
#pragma omp simd reduction(+ : s)
        for (int64_t j = 0; j < n; j++) {
            float e = nc_expf_fast(x[j] - m);
            y[j] = e;
            s += e;
        }
        float inv = (float)(1.0 / s);
#pragma omp simd
        for (int64_t j = 0; j < n; j++) y[j] *= inv;
    }
}

/* ga (n) += backward of softmax (y = out) or log-softmax; contiguous rows */
void KFN(nc_k_softmax_backward_row)(float *ga, const float *y, const float *g, int64_t n, int log) {
#if NC_SIMD_AVX2
    {
        __m256 a0 = _mm256_setzero_ps(), a1 = a0;
        int64_t j = 0;
        if (log) {
            for (; j + 16 <= n; j += 16) {
                a0 = _mm256_add_ps(a0, _mm256_loadu_ps(g + j));
                a1 = _mm256_add_ps(a1, _mm256_loadu_ps(g + j + 8));
            }
        } else {
            for (; j + 16 <= n; j += 16) {
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(g + j), _mm256_loadu_ps(y + j), a0);
                a1 = _mm256_fmadd_ps(_mm256_loadu_ps(g + j + 8), _mm256_loadu_ps(y + j + 8), a1);
            }
        }
        float s = nc_hsum256(_mm256_add_ps(a0, a1));
        for (; j < n; j++) s += log ? g[j] : g[j] * y[j];
        __m256 vs = _mm256_set1_ps(s);
        j = 0;
        if (log) {
            for (; j + 8 <= n; j += 8) {
                __m256 e = nc_exp256_le(_mm256_loadu_ps(y + j));
                __m256 r = _mm256_fnmadd_ps(e, vs, _mm256_add_ps(_mm256_loadu_ps(ga + j), _mm256_loadu_ps(g + j)));
                _mm256_storeu_ps(ga + j, r);
            }
            for (; j < n; j++) ga[j] += g[j] - nc_expf_fast(y[j]) * s;
        } else {
            for (; j + 8 <= n; j += 8) {
                __m256 yy = _mm256_loadu_ps(y + j);
                __m256 d = _mm256_sub_ps(_mm256_loadu_ps(g + j), vs);
                _mm256_storeu_ps(ga + j, _mm256_fmadd_ps(yy, d, _mm256_loadu_ps(ga + j)));
            }
            for (; j < n; j++) ga[j] += y[j] * (g[j] - s);
        }
        return;
    }
#endif
    float s = 0.0f;
    if (log) {
#pragma omp simd reduction(+ : s)
        for (int64_t j = 0; j < n; j++) s += g[j];
#pragma omp simd
        for (int64_t j = 0; j < n; j++) ga[j] += g[j] - nc_expf_fast(y[j]) * s;
    } else {
#pragma omp simd reduction(+ : s)
        for (int64_t j = 0; j < n; j++) s += g[j] * y[j];
#pragma omp simd
        for (int64_t j = 0; j < n; j++) ga[j] += y[j] * (g[j] - s);
    }
}

#ifdef NC_KPRIMARY
void nc_k_softmax_row_avx2(float *y, const float *x, int64_t n, int log, float *tmp);
void nc_k_softmax_row_avx512(float *y, const float *x, int64_t n, int log, float *tmp, const float *next,
                             const float *next2, const float *xmax, float *next_max);   /* act_avx512.c */
void nc_k_softmax_backward_row_avx2(float *ga, const float *y, const float *g, int64_t n, int log);

/* Pointer to row r of t as a contiguous float row: t's own memory when its last dim has unit
 * stride, else a gather into buf. */
static const float *row_in(const nc_tensor *t, int64_t r, float *buf) {
    const float *p = nc_f32p(t) + nc_row_offset(t, r);
    int64_t n = nc_last_dim(t), st = nc_last_stride(t);
    if (st == 1) return p;
    for (int64_t j = 0; j < n; j++) buf[j] = p[j * st];
    return buf;
}

nc_status nc_softmax(nc_tensor *out, const nc_tensor *a, int32_t log) {
    static const char *op = "softmax";
    int32_t dev = NC_DEV_OF(out, a);
    NC_TRY(nc_check_f32_on(op, "a", a, dev));
    NC_TRY(nc_check_f32_on(op, "out", out, dev));
    NC_TRY(nc_check_contiguous(op, "out", out));
    NC_TRY(nc_check_same_shape(op, "out", out, "a", a));
    if (a->ndim < 1) return nc_fail(NC_ERR_SHAPE, "%s: expected a tensor with at least 1 dim, got a scalar", op);
    int64_t rows = nc_rows_of(a), n = nc_last_dim(a);
    if (dev == NC_CUDA) {
        const nc_cuda_api *cu = nc_cuda_for(op);
        if (!cu) return NC_ERR_DEVICE;
        if (rows == 0 || n == 0) return NC_OK;
        nc_tensor *ta;
        const nc_tensor *ac = nc_nn_contig(op, a, &ta);
        nc_status st = ac ? cu->softmax(nc_f32p(out), nc_f32p(ac), rows, n, log) : NC_ERR_OOM;
        if (ac && st != NC_OK) nc_cuda_err(op, cu, st);
        nc_tensor_release(ta);
        return st;
    }
    if (rows == 0 || n == 0) return NC_OK;
    int avx2 = nc_cpu_avx2(), avx512 = nc_cpu_avx512();
    void (*row)(float *, const float *, int64_t, int, float *) = avx2 ? nc_k_softmax_row_avx2 : nc_k_softmax_row_base;
    float *y = nc_f32p(out);
    int need_buf = nc_last_stride(a) != 1;
    /* large outputs: streaming stores through a per-thread scratch row (second half of buf) */
    int nt = avx2 && rows * n * (int64_t)sizeof(float) >= nc_nt_bytes();
    int64_t nbuf = (need_buf ? n : 0) + (nt ? n : 0);
    int64_t rch = nc_dyn_chunk(rows, 1, 65536 / n > 1 ? 65536 / n : 1);   /* rows per chunk: <= 256 KiB */
    int oom = 0;
#pragma omp parallel if (rows * n >= NC_PAR_MIN && rows > 1) num_threads(nc_threads())
    {
        float *buf = nbuf ? nc_host_alloc(nbuf * (int64_t)sizeof(float)) : NULL;
        if (nbuf && !buf) {
#pragma omp atomic write
            oom = 1;
        } else {
            float *tmp = nt ? buf + (need_buf ? n : 0) : NULL;
            if (avx512) {   /* the AVX-512 rows prefetch the next row of contiguous input and find its max */
                int64_t carried_for = -1;   /* the row whose max this thread's last call left in carried */
                float carried = 0.0f;
#pragma omp for schedule(dynamic, rch)
                for (int64_t r = 0; r < rows; r++) {
                    const float *next = !need_buf && r + 1 < rows ? nc_f32p(a) + nc_row_offset(a, r + 1) : NULL;
                    const float *next2 = next && r + 2 < rows ? nc_f32p(a) + nc_row_offset(a, r + 2) : NULL;
                    float xm = carried;
                    nc_k_softmax_row_avx512(y + r * n, row_in(a, r, buf), n, log, tmp, next, next2,
                                            carried_for == r ? &xm : NULL, &carried);
                    carried_for = next ? r + 1 : -1;
                }
            } else {
#pragma omp for schedule(dynamic, rch)
                for (int64_t r = 0; r < rows; r++) row(y + r * n, row_in(a, r, buf), n, log, tmp);
            }
#if defined(__SSE2__)
            if (nt) __builtin_ia32_sfence();
#endif
        }
        nc_host_free(buf, nbuf * (int64_t)sizeof(float));
    }
    if (oom) return nc_fail(NC_ERR_OOM, "%s: out of memory for a row buffer of %lld floats", op, (long long)n);
    return NC_OK;
}

nc_status nc_softmax_backward(nc_tensor *ga, const nc_tensor *out, const nc_tensor *gout, int32_t log) {
    static const char *op = "softmax_backward";
    if (!ga) return NC_OK;
    int32_t dev = NC_DEV_OF(ga, out, gout);
    NC_TRY(nc_check_f32_on(op, "ga", ga, dev));
    NC_TRY(nc_check_f32_on(op, "out", out, dev));
    NC_TRY(nc_check_f32_on(op, "gout", gout, dev));
    NC_TRY(nc_check_contiguous(op, "ga", ga));
    NC_TRY(nc_check_same_shape(op, "ga", ga, "out", out));
    NC_TRY(nc_check_same_shape(op, "gout", gout, "out", out));
    if (out->ndim < 1) return nc_fail(NC_ERR_SHAPE, "%s: expected a tensor with at least 1 dim, got a scalar", op);
    int64_t rows = nc_rows_of(out), n = nc_last_dim(out);
    if (dev == NC_CUDA) {
        const nc_cuda_api *cu = nc_cuda_for(op);
        if (!cu) return NC_ERR_DEVICE;
        if (rows == 0 || n == 0) return NC_OK;
        nc_tensor *ty, *tg;
        const nc_tensor *yc = nc_nn_contig(op, out, &ty), *gc = nc_nn_contig(op, gout, &tg);
        nc_status st = yc && gc ? cu->softmax_backward(nc_f32p(ga), nc_f32p(yc), nc_f32p(gc), rows, n, log) : NC_ERR_OOM;
        if (yc && gc && st != NC_OK) nc_cuda_err(op, cu, st);
        nc_tensor_release(ty);
        nc_tensor_release(tg);
        return st;
    }
    if (rows == 0 || n == 0) return NC_OK;
    void (*row)(float *, const float *, const float *, int64_t, int) =
        nc_cpu_avx2() ? nc_k_softmax_backward_row_avx2 : nc_k_softmax_backward_row_base;
    float *g = nc_f32p(ga);
    int need_buf = nc_last_stride(out) != 1 || nc_last_stride(gout) != 1;
    int oom = 0;
#pragma omp parallel if (rows * n >= NC_PAR_MIN && rows > 1) num_threads(nc_threads())
    {
        float *buf = need_buf ? nc_host_alloc(2 * n * (int64_t)sizeof(float)) : NULL;
        if (need_buf && !buf) {
#pragma omp atomic write
            oom = 1;
        } else {
#pragma omp for schedule(static)
            for (int64_t r = 0; r < rows; r++)
                row(g + r * n, row_in(out, r, buf), row_in(gout, r, buf ? buf + n : NULL), n, log);
        }
        nc_host_free(buf, 2 * n * (int64_t)sizeof(float));
    }
    if (oom) return nc_fail(NC_ERR_OOM, "%s: out of memory for a row buffer of %lld floats", op, (long long)n);
    return NC_OK;
}
#endif
