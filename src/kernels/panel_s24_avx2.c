// AVX2 panel kernel of S24_Q8 (2:4-sparse, 8-bit; layout in panel_pack.c) against the split Q8_0
// activations, for AVX2 CPUs and AVX-512 ones without VBMI: the panel read as 8-row halves, a row
// per int32 lane, each lane gathering its own activations by its 2-bit positions with vpshufb
// (a word's 8 inputs lie in one 16-byte half of the block, broadcast to both 128-bit lanes).
// Products through vpmaddubsw (|w| times the activation with w's sign) and vpmaddwd, exact int32
// block sums; per row the arithmetic is quant.h's dot contract ((d_w * d_a) * isum added block by
// block), so panel rows equal the row kernels' and the scalar reference's bit for bit. Built with
// -ffp-contract=off.
#include <immintrin.h>

#include "kernels/kernels_internal.h"

#define S24_PB 352 // panel block: 16 x 22 bytes
#ifndef S24_AHEAD
#define S24_AHEAD 4 // panel blocks of each stream prefetched ahead (into L2, as on AVX-512)
#endif

// Lanes of an 8-row half whose bit (of the panel's 16) is set in bits, as a maskstore mask.
static inline __m256i half_mask(unsigned bits, int half) {
    const __m256i b = _mm256_set1_epi32((int)((bits >> (8 * half)) & 0xFF));
    const __m256i sel = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    return _mm256_cmpeq_epi32(_mm256_and_si256(b, sel), sel);
}

// Panel block: d (16 fp16) | positions (lane r: row r's u32, bits 2k..2k+1 = position of kept
// value k in its group of 4) | qs words 0..3 (lane r of word g: row r's kept values 4g..4g+3, of
// inputs 8g..8g+7). Word g's vpshufb control, byte j: 8 (g % 2) + 4 (j / 2) + the position
// (bits 8g + 2j of the row's u32): byte g of the u32 picked, spread to bytes by two shift-ors.
static inline __attribute__((always_inline)) void
ps24_body(const uint8_t *P, size_t pbytes, int64_t pstep, const speck_q8_rows *a, int64_t t0,
          float *y, int64_t ldy, unsigned m0, unsigned m1, int accumulate, const int R,
          const int T) {
    const int64_t nb = a->n / 32;
    const __m256i three = _mm256_set1_epi8(3), ones = _mm256_set1_epi16(1);
    __m256i pick[4]; // vpshufb controls: byte g of each u32 into its byte 0, the rest zero
    for (int g = 0; g < 4; g++) {
        const int c = (int)(0x80808000u + (uint32_t)g);
        pick[g] = _mm256_setr_epi32(c, c + 4, c + 8, c + 12, c, c + 4, c + 8, c + 12);
    }
    __m256 acc[2][4];
    for (int t = 0; t < T; t++)
        for (int s = 0; s < 2 * R; s++) acc[t][s] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m256i act[2][2]; // token t's inputs 0..15 (h = 0), 16..31 (h = 1), in both lanes
        for (int t = 0; t < T; t++)
            for (int h = 0; h < 2; h++)
                act[t][h] = _mm256_broadcastsi128_si256(
                    _mm_loadu_si128((const __m128i *)(a->qs + (t0 + t) * a->n + b * 32 + 16 * h)));
        for (int r = 0; r < R; r++) {
            const uint8_t *pb = P + (size_t)(r * pstep) * pbytes + (size_t)b * S24_PB;
            for (int c = 0; c < S24_PB; c += 64)
                _mm_prefetch((const char *)pb + S24_AHEAD * S24_PB + c, _MM_HINT_T1);
            for (int half = 0; half < 2; half++) {
                const __m256i pos = _mm256_loadu_si256((const __m256i *)(pb + 32 + 32 * half));
                __m256i s[2];
                for (int t = 0; t < T; t++) s[t] = _mm256_setzero_si256();
                for (int g = 0; g < 4; g++) {
                    const __m256i x = _mm256_shuffle_epi8(pos, pick[g]); // byte g of each u32
                    const __m256i x1 = _mm256_or_si256(x, _mm256_slli_epi32(x, 6));
                    const __m256i x2 = _mm256_or_si256(x1, _mm256_slli_epi32(x1, 12));
                    const __m256i ctrl = _mm256_or_si256(
                        _mm256_and_si256(x2, three),
                        _mm256_set1_epi32((int)(0x04040000u + 0x01010101u * (uint32_t)(8 * (g % 2)))));
                    const __m256i w =
                        _mm256_loadu_si256((const __m256i *)(pb + 96 + 64 * g + 32 * half));
                    const __m256i wa = _mm256_sign_epi8(w, w);
                    for (int t = 0; t < T; t++) {
                        const __m256i v = _mm256_sign_epi8(_mm256_shuffle_epi8(act[t][g / 2], ctrl), w);
                        s[t] = _mm256_add_epi32(s[t], _mm256_madd_epi16(_mm256_maddubs_epi16(wa, v), ones));
                    }
                }
                const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(pb + 16 * half)));
                for (int t = 0; t < T; t++) {
                    const float da = a->d[(t0 + t) * nb + b];
                    const __m256 c = _mm256_mul_ps(_mm256_mul_ps(dw, _mm256_set1_ps(da)),
                                                   _mm256_cvtepi32_ps(s[t]));
                    acc[t][2 * r + half] = _mm256_add_ps(acc[t][2 * r + half], c);
                }
            }
        }
    }
    for (int t = 0; t < T; t++)
        for (int r = 0; r < R; r++)
            for (int half = 0; half < 2; half++) {
                const unsigned m = (r == 0 ? m0 : 0xFFFF) & (r == R - 1 ? m1 : 0xFFFF);
                const __m256i mask = half_mask(m, half);
                float *yp = y + t * ldy + r * 16 * pstep + 8 * half;
                __m256 v = acc[t][2 * r + half];
                if (accumulate) v = _mm256_add_ps(_mm256_maskload_ps(yp, mask), v);
                _mm256_maskstore_ps(yp, mask, v);
            }
}

// np panels x nt tokens as 2 x 1 or 1 x 2 (the table's panel_group), fewer panels at the end of
// a range.
SPECK_PANEL_X_DECL(speck_panel_s24_q8_avx2) {
    const uint8_t *p = P;
    const speck_q8_rows *q = &a->rows;
    if (nt == 1 && np >= 2)
        ps24_body(p, pbytes, pstep, q, t0, y, ldy, m0, m1, accumulate, 2, 1);
    else if (nt == 1)
        ps24_body(p, pbytes, pstep, q, t0, y, ldy, m0, m1, accumulate, 1, 1);
    else
        ps24_body(p, pbytes, pstep, q, t0, y, ldy, m0, m1, accumulate, 1, 2);
}
