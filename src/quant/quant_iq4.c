// IQ4_NL (32-value blocks) and IQ4_XS (256-value super-blocks): 4-bit indices into a fixed
// non-linear grid. Reference dequantization, the grid-scale search of llama-quantize, and the
// scalar dots. Layouts and the dot contract are in quant.h.
#include <math.h>

#include "quant/quant.h"
#include "quant/quant_search.h"

#define GROUP_EPS 1e-15f
#define NTRY 7 // candidate scales each side of the first estimate (llama-quantize's count)

// Denser near zero, where most weights lie.
const int8_t speck_iq4_values[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                     1,    13,   25,  38,  53,  69,  89,  113};

static inline float h2f(uint16_t h) {
    return speck_fp16_to_fp32(h);
}

void speck_dequant_iq4_nl(const void *x, float *y, int64_t n) {
    const speck_block_iq4_nl *b = x;
    for (int64_t i = 0; i < n / 32; i++, y += 32) {
        const float d = h2f(b[i].d);
        for (int j = 0; j < 16; j++) {
            y[j] = d * speck_iq4_values[b[i].qs[j] & 0xF];
            y[j + 16] = d * speck_iq4_values[b[i].qs[j] >> 4];
        }
    }
}

void speck_dequant_iq4_xs(const void *x, float *y, int64_t n) {
    const speck_block_iq4_xs *b = x;
    for (int64_t i = 0; i < n / SPECK_QK_K; i++)
        for (int j = 0; j < 8; j++, y += 32) {
            const float dl = h2f(b[i].d) * (speck_iq4xs_scale(b + i, j) - 32);
            const uint8_t *qs = b[i].qs + 16 * j;
            for (int l = 0; l < 16; l++) {
                y[l] = dl * speck_iq4_values[qs[l] & 0xF];
                y[l + 16] = dl * speck_iq4_values[qs[l] >> 4];
            }
        }
}

// One 32-value block's scale: from the value of largest magnitude mapped onto the grid's end,
// then 2 * NTRY + 1 nearby candidates, each refit by weighted least squares; the best fit wins.
// Writes the grid indices of the first estimate into L. Returns 0 for an all-zero block.
static float block_scale(const float *xb, const float *w, uint8_t *L) {
    const int8_t *K = speck_iq4_values;
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < 32; j++)
        if (fabsf(xb[j]) > amax) {
            amax = fabsf(xb[j]);
            max = xb[j];
        }
    if (amax < GROUP_EPS) return 0.0f;
    float d = -max / K[0];
    float id = 1 / d;
    float sumqx = 0.0f, sumq2 = 0.0f;
    for (int j = 0; j < 32; j++) {
        const int l = speck_grid_index(16, K, id * xb[j]);
        L[j] = (uint8_t)l;
        const float q = K[l];
        sumqx += w[j] * q * xb[j];
        sumq2 += w[j] * q * q;
    }
    d = sumq2 > 0 ? sumqx / sumq2 : 0.f;
    float best = d * sumqx;
    for (int t = -NTRY; t <= NTRY; t++) {
        id = (t + K[0]) / max;
        sumqx = sumq2 = 0.0f;
        for (int j = 0; j < 32; j++) {
            const float q = K[speck_grid_index(16, K, id * xb[j])];
            sumqx += w[j] * q * xb[j];
            sumq2 += w[j] * q * q;
        }
        if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
            d = sumqx / sumq2;
            best = d * sumqx;
        }
    }
    return d;
}

// Importance of each value of the nsb values from x: imp * sqrt(sigma^2 + x^2), or x^2.
static void iq4_weights(const float *x, const float *imp, int nsb, float *w) {
    float sigma2 = 0.0f;
    for (int j = 0; j < nsb; j++) sigma2 += x[j] * x[j];
    sigma2 *= 2.f / nsb;
    for (int j = 0; j < nsb; j++) w[j] = imp ? imp[j] * sqrtf(sigma2 + x[j] * x[j]) : x[j] * x[j];
}

static void pack_nibbles(const uint8_t *L, int n, uint8_t *qs) {
    for (int i = 0; i < n / 32; i++)
        for (int j = 0; j < 16; j++)
            qs[16 * i + j] = (uint8_t)(L[32 * i + j] | (L[32 * i + 16 + j] << 4));
}

