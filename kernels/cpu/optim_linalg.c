/* kernels/cpu/optim_linalg.c — the linear algebra behind the optimizers: Newton-Schulz
 * orthogonalization (Muon's quintic, FIRE's cubic), thin SVD and the randomized SVD projector of
 * GaLore 2 (algorithms.md §2.2, §4.4, §6.2).
 *
 * Promise: every matrix product goes through OpenBLAS (sgemm; ssyrk for the symmetric products of
 * Newton-Schulz), except Muon's Newton-Schulz with ns_dtype bf16 (or auto on a CPU with a hardware
 * bf16 GEMM), whose products go through nc_gemm_bf16_f32p (bf16 inputs, f32 accumulation and
 * outputs); either way the result does not depend on the thread count (OpenBLAS splits outputs, not
 * sums), so nc_muon_step_many may run one matrix per thread. Newton-Schulz runs in the standard or
 * the Gram form (ns_form, below). The small factorizations use the
 * LAPACK inside OpenBLAS (sgeqrf/sorgqr/sgesdd/dgesdd; Debian's libopenblas-dev ships no
 * lapacke.h, so the Fortran symbols are declared here). Results are deterministic for a given
 * thread count; workspaces are freed before returning; failures are nc_status with a message.
 * CUDA tensors: nc_newton_schulz runs on the GPU (kernels/cuda/optim.cu, cuBLAS sgemm: equal to
 * the CPU within f32 tolerance); nc_rsvd_projector downloads g, runs the CPU code below (LAPACK)
 * and uploads proj, so a CUDA refresh gives the CPU's bits; nc_svd is CPU-only.
 */
#pragma GCC optimize("no-math-errno", "no-trapping-math")

#include "optim_internal.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

/* LAPACK (Fortran ABI, 32-bit integers as in Debian's openblas; trailing hidden string lengths). */
extern void sgesdd_(const char *jobz, const int *m, const int *n, float *a, const int *lda, float *s, float *u,
                    const int *ldu, float *vt, const int *ldvt, float *work, const int *lwork, int *iwork,
                    int *info, size_t jobz_len);
extern void dgesdd_(const char *jobz, const int *m, const int *n, double *a, const int *lda, double *s,
                    double *u, const int *ldu, double *vt, const int *ldvt, double *work, const int *lwork,
                    int *iwork, int *info, size_t jobz_len);
extern void sgeqrf_(const int *m, const int *n, float *a, const int *lda, float *tau, float *work,
                    const int *lwork, int *info);
extern void sorgqr_(const int *m, const int *n, const int *k, float *a, const int *lda, const float *tau,
                    float *work, const int *lwork, int *info);

extern void openblas_set_num_threads(int num_threads);

const double nc_ns_quintic[3] = { 3.4445, -4.7750, 2.0315 };

/* Products of at most this many multiply-adds (r x r x c) run on one OpenBLAS thread: waking the
 * second thread costs more than it saves there (NS5 of a 96 x 384 matrix on 2 threads of a busy
 * 2-core machine: 1.2 ms on one thread, 3.7-4.2 ms on two). */
#define NC_NS_SERIAL_MACS ((int64_t)1 << 22)

#define FRO_CHUNK 4096

double nc_optim_fro_norm(const float *x, int64_t n) {
    /* serial (see transpose below); the chunking keeps the double sums short and fixed */
    double tot = 0;
    for (int64_t c = 0; c < n; c += FRO_CHUNK) {
        double s = 0;
        int64_t e = c + FRO_CHUNK < n ? c + FRO_CHUNK : n;
#pragma omp simd reduction(+ : s)   /* one thread, vector lanes: a fixed order for a given build */
        for (int64_t i = c; i < e; i++) s += (double)x[i] * x[i];
        tot += s;
    }
    return sqrt(tot);
}

/* dst (cols, rows) = src (rows, cols)^T, blocked for cache use. Serial on purpose, like every
 * elementwise pass in this file: an OpenMP region right before an OpenBLAS call leaves OpenMP
 * workers spinning on the cores the sgemm threads need (measured: NS5 of a 96 x 384 matrix took
 * 74 ms on 2 threads with OpenMP passes around the sgemms, 0.75 ms without), and these passes
 * cost O(r c) against the O(r^2 c) products. */
static void transpose(float *dst, const float *src, int64_t rows, int64_t cols) {
    const int64_t B = 32;
    for (int64_t i0 = 0; i0 < rows; i0 += B)
        for (int64_t j0 = 0; j0 < cols; j0 += B) {
            int64_t ie = i0 + B < rows ? i0 + B : rows, je = j0 + B < cols ? j0 + B : cols;
            for (int64_t i = i0; i < ie; i++)
                for (int64_t j = j0; j < je; j++) dst[j * rows + i] = src[i * cols + j];
        }
}

static void scale_copy(float *dst, const float *src, int64_t n, float s) {
#pragma omp simd
    for (int64_t i = 0; i < n; i++) dst[i] = s * src[i];
}

static nc_status check_ns_dtype(const char *op, int32_t ns_dtype) {
    if (ns_dtype != NC_NS_AUTO && ns_dtype != NC_NS_F32 && ns_dtype != NC_NS_BF16)
        return nc_fail(NC_ERR_ARG, "%s: ns_dtype must be NC_NS_AUTO (0), NC_NS_F32 (1) or NC_NS_BF16 (2), got %d", op,
                       ns_dtype);
    return NC_OK;
}

