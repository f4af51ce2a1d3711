// Private to src/kernels/: the per-ISA kernel table the dispatcher fills and the entry points of
// each ISA file. Nothing outside src/kernels/ includes this.
#ifndef SPECK_KERNELS_INTERNAL_H
#define SPECK_KERNELS_INTERNAL_H

#include "kernels/kernels.h"

// Most activation rows a multi-token kernel handles per call (matmul tiles tokens by this).
#define SPECK_MT 4

typedef struct {
    const char *name;
    // One weight row · one activation row; n values (a multiple of 32 for Q types).
    float (*dot_f32)(const float *w, const float *x, int64_t n);
    float (*dot_f16)(const uint16_t *w, const float *x, int64_t n);
    float (*dot_bf16)(const uint16_t *w, const float *x, int64_t n);
    float (*dot_q8_0)(const speck_block_q8_0 *w, const speck_block_q8_0 *x, int64_t n);
    float (*dot_q4_0)(const speck_block_q4_0 *w, const speck_block_q8_0 *x, int64_t n);
    // One weight row · nt (1..SPECK_MT) activation rows: x holds nt rows, row r starting at
    // x + r * x_stride blocks; out: (nt). Weights are unpacked once for all rows. NULL: the
    // matmul falls back to nt single dots.
    void (*dot_q4_0_mt)(const speck_block_q4_0 *w, const speck_block_q8_0 *x, int64_t x_stride,
                        int nt, int64_t n, float *out);
    void (*dot_q8_0_mt)(const speck_block_q8_0 *w, const speck_block_q8_0 *x, int64_t x_stride,
                        int nt, int64_t n, float *out);
    // Activation quantization (must be bit-identical across ISAs) and row conversions.
    void (*quantize_q8_0)(const float *x, speck_block_q8_0 *y, int64_t n);
    void (*f16_to_f32)(const uint16_t *x, float *y, int64_t n);
    void (*bf16_to_f32)(const uint16_t *x, float *y, int64_t n);
    void (*q8_0_to_f32)(const speck_block_q8_0 *x, float *y, int64_t n);
    void (*q4_0_to_f32)(const speck_block_q4_0 *x, float *y, int64_t n);
} speck_kernel_table;

// The table in use (chosen once; see dispatch.c).
const speck_kernel_table *speck_kernels_get(void);

// Per-ISA tables. The AVX ones are only dereferenced after the CPU check passes.
extern const speck_kernel_table speck_kernels_scalar;
extern const speck_kernel_table speck_kernels_avx2;
extern const speck_kernel_table speck_kernels_avx512;

// Scalar row helpers shared by all ISAs (the reference semantics).
void speck_quantize_row_q8_0_ref(const float *x, speck_block_q8_0 *y, int64_t n);
void speck_quantize_row_q4_0_ref(const float *x, speck_block_q4_0 *y, int64_t n);

#endif
