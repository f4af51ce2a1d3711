// Block types beyond Q8_0 / Q4_0: layouts, reference (de)quantizers and scalar dots.
//
// Every layout is byte-identical to ggml's, so GGUF tensors are used in place. "q" below is the
// stored integer, d / m / dmin fp16 scales widened to f32, K the IQ4 grid (speck_iq4_values).
//
// 32 values per block, nibble j of qs = element j (low nibble) and element j + 16 (high nibble):
//   Q4_1   { fp16 d, m; u8 qs[16]; }               20 B   x = d * q + m,         q 0..15
//   Q5_0   { fp16 d; u8 qh[4]; u8 qs[16]; }       22 B   x = d * (q - 16),      q 0..31
//   Q5_1   { fp16 d, m; u8 qh[4]; u8 qs[16]; }    24 B   x = d * q + m,         q 0..31
//          (bit 4 of element j's q is bit j of the little-endian u32 qh)
//   IQ4_NL { fp16 d; u8 qs[16]; }                 18 B   x = d * K[q]
// 256 values per super-block (the K-quants and IQ4_XS), in sub-blocks with their own scales:
//   Q2_K   { u8 scales[16]; u8 qs[64]; fp16 d, dmin; }                               84 B
//          16 x 16 values, scales[j] = sc | m << 4 (4 bits each); x = d*sc*q - dmin*m, q 0..3.
//          Element 128h + 32s + l (h 0..1, s 0..3, l 0..31) is bits 2s..2s+1 of qs[32h + l]
//          (sub-block 8h + 2s + l / 16).
//   Q3_K   { u8 hmask[32]; u8 qs[64]; u8 scales[12]; fp16 d; }                      110 B
//          16 x 16 values, 6-bit scales sc (stored + 32): the low 4 bits of scale j are the
//          low (j < 8) or high (j >= 8) nibble of scales[j % 8], the top 2 bits are bits
//          2(j / 4) .. of scales[8 + j % 4]. Low 2 bits of q as in Q2_K; element 128h + 32s + l
//          has its third bit in bit 4h + s of hmask[l], q = low2 - (bit ? 0 : 4) in -4..3;
//          x = d * (sc - 32) * q.
//   Q4_K   { fp16 d, dmin; u8 scales[12]; u8 qs[128]; }                             144 B
//          8 x 32 values, 6-bit sc and m (speck_k4_scale_min); element 64c + l is the low
//          nibble of qs[32c + l] (sub-block 2c), element 64c + 32 + l its high nibble
//          (sub-block 2c + 1); x = d*sc*q - dmin*m.
//   Q5_K   { fp16 d, dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]; }                  176 B
//          as Q4_K, plus bit 4 of q: element 64c + l in bit 2c of qh[l], 64c + 32 + l in bit
//          2c + 1.
//   Q6_K   { u8 ql[128]; u8 qh[64]; i8 scales[16]; fp16 d; }                        210 B
//          16 x 16 values, x = d * sc * (q - 32), q 0..63. Half h (128 values), l 0..31:
//          elements 128h + l, +32, +64, +96 are the low nibbles of ql[64h + l], ql[64h + 32 + l]
//          and the high nibbles of the same two bytes, with bits 4..5 from bits 0-1, 2-3, 4-5,
//          6-7 of qh[32h + l]; element e's scale is scales[e / 16].
//   IQ4_XS { fp16 d; u16 scales_h; u8 scales_l[4]; u8 qs[128]; }                    136 B
//          8 x 32 values with 6-bit scales ls (low 4 bits: nibble j % 2 of scales_l[j / 2], top
//          2 bits: bits 2j.. of scales_h); x = d * (ls - 32) * K[q], nibbles as IQ4_NL per 32.
// Activations for the 256-value types (never stored in files by speck):
//   Q8_K   { f32 d; i8 qs[256]; i16 bsums[16]; }  292 B  x = d * q; bsums: sums of 16 q.
//
// Every dequantized value is the exact product of its integer factors and fp16 scales, with at
// most one rounding (the subtraction of a min), so the result does not depend on the order of
// the operations or on fused multiply-adds.
//
// Dots (weight row . activation row, n values). The activations are Q8_0 blocks for the
// 32-value types and Q8_K blocks for the 256-value ones. Per scale group (a 32-value block, or a
// 256-value super-block) the integer sums are exact (int32); the group's contribution is then
//   32-value:  c = (d_w * d_a) * (float)isum [+ m_w * s_a]        s_a = d_a * (float)sum(q_a)
//   256-value: c = (d_w * d_a) * (float)sumi [- (dmin_w * d_a) * (float)summ]
// with each product rounded separately (no fused multiply-add), and the row's result is the sum
// of the contributions in group order from +0.0. Every ISA's kernels compute exactly this, so
// dots are bit-identical across ISAs, tile shapes and token counts.
#ifndef SPECK_QUANT_H
#define SPECK_QUANT_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/kernels.h"

