// Training tests (the PyTorch comparison of gradients and AdamW is tests/reference/train_ref.py):
// finite differences, learning a synthetic corpus, reproducibility and resume, data/tokenizer
// training, bad input, and checkpoints killed mid-write.
//   test_train WORKDIR
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "speck.h"
#include "test_util.h"

static char g_dir[1024];

static const char *wpath(const char *name) {
    static char buf[8][1200];
    static int k;
    k = (k + 1) % 8;
    snprintf(buf[k], sizeof buf[k], "%s/%s", g_dir, name);
    return buf[k];
}

static speck_train_config tiny_cfg(int V, bool tied) {
    speck_train_config c = {.n_vocab = V, .n_ctx = 32, .n_embd = 16, .n_layer = 2, .n_head = 4,
                            .n_head_kv = 2, .n_ff = 40, .norm_eps = 1e-5f,
                            .rope_freq_base = 10000.0f, .tied_output = tied};
    return c;
}

static void random_tokens(int32_t *t, int n, int V, unsigned seed) {
    for (int i = 0; i < n; i++) {
        seed = seed * 1103515245u + 12345u;
        t[i] = (int32_t)((seed >> 8) % (unsigned)V);
    }
}

// Central differences of the loss on the largest-gradient elements of several tensors; masked:
// every third target -1 (fine-tuning's prompt mask, `speck finetune --full`).
// Mean negative log-likelihood of targets tg under n rows of logits (n, V), in double.
static double mean_nll(const float *logits, const int32_t *tg, int n, int V) {
    double nll = 0;
    for (int i = 0; i < n; i++) {
        const float *l = logits + (size_t)i * V;
        float mx = l[0];
        for (int j = 1; j < V; j++) mx = fmaxf(mx, l[j]);
        double s = 0;
        for (int j = 0; j < V; j++) s += exp(l[j] - mx);
        nll += log(s) + mx - l[tg[i]];
    }
    return nll / n;
}

static void test_finite_differences(bool tied, bool masked) {
    speck_train_config c = tiny_cfg(48, tied);
    speck_train_model *tm = speck_train_model_new(&c, 5);
    // Larger weights than the default init so every path carries signal.
    float *p = speck_train_params(tm);
    for (int64_t i = 0; i < speck_train_n_params(tm); i++) p[i] *= 4.0f;
    enum { B = 2, T = 9 };
    int32_t in[B * T], tg[B * T];
    random_tokens(in, B * T, c.n_vocab, 11);
    random_tokens(tg, B * T, c.n_vocab, 12);
    for (int i = 0; masked && i < B * T; i += 3) tg[i] = -1;
    float loss;
    speck_train_zero_grad(tm);
    CHECK(speck_train_step(tm, in, tg, B, T, 1.0f, &loss) == 0, "step: %s", speck_last_error());
    int checked = 0;
    double worst = 0;
    for (int ti = 0; ti < speck_train_n_tensors(tm); ti++) {
        float *w = speck_train_tensor(tm, ti, false), *g = speck_train_tensor(tm, ti, true);
        int64_t n = speck_train_tensor_numel(tm, ti), best = 0;
        for (int64_t i = 1; i < n; i++)
            if (fabsf(g[i]) > fabsf(g[best])) best = i;
        float h = 2e-3f;
        float w0 = w[best], lp, lm;
        w[best] = w0 + h;
        speck_train_loss(tm, in, tg, B, T, &lp);
        w[best] = w0 - h;
        speck_train_loss(tm, in, tg, B, T, &lm);
        w[best] = w0;
        double fd = ((double)lp - lm) / (2.0 * h), an = g[best];
        double rel = fabs(fd - an) / fmax(fabs(an), 1e-3);
        worst = fmax(worst, rel);
        CHECK(rel < 2e-2, "finite difference %s[%lld]: analytic %.6g numeric %.6g (rel %.2e)",
              speck_train_tensor_name(tm, ti), (long long)best, an, fd, rel);
        checked++;
    }
    printf("finite differences (%s head%s): %d tensors, worst rel err %.2e\n",
           tied ? "tied" : "untied", masked ? ", masked targets" : "", checked, worst);
    if (masked) {
        // The loss is the mean over unmasked positions: row 1 masked whole = row 0 alone.
        int32_t tg2[B * T];
        memcpy(tg2, tg, sizeof tg2);
        for (int i = T; i < B * T; i++) tg2[i] = -1;
        float l2, l0;
        CHECK(speck_train_loss(tm, in, tg2, B, T, &l2) == 0 &&
                  speck_train_loss(tm, in, tg, 1, T, &l0) == 0 && fabsf(l2 - l0) <= 1e-6f * l0,
              "masked row: loss %.7g vs the row alone %.7g", l2, l0);
        // Everything masked: loss 0, no gradient.
        for (int i = 0; i < B * T; i++) tg2[i] = -1;
        speck_train_zero_grad(tm);
        CHECK(speck_train_step(tm, in, tg2, B, T, 1.0f, &l2) == 0 && l2 == 0 &&
                  speck_train_grad_norm(tm) == 0,
              "all masked: loss %g, grad norm %g", l2, speck_train_grad_norm(tm));
    }
    speck_train_model_free(tm);
}

