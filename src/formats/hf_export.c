// GGUF -> Hugging Face directory: config.json, model.safetensors, tokenizer.json,
// tokenizer_config.json. The inverse of hf_convert.c, from the same architecture descriptions
// (src/model/arch_*.c): tensor names mapped back, llama Q/K rows de-interleaved to rotate-half,
// Gemma's norms back to w, llama.cpp's rope_freqs divisors turned back into a "llama3"
// rope_scaling entry, LongRoPE's factor tensors into a "longrope" one, a mixture of experts'
// stacked 3-D tensors into one tensor per expert. Everything is written into
// a temporary directory beside the target, renamed into place only when complete.
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "formats/hf_internal.h"
#include "kernels/kernels.h"
#include "model/model_internal.h"

typedef struct {
    char hf[128];
    const speck_gguf_tensor *src;
    int64_t rows, cols; // cols = 0: vector
    int qk_head_dim;
    float shift; // subtracted from every value (Gemma's norms: GGUF 1 + w -> w)
    size_t off;  // bytes into src's data: one expert's matrix of a stacked 3-D tensor
} ex_t;

typedef struct {
    ex_t *t;
    int n, cap;
} ex_list;

// expert >= 0: that expert's (rows, cols) matrix of the stacked [cols, rows, n_expert] tensor.
// A vector stored as a (1, n) matrix in Hugging Face's layout (Qwen2-MoE's shared_expert_gate, a
// Linear(n, 1)) has row1 set.
static int ex_add(ex_list *l, const speck_gguf *g, const char *gg, const char *hf, int qk,
                  float shift, bool required, int expert, bool row1) {
    const speck_gguf_tensor *t = speck_gguf_find_tensor(g, gg);
    if (!t) {
        if (!required) return 0;
        return speck_set_error(SPECK_ERR_FORMAT, "%s: missing tensor '%s'", speck_gguf_path(g), gg);
    }
    if (l->n == l->cap) {
        int cap = l->cap ? l->cap * 2 : 64;
        ex_t *p = realloc(l->t, (size_t)cap * sizeof *p);
        if (!p) return speck_set_error(SPECK_ERR_NOMEM, "out of memory");
        l->t = p;
        l->cap = cap;
    }
    ex_t *e = &l->t[l->n++];
    snprintf(e->hf, sizeof e->hf, "%s", hf);
    e->src = t;
    e->rows = t->n_dims == 1 ? t->ne[0] : t->ne[1];
    e->cols = t->n_dims == 1 ? 0 : t->ne[0];
    e->qk_head_dim = qk;
    e->shift = shift;
    e->off = 0;
    if (expert >= 0) {
        if (t->n_dims != 3 || expert >= t->ne[2]) {
            l->n--;
            return speck_set_error(SPECK_ERR_FORMAT, "%s: tensor '%s' does not hold expert %d",
                                   speck_gguf_path(g), gg, expert);
        }
        e->off = (size_t)expert * (t->n_bytes / (size_t)t->ne[2]);
    }
    if (row1 && t->n_dims == 1) e->rows = 1, e->cols = t->ne[0];
    return 0;
}

