// `speck finetune`: LoRA / QLoRA fine-tuning of a base model on a text or JSONL file, writing a
// llama.cpp adapter GGUF, or with --full every weight trained by speck train's model (the same
// data, masks and loop), writing a model GGUF. See docs/adaptation.md.
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

typedef struct {
    const char *model, *data, *out, *ckpt, *csv, *targets, *tmpl;
    int type; // --full: the output's matrix type
    int rank, B, accum, steps, T, val_every, val_batches, ckpt_every, threads;
    float alpha, dropout;
    double val_fraction;
    uint64_t seed;
    speck_adamw_params opt;
    bool resume, plot, quiet, full;
    // --sparse spiel|s2ft: sparse fine-tuning (src/adapt/sparse_ft.c), a delta GGUF to -o
    const char *sparse;
    speck_sparse_params sp;
    cli_nm nm; // --full --nm N:M: SR-STE sparse fine-tuning (cli_train.c)
    // --init corda-kpm|corda-ipm|lq-lora, --calib, --calib-tokens, --base-out; --block-share
    const char *init, *calib, *base_out;
    const char *type_name, *imatrix; // --type as given; LQ-LoRA: --imatrix, --bits, --lq-iters
    double bpw;
    int lq_iters;
    int64_t calib_tokens;
    int block_share;
} ft_opts;

static void usage(void) {
    printf(
        "usage: speck finetune [-m BASE.gguf] --data FILE -o ADAPTER.gguf [options]\n"
        "       speck finetune --full [-m BASE.gguf] --data FILE -o MODEL.gguf [options]\n\n"
        "Train a LoRA adapter on FILE with the base model frozen in its stored type (a Q4_0,\n"
        "Q8_0 or K-quant base makes this QLoRA). FILE is plain text (all of it learned) or JSONL\n"
        "with one object per line: {\"text\": ...}, {\"prompt\": ..., \"completion\": ...} (loss\n"
        "on the completion only) or {\"messages\": [{\"role\", \"content\"}...]} rendered with\n"
        "the model's chat template (loss on the assistant turns only). Examples are packed end\n"
        "to end; the last --val-fraction of them is held out. Output: ADAPTER.gguf (llama.cpp's\n"
        "LoRA format: speck and llama-cli --lora run it), ADAPTER.ckpt (atomic, --resume),\n"
        "ADAPTER.csv (loss curve), ADAPTER.png (--plot).\n\n"
        "adapter:\n"
        "  --rank R (16)  --alpha A (= rank)  --dropout P (0)\n"
        "  --targets LIST     of q,k,v,o,gate,up,down (default all)\n"
        "  --chat-template NAME  for \"messages\" data when the model's is not recognised\n"
        "initialisation and variants (docs/adaptation.md):\n"
        "  --init lora|corda-kpm|corda-ipm|lq-lora  CorDA: A, B from the SVD of W*C (C the covariance\n"
        "                     of W's input on --calib text): kpm the r smallest components\n"
        "                     (calibrate on the base's domain), ipm the r largest (on the task)\n"
        "  --calib FILE       calibration text (--calib-tokens N, default 8192, of it)\n"
        "  --base-out PATH    CorDA's residual base W - s*B*A (default ADAPTER.base.gguf; its\n"
        "                     adapted matrices as --type, default f32): run the adapter on it\n"
        "  --init lq-lora     LQ-LoRA: W = Q + s*B*A by alternating SVD and quantization; Q\n"
        "                     (--type T: Q4_K, Q3_K, Q2_K, ...) becomes the frozen base, written\n"
        "                     to --base-out; --bits B: a type per matrix within B bits/weight\n"
        "  --imatrix FILE     LQ-LoRA weighted by input importance (or --calib TEXT collects it)\n"
        "  --lq-iters N (10)  alternations at most (0: plain QLoRA, same base types, B = 0)\n"
        "  --block-share K    Block-LoRA: A split into K blocks that share one down-projection\n"
        "                     (rank/K x n_in); saved as the equal rank/K LoRA\n"
        "full fine-tuning (no adapter; the options above except --chat-template are unused):\n"
        "  --full             train every weight in f32 (speck train's forward, backward and\n"
        "                     AdamW) and write a model GGUF to -o (lr default 1e-4)\n"
        "  --type T           its matrices: f32 (default), f16, bf16, q8_0\n"
        "sparse fine-tuning (a sparse delta GGUF to -o; speck delta apply / --delta use it):\n"
        "  --sparse M         spiel (random positions, drop smallest |delta| and regrow by\n"
        "                     accumulated gradient) or s2ft (attn_output/ffn_down columns of\n"
        "                     random heads and FFN channels); lr default 1e-4\n"
        "  --density X (0.01) | --params N   trained elements (of --targets' matrices; s2ft:\n"
        "                     of attn_output + ffn_down)\n"
        "  --update-every N (20)  --regrow-accum N (5)  --drop-fraction Z (0.2)   SpIEL\n"
        "  --nm N:M  --nm-every K  --nm-lambda X   N:M sparse (SR-STE), as speck train\n"
        "optimisation (as speck train):\n"
        "  --steps N (200)  --batch B (8)  --accum K (1)  --ctx T (256)  --lr X (1e-3)\n"
        "  --min-lr X (lr/10)  --warmup N (steps/20)  --wd X (0)  --clip X (1.0)  --seed N (1)\n"
        "  --threads N\n"
        "evaluation and output:\n"
        "  --val-fraction X (0.1)  --val-every N (50)  --val-batches N (8)  --ckpt-every N (50)\n"
        "  --checkpoint PATH  --resume  --csv PATH  --plot  --quiet\n"
        "Ctrl-C saves the checkpoint and the adapter, then exits (status 130).\n");
}