// A synthetic corpus: each token determines the next (t -> 5t + 3 mod V, with restarts), so a
// model can drive the loss from ln V toward 0.
static void synthetic_corpus(speck_token_data *d, int V, int n) {
    memset(d, 0, sizeof *d);
    d->train = malloc((size_t)n * sizeof(int32_t));
    d->n_train = n;
    int32_t t = 1;
    for (int i = 0; i < n; i++) {
        d->train[i] = t;
        t = (i % 97 == 96) ? (int32_t)(i % V) : (5 * t + 3) % V;
    }
}

// Run steps [from, to) of a fixed recipe; losses[step] gets each step's loss.
static int run_steps(speck_train_model *tm, const speck_token_data *d, int from, int to,
                     float *losses) {
    enum { B = 4, T = 16, ACC = 2 };
    speck_adamw_params p = speck_adamw_default();
    p.lr = 1e-2f, p.min_lr = 1e-3f, p.warmup_steps = 10, p.total_steps = 100;
    int32_t in[B * T], tg[B * T];
    for (int s = from; s < to; s++) {
        speck_train_zero_grad(tm);
        float sum = 0, loss;
        for (int k = 0; k < ACC; k++) {
            for (int b = 0; b < B; b++)
                if (speck_token_data_sample(d, 7, s, k, b, T, in + b * T, tg + b * T)) return -1;
            if (speck_train_step(tm, in, tg, B, T, 1.0f / ACC, &loss)) return -1;
            sum += loss;
        }
        losses[s] = sum / ACC;
        if (speck_adamw_step(tm, &p, s, NULL)) return -1;
    }
    return 0;
}

