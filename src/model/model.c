// Loading models from GGUF: hyper-parameters from llama.cpp's metadata keys, tensors as the
// architecture's description (arch.h) lists them, weights referenced in place in the mapping,
// shapes and types validated.
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "formats/gguf_internal.h"
#include "kernels/kernels.h"
#include "quant/quant.h"
#include "model/model_internal.h"

typedef struct {
    speck_model *m;
    const char *path;
    const char *arch;
    const speck_arch *desc;
} loader;

static int64_t key_idx(loader *L, const char *suffix) {
    char key[160];
    snprintf(key, sizeof key, "%s.%s", L->arch, suffix);
    return speck_gguf_find_key(L->m->g, key);
}

static int req_int(loader *L, const char *suffix, int *out) {
    int64_t i = key_idx(L, suffix);
    if (i < 0)
        return speck_set_error(SPECK_ERR_FORMAT, "%s: missing required key '%s.%s'", L->path,
                               L->arch, suffix);
    speck_gguf_vtype t = speck_gguf_kv_type(L->m->g, i);
    if (t == SPECK_GGUF_STRING || t == SPECK_GGUF_ARRAY || t == SPECK_GGUF_FLOAT32 ||
        t == SPECK_GGUF_FLOAT64)
        return speck_set_error(SPECK_ERR_FORMAT, "%s: key '%s.%s' must be an integer", L->path,
                               L->arch, suffix);
    int64_t v = speck_gguf_get_int(L->m->g, i);
    if (v <= 0 || v > (1 << 30))
        return speck_set_error(SPECK_ERR_FORMAT, "%s: key '%s.%s' = %lld is out of range", L->path,
                               L->arch, suffix, (long long)v);
    *out = (int)v;
    return 0;
}

// Optional integer key: def when absent, else it must be an integer in [1, 2^30] like the
// required ones (a wrapped-around value would pass checks it should fail).
static int opt_int(loader *L, const char *suffix, int def, int *out) {
    if (key_idx(L, suffix) < 0) {
        *out = def;
        return 0;
    }
    return req_int(L, suffix, out);
}

// Optional float key: def when absent; a finite value when present (min_exclusive: above it).
static int opt_float(loader *L, const char *suffix, float def, float min_exclusive, float *out) {
    int64_t i = key_idx(L, suffix);
    if (i < 0) {
        *out = def;
        return 0;
    }
    const double v = speck_gguf_get_float(L->m->g, i);
    if (!(v > min_exclusive && v <= 3.4e38))
        return speck_set_error(SPECK_ERR_FORMAT, "%s: key '%s.%s' = %g is out of range (> %g)",
                               L->path, L->arch, suffix, v, (double)min_exclusive);
    *out = (float)v;
    return 0;
}

static int global_int(const speck_gguf *g, const char *key, int def) {
    int64_t i = speck_gguf_find_key(g, key);
    return i < 0 ? def : (int)speck_gguf_get_int(g, i);
}

// Every type speck can store it can compute with.
static int is_compute_type(int t) {
    return speck_type_name(t) != NULL;
}

// Find a tensor and check its shape: ne0 x ne1 (ne1 = 0 for a vector).
static const speck_gguf_tensor *get_tensor(loader *L, const char *name, int64_t ne0, int64_t ne1,
                                           int required, int *err) {
    const speck_gguf_tensor *t = speck_gguf_find_tensor(L->m->g, name);
    if (!t) {
        if (required)
            *err = speck_set_error(SPECK_ERR_FORMAT, "%s: missing tensor '%s'", L->path, name);
        return NULL;
    }
    int nd = ne1 ? 2 : 1;
    int bad = t->ne[0] != ne0 || (ne1 && t->ne[1] != ne1);
    for (int d = nd; d < 4; d++) bad |= t->ne[d] != 1;
    if (bad) {
        if (ne1)
            *err = speck_set_error(SPECK_ERR_FORMAT,
                                   "%s: tensor '%s' has shape [%lld, %lld, %lld], expected [%lld, "
                                   "%lld] from the model's hyper-parameters",
                                   L->path, name, (long long)t->ne[0], (long long)t->ne[1],
                                   (long long)t->ne[2], (long long)ne0, (long long)ne1);
        else
            *err = speck_set_error(
                SPECK_ERR_FORMAT, "%s: tensor '%s' has shape [%lld, %lld], expected [%lld]",
                L->path, name, (long long)t->ne[0], (long long)t->ne[1], (long long)ne0);
        return NULL;
    }
    if (!is_compute_type(t->type)) {
        *err = speck_set_error(SPECK_ERR_UNSUPPORTED,
                               "%s: tensor '%s' has type %s, which speck does not support "
                               "(f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, q3_k, "
                               "q4_k, q5_k, q6_k, iq4_nl, iq4_xs)",
                               L->path, name, speck_gguf_type_label(t->type));
        return NULL;
    }
    return t;
}

static int get_weight(loader *L, const char *name, int64_t n_in, int64_t n_out, int required,
                      speck_weight *w) {
    int err = 0;
    const speck_gguf_tensor *t = get_tensor(L, name, n_in, n_out, required, &err);
    if (!t) return err;
    *w = (speck_weight){t->data, (speck_type)t->type, n_in, n_out, NULL, NULL};
    return 0;
}

