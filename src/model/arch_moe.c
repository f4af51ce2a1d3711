// The mixture-of-experts families whose GGUF architecture is their own: "qwen2moe" (Qwen1.5-MoE,
// Qwen2-MoE: q/k/v biases, 60-64 routed experts plus a shared expert behind a sigmoid gate, the
// routed weights not renormalised), "qwen3moe" (Qwen3-30B-A3B, 235B-A22B: Qwen3's per-head q/k
// norms, 128 experts, top-8 renormalised) and "olmoe" (OLMoE-1B-7B: RMSNorm over the whole q and
// k rows before RoPE, 64 experts, top-8 not renormalised). Mixtral is the Llama family with
// experts (arch_llama.c). The router, top-k and experts run in src/model/moe.c.
#include <stddef.h>
#include <string.h>

#include "model/arch.h"

#define ATTN_NORM                                                                                  \
    { SLOT_ATTN_NORM, "attn_norm.weight", "input_layernorm.weight", DIM_E, DIM_0, TD_NORM }
#define QKV(bias)                                                                                  \
    {SLOT_WQ, "attn_q.weight", "self_attn.q_proj.weight", DIM_Q, DIM_E, 0},                        \
        {SLOT_WK, "attn_k.weight", "self_attn.k_proj.weight", DIM_KV, DIM_E, 0},                   \
        {SLOT_WV, "attn_v.weight", "self_attn.v_proj.weight", DIM_KV, DIM_E, 0},                   \
        {SLOT_BQ, "attn_q.bias", "self_attn.q_proj.bias", DIM_Q, DIM_0, bias},                     \
        {SLOT_BK, "attn_k.bias", "self_attn.k_proj.bias", DIM_KV, DIM_0, bias}, {                  \
        SLOT_BV, "attn_v.bias", "self_attn.v_proj.bias", DIM_KV, DIM_0, bias                       \
    }
#define ATTN_OUT                                                                                   \
    {SLOT_WO, "attn_output.weight", "self_attn.o_proj.weight", DIM_E, DIM_Q, 0}, {                 \
        SLOT_FFN_NORM, "ffn_norm.weight", "post_attention_layernorm.weight", DIM_E, DIM_0, TD_NORM \
    }
// Hugging Face's Qwen-MoE / OLMoE block: mlp.gate (the router), mlp.experts.E.{gate,up,down}_proj.
#define EXPERTS                                                                                    \
    {SLOT_ROUTER, "ffn_gate_inp.weight", "mlp.gate.weight", DIM_X, DIM_E, 0},                      \
        {SLOT_WG_EXPS, "ffn_gate_exps.weight", "mlp.experts.%d.gate_proj.weight", DIM_FX, DIM_E,   \
         TD_EXPERTS},                                                                              \
        {SLOT_WU_EXPS, "ffn_up_exps.weight", "mlp.experts.%d.up_proj.weight", DIM_FX, DIM_E,       \
         TD_EXPERTS},                                                                              \
    {                                                                                              \
        SLOT_WD_EXPS, "ffn_down_exps.weight", "mlp.experts.%d.down_proj.weight", DIM_E, DIM_FX,    \
            TD_EXPERTS                                                                             \
    }

static const speck_tensor_desc qwen2moe_layer[] = {
    ATTN_NORM,
    QKV(TD_OPTIONAL),
    ATTN_OUT,
    EXPERTS,
    {SLOT_SH_GATE, "ffn_gate_inp_shexp.weight", "mlp.shared_expert_gate.weight", DIM_E, DIM_0,
     TD_SHARED},
    {SLOT_WG_SH, "ffn_gate_shexp.weight", "mlp.shared_expert.gate_proj.weight", DIM_FS, DIM_E,
     TD_SHARED},
    {SLOT_WU_SH, "ffn_up_shexp.weight", "mlp.shared_expert.up_proj.weight", DIM_FS, DIM_E,
     TD_SHARED},
    {SLOT_WD_SH, "ffn_down_shexp.weight", "mlp.shared_expert.down_proj.weight", DIM_E, DIM_FS,
     TD_SHARED},
};

static const speck_tensor_desc qwen3moe_layer[] = {
    ATTN_NORM,
    QKV(TD_OPTIONAL),
    {SLOT_Q_NORM, "attn_q_norm.weight", "self_attn.q_norm.weight", DIM_HD, DIM_0, TD_NORM},
    {SLOT_K_NORM, "attn_k_norm.weight", "self_attn.k_norm.weight", DIM_HD, DIM_0, TD_NORM},
    ATTN_OUT,
    EXPERTS,
};

