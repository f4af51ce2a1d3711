// S24_Q8 (2:4-sparse, 8-bit) weight rows against split Q8_0 activations, included by
// sparse_avx512.c (VNNI's vpdpbusd) and sparse_avx2.c (maddubs + madd; the same exact int32
// sums), both with BMI2: the activations are gathered by the weights' 2-bit indices, so each
// block reads 22 bytes of weights instead of Q8_0's 34. Results equal speck_dot_s24_q8_ref bit
// for bit (quant.h's contract: exact int32 block sums, (d_w * d_a) * sum added in block order;
// built with -ffp-contract=off). The includer first defines S24_DOT4(w, a): int32 lanes of
// sums of 4 products of unsigned bytes w and signed bytes a.
#ifndef SPECK_SPARSE_ROWS_H
#define SPECK_SPARSE_ROWS_H

#include <immintrin.h>
#include <string.h>

#include "kernels/kernels_internal.h"

// Byte k of the result: the activation byte of kept value k, within its 16-byte half:
// 4 (k / 2) + index (two groups of 4 per 8 kept values; the base of each pair added).
static inline uint64_t gather_ctrl(uint32_t idx16) {
    return _pdep_u64(idx16, 0x0303030303030303ULL) + 0x0C0C080804040000ULL;
}

// Weight row w (n values) . token rows t0 .. t0 + NT - 1 of a.
static inline __attribute__((always_inline)) void
s24_dot(const speck_block_s24_q8 *w, const speck_q8_rows *a, int64_t t0, const int NT, float *out) {
    const int64_t n = a->n, nb = n / 32;
    // Lane 0 gathers kept values 0-7 into bytes 0-7, lane 1 values 8-15 into bytes 8-15 (the
    // other bytes zeroed by the 0x80 control), matching the weights broadcast to both lanes.
    const __m256i half = _mm256_setr_epi64x(0, (long long)0x8080808080808080ULL,
                                            (long long)0x8080808080808080ULL, 0);
    float acc[SPECK_MT] = {0};
    for (int64_t b0 = 0; b0 < nb; b0 += 8) {
        const int cnt = (int)(nb - b0 < 8 ? nb - b0 : 8);
        __m256i ctrl[8], wa[8], ws[8];
        __m128i dh = _mm_setzero_si128();
        for (int j = 0; j < 8; j++) {
            if (j >= cnt) {
                ctrl[j] = wa[j] = ws[j] = _mm256_setzero_si256();
                dh = _mm_alignr_epi8(_mm_insert_epi16(dh, 0, 0), dh, 2);
                continue;
            }
            const speck_block_s24_q8 *x = w + b0 + j;
            uint32_t idx;
            memcpy(&idx, x->idx, 4);
            const __m128i c = _mm_set_epi64x((long long)gather_ctrl(idx >> 16),
                                             (long long)gather_ctrl(idx & 0xFFFF));
            ctrl[j] = _mm256_or_si256(_mm256_broadcastsi128_si256(c), half);
            ws[j] = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)x->qs));
            wa[j] = _mm256_abs_epi8(ws[j]);
            dh = _mm_insert_epi16(dh, x->d, 0);
            dh = _mm_alignr_epi8(dh, dh, 2); // rotate: block j's scale ends in lane j
        }
        // After 8 rotations lane j holds block j's scale (blocks past cnt: zero).
        const __m256 vdw = _mm256_cvtph_ps(dh);
        for (int t = 0; t < NT; t++) {
            const int64_t row = t0 + t;
            const int8_t *xa = a->qs + row * n + b0 * 32;
            __m256i p[8];
            for (int j = 0; j < 8; j++) {
                const __m256i av = j < cnt ? _mm256_loadu_si256((const __m256i *)(xa + 32 * j))
                                           : _mm256_setzero_si256();
                const __m256i g = _mm256_shuffle_epi8(av, ctrl[j]);
                p[j] = S24_DOT4(wa[j], _mm256_sign_epi8(g, ws[j]));
            }
            const __m256i h01 = _mm256_hadd_epi32(p[0], p[1]), h23 = _mm256_hadd_epi32(p[2], p[3]);
            const __m256i h45 = _mm256_hadd_epi32(p[4], p[5]), h67 = _mm256_hadd_epi32(p[6], p[7]);
            const __m256i g0 = _mm256_hadd_epi32(h01, h23), g1 = _mm256_hadd_epi32(h45, h67);
            const __m256i isum = _mm256_add_epi32(_mm256_permute2x128_si256(g0, g1, 0x20),
                                                  _mm256_permute2x128_si256(g0, g1, 0x31));
            const int64_t at = row * nb + b0;
            __m256 dav;
            if (cnt == 8) {
                dav = _mm256_loadu_ps(a->d + at);
            } else {
                float dv[8] = {0};
                for (int j = 0; j < cnt; j++) dv[j] = a->d[at + j];
                dav = _mm256_loadu_ps(dv);
            }
            const __m256 c = _mm256_mul_ps(_mm256_mul_ps(vdw, dav), _mm256_cvtepi32_ps(isum));
            float cs[8];
            _mm256_storeu_ps(cs, c);
            float sum = acc[t];
            for (int j = 0; j < cnt; j++) sum += cs[j]; // block order (the contract)
            acc[t] = sum;
        }
    }
    for (int t = 0; t < NT; t++) out[t] = acc[t];
}

// The mm entry point (speck_qt_kernels.mm) of one ISA.
#define S24_DEFINE_MM(NAME)                                                                        \
    void NAME(const void *w, const speck_mm_act *a, int64_t t0, int nt, float *out) {              \
        switch (nt) {                                                                              \
        case 1:                                                                                    \
            s24_dot(w, &a->rows, t0, 1, out);                                                      \
            break;                                                                                 \
        case 2:                                                                                    \
            s24_dot(w, &a->rows, t0, 2, out);                                                      \
            break;                                                                                 \
        case 3:                                                                                    \
            s24_dot(w, &a->rows, t0, 3, out);                                                      \
            break;                                                                                 \
        default:                                                                                   \
            s24_dot(w, &a->rows, t0, 4, out);                                                      \
            break;                                                                                 \
        }                                                                                          \
    }

#endif