int32_t nc_ns_dtype_auto(void) { return nc_gemm_bf16_hw() ? NC_NS_BF16 : NC_NS_F32; }

nc_status nc_optim_check_ns(const char *op, int32_t ns_dtype, int32_t ns_form) {
    NC_TRY(check_ns_dtype(op, ns_dtype));
    if (ns_form != NC_NS_FORM_AUTO && ns_form != NC_NS_FORM_STANDARD && ns_form != NC_NS_FORM_GRAM)
        return nc_fail(NC_ERR_ARG, "%s: ns_form must be NC_NS_FORM_AUTO (0), NC_NS_FORM_STANDARD (1) or NC_NS_FORM_GRAM (2), got %d",
                       op, ns_form);
    return NC_OK;
}

/* The Newton-Schulz products, bf16 (nc_gemm_bf16_f32p: C may alias an operand on the hardware
 * backends) or f32 (OpenBLAS: C never aliases an operand). */
static nc_status ns_mm(int bf16, int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, int32_t ta,
                       const float *B, int64_t ldb, int32_t tb, float alpha, float beta, float *C, int64_t ldc) {
    if (bf16) return nc_gemm_bf16_f32p(M, N, K, A, lda, ta, B, ldb, tb, alpha, beta, C, ldc);
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, (blasint)M, (blasint)N,
                (blasint)K, alpha, A, (blasint)lda, B, (blasint)ldb, beta, C, (blasint)ldc);
    return NC_OK;
}

/* C (n, n) = alpha op(P) op(Q) + beta C for a product known to be symmetric (X X^T, A A with A
 * symmetric, the Gram form's M'R M'), C exactly symmetric on return (C's input symmetric when
 * beta != 0). bf16: nc_gemm_bf16_f32p_sym computes only the 32 x 32 blocks on or above the
 * diagonal (one call: each operand packed once) and its epilogue stores each block's transpose
 * below the diagonal too. One Muon step over the tiny config's 36 matrices (tools/bench/optim_ns.lua,
 * 2 threads, one matrix per thread) took 83.4 ms with full products, 79.9 ms with 128-row panels
 * (a GEMM call per panel, each packing its share of the shared operand again; 64 / 32-row panels:
 * 80.9 / 93.2 ms) and 63.5-64.6 ms with the upper blocks in one call (vs 71.7-72.8 for the 128-row
 * panels, same session, alternating). f32: ssyrk when the product is op(P) op(P)^T (X X^T, or A A
 * with A symmetric: half the multiply-adds), else sgemm, then the lower triangle copied from the
 * upper one. */
static nc_status ns_sym(int bf16, int64_t n, int64_t K, const float *P, int64_t ldp, int32_t tp, const float *Q,
                        int64_t ldq, int32_t tq, float alpha, float beta, float *C, int64_t ldc) {
    if (bf16) return nc_gemm_bf16_f32p_sym(n, K, P, ldp, tp, Q, ldq, tq, alpha, beta, C, ldc);
    if (P == Q && ldp == ldq && (tp != tq || tp == 0))   /* P P^T, P^T P, or P P with P symmetric */
        cblas_ssyrk(CblasRowMajor, CblasUpper, tp ? CblasTrans : CblasNoTrans, (blasint)n, (blasint)K, alpha, P,
                    (blasint)ldp, beta, C, (blasint)ldc);
    else
        cblas_sgemm(CblasRowMajor, tp ? CblasTrans : CblasNoTrans, tq ? CblasTrans : CblasNoTrans, (blasint)n,
                    (blasint)n, (blasint)K, alpha, P, (blasint)ldp, Q, (blasint)ldq, beta, C, (blasint)ldc);
    nc_sym_mirror(C, n, ldc);
    return NC_OK;
}

/* the f32 (sgemm) iteration on X (r, c), r <= c; Y (r, c), A, Bm (r, r) workspaces; returns the
 * buffer holding the result (X or Y) */
static float *ns_f32(float *X, float *Y, float *A, float *Bm, int64_t r, int64_t c, int32_t steps, const double *abc,
                     int32_t n_abc) {
    int64_t n = r * c;
    int serial = r * r * c <= NC_NS_SERIAL_MACS && nc_threads() > 1 && !omp_in_parallel();
    if (serial) openblas_set_num_threads(1);
    for (int32_t k = 0; k < steps; k++) {
        const double *q = abc + 3 * (k < n_abc ? k : n_abc - 1);
        float a = (float)q[0], b = (float)q[1], cc = (float)q[2];
        /* A = X X^T (ssyrk) */
        ns_sym(0, r, c, X, c, 0, X, c, 1, 1.0f, 0.0f, A, r);
        /* B = b A + c A A (the b A term through beta; A A = A A^T: ssyrk) */
        if (cc != 0.0f) {
            memcpy(Bm, A, (size_t)(r * r) * sizeof(float));
            ns_sym(0, r, r, A, r, 0, A, r, 0, cc, b, Bm, r);
        } else {
            scale_copy(Bm, A, r * r, b);
        }
        /* Y = a X + B X */
        memcpy(Y, X, (size_t)n * sizeof(float));
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (blasint)r, (blasint)c, (blasint)r, 1.0f, Bm,
                    (blasint)r, X, (blasint)c, a, Y, (blasint)c);
        float *t = X; X = Y; Y = t;
    }
    if (serial) openblas_set_num_threads(nc_threads());
    return X;
}

