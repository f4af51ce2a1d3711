// N:M sparse training (SR-STE, speck_train_set_nm): after every optimizer step each masked
// matrix's mask keeps exactly N of every M inputs — the N largest |w| of the dense weights when
// the step recomputed it, unchanged between recomputations (--nm-every) — the passes read the
// dense weights times the mask, and exports hold the masked weights (f32, f16, and S24_Q8 within
// its 8-bit rounding). Refusals: N >= M, M > 64, a period < 1, a negative lambda, rows not a
// multiple of M (naming the tensor), S24_Q8 without 2:4. The gradients and updates themselves
// are checked against torch in tests/reference/srste_ref.py.
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "kernels/kernels.h"
#include "speck.h"
#include "test_util.h"

static speck_train_config small_config(int n_ff) {
    return (speck_train_config){.n_vocab = 64, .n_ctx = 16, .n_embd = 32, .n_layer = 2,
                                .n_head = 4, .n_head_kv = 2, .n_ff = n_ff, .norm_eps = 1e-5f,
                                .rope_freq_base = 10000.0f, .tied_output = false};
}

static bool is_masked_name(const char *name) {
    return !strncmp(name, "blk.", 4) && !strstr(name, "norm");
}

// Every group of m in mask keeps exactly n, and they are the n largest |w| (ties: lower
// position) of w when `fresh`; returns the number of bad groups.
static int64_t bad_groups(const uint8_t *mask, const float *w, int64_t len, int n, int m,
                          bool fresh) {
    int64_t bad = 0;
    for (int64_t g = 0; g < len; g += m) {
        int kept = 0;
        for (int j = 0; j < m; j++) kept += mask[g + j] == 1;
        bool ok = kept == n;
        // kept j beats every pruned k: |w_j| > |w_k|, or equal with j before k
        for (int j = 0; ok && fresh && j < m; j++)
            for (int k = 0; ok && k < m; k++)
                if (mask[g + j] && !mask[g + k])
                    ok = fabsf(w[g + j]) > fabsf(w[g + k]) ||
                         (fabsf(w[g + j]) == fabsf(w[g + k]) && j < k);
        bad += !ok;
    }
    return bad;
}

