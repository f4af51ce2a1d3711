// The per-type facts table (names, block sizes, llama.cpp codes, reference functions) and the
// public quantization entry point.
#include <string.h>

#include "quant/quant.h"

// Reference conversions of the types that predate src/quant/ (their SIMD versions live in the
// kernel tables; these are the portable semantics).
static void deq_f32(const void *x, float *y, int64_t n) {
    memcpy(y, x, (size_t)n * sizeof(float));
}
static void deq_f16(const void *x, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = speck_fp16_to_fp32(((const uint16_t *)x)[i]);
}
static void deq_bf16(const void *x, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = speck_bf16_to_fp32(((const uint16_t *)x)[i]);
}
static void deq_q8_0(const void *x, float *y, int64_t n) {
    const speck_block_q8_0 *b = x;
    for (int64_t i = 0; i < n / 32; i++)
        for (int j = 0; j < 32; j++) y[32 * i + j] = speck_fp16_to_fp32(b[i].d) * b[i].qs[j];
}
static void deq_q4_0(const void *x, float *y, int64_t n) {
    const speck_block_q4_0 *b = x;
    for (int64_t i = 0; i < n / 32; i++) {
        const float d = speck_fp16_to_fp32(b[i].d);
        for (int j = 0; j < 16; j++) {
            y[32 * i + j] = d * ((b[i].qs[j] & 0xF) - 8);
            y[32 * i + j + 16] = d * ((b[i].qs[j] >> 4) - 8);
        }
    }
}
static void q_f32(const float *x, void *y, int64_t n, const float *imp) {
    (void)imp;
    memcpy(y, x, (size_t)n * sizeof(float));
}
static void q_f16(const float *x, void *y, int64_t n, const float *imp) {
    (void)imp;
    for (int64_t i = 0; i < n; i++) ((uint16_t *)y)[i] = speck_fp32_to_fp16(x[i]);
}
static void q_bf16(const float *x, void *y, int64_t n, const float *imp) {
    (void)imp;
    for (int64_t i = 0; i < n; i++) ((uint16_t *)y)[i] = speck_fp32_to_bf16(x[i]);
}
static void q_q8_0(const float *x, void *y, int64_t n, const float *imp) {
    (void)imp; // Q8_0 rounds each value to nearest: nothing for importance to weigh
    speck_quantize_row_q8_0_ref(x, y, n);
}

