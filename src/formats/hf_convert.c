// Hugging Face directory (config.json + safetensors + tokenizer.json) -> GGUF, for the families
// speck describes (src/model/arch_*.c: each lists its classes, tensors and config keys).
//
// Everything is validated before the first byte is written: the config's hyper-parameters, every
// tensor the layout needs (present, right shape), and no tensor left over that the layout does
// not know (it would mean a variant we would convert wrongly). Then the GGUF header is written
// and tensors are streamed one row chunk at a time into a temporary file that is renamed into
// place at the end, so memory stays near one chunk and a failure leaves nothing behind.
//
// Q/K layout: HF Llama checkpoints rotate halves (x[i], x[i + d/2]) while GGUF "llama" models
// rotate adjacent pairs (x[2i], x[2i+1]), so the rows of q_proj / k_proj are interleaved per head
// (row j of a head comes from row (j % 2) * d/2 + j / 2). The other families are rotate-half
// (NEOX) in GGUF too and are copied as they are. Gemma's norms are stored as 1 + w.
#include <errno.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "formats/gguf_stream.h"
#include "formats/hf_internal.h"
#include "formats/gguf_internal.h"
#include "kernels/kernels.h"
#include "model/model_internal.h"

/* ---- shared helpers (also used by hf_export.c) ---- */

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void hf_progress_start(hf_progress *p, bool on, int64_t n) {
    *p = (hf_progress){on, n, now(), 0, 0};
}

void hf_progress_step(hf_progress *p, int64_t i, const char *name, size_t bytes) {
    p->bytes += bytes;
    if (!p->on) return;
    double t = now();
    if (t - p->last < 0.1 && i + 1 < p->n) return; // ~10 updates a second is plenty
    p->last = t;
    int w = 30, filled = (int)((double)(i + 1) / (double)p->n * w);
    char bar[32];
    for (int k = 0; k < w; k++) bar[k] = k < filled ? '#' : '.';
    bar[w] = 0;
    double mb = (double)p->bytes / 1e6, dt = t - p->t0;
    fprintf(stderr, "\r[%s] %4lld/%-4lld %8.1f MB %7.1f MB/s  %-32.32s", bar, (long long)(i + 1),
            (long long)p->n, mb, dt > 0 ? mb / dt : 0.0, name);
    fflush(stderr);
}

void hf_progress_end(hf_progress *p, const char *what) {
    if (!p->on) return;
    double dt = now() - p->t0;
    fprintf(stderr, "\n%s: %lld tensors, %.1f MB in %.2f s (%.1f MB/s)\n", what, (long long)p->n,
            (double)p->bytes / 1e6, dt, dt > 0 ? (double)p->bytes / 1e6 / dt : 0.0);
}

void hf_release(const void *p, size_t n) {
    long page = sysconf(_SC_PAGESIZE);
    uintptr_t a = ((uintptr_t)p + (uintptr_t)page - 1) & ~((uintptr_t)page - 1);
    uintptr_t b = ((uintptr_t)p + n) & ~((uintptr_t)page - 1);
    if (b > a) madvise((void *)a, b - a, MADV_DONTNEED);
}

static int64_t perm_row(int64_t r, int hd, int dir) {
    if (hd <= 0) return r;
    int64_t head = r / hd, j = r % hd, half = hd / 2;
    if (dir > 0) return head * hd + (j % 2) * half + j / 2; // GGUF row j <- HF row
    return head * hd + 2 * (j % half) + j / half;           // HF row j <- GGUF row
}

void hf_convert_rows(const void *src, speck_type st, void *dst, speck_type dt, int64_t r0,
                     int64_t n, int64_t cols, int qk_head_dim, int dir) {
    size_t in_rs = speck_type_row_size(st, cols), out_rs = speck_type_row_size(dt, cols);
#pragma omp parallel if (n > 1 && (size_t)n * out_rs > (1u << 16))
    {
        float *tmp = st == dt ? NULL : malloc((size_t)cols * sizeof(float));
#pragma omp for schedule(static)
        for (int64_t r = 0; r < n; r++) {
            const uint8_t *in =
                (const uint8_t *)src + in_rs * (size_t)perm_row(r0 + r, qk_head_dim, dir);
            uint8_t *out = (uint8_t *)dst + out_rs * (size_t)r;
            if (st == dt) {
                memcpy(out, in, out_rs);
            } else if (tmp) {
                speck_dequantize_row(st, in, tmp, cols);
                speck_quantize_row(dt, tmp, out, cols);
            }
        }
        free(tmp);
    }
}

