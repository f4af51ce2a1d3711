// The grammar matcher: a pushdown automaton over code points whose state is a set of parse
// stacks, advanced by token bytes, and the vocabulary mask computed by walking the token trie.
//
// Why stacks and not an Earley chart: a grammar without left recursion (rejected when parsed)
// expands every stack to terminal tops in finite steps, and for the grammars people send (JSON,
// schemas, small DSLs) the set stays at a few stacks. Stacks are persistent lists whose nodes
// (position, parent) are hash-consed, so equal stacks are equal ids and a set of stacks is a
// sorted id list, interned as one number. Advancing a set by a code point is then a pure
// function, memoised: inside a JSON string every plain character maps the set to itself, so
// the trie walk over the ~all tokens a string allows costs a table lookup per trie node.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "grammar/grammar_internal.h"
#include "grammar/trie_internal.h"

#define MAX_STACKS 4096     // an ambiguous grammar that needs more is refused, not run
#define MAX_NODES (1 << 22) // tables past this are rebuilt from the current state

typedef struct {
    int32_t *v;
    int n, cap;
} ivec;

typedef struct { // open addressing; val < 0: empty
    uint64_t *key;
    int32_t *val;
    size_t cap, n;
} htab;

typedef struct {
    int32_t pos, parent; // parent: -1 = bottom
} snode;

struct speck_gmatch {
    speck_grammar g; // own copy
    const speck_token_trie *t;
    snode *nodes; // hash-consed stack nodes
    int n_nodes, cap_nodes;
    htab node_ix;     // (pos, parent) -> node
    ivec set_pool;    // interned sets back to back: stack ids sorted (-1: an empty stack)
    ivec set_off;     // set id -> offset in set_pool; set id + 1 -> its end
    htab set_ix;      // content hash -> set id (content compared)
    htab memo;        // (set, code point) -> set
    int32_t cur;      // the state: a set id (0: the empty set, nothing accepted)
    uint32_t u8_val;  // pending partial UTF-8 sequence
    int u8_rem;       // continuation bytes still expected | sequence length << 4
    ivec tmp;         // expansions under construction
    uint8_t *allowed; // (n_vocab)
    bool overflow, oom;
};

static int ivec_push(ivec *a, int32_t x) {
    if (a->n == a->cap) {
        int cap = a->cap ? 2 * a->cap : 64;
        int32_t *v = realloc(a->v, (size_t)cap * sizeof *v);
        if (!v) return -1;
        a->v = v, a->cap = cap;
    }
    a->v[a->n++] = x;
    return 0;
}

static uint64_t mix(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    return x ^ (x >> 33);
}

static void htab_free(htab *h) {
    free(h->key), free(h->val);
    memset(h, 0, sizeof *h);
}

static void htab_clear(htab *h) {
    if (h->val) memset(h->val, 0xff, h->cap * sizeof *h->val);
    h->n = 0;
}

static int htab_grow(htab *h) {
    size_t cap = h->cap ? 2 * h->cap : 1024;
    uint64_t *k = malloc(cap * sizeof *k);
    int32_t *v = malloc(cap * sizeof *v);
    if (!k || !v) {
        free(k), free(v);
        return -1;
    }
    memset(v, 0xff, cap * sizeof *v);
    for (size_t i = 0; i < h->cap; i++) {
        if (h->val[i] < 0) continue;
        size_t j = mix(h->key[i]) & (cap - 1);
        while (v[j] >= 0) j = (j + 1) & (cap - 1);
        k[j] = h->key[i], v[j] = h->val[i];
    }
    free(h->key), free(h->val);
    h->key = k, h->val = v, h->cap = cap;
    return 0;
}

// The slot for key: where it is, or the empty slot it would take (after growing when needed).
static size_t htab_slot(htab *h, uint64_t key) {
    size_t j = mix(key) & (h->cap - 1);
    while (h->val[j] >= 0 && h->key[j] != key) j = (j + 1) & (h->cap - 1);
    return j;
}

static int32_t htab_get(const htab *h, uint64_t key) {
    if (!h->cap) return -1;
    size_t j = mix(key) & (h->cap - 1);
    while (h->val[j] >= 0) {
        if (h->key[j] == key) return h->val[j];
        j = (j + 1) & (h->cap - 1);
    }
    return -1;
}

static int htab_put(htab *h, uint64_t key, int32_t val) {
    if ((h->n + 1) * 2 > h->cap && htab_grow(h)) return -1;
    size_t j = htab_slot(h, key);
    if (h->val[j] < 0) h->n++;
    h->key[j] = key, h->val[j] = val;
    return 0;
}

