// AdamW with warmup + cosine schedule and global-norm clipping; checkpoints (params + moments)
// and export of a trained model as a normal llama GGUF.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/gguf_internal.h"
#include "kernels/kernels.h"
#include "model/model_internal.h"
#include "train/train_internal.h"

speck_adamw_params speck_adamw_default(void) {
    speck_adamw_params p = {1e-3f, 1e-4f, 0, 0, 0.9f, 0.95f, 1e-8f, 0.1f, false, 1.0f};
    return p;
}

float speck_lr_at(const speck_adamw_params *p, int64_t step) {
    if (p->warmup_steps > 0 && step < p->warmup_steps)
        return p->lr * (float)(step + 1) / (float)p->warmup_steps;
    if (p->total_steps <= p->warmup_steps) return p->lr;
    if (step >= p->total_steps) return p->min_lr;
    double frac = (double)(step - p->warmup_steps) / (double)(p->total_steps - p->warmup_steps);
    return (float)(p->min_lr + 0.5 * (p->lr - p->min_lr) * (1.0 + cos(M_PI * frac)));
}

// Σ g² in double, per-thread partial sums combined in thread order (deterministic for a
// fixed thread count).
double speck_adamw_grad_norm(const float *g, int64_t n) {
    double total = 0;
#pragma omp parallel for schedule(static) reduction(+ : total)
    for (int64_t i = 0; i < n; i++) total += (double)g[i] * g[i];
    return sqrt(total);
}

double speck_train_grad_norm(speck_train_model *tm) {
    return speck_adamw_grad_norm(tm->grads, tm->n_params);
}

int speck_adamw_begin(const speck_adamw_params *p, int64_t step, double norm, float *clip) {
    if (step < 0) return speck_set_error(SPECK_ERR_ARG, "adamw: negative step");
    if (!isfinite(norm))
        return speck_set_error(SPECK_ERR_RANGE, "adamw: gradient norm is not finite (diverged; "
                                                "lower the learning rate)");
    // torch.nn.utils.clip_grad_norm_: scale by max_norm / (norm + 1e-6) when that is < 1.
    *clip = 1.0f;
    if (p->grad_clip > 0) {
        double c = p->grad_clip / (norm + 1e-6);
        if (c < 1.0) *clip = (float)c;
    }
    return 0;
}

void speck_adamw_update(const speck_adamw_params *p, int64_t step, float clip, bool decay,
                        float *w, const float *g, float *m, float *v, int64_t n) {
    float lr = speck_lr_at(p, step);
    double bc1 = 1.0 - pow(p->beta1, (double)(step + 1));
    double bc2 = 1.0 - pow(p->beta2, (double)(step + 1));
    float step_size = (float)(lr / bc1), bc2_sqrt = (float)sqrt(bc2);
    float b1 = p->beta1, b2 = p->beta2;
    float wd = decay ? 1.0f - lr * p->weight_decay : 1.0f;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) {
        float gi = g[i] * clip;
        w[i] *= wd;
        m[i] = b1 * m[i] + (1.0f - b1) * gi;
        v[i] = b2 * v[i] + (1.0f - b2) * gi * gi;
        w[i] -= step_size * m[i] / (sqrtf(v[i]) / bc2_sqrt + p->eps);
    }
}

int speck_adamw_step(speck_train_model *tm, const speck_adamw_params *p, int64_t step,
                     float *grad_norm) {
    train_nm_refine(tm); // SR-STE: + λ_W (1 - E) ⊙ W on the masked matrices
    double norm = speck_train_grad_norm(tm);
    if (grad_norm) *grad_norm = (float)norm;
    float clip = 1.0f;
    int err = speck_adamw_begin(p, step, norm, &clip);
    if (err) return err;
    for (int ti = 0; ti < tm->n_tensors; ti++) {
        const speck_ttensor *t = &tm->tensors[ti];
        bool decay = p->decay_all || (t->is_matrix && !t->is_embd);
        speck_adamw_update(p, step, clip, decay, tm->params + t->offset, tm->grads + t->offset,
                           tm->adam_m + t->offset, tm->adam_v + t->offset,
                           t->ne0 * t->ne1 * t->ne2);
    }
    train_nm_after_step(tm, step);
    return 0;
}

