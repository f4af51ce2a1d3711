// The mixture-of-experts FFN of the forward pass (llama.c): a router scores the experts for each
// token (softmax over n_expert logits), the n_expert_used most probable run — their weights
// renormalised over the chosen ones when hp.moe_norm — and a shared expert, when the model has
// one, runs for every token weighted by sigmoid(gate · x). Tokens are grouped by expert (the
// "slots": every (token, chosen expert) pair, ordered by expert, then by token), so each chosen
// expert's rows are read once per forward pass however many of the tokens chose it, and only the
// chosen experts' rows are read at all.
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "model/ctx_internal.h"

// A forward pass's routing: the slots of each expert (index n_expert: the shared expert, every
// token), their tokens and weights, where each token's choices landed.
typedef struct {
    int n_slots;  // n * n_expert_used (+ n with a shared expert)
    int *cnt;     // (n_expert + 1) tokens of each expert
    int *off;     // (n_expert + 2) first slot of each expert
    int *tok;     // (n_slots) the token of each slot
    float *w;     // (n, k1) the weight of token t's r-th choice
    int *slot;    // (n, k1) the slot of token t's r-th choice; r = n_expert_used: the shared one
    size_t *hoff; // (n_expert + 1) the expert's hidden rows (cnt, its width) in h / u, in floats
    int *sel;     // (n, n_expert_used) scratch: the chosen experts
    float *p;     // (n_expert) scratch: one token's probabilities
} moe_route;

struct speck_moe_scratch {
    int cap_n, threads;
    float *logits; // (n, n_expert) the router's
    float *h, *u;  // the chosen experts' gate (then activation) and up rows, per slot
    float *y;      // (n_slots, n_embd) each slot's expert output
    float *xg;     // batch path: (n, n_embd) an expert's gathered input rows
    char **tb;     // per thread: a route, gathered rows (n, n_embd), two activation buffers
    size_t tb_bytes, act_bytes;
};

static size_t align64(size_t n) {
    return (n + 63) & ~(size_t)63;
}

static int k1_of(const speck_hparams *hp) {
    return hp->n_expert_used + (hp->n_ff_shexp > 0);
}

static size_t route_bytes(const speck_hparams *hp, int n) {
    const size_t X = (size_t)hp->n_expert, slots = (size_t)n * k1_of(hp);
    return align64((X + 1 + X + 2 + slots + slots + (size_t)n * hp->n_expert_used) * sizeof(int)) +
           align64((slots + X) * sizeof(float)) + align64((X + 1) * sizeof(size_t));
}

static void route_at(char *p, const speck_hparams *hp, int n, moe_route *r) {
    const size_t X = (size_t)hp->n_expert, slots = (size_t)n * k1_of(hp);
    int *ip = (int *)p;
    r->cnt = ip, ip += X + 1;
    r->off = ip, ip += X + 2;
    r->tok = ip, ip += slots;
    r->slot = ip, ip += slots;
    r->sel = ip;
    p += align64((X + 1 + X + 2 + slots + slots + (size_t)n * hp->n_expert_used) * sizeof(int));
    r->w = (float *)p;
    r->p = r->w + slots;
    p += align64((slots + X) * sizeof(float));
    r->hoff = (size_t *)p;
}

static size_t hidden_floats(const speck_hparams *hp, int n) {
    return (size_t)n * hp->n_expert_used * hp->n_ff_exp + (size_t)n * hp->n_ff_shexp;
}

