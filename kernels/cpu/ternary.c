/* kernels/cpu/ternary.c — packed ternary linear layers: packing, int8 activation quantization,
 * the scalar reference GEMV/GEMM and the runtime dispatch to kernels/cpu/ternary_avx2.c.
 *
 * Promise (layout "i2b128", documented in core/nanochat.h): 2 bits per weight, code c = t + 1,
 * 32-byte blocks of 128 weights read directly by the inner loop; K is padded to a multiple of 128
 * with t = 0 weights and q = 0 activations, so any K works. Scales are the training quantizer's:
 * packing calls nc_quant_weight_absmean itself and never re-derives gamma from quantized values;
 * activation quantization uses the exact float operations of nc_quant_act_absmax (same q, same s).
 * Integer sums are exact (no saturation: AVX2 int16 lanes widen to int32 every 8 blocks; the
 * AVX-512 VNNI kernel, ternary_vnni.c, adds into int32 lanes), so the fast kernels and this scalar
 * reference give bit-identical outputs; the epilogue y = (float)isum * (1.0f / s) * gamma is
 * evaluated with the same float operations in all of them. Row kernel: VNNI when nc_cpu_vnni512()
 * (kernel "avx512" + the CPU features), else AVX2 when nc_cpu_avx2(), else scalar.
 */
#include "nn_common.h"
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define TB NC_TERNARY_BLOCK

/* the AVX2 kernels (ternary_avx2.c): rows [n0, n1) of y (M, N) */
void nc_k_ternary_gemm_avx2(float *y, int64_t M, int64_t N, const int8_t *q, const float *act_inv,
                            const int32_t *act_sum, const uint8_t *w, const float *gamma, int64_t kp,
                            int64_t n0, int64_t n1);

/* the AVX-512 VNNI kernel (ternary_vnni.c), same contract */
void nc_k_ternary_gemm_vnni(float *y, int64_t M, int64_t N, const int8_t *q, const float *act_inv,
                            const int32_t *act_sum, const uint8_t *w, const float *gamma, int64_t kp,
                            int64_t n0, int64_t n1);

int32_t nc_k_ternary_quant_row_avx2(int8_t *q, float *s_out, const float *x, int64_t k, int64_t kp, float eps);

int32_t nc_k_ternary_quant_row(int8_t *qr, float *s_out, const float *xr, int64_t xs, int64_t k, int64_t kp, float feps,
                               int avx2);

int64_t nc_ternary_kpad(int64_t k) { return (k + TB - 1) / TB * TB; }

static inline uint8_t code_at(const uint8_t *row, int64_t k) {
    int64_t b = k / TB, r = k % TB;
    return (uint8_t)((row[b * 32 + (r & 31)] >> (2 * (r >> 5))) & 3);
}

/* writes the packed row of ternary values t (int8 in {-1,0,1}, length k) */
static void pack_row(uint8_t *dst, const int8_t *t, int64_t k, int64_t kp) {
    memset(dst, 0, (size_t)(kp / 4));
    for (int64_t i = 0; i < kp; i++) {
        int c = i < k ? t[i] + 1 : 1;
        int64_t b = i / TB, r = i % TB;
        dst[b * 32 + (r & 31)] |= (uint8_t)(c << (2 * (r >> 5)));
    }
}

static nc_status check_packed(const char *op, const nc_tensor *p, int64_t n, int64_t kp) {
    NC_TRY(nc_check_dtype(op, "packed", p, NC_U8));
    NC_TRY(nc_check_cpu(op, "packed", p));
    NC_TRY(nc_check_contiguous(op, "packed", p));
    int64_t want[2] = {n, kp / 4};
    return nc_check_shape(op, "packed", p, 2, want);
}

