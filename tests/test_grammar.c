// Constrained output: the GBNF parser (features and line:column errors), the JSON Schema
// converter's errors, the matcher's vocabulary mask against brute force over the default model's
// vocabulary, and accelerated decoding under a grammar equal to plain constrained decoding.
// Usage: test_grammar MODEL.gguf [DRAFT.gguf [quick]]   (quick: fewer drafters, for sanitizers)
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "speck.h"
#include "test_util.h"

static bool parses(const char *g) {
    speck_grammar *gr = speck_grammar_parse(g, strlen(g));
    speck_grammar_free(gr);
    return gr != NULL;
}

// The grammar fails to parse with an error containing want.
static void check_error(const char *g, const char *want) {
    speck_grammar *gr = speck_grammar_parse(g, strlen(g));
    const char *err = speck_last_error();
    CHECK(!gr && strstr(err, want), "grammar %s: expected an error with '%s', got %s", g, want,
          gr ? "success" : err);
    speck_grammar_free(gr);
}

static void test_parser(void) {
    CHECK(parses("root ::= \"a\""), "literal");
    CHECK(parses("# comment\nroot ::= x | y # trailing\nx ::= [a-z]+ \"\\n\"\ny ::= [^\"\\\\]*"),
          "classes, comments");
    CHECK(parses("root ::= (\n  \"a\" |\n  \"b\"\n)+ .?"), "multi-line group, any char");
    CHECK(parses("root ::= \"x\" |\n  \"y\""), "newline after |");
    CHECK(parses("root ::= [0-9]{3} [a]{2,} \"ab\"{0,4} ( \"c\" ){1,2}"), "counted repetitions");
    CHECK(parses("root ::= \"\\x41\\u00e9\\U0001F600\" [ぁ-ゟ]"), "escapes, UTF-8");
    CHECK(parses("root ::= item*\nitem ::= \"-\" [a-z]"), "rules used before definition");
    check_error("root ::= \"abc", "line 1 column 10: unterminated string");
    check_error("root ::= x\n", "line 1 column 10: undefined rule 'x'");
    check_error("a ::= \"x\"", "no rule named 'root'");
    check_error("root ::= [a-", "line 1 column 10: unterminated character class");
    check_error("root ::= \"a\"\nroot ::= \"b\"", "line 2 column 1: rule 'root' defined twice");
    check_error("root ::= (\"a\" | \"b\"", "line 1 column 10: unclosed '('");
    check_error("root ::= \"a\" )", "line 1 column 14: unmatched ')'");
    check_error("root ::= * \"a\"", "line 1 column 10: '*' without a symbol");
    check_error("root ::= \"\\q\"", "line 1 column 11: unknown escape");
    check_error("root ::= [z-a]", "line 1 column 13: character range ends below its start");
    check_error("root ::= \"a\"{3,1}", "max below min");
    check_error("root ::= \"a\"{99999}", "repetition count over");
    check_error("root ::= root \"a\" | \"b\"", "rule 'root' is left-recursive");
    check_error("root ::= x\nx ::= \"a\"? root", "left-recursive");
    check_error("root ::= (\"a\"?)*", "left-recursive");
    check_error("root\n", "line 1 column 5: expected '::='");
    check_error("root ::= <think>", "token references");
    check_error("root ::= \"a\"\n  \"b\"", "line 2 column 3: expected a rule name");
}

static void schema_error(const char *schema, const char *want) {
    char *g = speck_json_schema_to_gbnf(schema, strlen(schema));
    const char *err = speck_last_error();
    CHECK(!g && strstr(err, want), "schema %s: expected an error with '%s', got %s", schema, want,
          g ? g : err);
    free(g);
}

