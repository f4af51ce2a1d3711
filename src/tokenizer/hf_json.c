// Loading a Hugging Face tokenizer.json (+ tokenizer_config.json) into the common vocabulary.
// Supported: model BPE (byte-level or with byte_fallback), normalizers NFC / Prepend / Replace /
// Sequence, pre-tokenizers Split (regex, Isolated) / ByteLevel / Digits / Metaspace / Sequence —
// what Llama 2/3, Qwen2/3, Gemma 3, GPT-2, StarCoder, Falcon, MPT and DeepSeek ship.
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer_internal.h"

static char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        speck_set_error(SPECK_ERR_IO, "%s: cannot open", path);
        return NULL;
    }
    char *buf = NULL;
    long n = -1;
    if (fseek(f, 0, SEEK_END) == 0) n = ftell(f);
    if (n < 0 || fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        speck_set_error(SPECK_ERR_IO, "%s: cannot read", path);
        return NULL;
    }
    buf = malloc((size_t)n + 1);
    if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        fclose(f);
        speck_set_error(buf ? SPECK_ERR_IO : SPECK_ERR_NOMEM, "%s: cannot read", path);
        return NULL;
    }
    fclose(f);
    buf[n] = 0;
    *len = (size_t)n;
    return buf;
}

static cJSON *parse_json(const char *path) {
    size_t n;
    char *buf = slurp(path, &n);
    if (!buf) return NULL;
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(buf, n, &end, 0);
    if (!j) {
        size_t at = end && end >= buf && end <= buf + n ? (size_t)(end - buf) : 0;
        speck_set_error(SPECK_ERR_FORMAT, "%s: malformed JSON near byte %zu", path, at);
    }
    free(buf);
    return j;
}

static const char *jstr(const cJSON *o, const char *k) {
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(x) ? x->valuestring : NULL;
}

static bool jbool(const cJSON *o, const char *k, bool dflt) {
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsBool(x) ? cJSON_IsTrue(x) : dflt;
}

static const char *META = "\xE2\x96\x81"; // U+2581

static int unsupported(const char *src, const char *field, const char *what) {
    return speck_set_error(SPECK_ERR_UNSUPPORTED, "%s: %s: %s not supported", src, field,
                           what ? what : "(missing type)");
}

static int apply_normalizer(speck_vocab *v, const cJSON *n, const char *src) {
    if (!n || cJSON_IsNull(n)) return SPECK_OK;
    const char *t = jstr(n, "type");
    if (!t) return unsupported(src, "normalizer", NULL);
    if (!strcmp(t, "Sequence")) {
        const cJSON *e;
        cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(n, "normalizers")) {
            int rc = apply_normalizer(v, e, src);
            if (rc) return rc;
        }
        return SPECK_OK;
    }
    if (!strcmp(t, "NFC")) {
        v->nfc = true;
        return SPECK_OK;
    }
    if (!strcmp(t, "Prepend")) {
        const char *p = jstr(n, "prepend");
        if (p && !strcmp(p, META)) {
            v->prefix_meta = true;
            return SPECK_OK;
        }
        return unsupported(src, "normalizer Prepend", p);
    }
    if (!strcmp(t, "Replace")) {
        const char *pat = jstr(cJSON_GetObjectItemCaseSensitive(n, "pattern"), "String");
        const char *c = jstr(n, "content");
        if (pat && c && !strcmp(pat, " ") && !strcmp(c, META)) {
            v->space_to_meta = true;
            return SPECK_OK;
        }
        return unsupported(src, "normalizer Replace", pat);
    }
    return unsupported(src, "normalizer", t);
}

static int add_literal_split(speck_vocab *v, const char *lit, const char *src) {
    // Quote the literal for PCRE2 (\Q...\E cannot hold "\E", so escape byte by byte).
    size_t n = strlen(lit);
    char *re = malloc(2 * n + 1);
    if (!re) return speck_set_error(SPECK_ERR_NOMEM, "%s: out of memory", src);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (strchr("\\^$.|?*+()[]{}", lit[i])) re[k++] = '\\';
        re[k++] = lit[i];
    }
    re[k] = 0;
    int rc = tok_pretok_add(&v->pre, re, src);
    free(re);
    return rc;
}

