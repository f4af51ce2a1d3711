// Row kernels of the src/quant/ block types in AVX2 intrinsics, included by quant_avx2.c and
// quant_avx512.c (each compiles them for its ISA; the panel kernels are per ISA). Every function
// follows quant.h's dot contract: exact int32 sums per scale group, then the group's float
// contribution with separately rounded products, added in group order — so the results equal
// the scalar reference's bit for bit. The files that include this are built with
// -ffp-contract=off so that no multiply-add is fused.
//
// Weights are unpacked into "levels": unsigned bytes in element order, 32 per ymm, with the
// type's offset (level = byte - off) taken out through the activations' block sums. IQ4 levels
// are grid indices, multiplied as |K| with the activation's sign flipped where K < 0.
#ifndef SPECK_QUANT_ROWS_H
#define SPECK_QUANT_ROWS_H

#include <immintrin.h>
#include <string.h>

#include "kernels/kernels_internal.h"

#define QR_QKK SPECK_QK_K

static inline uint32_t qr_u32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static inline int32_t qr_hsum8(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}

/* ---- Q8_K activations ---------------------------------------------------------------------- */

// x: (n) -> y: n / 256 blocks, bit-identical to speck_quant_q8_k_ref: cvtps rounds to nearest
// even exactly as the reference's 1.5 * 2^23 trick does for |v| <= 127.
static inline void qr_quantize_q8_k(const float *x, speck_block_q8_k *y, int64_t n) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t b = 0; b < n / QR_QKK; b++, x += QR_QKK) {
        __m256 m = _mm256_setzero_ps();
        for (int k = 0; k < 32; k++) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + 8 * k)));
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        const float amax = _mm_cvtss_f32(m4);
        if (amax == 0.0f) {
            memset(&y[b], 0, sizeof y[b]);
            continue;
        }
        // The first value of largest magnitude sets the sign (as the reference's strict >).
        float max = 0.0f;
        const __m256 va = _mm256_set1_ps(amax);
        for (int k = 0; k < 32; k++) {
            const int hit = _mm256_movemask_ps(
                _mm256_cmp_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(x + 8 * k)), va, _CMP_EQ_OQ));
            if (hit) {
                max = x[8 * k + __builtin_ctz((unsigned)hit)];
                break;
            }
        }
        const float is = -127.f / max;
        const __m256 vis = _mm256_set1_ps(is);
        for (int k = 0; k < 8; k++) {
            __m256i i[4];
            for (int j = 0; j < 4; j++)
                i[j] = _mm256_cvtps_epi32(_mm256_mul_ps(vis, _mm256_loadu_ps(x + 32 * k + 8 * j)));
            __m256i p8 = _mm256_packs_epi16(_mm256_packs_epi32(i[0], i[1]),
                                            _mm256_packs_epi32(i[2], i[3]));
            p8 = _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            _mm256_storeu_si256((__m256i *)(y[b].qs + 32 * k), p8);
            // Sums of 16: widen to int16 and add pairs down to the two 16-value sums.
            const __m256i w = _mm256_maddubs_epi16(_mm256_set1_epi8(1), p8); // pairs (|.| <= 254)
            __m256i s = _mm256_madd_epi16(w, _mm256_set1_epi16(1));       // quads, int32
            s = _mm256_hadd_epi32(s, s);                                   // [q01 q23 . . | ...]
            s = _mm256_hadd_epi32(s, s);
            y[b].bsums[2 * k] = (int16_t)_mm256_extract_epi32(s, 0);
            y[b].bsums[2 * k + 1] = (int16_t)_mm256_extract_epi32(s, 4);
        }
        y[b].d = 1 / is;
    }
}

/* ---- K-quant super-blocks as levels ---------------------------------------------------------- */

// One super-block unpacked: q[i] the levels of elements 32i .. 32i + 31; sc the 16 sub-block
// scales per 16 values (int16; 32-value sub-blocks repeat theirs); mn the mins per 16 values
// (types with mins); off the level offset; d / dmin the fp16 scales widened.
typedef struct {
    __m256i q[8];
    __m256i sc, mn;
    float d, dmin;
} qr_sb;

