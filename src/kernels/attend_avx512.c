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

// c * tanh(s / c) (attention-logit soft-capping), tanh from e = e^(-2|x|) as (1 - e) / (1 + e)
// with x's sign: absolute error ~1e-7 x c, no overflow for any s.
static inline __m512 softcap16(__m512 s, float c) {
    const __m512 x = _mm512_mul_ps(s, _mm512_set1_ps(1.0f / c));
    const __m512 a = _mm512_abs_ps(x);
    const __m512 e = exp_nonpos(_mm512_mul_ps(a, _mm512_set1_ps(-2.0f)));
    const __m512 t = _mm512_div_ps(_mm512_sub_ps(_mm512_set1_ps(1.0f), e),
                                   _mm512_add_ps(_mm512_set1_ps(1.0f), e));
    const __m512 sign = _mm512_castsi512_ps(
        _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32((int)0x80000000u)));
    return _mm512_mul_ps(
        _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(t), _mm512_castps_si512(sign))),
        _mm512_set1_ps(c));
}

// Chunk idx.. (16 values) of a key/value row of kind K (kernels_internal.h), lanes m (the block
// kinds: all 16, their head sizes are multiples of 32). Block values come out as d * q exactly
// (an fp16 scale times a level of at most 8 bits fits a float's 24), so attention over a
// quantized cache is the f32 kernels' arithmetic on the dequantized rows.
static inline __attribute__((always_inline)) __m512 load_kv(const void *row, int64_t idx,
                                                            __mmask16 m, const int K) {
    if (K == SPECK_KV_F16)
        return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, (const uint16_t *)row + idx));
    if (K == SPECK_KV_F32) return _mm512_maskz_loadu_ps(m, (const float *)row + idx);
    const int hi = (int)(idx & 16); // second half of the block
    const uint8_t *b = (const uint8_t *)row + (idx >> 5) * (K == SPECK_KV_Q8 ? 34 : 18);
    uint16_t dh;
    memcpy(&dh, b, 2);
    const __m512 d = _mm512_cvtph_ps(_mm256_set1_epi16((short)dh));
    const __m128i raw = _mm_loadu_si128((const __m128i *)(b + 2 + (K == SPECK_KV_Q8 ? hi : 0)));
    __m512i q;
    if (K == SPECK_KV_Q8) {
        q = _mm512_cvtepi8_epi32(raw);
    } else { // element j: low nibble of byte j, element j + 16: its high nibble; levels - 8
        const __m512i u = _mm512_cvtepu8_epi32(raw);
        q = _mm512_sub_epi32(
            _mm512_and_si512(hi ? _mm512_srli_epi32(u, 4) : u, _mm512_set1_epi32(15)),
            _mm512_set1_epi32(8));
    }
    return _mm512_mul_ps(_mm512_cvtepi32_ps(q), d);
}

