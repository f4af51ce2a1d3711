// AVX-512 (F/BW/VL/DQ/VNNI) kernels. Compiled with -mavx512* flags; only reached after dispatch.c
// has checked the CPU.
//
// Quantized dots keep two 32-value blocks in one zmm register (lanes 0-7 of the int32 result
// belong to the first block, 8-15 to the second), multiply the int32 partial sums by a per-lane
// scale vector [s0 x8, s1 x8] and accumulate in float: no horizontal work per block.
#include <immintrin.h>
#include <string.h>

#include "kernels/kernels_internal.h"

static inline __mmask16 tail_mask16(int64_t r) { return (__mmask16)((1u << r) - 1); }

/* ---------------------------------------------------------------------------------------- */
/* Float dots                                                                                */
/* ---------------------------------------------------------------------------------------- */

// w, x: (n)
static float dot_f32_avx512(const float *w, const float *x, int64_t n) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i), _mm512_loadu_ps(x + i), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i + 16), _mm512_loadu_ps(x + i + 16), a1);
        a2 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i + 32), _mm512_loadu_ps(x + i + 32), a2);
        a3 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i + 48), _mm512_loadu_ps(x + i + 48), a3);
    }
    for (; i + 16 <= n; i += 16)
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i), _mm512_loadu_ps(x + i), a0);
    if (i < n) {
        __mmask16 m = tail_mask16(n - i);
        a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, w + i), _mm512_maskz_loadu_ps(m, x + i), a1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

static inline __m512 load_f16x16(const uint16_t *p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}

static inline __m512 load_bf16x16(const uint16_t *p) {
    __m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
}

// w: (n) fp16, x: (n) f32
static float dot_f16_avx512(const uint16_t *w, const float *x, int64_t n) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        a0 = _mm512_fmadd_ps(load_f16x16(w + i), _mm512_loadu_ps(x + i), a0);
        a1 = _mm512_fmadd_ps(load_f16x16(w + i + 16), _mm512_loadu_ps(x + i + 16), a1);
        a2 = _mm512_fmadd_ps(load_f16x16(w + i + 32), _mm512_loadu_ps(x + i + 32), a2);
        a3 = _mm512_fmadd_ps(load_f16x16(w + i + 48), _mm512_loadu_ps(x + i + 48), a3);
    }
    for (; i + 16 <= n; i += 16) a0 = _mm512_fmadd_ps(load_f16x16(w + i), _mm512_loadu_ps(x + i), a0);
    if (i < n) {
        __mmask16 m = tail_mask16(n - i);
        __m512 wv = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, w + i));
        a1 = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(m, x + i), a1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

// w: (n) bf16, x: (n) f32. bf16 is widened exactly to f32 (not dpbf16_ps, which would round the
// activations to bf16).
static float dot_bf16_avx512(const uint16_t *w, const float *x, int64_t n) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        a0 = _mm512_fmadd_ps(load_bf16x16(w + i), _mm512_loadu_ps(x + i), a0);
        a1 = _mm512_fmadd_ps(load_bf16x16(w + i + 16), _mm512_loadu_ps(x + i + 16), a1);
        a2 = _mm512_fmadd_ps(load_bf16x16(w + i + 32), _mm512_loadu_ps(x + i + 32), a2);
        a3 = _mm512_fmadd_ps(load_bf16x16(w + i + 48), _mm512_loadu_ps(x + i + 48), a3);
    }
    for (; i + 16 <= n; i += 16) a0 = _mm512_fmadd_ps(load_bf16x16(w + i), _mm512_loadu_ps(x + i), a0);
    if (i < n) {
        __mmask16 m = tail_mask16(n - i);
        __m512i v = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, w + i));
        __m512 wv = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
        a1 = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(m, x + i), a1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

/* ---------------------------------------------------------------------------------------- */
/* Quantized building blocks                                                                 */
/* ---------------------------------------------------------------------------------------- */

// The int8 values of two consecutive Q8_0 blocks: (64) bytes, block 0 in the low half.
static inline __m512i load_q8_pair(const speck_block_q8_0 *b) {
    __m256i lo = _mm256_loadu_si256((const __m256i *)b[0].qs);
    __m256i hi = _mm256_loadu_si256((const __m256i *)b[1].qs);
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

// One Q8_0 block in the low half, zeros above (tails with an odd block count).
static inline __m512i load_q8_one(const speck_block_q8_0 *b) {
    return _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)b[0].qs));
}

// Nibbles of two Q4_0 blocks as bytes 0..15 in element order: [b0 0-15 | b0 16-31 | b1 0-15 |
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

