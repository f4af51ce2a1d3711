// AVX2 + FMA + F16C kernels, for x86-64 CPUs without AVX-512 VNNI. Compiled with -mavx2 -mfma
// -mf16c; only reached after dispatch.c has checked the CPU.
//
// Quantized dots hold one 32-value block per ymm register. Signed int8 products go through
// maddubs (unsigned x signed -> int16 pairs, cannot saturate here: |pair| <= 2*128*127 < 32768)
// then madd with ones to int32.
#include <immintrin.h>
#include <math.h>
#include <string.h>

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
    for (; i + 8 <= n; i += 8)
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), a0);
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
    __m256i p =
        _mm256_sub_epi16(_mm256_maddubs_epi16(q, a), _mm256_maddubs_epi16(_mm256_set1_epi8(8), a));
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
        for (int k = 0; k < 4; k++)
            i[k] = _mm256_cvttps_epi32(round_away(_mm256_mul_ps(v[k], vid)));
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

/* ---------------------------------------------------------------------------------------- */
/* Attention (the same scheme as the AVX-512 kernel, 8 lanes)                                */
/* ---------------------------------------------------------------------------------------- */

// Lane r = sum of a[r]'s 8 lanes, through the same tree for every slot (pairs, quads, halves).
static inline __m256 hsum8x8(const __m256 a[8]) {
    const __m256 h01 = _mm256_hadd_ps(a[0], a[1]), h23 = _mm256_hadd_ps(a[2], a[3]);
    const __m256 h45 = _mm256_hadd_ps(a[4], a[5]), h67 = _mm256_hadd_ps(a[6], a[7]);
    const __m256 q0 = _mm256_hadd_ps(h01, h23), q1 = _mm256_hadd_ps(h45, h67);
    return _mm256_add_ps(_mm256_permute2f128_ps(q0, q1, 0x20),
                         _mm256_permute2f128_ps(q0, q1, 0x31));
}

// Lanes below n set (maskload/maskstore masks), n in 0..8.
static inline __m256i lanes8(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// e^x for x <= 0: Cody-Waite reduction and the Cephes expf polynomial (as the AVX-512 kernel),
// 2^n put into the exponent field; x is clamped at -87 so 2^n stays a normal float (weights
// below e^-87 relative to the largest are ~1e-38: nothing).
static inline __m256 exp_nonpos8(__m256 x) {
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i e =
        _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

// c * tanh(s / c) (attention-logit soft-capping), tanh from e = e^(-2|x|) as (1 - e) / (1 + e)
// with x's sign: absolute error ~1e-7 x c, no overflow for any s.
static inline __m256 softcap8(__m256 s, float c) {
    const __m256 x = _mm256_mul_ps(s, _mm256_set1_ps(1.0f / c));
    const __m256 sign = _mm256_and_ps(x, _mm256_set1_ps(-0.0f));
    const __m256 e = exp_nonpos8(_mm256_mul_ps(_mm256_andnot_ps(sign, x), _mm256_set1_ps(-2.0f)));
    const __m256 t = _mm256_div_ps(_mm256_sub_ps(_mm256_set1_ps(1.0f), e),
                                   _mm256_add_ps(_mm256_set1_ps(1.0f), e));
    return _mm256_mul_ps(_mm256_or_ps(t, sign), _mm256_set1_ps(c));
}

// Chunk idx.. of a key/value row of kind K (kernels_internal.h): floats (lanes m), f16 values
// (the first n of the chunk's 8; the rest read as 0), or 8 values of a Q8_0 / Q4_0 block (head
// sizes a multiple of 32: always all 8). Every kind is widened exactly (a block value d * q fits
// a float), so all give the f32 arithmetic on the same values.
static inline __attribute__((always_inline)) __m256 load_kv8(const void *row, int64_t idx,
                                                             __m256i m, int n, const int K) {
    if (K == SPECK_KV_F32) return _mm256_maskload_ps((const float *)row + idx, m);
    if (K == SPECK_KV_Q8 || K == SPECK_KV_Q4) {
        const int o = (int)(idx & 31); // 0, 8, 16 or 24 within the block
        const uint8_t *b = (const uint8_t *)row + (idx >> 5) * (K == SPECK_KV_Q8 ? 34 : 18);
        uint16_t dh;
        memcpy(&dh, b, 2);
        const __m256 d = _mm256_set1_ps(_cvtsh_ss(dh));
        __m256i q;
        if (K == SPECK_KV_Q8) {
            q = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(b + 2 + o)));
        } else { // element j: low nibble of byte j, element j + 16: its high nibble; levels - 8
            const __m256i u =
                _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(b + 2 + (o & 15))));
            q = _mm256_sub_epi32(
                _mm256_and_si256(o >= 16 ? _mm256_srli_epi32(u, 4) : u, _mm256_set1_epi32(15)),
                _mm256_set1_epi32(8));
        }
        return _mm256_mul_ps(_mm256_cvtepi32_ps(q), d);
    }
    const uint16_t *h = (const uint16_t *)row + idx;
    if (n == 8) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)h));
    uint16_t t[8] = {0};
    memcpy(t, h, (size_t)n * sizeof(uint16_t));
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)t));
}

