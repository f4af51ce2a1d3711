// Sparse fine-tuning (src/adapt/sparse_ft.c) and delta composition (delta_sum.c) on a tiny
// random llama: SpIEL keeps its budget through drop/regrow and W = W0 + δ exactly where trained
// (the base elsewhere); S2FT trains whole columns of attn_output (head blocks) and ffn_down;
// two deltas with their own masks applied together (`delta apply BASE D1 D2`) give base + δ1 + δ2
// at every element (the masks overlap, so the sum is exercised); a delta loaded with the model
// (speck_model_load_deltas, `--delta`) gives bit-identical logits to the model merged by
// `delta apply`; bad input (density outside (0, 1], an unknown method, a delta for another
// base, deltas for different bases added) fails with an error naming it and writes nothing.
//
// usage: test_sparse_ft WORK_DIR
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "adapt/adapt_internal.h"
#include "train/train_internal.h"
#include "speck.h"
#include "test_util.h"

#define CK(cond) CHECK(cond, "%s", #cond)

static char g_dir[512];
static const char *path(const char *name) {
    static char buf[64][640]; // a ring: every name below stays valid
    static int k;
    k = (k + 1) % 64;
    snprintf(buf[k], sizeof buf[k], "%s/%s", g_dir, name);
    return buf[k];
}

static speck_train_config tiny(void) {
    return (speck_train_config){.n_vocab = 64, .n_ctx = 32, .n_embd = 32, .n_layer = 2,
                                .n_head = 4, .n_head_kv = 2, .n_ff = 48, .norm_eps = 1e-5f,
                                .rope_freq_base = 10000.0f};
}

// A base model file from seed.
static int make_base(const char *file, uint64_t seed) {
    speck_train_config c = tiny();
    speck_train_model *tm = speck_train_model_new(&c, seed);
    int rc = !tm || speck_train_export(tm, NULL, SPECK_TYPE_F32, "tiny", file);
    speck_train_model_free(tm);
    return rc;
}

// Train a sparse delta on base for `steps` steps of random tokens (seed), save it to out.
static int train_delta(const char *base, const speck_sparse_params *sp, int steps, uint64_t seed,
                       const char *out, int64_t *k) {
    speck_train_model *tm = speck_train_model_load(base);
    speck_sparse_ft *s = tm ? speck_sparse_ft_new(tm, sp) : NULL;
    if (!s) {
        fprintf(stderr, "train_delta: %s\n", speck_last_error());
        speck_train_model_free(tm);
        return 1;
    }
    speck_adamw_params p = speck_adamw_default();
    p.lr = 3e-2f, p.min_lr = 3e-3f, p.warmup_steps = 0, p.total_steps = steps, p.weight_decay = 0;
    enum { B = 2, T = 12 };
    int32_t in[B * T], tg[B * T];
    uint64_t x = seed;
    int rc = 0;
    for (int st = 0; st < steps && !rc; st++) {
        for (int j = 0; j < B * T; j++) {
            x = x * 6364136223846793005ULL + 1442695040888963407ULL;
            in[j] = (int32_t)(x >> 33) % 64;
            tg[j] = (in[j] * 7 + 3) % 64; // a learnable map
        }
        float loss;
        speck_train_zero_grad(tm);
        rc = speck_train_step(tm, in, tg, B, T, 1.0f, &loss) ||
             speck_sparse_ft_step(s, &p, st, NULL);
    }
    *k = speck_sparse_ft_n_params(s);
    free(tm->src_path); // the tiny base has no tokenizer to copy into the export
    tm->src_path = NULL;
    // The model as trained: W0 + δ at the trained positions, W0 elsewhere (checked by caller).
    speck_delta *d = rc ? NULL : speck_sparse_ft_delta(s);
    rc = rc || !d || speck_delta_save(d, out, SPECK_TYPE_F32) ||
         speck_train_export(tm, NULL, SPECK_TYPE_F32, "tiny", path("trained.gguf"));
    if (rc) fprintf(stderr, "train_delta: %s\n", speck_last_error());
    speck_delta_free(d);
    speck_sparse_ft_free(s);
    speck_train_model_free(tm);
    return rc;
}