/* The bf16 iteration: the f32 sequence with every product through nc_gemm_bf16_f32p (inputs
 * rounded to bf16, f32 accumulation and outputs). X is the (r, c) iterate, r <= c, stored as is
 * (tall = 0) or as its transpose Xt (c, r) (tall = 1: the caller's tall matrix, used in place of
 * transposing it, since the GEMM reads either orientation): A = X X^T = Xt^T Xt, and
 * (B X)^T = Xt B^T. Y (same storage), A, Bm (r, r): workspaces. */
static nc_status ns_bf16(float **out, float *X, float *Y, float *A, float *Bm, int64_t r, int64_t c, int tall,
                         int32_t steps, const double *abc, int32_t n_abc) {
    int64_t n = r * c;
    /* on the hardware backends the operands are packed before any output is written (amx.c), so
     * B = b A + c A A and X' = a X + B X run in place (C = an operand, beta = b / a): no copies of
     * A and X per iteration; the reference backend reads its operands while it writes, so it copies */
    const int inplace = nc_gemm_bf16_hw();
    for (int32_t k = 0; k < steps; k++) {
        const double *q = abc + 3 * (k < n_abc ? k : n_abc - 1);
        float a = (float)q[0], b = (float)q[1], cc = (float)q[2];
        if (tall) NC_TRY(ns_sym(1, r, c, X, r, 1, X, r, 0, 1.0f, 0.0f, A, r));
        else NC_TRY(ns_sym(1, r, c, X, c, 0, X, c, 1, 1.0f, 0.0f, A, r));
        float *B = inplace ? A : Bm;
        if (cc != 0.0f) {
            if (!inplace) memcpy(Bm, A, (size_t)(r * r) * sizeof(float));
            NC_TRY(ns_sym(1, r, r, A, r, 0, A, r, 0, cc, b, B, r));
        } else {
            scale_copy(B, A, r * r, b);
        }
        float *Z = inplace ? X : Y;
        if (!inplace) memcpy(Y, X, (size_t)n * sizeof(float));
        if (tall) NC_TRY(nc_gemm_bf16_f32p(c, r, r, X, r, 0, B, r, 1, 1.0f, a, Z, r));
        else NC_TRY(nc_gemm_bf16_f32p(r, c, r, B, r, 0, X, c, 0, 1.0f, a, Z, c));
        if (!inplace) { float *t = X; X = Y; Y = t; }
    }
    *out = X;
    return NC_OK;
}

/* ---- Gram Newton-Schulz (ns_form) --------------------------------------------------------------
 * Every NS iterate is X_k = Q_k X_s, with X_s the iterate at the last restart and Q_k an (r, r)
 * polynomial in R_s = X_s X_s^T, so the iteration can run on the small side:
 *     P_k = a I + b R_k + c R_k^2,  Q_{k+1} = P_k Q_k,  R_{k+1} = P_k R_k P_k,
 * and the (r, c) matrix is touched only to form R_s (a symmetric product) and to apply Q (one
 * product) at each restart and at the end. Per 3-iteration block that is 2.12 r^2 c + ~9 r^3
 * multiply-adds (upper-block symmetric products counted at ~0.56) against 3 (1.56 r^2 c + 0.56 r^3)
 * for the standard form: fewer once c >= ~2.5 r. Restarting every GRAM_BLOCK iterations (X_s := Q X_s,
 * R recomputed from it) keeps the rounding errors of the r x r recursion from compounding.
 * Precision: every product rounds its inputs to bf16. Near convergence R_k and P_k are close to
 * multiples of I, and bf16 keeps 8 significant bits of the whole entry, so the recursion keeps
 * scalar multiples of I out of the products: R = rho I + R', P = pi I + M' (rho, mu = the mean
 * diagonals), Q = s I + Q'; only the primed parts go through bf16, the scalar terms are exact f32
 * arithmetic. Measured against the f32 standard iteration (README "Gram Newton-Schulz"): cosine
 * 0.99995-0.99997 on Gaussian inputs and 0.99993 (worst of the tiny model's 36 momentum matrices)
 * where the bf16 standard form gives 0.99974-0.99987 and 0.99982; rank-deficient inputs keep
 * their null directions at <= 4e-3 (standard: <= 3e-4). */
#define GRAM_BLOCK 3

static float mean_diag(const float *A, int64_t r) {
    double t = 0;
    for (int64_t i = 0; i < r; i++) t += A[i * r + i];
    return (float)(t / (double)r);
}

static void add_diag(float *A, int64_t r, float v) {
    for (int64_t i = 0; i < r; i++) A[i * r + i] += v;
}

/* y += a x */
static void axpy(float *restrict y, const float *restrict x, float a, int64_t n) {
#pragma omp simd
    for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
}

/* X := (s I + Q) X for X (r, c), or its transpose Xt (c, r) when tall: Xt (s I + Q)^T. Y (r c
 * floats) holds a copy of X on the reference backend, which reads operands while it writes. */
static nc_status gram_apply(int bf16, float *X, float *Y, const float *Q, float s, int64_t r, int64_t c, int tall) {
    const float *src = X;
    if (Y) { memcpy(Y, X, (size_t)(r * c) * sizeof(float)); src = Y; }
    if (tall) return ns_mm(bf16, c, r, r, src, r, 0, Q, r, 1, 1.0f, s, X, r);
    return ns_mm(bf16, r, c, r, Q, r, 0, src, c, 0, 1.0f, s, X, c);
}

