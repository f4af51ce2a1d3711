// GBNF text -> speck_grammar: a recursive-descent parser with line:column errors, repetitions
// rewritten into helper rules, and checks for undefined and left-recursive rules.
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grammar/grammar_internal.h"

typedef struct {
    char *name;
    speck_gelem *e;
    int n, cap;
    int def_line, ref_line, ref_col; // where defined (0: not yet) / first referenced
} prule;

typedef struct {
    const char *s, *end, *p;
    prule *rules;
    int n_rules, cap_rules;
    int32_t *ranges;
    int n_ranges, cap_ranges;
    long total; // elements in all rules (bounded)
    bool failed;
} parser;

static void line_col(const parser *ps, const char *at, int *line, int *col) {
    *line = 1, *col = 1;
    for (const char *q = ps->s; q < at && q < ps->end; q++) {
        if (*q == '\n')
            (*line)++, *col = 1;
        else if (((unsigned char)*q & 0xC0) != 0x80)
            (*col)++;
    }
}

static int fail_at(parser *ps, const char *at, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail_at(parser *ps, const char *at, const char *fmt, ...) {
    if (ps->failed) return -1;
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    int line, col;
    line_col(ps, at, &line, &col);
    speck_set_error(SPECK_ERR_ARG, "grammar line %d column %d: %s", line, col, msg);
    ps->failed = true;
    return -1;
}

static int oom(parser *ps) {
    if (!ps->failed) speck_set_error(SPECK_ERR_NOMEM, "out of memory parsing a grammar");
    ps->failed = true;
    return -1;
}

static bool is_word(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_';
}

// Skip blanks and # comments; newlines too when nl is set.
static void skip_space(parser *ps, bool nl) {
    while (ps->p < ps->end) {
        char c = *ps->p;
        if (c == ' ' || c == '\t' || c == '\r' || (nl && c == '\n')) {
            ps->p++;
        } else if (c == '#') {
            while (ps->p < ps->end && *ps->p != '\n') ps->p++;
        } else {
            break;
        }
    }
}

// The rule called name (created on first sight); generated rules (at == NULL) are always new.
static int rule_id(parser *ps, const char *name, size_t len, const char *at) {
    for (int i = 0; at && i < ps->n_rules; i++)
        if (strlen(ps->rules[i].name) == len && !memcmp(ps->rules[i].name, name, len)) return i;
    if (ps->n_rules == ps->cap_rules) {
        int cap = ps->cap_rules ? 2 * ps->cap_rules : 16;
        prule *r = realloc(ps->rules, (size_t)cap * sizeof *r);
        if (!r) return oom(ps);
        ps->rules = r, ps->cap_rules = cap;
    }
    prule *r = &ps->rules[ps->n_rules];
    memset(r, 0, sizeof *r);
    if (!(r->name = malloc(len + 1))) return oom(ps);
    memcpy(r->name, name, len);
    r->name[len] = 0;
    if (at) line_col(ps, at, &r->ref_line, &r->ref_col);
    return ps->n_rules++;
}

// A generated rule named after its parent.
static int new_rule(parser *ps, int parent) {
    char name[160];
    snprintf(name, sizeof name, "%.120s_%d", ps->rules[parent].name, ps->n_rules);
    int id = rule_id(ps, name, strlen(name), NULL);
    if (id >= 0) ps->rules[id].def_line = -1;
    return id;
}

static int emit(parser *ps, int r, int type, int32_t val, int32_t n) {
    if (ps->failed) return -1;
    if (++ps->total > SPECK_GRAMMAR_MAX_ELEMS)
        return fail_at(ps, ps->p, "grammar too large (over %d elements after repetitions)",
                       SPECK_GRAMMAR_MAX_ELEMS);
    prule *R = &ps->rules[r];
    if (R->n == R->cap) {
        int cap = R->cap ? 2 * R->cap : 8;
        speck_gelem *e = realloc(R->e, (size_t)cap * sizeof *e);
        if (!e) return oom(ps);
        R->e = e, R->cap = cap;
    }
    R->e[R->n++] = (speck_gelem){(uint8_t)type, val, n};
    return 0;
}

static int add_range(parser *ps, int32_t lo, int32_t hi) {
    if (ps->n_ranges == ps->cap_ranges) {
        int cap = ps->cap_ranges ? 2 * ps->cap_ranges : 32;
        int32_t *r = realloc(ps->ranges, (size_t)cap * 2 * sizeof *r);
        if (!r) return oom(ps);
        ps->ranges = r, ps->cap_ranges = cap;
    }
    ps->ranges[2 * ps->n_ranges] = lo;
    ps->ranges[2 * ps->n_ranges + 1] = hi;
    ps->n_ranges++;
    return 0;
}

// One code point of a literal or class (escapes decoded); -1 on error.
static int32_t read_char(parser *ps) {
    const char *at = ps->p;
    if (ps->p >= ps->end) return fail_at(ps, at, "unexpected end of grammar");
    unsigned char c = (unsigned char)*ps->p++;
    if (c == '\\') {
        if (ps->p >= ps->end) return fail_at(ps, at, "unexpected end after '\\'");
        char e = *ps->p++;
        int nhex = 0;
        switch (e) {
        case 'n':
            return '\n';
        case 'r':
            return '\r';
        case 't':
            return '\t';
        case '0':
            return 0;
        case '\\':
        case '"':
        case '\'':
        case '[':
        case ']':
        case '-':
        case '^':
        case '/':
            return (unsigned char)e;
        case 'x':
            nhex = 2;
            break;
        case 'u':
            nhex = 4;
            break;
        case 'U':
            nhex = 8;
            break;
        default:
            return fail_at(ps, at, "unknown escape '\\%c'", e);
        }
        uint32_t v = 0;
        for (int i = 0; i < nhex; i++) {
            if (ps->p >= ps->end) return fail_at(ps, at, "short \\%c escape", e);
            char h = *ps->p++;
            int d = h >= '0' && h <= '9'   ? h - '0'
                    : h >= 'a' && h <= 'f' ? h - 'a' + 10
                    : h >= 'A' && h <= 'F' ? h - 'A' + 10
                                           : -1;
            if (d < 0) return fail_at(ps, at, "bad hex digit '%c' in \\%c escape", h, e);
            v = v << 4 | (uint32_t)d;
        }
        if (v > 0x10FFFF) return fail_at(ps, at, "code point U+%X out of range", v);
        return (int32_t)v;
    }
    if (c < 0x80) return c;
    int n = c >= 0xF0 && c < 0xF8 ? 3 : c >= 0xE0 ? 2 : c >= 0xC0 ? 1 : -1;
    uint32_t v = n == 3 ? c & 7 : n == 2 ? c & 15 : c & 31;
    if (n < 0) return fail_at(ps, at, "invalid UTF-8 byte 0x%02X", c);
    for (int i = 0; i < n; i++) {
        if (ps->p >= ps->end || ((unsigned char)*ps->p & 0xC0) != 0x80)
            return fail_at(ps, at, "invalid UTF-8 sequence");
        v = v << 6 | ((unsigned char)*ps->p++ & 63);
    }
    if (v > 0x10FFFF) return fail_at(ps, at, "invalid UTF-8 sequence");
    return (int32_t)v;
}

static int parse_alternates(parser *ps, int r, bool nested);

// Wrap elements [from, n) of rule r into a new rule and leave a reference in their place.
static int wrap(parser *ps, int r, int from) {
    int g = new_rule(ps, r);
    if (g < 0) return -1;
    prule *R = &ps->rules[r];
    for (int i = from; i < R->n; i++)
        if (emit(ps, g, R->e[i].type, R->e[i].val, R->e[i].n)) return -1;
    R = &ps->rules[r]; // (emit may not move rules, but keep it obvious)
    R->n = from;
    if (emit(ps, g, GE_END, 0, 0)) return -1;
    return emit(ps, r, GE_REF, g, 0);
}

// Rule r ends with one symbol x (one element); rewrite it as x{lo,hi} (hi < 0: unbounded).
static int repeat(parser *ps, int r, long lo, long hi, const char *at) {
    if (lo > SPECK_GRAMMAR_MAX_REPEAT || hi > SPECK_GRAMMAR_MAX_REPEAT)
        return fail_at(ps, at, "repetition count over %d", SPECK_GRAMMAR_MAX_REPEAT);
    if (hi >= 0 && hi < lo) return fail_at(ps, at, "repetition {%ld,%ld}: max below min", lo, hi);
    prule *R = &ps->rules[r];
    speck_gelem x = R->e[--R->n];
    for (long i = 0; i < lo; i++)
        if (emit(ps, r, x.type, x.val, x.n)) return -1;
    if (hi < 0) { // star ::= x star | (empty)
        int s = new_rule(ps, r);
        if (s < 0 || emit(ps, s, x.type, x.val, x.n) || emit(ps, s, GE_REF, s, 0) ||
            emit(ps, s, GE_ALT, 0, 0) || emit(ps, s, GE_END, 0, 0))
            return -1;
        return emit(ps, r, GE_REF, s, 0);
    }
    // opt_k ::= x opt_{k-1} | (empty): at most hi - lo more, without k separate optionals.
    int prev = -1;
    for (long k = 0; k < hi - lo; k++) {
        int o = new_rule(ps, r);
        if (o < 0 || emit(ps, o, x.type, x.val, x.n) ||
            (prev >= 0 && emit(ps, o, GE_REF, prev, 0)) || emit(ps, o, GE_ALT, 0, 0) ||
            emit(ps, o, GE_END, 0, 0))
            return -1;
        prev = o;
    }
    return prev >= 0 ? emit(ps, r, GE_REF, prev, 0) : 0;
}

static long read_int(parser *ps) {
    const char *at = ps->p;
    long v = 0;
    if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9')
        return fail_at(ps, at, "expected a number in { }");
    while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') {
        v = v * 10 + (*ps->p++ - '0');
        if (v > SPECK_GRAMMAR_MAX_REPEAT)
            return fail_at(ps, at, "repetition count over %d", SPECK_GRAMMAR_MAX_REPEAT);
    }
    return v;
}