/* ---- GGUF output ---------------------------------------------------------------------------- */

// Copy every tokenizer.* key of vocab_path; its token count must be n_vocab.
static int copy_vocab(speck_gguf_writer *w, const char *vocab_path, int n_vocab) {
    speck_gguf *g = speck_gguf_open(vocab_path);
    if (!g) return speck_last_error()[0] ? SPECK_ERR_IO : SPECK_ERR_IO;
    int err = 0;
    int64_t ti = speck_gguf_find_key(g, "tokenizer.ggml.tokens");
    if (ti < 0)
        err = speck_set_error(SPECK_ERR_FORMAT, "%s: no tokenizer.ggml.tokens (not a vocabulary)",
                              vocab_path);
    else if (speck_gguf_arr_n(g, ti) != n_vocab)
        err = speck_set_error(SPECK_ERR_ARG,
                              "%s: vocabulary has %lld tokens but the model has n_vocab = %d",
                              vocab_path, (long long)speck_gguf_arr_n(g, ti), n_vocab);
    for (int64_t i = 0; !err && i < speck_gguf_n_kv(g); i++)
        if (!strncmp(speck_gguf_key(g, i), "tokenizer.", 10)) err = speck_gguf_copy_kv(w, g, i);
    speck_gguf_close(g);
    return err;
}

// Model keys + weights (matrices as `type`, norms f32). bufs receives converted copies that must
// live until the writer is saved. masked: N:M training's masked matrices as the passes read
// them (exports), else the dense weights (checkpoints); S24_Q8 applies to those only, the other
// matrices are then f16.
static int write_model(speck_gguf_writer *w, speck_train_model *tm, speck_type type,
                       const char *name, void **bufs, bool masked) {
    const speck_nm_params nm = speck_train_nm(tm);
    masked = masked && nm.m > 0;
    if (type == SPECK_TYPE_S24_Q8 && !(masked && nm.n == 2 && nm.m == 4))
        return speck_set_error(SPECK_ERR_ARG,
                               "export: type s24_q8 needs 2:4 sparse training (the model's "
                               "matrices are %s)",
                               nm.m ? "N:M with another pattern" : "dense");
    speck_hparams hp = tm->hp;
    snprintf(hp.name, sizeof hp.name, "%s", name ? name : "speck-trained");
    int err = speck_hparams_write(w, &hp);
    if (err) return err;
    const int ft = speck_gguf_file_type(type == SPECK_TYPE_S24_Q8 ? SPECK_TYPE_F16 : type);
    if (speck_gguf_set_u32(w, "general.file_type", (uint32_t)ft))
        return speck_set_error(SPECK_ERR_NOMEM, "export: out of memory");
    if (masked) { // the keys `speck prune` writes
        char spars[32];
        snprintf(spars, sizeof spars, "%d:%d", nm.n, nm.m);
        if (speck_gguf_set_str(w, "speck.prune.method", "sr-ste") ||
            speck_gguf_set_str(w, "speck.prune.sparsity", spars))
            return speck_set_error(SPECK_ERR_NOMEM, "export: out of memory");
    }
    if (tm->rope_factors) {
        int64_t ne[1] = {tm->head_dim / 2};
        if ((err = speck_gguf_add_tensor(w, "rope_freqs.weight", SPECK_TYPE_F32, 1, ne,
                                         tm->rope_factors)))
            return err;
    }
    for (int i = 0; i < tm->n_tensors; i++) {
        const speck_ttensor *t = &tm->tensors[i];
        const bool is_masked = masked && speck_train_nm_mask(tm, i);
        const float *src = is_masked ? train_nm_values(tm, i) : tm->params + t->offset;
        int64_t ne[3] = {t->ne0, t->ne1, t->ne2}, rows = t->ne1 * t->ne2;
        speck_type tt = t->is_matrix ? type : SPECK_TYPE_F32;
        if (tt == SPECK_TYPE_S24_Q8 && !is_masked) tt = SPECK_TYPE_F16;
        if (tt != SPECK_TYPE_F32 && t->ne0 % speck_type_block_size(tt))
            return speck_set_error(SPECK_ERR_ARG,
                                   "export: %s row length %lld is not a multiple "
                                   "of the %s block size",
                                   t->name, (long long)t->ne0, speck_type_name(tt));
        const void *data = src;
        if (tt != SPECK_TYPE_F32) {
            size_t rs = speck_type_row_size(tt, t->ne0);
            uint8_t *q = malloc(rs * (size_t)rows);
            if (!q) return speck_set_error(SPECK_ERR_NOMEM, "export: out of memory");
            bufs[i] = q;
#pragma omp parallel for schedule(static)
            for (int64_t r = 0; r < rows; r++)
                speck_quantize_row(tt, src + (size_t)r * t->ne0, q + rs * (size_t)r, t->ne0);
            data = q;
        }
        if ((err = speck_gguf_add_tensor(w, t->name, tt, t->n_dims, ne, data)))
            return err;
    }
    return 0;
}

