/* kernels/cpu/amx.c — the training GEMMs: bf16 x bf16 -> f32 and s8 x s8 -> s32, on Intel AMX tiles
 * (TDPBF16PS, TDPBSSD) or, without AMX, on AVX-512 BF16 / VNNI block kernels (VDPBF16PS, VPDPBUSD:
 * AMD Zen 4+, Intel Cooper Lake+), with packing from f32 (or i8) tensors of any 2-D strides.
 * Backend: nc_gemm_backend() / nc_set_gemm_backend() ($NC_GEMM); the scalar references otherwise.
 *
 * Promise:
 *  - Detection (once, thread-safe): CPUID.(7,0):EDX bits 24 (AMX-TILE), 22 (AMX-BF16), 25
 *    (AMX-INT8), OSXSAVE and XCR0 bits 17-18, then arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA)
 *    and a read-back of the granted mask. Any failure leaves AMX unavailable (never a crash) with
 *    the reason in nc_amx_status(). nc_cpu_amx() is 1 only when available AND enabled: NC_AMX=0
 *    in the environment, nc_set_amx(0) or the scalar kernel selection (NC_KERNEL=scalar,
 *    nc_set_cpu_kernel("scalar")) disable it.
 *  - nc_gemm_bf16: out (M, N) = alpha * op(a)' op(b)' + beta * out, where ' is: multiply (or divide)
 *    op(a)'s reduction column k by kscale[k] in f32 (optional), then round to bf16 (nearest even);
 *    op(b) is rounded to bf16 as is. Products of bf16 are exact; AMX accumulates them in f32
 *    (each output element by one thread, K in a fixed order: results do not depend on the thread
 *    count). Bf16 has 8 significant bits, so integers |v| <= 256 (int8 codes, ternary codes) pass
 *    exactly. AMX treats bf16 denormals as zero (|v| < 1.2e-38).
 *    Reference (scalar kernel or no AMX): the same rounded inputs, products summed in double.
 *  - nc_gemm_bf16_rows: the same GEMM through row lists (Collider's kept rows): rows_m picks the
 *    rows of op(a) and the out rows written (the others untouched, or zeroed with zero_rest),
 *    rows_k the reduction's k (op(a) columns, op(b) rows, kscale entries). The packers read the
 *    listed rows in place (the index maps of `mat`, the out row map of the epilogue), so no
 *    gathered copy exists; the packed tiles hold the same values as packing gathered copies, so the
 *    result is bitwise that of gather + nc_gemm_bf16 + scatter (reference: the same).
 *  - nc_gemm_s8: out (M, N) = op(a) op(b) as exact int32 sums of int8 codes (a and b f32 holding
 *    integers in [-128, 127], or i8); into an i32 out the raw sums (bit-exact to the reference),
 *    into an f32 out ((float)sum * col_scale[n]) * (or /) row_scale[m] (each scale optional,
 *    1 element broadcasts). |sum| must stay below 2^31: K <= 131072 is checked.
 *  - nc_quant_codes: codes = clamp(nearbyint(x * scale_row), lo, hi) (or x / scale_row), the
 *    float operations of the BitNet quantizers (kernels/cpu/quant.c), so codes recovered from a
 *    fake-quantized tensor and its scales are the quantizer's integers exactly.
 * Layouts: packed A is 16-row x 32-bf16 tiles (16 x 64 int8), row-major in the tile; packed B is
 * the VNNI layout: tile row r holds, for 16 columns n, the pair (k = 2r, 2r + 1) (quad 4r..4r+3
 * for int8). M and N are padded to 32 (the 2 x 2 tile micro-kernel), K to 32 (64 for int8), with
 * zeros. Threads own contiguous ranges of 32-row blocks and pack a share of the one B (one parallel
 * region and one barrier per GEMM, see amx_threads).
 * The packers and epilogues use AVX-512 F/BW/VL/DQ through target attributes (every AMX CPU has
 * it); the references and nc_quant_codes' scalar loop are plain C.
 */
#include "internal.h"
#include <cpuid.h>
#include <errno.h>
#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <omp.h>

#define ARCH_GET_XCOMP_PERM 0x1022
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

/* ---- detection ------------------------------------------------------------------------------ */
static pthread_once_t amx_once = PTHREAD_ONCE_INIT;
static int amx_hw;             /* 1 = usable on this machine */
static int amx_mode = -1;      /* nc_set_amx: -1 default ($NC_AMX), 0 off, 1 on */
static char amx_why[256] = "not probed";

static void amx_probe(void) {
    unsigned a, b, c, d;
    if (__get_cpuid_max(0, NULL) < 7) { snprintf(amx_why, sizeof amx_why, "AMX unavailable: no CPUID leaf 7"); return; }
    __cpuid_count(7, 0, a, b, c, d);
    int tile = (d >> 24) & 1, bf16 = (d >> 22) & 1, i8 = (d >> 25) & 1;
    if (!(tile && bf16 && i8)) {
        snprintf(amx_why, sizeof amx_why, "AMX unavailable: CPUID says AMX-TILE %d, AMX-BF16 %d, AMX-INT8 %d", tile, bf16, i8);
        return;
    }
    __cpuid(1, a, b, c, d);
    if (!((c >> 27) & 1)) { snprintf(amx_why, sizeof amx_why, "AMX unavailable: OSXSAVE is off"); return; }
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & (3u << 17)) != (3u << 17)) {
        snprintf(amx_why, sizeof amx_why, "AMX unavailable: the OS has not enabled the tile state (XCR0 = 0x%x)", lo);
        return;
    }
    if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) != 0) {
        snprintf(amx_why, sizeof amx_why, "AMX unavailable: arch_prctl(ARCH_REQ_XCOMP_PERM) refused (%s)", strerror(errno));
        return;
    }
    unsigned long mask = 0;
    if (syscall(SYS_arch_prctl, ARCH_GET_XCOMP_PERM, &mask) != 0 || !(mask & (1ul << XFEATURE_XTILEDATA))) {
        snprintf(amx_why, sizeof amx_why, "AMX unavailable: tile data permission not granted (mask 0x%lx)", mask);
        return;
    }
    amx_hw = 1;
    snprintf(amx_why, sizeof amx_why, "AMX available (AMX-TILE, AMX-BF16, AMX-INT8)");
}

static int amx_available(void) {
    pthread_once(&amx_once, amx_probe);
    return amx_hw;
}

static int gemm_mode_now(void);

int32_t nc_cpu_amx(void) {
    if (!amx_available() || !nc_cpu_avx2()) return 0;   /* NC_KERNEL=scalar disables it */
    int g = gemm_mode_now();
    if (g == 2 || g == 3) return 0;                       /* nc_set_gemm_backend avx512 / reference */
    int m = __atomic_load_n(&amx_mode, __ATOMIC_RELAXED);
    if (m < 0) {
        const char *e = getenv("NC_AMX");
        return !(e && (!strcmp(e, "0") || !strcmp(e, "off") || !strcmp(e, "false")));
    }
    return m;
}

/* nc_set_gemm_backend / $NC_GEMM: 0 auto, 1 amx only, 2 avx512 only, 3 reference */
static int gemm_mode = -1;
static const char *const gemm_modes[] = { "auto", "amx", "avx512", "reference" };

static int gemm_mode_now(void) {
    int m = __atomic_load_n(&gemm_mode, __ATOMIC_RELAXED);
    if (m >= 0) return m;
    const char *e = getenv("NC_GEMM");
    for (int i = 1; e && i < 4; i++)
        if (!strcmp(e, gemm_modes[i])) return i;
    return 0;
}

/* The AVX-512 block kernels (no AMX, or AMX disabled): BF16 for nc_gemm_bf16, VNNI for nc_gemm_s8,
 * under the "avx512" kernel selection (NC_KERNEL=avx2 / scalar turn them off like the others). */
static int vec_bf16(void) {
    static int has = -1;
    if (has < 0)
        has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
              __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
              __builtin_cpu_supports("avx512bf16");
    int m = gemm_mode_now();
    return has && nc_cpu_avx512() && (m == 2 || (m == 0 && !nc_cpu_amx()));
}

static int vec_vnni(void) {
    static int has = -1;
    if (has < 0)
        has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
              __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
              __builtin_cpu_supports("avx512vnni");
    int m = gemm_mode_now();
    return has && nc_cpu_avx512() && (m == 2 || (m == 0 && !nc_cpu_amx()));
}

int32_t nc_cpu_gemm_fast(void) { return nc_cpu_amx() || (vec_bf16() && vec_vnni()); }

const char *nc_gemm_backend(void) {
    if (nc_cpu_amx()) return "amx";
    if (vec_bf16() && vec_vnni()) return "avx512-bf16-vnni";
    if (vec_vnni()) return "avx512-vnni (bf16: reference)";
    if (vec_bf16()) return "avx512-bf16 (s8: reference)";
    return "reference";
}

nc_status nc_set_gemm_backend(const char *name) {
    static const char *op = "set_gemm_backend";
    if (!name) return nc_fail(NC_ERR_ARG, "%s: name is NULL", op);
    int m = -1;
    for (int i = 0; i < 4; i++)
        if (!strcmp(name, gemm_modes[i])) m = i;
    if (m < 0) return nc_fail(NC_ERR_ARG, "%s: expected \"auto\", \"amx\", \"avx512\" or \"reference\", got \"%s\"", op, name);
    int old = __atomic_exchange_n(&gemm_mode, m, __ATOMIC_RELAXED);
    const char *why = NULL;
    if (m == 1 && !nc_cpu_amx()) why = nc_amx_status();
    if (m == 2 && !(vec_bf16() && vec_vnni()))
        why = "the CPU lacks AVX-512 BF16 or VNNI, or the kernel selection is not \"avx512\"";
    if (why) {
        __atomic_store_n(&gemm_mode, old, __ATOMIC_RELAXED);
        return nc_fail(NC_ERR_UNSUPPORTED, "%s: \"%s\" is not available: %s", op, name, why);
    }
    return NC_OK;
}

