// The continuous-batching scheduler (speck_sched): greedy outputs of many concurrent requests of
// different lengths equal single-sequence decoding token for token — with and without the prefix
// cache, with requests cancelled mid-way, with a pool small enough to force eviction and
// preemption, with draft chains verified in the batch; a sampled request's output does not
// depend on what runs beside it (with drafts too), and drafts keep the sampled distribution; a
// long prompt is prefilled in chunks while another request keeps getting a token every pass.
//
// usage: test_sched MODEL.gguf [quick]   (quick, for the sanitizer build: shorter prompts and
// outputs)
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "speck.h"
#include "test_util.h"

#define NR 8
#define NPRED 16
#define MAXP 220

static int g_npred = NPRED, g_shared = 64; // tokens generated; shared prefix length

typedef struct {
    int32_t prompt[MAXP];
    int np;
    int32_t ref[NPRED];
    int32_t out[NPRED];
    int n_out;
    speck_finish fin;
    int64_t id;
    int64_t pass_at[NPRED]; // the scheduler's pass count when each token arrived
    speck_sched *s;
    int cancel_after; // return false after this many tokens (0: never)
    int cached;       // speck_sched_cached_tokens at the first token
} req;

static void reference(const speck_model *m, req *r, int V) {
    speck_ctx *c = speck_ctx_new(m, 512);
    float *lg = malloc((size_t)V * sizeof(float));
    for (int i = 0; i < r->np; i++) speck_forward(c, 1, &r->prompt[i], NULL, NULL, NULL, 0, lg);
    for (int k = 0; k < g_npred; k++) {
        r->ref[k] = speck_argmax(lg, V);
        if (k + 1 < g_npred) speck_forward(c, 1, &r->ref[k], NULL, NULL, NULL, 0, lg);
    }
    free(lg);
    speck_ctx_free(c);
}

static bool on_token(void *user, int32_t tok, float lp, speck_finish fin) {
    req *r = user;
    (void)lp;
    if (fin != SPECK_FINISH_NONE) {
        r->fin = fin;
        return false;
    }
    speck_sched_stats st;
    speck_sched_get_stats(r->s, &st);
    if (!r->n_out) r->cached = speck_sched_cached_tokens(r->s, r->id);
    if (r->n_out < NPRED) r->pass_at[r->n_out] = st.passes, r->out[r->n_out++] = tok;
    if (r->cancel_after && r->n_out == r->cancel_after) {
        r->fin = SPECK_FINISH_CANCEL;
        return false;
    }
    return true;
}

static int drive(speck_sched *s) {
    int steps = 0, rc;
    while ((rc = speck_sched_step(s)) > 0) steps++;
    return rc < 0 ? rc : steps;
}

static speck_request make(req *r, speck_sched *s, float temp, uint64_t seed) {
    speck_request q = {
        .prompt = r->prompt, .n_prompt = r->np, .max_tokens = g_npred, .cb = on_token, .user = r};
    q.sample = speck_sampler_default();
    q.sample.temperature = temp;
    q.sample.top_p = 0.95f;
    q.sample.seed = seed;
    r->s = s;
    r->n_out = 0;
    r->cached = -1;
    r->fin = SPECK_FINISH_NONE;
    return q;
}

