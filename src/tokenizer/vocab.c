// The in-memory vocabulary: token table, text->id and merge maps, special-token index, and
// loading from GGUF tokenizer.ggml.* keys. (tokenizer.json loading lives in hf_json.c.)
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include "core/limits.h"
#include "tokenizer_internal.h"

/* ---------------------------------------------------------------------------------------- */
/* Maps                                                                                      */
/* ---------------------------------------------------------------------------------------- */

static inline uint64_t hash_bytes(const char *s, size_t n) {
    // FNV-1a with a final avalanche: token texts are short, so this is cheap and spreads well.
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 0x100000001b3ull;
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ull;
    return h ^ (h >> 32);
}

static inline uint64_t hash_u64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

static uint32_t pow2_at_least(uint64_t n) {
    uint32_t c = 16;
    while (c < n) c <<= 1;
    return c;
}

// Length stored in front of a token text (see tok_chunk): read next to the text itself.
static inline uint32_t text_len_of(const char *s) {
    uint32_t n;
    memcpy(&n, s - 4, 4);
    return n;
}

// The big tables (a 150k vocabulary's text map and merge map are 4 MB each) are first touched at
// random while loading, one 4 KB page fault at a time; in a VM each fault is a costly trap
// (measured: ~3,000 faults, a fifth of the load time). Transparent huge pages, where the kernel
// offers them (madvise mode), map 2 MB per fault instead. Freed with free().
#define HUGE_PAGE ((size_t)2 << 20)

static void *big_alloc(size_t bytes) {
    if (bytes < HUGE_PAGE / 2) return malloc(bytes);
    size_t n = (bytes + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1);
    void *p = aligned_alloc(HUGE_PAGE, n);
#ifdef MADV_HUGEPAGE
    if (p) madvise(p, n, MADV_HUGEPAGE);
#endif
    return p;
}

static int strmap_init(tok_strmap *m, uint64_t n) {
    // Load factor <= 2/3: short probe runs, and a table half the size of a 2x one (a 150k
    // vocabulary's map fits in 4 MB), which matters more here than the shorter runs.
    uint32_t cap = pow2_at_least(n + n / 2);
    m->slots = big_alloc(cap * sizeof *m->slots);
    if (!m->slots) return SPECK_ERR_NOMEM;
    memset(m->slots, 0xff, cap * sizeof *m->slots);
    m->mask = cap - 1;
    return SPECK_OK;
}

// Later ids replace earlier ones with the same text (as llama.cpp's token_to_id does). Returns
// true when an earlier id was replaced. h: hash_bytes of the text.
static bool strmap_put_h(tok_strmap *m, const speck_vocab *v, int32_t id, uint64_t h) {
    const char *s = v->text[id];
    size_t n = v->text_len[id];
    uint32_t tag = (uint32_t)(h >> 32);
    for (uint32_t i = (uint32_t)h & m->mask;; i = (i + 1) & m->mask) {
        struct tok_slot *e = &m->slots[i];
        if (e->id < 0) {
            *e = (struct tok_slot){s, tag, id};
            return false;
        }
        if (e->tag == tag && text_len_of(e->s) == n && !memcmp(e->s, s, n)) {
            *e = (struct tok_slot){s, tag, id};
            return true;
        }
    }
}

static bool strmap_put(tok_strmap *m, const speck_vocab *v, int32_t id) {
    return strmap_put_h(m, v, id, hash_bytes(v->text[id], v->text_len[id]));
}

static int32_t strmap_get_h(const tok_strmap *m, const char *s, size_t n, uint64_t h) {
    if (!m->slots) return -1;
    uint32_t tag = (uint32_t)(h >> 32);
    for (uint32_t i = (uint32_t)h & m->mask;; i = (i + 1) & m->mask) {
        const struct tok_slot *e = &m->slots[i];
        if (e->id < 0) return -1;
        if (e->tag == tag && text_len_of(e->s) == n && !memcmp(e->s, s, n)) return e->id;
    }
}

static int32_t strmap_get(const tok_strmap *m, const speck_vocab *v, const char *s, size_t n) {
    (void)v;
    return strmap_get_h(m, s, n, hash_bytes(s, n));
}

