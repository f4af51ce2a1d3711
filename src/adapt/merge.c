// `speck merge`: adapters baked into a copy of the base GGUF (W + Σ s·B·A), streamed one
// tensor at a time into a temporary file renamed into place.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapt/adapt_internal.h"
#include "formats/gguf_internal.h"
#include "formats/gguf_stream.h"
#include "kernels/kernels.h"

#define NT SPECK_LORA_N_TARGETS

// Which (layer, target) a base tensor name is, or -1.
static int target_of(const char *name, int n_layer) {
    int l, off = 0;
    if (sscanf(name, "blk.%d.%n", &l, &off) != 1 || !off || l < 0 || l >= n_layer) return -1;
    for (int t = 0; t < NT; t++) {
        const char *g = speck_lora_target_gguf(t);
        size_t k = strlen(g);
        if (!strncmp(name + off, g, k) && !strcmp(name + off + k, ".weight")) return l * NT + t;
    }
    return -1;
}

// Rows of W (f32, (n_out, n_in)) += s · B·A for every adapter touching matrix k.
static void add_terms(float *W, int64_t n_out, int64_t n_in, int k, speck_lora *const *ad,
                      const float *scales, int n) {
    for (int i = 0; i < n; i++) {
        if (k / NT >= ad[i]->n_layer) continue;
        const speck_lora_mat *mt = &ad[i]->m[k];
        if (!mt->rank) continue;
        const float s = speck_lora_scale(ad[i], mt, scales[i]);
#pragma omp parallel for schedule(static)
        for (int64_t o = 0; o < n_out; o++) {
            float *w = W + (size_t)o * n_in;
            for (int r = 0; r < mt->rank; r++) {
                const float c = s * mt->b[(size_t)o * mt->rank + r];
                const float *a = mt->a + (size_t)r * n_in;
                for (int64_t j = 0; j < n_in; j++) w[j] += c * a[j];
            }
        }
    }
}

int speck_lora_merge(const char *base_path, speck_lora *const *adapters, const float *scales,
                     int n, int type, const char *out_path) {
    if (type >= 0 && !speck_type_name(type))
        return speck_set_error(SPECK_ERR_ARG, "merge: unsupported type %d", type);
    speck_model *m = speck_model_load_ex(base_path, SPECK_LOAD_NO_PANELS);
    if (!m) return SPECK_ERR_FORMAT;
    int err = 0;
    for (int i = 0; i < n && !err; i++)
        if (speck_lora_check(adapters[i], m)) {
            char msg[512];
            snprintf(msg, sizeof msg, "%s", speck_last_error());
            err = speck_set_error(SPECK_ERR_ARG, "merge: adapter %d: %s", i + 1, msg);
        }
    const speck_gguf *g = speck_model_gguf(m);
    const int L = speck_model_hparams(m)->n_layer;
    const int64_t nt = speck_gguf_n_tensors(g);
    speck_gguf_writer *w = err ? NULL : speck_gguf_writer_new();
    if (!err && !w) err = speck_set_error(SPECK_ERR_NOMEM, "merge: out of memory");
    for (int64_t i = 0; !err && i < speck_gguf_n_kv(g); i++) {
        if (type >= 0 && !strcmp(speck_gguf_key(g, i), "general.file_type")) continue;
        err = speck_gguf_copy_kv(w, g, i);
    }
    if (!err && type >= 0 && speck_gguf_set_u32(w, "general.file_type",
                                                 (uint32_t)speck_gguf_file_type((speck_type)type)))
        err = speck_set_error(SPECK_ERR_NOMEM, "merge: out of memory");
    // Output type of each tensor: --type for matrices (those whose rows it can hold), else kept.
    int *otype = calloc((size_t)(nt ? nt : 1), sizeof *otype);
    if (!err && !otype) err = speck_set_error(SPECK_ERR_NOMEM, "merge: out of memory");
    for (int64_t i = 0; !err && i < nt; i++) {
        const speck_gguf_tensor *t = speck_gguf_tensor_at(g, i);
        int k = target_of(t->name, L);
        bool mat = t->n_dims == 2 && t->ne[1] > 1;
        otype[i] = t->type;
        if (type >= 0 && mat && t->ne[0] % speck_type_block_size((speck_type)type) == 0)
            otype[i] = type;
        if (k >= 0 && !speck_type_name(t->type))
            err = speck_set_error(SPECK_ERR_UNSUPPORTED, "merge: %s has a type speck cannot read",
                                  t->name);
        if (!err)
            err = speck_gguf_add_tensor(w, t->name, (speck_type)otype[i], t->n_dims, t->ne, NULL);
    }
    // Every adapted matrix must be a tensor of the file (not fused into another).
    for (int i = 0; i < n && !err; i++)
        for (int k = 0; k < adapters[i]->n_layer * NT && !err; k++) {
            if (!adapters[i]->m[k].rank) continue;
            char nm[96];
            snprintf(nm, sizeof nm, "blk.%d.%s.weight", k / NT, speck_lora_target_gguf(k % NT));
            if (!speck_gguf_find_tensor(g, nm))
                err = speck_set_error(SPECK_ERR_UNSUPPORTED,
                                      "merge: the base has no tensor %s (fused?)", nm);
        }
    speck_gguf_stream *s = err ? NULL : speck_gguf_stream_open(w, out_path);
    if (!err && !s) err = SPECK_ERR_IO;
    for (int64_t i = 0; !err && i < nt; i++) {
        const speck_gguf_tensor *t = speck_gguf_tensor_at(g, i);
        int k = target_of(t->name, L);
        bool touched = false;
        for (int a = 0; k >= 0 && a < n; a++)
            touched |= k / NT < adapters[a]->n_layer && adapters[a]->m[k].rank > 0;
        if (!touched && otype[i] == t->type) {
            err = speck_gguf_stream_write(s, t->data, t->n_bytes);
            continue;
        }
        const int64_t cols = t->ne[0], rows = t->n_elements / t->ne[0];
        const size_t irs = speck_type_row_size((speck_type)t->type, cols);
        const size_t ors = speck_type_row_size((speck_type)otype[i], cols);
        float *f = malloc((size_t)(rows * cols) * sizeof(float));
        uint8_t *q = malloc(ors * (size_t)rows);
        if (!f || !q) {
            err = speck_set_error(SPECK_ERR_NOMEM, "merge: out of memory for %s", t->name);
        } else {
#pragma omp parallel for schedule(static)
            for (int64_t r = 0; r < rows; r++)
                speck_dequantize_row((speck_type)t->type, (const uint8_t *)t->data + irs * r,
                                     f + (size_t)r * cols, cols);
            if (touched) add_terms(f, rows, cols, k, adapters, scales, n);
#pragma omp parallel for schedule(static)
            for (int64_t r = 0; r < rows; r++)
                speck_quantize_row((speck_type)otype[i], f + (size_t)r * cols, q + ors * r, cols);
            err = speck_gguf_stream_write(s, q, ors * (size_t)rows);
        }
        free(f);
        free(q);
    }
    if (s) {
        if (err)
            speck_gguf_stream_abort(s);
        else
            err = speck_gguf_stream_close(s);
    }
    free(otype);
    speck_gguf_writer_free(w);
    speck_model_free(m);
    return err;
}