static const char RE_GPT2_HF[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static int apply_pretok(speck_vocab *v, const cJSON *p, const char *src) {
    if (!p || cJSON_IsNull(p)) return SPECK_OK;
    const char *t = jstr(p, "type");
    if (!t) return unsupported(src, "pre_tokenizer", NULL);
    if (!strcmp(t, "Sequence")) {
        const cJSON *e;
        cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(p, "pretokenizers")) {
            int rc = apply_pretok(v, e, src);
            if (rc) return rc;
        }
        return SPECK_OK;
    }
    if (!strcmp(t, "ByteLevel")) {
        v->byte_level = true;
        if (jbool(p, "add_prefix_space", false))
            return unsupported(src, "pre_tokenizer ByteLevel", "add_prefix_space=true");
        return jbool(p, "use_regex", true) ? tok_pretok_add(&v->pre, RE_GPT2_HF, src) : SPECK_OK;
    }
    if (!strcmp(t, "Split")) {
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(p, "pattern");
        const char *behavior = jstr(p, "behavior");
        const char *re = jstr(pat, "Regex"), *lit = jstr(pat, "String");
        // Gemma: a split on " " after the normaliser turned every space into U+2581 is a no-op.
        if (lit && !strcmp(lit, " ") && v->space_to_meta) return SPECK_OK;
        if (!behavior || strcmp(behavior, "Isolated") || jbool(p, "invert", false))
            return unsupported(src, "pre_tokenizer Split behavior", behavior);
        if (re) return tok_pretok_add(&v->pre, re, src);
        if (lit) return add_literal_split(v, lit, src);
        return unsupported(src, "pre_tokenizer Split pattern", NULL);
    }
    if (!strcmp(t, "Digits"))
        return tok_pretok_add(&v->pre, jbool(p, "individual_digits", false) ? "\\p{N}" : "\\p{N}+",
                              src);
    if (!strcmp(t, "Metaspace")) {
        const char *r = jstr(p, "replacement");
        if (r && strcmp(r, META)) return unsupported(src, "pre_tokenizer Metaspace", r);
        if (jbool(p, "split", false))
            return unsupported(src, "pre_tokenizer Metaspace", "split=true");
        const char *scheme = jstr(p, "prepend_scheme");
        v->space_to_meta = true;
        v->prefix_meta = scheme ? strcmp(scheme, "never") != 0 : jbool(p, "add_prefix_space", true);
        return SPECK_OK;
    }
    return unsupported(src, "pre_tokenizer", t);
}

// Does the decoder strip the dummy-prefix space (Strip decoder, or Metaspace with a prefix)?
static bool decoder_strips(const cJSON *d) {
    if (!d || cJSON_IsNull(d)) return false;
    const char *t = jstr(d, "type");
    if (!t) return false;
    if (!strcmp(t, "Sequence")) {
        const cJSON *e;
        cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(d, "decoders")) {
            if (decoder_strips(e)) return true;
        }
        return false;
    }
    if (!strcmp(t, "Strip")) {
        const cJSON *s = cJSON_GetObjectItemCaseSensitive(d, "start");
        return cJSON_IsNumber(s) && s->valueint > 0;
    }
    if (!strcmp(t, "Metaspace")) {
        const char *scheme = jstr(d, "prepend_scheme");
        return scheme ? strcmp(scheme, "never") != 0 : jbool(d, "add_prefix_space", true);
    }
    return false;
}

// A token named in tokenizer_config.json: a string or {"content": ...}.
static int32_t config_token(const speck_vocab *v, const cJSON *cfg, const char *key) {
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(cfg, key);
    const char *s = cJSON_IsString(x) ? x->valuestring : jstr(x, "content");
    return s ? tok_find(v, s, strlen(s)) : -1;
}

