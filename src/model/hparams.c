// The one writer of the hyper-parameter keys the loader (model.c) reads: every GGUF model speck
// writes (init, convert, train export and checkpoints) goes through it, so a key the loader
// learns cannot be forgotten by one of the writers.
#include <stdio.h>
#include <string.h>

#include "model/model_internal.h"

int speck_hparams_write(speck_gguf_writer *w, const speck_hparams *hp) {
    if (!hp->arch[0])
        return speck_set_error(SPECK_ERR_ARG, "hyper-parameters: no architecture name");
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
    }
#undef K
    return err ? speck_set_error(SPECK_ERR_NOMEM, "hyper-parameters: out of memory") : 0;
}
