// Byte-level BPE training: GPT-2 pre-tokenizer (PCRE2) -> word counts -> greedy merges of the
// most frequent adjacent symbol pair -> a GPT-2-style vocabulary GGUF (tokens in the printable
// byte mapping, merges "A B", token types), readable by speck's tokenizer and llama.cpp.
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tokenizer_internal.h"
#include "train/train_internal.h"

// The GPT-2 pre-tokenizer pattern (what llama.cpp uses for pre "gpt-2").
static const char *GPT2_PATTERN =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

typedef struct {
    char *bytes;
    uint32_t len;
    int64_t count;
} word;

struct speck_bpe_trainer {
    pcre2_code *re;
    pcre2_match_data *md;
    word *words;    // open-addressing table keyed by bytes
    int64_t cap, n; // table size (power of two), entries used
};

static uint64_t hash_bytes(const char *p, size_t n) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)p[i]) * 0x100000001b3ULL;
    return h ^ (h >> 31);
}

speck_bpe_trainer *speck_bpe_trainer_new(void) {
    speck_bpe_trainer *t = calloc(1, sizeof *t);
    if (!t) goto oom;
    int ec;
    PCRE2_SIZE eo;
    t->re = pcre2_compile((PCRE2_SPTR)GPT2_PATTERN, PCRE2_ZERO_TERMINATED,
                          PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &ec, &eo, NULL);
    if (!t->re) {
        speck_set_error(SPECK_ERR_UNSUPPORTED, "bpe: cannot compile the GPT-2 pattern (%d)", ec);
        free(t);
        return NULL;
    }
    pcre2_jit_compile(t->re, PCRE2_JIT_COMPLETE);
    t->md = pcre2_match_data_create_from_pattern(t->re, NULL);
    t->cap = 1 << 16;
    t->words = calloc((size_t)t->cap, sizeof *t->words);
    if (!t->md || !t->words) goto oom;
    return t;
oom:
    speck_bpe_trainer_free(t);
    speck_set_error(SPECK_ERR_NOMEM, "bpe: out of memory");
    return NULL;
}

void speck_bpe_trainer_free(speck_bpe_trainer *t) {
    if (!t) return;
    for (int64_t i = 0; t->words && i < t->cap; i++) free(t->words[i].bytes);
    free(t->words);
    if (t->md) pcre2_match_data_free(t->md);
    if (t->re) pcre2_code_free(t->re);
    free(t);
}

static int grow_words(speck_bpe_trainer *t) {
    int64_t cap = t->cap * 2;
    word *w = calloc((size_t)cap, sizeof *w);
    if (!w) return -1;
    for (int64_t i = 0; i < t->cap; i++) {
        if (!t->words[i].bytes) continue;
        uint64_t h = hash_bytes(t->words[i].bytes, t->words[i].len) & (uint64_t)(cap - 1);
        while (w[h].bytes) h = (h + 1) & (uint64_t)(cap - 1);
        w[h] = t->words[i];
    }
    free(t->words);
    t->words = w, t->cap = cap;
    return 0;
}

static int add_word(speck_bpe_trainer *t, const char *p, size_t n) {
    if (n == 0 || n > 1u << 20) return 0;
    if (2 * (t->n + 1) > t->cap && grow_words(t)) return -1;
    uint64_t h = hash_bytes(p, n) & (uint64_t)(t->cap - 1);
    while (t->words[h].bytes) {
        word *w = &t->words[h];
        if (w->len == n && !memcmp(w->bytes, p, n)) {
            w->count++;
            return 0;
        }
        h = (h + 1) & (uint64_t)(t->cap - 1);
    }
    char *b = malloc(n);
    if (!b) return -1;
    memcpy(b, p, n);
    t->words[h] = (word){b, (uint32_t)n, 1};
    t->n++;
    return 0;
}

int speck_bpe_trainer_add(speck_bpe_trainer *t, const char *text, size_t len) {
    PCRE2_SIZE off = 0;
    while (off < len) {
        int rc = pcre2_match(t->re, (PCRE2_SPTR)text, len, off, 0, t->md, NULL);
        if (rc < 0) break; // no match (only invalid UTF-8 left)
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(t->md);
        if (ov[1] <= off && ov[0] <= off) {
            off++;
            continue;
        }
        if (add_word(t, text + ov[0], ov[1] - ov[0]))
            return speck_set_error(SPECK_ERR_NOMEM, "bpe: out of memory");
        off = ov[1] > ov[0] ? ov[1] : ov[0] + 1;
    }
    return 0;
}

/* ---- merging -------------------------------------------------------------------------------- */

typedef struct {
    uint64_t key; // (a << 32 | b) + 1; 0 = empty
    int64_t count;
    int32_t *where; // word indices (may repeat / be stale)
    int32_t n_where, cap_where;
} pair_entry;

