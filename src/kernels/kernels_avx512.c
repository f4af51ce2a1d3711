// AVX-512 (F/BW/VL/DQ/VNNI) kernels. Compiled with -mavx512* flags; only reached after dispatch.c
// has checked the CPU. The prefill int8 GEMM is in gemm_avx512.c, attention in attend_avx512.c.
//
// Quantized dots keep two 32-value blocks in one zmm register (lanes 0-7 of the int32 result
// belong to the first block, 8-15 to the second), multiply the int32 partial sums by a per-lane
// scale vector [s0 x8, s1 x8] and accumulate in float: no horizontal work per block.
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "kernels/avx512_common.h"
#include "kernels/kernels_internal.h"

/* ---------------------------------------------------------------------------------------- */
/* Float dots                                                                                */
/* ---------------------------------------------------------------------------------------- */

static inline __m512 load_f16x16(const uint16_t *p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}

static inline __m512 load_bf16x16(const uint16_t *p) {
    __m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
}

// 16 weights from element i of a row of type wt (SPECK_W_*), widened exactly to f32 (bf16 is not
// multiplied with dpbf16_ps, which would round the activations to bf16). m: lanes to load.
static inline __m512 load_w16(const void *w, int64_t i, const int wt, __mmask16 m) {
    const int full = m == 0xFFFF; // constant after inlining: plain loads in the main loops
    if (wt == SPECK_W_F32)
        return full ? _mm512_loadu_ps((const float *)w + i)
                    : _mm512_maskz_loadu_ps(m, (const float *)w + i);
    __m256i h = full ? _mm256_loadu_si256((const __m256i *)((const uint16_t *)w + i))
                     : _mm256_maskz_loadu_epi16(m, (const uint16_t *)w + i);
    if (wt == SPECK_W_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// w: (n) values of type wt (SPECK_W_*) · x: (n) f32, four accumulators (the matmul's multi-token
// work goes through the tiles below).
static inline __attribute__((always_inline)) float fdot_body(const void *w, const int wt,
                                                             const float *x, int64_t n) {
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                     _mm512_setzero_ps()};
    int64_t i = 0;
    for (; i + 64 <= n; i += 64)
        for (int k = 0; k < 4; k++)
            acc[k] = _mm512_fmadd_ps(load_w16(w, i + 16 * k, wt, 0xFFFF),
                                     _mm512_loadu_ps(x + i + 16 * k), acc[k]);
    for (; i + 16 <= n; i += 16)
        acc[0] = _mm512_fmadd_ps(load_w16(w, i, wt, 0xFFFF), _mm512_loadu_ps(x + i), acc[0]);
    if (i < n) {
        const __mmask16 m = tail_mask16(n - i);
        acc[1] = _mm512_fmadd_ps(load_w16(w, i, wt, m), _mm512_maskz_loadu_ps(m, x + i), acc[1]);
    }
    return _mm512_reduce_add_ps(
        _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
}

// w, x: (n)
static float dot_f32_avx512(const float *w, const float *x, int64_t n) {
    return fdot_body(w, SPECK_W_F32, x, n);
}

// w: (n) fp16, x: (n) f32
static float dot_f16_avx512(const uint16_t *w, const float *x, int64_t n) {
    return fdot_body(w, SPECK_W_F16, x, n);
}

// w: (n) bf16, x: (n) f32
static float dot_bf16_avx512(const uint16_t *w, const float *x, int64_t n) {
    return fdot_body(w, SPECK_W_BF16, x, n);
}

// Values of each weight row a float tile prefetches ahead of its loads (see speck_mm_rows: a
// tile's rows are separate streams).
#define SPECK_FT_AHEAD 512

// A tile of R weight rows x T activation rows (R * T <= 16), one accumulator per output and
// one FMA chain over the row's 16-value chunks, then all sums in one transposing tree: the
// per-output horizontal sum was most of the work for short rows (n_in 256-576). Each output's
// arithmetic is the same whatever tile it sits in, so results do not depend on how many tokens
// run together. Missing rows/tokens of an edge tile repeat row/token 0 and are not stored.
static inline __attribute__((always_inline)) void ftile_body(const void *w, size_t wrow, int rows,
                                                             const float *x, int64_t ldx, int nt,
                                                             int64_t n, const int wt, const int R,
                                                             const int T, float *out) {
    const char *wr[16];
    const float *xr[4];
    for (int r = 0; r < R; r++) wr[r] = (const char *)w + (r < rows ? (size_t)r * wrow : 0);
    for (int t = 0; t < T; t++) xr[t] = x + (t < nt ? t * ldx : 0);
    const int esz = wt == SPECK_W_F32 ? 4 : 2;
    __m512 acc[16];
    for (int s = 0; s < 16; s++) acc[s] = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 xv[4];
        for (int t = 0; t < T; t++) xv[t] = _mm512_loadu_ps(xr[t] + i);
        if ((i * esz) % 64 == 0) // once per cache line of each row
            for (int r = 0; r < R; r++)
                _mm_prefetch(wr[r] + (i + SPECK_FT_AHEAD) * esz, _MM_HINT_T0);
        for (int r = 0; r < R; r++) {
            const __m512 wv = load_w16(wr[r] + i * esz, 0, wt, 0xFFFF);
            for (int t = 0; t < T; t++) acc[t * R + r] = _mm512_fmadd_ps(wv, xv[t], acc[t * R + r]);
        }
    }
    if (i < n) {
        const __mmask16 m = tail_mask16(n - i);
        __m512 xv[4];
        for (int t = 0; t < T; t++) xv[t] = _mm512_maskz_loadu_ps(m, xr[t] + i);
        for (int r = 0; r < R; r++) {
            const __m512 wv = load_w16(wr[r] + i * esz, 0, wt, m);
            for (int t = 0; t < T; t++) acc[t * R + r] = _mm512_fmadd_ps(wv, xv[t], acc[t * R + r]);
        }
    }
    float sums[16];
    _mm512_storeu_ps(sums, hsum16x16(acc));
    for (int t = 0; t < nt; t++)
        for (int r = 0; r < rows; r++) out[t * rows + r] = sums[t * R + r];
}

// Up to 4 rows x 1 token, or x 2-4 tokens on the 4-token body (tokens past nt repeat token 0
// and are not stored; each output's arithmetic is the same either way). The 2- and 3-token
// instantiations ran far slower than the 4-token one inside a forward pass (smollm2-135m F32 at
// 128 cached tokens, passes over 2 / 3 tokens 17.5 / 21.5 -> 12.7-13.0 / 13.8-13.9 ms, while 4
// tokens took 15.5), though not when timed alone.
#define SPECK_TILES_AVX512(NAME, WT)                                                               \
    static void NAME(const void *w, size_t wrow, int rows, const float *x, int64_t ldx, int nt,    \
                     int64_t n, float *out) {                                                      \
        if (nt == 1)                                                                               \
            ftile_body(w, wrow, rows, x, ldx, nt, n, WT, 4, 1, out);                               \
        else                                                                                       \
            ftile_body(w, wrow, rows, x, ldx, nt, n, WT, 4, 4, out);                               \
    }
SPECK_TILES_AVX512(mm_f32_avx512, SPECK_W_F32)
SPECK_TILES_AVX512(mm_f16_avx512, SPECK_W_F16)
SPECK_TILES_AVX512(mm_bf16_avx512, SPECK_W_BF16)

// R panels x T tokens of the panel layout (see speck_kernel_table.mm_panel_f16): per input k,
// R 16-row weight vectors times T broadcast activations, R * T accumulators (>= 8 independent
// FMA chains hide the FMA latency; at most 16 + 8 registers). No horizontal sums: lane j of an
// accumulator is row j's result, stored directly.
static inline __attribute__((always_inline)) void
ptile_body(const char *P, size_t pbytes, const float *x, int64_t ldx, int64_t n, float *y,
           int64_t ldy, __mmask16 m0, __mmask16 m1, int accumulate, const int wt, const int R,
           const int T) {
    const size_t step = (size_t)16 * (wt == SPECK_W_F32 ? 4 : 2); // bytes per k of a panel
    __m512 acc[16];
    for (int s = 0; s < R * T; s++) acc[s] = _mm512_setzero_ps();
    for (int64_t k = 0; k < n; k++) {
        __m512 w[8];
        for (int r = 0; r < R; r++)
            w[r] = load_w16(P + r * pbytes + (size_t)k * step, 0, wt, 0xFFFF);
        for (int t = 0; t < T; t++) {
            const __m512 xb = _mm512_set1_ps(x[t * ldx + k]);
            for (int r = 0; r < R; r++) acc[t * R + r] = _mm512_fmadd_ps(w[r], xb, acc[t * R + r]);
        }
    }
    panel_store(acc, y, ldy, 16, m0, m1, accumulate, R, T);
}

// Panel groups per token count: 8 x 1, 4 x 2, 3 x 3, 2 x 4..8 (panel_group below); fewer
// panels at the end of a row range.
#define PT_ARGS P, pbytes, x, ldx, n, y, ldy, (__mmask16)m0, (__mmask16)m1, accumulate
#define PT_CASE(WT, R, T)                                                                          \
    case R:                                                                                        \
        ptile_body(PT_ARGS, WT, R, T);                                                             \
        return;
#define PT_UPTO2(WT, T)                                                                            \
    PT_CASE(WT, 1, T) default : ptile_body(PT_ARGS, WT, 2, T);                                     \
    return;
#define PT_UPTO3(WT, T)                                                                            \
    PT_CASE(WT, 1, T) PT_CASE(WT, 2, T) default : ptile_body(PT_ARGS, WT, 3, T);                   \
    return;
#define PT_UPTO4(WT, T)                                                                            \
    PT_CASE(WT, 1, T) PT_CASE(WT, 2, T) PT_CASE(WT, 3, T) default : ptile_body(PT_ARGS, WT, 4, T); \
    return;
#define PT_UPTO8(WT, T)                                                                            \
    PT_CASE(WT, 1, T)                                                                              \
    PT_CASE(WT, 2, T)                                                                              \
    PT_CASE(WT, 3, T)                                                                              \
    PT_CASE(WT, 4, T)                                                                              \
    PT_CASE(WT, 5, T) PT_CASE(WT, 6, T) PT_CASE(WT, 7, T) default : ptile_body(PT_ARGS, WT, 8, T); \
    return;
#define SPECK_PANELS_AVX512(NAME, WT)                                                              \
    static void NAME(const void *Pv, size_t pbytes, int np, const float *x, int64_t ldx, int nt,   \
                     int64_t n, float *y, int64_t ldy, unsigned m0, unsigned m1, int accumulate) { \
        const char *P = Pv;                                                                        \
        switch (nt) {                                                                              \
        case 1:                                                                                    \
            switch (np) { PT_UPTO8(WT, 1) }                                                        \
        case 2:                                                                                    \
            switch (np) { PT_UPTO4(WT, 2) }                                                        \
        case 3:                                                                                    \
            switch (np) { PT_UPTO3(WT, 3) }                                                        \
        case 4:                                                                                    \
            switch (np) { PT_UPTO2(WT, 4) }                                                        \
        case 5:                                                                                    \
            switch (np) { PT_UPTO2(WT, 5) }                                                        \
        case 6:                                                                                    \
            switch (np) { PT_UPTO2(WT, 6) }                                                        \
        case 7:                                                                                    \
            switch (np) { PT_UPTO2(WT, 7) }                                                        \
        default:                                                                                   \
            switch (np) { PT_UPTO2(WT, 8) }                                                        \
        }                                                                                          \
    }
SPECK_PANELS_AVX512(mm_panel_f32_avx512, SPECK_W_F32)
SPECK_PANELS_AVX512(mm_panel_f16_avx512, SPECK_W_F16)
SPECK_PANELS_AVX512(mm_panel_bf16_avx512, SPECK_W_BF16)

// R quantized panels x T tokens (layouts: SPECK_Q4_PANEL_BLOCK, SPECK_Q8_PANEL_BLOCK). Per block
// and panel, eight vectors of 16 rows x 4 unsigned weight bytes — Q4_0: the four 64-byte groups
// split into low nibbles (inputs 4g..4g+3) and high nibbles (16+4g..); Q8_0: the eight groups as
// stored — vector i pairing with activation bytes 4i .. 4i + 3, broadcast into vpdpbusd: 16 rows
// x 4 inputs per instruction, no horizontal sums. Weights are stored offset to unsigned (+8,
// +128), so per row and token the block value is d_w * (d_a * sum(q_w * q_a) - off * d_a *
// sum(q_a)), added into one float accumulator in block order: results do not depend on R, T or
// the grouping.
#ifndef PQ_AHEAD
#define PQ_AHEAD 4 // blocks of each panel prefetched ahead (the panels are R separate streams)
#endif
// With fewer panels a call (R = 2 or 1 when several tokens share the weights) each stream is
// prefetched 4 / R times as far, so as many bytes are in flight as with four: one panel 4
// blocks ahead left the 4- and 8-token passes of the 1.1B Q4_0 model waiting on memory
// (21.0-21.1 vs 23.1-23.6 ms and 32.4-32.9 vs 36.3-36.7 ms, alternated).
// The block's prefetch for panel stream wb (bb bytes a block, R streams a call), into L2 as the
// K-quants' (panel_k_avx512.c): one thread streaming Q8_0 panels from DRAM went from ~16.5 to
// ~21.5 GB/s (a plain read loop: ~20), Q4_0 within the noise (16-23 vs 18-28).
static inline __attribute__((always_inline)) void pq_prefetch(const uint8_t *wb, size_t bb,
                                                              const int R) {
    for (size_t c = 0; c < bb; c += 64)
        _mm_prefetch((const char *)wb + PQ_AHEAD * 4 / R * bb + c, _MM_HINT_T1);
}

// acc += d_w * (d_a * (s0 + s1) - off * d_a * sum(q_a)): one block of one panel and token, dw
// the panel's 16 row scales, vd = d_a and vs = off * d_a * sum(q_a) broadcast.
static inline __attribute__((always_inline)) __m512 pq_add(__m512 acc, __m512 dw, __m512i s0,
                                                           __m512i s1, __m512 vd, __m512 vs) {
    const __m512 v = _mm512_fmsub_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1)), vd, vs);
    return _mm512_fmadd_ps(dw, v, acc);
}