// The 2-bit fields of a Q2_K / Q3_K qs: element 32i + l (i = 4h + s) is bits 2s.. of
// qs[32h + l].
static inline void qr_crumbs(const uint8_t *qs, __m256i q[8]) {
    const __m256i m3 = _mm256_set1_epi8(3);
    for (int h = 0; h < 2; h++) {
        const __m256i v = _mm256_loadu_si256((const __m256i *)(qs + 32 * h));
        q[4 * h] = _mm256_and_si256(v, m3);
        q[4 * h + 1] = _mm256_and_si256(_mm256_srli_epi16(v, 2), m3);
        q[4 * h + 2] = _mm256_and_si256(_mm256_srli_epi16(v, 4), m3);
        q[4 * h + 3] = _mm256_and_si256(_mm256_srli_epi16(v, 6), m3);
    }
}

// Bit i of each byte of v (32 bytes) as 0 / 1 << shl.
static inline __m256i qr_bit(__m256i v, int i, int shl) {
    const __m256i one = _mm256_set1_epi8(1);
    const __m256i b = _mm256_and_si256(_mm256_srli_epi16(v, i), one);
    return shl ? _mm256_slli_epi16(b, shl) : b; // bytes stay < 0x80: no carry across bytes
}

// Per-16 scales from 16 bytes (signed or unsigned) as int16.
static inline __m256i qr_sc16_u8(const uint8_t *s) {
    return _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)s));
}

// Q4_K / Q5_K: the 8 six-bit scales and mins of 12 scale bytes, each repeated for the two
// 16-value halves of its 32-value sub-block, as int16.
static inline void qr_k4_scales(const uint8_t *s, __m256i *sc, __m256i *mn) {
    const uint32_t w0 = qr_u32(s), w1 = qr_u32(s + 4), w2 = qr_u32(s + 8);
    const uint32_t sc_lo = w0 & 0x3F3F3F3Fu, m_lo = w1 & 0x3F3F3F3Fu;
    const uint32_t sc_hi = (w2 & 0x0F0F0F0Fu) | ((w0 >> 2) & 0x30303030u);
    const uint32_t m_hi = ((w2 >> 4) & 0x0F0F0F0Fu) | ((w1 >> 2) & 0x30303030u);
    const __m128i v = _mm_setr_epi32((int)sc_lo, (int)sc_hi, (int)m_lo, (int)m_hi);
    // Each byte twice: [sc0 sc0 sc1 sc1 ... sc7 sc7] and the same for the mins.
    const __m128i dup = _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
    *sc = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(v, dup));
    *mn = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(_mm_srli_si128(v, 8), dup));
}

static inline void qr_unpack_q2_k(const speck_block_q2_k *b, qr_sb *u) {
    qr_crumbs(b->qs, u->q);
    const __m128i s = _mm_loadu_si128((const __m128i *)b->scales);
    u->sc = _mm256_cvtepu8_epi16(_mm_and_si128(s, _mm_set1_epi8(0xF)));
    u->mn = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(s, 4), _mm_set1_epi8(0xF)));
    u->d = _cvtsh_ss(b->d);
    u->dmin = _cvtsh_ss(b->dmin);
}

// Q3_K: levels low2 + 4 * hbit (0..7; off 4); scales 6-bit minus 32.
static inline void qr_unpack_q3_k(const speck_block_q3_k *b, qr_sb *u) {
    qr_crumbs(b->qs, u->q);
    const __m256i hm = _mm256_loadu_si256((const __m256i *)b->hmask);
    for (int i = 0; i < 8; i++) u->q[i] = _mm256_or_si256(u->q[i], qr_bit(hm, i, 2));
    const uint32_t w0 = qr_u32(b->scales), w1 = qr_u32(b->scales + 4), w2 = qr_u32(b->scales + 8);
    const uint32_t k = 0x0F0F0F0Fu, h = 0x03030303u;
    const __m128i v = _mm_setr_epi32((int)((w0 & k) | ((w2 & h) << 4)),
                                     (int)((w1 & k) | (((w2 >> 2) & h) << 4)),
                                     (int)(((w0 >> 4) & k) | (((w2 >> 4) & h) << 4)),
                                     (int)(((w1 >> 4) & k) | (((w2 >> 6) & h) << 4)));
    u->sc = _mm256_sub_epi16(_mm256_cvtepu8_epi16(v), _mm256_set1_epi16(32));
    u->d = _cvtsh_ss(b->d);
}

