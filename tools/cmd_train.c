// `speck train` and `speck tokenizer-train`: train a Llama-architecture model (and its byte-level
// BPE vocabulary) on a directory of text files. See docs/training.md.
#include <dirent.h>
#include <errno.h>
#include <fnmatch.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"

/* ---- speck tokenizer-train ------------------------------------------------------------------ */

static int read_file(const char *path, char **text, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return speck_set_error(SPECK_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    *text = malloc((size_t)n + 1);
    if (!*text || fread(*text, 1, (size_t)n, f) != (size_t)n) {
        fclose(f);
        free(*text);
        return speck_set_error(SPECK_ERR_IO, "%s: read failed", path);
    }
    fclose(f);
    *len = (size_t)n;
    return 0;
}

// Feed path (a file, or every file matching glob under a directory, recursively, in sorted
// order) to the BPE trainer.
static int feed_dir(speck_bpe_trainer *t, const char *path, const char *glob, int *n_files,
                    size_t *n_bytes, int depth) {
    struct stat st;
    if (stat(path, &st))
        return speck_set_error(SPECK_ERR_IO, "%s: cannot read: %s", path, strerror(errno));
    if (S_ISREG(st.st_mode)) {
        char *text = NULL;
        size_t len = 0;
        int err = read_file(path, &text, &len);
        if (err) return err;
        err = speck_bpe_trainer_add(t, text, len);
        free(text);
        (*n_files)++, *n_bytes += len;
        return err;
    }
    DIR *d = opendir(path);
    if (!d) return speck_set_error(SPECK_ERR_IO, "%s: cannot open directory", path);
    // Sorted for a deterministic word table.
    char **names = NULL;
    int n = 0, cap = 0, err = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            char **p = realloc(names, (size_t)cap * sizeof *p);
            if (!p) break;
            names = p;
        }
        names[n++] = strdup(e->d_name);
    }
    closedir(d);
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++)
            if (strcmp(names[i], names[j]) > 0) {
                char *x = names[i];
                names[i] = names[j], names[j] = x;
            }
    for (int i = 0; i < n && !err; i++) {
        char sub[4096];
        snprintf(sub, sizeof sub, "%s/%s", path, names[i]);
        if (stat(sub, &st)) continue;
        if (S_ISDIR(st.st_mode)) {
            if (depth < 32) err = feed_dir(t, sub, glob, n_files, n_bytes, depth + 1);
        } else if (S_ISREG(st.st_mode) && !fnmatch(glob, names[i], 0)) {
            err = feed_dir(t, sub, glob, n_files, n_bytes, depth + 1);
        }
    }
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
    return err;
}