// Loading is bound by cache misses on the maps, not by arithmetic: callers that know many keys
// in advance hash a batch, prefetch the slots, then the text behind the likely hit, and only
// then probe, so the misses of a whole batch overlap instead of being paid one after another.
static inline void strmap_prefetch_slot(const tok_strmap *m, uint64_t h) {
    __builtin_prefetch(&m->slots[(uint32_t)h & m->mask]);
}

static inline void strmap_prefetch_text(const tok_strmap *m, uint64_t h) {
    uint32_t tag = (uint32_t)(h >> 32);
    for (uint32_t i = (uint32_t)h & m->mask, k = 0; k < 4; i = (i + 1) & m->mask, k++) {
        const struct tok_slot *e = &m->slots[i];
        if (e->id < 0) return;
        if (e->tag == tag) {
            __builtin_prefetch(e->s - 4);
            return;
        }
    }
}

int32_t tok_find(const speck_vocab *v, const char *s, size_t len) {
    return strmap_get(&v->map, v, s, len);
}

int32_t tok_find_special(const speck_vocab *v, const char *s, size_t len) {
    return strmap_get(&v->sp_map, v, s, len);
}

const tok_pair *tok_pair_find(const tok_pairmap *m, int32_t left, int32_t right) {
    if (!m->slots || left < 0 || right < 0) return NULL;
    uint64_t key = (((uint64_t)(uint32_t)left << 32) | (uint32_t)right) + 1;
    uint32_t i = (uint32_t)hash_u64(key) & m->mask;
    for (;; i = (i + 1) & m->mask) {
        const tok_pair *p = &m->slots[i];
        if (p->key == key) return p;
        if (!p->key) return NULL;
    }
}

static int pairmap_init(tok_pairmap *m, int64_t n) {
    uint32_t cap = pow2_at_least((uint64_t)n + (uint64_t)n / 2); // as strmap_init
    m->slots = big_alloc(cap * sizeof *m->slots);
    if (!m->slots) return SPECK_ERR_NOMEM;
    memset(m->slots, 0, cap * sizeof *m->slots);
    m->mask = cap - 1;
    m->n = 0;
    return SPECK_OK;
}

// The id of a merge's result "a" + "b", or -1 if that text is no token. BPE vocabularies list
// merge results in merge order (Qwen: id = rank + 256 throughout), so the id that keeps the
// previous result's id - rank is checked first: a sequential compare instead of a hash lookup.
// Not when texts repeat, where the map's choice among equal texts must win.
static int32_t merge_result(speck_vocab *v, const char *a, size_t alen, const char *b, size_t blen,
                            int32_t rank) {
    int64_t guess = (int64_t)rank + v->merge_delta;
    if (!v->dup_texts && guess >= 0 && guess < v->n_tokens && v->text_len[guess] == alen + blen &&
        !memcmp(v->text[guess], a, alen) && !memcmp(v->text[guess] + alen, b, blen))
        return (int32_t)guess;
    char stackbuf[256];
    char *cat = alen + blen <= sizeof stackbuf ? stackbuf : malloc(alen + blen);
    if (!cat) return -2;
    memcpy(cat, a, alen);
    memcpy(cat + alen, b, blen);
    int32_t id = tok_find(v, cat, alen + blen);
    if (cat != stackbuf) free(cat);
    if (id >= 0) v->merge_delta = (int64_t)id - rank;
    return id;
}

static inline uint64_t pair_key(int32_t l, int32_t r) {
    return (((uint64_t)(uint32_t)l << 32) | (uint32_t)r) + 1;
}

static void pair_insert(tok_pairmap *m, uint64_t key, int32_t rank, int32_t id) {
    for (uint32_t i = (uint32_t)hash_u64(key) & m->mask;; i = (i + 1) & m->mask) {
        tok_pair *p = &m->slots[i];
        if (p->key == key) return; // keep the first (best) rank
        if (!p->key) {
            *p = (tok_pair){key, rank, id};
            m->n++;
            return;
        }
    }
}

#define MERGE_BATCH 32