/* the Gram iteration on X (r, c) or Xt (c, r) (tall), r <= c; R, M, Q, T (r, r) workspaces; Y (r c)
 * the reference backend's copy (NULL on the hardware backends) */
static nc_status ns_gram(int bf16, float *X, float *Y, float *R, float *M, float *Q, float *T, int64_t r, int64_t c,
                              int tall, int32_t steps, const double *abc, int32_t n_abc) {
    int64_t rr = r * r;
    int fresh = 1;   /* Q' = 0, s = 1: X is X_s */
    float s = 1.0f;
    for (int32_t k = 0; k < steps; k++) {
        const double *q = abc + 3 * (k < n_abc ? k : n_abc - 1);
        float a = (float)q[0], b = (float)q[1], cc = (float)q[2];
        if (k % GRAM_BLOCK == 0) {   /* restart: X_s := (s I + Q') X_s, R = X_s X_s^T */
            if (!fresh) NC_TRY(gram_apply(bf16, X, Y, Q, s, r, c, tall));
            fresh = 1;
            s = 1.0f;
            if (tall) NC_TRY(ns_sym(bf16, r, c, X, r, 1, X, r, 0, 1.0f, 0.0f, R, r));
            else NC_TRY(ns_sym(bf16, r, c, X, c, 0, X, c, 1, 1.0f, 0.0f, R, r));
        }
        /* M = b R + c R^2 with R = rho I + R': c R'^2 + (b + 2 c rho) R' + (b rho + c rho^2) I */
        float rho = mean_diag(R, r);
        add_diag(R, r, -rho);   /* R holds R' until the end of the iteration */
        memcpy(M, R, (size_t)rr * sizeof(float));
        NC_TRY(ns_sym(bf16, r, r, R, r, 0, R, r, 0, cc, b + 2.0f * cc * rho, M, r));
        add_diag(M, r, b * rho + cc * rho * rho);
        /* P = a I + M = pi I + M' */
        float mu = mean_diag(M, r), pi = a + mu;
        add_diag(M, r, -mu);   /* M holds M' */
        /* Q_{k+1} = P (s I + Q') = t I + Q'_{k+1}, Q'_{k+1} = pi Q' + M'Q' + s M' + (pi s - t) I. The
         * scalar t decides which directions the final bf16 product X_s -> Q X_s gets exactly
         * (its rounding error of X_s is multiplied by Q - t I): in the first block t = a s, Q's
         * eigenvalue on the null space of R_s (rank-deficient inputs keep near-null directions
         * near 0); later, with the spectrum clustered, t = pi s, the mean (measured cosines in
         * the README: either choice alone loses one of the two cases). */
        float t = k < GRAM_BLOCK ? a * s : pi * s;
        if (fresh) {
            memcpy(Q, M, (size_t)rr * sizeof(float));
            fresh = 0;
        } else {
            const float *Qsrc = Q;
            if (Y) { memcpy(T, Q, (size_t)rr * sizeof(float)); Qsrc = T; }
            NC_TRY(ns_mm(bf16, r, r, r, M, r, 0, Qsrc, r, 0, 1.0f, pi, Q, r));
            axpy(Q, M, s, rr);
        }
        add_diag(Q, r, pi * s - t);
        s = t;
        if (k + 1 < steps && (k + 1) % GRAM_BLOCK != 0) {
            /* R = P R P = pi^2 R + pi (M'R + R M') + M'R M', with T = M'R' and M'R = rho M' + T */
            NC_TRY(ns_mm(bf16, r, r, r, M, r, 0, R, r, 0, 1.0f, 0.0f, T, r));
            add_diag(R, r, rho);
            for (int64_t i0 = 0; i0 < r; i0 += 32)   /* 32 x 32 blocks on and above the diagonal */
                for (int64_t j0 = i0; j0 < r; j0 += 32) {
                    int64_t ie = i0 + 32 < r ? i0 + 32 : r, je = j0 + 32 < r ? j0 + 32 : r;
                    for (int64_t i = i0; i < ie; i++)
                        for (int64_t j = j0 > i ? j0 : i; j < je; j++) {
                            float v = pi * pi * R[i * r + j] + pi * (2.0f * rho * M[i * r + j] + T[i * r + j] + T[j * r + i]);
                            R[i * r + j] = v;
                            R[j * r + i] = v;
                        }
                }
            axpy(T, M, rho, rr);   /* T = M'R */
            NC_TRY(ns_sym(bf16, r, r, T, r, 0, M, r, 0, 1.0f, 1.0f, R, r));
        }
    }
    if (!fresh) NC_TRY(gram_apply(bf16, X, Y, Q, s, r, c, tall));
    return NC_OK;
}

/* does this (r <= c) iteration run in Gram form? GRAM: whenever c > r (nothing to gain on a
 * square matrix); AUTO: once c >= 3 r and r >= 64: below 3x the gain is noise or a loss, and small
 * matrices cost little either way and are where a rank-deficient input's null directions fare
 * worst (tools/bench/ns_forms.lua: rank 1 of 16 x 64 at cosine 0.995 to f32, 0.9987 at
 * 256 x 1024; one thread, ms per NS5 standard / Gram, bf16: 256 x 512 4.52 / 5.01, 256 x 768
 * 7.18 / 6.41, 256 x 1024 6.51 / 4.80, 512 x 2048 49.0 / 36.3; f32: 256 x 768 11.2 / 9.8,
 * 256 x 1024 12.5 / 9.4, 512 x 2048 91.1 / 67.4) */
