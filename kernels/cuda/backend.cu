/* kernels/cuda/backend.cu — the CUDA backend behind core/backend.h (lib/libnanochat_cuda.so).
 *
 * Promise: exports exactly one C symbol, nc_cuda_api_get, returning a filled nc_cuda_api of
 * NC_CUDA_API_VERSION. Every entry returns nc_status and never aborts; a failure leaves a
 * thread-local message in last_error() naming what was attempted and the CUDA / cuBLAS error.
 * device_count() is 0 (with the reason in last_error) when there is no driver or GPU, so the
 * library loads and answers on machines without one.
 *
 * Numerics mirror the CPU kernels: dtype conversions go through f64 with the same saturation
 * and the same round-to-nearest-even f16/bf16 bit conversions as core/tensor.c; elementwise
 * math is f32 with precise libm calls (no fast-math); GELU is the erf form, GELU_TANH the tanh
 * approximation, RELU2 = relu(x)^2. sgemm runs cuBLAS in its default (full f32, no TF32) mode.
 *
 * Strided ops: an nc_strided3 descriptor (one logical shape, per-operand element strides, 0 for
 * broadcast) is first simplified on the host (size-1 dims dropped, dims that are contiguous for
 * every operand merged), then each thread decomposes its linear index over the remaining dims
 * into per-operand offsets. 32-bit index math is used when every index and offset fits.
 * All work runs on the legacy default stream, so calls are ordered with cudaMemcpy and cuBLAS.
 */
#include <cuda_runtime.h>
#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

#include <climits>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <mutex>

#include "backend.h"
#include "dtype_conv.h"
#include "common.cuh"

namespace {

/* ---- errors ------------------------------------------------------------------------------ */
thread_local char g_err[1024] = "no CUDA error";

__attribute__((format(printf, 2, 3))) nc_status fail(nc_status code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_err, sizeof g_err, fmt, ap);
    va_end(ap);
    return code;
}

nc_status cuda_fail(cudaError_t e, const char *what) {
    nc_status code = e == cudaErrorMemoryAllocation ? NC_ERR_OOM : NC_ERR_DEVICE;
    return fail(code, "%s: %s (%s)", what, cudaGetErrorName(e), cudaGetErrorString(e));
}

const char *cublas_name(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: return "CUBLAS_STATUS_UNKNOWN";
    }
}

/* Check the launch of the kernel just queued (configuration errors and earlier sticky faults). */
nc_status launch_check(const char *op, int64_t n) {
    cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess) return NC_OK;
    char what[160];
    snprintf(what, sizeof what, "%s: kernel launch over %lld elements failed", op, (long long)n);
    return cuda_fail(e, what);
}

/* ---- dtype conversions: core/dtype_conv.h (the same code core/tensor.c runs) ------------- */

/* element size of a plain dtype, 0 for packed / unknown */
int elem_size(int32_t dtype) {
    switch (dtype) {
    case NC_F32: case NC_I32: return 4;
    case NC_F64: case NC_I64: return 8;
    case NC_BF16: case NC_F16: return 2;
    case NC_I8: case NC_U8: return 1;
    default: return 0;
    }
}

const char *dtype_name(int32_t dtype) {
    static const char *names[] = { "f32", "bf16", "f16", "i8", "i32", "i64", "u8", "f64", "tq2", "tq1" };
    return dtype >= 0 && dtype < NC_DTYPE_COUNT ? names[dtype] : "unknown";
}

/* ---- strided geometry -------------------------------------------------------------------- */
/* Simplified shape/strides for up to 3 operands (0 = out, 1 = a, 2 = b). */
struct Geo {
    int32_t nd;
    int64_t n;                          /* elements */
    int64_t shape[NC_MAX_DIMS];
    int64_t st[3][NC_MAX_DIMS];
    bool contig;                        /* one dim, unit stride for every operand */
    bool small;                         /* every index and offset fits in int32 */
};

/* Device-side copy with the index type chosen at launch. */
template <typename I, int K>
struct DGeo {
    int32_t nd;
    I shape[NC_MAX_DIMS];
    I st[K][NC_MAX_DIMS];
};