// Vectors (norms, biases) are used as f32, always from a copy: they sit between the matrices in
// the file, and reading one in place would map back the file pages (2 MiB folios on this
// project's kernel) around it, of matrices whose pages were dropped for their panel copies.
static int get_vec(loader *L, const char *name, int64_t n, int required, const float **out) {
    int err = 0;
    *out = NULL;
    const speck_gguf_tensor *t = get_tensor(L, name, n, 0, required, &err);
    if (!t) return err;
    float *v = malloc((size_t)n * sizeof(float));
    float **owned = realloc(L->m->owned, (size_t)(L->m->n_owned + 1) * sizeof *owned);
    if (!v || !owned) {
        free(v);
        return speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    }
    L->m->owned = owned;
    owned[L->m->n_owned++] = v;
    speck_dequantize_row((speck_type)t->type, t->data, v, n);
    *out = v;
    return 0;
}

static int pattern_from_array(loader *L, int64_t i);

// The architecture's own keys (its description's list), over the defaults it sets.
static int load_arch_keys(loader *L) {
    speck_hparams *hp = &L->m->hp;
    const speck_gguf *g = L->m->g;
    for (int k = 0; k < L->desc->n_keys; k++) {
        const speck_key_desc *d = &L->desc->keys[k];
        int64_t i = key_idx(L, d->gguf);
        if (i < 0) continue;
        speck_gguf_vtype t = speck_gguf_kv_type(g, i);
        void *field = (char *)hp + d->offset;
        if (d->offset == offsetof(speck_hparams, swa_period) && t == SPECK_GGUF_ARRAY) {
            if (pattern_from_array(L, i)) return SPECK_ERR_FORMAT;
            continue;
        }
        bool is_num = t != SPECK_GGUF_STRING && t != SPECK_GGUF_ARRAY;
        bool is_float = t == SPECK_GGUF_FLOAT32 || t == SPECK_GGUF_FLOAT64;
        double v = is_num ? speck_gguf_get_float(g, i) : NAN;
        if (!is_num || (d->type == KEY_INT && is_float) || !(v >= 0 && v <= (double)(1 << 30)))
            return speck_set_error(SPECK_ERR_FORMAT, "%s: key '%s.%s' must be %s >= 0", L->path,
                                   L->arch, d->gguf,
                                   d->type == KEY_INT ? "an integer" : "a number");
        if (d->type == KEY_INT)
            *(int *)field = (int)speck_gguf_get_int(g, i);
        else
            *(float *)field = (float)v;
    }
    if (hp->n_swa > hp->n_ctx_train ||
        (L->desc->swa_ge_ctx_is_none && hp->n_swa == hp->n_ctx_train)) {
        if (!L->desc->swa_ge_ctx_is_none)
            return speck_set_error(SPECK_ERR_FORMAT,
                                   "%s: key '%s.attention.sliding_window' = %d is larger than the "
                                   "context ('%s.context_length' = %d)",
                                   L->path, L->arch, hp->n_swa, L->arch, hp->n_ctx_train);
        hp->n_swa = 0;
    }
    if (!(hp->attn_scale > 0) || !(hp->rope_freq_base_swa > 0))
        return speck_set_error(SPECK_ERR_FORMAT,
                               "%s: '%s.attention.scale' and '%s.rope.freq_base_swa' must be > 0",
                               L->path, L->arch, L->arch);
    return 0;
}

// attention.sliding_window_pattern given per layer (an array of bools, as llama.cpp's newer
// converters write it): the period P it follows (layer l windowed iff l % P < P - 1), or an
// error when it follows none.
static int pattern_from_array(loader *L, int64_t i) {
    speck_hparams *hp = &L->m->hp;
    const speck_gguf *g = L->m->g;
    speck_gguf_vtype at = speck_gguf_arr_type(g, i);
    size_t es = speck_gguf_vtype_size(at);
    if (speck_gguf_arr_n(g, i) != hp->n_layer || es == 0 || at == SPECK_GGUF_FLOAT32 ||
        at == SPECK_GGUF_FLOAT64)
        return speck_set_error(SPECK_ERR_FORMAT,
                               "%s: key '%s.attention.sliding_window_pattern': expected %d "
                               "booleans, one per layer",
                               L->path, L->arch, hp->n_layer);
    const uint8_t *a = speck_gguf_arr_data(g, i);
    int first_full = -1, n_sw = 0;
    for (int l = 0; l < hp->n_layer; l++) {
        bool sw = false;
        for (size_t b = 0; b < es; b++) sw |= a[(size_t)l * es + b] != 0;
        n_sw += sw;
        if (!sw && first_full < 0) first_full = l;
    }
    hp->swa_period = first_full < 0 ? 0 : first_full + 1;
    if (n_sw == 0) hp->n_swa = 0;
    for (int l = 0; l < hp->n_layer && n_sw; l++) {
        bool sw = false;
        for (size_t b = 0; b < es; b++) sw |= a[(size_t)l * es + b] != 0;
        if (sw != speck_swa_pattern_layer(hp->swa_period, l))
            return speck_set_error(SPECK_ERR_UNSUPPORTED,
                                   "%s: key '%s.attention.sliding_window_pattern': only a "
                                   "repeating run of windowed layers closed by one global layer "
                                   "is supported (layer %d breaks it)",
                                   L->path, L->arch, l);
    }
    return 0;
}

// Most experts a file may have (the largest released models have 256; a bound keeps a corrupt
// count from sizing allocations).
#define MAX_EXPERTS 4096