static void parse(int argc, char **argv, ft_opts *o) {
    memset(o, 0, sizeof *o);
    o->rank = 16, o->B = 8, o->accum = 1, o->steps = 200, o->T = 256, o->val_every = 50;
    o->val_batches = 8, o->ckpt_every = 50, o->val_fraction = 0.1, o->seed = 1;
    o->alpha = -1, o->targets = "q,k,v,o,gate,up,down", o->lq_iters = -1;
    o->opt = speck_adamw_default();
    o->opt.lr = -1;
    o->opt.warmup_steps = -1, o->opt.min_lr = -1, o->opt.weight_decay = 0;
    o->sp = speck_sparse_default();
    cli_nm_init(&o->nm);
    const char *C = "finetune";
    for (int i = 1; i < argc; i++) {
        const char *v;
        if (cli_flag(argv[i], "--help", "-h")) {
            usage();
            exit(0);
        }
#define INT(flag, dst, lo, hi)                                                                     \
    else if (cli_opt(argc, argv, &i, flag, NULL, &v)) dst = (int)cli_int(C, flag, v, lo, hi)
#define FLT(flag, dst)                                                                             \
    else if (cli_opt(argc, argv, &i, flag, NULL, &v)) dst = (float)cli_float(C, flag, v)
        else if (cli_opt(argc, argv, &i, "--model", "-m", &v)) o->model = v;
        else if (cli_opt(argc, argv, &i, "--data", "-d", &v)) o->data = v;
        else if (cli_opt(argc, argv, &i, "--output", "-o", &v)) o->out = v;
        else if (cli_opt(argc, argv, &i, "--checkpoint", NULL, &v)) o->ckpt = v;
        else if (cli_opt(argc, argv, &i, "--csv", NULL, &v)) o->csv = v;
        else if (cli_opt(argc, argv, &i, "--targets", NULL, &v)) o->targets = v;
        else if (cli_opt(argc, argv, &i, "--chat-template", NULL, &v)) o->tmpl = v;
        INT("--rank", o->rank, INT32_MIN, INT32_MAX);
        INT("--steps", o->steps, 1, 1 << 30);
        INT("--batch", o->B, 1, 1 << 16);
        INT("--accum", o->accum, 1, 1 << 16);
        INT("--ctx", o->T, 2, 1 << 16);
        INT("--warmup", o->opt.warmup_steps, 0, 1 << 30);
        INT("--val-every", o->val_every, 0, 1 << 30);
        INT("--val-batches", o->val_batches, 1, 1 << 20);
        INT("--ckpt-every", o->ckpt_every, 0, 1 << 30);
        INT("--threads", o->threads, 1, 1024);
        else if (cli_opt(argc, argv, &i, "-t", NULL, &v)) o->threads = (int)cli_int(C, "-t", v, 1, 1024);
        FLT("--alpha", o->alpha);
        FLT("--dropout", o->dropout);
        FLT("--lr", o->opt.lr);
        FLT("--min-lr", o->opt.min_lr);
        FLT("--wd", o->opt.weight_decay);
        FLT("--clip", o->opt.grad_clip);
        FLT("--val-fraction", o->val_fraction);
        else if (cli_opt(argc, argv, &i, "--seed", NULL, &v)) o->seed =
            (uint64_t)cli_int(C, "--seed", v, 0, INT64_MAX);
        else if (cli_flag(argv[i], "--resume", NULL)) o->resume = true;
        else if (cli_flag(argv[i], "--full", NULL)) o->full = true;
        else if (cli_nm_opt(C, argc, argv, &i, &o->nm)) continue;
        else if (cli_opt(argc, argv, &i, "--type", NULL, &v)) o->type_name = v;
        else if (cli_opt(argc, argv, &i, "--imatrix", NULL, &v)) o->imatrix = v;
        else if (cli_opt(argc, argv, &i, "--bits", NULL, &v)) o->bpw = cli_float(C, "--bits", v);
        INT("--lq-iters", o->lq_iters, 0, 1000);
        // sparse fine-tuning
        else if (cli_opt(argc, argv, &i, "--sparse", NULL, &v)) o->sparse = v;
        else if (cli_opt(argc, argv, &i, "--density", NULL, &v))
            o->sp.density = cli_float(C, "--density", v);
        else if (cli_opt(argc, argv, &i, "--params", NULL, &v))
            o->sp.n_params = cli_int(C, "--params", v, 1, INT64_MAX);
        INT("--update-every", o->sp.update_every, 0, 1 << 30);
        INT("--regrow-accum", o->sp.accum_steps, 1, 1 << 30);
        FLT("--drop-fraction", o->sp.drop_fraction);
        // CorDA initialisation and Block-LoRA (docs/adaptation.md)
        else if (cli_opt(argc, argv, &i, "--init", NULL, &v)) o->init = v;
        else if (cli_opt(argc, argv, &i, "--calib", NULL, &v)) o->calib = v;
        else if (cli_opt(argc, argv, &i, "--base-out", NULL, &v)) o->base_out = v;
        else if (cli_opt(argc, argv, &i, "--calib-tokens", NULL, &v)) o->calib_tokens =
            cli_int(C, "--calib-tokens", v, 1, INT64_MAX);
        INT("--block-share", o->block_share, 1, 4096);
        else if (cli_flag(argv[i], "--plot", NULL)) o->plot = true;
        else if (cli_flag(argv[i], "--quiet", "-q")) o->quiet = true;
        else {
            fprintf(stderr, "speck finetune: unknown option '%s'\n", argv[i]);
            exit(2);
        }
#undef INT
#undef FLT
    }
    if (!o->data || !o->out) {
        fprintf(stderr, "speck finetune: --data and -o are required (speck finetune --help)\n");
        exit(2);
    }
    if (o->rank < 1 || o->rank > 4096) {
        fprintf(stderr, "speck finetune: --rank %d must be in [1, 4096]\n", o->rank);
        exit(2);
    }
    if (!(o->dropout >= 0 && o->dropout < 1)) {
        fprintf(stderr, "speck finetune: --dropout must be in [0, 1)\n");
        exit(2);
    }
    if (!(o->val_fraction >= 0 && o->val_fraction < 1)) {
        fprintf(stderr, "speck finetune: --val-fraction must be in [0, 1)\n");
        exit(2);
    }
    if (o->nm.p.m && !o->full) {
        fprintf(stderr, "speck finetune: --nm trains sparse weights: it needs --full\n");
        exit(2);
    }
    if (o->init && strcmp(o->init, "lora") && strcmp(o->init, "corda-kpm") &&
        strcmp(o->init, "corda-ipm") && strcmp(o->init, "lq-lora")) {
        fprintf(stderr, "speck finetune: unknown --init '%s' (lora, corda-kpm, corda-ipm or "
                        "lq-lora)\n", o->init);
        exit(2);
    }
    const bool corda = o->init && !strncmp(o->init, "corda", 5);
    const bool lq = o->init && !strcmp(o->init, "lq-lora");
    o->type = -1;
    if (o->type_name) {
        o->type = speck_type_from_name(o->type_name);
        const bool ok = lq ? o->type >= 0 && speck_type_block_size((speck_type)o->type) >= 32 &&
                                 speck_type_block_size((speck_type)o->type) != 0
                           : o->type == SPECK_TYPE_F32 || o->type == SPECK_TYPE_F16 ||
                                 o->type == SPECK_TYPE_BF16 || o->type == SPECK_TYPE_Q8_0;
        if (!ok) {
            fprintf(stderr, "speck finetune: --type %s: want %s\n", o->type_name,
                    lq ? "a quantized type (Q4_K, Q3_K, Q2_K, Q5_K, Q6_K, Q4_0, Q8_0, ...)"
                       : "f32, f16, bf16 or q8_0");
            exit(2);
        }
    } else if (!lq) {
        o->type = 0; // f32
    }
    if (!lq && (o->imatrix || o->bpw != 0 || o->lq_iters >= 0)) {
        fprintf(stderr, "speck finetune: --imatrix, --bits and --lq-iters are for --init lq-lora\n");
        exit(2);
    }
    if (lq) {
        const char *bad = o->full ? "--full" : o->block_share > 1 ? "--block-share" : NULL;
        if (bad) {
            fprintf(stderr, "speck finetune: --init lq-lora does not combine with %s\n", bad);
            exit(2);
        }
        if ((o->type < 0) == (o->bpw == 0)) {
            fprintf(stderr, "speck finetune: --init lq-lora needs one of --type T (the quantized "
                            "base's type) and --bits B (a mix of types within B bits/weight)\n");
            exit(2);
        }
        if (o->bpw != 0 && !(o->bpw >= 2.5 && o->bpw <= 8.5)) {
            fprintf(stderr, "speck finetune: --bits %g must be in [2.5, 8.5] (the candidate "
                            "types' range)\n", o->bpw);
            exit(2);
        }
        if (o->imatrix && o->calib) {
            fprintf(stderr, "speck finetune: --imatrix and --calib both give LQ-LoRA's "
                            "importance: pass one\n");
            exit(2);
        }
        if (o->lq_iters < 0) o->lq_iters = 10;
    } else if (corda != (o->calib != NULL) || (corda && (o->full || o->block_share > 1))) {
        fprintf(stderr, "speck finetune: %s\n",
                !corda ? "--calib is for --init corda-kpm / corda-ipm"
                : !o->calib ? "--init corda-* needs --calib TEXT (calibration text: the base's "
                              "own domain for kpm, the task's data for ipm)"
                            : "--init corda-* does not combine with --full or --block-share");
        exit(2);
    }
    if (o->block_share > 1 && (o->full || o->rank % o->block_share)) {
        fprintf(stderr, "speck finetune: --block-share %d needs LoRA (not --full) and a rank "
                        "that is a multiple of it (--rank %d)\n", o->block_share, o->rank);
        exit(2);
    }
    if (!o->block_share) o->block_share = 1;
    if (!o->calib_tokens) o->calib_tokens = 8192;
    if (o->alpha < 0) o->alpha = (float)o->rank;
    if (o->sparse) {
        if (speck_sparse_parse_method(o->sparse, &o->sp.method)) {
            fprintf(stderr, "speck finetune: --sparse: %s\n", speck_last_error());
            exit(2);
        }
        if (o->full || o->resume || o->init || o->block_share > 1) {
            fprintf(stderr, "speck finetune: --sparse cannot be combined with %s\n",
                    o->full ? "--full" : o->resume ? "--resume" : o->init ? "--init" : "--block-share");
            exit(2);
        }
        if (!o->sp.n_params && !(o->sp.density > 0 && o->sp.density <= 1)) {
            fprintf(stderr, "speck finetune: --density %g must be in (0, 1]\n", o->sp.density);
            exit(2);
        }
        if (!(o->sp.drop_fraction >= 0 && o->sp.drop_fraction <= 1)) {
            fprintf(stderr, "speck finetune: --drop-fraction must be in [0, 1]\n");
            exit(2);
        }
        o->sp.total_steps = o->steps, o->sp.seed = o->seed;
    }
    if (o->opt.lr < 0) o->opt.lr = o->full || o->sparse ? 1e-4f : 1e-3f;
    if (o->opt.warmup_steps < 0) o->opt.warmup_steps = o->steps / 20;
    if (o->opt.min_lr < 0) o->opt.min_lr = o->opt.lr / 10;
    o->opt.total_steps = o->steps;
}