int speck_moe_reserve(speck_ctx *c, int n) {
    const speck_hparams *hp = &c->m->hp;
    if (hp->n_expert == 0) return 0;
    if (!c->expert_counts &&
        !(c->expert_counts = calloc((size_t)hp->n_layer * hp->n_expert, sizeof(int64_t))))
        return -1;
    if (!c->moe && !(c->moe = calloc(1, sizeof *c->moe))) return -1;
    speck_moe_scratch *s = c->moe;
    const int threads = omp_get_max_threads();
    if (n <= s->cap_n && threads <= s->threads) return 0;
    if (n < s->cap_n) n = s->cap_n;
    const int64_t wide = hp->n_ff_exp > hp->n_ff_shexp ? hp->n_ff_exp : hp->n_ff_shexp;
    const size_t E = (size_t)hp->n_embd, slots = (size_t)n * k1_of(hp);
    const size_t act = align64(speck_mm_act_bytes_max(n, wide > (int64_t)E ? wide : (int64_t)E));
    const size_t tb = route_bytes(hp, n) + align64((size_t)n * E * sizeof(float)) + 2 * act;
    float *lg = realloc(s->logits, (size_t)n * hp->n_expert * sizeof(float));
    if (lg) s->logits = lg;
    float *h = realloc(s->h, hidden_floats(hp, n) * sizeof(float));
    if (h) s->h = h;
    float *u = realloc(s->u, hidden_floats(hp, n) * sizeof(float));
    if (u) s->u = u;
    float *y = realloc(s->y, slots * E * sizeof(float));
    if (y) s->y = y;
    float *xg = realloc(s->xg, (size_t)n * E * sizeof(float));
    if (xg) s->xg = xg;
    if (!lg || !h || !u || !y || !xg) return -1;
    const int nt = threads > s->threads ? threads : s->threads;
    char **tbs = realloc(s->tb, (size_t)nt * sizeof *tbs);
    if (!tbs) return -1;
    s->tb = tbs;
    for (int t = s->threads; t < nt; t++) tbs[t] = NULL;
    s->threads = nt;
    for (int t = 0; t < nt; t++) {
        free(tbs[t]);
        if (!(tbs[t] = aligned_alloc(64, tb))) {
            s->cap_n = 0; // redo them all next time
            return -1;
        }
    }
    s->tb_bytes = tb;
    s->act_bytes = act;
    s->cap_n = n;
    return 0;
}

void speck_moe_free(speck_ctx *c) {
    speck_moe_scratch *s = c->moe;
    free(c->expert_counts);
    if (!s) return;
    for (int t = 0; s->tb && t < s->threads; t++) free(s->tb[t]);
    free(s->tb);
    free(s->logits);
    free(s->h);
    free(s->u);
    free(s->y);
    free(s->xg);
    free(s);
}

const int64_t *speck_ctx_expert_counts(const speck_ctx *c) {
    return c->m->hp.n_expert > 0 && c->expert_counts ? c->expert_counts : NULL;
}

void speck_ctx_reset_expert_counts(speck_ctx *c) {
    const speck_hparams *hp = &c->m->hp;
    if (c->expert_counts)
        memset(c->expert_counts, 0, (size_t)hp->n_layer * hp->n_expert * sizeof(int64_t));
}

// Width of expert e's hidden layer (e == n_expert: the shared expert).
static int64_t width(const speck_hparams *hp, int e) {
    return e == hp->n_expert ? hp->n_ff_shexp : hp->n_ff_exp;
}

// Expert e's gate, up, down (e == n_expert: the shared expert).
static const speck_weight *expert(const speck_layer *ly, const speck_hparams *hp, int e) {
    return e == hp->n_expert ? ly->shexp : ly->experts + 3 * (size_t)e;
}