int cmd_tokenizer_train(int argc, char **argv) {
    const char *data = NULL, *glob = "*", *out = NULL;
    const char *specials[16];
    int n_specials = 0, vocab_size = 4096, min_freq = 2;
    for (int i = 1; i < argc; i++) {
        const char *v;
        if (cli_flag(argv[i], "--help", "-h")) {
            printf(
                "usage: speck tokenizer-train --data DIR|FILE [--glob PATTERN] -o VOCAB.gguf\n"
                "                             [--vocab-size N] [--special TEXT]... "
                "[--min-frequency N]\n\n"
                "Train a byte-level BPE vocabulary (GPT-2 pre-tokenizer, 256 byte tokens, merges\n"
                "of the most frequent pairs) on every file matching PATTERN (default *) under\n"
                "DIR, and write it as a GGUF that speck and llama.cpp read (tokenizer model\n"
                "gpt2, pre gpt-2). Special tokens (default <|endoftext|>) are CONTROL tokens;\n"
                "the first is BOS/EOS. Default vocabulary size 4096.\n");
            return 0;
        } else if (cli_opt(argc, argv, &i, "--data", "-d", &v))
            data = v;
        else if (cli_opt(argc, argv, &i, "--glob", NULL, &v))
            glob = v;
        else if (cli_opt(argc, argv, &i, "--output", "-o", &v))
            out = v;
        else if (cli_opt(argc, argv, &i, "--vocab-size", NULL, &v))
            vocab_size = (int)cli_int("tokenizer-train", "--vocab-size", v, 257, 1 << 20);
        else if (cli_opt(argc, argv, &i, "--min-frequency", NULL, &v))
            min_freq = (int)cli_int("tokenizer-train", "--min-frequency", v, 1, 1 << 30);
        else if (cli_opt(argc, argv, &i, "--special", NULL, &v)) {
            if (n_specials < 16) specials[n_specials++] = v;
        } else {
            fprintf(stderr, "speck tokenizer-train: unknown option '%s'\n", argv[i]);
            return 2;
        }
    }
    if (!data || !out) {
        fprintf(stderr, "speck tokenizer-train: --data and -o are required\n");
        return 2;
    }
    if (!n_specials) specials[n_specials++] = "<|endoftext|>";
    speck_bpe_trainer *t = speck_bpe_trainer_new();
    if (!t) return cli_fail("tokenizer-train");
    int n_files = 0;
    size_t n_bytes = 0;
    double t0 = cli_now();
    if (feed_dir(t, data, glob, &n_files, &n_bytes, 0)) {
        speck_bpe_trainer_free(t);
        return cli_fail("tokenizer-train");
    }
    if (n_files == 0) {
        speck_bpe_trainer_free(t);
        fprintf(stderr, "speck tokenizer-train: %s: no files match '%s' (empty corpus)\n", data,
                glob);
        return 1;
    }
    speck_bpe_train_params p = {vocab_size, specials, n_specials, min_freq};
    int err = speck_bpe_trainer_save(t, &p, out);
    speck_bpe_trainer_free(t);
    if (err) return cli_fail("tokenizer-train");
    fprintf(stderr, "speck tokenizer-train: %d files, %.1f MB -> %s (%d tokens) in %.1f s\n",
            n_files, n_bytes / 1e6, out, vocab_size, cli_now() - t0);
    return 0;
}

/* ---- speck train ---------------------------------------------------------------------------- */

typedef struct {
    const char *data, *glob, *vocab, *init_from, *preset, *out, *ckpt, *csv, *cache, *name;
    const char *distill_from; // teacher model: distill its distributions (speck_distill_step)
    const char *dense;        // --type s24_q8: the dense copy (default OUT.dense.gguf)
    cli_nm nm;                // --nm N:M: SR-STE sparse training
    speck_distill_params distill;
    speck_train_config cfg;
    int set_layer, set_embd, set_head, set_head_kv, set_ff, set_ctx, set_expert, set_expert_used;
    int set_ff_shexp;
    float aux_coef;
    bool no_moe_norm;
    int B, accum, steps, val_every, val_batches, ckpt_every, threads;
    double val_fraction;
    uint64_t seed;
    speck_adamw_params opt;
    speck_type type;
    int tied; // 1 tied, -1 untied, 0 the preset's
    bool resume, plot, quiet;
} train_opts;

