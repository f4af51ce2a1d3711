// `speck generate`: prompt -> streamed completion, plain or with lossless accelerated decoding.
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
    bool quiet; // collect only (the plain run of --compare)
    char *all;  // everything emitted, for --compare
    size_t all_len, all_cap;
} stop_filter;

static void emit(stop_filter *f, const char *s, size_t n) {
    if (!f->quiet) fwrite(s, 1, n, stdout);
    if (f->all_len + n + 1 > f->all_cap) {
        f->all_cap = (f->all_len + n + 1) * 2;
        f->all = realloc(f->all, f->all_cap);
    }
    memcpy(f->all + f->all_len, s, n);
    f->all_len += n;
    f->all[f->all_len] = 0;
}

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
            emit(f, f->pending, (size_t)(hit - f->pending));
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
    emit(f, f->pending, f->len - keep);
    memmove(f->pending, f->pending + f->len - keep, keep);
    f->len = keep;
    if (!f->quiet) fflush(stdout);
    return false;
}

typedef struct {
    stop_filter *sf;
    speck_detok *dt;
    const speck_vocab *vocab;
    int32_t eos;
    bool ignore_eos, stopped;
    int n;
} gen_state;

static bool on_token(int32_t tok, void *u) {
    gen_state *g = u;
    g->n++;
    bool eog = g->vocab ? speck_vocab_is_eog(g->vocab, tok) : tok == g->eos;
    if (eog && !g->ignore_eos) return true; // eog() below ends generation; nothing printed
    if (g->dt) {
        const char *s = speck_detok_push(g->dt, tok);
        if (s && stop_push(g->sf, s)) {
            g->stopped = true;
            return false;
        }
    } else {
        char buf[16];
        int n = snprintf(buf, sizeof buf, "%s%d", g->n > 1 ? " " : "", tok);
        emit(g->sf, buf, (size_t)n);
        if (!g->sf->quiet) fflush(stdout);
    }
    return true;
}

static bool is_eog(int32_t tok, void *u) {
    gen_state *g = u;
    if (g->ignore_eos) return false;
    return g->vocab ? speck_vocab_is_eog(g->vocab, tok) : tok == g->eos;
}

static void help(void) {
    printf("usage: speck generate [-m MODEL.gguf|HF_DIR] [-p PROMPT | --ids 1,2,3] [options]\n\n"
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
           "  --kv-type T            KV cache values: f16 (default), f32 (twice the memory),\n"
           "                         q8_0 or q4_0 (0.53x / 0.28x f16's; also -ctk/-ctv T)\n"
           "  --lora FILE[:SCALE]    apply a LoRA adapter unmerged (repeatable; docs/adaptation.md)\n"
           "  -t, --threads N        threads (default: all cores)\n"
           "  --hugepages            read the weights into transparent huge pages instead of\n"
           "                         mapping the file (faster decoding of large models)\n"
           "  --no-stats             do not print statistics to stderr\n" CLI_GRAMMAR_HELP
           CLI_SCMOE_HELP "\n"
           "accelerated decoding (same output as plain decoding; docs/decoding.md):\n"
           "  --draft LIST           prompt | aded | jacobi | model:FILE, or a comma list tried\n"
           "                         in order, e.g. prompt,aded\n"
           "  --draft-max K          longest draft (default 4; a longer one raises the node\n"
           "                         budget unless --draft-nodes N is given)\n"
           "  --draft-nodes N|auto   most candidates verified per pass, 1..14 (default 4);\n"
           "                         auto: chosen each pass from this machine's measured\n"
           "                         verification cost and the observed acceptance rate\n"
           "  --fixed-budget         sampling: verify the drafts even where they do not pay\n"
           "                         (by default sampling falls back to plain steps then)\n"
           "  --tree-width W         alternative branches per step (default 1 = chain)\n"
           "  --adaptive P           stop a draft once P(some token rejected) > P (SpecDec++)\n"
           "  --accept-head FILE     draft model: predict each token's acceptance with a head\n"
           "                         from `speck train-accept` (SpecDec++; --adaptive default 0.5)\n"
           "  --aded-warm FILE       warm ADED's tri-gram statistics with a text file\n"
           "  --compare              also run plain decoding first and print the speedup\n");
}

