// `speck quantize`: rewrite a GGUF model with its weight matrices in another type, streaming one
// tensor (in row chunks) at a time, like llama.cpp's llama-quantize for the types speck has.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/gguf_internal.h"
#include "formats/gguf_stream.h"
#include "formats/hf_internal.h"
#include "speck.h"

// speck's types are the ones speck_type_name knows; the quantized ones have blocks.
static bool speck_computes(int t) {
    return speck_type_name(t) != NULL;
}
static bool is_quant(int t) {
    return speck_computes(t) && speck_type_block_size(t) > 1;
}

// The type tensor t gets: matrices (two or more dimensions) take the requested type (the token
// embeddings and output head their own when given), falling back as llama-quantize does when
// the type's block does not divide a row (speck_type_for_row), as `speck convert` does; vectors
// (norms, biases) are kept as they are.
static int out_type(const speck_gguf_tensor *t, const speck_quantize_opts *o) {
    if (t->n_dims < 2) return t->type;
    speck_type want = o->type;
    if (!strcmp(t->name, "token_embd.weight") && o->embd_type >= 0) want = o->embd_type;
    if (!strcmp(t->name, "output.weight") && o->output_type >= 0) want = o->output_type;
    return speck_type_for_row(want, t->ne[0]);
}

static int check_types(const speck_gguf *g, const char *in, const speck_quantize_opts *o) {
    for (int64_t i = 0; i < speck_gguf_n_tensors(g); i++) {
        const speck_gguf_tensor *t = speck_gguf_tensor_at(g, i);
        const int dt = out_type(t, o);
        if (dt == t->type) continue;
        if (!speck_computes(t->type))
            return speck_set_error(
                SPECK_ERR_FORMAT,
                "%s: tensor '%s' has ggml type %s (id %d), which speck cannot convert "
                "(it reads f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q2_k..q6_k, "
                "iq4_nl, iq4_xs)",
                in, t->name, speck_gguf_type_label(t->type), t->type);
        if (is_quant(t->type) && is_quant(dt) && !o->allow_requantize)
            return speck_set_error(SPECK_ERR_ARG,
                                   "%s: tensor '%s' is already %s; quantizing it again to %s "
                                   "adds the two rounding errors (allow with --allow-requantize)",
                                   in, t->name, speck_type_name((speck_type)t->type),
                                   speck_type_name((speck_type)dt));
    }
    return 0;
}

// Metadata: every key of the source except general.file_type, which describes the new matrices
// (those of the first layer's q projection, as convert and llama.cpp set it).
static int copy_kv(speck_gguf_writer *w, const speck_gguf *g, const speck_quantize_opts *o) {
    int ft = -1;
    for (int64_t i = 0; i < speck_gguf_n_tensors(g) && ft < 0; i++) {
        const speck_gguf_tensor *t = speck_gguf_tensor_at(g, i);
        if (strstr(t->name, "attn_q.weight")) ft = speck_gguf_file_type(out_type(t, o));
    }
    if (ft < 0) ft = speck_gguf_file_type(o->type);
    int rc = 0;
    for (int64_t i = 0; i < speck_gguf_n_kv(g) && !rc; i++)
        if (strcmp(speck_gguf_key(g, i), "general.file_type")) rc = speck_gguf_copy_kv(w, g, i);
    if (!rc) rc = speck_gguf_set_u32(w, "general.file_type", (uint32_t)ft);
    return rc;
}

int speck_gguf_quantize(const char *in_path, const char *out_path, const speck_quantize_opts *o,
                        bool progress) {
    const speck_type types[] = {o->type, o->embd_type, o->output_type};
    for (int i = 0; i < 3; i++)
        if ((i == 0 || (int)types[i] >= 0) && !speck_computes(types[i]))
            return speck_set_error(SPECK_ERR_ARG, "quantize: unsupported output type %d",
                                   (int)types[i]);
    speck_gguf *g = speck_gguf_open(in_path);
    if (!g) return SPECK_ERR_FORMAT; // the message names the file and the fault
    speck_gguf_writer *w = NULL;
    speck_gguf_stream *s = NULL;
    uint8_t *buf = NULL;
    int rc = check_types(g, in_path, o);
    if (!rc && !(w = speck_gguf_writer_new())) rc = SPECK_ERR_NOMEM;
    if (!rc) rc = copy_kv(w, g, o);
    size_t max_row = 0;
    const int64_t n = speck_gguf_n_tensors(g);
    for (int64_t i = 0; !rc && i < n; i++) {
        const speck_gguf_tensor *t = speck_gguf_tensor_at(g, i);
        const int dt = out_type(t, o);
        rc = speck_gguf_add_tensor(w, t->name, (speck_type)dt, t->n_dims, t->ne, NULL);
        const size_t rs = dt == t->type ? 0 : speck_type_row_size((speck_type)dt, t->ne[0]);
        if (rs > max_row) max_row = rs;
    }
    // Row chunks of ~8 MB (tensors kept as they are go through in pieces of that size).
    const size_t buf_size = max_row > (8u << 20) ? max_row : (8u << 20);
    if (!rc && !(buf = malloc(buf_size))) rc = speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    if (!rc && !(s = speck_gguf_stream_open(w, out_path))) rc = SPECK_ERR_IO;
    hf_progress pr;
    hf_progress_start(&pr, progress, n);
    for (int64_t i = 0; !rc && i < n; i++) {
        const speck_gguf_tensor *t = speck_gguf_tensor_at(g, i);
        const int dt = out_type(t, o);
        if (dt == t->type) {
            for (size_t off = 0; off < t->n_bytes && !rc; off += buf_size) {
                const size_t k = t->n_bytes - off < buf_size ? t->n_bytes - off : buf_size;
                rc = speck_gguf_stream_write(s, (const uint8_t *)t->data + off, k);
                hf_release((const uint8_t *)t->data + off, k);
            }
        } else {
            const int64_t cols = t->ne[0], rows = t->n_elements / cols;
            const size_t out_rs = speck_type_row_size((speck_type)dt, cols);
            const int64_t chunk = buf_size / out_rs > 0 ? (int64_t)(buf_size / out_rs) : 1;
            for (int64_t r0 = 0; r0 < rows && !rc; r0 += chunk) {
                const int64_t k = rows - r0 < chunk ? rows - r0 : chunk;
                hf_convert_rows(t->data, (speck_type)t->type, buf, (speck_type)dt, r0, k, cols, 0,
                                1);
                rc = speck_gguf_stream_write(s, buf, (size_t)k * out_rs);
                const size_t in_rs = speck_type_row_size((speck_type)t->type, cols);
                hf_release((const uint8_t *)t->data + (size_t)r0 * in_rs, (size_t)k * in_rs);
            }
        }
        // Rows written are never read again (released above chunk by chunk, so RSS stays near
        // one chunk, not one tensor: the head of a 1.1B model is 131 MB in f16); the pages at
        // either end of the tensor, shared with its neighbours, go here.
        hf_release(t->data, t->n_bytes);
        hf_progress_step(&pr, i, t->name, t->n_bytes);
    }
    if (!rc) {
        rc = speck_gguf_stream_close(s);
        s = NULL;
    }
    if (!rc)
        hf_progress_end(&pr, "quantize");
    else if (pr.on)
        fprintf(stderr, "\n");
    speck_gguf_stream_abort(s);
    free(buf);
    speck_gguf_writer_free(w);
    speck_gguf_close(g);
    return rc;
}