nc_status nc_ternary_pack(nc_tensor *packed, nc_tensor *row_scale, const nc_tensor *w, int64_t group_size, double eps) {
    static const char *op = "ternary_pack";
    NC_TRY(nc_check_f32_cpu(op, "w", w));
    NC_TRY(nc_check_ndim(op, "w", w, 2));
    int64_t n = w->shape[0], k = w->shape[1], kp = nc_ternary_kpad(k);
    NC_TRY(check_packed(op, packed, n, kp));
    NC_TRY(nc_check_f32_cpu(op, "row_scale", row_scale));
    NC_TRY(nc_check_contiguous(op, "row_scale", row_scale));
    int64_t ws[1] = {n};
    NC_TRY(nc_check_shape(op, "row_scale", row_scale, 1, ws));
    if (group_size < 0 || (group_size > 0 && (k == 0 || group_size % k)))
        return nc_fail(NC_ERR_UNSUPPORTED,
                       "%s: group_size %lld splits rows of %lld weights; packed kernels need group_size 0 "
                       "(per tensor) or a multiple of in_features (whole rows)",
                       op, (long long)group_size, (long long)k);
    if (n == 0) return NC_OK;
    int64_t ng = group_size == 0 ? 1 : n * k / group_size;
    int64_t shp[2] = {n, k}, gshp[1] = {ng};
    nc_tensor *fq = nc_tensor_new(NC_F32, NC_CPU, 2, shp);
    nc_tensor *gs = nc_tensor_new(NC_F32, NC_CPU, 1, gshp);
    int8_t *t = nc_host_alloc(k > 0 ? k : 1);
    nc_status st = (!fq || !gs || !t) ? NC_ERR_OOM : nc_quant_weight_absmean(fq, gs, w, group_size, eps);
    if (st == NC_OK) {
        const float *f = nc_f32p(fq), *g = nc_f32p(gs);
        float *rs = nc_f32p(row_scale);
        uint8_t *pk = nc_tensor_data(packed);
        int64_t rows_per_group = group_size == 0 ? n : group_size / k;
        for (int64_t r = 0; r < n; r++) {
            /* out = gamma * t exactly, gamma > 0: the sign is t */
            for (int64_t i = 0; i < k; i++) {
                float v = f[r * k + i];
                t[i] = (int8_t)((v > 0.0f) - (v < 0.0f));
            }
            pack_row(pk + r * (kp / 4), t, k, kp);
            rs[r] = g[r / rows_per_group];
        }
    }
    if (t) nc_host_free(t, k > 0 ? k : 1);
    if (fq) nc_tensor_release(fq);
    if (gs) nc_tensor_release(gs);
    return st;
}

nc_status nc_ternary_pack_values(nc_tensor *packed, const nc_tensor *tv) {
    static const char *op = "ternary_pack_values";
    NC_TRY(nc_check_not_null(op, "t", tv));
    NC_TRY(nc_check_cpu(op, "t", tv));
    NC_TRY(nc_check_ndim(op, "t", tv, 2));
    if (tv->dtype != NC_F32 && tv->dtype != NC_I8) {
        char b[NC_DESC_LEN];
        return nc_fail(NC_ERR_DTYPE, "%s: expected t f32 or i8 with values in {-1, 0, 1}, got %s", op,
                       nc_describe(tv, b, sizeof b));
    }
    int64_t n = tv->shape[0], k = tv->shape[1], kp = nc_ternary_kpad(k);
    NC_TRY(check_packed(op, packed, n, kp));
    int8_t *t = nc_host_alloc(k > 0 ? k : 1);
    if (!t) return NC_ERR_OOM;
    const char *base = (const char *)tv->storage->data;
    uint8_t *pk = nc_tensor_data(packed);
    nc_status st = NC_OK;
    for (int64_t r = 0; r < n && st == NC_OK; r++) {
        for (int64_t i = 0; i < k; i++) {
            int64_t off = tv->offset + r * tv->strides[0] + i * tv->strides[1];
            double v = tv->dtype == NC_F32 ? ((const float *)base)[off] : ((const int8_t *)base)[off];
            if (v != -1.0 && v != 0.0 && v != 1.0) {
                st = nc_fail(NC_ERR_ARG, "%s: t[%lld, %lld] = %g is not in {-1, 0, 1}", op, (long long)r,
                             (long long)i, v);
                break;
            }
            t[i] = (int8_t)v;
        }
        if (st == NC_OK) pack_row(pk + r * (kp / 4), t, k, kp);
    }
    nc_host_free(t, k > 0 ? k : 1);
    return st;
}