// Greedy requests through a scheduler; every output must equal its reference.
static void greedy_run(const speck_model *m, req *rs, const speck_sched_params *p, const char *what,
                       int cancel_idx) {
    speck_sched *s = speck_sched_new(m, NULL, p);
    CHECK(s != NULL, "%s: sched_new: %s", what, speck_last_error());
    if (!s) return;
    // Requests 0-4 now, 5 after a few passes (joining a running batch), 6 and 7 once request 5
    // has its first token (its prompt's blocks are cached).
    for (int i = 0; i < NR; i++) {
        rs[i].cancel_after = i == cancel_idx ? 5 : 0;
        if (i == 5)
            for (int k = 0; k < 3; k++) speck_sched_step(s);
        for (int k = 0; i == 6 && rs[5].n_out == 0 && k < 1000; k++) speck_sched_step(s);
        speck_request q = make(&rs[i], s, 0.0f, 1);
        rs[i].id = speck_sched_submit(s, &q);
        CHECK(rs[i].id >= 0, "%s: submit: %s", what, speck_last_error());
    }
    CHECK(drive(s) > 0, "%s: step failed: %s", what, speck_last_error());
    int bad = 0;
    for (int i = 0; i < NR; i++) {
        const int want = i == cancel_idx ? 5 : g_npred;
        if (rs[i].n_out != want || memcmp(rs[i].out, rs[i].ref, (size_t)want * 4)) bad++;
        CHECK(rs[i].fin == (i == cancel_idx ? SPECK_FINISH_CANCEL : SPECK_FINISH_LENGTH),
              "%s: request %d finish %d", what, i, rs[i].fin);
    }
    CHECK(bad == 0, "%s: %d of %d outputs differ from single-sequence greedy decoding", what, bad,
          NR);
    speck_sched_stats st;
    speck_sched_get_stats(s, &st);
    printf("%s: %lld passes, %lld prompt tokens, %lld from the prefix cache, %lld preemptions, "
           "%d blocks in use after (%d cached), %lld of %lld draft tokens accepted\n",
           what, (long long)st.passes, (long long)st.prompt_tokens, (long long)st.cached_tokens,
           (long long)st.preempted, st.blocks_used, st.blocks_cached, (long long)st.draft_accepted,
           (long long)st.drafted);
    CHECK(st.running == 0 && st.queued == 0, "%s: requests left", what);
    CHECK(st.blocks_used == st.blocks_cached, "%s: %d blocks held by no one (%d cached)", what,
          st.blocks_used, st.blocks_cached);
    if (p->n_blocks) CHECK(st.preempted > 0, "%s: no request was preempted", what);
    if (p->draft)
        CHECK(st.drafted > 0 && st.draft_accepted > 0 && st.draft_accepted <= st.drafted &&
                  st.passes < st.gen_tokens,
              "%s: %lld draft tokens, %lld accepted, %lld passes for %lld tokens", what,
              (long long)st.drafted, (long long)st.draft_accepted, (long long)st.passes,
              (long long)st.gen_tokens);
    else
        CHECK(st.drafted == 0, "%s: drafts without drafters", what);
    if (!p->no_prefix_cache)
        CHECK(st.cached_tokens >= 2 * g_shared,
              "%s: the shared prefix was not reused (%lld tokens)", what,
              (long long)st.cached_tokens);
    // Each request's own count (usage.prompt_tokens_details.cached_tokens in the server): whole
    // blocks, short of the prompt, adding up to the total when nothing was admitted twice.
    const int bs = p->block_size ? p->block_size : 16;
    long long sum = 0;
    for (int i = 0; i < NR; i++) {
        const int k = rs[i].cached;
        CHECK(k >= 0 && k % bs == 0 && k < rs[i].np && (!p->no_prefix_cache || k == 0),
              "%s: request %d: %d cached tokens of a %d-token prompt", what, i, k, rs[i].np);
        sum += k;
    }
    if (!st.preempted)
        CHECK(sum == st.cached_tokens, "%s: requests' cached tokens add up to %lld, not %lld", what,
              sum, (long long)st.cached_tokens);
    CHECK(speck_sched_cached_tokens(s, 1 << 30) < 0, "%s: cached_tokens of an unknown id", what);
    speck_sched_free(s);
}

// n samples (seeds seed0 + 1..n, temperature 0.8) of one prompt's tokens 2 and 3 into the
// histograms h2 and h3, and the scheduler's stats.
typedef struct {
    int32_t tok[3];
    int n;
} small_out;

static bool on_small(void *user, int32_t tok, float lp, speck_finish fin) {
    small_out *o = user;
    (void)lp;
    if (fin == SPECK_FINISH_NONE && o->n < 3) o->tok[o->n++] = tok;
    return true;
}

static void sample_run(const speck_model *m, const int32_t *prompt, int np, const char *draft,
                       uint64_t seed0, int n, int *h2, int *h3, speck_sched_stats *st) {
    speck_sched_params p = {.n_seq = 16, .block_size = 16, .max_len = 256, .draft = draft};
    speck_sched *s = speck_sched_new(m, NULL, &p);
    small_out *o = calloc((size_t)n, sizeof *o);
    for (int i = 0; s && i < n; i++) {
        speck_request q = {.prompt = prompt,
                           .n_prompt = np,
                           .max_tokens = 3,
                           .cb = on_small,
                           .user = &o[i],
                           .ignore_eos = true};
        q.sample = speck_sampler_default();
        q.sample.temperature = 0.8f;
        q.sample.seed = seed0 + 1 + (uint64_t)i;
        speck_sched_submit(s, &q);
    }
    CHECK(s && drive(s) > 0, "sampling with drafts %s: %s", draft ? draft : "off",
          speck_last_error());
    for (int i = 0; i < n; i++)
        if (o[i].n == 3) h2[o[i].tok[1]]++, h3[o[i].tok[2]]++;
    if (s) speck_sched_get_stats(s, st);
    speck_sched_free(s);
    free(o);
}

