// Tests for the src/quant/ block types: type facts and fallbacks, Q8_K activation quantization
// (bit-identical on every ISA), the dots of every type (each ISA's kernels bit-identical to the
// scalar reference, which is checked against double precision), the few-token matmul path for
// token counts 1..15 and ragged row ranges (bit-identical to one token at a time: the decoder's
// batch invariance), the prefill path against double precision, importance weights, and bad
// input (rows a type's block does not divide).
#define _GNU_SOURCE // memmem
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/gguf_internal.h"
#include "kernels/kernels.h"
#include "quant/quant.h"
#include "speck.h"
#include "test_util.h"

static const speck_type qtypes[] = {SPECK_TYPE_Q4_1,  SPECK_TYPE_Q5_0, SPECK_TYPE_Q5_1,
                                    SPECK_TYPE_IQ4_NL, SPECK_TYPE_Q2_K, SPECK_TYPE_Q3_K,
                                    SPECK_TYPE_Q4_K,  SPECK_TYPE_Q5_K, SPECK_TYPE_Q6_K,
                                    SPECK_TYPE_IQ4_XS, SPECK_TYPE_DGQ4};
#define N_QTYPES (int)(sizeof qtypes / sizeof qtypes[0])
static const char *const isas[] = {"scalar", "avx2", "avx512"};

