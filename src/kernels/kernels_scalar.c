// Portable reference kernels: exact fp16/bf16 conversions, llama.cpp-identical Q8_0/Q4_0
// quantization, and plain-C dot products. These define the semantics the SIMD paths must match
// and are the fallback on CPUs without AVX2. Compiled for baseline x86-64 (no intrinsics here).
#include <math.h>
#include <string.h>

#include "kernels/kernels_internal.h"

/* ---------------------------------------------------------------------------------------- */
/* fp16 / bf16                                                                               */
/* ---------------------------------------------------------------------------------------- */

static inline uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

float speck_fp16_to_fp32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;
    if (exp == 0) {
        // Zero or subnormal: mant * 2^-24 is exact in binary32.
        float v = (float)mant * 0x1p-24f;
        return bits_f32(f32_bits(v) | sign);
    }
    if (exp == 31) return bits_f32(sign | 0x7f800000u | (mant << 13)); // inf / nan (payload kept)
    return bits_f32(sign | ((exp + 112) << 23) | (mant << 13));        // rebias 15 -> 127
}

uint16_t speck_fp32_to_fp16(float f) {
    uint32_t x = f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return sign | 0x7e00 | (uint16_t)((ax >> 13) & 0x3ff); // quiet nan
    // 65520 is the midpoint between 65504 (max half, odd mantissa) and 2^16: ties go to inf.
    if (ax >= 0x477ff000u) return sign | 0x7c00;
    if (ax >= 0x38800000u) {
        // Normal half: rebias and round the 13 dropped bits to nearest even. A carry out of the
        // mantissa correctly bumps the exponent.
        uint32_t r = ax - (112u << 23);
        r += 0xfff + ((r >> 13) & 1);
        return sign | (uint16_t)(r >> 13);
    }
    // Half subnormal (or zero): value / 2^-24 rounded to nearest even. Below 2^-25 (and the tie
    // at exactly 2^-25) rounds to zero.
    if (ax <= 0x33000000u) return sign;
    uint32_t e = ax >> 23;
    uint32_t mant = (ax & 0x7fffff) | 0x800000;
    uint32_t shift = 126 - e; // 14..24
    uint32_t q = mant >> shift;
    uint32_t rem = mant & ((1u << shift) - 1);
    uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1))) q++;
    return sign | (uint16_t)q; // q == 0x400 is the smallest normal, also correct
}

float speck_bf16_to_fp32(uint16_t h) {
    return bits_f32((uint32_t)h << 16);
}

uint16_t speck_fp32_to_bf16(float f) {
    uint32_t x = f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40); // quiet nan
    x += 0x7fff + ((x >> 16) & 1); // round to nearest even; overflow to inf is correct RNE
    return (uint16_t)(x >> 16);
}

/* ---------------------------------------------------------------------------------------- */
/* Quantization (the reference semantics)                                                    */
/* ---------------------------------------------------------------------------------------- */

// (int)v clamped to [lo, hi], NaN to lo: the plain conversion is undefined for NaN and for values
// out of int's range, which a row holding inf or NaN (weights from a damaged file) produces.
static inline int to_int_clamped(float v, int lo, int hi) {
    return v >= (float)hi ? hi : v > (float)lo ? (int)v : lo;
}

// x: (n) -> y: (n / 32) blocks. d = amax / 127, q = roundf(x / d) computed as x * (1/d) like
// llama.cpp, so SIMD versions can reproduce it bit for bit.
void speck_quantize_row_q8_0_ref(const float *x, speck_block_q8_0 *y, int64_t n) {
    for (int64_t b = 0; b < n / SPECK_QK; b++) {
        const float *xb = x + b * SPECK_QK;
        float amax = 0.0f;
        for (int j = 0; j < SPECK_QK; j++) amax = fmaxf(amax, fabsf(xb[j]));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = speck_fp32_to_fp16(d);
        for (int j = 0; j < SPECK_QK; j++)
            y[b].qs[j] = (int8_t)to_int_clamped(roundf(xb[j] * id), -128, 127);
    }
}