const char *nc_amx_status(void) {
    amx_available();
    if (amx_hw && !nc_cpu_amx()) return "AMX available but disabled (NC_AMX=0, nc_set_amx(0) or the scalar kernel)";
    return amx_why;
}

nc_status nc_set_amx(int32_t mode) {
    if (mode != -1 && mode != 0 && mode != 1) return nc_fail(NC_ERR_ARG, "set_amx: expected -1, 0 or 1, got %d", mode);
    if (mode == 1 && !amx_available()) return nc_fail(NC_ERR_UNSUPPORTED, "set_amx: %s", amx_why);
    __atomic_store_n(&amx_mode, mode, __ATOMIC_RELAXED);
    return NC_OK;
}

/* ---- operands ------------------------------------------------------------------------------- */
/* op(t) as a logical (rows, cols) matrix: element (i, k) at p[RI(i) * si + CI(k) * sk], where the
 * optional index maps ri / ci (nc_gemm_bf16_rows' row lists) pick rows / columns of the stored
 * matrix (rows = the map's length); NULL = the identity */
typedef struct { const void *p; int64_t rows, cols, si, sk; int32_t dtype; const int64_t *ri, *ci; } mat;
#define RI(m, i) ((m)->ri ? (m)->ri[i] : (i))
#define CI(m, k) ((m)->ci ? (m)->ci[k] : (k))

static mat mat_of(const nc_tensor *t, int trans) {
    mat m = { nc_ptr(t), t->shape[0], t->shape[1], t->strides[0], t->strides[1], t->dtype, NULL, NULL };
    if (trans) { int64_t r = m.rows; m.rows = m.cols; m.cols = r; r = m.si; m.si = m.sk; m.sk = r; }
    return m;
}

static inline float mat_at(const mat *m, int64_t i, int64_t k) {
    int64_t o = RI(m, i) * m->si + CI(m, k) * m->sk;
    return m->dtype == NC_I8 ? (float)((const int8_t *)m->p)[o] : ((const float *)m->p)[o];
}

/* bf16 round to nearest even; NaN stays (quiet) NaN */
static inline uint16_t bf16_rne(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t r = (u + 0x7fffu + ((u >> 16) & 1)) >> 16, qn = (u >> 16) | 0x40;
    return (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? qn : r);   /* branch-free: vectorizes */
}

static inline double bf16_val(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* the value op(a)' (i, k) feeds the bf16 GEMM: kscale applied in f32, then bf16 */
static inline uint16_t a_bf16(const mat *a, int64_t i, int64_t k, const float *ks, int64_t nks, int div) {
    float v = mat_at(a, i, k);
    if (ks) { float s = ks[nks == 1 ? 0 : CI(a, k)]; v = div ? v / s : v * s; }
    return bf16_rne(v);
}

static inline int8_t s8_of(float v) {
    v = v > 127.0f ? 127.0f : (v < -128.0f ? -128.0f : v);
    return (int8_t)(int)v;   /* codes are integers; a fraction truncates */
}

static inline int8_t mat_s8(const mat *m, int64_t i, int64_t k) {
    int64_t o = RI(m, i) * m->si + CI(m, k) * m->sk;
    return m->dtype == NC_I8 ? ((const int8_t *)m->p)[o] : s8_of(((const float *)m->p)[o]);
}

/* ---- checks --------------------------------------------------------------------------------- */
static nc_status check_operand(const char *op, const char *name, const nc_tensor *t, int allow_i8) {
    NC_TRY(nc_check_not_null(op, name, t));
    NC_TRY(nc_check_cpu(op, name, t));
    NC_TRY(nc_check_ndim(op, name, t, 2));
    if (t->dtype != NC_F32 && !(allow_i8 && t->dtype == NC_I8)) {
        char b[NC_DESC_LEN];
        return nc_fail(NC_ERR_DTYPE, "%s: expected %s f32%s, got %s", op, name, allow_i8 ? " or i8" : "",
                       nc_describe(t, b, sizeof b));
    }
    return NC_OK;
}

static nc_status check_gemm(const char *op, const nc_tensor *out, const mat *a, const mat *b, int out_i32) {
    NC_TRY(nc_check_not_null(op, "out", out));
    NC_TRY(nc_check_cpu(op, "out", out));
    NC_TRY(nc_check_ndim(op, "out", out, 2));
    if (out->dtype != NC_F32 && !(out_i32 && out->dtype == NC_I32)) {
        char bo[NC_DESC_LEN];
        return nc_fail(NC_ERR_DTYPE, "%s: expected out f32%s, got %s", op, out_i32 ? " or i32" : "", nc_describe(out, bo, sizeof bo));
    }
    if (a->cols != b->rows || out->shape[0] != a->rows || out->shape[1] != b->cols)
        return nc_fail(NC_ERR_SHAPE, "%s: op(a) (%lld, %lld) x op(b) (%lld, %lld) does not give out (%lld, %lld)", op,
                       (long long)a->rows, (long long)a->cols, (long long)b->rows, (long long)b->cols,
                       (long long)out->shape[0], (long long)out->shape[1]);
    return NC_OK;
}

static nc_status check_scale(const char *op, const char *name, const nc_tensor *s, int64_t n) {
    if (!s) return NC_OK;
    NC_TRY(nc_check_dtype(op, name, s, NC_F32));
    NC_TRY(nc_check_cpu(op, name, s));
    NC_TRY(nc_check_contiguous(op, name, s));
    int64_t k = nc_tensor_numel(s);
    if (k != 1 && k != n) {
        char b[NC_DESC_LEN];
        return nc_fail(NC_ERR_SHAPE, "%s: expected %s with 1 or %lld elements, got %s", op, name, (long long)n,
                       nc_describe(s, b, sizeof b));
    }
    return NC_OK;
}

/* ---- tile machinery ------------------------------------------------------------------------- */
typedef struct __attribute__((aligned(64))) {
    uint8_t palette, start_row, rsv[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tilecfg;

static void tiles_config(void) {
    tilecfg cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int i = 0; i < 8; i++) { cfg.colsb[i] = 64; cfg.rows[i] = 16; }
    _tile_loadconfig(&cfg);
}

#define TILE_BYTES 1024
static inline int64_t rup(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

/* Packing. Padding (rows >= M, columns >= N, k >= K) must be zero: the buffer is cleared first
 * when padding exists. Each layout is filled in the order that reads the source contiguously
 * (row-major or transposed), so strided reads never hop across rows per element. */
/* The packers below run only on AMX machines, which all have AVX-512 F/BW/VL/DQ: compiled for it
 * (the rest of this file, incl. the references, stays baseline x86-64). */
#define NC_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))

/* 16 floats -> their bf16 bits (round to nearest even, NaN -> quiet NaN) in the low half of
 * each 32-bit lane: the same integer operations as bf16_rne */
NC_AVX512 static inline __m512i rne16(__m512 v) {
    __m512i u = _mm512_castps_si512(v);
    __m512i hi = _mm512_srli_epi32(u, 16);
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)),
                                                   _mm512_and_si512(hi, _mm512_set1_epi32(1))), 16);
    __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    return _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(hi, _mm512_set1_epi32(0x40)));
}

static inline __mmask16 tail16(int64_t n) { return n >= 16 ? (__mmask16)0xffff : n <= 0 ? 0 : (__mmask16)((1u << n) - 1); }

/* 16 (masked) values of x (op) scale, op by mode: 0 none, 1 * ks[j], 2 / ks[j], 3 * s, 4 / s */
NC_AVX512 static inline __m512 scaled16(const float *x, const float *ks, __m512 s, int mode, __mmask16 m) {
    __m512 v = _mm512_maskz_loadu_ps(m, x);
    switch (mode) {
    case 0: return v;
    case 1: return _mm512_mul_ps(v, _mm512_mask_loadu_ps(_mm512_set1_ps(1.0f), m, ks));
    case 2: return _mm512_div_ps(v, _mm512_mask_loadu_ps(_mm512_set1_ps(1.0f), m, ks));
    case 3: return _mm512_mul_ps(v, s);
    default: return _mm512_div_ps(v, s);
    }
}

/* d[j] = bf16(x[j] (op) scale) for j < n */
NC_AVX512 static inline __attribute__((always_inline)) void cvt_run(uint16_t *restrict d, const float *restrict x, int64_t n,
                                                                   const float *restrict ks, float s, int mode) {
    __m512 sv = _mm512_set1_ps(s);
    for (int64_t j = 0; j < n; j += 16) {
        __mmask16 m = tail16(n - j);
        __m512i r = rne16(scaled16(x + j, ks ? ks + j : NULL, sv, mode, m));
        _mm256_mask_storeu_epi16(d + j, m, _mm512_cvtepi32_epi16(r));
    }
}