static int parse_sequence(parser *ps, int r, bool nested) {
    int last = -1; // where the last symbol starts in rule r (-1: none yet)
    for (;;) {
        skip_space(ps, nested);
        if (ps->p >= ps->end) return 0;
        const char *at = ps->p;
        char c = *ps->p;
        if (c == '"') {
            ps->p++;
            last = ps->rules[r].n;
            while (ps->p < ps->end && *ps->p != '"') {
                int32_t cp = read_char(ps);
                if (cp < 0 || add_range(ps, cp, cp) || emit(ps, r, GE_CHAR, ps->n_ranges - 1, 1))
                    return -1;
            }
            if (ps->p >= ps->end) return fail_at(ps, at, "unterminated string literal");
            ps->p++;
            if (ps->rules[r].n == last) last = -1; // "" matches nothing: no symbol to repeat
        } else if (c == '[') {
            ps->p++;
            int type = GE_CHAR;
            if (ps->p < ps->end && *ps->p == '^') type = GE_CHAR_NOT, ps->p++;
            int first = ps->n_ranges;
            while (ps->p < ps->end && *ps->p != ']') {
                int32_t lo = read_char(ps), hi = lo;
                if (lo < 0) return -1;
                if (ps->p + 1 < ps->end && *ps->p == '-' && ps->p[1] != ']') {
                    ps->p++;
                    const char *hat = ps->p;
                    if ((hi = read_char(ps)) < 0) return -1;
                    if (hi < lo) return fail_at(ps, hat, "character range ends below its start");
                }
                if (add_range(ps, lo, hi)) return -1;
            }
            if (ps->p >= ps->end) return fail_at(ps, at, "unterminated character class");
            ps->p++;
            if (ps->n_ranges == first && type == GE_CHAR)
                return fail_at(ps, at, "empty character class [] matches nothing");
            last = ps->rules[r].n;
            if (emit(ps, r, type, first, ps->n_ranges - first)) return -1;
        } else if (c == '.') {
            ps->p++;
            last = ps->rules[r].n;
            if (emit(ps, r, GE_ANY, 0, 0)) return -1;
        } else if (c == '(') {
            ps->p++;
            int g = new_rule(ps, r);
            if (g < 0 || parse_alternates(ps, g, true)) return -1;
            skip_space(ps, true);
            if (ps->p >= ps->end || *ps->p != ')') return fail_at(ps, at, "unclosed '('");
            ps->p++;
            last = ps->rules[r].n;
            if (emit(ps, r, GE_REF, g, 0)) return -1;
        } else if (is_word(c)) {
            const char *w = ps->p;
            while (ps->p < ps->end && is_word(*ps->p)) ps->p++;
            const char *save = ps->p;
            skip_space(ps, false);
            if (ps->end - ps->p >= 3 && !memcmp(ps->p, "::=", 3))
                return fail_at(ps, w, "missing newline before the rule '%.*s'", (int)(save - w), w);
            ps->p = save;
            int id = rule_id(ps, w, (size_t)(save - w), w);
            last = ps->rules[r].n;
            if (id < 0 || emit(ps, r, GE_REF, id, 0)) return -1;
        } else if (c == '*' || c == '+' || c == '?' || c == '{') {
            if (last < 0) return fail_at(ps, at, "'%c' without a symbol before it", c);
            if (ps->rules[r].n - last > 1 && wrap(ps, r, last)) return -1;
            ps->p++;
            long lo = 0, hi = -1;
            if (c == '+') lo = 1;
            if (c == '?') hi = 1;
            if (c == '{') {
                skip_space(ps, false);
                if ((lo = read_int(ps)) < 0) return -1;
                skip_space(ps, false);
                hi = lo;
                if (ps->p < ps->end && *ps->p == ',') {
                    ps->p++;
                    skip_space(ps, false);
                    hi = -1;
                    if (ps->p < ps->end && *ps->p != '}' && (hi = read_int(ps)) < 0) return -1;
                    skip_space(ps, false);
                }
                if (ps->p >= ps->end || *ps->p != '}') return fail_at(ps, at, "expected '}'");
                ps->p++;
            }
            last = ps->rules[r].n - 1;
            if (repeat(ps, r, lo, hi, at)) return -1;
            last = -1; // x** is an error, as in llama.cpp
        } else if (c == '<' || c == '!') {
            return fail_at(ps, at, "token references (<...>) are not supported");
        } else {
            return 0; // | ) newline: the caller decides
        }
    }
}