static void train_usage(void) {
    printf(
        "usage: speck train --data DIR|FILE [--glob PATTERN] --vocab VOCAB.gguf -o OUT.gguf\n"
        "                   [--preset NAME | --init-from MODEL.gguf] [size flags] [options]\n\n"
        "Train a model from scratch (or continue a GGUF model) on every file matching PATTERN\n"
        "under DIR: architectures llama (Mixtral with experts), qwen2, qwen3, qwen2moe,\n"
        "qwen3moe, olmoe. Whole files are held out for validation. Output: OUT.gguf (the\n"
        "preset's or source's architecture, the vocabulary of VOCAB.gguf), OUT.ckpt\n"
        "(checkpoint: weights + AdamW state, atomic, resumable), OUT.csv (loss curve), OUT.png.\n\n"
        "model (default preset tiny; vocabulary size from the tokenizer):\n"
        "  --preset NAME        shapes and architecture of a preset (speck init --help lists\n"
        "                       them: tiny-qwen3, tiny-qwen2moe, tiny-qwen3moe, tiny-olmoe, ...)\n"
        "  --n-layer N --n-embd N --n-head N --n-head-kv N --n-ff N --ctx N --tied|--untied\n"
        "  --init-from FILE     start from a GGUF model of any type (its vocabulary by default)\n"
        "mixture of experts (Mixtral's layout; --n-ff is then each expert's width):\n"
        "  --n-expert N --n-expert-used K   N experts per layer, K run per token (capacity-free)\n"
        "  --moe-aux X (0.01)   load-balancing loss coefficient (Switch Transformer; 0: off)\n"
        "  --moe-no-norm        do not renormalise the top-K weights (OLMoE's rule)\n"
        "  --n-ff-shexp N       the shared expert's width (qwen2moe presets)\n"
        "optimisation:\n"
        "  --steps N (1000)  --batch B (8)  --accum K (1)  --lr X (1e-3)  --min-lr X (lr/10)\n"
        "  --warmup N (steps/20)  --wd X (0.1)  --clip X (1.0)  --decay-all  --seed N (1)\n"
        "  --threads N\n"
        "distillation (a draft model learns a target's next-token distributions):\n"
        "  --distill-from TARGET.gguf  loss (1-w) T^2 KL(p_target || p_model) + w CE(text),\n"
        "                     the target run forward on each batch; same vocabulary required\n"
        "  --distill-temp T (1)  --distill-ce w (0)\n"
        "N:M sparse training (SR-STE; docs/sparsity.md):\n"
        "  --nm N:M           the layer matrices used with N of every M inputs kept (largest\n"
        "                     |w|); straight-through gradients to the dense weights\n"
        "  --nm-every K (1)   recompute the masks from the dense weights every K steps\n"
        "  --nm-lambda X (2e-4)  sparse-refined term: X (1-mask) W added to the gradient\n"
        "  OUT.gguf holds the masked weights; --type s24_q8 (with --nm 2:4) writes the sparse\n"
        "  format and a dense copy (--dense FILE, default OUT.dense.gguf, f16) for llama.cpp\n"
        "evaluation and output:\n"
        "  --val-fraction X (0.05)  --val-every N (100)  --val-batches N (8)\n"
        "  --ckpt-every N (100)  --checkpoint PATH  --resume  --csv PATH  --cache PATH\n"
        "  --type f16|q8_0|f32|bf16|s24_q8 (f16)  --name TEXT  --plot  --quiet\n"
        "Ctrl-C saves a checkpoint and the model, then exits (status 130); --resume continues\n"
        "the identical loss curve (same seed and threads).\n");
}