static float *tensor_f32(const char *file, const char *name, int64_t *n) {
    speck_gguf *g = speck_gguf_open(file);
    const speck_gguf_tensor *t = g ? speck_gguf_find_tensor(g, name) : NULL;
    float *x = NULL;
    if (t && t->type == SPECK_TYPE_F32 && (x = malloc((size_t)t->n_elements * 4))) {
        memcpy(x, t->data, (size_t)t->n_elements * 4);
        *n = t->n_elements;
    }
    speck_gguf_close(g);
    return x;
}

static const speck_delta_tensor *find_dt(const speck_delta *d, const char *name) {
    for (int i = 0; i < d->n; i++)
        if (!strcmp(d->t[i].name, name)) return &d->t[i];
    return NULL;
}

// Every matrix of file equals base + the delta tensors' values (each list summed in order).
static int check_sum(const char *file, const char *base, const speck_delta *const *ds, int nd,
                     const char *what) {
    int fails = 0;
    speck_gguf *g = speck_gguf_open(base);
    for (int64_t i = 0; g && i < speck_gguf_n_tensors(g); i++) {
        const char *name = speck_gguf_tensor_at(g, i)->name;
        int64_t n = 0, n2 = 0;
        float *b = tensor_f32(base, name, &n), *f = tensor_f32(file, name, &n2);
        float *want = calloc((size_t)n, 4);
        for (int k = 0; k < nd; k++) {
            const speck_delta_tensor *t = find_dt(ds[k], name);
            for (int64_t j = 0; t && j < t->nnz; j++) want[t->idx[j]] += t->val[j];
        }
        int64_t bad = 0;
        for (int64_t j = 0; b && f && j < n; j++) bad += f[j] != b[j] + want[j];
        if (!b || !f || n != n2 || bad) {
            fprintf(stderr, "FAIL %s: %s: %lld elements differ from base + sum\n", what, name,
                    (long long)bad);
            fails++;
        }
        free(b), free(f), free(want);
    }
    speck_gguf_close(g);
    return fails;
}