nc_status make_geo(const char *op, const nc_strided3 *g, int nops, Geo *out) {
    if (!g) return fail(NC_ERR_ARG, "%s: strided descriptor is NULL", op);
    if (g->ndim < 0 || g->ndim > NC_MAX_DIMS)
        return fail(NC_ERR_SHAPE, "%s: descriptor ndim must be in [0, %d], got %d", op, NC_MAX_DIMS, g->ndim);
    const int64_t *src[3] = { g->st_out, g->st_a, g->st_b };
    int64_t n = 1;
    for (int32_t d = 0; d < g->ndim; d++) {
        if (g->shape[d] < 0)
            return fail(NC_ERR_SHAPE, "%s: descriptor dim %d has negative size %lld", op, d, (long long)g->shape[d]);
        n *= g->shape[d];
    }
    memset(out, 0, sizeof *out);
    out->n = n;
    /* keep dims of size > 1, outermost first */
    int32_t nd = 0;
    for (int32_t d = 0; d < g->ndim; d++) {
        if (g->shape[d] == 1) continue;
        out->shape[nd] = g->shape[d];
        for (int k = 0; k < nops; k++) out->st[k][nd] = src[k][d];
        nd++;
    }
    /* merge dim d into d+1 when d+1 steps into d without a gap for every operand */
    int32_t m = 0;
    for (int32_t d = 0; d < nd; d++) {
        if (m > 0) {
            bool merge = true;
            for (int k = 0; k < nops && merge; k++) merge = out->st[k][m - 1] == out->st[k][d] * out->shape[d];
            if (merge) {
                out->shape[m - 1] *= out->shape[d];
                for (int k = 0; k < nops; k++) out->st[k][m - 1] = out->st[k][d];
                continue;
            }
        }
        out->shape[m] = out->shape[d];
        for (int k = 0; k < nops; k++) out->st[k][m] = out->st[k][d];
        m++;
    }
    out->nd = m;
    out->contig = m <= 1;
    for (int k = 0; k < nops && out->contig; k++) out->contig = m == 0 || out->st[k][0] == 1;
    /* 32-bit indexing when n and every reachable offset stay below 2^30 (grid-stride headroom) */
    const int64_t lim = (int64_t)1 << 30;
    bool small = n < lim;
    for (int k = 0; k < nops && small; k++) {
        int64_t maxoff = 0;
        for (int32_t d = 0; d < m; d++) {
            int64_t s = out->st[k][d] < 0 ? -out->st[k][d] : out->st[k][d];
            maxoff += (out->shape[d] - 1) * s;
            if (maxoff >= lim) break;
        }
        small = maxoff < lim;
    }
    out->small = small;
    return NC_OK;
}

template <typename I, int K>
DGeo<I, K> to_device_geo(const Geo &g) {
    DGeo<I, K> d;
    memset(&d, 0, sizeof d);
    d.nd = g.nd;
    for (int32_t i = 0; i < g.nd; i++) {
        d.shape[i] = (I)g.shape[i];
        for (int k = 0; k < K; k++) d.st[k][i] = (I)g.st[k][i];
    }
    return d;
}

template <typename I, int K, bool CONTIG>
__device__ inline void offsets_of(const DGeo<I, K> &g, I i, I off[K]) {
    if constexpr (CONTIG) {
        for (int k = 0; k < K; k++) off[k] = i;
    } else {
        for (int k = 0; k < K; k++) off[k] = 0;
        for (int32_t d = g.nd - 1; d >= 0; d--) {
            I s = g.shape[d], q = i / s, r = i - q * s;
            i = q;
            for (int k = 0; k < K; k++) off[k] += r * g.st[k][d];
        }
    }
}

/* One grid-stride kernel for every strided op: F(off) does the work of one element. */
template <typename I, int K, bool CONTIG, typename F>
__global__ void strided_kernel(DGeo<I, K> g, I n, F f) {
    I stride = (I)gridDim.x * (I)blockDim.x;
    for (I i = (I)blockIdx.x * (I)blockDim.x + (I)threadIdx.x; i < n; i += stride) {
        I off[K];
        offsets_of<I, K, CONTIG>(g, i, off);
        f(off);
    }
}

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 1 << 16;

inline unsigned blocks_for(int64_t n) {
    int64_t b = (n + kThreads - 1) / kThreads;
    return (unsigned)(b < 1 ? 1 : (b > kMaxBlocks ? kMaxBlocks : b));
}

template <int K, typename F>
nc_status launch_strided(const char *op, const Geo &g, F f) {
    if (g.n == 0) return NC_OK;
    unsigned blocks = blocks_for(g.n);
    if (g.small) {
        DGeo<int32_t, K> d = to_device_geo<int32_t, K>(g);
        if (g.contig) strided_kernel<int32_t, K, true><<<blocks, kThreads>>>(d, (int32_t)g.n, f);
        else strided_kernel<int32_t, K, false><<<blocks, kThreads>>>(d, (int32_t)g.n, f);
    } else {
        DGeo<int64_t, K> d = to_device_geo<int64_t, K>(g);
        if (g.contig) strided_kernel<int64_t, K, true><<<blocks, kThreads>>>(d, g.n, f);
        else strided_kernel<int64_t, K, false><<<blocks, kThreads>>>(d, g.n, f);
    }
    return launch_check(op, g.n);
}

/* ---- elementwise math (same formulas as the CPU kernels) --------------------------------- */
constexpr float kSqrt1_2 = 0.70710678118654752440f;       /* 1/sqrt(2) */
constexpr float kInvSqrt2Pi = 0.39894228040143267794f;    /* 1/sqrt(2 pi) */
constexpr float kGeluC = 0.79788456080286535588f;         /* sqrt(2/pi) */
constexpr float kGeluA = 0.044715f;

