// Function-preserving growth through speck's own forward pass: the trained default model grown
// to a larger f32 shape gives the same greedy continuations (and, with the drafters, the same
// accepted tokens per pass) as the model itself; which targets are reachable and the errors for
// those that are not. The logits against the PyTorch reference, per shape class, are
// tests/reference/test_grow.py.
//
// usage: test_grow MODELS_DIR WORK_DIR [quick]   (MODELS_DIR holds default.gguf; `quick`, used
// by the sanitizer build, decodes 2 prompts instead of 4)
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "speck.h"
#include "test_util.h"

#define NPRED 64

// Logits of grown and source at every step may differ by float32 rounding only: the same
// summands in another order, k times as many of them (x2 here), through 6 layers. Observed
// ~2e-6 x scale; 1e-4 x scale is test_forward.py's float tolerance (30x headroom), while a real
// construction error moves logits by 1e-2 x scale or more (tests/reference/test_grow.py).
#define TOL_LOGITS 1e-4

static const char *PROMPTS[] = {
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "class Stack:\n    \"\"\"A last-in, first-out stack.\"\"\"\n\n    def __init__(self):\n",
    "import os\nimport sys\n\n\ndef main(argv):\n    parser = ",
    "    def __repr__(self):\n        return '<%s %r>' % (",
};
static int g_prompts = (int)(sizeof PROMPTS / sizeof PROMPTS[0]);

// Plain greedy decoding with the bare forward API; logits of every step into lg (NPRED, V).
static int greedy(const speck_model *m, speck_type kv, const int32_t *p, int np, int32_t *out,
                  float *lg) {
    const int V = speck_model_hparams(m)->n_vocab;
    speck_ctx *c = speck_ctx_new_kv(m, 0, kv);
    if (!c) return -1;
    int last = np - 1, n = 0;
    int rc = speck_forward(c, np, p, NULL, NULL, &last, 1, lg);
    while (!rc && n < NPRED) {
        const int32_t t = speck_argmax(lg + (size_t)n * V, V);
        out[n++] = t;
        if (n < NPRED) rc = speck_forward(c, 1, &t, NULL, NULL, NULL, 0, lg + (size_t)n * V);
    }
    speck_ctx_free(c);
    return rc ? -1 : n;
}

typedef struct {
    int32_t toks[NPRED];
    int n;
} collect;

static bool collect_cb(int32_t tok, void *u) {
    collect *c = u;
    if (c->n < NPRED) c->toks[c->n++] = tok;
    return true;
}

// Accelerated greedy decoding (prompt lookup + ADED, a fixed budget: the auto budget would
// follow the machine's timings).
static int drafted(const speck_model *m, const int32_t *p, int np, collect *out,
                   speck_spec_stats *st) {
    speck_ctx *c = speck_ctx_new(m, 0);
    speck_spec_params sp = speck_spec_default();
    speck_spec_parse_kinds("prompt,aded", sp.kinds);
    speck_decoder *d = c ? speck_decoder_new(m, c, &sp) : NULL;
    speck_sampler_params gp = speck_sampler_default();
    speck_sampler *s = speck_sampler_new(&gp, speck_model_hparams(m)->n_vocab);
    out->n = 0;
    int rc = d && s ? speck_decode(d, p, np, NPRED, s, NULL, collect_cb, out, st) : -1;
    speck_sampler_free(s);
    speck_decoder_free(d);
    speck_ctx_free(c);
    return rc;
}