// The mixture of experts' keys (llama.cpp's names): expert_count (required for the MoE
// families, absent or 0 for a dense Llama), expert_used_count, the expert and shared-expert FFN
// widths, expert_weights_norm over the family's default.
static int load_moe_keys(loader *L) {
    speck_hparams *hp = &L->m->hp;
    const speck_moe_desc *moe = L->desc->moe;
    hp->n_expert = hp->n_expert_used = hp->n_ff_exp = hp->n_ff_shexp = 0;
    if (!moe) return 0;
    const int64_t ci = key_idx(L, "expert_count");
    if (L->desc->ffn == SPECK_FFN_DENSE_OR_MOE &&
        (ci < 0 || (speck_gguf_kv_type(L->m->g, ci) != SPECK_GGUF_STRING &&
                    speck_gguf_kv_type(L->m->g, ci) != SPECK_GGUF_ARRAY &&
                    speck_gguf_get_int(L->m->g, ci) == 0)))
        return 0; // a dense Llama
    if (req_int(L, "expert_count", &hp->n_expert) ||
        req_int(L, "expert_used_count", &hp->n_expert_used))
        return SPECK_ERR_FORMAT;
    if (hp->n_expert > MAX_EXPERTS)
        return speck_set_error(SPECK_ERR_FORMAT, "%s: key '%s.expert_count' = %d is more than %d",
                               L->path, L->arch, hp->n_expert, MAX_EXPERTS);
    if (hp->n_expert_used > hp->n_expert)
        return speck_set_error(SPECK_ERR_FORMAT,
                               "%s: key '%s.expert_used_count' = %d is larger than '%s.expert_count' "
                               "= %d",
                               L->path, L->arch, hp->n_expert_used, L->arch, hp->n_expert);
    const int ff = moe->ff_div_used ? hp->n_ff / hp->n_expert_used : hp->n_ff;
    if (moe->ff_is_n_ff)
        hp->n_ff_exp = hp->n_ff;
    else if (opt_int(L, "expert_feed_forward_length", ff > 0 ? ff : 1, &hp->n_ff_exp))
        return SPECK_ERR_FORMAT;
    if (
        (moe->shared &&
         opt_int(L, "expert_shared_feed_forward_length", hp->n_ff, &hp->n_ff_shexp)))
        return SPECK_ERR_FORMAT;
    const int64_t ni = key_idx(L, "expert_weights_norm");
    if (ni >= 0) {
        speck_gguf_vtype t = speck_gguf_kv_type(L->m->g, ni);
        if (t == SPECK_GGUF_STRING || t == SPECK_GGUF_ARRAY || t == SPECK_GGUF_FLOAT32 ||
            t == SPECK_GGUF_FLOAT64)
            return speck_set_error(SPECK_ERR_FORMAT, "%s: key '%s.expert_weights_norm' must be a "
                                   "boolean", L->path, L->arch);
        hp->moe_norm = speck_gguf_get_int(L->m->g, ni) != 0;
    }
    return 0;
}

