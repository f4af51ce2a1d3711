// Calibration's view into a loaded model: swap one weight matrix for another version of it
// (a candidate quantization) between forward passes, and put it back.
#include <stdio.h>
#include <string.h>

#include "model/model_internal.h"

// The slot of weight `name` ("blk.3.ffn_down.weight", "output.weight", "token_embd.weight"),
// or NULL.
static speck_weight *slot(speck_model *m, const char *name) {
    if (!strcmp(name, "token_embd.weight")) return &m->tok_embd;
    if (!strcmp(name, "output.weight")) return m->hp.tied_output ? NULL : &m->output;
    int l, k = 0;
    char w[64];
    if (sscanf(name, "blk.%d.%63[^.].weight%n", &l, w, &k) != 2 || name[k] || l < 0 ||
        l >= m->hp.n_layer)
        return NULL;
    speck_layer *ly = &m->layers[l];
    static const char *names[7] = {"attn_q",      "attn_k",   "attn_v", "attn_output",
                                   "ffn_gate",    "ffn_up",   "ffn_down"};
    speck_weight *ws[7] = {&ly->wq, &ly->wk, &ly->wv, &ly->wo, &ly->wg, &ly->wu, &ly->wd};
    for (int i = 0; i < 7; i++)
        if (!strcmp(w, names[i])) return ws[i];
    return NULL;
}

int speck_model_swap_weight(speck_model *m, const char *name, speck_weight *w) {
    speck_weight *s = slot(m, name);
    if (!s)
        return speck_set_error(SPECK_ERR_ARG, "model: no weight matrix '%s' to swap", name);
    if (w->n_in != s->n_in || w->n_out != s->n_out)
        return speck_set_error(SPECK_ERR_ARG, "model: '%s' is (%lld, %lld), not (%lld, %lld)",
                               name, (long long)s->n_out, (long long)s->n_in,
                               (long long)w->n_out, (long long)w->n_in);
    const speck_weight old = *s;
    *s = *w;
    *w = old;
    // A tied head is the embedding matrix: it changes with it.
    if (s == &m->tok_embd && m->hp.tied_output) m->output = m->tok_embd;
    return 0;
}