__device__ inline float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }

__device__ inline float binary_f(int32_t op, float a, float b) {
    switch (op) {
    case NC_OP_ADD: return a + b;
    case NC_OP_SUB: return a - b;
    case NC_OP_MUL: return a * b;
    case NC_OP_DIV: return a / b;
    case NC_OP_MAXIMUM: return (a >= b || a != a) ? a : b;   /* NaN propagates */
    case NC_OP_MINIMUM: return (a <= b || a != a) ? a : b;
    case NC_OP_POW: return powf(a, b);
    default: return 0.0f;
    }
}

__device__ inline float unary_f(int32_t op, float x) {
    switch (op) {
    case NC_OP_NEG: return -x;
    case NC_OP_EXP: return expf(x);
    case NC_OP_LOG: return logf(x);
    case NC_OP_TANH: return tanhf(x);
    case NC_OP_SIGMOID: return sigmoidf_(x);
    case NC_OP_RELU: return x > 0.0f ? x : 0.0f;
    case NC_OP_RELU2: { float r = x > 0.0f ? x : 0.0f; return r * r; }
    case NC_OP_SILU: return x * sigmoidf_(x);
    case NC_OP_GELU: return 0.5f * x * (1.0f + erff(x * kSqrt1_2));
    case NC_OP_GELU_TANH: return 0.5f * x * (1.0f + tanhf(kGeluC * (x + kGeluA * x * x * x)));
    case NC_OP_SQRT: return sqrtf(x);
    case NC_OP_RSQRT: return 1.0f / sqrtf(x);
    case NC_OP_ABS: return fabsf(x);
    case NC_OP_SQUARE: return x * x;
    case NC_OP_RECIP: return 1.0f / x;
    case NC_OP_SIN: return sinf(x);
    case NC_OP_COS: return cosf(x);
    default: return 0.0f;
    }
}

/* d f(x) / dx given x and y = f(x) (y is used where cheaper: exp, tanh, sigmoid, sqrt, rsqrt, recip) */
__device__ inline float unary_df(int32_t op, float x, float y) {
    switch (op) {
    case NC_OP_NEG: return -1.0f;
    case NC_OP_EXP: return y;
    case NC_OP_LOG: return 1.0f / x;
    case NC_OP_TANH: return 1.0f - y * y;
    case NC_OP_SIGMOID: return y * (1.0f - y);
    case NC_OP_RELU: return x > 0.0f ? 1.0f : 0.0f;
    case NC_OP_RELU2: return x > 0.0f ? 2.0f * x : 0.0f;
    case NC_OP_SILU: { float s = sigmoidf_(x); return s * (1.0f + x * (1.0f - s)); }
    case NC_OP_GELU: {
        float cdf = 0.5f * (1.0f + erff(x * kSqrt1_2));
        float pdf = kInvSqrt2Pi * expf(-0.5f * x * x);
        return cdf + x * pdf;
    }
    case NC_OP_GELU_TANH: {
        float x2 = x * x;
        float t = tanhf(kGeluC * (x + kGeluA * x2 * x));
        return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * kGeluC * (1.0f + 3.0f * kGeluA * x2);
    }
    case NC_OP_SQRT: return 0.5f / y;
    case NC_OP_RSQRT: return -0.5f * y * y * y;
    case NC_OP_ABS: return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : 0.0f);
    case NC_OP_SQUARE: return 2.0f * x;
    case NC_OP_RECIP: return -y * y;
    case NC_OP_SIN: return cosf(x);
    case NC_OP_COS: return -sinf(x);
    default: return 0.0f;
    }
}

inline bool unary_uses_out(int32_t op) {
    return op == NC_OP_EXP || op == NC_OP_TANH || op == NC_OP_SIGMOID || op == NC_OP_SQRT ||
           op == NC_OP_RSQRT || op == NC_OP_RECIP;
}

const char *binary_name(int32_t op) {
    static const char *n[] = { "add", "sub", "mul", "div", "maximum", "minimum", "pow" };
    return op >= 0 && op <= NC_OP_POW ? n[op] : "unknown";
}

const char *unary_name(int32_t op) {
    static const char *n[] = { "neg", "exp", "log", "tanh", "sigmoid", "relu", "relu2", "silu", "gelu",
                               "gelu_tanh", "sqrt", "rsqrt", "abs", "square", "recip", "sin", "cos" };
    return op >= 0 && op <= NC_OP_COS ? n[op] : "unknown";
}

/* ---- element functors --------------------------------------------------------------------- */
template <typename T>
struct FillF {
    T *p;
    T v;
    template <typename I> __device__ void operator()(const I *off) const { p[off[0]] = v; }
};

