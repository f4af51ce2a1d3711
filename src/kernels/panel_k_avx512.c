// AVX-512 VNNI panel kernels of the K-quants (layouts in panel_pack.c): 16 rows per vector,
// one row per int32 lane, so a super-block's integer sums need no horizontal work at all. Per
// row the arithmetic is quant.h's dot contract exactly (exact int32 sums per super-block, then
// (d * d_a) * sumi - (dmin * d_a) * summ added in super-block order), so a panel's rows equal the
// row kernels' and the scalar reference's bit for bit, for any token count or grouping. Built
// with -ffp-contract=off.
#include <immintrin.h>
#include <string.h>

#include "kernels/avx512_common.h"
#include "kernels/kernels_internal.h"

#define SB 256 // values per super-block

#ifndef PK_AHEAD
#define PK_AHEAD 2 // super-blocks of each panel stream prefetched ahead
#endif
// Prefetched into L2, not L1: R streams of 2.2-3.4 KB panel blocks PK_AHEAD ahead are 17-27 KB
// in flight beside the blocks being read, and into a 48 KB L1 they evicted each other before use.
// One thread streaming 768 MB of 5632 x 2048 panels (thread CPU time, so other tenants cost
// little accuracy; a plain read loop: ~20 GB/s) went from 9 to 20 (Q2_K), 7.5 to 17 (Q3_K), 14 to
// 16 (Q4_K), 12.7 to 16.5 (Q5_K), 18 to 20 (IQ4_XS) and, with every qh line of Q6_K prefetched
// (half of them were), 9 to 16 (Q6_K) GB/s.
#define PK_HINT _MM_HINT_T1

static inline __m512i bcast4(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
}

// Byte j (0..3) of every dword of v, zero-extended to the dword.
static inline __m512i dword_byte(__m512i v, int j) {
    return _mm512_and_si512(_mm512_srli_epi32(v, 8 * j), _mm512_set1_epi32(0xFF));
}

// One panel super-block's float contribution for token y: (d * d_a) * sumi - (dmin * d_a) * summ.
static inline __m512 k_contrib(__m512 dv, __m512 dmv, float da, __m512i sumi, __m512i summ) {
    const __m512 vda = _mm512_set1_ps(da);
    const __m512 a = _mm512_mul_ps(_mm512_mul_ps(dv, vda), _mm512_cvtepi32_ps(sumi));
    const __m512 b = _mm512_mul_ps(_mm512_mul_ps(dmv, vda), _mm512_cvtepi32_ps(summ));
    return _mm512_sub_ps(a, b);
}

/* ---- Q4_K and Q5_K ------------------------------------------------------------------------- */

// (x << k) for k >= 0, (x >> -k) otherwise, on 32-bit lanes (a byte's bit i lands at i + k).
static inline __m512i shift_bits(__m512i x, const int k) {
    return k >= 0 ? _mm512_slli_epi32(x, k) : _mm512_srli_epi32(x, -k);
}

// Panel block: d (16 fp16) | dmin | scale words 0..2 (3 x 64 B) | Q5_K: qh words 0..7 | qs words
// 0..31 (2304 B for Q4_K, 2816 for Q5_K). Word g of qs holds bytes 4g..4g+3 of each row: low
// nibbles are elements 64c + 4q .. + 3 (c = g / 8, q = g % 8; sub-block 2c), high nibbles
// 64c + 32 + 4q .. (sub-block 2c + 1); Q5_K's fifth bits are bits 2c and 2c + 1 of qh word q.
// Bytes (0, 2) and (1, 3) of every dword (four 6-bit mins) as int16 pairs.
static inline __m512i pair_even(__m512i v) {
    return _mm512_and_si512(v, _mm512_set1_epi32(0x00FF00FF));
}
static inline __m512i pair_odd(__m512i v) {
    return _mm512_and_si512(_mm512_srli_epi32(v, 8), _mm512_set1_epi32(0x00FF00FF));
}

// The bsums of a token's super-block as int16 pairs for pair_even / pair_odd: sub-block sums
// bs_j = bsums[2j] + bsums[2j + 1], broadcast as (bs_j0 | bs_j0+2 << 16).
static inline __m512i bs_pair(const speck_block_q8_k *x, int j0) {
    const int a = x->bsums[2 * j0] + x->bsums[2 * j0 + 1];
    const int b = x->bsums[2 * j0 + 4] + x->bsums[2 * j0 + 5];
    return _mm512_set1_epi32((int)(((uint32_t)(uint16_t)a) | ((uint32_t)(uint16_t)b << 16)));
}

