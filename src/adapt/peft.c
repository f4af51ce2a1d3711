// Hugging Face PEFT LoRA directories (adapter_config.json + adapter_model.safetensors) to and
// from speck's adapters, with Llama's q/k row order converted (rotate-half <-> interleaved).
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "adapt/adapt_internal.h"
#include "formats/hf_internal.h"
#include "model/arch.h"

#define NT SPECK_LORA_N_TARGETS
#define PREFIX "base_model.model.model.layers."

static const speck_slot SLOT_OF[NT] = {SLOT_WQ, SLOT_WK, SLOT_WV, SLOT_WO,
                                       SLOT_WG, SLOT_WU, SLOT_WD};

// The Hugging Face module path of target t in arch ("self_attn.q_proj"), and whether its rows
// are permuted between the two layouts; NULL when the architecture has no such tensor.
static const char *hf_module(const speck_arch *arch, int t, char *buf, size_t n, bool *permute) {
    for (int i = 0; i < arch->n_layer_tensors; i++) {
        const speck_tensor_desc *d = &arch->layer[i];
        if (d->slot != SLOT_OF[t] || !d->hf) continue;
        size_t k = strlen(d->hf);
        if (k > 7 && !strcmp(d->hf + k - 7, ".weight")) k -= 7;
        if (k >= n) return NULL;
        memcpy(buf, d->hf, k);
        buf[k] = 0;
        *permute = (d->flags & TD_PERMUTE) != 0;
        return buf;
    }
    return NULL;
}

static const speck_arch *arch_for(const speck_lora *a, const speck_model *base) {
    if (speck_lora_check(a, base)) return NULL;
    const speck_arch *arch = speck_arch_find(a->arch);
    if (!arch) speck_set_error(SPECK_ERR_UNSUPPORTED, "PEFT: unknown architecture %s", a->arch);
    return arch;
}

/* ---- export ------------------------------------------------------------------------------- */

typedef struct {
    char name[160];
    int64_t rows, cols;
    const float *data; // rows x cols, already in Hugging Face row order
} st_entry;

// safetensors: u64 header length, JSON header (8-byte aligned with spaces), f32 data.
static int write_safetensors(const char *path, const st_entry *e, int n) {
    cJSON *h = cJSON_CreateObject();
    size_t off = 0;
    for (int i = 0; h && i < n; i++) {
        cJSON *t = cJSON_AddObjectToObject(h, e[i].name);
        size_t bytes = (size_t)(e[i].rows * e[i].cols) * sizeof(float);
        double shape[2] = {(double)e[i].rows, (double)e[i].cols};
        double offs[2] = {(double)off, (double)(off + bytes)};
        if (!t || !cJSON_AddStringToObject(t, "dtype", "F32") ||
            !cJSON_AddItemToObject(t, "shape", cJSON_CreateDoubleArray(shape, 2)) ||
            !cJSON_AddItemToObject(t, "data_offsets", cJSON_CreateDoubleArray(offs, 2))) {
            cJSON_Delete(h);
            h = NULL;
        }
        off += bytes;
    }
    cJSON *meta = h ? cJSON_AddObjectToObject(h, "__metadata__") : NULL;
    if (meta) cJSON_AddStringToObject(meta, "format", "pt");
    char *js = meta ? cJSON_PrintUnformatted(h) : NULL;
    cJSON_Delete(h);
    if (!js) return speck_set_error(SPECK_ERR_NOMEM, "PEFT export: out of memory");
    size_t jn = strlen(js), pad = (8 - jn % 8) % 8;
    uint64_t hl = jn + pad;
    FILE *f = fopen(path, "wb");
    bool ok = f && fwrite(&hl, 8, 1, f) == 1 && fwrite(js, 1, jn, f) == jn;
    for (size_t i = 0; ok && i < pad; i++) ok = fputc(' ', f) != EOF;
    for (int i = 0; ok && i < n; i++)
        ok = fwrite(e[i].data, sizeof(float), (size_t)(e[i].rows * e[i].cols), f) ==
             (size_t)(e[i].rows * e[i].cols);
    int en = errno;
    if (f && fclose(f)) ok = false;
    free(js);
    return ok ? 0 : speck_set_error(SPECK_ERR_IO, "%s: write failed: %s", path, strerror(en));
}