static void check_greedy(const char *src_path, const char *grown_path) {
    speck_model *a = speck_model_load(src_path), *b = speck_model_load(grown_path);
    CHECK(a && b, "load source and grown model: %s", speck_last_error());
    if (!a || !b) {
        speck_model_free(a);
        speck_model_free(b);
        return;
    }
    speck_vocab *v = speck_vocab_from_gguf(speck_model_gguf(a));
    const int V = speck_model_hparams(a)->n_vocab;
    CHECK(v && speck_model_hparams(b)->n_vocab == V, "same vocabulary");
    float *la = malloc((size_t)NPRED * V * sizeof(float)),
          *lb = malloc((size_t)NPRED * V * sizeof(float));
    double worst = 0, min_margin = INFINITY;
    for (int k = 0; v && k < g_prompts; k++) {
        int32_t p[256], ta[NPRED], tb[NPRED];
        const int np = (int)speck_tokenize(v, PROMPTS[k], strlen(PROMPTS[k]), true, false, p, 256);
        for (int kv = 0; kv < 2; kv++) {
            const speck_type kt = kv ? SPECK_TYPE_F16 : SPECK_TYPE_F32;
            const int na = greedy(a, kt, p, np, ta, la), nb = greedy(b, kt, p, np, tb, lb);
            CHECK(na == NPRED && nb == NPRED, "prompt %d: decoding ran (%d, %d tokens): %s", k, na,
                  nb, speck_last_error());
            if (na != NPRED || nb != NPRED) continue;
            int first = -1;
            for (int i = 0; i < NPRED && first < 0; i++)
                if (ta[i] != tb[i]) first = i;
            CHECK(first < 0,
                  "prompt %d, %s KV cache: the grown model's greedy continuation equals the "
                  "source's (first difference at token %d)",
                  k, kv ? "f16" : "f32", first);
            if (kv) continue;
            double scale = 1, err = 0;
            for (size_t i = 0; i < (size_t)NPRED * V; i++) {
                scale = fmax(scale, fabs(la[i]));
                err = fmax(err, fabs((double)la[i] - lb[i]));
            }
            for (int i = 0; i < NPRED; i++) { // how close the source came to a tie
                const float *r = la + (size_t)i * V;
                const int32_t top = ta[i];
                double second = -INFINITY;
                for (int j = 0; j < V; j++)
                    if (j != top && r[j] > second) second = r[j];
                min_margin = fmin(min_margin, r[top] - second);
            }
            CHECK(err <= TOL_LOGITS * scale, "prompt %d: logits max diff %.3e <= %.3e", k, err,
                  TOL_LOGITS * scale);
            if (err / scale > worst) worst = err / scale;
        }
        // The drafters see the same argmaxes, so they are accepted exactly as often.
        collect ca, cb;
        speck_spec_stats sa, sb;
        const int ra = drafted(a, p, np, &ca, &sa), rb = drafted(b, p, np, &cb, &sb);
        CHECK(!ra && !rb && ca.n == cb.n && !memcmp(ca.toks, cb.toks, sizeof(int32_t) * ca.n) &&
                  !memcmp(ca.toks, ta, sizeof(int32_t) * ca.n),
              "prompt %d: accelerated decoding of the grown model gives the source's text", k);
        CHECK(sa.n_passes == sb.n_passes && sa.n_drafted == sb.n_drafted &&
                  sa.n_accepted == sb.n_accepted,
              "prompt %d: same passes / drafted / accepted (%d/%d/%d vs %d/%d/%d)", k, sa.n_passes,
              sa.n_drafted, sa.n_accepted, sb.n_passes, sb.n_drafted, sb.n_accepted);
    }
    printf("  greedy: %d prompts x %d tokens; worst logit diff %.2e x scale; smallest top-2 "
           "margin of the source %.3g\n",
           g_prompts, NPRED, worst, min_margin);
    free(la);
    free(lb);
    speck_vocab_free(v);
    speck_model_free(a);
    speck_model_free(b);
}

static bool mentions(const char *s) {
    return strstr(speck_last_error(), s) != NULL;
}

