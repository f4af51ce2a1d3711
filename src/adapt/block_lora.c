// Block-LoRA (Zhou et al. 2025, "One Head Eight Arms: Block Matrix based Low Rank Adaptation"):
// a rank-r adapter's B and A split into K blocks, ΔW = s·Σ_i B_i·A_i, with every down-projection
// block shared: A_1 = … = A_K = A_s. The trainer keeps the expanded layout (A: K tied copies of
// A_s), sums the K copies' gradients into the shared block (it is used K times) and updates it
// once; the saved adapter is the equal rank-r/K LoRA B' = Σ_i B_i, A' = A_s.
//
// Shapes: A: (r, n_in) = K blocks of (r/K, n_in); B: (n_out, r) = K column blocks (n_out, r/K).
#include <stdlib.h>
#include <string.h>

#include "adapt/adapt_internal.h"

#define NT SPECK_LORA_N_TARGETS

int speck_lora_block_check(const speck_lora *a, int K) {
    if (K < 1 || K > 4096)
        return speck_set_error(SPECK_ERR_ARG, "Block-LoRA: --block-share %d must be in [1, 4096]",
                               K);
    for (int i = 0; i < a->n_layer * NT; i++)
        if (a->m[i].rank % K)
            return speck_set_error(SPECK_ERR_ARG,
                                   "Block-LoRA: blk.%d.%s has rank %d, not a multiple of the %d "
                                   "shared blocks",
                                   i / NT, speck_lora_target_gguf(i % NT), a->m[i].rank, K);
    return 0;
}

void speck_lora_block_tie(speck_lora *a, int K) {
    for (int i = 0; K > 1 && i < a->n_layer * NT; i++) {
        speck_lora_mat *mt = &a->m[i];
        if (!mt->rank) continue;
        const size_t blk = (size_t)(mt->rank / K) * mt->n_in;
        for (int k = 1; k < K; k++) memcpy(mt->a + k * blk, mt->a, blk * sizeof *mt->a);
    }
}

void speck_lora_block_fold(const speck_lora *a, int K, float *grads) {
    for (int i = 0; K > 1 && i < a->n_layer * NT; i++) {
        const speck_lora_mat *mt = &a->m[i];
        if (!mt->rank) continue;
        const size_t blk = (size_t)(mt->rank / K) * mt->n_in;
        float *g = grads + (mt->a - a->data);
        for (int k = 1; k < K; k++) {
            float *gk = g + k * blk;
            for (size_t j = 0; j < blk; j++) g[j] += gk[j];
            memset(gk, 0, blk * sizeof *gk);
        }
    }
}

int64_t speck_lora_block_n_trainable(const speck_lora *a, int K) {
    int64_t n = 0;
    for (int i = 0; i < a->n_layer * NT; i++) {
        const speck_lora_mat *mt = &a->m[i];
        n += (int64_t)mt->rank * mt->n_out + (int64_t)(mt->rank / K) * mt->n_in;
    }
    return n;
}

speck_lora *speck_lora_block_collapse(const speck_lora *a, int K) {
    if (speck_lora_block_check(a, K)) return NULL;
    const int nm = a->n_layer * NT;
    int *ranks = calloc((size_t)(nm ? nm : 1), sizeof *ranks);
    int64_t *ni = calloc((size_t)(nm ? nm : 1), sizeof *ni);
    int64_t *no = calloc((size_t)(nm ? nm : 1), sizeof *no);
    speck_lora *c = NULL;
    if (!ranks || !ni || !no) {
        speck_set_error(SPECK_ERR_NOMEM, "Block-LoRA: out of memory");
        goto done;
    }
    for (int i = 0; i < nm; i++)
        ranks[i] = a->m[i].rank / K, ni[i] = a->m[i].n_in, no[i] = a->m[i].n_out;
    // s = alpha / r must stay s at rank r/K: alpha / K (alpha 0 means scale 1 at any rank).
    if (!(c = speck_lora_alloc(a->arch, a->n_layer, ranks, ni, no, a->alpha / (float)K)))
        goto done;
    for (int i = 0; i < nm; i++) {
        const speck_lora_mat *s = &a->m[i];
        speck_lora_mat *d = &c->m[i];
        if (!s->rank) continue;
        const int rb = d->rank;
        memcpy(d->a, s->a, (size_t)rb * s->n_in * sizeof *d->a);
        for (int64_t o = 0; o < s->n_out; o++)
            for (int j = 0; j < rb; j++) {
                float v = 0;
                for (int k = 0; k < K; k++) v += s->b[(size_t)o * s->rank + k * rb + j];
                d->b[(size_t)o * rb + j] = v;
            }
    }
done:
    free(ranks), free(ni), free(no);
    return c;
}
