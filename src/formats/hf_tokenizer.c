// Tokenizers between Hugging Face tokenizer.json and GGUF tokenizer.ggml.* keys, written the way
// llama.cpp's converter writes them:
//   byte-level BPE (GPT-2 / Llama 3 / Qwen) -> model "gpt2": tokens, token_type, merges and a
//     pre-tokenizer name recognised from the tokenizer.json regexes;
//   SentencePiece-style BPE (byte_fallback, U+2581 for spaces; Llama 2, Mistral) -> model
//     "llama": tokens, scores, token_type. GGUF "llama" vocabularies merge by token score, so the
//     score of a token is minus the rank of the first merge that creates it: the pair merged
//     first by the HF merge list is then the best-scoring pair for speck / llama.cpp too.
// Export goes the other way; for "llama" vocabularies the merge list is rebuilt from the scores.
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/limits.h"
#include "formats/hf_internal.h"
#include "tokenizer/tokenizer_internal.h"

cJSON *hf_read_json(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        speck_set_error(SPECK_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    long n = -1;
    if (fseek(f, 0, SEEK_END) == 0) n = ftell(f);
    if (n > (long)SPECK_JSON_MAX_BYTES) {
        fclose(f);
        speck_set_error(SPECK_ERR_FORMAT,
                        "%s: %ld bytes, more than the %zu MB a JSON file may have", path, n,
                        SPECK_JSON_MAX_BYTES >> 20);
        return NULL;
    }
    char *buf = n >= 0 && fseek(f, 0, SEEK_SET) == 0 ? malloc((size_t)n + 1) : NULL;
    if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        fclose(f);
        speck_set_error(SPECK_ERR_IO, "%s: cannot read", path);
        return NULL;
    }
    fclose(f);
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(buf, (size_t)n, &end, 0);
    if (!j)
        speck_set_error(SPECK_ERR_FORMAT, "%s: malformed JSON near byte %zu", path,
                        end ? (size_t)(end - buf) : (size_t)0);
    free(buf);
    return j;
}

int hf_write_json(const cJSON *j, const char *path) {
    char *s = cJSON_Print(j);
    if (!s) return speck_set_error(SPECK_ERR_NOMEM, "%s: out of memory", path);
    FILE *f = fopen(path, "wb");
    size_t n = strlen(s);
    int ok = f && fwrite(s, 1, n, f) == n && fputc('\n', f) != EOF;
    int err = errno;
    if (f && fclose(f) != 0) ok = 0;
    free(s);
    return ok ? 0 : speck_set_error(SPECK_ERR_IO, "%s: write failed: %s", path, strerror(err));
}

/* ---- pre-tokenizers: tokenizer.json regexes <-> llama.cpp names ---- */

#define RE_GPT2 "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"
#define RE_LLAMA3                                                                                  \
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "                     \
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define RE_QWEN2                                                                                   \
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "                          \
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"

// The regex sequence each known pre-tokenizer applies (what tokenizer.json spells out).
static const struct {
    const char *name;
    const char *re[3];
    bool nfc;
} KNOWN_PRE[] = {
    {"llama-bpe", {RE_LLAMA3}, false},
    {"qwen2", {RE_QWEN2}, true},
    {"gpt-2", {RE_GPT2}, false},
    {"smollm", {"\\p{N}", RE_GPT2}, false},
};

// Collect the regexes a tokenizer.json pre_tokenizer applies, in order.
static int pre_regexes(const cJSON *p, const char **re, int *n, const char *src) {
    if (!p || cJSON_IsNull(p)) return 0;
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(p, "type");
    const char *type = cJSON_IsString(t) ? t->valuestring : "";
    if (!strcmp(type, "Sequence")) {
        const cJSON *e;
        cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(p, "pretokenizers")) {
            int rc = pre_regexes(e, re, n, src);
            if (rc) return rc;
        }
        return 0;
    }
    if (*n >= 8)
        return speck_set_error(SPECK_ERR_UNSUPPORTED, "%s: pre_tokenizer: too many steps", src);
    if (!strcmp(type, "ByteLevel")) {
        const cJSON *u = cJSON_GetObjectItemCaseSensitive(p, "use_regex");
        if (!cJSON_IsFalse(u)) re[(*n)++] = RE_GPT2;
        return 0;
    }
    if (!strcmp(type, "Split")) {
        const cJSON *r = cJSON_GetObjectItemCaseSensitive(
            cJSON_GetObjectItemCaseSensitive(p, "pattern"), "Regex");
        if (cJSON_IsString(r)) {
            re[(*n)++] = r->valuestring;
            return 0;
        }
    }
    if (!strcmp(type, "Digits")) {
        re[(*n)++] = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(p, "individual_digits"))
                         ? "\\p{N}"
                         : "\\p{N}+";
        return 0;
    }
    return speck_set_error(SPECK_ERR_UNSUPPORTED,
                           "%s: pre_tokenizer: step '%s' is not one the converter recognises", src,
                           type);
}

