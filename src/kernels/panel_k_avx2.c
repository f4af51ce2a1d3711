// AVX2 panel kernels of Q4_K and Q6_K (the K-quant llama.cpp's Q4_K_M files are mostly made
// of), on the panel layouts of panel_pack.c read as 8-row halves: 32 bytes = 8 rows x 4 bytes,
// vpmaddubsw multiplying them by 4 broadcast activation bytes, sums widened to one int32 lane
// per row. Per row the arithmetic is quant.h's dot contract exactly, as on AVX-512, so the
// results equal the scalar reference's bit for bit. Built with -ffp-contract=off.
#include <immintrin.h>
#include <string.h>

#include "kernels/kernels_internal.h"

#define SB 256

static inline __m256i bcast4(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}

// Byte j (0..3) of every dword of v, zero-extended.
static inline __m256i dword_byte(__m256i v, int j) {
    return _mm256_and_si256(_mm256_srli_epi32(v, 8 * j), _mm256_set1_epi32(0xFF));
}

// Lanes of an 8-row half whose bit (of the panel's 16) is set in bits, as a maskstore mask.
static inline __m256i half_mask(unsigned bits, int half) {
    const __m256i b = _mm256_set1_epi32((int)((bits >> (8 * half)) & 0xFF));
    const __m256i sel = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    return _mm256_cmpeq_epi32(_mm256_and_si256(b, sel), sel);
}

// acc[t][2r + half] (rows 8 half .. of panel r for token t) to y + t * ldy + r * ystep + 8 half,
// =, or += when accumulate; lanes outside m0 (first panel) and m1 (last) untouched.
static inline __attribute__((always_inline)) void store_halves(__m256 acc[][4], float *y,
                                                               int64_t ldy, int64_t ystep,
                                                               unsigned m0, unsigned m1,
                                                               int accumulate, const int R,
                                                               const int T) {
    for (int t = 0; t < T; t++)
        for (int r = 0; r < R; r++)
            for (int half = 0; half < 2; half++) {
                const unsigned m = (r == 0 ? m0 : 0xFFFF) & (r == R - 1 ? m1 : 0xFFFF);
                const __m256i mask = half_mask(m, half);
                float *yp = y + t * ldy + r * ystep + 8 * half;
                __m256 v = acc[t][2 * r + half];
                if (accumulate) v = _mm256_add_ps(_mm256_maskload_ps(yp, mask), v);
                _mm256_maskstore_ps(yp, mask, v);
            }
}

