// Grammar mask benchmark: the per-token cost of masking a vocabulary with a grammar, along a
// realistic JSON answer, beside the sampler's own per-token cost over the same vocabulary.
// Usage: bench_grammar VOCAB.gguf [VOCAB.gguf ...]   (a model GGUF or a vocabulary-only one)
// For each vocabulary: the token trie's build time; then for the json_object grammar and a JSON
// Schema grammar, the text below is tokenized and walked token by token; at each step the mask
// is computed (median and max over the steps, each the best of 3) and, as the baseline run
// alongside, a top-p/temperature sampler draws from the same logits.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "speck.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static const char ANSWER[] =
    "{\"name\": \"Ada Lovelace\", \"age\": 36, \"languages\": [\"en\", \"fr\"],\n"
    "  \"note\": \"first \\\"program\\\" (1843)\", \"score\": -12.5e3, \"active\": true}";

static const char SCHEMA[] =
    "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\"},\"age\":{\"type\":"
    "\"integer\"},\"languages\":{\"type\":\"array\",\"items\":{\"type\":\"string\"}},\"note\":"
    "{\"type\":\"string\"},\"score\":{\"type\":\"number\"},\"active\":{\"type\":\"boolean\"}},"
    "\"required\":[\"name\",\"age\"],\"additionalProperties\":false}";

static void run(const char *label, const speck_grammar *g, const speck_token_trie *t,
                const speck_vocab *v) {
    const int n = speck_vocab_n_tokens(v);
    int32_t ids[512];
    int64_t k = speck_tokenize(v, ANSWER, strlen(ANSWER), false, false, ids, 512);
    speck_gmatch *m = speck_gmatch_new(g, t);
    float *lg = malloc((size_t)n * sizeof *lg), *base = malloc((size_t)n * sizeof *base);
    double *tm = malloc((size_t)(k + 1) * sizeof *tm), *ts = malloc((size_t)(k + 1) * sizeof *ts);
    double *ta = malloc((size_t)(k + 1) * sizeof *ta);
    if (!m || k <= 0 || !lg || !base || !tm || !ts) {
        fprintf(stderr, "%s: setup failed: %s\n", label, speck_last_error());
        exit(1);
    }
    srand(1);
    for (int i = 0; i < n; i++) base[i] = (float)(rand() % 10000) * 1e-3f;
    speck_sampler_params sp = speck_sampler_default();
    sp.temperature = 0.8f, sp.top_p = 0.95f;
    speck_sampler *s = speck_sampler_new(&sp, n);
    int steps = 0, allowed_sum = 0;
    for (int64_t i = 0; i < k; i++) {
        double best = 1e9, bests = 1e9, besta = 1e9;
        int ok = 0;
        for (int r = 0; r < 3; r++) {
            memcpy(lg, base, (size_t)n * sizeof *lg);
            double t0 = now();
            ok = speck_gmatch_mask(m, lg);
            double t1 = now();
            memcpy(lg, base, (size_t)n * sizeof *lg);
            double t2 = now();
            volatile int32_t tok = speck_sampler_sample(s, lg);
            (void)tok;
            double t3 = now();
            double t4 = now();
            volatile int32_t am = speck_argmax(lg, n);
            (void)am;
            double t5 = now();
            if (t5 - t4 < besta) besta = t5 - t4;
            if (t1 - t0 < best) best = t1 - t0;
            if (t3 - t2 < bests) bests = t3 - t2;
        }
        tm[steps] = best, ts[steps] = bests, ta[steps] = besta;
        steps++;
        allowed_sum += ok;
        if (speck_gmatch_accept(m, ids[i])) {
            fprintf(stderr, "%s: the grammar rejects token %lld of the answer\n", label,
                    (long long)i);
            exit(1);
        }
    }
    qsort(tm, (size_t)steps, sizeof *tm, cmp);
    qsort(ts, (size_t)steps, sizeof *ts, cmp);
    qsort(ta, (size_t)steps, sizeof *ta, cmp);
    double mm = tm[steps / 2], ms = ts[steps / 2];
    printf("  %-12s %3d steps: mask median %7.3f ms (max %7.3f), sampler median %7.3f ms, "
           "argmax median %6.3f ms, mask/sampler %.2fx, %.0f tokens allowed on average\n",
           label, steps, mm * 1e3, tm[steps - 1] * 1e3, ms * 1e3, ta[steps / 2] * 1e3, mm / ms,
           (double)allowed_sum / steps);
    speck_sampler_free(s);
    speck_gmatch_free(m);
    free(lg), free(base), free(tm), free(ts), free(ta);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s VOCAB.gguf [VOCAB.gguf ...]\n", argv[0]);
        return 2;
    }
    speck_grammar *jo = speck_grammar_json_object();
    speck_grammar *js = speck_grammar_from_json_schema(SCHEMA, strlen(SCHEMA));
    if (!jo || !js) {
        fprintf(stderr, "grammar: %s\n", speck_last_error());
        return 1;
    }
    for (int a = 1; a < argc; a++) {
        speck_vocab *v = speck_vocab_load(argv[a]);
        if (!v) {
            fprintf(stderr, "%s: %s\n", argv[a], speck_last_error());
            return 1;
        }
        double t0 = now();
        speck_token_trie *t = speck_token_trie_new(v);
        double tb = now() - t0;
        printf("%s: %d tokens, trie built in %.1f ms\n", argv[a], speck_vocab_n_tokens(v),
               tb * 1e3);
        run("json_object", jo, t, v);
        run("json_schema", js, t, v);
        speck_token_trie_free(t);
        speck_vocab_free(v);
    }
    speck_grammar_free(jo);
    speck_grammar_free(js);
    return 0;
}