// Per-block scales d_w * d_a of four blocks (pointers to the first of each group of four), as
// two per-lane vectors: lo = [s0 x8, s1 x8], hi = [s2 x8, s3 x8]. The fp16 scales are gathered
// with integer loads (free ports in these loops) and converted in one go.
static inline void scales4(uint64_t wd, uint64_t ad, __m512 *lo, __m512 *hi) {
    __m256 f = _mm256_cvtph_ps(_mm_set_epi64x((long long)ad, (long long)wd));
    __m128 s = _mm_mul_ps(_mm256_castps256_ps128(f), _mm256_extractf128_ps(f, 1));
    __m512 s512 = _mm512_castps128_ps512(s);
    *lo = _mm512_permutexvar_ps(_mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0), s512);
    *hi = _mm512_permutexvar_ps(_mm512_set_epi32(3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2), s512);
}

#define D4(b) ((uint64_t)(b)[0].d | (uint64_t)(b)[1].d << 16 | (uint64_t)(b)[2].d << 32 | \
               (uint64_t)(b)[3].d << 48)

// Scale vector for one or two blocks (tails): [s0 x8, s1 x8] with s1 = 0 when only one.
static inline __m512 scales_tail(const uint16_t *wd, const uint16_t *ad, int nb) {
    float s0 = _cvtsh_ss(wd[0]) * _cvtsh_ss(ad[0]);
    float s1 = nb > 1 ? _cvtsh_ss(wd[1]) * _cvtsh_ss(ad[1]) : 0.0f;
    return _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(s0), _mm512_set1_ps(s1));
}

/* ---------------------------------------------------------------------------------------- */
/* Quantized dots                                                                            */
/* ---------------------------------------------------------------------------------------- */

// w: (n) Q4_0, x: (n) Q8_0. Eight blocks per iteration, four float accumulators.
static float dot_q4_0_avx512(const speck_block_q4_0 *w, const speck_block_q8_0 *x, int64_t n) {
    const int64_t nb = n / SPECK_QK;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    __m512 s0, s1, s2, s3;
    int64_t b = 0;
    for (; b + 8 <= nb; b += 8) {
        scales4(D4(w + b), D4(x + b), &s0, &s1);
        scales4(D4(w + b + 4), D4(x + b + 4), &s2, &s3);
        __m512i d0 = dot_q4_lanes(unpack_q4_pair(w + b), load_q8_pair(x + b));
        __m512i d1 = dot_q4_lanes(unpack_q4_pair(w + b + 2), load_q8_pair(x + b + 2));
        __m512i d2 = dot_q4_lanes(unpack_q4_pair(w + b + 4), load_q8_pair(x + b + 4));
        __m512i d3 = dot_q4_lanes(unpack_q4_pair(w + b + 6), load_q8_pair(x + b + 6));
        a0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d0), s0, a0);
        a1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d1), s1, a1);
        a2 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d2), s2, a2);
        a3 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d3), s3, a3);
    }
    for (; b + 2 <= nb; b += 2) {
        uint16_t wd[2] = {w[b].d, w[b + 1].d}, ad[2] = {x[b].d, x[b + 1].d};
        __m512i d = dot_q4_lanes(unpack_q4_pair(w + b), load_q8_pair(x + b));
        a0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), scales_tail(wd, ad, 2), a0);
    }
    if (b < nb) {
        __m512i d = dot_q4_lanes(unpack_q4_one(w + b), load_q8_one(x + b));
        a1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), scales_tail(&w[b].d, &x[b].d, 1), a1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

// w: (n) Q8_0, x: (n) Q8_0.
static float dot_q8_0_avx512(const speck_block_q8_0 *w, const speck_block_q8_0 *x, int64_t n) {
    const int64_t nb = n / SPECK_QK;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    __m512 s0, s1, s2, s3;
    int64_t b = 0;
    for (; b + 8 <= nb; b += 8) {
        scales4(D4(w + b), D4(x + b), &s0, &s1);
        scales4(D4(w + b + 4), D4(x + b + 4), &s2, &s3);
        __m512i d0 = dot_q8_lanes(load_q8_pair(w + b), load_q8_pair(x + b));
        __m512i d1 = dot_q8_lanes(load_q8_pair(w + b + 2), load_q8_pair(x + b + 2));
        __m512i d2 = dot_q8_lanes(load_q8_pair(w + b + 4), load_q8_pair(x + b + 4));
        __m512i d3 = dot_q8_lanes(load_q8_pair(w + b + 6), load_q8_pair(x + b + 6));
        a0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d0), s0, a0);
        a1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d1), s1, a1);
        a2 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d2), s2, a2);
        a3 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d3), s3, a3);
    }
    for (; b + 2 <= nb; b += 2) {
        uint16_t wd[2] = {w[b].d, w[b + 1].d}, ad[2] = {x[b].d, x[b + 1].d};
        __m512i d = dot_q8_lanes(load_q8_pair(w + b), load_q8_pair(x + b));
        a0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), scales_tail(wd, ad, 2), a0);
    }
    if (b < nb) {
        __m512i d = dot_q8_lanes(load_q8_one(w + b), load_q8_one(x + b));
        a1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), scales_tail(&w[b].d, &x[b].d, 1), a1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