typedef struct {
    speck_spec_params sp;
    speck_model *draft;
    int32_t *warm;
    const char *head_path; // --accept-head
    speck_accept_head *head;
} draft_setup;

// Parse --draft's value into spec params (loading a draft model for model:FILE).
static int setup_draft(const char *arg, const char *warm_file, const speck_vocab *vocab,
                       draft_setup *ds) {
    char list[256];
    snprintf(list, sizeof list, "%s", arg);
    // "model:PATH" may be anywhere in the list: cut the path out, keep the kind.
    const char *mp = strstr(arg, "model:");
    char path[1024] = {0};
    if (mp) {
        mp += 6;
        size_t len = strcspn(mp, ",");
        snprintf(path, sizeof path, "%.*s", (int)len, mp);
        // rebuild list with "model" in place of "model:PATH"
        snprintf(list, sizeof list, "%.*smodel%s", (int)(mp - 6 - arg), arg, mp + len);
    }
    if (speck_spec_parse_kinds(list, ds->sp.kinds) < 0) return -1;
    for (int i = 0; i < 4; i++)
        if (ds->sp.kinds[i] == SPECK_DRAFT_MODEL) {
            if (!path[0]) {
                speck_set_error(SPECK_ERR_ARG, "--draft model needs a file: model:FILE.gguf");
                return -1;
            }
            ds->draft = speck_model_load(path);
            if (!ds->draft) return -1;
            ds->sp.draft_model = ds->draft;
        }
    if (ds->head_path) {
        if (!ds->draft) {
            speck_set_error(SPECK_ERR_ARG, "--accept-head needs a draft model (--draft model:FILE)");
            return -1;
        }
        if (!(ds->head = speck_accept_head_load(ds->head_path))) return -1;
        ds->sp.accept_head = ds->head;
        if (ds->sp.adaptive <= 0) ds->sp.adaptive = 0.5f;
    }
    if (warm_file) {
        if (!vocab) {
            speck_set_error(SPECK_ERR_ARG, "--aded-warm needs a model with a tokenizer");
            return -1;
        }
        size_t got;
        char *text = cli_read_file(warm_file, &got);
        if (!text) return -1;
        ds->warm = malloc((got + 8) * sizeof(int32_t));
        int64_t n = ds->warm
                        ? speck_tokenize(vocab, text, got, false, false, ds->warm, (int64_t)got + 8)
                        : -1;
        free(text);
        if (n < 0) return -1;
        ds->sp.warm_tokens = ds->warm;
        ds->sp.n_warm = n;
    }
    return 0;
}

static void print_stats(const char *label, const speck_spec_stats *st) {
    double gen_t = st->t_total - st->t_prefill;
    fprintf(stderr,
            "speck %s: prompt %d tokens in %.3f s; generated %d tokens in %.3f s (%.2f tok/s); "
            "%d passes (%.2f per token), %.2f tokens accepted per pass, draft time %.1f %%; "
            "stopped: %s\n",
            label, st->n_prompt, st->t_prefill, st->n_generated, gen_t,
            st->n_generated / (gen_t > 0 ? gen_t : 1e-9), st->n_passes,
            st->n_generated ? (double)st->n_passes / st->n_generated : 0.0,
            st->n_passes ? (double)st->n_accepted / st->n_passes : 0.0,
            gen_t > 0 ? 100.0 * st->t_draft / gen_t : 0.0, st->stop_reason);
}