static inline __attribute__((always_inline)) void
pq_body(const uint8_t *P, size_t pbytes, int64_t pstep, const speck_q8_rows *a, int64_t t0,
        float *y, int64_t ldy, __mmask16 m0, __mmask16 m1, int accumulate, const int q8,
        const int R, const int T) {
    const int64_t nb = a->n / SPECK_QK;
    const size_t bb = q8 ? SPECK_Q8_PANEL_BLOCK : SPECK_Q4_PANEL_BLOCK;
    const float off = q8 ? 128.0f : 8.0f;
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    __m512 acc[8];
    for (int s = 0; s < R * T; s++) acc[s] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        if (T <= 2) {
            // One or two tokens (decode, a short draft): their activation broadcasts and scales
            // serve all R panels, so they are made once per block, not once per panel — a third
            // fewer instructions between the weight loads, which lets more of them be in flight
            // (a standalone copy of the one-token loop streaming 260 MB of Q4_0 panels on 2
            // threads, medians of 10 alternated: 49.8 -> 55.3 GB/s, the read probe at ~57).
            __m512i xb[2][8];
            __m512 vd[2], vs[2];
            for (int t = 0; t < T; t++) {
                const int8_t *xa = a->qs + (t0 + t) * a->n + b * SPECK_QK;
                for (int i = 0; i < 8; i++) {
                    int32_t x;
                    memcpy(&x, xa + 4 * i, 4);
                    xb[t][i] = _mm512_set1_epi32(x);
                }
                vd[t] = _mm512_set1_ps(a->d[(t0 + t) * nb + b]);
                vs[t] = _mm512_set1_ps(off * a->s[(t0 + t) * nb + b]);
            }
            for (int r = 0; r < R; r++) {
                const uint8_t *wb = P + r * pstep * pbytes + (size_t)b * bb;
                pq_prefetch(wb, bb, R);
                __m512i s0[2], s1[2];
                for (int t = 0; t < T; t++) s0[t] = s1[t] = _mm512_setzero_si512();
                for (int g = 0; g < 4; g++) {
                    const __m512i v = _mm512_loadu_si512(wb + 64 * g);
                    const __m512i lo = q8 ? v : _mm512_and_si512(v, m4);
                    const __m512i hi = q8 ? _mm512_loadu_si512(wb + 256 + 64 * g)
                                          : _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
                    for (int t = 0; t < T; t++) {
                        s0[t] = _mm512_dpbusd_epi32(s0[t], lo, xb[t][g]);
                        s1[t] = _mm512_dpbusd_epi32(s1[t], hi, xb[t][4 + g]);
                    }
                }
                const __m512 dw =
                    _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(wb + bb - 32)));
                for (int t = 0; t < T; t++)
                    acc[t * R + r] = pq_add(acc[t * R + r], dw, s0[t], s1[t], vd[t], vs[t]);
            }
            continue;
        }
        for (int r = 0; r < R; r++) {
            const uint8_t *wb = P + r * pstep * pbytes + (size_t)b * bb;
            pq_prefetch(wb, bb, R);
            __m512i wv[8];
            for (int g = 0; g < 4; g++) {
                const __m512i v = _mm512_loadu_si512(wb + 64 * g);
                if (q8) {
                    wv[g] = v;
                    wv[4 + g] = _mm512_loadu_si512(wb + 256 + 64 * g);
                } else {
                    wv[g] = _mm512_and_si512(v, m4);
                    wv[4 + g] = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
                }
            }
            const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(wb + bb - 32)));
            for (int t = 0; t < T; t++) {
                const int8_t *xa = a->qs + (t0 + t) * a->n + b * SPECK_QK;
                __m512i s0 = _mm512_setzero_si512(), s1 = _mm512_setzero_si512();
                for (int i = 0; i < 8; i += 2) {
                    int32_t x0, x1;
                    memcpy(&x0, xa + 4 * i, 4);
                    memcpy(&x1, xa + 4 * i + 4, 4);
                    s0 = _mm512_dpbusd_epi32(s0, wv[i], _mm512_set1_epi32(x0));
                    s1 = _mm512_dpbusd_epi32(s1, wv[i + 1], _mm512_set1_epi32(x1));
                }
                const int64_t ab = (t0 + t) * nb + b;
                acc[t * R + r] = pq_add(acc[t * R + r], dw, s0, s1, _mm512_set1_ps(a->d[ab]),
                                        _mm512_set1_ps(off * a->s[ab]));
            }
        }
    }
    panel_store(acc, y, ldy, 16 * pstep, m0, m1, accumulate, R, T);
}

