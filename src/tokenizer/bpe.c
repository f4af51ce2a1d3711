// Rank-driven BPE: pre-tokenised words (GPT-2 byte-mapped, or SentencePiece-normalised text for
// tokenizer.json vocabularies such as Llama 2 / Gemma) are merged pair by pair, always the pair
// with the lowest merge rank first (leftmost on ties), using a binary heap so a word of n
// characters costs O(n log n). Finished words are remembered in a bounded cache.
#include <stdlib.h>
#include <string.h>

#include "tokenizer_internal.h"

/* ---------------------------------------------------------------------------------------- */
/* Word cache                                                                                */
/* ---------------------------------------------------------------------------------------- */

struct tok_cache_entry {
    uint64_t hash; // 0 = empty
    uint32_t key_off, key_len, ids_off, n_ids;
};

#define CACHE_SLOTS (1u << 16) // entries are dropped all at once when half full
#define CACHE_ARENA (8u << 20) // bytes of keys + ids
#define CACHE_MAX_WORD 128     // longer words are not worth remembering

void tok_cache_init(tok_cache *c) {
    memset(c, 0, sizeof *c);
    pthread_mutex_init(&c->lock, NULL);
}

void tok_cache_free(tok_cache *c) {
    pthread_mutex_destroy(&c->lock);
    free(c->slots);
    free(c->arena);
}

static uint64_t word_hash(const char *s, size_t n) {
    uint64_t h = 0x9e3779b97f4a7c15ull ^ n;
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 0x100000001b3ull;
    h ^= h >> 31;
    return h | 1; // never 0 (the empty marker)
}

// Appends the cached ids of word to out; returns 1 if found.
static int cache_get(tok_cache *c, const char *w, size_t n, uint64_t h, tok_out *out) {
    int found = 0;
    pthread_mutex_lock(&c->lock);
    if (c->slots) {
        for (uint32_t i = (uint32_t)h & c->mask;; i = (i + 1) & c->mask) {
            struct tok_cache_entry *e = &c->slots[i];
            if (!e->hash) break;
            if (e->hash == h && e->key_len == n && !memcmp(c->arena + e->key_off, w, n)) {
                const int32_t *ids = (const int32_t *)(c->arena + e->ids_off);
                found = 1;
                for (uint32_t k = 0; k < e->n_ids; k++)
                    if (tok_out_push(out, ids[k])) {
                        found = -1;
                        break;
                    }
                break;
            }
        }
    }
    pthread_mutex_unlock(&c->lock);
    return found;
}

static void cache_put(tok_cache *c, const char *w, size_t n, uint64_t h, const int32_t *ids,
                      int64_t n_ids) {
    size_t need = ((n + 3) & ~(size_t)3) + (size_t)n_ids * 4;
    pthread_mutex_lock(&c->lock);
    if (!c->slots) {
        c->slots = calloc(CACHE_SLOTS, sizeof *c->slots);
        c->arena = malloc(CACHE_ARENA);
        c->mask = CACHE_SLOTS - 1;
        c->arena_cap = CACHE_ARENA;
        if (!c->slots || !c->arena) {
            free(c->slots);
            free(c->arena);
            c->slots = NULL;
            c->arena = NULL;
            goto out;
        }
    }
    if (c->used >= CACHE_SLOTS / 2 || c->arena_used + need > c->arena_cap) {
        memset(c->slots, 0, CACHE_SLOTS * sizeof *c->slots);
        c->used = 0;
        c->arena_used = 0;
    }
    uint32_t i = (uint32_t)h & c->mask;
    for (;; i = (i + 1) & c->mask) {
        struct tok_cache_entry *e = &c->slots[i];
        if (!e->hash) break;
        if (e->hash == h && e->key_len == n && !memcmp(c->arena + e->key_off, w, n)) goto out;
    }
    struct tok_cache_entry *e = &c->slots[i];
    e->hash = h;
    e->key_off = (uint32_t)c->arena_used;
    e->key_len = (uint32_t)n;
    memcpy(c->arena + c->arena_used, w, n);
    c->arena_used += (n + 3) & ~(size_t)3;
    e->ids_off = (uint32_t)c->arena_used;
    e->n_ids = (uint32_t)n_ids;
    if (n_ids) memcpy(c->arena + c->arena_used, ids, (size_t)n_ids * 4);
    c->arena_used += (size_t)n_ids * 4;
    c->used++;
out:
    pthread_mutex_unlock(&c->lock);
}

