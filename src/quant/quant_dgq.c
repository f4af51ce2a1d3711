// DGQ4, Dual-Grained Quantization (Zhang et al. 2023, arXiv 2310.04836): 4-bit weights in fine
// groups with integer group scales under one coarse float scale, so that a dot with int8
// activations accumulates a whole super-block in integers; quantized by the paper's two-phase
// grid search. speck's own type (id 101): llama.cpp cannot load it.
//
// Layout (quant.h): { fp16 d; i8 sc[8]; u8 qs[128]; } 138 bytes per 256 values (4.31 bits per
// weight); element 64c + l (l < 32) is the low nibble of qs[32c + l], element 64c + 32 + l its
// high nibble (Q4_K's order); x = d * (sc[e / 32] * (q - 8)), q 0..15, sc -127..127.
//
// The paper keeps the coarse scale per output channel; here it is per 256 values, as every
// speck block type is self-contained (kernels, panels, fallbacks and the GGUF size rules work in
// blocks): 2 bytes per 256 weights, and a finer coarse grain than the paper's. The paper's levels
// are unsigned with an integer zero point per group; a variant with one (4-bit, 142 bytes, 4.44
// bits per weight) measured no better on the default model (KL divergence 0.0153 against this
// layout's 0.0152 at 4.31 bits; docs/quantization.md), so the levels are symmetric.
#include <math.h>
#include <string.h>

#include "quant/quant.h"
#include "quant/quant_search.h"

#define QKK SPECK_QK_K
#define NG 8  // groups per super-block
#define GS 32 // values per group

static inline float h2f(uint16_t h) {
    return speck_fp16_to_fp32(h);
}

static inline int clampi(int v, int lo, int hi) {
    return v < lo ? lo : v > hi ? hi : v;
}

// Element e's level (0..15) of a block.
static void levels(const speck_block_dgq4 *b, uint8_t L[QKK]) {
    for (int c = 0; c < 4; c++)
        for (int l = 0; l < 32; l++) {
            L[64 * c + l] = b->qs[32 * c + l] & 0xF;
            L[64 * c + 32 + l] = b->qs[32 * c + l] >> 4;
        }
}

void speck_dequant_dgq4(const void *x, float *y, int64_t n) {
    const speck_block_dgq4 *b = x;
    for (int64_t i = 0; i < n / QKK; i++, y += QKK) {
        uint8_t L[QKK];
        levels(&b[i], L);
        const float d = h2f(b[i].d);
        // Exact in float32 (11 + 7 + 4 significant bits), so the order of the products does not
        // matter, except for the sign of a zero: (d * sc) * (q - 8), as the other block types.
        for (int e = 0; e < QKK; e++) y[e] = (d * (float)b[i].sc[e / GS]) * (float)(L[e] - 8);
    }
}

float speck_dot_dgq4_ref(const void *w, const void *a, int64_t n) {
    const speck_block_dgq4 *x = w;
    const speck_block_q8_k *y = a;
    float acc = 0.0f;
    for (int64_t i = 0; i < n / QKK; i++) {
        uint8_t L[QKK];
        levels(&x[i], L);
        int32_t sumi = 0;
        for (int g = 0; g < NG; g++) {
            int32_t s = 0;
            for (int l = 0; l < GS; l++) s += (L[GS * g + l] - 8) * y[i].qs[GS * g + l];
            sumi += x[i].sc[g] * s;
        }
        acc += (h2f(x[i].d) * y[i].d) * (float)sumi;
    }
    return acc;
}

// The weighted squared error of group x (GS values, weights w) at step s, and its levels.
static float group_err(const float *x, const float *w, float s, uint8_t *L) {
    float e = 0.0f;
    for (int l = 0; l < GS; l++) {
        const int q = s != 0.0f ? clampi(speck_nearest_int(x[l] / s), -8, 7) : 0;
        const float r = x[l] - s * (float)q;
        e += w[l] * r * r;
        if (L) L[l] = (uint8_t)(q + 8);
    }
    return e;
}

// Candidate coarse scales of phase 2, as fractions of the largest group scale / 127: the top
// group's integer scale runs from 127 down to ~89, trading its resolution for the others'.
#define N_COARSE 16

void speck_quant_dgq4(const float *x, void *vy, int64_t n, const float *imp) {
    speck_block_dgq4 *y = vy;
    for (int64_t i = 0; i < n / QKK; i++, x += QKK) {
        // Weights of the error: the importance (imatrix) when given, else x^2 plus the block's
        // mean square (llama.cpp's K-quant weighting: large values matter more, none is free).
        float w[QKK], sigma2 = 0.0f;
        for (int e = 0; e < QKK; e++) sigma2 += x[e] * x[e];
        sigma2 /= QKK;
        for (int e = 0; e < QKK; e++) w[e] = imp ? imp[QKK * i + e] : sigma2 + x[e] * x[e];
        // Phase 1: each group's own float scale (19-candidate weighted least squares).
        float S[NG], amax = 0.0f;
        for (int g = 0; g < NG; g++) {
            int8_t Lg[GS];
            S[g] = speck_make_qx(GS, 8, x + GS * g, Lg, 1, w + GS * g);
            amax = fmaxf(amax, fabsf(S[g]));
        }
        memset(&y[i], 0, sizeof y[i]);
        if (amax < 1e-15f) continue;
        // Phase 2: the coarse scale d over a grid; each group takes the integer scale (round of
        // S / d, or one step either side) that minimises its error under d, its levels re-rounded.
        float best = INFINITY;
        for (int k = 0; k < N_COARSE; k++) {
            const uint16_t dh = speck_fp32_to_fp16(amax / (127.0f - 2.5f * (float)k));
            const float d = h2f(dh);
            if (d == 0.0f) continue;
            int8_t sc[NG];
            float err = 0.0f;
            for (int g = 0; g < NG && err < best; g++) {
                const int r = speck_nearest_int(S[g] / d);
                float eg = INFINITY;
                for (int c = r - 1; c <= r + 1; c++) {
                    const int cs = clampi(c, -127, 127);
                    const float ec = group_err(x + GS * g, w + GS * g, d * (float)cs, NULL);
                    if (ec < eg) eg = ec, sc[g] = (int8_t)cs;
                }
                err += eg;
            }
            if (err < best) {
                best = err;
                y[i].d = dh;
                memcpy(y[i].sc, sc, sizeof sc);
            }
        }
        const float d = h2f(y[i].d);
        uint8_t L[QKK];
        for (int g = 0; g < NG; g++)
            group_err(x + GS * g, w + GS * g, d * (float)y[i].sc[g], L + GS * g);
        for (int c = 0; c < 4; c++)
            for (int l = 0; l < 32; l++)
                y[i].qs[32 * c + l] = (uint8_t)(L[64 * c + l] | (L[64 * c + 32 + l] << 4));
    }
}
