// AVX-512 VNNI prefill GEMM for Q8_0 / Q4_0 weights: the AVX-512 table's gemm_pack / gemm_run
// (see speck_kernel_table). Compiled with -mavx512* flags; only reached after dispatch.c has
// checked the CPU.
#include <immintrin.h>
#include <string.h>

#include "kernels/avx512_common.h"
#include "kernels/kernels_internal.h"

// One zmm of int32 lanes holds 16 weight rows for one token: vpdpbusd multiplies 4 consecutive
// values of each row (64 weight bytes, repacked) by the same 4 activation bytes (a dword
// broadcast straight from memory) and adds the 4 products into the row's lane. A 32-value block
// is 8 such steps; its exact int32 dot is then converted and scaled by d_w (per lane) * d_x (per
// token) into a float accumulator. The micro-kernel keeps GEMM_R row vectors x NT tokens of
// int32 and float accumulators in registers, so each weight vector load feeds NT dpbusd and each
// broadcast feeds GEMM_R.
//
// Packed strip, per 32-value block (SPECK_GEMM_BLOCK_BYTES = GEMM_R * 640 bytes):
//   qs:   [GEMM_R][8 steps][16 rows][4 bytes] signed weight values (Q4_0: q - 8); step j holds
//         values 4j..4j+3 of the block
//   bias: [GEMM_R][16] int32, -128 * sum of the row's 32 values: the activations come as q + 128,
//         and sum (x + 128) w - 128 sum w = sum x w exactly
//   dw:   [GEMM_R][16] float weight scales
// Rows past `rows` are packed as zeros (never stored).

#define GEMM_R (SPECK_GEMM_ROWS / 16)
#define GEMM_NT 4  // tokens per micro-tile (the tail switch in gemm_run_avx512 covers 1..3)
#define GEMM_KC 16 // blocks per K chunk: the strip's chunk (30 KiB) stays in L1 across tokens
#define GEMM_OFF_BIAS (GEMM_R * 512)
#define GEMM_OFF_DW (GEMM_R * 512 + GEMM_R * 64)
_Static_assert(SPECK_GEMM_ROWS % 16 == 0, "strip is whole zmm row vectors");
_Static_assert(GEMM_R * 640 == SPECK_GEMM_BLOCK_BYTES, "block layout size");

static inline __mmask16 rows_mask(int rows, int r) {
    const int n = rows - 16 * r;
    return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? (__mmask16)0 : tail_mask16(n);
}

// One stage of a dword transpose across registers: a holds the elements whose register-index
// bit k is 0, b those where it is 1; afterwards that register bit and lane bit k have traded
// places (a' takes the lanes with bit k clear from a and, for bit k set, the lanes of b with it
// clear; b' the rest).
static inline void swap_bit(__m512i *a, __m512i *b, int k) {
    // [k][0]: a' = (l & bit) ? b[l & ~bit] : a[l];  [k][1]: b' = (l & bit) ? b[l] : a[l | bit].
    static const _Alignas(64) int32_t idx[3][2][16] = {
        {{0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30},
         {1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31}},
        {{0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29},
         {2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31}},
        {{0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27},
         {4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31}},
    };
    const __m512i xa = _mm512_load_si512(idx[k][0]), xb = _mm512_load_si512(idx[k][1]);
    const __m512i na = _mm512_permutex2var_epi32(*a, xa, *b),
                  nb = _mm512_permutex2var_epi32(*a, xb, *b);
    *a = na, *b = nb;
}