#define SPECK_QK_K 256 // values per super-block

typedef struct {
    uint16_t d, m;
    uint8_t qs[16];
} speck_block_q4_1;
typedef struct {
    uint16_t d;
    uint8_t qh[4];
    uint8_t qs[16];
} speck_block_q5_0;
typedef struct {
    uint16_t d, m;
    uint8_t qh[4];
    uint8_t qs[16];
} speck_block_q5_1;
typedef struct {
    uint16_t d;
    uint8_t qs[16];
} speck_block_iq4_nl;
typedef struct {
    uint8_t scales[16];
    uint8_t qs[64];
    uint16_t d, dmin;
} speck_block_q2_k;
typedef struct {
    uint8_t hmask[32];
    uint8_t qs[64];
    uint8_t scales[12];
    uint16_t d;
} speck_block_q3_k;
typedef struct {
    uint16_t d, dmin;
    uint8_t scales[12];
    uint8_t qs[128];
} speck_block_q4_k;
typedef struct {
    uint16_t d, dmin;
    uint8_t scales[12];
    uint8_t qh[32];
    uint8_t qs[128];
} speck_block_q5_k;
typedef struct {
    uint8_t ql[128];
    uint8_t qh[64];
    int8_t scales[16];
    uint16_t d;
} speck_block_q6_k;
typedef struct {
    uint16_t d;
    uint16_t scales_h;
    uint8_t scales_l[4];
    uint8_t qs[128];
} speck_block_iq4_xs;
typedef struct {
    float d;
    int8_t qs[SPECK_QK_K];
    int16_t bsums[SPECK_QK_K / 16];
} speck_block_q8_k;

// S24_Q8 (src/sparse/s24_q8.c): 32 weights in 2:4 pattern, 16 kept. qs[k] is kept value k
// (int8, value d * qs[k]) of group k / 2 (inputs 4 (k / 2) .. + 3); bits 2k, 2k + 1 of the
// little-endian u32 idx hold its position in the group (kept values of a group in increasing
// position order).
typedef struct {
    uint16_t d;
    int8_t qs[16];
    uint8_t idx[4];
} speck_block_s24_q8;
_Static_assert(sizeof(speck_block_s24_q8) == 22, "S24_Q8 block");

// DGQ4 (src/quant/quant_dgq.c): 8 groups of 32 values, x = d * (sc[e / 32] * (q - 8)), q 0..15
// in Q4_K's nibble order (element 64c + l low nibble of qs[32c + l], 64c + 32 + l high).
typedef struct {
    uint16_t d;
    int8_t sc[8];
    uint8_t qs[128];
} speck_block_dgq4;
_Static_assert(sizeof(speck_block_dgq4) == 138, "DGQ4 block");

_Static_assert(sizeof(speck_block_q4_1) == 20, "Q4_1 block");
_Static_assert(sizeof(speck_block_q5_0) == 22, "Q5_0 block");
_Static_assert(sizeof(speck_block_q5_1) == 24, "Q5_1 block");
_Static_assert(sizeof(speck_block_iq4_nl) == 18, "IQ4_NL block");
_Static_assert(sizeof(speck_block_q2_k) == 84, "Q2_K block");
_Static_assert(sizeof(speck_block_q3_k) == 110, "Q3_K block");
_Static_assert(sizeof(speck_block_q4_k) == 144, "Q4_K block");
_Static_assert(sizeof(speck_block_q5_k) == 176, "Q5_K block");
_Static_assert(sizeof(speck_block_q6_k) == 210, "Q6_K block");
_Static_assert(sizeof(speck_block_iq4_xs) == 136, "IQ4_XS block");
_Static_assert(sizeof(speck_block_q8_k) == 292, "Q8_K block");

// The 16 values of the IQ4_NL / IQ4_XS grid.
extern const int8_t speck_iq4_values[16];