// llama.cpp's rope_freqs.weight holds, per frequency i, the divisor d_i of base^(-2i/d) that
// Llama 3.1 scaling applies: 1 for short wavelengths, `factor` for long ones, and in between
// 1/d = (1 - s)/factor + s with s = (orig/wavelen - low) / (high - low). s is linear in
// 1/wavelen, so two interpolated points give the line; (orig, low, high) are only determined up
// to a common scale, which the formula does not see.
static int fit_llama3(const speck_hparams *hp, const float *d, cJSON *rs, const char *src) {
    int half = hp->head_dim / 2;
    double F = 1;
    for (int i = 0; i < half; i++) F = d[i] > F ? d[i] : F;
    double sx = 0, sy = 0, sxx = 0, sxy = 0;
    int n = 0;
    for (int i = 0; i < half; i++) {
        if (d[i] <= 1 + 1e-6 || d[i] >= F * (1 - 1e-6)) continue;
        double x = pow(hp->rope_freq_base, -2.0 * i / hp->head_dim) / (2 * M_PI);
        double s = (1 / d[i] - 1 / F) / (1 - 1 / F);
        sx += x, sy += s, sxx += x * x, sxy += x * s, n++;
    }
    if (n < 2 || F <= 1)
        return speck_set_error(SPECK_ERR_UNSUPPORTED,
                               "%s: rope_freqs.weight cannot be expressed as a llama3 "
                               "rope_scaling (too few interpolated frequencies)",
                               src);
    double A = (n * sxy - sx * sy) / (n * sxx - sx * sx), B = (sy - A * sx) / n;
    // Pick the representative with low_freq_factor = 1 (Llama 3.1 / 3.2's value, so their
    // original numbers come back): s = (orig x - 1) / (high - 1) gives B = -1 / (high - 1).
    if (!(B < 0 && A > 0))
        return speck_set_error(SPECK_ERR_UNSUPPORTED,
                               "%s: rope_freqs.weight does not follow llama3 scaling", src);
    double low = 1, high = 1 - 1 / B, orig = A * (high - low);
    if (fabs(orig - round(orig)) < 1e-6 * orig) orig = round(orig);
    if (fabs(high - round(high)) < 1e-6 * high) high = round(high);
    for (int i = 0; i < half; i++) { // the fit must reproduce every divisor
        double f = pow(hp->rope_freq_base, -2.0 * i / hp->head_dim), wl = 2 * M_PI / f, e = 1;
        if (wl > orig / low)
            e = F;
        else if (wl >= orig / high) {
            double s = (orig / wl - low) / (high - low);
            e = 1 / ((1 - s) / F + s);
        }
        if (fabs(e - d[i]) > 1e-4 * d[i])
            return speck_set_error(SPECK_ERR_UNSUPPORTED,
                                   "%s: rope_freqs.weight[%d] = %g does not follow llama3 "
                                   "scaling",
                                   src, i, d[i]);
    }
    cJSON_AddNumberToObject(rs, "factor", F);
    cJSON_AddNumberToObject(rs, "low_freq_factor", low);
    cJSON_AddNumberToObject(rs, "high_freq_factor", high);
    cJSON_AddNumberToObject(rs, "original_max_position_embeddings", orig);
    return 0;
}

// v (a float32 from the GGUF) as the double with the fewest significant digits that reads back
// as v, so config.json says 1e-05 as Hugging Face's files do, not 9.99999974737875e-06 (the
// float widened).
static double short_f32(float v) {
    char s[32];
    for (int p = 1; p <= 9; p++) {
        snprintf(s, sizeof s, "%.*g", p, (double)v);
        if (strtof(s, NULL) == v) return strtod(s, NULL);
    }
    return v;
}

static const char *torch_dtype(speck_type t) {
    return t == SPECK_TYPE_F16 ? "float16" : t == SPECK_TYPE_BF16 ? "bfloat16" : "float32";
}

// LongRoPE's factors of tensor `name` as a config.json list.
static int add_factors(cJSON *rs, const speck_gguf *g, const char *name, const char *key,
                       int half) {
    const speck_gguf_tensor *t = speck_gguf_find_tensor(g, name);
    if (!t || t->type != SPECK_TYPE_F32 || t->n_elements != half)
        return speck_set_error(SPECK_ERR_UNSUPPORTED, "%s: %s: expected %d f32 values",
                               speck_gguf_path(g), name, half);
    cJSON *a = cJSON_AddArrayToObject(rs, key);
    for (int i = 0; i < half; i++) {
        float v;
        memcpy(&v, (const float *)t->data + i, sizeof v);
        cJSON_AddItemToArray(a, cJSON_CreateNumber(short_f32(v)));
    }
    return 0;
}

