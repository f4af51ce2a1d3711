// Attention over a Q8_0 / Q4_0 KV cache (speck_attend_group reading the blocks directly) on every
// ISA: bit-identical to the same ISA's attention over the dequantized rows in f32, and close to
// the portable reference (the scalar table: dequantize, then the one-query reference loop).
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "speck.h"
#include "test_util.h"

static uint64_t g_rng = 0x2545F4914F6CDD1Dull;

static uint64_t rng_u64(void) { // splitmix64
    uint64_t z = (g_rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static float rng_uniform(void) {
    return (float)((rng_u64() >> 40) * 0x1p-24) * 2.0f - 1.0f;
}

enum { NT = 5, MAXK = 90, MAXHD = 160, MAXGQ = 20 };

// One configuration: nt tokens x gq heads over one KV group's keys/values (rows of hd values,
// contiguous as in speck's cache) of type kv; out: (NT, MAXGQ * MAXHD).
static int run(speck_type kv, const void *kb, const void *vb, const float *q, int gq, int hd,
               const int *n_keys, const uint8_t *allow, float softcap, float *sc, float *out) {
    return speck_attend_group(q, MAXGQ * MAXHD, NT, gq, n_keys, allow, MAXK, kb, vb, kv, hd, hd,
                              1.0f / sqrtf((float)hd), softcap, sc, MAXK, out, MAXGQ * MAXHD);
}

int main(void) {
    const char *isas[] = {"scalar", "avx2", "avx512"};
    const char *best = speck_kernels_isa();
    char best_name[16];
    snprintf(best_name, sizeof best_name, "%s", best);
    // Head sizes 32 (two chunks of 16), 96 (six) and 160 (above 128: the generic chunk loop);
    // 1, 4 and 20 heads a group (20 x 5 tokens = 100 queries: more than one pass of 64).
    const int hds[] = {32, 96, 160}, gqs[] = {1, 4, 20};
    const int n_keys[NT] = {1, 17, 90, 33, 64};
    const speck_type types[] = {SPECK_TYPE_Q8_0, SPECK_TYPE_Q4_0};
    const size_t qn = (size_t)NT * MAXGQ * MAXHD;
    float *kf = malloc(sizeof(float) * MAXK * MAXHD), *vf = malloc(sizeof(float) * MAXK * MAXHD);
    float *kd = malloc(sizeof(float) * MAXK * MAXHD), *vd = malloc(sizeof(float) * MAXK * MAXHD);
    uint8_t *kq = malloc(2 * MAXK * MAXHD), *vq = malloc(2 * MAXK * MAXHD); // 34 / 32 B a value
    float *q = malloc(sizeof(float) * qn), *sc = malloc(sizeof(float) * 64 * MAXK);
    float *ref = malloc(sizeof(float) * qn), *got = malloc(sizeof(float) * qn),
          *flt = malloc(sizeof(float) * qn);
    uint8_t allow[NT * MAXK];
    for (size_t i = 0; i < qn; i++) q[i] = 2.0f * rng_uniform();
    for (int i = 0; i < NT * MAXK; i++) allow[i] = (rng_u64() % 4) != 0;
    memset(allow + 2 * MAXK, 0, MAXK); // token 2 sees nothing
    allow[0] = 1;                      // token 0 (one key) sees it
    for (int ti = 0; ti < 2; ti++)
        for (int hi = 0; hi < 3; hi++) {
            const speck_type kv = types[ti];
            const int hd = hds[hi];
            const size_t row = speck_type_row_size(kv, hd);
            for (int i = 0; i < MAXK * hd; i++) {
                // Some rows with a wide spread of magnitudes, so blocks differ in scale.
                const float s = (i / hd) % 7 == 3 ? 40.0f : (i / hd) % 7 == 5 ? 0.01f : 1.0f;
                kf[i] = s * rng_uniform(), vf[i] = s * rng_uniform();
            }
            for (int j = 0; j < MAXK; j++) {
                speck_quantize_row(kv, kf + (size_t)j * hd, kq + j * row, hd);
                speck_quantize_row(kv, vf + (size_t)j * hd, vq + j * row, hd);
                speck_dequantize_row(kv, kq + j * row, kd + (size_t)j * hd, hd);
                speck_dequantize_row(kv, vq + j * row, vd + (size_t)j * hd, hd);
            }
            for (int gi = 0; gi < 3; gi++)
                for (int mi = 0; mi < 3; mi++) {
                    const int gq = gqs[gi];
                    const uint8_t *m = mi == 1 ? allow : NULL;
                    const float cap = mi == 2 ? 5.0f : 0.0f;
                    speck_kernels_force_isa("scalar");
                    const int ref_empty = run(kv, kq, vq, q, gq, hd, n_keys, m, cap, sc, ref);
                    for (int ii = 0; ii < 3; ii++) {
                        if (speck_kernels_force_isa(isas[ii]) != 0) continue;
                        const int e = run(kv, kq, vq, q, gq, hd, n_keys, m, cap, sc, got);
                        run(SPECK_TYPE_F32, kd, vd, q, gq, hd, n_keys, m, cap, sc, flt);
                        // Bit-identical to f32 rows holding the dequantized values (exact: an
                        // fp16 scale times a level of <= 8 bits fits a float's significand).
                        // Against the scalar reference: each output is a convex combination of
                        // values |v| <= 40, the scores sums of <= 160 products; float32 rounding
                        // in another order and the SIMD exp (~1 ulp) move it by ~1e-6 relative
                        // of the largest value: 2e-5 x 40 leaves > 10x headroom, while a wrong
                        // nibble, scale or row moves outputs by 1e-2 x 40 and more.
                        int same = 1;
                        double err = 0;
                        for (int t = 0; t < NT; t++)
                            for (int h = 0; h < gq; h++) {
                                const size_t o = (size_t)t * MAXGQ * MAXHD + (size_t)h * hd;
                                same &= !memcmp(got + o, flt + o, sizeof(float) * (size_t)hd);
                                for (int d = 0; d < hd; d++) {
                                    const double x = fabs((double)got[o + d] - ref[o + d]);
                                    err = x > err ? x : err;
                                }
                            }
                        CHECK(same,
                              "[%s] %s cache, hd %d, %d heads, %s: output bit-identical to "
                              "the f32 kernel on the dequantized rows",
                              isas[ii], speck_type_name(kv), hd, gq,
                              mi == 1   ? "mask"
                              : mi == 2 ? "soft-cap"
                                        : "causal");
                        CHECK(err <= 2e-5 * 40 && e == ref_empty && (mi != 1 || e == gq),
                              "[%s] %s cache, hd %d, %d heads, mode %d: max |out - scalar| %.3g "
                              "(tol %.3g), empty queries %d vs %d",
                              isas[ii], speck_type_name(kv), hd, gq, mi, err, 2e-5 * 40, e,
                              ref_empty);
                    }
                }
        }
    speck_kernels_force_isa(best_name);
    free(kf), free(vf), free(kd), free(vd), free(kq), free(vq), free(q), free(sc), free(ref);
    free(got), free(flt);
    return test_summary();
}
