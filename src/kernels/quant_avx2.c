// The src/quant/ block types' row kernels, dequantization and Q8_K activation quantization on
// AVX2 (+ FMA, F16C): quant_rows.h's bodies compiled for this ISA (with -ffp-contract=off, see
// there).
#include "kernels/quant_rows.h"

QR_DEFINE_KERNELS(avx2)

// Panel calls (panel_k_avx2.c) take 2 panels x 1 token (from separate parts of a thread's rows)
// or 1 x 2. Prefill: Q4_K's beat dequantize + sgemm (bench_kernels 2 avx2, 512 tokens: 76-89 vs
// 57-74 GFLOP/s), Q6_K's do not (44-51 vs 56).
#define PANELS(FN, PREFILL)                                                                        \
    .panel = FN, .panel_tokens = 2, .panel_group = {0, 2, 1}, .panel_spread = 1,                   \
    .panel_prefill = PREFILL

const speck_qt_kernels speck_qt_avx2[SPECK_TYPE_ID_MAX] = {
    [SPECK_TYPE_Q2_K] = {QR_ENTRY_K(q2_k, avx2)},
    [SPECK_TYPE_Q3_K] = {QR_ENTRY_K(q3_k, avx2)},
    [SPECK_TYPE_Q4_K] = {QR_ENTRY_K(q4_k, avx2), PANELS(speck_panel_q4_k_avx2, 1)},
    [SPECK_TYPE_Q5_K] = {QR_ENTRY_K(q5_k, avx2)},
    [SPECK_TYPE_Q6_K] = {QR_ENTRY_K(q6_k, avx2), PANELS(speck_panel_q6_k_avx2, 0)},
    [SPECK_TYPE_DGQ4] = {QR_ENTRY_K(dgq4, avx2)},
    [SPECK_TYPE_IQ4_XS] = {QR_ENTRY_K(iq4_xs, avx2)},
    [SPECK_TYPE_Q4_1] = {QR_ENTRY_32(q4_1, avx2)},    [SPECK_TYPE_Q5_0] = {QR_ENTRY_32(q5_0, avx2)},
    [SPECK_TYPE_Q5_1] = {QR_ENTRY_32(q5_1, avx2)},    [SPECK_TYPE_IQ4_NL] = {QR_ENTRY_32(iq4_nl, avx2)},
    [SPECK_TYPE_S24_Q8] = {.mm = speck_mm_s24_q8_avx2, PANELS(speck_panel_s24_q8_avx2, 0)},
};

void speck_quantize_q8_k_avx2(const float *x, speck_block_q8_k *y, int64_t n) {
    qr_quantize_q8_k(x, y, n);
}