typedef struct {
    pair_entry *e;
    int64_t cap, n;
} pair_table;

static pair_entry *pair_get(pair_table *pt, uint32_t a, uint32_t b, bool create) {
    uint64_t key = (((uint64_t)a << 32) | b) + 1;
    uint64_t h = (key * 0x9E3779B97F4A7C15ULL) >> 20;
    for (;;) {
        h &= (uint64_t)(pt->cap - 1);
        pair_entry *e = &pt->e[h];
        if (e->key == key) return e;
        if (!e->key) {
            if (!create) return NULL;
            if (2 * (pt->n + 1) > pt->cap) {
                pair_table big = {calloc((size_t)pt->cap * 2, sizeof(pair_entry)), pt->cap * 2, 0};
                if (!big.e) return NULL;
                for (int64_t i = 0; i < pt->cap; i++) {
                    if (!pt->e[i].key) continue;
                    uint64_t g = (pt->e[i].key * 0x9E3779B97F4A7C15ULL) >> 20;
                    for (;; g++)
                        if (!big.e[g & (uint64_t)(big.cap - 1)].key) break;
                    big.e[g & (uint64_t)(big.cap - 1)] = pt->e[i];
                    big.n++;
                }
                free(pt->e);
                *pt = big;
                return pair_get(pt, a, b, true);
            }
            e->key = key;
            pt->n++;
            return e;
        }
        h++;
    }
}

static int pair_add(pair_table *pt, uint32_t a, uint32_t b, int64_t count, int32_t w) {
    pair_entry *e = pair_get(pt, a, b, true);
    if (!e) return -1;
    e->count += count;
    if (count > 0 && w >= 0 && (e->n_where == 0 || e->where[e->n_where - 1] != w)) {
        if (e->n_where == e->cap_where) {
            int32_t cap = e->cap_where ? e->cap_where * 2 : 4;
            int32_t *p = realloc(e->where, (size_t)cap * sizeof *p);
            if (!p) return -1;
            e->where = p, e->cap_where = cap;
        }
        e->where[e->n_where++] = w;
    }
    return 0;
}

static char *str_cat(const char *a, const char *sep, const char *b) {
    size_t la = strlen(a), ls = strlen(sep), lb = strlen(b);
    char *s = malloc(la + ls + lb + 1);
    if (!s) return NULL;
    memcpy(s, a, la), memcpy(s + la, sep, ls), memcpy(s + la + ls, b, lb + 1);
    return s;
}

