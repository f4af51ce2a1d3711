// AVX2 + FMA + F16C kernels, for x86-64 CPUs without AVX-512 VNNI. Compiled with -mavx2 -mfma
// -mf16c; only reached after dispatch.c has checked the CPU.
//
// Quantized dots hold one 32-value block per ymm register. Signed int8 products go through
// maddubs (unsigned x signed -> int16 pairs, cannot saturate here: |pair| <= 2*128*127 < 32768)
// then madd with ones to int32.
#include <immintrin.h>

#include "kernels/kernels_internal.h"

static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* ---------------------------------------------------------------------------------------- */
/* Float dots                                                                                */
/* ---------------------------------------------------------------------------------------- */

static inline __m256 load_f16x8(const uint16_t *p) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

static inline __m256 load_bf16x8(const uint16_t *p) {
    __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}

// w, x: (n)
static float dot_f32_avx2(const float *w, const float *x, int64_t n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 8), _mm256_loadu_ps(x + i + 8), a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 16), _mm256_loadu_ps(x + i + 16), a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 24), _mm256_loadu_ps(x + i + 24), a3);
    }
    for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), a0);
    float s = hsum256(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; i < n; i++) s += w[i] * x[i];
    return s;
}

// w: (n) fp16, x: (n) f32
static float dot_f16_avx2(const uint16_t *w, const float *x, int64_t n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_fmadd_ps(load_f16x8(w + i), _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(load_f16x8(w + i + 8), _mm256_loadu_ps(x + i + 8), a1);
        a2 = _mm256_fmadd_ps(load_f16x8(w + i + 16), _mm256_loadu_ps(x + i + 16), a2);
        a3 = _mm256_fmadd_ps(load_f16x8(w + i + 24), _mm256_loadu_ps(x + i + 24), a3);
    }
    for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(load_f16x8(w + i), _mm256_loadu_ps(x + i), a0);
    float s = hsum256(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; i < n; i++) s += _cvtsh_ss(w[i]) * x[i];
    return s;
}

// w: (n) bf16 (widened exactly), x: (n) f32
static float dot_bf16_avx2(const uint16_t *w, const float *x, int64_t n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_fmadd_ps(load_bf16x8(w + i), _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(load_bf16x8(w + i + 8), _mm256_loadu_ps(x + i + 8), a1);
        a2 = _mm256_fmadd_ps(load_bf16x8(w + i + 16), _mm256_loadu_ps(x + i + 16), a2);
        a3 = _mm256_fmadd_ps(load_bf16x8(w + i + 24), _mm256_loadu_ps(x + i + 24), a3);
    }
    for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(load_bf16x8(w + i), _mm256_loadu_ps(x + i), a0);
    float s = hsum256(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; i < n; i++) s += speck_bf16_to_fp32(w[i]) * x[i];
    return s;
}

/* ---------------------------------------------------------------------------------------- */
/* Quantized dots                                                                            */
/* ---------------------------------------------------------------------------------------- */

// The 32 nibbles of a Q4_0 block as bytes in element order (low nibbles, then high nibbles).
static inline __m256i unpack_q4(const speck_block_q4_0 *b) {
    __m128i x = _mm_loadu_si128((const __m128i *)b->qs);
    __m256i v = _mm256_inserti128_si256(_mm256_castsi128_si256(x), _mm_srli_epi16(x, 4), 1);
    return _mm256_and_si256(v, _mm256_set1_epi8(0x0F));
}

static inline __m256i load_q8(const speck_block_q8_0 *b) {
    return _mm256_loadu_si256((const __m256i *)b->qs);
}

// int32 partial sums of (q - 8) * a for unsigned nibbles q: maddubs(q, a) - maddubs(8, a) in
// int16 (|q*a pair| <= 2*15*127), then widened.
static inline __m256i dot_q4_lanes(__m256i q, __m256i a) {
    __m256i p = _mm256_sub_epi16(_mm256_maddubs_epi16(q, a), _mm256_maddubs_epi16(_mm256_set1_epi8(8), a));
    return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
}

// int32 partial sums of w * a for signed w: |w| times a with w's sign (a != -128).
static inline __m256i dot_q8_lanes(__m256i w, __m256i a) {
    __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w));
    return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
}

static inline __m256 block_scale(uint16_t dw, uint16_t da) {
    return _mm256_set1_ps(_cvtsh_ss(dw) * _cvtsh_ss(da));
}

// w: (n) Q4_0, x: (n) Q8_0
static float dot_q4_0_avx2(const speck_block_q4_0 *w, const speck_block_q8_0 *x, int64_t n) {
    const int64_t nb = n / SPECK_QK;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0;
    int64_t b = 0;
    for (; b + 2 <= nb; b += 2) {
        __m256i d0 = dot_q4_lanes(unpack_q4(w + b), load_q8(x + b));
        __m256i d1 = dot_q4_lanes(unpack_q4(w + b + 1), load_q8(x + b + 1));
        a0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d0), block_scale(w[b].d, x[b].d), a0);
        a1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d1), block_scale(w[b + 1].d, x[b + 1].d), a1);
    }
    if (b < nb) {
        __m256i d = dot_q4_lanes(unpack_q4(w + b), load_q8(x + b));
        a0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), block_scale(w[b].d, x[b].d), a0);
    }
    return hsum256(_mm256_add_ps(a0, a1));
}