// out[c0 * 8 ..) (cn chunks of 8, the last with lanes `last` / `ln` of them) = inv * sum_j sc[j]
// v_j; two accumulator sets by j parity, summed at the end.
static inline __attribute__((always_inline)) void
attend_v_slab8(const float *sc, const void *vb, int64_t ld, int n_keys, const int cn, __m256i last,
               int ln, float inv, float *out, const int K) {
    __m256 o[2][4];
    for (int u = 0; u < 2; u++)
        for (int c = 0; c < cn; c++) o[u][c] = _mm256_setzero_ps();
    const __m256i all = _mm256_set1_epi32(-1);
    for (int j = 0; j < n_keys; j += 2)
        for (int u = 0; u < 2 && j + u < n_keys; u++) {
            const __m256 p = _mm256_set1_ps(sc[j + u]);
            const void *v = speck_kv_row(vb, j + u, ld, K);
            for (int c = 0; c < cn; c++)
                o[u][c] = _mm256_fmadd_ps(
                    p, load_kv8(v, 8 * c, c == cn - 1 ? last : all, c == cn - 1 ? ln : 8, K),
                    o[u][c]);
        }
    for (int c = 0; c < cn; c++)
        _mm256_maskstore_ps(out + 8 * c, c == cn - 1 ? last : all,
                            _mm256_mul_ps(_mm256_add_ps(o[0][c], o[1][c]), _mm256_set1_ps(inv)));
}

// q: (hd); keys/values kb + j * ld, vb + j * ld for j < n_keys (rows of kind K); sc: (n_keys);
// out: (hd).
static inline __attribute__((always_inline)) int
attend_body8(const float *q, const void *kb, const void *vb, int64_t ld, int hd, int n_keys,
             float scale, float softcap, const uint8_t *allow, float *sc, float *out, const int K) {
    const int nc = (hd + 7) / 8, hn = hd - 8 * (nc - 1);
    const __m256i hm = lanes8(hn), all = _mm256_set1_epi32(-1);
    const __m256 ninf = _mm256_set1_ps(-INFINITY);
    __m256 mx = ninf;
    for (int j0 = 0; j0 < n_keys; j0 += 8) {
        const int nk = n_keys - j0 < 8 ? n_keys - j0 : 8;
        __m256 acc[8];
        for (int r = 0; r < 8; r++) {
            acc[r] = _mm256_setzero_ps();
            if (r >= nk) continue;
            const void *k = speck_kv_row(kb, j0 + r, ld, K);
            for (int c = 0; c < nc; c++) {
                const __m256i m = c == nc - 1 ? hm : all;
                acc[r] = _mm256_fmadd_ps(load_kv8(k, 8 * c, m, c == nc - 1 ? hn : 8, K),
                                         _mm256_maskload_ps(q + 8 * c, m), acc[r]);
            }
        }
        __m256i ok = lanes8(nk);
        if (allow) {
            uint8_t a8[8] = {0};
            memcpy(a8, allow + j0, (size_t)nk);
            const __m256i a = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)a8));
            ok = _mm256_andnot_si256(_mm256_cmpeq_epi32(a, _mm256_setzero_si256()), ok);
        }
        __m256 sv = _mm256_mul_ps(hsum8x8(acc), _mm256_set1_ps(scale));
        if (softcap > 0) sv = softcap8(sv, softcap);
        const __m256 s = _mm256_blendv_ps(ninf, sv, _mm256_castsi256_ps(ok));
        _mm256_maskstore_ps(sc + j0, lanes8(nk), s);
        mx = _mm256_max_ps(mx, s);
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    const float m = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
    if (m == -INFINITY) {
        memset(out, 0, (size_t)hd * sizeof(float));
        return 0;
    }
    __m256 sum = _mm256_setzero_ps();
    for (int j0 = 0; j0 < n_keys; j0 += 8) {
        const int nk = n_keys - j0 < 8 ? n_keys - j0 : 8;
        const __m256i tm = lanes8(nk);
        const __m256 s = _mm256_maskload_ps(sc + j0, tm);
        const __m256 ok =
            _mm256_and_ps(_mm256_castsi256_ps(tm), _mm256_cmp_ps(s, ninf, _CMP_NEQ_OQ));
        const __m256 p = _mm256_and_ps(ok, exp_nonpos8(_mm256_sub_ps(s, _mm256_set1_ps(m))));
        _mm256_maskstore_ps(sc + j0, tm, p);
        sum = _mm256_add_ps(sum, p);
    }
    const float inv = 1.0f / hsum256(sum);
    for (int c0 = 0; c0 < nc; c0 += 4) {
        const int cn = nc - c0 < 4 ? nc - c0 : 4;
        const __m256i last = c0 + cn == nc ? hm : all;
        const int ln = c0 + cn == nc ? hn : 8;
        const void *v = (const char *)vb + speck_kv_bytes(8 * c0, K);
        switch (cn) {
        case 1:
            attend_v_slab8(sc, v, ld, n_keys, 1, last, ln, inv, out + 8 * c0, K);
            break;
        case 2:
            attend_v_slab8(sc, v, ld, n_keys, 2, last, ln, inv, out + 8 * c0, K);
            break;
        case 3:
            attend_v_slab8(sc, v, ld, n_keys, 3, last, ln, inv, out + 8 * c0, K);
            break;
        default:
            attend_v_slab8(sc, v, ld, n_keys, 4, last, ln, inv, out + 8 * c0, K);
            break;
        }
    }
    return 1;
}