// Merges "a b" of ranks first_rank, first_rank + 1, ...: both halves and their concatenation
// must be tokens. Unknown ones are skipped silently (some published merge lists carry a few).
int tok_add_merges(speck_vocab *v, const tok_merge_text *mt, int n, int32_t first_rank) {
    const tok_strmap *sm = &v->map;
    tok_pairmap *pm = &v->merges;
    for (int base = 0; base < n; base += MERGE_BATCH) {
        int nb = n - base < MERGE_BATCH ? n - base : MERGE_BATCH;
        const tok_merge_text *b = mt + base;
        uint64_t ha[MERGE_BATCH], hb[MERGE_BATCH], key[MERGE_BATCH];
        int32_t id[MERGE_BATCH];
        for (int j = 0; j < nb; j++) {
            ha[j] = hash_bytes(b[j].a, b[j].alen);
            hb[j] = hash_bytes(b[j].b, b[j].blen);
            strmap_prefetch_slot(sm, ha[j]);
            strmap_prefetch_slot(sm, hb[j]);
        }
        for (int j = 0; j < nb; j++) {
            strmap_prefetch_text(sm, ha[j]);
            strmap_prefetch_text(sm, hb[j]);
        }
        for (int j = 0; j < nb; j++) {
            key[j] = 0;
            int32_t l = strmap_get_h(sm, b[j].a, b[j].alen, ha[j]);
            int32_t r = strmap_get_h(sm, b[j].b, b[j].blen, hb[j]);
            if (l < 0 || r < 0) continue;
            id[j] = merge_result(v, b[j].a, b[j].alen, b[j].b, b[j].blen, first_rank + base + j);
            if (id[j] == -2) return SPECK_ERR_NOMEM;
            if (id[j] < 0) continue;
            key[j] = pair_key(l, r);
            __builtin_prefetch(&pm->slots[(uint32_t)hash_u64(key[j]) & pm->mask], 1);
        }
        for (int j = 0; j < nb; j++)
            if (key[j]) pair_insert(pm, key[j], first_rank + base + j, id[j]);
    }
    return SPECK_OK;
}

int tok_add_merge(speck_vocab *v, const char *a, size_t alen, const char *b, size_t blen,
                  int32_t rank) {
    if (alen > UINT32_MAX || blen > UINT32_MAX) return SPECK_OK;
    tok_merge_text m = {a, b, (uint32_t)alen, (uint32_t)blen};
    return tok_add_merges(v, &m, 1, rank);
}

/* ---------------------------------------------------------------------------------------- */
/* Construction                                                                              */
/* ---------------------------------------------------------------------------------------- */

speck_vocab *tok_vocab_alloc(int32_t n) {
    speck_vocab *v = calloc(1, sizeof *v);
    if (!v) return NULL;
    v->n_tokens = n;
    tok_cache_init(&v->cache);
    // One block for the per-token arrays (see big_alloc): text first, so freeing v->text frees
    // them all.
    size_t bytes = (size_t)n * (sizeof *v->text + sizeof *v->text_len + sizeof *v->scores + 1);
    char *block = big_alloc(bytes);
    if (!block) {
        speck_vocab_free(v);
        return NULL;
    }
    memset(block, 0, bytes);
    v->text = (char **)block;
    v->text_len = (uint32_t *)(block + (size_t)n * sizeof *v->text);
    v->scores = (float *)((char *)v->text_len + (size_t)n * sizeof *v->text_len);
    v->type = (uint8_t *)((char *)v->scores + (size_t)n * sizeof *v->scores);
    memset(v->type, TOK_NORMAL, (size_t)n);
    v->bos = v->eos = v->unk = v->pad = v->eot = v->eom = -1;
    return v;
}

#define CHUNK_BYTES HUGE_PAGE

