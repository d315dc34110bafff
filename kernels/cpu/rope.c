/* kernels/cpu/rope.c — rotary position embedding (half-split pairing, nanochat convention).
 *
 * Promise (algorithms.md §14.1): for x (B, T, H, D), x1 = x[..., :D/2], x2 = x[..., D/2:],
 *   out1 = x1 cos + x2 sin,  out2 = -x1 sin + x2 cos,
 * with cos/sin (T, D/2) at angle (pos0 + t) * base^(-2i/D), computed in double. The backward is
 * the inverse rotation (the transpose): gx1 += g1 cos - g2 sin, gx2 += g1 sin + g2 cos.
 * nc_rope / nc_rope_backward on CUDA tensors run the same arithmetic in kernels/cuda/nn.cu (bit-
 * identical); nc_rope_tables is computed on the CPU (move the tables with :to('cuda')).
 */
#include "nn_common.h"

nc_status nc_rope_tables(nc_tensor *cos_t, nc_tensor *sin_t, int64_t pos0, double base) {
    static const char *op = "rope_tables";
    NC_TRY(nc_check_f32_cpu(op, "cos", cos_t));
    NC_TRY(nc_check_f32_cpu(op, "sin", sin_t));
    NC_TRY(nc_check_contiguous(op, "cos", cos_t));
    NC_TRY(nc_check_contiguous(op, "sin", sin_t));
    NC_TRY(nc_check_ndim(op, "cos", cos_t, 2));
    NC_TRY(nc_check_same_shape(op, "cos", cos_t, "sin", sin_t));
    if (!(base > 0.0)) return nc_fail(NC_ERR_ARG, "%s: expected base > 0, got %g", op, base);
    int64_t T = cos_t->shape[0], h = cos_t->shape[1];
    float *c = nc_f32p(cos_t), *s = nc_f32p(sin_t);
    for (int64_t i = 0; i < h; i++) {
        double theta = pow(base, -(double)i / (double)h);   /* base^(-2i/D), D = 2h */
        for (int64_t t = 0; t < T; t++) {
            double ang = (double)(pos0 + t) * theta;
            c[t * h + i] = (float)cos(ang);
            s[t * h + i] = (float)sin(ang);
        }
    }
    return NC_OK;
}

static nc_status check_rope(const char *op, const nc_tensor *x, const char *xn, const nc_tensor *cos_t,
                            const nc_tensor *sin_t, int32_t dev) {
    NC_TRY(nc_check_f32_on(op, xn, x, dev));
    NC_TRY(nc_check_ndim(op, xn, x, 4));
    NC_TRY(nc_check_f32_on(op, "cos", cos_t, dev));
    NC_TRY(nc_check_f32_on(op, "sin", sin_t, dev));
    int64_t D = x->shape[3];
    if (D % 2) {
        char b[NC_DESC_LEN];
        return nc_fail(NC_ERR_SHAPE, "%s: expected an even head dim D in %s (B, T, H, D), got %s", op, xn,
                       nc_describe(x, b, sizeof b));
    }
    int64_t want[2] = {x->shape[1], D / 2};
    NC_TRY(nc_check_shape(op, "cos", cos_t, 2, want));
    NC_TRY(nc_check_shape(op, "sin", sin_t, 2, want));
    return NC_OK;
}

/* out (contiguous) = rotate(x, sign): sign +1 forward, -1 inverse; accumulate when acc */
/* mask (B * T, may be NULL): only the tokens with mask[b * T + t] != 0 (Collider) */
static void rope_apply(float *out, const nc_tensor *x, const nc_tensor *cos_t, const nc_tensor *sin_t, float sign,
                       int acc, const uint8_t *mask) {
    int64_t B = x->shape[0], T = x->shape[1], H = x->shape[2], D = x->shape[3], h = D / 2;
    const float *xp = nc_f32p(x), *cp = nc_f32p(cos_t), *sp = nc_f32p(sin_t);
    int64_t s0 = x->strides[0], s1 = x->strides[1], s2 = x->strides[2], s3 = x->strides[3];
    int64_t c0 = cos_t->strides[0], c1 = cos_t->strides[1], n0 = sin_t->strides[0], n1 = sin_t->strides[1];
    int64_t rows = B * T * H;
#pragma omp parallel for schedule(static) if (rows * D >= NC_PAR_MIN && rows > 1) num_threads(nc_threads())
    for (int64_t r = 0; r < rows; r++) {
        int64_t hh = r % H, t = (r / H) % T, b = r / (H * T);
        if (mask && !mask[r / H]) continue;
        const float *xr = xp + b * s0 + t * s1 + hh * s2;
        const float *cr = cp + t * c0, *sr = sp + t * n0;
        float *o = out + r * D;
#pragma omp simd
        for (int64_t i = 0; i < h; i++) {
            float c = cr[i * c1], s = sign * sr[i * n1];
            float x1 = xr[i * s3], x2 = xr[(i + h) * s3];
            float y1 = x1 * c + x2 * s, y2 = x2 * c - x1 * s;
            if (acc) { o[i] += y1; o[i + h] += y2; }
            else { o[i] = y1; o[i + h] = y2; }
        }
    }
}