nc_status nc_ternary_unpack(nc_tensor *tv, const nc_tensor *packed) {
    static const char *op = "ternary_unpack";
    NC_TRY(nc_check_f32_cpu(op, "t", tv));
    NC_TRY(nc_check_contiguous(op, "t", tv));
    NC_TRY(nc_check_ndim(op, "t", tv, 2));
    int64_t n = tv->shape[0], k = tv->shape[1], kp = nc_ternary_kpad(k);
    NC_TRY(check_packed(op, packed, n, kp));
    const uint8_t *pk = nc_tensor_data(packed);
    float *o = nc_f32p(tv);
    for (int64_t r = 0; r < n; r++) {
        const uint8_t *row = pk + r * (kp / 4);
        for (int64_t i = 0; i < k; i++) {
            uint8_t c = code_at(row, i);
            if (c > 2)
                return nc_fail(NC_ERR_FORMAT, "%s: invalid 2-bit code 3 at row %lld, column %lld", op,
                               (long long)r, (long long)i);
            o[r * k + i] = (float)c - 1.0f;
        }
    }
    return NC_OK;
}

nc_status nc_ternary_quant_act(nc_tensor *q, nc_tensor *scale, nc_tensor *sum, const nc_tensor *x, double eps) {
    static const char *op = "ternary_quant_act";
    NC_TRY(nc_check_f32_cpu(op, "x", x));
    if (x->ndim < 1 || x->ndim > 2) {
        char b[NC_DESC_LEN];
        return nc_fail(NC_ERR_SHAPE, "%s: expected x (M, K) or (K), got %s", op, nc_describe(x, b, sizeof b));
    }
    int64_t m = nc_rows_of(x), k = nc_last_dim(x), kp = nc_ternary_kpad(k), xs = nc_last_stride(x);
    NC_TRY(nc_check_dtype(op, "q", q, NC_I8));
    NC_TRY(nc_check_cpu(op, "q", q));
    NC_TRY(nc_check_contiguous(op, "q", q));
    int64_t qs[2] = {m, kp}, ms[1] = {m};
    NC_TRY(nc_check_shape(op, "q", q, 2, qs));
    NC_TRY(nc_check_f32_cpu(op, "scale", scale));
    NC_TRY(nc_check_contiguous(op, "scale", scale));
    NC_TRY(nc_check_shape(op, "scale", scale, 1, ms));
    NC_TRY(nc_check_dtype(op, "sum", sum, NC_I32));
    NC_TRY(nc_check_cpu(op, "sum", sum));
    NC_TRY(nc_check_contiguous(op, "sum", sum));
    NC_TRY(nc_check_shape(op, "sum", sum, 1, ms));
    int8_t *qp = nc_tensor_data(q);
    float *sp = nc_f32p(scale);
    int32_t *sm = nc_tensor_data(sum);
    float feps = (float)eps;
    int avx2 = nc_cpu_avx2();
#pragma omp parallel for schedule(static) if (m * k >= NC_PAR_MIN && m > 1) num_threads(nc_threads())
    for (int64_t r = 0; r < m; r++) {
        const float *xr = nc_f32p(x) + nc_row_offset(x, r);
        sm[r] = nc_k_ternary_quant_row(qp + r * kp, &sp[r], xr, xs, k, kp, feps, avx2);
    }
    return NC_OK;
}

/* one row (element stride xs) -> codes, s, returns sum(q): exactly nc_quant_act_absmax's
 * operations (the AVX2 row kernel, used for contiguous rows, gives the same bits); shared with the
 * fused decode step (engine.c) */
