// The Qwen family: GGUF "qwen2" (Qwen2, Qwen2.5: q/k/v biases) and "qwen3" (Qwen3 dense: no
// biases, RMSNorm over each q and k head before RoPE). Both rotate halves (NEOX RoPE) in GGUF as
// in Hugging Face, so convert copies q/k as they are; SwiGLU; pre-norm blocks. Their configs'
// optional sliding window (use_sliding_window, off in every released checkpoint) is refused.
#include <string.h>

#include "model/arch.h"

#define ATTN_NORM                                                                                  \
    { SLOT_ATTN_NORM, "attn_norm.weight", "input_layernorm.weight", DIM_E, DIM_0, TD_NORM }
#define QKV                                                                                        \
    {SLOT_WQ, "attn_q.weight", "self_attn.q_proj.weight", DIM_Q, DIM_E, 0},                        \
        {SLOT_WK, "attn_k.weight", "self_attn.k_proj.weight", DIM_KV, DIM_E, 0},                   \
        {SLOT_WV, "attn_v.weight", "self_attn.v_proj.weight", DIM_KV, DIM_E, 0},                   \
        {SLOT_BQ, "attn_q.bias", "self_attn.q_proj.bias", DIM_Q, DIM_0, TD_OPTIONAL},              \
        {SLOT_BK, "attn_k.bias", "self_attn.k_proj.bias", DIM_KV, DIM_0, TD_OPTIONAL}, {           \
        SLOT_BV, "attn_v.bias", "self_attn.v_proj.bias", DIM_KV, DIM_0, TD_OPTIONAL                \
    }
#define ATTN_OUT_FFN                                                                               \
    {SLOT_WO, "attn_output.weight", "self_attn.o_proj.weight", DIM_E, DIM_Q, 0},                   \
        {SLOT_FFN_NORM, "ffn_norm.weight", "post_attention_layernorm.weight", DIM_E, DIM_0,        \
         TD_NORM},                                                                                 \
        {SLOT_WG, "ffn_gate.weight", "mlp.gate_proj.weight", DIM_F, DIM_E, 0},                     \
        {SLOT_WU, "ffn_up.weight", "mlp.up_proj.weight", DIM_F, DIM_E, 0}, {                       \
        SLOT_WD, "ffn_down.weight", "mlp.down_proj.weight", DIM_E, DIM_F, 0                        \
    }

static const speck_tensor_desc qwen2_layer[] = {ATTN_NORM, QKV, ATTN_OUT_FFN};

static const speck_tensor_desc qwen3_layer[] = {
    ATTN_NORM,
    QKV,
    {SLOT_Q_NORM, "attn_q_norm.weight", "self_attn.q_norm.weight", DIM_HD, DIM_0, TD_NORM},
    {SLOT_K_NORM, "attn_k_norm.weight", "self_attn.k_norm.weight", DIM_HD, DIM_0, TD_NORM},
    ATTN_OUT_FFN,
};

static int hf_read(const cJSON *cfg, const char *path, speck_hparams *hp) {
    (void)hp;
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(cfg, "use_sliding_window")))
        return speck_set_error(SPECK_ERR_UNSUPPORTED,
                               "%s: use_sliding_window: true is not supported for Qwen models",
                               path);
    return 0;
}

static void hf_write(cJSON *cfg, const speck_hparams *hp) {
    cJSON_AddBoolToObject(cfg, "attention_bias", hp->qkv_bias); // Qwen3's; Qwen2 always has them
    cJSON_AddBoolToObject(cfg, "use_sliding_window", false);
}

static const char *const qwen2_classes[] = {"Qwen2ForCausalLM", NULL};
static const char *const qwen3_classes[] = {"Qwen3ForCausalLM", NULL};

const speck_arch speck_arch_qwen2 = {
    .name = "qwen2",
    .ffn = SPECK_FFN_DENSE,
    .rope = SPECK_ROPE_NEOX,
    .act = SPECK_ACT_SILU,
    .qkv_bias = true,
    .layer = qwen2_layer,
    .n_layer_tensors = sizeof qwen2_layer / sizeof qwen2_layer[0],
    .hf = {qwen2_classes, "qwen2", hf_read, hf_write},
};

const speck_arch speck_arch_qwen3 = {
    .name = "qwen3",
    .ffn = SPECK_FFN_DENSE,
    .rope = SPECK_ROPE_NEOX,
    .act = SPECK_ACT_SILU,
    .layer = qwen3_layer,
    .n_layer_tensors = sizeof qwen3_layer / sizeof qwen3_layer[0],
    .hf = {qwen3_classes, "qwen3", hf_read, hf_write},
};