static int attend_avx2(const float *q, const float *kb, const float *vb, int64_t ld, int hd,
                       int n_keys, float scale, float softcap, const uint8_t *allow, float *sc,
                       float *out) {
    return attend_body8(q, kb, vb, ld, hd, n_keys, scale, softcap, allow, sc, out, SPECK_KV_F32);
}

// speck_attend_group on AVX2: one query at a time (keys and values re-read from cache per
// query), f16 and block rows widened as they are loaded rather than copied to floats first (the
// copy cost a 5 M-parameter model's decode 2-5 %).
static int attend_group_avx2(const float *q, int64_t ldq, int nt, int gq, const int *n_keys,
                             const uint8_t *allow, int64_t lda, const void *kb, const void *vb,
                             speck_type kv, int64_t ld, int hd, float scale, float softcap,
                             float *sc, int64_t sc_ld, float *out, int64_t ldo) {
    (void)sc_ld;
    int empty = 0;
    for (int t = 0; t < nt; t++)
        for (int h = 0; h < gq; h++) {
            const float *qp = q + t * ldq + (int64_t)h * hd;
            const uint8_t *al = allow ? allow + t * lda : NULL;
            float *o = out + t * ldo + (int64_t)h * hd;
            int got;
            switch (speck_kv_kind(kv)) {
            case SPECK_KV_F16:
                got = attend_body8(qp, kb, vb, ld, hd, n_keys[t], scale, softcap, al, sc, o,
                                   SPECK_KV_F16);
                break;
            case SPECK_KV_Q8:
                got = attend_body8(qp, kb, vb, ld, hd, n_keys[t], scale, softcap, al, sc, o,
                                   SPECK_KV_Q8);
                break;
            case SPECK_KV_Q4:
                got = attend_body8(qp, kb, vb, ld, hd, n_keys[t], scale, softcap, al, sc, o,
                                   SPECK_KV_Q4);
                break;
            default:
                got = attend_body8(qp, kb, vb, ld, hd, n_keys[t], scale, softcap, al, sc, o,
                                   SPECK_KV_F32);
                break;
            }
            empty += !got;
        }
    return empty;
}

/* ---------------------------------------------------------------------------------------- */
/* Float weight tiles (the AVX-512 scheme with 8 lanes and 16 registers)                     */
/* ---------------------------------------------------------------------------------------- */

// 8 weight values of row w from element i on, widened to f32; the last partial chunk (m < 8
// values) goes through a zero-padded copy.
static inline __m256 load_w8(const void *w, int64_t i, const int wt, int m) {
    if (m < 8) {
        uint16_t h[8] = {0};
        float f[8] = {0};
        if (wt == SPECK_W_F32) {
            memcpy(f, (const float *)w + i, (size_t)m * sizeof(float));
            return _mm256_loadu_ps(f);
        }
        memcpy(h, (const uint16_t *)w + i, (size_t)m * sizeof(uint16_t));
        return wt == SPECK_W_F16 ? load_f16x8(h) : load_bf16x8(h);
    }
    if (wt == SPECK_W_F32) return _mm256_loadu_ps((const float *)w + i);
    return wt == SPECK_W_F16 ? load_f16x8((const uint16_t *)w + i)
                             : load_bf16x8((const uint16_t *)w + i);
}

