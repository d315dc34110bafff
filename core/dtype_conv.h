/* core/dtype_conv.h — the element conversions every dtype goes through: f32 <-> bf16 / f16 bit
 * conversions (round to nearest even, NaN stays NaN, f16 overflow to inf, subnormals kept), and the
 * load-as-f64 / store-from-f64 pair whose float -> integer step truncates toward zero and saturates
 * (NaN -> 0). One definition, compiled for the host by core/tensor.c and for the device by
 * kernels/cuda/backend.cu, so conversions on either device are bit-identical. Needs the dtype enum
 * (core/nanochat.h) included first. */
#ifndef NC_DTYPE_CONV_H
#define NC_DTYPE_CONV_H
#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#define NC_CONV_FN __host__ __device__ __forceinline__
#else
#define NC_CONV_FN static inline
#endif

NC_CONV_FN float nc_conv_bits_f32(uint32_t u) {
#ifdef __CUDA_ARCH__
    return __uint_as_float(u);
#else
    float f;
    memcpy(&f, &u, 4);
    return f;
#endif
}

NC_CONV_FN uint32_t nc_conv_f32_bits(float f) {
#ifdef __CUDA_ARCH__
    return __float_as_uint(f);
#else
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
#endif
}

NC_CONV_FN float nc_conv_bf16_f32(uint16_t h) { return nc_conv_bits_f32((uint32_t)h << 16); }

NC_CONV_FN uint16_t nc_conv_f32_bf16(float f) {
    uint32_t u = nc_conv_f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);   /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);                                            /* nearest even */
    return (uint16_t)(u >> 16);
}

NC_CONV_FN float nc_conv_f16_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t ex = (h >> 10) & 0x1fu, man = h & 0x3ffu, u;
    if (ex == 0) {
        if (man == 0) u = sign;
        else {   /* subnormal: normalize */
            int e = -1;
            do { e++; man <<= 1; } while (!(man & 0x400u));
            u = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ffu) << 13);
        }
    } else if (ex == 31) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((ex + 112u) << 23) | (man << 13);
    }
    return nc_conv_bits_f32(u);
}

NC_CONV_FN uint16_t nc_conv_f32_f16(float f) {
    uint32_t u = nc_conv_f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return sign | 0x7e00u;                 /* NaN */
    if (a >= 0x477ff000u) return sign | 0x7c00u;                /* >= 65520 rounds to inf */
    if (a < 0x38800000u) {                                      /* below the f16 normal range */
        if (a < 0x33000000u) return sign;                       /* < 2^-25: zero */
        uint32_t e = a >> 23, m = (a & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126 - e;                               /* 14..24 */
        uint32_t half = 1u << (shift - 1), rem = m & ((1u << shift) - 1), q = m >> shift;
        if (rem > half || (rem == half && (q & 1u))) q++;
        return sign | (uint16_t)q;
    }
    uint32_t q = (a - 0x38000000u) >> 13, rem = a & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (q & 1u))) q++;
    return sign | (uint16_t)q;
}

/* float -> integer: truncate toward zero, saturate to [lo, hi], NaN -> 0 (no UB) */
NC_CONV_FN int64_t nc_conv_sat_i64(double v, double lo, double hi) {
    if (v != v) return 0;
    if (v <= lo) return (int64_t)lo;
    if (v >= hi) return (int64_t)hi;
    return (int64_t)v;
}

NC_CONV_FN double nc_conv_load_f64(const void *base, int32_t dtype, int64_t off) {
    switch (dtype) {
    case NC_F32: return ((const float *)base)[off];
    case NC_F64: return ((const double *)base)[off];
    case NC_BF16: return nc_conv_bf16_f32(((const uint16_t *)base)[off]);
    case NC_F16: return nc_conv_f16_f32(((const uint16_t *)base)[off]);
    case NC_I8: return ((const int8_t *)base)[off];
    case NC_I32: return ((const int32_t *)base)[off];
    case NC_I64: return (double)((const int64_t *)base)[off];
    case NC_U8: return ((const uint8_t *)base)[off];
    default: return 0.0;
    }
}

NC_CONV_FN void nc_conv_store_f64(void *base, int32_t dtype, int64_t off, double v) {
    switch (dtype) {
    case NC_F32: ((float *)base)[off] = (float)v; break;
    case NC_F64: ((double *)base)[off] = v; break;
    case NC_BF16: ((uint16_t *)base)[off] = nc_conv_f32_bf16((float)v); break;
    case NC_F16: ((uint16_t *)base)[off] = nc_conv_f32_f16((float)v); break;
    case NC_I8: ((int8_t *)base)[off] = (int8_t)nc_conv_sat_i64(v, -128, 127); break;
    case NC_I32: ((int32_t *)base)[off] = (int32_t)nc_conv_sat_i64(v, -2147483648.0, 2147483647.0); break;
    case NC_I64: ((int64_t *)base)[off] = nc_conv_sat_i64(v, -9223372036854775808.0, 9223372036854774784.0); break;
    case NC_U8: ((uint8_t *)base)[off] = (uint8_t)nc_conv_sat_i64(v, 0, 255); break;
    default: break;
    }
}

#endif