// The mixture of experts' config.json keys, as transformers' classes name them: Mixtral's
// num_local_experts (its block always renormalises), the others' num_experts,
// moe_intermediate_size, norm_topk_prob and Qwen2-MoE's shared_expert_intermediate_size.
static int write_moe(cJSON *c, const speck_model *m) {
    const speck_hparams *hp = &m->hp;
    const bool mixtral = m->arch->ffn == SPECK_FFN_DENSE_OR_MOE;
    if (mixtral && !hp->moe_norm)
        return speck_set_error(SPECK_ERR_UNSUPPORTED,
                               "%s: expert_weights_norm is false, which Mixtral's config cannot "
                               "say (its block always renormalises the chosen experts)",
                               speck_gguf_path(m->g));
    cJSON_AddNumberToObject(c, mixtral ? "num_local_experts" : "num_experts", hp->n_expert);
    cJSON_AddNumberToObject(c, "num_experts_per_tok", hp->n_expert_used);
    if (mixtral) {
        cJSON_ReplaceItemInObject(c, "intermediate_size", cJSON_CreateNumber(hp->n_ff_exp));
    } else {
        cJSON_AddNumberToObject(c, "moe_intermediate_size", hp->n_ff_exp);
        cJSON_AddBoolToObject(c, "norm_topk_prob", hp->moe_norm);
    }
    if (hp->n_ff_shexp > 0)
        cJSON_AddNumberToObject(c, "shared_expert_intermediate_size", hp->n_ff_shexp);
    cJSON_AddBoolToObject(c, "output_router_logits", false);
    return 0;
}

