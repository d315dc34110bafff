/* kernels/cpu/tq.c — GGUF's ternary block formats TQ2_0 and TQ1_0 (formats.md §1.5; ggml's
 * block_tq2_0 / block_tq1_0), as the packed dtypes NC_TQ2 / NC_TQ1, plus a read-bandwidth probe.
 *
 * Promise: byte-exact to ggml's reference quantizers for any f32 input: per block of 256 values
 * d = max|x| (stored as f16, last in the block), id = d ? 1/d : 0, code = lroundf(x * id) + 1
 * (clamped to {0,1,2}, which only matters for non-finite input).
 *   TQ2_0 (66 bytes): qs[64], d. Half h (0, 1) of the block, byte m (0..31): bits 2n..2n+1 hold the
 *     code of x[128h + 32n + m]. (Per 128 weights this is exactly our "i2b128" packing.)
 *   TQ1_0 (54 bytes): qs[48], qh[4], d. Base-3, 5 codes per byte, first code most significant:
 *     qs[m] (m < 32) holds x[m + 32n], n = 0..4; qs[32 + m] (m < 16) holds x[160 + m + 16n];
 *     qh[j] holds x[240 + j + 4n], n = 0..3, times 3. A byte stores ceil(v * 256 / 243) so that
 *     code n is recovered as ((uint8_t)(b * 3^n) * 3) >> 8.
 * Dequantization: (code - 1) * f32(d).
 */
#include "nn_common.h"
#include <immintrin.h>
#ifdef _OPENMP
#include <omp.h>
#endif

enum { QK = 256, TQ2_BYTES = 66, TQ1_BYTES = 54 };

static inline int tq_code(float x, float id) {
    long c = lroundf(x * id) + 1;
    return c < 0 ? 0 : (c > 2 ? 2 : (int)c);
}

static inline uint8_t tq1_byte(int v) { return (uint8_t)((v * 256 + 242) / 243); }

static void quant_block(uint8_t *dst, const float *x, int type) {
    float amax = 0.0f;
    for (int j = 0; j < QK; j++) {
        float a = fabsf(x[j]);
        amax = a > amax ? a : amax;
    }
    float d = amax, id = d != 0.0f ? 1.0f / d : 0.0f;
    uint16_t dh = nc_f32_to_f16(d);
    if (type == NC_TQ2) {
        for (int h = 0; h < 2; h++)
            for (int m = 0; m < 32; m++) {
                int b = 0;
                for (int n = 0; n < 4; n++) b |= tq_code(x[128 * h + 32 * n + m], id) << (2 * n);
                dst[32 * h + m] = (uint8_t)b;
            }
        memcpy(dst + 64, &dh, 2);
        return;
    }
    for (int m = 0; m < 32; m++) {
        int v = 0;
        for (int n = 0; n < 5; n++) v = v * 3 + tq_code(x[m + 32 * n], id);
        dst[m] = tq1_byte(v);
    }
    for (int m = 0; m < 16; m++) {
        int v = 0;
        for (int n = 0; n < 5; n++) v = v * 3 + tq_code(x[160 + m + 16 * n], id);
        dst[32 + m] = tq1_byte(v);
    }
    for (int j = 0; j < 4; j++) {
        int v = 0;
        for (int n = 0; n < 4; n++) v = v * 3 + tq_code(x[240 + j + 4 * n], id);
        dst[48 + j] = tq1_byte(v * 3);
    }
    memcpy(dst + 52, &dh, 2);
}

static inline float tq1_val(uint8_t b, int n, float d) {
    static const uint8_t pow3[5] = {1, 3, 9, 27, 81};
    uint8_t q = (uint8_t)(b * pow3[n]);
    int c = ((uint16_t)q * 3) >> 8;
    return (float)(c - 1) * d;
}

static void dequant_block(float *y, const uint8_t *src, int type) {
    uint16_t dh;
    if (type == NC_TQ2) {
        memcpy(&dh, src + 64, 2);
        float d = nc_f16_to_f32(dh);
        for (int h = 0; h < 2; h++)
            for (int n = 0; n < 4; n++)
                for (int m = 0; m < 32; m++) y[128 * h + 32 * n + m] = (float)(((src[32 * h + m] >> (2 * n)) & 3) - 1) * d;
        return;
    }
    memcpy(&dh, src + 52, 2);
    float d = nc_f16_to_f32(dh);
    for (int n = 0; n < 5; n++)
        for (int m = 0; m < 32; m++) y[m + 32 * n] = tq1_val(src[m], n, d);
    for (int n = 0; n < 5; n++)
        for (int m = 0; m < 16; m++) y[160 + m + 16 * n] = tq1_val(src[32 + m], n, d);
    for (int n = 0; n < 4; n++)
        for (int j = 0; j < 4; j++) y[240 + j + 4 * n] = tq1_val(src[48 + j], n, d);
}

