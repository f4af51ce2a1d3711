// The forward pass of a multi-sequence context: the new tokens of many sequences in one pass,
// every matrix read once for all of them, each token attending over its own sequence's blocks.
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "model/ctx_internal.h"
#include "serve/mctx_internal.h"

#define ATT_TOK 16 // tokens of one sequence per attention unit (one gather of its keys)

static int grow_f(float **p, size_t n) {
    float *q = realloc(*p, n * sizeof(float));
    if (!q) return -1;
    *p = q;
    return 0;
}

static bool use_panels(const speck_weight *w) {
    return w->packed && speck_panel_supported(w->type);
}

// Scratch for n tokens.
static int reserve(speck_mctx *mc, int n) {
    const speck_model *m = mc->m;
    const speck_hparams *hp = &m->hp;
    const int th = omp_get_max_threads();
    if (th > mc->th) {
        const size_t L = (size_t)mc->max_len;
        if (grow_f(&mc->gather, (size_t)th * 2 * L * hp->head_dim) ||
            grow_f(&mc->sc, (size_t)th * 64 * L))
            return -1;
        uint8_t *a = realloc(mc->allow, (size_t)th * ATT_TOK * L);
        if (!a) return -1;
        mc->allow = a;
        mc->th = th;
    }
    if (!mc->erow && !(mc->erow = malloc(speck_type_row_size(m->tok_embd.type, hp->n_embd))))
        return -1;
    const int64_t in = hp->n_ff > hp->n_embd ? hp->n_ff : hp->n_embd;
    const int64_t qd = (int64_t)hp->n_head * hp->head_dim;
    // One activation buffer per thread: each prepares the rows it multiplies itself.
    const size_t ab = (speck_mm_act_bytes_max(n, in > qd ? in : qd) + 63) & ~(size_t)63;
    if (ab > mc->act_bytes || th > mc->act_th) {
        free(mc->act);
        mc->act_bytes = 0;
        if (!(mc->act = aligned_alloc(64, ab * (size_t)th))) return -1;
        mc->act_bytes = ab;
        mc->act_th = th;
    }
    if (n <= mc->cap_tok) return 0;
    const size_t E = (size_t)hp->n_embd, half = (size_t)hp->head_dim / 2;
    if (grow_f(&mc->x, n * E) || grow_f(&mc->xn, n * E) || grow_f(&mc->xo, n * E) ||
        grow_f(&mc->q, n * (size_t)qd) || grow_f(&mc->att, n * (size_t)qd) ||
        grow_f(&mc->kvt, n * (size_t)mc->kv_dim) || grow_f(&mc->kvt2, n * (size_t)mc->kv_dim) || grow_f(&mc->g, n * (size_t)hp->n_ff) ||
        grow_f(&mc->u, n * (size_t)hp->n_ff))
        return -1;
    for (int i = 0; i < 2; i++)
        if (grow_f(&mc->rope_cs[i], n * half) || grow_f(&mc->rope_sn[i], n * half)) return -1;
    int32_t *bp = realloc(mc->bpos, (size_t)n * sizeof(int32_t));
    if (!bp) return -1;
    mc->bpos = bp;
    int *r = realloc(mc->runs, (size_t)(2 * n + 2) * sizeof(int));
    if (!r) return -1;
    mc->runs = r;
    mc->cap_tok = n;
    return 0;
}

// The pass runs in one OpenMP parallel region (a fork/join per operation costs a scheduling
// round each, which a loaded machine makes expensive): the helpers below are called by every
// thread of it, share the work by thread number and end with a barrier.

// This thread's share [*i0, *i1) of n items.
static void share(int64_t n, int64_t *i0, int64_t *i1) {
    const int nth = omp_get_num_threads(), tid = omp_get_thread_num();
    *i0 = n * tid / nth;
    *i1 = n * (tid + 1) / nth;
}

