// The src/quant/ block types' row kernels, dequantization and Q8_K activation quantization on
// AVX-512 (F/BW/VL/VNNI): quant_rows.h's bodies compiled for this ISA (with -ffp-contract=off,
// see there), and the table of the block types' kernels including the panel kernels of
// panel_k_avx512.c.
#include "kernels/quant_rows.h"

QR_DEFINE_KERNELS(avx512)

// Panel calls take 4 panels x 1 token, 2 x 2, 2 x 3 or 1 x 4, from separate parts of a thread's
// row range (as Q4_0's: each of a call's weight streams runs on through its part).
// They beat dequantize + sgemm on large batches too (panel_prefill).
#define PANELS(FN)                                                                                 \
    .panel = FN, .panel_tokens = 4, .panel_group = {0, 4, 2, 2, 1}, .panel_spread = 1,             \
    .panel_prefill = 1

const speck_qt_kernels speck_qt_avx512[SPECK_TYPE_ID_MAX] = {
    [SPECK_TYPE_Q2_K] = {QR_ENTRY_K(q2_k, avx512), PANELS(speck_panel_q2_k_avx512)},
    [SPECK_TYPE_Q3_K] = {QR_ENTRY_K(q3_k, avx512), PANELS(speck_panel_q3_k_avx512)},
    [SPECK_TYPE_Q4_K] = {QR_ENTRY_K(q4_k, avx512), PANELS(speck_panel_q4_k_avx512)},
    [SPECK_TYPE_Q5_K] = {QR_ENTRY_K(q5_k, avx512), PANELS(speck_panel_q5_k_avx512)},
    [SPECK_TYPE_Q6_K] = {QR_ENTRY_K(q6_k, avx512), PANELS(speck_panel_q6_k_avx512)},
    [SPECK_TYPE_DGQ4] = {QR_ENTRY_K(dgq4, avx512), PANELS(speck_panel_dgq4_avx512)},
    [SPECK_TYPE_IQ4_XS] = {QR_ENTRY_K(iq4_xs, avx512), PANELS(speck_panel_iq4_xs_avx512)},
    [SPECK_TYPE_Q4_1] = {QR_ENTRY_32(q4_1, avx512), PANELS(speck_panel_q4_1_avx512)},
    [SPECK_TYPE_Q5_0] = {QR_ENTRY_32(q5_0, avx512), PANELS(speck_panel_q5_0_avx512)},
    [SPECK_TYPE_Q5_1] = {QR_ENTRY_32(q5_1, avx512), PANELS(speck_panel_q5_1_avx512)},
    [SPECK_TYPE_IQ4_NL] = {QR_ENTRY_32(iq4_nl, avx512), PANELS(speck_panel_iq4_nl_avx512)},
    // The panel kernel needs VBMI too: dispatch.c clears it on AVX-512 CPUs without (the row
    // kernel, which takes every batch, runs there).
    [SPECK_TYPE_S24_Q8] = {.mm = speck_mm_s24_q8_avx512, .rows_prefill = 1,
                           PANELS(speck_panel_s24_q8_avx512)},
};

void speck_quantize_q8_k_avx512(const float *x, speck_block_q8_k *y, int64_t n) {
    qr_quantize_q8_k(x, y, n);
}