int speck_train_export(speck_train_model *tm, const char *vocab_path, speck_type type,
                       const char *name, const char *path) {
    if (!speck_type_name(type))
        return speck_set_error(SPECK_ERR_ARG, "export: unsupported type %d", (int)type);
    speck_gguf_writer *w = speck_gguf_writer_new();
    void **bufs = calloc((size_t)tm->n_tensors, sizeof *bufs);
    if (!w || !bufs) {
        speck_gguf_writer_free(w);
        free(bufs);
        return speck_set_error(SPECK_ERR_NOMEM, "export: out of memory");
    }
    if (!vocab_path) vocab_path = tm->src_path;
    int err = write_model(w, tm, type, name, bufs, true);
    if (!err && vocab_path) err = copy_vocab(w, vocab_path, tm->cfg.n_vocab);
    if (!err) err = speck_gguf_writer_save(w, path);
    speck_gguf_writer_free(w);
    for (int i = 0; i < tm->n_tensors; i++) free(bufs[i]);
    free(bufs);
    return err;
}

/* ---- checkpoints ---------------------------------------------------------------------------- */

int speck_train_checkpoint_save(speck_train_model *tm, const speck_train_state *st,
                                const char *vocab_path, const char *path) {
    speck_gguf_writer *w = speck_gguf_writer_new();
    void **bufs = calloc((size_t)tm->n_tensors, sizeof *bufs);
    char(*names)[64] = calloc((size_t)tm->n_tensors * 2, sizeof *names);
    int err = 0;
    if (!w || !bufs || !names) err = speck_set_error(SPECK_ERR_NOMEM, "checkpoint: out of memory");
    if (!vocab_path) vocab_path = tm->src_path;
    if (!err) err = write_model(w, tm, SPECK_TYPE_F32, "speck training checkpoint", bufs, false);
    if (!err && vocab_path) err = copy_vocab(w, vocab_path, tm->cfg.n_vocab);
    if (!err) {
        err |= speck_gguf_set_u64(w, "train.step", (uint64_t)st->step);
        err |= speck_gguf_set_u64(w, "train.seed", st->seed);
        if (err) err = speck_set_error(SPECK_ERR_NOMEM, "checkpoint: out of memory");
    }
    for (int i = 0; !err && i < tm->n_tensors; i++) {
        const speck_ttensor *t = &tm->tensors[i];
        int64_t ne[2] = {t->ne0, t->ne1 * t->ne2}; // the experts' moments as one matrix
        snprintf(names[2 * i], 64, "adam_m.%s", t->name);
        snprintf(names[2 * i + 1], 64, "adam_v.%s", t->name);
        err = speck_gguf_add_tensor(w, names[2 * i], SPECK_TYPE_F32, 2, ne, tm->adam_m + t->offset);
        if (!err)
            err = speck_gguf_add_tensor(w, names[2 * i + 1], SPECK_TYPE_F32, 2, ne,
                                        tm->adam_v + t->offset);
    }
    if (!err) err = speck_gguf_writer_save(w, path);
    speck_gguf_writer_free(w);
    for (int i = 0; bufs && i < tm->n_tensors; i++) free(bufs[i]);
    free(bufs);
    free(names);
    return err;
}