static int write_config(const speck_model *m, speck_type dtype, const char *dir) {
    const speck_hparams *hp = speck_model_hparams(m);
    const speck_gguf *g = speck_model_gguf(m);
    const speck_arch *arch = m->arch;
    cJSON *c = cJSON_CreateObject();
    cJSON *a = cJSON_AddArrayToObject(c, "architectures");
    cJSON_AddItemToArray(a, cJSON_CreateString(arch->hf.classes[0]));
    cJSON_AddStringToObject(c, "model_type", arch->hf.model_type);
    cJSON_AddNumberToObject(c, "hidden_size", hp->n_embd);
    cJSON_AddNumberToObject(c, "intermediate_size", hp->n_ff);
    cJSON_AddNumberToObject(c, "num_hidden_layers", hp->n_layer);
    cJSON_AddNumberToObject(c, "num_attention_heads", hp->n_head);
    cJSON_AddNumberToObject(c, "num_key_value_heads", hp->n_head_kv);
    cJSON_AddNumberToObject(c, "head_dim", hp->head_dim);
    cJSON_AddNumberToObject(c, "max_position_embeddings", hp->n_ctx_train);
    cJSON_AddNumberToObject(c, "vocab_size", hp->n_vocab);
    cJSON_AddNumberToObject(c, "rms_norm_eps", short_f32(hp->norm_eps));
    cJSON_AddNumberToObject(c, "rope_theta", short_f32(hp->rope_freq_base));
    cJSON_AddStringToObject(c, "hidden_act",
                            hp->ffn_act == SPECK_ACT_GELU_TANH ? "gelu_pytorch_tanh" : "silu");
    cJSON_AddBoolToObject(c, "tie_word_embeddings", hp->tied_output);
    if (arch->hf.write) arch->hf.write(c, hp);
    if (hp->n_expert > 0 && write_moe(c, m) != 0) {
        cJSON_Delete(c);
        return SPECK_ERR_UNSUPPORTED;
    }
    if (hp->bos_id >= 0) cJSON_AddNumberToObject(c, "bos_token_id", hp->bos_id);
    if (hp->eos_id >= 0) cJSON_AddNumberToObject(c, "eos_token_id", hp->eos_id);
    cJSON_AddStringToObject(c, "torch_dtype", torch_dtype(dtype));
    cJSON_AddNumberToObject(c, "initializer_range", 0.02);
    int rc = 0;
    const speck_gguf_tensor *rf = speck_gguf_find_tensor(g, "rope_freqs.weight");
    if (hp->rope_scaling == SPECK_ROPE_SCALING_LONGROPE) {
        cJSON *rs = cJSON_AddObjectToObject(c, "rope_scaling");
        cJSON_AddStringToObject(rs, "type", "longrope");
        cJSON_AddNumberToObject(rs, "attention_factor", short_f32(hp->rope_attn_factor));
        rc = add_factors(rs, g, "rope_factors_short.weight", "short_factor", hp->head_dim / 2);
        if (!rc)
            rc = add_factors(rs, g, "rope_factors_long.weight", "long_factor", hp->head_dim / 2);
        cJSON_AddNumberToObject(c, "original_max_position_embeddings", hp->rope_orig_ctx);
    } else if (rf || hp->rope_scaling != SPECK_ROPE_SCALING_NONE) {
        cJSON *rs = cJSON_AddObjectToObject(c, "rope_scaling");
        bool l3 = rf || hp->rope_scaling == SPECK_ROPE_SCALING_LLAMA3;
        cJSON_AddStringToObject(rs, "rope_type", l3 ? "llama3" : "linear");
        cJSON_AddStringToObject(rs, "type", l3 ? "llama3" : "linear");
        if (rf) {
            float *d = malloc((size_t)(hp->head_dim / 2) * sizeof(float));
            if (!d || rf->type != SPECK_TYPE_F32 || rf->n_elements != hp->head_dim / 2)
                rc = speck_set_error(SPECK_ERR_UNSUPPORTED,
                                     "%s: rope_freqs.weight: expected %d f32 values",
                                     speck_gguf_path(g), hp->head_dim / 2);
            else {
                memcpy(d, rf->data, (size_t)(hp->head_dim / 2) * sizeof(float));
                rc = fit_llama3(hp, d, rs, speck_gguf_path(g));
            }
            free(d);
        } else if (l3) {
            cJSON_AddNumberToObject(rs, "factor", short_f32(hp->rope_scale_factor));
            cJSON_AddNumberToObject(rs, "low_freq_factor", short_f32(hp->rope_low_freq_factor));
            cJSON_AddNumberToObject(rs, "high_freq_factor", short_f32(hp->rope_high_freq_factor));
            cJSON_AddNumberToObject(rs, "original_max_position_embeddings", hp->rope_orig_ctx);
        } else {
            cJSON_AddNumberToObject(rs, "factor", short_f32(hp->rope_scale_factor));
        }
    } else {
        cJSON_AddNullToObject(c, "rope_scaling");
    }
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (!rc) rc = hf_write_json(c, path);
    cJSON_Delete(c);
    return rc;
}