/* in place 16 x 16 transpose of 32-bit words: w[i] lane j <- w[j] lane i */
NC_AVX512 static inline void transpose16(__m512i w[16]) {
    __m512i t[16], u[16];
    for (int j = 0; j < 16; j += 2) {
        t[j] = _mm512_unpacklo_epi32(w[j], w[j + 1]);
        t[j + 1] = _mm512_unpackhi_epi32(w[j], w[j + 1]);
    }
    for (int j = 0; j < 16; j += 4) {   /* u[j + c] lane L = rows j..j+3 of column 4L + c */
        u[j] = _mm512_unpacklo_epi64(t[j], t[j + 2]);
        u[j + 1] = _mm512_unpackhi_epi64(t[j], t[j + 2]);
        u[j + 2] = _mm512_unpacklo_epi64(t[j + 1], t[j + 3]);
        u[j + 3] = _mm512_unpackhi_epi64(t[j + 1], t[j + 3]);
    }
    for (int c = 0; c < 4; c++) {       /* 4 x 4 transpose of 128-bit lanes of u[c], u[4 + c], u[8 + c], u[12 + c] */
        __m512i x0 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0x44), x1 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0xEE);
        __m512i x2 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0x44), x3 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0xEE);
        w[c] = _mm512_shuffle_i32x4(x0, x2, 0x88);
        w[4 + c] = _mm512_shuffle_i32x4(x0, x2, 0xDD);
        w[8 + c] = _mm512_shuffle_i32x4(x1, x3, 0x88);
        w[12 + c] = _mm512_shuffle_i32x4(x1, x3, 0xDD);
    }
}

/* bf16 A: tile (mb, kb) at (mb * KB + kb) * 512 elements, row i of the tile = 32 k's */
NC_AVX512 static void pack_a_bf16(uint16_t *dst, const mat *a, int64_t Mp, int64_t Kp, const float *ks, int64_t nks, int div) {
    int64_t M = a->rows, K = a->cols, KB = Kp / 32;
    if (Mp != M || Kp != K) memset(dst, 0, (size_t)(Mp * Kp * 2));
    int par = M * K >= NC_PAR_MIN;
    if (a->dtype == NC_F32 && a->sk == 1 && !a->ci) {          /* rows contiguous: one row at a time */
        int mode = !ks ? 0 : nks == 1 ? (div ? 4 : 3) : (div ? 2 : 1);
        float s1 = ks ? ks[0] : 1.0f;
#pragma omp parallel for schedule(static) num_threads(nc_threads()) if (par)
        for (int64_t i = 0; i < M; i++) {
            uint16_t *row = dst + (i / 16) * KB * 512 + (i % 16) * 32;
            const float *src = (const float *)a->p + RI(a, i) * a->si;
            for (int64_t k0 = 0; k0 < K; k0 += 32)
                cvt_run(row + (k0 / 32) * 512, src + k0, K - k0 < 32 ? K - k0 : 32, ks ? ks + k0 : NULL, s1, mode);
        }
    } else if (a->dtype == NC_F32 && a->si == 1 && !a->ri) {   /* columns contiguous: pairs of k rows, 16 x 16 word transpose */
        int64_t MBt = (M + 15) / 16, nk = (K + 31) / 32;
        int mode = !ks ? 0 : (div ? 4 : 3);
#pragma omp parallel for schedule(static) num_threads(nc_threads()) if (par)
        for (int64_t kb = 0; kb < nk; kb++) {
            for (int64_t mb = 0; mb < MBt; mb++) {
                int64_t i0 = mb * 16;
                __mmask16 m = tail16(M - i0);
                __m512i w[16];
                for (int r = 0; r < 16; r++) {
                    int64_t k = kb * 32 + 2 * r;
                    __m512i lo = _mm512_setzero_si512(), hi = lo;
                    if (k < K) {
                        int64_t kk = CI(a, k);
                        __m512 s0 = _mm512_set1_ps(ks ? ks[nks == 1 ? 0 : kk] : 1.0f);
                        lo = rne16(scaled16((const float *)a->p + kk * a->sk + i0, NULL, s0, mode, m));
                    }
                    if (k + 1 < K) {
                        int64_t kk = CI(a, k + 1);
                        __m512 s1 = _mm512_set1_ps(ks ? ks[nks == 1 ? 0 : kk] : 1.0f);
                        hi = rne16(scaled16((const float *)a->p + kk * a->sk + i0, NULL, s1, mode, m));
                    }
                    w[r] = _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16));   /* lane i: pair (k, k + 1) of row i0 + i */
                }
                transpose16(w);                                                 /* w[i] lane r: pair r of row i0 + i */
                uint32_t *t = (uint32_t *)(dst + (mb * KB + kb) * 512);
                for (int i = 0; i < 16; i++) _mm512_store_si512(t + i * 16, w[i]);
            }
        }
    } else {                                          /* i8 or general strides */
#pragma omp parallel for schedule(static) num_threads(nc_threads()) if (par)
        for (int64_t i = 0; i < M; i++) {
            uint16_t *row = dst + (i / 16) * KB * 512 + (i % 16) * 32;
            for (int64_t k = 0; k < K; k++)
                row[(k / 32) * 512 + k % 32] = a_bf16(a, i, k, ks, nks, div);
        }
    }
}

/* bf16 B (VNNI pairs): tile (nb, kb) at (nb * KB + kb) * 512; as uint32 words, word (r, n) of the
 * tile = op(b)(32kb + 2r, 16nb + n) | op(b)(32kb + 2r + 1, 16nb + n) << 16 */
NC_AVX512 static void pack_b_bf16(uint16_t *dst, const mat *b, int64_t Np, int64_t Kp) {
    int64_t K = b->rows, N = b->cols, KB = Kp / 32, P = (K + 1) / 2;
    if (Np != N || Kp != K) memset(dst, 0, (size_t)(Np * Kp * 2));
    uint32_t *w = (uint32_t *)dst;
    int par = N * K >= NC_PAR_MIN;
    if (b->dtype == NC_F32 && b->sk == 1 && !b->ci) {          /* b stored (K, N): two rows of op(b) per pair */
#pragma omp parallel for schedule(static) num_threads(nc_threads()) if (par)
        for (int64_t p = 0; p < P; p++) {
            int64_t k = 2 * p;
            uint32_t *pw = w + (k / 32) * 256 + (p % 16) * 16;
            int odd = k + 1 >= K;
            const float *r0 = (const float *)b->p + RI(b, k) * b->si, *r1 = odd ? r0 : (const float *)b->p + RI(b, k + 1) * b->si;
            for (int64_t n0 = 0; n0 < N; n0 += 16) {
                __mmask16 m = tail16(N - n0);
                __m512i lo = rne16(_mm512_maskz_loadu_ps(m, r0 + n0));
                __m512i hi = odd ? _mm512_setzero_si512() : rne16(_mm512_maskz_loadu_ps(m, r1 + n0));
                _mm512_mask_storeu_epi32(pw + (n0 / 16) * KB * 256, m, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
            }
        }
    } else if (b->dtype == NC_F32 && b->si == 1 && !b->ri && !b->ci) {   /* b stored (N, K): 16 columns x 32 k through a transpose */
        int64_t NBt = (N + 15) / 16;
#pragma omp parallel for schedule(static) num_threads(nc_threads()) if (par)
        for (int64_t nb = 0; nb < NBt; nb++) {
            uint16_t tmp[16][32] __attribute__((aligned(64)));
            int64_t n0 = nb * 16, nn = N - n0 < 16 ? N - n0 : 16;
            for (int64_t kb = 0; kb < KB; kb++) {
                int64_t k0 = kb * 32, kn = K - k0 < 32 ? K - k0 : 32;
                if (kn <= 0) break;
                if (kn < 32 || nn < 16) memset(tmp, 0, sizeof tmp);
                for (int64_t j = 0; j < nn; j++) cvt_run(tmp[j], (const float *)b->p + (n0 + j) * b->sk + k0, kn, NULL, 1.0f, 0);
                /* row j of tmp = 16 (k, k + 1) pairs of column n0 + j; the tile wants row r = pair r of
                 * the 16 columns: a 16 x 16 transpose of 32-bit elements */
                __m512i v[16];
                for (int j = 0; j < 16; j++) v[j] = _mm512_load_si512(tmp[j]);
                transpose16(v);
                uint32_t *t = w + (nb * KB + kb) * 256;
                for (int r = 0; r < 16; r++) _mm512_storeu_si512(t + r * 16, v[r]);
            }
        }
    } else {
#pragma omp parallel for schedule(static) num_threads(nc_threads()) if (par)
        for (int64_t p = 0; p < P; p++) {
            int64_t k = 2 * p;
            uint32_t *pw = w + (k / 32) * 256 + (p % 16) * 16;
            for (int64_t n = 0; n < N; n++) {
                uint32_t lo = bf16_rne(mat_at(b, k, n));
                uint32_t hi = k + 1 < K ? bf16_rne(mat_at(b, k + 1, n)) : 0;
                pw[(n / 16) * KB * 256 + n % 16] = lo | hi << 16;
            }
        }
    }
}

/* int8 A: tile (mb, kb) 16 rows x 64 */
NC_AVX512 static void pack_a_s8(int8_t *dst, const mat *a, int64_t Mp, int64_t Kp) {
    int64_t M = a->rows, K = a->cols, KB = Kp / 64;
    if (Mp != M || Kp != K) memset(dst, 0, (size_t)(Mp * Kp));
    int par = M * K >= NC_PAR_MIN;
    if (llabs(a->sk) <= llabs(a->si)) {
#pragma omp parallel for schedule(static) num_threads(nc_threads()) if (par)
        for (int64_t i = 0; i < M; i++) {
            int8_t *row = dst + (i / 16) * KB * 1024 + (i % 16) * 64;
            const int64_t base = i * a->si;
            if (a->dtype == NC_F32 && a->sk == 1) {   /* saturating f32 -> i8 (codes are integers) */
                const float *src = (const float *)a->p + base;
                for (int64_t k = 0; k < K; k += 16) {
                    __mmask16 mk = tail16(K - k);
                    __m128i b = _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_maskz_loadu_ps(mk, src + k)));
                    _mm_mask_storeu_epi8(row + (k / 64) * 1024 + k % 64, mk, b);
                }
            } else {
                for (int64_t k = 0; k < K; k++) row[(k / 64) * 1024 + k % 64] = mat_s8(a, i, k);
            }
        }
    } else {
#pragma omp parallel for schedule(static) num_threads(nc_threads()) if (par)
        for (int64_t k = 0; k < K; k++) {
            int8_t *col = dst + (k / 64) * 1024 + k % 64;
            for (int64_t i = 0; i < M; i++) col[(i / 16) * KB * 1024 + (i % 16) * 64] = mat_s8(a, i, k);
        }
    }
}