// Routing of n tokens from the router's logits (n, n_expert) and, for the shared expert's gate,
// the normalised rows xn (n, n_embd). Each token's experts in order of probability (ties: the
// lower index), slots grouped by expert and within an expert by token. rank (n) or NULL: a token
// with rank[t] = r > 0 runs only its r-th most probable expert (SCMoE's weak routing, weighted
// as the family weighs one chosen expert: 1 when it renormalises, else its probability), plus
// the shared expert; its other choices are unused (slot -1).
static void route(const speck_layer *ly, const speck_hparams *hp, const float *logits,
                  const float *xn, int n, const int *rank, moe_route *r) {
    const int X = hp->n_expert, k = hp->n_expert_used, k1 = k1_of(hp);
    memset(r->cnt, 0, (size_t)(X + 1) * sizeof(int));
    for (int t = 0; t < n; t++) {
        const float *lg = logits + (size_t)t * X;
        float mx = -INFINITY, sum = 0.0f;
        for (int e = 0; e < X; e++) mx = lg[e] > mx ? lg[e] : mx;
        for (int e = 0; e < X; e++) sum += r->p[e] = expf(lg[e] - mx);
        int *sel = r->sel + (size_t)t * k;
        float chosen = 0.0f;
        if (rank && rank[t] > 0) { // a weak routing: the expert ranked rank[t] alone
            int best = -1;
            for (int j = 0; j < rank[t]; j++) {
                best = -1;
                for (int e = 0; e < X; e++)
                    if (r->p[e] >= 0 && (best < 0 || r->p[e] > r->p[best])) best = e;
                if (j + 1 < rank[t]) r->p[best] = -1.0f; // ranked above it: not run
            }
            sel[0] = best;
            r->w[(size_t)t * k1] = hp->moe_norm ? 1.0f : r->p[best] / sum;
            r->cnt[best]++;
            for (int j = 1; j < k; j++) {
                sel[j] = -1;
                r->w[(size_t)t * k1 + j] = 0.0f;
            }
            continue;
        }
        for (int j = 0; j < k; j++) { // k is small: selection, not a sort
            int best = -1;
            for (int e = 0; e < X; e++) // untaken: not -1 (a NaN of damaged weights counts)
                if (!(r->p[e] < 0) && (best < 0 || r->p[e] > r->p[best])) best = e;
            sel[j] = best;
            chosen += r->p[best];
            r->w[(size_t)t * k1 + j] = r->p[best];
            r->p[best] = -1.0f; // taken
            r->cnt[best]++;
        }
        const float div = hp->moe_norm ? chosen : sum;
        for (int j = 0; j < k; j++) r->w[(size_t)t * k1 + j] /= div;
    }
    if (k1 > k) r->cnt[X] = n;
    r->off[0] = 0;
    r->hoff[0] = 0;
    for (int e = 0; e <= X; e++) {
        r->off[e + 1] = r->off[e] + r->cnt[e];
        if (e < X) r->hoff[e + 1] = r->hoff[e] + (size_t)r->cnt[e] * hp->n_ff_exp;
    }
    r->n_slots = r->off[X + 1];
    // The slots, token by token, so that each expert's tokens come in order (cnt is the cursor
    // meanwhile).
    for (int e = 0; e <= X; e++) r->cnt[e] = r->off[e];
    for (int t = 0; t < n; t++)
        for (int j = 0; j < k; j++) {
            if (r->sel[(size_t)t * k + j] < 0) { // a weak routing's unused choices
                r->slot[(size_t)t * k1 + j] = -1;
                continue;
            }
            const int s = r->cnt[r->sel[(size_t)t * k + j]]++;
            r->tok[s] = t;
            r->slot[(size_t)t * k1 + j] = s;
        }
    for (int e = 0; e <= X; e++) r->cnt[e] = r->off[e + 1] - r->off[e];
    if (k1 > k) {
        for (int t = 0; t < n; t++) {
            const float *x = xn + (size_t)t * hp->n_embd;
            float d = 0.0f;
            for (int j = 0; j < hp->n_embd; j++) d += x[j] * ly->shexp_gate[j];
            r->tok[r->off[X] + t] = t;
            r->slot[(size_t)t * k1 + k] = r->off[X] + t;
            r->w[(size_t)t * k1 + k] = 1.0f / (1.0f + expf(-d));
        }
    }
}

static bool panels(const speck_weight *w) {
    return w->packed && speck_panel_supported(w->type);
}

static speck_type act_type(const speck_weight *w) {
    return panels(w) ? speck_panel_act_type(w->type) : w->type;
}

// Rows [o0, o1) of w times the prepared a into Y (ldy).
static void rows(const speck_weight *w, const speck_mm_act *a, int64_t o0, int64_t o1, float *Y,
                 int64_t ldy) {
    if (o0 >= o1) return;
    if (panels(w))
        speck_mm_panel_rows(w->type, w->packed, a, o0, o1, Y, ldy, 0);
    else
        speck_mm_rows(w->type, w->data, a, o0, o1, Y, ldy, 0);
}