/* the CUDA path of both directions: out (contiguous) = / += rotate(x, sign) */
static nc_status rope_cuda(const char *op, float *out, const nc_tensor *x, const nc_tensor *cos_t,
                           const nc_tensor *sin_t, float sign, int acc) {
    const nc_cuda_api *cu = nc_cuda_for(op);
    if (!cu) return NC_ERR_DEVICE;
    if (nc_tensor_numel(x) == 0) return NC_OK;
    nc_tensor *tx, *tc, *ts;
    const nc_tensor *xc = nc_nn_contig(op, x, &tx), *cc = nc_nn_contig(op, cos_t, &tc), *sc = nc_nn_contig(op, sin_t, &ts);
    nc_status st = NC_ERR_OOM;
    if (xc && cc && sc) {
        int64_t B = x->shape[0], T = x->shape[1], H = x->shape[2], D = x->shape[3];
        st = cu->rope(out, nc_f32p(xc), nc_f32p(cc), nc_f32p(sc), B * T * H, T, H, D, sign, acc);
        if (st != NC_OK) nc_cuda_err(op, cu, st);
    }
    nc_tensor_release(tx);
    nc_tensor_release(tc);
    nc_tensor_release(ts);
    return st;
}

nc_status nc_rope(nc_tensor *out, const nc_tensor *x, const nc_tensor *cos_t, const nc_tensor *sin_t) {
    static const char *op = "rope";
    int32_t dev = NC_DEV_OF(out, x, cos_t, sin_t);
    NC_TRY(check_rope(op, x, "x", cos_t, sin_t, dev));
    NC_TRY(nc_check_f32_on(op, "out", out, dev));
    NC_TRY(nc_check_contiguous(op, "out", out));
    NC_TRY(nc_check_same_shape(op, "out", out, "x", x));
    if (dev == NC_CUDA) return rope_cuda(op, nc_f32p(out), x, cos_t, sin_t, 1.0f, 0);
    if (nc_tensor_numel(x) == 0) return NC_OK;
    rope_apply(nc_f32p(out), x, cos_t, sin_t, 1.0f, 0, NULL);
    return NC_OK;
}

nc_status nc_rope_backward(nc_tensor *gx, const nc_tensor *gout, const nc_tensor *cos_t, const nc_tensor *sin_t) {
    static const char *op = "rope_backward";
    if (!gx) return NC_OK;
    int32_t dev = NC_DEV_OF(gx, gout, cos_t, sin_t);
    NC_TRY(check_rope(op, gout, "gout", cos_t, sin_t, dev));
    NC_TRY(nc_check_f32_on(op, "gx", gx, dev));
    NC_TRY(nc_check_contiguous(op, "gx", gx));
    NC_TRY(nc_check_same_shape(op, "gx", gx, "gout", gout));
    if (dev == NC_CUDA) return rope_cuda(op, nc_f32p(gx), gout, cos_t, sin_t, -1.0f, 1);
    if (nc_tensor_numel(gout) == 0) return NC_OK;
    rope_apply(nc_f32p(gx), gout, cos_t, sin_t, -1.0f, 1, NULL);
    return NC_OK;
}

nc_status nc_rope_backward_masked(nc_tensor *gx, const nc_tensor *gout, const nc_tensor *cos_t, const nc_tensor *sin_t,
                                  const nc_tensor *qkeep) {
    static const char *op = "rope_backward_masked";
    if (!gx) return NC_OK;
    NC_TRY(check_rope(op, gout, "gout", cos_t, sin_t, NC_CPU));
    NC_TRY(nc_check_f32_on(op, "gx", gx, NC_CPU));
    NC_TRY(nc_check_contiguous(op, "gx", gx));
    NC_TRY(nc_check_same_shape(op, "gx", gx, "gout", gout));
    NC_TRY(nc_check_not_null(op, "qkeep", qkeep));
    NC_TRY(nc_check_cpu(op, "qkeep", qkeep));
    NC_TRY(nc_check_dtype(op, "qkeep", qkeep, NC_U8));
    NC_TRY(nc_check_contiguous(op, "qkeep", qkeep));
    int64_t want[2] = { gout->shape[0], gout->shape[1] };
    NC_TRY(nc_check_shape(op, "qkeep", qkeep, 2, want));
    if (nc_tensor_numel(gout) == 0) return NC_OK;
    rope_apply(nc_f32p(gx), gout, cos_t, sin_t, -1.0f, 1, (const uint8_t *)nc_ptr(qkeep));
    return NC_OK;
}