static void test_schema(void) {
    const char *ok[] = {
        ("{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"string\",\"description\":\"x\"},"
         "\"b\":{\"type\":[\"integer\",\"null\"]}},\"required\":[\"a\"],"
         "\"additionalProperties\":false}"),
        ("{\"$defs\":{\"n\":{\"type\":\"object\",\"properties\":{\"kids\":{\"type\":\"array\","
         "\"items\":{\"$ref\":\"#/$defs/n\"}}}}},\"$ref\":\"#/$defs/n\"}"),
        "{\"anyOf\":[{\"const\":1},{\"enum\":[\"a\",null,{\"x\":[1]}]}]}",
        "{\"type\":\"array\",\"items\":{\"type\":\"boolean\"},\"minItems\":2,\"maxItems\":3}",
        "true",
    };
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
        speck_grammar *g = speck_grammar_from_json_schema(ok[i], strlen(ok[i]));
        CHECK(g, "schema %s: %s", ok[i], speck_last_error());
        speck_grammar_free(g);
    }
    schema_error("{\"type\":\"string\",\"pattern\":\"a+\"}", "unsupported keyword 'pattern' at #");
    schema_error("{\"properties\":{\"x\":{\"type\":\"number\",\"minimum\":0}}}",
                 "unsupported keyword 'minimum' at #/properties/x");
    schema_error("{\"type\":\"strin\"}", "unknown type 'strin'");
    schema_error("{\"$ref\":\"http://x/y\"}", "is not a local");
    schema_error("{\"type\":\"object\",\"properties\":{},\"required\":[\"z\"]}",
                 "required names 'z'");
    schema_error("{\"type\":", "not valid JSON");
    schema_error("{\"type\":\"array\",\"minItems\":3,\"maxItems\":1}", "maxItems below minItems");
    schema_error("{\"allOf\":[{},{}]}", "allOf");
    char *g = speck_json_schema_to_gbnf("{\"$ref\":\"#\"}", 12);
    speck_grammar *gr = g ? speck_grammar_from_json_schema("{\"$ref\":\"#\"}", 12) : NULL;
    CHECK(g && !gr && strstr(speck_last_error(), "refers back to itself"),
          "a schema that is its own $ref: %s", speck_last_error());
    free(g);
    speck_grammar_free(gr);
}

// Every string of a finite language; a token is allowed at the start iff its bytes are a prefix
// of one of them (or, for end-of-generation tokens, iff the empty string is one).
static bool prefix_of_any(const char *piece, int len, const char *const *lang, int n) {
    for (int i = 0; i < n; i++)
        if ((int)strlen(lang[i]) >= len && !memcmp(lang[i], piece, (size_t)len)) return true;
    return false;
}

static void test_mask(const speck_vocab *v, const speck_token_trie *t) {
    static const char *const lang[] = {"yes", "no", "maybe", "{\"a\": 1}", "é!", "日本"};
    const char *g = "root ::= \"yes\" | \"no\" | \"may\" \"be\" | \"{\\\"a\\\": \" [1] \"}\" | "
                    "[\\u00e9] \"!\" | \"日\" [本]";
    speck_grammar *gr = speck_grammar_parse(g, strlen(g));
    CHECK(gr, "mask grammar: %s", speck_last_error());
    if (!gr) return;
    speck_gmatch *m = speck_gmatch_new(gr, t);
    int n = speck_vocab_n_tokens(v);
    float *lg = calloc((size_t)n, sizeof *lg);
    int n_ok = speck_gmatch_mask(m, lg), bad = 0, want_ok = 0;
    for (int i = 0; i < n; i++) {
        char piece[256];
        int len = speck_token_to_piece(v, i, piece, sizeof piece);
        bool want = len > 0 && len <= (int)sizeof piece && !speck_vocab_is_eog(v, i) &&
                    prefix_of_any(piece, len, lang, 6);
        // control tokens print as their text but never stand for it: left out of the comparison
        const char *txt = speck_vocab_token_text(v, i);
        size_t tl = strlen(txt);
        if (tl > 2 && txt[0] == '<' && txt[tl - 1] == '>' && lg[i] == -INFINITY) continue;
        want_ok += want;
        if (want != (lg[i] == 0.0f)) {
            bad++;
            printf("token %d '%.*s': mask %d, expected %d\n", i, len, piece, lg[i] == 0.0f, want);
        }
    }
    CHECK(bad == 0 && n_ok == want_ok,
          "mask vs brute force: %d tokens differ (%d allowed, %d "
          "expected)",
          bad, n_ok, want_ok);
    // Walk "maybe" token by token (tokenized as the model would), then the grammar is done.
    int32_t ids[16];
    int64_t k = speck_tokenize(v, "maybe", 5, false, false, ids, 16);
    CHECK(k > 0 && speck_gmatch_check(m, ids, (int)k) == k, "check 'maybe'");
    for (int i = 0; i < k; i++) CHECK(speck_gmatch_accept(m, ids[i]) == 0, "accept 'maybe'");
    CHECK(speck_gmatch_complete(m) && speck_gmatch_done(m), "done after 'maybe'");
    memset(lg, 0, (size_t)n * sizeof *lg);
    n_ok = speck_gmatch_mask(m, lg);
    int32_t eos = speck_vocab_eos(v);
    CHECK(eos < 0 || (lg[eos] == 0.0f && n_ok >= 1), "only EOS after the end (%d allowed)", n_ok);
    speck_gmatch_free(m);
    // A partial UTF-8 sequence: "日" is 3 bytes; feed them through single-byte tokens if the
    // vocabulary has them (byte-level BPE does).
    m = speck_gmatch_new(gr, t);
    int32_t b[3] = {-1, -1, -1};
    for (int i = 0; i < n; i++) {
        char piece[8];
        int len = speck_token_to_piece(v, i, piece, sizeof piece);
        const unsigned char want[3] = {0xE6, 0x97, 0xA5};
        for (int j = 0; j < 3; j++)
            if (len == 1 && (unsigned char)piece[0] == want[j] && b[j] < 0) b[j] = i;
    }
    if (b[0] >= 0 && b[1] >= 0 && b[2] >= 0) {
        CHECK(speck_gmatch_accept(m, b[0]) == 0 && speck_gmatch_accept(m, b[1]) == 0 &&
                  !speck_gmatch_complete(m) && speck_gmatch_accept(m, b[2]) == 0,
              "UTF-8 split over byte tokens");
        CHECK(speck_gmatch_accept(m, b[2]) != 0, "a stray continuation byte is rejected");
    }
    speck_gmatch_free(m);
    free(lg);
    speck_grammar_free(gr);
}

