/* kernels/cpu/matmul.c — batched matrix multiply on OpenBLAS sgemm (CPU) or cuBLAS (CUDA).
 *
 * Promise: out (..., M, N) = alpha * op(a) op(b) + beta * out. Each operand's last two dims are
 * passed to sgemm as they lie in memory: row-major (unit column stride) as is, column-major
 * (unit row stride, e.g. a transpose view) by flipping the trans flag; only other layouts are
 * copied to a contiguous temporary. When b is 2-D and a's (batch..., M) rows share one stride,
 * the whole product is ONE sgemm of (B*M, K) x (K, N), so linear layers run at sgemm speed.
 */
#include "nn_common.h"

#include <cblas.h>
#include <stdio.h>

/* How one operand's matrices lie in memory. */
typedef struct {
    const float *p;    /* element 0 */
    int trans;         /* effective transpose flag passed to sgemm */
    int64_t ld;        /* row stride of the stored (row-major) matrix */
} mat_layout;

/* Layout of a (rows, cols) matrix with strides (rs, cs) as the logical op `trans`. Returns 0 if
 * it needs a copy. Stored row-major with unit column stride: ld = rs. Stored with unit row
 * stride: it is the transpose of a row-major (cols, rows) matrix with ld = cs. */
static int layout_of(int64_t rows, int64_t cols, int64_t rs, int64_t cs, int trans, int *eff_trans, int64_t *ld) {
    if (cols <= 1 || cs == 1) {
        int64_t l = rows <= 1 ? (cols > 1 ? cols : 1) : rs;
        if (l >= (cols > 1 ? cols : 1)) { *eff_trans = trans; *ld = l; return 1; }
    }
    if (rows <= 1 || rs == 1) {
        int64_t l = cols <= 1 ? (rows > 1 ? rows : 1) : cs;
        if (l >= (rows > 1 ? rows : 1)) { *eff_trans = !trans; *ld = l; return 1; }
    }
    return 0;
}

/* Offset of batch index bi over the first nb dims of t. */
static int64_t batch_offset(const nc_tensor *t, int32_t nb, int64_t bi) {
    int64_t off = 0;
    for (int32_t d = nb - 1; d >= 0; d--) {
        off += (bi % t->shape[d]) * t->strides[d];
        bi /= t->shape[d];
    }
    return off;
}

/* True when dims [0, nb] of t (batch dims and the row dim) collapse to one dim of stride
 * t->strides[nb]. */
static int rows_collapse(const nc_tensor *t, int32_t nb) {
    int64_t expect = t->strides[nb] * t->shape[nb];
    for (int32_t d = nb - 1; d >= 0; d--) {
        if (t->shape[d] != 1 && t->strides[d] != expect) return 0;
        expect *= t->shape[d];
    }
    return 1;
}

/* True when the batch dims [0, nb) of t collapse to one uniform stride (returned). */
static int batch_uniform(const nc_tensor *t, int32_t nb, int64_t *stride) {
    int64_t st = -1, expect = 0;
    for (int32_t d = nb - 1; d >= 0; d--) {
        if (t->shape[d] == 1) continue;
        if (st < 0) { st = t->strides[d]; expect = st * t->shape[d]; continue; }
        if (t->strides[d] != expect) return 0;
        expect *= t->shape[d];
    }
    *stride = st < 0 ? 0 : st;
    return 1;
}

static void scale_out(float *c, int64_t n, float beta) {
    if (beta == 0.0f) memset(c, 0, (size_t)n * sizeof(float));
    else if (beta != 1.0f) for (int64_t i = 0; i < n; i++) c[i] *= beta;
}