static inline void qr_nibbles(const uint8_t *qs, __m256i q[8]) {
    const __m256i m4 = _mm256_set1_epi8(0xF);
    for (int c = 0; c < 4; c++) {
        const __m256i v = _mm256_loadu_si256((const __m256i *)(qs + 32 * c));
        q[2 * c] = _mm256_and_si256(v, m4);
        q[2 * c + 1] = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
    }
}

static inline void qr_unpack_q4_k(const speck_block_q4_k *b, qr_sb *u) {
    qr_nibbles(b->qs, u->q);
    qr_k4_scales(b->scales, &u->sc, &u->mn);
    u->d = _cvtsh_ss(b->d);
    u->dmin = _cvtsh_ss(b->dmin);
}

static inline void qr_unpack_q5_k(const speck_block_q5_k *b, qr_sb *u) {
    qr_nibbles(b->qs, u->q);
    const __m256i qh = _mm256_loadu_si256((const __m256i *)b->qh);
    for (int i = 0; i < 8; i++) u->q[i] = _mm256_or_si256(u->q[i], qr_bit(qh, i, 4));
    qr_k4_scales(b->scales, &u->sc, &u->mn);
    u->d = _cvtsh_ss(b->d);
    u->dmin = _cvtsh_ss(b->dmin);
}

// Q6_K: levels 0..63 (off 32).
static inline void qr_unpack_q6_k(const speck_block_q6_k *b, qr_sb *u) {
    const __m256i m4 = _mm256_set1_epi8(0xF), m3 = _mm256_set1_epi8(3);
    for (int h = 0; h < 2; h++) {
        const __m256i A = _mm256_loadu_si256((const __m256i *)(b->ql + 64 * h));
        const __m256i B = _mm256_loadu_si256((const __m256i *)(b->ql + 64 * h + 32));
        const __m256i H = _mm256_loadu_si256((const __m256i *)(b->qh + 32 * h));
        const __m256i lo[4] = {_mm256_and_si256(A, m4), _mm256_and_si256(B, m4),
                               _mm256_and_si256(_mm256_srli_epi16(A, 4), m4),
                               _mm256_and_si256(_mm256_srli_epi16(B, 4), m4)};
        for (int g = 0; g < 4; g++) {
            const __m256i top = _mm256_and_si256(_mm256_srli_epi16(H, 2 * g), m3);
            u->q[4 * h + g] = _mm256_or_si256(lo[g], _mm256_slli_epi16(top, 4));
        }
    }
    u->sc = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)b->scales));
    u->d = _cvtsh_ss(b->d);
}

// IQ4_XS: grid indices (the core looks the values up); scales ls - 32 per 32 values.
static inline void qr_unpack_iq4_xs(const speck_block_iq4_xs *b, qr_sb *u) {
    const __m256i m4 = _mm256_set1_epi8(0xF);
    for (int j = 0; j < 8; j++) {
        const __m128i v = _mm_loadu_si128((const __m128i *)(b->qs + 16 * j));
        u->q[j] = _mm256_and_si256(
            _mm256_inserti128_si256(_mm256_castsi128_si256(v), _mm_srli_epi16(v, 4), 1), m4);
    }
    int16_t s[16];
    for (int j = 0; j < 8; j++) s[2 * j] = s[2 * j + 1] = (int16_t)(speck_iq4xs_scale(b, j) - 32);
    u->sc = _mm256_loadu_si256((const __m256i *)s);
    u->d = _cvtsh_ss(b->d);
}

// DGQ4: levels 0..15 (off 8) in Q4_K's nibble order; its int8 group scale per 32 values.
static inline void qr_unpack_dgq4(const speck_block_dgq4 *b, qr_sb *u) {
    qr_nibbles(b->qs, u->q);
    int16_t s[16];
    for (int j = 0; j < 8; j++) s[2 * j] = s[2 * j + 1] = b->sc[j];
    u->sc = _mm256_loadu_si256((const __m256i *)s);
    u->d = _cvtsh_ss(b->d);
}

/* ---- K-quant dots ---------------------------------------------------------------------------- */

enum { QR_Q2K, QR_Q3K, QR_Q4K, QR_Q5K, QR_Q6K, QR_IQ4XS, QR_DGQ4 };

