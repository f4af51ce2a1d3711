// Loading a Hugging Face tokenizer.json (+ tokenizer_config.json) into the common vocabulary.
// Supported: model BPE (byte-level or with byte_fallback), normalizers NFC / Prepend / Replace /
// Sequence, pre-tokenizers Split (regex, Isolated) / ByteLevel / Digits / Metaspace / Sequence —
// what Llama 2/3, Qwen2/3, Gemma 3, GPT-2, StarCoder, Falcon, MPT and DeepSeek ship.
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <unistd.h>

#include "core/limits.h"
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
    if ((size_t)n > SPECK_JSON_MAX_BYTES) {
        fclose(f);
        speck_set_error(SPECK_ERR_FORMAT,
                        "%s: %ld bytes, more than the %zu MB a JSON file may have", path, n,
                        SPECK_JSON_MAX_BYTES >> 20);
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

static cJSON *parse_json_buf(const char *path, char *buf, size_t n);

static cJSON *parse_json(const char *path) {
    size_t n;
    char *buf = slurp(path, &n);
    if (!buf) return NULL;
    return parse_json_buf(path, buf, n);
}

// Parses and frees buf.
static cJSON *parse_json_buf(const char *path, char *buf, size_t n) {
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
            const cJSON *st =
                cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(single, i), "SpecialToken");
            const char *id = jstr(st, "id");
            int32_t tid = id ? tok_find(v, id, strlen(id)) : -1;
            if (tid < 0) continue;
            if (i == 0)
                v->bos = tid, v->add_bos = true;
            else if (i == n - 1)
                v->eos = v->eos < 0 ? tid : v->eos, v->add_eos = true;
        }
    }
    if (!cfg_path) return SPECK_OK;
    cJSON *cfg = parse_json(cfg_path);
    if (!cfg) return SPECK_ERR_FORMAT; // parse_json named the file
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

/* ---------------------------------------------------------------------------------------- */
/* model.vocab and model.merges                                                              */
/* ---------------------------------------------------------------------------------------- */

// The two big members (a 150k vocabulary: ~150k vocab entries, ~150k merges) as flat lists of
// decoded strings. A general JSON parser spends most of a load allocating a node and a string
// per entry, so they are scanned directly out of the file text (scan_model below) and the rest
// of the document, with the two members blanked out, goes to cJSON. When the scanner meets
// anything unexpected, the lists are filled from a full cJSON parse instead.
typedef struct {
    char *text; // decoded strings, each NUL-terminated
    size_t len, cap;
    uint32_t *off;  // string i starts at text + off[i]
    uint32_t *slen; // and has slen[i] bytes
    int32_t *id;    // vocab: the token id; merges: unused
    int n, cap_n;
} strlist;

static void strlist_free(strlist *l) {
    free(l->text);
    free(l->off);
    free(l->slen);
    free(l->id);
}

// Room for one more entry.
static bool strlist_grow(strlist *l) {
    if (l->n < l->cap_n) return true;
    int c = l->cap_n ? 2 * l->cap_n : 4096;
    uint32_t *o = realloc(l->off, (size_t)c * sizeof *o);
    if (o) l->off = o;
    uint32_t *sl = realloc(l->slen, (size_t)c * sizeof *sl);
    if (sl) l->slen = sl;
    int32_t *i = realloc(l->id, (size_t)c * sizeof *i);
    if (i) l->id = i;
    if (!o || !sl || !i) return false;
    l->cap_n = c;
    return true;
}

static bool strlist_push(strlist *l, const char *s, size_t n, int32_t id) {
    if (!strlist_grow(l)) return false;
    if (l->len + n + 1 > l->cap) {
        size_t c = (l->len + n + 1) * 2;
        if (c > UINT32_MAX) return false;
        char *t = realloc(l->text, c);
        if (!t) return false;
        l->text = t;
        l->cap = c;
    }
    memcpy(l->text + l->len, s, n);
    l->text[l->len + n] = 0;
    l->off[l->n] = (uint32_t)l->len;
    l->slen[l->n] = (uint32_t)n;
    l->id[l->n++] = id;
    l->len += n + 1;
    return true;
}