// Row b of micro-batch k at step s: a window of T+1 tokens of [0, n_train) drawn from (seed,
// step, micro, row) only (so a resumed run draws the same); targets masked where not trained.
static void sample(const speck_ft_data *d, int64_t n_train, uint64_t seed, int64_t step, int k,
                   int b, int T, int32_t *in, int32_t *tg) {
    uint64_t x = seed * 0x9E3779B97F4A7C15ULL ^ ((uint64_t)step << 20) ^ ((uint64_t)k << 10) ^
                 (uint64_t)b;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    x ^= x >> 31;
    int64_t o = (int64_t)(x % (uint64_t)(n_train - T));
    for (int j = 0; j < T; j++) {
        in[j] = d->tok[o + j];
        tg[j] = d->train[o + j + 1] ? d->tok[o + j + 1] : -1;
    }
}

// The model being trained: a LoRA adapter on a frozen base, or (--full) every weight of
// speck train's model; the loop below calls these and nothing else.
typedef struct {
    speck_lora_trainer *lora;
    speck_train_model *full;
    speck_sparse_ft *sparse; // trains a delta over full's weights (full's AdamW unused)
    const char *base_path; // tokenizer keys of checkpoints and the --full output
} trainer;

static int tr_step(trainer *t, const int32_t *in, const int32_t *tg, int B, int T, float scale,
                   uint64_t key, float *loss) {
    return t->full ? speck_train_step(t->full, in, tg, B, T, scale, loss)
                   : speck_lora_trainer_step(t->lora, in, tg, B, T, scale, key, loss);
}
static int tr_loss(trainer *t, const int32_t *in, const int32_t *tg, int B, int T, float *loss) {
    return t->full ? speck_train_loss(t->full, in, tg, B, T, loss)
                   : speck_lora_trainer_loss(t->lora, in, tg, B, T, loss);
}
static void tr_zero_grad(trainer *t) {
    if (t->sparse) return; // its gradient lives in the delta's positions, zeroed by each step
    if (t->full)
        speck_train_zero_grad(t->full);
    else
        speck_lora_trainer_zero_grad(t->lora);
}
static int tr_adamw(trainer *t, const speck_adamw_params *p, int64_t step, float *gnorm) {
    if (t->sparse) return speck_sparse_ft_step(t->sparse, p, step, gnorm);
    return t->full ? speck_adamw_step(t->full, p, step, gnorm)
                   : speck_lora_trainer_adamw(t->lora, p, step, gnorm);
}
static int tr_ckpt_save(trainer *t, const speck_train_state *st, const char *path) {
    if (t->sparse) return 0; // no checkpoints (--resume is refused)
    return t->full ? speck_train_checkpoint_save(t->full, st, t->base_path, path)
                   : speck_lora_checkpoint_save(t->lora, st, path);
}
static int tr_ckpt_load(trainer *t, const char *path, speck_train_state *st) {
    return t->full ? speck_train_checkpoint_load(t->full, path, st)
                   : speck_lora_checkpoint_load(t->lora, path, st);
}