// Panel block (2208 B): d (16 fp16) | scale words 0..1 (the 8 int8 group scales, 2 x 64 B) | qs
// words 0..31 as Q4_K's (word 8c + q: low nibbles elements 64c + 4q .., group 2c; high nibbles
// 64c + 32 + 4q .., group 2c + 1). Levels 0..15 stand for q - 8: the offset comes back through
// the activations' group sums, sumi = sum_g sc_g * (dot_g - 8 * bs_g), exact in int32.
static inline __m512i sbyte(__m512i v, int j) { // byte j of every dword, sign-extended
    return _mm512_srai_epi32(_mm512_slli_epi32(v, 24 - 8 * j), 24);
}

// A DGQ4 super-block's end: sumi - 8 * sum_g sc_g * bs_g, times d * d_a, into acc. The scales as
// signed int16 pairs (bytes (0, 2) and (1, 3) of each word) meet the groups' activation sums two
// groups per dpwssd, as Q4_K's mins do.
static inline __attribute__((always_inline)) void
dgq4_offsets(const uint8_t *const *pb, const speck_block_q8_k *const *x, const __m512i *sumi,
             __m512 *acc, const int R, const int T) {
    for (int r = 0; r < R; r++) {
        const __m512i w0 = _mm512_loadu_si512(pb[r] + 32), w1 = _mm512_loadu_si512(pb[r] + 96);
        const __m512i e0 = _mm512_srai_epi16(_mm512_slli_epi16(w0, 8), 8), o0 = _mm512_srai_epi16(w0, 8);
        const __m512i e1 = _mm512_srai_epi16(_mm512_slli_epi16(w1, 8), 8), o1 = _mm512_srai_epi16(w1, 8);
        const __m512 dv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)pb[r]));
        for (int t = 0; t < T; t++) {
            __m512i sbs = _mm512_dpwssd_epi32(_mm512_setzero_si512(), e0, bs_pair(x[t], 0));
            sbs = _mm512_dpwssd_epi32(sbs, o0, bs_pair(x[t], 1));
            sbs = _mm512_dpwssd_epi32(sbs, e1, bs_pair(x[t], 4));
            sbs = _mm512_dpwssd_epi32(sbs, o1, bs_pair(x[t], 5));
            const __m512i s = _mm512_sub_epi32(sumi[t * R + r], _mm512_slli_epi32(sbs, 3));
            const __m512 vda = _mm512_set1_ps(x[t]->d);
            acc[t * R + r] = _mm512_add_ps(
                acc[t * R + r], _mm512_mul_ps(_mm512_mul_ps(dv, vda), _mm512_cvtepi32_ps(s)));
        }
    }
}

// Q4_K, Q5_K and DGQ4 share the nibble layout and the loops; they differ in the scales' fields
// and in what the activations' group sums multiply (mins, or DGQ4's offset).
enum { PK_Q4K, PK_Q5K, PK_DGQ4 };