static int use_gram(int32_t ns_form, int64_t r, int64_t c) {
    if (ns_form == NC_NS_FORM_GRAM) return c > r;
    return ns_form == NC_NS_FORM_AUTO && c >= 3 * r && r >= 64;
}

nc_status nc_optim_ns_inplace(float *x, int64_t rows, int64_t cols, int32_t steps, const double *abc,
                              int32_t n_abc, double fro_mult, double eps, int32_t ns_dtype, int32_t ns_form) {
    if (rows <= 0 || cols <= 0) return NC_OK;
    int bf16 = ns_dtype == NC_NS_BF16 || (ns_dtype == NC_NS_AUTO && nc_ns_dtype_auto() == NC_NS_BF16);
    int tall = rows > cols;
    int64_t r = tall ? cols : rows, c = tall ? rows : cols, n = r * c;
    int gram = use_gram(ns_form, r, c) && steps > 0;
    if (gram || bf16) {
        /* x itself is the first iterate (scaled in place, either orientation). Workspace: standard
         * Y (n), A, Bm (r, r); Gram R, M, Q, T (r, r) and, unless the products may write over an
         * operand (the hardware bf16 GEMM), Y (n) */
        int inplace = bf16 && nc_gemm_bf16_hw();
        int64_t floats = gram ? 4 * r * r + (inplace ? 0 : n) : n + 2 * r * r;
        int64_t bytes = (int64_t)sizeof(float) * floats;
        float *ws = nc_host_alloc(bytes);
        if (!ws) return nc_fail(NC_ERR_OOM, "newton_schulz: cannot allocate a %lld-byte workspace", (long long)bytes);
        scale_copy(x, x, n, (float)(1.0 / (fro_mult * nc_optim_fro_norm(x, n) + eps)));
        nc_status st;
        float *res = x;
        /* (inside a parallel region, nc_muon_step_many's one matrix per thread, the caller has
         * set OpenBLAS to one thread for the whole region) */
        int serial = !bf16 && r * r * c <= NC_NS_SERIAL_MACS && nc_threads() > 1 && !omp_in_parallel();
        if (serial) openblas_set_num_threads(1);
        if (gram) {
            float *R = ws, *M = R + r * r, *Q = M + r * r, *T = Q + r * r;
            st = ns_gram(bf16, x, inplace ? NULL : T + r * r, R, M, Q, T, r, c, tall, steps, abc, n_abc);
        } else {
            float *Y = ws, *A = ws + n, *Bm = A + r * r;
            st = ns_bf16(&res, x, Y, A, Bm, r, c, tall, steps, abc, n_abc);
        }
        if (serial) openblas_set_num_threads(nc_threads());
        if (st != NC_OK)   /* the GEMM's only failure is its packing buffers: say so here */
            st = nc_fail(st, "newton_schulz: the bf16 GEMM failed (out of memory for its packed operands)");
        else if (res != x) memcpy(x, res, (size_t)n * sizeof(float));
        nc_host_free(ws, bytes);
        return st;
    }
    /* X, Y (r, c) ping-pong, A, B (r, r) */
    int64_t bytes = (int64_t)sizeof(float) * (2 * n + 2 * r * r);
    float *ws = nc_host_alloc(bytes);
    if (!ws) return nc_fail(NC_ERR_OOM, "newton_schulz: cannot allocate a %lld-byte workspace", (long long)bytes);
    float *X = ws, *Y = ws + n, *A = ws + 2 * n, *Bm = A + r * r;
    if (tall) transpose(X, x, rows, cols);
    else memcpy(X, x, (size_t)n * sizeof(float));
    double nrm = nc_optim_fro_norm(X, n);
    scale_copy(X, X, n, (float)(1.0 / (fro_mult * nrm + eps)));
    X = ns_f32(X, Y, A, Bm, r, c, steps, abc, n_abc);
    if (tall) transpose(x, X, r, c);
    else memcpy(x, X, (size_t)n * sizeof(float));
    nc_host_free(ws, bytes);
    return NC_OK;
}

/* (rows, cols) of a tensor seen as a matrix: (shape[0], numel / shape[0]) */
static nc_status as_matrix(const char *op, const char *arg, const nc_tensor *t, int64_t *rows, int64_t *cols) {
    char b[NC_DESC_LEN];
    if (t->ndim < 2)
        return nc_fail(NC_ERR_SHAPE, "%s: %s must be a matrix (2 or more dims), got %s", op, arg,
                       nc_describe(t, b, sizeof b));
    *rows = t->shape[0];
    *cols = *rows ? nc_tensor_numel(t) / *rows : 0;
    return NC_OK;
}

static nc_status check_f32_cpu_contig(const char *op, const char *arg, const nc_tensor *t) {
    NC_TRY(nc_check_not_null(op, arg, t));
    NC_TRY(nc_check_dtype(op, arg, t, NC_F32));
    NC_TRY(nc_check_cpu(op, arg, t));
    return nc_check_contiguous(op, arg, t);
}