// The signed values of one 32-value block of 16 rows, transposed into the packed order:
// v[j] lane l = row l's values 4j..4j+3. src[l]: row l's block (a zero block for missing rows).
// Q8_0: z[p] = [row p | row p + 8] (8 dwords each); register bits = row bits 0-2, lane bit 3 =
// row bit 3, lane bits 0-2 = dword; three swap stages move the dword index into the register
// index. Q4_0: z[p] = [row p | p + 4 | p + 8 | p + 12] (4 dwords of nibbles each), two stages;
// low nibbles of dword j are values 4j.., high nibbles values 16 + 4j.. (steps j and j + 4).
static inline void transpose_block(const char *const src[16], const int is_q4, __m512i v[8]) {
    if (is_q4) {
        __m512i z[4];
        for (int p = 0; p < 4; p++) {
            __m512i x = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)(src[p] + 2)));
            x = _mm512_inserti32x4(x, _mm_loadu_si128((const __m128i *)(src[p + 4] + 2)), 1);
            x = _mm512_inserti32x4(x, _mm_loadu_si128((const __m128i *)(src[p + 8] + 2)), 2);
            z[p] = _mm512_inserti32x4(x, _mm_loadu_si128((const __m128i *)(src[p + 12] + 2)), 3);
        }
        swap_bit(&z[0], &z[1], 0), swap_bit(&z[2], &z[3], 0);
        swap_bit(&z[0], &z[2], 1), swap_bit(&z[1], &z[3], 1);
        const __m512i nib = _mm512_set1_epi8(0x0F), eight = _mm512_set1_epi8(8);
        for (int j = 0; j < 4; j++) {
            v[j] = _mm512_sub_epi8(_mm512_and_si512(z[j], nib), eight);
            v[j + 4] = _mm512_sub_epi8(_mm512_and_si512(_mm512_srli_epi16(z[j], 4), nib), eight);
        }
    } else {
        for (int p = 0; p < 8; p++) {
            const __m256i lo = _mm256_loadu_si256((const __m256i *)(src[p] + 2));
            v[p] = _mm512_inserti64x4(_mm512_castsi256_si512(lo),
                                      _mm256_loadu_si256((const __m256i *)(src[p + 8] + 2)), 1);
        }
        for (int k = 0; k < 3; k++)
            for (int p = 0; p < 8; p++)
                if (!(p & (1 << k))) swap_bit(&v[p], &v[p | (1 << k)], k);
    }
}

// w: rows x (n_in) Q8_0 / Q4_0, row stride wrow -> dst (see the layout above). Per 16 rows and
// block: a register transpose (transpose_block), the bias from a dpbusd against ones, and the
// scales by one gather (lane l reads the dword at row l's block start; its low half is d).
void speck_gemm_pack_avx512(speck_type wt, const void *w, size_t wrow, int rows, int64_t n_in,
                            void *dst) {
    static const _Alignas(64) char zeros[64] = {0}; // stands in for the rows past `rows`
    const int64_t nb = n_in / SPECK_QK;
    const int is_q4 = wt == SPECK_TYPE_Q4_0;
    const size_t bsz = is_q4 ? sizeof(speck_block_q4_0) : sizeof(speck_block_q8_0);
    const __m512i vidx =
        _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                           _mm512_set1_epi32((int)wrow));
    const __m512i ones = _mm512_set1_epi8(1), zero = _mm512_setzero_si512();
    for (int r = 0; r < GEMM_R; r++) {
        const __mmask16 m = rows_mask(rows, r);
        const char *row0 = (const char *)w + (size_t)(16 * r) * wrow;
        const char *src[16];
        size_t step[16];
        for (int l = 0; l < 16; l++) {
            const int ok = 16 * r + l < rows;
            src[l] = ok ? row0 + (size_t)l * wrow : zeros;
            step[l] = ok ? bsz : 0;
        }
        for (int64_t b = 0; b < nb; b++) {
            char *out = (char *)dst + b * SPECK_GEMM_BLOCK_BYTES;
            __m512i v[8], sum = zero;
            transpose_block(src, is_q4, v);
            for (int l = 0; l < 16; l++) src[l] += step[l];
            for (int j = 0; j < 8; j++) {
                _mm512_store_si512(out + (r * 8 + j) * 64, v[j]);
                sum = _mm512_dpbusd_epi32(sum, ones, v[j]);
            }
            _mm512_store_si512(out + GEMM_OFF_BIAS + r * 64,
                               _mm512_sub_epi32(zero, _mm512_slli_epi32(sum, 7)));
            const __m512i d = _mm512_mask_i32gather_epi32(zero, m, vidx, row0 + (size_t)b * bsz, 1);
            _mm512_store_ps(out + GEMM_OFF_DW + r * 64, _mm512_cvtph_ps(_mm512_cvtepi32_epi16(d)));
        }
    }
}

static inline __m512i bcast_u32(const uint8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
}