static int load_config(speck_vocab *v, const cJSON *tj, const char *cfg_path) {
    // Without a config, the post-processor template says whether BOS/EOS surround the text.
    const cJSON *pp = cJSON_GetObjectItemCaseSensitive(tj, "post_processor");
    const char *ppt = jstr(pp, "type");
    if (ppt && !strcmp(ppt, "TemplateProcessing")) {
        const cJSON *single = cJSON_GetObjectItemCaseSensitive(pp, "single");
        int n = cJSON_GetArraySize(single);
        for (int i = 0; i < n; i++) {
            const cJSON *st = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(single, i),
                                                               "SpecialToken");
            const char *id = jstr(st, "id");
            int32_t tid = id ? tok_find(v, id, strlen(id)) : -1;
            if (tid < 0) continue;
            if (i == 0) v->bos = tid, v->add_bos = true;
            else if (i == n - 1) v->eos = v->eos < 0 ? tid : v->eos, v->add_eos = true;
        }
    }
    if (!cfg_path) return SPECK_OK;
    cJSON *cfg = parse_json(cfg_path);
    if (!cfg) return speck_set_error(SPECK_ERR_FORMAT, "%s", speck_last_error());
    int32_t id;
    if ((id = config_token(v, cfg, "bos_token")) >= 0) v->bos = id;
    if ((id = config_token(v, cfg, "eos_token")) >= 0) v->eos = id;
    if ((id = config_token(v, cfg, "unk_token")) >= 0) v->unk = id;
    if ((id = config_token(v, cfg, "pad_token")) >= 0) v->pad = id;
    v->add_bos = jbool(cfg, "add_bos_token", v->add_bos);
    v->add_eos = jbool(cfg, "add_eos_token", v->add_eos);
    const cJSON *ct = cJSON_GetObjectItemCaseSensitive(cfg, "chat_template");
    const char *tmpl = cJSON_IsString(ct) ? ct->valuestring : NULL;
    if (cJSON_IsArray(ct)) { // [{name, template}, ...]: take "default"
        const cJSON *e;
        cJSON_ArrayForEach(e, ct) {
            const char *nm = jstr(e, "name");
            if (nm && !strcmp(nm, "default")) tmpl = jstr(e, "template");
        }
    }
    int rc = SPECK_OK;
    if (tmpl && !(v->chat_template = strdup(tmpl)))
        rc = speck_set_error(SPECK_ERR_NOMEM, "%s: out of memory", cfg_path);
    cJSON_Delete(cfg);
    return rc;
}

static int load_merges(speck_vocab *v, const cJSON *merges, const char *src) {
    int n = cJSON_GetArraySize(merges);
    if (tok_merges_init(v, n)) return speck_set_error(SPECK_ERR_NOMEM, "%s: out of memory", src);
    int rank = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, merges) {
        const char *a, *b;
        size_t al, bl;
        if (cJSON_IsString(m)) { // "left right"
            const char *s = m->valuestring;
            const char *sp = s[0] ? strchr(s + 1, ' ') : NULL;
            if (!sp)
                return speck_set_error(SPECK_ERR_FORMAT, "%s: model.merges[%d]: no space", src,
                                       rank);
            a = s, al = (size_t)(sp - s), b = sp + 1, bl = strlen(sp + 1);
        } else if (cJSON_IsArray(m) && cJSON_GetArraySize(m) == 2 &&
                   cJSON_IsString(cJSON_GetArrayItem(m, 0)) &&
                   cJSON_IsString(cJSON_GetArrayItem(m, 1))) { // ["left", "right"]
            a = cJSON_GetArrayItem(m, 0)->valuestring, al = strlen(a);
            b = cJSON_GetArrayItem(m, 1)->valuestring, bl = strlen(b);
        } else {
            return speck_set_error(SPECK_ERR_FORMAT, "%s: model.merges[%d]: not a pair", src,
                                   rank);
        }
        if (tok_add_merge(v, a, al, b, bl, rank++))
            return speck_set_error(SPECK_ERR_NOMEM, "%s: out of memory", src);
    }
    return SPECK_OK;
}