// --scmoe: the prompt's completion by self-contrast decoding (speck_scmoe_generate).
static int scmoe_run(const speck_model *m, const speck_scmoe_params *p, int n_ctx,
                     const int32_t *toks, int n_prompt, int n_predict,
                     const speck_sampler_params *sp, const char *prompt, gen_state *gs,
                     bool stats) {
    speck_scmoe *s = speck_scmoe_new(m, n_ctx, cli_kv_type, p);
    if (!s) return cli_fail("generate");
    speck_sampler *smp = speck_sampler_new(sp, speck_model_hparams(m)->n_vocab);
    gs->dt = gs->vocab ? speck_detok_new(gs->vocab) : NULL;
    speck_spec_stats st;
    if (prompt) fputs(prompt, stdout);
    int rc = !smp || speck_scmoe_generate(s, toks, n_prompt, n_predict, smp, is_eog, on_token,
                                          gs, &st);
    if (!rc) {
        stop_filter *sf = gs->sf;
        if (gs->dt && !gs->stopped) {
            const char *rest = speck_detok_flush(gs->dt);
            if (rest) stop_push(sf, rest);
        }
        if (!gs->stopped) emit(sf, sf->pending, sf->len);
        printf("\n");
        fflush(stdout);
        if (gs->stopped) st.stop_reason = "stop string";
        if (stats) {
            const double gen_t = st.t_total - st.t_prefill;
            fprintf(stderr,
                    "speck scmoe (beta %g, alpha %g, weak rank %d): prompt %d tokens in %.3f s; "
                    "generated %d tokens in %.3f s (%.2f tok/s); stopped: %s\n",
                    (double)p->beta, (double)p->alpha, p->weak_rank, st.n_prompt, st.t_prefill,
                    st.n_generated, gen_t, st.n_generated / (gen_t > 0 ? gen_t : 1e-9),
                    st.stop_reason);
        }
    } else
        cli_fail("generate");
    speck_sampler_free(smp);
    speck_scmoe_free(s);
    return rc ? 1 : 0;
}

