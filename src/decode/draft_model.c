// Draft-model drafter: a smaller model with the same vocabulary proposes a chain — greedy when the
// target decodes greedily, otherwise each token sampled from the draft's distribution q under the
// target's sampling settings, with q handed to the engine for the min(1, p/q) rule. Its own KV
// cache follows the accepted sequence (truncated back to the common prefix after each pass). With
// a SpecDec++ acceptance head, each token's confidence is the head's predicted acceptance.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "decode/decode_internal.h"

typedef struct {
    speck_drafter base;
    const speck_model *m;
    speck_ctx *ctx;
    int n_vocab;
    int32_t *cached; // tokens whose keys/values are in ctx, in order (ctx's n_past of them)
    int cap;
    float *logits; // (n_vocab)
    float *q;      // (SPECK_MAX_NODES, n_vocab) distributions sampled drafts were drawn from
    const speck_accept_head *head; // or NULL: the draft's own probability is the confidence
    float *feat;                   // (n_embd + SPECK_ACCEPT_N_EXTRA) the head's input
} draft_model;

// Probability of the argmax under softmax(logits): the draft's confidence in its own token.
static float top_prob(const float *l, int n, int32_t top) {
    double sum = 0;
    for (int i = 0; i < n; i++) sum += exp((double)l[i] - l[top]);
    return (float)(1.0 / sum);
}

static int ensure_cap(draft_model *d, int n) {
    if (n <= d->cap) return 0;
    int cap = n * 2;
    int32_t *c = realloc(d->cached, (size_t)cap * sizeof *c);
    if (!c) return speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    d->cached = c;
    d->cap = cap;
    return 0;
}

static int dm_propose(speck_drafter *dr, const int32_t *seq, int n, int max_nodes, int max_depth,
                      const speck_spec_params *p, speck_draft_tree *t) {
    draft_model *d = (draft_model *)dr;
    t->n = 0;
    int n_ctx = speck_ctx_n_ctx(d->ctx);
    if (n >= n_ctx) return 0; // the draft's context is full: no proposals, plain decoding
    if (ensure_cap(d, n + SPECK_MAX_NODES + 1)) return SPECK_ERR_NOMEM;
    // Roll the draft cache back to the longest prefix it shares with seq, then feed the rest.
    int have = speck_ctx_n_past(d->ctx), common = 0;
    while (common < have && common < n && d->cached[common] == seq[common]) common++;
    if (common == n) common = n - 1; // the root's logits are needed: recompute its entry
    speck_ctx_truncate(d->ctx, common);
    int last = n - common - 1;
    if (speck_forward(d->ctx, n - common, seq + common, NULL, NULL, &last, 1, d->logits))
        return SPECK_ERR_ARG;
    memcpy(d->cached + common, seq + common, (size_t)(n - common) * sizeof *seq);
    int depth = max_depth < max_nodes ? max_depth : max_nodes;
    float prod = 1.0f;
    speck_sampler *s = d->base.sampler;
    const bool sample = s && !speck_sampler_is_greedy(s);
    for (int k = 0; k < depth; k++) {
        int32_t tok;
        float conf, *q = d->q + (size_t)k * d->n_vocab;
        if (sample) { // tok ~ q; its probability is the draft's own acceptance estimate
            speck_sampler_probs(s, d->logits, q);
            tok = speck_draw(s, q, d->n_vocab);
            conf = q[tok];
        } else {
            tok = speck_argmax(d->logits, d->n_vocab);
            conf = d->head ? 0.0f : top_prob(d->logits, d->n_vocab, tok); // the head's, below
        }
        if (d->head) { // the features of the position that proposed tok: the last pass's row
            int rows;
            const float *h = speck_ctx_hidden(d->ctx, &rows);
            speck_accept_features(h + (size_t)(rows - 1) * speck_accept_head_n_embd(d->head),
                                  speck_accept_head_n_embd(d->head), d->logits, d->n_vocab,
                                  d->feat);
            conf = speck_accept_head_prob(d->head, d->feat);
        }
        if (k > 0 && !speck_keep_drafting(p, prod * conf)) break;
        prod *= conf;
        int node = speck_tree_add(t, tok, t->n - 1, conf);
        if (sample) t->q[node] = q;
        if (k + 1 == depth || speck_ctx_n_past(d->ctx) + 1 > n_ctx) break;
        int np = speck_ctx_n_past(d->ctx);
        if (speck_forward(d->ctx, 1, &tok, NULL, NULL, NULL, 0, d->logits)) return SPECK_ERR_ARG;
        d->cached[np] = tok;
    }
    return 0;
}