/* ---- config.json ---- */

// What config.json says, as the GGUF will: the family's description and its hyper-parameters,
// plus the per-frequency vectors some RoPE scalings become (tensors in GGUF).
typedef struct {
    const char *path; // DIR/config.json, for messages
    const speck_arch *desc;
    char hf_arch[64];
    speck_hparams hp;
    bool attn_bias;
    int64_t n_vocab; // 0: the embedding's rows
    int scaling;     // 0 none, 1 linear, 2 llama3, 3 longrope
    double factor, low, high, orig;
    float *long_factor, *short_factor; // LongRoPE: (head_dim / 2) each
} hf_cfg;

static int cfg_int(const hf_cfg *c, const cJSON *j, const char *k, int64_t dflt, int64_t *out) {
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(j, k);
    if (!x || cJSON_IsNull(x)) {
        if (dflt < 0) return speck_set_error(SPECK_ERR_FORMAT, "%s: %s: missing", c->path, k);
        *out = dflt;
        return 0;
    }
    if (!cJSON_IsNumber(x) || x->valuedouble < 1 || x->valuedouble > (double)(1 << 30) ||
        x->valuedouble != floor(x->valuedouble))
        return speck_set_error(SPECK_ERR_FORMAT, "%s: %s: not a positive integer", c->path, k);
    *out = (int64_t)x->valuedouble;
    return 0;
}

static int cfg_num(const hf_cfg *c, const cJSON *j, const char *k, double dflt, double *out) {
    return speck_hf_num(j, k, c->path, dflt, out);
}

// LongRoPE's factor list `key` of rope_scaling: half = head_dim / 2 numbers.
static int longrope_factors(hf_cfg *c, const cJSON *rs, const char *key, int half, float **out) {
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(rs, key);
    if (!cJSON_IsArray(a) || cJSON_GetArraySize(a) != half)
        return speck_set_error(SPECK_ERR_FORMAT,
                               "%s: rope_scaling: %s: expected %d numbers (head_dim / 2)", c->path,
                               key, half);
    if (!(*out = malloc((size_t)half * sizeof(float))))
        return speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    for (int i = 0; i < half; i++) {
        const cJSON *x = cJSON_GetArrayItem(a, i);
        if (!cJSON_IsNumber(x) || !(x->valuedouble > 0 && x->valuedouble <= FLT_MAX))
            return speck_set_error(SPECK_ERR_FORMAT,
                                   "%s: rope_scaling: %s[%d]: not a positive "
                                   "number",
                                   c->path, key, i);
        (*out)[i] = (float)x->valuedouble;
    }
    return 0;
}

static int read_rope_scaling(hf_cfg *c, const cJSON *j) {
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(j, "rope_scaling");
    if (!rs || cJSON_IsNull(rs)) return 0;
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(rs, "rope_type");
    if (!cJSON_IsString(t)) t = cJSON_GetObjectItemCaseSensitive(rs, "type");
    const char *type = cJSON_IsString(t) ? t->valuestring : "(missing)";
    int rc = 0;
    if (!strcmp(type, "default")) return 0;
    if (!strcmp(type, "linear")) {
        c->scaling = 1;
        return cfg_num(c, rs, "factor", 1.0, &c->factor);
    }
    if (!strcmp(type, "llama3")) {
        c->scaling = 2;
        if ((rc = cfg_num(c, rs, "factor", 8.0, &c->factor)) ||
            (rc = cfg_num(c, rs, "low_freq_factor", 1.0, &c->low)) ||
            (rc = cfg_num(c, rs, "high_freq_factor", 4.0, &c->high)) ||
            (rc = cfg_num(c, rs, "original_max_position_embeddings", 8192, &c->orig)))
            return rc;
        if (c->high <= c->low)
            return speck_set_error(SPECK_ERR_FORMAT,
                                   "%s: rope_scaling: high_freq_factor must exceed "
                                   "low_freq_factor",
                                   c->path);
        return 0;
    }
    if (!strcmp(type, "longrope") || !strcmp(type, "su")) {
        // Phi-3 128k: divisors per frequency for contexts up to the original one and beyond,
        // cos and sin scaled by attention_factor (the paper's sqrt(1 + ln s / ln orig) unless
        // given), s = max_position_embeddings / original_max_position_embeddings.
        c->scaling = 3;
        const int half = c->hp.head_dim / 2;
        double orig, af;
        if ((rc = cfg_num(c, j, "original_max_position_embeddings", c->hp.n_ctx_train, &orig)) ||
            (rc = cfg_num(c, rs, "original_max_position_embeddings", orig, &orig)) ||
            (rc = longrope_factors(c, rs, "short_factor", half, &c->short_factor)) ||
            (rc = longrope_factors(c, rs, "long_factor", half, &c->long_factor)))
            return rc;
        const double s = c->hp.n_ctx_train / orig;
        if ((rc = cfg_num(c, rs, "attention_factor", s > 1 ? sqrt(1 + log(s) / log(orig)) : 1.0,
                          &af)))
            return rc;
        c->orig = orig;
        c->hp.rope_attn_factor = (float)af;
        return 0;
    }
    return speck_set_error(SPECK_ERR_UNSUPPORTED,
                           "%s: rope_scaling: type '%s' is not supported (linear, llama3, "
                           "longrope)",
                           c->path, type);
}