// Values of each weight row ftile8 prefetches ahead of its loads: a tile's rows are separate
// streams (speck_mm_rows takes them from separate parts of a row range), and the hardware
// prefetchers alone kept too few bytes in flight for them (smollm2-135m F32 on this path, 2 Zen
// 5 cores, adjacent rows, alternated: 4-token pass 32-34 -> 25-26 ms, 2 tokens 20-21 -> 17.5).
// Prefetches past a row's end touch the next row or nothing: harmless.
#ifndef SPECK_FT_AHEAD
#define SPECK_FT_AHEAD 512
#endif

// A tile of R weight rows x T tokens (R * T <= 8): one accumulator and one FMA chain per output,
// all sums reduced by hsum8x8's tree (the same for every slot), so a result does not depend on
// the tile it sits in. Missing rows/tokens of an edge tile repeat row/token 0 and are not stored.
static inline __attribute__((always_inline)) void ftile8(const void *w, size_t wrow, int rows,
                                                         const float *x, int64_t ldx, int nt,
                                                         int64_t n, const int wt, const int R,
                                                         const int T, float *out) {
    const char *wr[8];
    const float *xr[4];
    for (int r = 0; r < R; r++) wr[r] = (const char *)w + (r < rows ? (size_t)r * wrow : 0);
    for (int t = 0; t < T; t++) xr[t] = x + (t < nt ? t * ldx : 0);
    __m256 acc[8];
    for (int s = 0; s < 8; s++) acc[s] = _mm256_setzero_ps();
    int64_t i = 0;
    const int esz = wt == SPECK_W_F32 ? 4 : 2;
    for (; i + 8 <= n; i += 8) {
        __m256 xv[4];
        for (int t = 0; t < T; t++) xv[t] = _mm256_loadu_ps(xr[t] + i);
        if ((i * esz) % 64 == 0) // once per cache line of each row
            for (int r = 0; r < R; r++)
                _mm_prefetch(wr[r] + (i + SPECK_FT_AHEAD) * esz, _MM_HINT_T0);
        for (int r = 0; r < R; r++) {
            const __m256 wv = load_w8(wr[r], i, wt, 8);
            for (int t = 0; t < T; t++) acc[t * R + r] = _mm256_fmadd_ps(wv, xv[t], acc[t * R + r]);
        }
    }
    if (i < n) { // the last partial chunk, zero-padded
        const int m = (int)(n - i);
        __m256 xv[4];
        for (int t = 0; t < T; t++) {
            float f[8] = {0};
            memcpy(f, xr[t] + i, (size_t)m * sizeof(float));
            xv[t] = _mm256_loadu_ps(f);
        }
        for (int r = 0; r < R; r++) {
            const __m256 wv = load_w8(wr[r], i, wt, m);
            for (int t = 0; t < T; t++) acc[t * R + r] = _mm256_fmadd_ps(wv, xv[t], acc[t * R + r]);
        }
    }
    float sums[8];
    _mm256_storeu_ps(sums, hsum8x8(acc));
    for (int t = 0; t < nt; t++)
        for (int r = 0; r < rows; r++) out[t * rows + r] = sums[t * R + r];
}

// The float tile kernels' entry points (speck_kernel_table.mm_f32 ...) from the inlined tile
// body BODY(w, wrow, rows, x, ldx, nt, n, wt, R, T, out): R1 x 1 and R2 x 2 tiles, E x 3 and
// E x 4, and E x nt whenever at most E rows are asked for (the last token group of a 5..7-token
// call), so no tile computes missing rows for nothing. mm_tile_rows is then {0, R1, R2, E, E}.
#define SPECK_FLOAT_TILES(NAME, BODY, WT, R1, R2, E)                                               \
    static void NAME(const void *w, size_t wrow, int rows, const float *x, int64_t ldx, int nt,    \
                     int64_t n, float *out) {                                                      \
        if (nt == 1 && rows > (E))                                                                 \
            BODY(w, wrow, rows, x, ldx, nt, n, WT, R1, 1, out);                                    \
        else if (nt == 2 && rows > (E))                                                            \
            BODY(w, wrow, rows, x, ldx, nt, n, WT, R2, 2, out);                                    \
        else if (nt == 1)                                                                          \
            BODY(w, wrow, rows, x, ldx, nt, n, WT, E, 1, out);                                     \
        else if (nt == 2)                                                                          \
            BODY(w, wrow, rows, x, ldx, nt, n, WT, E, 2, out);                                     \
        else if (nt == 3)                                                                          \
            BODY(w, wrow, rows, x, ldx, nt, n, WT, E, 3, out);                                     \
        else                                                                                       \
            BODY(w, wrow, rows, x, ldx, nt, n, WT, E, 4, out);                                     \
    }

