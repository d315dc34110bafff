/* core/nanochat.h — the whole public ABI of libnanochat.
 *
 * Promise: everything a caller (LuaJIT FFI today, Python ctypes/cffi later) may use is declared
 * between NC_FFI_BEGIN and NC_FFI_END. That region holds only typedefs, enums, structs and
 * prototypes (no preprocessor lines): lua/nanochat/ffi.lua reads it from this file and passes it
 * to ffi.cdef once, so the Lua view of the ABI can never drift from the C one.
 *
 * Conventions (docs/design.md):
 *  - sizes, shapes, strides and offsets are int64_t; flags and enums are int32_t;
 *  - fallible functions return nc_status and set a thread-local message (nc_last_error) naming
 *    the op and the expected vs actual shapes / dtypes / devices; nothing here calls exit/abort;
 *  - functions whose name contains _new, _view or _retain return a +1 reference, and only they;
 *    release it with nc_tensor_release (NULL on failure, with nc_last_error set);
 *  - ops take outputs first, then saved tensors, then inputs, then sizes and options;
 *    backward functions ACCUMULATE (+=) into their gradient outputs, any of which may be NULL;
 *  - weight layout is W (out, in) and linear is y = x W^T; strides and offsets count elements.
 */
#ifndef NANOCHAT_H
#define NANOCHAT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* NC_FFI_BEGIN */

enum { NC_ABI_VERSION = 1, NC_MAX_DIMS = 8 };

typedef int32_t nc_status;
enum nc_status_code {
    NC_OK = 0,
    NC_ERR_SHAPE = 1,        /* shapes do not fit the op */
    NC_ERR_DTYPE = 2,        /* dtype not supported by the op / mismatched */
    NC_ERR_DEVICE = 3,       /* tensors on different devices, or device unavailable */
    NC_ERR_INDEX = 4,        /* index out of range */
    NC_ERR_IO = 5,           /* file system error (open, write, fsync, rename, short read) */
    NC_ERR_FORMAT = 6,       /* corrupt or unsupported file content */
    NC_ERR_OOM = 7,          /* allocation failed */
    NC_ERR_ARG = 8,          /* invalid argument value */
    NC_ERR_UNSUPPORTED = 9   /* combination the library does not provide (message says which) */
};

/* dtypes: append-only, explicit values. Traits live in C only (nc_dtype_info). */
enum nc_dtype {
    NC_F32 = 0, NC_BF16 = 1, NC_F16 = 2, NC_I8 = 3, NC_I32 = 4, NC_I64 = 5, NC_U8 = 6,
    NC_F64 = 7,
    NC_TQ2 = 8,   /* packed ternary, 2 bits/weight, blocks of 256 (TQ2_0-like); storage only */
    NC_TQ1 = 9,   /* packed ternary, 1.6875 bits/weight, blocks of 256 (TQ1_0-like); storage only */
    NC_DTYPE_COUNT = 10
};

enum nc_device { NC_CPU = 0, NC_CUDA = 1, NC_DEVICE_COUNT = 2 };

typedef struct nc_dtype_traits {
    const char *name;        /* "f32", "bf16", ... */
    int32_t dtype;
    int32_t elem_size;       /* bytes per element; 0 for packed block formats */
    int32_t block_elems;     /* elements per block (1 for plain dtypes) */
    int32_t block_bytes;     /* bytes per block (== elem_size for plain dtypes) */
    int32_t is_float;
    int32_t is_signed;
    int32_t is_packed;       /* packed formats support storage, copy and views of whole blocks only */
} nc_dtype_traits;

typedef struct nc_storage {
    int64_t refcount;
    void *data;
    int64_t nbytes;
    int32_t device;
    int32_t flags;           /* NC_STORAGE_* */
} nc_storage;

/* NC_STORAGE_SMALL: the storage and its data sit in one small block with the tensor header that
 * created it (core/tensor.c); the block is recycled when the storage's refcount reaches 0. */
enum nc_storage_flags { NC_STORAGE_OWNS = 1, NC_STORAGE_SMALL = 2 };

typedef struct nc_tensor {
    int64_t refcount;
    nc_storage *storage;     /* a view retains its storage */
    int64_t offset;          /* in elements from storage->data */
    int64_t shape[8];
    int64_t strides[8];      /* in elements; 0 for expanded (broadcast) dims */
    int32_t ndim;            /* 0 = scalar */
    int32_t dtype;
    int32_t device;
    int32_t flags;           /* NC_TENSOR_* */
} nc_tensor;

/* NC_TENSOR_SMALL: the header lives inside its storage's small block (it is not freed on its
 * own; the block goes when the storage does). Small = CPU data of at most NC_SMALL_DATA bytes. */
enum nc_tensor_flags { NC_TENSOR_SMALL = 1 };
enum { NC_SMALL_DATA = 256 };

typedef struct nc_mem_stats {
    int64_t host_bytes, host_peak, host_allocs, host_frees;
    int64_t device_bytes, device_peak, device_allocs, device_frees;
    int64_t tensors_live;    /* nc_tensor headers alive */
    int64_t host_cached;     /* freed host blocks kept for reuse (not in host_bytes) */
} nc_mem_stats;

/* ---- library, errors, ABI ---------------------------------------------------------------- */
const char *nc_version(void);
int32_t nc_abi_version(void);
int64_t nc_abi_sizeof(const char *type_name);   /* C's sizeof for "nc_tensor", ...; -1 unknown */
const char *nc_last_error(void);                /* message of the last failure on this thread */
void nc_clear_error(void);
const char *nc_status_name(nc_status s);
const nc_dtype_traits *nc_dtype_info(int32_t dtype);   /* NULL if out of range */
int32_t nc_dtype_from_name(const char *name);          /* -1 if unknown */
void nc_mem_stats_get(nc_mem_stats *out);
void nc_mem_reset_peak(void);                  /* peaks := current live bytes (per-phase peaks) */
/* Large host blocks (>= 64 KiB) are recycled through a size-class cache capped at
 * NC_HOST_CACHE_MB (default: 1/8 of physical memory, clamped to 1-8 GiB; 0 disables), small tensors' blocks through a free list of at
 * most NC_SMALL_CACHE_MB (default 8) MiB (host_cached counts both); nc_mem_trim returns both caches
 * to the system. */
void nc_mem_trim(void);
int64_t nc_host_cache_limit(void);             /* that cap in bytes (0: the cache is off) */

/* threads and kernels */
void nc_set_num_threads(int32_t n);
int32_t nc_get_num_threads(void);
/* "avx512", "avx2" or "scalar": the best this CPU has unless NC_KERNEL=avx2 / scalar (at startup)
 * or nc_set_cpu_kernel ("auto", "avx512", "avx2", "scalar") says otherwise */
const char *nc_cpu_kernel_name(void);
nc_status nc_set_cpu_kernel(const char *name);
/* Outputs of at least this many bytes use streaming (non-temporal) stores in the AVX2 streaming
 * kernels (default 32 MiB or $NC_NT_BYTES; <= 0 disables). Results are identical either way. */
void nc_set_nt_bytes(int64_t bytes);
int64_t nc_get_nt_bytes(void);

/* devices */
int32_t nc_cuda_available(void);                /* 1 when the CUDA backend loaded and a GPU exists */
const char *nc_cuda_status(void);               /* why CUDA is (un)available, for messages */
int32_t nc_device_count(int32_t device);

/* ---- tensors ------------------------------------------------------------------------------ */
nc_tensor *nc_tensor_new(int32_t dtype, int32_t device, int32_t ndim, const int64_t *shape);
nc_tensor *nc_tensor_new_zeros(int32_t dtype, int32_t device, int32_t ndim, const int64_t *shape);
nc_tensor *nc_tensor_new_from_data(int32_t dtype, int32_t ndim, const int64_t *shape,
                                   const void *data, int64_t nbytes);   /* CPU, copies */
nc_tensor *nc_tensor_new_contiguous(const nc_tensor *t);  /* retains t itself if contiguous */
nc_tensor *nc_tensor_new_clone(const nc_tensor *t);       /* always a fresh contiguous copy */
nc_tensor *nc_tensor_new_to(const nc_tensor *t, int32_t dtype, int32_t device); /* convert/move */
void nc_tensor_retain(nc_tensor *t);
void nc_tensor_release(nc_tensor *t);

int64_t nc_tensor_numel(const nc_tensor *t);
int32_t nc_tensor_is_contiguous(const nc_tensor *t);
void *nc_tensor_data(const nc_tensor *t);       /* pointer to element 0 (host or device) */
int32_t nc_tensor_same_shape(const nc_tensor *a, const nc_tensor *b);

/* views (share storage; dims may be negative = counted from the end) */
nc_tensor *nc_tensor_view_as_strided(const nc_tensor *t, int32_t ndim, const int64_t *shape,
                                     const int64_t *strides, int64_t offset);