static void test_masks_every_step(int n, int m, int every) {
    speck_train_config c = small_config(64);
    speck_train_model *tm = speck_train_model_new(&c, 11);
    speck_nm_params p = {n, m, every, 1e-2f};
    CHECK(speck_train_set_nm(tm, &p) == 0, "set_nm %d:%d: %s", n, m, speck_last_error());
    speck_adamw_params o = speck_adamw_default();
    o.lr = 5e-2f, o.total_steps = 8; // large steps: the masks change from step to step
    const int B = 2, T = 8, nt = speck_train_n_tensors(tm);
    int32_t in[16], tg[16];
    uint8_t **prev = calloc((size_t)nt, sizeof *prev);
    int64_t n_masked = 0, changed = 0;
    for (int step = 0; step < 8; step++) {
        for (int i = 0; i < B * T; i++) in[i] = (i * 7 + step * 3) % 64, tg[i] = (i * 5 + 1) % 64;
        speck_train_zero_grad(tm);
        float loss;
        CHECK(speck_train_step(tm, in, tg, B, T, 1.0f, &loss) == 0, "step");
        CHECK(speck_adamw_step(tm, &o, step, NULL) == 0, "adamw");
        // The mask the next step reads: recomputed from the dense weights after steps
        // every-1, 2 every-1, ...; else the previous one.
        const bool fresh = (step + 1) % every == 0;
        for (int i = 0; i < nt; i++) {
            const char *name = speck_train_tensor_name(tm, i);
            const uint8_t *mk = speck_train_nm_mask(tm, i);
            const int64_t len = speck_train_tensor_numel(tm, i);
            CHECK(!mk == !is_masked_name(name), "%s masked: %d", name, mk != NULL);
            if (!mk) continue;
            if (step == 0) n_masked += len;
            const float *w = speck_train_tensor(tm, i, false);
            int64_t bad = bad_groups(mk, w, len, n, m, fresh);
            CHECK(bad == 0, "%d:%d every %d, after step %d: %s has %lld groups that are not the "
                            "%d largest",
                  n, m, every, step, name, (long long)bad, n);
            if (!prev[i]) prev[i] = malloc((size_t)len);
            else if (!fresh) CHECK(!memcmp(prev[i], mk, (size_t)len), "%s changed mid-period", name);
            else for (int64_t j = 0; j < len; j++) changed += prev[i][j] != mk[j];
            memcpy(prev[i], mk, (size_t)len);
        }
    }
    CHECK(n_masked == 2 * (4 * 32 * 32 + 3 * 32 * 64) - 2 * 2 * 16 * 32,
          "masked elements %lld (q, o, gate, up, down full; k, v half)", (long long)n_masked);
    CHECK(changed > 0, "%d:%d every %d: no mask entry changed in 8 steps", n, m, every);
    printf("%d:%d every %d: %lld mask entries changed at recomputations\n", n, m, every,
           (long long)changed);

    // Exports: the masked weights, the keys speck prune writes.
    char path[1200];
    snprintf(path, sizeof path, "%s/nm-%d-%d.gguf", test_work, n, m);
    CHECK(speck_train_export(tm, NULL, SPECK_TYPE_F32, "t", path) == 0, "export: %s",
          speck_last_error());
    speck_gguf *g = speck_gguf_open(path);
    CHECK(g != NULL, "open export");
    for (int i = 0; g && i < nt; i++) {
        const uint8_t *mk = speck_train_nm_mask(tm, i);
        if (!mk) continue;
        const speck_gguf_tensor *t = speck_gguf_find_tensor(g, speck_train_tensor_name(tm, i));
        const float *w = speck_train_tensor(tm, i, false), *e = t ? t->data : NULL;
        int64_t bad = 0;
        for (int64_t j = 0; e && j < t->n_elements; j++) bad += e[j] != (mk[j] ? w[j] : 0.0f);
        CHECK(e && bad == 0, "exported %s: %lld values differ from the masked weights",
              speck_train_tensor_name(tm, i), (long long)bad);
    }
    const speck_gguf_tensor *emb = g ? speck_gguf_find_tensor(g, "token_embd.weight") : NULL;
    CHECK(emb && !memcmp(emb->data, speck_train_tensor(tm, 0, false), 64 * 32 * sizeof(float)),
          "the embedding is exported dense");
    speck_gguf_close(g);
    for (int i = 0; i < nt; i++) free(prev[i]);
    free(prev);
    speck_train_model_free(tm);
}