template <typename T>
struct CopyRawF {
    T *o;
    const T *a;
    template <typename I> __device__ void operator()(const I *off) const { o[off[0]] = a[off[1]]; }
};

struct CopyConvF {
    void *o;
    const void *a;
    int32_t dto, dta;
    template <typename I> __device__ void operator()(const I *off) const {
        nc_conv_store_f64(o, dto, (int64_t)off[0], nc_conv_load_f64(a, dta, (int64_t)off[1]));
    }
};

struct BinaryF {
    float *o;
    const float *a, *b;
    int32_t op;
    template <typename I> __device__ void operator()(const I *off) const { o[off[0]] = binary_f(op, a[off[1]], b[off[2]]); }
};

struct BinaryScalarF {
    float *o;
    const float *a;
    float s;
    int32_t op;
    template <typename I> __device__ void operator()(const I *off) const { o[off[0]] = binary_f(op, a[off[1]], s); }
};

struct UnaryF {
    float *o;
    const float *a;
    int32_t op;
    template <typename I> __device__ void operator()(const I *off) const { o[off[0]] = unary_f(op, a[off[1]]); }
};

struct UnaryBackwardF {
    float *ga;
    const float *out, *a, *gout;
    int32_t op;
    template <typename I> __device__ void operator()(const I *off) const {
        I i = off[0];
        float x = a ? a[i] : 0.0f, y = out ? out[i] : 0.0f;
        ga[i] += gout[i] * unary_df(op, x, y);
    }
};

struct AddScaledF {
    float *o;
    const float *a;
    float alpha;
    template <typename I> __device__ void operator()(const I *off) const { o[off[0]] += alpha * a[off[1]]; }
};

Geo contiguous_geo(int64_t n, int nops) {
    nc_strided3 g;
    memset(&g, 0, sizeof g);
    g.ndim = 1;
    g.shape[0] = n;
    g.st_out[0] = g.st_a[0] = g.st_b[0] = 1;
    Geo geo;
    make_geo("contiguous", &g, nops, &geo);
    return geo;
}

/* ---- cuBLAS handle (one, created lazily) -------------------------------------------------- */
std::mutex g_blas_mu;
cublasHandle_t g_blas = nullptr;

nc_status blas_handle(cublasHandle_t *h) {
    std::lock_guard<std::mutex> lock(g_blas_mu);
    if (!g_blas) {
        cublasStatus_t s = cublasCreate(&g_blas);
        if (s != CUBLAS_STATUS_SUCCESS) {
            g_blas = nullptr;
            return fail(NC_ERR_DEVICE, "sgemm: cublasCreate failed: %s", cublas_name(s));
        }
        /* full f32 products (no TF32), so CUDA matches the CPU within f32 tolerances */
        cublasSetMathMode(g_blas, CUBLAS_DEFAULT_MATH);
    }
    *h = g_blas;
    return NC_OK;
}

/* C (m, n) row-major, `batch` matrices `stride_c` apart: C = beta * C (beta 0 writes zeros). */
__global__ void scale_matrix_kernel(float *c, int64_t m, int64_t n, int64_t ldc, int64_t stride_c, int64_t batch,
                                    float beta) {
    int64_t total = batch * m * n, step = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += step) {
        int64_t j = i % n, r = (i / n) % m, bi = i / (n * m);
        float *p = c + bi * stride_c + r * ldc + j;
        *p = beta == 0.0f ? 0.0f : beta * *p;
    }
}

/* ================================ the vtable entries ====================================== */
const char *api_last_error(void) { return g_err; }

int32_t api_device_count(void) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        cuda_fail(e, "device_count: cudaGetDeviceCount failed");
        cudaGetLastError();   /* clear it so later calls do not report it */
        return 0;
    }
    if (n <= 0) {
        fail(NC_ERR_DEVICE, "device_count: no CUDA device present");
        return 0;
    }
    return (int32_t)n;
}

nc_status api_malloc(void **p, int64_t nbytes) {
    if (!p) return fail(NC_ERR_ARG, "malloc: output pointer is NULL");
    *p = nullptr;
    if (nbytes < 0) return fail(NC_ERR_ARG, "malloc: expected nbytes >= 0, got %lld", (long long)nbytes);
    cudaError_t e = cudaMalloc(p, (size_t)(nbytes > 0 ? nbytes : 1));
    if (e != cudaSuccess) {
        *p = nullptr;
        cudaGetLastError();
        char what[96];
        snprintf(what, sizeof what, "malloc: cudaMalloc of %lld bytes failed", (long long)nbytes);
        return cuda_fail(e, what);
    }
    return NC_OK;
}

nc_status api_free(void *p) {
    if (!p) return NC_OK;
    cudaError_t e = cudaFree(p);
    /* at process exit the runtime may already be torn down: nothing is left to free */
    if (e == cudaErrorCudartUnloading) { cudaGetLastError(); return NC_OK; }
    if (e != cudaSuccess) return cuda_fail(e, "free: cudaFree failed");
    return NC_OK;
}