nc_tensor *nc_tensor_view_reshape(const nc_tensor *t, int32_t ndim, const int64_t *shape); /* -1 infers one dim; fails if strides do not allow */
nc_tensor *nc_tensor_view_permute(const nc_tensor *t, const int32_t *perm);
nc_tensor *nc_tensor_view_transpose(const nc_tensor *t, int32_t d0, int32_t d1);
nc_tensor *nc_tensor_view_narrow(const nc_tensor *t, int32_t dim, int64_t start, int64_t length);
nc_tensor *nc_tensor_view_select(const nc_tensor *t, int32_t dim, int64_t index);
nc_tensor *nc_tensor_view_expand(const nc_tensor *t, int32_t ndim, const int64_t *shape);  /* -1 keeps */
nc_tensor *nc_tensor_view_unsqueeze(const nc_tensor *t, int32_t dim);
nc_tensor *nc_tensor_view_squeeze(const nc_tensor *t, int32_t dim);

/* data movement */
nc_status nc_tensor_copy(nc_tensor *dst, const nc_tensor *src);   /* same numel & shape (src may broadcast); converts dtype; any strides; cross-device */
nc_status nc_tensor_fill(nc_tensor *t, double value);
nc_status nc_tensor_get(const nc_tensor *t, const int64_t *index, double *out);   /* one element, index has ndim entries */
nc_status nc_tensor_set(nc_tensor *t, const int64_t *index, double value);
nc_status nc_tensor_read_f64(const nc_tensor *t, double *out, int64_t n);        /* logical order, any layout, CPU or CUDA */
nc_status nc_tensor_write_f64(nc_tensor *t, const double *src, int64_t n);       /* logical order */

/* creation helpers filling an existing tensor */
nc_status nc_tensor_arange(nc_tensor *t, double start, double step);
/* counter-based RNG (Philox4x32-10): element i of the logical order draws from counter
 * (offset + i), key = seed. Same seed and offset give the same values on any thread count. */
nc_status nc_tensor_rand(nc_tensor *t, uint64_t seed, uint64_t offset, double lo, double hi);
nc_status nc_tensor_randn(nc_tensor *t, uint64_t seed, uint64_t offset, double mean, double std);
void nc_philox4x32(uint64_t seed, uint64_t counter, uint32_t out[4]);   /* exposed for tests */

/* ---- ops (CPU always; CUDA where noted) ---------------------------------------------------- *
 * Float ops compute in f32 (inputs and outputs f32 unless stated). Inputs may have any strides
 * (including broadcast strides of 0); outputs must be contiguous unless stated.
 * Devices: an op runs on CUDA when its tensors are CUDA tensors (all of one call on one device,
 * else NC_ERR_DEVICE naming the op and the tensor). On CUDA today: elementwise / unary / binary
 * and their backward, copies, sum_to / sum / mean, matmul, embedding (+ backward), rmsnorm (+
 * backward), rope (+ backward), softmax / log-softmax (+ backward), the two quantizers,
 * cross_entropy (+ backward, + backward_rows) and attention (+ backward, + masked); any other op
 * on CUDA tensors is a clean error naming it (README "CUDA nn ops"). */

enum nc_binary_op { NC_OP_ADD = 0, NC_OP_SUB = 1, NC_OP_MUL = 2, NC_OP_DIV = 3,
                    NC_OP_MAXIMUM = 4, NC_OP_MINIMUM = 5, NC_OP_POW = 6,
                    NC_OP_FLOOR_DIV = 7 /* integer tensors only (floor of the exact quotient) */ };
enum nc_unary_op { NC_OP_NEG = 0, NC_OP_EXP = 1, NC_OP_LOG = 2, NC_OP_TANH = 3, NC_OP_SIGMOID = 4,
                   NC_OP_RELU = 5, NC_OP_RELU2 = 6, NC_OP_SILU = 7, NC_OP_GELU = 8 /* erf form */,
                   NC_OP_GELU_TANH = 9, NC_OP_SQRT = 10, NC_OP_RSQRT = 11, NC_OP_ABS = 12,
                   NC_OP_SQUARE = 13, NC_OP_RECIP = 14, NC_OP_SIN = 15, NC_OP_COS = 16 };
enum nc_reduce_op { NC_RED_SUM = 0, NC_RED_MEAN = 1, NC_RED_MAX = 2, NC_RED_MIN = 3 };

/* Integer tensors (CPU): ADD SUB MUL MAXIMUM MINIMUM FLOOR_DIV (binary, binary_scalar with an
 * integral s), NEG ABS (unary), clamp, where, compare, reduce_dim SUM (into i64 or the input dtype)
 * MAX MIN work on i32 and i64 with exact two's-complement (wrapping) arithmetic and no gradient;
 * every operand and out must share the dtype (mixed dtypes fail naming both). DIV and POW of
 * integers fail: convert with :to('f32') or use FLOOR_DIV (division by zero is an error).
 * out shape = broadcast(a.shape, b.shape). CUDA: yes (f32). */
nc_status nc_broadcast_shape(int32_t *ndim_out, int64_t *shape_out, const nc_tensor *a, const nc_tensor *b);
nc_status nc_binary(nc_tensor *out, const nc_tensor *a, const nc_tensor *b, int32_t op);
nc_status nc_binary_backward(nc_tensor *ga, nc_tensor *gb, const nc_tensor *out,
                             const nc_tensor *a, const nc_tensor *b, const nc_tensor *gout, int32_t op);
/* out = op(a, s) elementwise with a scalar on the right (ADD, SUB, MUL, DIV, MAXIMUM, MINIMUM, POW).
 * CUDA: yes. Backward of the a-side is nc_binary_scalar_backward. */
nc_status nc_binary_scalar(nc_tensor *out, const nc_tensor *a, double s, int32_t op);
nc_status nc_binary_scalar_backward(nc_tensor *ga, const nc_tensor *a, const nc_tensor *gout, double s, int32_t op);
/* out = f(a). CUDA: yes. Backward uses out when cheaper (exp, tanh, sigmoid, sqrt, rsqrt, recip). */
nc_status nc_unary(nc_tensor *out, const nc_tensor *a, int32_t op);
nc_status nc_unary_backward(nc_tensor *ga, const nc_tensor *out, const nc_tensor *a, const nc_tensor *gout, int32_t op);
/* The same on the rows listed in keep only (rows = the last dim; keep 1-D contiguous i64, strictly
 * increasing; ga, gout and the operand read contiguous, CPU; Collider): other rows of ga untouched. */
nc_status nc_unary_backward_rows(nc_tensor *ga, const nc_tensor *out, const nc_tensor *a, const nc_tensor *gout,
                                 int32_t op, const nc_tensor *keep);
/* dst += alpha * src, src broadcast to dst's shape; dst may be a strided view. CUDA: yes. */
nc_status nc_add_scaled(nc_tensor *dst, const nc_tensor *src, double alpha);
/* dst += alpha * sum of src over the dims where dst is broadcast (dst.shape broadcasts to src.shape;
 * dst may have fewer dims). The gradient of broadcasting. */
nc_status nc_sum_to(nc_tensor *dst, const nc_tensor *src, double alpha);
nc_status nc_clamp(nc_tensor *out, const nc_tensor *a, double lo, double hi);
nc_status nc_clamp_backward(nc_tensor *ga, const nc_tensor *a, const nc_tensor *gout, double lo, double hi);
/* cond: u8 (nonzero = take a); a, b, cond broadcast together; out f32. */
nc_status nc_where(nc_tensor *out, const nc_tensor *cond, const nc_tensor *a, const nc_tensor *b);
nc_status nc_where_backward(nc_tensor *ga, nc_tensor *gb, const nc_tensor *cond, const nc_tensor *gout);
/* comparisons produce u8 0/1 (op: 0 eq, 1 ne, 2 lt, 3 le, 4 gt, 5 ge); no gradient */
nc_status nc_compare(nc_tensor *out, const nc_tensor *a, const nc_tensor *b, int32_t cmp);

/* reduce one dim; out has the input's shape with that dim set to 1 (keepdim); index (i64, same
 * shape as out, may be NULL) receives argmax/argmin positions for MAX/MIN. */
nc_status nc_reduce_dim(nc_tensor *out, nc_tensor *index, const nc_tensor *a, int32_t dim, int32_t op);
nc_status nc_reduce_dim_backward(nc_tensor *ga, const nc_tensor *index, const nc_tensor *gout, int32_t dim, int32_t op);

/* out (..., M, N) = alpha * op(a) op(b) + beta * out, op = transpose when trans_* is 1.
 * a (..., M, K) [or (..., K, M) with trans_a]; b (..., K, N) [(..., N, K) with trans_b] or 2-D
 * (broadcast over a's batch dims). Batch dims must match exactly. OpenBLAS sgemm on CPU,
 * cuBLAS on CUDA. beta = 1 accumulates (backward). */
nc_status nc_matmul(nc_tensor *out, const nc_tensor *a, const nc_tensor *b,
                    int32_t trans_a, int32_t trans_b, double alpha, double beta);

/* softmax / log-softmax over the last dim (log = 1 for log-softmax) */
nc_status nc_softmax(nc_tensor *out, const nc_tensor *a, int32_t log);
nc_status nc_softmax_backward(nc_tensor *ga, const nc_tensor *out, const nc_tensor *gout, int32_t log);

/* Fused cross-entropy over logits (N, V) and targets (N) i32/i64. loss (scalar f32) = mean over
 * targets != ignore_index of: (1-ls) * (lse - x_t) + ls * (lse - mean_j x_j) + z_loss * lse^2.
 * lse (N) f32 is saved for backward. A target outside [0, V) that is not ignore_index is an error. */
