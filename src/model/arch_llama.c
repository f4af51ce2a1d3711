// The Llama family, GGUF architecture "llama": Llama 1/2/3.x, TinyLlama, SmolLM / SmolLM2, Yi,
// Mistral 7B. Pre-norm RMSNorm blocks, RoPE on adjacent pairs (llama.cpp's converter interleaves
// the rows of Hugging Face's rotate-half q/k projections, so convert and export permute them),
// SwiGLU, optional q/k/v biases, Llama 3.x frequency scaling (model.c). Mistral v0.1's sliding
// window covers every layer: `llama.attention.sliding_window`, which speck writes and honours
// (llama.cpp's llama architecture reads no window and attends to the whole context). Mixtral
// 8x7B / 8x22B are this family with experts in place of the FFN (llama.expert_count, Hugging
// Face's MixtralForCausalLM).
#include <stddef.h>
#include <string.h>

#include "model/arch.h"

static const speck_tensor_desc layer[] = {
    {SLOT_ATTN_NORM, "attn_norm.weight", "input_layernorm.weight", DIM_E, DIM_0, TD_NORM},
    {SLOT_WQ, "attn_q.weight", "self_attn.q_proj.weight", DIM_Q, DIM_E, TD_PERMUTE},
    {SLOT_WK, "attn_k.weight", "self_attn.k_proj.weight", DIM_KV, DIM_E, TD_PERMUTE},
    {SLOT_WV, "attn_v.weight", "self_attn.v_proj.weight", DIM_KV, DIM_E, 0},
    {SLOT_BQ, "attn_q.bias", "self_attn.q_proj.bias", DIM_Q, DIM_0, TD_OPTIONAL | TD_PERMUTE},
    {SLOT_BK, "attn_k.bias", "self_attn.k_proj.bias", DIM_KV, DIM_0, TD_OPTIONAL | TD_PERMUTE},
    {SLOT_BV, "attn_v.bias", "self_attn.v_proj.bias", DIM_KV, DIM_0, TD_OPTIONAL},
    {SLOT_WO, "attn_output.weight", "self_attn.o_proj.weight", DIM_E, DIM_Q, 0},
    {SLOT_FFN_NORM, "ffn_norm.weight", "post_attention_layernorm.weight", DIM_E, DIM_0, TD_NORM},
    {SLOT_WG, "ffn_gate.weight", "mlp.gate_proj.weight", DIM_F, DIM_E, TD_DENSE},
    {SLOT_WU, "ffn_up.weight", "mlp.up_proj.weight", DIM_F, DIM_E, TD_DENSE},
    {SLOT_WD, "ffn_down.weight", "mlp.down_proj.weight", DIM_E, DIM_F, TD_DENSE},
    // Mixtral: w1 gate, w3 up, w2 down per expert.
    {SLOT_ROUTER, "ffn_gate_inp.weight", "block_sparse_moe.gate.weight", DIM_X, DIM_E, TD_MOE},
    {SLOT_WG_EXPS, "ffn_gate_exps.weight", "block_sparse_moe.experts.%d.w1.weight", DIM_FX, DIM_E,
     TD_MOE | TD_EXPERTS},
    {SLOT_WU_EXPS, "ffn_up_exps.weight", "block_sparse_moe.experts.%d.w3.weight", DIM_FX, DIM_E,
     TD_MOE | TD_EXPERTS},
    {SLOT_WD_EXPS, "ffn_down_exps.weight", "block_sparse_moe.experts.%d.w2.weight", DIM_E, DIM_FX,
     TD_MOE | TD_EXPERTS},
};

// Mixtral: softmax over the top-k router logits, i.e. the chosen probabilities renormalised.
static const speck_moe_desc moe = {.norm_topk = true, .ff_is_n_ff = true};

static const speck_key_desc keys[] = {
    {"attention.sliding_window", offsetof(speck_hparams, n_swa), KEY_INT},
};

static const char *const classes[] = {"LlamaForCausalLM", "MistralForCausalLM",
                                      "MixtralForCausalLM", NULL};

// Mistral's sliding_window (null in Mistral v0.2 and later; Llama configs have none). A window
// of at least the training context never takes effect and is left out.
static int hf_read(const cJSON *cfg, const char *path, speck_hparams *hp) {
    double w;
    int rc = speck_hf_num(cfg, "sliding_window", path, 0, &w);
    if (!rc && w > 0 && w < hp->n_ctx_train) hp->n_swa = (int)w;
    return rc;
}

static void hf_write(cJSON *cfg, const speck_hparams *hp) {
    if (hp->n_expert > 0) { // Mixtral (the common MoE keys are written by export)
        cJSON_ReplaceItemInObject(cfg, "architectures", cJSON_CreateStringArray(classes + 2, 1));
        cJSON_ReplaceItemInObject(cfg, "model_type", cJSON_CreateString("mixtral"));
        if (hp->n_swa > 0)
            cJSON_AddNumberToObject(cfg, "sliding_window", hp->n_swa);
        else
            cJSON_AddNullToObject(cfg, "sliding_window");
    } else if (hp->n_swa > 0) { // transformers' Llama has no window: Mistral's class has
        cJSON_ReplaceItemInObject(cfg, "architectures", cJSON_CreateStringArray(classes + 1, 1));
        cJSON_ReplaceItemInObject(cfg, "model_type", cJSON_CreateString("mistral"));
        cJSON_AddNumberToObject(cfg, "sliding_window", hp->n_swa);
    } else {
        cJSON_AddBoolToObject(cfg, "attention_bias", hp->qkv_bias);
        cJSON_AddBoolToObject(cfg, "mlp_bias", false);
    }
}

const speck_arch speck_arch_llama = {
    .name = "llama",
    .ffn = SPECK_FFN_DENSE_OR_MOE,
    .moe = &moe,
    .rope = SPECK_ROPE_NORMAL,
    .act = SPECK_ACT_SILU,
    .layer = layer,
    .n_layer_tensors = sizeof layer / sizeof layer[0],
    .keys = keys,
    .n_keys = sizeof keys / sizeof keys[0],
    .hf = {classes, "llama", hf_read, hf_write},
};
