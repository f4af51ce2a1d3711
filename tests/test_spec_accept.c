// Speculative sampling's acceptance rule, exactly: for a small vocabulary, a fixed target
// distribution p and draft distribution q, the output distribution of one verification step
// (accept a candidate or draw the bonus token from the residual) is computed from the engine's own
// speck_spec_accept and must equal p. No sampling: every uniform draw the rule takes is resolved
// into the interval of values that accept and the interval that rejects, so the probability of
// each branch is the length of its interval. A rule that is off by one percentage point anywhere
// shows up as an error of ~0.01 against a tolerance of 1e-6.
//
// usage: test_spec_accept
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "decode/decode_internal.h"
#include "test_util.h"

#define V_MAX 8
#define MAX_DRAWS 16

// The uniform draws of one run: fixed values for the first n_fixed, `probe` for the next one,
// and the run's count of draws taken.
typedef struct {
    double fixed[MAX_DRAWS];
    int n_fixed;
    double probe;
    int n_taken;
} draws;

static double next_draw(void *p) {
    draws *d = p;
    double u = d->n_taken < d->n_fixed ? d->fixed[d->n_taken] : d->probe;
    d->n_taken++;
    return u;
}

typedef struct {
    int child;   // accepted child, or -1 (then `rest` is the bonus distribution)
    int n_taken; // uniform draws the rule took
    float rest[V_MAX];
} outcome;

static outcome run(const speck_draft_tree *t, int parent, const float *p, int V, const double *u,
                   int k, double probe) {
    draws d = {.n_fixed = k, .probe = probe};
    memcpy(d.fixed, u, (size_t)k * sizeof *u);
    outcome o;
    memcpy(o.rest, p, (size_t)V * sizeof *p);
    o.child = speck_spec_accept(t, parent, o.rest, V, next_draw, &d);
    o.n_taken = d.n_taken;
    return o;
}

// The run ended at draw k (after draws u[0..k)) with a child accepted.
static bool accepts_at(const outcome *o, int k) {
    return o->n_taken == k + 1 && o->child >= 0;
}

// Adds w times the output distribution of the step, given the first k draws u[0..k), to out.
// Where the rule takes draw k it must accept (one child) for u in [0, a) and reject for u in
// [a, 1): the rule "accept when u < threshold" that makes min(1, p/q) a probability. a is found
// by bisection and the interval shape checked on a grid, then both branches are followed.
static void explore(const speck_draft_tree *t, int parent, const float *p, int V, double *u, int k,
                    double w, double *out, const char *label) {
    outcome o = run(t, parent, p, V, u, k, 0.5);
    if (o.n_taken <= k) { // the outcome no longer depends on draws: a leaf
        if (o.child >= 0) {
            out[t->tok[o.child]] += w;
        } else {
            for (int v = 0; v < V; v++) out[v] += w * o.rest[v];
        }
        return;
    }
    if (k + 1 >= MAX_DRAWS) {
        CHECK(0, "%s: more than %d draws", label, MAX_DRAWS);
        return;
    }
    // Bisection for a: lo accepts (or is 0), hi rejects (or is 1).
    double lo = 0, hi = 1;
    outcome at0 = run(t, parent, p, V, u, k, 0.0);
    int child = at0.child;
    if (!accepts_at(&at0, k)) {
        hi = 0;
    } else {
        for (int it = 0; it < 64 && hi - lo > 0; it++) {
            double mid = lo + (hi - lo) / 2;
            if (mid <= lo || mid >= hi) break;
            outcome m = run(t, parent, p, V, u, k, mid);
            if (accepts_at(&m, k) && m.child == child)
                lo = mid;
            else
                hi = mid;
        }
    }
    const double a = hi;
    // The values at which draw k accepts `child` must be the interval [0, a). (Past a, the run
    // may still end at this draw: a later sibling can be certain once the others are removed.)
    int bad = 0;
    for (int i = 0; i < 257; i++) {
        double g = (i + 0.5) / 257;
        outcome m = run(t, parent, p, V, u, k, g);
        bool acc = accepts_at(&m, k) && m.child == child;
        if (acc != (g < a)) bad++;
    }
    CHECK(bad == 0, "%s: draw %d accepts on a set that is not [0, %.6f) (%d grid points off)",
          label, k, a, bad);
    if (a > 0) out[t->tok[child]] += w * a;
    if (a < 1) {
        u[k] = a + (1 - a) / 2; // any rejecting value: the residual does not depend on which
        explore(t, parent, p, V, u, k + 1, w * (1 - a), out, label);
    }
}

static double g_worst; // largest deviation seen, printed at the end

// Output distribution of one step, compared with p. q: the draft distribution the single
// candidate is sampled from (summing over its value), or NULL for the tree as given.
static void expect_target(const char *label, const speck_draft_tree *t, int parent, const float *p,
                          const float *q, int V) {
    double out[V_MAX] = {0};
    double u[MAX_DRAWS];
    if (q) {
        speck_draft_tree one = {.n = 1};
        one.parent[0] = -1;
        one.q[0] = q;
        for (int x = 0; x < V; x++) {
            if (q[x] <= 0) continue; // never drafted
            one.tok[0] = x;
            double part[V_MAX] = {0};
            explore(&one, -1, p, V, u, 0, 1.0, part, label);
            for (int v = 0; v < V; v++) out[v] += q[x] * part[v];
        }
    } else {
        explore(t, parent, p, V, u, 0, 1.0, out, label);
    }
    double worst = 0, total = 0;
    int at = 0;
    for (int v = 0; v < V; v++) {
        total += out[v];
        if (fabs(out[v] - p[v]) > worst) worst = fabs(out[v] - p[v]), at = v;
    }
    if (worst > g_worst) g_worst = worst;
    // p, q and the residuals are float: each entry carries a few float roundings (~1e-7); the
    // bisection resolves thresholds to 2^-52. A one-point error in the rule is 1e-2.
    CHECK(worst < 1e-6 && fabs(total - 1) < 1e-6,
          "%s: output distribution differs from the target at token %d: %.7f vs %.7f "
          "(total %.7f)",
          label, at, out[at], p[at], total);
}