// Loops: per sub-block pair c, the weight words q = 0..7 of all R panels in turn, so a call's
// 2 R T accumulators are independent chains (an 8-deep chain per panel had left the one-token
// kernel latency-bound) and each activation broadcast serves every panel.
static inline __attribute__((always_inline)) void
pq45k_body(const uint8_t *P, size_t pbytes, int64_t pstep, const speck_mm_act *a, int64_t t0,
           float *y, int64_t ldy, __mmask16 m0, __mmask16 m1, int accumulate, const int kind,
           const int R, const int T) {
    const int q5 = kind == PK_Q5K, dgq = kind == PK_DGQ4;
    const int64_t nsb = a->n_in / SB;
    const size_t krow = speck_type_row_size(SPECK_TYPE_Q8_K, a->n_in),
                 bb = 16 * (q5 ? 176 : dgq ? 138 : 144);
    const size_t qs_at = q5 ? 768 : dgq ? 160 : 256; // offset of the qs words
    const __m512i b4 = _mm512_set1_epi8(0x10);
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const __m512i k3f = _mm512_set1_epi32(0x3F3F3F3F), k0f = _mm512_set1_epi32(0x0F0F0F0F),
                  k30 = _mm512_set1_epi32(0x30303030);
    __m512 acc[8];
    for (int s = 0; s < R * T; s++) acc[s] = _mm512_setzero_ps();
    for (int64_t sb = 0; sb < nsb; sb++) {
        const speck_block_q8_k *x[4];
        for (int t = 0; t < T; t++)
            x[t] = (const speck_block_q8_k *)(a->blocks + (size_t)(t0 + t) * krow) + sb;
        const uint8_t *pb[4];
        for (int r = 0; r < R; r++) {
            pb[r] = P + (size_t)(r * pstep) * pbytes + (size_t)sb * bb;
#pragma GCC unroll 8
            for (int c = 0; c < 4; c++)
                _mm_prefetch((const char *)pb[r] + PK_AHEAD * bb + 64 * c, PK_HINT);
        }
        __m512i sumi[8];
        for (int s = 0; s < R * T; s++) sumi[s] = _mm512_setzero_si512();
#pragma GCC unroll 8
        for (int c = 0; c < 4; c++) {
            __m512i lo_acc[8], hi_acc[8];
            for (int s = 0; s < R * T; s++) lo_acc[s] = hi_acc[s] = _mm512_setzero_si512();
#pragma GCC unroll 8
            for (int q = 0; q < 8; q++) {
                __m512i xl[4], xh[4];
                for (int t = 0; t < T; t++) {
                    xl[t] = bcast4(x[t]->qs + 64 * c + 4 * q);
                    xh[t] = bcast4(x[t]->qs + 64 * c + 32 + 4 * q);
                }
                for (int r = 0; r < R; r++) {
                    const uint8_t *g = pb[r] + qs_at + 64 * (8 * c + q);
                    _mm_prefetch((const char *)g + PK_AHEAD * bb, PK_HINT);
                    const __m512i v = _mm512_loadu_si512(g);
                    __m512i lo = _mm512_and_si512(v, m4);
                    __m512i hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
                    if (q5) { // bit 2c (low nibble) / 2c + 1 (high) of qh to bit 4; 0xF8: A | (B & C)
                        const __m512i h = _mm512_loadu_si512(pb[r] + 256 + 64 * q);
                        if (c < 2)
                            _mm_prefetch((const char *)pb[r] + 256 + 64 * (4 * c + q / 2) + PK_AHEAD * bb,
                                         PK_HINT);
                        lo = _mm512_ternarylogic_epi32(lo, shift_bits(h, 4 - 2 * c), b4, 0xF8);
                        hi = _mm512_ternarylogic_epi32(hi, shift_bits(h, 3 - 2 * c), b4, 0xF8);
                    }
                    for (int t = 0; t < T; t++) {
                        lo_acc[t * R + r] = _mm512_dpbusd_epi32(lo_acc[t * R + r], lo, xl[t]);
                        hi_acc[t * R + r] = _mm512_dpbusd_epi32(hi_acc[t * R + r], hi, xh[t]);
                    }
                }
            }
            // Sub-blocks 2c, 2c + 1: scale bytes (2c) % 4, (2c + 1) % 4 of sc_lo (c < 2: the low 6
            // bits of word 0) or sc_hi (word 2's low nibbles, word 0's top bits); DGQ4: of its
            // int8 scale word c / 2.
            for (int r = 0; r < R; r++) {
                __m512i s0, s1;
                if (dgq) {
                    const __m512i w = _mm512_loadu_si512(pb[r] + 32 + 64 * (c / 2));
                    s0 = sbyte(w, (2 * c) % 4), s1 = sbyte(w, (2 * c + 1) % 4);
                } else {
                    const __m512i w0 = _mm512_loadu_si512(pb[r] + 64);
                    const __m512i scv =
                        c < 2 ? _mm512_and_si512(w0, k3f)
                              : _mm512_or_si512(_mm512_and_si512(_mm512_loadu_si512(pb[r] + 192), k0f),
                                                _mm512_and_si512(_mm512_srli_epi32(w0, 2), k30));
                    s0 = dword_byte(scv, (2 * c) % 4), s1 = dword_byte(scv, (2 * c + 1) % 4);
                }
                for (int t = 0; t < T; t++)
                    sumi[t * R + r] = _mm512_add_epi32(
                        sumi[t * R + r], _mm512_add_epi32(_mm512_mullo_epi32(lo_acc[t * R + r], s0),
                                                          _mm512_mullo_epi32(hi_acc[t * R + r], s1)));
            }
        }
        if (dgq) {
            dgq4_offsets(pb, x, sumi, acc, R, T);
            continue;
        }
        __m512i bsp[4][2];
        for (int t = 0; t < T; t++) bsp[t][0] = bs_pair(x[t], 0), bsp[t][1] = bs_pair(x[t], 1);
        for (int r = 0; r < R; r++) {
            // Mins times the sub-blocks' activation sums, two sub-blocks per dpwssd.
            const __m512i w1 = _mm512_loadu_si512(pb[r] + 128), w2 = _mm512_loadu_si512(pb[r] + 192);
            const __m512i m_lo = _mm512_and_si512(w1, k3f);
            const __m512i m_hi = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(w2, 4), k0f),
                                                 _mm512_and_si512(_mm512_srli_epi32(w1, 2), k30));
            const __m512 dv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)pb[r]));
            const __m512 dmv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(pb[r] + 32)));
            for (int t = 0; t < T; t++) {
                // m_lo holds mins 0-3: pairs (0, 2) and (1, 3); m_hi mins 4-7: (4, 6), (5, 7).
                __m512i summ = _mm512_dpwssd_epi32(_mm512_setzero_si512(), pair_even(m_lo), bsp[t][0]);
                summ = _mm512_dpwssd_epi32(summ, pair_odd(m_lo), bsp[t][1]);
                summ = _mm512_dpwssd_epi32(summ, pair_even(m_hi), bs_pair(x[t], 4));
                summ = _mm512_dpwssd_epi32(summ, pair_odd(m_hi), bs_pair(x[t], 5));
                acc[t * R + r] =
                    _mm512_add_ps(acc[t * R + r], k_contrib(dv, dmv, x[t]->d, sumi[t * R + r], summ));
            }
        }
    }
    panel_store(acc, y, ldy, 16 * pstep, m0, m1, accumulate, R, T);
}