int speck_train_checkpoint_load(speck_train_model *tm, const char *path, speck_train_state *st) {
    speck_train_model *ck = speck_train_model_load(path);
    if (!ck) return speck_last_error()[0] ? SPECK_ERR_FORMAT : SPECK_ERR_IO;
    const speck_train_config *a = &tm->cfg, *b = &ck->cfg;
    int err = 0;
#define SAME(f)                                                                                    \
    if (!err && a->f != b->f)                                                                      \
        err = speck_set_error(SPECK_ERR_ARG,                                                       \
                              "%s: checkpoint from another config: " #f " is %g, the run has %g",  \
                              path, (double)b->f, (double)a->f);
    SAME(n_vocab)
    SAME(n_embd)
    SAME(n_layer) SAME(n_head) SAME(n_head_kv) SAME(n_ff) SAME(tied_output) SAME(norm_eps)
        SAME(rope_freq_base) SAME(n_expert) SAME(n_expert_used) SAME(moe_norm)
            SAME(head_dim) SAME(qkv_bias) SAME(n_ff_shexp)
#undef SAME
    if (!err && (strcmp(tm->hp.arch, ck->hp.arch) || tm->hp.rope_scaling != ck->hp.rope_scaling ||
                 memcmp(tm->rope_freq, ck->rope_freq, (size_t)(tm->head_dim / 2) * sizeof(float))))
        err = speck_set_error(SPECK_ERR_ARG,
                              "%s: checkpoint of another model: architecture %s and its RoPE "
                              "frequencies differ from the run's (%s; start it with the same "
                              "--init-from)",
                              path, ck->hp.arch, tm->hp.arch);
    speck_gguf *g = err ? NULL : speck_gguf_open(path);
    if (!err && !g) err = SPECK_ERR_IO;
    int64_t ks = g ? speck_gguf_find_key(g, "train.step") : -1;
    if (!err && ks < 0)
        err = speck_set_error(SPECK_ERR_FORMAT, "%s: not a training checkpoint (no train.step)",
                              path);
    for (int i = 0; !err && i < tm->n_tensors; i++) {
        const speck_ttensor *t = &tm->tensors[i];
        for (int k = 0; k < 2 && !err; k++) {
            char n[64];
            snprintf(n, sizeof n, "%s.%s", k ? "adam_v" : "adam_m", t->name);
            const speck_gguf_tensor *gt = speck_gguf_find_tensor(g, n);
            if (!gt || gt->type != SPECK_TYPE_F32 || gt->n_elements != t->ne0 * t->ne1 * t->ne2)
                err = speck_set_error(SPECK_ERR_FORMAT, "%s: missing or malformed tensor '%s'",
                                      path, n);
            else
                memcpy((k ? tm->adam_v : tm->adam_m) + t->offset, gt->data,
                       (size_t)gt->n_elements * sizeof(float));
        }
    }
    if (!err) {
        memcpy(tm->params, ck->params, (size_t)tm->n_params * sizeof(float));
        if (tm->nm.m) tm->nm.stale = true; // masks from the restored dense weights
        st->step = speck_gguf_get_int(g, ks);
        int64_t ki = speck_gguf_find_key(g, "train.seed");
        st->seed = ki >= 0 ? (uint64_t)speck_gguf_get_int(g, ki) : 0;
    }
    speck_gguf_close(g);
    speck_train_model_free(ck);
    return err;
}