static int parse_train(int argc, char **argv, train_opts *o) {
    memset(o, 0, sizeof *o);
    o->glob = "*", o->preset = "tiny", o->B = 8, o->accum = 1, o->steps = 1000;
    o->val_every = 100, o->val_batches = 8, o->ckpt_every = 100, o->val_fraction = 0.05;
    o->seed = 1, o->type = SPECK_TYPE_F16, o->aux_coef = 0.01f;
    o->opt = speck_adamw_default();
    o->opt.warmup_steps = -1, o->opt.min_lr = -1;
    o->distill = (speck_distill_params){.temperature = 1.0f, .ce_weight = 0.0f};
    cli_nm_init(&o->nm);
    const char *C = "train";
    for (int i = 1; i < argc; i++) {
        const char *v;
        if (cli_flag(argv[i], "--help", "-h")) {
            train_usage();
            exit(0);
        }
#define INT(flag, dst, lo, hi)                                                                     \
    else if (cli_opt(argc, argv, &i, flag, NULL, &v)) dst = (int)cli_int(C, flag, v, lo, hi)
#define FLT(flag, dst)                                                                             \
    else if (cli_opt(argc, argv, &i, flag, NULL, &v)) dst = (float)cli_float(C, flag, v)
        else if (cli_opt(argc, argv, &i, "--data", "-d", &v))
            o->data = v;
        else if (cli_opt(argc, argv, &i, "--glob", NULL, &v))
            o->glob = v;
        else if (cli_opt(argc, argv, &i, "--vocab", NULL, &v))
            o->vocab = v;
        else if (cli_opt(argc, argv, &i, "--init-from", NULL, &v))
            o->init_from = v;
        else if (cli_opt(argc, argv, &i, "--preset", NULL, &v))
            o->preset = v;
        else if (cli_opt(argc, argv, &i, "--output", "-o", &v))
            o->out = v;
        else if (cli_opt(argc, argv, &i, "--checkpoint", NULL, &v))
            o->ckpt = v;
        else if (cli_opt(argc, argv, &i, "--csv", NULL, &v))
            o->csv = v;
        else if (cli_opt(argc, argv, &i, "--cache", NULL, &v))
            o->cache = v;
        else if (cli_opt(argc, argv, &i, "--name", NULL, &v))
            o->name = v;
        else if (cli_opt(argc, argv, &i, "--distill-from", NULL, &v))
            o->distill_from = v;
        else if (cli_opt(argc, argv, &i, "--dense", NULL, &v))
            o->dense = v;
        else if (cli_nm_opt(C, argc, argv, &i, &o->nm))
            continue;
        FLT("--distill-temp", o->distill.temperature);
        FLT("--distill-ce", o->distill.ce_weight);
        INT("--n-layer", o->set_layer, 1, 1024);
        INT("--n-embd", o->set_embd, 2, 1 << 16);
        INT("--n-head", o->set_head, 1, 1024);
        INT("--n-head-kv", o->set_head_kv, 1, 1024);
        INT("--n-ff", o->set_ff, 1, 1 << 18);
        INT("--ctx", o->set_ctx, 2, 1 << 16);
        INT("--n-expert", o->set_expert, 1, 256);
        INT("--n-expert-used", o->set_expert_used, 1, 256);
        INT("--n-ff-shexp", o->set_ff_shexp, 1, 1 << 20);
        FLT("--moe-aux", o->aux_coef);
        INT("--steps", o->steps, 1, 1 << 30);
        INT("--batch", o->B, 1, 1 << 16);
        INT("--accum", o->accum, 1, 1 << 16);
        INT("--warmup", o->opt.warmup_steps, 0, 1 << 30);
        INT("--val-every", o->val_every, 0, 1 << 30);
        INT("--val-batches", o->val_batches, 1, 1 << 20);
        INT("--ckpt-every", o->ckpt_every, 0, 1 << 30);
        INT("--threads", o->threads, 1, 1024);
        FLT("--lr", o->opt.lr);
        FLT("--min-lr", o->opt.min_lr);
        FLT("--wd", o->opt.weight_decay);
        FLT("--clip", o->opt.grad_clip);
        FLT("--val-fraction", o->val_fraction);
        else if (cli_opt(argc, argv, &i, "--seed", NULL, &v)) o->seed =
            (uint64_t)cli_int(C, "--seed", v, 0, INT64_MAX);
        else if (cli_opt(argc, argv, &i, "--type", NULL, &v)) {
            int t = speck_type_from_name(v);
            if (t != SPECK_TYPE_F32 && t != SPECK_TYPE_F16 && t != SPECK_TYPE_BF16 &&
                t != SPECK_TYPE_Q8_0 && t != SPECK_TYPE_S24_Q8) {
                fprintf(stderr,
                        "speck train: --type: '%s' is not one of f32, f16, bf16, q8_0, s24_q8\n",
                        v);
                exit(2);
            }
            o->type = (speck_type)t;
        }
        else if (cli_flag(argv[i], "--decay-all", NULL)) o->opt.decay_all = true;
        else if (cli_flag(argv[i], "--resume", NULL)) o->resume = true;
        else if (cli_flag(argv[i], "--tied", NULL)) o->tied = 1;
        else if (cli_flag(argv[i], "--untied", NULL)) o->tied = -1;
        else if (cli_flag(argv[i], "--plot", NULL)) o->plot = true;
        else if (cli_flag(argv[i], "--moe-no-norm", NULL)) o->no_moe_norm = true;
        else if (cli_flag(argv[i], "--quiet", "-q")) o->quiet = true;
        else {
            fprintf(stderr, "speck train: unknown option '%s'\n", argv[i]);
            exit(2);
        }
#undef INT
#undef FLT
    }
    if (!o->data || !o->out) {
        fprintf(stderr, "speck train: --data and -o are required (speck train --help)\n");
        exit(2);
    }
    if (!o->vocab && !o->init_from) {
        fprintf(stderr, "speck train: --vocab VOCAB.gguf is required (speck tokenizer-train "
                        "makes one)\n");
        exit(2);
    }
    if (!(o->aux_coef >= 0)) {
        fprintf(stderr, "speck train: --moe-aux must be >= 0\n");
        exit(2);
    }
    if (!(o->val_fraction >= 0 && o->val_fraction < 1)) {
        fprintf(stderr, "speck train: --val-fraction must be in [0, 1)\n");
        exit(2);
    }
    if (!(o->distill.temperature > 0) ||
        !(o->distill.ce_weight >= 0 && o->distill.ce_weight <= 1)) {
        fprintf(stderr, "speck train: --distill-temp must be > 0 and --distill-ce in [0, 1]\n");
        exit(2);
    }
    if (o->type == SPECK_TYPE_S24_Q8 && !(o->nm.p.n == 2 && o->nm.p.m == 4)) {
        fprintf(stderr, "speck train: --type s24_q8 stores 2:4-sparse matrices: it needs --nm 2:4 "
                        "(a dense model can be pruned into it by speck prune)\n");
        exit(2);
    }
    if (o->dense && o->type != SPECK_TYPE_S24_Q8) {
        fprintf(stderr, "speck train: --dense FILE goes with --type s24_q8\n");
        exit(2);
    }
    if (o->opt.warmup_steps < 0) o->opt.warmup_steps = o->steps / 20;
    if (o->opt.min_lr < 0) o->opt.min_lr = o->opt.lr / 10;
    o->opt.total_steps = o->steps;
    return 0;
}

