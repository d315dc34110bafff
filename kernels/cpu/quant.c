/* kernels/cpu/quant.c — BitNet b1.58 fake quantizers (algorithms.md §1.1, §1.2).
 *
 * Promise: weight: gamma = max(mean|w|, eps) per group of group_size consecutive elements in
 * logical order (0 = whole tensor), out = gamma * clamp(round(w / gamma), -1, 1); activation:
 * per row s = 127 / max(max|x_row|, eps), out = clamp(round(x s), -128, 127) / s. Rounding is
 * half to even (nearbyintf under the default FE_TONEAREST mode), as in PyTorch. Sums run in
 * double over fixed chunks combined in a fixed order, so results do not depend on threads.
 * The straight-through backward is the identity and lives in Lua.
 * CUDA tensors run kernels/cuda/nn.cu: the same per-element operations (quant_act bit-identical;
 * the absmean sum is a double tree reduction, so gamma may differ from the CPU's in the last bit).
 */
#include "nn_common.h"
#include "simd_avx2.h"

/* Contiguous runs go through row kernels compiled twice (NC_KSUFFIX pattern, as norm.c): here as
 * the reference and from quant_avx2.c with AVX2. Both do the same IEEE operations per element
 * (divide or multiply, round half to even, clamp, multiply or divide) and max is exact, so the
 * AVX2 rows are bit-identical to the reference (spec/ops/quant_spec.lua checks it); the absmean
 * sums stay scalar double in a fixed order. */
#include "kvariant.h"

/* o = gamma * clamp(round(w / gamma), -1, 1) over n contiguous elements */
void KFN(nc_k_ternary_run)(float *o, const float *w, int64_t n, float gamma) {
    int64_t i = 0;
#if NC_SIMD_AVX2
    const __m256 g = _mm256_set1_ps(gamma), one = _mm256_set1_ps(1.0f), neg = _mm256_set1_ps(-1.0f);
    for (; i + 8 <= n; i += 8) {
        __m256 q = _mm256_round_ps(_mm256_div_ps(_mm256_loadu_ps(w + i), g), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        q = _mm256_max_ps(neg, _mm256_min_ps(one, q));   /* NaN stays NaN, as in the scalar clamp */
        _mm256_storeu_ps(o + i, _mm256_mul_ps(g, q));
    }
#endif
    for (; i < n; i++) {
        float q = nearbyintf(w[i] / gamma);
        q = q > 1.0f ? 1.0f : (q < -1.0f ? -1.0f : q);
        o[i] = gamma * q;
    }
}

/* max |x_j| over a contiguous row (exact: max does not round) */
float KFN(nc_k_absmax_run)(const float *x, int64_t n) {
    float m = 0.0f;
    int64_t j = 0;
#if NC_SIMD_AVX2
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 m0 = _mm256_setzero_ps(), m1 = m0;
    for (; j + 16 <= n; j += 16) {
        m0 = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(x + j)), m0);
        m1 = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(x + j + 8)), m1);
    }
    float t[8];
    _mm256_storeu_ps(t, _mm256_max_ps(m0, m1));
    for (int k = 0; k < 8; k++) m = t[k] > m ? t[k] : m;
#endif
    for (; j < n; j++) {
        float a = fabsf(x[j]);
        m = a > m ? a : m;
    }
    return m;
}

/* o = clamp(round(x s), -128, 127) / s over a contiguous row */
void KFN(nc_k_act_run)(float *o, const float *x, int64_t n, float s) {
    int64_t j = 0;
#if NC_SIMD_AVX2
    const __m256 sv = _mm256_set1_ps(s), hi = _mm256_set1_ps(127.0f), lo = _mm256_set1_ps(-128.0f);
    for (; j + 8 <= n; j += 8) {
        __m256 q = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + j), sv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        q = _mm256_max_ps(lo, _mm256_min_ps(hi, q));
        _mm256_storeu_ps(o + j, _mm256_div_ps(q, sv));
    }
#endif
    for (; j < n; j++) {
        float q = nearbyintf(x[j] * s);
        q = q > 127.0f ? 127.0f : (q < -128.0f ? -128.0f : q);
        o[j] = q / s;
    }
}

#ifdef NC_KPRIMARY
void nc_k_ternary_run_avx2(float *o, const float *w, int64_t n, float gamma);
float nc_k_absmax_run_avx2(const float *x, int64_t n);
void nc_k_act_run_avx2(float *o, const float *x, int64_t n, float s);

#define QCHUNK 65536   /* elements per partial sum of a per-tensor absmean */

static inline float w_at(const nc_tensor *w, const float *p, int contig, int64_t i) {
    return contig ? p[i] : p[nc_offset_of(w, i)];
}

