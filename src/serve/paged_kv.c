// The paged KV cache of a multi-sequence context: a pool of reference-counted blocks, sequences
// as lists of blocks taken on demand and given back when they end or shrink.
#include <stdlib.h>
#include <string.h>

#include "serve/mctx_internal.h"

speck_mctx *speck_mctx_new(const speck_model *m, int n_blocks, int block_size, int n_seq,
                           int max_len) {
    const speck_hparams *hp = &m->hp;
    if (n_blocks <= 0 || block_size <= 0 || n_seq <= 0 || max_len < 0) {
        speck_set_error(SPECK_ERR_ARG, "mctx: %d blocks of %d positions for %d sequences", n_blocks,
                        block_size, n_seq);
        return NULL;
    }
    // The batched pass (forward_batch.c) runs dense FFNs only.
    if (hp->n_expert > 0) {
        speck_set_error(SPECK_ERR_UNSUPPORTED,
                        "mctx: %s is a mixture of experts (%d experts), which batched serving "
                        "does not run yet",
                        hp->name[0] ? hp->name : hp->arch, hp->n_expert);
        return NULL;
    }
    if (max_len == 0) max_len = hp->n_ctx_train < 4096 ? hp->n_ctx_train : 4096;
    speck_mctx *mc = calloc(1, sizeof *mc);
    if (!mc) goto oom;
    mc->m = m;
    mc->bs = block_size;
    mc->n_blocks = n_blocks;
    mc->n_seq = n_seq;
    mc->max_len = max_len;
    mc->max_blocks = (max_len + block_size - 1) / block_size;
    mc->kv_dim = hp->n_head_kv * hp->head_dim;
    mc->freq[0] = m->rope_freq_long && max_len > hp->rope_orig_ctx ? m->rope_freq_long
                                                                    : m->rope_freq;
    mc->freq[1] = m->rope_freq_swa ? m->rope_freq_swa : mc->freq[0];
    mc->k = calloc((size_t)hp->n_layer, sizeof(float *));
    mc->v = calloc((size_t)hp->n_layer, sizeof(float *));
    mc->ref = calloc((size_t)n_blocks, sizeof(int));
    mc->free_list = malloc((size_t)n_blocks * sizeof(int));
    mc->seq = calloc((size_t)n_seq, sizeof(speck_mseq));
    if (!mc->k || !mc->v || !mc->ref || !mc->free_list || !mc->seq) goto oom;
    const size_t per = (size_t)n_blocks * block_size * mc->kv_dim;
    for (int l = 0; l < hp->n_layer; l++) {
        // calloc maps zero pages lazily: only blocks in use become resident.
        mc->k[l] = calloc(per, sizeof(float));
        mc->v[l] = calloc(per, sizeof(float));
        if (!mc->k[l] || !mc->v[l]) goto oom;
    }
    for (int i = 0; i < n_seq; i++)
        if (!(mc->seq[i].blk = malloc((size_t)mc->max_blocks * sizeof(int)))) goto oom;
    // Lowest block ids first: a fresh pool fills from the start of its memory.
    for (int b = 0; b < n_blocks; b++) mc->free_list[b] = n_blocks - 1 - b;
    mc->n_free = n_blocks;
    return mc;
oom:
    speck_mctx_free(mc);
    speck_set_error(SPECK_ERR_NOMEM, "out of memory allocating %d KV blocks of %d positions",
                    n_blocks, block_size);
    return NULL;
}

void speck_mctx_free(speck_mctx *mc) {
    if (!mc) return;
    for (int l = 0; mc->k && l < mc->m->hp.n_layer; l++) free(mc->k[l]);
    for (int l = 0; mc->v && l < mc->m->hp.n_layer; l++) free(mc->v[l]);
    for (int i = 0; mc->seq && i < mc->n_seq; i++) free(mc->seq[i].blk);
    free(mc->k);
    free(mc->v);
    free(mc->ref);
    free(mc->free_list);
    free(mc->seq);
    free(mc->x);
    free(mc->xn);
    free(mc->xo);
    free(mc->q);
    free(mc->att);
    free(mc->kvt);
    free(mc->kvt2);
    free(mc->g);
    free(mc->u);
    for (int i = 0; i < 2; i++) free(mc->rope_cs[i]), free(mc->rope_sn[i]);
    free(mc->erow);
    free(mc->act);
    free(mc->bpos);
    free(mc->runs);
    free(mc->gather);
    free(mc->sc);
    free(mc->allow);
    free(mc);
}