static inline __attribute__((always_inline)) void qr_unpack(const void *w, int64_t i, const int kt,
                                                            qr_sb *u) {
    switch (kt) {
    case QR_Q2K:
        qr_unpack_q2_k((const speck_block_q2_k *)w + i, u);
        break;
    case QR_Q3K:
        qr_unpack_q3_k((const speck_block_q3_k *)w + i, u);
        break;
    case QR_Q4K:
        qr_unpack_q4_k((const speck_block_q4_k *)w + i, u);
        break;
    case QR_Q5K:
        qr_unpack_q5_k((const speck_block_q5_k *)w + i, u);
        break;
    case QR_Q6K:
        qr_unpack_q6_k((const speck_block_q6_k *)w + i, u);
        break;
    case QR_DGQ4:
        qr_unpack_dgq4((const speck_block_dgq4 *)w + i, u);
        break;
    default:
        qr_unpack_iq4_xs((const speck_block_iq4_xs *)w + i, u);
        break;
    }
}

// The grid as |K| (unsigned) and as the sign of K (-1 / +1), in both 128-bit lanes.
static inline __m256i qr_iq4_abs(void) {
    return _mm256_setr_epi8(127, 104, 83, 65, 49, 35, 22, 10, 1, 13, 25, 38, 53, 69, 89, 113, 127,
                            104, 83, 65, 49, 35, 22, 10, 1, 13, 25, 38, 53, 69, 89, 113);
}
static inline __m256i qr_iq4_sign(void) {
    return _mm256_setr_epi8(-1, -1, -1, -1, -1, -1, -1, -1, 1, 1, 1, 1, 1, 1, 1, 1, -1, -1, -1, -1,
                            -1, -1, -1, -1, 1, 1, 1, 1, 1, 1, 1, 1);
}

// Scales of elements 32i .. 32i + 31 per int16 pair: lanes 0-7 scale 2i, lanes 8-15 2i + 1.
static inline void qr_pair_scales(__m256i sc, __m256i S[8]) {
    const __m256i lo = _mm256_permute2x128_si256(sc, sc, 0x00),
                  hi = _mm256_permute2x128_si256(sc, sc, 0x11);
    for (int i = 0; i < 4; i++) {
        const int a = 2 * (2 * i), b = 2 * (2 * i + 1); // byte offsets of words 2i, 2i + 1
        const __m256i ctl = _mm256_setr_epi8(a, a + 1, a, a + 1, a, a + 1, a, a + 1, a, a + 1, a,
                                             a + 1, a, a + 1, a, a + 1, b, b + 1, b, b + 1, b,
                                             b + 1, b, b + 1, b, b + 1, b, b + 1, b, b + 1, b,
                                             b + 1);
        S[i] = _mm256_shuffle_epi8(lo, ctl);
        S[4 + i] = _mm256_shuffle_epi8(hi, ctl);
    }
}

// One weight row of a K-quant / IQ4_XS type x nt Q8_K token rows (a + t * arow bytes): out[t].
static inline __attribute__((always_inline)) void qr_kdot(const void *w, const char *a, size_t arow,
                                                          int64_t n, const int kt, const int nt,
                                                          float *out) {
    const int off = kt == QR_Q3K ? 4 : kt == QR_Q6K ? 32 : kt == QR_DGQ4 ? 8 : 0;
    const int has_min = kt == QR_Q2K || kt == QR_Q4K || kt == QR_Q5K;
    float acc[SPECK_MT];
    for (int t = 0; t < nt; t++) acc[t] = 0.0f;
    for (int64_t i = 0; i < n / QR_QKK; i++) {
        qr_sb u;
        qr_unpack(w, i, kt, &u);
        __m256i S[8], sgn[8];
        qr_pair_scales(u.sc, S);
        if (kt == QR_IQ4XS)
            for (int k = 0; k < 8; k++) {
                sgn[k] = _mm256_shuffle_epi8(qr_iq4_sign(), u.q[k]);
                u.q[k] = _mm256_shuffle_epi8(qr_iq4_abs(), u.q[k]);
            }
        const __m256i osc = _mm256_mullo_epi16(u.sc, _mm256_set1_epi16((short)-off));
        for (int t = 0; t < nt; t++) {
            const speck_block_q8_k *y = (const speck_block_q8_k *)(a + (size_t)t * arow) + i;
            __m256i s = _mm256_setzero_si256();
            for (int k = 0; k < 8; k++) {
                __m256i av = _mm256_loadu_si256((const __m256i *)(y->qs + 32 * k));
                if (kt == QR_IQ4XS) av = _mm256_sign_epi8(av, sgn[k]);
                s = _mm256_add_epi32(s, _mm256_madd_epi16(_mm256_maddubs_epi16(u.q[k], av), S[k]));
            }
            const __m256i bs = _mm256_loadu_si256((const __m256i *)y->bsums);
            if (off) s = _mm256_add_epi32(s, _mm256_madd_epi16(bs, osc));
            const float da = y->d;
            const float c = (u.d * da) * (float)qr_hsum8(s);
            if (has_min) {
                const float cm = (u.dmin * da) * (float)qr_hsum8(_mm256_madd_epi16(bs, u.mn));
                acc[t] += c - cm;
            } else {
                acc[t] += c;
            }
        }
    }
    for (int t = 0; t < nt; t++) out[t] = acc[t];
}