nc_status api_memcpy(void *dst, const void *src, int64_t nbytes, int32_t kind) {
    if (nbytes < 0) return fail(NC_ERR_ARG, "memcpy: expected nbytes >= 0, got %lld", (long long)nbytes);
    if (nbytes == 0) return NC_OK;
    if (!dst || !src) return fail(NC_ERR_ARG, "memcpy: %s pointer is NULL", dst ? "source" : "destination");
    cudaMemcpyKind k;
    const char *name;
    switch (kind) {
    case NC_COPY_H2D: k = cudaMemcpyHostToDevice; name = "host to device"; break;
    case NC_COPY_D2H: k = cudaMemcpyDeviceToHost; name = "device to host"; break;
    case NC_COPY_D2D: k = cudaMemcpyDeviceToDevice; name = "device to device"; break;
    default: return fail(NC_ERR_ARG, "memcpy: expected kind 0 (H2D), 1 (D2H) or 2 (D2D), got %d", kind);
    }
    cudaError_t e = cudaMemcpy(dst, src, (size_t)nbytes, k);
    if (e != cudaSuccess) {
        char what[128];
        snprintf(what, sizeof what, "memcpy: cudaMemcpy %s of %lld bytes failed", name, (long long)nbytes);
        return cuda_fail(e, what);
    }
    return NC_OK;
}

nc_status api_memset0(void *p, int64_t nbytes) {
    if (nbytes < 0) return fail(NC_ERR_ARG, "memset0: expected nbytes >= 0, got %lld", (long long)nbytes);
    if (nbytes == 0) return NC_OK;
    if (!p) return fail(NC_ERR_ARG, "memset0: pointer is NULL");
    cudaError_t e = cudaMemset(p, 0, (size_t)nbytes);
    if (e != cudaSuccess) {
        char what[96];
        snprintf(what, sizeof what, "memset0: cudaMemset of %lld bytes failed", (long long)nbytes);
        return cuda_fail(e, what);
    }
    return NC_OK;
}

nc_status api_synchronize(void) {
    cudaError_t e = cudaDeviceSynchronize();
    if (e != cudaSuccess) return cuda_fail(e, "synchronize: cudaDeviceSynchronize reported an earlier failure");
    return NC_OK;
}

template <typename T>
nc_status fill_as(void *p, int64_t n, T v) {
    Geo g = contiguous_geo(n, 1);
    return launch_strided<1>("fill", g, FillF<T>{ (T *)p, v });
}

nc_status api_fill(void *p, int64_t n, int32_t dtype, double value) {
    if (n < 0) return fail(NC_ERR_ARG, "fill: expected n >= 0, got %lld", (long long)n);
    if (elem_size(dtype) == 0)
        return fail(NC_ERR_DTYPE, "fill: expected a plain dtype (f32, f64, bf16, f16, i8, i32, i64, u8), got %s",
                    dtype_name(dtype));
    if (n == 0) return NC_OK;
    if (!p) return fail(NC_ERR_ARG, "fill: pointer is NULL");
    switch (dtype) {   /* the value is converted once on the host, exactly as the CPU stores it */
    case NC_F32: { float v = (float)value; return fill_as<uint32_t>(p, n, nc_conv_f32_bits(v)); }
    case NC_F64: { uint64_t u; memcpy(&u, &value, 8); return fill_as<uint64_t>(p, n, u); }
    case NC_BF16: return fill_as<uint16_t>(p, n, nc_conv_f32_bf16((float)value));
    case NC_F16: return fill_as<uint16_t>(p, n, nc_conv_f32_f16((float)value));
    case NC_I8: return fill_as<uint8_t>(p, n, (uint8_t)(int8_t)nc_conv_sat_i64(value, -128, 127));
    case NC_I32: return fill_as<uint32_t>(p, n, (uint32_t)(int32_t)nc_conv_sat_i64(value, -2147483648.0, 2147483647.0));
    case NC_I64:
        return fill_as<uint64_t>(p, n, (uint64_t)nc_conv_sat_i64(value, -9223372036854775808.0, 9223372036854774784.0));
    case NC_U8: return fill_as<uint8_t>(p, n, (uint8_t)nc_conv_sat_i64(value, 0, 255));
    default: return fail(NC_ERR_DTYPE, "fill: unsupported dtype %s", dtype_name(dtype));
    }
}