int speck_mctx_block_size(const speck_mctx *mc) {
    return mc->bs;
}
int speck_mctx_n_blocks(const speck_mctx *mc) {
    return mc->n_blocks;
}
int speck_mctx_n_free_blocks(const speck_mctx *mc) {
    return mc->n_free;
}
int speck_mctx_max_len(const speck_mctx *mc) {
    return mc->max_len;
}
int speck_mctx_n_seq(const speck_mctx *mc) {
    return mc->n_seq;
}
size_t speck_mctx_kv_bytes(const speck_mctx *mc) {
    return 2 * (size_t)mc->m->hp.n_layer * mc->n_blocks * mc->bs * mc->kv_dim * sizeof(float);
}

static bool seq_ok(const speck_mctx *mc, int seq) {
    return seq >= 0 && seq < mc->n_seq && mc->seq[seq].used;
}

int speck_mctx_seq_new(speck_mctx *mc) {
    for (int i = 0; i < mc->n_seq; i++)
        if (!mc->seq[i].used) {
            mc->seq[i].used = true;
            mc->seq[i].len = 0;
            return i;
        }
    speck_set_error(SPECK_ERR_RANGE, "mctx: all %d sequence slots are taken", mc->n_seq);
    return -1;
}

void speck_mctx_block_ref(speck_mctx *mc, int b) {
    if (b >= 0 && b < mc->n_blocks) mc->ref[b]++;
}

void speck_mctx_block_unref(speck_mctx *mc, int b) {
    if (b < 0 || b >= mc->n_blocks || mc->ref[b] <= 0) return;
    if (--mc->ref[b] == 0) mc->free_list[mc->n_free++] = b;
}

int speck_mctx_block_refs(const speck_mctx *mc, int b) {
    return b >= 0 && b < mc->n_blocks ? mc->ref[b] : 0;
}

static int blocks_for(const speck_mctx *mc, int len) {
    return (len + mc->bs - 1) / mc->bs;
}

void speck_mctx_seq_free(speck_mctx *mc, int seq) {
    if (!seq_ok(mc, seq)) return;
    speck_mseq *s = &mc->seq[seq];
    for (int i = 0; i < blocks_for(mc, s->len); i++) speck_mctx_block_unref(mc, s->blk[i]);
    s->len = 0;
    s->used = false;
}

int speck_mctx_seq_len(const speck_mctx *mc, int seq) {
    return seq_ok(mc, seq) ? mc->seq[seq].len : 0;
}

int speck_mctx_seq_block(const speck_mctx *mc, int seq, int i) {
    if (!seq_ok(mc, seq) || i < 0 || i >= blocks_for(mc, mc->seq[seq].len)) return -1;
    return mc->seq[seq].blk[i];
}

int speck_mctx_seq_truncate(speck_mctx *mc, int seq, int n) {
    if (!seq_ok(mc, seq)) return speck_set_error(SPECK_ERR_ARG, "mctx: no sequence %d", seq);
    speck_mseq *s = &mc->seq[seq];
    if (n < 0 || n > s->len)
        return speck_set_error(SPECK_ERR_RANGE, "mctx: truncate to %d: sequence holds %d", n,
                               s->len);
    if (n % mc->bs && mc->ref[s->blk[n / mc->bs]] > 1)
        return speck_set_error(SPECK_ERR_RANGE,
                               "mctx: truncate to %d: block %d of the sequence is shared", n,
                               n / mc->bs);
    for (int i = blocks_for(mc, n); i < blocks_for(mc, s->len); i++)
        speck_mctx_block_unref(mc, s->blk[i]);
    s->len = n;
    return 0;
}

int speck_mctx_seq_attach(speck_mctx *mc, int seq, const int *blocks, int n) {
    if (!seq_ok(mc, seq) || mc->seq[seq].len)
        return speck_set_error(SPECK_ERR_ARG, "mctx: attach to sequence %d: not an empty one", seq);
    if (n < 0 || n > mc->max_blocks || (long)n * mc->bs > mc->max_len)
        return speck_set_error(SPECK_ERR_RANGE, "mctx: attach %d blocks: over max_len %d", n,
                               mc->max_len);
    for (int i = 0; i < n; i++)
        if (blocks[i] < 0 || blocks[i] >= mc->n_blocks || mc->ref[blocks[i]] <= 0)
            return speck_set_error(SPECK_ERR_ARG, "mctx: attach block %d: not a live block",
                                   blocks[i]);
    for (int i = 0; i < n; i++) {
        mc->seq[seq].blk[i] = blocks[i];
        mc->ref[blocks[i]]++;
    }
    mc->seq[seq].len = n * mc->bs;
    return 0;
}

int speck_mctx_grow(speck_mctx *mc, int seq, int add) {
    speck_mseq *s = &mc->seq[seq];
    const int have = blocks_for(mc, s->len), need = blocks_for(mc, s->len + add);
    if (need - have > mc->n_free) return -1;
    for (int i = have; i < need; i++) {
        const int b = mc->free_list[--mc->n_free];
        mc->ref[b] = 1;
        s->blk[i] = b;
    }
    return 0;
}