int speck_bpe_trainer_save(speck_bpe_trainer *t, const speck_bpe_train_params *p,
                           const char *path) {
    int n_special = p->n_specials;
    int target = p->vocab_size - n_special;
    if (target < 256)
        return speck_set_error(SPECK_ERR_ARG,
                               "bpe: vocab_size %d leaves no room for the 256 byte "
                               "tokens and %d specials",
                               p->vocab_size, n_special);
    if (t->n == 0) return speck_set_error(SPECK_ERR_ARG, "bpe: no training text (empty corpus)");
    int min_freq = p->min_frequency > 0 ? p->min_frequency : 2;
    // Words as symbol arrays (initially bytes), in table order.
    int32_t nw = 0;
    int32_t **syms = calloc((size_t)t->n, sizeof *syms);
    int32_t *len = calloc((size_t)t->n, sizeof *len);
    int64_t *cnt = calloc((size_t)t->n, sizeof *cnt);
    char **tok = calloc((size_t)p->vocab_size, sizeof *tok);
    char **merges = calloc((size_t)p->vocab_size, sizeof *merges);
    int32_t *types = calloc((size_t)p->vocab_size, sizeof *types);
    int32_t *seen = NULL;
    pair_table pt = {calloc(1 << 16, sizeof(pair_entry)), 1 << 16, 0};
    int err = 0, n_tok = 0, n_merges = 0;
    if (!syms || !len || !cnt || !tok || !merges || !types || !pt.e) goto oom;
    for (int64_t i = 0; i < t->cap; i++) {
        word *w = &t->words[i];
        if (!w->bytes) continue;
        syms[nw] = malloc(w->len * sizeof(int32_t));
        if (!syms[nw]) goto oom;
        for (uint32_t j = 0; j < w->len; j++) syms[nw][j] = (uint8_t)w->bytes[j];
        len[nw] = (int32_t)w->len, cnt[nw] = w->count;
        nw++;
    }
    for (int b = 0; b < 256; b++) {
        char s[4] = {0};
        tok_byte_to_unicode((uint8_t)b, s); // GPT-2's reversible byte -> character map
        if (!(tok[n_tok] = strdup(s))) goto oom;
        types[n_tok++] = 1;
    }
    for (int32_t w = 0; w < nw; w++)
        for (int32_t j = 0; j + 1 < len[w]; j++)
            if (pair_add(&pt, (uint32_t)syms[w][j], (uint32_t)syms[w][j + 1], cnt[w], w)) goto oom;
    seen = calloc((size_t)nw, sizeof *seen);
    if (!seen) goto oom;
    while (n_tok < target) {
        // Most frequent pair; ties go to the smallest (a, b) so the result is deterministic.
        pair_entry *best = NULL;
        for (int64_t i = 0; i < pt.cap; i++) {
            pair_entry *e = &pt.e[i];
            if (e->key && e->count >= min_freq &&
                (!best || e->count > best->count ||
                 (e->count == best->count && e->key < best->key)))
                best = e;
        }
        if (!best) break; // nothing left worth merging
        uint32_t a = (uint32_t)((best->key - 1) >> 32),
                 b = (uint32_t)((best->key - 1) & 0xffffffff);
        int32_t id = n_tok;
        if (!(tok[n_tok] = str_cat(tok[a], "", tok[b])) ||
            !(merges[n_merges] = str_cat(tok[a], " ", tok[b])))
            goto oom;
        types[n_tok++] = 1;
        n_merges++;
        // The word list is detached first: pair_add may rehash the table under it.
        int32_t *where = best->where, n_where = best->n_where;
        best->where = NULL, best->n_where = best->cap_where = 0;
        for (int32_t k = 0; k < n_where; k++) {
            int32_t w = where[k];
            if (seen[w] == id) continue;
            seen[w] = id;
            int32_t *s = syms[w], n = len[w], o = 0;
            for (int32_t j = 0; j < n; j++) {
                if (j + 1 < n && (uint32_t)s[j] == a && (uint32_t)s[j + 1] == b) {
                    // ... x [a b] y ... -> ... x [id] y ...
                    if (o > 0 && (pair_add(&pt, (uint32_t)s[o - 1], a, -cnt[w], -1) ||
                                  pair_add(&pt, (uint32_t)s[o - 1], (uint32_t)id, cnt[w], w)))
                        goto oom_where;
                    if (j + 2 < n && (pair_add(&pt, b, (uint32_t)s[j + 2], -cnt[w], -1) ||
                                      pair_add(&pt, (uint32_t)id, (uint32_t)s[j + 2], cnt[w], w)))
                        goto oom_where;
                    if (pair_add(&pt, a, b, -cnt[w], -1)) goto oom_where;
                    s[o++] = id;
                    j++;
                } else {
                    s[o++] = s[j];
                }
            }
            len[w] = o;
        }
        free(where);
        continue;
    oom_where:
        free(where);
        goto oom;
    }
    for (int i = 0; i < n_special; i++) {
        if (!(tok[n_tok] = strdup(p->specials[i]))) goto oom;
        types[n_tok++] = 3; // CONTROL
    }
    speck_gguf_writer *gw = speck_gguf_writer_new();
    if (!gw) goto oom;
    err |= speck_gguf_set_str(gw, "general.architecture", "llama");
    err |= speck_gguf_set_str(gw, "general.name", "speck byte-level BPE vocabulary");
    err |= speck_gguf_set_str(gw, "tokenizer.ggml.model", "gpt2");
    err |= speck_gguf_set_str(gw, "tokenizer.ggml.pre", "gpt-2");
    err |=
        speck_gguf_set_arr_str(gw, "tokenizer.ggml.tokens", (const char *const *)tok, NULL, n_tok);
    err |= speck_gguf_set_arr(gw, "tokenizer.ggml.token_type", SPECK_GGUF_INT32, types, n_tok);
    err |= speck_gguf_set_arr_str(gw, "tokenizer.ggml.merges", (const char *const *)merges, NULL,
                                  n_merges);
    if (n_special > 0) {
        err |= speck_gguf_set_u32(gw, "tokenizer.ggml.bos_token_id", (uint32_t)(n_tok - n_special));
        err |= speck_gguf_set_u32(gw, "tokenizer.ggml.eos_token_id", (uint32_t)(n_tok - n_special));
    }
    err |= speck_gguf_set_bool(gw, "tokenizer.ggml.add_bos_token", false);
    if (err)
        err = speck_set_error(SPECK_ERR_NOMEM, "bpe: out of memory");
    else
        err = speck_gguf_writer_save(gw, path);
    speck_gguf_writer_free(gw);
    goto done;
oom:
    err = speck_set_error(SPECK_ERR_NOMEM, "bpe: out of memory");
done:
    for (int32_t w = 0; syms && w < nw; w++) free(syms[w]);
    for (int i = 0; tok && i < p->vocab_size; i++) free(tok[i]);
    for (int i = 0; merges && i < p->vocab_size; i++) free(merges[i]);
    for (int64_t i = 0; pt.e && i < pt.cap; i++) free(pt.e[i].where);
    free(pt.e), free(syms), free(len), free(cnt), free(tok), free(merges), free(types), free(seen);
    return err;
}
