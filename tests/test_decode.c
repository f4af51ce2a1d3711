// Accelerated decoding is lossless: every strategy's greedy output equals plain greedy decoding
// token for token (≥ 200 prompts each, many rejections, tree compaction, context limit), and
// speculative sampling's next-token distribution matches plain sampling (a coarse chi-square; the
// exact check of the acceptance rule is test_spec_accept.c).
//
// usage: test_decode DIR [quick|full] [SHARD/N]   (scratch directory for the models it writes;
// `quick`, used by the sanitizer build, runs 16 prompts per strategy instead of 200 and fewer
// sampling draws: every strategy's code paths still run there under the sanitizers, the
// statistics are the release run's. SHARD/N runs every N-th check from the SHARD-th: ctest runs
// the shards side by side, so the longest test of the suite no longer sets its end.)
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "speck.h"
#include "test_util.h"

#define MAXP 128
#define NPRED 24

typedef struct {
    int32_t toks[512];
    int n;
} collect;

static bool collect_cb(int32_t tok, void *u) {
    collect *c = u;
    if (c->n < 512) c->toks[c->n++] = tok;
    return true;
}

// Plain greedy decoding with the bare forward API: the reference every strategy must match.
static int plain_greedy(const speck_model *m, speck_ctx *c, const int32_t *p, int np, int npred,
                        int32_t *out) {
    int V = speck_model_hparams(m)->n_vocab;
    float *lg = malloc((size_t)V * sizeof(float));
    speck_ctx_truncate(c, 0);
    int last = np - 1, n = 0;
    speck_forward(c, np, p, NULL, NULL, &last, 1, lg);
    while (n < npred) {
        int32_t t = speck_argmax(lg, V);
        out[n++] = t;
        if (n == npred || speck_ctx_n_past(c) >= speck_ctx_n_ctx(c)) break;
        speck_forward(c, 1, &t, NULL, NULL, NULL, 0, lg);
    }
    free(lg);
    return n;
}

// Prompts that make drafters work: random tokens with repeated spans (prompt lookup / ADED
// find matches, and most of those matches are then rejected by the random-weight model).
static int make_prompt(uint64_t *rng, int32_t *p, int V) {
    *rng = *rng * 6364136223846793005ULL + 1442695040888963407ULL;
    int n = 1 + (int)((*rng >> 33) % (MAXP - 1));
    for (int i = 0; i < n; i++) {
        *rng = *rng * 6364136223846793005ULL + 1442695040888963407ULL;
        uint64_t r = *rng >> 33;
        if (i > 8 && r % 3 == 0)
            p[i] = p[i - 1 - (int)(r % 7)];
        else
            p[i] = (int32_t)(r % (uint64_t)(V < 64 ? V : 64));
    }
    return n;
}

static speck_type g_kv = SPECK_TYPE_F32; // KV cache type of check_strategy's contexts

// The plain greedy references of the main model's prompts, computed once per (context size, KV
// type, prompt count) and reused by every strategy checked there: check_strategy always draws the
// same prompts (one seed), and recomputing them took about half of the test's time. Only for
// g_ref_model, which lives through the whole test (a model loaded later could reuse a freed
// model's address).
static const speck_model *g_ref_model;
static struct {
    int n_ctx, n_prompts;
    speck_type kv;
    int32_t (*want)[NPRED];
    int *nw;
} g_ref[16];
static int g_n_ref;

// The reference for prompt k of n_prompts (p, np) into want; its length.
static int reference(const speck_model *m, speck_ctx *ref, int n_ctx, int n_prompts, int k,
                     const int32_t *p, int np, int32_t *want) {
    int slot = -1;
    for (int i = 0; m == g_ref_model && i < g_n_ref && slot < 0; i++)
        if (g_ref[i].n_ctx == n_ctx && g_ref[i].kv == g_kv && g_ref[i].n_prompts == n_prompts)
            slot = i;
    if (slot < 0 && m == g_ref_model && g_n_ref < 16) {
        slot = g_n_ref++;
        g_ref[slot].n_ctx = n_ctx, g_ref[slot].n_prompts = n_prompts, g_ref[slot].kv = g_kv;
        g_ref[slot].want = malloc((size_t)n_prompts * sizeof *g_ref[slot].want);
        g_ref[slot].nw = malloc((size_t)n_prompts * sizeof(int));
        for (int i = 0; i < n_prompts; i++) g_ref[slot].nw[i] = -1;
    }
    if (slot >= 0 && g_ref[slot].nw[k] >= 0) {
        memcpy(want, g_ref[slot].want[k], (size_t)g_ref[slot].nw[k] * sizeof(int32_t));
        return g_ref[slot].nw[k];
    }
    const int nw = plain_greedy(m, ref, p, np, NPRED, want);
    if (slot >= 0) {
        memcpy(g_ref[slot].want[k], want, (size_t)nw * sizeof(int32_t));
        g_ref[slot].nw[k] = nw;
    }
    return nw;
}

