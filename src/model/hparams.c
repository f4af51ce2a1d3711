// The one writer of the hyper-parameter keys the loader (model.c) reads: every GGUF model speck
// writes (init, convert, train export and checkpoints) goes through it, so a key the loader
// learns cannot be forgotten by one of the writers. The architecture's own keys come from its
// description's list (arch.h), the one the loader reads.
#include <stdio.h>
#include <string.h>

#include "model/model_internal.h"

int speck_hparams_write(speck_gguf_writer *w, const speck_hparams *hp) {
    const speck_arch *a = speck_arch_find(hp->arch);
    if (!a)
        return speck_set_error(SPECK_ERR_ARG, "hyper-parameters: architecture '%s' is unknown (%s)",
                               hp->arch, speck_arch_names());
    char key[160];
    int err = 0;
#define K(s) (snprintf(key, sizeof key, "%s." s, hp->arch), key)
    err |= speck_gguf_set_str(w, "general.architecture", hp->arch);
    if (hp->name[0]) err |= speck_gguf_set_str(w, "general.name", hp->name);
    err |= speck_gguf_set_u32(w, K("context_length"), (uint32_t)hp->n_ctx_train);
    err |= speck_gguf_set_u32(w, K("embedding_length"), (uint32_t)hp->n_embd);
    err |= speck_gguf_set_u32(w, K("block_count"), (uint32_t)hp->n_layer);
    err |= speck_gguf_set_u32(w, K("feed_forward_length"), (uint32_t)hp->n_ff);
    err |= speck_gguf_set_u32(w, K("attention.head_count"), (uint32_t)hp->n_head);
    err |= speck_gguf_set_u32(w, K("attention.head_count_kv"), (uint32_t)hp->n_head_kv);
    err |= speck_gguf_set_u32(w, K("rope.dimension_count"), (uint32_t)hp->head_dim);
    // llama.cpp derives the head size from n_embd / n_head unless these say otherwise.
    if (hp->head_dim * hp->n_head != hp->n_embd) {
        err |= speck_gguf_set_u32(w, K("attention.key_length"), (uint32_t)hp->head_dim);
        err |= speck_gguf_set_u32(w, K("attention.value_length"), (uint32_t)hp->head_dim);
    }
    err |= speck_gguf_set_f32(w, K("rope.freq_base"), hp->rope_freq_base);
    err |= speck_gguf_set_f32(w, K("attention.layer_norm_rms_epsilon"), hp->norm_eps);
    if (hp->n_vocab > 0) err |= speck_gguf_set_u32(w, K("vocab_size"), (uint32_t)hp->n_vocab);
    switch (hp->rope_scaling) {
    case SPECK_ROPE_SCALING_NONE:
        break;
    case SPECK_ROPE_SCALING_LINEAR:
        err |= speck_gguf_set_str(w, K("rope.scaling.type"), "linear");
        err |= speck_gguf_set_f32(w, K("rope.scaling.factor"), hp->rope_scale_factor);
        break;
    case SPECK_ROPE_SCALING_LLAMA3:
        // llama.cpp itself stores this scaling as the rope_freqs.weight tensor (the writer adds
        // it from speck_model_rope_factors); these keys keep a file that came with them intact.
        err |= speck_gguf_set_str(w, K("rope.scaling.type"), "llama3");
        err |= speck_gguf_set_f32(w, K("rope.scaling.factor"), hp->rope_scale_factor);
        err |= speck_gguf_set_f32(w, K("rope.scaling.low_freq_factor"), hp->rope_low_freq_factor);
        err |= speck_gguf_set_f32(w, K("rope.scaling.high_freq_factor"), hp->rope_high_freq_factor);
        err |= speck_gguf_set_u32(w, K("rope.scaling.original_context_length"),
                                  (uint32_t)hp->rope_orig_ctx);
        break;
    case SPECK_ROPE_SCALING_LONGROPE:
        // As llama.cpp's converter: no type key (the rope_factors_short / _long tensors, which
        // the writer adds, say it), the original context.
        err |= speck_gguf_set_u32(w, K("rope.scaling.original_context_length"),
                                  (uint32_t)hp->rope_orig_ctx);
        break;
    }
    if (hp->rope_attn_factor != 1.0f && hp->rope_attn_factor > 0)
        err |= speck_gguf_set_f32(w, K("rope.scaling.attn_factor"), hp->rope_attn_factor);
    if (hp->n_expert > 0) { // the mixture of experts (model.c: load_moe_keys)
        err |= speck_gguf_set_u32(w, K("expert_count"), (uint32_t)hp->n_expert);
        err |= speck_gguf_set_u32(w, K("expert_used_count"), (uint32_t)hp->n_expert_used);
        if (!(a->moe && a->moe->ff_is_n_ff)) // else feed_forward_length is the experts' width
            err |= speck_gguf_set_u32(w, K("expert_feed_forward_length"), (uint32_t)hp->n_ff_exp);
        if (hp->n_ff_shexp > 0)
            err |= speck_gguf_set_u32(w, K("expert_shared_feed_forward_length"),
                                      (uint32_t)hp->n_ff_shexp);
        // Only when it differs from the family's rule (llama.cpp hard-codes the rule per family).
        if (a->moe && hp->moe_norm != a->moe->norm_topk)
            err |= speck_gguf_set_bool(w, K("expert_weights_norm"), hp->moe_norm);
    }
    // The architecture's own keys, as its description lists them (model.c reads the same list).
    for (int k = 0; k < a->n_keys; k++) {
        const speck_key_desc *d = &a->keys[k];
        const void *field = (const char *)hp + d->offset;
        snprintf(key, sizeof key, "%s.%s", hp->arch, d->gguf);
        if (d->type == KEY_INT)
            err |= speck_gguf_set_u32(w, key, (uint32_t) * (const int *)field);
        else
            err |= speck_gguf_set_f32(w, key, *(const float *)field);
    }
#undef K
    return err ? speck_set_error(SPECK_ERR_NOMEM, "hyper-parameters: out of memory") : 0;
}