/* int8 B (VNNI quads): word (r, n) of tile (nb, kb) = op(b)(64kb + 4r + j, 16nb + n), j = 0..3 (byte j) */
NC_AVX512 static void pack_b_s8(int8_t *dst, const mat *b, int64_t Np, int64_t Kp) {
    int64_t K = b->rows, N = b->cols, KB = Kp / 64, Q = (K + 3) / 4;
    if (Np != N || Kp != K) memset(dst, 0, (size_t)(Np * Kp));
    uint32_t *w = (uint32_t *)dst;
    int par = N * K >= NC_PAR_MIN;
    if (llabs(b->sk) <= llabs(b->si)) {   /* b stored (K, N) */
#pragma omp parallel for schedule(static) num_threads(nc_threads()) if (par)
        for (int64_t q = 0; q < Q; q++) {
            int64_t k = 4 * q;
            uint32_t *qw = w + (k / 64) * 256 + (q % 16) * 16;
            for (int64_t n = 0; n < N; n++) {
                uint32_t v = 0;
                for (int j = 0; j < 4 && k + j < K; j++) v |= (uint32_t)(uint8_t)mat_s8(b, k + j, n) << (8 * j);
                qw[(n / 16) * KB * 256 + n % 16] = v;
            }
        }
    } else if (b->dtype == NC_F32 && b->si == 1) {   /* b stored (N, K): the linear forward's weight */
        int64_t NBt = (N + 15) / 16, nkb = (K + 63) / 64;
#pragma omp parallel for schedule(static) num_threads(nc_threads()) if (par)
        for (int64_t nb = 0; nb < NBt; nb++) {
            int64_t n0 = nb * 16;
            for (int64_t kb = 0; kb < nkb; kb++) {
                int64_t k0 = kb * 64;
                __m512i w[16];
                for (int j = 0; j < 16; j++) {   /* w[j]: the 64 codes of column n0 + j as 16 quads */
                    if (n0 + j >= N) { w[j] = _mm512_setzero_si512(); continue; }
                    const float *c = (const float *)b->p + (n0 + j) * b->sk + k0;
                    __m128i q[4];
                    for (int u = 0; u < 4; u++) {
                        __mmask16 mk = tail16(K - k0 - 16 * u);
                        q[u] = _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_maskz_loadu_ps(mk, c + 16 * u)));
                    }
                    __m512i v = _mm512_castsi128_si512(q[0]);
                    v = _mm512_inserti32x4(v, q[1], 1);
                    v = _mm512_inserti32x4(v, q[2], 2);
                    w[j] = _mm512_inserti32x4(v, q[3], 3);
                }
                transpose16(w);                   /* w[r] lane j: quad r of column n0 + j */
                uint32_t *t = (uint32_t *)dst + (nb * KB + kb) * 256;
                for (int r = 0; r < 16; r++) _mm512_store_si512(t + r * 16, w[r]);
            }
        }
    } else {
#pragma omp parallel for schedule(static) num_threads(nc_threads()) if (par)
        for (int64_t n = 0; n < N; n++) {
            uint32_t *nw = (uint32_t *)dst + (n / 16) * KB * 256 + n % 16;
            for (int64_t q = 0; q < Q; q++) {
                int64_t k = 4 * q;
                uint32_t v = 0;
                for (int j = 0; j < 4 && k + j < K; j++) v |= (uint32_t)(uint8_t)mat_s8(b, k + j, n) << (8 * j);
                nw[(k / 64) * 256 + (q % 16) * 16] = v;
            }
        }
    }
}

/* ---- epilogues ------------------------------------------------------------------------------ */
typedef struct {
    char *p;
    int64_t so_m, so_n, M, N;
    int32_t dtype;
    float alpha, beta;                 /* bf16: out = alpha * acc + beta * out (beta 0: no read) */
    const int64_t *mo;                 /* bf16: logical row m is out row mo[m] (NULL: m) */
    int64_t M_out;                     /* bf16 with mo: out's row count */
    int zero_rest;                     /* bf16 with mo: out rows not in mo are set to 0 */
    int upper;                         /* bf16, M == N: only the 32 x 32 blocks on or above the diagonal,
                                          each also stored transposed into the lower triangle (so_n 1, no mo) */
    const float *cs, *rs;              /* s8 f32: ((float)acc * cs[n]) * or / rs[m] */
    int64_t ncs, nrs;
    int rdiv;
} epi;

/* the upper epilogue's mirror: block c (as in store_f32) of output (m0, n0), n0 > m0, transposed
 * into (n0, m0): out[n][m] = alpha c[m][n] + beta out[n][m], 16 x 16 quarters through transpose16 */
NC_AVX512 static void store_f32_t(const epi *e, const float *c, int64_t m0, int64_t n0) {
    float *o = (float *)e->p;
    __m512 va = _mm512_set1_ps(e->alpha), vb = _mm512_set1_ps(e->beta);
    for (int ti = 0; ti < 2; ti++) {
        int64_t mb = m0 + ti * 16;
        if (mb >= e->M) return;
        __mmask16 mk = tail16(e->M - mb);
        for (int tj = 0; tj < 2; tj++) {
            __m512i w[16];
            const float *q = c + (ti * 2 + tj) * 256;
            for (int i = 0; i < 16; i++) w[i] = _mm512_load_si512(q + i * 16);
            transpose16(w);   /* w[j] lane i = c[ti 16 + i][tj 16 + j] */
            for (int j = 0; j < 16; j++) {
                int64_t n = n0 + tj * 16 + j;
                if (n >= e->N) break;
                float *dst = o + n * e->so_m + mb;
                __m512 v = _mm512_mul_ps(va, _mm512_castsi512_ps(w[j]));
                if (e->beta != 0.0f) v = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(mk, dst), v);
                _mm512_mask_storeu_ps(dst, mk, v);
            }
        }
    }
}

/* block tiles c (4 tiles of 16 x 16, order (0,0) (0,1) (1,0) (1,1)) at output (m0, n0); with
 * e->upper, a block above the diagonal is also stored transposed below it, and a diagonal block's
 * lower triangle is made the mirror of its upper one first (the kernel's (i, j) and (j, i) sums
 * differ when the product is symmetric only in exact arithmetic) */
NC_AVX512 static void store_f32(const epi *e, float *c, int64_t m0, int64_t n0) {
    float *o = (float *)e->p;
    if (e->upper && n0 > m0) store_f32_t(e, c, m0, n0);
    else if (e->upper) {   /* tile (1,0) = tile (0,1)^T; tiles (0,0), (1,1): lanes j < i of row i from the transpose */
        __m512i w[16];
        for (int i = 0; i < 16; i++) w[i] = _mm512_load_si512(c + 256 + i * 16);
        transpose16(w);
        for (int i = 0; i < 16; i++) _mm512_store_si512(c + 512 + i * 16, w[i]);
        for (int t = 0; t < 4; t += 3) {
            float *q = c + t * 256;
            for (int i = 0; i < 16; i++) w[i] = _mm512_load_si512(q + i * 16);
            transpose16(w);
            for (int i = 1; i < 16; i++)
                _mm512_mask_store_ps(q + i * 16, (__mmask16)((1u << i) - 1), _mm512_castsi512_ps(w[i]));
        }
    }
    for (int ti = 0; ti < 2; ti++)
        for (int i = 0; i < 16; i++) {
            int64_t m = m0 + ti * 16 + i;
            if (m >= e->M) return;
            for (int tj = 0; tj < 2; tj++) {
                const float *src = c + (ti * 2 + tj) * 256 + i * 16;
                int64_t nb = n0 + tj * 16;
                int nn = e->N - nb < 16 ? (int)(e->N - nb) : 16;
                if (nn <= 0) break;
                float *dst = o + (e->mo ? e->mo[m] : m) * e->so_m + nb * e->so_n;
                if (e->so_n == 1) {
                    __mmask16 mk = tail16(nn);
                    __m512 v = _mm512_mul_ps(_mm512_set1_ps(e->alpha), _mm512_load_ps(src));
                    if (e->beta != 0.0f) v = _mm512_fmadd_ps(_mm512_set1_ps(e->beta), _mm512_maskz_loadu_ps(mk, dst), v);
                    _mm512_mask_storeu_ps(dst, mk, v);
                } else {
                    for (int j = 0; j < nn; j++) {
                        float *d = dst + j * e->so_n;
                        *d = e->beta == 0.0f ? e->alpha * src[j] : e->alpha * src[j] + e->beta * *d;
                    }
                }
            }
        }
}

