// Internals shared by src/sparse/: pruning counts and shape checks.
#ifndef SPECK_SPARSE_H
#define SPECK_SPARSE_H

#include <stdbool.h>
#include <stdint.h>

#include "speck.h"

// How many of n weights a fraction s prunes: round(s * n), halves up.
int64_t sparse_n_pruned(double s, int64_t n);
// SPECK_ERR_ARG (naming `what`) when rows of cols values cannot take o's pattern.
int sparse_check_shape(const speck_prune_opts *o, const char *what, int64_t cols);


// The block index of "blk.N.*" names (N), else -1.
int sparse_block_of(const char *name);

// What speck_gguf_prune prunes and how, for the ratio allocation: takes(t) says whether tensor t
// is pruned; prune(t, s, W) writes t's rows as floats into W (rows x cols) pruned at sparsity s
// (s with no weight to prune per row: dense).
typedef struct {
    bool (*takes)(const speck_gguf_tensor *t, void *user);
    int (*prune)(const speck_gguf_tensor *t, double s, float *W, void *user);
    void *user;
} sparse_pruner;

// o->alloc's per-block ratios for the model g read from path: ratio[l] for l < n_layer (blocks
// without pruned matrices: o->sparsity); score[l] (may be NULL): ECoFLaP's block scores, else 0.
int sparse_layer_ratios(const speck_gguf *g, const char *path, const speck_prune_opts *o,
                        const sparse_pruner *pr, int n_layer, double *ratio, double *score,
                        bool progress);

#endif
