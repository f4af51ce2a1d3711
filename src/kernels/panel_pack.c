// Panel layouts of the src/quant/ block types: 16 rows' blocks interleaved so that one 64-byte
// load holds the same few bytes of every row (a row per 4-byte lane), which the panel kernels
// multiply by broadcast activations with no horizontal sums. The bytes are the rows' own,
// reordered: a panel block is 16 * the type's block bytes, and unpacking gives the rows back.
//
// A layout is a list of fields of the type's block (byte offset, length, chunk width w): each
// field is stored whole for the 16 rows before the next, as len / w chunks of 16 * w bytes, chunk
// c holding row r's bytes c*w .. c*w + w - 1 at 16 * w * c + w * r. Fields are ordered so that a
// super-block's scales come first (the kernels read them before its quants).
#include <string.h>

#include "kernels/kernels_internal.h"

typedef struct {
    int off, len, w;
} panel_field;

typedef struct {
    int n; // fields
    panel_field f[5];
} panel_layout;

// Q4_K: d, dmin (2 x 32 B), the 12 scale bytes as 3 words (3 x 64 B), qs as 32 words (group g
// = each row's qs[4g .. 4g + 3]).
static const panel_layout L_Q4_K = {4, {{0, 2, 2}, {2, 2, 2}, {4, 12, 4}, {16, 128, 4}}};
// Q5_K: as Q4_K, with qh (8 words) before qs.
static const panel_layout L_Q5_K = {5, {{0, 2, 2}, {2, 2, 2}, {4, 12, 4}, {16, 32, 4}, {48, 128, 4}}};
// Q6_K: d, the 16 scales (4 words), ql (32 words), qh (16 words).
static const panel_layout L_Q6_K = {4, {{208, 2, 2}, {192, 16, 4}, {0, 128, 4}, {128, 64, 4}}};

// The 32-value types: d (, m) (, qh as one word), the 16 nibble bytes as 4 words (word g: bytes
// 4g .. 4g + 3, elements 4g .. 4g + 3 in the low nibbles and 16 + 4g .. in the high ones).
static const panel_layout L_Q4_1 = {3, {{0, 2, 2}, {2, 2, 2}, {4, 16, 4}}};
static const panel_layout L_Q5_0 = {3, {{0, 2, 2}, {2, 4, 4}, {6, 16, 4}}};
static const panel_layout L_Q5_1 = {4, {{0, 2, 2}, {2, 2, 2}, {4, 4, 4}, {8, 16, 4}}};
static const panel_layout L_IQ4_NL = {2, {{0, 2, 2}, {2, 16, 4}}};

// IQ4_XS: d, scales_h (16 x 2 B), scales_l (a word), qs (32 words).
static const panel_layout L_IQ4_XS = {4, {{0, 2, 2}, {2, 2, 2}, {4, 4, 4}, {8, 128, 4}}};
// Q3_K: d, the 12 scale bytes (3 words), hmask (8 words), qs (16 words).
static const panel_layout L_Q3_K = {4, {{108, 2, 2}, {96, 12, 4}, {0, 32, 4}, {32, 64, 4}}};
// Q2_K: d, dmin, the 16 scale bytes (4 words), qs (16 words).
static const panel_layout L_Q2_K = {4, {{80, 2, 2}, {82, 2, 2}, {0, 16, 4}, {16, 64, 4}}};
// DGQ4: d, the 8 group scales (2 words), qs as Q4_K's (32 words).
static const panel_layout L_DGQ4 = {3, {{0, 2, 2}, {2, 8, 4}, {10, 128, 4}}};
// S24_Q8: d, the positions (a word), the 16 kept values (4 words: word g = kept values 4g ..).
static const panel_layout L_S24_Q8 = {3, {{0, 2, 2}, {18, 4, 4}, {2, 16, 4}}};

static const panel_layout *layout(speck_type t) {
    switch (t) {
    case SPECK_TYPE_IQ4_XS:
        return &L_IQ4_XS;
    case SPECK_TYPE_Q3_K:
        return &L_Q3_K;
    case SPECK_TYPE_Q2_K:
        return &L_Q2_K;
    case SPECK_TYPE_Q4_1:
        return &L_Q4_1;
    case SPECK_TYPE_Q5_0:
        return &L_Q5_0;
    case SPECK_TYPE_Q5_1:
        return &L_Q5_1;
    case SPECK_TYPE_IQ4_NL:
        return &L_IQ4_NL;
    case SPECK_TYPE_Q4_K:
        return &L_Q4_K;
    case SPECK_TYPE_Q5_K:
        return &L_Q5_K;
    case SPECK_TYPE_Q6_K:
        return &L_Q6_K;
    case SPECK_TYPE_S24_Q8:
        return &L_S24_Q8;
    case SPECK_TYPE_DGQ4:
        return &L_DGQ4;
    default:
        return NULL;
    }
}

int speck_qt_panel_layout(speck_type t) {
    return layout(t) != NULL;
}

// W: rows (<= 16) rows of nb blocks -> dst: nb panel blocks (missing rows zero).
void speck_qt_panel_pack(speck_type t, const void *W, int64_t nb, int rows, void *dst) {
    const panel_layout *L = layout(t);
    const size_t bb = (size_t)speck_type_block_bytes(t);
    uint8_t *out = dst;
    for (int64_t b = 0; b < nb; b++, out += 16 * bb) {
        memset(out, 0, 16 * bb);
        size_t at = 0;
        for (int k = 0; k < L->n; k++) {
            const panel_field f = L->f[k];
            for (int r = 0; r < rows; r++) {
                const uint8_t *src = (const uint8_t *)W + ((size_t)r * (size_t)nb + (size_t)b) * bb;
                for (int c = 0; c < f.len / f.w; c++)
                    memcpy(out + at + (size_t)(16 * f.w * c + f.w * r), src + f.off + f.w * c,
                           (size_t)f.w);
            }
            at += 16 * (size_t)f.len;
        }
    }
}

// src: nb panel blocks -> W: rows j0 .. j0 + rows - 1 of the panel, nb blocks each.
void speck_qt_panel_unpack(speck_type t, const void *src, int64_t nb, int j0, int rows, void *W) {
    const panel_layout *L = layout(t);
    const size_t bb = (size_t)speck_type_block_bytes(t);
    const uint8_t *in = src;
    for (int64_t b = 0; b < nb; b++, in += 16 * bb) {
        size_t at = 0;
        for (int k = 0; k < L->n; k++) {
            const panel_field f = L->f[k];
            for (int r = j0; r < j0 + rows; r++) {
                uint8_t *dst = (uint8_t *)W + ((size_t)(r - j0) * (size_t)nb + (size_t)b) * bb;
                for (int c = 0; c < f.len / f.w; c++)
                    memcpy(dst + f.off + f.w * c, in + at + (size_t)(16 * f.w * c + f.w * r),
                           (size_t)f.w);
            }
            at += 16 * (size_t)f.len;
        }
    }
}