static int detect_pre(const cJSON *tj, const char *src, const char **name) {
    const char *re[8];
    int n = 0;
    int rc = pre_regexes(cJSON_GetObjectItemCaseSensitive(tj, "pre_tokenizer"), re, &n, src);
    if (rc) return rc;
    for (size_t k = 0; k < sizeof KNOWN_PRE / sizeof KNOWN_PRE[0]; k++) {
        int m = 0;
        while (m < 3 && KNOWN_PRE[k].re[m]) m++;
        bool same = m == n;
        for (int i = 0; same && i < n; i++) same = !strcmp(re[i], KNOWN_PRE[k].re[i]);
        if (same) {
            *name = KNOWN_PRE[k].name;
            return 0;
        }
    }
    return speck_set_error(SPECK_ERR_UNSUPPORTED,
                           "%s: pre_tokenizer: regex '%.120s' is not a known pre-tokenizer "
                           "(known: llama-bpe, qwen2, gpt-2, smollm)",
                           src, n ? re[0] : "(none)");
}

/* ---- tokenizer.json -> GGUF ---- */

typedef struct {
    int32_t rank, left, right;
} merge_rec;

static int by_rank(const void *a, const void *b) {
    const merge_rec *x = a, *y = b;
    return (x->rank > y->rank) - (x->rank < y->rank);
}

// The vocabulary's merges in rank order (those whose halves and result are tokens).
static merge_rec *sorted_merges(const speck_vocab *v, int64_t *n) {
    merge_rec *m = malloc(((size_t)v->merges.n + 1) * sizeof *m);
    if (!m) return NULL;
    int64_t k = 0;
    for (uint64_t i = 0; v->merges.slots && i <= v->merges.mask; i++) {
        const tok_pair *p = &v->merges.slots[i];
        if (!p->key) continue;
        uint64_t key = p->key - 1;
        m[k++] = (merge_rec){p->rank, (int32_t)(key >> 32), (int32_t)(key & 0xffffffffu)};
    }
    qsort(m, (size_t)k, sizeof *m, by_rank);
    *n = k;
    return m;
}

