// The registry of architecture descriptions (arch.h) and the helpers their users share.
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "model/arch.h"

static const speck_arch *const g_archs[] = {
    &speck_arch_llama,
    &speck_arch_qwen2,
    &speck_arch_qwen3,
    &speck_arch_gemma2,
    &speck_arch_gemma3,
    &speck_arch_phi3,
    &speck_arch_qwen2moe,
    &speck_arch_qwen3moe,
    &speck_arch_olmoe,
    NULL,
};

const speck_arch *const *speck_archs(void) {
    return g_archs;
}

const speck_arch *speck_arch_find(const char *name) {
    for (int i = 0; name && g_archs[i]; i++)
        if (!strcmp(g_archs[i]->name, name)) return g_archs[i];
    return NULL;
}

const speck_arch *speck_arch_find_hf(const char *hf_class, const char *model_type) {
    for (int i = 0; g_archs[i]; i++) {
        const speck_hf_desc *h = &g_archs[i]->hf;
        if (hf_class && *hf_class) {
            for (int k = 0; h->classes[k]; k++)
                if (!strcmp(h->classes[k], hf_class)) return g_archs[i];
        } else if (model_type && !strcmp(h->model_type, model_type)) {
            return g_archs[i];
        }
    }
    // Mistral's checkpoints say model_type "mistral": the llama family's second class.
    if ((!hf_class || !*hf_class) && model_type &&
        (!strcmp(model_type, "mistral") || !strcmp(model_type, "mixtral")))
        return &speck_arch_llama;
    return NULL;
}

const char *speck_arch_names(void) {
    static char names[192];
    if (!names[0])
        for (int i = 0; g_archs[i]; i++)
            snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", i ? ", " : "",
                     g_archs[i]->name);
    return names;
}

int64_t speck_dim_size(speck_dim d, const speck_hparams *hp) {
    const int64_t q = (int64_t)hp->n_head * hp->head_dim,
                  kv = (int64_t)hp->n_head_kv * hp->head_dim;
    switch (d) {
    case DIM_0:
        return 0;
    case DIM_E:
        return hp->n_embd;
    case DIM_HD:
        return hp->head_dim;
    case DIM_Q:
        return q;
    case DIM_KV:
        return kv;
    case DIM_QKV:
        return q + 2 * kv;
    case DIM_F:
        return hp->n_ff;
    case DIM_2F:
        return 2 * (int64_t)hp->n_ff;
    case DIM_X:
        return hp->n_expert;
    case DIM_FX:
        return hp->n_ff_exp;
    case DIM_FS:
        return hp->n_ff_shexp;
    }
    return 0;
}

float speck_arch_default_attn_scale(const speck_arch *a, const speck_hparams *hp) {
    return a->attn_scale ? a->attn_scale(hp) : 1.0f / sqrtf((float)hp->head_dim);
}

void speck_arch_defaults(const speck_arch *a, speck_hparams *hp) {
    hp->rope_type = a->rope;
    hp->ffn_act = a->act;
    hp->embd_scale = a->embd_scale ? sqrtf((float)hp->n_embd) : 1.0f;
    hp->attn_scale = speck_arch_default_attn_scale(a, hp);
    hp->attn_softcap = a->attn_softcap;
    hp->final_softcap = a->final_softcap;
    hp->n_swa = a->swa_window;
    hp->swa_period = a->swa_period;
    hp->rope_freq_base_swa = a->rope_base_swa > 0 ? a->rope_base_swa : hp->rope_freq_base;
    hp->rope_attn_factor = 1.0f;
    hp->qk_norm = hp->post_norms = hp->qk_norm_full = false;
    for (int i = 0; i < a->n_layer_tensors; i++) {
        hp->qk_norm |= a->layer[i].slot == SLOT_Q_NORM;
        hp->post_norms |= a->layer[i].slot == SLOT_ATTN_POST_NORM;
        hp->qk_norm_full |= a->layer[i].slot == SLOT_Q_NORM && a->layer[i].rows == DIM_Q;
    }
    hp->moe_norm = a->moe && a->moe->norm_topk;
}

bool speck_swa_pattern_layer(int period, int l) {
    // llama.cpp's sliding_window_pattern: 0 every layer; P the first P - 1 of every P layers.
    return period == 0 || l % period < period - 1;
}

bool speck_hparams_layer_swa(const speck_hparams *hp, int l) {
    return hp->n_swa > 0 && speck_swa_pattern_layer(hp->swa_period, l);
}

int speck_hf_num(const cJSON *j, const char *key, const char *path, double def, double *out) {
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(j, key);
    if (!x || cJSON_IsNull(x)) {
        *out = def;
        return 0;
    }
    // Stored as f32 in the GGUF: the value must stay positive and finite there.
    if (!cJSON_IsNumber(x) ||
        !(x->valuedouble > 0 && x->valuedouble <= FLT_MAX && (float)x->valuedouble > 0))
        return speck_set_error(SPECK_ERR_FORMAT,
                               "%s: %s: not a positive number (as a 32-bit float: %g to %g)", path,
                               key, (double)FLT_TRUE_MIN, (double)FLT_MAX);
    *out = x->valuedouble;
    return 0;
}

bool speck_tensor_in_layer(const speck_hparams *hp, const speck_tensor_desc *d) {
    if ((d->flags & TD_DENSE) && hp->n_expert > 0) return false;
    if ((d->flags & TD_MOE) && hp->n_expert == 0) return false;
    if ((d->flags & TD_SHARED) && hp->n_ff_shexp == 0) return false;
    return true;
}