// Carve [u32 len][bytes][NUL] out of the current chunk (a new one when full). Texts never move,
// so v->text pointers stay valid; a replaced text's bytes are simply left unused.
int tok_set_token(speck_vocab *v, int32_t id, const char *s, size_t len) {
    if (len > UINT32_MAX / 2) return SPECK_ERR_RANGE;
    size_t need = (4 + len + 1 + 3) & ~(size_t)3; // keep the length prefixes 4-byte aligned
    tok_chunk *c = v->chunks;
    if (!c || c->cap - c->used < need) {
        size_t cap = need > CHUNK_BYTES - sizeof *c ? need : CHUNK_BYTES - sizeof *c;
        c = big_alloc(sizeof *c + cap);
        if (!c) return SPECK_ERR_NOMEM;
        c->next = v->chunks;
        c->used = 0;
        c->cap = cap;
        v->chunks = c;
    }
    char *e = c->data + c->used;
    uint32_t n32 = (uint32_t)len;
    memcpy(e, &n32, 4);
    memcpy(e + 4, s, len);
    e[4 + len] = 0;
    c->used += need;
    v->text[id] = e + 4;
    v->text_len[id] = n32;
    return SPECK_OK;
}

// Shared text of ids no entry names: a zero length, then the NUL.
static char EMPTY_TEXT[8];

// Build the text->id map. Called before merges are added (they are looked up by text).
static int build_text_map(speck_vocab *v, const char *src) {
    for (int32_t i = 0; i < v->n_tokens; i++)
        if (!v->text[i]) v->text[i] = EMPTY_TEXT + 4;
    if (strmap_init(&v->map, (uint64_t)v->n_tokens))
        return speck_set_error(SPECK_ERR_NOMEM, "%s: out of memory", src);
    // In batches, prefetching the slots (see strmap_prefetch_slot).
    uint64_t h[MERGE_BATCH];
    for (int32_t base = 0; base < v->n_tokens; base += MERGE_BATCH) {
        int32_t nb = v->n_tokens - base < MERGE_BATCH ? v->n_tokens - base : MERGE_BATCH;
        for (int32_t j = 0; j < nb; j++) {
            h[j] = hash_bytes(v->text[base + j], v->text_len[base + j]);
            strmap_prefetch_slot(&v->map, h[j]);
        }
        for (int32_t j = 0; j < nb; j++)
            if (v->text_len[base + j]) v->dup_texts |= strmap_put_h(&v->map, v, base + j, h[j]);
    }
    return SPECK_OK;
}

// HF loading needs the text map before merges; expose the step.
int tok_build_text_map(speck_vocab *v, const char *src) {
    return build_text_map(v, src);
}
int tok_merges_init(speck_vocab *v, int64_t n) {
    return pairmap_init(&v->merges, n);
}

typedef struct {
    uint8_t first;
    uint32_t len;
    int32_t id;
} sp_key;