/* ---- Q6_K ----------------------------------------------------------------------------------- */

// Panel block (3360 B): d (16 fp16) | scale words 0..3 (the 16 int8 scales, 4 x 64 B) | ql words
// 0..31 | qh words 0..15. For half h and l = 4i (i 0..7) ql words 16h + i and 16h + 8 + i and qh
// word 8h + i give elements 128h + l .. + 3 (low nibbles of the first, qh bits 0-1), 128h + 32 +
// l (low nibbles of the second, bits 2-3), 128h + 64 + l (high nibbles of the first, bits 4-5)
// and 128h + 96 + l (high of the second, bits 6-7): levels 0..63, minus 32 through the
// activations' bsums.
static inline __attribute__((always_inline)) void
pq6k_body(const uint8_t *P, size_t pbytes, int64_t pstep, const speck_mm_act *a, int64_t t0,
          float *y, int64_t ldy, __mmask16 m0, __mmask16 m1, int accumulate, const int R,
          const int T) {
    const int64_t nsb = a->n_in / SB;
    const size_t krow = speck_type_row_size(SPECK_TYPE_Q8_K, a->n_in), bb = 16 * 210;
    const __m512i c0f = _mm512_set1_epi8(0x0F), c30 = _mm512_set1_epi8(0x30);
    __m512 acc[8];
    for (int s = 0; s < R * T; s++) acc[s] = _mm512_setzero_ps();
    for (int64_t sb = 0; sb < nsb; sb++) {
        const speck_block_q8_k *x[4];
        for (int t = 0; t < T; t++)
            x[t] = (const speck_block_q8_k *)(a->blocks + (size_t)(t0 + t) * krow) + sb;
        for (int r = 0; r < R; r++) {
            const uint8_t *pb = P + (size_t)(r * pstep) * pbytes + (size_t)sb * bb;
            for (int c = 0; c < 5; c++) _mm_prefetch((const char *)pb + PK_AHEAD * bb + 64 * c, PK_HINT);
            __m512i sumi[4];
            for (int t = 0; t < T; t++) sumi[t] = _mm512_setzero_si512();
            for (int h = 0; h < 2; h++)
                for (int half = 0; half < 2; half++) { // l < 16, then l >= 16: sub-blocks 8h + 2k + half
                    __m512i ac[4][4]; // [token][k]: elements 128h + 32k + l
                    for (int t = 0; t < T; t++)
                        for (int k = 0; k < 4; k++) ac[t][k] = _mm512_setzero_si512();
                    for (int i = 4 * half; i < 4 * half + 4; i++) {
                        const uint8_t *ga = pb + 288 + 64 * (16 * h + i), *gb = ga + 64 * 8;
                        const uint8_t *gh = pb + 288 + 2048 + 64 * (8 * h + i);
                        _mm_prefetch((const char *)ga + PK_AHEAD * bb, PK_HINT);
                        _mm_prefetch((const char *)gb + PK_AHEAD * bb, PK_HINT);
                        _mm_prefetch((const char *)gh + PK_AHEAD * bb, PK_HINT); // a line per i
                        const __m512i va = _mm512_loadu_si512(ga), vb = _mm512_loadu_si512(gb);
                        const __m512i H = _mm512_loadu_si512(gh);
                        // Bits 4-5 of each level from its qh pair; 0xEC: (A & C) | B with C = 0x0F.
                        const __m512i q[4] = {
                            _mm512_ternarylogic_epi32(va, _mm512_and_si512(_mm512_slli_epi32(H, 4), c30), c0f, 0xEC),
                            _mm512_ternarylogic_epi32(vb, _mm512_and_si512(_mm512_slli_epi32(H, 2), c30), c0f, 0xEC),
                            _mm512_ternarylogic_epi32(_mm512_srli_epi32(va, 4), _mm512_and_si512(H, c30), c0f, 0xEC),
                            _mm512_ternarylogic_epi32(_mm512_srli_epi32(vb, 4), _mm512_and_si512(_mm512_srli_epi32(H, 2), c30), c0f, 0xEC)};
                        for (int t = 0; t < T; t++)
                            for (int k = 0; k < 4; k++)
                                ac[t][k] = _mm512_dpbusd_epi32(ac[t][k], q[k],
                                                               bcast4(x[t]->qs + 128 * h + 32 * k + 4 * i));
                    }
                    for (int k = 0; k < 4; k++) {
                        const int j = 8 * h + 2 * k + half; // sub-block of 16
                        // Its 16 rows' int8 scale: byte j % 4 of scale word j / 4, sign-extended.
                        const __m512i w = _mm512_loadu_si512(pb + 32 + 64 * (j / 4));
                        const __m512i sc = _mm512_srai_epi32(_mm512_slli_epi32(w, 24 - 8 * (j % 4)), 24);
                        for (int t = 0; t < T; t++) {
                            const __m512i off = _mm512_set1_epi32(32 * x[t]->bsums[j]);
                            sumi[t] = _mm512_add_epi32(
                                sumi[t], _mm512_mullo_epi32(_mm512_sub_epi32(ac[t][k], off), sc));
                        }
                    }
                }
            const __m512 dv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)pb));
            for (int t = 0; t < T; t++) {
                const __m512 c = _mm512_mul_ps(_mm512_mul_ps(dv, _mm512_set1_ps(x[t]->d)),
                                               _mm512_cvtepi32_ps(sumi[t]));
                acc[t * R + r] = _mm512_add_ps(acc[t * R + r], c);
            }
        }
    }
    panel_store(acc, y, ldy, 16 * pstep, m0, m1, accumulate, R, T);
}