nc_status nc_quant_weight_absmean(nc_tensor *out, nc_tensor *scale, const nc_tensor *w, int64_t group_size, double eps) {
    static const char *op = "quant_weight_absmean";
    int32_t dev = NC_DEV_OF(out, scale, w);
    NC_TRY(nc_check_f32_on(op, "w", w, dev));
    NC_TRY(nc_check_f32_on(op, "out", out, dev));
    NC_TRY(nc_check_contiguous(op, "out", out));
    NC_TRY(nc_check_same_shape(op, "out", out, "w", w));
    int64_t n = nc_tensor_numel(w);
    if (group_size < 0) return nc_fail(NC_ERR_ARG, "%s: expected group_size >= 0, got %lld", op, (long long)group_size);
    int64_t gs = group_size == 0 ? n : group_size;
    if (gs > 0 && n % gs) {
        char b[NC_DESC_LEN];
        return nc_fail(NC_ERR_SHAPE, "%s: group_size %lld does not divide the %lld elements of w %s", op,
                       (long long)group_size, (long long)n, nc_describe(w, b, sizeof b));
    }
    int64_t ngroups = gs > 0 ? n / gs : 0;
    if (group_size == 0) ngroups = 1;
    if (scale) {
        NC_TRY(nc_check_f32_on(op, "scale", scale, dev));
        NC_TRY(nc_check_contiguous(op, "scale", scale));
        if (nc_tensor_numel(scale) != ngroups) {
            char b[NC_DESC_LEN];
            return nc_fail(NC_ERR_SHAPE, "%s: expected scale with %lld elements (one per group), got %s", op,
                           (long long)ngroups, nc_describe(scale, b, sizeof b));
        }
    }
    if (dev == NC_CUDA) {
        const nc_cuda_api *cu = nc_cuda_for(op);
        if (!cu) return NC_ERR_DEVICE;
        if (n == 0) {
            nc_status st = scale && ngroups ? cu->fill(nc_f32p(scale), 1, NC_F32, (double)(float)eps) : NC_OK;
            return st == NC_OK ? NC_OK : nc_cuda_err(op, cu, st);
        }
        nc_tensor *tw, *ts = NULL;
        const nc_tensor *wc = nc_nn_contig(op, w, &tw);
        if (!scale) ts = nc_cuda_buffer(op, NC_F32, ngroups);
        nc_status st = NC_ERR_OOM;
        if (wc && (scale || ts)) {
            st = cu->quant_weight(nc_f32p(out), nc_f32p(scale ? scale : ts), nc_f32p(wc), n, group_size, eps);
            if (st != NC_OK) nc_cuda_err(op, cu, st);
        }
        nc_tensor_release(tw);
        nc_tensor_release(ts);
        return st;
    }
    if (n == 0) {
        if (scale && ngroups) *nc_f32p(scale) = (float)eps;
        return NC_OK;
    }
    const float *wp = nc_f32p(w);
    int contig = nc_tensor_is_contiguous(w);
    float *o = nc_f32p(out), *sc = scale ? nc_f32p(scale) : NULL;
    int par = n >= NC_PAR_MIN;
    if (group_size == 0) {
        int64_t nch = (n + QCHUNK - 1) / QCHUNK;
        double *part = nc_host_alloc(nch * (int64_t)sizeof(double));
        if (!part) return NC_ERR_OOM;
#pragma omp parallel for schedule(static) if (par && nch > 1) num_threads(nc_threads())
        for (int64_t c = 0; c < nch; c++) {
            int64_t i0 = c * QCHUNK, i1 = i0 + QCHUNK < n ? i0 + QCHUNK : n;
            double s = 0.0;
            for (int64_t i = i0; i < i1; i++) s += fabsf(w_at(w, wp, contig, i));
            part[c] = s;
        }
        double tot = 0.0;
        for (int64_t c = 0; c < nch; c++) tot += part[c];
        nc_host_free(part, nch * (int64_t)sizeof(double));
        double g = tot / (double)n;
        float gamma = (float)(g > eps ? g : eps);
        if (sc) sc[0] = gamma;
        if (contig) {
            void (*run)(float *, const float *, int64_t, float) = nc_cpu_avx2() ? nc_k_ternary_run_avx2 : nc_k_ternary_run_base;
#pragma omp parallel for schedule(static) if (par && nch > 1) num_threads(nc_threads())
            for (int64_t c = 0; c < nch; c++) {
                int64_t i0 = c * QCHUNK, i1 = i0 + QCHUNK < n ? i0 + QCHUNK : n;
                run(o + i0, wp + i0, i1 - i0, gamma);
            }
            return NC_OK;
        }
#pragma omp parallel for schedule(static) if (par) num_threads(nc_threads())
        for (int64_t i = 0; i < n; i++) {
            float q = nearbyintf(w_at(w, wp, contig, i) / gamma);
            q = q > 1.0f ? 1.0f : (q < -1.0f ? -1.0f : q);
            o[i] = gamma * q;
        }
        return NC_OK;
    }
#pragma omp parallel for schedule(static) if (par && ngroups > 1) num_threads(nc_threads())
    for (int64_t gi = 0; gi < ngroups; gi++) {
        int64_t i0 = gi * gs, i1 = i0 + gs;
        double s = 0.0;
        for (int64_t i = i0; i < i1; i++) s += fabsf(w_at(w, wp, contig, i));
        double g = s / (double)gs;
        float gamma = (float)(g > eps ? g : eps);
        if (sc) sc[gi] = gamma;
        if (contig) {
            (nc_cpu_avx2() ? nc_k_ternary_run_avx2 : nc_k_ternary_run_base)(o + i0, wp + i0, gs, gamma);
            continue;
        }
        for (int64_t i = i0; i < i1; i++) {
            float q = nearbyintf(w_at(w, wp, contig, i) / gamma);
            q = q > 1.0f ? 1.0f : (q < -1.0f ? -1.0f : q);
            o[i] = gamma * q;
        }
    }
    return NC_OK;
}

