// AVX-512 attention (speck_attend_group): a KV group's queries over blocks of 16 keys. Compiled
// with -mavx512* flags; only reached after dispatch.c has checked the CPU.
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "kernels/avx512_common.h"
#include "kernels/kernels_internal.h"

// e^x for x <= 0 (softmax arguments after the maximum is subtracted): Cody-Waite reduction to
// r in [-ln2/2, ln2/2], a degree-6 polynomial (Cephes expf coefficients, ~1 ulp), scaled by 2^n.
static inline __m512 exp_nonpos(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-104.0f)); // e^-104 underflows to 0 anyway
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

// Chunk idx.. of a key/value row of floats (h16 = 0) or f16 values (h16 = 1), lanes m.
static inline __attribute__((always_inline)) __m512 load_kv(const void *row, int64_t idx,
                                                            __mmask16 m, const int h16) {
    if (h16) return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, (const uint16_t *)row + idx));
    return _mm512_maskz_loadu_ps(m, (const float *)row + idx);
}

// Address of key/value row j (ld elements apart) of a cache of floats or f16 values.
static inline const void *kv_row_at(const void *base, int64_t j, int64_t ld, int h16) {
    return (const char *)base + j * ld * (h16 ? 2 : 4);
}

// out[c0 * 16 ..) (cn chunks of 16, the last masked by `last`) = inv * sum_j sc[j] v_j. Keys
// go to four accumulator sets by j mod 4 (four independent FMA chains), summed in a fixed order.
static inline __attribute__((always_inline)) void
attend_v_slab(const float *sc, const void *vb, int64_t ld, int n_keys, const int cn, const int h16,
              __mmask16 last, float inv, float *out) {
    __m512 o[4][4];
    for (int u = 0; u < 4; u++)
        for (int c = 0; c < cn; c++) o[u][c] = _mm512_setzero_ps();
    for (int j = 0; j < n_keys; j += 4)
        for (int u = 0; u < 4 && j + u < n_keys; u++) {
            const __m512 p = _mm512_set1_ps(sc[j + u]);
            const void *v = kv_row_at(vb, j + u, ld, h16);
            for (int c = 0; c < cn; c++)
                o[u][c] = _mm512_fmadd_ps(p, load_kv(v, 16 * c, c == cn - 1 ? last : 0xFFFF, h16),
                                          o[u][c]);
        }
    for (int c = 0; c < cn; c++) {
        const __m512 s =
            _mm512_add_ps(_mm512_add_ps(o[0][c], o[1][c]), _mm512_add_ps(o[2][c], o[3][c]));
        _mm512_mask_storeu_ps(out + 16 * c, c == cn - 1 ? last : 0xFFFF,
                              _mm512_mul_ps(s, _mm512_set1_ps(inv)));
    }
}

// attend_v_slab instantiated per chunk count (1..4) and value type; index [h16][cn].
typedef void (*slab_fn)(const float *sc, const void *vb, int64_t ld, int n_keys, __mmask16 last,
                        float inv, float *out);
#define SLAB_FN(CN, H)                                                                             \
    static void slab_##H##_##CN(const float *sc, const void *vb, int64_t ld, int n_keys,           \
                                __mmask16 last, float inv, float *out) {                           \
        attend_v_slab(sc, vb, ld, n_keys, CN, H, last, inv, out);                                  \
    }
SLAB_FN(1, 0)
SLAB_FN(2, 0)
SLAB_FN(3, 0)
SLAB_FN(4, 0)
SLAB_FN(1, 1)
SLAB_FN(2, 1)
SLAB_FN(3, 1)
SLAB_FN(4, 1)
#undef SLAB_FN
static const slab_fn slab_fns[2][5] = {{NULL, slab_0_1, slab_0_2, slab_0_3, slab_0_4},
                                       {NULL, slab_1_1, slab_1_2, slab_1_3, slab_1_4}};