// Mixture of experts: num_local_experts (Mixtral) or num_experts, num_experts_per_tok, the
// experts' width (moe_intermediate_size, else intermediate_size), Qwen2-MoE's
// shared_expert_intermediate_size, norm_topk_prob (Mixtral: always renormalised). A Llama-class
// config without experts stays dense.
static int read_moe(hf_cfg *c, const cJSON *j) {
    speck_hparams *hp = &c->hp;
    const speck_moe_desc *moe = c->desc->moe;
    if (!moe) return 0;
    int64_t X = 0, K = 0, FX = 0, FS = 0;
    int rc = cfg_int(c, j, "num_local_experts", 0, &X);
    if (!rc && !X) rc = cfg_int(c, j, "num_experts", 0, &X);
    if (rc) return rc;
    if (!X && c->desc->ffn == SPECK_FFN_DENSE_OR_MOE) return 0;
    if (!X)
        return speck_set_error(SPECK_ERR_FORMAT, "%s: num_experts: missing (a mixture of experts)",
                               c->path);
    if ((rc = cfg_int(c, j, "num_experts_per_tok", -1, &K)) ||
        (rc = cfg_int(c, j, "moe_intermediate_size", hp->n_ff, &FX)) ||
        (moe->shared && (rc = cfg_int(c, j, "shared_expert_intermediate_size", -1, &FS))))
        return rc;
    if (K > X)
        return speck_set_error(SPECK_ERR_FORMAT,
                               "%s: num_experts_per_tok %lld is larger than the %lld experts",
                               c->path, (long long)K, (long long)X);
    if (moe->ff_is_n_ff && FX != hp->n_ff)
        return speck_set_error(SPECK_ERR_UNSUPPORTED,
                               "%s: moe_intermediate_size %lld differs from intermediate_size "
                               "%d, which GGUF's %s sizes the experts by",
                               c->path, (long long)FX, hp->n_ff, c->desc->name);
    hp->n_expert = (int)X, hp->n_expert_used = (int)K, hp->n_ff_exp = (int)FX;
    hp->n_ff_shexp = (int)FS;
    const cJSON *nt = cJSON_GetObjectItemCaseSensitive(j, "norm_topk_prob");
    // Mixtral's block always renormalises (softmax over the top-k); the others say.
    if (c->desc->ffn != SPECK_FFN_DENSE_OR_MOE) hp->moe_norm = cJSON_IsTrue(nt);
    return 0;
}