static void normalise(float *x, int V) {
    double s = 0;
    for (int v = 0; v < V; v++) s += x[v];
    for (int v = 0; v < V; v++) x[v] = (float)(x[v] / s);
}

static uint64_t g_rng = 12345;

static double rnd(void) {
    g_rng = g_rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return (double)(g_rng >> 11) / 9007199254740992.0;
}

// A random distribution over V tokens, with some tokens at probability 0.
static void random_dist(float *x, int V) {
    int nz = 0;
    for (int v = 0; v < V; v++) {
        x[v] = rnd() < 0.25 ? 0.0f : (float)(0.01 + rnd() * rnd());
        nz += x[v] > 0;
    }
    if (!nz) x[(int)(rnd() * V)] = 1.0f;
    normalise(x, V);
}

int main(void) {
    // A candidate sampled from the draft's q (the draft-model drafter's chain, one per level).
    enum { V = 6 };
    static const struct {
        const char *label;
        float p[V], q[V];
    } sampled[] = {
        {"q overlaps p, mass where p = 0",
         {0.30f, 0.25f, 0.20f, 0.15f, 0.10f, 0.00f},
         {0.10f, 0.40f, 0.20f, 0.05f, 0.15f, 0.10f}},
        {"q = p (every draft accepted)",
         {0.30f, 0.25f, 0.20f, 0.15f, 0.10f, 0.00f},
         {0.30f, 0.25f, 0.20f, 0.15f, 0.10f, 0.00f}},
        {"disjoint supports (every draft rejected)",
         {0.50f, 0.50f, 0.00f, 0.00f, 0.00f, 0.00f},
         {0.00f, 0.00f, 0.50f, 0.25f, 0.25f, 0.00f}},
        {"q a point mass on a likely token",
         {0.05f, 0.60f, 0.05f, 0.10f, 0.10f, 0.10f},
         {0.00f, 1.00f, 0.00f, 0.00f, 0.00f, 0.00f}},
        {"p a point mass (greedy target)",
         {0.00f, 0.00f, 1.00f, 0.00f, 0.00f, 0.00f},
         {0.20f, 0.20f, 0.20f, 0.20f, 0.10f, 0.10f}},
        {"q nearly p (the Q4_0 draft's case)",
         {0.301f, 0.249f, 0.200f, 0.150f, 0.090f, 0.010f},
         {0.290f, 0.260f, 0.205f, 0.140f, 0.095f, 0.010f}},
    };
    for (size_t i = 0; i < sizeof sampled / sizeof sampled[0]; i++)
        expect_target(sampled[i].label, NULL, -1, sampled[i].p, sampled[i].q, V);

    // Point-mass candidates (prompt lookup, ADED, Jacobi): siblings tried in order, each
    // rejection removing its token from p. The tree's other nodes hang off node 0 (ignored when
    // trying the root's children, tried when node 0 was accepted).
    const float p[V] = {0.30f, 0.25f, 0.20f, 0.15f, 0.10f, 0.00f};
    speck_draft_tree t = {.n = 0};
    speck_tree_add(&t, 1, -1, 0.5f);
    speck_tree_add(&t, 3, 0, 0.5f);
    speck_tree_add(&t, 5, -1, 0.5f); // p = 0: never accepted, no draw
    speck_tree_add(&t, 0, -1, 0.5f);
    speck_tree_add(&t, 0, 0, 0.5f);
    speck_tree_add(&t, 1, 0, 0.5f);
    speck_tree_add(&t, 0, -1, 0.5f); // a repeated sibling: p = 0 once the first was rejected
    expect_target("point-mass siblings at the root", &t, -1, p, NULL, V);
    expect_target("point-mass children of node 0", &t, 0, p, NULL, V);
    const float one[V] = {0, 0, 0, 1, 0, 0};
    expect_target("point masses, greedy target", &t, 0, one, NULL, V);
    speck_draft_tree none = {.n = 0};
    expect_target("no candidates (bonus token only)", &none, -1, p, NULL, V);

    // Random p and q on 3..8 tokens, with zeros in either.
    for (int i = 0; i < 300; i++) {
        int n = 3 + (int)(rnd() * 6);
        float rp[V_MAX], rq[V_MAX];
        random_dist(rp, n);
        random_dist(rq, n);
        char label[64];
        snprintf(label, sizeof label, "random p, q #%d (%d tokens)", i, n);
        expect_target(label, NULL, -1, rp, rq, n);
        speck_draft_tree rt = {.n = 0};
        int k = 1 + (int)(rnd() * 4);
        for (int j = 0; j < k; j++) speck_tree_add(&rt, (int32_t)(rnd() * n), -1, 0.5f);
        snprintf(label, sizeof label, "random p, %d point masses #%d (%d tokens)", k, i, n);
        expect_target(label, &rt, -1, rp, NULL, n);
    }
    printf("  largest deviation from the target distribution: %.2e\n", g_worst);
    return test_summary();
}
