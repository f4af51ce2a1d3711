// Internals shared by src/sparse/: pruning counts and shape checks.
#ifndef SPECK_SPARSE_H
#define SPECK_SPARSE_H

#include <stdint.h>

#include "speck.h"

// How many of n weights a fraction s prunes: round(s * n), halves up.
int64_t sparse_n_pruned(double s, int64_t n);
// SPECK_ERR_ARG (naming `what`) when rows of cols values cannot take o's pattern.
int sparse_check_shape(const speck_prune_opts *o, const char *what, int64_t cols);

#endif
