// Composing deltas (LT-SFT's rule: task deltas trained with their own masks are added) and the
// base fingerprint that keeps a trained delta from being applied to another base.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "adapt/adapt_internal.h"
#include "kernels/kernels.h"

uint64_t speck_delta_base_fp(const float *emb, int64_t n_emb, const float *norm, int64_t n_norm) {
    uint64_t h = 0xcbf29ce484222325ULL;
    const float *src[2] = {emb, norm};
    const int64_t n[2] = {n_emb < SPECK_DELTA_FP_EMB ? n_emb : SPECK_DELTA_FP_EMB, n_norm};
    for (int s = 0; s < 2; s++)
        for (int64_t j = 0; src[s] && j < n[s]; j++) {
            uint32_t b;
            memcpy(&b, &src[s][j], 4);
            for (int k = 0; k < 4; k++) h = (h ^ ((b >> (8 * k)) & 0xff)) * 0x100000001b3ULL;
        }
    return h ? h : 1;
}

// The fingerprint of a base GGUF (rows of token_embd dequantized as needed); 0 when it lacks
// either tensor or holds them in a type speck cannot read.
uint64_t speck_delta_gguf_fp(const speck_gguf *g) {
    const speck_gguf_tensor *e = speck_gguf_find_tensor(g, "token_embd.weight");
    const speck_gguf_tensor *o = speck_gguf_find_tensor(g, "output_norm.weight");
    if (!e || !o || !speck_type_name(e->type) || !speck_type_name(o->type) || e->ne[0] < 1 ||
        e->ne[0] % speck_type_block_size((speck_type)e->type) ||
        o->ne[0] % speck_type_block_size((speck_type)o->type))
        return 0;
    const int64_t cols = e->ne[0], rows_all = e->n_elements / cols;
    int64_t rows = (SPECK_DELTA_FP_EMB + cols - 1) / cols;
    if (rows > rows_all) rows = rows_all;
    float *x = malloc((size_t)(rows * cols + o->n_elements) * sizeof *x);
    if (!x) return 0;
    const size_t rs = speck_type_row_size((speck_type)e->type, cols);
    for (int64_t r = 0; r < rows; r++)
        speck_dequantize_row((speck_type)e->type, (const uint8_t *)e->data + rs * (size_t)r,
                             x + r * cols, cols);
    float *nx = x + rows * cols;
    speck_dequantize_row((speck_type)o->type, o->data, nx, o->n_elements);
    const uint64_t h = speck_delta_base_fp(x, rows * cols, nx, o->n_elements);
    free(x);
    return h;
}

speck_delta *speck_delta_new(const char *arch) {
    speck_delta *d = calloc(1, sizeof *d);
    if (!d) {
        speck_set_error(SPECK_ERR_NOMEM, "delta: out of memory");
        return NULL;
    }
    snprintf(d->arch, sizeof d->arch, "%s", arch ? arch : "");
    return d;
}

// t += u (same shape), as a sparse union or, when either is dense, densely into t.
static int add_tensor(speck_delta_tensor *t, const speck_delta_tensor *u) {
    if (t->nnz < 0 || u->nnz < 0) {
        float *x = calloc((size_t)t->n, sizeof *x);
        if (!x) return speck_set_error(SPECK_ERR_NOMEM, "delta add: out of memory");
        const speck_delta_tensor *s[2] = {t, u};
        for (int i = 0; i < 2; i++) {
            if (s[i]->nnz < 0)
                for (int64_t j = 0; j < t->n; j++) x[j] += s[i]->val[j];
            else
                for (int64_t j = 0; j < s[i]->nnz; j++) x[s[i]->idx[j]] += s[i]->val[j];
        }
        free(t->idx), free(t->val);
        t->idx = NULL, t->val = x, t->nnz = -1, t->ternary = false;
        return 0;
    }
    const int64_t cap = t->nnz + u->nnz;
    int64_t *idx = malloc((size_t)(cap ? cap : 1) * sizeof *idx);
    float *val = malloc((size_t)(cap ? cap : 1) * sizeof *val);
    if (!idx || !val) {
        free(idx), free(val);
        return speck_set_error(SPECK_ERR_NOMEM, "delta add: out of memory");
    }
    int64_t a = 0, b = 0, k = 0;
    while (a < t->nnz || b < u->nnz) {
        if (b == u->nnz || (a < t->nnz && t->idx[a] < u->idx[b]))
            idx[k] = t->idx[a], val[k++] = t->val[a++];
        else if (a == t->nnz || u->idx[b] < t->idx[a])
            idx[k] = u->idx[b], val[k++] = u->val[b++];
        else
            idx[k] = t->idx[a], val[k++] = t->val[a++] + u->val[b++];
    }
    free(t->idx), free(t->val);
    t->idx = idx, t->val = val, t->nnz = k, t->ternary = false;
    return 0;
}