static int parse_alternates(parser *ps, int r, bool nested) {
    for (;;) {
        if (parse_sequence(ps, r, nested)) return -1;
        skip_space(ps, nested);
        if (ps->p < ps->end && *ps->p == '|') {
            ps->p++;
            skip_space(ps, true); // a newline after | continues the rule
            if (emit(ps, r, GE_ALT, 0, 0)) return -1;
            continue;
        }
        return emit(ps, r, GE_END, 0, 0);
    }
}

static int parse_rules(parser *ps) {
    for (;;) {
        skip_space(ps, true);
        if (ps->p >= ps->end) return 0;
        const char *w = ps->p;
        while (ps->p < ps->end && is_word(*ps->p)) ps->p++;
        if (ps->p == w) return fail_at(ps, w, "expected a rule name");
        const char *we = ps->p;
        skip_space(ps, false);
        if (ps->end - ps->p < 3 || memcmp(ps->p, "::=", 3))
            return fail_at(ps, ps->p, "expected '::=' after '%.*s'", (int)(we - w), w);
        int r = rule_id(ps, w, (size_t)(we - w), w);
        if (r < 0) return -1;
        if (ps->rules[r].def_line)
            return fail_at(ps, w, "rule '%s' defined twice", ps->rules[r].name);
        int col;
        line_col(ps, w, &ps->rules[r].def_line, &col);
        ps->p += 3;
        skip_space(ps, true); // the body may start on the next line
        if (parse_alternates(ps, r, false)) return -1;
        skip_space(ps, false);
        if (ps->p < ps->end && *ps->p != '\n') {
            if (*ps->p == ')') return fail_at(ps, ps->p, "unmatched ')'");
            return fail_at(ps, ps->p, "unexpected '%c'", *ps->p);
        }
    }
}