// Expert e's input rows: its tokens' rows of xn gathered into buf (cnt, n_embd), or xn itself
// when they are all the tokens in order (the shared expert).
static const float *gather(const moe_route *r, const speck_hparams *hp, int e, const float *xn,
                           int n, float *buf) {
    const int cnt = r->cnt[e], E = hp->n_embd;
    if (cnt == n && e == hp->n_expert) return xn;
    for (int i = 0; i < cnt; i++)
        memcpy(buf + (size_t)i * E, xn + (size_t)r->tok[r->off[e] + i] * E,
               (size_t)E * sizeof(float));
    return buf;
}

// y[t][j0, j1) (=, or += when accumulate) sum over token t's choices of weight * slot output.
static void combine(const moe_route *r, const speck_hparams *hp, const float *ys, int n, float *y,
                    bool accumulate, int64_t j0, int64_t j1) {
    const int k1 = k1_of(hp);
    const size_t E = (size_t)hp->n_embd;
    for (int t = 0; t < n; t++) {
        float *yt = y + (size_t)t * E;
        if (!accumulate)
            for (int64_t j = j0; j < j1; j++) yt[j] = 0.0f;
        for (int c = 0; c < k1; c++) {
            if (r->slot[(size_t)t * k1 + c] < 0) continue;
            const float w = r->w[(size_t)t * k1 + c];
            const float *src = ys + (size_t)r->slot[(size_t)t * k1 + c] * E;
            for (int64_t j = j0; j < j1; j++) yt[j] += w * src[j];
        }
    }
}

// Rows [*a, *b) of n for this thread: an even split on multiples of 16 (panel boundaries).
static void split16(int64_t n, int tid, int nth, int64_t *a, int64_t *b) {
    const int64_t blocks = (n + 15) / 16;
    *a = blocks * tid / nth * 16;
    *b = blocks * (tid + 1) / nth * 16;
    if (*a > n) *a = n;
    if (*b > n) *b = n;
}

