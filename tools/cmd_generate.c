// `speck generate`: prompt -> streamed completion with the sampler's settings.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

#define MAX_STOPS 8

typedef struct {
    const char *stops[MAX_STOPS];
    int n_stops;
    char *pending; // text not yet printed because it may begin a stop string
    size_t len, cap;
} stop_filter;

// Append text; print what can no longer be part of a stop string. Returns true when a stop
// string appeared (the text before it is printed, the stop string itself is not).
static bool stop_push(stop_filter *f, const char *text) {
    size_t add = strlen(text);
    if (f->len + add + 1 > f->cap) {
        f->cap = (f->len + add + 1) * 2;
        f->pending = realloc(f->pending, f->cap);
    }
    memcpy(f->pending + f->len, text, add + 1);
    f->len += add;
    for (int s = 0; s < f->n_stops; s++) {
        char *hit = strstr(f->pending, f->stops[s]);
        if (hit) {
            fwrite(f->pending, 1, (size_t)(hit - f->pending), stdout);
            f->len = 0;
            return true;
        }
    }
    size_t keep = 0; // longest suffix of pending that is a proper prefix of a stop string
    for (int s = 0; s < f->n_stops; s++) {
        size_t sl = strlen(f->stops[s]);
        for (size_t k = sl - 1; k > keep; k--)
            if (k <= f->len && !memcmp(f->pending + f->len - k, f->stops[s], k)) {
                keep = k;
                break;
            }
    }
    fwrite(f->pending, 1, f->len - keep, stdout);
    memmove(f->pending, f->pending + f->len - keep, keep);
    f->len = keep;
    fflush(stdout);
    return false;
}

static void help(void) {
    printf("usage: speck generate [-m MODEL.gguf] [-p PROMPT | --ids 1,2,3] [options]\n\n"
           "Generate a completion, streamed as it is decoded. Without -m, the default model\n"
           "($SPECK_MODEL or models/default.gguf).\n\n"
           "  -n, --n-predict N      tokens to generate (default 128)\n"
           "  --temp T               temperature; 0 = greedy (default 0)\n"
           "  --top-k K, --top-p P, --min-p M   sampling filters (default off)\n"
           "  --repeat-penalty R     penalise the last --repeat-last-n (64) tokens (default 1)\n"
           "  --seed S               sampler seed: same seed, same output (default 42)\n"
           "  --stop STR             stop when STR is generated (repeatable, up to 8)\n"
           "  --ignore-eos           keep going past end-of-generation tokens\n"
           "  -c, --ctx N            context size (default: model's, at most 4096)\n"
           "  -t, --threads N        threads (default: all cores)\n"
           "  --no-stats             do not print timing statistics to stderr\n");
}