int32_t nc_k_ternary_quant_row(int8_t *qr, float *s_out, const float *xr, int64_t xs, int64_t k, int64_t kp, float feps,
                               int avx2) {
    if (avx2 && xs == 1) return nc_k_ternary_quant_row_avx2(qr, s_out, xr, k, kp, feps);
    float mx = 0.0f;
    for (int64_t j = 0; j < k; j++) {
        float a = fabsf(xr[j * xs]);
        mx = a > mx ? a : mx;
    }
    float s = 127.0f / (mx > feps ? mx : feps);
    *s_out = s;
    int32_t acc = 0;
    for (int64_t j = 0; j < k; j++) {
        float v = nearbyintf(xr[j * xs] * s);
        v = v > 127.0f ? 127.0f : (v < -128.0f ? -128.0f : v);
        qr[j] = (int8_t)v;
        acc += (int32_t)v;
    }
    for (int64_t j = k; j < kp; j++) qr[j] = 0;
    return acc;
}

/* scalar reference: rows [n0, n1) of y (M, N) */
static void gemm_scalar(float *y, int64_t M, int64_t N, const int8_t *q, const float *act_inv,
                        const int32_t *act_sum, const uint8_t *w, const float *gamma, int64_t kp,
                        int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; n++) {
        const uint8_t *row = w + n * (kp / 4);
        for (int64_t m = 0; m < M; m++) {
            const int8_t *qr = q + m * kp;
            int32_t acc = 0;
            for (int64_t b = 0; b < kp / TB; b++)
                for (int g = 0; g < 4; g++)
                    for (int j = 0; j < 32; j++)
                        acc += (int32_t)((row[b * 32 + j] >> (2 * g)) & 3) * qr[b * TB + g * 32 + j];
            int32_t isum = acc - act_sum[m];
            y[m * N + n] = (float)isum * act_inv[m] * gamma[n];
        }
    }
}

/* rows [n0, n1) of y (M, N) with the VNNI or AVX2 kernel or the scalar reference (also engine.c's
 * row kernel): avx2 = 0 is the scalar reference; otherwise the VNNI kernel when the "avx512"
 * selection and the CPU allow it, else AVX2 */
void nc_k_ternary_rows(float *y, int64_t M, int64_t N, const int8_t *q, const float *act_inv, const int32_t *act_sum,
                       const uint8_t *w, const float *gamma, int64_t kp, int64_t n0, int64_t n1, int avx2) {
    if (avx2 && nc_cpu_vnni512()) nc_k_ternary_gemm_vnni(y, M, N, q, act_inv, act_sum, w, gamma, kp, n0, n1);
    else if (avx2) nc_k_ternary_gemm_avx2(y, M, N, q, act_inv, act_sum, w, gamma, kp, n0, n1);
    else gemm_scalar(y, M, N, q, act_inv, act_sum, w, gamma, kp, n0, n1);
}

const char *nc_ternary_kernel_name(void) {
    return nc_cpu_vnni512() ? "avx512vnni" : nc_cpu_avx2() ? "avx2" : "scalar";
}

/* t: a contiguous f32 cpu vector of n elements (scales, sums' companions) */
static nc_status check_f32_vec(const char *op, const char *name, const nc_tensor *t, int64_t n) {
    NC_TRY(nc_check_f32_cpu(op, name, t));
    NC_TRY(nc_check_contiguous(op, name, t));
    return nc_check_shape(op, name, t, 1, &n);
}

/* y: a contiguous f32 cpu (M, N) output */
static nc_status check_out(const char *op, const nc_tensor *y, int64_t M, int64_t N) {
    int64_t ys[2] = {M, N};
    NC_TRY(nc_check_f32_cpu(op, "y", y));
    NC_TRY(nc_check_contiguous(op, "y", y));
    return nc_check_shape(op, "y", y, 2, ys);
}

