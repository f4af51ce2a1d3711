// Per-block sparsity ratios under a global target: ECoFLaP's importance-proportional keep
// shares and Týr-the-Pruner's coarse-to-fine evolutionary search (both given their inputs:
// scores, or a fitness to call; src/sparse/alloc_gguf.c measures them on a model).
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sparse/sparse.h"

int speck_ecoflap_ratios(int n, const double *score, const int64_t *size, double sparsity,
                         double max_sparsity, double *ratio) {
    if (n < 1) return speck_set_error(SPECK_ERR_ARG, "ecoflap: no groups");
    if (!(sparsity > 0 && sparsity < 1))
        return speck_set_error(SPECK_ERR_ARG, "ecoflap: sparsity %g is outside (0, 1)", sparsity);
    if (!(max_sparsity >= sparsity && max_sparsity < 1))
        return speck_set_error(SPECK_ERR_ARG,
                               "ecoflap: the largest block sparsity %g must be at least the "
                               "target %g and below 1",
                               max_sparsity, sparsity);
    int64_t N = 0;
    double total_score = 0;
    for (int i = 0; i < n; i++) {
        if (size[i] < 1 || !(score[i] >= 0) || !isfinite(score[i]))
            return speck_set_error(SPECK_ERR_ARG, "ecoflap: group %d has size %lld, score %g", i,
                                   (long long)size[i], score[i]);
        N += size[i], total_score += score[i];
    }
    if (!(total_score > 0)) {
        for (int i = 0; i < n; i++) ratio[i] = sparsity;
        return 0;
    }
    const double K = (double)(N - sparse_n_pruned(sparsity, N));
    bool *full = calloc((size_t)n, sizeof *full);
    double *base = malloc((size_t)n * sizeof *base);
    if (!full || !base) {
        free(full), free(base);
        return speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    }
    double fixed = 0; // kept by the floors of the open groups and by the full groups
    for (int i = 0; i < n; i++) {
        base[i] = ceil((double)size[i] * (1 - max_sparsity));
        if (base[i] > (double)size[i]) base[i] = (double)size[i];
        fixed += base[i];
    }
    // Water-filling: lambda from the open groups; a group it would overfill is closed at its
    // size and lambda recomputed, until none overfills (at most n passes).
    double lambda = 0;
    for (int pass = 0; pass <= n; pass++) {
        double s = 0;
        for (int i = 0; i < n; i++)
            if (!full[i]) s += score[i];
        lambda = s > 0 ? (K - fixed) / s : 0;
        if (lambda < 0) lambda = 0; // K below the floors: max_sparsity >= sparsity excludes it
        bool changed = false;
        for (int i = 0; i < n; i++)
            if (!full[i] && base[i] + lambda * score[i] >= (double)size[i]) {
                full[i] = true, changed = true;
                fixed += (double)size[i] - base[i];
            }
        if (!changed) break;
    }
    for (int i = 0; i < n; i++) {
        const double keep = full[i] ? (double)size[i] : base[i] + lambda * score[i];
        double r = 1 - keep / (double)size[i];
        ratio[i] = r < 0 ? 0 : r > max_sparsity ? max_sparsity : r;
    }
    free(full), free(base);
    return 0;
}

// ---- Týr-style search ----------------------------------------------------------------------