static int g_shard, g_n_shards = 1, g_job;
// Whether the next check belongs to this shard (checks are numbered in the order they run).
static bool my_job(void) {
    return g_job++ % g_n_shards == g_shard;
}

static void check_strategy(const char *label, const speck_model *m, const speck_spec_params *sp,
                           int n_prompts, int n_ctx) {
    if (!my_job()) return;
    speck_ctx *c = speck_ctx_new_kv(m, n_ctx, g_kv), *ref = speck_ctx_new_kv(m, n_ctx, g_kv);
    speck_decoder *d = speck_decoder_new(m, c, sp);
    speck_sampler_params gp = speck_sampler_default();
    speck_sampler *s = speck_sampler_new(&gp, speck_model_hparams(m)->n_vocab);
    uint64_t rng = 99;
    int mismatches = 0, passes = 0, drafted = 0, accepted = 0, generated = 0;
    for (int k = 0; k < n_prompts; k++) {
        int32_t p[MAXP], want[512];
        int np = make_prompt(&rng, p, speck_model_hparams(m)->n_vocab);
        if (np >= n_ctx) np = n_ctx - 1;
        int nw = reference(m, ref, n_ctx, n_prompts, k, p, np, want);
        collect got = {.n = 0};
        speck_spec_stats st;
        speck_sampler_reset(s);
        int rc = speck_decode(d, p, np, NPRED, s, NULL, collect_cb, &got, &st);
        if (rc || got.n != nw || memcmp(got.toks, want, (size_t)nw * sizeof(int32_t))) {
            if (mismatches++ < 3)
                printf("  %s prompt %d (len %d): rc %d, %d vs %d tokens, %s\n", label, k, np, rc,
                       got.n, nw, rc ? speck_last_error() : "");
        }
        passes += st.n_passes;
        drafted += st.n_drafted;
        accepted += st.n_accepted;
        generated += st.n_generated;
    }
    CHECK(mismatches == 0, "%s: greedy output identical to plain greedy on %d prompts (%d differ)",
          label, n_prompts, mismatches);
    printf("  %-28s prompts %d: %d tokens in %d passes, drafted %d, accepted %d\n", label,
           n_prompts, generated, passes, drafted, accepted);
    speck_sampler_free(s);
    speck_decoder_free(d);
    speck_ctx_free(c);
    speck_ctx_free(ref);
}

// Two-sample chi-square of the marginal distribution of the 2nd and 3rd generated tokens,
// speculative vs plain sampling over many seeds: an end-to-end check that the engine gives the
// acceptance rule the right rows and draft distributions. It is coarse (a one-point shift in the
// rule itself passes it); test_spec_accept.c checks the rule exactly. Degrees of freedom =
// categories - 1; the threshold is the 0.1 % critical value, so a correct sampler fails with
// p < 0.001 per check at this fixed seed set.
static double chi2_crit_001(int df) {
    // Wilson–Hilferty approximation of the chi-square quantile at 1 - 0.001 (z = 3.0902).
    double z = 3.0902, k = df;
    return k * pow(1 - 2 / (9 * k) + z * sqrt(2 / (9 * k)), 3);
}

static int g_quick;

