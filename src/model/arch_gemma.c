// The Gemma family: GGUF "gemma2" (Gemma 2) and "gemma3" (Gemma 3 text models). Embeddings scaled
// by sqrt(n_embd); RMSNorm before and after attention and the FFN (the post-norms apply to the
// block's output before its residual add); GeGLU with tanh-approximated GELU; NEOX RoPE; a head
// tied to the embedding. Gemma 2: attention and output logits soft-capped (50, 30), a
// 4096-position window on every other layer (0, 2, ...). Gemma 3: RMSNorm of each q and k head,
// no attention soft-cap, five windowed layers (their own RoPE base, 10000, unscaled) to one
// global. q . k is scaled by 1/sqrt(query_pre_attn_scalar): the head size, except for the 27B
// models (n_embd / n_head), which is what llama.cpp assumes when the file has no
// attention.scale. Hugging Face's Gemma RMSNorm multiplies by (1 + w); GGUF stores 1 + w.
#include <math.h>
#include <stddef.h>
#include <string.h>

#include "model/arch.h"

#define NORM(slot, gg, hf)                                                                         \
    { slot, gg, hf, DIM_E, DIM_0, TD_NORM }
#define ATTN                                                                                       \
    NORM(SLOT_ATTN_NORM, "attn_norm.weight", "input_layernorm.weight"),                            \
        {SLOT_WQ, "attn_q.weight", "self_attn.q_proj.weight", DIM_Q, DIM_E, 0},                    \
        {SLOT_WK, "attn_k.weight", "self_attn.k_proj.weight", DIM_KV, DIM_E, 0},                   \
        {SLOT_WV, "attn_v.weight", "self_attn.v_proj.weight", DIM_KV, DIM_E, 0},                   \
        {SLOT_WO, "attn_output.weight", "self_attn.o_proj.weight", DIM_E, DIM_Q, 0},               \
        NORM(SLOT_ATTN_POST_NORM, "post_attention_norm.weight", "post_attention_layernorm.weight")
#define FFN                                                                                        \
    NORM(SLOT_FFN_NORM, "ffn_norm.weight", "pre_feedforward_layernorm.weight"),                    \
        {SLOT_WG, "ffn_gate.weight", "mlp.gate_proj.weight", DIM_F, DIM_E, 0},                     \
        {SLOT_WU, "ffn_up.weight", "mlp.up_proj.weight", DIM_F, DIM_E, 0},                         \
        {SLOT_WD, "ffn_down.weight", "mlp.down_proj.weight", DIM_E, DIM_F, 0},                     \
        NORM(SLOT_FFN_POST_NORM, "post_ffw_norm.weight", "post_feedforward_layernorm.weight")

static const speck_tensor_desc gemma2_layer[] = {ATTN, FFN};
static const speck_tensor_desc gemma3_layer[] = {
    ATTN,
    {SLOT_Q_NORM, "attn_q_norm.weight", "self_attn.q_norm.weight", DIM_HD, DIM_0, TD_NORM},
    {SLOT_K_NORM, "attn_k_norm.weight", "self_attn.k_norm.weight", DIM_HD, DIM_0, TD_NORM},
    FFN,
};

#define KEY(k, field, t)                                                                           \
    { k, offsetof(speck_hparams, field), t }
static const speck_key_desc gemma2_keys[] = {
    KEY("attention.sliding_window", n_swa, KEY_INT),
    KEY("attention.sliding_window_pattern", swa_period, KEY_INT),
    KEY("rope.freq_base_swa", rope_freq_base_swa, KEY_FLOAT),
    KEY("attention.scale", attn_scale, KEY_FLOAT),
    KEY("attn_logit_softcapping", attn_softcap, KEY_FLOAT),
    KEY("final_logit_softcapping", final_softcap, KEY_FLOAT),
};
static const speck_key_desc gemma3_keys[] = {
    KEY("attention.sliding_window", n_swa, KEY_INT),
    KEY("attention.sliding_window_pattern", swa_period, KEY_INT),
    KEY("rope.freq_base_swa", rope_freq_base_swa, KEY_FLOAT),
    KEY("attention.scale", attn_scale, KEY_FLOAT),
    KEY("final_logit_softcapping", final_softcap, KEY_FLOAT),
};