static int load_hparams(loader *L) {
    speck_model *m = L->m;
    speck_hparams *hp = &m->hp;
    const speck_gguf *g = m->g;
    snprintf(hp->arch, sizeof hp->arch, "%s", L->arch);
    int64_t ni = speck_gguf_find_key(g, "general.name");
    if (ni >= 0 && speck_gguf_get_str(g, ni))
        snprintf(hp->name, sizeof hp->name, "%s", speck_gguf_get_str(g, ni));
    if (req_int(L, "context_length", &hp->n_ctx_train) ||
        req_int(L, "embedding_length", &hp->n_embd) || req_int(L, "block_count", &hp->n_layer) ||
        req_int(L, "feed_forward_length", &hp->n_ff) ||
        req_int(L, "attention.head_count", &hp->n_head))
        return SPECK_ERR_FORMAT;
    if (opt_int(L, "attention.head_count_kv", hp->n_head, &hp->n_head_kv)) return SPECK_ERR_FORMAT;
    if (hp->n_head % hp->n_head_kv)
        return speck_set_error(SPECK_ERR_FORMAT,
                               "%s: %s.attention.head_count_kv = %d does not divide head_count %d",
                               L->path, L->arch, hp->n_head_kv, hp->n_head);
    int value_length;
    if (opt_int(L, "attention.key_length", hp->n_embd / hp->n_head, &hp->head_dim) ||
        opt_int(L, "attention.value_length", hp->head_dim, &value_length))
        return SPECK_ERR_FORMAT;
    if (hp->head_dim <= 0 || hp->head_dim % 2 || value_length != hp->head_dim)
        return speck_set_error(SPECK_ERR_FORMAT, "%s: invalid head dimension %d", L->path,
                               hp->head_dim);
    // The forward pass sizes rows as heads x head_dim in int: keep the products in range (the
    // matching tensors would be far larger than any file anyway).
    if ((int64_t)hp->n_head * hp->head_dim > (1 << 30))
        return speck_set_error(SPECK_ERR_FORMAT, "%s: %d heads x head dimension %d is too large",
                               L->path, hp->n_head, hp->head_dim);
    if (opt_float(L, "attention.layer_norm_rms_epsilon", 1e-5f, 0.0f, &hp->norm_eps) ||
        opt_float(L, "rope.freq_base", 10000.0f, 0.0f, &hp->rope_freq_base))
        return SPECK_ERR_FORMAT;
    hp->rope_scale_factor = 1.0f;
    int64_t si = key_idx(L, "rope.scaling.type");
    const char *st = si >= 0 ? speck_gguf_get_str(g, si) : NULL;
    if (st && !strcmp(st, "linear")) {
        hp->rope_scaling = SPECK_ROPE_SCALING_LINEAR;
        if (opt_float(L, "rope.scaling.factor", 1.0f, 0.0f, &hp->rope_scale_factor))
            return SPECK_ERR_FORMAT;
    } else if (st && !strcmp(st, "llama3")) {
        hp->rope_scaling = SPECK_ROPE_SCALING_LLAMA3;
        if (opt_float(L, "rope.scaling.factor", 8.0f, 0.0f, &hp->rope_scale_factor) ||
            opt_float(L, "rope.scaling.low_freq_factor", 1.0f, 0.0f, &hp->rope_low_freq_factor) ||
            opt_float(L, "rope.scaling.high_freq_factor", 4.0f, 0.0f, &hp->rope_high_freq_factor) ||
            opt_int(L, "rope.scaling.original_context_length", 8192, &hp->rope_orig_ctx))
            return SPECK_ERR_FORMAT;
        // The smooth band between them divides by their difference.
        if (!(hp->rope_high_freq_factor > hp->rope_low_freq_factor))
            return speck_set_error(SPECK_ERR_FORMAT,
                                   "%s: %s.rope.scaling.high_freq_factor must exceed "
                                   "low_freq_factor",
                                   L->path, L->arch);
    } else if (st && !strcmp(st, "longrope")) {
        hp->rope_scaling = SPECK_ROPE_SCALING_LONGROPE; // the factor tensors are then required
    } else if (st && strcmp(st, "none") != 0) {
        return speck_set_error(SPECK_ERR_UNSUPPORTED,
                               "%s: %s.rope.scaling.type '%s' is not supported (none, linear, "
                               "llama3, longrope)",
                               L->path, L->arch, st);
    } else if (key_idx(L, "rope.scale_linear") >= 0) {
        hp->rope_scaling = SPECK_ROPE_SCALING_LINEAR;
        if (opt_float(L, "rope.scale_linear", 1.0f, 0.0f, &hp->rope_scale_factor))
            return SPECK_ERR_FORMAT;
    }
    // LongRoPE as llama.cpp's converter writes it: no type key, the two factor tensors, the
    // original context and the factor applied to cos and sin.
    if (speck_gguf_find_tensor(g, "rope_factors_long.weight") ||
        speck_gguf_find_tensor(g, "rope_factors_short.weight"))
        hp->rope_scaling = SPECK_ROPE_SCALING_LONGROPE;
    if (hp->rope_scaling == SPECK_ROPE_SCALING_LONGROPE &&
        opt_int(L, "rope.scaling.original_context_length", hp->n_ctx_train, &hp->rope_orig_ctx))
        return SPECK_ERR_FORMAT;
    speck_arch_defaults(L->desc, hp);
    if (opt_float(L, "rope.scaling.attn_factor", 1.0f, 0.0f, &hp->rope_attn_factor))
        return SPECK_ERR_FORMAT;
    hp->bos_id = global_int(g, "tokenizer.ggml.bos_token_id", -1);
    hp->eos_id = global_int(g, "tokenizer.ggml.eos_token_id", -1);
    return load_arch_keys(L) || load_moe_keys(L) ? SPECK_ERR_FORMAT : 0;
}

// Per-pair rotation frequency base^(-2i/d) with linear or llama3 scaling (scaled), or divided by
// the given per-pair factors (how llama.cpp's converter stores llama3 scaling and LongRoPE).
// out: (head_dim / 2).
static void rope_freqs(const speck_hparams *hp, float base, bool scaled, const float *factors,
                       float *out) {
    for (int i = 0; i < hp->head_dim / 2; i++) {
        double f = pow((double)base, -2.0 * i / hp->head_dim);
        if (factors) {
            f /= factors[i];
        } else if (scaled && hp->rope_scaling == SPECK_ROPE_SCALING_LINEAR) {
            f /= hp->rope_scale_factor;
        } else if (scaled && hp->rope_scaling == SPECK_ROPE_SCALING_LLAMA3) {
            double wavelen = 2 * M_PI / f;
            double lo = hp->rope_orig_ctx / hp->rope_low_freq_factor;
            double hi = hp->rope_orig_ctx / hp->rope_high_freq_factor;
            if (wavelen > lo) {
                f /= hp->rope_scale_factor;
            } else if (wavelen >= hi) {
                double s = (hp->rope_orig_ctx / wavelen - hp->rope_low_freq_factor) /
                           (hp->rope_high_freq_factor - hp->rope_low_freq_factor);
                f = (1 - s) * f / hp->rope_scale_factor + s * f;
            }
        }
        out[i] = (float)f;
    }
}

