// `speck eval`: perplexity and bits per byte of a model on a text file, with a sliding window
// over the inference forward pass.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

static void kld_progress(int64_t done, int64_t total, void *user) {
    double *last = user, t = cli_now();
    if (done < total && t - *last < 0.2) return;
    *last = t;
    fprintf(stderr, "\rspeck eval: chunk %lld/%lld", (long long)done, (long long)total);
    if (done == total) fprintf(stderr, "\r%40s\r", "");
}

// --kld-base / --kld-base-out: llama-perplexity's protocol (speck_eval_kld).
static int eval_kld(const char *model, const char *text, const char *base_in,
                    const char *base_out, int ctx, int threads, bool json) {
    if (!model || (!base_in && !text) || (base_in && text)) {
        fprintf(stderr, "speck eval: --kld-base-out needs -m MODEL and --text FILE; --kld-base "
                        "needs -m MODEL (the text comes from the file)\n");
        return 2;
    }
    if (threads) speck_set_threads(threads);
    speck_model *m = cli_load_model(model); // with --lora / --delta applied
    if (!m) return cli_fail("eval");
    if (!ctx) ctx = speck_model_hparams(m)->n_ctx_train < 512 ? speck_model_hparams(m)->n_ctx_train
                                                             : 512;
    int32_t *ids = NULL;
    int64_t n = 0;
    if (text && (n = cli_tokenize_file("eval", model, text, true, &ids)) < 0) return 1;
    speck_kld_result r;
    double last = 0, t0 = cli_now();
    const int rc = speck_eval_kld(m, ids, n, ctx, base_in, base_out, &r,
                                  isatty(2) && !json ? kld_progress : NULL, &last);
    free(ids);
    speck_model_free(m);
    if (rc) return cli_fail("eval");
    const double ppl = exp(r.nll), ppl_base = exp(r.nll_base);
    if (json) {
        printf("{\"model\": \"%s\", \"n_ctx\": %d, \"chunks\": %d, \"scored\": %lld, "
               "\"ppl\": %.6f, \"nll\": %.6f, \"nll_err\": %.6f",
               model, r.n_ctx, r.n_chunks, (long long)r.n_scored, ppl, r.nll, r.nll_err);
        if (r.has_base)
            printf(", \"ppl_base\": %.6f, \"dppl\": %.6f, \"ln_ppl_ratio\": %.6f, "
                   "\"ln_ppl_ratio_err\": %.6f, \"kld\": %.8f, \"kld_err\": %.8f, "
                   "\"kld_median\": %.8f, \"kld_p99\": %.8f, \"kld_max\": %.6f, "
                   "\"top1\": %.6f",
                   ppl_base, ppl - ppl_base, r.ln_ppl_ratio, r.ln_ppl_ratio_err, r.kld, r.kld_err,
                   r.kld_median, r.kld_p99, r.kld_max, r.top1);
        printf("}\n");
        return 0;
    }
    printf("model:       %s\n", model);
    printf("chunks:      %d of %d tokens, %lld tokens scored (second halves)\n", r.n_chunks,
           r.n_ctx, (long long)r.n_scored);
    printf("perplexity:  %.4f  (%.4f +- %.4f nats/token)\n", ppl, r.nll, r.nll_err);
    if (base_out) printf("saved:       %s\n", base_out);
    if (r.has_base) {
        printf("base:        %s, perplexity %.4f\n", base_in, ppl_base);
        printf("delta ppl:   %+.4f  (ln(PPL/PPL_base) %+.5f +- %.5f)\n", ppl - ppl_base,
               r.ln_ppl_ratio, r.ln_ppl_ratio_err);
        printf("KLD:         mean %.6f +- %.6f, median %.6f, 99%% %.6f, max %.6f\n", r.kld,
               r.kld_err, r.kld_median, r.kld_p99, r.kld_max);
        printf("top-1:       %.3f %% agreement\n", 100.0 * r.top1);
    }
    printf("time:        %.2f s\n", cli_now() - t0);
    return 0;
}

int cmd_eval(int argc, char **argv) {
    const char *model = NULL, *text_path = NULL, *tokens_path = NULL;
    const char *base_in = NULL, *base_out = NULL;
    int ctx = 0, stride = 0, threads = 0;
    bool json = false;
    for (int i = 1; i < argc; i++) {
        const char *v;
        if (cli_flag(argv[i], "--help", "-h")) {
            printf("usage: speck eval -m MODEL.gguf --text FILE|--tokens CACHE [--ctx N] "
                   "[--stride S] [--threads N]\n"
                   "                  [--delta DELTA.gguf]... [--lora ADAPTER.gguf[:SCALE]]...\n"
                   "       speck eval -m BASE.gguf --text FILE --kld-base-out LOGPROBS [--ctx N]\n"
                   "       speck eval -m QUANT.gguf --kld-base LOGPROBS [--json]\n\n"
                   "Perplexity and bits per byte of FILE under the model. Windows of N tokens\n"
                   "(default: the model's context, at most 512) advance by S tokens (default\n"
                   "N/2); every token is scored once, with at least N-S tokens of context except\n"
                   "in the first window. --tokens scores the validation split of a token cache\n"
                   "written by speck train (OUT.tokens) instead of a text file.\n\n"
                   "Quantization quality as llama-perplexity measures it: the text in chunks of\n"
                   "N tokens, each scored on its second half. --kld-base-out saves the model's\n"
                   "log-probabilities (llama-perplexity's --kl-divergence-base format: either\n"
                   "program reads the other's); --kld-base compares a model with them: KL\n"
                   "divergence (mean, median, 99th percentile, max), top-1 agreement, perplexity\n"
                   "and its change.\n");
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
        else if (cli_opt(argc, argv, &i, "--kld-base", NULL, &v))
            base_in = v;
        else if (cli_opt(argc, argv, &i, "--kld-base-out", NULL, &v))
            base_out = v;
        else if (cli_flag(argv[i], "--json", NULL))
            json = true;
        else if (cli_delta_opt("eval", argc, argv, &i) || cli_lora_opt("eval", argc, argv, &i))
            continue;
        else {
            fprintf(stderr, "speck eval: unknown option '%s'\n", argv[i]);
            return 2;
        }
    }
    if (!model) model = cli_default_model();
    if (base_in || base_out) return eval_kld(model, text_path, base_in, base_out, ctx, threads, json);
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
    speck_model *m = cli_load_model(model);
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
    // A mixture of experts: each layer's share of the token-choices per expert over every
    // window's tokens (overlapping windows count their shared tokens again).
    const int64_t *ec = speck_ctx_expert_counts(c);
    for (int l = 0; ec && l < hp->n_layer; l++) {
        int64_t tot = 0;
        for (int e = 0; e < hp->n_expert; e++) tot += ec[(size_t)l * hp->n_expert + e];
        printf("experts %d:  ", l);
        for (int e = 0; e < hp->n_expert; e++) {
            const int64_t k = ec[(size_t)l * hp->n_expert + e];
            printf("%s%.1f", e ? " " : "", tot ? 100.0 * (double)k / (double)tot : 0.0);
        }
        printf(" %% of %lld choices (top %d of %d)\n", (long long)tot, hp->n_expert_used,
               hp->n_expert);
    }
    free(text), free(ids), free(logits), free(rows);
    speck_ctx_free(c);
    speck_model_free(m);
    return 0;
}
