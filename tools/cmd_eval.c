// `speck eval`: perplexity and bits per byte of a model on a text file, with a sliding window
// over the inference forward pass.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

int cmd_eval(int argc, char **argv) {
    const char *model = NULL, *text_path = NULL, *tokens_path = NULL;
    int ctx = 0, stride = 0, threads = 0;
    for (int i = 1; i < argc; i++) {
        const char *v;
        if (cli_flag(argv[i], "--help", "-h")) {
            printf("usage: speck eval -m MODEL.gguf --text FILE|--tokens CACHE [--ctx N] "
                   "[--stride S] [--threads N]\n\n"
                   "Perplexity and bits per byte of FILE under the model. Windows of N tokens\n"
                   "(default: the model's context, at most 512) advance by S tokens (default\n"
                   "N/2); every token is scored once, with at least N-S tokens of context except\n"
                   "in the first window. --tokens scores the validation split of a token cache\n"
                   "written by speck train (OUT.tokens) instead of a text file.\n");
            return 0;
        } else if (cli_opt(argc, argv, &i, "--model", "-m", &v))
            model = v;
        else if (cli_opt(argc, argv, &i, "--text", "-f", &v))
            text_path = v;
        else if (cli_opt(argc, argv, &i, "--tokens", NULL, &v))
            tokens_path = v;
        else if (cli_opt(argc, argv, &i, "--ctx", "-c", &v))
            ctx = (int)cli_int("eval", "--ctx", v, 2, 1 << 20);
        else if (cli_opt(argc, argv, &i, "--stride", NULL, &v))
            stride = (int)cli_int("eval", "--stride", v, 1, 1 << 20);
        else if (cli_opt(argc, argv, &i, "--threads", "-t", &v))
            threads = (int)cli_int("eval", "--threads", v, 1, 1024);
        else {
            fprintf(stderr, "speck eval: unknown option '%s'\n", argv[i]);
            return 2;
        }
    }
    if (!model) model = cli_default_model();
    if (!model || (!text_path == !tokens_path)) {
        fprintf(stderr,
                "speck eval: -m MODEL and one of --text FILE, --tokens CACHE are required\n");
        return 2;
    }
    if (threads) speck_set_threads(threads);
    char *text = NULL;
    long n_bytes = 0;
    int32_t *ids = NULL;
    int64_t n = 0;
    speck_model *m = speck_model_load(model);
    if (!m) return cli_fail("eval");
    if (tokens_path) { // validation split of a speck train token cache (see src/train/data.c)
        FILE *f = fopen(tokens_path, "rb");
        char magic[8];
        uint64_t hdr[3];
        uint32_t files[2];
        if (!f || fread(magic, 1, 8, f) != 8 || memcmp(magic, "SPKTOK01", 8) ||
            fread(hdr, 8, 3, f) != 3 || fread(files, 4, 2, f) != 2 ||
            fseek(f, (long)(hdr[1] * 4), SEEK_CUR) ||
            !(ids = malloc((size_t)(hdr[2] ? hdr[2] : 1) * sizeof *ids)) ||
            fread(ids, 4, hdr[2], f) != hdr[2]) {
            fprintf(stderr, "speck eval: %s: not a readable speck token cache\n", tokens_path);
            return 1;
        }
        fclose(f);
        n = (int64_t)hdr[2];
        for (int64_t i = 0; i < n; i++)
            if (ids[i] < 0 || ids[i] >= speck_model_hparams(m)->n_vocab) {
                fprintf(stderr,
                        "speck eval: %s: token %d is outside the model's vocabulary "
                        "(vocabulary/model mismatch)\n",
                        tokens_path, ids[i]);
                return 1;
            }
        text_path = tokens_path;
    } else {
        FILE *f = fopen(text_path, "rb");
        if (!f) {
            fprintf(stderr, "speck eval: %s: cannot open\n", text_path);
            return 1;
        }
        fseek(f, 0, SEEK_END);
        n_bytes = ftell(f);
        fseek(f, 0, SEEK_SET);
        text = malloc((size_t)n_bytes + 1);
        if (!text || fread(text, 1, (size_t)n_bytes, f) != (size_t)n_bytes) {
            fprintf(stderr, "speck eval: %s: read failed\n", text_path);
            return 1;
        }
        fclose(f);
        speck_vocab *v = speck_vocab_from_gguf(speck_model_gguf(m));
        if (!v) return cli_fail("eval");
        ids = malloc(((size_t)n_bytes + 2) * sizeof *ids);
        n = speck_tokenize(v, text, (size_t)n_bytes, false, false, ids, n_bytes + 2);
        speck_vocab_free(v);
        if (n < 0) return cli_fail("eval");
    }
    if (n < 2) {
        fprintf(stderr, "speck eval: %s: fewer than 2 tokens of text\n", text_path);
        return 1;
    }
    const speck_hparams *hp = speck_model_hparams(m);
    if (!ctx) ctx = hp->n_ctx_train < 512 ? hp->n_ctx_train : 512;
    if (!stride) stride = ctx / 2 > 0 ? ctx / 2 : 1;
    if (stride > ctx) stride = ctx;
    speck_ctx *c = speck_ctx_new(m, ctx);
    float *logits = malloc((size_t)ctx * hp->n_vocab * sizeof(float));
    int *rows = malloc((size_t)ctx * sizeof *rows);
    if (!c || !logits || !rows) return cli_fail("eval");
    double nll = 0, t0 = cli_now();
    int64_t scored = 0; // tokens 1..scored have been scored
    for (int64_t start = 0; scored < n - 1; start += stride) {
        int64_t end = start + ctx < n ? start + ctx : n; // window tokens [start, end)
        int len = (int)(end - start);
        // Rows predicting the not-yet-scored tokens scored+1 .. end-1.
        int n_out = 0;
        for (int64_t p = scored + 1; p < end; p++) rows[n_out++] = (int)(p - 1 - start);
        speck_ctx_truncate(c, 0);
        if (speck_forward(c, len, ids + start, NULL, NULL, rows, n_out, logits))
            return cli_fail("eval");
        for (int r = 0; r < n_out; r++) {
            const float *l = logits + (size_t)r * hp->n_vocab;
            float mx = l[0];
            for (int j = 1; j < hp->n_vocab; j++) mx = l[j] > mx ? l[j] : mx;
            double s = 0;
            for (int j = 0; j < hp->n_vocab; j++) s += exp((double)l[j] - mx);
            nll += log(s) + mx - l[ids[start + rows[r] + 1]];
        }
        scored = end - 1;
    }
    double ppl = exp(nll / (double)(n - 1));
    if (text)
        printf("model:      %s\ntext:       %s (%ld bytes, %lld tokens, %.2f bytes/token)\n", model,
               text_path, n_bytes, (long long)n, (double)n_bytes / n);
    else
        printf("model:      %s\ntokens:     %s, validation split (%lld tokens)\n", model, text_path,
               (long long)n);
    printf("window:     %d tokens, stride %d\n", ctx, stride);
    printf("perplexity: %.4f  (%.4f nats/token)\n", ppl, nll / (double)(n - 1));
    if (text) printf("bits/byte:  %.4f\n", nll / log(2.0) / (double)n_bytes);
    printf("time:       %.2f s (%.0f tokens/s)\n", cli_now() - t0, (n - 1) / (cli_now() - t0));
    free(text), free(ids), free(logits), free(rows);
    speck_ctx_free(c);
    speck_model_free(m);
    return 0;
}