nc_status nc_cross_entropy(nc_tensor *loss, nc_tensor *lse, const nc_tensor *logits, const nc_tensor *targets,
                           int64_t ignore_index, double label_smoothing, double z_loss);
nc_status nc_cross_entropy_backward(nc_tensor *glogits, const nc_tensor *lse, const nc_tensor *logits,
                                    const nc_tensor *targets, double gloss, int64_t ignore_index,
                                    double label_smoothing, double z_loss);
/* Per-token backward: glogits (N, V) += grows[r] * d loss_r / d logits_r for every row whose target
 * is not ignore_index (loss_r the per-row term above, no 1/count); grows (N) f32, any stride. */
nc_status nc_cross_entropy_backward_rows(nc_tensor *glogits, const nc_tensor *lse, const nc_tensor *logits,
                                         const nc_tensor *targets, const nc_tensor *grows, int64_t ignore_index,
                                         double label_smoothing, double z_loss);

/* out (..., D) = weight[idx]; idx i32/i64 (...), weight (V, D). backward scatter-adds. */
nc_status nc_embedding(nc_tensor *out, const nc_tensor *weight, const nc_tensor *idx);
nc_status nc_embedding_backward(nc_tensor *gweight, const nc_tensor *idx, const nc_tensor *gout);

/* out = a.index_select(dim, idx) (idx 1-D i32/i64); backward index-adds into ga. */
nc_status nc_index_select(nc_tensor *out, const nc_tensor *a, int32_t dim, const nc_tensor *idx);
nc_status nc_index_add(nc_tensor *dst, int32_t dim, const nc_tensor *idx, const nc_tensor *src);
/* torch.gather / scatter_add semantics: idx has out's shape; dst[.. idx[..] ..] += src[..] */
nc_status nc_gather(nc_tensor *out, const nc_tensor *a, int32_t dim, const nc_tensor *idx);
nc_status nc_scatter_add(nc_tensor *dst, int32_t dim, const nc_tensor *idx, const nc_tensor *src);
/* concatenate n tensors along dim into out (any dtype, same for all); split is narrow views */
nc_status nc_cat(nc_tensor *out, int32_t n, const nc_tensor *const *inputs, int32_t dim);
/* Collider's kept-row buffers (algorithms.md §8.4): rows is a 1-D contiguous i64 list of strictly
 * increasing row indices. gather: out (k, D) = src (N, D)[rows]. scatter: dst (N, D)[rows] = src (k, D),
 * and with zero_rest every other row of dst is set to 0. f32, any 2-D strides, CPU. */
nc_status nc_rows_gather(nc_tensor *out, const nc_tensor *src, const nc_tensor *rows);
nc_status nc_rows_scatter(nc_tensor *dst, const nc_tensor *src, const nc_tensor *rows, int32_t zero_rest);

/* RMSNorm over the last dim: out = x * rstd (* weight when non-NULL), rstd (rows) saved. */
nc_status nc_rmsnorm(nc_tensor *out, nc_tensor *rstd, const nc_tensor *x, const nc_tensor *weight, double eps);
nc_status nc_rmsnorm_backward(nc_tensor *gx, nc_tensor *gweight, const nc_tensor *x, const nc_tensor *weight,
                              const nc_tensor *rstd, const nc_tensor *gout);
/* The same on the rows listed in keep only (1-D contiguous i64, strictly increasing; Collider): other
 * rows of gx are untouched and add nothing to gweight. */
nc_status nc_rmsnorm_backward_rows(nc_tensor *gx, nc_tensor *gweight, const nc_tensor *x, const nc_tensor *weight,
                                   const nc_tensor *rstd, const nc_tensor *gout, const nc_tensor *keep);

/* RoPE, half-split pairing (x1 = x[..., :D/2], x2 = x[..., D/2:]):
 * out1 = x1 cos + x2 sin, out2 = -x1 sin + x2 cos.  x (B, T, H, D); cos, sin (T, D/2).
 * nc_rope_tables fills cos/sin for positions pos0 .. pos0+T-1 with theta_i = base^(-2i/D). */
nc_status nc_rope_tables(nc_tensor *cos, nc_tensor *sin, int64_t pos0, double base);
nc_status nc_rope(nc_tensor *out, const nc_tensor *x, const nc_tensor *cos, const nc_tensor *sin);
nc_status nc_rope_backward(nc_tensor *gx, const nc_tensor *gout, const nc_tensor *cos, const nc_tensor *sin);
/* The same on the tokens (b, t) with qkeep[b, t] != 0 only (qkeep (B, T) u8 contiguous; CPU; Collider):
 * the rows of other tokens in gx are untouched. */
nc_status nc_rope_backward_masked(nc_tensor *gx, const nc_tensor *gout, const nc_tensor *cos, const nc_tensor *sin,
                                  const nc_tensor *qkeep);

/* Attention with GQA, memory-efficient (online softmax over key blocks; never a full T x S matrix).
 * q (B, T, H, D), k and v (B, S, Hkv, D), H % Hkv == 0; out (B, T, H, D); lse (B, H, T) saved.
 * causal: query t (absolute position S - T + t) sees keys s <= S - T + t. */
nc_status nc_attention(nc_tensor *out, nc_tensor *lse, const nc_tensor *q, const nc_tensor *k,
                       const nc_tensor *v, int32_t causal, double scale);
nc_status nc_attention_backward(nc_tensor *gq, nc_tensor *gk, nc_tensor *gv, const nc_tensor *out,
                                const nc_tensor *lse, const nc_tensor *q, const nc_tensor *k,
                                const nc_tensor *v, const nc_tensor *gout, int32_t causal, double scale);
/* The same with a kept-query mask qkeep u8 (B, T) contiguous (Collider, algorithms.md §8.4): masked
 * query rows are skipped in both passes (their gq rows untouched); equals the dense backward with those
 * rows of gout zeroed. On the CPU with S == T (self-attention) the mask also marks keys: the gk / gv
 * rows of masked keys are not computed (left untouched; the kept keys' rows as above, bitwise). */
nc_status nc_attention_backward_masked(nc_tensor *gq, nc_tensor *gk, nc_tensor *gv, const nc_tensor *out,
                                       const nc_tensor *lse, const nc_tensor *q, const nc_tensor *k,
                                       const nc_tensor *v, const nc_tensor *gout, const nc_tensor *qkeep,
                                       int32_t causal, double scale);

/* BitNet b1.58 (algorithms.md §1). Fake-quantized forward; the straight-through backward is the
 * identity, so no backward functions exist.
 * weight: out = gamma * clamp(round(w / gamma), -1, 1), gamma = max(mean|w|, eps) per group of
 * group_size consecutive elements in logical order (group_size 0 = whole tensor); scale receives
 * one gamma per group (f32). Round half to even.
 * activation: per row of x (N, D): s = 127 / max(max|x_row|, eps); out = clamp(round(x s), -128, 127) / s;
 * scale (N) receives s. */
nc_status nc_quant_weight_absmean(nc_tensor *out, nc_tensor *scale, const nc_tensor *w, int64_t group_size, double eps);
nc_status nc_quant_act_absmax(nc_tensor *out, nc_tensor *scale, const nc_tensor *x, double eps);

/* ---- AMX training GEMMs (kernels/cpu/amx.c) -------------------------------------------------
 * nc_cpu_amx: 1 when AMX-TILE/BF16/INT8 exist, the OS granted the tile state (arch_prctl), and AMX
 * is enabled (not NC_AMX=0, not nc_set_amx(0), not the scalar kernel). nc_amx_status says why not.
 * nc_set_amx: 1 on (fails when unavailable), 0 off, -1 back to the default ($NC_AMX).
 * nc_gemm_bf16: out (M, N) f32 = alpha * bf16(op(a) .* kscale) bf16(op(b)) + beta * out, f32
 *   accumulation; op = transpose when trans_*; a, b f32 or i8, 2-D, any strides; kscale (K or 1
 *   elements, may be NULL) multiplies (kscale_div = 1: divides) op(a)'s reduction columns in f32
 *   before the bf16 rounding (nearest even). Without AMX: the reference (double accumulation).
 * nc_gemm_bf16_rows: nc_gemm_bf16 on a subset of rows, without gathered copies (Collider's kept
 *   rows): rows_m (may be NULL; i64 or i32, 1-D, strictly increasing, in [0, M)) selects the rows
 *   of op(a) computed and the out rows written: out[rows_m[i]] = alpha * (...) + beta *
 *   out[rows_m[i]], other out rows untouched, or set to 0 when zero_rest (needs rows_m). rows_k
 *   (may be NULL; same rules, in [0, K)) restricts the reduction to those k (op(a) columns, op(b)
 *   rows, kscale entries), summed in list order. Bitwise equal to gathering the rows / k-slices
 *   into compact buffers, nc_gemm_bf16, and scattering the rows back (AMX and reference alike).
 * nc_gemm_s8: out (M, N) = op(a) op(b) over int8 codes (a, b i8 or f32 holding integers in
 *   [-128, 127]); i32 out: the exact sums; f32 out: ((float)sum * col_scale[n]) * row_scale[m]
 *   (row_div = 1: / row_scale[m]); scales f32 with N / M or 1 elements, may be NULL. K <= 131072.
 * nc_quant_codes: codes (f32 or i8, x's shape) = clamp(nearbyint(x * s_r), lo, hi) (div: x / s_r),
 *   x f32 contiguous with rows r over all dims but the last, scale G elements (G divides the row
 *   count, s_r = scale[r / (rows / G)]). In place (codes == x) is fine. */