static int write_config(const char *path, const speck_lora *a, const speck_model *base,
                        const speck_arch *arch, int r) {
    cJSON *c = cJSON_CreateObject(), *tm = cJSON_AddArrayToObject(c, "target_modules");
    cJSON *rp = cJSON_AddObjectToObject(c, "rank_pattern");
    bool seen[NT] = {false};
    for (int l = 0; l < a->n_layer; l++)
        for (int t = 0; t < NT; t++) {
            const speck_lora_mat *mt = &a->m[l * NT + t];
            if (!mt->rank) continue;
            char mod[96], key[128];
            bool perm;
            hf_module(arch, t, mod, sizeof mod, &perm);
            const char *leaf = strrchr(mod, '.') ? strrchr(mod, '.') + 1 : mod;
            if (!seen[t]) cJSON_AddItemToArray(tm, cJSON_CreateString(leaf));
            seen[t] = true;
            if (mt->rank != r) {
                snprintf(key, sizeof key, "model.layers.%d.%s", l, mod);
                cJSON_AddNumberToObject(rp, key, mt->rank);
            }
        }
    const char *name = speck_model_hparams(base)->name;
    cJSON_AddStringToObject(c, "base_model_name_or_path", name[0] ? name : a->arch);
    cJSON_AddStringToObject(c, "peft_type", "LORA");
    cJSON_AddStringToObject(c, "task_type", "CAUSAL_LM");
    cJSON_AddNumberToObject(c, "r", r);
    // alpha 0 is llama.cpp's "scale 1": PEFT says that as lora_alpha = r (and the patterns).
    cJSON_AddNumberToObject(c, "lora_alpha", a->alpha != 0 ? a->alpha : (double)r);
    cJSON_AddNumberToObject(c, "lora_dropout", 0.0);
    cJSON_AddStringToObject(c, "bias", "none");
    cJSON_AddBoolToObject(c, "fan_in_fan_out", false);
    cJSON_AddBoolToObject(c, "inference_mode", true);
    int err = hf_write_json(c, path);
    cJSON_Delete(c);
    return err;
}

int speck_lora_export_peft(const speck_lora *a, const speck_model *base, const char *dir) {
    const speck_arch *arch = arch_for(a, base);
    if (!arch) return SPECK_ERR_ARG;
    if (a->alpha == 0)
        return speck_set_error(SPECK_ERR_UNSUPPORTED,
                               "PEFT export: the adapter has no alpha (scale 1 per matrix), which "
                               "PEFT's config cannot say for mixed ranks");
    const int hd = speck_model_hparams(base)->head_dim;
    int n = 0, r = 0;
    for (int i = 0; i < a->n_layer * NT; i++)
        if (a->m[i].rank) {
            n += 2;
            if (!r) r = a->m[i].rank;
        }
    st_entry *e = calloc((size_t)(n ? n : 1), sizeof *e);
    float **perm = calloc((size_t)(n ? n : 1), sizeof *perm);
    int err = e && perm ? 0 : speck_set_error(SPECK_ERR_NOMEM, "PEFT export: out of memory");
    int k = 0;
    for (int l = 0; !err && l < a->n_layer; l++)
        for (int t = 0; !err && t < NT; t++) {
            const speck_lora_mat *mt = &a->m[l * NT + t];
            if (!mt->rank) continue;
            char mod[96];
            bool p = false;
            if (!hf_module(arch, t, mod, sizeof mod, &p)) {
                err = speck_set_error(SPECK_ERR_UNSUPPORTED, "PEFT export: %s has no %s tensor",
                                      a->arch, speck_lora_target_gguf(t));
                break;
            }
            snprintf(e[k].name, sizeof e[k].name, PREFIX "%d.%s.lora_A.weight", l, mod);
            e[k].rows = mt->rank, e[k].cols = mt->n_in, e[k].data = mt->a;
            k++;
            snprintf(e[k].name, sizeof e[k].name, PREFIX "%d.%s.lora_B.weight", l, mod);
            e[k].rows = mt->n_out, e[k].cols = mt->rank, e[k].data = mt->b;
            if (p) { // B's rows are W's rows: back to Hugging Face's rotate-half order
                if (!(perm[k] = malloc((size_t)(mt->n_out * mt->rank) * sizeof(float)))) {
                    err = speck_set_error(SPECK_ERR_NOMEM, "PEFT export: out of memory");
                    break;
                }
                hf_convert_rows(mt->b, SPECK_TYPE_F32, perm[k], SPECK_TYPE_F32, 0, mt->n_out,
                                mt->rank, hd, -1);
                e[k].data = perm[k];
            }
            k++;
        }
    struct stat st;
    if (!err && stat(dir, &st) == 0 && !(S_ISDIR(st.st_mode) && rmdir(dir) == 0))
        err = speck_set_error(SPECK_ERR_IO, "%s: already exists (and is not an empty directory)",
                              dir);
    char tmp[PATH_MAX], p1[PATH_MAX + 40], p2[PATH_MAX + 40];
    size_t dn = strlen(dir);
    bool made = false;
    if (!err && (dn + 12 >= sizeof tmp ||
                 (memcpy(tmp, dir, dn), memcpy(tmp + dn, ".tmp.XXXXXX", 12), !mkdtemp(tmp))))
        err = speck_set_error(SPECK_ERR_IO, "%s: cannot create a temporary directory: %s", dir,
                              strerror(errno));
    else if (!err)
        made = true;
    if (made) {
        snprintf(p1, sizeof p1, "%s/adapter_config.json", tmp);
        snprintf(p2, sizeof p2, "%s/adapter_model.safetensors", tmp);
    }
    if (!err) err = write_config(p1, a, base, arch, r);
    if (!err) err = write_safetensors(p2, e, n);
    if (!err) {
        chmod(tmp, 0755);
        if (rename(tmp, dir) != 0)
            err = speck_set_error(SPECK_ERR_IO, "%s: cannot rename into place: %s", dir,
                                  strerror(errno));
    }
    if (err && made) {
        unlink(p1);
        unlink(p2);
        rmdir(tmp);
    }
    for (int i = 0; perm && i < n; i++) free(perm[i]);
    free(perm);
    free(e);
    return err;
}