/* ---- IQ4_XS --------------------------------------------------------------------------------- */

// Panel block (2176 B): d | scales_h (16 x 2 B) | scales_l words | qs words 0..31. Word g of qs
// holds bytes 4g..4g+3 of each row: sub-block j = g / 4, low nibbles elements 32j + 4(g % 4) ..,
// high nibbles 32j + 16 + 4(g % 4) ..; levels are the grid + 128 (unsigned), the 128 taken out
// through the activations' bsums.
static inline __attribute__((always_inline)) void
pq4xs_body(const uint8_t *P, size_t pbytes, int64_t pstep, const speck_mm_act *a, int64_t t0,
           float *y, int64_t ldy, __mmask16 m0, __mmask16 m1, int accumulate, const int R,
           const int T) {
    const int64_t nsb = a->n_in / SB;
    const size_t krow = speck_type_row_size(SPECK_TYPE_Q8_K, a->n_in), bb = 16 * 136;
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const __m512i grid = _mm512_broadcast_i32x4(_mm_setr_epi8(
        (char)1, (char)24, (char)45, (char)63, (char)79, (char)93, (char)106, (char)118, (char)129,
        (char)141, (char)153, (char)166, (char)181, (char)197, (char)217, (char)241));
    __m512 acc[8];
    for (int s = 0; s < R * T; s++) acc[s] = _mm512_setzero_ps();
    for (int64_t sb = 0; sb < nsb; sb++) {
        const speck_block_q8_k *x[4];
        for (int t = 0; t < T; t++)
            x[t] = (const speck_block_q8_k *)(a->blocks + (size_t)(t0 + t) * krow) + sb;
        for (int r = 0; r < R; r++) {
            const uint8_t *pb = P + (size_t)(r * pstep) * pbytes + (size_t)sb * bb;
            _mm_prefetch((const char *)pb + PK_AHEAD * bb, PK_HINT);
            _mm_prefetch((const char *)pb + PK_AHEAD * bb + 64, PK_HINT);
            const __m512i sh = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(pb + 32)));
            const __m512i sl = _mm512_loadu_si512(pb + 64);
            __m512i sumi[4];
            for (int t = 0; t < T; t++) sumi[t] = _mm512_setzero_si512();
            for (int j = 0; j < 8; j++) {
                __m512i ac[4];
                for (int t = 0; t < T; t++) ac[t] = _mm512_setzero_si512();
                for (int q = 0; q < 4; q++) {
                    const uint8_t *g = pb + 128 + 64 * (4 * j + q);
                    _mm_prefetch((const char *)g + PK_AHEAD * bb, PK_HINT);
                    const __m512i v = _mm512_loadu_si512(g);
                    const __m512i lo = _mm512_shuffle_epi8(grid, _mm512_and_si512(v, m4));
                    const __m512i hi = _mm512_shuffle_epi8(grid, _mm512_and_si512(_mm512_srli_epi16(v, 4), m4));
                    for (int t = 0; t < T; t++) {
                        ac[t] = _mm512_dpbusd_epi32(ac[t], lo, bcast4(x[t]->qs + 32 * j + 4 * q));
                        ac[t] = _mm512_dpbusd_epi32(ac[t], hi, bcast4(x[t]->qs + 32 * j + 16 + 4 * q));
                    }
                }
                // ls_j - 32: nibble j % 2 of byte j / 2 of scales_l, bits 2j.. of scales_h.
                const __m512i ls = _mm512_or_si512(
                    _mm512_and_si512(_mm512_srli_epi32(sl, 8 * (j / 2) + 4 * (j % 2)), _mm512_set1_epi32(0xF)),
                    _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(sh, 2 * j), _mm512_set1_epi32(3)), 4));
                const __m512i sc = _mm512_sub_epi32(ls, _mm512_set1_epi32(32));
                for (int t = 0; t < T; t++) {
                    const int bs = x[t]->bsums[2 * j] + x[t]->bsums[2 * j + 1];
                    const __m512i is = _mm512_sub_epi32(ac[t], _mm512_set1_epi32(128 * bs));
                    sumi[t] = _mm512_add_epi32(sumi[t], _mm512_mullo_epi32(is, sc));
                }
            }
            const __m512 dv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)pb));
            for (int t = 0; t < T; t++)
                acc[t * R + r] = _mm512_add_ps(
                    acc[t * R + r], _mm512_mul_ps(_mm512_mul_ps(dv, _mm512_set1_ps(x[t]->d)),
                                                  _mm512_cvtepi32_ps(sumi[t])));
        }
    }
    panel_store(acc, y, ldy, 16 * pstep, m0, m1, accumulate, R, T);
}