static int write_safetensors(const speck_model *m, speck_type dtype, const char *dir,
                             bool progress) {
    const speck_hparams *hp = speck_model_hparams(m);
    const speck_gguf *g = speck_model_gguf(m);
    const speck_arch *a = m->arch;
    ex_list l = {0};
    int rc = ex_add(&l, g, "token_embd.weight", "model.embed_tokens.weight", 0, 0, 1, -1, 0);
    if (!rc && !hp->tied_output)
        rc = ex_add(&l, g, "output.weight", "lm_head.weight", 0, 0, 1, -1, 0);
    if (!rc)
        rc = ex_add(&l, g, "output_norm.weight", "model.norm.weight", 0, a->hf_norm_shift, 1, -1,
                    0);
    for (int i = 0; !rc && i < hp->n_layer; i++)
        for (int k = 0; !rc && k < a->n_layer_tensors; k++) {
            const speck_tensor_desc *d = &a->layer[k];
            if (!speck_tensor_in_layer(hp, d)) continue;
            char gg[96], hf[128];
            snprintf(gg, sizeof gg, "blk.%d.%s", i, d->gguf);
            if (d->flags & TD_EXPERTS) { // one Hugging Face tensor per expert, in expert order
                for (int e = 0; !rc && e < hp->n_expert; e++) {
                    char part[96];
                    snprintf(part, sizeof part, d->hf, e);
                    snprintf(hf, sizeof hf, "model.layers.%d.%s", i, part);
                    rc = ex_add(&l, g, gg, hf, 0, 0, 1, e, 0);
                }
                continue;
            }
            snprintf(hf, sizeof hf, "model.layers.%d.%s", i, d->hf);
            rc = ex_add(&l, g, gg, hf, d->flags & TD_PERMUTE ? hp->head_dim : 0,
                        d->flags & TD_NORM ? a->hf_norm_shift : 0, !(d->flags & TD_OPTIONAL), -1,
                        d->slot == SLOT_SH_GATE);
        }
    // Header: tensors in order, data offsets packed; padded with spaces to 8 bytes as the
    // reference implementation does.
    cJSON *h = cJSON_CreateObject();
    cJSON_AddStringToObject(cJSON_AddObjectToObject(h, "__metadata__"), "format", "pt");
    const char *dt = dtype == SPECK_TYPE_F16 ? "F16" : dtype == SPECK_TYPE_BF16 ? "BF16" : "F32";
    size_t es = dtype == SPECK_TYPE_F32 ? 4 : 2, off = 0, max_row = 0;
    for (int i = 0; !rc && i < l.n; i++) {
        ex_t *e = &l.t[i];
        cJSON *o = cJSON_AddObjectToObject(h, e->hf);
        cJSON_AddStringToObject(o, "dtype", dt);
        cJSON *sh = cJSON_AddArrayToObject(o, "shape");
        cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)e->rows));
        if (e->cols) cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)e->cols));
        size_t n = (size_t)e->rows * (size_t)(e->cols ? e->cols : 1) * es;
        cJSON *of = cJSON_AddArrayToObject(o, "data_offsets");
        cJSON_AddItemToArray(of, cJSON_CreateNumber((double)off));
        cJSON_AddItemToArray(of, cJSON_CreateNumber((double)(off + n)));
        off += n;
        size_t rs = (size_t)(e->cols ? e->cols : e->rows) * es;
        if (rs > max_row) max_row = rs;
    }
    char *js = rc ? NULL : cJSON_PrintUnformatted(h);
    cJSON_Delete(h);
    if (!rc && !js) rc = speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    FILE *f = rc ? NULL : fopen(path, "wb");
    if (!rc && !f) rc = speck_set_error(SPECK_ERR_IO, "%s: %s", path, strerror(errno));
    size_t buf_size = max_row > (8u << 20) ? max_row : (8u << 20);
    uint8_t *buf = rc ? NULL : malloc(buf_size);
    if (!rc && !buf) rc = speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    if (!rc) {
        size_t jn = strlen(js), padded = (jn + 7) / 8 * 8;
        uint64_t hl = padded;
        int ok = fwrite(&hl, 8, 1, f) == 1 && fwrite(js, 1, jn, f) == jn;
        for (size_t k = jn; ok && k < padded; k++) ok = fputc(' ', f) != EOF;
        if (!ok) rc = speck_set_error(SPECK_ERR_IO, "%s: write failed: %s", path, strerror(errno));
    }
    hf_progress pr;
    hf_progress_start(&pr, progress, l.n);
    for (int i = 0; !rc && i < l.n; i++) {
        ex_t *e = &l.t[i];
        int64_t rows = e->cols ? e->rows : 1, cols = e->cols ? e->cols : e->rows;
        if (!e->cols && e->qk_head_dim) rows = e->rows, cols = 1; // permuted bias
        size_t out_rs = (size_t)cols * es;
        int64_t chunk = (int64_t)(buf_size / out_rs);
        for (int64_t r0 = 0; r0 < rows && !rc; r0 += chunk) {
            int64_t n = rows - r0 < chunk ? rows - r0 : chunk;
            if (e->shift != 0) { // a norm vector: shift + w back to w
                float *v = malloc((size_t)cols * sizeof(float));
                if (!v) {
                    rc = speck_set_error(SPECK_ERR_NOMEM, "out of memory");
                    break;
                }
                speck_dequantize_row((speck_type)e->src->type,
                                     (const char *)e->src->data + e->off, v, cols);
                for (int64_t j = 0; j < cols; j++) v[j] -= e->shift;
                hf_convert_rows(v, SPECK_TYPE_F32, buf, dtype, 0, 1, cols, 0, -1);
                free(v);
            } else {
                hf_convert_rows((const char *)e->src->data + e->off, (speck_type)e->src->type,
                                buf, dtype, r0, n, cols, e->qk_head_dim, -1);
            }
            if (fwrite(buf, 1, (size_t)n * out_rs, f) != (size_t)n * out_rs)
                rc = speck_set_error(SPECK_ERR_IO, "%s: write failed: %s", path, strerror(errno));
        }
        const size_t nb = e->src->n_dims == 3 ? e->src->n_bytes / (size_t)e->src->ne[2]
                                               : e->src->n_bytes;
        hf_release((const char *)e->src->data + e->off, nb);
        hf_progress_step(&pr, i, e->hf, nb);
    }
    if (f && fclose(f) != 0 && !rc)
        rc = speck_set_error(SPECK_ERR_IO, "%s: write failed: %s", path, strerror(errno));
    if (!rc) hf_progress_end(&pr, "export");
    free(buf);
    free(js);
    free(l.t);
    return rc;
}