static const char *skip_ws(const char *p, const char *e) {
    while (p < e && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}

// p at an opening quote: the position after the closing one, or NULL.
static const char *skip_string(const char *p, const char *e) {
    for (p++; p < e; p++) {
        if (*p == '\\')
            p++;
        else if (*p == '"')
            return p + 1;
    }
    return NULL;
}

static const char *skip_value(const char *p, const char *e) {
    if (p >= e) return NULL;
    if (*p == '"') return skip_string(p, e);
    if (*p == '{' || *p == '[') {
        int depth = 0;
        while (p < e) {
            char c = *p;
            if (c == '"') {
                if (!(p = skip_string(p, e))) return NULL;
                continue;
            }
            if (c == '{' || c == '[')
                depth++;
            else if ((c == '}' || c == ']') && --depth == 0)
                return p + 1;
            p++;
        }
        return NULL;
    }
    while (p < e && !strchr(",}] \t\r\n", *p)) p++;
    return p;
}

// Value of member `key` among the members of an object from p (at a key, or at the closing
// brace), raw key bytes compared; NULL if absent.
static const char *find_member_from(const char *p, const char *e, const char *key) {
    size_t kl = strlen(key);
    p = skip_ws(p, e);
    while (p < e && *p == '"') {
        const char *k = p + 1, *ke = skip_string(p, e);
        if (!ke) return NULL;
        p = skip_ws(ke, e);
        if (p >= e || *p != ':') return NULL;
        p = skip_ws(p + 1, e);
        if ((size_t)(ke - 1 - k) == kl && !memcmp(k, key, kl)) return p;
        if (!(p = skip_value(p, e))) return NULL;
        p = skip_ws(p, e);
        if (p < e && *p == ',') p = skip_ws(p + 1, e);
    }
    return NULL;
}

// Value of member `key` of the object starting at p, or NULL.
static const char *find_member(const char *p, const char *e, const char *key) {
    p = skip_ws(p, e);
    return p < e && *p == '{' ? find_member_from(p + 1, e, key) : NULL;
}

static int hexval(char c) {
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

static bool hex4(const char *p, const char *e, unsigned *v) {
    if (e - p < 4) return false;
    *v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval(p[i]);
        if (h < 0) return false;
        *v = *v * 16 + (unsigned)h;
    }
    return true;
}

// Decode the JSON string at p (opening quote) into out[0..*n) (out has room for the raw length,
// which decoding never exceeds). Returns the position after the closing quote, or NULL for
// anything cJSON would reject or represent differently (a lone surrogate, an embedded NUL).
static const char *decode_string(const char *p, const char *e, char *out, size_t *n) {
    size_t k = 0;
    for (p++; p < e; p++) {
        char c = *p;
        if (c == '"') {
            *n = k;
            return p + 1;
        }
        if (c != '\\') {
            out[k++] = c;
            continue;
        }
        if (++p >= e) return NULL;
        switch (*p) {
        case '"':
            out[k++] = '"';
            break;
        case '\\':
            out[k++] = '\\';
            break;
        case '/':
            out[k++] = '/';
            break;
        case 'b':
            out[k++] = '\b';
            break;
        case 'f':
            out[k++] = '\f';
            break;
        case 'n':
            out[k++] = '\n';
            break;
        case 'r':
            out[k++] = '\r';
            break;
        case 't':
            out[k++] = '\t';
            break;
        case 'u': {
            unsigned cp, lo;
            if (!hex4(p + 1, e, &cp)) return NULL;
            p += 4;
            if (cp >= 0xDC00 && cp <= 0xDFFF) return NULL;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                if (e - p < 7 || p[1] != '\\' || p[2] != 'u' || !hex4(p + 3, e, &lo) ||
                    lo < 0xDC00 || lo > 0xDFFF)
                    return NULL;
                p += 6;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            if (cp == 0) return NULL;
            // At most 4 bytes for the 6 or 12 escape bytes consumed: stays within the raw length.
            if (cp < 0x80)
                out[k++] = (char)cp;
            else if (cp < 0x800) {
                out[k++] = (char)(0xC0 | (cp >> 6));
                out[k++] = (char)(0x80 | (cp & 0x3F));
            } else if (cp < 0x10000) {
                out[k++] = (char)(0xE0 | (cp >> 12));
                out[k++] = (char)(0x80 | ((cp >> 6) & 0x3F));
                out[k++] = (char)(0x80 | (cp & 0x3F));
            } else {
                out[k++] = (char)(0xF0 | (cp >> 18));
                out[k++] = (char)(0x80 | ((cp >> 12) & 0x3F));
                out[k++] = (char)(0x80 | ((cp >> 6) & 0x3F));
                out[k++] = (char)(0x80 | (cp & 0x3F));
            }
            break;
        }
        default:
            return NULL;
        }
    }
    return NULL;
}

// Decode the string at p into a scratch buffer that grows to its raw length. Returns the
// position after it, or NULL (see decode_string).
static const char *scratch_string(const char *p, const char *e, char **scratch, size_t *scratch_cap,
                                  size_t *n) {
    const char *q = skip_string(p, e);
    if (!q) return NULL;
    size_t raw = (size_t)(q - p);
    if (raw > *scratch_cap) {
        char *t = realloc(*scratch, raw * 2);
        if (!t) return NULL;
        *scratch = t;
        *scratch_cap = raw * 2;
    }
    return decode_string(p, e, *scratch, n) ? q : NULL;
}

static const char *push_string(strlist *l, const char *p, const char *e, int32_t id, char **scratch,
                               size_t *scratch_cap) {
    size_t n;
    // Decoded straight into the list's text when it has room for everything up to the end of
    // the document (it was reserved so, see strlist_reserve): no copy through the scratch
    // buffer, and no separate pass to find the string's end.
    if (l->len + (size_t)(e - p) + 1 <= l->cap) {
        if (!strlist_grow(l)) return NULL;
        const char *q = decode_string(p, e, l->text + l->len, &n);
        if (!q) return NULL;
        l->text[l->len + n] = 0;
        l->off[l->n] = (uint32_t)l->len;
        l->slen[l->n] = (uint32_t)n;
        l->id[l->n++] = id;
        l->len += n + 1;
        return q;
    }
    p = scratch_string(p, e, scratch, scratch_cap, &n);
    return p && strlist_push(l, *scratch, n, id) ? p : NULL;
}

static bool strlist_reserve(strlist *l, size_t bytes) {
    if (bytes + 1 > UINT32_MAX) return false;
    // Untouched pages of a big allocation cost nothing: reserving the whole raw length to the end
    // of the document (decoding never grows a string) spares the copies of a growing buffer.
    if (!(l->text = malloc(bytes + 1))) return false;
    l->cap = bytes + 1;
    return true;
}

static bool scan_model(const char *doc, size_t n, strlist *vocab, strlist *merges, char **rest,
                       size_t *rest_len) {
    const char *e = doc + n, *p;
    char *scratch = NULL;
    size_t scap = 0;
    const char *model = find_member(doc, e, "model");
    const char *v0 = model ? find_member(model, e, "vocab") : NULL, *m0;
    if (!v0 || *v0 != '{' || !strlist_reserve(vocab, (size_t)(e - v0))) goto fail;
    // vocab: {"text": id, ...}
    p = skip_ws(v0 + 1, e);
    while (p < e && *p == '"') {
        const char *k = p;
        const char *ke = skip_string(k, e);
        if (!ke) goto fail;
        p = skip_ws(ke, e);
        if (p >= e || *p != ':') goto fail;
        p = skip_ws(p + 1, e);
        long id = 0;
        const char *d = p;
        while (p < e && *p >= '0' && *p <= '9' && id <= INT32_MAX / 2) id = id * 10 + (*p++ - '0');
        if (p == d || id > INT32_MAX / 2 || (p < e && !strchr(",} \t\r\n", *p))) goto fail;
        if (!push_string(vocab, k, e, (int32_t)id, &scratch, &scap)) goto fail;
        p = skip_ws(p, e);
        if (p < e && *p == ',') p = skip_ws(p + 1, e);
    }
    if (p >= e || *p != '}') goto fail;
    const char *v1 = p + 1;
    // merges: a later member of "model" (the scan goes on from vocab's end).
    p = skip_ws(v1, e);
    if (p < e && *p == ',') p++;
    m0 = find_member_from(p, e, "merges");
    if (!m0 || *m0 != '[' || !strlist_reserve(merges, (size_t)(e - m0))) goto fail;
    // merges: ["a b", ...] or [["a", "b"], ...]
    p = skip_ws(m0 + 1, e);
    while (p < e && (*p == '"' || *p == '[')) {
        if (*p == '"') {
            // Split "a b" at the first space after the first byte, as the cJSON path does: the
            // space becomes the first half's NUL and the second half a new entry.
            int first = merges->n;
            if (!(p = push_string(merges, p, e, 0, &scratch, &scap))) goto fail;
            char *s0 = merges->text + merges->off[first];
            uint32_t total = merges->slen[first];
            char *sp = total > 1 ? memchr(s0 + 1, ' ', total - 1) : NULL;
            if (!sp || !strlist_grow(merges)) goto fail;
            *sp = 0;
            uint32_t al = (uint32_t)(sp - s0);
            merges->slen[first] = al;
            merges->off[first + 1] = merges->off[first] + al + 1;
            merges->slen[first + 1] = total - al - 1;
            merges->id[first + 1] = 0;
            merges->n++;
        } else {
            p = skip_ws(p + 1, e);
            for (int j = 0; j < 2; j++) {
                if (p >= e || *p != '"' || !(p = push_string(merges, p, e, 0, &scratch, &scap)))
                    goto fail;
                p = skip_ws(p, e);
                if (j == 0) {
                    if (p >= e || *p != ',') goto fail;
                    p = skip_ws(p + 1, e);
                }
            }
            if (p >= e || *p != ']') goto fail;
            p++;
        }
        p = skip_ws(p, e);
        if (p < e && *p == ',') p = skip_ws(p + 1, e);
    }
    if (p >= e || *p != ']') goto fail;
    const char *m1 = p + 1;
    // The document without them: [doc, v0) "{}" [v1, m0) "[]" [m1, e).
    size_t a = (size_t)(v0 - doc), b = (size_t)(m0 - v1), c = (size_t)(e - m1);
    char *r = malloc(a + b + c + 5);
    if (!r) goto fail;
    memcpy(r, doc, a);
    memcpy(r + a, "{}", 2);
    memcpy(r + a + 2, v1, b);
    memcpy(r + a + 2 + b, "[]", 2);
    memcpy(r + a + 4 + b, m1, c);
    r[a + b + c + 4] = 0;
    *rest = r;
    *rest_len = a + b + c + 4;
    free(scratch);
    return true;
fail:
    free(scratch);
    strlist_free(vocab);
    strlist_free(merges);
    memset(vocab, 0, sizeof *vocab);
    memset(merges, 0, sizeof *merges);
    return false;
}

// The same lists from the parsed document (the fallback path).
static int lists_from_json(const cJSON *vocab, const cJSON *merges, strlist *vl, strlist *ml,
                           const char *src) {
    const cJSON *e;
    cJSON_ArrayForEach(e, vocab) {
        if (!cJSON_IsNumber(e) || e->valuedouble < 0 || e->valuedouble > INT32_MAX / 2)
            return speck_set_error(SPECK_ERR_FORMAT, "%s: model.vocab[\"%s\"]: bad id", src,
                                   e->string);
        if (!strlist_push(vl, e->string, strlen(e->string), e->valueint))
            return speck_set_error(SPECK_ERR_NOMEM, "%s: out of memory", src);
    }
    int rank = 0;
    cJSON_ArrayForEach(e, merges) {
        const char *a, *b;
        size_t al, bl;
        if (cJSON_IsString(e)) { // "left right"
            const char *s = e->valuestring;
            const char *sp = s[0] ? strchr(s + 1, ' ') : NULL;
            if (!sp)
                return speck_set_error(SPECK_ERR_FORMAT, "%s: model.merges[%d]: no space", src,
                                       rank);
            a = s, al = (size_t)(sp - s), b = sp + 1, bl = strlen(sp + 1);
        } else if (cJSON_IsArray(e) && cJSON_GetArraySize(e) == 2 &&
                   cJSON_IsString(cJSON_GetArrayItem(e, 0)) &&
                   cJSON_IsString(cJSON_GetArrayItem(e, 1))) { // ["left", "right"]
            a = cJSON_GetArrayItem(e, 0)->valuestring, al = strlen(a);
            b = cJSON_GetArrayItem(e, 1)->valuestring, bl = strlen(b);
        } else {
            return speck_set_error(SPECK_ERR_FORMAT, "%s: model.merges[%d]: not a pair", src, rank);
        }
        if (!strlist_push(ml, a, al, 0) || !strlist_push(ml, b, bl, 0))
            return speck_set_error(SPECK_ERR_NOMEM, "%s: out of memory", src);
        rank++;
    }
    return SPECK_OK;
}

static int load_merges(speck_vocab *v, const strlist *ml, const char *src) {
    int n = ml->n / 2;
    if (tok_merges_init(v, n)) return speck_set_error(SPECK_ERR_NOMEM, "%s: out of memory", src);
    // Added in batches: tok_add_merges overlaps the map lookups of a whole batch.
    tok_merge_text batch[256];
    for (int base = 0; base < n; base += 256) {
        int nb = n - base < 256 ? n - base : 256;
        for (int j = 0; j < nb; j++) {
            int i = 2 * (base + j);
            batch[j] = (tok_merge_text){ml->text + ml->off[i], ml->text + ml->off[i + 1],
                                        ml->slen[i], ml->slen[i + 1]};
        }
        if (tok_add_merges(v, batch, nb, base))
            return speck_set_error(SPECK_ERR_NOMEM, "%s: out of memory", src);
    }
    return SPECK_OK;
}

speck_vocab *tok_vocab_from_hf(const char *path, const char *cfg_path) {
    // Mapped read-only rather than read: the scan touches most of it once, and copying 10 MB
    // into fresh pages costs more than the scan.
    strlist vl = {0}, ml = {0};
    int fd = open(path, O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        if (fd >= 0) close(fd);
        speck_set_error(SPECK_ERR_IO, "%s: cannot open", path);
        return NULL;
    }
    size_t doc_len = (size_t)st.st_size;
    if (doc_len > SPECK_JSON_MAX_BYTES) {
        close(fd);
        speck_set_error(SPECK_ERR_FORMAT,
                        "%s: %zu bytes, more than the %zu MB a JSON file may have", path, doc_len,
                        SPECK_JSON_MAX_BYTES >> 20);
        return NULL;
    }
    void *map = doc_len ? mmap(NULL, doc_len, PROT_READ, MAP_PRIVATE, fd, 0) : MAP_FAILED;
    close(fd);
    char *rest = NULL;
    size_t rest_len = 0;
    bool scanned = false;
    if (map != MAP_FAILED) {
        scanned = scan_model(map, doc_len, &vl, &ml, &rest, &rest_len);
        munmap(map, doc_len);
    }
    cJSON *tj = scanned ? parse_json_buf(path, rest, rest_len) : NULL;
    if (!tj) tj = parse_json(path); // the whole file: a syntax error's offset is the file's
    if (!tj) {
        strlist_free(&vl);
        strlist_free(&ml);
        return NULL;
    }
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
    const char *cp = jstr(model, "continuing_subword_prefix"),
               *es = jstr(model, "end_of_word_suffix");
    if ((cp && *cp) || (es && *es)) {
        unsupported(path, "model", "continuing_subword_prefix / end_of_word_suffix");
        goto fail;
    }
    if (!scanned && lists_from_json(vocab, merges, &vl, &ml, path)) goto fail;
    // Ids may be sparse and added tokens may lie beyond the model vocabulary.
    int64_t n = 0;
    const cJSON *e;
    for (int i = 0; i < vl.n; i++)
        if (vl.id[i] + 1 > n) n = vl.id[i] + 1;
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
    // Ids may be sparse, but the token table is allocated up to the largest: bounded by the
    // document's size (a 30-byte file naming id 10^9 would otherwise take 17 GB).
    if (n > SPECK_MAX_VOCAB || (size_t)n > doc_len) {
        speck_set_error(SPECK_ERR_FORMAT,
                        "%s: token id %lld is too large (at most %d, and below the file's %zu "
                        "bytes)",
                        path, (long long)(n - 1), SPECK_MAX_VOCAB, doc_len);
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
    for (int i = 0; i < vl.n; i++) {
        int32_t id = vl.id[i];
        if (tok_set_token(v, id, vl.text + vl.off[i], vl.slen[i])) {
            speck_set_error(SPECK_ERR_NOMEM, "%s: out of memory", path);
            goto fail;
        }
        v->type[id] = TOK_NORMAL;
        v->scores[id] = -(float)id;
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
    if (load_merges(v, &ml, path)) goto fail;
    if (apply_normalizer(v, cJSON_GetObjectItemCaseSensitive(tj, "normalizer"), path) ||
        apply_pretok(v, cJSON_GetObjectItemCaseSensitive(tj, "pre_tokenizer"), path))
        goto fail;
    v->algo = ALGO_BPE_RANKS;
    v->kind = v->byte_level ? SPECK_VOCAB_BPE : SPECK_VOCAB_SPM;
    v->strip_lead_space =
        !v->byte_level && decoder_strips(cJSON_GetObjectItemCaseSensitive(tj, "decoder"));
    if (load_config(v, tj, cfg_path)) goto fail;
    if (v->add_bos && v->bos < 0) v->add_bos = false;
    if (v->add_eos && v->eos < 0) v->add_eos = false;
    if (tok_vocab_finish(v, path)) goto fail;
    cJSON_Delete(tj);
    strlist_free(&vl);
    strlist_free(&ml);
    return v;
fail:
    speck_vocab_free(v);
    cJSON_Delete(tj);
    strlist_free(&vl);
    strlist_free(&ml);
    return NULL;
}