nc_status nc_newton_schulz_form(nc_tensor *out, const nc_tensor *x, int32_t steps, const double *abc,
                                int32_t n_abc, double fro_mult, double eps, int32_t ns_dtype, int32_t ns_form) {
    static const char *op = "newton_schulz";
    int32_t dev;
    NC_TRY(nc_check_one_device(op, &dev, 2, (const char *const[]){ "out", "x" }, (const nc_tensor *const[]){ out, x }));
    NC_TRY(nc_check_not_null(op, "out", out));
    NC_TRY(nc_check_dtype(op, "out", out, NC_F32));
    NC_TRY(nc_check_contiguous(op, "out", out));
    NC_TRY(nc_check_not_null(op, "x", x));
    NC_TRY(nc_check_dtype(op, "x", x, NC_F32));
    NC_TRY(nc_check_same_shape(op, "out", out, "x", x));
    int64_t rows = 0, cols = 0;
    NC_TRY(as_matrix(op, "x", x, &rows, &cols));
    if (steps < 0 || (steps > 0 && (!abc || n_abc < 1)))
        return nc_fail(NC_ERR_ARG, "%s: expected steps >= 0 and at least one (a, b, c) triple, got steps %d, %d triples",
                       op, steps, n_abc);
    NC_TRY(nc_optim_check_ns(op, ns_dtype, ns_form));   /* CUDA: f32 standard whatever they say */
    if (out != x) NC_TRY(nc_tensor_copy(out, x));
    if (dev == NC_CUDA) {   /* f32 (cuBLAS sgemm) whatever ns_dtype says */
        const nc_cuda_api *cu = nc_cuda_for(op);
        if (!cu) return NC_ERR_DEVICE;
        if (rows <= 0 || cols <= 0) return NC_OK;
        nc_tensor *ws = nc_cuda_buffer(op, NC_F32, nc_cuda_ns_ws_floats(rows, cols));
        if (!ws) return NC_ERR_OOM;
        nc_status st = cu->newton_schulz(nc_f32p(out), rows, cols, steps, abc, n_abc, fro_mult, eps, nc_f32p(ws));
        if (st != NC_OK) st = nc_cuda_err(op, cu, st);
        nc_tensor_release(ws);
        return st;
    }
    return nc_optim_ns_inplace(nc_f32p(out), rows, cols, steps, abc, n_abc, fro_mult, eps, ns_dtype, ns_form);
}

nc_status nc_newton_schulz_dtype(nc_tensor *out, const nc_tensor *x, int32_t steps, const double *abc,
                                 int32_t n_abc, double fro_mult, double eps, int32_t ns_dtype) {
    return nc_newton_schulz_form(out, x, steps, abc, n_abc, fro_mult, eps, ns_dtype, NC_NS_FORM_STANDARD);
}

nc_status nc_newton_schulz(nc_tensor *out, const nc_tensor *x, int32_t steps, const double *abc, int32_t n_abc,
                           double fro_mult, double eps) {
    return nc_newton_schulz_dtype(out, x, steps, abc, n_abc, fro_mult, eps, NC_NS_F32);
}

/* ---- SVD -------------------------------------------------------------------------------------- */
nc_status nc_svd(nc_tensor *u, nc_tensor *s, nc_tensor *vt, const nc_tensor *a) {
    static const char *op = "svd";
    NC_TRY(nc_check_not_null(op, "a", a));
    NC_TRY(nc_check_cpu(op, "a", a));
    NC_TRY(nc_check_ndim(op, "a", a, 2));
    int32_t dt = a->dtype;
    if (dt != NC_F32 && dt != NC_F64) {
        char b[NC_DESC_LEN];
        return nc_fail(NC_ERR_DTYPE, "%s: a must be f32 or f64, got %s", op, nc_describe(a, b, sizeof b));
    }
    int64_t m = a->shape[0], n = a->shape[1], k = m < n ? m : n;
    const char *names[3] = { "u", "s", "vt" };
    nc_tensor *outs[3] = { u, s, vt };
    int64_t want[3][2] = { { m, k }, { k, -1 }, { k, n } };
    for (int i = 0; i < 3; i++) {
        NC_TRY(nc_check_not_null(op, names[i], outs[i]));
        NC_TRY(nc_check_dtype(op, names[i], outs[i], dt));
        NC_TRY(nc_check_cpu(op, names[i], outs[i]));
        NC_TRY(nc_check_contiguous(op, names[i], outs[i]));
        NC_TRY(nc_check_shape(op, names[i], outs[i], i == 1 ? 1 : 2, want[i]));
    }
    if (k == 0) return NC_OK;
    if (m > 2147483647 || n > 2147483647) return nc_fail(NC_ERR_SHAPE, "%s: matrix too large for LAPACK", op);
    /* Row-major a (m, n) is column-major a^T (n, m). gesdd of a^T = V S U^T writes its "u" (n, k)
     * column-major = our vt (k, n) row-major, and its "vt" (k, m) column-major = our u (m, k). */
    nc_tensor *ac = nc_tensor_new_clone(a);
    if (!ac) return NC_ERR_OOM;
    int M = (int)n, N = (int)m, K = (int)k, lwork = -1, info = 0;
    int *iwork = malloc(sizeof(int) * 8 * (size_t)K);
    nc_status st = NC_OK;
    if (!iwork) { st = nc_fail(NC_ERR_OOM, "%s: out of memory", op); goto done; }
    if (dt == NC_F32) {
        float q;
        sgesdd_("S", &M, &N, nc_f32p(ac), &M, nc_f32p(s), nc_f32p(vt), &M, nc_f32p(u), &K, &q, &lwork, iwork, &info, 1);
        lwork = (int)q + 1;
        float *work = malloc(sizeof(float) * (size_t)lwork);
        if (!work) { st = nc_fail(NC_ERR_OOM, "%s: out of memory", op); goto done; }
        sgesdd_("S", &M, &N, nc_f32p(ac), &M, nc_f32p(s), nc_f32p(vt), &M, nc_f32p(u), &K, work, &lwork, iwork, &info, 1);
        free(work);
    } else {
        double q, *A = (double *)nc_tensor_data(ac);
        double *S = (double *)nc_tensor_data(s), *U = (double *)nc_tensor_data(u), *VT = (double *)nc_tensor_data(vt);
        dgesdd_("S", &M, &N, A, &M, S, VT, &M, U, &K, &q, &lwork, iwork, &info, 1);
        lwork = (int)q + 1;
        double *work = malloc(sizeof(double) * (size_t)lwork);
        if (!work) { st = nc_fail(NC_ERR_OOM, "%s: out of memory", op); goto done; }
        dgesdd_("S", &M, &N, A, &M, S, VT, &M, U, &K, work, &lwork, iwork, &info, 1);
        free(work);
    }
    if (info != 0) st = nc_fail(NC_ERR_ARG, "%s: LAPACK gesdd failed (info %d)%s", op, info,
                                info > 0 ? ": no convergence (NaN/Inf in the input?)" : "");
done:
    free(iwork);
    nc_tensor_release(ac);
    return st;
}