// By first byte, then longest first, then lowest id.
static int cmp_sp(const void *a, const void *b) {
    const sp_key *x = a, *y = b;
    if (x->first != y->first) return x->first < y->first ? -1 : 1;
    if (x->len != y->len) return x->len > y->len ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

static const char *const EOG_TEXTS[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>",         "<end_of_turn>",         "<|endoftext|>",
    "<|eom_id|>", "<EOT>",      "<|end_of_text|>", "<｜end▁of▁sentence｜>", "<|return|>",
    "<|call|>",   NULL,
};

static int vocab_finish_common(speck_vocab *v, const char *src) {
    // Byte tokens: <0xXX> (SentencePiece byte fallback), else a token that is the byte itself.
    for (int b = 0; b < 256; b++) {
        char buf[8];
        snprintf(buf, sizeof buf, "<0x%02X>", b);
        int32_t id = tok_find(v, buf, 6);
        if (id < 0) {
            char c = (char)b;
            id = tok_find(v, &c, 1);
        }
        v->byte_tok[b] = id;
    }
    if (v->byte_level)
        for (int b = 0; b < 256; b++) {
            char m[2];
            int ml = tok_byte_to_unicode((uint8_t)b, m);
            v->bl_id[b] = tok_find(v, m, (size_t)ml);
        }
    // Special-token index: every control / user-defined / unknown token with text. Matching
    // looks up, at each position, the distinct lengths of specials starting with that byte.
    int n = 0;
    for (int32_t i = 0; i < v->n_tokens; i++) {
        uint8_t t = v->type[i];
        if (v->text_len[i] && (t == TOK_CONTROL || t == TOK_USER_DEFINED || t == TOK_UNKNOWN)) n++;
    }
    v->special = malloc(((size_t)n + 1) * sizeof *v->special);
    v->sp_lens = malloc(((size_t)n + 1) * sizeof *v->sp_lens);
    if (!v->special || !v->sp_lens || strmap_init(&v->sp_map, (uint64_t)n + 1))
        return speck_set_error(SPECK_ERR_NOMEM, "%s: out of memory", src);
    n = 0;
    for (int32_t i = 0; i < v->n_tokens; i++) {
        uint8_t t = v->type[i];
        if (v->text_len[i] && (t == TOK_CONTROL || t == TOK_USER_DEFINED || t == TOK_UNKNOWN)) {
            v->special[n++] = i;
            v->n_user_defined += t == TOK_USER_DEFINED;
        }
    }
    v->n_special = n;
    sp_key *keys = malloc(((size_t)n + 1) * sizeof *keys);
    if (!keys) return speck_set_error(SPECK_ERR_NOMEM, "%s: out of memory", src);
    for (int i = 0; i < n; i++)
        keys[i] =
            (sp_key){(uint8_t)v->text[v->special[i]][0], v->text_len[v->special[i]], v->special[i]};
    qsort(keys, (size_t)n, sizeof *keys, cmp_sp);
    for (int i = 0; i < n; i++) v->special[i] = keys[i].id;
    free(keys);
    // Insert in reverse so that for equal texts the lowest id ends up in the map.
    for (int i = n - 1; i >= 0; i--) strmap_put(&v->sp_map, v, v->special[i]);
    int j = 0, nl = 0;
    for (int b = 0; b < 256; b++) {
        v->sp_lens_start[b] = nl;
        for (; j < n && (uint8_t)v->text[v->special[j]][0] == b; j++) {
            uint32_t l = v->text_len[v->special[j]];
            if (nl == v->sp_lens_start[b] || v->sp_lens[nl - 1] != l) v->sp_lens[nl++] = l;
        }
    }
    v->sp_lens_start[256] = nl;
    // End-of-generation set.
    v->eog = malloc(sizeof *v->eog * 16);
    if (!v->eog) return speck_set_error(SPECK_ERR_NOMEM, "%s: out of memory", src);
    int32_t cand[16];
    int nc = 0;
    cand[nc++] = v->eos;
    cand[nc++] = v->eot;
    cand[nc++] = v->eom;
    for (int k = 0; EOG_TEXTS[k] && nc < 16; k++) {
        int32_t id = tok_find(v, EOG_TEXTS[k], strlen(EOG_TEXTS[k]));
        if (id >= 0 && v->type[id] == TOK_CONTROL) cand[nc++] = id;
    }
    for (int k = 0; k < nc; k++) {
        if (cand[k] < 0 || cand[k] >= v->n_tokens) continue;
        bool dup = false;
        for (int q = 0; q < v->n_eog; q++) dup |= v->eog[q] == cand[k];
        if (!dup) v->eog[v->n_eog++] = cand[k];
    }
    return SPECK_OK;
}

int tok_vocab_finish(speck_vocab *v, const char *src) {
    return vocab_finish_common(v, src);
}

void speck_vocab_free(speck_vocab *v) {
    if (!v) return;
    while (v->chunks) {
        tok_chunk *next = v->chunks->next;
        free(v->chunks);
        v->chunks = next;
    }
    free(v->text); // also text_len, scores and type (tok_vocab_alloc)
    free(v->map.slots);
    free(v->merges.slots);
    free(v->special);
    free(v->sp_lens);
    free(v->sp_map.slots);
    free(v->sp_lstrip);
    free(v->sp_rstrip);
    free(v->eog);
    free(v->chat_template);
    tok_pretok_free(&v->pre);
    tok_cache_free(&v->cache);
    free(v);
}

/* ---------------------------------------------------------------------------------------- */
/* GGUF                                                                                      */
/* ---------------------------------------------------------------------------------------- */

static int64_t key_of(const speck_gguf *g, const char *k, speck_gguf_vtype want) {
    int64_t i = speck_gguf_find_key(g, k);
    if (i < 0 || speck_gguf_kv_type(g, i) != want) return -1;
    return i;
}

static int32_t gguf_id(const speck_gguf *g, const char *k, int32_t dflt) {
    int64_t i = speck_gguf_find_key(g, k);
    if (i < 0 || speck_gguf_kv_type(g, i) == SPECK_GGUF_STRING ||
        speck_gguf_kv_type(g, i) == SPECK_GGUF_ARRAY)
        return dflt;
    return (int32_t)speck_gguf_get_int(g, i);
}

static bool gguf_bool(const speck_gguf *g, const char *k, bool dflt) {
    int64_t i = speck_gguf_find_key(g, k);
    if (i < 0 || speck_gguf_kv_type(g, i) == SPECK_GGUF_STRING ||
        speck_gguf_kv_type(g, i) == SPECK_GGUF_ARRAY)
        return dflt;
    return speck_gguf_get_int(g, i) != 0;
}

static bool is_llama3_pre(const char *pre) {
    static const char *const names[] = {"llama3",  "llama-v3", "llama-bpe", "falcon3", "falcon-h1",
                                        "pixtral", "midm-2.0", "lfm2",      NULL};
    for (int i = 0; pre && names[i]; i++)
        if (!strcmp(pre, names[i])) return true;
    return false;
}

speck_vocab *speck_vocab_from_gguf(const speck_gguf *g) {
    const char *src = g ? speck_gguf_path(g) : "(null)";
    if (!g) {
        speck_set_error(SPECK_ERR_ARG, "speck_vocab_from_gguf: NULL file");
        return NULL;
    }
    int64_t km = key_of(g, "tokenizer.ggml.model", SPECK_GGUF_STRING);
    if (km < 0) {
        speck_set_error(SPECK_ERR_FORMAT, "%s: tokenizer.ggml.model: missing", src);
        return NULL;
    }
    const char *model = speck_gguf_get_str(g, km);
    speck_vocab_type kind;
    if (!strcmp(model, "llama"))
        kind = SPECK_VOCAB_SPM;
    else if (!strcmp(model, "gpt2"))
        kind = SPECK_VOCAB_BPE;
    else {
        speck_set_error(SPECK_ERR_UNSUPPORTED,
                        "%s: tokenizer.ggml.model: \"%s\" not supported (only llama, gpt2)", src,
                        model);
        return NULL;
    }
    int64_t kt = key_of(g, "tokenizer.ggml.tokens", SPECK_GGUF_ARRAY);
    if (kt < 0 || speck_gguf_arr_type(g, kt) != SPECK_GGUF_STRING) {
        speck_set_error(SPECK_ERR_FORMAT, "%s: tokenizer.ggml.tokens: missing or not strings", src);
        return NULL;
    }
    int64_t n = speck_gguf_arr_n(g, kt);
    if (n <= 0 || n > SPECK_MAX_VOCAB) {
        speck_set_error(SPECK_ERR_FORMAT, "%s: tokenizer.ggml.tokens: bad count %lld (1 to %d)",
                        src, (long long)n, SPECK_MAX_VOCAB);
        return NULL;
    }
    speck_vocab *v = tok_vocab_alloc((int32_t)n);
    if (!v) {
        speck_set_error(SPECK_ERR_NOMEM, "%s: out of memory", src);
        return NULL;
    }
    v->kind = kind;
    for (int64_t i = 0; i < n; i++) {
        uint64_t len;
        const char *s = speck_gguf_arr_str(g, kt, i, &len);
        if (!s || tok_set_token(v, (int32_t)i, s, len)) {
            speck_set_error(SPECK_ERR_FORMAT, "%s: tokenizer.ggml.tokens[%lld]: unreadable", src,
                            (long long)i);
            goto fail;
        }
    }
    int64_t ks = key_of(g, "tokenizer.ggml.scores", SPECK_GGUF_ARRAY);
    if (ks >= 0) {
        if (speck_gguf_arr_type(g, ks) != SPECK_GGUF_FLOAT32 || speck_gguf_arr_n(g, ks) != n) {
            speck_set_error(SPECK_ERR_FORMAT, "%s: tokenizer.ggml.scores: want %lld f32", src,
                            (long long)n);
            goto fail;
        }
        memcpy(v->scores, speck_gguf_arr_data(g, ks), (size_t)n * sizeof(float));
    }
    int64_t ky = key_of(g, "tokenizer.ggml.token_type", SPECK_GGUF_ARRAY);
    if (ky >= 0) {
        speck_gguf_vtype at = speck_gguf_arr_type(g, ky);
        if ((at != SPECK_GGUF_INT32 && at != SPECK_GGUF_UINT32) || speck_gguf_arr_n(g, ky) != n) {
            speck_set_error(SPECK_ERR_FORMAT, "%s: tokenizer.ggml.token_type: want %lld i32", src,
                            (long long)n);
            goto fail;
        }
        const uint8_t *p = speck_gguf_arr_data(g, ky);
        for (int64_t i = 0; i < n; i++) {
            int32_t t;
            memcpy(&t, p + 4 * i, 4);
            v->type[i] = (t >= 1 && t <= 6) ? (uint8_t)t : TOK_NORMAL;
        }
    }
    if (build_text_map(v, src)) goto fail;

    const char *pre = NULL;
    int64_t kp = key_of(g, "tokenizer.ggml.pre", SPECK_GGUF_STRING);
    if (kp >= 0) pre = speck_gguf_get_str(g, kp);

    if (kind == SPECK_VOCAB_SPM) {
        v->algo = ALGO_SPM_SCORES;
        v->space_to_meta = true;
        v->prefix_meta = gguf_bool(g, "tokenizer.ggml.add_space_prefix", true);
        v->strip_lead_space = v->prefix_meta;
        v->byte_fallback = true;
        v->bos = gguf_id(g, "tokenizer.ggml.bos_token_id", 1);
        v->eos = gguf_id(g, "tokenizer.ggml.eos_token_id", 2);
        v->unk = gguf_id(g, "tokenizer.ggml.unknown_token_id", 0);
        v->add_bos = gguf_bool(g, "tokenizer.ggml.add_bos_token", true);
    } else {
        v->algo = ALGO_BPE_RANKS;
        v->byte_level = true;
        v->ignore_merges = is_llama3_pre(pre);
        if (tok_pretok_set_named(&v->pre, pre ? pre : "default", src)) goto fail;
        v->bos = gguf_id(g, "tokenizer.ggml.bos_token_id", -1);
        v->eos = gguf_id(g, "tokenizer.ggml.eos_token_id", -1);
        v->unk = gguf_id(g, "tokenizer.ggml.unknown_token_id", -1);
        v->add_bos = gguf_bool(g, "tokenizer.ggml.add_bos_token", is_llama3_pre(pre));
        int64_t kg = key_of(g, "tokenizer.ggml.merges", SPECK_GGUF_ARRAY);
        if (kg < 0 || speck_gguf_arr_type(g, kg) != SPECK_GGUF_STRING) {
            speck_set_error(SPECK_ERR_FORMAT, "%s: tokenizer.ggml.merges: missing", src);
            goto fail;
        }
        int64_t nm = speck_gguf_arr_n(g, kg);
        if (pairmap_init(&v->merges, nm)) {
            speck_set_error(SPECK_ERR_NOMEM, "%s: out of memory", src);
            goto fail;
        }
        tok_merge_text batch[256];
        int nb = 0;
        for (int64_t i = 0; i < nm; i++) {
            uint64_t len;
            const char *s = speck_gguf_arr_str(g, kg, i, &len);
            const char *sp = len > 1 ? memchr(s + 1, ' ', len - 1) : NULL;
            if (!sp || len > UINT32_MAX) {
                speck_set_error(SPECK_ERR_FORMAT, "%s: tokenizer.ggml.merges[%lld]: no space", src,
                                (long long)i);
                goto fail;
            }
            batch[nb++] =
                (tok_merge_text){s, sp + 1, (uint32_t)(sp - s), (uint32_t)(s + len - sp - 1)};
            if ((nb == 256 || i == nm - 1) && tok_add_merges(v, batch, nb, (int32_t)(i + 1 - nb))) {
                speck_set_error(SPECK_ERR_NOMEM, "%s: out of memory", src);
                goto fail;
            }
            if (nb == 256) nb = 0;
        }
    }
    v->pad = gguf_id(g, "tokenizer.ggml.padding_token_id", -1);
    v->eot = gguf_id(g, "tokenizer.ggml.eot_token_id", -1);
    v->eom = gguf_id(g, "tokenizer.ggml.eom_token_id", -1);
    v->add_eos = gguf_bool(g, "tokenizer.ggml.add_eos_token", false);
    int32_t *ids[] = {&v->bos, &v->eos, &v->unk, &v->pad, &v->eot, &v->eom};
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++)
        if (*ids[i] >= n) *ids[i] = -1;
    if (v->add_bos && v->bos < 0) v->add_bos = false;
    if (v->add_eos && v->eos < 0) v->add_eos = false;
    int64_t kc = key_of(g, "tokenizer.chat_template", SPECK_GGUF_STRING);
    if (kc >= 0 && !(v->chat_template = strdup(speck_gguf_get_str(g, kc)))) {
        speck_set_error(SPECK_ERR_NOMEM, "%s: out of memory", src);
        goto fail;
    }
    if (vocab_finish_common(v, src)) goto fail;
    return v;
fail:
    speck_vocab_free(v);
    return NULL;
}

