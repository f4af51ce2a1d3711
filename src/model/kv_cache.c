// Inference contexts: the KV cache — per layer, the whole context or, for a sliding-window layer,
// a ring of its window — and rolling it back (truncate / compact for rejected draft tokens).
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "model/ctx_internal.h"

speck_ctx *speck_ctx_new(const speck_model *m, int n_ctx) {
    return speck_ctx_new_kv(m, n_ctx, SPECK_TYPE_F32);
}

speck_ctx *speck_ctx_new_kv(const speck_model *m, int n_ctx, speck_type kv_type) {
    const speck_hparams *hp = &m->hp;
    if (kv_type != SPECK_TYPE_F32 && kv_type != SPECK_TYPE_F16 && kv_type != SPECK_TYPE_Q8_0 &&
        kv_type != SPECK_TYPE_Q4_0) {
        speck_set_error(SPECK_ERR_ARG, "KV cache type %s is not supported (f32, f16, q8_0, q4_0)",
                        speck_type_name(kv_type));
        return NULL;
    }
    // Each head's row is quantized on its own, in blocks of 32 values.
    if ((kv_type == SPECK_TYPE_Q8_0 || kv_type == SPECK_TYPE_Q4_0) && hp->head_dim % 32) {
        speck_set_error(SPECK_ERR_UNSUPPORTED,
                        "KV cache type %s needs a head size that is a multiple of 32 (this "
                        "model's is %d): use f16",
                        speck_type_name(kv_type), hp->head_dim);
        return NULL;
    }
    if (n_ctx <= 0) n_ctx = hp->n_ctx_train < 4096 ? hp->n_ctx_train : 4096;
    speck_ctx *c = calloc(1, sizeof *c);
    if (!c) goto oom;
    speck_barrier_init(&c->bar);
    c->m = m;
    c->n_ctx = n_ctx;
    c->kv_dim = hp->n_head_kv * hp->head_dim;
    c->kv_type = kv_type;
    c->kv_row = speck_type_row_size(kv_type, hp->head_dim);
    c->seq_pos = true;
    // LongRoPE: the long factors when this context reaches past the original one (llama.cpp's
    // choice; Hugging Face switches when the sequence does).
    c->freq[0] = m->rope_freq_long && n_ctx > hp->rope_orig_ctx ? m->rope_freq_long : m->rope_freq;
    c->freq[1] = m->rope_freq_swa ? m->rope_freq_swa : c->freq[0];
    c->k = calloc((size_t)hp->n_layer, sizeof(void *));
    c->v = calloc((size_t)hp->n_layer, sizeof(void *));
    c->cap = calloc((size_t)hp->n_layer, sizeof(int));
    c->kpos = malloc((size_t)n_ctx * sizeof(int32_t));
    if (!c->k || !c->v || !c->cap || !c->kpos) goto oom;
    for (int l = 0; l < hp->n_layer; l++) {
        const int w = m->layers[l].n_swa;
        c->cap[l] = w && w + SWA_SPARE < n_ctx ? w + SWA_SPARE : n_ctx;
        if (c->cap[l] < n_ctx) c->swa_cap = c->cap[l];
        // calloc of large blocks maps zero pages lazily: only the part of the context actually
        // used becomes resident.
        c->k[l] = calloc((size_t)c->cap[l] * hp->n_head_kv, c->kv_row);
        c->v[l] = calloc((size_t)c->cap[l] * hp->n_head_kv, c->kv_row);
        if (!c->k[l] || !c->v[l]) goto oom;
    }
    return c;
oom:
    speck_ctx_free(c);
    speck_set_error(SPECK_ERR_NOMEM, "out of memory allocating a %d-position KV cache", n_ctx);
    return NULL;
}

void speck_ctx_free(speck_ctx *c) {
    if (!c) return;
    for (int l = 0; c->k && l < c->m->hp.n_layer; l++) free(c->k[l]);
    for (int l = 0; c->v && l < c->m->hp.n_layer; l++) free(c->v[l]);
    free(c->k);
    free(c->v);
    free(c->cap);
    free(c->kpos);
    free(c->x);
    free(c->xn);
    free(c->erow);
    free(c->xo);
    free(c->q);
    free(c->att);
    free(c->g);
    free(c->u);
    free(c->scores);
    free(c->att_s);
    free(c->allow);
    free(c->kvt);
    free(c->kvf);
    free(c->kvn);
    speck_moe_free(c);
    for (int i = 0; i < 2; i++) free(c->rope_cs[i]), free(c->rope_sn[i]);
    for (int t = 0; c->tbuf && t < c->tbuf_threads; t++) free(c->tbuf[t]);
    free(c->tbuf);
    free(c);
}