/* ---------------------------------------------------------------------------------------- */
/* Merging                                                                                   */
/* ---------------------------------------------------------------------------------------- */

typedef struct {
    int32_t id;   // token of the symbol's current text, -1 if none
    uint32_t off; // byte range in the word text (for fallbacks)
    uint32_t n;   // 0 once merged into its left neighbour
    int32_t prev, next;
} sym;

typedef struct {
    int32_t rank, left, right, id;
    uint32_t size;
} bigram;

typedef struct {
    sym *syms;
    size_t n_syms, cap_syms;
    bigram *heap;
    size_t n_heap, cap_heap;
    char *mapped;
    size_t cap_mapped;
    size_t *pieces;
    size_t cap_pieces;
} work;

static inline bool bg_less(const bigram *a, const bigram *b) {
    return a->rank < b->rank || (a->rank == b->rank && a->left < b->left);
}

static int heap_push(work *w, bigram b) {
    if (w->n_heap == w->cap_heap) {
        size_t nc = w->cap_heap ? w->cap_heap * 2 : 64;
        bigram *p = realloc(w->heap, nc * sizeof *p);
        if (!p) return SPECK_ERR_NOMEM;
        w->heap = p;
        w->cap_heap = nc;
    }
    size_t i = w->n_heap++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!bg_less(&b, &w->heap[parent])) break;
        w->heap[i] = w->heap[parent];
        i = parent;
    }
    w->heap[i] = b;
    return SPECK_OK;
}

static bigram heap_pop(work *w) {
    bigram top = w->heap[0], last = w->heap[--w->n_heap];
    size_t i = 0, n = w->n_heap;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && bg_less(&w->heap[c + 1], &w->heap[c])) c++;
        if (!bg_less(&w->heap[c], &last)) break;
        w->heap[i] = w->heap[c];
        i = c;
    }
    if (n) w->heap[i] = last;
    return top;
}

static int try_pair(const speck_vocab *v, work *w, int32_t l, int32_t r) {
    if (l < 0 || r < 0) return SPECK_OK;
    const tok_pair *p = tok_pair_find(&v->merges, w->syms[l].id, w->syms[r].id);
    if (!p) return SPECK_OK;
    bigram b = {p->rank, l, r, p->id, w->syms[l].n + w->syms[r].n};
    return heap_push(w, b);
}

static int emit_unknown(const speck_vocab *v, const char *text, const sym *s, tok_out *out,
                        bool *prev_unk) {
    if (v->byte_fallback) {
        bool all = true;
        for (uint32_t k = 0; k < s->n; k++) all &= v->byte_tok[(uint8_t)text[s->off + k]] >= 0;
        if (all) {
            for (uint32_t k = 0; k < s->n; k++)
                if (tok_out_push(out, v->byte_tok[(uint8_t)text[s->off + k]]))
                    return SPECK_ERR_NOMEM;
            *prev_unk = false;
            return SPECK_OK;
        }
    }
    if (v->unk < 0) return SPECK_OK; // nothing to emit (GPT-2 style vocabularies never get here)
    if (v->fuse_unk && *prev_unk) return SPECK_OK;
    *prev_unk = true;
    return tok_out_push(out, v->unk);
}