nc_status nc_matmul(nc_tensor *out, const nc_tensor *a, const nc_tensor *b, int32_t trans_a, int32_t trans_b,
                    double alpha, double beta) {
    static const char *op = "matmul";
    NC_TRY(nc_check_dtype(op, "out", out, NC_F32));
    NC_TRY(nc_check_dtype(op, "a", a, NC_F32));
    NC_TRY(nc_check_dtype(op, "b", b, NC_F32));
    NC_TRY(nc_check_contiguous(op, "out", out));
    char ba[NC_DESC_LEN], bb[NC_DESC_LEN];
    if (a->ndim < 2 || b->ndim < 2)
        return nc_fail(NC_ERR_SHAPE, "%s: expected a and b with at least 2 dims, got a %s and b %s", op,
                       nc_describe(a, ba, sizeof ba), nc_describe(b, bb, sizeof bb));
    int32_t dev;
    NC_TRY(nc_check_one_device(op, &dev, 3, (const char *const[]){ "out", "a", "b" },
                               (const nc_tensor *const[]){ out, a, b }));
    int32_t na = a->ndim, nbd = b->ndim, nb = na - 2;   /* nb: number of batch dims */
    int64_t M = trans_a ? a->shape[na - 1] : a->shape[na - 2];
    int64_t Ka = trans_a ? a->shape[na - 2] : a->shape[na - 1];
    int64_t Kb = trans_b ? b->shape[nbd - 1] : b->shape[nbd - 2];
    int64_t N = trans_b ? b->shape[nbd - 2] : b->shape[nbd - 1];
    if (Ka != Kb)
        return nc_fail(NC_ERR_SHAPE, "%s: inner dims differ: a %s%s has K=%lld but b %s%s has K=%lld", op,
                       nc_describe(a, ba, sizeof ba), trans_a ? " (transposed)" : "", (long long)Ka,
                       nc_describe(b, bb, sizeof bb), trans_b ? " (transposed)" : "", (long long)Kb);
    int b_bcast = nbd == 2;
    if (!b_bcast) {
        int ok = nbd == na;
        for (int32_t d = 0; ok && d < nb; d++) ok = a->shape[d] == b->shape[d];
        if (!ok)
            return nc_fail(NC_ERR_SHAPE, "%s: batch dims differ: a %s, b %s (b must be 2-D or have a's batch dims)",
                           op, nc_describe(a, ba, sizeof ba), nc_describe(b, bb, sizeof bb));
    }
    /* expected out shape */
    int64_t want[NC_MAX_DIMS];
    int64_t batch = 1;
    for (int32_t d = 0; d < nb; d++) { want[d] = a->shape[d]; batch *= a->shape[d]; }
    want[nb] = M;
    want[nb + 1] = N;
    NC_TRY(nc_check_shape(op, "out", out, na, want));
    int64_t K = Ka;
    if (batch == 0 || M == 0 || N == 0) return NC_OK;
    float falpha = (float)alpha, fbeta = (float)beta;

    /* operands in sgemm-ready layout (copies only for layouts sgemm cannot express) */
    nc_tensor *ac = NULL, *bc = NULL;
    const nc_tensor *A = a, *B = b;
    int ta, tb;
    int64_t lda, ldb;
    int64_t arows = a->shape[na - 2], acols = a->shape[na - 1];
    int64_t brows = b->shape[nbd - 2], bcols = b->shape[nbd - 1];
    if (!layout_of(arows, acols, a->strides[na - 2], a->strides[na - 1], trans_a, &ta, &lda)) {
        ac = nc_tensor_new_clone(a);
        if (!ac) return NC_ERR_OOM;
        A = ac;
        layout_of(arows, acols, A->strides[na - 2], A->strides[na - 1], trans_a, &ta, &lda);
    }
    if (!layout_of(brows, bcols, b->strides[nbd - 2], b->strides[nbd - 1], trans_b, &tb, &ldb)) {
        bc = nc_tensor_new_clone(b);
        if (!bc) { if (ac) nc_tensor_release(ac); return NC_ERR_OOM; }
        B = bc;
        layout_of(brows, bcols, B->strides[nbd - 2], B->strides[nbd - 1], trans_b, &tb, &ldb);
    }
    nc_status st = NC_OK;
    float *C = (float *)nc_tensor_data(out);
    const float *Ap = (const float *)nc_tensor_data(A), *Bp = (const float *)nc_tensor_data(B);
    int64_t ldc = N;

    /* one gemm over flattened rows: b shared, a row-major with (batch..., M) collapsing */
    int flat = b_bcast && nb > 0 && !trans_a && ta == 0 && rows_collapse(A, nb);
    int64_t gM = flat ? batch * M : M, gbatch = flat ? 1 : batch;
    if (flat && arows <= 1) {
        /* a single row per matrix: consecutive rows are spaced by the row dim's stride */
        int64_t s = A->strides[nb];
        if (batch * M > 1 && s >= (K > 1 ? K : 1)) lda = s;
        else if (batch * M > 1) { flat = 0; gM = M; gbatch = batch; }
    }

    if (out->device == NC_CUDA) {
        const nc_cuda_api *cu = nc_cuda_for(op);
        if (!cu) { st = NC_ERR_DEVICE; goto done; }
        int64_t sa = 0, sb = 0;
        if (gbatch > 1) {
            nc_tensor *tmp;
            if (!batch_uniform(A, nb, &sa)) {
                tmp = nc_tensor_new_clone(A);
                if (!tmp) { st = NC_ERR_OOM; goto done; }
                if (ac) nc_tensor_release(ac);
                ac = tmp; A = ac; Ap = (const float *)nc_tensor_data(A);
                layout_of(arows, acols, A->strides[na - 2], A->strides[na - 1], trans_a, &ta, &lda);
                batch_uniform(A, nb, &sa);
            }
            if (!b_bcast && !batch_uniform(B, nb, &sb)) {
                tmp = nc_tensor_new_clone(B);
                if (!tmp) { st = NC_ERR_OOM; goto done; }
                if (bc) nc_tensor_release(bc);
                bc = tmp; B = bc; Bp = (const float *)nc_tensor_data(B);
                layout_of(brows, bcols, B->strides[nbd - 2], B->strides[nbd - 1], trans_b, &tb, &ldb);
                batch_uniform(B, nb, &sb);
            }
        }
        if (K == 0) {
            /* out = beta * out */
            if (fbeta == 0.0f) st = cu->fill(C, batch * M * N, NC_F32, 0.0);
            else if (fbeta != 1.0f)
                st = nc_fail(NC_ERR_UNSUPPORTED, "%s: K = 0 with beta %g on cuda is not supported", op, beta);
            goto done;
        }
        st = cu->sgemm(ta, tb, gM, N, K, falpha, Ap, lda, sa, Bp, ldb, sb, fbeta, C, ldc, M * N, gbatch);
        if (st != NC_OK) nc_fail(st, "%s: cuda sgemm failed: %s", op, cu->last_error ? cu->last_error() : "?");
        goto done;
    }

    if (K == 0) { scale_out(C, batch * M * N, fbeta); goto done; }
    for (int64_t bi = 0; bi < gbatch; bi++) {
        const float *ap = Ap + (flat ? 0 : batch_offset(A, nb, bi));
        const float *bp = Bp + (b_bcast ? 0 : batch_offset(B, nb, bi));
        float *cp = C + bi * M * N;
        cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                    (blasint)gM, (blasint)N, (blasint)K, falpha, ap, (blasint)lda, bp, (blasint)ldb, fbeta, cp,
                    (blasint)ldc);
    }
done:
    if (ac) nc_tensor_release(ac);
    if (bc) nc_tensor_release(bc);
    return st;
}