// Scores of one query (q: (hd), NC chunks of 16, the last masked by hm) against the keys
// k0 + r * ld, r < nk <= 16 (floats, or f16 values when H): lane r = q . k_r (lanes >= nk:
// garbage, masked by the caller). NC is a constant in each instantiation, so the query and the
// 16 accumulators stay in registers (with a runtime chunk loop the compiler kept the
// accumulators in memory: a store-to-load chain per FMA, 5x slower).
static inline __attribute__((always_inline)) __m512 qk_block(const void *k0, int64_t ld, int nk,
                                                             const float *q, const int NC,
                                                             const int H, __mmask16 hm) {
    __m512 qv[NC], acc[16];
#pragma GCC unroll 8
    for (int c = 0; c < NC; c++)
        qv[c] = _mm512_maskz_loadu_ps(c == NC - 1 ? hm : 0xFFFF, q + 16 * c);
#pragma GCC unroll 16
    for (int r = 0; r < 16; r++) {
        // Slots past the last key repeat it (branch-free); the caller masks those lanes.
        const void *k = kv_row_at(k0, r < nk ? r : nk - 1, ld, H);
        acc[r] = _mm512_setzero_ps();
#pragma GCC unroll 8
        for (int c = 0; c < NC; c++)
            acc[r] =
                _mm512_fmadd_ps(load_kv(k, 16 * c, c == NC - 1 ? hm : 0xFFFF, H), qv[c], acc[r]);
    }
    return hsum16x16(acc);
}

// qk_block for any number of chunks (head sizes above 128): the same arithmetic, slower.
static __m512 qk_block_any(const void *k0, int64_t ld, int nk, const float *q, int nc, int h16,
                           __mmask16 hm) {
    __m512 acc[16];
    for (int r = 0; r < 16; r++) {
        acc[r] = _mm512_setzero_ps();
        if (r >= nk) continue;
        const void *k = kv_row_at(k0, r, ld, h16);
        for (int c = 0; c < nc; c++) {
            const __mmask16 m = c == nc - 1 ? hm : 0xFFFF;
            const __m512 kc = h16 ? load_kv(k, 16 * c, m, 1) : load_kv(k, 16 * c, m, 0);
            acc[r] = _mm512_fmadd_ps(kc, _mm512_maskz_loadu_ps(m, q + 16 * c), acc[r]);
        }
    }
    return hsum16x16(acc);
}

// qk_block instantiated for 1..8 chunks (head sizes up to 128) and both key types; index
// [h16][chunk count].
typedef __m512 (*qk_fn)(const void *k0, int64_t ld, int nk, const float *q, __mmask16 hm);
#define QK_FN(NC, H)                                                                               \
    static __m512 qk_##H##_##NC(const void *k0, int64_t ld, int nk, const float *q,                \
                                __mmask16 hm) {                                                    \
        return qk_block(k0, ld, nk, q, NC, H, hm);                                                 \
    }
#define QK_FNS(H)                                                                                  \
    QK_FN(1, H) QK_FN(2, H) QK_FN(3, H) QK_FN(4, H) QK_FN(5, H) QK_FN(6, H) QK_FN(7, H) QK_FN(8, H)
QK_FNS(0)
QK_FNS(1)
#undef QK_FNS
#undef QK_FN
static const qk_fn qk_fns[2][9] = {
    {NULL, qk_0_1, qk_0_2, qk_0_3, qk_0_4, qk_0_5, qk_0_6, qk_0_7, qk_0_8},
    {NULL, qk_1_1, qk_1_2, qk_1_3, qk_1_4, qk_1_5, qk_1_6, qk_1_7, qk_1_8}};

// One query's softmax over its n_keys scores (sc, masked ones -inf; mx: their lane maxima) and
// out (hd) = the weighted sum of the values. Returns 0 (out zeroed) when no key is allowed.
static int softmax_values(float *sc, int n_keys, __m512 mx, const void *vb, int64_t ld, int hd,
                          int h16, float *out) {
    const int nc = (hd + 15) / 16;
    const __mmask16 hm = (__mmask16)((1u << (hd - 16 * (nc - 1))) - 1);
    const float m = _mm512_reduce_max_ps(mx);
    if (m == -INFINITY) {
        memset(out, 0, (size_t)hd * sizeof(float));
        return 0;
    }
    __m512 sum = _mm512_setzero_ps();
    for (int j0 = 0; j0 < n_keys; j0 += 16) {
        const int nk = n_keys - j0 < 16 ? n_keys - j0 : 16;
        const __mmask16 tm = (__mmask16)((1u << nk) - 1);
        const __m512 s = _mm512_maskz_loadu_ps(tm, sc + j0);
        const __mmask16 ok = _mm512_mask_cmp_ps_mask(tm, s, _mm512_set1_ps(-INFINITY), _CMP_NEQ_OQ);
        const __m512 p = _mm512_maskz_mov_ps(ok, exp_nonpos(_mm512_sub_ps(s, _mm512_set1_ps(m))));
        _mm512_mask_storeu_ps(sc + j0, tm, p);
        sum = _mm512_add_ps(sum, p);
    }
    const float inv = 1.0f / _mm512_reduce_add_ps(sum);
    for (int c0 = 0; c0 < nc; c0 += 4) {
        const int cn = nc - c0 < 4 ? nc - c0 : 4;
        slab_fns[h16][cn](sc, (const char *)vb + 16 * c0 * (h16 ? 2 : 4), ld, n_keys,
                          c0 + cn == nc ? hm : 0xFFFF, inv, out + 16 * c0);
    }
    return 1;
}