static void dm_update(speck_drafter *dr, const int32_t *seq, int n) {
    (void)dr, (void)seq, (void)n;
}

static void dm_reset(speck_drafter *dr) {
    draft_model *d = (draft_model *)dr;
    speck_ctx_truncate(d->ctx, 0);
}

static void dm_destroy(speck_drafter *dr) {
    draft_model *d = (draft_model *)dr;
    speck_ctx_free(d->ctx);
    free(d->cached);
    free(d->logits);
    free(d->q);
    free(d->feat);
    free(d);
}

speck_drafter *speck_drafter_model_new(const speck_model *draft, const speck_model *target,
                                       const speck_accept_head *head) {
    const speck_hparams *hd = speck_model_hparams(draft), *ht = speck_model_hparams(target);
    const speck_gguf *gd = speck_model_gguf(draft), *gt = speck_model_gguf(target);
    // Same vocabulary: same size and the same token strings (a reordered or different vocabulary
    // would make every draft token mean something else).
    int same = hd->n_vocab == ht->n_vocab;
    int64_t kd = speck_gguf_find_key(gd, "tokenizer.ggml.tokens");
    int64_t kt = speck_gguf_find_key(gt, "tokenizer.ggml.tokens");
    if (same && (kd < 0) != (kt < 0)) same = 0;
    if (same && kd >= 0) {
        if (speck_gguf_arr_n(gd, kd) != speck_gguf_arr_n(gt, kt)) same = 0;
        for (int64_t i = 0; same && i < speck_gguf_arr_n(gd, kd); i++) {
            uint64_t la, lb;
            const char *a = speck_gguf_arr_str(gd, kd, i, &la);
            const char *b = speck_gguf_arr_str(gt, kt, i, &lb);
            same = la == lb && !memcmp(a, b, la);
        }
    }
    if (!same) {
        speck_set_error(SPECK_ERR_ARG,
                        "draft model %s: its vocabulary (%d tokens) differs from the target "
                        "model's %s (%d tokens)",
                        speck_gguf_path(gd), hd->n_vocab, speck_gguf_path(gt), ht->n_vocab);
        return NULL;
    }
    if (head && speck_accept_head_n_embd(head) != hd->n_embd) {
        speck_set_error(SPECK_ERR_ARG,
                        "acceptance head: trained on a draft of width %d, the draft model %s has "
                        "width %d",
                        speck_accept_head_n_embd(head), speck_gguf_path(gd), hd->n_embd);
        return NULL;
    }
    draft_model *d = calloc(1, sizeof *d);
    if (!d) goto oom;
    d->head = head;
    if (head && !(d->feat = malloc((size_t)(hd->n_embd + SPECK_ACCEPT_N_EXTRA) * sizeof(float))))
        goto oom;
    d->m = draft;
    d->n_vocab = hd->n_vocab;
    d->ctx = speck_ctx_new(draft, 0);
    d->logits = malloc((size_t)d->n_vocab * sizeof(float));
    d->q = malloc((size_t)SPECK_MAX_NODES * d->n_vocab * sizeof(float));
    if (!d->ctx || !d->logits || !d->q) goto oom;
    d->base.kind = SPECK_DRAFT_MODEL;
    d->base.propose = dm_propose;
    d->base.update = dm_update;
    d->base.reset = dm_reset;
    d->base.destroy = dm_destroy;
    return &d->base;
oom:
    if (d) dm_destroy(&d->base);
    speck_set_error(SPECK_ERR_NOMEM, "out of memory creating the draft model's context");
    return NULL;
}