// Y (n, w->n_out) = X (n, w->n_in) · Wᵀ (+= Y when accumulate) with the few-token kernels,
// whose every output is the same whatever n is (panel kernels where the model has panels, the
// row kernels otherwise): the batch's composition never changes a token's numbers. This thread's
// share: its contiguous rows [*o0, *o1), cut on multiples of 16 (panel boundaries), in one kernel
// call on activations it prepares itself (as the single-sequence pass does). No barrier: callers
// put one where the results are read.
static void mm(speck_mctx *mc, const speck_weight *w, const float *X, int n, float *Y,
               int accumulate, int64_t *o0p, int64_t *o1p) {
    const bool panels = use_panels(w);
    int64_t u0, u1;
    share((w->n_out + 15) / 16, &u0, &u1);
    const int64_t o0 = 16 * u0, o1 = 16 * u1 < w->n_out ? 16 * u1 : w->n_out;
    if (o0p) *o0p = o0, *o1p = o1;
    if (o1 <= o0) return;
    speck_mm_act a;
    speck_mm_act_prepare(panels ? speck_panel_act_type(w->type) : w->type, X, n, w->n_in,
                         (char *)mc->act + mc->act_bytes * (size_t)omp_get_thread_num(), &a);
    if (panels)
        speck_mm_panel_rows(w->type, w->packed, &a, o0, o1, Y, w->n_out, accumulate);
    else
        speck_mm_rows(w->type, w->data, &a, o0, o1, Y, w->n_out, accumulate);
}

static void rmsnorm(float *out, const float *x, const float *w, int n, int dim, float eps) {
#pragma omp for schedule(static)
    for (int i = 0; i < n; i++)
        speck_op_rmsnorm_row(out + (size_t)i * dim, x + (size_t)i * dim, w, dim, eps);
}

// Bias, QK-norm and RoPE on this thread's tokens of x (n, heads * hd).
static void bias_rope(const speck_mctx *mc, float *x, const float *b, int n, int heads,
                      const float *cs, const float *sn, const float *norm) {
    const speck_hparams *hp = &mc->m->hp;
    const int hd = hp->head_dim, dim = heads * hd;
    int64_t t0, t1;
    share(n, &t0, &t1);
    for (int64_t i = t0; b && i < t1; i++)
        for (int j = 0; j < dim; j++) x[(size_t)i * dim + j] += b[j];
    if (cs && t1 > t0) // a team of one inside this region: the rotation runs on this thread
        speck_op_rope(x + (size_t)t0 * dim, cs + (size_t)t0 * (hd / 2), sn + (size_t)t0 * (hd / 2),
                      (int)(t1 - t0), heads, hd, hp->rope_type, norm, hp->norm_eps);
}

// x (n, dim) += y, this thread's rows, then a barrier.
static void add_rows(float *x, const float *y, int n, int dim) {
    int64_t t0, t1;
    share(n, &t0, &t1);
    if (t1 > t0) speck_op_add(x + (size_t)t0 * dim, y + (size_t)t0 * dim, (size_t)(t1 - t0) * dim);
#pragma omp barrier
}

// Attention units: runs of consecutive tokens of one sequence, cut at ATT_TOK tokens.
// runs: (units + 1) start indices, the last = n. Returns the number of units.
static int attention_units(const int32_t *seq, int n, int *runs) {
    int u = 0;
    for (int i = 0; i < n; i++)
        if (i == 0 || seq[i] != seq[i - 1] || i - runs[u - 1] == ATT_TOK) runs[u++] = i;
    runs[u] = n;
    return u;
}

