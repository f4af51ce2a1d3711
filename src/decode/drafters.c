// Drafters that need no draft model: prompt lookup (n-gram match in the context), ADED
// (adaptive tri-gram statistics of the model's own output) and Jacobi iteration with an n-gram
// pool harvested from its trajectories.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "decode/decode_internal.h"

/* ------------------------------------------------------------------------------------------ */
/* Prompt lookup / Aggressive Decoding                                                         */
/* ------------------------------------------------------------------------------------------ */

// Find earlier occurrences of the longest suffix n-gram (ngram_max down to 1) and propose the
// tokens that followed them. Distinct continuations (by first token) become separate branches,
// most recent match first. conf = share of matches that agree with the chosen token.
static int prompt_propose(speck_drafter *dr, const int32_t *seq, int n, int max_nodes,
                          int max_depth, const speck_spec_params *p, speck_draft_tree *t) {
    (void)dr;
    t->n = 0;
    enum { MAX_MATCH = 64 };
    for (int g = p->ngram_max < n ? p->ngram_max : n - 1; g >= 1 && t->n == 0; g--) {
        const int32_t *suf = seq + n - g;
        int starts[MAX_MATCH], nm = 0; // continuation start index of each match, newest first
        for (int j = n - g - 1; j >= 0 && nm < MAX_MATCH; j--)
            if (!memcmp(seq + j, suf, (size_t)g * sizeof *seq) && j + g < n) starts[nm++] = j + g;
        if (!nm) continue;
        for (int b = 0; b < nm && t->n < max_nodes; b++) {
            int first = seq[starts[b]];
            if (speck_tree_has_branch(t, first)) continue;
            int roots = 0;
            for (int i = 0; i < t->n; i++) roots += t->parent[i] == -1;
            if (roots >= p->tree_width) break;
            float prod = 1.0f;
            int parent = -1;
            for (int k = 0; k < max_depth && t->n < max_nodes && starts[b] + k < n; k++) {
                int32_t tok = seq[starts[b] + k];
                // agreement among the matches that share this branch's path so far
                int agree = 0, total = 0;
                for (int o = 0; o < nm; o++) {
                    if (starts[o] + k >= n) continue;
                    if (memcmp(seq + starts[o], seq + starts[b], (size_t)k * sizeof *seq)) continue;
                    total++;
                    agree += seq[starts[o] + k] == tok;
                }
                float conf = total ? (float)agree / total : 0.5f;
                // a short n-gram match is weak evidence: temper it by the match length
                conf *= (float)g / (float)(g + 1);
                if (k > 0 && !speck_keep_drafting(p, prod * conf)) break;
                prod *= conf;
                parent = speck_tree_add(t, tok, parent, conf);
            }
        }
    }
    return 0;
}

static void noop_update(speck_drafter *d, const int32_t *seq, int n) {
    (void)d, (void)seq, (void)n;
}
static void noop_reset(speck_drafter *d) {
    (void)d;
}
static void plain_destroy(speck_drafter *d) {
    free(d);
}

speck_drafter *speck_drafter_prompt_new(void) {
    speck_drafter *d = calloc(1, sizeof *d);
    if (!d) {
        speck_set_error(SPECK_ERR_NOMEM, "out of memory");
        return NULL;
    }
    d->kind = SPECK_DRAFT_PROMPT;
    d->propose = prompt_propose;
    d->update = noop_update;
    d->reset = noop_reset;
    d->destroy = plain_destroy;
    return d;
}

/* ------------------------------------------------------------------------------------------ */
/* ADED: adaptive tri-gram statistics                                                          */
/* ------------------------------------------------------------------------------------------ */

#define ADED_CANDS 6

typedef struct {
    int32_t tok;
    float count;          // decayed occurrence count of (a, b) -> tok
    uint16_t tried, hits; // how often drafted after (a, b) and accepted
} aded_cand;

typedef struct {
    uint64_t key; // (a << 32 | b) + 1; 0 = empty slot
    float total;
    aded_cand c[ADED_CANDS];
} aded_slot;

typedef struct {
    speck_drafter base;
    aded_slot *tab;
    size_t cap, used; // open addressing, power-of-two capacity
    int n_seen;       // sequence prefix already counted
    uint64_t steps;   // drafts made (exploration bonus clock)
    int32_t *warm;    // warm-up stream kept so reset can replay it
    int64_t n_warm;
    // context of the last proposal, for feedback
    int32_t last_a, last_b;
} aded;

static uint64_t hash64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return x;
}

