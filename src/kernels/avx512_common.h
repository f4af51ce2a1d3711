// Helpers shared by the AVX-512 kernel files (compiled with their -mavx512* flags only).
#ifndef SPECK_AVX512_COMMON_H
#define SPECK_AVX512_COMMON_H

#include <immintrin.h>
#include <stdint.h>

// The accumulators of a panel call: acc[t * R + r] (panel r's 16 rows for token t) to
// y + t * ldy + r * ystep, stored (=) or added (+=, accumulate); lanes outside m0 (the first
// panel's) and m1 (the last's) untouched.
static inline __attribute__((always_inline)) void
panel_store(const __m512 *acc, float *y, int64_t ldy, int64_t ystep, __mmask16 m0, __mmask16 m1,
            int accumulate, const int R, const int T) {
    for (int t = 0; t < T; t++)
        for (int r = 0; r < R; r++) {
            const __mmask16 m = (r == 0 ? m0 : 0xFFFF) & (r == R - 1 ? m1 : 0xFFFF);
            float *yp = y + t * ldy + r * ystep;
            __m512 v = acc[t * R + r];
            if (accumulate) v = _mm512_add_ps(_mm512_maskz_loadu_ps(m, yp), v);
            _mm512_mask_storeu_ps(yp, m, v);
        }
}

// Lanes below r set (r in 0..16).
static inline __mmask16 tail_mask16(int64_t r) {
    return (__mmask16)((1u << r) - 1);
}

// Lane r of the result = the sum of a[r]'s 16 lanes, for 16 vectors at once (a transposing
// tree: 45 shuffles/adds for 16 sums instead of ~8 each). Every slot goes through the same tree,
// so a key's score does not depend on which slot of its block it occupies.
static inline __m512 hsum16x16(const __m512 a[16]) {
    __m512 b[8], c[4], d[2];
    for (int k = 0; k < 8; k++) // 256-bit halves: slot 2k in blocks 0-1, 2k+1 in 2-3
        b[k] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * k], a[2 * k + 1], 0x44),
                             _mm512_shuffle_f32x4(a[2 * k], a[2 * k + 1], 0xEE));
    for (int k = 0; k < 4; k++) // 128-bit blocks: block j holds slot 4k + j
        c[k] = _mm512_add_ps(_mm512_shuffle_f32x4(b[2 * k], b[2 * k + 1], 0x88),
                             _mm512_shuffle_f32x4(b[2 * k], b[2 * k + 1], 0xDD));
    for (int k = 0; k < 2; k++) { // pairs: block j holds slots 8k + j and 8k + 4 + j
        __m512d lo = _mm512_unpacklo_pd(_mm512_castps_pd(c[2 * k]), _mm512_castps_pd(c[2 * k + 1]));
        __m512d hi = _mm512_unpackhi_pd(_mm512_castps_pd(c[2 * k]), _mm512_castps_pd(c[2 * k + 1]));
        d[k] = _mm512_add_ps(_mm512_castpd_ps(lo), _mm512_castpd_ps(hi));
    }
    // lane 4j + t holds slot 4t + j
    const __m512 e =
        _mm512_add_ps(_mm512_shuffle_ps(d[0], d[1], 0x88), _mm512_shuffle_ps(d[0], d[1], 0xDD));
    const __m512i perm = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    return _mm512_permutexvar_ps(perm, e);
}

#endif