// Left recursion would make the matcher expand forever; find it before anyone runs. Edges
// "r may start with s" (s referenced with only nullable rules before it); a cycle is an error.
static int check_left_recursion(parser *ps, const speck_grammar *g) {
    int n = g->n_rules, rc = 0;
    bool *nullable = calloc((size_t)n, 1);
    uint8_t *color = calloc((size_t)n, 1);
    int *edge_start = malloc((size_t)(n + 1) * sizeof(int));
    int *edges = malloc((size_t)(g->n_elems + 1) * sizeof(int));
    int *stack = malloc((size_t)n * 2 * sizeof(int));
    if (!nullable || !color || !edge_start || !edges || !stack) {
        rc = oom(ps);
        goto out;
    }
    for (bool changed = true; changed;) {
        changed = false;
        for (int r = 0; r < n; r++) {
            bool alt_ok = true;
            for (int i = g->rule_start[r]; !nullable[r]; i++) {
                const speck_gelem *e = &g->elems[i];
                if (e->type == GE_END || e->type == GE_ALT) {
                    if (alt_ok) nullable[r] = changed = true;
                    if (e->type == GE_END) break;
                    alt_ok = true;
                } else if (e->type != GE_REF || !nullable[e->val]) {
                    alt_ok = false;
                }
            }
        }
    }
    int ne = 0;
    for (int r = 0; r < n; r++) {
        edge_start[r] = ne;
        bool open = true; // still at the start of the alternative (only nullable refs so far)
        for (int i = g->rule_start[r];; i++) {
            const speck_gelem *e = &g->elems[i];
            if (e->type == GE_END) break;
            if (e->type == GE_ALT) {
                open = true;
            } else if (open && e->type == GE_REF) {
                edges[ne++] = e->val;
                open = nullable[e->val];
            } else {
                open = false;
            }
        }
    }
    edge_start[n] = ne;
    for (int s0 = 0; s0 < n && !rc; s0++) {
        if (color[s0]) continue;
        int sp = 0;
        stack[sp++] = s0, stack[sp++] = edge_start[s0];
        color[s0] = 1;
        while (sp && !rc) {
            int r = stack[sp - 2], k = stack[sp - 1];
            if (k == edge_start[r + 1]) {
                color[r] = 2;
                sp -= 2;
                continue;
            }
            stack[sp - 1] = k + 1;
            int s = edges[k];
            if (color[s] == 1)
                rc = speck_set_error(SPECK_ERR_ARG,
                                     "grammar: rule '%s' is left-recursive (it can reach itself "
                                     "before any character; repeating something that can match "
                                     "nothing does this too)",
                                     ps->rules[s].name);
            else if (!color[s])
                color[s] = 1, stack[sp++] = s, stack[sp++] = edge_start[s];
        }
    }
out:
    free(nullable), free(color), free(edge_start), free(edges), free(stack);
    return rc;
}