SPECK_FLOAT_TILES(mm_f32_avx2, ftile8, SPECK_W_F32, 4, 4, 2)
SPECK_FLOAT_TILES(mm_f16_avx2, ftile8, SPECK_W_F16, 4, 4, 2)
SPECK_FLOAT_TILES(mm_bf16_avx2, ftile8, SPECK_W_BF16, 4, 4, 2)

// One Q4_0 (q8 = 0) or Q8_0 (q8 = 1) weight row x T tokens of Q8_0 block activations, the float
// tiles' scheme: per 32-value block and token, the row dots' lane sums (dot_q4_lanes /
// dot_q8_lanes) scaled by d_w * d_a go into one FMA chain, and all sums are reduced by hsum8x8's
// tree, so a result does not depend on how many tokens share the call. The row's blocks are
// unpacked once for all T tokens (per-row dots unpacked them per token: 1.1B Q4_0, AVX2 path on
// 2 Zen 5 cores, a 4-token pass 86-88 -> 70 ms, 1 token unchanged at ~24 ms). Missing tokens of
// an edge tile repeat token 0 and are not stored. Since the AVX2 panels (below), only matrices
// without panels (a head tied to the token embedding, SPECK_LOAD_NO_PANELS) come here.
static inline __attribute__((always_inline)) void qrow_tile(const void *w, const void *a,
                                                            size_t arow, int nt, int64_t n,
                                                            const int q8, const int T, float *out) {
    const speck_block_q8_0 *xr[4];
    for (int t = 0; t < T; t++)
        xr[t] = (const speck_block_q8_0 *)((const char *)a + (t < nt ? (size_t)t * arow : 0));
    __m256 acc[8];
    for (int s = 0; s < 8; s++) acc[s] = _mm256_setzero_ps();
    const int64_t nb = n / SPECK_QK;
    for (int64_t b = 0; b < nb; b++) {
        const speck_block_q8_0 *w8 = (const speck_block_q8_0 *)w + b;
        const speck_block_q4_0 *w4 = (const speck_block_q4_0 *)w + b;
        const __m256i wv = q8 ? load_q8(w8) : unpack_q4(w4);
        const uint16_t dw = q8 ? w8->d : w4->d;
        for (int t = 0; t < T; t++) {
            const __m256i xv = load_q8(xr[t] + b);
            const __m256i d = q8 ? dot_q8_lanes(wv, xv) : dot_q4_lanes(wv, xv);
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), block_scale(dw, xr[t][b].d), acc[t]);
        }
    }
    float sums[8];
    _mm256_storeu_ps(sums, hsum8x8(acc));
    for (int t = 0; t < nt; t++) out[t] = sums[t];
}

// One row at a time for every token count (mm_q_tile_rows below): two or four rows interleaved
// read the weights from memory more slowly (1.1B Q4_0: 1 token 24 -> 54-64 ms with 4 rows, 2
// tokens 40 -> 65-70 ms with 2), the hardware prefetchers being best at one sequential stream.
#define SPECK_QTILES_AVX2(NAME, Q8)                                                                \
    static void NAME(const void *w, size_t wrow, int rows, const void *a, size_t arow, int nt,     \
                     int64_t n, float *out) {                                                      \
        (void)wrow, (void)rows; /* one row */                                                      \
        if (nt == 1)                                                                               \
            qrow_tile(w, a, arow, nt, n, Q8, 1, out);                                              \
        else if (nt == 2)                                                                          \
            qrow_tile(w, a, arow, nt, n, Q8, 2, out);                                              \
        else if (nt == 3)                                                                          \
            qrow_tile(w, a, arow, nt, n, Q8, 3, out);                                              \
        else                                                                                       \
            qrow_tile(w, a, arow, nt, n, Q8, 4, out);                                              \
    }
SPECK_QTILES_AVX2(mm_qtile_q4_0_avx2, 0)
SPECK_QTILES_AVX2(mm_qtile_q8_0_avx2, 1)

// Lanes of an 8-lane half of a panel whose bit is set in bits, as a maskload/maskstore mask.
static inline __m256i lane_mask8(unsigned bits) {
    const __m256i sel = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    return _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32((int)bits), sel), sel);
}