typedef struct {
    int32_t *tok;
    int n, cap;
    const speck_vocab *v;
} toks;

static bool collect(int32_t t, void *u) {
    toks *o = u;
    if (o->n < o->cap) o->tok[o->n++] = t;
    return true;
}

static bool eog_cb(int32_t t, void *u) {
    return speck_vocab_is_eog(((toks *)u)->v, t);
}

// Plain constrained greedy decoding spelled out: one token per forward pass, the full mask every
// step, argmax; stops where the grammar is done or on an end-of-generation token.
static int reference_greedy(speck_model *m, const speck_vocab *v, const speck_grammar *g,
                            const speck_token_trie *t, const int32_t *prompt, int np, int32_t *out,
                            int max) {
    speck_ctx *c = speck_ctx_new(m, 512);
    speck_gmatch *gm = speck_gmatch_new(g, t);
    const int V = speck_vocab_n_tokens(v);
    float *lg = malloc((size_t)V * sizeof *lg);
    int n = 0, last = np - 1;
    if (!c || !gm || !lg || speck_forward(c, np, prompt, NULL, NULL, &last, 1, lg) < 0) n = -1;
    while (n >= 0 && n < max) {
        if (speck_gmatch_mask(gm, lg) == 0) break;
        int32_t tok = speck_argmax(lg, V);
        if (speck_gmatch_accept(gm, tok)) {
            n = -1;
            break;
        }
        out[n++] = tok;
        if (speck_vocab_is_eog(v, tok) || speck_gmatch_done(gm) || n == max) break;
        int zero = 0;
        if (speck_forward(c, 1, &tok, NULL, NULL, &zero, 1, lg) < 0) n = -1;
    }
    free(lg);
    speck_gmatch_free(gm);
    speck_ctx_free(c);
    return n;
}