// Panel groups per token count: 4 x 1, 2 x 2, 2 x 3, 1 x 4 (panel_q_group below).
#define PQ_CALL(R, T) pq_body(P, pbytes, pstep, a, t0, y, ldy, k0, k1, accumulate, q8, R, T)
#define SPECK_PANELS_Q_AVX512(NAME, Q8)                                                            \
    static void NAME(const void *Pv, size_t pbytes, int np, int64_t pstep, const speck_q8_rows *a, \
                     int64_t t0, int nt, float *y, int64_t ldy, unsigned m0, unsigned m1,          \
                     int accumulate) {                                                             \
        const uint8_t *P = Pv;                                                                     \
        const __mmask16 k0 = (__mmask16)m0, k1 = (__mmask16)m1;                                    \
        const int q8 = (Q8);                                                                       \
        if (nt == 1 && np >= 4)                                                                    \
            PQ_CALL(4, 1);                                                                         \
        else if (nt == 1 && np == 3)                                                               \
            PQ_CALL(3, 1);                                                                         \
        else if (nt == 1 && np == 2)                                                               \
            PQ_CALL(2, 1);                                                                         \
        else if (nt == 1)                                                                          \
            PQ_CALL(1, 1);                                                                         \
        else if (nt == 2 && np >= 2)                                                               \
            PQ_CALL(2, 2);                                                                         \
        else if (nt == 2)                                                                          \
            PQ_CALL(1, 2);                                                                         \
        else if (nt == 3 && np >= 2)                                                               \
            PQ_CALL(2, 3);                                                                         \
        else if (nt == 3)                                                                          \
            PQ_CALL(1, 3);                                                                         \
        else                                                                                       \
            PQ_CALL(1, 4);                                                                         \
    }