/* ---- 32-value types against split Q8_0 activations ------------------------------------------- */

enum { QR_Q41, QR_Q50, QR_Q51, QR_IQ4NL };

// Block b of a 32-value type: levels (element order) and its scale / min as stored (fp16).
static inline __attribute__((always_inline)) __m256i qr_unpack32(const void *w, int64_t b,
                                                                 const int qt, uint16_t *d,
                                                                 uint16_t *m) {
    const uint8_t *qs, *qh = NULL;
    uint16_t hd, hm = 0;
    switch (qt) {
    case QR_Q41: {
        const speck_block_q4_1 *x = (const speck_block_q4_1 *)w + b;
        qs = x->qs, hd = x->d, hm = x->m;
        break;
    }
    case QR_Q50: {
        const speck_block_q5_0 *x = (const speck_block_q5_0 *)w + b;
        qs = x->qs, qh = x->qh, hd = x->d;
        break;
    }
    case QR_Q51: {
        const speck_block_q5_1 *x = (const speck_block_q5_1 *)w + b;
        qs = x->qs, qh = x->qh, hd = x->d, hm = x->m;
        break;
    }
    default: {
        const speck_block_iq4_nl *x = (const speck_block_iq4_nl *)w + b;
        qs = x->qs, hd = x->d;
        break;
    }
    }
    *d = hd;
    *m = hm;
    const __m128i v = _mm_loadu_si128((const __m128i *)qs);
    __m256i q = _mm256_and_si256(
        _mm256_inserti128_si256(_mm256_castsi128_si256(v), _mm_srli_epi16(v, 4), 1),
        _mm256_set1_epi8(0xF));
    if (qh) {
        // Bit j of the 32-bit qh to byte j: broadcast, pick byte j / 8, test bit j % 8.
        const __m256i h = _mm256_set1_epi32((int)qr_u32(qh));
        const __m256i pick = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2,
                                              2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
        const __m256i bit = _mm256_set1_epi64x(0x8040201008040201LL);
        const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_shuffle_epi8(h, pick), bit), bit);
        q = _mm256_or_si256(q, _mm256_and_si256(set, _mm256_set1_epi8(0x10)));
    }
    return q;
}

// v with word j (a constant after unrolling) replaced by x.
static inline __attribute__((always_inline)) __m128i qr_insert16(__m128i v, uint16_t x, const int j) {
    switch (j) {
    case 0:
        return _mm_insert_epi16(v, x, 0);
    case 1:
        return _mm_insert_epi16(v, x, 1);
    case 2:
        return _mm_insert_epi16(v, x, 2);
    case 3:
        return _mm_insert_epi16(v, x, 3);
    case 4:
        return _mm_insert_epi16(v, x, 4);
    case 5:
        return _mm_insert_epi16(v, x, 5);
    case 6:
        return _mm_insert_epi16(v, x, 6);
    default:
        return _mm_insert_epi16(v, x, 7);
    }
}