static nc_status check_matmul(const char *op, const nc_tensor *y, const nc_tensor *q, const nc_tensor *act_scale,
                              const nc_tensor *act_sum, const nc_tensor *packed, const nc_tensor *row_scale) {
    NC_TRY(nc_check_dtype(op, "q", q, NC_I8));
    NC_TRY(nc_check_cpu(op, "q", q));
    NC_TRY(nc_check_contiguous(op, "q", q));
    NC_TRY(nc_check_ndim(op, "q", q, 2));
    int64_t M = q->shape[0], kp = q->shape[1];
    if (kp % TB) return nc_fail(NC_ERR_SHAPE, "%s: q's last dim %lld is not a multiple of %d (use nc_ternary_quant_act)",
                                op, (long long)kp, TB);
    NC_TRY(nc_check_dtype(op, "packed", packed, NC_U8));
    NC_TRY(nc_check_ndim(op, "packed", packed, 2));
    int64_t N = packed->shape[0];
    NC_TRY(check_packed(op, packed, N, kp));
    int64_t ms[1] = {M};
    NC_TRY(check_f32_vec(op, "act_scale", act_scale, M));
    NC_TRY(nc_check_dtype(op, "act_sum", act_sum, NC_I32));
    NC_TRY(nc_check_contiguous(op, "act_sum", act_sum));
    NC_TRY(nc_check_shape(op, "act_sum", act_sum, 1, ms));
    NC_TRY(check_f32_vec(op, "row_scale", row_scale, N));
    return check_out(op, y, M, N);
}

/* rows [n0, n1) on the calling thread; inv = 1/s per activation row */
static void run_rows(nc_tensor *y, const nc_tensor *q, const float *inv, const nc_tensor *act_sum,
                     const nc_tensor *packed, const nc_tensor *row_scale, int avx2, int64_t n0, int64_t n1) {
    int64_t M = q->shape[0], kp = q->shape[1], N = packed->shape[0];
    float *yp = nc_f32p(y);
    const int8_t *qp = nc_tensor_data(q);
    const int32_t *sum = nc_tensor_data(act_sum);
    const uint8_t *wp = nc_tensor_data(packed);
    nc_k_ternary_rows(yp, M, N, qp, inv, sum, wp, nc_f32p(row_scale), kp, n0, n1, avx2);
}

/* 1 / s per activation row into a stack buffer (M <= 64) or a host allocation; free with inv_free */
static float *inv_scales(const nc_tensor *act_scale, int64_t M, float *stack) {
    float *inv = M <= 64 ? stack : nc_host_alloc(M * (int64_t)sizeof(float));
    if (!inv) return NULL;
    const float *s = nc_f32p(act_scale);
    for (int64_t m = 0; m < M; m++) inv[m] = 1.0f / s[m];
    return inv;
}
static void inv_free(float *inv, const float *stack, int64_t M) {
    if (inv != stack) nc_host_free(inv, M * (int64_t)sizeof(float));
}

nc_status nc_ternary_matmul_rows(nc_tensor *y, const nc_tensor *q, const nc_tensor *act_scale, const nc_tensor *act_sum,
                                 const nc_tensor *packed, const nc_tensor *row_scale, int64_t n0, int64_t n1) {
    static const char *op = "ternary_matmul_rows";
    NC_TRY(check_matmul(op, y, q, act_scale, act_sum, packed, row_scale));
    int64_t M = q->shape[0], N = packed->shape[0];
    if (n0 < 0 || n1 > N || n0 > n1)
        return nc_fail(NC_ERR_INDEX, "%s: row range [%lld, %lld) is not inside [0, %lld)", op, (long long)n0,
                       (long long)n1, (long long)N);
    if (M == 0 || n0 == n1) return NC_OK;
    float stack[64];
    float *inv = inv_scales(act_scale, M, stack);
    if (!inv) return NC_ERR_OOM;
    run_rows(y, q, inv, act_sum, packed, row_scale, nc_cpu_avx2(), n0, n1);
    inv_free(inv, stack, M);
    return NC_OK;
}

/* run fn(ctx, n0, n1) over the N output rows split across the threads in 16-row chunks (whole
 * 4-row groups); small products stay serial because an OpenMP fork costs about as much as 100k
 * weights of GEMV */
typedef void (*rows_fn)(void *ctx, int64_t n0, int64_t n1);
static void par_rows(int64_t N, int64_t work, rows_fn fn, void *ctx) {
    int nt = nc_threads();
    if (work < 131072 || N < 32) nt = 1;
    int64_t chunks = (N + 15) / 16;
    if (nt > chunks) nt = (int)chunks;
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        int tid = 0, T = 1;
#ifdef _OPENMP
        tid = omp_get_thread_num();
        T = omp_get_num_threads();
#endif
        int64_t c0 = chunks * tid / T, c1 = chunks * (tid + 1) / T;
        int64_t n0 = c0 * 16, n1 = c1 * 16 < N ? c1 * 16 : N;
        if (n0 < n1) fn(ctx, n0, n1);
    }
}

