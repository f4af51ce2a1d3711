// Training the layers beyond Llama's (docs/training.md, "Architectures"; the PyTorch comparison
// is tests/reference/train_ref.py): for qwen2 (q/k/v biases), qwen3 (RMSNorm of each q/k head,
// head_dim != n_embd / n_head), olmoe (RMSNorm of the whole q/k rows, experts not renormalised),
// qwen3moe (per-head norms, experts renormalised) and qwen2moe (biases, experts and the shared
// expert behind its sigmoid gate): central differences of every tensor's largest gradient
// element, the exported model's inference loss against training's, a reload for training with
// the same loss, and the families that stay refused.
//   test_train_arch WORKDIR
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "speck.h"
#include "test_util.h"

static char g_dir[1024];

static const char *wpath(const char *name) {
    static char buf[4][1200];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", g_dir, name);
    return buf[k];
}

static speck_train_config arch_cfg(const char *arch) {
    speck_train_config c = {.n_vocab = 48, .n_ctx = 32, .n_embd = 16, .n_layer = 2, .n_head = 4,
                            .n_head_kv = 2, .n_ff = 40, .norm_eps = 1e-5f,
                            .rope_freq_base = 10000.0f};
    snprintf(c.arch, sizeof c.arch, "%s", arch);
    c.qkv_bias = !strcmp(arch, "qwen2") || !strcmp(arch, "qwen2moe");
    if (!strcmp(arch, "qwen3") || !strcmp(arch, "qwen3moe")) c.head_dim = 8; // q width 32 != 16
    if (strstr(arch, "moe")) {
        c.n_expert = 4, c.n_expert_used = 2, c.n_ff = 24;
        c.moe_norm = !strcmp(arch, "qwen3moe");
    }
    if (!strcmp(arch, "qwen2moe")) c.n_ff_shexp = 20;
    return c;
}

static void random_tokens(int32_t *t, int n, int V, unsigned seed) {
    for (int i = 0; i < n; i++) {
        seed = seed * 1103515245u + 12345u;
        t[i] = (int32_t)((seed >> 8) % (unsigned)V);
    }
}

static float uniform(unsigned *s) {
    *s = *s * 1103515245u + 12345u;
    return (float)((*s >> 8) & 0xffff) / 65536.0f - 0.5f;
}

static double objective(speck_train_model *tm, const int32_t *in, const int32_t *tg, int B, int T,
                        float coef) {
    float l;
    CHECK(speck_train_loss(tm, in, tg, B, T, &l) == 0, "loss: %s", speck_last_error());
    return l + coef * speck_train_aux_loss(tm);
}

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

static bool has_tensor(speck_train_model *tm, const char *suffix) {
    for (int i = 0; i < speck_train_n_tensors(tm); i++)
        if (strstr(speck_train_tensor_name(tm, i), suffix)) return true;
    return false;
}

