// AVX-512 VNNI panel kernels of the 32-value block types Q4_1, Q5_0, Q5_1 and IQ4_NL (layouts in
// panel_pack.c) against the split Q8_0 activations: 16 rows per vector, a row per int32 lane.
// Per row the arithmetic is quant.h's dot contract exactly (the block's exact int32 sum, then
// (d_w * d_a) * isum [+ m_w * s_a] added block by block), so panel rows equal the row kernels'
// and the scalar reference's bit for bit. Built with -ffp-contract=off.
#include <immintrin.h>
#include <string.h>

#include "kernels/avx512_common.h"
#include "kernels/kernels_internal.h"

enum { P_Q41, P_Q50, P_Q51, P_IQ4NL };

// Byte offsets within a panel block (16 rows of one 32-value block): the fp16 d of the rows,
// their mins (or -1), qh words (or -1) and the 4 words of nibbles; and the block's bytes.
static inline int off_m(const int pt) {
    return pt == P_Q41 || pt == P_Q51 ? 32 : -1;
}
static inline int off_qh(const int pt) {
    return pt == P_Q50 ? 32 : pt == P_Q51 ? 64 : -1;
}
static inline int off_qs(const int pt) {
    return pt == P_Q41 ? 64 : pt == P_Q50 ? 96 : pt == P_Q51 ? 128 : 32;
}
static inline int pblock(const int pt) {
    return 16 * (pt == P_Q41 ? 20 : pt == P_Q50 ? 22 : pt == P_Q51 ? 24 : 18);
}

static inline __m512i bcast4(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
}

// lv with bit 4 of the levels of elements e0 .. e0 + 3 (a multiple of 4) of every row set from
// its qh dword: byte e0 / 8 of the dword copied to its 4 bytes (byte i of a lane's dword then
// tested against bit e0 % 8 + i), 16 added where set.
static inline __m512i q5_bits(__m512i qh, const int e0, __m512i lv) {
    const int b = e0 / 8, s = e0 % 8;
    const __m512i sel = _mm512_set4_epi32((12 + b) * 0x01010101, (8 + b) * 0x01010101,
                                          (4 + b) * 0x01010101, b * 0x01010101);
    const __m512i bits = _mm512_set1_epi32((int)((1u << s) | (2u << (s + 8)) | (4u << (s + 16)) |
                                                 (8u << (s + 24))));
    const __mmask64 set = _mm512_test_epi8_mask(_mm512_shuffle_epi8(qh, sel), bits);
    return _mm512_mask_add_epi8(lv, set, lv, _mm512_set1_epi8(0x10));
}

static inline __attribute__((always_inline)) void
p32_body(const uint8_t *P, size_t pbytes, int64_t pstep, const speck_q8_rows *a, int64_t t0,
         float *y, int64_t ldy, __mmask16 m0, __mmask16 m1, int accumulate, const int pt,
         const int R, const int T) {
    const int64_t nb = a->n / 32;
    const size_t bb = (size_t)pblock(pt);
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    // IQ4_NL: the grid plus 128 (unsigned bytes), in each 128-bit lane.
    const __m512i grid = _mm512_broadcast_i32x4(_mm_setr_epi8(
        (char)1, (char)24, (char)45, (char)63, (char)79, (char)93, (char)106, (char)118, (char)129,
        (char)141, (char)153, (char)166, (char)181, (char)197, (char)217, (char)241));
    __m512 acc[8];
    for (int s = 0; s < R * T; s++) acc[s] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        for (int r = 0; r < R; r++) {
            const uint8_t *pb = P + (size_t)(r * pstep) * pbytes + (size_t)b * bb;
            for (size_t c = 0; c < bb; c += 64) _mm_prefetch((const char *)pb + 4 * bb + c, _MM_HINT_T0);
            __m512i lv[8]; // levels: words 0..3 low nibbles (elements 4g ..), then high (16 + 4g ..)
            for (int g = 0; g < 4; g++) {
                const __m512i v = _mm512_loadu_si512(pb + off_qs(pt) + 64 * g);
                lv[g] = _mm512_and_si512(v, m4);
                lv[4 + g] = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
            }
            if (off_qh(pt) >= 0) {
                const __m512i qh = _mm512_loadu_si512(pb + off_qh(pt));
                for (int g = 0; g < 4; g++) {
                    lv[g] = q5_bits(qh, 4 * g, lv[g]);
                    lv[4 + g] = q5_bits(qh, 16 + 4 * g, lv[4 + g]);
                }
            }
            if (pt == P_IQ4NL)
                for (int g = 0; g < 8; g++) lv[g] = _mm512_shuffle_epi8(grid, lv[g]);
            const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)pb));
            const __m512 mw = off_m(pt) >= 0
                                  ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(pb + off_m(pt))))
                                  : _mm512_setzero_ps();
            for (int t = 0; t < T; t++) {
                const int64_t row = t0 + t;
                const int8_t *x = a->qs + row * a->n + b * 32;
                __m512i s = _mm512_setzero_si512();
                for (int g = 0; g < 4; g++) {
                    s = _mm512_dpbusd_epi32(s, lv[g], bcast4(x + 4 * g));
                    s = _mm512_dpbusd_epi32(s, lv[4 + g], bcast4(x + 16 + 4 * g));
                }
                const int off = pt == P_Q50 ? 16 : pt == P_IQ4NL ? 128 : 0;
                if (off) s = _mm512_sub_epi32(s, _mm512_set1_epi32(off * a->qsum[row * nb + b]));
                const float da = a->d[row * nb + b];
                __m512 c = _mm512_mul_ps(_mm512_mul_ps(dw, _mm512_set1_ps(da)), _mm512_cvtepi32_ps(s));
                if (off_m(pt) >= 0)
                    c = _mm512_add_ps(c, _mm512_mul_ps(mw, _mm512_set1_ps(a->s[row * nb + b])));
                acc[t * R + r] = _mm512_add_ps(acc[t * R + r], c);
            }
        }
    }
    panel_store(acc, y, ldy, 16 * pstep, m0, m1, accumulate, R, T);
}