// w: (n) Q8_0, x: (n) Q8_0
static float dot_q8_0_avx2(const speck_block_q8_0 *w, const speck_block_q8_0 *x, int64_t n) {
    const int64_t nb = n / SPECK_QK;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0;
    int64_t b = 0;
    for (; b + 2 <= nb; b += 2) {
        __m256i d0 = dot_q8_lanes(load_q8(w + b), load_q8(x + b));
        __m256i d1 = dot_q8_lanes(load_q8(w + b + 1), load_q8(x + b + 1));
        a0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d0), block_scale(w[b].d, x[b].d), a0);
        a1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d1), block_scale(w[b + 1].d, x[b + 1].d), a1);
    }
    if (b < nb) {
        __m256i d = dot_q8_lanes(load_q8(w + b), load_q8(x + b));
        a0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), block_scale(w[b].d, x[b].d), a0);
    }
    return hsum256(_mm256_add_ps(a0, a1));
}

/* ---------------------------------------------------------------------------------------- */
/* Activation quantization and row conversions                                               */
/* ---------------------------------------------------------------------------------------- */

// Exact roundf: truncate, then step away from zero when the (exactly computed) dropped fraction
// is at least one half.
static inline __m256 round_away(__m256 v) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    __m256 f = _mm256_andnot_ps(sign, _mm256_sub_ps(v, t));
    __m256 up = _mm256_cmp_ps(f, _mm256_set1_ps(0.5f), _CMP_GE_OQ);
    __m256 one = _mm256_or_ps(_mm256_and_ps(v, sign), _mm256_set1_ps(1.0f));
    return _mm256_add_ps(t, _mm256_and_ps(up, one));
}

// x: (n) -> y: (n / 32) blocks; bit-identical to speck_quantize_row_q8_0_ref.
static void quantize_q8_0_avx2(const float *x, speck_block_q8_0 *y, int64_t n) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t b = 0; b < n / SPECK_QK; b++) {
        __m256 v[4];
        __m256 m = _mm256_setzero_ps();
        for (int k = 0; k < 4; k++) {
            v[k] = _mm256_loadu_ps(x + b * SPECK_QK + 8 * k);
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v[k]));
        }
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        const float amax = _mm_cvtss_f32(m4);
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = speck_fp32_to_fp16(d);
        const __m256 vid = _mm256_set1_ps(id);
        __m256i i[4];
        for (int k = 0; k < 4; k++) i[k] = _mm256_cvttps_epi32(round_away(_mm256_mul_ps(v[k], vid)));
        // Pack 32 int32 -> 32 int8 (values fit, no saturation); packs interleave 128-bit lanes,
        // the final permute restores element order.
        __m256i p16a = _mm256_packs_epi32(i[0], i[1]);
        __m256i p16b = _mm256_packs_epi32(i[2], i[3]);
        __m256i p8 = _mm256_packs_epi16(p16a, p16b);
        p8 = _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)y[b].qs, p8);
    }
}

// x: (n) fp16 -> y: (n) f32
static void f16_to_f32_avx2(const uint16_t *x, float *y, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, load_f16x8(x + i));
    for (; i < n; i++) y[i] = _cvtsh_ss(x[i]);
}

// x: (n) bf16 -> y: (n) f32
static void bf16_to_f32_avx2(const uint16_t *x, float *y, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, load_bf16x8(x + i));
    for (; i < n; i++) y[i] = speck_bf16_to_fp32(x[i]);
}

// x: (n / 32) Q8_0 blocks -> y: (n)
static void q8_0_to_f32_avx2(const speck_block_q8_0 *x, float *y, int64_t n) {
    for (int64_t b = 0; b < n / SPECK_QK; b++) {
        const __m256 d = _mm256_set1_ps(_cvtsh_ss(x[b].d));
        for (int k = 0; k < 4; k++) {
            __m128i q = _mm_loadl_epi64((const __m128i *)(x[b].qs + 8 * k));
            _mm256_storeu_ps(y + b * SPECK_QK + 8 * k,
                             _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q))));
        }
    }
}

// x: (n / 32) Q4_0 blocks -> y: (n)
static void q4_0_to_f32_avx2(const speck_block_q4_0 *x, float *y, int64_t n) {
    for (int64_t b = 0; b < n / SPECK_QK; b++) {
        const __m256 d = _mm256_set1_ps(_cvtsh_ss(x[b].d));
        __m256i q = _mm256_sub_epi8(unpack_q4(x + b), _mm256_set1_epi8(8));
        __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
        __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
        for (int k = 0; k < 4; k++)
            _mm256_storeu_ps(y + b * SPECK_QK + 8 * k,
                             _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(parts[k]))));
    }
}

const speck_kernel_table speck_kernels_avx2 = {
    .name = "avx2",
    .dot_f32 = dot_f32_avx2,
    .dot_f16 = dot_f16_avx2,
    .dot_bf16 = dot_bf16_avx2,
    .dot_q8_0 = dot_q8_0_avx2,
    .dot_q4_0 = dot_q4_0_avx2,
    .mm_q4_0 = NULL, // matmul uses the Q8_0-block dots
    .mm_q8_0 = NULL,
    .gemm_pack = NULL, // prefill uses sgemm
    .gemm_run = NULL,
    .quantize_q8_0 = quantize_q8_0_avx2,
    .f16_to_f32 = f16_to_f32_avx2,
    .bf16_to_f32 = bf16_to_f32_avx2,
    .attend = speck_attend_ref,
    .q8_0_to_f32 = q8_0_to_f32_avx2,
    .q4_0_to_f32 = q4_0_to_f32_avx2,
};