static inline float s8_scale(const epi *e, int32_t acc, int64_t m, int64_t n) {
    float v = (float)acc;
    if (e->cs) v *= e->cs[e->ncs == 1 ? 0 : n];
    if (e->rs) { float r = e->rs[e->nrs == 1 ? 0 : m]; v = e->rdiv ? v / r : v * r; }
    return v;
}

NC_AVX512 static void store_s32(const epi *e, const int32_t *c, int64_t m0, int64_t n0) {
    for (int ti = 0; ti < 2; ti++)
        for (int i = 0; i < 16; i++) {
            int64_t m = m0 + ti * 16 + i;
            if (m >= e->M) return;
            float r = e->rs ? e->rs[e->nrs == 1 ? 0 : m] : 1.0f;
            for (int tj = 0; tj < 2; tj++) {
                const int32_t *src = c + (ti * 2 + tj) * 256 + i * 16;
                int64_t nb = n0 + tj * 16;
                int nn = e->N - nb < 16 ? (int)(e->N - nb) : 16;
                if (nn <= 0) break;
                if (e->dtype == NC_I32) {
                    for (int j = 0; j < nn; j++) ((int32_t *)e->p)[m * e->so_m + (nb + j) * e->so_n] = src[j];
                } else if (e->so_n == 1 && e->cs && e->rs && e->rdiv) {   /* the bitlinear forward */
                    __mmask16 mk = tail16(nn);
                    __m512 c = e->ncs == 1 ? _mm512_set1_ps(e->cs[0]) : _mm512_maskz_loadu_ps(mk, e->cs + nb);
                    __m512 v = _mm512_div_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_load_si512(src)), c), _mm512_set1_ps(r));
                    _mm512_mask_storeu_ps((float *)e->p + m * e->so_m + nb, mk, v);
                } else {
                    for (int j = 0; j < nn; j++) ((float *)e->p)[m * e->so_m + (nb + j) * e->so_n] = s8_scale(e, src[j], m, nb + j);
                }
            }
        }
}

static epi epi_of(const nc_tensor *out) {
    epi e;
    memset(&e, 0, sizeof e);
    e.p = nc_ptr(out);
    e.M = out->shape[0];
    e.N = out->shape[1];
    e.so_m = out->strides[0];
    e.so_n = out->strides[1];
    e.dtype = out->dtype;
    return e;
}

/* ---- AVX-512 block kernels (no AMX) ----------------------------------------------------------
 * The same packed buffers and the same 32 x 32 output block as the tile code (c: 4 tiles of 16 x 16,
 * order (0,0) (0,1) (1,0) (1,1)), computed with AVX512-BF16 VDPBF16PS and AVX512-VNNI VPDPBUSD.
 * The packed B is already the pair / quad layout both instructions read (one zmm = 16 columns x
 * 2 bf16 or 4 int8 k); packed A rows give the broadcast pair / quad. Eight rows x 32 columns per
 * pass: 16 accumulators, each B row loaded once per 8 x 2 multiply-adds.
 * bf16: lane j of VDPBF16PS adds a[2k] b[2k][j] + a[2k+1] b[2k+1][j] (exact bf16 products) to the
 * f32 accumulator; the order of the f32 sums differs from AMX and from the double reference, so
 * results agree with them to f32 rounding, not bitwise. s8: VPDPBUSD multiplies unsigned by signed
 * bytes, so A goes in as a + 128 (sign bit flipped) and each output loses 128 * (column sum of B),
 * computed from the packed B once per thread; int32 arithmetic wraps, so the difference is the
 * exact sum whenever the true sum fits in int32 (the K <= 131072 rule): bitwise the AMX result. */
#define NC_BF16VEC __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))
#define NC_VNNIVEC __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))