// Reachability from the default model's shapes (4 x 256, 8 heads / 4 kv of 32, ffn 768).
static void check_targets(void) {
    const speck_hparams src = {.arch = "llama",
                               .n_vocab = 4096,
                               .n_ctx_train = 256,
                               .n_embd = 256,
                               .n_layer = 4,
                               .n_head = 8,
                               .n_head_kv = 4,
                               .head_dim = 32,
                               .n_ff = 768,
                               .norm_eps = 1e-5f};
    char desc[512];
    const speck_preset *tl = speck_preset_find("tinyllama-1.1b");
    CHECK(tl && speck_grow_check(&src, tl, desc, sizeof desc) == 0 &&
              strstr(desc, "n_embd 256 -> 2048 (units x8)") &&
              strstr(desc, "query heads x4, kv heads x1, RoPE pair i -> 2i") &&
              strstr(desc, "(18 identity)"),
          "tinyllama-1.1b is reachable: %s", tl ? desc : "no preset");
    // qwen2.5-0.5b and smollm2-135m have 2 and 3 kv heads: the source's 4 cannot fit.
    const char *few[] = {"qwen2.5-0.5b", "smollm2-135m"};
    for (int i = 0; i < 2; i++) {
        const speck_preset *p = speck_preset_find(few[i]);
        CHECK(p && speck_grow_check(&src, p, NULL, 0) == SPECK_ERR_ARG &&
                  mentions("n_head_kv must be at least 4") && mentions(few[i]),
              "%s is refused for its kv heads: %s", few[i], speck_last_error());
    }
    struct {
        int embd, layer, head, kv, ff;
        const char *what;
    } bad[] = {
        {128, 4, 8, 4, 768, "n_embd 128 is smaller than the source's 256"},
        {512, 3, 8, 4, 768, "n_layer 3 is smaller than the source's 4"},
        {512, 4, 8, 4, 512, "n_ff 512 is smaller than the source's 768"},
        {512, 4, 4, 4, 768, "n_head 4 is smaller than the source's 8"},
        {768, 4, 16, 4, 768, "head size 48 (n_embd / n_head) is not a multiple of the source's 32"},
        {520, 4, 16, 4, 768, "n_embd 520 is not a multiple of n_head 16"},
        {512, 4, 16, 3, 768, "n_head 16 is not a multiple of n_head_kv 3"},
        {512, 4, 16, 2, 768, "n_head_kv must be at least 4"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const speck_preset t = {.name = "t",
                                .n_embd = bad[i].embd,
                                .n_layer = bad[i].layer,
                                .n_head = bad[i].head,
                                .n_head_kv = bad[i].kv,
                                .n_ff = bad[i].ff};
        CHECK(speck_grow_check(&src, &t, NULL, 0) == SPECK_ERR_ARG && mentions(bad[i].what),
              "refused with '%s': got '%s'", bad[i].what, speck_last_error());
    }
    // 4 query heads per kv head into groups of 3: each source kv head needs 2 target kv heads.
    speck_hparams g4 = src;
    g4.n_head_kv = 2;
    const speck_preset nine = {
        .name = "t", .n_embd = 576, .n_layer = 4, .n_head = 9, .n_head_kv = 3, .n_ff = 768};
    CHECK(speck_grow_check(&g4, &nine, NULL, 0) == SPECK_ERR_ARG &&
              mentions("2 of them to seat its query heads, so n_head_kv must be at least 4"),
          "9 heads / 3 kv cannot seat 2 groups of 4: %s", speck_last_error());
    // An MQA source fits any kv head count; its 8 query heads need 8 query slots.
    speck_hparams mqa = src;
    mqa.n_head_kv = 1;
    const speck_preset ok = {
        .name = "t", .n_embd = 576, .n_layer = 4, .n_head = 9, .n_head_kv = 3, .n_ff = 1536};
    CHECK(speck_grow_check(&mqa, &ok, desc, sizeof desc) == 0 && strstr(desc, "kv heads x3"),
          "MQA source to 9 heads / 3 kv: %s %s", desc, speck_last_error());
}

static void check_bad_files(const char *src, const char *dir) {
    char out[4096];
    snprintf(out, sizeof out, "%s/bad.gguf", dir);
    unlink(out);
    const speck_preset odd = {
        .name = "odd", .n_embd = 256, .n_layer = 4, .n_head = 8, .n_head_kv = 4, .n_ff = 784};
    // n_ff 784 = 768 + 16 is reachable in f32 but ffn_down's rows do not fill q4_0 blocks.
    CHECK(speck_grow_model(src, &odd, SPECK_TYPE_Q4_0, 1, false, out) == SPECK_ERR_ARG &&
              mentions("row length 784") && mentions("q4_0") && mentions(src),
          "q4_0 with a 784-wide row is refused: %s", speck_last_error());
    CHECK(access(out, F_OK) != 0, "no output after a refused growth");
    const speck_preset narrow = {
        .name = "narrow", .n_embd = 128, .n_layer = 4, .n_head = 4, .n_head_kv = 4, .n_ff = 768};
    CHECK(speck_grow_model(src, &narrow, SPECK_TYPE_F32, 1, false, out) == SPECK_ERR_ARG &&
              mentions(src) && mentions("n_embd 128 is smaller"),
          "narrower target refused, naming the file: %s", speck_last_error());
    CHECK(speck_grow_model("/nonexistent/m.gguf", &odd, SPECK_TYPE_F32, 1, false, out) != 0 &&
              mentions("/nonexistent/m.gguf"),
          "missing source named: %s", speck_last_error());
    char missing[4096];
    snprintf(missing, sizeof missing, "%s/no-such-dir/x.gguf", dir);
    CHECK(speck_grow_model(src, &odd, SPECK_TYPE_F32, 1, false, missing) != 0 &&
              mentions("no-such-dir"),
          "unwritable output named: %s", speck_last_error());
    CHECK(speck_grow_model(src, &odd, (speck_type)7, 1, false, out) == SPECK_ERR_ARG,
          "unknown output type refused");
    CHECK(access(out, F_OK) != 0, "still no output");
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: test_grow MODELS_DIR WORK_DIR\n");
        return 2;
    }
    if (argc > 3 && !strcmp(argv[3], "quick")) g_prompts = 2;
    speck_set_threads(2);
    char src[4096], grown[4096];
    snprintf(src, sizeof src, "%s/default.gguf", argv[1]);
    snprintf(grown, sizeof grown, "%s/grown.gguf", argv[2]);
    check_targets();
    if (access(src, R_OK) != 0) {
        test_missing(src, "the default model ships in models/");
        return test_summary();
    }
    check_bad_files(src, argv[2]);
    // Width x2 + 64 zero units (epsilon scaled), head size x2 (9 heads of 64), kv heads copied
    // 2-3 times (9 for 4), FFN x1 + 256 units x2, 2 identity layers.
    const speck_preset t = {
        .name = "test", .n_embd = 576, .n_layer = 6, .n_head = 9, .n_head_kv = 9, .n_ff = 1024};
    int rc = speck_grow_model(src, &t, SPECK_TYPE_F32, 7, false, grown);
    CHECK(rc == 0, "grow the default model: %s", speck_last_error());
    if (rc == 0) check_greedy(src, grown);
    unlink(grown);
    return test_summary();
}