// One weight row of a 32-value type x nt token rows t0.. of the split Q8_0 layout: out[t].
// Blocks go 8 at a time: their int32 sums are reduced together, the contributions computed in
// 8 lanes, then added to each token's sum in block order.
static inline __attribute__((always_inline)) void qr_dot32(const void *w, const speck_q8_rows *a,
                                                           int64_t t0, const int qt, const int nt,
                                                           float *out) {
    const int64_t n = a->n, nb = n / 32;
    const int has_min = qt == QR_Q41 || qt == QR_Q51;
    float acc[SPECK_MT];
    for (int t = 0; t < nt; t++) acc[t] = 0.0f;
    for (int64_t b0 = 0; b0 < nb; b0 += 8) {
        const int cnt = (int)(nb - b0 < 8 ? nb - b0 : 8);
        __m256i q[8], sgn[8];
        // The blocks' fp16 scales and mins gathered into vector lanes (word inserts: small stores
        // read back as one vector stalled on store forwarding).
        __m128i dh = _mm_setzero_si128(), mh = _mm_setzero_si128();
        for (int j = 0; j < 8; j++) {
            uint16_t d = 0, m = 0;
            q[j] = j < cnt ? qr_unpack32(w, b0 + j, qt, &d, &m) : _mm256_setzero_si256();
            dh = qr_insert16(dh, d, j);
            if (has_min) mh = qr_insert16(mh, m, j);
            if (qt == QR_IQ4NL) {
                sgn[j] = _mm256_shuffle_epi8(qr_iq4_sign(), q[j]);
                q[j] = _mm256_shuffle_epi8(qr_iq4_abs(), q[j]);
            }
        }
        const __m256 vdw = _mm256_cvtph_ps(dh), vmw = _mm256_cvtph_ps(mh);
        for (int t = 0; t < nt; t++) {
            const int64_t row = t0 + t;
            const int8_t *x = a->qs + row * n + b0 * 32;
            __m256i p[8];
            for (int j = 0; j < 8; j++) {
                __m256i av = j < cnt ? _mm256_loadu_si256((const __m256i *)(x + 32 * j))
                                     : _mm256_setzero_si256();
                if (qt == QR_IQ4NL) av = _mm256_sign_epi8(av, sgn[j]);
                p[j] = _mm256_madd_epi16(_mm256_maddubs_epi16(q[j], av), _mm256_set1_epi16(1));
            }
            // 8 blocks' lane sums into one vector, lane j = block j.
            const __m256i h01 = _mm256_hadd_epi32(p[0], p[1]), h23 = _mm256_hadd_epi32(p[2], p[3]);
            const __m256i h45 = _mm256_hadd_epi32(p[4], p[5]), h67 = _mm256_hadd_epi32(p[6], p[7]);
            const __m256i g0 = _mm256_hadd_epi32(h01, h23), g1 = _mm256_hadd_epi32(h45, h67);
            // g0: [b0 b1 b2 b3 (low halves) | b0 b1 b2 b3 (high halves)], g1 the same for 4-7.
            __m256i isum = _mm256_add_epi32(_mm256_permute2x128_si256(g0, g1, 0x20),
                                            _mm256_permute2x128_si256(g0, g1, 0x31));
            const int64_t at = row * nb + b0;
            __m256 dav, sav;
            __m256i qsum;
            if (cnt == 8) {
                dav = _mm256_loadu_ps(a->d + at);
                sav = _mm256_loadu_ps(a->s + at);
                qsum = _mm256_cvtepi16_epi32(_mm_loadu_si128((const __m128i *)(a->qsum + at)));
            } else { // the row's last blocks: the lanes past them stay zero and are not added
                float dv[8] = {0}, sv[8] = {0};
                int16_t qv[8] = {0};
                for (int j = 0; j < cnt; j++) dv[j] = a->d[at + j], sv[j] = a->s[at + j], qv[j] = a->qsum[at + j];
                dav = _mm256_loadu_ps(dv);
                sav = _mm256_loadu_ps(sv);
                qsum = _mm256_cvtepi16_epi32(_mm_loadu_si128((const __m128i *)qv));
            }
            if (qt == QR_Q50) isum = _mm256_sub_epi32(isum, _mm256_slli_epi32(qsum, 4));
            __m256 c = _mm256_mul_ps(_mm256_mul_ps(vdw, dav), _mm256_cvtepi32_ps(isum));
            if (has_min) c = _mm256_add_ps(c, _mm256_mul_ps(vmw, sav));
            // Added one block at a time, in order (the contract): a chain of adds.
            __m128 lo = _mm256_castps256_ps128(c), hi = _mm256_extractf128_ps(c, 1);
            float sum = acc[t];
            if (cnt == 8) {
                sum += _mm_cvtss_f32(lo);
                sum += _mm_cvtss_f32(_mm_movehdup_ps(lo));
                sum += _mm_cvtss_f32(_mm_movehl_ps(lo, lo));
                sum += _mm_cvtss_f32(_mm_shuffle_ps(lo, lo, 3));
                sum += _mm_cvtss_f32(hi);
                sum += _mm_cvtss_f32(_mm_movehdup_ps(hi));
                sum += _mm_cvtss_f32(_mm_movehl_ps(hi, hi));
                sum += _mm_cvtss_f32(_mm_shuffle_ps(hi, hi, 3));
            } else {
                float cs[8];
                _mm256_storeu_ps(cs, c);
                for (int j = 0; j < cnt; j++) sum += cs[j];
            }
            acc[t] = sum;
        }
    }
    for (int t = 0; t < nt; t++) out[t] = acc[t];
}