static int read_config(const char *dir, char *path, size_t path_size, hf_cfg *c) {
    memset(c, 0, sizeof *c);
    snprintf(path, path_size, "%s/config.json", dir);
    c->path = path;
    cJSON *j = hf_read_json(path);
    if (!j) return SPECK_ERR_FORMAT;
    int rc = 0;
    const cJSON *archs = cJSON_GetObjectItemCaseSensitive(j, "architectures");
    const cJSON *a0 = cJSON_GetArrayItem(archs, 0);
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(j, "model_type");
    const char *name = cJSON_IsString(a0) ? a0->valuestring : NULL;
    const char *mtype = cJSON_IsString(mt) ? mt->valuestring : "";
    snprintf(c->hf_arch, sizeof c->hf_arch, "%s", name ? name : mtype);
    if (!(c->desc = speck_arch_find_hf(name, mtype))) {
        char known[512] = "";
        for (const speck_arch *const *a = speck_archs(); *a; a++)
            for (int k = 0; (*a)->hf.classes[k]; k++)
                snprintf(known + strlen(known), sizeof known - strlen(known), "%s%s",
                         known[0] ? ", " : "", (*a)->hf.classes[k]);
        rc = speck_set_error(SPECK_ERR_UNSUPPORTED, "%s: architectures: '%s' is not supported (%s)",
                             path, c->hf_arch[0] ? c->hf_arch : "(missing)", known);
        goto done;
    }
    speck_hparams *hp = &c->hp;
    snprintf(hp->arch, sizeof hp->arch, "%s", c->desc->name);
    // The activation the family's FFN uses (Gemma names it hidden_activation).
    const char *want = c->desc->act == SPECK_ACT_GELU_TANH ? "gelu_pytorch_tanh" : "silu";
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(j, "hidden_activation");
    if (!cJSON_IsString(act)) act = cJSON_GetObjectItemCaseSensitive(j, "hidden_act");
    if (cJSON_IsString(act) && strcmp(act->valuestring, want)) {
        rc = speck_set_error(SPECK_ERR_UNSUPPORTED, "%s: %s: '%s' is not supported (%s)", path,
                             act->string, act->valuestring, want);
        goto done;
    }
    int64_t E = 0, F = 0, L = 0, H = 0, KV = 0, HD = 0, C = 0;
    double eps, theta;
    if ((rc = cfg_int(c, j, "hidden_size", -1, &E)) ||
        (rc = cfg_int(c, j, "intermediate_size", -1, &F)) ||
        (rc = cfg_int(c, j, "num_hidden_layers", -1, &L)) ||
        (rc = cfg_int(c, j, "num_attention_heads", -1, &H)) ||
        (rc = cfg_int(c, j, "num_key_value_heads", H, &KV)) ||
        (rc = cfg_int(c, j, "head_dim", E / H, &HD)) ||
        (rc = cfg_int(c, j, "max_position_embeddings", 4096, &C)) ||
        (rc = cfg_int(c, j, "vocab_size", 0, &c->n_vocab)) ||
        (rc = cfg_num(c, j, "rms_norm_eps", 1e-6, &eps)) ||
        (rc = cfg_num(c, j, "rope_theta", 10000.0, &theta)))
        goto done;
    if (H % KV || HD % 2) {
        rc = speck_set_error(SPECK_ERR_FORMAT,
                             "%s: num_key_value_heads %lld must divide num_attention_heads %lld "
                             "and head_dim %lld be even",
                             path, (long long)KV, (long long)H, (long long)HD);
        goto done;
    }
    hp->n_embd = (int)E, hp->n_ff = (int)F, hp->n_layer = (int)L, hp->n_head = (int)H;
    hp->n_head_kv = (int)KV, hp->head_dim = (int)HD, hp->n_ctx_train = (int)C;
    hp->norm_eps = (float)eps, hp->rope_freq_base = (float)theta;
    hp->rope_scale_factor = 1.0f;
    speck_arch_defaults(c->desc, hp);
    // Llama, Mistral, Qwen and Phi-3 default to an untied head; Gemma ties it.
    const cJSON *tie = cJSON_GetObjectItemCaseSensitive(j, "tie_word_embeddings");
    hp->tied_output = tie && !cJSON_IsNull(tie) ? cJSON_IsTrue(tie) : c->desc->hf_tied;
    c->attn_bias =
        c->desc->qkv_bias || cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "attention_bias"));
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "mlp_bias"))) {
        rc = speck_set_error(SPECK_ERR_UNSUPPORTED, "%s: mlp_bias: true is not supported", path);
        goto done;
    }
    if ((rc = read_rope_scaling(c, j))) goto done;
    hp->rope_scaling = c->scaling == 1   ? SPECK_ROPE_SCALING_LINEAR
                       : c->scaling == 3 ? SPECK_ROPE_SCALING_LONGROPE
                                         : SPECK_ROPE_SCALING_NONE;
    hp->rope_scale_factor = c->scaling == 1 ? (float)c->factor : 1.0f;
    hp->rope_orig_ctx = c->scaling == 3 ? (int)c->orig : 0;
    if (c->desc->hf.read) rc = c->desc->hf.read(j, path, hp);
    if (!rc) rc = read_moe(c, j);
done:
    cJSON_Delete(j);
    return rc;
}

/* ---- the tensor plan ---- */

typedef struct {
    char hf[128], gg[96];
    const speck_st_tensor *src;
    int64_t rows, cols; // cols = 0: a vector of `rows` values
    int qk_head_dim;    // > 0: Q/K rows to interleave
    float shift;        // added to every value (Gemma's norms: 1 + w)
    speck_type out;
    const float *synth; // tensors computed here (rope_freqs, LongRoPE's factors), f32
    int n_mat;          // experts: > 0 on the first expert's slice (the GGUF tensor stacks
                        // n_mat of them), -1 on the following ones (appended to it)
    size_t off;         // bytes into src's data: an expert's matrix in a fused 3-D tensor
} plan_t;

