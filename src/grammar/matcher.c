// The grammar matcher: a pushdown automaton over code points whose state is a set of parse
// stacks (persistent lists sharing their tails), advanced by token bytes, and the vocabulary
// mask computed by walking the token trie with that set.
//
// Why stacks and not an Earley chart: a grammar without left recursion (rejected when parsed)
// expands every stack to terminal tops in finite steps, so each code point costs a handful of
// stack pushes; sharing tails makes "advance" O(1) per stack, and a whole subtree of the trie
// is dropped the moment its prefix empties the set. JSON and schema grammars, the common case,
// keep the set at a few stacks.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "grammar/grammar_internal.h"
#include "grammar/trie_internal.h"

#define MAX_STACKS 4096 // an ambiguous grammar that needs more is refused, not run

typedef struct {
    int32_t pos, parent; // parent: -1 = bottom
} snode;

typedef struct {
    int32_t *v;
    int n, cap;
} ivec;

struct speck_gmatch {
    speck_grammar g; // own copy
    const speck_token_trie *t;
    snode *nodes; // arena of stack nodes
    int n_nodes, cap_nodes;
    ivec cur;         // the state: stack tops (-1: an empty stack, i.e. complete)
    uint32_t u8_val;  // pending partial UTF-8 sequence
    int u8_rem;       // continuation bytes still expected
    ivec scratch;     // sets of the trie walk, one per depth, back to back
    uint8_t *allowed; // (n_vocab)
    bool overflow;
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

static int32_t push(speck_gmatch *m, int32_t parent, int32_t pos) {
    if (m->n_nodes == m->cap_nodes) {
        int cap = m->cap_nodes ? 2 * m->cap_nodes : 1024;
        snode *n = realloc(m->nodes, (size_t)cap * sizeof *n);
        if (!n) return m->overflow = true, -2;
        m->nodes = n, m->cap_nodes = cap;
    }
    m->nodes[m->n_nodes] = (snode){pos, parent};
    return m->n_nodes++;
}

static bool stack_eq(const speck_gmatch *m, int32_t a, int32_t b) {
    while (a != b) {
        if (a < 0 || b < 0 || m->nodes[a].pos != m->nodes[b].pos) return false;
        a = m->nodes[a].parent, b = m->nodes[b].parent;
    }
    return true;
}

// Add stack st to out[from..] unless an equal one is there.
static void add_stack(speck_gmatch *m, ivec *out, int from, int32_t st) {
    for (int i = from; i < out->n; i++)
        if (stack_eq(m, out->v[i], st)) return;
    if (out->n - from >= MAX_STACKS || ivec_push(out, st)) m->overflow = true;
}

// Push st's expansions (terminal tops, or -1 for an empty stack) onto out[from..].
static void expand(speck_gmatch *m, ivec *out, int from, int32_t st, int depth) {
    if (m->overflow) return;
    if (depth > 10000) { // nesting this deep means a runaway grammar
        m->overflow = true;
        return;
    }
    if (st < 0) {
        add_stack(m, out, from, -1);
        return;
    }
    const speck_grammar *g = &m->g;
    int32_t pos = m->nodes[st].pos;
    const speck_gelem *e = &g->elems[pos];
    switch (e->type) {
    case GE_END:
    case GE_ALT: expand(m, out, from, m->nodes[st].parent, depth + 1); return;
    case GE_REF: {
        int32_t parent = m->nodes[st].parent, rest = parent;
        uint8_t after = g->elems[pos + 1].type;
        if (after != GE_END && after != GE_ALT) rest = push(m, parent, pos + 1);
        for (int32_t a = g->rule_start[e->val];;) {
            int32_t child = push(m, rest, a);
            if (child == -2) return;
            expand(m, out, from, child, depth + 1);
            while (g->elems[a].type != GE_ALT && g->elems[a].type != GE_END) a++;
            if (g->elems[a].type == GE_END) break;
            a++;
        }
        return;
    }
    default: add_stack(m, out, from, st); return;
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

// The set out->v[at, at + n) advanced by code point cp, appended to out (which may move).
// Returns the new set's size.
static int advance(speck_gmatch *m, int at, int n, uint32_t cp, ivec *out) {
    int from = out->n;
    for (int i = 0; i < n; i++) {
        int32_t st = out->v[at + i];
        if (st < 0) continue;
        int32_t pos = m->nodes[st].pos;
        if (!elem_match(&m->g, &m->g.elems[pos], cp)) continue;
        int32_t nx = push(m, m->nodes[st].parent, pos + 1);
        if (nx == -2) break;
        expand(m, out, from, nx, 0);
    }
    return out->n - from;
}


// Smallest code point of a sequence of each length (shorter encodings are overlong, invalid).
static const uint32_t U8_MIN[5] = {0, 0, 0x80, 0x800, 0x10000};

// One byte of UTF-8 into (val, rem): 1 = a code point is complete in *cp, 0 = more to come,
// -1 = invalid. rem: the continuation bytes still expected, and the sequence length << 4.
static int utf8_step(uint32_t *val, int *rem, uint8_t b, uint32_t *cp) {
    if (*rem == 0) {
        if (b < 0x80) return *cp = b, 1;
        if (b >= 0xC2 && b < 0xE0) *val = b & 31, *rem = 1 | 2 << 4;
        else if (b >= 0xE0 && b < 0xF0) *val = b & 15, *rem = 2 | 3 << 4;
        else if (b >= 0xF0 && b < 0xF5) *val = b & 7, *rem = 3 | 4 << 4;
        else return -1;
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

// Could the partial sequence (val, rem) still become a code point some stack accepts?
static bool may_continue(const speck_gmatch *m, const int32_t *in, int n, uint32_t val, int rem) {
    int r = rem & 15, len = rem >> 4;
    uint32_t lo = val << (6 * r), hi = lo | ((1u << (6 * r)) - 1);
    if (lo < U8_MIN[len]) lo = U8_MIN[len];
    if (hi > 0x10FFFF) hi = 0x10FFFF;
    if (lo > hi) return false;
    for (int i = 0; i < n; i++)
        if (in[i] >= 0 && elem_may_match(&m->g, &m->g.elems[m->nodes[in[i]].pos], lo, hi))
            return true;
    return false;
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
    // the start: root's alternatives on an empty stack
    int32_t top = push(m, -1, m->g.rule_start[m->g.root]);
    if (top < 0) goto oom;
    // a REF element holding root, expanded: reuse expand by a synthetic stack of root's start
    for (int32_t a = m->g.rule_start[m->g.root];;) {
        int32_t st = a == m->g.rule_start[m->g.root] ? top : push(m, -1, a);
        if (st < 0) goto oom;
        expand(m, &m->cur, 0, st, 0);
        while (m->g.elems[a].type != GE_ALT && m->g.elems[a].type != GE_END) a++;
        if (m->g.elems[a].type == GE_END) break;
        a++;
    }
    if (m->overflow) {
        speck_set_error(SPECK_ERR_ARG, "grammar: too ambiguous (over %d parse stacks)", MAX_STACKS);
        speck_gmatch_free(m);
        return NULL;
    }
    return m;
oom:
    speck_gmatch_free(m);
    speck_set_error(SPECK_ERR_NOMEM, "out of memory creating a grammar matcher");
    return NULL;
}

void speck_gmatch_free(speck_gmatch *m) {
    if (!m) return;
    free(m->g.elems), free(m->g.ranges), free(m->g.rule_start);
    free(m->nodes), free(m->cur.v), free(m->scratch.v), free(m->allowed);
    free(m);
}

bool speck_gmatch_complete(const speck_gmatch *m) {
    if (m->u8_rem) return false;
    for (int i = 0; i < m->cur.n; i++)
        if (m->cur.v[i] < 0) return true;
    return false;
}

bool speck_gmatch_done(const speck_gmatch *m) {
    return m->u8_rem == 0 && m->cur.n == 1 && m->cur.v[0] < 0;
}

static bool is_eog(const speck_token_trie *t, int32_t tok) {
    for (int i = 0; i < t->n_eog; i++)
        if (t->eog[i] == tok) return true;
    return false;
}

// Feed a token's bytes; on success the state moves (nodes stay in the arena), else unchanged.
static int feed(speck_gmatch *m, int32_t tok) {
    const speck_token_trie *t = m->t;
    if (tok < 0 || tok >= t->n_vocab) return -1;
    if (is_eog(t, tok)) return speck_gmatch_complete(m) ? 0 : -1;
    uint32_t len = t->len[tok];
    if (!len) return -1;
    const uint8_t *b = (const uint8_t *)t->bytes + t->off[tok];
    uint32_t val = m->u8_val;
    int rem = m->u8_rem;
    int base = m->scratch.n; // the current set is copied into scratch, then replaced in turn
    for (int i = 0; i < m->cur.n; i++)
        if (ivec_push(&m->scratch, m->cur.v[i])) return -1;
    int at = base, n = m->cur.n;
    for (uint32_t i = 0; i < len && n > 0; i++) {
        uint32_t cp;
        int r = utf8_step(&val, &rem, b[i], &cp);
        if (r < 0) n = 0;
        else if (r == 0) n = may_continue(m, m->scratch.v + at, n, val, rem) ? n : 0;
        else {
            int nat = m->scratch.n;
            n = advance(m, at, n, cp, &m->scratch);
            at = nat;
        }
        if (m->overflow) n = 0;
    }
    if (n > 0) {
        m->cur.n = 0;
        for (int i = 0; i < n; i++) ivec_push(&m->cur, m->scratch.v[at + i]);
        m->u8_val = val, m->u8_rem = rem;
    }
    m->scratch.n = base;
    m->overflow = false;
    return n > 0 ? 0 : -1;
}

int speck_gmatch_accept(speck_gmatch *m, int32_t token) {
    if (feed(m, token))
        return speck_set_error(SPECK_ERR_ARG, "grammar: token %d is not allowed here", token);
    return 0;
}

int speck_gmatch_check(speck_gmatch *m, const int32_t *toks, int n) {
    int mark = m->n_nodes;
    ivec saved = {0};
    for (int i = 0; i < m->cur.n; i++)
        if (ivec_push(&saved, m->cur.v[i])) {
            free(saved.v);
            return 0;
        }
    uint32_t val = m->u8_val;
    int rem = m->u8_rem, k = 0;
    while (k < n && feed(m, toks[k]) == 0) k++;
    m->cur.n = 0;
    for (int i = 0; i < saved.n; i++) ivec_push(&m->cur, saved.v[i]); // fits: capacity kept
    free(saved.v);
    m->u8_val = val, m->u8_rem = rem;
    m->n_nodes = mark;
    return k;
}

// Mark the tokens below trie nodes [lo, hi) whose bytes the set (at scratch offset `at`, n
// stacks) accepts after the pending UTF-8 state (val, rem).
static void walk(speck_gmatch *m, int lo, int hi, int at, int n, uint32_t val, int rem) {
    const speck_token_trie *t = m->t;
    for (int c = lo; c < hi; c = t->nodes[c].skip) {
        const speck_trie_node *nd = &t->nodes[c];
        uint32_t v = val, cp;
        int r = rem, k;
        int mark = m->n_nodes, sn = m->scratch.n, nat = at;
        int u = utf8_step(&v, &r, nd->byte, &cp);
        if (u < 0) continue;
        if (u == 0) {
            if (!may_continue(m, m->scratch.v + at, n, v, r)) continue;
            k = n;
        } else {
            nat = m->scratch.n;
            k = advance(m, at, n, cp, &m->scratch);
            if (m->overflow) k = 0, m->overflow = false;
        }
        if (k > 0) {
            for (int i = nd->tok_lo; i < nd->tok_hi; i++) m->allowed[t->sorted[i]] = 1;
            if (c + 1 < nd->skip) walk(m, c + 1, nd->skip, nat, k, v, r);
        }
        m->scratch.n = sn;
        m->n_nodes = mark;
    }
}

int speck_gmatch_mask(speck_gmatch *m, float *logits) {
    const speck_token_trie *t = m->t;
    memset(m->allowed, 0, (size_t)t->n_vocab);
    int base = m->scratch.n;
    for (int i = 0; i < m->cur.n; i++)
        if (ivec_push(&m->scratch, m->cur.v[i])) return SPECK_ERR_NOMEM;
    walk(m, 0, t->n_nodes, base, m->cur.n, m->u8_val, m->u8_rem);
    m->scratch.n = base;
    if (speck_gmatch_complete(m))
        for (int i = 0; i < t->n_eog; i++) m->allowed[t->eog[i]] = 1;
    int n_ok = 0;
    for (int i = 0; i < t->n_vocab; i++) {
        if (m->allowed[i]) n_ok++;
        else logits[i] = -INFINITY;
    }
    return n_ok;
}
