// Tokenizer benchmark: vocabulary load time and encode throughput (MB/s) on a text file.
// Usage: bench_tokenizer TEXT_FILE VOCAB [VOCAB ...]
//   VOCAB: a GGUF file, a tokenizer.json, or a directory holding one.
// Encoding runs twice: a cold pass (empty word cache) and a warm pass over the same text.
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

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s TEXT_FILE VOCAB [VOCAB ...]\n", argv[0]);
        return 2;
    }
    FILE *f = fopen(argv[1], "rb");
    if (!f) {
        fprintf(stderr, "%s: cannot open\n", argv[1]);
        return 1;
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = malloc((size_t)n);
    if (!text || fread(text, 1, (size_t)n, f) != (size_t)n) return 1;
    fclose(f);
    int32_t *ids = malloc(sizeof *ids * (size_t)n + 16);
    printf("text: %s, %.2f MB\n", argv[1], (double)n / 1e6);
    for (int a = 2; a < argc; a++) {
        double best = 1e9;
        speck_vocab *v = NULL;
        for (int r = 0; r < 5; r++) {
            double t0 = now();
            speck_vocab *w = speck_vocab_load(argv[a]);
            double t = now() - t0;
            if (!w) {
                fprintf(stderr, "%s: %s\n", argv[a], speck_last_error());
                return 1;
            }
            if (t < best) best = t;
            if (v) speck_vocab_free(v);
            v = w;
        }
        printf("%s\n  tokens %d, load %.1f ms (best of 5)\n", argv[a], speck_vocab_n_tokens(v),
               best * 1e3);
        // Line by line, as a server would see separate requests; special text not parsed.
        for (int pass = 0; pass < 2; pass++) {
            double t0 = now();
            int64_t total = 0;
            for (long i = 0; i < n;) {
                char *nl = memchr(text + i, '\n', (size_t)(n - i));
                long e = nl ? nl - text + 1 : n;
                int64_t k = speck_tokenize(v, text + i, (size_t)(e - i), false, false, ids, n);
                if (k < 0) {
                    fprintf(stderr, "encode: %s\n", speck_last_error());
                    return 1;
                }
                total += k;
                i = e;
            }
            double t = now() - t0;
            printf("  encode (%s): %lld tokens, %.3f s, %.2f MB/s, %.2f bytes/token\n",
                   pass ? "warm cache" : "cold cache", (long long)total, t, (double)n / t / 1e6,
                   (double)n / (double)total);
        }
        speck_vocab_free(v);
    }
    free(ids);
    free(text);
    return 0;
}