static aded_slot *aded_find(aded *a, int32_t x, int32_t y, int create) {
    uint64_t key = (((uint64_t)(uint32_t)x << 32) | (uint32_t)y) + 1;
    if (create && (a->used + 1) * 4 > a->cap * 3) { // grow at 75 % load
        size_t ncap = a->cap ? a->cap * 2 : 4096;
        aded_slot *nt = calloc(ncap, sizeof *nt);
        if (!nt) return NULL;
        for (size_t i = 0; i < a->cap; i++) {
            if (!a->tab[i].key) continue;
            size_t h = hash64(a->tab[i].key) & (ncap - 1);
            while (nt[h].key) h = (h + 1) & (ncap - 1);
            nt[h] = a->tab[i];
        }
        free(a->tab);
        a->tab = nt;
        a->cap = ncap;
    }
    if (!a->cap) return NULL;
    size_t h = hash64(key) & (a->cap - 1);
    while (a->tab[h].key && a->tab[h].key != key) h = (h + 1) & (a->cap - 1);
    if (a->tab[h].key) return &a->tab[h];
    if (!create) return NULL;
    memset(&a->tab[h], 0, sizeof a->tab[h]);
    a->tab[h].key = key;
    for (int i = 0; i < ADED_CANDS; i++) a->tab[h].c[i].tok = -1;
    a->used++;
    return &a->tab[h];
}

// Count trigram (x, y) -> z. Older evidence decays so the statistics follow the text being
// generated now (the adaptive part): each new observation of a context scales its counts.
static void aded_add(aded *a, int32_t x, int32_t y, int32_t z) {
    aded_slot *s = aded_find(a, x, y, 1);
    if (!s) return;
    const float decay = 0.97f;
    int free_i = -1, min_i = 0;
    for (int i = 0; i < ADED_CANDS; i++) {
        s->c[i].count *= decay;
        if (s->c[i].tok == z) free_i = i;
    }
    s->total = s->total * decay + 1.0f;
    if (free_i < 0) {
        for (int i = 0; i < ADED_CANDS; i++) {
            if (s->c[i].tok < 0) {
                free_i = i;
                break;
            }
            if (s->c[i].count < s->c[min_i].count) min_i = i;
        }
        if (free_i < 0) free_i = min_i; // evict the weakest continuation
        s->c[free_i] = (aded_cand){z, 0.0f, 0, 0};
    }
    s->c[free_i].count += 1.0f;
}

static void aded_update(speck_drafter *d, const int32_t *seq, int n) {
    aded *a = (aded *)d;
    for (int i = a->n_seen > 2 ? a->n_seen : 2; i < n; i++)
        aded_add(a, seq[i - 2], seq[i - 1], seq[i]);
    a->n_seen = n;
}

// Score of a continuation: exploitation = its share of the context's (decayed) counts, weighted
// by how often it was accepted when drafted; exploration = a UCB bonus for rarely tried ones.
static float aded_score(const aded *a, const aded_slot *s, const aded_cand *c) {
    float share = c->count / (s->total > 0 ? s->total : 1.0f);
    float acc = (c->hits + 1.0f) / (c->tried + 2.0f);
    float bonus = 0.15f * sqrtf(logf((float)a->steps + 2.0f) / (c->tried + 1.0f));
    return share * acc + bonus * share;
}

static int aded_best(const aded *a, const aded_slot *s, const int32_t *exclude, int n_ex,
                     float *conf) {
    int best = -1;
    float bs = -1.0f;
    for (int i = 0; i < ADED_CANDS; i++) {
        if (s->c[i].tok < 0) continue;
        int skip = 0;
        for (int k = 0; k < n_ex; k++) skip |= exclude[k] == s->c[i].tok;
        if (skip) continue;
        float sc = aded_score(a, s, &s->c[i]);
        if (sc > bs) {
            bs = sc;
            best = i;
        }
    }
    if (best >= 0) *conf = s->c[best].count / (s->total > 0 ? s->total : 1.0f);
    return best >= 0 ? s->c[best].tok : -1;
}

static int aded_propose(speck_drafter *d, const int32_t *seq, int n, int max_nodes, int max_depth,
                        const speck_spec_params *p, speck_draft_tree *t) {
    aded *a = (aded *)d;
    t->n = 0;
    if (n < 2) return 0;
    a->steps++;
    a->last_a = seq[n - 2];
    a->last_b = seq[n - 1];
    const aded_slot *s0 = aded_find(a, seq[n - 2], seq[n - 1], 0);
    if (!s0) return 0;
    int32_t firsts[8];
    int nf = 0;
    int width = p->tree_width < 8 ? p->tree_width : 8;
    // Branches: the best continuations of the current context, each extended greedily.
    while (nf < width && t->n < max_nodes) {
        float conf;
        int32_t tok = aded_best(a, s0, firsts, nf, &conf);
        if (tok < 0) break;
        firsts[nf++] = tok;
        int32_t x = seq[n - 1], y = tok;
        int parent = -1;
        float prod = 1.0f;
        for (int k = 0; k < max_depth && t->n < max_nodes; k++) {
            if (k > 0) {
                const aded_slot *s = aded_find(a, x, y, 0);
                if (!s) break;
                tok = aded_best(a, s, NULL, 0, &conf);
                if (tok < 0) break;
                x = y;
                y = tok;
            }
            if (k > 0 && !speck_keep_drafting(p, prod * conf)) break;
            prod *= conf;
            parent = speck_tree_add(t, tok, parent, conf);
        }
    }
    return 0;
}