int speck_ctx_n_ctx(const speck_ctx *c) {
    return c->n_ctx;
}
speck_type speck_ctx_kv_type(const speck_ctx *c) {
    return c->kv_type;
}
int speck_ctx_n_past(const speck_ctx *c) {
    return c->n_past;
}

size_t speck_ctx_kv_bytes(const speck_ctx *c) {
    size_t rows = 0;
    for (int l = 0; l < c->m->hp.n_layer; l++) rows += (size_t)c->cap[l];
    return 2 * rows * (size_t)c->m->hp.n_head_kv * c->kv_row;
}

int speck_ctx_truncate(speck_ctx *c, int n) {
    if (n < 0 || n > c->n_past)
        return speck_set_error(SPECK_ERR_RANGE, "truncate to %d: cache holds %d entries", n,
                               c->n_past);
    if (n > 0 && c->swa_cap) {
        // The next entry's window starts n_swa - 1 entries back; a ring that has moved past
        // that cannot give it back (the entries must be computed again).
        const int need = n - c->m->hp.n_swa + 1 > 0 ? n - c->m->hp.n_swa + 1 : 0;
        if (need < c->swa_lo)
            return speck_set_error(SPECK_ERR_RANGE,
                                   "truncate to %d: the sliding-window layers hold entries %d.. "
                                   "only (window %d + %d), the window of entry %d starts at %d",
                                   n, c->swa_lo, c->m->hp.n_swa, SWA_SPARE, n, need);
    }
    if (n == 0) {
        c->swa_lo = 0;
        c->seq_pos = true;
    } else if (!c->seq_pos) { // rejected tree nodes may have held the out-of-order positions
        bool seq = true;
        for (int i = 0; i < n && seq; i++) seq = c->kpos[i] == i;
        c->seq_pos = seq;
    }
    c->n_past = n;
    return 0;
}

int speck_ctx_truncate_floor(const speck_ctx *c) {
    if (!c->swa_cap || c->swa_lo == 0) return 1;
    return c->swa_lo + c->m->hp.n_swa - 1; // its window starts at swa_lo
}

void speck_kv_store(const speck_ctx *c, int l, void *cache, int g, int idx, const float *src,
                    int64_t src_ld, int n) {
    for (int i = 0; i < n; i++)
        speck_quantize_row(c->kv_type, src + i * src_ld, kv_at(c, l, cache, g, idx + i),
                           c->m->hp.head_dim);
}

int speck_ctx_compact(speck_ctx *c, const int *idx, int n) {
    int first = n, hi = -1; // first entry that moves, and the last one
    for (int i = 0; i < n; i++) {
        if (idx[i] < 0 || idx[i] >= c->n_past || (i && idx[i] <= idx[i - 1]))
            return speck_set_error(SPECK_ERR_RANGE,
                                   "compact: index %d (%d) must be increasing and < %d", i, idx[i],
                                   c->n_past);
        if (idx[i] != i) {
            if (first == n) first = i;
            hi = i;
        }
    }
    // A ring moves its rows in place: every source must still be held, and no later source may
    // share a slot with an earlier destination.
    if (c->swa_cap && first < n && (idx[first] < c->swa_lo || idx[hi] - first >= c->swa_cap))
        return speck_set_error(SPECK_ERR_RANGE,
                               "compact: entries %d..%d are not all held by the sliding-window "
                               "layers (entries %d.. of %d-row rings)",
                               idx[first], idx[hi], c->swa_lo, c->swa_cap);
    const size_t row = c->kv_row;
    // idx[i] >= i, so moving rows forward in order never overwrites a row still to be read.
    for (int l = 0; l < c->m->hp.n_layer; l++)
        for (int g = 0; g < c->m->hp.n_head_kv; g++)
            for (int i = first; i < n; i++)
                if (idx[i] != i) {
                    memcpy(kv_at(c, l, c->k[l], g, i), kv_at(c, l, c->k[l], g, idx[i]), row);
                    memcpy(kv_at(c, l, c->v[l], g, i), kv_at(c, l, c->v[l], g, idx[i]), row);
                }
    bool seq = true;
    for (int i = 0; i < n; i++) {
        c->kpos[i] = c->kpos[idx[i]];
        seq &= c->kpos[i] == i;
    }
    c->seq_pos = seq;
    if (c->swa_cap && hi - c->swa_cap + 1 > c->swa_lo) c->swa_lo = hi - c->swa_cap + 1;
    c->n_past = n;
    return 0;
}
