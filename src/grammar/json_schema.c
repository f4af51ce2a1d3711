// JSON Schema -> GBNF (the subset OpenAI structured outputs users send), and the built-in JSON
// grammar behind response_format json_object. Unsupported keywords are errors, never ignored.
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "grammar/grammar_internal.h"

// Shared by every schema grammar. Numbers are bounded (16 integer digits, 16 decimals, 3 exponent
// digits) and so is whitespace, so a model cannot stall a structure by padding it forever.
static const char JSON_COMMON[] =
    "value ::= object | array | string | number | \"true\" | \"false\" | \"null\"\n"
    "object ::= \"{\" ws ( string ws \":\" ws value ws ( \",\" ws string ws \":\" ws value ws )* "
    ")? "
    "\"}\"\n"
    "array ::= \"[\" ws ( value ws ( \",\" ws value ws )* )? \"]\"\n"
    "string ::= \"\\\"\" char* \"\\\"\"\n"
    "char ::= [^\"\\\\\\x00-\\x1F] | \"\\\\\" ( [\"\\\\/bfnrt] | \"u\" [0-9a-fA-F]{4} )\n"
    "integer ::= \"-\"? ( [0-9] | [1-9] [0-9]{1,15} )\n"
    "number ::= integer ( \".\" [0-9]{1,16} )? ( [eE] [-+]? [0-9]{1,3} )?\n"
    "boolean ::= \"true\" | \"false\"\n"
    "null ::= \"null\"\n"
    "ws ::= \"\" | \" \" | \"\\n\" [ \\t]{0,20}\n";

speck_grammar *speck_grammar_json_object(void) {
    char buf[sizeof JSON_COMMON + 32];
    int n = snprintf(buf, sizeof buf, "root ::= object\n%s", JSON_COMMON);
    return speck_grammar_parse(buf, (size_t)n);
}

typedef struct {
    char *s;
    size_t n, cap;
    bool oom;
} sbuf;

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...) {
    if (b->oom) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(b->s ? b->s + b->n : NULL, b->s ? b->cap - b->n : 0, fmt, ap);
        va_end(ap);
        if (k < 0) return;
        if (b->s && b->n + (size_t)k < b->cap) {
            b->n += (size_t)k;
            return;
        }
        size_t cap = b->cap ? b->cap : 1024;
        while (cap <= b->n + (size_t)k) cap *= 2;
        char *s = realloc(b->s, cap);
        if (!s) {
            b->oom = true;
            return;
        }
        b->s = s, b->cap = cap;
    }
}

// text as a GBNF string literal
static void sb_literal(sbuf *b, const char *text) {
    sb_printf(b, "\"");
    for (const unsigned char *p = (const unsigned char *)text; *p; p++) {
        if (*p == '"' || *p == '\\')
            sb_printf(b, "\\%c", *p);
        else if (*p == '\n')
            sb_printf(b, "\\n");
        else if (*p < 0x20 || *p == 0x7F)
            sb_printf(b, "\\x%02X", *p);
        else
            sb_printf(b, "%c", *p);
    }
    sb_printf(b, "\"");
}

typedef struct {
    sbuf out;
    const cJSON *root;
    int next; // rule counter
    struct {
        char *ref;
        int id;
    } refs[256];
    int n_refs;
    int depth;
    bool failed;
} conv;

static int fail(conv *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(conv *c, const char *fmt, ...) {
    if (c->failed) return -1;
    char msg[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    speck_set_error(SPECK_ERR_ARG, "json_schema: %s", msg);
    c->failed = true;
    return -1;
}

static const char *const ANNOTATIONS[] = {
    "description", "title",    "default",   "examples", "$schema",     "$id",    "$comment",
    "deprecated",  "readOnly", "writeOnly", "$defs",    "definitions", "strict", NULL};
static const char *const KNOWN[] = {"type",      "properties", "required", "additionalProperties",
                                    "items",     "enum",       "const",    "anyOf",
                                    "oneOf",     "allOf",      "minItems", "maxItems",
                                    "minLength", "maxLength",  "$ref",     "nullable",
                                    NULL};

static bool in_list(const char *const *l, const char *k) {
    for (; *l; l++)
        if (!strcmp(*l, k)) return true;
    return false;
}

static int gen(conv *c, const cJSON *s, const char *path);

// A non-negative integer keyword, or def when absent; -2 on error.
static long get_count(conv *c, const cJSON *s, const char *key, long def, const char *path) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(s, key);
    if (!v) return def;
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > SPECK_GRAMMAR_MAX_REPEAT ||
        v->valuedouble != (double)(long)v->valuedouble)
        return fail(c, "%s/%s must be an integer in [0, %d]", path, key, SPECK_GRAMMAR_MAX_REPEAT),
               -2;
    return (long)v->valuedouble;
}

