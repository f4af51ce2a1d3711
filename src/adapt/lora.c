// LoRA adapters in memory and in llama.cpp's adapter GGUF: creation, targets, loading, saving,
// and the check that an adapter fits a base model.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapt/adapt_internal.h"
#include "kernels/kernels.h"

static const char *const TARGET_GGUF[SPECK_LORA_N_TARGETS] = {
    "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"};
static const char *const TARGET_SHORT[SPECK_LORA_N_TARGETS] = {"q",    "k",  "v",   "o",
                                                               "gate", "up", "down"};

const char *speck_lora_target_gguf(int t) {
    return t >= 0 && t < SPECK_LORA_N_TARGETS ? TARGET_GGUF[t] : NULL;
}
const char *speck_lora_target_short(int t) {
    return t >= 0 && t < SPECK_LORA_N_TARGETS ? TARGET_SHORT[t] : NULL;
}

const speck_weight *speck_lora_base_weight(const speck_model *m, int l, int t) {
    const speck_layer *ly = &m->layers[l];
    const speck_weight *w[SPECK_LORA_N_TARGETS] = {&ly->wq, &ly->wk, &ly->wv, &ly->wo,
                                                   &ly->wg, &ly->wu, &ly->wd};
    return w[t];
}

int speck_lora_parse_targets(const char *list, unsigned *mask) {
    *mask = 0;
    if (!list || !*list) return speck_set_error(SPECK_ERR_ARG, "LoRA targets: empty list");
    const char *p = list;
    while (*p) {
        const char *e = strchr(p, ',');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        int found = -1;
        for (int t = 0; t < SPECK_LORA_N_TARGETS; t++)
            if ((strlen(TARGET_SHORT[t]) == n && !strncmp(p, TARGET_SHORT[t], n)) ||
                (strlen(TARGET_GGUF[t]) == n && !strncmp(p, TARGET_GGUF[t], n)))
                found = t;
        if (found < 0)
            return speck_set_error(SPECK_ERR_ARG,
                                   "LoRA targets: unknown target '%.*s' (one of q, k, v, o, gate, "
                                   "up, down)",
                                   (int)n, p);
        *mask |= 1u << found;
        p += n;
        if (*p == ',') p++;
    }
    return 0;
}

speck_lora *speck_lora_alloc(const char *arch, int n_layer, const int *ranks,
                             const int64_t *n_in, const int64_t *n_out, float alpha) {
    speck_lora *a = calloc(1, sizeof *a);
    int nm = n_layer * SPECK_LORA_N_TARGETS;
    if (!a || !(a->m = calloc((size_t)(nm ? nm : 1), sizeof *a->m))) goto oom;
    snprintf(a->arch, sizeof a->arch, "%s", arch);
    a->n_layer = n_layer, a->alpha = alpha;
    int64_t n = 0;
    for (int i = 0; i < nm; i++) n += (int64_t)ranks[i] * (n_in[i] + n_out[i]);
    if (!(a->data = calloc((size_t)(n ? n : 1), sizeof(float)))) goto oom;
    a->n_params = n;
    int64_t off = 0;
    for (int i = 0; i < nm; i++) {
        speck_lora_mat *mt = &a->m[i];
        mt->rank = ranks[i], mt->n_in = n_in[i], mt->n_out = n_out[i];
        if (!mt->rank) continue;
        mt->a = a->data + off;
        off += (int64_t)mt->rank * mt->n_in;
        mt->b = a->data + off;
        off += (int64_t)mt->rank * mt->n_out;
    }
    return a;
oom:
    speck_lora_free(a);
    speck_set_error(SPECK_ERR_NOMEM, "LoRA: out of memory");
    return NULL;
}

void speck_lora_free(speck_lora *a) {
    if (!a) return;
    free(a->m);
    free(a->data);
    free(a);
}