// Mean loss over up to n_batches batches of B windows of T+1 tokens (stride T) of the split.
static int eval_split(speck_train_model *tm, const int32_t *tok, int64_t n, int B, int T,
                      int n_batches, int32_t *in, int32_t *tg, double *mean) {
    int64_t windows = n > T ? (n - 1) / T : 0;
    if (windows > (int64_t)B * n_batches) windows = (int64_t)B * n_batches;
    int64_t full = windows / B * B;
    if (full == 0) return 1; // too little validation text
    double total = 0;
    for (int64_t w0 = 0; w0 < full; w0 += B) {
        for (int b = 0; b < B; b++) {
            memcpy(in + (size_t)b * T, tok + (w0 + b) * T, (size_t)T * sizeof *in);
            memcpy(tg + (size_t)b * T, tok + (w0 + b) * T + 1, (size_t)T * sizeof *tg);
        }
        float loss;
        int err = speck_train_loss(tm, in, tg, B, T, &loss);
        if (err) return err;
        total += loss;
    }
    *mean = total / (double)(full / B);
    return 0;
}

// Everything a training run owns, released by cmd_train on every exit path (early error returns
// included), so the run body can simply return.
static struct {
    speck_vocab *voc;
    speck_train_model *tm, *teacher;
    char *ckpt, *csv, *cache;
    speck_token_data data;
    bool have_data;
    FILE *fcsv;
    int32_t *in, *tg;
} R;

// A teacher must score the tokens the student is trained on: the same vocabulary, token by token.
static int distill_teacher_check(const char *teacher, const speck_vocab *voc,
                                 const char *vocab_path) {
    speck_vocab *tv = speck_vocab_load(teacher);
    if (!tv) return cli_fail("train");
    int rc = 0, n = speck_vocab_n_tokens(tv), m = speck_vocab_n_tokens(voc);
    if (n != m) {
        fprintf(stderr,
                "speck train: --distill-from %s: vocabulary mismatch: it has %d tokens, %s has "
                "%d (the draft must use the target's vocabulary)\n",
                teacher, n, vocab_path, m);
        rc = 1;
    }
    for (int32_t i = 0; !rc && i < n; i++) {
        const char *a = speck_vocab_token_text(tv, i), *b = speck_vocab_token_text(voc, i);
        if (strcmp(a ? a : "", b ? b : "")) {
            fprintf(stderr,
                    "speck train: --distill-from %s: vocabulary mismatch: token %d is '%s' there "
                    "and '%s' in %s (the draft must use the target's vocabulary)\n",
                    teacher, i, a ? a : "", b ? b : "", vocab_path);
            rc = 1;
        }
    }
    speck_vocab_free(tv);
    return rc;
}