int hf_tokenizer_to_gguf(speck_gguf_writer *w, const char *dir, int64_t n_vocab) {
    char tj_path[PATH_MAX];
    snprintf(tj_path, sizeof tj_path, "%s/tokenizer.json", dir);
    struct stat st;
    if (stat(tj_path, &st) != 0) return 0; // no tokenizer: weights only
    speck_vocab *v = speck_vocab_load(dir);
    if (!v) return SPECK_ERR_FORMAT;
    cJSON *tj = NULL;
    char **texts = NULL, *pads = NULL;
    uint64_t *lens = NULL;
    int32_t *types = NULL;
    float *scores = NULL;
    merge_rec *mr = NULL;
    char **mstr = NULL;
    int64_t nm = 0;
    int rc = 0;
    // Added tokens past the embedding's rows could never be fed to the model: they are left out
    // (Gemma 3's text checkpoints ship the multimodal tokenizer with <image_soft_token> at
    // 262144 and 262144 rows). Any other token past them is an error.
    for (int64_t i = n_vocab; i < v->n_tokens; i++)
        if ((v->type[i] != TOK_CONTROL && v->type[i] != TOK_USER_DEFINED) || i == v->bos ||
            i == v->eos || i == v->unk || i == v->pad) {
            rc = speck_set_error(SPECK_ERR_FORMAT,
                                 "%s: %d tokens but the model's embedding has only %lld rows",
                                 tj_path, v->n_tokens, (long long)n_vocab);
            goto done;
        }
    bool bpe = v->byte_level;
    const char *pre = NULL;
    if (bpe) {
        if (!(tj = hf_read_json(tj_path))) {
            rc = SPECK_ERR_FORMAT;
            goto done;
        }
        if ((rc = detect_pre(tj, tj_path, &pre))) goto done;
    }
    texts = calloc((size_t)n_vocab, sizeof *texts);
    lens = calloc((size_t)n_vocab, sizeof *lens);
    types = calloc((size_t)n_vocab, sizeof *types);
    scores = calloc((size_t)n_vocab, sizeof *scores);
    pads = malloc((size_t)n_vocab * 16); // "[PAD%d]" names of ids no token uses
    mr = sorted_merges(v, &nm);
    if (!texts || !lens || !types || !scores || !pads || !mr) {
        rc = speck_set_error(SPECK_ERR_NOMEM, "%s: out of memory", tj_path);
        goto done;
    }
    for (int64_t i = 0; i < n_vocab; i++) {
        bool real = i < v->n_tokens && !(v->type[i] == TOK_UNUSED && !v->text_len[i]);
        if (real) {
            texts[i] = v->text[i];
            lens[i] = v->text_len[i];
            types[i] = v->type[i];
        } else {
            texts[i] = pads + 16 * i;
            lens[i] = (uint64_t)snprintf(texts[i], 16, "[PAD%lld]", (long long)i);
            types[i] = TOK_UNUSED;
        }
    }
    if (!bpe) {
        // Score = -(rank of the first merge making the token); tokens no merge makes rank
        // below every merged one, reserved pieces (control, byte) score 0 as in SentencePiece.
        for (int64_t i = 0; i < n_vocab; i++)
            scores[i] =
                (types[i] == TOK_NORMAL || types[i] == TOK_USER_DEFINED) ? -(float)(nm + i) : 0.0f;
        for (int64_t k = nm - 1; k >= 0; k--) {
            const tok_pair *p = tok_pair_find(&v->merges, mr[k].left, mr[k].right);
            if (p && p->id >= 0 && p->id < n_vocab) scores[p->id] = -(float)mr[k].rank;
        }
        if (v->unk >= 0) types[v->unk] = TOK_UNKNOWN;
    }
    rc |= speck_gguf_set_str(w, "tokenizer.ggml.model", bpe ? "gpt2" : "llama");
    if (bpe)
        rc |= speck_gguf_set_str(w, "tokenizer.ggml.pre", pre);
    else
        rc |= speck_gguf_set_str(w, "tokenizer.ggml.pre", "default");
    rc |= speck_gguf_set_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)texts, lens,
                                 n_vocab);
    if (!bpe)
        rc |= speck_gguf_set_arr(w, "tokenizer.ggml.scores", SPECK_GGUF_FLOAT32, scores, n_vocab);
    rc |= speck_gguf_set_arr(w, "tokenizer.ggml.token_type", SPECK_GGUF_INT32, types, n_vocab);
    if (bpe) {
        mstr = calloc((size_t)nm + 1, sizeof *mstr);
        if (!mstr) rc = SPECK_ERR_NOMEM;
        for (int64_t k = 0; !rc && k < nm; k++) {
            size_t a = v->text_len[mr[k].left], b = v->text_len[mr[k].right];
            if (!(mstr[k] = malloc(a + b + 2))) {
                rc = SPECK_ERR_NOMEM;
                break;
            }
            memcpy(mstr[k], v->text[mr[k].left], a);
            mstr[k][a] = ' ';
            memcpy(mstr[k] + a + 1, v->text[mr[k].right], b);
            mstr[k][a + b + 1] = 0;
        }
        if (!rc)
            rc = speck_gguf_set_arr_str(w, "tokenizer.ggml.merges", (const char *const *)mstr, NULL,
                                        nm);
    } else {
        rc |= speck_gguf_set_bool(w, "tokenizer.ggml.add_space_prefix", v->prefix_meta);
    }
    if (v->bos >= 0) rc |= speck_gguf_set_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)v->bos);
    if (v->eos >= 0) rc |= speck_gguf_set_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)v->eos);
    if (v->unk >= 0)
        rc |= speck_gguf_set_u32(w, "tokenizer.ggml.unknown_token_id", (uint32_t)v->unk);
    if (v->pad >= 0)
        rc |= speck_gguf_set_u32(w, "tokenizer.ggml.padding_token_id", (uint32_t)v->pad);
    rc |= speck_gguf_set_bool(w, "tokenizer.ggml.add_bos_token", v->add_bos);
    rc |= speck_gguf_set_bool(w, "tokenizer.ggml.add_eos_token", v->add_eos);
    if (v->chat_template) rc |= speck_gguf_set_str(w, "tokenizer.chat_template", v->chat_template);
    if (rc) rc = speck_set_error(SPECK_ERR_NOMEM, "%s: out of memory", tj_path);
