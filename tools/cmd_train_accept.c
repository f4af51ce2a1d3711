// `speck train-accept`: collect (draft features, accepted?) samples by decoding a text with a
// target and a draft model, train the SpecDec++ acceptance head on them and write it.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static void usage(void) {
    printf("usage: speck train-accept [-m TARGET] --draft-model DRAFT --text FILE -o HEAD.gguf "
           "[options]\n\n"
           "Train SpecDec++'s acceptance-prediction head for a draft model (docs/decoding.md):\n"
           "the target decodes greedily from windows of FILE while the draft proposes chains;\n"
           "every draft token whose predecessors were accepted is a sample (the draft's hidden\n"
           "state, top probability and entropy there; accepted or not). A one-hidden-layer head\n"
           "is trained with AdamW on a weighted BCE and written as a small GGUF, for\n"
           "`speck generate --accept-head FILE --adaptive H` and bench-decode's model-specdecpp.\n\n"
           "  -m FILE              target model (default: the default model)\n"
           "  --draft-model FILE   the draft model the head is for (same vocabulary)\n"
           "  --text FILE          training text (plain text; windows are spread over it)\n"
           "  -o FILE              the head to write\n"
           "  --draft-len K        chain length while collecting, 1..13 (default 8)\n"
           "  --prompt-len N       text tokens before each generation (default 64)\n"
           "  --gen-len N          tokens generated per window (default 64)\n"
           "  --max-windows N      windows taken from the text (default: all that fit)\n"
           "  --hidden N           hidden width of the head (default 32)\n"
           "  --steps N --batch N  AdamW steps and minibatch (default 2000, 256)\n"
           "  --lr X               peak learning rate (default 3e-3)\n"
           "  --reject-weight W    loss weight of a rejected sample (default 1)\n"
           "  --val-fraction F     last samples held out for the report (default 0.2)\n"
           "  --seed S             initialisation and minibatches (default 1)\n"
           "  -t N                 threads\n");
}

int cmd_train_accept(int argc, char **argv) {
    const char *tpath = NULL, *dpath = NULL, *text = NULL, *out = NULL;
    speck_accept_collect_params cp = speck_accept_collect_default();
    speck_accept_train_params tp = speck_accept_train_default();
    const char *C = "train-accept";
    for (int i = 1; i < argc; i++) {
        const char *v;
        if (cli_flag(argv[i], "--help", "-h")) {
            usage();
            return 0;
        } else if (cli_opt(argc, argv, &i, "--model", "-m", &v))
            tpath = v;
        else if (cli_opt(argc, argv, &i, "--draft-model", NULL, &v))
            dpath = v;
        else if (cli_opt(argc, argv, &i, "--text", NULL, &v))
            text = v;
        else if (cli_opt(argc, argv, &i, "--output", "-o", &v))
            out = v;
        else if (cli_opt(argc, argv, &i, "--draft-len", NULL, &v))
            cp.n_draft = (int)cli_int(C, "--draft-len", v, 1, 13);
        else if (cli_opt(argc, argv, &i, "--prompt-len", NULL, &v))
            cp.prompt_len = (int)cli_int(C, "--prompt-len", v, 1, 1 << 20);
        else if (cli_opt(argc, argv, &i, "--gen-len", NULL, &v))
            cp.gen_len = (int)cli_int(C, "--gen-len", v, 1, 1 << 20);
        else if (cli_opt(argc, argv, &i, "--max-windows", NULL, &v))
            cp.max_windows = (int)cli_int(C, "--max-windows", v, 1, 1 << 30);
        else if (cli_opt(argc, argv, &i, "--hidden", NULL, &v))
            tp.n_hidden = (int)cli_int(C, "--hidden", v, 1, 4096);
        else if (cli_opt(argc, argv, &i, "--steps", NULL, &v))
            tp.steps = (int)cli_int(C, "--steps", v, 0, 1 << 30);
        else if (cli_opt(argc, argv, &i, "--batch", NULL, &v))
            tp.batch = (int)cli_int(C, "--batch", v, 1, 1 << 20);
        else if (cli_opt(argc, argv, &i, "--lr", NULL, &v))
            tp.lr = (float)cli_float(C, "--lr", v);
        else if (cli_opt(argc, argv, &i, "--reject-weight", NULL, &v))
            tp.w_rej = (float)cli_float(C, "--reject-weight", v);
        else if (cli_opt(argc, argv, &i, "--val-fraction", NULL, &v))
            tp.val_fraction = (float)cli_float(C, "--val-fraction", v);
        else if (cli_opt(argc, argv, &i, "--seed", NULL, &v))
            tp.seed = (uint64_t)cli_int(C, "--seed", v, 0, INT64_MAX);
        else if (cli_opt(argc, argv, &i, "--threads", "-t", &v))
            speck_set_threads((int)cli_int(C, "-t", v, 1, 4096));
        else {
            fprintf(stderr, "speck train-accept: unknown option '%s'\n", argv[i]);
            return 2;
        }
    }
    if (!dpath || !text || !out) {
        fprintf(stderr, "speck train-accept: need --draft-model, --text and -o (--help)\n");
        return 2;
    }
    if (!(tp.lr > 0) || !(tp.w_rej > 0) || !(tp.val_fraction >= 0 && tp.val_fraction < 1)) {
        fprintf(stderr, "speck train-accept: --lr and --reject-weight must be > 0, "
                        "--val-fraction in [0, 1)\n");
        return 2;
    }
    if (!(tpath = cli_model_path(C, tpath))) return 2;
    speck_model *tm = cli_load_model(tpath), *dm = tm ? speck_model_load(dpath) : NULL;
    if (!tm || !dm) return cli_fail(C);
    speck_vocab *vocab = speck_vocab_from_gguf(speck_model_gguf(tm));
    size_t len;
    char *buf = vocab ? cli_read_file(text, &len) : NULL;
    if (!buf) return cli_fail(C);
    int32_t *toks = malloc((len + 8) * sizeof *toks);
    int64_t nt = toks ? speck_tokenize(vocab, buf, len, false, false, toks, (int64_t)len + 8) : -1;
    free(buf);
    if (nt < 0) return cli_fail(C);
    double t0 = cli_now();
    float *X;
    uint8_t *y;
    int64_t n;
    if (speck_accept_collect(tm, dm, toks, nt, &cp, &X, &y, &n)) return cli_fail(C);
    double t1 = cli_now();
    printf("collected %lld samples from %lld text tokens in %.1f s (draft length %d)\n",
           (long long)n, (long long)nt, t1 - t0, cp.n_draft);
    speck_accept_report rep;
    speck_accept_head *h =
        speck_accept_head_train(X, y, n, speck_model_hparams(dm)->n_embd, &tp, &rep);
    if (!h) return cli_fail(C);
    printf("trained %lld parameters in %.1f s: %lld train / %lld held-out samples, %.1f%% accepted\n",
           (long long)speck_accept_head_n_params(h), cli_now() - t1, (long long)rep.n_train,
           (long long)rep.n_val, 100 * rep.accept_rate);
    printf("weighted BCE train %.4f, held-out %.4f; held-out accuracy %.3f\n", rep.train_bce,
           rep.val_bce, rep.val_acc);
    printf("held-out AUC: head %.3f, the draft's top probability alone %.3f\n", rep.val_auc_head,
           rep.val_auc_top);
    int rc = speck_accept_head_save(h, out);
    speck_accept_head_free(h);
    free(X), free(y), free(toks);
    speck_vocab_free(vocab);
    speck_model_free(dm), speck_model_free(tm);
    if (rc) return cli_fail(C);
    printf("wrote %s\n", out);
    return 0;
}