static void parser_free(parser *ps) {
    for (int i = 0; i < ps->n_rules; i++) free(ps->rules[i].name), free(ps->rules[i].e);
    free(ps->rules);
    free(ps->ranges);
}

void speck_grammar_free(speck_grammar *g) {
    if (!g) return;
    free(g->elems), free(g->ranges), free(g->rule_start);
    free(g);
}

int speck_grammar_n_rules(const speck_grammar *g) {
    return g->n_rules;
}

speck_grammar *speck_grammar_parse(const char *text, size_t len) {
    parser ps = {.s = text, .end = text + len, .p = text};
    speck_grammar *g = NULL;
    if (!text) {
        speck_set_error(SPECK_ERR_ARG, "grammar: no text");
        return NULL;
    }
    if (parse_rules(&ps)) goto fail;
    int root = -1;
    for (int i = 0; i < ps.n_rules; i++) {
        if (!strcmp(ps.rules[i].name, "root")) root = i;
        if (!ps.rules[i].def_line) {
            speck_set_error(SPECK_ERR_ARG, "grammar line %d column %d: undefined rule '%s'",
                            ps.rules[i].ref_line, ps.rules[i].ref_col, ps.rules[i].name);
            goto fail;
        }
    }
    if (root < 0) {
        speck_set_error(SPECK_ERR_ARG, "grammar: no rule named 'root' (the start rule)");
        goto fail;
    }
    if (!(g = calloc(1, sizeof *g))) goto nomem;
    g->n_rules = ps.n_rules;
    g->root = root;
    g->n_elems = (int)ps.total;
    g->n_ranges = ps.n_ranges;
    g->elems = malloc((size_t)(g->n_elems + 1) * sizeof *g->elems);
    g->rule_start = malloc((size_t)g->n_rules * sizeof *g->rule_start);
    g->ranges = malloc((size_t)(2 * g->n_ranges + 1) * sizeof *g->ranges);
    if (!g->elems || !g->rule_start || !g->ranges) goto nomem;
    if (g->n_ranges) memcpy(g->ranges, ps.ranges, (size_t)2 * g->n_ranges * sizeof *g->ranges);
    int k = 0;
    for (int i = 0; i < ps.n_rules; i++) {
        g->rule_start[i] = k;
        memcpy(g->elems + k, ps.rules[i].e, (size_t)ps.rules[i].n * sizeof *g->elems);
        k += ps.rules[i].n;
    }
    g->n_elems = k;
    if (check_left_recursion(&ps, g)) goto fail;
    parser_free(&ps);
    return g;
nomem:
    speck_set_error(SPECK_ERR_NOMEM, "out of memory compiling a grammar");
fail:
    parser_free(&ps);
    speck_grammar_free(g);
    return NULL;
}
