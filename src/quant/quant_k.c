// The K-quants (Q2_K .. Q6_K, 256-value super-blocks) and Q8_K activations: reference
// dequantization, quantization (plain and importance-weighted) and the scalar dots. Layouts and
// the dot contract are in quant.h.
#include <math.h>

#include "quant/quant.h"
#include "quant/quant_search.h"

#define QKK SPECK_QK_K
#define GROUP_EPS 1e-15f

static inline float h2f(uint16_t h) {
    return speck_fp16_to_fp32(h);
}

static inline int clampi(int v, int lo, int hi) {
    return v < lo ? lo : v > hi ? hi : v;
}

/* ---- levels: the stored integers of a super-block in element order ------------------------- */

// Q2_K / Q3_K low bits: element 128h + 32s + l is bits 2s, 2s + 1 of qs[32h + l].
static void levels_2bit(const uint8_t qs[64], uint8_t L[QKK]) {
    for (int h = 0; h < 2; h++)
        for (int s = 0; s < 4; s++)
            for (int l = 0; l < 32; l++) L[128 * h + 32 * s + l] = (qs[32 * h + l] >> (2 * s)) & 3;
}

static void pack_2bit(const uint8_t L[QKK], uint8_t qs[64]) {
    for (int h = 0; h < 2; h++)
        for (int l = 0; l < 32; l++) {
            const uint8_t *p = L + 128 * h + l;
            qs[32 * h + l] = (uint8_t)(p[0] | (p[32] << 2) | (p[64] << 4) | (p[96] << 6));
        }
}

// Q3_K: levels in -4..3 (low 2 bits, minus 4 where the hmask bit is clear).
static void levels_q3k(const speck_block_q3_k *b, int8_t L[QKK]) {
    uint8_t lo[QKK];
    levels_2bit(b->qs, lo);
    for (int h = 0; h < 2; h++)
        for (int s = 0; s < 4; s++)
            for (int l = 0; l < 32; l++) {
                const int e = 128 * h + 32 * s + l;
                L[e] = (int8_t)(lo[e] - ((b->hmask[l] >> (4 * h + s)) & 1 ? 0 : 4));
            }
}

// Q4_K / Q5_K: element 64c + l is the low nibble of qs[32c + l], 64c + 32 + l the high one; Q5_K
// adds bit 4 from bits 2c / 2c + 1 of qh[l].
static void levels_q45k(const uint8_t qs[128], const uint8_t *qh, uint8_t L[QKK]) {
    for (int c = 0; c < 4; c++)
        for (int l = 0; l < 32; l++) {
            L[64 * c + l] = qs[32 * c + l] & 0xF;
            L[64 * c + 32 + l] = qs[32 * c + l] >> 4;
            if (qh) {
                L[64 * c + l] |= ((qh[l] >> (2 * c)) & 1) << 4;
                L[64 * c + 32 + l] |= ((qh[l] >> (2 * c + 1)) & 1) << 4;
            }
        }
}