// The kernels below are instantiated per chunk count (1..8) and row kind (H: SPECK_KV_*), so
// their accumulators stay in registers; F(CHUNKS, H) defines one, CHUNK_TABLE(prefix) lists them
// indexed [H][CHUNKS]. (The block kinds only ever run even chunk counts.)
#define PER_CHUNKS(F, H) F(1, H) F(2, H) F(3, H) F(4, H) F(5, H) F(6, H) F(7, H) F(8, H)
#define CHUNK_ROW(P, H)                                                                            \
    { NULL, P##H##_1, P##H##_2, P##H##_3, P##H##_4, P##H##_5, P##H##_6, P##H##_7, P##H##_8 }
#define CHUNK_TABLE(P)                                                                             \
    { CHUNK_ROW(P, 0), CHUNK_ROW(P, 1), CHUNK_ROW(P, 2), CHUNK_ROW(P, 3) }

// Value rows prefetched ahead in the value pass: from memory (the first pass over a group's
// values), smollm2-135m's shapes with an f16 cache, 1024 keys, one thread: 22.1 -> 19.4 ns per
// key and group (the 1.1B's in f32: 28.8 -> 26.4); 16 or 32 rows ahead no better; no cost when
// the values are cached.
#define V_AHEAD 8

// Weighted values of nq <= HQ queries, CS chunks of 16 of each (the last masked by `last`):
// out[i] = inv[i] * sum_j p[i][j] v_j over query i's keys j < nk[i]. Each value row is loaded
// once for all the queries (heads of one KV group, tokens of one pass) instead of once per
// query: with the key prefetch below, the 1.1B's shapes (head size 64, 8 heads a group) run
// 1.4-1.5x faster on one thread over 128-1024 cached keys, cold or cached. Every query and chunk
// sums its keys in order in S chains (key j in chain j mod S), S fixed by CS alone (two where a
// query has only one or two chunks, so its FMAs are not latency-bound): a query's arithmetic
// does not depend on which queries run beside it (the decode path's batch invariance).
static inline __attribute__((always_inline)) void
attend_v_group(const float *const *p, const int *nk, const float *inv, float *const *out, int nq,
               const void *vb, int64_t ld, __mmask16 last, const int CS, const int HQ,
               const int H) {
    const int S = CS <= 2 ? 2 : 1;
    __m512 o[16];
    int kmin = nk[0], kmax = nk[0];
    for (int i = 1; i < nq; i++) {
        kmin = nk[i] < kmin ? nk[i] : kmin;
        kmax = nk[i] > kmax ? nk[i] : kmax;
    }
#pragma GCC unroll 16
    for (int a = 0; a < 16; a++) o[a] = _mm512_setzero_ps();
    for (int j = 0; j < kmax; j += S)
#pragma GCC unroll 2
        for (int s = 0; s < S; s++) {
            const int k = j + s;
            if (k >= kmax) break;
            const void *v = speck_kv_row(vb, k, ld, H);
            // Each 64-byte line of the slab V_AHEAD rows on (the last row again near the end: no
            // address past the values).
            const char *vp = speck_kv_row(vb, k + V_AHEAD < kmax ? k + V_AHEAD : kmax - 1, ld, H);
#pragma GCC unroll 8
            for (int b = 0; b < speck_kv_bytes(16 * CS, H); b += 64)
                _mm_prefetch(vp + b, _MM_HINT_T0);
            __m512 vv[8];
#pragma GCC unroll 8
            for (int c = 0; c < CS; c++) vv[c] = load_kv(v, 16 * c, c == CS - 1 ? last : 0xFFFF, H);
#pragma GCC unroll 16
            for (int i = 0; i < HQ; i++) {
                if (i >= nq || (k >= kmin && k >= nk[i])) continue;
                const __m512 w = _mm512_set1_ps(p[i][k]);
#pragma GCC unroll 8
                for (int c = 0; c < CS; c++)
                    o[(i * S + s) * CS + c] = _mm512_fmadd_ps(w, vv[c], o[(i * S + s) * CS + c]);
            }
        }
#pragma GCC unroll 16
    for (int i = 0; i < HQ; i++) {
        if (i >= nq) break;
#pragma GCC unroll 8
        for (int c = 0; c < CS; c++) {
            __m512 t = o[i * S * CS + c];
            if (S == 2) t = _mm512_add_ps(t, o[(i * S + 1) * CS + c]);
            _mm512_mask_storeu_ps(out[i] + 16 * c, c == CS - 1 ? last : 0xFFFF,
                                  _mm512_mul_ps(t, _mm512_set1_ps(inv[i])));
        }
    }
}

// attend_v_group per chunk count (1..8: queries a call = 16 accumulators / chunks / chains) and
// row kind; index [H][CS].
typedef void (*vgroup_fn)(const float *const *p, const int *nk, const float *inv, float *const *out,
                          int nq, const void *vb, int64_t ld, __mmask16 last);
#define VG_HQ(CS) ((CS) <= 2 ? 8 / (CS) : 16 / (CS))
#define VG_FN(CS, H)                                                                               \
    static void vg_##H##_##CS(const float *const *p, const int *nk, const float *inv,              \
                              float *const *out, int nq, const void *vb, int64_t ld,               \
                              __mmask16 last) {                                                    \
        attend_v_group(p, nk, inv, out, nq, vb, ld, last, CS, VG_HQ(CS), H);                       \
    }
PER_CHUNKS(VG_FN, 0)
PER_CHUNKS(VG_FN, 1)
PER_CHUNKS(VG_FN, 2)
PER_CHUNKS(VG_FN, 3)
#undef VG_FN
static const vgroup_fn vgroup_fns[4][9] = CHUNK_TABLE(vg_);

// Scores of one query (q: (hd), NC chunks of 16, the last masked by hm) against the keys
// k0 + r * ld, r < nk <= 16 (rows of kind H): lane r = q . k_r (lanes >= nk:
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
        const void *k = speck_kv_row(k0, r < nk ? r : nk - 1, ld, H);
        acc[r] = _mm512_setzero_ps();
#pragma GCC unroll 8
        for (int c = 0; c < NC; c++)
            acc[r] =
                _mm512_fmadd_ps(load_kv(k, 16 * c, c == NC - 1 ? hm : 0xFFFF, H), qv[c], acc[r]);
    }
    return hsum16x16(acc);
}