static uint64_t g_rng = 0x243F6A8885A308D3ull;
static uint64_t rng_u64(void) { // splitmix64
    uint64_t z = (g_rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static float rng_uniform(void) { // [-1, 1)
    return (float)((rng_u64() >> 40) * 0x1p-24) * 2.0f - 1.0f;
}
// Roughly Gaussian values whose scale changes every 32 (weights and activations both vary so).
static void fill(float *x, int64_t n, float scale) {
    float s = scale;
    for (int64_t i = 0; i < n; i++) {
        if (i % 32 == 0) s = scale * (0.05f + 2.0f * (float)((rng_u64() >> 40) * 0x1p-24));
        x[i] = (rng_uniform() + rng_uniform() + rng_uniform()) * s;
    }
}

static int force(const char *isa) {
    return speck_kernels_force_isa(isa) == 0;
}

/* ---- type facts ---------------------------------------------------------------------------- */

static void test_types(void) {
    static const struct {
        speck_type t;
        const char *name;
        int block, bytes, file_type;
    } facts[] = {{SPECK_TYPE_Q4_1, "q4_1", 32, 20, 3},     {SPECK_TYPE_Q5_0, "q5_0", 32, 22, 8},
                 {SPECK_TYPE_Q5_1, "q5_1", 32, 24, 9},     {SPECK_TYPE_IQ4_NL, "iq4_nl", 32, 18, 25},
                 {SPECK_TYPE_Q2_K, "q2_k", 256, 84, 10},   {SPECK_TYPE_Q3_K, "q3_k", 256, 110, 11},
                 {SPECK_TYPE_Q4_K, "q4_k", 256, 144, 14},  {SPECK_TYPE_Q5_K, "q5_k", 256, 176, 16},
                 {SPECK_TYPE_Q6_K, "q6_k", 256, 210, 18},  {SPECK_TYPE_IQ4_XS, "iq4_xs", 256, 136, 30},
                 {SPECK_TYPE_DGQ4, "dgq4", 256, 138, 0}};
    for (size_t i = 0; i < sizeof facts / sizeof facts[0]; i++) {
        const speck_type t = facts[i].t;
        CHECK(speck_type_name(t) && !strcmp(speck_type_name(t), facts[i].name), "name of %d", t);
        CHECK(speck_type_from_name(facts[i].name) == (int)t, "from_name(%s)", facts[i].name);
        CHECK(speck_type_block_size(t) == facts[i].block && speck_type_block_bytes(t) == facts[i].bytes,
              "%s block %lld x %lld bytes", facts[i].name, (long long)speck_type_block_size(t),
              (long long)speck_type_block_bytes(t));
        CHECK(speck_gguf_file_type(t) == facts[i].file_type, "%s file_type %d", facts[i].name,
              speck_gguf_file_type(t));
        CHECK(!strcmp(speck_gguf_type_label(t), facts[i].name), "gguf label of %s", facts[i].name);
    }
    CHECK(speck_type_from_name("Q4_K") == SPECK_TYPE_Q4_K, "names are case-insensitive");
    // Q8_K is an activation format only: no name, so no file or command can ask for it.
    CHECK(speck_type_name(SPECK_TYPE_Q8_K) == NULL && speck_type_from_name("q8_k") < 0,
          "q8_k is not a storage type");
    CHECK(speck_type_block_bytes(SPECK_TYPE_Q8_K) == 292, "q8_k block bytes");
    // llama-quantize's fallbacks for rows the super-block does not divide (576: smollm2's width).
    static const struct {
        speck_type want;
        int64_t n;
        speck_type got;
    } fb[] = {{SPECK_TYPE_Q4_K, 576, SPECK_TYPE_Q5_0},   {SPECK_TYPE_Q5_K, 576, SPECK_TYPE_Q5_1},
              {SPECK_TYPE_Q6_K, 896, SPECK_TYPE_Q8_0},   {SPECK_TYPE_Q2_K, 64, SPECK_TYPE_Q4_0},
              {SPECK_TYPE_Q3_K, 64, SPECK_TYPE_Q4_0},    {SPECK_TYPE_IQ4_XS, 64, SPECK_TYPE_IQ4_NL},
              {SPECK_TYPE_Q4_K, 48, SPECK_TYPE_F16},     {SPECK_TYPE_Q4_K, 2048, SPECK_TYPE_Q4_K},
              {SPECK_TYPE_Q5_0, 100, SPECK_TYPE_F16},    {SPECK_TYPE_F32, 7, SPECK_TYPE_F32},
              {SPECK_TYPE_DGQ4, 576, SPECK_TYPE_Q5_0}};
    for (size_t i = 0; i < sizeof fb / sizeof fb[0]; i++)
        CHECK(speck_type_for_row(fb[i].want, fb[i].n) == fb[i].got, "%s on rows of %lld -> %s",
              speck_type_name(fb[i].want), (long long)fb[i].n,
              speck_type_name(speck_type_for_row(fb[i].want, fb[i].n)));
}

/* ---- Q8_K activations ------------------------------------------------------------------------ */

// Q8_K blocks are the activations of the 256-value types: every ISA must write the same bytes
// (decoding on one ISA and verifying on another must agree), and they must follow the format:
// |q| <= 127, d * q within d / 2 of x, bsums the sums of 16.
static void test_q8k(void) {
    const int64_t n = 256 * 6;
    float *x = malloc(n * sizeof(float));
    speck_block_q8_k ref[6], got[6];
    for (int trial = 0; trial < 40; trial++) {
        fill(x, n, trial % 2 ? 1e-3f : 3.0f);
        if (trial == 1) memset(x, 0, 256 * sizeof(float));            // a zero block
        if (trial == 2) x[17] = -fabsf(x[3]) - 1, x[300] = -x[17];     // equal magnitudes
        if (trial == 3)
            for (int i = 0; i < 256; i++) x[i] = (float)(i % 7 - 3) * 0.5f; // exact half ties
        speck_quant_q8_k_ref(x, ref, n);
        for (int ii = 1; ii < 3; ii++) {
            if (!force(isas[ii])) continue;
            speck_quantize_row(SPECK_TYPE_Q8_K, x, got, n);
            if (memcmp(ref, got, sizeof ref)) {
                CHECK(0, "[%s] Q8_K quantization differs from the reference (trial %d)", isas[ii],
                      trial);
                break;
            }
        }
        int ok = 1;
        for (int b = 0; b < 6; b++) {
            for (int j = 0; j < 16; j++) {
                int s = 0;
                for (int l = 0; l < 16; l++) s += ref[b].qs[16 * j + l];
                ok &= ref[b].bsums[j] == s;
            }
            for (int l = 0; l < 256; l++) {
                ok &= ref[b].qs[l] != -128;
                ok &= fabsf(ref[b].d * ref[b].qs[l] - x[256 * b + l]) <= fabsf(ref[b].d) * 0.5001f;
            }
        }
        CHECK(ok, "Q8_K blocks of trial %d: levels in range, within d/2, bsums", trial);
    }
    speck_kernels_force_isa("scalar");
    free(x);
}

/* ---- dots ----------------------------------------------------------------------------------- */

// n values of one weight row of type t: quantized from fill() values, or (raw) random bytes
// with the fp16 scale fields kept finite, so that every level pattern occurs.
static void make_row(speck_type t, int64_t n, int raw, void *w) {
    float *x = malloc(n * sizeof(float));
    fill(x, n, 0.5f);
    speck_quantize_row(t, x, w, n);
    if (raw) {
        // Keep the scales (fp16 fields, from the quantizer), randomize everything else.
        const int64_t bb = speck_type_block_bytes(t), nb = n / speck_type_block_size(t);
        for (int64_t b = 0; b < nb; b++) {
            uint8_t *p = (uint8_t *)w + b * bb, keep[16];
            int off[2] = {-1, -1};
            switch (t) {
            case SPECK_TYPE_Q4_1:
            case SPECK_TYPE_Q5_1:
            case SPECK_TYPE_Q4_K:
            case SPECK_TYPE_Q5_K:
                off[0] = 0, off[1] = 2;
                break;
            case SPECK_TYPE_Q2_K:
                off[0] = 80, off[1] = 82;
                break;
            case SPECK_TYPE_Q3_K:
                off[0] = 108;
                break;
            case SPECK_TYPE_Q6_K:
                off[0] = 208;
                break;
            default:
                off[0] = 0;
            }
            for (int k = 0; k < 2; k++)
                if (off[k] >= 0) memcpy(keep + 2 * k, p + off[k], 2);
            for (int64_t i = 0; i < bb; i++) p[i] = (uint8_t)rng_u64();
            for (int k = 0; k < 2; k++)
                if (off[k] >= 0) memcpy(p + off[k], keep + 2 * k, 2);
        }
    }
    free(x);
}

// For every type and ISA: speck_vec_dot equals the scalar reference bit for bit, and the
// reference is within 1e-5 * sum |w a| of the double-precision dot of the dequantized operands
// (the integer sums are exact; the float part rounds a few products per group and adds the
// groups: <= ~(2 + n / group) * 2^-24 relative of sum |w a|, far below 1e-5 for n <= 4096).
static void test_dots(void) {
    const int64_t ns[] = {256, 768, 4096};
    for (int ti = 0; ti < N_QTYPES; ti++) {
        const speck_type t = qtypes[ti], at = speck_act_type(t);
        int exact = 1, close = 1, cases = 0;
        double worst = 0;
        for (int ni = 0; ni < 3; ni++)
            for (int raw = 0; raw < 2; raw++)
                for (int rep = 0; rep < 4; rep++) {
                    const int64_t n = ns[ni];
                    char *w = malloc(speck_type_row_size(t, n)), *a = malloc(speck_type_row_size(at, n));
                    float *x = malloc(n * sizeof(float)), *wf = malloc(n * sizeof(float)),
                          *af = malloc(n * sizeof(float));
                    make_row(t, n, raw, w);
                    fill(x, n, 1.0f);
                    speck_kernels_force_isa("scalar");
                    speck_quantize_row(at, x, a, n);
                    const float ref = speck_vec_dot(t, w, a, n);
                    speck_dequantize_row(t, w, wf, n);
                    speck_dequantize_row(at, a, af, n);
                    double dd = 0, sabs = 0;
                    for (int64_t i = 0; i < n; i++) {
                        dd += (double)wf[i] * af[i];
                        sabs += fabs((double)wf[i] * af[i]);
                    }
                    const double e = fabs(ref - dd) / (sabs > 0 ? sabs : 1);
                    worst = e > worst ? e : worst;
                    close &= e <= 1e-5;
                    for (int ii = 1; ii < 3; ii++) {
                        if (!force(isas[ii])) continue;
                        const float r = speck_vec_dot(t, w, a, n);
                        if (memcmp(&r, &ref, 4)) {
                            if (exact)
                                printf("  %s %s n %lld raw %d: %.9g vs reference %.9g\n", isas[ii],
                                       speck_type_name(t), (long long)n, raw, r, ref);
                            exact = 0;
                        }
                    }
                    cases++;
                    free(w), free(a), free(x), free(wf), free(af);
                }
        CHECK(exact, "%s dot: every ISA bit-identical to the scalar reference (%d rows)",
              speck_type_name(t), cases);
        CHECK(close, "%s reference dot within 1e-5 sum|wa| of double (worst %.2e)",
              speck_type_name(t), worst);
    }
    speck_kernels_force_isa("scalar");
}

/* ---- few-token matmul ------------------------------------------------------------------------ */

// W (n_out ragged, not a multiple of 16) x X for n_tok = 1 .. 15 on every ISA's streaming path:
// each row equals, bit for bit, the scalar ISA's result for that token alone (batch invariance
// plus cross-ISA identity). Then speck_mm_rows over a ragged range with += leaves the other rows
// alone and adds exactly.
static void test_mm(void) {
    const int64_t n_out = 37, nt = 15;
    for (int ti = 0; ti < N_QTYPES; ti++) {
        const speck_type t = qtypes[ti];
        // 32-value types: 13 blocks (a tail after the groups of 8); K types: 3 super-blocks.
        const int64_t n_in = speck_type_block_size(t) == 32 ? 32 * 13 : 256 * 3;
        const size_t wrow = speck_type_row_size(t, n_in);
        char *W = malloc(wrow * n_out);
        for (int64_t o = 0; o < n_out; o++) make_row(t, n_in, o % 3 == 2, W + o * wrow);
        float *X = malloc(nt * n_in * sizeof(float)), *ref = malloc(nt * n_out * sizeof(float)),
              *Y = malloc(nt * n_out * sizeof(float));
        fill(X, nt * n_in, 1.0f);
        speck_kernels_force_isa("scalar");
        for (int64_t i = 0; i < nt; i++) speck_matmul(t, W, n_out, n_in, X + i * n_in, 1, ref + i * n_out);
        for (int ii = 0; ii < 3; ii++) {
            if (!force(isas[ii])) continue;
            int ok = 1;
            for (int64_t n = 1; n <= nt && ok; n++) {
                speck_matmul(t, W, n_out, n_in, X, n, Y);
                if (memcmp(Y, ref, n * n_out * sizeof(float))) {
                    printf("  %s %s: n_tok %lld differs\n", isas[ii], speck_type_name(t), (long long)n);
                    ok = 0;
                }
            }
            CHECK(ok, "[%s] %s matmul rows for n_tok 1..15 bit-identical to the scalar one-token rows",
                  isas[ii], speck_type_name(t));
            // Ragged range [5, 29) accumulated onto known values, 6 tokens.
            const int64_t n = 6;
            speck_mm_act a;
            void *buf = aligned_alloc(64, (speck_mm_act_bytes(t, n, n_in) + 63) / 64 * 64 + 64);
            speck_mm_act_prepare(t, X, n, n_in, buf, &a);
            for (int64_t i = 0; i < n * n_out; i++) Y[i] = (float)i;
            speck_mm_rows(t, W, &a, 5, 29, Y, n_out, 1);
            int acc_ok = 1;
            for (int64_t tok = 0; tok < n; tok++)
                for (int64_t o = 0; o < n_out; o++) {
                    const float base = (float)(tok * n_out + o);
                    const float want = o >= 5 && o < 29 ? base + ref[tok * n_out + o] : base;
                    acc_ok &= !memcmp(&Y[tok * n_out + o], &want, 4);
                }
            CHECK(acc_ok, "[%s] %s mm_rows on rows [5, 29) with += (other rows untouched)", isas[ii],
                  speck_type_name(t));
            free(buf);
        }
        free(W), free(X), free(ref), free(Y);
    }
    speck_kernels_force_isa("scalar");
}

// The prefill path (n_tok >= 16: dequantize + sgemm, f32 activations) and the streaming path
// against double precision on the dequantized weights and the activations as that path rounds
// them (speck_matmul_act_type): within 1e-4 * sum |w x| per output (float sums of <= 1024
// terms in blocked order: ~sqrt(n) * 2^-24 typical).
static void test_matmul_paths(void) {
    const int64_t n_out = 70, n_in = 1024, nts[] = {3, 40};
    for (int ii = 0; ii < 3; ii++) {
        if (!force(isas[ii])) continue;
        for (int ti = 0; ti < N_QTYPES; ti++)
            for (int k = 0; k < 2; k++) {
                const speck_type t = qtypes[ti];
                const int64_t n_tok = nts[k];
                const size_t wrow = speck_type_row_size(t, n_in);
                char *W = malloc(wrow * n_out);
                float *wf = malloc(n_out * n_in * sizeof(float)),
                      *X = malloc(n_tok * n_in * sizeof(float)),
                      *xr = malloc(n_tok * n_in * sizeof(float)),
                      *Y = malloc(n_tok * n_out * sizeof(float));
                for (int64_t o = 0; o < n_out; o++) {
                    make_row(t, n_in, 0, W + o * wrow);
                    speck_dequantize_row(t, W + o * wrow, wf + o * n_in, n_in);
                }
                fill(X, n_tok * n_in, 1.0f);
                const speck_type at = speck_matmul_act_type(t, n_tok);
                char *q = malloc(speck_type_row_size(SPECK_TYPE_Q8_K, n_in) + 64);
                for (int64_t i = 0; i < n_tok; i++) {
                    if (at == SPECK_TYPE_F32) {
                        memcpy(xr + i * n_in, X + i * n_in, n_in * sizeof(float));
                    } else {
                        speck_quantize_row(at, X + i * n_in, q, n_in);
                        speck_dequantize_row(at, q, xr + i * n_in, n_in);
                    }
                }
                speck_matmul(t, W, n_out, n_in, X, n_tok, Y);
                double worst = 0;
                for (int64_t i = 0; i < n_tok; i++)
                    for (int64_t o = 0; o < n_out; o++) {
                        double d = 0, s = 0;
                        for (int64_t j = 0; j < n_in; j++) {
                            d += (double)wf[o * n_in + j] * xr[i * n_in + j];
                            s += fabs((double)wf[o * n_in + j] * xr[i * n_in + j]);
                        }
                        const double e = fabs(Y[i * n_out + o] - d) / (1e-4 * (s > 0 ? s : 1));
                        worst = e > worst ? e : worst;
                    }
                CHECK(worst <= 1.0, "[%s] %s matmul n_tok %lld (%s activations) vs double: %.3f of tol",
                      isas[ii], speck_type_name(t), (long long)n_tok, at == SPECK_TYPE_F32 ? "f32" : "quantized",
                      worst);
                free(W), free(wf), free(X), free(xr), free(Y), free(q);
            }
    }
    speck_kernels_force_isa("scalar");
}

/* ---- panels -------------------------------------------------------------------------------- */

// Panel copies (speck_panel_pack) of every type that has a panel layout: they unpack to the
// exact rows; on each ISA with panel kernels, speck_mm_panel_rows over ragged ranges (+=, other
// rows untouched) for n_tok 1..15 gives the scalar one-token rows bit for bit; and
// speck_matmul_panels reads the panels alone on the streaming and prefill paths.
static void test_panels(void) {
    const int64_t n_out = 53, nt = 15;
    for (int ti = 0; ti <= N_QTYPES; ti++) { // and S24_Q8 (src/sparse/), whose rows are quantized
        const speck_type t = ti < N_QTYPES ? qtypes[ti] : SPECK_TYPE_S24_Q8;
        const int64_t n_in = speck_type_block_size(t) == 32 ? 32 * 13 : 256 * 3;
        const size_t wrow = speck_type_row_size(t, n_in), pb = speck_panel_bytes(t, n_out, n_in);
        char *W = malloc(wrow * n_out), *back = malloc(wrow * n_out), *P = malloc(pb);
        for (int64_t o = 0; o < n_out; o++)
            make_row(t, n_in, o % 3 == 1 && ti < N_QTYPES, W + o * wrow);
        float *X = malloc(nt * n_in * sizeof(float)), *ref = malloc(nt * n_out * sizeof(float)),
              *Y = malloc(nt * n_out * sizeof(float)), *Y2 = malloc(nt * n_out * sizeof(float));
        fill(X, nt * n_in, 1.0f);
        speck_kernels_force_isa("scalar");
        for (int64_t i = 0; i < nt; i++) speck_matmul(t, W, n_out, n_in, X + i * n_in, 1, ref + i * n_out);
        int tested = 0;
        for (int ii = 1; ii < 3; ii++) {
            if (!force(isas[ii]) || !speck_panel_supported(t)) continue;
            tested = 1;
            CHECK(pb == 16 * wrow * (size_t)((n_out + 15) / 16), "%s panel bytes", speck_type_name(t));
            speck_panel_pack(t, W, n_out, n_in, P);
            speck_panel_unpack(t, P, n_in, 0, n_out, back);
            int ok = !memcmp(back, W, wrow * n_out);
            speck_panel_unpack(t, P, n_in, 7, n_out - 9, back);
            ok &= !memcmp(back, W + 7 * wrow, wrow * (n_out - 9));
            CHECK(ok, "[%s] %s panels unpack to the exact rows", isas[ii], speck_type_name(t));
            const speck_type at = speck_panel_act_type(t);
            void *buf = aligned_alloc(64, (speck_mm_act_bytes(at, nt, n_in) + 63) / 64 * 64 + 64);
            int same = 1, keep = 1;
            const int64_t ranges[][2] = {{0, n_out}, {5, 37}, {17, 18}, {16, n_out}};
            for (int64_t n = 1; n <= nt; n++) {
                speck_mm_act a;
                speck_mm_act_prepare(at, X, n, n_in, buf, &a);
                for (int ri = 0; ri < 4; ri++) {
                    const int64_t o0 = ranges[ri][0], o1 = ranges[ri][1];
                    const int acc = ri % 2;
                    for (int64_t i = 0; i < n * n_out; i++) Y[i] = (float)(i % 97);
                    speck_mm_panel_rows(t, P, &a, o0, o1, Y, n_out, acc);
                    for (int64_t tok = 0; tok < n; tok++)
                        for (int64_t o = 0; o < n_out; o++) {
                            const float base = (float)((tok * n_out + o) % 97);
                            const float r = ref[tok * n_out + o];
                            const float want = o >= o0 && o < o1 ? (acc ? base + r : r) : base;
                            if (memcmp(&Y[tok * n_out + o], &want, 4)) {
                                if (o >= o0 && o < o1) {
                                    if (same)
                                        printf("  %s %s n_tok %lld range [%lld, %lld) row %lld: %.9g vs %.9g\n",
                                               isas[ii], speck_type_name(t), (long long)n, (long long)o0,
                                               (long long)o1, (long long)o, Y[tok * n_out + o], want);
                                    same = 0;
                                } else {
                                    keep = 0;
                                }
                            }
                        }
                }
            }
            CHECK(same, "[%s] %s panel rows bit-identical to the scalar one-token rows (n_tok 1..15, "
                        "ragged ranges, +=)", isas[ii], speck_type_name(t));
            CHECK(keep, "[%s] %s panel calls leave rows outside their range alone", isas[ii],
                  speck_type_name(t));
            free(buf);
            // Every path from the panels alone (the row copy poisoned).
            memset(back, 0x7F, wrow * n_out);
            const char *paths[] = {"small", "sgemm"};
            for (int pi = 0; pi < 2; pi++) {
                speck_matmul_force_path(paths[pi]);
                speck_matmul_panels(t, back, P, n_out, n_in, X, 4, Y);
                speck_matmul(t, W, n_out, n_in, X, 4, Y2);
                CHECK(!memcmp(Y, Y2, 4 * n_out * sizeof(float)),
                      "[%s] %s speck_matmul_panels (%s path) reads the panels", isas[ii],
                      speck_type_name(t), paths[pi]);
            }
            speck_matmul_force_path("auto");
        }
        if (!tested) printf("(no %s panel kernels on this CPU's paths)\n", speck_type_name(t));
        free(W), free(back), free(P), free(X), free(ref), free(Y), free(Y2);
    }
    speck_kernels_force_isa("scalar");
}

/* ---- importance weights ---------------------------------------------------------------------- */

// Importance weights concentrated on a quarter of the columns must lower the error on those
// columns (the weighted searches trade it against the others'): weighted squared error with
// imp below the plain quantizer's, over 64 rows, for every type that uses imp.
static void test_importance(void) {
    const int64_t n = 1024, rows = 64;
    float *x = malloc(rows * n * sizeof(float)), *imp = malloc(n * sizeof(float)),
          *y = malloc(n * sizeof(float));
    fill(x, rows * n, 1.0f);
    for (int64_t j = 0; j < n; j++) imp[j] = (j / 8) % 4 == 0 ? 1.0f : 0.01f;
    for (int ti = 0; ti < N_QTYPES; ti++) {
        const speck_type t = qtypes[ti];
        const size_t rs = speck_type_row_size(t, n);
        char *q = malloc(rs * rows);
        double err[2] = {0, 0};
        for (int k = 0; k < 2; k++) {
            CHECK(speck_quantize(t, x, q, rows, n, k ? imp : NULL) == 0, "quantize %s",
                  speck_type_name(t));
            for (int64_t r = 0; r < rows; r++) {
                speck_dequantize_row(t, q + r * rs, y, n);
                for (int64_t j = 0; j < n; j++)
                    err[k] += imp[j] * (double)(y[j] - x[r * n + j]) * (y[j] - x[r * n + j]);
            }
        }
        CHECK(err[1] < err[0], "%s: importance-weighted error %.4g < plain %.4g", speck_type_name(t),
              err[1], err[0]);
        free(q);
    }
    free(x), free(imp), free(y);
}

/* ---- bad input ------------------------------------------------------------------------------- */

static int has(const char *s, const char *sub) {
    return strstr(s, sub) != NULL;
}

// A K-quant on rows its 256-value super-block does not divide: the quantizer, the writer and
// the reader refuse it with a message naming the tensor (or row length) and the type.
static void test_bad_rows(const char *dir) {
    float x[320] = {0};
    char q[1024];
    CHECK(speck_quantize(SPECK_TYPE_Q4_K, x, q, 1, 320, NULL) == SPECK_ERR_ARG &&
              has(speck_last_error(), "q4_k") && has(speck_last_error(), "256") &&
              has(speck_last_error(), "320"),
          "speck_quantize q4_k on rows of 320: %s", speck_last_error());
    CHECK(speck_quantize(SPECK_TYPE_Q8_K, x, q, 1, 256, NULL) == SPECK_ERR_ARG,
          "speck_quantize refuses the activation-only Q8_K");
    speck_gguf_writer *w = speck_gguf_writer_new();
    const int64_t ne[2] = {320, 1};
    CHECK(speck_gguf_add_tensor(w, "blk.0.ffn_down.weight", SPECK_TYPE_Q6_K, 2, ne, q) != 0 &&
              has(speck_last_error(), "blk.0.ffn_down.weight"),
          "writer: q6_k tensor of rows 320: %s", speck_last_error());
    speck_gguf_writer_free(w);

    // A file whose tensor claims q4_k for 64-value rows (a tiny q4_0 model, one tensor's type
    // id patched: the reader must name it and the type before touching its data).
    char path[512];
    snprintf(path, sizeof path, "%s/bad_q4k.gguf", dir);
    const speck_preset *p = speck_preset_find("tiny");
    CHECK(p && speck_init_model(p, SPECK_TYPE_Q4_0, 1, path) == 0, "init tiny q4_0: %s",
          speck_last_error());
    size_t len = 0;
    char *buf = test_read_file(path, &len);
    const char *name = "blk.0.attn_q.weight";
    char *at = buf ? memmem(buf, len, name, strlen(name)) : NULL;
    CHECK(at != NULL, "tensor record found");
    if (at) {
        // name, u32 n_dims, u64 ne[2], u32 type
        char *tp = at + strlen(name) + 4 + 16;
        uint32_t type = SPECK_TYPE_Q4_K;
        memcpy(tp, &type, 4);
        FILE *f = fopen(path, "wb");
        fwrite(buf, 1, len, f);
        fclose(f);
        speck_gguf *g = speck_gguf_open(path);
        CHECK(!g && has(speck_last_error(), name) && has(speck_last_error(), "q4_k") &&
                  has(speck_last_error(), "256"),
              "reader: %s", speck_last_error());
        speck_gguf_close(g);
        speck_model *m = speck_model_load(path);
        CHECK(!m && has(speck_last_error(), name), "model load: %s", speck_last_error());
        speck_model_free(m);
    }
    free(buf);
}

// `speck quantize` to a K-quant falls back per tensor as llama-quantize does and the file runs.
static void test_quantize_file(const char *dir) {
    char src[512], dst[512];
    snprintf(src, sizeof src, "%s/q_src.gguf", dir);
    snprintf(dst, sizeof dst, "%s/q_dst.gguf", dir);
    const speck_preset *p = speck_preset_find("tiny");
    CHECK(speck_init_model(p, SPECK_TYPE_F16, 2, src) == 0, "init tiny f16");
    const speck_quantize_opts o = {.type = SPECK_TYPE_Q4_K, .embd_type = SPECK_TYPE_Q6_K,
                                   .output_type = -1, .allow_requantize = false};
    CHECK(speck_gguf_quantize(src, dst, &o, false) == 0, "quantize to q4_k: %s", speck_last_error());
    speck_gguf *g = speck_gguf_open(dst);
    CHECK(g != NULL, "open quantized: %s", speck_last_error());
    if (g) {
        const speck_gguf_tensor *q = speck_gguf_find_tensor(g, "blk.0.attn_q.weight");
        const speck_gguf_tensor *e = speck_gguf_find_tensor(g, "token_embd.weight");
        CHECK(q && q->type == SPECK_TYPE_Q5_0, "64-wide rows fall back to q5_0 (got %s)",
              q ? speck_gguf_type_label(q->type) : "-");
        CHECK(e && e->type == SPECK_TYPE_Q8_0, "q6_k embedding on 64-wide rows falls back to q8_0");
        speck_gguf_close(g);
    }
    speck_model *m = speck_model_load(dst);
    CHECK(m != NULL, "quantized model loads: %s", speck_last_error());
    speck_model_free(m);
}

int main(int argc, char **argv) {
    const char *dir = argc > 1 ? argv[1] : ".";
    char best[16];
    snprintf(best, sizeof best, "%s", speck_kernels_isa());
    test_types();
    test_q8k();
    test_dots();
    test_mm();
    test_matmul_paths();
    test_panels();
    speck_kernels_force_isa(best);
    test_importance();
    test_bad_rows(dir);
    test_quantize_file(dir);
    speck_kernels_force_isa(best);
    return test_summary();
}