#define F SPECK_TYPE_F32
#define Q8 SPECK_TYPE_Q8_0
#define QK8 SPECK_TYPE_Q8_K
static const speck_type_traits g_traits[SPECK_TYPE_ID_MAX] = {
    [SPECK_TYPE_F32] = {"f32", 1, 4, 0, -1, F, deq_f32, q_f32, NULL},
    [SPECK_TYPE_F16] = {"f16", 1, 2, 1, -1, F, deq_f16, q_f16, NULL},
    [SPECK_TYPE_BF16] = {"bf16", 1, 2, 32, -1, F, deq_bf16, q_bf16, NULL},
    [SPECK_TYPE_Q8_0] = {"q8_0", 32, 34, 7, -1, Q8, deq_q8_0, q_q8_0, NULL},
    [SPECK_TYPE_Q4_0] = {"q4_0", 32, 18, 2, -1, Q8, deq_q4_0, speck_quant_q4_0, NULL},
    [SPECK_TYPE_Q4_1] = {"q4_1", 32, 20, 3, -1, Q8, speck_dequant_q4_1, speck_quant_q4_1,
                         speck_dot_q4_1_ref},
    [SPECK_TYPE_Q5_0] = {"q5_0", 32, 22, 8, -1, Q8, speck_dequant_q5_0, speck_quant_q5_0,
                         speck_dot_q5_0_ref},
    [SPECK_TYPE_Q5_1] = {"q5_1", 32, 24, 9, -1, Q8, speck_dequant_q5_1, speck_quant_q5_1,
                         speck_dot_q5_1_ref},
    [SPECK_TYPE_IQ4_NL] = {"iq4_nl", 32, 18, 25, -1, Q8, speck_dequant_iq4_nl, speck_quant_iq4_nl,
                           speck_dot_iq4_nl_ref},
    // The K-quants' file_type codes are llama.cpp's "_S"/plain mixes' (Q3_K_S, Q4_K_S, Q5_K_S):
    // every matrix in the one type. Fallbacks are llama-quantize's for rows the 256-value
    // super-block does not divide.
    [SPECK_TYPE_Q2_K] = {"q2_k", 256, 84, 10, SPECK_TYPE_Q4_0, QK8, speck_dequant_q2_k,
                         speck_quant_q2_k, speck_dot_q2_k_ref},
    [SPECK_TYPE_Q3_K] = {"q3_k", 256, 110, 11, SPECK_TYPE_Q4_0, QK8, speck_dequant_q3_k,
                         speck_quant_q3_k, speck_dot_q3_k_ref},
    [SPECK_TYPE_Q4_K] = {"q4_k", 256, 144, 14, SPECK_TYPE_Q5_0, QK8, speck_dequant_q4_k,
                         speck_quant_q4_k, speck_dot_q4_k_ref},
    [SPECK_TYPE_Q5_K] = {"q5_k", 256, 176, 16, SPECK_TYPE_Q5_1, QK8, speck_dequant_q5_k,
                         speck_quant_q5_k, speck_dot_q5_k_ref},
    [SPECK_TYPE_Q6_K] = {"q6_k", 256, 210, 18, SPECK_TYPE_Q8_0, QK8, speck_dequant_q6_k,
                         speck_quant_q6_k, speck_dot_q6_k_ref},
    [SPECK_TYPE_IQ4_XS] = {"iq4_xs", 256, 136, 30, SPECK_TYPE_IQ4_NL, QK8, speck_dequant_iq4_xs,
                           speck_quant_iq4_xs, speck_dot_iq4_xs_ref},
    // speck's 2:4 sparse type (src/sparse/): no llama.cpp file type; rows of other lengths: f16.
    [SPECK_TYPE_S24_Q8] = {"s24_q8", 32, 22, -1, -1, Q8, speck_dequant_s24_q8, speck_quant_s24_q8,
                           speck_dot_s24_q8_ref},
    // speck's Dual-Grained Quantization type: no llama.cpp file type; other rows: Q5_0 (as Q4_K).
    [SPECK_TYPE_DGQ4] = {"dgq4", 256, 138, -1, SPECK_TYPE_Q5_0, QK8, speck_dequant_dgq4,
                         speck_quant_dgq4, speck_dot_dgq4_ref},
    // Activations only: not a storage type (no name, so no file or command takes it).
    [SPECK_TYPE_Q8_K] = {NULL, 256, 292, -1, -1, F, speck_dequant_q8_k, NULL, NULL},
};
#undef F
#undef Q8
#undef QK8

const speck_type_traits *speck_traits(int t) {
    if (t < 0 || t >= SPECK_TYPE_ID_MAX || !g_traits[t].block) return NULL;
    return &g_traits[t];
}

int speck_type_is_extra(int t) {
    const speck_type_traits *tr = speck_traits(t);
    return tr && tr->dot != NULL;
}

int speck_quantize(speck_type t, const float *x, void *y, int64_t nrow, int64_t n_per_row,
                   const float *imp) {
    const speck_type_traits *tr = speck_traits(t);
    if (!tr || !tr->name || !tr->quant)
        return speck_set_error(SPECK_ERR_ARG, "quantize: type %d cannot be written", (int)t);
    if (nrow < 0 || n_per_row <= 0 || n_per_row % tr->block)
        return speck_set_error(SPECK_ERR_ARG,
                               "quantize: %s needs rows of a multiple of %d values (got %lld)",
                               tr->name, tr->block, (long long)n_per_row);
    const size_t rs = speck_type_row_size(t, n_per_row);
#pragma omp parallel for schedule(static) if (nrow > 1 && nrow * n_per_row >= (1 << 16))
    for (int64_t r = 0; r < nrow; r++)
        tr->quant(x + r * n_per_row, (char *)y + (size_t)r * rs, n_per_row, imp);
    return 0;
}

speck_type speck_type_for_row(speck_type t, int64_t n_per_row) {
    int cur = (int)t;
    for (const speck_type_traits *tr = speck_traits(cur); tr && n_per_row % tr->block;
         tr = speck_traits(cur))
        cur = tr->fallback >= 0 ? tr->fallback : SPECK_TYPE_F16;
    return (speck_type)cur;
}