// partial: the draft differs from the target but overlaps it, so both the acceptance and the
// residual branch of the min(1, p/q) rule must be taken. fixed: verify every draft (the rule is
// exercised on every pass); otherwise the default sampling budget, which falls back to plain
// steps and probes when drafting does not pay, mixing both kinds of pass in one decoder.
// head: a SpecDec++ acceptance head deciding the draft lengths (adaptive 0.5), or NULL; with a
// head the decodes run 6 tokens, so that the passes producing tokens 2 and 3 have room for
// drafts of 1 to 3 tokens whose length the head chooses.
static void check_sampling(const speck_model *m, const speck_model *draft, bool partial,
                           bool fixed, const speck_accept_head *head) {
    if (!my_job()) return;
    int V = speck_model_hparams(m)->n_vocab;
    speck_sampler_params sp = speck_sampler_default();
    sp.temperature = 1.3f;
    sp.top_k = 6;
    speck_spec_params spec = speck_spec_default();
    spec.kinds[0] = SPECK_DRAFT_MODEL;
    spec.draft_model = draft;
    spec.max_draft = 3;
    spec.fixed_budget = fixed;
    spec.accept_head = head;
    spec.adaptive = head ? 0.5f : 0.0f;
    speck_spec_params plain = speck_spec_default();
    speck_ctx *c1 = speck_ctx_new(m, 64), *c2 = speck_ctx_new(m, 64);
    speck_decoder *ds = speck_decoder_new(m, c1, &spec), *dp = speck_decoder_new(m, c2, &plain);
    const int N = g_quick ? 600 : 3000;
    int *ca[2], *cb[2];
    for (int p = 0; p < 2; p++) {
        ca[p] = calloc((size_t)V, sizeof(int));
        cb[p] = calloc((size_t)V, sizeof(int));
    }
    int acc = 0, drafted = 0;
    int32_t prompt[4] = {5, 17, 5, 17};
    for (int i = 0; i < N; i++) {
        sp.seed = (uint64_t)i * 2654435761u + 1;
        speck_sampler *s1 = speck_sampler_new(&sp, V);
        sp.seed += 777777;
        speck_sampler *s2 = speck_sampler_new(&sp, V);
        collect a = {.n = 0}, b = {.n = 0};
        speck_spec_stats st;
        speck_decode(ds, prompt, 4, head ? 6 : 3, s1, NULL, collect_cb, &a, &st);
        acc += st.n_accepted;
        drafted += st.n_drafted;
        speck_decode(dp, prompt, 4, 3, s2, NULL, collect_cb, &b, NULL);
        for (int p = 0; p < 2; p++) {
            ca[p][a.toks[p + 1]]++;
            cb[p][b.toks[p + 1]]++;
        }
        speck_sampler_free(s1);
        speck_sampler_free(s2);
    }
    for (int p = 0; p < 2; p++) {
        double chi = 0;
        int cats = 0;
        for (int v = 0; v < V; v++)
            if (ca[p][v] + cb[p][v] > 0) {
                chi +=
                    (double)(ca[p][v] - cb[p][v]) * (ca[p][v] - cb[p][v]) / (ca[p][v] + cb[p][v]);
                cats++;
            }
        double crit = chi2_crit_001(cats - 1);
        CHECK(cats > 1 && chi < crit,
              "speculative sampling matches plain sampling at token %d: chi2 %.1f < %.1f (%d "
              "categories, %d of %d drafts accepted)",
              p + 2, chi, crit, cats, acc, drafted);
        printf("  sampling token %d: chi2 %.1f (crit %.1f, %d categories), accepted %d/%d\n", p + 2,
               chi, crit, cats, acc, drafted);
        free(ca[p]);
        free(cb[p]);
    }
    if (partial)
        CHECK(acc > drafted / 20 && acc < drafted - drafted / 20,
              "sampled drafts both accepted and rejected (%d of %d accepted)", acc, drafted);
    speck_decoder_free(ds);
    speck_decoder_free(dp);
    speck_ctx_free(c1);
    speck_ctx_free(c2);
}

