// The src/quant/ block types' row kernels, dequantization and Q8_K activation quantization on
// AVX2 (+ FMA, F16C): quant_rows.h's bodies compiled for this ISA (with -ffp-contract=off, see there).
#include "kernels/quant_rows.h"

QR_DEFINE_KERNELS(avx2)

const speck_qt_kernels speck_qt_avx2[SPECK_TYPE_ID_MAX] = {QR_TABLE(avx2)};

void speck_quantize_q8_k_avx2(const float *x, speck_block_q8_k *y, int64_t n) {
    qr_quantize_q8_k(x, y, n);
}