// OLMoE normalises the whole q and k projections (n_head hd and n_head_kv hd values).
static const speck_tensor_desc olmoe_layer[] = {
    ATTN_NORM,
    QKV(TD_OPTIONAL),
    {SLOT_Q_NORM, "attn_q_norm.weight", "self_attn.q_norm.weight", DIM_Q, DIM_0, TD_NORM},
    {SLOT_K_NORM, "attn_k_norm.weight", "self_attn.k_norm.weight", DIM_KV, DIM_0, TD_NORM},
    ATTN_OUT,
    EXPERTS,
};

// Qwen2-MoE's and Qwen3-MoE's sliding window (use_sliding_window, off in every release) is
// refused as for the dense Qwen models; decoder_sparse_step / mlp_only_layers (dense layers
// between the sparse ones) likewise, since every released checkpoint is sparse throughout.
static int qwen_read(const cJSON *cfg, const char *path, speck_hparams *hp) {
    (void)hp;
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(cfg, "use_sliding_window")))
        return speck_set_error(SPECK_ERR_UNSUPPORTED,
                               "%s: use_sliding_window: true is not supported for Qwen models",
                               path);
    const cJSON *step = cJSON_GetObjectItemCaseSensitive(cfg, "decoder_sparse_step");
    const cJSON *mlp_only = cJSON_GetObjectItemCaseSensitive(cfg, "mlp_only_layers");
    if ((cJSON_IsNumber(step) && step->valuedouble != 1) ||
        (cJSON_IsArray(mlp_only) && cJSON_GetArraySize(mlp_only) > 0))
        return speck_set_error(SPECK_ERR_UNSUPPORTED,
                               "%s: decoder_sparse_step / mlp_only_layers: dense layers between "
                               "the expert layers are not supported",
                               path);
    return 0;
}

static void qwen_write(cJSON *cfg, const speck_hparams *hp) {
    cJSON_AddBoolToObject(cfg, "use_sliding_window", false);
    cJSON_AddNumberToObject(cfg, "decoder_sparse_step", 1);
    cJSON_AddItemToObject(cfg, "mlp_only_layers", cJSON_CreateArray());
    cJSON_AddBoolToObject(cfg, "attention_bias", hp->qkv_bias);
}

static void olmoe_write(cJSON *cfg, const speck_hparams *hp) {
    cJSON_AddBoolToObject(cfg, "attention_bias", hp->qkv_bias);
    cJSON_AddNullToObject(cfg, "clip_qkv");
}

static int olmoe_read(const cJSON *cfg, const char *path, speck_hparams *hp) {
    (void)hp;
    const cJSON *clip = cJSON_GetObjectItemCaseSensitive(cfg, "clip_qkv");
    if (clip && !cJSON_IsNull(clip))
        return speck_set_error(SPECK_ERR_UNSUPPORTED, "%s: clip_qkv is not supported (null)", path);
    return 0;
}

static const speck_moe_desc qwen2moe_moe = {
    .norm_topk = false, .shared = true, .ff_div_used = true};
static const speck_moe_desc qwen3moe_moe = {.norm_topk = true, .ff_div_used = true};
static const speck_moe_desc olmoe_moe = {.norm_topk = false, .ff_is_n_ff = true};

static const char *const qwen2moe_classes[] = {"Qwen2MoeForCausalLM", NULL};
static const char *const qwen3moe_classes[] = {"Qwen3MoeForCausalLM", NULL};
static const char *const olmoe_classes[] = {"OlmoeForCausalLM", NULL};

const speck_arch speck_arch_qwen2moe = {
    .name = "qwen2moe",
    .ffn = SPECK_FFN_MOE,
    .moe = &qwen2moe_moe,
    .rope = SPECK_ROPE_NEOX,
    .act = SPECK_ACT_SILU,
    .qkv_bias = true,
    .layer = qwen2moe_layer,
    .n_layer_tensors = sizeof qwen2moe_layer / sizeof qwen2moe_layer[0],
    .hf = {qwen2moe_classes, "qwen2_moe", qwen_read, qwen_write},
};

const speck_arch speck_arch_qwen3moe = {
    .name = "qwen3moe",
    .ffn = SPECK_FFN_MOE,
    .moe = &qwen3moe_moe,
    .rope = SPECK_ROPE_NEOX,
    .act = SPECK_ACT_SILU,
    .layer = qwen3moe_layer,
    .n_layer_tensors = sizeof qwen3moe_layer / sizeof qwen3moe_layer[0],
    .hf = {qwen3moe_classes, "qwen3_moe", qwen_read, qwen_write},
};

const speck_arch speck_arch_olmoe = {
    .name = "olmoe",
    .ffn = SPECK_FFN_MOE,
    .moe = &olmoe_moe,
    .rope = SPECK_ROPE_NEOX,
    .act = SPECK_ACT_SILU,
    .layer = olmoe_layer,
    .n_layer_tensors = sizeof olmoe_layer / sizeof olmoe_layer[0],
    .hf = {olmoe_classes, "olmoe", olmoe_read, olmoe_write},
};