SPECK_PANELS_Q_AVX512(mm_panel_q4_0_avx512, 0)
SPECK_PANELS_Q_AVX512(mm_panel_q8_0_avx512, 1)

/* ---------------------------------------------------------------------------------------- */
/* Quantized building blocks                                                                 */
/* ---------------------------------------------------------------------------------------- */

// The int8 values of two consecutive Q8_0 blocks: (64) bytes, block 0 in the low half.
static inline __m512i load_q8_pair(const speck_block_q8_0 *b) {
    __m256i lo = _mm256_loadu_si256((const __m256i *)b[0].qs);
    __m256i hi = _mm256_loadu_si256((const __m256i *)b[1].qs);
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

// One Q8_0 block in the low half, zeros above (tail blocks).
static inline __m512i load_q8_one(const speck_block_q8_0 *b) {
    return _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)b[0].qs));
}

// Nibbles of two Q4_0 blocks as bytes in element order: [b0 0-15 | b0 16-31 | b1 0-15 |
// b1 16-31]. Each 16-byte qs is broadcast to two lanes and the odd lanes shift right by 4.
static inline __m512i unpack_q4_pair(const speck_block_q4_0 *b) {
    const __m512i shifts = _mm512_set_epi64(0x0004000400040004LL, 0x0004000400040004LL, 0, 0,
                                            0x0004000400040004LL, 0x0004000400040004LL, 0, 0);
    __m512i v = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)b[0].qs));
    v = _mm512_mask_broadcast_i32x4(v, 0xFF00, _mm_loadu_si128((const __m128i *)b[1].qs));
    return _mm512_and_si512(_mm512_srlv_epi16(v, shifts), _mm512_set1_epi8(0x0F));
}

static inline __m512i unpack_q4_one(const speck_block_q4_0 *b) {
    __m128i x = _mm_loadu_si128((const __m128i *)b[0].qs);
    __m256i v = _mm256_inserti128_si256(_mm256_castsi128_si256(x), _mm_srli_epi16(x, 4), 1);
    return _mm512_zextsi256_si512(_mm256_and_si256(v, _mm256_set1_epi8(0x0F)));
}