static void test_learning_and_resume(void) {
    const int V = 64;
    speck_train_config c = tiny_cfg(V, false);
    speck_token_data d;
    synthetic_corpus(&d, V, 20000);
    float full[100], part[100];
    speck_train_model *a = speck_train_model_new(&c, 3);
    CHECK(run_steps(a, &d, 0, 100, full) == 0, "100 steps: %s", speck_last_error());
    printf("synthetic corpus: loss %.3f at step 0 -> %.3f at step 99 (ln V = %.3f)\n", full[0],
           full[99], log(V));
    CHECK(full[0] > 3.5f, "initial loss %.3f should be near ln 64", full[0]);
    CHECK(full[99] < 1.0f, "after 100 steps the loss %.3f should be below 1.0", full[99]);

    // Same seed, 40 steps, checkpoint, a fresh model (other seed) resumes: identical curve.
    speck_train_model *b = speck_train_model_new(&c, 3);
    CHECK(run_steps(b, &d, 0, 40, part) == 0, "40 steps");
    speck_train_state st = {40, 7};
    CHECK(speck_train_checkpoint_save(b, &st, NULL, wpath("resume.ckpt")) == 0, "save: %s",
          speck_last_error());
    speck_train_model_free(b);
    speck_train_model *r = speck_train_model_new(&c, 99);
    speck_train_state st2 = {0, 0};
    CHECK(speck_train_checkpoint_load(r, wpath("resume.ckpt"), &st2) == 0, "load: %s",
          speck_last_error());
    CHECK(st2.step == 40 && st2.seed == 7, "state restored: step %lld seed %llu",
          (long long)st2.step, (unsigned long long)st2.seed);
    CHECK(run_steps(r, &d, 40, 100, part) == 0, "resumed steps");
    int same = 0;
    for (int s = 0; s < 100; s++) same += part[s] == full[s];
    CHECK(same == 100, "resumed run reproduces the loss curve bit for bit (%d/100 steps equal)",
          same);
    CHECK(memcmp(speck_train_params(r), speck_train_params(a),
                 (size_t)speck_train_n_params(a) * sizeof(float)) == 0,
          "resumed run ends with identical weights");

    // A checkpoint of another config is refused with a clear message.
    speck_train_config c2 = c;
    c2.n_ff = 48;
    speck_train_model *o = speck_train_model_new(&c2, 1);
    CHECK(speck_train_checkpoint_load(o, wpath("resume.ckpt"), &st2) != 0 &&
              strstr(speck_last_error(), "another config") && strstr(speck_last_error(), "n_ff"),
          "other config: '%s'", speck_last_error());
    speck_train_model_free(o);

    // The exported model runs in the inference engine with the same logits.
    CHECK(speck_train_export(a, NULL, SPECK_TYPE_F32, "t", wpath("export.gguf")) == 0, "export: %s",
          speck_last_error());
    speck_model *m = speck_model_load(wpath("export.gguf"));
    CHECK(m != NULL, "exported model loads: %s", speck_last_error());
    if (m) {
        speck_ctx *cx = speck_ctx_new(m, 32);
        int32_t in[16], tg[16];
        speck_token_data_sample(&d, 1, 0, 0, 0, 16, in, tg);
        float *logits = malloc(16 * V * sizeof(float));
        speck_forward(cx, 16, in, NULL, NULL, NULL, 0, logits);
        const double nll = mean_nll(logits, tg, 16, V);
        float tl;
        speck_train_loss(a, in, tg, 1, 16, &tl);
        CHECK(fabs(nll - tl) < 1e-4, "inference loss %.6f == training loss %.6f", nll, tl);
        free(logits);
        speck_ctx_free(cx);
        speck_model_free(m);
    }
    speck_train_model_free(r);
    speck_train_model_free(a);
    speck_token_data_free(&d);
}

// Mixture of experts: finite differences of the objective CE + coef·aux (the top-k choice is
// a constant, so steps small enough to keep every token's choice give the analytic gradient),
// learning, the exported GGUF's inference loss, checkpoint round trip, refused configurations.
static double moe_objective(speck_train_model *tm, const int32_t *in, const int32_t *tg, int B,
                            int T, float coef) {
    float l;
    CHECK(speck_train_loss(tm, in, tg, B, T, &l) == 0, "moe loss: %s", speck_last_error());
    return l + coef * speck_train_aux_loss(tm);
}

