// The vocabulary's token bytes as a prefix trie in depth-first order, so the grammar matcher
// can walk every token sharing a prefix once and skip whole subtrees the grammar rejects.
#include <stdlib.h>
#include <string.h>

#include "grammar/trie_internal.h"
#include "tokenizer/tokenizer_internal.h"

typedef struct {
    const char *p;
    uint32_t len;
    int32_t id;
} tok_key;

static int cmp_tok(const void *a, const void *b) {
    const tok_key *x = a, *y = b;
    int c = memcmp(x->p, y->p, x->len < y->len ? x->len : y->len);
    if (c) return c;
    return x->len < y->len ? -1 : x->len > y->len ? 1 : (x->id > y->id) - (x->id < y->id);
}

// Nodes for the tokens sorted[a, b), all sharing their first `depth` bytes, in preorder.
static int build(speck_token_trie *t, int a, int b, int depth) {
    while (a < b) {
        int32_t tok = t->sorted[a];
        uint8_t byte = (uint8_t)t->bytes[t->off[tok] + depth];
        int e = a;
        while (e < b) {
            int32_t u = t->sorted[e];
            if ((uint8_t)t->bytes[t->off[u] + depth] != byte) break;
            e++;
        }
        int node = t->n_nodes++;
        t->nodes[node].byte = byte;
        // tokens that end here come first in [a, e) (shorter sorts first)
        int k = a;
        while (k < e && (int)t->len[t->sorted[k]] == depth + 1) k++;
        t->nodes[node].tok_lo = a;
        t->nodes[node].tok_hi = k;
        if (build(t, k, e, depth + 1)) return -1;
        t->nodes[node].skip = t->n_nodes;
        a = e;
    }
    return 0;
}

speck_token_trie *speck_token_trie_new(const speck_vocab *v) {
    if (!v) {
        speck_set_error(SPECK_ERR_ARG, "token trie: no vocabulary");
        return NULL;
    }
    int n = speck_vocab_n_tokens(v);
    speck_token_trie *t = calloc(1, sizeof *t);
    if (!t) goto oom;
    t->n_vocab = n;
    t->off = malloc((size_t)n * sizeof *t->off);
    t->len = calloc((size_t)n, sizeof *t->len);
    t->sorted = malloc((size_t)n * sizeof *t->sorted);
    t->eog = malloc((size_t)n * sizeof *t->eog);
    if (!t->off || !t->len || !t->sorted || !t->eog) goto oom;
    size_t cap = 1 << 16, used = 0;
    if (!(t->bytes = malloc(cap))) goto oom;
    long total = 0;
    for (int i = 0; i < n; i++) {
        char buf[512];
        int len = speck_token_to_piece(v, i, buf, sizeof buf);
        t->off[i] = (uint32_t)used;
        if (speck_vocab_is_eog(v, i)) {
            t->eog[t->n_eog++] = i;
            continue;
        }
        uint8_t type = v->type[i];
        if (len <= 0 || len > (int)sizeof buf || type == TOK_CONTROL || type == TOK_UNKNOWN)
            continue;
        if (used + (size_t)len > cap) {
            while (used + (size_t)len > cap) cap *= 2;
            char *nb = realloc(t->bytes, cap);
            if (!nb) goto oom;
            t->bytes = nb;
        }
        memcpy(t->bytes + used, buf, (size_t)len);
        used += (size_t)len;
        t->len[i] = (uint32_t)len;
        t->sorted[t->n_sorted++] = i;
        total += len;
    }
    tok_key *keys = malloc((size_t)(t->n_sorted + 1) * sizeof *keys);
    if (!keys) goto oom;
    for (int i = 0; i < t->n_sorted; i++) {
        int32_t id = t->sorted[i];
        keys[i] = (tok_key){t->bytes + t->off[id], t->len[id], id};
    }
    qsort(keys, (size_t)t->n_sorted, sizeof *keys, cmp_tok);
    for (int i = 0; i < t->n_sorted; i++) t->sorted[i] = keys[i].id;
    free(keys);
    // at most one node per token byte
    if (!(t->nodes = malloc((size_t)(total + 1) * sizeof *t->nodes))) goto oom;
    if (build(t, 0, t->n_sorted, 0)) goto oom;
    return t;
oom:
    speck_token_trie_free(t);
    speck_set_error(SPECK_ERR_NOMEM, "out of memory building the token trie");
    return NULL;
}

void speck_token_trie_free(speck_token_trie *t) {
    if (!t) return;
    free(t->off), free(t->len), free(t->sorted), free(t->eog), free(t->bytes), free(t->nodes);
    free(t);
}