/* ---- row dequantization --------------------------------------------------------------------- */

// 32 levels (bytes) minus off -> y: (32) = dl * level - ml, elements 0-15 with (dl0, ml0) and
// 16-31 with (dl1, ml1). The products are exact, so the one rounding is the subtraction's, as in
// the reference (a min m is subtracted as -m).
static inline void qr_store32(__m256i q, int off, float dl0, float ml0, float dl1, float ml1,
                              float *y) {
    const __m256i o = _mm256_set1_epi32(off);
    const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
    const __m128i part[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
    for (int k = 0; k < 4; k++) {
        const __m256 dl = _mm256_set1_ps(k < 2 ? dl0 : dl1), ml = _mm256_set1_ps(k < 2 ? ml0 : ml1);
        const __m256 v = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_cvtepu8_epi32(part[k]), o));
        _mm256_storeu_ps(y + 8 * k, _mm256_sub_ps(_mm256_mul_ps(dl, v), ml));
    }
}

// The same for IQ4 grid indices: y = dl * K[idx].
static inline void qr_store32_iq4(__m256i idx, float dl0, float dl1, float *y) {
    const __m256i grid = _mm256_setr_epi8(-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38,
                                          53, 69, 89, 113, -127, -104, -83, -65, -49, -35, -22,
                                          -10, 1, 13, 25, 38, 53, 69, 89, 113);
    const __m256i k = _mm256_shuffle_epi8(grid, idx);
    const __m128i lo = _mm256_castsi256_si128(k), hi = _mm256_extracti128_si256(k, 1);
    const __m128i part[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
    for (int j = 0; j < 4; j++)
        _mm256_storeu_ps(y + 8 * j, _mm256_mul_ps(_mm256_set1_ps(j < 2 ? dl0 : dl1),
                                                  _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(part[j]))));
}

// x: n / 256 super-blocks of kind kt -> y: (n).
static inline __attribute__((always_inline)) void qr_kdequant(const void *x, float *y, int64_t n,
                                                              const int kt) {
    const int off = kt == QR_Q3K ? 4 : kt == QR_Q6K ? 32 : kt == QR_DGQ4 ? 8 : 0;
    const int has_min = kt == QR_Q2K || kt == QR_Q4K || kt == QR_Q5K;
    for (int64_t i = 0; i < n / QR_QKK; i++, y += QR_QKK) {
        qr_sb u;
        qr_unpack(x, i, kt, &u);
        int16_t sc[16], mn[16] = {0};
        _mm256_storeu_si256((__m256i *)sc, u.sc);
        if (has_min) _mm256_storeu_si256((__m256i *)mn, u.mn);
        for (int k = 0; k < 8; k++) {
            // Elements 32k .. 32k + 31: 16-value sub-blocks 2k and 2k + 1.
            const float d0 = u.d * sc[2 * k], d1 = u.d * sc[2 * k + 1];
            if (kt == QR_IQ4XS) {
                qr_store32_iq4(u.q[k], d0, d1, y + 32 * k);
            } else {
                const float m0 = has_min ? u.dmin * mn[2 * k] : 0.0f;
                const float m1 = has_min ? u.dmin * mn[2 * k + 1] : 0.0f;
                qr_store32(u.q[k], off, d0, m0, d1, m1, y + 32 * k);
            }
        }
    }
}

// x: n / 32 blocks of a 32-value type -> y: (n).
static inline __attribute__((always_inline)) void qr_dequant32(const void *x, float *y, int64_t n,
                                                               const int qt) {
    for (int64_t b = 0; b < n / 32; b++, y += 32) {
        uint16_t hd, hm;
        const __m256i q = qr_unpack32(x, b, qt, &hd, &hm);
        const float d = _cvtsh_ss(hd), m = _cvtsh_ss(hm);
        if (qt == QR_IQ4NL) {
            qr_store32_iq4(q, d, d, y);
        } else {
            const float ml = qt == QR_Q41 || qt == QR_Q51 ? -m : 0.0f;
            qr_store32(q, qt == QR_Q50 ? 16 : 0, d, ml, d, ml, y);
        }
    }
}