// 2:4 in S24_Q8 (masked matrices; the others f16): the pattern exactly, values within Q8_0's
// rounding: half a step d = max|x|/127, plus up to 127 |q| x d's fp16 rounding (2^-11 relative):
// 0.5 d + 0.062 d, so 0.6 d.
static void test_s24_export(void) {
    speck_train_config c = small_config(64);
    speck_train_model *tm = speck_train_model_new(&c, 5);
    char path[1200];
    snprintf(path, sizeof path, "%s/s24.gguf", test_work);
    CHECK(speck_train_export(tm, NULL, SPECK_TYPE_S24_Q8, "t", path) != 0 &&
              strstr(speck_last_error(), "2:4"),
          "S24_Q8 from a dense model refused: %s", speck_last_error());
    speck_nm_params p14 = {1, 4, 1, 0};
    CHECK(speck_train_set_nm(tm, &p14) == 0, "1:4");
    CHECK(speck_train_export(tm, NULL, SPECK_TYPE_S24_Q8, "t", path) != 0,
          "S24_Q8 from 1:4 refused");
    speck_nm_params p = {2, 4, 1, 2e-4f};
    CHECK(speck_train_set_nm(tm, &p) == 0, "2:4");
    CHECK(speck_train_export(tm, NULL, SPECK_TYPE_S24_Q8, "t", path) == 0, "export s24: %s",
          speck_last_error());
    speck_gguf *g = speck_gguf_open(path);
    CHECK(g != NULL, "open");
    int n_s24 = 0;
    for (int i = 0; g && i < speck_train_n_tensors(tm); i++) {
        const char *name = speck_train_tensor_name(tm, i);
        const speck_gguf_tensor *t = speck_gguf_find_tensor(g, name);
        const uint8_t *mk = speck_train_nm_mask(tm, i);
        if (!t || !mk) {
            CHECK(t && (t->type == SPECK_TYPE_F16 || t->type == SPECK_TYPE_F32), "%s dense",
                  name);
            continue;
        }
        CHECK(t->type == SPECK_TYPE_S24_Q8, "%s type %d", name, t->type);
        n_s24++;
        const int64_t cols = t->ne[0], rows = t->n_elements / cols;
        const float *w = speck_train_tensor(tm, i, false);
        float *row = malloc((size_t)cols * sizeof *row);
        const size_t rs = speck_type_row_size(SPECK_TYPE_S24_Q8, cols);
        int64_t bad = 0;
        for (int64_t r = 0; r < rows; r++) {
            speck_dequantize_row(SPECK_TYPE_S24_Q8, (const uint8_t *)t->data + rs * r, row, cols);
            for (int64_t b = 0; b < cols; b += 32) {
                float amax = 0;
                for (int j = 0; j < 32; j++)
                    if (mk[r * cols + b + j]) amax = fmaxf(amax, fabsf(w[r * cols + b + j]));
                for (int j = 0; j < 32; j++) {
                    const int64_t k = r * cols + b + j;
                    const float want = mk[k] ? w[k] : 0.0f;
                    bad += mk[k] ? fabsf(row[b + j] - want) > amax / 127 * 0.6f + 1e-7f
                                 : row[b + j] != 0.0f;
                }
            }
        }
        CHECK(bad == 0, "%s: %lld S24_Q8 values off the masked weights", name, (long long)bad);
        free(row);
    }
    CHECK(n_s24 == 14, "%d S24_Q8 matrices (7 per layer)", n_s24);
    speck_gguf_close(g);
    speck_train_model_free(tm);
}

static void expect_refused(speck_train_model *tm, speck_nm_params p, const char *needle) {
    int err = speck_train_set_nm(tm, &p);
    CHECK(err == SPECK_ERR_ARG && strstr(speck_last_error(), needle),
          "%d:%d every %d lambda %g: want an error naming '%s', got %d '%s'", p.n, p.m, p.every,
          (double)p.lambda, needle, err, speck_last_error());
    CHECK(speck_train_nm(tm).m == 0, "a refused N:M leaves training dense");
}

static void test_refusals(void) {
    speck_train_config c = small_config(64);
    speck_train_model *tm = speck_train_model_new(&c, 3);
    expect_refused(tm, (speck_nm_params){4, 4, 1, 0}, "1 <= N < M");
    expect_refused(tm, (speck_nm_params){0, 4, 1, 0}, "1 <= N < M");
    expect_refused(tm, (speck_nm_params){2, 128, 1, 0}, "M <= 64");
    expect_refused(tm, (speck_nm_params){2, 3, 1, 0}, "not a multiple of M = 3");
    expect_refused(tm, (speck_nm_params){2, 4, 0, 0}, "period");
    expect_refused(tm, (speck_nm_params){2, 4, 1, -1}, "lambda");
    speck_train_model_free(tm);
    // n_ff 30: ffn_down's rows have 30 inputs
    c = small_config(30);
    tm = speck_train_model_new(&c, 3);
    expect_refused(tm, (speck_nm_params){2, 4, 1, 0}, "blk.0.ffn_down.weight has rows of 30");
    speck_train_model_free(tm);
}

int main(int argc, char **argv) {
    snprintf(test_work, sizeof test_work, "%s", argc > 1 ? argv[1] : "/tmp/speck-test-srste");
    mkdir(test_work, 0755);
    speck_set_threads(2);
    test_masks_every_step(2, 4, 1);
    test_masks_every_step(2, 4, 3);
    test_masks_every_step(1, 4, 1);
    test_masks_every_step(4, 8, 1);
    test_s24_export();
    test_refusals();
    return test_summary();
}
