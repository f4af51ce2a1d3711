// Tokenizer tests against llama.cpp's vocabulary test vectors (../shared/vocab/NAME.gguf with
// NAME.gguf.inp / .out, ids produced without BOS/EOS and without parsing special tokens), plus
// decode round trips, streaming decode and bad input.
// Usage: test_tokenizer_vocab VOCAB_DIR
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "speck.h"

#include "test_util.h"

static int64_t encode(const speck_vocab *v, const char *s, size_t n, bool add, bool parse,
                      int32_t **ids) {
    int64_t k = speck_tokenize(v, s, n, add, parse, NULL, 0);
    if (k < 0) return k;
    *ids = malloc(sizeof **ids * (size_t)(k + 1));
    int64_t k2 = speck_tokenize(v, s, n, add, parse, *ids, k);
    return k2 == k ? k : -100;
}

static bool valid_utf8(const char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        size_t l = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        if (!l || i + l > n) return false;
        for (size_t k = 1; k < l; k++)
            if (((unsigned char)s[i + k] & 0xC0) != 0x80) return false;
        i += l;
    }
    return true;
}

// Decode ids both at once and through the streaming decoder; the two must agree, and the stream
// must never release a partial UTF-8 character when the full text is valid.
static void check_decode(const speck_vocab *v, const char *name, const char *s, size_t n,
                         const int32_t *ids, int64_t k) {
    int64_t need = speck_detokenize(v, ids, k, NULL, 0);
    char *dec = malloc((size_t)need + 1);
    speck_detokenize(v, ids, k, dec, need + 1);
    if (valid_utf8(s, n))
        CHECK((size_t)need == n && !memcmp(dec, s, n), "%s: decode(encode(\"%.40s\")) = \"%.40s\"",
              name, s, dec);
    speck_detok *d = speck_detok_new(v);
    char *acc = malloc((size_t)need + 8);
    size_t an = 0;
    bool partial = false;
    for (int64_t i = 0; i < k; i++) {
        const char *p = speck_detok_push(d, ids[i]);
        size_t pl = strlen(p);
        if (!valid_utf8(p, pl)) partial = true;
        memcpy(acc + an, p, pl);
        an += pl;
    }
    const char *p = speck_detok_flush(d);
    memcpy(acc + an, p, strlen(p));
    an += strlen(p);
    if (valid_utf8(dec, (size_t)need))
        CHECK(!partial, "%s: streaming released partial UTF-8 for \"%.40s\"", name, s);
    CHECK(an == (size_t)need && !memcmp(acc, dec, an), "%s: streaming != batch decode", name);
    speck_detok_free(d);
    free(acc);
    free(dec);
}

static const char SEP[] = "\n__ggml_vocab_test__\n";