// Stores a panel tile's accumulators acc[t * 2R + h] (8-row half h of the R panels for token t)
// to y + t * ldy + 8 * h, =, or += when accumulate; lanes outside m0 (first panel) and m1 (last)
// untouched.
// Panel r of token t goes to y + t * ldy + r * ystep.
static inline __attribute__((always_inline)) void
store_halves(const __m256 *acc, float *y, int64_t ldy, int64_t ystep, unsigned m0, unsigned m1,
             int accumulate, const int R, const int T) {
    for (int t = 0; t < T; t++)
        for (int h = 0; h < 2 * R; h++) {
            const int r = h / 2;
            const unsigned m16 = (r == 0 ? m0 : 0xFFFFu) & (r == R - 1 ? m1 : 0xFFFFu);
            const unsigned m = (h % 2 ? m16 >> 8 : m16) & 0xFFu;
            float *yp = y + t * ldy + r * ystep + 8 * (h % 2);
            __m256 v = acc[t * 2 * R + h];
            if (m == 0xFFu) {
                if (accumulate) v = _mm256_add_ps(_mm256_loadu_ps(yp), v);
                _mm256_storeu_ps(yp, v);
            } else if (m) {
                const __m256i mm = lane_mask8(m);
                if (accumulate) v = _mm256_add_ps(_mm256_maskload_ps(yp, mm), v);
                _mm256_maskstore_ps(yp, mm, v);
            }
        }
}

// R panels x T tokens of the panel layout (see speck_kernel_table.mm_panel_f16), each 16-row
// panel as two 8-lane halves: per input k, 2R weight vectors times T broadcast activations into
// 2R * T accumulators (8 independent FMA chains, of AVX2's 16 registers). Lane j of an accumulator
// is a row's result, stored directly.
static inline __attribute__((always_inline)) void
ptile8_body(const char *P, size_t pbytes, const float *x, int64_t ldx, int64_t n, float *y,
            int64_t ldy, unsigned m0, unsigned m1, int accumulate, const int wt, const int R,
            const int T) {
    const int esz = wt == SPECK_W_F32 ? 4 : 2;
    __m256 acc[8];
    for (int s = 0; s < 2 * R * T; s++) acc[s] = _mm256_setzero_ps();
    for (int64_t k = 0; k < n; k++) {
        __m256 w[8];
        for (int h = 0; h < 2 * R; h++)
            w[h] = load_w8(P + (h / 2) * pbytes + (size_t)(16 * k + 8 * (h % 2)) * esz, 0, wt, 8);
        for (int t = 0; t < T; t++) {
            const __m256 xb = _mm256_broadcast_ss(x + t * ldx + k);
            for (int h = 0; h < 2 * R; h++)
                acc[t * 2 * R + h] = _mm256_fmadd_ps(w[h], xb, acc[t * 2 * R + h]);
        }
    }
    store_halves(acc, y, ldy, 16, m0, m1, accumulate, R, T);
}

// Panel groups per token count: 4 x 1, 2 x 2, 1 x 3, 1 x 4 (panel_group below).
#define PT8_ARGS P, pbytes, x, ldx, n, y, ldy, m0, m1, accumulate
#define SPECK_PANELS_AVX2(NAME, WT)                                                                \
    static void NAME(const void *Pv, size_t pbytes, int np, const float *x, int64_t ldx, int nt,   \
                     int64_t n, float *y, int64_t ldy, unsigned m0, unsigned m1, int accumulate) { \
        const char *P = Pv;                                                                        \
        if (nt == 1 && np >= 4)                                                                    \
            ptile8_body(PT8_ARGS, WT, 4, 1);                                                       \
        else if (nt == 1 && np == 3)                                                               \
            ptile8_body(PT8_ARGS, WT, 3, 1);                                                       \
        else if (nt == 1 && np == 2)                                                               \
            ptile8_body(PT8_ARGS, WT, 2, 1);                                                       \
        else if (nt == 1)                                                                          \
            ptile8_body(PT8_ARGS, WT, 1, 1);                                                       \
        else if (nt == 2 && np >= 2)                                                               \
            ptile8_body(PT8_ARGS, WT, 2, 2);                                                       \
        else if (nt == 2)                                                                          \
            ptile8_body(PT8_ARGS, WT, 1, 2);                                                       \
        else if (nt == 3)                                                                          \
            ptile8_body(PT8_ARGS, WT, 1, 3);                                                       \
        else                                                                                       \
            ptile8_body(PT8_ARGS, WT, 1, 4);                                                       \
    }
SPECK_PANELS_AVX2(mm_panel_f32_avx2, SPECK_W_F32)
SPECK_PANELS_AVX2(mm_panel_f16_avx2, SPECK_W_F16)
SPECK_PANELS_AVX2(mm_panel_bf16_avx2, SPECK_W_BF16)

