// CorDA initialisation and Block-LoRA (src/adapt/corda.c, block_lora.c) on the default model:
// the CorDA adapter on its residual base (W − s·B·A, written by speck_lora_merge with scale −1)
// gives the base's logits at step 0 (KPM and IPM); a Block-LoRA adapter (K tied A blocks) and
// the rank r/K LoRA it is saved as give the same logits; bad input is refused with a clear error.
// The factors themselves are checked against numpy in tests/reference/corda_ref.py, Block-LoRA's
// gradients against torch autograd in lora_ref.py.
//
// usage: test_adapt_init MODELS_DIR WORK_DIR
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "speck.h"
#include "logits_util.h"
#include "test_util.h"

#define NTOK 40 // below 64: the streaming forward path (the batch one is the same hook)

// Calibration tokens: a fixed pseudo-random stream over the vocabulary (the covariances only need
// to be full rank; what they describe does not matter to the identity checked here).
static int32_t *calib_tokens(int n, int vocab) {
    int32_t *t = malloc((size_t)n * sizeof *t);
    uint32_t x = 12345;
    for (int i = 0; t && i < n; i++) {
        x = x * 1664525u + 1013904223u;
        t[i] = (int32_t)((x >> 8) % (uint32_t)vocab);
    }
    return t;
}

// Step 0 of CorDA: residual base + adapter = base. Both sides run the same f32 path except that
// the base multiplies by its f16 weights (exact in f32) and the other side by W' = W − s·B·A
// rounded to f32 plus the adapter term: the difference is f32 rounding of W' (|W'| <= |W| + |BA|,
// 2^-24 relative) summed over 256–768 inputs and 4 layers: observed 1.8e-5 on logits up to 11;
// bound 2e-4, while dropping the adapter moves them by 0.2 (KPM) to 14 (IPM).
static void test_corda_step0(const char *base_path) {
    speck_model *m = speck_model_load_ex(base_path, SPECK_LOAD_NO_PANELS);
    CHECK(m != NULL, "load %s: %s", base_path, speck_last_error());
    if (!m) return;
    const int V = speck_model_hparams(m)->n_vocab;
    int32_t *cal = calib_tokens(2048, V), tok[NTOK];
    for (int i = 0; i < NTOK; i++) tok[i] = cal[100 + i * 7];
    float *ref = run_logits(m, tok, NTOK);
    for (int mode = 0; mode < 2 && ref; mode++) {
        speck_lora *a = speck_corda_init(m, cal, 2048, 128, 8, 16.0f, 0x7f,
                                         mode ? SPECK_CORDA_IPM : SPECK_CORDA_KPM, false);
        CHECK(a != NULL, "corda init %s: %s", mode ? "ipm" : "kpm", speck_last_error());
        if (!a) continue;
        const char *res = test_path(mode ? "corda_ipm_base.gguf" : "corda_kpm_base.gguf");
        const float minus1 = -1.0f;
        CHECK(speck_lora_merge(base_path, &a, &minus1, 1, SPECK_TYPE_F32, res) == 0,
              "residual base: %s", speck_last_error());
        speck_model *r = speck_model_load(res);
        CHECK(r != NULL, "load residual: %s", speck_last_error());
        float *lr = NULL, *l0 = NULL;
        if (r && (l0 = run_logits(r, tok, NTOK)) && speck_model_lora_add(r, a, 1.0f) == 0)
            lr = run_logits(r, tok, NTOK);
        CHECK(lr != NULL, "residual + adapter forward");
        if (lr) {
            double s, d = max_abs(lr, ref, (size_t)NTOK * V, &s);
            double moved = max_abs(l0, ref, (size_t)NTOK * V, NULL);
            printf("corda %s step 0: max |logit diff| %.2e (logits up to %.1f); residual base "
                   "alone is off by %.2f\n", mode ? "ipm" : "kpm", d, s, moved);
            CHECK(d <= 2e-4, "corda %s: residual + adapter differs from the base by %g",
                  mode ? "ipm" : "kpm", d);
            // The adapter holds something: without it the residual base is another model.
            CHECK(moved > 0.1, "corda %s: the residual base alone equals the base (%g)",
                  mode ? "ipm" : "kpm", moved);
        }
        free(lr), free(l0);
        speck_model_free(r);
        speck_lora_free(a);
    }
    // Bad input: too few tokens (fewer than the widest adapted input, ffn_down's n_ff), a rank
    // beyond a matrix's smaller side.
    speck_lora *a = speck_corda_init(m, cal, 300, 128, 8, 8.0f, 0x7f, SPECK_CORDA_KPM, false);
    CHECK(!a && strstr(speck_last_error(), "too few"), "too few tokens: %s", speck_last_error());
    speck_lora_free(a);
    a = speck_corda_init(m, cal, 2048, 128, 300, 300.0f, 0x7f, SPECK_CORDA_IPM, false);
    CHECK(!a && strstr(speck_last_error(), "rank"), "rank too large: %s", speck_last_error());
    speck_lora_free(a);
    free(ref);
    free(cal);
    speck_model_free(m);
}