static inline int32_t load_pair(const void *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

NC_BF16VEC static void block_bf16_vec(const uint16_t *a0, const uint16_t *a1, const uint16_t *b0, const uint16_t *b1,
                                      int64_t KB, float *c) {
    for (int ti = 0; ti < 2; ti++)
        for (int h = 0; h < 2; h++) {
            const uint16_t *at = (ti ? a1 : a0) + h * 8 * 32;
            __m512 x[8], y[8];   /* fully unrolled: the arrays live in registers */
#pragma GCC unroll 8
            for (int r = 0; r < 8; r++) x[r] = y[r] = _mm512_setzero_ps();
            for (int64_t kb = 0; kb < KB; kb++) {
                const uint16_t *ak = at + kb * 512, *bk0 = b0 + kb * 512, *bk1 = b1 + kb * 512;
                for (int kr = 0; kr < 16; kr++) {
                    __m512bh B0 = (__m512bh)_mm512_loadu_si512(bk0 + kr * 32);
                    __m512bh B1 = (__m512bh)_mm512_loadu_si512(bk1 + kr * 32);
#pragma GCC unroll 8
                    for (int r = 0; r < 8; r++) {
                        __m512bh A = (__m512bh)_mm512_set1_epi32(load_pair(ak + r * 32 + 2 * kr));
                        x[r] = _mm512_dpbf16_ps(x[r], A, B0);
                        y[r] = _mm512_dpbf16_ps(y[r], A, B1);
                    }
                }
            }
            float *c0 = c + (ti * 2) * 256 + h * 8 * 16, *c1 = c0 + 256;
#pragma GCC unroll 8
            for (int r = 0; r < 8; r++) {
                _mm512_store_ps(c0 + r * 16, x[r]);
                _mm512_store_ps(c1 + r * 16, y[r]);
            }
        }
}

/* sum[n] = sum over k of the packed B's column n (NB blocks of 32 columns, KB k-blocks of 64) */
NC_VNNIVEC static void colsum_s8(int32_t *sum, const int8_t *bp, int64_t NB, int64_t KB) {
    const __m512i ones = _mm512_set1_epi8(1);
    for (int64_t nb = 0; nb < NB; nb++)
        for (int tj = 0; tj < 2; tj++) {
            const int8_t *bt = bp + (2 * nb + tj) * KB * 1024;
            __m512i s = _mm512_setzero_si512();
            for (int64_t r = 0; r < KB * 16; r++) s = _mm512_dpbusd_epi32(s, ones, _mm512_loadu_si512(bt + r * 64));
            _mm512_storeu_si512(sum + nb * 32 + tj * 16, s);
        }
}

NC_VNNIVEC static void block_s8_vec(const int8_t *a0, const int8_t *a1, const int8_t *b0, const int8_t *b1, int64_t KB,
                                    const int32_t *bsum, int32_t *c) {
    const __m512i flip = _mm512_set1_epi32((int32_t)0x80808080u), z = _mm512_setzero_si512();
    const __m512i s0 = _mm512_slli_epi32(_mm512_loadu_si512(bsum), 7), s1 = _mm512_slli_epi32(_mm512_loadu_si512(bsum + 16), 7);
    for (int ti = 0; ti < 2; ti++)
        for (int h = 0; h < 2; h++) {
            const int8_t *at = (ti ? a1 : a0) + h * 8 * 64;
            __m512i x[8], y[8];   /* start at -128 * colsum: the a + 128 bias comes off as it accumulates */
#pragma GCC unroll 8
            for (int r = 0; r < 8; r++) { x[r] = _mm512_sub_epi32(z, s0); y[r] = _mm512_sub_epi32(z, s1); }
            for (int64_t kb = 0; kb < KB; kb++) {
                const int8_t *ak = at + kb * 1024, *bk0 = b0 + kb * 1024, *bk1 = b1 + kb * 1024;
                for (int kr = 0; kr < 16; kr++) {
                    __m512i B0 = _mm512_loadu_si512(bk0 + kr * 64), B1 = _mm512_loadu_si512(bk1 + kr * 64);
#pragma GCC unroll 8
                    for (int r = 0; r < 8; r++) {
                        __m512i A = _mm512_xor_si512(_mm512_set1_epi32(load_pair(ak + r * 64 + 4 * kr)), flip);
                        x[r] = _mm512_dpbusd_epi32(x[r], A, B0);
                        y[r] = _mm512_dpbusd_epi32(y[r], A, B1);
                    }
                }
            }
            int32_t *c0 = c + (ti * 2) * 256 + h * 8 * 16, *c1 = c0 + 256;
#pragma GCC unroll 8
            for (int r = 0; r < 8; r++) {
                _mm512_store_si512(c0 + r * 16, x[r]);
                _mm512_store_si512(c1 + r * 16, y[r]);
            }
        }
}

/* ---- AMX drivers ---------------------------------------------------------------------------- */
/* Cache blocking: a thread's output blocks run in chunks of NBc column blocks (a B panel of at
 * most ~512 KiB, L2-resident), all its row blocks for a chunk before the next chunk. */
static int64_t chunk_nb(int64_t bytes_per_col) {
    int64_t n = ((int64_t)512 << 10) / (32 * bytes_per_col);
    return n < 1 ? 1 : n;
}


/* rows [r0, r1) of a as a matrix of their own */
static mat mat_rows(const mat *a, int64_t r0, int64_t r1) {
    mat s = *a;
    if (a->ri) s.ri = a->ri + r0;
    else s.p = (const char *)a->p + r0 * a->si * (a->dtype == NC_I8 ? 1 : 4);
    s.rows = r1 - r0;
    return s;
}

/* columns [c0, c1) of b as a matrix of their own */
static mat mat_cols(const mat *b, int64_t c0, int64_t c1) {
    mat s = *b;
    if (b->ci) s.ci = b->ci + c0;
    else s.p = (const char *)b->p + c0 * b->sk * (b->dtype == NC_I8 ? 1 : 4);
    s.cols = c1 - c0;
    return s;
}

/* zero_rest of nc_gemm_bf16_rows: set to 0 the out rows that the sorted row list mo does not name
 * between its entries r0 - 1 and r1 - 1 (from row 0 when r0 = 0, through the last out row when
 * r1 = n, the list's length); threads owning consecutive entry ranges cover every gap once */
static void zero_gaps(const epi *e, int64_t M_out, const int64_t *mo, int64_t n, int64_t r0, int64_t r1) {
    int64_t lo = r0 == 0 ? 0 : mo[r0 - 1] + 1;
    for (int64_t r = r0; r <= r1; r++) {
        int64_t hi = r < r1 ? mo[r] : (r1 == n ? M_out : lo);
        for (int64_t m = lo; m < hi; m++) {
            float *d = (float *)e->p + m * e->so_m;
            if (e->so_n == 1) memset(d, 0, (size_t)e->N * sizeof(float));
            else for (int64_t j = 0; j < e->N; j++) d[j * e->so_n] = 0.0f;
        }
        if (r < r1) lo = mo[r] + 1;
    }
}

/* (The packing finishes before the barrier and no output is written before it, so C may alias an
 * operand: the optimizers' Newton-Schulz runs X' = a X + B X in place.)
 * One parallel region per GEMM with one barrier: thread tid packs column blocks [NB tid / nt,
 * NB (tid + 1) / nt) of the one shared packed B and the rows of A it owns, row blocks [MB tid / nt,
 * MB (tid + 1) / nt); after the barrier it computes its output blocks in L2 chunks of NBc column
 * blocks. (Each thread used to pack its own copy of the whole B to avoid the barrier: O(N K) work
 * per thread, nt copies in memory; on 2 Zen 4 threads the shared B cut the process CPU time of a
 * (512, 512) x (2048, 512)^T bf16 GEMM by ~10% and was neutral on the LM-head shapes, and it keeps
 * the packing from growing with the thread count.) */
static int amx_threads(int64_t MB, int64_t M, int64_t N, int64_t K) {
    int64_t nt = nc_threads();
    if (nt > MB) nt = MB;
    if (M * N * K < ((int64_t)1 << 20)) nt = 1;
    return nt < 1 ? 1 : (int)nt;
}

static nc_status tiled_bf16(const epi *e, const mat *a, const mat *b, const float *ks, int64_t nks, int div, int amx) {
    int64_t M = a->rows, N = b->cols, K = a->cols;
    int64_t Mp = rup(M, 32), Np = rup(N, 32), Kp = rup(K, 32), KB = Kp / 32;
    int64_t MB = Mp / 32, NB = Np / 32, NBc = chunk_nb(Kp * 2);
    int nt = amx_threads(MB, M, N, K);
    int64_t abytes = Mp * Kp * 2, balloc = Np * Kp * 2;
    /* upper: row block mb holds NB - mb blocks; split the rows by that work */
    int64_t upper_total = e->upper ? NB * (NB + 1) / 2 : 0;
    uint16_t *ap = nc_host_alloc(abytes), *bp = ap ? nc_host_alloc(balloc) : NULL;
    if (!bp) { if (ap) nc_host_free(ap, abytes); return NC_ERR_OOM; }
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        int tid = omp_get_thread_num(), nth = omp_get_num_threads();
        int64_t mb0 = MB * tid / nth, mb1 = MB * (tid + 1) / nth;
        if (e->upper) {   /* the first row block whose cumulative work reaches tid / nth of the total */
            int64_t w = 0, want0 = upper_total * tid / nth, want1 = upper_total * (tid + 1) / nth;
            mb0 = mb1 = MB;
            for (int64_t mb = 0; mb < MB; mb++) {
                if (w >= want0 && mb0 == MB) mb0 = mb;
                if (w >= want1) { mb1 = mb; break; }
                w += NB - mb;
            }
            if (tid == nth - 1) mb1 = MB;
            if (mb0 > mb1) mb0 = mb1;
        }
        const uint16_t *bpt = bp;
        {   /* B once, shared: thread tid packs column blocks [NB tid / nth, NB (tid + 1) / nth) */
            int64_t nb0 = NB * tid / nth, nb1 = NB * (tid + 1) / nth;
            mat bs = mat_cols(b, nb0 * 32, nb1 * 32 < N ? nb1 * 32 : N);
            if (nb1 > nb0) pack_b_bf16(bp + 2 * nb0 * KB * 512, &bs, (nb1 - nb0) * 32, Kp);
        }
        if (mb1 > mb0) {
            mat as = mat_rows(a, mb0 * 32, mb1 * 32 < M ? mb1 * 32 : M);
            if (e->zero_rest) zero_gaps(e, e->M_out, e->mo, M, mb0 * 32, mb1 * 32 < M ? mb1 * 32 : M);
            pack_a_bf16(ap + mb0 * 2 * KB * 512, &as, (mb1 - mb0) * 32, Kp, ks, nks, div);
        }
#pragma omp barrier
        if (mb1 > mb0) {
            if (amx) tiles_config();
            float c[1024] __attribute__((aligned(64)));
            for (int64_t n0 = 0; n0 < NB; n0 += NBc) {
                int64_t n1 = n0 + NBc < NB ? n0 + NBc : NB;
                for (int64_t mb = mb0; mb < mb1; mb++)
                    for (int64_t nb = n0 > mb || !e->upper ? n0 : mb; nb < n1; nb++) {
                        const uint16_t *a0 = ap + (2 * mb) * KB * 512, *a1 = a0 + KB * 512;
                        const uint16_t *b0 = bpt + (2 * nb) * KB * 512, *b1 = b0 + KB * 512;
                        if (!amx) {
                            block_bf16_vec(a0, a1, b0, b1, KB, c);
                            store_f32(e, c, mb * 32, nb * 32);
                            continue;
                        }
                        _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
                        for (int64_t kb = 0; kb < KB; kb++) {
                            _tile_loadd(4, a0 + kb * 512, 64);
                            _tile_loadd(6, b0 + kb * 512, 64);
                            _tile_loadd(5, a1 + kb * 512, 64);
                            _tile_loadd(7, b1 + kb * 512, 64);
                            _tile_dpbf16ps(0, 4, 6);
                            _tile_dpbf16ps(1, 4, 7);
                            _tile_dpbf16ps(2, 5, 6);
                            _tile_dpbf16ps(3, 5, 7);
                        }
                        _tile_stored(0, c, 64); _tile_stored(1, c + 256, 64);
                        _tile_stored(2, c + 512, 64); _tile_stored(3, c + 768, 64);
                        store_f32(e, c, mb * 32, nb * 32);
                    }
            }
            if (amx) _tile_release();
        }
    }
    nc_host_free(bp, balloc);
    nc_host_free(ap, abytes);
    return NC_OK;
}

static nc_status tiled_s8(const epi *e, const mat *a, const mat *b, int amx) {
    int64_t M = a->rows, N = b->cols, K = a->cols;
    int64_t Mp = rup(M, 32), Np = rup(N, 32), Kp = rup(K, 64), KB = Kp / 64;
    int64_t MB = Mp / 32, NB = Np / 32, NBc = chunk_nb(Kp);
    int nt = amx_threads(MB, M, N, K);
    int64_t abytes = Mp * Kp, bbytes = Np * Kp, sbytes = amx ? 0 : Np * 4;
    int8_t *ap = nc_host_alloc(abytes), *bp = ap ? nc_host_alloc(bbytes) : NULL;
    int32_t *csum = sbytes && bp ? nc_host_alloc(sbytes) : NULL;
    if (!bp || (sbytes && !csum)) {
        if (bp) nc_host_free(bp, bbytes);
        if (ap) nc_host_free(ap, abytes);
        return NC_ERR_OOM;
    }
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        int tid = omp_get_thread_num(), nth = omp_get_num_threads();
        int64_t mb0 = MB * tid / nth, mb1 = MB * (tid + 1) / nth;
        const int8_t *bpt = bp;
        const int32_t *bsum = csum;
        {   /* B (and its column sums) once, shared: thread tid packs column blocks [NB tid / nth, NB (tid + 1) / nth) */
            int64_t nb0 = NB * tid / nth, nb1 = NB * (tid + 1) / nth;
            mat bs = mat_cols(b, nb0 * 32, nb1 * 32 < N ? nb1 * 32 : N);
            if (nb1 > nb0) {
                pack_b_s8(bp + 2 * nb0 * KB * 1024, &bs, (nb1 - nb0) * 32, Kp);
                if (!amx) colsum_s8(csum + nb0 * 32, bp + 2 * nb0 * KB * 1024, nb1 - nb0, KB);
            }
        }
        if (mb1 > mb0) {
            mat as = mat_rows(a, mb0 * 32, mb1 * 32 < M ? mb1 * 32 : M);
            pack_a_s8(ap + mb0 * 2 * KB * 1024, &as, (mb1 - mb0) * 32, Kp);
        }
#pragma omp barrier
        if (mb1 > mb0) {
            if (amx) tiles_config();
            int32_t c[1024] __attribute__((aligned(64)));
            for (int64_t n0 = 0; n0 < NB; n0 += NBc) {
                int64_t n1 = n0 + NBc < NB ? n0 + NBc : NB;
                for (int64_t mb = mb0; mb < mb1; mb++)
                    for (int64_t nb = n0; nb < n1; nb++) {
                        const int8_t *a0 = ap + (2 * mb) * KB * 1024, *a1 = a0 + KB * 1024;
                        const int8_t *b0 = bpt + (2 * nb) * KB * 1024, *b1 = b0 + KB * 1024;
                        if (!amx) {
                            block_s8_vec(a0, a1, b0, b1, KB, bsum + nb * 32, c);
                            store_s32(e, c, mb * 32, nb * 32);
                            continue;
                        }
                        _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
                        for (int64_t kb = 0; kb < KB; kb++) {
                            _tile_loadd(4, a0 + kb * 1024, 64);
                            _tile_loadd(6, b0 + kb * 1024, 64);
                            _tile_loadd(5, a1 + kb * 1024, 64);
                            _tile_loadd(7, b1 + kb * 1024, 64);
                            _tile_dpbssd(0, 4, 6);
                            _tile_dpbssd(1, 4, 7);
                            _tile_dpbssd(2, 5, 6);
                            _tile_dpbssd(3, 5, 7);
                        }
                        _tile_stored(0, c, 64); _tile_stored(1, c + 256, 64);
                        _tile_stored(2, c + 512, 64); _tile_stored(3, c + 768, 64);
                        store_s32(e, c, mb * 32, nb * 32);
                    }
            }
            if (amx) _tile_release();
        }
    }
    if (csum) nc_host_free(csum, sbytes);
    nc_host_free(bp, bbytes);
    nc_host_free(ap, abytes);
    return NC_OK;
}