static bool ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

speck_vocab *speck_vocab_load(const char *path) {
    if (!path) {
        speck_set_error(SPECK_ERR_ARG, "speck_vocab_load: NULL path");
        return NULL;
    }
    struct stat st;
    if (stat(path, &st) != 0) {
        speck_set_error(SPECK_ERR_IO, "%s: %s", path, strerror(errno));
        return NULL;
    }
    if (S_ISDIR(st.st_mode)) {
        size_t n = strlen(path) + 32;
        char *tj = malloc(n), *tc = malloc(n);
        if (!tj || !tc) {
            free(tj);
            free(tc);
            speck_set_error(SPECK_ERR_NOMEM, "%s: out of memory", path);
            return NULL;
        }
        snprintf(tj, n, "%s/tokenizer.json", path);
        snprintf(tc, n, "%s/tokenizer_config.json", path);
        speck_vocab *v = tok_vocab_from_hf(tj, stat(tc, &st) == 0 ? tc : NULL);
        free(tj);
        free(tc);
        return v;
    }
    if (ends_with(path, ".json")) {
        // A sibling tokenizer_config.json carries BOS/EOS flags and the chat template.
        size_t n = strlen(path) + 32;
        char *tc = malloc(n);
        if (!tc) {
            speck_set_error(SPECK_ERR_NOMEM, "%s: out of memory", path);
            return NULL;
        }
        snprintf(tc, n, "%s", path);
        char *slash = strrchr(tc, '/');
        snprintf(slash ? slash + 1 : tc, n - (size_t)(slash ? slash + 1 - tc : 0),
                 "tokenizer_config.json");
        speck_vocab *v = tok_vocab_from_hf(path, stat(tc, &st) == 0 ? tc : NULL);
        free(tc);
        return v;
    }
    speck_gguf *g = speck_gguf_open(path);
    if (!g) return NULL;
    speck_vocab *v = speck_vocab_from_gguf(g);
    speck_gguf_close(g);
    return v;
}