typedef struct {
    const char *dir;
    hf_cfg cfg;
    speck_st *st;
    plan_t *p;
    int n, cap;
    float *rope_freqs;
} conv;

static plan_t *plan_new(conv *c) {
    if (c->n == c->cap) {
        int cap = c->cap ? c->cap * 2 : 64;
        plan_t *p = realloc(c->p, (size_t)cap * sizeof *p);
        if (!p) return speck_set_error(SPECK_ERR_NOMEM, "out of memory"), NULL;
        c->p = p;
        c->cap = cap;
    }
    plan_t *p = &c->p[c->n++];
    memset(p, 0, sizeof *p);
    return p;
}

static int plan_add(conv *c, const char *hf, const char *gg, int64_t rows, int64_t cols, int qk,
                    float shift, int type, bool required) {
    const speck_st_tensor *t = speck_st_find(c->st, hf);
    if (!t) {
        if (!required) return 0;
        return speck_set_error(SPECK_ERR_FORMAT, "%s: tensor '%s' is missing from the checkpoint",
                               c->dir, hf);
    }
    // A vector may come as a (1, n) matrix (Qwen2-MoE's shared_expert_gate).
    bool ok = cols ? t->n_dims == 2 && t->shape[0] == rows && t->shape[1] == cols
                   : (t->n_dims == 1 && t->shape[0] == rows) ||
                         (t->n_dims == 2 && t->shape[0] == 1 && t->shape[1] == rows);
    if (!ok) {
        char got[96] = "[";
        for (int d = 0; d < t->n_dims; d++)
            snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", d ? ", " : "",
                     (long long)t->shape[d]);
        strcat(got, "]");
        if (cols)
            return speck_set_error(SPECK_ERR_FORMAT,
                                   "%s: tensor '%s' has shape %s but config.json implies [%lld, "
                                   "%lld]",
                                   t->file, hf, got, (long long)rows, (long long)cols);
        return speck_set_error(SPECK_ERR_FORMAT,
                               "%s: tensor '%s' has shape %s but config.json implies [%lld]",
                               t->file, hf, got, (long long)rows);
    }
    plan_t *p = plan_new(c);
    if (!p) return SPECK_ERR_NOMEM;
    snprintf(p->hf, sizeof p->hf, "%s", hf);
    snprintf(p->gg, sizeof p->gg, "%s", gg);
    p->src = t;
    p->rows = rows;
    p->cols = cols;
    p->qk_head_dim = qk;
    p->shift = shift;
    // Vectors are f32; matrices take the requested type (the source's for -1), falling back as
    // llama-quantize does (speck_type_for_row: Q4_K -> Q5_0, ..., f16 last) when the type's
    // block does not divide the row.
    if (!cols)
        p->out = SPECK_TYPE_F32;
    else if (type < 0)
        p->out = t->type;
    else
        p->out = speck_type_for_row((speck_type)type, cols);
    return 0;
}

// Expert e's matrix of TD_EXPERTS tensor d in transformers' fused layout (its 5.x classes):
// PREFIXexperts.gate_up_proj (n_expert, 2 F, E), each expert's gate rows then its up rows, and
// PREFIXexperts.down_proj (n_expert, E, F), PREFIX being what precedes "experts." in d's
// per-expert name. 0, or 1 when the checkpoint has no fused tensor (then the per-expert one is
// required), or an error for a fused tensor of the wrong shape.
static int plan_fused(conv *c, int l, const speck_tensor_desc *d, int e, const char *gg, int type) {
    const speck_hparams *hp = &c->cfg.hp;
    const char *ex = strstr(d->hf, "experts.");
    if (!ex) return 1;
    const bool down = d->slot == SLOT_WD_EXPS;
    char hf[128];
    snprintf(hf, sizeof hf, "model.layers.%d.%.*sexperts.%s", l, (int)(ex - d->hf), d->hf,
             down ? "down_proj" : "gate_up_proj");
    const speck_st_tensor *t = speck_st_find(c->st, hf);
    if (!t) return 1;
    const int64_t X = hp->n_expert, E = hp->n_embd, F = hp->n_ff_exp;
    const int64_t rows = down ? E : F, cols = down ? F : E, mid = down ? E : 2 * F;
    if (t->n_dims != 3 || t->shape[0] != X || t->shape[1] != mid || t->shape[2] != cols)
        return speck_set_error(SPECK_ERR_FORMAT,
                               "%s: tensor '%s' has %d dimensions [%lld, %lld, %lld] but "
                               "config.json implies [%lld, %lld, %lld]",
                               t->file, hf, t->n_dims, (long long)t->shape[0],
                               (long long)(t->n_dims > 1 ? t->shape[1] : 0),
                               (long long)(t->n_dims > 2 ? t->shape[2] : 0), (long long)X,
                               (long long)mid, (long long)cols);
    plan_t *p = plan_new(c);
    if (!p) return SPECK_ERR_NOMEM;
    snprintf(p->hf, sizeof p->hf, "%s", hf);
    snprintf(p->gg, sizeof p->gg, "%s", gg);
    p->src = t;
    p->rows = rows;
    p->cols = cols;
    const size_t rs = speck_type_row_size(t->type, cols);
    p->off = ((size_t)e * mid + (d->slot == SLOT_WU_EXPS ? (size_t)F : 0)) * rs;
    p->out = type < 0 ? t->type : speck_type_for_row((speck_type)type, cols);
    return 0;
}