// qk_block for any number of chunks (head sizes above 128): the same arithmetic, slower.
static __m512 qk_block_any(const void *k0, int64_t ld, int nk, const float *q, int nc, int kind,
                           __mmask16 hm) {
    __m512 acc[16];
    for (int r = 0; r < 16; r++) {
        acc[r] = _mm512_setzero_ps();
        if (r >= nk) continue;
        const void *k = speck_kv_row(k0, r, ld, kind);
        for (int c = 0; c < nc; c++) {
            const __mmask16 m = c == nc - 1 ? hm : 0xFFFF;
            const __m512 kc = kind == SPECK_KV_F32   ? load_kv(k, 16 * c, m, SPECK_KV_F32)
                              : kind == SPECK_KV_F16 ? load_kv(k, 16 * c, m, SPECK_KV_F16)
                              : kind == SPECK_KV_Q8  ? load_kv(k, 16 * c, m, SPECK_KV_Q8)
                                                     : load_kv(k, 16 * c, m, SPECK_KV_Q4);
            acc[r] = _mm512_fmadd_ps(kc, _mm512_maskz_loadu_ps(m, q + 16 * c), acc[r]);
        }
    }
    return hsum16x16(acc);
}

// qk_block instantiated for 1..8 chunks (head sizes up to 128) and every row kind; index
// [kind][chunk count].
typedef __m512 (*qk_fn)(const void *k0, int64_t ld, int nk, const float *q, __mmask16 hm);
#define QK_FN(NC, H)                                                                               \
    static __m512 qk_##H##_##NC(const void *k0, int64_t ld, int nk, const float *q,                \
                                __mmask16 hm) {                                                    \
        return qk_block(k0, ld, nk, q, NC, H, hm);                                                 \
    }
PER_CHUNKS(QK_FN, 0)
PER_CHUNKS(QK_FN, 1)
PER_CHUNKS(QK_FN, 2)
PER_CHUNKS(QK_FN, 3)
#undef QK_FN
static const qk_fn qk_fns[4][9] = CHUNK_TABLE(qk_);

// One query's softmax weights in place of its n_keys scores (masked ones -inf; mx: their lane
// maxima). Returns 1 / their sum, or 0 when no key is allowed.
static float softmax_weights(float *sc, int n_keys, __m512 mx) {
    const float m = _mm512_reduce_max_ps(mx);
    if (m == -INFINITY) return 0.0f;
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
    return 1.0f / _mm512_reduce_add_ps(sum);
}

#define GROUP_MAX_Q 64 // queries per pass over the keys (their running maxima live on the stack)
#define KDQ_MAX_HD 256 // block-kind keys up to this head size are dequantized a block at a time

// Rows [0, n) of kind K (block kinds, hd a multiple of 32), ld values apart -> dst (n, hd) floats.
static void dequant_rows(const void *src, int64_t ld, int n, int hd, int K, float *dst) {
    for (int r = 0; r < n; r++) {
        const void *row = speck_kv_row(src, r, ld, K);
        for (int c = 0; c < hd; c += 16)
            _mm512_storeu_ps(dst + (size_t)r * hd + c, K == SPECK_KV_Q8
                                                           ? load_kv(row, c, 0xFFFF, SPECK_KV_Q8)
                                                           : load_kv(row, c, 0xFFFF, SPECK_KV_Q4));
    }
}