// sum_k (q_k - 8) * a_k per int32 lane, q unsigned nibbles: q*a - 8*a, both with VNNI.
static inline __m512i dot_q4_lanes(__m512i q, __m512i a) {
    const __m512i eight = _mm512_set1_epi8(8);
    __m512i z = _mm512_setzero_si512();
    return _mm512_sub_epi32(_mm512_dpbusd_epi32(z, q, a), _mm512_dpbusd_epi32(z, eight, a));
}

// sum_k w_k * a_k per int32 lane for signed w: |w| (unsigned) times a with w's sign applied.
// Exact as long as a != -128, which our quantizer never produces (|q| <= 127).
static inline __m512i dot_q8_lanes(__m512i w, __m512i a) {
    __mmask64 neg = _mm512_movepi8_mask(w);
    __m512i as = _mm512_mask_sub_epi8(a, neg, _mm512_setzero_si512(), a);
    return _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_abs_epi8(w), as);
}

// fp16 scales of 8 consecutive Q4_0 blocks as floats. With an 18-byte stride all eight lie in
// the first 128 bytes (words 0, 9, ..., 63), so one two-register word permute collects them
// instead of eight scalar loads and inserts.
static inline __m256 scales8_q4(const speck_block_q4_0 *b) {
    const __m512i idx = _mm512_zextsi128_si512(_mm_setr_epi16(0, 9, 18, 27, 36, 45, 54, 63));
    __m512i lo = _mm512_loadu_si512(b), hi = _mm512_loadu_si512((const char *)b + 64);
    return _mm256_cvtph_ps(_mm512_castsi512_si128(_mm512_permutex2var_epi16(lo, idx, hi)));
}

// Same for 8 Q8_0 blocks (34-byte stride): four blocks fit in 128 bytes (words 0, 17, 34, 51),
// so two permutes and a blend.
static inline __m256 scales8_q8(const speck_block_q8_0 *b) {
    const __m512i idx0 = _mm512_zextsi128_si512(_mm_setr_epi16(0, 17, 34, 51, 0, 0, 0, 0));
    const __m512i idx1 = _mm512_zextsi128_si512(_mm_setr_epi16(0, 0, 0, 0, 0, 17, 34, 51));
    const char *p = (const char *)b;
    __m512i h0 = _mm512_permutex2var_epi16(_mm512_loadu_si512(p), idx0, _mm512_loadu_si512(p + 64));
    __m512i h1 =
        _mm512_permutex2var_epi16(_mm512_loadu_si512(p + 136), idx1, _mm512_loadu_si512(p + 200));
    __m128i h = _mm_mask_blend_epi16(0xF0, _mm512_castsi512_si128(h0), _mm512_castsi512_si128(h1));
    return _mm256_cvtph_ps(h);
}

// Eight per-block scales -> four per-lane vectors for the four block pairs: [s0 x8, s1 x8], ...
static inline void expand8(__m256 s, __m512 out[4]) {
    const __m512 v = _mm512_castps256_ps512(s);
    out[0] =
        _mm512_permutexvar_ps(_mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0), v);
    out[1] =
        _mm512_permutexvar_ps(_mm512_set_epi32(3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2), v);
    out[2] =
        _mm512_permutexvar_ps(_mm512_set_epi32(5, 5, 5, 5, 5, 5, 5, 5, 4, 4, 4, 4, 4, 4, 4, 4), v);
    out[3] =
        _mm512_permutexvar_ps(_mm512_set_epi32(7, 7, 7, 7, 7, 7, 7, 7, 6, 6, 6, 6, 6, 6, 6, 6), v);
}

/* ---------------------------------------------------------------------------------------- */
/* Quantized dots (public speck_vec_dot: activations as Q8_0 blocks)                         */
/* ---------------------------------------------------------------------------------------- */

// w: (n) Q4_0 or Q8_0 (is_q4 constant after inlining), x: (n) Q8_0. Eight blocks per iteration
// into four float accumulators; tail blocks one at a time.
static inline __attribute__((always_inline)) float dot_quant(const void *wv, const int is_q4,
                                                             const speck_block_q8_0 *x, int64_t n) {
    const speck_block_q4_0 *w4 = wv;
    const speck_block_q8_0 *w8 = wv;
    const int64_t nb = n / SPECK_QK;
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                     _mm512_setzero_ps()};
    int64_t b = 0;
    for (; b + 8 <= nb; b += 8) {
        __m256 dw = is_q4 ? scales8_q4(w4 + b) : scales8_q8(w8 + b);
        __m512 s[4];
        expand8(_mm256_mul_ps(dw, scales8_q8(x + b)), s);
        for (int k = 0; k < 4; k++) {
            __m512i a = load_q8_pair(x + b + 2 * k);
            __m512i d = is_q4 ? dot_q4_lanes(unpack_q4_pair(w4 + b + 2 * k), a)
                              : dot_q8_lanes(load_q8_pair(w8 + b + 2 * k), a);
            acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), s[k], acc[k]);
        }
    }
    for (; b < nb; b++) {
        const float sc = _cvtsh_ss(is_q4 ? w4[b].d : w8[b].d) * _cvtsh_ss(x[b].d);
        __m512i a = load_q8_one(x + b);
        __m512i d =
            is_q4 ? dot_q4_lanes(unpack_q4_one(w4 + b), a) : dot_q8_lanes(load_q8_one(w8 + b), a);
        acc[0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), _mm512_set1_ps(sc), acc[0]);
    }
    return _mm512_reduce_add_ps(
        _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
}

static float dot_q4_0_avx512(const speck_block_q4_0 *w, const speck_block_q8_0 *x, int64_t n) {
    return dot_quant(w, 1, x, n);
}