// A vector computed here (f32).
static int plan_synth(conv *c, const char *gg, int64_t n, const float *data) {
    plan_t *p = plan_new(c);
    if (!p) return SPECK_ERR_NOMEM;
    snprintf(p->gg, sizeof p->gg, "%s", gg);
    p->rows = n;
    p->out = SPECK_TYPE_F32;
    p->synth = data;
    return 0;
}

static int build_plan(conv *c, int type) {
    hf_cfg *h = &c->cfg;
    const speck_hparams *hp = &h->hp;
    const speck_arch *a = h->desc;
    const speck_st_tensor *emb = speck_st_find(c->st, "model.embed_tokens.weight");
    if (!emb)
        return speck_set_error(SPECK_ERR_FORMAT,
                               "%s: tensor 'model.embed_tokens.weight' is missing from the "
                               "checkpoint",
                               c->dir);
    int64_t V = h->n_vocab ? h->n_vocab : (emb->n_dims == 2 ? emb->shape[0] : 0);
    const int64_t E = hp->n_embd;
    const int half = hp->head_dim / 2;
    int rc;
    if ((rc = plan_add(c, "model.embed_tokens.weight", "token_embd.weight", V, E, 0, 0, type, 1)))
        return rc;
    h->n_vocab = V;
    h->hp.n_vocab = (int)V;
    if ((rc = plan_add(c, "model.norm.weight", "output_norm.weight", E, 0, 0, a->hf_norm_shift,
                       type, 1)))
        return rc;
    if (!hp->tied_output &&
        (rc = plan_add(c, "lm_head.weight", "output.weight", V, E, 0, 0, type, 1)))
        return rc;
    for (int l = 0; l < hp->n_layer; l++)
        for (int i = 0; i < a->n_layer_tensors; i++) {
            const speck_tensor_desc *d = &a->layer[i];
            const bool bias = d->slot == SLOT_BQ || d->slot == SLOT_BK || d->slot == SLOT_BV;
            if (bias && !h->attn_bias) continue; // then a bias in the file is unexpected
            if (!speck_tensor_in_layer(hp, d)) continue;
            char hf[128], gg[96];
            if (d->flags & TD_EXPERTS) { // one HF tensor per expert, stacked in one GGUF tensor
                snprintf(gg, sizeof gg, "blk.%d.%s", l, d->gguf);
                for (int e = 0; e < hp->n_expert; e++) {
                    char part[96];
                    snprintf(part, sizeof part, d->hf, e);
                    snprintf(hf, sizeof hf, "model.layers.%d.%s", l, part);
                    if ((rc = plan_fused(c, l, d, e, gg, type)) < 0 ||
                        (rc == 1 && (rc = plan_add(c, hf, gg, speck_dim_size(d->rows, hp),
                                                   speck_dim_size(d->cols, hp), 0, 0, type, 1))))
                        return rc;
                    c->p[c->n - 1].n_mat = e ? -1 : hp->n_expert;
                    if (e) c->p[c->n - 1].out = c->p[c->n - 2].out;
                }
                continue;
            }
            snprintf(hf, sizeof hf, "model.layers.%d.%s", l, d->hf);
            snprintf(gg, sizeof gg, "blk.%d.%s", l, d->gguf);
            // Biases are permuted like their weight rows.
            // The router stays f32 as llama.cpp's quantizers leave it.
            if ((rc = plan_add(c, hf, gg, speck_dim_size(d->rows, hp), speck_dim_size(d->cols, hp),
                               d->flags & TD_PERMUTE ? hp->head_dim : 0,
                               d->flags & TD_NORM ? a->hf_norm_shift : 0,
                               d->slot == SLOT_ROUTER ? SPECK_TYPE_F32 : type, 1)))
                return rc;
        }
    if (h->scaling == 2) {
        // llama.cpp ships Llama 3.1 scaling as per-frequency divisors of the base frequencies.
        // Computed once the q projections have matched head_dim: the config alone could ask
        // for gigabytes here.
        if (!(c->rope_freqs = malloc((size_t)half * sizeof(float))))
            return speck_set_error(SPECK_ERR_NOMEM, "out of memory");
        double lo_wl = h->orig / h->low, hi_wl = h->orig / h->high;
        for (int i = 0; i < half; i++) {
            double f = pow(hp->rope_freq_base, -2.0 * i / (double)hp->head_dim), wl = 2 * M_PI / f;
            double d = 1.0;
            if (wl > lo_wl)
                d = h->factor;
            else if (wl >= hi_wl) {
                double s = (h->orig / wl - h->low) / (h->high - h->low);
                d = 1.0 / ((1 - s) / h->factor + s);
            }
            c->rope_freqs[i] = (float)d;
        }
        if ((rc = plan_synth(c, "rope_freqs.weight", half, c->rope_freqs))) return rc;
    }
    if (h->scaling == 3 &&
        ((rc = plan_synth(c, "rope_factors_long.weight", half, h->long_factor)) ||
         (rc = plan_synth(c, "rope_factors_short.weight", half, h->short_factor))))
        return rc;
    // Anything else means a layout this converter does not know.
    for (int64_t i = 0; i < speck_st_n_tensors(c->st); i++) {
        const speck_st_tensor *t = speck_st_tensor_at(c->st, i);
        bool used = false;
        for (int k = 0; k < c->n && !used; k++) used = c->p[k].src == t;
        if (used || strstr(t->name, "rotary_emb.inv_freq") ||
            (hp->tied_output && !strcmp(t->name, "lm_head.weight")))
            continue;
        return speck_set_error(SPECK_ERR_FORMAT,
                               "%s: unexpected tensor '%s' (not part of the %s layout of "
                               "config.json: %d layers)",
                               t->file, t->name, h->hf_arch, hp->n_layer);
    }
    return 0;
}