// gemma_pytorch's query_pre_attn_scalar: n_embd / n_head for the 27B models (46 layers in Gemma
// 2, 62 in Gemma 3), the head size otherwise.
static float gemma2_scale(const speck_hparams *hp) {
    return 1.0f / sqrtf((float)(hp->n_layer == 46 ? hp->n_embd / hp->n_head : hp->head_dim));
}
static float gemma3_scale(const speck_hparams *hp) {
    return 1.0f / sqrtf((float)(hp->n_layer == 62 ? hp->n_embd / hp->n_head : hp->head_dim));
}

// A soft-cap from config.json: absent -> def, null -> off.
static int softcap(const cJSON *cfg, const char *key, const char *path, float def, float *out) {
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(cfg, key);
    double v;
    if (x && cJSON_IsNull(x)) return *out = 0, 0;
    int rc = speck_hf_num(cfg, key, path, def, &v);
    if (!rc) *out = (float)v;
    return rc;
}

// Which layers are windowed: layer_types (newer configs) as a sliding_window_pattern period, or
// sliding_window_pattern itself, or the family's default. *any: whether some layer is windowed.
static int read_pattern(const cJSON *cfg, const char *path, speck_hparams *hp, bool *any) {
    *any = true;
    const cJSON *lt = cJSON_GetObjectItemCaseSensitive(cfg, "layer_types");
    if (!lt || cJSON_IsNull(lt)) {
        double p;
        int rc = speck_hf_num(cfg, "sliding_window_pattern", path, hp->swa_period, &p);
        if (!rc) hp->swa_period = (int)p;
        return rc;
    }
    if (!cJSON_IsArray(lt) || cJSON_GetArraySize(lt) != hp->n_layer)
        return speck_set_error(SPECK_ERR_FORMAT, "%s: layer_types: expected %d entries", path,
                               hp->n_layer);
    int first_full = -1, n_sw = 0;
    for (int l = 0; l < hp->n_layer; l++) {
        const cJSON *t = cJSON_GetArrayItem(lt, l);
        bool sw = cJSON_IsString(t) && !strcmp(t->valuestring, "sliding_attention");
        if (!sw && !(cJSON_IsString(t) && !strcmp(t->valuestring, "full_attention")))
            return speck_set_error(SPECK_ERR_FORMAT,
                                   "%s: layer_types[%d]: expected \"sliding_attention\" or "
                                   "\"full_attention\"",
                                   path, l);
        n_sw += sw;
        if (!sw && first_full < 0) first_full = l;
    }
    if (n_sw == 0) return *any = false, 0;
    hp->swa_period = first_full < 0 ? 0 : first_full + 1;
    for (int l = 0; l < hp->n_layer; l++) {
        const cJSON *t = cJSON_GetArrayItem(lt, l);
        if (speck_swa_pattern_layer(hp->swa_period, l) !=
            !strcmp(t->valuestring, "sliding_attention"))
            return speck_set_error(SPECK_ERR_UNSUPPORTED,
                                   "%s: layer_types: only a repeating pattern of windowed layers "
                                   "closed by one global layer is supported (layer %d breaks it)",
                                   path, l);
    }
    return 0;
}

static int hf_read(const cJSON *cfg, const char *path, speck_hparams *hp, bool gemma3) {
    double qs, w, base_swa;
    bool any;
    int rc = speck_hf_num(cfg, "query_pre_attn_scalar", path,
                          1.0 / (hp->attn_scale * hp->attn_scale), &qs);
    if (!rc) rc = speck_hf_num(cfg, "sliding_window", path, 4096, &w);
    if (!rc) rc = read_pattern(cfg, path, hp, &any);
    if (!rc)
        rc = speck_hf_num(cfg, "rope_local_base_freq", path, gemma3 ? 10000.0 : hp->rope_freq_base,
                          &base_swa);
    if (!rc && !gemma3) rc = softcap(cfg, "attn_logit_softcapping", path, 50.0f, &hp->attn_softcap);
    if (!rc)
        rc = softcap(cfg, "final_logit_softcapping", path, gemma3 ? 0.0f : 30.0f,
                     &hp->final_softcap);
    if (rc) return rc;
    const cJSON *ac = cJSON_GetObjectItemCaseSensitive(cfg, "attn_logit_softcapping");
    if (gemma3 && ac && !cJSON_IsNull(ac))
        return speck_set_error(SPECK_ERR_UNSUPPORTED,
                               "%s: attn_logit_softcapping: Gemma 3 has none (null expected)",
                               path);
    hp->attn_scale = (float)(1.0 / sqrt(qs));
    hp->n_swa = any && w < hp->n_ctx_train ? (int)w : 0;
    hp->rope_freq_base_swa = (float)base_swa;
    return 0;
}
static int gemma2_read(const cJSON *cfg, const char *path, speck_hparams *hp) {
    return hf_read(cfg, path, hp, false);
}
static int gemma3_read(const cJSON *cfg, const char *path, speck_hparams *hp) {
    return hf_read(cfg, path, hp, true);
}

