// AVX-512 VNNI + VBMI panel kernel of S24_Q8 (2:4-sparse, 8-bit; layout in panel_pack.c) against
// the split Q8_0 activations: 16 rows per vector, a row per int32 lane, each lane gathering its
// own activations by its 2-bit positions (vpmultishiftqb spreads them into a vpermb control). Per
// row the arithmetic is quant.h's dot contract exactly (the block's exact int32 sum, then
// (d_w * d_a) * isum added block by block), so panel rows equal the row kernels' and the scalar
// reference's bit for bit. Built with -ffp-contract=off; dispatch.c offers it only on CPUs with
// VBMI (the row kernel of sparse_avx512.c runs elsewhere).
#include <immintrin.h>

#include "kernels/avx512_common.h"
#include "kernels/kernels_internal.h"

#define S24_PB 352 // panel block: 16 x 22 bytes
#ifndef S24_AHEAD
#define S24_AHEAD 4 // panel blocks of each stream prefetched ahead (into L2: see panel_k_avx512.c)
#endif

// Panel block: d (16 fp16) | positions (lane r: row r's u32, bits 2k..2k+1 = position of kept
// value k in its group of 4) | qs words 0..3 (lane r of word g: row r's kept values 4g..4g+3, of
// inputs 8g..8g+7). Unsigned activations (a + 128) times signed weights through vpdpbusd, the 128
// taken out with each row's weight sum: sum((a + 128) w) - 128 sum(w) = sum(a w), exactly.
static inline __attribute__((always_inline)) void
ps24_body(const uint8_t *P, size_t pbytes, int64_t pstep, const speck_q8_rows *a, int64_t t0,
          float *y, int64_t ldy, __mmask16 m0, __mmask16 m1, int accumulate, const int R,
          const int T) {
    const int64_t nb = a->n / 32;
    const __m512i three = _mm512_set1_epi8(3), ones = _mm512_set1_epi8(1),
                  flip = _mm512_set1_epi8((char)0x80);
    // Word g: the multishift picks bits 8g + 2k of each row's positions into byte k of its lane;
    // the group base (4 (k / 2)) and the word's first input (8g) are or-ed in.
    __m512i sel[4], base[4];
    for (int g = 0; g < 4; g++) {
        const uint64_t b = (uint64_t)(8 * g);
        uint64_t s = 0;
        for (int k = 0; k < 8; k++) s |= (b + (uint64_t)(k / 4) * 32 + 2 * (uint64_t)(k % 4)) << (8 * k);
        sel[g] = _mm512_set1_epi64((long long)s);
        base[g] = _mm512_set1_epi32((int)(0x04040000u + 0x01010101u * (uint32_t)(8 * g)));
    }
    __m512 acc[8];
    for (int s = 0; s < R * T; s++) acc[s] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m512i act[4]; // the block's 32 activations of each token, + 128
        for (int t = 0; t < T; t++)
            act[t] = _mm512_xor_si512(
                _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)(a->qs + (t0 + t) * a->n + b * 32))),
                flip);
        for (int r = 0; r < R; r++) {
            const uint8_t *pb = P + (size_t)(r * pstep) * pbytes + (size_t)b * S24_PB;
            for (int c = 0; c < S24_PB; c += 64)
                _mm_prefetch((const char *)pb + S24_AHEAD * S24_PB + c, _MM_HINT_T1);
            const __m512i pos = _mm512_loadu_si512(pb + 32);
            __m512i ctrl[4], w[4];
            __m512i wsum = _mm512_setzero_si512();
            for (int g = 0; g < 4; g++) {
                // 0xEA: (A & B) | C
                ctrl[g] = _mm512_ternarylogic_epi32(_mm512_multishift_epi64_epi8(sel[g], pos), three,
                                                    base[g], 0xEA);
                w[g] = _mm512_loadu_si512(pb + 96 + 64 * g);
                wsum = _mm512_dpbusd_epi32(wsum, ones, w[g]);
            }
            const __m512i off = _mm512_slli_epi32(wsum, 7);
            const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)pb));
            for (int t = 0; t < T; t++) {
                __m512i s = _mm512_setzero_si512();
                for (int g = 0; g < 4; g++)
                    s = _mm512_dpbusd_epi32(s, _mm512_permutexvar_epi8(ctrl[g], act[t]), w[g]);
                const float da = a->d[(t0 + t) * nb + b];
                const __m512 c = _mm512_mul_ps(_mm512_mul_ps(dw, _mm512_set1_ps(da)),
                                               _mm512_cvtepi32_ps(_mm512_sub_epi32(s, off)));
                acc[t * R + r] = _mm512_add_ps(acc[t * R + r], c);
            }
        }
    }
    panel_store(acc, y, ldy, 16 * pstep, m0, m1, accumulate, R, T);
}

// np panels x nt tokens as 4 x 1, 2 x 2, 2 x 3, 1 x 4 (the table's panel_group), fewer panels at
// the end of a range.
SPECK_PANEL_X_DECL(speck_panel_s24_q8_avx512) {
    const uint8_t *p = P;
    const __mmask16 k0 = (__mmask16)m0, k1 = (__mmask16)m1;
    const speck_q8_rows *q = &a->rows;
    if (nt == 1 && np >= 4)
        ps24_body(p, pbytes, pstep, q, t0, y, ldy, k0, k1, accumulate, 4, 1);
    else if (nt == 1 && np == 3)
        ps24_body(p, pbytes, pstep, q, t0, y, ldy, k0, k1, accumulate, 3, 1);
    else if (nt == 1 && np == 2)
        ps24_body(p, pbytes, pstep, q, t0, y, ldy, k0, k1, accumulate, 2, 1);
    else if (nt == 1)
        ps24_body(p, pbytes, pstep, q, t0, y, ldy, k0, k1, accumulate, 1, 1);
    else if (nt == 2 && np >= 2)
        ps24_body(p, pbytes, pstep, q, t0, y, ldy, k0, k1, accumulate, 2, 2);
    else if (nt == 2)
        ps24_body(p, pbytes, pstep, q, t0, y, ldy, k0, k1, accumulate, 1, 2);
    else if (nt == 3 && np >= 2)
        ps24_body(p, pbytes, pstep, q, t0, y, ldy, k0, k1, accumulate, 2, 3);
    else if (nt == 3)
        ps24_body(p, pbytes, pstep, q, t0, y, ldy, k0, k1, accumulate, 1, 3);
    else
        ps24_body(p, pbytes, pstep, q, t0, y, ldy, k0, k1, accumulate, 1, 4);
}