/* ---------------------------------------------------------------------------------------- */
/* Accessors                                                                                 */
/* ---------------------------------------------------------------------------------------- */

speck_vocab_type speck_vocab_kind(const speck_vocab *v) {
    return v->kind;
}
int32_t speck_vocab_n_tokens(const speck_vocab *v) {
    return v->n_tokens;
}
int32_t speck_vocab_bos(const speck_vocab *v) {
    return v->bos;
}
int32_t speck_vocab_eos(const speck_vocab *v) {
    return v->eos;
}
bool speck_vocab_add_bos(const speck_vocab *v) {
    return v->add_bos;
}
bool speck_vocab_add_eos(const speck_vocab *v) {
    return v->add_eos;
}
const char *speck_vocab_chat_template(const speck_vocab *v) {
    return v->chat_template;
}

bool speck_vocab_is_eog(const speck_vocab *v, int32_t id) {
    for (int i = 0; i < v->n_eog; i++)
        if (v->eog[i] == id) return true;
    return false;
}

const char *speck_vocab_token_text(const speck_vocab *v, int32_t id) {
    if (id < 0 || id >= v->n_tokens) {
        speck_set_error(SPECK_ERR_RANGE, "token id %d out of range [0, %d)", id, v->n_tokens);
        return NULL;
    }
    return v->text[id];
}