// A rule for one JSON value literally (enum / const).
static void literal_value(conv *c, const cJSON *v) {
    char *txt = cJSON_PrintUnformatted(v);
    if (!txt) {
        c->out.oom = true;
        return;
    }
    sb_literal(&c->out, txt);
    free(txt);
}

static void emit_repeat(conv *c, long lo, long hi) {
    if (hi < 0)
        sb_printf(&c->out, "{%ld,}", lo);
    else
        sb_printf(&c->out, "{%ld,%ld}", lo, hi);
}

// The rule for schema s of one type; returns its id.
static int gen_typed(conv *c, const cJSON *s, const char *type, const char *path) {
    char sub[512];
    if (!strcmp(type, "null") || !strcmp(type, "boolean") || !strcmp(type, "number") ||
        !strcmp(type, "integer")) {
        int id = c->next++;
        sb_printf(&c->out, "r%d ::= %s\n", id, type);
        return id;
    }
    if (!strcmp(type, "string")) {
        long lo = get_count(c, s, "minLength", 0, path),
             hi = get_count(c, s, "maxLength", -1, path);
        if (lo < -1 || hi < -1) return -1;
        if (hi >= 0 && hi < lo) return fail(c, "%s: maxLength below minLength", path);
        int id = c->next++;
        sb_printf(&c->out, "r%d ::= \"\\\"\" char", id);
        emit_repeat(c, lo, hi);
        sb_printf(&c->out, " \"\\\"\"\n");
        return id;
    }
    if (!strcmp(type, "array")) {
        long lo = get_count(c, s, "minItems", 0, path), hi = get_count(c, s, "maxItems", -1, path);
        if (lo < -1 || hi < -1) return -1;
        if (hi >= 0 && hi < lo) return fail(c, "%s: maxItems below minItems", path);
        const cJSON *items = cJSON_GetObjectItemCaseSensitive(s, "items");
        int item = -1;
        if (items) {
            snprintf(sub, sizeof sub, "%.400s/items", path);
            if ((item = gen(c, items, sub)) < 0) return -1;
        }
        char it[32];
        if (item >= 0)
            snprintf(it, sizeof it, "r%d", item);
        else
            snprintf(it, sizeof it, "value");
        int id = c->next++;
        if (hi == 0) {
            sb_printf(&c->out, "r%d ::= \"[\" ws \"]\"\n", id);
            return id;
        }
        sb_printf(&c->out, "r%d ::= \"[\" ws ( %s ws ( \",\" ws %s ws )", id, it, it);
        emit_repeat(c, lo > 0 ? lo - 1 : 0, hi < 0 ? -1 : hi - 1);
        sb_printf(&c->out, " )%s \"]\"\n", lo > 0 ? "" : "?");
        return id;
    }
    if (!strcmp(type, "object")) {
        const cJSON *props = cJSON_GetObjectItemCaseSensitive(s, "properties");
        const cJSON *req = cJSON_GetObjectItemCaseSensitive(s, "required");
        const cJSON *addl = cJSON_GetObjectItemCaseSensitive(s, "additionalProperties");
        if (props && !cJSON_IsObject(props))
            return fail(c, "%s/properties must be an object", path);
        if (req && !cJSON_IsArray(req)) return fail(c, "%s/required must be an array", path);
        if (addl && !cJSON_IsBool(addl) && !cJSON_IsObject(addl))
            return fail(c, "%s/additionalProperties must be a boolean or a schema", path);
        int n = cJSON_GetArraySize(props);
        const cJSON *r;
        cJSON_ArrayForEach(r, req) {
            if (!cJSON_IsString(r)) return fail(c, "%s/required: names must be strings", path);
            if (!cJSON_GetObjectItemCaseSensitive(props, r->valuestring))
                return fail(c, "%s/required names '%.100s', which properties does not define", path,
                            r->valuestring);
        }
        if (n == 0 && !(addl && cJSON_IsFalse(addl))) { // any object
            int id = c->next++;
            sb_printf(&c->out, "r%d ::= object\n", id);
            return id;
        }
        // Members in the schema's order; optional ones may be skipped. first_i: members i.. when
        // none came before; after_i: the same after one did (each then starts with a comma).
        int *mem = malloc((size_t)(n + 1) * sizeof *mem);
        bool *opt = malloc((size_t)(n + 1) * sizeof *opt);
        if (!mem || !opt) {
            free(mem), free(opt);
            c->out.oom = true;
            return -1;
        }
        int i = 0;
        const cJSON *p;
        cJSON_ArrayForEach(p, props) {
            snprintf(sub, sizeof sub, "%.300s/properties/%.100s", path, p->string);
            opt[i] = true;
            cJSON_ArrayForEach(r, req) opt[i] &= strcmp(r->valuestring, p->string) != 0;
            int v = gen(c, p, sub);
            if (v < 0) {
                free(mem), free(opt);
                return -1;
            }
            mem[i] = c->next++; // member rule: "key" ws ":" ws value
            cJSON *key = cJSON_CreateString(p->string);
            sb_printf(&c->out, "r%d ::= ", mem[i]);
            if (key)
                literal_value(c, key);
            else
                c->out.oom = true;
            cJSON_Delete(key);
            sb_printf(&c->out, " ws \":\" ws r%d\n", v);
            i++;
        }
        int base = c->next;
        c->next += 2 * (n + 1); // first_i = base + 2i, after_i = base + 2i + 1
        for (i = 0; i < n; i++) {
            int f = base + 2 * i, a = f + 1, f1 = f + 2, a1 = f + 3;
            if (opt[i]) {
                sb_printf(&c->out, "r%d ::= r%d ws r%d | r%d\n", f, mem[i], a1, f1);
                sb_printf(&c->out, "r%d ::= \",\" ws r%d ws r%d | r%d\n", a, mem[i], a1, a1);
            } else {
                sb_printf(&c->out, "r%d ::= r%d ws r%d\n", f, mem[i], a1);
                sb_printf(&c->out, "r%d ::= \",\" ws r%d ws r%d\n", a, mem[i], a1);
            }
        }
        sb_printf(&c->out, "r%d ::= \"\"\nr%d ::= \"\"\n", base + 2 * n, base + 2 * n + 1);
        free(mem), free(opt);
        int id = c->next++;
        sb_printf(&c->out, "r%d ::= \"{\" ws r%d \"}\"\n", id, base);
        return id;
    }
    return fail(c, "%s: unknown type '%.40s'", path, type);
}