// x: (n) -> y: (n / 32) blocks. The value of largest magnitude (sign kept) maps to -8, so
// d = max / -8 and q = min(15, trunc(x / d + 8.5)); element j goes in the low nibble of qs[j],
// element j + 16 in the high nibble.
void speck_quantize_row_q4_0_ref(const float *x, speck_block_q4_0 *y, int64_t n) {
    for (int64_t b = 0; b < n / SPECK_QK; b++) {
        const float *xb = x + b * SPECK_QK;
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < SPECK_QK; j++) {
            if (amax < fabsf(xb[j])) {
                amax = fabsf(xb[j]);
                max = xb[j];
            }
        }
        const float d = max / -8.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = speck_fp32_to_fp16(d);
        for (int j = 0; j < SPECK_QK / 2; j++) {
            // x * id + 8.5 lies in [0.5, 16.5]; the int8 conversion truncates (= floor here).
            const int q0 = to_int_clamped(xb[j] * id + 8.5f, 0, 15);
            const int q1 = to_int_clamped(xb[j + SPECK_QK / 2] * id + 8.5f, 0, 15);
            y[b].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

/* ---------------------------------------------------------------------------------------- */
/* Row conversions                                                                           */
/* ---------------------------------------------------------------------------------------- */

static void f16_to_f32_scalar(const uint16_t *x, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = speck_fp16_to_fp32(x[i]);
}

static void bf16_to_f32_scalar(const uint16_t *x, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = speck_bf16_to_fp32(x[i]);
}

static void q8_0_to_f32_scalar(const speck_block_q8_0 *x, float *y, int64_t n) {
    for (int64_t b = 0; b < n / SPECK_QK; b++) {
        const float d = speck_fp16_to_fp32(x[b].d);
        for (int j = 0; j < SPECK_QK; j++) y[b * SPECK_QK + j] = d * (float)x[b].qs[j];
    }
}

static void q4_0_to_f32_scalar(const speck_block_q4_0 *x, float *y, int64_t n) {
    for (int64_t b = 0; b < n / SPECK_QK; b++) {
        const float d = speck_fp16_to_fp32(x[b].d);
        float *yb = y + b * SPECK_QK;
        for (int j = 0; j < SPECK_QK / 2; j++) {
            yb[j] = d * (float)((x[b].qs[j] & 0x0f) - 8);
            yb[j + SPECK_QK / 2] = d * (float)((x[b].qs[j] >> 4) - 8);
        }
    }
}

/* ---------------------------------------------------------------------------------------- */
/* Dot products                                                                              */
/* ---------------------------------------------------------------------------------------- */

// Eight independent partial sums: shorter dependency chains, and the compiler can map them to
// SSE registers.
static float dot_f32_scalar(const float *w, const float *x, int64_t n) {
    float acc[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) acc[k] += w[i + k] * x[i + k];
    for (; i < n; i++) acc[0] += w[i] * x[i];
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

static float dot_f16_scalar(const uint16_t *w, const float *x, int64_t n) {
    float acc[4] = {0};
    int64_t i = 0;
    for (; i + 4 <= n; i += 4)
        for (int k = 0; k < 4; k++) acc[k] += speck_fp16_to_fp32(w[i + k]) * x[i + k];
    for (; i < n; i++) acc[0] += speck_fp16_to_fp32(w[i]) * x[i];
    return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

static float dot_bf16_scalar(const uint16_t *w, const float *x, int64_t n) {
    float acc[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) acc[k] += speck_bf16_to_fp32(w[i + k]) * x[i + k];
    for (; i < n; i++) acc[0] += speck_bf16_to_fp32(w[i]) * x[i];
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// Integer sum per block (exact), scaled by d_w * d_x, accumulated in float.
static float dot_q8_0_scalar(const speck_block_q8_0 *w, const speck_block_q8_0 *x, int64_t n) {
    float sum = 0.0f;
    for (int64_t b = 0; b < n / SPECK_QK; b++) {
        int32_t isum = 0;
        for (int j = 0; j < SPECK_QK; j++) isum += (int32_t)w[b].qs[j] * (int32_t)x[b].qs[j];
        sum += (float)isum * (speck_fp16_to_fp32(w[b].d) * speck_fp16_to_fp32(x[b].d));
    }
    return sum;
}

static float dot_q4_0_scalar(const speck_block_q4_0 *w, const speck_block_q8_0 *x, int64_t n) {
    float sum = 0.0f;
    for (int64_t b = 0; b < n / SPECK_QK; b++) {
        int32_t isum = 0;
        for (int j = 0; j < SPECK_QK / 2; j++) {
            isum += ((w[b].qs[j] & 0x0f) - 8) * (int32_t)x[b].qs[j];
            isum += ((w[b].qs[j] >> 4) - 8) * (int32_t)x[b].qs[j + SPECK_QK / 2];
        }
        sum += (float)isum * (speck_fp16_to_fp32(w[b].d) * speck_fp16_to_fp32(x[b].d));
    }
    return sum;
}

// q: (hd); keys/values kb + j * ld, vb + j * ld for j < n_keys; sc: (n_keys); out: (hd).
int speck_attend_ref(const float *q, const float *kb, const float *vb, int64_t ld, int hd,
                     int n_keys, float scale, float softcap, const uint8_t *allow, float *sc,
                     float *out) {
    float mx = -INFINITY;
    for (int j = 0; j < n_keys; j++) {
        if (allow && !allow[j]) {
            sc[j] = -INFINITY;
            continue;
        }
        const float *k = kb + (int64_t)j * ld;
        float s = 0.0f;
        for (int d = 0; d < hd; d++) s += k[d] * q[d];
        sc[j] = s * scale;
        if (softcap > 0) sc[j] = softcap * tanhf(sc[j] / softcap);
        if (sc[j] > mx) mx = sc[j];
    }
    memset(out, 0, (size_t)hd * sizeof(float));
    if (mx == -INFINITY) return 0;
    float sum = 0.0f;
    for (int j = 0; j < n_keys; j++) {
        const float p = sc[j] == -INFINITY ? 0.0f : expf(sc[j] - mx);
        sum += p;
        if (p == 0.0f) continue;
        const float *v = vb + (int64_t)j * ld;
        for (int d = 0; d < hd; d++) out[d] += p * v[d];
    }
    const float inv = 1.0f / sum;
    for (int d = 0; d < hd; d++) out[d] *= inv;
    return 1;
}

const speck_qt_kernels speck_qt_none[SPECK_TYPE_ID_MAX]; // all NULL: the reference

const speck_kernel_table speck_kernels_scalar = {
    .name = "scalar",
    .dot_f32 = dot_f32_scalar,
    .dot_f16 = dot_f16_scalar,
    .dot_bf16 = dot_bf16_scalar,
    .dot_q8_0 = dot_q8_0_scalar,
    .dot_q4_0 = dot_q4_0_scalar,
    .mm_q4_0 = NULL, // matmul uses the Q8_0-block dots
    .mm_q8_0 = NULL,
    .gemm_pack = NULL, // prefill uses sgemm
    .gemm_run = NULL,
    .quantize_q8_0 = speck_quantize_row_q8_0_ref,
    .f16_to_f32 = f16_to_f32_scalar,
    .bf16_to_f32 = bf16_to_f32_scalar,
    .attend = speck_attend_ref,
    .q8_0_to_f32 = q8_0_to_f32_scalar,
    .q4_0_to_f32 = q4_0_to_f32_scalar,
    .quantize_q8_k = speck_quant_q8_k_ref,
    .qt = speck_qt_none,
};