void speck_quant_iq4_nl(const float *x, void *vy, int64_t n, const float *imp) {
    speck_block_iq4_nl *y = vy;
    for (int64_t i = 0; i < n / 32; i++, x += 32) {
        float w[32];
        uint8_t L[32];
        iq4_weights(x, imp ? imp + 32 * i : NULL, 32, w);
        const float d = block_scale(x, w, L);
        y[i].d = speck_fp32_to_fp16(d);
        const float id = d != 0.0f ? 1 / d : 0;
        for (int j = 0; j < 32; j++) L[j] = (uint8_t)speck_grid_index(16, speck_iq4_values, id * x[j]);
        pack_nibbles(L, 32, y[i].qs);
    }
}

void speck_quant_iq4_xs(const float *x, void *vy, int64_t n, const float *imp) {
    speck_block_iq4_xs *y = vy;
    for (int64_t i = 0; i < n / SPECK_QK_K; i++, x += SPECK_QK_K) {
        float w[SPECK_QK_K], scales[8], max_scale = 0.0f, amax = 0.0f;
        uint8_t L[SPECK_QK_K];
        iq4_weights(x, imp ? imp + SPECK_QK_K * i : NULL, SPECK_QK_K, w);
        for (int j = 0; j < 8; j++) {
            scales[j] = block_scale(x + 32 * j, w + 32 * j, L + 32 * j);
            if (fabsf(scales[j]) > amax) {
                amax = fabsf(scales[j]);
                max_scale = scales[j];
            }
        }
        // Sub-block scales as 6-bit multiples of d = max / -32; levels re-chosen for the stored
        // (unrounded d times integer) scale.
        const float d = -max_scale / 32;
        y[i].d = speck_fp32_to_fp16(d);
        const float id = d != 0.0f ? 1 / d : 0.f;
        y[i].scales_h = 0;
        memset(y[i].scales_l, 0, 4);
        for (int j = 0; j < 8; j++) {
            int l = speck_nearest_int(id * scales[j]);
            l = l < -32 ? -32 : l > 31 ? 31 : l;
            const float dl = d * l;
            const float idl = dl != 0.0f ? 1 / dl : 0.f;
            for (int k = 0; k < 32; k++)
                L[32 * j + k] = (uint8_t)speck_grid_index(16, speck_iq4_values, idl * x[32 * j + k]);
            l += 32;
            y[i].scales_l[j / 2] |= (uint8_t)((l & 0xF) << (4 * (j % 2)));
            y[i].scales_h |= (uint16_t)((l >> 4) << (2 * j));
        }
        pack_nibbles(L, SPECK_QK_K, y[i].qs);
    }
}

float speck_dot_iq4_nl_ref(const void *w, const void *a, int64_t n) {
    const speck_block_iq4_nl *x = w;
    const speck_block_q8_0 *y = a;
    float acc = 0.0f;
    for (int64_t i = 0; i < n / 32; i++) {
        int32_t isum = 0;
        for (int j = 0; j < 16; j++)
            isum += speck_iq4_values[x[i].qs[j] & 0xF] * y[i].qs[j] +
                    speck_iq4_values[x[i].qs[j] >> 4] * y[i].qs[j + 16];
        acc += (h2f(x[i].d) * h2f(y[i].d)) * (float)isum;
    }
    return acc;
}

float speck_dot_iq4_xs_ref(const void *w, const void *a, int64_t n) {
    const speck_block_iq4_xs *x = w;
    const speck_block_q8_k *y = a;
    float acc = 0.0f;
    for (int64_t i = 0; i < n / SPECK_QK_K; i++) {
        int32_t sumi = 0;
        for (int j = 0; j < 8; j++) {
            const uint8_t *qs = x[i].qs + 16 * j;
            const int8_t *qa = y[i].qs + 32 * j;
            int32_t s = 0;
            for (int l = 0; l < 16; l++)
                s += speck_iq4_values[qs[l] & 0xF] * qa[l] + speck_iq4_values[qs[l] >> 4] * qa[l + 16];
            sumi += (speck_iq4xs_scale(x + i, j) - 32) * s;
        }
        acc += (h2f(x[i].d) * y[i].d) * (float)sumi;
    }
    return acc;
}