static void test_arch(const char *arch) {
    const speck_train_config c = arch_cfg(arch);
    speck_train_model *tm = speck_train_model_new(&c, 13);
    CHECK(tm != NULL, "%s model: %s", arch, speck_last_error());
    if (!tm) return;
    // The layer has its family's tensors.
    const bool qkn = strcmp(arch, "qwen2") && strcmp(arch, "qwen2moe");
    CHECK(has_tensor(tm, "attn_q.bias") == c.qkv_bias && has_tensor(tm, "attn_q_norm") == qkn &&
              has_tensor(tm, "ffn_gate_inp_shexp") == (c.n_ff_shexp > 0),
          "%s: biases %d, q/k norms %d, shared expert %d", arch, has_tensor(tm, "attn_q.bias"),
          has_tensor(tm, "attn_q_norm"), has_tensor(tm, "ffn_gate_inp_shexp"));
    // Larger weights than the default init so every path carries signal; biases and the q/k
    // norms away from their 0 / 1 starts.
    unsigned s = 77;
    for (int i = 0; i < speck_train_n_tensors(tm); i++) {
        const char *n = speck_train_tensor_name(tm, i);
        float *w = speck_train_tensor(tm, i, false);
        const int64_t k = speck_train_tensor_numel(tm, i);
        for (int64_t j = 0; j < k; j++)
            w[j] = strstr(n, ".bias")   ? 0.5f * uniform(&s)
                   : strstr(n, "_norm") ? 1.0f + uniform(&s)
                                        : 4.0f * w[j];
    }
    const float coef = c.n_expert ? 0.5f : 0.0f;
    if (c.n_expert) speck_train_set_aux_coef(tm, coef);
    enum { B = 2, T = 9 };
    int32_t in[B * T], tg[B * T];
    random_tokens(in, B * T, c.n_vocab, 31);
    random_tokens(tg, B * T, c.n_vocab, 32);
    float loss;
    speck_train_zero_grad(tm);
    CHECK(speck_train_step(tm, in, tg, B, T, 1.0f, &loss) == 0, "%s step: %s", arch,
          speck_last_error());
    // float32 central differences with h = 1e-3 on O(1) losses: ~1e-3 relative noise on the
    // largest elements (a missing term is >= 1e-1 off); 3e-2 as test_train's MoE check.
    double worst = 0;
    for (int ti = 0; ti < speck_train_n_tensors(tm); ti++) {
        float *w = speck_train_tensor(tm, ti, false), *g = speck_train_tensor(tm, ti, true);
        int64_t n = speck_train_tensor_numel(tm, ti), best = 0;
        for (int64_t i = 1; i < n; i++)
            if (fabsf(g[i]) > fabsf(g[best])) best = i;
        // A k bias barely moves the loss (softmax ignores a shift common to a query's scores;
        // only RoPE makes it position-dependent): a larger step lifts its difference above the
        // float32 loss's rounding (~1e-6 / 2h).
        const float h = strstr(speck_train_tensor_name(tm, ti), ".bias") ? 1e-2f : 1e-3f;
        const float w0 = w[best];
        w[best] = w0 + h;
        double lp = objective(tm, in, tg, B, T, coef);
        w[best] = w0 - h;
        double lm = objective(tm, in, tg, B, T, coef);
        w[best] = w0;
        double fd = (lp - lm) / (2.0 * h), an = g[best];
        double rel = fabs(fd - an) / fmax(fabs(an), 1e-3);
        worst = fmax(worst, rel);
        CHECK(rel < 3e-2, "%s finite difference %s[%lld]: analytic %.6g numeric %.6g (rel %.2e)",
              arch, speck_train_tensor_name(tm, ti), (long long)best, an, fd, rel);
    }
    printf("%s finite differences: %d tensors, worst rel err %.2e\n", arch,
           speck_train_n_tensors(tm), worst);

    // Export: speck's inference engine loads the file and gives the training loss.
    char name[64];
    snprintf(name, sizeof name, "%s.gguf", arch);
    CHECK(speck_train_export(tm, NULL, SPECK_TYPE_F32, arch, wpath(name)) == 0, "%s export: %s",
          arch, speck_last_error());
    speck_model *m = speck_model_load(wpath(name));
    CHECK(m != NULL && !strcmp(speck_model_hparams(m)->arch, arch), "%s: exported model loads: %s",
          arch, m ? speck_model_hparams(m)->arch : speck_last_error());
    if (m) {
        speck_ctx *cx = speck_ctx_new(m, 32);
        float *logits = malloc((size_t)T * c.n_vocab * sizeof(float));
        CHECK(speck_forward(cx, T, in, NULL, NULL, NULL, 0, logits) == 0, "%s forward: %s", arch,
              speck_last_error());
        const double nll = mean_nll(logits, tg, T, c.n_vocab);
        float tl;
        speck_train_loss(tm, in, tg, 1, T, &tl);
        // Two f32 implementations of the same function: ~1e-6 apart.
        CHECK(fabs(nll - tl) < 1e-4, "%s inference loss %.6f == training loss %.6f", arch, nll, tl);
        free(logits);
        speck_ctx_free(cx);
        speck_model_free(m);
    }
    // Loaded back for training: the same config, tensors and loss.
    speck_train_model *r = speck_train_model_load(wpath(name));
    CHECK(r != NULL, "%s reload: %s", arch, speck_last_error());
    if (r) {
        const speck_train_config *rc = speck_train_model_config(r);
        float l1, l2;
        speck_train_loss(tm, in, tg, B, T, &l1);
        speck_train_loss(r, in, tg, B, T, &l2);
        CHECK(rc->head_dim == speck_train_model_config(tm)->head_dim &&
                  rc->qkv_bias == c.qkv_bias && rc->n_ff_shexp == c.n_ff_shexp &&
                  rc->moe_norm == c.moe_norm && speck_train_n_params(r) == speck_train_n_params(tm) &&
                  l1 == l2,
              "%s reload: head_dim %d, bias %d, shexp %d, norm %d, loss %.7g vs %.7g", arch,
              rc->head_dim, rc->qkv_bias, rc->n_ff_shexp, rc->moe_norm, l1, l2);
        speck_train_model_free(r);
    }
    // A checkpoint resumes into a fresh model of the same config, and not into another family.
    snprintf(name, sizeof name, "%s.ckpt", arch);
    speck_train_state st = {7, 1};
    CHECK(speck_train_checkpoint_save(tm, &st, NULL, wpath(name)) == 0, "%s checkpoint: %s", arch,
          speck_last_error());
    speck_train_model *f = speck_train_model_new(&c, 99);
    speck_train_state st2 = {0, 0};
    CHECK(f && speck_train_checkpoint_load(f, wpath(name), &st2) == 0 && st2.step == 7 &&
              !memcmp(speck_train_params(f), speck_train_params(tm),
                      (size_t)speck_train_n_params(tm) * sizeof(float)),
          "%s checkpoint resumes: %s", arch, speck_last_error());
    speck_train_model_free(f);
    speck_train_config o = arch_cfg(strstr(arch, "moe") ? "llama" : "qwen2moe");
    if (!o.n_expert && strstr(arch, "moe"))
        o.n_expert = c.n_expert, o.n_expert_used = c.n_expert_used, o.n_ff = c.n_ff,
        o.moe_norm = c.moe_norm;
    f = speck_train_model_new(&o, 1);
    CHECK(f && speck_train_checkpoint_load(f, wpath(name), &st2) != 0,
          "%s checkpoint refused by a %s run", arch, o.arch);
    speck_train_model_free(f);
    speck_train_model_free(tm);
}