speck_vocab *tok_vocab_from_hf(const char *path, const char *cfg_path) {
    cJSON *tj = parse_json(path);
    if (!tj) return NULL;
    speck_vocab *v = NULL;
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(tj, "model");
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(tj, "added_tokens");
    const char *mt = jstr(model, "type");
    if (!cJSON_IsObject(model)) {
        speck_set_error(SPECK_ERR_FORMAT, "%s: model: missing", path);
        goto fail;
    }
    if (mt ? strcmp(mt, "BPE") != 0 : !cJSON_IsArray(merges)) {
        unsupported(path, "model.type", mt);
        goto fail;
    }
    if (!cJSON_IsObject(vocab) || !cJSON_IsArray(merges)) {
        speck_set_error(SPECK_ERR_FORMAT, "%s: model.vocab / model.merges: missing", path);
        goto fail;
    }
    const char *cp = jstr(model, "continuing_subword_prefix"), *es = jstr(model, "end_of_word_suffix");
    if ((cp && *cp) || (es && *es)) {
        unsupported(path, "model", "continuing_subword_prefix / end_of_word_suffix");
        goto fail;
    }
    // Ids may be sparse and added tokens may lie beyond the model vocabulary.
    int64_t n = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, vocab) {
        if (!cJSON_IsNumber(e) || e->valuedouble < 0 || e->valuedouble > INT32_MAX / 2) {
            speck_set_error(SPECK_ERR_FORMAT, "%s: model.vocab[\"%s\"]: bad id", path, e->string);
            goto fail;
        }
        if (e->valueint + 1 > n) n = e->valueint + 1;
    }
    cJSON_ArrayForEach(e, added) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(e, "id");
        if (!cJSON_IsNumber(id) || id->valuedouble < 0 || id->valuedouble > INT32_MAX / 2 ||
            !jstr(e, "content")) {
            speck_set_error(SPECK_ERR_FORMAT, "%s: added_tokens: entry without id/content", path);
            goto fail;
        }
        if (id->valueint + 1 > n) n = id->valueint + 1;
    }
    if (n == 0) {
        speck_set_error(SPECK_ERR_FORMAT, "%s: model.vocab: empty", path);
        goto fail;
    }
    v = tok_vocab_alloc((int32_t)n);
    if (!v) {
        speck_set_error(SPECK_ERR_NOMEM, "%s: out of memory", path);
        goto fail;
    }
    memset(v->type, TOK_UNUSED, (size_t)n); // ids no entry names
    v->byte_fallback = jbool(model, "byte_fallback", false);
    v->fuse_unk = jbool(model, "fuse_unk", false);
    v->ignore_merges = jbool(model, "ignore_merges", false);
    cJSON_ArrayForEach(e, vocab) {
        if (tok_set_token(v, e->valueint, e->string, strlen(e->string))) {
            speck_set_error(SPECK_ERR_NOMEM, "%s: out of memory", path);
            goto fail;
        }
        v->type[e->valueint] = TOK_NORMAL;
        v->scores[e->valueint] = -(float)e->valueint;
    }
    v->sp_lstrip = calloc((size_t)n, 1);
    v->sp_rstrip = calloc((size_t)n, 1);
    if (!v->sp_lstrip || !v->sp_rstrip) {
        speck_set_error(SPECK_ERR_NOMEM, "%s: out of memory", path);
        goto fail;
    }
    cJSON_ArrayForEach(e, added) {
        int32_t id = cJSON_GetObjectItemCaseSensitive(e, "id")->valueint;
        const char *c = jstr(e, "content");
        if (tok_set_token(v, id, c, strlen(c))) {
            speck_set_error(SPECK_ERR_NOMEM, "%s: out of memory", path);
            goto fail;
        }
        v->type[id] = jbool(e, "special", false) ? TOK_CONTROL : TOK_USER_DEFINED;
        v->sp_lstrip[id] = jbool(e, "lstrip", false);
        v->sp_rstrip[id] = jbool(e, "rstrip", false);
    }
    if (tok_build_text_map(v, path)) goto fail;
    if (v->byte_fallback)
        for (int b = 0; b < 256; b++) {
            char buf[8];
            snprintf(buf, sizeof buf, "<0x%02X>", b);
            int32_t id = tok_find(v, buf, 6);
            if (id >= 0 && v->type[id] == TOK_NORMAL) v->type[id] = TOK_BYTE;
        }
    const char *unk = jstr(model, "unk_token");
    if (unk) v->unk = tok_find(v, unk, strlen(unk));
    if (load_merges(v, merges, path)) goto fail;
    if (apply_normalizer(v, cJSON_GetObjectItemCaseSensitive(tj, "normalizer"), path) ||
        apply_pretok(v, cJSON_GetObjectItemCaseSensitive(tj, "pre_tokenizer"), path))
        goto fail;
    v->algo = ALGO_BPE_RANKS;
    v->kind = v->byte_level ? SPECK_VOCAB_BPE : SPECK_VOCAB_SPM;
    v->strip_lead_space = !v->byte_level && decoder_strips(cJSON_GetObjectItemCaseSensitive(tj, "decoder"));
    if (load_config(v, tj, cfg_path)) goto fail;
    if (v->add_bos && v->bos < 0) v->add_bos = false;
    if (v->add_eos && v->eos < 0) v->add_eos = false;
    if (tok_vocab_finish(v, path)) goto fail;
    cJSON_Delete(tj);
    return v;
fail:
    speck_vocab_free(v);
    cJSON_Delete(tj);
    return NULL;
}