int cmd_generate(int argc, char **argv) {
    const char *path = NULL, *prompt = NULL, *ids_arg = NULL;
    int n_predict = 128, n_ctx = 0;
    bool stats = true, ignore_eos = false;
    speck_sampler_params sp = speck_sampler_default();
    stop_filter sf = {0};
    for (int i = 1; i < argc; i++) {
        const char *v;
        if (cli_flag(argv[i], "--help", "-h")) {
            help();
            return 0;
        } else if (cli_opt(argc, argv, &i, "--model", "-m", &v)) path = v;
        else if (cli_opt(argc, argv, &i, "--prompt", "-p", &v)) prompt = v;
        else if (cli_opt(argc, argv, &i, "--ids", NULL, &v)) ids_arg = v;
        else if (cli_opt(argc, argv, &i, "--n-predict", "-n", &v))
            n_predict = (int)cli_int("generate", "-n", v, 0, 1 << 20);
        else if (cli_opt(argc, argv, &i, "--ctx", "-c", &v))
            n_ctx = (int)cli_int("generate", "--ctx", v, 1, 1 << 24);
        else if (cli_opt(argc, argv, &i, "--threads", "-t", &v))
            speck_set_threads((int)cli_int("generate", "--threads", v, 1, 4096));
        else if (cli_opt(argc, argv, &i, "--temp", NULL, &v))
            sp.temperature = (float)cli_float("generate", "--temp", v);
        else if (cli_opt(argc, argv, &i, "--top-k", NULL, &v))
            sp.top_k = (int)cli_int("generate", "--top-k", v, 0, 1 << 30);
        else if (cli_opt(argc, argv, &i, "--top-p", NULL, &v))
            sp.top_p = (float)cli_float("generate", "--top-p", v);
        else if (cli_opt(argc, argv, &i, "--min-p", NULL, &v))
            sp.min_p = (float)cli_float("generate", "--min-p", v);
        else if (cli_opt(argc, argv, &i, "--repeat-penalty", NULL, &v))
            sp.repeat_penalty = (float)cli_float("generate", "--repeat-penalty", v);
        else if (cli_opt(argc, argv, &i, "--repeat-last-n", NULL, &v))
            sp.repeat_last_n = (int)cli_int("generate", "--repeat-last-n", v, 0, 1 << 20);
        else if (cli_opt(argc, argv, &i, "--seed", NULL, &v))
            sp.seed = (uint64_t)cli_int("generate", "--seed", v, 0, INT64_MAX);
        else if (cli_opt(argc, argv, &i, "--stop", NULL, &v)) {
            if (sf.n_stops == MAX_STOPS || !*v) {
                fprintf(stderr, "speck generate: --stop: at most %d non-empty strings\n",
                        MAX_STOPS);
                return 2;
            }
            sf.stops[sf.n_stops++] = v;
        } else if (cli_flag(argv[i], "--no-stats", NULL)) stats = false;
        else if (cli_flag(argv[i], "--ignore-eos", NULL)) ignore_eos = true;
        else {
            fprintf(stderr, "speck generate: unknown option '%s' (speck generate --help)\n",
                    argv[i]);
            return 2;
        }
    }
    if (!path) path = cli_default_model();
    if (!path) {
        fprintf(stderr, "speck generate: no model: pass -m FILE.gguf (no default model found)\n");
        return 2;
    }
    if (!prompt && !ids_arg) prompt = "";
    speck_model *m = speck_model_load(path);
    if (!m) return cli_fail("generate");
    const speck_hparams *hp = speck_model_hparams(m);
    speck_vocab *vocab = speck_vocab_from_gguf(speck_model_gguf(m));
    int rc = 1;
    int32_t *toks = NULL;
    int n_prompt = 0;
    speck_ctx *ctx = NULL;
    speck_sampler *smp = NULL;
    speck_detok *dt = NULL;
    float *logits = NULL;
    if (ids_arg) {
        n_prompt = cli_parse_ids(ids_arg, &toks);
        if (n_prompt <= 0) {
            fprintf(stderr, "speck generate: --ids: expected comma-separated token ids\n");
            rc = 2;
            goto done;
        }
    } else {
        if (!vocab) {
            fprintf(stderr, "speck generate: %s: cannot tokenize the prompt: %s (use --ids)\n",
                    path, speck_last_error());
            goto done;
        }
        size_t len = strlen(prompt);
        toks = malloc((len + 8) * sizeof *toks);
        int64_t n = speck_tokenize(vocab, prompt, len, true, false, toks, (int64_t)len + 8);
        if (n < 0) {
            cli_fail("generate");
            goto done;
        }
        n_prompt = (int)n;
    }
    if (n_prompt == 0) { // an empty prompt needs a first token: BOS, else EOS as a separator
        int32_t start = hp->bos_id >= 0 ? hp->bos_id : hp->eos_id >= 0 ? hp->eos_id : 0;
        toks[n_prompt++] = start;
    }
    ctx = speck_ctx_new(m, n_ctx);
    smp = speck_sampler_new(&sp, hp->n_vocab);
    logits = malloc((size_t)hp->n_vocab * sizeof(float));
    if (!ctx || !smp || !logits) {
        cli_fail("generate");
        goto done;
    }
    if (n_prompt > speck_ctx_n_ctx(ctx)) {
        fprintf(stderr, "speck generate: prompt of %d tokens does not fit the %d-token context\n",
                n_prompt, speck_ctx_n_ctx(ctx));
        goto done;
    }
    if (vocab) {
        dt = speck_detok_new(vocab);
        if (prompt) fputs(prompt, stdout);
    }
    for (int i = 0; i < n_prompt; i++) speck_sampler_accept(smp, toks[i]);
    double t0 = cli_now();
    int last = n_prompt - 1;
    if (speck_forward(ctx, n_prompt, toks, NULL, NULL, &last, 1, logits)) {
        cli_fail("generate");
        goto done;
    }
    double t1 = cli_now();
    int n_gen = 0;
    const char *why = "length";
    while (n_gen < n_predict) {
        int32_t tok = speck_sampler_sample(smp, logits);
        n_gen++;
        speck_sampler_accept(smp, tok);
        bool eog = vocab ? speck_vocab_is_eog(vocab, tok) : tok == hp->eos_id;
        if (eog && !ignore_eos) {
            why = "end of generation";
            break;
        }
        if (dt) {
            const char *s = speck_detok_push(dt, tok);
            if (s && stop_push(&sf, s)) {
                why = "stop string";
                break;
            }
        } else {
            printf("%s%d", n_gen > 1 ? " " : "", tok);
            fflush(stdout);
        }
        if (n_gen == n_predict) break;
        if (speck_ctx_n_past(ctx) >= speck_ctx_n_ctx(ctx)) {
            why = "context full";
            break;
        }
        if (speck_forward(ctx, 1, &tok, NULL, NULL, NULL, 0, logits)) {
            cli_fail("generate");
            goto done;
        }
    }
    if (dt && strcmp(why, "stop string")) {
        const char *rest = speck_detok_flush(dt);
        if (rest) stop_push(&sf, rest);
        fwrite(sf.pending, 1, sf.len, stdout);
    }
    printf("\n");
    double t2 = cli_now();
    if (stats)
        fprintf(stderr,
                "speck: prompt %d tokens in %.3f s (%.1f tok/s); generated %d tokens in %.3f s "
                "(%.1f tok/s); stopped: %s\n",
                n_prompt, t1 - t0, n_prompt / (t1 - t0), n_gen, t2 - t1,
                n_gen / (t2 - t1 > 0 ? t2 - t1 : 1e-9), why);
    rc = 0;
done:
    free(sf.pending);
    free(logits);
    free(toks);
    speck_detok_free(dt);
    speck_sampler_free(smp);
    speck_ctx_free(ctx);
    speck_vocab_free(vocab);
    speck_model_free(m);
    return rc;
}