// Attention of tokens [t0, t1) (one sequence, consecutive positions) for KV group g of layer l:
// the sequence's keys and values up to the last token's position gathered from its blocks, then
// every query head of the group over them, with the same kernel (and numbers) as speck_forward.
static void attend_unit(speck_mctx *mc, int l, const int32_t *seq, const int32_t *pos, int t0,
                        int t1, int g, int tid) {
    const speck_hparams *hp = &mc->m->hp;
    const int hd = hp->head_dim, group = hp->n_head / hp->n_head_kv, win = mc->m->layers[l].n_swa;
    const size_t qd = (size_t)hp->n_head * hd, L = (size_t)mc->max_len;
    const speck_mseq *s = &mc->seq[seq[t0]];
    const int nk_max = pos[t1 - 1] + 1;
    float *kf = mc->gather + (size_t)tid * 2 * L * hd, *vf = kf + L * hd;
    for (int j0 = 0; j0 < nk_max; j0 += mc->bs) {
        const int cnt = nk_max - j0 < mc->bs ? nk_max - j0 : mc->bs;
        const int slot = s->blk[j0 / mc->bs] * mc->bs;
        memcpy(kf + (size_t)j0 * hd, mkv_at(mc, mc->k[l], g, slot), (size_t)cnt * hd * 4);
        memcpy(vf + (size_t)j0 * hd, mkv_at(mc, mc->v[l], g, slot), (size_t)cnt * hd * 4);
    }
    int nk[ATT_TOK];
    uint8_t *allow = NULL;
    if (win) {
        allow = mc->allow + (size_t)tid * ATT_TOK * L;
        for (int t = t0; t < t1; t++) {
            uint8_t *a = allow + (size_t)(t - t0) * nk_max;
            for (int j = 0; j < nk_max; j++) a[j] = j <= pos[t] && pos[t] - j < win;
        }
    }
    for (int t = t0; t < t1; t++) nk[t - t0] = win ? nk_max : pos[t] + 1;
    speck_attend_group(mc->q + (size_t)t0 * qd + (size_t)g * group * hd, (int64_t)qd, t1 - t0,
                       group, nk, allow, nk_max, kf, vf, SPECK_TYPE_F32, hd, hd, hp->attn_scale,
                       hp->attn_softcap, mc->sc + (size_t)tid * 64 * L, (int64_t)L,
                       mc->att + (size_t)t0 * qd + (size_t)g * group * hd, (int64_t)qd);
}