// Merge one word. For byte-level vocabularies text holds raw bytes and each byte starts as the
// token of its mapped character; otherwise each UTF-8 character starts as its own token.
static int merge_word(const speck_vocab *v, work *w, const char *text, size_t len, tok_out *out) {
    if (len > w->cap_syms) {
        sym *p = realloc(w->syms, len * sizeof *p);
        if (!p) return SPECK_ERR_NOMEM;
        w->syms = p;
        w->cap_syms = len;
    }
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        sym *s = &w->syms[n];
        uint32_t cl = 1;
        if (v->byte_level) {
            s->id = v->bl_id[(uint8_t)text[i]];
        } else {
            uint32_t cp;
            cl = (uint32_t)tok_utf8_next(text + i, len - i, &cp);
            s->id = tok_find(v, text + i, cl);
        }
        s->off = (uint32_t)i;
        s->n = cl;
        s->prev = (int32_t)n - 1;
        s->next = (int32_t)n + 1;
        i += cl;
        n++;
    }
    w->syms[n - 1].next = -1;
    w->n_heap = 0;
    for (size_t i = 1; i < n; i++)
        if (try_pair(v, w, (int32_t)i - 1, (int32_t)i)) return SPECK_ERR_NOMEM;
    while (w->n_heap) {
        bigram b = heap_pop(w);
        sym *l = &w->syms[b.left], *r = &w->syms[b.right];
        // Stale entries: either side already merged away or grown since the pair was queued.
        if (!l->n || !r->n || l->next != b.right || l->n + r->n != b.size) continue;
        l->id = b.id;
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0) w->syms[r->next].prev = b.left;
        if (try_pair(v, w, l->prev, b.left) || try_pair(v, w, b.left, l->next))
            return SPECK_ERR_NOMEM;
    }
    bool prev_unk = false;
    for (int32_t i = 0; i >= 0; i = w->syms[i].next) {
        const sym *s = &w->syms[i];
        if (s->id >= 0) {
            if (tok_out_push(out, s->id)) return SPECK_ERR_NOMEM;
            prev_unk = false;
        } else if (emit_unknown(v, text, s, out, &prev_unk)) {
            return SPECK_ERR_NOMEM;
        }
    }
    return SPECK_OK;
}

static int encode_word(const speck_vocab *v, work *w, const char *text, size_t len, tok_out *out) {
    if (len == 0) return SPECK_OK;
    if (v->ignore_merges) {
        // Llama 3: a word that is already a token is emitted whole, merges notwithstanding.
        const char *key = text;
        size_t kl = len;
        if (v->byte_level) {
            if (2 * len > w->cap_mapped) {
                char *p = realloc(w->mapped, 2 * len);
                if (!p) return SPECK_ERR_NOMEM;
                w->mapped = p;
                w->cap_mapped = 2 * len;
            }
            kl = 0;
            for (size_t i = 0; i < len; i++)
                kl += (size_t)tok_byte_to_unicode((uint8_t)text[i], w->mapped + kl);
            key = w->mapped;
        }
        int32_t id = tok_find(v, key, kl);
        if (id >= 0) return tok_out_push(out, id);
    }
    if (len > CACHE_MAX_WORD) return merge_word(v, w, text, len, out);
    tok_cache *c = (tok_cache *)&v->cache; // the cache is internally synchronised
    uint64_t h = word_hash(text, len);
    int got = cache_get(c, text, len, h, out);
    if (got) return got < 0 ? SPECK_ERR_NOMEM : SPECK_OK;
    int64_t start = out->n;
    int rc = merge_word(v, w, text, len, out);
    // A word of unknown symbols only (no unk token) yields no ids, and out->ids may then still
    // be NULL: no pointer arithmetic on it.
    if (!rc) cache_put(c, text, len, h, out->n > start ? out->ids + start : NULL, out->n - start);
    return rc;
}

int tok_bpe_encode(const speck_vocab *v, const char *text, size_t len, tok_out *out) {
    work w = {0};
    int rc = SPECK_OK;
    if (v->pre.n == 0) {
        rc = encode_word(v, &w, text, len, out);
    } else {
        size_t np = 0;
        rc = tok_pretok_split(&v->pre, text, len, &w.pieces, &np, &w.cap_pieces);
        for (size_t i = 0; !rc && i < np; i++)
            rc = encode_word(v, &w, text + w.pieces[2 * i], w.pieces[2 * i + 1], out);
    }
    free(w.syms);
    free(w.heap);
    free(w.mapped);
    free(w.pieces);
    if (rc == SPECK_ERR_NOMEM) speck_set_error(rc, "tokenizer: out of memory");
    return rc;
}