static float dot_q8_0_avx512(const speck_block_q8_0 *w, const speck_block_q8_0 *x, int64_t n) {
    return dot_quant(w, 0, x, n);
}

/* ---------------------------------------------------------------------------------------- */
/* Matmul kernels: one weight row x up to SPECK_MT token rows (speck_q8_rows layout)         */
/* ---------------------------------------------------------------------------------------- */

// The decode hot loop. Weights are unpacked and their scales converted once per 8 blocks for all
// nt tokens (nt constant after inlining, so per-token accumulators stay in registers). Thanks to
// the precomputed s = d * sum(a), Q4_0's "- 8" costs one FMA per 8 blocks instead of a second
// dpbusd per pair: sum (q - 8) a = sum q a - 8 sum a.
// w: (n) Q4_0 or Q8_0; a: rows t0 .. t0 + nt - 1; out: (nt).
static inline __attribute__((always_inline)) void mm_body(const void *wv, const int is_q4,
                                                          const speck_q8_rows *a, int64_t t0,
                                                          const int nt, float *out) {
    const speck_block_q4_0 *w4 = wv;
    const speck_block_q8_0 *w8 = wv;
    const int64_t n = a->n, nb = n / SPECK_QK;
    const int8_t *qs[SPECK_MT];
    const float *ad[SPECK_MT], *as[SPECK_MT];
    __m512 acc[SPECK_MT][2];
    __m256 bias[SPECK_MT];
    float tail[SPECK_MT];
    for (int t = 0; t < nt; t++) {
        qs[t] = a->qs + (t0 + t) * n;
        ad[t] = a->d + (t0 + t) * nb;
        as[t] = a->s + (t0 + t) * nb;
        acc[t][0] = acc[t][1] = _mm512_setzero_ps();
        bias[t] = _mm256_setzero_ps();
        tail[t] = 0.0f;
    }
    int64_t b = 0;
    for (; b + 8 <= nb; b += 8) {
        const __m256 dw = is_q4 ? scales8_q4(w4 + b) : scales8_q8(w8 + b);
        __m512i q[4];
        for (int k = 0; k < 4; k++)
            q[k] = is_q4 ? unpack_q4_pair(w4 + b + 2 * k) : load_q8_pair(w8 + b + 2 * k);
        for (int t = 0; t < nt; t++) {
            __m512 s[4];
            expand8(_mm256_mul_ps(dw, _mm256_loadu_ps(ad[t] + b)), s);
            for (int k = 0; k < 4; k++) {
                __m512i av = _mm512_loadu_si512(qs[t] + (b + 2 * k) * SPECK_QK);
                __m512i d = is_q4 ? _mm512_dpbusd_epi32(_mm512_setzero_si512(), q[k], av)
                                  : dot_q8_lanes(q[k], av);
                acc[t][k & 1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), s[k], acc[t][k & 1]);
            }
            if (is_q4) bias[t] = _mm256_fmadd_ps(dw, _mm256_loadu_ps(as[t] + b), bias[t]);
        }
    }
    for (; b < nb; b++) {
        const float dw = _cvtsh_ss(is_q4 ? w4[b].d : w8[b].d);
        const __m512i q = is_q4 ? unpack_q4_one(w4 + b) : load_q8_one(w8 + b);
        for (int t = 0; t < nt; t++) {
            __m512i av =
                _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)(qs[t] + b * SPECK_QK)));
            __m512i d =
                is_q4 ? _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, av) : dot_q8_lanes(q, av);
            const float isum = (float)_mm512_reduce_add_epi32(d);
            tail[t] += dw * (ad[t][b] * isum - (is_q4 ? 8.0f * as[t][b] : 0.0f));
        }
    }
    for (int t = 0; t < nt; t++) {
        __m128 b4 = _mm_add_ps(_mm256_castps256_ps128(bias[t]), _mm256_extractf128_ps(bias[t], 1));
        b4 = _mm_add_ps(b4, _mm_movehl_ps(b4, b4));
        b4 = _mm_add_ss(b4, _mm_movehdup_ps(b4));
        out[t] = _mm512_reduce_add_ps(_mm512_add_ps(acc[t][0], acc[t][1])) -
                 8.0f * _mm_cvtss_f32(b4) + tail[t];
    }
}