static void forward_layers(speck_mctx *mc, int n, const int32_t *seq, const int32_t *pos,
                           const int *out_rows, int n_out, float *logits) {
    const speck_model *m = mc->m;
    const speck_hparams *hp = &m->hp;
    const int E = hp->n_embd, hd = hp->head_dim, nkv = hp->n_head_kv, kvd = mc->kv_dim;
    const size_t F = (size_t)hp->n_ff;
    const int units = attention_units(seq, n, mc->runs);
#pragma omp parallel
    {
        for (int l = 0; l < hp->n_layer; l++) {
            const speck_layer *ly = &m->layers[l];
            const float *cs = mc->rope_cs[ly->rope], *sn = mc->rope_sn[ly->rope];
            rmsnorm(mc->xn, mc->x, ly->attn_norm, n, E, hp->norm_eps); // (ends with a barrier)
            // Q, K, V: (n, n_head hd) and (n, kv_dim) twice, each thread its rows of all three.
            mm(mc, &ly->wq, mc->xn, n, mc->q, 0, NULL, NULL);
            mm(mc, &ly->wk, mc->xn, n, mc->kvt, 0, NULL, NULL);
            mm(mc, &ly->wv, mc->xn, n, mc->kvt2, 0, NULL, NULL);
#pragma omp barrier
            // Bias, QK-norm, RoPE, then this thread's tokens' keys and values into their slots.
            bias_rope(mc, mc->q, ly->bq, n, hp->n_head, cs, sn, ly->q_norm);
            bias_rope(mc, mc->kvt, ly->bk, n, nkv, cs, sn, ly->k_norm);
            bias_rope(mc, mc->kvt2, ly->bv, n, nkv, NULL, NULL, NULL);
            {
                int64_t t0, t1;
                share(n, &t0, &t1);
                for (int64_t i = t0; i < t1; i++)
                    for (int g = 0; g < nkv; g++) {
                        memcpy(mkv_at(mc, mc->k[l], g, mc->bpos[i]),
                               mc->kvt + (size_t)i * kvd + g * hd, (size_t)hd * sizeof(float));
                        memcpy(mkv_at(mc, mc->v[l], g, mc->bpos[i]),
                               mc->kvt2 + (size_t)i * kvd + g * hd, (size_t)hd * sizeof(float));
                    }
            }
#pragma omp barrier
#pragma omp for schedule(dynamic, 1)
            for (int u = 0; u < units * nkv; u++)
                attend_unit(mc, l, seq, pos, mc->runs[u / nkv], mc->runs[u / nkv + 1], u % nkv,
                            omp_get_thread_num());
            if (hp->post_norms) { // x += norm(attention output)
                mm(mc, &ly->wo, mc->att, n, mc->xo, 0, NULL, NULL);
#pragma omp barrier
                rmsnorm(mc->xn, mc->xo, ly->attn_post_norm, n, E, hp->norm_eps);
                add_rows(mc->x, mc->xn, n, E);
            } else {
                mm(mc, &ly->wo, mc->att, n, mc->x, 1, NULL, NULL);
#pragma omp barrier
            }
            rmsnorm(mc->xn, mc->x, ly->ffn_norm, n, E, hp->norm_eps);
            {
                // Gate and up rows of this thread's share, then the activation on them.
                int64_t o0, o1;
                mm(mc, &ly->wg, mc->xn, n, mc->g, 0, &o0, &o1);
                mm(mc, &ly->wu, mc->xn, n, mc->u, 0, NULL, NULL);
                for (int i = 0; i < n && o1 > o0; i++)
                    speck_ffn_act(hp->ffn_act, mc->g + i * F + o0, mc->u + i * F + o0,
                                     (size_t)(o1 - o0));
            }
#pragma omp barrier
            if (hp->post_norms) {
                mm(mc, &ly->wd, mc->g, n, mc->xo, 0, NULL, NULL);
#pragma omp barrier
                rmsnorm(mc->xn, mc->xo, ly->ffn_post_norm, n, E, hp->norm_eps);
                add_rows(mc->x, mc->xn, n, E);
            } else {
                mm(mc, &ly->wd, mc->g, n, mc->x, 1, NULL, NULL);
#pragma omp barrier
            }
        }
#pragma omp for schedule(static)
        for (int r = 0; r < n_out; r++)
            speck_op_rmsnorm_row(mc->xn + (size_t)r * E, mc->x + (size_t)out_rows[r] * E,
                                 m->out_norm, E, hp->norm_eps);
        if (n_out > 0) {
            mm(mc, &m->output, mc->xn, n_out, logits, 0, NULL, NULL);
#pragma omp barrier
            if (hp->final_softcap > 0) {
#pragma omp for schedule(static)
                for (int r = 0; r < n_out; r++)
                    speck_op_softcap_row(logits + (size_t)r * hp->n_vocab, (size_t)hp->n_vocab,
                                         hp->final_softcap);
            }
        }
    }
}