int speck_delta_add(speck_delta *acc, const speck_delta *d) {
    if (acc->n && strcmp(acc->arch, d->arch))
        return speck_set_error(SPECK_ERR_ARG, "delta add: architectures differ ('%s', '%s')",
                               acc->arch, d->arch);
    if (acc->base_fp && d->base_fp && acc->base_fp != d->base_fp)
        return speck_set_error(SPECK_ERR_ARG,
                               "delta add: the deltas were trained on different base models "
                               "(fingerprints %016llx, %016llx)",
                               (unsigned long long)acc->base_fp, (unsigned long long)d->base_fp);
    if (!acc->n) snprintf(acc->arch, sizeof acc->arch, "%s", d->arch);
    const bool was_empty = acc->n == 0;
    for (int i = 0; i < d->n; i++) {
        const speck_delta_tensor *u = &d->t[i];
        speck_delta_tensor *t = NULL;
        for (int j = 0; j < acc->n && !t; j++)
            if (!strcmp(acc->t[j].name, u->name)) t = &acc->t[j];
        if (t) {
            bool same = t->n_dims == u->n_dims;
            for (int k = 0; k < 4; k++) same &= t->ne[k] == u->ne[k];
            if (!same)
                return speck_set_error(SPECK_ERR_ARG, "delta add: tensor %s differs in shape",
                                       u->name);
            int err = add_tensor(t, u);
            if (err) return err;
            continue;
        }
        if (!(t = speck_delta_push(acc, u->name, u->n_dims, u->ne)))
            return speck_set_error(SPECK_ERR_NOMEM, "delta add: out of memory");
        const int64_t k = u->nnz < 0 ? u->n : u->nnz;
        t->val = malloc((size_t)(k ? k : 1) * sizeof *t->val);
        if (u->nnz >= 0) t->idx = malloc((size_t)(k ? k : 1) * sizeof *t->idx);
        if (!t->val || (u->nnz >= 0 && !t->idx))
            return speck_set_error(SPECK_ERR_NOMEM, "delta add: out of memory");
        memcpy(t->val, u->val, (size_t)k * sizeof *t->val);
        if (u->nnz >= 0) memcpy(t->idx, u->idx, (size_t)k * sizeof *t->idx);
        t->nnz = u->nnz;
    }
    if (!acc->base_fp) acc->base_fp = d->base_fp;
    if (was_empty) {
        acc->method = d->method, acc->p = d->p, acc->rescale = d->rescale;
        acc->density = d->density, acc->alpha = d->alpha, acc->seed = d->seed;
        snprintf(acc->sft, sizeof acc->sft, "%s", d->sft);
        // A lone ternary delta stays as it was; its tensors were copied as plain values.
        if (d->method == SPECK_DELTA_COMPEFT) acc->method = SPECK_DELTA_SFT;
        if (acc->method == SPECK_DELTA_COMPEFT || acc->method == SPECK_DELTA_SFT)
            snprintf(acc->sft, sizeof acc->sft, "%s",
                     d->method == SPECK_DELTA_SFT ? d->sft : "sum");
        return 0;
    }
    bool any_sparse = false;
    for (int j = 0; j < acc->n; j++) any_sparse |= acc->t[j].nnz >= 0;
    acc->method = any_sparse ? SPECK_DELTA_SFT : SPECK_DELTA_DENSE;
    snprintf(acc->sft, sizeof acc->sft, "%s", any_sparse ? "sum" : "");
    return 0;
}

speck_model *speck_model_load_deltas(const char *path, const char *const *deltas, int n,
                                     unsigned flags) {
    speck_delta *d = NULL;
    for (int k = 0; k < n; k++) {
        speck_delta *x = speck_delta_load(deltas[k]);
        int err = !x;
        if (x && !d) {
            d = x;
            continue;
        }
        if (x && (err = speck_delta_add(d, x))) {
            char msg[512];
            snprintf(msg, sizeof msg, "%s", speck_last_error());
            speck_set_error(err, "%s: %s", deltas[k], msg);
        }
        speck_delta_free(x);
        if (err) {
            speck_delta_free(d);
            return NULL;
        }
    }
    if (!d) return speck_model_load_ex(path, flags);
    // The merged model in a temporary file, mapped by the loader and unlinked at once.
    const char *dir = getenv("TMPDIR");
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s/speck-delta-XXXXXX", dir && *dir ? dir : "/tmp");
    const int fd = mkstemp(tmp);
    if (fd < 0) {
        speck_delta_free(d);
        speck_set_error(SPECK_ERR_IO, "%s: cannot create a temporary file", tmp);
        return NULL;
    }
    close(fd);
    const int err = speck_delta_apply(path, d, 1.0f, -1, tmp);
    if (err) { // name the delta files: the message names only the base
        char msg[512];
        snprintf(msg, sizeof msg, "%s", speck_last_error());
        speck_set_error(err, "%s%s: %s", deltas[0], n > 1 ? " (and the deltas summed with it)" : "",
                        msg);
    }
    speck_delta_free(d);
    speck_model *m = err ? NULL : speck_model_load_ex(tmp, flags);
    unlink(tmp);
    return m;
}