nc_status nc_quant_act_absmax(nc_tensor *out, nc_tensor *scale, const nc_tensor *x, double eps) {
    static const char *op = "quant_act_absmax";
    int32_t dev = NC_DEV_OF(out, scale, x);
    NC_TRY(nc_check_f32_on(op, "x", x, dev));
    if (x->ndim < 1) return nc_fail(NC_ERR_SHAPE, "%s: expected x (N, D) with at least 1 dim, got a scalar", op);
    NC_TRY(nc_check_f32_on(op, "out", out, dev));
    NC_TRY(nc_check_contiguous(op, "out", out));
    NC_TRY(nc_check_same_shape(op, "out", out, "x", x));
    int64_t rows = nc_rows_of(x), D = nc_last_dim(x), xs = nc_last_stride(x);
    if (scale) {
        NC_TRY(nc_check_f32_on(op, "scale", scale, dev));
        NC_TRY(nc_check_contiguous(op, "scale", scale));
        if (nc_tensor_numel(scale) != rows) {
            char b[NC_DESC_LEN];
            return nc_fail(NC_ERR_SHAPE, "%s: expected scale with %lld elements (one per row), got %s", op,
                           (long long)rows, nc_describe(scale, b, sizeof b));
        }
    }
    if (dev == NC_CUDA) {
        const nc_cuda_api *cu = nc_cuda_for(op);
        if (!cu) return NC_ERR_DEVICE;
        if (rows == 0) return NC_OK;
        nc_tensor *tx, *ts = NULL;
        const nc_tensor *xc = nc_nn_contig(op, x, &tx);
        if (!scale) ts = nc_cuda_buffer(op, NC_F32, rows);
        nc_status st = NC_ERR_OOM;
        if (xc && (scale || ts)) {
            st = cu->quant_act(nc_f32p(out), nc_f32p(scale ? scale : ts), nc_f32p(xc), rows, D, eps);
            if (st != NC_OK) nc_cuda_err(op, cu, st);
        }
        nc_tensor_release(tx);
        nc_tensor_release(ts);
        return st;
    }
    float *o = nc_f32p(out), *sc = scale ? nc_f32p(scale) : NULL;
    float feps = (float)eps;
#pragma omp parallel for schedule(static) if (rows * D >= NC_PAR_MIN && rows > 1) num_threads(nc_threads())
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = nc_f32p(x) + nc_row_offset(x, r);
        float *orow = o + r * D;
        if (xs == 1) {
            int avx = nc_cpu_avx2();
            float m = (avx ? nc_k_absmax_run_avx2 : nc_k_absmax_run_base)(xr, D);
            float s = 127.0f / (m > feps ? m : feps);
            if (sc) sc[r] = s;
            (avx ? nc_k_act_run_avx2 : nc_k_act_run_base)(orow, xr, D, s);
            continue;
        }
        float m = 0.0f;
        for (int64_t j = 0; j < D; j++) {
            float a = fabsf(xr[j * xs]);
            m = a > m ? a : m;
        }
        float s = 127.0f / (m > feps ? m : feps);
        if (sc) sc[r] = s;
        for (int64_t j = 0; j < D; j++) {
            float q = nearbyintf(xr[j * xs] * s);
            q = q > 127.0f ? 127.0f : (q < -128.0f ? -128.0f : q);
            orow[j] = q / s;
        }
    }
    return NC_OK;
}
#endif /* NC_KPRIMARY */