int32_t nc_cpu_amx(void);
const char *nc_amx_status(void);
/* nc_cpu_gemm_fast: 1 when nc_gemm_bf16 and nc_gemm_s8 both run on hardware: AMX tiles, or (no AMX,
 * or AMX disabled) the AVX-512 BF16 (VDPBF16PS) and VNNI (VPDPBUSD) block kernels under the "avx512"
 * kernel selection. nc_gemm_backend names what runs: "amx", "avx512-bf16-vnni", "reference", or a
 * mixed case such as "avx512-vnni (bf16: reference)". The s8 results are exact on every backend;
 * bf16 backends differ only in the order of the f32 sums (the reference sums in double). */
int32_t nc_cpu_gemm_fast(void);
const char *nc_gemm_backend(void);
/* nc_set_gemm_backend: "auto" (AMX, else the AVX-512 kernels, else the reference; $NC_GEMM sets the
 * start value), "amx", "avx512" (fails when unavailable; "avx512" on an AMX machine runs the block
 * kernels with AMX idle) or "reference" (the scalar code; the specs' oracle). */
nc_status nc_set_gemm_backend(const char *name);
nc_status nc_set_amx(int32_t mode);
nc_status nc_gemm_bf16(nc_tensor *out, const nc_tensor *a, const nc_tensor *b, int32_t trans_a, int32_t trans_b,
                       const nc_tensor *kscale, int32_t kscale_div, double alpha, double beta);
nc_status nc_gemm_bf16_rows(nc_tensor *out, const nc_tensor *a, const nc_tensor *b, int32_t trans_a, int32_t trans_b,
                            const nc_tensor *kscale, int32_t kscale_div, double alpha, double beta,
                            const nc_tensor *rows_m, const nc_tensor *rows_k, int32_t zero_rest);
nc_status nc_gemm_s8(nc_tensor *out, const nc_tensor *a, const nc_tensor *b, int32_t trans_a, int32_t trans_b,
                     const nc_tensor *col_scale, const nc_tensor *row_scale, int32_t row_div);
nc_status nc_quant_codes(nc_tensor *codes, const nc_tensor *x, const nc_tensor *scale, int32_t div, int32_t lo, int32_t hi);

/* ---- files -------------------------------------------------------------------------------- */
/* safetensors. Save is atomic: writes path.tmp.<pid>, fsyncs, renames over path, fsyncs the dir.
 * metadata_json: a JSON object of string values or NULL. Tensors may be on any device / layout. */
nc_status nc_safetensors_save(const char *path, int32_t n, const char *const *names,
                              const nc_tensor *const *tensors, const char *metadata_json);
/* Reads the header: returns its JSON text (malloc'd, free with nc_free) and the data start. */
nc_status nc_safetensors_read_header(const char *path, char **json_out, int64_t *data_start, int64_t *file_size);
/* Reads nbytes at file offset into a new CPU tensor of the given dtype and shape (checks sizes). */
nc_tensor *nc_tensor_new_from_file(const char *path, int64_t offset, int64_t nbytes,
                                   int32_t dtype, int32_t ndim, const int64_t *shape);
void nc_free(void *p);

/* ---- tokenizer: byte-level BPE (core/tokenizer.c) - issue 3 -------- */
/* ids 0..255 are raw bytes, merge k makes id 256 + k, special tokens follow. Text is pre-split
 * with a PCRE2 pattern (default: GPT-4 cl100k = llama.cpp "llama-bpe"); pieces are encoded like
 * tiktoken (whole-token lookup, then lowest-rank adjacent merge, leftmost first), so ids equal
 * tiktoken's for the same ranks and pattern. Invalid UTF-8 bytes between regex matches form
 * pieces of their own. Special tokens are never produced by encode. A tokenizer is not to be
 * used from two threads at once (encode_docs runs its own threads). */
typedef struct nc_tok nc_tok;
typedef struct nc_tok_stats {
    int64_t bytes;           /* training text bytes used */
    int64_t files;           /* files read */
    int64_t spans;           /* documents / work items counted in parallel */
    int64_t pieces;          /* pre-split pieces */
    int64_t unique_pieces;
    int32_t threads;
    double seconds_count;    /* reading + pre-split + counting */
    double seconds_merge;    /* BPE merges */
} nc_tok_stats;
/* Train on files/directories (a dir with train/ uses DIR/train only; other dirs are walked for
 * *.docs, *.rs, *.txt) and/or in-memory texts. NUL bytes separate documents. vocab_size counts
 * bytes + merges + the 9 default specials; fewer merges are made when the text runs out of pairs.
 * pattern NULL = default; threads <= 0 = nc threads; max_bytes <= 0 = no limit. */
nc_tok *nc_tok_new_train(int32_t n_paths, const char *const *paths, int64_t n_texts, const char *const *texts,
                         const int64_t *text_lens, int32_t vocab_size, const char *pattern, int32_t threads,
                         int64_t max_bytes);
/* From explicit merges (pairs: 2 * n_merges ids); n_specials < 0 = the default specials. */
nc_tok *nc_tok_new_from_merges(const char *pattern, int32_t n_merges, const int32_t *pairs,
                               int32_t n_specials, const char *const *specials);
nc_tok *nc_tok_new_load(const char *path);      /* corrupt / truncated file: NULL, error names it */
nc_status nc_tok_save(const nc_tok *t, const char *path);   /* atomic (temp file + rename) */
void nc_tok_release(nc_tok *t);
const char *nc_tok_default_pattern(void);
int32_t nc_tok_default_special_count(void);
const char *nc_tok_default_special(int32_t i);
int32_t nc_tok_vocab_size(const nc_tok *t);
int32_t nc_tok_n_merges(const nc_tok *t);
int32_t nc_tok_n_specials(const nc_tok *t);
const char *nc_tok_pattern(const nc_tok *t);
uint64_t nc_tok_hash(const nc_tok *t);           /* FNV-1a-64 of the serialized content */
void nc_tok_get_stats(const nc_tok *t, nc_tok_stats *out);   /* training statistics (zeros if loaded) */
nc_status nc_tok_get_merges(const nc_tok *t, int32_t *pairs);   /* 2 * n_merges ids */
int32_t nc_tok_special_id(const nc_tok *t, const char *name);   /* -1 if unknown */
const char *nc_tok_token_bytes(const nc_tok *t, int32_t id, int32_t *len);   /* specials: their name */
nc_status nc_tok_token_lengths(const nc_tok *t, int32_t *out);  /* vocab entries; 0 for specials */
/* out must hold cap >= len ids (a piece never gives more ids than bytes). */
nc_status nc_tok_encode(nc_tok *t, const char *text, int64_t len, int32_t *out, int64_t cap, int64_t *n_out);
/* All documents concatenated into a 1-D i32 tensor, each preceded by <|bos|> when bos != 0. */
nc_tensor *nc_tok_encode_docs_new(nc_tok *t, int64_t n_docs, const char *const *docs, const int64_t *lens,
                                  int32_t bos, int32_t threads);
/* *n_out = bytes needed; writes them when out != NULL (cap must suffice). */
nc_status nc_tok_decode(const nc_tok *t, const int32_t *ids, int64_t n, char *out, int64_t cap, int64_t *n_out);
/* Longest prefix of s[0, n) not ending inside a UTF-8 sequence that more bytes could complete. */
int64_t nc_utf8_complete_len(const char *s, int64_t n);
/* (end of tokenizer section) */



/* ---- token shards and data loader: core/shards.c, core/loader.c - issue 3  */
/* Token shards (byte layout at the top of core/shards.c and in README "Data: shards and loader"):
 * an 80-byte header (magic "NCSHARD\0", version, token width 2|4, token and document counts,
 * bos id, vocab, tokenizer hash, XXH64 checksum of the tokens, payload size, header checksum)
 * and one zstd frame of uint16/uint32 ids. Every read error message starts "shard <path>:". */
enum nc_shard_consts { NC_SHARD_VERSION = 1, NC_SHARD_HEADER_BYTES = 80 };
typedef struct nc_shard_info {
    int32_t version;
    int32_t token_bytes;        /* 2 (uint16 ids) or 4 (uint32 ids) */
    int64_t count;              /* tokens */
    int64_t docs;               /* tokens equal to bos_id (0 when bos_id is unknown) */
    int64_t bos_id;             /* -1 = unknown */
    int64_t vocab;              /* 0 = unknown */
    uint64_t checksum;          /* XXH64 (seed 0) of the uncompressed little-endian ids */
    int64_t compressed_bytes;   /* zstd payload */
    int64_t file_bytes;
    char tok_hash[24];          /* 16 lowercase hex digits + NUL; "" = none */
} nc_shard_info;
/* ids: CPU contiguous 1-D i32, every id in [0, vocab) (vocab 0: [0, 2^(8 token_bytes))).
 * bos_id -1 = unknown (docs = 0); tok_hash NULL/"" = none; zstd_level 1..19 (3 is a good default).
 * Atomic: writes path.tmp.<pid>, fsyncs, renames. */