typedef struct {
    nc_tensor *y;
    const nc_tensor *q, *act_sum, *packed, *row_scale;
    const float *inv;
    int avx2;
} ternary_job;
static void ternary_job_rows(void *ctx, int64_t n0, int64_t n1) {
    ternary_job *j = ctx;
    run_rows(j->y, j->q, j->inv, j->act_sum, j->packed, j->row_scale, j->avx2, n0, n1);
}

nc_status nc_ternary_matmul(nc_tensor *y, const nc_tensor *q, const nc_tensor *act_scale, const nc_tensor *act_sum,
                            const nc_tensor *packed, const nc_tensor *row_scale) {
    static const char *op = "ternary_matmul";
    NC_TRY(check_matmul(op, y, q, act_scale, act_sum, packed, row_scale));
    int64_t M = q->shape[0], kp = q->shape[1], N = packed->shape[0];
    if (M == 0 || N == 0) return NC_OK;
    float stack[64];
    float *inv = inv_scales(act_scale, M, stack);
    if (!inv) return NC_ERR_OOM;
    ternary_job j = {y, q, act_sum, packed, row_scale, inv, nc_cpu_avx2()};
    par_rows(N, M * N * kp, ternary_job_rows, &j);
    inv_free(inv, stack, M);
    return NC_OK;
}

/* ---- int8 weights with a per-row absmax scale (LM head / embeddings option) -------------------- */
void nc_k_int8_gemm_avx2(float *y, int64_t M, int64_t N, const int8_t *q, const float *act_inv, const int8_t *w,
                         const float *wscale, int64_t kp, int64_t n0, int64_t n1);
void nc_k_int8_gemm_vnni(float *y, int64_t M, int64_t N, const int8_t *q, const float *act_inv, const int8_t *w,
                         const float *wscale, int64_t kp, int64_t n0, int64_t n1);

nc_status nc_int8_quant_rows(nc_tensor *w8, nc_tensor *wscale, const nc_tensor *w) {
    static const char *op = "int8_quant_rows";
    NC_TRY(nc_check_f32_cpu(op, "w", w));
    NC_TRY(nc_check_contiguous(op, "w", w));
    NC_TRY(nc_check_ndim(op, "w", w, 2));
    int64_t N = w->shape[0], K = w->shape[1], kp = nc_ternary_kpad(K);
    int64_t ws[2] = {N, kp};
    NC_TRY(nc_check_dtype(op, "w8", w8, NC_I8));
    NC_TRY(nc_check_contiguous(op, "w8", w8));
    NC_TRY(nc_check_shape(op, "w8", w8, 2, ws));
    NC_TRY(check_f32_vec(op, "wscale", wscale, N));
    const float *wp = nc_f32p(w);
    int8_t *qp = nc_tensor_data(w8);
    float *sp = nc_f32p(wscale);
    for (int64_t n = 0; n < N; n++) {
        const float *r = wp + n * K;
        float mx = 0.0f;
        for (int64_t k = 0; k < K; k++) {
            float a = fabsf(r[k]);
            if (!(a == a) || a == INFINITY)
                return nc_fail(NC_ERR_ARG, "%s: w[%lld, %lld] is not finite", op, (long long)n, (long long)k);
            mx = a > mx ? a : mx;
        }
        float s = mx > 0.0f ? mx / 127.0f : 1.0f;    /* w ~ code * s, codes in [-127, 127] */
        float inv = 127.0f / (mx > 0.0f ? mx : 127.0f);
        int8_t *qr = qp + n * kp;
        for (int64_t k = 0; k < K; k++) {
            float v = nearbyintf(r[k] * inv);
            v = v > 127.0f ? 127.0f : (v < -127.0f ? -127.0f : v);
            qr[k] = (int8_t)v;
        }
        for (int64_t k = K; k < kp; k++) qr[k] = 0;
        sp[n] = s;
    }
    return NC_OK;
}