static void test_moe(bool norm, int k) {
    const int V = 48;
    speck_train_config c = tiny_cfg(V, false);
    c.n_ff = 24, c.n_expert = 4, c.n_expert_used = k, c.moe_norm = norm;
    speck_train_model *tm = speck_train_model_new(&c, 9);
    CHECK(tm != NULL, "moe model: %s", speck_last_error());
    if (!tm) return;
    float *p = speck_train_params(tm);
    for (int64_t i = 0; i < speck_train_n_params(tm); i++) p[i] *= 4.0f;
    const float coef = 0.5f;
    CHECK(speck_train_set_aux_coef(tm, coef) == 0 && speck_train_set_aux_coef(tm, -1) != 0,
          "aux coefficient");
    enum { B = 2, T = 9 };
    int32_t in[B * T], tg[B * T];
    random_tokens(in, B * T, V, 21);
    random_tokens(tg, B * T, V, 22);
    float loss;
    speck_train_zero_grad(tm);
    CHECK(speck_train_step(tm, in, tg, B, T, 1.0f, &loss) == 0, "step: %s", speck_last_error());
    const double aux = speck_train_aux_loss(tm);
    CHECK(aux >= 1.0 - 1e-6 && aux <= 4.0 / k + 1e-6, "aux loss %g in [1, X/k]", aux);
    double worst = 0;
    for (int ti = 0; ti < speck_train_n_tensors(tm); ti++) {
        float *w = speck_train_tensor(tm, ti, false), *g = speck_train_tensor(tm, ti, true);
        int64_t n = speck_train_tensor_numel(tm, ti), best = 0;
        for (int64_t i = 1; i < n; i++)
            if (fabsf(g[i]) > fabsf(g[best])) best = i;
        const float h = 1e-3f, w0 = w[best];
        w[best] = w0 + h;
        double lp = moe_objective(tm, in, tg, B, T, coef);
        w[best] = w0 - h;
        double lm = moe_objective(tm, in, tg, B, T, coef);
        w[best] = w0;
        double fd = (lp - lm) / (2.0 * h), an = g[best];
        double rel = fabs(fd - an) / fmax(fabs(an), 1e-3);
        worst = fmax(worst, rel);
        CHECK(rel < 3e-2, "moe finite difference %s[%lld]: analytic %.6g numeric %.6g (rel %.2e)",
              speck_train_tensor_name(tm, ti), (long long)best, an, fd, rel);
    }
    printf("moe finite differences (4 experts, top %d, %s): worst rel err %.2e, aux %.4f\n", k,
           norm ? "renormalised" : "not renormalised", worst, aux);

    // Learns the synthetic corpus; the router spreads the tokens (aux well under collapse).
    speck_token_data d;
    synthetic_corpus(&d, V, 4000);
    float losses[60];
    CHECK(run_steps(tm, &d, 0, 60, losses) == 0, "moe training: %s", speck_last_error());
    CHECK(losses[59] < losses[0] - 0.5f, "moe loss falls: %.3f -> %.3f", losses[0], losses[59]);
    const double aux_end = speck_train_aux_loss(tm);
    CHECK(aux_end < 0.5 * (1.0 + 4.0 / k), "routing not collapsed: aux %.3f", aux_end);

    // Export (3-D expert tensors, llama.cpp's names): the inference engine's loss is training's.
    CHECK(speck_train_export(tm, NULL, SPECK_TYPE_F32, "moe", wpath("moe.gguf")) == 0,
          "moe export: %s", speck_last_error());
    speck_model *m = speck_model_load(wpath("moe.gguf"));
    CHECK(m != NULL, "exported moe model loads: %s", speck_last_error());
    if (m) {
        speck_ctx *cx = speck_ctx_new(m, 32);
        int32_t x[16], y[16];
        speck_token_data_sample(&d, 3, 0, 0, 0, 16, x, y);
        float *logits = malloc(16 * V * sizeof(float));
        CHECK(speck_forward(cx, 16, x, NULL, NULL, NULL, 0, logits) == 0, "moe forward: %s",
              speck_last_error());
        const double nll = mean_nll(logits, y, 16, V);
        float tl;
        speck_train_loss(tm, x, y, 1, 16, &tl);
        CHECK(fabs(nll - tl) < 1e-4, "moe inference loss %.6f == training loss %.6f", nll, tl);
        const int64_t *cnt = speck_ctx_expert_counts(cx);
        int64_t total = 0;
        for (int e = 0; cnt && e < 2 * 4; e++) total += cnt[e];
        CHECK(total == 2 * 16 * k, "expert counts: %lld token-choices, want %d", (long long)total,
              2 * 16 * k);
        free(logits);
        speck_ctx_free(cx);
        speck_model_free(m);
    }
    // Loaded back for training: the same config and the same loss.
    speck_train_model *r = speck_train_model_load(wpath("moe.gguf"));
    CHECK(r != NULL, "moe reload: %s", speck_last_error());
    if (r) {
        const speck_train_config *rc = speck_train_model_config(r);
        float l1, l2;
        speck_train_loss(tm, in, tg, B, T, &l1);
        speck_train_loss(r, in, tg, B, T, &l2);
        CHECK(rc->n_expert == 4 && rc->n_expert_used == k && rc->moe_norm == norm && l1 == l2,
              "moe reload: %d experts top %d norm %d, loss %.7g vs %.7g", rc->n_expert,
              rc->n_expert_used, rc->moe_norm, l1, l2);
        speck_train_model_free(r);
    }
    // A checkpoint of a dense model is refused for it.
    speck_train_state st = {3, 1};
    CHECK(speck_train_checkpoint_save(tm, &st, NULL, wpath("moe.ckpt")) == 0, "moe ckpt: %s",
          speck_last_error());
    speck_train_config dc = c;
    dc.n_expert = dc.n_expert_used = 0;
    speck_train_model *dense = speck_train_model_new(&dc, 1);
    CHECK(speck_train_checkpoint_load(dense, wpath("moe.ckpt"), &st) != 0 &&
              strstr(speck_last_error(), "n_expert"),
          "dense run refuses a moe checkpoint: '%s'", speck_last_error());
    speck_train_model_free(dense);
    speck_token_data_free(&d);
    speck_train_model_free(tm);
}