static int write_kv(conv *c, speck_gguf_writer *w) {
    speck_hparams hp = c->cfg.hp; // Llama 3.1 scaling and LongRoPE went into tensors (build_plan)
    char name[256];
    snprintf(name, sizeof name, "%s", c->dir);
    size_t n = strlen(name);
    while (n > 1 && name[n - 1] == '/') name[--n] = 0;
    const char *base = strrchr(name, '/') ? strrchr(name, '/') + 1 : name;
    snprintf(hp.name, sizeof hp.name, "%.*s", (int)sizeof hp.name - 1, base); // cut if longer
    int rc = speck_hparams_write(w, &hp);
    if (rc) return rc;
    // The matrices' type: that of the attention output, which every layout has.
    int ft = 0;
    for (int i = 0; i < c->n; i++)
        if (strstr(c->p[i].gg, "attn_output.weight")) ft = speck_gguf_file_type(c->p[i].out);
    if (speck_gguf_set_u32(w, "general.file_type", (uint32_t)ft))
        return speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    return hf_tokenizer_to_gguf(w, c->dir, c->cfg.n_vocab);
}

static int stream_tensor(conv *c, speck_gguf_stream *s, const plan_t *p, uint8_t *buf,
                         size_t buf_size) {
    if (p->synth) return speck_gguf_stream_write(s, p->synth, (size_t)p->rows * sizeof(float));
    if (p->shift != 0) { // a norm vector stored as shift + w (f32)
        float *v = malloc((size_t)p->rows * sizeof(float));
        if (!v) return speck_set_error(SPECK_ERR_NOMEM, "out of memory");
        speck_dequantize_row(p->src->type, p->src->data, v, p->rows);
        for (int64_t i = 0; i < p->rows; i++) v[i] += p->shift;
        int rc = speck_gguf_stream_write(s, v, (size_t)p->rows * sizeof(float));
        free(v);
        return rc;
    }
    int64_t rows = p->cols ? p->rows : 1, cols = p->cols ? p->cols : p->rows;
    // A vector is one row, except permuted biases, which are rows of one value each.
    if (!p->cols && p->qk_head_dim) rows = p->rows, cols = 1;
    size_t out_rs = speck_type_row_size(p->out, cols);
    int64_t chunk = (int64_t)(buf_size / out_rs);
    if (chunk < 1) chunk = 1; // buf_size covers at least one row (see convert)
    int rc = 0;
    for (int64_t r0 = 0; r0 < rows && !rc; r0 += chunk) {
        int64_t n = rows - r0 < chunk ? rows - r0 : chunk;
        const uint8_t *src = (const uint8_t *)p->src->data + p->off;
        hf_convert_rows(src, p->src->type, buf, p->out, r0, n, cols, p->qk_head_dim, 1);
        rc = speck_gguf_stream_write(s, buf, (size_t)n * out_rs);
        if (!p->qk_head_dim) { // rows done are never read again: keep only this chunk resident
            size_t in_rs = speck_type_row_size(p->src->type, cols);
            hf_release(src + (size_t)r0 * in_rs, (size_t)n * in_rs);
        }
    }
    if (!p->off) hf_release(p->src->data, p->src->n_bytes); // (a fused tensor: its slices)
    return rc;
}