int main(int argc, char **argv) {
    const char *dir = argc > 1 ? argv[1] : "/tmp";
    g_quick = argc > 2 && !strcmp(argv[2], "quick");
    if (argc > 3 && (sscanf(argv[3], "%d/%d", &g_shard, &g_n_shards) != 2 || g_n_shards < 1 ||
                     g_shard < 0 || g_shard >= g_n_shards)) {
        fprintf(stderr, "test_decode: shard '%s' is not SHARD/N with 0 <= SHARD < N\n", argv[3]);
        return 2;
    }
    int np = g_quick ? 16 : 200;
    // Scratch names carry the shard: shards run at the same time in the same directory.
    char tgt[512], drf[512], other[512], q4[600], qp[600];
    snprintf(tgt, sizeof tgt, "%s/decode%d-target.gguf", dir, g_shard);
    snprintf(drf, sizeof drf, "%s/decode%d-draft.gguf", dir, g_shard);
    snprintf(other, sizeof other, "%s/decode%d-othervocab.gguf", dir, g_shard);
    snprintf(q4, sizeof q4, "%s/decode%d-q4draft.gguf", dir, g_shard);
    snprintf(qp, sizeof qp, "%s/decode%d-q.gguf", dir, g_shard);
    CHECK(speck_init_model(speck_preset_find("tiny"), SPECK_TYPE_F32, 11, tgt) == 0, "init target");
    CHECK(speck_init_model(speck_preset_find("tiny-qwen2"), SPECK_TYPE_F32, 12, drf) == 0,
          "init draft");
    speck_model *m = speck_model_load(tgt), *dm = speck_model_load(drf);
    if (!m || !dm) return test_summary();
    g_ref_model = m;

    struct {
        const char *label, *kinds;
        int width;
        float adaptive;
        const speck_model *draft;
        bool auto_budget;
    } cases[] = {
        {"plain", "none", 1, 0, NULL, false},
        {"prompt", "prompt", 1, 0, NULL, false},
        {"prompt tree", "prompt", 4, 0, NULL, false},
        {"aded", "aded", 1, 0, NULL, false},
        {"aded tree adaptive", "aded", 3, 0.7f, NULL, false},
        {"jacobi", "jacobi", 2, 0, NULL, false},
        {"prompt,aded", "prompt,aded", 2, 0, NULL, false},
        {"draft model (other)", "model", 1, 0, dm, false},
        {"draft model (self)", "model", 1, 0, m, false},
        {"draft model adaptive", "model", 1, 0.5f, dm, false},
        {"prompt,aded auto budget", "prompt,aded", 2, 0, NULL, true},
        {"draft model auto budget", "model", 1, 0, dm, true},
        {"draft model SpecDec++ head", "model", 1, 0.5f, dm, false},
        {"draft model SpecDec++ random head", "model", 1, 0.9f, dm, false},
    };
    // A SpecDec++ acceptance head for the draft, trained here on a few windows of a prompt
    // stream (collection and training run under the sanitizers too); a head for another width
    // is refused.
    // A random head (predictions spread around 1/2) varies the lengths more than the trained
    // one, which learns that the random-weight target rejects nearly everything.
    speck_accept_head *head = NULL,
                      *rhead = speck_accept_head_new(speck_model_hparams(dm)->n_embd, 8, 3);
    {
        uint64_t r = 5;
        int32_t text[4 * MAXP];
        int nt = 0;
        while (nt + MAXP <= 4 * MAXP) nt += make_prompt(&r, text + nt, speck_model_hparams(m)->n_vocab);
        speck_accept_collect_params cp = speck_accept_collect_default();
        cp.prompt_len = 16, cp.gen_len = 24, cp.max_windows = g_quick ? 2 : 6, cp.n_draft = 6;
        float *X = NULL;
        uint8_t *y = NULL;
        int64_t n = 0;
        CHECK(speck_accept_collect(m, dm, text, nt, &cp, &X, &y, &n) == 0 && n > 20,
              "acceptance samples collected (%lld): %s", (long long)n, speck_last_error());
        speck_accept_train_params tp = speck_accept_train_default();
        tp.steps = 50, tp.batch = 32, tp.n_hidden = 8;
        speck_accept_report rep;
        head = speck_accept_head_train(X, y, n, speck_model_hparams(dm)->n_embd, &tp, &rep);
        CHECK(head && isfinite(rep.val_bce), "acceptance head trained: %s", speck_last_error());
        free(X), free(y);
        speck_spec_params sp = speck_spec_default();
        sp.kinds[0] = SPECK_DRAFT_MODEL;
        sp.draft_model = dm;
        speck_accept_head *wide = speck_accept_head_new(speck_model_hparams(dm)->n_embd + 8, 4, 1);
        sp.accept_head = wide;
        speck_ctx *c = speck_ctx_new(m, 64);
        speck_decoder *d = speck_decoder_new(m, c, &sp);
        CHECK(!d && strstr(speck_last_error(), "acceptance head"),
              "a head for another draft width is refused: %s", speck_last_error());
        speck_decoder_free(d);
        speck_accept_head_free(wide);
        speck_ctx_free(c);
    }
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        speck_spec_params sp = speck_spec_default();
        sp.max_draft = 6; // deeper and wider than the defaults: more rejections to recover from
        sp.max_nodes = 12;
        speck_spec_parse_kinds(cases[i].kinds, sp.kinds);
        sp.tree_width = cases[i].width;
        sp.adaptive = cases[i].adaptive;
        sp.draft_model = cases[i].draft;
        sp.auto_budget = cases[i].auto_budget;
        sp.accept_head = strstr(cases[i].label, "random head") ? rhead
                         : strstr(cases[i].label, "SpecDec++") ? head
                                                               : NULL;
        check_strategy(cases[i].label, m, &sp, np, 512);
    }
    // Generation that runs into the context limit, with drafts longer than the room left.
    speck_spec_params sp = speck_spec_default();
    speck_spec_parse_kinds("prompt,aded", sp.kinds);
    sp.max_draft = 14;
    sp.max_nodes = 14;
    check_strategy("context limit (ctx 40)", m, &sp, np / 3, 40);
    sp.auto_budget = true; // calibration runs out of context: the cost curve is extrapolated
    check_strategy("context limit, auto budget (ctx 40)", m, &sp, np / 3, 40);
    sp.auto_budget = false;
    sp.kinds[0] = SPECK_DRAFT_MODEL;
    sp.kinds[1] = SPECK_DRAFT_NONE;
    sp.draft_model = dm;
    check_strategy("draft model, ctx 40", m, &sp, np / 3, 40);

    // Quantized weights: batch rows must equal single-token rows there too.
    const speck_type qtypes[] = {SPECK_TYPE_Q8_0, SPECK_TYPE_Q4_0, SPECK_TYPE_BF16};
    for (int i = 0; i < 3; i++) {
        char label[64];
        CHECK(speck_init_model(speck_preset_find("tiny"), qtypes[i], 13, qp) == 0, "init q");
        speck_model *qm = speck_model_load(qp);
        speck_spec_params qs = speck_spec_default();
        speck_spec_parse_kinds("prompt,aded", qs.kinds);
        qs.tree_width = 2;
        snprintf(label, sizeof label, "prompt,aded %s", speck_type_name(qtypes[i]));
        if (qm) check_strategy(label, qm, &qs, np / 2, 512);
        speck_model_free(qm);
        remove(qp);
    }

    // An f16 KV cache: plain and accelerated decoding round the same keys and values, so the
    // outputs must still be identical (trees: compaction of f16 rows; ctx 40: the limit).
    g_kv = SPECK_TYPE_F16;
    {
        speck_spec_params fs = speck_spec_default();
        speck_spec_parse_kinds("prompt,aded", fs.kinds);
        fs.tree_width = 3;
        check_strategy("prompt,aded tree, f16 KV", m, &fs, np / 2, 512);
        fs.max_draft = 14;
        fs.max_nodes = 14;
        check_strategy("context limit, f16 KV (ctx 40)", m, &fs, np / 4, 40);
        speck_spec_params ds = speck_spec_default();
        ds.kinds[0] = SPECK_DRAFT_MODEL;
        ds.draft_model = dm;
        check_strategy("draft model, f16 KV", m, &ds, np / 4, 512);
    }
    // Q8_0 / Q4_0 KV caches (head sizes a multiple of 32: the qwen3 and gemma2 presets; gemma2's
    // windowed layers keep 96-row rings, which runs past 96 tokens wrap): plain and accelerated
    // decoding store and read the same blocks, the streaming kernels reading them directly and
    // wide trees dequantizing them for the batch path, so the outputs must be identical.
    const struct {
        const char *preset;
        speck_type kv;
    } qkv[] = {{"tiny-qwen3", SPECK_TYPE_Q8_0},
               {"tiny-qwen3", SPECK_TYPE_Q4_0},
               {"tiny-gemma2", SPECK_TYPE_Q4_0}};
    for (int i = 0; i < 3; i++) {
        char label[96];
        CHECK(speck_init_model(speck_preset_find(qkv[i].preset), SPECK_TYPE_F32, 14, qp) == 0,
              "init %s", qkv[i].preset);
        speck_model *qm = speck_model_load(qp);
        g_kv = qkv[i].kv;
        speck_spec_params qs = speck_spec_default();
        speck_spec_parse_kinds("prompt,aded", qs.kinds);
        qs.tree_width = 3;
        qs.max_draft = 6;
        qs.max_nodes = 40; // trees above the streaming path's bound take the batch path
        snprintf(label, sizeof label, "prompt,aded tree, %s KV, %s", speck_type_name(qkv[i].kv),
                 qkv[i].preset);
        if (qm) check_strategy(label, qm, &qs, np / 4, 512);
        qs.max_draft = 14;
        qs.max_nodes = 14;
        snprintf(label, sizeof label, "context limit, %s KV, %s (ctx 40)",
                 speck_type_name(qkv[i].kv), qkv[i].preset);
        if (qm) check_strategy(label, qm, &qs, np / 8, 40);
        speck_model_free(qm);
        remove(qp);
    }
    g_kv = SPECK_TYPE_F32;
    CHECK(speck_ctx_new_kv(m, 16, SPECK_TYPE_Q4_K) == NULL &&
              strstr(speck_last_error(), "KV cache type q4_k") != NULL,
          "a KV cache type other than f32/f16/q8_0/q4_0 is refused: %s", speck_last_error());
    CHECK(speck_ctx_new_kv(m, 16, SPECK_TYPE_Q8_0) == NULL &&
              strstr(speck_last_error(), "multiple of 32") != NULL,
          "a q8_0 KV cache on head size 16 is refused: %s", speck_last_error());

    check_sampling(m, m, false, true, NULL); // q = p: every draft accepted
    // The target's own weights in Q4_0 as the draft: q close to p but not equal, so drafts are
    // sampled from q, accepted with min(1, p/q), and rejections resample max(0, p - q).
    CHECK(speck_init_model(speck_preset_find("tiny"), SPECK_TYPE_Q4_0, 11, q4) == 0, "init q4");
    speck_model *q4m = speck_model_load(q4);
    if (q4m) check_sampling(m, q4m, true, true, NULL);
    if (q4m) check_sampling(m, q4m, false, false, NULL); // under the default (falling-back) budget
    // SpecDec++ lengths (a random head on the draft's features): the distribution still holds.
    speck_accept_head *rh = speck_accept_head_new(speck_model_hparams(m)->n_embd, 8, 5);
    if (q4m && rh) check_sampling(m, q4m, true, true, rh);
    speck_accept_head_free(rh);
    speck_model_free(q4m);
    remove(q4);

    // A draft model with another vocabulary is refused with a clear error.
    speck_gguf *g = speck_gguf_open(drf);
    speck_gguf_writer *w = speck_gguf_writer_new();
    for (int64_t i = 0; i < speck_gguf_n_kv(g); i++) {
        if (!strcmp(speck_gguf_key(g, i), "tokenizer.ggml.tokens")) {
            int64_t n = speck_gguf_arr_n(g, i);
            const char **toks = malloc((size_t)n * sizeof *toks);
            uint64_t *lens = malloc((size_t)n * sizeof *lens);
            for (int64_t j = 0; j < n; j++) toks[j] = speck_gguf_arr_str(g, i, j, &lens[j]);
            toks[300] = "changed";
            lens[300] = 7;
            speck_gguf_set_arr_str(w, "tokenizer.ggml.tokens", toks, lens, n);
            free(toks);
            free(lens);
        } else {
            speck_gguf_copy_kv(w, g, i);
        }
    }
    for (int64_t i = 0; i < speck_gguf_n_tensors(g); i++) {
        const speck_gguf_tensor *t = speck_gguf_tensor_at(g, i);
        speck_gguf_add_tensor(w, t->name, (speck_type)t->type, t->n_dims, t->ne, t->data);
    }
    speck_gguf_writer_save(w, other);
    speck_gguf_writer_free(w);
    speck_gguf_close(g);
    speck_model *om = speck_model_load(other);
    speck_spec_params bad = speck_spec_default();
    bad.kinds[0] = SPECK_DRAFT_MODEL;
    bad.draft_model = om;
    speck_ctx *c = speck_ctx_new(m, 64);
    speck_decoder *d = speck_decoder_new(m, c, &bad);
    CHECK(d == NULL && strstr(speck_last_error(), "vocabulary"),
          "draft model with another vocabulary refused: %s", speck_last_error());
    speck_decoder_free(d);
    speck_ctx_free(c);
    speck_model_free(om);
    speck_accept_head_free(head);
    speck_accept_head_free(rhead);
    speck_model_free(dm);
    for (int i = 0; i < g_n_ref; i++) free(g_ref[i].want), free(g_ref[i].nw);
    speck_model_free(m);
    remove(tgt);
    remove(drf);
    remove(other);
    return test_summary();
}