nc_status api_strided_copy(void *out, int32_t dtype_out, const void *a, int32_t dtype_a, const nc_strided3 *g) {
    static const char *op = "strided_copy";
    int eo = elem_size(dtype_out), ea = elem_size(dtype_a);
    if (eo == 0 || ea == 0)
        return fail(NC_ERR_DTYPE, "%s: expected plain dtypes, got %s to %s", op, dtype_name(dtype_a), dtype_name(dtype_out));
    Geo geo;
    nc_status s = make_geo(op, g, 2, &geo);
    if (s != NC_OK) return s;
    if (geo.n == 0) return NC_OK;
    if (!out || !a) return fail(NC_ERR_ARG, "%s: %s pointer is NULL", op, out ? "source" : "destination");
    if (dtype_out == dtype_a) {
        if (geo.contig) {
            cudaError_t e = cudaMemcpy(out, a, (size_t)(geo.n * eo), cudaMemcpyDeviceToDevice);
            if (e != cudaSuccess) return cuda_fail(e, "strided_copy: contiguous cudaMemcpy device to device failed");
            return NC_OK;
        }
        switch (eo) {
        case 1: return launch_strided<2>(op, geo, CopyRawF<uint8_t>{ (uint8_t *)out, (const uint8_t *)a });
        case 2: return launch_strided<2>(op, geo, CopyRawF<uint16_t>{ (uint16_t *)out, (const uint16_t *)a });
        case 4: return launch_strided<2>(op, geo, CopyRawF<uint32_t>{ (uint32_t *)out, (const uint32_t *)a });
        default: return launch_strided<2>(op, geo, CopyRawF<uint64_t>{ (uint64_t *)out, (const uint64_t *)a });
        }
    }
    return launch_strided<2>(op, geo, CopyConvF{ out, a, dtype_out, dtype_a });
}

inline bool fits_int(int64_t v) { return v >= 0 && v <= INT_MAX; }

nc_status api_sgemm(int32_t trans_a, int32_t trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                    const float *a, int64_t lda, int64_t stride_a, const float *b, int64_t ldb, int64_t stride_b,
                    float beta, float *c, int64_t ldc, int64_t stride_c, int64_t batch) {
    if (m < 0 || n < 0 || k < 0 || batch < 0)
        return fail(NC_ERR_SHAPE, "sgemm: expected m, n, k, batch >= 0, got m=%lld n=%lld k=%lld batch=%lld",
                    (long long)m, (long long)n, (long long)k, (long long)batch);
    if (m == 0 || n == 0 || batch == 0) return NC_OK;
    if (!c) return fail(NC_ERR_ARG, "sgemm: C pointer is NULL");
    if (m == 1 && ldc < n) ldc = n;   /* one row: its row stride is never used */
    if (ldc < n) return fail(NC_ERR_SHAPE, "sgemm: expected ldc >= n = %lld, got ldc=%lld", (long long)n, (long long)ldc);
    if (k == 0) {   /* no products: C = beta * C */
        scale_matrix_kernel<<<blocks_for(batch * m * n), kThreads>>>(c, m, n, ldc, stride_c, batch, beta);
        return launch_check("sgemm (k = 0: scale C by beta)", batch * m * n);
    }
    if (!a || !b) return fail(NC_ERR_ARG, "sgemm: %s pointer is NULL", a ? "B" : "A");
    /* Stored row-major matrices: A is (m, k) or, with trans_a, (k, m); B is (k, n) or (n, k).
     * A one-row matrix has no meaningful row stride: give cuBLAS the smallest legal one. */
    int64_t a_rows = trans_a ? k : m, a_cols = trans_a ? m : k;
    int64_t b_rows = trans_b ? n : k, b_cols = trans_b ? k : n;
    if (a_rows == 1 && lda < a_cols) lda = a_cols;
    if (b_rows == 1 && ldb < b_cols) ldb = b_cols;
    if (lda < a_cols)
        return fail(NC_ERR_SHAPE, "sgemm: A is stored (%lld, %lld)%s; expected lda >= %lld, got %lld", (long long)a_rows,
                    (long long)a_cols, trans_a ? " (transposed)" : "", (long long)a_cols, (long long)lda);
    if (ldb < b_cols)
        return fail(NC_ERR_SHAPE, "sgemm: B is stored (%lld, %lld)%s; expected ldb >= %lld, got %lld", (long long)b_rows,
                    (long long)b_cols, trans_b ? " (transposed)" : "", (long long)b_cols, (long long)ldb);
    if (!fits_int(m) || !fits_int(n) || !fits_int(k) || !fits_int(lda) || !fits_int(ldb) || !fits_int(ldc) ||
        !fits_int(batch))
        return fail(NC_ERR_UNSUPPORTED,
                    "sgemm: cuBLAS takes 32-bit sizes; got m=%lld n=%lld k=%lld lda=%lld ldb=%lld ldc=%lld batch=%lld",
                    (long long)m, (long long)n, (long long)k, (long long)lda, (long long)ldb, (long long)ldc,
                    (long long)batch);
    cublasHandle_t h;
    nc_status st = blas_handle(&h);
    if (st != NC_OK) return st;
    /* Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: a row-major matrix with row
     * stride ld is the column-major transpose with leading dimension ld, so B and A swap places
     * and keep their own transpose flags. */
    cublasOperation_t ob = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, oa = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasStatus_t s;
    if (batch == 1)
        s = cublasSgemm(h, ob, oa, (int)n, (int)m, (int)k, &alpha, b, (int)ldb, a, (int)lda, &beta, c, (int)ldc);
    else
        s = cublasSgemmStridedBatched(h, ob, oa, (int)n, (int)m, (int)k, &alpha, b, (int)ldb, (long long)stride_b, a,
                                      (int)lda, (long long)stride_a, &beta, c, (int)ldc, (long long)stride_c,
                                      (int)batch);
    if (s != CUBLAS_STATUS_SUCCESS)
        return fail(NC_ERR_DEVICE,
                    "sgemm: cublasSgemm%s failed: %s (m=%lld n=%lld k=%lld trans_a=%d trans_b=%d lda=%lld ldb=%lld "
                    "ldc=%lld batch=%lld)",
                    batch == 1 ? "" : "StridedBatched", cublas_name(s), (long long)m, (long long)n, (long long)k,
                    trans_a, trans_b, (long long)lda, (long long)ldb, (long long)ldc, (long long)batch);
    return launch_check("sgemm", batch * m * n);
}