/* ---- Q2_K and Q3_K -------------------------------------------------------------------------- */

// Panel blocks: Q2_K (1344 B): d | dmin | scale words 0..3 (byte j: sc | m << 4 of sub-block j)
// | qs words 0..15; Q3_K (1760 B): d | scale words 0..2 (the 12 bytes) | hmask words 0..7 | qs
// words 0..15. qs word g holds bytes 4g..4g+3 of each row: with h = g / 8, q = g % 8, bits 2s..
// of its bytes are elements 128h + 32s + 4q .. (sub-block 8h + 2s + q / 4); Q3_K's third bit is
// bit 4h + s of hmask word q. Levels are unsigned (Q3_K: + 4, taken out through the bsums).
static inline __attribute__((always_inline)) void
pq23k_body(const uint8_t *P, size_t pbytes, int64_t pstep, const speck_mm_act *a, int64_t t0,
           float *y, int64_t ldy, __mmask16 m0, __mmask16 m1, int accumulate, const int q3,
           const int R, const int T) {
    const int64_t nsb = a->n_in / SB;
    const size_t krow = speck_type_row_size(SPECK_TYPE_Q8_K, a->n_in), bb = 16 * (q3 ? 110 : 84);
    const size_t qs_at = q3 ? 736 : 320;
    const __m512i k0f = _mm512_set1_epi32(0x0F0F0F0F), k03 = _mm512_set1_epi32(0x03030303);
    __m512 acc[8];
    for (int s = 0; s < R * T; s++) acc[s] = _mm512_setzero_ps();
    for (int64_t sb = 0; sb < nsb; sb++) {
        const speck_block_q8_k *x[4];
        for (int t = 0; t < T; t++)
            x[t] = (const speck_block_q8_k *)(a->blocks + (size_t)(t0 + t) * krow) + sb;
        for (int r = 0; r < R; r++) {
            const uint8_t *pb = P + (size_t)(r * pstep) * pbytes + (size_t)sb * bb;
            for (size_t c = 0; c < qs_at; c += 64) _mm_prefetch((const char *)pb + PK_AHEAD * bb + c, PK_HINT);
            // The 16 sub-block scales as four dwords of bytes (sub-blocks 4k .. 4k + 3): Q2_K's low
            // nibbles (its mins in the high ones); Q3_K's 6-bit scales minus 32 (signed bytes).
            __m512i scw[4];
            if (q3) {
                const __m512i w0 = _mm512_loadu_si512(pb + 32), w1 = _mm512_loadu_si512(pb + 96),
                              w2 = _mm512_loadu_si512(pb + 160);
                const __m512i lo[4] = {_mm512_and_si512(w0, k0f), _mm512_and_si512(w1, k0f),
                                       _mm512_and_si512(_mm512_srli_epi32(w0, 4), k0f),
                                       _mm512_and_si512(_mm512_srli_epi32(w1, 4), k0f)};
                for (int k = 0; k < 4; k++) {
                    const __m512i hi = _mm512_and_si512(_mm512_srli_epi32(w2, 2 * k), k03);
                    scw[k] = _mm512_sub_epi8(_mm512_or_si512(lo[k], _mm512_slli_epi32(hi, 4)),
                                             _mm512_set1_epi8(32));
                }
            } else {
                for (int k = 0; k < 4; k++) scw[k] = _mm512_loadu_si512(pb + 64 + 64 * k);
            }
            __m512i sumi[4], summ[4];
            for (int t = 0; t < T; t++) sumi[t] = summ[t] = _mm512_setzero_si512();
#pragma GCC unroll 2
            for (int h = 0; h < 2; h++)
#pragma GCC unroll 4
                for (int s = 0; s < 4; s++) {
                    // Crumb s kept in place (levels times 4^s); Q3_K's third bit moved just above
                    // it (bit 2s + 2; for s = 3, whose crumb fills the byte's top, the crumb is
                    // moved down to bits 4-5 and the third bit to 6: times 16): no shift of the
                    // quants, one per sub-block at the end.
                    const int sh = q3 && s == 3 ? 4 : 2 * s; // the levels' place
                    __m512i ac[4][2];
                    for (int t = 0; t < T; t++) ac[t][0] = ac[t][1] = _mm512_setzero_si512();
                    const __m512i cm = _mm512_set1_epi8((char)(3 << sh));
                    const __m512i hb = _mm512_set1_epi8((char)(1 << (4 * h + s)));
#pragma GCC unroll 8
                    for (int q = 0; q < 8; q++) {
                        const uint8_t *g = pb + qs_at + 64 * (8 * h + q);
                        if (s == 0) _mm_prefetch((const char *)g + PK_AHEAD * bb, PK_HINT);
                        __m512i v = _mm512_loadu_si512(g), u;
                        if (q3) {
                            if (sh != 2 * s) v = _mm512_srli_epi32(v, 2 * s - sh);
                            const __m512i hv = _mm512_and_si512(_mm512_loadu_si512(pb + 224 + 64 * q), hb);
                            // 0xEC: (A & C) | B
                            u = _mm512_ternarylogic_epi32(v, shift_bits(hv, sh + 2 - (4 * h + s)), cm, 0xEC);
                        } else {
                            u = _mm512_and_si512(v, cm);
                        }
                        for (int t = 0; t < T; t++) {
                            const __m512i xv = bcast4(x[t]->qs + 128 * h + 32 * s + 4 * q);
                            ac[t][q / 4] = _mm512_dpbusd_epi32(ac[t][q / 4], u, xv);
                        }
                    }
                    for (int half = 0; half < 2; half++) {
                        const int j = 8 * h + 2 * s + half;
                        // Scale byte j % 4 of word j / 4, sign- (Q3_K) or zero-extended (Q2_K).
                        const __m512i sw = scw[j / 4];
                        const __m512i sc =
                            q3 ? _mm512_srai_epi32(_mm512_slli_epi32(sw, 24 - 8 * (j % 4)), 24)
                               : _mm512_and_si512(_mm512_srli_epi32(sw, 8 * (j % 4)), _mm512_set1_epi32(0xF));
                        for (int t = 0; t < T; t++) {
                            __m512i is = _mm512_srai_epi32(ac[t][half], sh);
                            if (q3) // level = low2 + 4 * hbit - 4
                                is = _mm512_sub_epi32(is, _mm512_set1_epi32(4 * x[t]->bsums[j]));
                            sumi[t] = _mm512_add_epi32(sumi[t], _mm512_mullo_epi32(is, sc));
                        }
                    }
                }
            if (!q3) {
                // Mins (the scale bytes' high nibbles) times the bsums, two sub-blocks per dpwssd:
                // bytes (0, 2) and (1, 3) of each word as int16 pairs.
                for (int k = 0; k < 4; k++) {
                    const __m512i mw = _mm512_and_si512(_mm512_srli_epi32(scw[k], 4), k0f);
                    for (int t = 0; t < T; t++) {
                        const int16_t *bs = x[t]->bsums + 4 * k;
                        const __m512i b02 = _mm512_set1_epi32((int)((uint32_t)(uint16_t)bs[0] | (uint32_t)(uint16_t)bs[2] << 16));
                        const __m512i b13 = _mm512_set1_epi32((int)((uint32_t)(uint16_t)bs[1] | (uint32_t)(uint16_t)bs[3] << 16));
                        summ[t] = _mm512_dpwssd_epi32(summ[t], pair_even(mw), b02);
                        summ[t] = _mm512_dpwssd_epi32(summ[t], pair_odd(mw), b13);
                    }
                }
            }
            const __m512 dv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)pb));
            const __m512 dmv = q3 ? _mm512_setzero_ps()
                                  : _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(pb + 32)));
            for (int t = 0; t < T; t++) {
                const __m512 c =
                    q3 ? _mm512_mul_ps(_mm512_mul_ps(dv, _mm512_set1_ps(x[t]->d)), _mm512_cvtepi32_ps(sumi[t]))
                       : k_contrib(dv, dmv, x[t]->d, sumi[t], summ[t]);
                acc[t * R + r] = _mm512_add_ps(acc[t * R + r], c);
            }
        }
    }
    panel_store(acc, y, ldy, 16 * pstep, m0, m1, accumulate, R, T);
}