static int logits(speck_model *m, float *out) {
    speck_ctx *c = speck_ctx_new(m, 16);
    const int32_t tok[8] = {1, 5, 9, 2, 33, 7, 63, 0};
    int rc = !c || speck_forward(c, 8, tok, NULL, NULL, NULL, 0, out);
    speck_ctx_free(c);
    return rc;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: test_sparse_ft WORK_DIR\n");
        return 2;
    }
    snprintf(g_dir, sizeof g_dir, "%s", argv[1]);
    mkdir(g_dir, 0755);
    speck_set_threads(2);
    int fails = 0;
    const char *base = path("base.gguf"), *other = path("other.gguf");
    CK(make_base(base, 1) == 0 && make_base(other, 2) == 0);

    // ---- SpIEL: budget kept through regrowth; W = W0 + δ at the mask, W0 elsewhere ----
    speck_sparse_params sp = speck_sparse_default();
    sp.density = 0.3, sp.update_every = 2, sp.accum_steps = 2, sp.drop_fraction = 0.5f;
    sp.total_steps = 9, sp.seed = 11;
    int64_t k1 = 0, k2 = 0;
    CK(train_delta(base, &sp, 9, 5, path("d1.gguf"), &k1) == 0);
    speck_delta *d1 = speck_delta_load(path("d1.gguf"));
    CK(d1 != NULL);
    if (!d1) return 1;
    int64_t nnz = 0, nz = 0, grown_seen = 0;
    for (int i = 0; i < d1->n; i++) {
        nnz += d1->t[i].nnz;
        for (int64_t j = 0; j < d1->t[i].nnz; j++) {
            nz += d1->t[i].val[j] == 0;
            if (j) CK(d1->t[i].idx[j] > d1->t[i].idx[j - 1]);
        }
    }
    // The mask moved: positions of the final mask not in the initial (random) one.
    speck_train_model *t0 = speck_train_model_load(base);
    speck_sparse_ft *s0 = t0 ? speck_sparse_ft_new(t0, &sp) : NULL;
    speck_delta *init = s0 ? speck_sparse_ft_delta(s0) : NULL;
    CK(init != NULL && init->n == d1->n);
    for (int i = 0; init && i < d1->n && i < init->n; i++) {
        const speck_delta_tensor *a = &init->t[i], *b = &d1->t[i];
        CK(a->nnz == b->nnz);
        for (int64_t x = 0, y = 0; y < b->nnz;) // b's positions missing from a
            if (x < a->nnz && a->idx[x] < b->idx[y]) x++;
            else grown_seen += !(x < a->nnz && a->idx[x] == b->idx[y]), y++;
    }
    CHECK(grown_seen > nnz / 10, "%lld of %lld positions regrown", (long long)grown_seen,
          (long long)nnz);
    speck_delta_free(init), speck_sparse_ft_free(s0), speck_train_model_free(t0);
    CK(nnz == k1);
    CK(d1->method == SPECK_DELTA_SFT && !strcmp(d1->sft, "spiel") && d1->base_fp != 0);
    const speck_delta *one[1] = {d1};
    fails += check_sum(path("trained.gguf"), base, one, 1, "spiel trained model = W0 + delta");

    // ---- S2FT: whole columns, head blocks in attn_output ----
    speck_sparse_params s2 = speck_sparse_default();
    s2.method = SPECK_SPARSE_S2FT, s2.n_params = 2 * 32 * (8 + 12), s2.seed = 3,
    s2.total_steps = 4;
    CK(train_delta(base, &s2, 4, 6, path("d2.gguf"), &k2) == 0);
    speck_delta *d2 = speck_delta_load(path("d2.gguf"));
    CK(d2 != NULL);
    if (!d2) return 1;
    CK(!strcmp(d2->sft, "s2ft"));
    for (int i = 0; i < d2->n; i++) {
        const speck_delta_tensor *t = &d2->t[i];
        const int64_t cols = t->ne[0], rows = t->ne[1];
        CK(strstr(t->name, "attn_output") || strstr(t->name, "ffn_down"));
        CK(t->nnz % rows == 0);
        uint8_t *col = calloc((size_t)cols, 1);
        for (int64_t j = 0; j < t->nnz; j++) col[t->idx[j] % cols]++;
        int64_t full = 0;
        for (int64_t c = 0; c < cols; c++) {
            CK(col[c] == 0 || col[c] == rows);
            full += col[c] == rows;
        }
        if (strstr(t->name, "attn_output")) // head_dim 8: whole blocks
            for (int64_t h = 0; h < cols / 8; h++)
                for (int e = 1; e < 8; e++) CK(col[h * 8 + e] == col[h * 8]);
        CK(full * rows == t->nnz);
        free(col);
    }
    const speck_delta *two_only[1] = {d2};
    fails += check_sum(path("trained.gguf"), base, two_only, 1, "s2ft trained model = W0 + delta");

    // ---- composition: apply BASE D1 D2 = base + δ1 + δ2; masks overlap ----
    int64_t overlap = 0;
    for (int i = 0; i < d2->n; i++) {
        const speck_delta_tensor *a = find_dt(d1, d2->t[i].name), *b = &d2->t[i];
        for (int64_t x = 0, y = 0; a && x < a->nnz && y < b->nnz;)
            if (a->idx[x] == b->idx[y]) overlap++, x++, y++;
            else if (a->idx[x] < b->idx[y]) x++;
            else y++;
    }
    CK(overlap > 0);
    speck_delta *sum = speck_delta_new("llama");
    CK(sum && speck_delta_add(sum, d1) == 0 && speck_delta_add(sum, d2) == 0);
    CK(speck_delta_apply(base, sum, 1.0f, -1, path("m12.gguf")) == 0);
    const speck_delta *both[2] = {d1, d2};
    fails += check_sum(path("m12.gguf"), base, both, 2, "apply BASE D1 D2");
    // the sum saved as a delta (`delta add`) and applied gives the same file contents
    CK(speck_delta_save(sum, path("sum.gguf"), SPECK_TYPE_F32) == 0);
    speck_delta *sum2 = speck_delta_load(path("sum.gguf"));
    CK(sum2 && !strcmp(sum2->sft, "sum") && sum2->base_fp == d1->base_fp);
    CK(sum2 && speck_delta_apply(base, sum2, 1.0f, -1, path("m12b.gguf")) == 0);
    fails += check_sum(path("m12b.gguf"), base, both, 2, "apply BASE (D1+D2 saved)");

    // ---- --delta at load: bit-identical logits to the merged model; differ from the base ----
    const char *ds[2] = {path("d1.gguf"), path("d2.gguf")};
    speck_model *ml = speck_model_load_deltas(base, ds, 2, 0);
    speck_model *mm = speck_model_load(path("m12.gguf"));
    speck_model *mb = speck_model_load(base);
    CK(ml && mm && mb);
    if (ml && mm && mb) {
        float *a = malloc(8 * 64 * 4), *b = malloc(8 * 64 * 4), *c = malloc(8 * 64 * 4);
        CK(logits(ml, a) == 0 && logits(mm, b) == 0 && logits(mb, c) == 0);
        CK(memcmp(a, b, 8 * 64 * 4) == 0);
        double diff = 0;
        for (int j = 0; j < 8 * 64; j++) diff = fmax(diff, fabs(a[j] - c[j]));
        CK(diff > 1e-4);
        free(a), free(b), free(c);
    }
    speck_model_free(ml), speck_model_free(mm), speck_model_free(mb);

    // ---- bad input ----
    speck_train_model *tm = speck_train_model_load(base);
    CK(tm != NULL);
    const double bad_density[] = {0, -0.1, 1.5, NAN};
    for (int i = 0; i < 4; i++) {
        speck_sparse_params b = speck_sparse_default();
        b.density = bad_density[i];
        speck_sparse_ft *s = speck_sparse_ft_new(tm, &b);
        CK(s == NULL && strstr(speck_last_error(), "density"));
        speck_sparse_ft_free(s);
    }
    speck_sparse_params big = speck_sparse_default();
    big.n_params = (int64_t)1 << 40;
    CK(speck_sparse_ft_new(tm, &big) == NULL && strstr(speck_last_error(), "parameters"));
    speck_train_model_free(tm);
    speck_sparse_method mth;
    CK(speck_sparse_parse_method("lora", &mth) != 0 && strstr(speck_last_error(), "'lora'"));
    // a delta for another base (same architecture and shapes): refused, nothing written
    unlink(path("wrong.gguf"));
    CK(speck_delta_apply(other, d1, 1.0f, -1, path("wrong.gguf")) != 0 &&
          strstr(speck_last_error(), "another base"));
    CK(access(path("wrong.gguf"), F_OK) != 0);
    CK(speck_model_load_deltas(other, ds, 1, 0) == NULL &&
          strstr(speck_last_error(), "another base"));
    // deltas trained on different bases cannot be added
    int64_t k3 = 0;
    CK(train_delta(other, &sp, 2, 7, path("d3.gguf"), &k3) == 0);
    speck_delta *d3 = speck_delta_load(path("d3.gguf"));
    speck_delta *acc = speck_delta_new("llama");
    CK(d3 && acc && speck_delta_add(acc, d1) == 0);
    CK(d3 && speck_delta_add(acc, d3) != 0 && strstr(speck_last_error(), "different base"));
    speck_delta_free(acc), speck_delta_free(d3);
    speck_delta_free(sum), speck_delta_free(sum2), speck_delta_free(d1), speck_delta_free(d2);
    CHECK(fails == 0, "%d tensor comparisons failed", fails);
    return test_summary();
}