int speck_mctx_forward(speck_mctx *mc, int n, const int32_t *tokens, const int32_t *seq,
                       const int32_t *pos, const int *out_rows, int n_out, float *logits) {
    const speck_model *m = mc->m;
    const speck_hparams *hp = &m->hp;
    if (n <= 0) return speck_set_error(SPECK_ERR_ARG, "mctx forward: no tokens");
    if (!out_rows) n_out = n;
    if (n_out < 0 || n_out > n)
        return speck_set_error(SPECK_ERR_ARG, "mctx forward: %d output rows for %d tokens", n_out,
                               n);
    for (int r = 0; out_rows && r < n_out; r++)
        if (out_rows[r] < 0 || out_rows[r] >= n)
            return speck_set_error(SPECK_ERR_RANGE, "mctx forward: output row %d out of [0, %d)",
                                   out_rows[r], n);
    // Validate everything before changing anything: ids, positions (each sequence appends in
    // order), lengths, and the blocks the pass needs.
    int *add = calloc((size_t)mc->n_seq, sizeof(int));
    if (!add) return speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    int err = 0, need = 0;
    for (int i = 0; i < n && !err; i++) {
        const int s = seq[i];
        if (tokens[i] < 0 || tokens[i] >= hp->n_vocab)
            err = speck_set_error(SPECK_ERR_RANGE, "mctx forward: token id %d out of [0, %d)",
                                  tokens[i], hp->n_vocab);
        else if (s < 0 || s >= mc->n_seq || !mc->seq[s].used)
            err = speck_set_error(SPECK_ERR_ARG, "mctx forward: token %d: no sequence %d", i, s);
        else if (pos[i] != mc->seq[s].len + add[s])
            err = speck_set_error(SPECK_ERR_RANGE,
                                  "mctx forward: token %d of sequence %d at position %d, expected "
                                  "%d",
                                  i, s, pos[i], mc->seq[s].len + add[s]);
        else if (pos[i] >= mc->max_len)
            err = speck_set_error(SPECK_ERR_RANGE,
                                  "mctx forward: sequence %d would pass max_len %d", s,
                                  mc->max_len);
        else
            add[s]++;
    }
    for (int s = 0; s < mc->n_seq && !err; s++)
        if (add[s])
            need += (mc->seq[s].len + add[s] + mc->bs - 1) / mc->bs -
                    (mc->seq[s].len + mc->bs - 1) / mc->bs;
    if (!err && need > mc->n_free)
        err = speck_set_error(SPECK_ERR_NOMEM, "mctx forward: %d KV blocks needed, %d free", need,
                              mc->n_free);
    if (!err && reserve(mc, n)) err = speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    if (err) {
        free(add);
        return err;
    }
    int *rows = (int *)out_rows;
    if (!out_rows && !(rows = malloc((size_t)n * sizeof(int)))) {
        free(add);
        return speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    }
    for (int r = 0; !out_rows && r < n; r++) rows[r] = r;
    for (int s = 0; s < mc->n_seq; s++)
        if (add[s]) speck_mctx_grow(mc, s, add[s]); // cannot fail: counted above
    for (int i = 0; i < n; i++) {
        const speck_mseq *sq = &mc->seq[seq[i]];
        mc->bpos[i] = sq->blk[pos[i] / mc->bs] * mc->bs + pos[i] % mc->bs;
    }
    for (int t = 0; t < 2; t++)
        if (t == 0 || mc->freq[1] != mc->freq[0])
            speck_op_rope_tables(mc->rope_cs[t], mc->rope_sn[t], pos, n, hp->head_dim, mc->freq[t],
                                 hp->rope_attn_factor);
    const speck_weight *te = &m->tok_embd;
    const size_t erow = speck_type_row_size(te->type, hp->n_embd);
    const bool unpack = te->packed && (te->type == SPECK_TYPE_Q8_0 || te->type == SPECK_TYPE_Q4_0);
    for (int i = 0; i < n; i++) {
        float *x = mc->x + (size_t)i * hp->n_embd;
        const uint8_t *row = (const uint8_t *)te->data + erow * tokens[i];
        if (unpack) {
            speck_panel_unpack(te->type, te->packed, hp->n_embd, tokens[i], 1, mc->erow);
            row = mc->erow;
        }
        speck_dequantize_row(te->type, row, x, hp->n_embd);
        if (hp->embd_scale != 1.0f)
            for (int j = 0; j < hp->n_embd; j++) x[j] *= hp->embd_scale;
    }
    // Lengths first: attention reads the new positions' slots, written layer by layer.
    for (int s = 0; s < mc->n_seq; s++) mc->seq[s].len += add[s];
    forward_layers(mc, n, seq, pos, rows, n_out, logits);
    if (!out_rows) free(rows);
    free(add);
    return 0;
}