nc_status api_binary(float *out, const float *a, const float *b, const nc_strided3 *g, int32_t op) {
    if (op < NC_OP_ADD || op > NC_OP_POW)
        return fail(NC_ERR_ARG, "binary: expected op in [0, %d] (enum nc_binary_op), got %d", NC_OP_POW, op);
    char name[32];
    snprintf(name, sizeof name, "binary %s", binary_name(op));
    Geo geo;
    nc_status s = make_geo(name, g, 3, &geo);
    if (s != NC_OK) return s;
    if (geo.n && (!out || !a || !b)) return fail(NC_ERR_ARG, "%s: NULL operand pointer", name);
    return launch_strided<3>(name, geo, BinaryF{ out, a, b, op });
}

nc_status api_binary_scalar(float *out, const float *a, const nc_strided3 *g, double sv, int32_t op) {
    if (op < NC_OP_ADD || op > NC_OP_POW)
        return fail(NC_ERR_ARG, "binary_scalar: expected op in [0, %d] (enum nc_binary_op), got %d", NC_OP_POW, op);
    char name[40];
    snprintf(name, sizeof name, "binary_scalar %s", binary_name(op));
    Geo geo;
    nc_status s = make_geo(name, g, 2, &geo);
    if (s != NC_OK) return s;
    if (geo.n && (!out || !a)) return fail(NC_ERR_ARG, "%s: NULL operand pointer", name);
    return launch_strided<2>(name, geo, BinaryScalarF{ out, a, (float)sv, op });
}

nc_status api_unary(float *out, const float *a, const nc_strided3 *g, int32_t op) {
    if (op < NC_OP_NEG || op > NC_OP_COS)
        return fail(NC_ERR_ARG, "unary: expected op in [0, %d] (enum nc_unary_op), got %d", NC_OP_COS, op);
    char name[32];
    snprintf(name, sizeof name, "unary %s", unary_name(op));
    Geo geo;
    nc_status s = make_geo(name, g, 2, &geo);
    if (s != NC_OK) return s;
    if (geo.n && (!out || !a)) return fail(NC_ERR_ARG, "%s: NULL operand pointer", name);
    return launch_strided<2>(name, geo, UnaryF{ out, a, op });
}

nc_status api_unary_backward(float *ga, const float *out, const float *a, const float *gout, int64_t n, int32_t op) {
    if (op < NC_OP_NEG || op > NC_OP_COS)
        return fail(NC_ERR_ARG, "unary_backward: expected op in [0, %d] (enum nc_unary_op), got %d", NC_OP_COS, op);
    char name[48];
    snprintf(name, sizeof name, "unary_backward %s", unary_name(op));
    if (n < 0) return fail(NC_ERR_ARG, "%s: expected n >= 0, got %lld", name, (long long)n);
    if (n == 0 || !ga) return NC_OK;   /* nothing to accumulate into */
    if (!gout) return fail(NC_ERR_ARG, "%s: gout pointer is NULL", name);
    bool uses_out = unary_uses_out(op);
    if (uses_out && !out) return fail(NC_ERR_ARG, "%s: needs the forward output, got out NULL", name);
    if (!uses_out && op != NC_OP_NEG && !a) return fail(NC_ERR_ARG, "%s: needs the forward input, got a NULL", name);
    Geo geo = contiguous_geo(n, 1);
    return launch_strided<1>(name, geo, UnaryBackwardF{ ga, uses_out ? out : nullptr, uses_out ? nullptr : a, gout, op });
}

