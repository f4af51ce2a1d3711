// SentencePiece-style BPE driven by token scores (GGUF tokenizer.ggml.model "llama"): start from
// UTF-8 characters and repeatedly merge the adjacent pair whose concatenation is the
// highest-scoring token (leftmost on ties). Characters that never become a token fall back to
// their <0xXX> byte tokens, or to the unknown token.
#include <stdlib.h>
#include <string.h>

#include "tokenizer_internal.h"

typedef struct {
    uint32_t off, n; // n = 0 once merged into the left neighbour
    int32_t prev, next;
} sym;

typedef struct {
    float score;
    int32_t left, right;
    uint32_t size;
} bigram;

static inline bool bg_better(const bigram *a, const bigram *b) {
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}

typedef struct {
    bigram *h;
    size_t n, cap;
} heap;

static int heap_push(heap *q, bigram b) {
    if (q->n == q->cap) {
        size_t nc = q->cap ? q->cap * 2 : 64;
        bigram *p = realloc(q->h, nc * sizeof *p);
        if (!p) return SPECK_ERR_NOMEM;
        q->h = p;
        q->cap = nc;
    }
    size_t i = q->n++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!bg_better(&b, &q->h[parent])) break;
        q->h[i] = q->h[parent];
        i = parent;
    }
    q->h[i] = b;
    return SPECK_OK;
}

static bigram heap_pop(heap *q) {
    bigram top = q->h[0], last = q->h[--q->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= q->n) break;
        if (c + 1 < q->n && bg_better(&q->h[c + 1], &q->h[c])) c++;
        if (!bg_better(&q->h[c], &last)) break;
        q->h[i] = q->h[c];
        i = c;
    }
    if (q->n) q->h[i] = last;
    return top;
}

// A token text can take part in merges only if SentencePiece would: control, unknown and byte
// pieces are reserved and never produced from raw text.
static int32_t piece_id(const speck_vocab *v, const char *s, size_t n) {
    int32_t id = tok_find(v, s, n);
    if (id < 0) return -1;
    uint8_t t = v->type[id];
    return (t == TOK_CONTROL || t == TOK_UNKNOWN || t == TOK_BYTE) ? -1 : id;
}

static int try_pair(const speck_vocab *v, const char *text, const sym *syms, heap *q, int32_t l,
                    int32_t r) {
    if (l < 0 || r < 0) return SPECK_OK;
    uint32_t size = syms[l].n + syms[r].n;
    int32_t id = piece_id(v, text + syms[l].off, size); // the pair is contiguous in text
    if (id < 0) return SPECK_OK;
    bigram b = {v->scores[id], l, r, size};
    return heap_push(q, b);
}

int tok_spm_encode(const speck_vocab *v, const char *text, size_t len, tok_out *out) {
    if (len == 0) return SPECK_OK;
    sym *syms = malloc(len * sizeof *syms);
    heap q = {0};
    int rc = SPECK_OK;
    if (!syms) goto nomem;
    size_t n = 0;
    for (size_t i = 0; i < len; n++) {
        uint32_t cp;
        uint32_t cl = (uint32_t)tok_utf8_next(text + i, len - i, &cp);
        syms[n] = (sym){(uint32_t)i, cl, (int32_t)n - 1, (int32_t)n + 1};
        i += cl;
    }
    syms[n - 1].next = -1;
    for (size_t i = 1; i < n; i++)
        if (try_pair(v, text, syms, &q, (int32_t)i - 1, (int32_t)i)) goto nomem;
    while (q.n) {
        bigram b = heap_pop(&q);
        sym *l = &syms[b.left], *r = &syms[b.right];
        if (!l->n || !r->n || l->n + r->n != b.size) continue; // stale
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0) syms[r->next].prev = b.left;
        if (try_pair(v, text, syms, &q, l->prev, b.left) ||
            try_pair(v, text, syms, &q, b.left, l->next))
            goto nomem;
    }
    // Merged symbols are always tokens; only single characters can be left without one.
    for (int32_t i = 0; i >= 0; i = syms[i].next) {
        const sym *s = &syms[i];
        int32_t id = piece_id(v, text + s->off, s->n);
        if (id >= 0) {
            if (tok_out_push(out, id)) goto nomem;
            continue;
        }
        bool all = v->byte_fallback;
        for (uint32_t k = 0; all && k < s->n; k++)
            all = v->byte_tok[(uint8_t)text[s->off + k]] >= 0;
        if (all) {
            for (uint32_t k = 0; k < s->n; k++)
                if (tok_out_push(out, v->byte_tok[(uint8_t)text[s->off + k]])) goto nomem;
        } else if (v->unk >= 0 && tok_out_push(out, v->unk)) {
            goto nomem;
        }
    }
    goto done;
nomem:
    rc = speck_set_error(SPECK_ERR_NOMEM, "tokenizer: out of memory");
done:
    free(syms);
    free(q.h);
    return rc;
}