// The frequency tables: the model's (with the file's rope_freqs divisors, or LongRoPE's short
// and long ones), and the windowed layers' own where the architecture gives them one (gemma3:
// another base, unscaled).
static int init_rope(loader *L) {
    speck_model *m = L->m;
    const speck_hparams *hp = &m->hp;
    const int half = hp->head_dim / 2;
    const bool longrope = hp->rope_scaling == SPECK_ROPE_SCALING_LONGROPE;
    int err;
    if ((err = get_vec(L, "rope_freqs.weight", half, 0, &m->rope_factors)) ||
        (err = get_vec(L, "rope_factors_short.weight", half, longrope, &m->rope_short)) ||
        (err = get_vec(L, "rope_factors_long.weight", half, longrope, &m->rope_long)))
        return err;
    m->rope_freq = malloc((size_t)half * sizeof(float));
    m->rope_freq_long = longrope ? malloc((size_t)half * sizeof(float)) : NULL;
    m->rope_freq_swa = malloc((size_t)half * sizeof(float));
    if (!m->rope_freq || (longrope && !m->rope_freq_long) || !m->rope_freq_swa)
        return speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    rope_freqs(hp, hp->rope_freq_base, true, longrope ? m->rope_short : m->rope_factors,
               m->rope_freq);
    if (longrope) rope_freqs(hp, hp->rope_freq_base, true, m->rope_long, m->rope_freq_long);
    // Windowed layers: their own base, unscaled when the architecture gives them their own RoPE
    // (gemma3), else the model's scaling.
    const bool own = L->desc->rope_base_swa > 0;
    rope_freqs(hp, hp->rope_freq_base_swa, !own, own ? NULL : m->rope_factors, m->rope_freq_swa);
    bool same = !own && hp->rope_freq_base_swa == hp->rope_freq_base;
    for (int l = 0; l < hp->n_layer; l++) {
        speck_layer *ly = &m->layers[l];
        ly->n_swa = speck_hparams_layer_swa(hp, l) ? hp->n_swa : 0;
        ly->rope = ly->n_swa && !same ? 1 : 0;
    }
    if (same) {
        free(m->rope_freq_swa);
        m->rope_freq_swa = NULL;
    }
    return 0;
}

// Rows [r0, r0 + rows) of a (n_out, n_in) tensor as a weight of its own (a part of a fused one).
static speck_weight sub_weight(const speck_gguf_tensor *t, int64_t r0, int64_t rows) {
    size_t rs = speck_type_row_size((speck_type)t->type, t->ne[0]);
    return (speck_weight){(const char *)t->data + (size_t)r0 * rs, (speck_type)t->type, t->ne[0],
                          rows, NULL, NULL};
}

// q, k and v of layer l: fused (attn_qkv) when the file has it, else three tensors.
static int load_qkv(loader *L, int l, speck_layer *ly) {
    const speck_hparams *hp = &L->m->hp;
    const int64_t E = hp->n_embd, Q = (int64_t)hp->n_head * hp->head_dim,
                  KV = (int64_t)hp->n_head_kv * hp->head_dim;
    char n[96];
    int err = 0;
    snprintf(n, sizeof n, "blk.%d.attn_qkv.weight", l);
    if (speck_gguf_find_tensor(L->m->g, n)) {
        const speck_gguf_tensor *t = get_tensor(L, n, E, Q + 2 * KV, 1, &err);
        if (!t) return err;
        ly->wq = sub_weight(t, 0, Q);
        ly->wk = sub_weight(t, Q, KV);
        ly->wv = sub_weight(t, Q + KV, KV);
    } else {
        static const char *const parts[3] = {"attn_q", "attn_k", "attn_v"};
        speck_weight *w[3] = {&ly->wq, &ly->wk, &ly->wv};
        for (int p = 0; p < 3 && !err; p++) {
            snprintf(n, sizeof n, "blk.%d.%s.weight", l, parts[p]);
            err = get_weight(L, n, E, p ? KV : Q, 1, w[p]);
        }
        if (err) return err;
    }
    // Biases, in any architecture (as llama.cpp): fused, three, or none.
    snprintf(n, sizeof n, "blk.%d.attn_qkv.bias", l);
    if (speck_gguf_find_tensor(L->m->g, n)) {
        const float *b;
        if ((err = get_vec(L, n, Q + 2 * KV, 1, &b))) return err;
        ly->bq = b, ly->bk = b + Q, ly->bv = b + Q + KV;
        return 0;
    }
    static const char *const bparts[3] = {"attn_q", "attn_k", "attn_v"};
    const float **b[3] = {&ly->bq, &ly->bk, &ly->bv};
    for (int p = 0; p < 3 && !err; p++) {
        snprintf(n, sizeof n, "blk.%d.%s.bias", l, bparts[p]);
        err = get_vec(L, n, p ? KV : Q, 0, b[p]);
    }
    return err;
}

// The experts' (rows, cols) matrices stacked in one 3-D tensor (GGUF [cols, rows, n_expert]):
// expert e's matrix is rows [e rows, (e + 1) rows) of it, written to out[3 e].
static int get_experts(loader *L, const char *name, int64_t cols, int64_t rows, speck_weight *out) {
    const speck_hparams *hp = &L->m->hp;
    const speck_gguf_tensor *t = speck_gguf_find_tensor(L->m->g, name);
    if (!t) return speck_set_error(SPECK_ERR_FORMAT, "%s: missing tensor '%s'", L->path, name);
    if (t->ne[0] != cols || t->ne[1] != rows || t->ne[2] != hp->n_expert || t->ne[3] != 1)
        return speck_set_error(SPECK_ERR_FORMAT,
                               "%s: tensor '%s' has shape [%lld, %lld, %lld, %lld], expected "
                               "[%lld, %lld, %d] from the model's hyper-parameters ('%s.expert_count' "
                               "= %d experts; '%s.%s' = %d)",
                               L->path, name, (long long)t->ne[0], (long long)t->ne[1],
                               (long long)t->ne[2], (long long)t->ne[3], (long long)cols,
                               (long long)rows, hp->n_expert, L->arch, hp->n_expert, L->arch,
                               L->desc->moe->ff_is_n_ff ? "feed_forward_length"
                                                        : "expert_feed_forward_length",
                               hp->n_ff_exp);
    if (!is_compute_type(t->type))
        return speck_set_error(SPECK_ERR_UNSUPPORTED,
                               "%s: tensor '%s' has type %s, which speck does not support", L->path,
                               name, speck_gguf_type_label(t->type));
    for (int e = 0; e < hp->n_expert; e++) out[3 * e] = sub_weight(t, (int64_t)e * rows, rows);
    return 0;
}

