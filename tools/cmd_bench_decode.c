// `speck bench-decode`: plain decoding and every accelerated strategy on the same prompts in
// one run; checks greedy outputs are identical; tok/s, speedup, accepted length, passes/token;
// and the cost(n)/cost(1) verification curve that bounds what drafting can gain on this machine.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "cli.h"

typedef struct {
    char **text;
    char **category; // NULL where a prompt has none
    int n, n_read;   // prompts used (--max-prompts), read
} prompts;

static void prompts_free(prompts *p) { // and leaves it empty
    for (int k = 0; k < p->n_read; k++) free(p->text[k]), free(p->category[k]);
    free(p->text), free(p->category);
    p->text = p->category = NULL;
    p->n = p->n_read = 0;
}

// Prompts: a .jsonl file (one JSON string, or an object with "prompt" and optionally "category",
// per line), or plain text with prompts separated by lines holding only "---".
static int load_prompts(const char *path, prompts *p) {
    size_t sz;
    char *buf = cli_read_file(path, &sz);
    if (!buf) return SPECK_ERR_IO;
    p->text = p->category = NULL;
    p->n = 0;
    size_t plen = strlen(path);
    bool jsonl = plen > 6 && !strcmp(path + plen - 6, ".jsonl");
    char *save = NULL;
    if (jsonl) {
        int line = 0;
        for (char *l = strtok_r(buf, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
            line++;
            if (!*l) continue;
            cJSON *j = cJSON_Parse(l);
            cJSON *s = cJSON_IsString(j) ? j : cJSON_GetObjectItem(j, "prompt");
            cJSON *c = cJSON_IsObject(j) ? cJSON_GetObjectItem(j, "category") : NULL;
            if (!cJSON_IsString(s) || (c && !cJSON_IsString(c))) {
                cJSON_Delete(j);
                free(buf);
                p->n_read = p->n;
                prompts_free(p);
                return speck_set_error(SPECK_ERR_FORMAT,
                                       "%s: line %d: expected a JSON string or {\"prompt\": "
                                       "string, \"category\": string}",
                                       path, line);
            }
            p->text = realloc(p->text, (size_t)(p->n + 1) * sizeof *p->text);
            p->category = realloc(p->category, (size_t)(p->n + 1) * sizeof *p->category);
            p->category[p->n] = c ? strdup(c->valuestring) : NULL;
            p->text[p->n++] = strdup(s->valuestring);
            cJSON_Delete(j);
        }
    } else {
        char *start = buf;
        for (;;) {
            char *sep = strstr(start, "\n---\n");
            if (sep) *sep = 0;
            if (*start) {
                p->text = realloc(p->text, (size_t)(p->n + 1) * sizeof *p->text);
                p->category = realloc(p->category, (size_t)(p->n + 1) * sizeof *p->category);
                p->category[p->n] = NULL;
                p->text[p->n++] = strdup(start);
            }
            if (!sep) break;
            start = sep + 5;
        }
    }
    free(buf);
    p->n_read = p->n;
    if (!p->n) return speck_set_error(SPECK_ERR_FORMAT, "%s: no prompts", path);
    return 0;
}

typedef struct {
    int32_t *toks;
    int n, cap;
} tokbuf;

static bool collect(int32_t tok, void *u) {
    tokbuf *b = u;
    if (b->n == b->cap) {
        b->cap = b->cap ? b->cap * 2 : 256;
        b->toks = realloc(b->toks, (size_t)b->cap * sizeof *b->toks);
    }
    b->toks[b->n++] = tok;
    return true;
}

typedef struct {
    const char *name;
    const char *kinds;
    int width;
    float adaptive;
    bool auto_budget;
    bool head; // uses --accept-head (SpecDec++), with --accept-threshold over `adaptive`
} strategy;

// The strategies bench-decode compares, plain first (the baseline).
static const strategy k_strategies[] = {
    {"plain", "none", 1, 0, false, false},
    {"prompt", "prompt", 1, 0, false, false},
    {"prompt-tree", "prompt", 3, 0, false, false},
    {"aded", "aded", 1, 0, false, false},
    {"aded-tree", "aded", 3, 0, false, false},
    {"aded-adaptive", "aded", 3, 0.6f, false, false},
    {"jacobi", "jacobi", 2, 0, false, false},
    {"prompt+aded", "prompt,aded", 2, 0, false, false},
    {"prompt+aded-auto", "prompt,aded", 2, 0, true, false},
    {"model", "model", 1, 0, false, false},
    {"model-adaptive", "model", 1, 0.5f, false, false},
    {"model-auto", "model", 1, 0, true, false},
    {"model-specdecpp", "model", 1, 0.5f, false, true},
};
#define N_STRATEGIES ((int)(sizeof k_strategies / sizeof k_strategies[0]))

typedef struct {
    double tok_s, accept_per_pass, passes_per_tok, draft_share;
    double drafted_per_pass; // candidates verified per pass (accepted/drafted: their acceptance)
    int identical, total;
} result;

typedef struct {
    double t; // seconds of decoding, prefill left out
    long gen, passes, accepted;
    bool identical; // output equal to plain decoding's (greedy)
} prompt_stat;

// Prompt k's category; "(none)" where it has none.
static const char *category_of(const prompts *P, int k) {
    return P->category[k] ? P->category[k] : "(none)";
}

// --category: the table again for each prompt category (in the order the categories first
// appear; prompts without one form "(none)"), each strategy against plain decoding on the same
// prompts. With --json one object per line after the main one.
static void category_tables(const prompts *P, const strategy *S, int ns, prompt_stat *ps[2][16],
                            int n_modes, bool json) {
    const char *seen[64];
    int n_cat = 0;
    for (int k = 0; k < P->n && n_cat < 64; k++) {
        const char *c = category_of(P, k);
        bool known = false;
        for (int i = 0; i < n_cat; i++) known |= !strcmp(seen[i], c);
        if (!known) seen[n_cat++] = c;
    }
    for (int ci = 0; ci < n_cat; ci++) {
        int np = 0;
        for (int k = 0; k < P->n; k++) np += !strcmp(category_of(P, k), seen[ci]);
        if (json)
            printf("{\"category\": \"%s\", \"prompts\": %d, \"results\": [", seen[ci], np);
        else
            printf("\ncategory %s (%d prompts)\n\n| strategy | mode | tok/s | speedup | "
                   "accepted/pass | identical |\n| --- | --- | ---: | ---: | ---: | --- |\n",
                   seen[ci], np);
        bool first = true;
        for (int mode = 0; mode < n_modes; mode++) {
            double base = 0;
            for (int si = 0; si < ns; si++) {
                if (!ps[mode][si]) continue;
                double t = 0;
                long gen = 0, passes = 0, acc = 0;
                int same = 0;
                for (int k = 0; k < P->n; k++) {
                    if (strcmp(category_of(P, k), seen[ci])) continue;
                    const prompt_stat *q = &ps[mode][si][k];
                    t += q->t, gen += q->gen, passes += q->passes, acc += q->accepted;
                    same += q->identical;
                }
                double tok_s = t > 0 ? gen / t : 0, app = passes ? (double)acc / passes : 0;
                if (si == 0) base = tok_s;
                double speedup = base > 0 ? tok_s / base : 0;
                if (json) {
                    printf("%s{\"strategy\": \"%s\", \"sampling\": %s, \"tok_s\": %.3f, "
                           "\"speedup\": %.3f, \"accepted_per_pass\": %.3f, \"identical\": ",
                           first ? "" : ", ", S[si].name, mode ? "true" : "false", tok_s, speedup,
                           app);
                    if (mode)
                        printf("null}");
                    else
                        printf("%s}", same == np ? "true" : "false");
                    first = false;
                } else {
                    char ident[32] = "(sampling)";
                    if (!mode) snprintf(ident, sizeof ident, "%d/%d", same, np);
                    printf("| %s | %s | %.2f | %.2fx | %.2f | %s |\n", S[si].name,
                           mode ? "sample" : "greedy", tok_s, speedup, app, ident);
                }
            }
        }
        if (json) printf("]}\n");
    }
}

// Whether the comma-separated list holds name.
static bool list_has(const char *list, const char *name) {
    for (const char *q = list; *q;) {
        size_t len = strcspn(q, ",");
        if (strlen(name) == len && !strncmp(name, q, len)) return true;
        q += len + (q[len] == ',');
    }
    return false;
}

// Seconds of one verification pass of n[i] tokens (i < k) on top of a cached context of `past`
// tokens: a forward returning all n rows' logits, as the decoder's verification does. The sizes
// are timed round-robin (one untimed round first), so that the machine's drift falls on all of
// them alike, and each gets the median of its reps.
static void forward_costs(speck_ctx *c, const int *n, int k, int past, int reps, int n_vocab,
                          double *cost) {
    int32_t toks[64];
    float *lg = malloc((size_t)64 * n_vocab * sizeof(float));
    double *t = malloc((size_t)k * reps * sizeof(double));
    for (int i = 0; i < 64; i++) toks[i] = (i * 7 + 3) % n_vocab;
    for (int r = -1; r < reps; r++)
        for (int i = 0; i < k; i++) {
            speck_ctx_truncate(c, past);
            double t0 = cli_now();
            speck_forward(c, n[i], toks, NULL, NULL, NULL, 0, lg);
            if (r >= 0) t[(size_t)i * reps + r] = cli_now() - t0;
        }
    for (int i = 0; i < k; i++) cost[i] = cli_median(t + (size_t)i * reps, reps);
    free(lg), free(t);
}

static void help(void) {
    printf("usage: speck bench-decode -m MODEL --prompts FILE [--draft-model FILE] [options]\n\n"
           "Runs plain decoding and every accelerated strategy on the same prompts, checks that\n"
           "greedy outputs are identical to plain decoding, and prints tok/s, speedup, mean\n"
           "accepted tokens per verification pass and passes per token. Also measures the cost\n"
           "of verifying n = 1..64 tokens (one forward returning all n rows' logits) relative\n"
           "to n = 1.\n\n"
           "  --prompts FILE      .jsonl (strings or {\"prompt\": ...}) or text separated by ---\n"
           "  -n N                tokens per prompt (default 128)\n"
           "  --temp T            also run every strategy sampling at temperature T (default 0:\n"
           "                      greedy only)\n"
           "  --max-prompts K     use the first K prompts\n"
           "  --aded-warm FILE    warm ADED's statistics with this text\n"
           "  --json              machine-readable results\n"
           "  --plot FILE.png     speedup per strategy and the cost curve (gnuplot)\n"
           "  --kv-type T         KV cache values: f16 (default), f32, q8_0 or q4_0\n"
           "  --lora FILE[:SCALE] apply a LoRA adapter unmerged (repeatable)\n"
           "  -t N                threads\n"
           "  --strategies LIST   only these strategies (comma-separated names of the table;\n"
           "                      plain always runs, as the baseline)\n"
           "  --no-curve          skip the cost curve (minutes on a 1B model)\n"
           "  --draft-max K       longest draft and node budget of every strategy, 1..14\n"
           "                      (default 4)\n"
           "  --accept-head FILE  run model-specdecpp: model-adaptive with this SpecDec++ head\n"
           "                      (speck train-accept) predicting each draft token's acceptance\n"
           "  --accept-threshold H  its stopping threshold on P(some draft rejected) (default\n"
           "                      --adaptive's)\n"
           "  --adaptive P        the threshold of every adaptive strategy (aded-adaptive 0.6,\n"
           "                      model-adaptive and model-specdecpp 0.5 by default)\n"
           "  --category          also a table per prompt category (the \"category\" of each\n"
           "                      .jsonl object; bench/make_code_prompts.py --categories)\n"
           "  --fixed-budget      sampling: verify every strategy's drafts even where they do\n"
           "                      not pay (by default a sampling decoder falls back to plain\n"
           "                      steps on its own; docs/decoding.md)\n"
           "\nWith --scmoe (a mixture of experts), plain greedy decoding against SCMoE instead of\n"
           "the accelerated strategies: tok/s of each, the ratio, prompts whose output is\n"
           "unchanged (all of them when B = 0).\n" CLI_SCMOE_HELP);
}

// The prompts tokenized (exits on an empty one); ptoks[k][0] holds the count.
static int32_t **ptoks_of(const speck_vocab *vocab, const prompts *P) {
    int32_t **pt = calloc((size_t)P->n, sizeof *pt);
    for (int k = 0; k < P->n; k++) {
        const size_t len = strlen(P->text[k]);
        pt[k] = malloc((len + 9) * sizeof(int32_t));
        const int64_t n =
            speck_tokenize(vocab, P->text[k], len, true, false, pt[k] + 1, (int64_t)len + 8);
        if (n <= 0) {
            fprintf(stderr, "speck bench-decode: prompt %d: empty or untokenizable\n", k + 1);
            exit(1);
        }
        pt[k][0] = (int32_t)n;
    }
    return pt;
}

// --scmoe: plain greedy decoding and SCMoE on each prompt in turn (prompt-major, so the
// machine's drift falls on both alike).
static int scmoe_bench(speck_model *m, const speck_scmoe_params *p, int32_t **pt, int np,
                       int n_predict, bool json, const char *path) {
    int n_ctx = 0;
    for (int k = 0; k < np; k++)
        if (pt[k][0] + n_predict + 16 > n_ctx) n_ctx = pt[k][0] + n_predict + 16;
    speck_scmoe *s = speck_scmoe_new(m, n_ctx, cli_kv_type, p);
    if (!s) return cli_fail("bench-decode");
    speck_ctx *ctx = speck_ctx_new_kv(m, n_ctx, cli_kv_type);
    speck_spec_params none = speck_spec_default();
    speck_decoder *dec = ctx ? speck_decoder_new(m, ctx, &none) : NULL;
    if (!dec) return cli_fail("bench-decode");
    const speck_sampler_params greedy = speck_sampler_default();
    const int V = speck_model_hparams(m)->n_vocab;
    double t[2] = {0};
    long gen[2] = {0};
    int same = 0;
    for (int k = 0; k < np; k++) {
        tokbuf out[2] = {{0}};
        for (int w = 0; w < 2; w++) {
            speck_sampler *smp = speck_sampler_new(&greedy, V);
            speck_spec_stats st;
            const int rc = w ? speck_scmoe_generate(s, pt[k] + 1, pt[k][0], n_predict, smp, NULL,
                                                    collect, &out[w], &st)
                             : speck_decode(dec, pt[k] + 1, pt[k][0], n_predict, smp, NULL, collect,
                                            &out[w], &st);
            speck_sampler_free(smp);
            if (rc) return cli_fail("bench-decode");
            t[w] += st.t_total - st.t_prefill;
            gen[w] += st.n_generated;
        }
        same += out[0].n == out[1].n &&
                !memcmp(out[0].toks, out[1].toks, (size_t)out[0].n * sizeof(int32_t));
        free(out[0].toks), free(out[1].toks);
        free(pt[k]);
    }
    free(pt);
    const double r0 = gen[0] / t[0], r1 = gen[1] / t[1];
    if (json)
        printf("{\"model\": \"%s\", \"prompts\": %d, \"n_predict\": %d, \"threads\": %d, "
               "\"scmoe\": {\"beta\": %g, \"alpha\": %g, \"weak_rank\": %d}, "
               "\"plain_tok_s\": %.3f, \"scmoe_tok_s\": %.3f, \"ratio\": %.3f, "
               "\"unchanged\": %d}\n",
               path, np, n_predict, speck_get_threads(), (double)p->beta, (double)p->alpha,
               p->weak_rank, r0, r1, r1 / r0, same);
    else
        printf("\n%d prompts, %d tokens each, %d threads; SCMoE beta %g, alpha %g, weak rank %d\n\n"
               "| decoding | tok/s | vs plain | output unchanged |\n| --- | ---: | ---: | ---: |\n"
               "| plain greedy | %.2f | 1.00x | |\n| scmoe | %.2f | %.2fx | %d/%d |\n",
               np, n_predict, speck_get_threads(), (double)p->beta, (double)p->alpha, p->weak_rank,
               r0, r1, r1 / r0, same, np);
    speck_decoder_free(dec);
    speck_ctx_free(ctx);
    speck_scmoe_free(s);
    speck_model_free(m);
    return p->beta == 0.0f && same != np ? 1 : 0;
}

int cmd_bench_decode(int argc, char **argv) {
    const char *path = NULL, *ppath = NULL, *dpath = NULL, *plot = NULL, *warm = NULL;
    const char *only = NULL, *hpath = NULL;
    bool curve = true;
    int draft_max = 0;
    float threshold = 0, adaptive = 0;
    int n_predict = 128, max_prompts = 1 << 30;
    float temp = 0.0f;
    bool json = false, fixed = false, by_category = false;
    cli_scmoe sc = {0};
    for (int i = 1; i < argc; i++) {
        const char *v;
        if (cli_flag(argv[i], "--help", "-h")) {
            help();
            return 0;
        } else if (cli_opt(argc, argv, &i, "--model", "-m", &v))
            path = v;
        else if (cli_opt(argc, argv, &i, "--prompts", NULL, &v))
            ppath = v;
        else if (cli_opt(argc, argv, &i, "--draft-model", NULL, &v))
            dpath = v;
        else if (cli_opt(argc, argv, &i, "--n-predict", "-n", &v))
            n_predict = (int)cli_int("bench-decode", "-n", v, 1, 1 << 20);
        else if (cli_opt(argc, argv, &i, "--max-prompts", NULL, &v))
            max_prompts = (int)cli_int("bench-decode", "--max-prompts", v, 1, 1 << 30);
        else if (cli_opt(argc, argv, &i, "--temp", NULL, &v))
            temp = (float)cli_float("bench-decode", "--temp", v);
        else if (cli_opt(argc, argv, &i, "--aded-warm", NULL, &v))
            warm = v;
        else if (cli_opt(argc, argv, &i, "--plot", NULL, &v))
            plot = v;
        else if (cli_kv_opt("bench-decode", argc, argv, &i) ||
                 cli_lora_opt("bench-decode", argc, argv, &i) ||
                 cli_scmoe_opt("bench-decode", argc, argv, &i, &sc))
            ;
        else if (cli_opt(argc, argv, &i, "--threads", "-t", &v))
            speck_set_threads((int)cli_int("bench-decode", "-t", v, 1, 4096));
        else if (cli_flag(argv[i], "--json", NULL))
            json = true;
        else if (cli_opt(argc, argv, &i, "--strategies", NULL, &v))
            only = v;
        else if (cli_flag(argv[i], "--no-curve", NULL))
            curve = false;
        else if (cli_opt(argc, argv, &i, "--draft-max", NULL, &v))
            draft_max = (int)cli_int("bench-decode", "--draft-max", v, 1, 14);
        else if (cli_opt(argc, argv, &i, "--adaptive", NULL, &v))
            adaptive = (float)cli_float("bench-decode", "--adaptive", v);
        else if (cli_opt(argc, argv, &i, "--accept-head", NULL, &v))
            hpath = v;
        else if (cli_opt(argc, argv, &i, "--accept-threshold", NULL, &v))
            threshold = (float)cli_float("bench-decode", "--accept-threshold", v);
        else if (cli_flag(argv[i], "--fixed-budget", NULL))
            fixed = true;
        else if (cli_flag(argv[i], "--category", NULL))
            by_category = true;
        else {
            fprintf(stderr, "speck bench-decode: unknown option '%s'\n", argv[i]);
            return 2;
        }
    }
    for (const char *q = only; q && *q;) { // every name must be a strategy
        size_t len = strcspn(q, ",");
        bool known = false;
        for (int si = 0; si < N_STRATEGIES; si++)
            known |=
                strlen(k_strategies[si].name) == len && !strncmp(k_strategies[si].name, q, len);
        if (!known) {
            fprintf(stderr, "speck bench-decode: --strategies: unknown strategy '%.*s'\n", (int)len,
                    q);
            return 2;
        }
        q += len + (q[len] == ',');
    }
    if (!(path = cli_model_path("bench-decode", path))) return 2;
    if (!ppath) {
        fprintf(stderr, "speck bench-decode: need --prompts FILE\n");
        return 2;
    }
    if (plot && system("command -v gnuplot >/dev/null 2>&1") != 0) {
        fprintf(stderr, "speck bench-decode: --plot needs gnuplot (apt-get install gnuplot-nox)\n");
        return 2;
    }
    prompts P = {0};
    speck_model *m = NULL, *dm = NULL;
    speck_accept_head *head = NULL;
    speck_vocab *vocab = NULL;
    if (load_prompts(ppath, &P) || !(m = cli_load_model(path)) ||
        (dpath && !(dm = speck_model_load(dpath))) ||
        (hpath && !(head = speck_accept_head_load(hpath))) ||
        !(vocab = speck_vocab_from_gguf(speck_model_gguf(m)))) {
        const int rc = cli_fail("bench-decode");
        speck_vocab_free(vocab);
        speck_accept_head_free(head);
        speck_model_free(dm);
        speck_model_free(m);
        prompts_free(&P);
        return rc;
    }
    if (P.n > max_prompts) P.n = max_prompts;
    int V = speck_model_hparams(m)->n_vocab;
    int32_t *warm_toks = NULL;
    int64_t n_warm = 0;
    if (warm) {
        size_t got;
        char *text = cli_read_file(warm, &got);
        if (!text) return cli_fail("bench-decode");
        warm_toks = malloc((got + 8) * sizeof *warm_toks);
        n_warm = speck_tokenize(vocab, text, got, false, false, warm_toks, (int64_t)got + 8);
        free(text);
        if (n_warm < 0) return cli_fail("bench-decode");
    }
    const strategy *S = k_strategies;
    const int ns = N_STRATEGIES;
    if (sc.on) return scmoe_bench(m, &sc.p, ptoks_of(vocab, &P), P.n, n_predict, json, path);
    bool skip[16] = {0};
    if (only)
        for (int si = 1; si < ns; si++) skip[si] = !list_has(only, S[si].name);
    int n_modes = temp > 0 ? 2 : 1;
    result R[2][16];
    memset(R, 0, sizeof R);
    // Tokenize prompts once.
    int32_t **ptoks = calloc((size_t)P.n, sizeof *ptoks);
    int *plen = calloc((size_t)P.n, sizeof *plen);
    for (int k = 0; k < P.n; k++) {
        size_t len = strlen(P.text[k]);
        ptoks[k] = malloc((len + 8) * sizeof(int32_t));
        plen[k] =
            (int)speck_tokenize(vocab, P.text[k], len, true, false, ptoks[k], (int64_t)len + 8);
        if (plen[k] <= 0) {
            fprintf(stderr, "speck bench-decode: prompt %d: empty or untokenizable\n", k + 1);
            return 1;
        }
    }
    int n_ctx = 0;
    for (int k = 0; k < P.n; k++)
        if (plen[k] + n_predict + 16 > n_ctx) n_ctx = plen[k] + n_predict + 16;
    speck_ctx *ctx = speck_ctx_new_kv(m, n_ctx, cli_kv_type);
    if (!ctx) return cli_fail("bench-decode");
    tokbuf *plain_out = calloc((size_t)P.n, sizeof *plain_out);
    // Each prompt's own figures, for the per-category tables.
    prompt_stat *ps[2][16] = {{0}};
    // Prompt-major: every strategy runs on prompt k before any runs on prompt k + 1, so the
    // machine's drift (this project's VM swings by tens of percent within minutes) falls on all
    // strategies alike instead of on whichever ran during a slow minute.
    for (int mode = 0; mode < n_modes; mode++) {
        speck_decoder *dec[16] = {0};
        double t[16] = {0}, draft[16] = {0};
        long gen[16] = {0}, passes[16] = {0}, acc[16] = {0}, drafted[16] = {0};
        for (int si = 0; si < ns; si++) {
            speck_spec_params sp = speck_spec_default();
            speck_spec_parse_kinds(S[si].kinds, sp.kinds);
            if ((sp.kinds[0] == SPECK_DRAFT_MODEL && !dm) || (S[si].head && !head) || skip[si])
                continue;
            sp.draft_model = dm;
            sp.tree_width = S[si].width;
            sp.adaptive = S[si].head && threshold > 0          ? threshold
                          : S[si].adaptive > 0 && adaptive > 0 ? adaptive
                                                               : S[si].adaptive;
            sp.accept_head = S[si].head ? head : NULL;
            if (draft_max) sp.max_draft = sp.max_nodes = draft_max;
            sp.auto_budget = S[si].auto_budget;
            sp.fixed_budget = fixed;
            sp.warm_tokens = warm_toks;
            sp.n_warm = n_warm;
            dec[si] = speck_decoder_new(m, ctx, &sp);
            if (!dec[si]) return cli_fail("bench-decode");
        }
        speck_sampler_params smp = speck_sampler_default();
        smp.temperature = mode ? temp : 0.0f;
        for (int k = 0; k < P.n; k++)
            for (int si = 0; si < ns; si++) {
                if (!dec[si]) continue;
                result *r = &R[mode][si];
                smp.seed = 1000 + (uint64_t)k;
                speck_sampler *s = speck_sampler_new(&smp, V);
                tokbuf out = {0};
                speck_spec_stats st;
                if (speck_decode(dec[si], ptoks[k], plen[k], n_predict, s, NULL, collect, &out,
                                 &st))
                    return cli_fail("bench-decode");
                speck_sampler_free(s);
                if (!ps[mode][si]) ps[mode][si] = calloc((size_t)P.n, sizeof(prompt_stat));
                ps[mode][si][k] = (prompt_stat){st.t_total - st.t_prefill, st.n_generated,
                                                st.n_passes, st.n_accepted, true};
                t[si] += st.t_total - st.t_prefill;
                draft[si] += st.t_draft;
                gen[si] += st.n_generated;
                passes[si] += st.n_passes;
                acc[si] += st.n_accepted;
                drafted[si] += st.n_drafted;
                if (mode == 0 && si == 0) {
                    plain_out[k] = out;
                } else {
                    bool same = out.n == plain_out[k].n && !memcmp(out.toks, plain_out[k].toks,
                                                                   (size_t)out.n * sizeof(int32_t));
                    ps[mode][si][k].identical = same;
                    if (mode == 0) r->identical += same;
                    free(out.toks);
                }
                r->total++;
            }
        for (int si = 0; si < ns; si++) {
            if (!dec[si]) continue;
            result *r = &R[mode][si];
            if (mode == 0 && si == 0) r->identical = r->total;
            r->tok_s = gen[si] / t[si];
            r->accept_per_pass = passes[si] ? (double)acc[si] / passes[si] : 0;
            r->drafted_per_pass = passes[si] ? (double)drafted[si] / passes[si] : 0;
            r->passes_per_tok = gen[si] ? (double)passes[si] / gen[si] : 0;
            r->draft_share = t[si] > 0 ? draft[si] / t[si] : 0;
            speck_decoder_free(dec[si]);
            if (!json)
                fprintf(stderr, "  %s %-15s %8.2f tok/s\n", mode ? "sample" : "greedy", S[si].name,
                        r->tok_s);
        }
    }
    // cost(n) / cost(1) at a 128-token context.
    int cn[] = {1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64};
    int ncn = sizeof cn / sizeof cn[0];
    double cost[16];
    speck_ctx *cc = speck_ctx_new_kv(m, 256, cli_kv_type);
    {
        int32_t pre[128];
        for (int i = 0; i < 128; i++) pre[i] = (i * 13 + 1) % V;
        int last = 127;
        float *lg = malloc((size_t)V * sizeof(float));
        speck_forward(cc, 128, pre, NULL, NULL, &last, 1, lg);
        free(lg);
    }
    // Sizes up to 16 (the decoder's verification passes) round-robin; each larger one on its
    // own: passes on the prefill path evict the cached weights, and the pass timed right after
    // one of them reads them from memory again (a steady decode never sees that).
    int nsmall = 0;
    while (nsmall < ncn && cn[nsmall] <= 16) nsmall++;
    if (!curve) ncn = 1, nsmall = 1;
    forward_costs(cc, cn, nsmall, 128, curve ? 9 : 1, V, cost);
    for (int i = nsmall; i < ncn; i++) forward_costs(cc, cn + i, 1, 128, 9, V, cost + i);
    speck_ctx_free(cc);

    // What perfect drafts would gain: a pass over n tokens (the last one plus n - 1 drafts) then
    // yields n tokens, so the best chain is worth max n / cost(n) passes of one token. No
    // drafter beats this on this model and machine, whatever its acceptance.
    int bi = 0;
    for (int i = 1; i < ncn; i++)
        if (cn[i] / cost[i] > cn[bi] / cost[bi]) bi = i;
    const double ceiling = cn[bi] * cost[0] / cost[bi];
    double base = R[0][0].tok_s;
    bool all_identical = true;
    if (json) {
        printf("{\"model\": \"%s\", \"prompts\": %d, \"n_predict\": %d, \"threads\": %d, "
               "\"results\": [",
               path, P.n, n_predict, speck_get_threads());
        int first = 1;
        for (int mode = 0; mode < n_modes; mode++)
            for (int si = 0; si < ns; si++) {
                result *r = &R[mode][si];
                if (!r->total) continue;
                printf(
                    "%s{\"strategy\": \"%s\", \"temperature\": %g, \"tok_s\": %.3f, "
                    "\"speedup\": %.3f, \"accepted_per_pass\": %.3f, \"passes_per_token\": "
                    "%.3f, \"drafted_per_pass\": %.3f, \"draft_share\": %.3f, \"identical\": %s}",
                    first ? "" : ", ", S[si].name, mode ? temp : 0.0, r->tok_s,
                    r->tok_s / (mode ? R[1][0].tok_s : base), r->accept_per_pass, r->passes_per_tok,
                    r->drafted_per_pass, r->draft_share,
                    mode ? "null" : (r->identical == r->total ? "true" : "false"));
                first = 0;
            }
        printf("], \"cost_curve\": [");
        for (int i = 0; curve && i < ncn; i++)
            printf("%s{\"n\": %d, \"relative_cost\": %.3f}", i ? ", " : "", cn[i],
                   cost[i] / cost[0]);
        if (curve)
            printf("], \"perfect_draft_ceiling\": {\"speedup\": %.3f, \"n\": %d}}\n", ceiling,
                   cn[bi]);
        else
            printf("], \"perfect_draft_ceiling\": null}\n");
    } else {
        printf("\n%d prompts, %d tokens each, %d threads\n\n", P.n, n_predict, speck_get_threads());
        printf("| strategy | mode | tok/s | speedup | accepted/pass | passes/token | draft time | "
               "identical | drafted/pass |\n"
               "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |\n");
        for (int mode = 0; mode < n_modes; mode++)
            for (int si = 0; si < ns; si++) {
                result *r = &R[mode][si];
                if (!r->total) continue;
                char ident[32];
                if (mode)
                    snprintf(ident, sizeof ident, "(sampling)");
                else
                    snprintf(ident, sizeof ident, "%d/%d", r->identical, r->total);
                printf("| %s | %s | %.2f | %.2fx | %.2f | %.3f | %.1f %% | %s | %.2f |\n",
                       S[si].name, mode ? "sample" : "greedy", r->tok_s,
                       r->tok_s / (mode ? R[1][0].tok_s : base), r->accept_per_pass,
                       r->passes_per_tok, 100 * r->draft_share, ident, r->drafted_per_pass);
            }
        if (curve)
            printf("\ncost of verifying n tokens (one forward, all n rows' logits) relative to "
                   "n = 1 (context 128):\n\n| n |");
        for (int i = 0; curve && i < ncn; i++) printf(" %d |", cn[i]);
        if (curve) {
            printf("\n| --- |");
            for (int i = 0; i < ncn; i++) printf(" ---: |");
            printf("\n| cost(n)/cost(1) |");
            for (int i = 0; i < ncn; i++) printf(" %.2f |", cost[i] / cost[0]);
            printf("\n\nceiling: perfect drafts (every candidate accepted) would decode %.2fx as "
                   "fast as plain decoding, verifying %d tokens per pass (n / cost(n) at its "
                   "best)\n",
                   ceiling, cn[bi]);
        }
    }
    if (by_category) category_tables(&P, S, ns, ps, n_modes, json);
    for (int mode = 0; mode < 2; mode++)
        for (int si = 0; si < ns; si++) free(ps[mode][si]);
    for (int si = 1; si < ns; si++)
        if (R[0][si].total && R[0][si].identical != R[0][si].total) all_identical = false;
    if (plot) {
        char dat[] = "/tmp/speck-plot-XXXXXX";
        int fd = mkstemp(dat);
        FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
        if (f) {
            fprintf(f, "# strategy speedup\n");
            for (int si = 0; si < ns; si++)
                if (R[0][si].total) fprintf(f, "\"%s\" %.3f\n", S[si].name, R[0][si].tok_s / base);
            fprintf(f, "\n\n# n relative_cost\n");
            for (int i = 0; i < ncn; i++) fprintf(f, "%d %.3f\n", cn[i], cost[i] / cost[0]);
            fclose(f);
            char cmd[2048];
            snprintf(cmd, sizeof cmd,
                     "gnuplot -e \"set terminal png size 1100,420; set output '%s'; "
                     "set multiplot layout 1,2; set title 'greedy speedup over plain decoding'; "
                     "set style fill solid 0.6; set boxwidth 0.7; set xtics rotate by -35; "
                     "set yrange [0:*]; plot '%s' index 0 using 2:xtic(1) with boxes notitle; "
                     "set title 'cost(n)/cost(1) of verifying n tokens'; set xtics norotate; "
                     "set xlabel 'n'; plot '%s' index 1 using 1:2 with linespoints notitle; "
                     "unset multiplot\"",
                     plot, dat, dat);
            if (system(cmd) != 0) fprintf(stderr, "speck bench-decode: gnuplot failed\n");
            unlink(dat);
        }
    }
    for (int k = 0; k < P.n; k++) {
        free(ptoks[k]);
        free(plain_out[k].toks);
    }
    prompts_free(&P);
    free(ptoks);
    free(plen);
    free(plain_out);
    free(warm_toks);
    speck_ctx_free(ctx);
    speck_vocab_free(vocab);
    speck_model_free(dm);
    speck_accept_head_free(head);
    speck_model_free(m);
    if (!all_identical) {
        fprintf(stderr, "speck bench-decode: a strategy's greedy output differs from plain "
                        "decoding\n");
        return 1;
    }
    return 0;
}