// Mean loss per trained token over windows of [v0, v1) (stride T), up to n_batches batches.
static int eval_val(trainer *tr, const speck_ft_data *d, int64_t v0, int64_t v1, int B,
                    int T, int n_batches, int32_t *in, int32_t *tg, double *mean) {
    double total = 0, count = 0;
    int64_t w = v0;
    for (int nb = 0; nb < n_batches && w + T < v1; nb++) {
        int rows = 0;
        int64_t c = 0;
        for (; rows < B && w + T < v1; rows++, w += T)
            for (int j = 0; j < T; j++) {
                in[(size_t)rows * T + j] = d->tok[w + j];
                tg[(size_t)rows * T + j] = d->train[w + j + 1] ? d->tok[w + j + 1] : -1;
                c += d->train[w + j + 1] != 0;
            }
        float loss;
        int err = tr_loss(tr, in, tg, rows, T, &loss);
        if (err) return err;
        total += (double)loss * c, count += c;
    }
    if (count == 0) return 1;
    *mean = total / count;
    return 0;
}

// The trained sparse delta as a delta GGUF (f32 values).
static int save_sparse(const speck_sparse_ft *s, const char *out) {
    speck_delta *d = speck_sparse_ft_delta(s);
    int err = d ? speck_delta_save(d, out, SPECK_TYPE_F32) : -1;
    speck_delta_free(d);
    return err;
}