// Q4_0 weights: one vpermt2w gathers the 16-byte qs of four consecutive 18-byte blocks (all
// word-aligned) into [b0 | b1 | b2 | b3]; the low nibbles are then elements 0-15 and the high
// nibbles elements 16-31 of each block, matching the activation order quantize_rows() stores
// for Q4_0 (speck_q8_rows, "q4 order"). Both dpbusd of a 4-block group land in the same int32
// lanes (lanes 4k..4k+3 = block k), so a group costs one convert and one FMA.
static inline __attribute__((always_inline)) void mm_q4_body(const speck_block_q4_0 *w,
                                                             const speck_q8_rows *a, int64_t t0,
                                                             const int nt, float *out) {
    const int64_t n = a->n, nb = n / SPECK_QK;
    // Word indices of qs of blocks 0-3 in (bytes 0..127), and of blocks 4-7 in (bytes 64..191).
    const __m512i idx_lo =
        _mm512_set_epi16(35, 34, 33, 32, 31, 30, 29, 28, 26, 25, 24, 23, 22, 21, 20, 19, 17, 16, 15,
                         14, 13, 12, 11, 10, 8, 7, 6, 5, 4, 3, 2, 1);
    const __m512i idx_hi =
        _mm512_add_epi16(idx_lo, _mm512_set1_epi16(4)); // block 4 qs at word 37 - 32
    const __m512i idx_d = _mm512_zextsi128_si512(_mm_setr_epi16(0, 9, 18, 27, 36, 45, 54, 63));
    const __m512i nib = _mm512_set1_epi8(0x0F);
    const __m512i exp0 = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    const __m512i exp1 = _mm512_add_epi32(exp0, _mm512_set1_epi32(4));
    const int8_t *qs[SPECK_MT];
    const float *ad[SPECK_MT], *as[SPECK_MT];
    __m512 acc[SPECK_MT][2];
    __m256 bias[SPECK_MT];
    float tail[SPECK_MT];
    for (int t = 0; t < nt; t++) {
        qs[t] = a->qs + (t0 + t) * n;
        ad[t] = a->d + (t0 + t) * nb;
        as[t] = a->s + (t0 + t) * nb;
        acc[t][0] = acc[t][1] = _mm512_setzero_ps();
        bias[t] = _mm256_setzero_ps();
        tail[t] = 0.0f;
    }
    int64_t b = 0;
    for (; b + 8 <= nb; b += 8) {
        const char *p = (const char *)(w + b);
        // 8 blocks are 144 bytes: the third register only takes bytes 128..143 (no over-read).
        const __m512i l0 = _mm512_loadu_si512(p), l1 = _mm512_loadu_si512(p + 64);
        const __m512i l2 = _mm512_zextsi128_si512(_mm_loadu_si128((const __m128i *)(p + 128)));
        const __m256 dw =
            _mm256_cvtph_ps(_mm512_castsi512_si128(_mm512_permutex2var_epi16(l0, idx_d, l1)));
        const __m512i v0 = _mm512_permutex2var_epi16(l0, idx_lo, l1);
        const __m512i v1 = _mm512_permutex2var_epi16(l1, idx_hi, l2);
        const __m512i q0l = _mm512_and_si512(v0, nib),
                      q0h = _mm512_and_si512(_mm512_srli_epi16(v0, 4), nib);
        const __m512i q1l = _mm512_and_si512(v1, nib),
                      q1h = _mm512_and_si512(_mm512_srli_epi16(v1, 4), nib);
        for (int t = 0; t < nt; t++) {
            const int8_t *x = qs[t] + b * SPECK_QK;
            const __m512 sc = _mm512_castps256_ps512(_mm256_mul_ps(dw, _mm256_loadu_ps(ad[t] + b)));
            __m512i d0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q0l, _mm512_loadu_si512(x));
            d0 = _mm512_dpbusd_epi32(d0, q0h, _mm512_loadu_si512(x + 64));
            __m512i d1 =
                _mm512_dpbusd_epi32(_mm512_setzero_si512(), q1l, _mm512_loadu_si512(x + 128));
            d1 = _mm512_dpbusd_epi32(d1, q1h, _mm512_loadu_si512(x + 192));
            acc[t][0] =
                _mm512_fmadd_ps(_mm512_cvtepi32_ps(d0), _mm512_permutexvar_ps(exp0, sc), acc[t][0]);
            acc[t][1] =
                _mm512_fmadd_ps(_mm512_cvtepi32_ps(d1), _mm512_permutexvar_ps(exp1, sc), acc[t][1]);
            bias[t] = _mm256_fmadd_ps(dw, _mm256_loadu_ps(as[t] + b), bias[t]);
        }
    }
    for (; b < nb; b++) { // natural order past the last full group of 8
        const float dw = _cvtsh_ss(w[b].d);
        const __m512i q = unpack_q4_one(w + b);
        for (int t = 0; t < nt; t++) {
            __m512i av =
                _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)(qs[t] + b * SPECK_QK)));
            const float isum =
                (float)_mm512_reduce_add_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), q, av));
            tail[t] += dw * (ad[t][b] * isum - 8.0f * as[t][b]);
        }
    }
    for (int t = 0; t < nt; t++) {
        __m128 b4 = _mm_add_ps(_mm256_castps256_ps128(bias[t]), _mm256_extractf128_ps(bias[t], 1));
        b4 = _mm_add_ps(b4, _mm_movehl_ps(b4, b4));
        b4 = _mm_add_ss(b4, _mm_movehdup_ps(b4));
        out[t] = _mm512_reduce_add_ps(_mm512_add_ps(acc[t][0], acc[t][1])) -
                 8.0f * _mm_cvtss_f32(b4) + tail[t];
    }
}

static void mm_q4_0_avx512(const speck_block_q4_0 *w, const speck_q8_rows *a, int64_t t0, int nt,
                           float *out) {
    switch (nt) {
    case 1:
        mm_q4_body(w, a, t0, 1, out);
        break;
    case 2:
        mm_q4_body(w, a, t0, 2, out);
        break;
    case 3:
        mm_q4_body(w, a, t0, 3, out);
        break;
    default:
        mm_q4_body(w, a, t0, 4, out);
        break;
    }
}

static void mm_q8_0_avx512(const speck_block_q8_0 *w, const speck_q8_rows *a, int64_t t0, int nt,
                           float *out) {
    switch (nt) {
    case 1:
        mm_body(w, 0, a, t0, 1, out);
        break;
    case 2:
        mm_body(w, 0, a, t0, 2, out);
        break;
    case 3:
        mm_body(w, 0, a, t0, 3, out);
        break;
    default:
        mm_body(w, 0, a, t0, 4, out);
        break;
    }
}

/* ---------------------------------------------------------------------------------------- */
/* Activation quantization and row conversions                                               */
/* ---------------------------------------------------------------------------------------- */

// roundf (half away from zero) exactly: truncate, then step away from zero when the dropped
// fraction (computed exactly: v - trunc(v) has no rounding error) is at least one half.
static inline __m512 round_away(__m512 v) {
    __m512 t = _mm512_roundscale_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_abs_ps(_mm512_sub_ps(v, t));
    __mmask16 up = _mm512_cmp_ps_mask(f, _mm512_set1_ps(0.5f), _CMP_GE_OQ);
    __m512 one = _mm512_or_ps(_mm512_and_ps(v, _mm512_set1_ps(-0.0f)), _mm512_set1_ps(1.0f));
    return _mm512_mask_add_ps(t, up, t, one);
}