// Q6_K: levels q - 32 in -32..31.
static void levels_q6k(const speck_block_q6_k *b, int8_t L[QKK]) {
    for (int h = 0; h < 2; h++) {
        const uint8_t *ql = b->ql + 64 * h, *qh = b->qh + 32 * h;
        int8_t *o = L + 128 * h;
        for (int l = 0; l < 32; l++) {
            o[l] = (int8_t)(((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32);
            o[l + 32] = (int8_t)(((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32);
            o[l + 64] = (int8_t)(((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
            o[l + 96] = (int8_t)(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
        }
    }
}

/* ---- dequantization ------------------------------------------------------------------------ */

void speck_dequant_q2_k(const void *x, float *y, int64_t n) {
    const speck_block_q2_k *b = x;
    for (int64_t i = 0; i < n / QKK; i++, y += QKK) {
        const float d = h2f(b[i].d), dmin = h2f(b[i].dmin);
        uint8_t L[QKK];
        levels_2bit(b[i].qs, L);
        for (int j = 0; j < 16; j++) {
            const float dl = d * (b[i].scales[j] & 0xF), ml = dmin * (b[i].scales[j] >> 4);
            for (int l = 0; l < 16; l++) y[16 * j + l] = dl * L[16 * j + l] - ml;
        }
    }
}

void speck_dequant_q3_k(const void *x, float *y, int64_t n) {
    const speck_block_q3_k *b = x;
    for (int64_t i = 0; i < n / QKK; i++, y += QKK) {
        const float d = h2f(b[i].d);
        int8_t L[QKK];
        levels_q3k(b + i, L);
        for (int j = 0; j < 16; j++) {
            const float dl = d * (speck_q3k_scale(b[i].scales, j) - 32);
            for (int l = 0; l < 16; l++) y[16 * j + l] = dl * L[16 * j + l];
        }
    }
}

// Q4_K / Q5_K: x = (d * sc) * q - dmin * m per 32-value sub-block.
static void dequant_q45k(uint16_t hd, uint16_t hdmin, const uint8_t *scales, const uint8_t L[QKK],
                         float *y) {
    const float d = h2f(hd), dmin = h2f(hdmin);
    for (int j = 0; j < 8; j++) {
        uint8_t sc, m;
        speck_k4_scale_min(scales, j, &sc, &m);
        const float dl = d * sc, ml = dmin * m;
        for (int l = 0; l < 32; l++) y[32 * j + l] = dl * L[32 * j + l] - ml;
    }
}

void speck_dequant_q4_k(const void *x, float *y, int64_t n) {
    const speck_block_q4_k *b = x;
    for (int64_t i = 0; i < n / QKK; i++, y += QKK) {
        uint8_t L[QKK];
        levels_q45k(b[i].qs, NULL, L);
        dequant_q45k(b[i].d, b[i].dmin, b[i].scales, L, y);
    }
}

void speck_dequant_q5_k(const void *x, float *y, int64_t n) {
    const speck_block_q5_k *b = x;
    for (int64_t i = 0; i < n / QKK; i++, y += QKK) {
        uint8_t L[QKK];
        levels_q45k(b[i].qs, b[i].qh, L);
        dequant_q45k(b[i].d, b[i].dmin, b[i].scales, L, y);
    }
}

void speck_dequant_q6_k(const void *x, float *y, int64_t n) {
    const speck_block_q6_k *b = x;
    for (int64_t i = 0; i < n / QKK; i++, y += QKK) {
        const float d = h2f(b[i].d);
        int8_t L[QKK];
        levels_q6k(b + i, L);
        for (int e = 0; e < QKK; e++) y[e] = d * b[i].scales[e / 16] * L[e];
    }
}

void speck_dequant_q8_k(const void *x, float *y, int64_t n) {
    const speck_block_q8_k *b = x;
    for (int64_t i = 0; i < n / QKK; i++, y += QKK)
        for (int e = 0; e < QKK; e++) y[e] = b[i].d * b[i].qs[e];
}

/* ---- quantization -------------------------------------------------------------------------- */

// The mean square of a super-block's values times k (the importance weighting's sigma^2).
static float sigma2_of(const float *x, float k) {
    float s = 0.0f;
    for (int j = 0; j < QKK; j++) s += x[j] * x[j];
    return k * s / QKK;
}

// Q2_K / Q4_K / Q5_K final levels once the scales are stored: round (x + dmin * m) / (d * sc)
// to 0..nmax per sub-block of `sub` values; sub-blocks whose scale is zero keep their levels.
// scale_min(j, &sc, &m) gives sub-block j's stored scale and min.
static void requant_asym(const float *x, float d, float dmin, const uint8_t *sc, const uint8_t *m,
                         int nsub, int sub, int nmax, uint8_t *L) {
    for (int j = 0; j < nsub; j++) {
        const float dl = d * sc[j];
        if (!dl) continue;
        const float dm = dmin * m[j];
        for (int i = 0; i < sub; i++)
            L[sub * j + i] = (uint8_t)clampi(speck_nearest_int((x[sub * j + i] + dm) / dl), 0, nmax);
    }
}

void speck_quant_q2_k(const float *x, void *vy, int64_t n, const float *imp) {
    speck_block_q2_k *y = vy;
    for (int64_t i = 0; i < n / QKK; i++, x += QKK) {
        uint8_t L[QKK], aux[16], sc[16], mn[16];
        float scales[16], mins[16], w[16];
        if (imp) {
            const float sigma2 = sigma2_of(x, 1.0f);
            float sw[16];
            for (int j = 0; j < 16; j++) {
                const float *qw = imp + QKK * i + 16 * j;
                for (int l = 0; l < 16; l++)
                    w[l] = qw[l] * sqrtf(sigma2 + x[16 * j + l] * x[16 * j + l]);
                sw[j] = 0.0f;
                for (int l = 0; l < 16; l++) sw[j] += w[l];
                scales[j] = speck_make_qkx3(16, 3, x + 16 * j, w, L + 16 * j, &mins[j], aux,
                                            -0.9f, 0.05f, 36, 0);
            }
            // Sub-block scales and mins quantized to 4 bits against the super-block scales.
            const float dm = speck_make_qp(16, 15, scales, sc, sw);
            const float mm = speck_make_qp(16, 15, mins, mn, sw);
            y[i].d = speck_fp32_to_fp16(dm);
            y[i].dmin = speck_fp32_to_fp16(mm);
        } else {
            float max_scale = 0.0f, max_min = 0.0f;
            for (int j = 0; j < 16; j++) {
                for (int l = 0; l < 16; l++) w[l] = fabsf(x[16 * j + l]);
                scales[j] = speck_make_qkx2(16, 3, x + 16 * j, w, L + 16 * j, &mins[j], aux,
                                            -0.5f, 0.1f, 15, 1);
                if (scales[j] > max_scale) max_scale = scales[j];
                if (mins[j] > max_min) max_min = mins[j];
            }
            for (int j = 0; j < 16; j++) sc[j] = mn[j] = 0;
            y[i].d = y[i].dmin = speck_fp32_to_fp16(0.0f);
            if (max_scale > 0) {
                const float is = 15.f / max_scale;
                for (int j = 0; j < 16; j++) sc[j] = (uint8_t)speck_nearest_int(is * scales[j]);
                y[i].d = speck_fp32_to_fp16(max_scale / 15.f);
            }
            if (max_min > 0) {
                const float is = 15.f / max_min;
                for (int j = 0; j < 16; j++) mn[j] = (uint8_t)speck_nearest_int(is * mins[j]);
                y[i].dmin = speck_fp32_to_fp16(max_min / 15.f);
            }
        }
        for (int j = 0; j < 16; j++) {
            y[i].scales[j] = (uint8_t)(sc[j] | (mn[j] << 4));
            sc[j] = y[i].scales[j] & 0xF; // as stored (bits above 4 dropped)
            mn[j] = y[i].scales[j] >> 4;
        }
        requant_asym(x, h2f(y[i].d), h2f(y[i].dmin), sc, mn, 16, 16, 3, L);
        pack_2bit(L, y[i].qs);
    }
}

// Q3_K's 16 six-bit scales (0..63, stored + 32 already) into its 12 scale bytes.
static void pack_q3k_scales(const int l6[16], uint8_t s[12]) {
    memset(s, 0, 12);
    for (int j = 0; j < 16; j++) {
        const int l = l6[j];
        if (j < 8)
            s[j] = (uint8_t)(l & 0xF);
        else
            s[j - 8] |= (uint8_t)((l & 0xF) << 4);
        s[8 + j % 4] |= (uint8_t)((l >> 4) << (2 * (j / 4)));
    }
}

void speck_quant_q3_k(const float *x, void *vy, int64_t n, const float *imp) {
    speck_block_q3_k *y = vy;
    for (int64_t i = 0; i < n / QKK; i++, x += QKK) {
        int8_t L[QKK];
        float scales[16];
        int l6[16];
        if (imp) {
            const float sigma2 = sigma2_of(x, 2.0f);
            float w[16], sw[16];
            int8_t ls[16];
            for (int j = 0; j < 16; j++) {
                const float *qw = imp + QKK * i + 16 * j;
                for (int l = 0; l < 16; l++)
                    w[l] = qw[l] * sqrtf(sigma2 + x[16 * j + l] * x[16 * j + l]);
                sw[j] = 0.0f;
                for (int l = 0; l < 16; l++) sw[j] += w[l];
                scales[j] = speck_make_qx(16, 4, x + 16 * j, L + 16 * j, 1, w);
            }
            const float d = speck_make_qx(16, 32, scales, ls, 1, sw);
            for (int j = 0; j < 16; j++) l6[j] = ls[j];
            pack_q3k_scales(l6, y[i].scales);
            y[i].d = speck_fp32_to_fp16(d);
        } else {
            float max_scale = 0.0f, amax = 0.0f;
            for (int j = 0; j < 16; j++) {
                scales[j] = speck_make_q3(16, 4, x + 16 * j, L + 16 * j, 1);
                if (fabsf(scales[j]) > amax) {
                    amax = fabsf(scales[j]);
                    max_scale = scales[j];
                }
            }
            if (max_scale != 0.0f) {
                const float is = -32.f / max_scale;
                for (int j = 0; j < 16; j++) {
                    const int8_t l = (int8_t)speck_nearest_int(is * scales[j]);
                    l6[j] = clampi(l, -32, 31) + 32;
                }
                pack_q3k_scales(l6, y[i].scales);
                y[i].d = speck_fp32_to_fp16(1 / is);
            } else {
                memset(y[i].scales, 0, 12);
                y[i].d = speck_fp32_to_fp16(0.0f);
            }
        }
        const float d = h2f(y[i].d);
        for (int j = 0; j < 16; j++) {
            const float dl = d * (int8_t)(speck_q3k_scale(y[i].scales, j) - 32);
            if (!dl) continue;
            for (int l = 0; l < 16; l++)
                L[16 * j + l] = (int8_t)(clampi(speck_nearest_int(x[16 * j + l] / dl), -4, 3) + 4);
        }
        // Levels 0..7: bit 2 into hmask (element 128h + 32s + l: bit 4h + s of hmask[l]).
        memset(y[i].hmask, 0, 32);
        uint8_t lo[QKK];
        for (int e = 0; e < QKK; e++) {
            if (L[e] > 3) y[i].hmask[e % 32] |= (uint8_t)(1 << (e / 32));
            lo[e] = (uint8_t)(L[e] & 3);
        }
        pack_2bit(lo, y[i].qs);
    }
}

// Q4_K / Q5_K: 6-bit scales and mins of the 8 sub-blocks into the 12 scale bytes.
static void pack_k4_scales(const uint8_t ls[8], const uint8_t lm[8], uint8_t s[12]) {
    for (int j = 0; j < 8; j++) {
        if (j < 4) {
            s[j] = ls[j];
            s[j + 4] = lm[j];
        } else {
            s[j + 4] = (uint8_t)((ls[j] & 0xF) | ((lm[j] & 0xF) << 4));
            s[j - 4] |= (uint8_t)((ls[j] >> 4) << 6);
            s[j] |= (uint8_t)((lm[j] >> 4) << 6);
        }
    }
}

// The common part of Q4_K (nmax 15) and Q5_K (nmax 31): levels L (0..nmax) and the header
// (d, dmin, 12 scale bytes) of one super-block.
static void quant_q45k(const float *x, const float *imp, int nmax, uint16_t *hd, uint16_t *hdmin,
                       uint8_t scales[12], uint8_t L[QKK]) {
    uint8_t aux[32], ls[8], lm[8];
    float w[32], sc[8], mins[8];
    if (imp) {
        const float sigma2 = sigma2_of(x, 2.0f);
        float sw[8];
        for (int j = 0; j < 8; j++) {
            for (int l = 0; l < 32; l++)
                w[l] = imp[32 * j + l] * sqrtf(sigma2 + x[32 * j + l] * x[32 * j + l]);
            sw[j] = 0.0f;
            for (int l = 0; l < 32; l++) sw[j] += w[l];
            sc[j] = speck_make_qkx3(32, nmax, x + 32 * j, w, L + 32 * j, &mins[j], aux, -0.9f,
                                    0.05f, 36, 0);
        }
        const float d = speck_make_qp(8, 63, sc, ls, sw);
        const float m = speck_make_qp(8, 63, mins, lm, sw);
        for (int j = 0; j < 8; j++) {
            ls[j] = ls[j] < 63 ? ls[j] : 63;
            lm[j] = lm[j] < 63 ? lm[j] : 63;
        }
        pack_k4_scales(ls, lm, scales);
        *hd = speck_fp32_to_fp16(d);
        *hdmin = speck_fp32_to_fp16(m);
    } else {
        float max_scale = 0.0f, max_min = 0.0f;
        for (int j = 0; j < 8; j++) {
            const float *xb = x + 32 * j;
            float sx2 = 0.0f;
            for (int l = 0; l < 32; l++) sx2 += xb[l] * xb[l];
            const float av = sqrtf(sx2 / 32);
            for (int l = 0; l < 32; l++) w[l] = av + fabsf(xb[l]);
            sc[j] = nmax == 15 ? speck_make_qkx2(32, 15, xb, w, L + 32 * j, &mins[j], aux, -1.f,
                                                 0.1f, 20, 0)
                               : speck_make_qkx2(32, 31, xb, w, L + 32 * j, &mins[j], aux, -0.5f,
                                                 0.1f, 15, 0);
            if (sc[j] > max_scale) max_scale = sc[j];
            if (mins[j] > max_min) max_min = mins[j];
        }
        const float is = max_scale > 0 ? 63.f / max_scale : 0.f;
        const float im = max_min > 0 ? 63.f / max_min : 0.f;
        for (int j = 0; j < 8; j++) {
            const uint8_t a = (uint8_t)speck_nearest_int(is * sc[j]);
            const uint8_t b = (uint8_t)speck_nearest_int(im * mins[j]);
            ls[j] = a < 63 ? a : 63;
            lm[j] = b < 63 ? b : 63;
        }
        pack_k4_scales(ls, lm, scales);
        *hd = speck_fp32_to_fp16(max_scale / 63.f);
        *hdmin = speck_fp32_to_fp16(max_min / 63.f);
    }
    uint8_t s[8], m[8];
    for (int j = 0; j < 8; j++) speck_k4_scale_min(scales, j, &s[j], &m[j]);
    requant_asym(x, h2f(*hd), h2f(*hdmin), s, m, 8, 32, nmax, L);
}

void speck_quant_q4_k(const float *x, void *vy, int64_t n, const float *imp) {
    speck_block_q4_k *y = vy;
    for (int64_t i = 0; i < n / QKK; i++, x += QKK) {
        uint8_t L[QKK];
        quant_q45k(x, imp ? imp + QKK * i : NULL, 15, &y[i].d, &y[i].dmin, y[i].scales, L);
        for (int c = 0; c < 4; c++)
            for (int l = 0; l < 32; l++)
                y[i].qs[32 * c + l] = (uint8_t)(L[64 * c + l] | (L[64 * c + 32 + l] << 4));
    }
}

void speck_quant_q5_k(const float *x, void *vy, int64_t n, const float *imp) {
    speck_block_q5_k *y = vy;
    for (int64_t i = 0; i < n / QKK; i++, x += QKK) {
        uint8_t L[QKK];
        quant_q45k(x, imp ? imp + QKK * i : NULL, 31, &y[i].d, &y[i].dmin, y[i].scales, L);
        memset(y[i].qh, 0, 32);
        for (int c = 0; c < 4; c++)
            for (int l = 0; l < 32; l++) {
                const int a = L[64 * c + l], b = L[64 * c + 32 + l];
                y[i].qs[32 * c + l] = (uint8_t)((a & 0xF) | ((b & 0xF) << 4));
                y[i].qh[l] |= (uint8_t)(((a >> 4) << (2 * c)) | ((b >> 4) << (2 * c + 1)));
            }
    }
}

void speck_quant_q6_k(const float *x, void *vy, int64_t n, const float *imp) {
    speck_block_q6_k *y = vy;
    for (int64_t i = 0; i < n / QKK; i++, x += QKK) {
        int8_t L[QKK];
        float scales[16], max_scale = 0.0f, amax = 0.0f;
        for (int j = 0; j < 16; j++) {
            scales[j] = speck_make_qx(16, 32, x + 16 * j, L + 16 * j, 1,
                                      imp ? imp + QKK * i + 16 * j : NULL);
            if (fabsf(scales[j]) > amax) {
                amax = fabsf(scales[j]);
                max_scale = scales[j];
            }
        }
        if (amax < GROUP_EPS) {
            memset(&y[i], 0, sizeof y[i]);
            continue;
        }
        const float is = -128.f / max_scale;
        y[i].d = speck_fp32_to_fp16(1 / is);
        for (int j = 0; j < 16; j++) {
            const int s = speck_nearest_int(is * scales[j]);
            y[i].scales[j] = (int8_t)(s < 127 ? s : 127);
        }
        const float d = h2f(y[i].d);
        for (int j = 0; j < 16; j++) {
            const float dl = d * y[i].scales[j];
            if (!dl) continue;
            for (int l = 0; l < 16; l++)
                L[16 * j + l] =
                    (int8_t)(clampi(speck_nearest_int(x[16 * j + l] / dl), -32, 31) + 32);
        }
        for (int h = 0; h < 2; h++) {
            const int8_t *p = L + 128 * h;
            uint8_t *ql = y[i].ql + 64 * h, *qh = y[i].qh + 32 * h;
            for (int l = 0; l < 32; l++) {
                ql[l] = (uint8_t)((p[l] & 0xF) | ((p[l + 64] & 0xF) << 4));
                ql[l + 32] = (uint8_t)((p[l + 32] & 0xF) | ((p[l + 96] & 0xF) << 4));
                qh[l] = (uint8_t)((p[l] >> 4) | ((p[l + 32] >> 4) << 2) | ((p[l + 64] >> 4) << 4) |
                                  ((p[l + 96] >> 4) << 6));
            }
        }
    }
}

void speck_quant_q8_k_ref(const float *x, speck_block_q8_k *y, int64_t n) {
    for (int64_t i = 0; i < n / QKK; i++, x += QKK) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < QKK; j++)
            if (fabsf(x[j]) > amax) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        if (amax == 0.0f) {
            memset(&y[i], 0, sizeof y[i]);
            continue;
        }
        // -127 rather than -128: the value of largest magnitude lands on -127, so every level
        // fits |q| <= 127 and a sign flip of q stays in range.
        const float is = -127.f / max;
        for (int j = 0; j < QKK; j++) {
            const int v = speck_nearest_int(is * x[j]);
            y[i].qs[j] = (int8_t)(v < 127 ? v : 127);
        }
        for (int j = 0; j < 16; j++) {
            int s = 0;
            for (int l = 0; l < 16; l++) s += y[i].qs[16 * j + l];
            y[i].bsums[j] = (int16_t)s;
        }
        y[i].d = 1 / is;
    }
}

/* ---- dots against Q8_K activations --------------------------------------------------------- */

// sum over e of L[e] * q_a[e] within each group of `sub` values (n_groups of them) times the
// group's scale sc[g]: the super-block's integer sum.
static int32_t scaled_isum(const int8_t *L, const int8_t *qa, const int *sc, int n_groups,
                           int sub) {
    int32_t sumi = 0;
    for (int g = 0; g < n_groups; g++) {
        int32_t s = 0;
        for (int l = 0; l < sub; l++) s += L[sub * g + l] * qa[sub * g + l];
        sumi += sc[g] * s;
    }
    return sumi;
}

float speck_dot_q2_k_ref(const void *w, const void *a, int64_t n) {
    const speck_block_q2_k *x = w;
    const speck_block_q8_k *y = a;
    float acc = 0.0f;
    for (int64_t i = 0; i < n / QKK; i++) {
        uint8_t u[QKK];
        int8_t L[QKK];
        int sc[16];
        int32_t summ = 0;
        levels_2bit(x[i].qs, u);
        for (int e = 0; e < QKK; e++) L[e] = (int8_t)u[e];
        for (int j = 0; j < 16; j++) {
            sc[j] = x[i].scales[j] & 0xF;
            summ += (x[i].scales[j] >> 4) * y[i].bsums[j];
        }
        const int32_t sumi = scaled_isum(L, y[i].qs, sc, 16, 16);
        acc += (h2f(x[i].d) * y[i].d) * (float)sumi - (h2f(x[i].dmin) * y[i].d) * (float)summ;
    }
    return acc;
}

float speck_dot_q3_k_ref(const void *w, const void *a, int64_t n) {
    const speck_block_q3_k *x = w;
    const speck_block_q8_k *y = a;
    float acc = 0.0f;
    for (int64_t i = 0; i < n / QKK; i++) {
        int8_t L[QKK];
        int sc[16];
        levels_q3k(x + i, L);
        for (int j = 0; j < 16; j++) sc[j] = speck_q3k_scale(x[i].scales, j) - 32;
        const int32_t sumi = scaled_isum(L, y[i].qs, sc, 16, 16);
        acc += (h2f(x[i].d) * y[i].d) * (float)sumi;
    }
    return acc;
}

// Q4_K / Q5_K: levels L, stored header (d, dmin, scales) of one super-block against y.
static float dot_q45k_block(uint16_t hd, uint16_t hdmin, const uint8_t *scales, const uint8_t *u,
                            const speck_block_q8_k *y) {
    int8_t L[QKK];
    int sc[8];
    int32_t summ = 0;
    for (int e = 0; e < QKK; e++) L[e] = (int8_t)u[e];
    for (int j = 0; j < 8; j++) {
        uint8_t s, m;
        speck_k4_scale_min(scales, j, &s, &m);
        sc[j] = s;
        summ += m * (y->bsums[2 * j] + y->bsums[2 * j + 1]);
    }
    const int32_t sumi = scaled_isum(L, y->qs, sc, 8, 32);
    return (h2f(hd) * y->d) * (float)sumi - (h2f(hdmin) * y->d) * (float)summ;
}

float speck_dot_q4_k_ref(const void *w, const void *a, int64_t n) {
    const speck_block_q4_k *x = w;
    const speck_block_q8_k *y = a;
    float acc = 0.0f;
    for (int64_t i = 0; i < n / QKK; i++) {
        uint8_t u[QKK];
        levels_q45k(x[i].qs, NULL, u);
        acc += dot_q45k_block(x[i].d, x[i].dmin, x[i].scales, u, y + i);
    }
    return acc;
}

float speck_dot_q5_k_ref(const void *w, const void *a, int64_t n) {
    const speck_block_q5_k *x = w;
    const speck_block_q8_k *y = a;
    float acc = 0.0f;
    for (int64_t i = 0; i < n / QKK; i++) {
        uint8_t u[QKK];
        levels_q45k(x[i].qs, x[i].qh, u);
        acc += dot_q45k_block(x[i].d, x[i].dmin, x[i].scales, u, y + i);
    }
    return acc;
}

float speck_dot_q6_k_ref(const void *w, const void *a, int64_t n) {
    const speck_block_q6_k *x = w;
    const speck_block_q8_k *y = a;
    float acc = 0.0f;
    for (int64_t i = 0; i < n / QKK; i++) {
        int8_t L[QKK];
        int sc[16];
        levels_q6k(x + i, L);
        for (int j = 0; j < 16; j++) sc[j] = x[i].scales[j];
        const int32_t sumi = scaled_isum(L, y[i].qs, sc, 16, 16);
        acc += (h2f(x[i].d) * y[i].d) * (float)sumi;
    }
    return acc;
}