static void int8_gemm_scalar(float *y, int64_t M, int64_t N, const int8_t *q, const float *act_inv, const int8_t *w,
                             const float *wscale, int64_t kp, int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; n++)
        for (int64_t m = 0; m < M; m++) {
            int32_t acc = 0;
            for (int64_t k = 0; k < kp; k++) acc += (int32_t)w[n * kp + k] * q[m * kp + k];
            y[m * N + n] = (float)acc * act_inv[m] * wscale[n];
        }
}

typedef struct {
    float *y;
    int64_t M, N;
    const int8_t *q;
    const float *inv;
    const int8_t *w;
    const float *wscale;
    int64_t kp;
    int avx2;
} int8_job;
static void int8_job_rows(void *ctx, int64_t n0, int64_t n1) {
    int8_job *j = ctx;
    if (j->avx2 && nc_cpu_vnni512()) nc_k_int8_gemm_vnni(j->y, j->M, j->N, j->q, j->inv, j->w, j->wscale, j->kp, n0, n1);
    else if (j->avx2) nc_k_int8_gemm_avx2(j->y, j->M, j->N, j->q, j->inv, j->w, j->wscale, j->kp, n0, n1);
    else int8_gemm_scalar(j->y, j->M, j->N, j->q, j->inv, j->w, j->wscale, j->kp, n0, n1);
}

/* the decode GEMVs' software prefetch of the next weight rows (ternary_avx2.c, ternary_vnni.c) */
int nc_k_gemv_pf = 1;

int32_t nc_gemv_prefetch(int32_t on) {
    int32_t was = __atomic_load_n(&nc_k_gemv_pf, __ATOMIC_RELAXED);
    if (on == 0 || on == 1) __atomic_store_n(&nc_k_gemv_pf, on, __ATOMIC_RELAXED);
    return was;
}

nc_status nc_int8_matmul(nc_tensor *y, const nc_tensor *q, const nc_tensor *act_scale, const nc_tensor *w8,
                         const nc_tensor *wscale) {
    static const char *op = "int8_matmul";
    NC_TRY(nc_check_dtype(op, "q", q, NC_I8));
    NC_TRY(nc_check_cpu(op, "q", q));
    NC_TRY(nc_check_contiguous(op, "q", q));
    NC_TRY(nc_check_ndim(op, "q", q, 2));
    NC_TRY(nc_check_dtype(op, "w8", w8, NC_I8));
    NC_TRY(nc_check_cpu(op, "w8", w8));
    NC_TRY(nc_check_contiguous(op, "w8", w8));
    NC_TRY(nc_check_ndim(op, "w8", w8, 2));
    int64_t M = q->shape[0], kp = q->shape[1], N = w8->shape[0];
    if (kp % 32 || w8->shape[1] != kp)
        return nc_fail(NC_ERR_SHAPE, "%s: q (%lld, %lld) and w8 (%lld, %lld) need the same padded K, a multiple of 32",
                       op, (long long)M, (long long)kp, (long long)N, (long long)w8->shape[1]);
    NC_TRY(check_f32_vec(op, "act_scale", act_scale, M));
    NC_TRY(check_f32_vec(op, "wscale", wscale, N));
    NC_TRY(check_out(op, y, M, N));
    const int8_t *qp = nc_tensor_data(q);
    for (int64_t i = 0; i < M * kp; i++)   /* the AVX2 sign trick needs |q| <= 127 (quant_act never gives -128) */
        if (qp[i] == -128) return nc_fail(NC_ERR_ARG, "%s: activation code -128 at %lld (expected [-127, 127])", op,
                                          (long long)i);
    if (M == 0 || N == 0) return NC_OK;
    float stack[64];
    float *inv = inv_scales(act_scale, M, stack);
    if (!inv) return NC_ERR_OOM;
    int8_job j = {nc_f32p(y), M, N, qp, inv, nc_tensor_data(w8), nc_f32p(wscale), kp, nc_cpu_avx2()};
    par_rows(N, M * N * kp, int8_job_rows, &j);
    inv_free(inv, stack, M);
    return NC_OK;
}