nc_status nc_shard_write(const char *path, const nc_tensor *ids, int32_t token_bytes, int64_t vocab,
                         int64_t bos_id, const char *tok_hash, int32_t zstd_level);
/* Header only (validated against the file size); cheap. */
nc_status nc_shard_read_info(const char *path, nc_shard_info *out);
/* Whole shard as a new 1-D i32 CPU tensor, checksum verified; expect_tok_hash NULL/"" = no check.
 * info_out may be NULL. */
nc_tensor *nc_shard_read_new(const char *path, const char *expect_tok_hash, nc_shard_info *info_out);
/* XXH64 of n bytes (our implementation of the published algorithm). */
uint64_t nc_xxh64(const void *data, int64_t n, uint64_t seed);

/* Data loader: background pthreads assemble [B, T+1] token blocks into a bounded queue; the
 * consumer pulls (nc_loader_next blocks while the next batch is not ready). Batch k is a pure
 * function of (shards, B, T, sampling, seed, k), whatever the thread count or timing, so the
 * cursor k is the whole resume state.
 *  random:     each row starts at a uniform position over every valid start of every shard
 *              (shards weighted by size); row r of batch k draws Philox(seed, k*B + r).
 *  doc:        each row starts at a uniform BOS token (over all shards) whose window fits.
 *  sequential: the shards concatenated in order are cut into windows of T+1 tokens that overlap
 *              by one (window w starts at token w*T); batch k holds windows k*B .. k*B+B-1. With
 *              loop = 0 the last batch may have fewer rows and then next reports rows = 0. */
enum nc_loader_sampling { NC_SAMPLE_RANDOM = 0, NC_SAMPLE_DOC = 1, NC_SAMPLE_SEQUENTIAL = 2 };
typedef struct nc_loader nc_loader;
typedef struct nc_loader_opts {
    int64_t B, T;
    uint64_t seed;
    int32_t sampling;           /* NC_SAMPLE_* */
    int32_t loop;               /* sequential: 1 = wrap around forever, 0 = one pass */
    int32_t threads;            /* producer threads, 1..64 */
    int32_t prefetch;           /* queue depth in batches, 1..1024 */
    int64_t cache_bytes;        /* LRU cap on decompressed shards kept in memory; <= 0: 1 GiB */
    int64_t bos_id;             /* -1: from the shard headers (doc sampling needs one) */
    const char *tok_hash;       /* NULL/"": no check; else every shard must carry this hash */
} nc_loader_opts;
typedef struct nc_loader_stats {
    double wait_seconds;        /* total time nc_loader_next waited for a batch */
    int64_t cursor;             /* index of the batch the next nc_loader_next returns */
    int64_t batches_total;      /* batches in one pass (sequential, loop = 0); -1 = endless */
    int64_t batches_made;       /* batches the producers assembled so far (includes prefetch) */
    int64_t shard_loads;        /* shard decompressions (cache misses) */
    int64_t cache_bytes;        /* decompressed shard bytes held now */
    int64_t total_tokens;       /* tokens over all shards */
    int64_t positions;          /* sampling space: window starts, BOS starts or windows */
    int32_t n_shards;
    int32_t threads;
} nc_loader_stats;
/* Reads and checks every shard header (doc sampling also loads every shard to index its BOS
 * tokens); threads start on the first nc_loader_next. NULL + nc_last_error on failure. */
nc_loader *nc_loader_new(int32_t n_shards, const char *const *paths, const nc_loader_opts *opts);
/* Stops and joins the threads and frees everything (NULL is fine). */
void nc_loader_free(nc_loader *L);
/* x, y: CPU contiguous i64 (B, T). Fills rows (*rows_out of them, B except at the end of a
 * sequential pass; 0 = no more batches): x[r] = block[r][0:T], y[r] = block[r][1:T+1]. A
 * producer error (corrupt shard, ...) is returned here with its message. */
nc_status nc_loader_next(nc_loader *L, nc_tensor *x, nc_tensor *y, int64_t *rows_out);
/* The next nc_loader_next returns batch `cursor` drawn with `seed` (joins and restarts threads). */
nc_status nc_loader_seek(nc_loader *L, int64_t cursor, uint64_t seed);
void nc_loader_get_stats(nc_loader *L, nc_loader_stats *out);
/* (end of token shards and data loader section) */



/* ---- optimizers: kernels/cpu/optim*.c - issues 4/5 ----------------- */
/* Update rules and numbers: docs/algorithms.md sections 2-6. Every tensor is f32 and contiguous
 * unless stated; p (the parameter), g (its gradient) and full-size state have the same numel.
 * Devices: all tensors of one call on the CPU, or all on CUDA (then the CUDA backend runs the step,
 * kernels/cuda/optim.cu: elementwise results bitwise the CPU's, sgemm-based ones within f32
 * tolerance; nc_rsvd_projector round-trips through the host; nc_svd and nc_quant8_codebook are
 * CPU-only); mixed devices are NC_ERR_DEVICE naming each tensor's device.
 * Matrices are (rows, cols) = W (out, in); a tensor with more dims is treated as
 * (shape[0], numel / shape[0]). All kernels are threaded with OpenMP and deterministic: the same
 * inputs give the same bits on any thread count. Workspaces are transient (freed on return). */
typedef struct nc_optim_hp {
    double lr;             /* effective lr of this step (group lr x schedule multiplier) */
    double weight_decay;   /* decoupled: p *= 1 - lr * weight_decay */
    double beta1, beta2;   /* AdamW moments; Lion: beta1 interpolates the update, beta2 the momentum */
    double eps;            /* AdamW epsilon */
    int64_t step;          /* AdamW bias correction: steps taken by this parameter, this one included (>= 1) */
    int32_t eps_mode;      /* enum nc_adam_eps */
    int32_t nesterov;      /* Muon: 1 = u = dampening g + momentum m, 0 = u = m */
    double momentum;       /* Muon beta: m = momentum m + dampening g */
    double dampening;      /* 1 - momentum (Keller's EMA form) or 1 (Moonlight's sum form) */
    double scale;          /* Muon update multiplier, e.g. sqrt(max(1, out/in)) or 0.2 sqrt(max(out, in)) */
    int32_t ns_steps;      /* Muon: quintic Newton-Schulz iterations (5) */
    int32_t stochastic;    /* 8-bit state: 0 = round to nearest even, 1 = stochastic rounding */
    int64_t block;         /* 8-bit state: elements per absmax scale (2048) */
    uint64_t seed;         /* stochastic rounding: Philox key */
    uint64_t counter;      /* stochastic rounding: Philox counter base; element i uses counter + i/4 */
    double alpha;          /* GaLore back-projection scale */
    /* fields below were added after the first release of the struct (appended, ABI-compatible) */
    int32_t quant;         /* 8-bit state code map, enum nc_quant8_map: 0 = linear, 1 = dynamic */
    int32_t ns_dtype;      /* Muon / 8-bit Muon / GaLore's inner Muon: enum nc_ns_dtype; 0 = auto */
    int32_t ns_form;       /* the same: enum nc_ns_form; 0 = auto */
} nc_optim_hp;

/* Precision of the matrix products of Muon's quintic Newton-Schulz (nc_optim_hp.ns_dtype).
 * F32: OpenBLAS sgemm (the reference). BF16: every product's inputs rounded to bf16 (nearest
 * even), f32 accumulation and f32 outputs (AMX or AVX-512 BF16; on other CPUs the slow scalar
 * reference of nc_gemm_bf16), as the reference Muon casts X to bfloat16. AUTO: BF16 when a
 * hardware bf16 GEMM runs on this CPU, else F32. CUDA tensors always use f32 (cuBLAS sgemm). */
enum nc_ns_dtype { NC_NS_AUTO = 0, NC_NS_F32 = 1, NC_NS_BF16 = 2 };
/* What NC_NS_AUTO means on this CPU now: NC_NS_BF16 or NC_NS_F32. */
int32_t nc_ns_dtype_auto(void);
/* The form of that iteration (nc_optim_hp.ns_form) for an (r, c) matrix, r <= c (tall ones are
 * transposed). STANDARD: X = a X + (b A + c A^2) X with A = X X^T each step. GRAM: the same
 * polynomial run on the (r, r) side, X_k = Q_k X_s, restarting (X_s := Q X_s) every 3 steps
 * (kernels/cpu/optim_linalg.c; fewer multiply-adds once c >= ~2.5 r; the same result in exact
 * arithmetic, within rounding otherwise: README "Gram Newton-Schulz"), with bf16 or f32 products;
 * on a square matrix it is STANDARD. AUTO: GRAM once c >= 3 r and r >= 64, else STANDARD. CUDA tensors: always
 * STANDARD (f32). */
enum nc_ns_form { NC_NS_FORM_AUTO = 0, NC_NS_FORM_STANDARD = 1, NC_NS_FORM_GRAM = 2 };