// Configs that do not describe a trainable model, and families with other layers.
static void test_refused(void) {
    speck_train_config c = arch_cfg("gemma2");
    CHECK(speck_train_model_new(&c, 1) == NULL && strstr(speck_last_error(), "gemma2"),
          "gemma2 refused: '%s'", speck_last_error());
    c = arch_cfg("qwen3");
    c.n_expert = 4, c.n_expert_used = 2;
    CHECK(speck_train_model_new(&c, 1) == NULL && strstr(speck_last_error(), "has no experts"),
          "qwen3 with experts refused: '%s'", speck_last_error());
    c = arch_cfg("qwen2moe");
    c.n_ff_shexp = 0;
    CHECK(speck_train_model_new(&c, 1) == NULL && strstr(speck_last_error(), "shared expert"),
          "qwen2moe without its shared expert refused: '%s'", speck_last_error());
    c = arch_cfg("qwen3");
    c.head_dim = 7;
    CHECK(speck_train_model_new(&c, 1) == NULL && strstr(speck_last_error(), "even"),
          "odd head size refused: '%s'", speck_last_error());
    const char *names[] = {"tiny-gemma2", "tiny-phi3"};
    for (int i = 0; i < 2; i++) {
        CHECK(speck_init_model(speck_preset_find(names[i]), SPECK_TYPE_F32, 1, wpath("r.gguf")) ==
                  0,
              "init %s: %s", names[i], speck_last_error());
        CHECK(speck_train_model_load(wpath("r.gguf")) == NULL &&
                  strstr(speck_last_error(), "cannot be trained"),
              "%s refused for training: '%s'", names[i], speck_last_error());
    }
}

int main(int argc, char **argv) {
    snprintf(g_dir, sizeof g_dir, "%s", argc > 1 ? argv[1] : "/tmp/speck-test-train-arch");
    mkdir(g_dir, 0755);
    speck_set_threads(2);
    const char *archs[] = {"qwen2", "qwen3", "olmoe", "qwen3moe", "qwen2moe"};
    for (size_t i = 0; i < sizeof archs / sizeof *archs; i++) test_arch(archs[i]);
    test_refused();
    return test_summary();
}