static int gen(conv *c, const cJSON *s, const char *path) {
    char sub[512];
    if (c->failed) return -1;
    if (++c->depth > 64) return fail(c, "%s: schema nested deeper than 64", path);
    int id = -1;
    if (cJSON_IsTrue(s)) {
        id = c->next++;
        sb_printf(&c->out, "r%d ::= value\n", id);
        goto out;
    }
    if (!cJSON_IsObject(s)) {
        id = fail(c, "%s: a schema must be an object or true", path);
        goto out;
    }
    for (const cJSON *k = s->child; k; k = k->next)
        if (!in_list(KNOWN, k->string) && !in_list(ANNOTATIONS, k->string)) {
            id = fail(c, "unsupported keyword '%.60s' at %s (it would not be enforced)", k->string,
                      path);
            goto out;
        }
    const cJSON *ref = cJSON_GetObjectItemCaseSensitive(s, "$ref");
    const cJSON *en = cJSON_GetObjectItemCaseSensitive(s, "enum");
    const cJSON *cn = cJSON_GetObjectItemCaseSensitive(s, "const");
    const cJSON *any = cJSON_GetObjectItemCaseSensitive(s, "anyOf");
    if (!any) any = cJSON_GetObjectItemCaseSensitive(s, "oneOf");
    const cJSON *all = cJSON_GetObjectItemCaseSensitive(s, "allOf");
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(s, "type");
    const cJSON *nullable = cJSON_GetObjectItemCaseSensitive(s, "nullable");
    if (ref) {
        if (!cJSON_IsString(ref)) {
            id = fail(c, "%s/$ref must be a string", path);
            goto out;
        }
        for (int i = 0; i < c->n_refs; i++)
            if (!strcmp(c->refs[i].ref, ref->valuestring)) {
                id = c->refs[i].id;
                goto out;
            }
        const char *r = ref->valuestring;
        const char *name = NULL, *sect = NULL;
        if (!strncmp(r, "#/$defs/", 8))
            sect = "$defs", name = r + 8;
        else if (!strncmp(r, "#/definitions/", 14))
            sect = "definitions", name = r + 14;
        const cJSON *target = !strcmp(r, "#") ? c->root
                              : sect          ? cJSON_GetObjectItemCaseSensitive(
                                                    cJSON_GetObjectItemCaseSensitive(c->root, sect), name)
                                     : NULL;
        if (!target) {
            id = fail(c, "%s/$ref '%.100s' is not a local #/$defs/... or #/definitions/... entry",
                      path, r);
            goto out;
        }
        if (c->n_refs == 256) {
            id = fail(c, "more than 256 distinct $refs");
            goto out;
        }
        // Reserve the rule first so recursive schemas refer to it.
        id = c->next++;
        if (!(c->refs[c->n_refs].ref = strdup(r))) {
            c->out.oom = true;
            id = -1;
            goto out;
        }
        c->refs[c->n_refs++].id = id;
        int t = gen(c, target, r);
        if (t < 0)
            id = -1;
        else
            sb_printf(&c->out, "r%d ::= r%d\n", id, t);
        goto out;
    }
    if (en || cn) {
        if (en && (!cJSON_IsArray(en) || cJSON_GetArraySize(en) == 0)) {
            id = fail(c, "%s/enum must be a non-empty array", path);
            goto out;
        }
        id = c->next++;
        sb_printf(&c->out, "r%d ::= ", id);
        if (cn) {
            literal_value(c, cn);
        } else {
            const cJSON *v;
            cJSON_ArrayForEach(v, en) {
                if (v != en->child) sb_printf(&c->out, " | ");
                literal_value(c, v);
            }
        }
        sb_printf(&c->out, "\n");
        goto out;
    }
    if (all) {
        if (!cJSON_IsArray(all) || cJSON_GetArraySize(all) != 1) {
            id = fail(c, "%s/allOf: only a single schema is supported", path);
            goto out;
        }
        snprintf(sub, sizeof sub, "%.400s/allOf/0", path);
        id = gen(c, all->child, sub);
        goto out;
    }
    int alts[64], n_alts = 0;
    if (any) {
        if (!cJSON_IsArray(any) || cJSON_GetArraySize(any) == 0 || cJSON_GetArraySize(any) > 64) {
            id = fail(c, "%s/anyOf (oneOf) must be an array of 1 to 64 schemas", path);
            goto out;
        }
        int i = 0;
        const cJSON *v;
        cJSON_ArrayForEach(v, any) {
            snprintf(sub, sizeof sub, "%.400s/anyOf/%d", path, i++);
            if ((alts[n_alts++] = gen(c, v, sub)) < 0) goto out;
        }
    } else if (!type) { // the type the keywords imply, else any value
        const char *impl = cJSON_GetObjectItemCaseSensitive(s, "properties") ||
                                   cJSON_GetObjectItemCaseSensitive(s, "required") ||
                                   cJSON_GetObjectItemCaseSensitive(s, "additionalProperties")
                               ? "object"
                           : cJSON_GetObjectItemCaseSensitive(s, "items") ||
                                   cJSON_GetObjectItemCaseSensitive(s, "minItems") ||
                                   cJSON_GetObjectItemCaseSensitive(s, "maxItems")
                               ? "array"
                           : cJSON_GetObjectItemCaseSensitive(s, "minLength") ||
                                   cJSON_GetObjectItemCaseSensitive(s, "maxLength")
                               ? "string"
                               : NULL;
        if (impl) {
            if ((alts[n_alts++] = gen_typed(c, s, impl, path)) < 0) goto out;
        } else {
            id = c->next++;
            sb_printf(&c->out, "r%d ::= value%s\n", id, cJSON_IsTrue(nullable) ? " | null" : "");
            goto out;
        }
    } else if (cJSON_IsString(type)) {
        if ((alts[n_alts++] = gen_typed(c, s, type->valuestring, path)) < 0) goto out;
    } else if (cJSON_IsArray(type) && cJSON_GetArraySize(type) > 0 &&
               cJSON_GetArraySize(type) <= 8) {
        const cJSON *t;
        cJSON_ArrayForEach(t, type) {
            if (!cJSON_IsString(t)) {
                id = fail(c, "%s/type: entries must be strings", path);
                goto out;
            }
            if ((alts[n_alts++] = gen_typed(c, s, t->valuestring, path)) < 0) goto out;
        }
    } else {
        id = fail(c, "%s/type must be a string or an array of 1 to 8 strings", path);
        goto out;
    }
    id = c->next++;
    sb_printf(&c->out, "r%d ::= ", id);
    for (int i = 0; i < n_alts; i++) sb_printf(&c->out, "%sr%d", i ? " | " : "", alts[i]);
    if (cJSON_IsTrue(nullable)) sb_printf(&c->out, " | null");
    sb_printf(&c->out, "\n");
out:
    c->depth--;
    return c->failed ? -1 : id;
}