int speck_hf_convert(const char *hf_dir, const char *out_path, int type, bool progress) {
    if (type >= 0 && (!speck_type_name(type)))
        return speck_set_error(SPECK_ERR_ARG, "convert: unsupported output type %d", type);
    conv c = {.dir = hf_dir};
    char cfg_path[PATH_MAX];
    speck_gguf_writer *w = NULL;
    speck_gguf_stream *s = NULL;
    uint8_t *buf = NULL;
    int rc = read_config(hf_dir, cfg_path, sizeof cfg_path, &c.cfg);
    if (!rc && !(c.st = speck_st_open(hf_dir))) rc = SPECK_ERR_FORMAT;
    if (!rc) rc = build_plan(&c, type);
    if (!rc && !(w = speck_gguf_writer_new())) rc = SPECK_ERR_NOMEM;
    if (!rc) rc = write_kv(&c, w);
    size_t max_row = 0;
    for (int i = 0; !rc && i < c.n; i++) {
        const plan_t *p = &c.p[i];
        int64_t ne[3] = {p->cols ? p->cols : p->rows, p->rows, p->n_mat};
        if (p->n_mat < 0) continue; // another expert of the tensor before
        rc = speck_gguf_add_tensor(w, p->gg, p->out, p->n_mat > 0 ? 3 : p->cols ? 2 : 1, ne, NULL);
        size_t rs = speck_type_row_size(p->out, ne[0]);
        if (rs > max_row) max_row = rs;
    }
    // Row chunks of ~8 MB: big enough for fast writes, small next to any shard.
    size_t buf_size = max_row > (8u << 20) ? max_row : (8u << 20);
    if (!rc && !(buf = malloc(buf_size))) rc = speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    if (!rc && !(s = speck_gguf_stream_open(w, out_path))) rc = SPECK_ERR_IO;
    hf_progress pr;
    hf_progress_start(&pr, progress, c.n);
    for (int i = 0; !rc && i < c.n; i++) {
        rc = stream_tensor(&c, s, &c.p[i], buf, buf_size);
        hf_progress_step(&pr, i, c.p[i].gg, c.p[i].src ? c.p[i].src->n_bytes : 0);
    }
    if (!rc) {
        rc = speck_gguf_stream_close(s); // removes the temporary file itself on failure
        s = NULL;
    }
    if (!rc)
        hf_progress_end(&pr, "convert");
    else if (pr.on)
        fprintf(stderr, "\n");
    speck_gguf_stream_abort(s);
    free(buf);
    speck_gguf_writer_free(w);
    speck_st_close(c.st);
    free(c.p);
    free(c.rope_freqs);
    free(c.cfg.long_factor);
    free(c.cfg.short_factor);
    return rc;
}

speck_model *speck_model_load_hf(const char *hf_dir) {
    const char *td = getenv("TMPDIR");
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/speck-hf-XXXXXX", td && *td ? td : "/tmp");
    int fd = mkstemp(path); // reserves a unique name; the converter renames over it
    if (fd < 0) {
        speck_set_error(SPECK_ERR_IO, "%s: cannot create a temporary file: %s", path,
                        strerror(errno));
        return NULL;
    }
    close(fd);
    speck_model *m = NULL;
    if (speck_hf_convert(hf_dir, path, -1, false) == 0) m = speck_model_load(path);
    unlink(path); // the mapping keeps the data alive; nothing is left behind on exit
    return m;
}