static void aded_feedback(speck_drafter *d, const speck_draft_tree *t, const uint8_t *acc) {
    aded *a = (aded *)d;
    // Credit the first-level candidates (their context is known: the last two tokens).
    aded_slot *s = aded_find(a, a->last_a, a->last_b, 0);
    if (!s) return;
    for (int i = 0; i < t->n; i++) {
        if (t->parent[i] != -1) continue;
        for (int c = 0; c < ADED_CANDS; c++)
            if (s->c[c].tok == t->tok[i]) {
                if (s->c[c].tried < 60000) s->c[c].tried++, s->c[c].hits += acc[i];
            }
    }
}

static void aded_reset(speck_drafter *d) {
    aded *a = (aded *)d;
    // Statistics persist across generations (that is how ADED adapts); only the per-sequence
    // cursor restarts. The warm-up stream was counted once at creation.
    a->n_seen = 0;
}

static void aded_destroy(speck_drafter *d) {
    aded *a = (aded *)d;
    free(a->tab);
    free(a->warm);
    free(a);
}

speck_drafter *speck_drafter_aded_new(const speck_spec_params *p, int n_vocab) {
    (void)n_vocab;
    aded *a = calloc(1, sizeof *a);
    if (!a) {
        speck_set_error(SPECK_ERR_NOMEM, "out of memory");
        return NULL;
    }
    a->base.kind = SPECK_DRAFT_ADED;
    a->base.propose = aded_propose;
    a->base.update = aded_update;
    a->base.feedback = aded_feedback;
    a->base.reset = aded_reset;
    a->base.destroy = aded_destroy;
    for (int64_t i = 2; p->warm_tokens && i < p->n_warm; i++)
        aded_add(a, p->warm_tokens[i - 2], p->warm_tokens[i - 1], p->warm_tokens[i]);
    return &a->base;
}

/* ------------------------------------------------------------------------------------------ */
/* Jacobi iteration + n-gram pool (lookahead-style)                                            */
/* ------------------------------------------------------------------------------------------ */

#define JACOBI_N 4       // n-gram length kept in the pool (first token + 3 continuation tokens)
#define JACOBI_POOL 8192 // pool slots (hash by first token, a few n-grams each)
#define JACOBI_PER 4

typedef struct {
    speck_drafter base;
    int n_vocab;
    // The Jacobi window: guesses for the tokens after the root, refined by every pass.
    int32_t window[SPECK_MAX_NODES];
    int n_window;
    int32_t root; // the token the window continues
    // Pool: for a first token, up to JACOBI_PER (JACOBI_N-1)-token continuations seen in
    // trajectories or text, most recent first.
    int32_t pool[JACOBI_POOL][JACOBI_PER][JACOBI_N];
    uint8_t pool_n[JACOBI_POOL];
    const int32_t *last_seq; // for observe: the proposal context
    int last_n;
} jacobi;

static void pool_add(jacobi *j, const int32_t *g) {
    uint32_t h = (uint32_t)g[0] % JACOBI_POOL;
    for (int i = 0; i < j->pool_n[h]; i++)
        if (!memcmp(j->pool[h][i], g, sizeof j->pool[h][i])) return;
    int n = j->pool_n[h] < JACOBI_PER ? j->pool_n[h]++ : JACOBI_PER - 1;
    memmove(j->pool[h][1], j->pool[h][0], (size_t)n * sizeof j->pool[h][0]);
    memcpy(j->pool[h][0], g, sizeof j->pool[h][0]);
}

