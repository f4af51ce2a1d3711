// `speck quantize`: rewrite a GGUF model with its weight matrices in other types, streaming one
// tensor (in row chunks) at a time, like llama.cpp's llama-quantize: its file types' per-tensor
// mixes, block fallbacks, importance weights; calibrated rounding (GPTQ) and bit allocation
// plug in through the per-tensor plan (quant_plan.h).
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "formats/gguf_internal.h"
#include "formats/gguf_stream.h"
#include "formats/hf_internal.h"
#include "formats/quant_plan.h"
#include "kernels/kernels.h"
#include "quant/quant.h"
#include "speck.h"

// speck's types are the ones speck_type_name knows; the quantized ones have blocks.
static bool speck_computes(int t) {
    return speck_type_name(t) != NULL;
}
static bool is_quant(int t) {
    return speck_computes(t) && speck_type_block_size(t) > 1;
}

int quant_mix_info(const speck_gguf *g, bool has_imatrix, speck_mix_info *mi) {
    memset(mi, 0, sizeof *mi);
    const int64_t ka = speck_gguf_find_key(g, "general.architecture");
    mi->arch = ka >= 0 && speck_gguf_get_str(g, ka) ? speck_gguf_get_str(g, ka) : "";
    char key[160];
    const char *names[3] = {"block_count", "attention.head_count", "attention.head_count_kv"};
    int *dst[3] = {&mi->n_layer, &mi->n_head, &mi->n_head_kv};
    for (int i = 0; i < 3; i++) {
        snprintf(key, sizeof key, "%s.%s", mi->arch, names[i]);
        const int64_t k = speck_gguf_find_key(g, key);
        *dst[i] = k >= 0 ? (int)speck_gguf_get_int(g, k) : 0;
    }
    if (mi->n_head_kv <= 0) mi->n_head_kv = mi->n_head;
    mi->has_output = speck_gguf_find_tensor(g, "output.weight") != NULL;
    mi->has_imatrix = has_imatrix;
    return 0;
}

int quant_wanted_type(const speck_gguf_tensor *t, const speck_quantize_opts *o,
                      const speck_mix_info *mi) {
    if (!speck_ftype_quantizes(t->name, t->n_dims)) return t->type;
    int want = o->ftype > 0 ? (int)speck_ftype_tensor_type(o->ftype, mi, t->name, t->ne[0])
                            : (int)o->type;
    if (!strcmp(t->name, "token_embd.weight") && o->embd_type >= 0) want = o->embd_type;
    if (!strcmp(t->name, "output.weight") && o->output_type >= 0) want = o->output_type;
    return want;
}

int quant_plan_build(const speck_gguf *g, const char *path, const speck_quantize_opts *o,
                     quant_plan *plan) {
    (void)path;
    speck_mix_info mi;
    quant_mix_info(g, o->imatrix != NULL, &mi);
    for (int64_t i = 0; i < speck_gguf_n_tensors(g); i++) {
        const speck_gguf_tensor *t = speck_gguf_tensor_at(g, i);
        plan[i].wanted = quant_wanted_type(t, o, &mi);
        plan[i].type = plan[i].wanted == t->type
                           ? t->type
                           : (int)speck_type_for_row((speck_type)plan[i].wanted, t->ne[0]);
    }
    return 0;
}