// Layer l's tensors as the architecture's description lists them.
static int load_layer(loader *L, int l, speck_layer *ly) {
    const speck_hparams *hp = &L->m->hp;
    int err = 0;
    bool qkv_done = false;
    for (int i = 0; i < L->desc->n_layer_tensors && !err; i++) {
        const speck_tensor_desc *d = &L->desc->layer[i];
        if (!speck_tensor_in_layer(hp, d)) continue;
        const int64_t rows = speck_dim_size(d->rows, hp), cols = speck_dim_size(d->cols, hp);
        const int req = !(d->flags & TD_OPTIONAL);
        char n[96];
        snprintf(n, sizeof n, "blk.%d.%s", l, d->gguf);
        const float **vec = d->slot == SLOT_ATTN_NORM        ? &ly->attn_norm
                            : d->slot == SLOT_FFN_NORM       ? &ly->ffn_norm
                            : d->slot == SLOT_Q_NORM         ? &ly->q_norm
                            : d->slot == SLOT_K_NORM         ? &ly->k_norm
                            : d->slot == SLOT_ATTN_POST_NORM ? &ly->attn_post_norm
                            : d->slot == SLOT_FFN_POST_NORM  ? &ly->ffn_post_norm
                            : d->slot == SLOT_SH_GATE        ? &ly->shexp_gate
                                                             : NULL;
        speck_weight *w = d->slot == SLOT_WO       ? &ly->wo
                          : d->slot == SLOT_WG     ? &ly->wg
                          : d->slot == SLOT_WU     ? &ly->wu
                          : d->slot == SLOT_WD     ? &ly->wd
                          : d->slot == SLOT_ROUTER ? &ly->router
                          : d->slot == SLOT_WG_SH  ? &ly->shexp[0]
                          : d->slot == SLOT_WU_SH  ? &ly->shexp[1]
                          : d->slot == SLOT_WD_SH  ? &ly->shexp[2]
                                                   : NULL;
        if (d->flags & TD_EXPERTS) {
            err = get_experts(L, n, cols, rows, ly->experts + (d->slot - SLOT_WG_EXPS));
        } else if (vec) {
            err = get_vec(L, n, rows, req, vec);
        } else if (d->slot == SLOT_ROUTER && speck_gguf_find_tensor(L->m->g, n) &&
                   (speck_gguf_find_tensor(L->m->g, n)->ne[1] != hp->n_expert ||
                    speck_gguf_find_tensor(L->m->g, n)->ne[0] != hp->n_embd)) {
            const speck_gguf_tensor *t = speck_gguf_find_tensor(L->m->g, n);
            err = speck_set_error(SPECK_ERR_FORMAT,
                                  "%s: tensor '%s' has shape [%lld, %lld], expected [%d, %d]: "
                                  "'%s.expert_count' = %d experts",
                                  L->path, n, (long long)t->ne[0], (long long)t->ne[1], hp->n_embd,
                                  hp->n_expert, L->arch, hp->n_expert);
        } else if (w) {
            err = get_weight(L, n, cols, rows, req, w);
        } else if (d->slot == SLOT_WQ || d->slot == SLOT_WK || d->slot == SLOT_WV ||
                   d->slot == SLOT_WQKV) {
            if (!qkv_done) err = load_qkv(L, l, ly);
            qkv_done = true;
        } else if (d->slot == SLOT_WGU) { // gate rows first, then up
            const speck_gguf_tensor *t = get_tensor(L, n, cols, rows, 1, &err);
            if (t) ly->wg = sub_weight(t, 0, rows / 2), ly->wu = sub_weight(t, rows / 2, rows / 2);
        } // biases: with q/k/v
    }
    if (err) return err;
    if (!!ly->bq != !!ly->bk || !!ly->bq != !!ly->bv)
        return speck_set_error(SPECK_ERR_FORMAT, "%s: layer %d has only some of the q/k/v biases",
                               L->path, l);
    return 0;
}