// x: (n) -> y: (n / 32) blocks; bit-identical to speck_quantize_row_q8_0_ref.
static void quantize_q8_0_avx512(const float *x, speck_block_q8_0 *y, int64_t n) {
    for (int64_t b = 0; b < n / SPECK_QK; b++) {
        __m512 v0 = _mm512_loadu_ps(x + b * SPECK_QK);
        __m512 v1 = _mm512_loadu_ps(x + b * SPECK_QK + 16);
        const float amax =
            _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = speck_fp32_to_fp16(d);
        const __m512 vid = _mm512_set1_ps(id);
        __m512i i0 = _mm512_cvttps_epi32(round_away(_mm512_mul_ps(v0, vid)));
        __m512i i1 = _mm512_cvttps_epi32(round_away(_mm512_mul_ps(v1, vid)));
        _mm_storeu_si128((__m128i *)y[b].qs, _mm512_cvtepi32_epi8(i0));
        _mm_storeu_si128((__m128i *)(y[b].qs + 16), _mm512_cvtepi32_epi8(i1));
    }
}

// x: (n) fp16 -> y: (n) f32
static void f16_to_f32_avx512(const uint16_t *x, float *y, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, load_f16x16(x + i));
    if (i < n) {
        __mmask16 m = tail_mask16(n - i);
        _mm512_mask_storeu_ps(y + i, m, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, x + i)));
    }
}

// x: (n) bf16 -> y: (n) f32
static void bf16_to_f32_avx512(const uint16_t *x, float *y, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, load_bf16x16(x + i));
    if (i < n) {
        __mmask16 m = tail_mask16(n - i);
        __m512i v = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, x + i));
        _mm512_mask_storeu_ps(y + i, m, _mm512_castsi512_ps(_mm512_slli_epi32(v, 16)));
    }
}

// x: (n / 32) Q8_0 blocks -> y: (n)
static void q8_0_to_f32_avx512(const speck_block_q8_0 *x, float *y, int64_t n) {
    for (int64_t b = 0; b < n / SPECK_QK; b++) {
        const __m512 d = _mm512_set1_ps(_cvtsh_ss(x[b].d));
        __m128i q0 = _mm_loadu_si128((const __m128i *)x[b].qs);
        __m128i q1 = _mm_loadu_si128((const __m128i *)(x[b].qs + 16));
        _mm512_storeu_ps(y + b * SPECK_QK,
                         _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q0))));
        _mm512_storeu_ps(y + b * SPECK_QK + 16,
                         _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q1))));
    }
}

// x: (n / 32) Q4_0 blocks -> y: (n)
static void q4_0_to_f32_avx512(const speck_block_q4_0 *x, float *y, int64_t n) {
    const __m128i mask = _mm_set1_epi8(0x0F), eight = _mm_set1_epi8(8);
    for (int64_t b = 0; b < n / SPECK_QK; b++) {
        const __m512 d = _mm512_set1_ps(_cvtsh_ss(x[b].d));
        __m128i v = _mm_loadu_si128((const __m128i *)x[b].qs);
        __m128i lo = _mm_sub_epi8(_mm_and_si128(v, mask), eight);
        __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(v, 4), mask), eight);
        _mm512_storeu_ps(y + b * SPECK_QK,
                         _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(lo))));
        _mm512_storeu_ps(y + b * SPECK_QK + 16,
                         _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(hi))));
    }
}

const speck_kernel_table speck_kernels_avx512 = {
    .name = "avx512",
    .dot_f32 = dot_f32_avx512,
    .dot_f16 = dot_f16_avx512,
    .dot_bf16 = dot_bf16_avx512,
    .dot_q8_0 = dot_q8_0_avx512,
    .dot_q4_0 = dot_q4_0_avx512,
    .mm_q4_0 = mm_q4_0_avx512,
    .mm_q8_0 = mm_q8_0_avx512,
    .mm_tile_rows = {0, 4, 4, 4, 4},
    .mm_tile_spread = 4,
    .mm_f32 = mm_f32_avx512,
    .mm_f16 = mm_f16_avx512,
    .mm_bf16 = mm_bf16_avx512,
    .mm_panel_f32 = mm_panel_f32_avx512,
    .mm_panel_f16 = mm_panel_f16_avx512,
    .mm_panel_bf16 = mm_panel_bf16_avx512,
    .panel_tokens = 8,
    .panel_group = {0, 8, 4, 3, 2, 2, 2, 2, 2},
    .mm_panel_q4_0 = mm_panel_q4_0_avx512,
    .mm_panel_q8_0 = mm_panel_q8_0_avx512,
    .panel_q_tokens = 4,
    .panel_q_group = {{0, 4, 2, 2, 1}, {0, 4, 2, 2, 1}},
    .panel_q_spread = {1, 1},
    .gemm_pack = speck_gemm_pack_avx512,
    .gemm_run = speck_gemm_run_avx512,
    .quantize_q8_0 = quantize_q8_0_avx512,
    .f16_to_f32 = f16_to_f32_avx512,
    .bf16_to_f32 = bf16_to_f32_avx512,
    .attend = NULL, // speck_attend runs attend_group with one query
    .attend_group = speck_attend_group_avx512,
    .q8_0_to_f32 = q8_0_to_f32_avx512,
    .q4_0_to_f32 = q4_0_to_f32_avx512,
    .quantize_q8_k = speck_quantize_q8_k_avx512,
    .qt = speck_qt_avx512,
};