// Block-LoRA saves the equal rank/K plain LoRA (speck_lora_block_collapse).
static int save_adapter(const speck_lora *a, int K, const char *out) {
    if (K <= 1) return speck_lora_save(a, out);
    speck_lora *c = speck_lora_block_collapse(a, K);
    int err = c ? speck_lora_save(c, out) : SPECK_ERR_NOMEM;
    speck_lora_free(c);
    return err;
}

static struct {
    speck_model *m, *m0; // m0: the loaded base when CorDA replaced m by its residual base
    char *base_out;
    speck_vocab *voc;
    speck_lora *a;
    speck_lora_trainer *tr;
    speck_train_model *tm;
    speck_sparse_ft *sp;
    speck_ft_data data;
    char *ckpt, *csv;
    FILE *fcsv;
    int32_t *in, *tg;
} R;

static int run(int argc, char **argv) {
    ft_opts o;
    parse(argc, argv, &o);
    if (o.threads) speck_set_threads(o.threads);
    unsigned targets;
    if (speck_lora_parse_targets(o.targets, &targets)) return cli_fail("finetune");
    o.sp.targets = targets;
    const char *path = cli_model_path("finetune", o.model);
    if (!path) return 1;
    char *ckpt = R.ckpt = o.ckpt ? strdup(o.ckpt) : cli_derived_path(o.out, ".ckpt");
    char *csv = R.csv = o.csv ? strdup(o.csv) : cli_derived_path(o.out, ".csv");
    // The weights stay in the file's row layout: training never reads decode panels.
    speck_model *m = R.m = speck_model_load_ex(path, SPECK_LOAD_NO_PANELS);
    if (!m) return cli_fail("finetune");
    speck_vocab *voc = R.voc = speck_vocab_from_gguf(speck_model_gguf(m));
    if (!voc) return cli_fail("finetune");
    double t0 = cli_now();
    speck_ft_data *d = &R.data;
    if (speck_ft_data_load(o.data, voc, o.tmpl, d)) return cli_fail("finetune");
    // Validation: the last examples holding ~val_fraction of the tokens (of the tokens when
    // there is one example).
    int64_t split = d->n;
    if (o.val_fraction > 0) {
        int64_t want = (int64_t)((1.0 - o.val_fraction) * (double)d->n);
        split = want;
        for (int i = 1; i < d->n_examples && d->n_examples > 1; i++)
            if (d->start[i] >= want) {
                split = d->start[i];
                break;
            }
    }
    const speck_hparams *hp = speck_model_hparams(m);
    int T = o.T < hp->n_ctx_train ? o.T : hp->n_ctx_train;
    if (T > split - 1) T = (int)(split - 1);
    if (T < 2) {
        fprintf(stderr, "speck finetune: %s: too little training text (%lld tokens)\n", o.data,
                (long long)split);
        return 1;
    }
    int64_t n_trained = 0;
    for (int64_t i = 0; i < split; i++) n_trained += d->train[i];
    trainer trn = {.base_path = path}, *tr = &trn;
    speck_lora *a = NULL;
    if (o.sparse) {
        // speck train's model for the gradient; the delta over it is what trains.
        if (!(trn.full = R.tm = speck_train_model_load(path)) ||
            !(trn.sparse = R.sp = speck_sparse_ft_new(trn.full, &o.sp)))
            return cli_fail("finetune");
    } else if (o.full) {
        // speck train's model: every weight in f32 with its gradient and AdamW moments.
        if (!(trn.full = R.tm = speck_train_model_load(path))) return cli_fail("finetune");
        if (cli_nm_apply("finetune", &o.nm, trn.full, o.quiet)) return 1;
    } else {
        const bool lq = o.init && !strcmp(o.init, "lq-lora");
        if (o.calib || lq) { // CorDA / LQ-LoRA: the adapter, and the base that replaces m
            if (!o.base_out) o.base_out = R.base_out = cli_derived_path(o.out, ".base.gguf");
            ft_corda_opts co = {path, o.calib, o.base_out, voc, o.calib_tokens, T, o.rank,
                                o.type, o.alpha, targets, o.calib && !strcmp(o.init, "corda-kpm"),
                                o.quiet,
                                o.resume && access(ckpt, F_OK) == 0 &&
                                    access(o.base_out, F_OK) == 0,
                                o.imatrix, o.bpw, o.lq_iters, o.seed};
            speck_model *res = m;
            if (!(a = R.a = lq ? ft_lqlora_init(&co, &res) : ft_corda_init(&co, &res))) return 1;
            R.m0 = m, R.m = m = res;
        } else if (!(a = R.a = speck_lora_new(m, o.rank, o.alpha, targets, o.seed)))
            return cli_fail("finetune");
        if (!(trn.lora = R.tr = speck_lora_trainer_new(m, a, o.dropout, o.seed)) ||
            (o.block_share > 1 && speck_lora_trainer_set_block_share(R.tr, o.block_share)))
            return cli_fail("finetune");
    }
    if (!o.quiet) {
        fprintf(stderr,
                "data: %d examples, %lld tokens (%lld trained), %lld validation tokens (%.1f s)\n"
                "base: %s (%s, %s), ",
                d->n_examples, (long long)split, (long long)n_trained, (long long)(d->n - split),
                cli_now() - t0, path, hp->arch, speck_type_name(speck_model_weight_type(m)));
        if (o.sparse)
            fprintf(stderr, "sparse fine-tuning (%s): %.3fM parameters of %.3fM; ", o.sparse,
                    speck_sparse_ft_n_params(trn.sparse) / 1e6,
                    speck_train_n_params(trn.full) / 1e6);
        else if (o.full)
            fprintf(stderr, "full fine-tuning: %.3fM parameters in f32; ",
                    speck_train_n_params(trn.full) / 1e6);
        else
            fprintf(stderr, "adapter: rank %d, alpha %g, targets %s, %.3fM parameters%s; ", o.rank,
                    o.alpha, o.targets,
                    speck_lora_block_n_trainable(a, o.block_share) / 1e6,
                    o.block_share > 1                       ? " (Block-LoRA)"
                    : o.init && !strcmp(o.init, "lq-lora") ? " (LQ-LoRA)"
                    : o.calib                              ? " (CorDA)"
                                                           : "");
        fprintf(stderr, "batch %d x %d x %d accum, %d steps, %d threads\n", o.B, T, o.accum,
                o.steps, speck_get_threads());
    }
    speck_train_state st = {0, o.seed};
    if (o.resume && access(ckpt, F_OK) == 0) {
        if (tr_ckpt_load(tr, ckpt, &st)) return cli_fail("finetune");
        if (!o.quiet) fprintf(stderr, "resumed from %s at step %lld\n", ckpt, (long long)st.step);
    }
    FILE *fcsv = R.fcsv = cli_open_csv(csv, st.step, NULL);
    if (!fcsv) {
        fprintf(stderr, "speck finetune: %s: cannot write: %s\n", csv, strerror(errno));
        return 1;
    }
    int32_t *in = R.in = malloc((size_t)o.B * T * sizeof *in);
    int32_t *tg = R.tg = malloc((size_t)o.B * T * sizeof *tg);
    if (!in || !tg) return 1;
    cli_train_log L;
    cli_train_begin(&L, "finetune", fcsv, st.step, o.steps, o.quiet);
    int rc = 0;
    for (int64_t step = st.step; step < o.steps && !cli_stop; step++) {
        double ts = cli_now(), loss_sum = 0;
        tr_zero_grad(tr);
        for (int k = 0; k < o.accum && !rc; k++) {
            for (int b = 0; b < o.B; b++)
                sample(d, split, o.seed, step, k, b, T, in + (size_t)b * T, tg + (size_t)b * T);
            float loss;
            if (tr_step(tr, in, tg, o.B, T, 1.0f / o.accum, (uint64_t)step * 65536 + (uint64_t)k,
                        &loss))
                rc = cli_fail("finetune");
            loss_sum += loss;
        }
        float gnorm = 0;
        if (!rc && tr_adamw(tr, &o.opt, step, &gnorm)) rc = cli_fail("finetune");
        if (rc) break;
        st.step = step + 1;
        const double dt = cli_now() - ts;
        double val = NAN;
        if (o.val_every && split < d->n && (st.step % o.val_every == 0 || st.step == o.steps)) {
            double v;
            int e = eval_val(tr, d, split, d->n, o.B, T, o.val_batches, in, tg, &v);
            if (e < 0) {
                rc = cli_fail("finetune");
                break;
            }
            if (e == 0) val = v;
        }
        cli_train_record(&L, step, loss_sum / o.accum, val, speck_lr_at(&o.opt, step), gnorm,
                         (double)o.B * T * o.accum, dt);
        if (o.ckpt_every && st.step % o.ckpt_every == 0 && st.step < o.steps &&
            tr_ckpt_save(tr, &st, ckpt)) {
            rc = cli_fail("finetune");
            break;
        }
        cli_train_hook(&L, st.step);
    }
    if (!o.quiet) fprintf(stderr, "\n");
    fclose(fcsv);
    R.fcsv = NULL;
    if (!rc) {
        if (tr_ckpt_save(tr, &st, ckpt) ||
            (o.sparse ? save_sparse(trn.sparse, o.out)
             : o.full ? speck_train_export(trn.full, path, (speck_type)o.type,
                                         "speck-finetuned", o.out)
                    : save_adapter(a, o.block_share, o.out)))
            rc = cli_fail("finetune");
        else if (!o.quiet)
            fprintf(stderr, "saved %s%s%s at step %lld\n", o.out,
                    o.sparse ? "" : " and checkpoint ", o.sparse ? "" : ckpt, (long long)st.step);
    }
    return cli_train_end(&L, rc, st.step, o.plot, o.out, csv);
}

int cmd_finetune(int argc, char **argv) {
    memset(&R, 0, sizeof R);
    int rc = run(argc, argv);
    if (R.fcsv) fclose(R.fcsv);
    free(R.in);
    free(R.tg);
    free(R.ckpt);
    free(R.csv);
    speck_ft_data_free(&R.data);
    speck_lora_trainer_free(R.tr);
    speck_sparse_ft_free(R.sp);
    speck_train_model_free(R.tm);
    speck_lora_free(R.a);
    speck_vocab_free(R.voc);
    speck_model_free(R.m);
    speck_model_free(R.m0);
    free(R.base_out);
    return rc;
}