/* ---- references ----------------------------------------------------------------------------- */
static void ref_bf16(const epi *e, const mat *a, const mat *b, const float *ks, int64_t nks, int div) {
    int64_t M = a->rows, N = b->cols, K = a->cols;
    float *o = (float *)e->p;
    if (e->zero_rest) zero_gaps(e, e->M_out, e->mo, M, 0, M);
#pragma omp parallel for schedule(static) num_threads(nc_threads()) if (M * N * K >= NC_PAR_MIN)
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            double s = 0.0;
            for (int64_t k = 0; k < K; k++)
                s += bf16_val(a_bf16(a, m, k, ks, nks, div)) * bf16_val(bf16_rne(mat_at(b, k, n)));
            float *d = o + (e->mo ? e->mo[m] : m) * e->so_m + n * e->so_n;
            *d = e->beta == 0.0f ? (float)(e->alpha * s) : (float)(e->alpha * s + e->beta * (double)*d);
        }
}

static void ref_s8(const epi *e, const mat *a, const mat *b) {
    int64_t M = a->rows, N = b->cols, K = a->cols;
#pragma omp parallel for schedule(static) num_threads(nc_threads()) if (M * N * K >= NC_PAR_MIN)
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            int32_t s = 0;
            for (int64_t k = 0; k < K; k++) s += (int32_t)mat_s8(a, m, k) * (int32_t)mat_s8(b, k, n);
            int64_t off = m * e->so_m + n * e->so_n;
            if (e->dtype == NC_I32) ((int32_t *)e->p)[off] = s;
            else ((float *)e->p)[off] = s8_scale(e, s, m, n);
        }
}

/* ---- public GEMMs --------------------------------------------------------------------------- */
/* A row list of nc_gemm_bf16_rows as int64 (rows_* i32 or i64, 1-D, contiguous, strictly
 * increasing, each in [0, bound)); *tmp is set when an i32 list was widened (free it with
 * nc_host_free(*tmp, n * 8)). */
static nc_status row_list(const char *op, const char *name, const nc_tensor *t, int64_t bound, const int64_t **out,
                          int64_t *n, int64_t **tmp) {
    *out = NULL; *n = 0; *tmp = NULL;
    if (!t) return NC_OK;
    NC_TRY(nc_check_cpu(op, name, t));
    NC_TRY(nc_check_contiguous(op, name, t));
    char b[NC_DESC_LEN];
    if ((t->dtype != NC_I64 && t->dtype != NC_I32) || t->ndim != 1)
        return nc_fail(NC_ERR_DTYPE, "%s: expected %s a 1-D i64 or i32 row list, got %s", op, name, nc_describe(t, b, sizeof b));
    int64_t len = t->shape[0];
    const int64_t *p = (const int64_t *)nc_ptr(t);
    if (t->dtype == NC_I32) {
        int64_t *w = len ? nc_host_alloc(len * 8) : NULL;
        if (len && !w) return nc_fail(NC_ERR_OOM, "%s: out of memory widening %s", op, name);
        const int32_t *q = (const int32_t *)nc_ptr(t);
        for (int64_t i = 0; i < len; i++) w[i] = q[i];
        p = w;
        *tmp = w;
    }
    for (int64_t i = 0; i < len; i++) {
        if (p[i] < 0 || p[i] >= bound || (i > 0 && p[i] <= p[i - 1])) {
            nc_status st = p[i] < 0 || p[i] >= bound
                ? nc_fail(NC_ERR_INDEX, "%s: %s[%lld] = %lld is out of range [0, %lld)", op, name, (long long)i,
                          (long long)p[i], (long long)bound)
                : nc_fail(NC_ERR_INDEX, "%s: %s must be strictly increasing, got %s[%lld] = %lld after %lld", op, name,
                          name, (long long)i, (long long)p[i], (long long)p[i - 1]);
            if (*tmp) { nc_host_free(*tmp, len * 8); *tmp = NULL; }
            return st;
        }
    }
    *out = p;
    *n = len;
    return NC_OK;
}

nc_status nc_gemm_bf16_rows(nc_tensor *out, const nc_tensor *a, const nc_tensor *b, int32_t trans_a, int32_t trans_b,
                            const nc_tensor *kscale, int32_t kscale_div, double alpha, double beta,
                            const nc_tensor *rows_m, const nc_tensor *rows_k, int32_t zero_rest) {
    static const char *op = "gemm_bf16";
    NC_TRY(check_operand(op, "a", a, 1));
    NC_TRY(check_operand(op, "b", b, 1));
    mat ma = mat_of(a, trans_a), mb = mat_of(b, trans_b);
    NC_TRY(check_gemm(op, out, &ma, &mb, 0));
    NC_TRY(check_scale(op, "kscale", kscale, ma.cols));
    if (zero_rest && !rows_m) return nc_fail(NC_ERR_ARG, "%s: zero_rest needs rows_m (the out rows written)", op);
    const int64_t *rm, *rk;
    int64_t nm, nk, *tm, *tk;
    NC_TRY(row_list(op, "rows_m", rows_m, ma.rows, &rm, &nm, &tm));
    nc_status st = row_list(op, "rows_k", rows_k, ma.cols, &rk, &nk, &tk);
    if (st != NC_OK) { if (tm) nc_host_free(tm, nm * 8); return st; }
    epi e = epi_of(out);
    e.alpha = (float)alpha;
    e.beta = (float)beta;
    e.M_out = e.M;
    if (rows_m) { ma.ri = rm; ma.rows = nm; e.mo = rm; e.M = nm; e.zero_rest = zero_rest != 0; }
    if (rows_k) { ma.ci = rk; ma.cols = nk; mb.ri = rk; mb.rows = nk; }
    int64_t M = ma.rows, N = mb.cols, K = ma.cols;
    st = NC_OK;
    if (N == 0) {
    } else if (M == 0) {   /* nothing computed; zero_rest clears every out row */
        if (e.zero_rest) zero_gaps(&e, e.M_out, e.mo, 0, 0, 0);
    } else if (K == 0) {   /* out = beta * out on the computed rows */
        if (e.zero_rest) zero_gaps(&e, e.M_out, e.mo, M, 0, M);
        for (int64_t m = 0; m < M; m++)
            for (int64_t n = 0; n < N; n++) {
                float *d = (float *)e.p + (e.mo ? e.mo[m] : m) * e.so_m + n * e.so_n;
                *d = e.beta == 0.0f ? 0.0f : e.beta * *d;
            }
    } else {
        const float *ks = kscale ? nc_f32p(kscale) : NULL;
        int64_t nks = kscale ? nc_tensor_numel(kscale) : 0;
        if (nc_cpu_amx()) st = tiled_bf16(&e, &ma, &mb, ks, nks, kscale_div, 1);
        else if (vec_bf16()) st = tiled_bf16(&e, &ma, &mb, ks, nks, kscale_div, 0);
        else ref_bf16(&e, &ma, &mb, ks, nks, kscale_div);
    }
    if (tm) nc_host_free(tm, nm * 8);
    if (tk) nc_host_free(tk, nk * 8);
    return st;
}

/* internal.h: nc_gemm_bf16 on raw row-major f32 buffers (the optimizers' Newton-Schulz) */
nc_status nc_gemm_bf16_f32p(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, int32_t trans_a,
                            const float *B, int64_t ldb, int32_t trans_b, float alpha, float beta, float *C,
                            int64_t ldc) {
    if (M <= 0 || N <= 0) return NC_OK;
    mat ma = { A, M, K, trans_a ? 1 : lda, trans_a ? lda : 1, NC_F32, NULL, NULL };
    mat mb = { B, K, N, trans_b ? 1 : ldb, trans_b ? ldb : 1, NC_F32, NULL, NULL };
    epi e;
    memset(&e, 0, sizeof e);
    e.p = (char *)C;
    e.M = e.M_out = M;
    e.N = N;
    e.so_m = ldc;
    e.so_n = 1;
    e.dtype = NC_F32;
    e.alpha = alpha;
    e.beta = beta;
    if (K <= 0) {
        for (int64_t m = 0; m < M; m++)
            for (int64_t n = 0; n < N; n++) C[m * ldc + n] = beta == 0.0f ? 0.0f : beta * C[m * ldc + n];
        return NC_OK;
    }
    if (nc_cpu_amx()) return tiled_bf16(&e, &ma, &mb, NULL, 0, 0, 1);
    if (vec_bf16()) return tiled_bf16(&e, &ma, &mb, NULL, 0, 0, 0);
    ref_bf16(&e, &ma, &mb, NULL, 0, 0);
    return NC_OK;
}

