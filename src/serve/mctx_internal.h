// The multi-sequence context: a pool of KV blocks shared by many sequences (paged_kv.c) and the
// scratch of the forward pass over all their new tokens (forward_batch.c).
#ifndef SPECK_MCTX_INTERNAL_H
#define SPECK_MCTX_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "kernels/kernels.h"
#include "model/model_internal.h"

typedef struct {
    bool used;
    int len;  // positions held
    int *blk; // (max_blocks) block of positions [i * bs, (i + 1) * bs)
} speck_mseq;

struct speck_mctx {
    const speck_model *m;
    int bs, n_blocks, n_seq, max_len, max_blocks; // max_blocks = ceil(max_len / bs)
    int kv_dim;
    float **k, **v; // per layer: (n_blocks, n_head_kv, bs, head_dim), see mkv_at
    int *ref;       // (n_blocks) references; 0 = in the free list
    int *free_list; // (n_blocks) stack of free blocks
    int n_free;
    speck_mseq *seq;
    const float *freq[2]; // RoPE frequencies: the model's, the windowed layers' own
    // Forward scratch, grown to the largest pass seen.
    int cap_tok;
    float *x, *xn, *xo, *q, *att, *kvt, *kvt2, *g, *u; // (n, n_embd) ... (n, n_ff)
    float *rope_cs[2], *rope_sn[2];             // (n, head_dim / 2)
    uint8_t *erow;                              // one embedding row
    void *act;        // (act_th, act_bytes) each thread's prepared activations
    size_t act_bytes; // per thread
    int act_th;
    int32_t *bpos; // (n) cache slot of each token: block * bs + offset
    int *runs;     // (2n + 2) attention units scratch
    int th;        // threads the per-thread scratch below holds
    float *gather; // (th, 2, max_len, head_dim) a sequence's keys and values, contiguous
    float *sc;     // (th, 64, max_len) attention scores
    uint8_t *allow; // (th, 16, max_len) windowed layers' masks
};

// Layer l's keys (or values) of KV group g at slot `s` (block * bs + offset): (head_dim) floats.
static inline float *mkv_at(const struct speck_mctx *mc, float *cache, int g, int s) {
    const int hd = mc->m->hp.head_dim, b = s / mc->bs;
    return cache + (((size_t)b * mc->m->hp.n_head_kv + g) * mc->bs + (size_t)(s % mc->bs)) * hd;
}

// Blocks for positions [len, len + add) of seq taken from the pool (0), or -1 (nothing taken).
int speck_mctx_grow(struct speck_mctx *mc, int seq, int add);

#endif