// Sub-block j (0..7) scale and min of a Q4_K / Q5_K super-block's 12 scale bytes: j < 4 in the
// low 6 bits of bytes j and j + 4; j >= 4 in the nibbles of byte j + 4 with their top 2 bits in
// the top bits of bytes j - 4 and j.
static inline void speck_k4_scale_min(const uint8_t *s, int j, uint8_t *sc, uint8_t *m) {
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (uint8_t)((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4));
        *m = (uint8_t)((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
    }
}

// Scale j (0..15) of a Q3_K super-block, stored + 32 (0..63).
static inline int speck_q3k_scale(const uint8_t *s, int j) {
    const int lo = j < 8 ? s[j] & 0xF : s[j - 8] >> 4;
    return lo | (((s[8 + j % 4] >> (2 * (j / 4))) & 3) << 4);
}

// Scale j (0..7) of an IQ4_XS super-block, stored + 32 (0..63).
static inline int speck_iq4xs_scale(const speck_block_iq4_xs *b, int j) {
    return ((b->scales_l[j / 2] >> (4 * (j % 2))) & 0xF) | (((b->scales_h >> (2 * j)) & 3) << 4);
}

// --- reference dequantization: x: n / block-size blocks -> y: (n) ---------------------------
void speck_dequant_q4_1(const void *x, float *y, int64_t n);
void speck_dequant_q5_0(const void *x, float *y, int64_t n);
void speck_dequant_q5_1(const void *x, float *y, int64_t n);
void speck_dequant_iq4_nl(const void *x, float *y, int64_t n);
void speck_dequant_q2_k(const void *x, float *y, int64_t n);
void speck_dequant_q3_k(const void *x, float *y, int64_t n);
void speck_dequant_q4_k(const void *x, float *y, int64_t n);
void speck_dequant_q5_k(const void *x, float *y, int64_t n);
void speck_dequant_q6_k(const void *x, float *y, int64_t n);
void speck_dequant_iq4_xs(const void *x, float *y, int64_t n);
void speck_dequant_q8_k(const void *x, float *y, int64_t n);

// --- reference quantizers: x: (n) -> y: n / block-size blocks --------------------------------
// The algorithms of llama.cpp's llama-quantize, so a file speck writes holds the bytes
// llama-quantize would write for the same floats. imp: per-value importance weights (n; an
// imatrix row's column weights) or NULL. Without them Q4_0 / Q4_1 / Q5_0 / Q5_1 round to the
// nearest level of a min/max scale, the K-quants search scales (and mins) per sub-block and
// then quantize those scales ("_ref" in ggml); IQ4_NL / IQ4_XS search the grid scale. With imp
// every type weights its search by imp * sqrt(sigma^2 + x^2) (ggml's "_impl" quantizers).
void speck_quant_q4_0(const float *x, void *y, int64_t n, const float *imp);
void speck_quant_q4_1(const float *x, void *y, int64_t n, const float *imp);
void speck_quant_q5_0(const float *x, void *y, int64_t n, const float *imp);
void speck_quant_q5_1(const float *x, void *y, int64_t n, const float *imp);
void speck_quant_iq4_nl(const float *x, void *y, int64_t n, const float *imp);
void speck_quant_q2_k(const float *x, void *y, int64_t n, const float *imp);
void speck_quant_q3_k(const float *x, void *y, int64_t n, const float *imp);
void speck_quant_q4_k(const float *x, void *y, int64_t n, const float *imp);
void speck_quant_q5_k(const float *x, void *y, int64_t n, const float *imp);
void speck_quant_q6_k(const float *x, void *y, int64_t n, const float *imp);
void speck_quant_iq4_xs(const float *x, void *y, int64_t n, const float *imp);
// Q8_0 / Q4_0 without importance weights (src/kernels/kernels_scalar.c).
void speck_quantize_row_q8_0_ref(const float *x, speck_block_q8_0 *y, int64_t n);
void speck_quantize_row_q4_0_ref(const float *x, speck_block_q4_0 *y, int64_t n);
// Activation quantization to Q8_K (d = max / -127 of the value of largest magnitude, q rounded
// to nearest even, bsums): the reference every ISA's version reproduces bit for bit.
void speck_quant_q8_k_ref(const float *x, speck_block_q8_k *y, int64_t n);

// --- reference dots (the contract above): w: weight row, a: activation row ------------------
float speck_dot_q4_1_ref(const void *w, const void *a, int64_t n);
float speck_dot_q5_0_ref(const void *w, const void *a, int64_t n);
float speck_dot_q5_1_ref(const void *w, const void *a, int64_t n);
float speck_dot_iq4_nl_ref(const void *w, const void *a, int64_t n);
float speck_dot_q2_k_ref(const void *w, const void *a, int64_t n);
float speck_dot_q3_k_ref(const void *w, const void *a, int64_t n);
float speck_dot_q4_k_ref(const void *w, const void *a, int64_t n);
float speck_dot_q5_k_ref(const void *w, const void *a, int64_t n);
float speck_dot_q6_k_ref(const void *w, const void *a, int64_t n);
float speck_dot_iq4_xs_ref(const void *w, const void *a, int64_t n);
// S24_Q8 (src/sparse/s24_q8.c): the quantizer keeps the 2 largest |x| of every group of 4 and
// rounds them as Q8_0 rounds the zero-filled row; dequant and the reference dot (Q8_0
// activations, the contract above).
void speck_quant_s24_q8(const float *x, void *y, int64_t n, const float *imp);
void speck_dequant_s24_q8(const void *x, float *y, int64_t n);
float speck_dot_s24_q8_ref(const void *w, const void *a, int64_t n);
// DGQ4 (src/quant/quant_dgq.c): the two-phase grid search (per-group float scales, then the
// coarse scale and the groups' integer scales under it), dequant, reference dot (Q8_K).
void speck_quant_dgq4(const float *x, void *y, int64_t n, const float *imp);
void speck_dequant_dgq4(const void *x, float *y, int64_t n);
float speck_dot_dgq4_ref(const void *w, const void *a, int64_t n);

// --- levels view (src/quant/quant_levels.c), for rounding chosen outside the quantizers -------
// Element e of a block type's row holds value A[e] * g(L[e]) + B[e] (with a min) or
// A[e] * g(L[e]) (without: then B is 0 and not added, which would turn a -0 into +0), bit for
// bit the dequantizer's, where L[e] in [lmin, nlev) is its stored level and g(L) = L - off, or
// grid[L] for the IQ4 types; A and B come from the block's scales.
typedef struct {
    int nlev, lmin, off;
    const int8_t *grid; // NULL: linear levels
    bool has_min;       // Q4_1, Q5_1, Q2_K, Q4_K, Q5_K
} speck_levels_facts;
// The value of level L of an element with scale A and min B.
static inline float speck_levels_value(const speck_levels_facts *li, float A, float B, int L) {
    const float g = li->grid ? (float)li->grid[L] : (float)(L - li->off);
    return li->has_min ? A * g + B : A * g;
}
// 0 and the facts of type t, or -1 for a type without levels (float types).
int speck_levels_info(speck_type t, speck_levels_facts *li);
// For n values (whole blocks) of row y: each element's A, B and level L.
void speck_levels_get(speck_type t, const void *y, int64_t n, float *A, float *B, uint8_t *L);
// Store levels L (n) into the blocks of y, keeping their scales.
void speck_levels_set(speck_type t, void *y, int64_t n, const uint8_t *L);

// --- per-type facts -------------------------------------------------------------------------
typedef struct {
    const char *name;   // "q4_k"; NULL for ids speck does not handle
    int block;          // values per block
    int bytes;          // bytes per block
    int file_type;      // llama.cpp's general.file_type code (LLAMA_FTYPE_MOSTLY_*), -1 if none
    int fallback;       // type llama-quantize uses for rows its block does not divide, -1: f16
    speck_type act;     // activation type of its dots (F32, Q8_0 or Q8_K)
    void (*dequant)(const void *x, float *y, int64_t n);                     // reference
    void (*quant)(const float *x, void *y, int64_t n, const float *imp);     // NULL: none
    float (*dot)(const void *w, const void *a, int64_t n);                   // reference, or NULL
} speck_type_traits;

#define SPECK_TYPE_ID_MAX 128 // type ids below this (ggml numbering; speck's own from 100)
// Facts of type id t, or NULL when speck does not know it.
const speck_type_traits *speck_traits(int t);
// Whether t is one of the new block types (not F32 / F16 / BF16 / Q8_0 / Q4_0).
int speck_type_is_extra(int t);

#endif