static int jacobi_propose(speck_drafter *d, const int32_t *seq, int n, int max_nodes, int max_depth,
                          const speck_spec_params *p, speck_draft_tree *t) {
    jacobi *j = (jacobi *)d;
    t->n = 0;
    int32_t root = seq[n - 1];
    int depth = max_depth < SPECK_MAX_NODES ? max_depth : SPECK_MAX_NODES;
    // Branch 1: pool n-grams starting with the root (verified guesses from earlier trajectories).
    uint32_t h = (uint32_t)root % JACOBI_POOL;
    int width = p->tree_width;
    for (int i = 0; i < j->pool_n[h] && t->n < max_nodes && width > 0; i++) {
        if (j->pool[h][i][0] != root) continue;
        if (speck_tree_has_branch(t, j->pool[h][i][1])) continue;
        int parent = -1;
        for (int k = 1; k < JACOBI_N && k <= depth && t->n < max_nodes; k++)
            parent = speck_tree_add(t, j->pool[h][i][k], parent, 0.5f);
        width--;
    }
    // Branch 2: the Jacobi window (if it continues this root), or a fresh window seeded from
    // the context (a copy of the tokens that followed the root's last occurrence).
    if (width > 0 && t->n < max_nodes) {
        if (j->root != root || j->n_window == 0) {
            j->n_window = 0;
            for (int i = n - 2; i >= 0 && !j->n_window; i--)
                if (seq[i] == root)
                    for (int k = i + 1; k < n && j->n_window < depth; k++)
                        j->window[j->n_window++] = seq[k];
            while (j->n_window < depth && j->n_window < 1) j->window[j->n_window++] = root;
            j->root = root;
        }
        int parent = -1;
        for (int k = 0; k < j->n_window && k < depth && t->n < max_nodes; k++) {
            if (k == 0 && speck_tree_has_branch(t, j->window[0])) break;
            parent = speck_tree_add(t, j->window[k], parent, 0.3f);
        }
    }
    return 0;
}

// Jacobi step: row r's argmax is the model's guess for the token after batch token r. Along the
// window chain, the guesses after the accepted prefix become the next window; every chain's
// (token, next guesses) n-grams enter the pool.
static void jacobi_observe(speck_drafter *d, const speck_draft_tree *t, const int32_t *amax,
                           int n_path) {
    jacobi *j = (jacobi *)d;
    // Collect the window chain: the last root-child chain in the tree (proposed last).
    int start = -1;
    for (int i = t->n - 1; i >= 0; i--)
        if (t->parent[i] == -1) {
            start = i;
            break;
        }
    int32_t traj[SPECK_MAX_NODES + 2];
    int nt = 0;
    traj[nt++] = j->root;
    for (int i = start; i >= 0 && i < t->n; i++) {
        if (i != start && t->parent[i] != i - 1) break;
        traj[nt++] = t->tok[i];
    }
    // Guesses: the argmax after root is row 0, after node i is row i + 1.
    int32_t guess[SPECK_MAX_NODES + 2];
    int ng = 0;
    guess[ng++] = amax[0];
    for (int i = start; i >= 0 && i < t->n; i++) {
        if (i != start && t->parent[i] != i - 1) break;
        guess[ng++] = amax[i + 1];
    }
    // Harvest n-grams (token, guess...) along the trajectory.
    for (int i = 0; i + 1 < nt && i + JACOBI_N - 1 <= ng; i++) {
        int32_t g[JACOBI_N];
        g[0] = traj[i];
        for (int k = 1; k < JACOBI_N; k++) g[k] = guess[i + k - 1];
        pool_add(j, g);
    }
    // New window: shift out what was accepted (plus the bonus token).
    int shift = n_path + 1;
    j->n_window = 0;
    for (int i = shift; i < ng; i++) j->window[j->n_window++] = guess[i];
    j->root = -1; // set on the next propose from the real sequence
    (void)j->last_seq;
}

static void jacobi_update(speck_drafter *d, const int32_t *seq, int n) {
    jacobi *j = (jacobi *)d;
    // The window continues the new last token only if it was computed for it; keep it and let
    // propose adopt it as the continuation of seq[n-1].
    if (j->root == -1) j->root = seq[n - 1];
    // Text n-grams also seed the pool (cheap and often useful for repetitive output).
    if (n >= JACOBI_N) pool_add(j, seq + n - JACOBI_N);
}

static void jacobi_reset(speck_drafter *d) {
    jacobi *j = (jacobi *)d;
    j->n_window = 0;
    j->root = -1;
}

speck_drafter *speck_drafter_jacobi_new(int n_vocab) {
    jacobi *j = calloc(1, sizeof *j);
    if (!j) {
        speck_set_error(SPECK_ERR_NOMEM, "out of memory");
        return NULL;
    }
    j->n_vocab = n_vocab;
    j->root = -1;
    j->base.kind = SPECK_DRAFT_JACOBI;
    j->base.propose = jacobi_propose;
    j->base.update = jacobi_update;
    j->base.observe = jacobi_observe;
    j->base.reset = jacobi_reset;
    j->base.destroy = plain_destroy;
    return &j->base;
}