done:
    for (int64_t k = 0; mstr && k < nm; k++) free(mstr[k]);
    free(mstr);
    free(mr);
    free(texts);
    free(lens);
    free(types);
    free(scores);
    free(pads);
    cJSON_Delete(tj);
    speck_vocab_free(v);
    return rc;
}

/* ---- GGUF -> tokenizer.json ---- */

typedef struct {
    const speck_gguf *g;
    int64_t kt, ky, ks;
    int64_t n;
} gvocab;

static const char *gtok(const gvocab *gv, int64_t i, uint64_t *len) {
    *len = 0;
    const char *s = speck_gguf_arr_str(gv->g, gv->kt, i, len);
    return s ? s : "";
}

static int32_t gtype(const gvocab *gv, int64_t i) {
    if (gv->ky < 0) return TOK_NORMAL;
    int32_t t;
    memcpy(&t, (const uint8_t *)speck_gguf_arr_data(gv->g, gv->ky) + 4 * i, 4);
    return t;
}

static float gscore(const gvocab *gv, int64_t i) {
    if (gv->ks < 0) return -(float)i;
    float s;
    memcpy(&s, (const uint8_t *)speck_gguf_arr_data(gv->g, gv->ks) + 4 * i, 4);
    return s;
}

static char *dupn(const char *s, uint64_t n) {
    char *r = malloc(n + 1);
    if (r) memcpy(r, s, n), r[n] = 0;
    return r;
}

// JSON strings as cJSON holds them end at a NUL: a token or merge containing one cannot be
// exported (it would be cut short, or lose its space).
static int nul_error(const char *src, const char *what, int64_t i) {
    return speck_set_error(SPECK_ERR_UNSUPPORTED,
                           "%s: tokenizer.ggml.%s[%lld] contains a NUL byte, which tokenizer.json "
                           "cannot hold",
                           src, what, (long long)i);
}

// NUL-terminated copy of token i (malloc'd).
static char *gtok_dup(const gvocab *gv, int64_t i) {
    uint64_t len;
    const char *s = gtok(gv, i, &len);
    return dupn(s, len);
}

typedef struct {
    float score;
    int32_t id, left, right;
    uint32_t split; // byte length of the left half
} spm_merge;

static int by_spm(const void *a, const void *b) {
    const spm_merge *x = a, *y = b;
    if (x->score != y->score) return x->score > y->score ? -1 : 1;
    if (x->id != y->id) return x->id < y->id ? -1 : 1;
    return (x->left > y->left) - (x->left < y->left);
}

// SentencePiece vocabulary -> BPE merge list: every split of a normal token into two normal
// tokens, best-scoring results first (the order SentencePiece would merge them in).
static int spm_merges(const gvocab *gv, speck_vocab *v, cJSON *arr, const char *src) {
    size_t cap = 1024, n = 0;
    spm_merge *m = malloc(cap * sizeof *m);
    if (!m) return speck_set_error(SPECK_ERR_NOMEM, "%s: out of memory", src);
    for (int64_t i = 0; i < gv->n; i++) {
        if (gtype(gv, i) != TOK_NORMAL) continue;
        uint64_t len;
        const char *s = gtok(gv, i, &len);
        for (uint64_t k = 1; k < len; k++) {
            if (((uint8_t)s[k] & 0xC0) == 0x80) continue; // inside a UTF-8 sequence
            int32_t a = tok_find(v, s, k), b = tok_find(v, s + k, len - k);
            if (a < 0 || b < 0 || gtype(gv, a) != TOK_NORMAL || gtype(gv, b) != TOK_NORMAL)
                continue;
            if (n == cap) {
                spm_merge *p = realloc(m, (cap *= 2) * sizeof *m);
                if (!p) {
                    free(m);
                    return speck_set_error(SPECK_ERR_NOMEM, "%s: out of memory", src);
                }
                m = p;
            }
            m[n++] = (spm_merge){gscore(gv, i), (int32_t)i, a, b, (uint32_t)k};
        }
    }
    qsort(m, n, sizeof *m, by_spm);
    int rc = 0;
    for (size_t k = 0; k < n && !rc; k++) {
        uint64_t len;
        const char *s = gtok(gv, m[k].id, &len);
        cJSON *pair = cJSON_CreateArray();
        char *l = dupn(s, m[k].split), *r = dupn(s + m[k].split, len - m[k].split);
        if (!pair || !l || !r || !cJSON_AddItemToArray(pair, cJSON_CreateString(l)) ||
            !cJSON_AddItemToArray(pair, cJSON_CreateString(r)) || !cJSON_AddItemToArray(arr, pair))
            rc = speck_set_error(SPECK_ERR_NOMEM, "%s: out of memory", src);
        free(l);
        free(r);
    }
    free(m);
    return rc;
}