void speck_moe_stream(speck_ctx *c, int l, const float *xn, int n, float *y, bool accumulate,
                      int tid, int nth) {
    const speck_model *m = c->m;
    const speck_hparams *hp = &m->hp;
    const speck_layer *ly = &m->layers[l];
    speck_moe_scratch *s = c->moe;
    const int X = hp->n_expert, E = hp->n_embd;
    char *tb = s->tb[tid];
    moe_route r;
    route_at(tb, hp, n, &r);
    float *xg = (float *)(tb + route_bytes(hp, n));
    char *ab[2] = {(char *)xg + align64((size_t)n * E * sizeof(float)), NULL};
    ab[1] = ab[0] + s->act_bytes;
    speck_mm_act a, a2;
    // The router: this thread's rows of its logits.
    int64_t o0, o1;
    split16(X, tid, nth, &o0, &o1);
    if (o1 > o0) {
        speck_mm_act_prepare(act_type(&ly->router), xn, n, E, ab[0], &a);
        rows(&ly->router, &a, o0, o1, s->logits, X);
    }
    speck_barrier_wait(&c->bar, nth);
    route(ly, hp, s->logits, xn, n, c->moe_rank, &r); // every thread the same, into its own buffer
    if (tid == 0)
        for (int e = 0; e < X; e++) c->expert_counts[(size_t)l * X + e] += r.cnt[e];
    // Gate and up: the chosen experts' rows, cut into 16-row blocks shared evenly.
    int64_t total = 0;
    for (int e = 0; e <= X; e++)
        if (r.cnt[e]) total += (width(hp, e) + 15) / 16;
    int64_t b0 = total * tid / nth, b1 = total * (tid + 1) / nth, base = 0;
    for (int e = 0; e <= X && base < b1; e++) {
        if (!r.cnt[e]) continue;
        const int64_t F = width(hp, e), nb = (F + 15) / 16;
        const int64_t lo = b0 > base ? b0 - base : 0, hi = b1 - base < nb ? b1 - base : nb;
        base += nb;
        if (lo >= hi) continue;
        const int64_t r0 = lo * 16, r1 = hi * 16 < F ? hi * 16 : F;
        const speck_weight *w = expert(ly, hp, e);
        const int cnt = r.cnt[e];
        const float *xe = gather(&r, hp, e, xn, n, xg);
        float *h = s->h + r.hoff[e], *u = s->u + r.hoff[e];
        speck_mm_act_prepare(act_type(&w[0]), xe, cnt, E, ab[0], &a);
        rows(&w[0], &a, r0, r1, h, F);
        const speck_mm_act *au = &a;
        if (!speck_mm_act_fits(&a, act_type(&w[1]))) {
            speck_mm_act_prepare(act_type(&w[1]), xe, cnt, E, ab[1], &a2);
            au = &a2;
        }
        rows(&w[1], au, r0, r1, u, F);
        for (int i = 0; i < cnt; i++)
            speck_ffn_act(hp->ffn_act, h + (size_t)i * F + r0, u + (size_t)i * F + r0,
                          (size_t)(r1 - r0));
    }
    speck_barrier_wait(&c->bar, nth);
    // Down: this thread's columns of every chosen expert's output, then of the weighted sum.
    int64_t j0, j1;
    split16(E, tid, nth, &j0, &j1);
    if (j1 <= j0) return;
    for (int e = 0; e <= X; e++) {
        if (!r.cnt[e]) continue;
        const speck_weight *w = expert(ly, hp, e);
        speck_mm_act_prepare(act_type(&w[2]), s->h + r.hoff[e], r.cnt[e], width(hp, e), ab[0], &a);
        rows(&w[2], &a, j0, j1, s->y + (size_t)r.off[e] * E, E);
    }
    combine(&r, hp, s->y, n, y, accumulate, j0, j1);
}

static void matmul(const speck_weight *w, const float *x, int n, float *y) {
    speck_matmul_panels(w->type, w->data, w->packed, w->n_out, w->n_in, x, n, y);
}

void speck_moe_batch(speck_ctx *c, int l, const float *xn, int n, float *y, bool accumulate) {
    const speck_model *m = c->m;
    const speck_hparams *hp = &m->hp;
    const speck_layer *ly = &m->layers[l];
    speck_moe_scratch *s = c->moe;
    const int X = hp->n_expert, E = hp->n_embd;
    moe_route r;
    route_at(s->tb[0], hp, n, &r);
    matmul(&ly->router, xn, n, s->logits);
    route(ly, hp, s->logits, xn, n, c->moe_rank, &r);
    for (int e = 0; e < X; e++) c->expert_counts[(size_t)l * X + e] += r.cnt[e];
    // One expert at a time, each matmul parallel inside, each expert's rows read once.
    for (int e = 0; e <= X; e++) {
        const int cnt = r.cnt[e];
        if (!cnt) continue;
        const speck_weight *w = expert(ly, hp, e);
        const int64_t F = width(hp, e);
        const float *xe = gather(&r, hp, e, xn, n, s->xg);
        float *h = s->h + r.hoff[e], *u = s->u + r.hoff[e];
        matmul(&w[0], xe, cnt, h);
        matmul(&w[1], xe, cnt, u);
#pragma omp parallel for schedule(static) if (cnt > 1)
        for (int i = 0; i < cnt; i++)
            speck_ffn_act(hp->ffn_act, h + (size_t)i * F, u + (size_t)i * F, (size_t)F);
        matmul(&w[2], h, cnt, s->y + (size_t)r.off[e] * E);
    }
#pragma omp parallel
    {
        int64_t j0, j1;
        split16(E, omp_get_thread_num(), omp_get_num_threads(), &j0, &j1);
        if (j1 > j0) combine(&r, hp, s->y, n, y, accumulate, j0, j1);
    }
}