// One weight row against nt activation rows (nt a compile-time constant after inlining, so the
// per-token accumulators live in registers). The weight pair is unpacked once for all tokens.
// w: (n) Q4_0 or Q8_0; x: nt rows of (n) Q8_0 at x + t * xs blocks; out: (nt).
static inline __attribute__((always_inline)) void
dot_mt_body(const void *wv, int is_q4, const speck_block_q8_0 *x, int64_t xs, int nt, int64_t n,
            float *out) {
    const int64_t nb = n / SPECK_QK;
    const speck_block_q4_0 *w4 = wv;
    const speck_block_q8_0 *w8 = wv;
    __m512 acc[SPECK_MT][2];
    for (int t = 0; t < nt; t++) acc[t][0] = acc[t][1] = _mm512_setzero_ps();
    int64_t b = 0;
    for (; b + 4 <= nb; b += 4) {
        __m512i q0 = is_q4 ? unpack_q4_pair(w4 + b) : load_q8_pair(w8 + b);
        __m512i q1 = is_q4 ? unpack_q4_pair(w4 + b + 2) : load_q8_pair(w8 + b + 2);
        const uint64_t wd = is_q4 ? D4(w4 + b) : D4(w8 + b);
        for (int t = 0; t < nt; t++) {
            const speck_block_q8_0 *xt = x + t * xs + b;
            __m512 s0, s1;
            scales4(wd, D4(xt), &s0, &s1);
            __m512i d0 = is_q4 ? dot_q4_lanes(q0, load_q8_pair(xt)) : dot_q8_lanes(q0, load_q8_pair(xt));
            __m512i d1 = is_q4 ? dot_q4_lanes(q1, load_q8_pair(xt + 2))
                               : dot_q8_lanes(q1, load_q8_pair(xt + 2));
            acc[t][0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d0), s0, acc[t][0]);
            acc[t][1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d1), s1, acc[t][1]);
        }
    }
    for (; b < nb; b++) {
        __m512i q = is_q4 ? unpack_q4_one(w4 + b) : load_q8_one(w8 + b);
        const uint16_t wd = is_q4 ? w4[b].d : w8[b].d;
        for (int t = 0; t < nt; t++) {
            const speck_block_q8_0 *xt = x + t * xs + b;
            __m512i d = is_q4 ? dot_q4_lanes(q, load_q8_one(xt)) : dot_q8_lanes(q, load_q8_one(xt));
            acc[t][0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), scales_tail(&wd, &xt->d, 1), acc[t][0]);
        }
    }
    for (int t = 0; t < nt; t++) out[t] = _mm512_reduce_add_ps(_mm512_add_ps(acc[t][0], acc[t][1]));
}

static void dot_q4_0_mt_avx512(const speck_block_q4_0 *w, const speck_block_q8_0 *x, int64_t xs,
                               int nt, int64_t n, float *out) {
    switch (nt) {
    case 1: out[0] = dot_q4_0_avx512(w, x, n); break;
    case 2: dot_mt_body(w, 1, x, xs, 2, n, out); break;
    case 3: dot_mt_body(w, 1, x, xs, 3, n, out); break;
    default: dot_mt_body(w, 1, x, xs, 4, n, out); break;
    }
}

static void dot_q8_0_mt_avx512(const speck_block_q8_0 *w, const speck_block_q8_0 *x, int64_t xs,
                               int nt, int64_t n, float *out) {
    switch (nt) {
    case 1: out[0] = dot_q8_0_avx512(w, x, n); break;
    case 2: dot_mt_body(w, 0, x, xs, 2, n, out); break;
    case 3: dot_mt_body(w, 0, x, xs, 3, n, out); break;
    default: dot_mt_body(w, 0, x, xs, 4, n, out); break;
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
        const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
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
        _mm512_storeu_ps(y + b * SPECK_QK, _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q0))));
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
        _mm512_storeu_ps(y + b * SPECK_QK, _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(lo))));
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
    .dot_q4_0_mt = dot_q4_0_mt_avx512,
    .dot_q8_0_mt = dot_q8_0_mt_avx512,
    .quantize_q8_0 = quantize_q8_0_avx512,
    .f16_to_f32 = f16_to_f32_avx512,
    .bf16_to_f32 = bf16_to_f32_avx512,
    .q8_0_to_f32 = q8_0_to_f32_avx512,
    .q4_0_to_f32 = q4_0_to_f32_avx512,
};