// A Block-LoRA adapter (rank 8, K = 4 tied blocks, B non-zero) and its rank-2 collapse give the
// same logits (the same function; f32 summation order only: bound 1e-4 on logits up to ~20).
static void test_block_collapse(const char *base_path) {
    speck_model *m = speck_model_load(base_path);
    CHECK(m != NULL, "load: %s", speck_last_error());
    if (!m) return;
    const int V = speck_model_hparams(m)->n_vocab, K = 4;
    speck_lora *a = speck_lora_new(m, 8, 16.0f, 0x7f, 3);
    CHECK(a && speck_lora_block_check(a, K) == 0, "block check: %s", speck_last_error());
    CHECK(a && speck_lora_block_check(a, 3) != 0 && strstr(speck_last_error(), "multiple"),
          "rank 8 with 3 blocks refused: %s", speck_last_error());
    if (!a) return;
    speck_lora_block_tie(a, K);
    for (int l = 0; l < speck_lora_n_layer(a); l++)
        for (int t = 0; t < SPECK_LORA_N_TARGETS; t++) {
            int64_t n;
            float *b = speck_lora_matrix(a, l, t, true, NULL, &n);
            for (int64_t j = 0; b && j < n; j++) b[j] = 0.03f * sinf(0.41f * (float)j + (float)t);
        }
    speck_lora *c = speck_lora_block_collapse(a, K);
    CHECK(c != NULL, "collapse: %s", speck_last_error());
    int rank = 0;
    if (c) speck_lora_matrix(c, 0, 0, false, &rank, NULL);
    CHECK(rank == 2, "collapsed rank %d, want 2", rank);
    // Trainable count: rank·n_out + (rank/K)·n_in per matrix, against plain (n_in + n_out)·rank.
    CHECK(speck_lora_block_n_trainable(a, K) < speck_lora_n_params(a) &&
              speck_lora_block_n_trainable(a, 1) == speck_lora_n_params(a),
          "trainable counts");
    int32_t *tok = calib_tokens(NTOK, V);
    float *l1 = NULL, *l2 = NULL;
    if (c && speck_model_lora_add(m, a, 1.0f) == 0) l1 = run_logits(m, tok, NTOK);
    speck_model_lora_clear(m);
    if (c && speck_model_lora_add(m, c, 1.0f) == 0) l2 = run_logits(m, tok, NTOK);
    speck_model_lora_clear(m);
    float *l0 = run_logits(m, tok, NTOK);
    CHECK(l1 && l2 && l0, "forwards");
    if (l1 && l2 && l0) {
        double s, d = max_abs(l2, l1, (size_t)NTOK * V, &s);
        double moved = max_abs(l1, l0, (size_t)NTOK * V, NULL);
        printf("block-lora: collapsed vs expanded max |diff| %.2e (logits up to %.1f, the "
               "adapter moves them by %.2f)\n", d, s, moved);
        CHECK(d <= 1e-4 && moved > 0.05, "collapse differs by %g (adapter moves %g)", d, moved);
    }
    free(l0), free(l1), free(l2), free(tok);
    speck_lora_free(c);
    speck_lora_free(a);
    speck_model_free(m);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: test_adapt_init MODELS_DIR WORK_DIR\n");
        return 2;
    }
    char base[1024];
    snprintf(base, sizeof base, "%s/default.gguf", argv[1]);
    snprintf(test_work, sizeof test_work, "%s", argv[2]);
    mkdir(test_work, 0755);
    if (!test_file_exists(base)) {
        test_missing(base, "the default models ship in models/");
        return test_summary();
    }
    speck_set_threads(2);
    test_corda_step0(base);
    test_block_collapse(base);
    return test_summary();
}