static int64_t gkey(const speck_gguf *g, const char *k) {
    return speck_gguf_find_key(g, k);
}

static int32_t gid(const speck_gguf *g, const char *k) {
    int64_t i = gkey(g, k);
    return i < 0 ? -1 : (int32_t)speck_gguf_get_int(g, i);
}

static bool gbool(const speck_gguf *g, const char *k, bool dflt) {
    int64_t i = gkey(g, k);
    return i < 0 ? dflt : speck_gguf_get_int(g, i) != 0;
}

static cJSON *obj(cJSON *parent, const char *key) {
    cJSON *o = cJSON_CreateObject();
    if (parent && key) cJSON_AddItemToObject(parent, key, o);
    return o;
}

static cJSON *template_processor(const gvocab *gv, int32_t bos, int32_t eos, bool add_bos,
                                 bool add_eos) {
    cJSON *pp = obj(NULL, NULL);
    cJSON_AddStringToObject(pp, "type", "TemplateProcessing");
    cJSON *single = cJSON_AddArrayToObject(pp, "single");
    cJSON *pair = cJSON_AddArrayToObject(pp, "pair");
    cJSON *sp = cJSON_AddObjectToObject(pp, "special_tokens");
    int32_t ids[2] = {add_bos ? bos : -1, add_eos ? eos : -1};
    for (int part = 0; part < 2; part++) {
        cJSON *list = part ? pair : single;
        for (int seq = 0; seq < (part ? 2 : 1); seq++) {
            const char *sid = seq ? "B" : "A";
            for (int k = 0; k < 3; k++) {
                cJSON *e = cJSON_CreateObject();
                cJSON *in;
                if (k == 1) {
                    in = cJSON_AddObjectToObject(e, "Sequence");
                    cJSON_AddStringToObject(in, "id", sid);
                } else {
                    int32_t id = ids[k / 2];
                    if (id < 0) {
                        cJSON_Delete(e);
                        continue;
                    }
                    char *t = gtok_dup(gv, id);
                    in = cJSON_AddObjectToObject(e, "SpecialToken");
                    cJSON_AddStringToObject(in, "id", t ? t : "");
                    free(t);
                }
                cJSON_AddNumberToObject(in, "type_id", seq);
                cJSON_AddItemToArray(list, e);
            }
        }
    }
    for (int k = 0; k < 2; k++) {
        if (ids[k] < 0) continue;
        char *t = gtok_dup(gv, ids[k]);
        if (!t || cJSON_GetObjectItemCaseSensitive(sp, t)) {
            free(t);
            continue;
        }
        cJSON *e = cJSON_AddObjectToObject(sp, t);
        cJSON_AddStringToObject(e, "id", t);
        cJSON *a = cJSON_AddArrayToObject(e, "ids");
        cJSON_AddItemToArray(a, cJSON_CreateNumber(ids[k]));
        cJSON *ts = cJSON_AddArrayToObject(e, "tokens");
        cJSON_AddItemToArray(ts, cJSON_CreateString(t));
        free(t);
    }
    return pp;
}

// The GPT-2 regex as one object: the export tells it apart from the others by address, which two
// copies of a string literal are not guaranteed to share.
static const char re_gpt2[] = RE_GPT2;

static const char *pre_regex_for(const char *pre, bool *nfc, bool *digits) {
    *nfc = *digits = false;
    if (!pre || !strcmp(pre, "gpt-2") || !strcmp(pre, "gpt2")) return re_gpt2;
    if (!strcmp(pre, "llama-bpe") || !strcmp(pre, "llama3") || !strcmp(pre, "llama-v3"))
        return RE_LLAMA3;
    if (!strcmp(pre, "qwen2")) return *nfc = true, RE_QWEN2;
    if (!strcmp(pre, "smollm") || !strcmp(pre, "starcoder")) return *digits = true, re_gpt2;
    return NULL;
}