// Two-sample chi-square of equal-size histograms over the tokens seen at least 10 times in all,
// against its 0.999 quantile (Wilson-Hilferty); the rest pooled in one bin.
static bool same_distribution(const int *a, const int *b, int V, double *stat, int *df) {
    double x2 = 0, ra = 0, rb = 0;
    int bins = 0;
    for (int t = 0; t < V; t++) {
        if (a[t] + b[t] >= 10) {
            x2 += (double)(a[t] - b[t]) * (a[t] - b[t]) / (a[t] + b[t]);
            bins++;
        } else {
            ra += a[t], rb += b[t];
        }
    }
    if (ra + rb > 0) x2 += (ra - rb) * (ra - rb) / (ra + rb), bins++;
    *stat = x2;
    *df = bins - 1;
    if (*df < 1) return true;
    const double k = *df, z = 3.090, c = 1 - 2 / (9 * k) + z * sqrt(2 / (9 * k));
    return x2 <= k * c * c * c;
}

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : "models/default.gguf";
    speck_model *m = speck_model_load(path);
    if (!m) {
        test_missing(path, "the default model ships in models/");
        return test_summary();
    }
    const int V = speck_model_hparams(m)->n_vocab;
    const bool quick = argc > 2 && !strcmp(argv[2], "quick");
    if (quick) g_npred = 6, g_shared = 16;
    static req rs[NR];
    uint64_t x = 99;
    for (int i = 0; i < NR; i++) {
        rs[i].np = quick ? 3 + i * 5 : 5 + i * 15;
        for (int k = 0; k < rs[i].np; k++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            rs[i].prompt[k] = (int32_t)((x >> 33) % (uint64_t)V);
        }
    }
    // Requests 6.. share a 64-token (quick: 16) "system prompt" with request 5.
    for (int i = 6; i < NR; i++) memcpy(rs[i].prompt, rs[5].prompt, (size_t)g_shared * 4);
    for (int i = 0; i < NR; i++) reference(m, &rs[i], V);

    speck_sched_params p = {
        .n_seq = 4, .block_size = 16, .max_len = 256, .max_batch = 64, .prefill_chunk = 24};
    greedy_run(m, rs, &p, "prefix cache", -1);
    p.no_prefix_cache = true;
    greedy_run(m, rs, &p, "no prefix cache, one cancelled", 3);
    p.no_prefix_cache = false;
    // 224 positions (quick: 64) for 4 requests of up to 126 (quick: 44): eviction, preemption.
    p.n_blocks = quick ? 4 : 14;
    greedy_run(m, rs, &p, "small pool", 7);
    // Accelerated decoding in the batch: each decoding request's draft chain verified in the
    // same pass, the rejected tail dropped from its blocks; greedy output unchanged, also with
    // a pool short enough that drafts must be skipped and requests preempted.
    p.n_blocks = 0;
    p.draft = "prompt,aded";
    greedy_run(m, rs, &p, "drafts", 2);
    p.draft = "aded";
    p.max_draft = 7;
    p.n_blocks = quick ? 4 : 14;
    greedy_run(m, rs, &p, "drafts, small pool", -1);
    p.draft = NULL;
    p.max_draft = 0;

    // Sampling: request 2 alone, then beside others with other seeds and settings.
    speck_sched_params ps = {.n_seq = 4, .block_size = 16, .max_len = 256};
    speck_sched *s = speck_sched_new(m, NULL, &ps);
    speck_request q = make(&rs[2], s, 0.9f, 7);
    speck_sched_submit(s, &q);
    drive(s);
    int32_t alone[NPRED];
    memcpy(alone, rs[2].out, sizeof alone);
    const int n_alone = rs[2].n_out;
    speck_sched_free(s);
    s = speck_sched_new(m, NULL, &ps);
    for (int i = 0; i < 6; i++) {
        if (i == 3) speck_sched_step(s), speck_sched_step(s);
        speck_request qi = make(&rs[i], s, i == 2 ? 0.9f : 0.5f + 0.1f * i, i == 2 ? 7 : 100 + i);
        speck_sched_submit(s, &qi);
    }
    drive(s);
    CHECK(n_alone == g_npred && rs[2].n_out == g_npred &&
              !memcmp(alone, rs[2].out, (size_t)g_npred * 4),
          "a sampled request's output changed with the batch around it");
    bool differs = false; // and sampling is not greedy in disguise
    for (int k = 0; k < g_npred; k++) differs |= alone[k] != rs[2].ref[k];
    CHECK(differs, "temperature 0.9 gave the greedy output");
    speck_sched_free(s);

    // The same with drafts: alone and beside others, the same output.
    ps.draft = "prompt,aded";
    for (int pass = 0; pass < 2; pass++) {
        s = speck_sched_new(m, NULL, &ps);
        for (int i = 0; i < (pass ? 6 : 1); i++) {
            const int k = pass ? i : 2;
            if (i == 3) speck_sched_step(s), speck_sched_step(s);
            speck_request qi =
                make(&rs[k], s, k == 2 ? 0.9f : 0.5f + 0.1f * k, k == 2 ? 7 : 100 + k);
            speck_sched_submit(s, &qi);
        }
        drive(s);
        if (!pass) memcpy(alone, rs[2].out, sizeof alone);
        speck_sched_free(s);
    }
    CHECK(rs[2].n_out == g_npred && !memcmp(alone, rs[2].out, (size_t)g_npred * 4),
          "with drafts, a sampled request's output changed with the batch around it");
    ps.draft = NULL;

    // Sampling with drafts keeps the distribution: a prompt that repeats a line, so that prompt
    // lookup proposes its rest and the sampler often (not always) takes it; tokens 2 and 3 of
    // 240 samples with drafts against 240 without (other seeds).
    {
        speck_vocab *voc = speck_vocab_from_gguf(speck_model_gguf(m));
        const char *text = "def add(x, y):\n    return x + y\n\n\ndef add(x, y):\n    return";
        int32_t pr[64];
        const int np = voc ? (int)speck_tokenize(voc, text, strlen(text), true, false, pr, 64) : -1;
        speck_vocab_free(voc);
        CHECK(np > 0, "tokenize: %s", speck_last_error());
        const int ns = quick ? 120 : 240;
        int *h = calloc((size_t)4 * V, sizeof(int));
        speck_sched_stats st0, st1;
        sample_run(m, pr, np, NULL, 0, ns, h, h + V, &st0);
        sample_run(m, pr, np, "prompt", 100000, ns, h + 2 * V, h + 3 * V, &st1);
        for (int pos = 0; pos < 2; pos++) {
            double x2;
            int df;
            const bool same = same_distribution(h + pos * V, h + (2 + pos) * V, V, &x2, &df);
            printf("sampling with drafts: token %d, chi-square %.1f, %d degrees of freedom\n",
                   pos + 2, x2, df);
            CHECK(same,
                  "token %d: drafts changed the sampled distribution (chi-square %.1f, df %d)",
                  pos + 2, x2, df);
        }
        CHECK(st0.drafted == 0 && st1.drafted > st1.draft_accepted && st1.draft_accepted > 0,
              "sampling drafts: %lld proposed, %lld accepted (want some of each)",
              (long long)st1.drafted, (long long)st1.draft_accepted);
        printf("sampling with drafts: %lld of %lld draft tokens accepted\n",
               (long long)st1.draft_accepted, (long long)st1.drafted);
        free(h);
    }

    // Chunked prefill: request 0 decodes while request 7's 110-token prompt goes in 24-token
    // chunks; request 0 gets a token in every pass.
    ps.prefill_chunk = quick ? 8 : 24;
    s = speck_sched_new(m, NULL, &ps);
    q = make(&rs[0], s, 0.0f, 1);
    speck_sched_submit(s, &q);
    speck_sched_step(s);
    speck_sched_step(s);
    q = make(&rs[7], s, 0.0f, 1);
    speck_sched_submit(s, &q);
    drive(s);
    bool every = rs[0].n_out == g_npred;
    for (int k = 1; k < rs[0].n_out; k++) every &= rs[0].pass_at[k] == rs[0].pass_at[k - 1] + 1;
    CHECK(every, "a decode waited for a prompt's prefill");
    CHECK(rs[7].pass_at[0] - rs[0].pass_at[0] >= 4, "the long prompt was not chunked");
    speck_sched_free(s);

    // Bad requests.
    s = speck_sched_new(m, NULL, &ps);
    q = make(&rs[0], s, 0.0f, 1);
    q.max_tokens = 0;
    CHECK(speck_sched_submit(s, &q) < 0, "max_tokens 0 accepted");
    q.max_tokens = 4;
    q.n_prompt = 0;
    CHECK(speck_sched_submit(s, &q) < 0, "empty prompt accepted");
    speck_sched_free(s);
    speck_model_free(m);
    return test_summary();
}