/* ---- import ------------------------------------------------------------------------------- */

speck_lora *speck_lora_import_peft(const char *dir, const speck_model *base) {
    const speck_hparams *hp = speck_model_hparams(base);
    const speck_arch *arch = speck_arch_find(hp->arch);
    if (!arch) return speck_set_error(SPECK_ERR_UNSUPPORTED, "PEFT: unknown architecture"), NULL;
    char p1[PATH_MAX + 40], p2[PATH_MAX + 40];
    snprintf(p1, sizeof p1, "%s/adapter_config.json", dir);
    snprintf(p2, sizeof p2, "%s/adapter_model.safetensors", dir);
    cJSON *c = hf_read_json(p1);
    if (!c) return NULL;
    speck_lora *a = NULL;
    speck_st *s = NULL;
    int err = 0, nm = hp->n_layer * NT;
    int *ranks = calloc((size_t)nm, sizeof *ranks);
    int64_t *ni = calloc((size_t)nm, sizeof *ni), *no = calloc((size_t)nm, sizeof *no);
    const speck_st_tensor **ta = calloc((size_t)nm * 2, sizeof *ta);
    const cJSON *pt = cJSON_GetObjectItemCaseSensitive(c, "peft_type");
    const cJSON *al = cJSON_GetObjectItemCaseSensitive(c, "lora_alpha");
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(c, "r");
    const cJSON *fi = cJSON_GetObjectItemCaseSensitive(c, "fan_in_fan_out");
    const cJSON *ap = cJSON_GetObjectItemCaseSensitive(c, "alpha_pattern");
    const cJSON *ud = cJSON_GetObjectItemCaseSensitive(c, "use_dora");
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(c, "use_rslora");
    if (!ranks || !ni || !no || !ta) err = speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    else if (!cJSON_IsString(pt) || strcmp(pt->valuestring, "LORA"))
        err = speck_set_error(SPECK_ERR_FORMAT, "%s: peft_type is not \"LORA\"", p1);
    else if (!cJSON_IsNumber(al) || !cJSON_IsNumber(r) || !(al->valuedouble > 0) ||
             !(r->valuedouble >= 1))
        err = speck_set_error(SPECK_ERR_FORMAT, "%s: needs numbers \"r\" >= 1 and "
                                                "\"lora_alpha\" > 0", p1);
    else if (cJSON_IsTrue(fi) || cJSON_IsTrue(ud) || cJSON_IsTrue(rs) ||
             (cJSON_IsObject(ap) && cJSON_GetArraySize(ap) > 0))
        err = speck_set_error(SPECK_ERR_UNSUPPORTED,
                              "%s: fan_in_fan_out, DoRA, rsLoRA and alpha_pattern adapters are not "
                              "supported",
                              p1);
    if (!err && !(s = speck_st_open(p2))) err = SPECK_ERR_FORMAT;
    int n_layer = 0;
    for (int64_t i = 0; !err && i < speck_st_n_tensors(s); i++) {
        const speck_st_tensor *t = speck_st_tensor_at(s, i);
        int l, off = 0;
        if (sscanf(t->name, PREFIX "%d.%n", &l, &off) != 1 || !off || l < 0 || l >= hp->n_layer) {
            err = speck_set_error(SPECK_ERR_FORMAT,
                                  "%s: tensor '%s' is not a LoRA matrix of a layer of the base "
                                  "(%d layers)",
                                  p2, t->name, hp->n_layer);
            break;
        }
        int found = -1, wh = -1;
        for (int tg = 0; tg < NT && found < 0; tg++) {
            char mod[96], want[128];
            bool perm;
            if (!hf_module(arch, tg, mod, sizeof mod, &perm)) continue;
            for (int k = 0; k < 2; k++) {
                snprintf(want, sizeof want, "%s.lora_%c.weight", mod, k ? 'B' : 'A');
                if (!strcmp(t->name + off, want)) found = tg, wh = k;
            }
        }
        if (found < 0) {
            err = speck_set_error(SPECK_ERR_UNSUPPORTED,
                                  "%s: tensor '%s' adapts a module speck does not (q, k, v, o, "
                                  "gate, up, down projections)",
                                  p2, t->name);
            break;
        }
        int k = l * NT + found;
        const speck_weight *w = speck_lora_base_weight(base, l, found);
        int64_t rows = t->n_dims == 2 ? t->shape[0] : -1, cols = t->n_dims == 2 ? t->shape[1] : -1;
        int64_t rank = wh ? cols : rows;
        if (ta[2 * k + wh])
            err = speck_set_error(SPECK_ERR_FORMAT, "%s: '%s' appears twice", p2, t->name);
        else if (t->n_dims != 2 || rank < 1 || rank > 65536 ||
                 (wh ? rows != w->n_out : cols != w->n_in) ||
                 (ranks[k] && ranks[k] != rank))
            err = speck_set_error(SPECK_ERR_ARG,
                                  "%s: '%s' has shape (%lld, %lld), which does not fit the base's "
                                  "(%lld, %lld) matrix (another base model?)",
                                  p2, t->name, (long long)rows, (long long)cols,
                                  (long long)w->n_out, (long long)w->n_in);
        ta[2 * k + wh] = t;
        ranks[k] = (int)rank, ni[k] = w->n_in, no[k] = w->n_out;
        if (l + 1 > n_layer) n_layer = l + 1;
    }
    for (int k = 0; !err && k < nm; k++)
        if (!ta[2 * k] != !ta[2 * k + 1])
            err = speck_set_error(SPECK_ERR_FORMAT, "%s: layer %d %s has only lora_%s", p2,
                                  k / NT, speck_lora_target_short(k % NT),
                                  ta[2 * k] ? "A" : "B");
    if (!err && n_layer == 0) err = speck_set_error(SPECK_ERR_FORMAT, "%s: no LoRA tensors", p2);
    // PEFT's scale is lora_alpha / r per matrix (rank_pattern changes r, not alpha): one alpha.
    if (!err && !(a = speck_lora_alloc(hp->arch, n_layer, ranks, ni, no, (float)al->valuedouble)))
        err = SPECK_ERR_NOMEM;
    for (int k = 0; !err && k < n_layer * NT; k++) {
        speck_lora_mat *mt = &a->m[k];
        if (!mt->rank) continue;
        char mod[96];
        bool perm = false;
        hf_module(arch, k % NT, mod, sizeof mod, &perm);
        for (int wh = 0; wh < 2; wh++) {
            const speck_st_tensor *t = ta[2 * k + wh];
            int64_t rows = t->shape[0], cols = t->shape[1];
            float *dst = wh ? mt->b : mt->a;
            // B's rows are W's: interleave q/k heads as GGUF stores them
            hf_convert_rows(t->data, t->type, dst, SPECK_TYPE_F32, 0, rows, cols,
                            wh && perm ? hp->head_dim : 0, 1);
        }
    }
    speck_st_close(s);
    cJSON_Delete(c);
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