static int train_run(int argc, char **argv) {
    train_opts o;
    parse_train(argc, argv, &o);
    if (o.threads) speck_set_threads(o.threads);
    char *ckpt = R.ckpt = o.ckpt ? strdup(o.ckpt) : cli_derived_path(o.out, ".ckpt");
    char *csv = R.csv = o.csv ? strdup(o.csv) : cli_derived_path(o.out, ".csv");
    char *cache = R.cache = o.cache ? strdup(o.cache) : cli_derived_path(o.out, ".tokens");
    const char *vocab_path = o.vocab ? o.vocab : o.init_from;
    speck_vocab *voc = R.voc = speck_vocab_load(vocab_path);
    if (!voc) return cli_fail("train");
    int n_vocab = speck_vocab_n_tokens(voc);
    speck_train_model *tm = NULL;
    if (o.init_from) {
        tm = R.tm = speck_train_model_load(o.init_from);
        if (!tm) return cli_fail("train");
        if (speck_train_model_config(tm)->n_vocab != n_vocab) {
            fprintf(stderr,
                    "speck train: vocabulary/model mismatch: %s has %d tokens, %s has "
                    "n_vocab %d\n",
                    vocab_path, n_vocab, o.init_from, speck_train_model_config(tm)->n_vocab);
            return 1;
        }
        o.cfg = *speck_train_model_config(tm);
        if (o.set_ctx && o.set_ctx > o.cfg.n_ctx) {
            fprintf(stderr, "speck train: --ctx %d exceeds the model's context %d\n", o.set_ctx,
                    o.cfg.n_ctx);
            return 2;
        }
    } else {
        const speck_preset *p = speck_preset_find(o.preset);
        if (!p) {
            fprintf(stderr, "speck train: unknown preset '%s'\n", o.preset);
            return 2;
        }
        if (p->n_swa) { // the training pass attends to the whole context
            fprintf(stderr,
                    "speck train: preset '%s' has a sliding window; speck trains models "
                    "without one\n",
                    o.preset);
            return 2;
        }
        o.cfg = speck_train_config_from_preset(p);
        o.cfg.n_vocab = n_vocab;
        o.cfg.rope_freq_base = 10000.0f;
        if (o.set_layer) o.cfg.n_layer = o.set_layer;
        if (o.set_embd) o.cfg.n_embd = o.set_embd;
        if (o.set_head) o.cfg.n_head = o.set_head;
        if (o.set_embd || o.set_head) o.cfg.head_dim = 0; // n_embd / n_head
        o.cfg.n_head_kv = o.set_head_kv ? o.set_head_kv : o.set_head ? o.set_head : o.cfg.n_head_kv;
        if (o.set_ff) o.cfg.n_ff = o.set_ff;
        if (o.set_ctx) o.cfg.n_ctx = o.set_ctx;
        if (o.tied) o.cfg.tied_output = o.tied > 0;
        if (o.set_expert) {
            if (!o.cfg.n_expert) o.cfg.moe_norm = true; // Mixtral's rule; a MoE preset's family's
            o.cfg.n_expert = o.set_expert;
            if (!o.set_expert_used) o.cfg.n_expert_used = o.set_expert < 2 ? 1 : 2;
        }
        if (o.set_expert_used) o.cfg.n_expert_used = o.set_expert_used;
        if (o.no_moe_norm) o.cfg.moe_norm = false;
        if (o.set_ff_shexp) o.cfg.n_ff_shexp = o.set_ff_shexp;
        if (o.cfg.n_expert_used && !o.cfg.n_expert) {
            fprintf(stderr, "speck train: --n-expert-used needs --n-expert (or a MoE preset)\n");
            return 2;
        }
        tm = R.tm = speck_train_model_new(&o.cfg, o.seed);
        if (!tm) return cli_fail("train");
    }
    if (cli_nm_apply("train", &o.nm, tm, o.quiet)) return 1;
    int T = o.set_ctx ? o.set_ctx : (o.cfg.n_ctx < 256 ? o.cfg.n_ctx : 256);
    speck_train_model *teacher = NULL;
    if (o.distill_from) {
        if (distill_teacher_check(o.distill_from, voc, vocab_path)) return 1;
        teacher = R.teacher = speck_train_model_load(o.distill_from);
        if (!teacher) return cli_fail("train");
        if (speck_distill_check(tm, teacher)) return cli_fail("train");
        if (T > speck_train_model_config(teacher)->n_ctx) {
            fprintf(stderr,
                    "speck train: --distill-from %s: sequences of %d exceed its context %d\n",
                    o.distill_from, T, speck_train_model_config(teacher)->n_ctx);
            return 2;
        }
        if (!o.quiet)
            fprintf(stderr, "distilling from %s (%.2fM parameters): T %g, text weight %g\n",
                    o.distill_from, speck_train_n_params(teacher) / 1e6,
                    (double)o.distill.temperature, (double)o.distill.ce_weight);
    }
    speck_token_data data;
    double t0 = cli_now();
    if (speck_token_data_build(o.data, o.glob, voc, o.val_fraction, cache, &data))
        return cli_fail("train");
    R.data = data;
    R.have_data = true;
    if (!o.quiet)
        fprintf(stderr,
                "data: %d train files, %lld tokens; %d validation files, %lld tokens "
                "(%s, %.1f s)\n",
                data.n_files_train, (long long)data.n_train, data.n_files_val,
                (long long)data.n_val, data.from_cache ? "cached" : "tokenized", cli_now() - t0);
    if (data.n_train < T + 1) {
        fprintf(stderr,
                "speck train: %s: corpus too small: %lld training tokens for sequences "
                "of %d\n",
                o.data, (long long)data.n_train, T);
        return 1;
    }
    speck_train_state st = {0, o.seed};
    if (o.resume && access(ckpt, F_OK) == 0) {
        if (speck_train_checkpoint_load(tm, ckpt, &st)) return cli_fail("train");
        if (!o.quiet) fprintf(stderr, "resumed from %s at step %lld\n", ckpt, (long long)st.step);
    }
    const speck_train_config *c = speck_train_model_config(tm);
    if (c->n_expert && speck_train_set_aux_coef(tm, o.aux_coef)) return cli_fail("train");
    if (!o.quiet && c->n_expert)
        fprintf(stderr,
                "experts: %d per layer, %d per token (%s), load-balancing loss x %g; %.2fM "
                "parameters active per token\n",
                c->n_expert, c->n_expert_used, c->moe_norm ? "renormalised" : "not renormalised",
                (double)o.aux_coef,
                (speck_train_n_params(tm) - (double)c->n_layer * (c->n_expert - c->n_expert_used) *
                                                3 * c->n_ff * c->n_embd) /
                    1e6);
    if (!o.quiet)
        fprintf(stderr,
                "model: %d layers, width %d, %d heads (%d kv), ffn %d, vocab %d, %s head, "
                "%.2fM parameters; batch %d x %d x %d accum, %d steps, %d threads\n",
                c->n_layer, c->n_embd, c->n_head, c->n_head_kv, c->n_ff, c->n_vocab,
                c->tied_output ? "tied" : "untied", speck_train_n_params(tm) / 1e6, o.B, T, o.accum,
                o.steps, speck_get_threads());
    FILE *fcsv = R.fcsv = cli_open_csv(csv, st.step, c->n_expert ? ",aux_loss" : NULL);
    if (!fcsv) {
        fprintf(stderr, "speck train: %s: cannot write: %s\n", csv, strerror(errno));
        return 1;
    }
    int32_t *in = R.in = malloc((size_t)o.B * T * sizeof *in);
    int32_t *tg = R.tg = malloc((size_t)o.B * T * sizeof *tg);
    if (!in || !tg) return 1;
    cli_train_log L;
    cli_train_begin(&L, "train", fcsv, st.step, o.steps, o.quiet);
    L.moe = c->n_expert > 0;
    int rc = 0;
    for (int64_t step = st.step; step < o.steps && !cli_stop; step++) {
        double ts = cli_now(), loss_sum = 0, aux_sum = 0;
        speck_train_zero_grad(tm);
        for (int k = 0; k < o.accum && !rc; k++) {
            for (int b = 0; b < o.B; b++)
                speck_token_data_sample(&data, o.seed, step, k, b, T, in + (size_t)b * T,
                                        tg + (size_t)b * T);
            float loss;
            if (teacher ? speck_distill_step(tm, teacher, in, tg, o.B, T, &o.distill,
                                             1.0f / o.accum, &loss, NULL, NULL)
                        : speck_train_step(tm, in, tg, o.B, T, 1.0f / o.accum, &loss))
                rc = cli_fail("train");
            loss_sum += loss;
            aux_sum += speck_train_aux_loss(tm);
        }
        float gnorm = 0;
        if (!rc && speck_adamw_step(tm, &o.opt, step, &gnorm)) rc = cli_fail("train");
        if (rc) break;
        st.step = step + 1;
        const double dt = cli_now() - ts;
        double val = NAN;
        if (o.val_every && (st.step % o.val_every == 0 || st.step == o.steps)) {
            double v;
            int e = eval_split(tm, data.val, data.n_val, o.B, T, o.val_batches, in, tg, &v);
            if (e < 0) {
                rc = cli_fail("train");
                break;
            }
            if (e == 0) val = v;
        }
        L.aux = aux_sum / o.accum;
        cli_train_record(&L, step, loss_sum / o.accum, val, speck_lr_at(&o.opt, step), gnorm,
                         (double)o.B * T * o.accum, dt);
        if (o.ckpt_every && st.step % o.ckpt_every == 0 && st.step < o.steps &&
            speck_train_checkpoint_save(tm, &st, vocab_path, ckpt)) {
            rc = cli_fail("train");
            break;
        }
        cli_train_hook(&L, st.step);
    }
    if (!o.quiet) fprintf(stderr, "\n");
    fclose(fcsv);
    R.fcsv = NULL;
    if (!rc) {
        const char *name = o.name ? o.name : "speck-trained";
        char *dense = o.type != SPECK_TYPE_S24_Q8 ? NULL
                      : o.dense                   ? strdup(o.dense)
                                                  : cli_derived_path(o.out, ".dense.gguf");
        if (speck_train_checkpoint_save(tm, &st, vocab_path, ckpt) ||
            speck_train_export(tm, vocab_path, o.type, name, o.out) ||
            (dense && speck_train_export(tm, vocab_path, SPECK_TYPE_F16, name, dense)))
            rc = cli_fail("train");
        else if (!o.quiet)
            fprintf(stderr, "saved %s (%s)%s%s and checkpoint %s at step %lld\n", o.out,
                    speck_type_name(o.type), dense ? ", dense copy " : "", dense ? dense : "",
                    ckpt, (long long)st.step);
        free(dense);
    }
    return cli_train_end(&L, rc, st.step, o.plot, o.out, csv);
}

int cmd_train(int argc, char **argv) {
    memset(&R, 0, sizeof R);
    int rc = train_run(argc, argv);
    if (R.fcsv) fclose(R.fcsv);
    free(R.in);
    free(R.tg);
    free(R.ckpt);
    free(R.csv);
    free(R.cache);
    if (R.have_data) speck_token_data_free(&R.data);
    speck_train_model_free(R.tm);
    speck_train_model_free(R.teacher);
    speck_vocab_free(R.voc);
    return rc;
}