int cmd_generate(int argc, char **argv) {
    const char *path = NULL, *prompt = NULL, *ids_arg = NULL, *draft_arg = NULL, *warm = NULL;
    int n_predict = 128, n_ctx = 0;
    bool stats = true, ignore_eos = false, compare = false;
    bool draft_max_set = false, nodes_set = false; // given on the command line
    speck_sampler_params sp = speck_sampler_default();
    draft_setup ds = {.sp = speck_spec_default()};
    stop_filter sf = {0};
    cli_grammar_src gsrc = {0};
    cli_scmoe sc = {0};
    for (int i = 1; i < argc; i++) {
        const char *v;
        if (cli_flag(argv[i], "--help", "-h")) {
            help();
            return 0;
        } else if (cli_opt(argc, argv, &i, "--model", "-m", &v))
            path = v;
        else if (cli_opt(argc, argv, &i, "--prompt", "-p", &v))
            prompt = v;
        else if (cli_opt(argc, argv, &i, "--ids", NULL, &v))
            ids_arg = v;
        else if (cli_opt(argc, argv, &i, "--n-predict", "-n", &v))
            n_predict = (int)cli_int("generate", "-n", v, 0, 1 << 20);
        else if (cli_opt(argc, argv, &i, "--ctx", "-c", &v))
            n_ctx = (int)cli_int("generate", "--ctx", v, 1, 1 << 24);
        else if (cli_sampler_opt("generate", argc, argv, &i, &sp) ||
                 cli_grammar_opt("generate", argc, argv, &i, &gsrc) ||
                 cli_scmoe_opt("generate", argc, argv, &i, &sc))
            continue;
        else if (cli_opt(argc, argv, &i, "--stop", NULL, &v)) {
            if (sf.n_stops == MAX_STOPS || !*v) {
                fprintf(stderr, "speck generate: --stop: at most %d non-empty strings\n",
                        MAX_STOPS);
                return 2;
            }
            sf.stops[sf.n_stops++] = v;
        } else if (cli_opt(argc, argv, &i, "--draft", NULL, &v))
            draft_arg = v;
        else if (cli_opt(argc, argv, &i, "--draft-max", NULL, &v)) {
            ds.sp.max_draft = (int)cli_int("generate", "--draft-max", v, 1, 64);
            draft_max_set = true;
        } else if (cli_opt(argc, argv, &i, "--draft-nodes", NULL, &v)) {
            if (!strcmp(v, "auto"))
                ds.sp.auto_budget = true;
            else {
                ds.sp.max_nodes = (int)cli_int("generate", "--draft-nodes", v, 1, 14);
                nodes_set = true;
            }
        } else if (cli_opt(argc, argv, &i, "--tree-width", NULL, &v))
            ds.sp.tree_width = (int)cli_int("generate", "--tree-width", v, 1, 8);
        else if (cli_opt(argc, argv, &i, "--adaptive", NULL, &v))
            ds.sp.adaptive = (float)cli_float("generate", "--adaptive", v);
        else if (cli_opt(argc, argv, &i, "--aded-warm", NULL, &v))
            warm = v;
        else if (cli_opt(argc, argv, &i, "--accept-head", NULL, &v))
            ds.head_path = v;
        else if (cli_flag(argv[i], "--compare", NULL))
            compare = true;
        else if (cli_flag(argv[i], "--fixed-budget", NULL))
            ds.sp.fixed_budget = true;
        else if (cli_flag(argv[i], "--no-stats", NULL))
            stats = false;
        else if (cli_flag(argv[i], "--ignore-eos", NULL))
            ignore_eos = true;
        else {
            fprintf(stderr, "speck generate: unknown option '%s' (speck generate --help)\n",
                    argv[i]);
            return 2;
        }
    }
    // A longer --draft-max than the node budget would be cut to the budget: without an explicit
    // --draft-nodes the budget follows it (the decoder caps it at the verifier's limit).
    if (draft_max_set && !nodes_set && ds.sp.max_draft > ds.sp.max_nodes)
        ds.sp.max_nodes = ds.sp.max_draft;
    if (ds.head_path && !draft_arg) {
        fprintf(stderr, "speck generate: --accept-head needs --draft model:FILE\n");
        return 2;
    }
    if (sc.on && (draft_arg || compare || gsrc.file || gsrc.text || gsrc.schema || gsrc.json)) {
        fprintf(stderr, "speck generate: --scmoe does not combine with --draft, --compare or a "
                        "grammar\n");
        return 2;
    }
    if (!(path = cli_model_path("generate", path))) return 2;
    if (!prompt && !ids_arg) prompt = "";
    speck_model *m = cli_load_model(path);
    if (!m) return cli_fail("generate");
    const speck_hparams *hp = speck_model_hparams(m);
    speck_vocab *vocab = speck_vocab_from_gguf(speck_model_gguf(m));
    int rc = 1;
    int32_t *toks = NULL;
    int n_prompt = 0;
    speck_ctx *ctx = NULL;
    speck_sampler *smp = NULL;
    speck_decoder *dec = NULL;
    speck_grammar *grammar = NULL;
    speck_token_trie *trie = NULL;
    speck_gmatch *gm = NULL;
    gen_state gs = {.sf = &sf, .vocab = vocab, .eos = hp->eos_id, .ignore_eos = ignore_eos};
    if (ids_arg) {
        n_prompt = cli_parse_ids(ids_arg, &toks);
        if (n_prompt <= 0) {
            fprintf(stderr, "speck generate: --ids: expected comma-separated token ids\n");
            rc = 2;
            goto done;
        }
        for (int i = 0; i < n_prompt; i++)
            if (toks[i] >= hp->n_vocab) {
                fprintf(stderr, "speck generate: --ids: token id %d out of range [0, %d)\n",
                        toks[i], hp->n_vocab);
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
        toks[n_prompt++] = hp->bos_id >= 0 ? hp->bos_id : hp->eos_id >= 0 ? hp->eos_id : 0;
    }
    bool gerr;
    if ((grammar = cli_grammar_load(&gsrc, &gerr)) && !(trie = vocab ? speck_token_trie_new(vocab)
                                                                    : NULL)) {
        fprintf(stderr, "speck generate: %s: a grammar needs the model's vocabulary\n", path);
        goto done;
    }
    if (gerr) {
        cli_fail("generate");
        goto done;
    }
    if (draft_arg && setup_draft(draft_arg, warm, vocab, &ds)) {
        cli_fail("generate");
        goto done;
    }
    if (sc.on) {
        rc = scmoe_run(m, &sc.p, n_ctx, toks, n_prompt, n_predict, &sp, prompt, &gs, stats);
        goto done;
    }
    ctx = speck_ctx_new_kv(m, n_ctx, cli_kv_type);
    if (!ctx) {
        cli_fail("generate");
        goto done;
    }
    if (n_prompt > speck_ctx_n_ctx(ctx)) {
        fprintf(stderr, "speck generate: prompt of %d tokens does not fit the %d-token context\n",
                n_prompt, speck_ctx_n_ctx(ctx));
        goto done;
    }
    speck_spec_stats plain_st = {0}, st = {0};
    char *plain_text = NULL;
    // Plain decoding first, collected silently, to measure the speedup. It runs twice and the
    // first run is not timed: a cold first run (thread start-up, first touch of the scratch and
    // the weight panels, the thread balancer's first estimates) took ~4x as long as a warm one
    // on the default model and made the accelerated run, which came second, look that much
    // faster.
    for (int run = 0; compare && run < 2; run++) {
        speck_spec_params none = speck_spec_default();
        speck_decoder *pd = speck_decoder_new(m, ctx, &none);
        smp = speck_sampler_new(&sp, hp->n_vocab);
        sf.quiet = true;
        gs.dt = vocab ? speck_detok_new(vocab) : NULL;
        speck_gmatch *pgm = grammar ? speck_gmatch_new(grammar, trie) : NULL;
        if (pd) speck_decoder_set_grammar(pd, pgm);
        if (!pd || !smp || (grammar && !pgm) ||
            speck_decode(pd, toks, n_prompt, n_predict, smp, is_eog, on_token, &gs, &plain_st)) {
            speck_decoder_free(pd);
            speck_gmatch_free(pgm);
            cli_fail("generate");
            goto done;
        }
        speck_decoder_free(pd);
        speck_gmatch_free(pgm);
        if (gs.dt && !gs.stopped) stop_push(&sf, speck_detok_flush(gs.dt));
        free(plain_text);
        plain_text = sf.all ? strdup(sf.all) : strdup("");
        speck_detok_free(gs.dt);
        speck_sampler_free(smp);
        smp = NULL;
        sf.quiet = false;
        sf.len = sf.all_len = 0;
        gs.n = 0;
        gs.stopped = false;
    }
    dec = speck_decoder_new(m, ctx, &ds.sp);
    smp = speck_sampler_new(&sp, hp->n_vocab);
    if (grammar && dec && (gm = speck_gmatch_new(grammar, trie))) speck_decoder_set_grammar(dec, gm);
    if (!dec || !smp || (grammar && !gm)) {
        cli_fail("generate");
        free(plain_text);
        goto done;
    }
    gs.dt = vocab ? speck_detok_new(vocab) : NULL;
    if (prompt) fputs(prompt, stdout);
    if (speck_decode(dec, toks, n_prompt, n_predict, smp, is_eog, on_token, &gs, &st)) {
        cli_fail("generate");
        free(plain_text);
        goto done;
    }
    if (gs.dt && !gs.stopped) {
        const char *rest = speck_detok_flush(gs.dt);
        if (rest) stop_push(&sf, rest);
    }
    if (!gs.stopped) emit(&sf, sf.pending, sf.len);
    printf("\n");
    fflush(stdout); // the statistics on stderr come after the text
    if (gs.stopped) st.stop_reason = "stop string";
    if (stats) {
        if (compare) print_stats("plain", &plain_st);
        print_stats(draft_arg ? "accelerated" : "plain", &st);
    }
    if (compare) {
        double tp = plain_st.t_total - plain_st.t_prefill, ta = st.t_total - st.t_prefill;
        bool same = sp.temperature > 0 || !strcmp(plain_text, sf.all ? sf.all : "");
        double rate_a = st.n_generated / (ta > 0 ? ta : 1e-9);
        double rate_p = plain_st.n_generated / (tp > 0 ? tp : 1e-9);
        fprintf(stderr, "speck: speedup %.2fx over plain decoding (%.2f vs %.2f tok/s); %s\n",
                rate_a / rate_p, rate_a, rate_p,
                sp.temperature > 0 ? "sampling: outputs differ sample by sample, same distribution"
                : same             ? "output identical to plain greedy decoding"
                                   : "OUTPUT DIFFERS FROM PLAIN DECODING");
        free(plain_text);
        if (!same) goto done;
    }
    rc = 0;
done:
    free(sf.pending);
    free(sf.all);
    free(toks);
    free(ds.warm);
    speck_detok_free(gs.dt);
    speck_sampler_free(smp);
    speck_decoder_free(dec);
    speck_gmatch_free(gm);
    speck_token_trie_free(trie);
    speck_grammar_free(grammar);
    speck_ctx_free(ctx);
    speck_model_free(ds.draft);
    speck_accept_head_free(ds.head);
    speck_vocab_free(vocab);
    speck_model_free(m);
    return rc;
}
