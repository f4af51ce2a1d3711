// SCMoE (self-contrast mixture-of-experts decoding, Shi et al. 2024): one model, a strong path
// (its usual top-k routing) and a weak path (only the expert of one router rank), each with its own
// KV entries in one shared cache; the next token comes from the contrast of their logits under a
// plausibility mask. See include/speck.h and docs/decoding.md.
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "model/ctx_internal.h"

// Passes of up to this many tokens (both paths together) run as one batch: below the sizes at
// which the forward pass switches to its GEMM paths (src/decode/decode_internal.h), so each row is
// computed exactly as a single-token step computes it.
#define JOINT_MAX 14

struct speck_scmoe {
    const speck_model *m;
    speck_ctx *c;
    speck_scmoe_params p;
    int n_ctx;      // positions per path
    int n;          // positions in each path
    uint8_t *path;  // (2 n_ctx) the path of each cache entry: 0 strong, 1 weak
    float *lg;      // (2, n_vocab) the last pass's two output rows
    float *scores;  // (n_vocab) generate's scores
    int32_t *tok;   // (2 n_ctx) a pass's tokens
    int32_t *pos;   // (2 n_ctx) and positions
    int *rank;      // (2 n_ctx) and routing (0: top-k, r: the weak rank)
    uint8_t *mask;  // a pass's mask, grown on demand
    size_t mask_cap;
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

speck_scmoe_params speck_scmoe_default(void) {
    return (speck_scmoe_params){.alpha = 0.1f, .beta = 0.5f, .weak_rank = 2};
}

void speck_scmoe_scores(const float *strong, const float *weak, int n_vocab, float alpha,
                        float beta, float *out) {
    float mx = -INFINITY;
    for (int v = 0; v < n_vocab; v++) mx = strong[v] > mx ? strong[v] : mx;
    // p_strong(v) >= alpha * max p_strong  <=>  z_strong(v) >= max z_strong + log(alpha)
    const float cut = mx + logf(alpha);
    for (int v = 0; v < n_vocab; v++)
        out[v] = strong[v] >= cut ? (1.0f + beta) * strong[v] - beta * weak[v] : -INFINITY;
}

speck_scmoe *speck_scmoe_new(const speck_model *m, int n_ctx, speck_type kv_type,
                             const speck_scmoe_params *p) {
    const speck_hparams *hp = speck_model_hparams(m);
    const char *name = hp->name[0] ? hp->name : hp->arch;
    const speck_scmoe_params dp = speck_scmoe_default();
    if (!p) p = &dp;
    if (hp->n_expert == 0) {
        speck_set_error(SPECK_ERR_UNSUPPORTED,
                        "scmoe: %s is a dense model (%s, no experts); self-contrast decoding "
                        "needs a mixture of experts",
                        name, hp->arch);
        return NULL;
    }
    if (hp->n_swa > 0) {
        speck_set_error(SPECK_ERR_UNSUPPORTED,
                        "scmoe: %s has sliding-window layers (window %d), which scmoe's shared "
                        "cache does not support",
                        name, hp->n_swa);
        return NULL;
    }
    if (!(p->alpha > 0.0f && p->alpha <= 1.0f)) {
        speck_set_error(SPECK_ERR_ARG, "scmoe: alpha %g is outside (0, 1]", (double)p->alpha);
        return NULL;
    }
    if (!(p->beta >= 0.0f) || !isfinite(p->beta)) {
        speck_set_error(SPECK_ERR_ARG, "scmoe: beta %g is not a finite number >= 0",
                        (double)p->beta);
        return NULL;
    }
    if (p->weak_rank < 1 || p->weak_rank > hp->n_expert) {
        speck_set_error(SPECK_ERR_ARG, "scmoe: weak rank %d is outside 1..%d (the experts of %s)",
                        p->weak_rank, hp->n_expert, name);
        return NULL;
    }
    if (n_ctx <= 0) n_ctx = hp->n_ctx_train > 0 && hp->n_ctx_train < 4096 ? hp->n_ctx_train : 4096;
    speck_scmoe *s = calloc(1, sizeof *s);
    if (!s) goto oom;
    s->m = m;
    s->p = *p;
    s->n_ctx = n_ctx;
    if (!(s->c = speck_ctx_new_kv(m, 2 * n_ctx, kv_type))) {
        free(s);
        return NULL;
    }
    const size_t N = 2 * (size_t)n_ctx;
    s->path = malloc(N);
    s->lg = malloc(2 * (size_t)hp->n_vocab * sizeof(float));
    s->scores = malloc((size_t)hp->n_vocab * sizeof(float));
    s->tok = malloc(N * sizeof(int32_t));
    s->pos = malloc(N * sizeof(int32_t));
    s->rank = malloc(N * sizeof(int));
    if (!s->path || !s->lg || !s->scores || !s->tok || !s->pos || !s->rank) {
        speck_scmoe_free(s);
        goto oom;
    }
    return s;
oom:
    speck_set_error(SPECK_ERR_NOMEM, "scmoe: out of memory");
    return NULL;
}

void speck_scmoe_free(speck_scmoe *s) {
    if (!s) return;
    speck_ctx_free(s->c);
    free(s->path);
    free(s->lg);
    free(s->scores);
    free(s->tok);
    free(s->pos);
    free(s->rank);
    free(s->mask);
    free(s);
}

void speck_scmoe_reset(speck_scmoe *s) {
    speck_ctx_truncate(s->c, 0);
    s->n = 0;
}

int speck_scmoe_n_past(const speck_scmoe *s) {
    return s->n;
}

// One forward pass of the k tokens in s->tok/pos/rank, whose paths are path_new (k): each row
// sees its own path's cache entries and its own path's earlier new tokens. out_rows: two rows
// into s->lg.
static int pass(speck_scmoe *s, int k, const uint8_t *path_new, const int *out_rows,
                int n_out) {
    speck_ctx *c = s->c;
    const int past = speck_ctx_n_past(c), tot = past + k;
    const size_t need = (size_t)k * tot;
    if (need > s->mask_cap) {
        uint8_t *mk = realloc(s->mask, need);
        if (!mk) return speck_set_error(SPECK_ERR_NOMEM, "scmoe: out of memory");
        s->mask = mk;
        s->mask_cap = need;
    }
    bool causal = true; // one path only, and the cache holds nothing else: no mask
    for (int e = 0; e < past; e++) causal &= s->path[e] == path_new[0];
    for (int i = 0; i < k; i++) causal &= path_new[i] == path_new[0];
    for (int i = 0; i < k && !causal; i++) {
        uint8_t *row = s->mask + (size_t)i * tot;
        for (int e = 0; e < past; e++) row[e] = s->path[e] == path_new[i];
        for (int j = 0; j < k; j++) row[past + j] = j <= i && path_new[j] == path_new[i];
    }
    c->moe_rank = s->rank;
    const int rc = speck_forward(c, k, s->tok, s->pos, causal ? NULL : s->mask, out_rows, n_out,
                                 s->lg + (size_t)(2 - n_out) * speck_model_hparams(s->m)->n_vocab);
    c->moe_rank = NULL;
    if (rc) return rc;
    memcpy(s->path + past, path_new, (size_t)k);
    return 0;
}

int speck_scmoe_eval(speck_scmoe *s, int n, const int32_t *tokens, float *scores, float *strong,
                     float *weak) {
    const speck_hparams *hp = speck_model_hparams(s->m);
    if (n <= 0) return speck_set_error(SPECK_ERR_ARG, "scmoe: no tokens");
    if (s->n + n > s->n_ctx)
        return speck_set_error(SPECK_ERR_RANGE,
                               "scmoe: %d new tokens do not fit the context (%d of %d used)", n,
                               s->n, s->n_ctx);
    uint8_t path_new[JOINT_MAX];
    int rc;
    if (2 * n <= JOINT_MAX) { // both paths in one batch
        for (int p = 0; p < 2; p++)
            for (int i = 0; i < n; i++) {
                s->tok[p * n + i] = tokens[i];
                s->pos[p * n + i] = s->n + i;
                s->rank[p * n + i] = p ? s->p.weak_rank : 0;
                path_new[p * n + i] = (uint8_t)p;
            }
        const int rows[2] = {n - 1, 2 * n - 1};
        rc = pass(s, 2 * n, path_new, rows, 2);
    } else { // longer (a prompt): one pass per path, each as plain prefill runs it
        uint8_t *pn = malloc((size_t)n);
        if (!pn) return speck_set_error(SPECK_ERR_NOMEM, "scmoe: out of memory");
        rc = 0;
        for (int p = 0; p < 2 && !rc; p++) {
            for (int i = 0; i < n; i++) {
                s->tok[i] = tokens[i];
                s->pos[i] = s->n + i;
                s->rank[i] = p ? s->p.weak_rank : 0;
            }
            memset(pn, p, (size_t)n);
            const int row = n - 1;
            // pass() writes its one row at s->lg + (2 - 1) * n_vocab: shift the strong row down
            rc = pass(s, n, pn, &row, 1);
            if (!rc && p == 0)
                memcpy(s->lg, s->lg + hp->n_vocab, (size_t)hp->n_vocab * sizeof(float));
        }
        free(pn);
        if (rc) { // leave the cache as it was
            speck_ctx_truncate(s->c, 2 * s->n);
            return rc;
        }
    }
    if (rc) return rc;
    s->n += n;
    const float *zs = s->lg, *zw = s->lg + hp->n_vocab;
    if (scores) speck_scmoe_scores(zs, zw, hp->n_vocab, s->p.alpha, s->p.beta, scores);
    if (strong) memcpy(strong, zs, (size_t)hp->n_vocab * sizeof(float));
    if (weak) memcpy(weak, zw, (size_t)hp->n_vocab * sizeof(float));
    return 0;
}

int speck_scmoe_generate(speck_scmoe *s, const int32_t *prompt, int n_prompt, int n_predict,
                         speck_sampler *sampler, bool (*eog)(int32_t tok, void *user),
                         speck_token_cb cb, void *user, speck_spec_stats *st) {
    speck_spec_stats local;
    if (!st) st = &local;
    memset(st, 0, sizeof *st);
    st->n_prompt = n_prompt;
    st->stop_reason = "length";
    if (n_prompt <= 0) return speck_set_error(SPECK_ERR_ARG, "scmoe: empty prompt");
    if (n_prompt > s->n_ctx)
        return speck_set_error(SPECK_ERR_RANGE,
                               "scmoe: prompt of %d tokens exceeds the %d-token context", n_prompt,
                               s->n_ctx);
    const double t0 = now_s();
    speck_scmoe_reset(s);
    for (int i = 0; i < n_prompt; i++) speck_sampler_accept(sampler, prompt[i]);
    int rc = speck_scmoe_eval(s, n_prompt, prompt, s->scores, NULL, NULL);
    if (rc) return rc;
    st->t_prefill = now_s() - t0;
    while (st->n_generated < n_predict) {
        const int32_t tok = speck_sampler_sample(sampler, s->scores);
        speck_sampler_accept(sampler, tok);
        st->n_generated++;
        if (cb && !cb(tok, user)) {
            st->stop_reason = "callback";
            break;
        }
        if (eog && eog(tok, user)) {
            st->stop_reason = "end of generation";
            break;
        }
        if (st->n_generated == n_predict) break;
        if (s->n + 1 > s->n_ctx) {
            st->stop_reason = "context full";
            break;
        }
        if ((rc = speck_scmoe_eval(s, 1, &tok, s->scores, NULL, NULL))) return rc;
        st->n_passes++;
    }
    st->t_total = now_s() - t0;
    return 0;
}