// Remove the files this exporter writes, then the directory (used on failure only).
static void remove_tmp_dir(const char *dir) {
    static const char *files[] = {"config.json", "model.safetensors", "tokenizer.json",
                                  "tokenizer_config.json"};
    char p[PATH_MAX + 32];
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, files[i]);
        unlink(p);
    }
    rmdir(dir);
}

int speck_hf_export(const char *gguf_path, const char *out_dir, speck_type dtype, bool progress) {
    if (dtype != SPECK_TYPE_F32 && dtype != SPECK_TYPE_F16 && dtype != SPECK_TYPE_BF16)
        return speck_set_error(SPECK_ERR_ARG, "export: dtype must be f32, f16 or bf16");
    struct stat st;
    if (stat(out_dir, &st) == 0 && !(S_ISDIR(st.st_mode) && rmdir(out_dir) == 0))
        return speck_set_error(SPECK_ERR_IO, "%s: already exists (and is not an empty directory)",
                               out_dir);
    speck_model *m = speck_model_load(gguf_path);
    if (!m) return SPECK_ERR_FORMAT;
    char tmp[PATH_MAX];
    int rc = 0;
    size_t n = strlen(out_dir);
    if (n + 12 >= sizeof tmp ||
        (memcpy(tmp, out_dir, n), memcpy(tmp + n, ".tmp.XXXXXX", 12), !mkdtemp(tmp)))
        rc = speck_set_error(SPECK_ERR_IO, "%s: cannot create a temporary directory: %s", out_dir,
                             strerror(errno));
    bool made = !rc;
    if (!rc) rc = write_config(m, dtype, tmp);
    if (!rc)
        rc = hf_tokenizer_from_gguf(speck_model_gguf(m), tmp, speck_model_hparams(m)->n_ctx_train);
    if (!rc) rc = write_safetensors(m, dtype, tmp, progress);
    if (!rc) {
        chmod(tmp, 0755);
        if (rename(tmp, out_dir) != 0)
            rc = speck_set_error(SPECK_ERR_IO, "%s: cannot rename into place: %s", out_dir,
                                 strerror(errno));
    }
    if (rc && made) remove_tmp_dir(tmp);
    speck_model_free(m);
    return rc;
}