// The node (pos, parent), created on first use; -2 when out of memory.
static int32_t node(speck_gmatch *m, int32_t parent, int32_t pos) {
    uint64_t key = (uint64_t)(uint32_t)pos << 32 | (uint32_t)(parent + 1);
    int32_t id = htab_get(&m->node_ix, key);
    if (id >= 0) return id;
    if (m->n_nodes == m->cap_nodes) {
        int cap = m->cap_nodes ? 2 * m->cap_nodes : 1024;
        snode *n = realloc(m->nodes, (size_t)cap * sizeof *n);
        if (!n) return m->oom = true, -2;
        m->nodes = n, m->cap_nodes = cap;
    }
    m->nodes[m->n_nodes] = (snode){pos, parent};
    if (htab_put(&m->node_ix, key, m->n_nodes)) return m->oom = true, -2;
    return m->n_nodes++;
}

static const int32_t *set_items(const speck_gmatch *m, int32_t set, int *n) {
    int32_t a = m->set_off.v[set], b = m->set_off.v[set + 1];
    *n = b - a;
    return m->set_pool.v + a;
}

static int cmp_i32(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

// Intern the stacks ids[0, n) (sorted and deduplicated here); -1 when out of memory.
static int32_t set_intern(speck_gmatch *m, int32_t *ids, int n) {
    if (n == 0) return 0;
    qsort(ids, (size_t)n, sizeof *ids, cmp_i32);
    int k = 1;
    for (int i = 1; i < n; i++)
        if (ids[i] != ids[k - 1]) ids[k++] = ids[i];
    n = k;
    uint64_t h = 0x9e3779b97f4a7c15ULL;
    for (int i = 0; i < n; i++) h = mix(h ^ (uint64_t)(uint32_t)ids[i]);
    if (m->set_ix.cap) {
        size_t j = mix(h) & (m->set_ix.cap - 1);
        for (; m->set_ix.val[j] >= 0; j = (j + 1) & (m->set_ix.cap - 1)) {
            if (m->set_ix.key[j] != h) continue;
            int cn;
            const int32_t *c = set_items(m, m->set_ix.val[j], &cn);
            if (cn == n && !memcmp(c, ids, (size_t)n * sizeof *ids)) return m->set_ix.val[j];
        }
    }
    int32_t id = m->set_off.n - 1; // set_off holds one more entry than there are sets
    for (int i = 0; i < n; i++)
        if (ivec_push(&m->set_pool, ids[i])) return -1;
    if (ivec_push(&m->set_off, m->set_pool.n)) return -1;
    // set_ix keys may repeat (hash collisions): put() would overwrite, so probe to a free slot
    if ((m->set_ix.n + 1) * 2 > m->set_ix.cap && htab_grow(&m->set_ix)) return -1;
    size_t j = mix(h) & (m->set_ix.cap - 1);
    while (m->set_ix.val[j] >= 0) j = (j + 1) & (m->set_ix.cap - 1);
    m->set_ix.key[j] = h, m->set_ix.val[j] = id;
    m->set_ix.n++;
    return id;
}

// Push st's expansions (terminal tops, or -1 for an empty stack) onto m->tmp.
static void expand(speck_gmatch *m, int32_t st, int depth) {
    if (m->overflow || m->oom) return;
    if (depth > 10000 || m->tmp.n >= MAX_STACKS * 4) { // a runaway grammar
        m->overflow = true;
        return;
    }
    if (st < 0) {
        if (ivec_push(&m->tmp, -1)) m->oom = true;
        return;
    }
    const speck_grammar *g = &m->g;
    int32_t pos = m->nodes[st].pos;
    const speck_gelem *e = &g->elems[pos];
    switch (e->type) {
    case GE_END:
    case GE_ALT:
        expand(m, m->nodes[st].parent, depth + 1);
        return;
    case GE_REF: {
        int32_t parent = m->nodes[st].parent, rest = parent;
        uint8_t after = g->elems[pos + 1].type;
        if (after != GE_END && after != GE_ALT) rest = node(m, parent, pos + 1);
        if (rest == -2) return;
        for (int32_t a = g->rule_start[e->val];;) {
            int32_t child = node(m, rest, a);
            if (child == -2) return;
            expand(m, child, depth + 1);
            while (g->elems[a].type != GE_ALT && g->elems[a].type != GE_END) a++;
            if (g->elems[a].type == GE_END) break;
            a++;
        }
        return;
    }
    default:
        if (ivec_push(&m->tmp, st)) m->oom = true;
        return;
    }
}

static bool elem_match(const speck_grammar *g, const speck_gelem *e, uint32_t cp) {
    if (e->type == GE_ANY) return true;
    bool in = false;
    for (int i = 0; i < e->n && !in; i++)
        in = (int64_t)cp >= g->ranges[2 * (e->val + i)] &&
             (int64_t)cp <= g->ranges[2 * (e->val + i) + 1];
    return e->type == GE_CHAR ? in : !in;
}

// Could some code point in [lo, hi] match e? (a partial UTF-8 sequence's possible values)
static bool elem_may_match(const speck_grammar *g, const speck_gelem *e, uint32_t lo, uint32_t hi) {
    if (e->type == GE_ANY) return true;
    for (int i = 0; i < e->n; i++) {
        int64_t a = g->ranges[2 * (e->val + i)], b = g->ranges[2 * (e->val + i) + 1];
        if (e->type == GE_CHAR && a <= hi && b >= lo) return true;
        if (e->type == GE_CHAR_NOT && a <= lo && b >= hi) return false;
    }
    return e->type == GE_CHAR_NOT;
}

// Smallest code point of a sequence of each length (shorter encodings are overlong, invalid).
static const uint32_t U8_MIN[5] = {0, 0, 0x80, 0x800, 0x10000};

// One byte of UTF-8 into (val, rem): 1 = a code point is complete in *cp, 0 = more to come,
// -1 = invalid. rem: the continuation bytes still expected, and the sequence length << 4.
static int utf8_step(uint32_t *val, int *rem, uint8_t b, uint32_t *cp) {
    if (*rem == 0) {
        if (b < 0x80) return *cp = b, 1;
        if (b >= 0xC2 && b < 0xE0)
            *val = b & 31, *rem = 1 | 2 << 4;
        else if (b >= 0xE0 && b < 0xF0)
            *val = b & 15, *rem = 2 | 3 << 4;
        else if (b >= 0xF0 && b < 0xF5)
            *val = b & 7, *rem = 3 | 4 << 4;
        else
            return -1;
        return 0;
    }
    if ((b & 0xC0) != 0x80) return -1;
    *val = *val << 6 | (b & 63);
    if (--*rem & 15) return 0;
    int len = *rem >> 4;
    *rem = 0;
    *cp = *val;
    return *cp >= U8_MIN[len] && *cp <= 0x10FFFF && (*cp < 0xD800 || *cp > 0xDFFF) ? 1 : -1;
}

// Set `set` advanced by code point cp (memoised): a set id, 0 for none, -1 on failure.
static int32_t advance(speck_gmatch *m, int32_t set, uint32_t cp) {
    uint64_t key = (uint64_t)(uint32_t)set << 21 | cp;
    int32_t r = htab_get(&m->memo, key);
    if (r >= 0) return r;
    m->tmp.n = 0;
    int n;
    const int32_t *it = set_items(m, set, &n);
    for (int i = 0; i < n; i++) {
        it = set_items(m, set, &n); // (node() may not move the pool, but stay safe)
        int32_t st = it[i];
        if (st < 0) continue;
        int32_t pos = m->nodes[st].pos;
        if (!elem_match(&m->g, &m->g.elems[pos], cp)) continue;
        int32_t nx = node(m, m->nodes[st].parent, pos + 1);
        if (nx == -2) break;
        expand(m, nx, 0);
    }
    if (m->oom || m->overflow) return -1;
    int32_t *ids = malloc((size_t)(m->tmp.n + 1) * sizeof *ids);
    if (!ids) return m->oom = true, -1;
    memcpy(ids, m->tmp.v, (size_t)m->tmp.n * sizeof *ids);
    r = set_intern(m, ids, m->tmp.n);
    free(ids);
    int cnt;
    if (r > 0)
        set_items(m, r, &cnt);
    else
        cnt = 0;
    if (r > 0 && cnt > MAX_STACKS) return m->overflow = true, -1;
    if (r < 0 || htab_put(&m->memo, key, r)) return m->oom = true, -1;
    return r;
}

// Could the partial sequence (val, rem) still become a code point some stack of set accepts?
static bool may_continue(const speck_gmatch *m, int32_t set, uint32_t val, int rem) {
    int r = rem & 15, len = rem >> 4;
    uint32_t lo = val << (6 * r), hi = lo | ((1u << (6 * r)) - 1);
    if (lo < U8_MIN[len]) lo = U8_MIN[len];
    if (hi > 0x10FFFF) hi = 0x10FFFF;
    if (lo > hi) return false;
    int n;
    const int32_t *it = set_items(m, set, &n);
    for (int i = 0; i < n; i++)
        if (it[i] >= 0 && elem_may_match(&m->g, &m->g.elems[m->nodes[it[i]].pos], lo, hi))
            return true;
    return false;
}

// Start over from the current state's stacks when the tables have grown large (a long
// generation through many distinct states).
static int rebuild(speck_gmatch *m) {
    int n;
    const int32_t *it = set_items(m, m->cur, &n);
    ivec paths = {0}, lens = {0}; // each stack bottom-up
    for (int i = 0; i < n; i++) {
        int start = paths.n;
        for (int32_t s = it[i]; s >= 0; s = m->nodes[s].parent)
            if (ivec_push(&paths, m->nodes[s].pos)) goto oom;
        for (int a = start, b = paths.n - 1; a < b; a++, b--) {
            int32_t x = paths.v[a];
            paths.v[a] = paths.v[b], paths.v[b] = x;
        }
        if (ivec_push(&lens, paths.n - start)) goto oom;
    }
    m->n_nodes = 0;
    htab_clear(&m->node_ix), htab_clear(&m->set_ix), htab_clear(&m->memo);
    m->set_pool.n = 0, m->set_off.n = 0;
    if (ivec_push(&m->set_off, 0) || ivec_push(&m->set_off, 0)) goto oom; // set 0: empty
    m->tmp.n = 0;
    for (int i = 0, at = 0; i < n; i++) {
        int32_t s = -1;
        for (int k = 0; k < lens.v[i]; k++)
            if ((s = node(m, s, paths.v[at + k])) == -2) goto oom;
        at += lens.v[i];
        if (ivec_push(&m->tmp, s)) goto oom;
    }
    if ((m->cur = set_intern(m, m->tmp.v, m->tmp.n)) < 0) goto oom;
    free(paths.v), free(lens.v);
    return 0;
oom:
    free(paths.v), free(lens.v);
    return speck_set_error(SPECK_ERR_NOMEM, "out of memory in the grammar matcher");
}

static bool too_big(const speck_gmatch *m) {
    return m->n_nodes > MAX_NODES || m->memo.n > (size_t)MAX_NODES;
}

speck_gmatch *speck_gmatch_new(const speck_grammar *g, const speck_token_trie *t) {
    if (!g || !t) {
        speck_set_error(SPECK_ERR_ARG, "grammar matcher: no grammar or no token trie");
        return NULL;
    }
    speck_gmatch *m = calloc(1, sizeof *m);
    if (!m) goto oom;
    m->t = t;
    m->g = *g;
    m->g.elems = malloc((size_t)(g->n_elems + 1) * sizeof *g->elems);
    m->g.ranges = malloc((size_t)(2 * g->n_ranges + 1) * sizeof *g->ranges);
    m->g.rule_start = malloc((size_t)g->n_rules * sizeof *g->rule_start);
    m->allowed = malloc((size_t)t->n_vocab + 1);
    if (!m->g.elems || !m->g.ranges || !m->g.rule_start || !m->allowed) goto oom;
    memcpy(m->g.elems, g->elems, (size_t)g->n_elems * sizeof *g->elems);
    memcpy(m->g.ranges, g->ranges, (size_t)2 * g->n_ranges * sizeof *g->ranges);
    memcpy(m->g.rule_start, g->rule_start, (size_t)g->n_rules * sizeof *g->rule_start);
    if (ivec_push(&m->set_off, 0) || ivec_push(&m->set_off, 0)) goto oom; // set 0: empty
    // the start: root's alternatives, each on an empty stack
    for (int32_t a = m->g.rule_start[m->g.root];;) {
        int32_t st = node(m, -1, a);
        if (st < 0) goto oom;
        expand(m, st, 0);
        while (m->g.elems[a].type != GE_ALT && m->g.elems[a].type != GE_END) a++;
        if (m->g.elems[a].type == GE_END) break;
        a++;
    }
    if (m->oom) goto oom;
    if (m->overflow || m->tmp.n > MAX_STACKS) {
        speck_set_error(SPECK_ERR_ARG, "grammar: too ambiguous (over %d parse stacks)", MAX_STACKS);
        speck_gmatch_free(m);
        return NULL;
    }
    if ((m->cur = set_intern(m, m->tmp.v, m->tmp.n)) < 0) goto oom;
    return m;
oom:
    speck_gmatch_free(m);
    speck_set_error(SPECK_ERR_NOMEM, "out of memory creating a grammar matcher");
    return NULL;
}

void speck_gmatch_free(speck_gmatch *m) {
    if (!m) return;
    free(m->g.elems), free(m->g.ranges), free(m->g.rule_start);
    free(m->nodes), free(m->set_pool.v), free(m->set_off.v), free(m->tmp.v), free(m->allowed);
    htab_free(&m->node_ix), htab_free(&m->set_ix), htab_free(&m->memo);
    free(m);
}

bool speck_gmatch_complete(const speck_gmatch *m) {
    if (m->u8_rem) return false;
    int n;
    const int32_t *it = set_items(m, m->cur, &n);
    return n > 0 && it[0] < 0; // sorted: an empty stack (-1) comes first
}

bool speck_gmatch_done(const speck_gmatch *m) {
    int n;
    const int32_t *it = set_items(m, m->cur, &n);
    return m->u8_rem == 0 && n == 1 && it[0] < 0;
}

static bool is_eog(const speck_token_trie *t, int32_t tok) {
    for (int i = 0; i < t->n_eog; i++)
        if (t->eog[i] == tok) return true;
    return false;
}

// Feed a token's bytes; on success the state moves, else it stays.
static int feed(speck_gmatch *m, int32_t tok) {
    const speck_token_trie *t = m->t;
    if (tok < 0 || tok >= t->n_vocab) return -1;
    if (is_eog(t, tok)) return speck_gmatch_complete(m) ? 0 : -1;
    uint32_t len = t->len[tok];
    if (!len) return -1;
    const uint8_t *b = (const uint8_t *)t->bytes + t->off[tok];
    uint32_t val = m->u8_val;
    int rem = m->u8_rem;
    int32_t set = m->cur;
    for (uint32_t i = 0; i < len && set > 0; i++) {
        uint32_t cp;
        int r = utf8_step(&val, &rem, b[i], &cp);
        if (r < 0)
            set = 0;
        else if (r == 0)
            set = may_continue(m, set, val, rem) ? set : 0;
        else
            set = advance(m, set, cp);
    }
    m->overflow = m->oom = false;
    if (set <= 0) return -1;
    m->cur = set, m->u8_val = val, m->u8_rem = rem;
    return 0;
}

int speck_gmatch_accept(speck_gmatch *m, int32_t token) {
    if (too_big(m) && rebuild(m)) return SPECK_ERR_NOMEM;
    if (feed(m, token))
        return speck_set_error(SPECK_ERR_ARG, "grammar: token %d is not allowed here", token);
    return 0;
}

int speck_gmatch_check(speck_gmatch *m, const int32_t *toks, int n) {
    int32_t cur = m->cur;
    uint32_t val = m->u8_val;
    int rem = m->u8_rem, k = 0;
    while (k < n && feed(m, toks[k]) == 0) k++; // (feed never rebuilds: ids stay valid)
    m->cur = cur, m->u8_val = val, m->u8_rem = rem;
    return k;
}

// Mark the tokens below trie nodes [lo, hi) whose bytes `set` accepts after the pending UTF-8
// state (val, rem).
static void walk(speck_gmatch *m, int lo, int hi, int32_t set, uint32_t val, int rem) {
    const speck_token_trie *t = m->t;
    for (int c = lo; c < hi; c = t->nodes[c].skip) {
        const speck_trie_node *nd = &t->nodes[c];
        uint32_t v = val, cp;
        int r = rem;
        int32_t next = set;
        int u = utf8_step(&v, &r, nd->byte, &cp);
        if (u < 0) continue;
        if (u == 0) {
            if (!may_continue(m, set, v, r)) continue;
        } else if ((next = advance(m, set, cp)) <= 0) {
            m->overflow = m->oom = false;
            continue;
        }
        for (int i = nd->tok_lo; i < nd->tok_hi; i++) m->allowed[t->sorted[i]] = 1;
        if (c + 1 < nd->skip) walk(m, c + 1, nd->skip, next, v, r);
    }
}

int speck_gmatch_mask(speck_gmatch *m, float *logits) {
    const speck_token_trie *t = m->t;
    if (too_big(m) && rebuild(m)) return SPECK_ERR_NOMEM;
    memset(m->allowed, 0, (size_t)t->n_vocab);
    walk(m, 0, t->n_nodes, m->cur, m->u8_val, m->u8_rem);
    if (speck_gmatch_complete(m))
        for (int i = 0; i < t->n_eog; i++) m->allowed[t->eog[i]] = 1;
    int n_ok = 0;
    for (int i = 0; i < t->n_vocab; i++) {
        if (m->allowed[i])
            n_ok++;
        else
            logits[i] = -INFINITY;
    }
    return n_ok;
}