// JSON text is UTF-8 (RFC 8259); the grammar's literals must be too.
static bool valid_utf8(const unsigned char *p, size_t n) {
    for (size_t i = 0; i < n;) {
        unsigned c = p[i];
        int k = c < 0x80                ? 0
                : c >= 0xC2 && c < 0xE0 ? 1
                : c >= 0xE0 && c < 0xF0 ? 2
                : c >= 0xF0 && c < 0xF5 ? 3
                                        : -1;
        if (k < 0 || i + (size_t)k >= n + (k == 0)) return false;
        uint32_t v = k == 0 ? c : c & (0x3F >> k);
        for (int j = 1; j <= k; j++) {
            if ((p[i + j] & 0xC0) != 0x80) return false;
            v = v << 6 | (p[i + j] & 0x3F);
        }
        static const uint32_t lo[4] = {0, 0x80, 0x800, 0x10000};
        if (v < lo[k] || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return false;
        i += (size_t)k + 1;
    }
    return true;
}

char *speck_json_schema_to_gbnf(const char *schema, size_t len) {
    if (schema && !valid_utf8((const unsigned char *)schema, len)) {
        speck_set_error(SPECK_ERR_ARG, "json_schema: not valid UTF-8");
        return NULL;
    }
    cJSON *j = schema ? cJSON_ParseWithLength(schema, len) : NULL;
    if (!j) {
        speck_set_error(SPECK_ERR_ARG, "json_schema: not valid JSON");
        return NULL;
    }
    conv c = {.root = j};
    int top = gen(&c, j, "#");
    for (int i = 0; i < c.n_refs; i++) free(c.refs[i].ref);
    cJSON_Delete(j);
    if (top >= 0) sb_printf(&c.out, "root ::= r%d\n%s", top, JSON_COMMON);
    if (c.out.oom) speck_set_error(SPECK_ERR_NOMEM, "out of memory converting a JSON schema");
    if (top < 0 || c.out.oom) {
        free(c.out.s);
        return NULL;
    }
    return c.out.s;
}

speck_grammar *speck_grammar_from_json_schema(const char *schema, size_t len) {
    char *txt = speck_json_schema_to_gbnf(schema, len);
    if (!txt) return NULL;
    speck_grammar *g = speck_grammar_parse(txt, strlen(txt));
    free(txt);
    if (!g && strstr(speck_last_error(), "left-recursive")) // the only way a conversion fails
        speck_set_error(SPECK_ERR_ARG, "json_schema: a $ref refers back to itself before any "
                                       "JSON is written (e.g. {\"$ref\": \"#\"})");
    return g;
}
