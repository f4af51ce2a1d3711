// The draft-and-verify engine: one forward pass verifies a chain or tree of candidate tokens,
// the acceptance rule keeps the output identical to plain decoding (token-identical for greedy,
// distribution-identical for sampling), and the KV cache keeps only the accepted path.
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "decode/decode_internal.h"

#define CONF_BINS 8

struct speck_decoder {
    const speck_model *model;
    speck_ctx *ctx;
    speck_spec_params p;
    speck_drafter *drafters[4];
    int n_drafters;
    int n_vocab;
    float *logits; // (SPECK_MAX_NODES + 1, n_vocab)
    float *probs;  // (n_vocab)
    int32_t *seq;  // prompt + generated
    int seq_cap;
    // auto_budget: seconds of one verification pass of n tokens (index n, 1..max_nodes + 1),
    // decayed counts of accepted and rejected candidate positions, drafting seconds per token.
    double cost[SPECK_MAX_NODES + 2];
    double n_acc, n_rej, draft_per_tok;
    // Seconds a pass spends outside the forward, smoothed: over_plain on passes that verify no
    // candidate (sampling the token, the drafters' updates, a proposal pruned to nothing),
    // over_tree on passes that do, less the drafting itself (the tree mask, the acceptance walk,
    // the cache compaction, the drafters' feedback). Both are counted against the pass's gain.
    double over_plain, over_tree;
    // Probes while drafting does not pay: after at least 16 plain passes, and once the plain
    // passes since the last probe took 50 times what that probe cost beyond a plain pass (so
    // probing costs at most ~2 %, a draft model's catch-up on the skipped tokens included).
    int passes_at_zero;
    double since_probe, probe_cost;
    bool probing;
    // auto_budget with cheap drafters: the acceptance observed for candidates whose drafter
    // confidence fell in each of CONF_BINS equal bins (decayed counts; prior 1 of 2).
    double bin_acc[CONF_BINS], bin_n[CONF_BINS];
    speck_gmatch *gm; // constrained output (not owned), or NULL
};

void speck_decoder_set_grammar(speck_decoder *d, speck_gmatch *g) {
    d->gm = g;
}

// Constrained output: drop the candidates the grammar rejects (with their subtrees) before
// verification. Exact for greedy and for point-mass proposals (the target, masked, gives them
// probability 0 anyway); a candidate sampled from a drafter distribution q stays, since the
// residual distribution after its rejection must be computed with that q.
static void grammar_filter(speck_gmatch *g, speck_draft_tree *t, bool greedy) {
    const speck_draft_tree o = *t; // read from the original while t is compacted in place
    int map[SPECK_MAX_NODES], k = 0; // new index, or < 0: no descendant may be kept
    for (int i = 0; i < o.n; i++) {
        map[i] = -1;
        int par = o.parent[i];
        if (par >= 0 && map[par] < 0) continue; // below a dropped node
        int32_t path[SPECK_MAX_NODES];
        int n = 0;
        for (int j = i; j >= 0; j = o.parent[j]) n++;
        for (int j = i, at = n; j >= 0; j = o.parent[j]) path[--at] = o.tok[j];
        bool ok = speck_gmatch_check(g, path, n) == n;
        if (!ok && (greedy || !o.q[i])) continue;
        t->tok[k] = o.tok[i], t->parent[k] = par >= 0 ? map[par] : -1;
        t->conf[k] = o.conf[i], t->q[k] = o.q[i];
        map[i] = ok ? k : -1; // a rejected q-sampled node stays for the rejection rule only
        k++;
    }
    t->n = k;
}

// The sampling distribution of logits lg (n_vocab, masked in place when needed) under the
// grammar, into d->probs. Greedy: the unmasked choice is checked first, and when the grammar
// allows it the point mass is the same as after masking (masking only removes other tokens), so
// the mask is computed only when the model's choice is rejected. 0: nothing is allowed.
static int grammar_probs(speck_decoder *d, speck_sampler *s, float *lg) {
    if (speck_sampler_is_greedy(s)) {
        speck_sampler_probs(s, lg, d->probs);
        int32_t a = speck_argmax(d->probs, d->n_vocab);
        if (speck_gmatch_check(d->gm, &a, 1) == 1) return 1;
    }
    if (speck_gmatch_mask(d->gm, lg) == 0) return 0;
    speck_sampler_probs(s, lg, d->probs);
    return 1;
}

