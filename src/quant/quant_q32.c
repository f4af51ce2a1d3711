// Q4_1, Q5_0, Q5_1 (32-value blocks): reference dequantization, quantization (also Q4_0's
// importance-weighted variant) and the scalar dots against Q8_0 activations. Layouts and the
// dot contract are in quant.h.
#include <float.h>
#include <math.h>

#include "quant/quant.h"
#include "quant/quant_search.h"

#define QK 32

static inline float h2f(uint16_t h) {
    return speck_fp16_to_fp32(h);
}

// Bit 4 of element j's level (j 0..31) from a block's qh bytes.
static inline int q5_high(const uint8_t qh[4], int j) {
    uint32_t h;
    memcpy(&h, qh, 4);
    return (int)((h >> j) & 1) << 4;
}

// Levels L (0..31) of one block into its nibbles and qh.
static void q5_pack(const uint8_t *L, uint8_t qs[16], uint8_t qh[4]) {
    uint32_t h = 0;
    for (int j = 0; j < 16; j++) {
        qs[j] = (uint8_t)((L[j] & 0xF) | ((L[j + 16] & 0xF) << 4));
        h |= (uint32_t)(L[j] >> 4 & 1) << j;
        h |= (uint32_t)(L[j + 16] >> 4 & 1) << (j + 16);
    }
    memcpy(qh, &h, 4);
}

/* ---- dequantization ------------------------------------------------------------------------ */

void speck_dequant_q4_1(const void *x, float *y, int64_t n) {
    const speck_block_q4_1 *b = x;
    for (int64_t i = 0; i < n / QK; i++, y += QK) {
        const float d = h2f(b[i].d), m = h2f(b[i].m);
        for (int j = 0; j < 16; j++) {
            y[j] = (b[i].qs[j] & 0xF) * d + m;
            y[j + 16] = (b[i].qs[j] >> 4) * d + m;
        }
    }
}

void speck_dequant_q5_0(const void *x, float *y, int64_t n) {
    const speck_block_q5_0 *b = x;
    for (int64_t i = 0; i < n / QK; i++, y += QK) {
        const float d = h2f(b[i].d);
        for (int j = 0; j < 16; j++) {
            y[j] = (((b[i].qs[j] & 0xF) | q5_high(b[i].qh, j)) - 16) * d;
            y[j + 16] = (((b[i].qs[j] >> 4) | q5_high(b[i].qh, j + 16)) - 16) * d;
        }
    }
}

void speck_dequant_q5_1(const void *x, float *y, int64_t n) {
    const speck_block_q5_1 *b = x;
    for (int64_t i = 0; i < n / QK; i++, y += QK) {
        const float d = h2f(b[i].d), m = h2f(b[i].m);
        for (int j = 0; j < 16; j++) {
            y[j] = ((b[i].qs[j] & 0xF) | q5_high(b[i].qh, j)) * d + m;
            y[j + 16] = ((b[i].qs[j] >> 4) | q5_high(b[i].qh, j + 16)) * d + m;
        }
    }
}

/* ---- quantization -------------------------------------------------------------------------- */

// sigma^2 of the importance weighting: the mean square of the whole row.
static float row_sigma2(const float *x, int64_t n) {
    float s = 0.0f;
    for (int64_t j = 0; j < n; j++) s += x[j] * x[j];
    return s / n;
}

// w: (32) importance of each value of block xb: imp * sqrt(sigma^2 + x^2).
static void block_weights(const float *xb, const float *imp, float sigma2, float *w) {
    for (int j = 0; j < QK; j++) w[j] = imp[j] * sqrtf(sigma2 + xb[j] * xb[j]);
}

void speck_quant_q4_0(const float *x, void *vy, int64_t n, const float *imp) {
    speck_block_q4_0 *y = vy;
    if (!imp) {
        speck_quantize_row_q4_0_ref(x, y, n);
        return;
    }
    const float sigma2 = row_sigma2(x, n);
    for (int64_t i = 0; i < n / QK; i++) {
        float w[QK];
        int8_t L[QK];
        block_weights(x + QK * i, imp + QK * i, sigma2, w);
        y[i].d = speck_fp32_to_fp16(speck_make_qx(QK, 8, x + QK * i, L, 1, w));
        for (int j = 0; j < 16; j++) y[i].qs[j] = (uint8_t)(L[j] | (L[j + 16] << 4));
    }
}

// Min/max levels of one block for Q4_1 / Q5_1 (nmax 15 / 31): d = (max - min) / nmax, levels
// rounded half up from the min. clamp: Q4_1 clamps at 15 (Q5_1 cannot exceed 31).
static void minmax_levels(const float *xb, int nmax, int clamp, float *d, float *min, uint8_t *L) {
    float lo = FLT_MAX, hi = -FLT_MAX;
    for (int j = 0; j < QK; j++) {
        if (xb[j] < lo) lo = xb[j];
        if (xb[j] > hi) hi = xb[j];
    }
    *d = (hi - lo) / nmax;
    *min = lo;
    const float id = *d != 0.0f ? 1.0f / *d : 0.0f;
    for (int j = 0; j < QK; j++) {
        const float v = (xb[j] - lo) * id;
        if (clamp) {
            const int q = (int8_t)(v + 0.5f);
            L[j] = (uint8_t)(q < nmax ? q : nmax);
        } else {
            L[j] = (uint8_t)(v + 0.5f);
        }
    }
}