static int load_tensors(loader *L) {
    speck_model *m = L->m;
    const speck_hparams *hp = &m->hp;
    int64_t E = hp->n_embd;
    int err;
    const speck_gguf_tensor *te = speck_gguf_find_tensor(m->g, "token_embd.weight");
    if (!te)
        return speck_set_error(SPECK_ERR_FORMAT, "%s: missing tensor 'token_embd.weight'", L->path);
    // Vocabulary size: from the tokenizer when present (and it must then agree with the
    // embedding), else from the embedding.
    int64_t vi = speck_gguf_find_key(m->g, "tokenizer.ggml.tokens");
    int64_t n_vocab = vi >= 0 ? speck_gguf_arr_n(m->g, vi) : te->ne[1];
    int64_t vk = key_idx(L, "vocab_size");
    if (vi < 0 && vk >= 0) n_vocab = speck_gguf_get_int(m->g, vk);
    if (te->ne[1] != n_vocab)
        return speck_set_error(SPECK_ERR_FORMAT,
                               "%s: vocabulary has %lld tokens but token_embd.weight has %lld rows",
                               L->path, (long long)n_vocab, (long long)te->ne[1]);
    if (n_vocab <= 0 || n_vocab > (1 << 30))
        return speck_set_error(SPECK_ERR_FORMAT, "%s: invalid vocabulary size %lld", L->path,
                               (long long)n_vocab);
    m->hp.n_vocab = (int)n_vocab;
    if ((err = get_weight(L, "token_embd.weight", E, n_vocab, 1, &m->tok_embd))) return err;
    if ((err = get_weight(L, "output.weight", E, n_vocab, 0, &m->output))) return err;
    m->hp.tied_output = m->output.data == NULL;
    if (m->hp.tied_output) m->output = m->tok_embd;
    if ((err = get_vec(L, "output_norm.weight", E, 1, &m->out_norm))) return err;
    // Every layer has the description's required tensors: a block_count beyond what the file
    // holds is refused before the layer table is allocated (a 100-byte file could otherwise ask
    // for gigabytes).
    int64_t per_layer = 0;
    for (int i = 0; i < L->desc->n_layer_tensors; i++) {
        const speck_tensor_desc *d = &L->desc->layer[i];
        per_layer += !(d->flags & TD_OPTIONAL) && speck_tensor_in_layer(hp, d);
    }
    if (per_layer < 1) per_layer = 1;
    if (hp->n_layer > speck_gguf_n_tensors(m->g) / per_layer)
        return speck_set_error(SPECK_ERR_FORMAT,
                               "%s: %s.block_count = %d, but the file has only %lld tensors (%lld "
                               "or more per layer)",
                               L->path, L->arch, hp->n_layer,
                               (long long)speck_gguf_n_tensors(m->g), (long long)per_layer);
    m->layers = calloc((size_t)hp->n_layer, sizeof *m->layers);
    if (!m->layers) return speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    if (hp->n_expert > 0 &&
        !(m->experts = calloc((size_t)hp->n_layer * hp->n_expert * 3, sizeof *m->experts)))
        return speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    for (int l = 0; l < hp->n_layer; l++) {
        speck_layer *ly = &m->layers[l];
        if (m->experts) ly->experts = m->experts + (size_t)l * hp->n_expert * 3;
        if ((err = load_layer(L, l, ly))) return err;
        if (l == 0)
            m->hp.qkv_bias = ly->bq != NULL;
        else if (m->hp.qkv_bias != (ly->bq != NULL))
            return speck_set_error(SPECK_ERR_FORMAT, "%s: q/k/v biases present in some layers only",
                                   L->path);
    }
    return 0;
}

#define PANEL_MAX_BYTES ((size_t)32 << 20)
#define PANEL_CHUNK_ROWS 1024 // quantized rows packed before their mapped pages are dropped

// Panel copies (kernels.h) of the attention/FFN matrices and the output head:
// - float (F32 / F16 / BF16) matrices when they total at most 32 MiB: such small models are
//   compute-bound in the few-token matmuls (their weights stay in cache), and the copy costs
//   little memory; the rows stay mapped for everything else (prefill GEMMs, training).
// - Q4_0 / Q8_0 matrices of any size when the ISA has the kernel (AVX-512 VNNI) and the file is
//   mapped: the row kernels could not keep up with the memory, the panel ones can. The panels
//   replace the rows: each chunk's mapped pages are dropped once packed (every later use reads
//   the panels), so resident memory stays about the file's size.
static bool quantized(speck_type t) {
    return t == SPECK_TYPE_Q4_0 || t == SPECK_TYPE_Q8_0 || speck_type_is_extra(t);
}

// Bytes w's panel copy takes in the shared buffer (64-byte aligned slots).
static size_t panel_slot(const speck_weight *w) {
    return (speck_panel_bytes(w->type, w->n_out, w->n_in) + 63) & ~(size_t)63;
}