/* 8-bit blockwise code maps. Every code c is an int8 in [-127, 127] (-128 is never written;
 * LINEAR would decode it as -128/127 s_b, DYNAMIC as -map[127] s_b); value = sign(c) * map[|c|] * s_b
 * with s_b the block absmax.
 * LINEAR: map[k] = k / 127.
 * DYNAMIC: map[0] = 0; for k >= 1 let z = 6 - floor(log2 k) (leading zeros of the 7-bit k) and
 * f = k - 2^(6-z): group z spans (R^(z+1), R^z] with 2^(6-z) evenly spaced entries,
 * map[k] = R^(z+1) + (R^z - R^(z+1)) (f + 1) / 2^(6-z), base R = 0.4. So 64 entries
 * lie in (R, 1], 32 in (R^2, R], ... and map[1] = R^6 = 0.0041: denser near 0 than LINEAR
 * (spacing 0.0094 above 0.4 instead of 0.0079; 0.003-0.004 below 0.026). Nearest = nearest
 * entry (ties to the smaller magnitude); stochastic = one of the two neighbouring entries, the
 * upper with probability (|x| - lo) / (hi - lo). */
enum nc_quant8_map { NC_QUANT8_LINEAR = 0, NC_QUANT8_DYNAMIC = 1 };

/* AdamW eps placement: TORCH = PyTorch's AdamW, update = lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps);
 * GALORE = the GaLore reference, update = lr*sqrt(bc2)/bc1 * m / (sqrt(v) + eps).
 * bc1 = 1 - beta1^step, bc2 = 1 - beta2^step. */
enum nc_adam_eps { NC_ADAM_EPS_TORCH = 0, NC_ADAM_EPS_GALORE = 1 };
/* Inner optimizer of a GaLore step, and which side of G a GaLore projector multiplies. */
enum nc_optim_kind { NC_OPTIM_ADAMW = 0, NC_OPTIM_MUON = 1, NC_OPTIM_MUON8 = 2, NC_OPTIM_LION = 3 };
enum nc_galore_side {
    NC_GALORE_LEFT = 0,    /* proj P (rows, r): R = P^T G (r, cols), back-projection P N */
    NC_GALORE_RIGHT = 1    /* proj Q (cols, r): R = G Q (rows, r), back-projection N Q^T */
};

/* AdamW, fused: p *= 1 - lr wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; p -= update. */
nc_status nc_adamw_step(nc_tensor *p, const nc_tensor *g, nc_tensor *m, nc_tensor *v, const nc_optim_hp *hp);
/* Lion: c = b1 m + (1-b1) g; p = p (1 - lr wd) - lr sign(c) (sign(0) = 0); m = b2 m + (1-b2) g. */
nc_status nc_lion_step(nc_tensor *p, const nc_tensor *g, nc_tensor *m, const nc_optim_hp *hp);
/* Muon with f32 momentum m: m = mu m + damp g; u = nesterov ? damp g + mu m : m;
 * p = p (1 - lr wd) - lr scale NS5(u). */
nc_status nc_muon_step(nc_tensor *p, const nc_tensor *g, nc_tensor *m, const nc_optim_hp *hp);
/* Muon with 8-bit momentum: codes i8 (numel of p), scales f32 (ceil(numel / block)), momentum
 * = code * scale / 127 per block. One fused pass per block dequantizes, updates, requantizes
 * (absmax scale; nearest or stochastic rounding) and writes the full-precision u into the
 * transient NS input buffer; no f32 copy of the state outlives the call. */
nc_status nc_muon8_step(nc_tensor *p, const nc_tensor *g, nc_tensor *codes, nc_tensor *scales, const nc_optim_hp *hp);
/* Muon over count matrices in one call: entry i is nc_muon_step(p[i], g[i], m[i], &hp[i]) when
 * m[i] is non-NULL, else nc_muon8_step(p[i], g[i], codes[i], scales[i], &hp[i]) (m, or codes and
 * scales, may be NULL when no entry uses them); the results are those of the separate calls, bit
 * for bit. Every entry is checked before any state changes (a failure sets *failed, when given, to
 * the entry's index, else -1; out of memory midway can leave earlier entries updated). CPU entries
 * with a bf16 Newton-Schulz (ns_dtype) share the threads, one matrix per thread, largest first;
 * the others (CUDA, f32 sgemm, or a matrix costing more than a thread's share) run in turn, each
 * on every thread. */
nc_status nc_muon_step_many(int32_t count, nc_tensor *const *p, const nc_tensor *const *g, nc_tensor *const *m,
                            nc_tensor *const *codes, nc_tensor *const *scales, const nc_optim_hp *hp,
                            int32_t *failed);
/* GaLore: R = project(g) with proj (see nc_galore_side), the inner optimizer (ADAMW: s0 = m,
 * s1 = v; MUON: s0 = m; MUON8: s0 = codes, s1 = scales; LION: s0 = m) runs on R with state of
 * R's shape, then p -= lr alpha backproject(N) (AdamW: N = its update / lr; Muon: scale NS5(u)),
 * then p *= 1 - lr wd (after the update, as in the reference). */
nc_status nc_galore_step(nc_tensor *p, const nc_tensor *g, const nc_tensor *proj, int32_t side, int32_t inner,
                         nc_tensor *s0, nc_tensor *s1, const nc_optim_hp *hp);

/* Newton-Schulz orthogonalization of a matrix x (rows, cols) into out (same shape; may be x):
 * X = x (transposed when rows > cols, so the Gram matrix X X^T is the small one);
 * X /= fro_mult ||X||_F + eps; then for k < steps, with (a, b, c) = abc[3 min(k, n_abc - 1) ...]:
 * A = X X^T, X = a X + (b A + c A A) X; transposed back. Quintic Muon: (3.4445, -4.7750, 2.0315)
 * x 5; cubic (FIRE): (1.5, -0.5, 0). Matrix products run through OpenBLAS sgemm. */
nc_status nc_newton_schulz(nc_tensor *out, const nc_tensor *x, int32_t steps, const double *abc, int32_t n_abc,
                           double fro_mult, double eps);
/* The same with the products' precision chosen (enum nc_ns_dtype; nc_newton_schulz = NC_NS_F32). */
nc_status nc_newton_schulz_dtype(nc_tensor *out, const nc_tensor *x, int32_t steps, const double *abc,
                                 int32_t n_abc, double fro_mult, double eps, int32_t ns_dtype);
/* The same with the iteration's form chosen too (enum nc_ns_form; nc_newton_schulz_dtype =
 * NC_NS_FORM_STANDARD). */
nc_status nc_newton_schulz_form(nc_tensor *out, const nc_tensor *x, int32_t steps, const double *abc,
                                int32_t n_abc, double fro_mult, double eps, int32_t ns_dtype, int32_t ns_form);
/* Thin SVD (LAPACK gesdd) of a (m, n), f32 or f64: u (m, k), s (k), vt (k, n), k = min(m, n),
 * all of a's dtype, singular values descending. */
nc_status nc_svd(nc_tensor *u, nc_tensor *s, nc_tensor *vt, const nc_tensor *a);
/* Randomized range finder + small SVD (Halko-Martinsson-Tropp): proj (d, r) receives orthonormal
 * columns spanning the top-r left (side LEFT, d = rows) or right (side RIGHT, d = cols) singular
 * subspace of g (rows, cols): Omega Gaussian (Philox seed, counter), oversampling p, q power
 * iterations with QR re-orthonormalization, QR, SVD of the small factor. */
nc_status nc_rsvd_projector(nc_tensor *proj, const nc_tensor *g, int32_t side, int32_t oversample,
                            int32_t power_iters, uint64_t seed, uint64_t counter);
/* Blockwise absmax 8-bit quantization of x (f32, any shape, logical order): codes i8 (numel),
 * scales f32 (ceil(numel / block)); code = round(127 x / s_b), s_b = max |x| over the block
 * (0 for an all-zero block, codes 0). stochastic: floor(127 x / s_b + u), u from Philox. */
nc_status nc_quant8_block(nc_tensor *codes, nc_tensor *scales, const nc_tensor *x, int64_t block,
                          int32_t stochastic, uint64_t seed, uint64_t counter);
nc_status nc_dequant8_block(nc_tensor *out, const nc_tensor *codes, const nc_tensor *scales, int64_t block);
/* The same with a code map (enum nc_quant8_map); map LINEAR is bitwise nc_quant8_block. */
nc_status nc_quant8_block_map(nc_tensor *codes, nc_tensor *scales, const nc_tensor *x, int64_t block,
                              int32_t stochastic, uint64_t seed, uint64_t counter, int32_t map);
nc_status nc_dequant8_block_map(nc_tensor *out, const nc_tensor *codes, const nc_tensor *scales, int64_t block,
                                int32_t map);
/* The 128 magnitudes map[0..127] of a code map into out (f32, 128 elements), ascending, map[127] = 1. */
nc_status nc_quant8_codebook(nc_tensor *out, int32_t map);
/* (end of optimizers section) */



/* ---- training runtime: signals, checkpoints, event files - issue 4 - */
/* core/train_rt.c. Signals are polled (no callbacks): install saves the current handler and sets
 * one that counts deliveries; restore puts the saved one back (installs nest). */