void speck_quant_q4_1(const float *x, void *vy, int64_t n, const float *imp) {
    speck_block_q4_1 *y = vy;
    const float sigma2 = imp ? row_sigma2(x, n) : 0.0f;
    for (int64_t i = 0; i < n / QK; i++) {
        uint8_t L[QK];
        float d, min;
        if (imp) {
            float w[QK];
            uint8_t aux[QK];
            block_weights(x + QK * i, imp + QK * i, sigma2, w);
            d = speck_make_qkx3(QK, 15, x + QK * i, w, L, &min, aux, -0.9f, 0.05f, 36, 0);
            min = -min;
        } else {
            minmax_levels(x + QK * i, 15, 1, &d, &min, L);
        }
        y[i].d = speck_fp32_to_fp16(d);
        y[i].m = speck_fp32_to_fp16(min);
        for (int j = 0; j < 16; j++) y[i].qs[j] = (uint8_t)(L[j] | (L[j + 16] << 4));
    }
}

void speck_quant_q5_0(const float *x, void *vy, int64_t n, const float *imp) {
    speck_block_q5_0 *y = vy;
    const float sigma2 = imp ? row_sigma2(x, n) : 0.0f;
    for (int64_t i = 0; i < n / QK; i++) {
        const float *xb = x + QK * i;
        uint8_t L[QK];
        if (imp) {
            float w[QK];
            int8_t l8[QK];
            block_weights(xb, imp + QK * i, sigma2, w);
            y[i].d = speck_fp32_to_fp16(speck_make_qx(QK, 16, xb, l8, 1, w));
            for (int j = 0; j < QK; j++) L[j] = (uint8_t)l8[j];
        } else {
            // The value of largest magnitude maps to level 0 (-16): d = max / -16.
            float amax = 0.0f, max = 0.0f;
            for (int j = 0; j < QK; j++) {
                if (amax < fabsf(xb[j])) {
                    amax = fabsf(xb[j]);
                    max = xb[j];
                }
            }
            const float d = max / -16;
            const float id = d != 0.0f ? 1.0f / d : 0.0f;
            y[i].d = speck_fp32_to_fp16(d);
            for (int j = 0; j < QK; j++) {
                const int q = (int8_t)(xb[j] * id + 16.5f);
                L[j] = (uint8_t)(q < 31 ? q : 31);
            }
        }
        q5_pack(L, y[i].qs, y[i].qh);
    }
}

void speck_quant_q5_1(const float *x, void *vy, int64_t n, const float *imp) {
    speck_block_q5_1 *y = vy;
    const float sigma2 = imp ? row_sigma2(x, n) : 0.0f;
    for (int64_t i = 0; i < n / QK; i++) {
        uint8_t L[QK];
        float d, min;
        if (imp) {
            float w[QK];
            uint8_t aux[QK];
            block_weights(x + QK * i, imp + QK * i, sigma2, w);
            d = speck_make_qkx3(QK, 31, x + QK * i, w, L, &min, aux, -0.9f, 0.05f, 36, 0);
            min = -min;
        } else {
            minmax_levels(x + QK * i, 31, 0, &d, &min, L);
        }
        y[i].d = speck_fp32_to_fp16(d);
        y[i].m = speck_fp32_to_fp16(min);
        q5_pack(L, y[i].qs, y[i].qh);
    }
}

/* ---- dots against Q8_0 activations --------------------------------------------------------- */

// The 32 levels of a block: nibble j (element j < 16 low, j >= 16 high nibble of qs[j - 16])
// plus, for Q5, bit 4 from qh; minus the offset (Q5_0: 16).
static void levels_nib(const uint8_t qs[16], const uint8_t *qh, int off, int L[QK]) {
    for (int j = 0; j < 16; j++) {
        L[j] = (qs[j] & 0xF) - off;
        L[j + 16] = (qs[j] >> 4) - off;
        if (qh) L[j] += q5_high(qh, j), L[j + 16] += q5_high(qh, j + 16);
    }
}

// One block's contribution (quant.h): (d_w * d_a) * sum(L * q_a) [+ m_w * (d_a * sum(q_a))].
static inline float block_dot(const int L[QK], const speck_block_q8_0 *a, float dw, int has_m,
                              float m) {
    int32_t isum = 0, qsum = 0;
    for (int j = 0; j < QK; j++) {
        isum += L[j] * a->qs[j];
        qsum += a->qs[j];
    }
    const float da = h2f(a->d);
    const float c = (dw * da) * (float)isum;
    return has_m ? c + m * (da * (float)qsum) : c;
}

float speck_dot_q4_1_ref(const void *w, const void *a, int64_t n) {
    const speck_block_q4_1 *x = w;
    const speck_block_q8_0 *y = a;
    float acc = 0.0f;
    for (int64_t i = 0; i < n / QK; i++) {
        int L[QK];
        levels_nib(x[i].qs, NULL, 0, L);
        acc += block_dot(L, y + i, h2f(x[i].d), 1, h2f(x[i].m));
    }
    return acc;
}

float speck_dot_q5_0_ref(const void *w, const void *a, int64_t n) {
    const speck_block_q5_0 *x = w;
    const speck_block_q8_0 *y = a;
    float acc = 0.0f;
    for (int64_t i = 0; i < n / QK; i++) {
        int L[QK];
        levels_nib(x[i].qs, x[i].qh, 16, L);
        acc += block_dot(L, y + i, h2f(x[i].d), 0, 0.0f);
    }
    return acc;
}

float speck_dot_q5_1_ref(const void *w, const void *a, int64_t n) {
    const speck_block_q5_1 *x = w;
    const speck_block_q8_0 *y = a;
    float acc = 0.0f;
    for (int64_t i = 0; i < n / QK; i++) {
        int L[QK];
        levels_nib(x[i].qs, x[i].qh, 0, L);
        acc += block_dot(L, y + i, h2f(x[i].d), 1, h2f(x[i].m));
    }
    return acc;
}