static nc_status check_pair(const char *op, const nc_tensor *packed, const nc_tensor *f) {
    NC_TRY(nc_check_not_null(op, "packed", packed));
    if (packed->dtype != NC_TQ2 && packed->dtype != NC_TQ1) {
        char b[NC_DESC_LEN];
        return nc_fail(NC_ERR_DTYPE, "%s: expected a tq2 or tq1 tensor, got %s", op, nc_describe(packed, b, sizeof b));
    }
    NC_TRY(nc_check_cpu(op, "packed", packed));
    NC_TRY(nc_check_f32_cpu(op, "f32 tensor", f));
    NC_TRY(nc_check_contiguous(op, "f32 tensor", f));
    if (!nc_tensor_same_shape(packed, f)) {
        char a[NC_DESC_LEN], b[NC_DESC_LEN];
        return nc_fail(NC_ERR_SHAPE, "%s: shapes differ: %s vs %s", op, nc_describe(packed, a, sizeof a),
                       nc_describe(f, b, sizeof b));
    }
    if (packed->ndim < 1 || nc_last_dim(packed) % QK)
        return nc_fail(NC_ERR_SHAPE, "%s: the last dim must be a multiple of %d", op, QK);
    return NC_OK;
}

nc_status nc_tq_quantize(nc_tensor *out, const nc_tensor *x) {
    NC_TRY(check_pair("tq_quantize", out, x));
    int64_t nb = nc_tensor_numel(x) / QK, bb = out->dtype == NC_TQ2 ? TQ2_BYTES : TQ1_BYTES;
    uint8_t *o = out->storage->data;
    const float *xp = nc_f32p(x);
    int type = out->dtype;
#pragma omp parallel for schedule(static) if (nb >= 256) num_threads(nc_threads())
    for (int64_t i = 0; i < nb; i++) quant_block(o + i * bb, xp + i * QK, type);
    return NC_OK;
}

nc_status nc_tq_dequantize(nc_tensor *out, const nc_tensor *q) {
    NC_TRY(check_pair("tq_dequantize", q, out));
    int64_t nb = nc_tensor_numel(q) / QK, bb = q->dtype == NC_TQ2 ? TQ2_BYTES : TQ1_BYTES;
    const uint8_t *s = q->storage->data;
    float *op = nc_f32p(out);
    int type = q->dtype;
#pragma omp parallel for schedule(static) if (nb >= 256) num_threads(nc_threads())
    for (int64_t i = 0; i < nb; i++) dequant_block(op + i * QK, s + i * bb, type);
    return NC_OK;
}

/* Streaming read: every thread sums its contiguous share with 4 independent accumulators (AVX2
 * 32-byte loads when selected, else 64-bit words); either rate exceeds one core's DRAM bandwidth. */
__attribute__((target("avx2"))) static uint64_t read_sum_avx2(const uint8_t *p, int64_t n) {
    __m256i a = _mm256_setzero_si256(), b = a, c = a, d = a;
    int64_t i = 0;
    for (; i + 128 <= n; i += 128) {
        a = _mm256_add_epi64(a, _mm256_loadu_si256((const __m256i *)(p + i)));
        b = _mm256_add_epi64(b, _mm256_loadu_si256((const __m256i *)(p + i + 32)));
        c = _mm256_add_epi64(c, _mm256_loadu_si256((const __m256i *)(p + i + 64)));
        d = _mm256_add_epi64(d, _mm256_loadu_si256((const __m256i *)(p + i + 96)));
    }
    a = _mm256_add_epi64(_mm256_add_epi64(a, b), _mm256_add_epi64(c, d));
    uint64_t lanes[4];
    _mm256_storeu_si256((__m256i *)lanes, a);
    uint64_t t = lanes[0] + lanes[1] + lanes[2] + lanes[3];
    for (; i < n; i++) t += p[i];
    return t;
}

static uint64_t read_sum_scalar(const uint8_t *p, int64_t n) {
    uint64_t a = 0, b = 0, c = 0, d = 0, w[4];
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        memcpy(w, p + i, 32);
        a += w[0];
        b += w[1];
        c += w[2];
        d += w[3];
    }
    for (; i < n; i++) a += p[i];
    return a + b + c + d;
}

uint64_t nc_mem_read_sum(const void *p, int64_t nbytes, int32_t threads) {
    const uint8_t *b = p;
    uint64_t total = 0;
    int avx2 = nc_cpu_avx2();
    if (threads < 1) threads = 1;
#pragma omp parallel num_threads(threads) reduction(+ : total)
    {
        int tid = 0, T = 1;
#ifdef _OPENMP
        tid = omp_get_thread_num();
        T = omp_get_num_threads();
#endif
        int64_t i0 = nbytes / 64 * tid / T * 64, i1 = tid == T - 1 ? nbytes : nbytes / 64 * (tid + 1) / T * 64;
        total += avx2 ? read_sum_avx2(b + i0, i1 - i0) : read_sum_scalar(b + i0, i1 - i0);
    }
    return total;
}