static void run_vectors(const char *dir, const char *name) {
    char path[4096], inp[4200], outp[4200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    snprintf(inp, sizeof inp, "%s.inp", path);
    snprintf(outp, sizeof outp, "%s.out", path);
    size_t il, ol;
    char *in = test_read_file(inp, &il), *out = test_read_file(outp, &ol);
    speck_vocab *v = speck_vocab_load(path);
    CHECK(v != NULL, "%s: load: %s", name, speck_last_error());
    if (!v) goto done;
    if (!in || !out) {
        // ../shared/vocab has no vectors for this vocabulary (GPT-NeoX): its ids are not checked
        // against anything; what can be checked is that it loads and decodes its own encodings of
        // the GPT-2 test strings back to the same text.
        snprintf(inp, sizeof inp, "%s/ggml-vocab-gpt-2.gguf.inp", dir);
        free(in);
        in = test_read_file(inp, &il);
        CHECK(in != NULL, "%s: no %s to take test strings from", name, inp);
        int n = 0;
        for (char *p = in; in && p < in + il; n++) {
            char *e = strstr(p, SEP);
            size_t tl = e ? (size_t)(e - p) : strlen(p);
            if (!e && tl && p[tl - 1] == '\n') tl--;
            int32_t *ids = NULL;
            int64_t k = encode(v, p, tl, false, false, &ids);
            CHECK(k >= 0, "%s: encode \"%.*s\": %s", name, (int)tl, p, speck_last_error());
            if (k >= 0) check_decode(v, name, p, tl, ids, k);
            free(ids);
            if (!e) break;
            p = e + strlen(SEP);
        }
        printf("  %s: no test vectors (ids unchecked); %d tokens, %d GPT-2 test strings decode "
               "back\n",
               name, speck_vocab_n_tokens(v), n);
        goto done;
    }
    int n_ok = 0, n_all = 0;
    char *p = in, *line = out;
    while (p < in + il) {
        char *e = strstr(p, SEP);
        size_t tl = e ? (size_t)(e - p) : strlen(p);
        if (!e && tl && p[tl - 1] == '\n') tl--; // last chunk: trailing newline, no separator
        if (!e && tl == 0) break;
        char *nl = strchr(line, '\n');
        if (!nl) nl = line + strlen(line);
        // expected ids
        int32_t want[4096];
        int nw = 0;
        for (char *q = line; q < nl;) {
            char *end;
            long x = strtol(q, &end, 10);
            if (end == q) break;
            want[nw++] = (int32_t)x;
            q = end;
        }
        int32_t *got = NULL;
        int64_t ng = encode(v, p, tl, false, false, &got);
        bool same = ng == nw && !memcmp(got, want, sizeof *got * (size_t)nw);
        n_all++;
        n_ok += same;
        if (!same) {
            printf("  %s: MISMATCH for \"%.*s\"\n    want:", name, (int)tl, p);
            for (int i = 0; i < nw; i++) printf(" %d", want[i]);
            printf("\n    got: ");
            for (int64_t i = 0; i < ng; i++) printf(" %d", got[i]);
            printf("\n");
        } else {
            check_decode(v, name, p, tl, got, ng);
        }
        free(got);
        line = *nl ? nl + 1 : nl;
        if (!e) break;
        p = e + strlen(SEP);
    }
    printf("  %s: %d/%d vectors identical\n", name, n_ok, n_all);
    CHECK(n_ok == n_all && n_all > 0, "%s: %d of %d vectors differ", name, n_all - n_ok, n_all);
done:
    speck_vocab_free(v);
    free(in);
    free(out);
}

static void bad_input(const char *dir) {
    char path[4096];
    snprintf(path, sizeof path, "%s/ggml-vocab-gpt-2.gguf", dir);
    speck_vocab *v = speck_vocab_load(path);
    CHECK(v != NULL, "%s: %s", path, speck_last_error());
    if (!v) return;
    char buf[32];
    CHECK(speck_token_to_piece(v, -1, buf, sizeof buf) == SPECK_ERR_RANGE, "negative id");
    CHECK(speck_token_to_piece(v, speck_vocab_n_tokens(v), buf, sizeof buf) == SPECK_ERR_RANGE,
          "id == n_tokens accepted");
    int32_t bad[] = {10, 1 << 30};
    CHECK(speck_detokenize(v, bad, 2, buf, sizeof buf) == SPECK_ERR_RANGE, "detok bad id");
    speck_detok *d = speck_detok_new(v);
    CHECK(speck_detok_push(d, -5) == NULL, "stream bad id");
    speck_detok_free(d);
    // Invalid UTF-8 is encoded byte by byte and decodes back to the same bytes.
    const char raw[] = "ok \xff\xfe bytes \xc3 end \xe2\x82";
    int32_t *ids = NULL;
    int64_t k = encode(v, raw, sizeof raw - 1, false, false, &ids);
    CHECK(k > 0, "invalid UTF-8 input: %s", speck_last_error());
    if (k > 0) {
        char dec[128];
        int64_t m = speck_detokenize(v, ids, k, dec, sizeof dec);
        CHECK(m == (int64_t)sizeof raw - 1 && !memcmp(dec, raw, sizeof raw - 1),
              "invalid UTF-8 round trip");
    }
    free(ids);
    // Truncated output buffer: count is still the full one.
    int32_t two[2];
    int64_t full = speck_tokenize(v, "Hello world, again and again", 28, false, false, NULL, 0);
    CHECK(speck_tokenize(v, "Hello world, again and again", 28, false, false, two, 2) == full &&
              full > 2,
          "short buffer");
    speck_vocab_free(v);

    // SPM vocabulary: invalid bytes become <0xXX> byte tokens.
    snprintf(path, sizeof path, "%s/ggml-vocab-llama-spm.gguf", dir);
    v = speck_vocab_load(path);
    CHECK(v != NULL, "%s: %s", path, speck_last_error());
    if (v) {
        k = encode(v, raw, sizeof raw - 1, true, false, &ids);
        CHECK(k > 0 && ids[0] == speck_vocab_bos(v), "spm add_special BOS");
        if (k > 0) {
            char dec[128];
            int64_t m = speck_detokenize(v, ids + 1, k - 1, dec, sizeof dec);
            CHECK(m == (int64_t)sizeof raw - 1 && !memcmp(dec, raw, sizeof raw - 1),
                  "spm invalid UTF-8 round trip (%lld)", (long long)m);
        }
        free(ids);
        // Special-token text is plain text unless parse_special.
        k = encode(v, "a</s>b", 6, false, true, &ids);
        bool has_eos = false;
        for (int64_t i = 0; i < k; i++) has_eos |= ids[i] == speck_vocab_eos(v);
        CHECK(has_eos, "parse_special finds </s>");
        free(ids);
        k = encode(v, "a</s>b", 6, false, false, &ids);
        has_eos = false;
        for (int64_t i = 0; i < k; i++) has_eos |= ids[i] == speck_vocab_eos(v);
        CHECK(!has_eos, "</s> parsed without parse_special");
        free(ids);
        speck_vocab_free(v);
    }
}

static void bad_files(void) {
    char dir[] = "/tmp/speck_tok_XXXXXX";
    if (!mkdtemp(dir)) return;
    char path[256];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    FILE *f = fopen(path, "w");
    fputs("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0,", f);
    fclose(f);
    speck_vocab *v = speck_vocab_load(path);
    CHECK(v == NULL && strstr(speck_last_error(), "tokenizer.json"),
          "malformed tokenizer.json: '%s'", speck_last_error());
    printf("  malformed tokenizer.json -> %s\n", speck_last_error());
    speck_vocab_free(v);
    f = fopen(path, "w");
    fputs("{\"model\": {\"type\": \"WordPiece\", \"vocab\": {\"a\": 0}}}", f);
    fclose(f);
    v = speck_vocab_load(path);
    CHECK(v == NULL, "WordPiece accepted");
    printf("  WordPiece tokenizer.json -> %s\n", speck_last_error());
    speck_vocab_free(v);
    remove(path);
    v = speck_vocab_load(path);
    CHECK(v == NULL, "missing file accepted");
    rmdir(dir);
}

int main(int argc, char **argv) {
    const char *dir = argc > 1 ? argv[1] : "../shared/vocab";
    DIR *dp = opendir(dir);
    if (!dp) {
        char what[4200];
        snprintf(what, sizeof what, "llama.cpp's vocabulary test vectors (%s)", dir);
        test_missing(what, "they are the shared folder ../shared/vocab beside the repository "
                           "(../shared/README.md); pass another folder as the first argument");
        bad_files();
        return test_summary();
    }
    char *names[64];
    int nn = 0;
    struct dirent *de;
    while ((de = readdir(dp)) && nn < 64) {
        size_t l = strlen(de->d_name);
        if (l > 5 && !strcmp(de->d_name + l - 5, ".gguf")) names[nn++] = strdup(de->d_name);
    }
    closedir(dp);
    for (int i = 0; i < nn; i++)
        for (int j = i + 1; j < nn; j++)
            if (strcmp(names[i], names[j]) > 0) {
                char *t = names[i];
                names[i] = names[j];
                names[j] = t;
            }
    for (int i = 0; i < nn; i++) {
        run_vectors(dir, names[i]);
        free(names[i]);
    }
    bad_input(dir);
    bad_files();
    return test_summary();
}