speck_spec_params speck_spec_default(void) {
    speck_spec_params p;
    memset(&p, 0, sizeof p);
    // Four candidates a pass, in chains of at most four: on this project's 2-core VM verifying
    // more costs more than the drafters' acceptance gains. `bench-decode` on the default code
    // model (30 prompts, greedy, two runs each): the fixed-budget strategies 0.74-1.04x plain
    // decoding with 12 nodes (the previous default), 0.93-1.24x with 4 (3: 1.01-1.21x, 6:
    // 0.81-1.23x); the auto budget, which chooses up to max_nodes, 1.17-1.21x -> 1.26-1.32x (it
    // also calibrates fewer sizes). On the 1.1B Q4_0 shape, whose weights stream from memory, 5
    // tokens cost ~1.2-1.8 single passes and 13 ~3.5, so longer drafts pay only when nearly all of
    // them is accepted there too.
    p.max_draft = 4;
    p.max_nodes = 4;
    p.tree_width = 1;
    p.ngram_max = 3;
    return p;
}

static const char *g_kind_names[] = {"none", "prompt", "aded", "jacobi", "model"};

const char *speck_draft_kind_name(speck_draft_kind k) {
    return (unsigned)k < 5 ? g_kind_names[k] : "?";
}

int speck_spec_parse_kinds(const char *s, speck_draft_kind kinds[4]) {
    int n = 0;
    for (int i = 0; i < 4; i++) kinds[i] = SPECK_DRAFT_NONE;
    while (*s) {
        const char *e = strchr(s, ',');
        size_t len = e ? (size_t)(e - s) : strlen(s);
        int found = -1;
        for (int k = 0; k < 5; k++)
            if (strlen(g_kind_names[k]) == len && !strncasecmp(s, g_kind_names[k], len)) found = k;
        if (found < 0)
            return speck_set_error(SPECK_ERR_ARG,
                                   "unknown drafter '%.*s' (prompt, aded, jacobi, model, none)",
                                   (int)len, s);
        if (found != SPECK_DRAFT_NONE) {
            if (n == 4) return speck_set_error(SPECK_ERR_ARG, "at most 4 drafters");
            kinds[n++] = (speck_draft_kind)found;
        }
        s += len + (e ? 1 : 0);
    }
    return n;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

speck_decoder *speck_decoder_new(const speck_model *model, speck_ctx *c,
                                 const speck_spec_params *p) {
    speck_decoder *d = calloc(1, sizeof *d);
    if (!d) goto oom;
    d->model = model;
    d->ctx = c;
    d->p = p ? *p : speck_spec_default();
    if (d->p.max_draft <= 0) d->p.max_draft = 1;
    if (d->p.max_nodes <= 0 || d->p.max_nodes > SPECK_MAX_NODES) d->p.max_nodes = SPECK_MAX_NODES;
    if (d->p.tree_width <= 0) d->p.tree_width = 1;
    if (d->p.ngram_max <= 0) d->p.ngram_max = 3;
    d->n_vocab = speck_model_hparams(model)->n_vocab;
    d->n_acc = d->n_rej = 1; // prior: acceptance rate 1/2
    for (int b = 0; b < CONF_BINS; b++) d->bin_acc[b] = 1, d->bin_n[b] = 2;
    for (int i = 0; i < 4 && d->p.kinds[i] != SPECK_DRAFT_NONE; i++) {
        speck_drafter *dr = NULL;
        switch (d->p.kinds[i]) {
        case SPECK_DRAFT_PROMPT:
            dr = speck_drafter_prompt_new();
            break;
        case SPECK_DRAFT_ADED:
            dr = speck_drafter_aded_new(&d->p, d->n_vocab);
            break;
        case SPECK_DRAFT_JACOBI:
            dr = speck_drafter_jacobi_new(d->n_vocab);
            break;
        case SPECK_DRAFT_MODEL:
            if (!d->p.draft_model) {
                speck_set_error(SPECK_ERR_ARG, "drafter 'model' needs a draft model");
                speck_decoder_free(d);
                return NULL;
            }
            dr = speck_drafter_model_new(d->p.draft_model, model, d->p.accept_head);
            break;
        default:
            break;
        }
        if (!dr) { // the constructor recorded why
            speck_decoder_free(d);
            return NULL;
        }
        d->drafters[d->n_drafters++] = dr;
    }
    d->logits = malloc((size_t)(SPECK_MAX_NODES + 1) * d->n_vocab * sizeof(float));
    d->probs = malloc((size_t)d->n_vocab * sizeof(float));
    if (!d->logits || !d->probs) goto oom;
    return d;
oom:
    speck_decoder_free(d);
    speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    return NULL;
}

void speck_decoder_free(speck_decoder *d) {
    if (!d) return;
    for (int i = 0; i < d->n_drafters; i++) d->drafters[i]->destroy(d->drafters[i]);
    free(d->logits);
    free(d->probs);
    free(d->seq);
    free(d);
}

static int seq_push(speck_decoder *d, int n, int32_t tok) {
    if (n >= d->seq_cap) {
        int cap = d->seq_cap ? d->seq_cap * 2 : 1024;
        int32_t *s = realloc(d->seq, (size_t)cap * sizeof *s);
        if (!s) return speck_set_error(SPECK_ERR_NOMEM, "out of memory");
        d->seq = s;
        d->seq_cap = cap;
    }
    d->seq[n] = tok;
    return 0;
}

// Tree attention mask for the batch [root, nodes...] over the n_past cached entries.
// mask: (1 + t->n, n_past + 1 + t->n); pos: (1 + t->n)
static void build_mask(const speck_draft_tree *t, int n_past, uint8_t *mask, int32_t *pos) {
    int nb = 1 + t->n, total = n_past + nb;
    memset(mask, 0, (size_t)nb * total);
    for (int r = 0; r < nb; r++) {
        uint8_t *m = mask + (size_t)r * total;
        memset(m, 1, (size_t)n_past + 1); // cache + root
        int depth = 0;
        for (int a = r - 1; a >= 0; a = t->parent[a]) {
            m[n_past + 1 + a] = 1;
            depth++;
        }
        pos[r] = n_past + depth;
    }
}

static bool is_chain(const speck_draft_tree *t) {
    for (int i = 0; i < t->n; i++)
        if (t->parent[i] != i - 1) return false;
    return true;
}

// Nodes that stay within budget: the first `keep` nodes (topological order keeps it a tree).
static void clip_tree(speck_draft_tree *t, int keep) {
    if (keep < 0) keep = 0;
    if (t->n > keep) t->n = keep;
}

// auto_budget: time verification passes of n = 1 .. max_nodes + 1 tokens on top of the current
// cache (best of 5 at a few sizes, linear in between), then drop them from the cache again. The
// sizes are timed round-robin after one untimed round, so that a slow spell of a shared machine
// (or the threads waking up after the prefill) does not fall on one size only: timed one size
// after the other, n = 1 came out slower than n = 2 on the default model.
static int calibrate_cost(speck_decoder *d, int32_t tok) {
    static const int sizes[] = {1, 2, 3, 4, 6, 8, 11, 15};
    enum { NS = sizeof sizes / sizeof sizes[0] };
    const int n_past = speck_ctx_n_past(d->ctx), top = d->p.max_nodes + 1;
    int32_t batch[SPECK_MAX_NODES + 1];
    for (int i = 0; i <= SPECK_MAX_NODES; i++) batch[i] = tok;
    int ns[NS], k = 0;
    for (int i = 0; i < NS; i++) {
        const int n = sizes[i] < top ? sizes[i] : top;
        if ((k > 0 && n <= ns[k - 1]) || n_past + n > speck_ctx_n_ctx(d->ctx)) break;
        ns[k++] = n;
    }
    double best[NS];
    for (int i = 0; i < k; i++) best[i] = INFINITY;
    for (int r = -1; r < 5; r++) // best of 5: one slow run (shared machine) must not decide
        for (int i = 0; i < k; i++) {
            double t0 = now_s();
            int rc = speck_forward(d->ctx, ns[i], batch, NULL, NULL, NULL, 0, d->logits);
            double t = now_s() - t0;
            speck_ctx_truncate(d->ctx, n_past);
            if (rc) return rc;
            if (r >= 0 && t < best[i]) best[i] = t;
        }
    int prev = 0;
    for (int i = 0; i < k; i++) {
        const int n = ns[i];
        d->cost[n] = best[i];
        for (int j = prev + 1; j < n && prev > 0; j++) // linear between measured sizes
            d->cost[j] = d->cost[prev] + (best[i] - d->cost[prev]) * (j - prev) / (n - prev);
        prev = n;
    }
    for (int j = prev + 1; j <= top; j++) // the context ran out: extrapolate the last slope
        d->cost[j] = prev > 1 ? d->cost[prev] + (d->cost[prev] - d->cost[prev - 1]) * (j - prev)
                              : d->cost[1] * j;
    return 0;
}

// While the budget rule keeps choosing no candidates, a pass now and then still verifies
// `probe_k` of them, so that the decayed acceptance estimates see a recovery and drafting
// resumes; probes are spaced so that they cost about 2 % of the plain passes' time.
static int probe(speck_decoder *d, int best_k, int probe_k) {
    d->probing = false;
    if (best_k > 0) {
        d->passes_at_zero = 0;
        d->since_probe = 0;
        return best_k;
    }
    if (++d->passes_at_zero < 16 || d->since_probe * 0.02 < d->probe_cost) return 0;
    d->passes_at_zero = 0;
    d->since_probe = 0;
    d->probing = true;
    return probe_k;
}

// auto_budget: the candidate count k maximising expected tokens per second, where a pass with
// k candidates yields (1 - a^(k+1)) / (1 - a) tokens for acceptance rate a (the geometric model
// of speculative decoding) and costs cost[k + 1] plus drafting k tokens. When not drafting looks
// best, every 16th pass still drafts 2 tokens so the acceptance estimate can recover.
static int choose_budget(speck_decoder *d) {
    const double a = d->n_acc / (d->n_acc + d->n_rej);
    int best_k = 0;
    double best = 1.0 / (d->cost[1] + d->over_plain), gain = 1, ak = 1;
    for (int k = 1; k <= d->p.max_nodes; k++) {
        ak *= a;
        gain += ak;
        double rate = gain / (d->cost[k + 1] + k * d->draft_per_tok + d->over_tree);
        if (rate > best) {
            best = rate;
            best_k = k;
        }
    }
    return probe(d, best_k, 2);
}

static int conf_bin(float c) {
    int b = (int)(c * CONF_BINS);
    return b < 0 ? 0 : b >= CONF_BINS ? CONF_BINS - 1 : b;
}

// auto_budget for drafters whose proposals cost next to nothing (prompt lookup, ADED, Jacobi):
// they propose a full tree, and this keeps the nodes worth verifying. A node's chance of being
// accepted is its parent's times the calibrated acceptance of its confidence bin, times the
// chance that its earlier siblings (tried first) were rejected. Nodes in decreasing order of
// that chance form ancestor-closed prefixes; the prefix maximising expected tokens per second,
// (1 + sum of chances) / cost(k + 1), is kept, in the original topological order. With nothing
// worth verifying, every 16th pass still keeps two nodes so that the bins keep learning.
static void prune_tree(speck_decoder *d, speck_draft_tree *t) {
    if (t->n == 0) return;
    double P[SPECK_MAX_NODES], rest[SPECK_MAX_NODES + 1]; // rest: P(no earlier child accepted)
    for (int i = 0; i <= SPECK_MAX_NODES; i++) rest[i] = 1.0;
    for (int i = 0; i < t->n; i++) {
        const int b = conf_bin(t->conf[i]), par = t->parent[i];
        const double c = d->bin_acc[b] / d->bin_n[b], up = par < 0 ? 1.0 : P[par];
        P[i] = up * rest[par + 1] * c;
        rest[par + 1] *= 1.0 - c;
    }
    int order[SPECK_MAX_NODES];
    for (int i = 0; i < t->n; i++) order[i] = i;
    for (int i = 1; i < t->n; i++) // insertion sort, stable: a parent precedes its children
        for (int j = i; j > 0 && P[order[j]] > P[order[j - 1]]; j--) {
            int x = order[j];
            order[j] = order[j - 1], order[j - 1] = x;
        }
    int best_k = 0;
    double best = 1.0 / (d->cost[1] + d->over_plain), gain = 1.0;
    for (int k = 1; k <= t->n; k++) {
        gain += P[order[k - 1]];
        // drafting is already paid for; the tree's bookkeeping is not
        const double rate = gain / (d->cost[k + 1] + d->over_tree);
        if (rate > best) best = rate, best_k = k;
    }
    best_k = probe(d, best_k, t->n < 2 ? t->n : 2);
    bool keep[SPECK_MAX_NODES] = {0};
    for (int k = 0; k < best_k; k++) keep[order[k]] = true;
    int map[SPECK_MAX_NODES], n = 0;
    for (int i = 0; i < t->n; i++) {
        if (!keep[i]) continue;
        map[i] = n;
        t->tok[n] = t->tok[i];
        t->parent[n] = t->parent[i] < 0 ? -1 : map[t->parent[i]];
        t->conf[n] = t->conf[i];
        t->q[n] = t->q[i];
        n++;
    }
    t->n = n;
}

// After a verification pass: each node that was tried (its parent accepted, no earlier sibling
// accepted) counts towards its confidence bin, accepted or not.
static void learn_bins(speck_decoder *d, const speck_draft_tree *t, const uint8_t *accepted) {
    bool sibling_taken[SPECK_MAX_NODES + 1] = {0};
    for (int i = 0; i < t->n; i++) {
        const int par = t->parent[i];
        if ((par >= 0 && !accepted[par]) || sibling_taken[par + 1]) continue;
        const int b = conf_bin(t->conf[i]);
        d->bin_acc[b] = 0.99 * d->bin_acc[b] + (accepted[i] ? 1 : 0);
        d->bin_n[b] = 0.99 * d->bin_n[b] + 1;
        if (accepted[i]) sibling_taken[par + 1] = true;
    }
}

int speck_spec_accept(const speck_draft_tree *t, int parent, float *probs, int n_vocab,
                      double (*uniform)(void *), void *rng) {
    for (int c = 0; c < t->n; c++) {
        if (t->parent[c] != parent) continue;
        float pc = probs[t->tok[c]];
        const float *q = t->q[c];
        if (q) { // sampled from q: accept with min(1, p/q), else p <- norm(max(0, p - q))
            if (uniform(rng) * q[t->tok[c]] < pc) return c;
            double rest = 0;
            for (int v = 0; v < n_vocab; v++) rest += fmaxf(probs[v] - q[v], 0.0f);
            if (rest > 0) // 0 only when p = q up to rounding: p stays as it is
                for (int v = 0; v < n_vocab; v++)
                    probs[v] = (float)(fmaxf(probs[v] - q[v], 0.0f) / rest);
            continue;
        }
        if (pc <= 0.0f) continue;
        if (pc >= 1.0f || uniform(rng) < pc) return c;
        // Rejected: remove it from the target distribution and renormalise.
        probs[t->tok[c]] = 0.0f;
        float rest = 1.0f - pc;
        for (int v = 0; v < n_vocab; v++) probs[v] /= rest;
    }
    return -1;
}

static double sampler_uniform(void *s) {
    return speck_sampler_uniform(s);
}

int speck_decode(speck_decoder *d, const int32_t *prompt, int n_prompt, int n_predict,
                 speck_sampler *s, bool (*eog)(int32_t, void *), speck_token_cb cb, void *user,
                 speck_spec_stats *st) {
    speck_spec_stats local;
    if (!st) st = &local;
    memset(st, 0, sizeof *st);
    st->n_prompt = n_prompt;
    st->stop_reason = "length";
    if (n_prompt <= 0) return speck_set_error(SPECK_ERR_ARG, "decode: empty prompt");
    int n_ctx = speck_ctx_n_ctx(d->ctx);
    if (n_prompt > n_ctx)
        return speck_set_error(SPECK_ERR_RANGE,
                               "decode: prompt of %d tokens exceeds the %d-token "
                               "context",
                               n_prompt, n_ctx);
    double t_start = now_s();
    speck_ctx_truncate(d->ctx, 0);
    for (int i = 0; i < d->n_drafters; i++) {
        d->drafters[i]->reset(d->drafters[i]);
        d->drafters[i]->sampler = s;
    }
    int n = 0;
    for (int i = 0; i < n_prompt; i++) {
        if (seq_push(d, n, prompt[i])) return SPECK_ERR_NOMEM;
        n++;
        speck_sampler_accept(s, prompt[i]);
    }
    // Prefill the whole prompt exactly as plain decoding does and draw the first token from its
    // last row. From then on the cache holds seq[0..n-1) and the last token is the root of the
    // next verification: every later row is computed in a batch of < 16 rows, bit-identical to a
    // single-token step, so greedy output equals plain greedy decoding token for token.
    int last_row = n - 1, rc = 0;
    if (speck_forward(d->ctx, n, d->seq, NULL, NULL, &last_row, 1, d->logits) < 0)
        return SPECK_ERR_ARG;
    st->t_prefill = now_s() - t_start;
    if (n_predict <= 0) goto out_early;
    {
        if (d->gm ? !grammar_probs(d, s, d->logits)
                  : (speck_sampler_probs(s, d->logits, d->probs), false)) {
            st->stop_reason = "grammar dead end";
            goto out_early;
        }
        int32_t first = speck_draw(s, d->probs, d->n_vocab);
        speck_sampler_accept(s, first);
        if (d->gm && (rc = speck_gmatch_accept(d->gm, first))) return rc;
        if ((rc = seq_push(d, n, first))) return rc;
        n++;
        st->n_generated = 1;
        if (cb && !cb(first, user)) {
            st->stop_reason = "callback";
            goto out_early;
        }
        if (eog && eog(first, user)) {
            st->stop_reason = "end of generation";
            goto out_early;
        }
        if (d->gm && speck_gmatch_done(d->gm)) {
            st->stop_reason = "grammar complete";
            goto out_early;
        }
    }
    for (int i = 0; i < d->n_drafters; i++) d->drafters[i]->update(d->drafters[i], d->seq, n);
    // Sampling budgets by expected gain unless told not to: there acceptance is often too low
    // for drafting to pay, and the decoder must then fall back to plain steps on its own.
    const bool budgeted =
        d->p.auto_budget || (!d->p.fixed_budget && !speck_sampler_is_greedy(s));
    if (budgeted && d->n_drafters > 0 && d->cost[1] == 0 &&
        (rc = calibrate_cost(d, d->seq[n - 1])))
        return rc;

    speck_draft_tree tree;
    uint8_t *fullmask = NULL;
    int32_t pos[SPECK_MAX_NODES + 1], batch[SPECK_MAX_NODES + 1], amax[SPECK_MAX_NODES + 1];
    uint8_t accepted[SPECK_MAX_NODES];
    while (st->n_generated < n_predict) {
        int n_past = speck_ctx_n_past(d->ctx);
        if (n_past + 1 > n_ctx) {
            st->stop_reason = "context full";
            break;
        }
        // Draft: the first drafter with a proposal wins.
        double t0 = now_s();
        tree.n = 0;
        // auto_budget: cheap drafters propose everything and prune_tree() keeps what pays;
        // costly ones (a draft model) are told the budget from the global acceptance rate.
        const bool tuned = budgeted && d->cost[1] > 0;
        const bool cheap = tuned && d->draft_per_tok * d->p.max_nodes < 0.05 * d->cost[1];
        int budget = tuned && !cheap ? choose_budget(d) : d->p.max_nodes;
        int room = n_ctx - n_past - 1, left = n_predict - st->n_generated - 1;
        if (budget > room) budget = room;
        if (budget > left) budget = left;
        int used = -1;
        for (int i = 0; i < d->n_drafters && budget > 0; i++) {
            rc = d->drafters[i]->propose(d->drafters[i], d->seq, n, budget, d->p.max_draft, &d->p,
                                         &tree);
            if (rc) goto out;
            if (tree.n > 0) {
                used = i;
                break;
            }
        }
        clip_tree(&tree, budget);
        double t_draft = now_s() - t0;
        // Drafting cost per proposed candidate, smoothed over recent passes. Not from a probe:
        // a draft model's first proposal after idle passes catches up on all of them at once,
        // a cost that drafting every pass spreads over the passes.
        if (tree.n > 0 && !d->probing)
            d->draft_per_tok = d->draft_per_tok > 0 ? 0.9 * d->draft_per_tok + 0.1 * t_draft / tree.n
                                                    : t_draft / tree.n;
        if (cheap) {
            prune_tree(d, &tree);
            t_draft = now_s() - t0;
        }
        if (d->gm && tree.n > 0) {
            grammar_filter(d->gm, &tree, speck_sampler_is_greedy(s));
            t_draft = now_s() - t0;
        }
        st->t_draft += t_draft;

        // Verify root + candidates in one pass.
        int nb = 1 + tree.n;
        batch[0] = d->seq[n - 1];
        for (int i = 0; i < tree.n; i++) batch[1 + i] = tree.tok[i];
        const uint8_t *m = NULL;
        const int32_t *pp = NULL;
        if (!is_chain(&tree)) {
            uint8_t *fm = realloc(fullmask, (size_t)nb * (n_past + nb));
            if (!fm) {
                rc = speck_set_error(SPECK_ERR_NOMEM, "out of memory");
                goto out;
            }
            fullmask = fm;
            build_mask(&tree, n_past, fullmask, pos);
            m = fullmask;
            pp = pos;
        }
        const double t_fwd0 = now_s();
        if ((rc = speck_forward(d->ctx, nb, batch, pp, m, NULL, 0, d->logits)) < 0) goto out;
        const double t_fwd = now_s() - t_fwd0;
        st->n_passes++;
        st->n_drafted += tree.n;

        // Walk the tree: at each accepted node try its children in order (recursive rejection
        // sampling for point-mass candidates; for greedy, accept the child equal to the argmax).
        int path[SPECK_MAX_NODES + 1], n_path = 0, cur = -1; // cur: -1 = root (row 0)
        int32_t bonus = -1;
        const char *gstop = NULL; // the grammar ended the generation in this pass
        memset(accepted, 0, sizeof accepted);
        for (int r = 0; r < nb; r++)
            amax[r] = speck_argmax(d->logits + (size_t)r * d->n_vocab, d->n_vocab);
        const double t_walk0 = now_s();
        for (;;) {
            int row = cur + 1;
            float *lg = d->logits + (size_t)row * d->n_vocab;
            if (!d->gm) {
                speck_sampler_probs(s, lg, d->probs);
            } else if (!grammar_probs(d, s, lg)) {
                gstop = "grammar dead end";
                break;
            }
            int next = speck_spec_accept(&tree, cur, d->probs, d->n_vocab, sampler_uniform, s);
            if (next < 0) {
                bonus = speck_draw(s, d->probs, d->n_vocab);
                break;
            }
            accepted[next] = 1;
            path[n_path++] = next;
            speck_sampler_accept(s, tree.tok[next]);
            cur = next;
            if (d->gm) { // the filter let only grammatical candidates through
                if ((rc = speck_gmatch_accept(d->gm, tree.tok[next]))) goto out;
                if (speck_gmatch_done(d->gm)) {
                    gstop = "grammar complete";
                    break;
                }
            }
        }
        const double t_walk = now_s() - t_walk0; // sampling n_path + 1 rows, as plain steps do
        if (bonus >= 0) {
            speck_sampler_accept(s, bonus);
            if (d->gm && (rc = speck_gmatch_accept(d->gm, bonus))) goto out;
            if (d->gm && speck_gmatch_done(d->gm)) gstop = "grammar complete";
        }
        if (tuned) learn_bins(d, &tree, accepted);
        if (used >= 0 && d->drafters[used]->feedback)
            d->drafters[used]->feedback(d->drafters[used], &tree, accepted);
        for (int i = 0; i < d->n_drafters; i++)
            if (d->drafters[i]->observe)
                d->drafters[i]->observe(d->drafters[i], &tree, amax, n_path);
        st->n_accepted += n_path;
        if (tree.n > 0) {      // acceptance rate per candidate position, forgetting old passes
            bool more = false; // a candidate existed below the last accepted node
            for (int c = 0; c < tree.n && !more; c++) more = tree.parent[c] == cur;
            d->n_acc = 0.98 * d->n_acc + n_path;
            d->n_rej = 0.98 * d->n_rej + (more ? 1 : 0);
        }


        // Keep the root and the accepted path in the cache.
        bool prefix = true;
        for (int i = 0; i < n_path; i++) prefix &= path[i] == i;
        if (prefix) {
            speck_ctx_truncate(d->ctx, n_past + 1 + n_path);
        } else {
            int keep[SPECK_MAX_NODES + 1];
            int *idx = malloc((size_t)(n_past + 1 + n_path) * sizeof *idx);
            if (!idx) {
                rc = speck_set_error(SPECK_ERR_NOMEM, "out of memory");
                goto out;
            }
            for (int i = 0; i <= n_past; i++) idx[i] = i;
            for (int i = 0; i < n_path; i++) keep[i] = n_past + 1 + path[i];
            memcpy(idx + n_past + 1, keep, (size_t)n_path * sizeof *idx);
            rc = speck_ctx_compact(d->ctx, idx, n_past + 1 + n_path);
            free(idx);
            if (rc) goto out;
        }

        // Emit accepted tokens then the bonus token.
        bool stop = false;
        for (int i = 0; i <= n_path && !stop; i++) {
            int32_t tok = i < n_path ? tree.tok[path[i]] : bonus;
            if (tok < 0) break; // the grammar ended it: no bonus token
            if ((rc = seq_push(d, n, tok))) goto out;
            n++;
            st->n_generated++;
            if (cb && !cb(tok, user)) {
                st->stop_reason = "callback";
                stop = true;
            } else if (eog && eog(tok, user)) {
                st->stop_reason = "end of generation";
                stop = true;
            } else if (st->n_generated >= n_predict) {
                stop = true;
            }
        }
        for (int i = 0; i < d->n_drafters; i++) d->drafters[i]->update(d->drafters[i], d->seq, n);
        if (tuned) { // this pass's time outside the forward (and the drafting, if it verified any)
            const double t_pass = now_s() - t0, over = t_pass - t_fwd;
            if (d->probing) // what the probe cost beyond a plain pass
                d->probe_cost = fmax(t_pass - d->cost[1] - d->over_plain, 0.0);
            else if (tree.n == 0)
                d->since_probe += t_pass;
            d->probing = false;
            if (tree.n > 0)
                d->over_tree = 0.9 * d->over_tree +
                               0.1 * fmax(over - t_draft - t_walk * n_path / (n_path + 1), 0.0);
            else
                d->over_plain = 0.9 * d->over_plain + 0.1 * over;
        }
        if (!stop && gstop) st->stop_reason = gstop, stop = true;
        if (stop) break;
    }
out:
    free(fullmask);
out_early:
    st->t_total = now_s() - t_start;
    return rc;
}