static int check_types(const speck_gguf *g, const char *in, const quant_plan *p,
                       const speck_quantize_opts *o) {
    for (int64_t i = 0; i < speck_gguf_n_tensors(g); i++) {
        const speck_gguf_tensor *t = speck_gguf_tensor_at(g, i);
        const int dt = p[i].type;
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

// Metadata: every key of the source except general.file_type (the new file type: the mix's
// code, or that of the first layer's q projection, as convert and llama-quantize set it) and
// general.quantization_version (2, ggml's current block layouts, when anything is quantized).
static int copy_kv(speck_gguf_writer *w, const speck_gguf *g, const quant_plan *p,
                   const speck_quantize_opts *o) {
    int ft = o->ftype > 0 ? o->ftype : -1;
    bool any_quant = false;
    for (int64_t i = 0; i < speck_gguf_n_tensors(g); i++) {
        const speck_gguf_tensor *t = speck_gguf_tensor_at(g, i);
        if (ft < 0 && strstr(t->name, "attn_q.weight")) ft = speck_gguf_file_type(p[i].type);
        any_quant |= is_quant(p[i].type);
    }
    if (ft < 0) ft = speck_gguf_file_type(o->type);
    int rc = 0;
    for (int64_t i = 0; i < speck_gguf_n_kv(g) && !rc; i++) {
        const char *k = speck_gguf_key(g, i);
        if (strcmp(k, "general.file_type") && strcmp(k, "general.quantization_version"))
            rc = speck_gguf_copy_kv(w, g, i);
    }
    if (!rc && any_quant) rc = speck_gguf_set_u32(w, "general.quantization_version", 2);
    if (!rc) rc = speck_gguf_set_u32(w, "general.file_type", (uint32_t)ft);
    return rc;
}

// A Hugging Face directory is converted (dtypes kept) into a temporary GGUF first, whose path
// goes to tmp (the caller unlinks it when done: calibration loads the model from it); tmp is ""
// for a GGUF input.
static speck_gguf *open_input(const char *in_path, bool progress, char *tmp, size_t tmp_size) {
    struct stat st;
    tmp[0] = 0;
    if (stat(in_path, &st) || !S_ISDIR(st.st_mode)) return speck_gguf_open(in_path);
    const char *td = getenv("TMPDIR");
    snprintf(tmp, tmp_size, "%s/speck-quant-XXXXXX", td && *td ? td : "/tmp");
    int fd = mkstemp(tmp);
    if (fd < 0) {
        speck_set_error(SPECK_ERR_IO, "%s: cannot create a temporary file: %s", tmp,
                        strerror(errno));
        tmp[0] = 0;
        return NULL;
    }
    close(fd);
    speck_gguf *g = NULL;
    if (speck_hf_convert(in_path, tmp, -1, progress) == 0) g = speck_gguf_open(tmp);
    if (!g) unlink(tmp), tmp[0] = 0;
    return g;
}

// The imatrix weights of tensor t (NULL if none). speck_imatrix_check has made sure sizes match.
static const float *imp_for(const speck_quantize_opts *o, const speck_gguf_tensor *t) {
    int64_t n = 0;
    const float *w = o->imatrix ? speck_imatrix_get(o->imatrix, t->name, &n) : NULL;
    return w && n == t->ne[0] ? w : NULL;
}

// Rows [r0, r0 + k) of t as floats: x (k, cols).
static void rows_f32(const speck_gguf_tensor *t, int64_t r0, int64_t k, float *x) {
    const int64_t cols = t->ne[0];
    const size_t rs = speck_type_row_size((speck_type)t->type, cols);
#pragma omp parallel for schedule(static) if (k * cols >= (1 << 16))
    for (int64_t r = 0; r < k; r++)
        speck_dequantize_row((speck_type)t->type, (const uint8_t *)t->data + (size_t)(r0 + r) * rs,
                             x + r * cols, cols);
}

// Adds the squared error of k quantized rows q (type dt) against x (k, cols) to *num and the
// squared values to *den, each column weighted by w (or 1).
static void add_err(const float *x, const void *q, speck_type dt, int64_t k, int64_t cols,
                    const float *w, double *num, double *den) {
    const size_t rs = speck_type_row_size(dt, cols);
    double sn = 0, sd = 0;
#pragma omp parallel reduction(+ : sn, sd) if (k * cols >= (1 << 16))
    {
        float *y = malloc((size_t)cols * sizeof *y);
#pragma omp for schedule(static)
        for (int64_t r = 0; r < k; r++) {
            if (!y) continue;
            speck_dequantize_row(dt, (const uint8_t *)q + (size_t)r * rs, y, cols);
            const float *xr = x + r * cols;
            for (int64_t j = 0; j < cols; j++) {
                const double e = (double)xr[j] - y[j], c = w ? w[j] : 1.0;
                sn += c * e * e;
                sd += c * (double)xr[j] * xr[j];
            }
        }
        free(y);
    }
    *num += sn, *den += sd;
}

// Tensor t converted to type dt, streamed in row chunks through x (floats) and buf (output).
static int write_converted(speck_gguf_stream *s, const speck_gguf_tensor *t, speck_type dt,
                           const speck_quantize_opts *o, const void *premade, float *x,
                           size_t x_cap, uint8_t *buf, size_t buf_size, double *err) {
    const int64_t cols = t->ne[0], rows = t->n_elements / cols;
    const size_t out_rs = speck_type_row_size(dt, cols);
    const size_t in_rs = speck_type_row_size((speck_type)t->type, cols);
    if (premade) { // rounded already (GPTQ, bit allocation): the bytes as they are
        const size_t total = (size_t)rows * out_rs;
        int rc = speck_gguf_stream_write(s, premade, total);
        if (!rc && o->measure) {
            double num = 0, den = 0;
            for (int64_t r0 = 0; r0 < rows; r0 += (int64_t)(x_cap / (size_t)cols)) {
                int64_t k = (int64_t)(x_cap / (size_t)cols);
                if (k > rows - r0) k = rows - r0;
                rows_f32(t, r0, k, x);
                add_err(x, (const uint8_t *)premade + (size_t)r0 * out_rs, dt, k, cols,
                        imp_for(o, t), &num, &den);
            }
            *err = den > 0 ? num / den : 0;
        }
        hf_release(t->data, (size_t)rows * in_rs);
        return rc;
    }
    (void)x;
    int64_t chunk = (int64_t)(buf_size / out_rs);
    if (chunk < 1) chunk = 1;
    const float *imp = imp_for(o, t);
    void (*quant)(const float *, void *, int64_t, const float *) = speck_traits(dt)->quant;
    double num = 0, den = 0;
    int rc = 0, oom = 0;
    for (int64_t r0 = 0; r0 < rows && !rc; r0 += chunk) {
        const int64_t k = rows - r0 < chunk ? rows - r0 : chunk;
        // Each row converted in one go (read, quantize, measure) by whichever thread is free:
        // rows are claimed a few at a time, so a thread the shared machine descheduled does
        // not hold the others up at the end of the chunk.
#pragma omp parallel reduction(+ : num, den, oom) if (k * cols >= (1 << 16))
        {
            float *a = malloc((size_t)cols * 2 * sizeof *a), *b = a ? a + cols : NULL;
            oom += !a;
#pragma omp for schedule(dynamic, 4)
            for (int64_t r = 0; r < k; r++) {
                if (!a) continue;
                uint8_t *q = buf + (size_t)r * out_rs;
                speck_dequantize_row((speck_type)t->type,
                                     (const uint8_t *)t->data + (size_t)(r0 + r) * in_rs, a, cols);
                quant(a, q, cols, imp);
                if (!o->measure) continue;
                speck_dequantize_row(dt, q, b, cols);
                for (int64_t j = 0; j < cols; j++) {
                    const double e = (double)a[j] - b[j], c = imp ? imp[j] : 1.0;
                    num += c * e * e;
                    den += c * (double)a[j] * a[j];
                }
            }
            free(a);
        }
        if (oom) rc = speck_set_error(SPECK_ERR_NOMEM, "out of memory");
        if (!rc) rc = speck_gguf_stream_write(s, buf, (size_t)k * out_rs);
        hf_release((const uint8_t *)t->data + (size_t)r0 * in_rs, (size_t)k * in_rs);
    }
    if (o->measure) *err = den > 0 ? num / den : 0;
    return rc;
}

int speck_gguf_quantize(const char *in_path, const char *out_path, const speck_quantize_opts *o,
                        bool progress) {
    if (o->ftype > 0 && speck_ftype_base(o->ftype) < 0)
        return speck_set_error(SPECK_ERR_ARG, "quantize: unknown file type %d", o->ftype);
    const int types[] = {o->ftype > 0 ? speck_ftype_base(o->ftype) : (int)o->type, o->embd_type,
                         o->output_type};
    for (int i = 0; i < 3; i++)
        if ((i == 0 || types[i] >= 0) &&
            !speck_computes(types[i]))
            return speck_set_error(SPECK_ERR_ARG, "quantize: unsupported output type %d",
                                   types[i]);
    char tmp[PATH_MAX];
    speck_gguf *g = open_input(in_path, progress, tmp, sizeof tmp);
    if (!g) return SPECK_ERR_FORMAT; // the message names the file and the fault
    const char *src = tmp[0] ? tmp : in_path; // what calibration loads the model from
    const int64_t n = speck_gguf_n_tensors(g);
    speck_gguf_writer *w = NULL;
    speck_gguf_stream *s = NULL;
    uint8_t *buf = NULL;
    float *x = NULL;
    quant_plan *plan = calloc((size_t)(n > 0 ? n : 1), sizeof *plan);
    int rc = plan ? 0 : speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    if (!rc && o->imatrix) rc = speck_imatrix_check(o->imatrix, g);
    if (!rc) rc = quant_plan_build(g, in_path, o, plan);
    if (!rc) rc = check_types(g, in_path, plan, o);
    if (!rc && (o->method != SPECK_QMETHOD_RTN || o->target_bpw > 0))
        rc = quant_plan_calibrate(g, src, o, plan, progress);
    if (!rc && !(w = speck_gguf_writer_new())) rc = SPECK_ERR_NOMEM;
    if (!rc) rc = copy_kv(w, g, plan, o);
    size_t max_row = 0;
    for (int64_t i = 0; !rc && i < n; i++) {
        const speck_gguf_tensor *t = speck_gguf_tensor_at(g, i);
        rc = speck_gguf_add_tensor(w, t->name, (speck_type)plan[i].type, t->n_dims, t->ne, NULL);
        const size_t rs = plan[i].type == t->type
                              ? 0
                              : speck_type_row_size((speck_type)plan[i].type, t->ne[0]);
        if (rs > max_row) max_row = rs;
    }
    // Row chunks of ~8 MB out and up to 16 MB of floats (tensors kept as they are go through in
    // pieces of the output buffer's size).
    const size_t buf_size = max_row > (8u << 20) ? max_row : (8u << 20);
    size_t x_cap = 4u << 20; // floats
    for (int64_t i = 0; i < n; i++)
        if ((size_t)speck_gguf_tensor_at(g, i)->ne[0] > x_cap)
            x_cap = (size_t)speck_gguf_tensor_at(g, i)->ne[0];
    if (!rc && (!(buf = malloc(buf_size)) || !(x = malloc(x_cap * sizeof *x))))
        rc = speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    if (!rc && !(s = speck_gguf_stream_open(w, out_path))) rc = SPECK_ERR_IO;
    hf_progress pr;
    hf_progress_start(&pr, progress, n);
    for (int64_t i = 0; !rc && i < n; i++) {
        const speck_gguf_tensor *t = speck_gguf_tensor_at(g, i);
        const int dt = plan[i].type;
        double err = -1;
        if (dt == t->type) {
            for (size_t off = 0; off < t->n_bytes && !rc; off += buf_size) {
                const size_t k = t->n_bytes - off < buf_size ? t->n_bytes - off : buf_size;
                rc = speck_gguf_stream_write(s, (const uint8_t *)t->data + off, k);
                hf_release((const uint8_t *)t->data + off, k);
            }
            if (o->measure && speck_ftype_quantizes(t->name, t->n_dims)) err = 0;
        } else {
            rc = write_converted(s, t, (speck_type)dt, o, plan[i].data, x, x_cap, buf, buf_size,
                                 &err);
        }
        free(plan[i].data); // GPTQ / allocation output, written now
        plan[i].data = NULL;
        // Rows written are never read again (released chunk by chunk, so RSS stays near one
        // chunk, not one tensor: the head of a 1.1B model is 131 MB in f16); the pages at either
        // end of the tensor, shared with its neighbours, go here.
        hf_release(t->data, t->n_bytes);
        hf_progress_step(&pr, i, t->name, t->n_bytes);
        if (!rc && o->on_tensor) {
            const speck_quant_tensor_info ti = {
                .name = t->name,
                .index = (int)i,
                .n_tensors = (int)n,
                .src_type = t->type,
                .type = dt,
                .wanted = plan[i].wanted,
                .n_elements = t->n_elements,
                .ne0 = t->ne[0],
                .bytes = dt == t->type ? t->n_bytes
                                       : speck_type_row_size((speck_type)dt, t->ne[0]) *
                                             (size_t)(t->n_elements / t->ne[0]),
                .err = err,
            };
            o->on_tensor(&ti, o->user);
        }
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
    for (int64_t i = 0; plan && i < n; i++) free(plan[i].data);
    free(plan);
    free(buf);
    free(x);
    speck_gguf_writer_free(w);
    speck_gguf_close(g);
    if (tmp[0]) unlink(tmp);
    return rc;
}
