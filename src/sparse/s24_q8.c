// S24_Q8, speck's 2:4-sparse 8-bit weight type: reference quantizer, dequantizer and dot (the
// scalar kernel; the AVX-512 one is src/kernels/sparse_avx512.c).
#include <math.h>
#include <string.h>

#include "kernels/kernels.h"
#include "quant/quant.h"

// Keep the 2 largest |x| of each group of 4 (ties: the lower position) and round them as
// speck's Q8_0 rounds the row with the others zeroed: the same d and the same integers, so the
// block holds exactly the Q8_0 block of that zero-filled row without its zeros.
void speck_quant_s24_q8(const float *x, void *vy, int64_t n, const float *imp) {
    (void)imp; // 8-bit rounding to nearest: nothing for importance to weigh
    speck_block_s24_q8 *y = vy;
    for (int64_t b = 0; b < n / 32; b++, x += 32) {
        float z[32];
        uint8_t keep[32] = {0};
        for (int g = 0; g < 8; g++) {
            const float *v = x + 4 * g;
            int i0 = 0;
            for (int j = 1; j < 4; j++)
                if (fabsf(v[j]) > fabsf(v[i0])) i0 = j;
            int i1 = i0 == 0 ? 1 : 0;
            for (int j = 0; j < 4; j++)
                if (j != i0 && fabsf(v[j]) > fabsf(v[i1])) i1 = j;
            keep[4 * g + i0] = keep[4 * g + i1] = 1;
        }
        for (int j = 0; j < 32; j++) z[j] = keep[j] ? x[j] : 0.0f;
        speck_block_q8_0 q;
        speck_quantize_row_q8_0_ref(z, &q, 32);
        y[b].d = q.d;
        uint32_t idx = 0;
        int k = 0;
        for (int j = 0; j < 32; j++)
            if (keep[j]) {
                y[b].qs[k] = q.qs[j];
                idx |= (uint32_t)(j % 4) << (2 * k);
                k++;
            }
        memcpy(y[b].idx, &idx, 4);
    }
}

void speck_dequant_s24_q8(const void *vx, float *y, int64_t n) {
    const speck_block_s24_q8 *x = vx;
    for (int64_t b = 0; b < n / 32; b++, y += 32) {
        const float d = speck_fp16_to_fp32(x[b].d);
        uint32_t idx;
        memcpy(&idx, x[b].idx, 4);
        memset(y, 0, 32 * sizeof *y);
        for (int k = 0; k < 16; k++) y[4 * (k / 2) + (idx >> (2 * k) & 3)] = d * (float)x[b].qs[k];
    }
}

// quant.h's contract: each block's exact int32 sum, times (d_w * d_a), added in block order.
float speck_dot_s24_q8_ref(const void *w, const void *a, int64_t n) {
    const speck_block_s24_q8 *x = w;
    const speck_block_q8_0 *y = a;
    float acc = 0.0f;
    for (int64_t b = 0; b < n / 32; b++) {
        uint32_t idx;
        memcpy(&idx, x[b].idx, 4);
        int32_t isum = 0;
        for (int k = 0; k < 16; k++)
            isum += (int32_t)x[b].qs[k] * y[b].qs[4 * (k / 2) + (idx >> (2 * k) & 3)];
        acc += (speck_fp16_to_fp32(x[b].d) * speck_fp16_to_fp32(y[b].d)) * (float)isum;
    }
    return acc;
}