// A float32 from the GGUF as the nearest integer when it is one (config.json says 256, not
// 255.99998).
static double integral(double v) {
    return fabs(v - round(v)) < 1e-3 ? round(v) : v;
}

static void add_or_null(cJSON *cfg, const char *key, double v) {
    if (v > 0)
        cJSON_AddNumberToObject(cfg, key, v);
    else
        cJSON_AddNullToObject(cfg, key);
}

static void hf_write(cJSON *cfg, const speck_hparams *hp, bool gemma3) {
    cJSON_AddStringToObject(cfg, "hidden_activation", "gelu_pytorch_tanh");
    cJSON_AddNumberToObject(cfg, "query_pre_attn_scalar",
                            integral(1.0 / ((double)hp->attn_scale * hp->attn_scale)));
    add_or_null(cfg, "sliding_window", hp->n_swa);
    cJSON *lt = cJSON_AddArrayToObject(cfg, "layer_types");
    for (int l = 0; l < hp->n_layer; l++)
        cJSON_AddItemToArray(lt,
                             cJSON_CreateString(speck_hparams_layer_swa(hp, l) ? "sliding_attention"
                                                                               : "full_attention"));
    if (gemma3) {
        cJSON_AddNumberToObject(cfg, "sliding_window_pattern", hp->swa_period);
        cJSON_AddNumberToObject(cfg, "rope_local_base_freq", integral(hp->rope_freq_base_swa));
        cJSON_AddNullToObject(cfg, "attn_logit_softcapping");
    } else {
        add_or_null(cfg, "attn_logit_softcapping", hp->attn_softcap);
    }
    add_or_null(cfg, "final_logit_softcapping", hp->final_softcap);
}
static void gemma2_write(cJSON *cfg, const speck_hparams *hp) {
    hf_write(cfg, hp, false);
}
static void gemma3_write(cJSON *cfg, const speck_hparams *hp) {
    hf_write(cfg, hp, true);
}

static const char *const gemma2_classes[] = {"Gemma2ForCausalLM", NULL};
static const char *const gemma3_classes[] = {"Gemma3ForCausalLM", NULL};

const speck_arch speck_arch_gemma2 = {
    .name = "gemma2",
    .ffn = SPECK_FFN_DENSE,
    .rope = SPECK_ROPE_NEOX,
    .act = SPECK_ACT_GELU_TANH,
    .embd_scale = true,
    .hf_tied = true,
    .hf_norm_shift = 1.0f,
    .swa_period = 2,
    .swa_window = 4096,
    .attn_softcap = 50.0f,
    .final_softcap = 30.0f,
    .attn_scale = gemma2_scale,
    .layer = gemma2_layer,
    .n_layer_tensors = sizeof gemma2_layer / sizeof gemma2_layer[0],
    .keys = gemma2_keys,
    .n_keys = sizeof gemma2_keys / sizeof gemma2_keys[0],
    .hf = {gemma2_classes, "gemma2", gemma2_read, gemma2_write},
};

const speck_arch speck_arch_gemma3 = {
    .name = "gemma3",
    .ffn = SPECK_FFN_DENSE,
    .rope = SPECK_ROPE_NEOX,
    .act = SPECK_ACT_GELU_TANH,
    .embd_scale = true,
    .hf_tied = true,
    .hf_norm_shift = 1.0f,
    .swa_period = 6,
    .rope_base_swa = 10000.0f,
    .attn_scale = gemma3_scale,
    .layer = gemma3_layer,
    .n_layer_tensors = sizeof gemma3_layer / sizeof gemma3_layer[0],
    .keys = gemma3_keys,
    .n_keys = sizeof gemma3_keys / sizeof gemma3_keys[0],
    .hf = {gemma3_classes, "gemma3_text", gemma3_read, gemma3_write},
};