nc_status api_add_scaled(float *out, const float *a, const nc_strided3 *g, double alpha) {
    static const char *op = "add_scaled";
    Geo geo;
    nc_status s = make_geo(op, g, 2, &geo);
    if (s != NC_OK) return s;
    if (geo.n && (!out || !a)) return fail(NC_ERR_ARG, "%s: NULL operand pointer", op);
    /* threads would race on a destination element reached through a stride-0 dim */
    for (int32_t d = 0; d < geo.nd; d++)
        if (geo.st[0][d] == 0)
            return fail(NC_ERR_ARG, "%s: destination has a broadcast (stride 0) dim of size %lld; expected a plain view",
                        op, (long long)geo.shape[d]);
    return launch_strided<2>(op, geo, AddScaledF{ out, a, (float)alpha });
}

/* ---- sum_to: one thread per kept element, reduced index space walked in logical order ------ */
__global__ void sum_to_kernel(float *dst, const float *src, nc_reduce_geo g, double alpha) {
    int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= g.nkept) return;
    int64_t so = 0, dof = 0, kk = k;
    for (int32_t i = g.nk - 1; i >= 0; i--) {
        int64_t c = kk % g.kshape[i];
        kk /= g.kshape[i];
        so += c * g.kst_src[i];
        dof += c * g.kst_dst[i];
    }
    double acc = 0.0;
    for (int64_t r = 0; r < g.nred; r++) {
        int64_t rr = r, off = 0;
        for (int32_t i = g.nr - 1; i >= 0; i--) {
            int64_t c = rr % g.rshape[i];
            rr /= g.rshape[i];
            off += c * g.rst_src[i];
        }
        acc += (double)src[so + off];
    }
    dst[dof] = (float)((double)dst[dof] + alpha * acc);
}

nc_status api_sum_to(float *dst, const float *src, const nc_reduce_geo *g, double alpha) {
    static const char *op = "sum_to";
    if (!g) return fail(NC_ERR_ARG, "%s: NULL geometry", op);
    if (g->nkept == 0 || g->nred == 0) return NC_OK;
    if (!dst || !src) return fail(NC_ERR_ARG, "%s: NULL operand pointer", op);
    if (g->nk < 0 || g->nk > NC_MAX_DIMS || g->nr < 0 || g->nr > NC_MAX_DIMS)
        return fail(NC_ERR_ARG, "%s: bad geometry (%d kept, %d reduced dims)", op, g->nk, g->nr);
    const int threads = 256;
    int64_t blocks = (g->nkept + threads - 1) / threads;
    sum_to_kernel<<<(unsigned)blocks, threads>>>(dst, src, *g, alpha);
    return launch_check(op, g->nkept);
}

const nc_cuda_api g_api = {
    NC_CUDA_API_VERSION,
    api_last_error,
    api_device_count,
    api_malloc,
    api_free,
    api_memcpy,
    api_memset0,
    api_synchronize,
    api_fill,
    api_strided_copy,
    api_sgemm,
    api_binary,
    api_binary_scalar,
    api_unary,
    api_unary_backward,
    api_add_scaled,
    api_sum_to,
    nc_cu::opt_adam,
    nc_cu::opt_lion,
    nc_cu::opt_muon_momentum,
    nc_cu::opt_muon8_momentum,
    nc_cu::opt_apply_update,
    nc_cu::opt_quant8,
    nc_cu::opt_dequant8,
    nc_cu::opt_newton_schulz,
    nc_cu::op_embedding,
    nc_cu::op_embedding_backward,
    nc_cu::op_rmsnorm,
    nc_cu::op_rmsnorm_backward,
    nc_cu::op_rope,
    nc_cu::op_quant_weight,
    nc_cu::op_quant_act,
    nc_cu::op_cross_entropy,
    nc_cu::op_cross_entropy_backward,
    nc_cu::op_attention,
    nc_cu::op_attention_backward,
    nc_cu::op_softmax,
    nc_cu::op_softmax_backward,
};

}  // namespace

/* ---- helpers shared with the other translation units (common.cuh, hidden visibility) ------ */
namespace nc_cu {
nc_status fail(nc_status code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_err, sizeof g_err, fmt, ap);
    va_end(ap);
    return code;
}
nc_status cuda_fail(cudaError_t e, const char *what) { return ::cuda_fail(e, what); }
nc_status launch_check(const char *op, int64_t n) { return ::launch_check(op, n); }
nc_status sgemm(int32_t trans_a, int32_t trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float *a,
                int64_t lda, int64_t stride_a, const float *b, int64_t ldb, int64_t stride_b, float beta, float *c,
                int64_t ldc, int64_t stride_c, int64_t batch) {
    return api_sgemm(trans_a, trans_b, m, n, k, alpha, a, lda, stride_a, b, ldb, stride_b, beta, c, ldc, stride_c,
                     batch);
}
}  // namespace nc_cu

extern "C" __attribute__((visibility("default"))) const nc_cuda_api *nc_cuda_api_get(void) { return &g_api; }