static uint64_t splitmix(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static int rnd(uint64_t *s, int n) {
    return (int)(splitmix(s) % (uint64_t)n);
}

typedef struct {
    int n, *center, d; // the round: center (k units), step d units, +-2 d around it
    const int64_t *size;
    double sparsity, u, max_s;
    speck_ratio_fitness f;
    void *user;
    double *ratio;        // scratch (n)
    int n_seen, cap_seen; // every candidate evaluated so far, with its fitness
    int *seen_k;
    double *seen_f;
} search;

static bool allowed(const search *S, int i, int k) {
    const double r = S->sparsity + k * S->u;
    return r >= -1e-12 && r <= S->max_s + 1e-12 && abs(k - S->center[i]) <= 2 * S->d;
}

// The fitness of k (n units), from the record or by one call; NaN aborts.
static double fitness_of(search *S, const int *k) {
    for (int c = 0; c < S->n_seen; c++)
        if (!memcmp(S->seen_k + (size_t)c * S->n, k, (size_t)S->n * sizeof *k)) return S->seen_f[c];
    for (int i = 0; i < S->n; i++) {
        const double r = S->sparsity + k[i] * S->u;
        S->ratio[i] = r < 0 ? 0 : r;
    }
    const double v = S->f(S->ratio, S->user);
    if (S->n_seen == S->cap_seen) {
        const int cap = S->cap_seen ? 2 * S->cap_seen : 64;
        int *nk = realloc(S->seen_k, (size_t)cap * S->n * sizeof *nk);
        if (nk) S->seen_k = nk;
        double *nf = realloc(S->seen_f, (size_t)cap * sizeof *nf);
        if (nf) S->seen_f = nf;
        if (!nk || !nf) return v; // not recorded: evaluated again if met again
        S->cap_seen = cap;
    }
    memcpy(S->seen_k + (size_t)S->n_seen * S->n, k, (size_t)S->n * sizeof *k);
    S->seen_f[S->n_seen++] = v;
    return v;
}

// One sparsity-shift-free mutation of k: +d units on group i, -d on a group j of the same size
// (global count unchanged), both staying allowed. false when no pair exists.
static bool mutate(search *S, uint64_t *rng, int *k) {
    for (int tries = 0; tries < 64; tries++) {
        const int i = rnd(rng, S->n), j = rnd(rng, S->n);
        if (i == j || S->size[i] != S->size[j]) continue;
        if (!allowed(S, i, k[i] + S->d) || !allowed(S, j, k[j] - S->d)) continue;
        k[i] += S->d, k[j] -= S->d;
        return true;
    }
    return false;
}

int speck_tyr_search(int n, const int64_t *size, double sparsity, double max_sparsity,
                     const speck_tyr_opts *o, speck_ratio_fitness fitness, void *user,
                     double *ratio) {
    const int rounds = o && o->rounds > 0 ? o->rounds : 3;
    const double step = o && o->step > 0 ? o->step : 0.1;
    const int P = o && o->population > 0 ? o->population : 8;
    const int G = o && o->generations > 0 ? o->generations : 6;
    uint64_t rng = o && o->seed ? o->seed : 1;
    if (n < 1 || !fitness) return speck_set_error(SPECK_ERR_ARG, "tyr: no groups or no fitness");
    if (!(sparsity > 0 && sparsity < 1))
        return speck_set_error(SPECK_ERR_ARG, "tyr: sparsity %g is outside (0, 1)", sparsity);
    if (!(max_sparsity >= sparsity && max_sparsity < 1))
        return speck_set_error(SPECK_ERR_ARG,
                               "tyr: the largest block sparsity %g must be at least the target "
                               "%g and below 1",
                               max_sparsity, sparsity);
    if (rounds > 16 || !(step < 1))
        return speck_set_error(SPECK_ERR_ARG, "tyr: %d rounds of step %g", rounds, step);
    search S = {.n = n,
                .size = size,
                .sparsity = sparsity,
                .u = step / (double)(1 << (rounds - 1)),
                .max_s = max_sparsity,
                .f = fitness,
                .user = user};
    S.center = calloc((size_t)n, sizeof *S.center);
    S.ratio = malloc((size_t)n * sizeof *S.ratio);
    int *pop = calloc((size_t)2 * P * n, sizeof *pop); // parents, then offspring
    double *fit = malloc((size_t)2 * P * sizeof *fit), *fit2 = malloc((size_t)P * sizeof *fit2);
    int *order = malloc((size_t)2 * P * sizeof *order),
        *tmp = malloc((size_t)2 * P * n * sizeof *tmp);
    int rc = 0;
    if (!S.center || !S.ratio || !pop || !fit || !fit2 || !order || !tmp)
        rc = speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    for (int r = 0; r < rounds && !rc; r++) {
        S.d = 1 << (rounds - 1 - r);
        // The first member is the center (the best so far), the others its mutants.
        int np = 0;
        for (int c = 0; c < P; c++) {
            int *k = pop + (size_t)np * n;
            memcpy(k, S.center, (size_t)n * sizeof *k);
            if (c > 0 && !mutate(&S, &rng, k)) break;
            if (c > 0 && rnd(&rng, 2)) mutate(&S, &rng, k);
            fit[np] = fitness_of(&S, k);
            if (isnan(fit[np])) {
                rc = SPECK_ERR_ARG;
                break;
            }
            np++;
        }
        for (int gen = 0; gen < G && !rc && np > 0; gen++) {
            int no = 0;
            for (int c = 0; c < P && !rc; c++) {
                const int a = rnd(&rng, np), b = rnd(&rng, np);
                const int par = fit[a] <= fit[b] ? a : b;
                int *k = pop + (size_t)(np + no) * n;
                memcpy(k, pop + (size_t)par * n, (size_t)n * sizeof *k);
                if (!mutate(&S, &rng, k)) continue;
                if (rnd(&rng, 2)) mutate(&S, &rng, k);
                fit[np + no] = fitness_of(&S, k);
                if (isnan(fit[np + no])) rc = SPECK_ERR_ARG;
                no++;
            }
            // Survivors: the best P distinct candidates of parents and offspring (ties: earlier).
            const int tot = np + no;
            for (int c = 0; c < tot; c++) order[c] = c;
            for (int c = 1; c < tot; c++)
                for (int e = c; e > 0 && fit[order[e]] < fit[order[e - 1]]; e--) {
                    const int t = order[e];
                    order[e] = order[e - 1], order[e - 1] = t;
                }
            int keep = 0;
            for (int c = 0; c < tot && keep < P; c++) {
                const int *k = pop + (size_t)order[c] * n;
                bool dup = false;
                for (int e = 0; e < keep && !dup; e++)
                    dup = !memcmp(tmp + (size_t)e * n, k, (size_t)n * sizeof *k);
                if (dup) continue;
                memcpy(tmp + (size_t)keep * n, k, (size_t)n * sizeof *k);
                fit2[keep++] = fit[order[c]];
            }
            memcpy(fit, fit2, (size_t)keep * sizeof *fit);
            memcpy(pop, tmp, (size_t)keep * n * sizeof *pop);
            np = keep;
        }
        if (!rc && np > 0) memcpy(S.center, pop, (size_t)n * sizeof *S.center); // best first
    }
    // Local polish at the finest step (speck's addition): the best single pair move anywhere in
    // [0, max_sparsity] (not only the last round's window), while one improves, at most 8 n
    // times. For a separable convex fitness this ends at the grid's optimum.
    double best = rc ? 0 : fitness_of(&S, S.center);
    S.d = 1 << 20; // the window no longer limits
    for (int it = 0; it < 8 * n && !rc && !isnan(best); it++) {
        int bi = -1, bj = -1;
        double bf = best;
        for (int i = 0; i < n && !rc; i++)
            for (int j = 0; j < n && !rc; j++) {
                if (i == j || size[i] != size[j] || !allowed(&S, i, S.center[i] + 1) ||
                    !allowed(&S, j, S.center[j] - 1))
                    continue;
                S.center[i]++, S.center[j]--;
                const double f = fitness_of(&S, S.center);
                S.center[i]--, S.center[j]++;
                if (isnan(f))
                    rc = SPECK_ERR_ARG;
                else if (f < bf)
                    bf = f, bi = i, bj = j;
            }
        if (bi < 0) break;
        S.center[bi]++, S.center[bj]--, best = bf;
    }
    if (!rc && isnan(best)) rc = SPECK_ERR_ARG;
    for (int i = 0; i < n && !rc; i++) {
        const double r = sparsity + S.center[i] * S.u;
        ratio[i] = r < 0 ? 0 : r;
    }
    free(S.center), free(S.ratio), free(S.seen_k), free(S.seen_f);
    free(pop), free(fit), free(fit2), free(order), free(tmp);
    return rc;
}