#define GROUP_MAX_Q 64 // queries per pass over the keys (their running maxima live on the stack)

// speck_attend_group for nt * gq <= GROUP_MAX_Q queries. Key blocks are the outer loop, so each
// block of 16 keys is read from memory once and then from L1 for the other queries; each
// query's arithmetic is that of the one-query case, whatever else runs alongside.
static int attend_group_part(const float *q, int64_t ldq, int nt, int gq, const int *n_keys,
                             const uint8_t *allow, int64_t lda, const void *kb, const void *vb,
                             int h16, int64_t ld, int hd, float scale, float *sc, int64_t sc_ld,
                             float *out, int64_t ldo) {
    const int nc = (hd + 15) / 16;
    const __mmask16 hm = (__mmask16)((1u << (hd - 16 * (nc - 1))) - 1); // last chunk's lanes
    const qk_fn qk = nc <= 8 ? qk_fns[h16][nc] : NULL; // NULL: the generic chunk loop
    __m512 mx[GROUP_MAX_Q];
    int maxk = 0;
    for (int t = 0; t < nt; t++) maxk = n_keys[t] > maxk ? n_keys[t] : maxk;
    for (int i = 0; i < nt * gq; i++) mx[i] = _mm512_set1_ps(-INFINITY);
    for (int j0 = 0; j0 < maxk; j0 += 16) {
        const void *k0 = kv_row_at(kb, j0, ld, h16);
        for (int t = 0; t < nt; t++) {
            if (j0 >= n_keys[t]) continue;
            const int nk = n_keys[t] - j0 < 16 ? n_keys[t] - j0 : 16;
            const __mmask16 tm = (__mmask16)((1u << nk) - 1);
            __mmask16 ok = tm;
            if (allow) {
                const __m128i a = _mm_maskz_loadu_epi8(tm, allow + (int64_t)t * lda + j0);
                ok &= _mm_test_epi8_mask(a, a);
            }
            for (int h = 0; h < gq; h++) {
                const float *qp = q + (int64_t)t * ldq + (int64_t)h * hd;
                const __m512 s0 =
                    qk ? qk(k0, ld, nk, qp, hm) : qk_block_any(k0, ld, nk, qp, nc, h16, hm);
                const __m512 s = _mm512_mask_blend_ps(ok, _mm512_set1_ps(-INFINITY),
                                                      _mm512_mul_ps(s0, _mm512_set1_ps(scale)));
                const int i = t * gq + h;
                _mm512_mask_storeu_ps(sc + i * sc_ld + j0, tm, s);
                mx[i] = _mm512_max_ps(mx[i], s);
            }
        }
    }
    int empty = 0;
    for (int t = 0; t < nt; t++)
        for (int h = 0; h < gq; h++) {
            const int i = t * gq + h;
            empty += !softmax_values(sc + i * sc_ld, n_keys[t], mx[i], vb, ld, hd, h16,
                                     out + (int64_t)t * ldo + (int64_t)h * hd);
        }
    return empty;
}

// See speck_attend_group (kernels.h).
int speck_attend_group_avx512(const float *q, int64_t ldq, int nt, int gq, const int *n_keys,
                              const uint8_t *allow, int64_t lda, const void *kb, const void *vb,
                              speck_type kv, int64_t ld, int hd, float scale, float *sc,
                              int64_t sc_ld, float *out, int64_t ldo) {
    const int hc = gq < GROUP_MAX_Q ? gq : GROUP_MAX_Q, tc = GROUP_MAX_Q / hc;
    const int h16 = kv == SPECK_TYPE_F16;
    int empty = 0;
    for (int t0 = 0; t0 < nt; t0 += tc)
        for (int h0 = 0; h0 < gq; h0 += hc)
            empty += attend_group_part(q + (int64_t)t0 * ldq + (int64_t)h0 * hd, ldq,
                                       nt - t0 < tc ? nt - t0 : tc, gq - h0 < hc ? gq - h0 : hc,
                                       n_keys + t0, allow ? allow + (int64_t)t0 * lda : NULL, lda,
                                       kb, vb, h16, ld, hd, scale, sc, sc_ld,
                                       out + (int64_t)t0 * ldo + (int64_t)h0 * hd, ldo);
    return empty;
}