static int pack_panels(speck_model *m) {
    const int nl = m->hp.n_layer;
    // Per layer: q, k, v, o, the dense FFN's three or every expert's three and the shared
    // expert's (the router stays in rows: it is small, and f32 in llama.cpp's files).
    const int per_layer = 7 + 3 * m->hp.n_expert + 3;
    const int nw = per_layer * nl + 1;
    speck_weight **ws = malloc((size_t)nw * sizeof *ws);
    if (!ws) return speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    int k = 0;
    for (int l = 0; l < nl; l++) {
        speck_layer *ly = &m->layers[l];
        speck_weight *lw[10] = {&ly->wq, &ly->wk, &ly->wv,       &ly->wo,       &ly->wg,
                                &ly->wu, &ly->wd, &ly->shexp[0], &ly->shexp[1], &ly->shexp[2]};
        for (int i = 0; i < 10; i++)
            if (lw[i]->data) ws[k++] = lw[i];
        for (int e = 0; e < 3 * m->hp.n_expert; e++) ws[k++] = &ly->experts[e];
    }
    // A head tied to the token embedding is packed like the others: the embedding lookups then
    // unpack their rows from the panels (llama.c), so its mapped pages can be dropped too.
    ws[k++] = &m->output;
    const int nuse = k;
    size_t ftotal = 0, qtotal = 0;
    for (int i = 0; i < nuse; i++)
        if (speck_panel_supported(ws[i]->type))
            *(quantized(ws[i]->type) ? &qtotal : &ftotal) += panel_slot(ws[i]);
    const bool do_f = ftotal > 0 && ftotal <= PANEL_MAX_BYTES;
    const bool do_q = qtotal > 0 && speck_gguf_file_mapped(m->g);
    const size_t total = (do_f ? ftotal : 0) + (do_q ? qtotal : 0);
    if (total == 0) {
        free(ws);
        return 0;
    }
    // 2 MiB-aligned and advised as transparent huge pages: a few page faults instead of one
    // per 4 KiB while packing, and one TLB entry per 2 MiB while decoding.
    const size_t huge = (size_t)2 << 20, len = (total + huge - 1) & ~(huge - 1);
    char *p = aligned_alloc(huge, len);
    if (!p) {
        free(ws);
        return speck_set_error(SPECK_ERR_NOMEM, "out of memory (%zu bytes of panels)", total);
    }
#ifdef MADV_HUGEPAGE
    madvise(p, len, MADV_HUGEPAGE); // advice only
#endif
    m->panels = p;
    for (int i = 0; i < nuse; i++) {
        speck_weight *w = ws[i];
        const bool q = quantized(w->type);
        if (!speck_panel_supported(w->type) || !(q ? do_q : do_f)) continue;
        const size_t wrow = speck_type_row_size(w->type, w->n_in);
        const size_t pstride = speck_panel_bytes(w->type, 16, w->n_in); // one panel
        const size_t bytes = speck_panel_bytes(w->type, w->n_out, w->n_in);
        // Fault this matrix's pages in from all threads at once: the kernel zeroes each new
        // page, most of the packing time on this project's VM (~1 s per GB on one core). One
        // matrix at a time, so that resident memory does not hold all panels and all rows.
#pragma omp parallel for schedule(static)
        for (size_t off = 0; off < bytes; off += 4096) p[off] = 0;
        for (int64_t r = 0; r < w->n_out; r += PANEL_CHUNK_ROWS) {
            const int64_t rows = w->n_out - r < PANEL_CHUNK_ROWS ? w->n_out - r : PANEL_CHUNK_ROWS;
            const char *src = (const char *)w->data + (size_t)r * wrow;
            speck_panel_pack(w->type, src, rows, w->n_in, p + (size_t)(r / 16) * pstride);
            if (q) speck_gguf_release(m->g, src, (size_t)rows * wrow);
        }
        w->packed = p;
        p += panel_slot(w);
    }
    if (m->hp.tied_output) m->tok_embd.packed = m->output.packed;
    free(ws);
    return 0;
}

speck_model *speck_model_load(const char *path) {
    return speck_model_load_ex(path, 0);
}

speck_model *speck_model_load_ex(const char *path, unsigned flags) {
    speck_gguf *g = speck_gguf_open_ex(path, flags);
    if (!g) return NULL;
    speck_model *m = calloc(1, sizeof *m);
    if (!m) {
        speck_gguf_close(g);
        speck_set_error(SPECK_ERR_NOMEM, "out of memory");
        return NULL;
    }
    m->g = g;
    loader L = {m, path, NULL, NULL};
    int64_t ai = speck_gguf_find_key(g, "general.architecture");
    if (ai < 0 || !speck_gguf_get_str(g, ai)) {
        speck_set_error(SPECK_ERR_FORMAT, "%s: missing required key 'general.architecture'", path);
        goto fail;
    }
    L.arch = speck_gguf_get_str(g, ai);
    if (!(L.desc = m->arch = speck_arch_find(L.arch))) {
        speck_set_error(SPECK_ERR_UNSUPPORTED, "%s: architecture '%s' is not supported (%s)", path,
                        L.arch, speck_arch_names());
        goto fail;
    }
    if (load_hparams(&L) || load_tensors(&L) || init_rope(&L)) goto fail;
    if (!(flags & SPECK_LOAD_NO_PANELS) && pack_panels(m)) goto fail;
    return m;
fail:
    speck_model_free(m);
    return NULL;
}

void speck_model_free(speck_model *m) {
    if (!m) return;
    speck_model_lora_clear(m);
    for (int i = 0; i < m->n_owned; i++) free(m->owned[i]);
    free(m->owned);
    free(m->layers);
    free(m->experts);
    free(m->rope_freq);
    free(m->rope_freq_long);
    free(m->rope_freq_swa);
    free(m->panels);
    speck_gguf_close(m->g);
    free(m);
}

const speck_hparams *speck_model_hparams(const speck_model *m) {
    return &m->hp;
}
const speck_gguf *speck_model_gguf(const speck_model *m) {
    return m->g;
}

static size_t weight_bytes(const speck_weight *w) {
    return w->data ? speck_type_row_size(w->type, w->n_in) * (size_t)w->n_out : 0;
}

size_t speck_model_weight_bytes(const speck_model *m) {
    size_t total = 0;
    for (int64_t i = 0; i < speck_gguf_n_tensors(m->g); i++)
        total += speck_gguf_tensor_at(m->g, i)->n_bytes;
    return total;
}

size_t speck_model_bytes_per_token(const speck_model *m) {
    // Everything except the embedding table, of which one row is read — unless the head is tied,
    // in which case the output matmul reads the whole table anyway.
    size_t total = speck_model_weight_bytes(m);
    if (!m->hp.tied_output)
        total -= weight_bytes(&m->tok_embd) - speck_type_row_size(m->tok_embd.type, m->hp.n_embd);
    // A mixture of experts reads n_expert_used of each layer's experts.
    const int idle = m->hp.n_expert - m->hp.n_expert_used;
    for (int l = 0; l < m->hp.n_layer && idle > 0; l++) {
        const speck_weight *x = m->layers[l].experts;
        total -= (size_t)idle * (weight_bytes(&x[0]) + weight_bytes(&x[1]) + weight_bytes(&x[2]));
    }
    return total;
}

speck_type speck_model_weight_type(const speck_model *m) {
    return m->layers[0].wq.type;
}