// Q4_K (panel block 2304 B: d | dmin | scale words 0..2 | qs words 0..31, see panel_k_avx512.c).
// A sub-block's 8 words are summed in int16 (pairs <= 2 * 15 * 127, eight of them < 2^15) and
// widened once.
static inline __attribute__((always_inline)) void
pq4k_body(const uint8_t *P, size_t pbytes, int64_t pstep, const speck_mm_act *a, int64_t t0,
          float *y, int64_t ldy, unsigned m0, unsigned m1, int accumulate, const int R,
          const int T) {
    const int64_t nsb = a->n_in / SB;
    const size_t krow = speck_type_row_size(SPECK_TYPE_Q8_K, a->n_in), bb = 16 * 144;
    const __m256i m4 = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
    const __m256i k3f = _mm256_set1_epi32(0x3F3F3F3F), k0f = _mm256_set1_epi32(0x0F0F0F0F),
                  k30 = _mm256_set1_epi32(0x30303030), pairs = _mm256_set1_epi32(0x00FF00FF);
    __m256 acc[2][4];
    for (int t = 0; t < T; t++)
        for (int s = 0; s < 2 * R; s++) acc[t][s] = _mm256_setzero_ps();
    for (int64_t sb = 0; sb < nsb; sb++) {
        const speck_block_q8_k *x[2];
        for (int t = 0; t < T; t++)
            x[t] = (const speck_block_q8_k *)(a->blocks + (size_t)(t0 + t) * krow) + sb;
        for (int r = 0; r < R; r++) {
            const uint8_t *pb = P + (size_t)(r * pstep) * pbytes + (size_t)sb * bb;
            for (int c = 0; c < 4; c++) _mm_prefetch((const char *)pb + bb + 64 * c, _MM_HINT_T0);
            for (int half = 0; half < 2; half++) {
                const __m256i w0 = _mm256_loadu_si256((const __m256i *)(pb + 64 + 32 * half));
                const __m256i w1 = _mm256_loadu_si256((const __m256i *)(pb + 128 + 32 * half));
                const __m256i w2 = _mm256_loadu_si256((const __m256i *)(pb + 192 + 32 * half));
                const __m256i sc_lo = _mm256_and_si256(w0, k3f), m_lo = _mm256_and_si256(w1, k3f);
                const __m256i sc_hi = _mm256_or_si256(_mm256_and_si256(w2, k0f),
                                                      _mm256_and_si256(_mm256_srli_epi32(w0, 2), k30));
                const __m256i m_hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(w2, 4), k0f),
                                                     _mm256_and_si256(_mm256_srli_epi32(w1, 2), k30));
                __m256i sumi[2];
                for (int t = 0; t < T; t++) sumi[t] = _mm256_setzero_si256();
                for (int c = 0; c < 4; c++) {
                    __m256i lo16[2], hi16[2];
                    for (int t = 0; t < T; t++) lo16[t] = hi16[t] = _mm256_setzero_si256();
                    for (int q = 0; q < 8; q++) {
                        const uint8_t *g = pb + 256 + 64 * (8 * c + q) + 32 * half;
                        if (half == 0) _mm_prefetch((const char *)g + bb, _MM_HINT_T0);
                        const __m256i v = _mm256_loadu_si256((const __m256i *)g);
                        const __m256i lo = _mm256_and_si256(v, m4);
                        const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
                        for (int t = 0; t < T; t++) {
                            lo16[t] = _mm256_add_epi16(
                                lo16[t], _mm256_maddubs_epi16(lo, bcast4(x[t]->qs + 64 * c + 4 * q)));
                            hi16[t] = _mm256_add_epi16(
                                hi16[t], _mm256_maddubs_epi16(hi, bcast4(x[t]->qs + 64 * c + 32 + 4 * q)));
                        }
                    }
                    const __m256i scv = c < 2 ? sc_lo : sc_hi;
                    const __m256i s0 = dword_byte(scv, (2 * c) % 4), s1 = dword_byte(scv, (2 * c + 1) % 4);
                    for (int t = 0; t < T; t++)
                        sumi[t] = _mm256_add_epi32(
                            sumi[t],
                            _mm256_add_epi32(_mm256_mullo_epi32(_mm256_madd_epi16(lo16[t], ones), s0),
                                             _mm256_mullo_epi32(_mm256_madd_epi16(hi16[t], ones), s1)));
                }
                const __m256 dv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(pb + 16 * half)));
                const __m256 dmv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(pb + 32 + 16 * half)));
                for (int t = 0; t < T; t++) {
                    // Mins (bytes (0, 2) and (1, 3) of m_lo, m_hi as int16 pairs) times the
                    // sub-blocks' activation sums.
                    const int16_t *bs = x[t]->bsums;
                    int b[8];
                    for (int j = 0; j < 8; j++) b[j] = bs[2 * j] + bs[2 * j + 1];
#define PAIR(i, k) _mm256_set1_epi32((int)((uint32_t)(uint16_t)b[i] | (uint32_t)(uint16_t)b[k] << 16))
                    __m256i summ = _mm256_madd_epi16(_mm256_and_si256(m_lo, pairs), PAIR(0, 2));
                    summ = _mm256_add_epi32(summ, _mm256_madd_epi16(_mm256_and_si256(_mm256_srli_epi32(m_lo, 8), pairs), PAIR(1, 3)));
                    summ = _mm256_add_epi32(summ, _mm256_madd_epi16(_mm256_and_si256(m_hi, pairs), PAIR(4, 6)));
                    summ = _mm256_add_epi32(summ, _mm256_madd_epi16(_mm256_and_si256(_mm256_srli_epi32(m_hi, 8), pairs), PAIR(5, 7)));
#undef PAIR
                    const __m256 vda = _mm256_set1_ps(x[t]->d);
                    const __m256 c1 = _mm256_mul_ps(_mm256_mul_ps(dv, vda), _mm256_cvtepi32_ps(sumi[t]));
                    const __m256 c2 = _mm256_mul_ps(_mm256_mul_ps(dmv, vda), _mm256_cvtepi32_ps(summ));
                    acc[t][2 * r + half] = _mm256_add_ps(acc[t][2 * r + half], _mm256_sub_ps(c1, c2));
                }
            }
        }
    }
    store_halves(acc, y, ldy, 16 * pstep, m0, m1, accumulate, R, T);
}

