// Accelerated decoding internals: the drafter interface shared by the engine (spec.c) and the
// drafters (drafters.c, draft_model.c).
#ifndef SPECK_DECODE_INTERNAL_H
#define SPECK_DECODE_INTERNAL_H

#include "speck.h"

// Verification batches stay below the sizes at which the forward pass switches to GEMM paths
// (attention at 16 rows, matmul at 32), so every row is computed exactly as single-token decode
// computes it: greedy speculative output is then token-identical to plain greedy decoding.
#define SPECK_MAX_NODES 14

// Candidate tokens as a tree hanging off the root (the last token of the sequence, which is not
// yet in the KV cache). Nodes are in topological order: parent[i] < i, -1 = child of the root.
typedef struct {
    int n;
    int32_t tok[SPECK_MAX_NODES];
    int parent[SPECK_MAX_NODES];
    float conf[SPECK_MAX_NODES]; // drafter's estimate of P(accepted | parent accepted)
    // The distribution (n_vocab, owned by the drafter) the node's token was sampled from, or
    // NULL for a deterministic proposal (a point mass).
    const float *q[SPECK_MAX_NODES];
} speck_draft_tree;

typedef struct speck_drafter speck_drafter;
struct speck_drafter {
    speck_draft_kind kind;
    // The target's sampler for the current decode (set by the engine): drafters that can may
    // sample their proposals from its distribution over their own logits.
    speck_sampler *sampler;
    // Propose candidates continuing seq (n tokens; seq[n-1] is the root). Budget: at most
    // max_nodes nodes and max_depth levels. Returns 0 (tree may be empty) or an error.
    int (*propose)(speck_drafter *d, const int32_t *seq, int n, int max_nodes, int max_depth,
                   const speck_spec_params *p, speck_draft_tree *out);
    // The sequence is now seq[0..n) (tokens accepted and the bonus token appended).
    void (*update)(speck_drafter *d, const int32_t *seq, int n);
    // After a verification pass: batch tokens (root + nodes) and the target's argmax per row.
    // Optional (Jacobi harvests its trajectories here).
    void (*observe)(speck_drafter *d, const speck_draft_tree *t, const int32_t *argmax_rows,
                    int n_accepted_path);
    // Outcome of each node of the last proposal (for drafters that learn from it).
    void (*feedback)(speck_drafter *d, const speck_draft_tree *t, const uint8_t *accepted);
    void (*reset)(speck_drafter *d);
    void (*destroy)(speck_drafter *d);
};

speck_drafter *speck_drafter_prompt_new(void);
speck_drafter *speck_drafter_aded_new(const speck_spec_params *p, int n_vocab);
speck_drafter *speck_drafter_jacobi_new(int n_vocab);
speck_drafter *speck_drafter_model_new(const speck_model *draft, const speck_model *target,
                                       const speck_accept_head *head);

// Append a node (the caller checks the budget); returns its index, the parent of what follows.
static inline int speck_tree_add(speck_draft_tree *t, int32_t tok, int parent, float conf) {
    t->tok[t->n] = tok;
    t->parent[t->n] = parent;
    t->conf[t->n] = conf;
    t->q[t->n] = NULL;
    return t->n++;
}

// Draw a token from probs (n) with the sampler's RNG (the last allowed token if rounding leaves
// the uniform past the total).
static inline int32_t speck_draw(speck_sampler *s, const float *probs, int n) {
    double r = speck_sampler_uniform(s), cum = 0;
    int32_t last = -1;
    for (int i = 0; i < n; i++) {
        if (probs[i] <= 0.0f) continue;
        cum += probs[i];
        last = i;
        if (r < cum) return i;
    }
    return last >= 0 ? last : 0;
}

// One step of the verification walk (spec.c): the children of node `parent` (-1: the root) are
// tried in tree order against the target distribution probs (n_vocab) -- a child sampled from q
// is accepted with probability min(1, p/q), a point-mass child with probability p; after each
// rejection probs becomes the residual the next child, or the bonus token, is drawn against.
// Returns the accepted child, or -1 when none was (probs then holds the bonus distribution).
// uniform(rng) gives the U[0,1) draws, taken only where the rule needs one; it is a parameter so
// that tests can compute the step's exact output distribution (tests/test_spec_accept.c).
int speck_spec_accept(const speck_draft_tree *t, int parent, float *probs, int n_vocab,
                      double (*uniform)(void *), void *rng);

// True when a first-level branch starting with tok is already in the tree.
static inline bool speck_tree_has_branch(const speck_draft_tree *t, int32_t tok) {
    for (int i = 0; i < t->n; i++)
        if (t->parent[i] == -1 && t->tok[i] == tok) return true;
    return false;
}

// Extend a tree to a chain budget under the adaptive policy: true while another token may be
// added after a chain whose cumulative acceptance estimate is prod (SpecDec++-style stop rule).
static inline int speck_keep_drafting(const speck_spec_params *p, float prod) {
    return p->adaptive <= 0.0f || 1.0f - prod <= p->adaptive;
}

#endif