static void test_moe_refused(void) {
    speck_train_config c = tiny_cfg(48, false);
    c.n_expert = 4, c.n_expert_used = 5;
    CHECK(speck_train_model_new(&c, 1) == NULL && strstr(speck_last_error(), "5 used"),
          "top-k > experts refused: '%s'", speck_last_error());
    c.n_expert_used = 0;
    CHECK(speck_train_model_new(&c, 1) == NULL && strstr(speck_last_error(), "experts"),
          "top-0 refused: '%s'", speck_last_error());
    // The other MoE families load with their own layouts (test_train_arch.c trains them).
    const char *names[] = {"tiny-qwen2moe", "tiny-qwen3moe", "tiny-olmoe"};
    const int shexp[] = {96, 0, 0};
    for (int i = 0; i < 3; i++) {
        CHECK(speck_init_model(speck_preset_find(names[i]), SPECK_TYPE_F32, 1, wpath("r.gguf")) ==
                  0,
              "init %s: %s", names[i], speck_last_error());
        speck_train_model *r = speck_train_model_load(wpath("r.gguf"));
        CHECK(r && speck_train_model_config(r)->n_expert == 8 &&
                  speck_train_model_config(r)->n_ff == 64 &&
                  speck_train_model_config(r)->n_ff_shexp == shexp[i],
              "%s loads for training (8 experts of 64, shared %d): %s", names[i], shexp[i],
              r ? "other shapes" : speck_last_error());
        speck_train_model_free(r);
    }
    CHECK(speck_init_model(speck_preset_find("tiny-mixtral"), SPECK_TYPE_Q8_0, 1,
                           wpath("r.gguf")) == 0,
          "init tiny-mixtral");
    speck_train_model *tm = speck_train_model_load(wpath("r.gguf"));
    CHECK(tm && speck_train_model_config(tm)->n_expert == 4, "tiny-mixtral (q8_0) loads: %s",
          speck_last_error());
    speck_train_model_free(tm);
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

static void test_tokenizer_and_data(void) {
    const char *corpus = wpath("corpus");
    mkdir(corpus, 0755);
    char sub[1200];
    snprintf(sub, sizeof sub, "%s/pkg", corpus);
    mkdir(sub, 0755);
    const char *src = "def add(a, b):\n    return a + b\n\nclass Point:\n    def __init__(self, x, "
                      "y):\n        self.x = x\n        self.y = y\n";
    char name[1300];
    for (int i = 0; i < 30; i++) {
        snprintf(name, sizeof name, "%s/%s/mod%02d.py", corpus, i % 2 ? "pkg" : ".", i);
        write_text(name, src);
    }
    snprintf(name, sizeof name, "%s/notes.txt", corpus);
    write_text(name, "not python");

    speck_bpe_trainer *bt = speck_bpe_trainer_new();
    for (int i = 0; i < 20; i++) speck_bpe_trainer_add(bt, src, strlen(src));
    const char *sp[] = {"<|endoftext|>"};
    speck_bpe_train_params bp = {280, sp, 1, 2};
    CHECK(speck_bpe_trainer_save(bt, &bp, wpath("vocab.gguf")) == 0, "bpe save: %s",
          speck_last_error());
    speck_bpe_trainer_free(bt);
    speck_vocab *v = speck_vocab_load(wpath("vocab.gguf"));
    CHECK(v != NULL, "trained vocabulary loads: %s", speck_last_error());
    if (!v) return;
    CHECK(speck_vocab_n_tokens(v) == 280, "vocab size %d", speck_vocab_n_tokens(v));
    int32_t ids[512];
    int64_t n = speck_tokenize(v, src, strlen(src), false, false, ids, 512);
    char back[512];
    int64_t nb = speck_detokenize(v, ids, n, back, sizeof back);
    CHECK(nb == (int64_t)strlen(src) && !memcmp(back, src, strlen(src)), "round trip");
    CHECK(n > 0 && n < (int64_t)strlen(src) * 2 / 3, "merges compress: %lld tokens for %zu bytes",
          (long long)n, strlen(src));
    CHECK(speck_vocab_eos(v) == 279, "eos is the special token");

    speck_token_data d;
    CHECK(speck_token_data_build(corpus, "*.py", v, 0.2, wpath("cache.tok"), &d) == 0, "data: %s",
          speck_last_error());
    CHECK(d.n_files_train + d.n_files_val == 30 && d.n_files_val > 0 && d.n_files_train > 0,
          "split by file: %d train, %d val", d.n_files_train, d.n_files_val);
    CHECK(d.n_train == (int64_t)d.n_files_train * (n + 1), "every file + eos tokenized");
    CHECK(!d.from_cache, "first build tokenizes");
    speck_token_data d2;
    CHECK(speck_token_data_build(corpus, "*.py", v, 0.2, wpath("cache.tok"), &d2) == 0 &&
              d2.from_cache && d2.n_train == d.n_train &&
              !memcmp(d2.train, d.train, (size_t)d.n_train * 4),
          "second build reads the cache");
    speck_token_data_free(&d2);
    // A damaged cache (its key still matching) is not trusted: one holding an id outside the
    // vocabulary, or claiming more tokens than it holds (2^39: the old reader allocated that),
    // is rebuilt from the corpus.
    char dir[1200], cache[1200]; // wpath's buffers rotate: keep these two
    snprintf(dir, sizeof dir, "%s", corpus);
    snprintf(cache, sizeof cache, "%s", wpath("cache.tok"));
    for (int damage = 0; damage < 2; damage++) {
        FILE *f = fopen(cache, "r+b");
        const int32_t bad_id = 280;
        const uint64_t huge = 1ull << 39;
        if (f) {
            if (damage == 0) fseek(f, 40, SEEK_SET), fwrite(&bad_id, 4, 1, f);
            if (damage == 1) fseek(f, 16, SEEK_SET), fwrite(&huge, 8, 1, f);
            fclose(f);
        }
        CHECK(speck_token_data_build(dir, "*.py", v, 0.2, cache, &d2) == 0 && !d2.from_cache &&
                  d2.n_train == d.n_train && !memcmp(d2.train, d.train, (size_t)d.n_train * 4),
              "damaged cache (%s) rebuilt: %s", damage ? "token count" : "token id",
              speck_last_error());
        speck_token_data_free(&d2);
    }
    speck_token_data_free(&d);

    // bad input
    const char *empty = wpath("empty");
    mkdir(empty, 0755);
    snprintf(name, sizeof name, "%s/blank.py", empty);
    unlink(name);
    CHECK(speck_token_data_build(empty, "*.py", v, 0.1, NULL, &d) != 0 &&
              strstr(speck_last_error(), "no files"),
          "empty corpus: '%s'", speck_last_error());
    write_text(name, "");
    CHECK(speck_token_data_build(empty, "*.py", v, 0.1, NULL, &d) != 0 &&
              strstr(speck_last_error(), "no tokens"),
          "corpus of empty files: '%s'", speck_last_error());
    CHECK(speck_token_data_build(wpath("does-not-exist"), "*", v, 0.1, NULL, &d) != 0 &&
              strstr(speck_last_error(), "does-not-exist"),
          "unreadable corpus: '%s'", speck_last_error());
    CHECK(speck_vocab_load(wpath("does-not-exist.gguf")) == NULL, "unreadable vocabulary");
    // vocabulary/model mismatch: a 64-token model cannot take a 280-token vocabulary
    speck_train_config c = tiny_cfg(64, true);
    speck_train_model *tm = speck_train_model_new(&c, 1);
    CHECK(speck_train_export(tm, wpath("vocab.gguf"), SPECK_TYPE_F32, "x", wpath("mm.gguf")) != 0 &&
              strstr(speck_last_error(), "280 tokens"),
          "vocab mismatch: '%s'", speck_last_error());
    CHECK(access(wpath("mm.gguf"), F_OK) != 0, "no partial output on error");
    int32_t bad_in[4] = {1, 2, 280, 4}, tg[4] = {0};
    float loss;
    CHECK(speck_train_step(tm, bad_in, tg, 1, 4, 1.0f, &loss) != 0 &&
              strstr(speck_last_error(), "out of range"),
          "token id beyond the model's vocabulary: '%s'", speck_last_error());
    CHECK(speck_train_checkpoint_load(tm, wpath("does-not-exist.ckpt"), &(speck_train_state){0}) !=
              0,
          "missing checkpoint");
    speck_train_model_free(tm);
    speck_vocab_free(v);
}

// A child rewrites a checkpoint in a loop and is killed with SIGKILL at random moments; the
// checkpoint on disk must always load and hold one of the states written.
static void test_kill_during_write(void) {
    speck_train_config c = {.n_vocab = 512, .n_ctx = 64, .n_embd = 128, .n_layer = 4,
                            .n_head = 4, .n_head_kv = 4, .n_ff = 384, .norm_eps = 1e-5f,
                            .rope_freq_base = 10000.0f};
    speck_train_model *tm = speck_train_model_new(&c, 1);
    const char *path = wpath("kill.ckpt");
    speck_train_state st = {1, 1};
    CHECK(speck_train_checkpoint_save(tm, &st, NULL, path) == 0, "first checkpoint");
    int ok = 0;
    for (int round = 0; round < 3; round++) {
        pid_t pid = fork();
        if (pid == 0) {
            for (int64_t s = 2;; s++) {
                speck_train_state cs = {s, 1};
                speck_train_checkpoint_save(tm, &cs, NULL, path);
            }
        }
        struct timespec ts = {0, 30000000L + 17000000L * round};
        nanosleep(&ts, NULL);
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        speck_train_model *r = speck_train_model_new(&c, 2);
        speck_train_state got = {0, 0};
        if (speck_train_checkpoint_load(r, path, &got) == 0 && got.step >= 1 &&
            !memcmp(speck_train_params(r), speck_train_params(tm),
                    (size_t)speck_train_n_params(tm) * 4))
            ok++;
        else
            printf("round %d: %s\n", round, speck_last_error());
        speck_train_model_free(r);
    }
    CHECK(ok == 3, "checkpoint intact after kill -9 during writes (%d/3)", ok);
    speck_train_model_free(tm);
}

int main(int argc, char **argv) {
    snprintf(g_dir, sizeof g_dir, "%s", argc > 1 ? argv[1] : "/tmp/speck-test-train");
    mkdir(g_dir, 0755);
    speck_set_threads(2);
    test_finite_differences(false, false);
    test_finite_differences(true, false);
    test_finite_differences(false, true);
    test_learning_and_resume();
    test_moe(true, 2);
    test_moe(false, 3);
    test_moe_refused();
    test_tokenizer_and_data();
    test_kill_during_write();
    return test_summary();
}