nc_status nc_signal_install(int32_t sig);
int32_t nc_signal_pending(int32_t sig);          /* deliveries since install / clear */
void nc_signal_clear(int32_t sig);
nc_status nc_signal_restore(int32_t sig);
nc_status nc_signal_raise(int32_t sig);          /* raise(sig) in this process (tests) */
/* File-system steps of atomic checkpoints; errors name the path and strerror. */
int32_t nc_fs_kind(const char *path);            /* 0 missing, 1 regular file, 2 directory, 3 other */
nc_status nc_fs_mkdir(const char *path);         /* ok when it already is a directory */
nc_status nc_fs_rename(const char *from, const char *to);
nc_status nc_fs_fsync(const char *path);         /* a file or a directory */
nc_status nc_fs_write_file(const char *path, const void *data, int64_t n);   /* create/truncate, write, fsync */
nc_status nc_fs_list_dir(const char *path, char **names_out);   /* '\n'-terminated names, free with nc_free */
nc_status nc_fs_remove_tree(const char *path);   /* a file, or a directory and all it holds; ok if missing */
void nc_fs_inject_failure(int32_t after_n_writes, int32_t err);   /* tests: n-th next write fails with errno err (0: ENOSPC) */
nc_status nc_fs_checksum(const char *path, uint32_t *crc_out, int64_t *size_out);   /* CRC-32C of the file */
uint32_t nc_crc32c(uint32_t crc, const void *data, int64_t n);   /* CRC-32C (Castagnoli); start with 0 */
double nc_wall_time(void);                       /* seconds since the epoch */
double nc_monotonic_time(void);                  /* seconds, monotonic */
int32_t nc_isatty(int32_t fd);
int32_t nc_getpid(void);
nc_status nc_hostname(char *buf, int64_t n);
/* Global gradient norm: sum of squares over n contiguous CPU f32 tensors in double (independent of
 * the thread count), and in-place scaling of the same list. */
nc_status nc_sum_squares(double *out, int32_t n, const nc_tensor *const *ts);
nc_status nc_scale_tensors(int32_t n, nc_tensor *const *ts, double s);
/* (end of training runtime section) */



/* ---- inference engine: packed ternary kernels, engine, GGUF - issue 7  */
/* Packed ternary linear layers (kernels/cpu/ternary.c, ternary_avx2.c).
 * Layout "i2b128": a weight W (N, K) is stored as u8 (N, Kp/4), Kp = K rounded up to a multiple
 * of NC_TERNARY_BLOCK (128). Row n, block b (weights k = 128b .. 128b+127) is 32 bytes at byte 32b;
 * byte j of the block holds code c = t + 1 in {0, 1, 2} of weight k = 128b + 32g + j in bits
 * 2g..2g+1 (g = 0..3). Padding weights (k >= K) have code 1 (t = 0). Each row has an f32 scale
 * gamma (the training quantizer's absmean, carried exactly). Activations are int8 (M, Kp), per
 * row scale s (nc_quant_act_absmax semantics: x ~ q / s), the row sum of q (for the zero point:
 * sum_k t q = sum_k c q - sum_k q) and zeros in the padding.
 * y[m, n] = (float)isum * (1.0f / s[m]) * gamma[n], isum the exact int32 dot product; the AVX-512
 * VNNI, AVX2 and scalar kernels give bit-identical y. |isum| < 2^31 needs K < 2^23. */
enum { NC_TERNARY_BLOCK = 128 };
/* the row kernel nc_ternary_matmul and the engine use now: "avx512vnni" (kernel "avx512" on a CPU
 * with AVX-512 BW/VL/VNNI and GFNI), "avx2" or "scalar" */
const char *nc_ternary_kernel_name(void);
int64_t nc_ternary_kpad(int64_t k);                     /* K rounded up to a multiple of 128 */
/* w f32 (N, K) latent weights -> packed u8 (N, Kp/4) + row_scale f32 (N), using exactly
 * nc_quant_weight_absmean(w, group_size, eps); group_size 0 (per tensor) or a multiple of K
 * (groups of whole rows). */
nc_status nc_ternary_pack(nc_tensor *packed, nc_tensor *row_scale, const nc_tensor *w,
                          int64_t group_size, double eps);
/* already ternary values t (N, K) (f32 or i8, each in {-1, 0, 1}) -> packed u8 (N, Kp/4) */
nc_status nc_ternary_pack_values(nc_tensor *packed, const nc_tensor *t);
/* packed u8 (N, Kp/4) -> t f32 (N, K) in {-1, 0, 1} (K = t's last dim, Kp/4 must match) */
nc_status nc_ternary_unpack(nc_tensor *t, const nc_tensor *packed);
/* x f32 (M, K) (or (K)) -> q i8 (M, Kp), scale f32 (M) = s, sum i32 (M) */
nc_status nc_ternary_quant_act(nc_tensor *q, nc_tensor *scale, nc_tensor *sum, const nc_tensor *x, double eps);
/* y f32 (M, N) contiguous = packed linear of quantized activations; threads split output rows
 * (GEMV, M = 1) or output rows with 4 activation rows per weight pass (GEMM, M > 1). */
nc_status nc_ternary_matmul(nc_tensor *y, const nc_tensor *q, const nc_tensor *act_scale,
                            const nc_tensor *act_sum, const nc_tensor *packed, const nc_tensor *row_scale);
/* the same for output rows [n0, n1) only, on the calling thread (no OpenMP): for an engine that
 * runs one parallel region per token and splits rows itself (one barrier per layer) */
nc_status nc_ternary_matmul_rows(nc_tensor *y, const nc_tensor *q, const nc_tensor *act_scale,
                                 const nc_tensor *act_sum, const nc_tensor *packed,
                                 const nc_tensor *row_scale, int64_t n0, int64_t n1);

/* One decode step of a packed GPT (kernels/cpu/engine.c): B sequences, one token each (or
 * cfg->n_pos consecutive tokens each: a short chunk, e.g. a speculative verify), all at position pos
 * (or each at its own position and cache row: cfg->seq_pos / seq_slot), through n_layers layers in
 * ONE OpenMP parallel region (threads split the q/k/v GEMVs by KV-head groups and the other GEMVs
 * by rows; 4 syncs per layer, nc_engine_barriers_per_layer). x (B, d) f32: the embedded (normed)
 * token in, the residual stream after the last layer out. Per layer: packed codes w[j] (u8 (N, Kp/4)) and row
 * scales s[j] (f32 (N)) of wq, wk, wv, wo, w1, w3 (SwiGLU only, else NULL), w2; SubLN gains or
 * NULL; K/V caches (B, max_T, n_kv_head, head_dim) f32 contiguous, written at pos. cos/sin: the
 * RoPE tables (>= pos + 1, head_dim / 2). Same math as the op-by-op engine path. */
typedef struct nc_engine_layer {
    const nc_tensor *w[7];
    const nc_tensor *s[7];
    const nc_tensor *attn_gain, *mlp_gain;
    nc_tensor *kc, *vc;
    /* mHC (cfg->mhc_n > 0), per sublayer [0] attention, [1] MLP: the layer's phi (K, n d) f32 and
     * alpha (3) (both NULL: static coefficients), bias (K), perms (R, n n) (lite; NULL: Sinkhorn) */
    const nc_tensor *mhc_phi[2], *mhc_alpha[2], *mhc_bias[2], *mhc_perms[2];
} nc_engine_layer;
typedef struct nc_engine_cfg {
    int64_t d, n_head, n_kv_head, head_dim, d_ff;
    int32_t qk_norm, swiglu;
    double eps;
    int64_t n_pos;   /* positions per sequence (0 = 1): x holds B * n_pos rows, row r = sequence r / n_pos at
                        position pos + r % n_pos (a short chunk: causal within it) */
    /* Continuous batching (both optional; NULL = the behaviour above). seq_pos[b] (B entries): the
     * first position of sequence b (its rows are at seq_pos[b] .. seq_pos[b] + n_pos - 1; the pos
     * argument must then be 0). seq_slot[b]: the cache row (dim 0 of every K/V cache) of sequence b;
     * the caches then have >= 1 + max(seq_slot) rows and no two sequences may share a row; without
     * it sequence b uses row b and the caches have exactly B rows. Every position must fit the
     * caches and the RoPE tables. */
    const int64_t *seq_pos;
    const int32_t *seq_slot;
    /* mHC (0 = none): x holds (rows, mhc_n * d), the n-stream state; each sublayer pre-mixes its
     * branch input, post-mixes and residual-mixes the streams (nanochat.mhc's Layer:forward, its row
     * kernels: the dynamic projection accumulates in f32 where the op path uses sgemm — equal up to
     * float rounding). mhc_iters: Sinkhorn iterations (layers without perms). */
    int64_t mhc_n;
    int32_t mhc_iters;
    /* The parallel split (0 = the defaults; every choice gives bit-identical results). split: the
     * q/k/v GEMVs by whole KV-head groups (2; each thread then writes its heads' K/V and runs their
     * attention with no sync in between) or by 16-row chunks (1; one more sync per layer); 0 = heads
     * when the thread count divides n_kv_head, else rows. o_full = 2: every thread computes the whole
     * o-projection (one sync fewer per layer, the o weights read by every thread; not with mHC);
     * 0 / 1: threads split its rows. barrier = 1: `omp barrier` instead of the engine's spin barrier. */
    int32_t split, o_full, barrier;
} nc_engine_cfg;
nc_status nc_engine_decode(nc_tensor *x, const nc_engine_layer *layers, int32_t n_layers, const nc_engine_cfg *cfg,
                           int64_t pos, const nc_tensor *cos, const nc_tensor *sin);