// R Q4_0 (q8 = 0) or Q8_0 (q8 = 1) panels x T tokens (layouts: SPECK_Q4_PANEL_BLOCK,
// SPECK_Q8_PANEL_BLOCK), each 16-row panel as two 8-row halves: per block and half, 32-byte
// vectors of 8 rows x 4 weight bytes, each multiplied by the 4 matching activation bytes
// broadcast (vpmaddubsw) and widened by vpmaddwd: lane j is row j's partial sum, with no
// horizontal sums, and a third to a half of the per-row dots' instructions. Q4_0 (four vectors
// per block, low nibbles against inputs 4g..4g+3, high ones against 16+4g..): unsigned nibbles x
// signed bytes, |pair| <= 2 * 15 * 127, so a block's eight products are summed in int16
// (< 2^15) and widened once, and the +8 offset is taken out with the activations' block sums:
// d_w * (d_a * sum(q_w * q_a) - 8 * d_a * sum(q_a)). Q8_0 (eight vectors, stored + 128): the
// signed value times the activation with its sign (|pair| <= 2 * 128 * 127), widened per vector:
// d_w * d_a * sum(q_w * q_a). Per row and token the block goes into one float accumulator in
// block order, so results do not depend on R, T or the grouping.
// Prefetch distance of each of a call's R panel streams, in blocks: 16 / R, and at least 8 for
// Q4_0 — about 2.3 KB ahead of each of four streams either way (one token). Four Q4_0 blocks, as
// on AVX-512, left the 1.1B Q4_0 decode slower (15.3-16.4 vs 14.5-15.0 ms per token in four of
// five alternations); eight Q8_0 blocks slowed smollm2-135m Q8_0 (3.9-4.3 vs 4.6-4.8 ms).
static inline size_t pq2_ahead(const int q8, const int R) {
    return q8 || 16 / R > 8 ? (size_t)(16 / R) : 8;
}
static inline __attribute__((always_inline)) void pq_body2(const uint8_t *P, size_t pbytes,
                                                           int64_t pstep, const speck_q8_rows *a,
                                                           int64_t t0, float *y, int64_t ldy,
                                                           unsigned m0, unsigned m1, int accumulate,
                                                           const int q8, const int R, const int T) {
    const int64_t nb = a->n / SPECK_QK;
    const size_t bb = q8 ? SPECK_Q8_PANEL_BLOCK : SPECK_Q4_PANEL_BLOCK;
    const __m256i m4 = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
    const __m256i flip = _mm256_set1_epi8((char)0x80);
    __m256 acc[8];
    for (int s = 0; s < 2 * R * T; s++) acc[s] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        for (int r = 0; r < R; r++) {
            const uint8_t *wb = P + r * pstep * pbytes + (size_t)b * bb;
            for (size_t c = 0; c < bb; c += 64)
                _mm_prefetch((const char *)wb + pq2_ahead(q8, R) * bb + c, _MM_HINT_T0);
            for (int h = 0; h < 2; h++) {
                // wv[i] pairs with activation bytes 4i .. 4i + 3 (Q8_0: as |w|, sign in ws[i]).
                __m256i wv[8], ws[8];
                for (int g = 0; g < (q8 ? 8 : 4); g++) {
                    const __m256i v = _mm256_loadu_si256((const __m256i *)(wb + 64 * g + 32 * h));
                    if (q8) {
                        ws[g] = _mm256_xor_si256(v, flip);
                        wv[g] = _mm256_abs_epi8(ws[g]);
                    } else {
                        wv[g] = _mm256_and_si256(v, m4);
                        wv[4 + g] = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
                    }
                }
                const __m256 dw =
                    _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(wb + bb - 32 + 16 * h)));
                for (int t = 0; t < T; t++) {
                    const int8_t *xa = a->qs + (t0 + t) * a->n + b * SPECK_QK;
                    __m256i s32;
                    if (q8) {
                        s32 = _mm256_setzero_si256();
                        for (int i = 0; i < 8; i++) {
                            int32_t x;
                            memcpy(&x, xa + 4 * i, 4);
                            const __m256i p = _mm256_maddubs_epi16(
                                wv[i], _mm256_sign_epi8(_mm256_set1_epi32(x), ws[i]));
                            s32 = _mm256_add_epi32(s32, _mm256_madd_epi16(p, ones));
                        }
                    } else {
                        __m256i s16 = _mm256_setzero_si256();
                        for (int i = 0; i < 8; i++) {
                            int32_t x;
                            memcpy(&x, xa + (i < 4 ? 4 * i : 16 + 4 * (i - 4)), 4);
                            s16 = _mm256_add_epi16(
                                s16, _mm256_maddubs_epi16(wv[i], _mm256_set1_epi32(x)));
                        }
                        s32 = _mm256_madd_epi16(s16, ones);
                    }
                    const int64_t ab = (t0 + t) * nb + b;
                    const __m256 vd = _mm256_set1_ps(a->d[ab]);
                    const __m256 v = q8 ? _mm256_mul_ps(_mm256_cvtepi32_ps(s32), vd)
                                        : _mm256_fmsub_ps(_mm256_cvtepi32_ps(s32), vd,
                                                          _mm256_set1_ps(8.0f * a->s[ab]));
                    acc[(t * R + r) * 2 + h] = _mm256_fmadd_ps(dw, v, acc[(t * R + r) * 2 + h]);
                }
            }
        }
    }
    store_halves(acc, y, ldy, 16 * pstep, m0, m1, accumulate, R, T);
}