// np panels x nt tokens as 4 x 1, 2 x 2, 2 x 3, 1 x 4 (the table's panel_group), fewer panels at
// the end of a range.
#define ENTRY(NAME, PT)                                                                            \
    void NAME(const void *Pv, size_t pbytes, int np, int64_t pstep, const speck_mm_act *a,         \
              int64_t t0, int nt, float *y, int64_t ldy, unsigned m0, unsigned m1,                 \
              int accumulate) {                                                                    \
        const uint8_t *P = Pv;                                                                     \
        const __mmask16 k0 = (__mmask16)m0, k1 = (__mmask16)m1;                                    \
        const speck_q8_rows *q = &a->rows;                                                         \
        if (nt == 1 && np >= 4)                                                                    \
            p32_body(P, pbytes, pstep, q, t0, y, ldy, k0, k1, accumulate, PT, 4, 1);               \
        else if (nt == 1 && np == 3)                                                               \
            p32_body(P, pbytes, pstep, q, t0, y, ldy, k0, k1, accumulate, PT, 3, 1);               \
        else if (nt == 1 && np == 2)                                                               \
            p32_body(P, pbytes, pstep, q, t0, y, ldy, k0, k1, accumulate, PT, 2, 1);               \
        else if (nt == 1)                                                                          \
            p32_body(P, pbytes, pstep, q, t0, y, ldy, k0, k1, accumulate, PT, 1, 1);               \
        else if (nt == 2 && np >= 2)                                                               \
            p32_body(P, pbytes, pstep, q, t0, y, ldy, k0, k1, accumulate, PT, 2, 2);               \
        else if (nt == 2)                                                                          \
            p32_body(P, pbytes, pstep, q, t0, y, ldy, k0, k1, accumulate, PT, 1, 2);               \
        else if (nt == 3 && np >= 2)                                                               \
            p32_body(P, pbytes, pstep, q, t0, y, ldy, k0, k1, accumulate, PT, 2, 3);               \
        else if (nt == 3)                                                                          \
            p32_body(P, pbytes, pstep, q, t0, y, ldy, k0, k1, accumulate, PT, 1, 3);               \
        else                                                                                       \
            p32_body(P, pbytes, pstep, q, t0, y, ldy, k0, k1, accumulate, PT, 1, 4);               \
    }
ENTRY(speck_panel_q4_1_avx512, P_Q41)
ENTRY(speck_panel_q5_0_avx512, P_Q50)
ENTRY(speck_panel_q5_1_avx512, P_Q51)
ENTRY(speck_panel_iq4_nl_avx512, P_IQ4NL)