// Q6_K (panel block 3360 B: d | scale words 0..3 | ql words 0..31 | qh words 0..15, see
// panel_k_avx512.c). Levels 0..63: each word's products are widened at once.
static inline __attribute__((always_inline)) void
pq6k_body(const uint8_t *P, size_t pbytes, int64_t pstep, const speck_mm_act *a, int64_t t0,
          float *y, int64_t ldy, unsigned m0, unsigned m1, int accumulate, const int R,
          const int T) {
    const int64_t nsb = a->n_in / SB;
    const size_t krow = speck_type_row_size(SPECK_TYPE_Q8_K, a->n_in), bb = 16 * 210;
    const __m256i c0f = _mm256_set1_epi8(0x0F), c30 = _mm256_set1_epi8(0x30),
                  ones = _mm256_set1_epi16(1);
    __m256 acc[2][4];
    for (int t = 0; t < T; t++)
        for (int s = 0; s < 2 * R; s++) acc[t][s] = _mm256_setzero_ps();
    for (int64_t sb = 0; sb < nsb; sb++) {
        const speck_block_q8_k *x[2];
        for (int t = 0; t < T; t++)
            x[t] = (const speck_block_q8_k *)(a->blocks + (size_t)(t0 + t) * krow) + sb;
        for (int r = 0; r < R; r++) {
            const uint8_t *pb = P + (size_t)(r * pstep) * pbytes + (size_t)sb * bb;
            // Into L2 (T1), every qh line (half were): one thread streaming Q6_K panels from DRAM
            // went from 7.5 to 12.5 GB/s (the AVX-512 kernel's comment has the method).
            for (int c = 0; c < 5; c++) _mm_prefetch((const char *)pb + bb + 64 * c, _MM_HINT_T1);
            for (int half = 0; half < 2; half++) {
                __m256i sumi[2];
                for (int t = 0; t < T; t++) sumi[t] = _mm256_setzero_si256();
                for (int h = 0; h < 2; h++)
                    for (int sub = 0; sub < 2; sub++) { // l < 16, l >= 16: sub-blocks 8h + 2k + sub
                        __m256i ac[2][4];
                        for (int t = 0; t < T; t++)
                            for (int k = 0; k < 4; k++) ac[t][k] = _mm256_setzero_si256();
                        for (int i = 4 * sub; i < 4 * sub + 4; i++) {
                            const uint8_t *ga = pb + 288 + 64 * (16 * h + i) + 32 * half,
                                          *gb = ga + 64 * 8;
                            const uint8_t *gh = pb + 288 + 2048 + 64 * (8 * h + i) + 32 * half;
                            if (half == 0) {
                                _mm_prefetch((const char *)ga + bb, _MM_HINT_T1);
                                _mm_prefetch((const char *)gb + bb, _MM_HINT_T1);
                                _mm_prefetch((const char *)gh + bb, _MM_HINT_T1);
                            }
                            const __m256i va = _mm256_loadu_si256((const __m256i *)ga);
                            const __m256i vb = _mm256_loadu_si256((const __m256i *)gb);
                            const __m256i H = _mm256_loadu_si256((const __m256i *)gh);
                            const __m256i q[4] = {
                                _mm256_or_si256(_mm256_and_si256(va, c0f), _mm256_and_si256(_mm256_slli_epi32(H, 4), c30)),
                                _mm256_or_si256(_mm256_and_si256(vb, c0f), _mm256_and_si256(_mm256_slli_epi32(H, 2), c30)),
                                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(va, 4), c0f), _mm256_and_si256(H, c30)),
                                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(vb, 4), c0f),
                                                _mm256_and_si256(_mm256_srli_epi32(H, 2), c30))};
                            for (int t = 0; t < T; t++)
                                for (int k = 0; k < 4; k++)
                                    ac[t][k] = _mm256_add_epi32(
                                        ac[t][k],
                                        _mm256_madd_epi16(_mm256_maddubs_epi16(q[k], bcast4(x[t]->qs + 128 * h + 32 * k + 4 * i)),
                                                          ones));
                        }
                        for (int k = 0; k < 4; k++) {
                            const int j = 8 * h + 2 * k + sub;
                            const __m256i w = _mm256_loadu_si256((const __m256i *)(pb + 32 + 64 * (j / 4) + 32 * half));
                            const __m256i sc = _mm256_srai_epi32(_mm256_slli_epi32(w, 24 - 8 * (j % 4)), 24);
                            for (int t = 0; t < T; t++) {
                                const __m256i off = _mm256_set1_epi32(32 * x[t]->bsums[j]);
                                sumi[t] = _mm256_add_epi32(
                                    sumi[t], _mm256_mullo_epi32(_mm256_sub_epi32(ac[t][k], off), sc));
                            }
                        }
                    }
                const __m256 dv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(pb + 16 * half)));
                for (int t = 0; t < T; t++)
                    acc[t][2 * r + half] = _mm256_add_ps(
                        acc[t][2 * r + half], _mm256_mul_ps(_mm256_mul_ps(dv, _mm256_set1_ps(x[t]->d)),
                                                            _mm256_cvtepi32_ps(sumi[t])));
            }
        }
    }
    store_halves(acc, y, ldy, 16 * pstep, m0, m1, accumulate, R, T);
}

// np panels x nt tokens as 2 x 1 or 1 x 2 (the table's panel_group), fewer panels at the end of
// a range.
#define ENTRY(NAME, BODY)                                                                          \
    void NAME(const void *Pv, size_t pbytes, int np, int64_t pstep, const speck_mm_act *a,         \
              int64_t t0, int nt, float *y, int64_t ldy, unsigned m0, unsigned m1,                 \
              int accumulate) {                                                                    \
        const uint8_t *P = Pv;                                                                     \
        if (nt == 1 && np >= 2)                                                                    \
            BODY(P, pbytes, pstep, a, t0, y, ldy, m0, m1, accumulate, 2, 1);                       \
        else if (nt == 1)                                                                          \
            BODY(P, pbytes, pstep, a, t0, y, ldy, m0, m1, accumulate, 1, 1);                       \
        else                                                                                       \
            BODY(P, pbytes, pstep, a, t0, y, ldy, m0, m1, accumulate, 1, 2);                       \
    }
ENTRY(speck_panel_q4_k_avx2, pq4k_body)
ENTRY(speck_panel_q6_k_avx2, pq6k_body)