int32_t nc_gemm_bf16_hw(void) { return nc_cpu_amx() || vec_bf16(); }

void nc_sym_mirror(float *C, int64_t n, int64_t ldc) {
    for (int64_t i0 = 0; i0 < n; i0 += 32)   /* 32 x 32 blocks: the strided reads stay in L1 */
        for (int64_t j0 = 0; j0 <= i0; j0 += 32) {
            int64_t ie = i0 + 32 < n ? i0 + 32 : n, je = j0 + 32 < n ? j0 + 32 : n;
            for (int64_t i = i0; i < ie; i++)
                for (int64_t j = j0; j < je && j < i; j++) C[i * ldc + j] = C[j * ldc + i];
        }
}

nc_status nc_gemm_bf16_f32p_sym(int64_t n, int64_t K, const float *A, int64_t lda, int32_t trans_a, const float *B,
                                int64_t ldb, int32_t trans_b, float alpha, float beta, float *C, int64_t ldc) {
    if (n <= 0) return NC_OK;
    if (K <= 0 || !nc_gemm_bf16_hw()) {   /* the whole product (the reference has no block structure), mirrored */
        NC_TRY(nc_gemm_bf16_f32p(n, n, K, A, lda, trans_a, B, ldb, trans_b, alpha, beta, C, ldc));
        nc_sym_mirror(C, n, ldc);
        return NC_OK;
    }
    mat ma = { A, n, K, trans_a ? 1 : lda, trans_a ? lda : 1, NC_F32, NULL, NULL };
    mat mb = { B, K, n, trans_b ? 1 : ldb, trans_b ? ldb : 1, NC_F32, NULL, NULL };
    epi e;
    memset(&e, 0, sizeof e);
    e.p = (char *)C;
    e.M = e.M_out = e.N = n;
    e.so_m = ldc;
    e.so_n = 1;
    e.dtype = NC_F32;
    e.alpha = alpha;
    e.beta = beta;
    e.upper = 1;
    return tiled_bf16(&e, &ma, &mb, NULL, 0, 0, nc_cpu_amx());
}

nc_status nc_gemm_bf16(nc_tensor *out, const nc_tensor *a, const nc_tensor *b, int32_t trans_a, int32_t trans_b,
                       const nc_tensor *kscale, int32_t kscale_div, double alpha, double beta) {
    return nc_gemm_bf16_rows(out, a, b, trans_a, trans_b, kscale, kscale_div, alpha, beta, NULL, NULL, 0);
}

nc_status nc_gemm_s8(nc_tensor *out, const nc_tensor *a, const nc_tensor *b, int32_t trans_a, int32_t trans_b,
                     const nc_tensor *col_scale, const nc_tensor *row_scale, int32_t row_div) {
    static const char *op = "gemm_s8";
    NC_TRY(check_operand(op, "a", a, 1));
    NC_TRY(check_operand(op, "b", b, 1));
    mat ma = mat_of(a, trans_a), mb = mat_of(b, trans_b);
    NC_TRY(check_gemm(op, out, &ma, &mb, 1));
    if (out->dtype == NC_I32 && (col_scale || row_scale))
        return nc_fail(NC_ERR_ARG, "%s: an i32 out takes the raw sums (no col_scale / row_scale)", op);
    NC_TRY(check_scale(op, "col_scale", col_scale, mb.cols));
    NC_TRY(check_scale(op, "row_scale", row_scale, ma.rows));
    if (ma.cols > 131072)
        return nc_fail(NC_ERR_SHAPE, "%s: K = %lld exceeds 131072 (the int32 sums could overflow)", op, (long long)ma.cols);
    epi e = epi_of(out);
    e.cs = col_scale ? nc_f32p(col_scale) : NULL;
    e.rs = row_scale ? nc_f32p(row_scale) : NULL;
    e.ncs = col_scale ? nc_tensor_numel(col_scale) : 0;
    e.nrs = row_scale ? nc_tensor_numel(row_scale) : 0;
    e.rdiv = row_div;
    if (ma.rows == 0 || mb.cols == 0) return NC_OK;
    if (nc_cpu_amx() && ma.cols > 0) return tiled_s8(&e, &ma, &mb, 1);
    if (vec_vnni() && ma.cols > 0) return tiled_s8(&e, &ma, &mb, 0);
    ref_s8(&e, &ma, &mb);
    return NC_OK;
}

/* ---- codes ---------------------------------------------------------------------------------- */
/* one row of nc_quant_codes with AVX-512 (the same IEEE operations: multiply or divide, round half
 * to even, clamp; NaN propagates as in the scalar loop's compares only for f32 codes) */
NC_AVX512 static void codes_row_avx512(void *o, int i8, const float *x, int64_t n, float s, int div, float lo, float hi) {
    const __m512 sv = _mm512_set1_ps(s), lv = _mm512_set1_ps(lo), hv = _mm512_set1_ps(hi);
    for (int64_t j = 0; j < n; j += 16) {
        __mmask16 m = tail16(n - j);
        __m512 v = _mm512_maskz_loadu_ps(m, x + j);
        v = div ? _mm512_div_ps(v, sv) : _mm512_mul_ps(v, sv);
        v = _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        v = _mm512_min_ps(hv, _mm512_max_ps(lv, v));
        if (i8) _mm_mask_storeu_epi8((int8_t *)o + j, m, _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(v)));
        else _mm512_mask_storeu_ps((float *)o + j, m, v);
    }
}

nc_status nc_quant_codes(nc_tensor *codes, const nc_tensor *x, const nc_tensor *scale, int32_t div, int32_t lo, int32_t hi) {
    static const char *op = "quant_codes";
    NC_TRY(nc_check_not_null(op, "codes", codes));
    NC_TRY(nc_check_not_null(op, "x", x));
    NC_TRY(nc_check_not_null(op, "scale", scale));
    NC_TRY(nc_check_cpu(op, "codes", codes));
    NC_TRY(nc_check_dtype(op, "x", x, NC_F32));
    NC_TRY(nc_check_cpu(op, "x", x));
    NC_TRY(nc_check_contiguous(op, "x", x));
    NC_TRY(nc_check_contiguous(op, "codes", codes));
    NC_TRY(nc_check_same_shape(op, "codes", codes, "x", x));
    NC_TRY(nc_check_dtype(op, "scale", scale, NC_F32));
    NC_TRY(nc_check_cpu(op, "scale", scale));
    NC_TRY(nc_check_contiguous(op, "scale", scale));
    if (codes->dtype != NC_F32 && codes->dtype != NC_I8) {
        char b[NC_DESC_LEN];
        return nc_fail(NC_ERR_DTYPE, "%s: expected codes f32 or i8, got %s", op, nc_describe(codes, b, sizeof b));
    }
    if (lo > hi || lo < -128 || hi > 127) return nc_fail(NC_ERR_ARG, "%s: expected -128 <= lo <= hi <= 127, got %d, %d", op, lo, hi);
    int64_t n = nc_tensor_numel(x);
    int64_t C = x->ndim ? x->shape[x->ndim - 1] : 1;
    int64_t R = C ? n / C : 0, G = nc_tensor_numel(scale);
    if (G < 1 || (R % G) != 0) {
        char b[NC_DESC_LEN];
        return nc_fail(NC_ERR_SHAPE, "%s: scale %s must have 1 element or divide the %lld rows of x", op,
                       nc_describe(scale, b, sizeof b), (long long)R);
    }
    int64_t rpg = G ? R / G : 1;
    const float *xp = nc_f32p(x), *sp = nc_f32p(scale);
    const float flo = (float)lo, fhi = (float)hi;
    int i8 = codes->dtype == NC_I8;
    float *of = i8 ? NULL : nc_f32p(codes);
    int8_t *o8 = i8 ? (int8_t *)nc_ptr(codes) : NULL;
    int vec = __builtin_cpu_supports("avx512f") && nc_cpu_avx512();
#pragma omp parallel for schedule(static) num_threads(nc_threads()) if (n >= NC_PAR_MIN)
    for (int64_t r = 0; r < R; r++) {
        float s = sp[r / rpg];
        const float *xr = xp + r * C;
        if (vec) { codes_row_avx512(i8 ? (void *)(o8 + r * C) : (void *)(of + r * C), i8, xr, C, s, div, flo, fhi); continue; }
        for (int64_t j = 0; j < C; j++) {
            float v = div ? xr[j] / s : xr[j] * s;
            /* nearbyintf (round half to even) for |v| < 2^22; beyond, the clamp decides either way */
            float q = (v + 12582912.0f) - 12582912.0f;
            q = q > fhi ? fhi : (q < flo ? flo : q);
            if (i8) o8[r * C + j] = (int8_t)(int)q;
            else of[r * C + j] = q;
        }
    }
    return NC_OK;
}