// The entry points of one ISA's table (ISA: the name suffix), from the inlined bodies above.
#define QR_DEFINE_KERNELS(ISA)                                                                     \
    QR_K(q2_k, QR_Q2K, ISA)                                                                        \
    QR_K(q3_k, QR_Q3K, ISA)                                                                        \
    QR_K(q4_k, QR_Q4K, ISA)                                                                        \
    QR_K(q5_k, QR_Q5K, ISA)                                                                        \
    QR_K(q6_k, QR_Q6K, ISA)                                                                        \
    QR_K(iq4_xs, QR_IQ4XS, ISA)                                                                    \
    QR_K(dgq4, QR_DGQ4, ISA)                                                                       \
    QR_32(q4_1, QR_Q41, ISA)                                                                       \
    QR_32(q5_0, QR_Q50, ISA)                                                                       \
    QR_32(q5_1, QR_Q51, ISA)                                                                       \
    QR_32(iq4_nl, QR_IQ4NL, ISA)

// A 256-value type: dot (Q8_K blocks), mm (token rows of the prepared Q8_K rows), dequant.
#define QR_K(T, KT, ISA)                                                                           \
    static float dot_##T##_##ISA(const void *w, const void *a, int64_t n) {                        \
        float r;                                                                                   \
        qr_kdot(w, (const char *)a, 0, n, KT, 1, &r);                                              \
        return r;                                                                                  \
    }                                                                                              \
    static void mm_##T##_##ISA(const void *w, const speck_mm_act *a, int64_t t0, int nt,           \
                               float *out) {                                                       \
        const size_t arow = speck_type_row_size(SPECK_TYPE_Q8_K, a->n_in);                         \
        const char *x = a->blocks + (size_t)t0 * arow;                                             \
        switch (nt) {                                                                              \
        case 1:                                                                                    \
            qr_kdot(w, x, arow, a->n_in, KT, 1, out);                                              \
            break;                                                                                 \
        case 2:                                                                                    \
            qr_kdot(w, x, arow, a->n_in, KT, 2, out);                                              \
            break;                                                                                 \
        case 3:                                                                                    \
            qr_kdot(w, x, arow, a->n_in, KT, 3, out);                                              \
            break;                                                                                 \
        default:                                                                                   \
            qr_kdot(w, x, arow, a->n_in, KT, 4, out);                                              \
            break;                                                                                 \
        }                                                                                          \
    }                                                                                              \
    static void deq_##T##_##ISA(const void *x, float *y, int64_t n) {                              \
        qr_kdequant(x, y, n, KT);                                                                  \
    }

// A 32-value type: mm on the split Q8_0 layout (its dot stays the reference: only the public
// per-row API uses it) and dequant.
#define QR_32(T, QT, ISA)                                                                          \
    static void mm_##T##_##ISA(const void *w, const speck_mm_act *a, int64_t t0, int nt,           \
                               float *out) {                                                       \
        switch (nt) {                                                                              \
        case 1:                                                                                    \
            qr_dot32(w, &a->rows, t0, QT, 1, out);                                                 \
            break;                                                                                 \
        case 2:                                                                                    \
            qr_dot32(w, &a->rows, t0, QT, 2, out);                                                 \
            break;                                                                                 \
        case 3:                                                                                    \
            qr_dot32(w, &a->rows, t0, QT, 3, out);                                                 \
            break;                                                                                 \
        default:                                                                                   \
            qr_dot32(w, &a->rows, t0, QT, 4, out);                                                 \
            break;                                                                                 \
        }                                                                                          \
    }                                                                                              \
    static void deq_##T##_##ISA(const void *x, float *y, int64_t n) {                              \
        qr_dequant32(x, y, n, QT);                                                                 \
    }

// The members of a type's speck_qt_kernels entry defined here (designated initializers).
#define QR_ENTRY_K(T, ISA) .dot = dot_##T##_##ISA, .mm = mm_##T##_##ISA, .to_f32 = deq_##T##_##ISA
#define QR_ENTRY_32(T, ISA) .dot = NULL, .mm = mm_##T##_##ISA, .to_f32 = deq_##T##_##ISA

#endif