int hf_tokenizer_from_gguf(const speck_gguf *g, const char *dir, int n_ctx) {
    const char *src = speck_gguf_path(g);
    int64_t km = gkey(g, "tokenizer.ggml.model");
    const char *model = km >= 0 ? speck_gguf_get_str(g, km) : NULL;
    if (!model) return 0; // no tokenizer in the file: weights and config only
    bool bpe = !strcmp(model, "gpt2");
    if (!bpe && strcmp(model, "llama"))
        return speck_set_error(SPECK_ERR_UNSUPPORTED,
                               "%s: tokenizer.ggml.model '%s' cannot be exported (llama, gpt2)",
                               src, model);
    gvocab gv = {g, gkey(g, "tokenizer.ggml.tokens"), gkey(g, "tokenizer.ggml.token_type"),
                 gkey(g, "tokenizer.ggml.scores"), 0};
    if (gv.kt < 0)
        return speck_set_error(SPECK_ERR_FORMAT, "%s: tokenizer.ggml.tokens: missing", src);
    gv.n = speck_gguf_arr_n(g, gv.kt);
    if (gv.ky >= 0 && speck_gguf_arr_n(g, gv.ky) != gv.n) gv.ky = -1;
    if (gv.ks >= 0 && speck_gguf_arr_n(g, gv.ks) != gv.n) gv.ks = -1;
    int64_t kp = gkey(g, "tokenizer.ggml.pre");
    const char *pre = kp >= 0 ? speck_gguf_get_str(g, kp) : NULL;
    bool nfc = false, digits = false;
    const char *re = bpe ? pre_regex_for(pre, &nfc, &digits) : NULL;
    if (bpe && !re)
        return speck_set_error(SPECK_ERR_UNSUPPORTED,
                               "%s: tokenizer.ggml.pre '%s' cannot be exported (llama-bpe, qwen2, "
                               "gpt-2, smollm)",
                               src, pre);
    // The GGUF vocabulary gives the text -> id map used to rebuild SentencePiece merges.
    speck_vocab *v = speck_vocab_from_gguf(g);
    if (!v) return SPECK_ERR_FORMAT;
    int32_t bos = gid(g, "tokenizer.ggml.bos_token_id"),
            eos = gid(g, "tokenizer.ggml.eos_token_id"),
            unk = gid(g, "tokenizer.ggml.unknown_token_id"),
            pad = gid(g, "tokenizer.ggml.padding_token_id");
    bool add_bos = gbool(g, "tokenizer.ggml.add_bos_token", v->add_bos),
         add_eos = gbool(g, "tokenizer.ggml.add_eos_token", false),
         prefix = gbool(g, "tokenizer.ggml.add_space_prefix", true);
    int rc = 0;
    cJSON *tj = cJSON_CreateObject(), *cfg = cJSON_CreateObject();
    cJSON_AddStringToObject(tj, "version", "1.0");
    cJSON_AddNullToObject(tj, "truncation");
    cJSON_AddNullToObject(tj, "padding");
    cJSON *added = cJSON_AddArrayToObject(tj, "added_tokens");
    cJSON *model_j = cJSON_CreateObject();
    cJSON *vocab = cJSON_CreateObject(), *merges = cJSON_CreateArray();
    for (int64_t i = 0; i < gv.n && !rc; i++) {
        uint64_t len;
        const char *text = gtok(&gv, i, &len);
        if (memchr(text, 0, len)) {
            rc = nul_error(src, "tokens", i);
            break;
        }
        char *t = gtok_dup(&gv, i);
        if (!t) {
            rc = speck_set_error(SPECK_ERR_NOMEM, "%s: out of memory", src);
            break;
        }
        int32_t ty = gtype(&gv, i);
        bool pad_name = ty == TOK_UNUSED && !strncmp(t, "[PAD", 4);
        if (ty == TOK_CONTROL || ty == TOK_USER_DEFINED || (ty == TOK_UNKNOWN && !bpe)) {
            cJSON *e = cJSON_CreateObject();
            cJSON_AddNumberToObject(e, "id", (double)i);
            cJSON_AddStringToObject(e, "content", t);
            cJSON_AddBoolToObject(e, "single_word", false);
            cJSON_AddBoolToObject(e, "lstrip", false);
            cJSON_AddBoolToObject(e, "rstrip", false);
            cJSON_AddBoolToObject(e, "normalized", false);
            cJSON_AddBoolToObject(e, "special", ty != TOK_USER_DEFINED);
            cJSON_AddItemToArray(added, e);
        }
        // Byte-level vocabularies keep added tokens out of model.vocab (as HF ships them);
        // SentencePiece ones list every piece. A text that repeats keeps the id the GGUF
        // vocabulary's own lookup gives it (a JSON object cannot hold it twice).
        bool in_model = !pad_name && (!bpe || ty == TOK_NORMAL || ty == TOK_BYTE);
        if (in_model && tok_find(v, t, strlen(t)) == (int32_t)i)
            cJSON_AddNumberToObject(vocab, t, (double)i);
        free(t);
    }
    if (!rc && bpe) {
        int64_t kg = gkey(g, "tokenizer.ggml.merges");
        for (int64_t i = 0; kg >= 0 && i < speck_gguf_arr_n(g, kg); i++) {
            uint64_t len = 0;
            const char *ms = speck_gguf_arr_str(g, kg, i, &len);
            if (ms && memchr(ms, 0, len)) {
                rc = nul_error(src, "merges", i);
                break;
            }
            char *t = dupn(ms ? ms : "", ms ? len : 0);
            cJSON_AddItemToArray(merges, cJSON_CreateString(t ? t : ""));
            free(t);
        }
    } else if (!rc) {
        rc = spm_merges(&gv, v, merges, src);
    }
    if (bpe) {
        if (nfc)
            cJSON_AddStringToObject(obj(tj, "normalizer"), "type", "NFC");
        else
            cJSON_AddNullToObject(tj, "normalizer");
        cJSON *pt = obj(tj, "pre_tokenizer");
        cJSON_AddStringToObject(pt, "type", "Sequence");
        cJSON *seq = cJSON_AddArrayToObject(pt, "pretokenizers");
        if (digits) {
            cJSON *d = cJSON_CreateObject();
            cJSON_AddStringToObject(d, "type", "Digits");
            cJSON_AddBoolToObject(d, "individual_digits", true);
            cJSON_AddItemToArray(seq, d);
        } else if (re != re_gpt2) {
            cJSON *s = cJSON_CreateObject();
            cJSON_AddStringToObject(s, "type", "Split");
            cJSON_AddStringToObject(obj(s, "pattern"), "Regex", re);
            cJSON_AddStringToObject(s, "behavior", "Isolated");
            cJSON_AddBoolToObject(s, "invert", false);
            cJSON_AddItemToArray(seq, s);
        }
        cJSON *bl = cJSON_CreateObject();
        cJSON_AddStringToObject(bl, "type", "ByteLevel");
        cJSON_AddBoolToObject(bl, "add_prefix_space", false);
        cJSON_AddBoolToObject(bl, "trim_offsets", true);
        cJSON_AddBoolToObject(bl, "use_regex", re == re_gpt2);
        cJSON_AddItemToArray(seq, bl);
        cJSON *dec = obj(tj, "decoder");
        cJSON_AddStringToObject(dec, "type", "ByteLevel");
        cJSON_AddBoolToObject(dec, "add_prefix_space", true);
        cJSON_AddBoolToObject(dec, "trim_offsets", true);
        cJSON_AddBoolToObject(dec, "use_regex", true);
    } else {
        cJSON *norm = obj(tj, "normalizer");
        cJSON_AddStringToObject(norm, "type", "Sequence");
        cJSON *ns = cJSON_AddArrayToObject(norm, "normalizers");
        if (prefix) {
            cJSON *p = cJSON_CreateObject();
            cJSON_AddStringToObject(p, "type", "Prepend");
            cJSON_AddStringToObject(p, "prepend", "\xE2\x96\x81");
            cJSON_AddItemToArray(ns, p);
        }
        cJSON *r = cJSON_CreateObject();
        cJSON_AddStringToObject(r, "type", "Replace");
        cJSON_AddStringToObject(obj(r, "pattern"), "String", " ");
        cJSON_AddStringToObject(r, "content", "\xE2\x96\x81");
        cJSON_AddItemToArray(ns, r);
        cJSON_AddNullToObject(tj, "pre_tokenizer");
        cJSON *dec = obj(tj, "decoder");
        cJSON_AddStringToObject(dec, "type", "Sequence");
        cJSON *ds = cJSON_AddArrayToObject(dec, "decoders");
        cJSON *d1 = cJSON_CreateObject();
        cJSON_AddStringToObject(d1, "type", "Replace");
        cJSON_AddStringToObject(obj(d1, "pattern"), "String", "\xE2\x96\x81");
        cJSON_AddStringToObject(d1, "content", " ");
        cJSON_AddItemToArray(ds, d1);
        cJSON *d2 = cJSON_CreateObject();
        cJSON_AddStringToObject(d2, "type", "ByteFallback");
        cJSON_AddItemToArray(ds, d2);
        cJSON *d3 = cJSON_CreateObject();
        cJSON_AddStringToObject(d3, "type", "Fuse");
        cJSON_AddItemToArray(ds, d3);
        if (prefix) {
            cJSON *d4 = cJSON_CreateObject();
            cJSON_AddStringToObject(d4, "type", "Strip");
            cJSON_AddStringToObject(d4, "content", " ");
            cJSON_AddNumberToObject(d4, "start", 1);
            cJSON_AddNumberToObject(d4, "stop", 0);
            cJSON_AddItemToArray(ds, d4);
        }
    }
    if (add_bos || add_eos)
        cJSON_AddItemToObject(tj, "post_processor",
                              template_processor(&gv, bos, eos, add_bos, add_eos));
    else
        cJSON_AddNullToObject(tj, "post_processor");
    cJSON_AddStringToObject(model_j, "type", "BPE");
    cJSON_AddNullToObject(model_j, "dropout");
    if (!bpe && unk >= 0 && unk < gv.n) {
        char *t = gtok_dup(&gv, unk);
        cJSON_AddStringToObject(model_j, "unk_token", t ? t : "");
        free(t);
    } else {
        cJSON_AddNullToObject(model_j, "unk_token");
    }
    cJSON_AddNullToObject(model_j, "continuing_subword_prefix");
    cJSON_AddNullToObject(model_j, "end_of_word_suffix");
    cJSON_AddBoolToObject(model_j, "fuse_unk", !bpe);
    cJSON_AddBoolToObject(model_j, "byte_fallback", !bpe);
    cJSON_AddBoolToObject(model_j, "ignore_merges", v->ignore_merges);
    cJSON_AddItemToObject(model_j, "vocab", vocab);
    cJSON_AddItemToObject(model_j, "merges", merges);
    cJSON_AddItemToObject(tj, "model", model_j);

    // tokenizer_config.json: special tokens, BOS/EOS flags and the chat template.
    const char *names[4] = {"bos_token", "eos_token", "unk_token", "pad_token"};
    int32_t ids[4] = {bos, eos, unk, pad};
    for (int k = 0; k < 4; k++) {
        if (ids[k] < 0 || ids[k] >= gv.n) continue;
        char *t = gtok_dup(&gv, ids[k]);
        if (t) cJSON_AddStringToObject(cfg, names[k], t);
        free(t);
    }
    cJSON_AddBoolToObject(cfg, "add_bos_token", add_bos);
    cJSON_AddBoolToObject(cfg, "add_eos_token", add_eos);
    cJSON_AddBoolToObject(cfg, "clean_up_tokenization_spaces", false);
    cJSON_AddNumberToObject(cfg, "model_max_length", n_ctx);
    cJSON_AddStringToObject(cfg, "tokenizer_class",
                            bpe ? "PreTrainedTokenizerFast" : "LlamaTokenizerFast");
    if (!bpe) cJSON_AddBoolToObject(cfg, "legacy", true);
    int64_t kc = gkey(g, "tokenizer.chat_template");
    if (kc >= 0 && speck_gguf_get_str(g, kc))
        cJSON_AddStringToObject(cfg, "chat_template", speck_gguf_get_str(g, kc));

    char path[PATH_MAX];
    if (!rc) {
        snprintf(path, sizeof path, "%s/tokenizer.json", dir);
        rc = hf_write_json(tj, path);
    }
    if (!rc) {
        snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
        rc = hf_write_json(cfg, path);
    }
    cJSON_Delete(tj);
    cJSON_Delete(cfg);
    speck_vocab_free(v);
    return rc;
}