/* ---- randomized SVD projector ---------------------------------------------------------------- */
/* Orthonormalize the columns of the column-major (a, k) matrix Y in place (Householder QR). */
static nc_status orthonormalize(float *Y, int a, int k) {
    int info = 0, lwork = -1;
    float q1, q2;
    float *tau = malloc(sizeof(float) * (size_t)k);
    if (!tau) return nc_fail(NC_ERR_OOM, "rsvd: out of memory");
    sgeqrf_(&a, &k, Y, &a, tau, &q1, &lwork, &info);
    sorgqr_(&a, &k, &k, Y, &a, tau, &q2, &lwork, &info);
    lwork = (int)(q1 > q2 ? q1 : q2) + 1;
    float *work = malloc(sizeof(float) * (size_t)lwork);
    if (!work) { free(tau); return nc_fail(NC_ERR_OOM, "rsvd: out of memory"); }
    sgeqrf_(&a, &k, Y, &a, tau, work, &lwork, &info);
    if (info == 0) sorgqr_(&a, &k, &k, Y, &a, tau, work, &lwork, &info);
    free(work);
    free(tau);
    if (info != 0) return nc_fail(NC_ERR_ARG, "rsvd: LAPACK QR failed (info %d)", info);
    return NC_OK;
}

nc_status nc_rsvd_projector(nc_tensor *proj, const nc_tensor *g, int32_t side, int32_t oversample,
                            int32_t power_iters, uint64_t seed, uint64_t counter) {
    static const char *op = "rsvd_projector";
    int32_t dev;
    NC_TRY(nc_check_one_device(op, &dev, 2, (const char *const[]){ "proj", "g" }, (const nc_tensor *const[]){ proj, g }));
    if (dev == NC_CUDA) {
        /* The refresh runs on the CPU (it is rare: once per update_gap steps, and QR / SVD are
         * LAPACK): download g, run this function on host copies, upload proj. */
        NC_TRY(nc_check_dtype(op, "g", g, NC_F32));
        NC_TRY(nc_check_dtype(op, "proj", proj, NC_F32));
        NC_TRY(nc_check_ndim(op, "proj", proj, 2));
        nc_tensor *hg = nc_tensor_new_to(g, NC_F32, NC_CPU);
        if (!hg) return NC_ERR_DEVICE;
        nc_tensor *hp = nc_tensor_new(NC_F32, NC_CPU, 2, proj->shape);
        nc_status st = hp ? nc_rsvd_projector(hp, hg, side, oversample, power_iters, seed, counter) : NC_ERR_OOM;
        if (st == NC_OK) st = nc_tensor_copy(proj, hp);
        nc_tensor_release(hp);
        nc_tensor_release(hg);
        return st;
    }
    NC_TRY(check_f32_cpu_contig(op, "g", g));
    NC_TRY(check_f32_cpu_contig(op, "proj", proj));
    NC_TRY(nc_check_ndim(op, "g", g, 2));
    NC_TRY(nc_check_ndim(op, "proj", proj, 2));
    if (side != NC_GALORE_LEFT && side != NC_GALORE_RIGHT)
        return nc_fail(NC_ERR_ARG, "%s: side must be NC_GALORE_LEFT (0) or NC_GALORE_RIGHT (1), got %d", op, side);
    if (oversample < 0 || power_iters < 0)
        return nc_fail(NC_ERR_ARG, "%s: oversample and power_iters must be >= 0", op);
    int64_t m = g->shape[0], n = g->shape[1];
    /* A = G (side LEFT: left vectors, a = m) or G^T (RIGHT: right vectors of G, a = n) */
    int64_t a = side == NC_GALORE_LEFT ? m : n, b = side == NC_GALORE_LEFT ? n : m;
    int64_t r = proj->shape[1];
    char bp[NC_DESC_LEN], bg[NC_DESC_LEN];
    if (proj->shape[0] != a || r < 1 || r > (a < b ? a : b))
        return nc_fail(NC_ERR_SHAPE, "%s: proj must be (%lld, r) with 1 <= r <= %lld for g %s, got %s", op,
                       (long long)a, (long long)(a < b ? a : b), nc_describe(g, bg, sizeof bg),
                       nc_describe(proj, bp, sizeof bp));
    int64_t k = r + oversample;
    if (k > a) k = a;
    if (k > b) k = b;
    /* Column-major views. g row-major (m, n) = Gc column-major (n, m), ld n.
     * A = Gc^T when side LEFT (transA = Trans), A = Gc when RIGHT (NoTrans). */
    const float *Gc = nc_f32p(g);
    enum CBLAS_TRANSPOSE tA = side == NC_GALORE_LEFT ? CblasTrans : CblasNoTrans;
    enum CBLAS_TRANSPOSE tAt = side == NC_GALORE_LEFT ? CblasNoTrans : CblasTrans;
    int64_t bytes = (int64_t)sizeof(float) * (a * k + b * k + k * k + k);
    float *ws = nc_host_alloc(bytes);
    if (!ws) return nc_fail(NC_ERR_OOM, "%s: cannot allocate a workspace", op);
    float *Y = ws, *Z = Y + a * k, *VT = Z + b * k, *S = VT + k * k;
    nc_status st = NC_OK;
    /* Omega (b, k) column-major = a (k, b) row-major tensor filled by the core's Philox normal */
    {
        int64_t shp[2] = { k, b };
        nc_tensor *om = nc_tensor_new(NC_F32, NC_CPU, 2, shp);
        if (!om) { st = NC_ERR_OOM; goto done; }
        st = nc_tensor_randn(om, seed, counter, 0.0, 1.0);
        if (st == NC_OK)   /* Y (a, k) = A Omega */
            cblas_sgemm(CblasColMajor, tA, CblasNoTrans, (blasint)a, (blasint)k, (blasint)b, 1.0f, Gc, (blasint)n,
                        nc_f32p(om), (blasint)b, 0.0f, Y, (blasint)a);
        nc_tensor_release(om);
        if (st != NC_OK) goto done;
    }
    if ((st = orthonormalize(Y, (int)a, (int)k)) != NC_OK) goto done;
    for (int32_t it = 0; it < power_iters; it++) {
        /* Z (b, k) = A^T Y; orthonormalize; Y = A Z; orthonormalize */
        cblas_sgemm(CblasColMajor, tAt, CblasNoTrans, (blasint)b, (blasint)k, (blasint)a, 1.0f, Gc, (blasint)n, Y,
                    (blasint)a, 0.0f, Z, (blasint)b);
        if ((st = orthonormalize(Z, (int)b, (int)k)) != NC_OK) goto done;
        cblas_sgemm(CblasColMajor, tA, CblasNoTrans, (blasint)a, (blasint)k, (blasint)b, 1.0f, Gc, (blasint)n, Z,
                    (blasint)b, 0.0f, Y, (blasint)a);
        if ((st = orthonormalize(Y, (int)a, (int)k)) != NC_OK) goto done;
    }
    /* Z (b, k) = A^T Q = (Q^T A)^T; SVD Z = Uz S Vz^T, so Q^T A = Vz S Uz^T and the top left
     * singular vectors of A are Q Vz; keep r of them. */
    cblas_sgemm(CblasColMajor, tAt, CblasNoTrans, (blasint)b, (blasint)k, (blasint)a, 1.0f, Gc, (blasint)n, Y,
                (blasint)a, 0.0f, Z, (blasint)b);
    {
        int B = (int)b, K = (int)k, lwork = -1, info = 0;
        float q;
        int *iwork = malloc(sizeof(int) * 8 * (size_t)K);
        if (!iwork) { st = nc_fail(NC_ERR_OOM, "%s: out of memory", op); goto done; }
        /* jobz 'O': U overwrites Z (unused), VT (k, k) written */
        sgesdd_("O", &B, &K, Z, &B, S, NULL, &B, VT, &K, &q, &lwork, iwork, &info, 1);
        lwork = (int)q + 1;
        float *work = malloc(sizeof(float) * (size_t)lwork);
        if (!work) { free(iwork); st = nc_fail(NC_ERR_OOM, "%s: out of memory", op); goto done; }
        sgesdd_("O", &B, &K, Z, &B, S, NULL, &B, VT, &K, work, &lwork, iwork, &info, 1);
        free(work);
        free(iwork);
        if (info != 0) { st = nc_fail(NC_ERR_ARG, "%s: LAPACK sgesdd failed (info %d)", op, info); goto done; }
    }
    /* proj row-major (a, r) = column-major (r, a) = VT[:r, :] (r, k) * Q^T (k, a) */
    cblas_sgemm(CblasColMajor, CblasNoTrans, CblasTrans, (blasint)r, (blasint)a, (blasint)k, 1.0f, VT, (blasint)k, Y,
                (blasint)a, 0.0f, nc_f32p(proj), (blasint)r);
done:
    nc_host_free(ws, bytes);
    return st;
}