// speck_attend_group for nt * gq <= GROUP_MAX_Q queries. Key blocks are the outer loop, so each
// block of 16 keys is read from memory once and then from L1 for the other queries; each
// query's arithmetic is that of the one-query case, whatever else runs alongside.
static int attend_group_part(const float *q, int64_t ldq, int nt, int gq, const int *n_keys,
                             const uint8_t *allow, int64_t lda, const void *kb, const void *vb,
                             int kind, int64_t ld, int hd, float scale, float softcap, float *sc,
                             int64_t sc_ld, float *out, int64_t ldo) {
    const int nc = (hd + 15) / 16;
    const __mmask16 hm = (__mmask16)((1u << (hd - 16 * (nc - 1))) - 1); // last chunk's lanes
    // Block-kind keys: each block of 16 dequantized once into kdq for all the queries, which then
    // run the f32 kernels on it (the same values, so the same results; widening in registers
    // for each query instead took the 1.1B's shapes, 8 heads a group, 1.3-1.6x f16's time).
    const int kdq_on = kind >= SPECK_KV_Q8 && hd <= KDQ_MAX_HD;
    const int kk = kdq_on ? SPECK_KV_F32 : kind; // the kind the score kernels read
    float kdq[kdq_on ? 16 * hd : 1];
    const qk_fn qk = nc <= 8 ? qk_fns[kk][nc] : NULL; // NULL: the generic chunk loop
    __m512 mx[GROUP_MAX_Q];
    int maxk = 0;
    for (int t = 0; t < nt; t++) maxk = n_keys[t] > maxk ? n_keys[t] : maxk;
    for (int i = 0; i < nt * gq; i++) mx[i] = _mm512_set1_ps(-INFINITY);
    const int64_t row_bytes = speck_kv_bytes(hd, kind);
    for (int j0 = 0; j0 < maxk; j0 += 16) {
        const void *k0 = speck_kv_row(kb, j0, ld, kind);
        int64_t kld = ld;
        if (kdq_on) {
            dequant_rows(k0, ld, maxk - j0 < 16 ? maxk - j0 : 16, hd, kind, kdq);
            k0 = kdq, kld = hd;
        }
        // The next block's keys: 16 rows of a 4 KiB page (head size 64, f32), so the hardware
        // prefetchers, which stop at page ends, would restart at every block. A 1.1B's 44 KV
        // groups per thread per token, 1024 cached keys, single-threaded from memory: 38 -> 29
        // ns per key. (Prefetching the block's values here, for the value pass, gained nothing;
        // that pass prefetches its own, V_AHEAD rows on.)
        for (int r = 0; r < 16 && j0 + 16 + r < maxk; r++)
            for (int64_t b = 0; b < row_bytes; b += 64)
                _mm_prefetch((const char *)speck_kv_row(kb, j0 + 16 + r, ld, kind) + b,
                             _MM_HINT_T0);
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
                    qk ? qk(k0, kld, nk, qp, hm) : qk_block_any(k0, kld, nk, qp, nc, kk, hm);
                __m512 sv = _mm512_mul_ps(s0, _mm512_set1_ps(scale));
                if (softcap > 0) sv = softcap16(sv, softcap);
                const __m512 s = _mm512_mask_blend_ps(ok, _mm512_set1_ps(-INFINITY), sv);
                const int i = t * gq + h;
                _mm512_mask_storeu_ps(sc + i * sc_ld + j0, tm, s);
                mx[i] = _mm512_max_ps(mx[i], s);
            }
        }
    }
    // Softmax weights, then the values for groups of queries with at least one allowed key.
    const float *pw[GROUP_MAX_Q];
    float *po[GROUP_MAX_Q], inv[GROUP_MAX_Q];
    int pk[GROUP_MAX_Q], nq = 0, empty = 0;
    for (int t = 0; t < nt; t++)
        for (int h = 0; h < gq; h++) {
            const int i = t * gq + h;
            float *o = out + (int64_t)t * ldo + (int64_t)h * hd;
            const float w = softmax_weights(sc + i * sc_ld, n_keys[t], mx[i]);
            if (w == 0.0f) {
                memset(o, 0, (size_t)hd * sizeof(float));
                empty++;
                continue;
            }
            pw[nq] = sc + i * sc_ld, po[nq] = o, inv[nq] = w, pk[nq++] = n_keys[t];
        }
    for (int c0 = 0; c0 < nc; c0 += 8) {
        const int cs = nc - c0 < 8 ? nc - c0 : 8, hq = VG_HQ(cs);
        const void *v = (const char *)vb + speck_kv_bytes(16 * c0, kind);
        float *pos[16];
        for (int i0 = 0; i0 < nq; i0 += hq) {
            const int n = nq - i0 < hq ? nq - i0 : hq;
            for (int i = 0; i < n; i++) pos[i] = po[i0 + i] + 16 * c0;
            vgroup_fns[kind][cs](pw + i0, pk + i0, inv + i0, pos, n, v, ld,
                                 c0 + cs == nc ? hm : 0xFFFF);
        }
    }
    return empty;
}

// See speck_attend_group (kernels.h).
int speck_attend_group_avx512(const float *q, int64_t ldq, int nt, int gq, const int *n_keys,
                              const uint8_t *allow, int64_t lda, const void *kb, const void *vb,
                              speck_type kv, int64_t ld, int hd, float scale, float softcap,
                              float *sc, int64_t sc_ld, float *out, int64_t ldo) {
    const int hc = gq < GROUP_MAX_Q ? gq : GROUP_MAX_Q, tc = GROUP_MAX_Q / hc;
    const int kind = speck_kv_kind(kv);
    int empty = 0;
    for (int t0 = 0; t0 < nt; t0 += tc)
        for (int h0 = 0; h0 < gq; h0 += hc)
            empty += attend_group_part(q + (int64_t)t0 * ldq + (int64_t)h0 * hd, ldq,
                                       nt - t0 < tc ? nt - t0 : tc, gq - h0 < hc ? gq - h0 : hc,
                                       n_keys + t0, allow ? allow + (int64_t)t0 * lda : NULL, lda,
                                       kb, vb, kind, ld, hd, scale, softcap, sc, sc_ld,
                                       out + (int64_t)t0 * ldo + (int64_t)h0 * hd, ldo);
    return empty;
}