// An entry point taking np panels x nt tokens as 4 x 1, 2 x 2, 2 x 3, 1 x 4 (the table's
// panel_group) or fewer panels at the end of a range, from BODY(R, T).
#define PANEL_ENTRY(NAME, BODY)                                                                    \
    void NAME(const void *Pv, size_t pbytes, int np, int64_t pstep, const speck_mm_act *a,         \
              int64_t t0, int nt, float *y, int64_t ldy, unsigned m0, unsigned m1,                 \
              int accumulate) {                                                                    \
        const uint8_t *P = Pv;                                                                     \
        const __mmask16 k0 = (__mmask16)m0, k1 = (__mmask16)m1;                                    \
        if (nt == 1 && np >= 4)                                                                    \
            BODY(4, 1);                                                                            \
        else if (nt == 1 && np == 3)                                                               \
            BODY(3, 1);                                                                            \
        else if (nt == 1 && np == 2)                                                               \
            BODY(2, 1);                                                                            \
        else if (nt == 1)                                                                          \
            BODY(1, 1);                                                                            \
        else if (nt == 2 && np >= 2)                                                               \
            BODY(2, 2);                                                                            \
        else if (nt == 2)                                                                          \
            BODY(1, 2);                                                                            \
        else if (nt == 3 && np >= 2)                                                               \
            BODY(2, 3);                                                                            \
        else if (nt == 3)                                                                          \
            BODY(1, 3);                                                                            \
        else                                                                                       \
            BODY(1, 4);                                                                            \
    }

#define ARGS P, pbytes, pstep, a, t0, y, ldy, k0, k1, accumulate
#define Q4K(R, T) pq45k_body(ARGS, PK_Q4K, R, T)
#define Q5K(R, T) pq45k_body(ARGS, PK_Q5K, R, T)
#define Q6K(R, T) pq6k_body(ARGS, R, T)
#define IQ4XS(R, T) pq4xs_body(ARGS, R, T)
#define Q2K(R, T) pq23k_body(ARGS, 0, R, T)
#define Q3K(R, T) pq23k_body(ARGS, 1, R, T)
#define DGQ4(R, T) pq45k_body(ARGS, PK_DGQ4, R, T)
PANEL_ENTRY(speck_panel_q2_k_avx512, Q2K)
PANEL_ENTRY(speck_panel_q3_k_avx512, Q3K)
PANEL_ENTRY(speck_panel_iq4_xs_avx512, IQ4XS)
PANEL_ENTRY(speck_panel_q4_k_avx512, Q4K)
PANEL_ENTRY(speck_panel_q5_k_avx512, Q5K)
PANEL_ENTRY(speck_panel_q6_k_avx512, Q6K)
PANEL_ENTRY(speck_panel_dgq4_avx512, DGQ4)
