// Phi-3 / Phi-3.5 (GGUF "phi3"): the Llama block with q, k and v in one fused attn_qkv matrix and
// gate and up in one ffn_up of 2 n_ff rows (gate first), split at load into row ranges; NEOX RoPE;
// SwiGLU; LongRoPE for the 128k models (per-frequency rope_factors_short / _long tensors and
// rope.scaling.attn_factor, read for every architecture in model.c). Phi-3-mini-4k's window
// (phi3.attention.sliding_window = 2047, every layer) is honoured as Hugging Face does (llama.cpp
// turns Phi's window off); the 128k models say 262144, more than their context: no window.
#include <stddef.h>
#include <string.h>

#include "model/arch.h"

static const speck_tensor_desc layer[] = {
    {SLOT_ATTN_NORM, "attn_norm.weight", "input_layernorm.weight", DIM_E, DIM_0, TD_NORM},
    {SLOT_WQKV, "attn_qkv.weight", "self_attn.qkv_proj.weight", DIM_QKV, DIM_E, 0},
    {SLOT_WO, "attn_output.weight", "self_attn.o_proj.weight", DIM_E, DIM_Q, 0},
    {SLOT_FFN_NORM, "ffn_norm.weight", "post_attention_layernorm.weight", DIM_E, DIM_0, TD_NORM},
    {SLOT_WGU, "ffn_up.weight", "mlp.gate_up_proj.weight", DIM_2F, DIM_E, 0},
    {SLOT_WD, "ffn_down.weight", "mlp.down_proj.weight", DIM_E, DIM_F, 0},
};

static const speck_key_desc keys[] = {
    {"attention.sliding_window", offsetof(speck_hparams, n_swa), KEY_INT},
};

static int hf_read(const cJSON *cfg, const char *path, speck_hparams *hp) {
    double w, rot;
    int rc = speck_hf_num(cfg, "sliding_window", path, 0, &w);
    if (!rc) rc = speck_hf_num(cfg, "partial_rotary_factor", path, 1.0, &rot);
    if (!rc && rot != 1.0)
        rc = speck_set_error(SPECK_ERR_UNSUPPORTED,
                             "%s: partial_rotary_factor: %g is not supported (1: RoPE on the "
                             "whole head)",
                             path, rot);
    if (!rc) hp->n_swa = w > 0 && w < hp->n_ctx_train ? (int)w : 0;
    return rc;
}

static void hf_write(cJSON *cfg, const speck_hparams *hp) {
    if (hp->n_swa > 0)
        cJSON_AddNumberToObject(cfg, "sliding_window", hp->n_swa);
    else
        cJSON_AddNullToObject(cfg, "sliding_window");
}

static const char *const classes[] = {"Phi3ForCausalLM", NULL};

const speck_arch speck_arch_phi3 = {
    .name = "phi3",
    .ffn = SPECK_FFN_DENSE,
    .rope = SPECK_ROPE_NEOX,
    .act = SPECK_ACT_SILU,
    .swa_ge_ctx_is_none = true,
    .layer = layer,
    .n_layer_tensors = sizeof layer / sizeof layer[0],
    .keys = keys,
    .n_keys = sizeof keys / sizeof keys[0],
    .hf = {classes, "phi3", hf_read, hf_write},
};