// Tokens t0 .. t0 + NT - 1 x the strip's rows over blocks kb .. kb + nbk - 1; y: token rows
// (stride ldy) starting at the strip's first column. first: start from zero instead of y.
static inline __attribute__((always_inline)) void
gemm_tile(const char *pk, int64_t nbk, const uint8_t *xq, int64_t n, const float *xd, int64_t nb,
          float *y, int64_t ldy, const __mmask16 *m, const int NT, int first) {
    __m512 acc[GEMM_NT][GEMM_R];
    for (int t = 0; t < NT; t++)
        for (int r = 0; r < GEMM_R; r++)
            acc[t][r] =
                first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(m[r], y + t * ldy + 16 * r);
    for (int64_t b = 0; b < nbk; b++, pk += SPECK_GEMM_BLOCK_BYTES, xq += SPECK_QK, xd++) {
        __m512i ia[GEMM_NT][GEMM_R];
        for (int r = 0; r < GEMM_R; r++) {
            const __m512i bias = _mm512_load_si512(pk + GEMM_OFF_BIAS + r * 64);
            for (int t = 0; t < NT; t++) ia[t][r] = bias;
        }
        for (int j = 0; j < 8; j++) {
            __m512i wv[GEMM_R];
            for (int r = 0; r < GEMM_R; r++) wv[r] = _mm512_load_si512(pk + (r * 8 + j) * 64);
            for (int t = 0; t < NT; t++) {
                const __m512i a = bcast_u32(xq + t * n + 4 * j);
                for (int r = 0; r < GEMM_R; r++) ia[t][r] = _mm512_dpbusd_epi32(ia[t][r], a, wv[r]);
            }
        }
        for (int t = 0; t < NT; t++) {
            const __m512 dx = _mm512_set1_ps(xd[t * nb]);
            for (int r = 0; r < GEMM_R; r++) {
                const __m512 sc = _mm512_mul_ps(_mm512_load_ps(pk + GEMM_OFF_DW + r * 64), dx);
                acc[t][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ia[t][r]), sc, acc[t][r]);
            }
        }
    }
    for (int t = 0; t < NT; t++)
        for (int r = 0; r < GEMM_R; r++)
            _mm512_mask_storeu_ps(y + t * ldy + 16 * r, m[r], acc[t][r]);
}

// packed: one strip (speck_gemm_pack_avx512) of `rows` rows; a: all tokens; y: (a->n_tok) rows of
// stride ldy, columns 0 .. rows - 1 written. K is walked in GEMM_KC-block chunks so the strip's
// chunk stays in L1 while every token tile passes over it; partial sums live in y.
void speck_gemm_run_avx512(const void *packed, int rows, const speck_gemm_act *a, float *y,
                           int64_t ldy) {
    const int64_t n = a->n, nb = n / SPECK_QK, n_tok = a->n_tok;
    __mmask16 m[GEMM_R];
    for (int r = 0; r < GEMM_R; r++) m[r] = rows_mask(rows, r);
    for (int64_t kb = 0; kb < nb; kb += GEMM_KC) {
        const int64_t nbk = nb - kb < GEMM_KC ? nb - kb : GEMM_KC;
        const char *pk = (const char *)packed + kb * SPECK_GEMM_BLOCK_BYTES;
        const int first = kb == 0;
        int64_t t = 0;
        for (; t + GEMM_NT <= n_tok; t += GEMM_NT)
            gemm_tile(pk, nbk, a->qs + t * n + kb * SPECK_QK, n, a->d + t * nb + kb, nb,
                      y + t * ldy, ldy, m, GEMM_NT, first);
        const uint8_t *xq = a->qs + t * n + kb * SPECK_QK;
        const float *xd = a->d + t * nb + kb;
        switch (n_tok - t) { // token tail, 0 .. GEMM_NT - 1
        case 1:
            gemm_tile(pk, nbk, xq, n, xd, nb, y + t * ldy, ldy, m, 1, first);
            break;
        case 2:
            gemm_tile(pk, nbk, xq, n, xd, nb, y + t * ldy, ldy, m, 2, first);
            break;
        case 3:
            gemm_tile(pk, nbk, xq, n, xd, nb, y + t * ldy, ldy, m, 3, first);
            break;
        default:
            break;
        }
    }
}
