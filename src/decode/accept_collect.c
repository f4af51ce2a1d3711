// Training data for the SpecDec++ acceptance head: the target decodes greedily from windows of a
// text while the draft proposes fixed-length chains, and every draft token whose predecessors were
// all accepted yields (its draft features, accepted or not) — the situations the head meets when
// it decides whether to draft one more token.
#include <stdlib.h>
#include <string.h>

#include "speck.h"

#define MAX_CHAIN 13 // verification batches stay below 14 rows (decode_internal.h)

speck_accept_collect_params speck_accept_collect_default(void) {
    return (speck_accept_collect_params){
        .n_draft = 8, .prompt_len = 64, .gen_len = 64, .max_windows = 0};
}

typedef struct {
    float *X;
    uint8_t *y;
    int64_t n, cap;
    int n_in;
} samples;

static int push(samples *s, const float *x, uint8_t y) {
    if (s->n == s->cap) {
        int64_t cap = s->cap ? s->cap * 2 : 4096;
        float *X = realloc(s->X, (size_t)cap * s->n_in * sizeof *X);
        if (X) s->X = X;
        uint8_t *Y = realloc(s->y, (size_t)cap);
        if (Y) s->y = Y;
        if (!X || !Y) return speck_set_error(SPECK_ERR_NOMEM, "out of memory");
        s->cap = cap;
    }
    memcpy(s->X + (size_t)s->n * s->n_in, x, (size_t)s->n_in * sizeof *x);
    s->y[s->n++] = y;
    return 0;
}

// One window: the target generates gen_len tokens after prompt (np tokens) greedily, verifying a
// K-token draft chain per pass. seq: room for np + gen_len + K + 1 tokens.
static int window(speck_ctx *tc, speck_ctx *dc, const int32_t *prompt, int np, int gen_len, int K,
                  int n_vocab, int n_embd, int32_t *seq, float *tl, float *dl, float *feat,
                  samples *out) {
    speck_ctx_truncate(tc, 0);
    speck_ctx_truncate(dc, 0);
    memcpy(seq, prompt, (size_t)np * sizeof *seq);
    int last = np - 1, n = np;
    if (speck_forward(tc, np, seq, NULL, NULL, &last, 1, tl)) return SPECK_ERR_ARG;
    seq[n++] = speck_argmax(tl, n_vocab); // the root: not yet in the target's cache
    int32_t draft[MAX_CHAIN], batch[MAX_CHAIN + 1];
    float *fx = feat; // (K, n_in) features of the chain's tokens
    const int n_in = n_embd + SPECK_ACCEPT_N_EXTRA;
    while (n - np < gen_len) {
        // The draft's cache follows seq[0..n-1); feed what it misses, then the root.
        int have = speck_ctx_n_past(dc);
        if (have > n - 1) speck_ctx_truncate(dc, have = n - 1);
        const int none = 0; // no logits wanted for the catch-up rows
        if (have < n - 1 && speck_forward(dc, n - 1 - have, seq + have, NULL, NULL, &none, 0, NULL))
            return SPECK_ERR_ARG;
        int32_t tok = seq[n - 1];
        for (int k = 0; k < K; k++) {
            int nh;
            if (speck_forward(dc, 1, &tok, NULL, NULL, NULL, 0, dl)) return SPECK_ERR_ARG;
            const float *h = speck_ctx_hidden(dc, &nh);
            speck_accept_features(h, n_embd, dl, n_vocab, fx + (size_t)k * n_in);
            tok = draft[k] = speck_argmax(dl, n_vocab);
        }
        // Verify root + chain in one pass; row r's argmax is the target's token after batch[r].
        batch[0] = seq[n - 1];
        memcpy(batch + 1, draft, (size_t)K * sizeof *draft);
        const int past = speck_ctx_n_past(tc);
        if (speck_forward(tc, K + 1, batch, NULL, NULL, NULL, 0, tl)) return SPECK_ERR_ARG;
        int m = 0;
        while (m < K && draft[m] == speck_argmax(tl + (size_t)m * n_vocab, n_vocab)) m++;
        for (int k = 0; k <= m && k < K; k++)
            if (push(out, fx + (size_t)k * n_in, k < m)) return SPECK_ERR_NOMEM;
        // Keep the root and the accepted tokens; the target's token after them is the new root.
        speck_ctx_truncate(tc, past + 1 + m);
        memcpy(seq + n, draft, (size_t)m * sizeof *draft);
        n += m;
        seq[n] = speck_argmax(tl + (size_t)m * n_vocab, n_vocab);
        n++;
    }
    return 0;
}

int speck_accept_collect(const speck_model *target, const speck_model *draft, const int32_t *text,
                         int64_t n_text, const speck_accept_collect_params *p, float **X,
                         uint8_t **y, int64_t *n) {
    const speck_hparams *ht = speck_model_hparams(target), *hd = speck_model_hparams(draft);
    *X = NULL, *y = NULL, *n = 0;
    if (ht->n_vocab != hd->n_vocab)
        return speck_set_error(SPECK_ERR_ARG, "accept data: the draft's vocabulary (%d) differs "
                                              "from the target's (%d)",
                               hd->n_vocab, ht->n_vocab);
    const int K = p->n_draft, np = p->prompt_len, G = p->gen_len;
    if (K < 1 || K > MAX_CHAIN || np < 1 || G < 1)
        return speck_set_error(SPECK_ERR_ARG,
                               "accept data: draft length %d (1..%d), prompt %d and generation %d "
                               "tokens (>= 1 each)",
                               K, MAX_CHAIN, np, G);
    if (n_text < np)
        return speck_set_error(SPECK_ERR_ARG, "accept data: %lld text tokens, fewer than one "
                                              "%d-token prompt",
                               (long long)n_text, np);
    const int n_ctx = np + G + K + 2;
    int64_t n_win = n_text / np;
    if (p->max_windows > 0 && n_win > p->max_windows) n_win = p->max_windows;
    const int64_t stride = (n_text - np) / (n_win > 1 ? n_win - 1 : 1);
    speck_ctx *tc = speck_ctx_new(target, n_ctx), *dc = speck_ctx_new(draft, n_ctx);
    const int n_in = hd->n_embd + SPECK_ACCEPT_N_EXTRA;
    samples S = {.n_in = n_in};
    int32_t *seq = malloc((size_t)(n_ctx + MAX_CHAIN + 2) * sizeof *seq);
    float *tl = malloc((size_t)(MAX_CHAIN + 1) * ht->n_vocab * sizeof *tl);
    float *dl = malloc((size_t)hd->n_vocab * sizeof *dl);
    float *feat = malloc((size_t)MAX_CHAIN * n_in * sizeof *feat);
    int rc = 0;
    if (!tc || !dc || !seq || !tl || !dl || !feat) {
        rc = tc && dc ? speck_set_error(SPECK_ERR_NOMEM, "out of memory") : SPECK_ERR_ARG;
        goto out;
    }
    for (int64_t w = 0; w < n_win && !rc; w++)
        rc = window(tc, dc, text + w * stride, np, G, K, hd->n_vocab, hd->n_embd, seq, tl, dl, feat,
                    &S);
out:
    speck_ctx_free(tc), speck_ctx_free(dc);
    free(seq), free(tl), free(dl), free(feat);
    if (rc) {
        free(S.X), free(S.y);
        return rc;
    }
    *X = S.X, *y = S.y, *n = S.n;
    return 0;
}