int64_t speck_lora_n_params(const speck_lora *a) {
    return a->n_params;
}
float speck_lora_alpha(const speck_lora *a) {
    return a->alpha;
}
float *speck_lora_params(speck_lora *a) {
    return a->data;
}

float *speck_lora_matrix(speck_lora *a, int layer, int target, bool b, int *rank,
                         int64_t *numel) {
    if (rank) *rank = 0;
    if (numel) *numel = 0;
    if (layer < 0 || layer >= a->n_layer || target < 0 || target >= SPECK_LORA_N_TARGETS)
        return NULL;
    speck_lora_mat *mt = &a->m[layer * SPECK_LORA_N_TARGETS + target];
    if (rank) *rank = mt->rank;
    if (numel) *numel = (int64_t)mt->rank * (b ? mt->n_out : mt->n_in);
    return mt->rank ? (b ? mt->b : mt->a) : NULL;
}

int speck_lora_n_layer(const speck_lora *a) {
    return a->n_layer;
}

static uint64_t splitmix(uint64_t *s) {
    uint64_t x = (*s += 0x9e3779b97f4a7c15ULL);
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

speck_lora *speck_lora_new(const speck_model *m, int rank, float alpha, unsigned targets,
                           uint64_t seed) {
    const speck_hparams *hp = speck_model_hparams(m);
    if (rank < 1 || rank > 4096)
        return speck_set_error(SPECK_ERR_ARG, "LoRA: rank %d must be in [1, 4096]", rank), NULL;
    if (!targets || targets >> SPECK_LORA_N_TARGETS)
        return speck_set_error(SPECK_ERR_ARG, "LoRA: no valid target"), NULL;
    if (!(alpha > 0) || !isfinite(alpha))
        return speck_set_error(SPECK_ERR_ARG, "LoRA: alpha %g must be > 0", alpha), NULL;
    int nm = hp->n_layer * SPECK_LORA_N_TARGETS;
    int *ranks = calloc((size_t)nm, sizeof *ranks);
    int64_t *ni = calloc((size_t)nm, sizeof *ni), *no = calloc((size_t)nm, sizeof *no);
    speck_lora *a = NULL;
    bool any = false;
    if (!ranks || !ni || !no) {
        speck_set_error(SPECK_ERR_NOMEM, "LoRA: out of memory");
        goto done;
    }
    for (int l = 0; l < hp->n_layer; l++)
        for (int t = 0; t < SPECK_LORA_N_TARGETS; t++) {
            const speck_weight *w = speck_lora_base_weight(m, l, t);
            int i = l * SPECK_LORA_N_TARGETS + t;
            ni[i] = w->n_in, no[i] = w->n_out;
            // A model with experts has no dense FFN matrices: its gate/up/down targets are none.
            ranks[i] = (targets >> t) & 1 && w->n_out > 0 ? rank : 0;
            any |= ranks[i] > 0;
        }
    if (!any) {
        speck_set_error(SPECK_ERR_ARG, "LoRA: the model has none of the targeted matrices (a "
                                       "model with experts: target q, k, v, o)");
        goto done;
    }
    if (!(a = speck_lora_alloc(hp->arch, hp->n_layer, ranks, ni, no, alpha))) goto done;
    // A as PEFT initialises it (kaiming_uniform_(a=sqrt(5)): U(-1/sqrt(n_in), 1/sqrt(n_in))),
    // B zero: the adapted model starts as the base.
    for (int i = 0; i < nm; i++) {
        speck_lora_mat *mt = &a->m[i];
        if (!mt->rank) continue;
        uint64_t s = seed * 0x100000001b3ULL + (uint64_t)i * 0x9E3779B97F4A7C15ULL;
        float bound = 1.0f / sqrtf((float)mt->n_in);
        for (int64_t j = 0; j < (int64_t)mt->rank * mt->n_in; j++)
            mt->a[j] = (float)(((double)(splitmix(&s) >> 11) * 0x1.0p-53 * 2.0 - 1.0) * bound);
    }
done:
    free(ranks);
    free(ni);
    free(no);
    return a;
}

int speck_lora_check(const speck_lora *a, const speck_model *m) {
    const speck_hparams *hp = speck_model_hparams(m);
    if (strcmp(a->arch, hp->arch))
        return speck_set_error(SPECK_ERR_ARG,
                               "adapter for architecture %s, but the base model is %s", a->arch,
                               hp->arch);
    if (a->n_layer > hp->n_layer)
        return speck_set_error(SPECK_ERR_ARG,
                               "adapter has layer %d, but the base model has %d layers (another "
                               "base model?)",
                               a->n_layer - 1, hp->n_layer);
    for (int l = 0; l < a->n_layer; l++)
        for (int t = 0; t < SPECK_LORA_N_TARGETS; t++) {
            const speck_lora_mat *mt = &a->m[l * SPECK_LORA_N_TARGETS + t];
            if (!mt->rank) continue;
            const speck_weight *w = speck_lora_base_weight(m, l, t);
            if (w->n_in != mt->n_in || w->n_out != mt->n_out)
                return speck_set_error(SPECK_ERR_ARG,
                                       "adapter's blk.%d.%s is for a (%lld, %lld) matrix, the base "
                                       "model's is (%lld, %lld) (another base model?)",
                                       l, TARGET_GGUF[t], (long long)mt->n_out,
                                       (long long)mt->n_in, (long long)w->n_out,
                                       (long long)w->n_in);
        }
    return 0;
}

/* ---- llama.cpp's adapter GGUF ---------------------------------------------------------------- */

int speck_lora_write_gguf(const speck_lora *a, speck_gguf_writer *w) {
    int err = 0;
    err |= speck_gguf_set_str(w, "general.architecture", a->arch);
    err |= speck_gguf_set_str(w, "general.type", "adapter");
    err |= speck_gguf_set_str(w, "adapter.type", "lora");
    err |= speck_gguf_set_f32(w, "adapter.lora.alpha", a->alpha);
    if (err) return speck_set_error(SPECK_ERR_NOMEM, "adapter: out of memory");
    for (int l = 0; l < a->n_layer; l++)
        for (int t = 0; t < SPECK_LORA_N_TARGETS; t++) {
            const speck_lora_mat *mt = &a->m[l * SPECK_LORA_N_TARGETS + t];
            if (!mt->rank) continue;
            char na[96], nb[96];
            snprintf(na, sizeof na, "blk.%d.%s.weight.lora_a", l, TARGET_GGUF[t]);
            snprintf(nb, sizeof nb, "blk.%d.%s.weight.lora_b", l, TARGET_GGUF[t]);
            int64_t nea[2] = {mt->n_in, mt->rank}, neb[2] = {mt->rank, mt->n_out};
            if ((err = speck_gguf_add_tensor(w, na, SPECK_TYPE_F32, 2, nea, mt->a)) ||
                (err = speck_gguf_add_tensor(w, nb, SPECK_TYPE_F32, 2, neb, mt->b)))
                return err;
        }
    return 0;
}

int speck_lora_save(const speck_lora *a, const char *path) {
    speck_gguf_writer *w = speck_gguf_writer_new();
    if (!w) return speck_set_error(SPECK_ERR_NOMEM, "adapter: out of memory");
    int err = speck_lora_write_gguf(a, w);
    if (!err) err = speck_gguf_writer_save(w, path);
    speck_gguf_writer_free(w);
    return err;
}

// "blk.N.NAME.weight.lora_a|b" -> layer, target, which (0 a, 1 b); -1 if the name is not one.
static int parse_name(const char *name, int *layer, int *target, int *which) {
    int l, n = 0;
    if (sscanf(name, "blk.%d.%n", &l, &n) != 1 || n == 0 || l < 0 || l >= 65536) return -1;
    const char *rest = name + n;
    for (int t = 0; t < SPECK_LORA_N_TARGETS; t++) {
        size_t k = strlen(TARGET_GGUF[t]);
        if (strncmp(rest, TARGET_GGUF[t], k) || strncmp(rest + k, ".weight.lora_", 13)) continue;
        const char *s = rest + k + 13;
        if ((s[0] != 'a' && s[0] != 'b') || s[1]) return -1;
        *layer = l, *target = t, *which = s[0] == 'b';
        return 0;
    }
    return -1;
}

static const char *kv_str(const speck_gguf *g, const char *key) {
    int64_t i = speck_gguf_find_key(g, key);
    return i < 0 ? NULL : speck_gguf_get_str(g, i);
}

speck_lora *speck_lora_from_gguf(const speck_gguf *g, const char *path) {
    return speck_lora_from_gguf_skip(g, path, NULL);
}

speck_lora *speck_lora_from_gguf_skip(const speck_gguf *g, const char *path, const char *skip) {
    const char *gt = kv_str(g, "general.type"), *at = kv_str(g, "adapter.type");
    const char *arch = kv_str(g, "general.architecture");
    if (!gt || strcmp(gt, "adapter"))
        return speck_set_error(SPECK_ERR_FORMAT,
                               "%s: general.type is '%s', not 'adapter' (not a LoRA adapter)",
                               path, gt ? gt : "(none)"),
               NULL;
    if (!at || strcmp(at, "lora"))
        return speck_set_error(SPECK_ERR_FORMAT, "%s: adapter.type is '%s', not 'lora'", path,
                               at ? at : "(none)"),
               NULL;
    if (!arch || !*arch || strlen(arch) >= 32)
        return speck_set_error(SPECK_ERR_FORMAT, "%s: no general.architecture", path), NULL;
    int64_t ka = speck_gguf_find_key(g, "adapter.lora.alpha");
    float alpha = ka < 0 ? 0.0f : (float)speck_gguf_get_float(g, ka);
    if (!isfinite(alpha) || alpha < 0)
        return speck_set_error(SPECK_ERR_FORMAT, "%s: adapter.lora.alpha %g is invalid", path,
                               alpha),
               NULL;
    // First pass: layers, ranks and shapes from the tensor table.
    int64_t nt = speck_gguf_n_tensors(g);
    int n_layer = 0;
    for (int64_t i = 0; i < nt; i++) {
        int l, t, wh;
        const speck_gguf_tensor *tt = speck_gguf_tensor_at(g, i);
        if (skip && !strncmp(tt->name, skip, strlen(skip))) continue;
        if (parse_name(tt->name, &l, &t, &wh) == 0) {
            if (l + 1 > n_layer) n_layer = l + 1;
        } else {
            size_t n = strlen(tt->name);
            if (n > 12 && !strcmp(tt->name + n - 12, "_norm.weight")) continue; // llama.cpp too
            return speck_set_error(SPECK_ERR_UNSUPPORTED,
                                   "%s: adapter tensor '%s' is not a LoRA matrix speck applies "
                                   "(blk.N.{attn_q,attn_k,attn_v,attn_output,ffn_gate,ffn_up,"
                                   "ffn_down}.weight.lora_a/lora_b)",
                                   path, tt->name),
                   NULL;
        }
    }
    if (n_layer == 0)
        return speck_set_error(SPECK_ERR_FORMAT, "%s: the adapter has no LoRA tensors", path), NULL;
    int nm = n_layer * SPECK_LORA_N_TARGETS;
    int *ranks = calloc((size_t)nm, sizeof *ranks);
    int64_t *ni = calloc((size_t)nm, sizeof *ni), *no = calloc((size_t)nm, sizeof *no);
    const speck_gguf_tensor **ta = calloc((size_t)nm * 2, sizeof *ta);
    speck_lora *a = NULL;
    int err = 0;
    if (!ranks || !ni || !no || !ta) err = speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    for (int64_t i = 0; !err && i < nt; i++) {
        int l, t, wh;
        const speck_gguf_tensor *tt = speck_gguf_tensor_at(g, i);
        if (parse_name(tt->name, &l, &t, &wh)) continue;
        int k = l * SPECK_LORA_N_TARGETS + t;
        if (ta[2 * k + wh])
            err = speck_set_error(SPECK_ERR_FORMAT, "%s: tensor '%s' appears twice", path,
                                  tt->name);
        else if (tt->n_dims != 2 || tt->ne[0] < 1 || tt->ne[1] < 1)
            err = speck_set_error(SPECK_ERR_FORMAT, "%s: '%s' is not a matrix", path, tt->name);
        else if (!speck_type_name((speck_type)tt->type) ||
                 tt->ne[0] % speck_type_block_size((speck_type)tt->type))
            err = speck_set_error(SPECK_ERR_UNSUPPORTED, "%s: '%s' has a type speck cannot read",
                                  path, tt->name);
        ta[2 * k + wh] = tt;
    }
    for (int k = 0; !err && k < nm; k++) {
        const speck_gguf_tensor *A = ta[2 * k], *B = ta[2 * k + 1];
        if (!A != !B) {
            err = speck_set_error(SPECK_ERR_FORMAT, "%s: blk.%d.%s has lora_%s without lora_%s",
                                  path, k / SPECK_LORA_N_TARGETS,
                                  TARGET_GGUF[k % SPECK_LORA_N_TARGETS], A ? "a" : "b",
                                  A ? "b" : "a");
            break;
        }
        if (!A) continue;
        // lora_a ne = {n_in, rank}, lora_b ne = {rank, n_out}
        if (A->ne[1] != B->ne[0] || A->ne[1] > 65536) {
            err = speck_set_error(SPECK_ERR_FORMAT,
                                  "%s: blk.%d.%s: lora_a has rank %lld, lora_b %lld (lora_a must "
                                  "be {n_in, rank}, lora_b {rank, n_out})",
                                  path, k / SPECK_LORA_N_TARGETS,
                                  TARGET_GGUF[k % SPECK_LORA_N_TARGETS], (long long)A->ne[1],
                                  (long long)B->ne[0]);
            break;
        }
        ranks[k] = (int)A->ne[1], ni[k] = A->ne[0], no[k] = B->ne[1];
    }
    if (!err && !(a = speck_lora_alloc(arch, n_layer, ranks, ni, no, alpha))) err = SPECK_ERR_NOMEM;
    for (int k = 0; !err && k < nm; k++) {
        speck_lora_mat *mt = &a->m[k];
        if (!mt->rank) continue;
        for (int wh = 0; wh < 2; wh++) {
            const speck_gguf_tensor *tt = ta[2 * k + wh];
            float *dst = wh ? mt->b : mt->a;
            size_t rs = speck_type_row_size((speck_type)tt->type, tt->ne[0]);
            if (rs * (size_t)tt->ne[1] > tt->n_bytes) {
                err = speck_set_error(SPECK_ERR_FORMAT, "%s: '%s' is truncated", path, tt->name);
                break;
            }
            for (int64_t r = 0; r < tt->ne[1]; r++)
                speck_dequantize_row((speck_type)tt->type, (const uint8_t *)tt->data + rs * r,
                                     dst + r * tt->ne[0], tt->ne[0]);
        }
    }
    free(ranks);
    free(ni);
    free(no);
    free(ta);
    if (err) {
        speck_lora_free(a);
        return NULL;
    }
    return a;
}

speck_lora *speck_lora_load(const char *path) {
    speck_gguf *g = speck_gguf_open(path);
    if (!g) return NULL;
    speck_lora *a = speck_lora_from_gguf(g, path);
    speck_gguf_close(g);
    return a;
}