// Panel groups per token count: up to 4 x 1, 2 x 2, 1 x 3, 1 x 4 (panel_q_group below: Q4_0
// calls take 2 x 1, spread).
#define PQ2_ARGS P, pbytes, pstep, a, t0, y, ldy, m0, m1, accumulate, q8
#define SPECK_PANELS_Q_AVX2(NAME, Q8)                                                              \
    static void NAME(const void *Pv, size_t pbytes, int np, int64_t pstep, const speck_q8_rows *a, \
                     int64_t t0, int nt, float *y, int64_t ldy, unsigned m0, unsigned m1,          \
                     int accumulate) {                                                             \
        const uint8_t *P = Pv;                                                                     \
        const int q8 = (Q8);                                                                       \
        if (nt == 1 && np >= 4)                                                                    \
            pq_body2(PQ2_ARGS, 4, 1);                                                              \
        else if (nt == 1 && np == 3)                                                               \
            pq_body2(PQ2_ARGS, 3, 1);                                                              \
        else if (nt == 1 && np == 2)                                                               \
            pq_body2(PQ2_ARGS, 2, 1);                                                              \
        else if (nt == 1)                                                                          \
            pq_body2(PQ2_ARGS, 1, 1);                                                              \
        else if (nt == 2 && np >= 2)                                                               \
            pq_body2(PQ2_ARGS, 2, 2);                                                              \
        else if (nt == 2)                                                                          \
            pq_body2(PQ2_ARGS, 1, 2);                                                              \
        else if (nt == 3)                                                                          \
            pq_body2(PQ2_ARGS, 1, 3);                                                              \
        else                                                                                       \
            pq_body2(PQ2_ARGS, 1, 4);                                                              \
    }
SPECK_PANELS_Q_AVX2(mm_panel_q4_0_avx2, 0)
SPECK_PANELS_Q_AVX2(mm_panel_q8_0_avx2, 1)

const speck_kernel_table speck_kernels_avx2 = {
    .name = "avx2",
    .dot_f32 = dot_f32_avx2,
    .dot_f16 = dot_f16_avx2,
    .dot_bf16 = dot_bf16_avx2,
    .dot_q8_0 = dot_q8_0_avx2,
    .dot_q4_0 = dot_q4_0_avx2,
    .mm_q4_0 = NULL, // matmul uses the Q8_0-block tiles
    .mm_q8_0 = NULL,
    .mm_qtile_q4_0 = mm_qtile_q4_0_avx2,
    .mm_qtile_q8_0 = mm_qtile_q8_0_avx2,
    .mm_q_tile_rows = {0, 1, 1, 1, 1},
    .mm_tile_rows = {0, 4, 4, 2, 2},
    .mm_tile_spread = 4,
    .mm_f32 = mm_f32_avx2,
    .mm_f16 = mm_f16_avx2,
    .mm_bf16 = mm_bf16_avx2,
    .mm_panel_f32 = mm_panel_f32_avx2,
    .mm_panel_f16 = mm_panel_f16_avx2,
    .mm_panel_bf16 = mm_panel_bf16_avx2,
    .panel_tokens = 4,
    .panel_group = {0, 4, 2, 1, 1},
    .mm_panel_q4_0 = mm_panel_q4_0_avx2,
    .mm_panel_q8_0 = mm_panel_q8_0_avx2,
    .panel_q_tokens = 4,
    .panel_q_group = {{0, 2, 2, 1, 1}, {0, 4, 2, 1, 1}},
    .panel_q_spread = {1, 0},
    .gemm_pack = NULL, // prefill uses sgemm
    .gemm_run = NULL,
    .quantize_q8_0 = quantize_q8_0_avx2,
    .f16_to_f32 = f16_to_f32_avx2,
    .bf16_to_f32 = bf16_to_f32_avx2,
    .attend = attend_avx2,
    .attend_group = attend_group_avx2,
    .q8_0_to_f32 = q8_0_to_f32_avx2,
    .q4_0_to_f32 = q4_0_to_f32_avx2,
    .quantize_q8_k = speck_quantize_q8_k_avx2,
    .qt = speck_qt_avx2,
};