/* y (R, N) = x (R, K) w^T for R <= 8 rows, f32, contiguous: the decode LM head (threads split w's
 * rows; no OpenBLAS). */
nc_status nc_engine_head_f32(nc_tensor *y, const nc_tensor *x, const nc_tensor *w);
/* The attention of G >= 1 query heads of one KV head as nc_engine_decode computes it
 * (kernels/cpu/engine_attn.h: the same bits from the scalar reference and the AVX2 kernels, which
 * take the heads in pairs): o_g (hd) = sum_j softmax_j(scale q_g . k_j) v_j over the S rows of k, v
 * (S, hd), f32; q, o (G x hd elements, head g at g hd) contiguous, k and v with contiguous rows. */
nc_status nc_engine_attn_head(nc_tensor *o, const nc_tensor *q, const nc_tensor *k, const nc_tensor *v, double scale);
/* syncs (barriers) per layer of nc_engine_decode with this cfg on `threads` threads (0 for 1 thread):
 * plain layers 4 (heads split) or 5 (rows split), one fewer with o_full; mHC layers 6 more (pre-
 * and post-mix of each sublayer; dynamic coefficients as counted, static ones 1 fewer per sublayer).
 * nc_engine_last_syncs: the syncs the last nc_engine_decode call passed (counted by the barrier
 * itself). nc_engine_barrier_bench: ns per barrier (kind 0 the engine's spin barrier, 1 omp
 * barrier) over iters barriers of a `threads`-thread region (a benchmark; -1 on bad arguments). */
int32_t nc_engine_barriers_per_layer(const nc_engine_cfg *cfg, int32_t threads);
int64_t nc_engine_last_syncs(void);
double nc_engine_barrier_bench(int32_t kind, int64_t iters, int32_t threads);
/* The LoopLM exit-gate logits of R decode rows: z (R) = rmsnorm(mean of the n streams of x (R, n d))
 * . w (d) + bias (1), f32 contiguous; row-wise (a row's z does not depend on the others). */
nc_status nc_engine_exit_gate(nc_tensor *z, const nc_tensor *x, const nc_tensor *w, const nc_tensor *bias,
                              int64_t n_streams, double eps);

/* int8 weights, per-row absmax scale (the engine's int8 LM head option): w f32 (N, K) -> w8 i8
 * (N, Kp) with codes nearbyint(w * 127 / max|row|) in [-127, 127] (zero padding to Kp = kpad(K)) and
 * wscale f32 (N) = max|row| / 127 (1 for an all-zero row). y f32 (M, N) = (float)isum * (1 / s[m]) *
 * wscale[n], isum the exact int32 dot of the activation codes q (nc_ternary_quant_act, in
 * [-127, 127]) with w8; AVX2 and scalar give bit-identical y. */
nc_status nc_int8_quant_rows(nc_tensor *w8, nc_tensor *wscale, const nc_tensor *w);
/* nc_gemv_prefetch: the one-activation-row kernels (ternary and int8, AVX2 and VNNI) prefetch the
 * next 4 weight rows in software (default on; without it one Zen 4 core streamed a 134 MB ternary
 * matrix at 8 GB/s instead of 23). on = 1 / 0 sets, anything else only queries; returns the old
 * value. For benchmarks (tools/bench/infer.lua measures both in one run); results are identical. */
int32_t nc_gemv_prefetch(int32_t on);
nc_status nc_int8_matmul(nc_tensor *y, const nc_tensor *q, const nc_tensor *act_scale, const nc_tensor *w8,
                         const nc_tensor *wscale);

/* GGUF ternary blocks (kernels/cpu/tq.c; formats.md §1.5, ggml's TQ2_0 / TQ1_0 layouts).
 * x f32 (..., K), K a multiple of 256 -> out tq2 | tq1 of the same shape: per block of 256,
 * d = max|x| (stored f16), code = lround(x / d) + 1. dequantize: out f32 = (code - 1) * d. */
nc_status nc_tq_quantize(nc_tensor *out, const nc_tensor *x);
nc_status nc_tq_dequantize(nc_tensor *out, const nc_tensor *q);
/* read-bandwidth probe for benchmarks: sums n bytes at p with `threads` threads (AVX2 when
 * available); returns a checksum so the reads cannot be optimized away */
uint64_t nc_mem_read_sum(const void *p, int64_t nbytes, int32_t threads);
/* (end of inference engine section) */



/* ---- mHC stream mixing: kernels/cpu/mhc.c - issue 6 ----------------- */
/* Per token (rows = x's dims but the last two), n streams of width d; f32, CPU, contiguous.
 * H_res convention: hres[i][j] = weight of input stream j in output stream i.
 *   pre:  h (..., d) = sum_j hp[..., j] x[..., j, :]              x (..., n, d), hp (..., n)
 *   post: out (..., n, d) = hres x + hpost^T y                    y (..., d), hres (..., n, n), hpost (..., n)
 * Backwards accumulate into each non-NULL gradient (same shape as its input). */
nc_status nc_mhc_pre(nc_tensor *h, const nc_tensor *x, const nc_tensor *hp);
nc_status nc_mhc_pre_backward(nc_tensor *gx, nc_tensor *ghp, const nc_tensor *x, const nc_tensor *hp,
                              const nc_tensor *gh);
nc_status nc_mhc_post(nc_tensor *out, const nc_tensor *x, const nc_tensor *y, const nc_tensor *hres,
                      const nc_tensor *hpost);
nc_status nc_mhc_post_backward(nc_tensor *gx, nc_tensor *gy, nc_tensor *ghres, nc_tensor *ghpost, const nc_tensor *x,
                               const nc_tensor *y, const nc_tensor *hres, const nc_tensor *hpost,
                               const nc_tensor *gout, int32_t fresh);
/* The dynamic coefficient projection without a normalized copy of the state:
 *   rstd (...) = 1 / sqrt(mean(x_flat^2) + eps), out (..., K) = rstd * x_flat phi^T
 * with x_flat (..., n d) the token's streams concatenated and phi (K, n d). One sgemm + one pass. */
nc_status nc_mhc_proj(nc_tensor *out, nc_tensor *rstd, const nc_tensor *x, const nc_tensor *phi, double eps);
nc_status nc_mhc_proj_backward(nc_tensor *gx, nc_tensor *gphi, const nc_tensor *x, const nc_tensor *phi,
                               const nc_tensor *rstd, const nc_tensor *out, const nc_tensor *gout, int32_t gx_init);
/* post backward `fresh`: bit 0 = gx, bit 1 = gy hold uninitialised memory and are written (the
 * first gradient of x / y), else += ; nc_mhc_proj_backward's gx_init is bit 0 alone.
 * The coefficient tensors hp, hpost, hres (and their gradients) may be views into one packed
 * (..., C) tensor: each needs a contiguous tail and one row stride over the leading dims. */
/* mHC-lite coefficients in one call: perms (R, n n), K = 2n + R, C = 2n + n n; proj (..., K) or
 * NULL (static: z = bias), alpha (3), bias (K) -> coef (..., C) = [sigmoid(z_pre) | 2 sigmoid(z_post) |
 * vec(sum_k w_k P_k)] with z = proj * alpha[pre|post|res] + bias and w (..., R) = softmax(z_res)
 * (saved for backward). Parallel over tokens; the sums over tokens in backward are serial, so the
 * results do not depend on the thread count. */
nc_status nc_mhc_coef_lite(nc_tensor *coef, nc_tensor *w, const nc_tensor *proj, const nc_tensor *alpha,
                           const nc_tensor *bias, const nc_tensor *perms);
nc_status nc_mhc_coef_lite_backward(nc_tensor *gproj, nc_tensor *galpha, nc_tensor *gbias, const nc_tensor *coef,
                                    const nc_tensor *w, const nc_tensor *proj, const nc_tensor *alpha,
                                    const nc_tensor *perms, const nc_tensor *gcoef);
/* mHC (Sinkhorn) coefficients in one call, K = C = 2n + n n: coef (..., C) = [sigmoid(z_pre) |
 * 2 sigmoid(z_post) | exp(L)], L = z_res (n, n) after `iters` log-domain Sinkhorn iterations (a
 * log-softmax over columns, then over rows: rows sum to 1 exactly); ys (..., 2 iters, n, n) saves every
 * half-step for backward. n <= 64. Threaded like nc_mhc_coef_lite. */
nc_status nc_mhc_coef_sinkhorn(nc_tensor *coef, nc_tensor *ys, const nc_tensor *proj, const nc_tensor *alpha,
                               const nc_tensor *bias, int64_t n, int32_t iters);
nc_status nc_mhc_coef_sinkhorn_backward(nc_tensor *gproj, nc_tensor *galpha, nc_tensor *gbias, const nc_tensor *coef,
                                        const nc_tensor *ys, const nc_tensor *proj, const nc_tensor *alpha,
                                        const nc_tensor *gcoef, int64_t n, int32_t iters);
/* (end of mHC section) */



/* NC_FFI_END */

#ifdef __cplusplus
}
#endif

#endif /* NANOCHAT_H */