// Greedy constrained decoding with each drafter equals plain constrained decoding, and the text
// is JSON (cJSON parses it).
static void test_decode(const char *model_path, const char *draft_path, const speck_vocab *v,
                        const speck_token_trie *t, bool quick) {
    speck_model *m = speck_model_load(model_path);
    speck_model *dm = draft_path ? speck_model_load(draft_path) : NULL;
    if (!m) {
        test_missing(model_path, "models/default.gguf ships with the repository");
        return;
    }
    const char *schema =
        "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\",\"maxLength\":12},"
        "\"ok\":{\"type\":\"boolean\"},\"tags\":{\"type\":\"array\",\"items\":{\"enum\":[\"a\","
        "\"b\"]},\"maxItems\":3}},\"required\":[\"name\",\"ok\"]}";
    speck_grammar *g = speck_grammar_from_json_schema(schema, strlen(schema));
    speck_ctx *ctx = speck_ctx_new(m, 512);
    const char *prompt = "def parse(data):\n    return {\"name\": \"x\", \"ok\": True}\n# JSON: ";
    int32_t ids[256];
    int64_t np = speck_tokenize(v, prompt, strlen(prompt), true, false, ids, 256);
    int32_t ref[200], out[200];
    int n_ref = -1;
    const char *kinds[] = {"none", "prompt", "aded", "prompt,aded", "model"};
    for (int k = 0; k < 5 && g && ctx && np > 0; k++) {
        if ((k == 4 && !dm) || (quick && (k == 2 || k == 3))) continue;
        speck_spec_params sp = speck_spec_default();
        speck_spec_parse_kinds(kinds[k], sp.kinds);
        sp.draft_model = dm;
        speck_decoder *d = speck_decoder_new(m, ctx, &sp);
        speck_gmatch *gm = speck_gmatch_new(g, t);
        speck_decoder_set_grammar(d, gm);
        speck_sampler_params smp = speck_sampler_default();
        speck_sampler *s = speck_sampler_new(&smp, speck_vocab_n_tokens(v));
        toks o = {k == 0 ? ref : out, 0, 200, v};
        speck_spec_stats st;
        int rc = speck_decode(d, ids, (int)np, 200, s, eog_cb, collect, &o, &st);
        CHECK(rc == 0, "decode %s: %s", kinds[k], speck_last_error());
        if (k == 0) {
            n_ref = o.n;
            char text[4096];
            int64_t len = speck_detokenize(v, ref, n_ref, text, sizeof text);
            cJSON *j = len > 0 && len < (int64_t)sizeof text ? cJSON_Parse(text) : NULL;
            printf("plain constrained output (%d tokens, %s): %s\n", n_ref, st.stop_reason, text);
            CHECK(j && !strcmp(st.stop_reason, "grammar complete"),
                  "plain constrained output is JSON and complete: %s (%s)", text, st.stop_reason);
            cJSON_Delete(j);
            int32_t want[200];
            int nw = reference_greedy(m, v, g, t, ids, (int)np, want, 200);
            CHECK(nw == n_ref && !memcmp(want, ref, (size_t)nw * sizeof *want),
                  "plain constrained decoding: %d tokens vs %d of the step-by-step reference "
                  "(full mask, argmax)",
                  n_ref, nw);
        } else {
            CHECK(o.n == n_ref && !memcmp(out, ref, (size_t)o.n * sizeof *out),
                  "drafter %s: %d tokens vs %d plain, differ", kinds[k], o.n, n_ref);
        }
        speck_sampler_free(s);
        speck_gmatch_free(gm);
        speck_decoder_free(d);
    }
    CHECK(g && ctx && np > 0, "decode setup: %s", speck_last_error());
    speck_ctx_free(ctx);
    speck_grammar_free(g);
    speck_model_free(m);
    speck_model_free(dm);
}

int main(int argc, char **argv) {
    test_parser();
    test_schema();
    if (argc < 2) {
        test_missing("a model", "usage: test_grammar MODEL.gguf [DRAFT.gguf]");
        return test_summary();
    }
    speck_vocab *v = speck_vocab_load(argv[1]);
    speck_token_trie *t = v ? speck_token_trie_new(v) : NULL;
    if (!t) {
        test_missing(argv[1], "models/default.gguf ships with the repository");
        speck_vocab_free(v);
        return test_summary();
    }
    test_mask(v, t);
    test_decode(argv[1], argc > 2 ? argv[2] : NULL, v, t, argc > 3 && !strcmp(argv[3], "quick"));
    speck_token_trie_free(t);
    speck_vocab_free(v);
    return test_summary();
}
