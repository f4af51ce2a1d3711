// Shared helpers of the speck CLI subcommands.
#ifndef SPECK_CLI_H
#define SPECK_CLI_H

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>

#include "speck.h"

// The weight types the commands write (speck_type_name), for messages and --help.
#define CLI_TYPES                                                                                  \
    "f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, iq4_nl, q2_k, q3_k, q4_k, q5_k, q6_k, iq4_xs"

int cmd_generate(int argc, char **argv);
int cmd_chat(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_bench_decode(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_init(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_tokenizer_train(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_convert(int argc, char **argv);
int cmd_export(int argc, char **argv);
int cmd_quantize(int argc, char **argv);
int cmd_prune(int argc, char **argv);
int cmd_grow(int argc, char **argv);
int cmd_imatrix(int argc, char **argv);
int cmd_serve(int argc, char **argv);

// Option matching: if argv[*i] is `name` (or `alias`) followed by a value, or `name=value`,
// store the value, advance *i and return true. Exits with a message when the value is missing.
bool cli_opt(int argc, char **argv, int *i, const char *name, const char *alias, const char **val);
bool cli_flag(const char *arg, const char *name, const char *alias);
// Strict number parsing; exits with "speck CMD: option: not a number" on junk.
long long cli_int(const char *cmd, const char *opt, const char *s, long long lo, long long hi);
double cli_float(const char *cmd, const char *opt, const char *s);
// Print "speck CMD: <last library error>" and return 1.
int cli_fail(const char *cmd);
// Parse "1,2,3" into ids (malloc'd); returns count or -1.
int cli_parse_ids(const char *s, int32_t **ids);
// The model used when -m is omitted: $SPECK_MODEL, else models/default.gguf in the working
// directory, else found from the executable's location (a checkout's build/speck, or an
// installed PREFIX/bin/speck with PREFIX/share/speck/models). NULL if none exists.
const char *cli_default_model(void);
// path, else the default model; NULL after printing "speck CMD: no model ..." when neither exists.
const char *cli_model_path(const char *cmd, const char *path);
// The same for chat and serve: $SPECK_MODEL, else models/chat.gguf (the chat-tuned code model),
// else models/default.gguf, each looked for as above.
const char *cli_default_chat_model(void);
const char *cli_chat_model_path(const char *cmd, const char *path);
double cli_now(void);
// Median of v (n > 0); sorts v in place.
double cli_median(double *v, int n);
// Sampling options shared by generate/chat/bench-decode (--temp, --top-k, --top-p, --min-p,
// --repeat-penalty, --repeat-last-n, --seed), -t/--threads, --hugepages (sets cli_load_flags)
// and --kv-type. True if argv[*i] was one.
bool cli_sampler_opt(const char *cmd, int argc, char **argv, int *i, speck_sampler_params *sp);
// Whole file, NUL-terminated (malloc'd); NULL with the error recorded.
char *cli_read_file(const char *path, size_t *len);
// Constrained output (docs/grammar.md): --grammar FILE (GBNF), --grammar-text STR,
// --json-schema FILE, --json (any JSON object). True if argv[*i] was one.
typedef struct {
    const char *file, *text, *schema;
    bool json;
} cli_grammar_src;
bool cli_grammar_opt(const char *cmd, int argc, char **argv, int *i, cli_grammar_src *g);
#define CLI_GRAMMAR_HELP                                                                            \
    "  --grammar FILE         constrain the output to a GBNF grammar (docs/grammar.md)\n"           \
    "  --grammar-text STR     the same, the grammar given inline\n"                                 \
    "  --json-schema FILE     constrain the output to JSON valid under a JSON Schema\n"             \
    "  --json                 constrain the output to a JSON object\n"
// The grammar the options chose, or NULL: *err is then set when one was asked for and failed
// (the error recorded), clear when none was.
speck_grammar *cli_grammar_load(const cli_grammar_src *g, bool *err);
// SCMoE self-contrast decoding of a mixture of experts (docs/decoding.md): --scmoe, and
// --scmoe-beta B, --scmoe-alpha A, --scmoe-weak R (each implies --scmoe). True if argv[*i] was one.
typedef struct {
    bool on;
    speck_scmoe_params p;
} cli_scmoe;
bool cli_scmoe_opt(const char *cmd, int argc, char **argv, int *i, cli_scmoe *o);
#define CLI_SCMOE_HELP                                                                              \
    "  --scmoe                self-contrast decoding of a mixture of experts (SCMoE): score\n"      \
    "                         (1+B) z_strong - B z_weak over the tokens with p_strong >= A max\n"   \
    "  --scmoe-beta B         contrast strength (default 0.5; 0 = plain decoding)\n"               \
    "  --scmoe-alpha A        plausibility cut-off (default 0.1)\n"                                \
    "  --scmoe-weak R         the weak path runs the expert the router ranks R-th (default 2;\n"   \
    "                         1 = top-1 routing)\n"
// Load a GGUF file (with cli_load_flags, SPECK_LOAD_*) or a Hugging Face checkpoint directory.
extern unsigned cli_load_flags;
// --kv-type f32|f16|q8_0|q4_0 (or llama.cpp's --cache-type-k/-v, -ctk/-ctv, which must agree):
// the type of the KV caches the commands create (default f16); exits with status 2 on another
// value. True if argv[*i] was the option.
extern speck_type cli_kv_type;
bool cli_kv_opt(const char *cmd, int argc, char **argv, int *i);
// With --lora options given (cli_lora_opt), the adapters are attached, unmerged.
speck_model *cli_load_model(const char *path);
// --lora FILE[:SCALE] (repeatable, default scale 1): adapters cli_load_model attaches. True if
// argv[*i] was one.
bool cli_lora_opt(const char *cmd, int argc, char **argv, int *i);
// --delta FILE (repeatable): fine-tuning deltas cli_load_model adds to the model's weights
// (summed, merged at load: speck_model_load_deltas). True if argv[*i] was one.
bool cli_delta_opt(const char *cmd, int argc, char **argv, int *i);
// Model shape flags (--n-embd, --n-layer, --n-head, --n-head-kv, --n-ff): the value goes into
// the preset's field. True if argv[*i] was one; exits with status 2 on a bad number.
bool cli_shape_opt(const char *cmd, int argc, char **argv, int *i, speck_preset *p);
// Tokenize the text file at text with the vocabulary of vocab_path (a GGUF model, tokenizer.json
// or a Hugging Face directory); add_special adds BOS/EOS as the vocabulary says. Returns the
// count with *ids malloc'd, or -1 after printing "speck CMD: ..." (fewer than 2 tokens is an error).
int64_t cli_tokenize_file(const char *cmd, const char *vocab_path, const char *text, bool add_special,
                          int32_t **ids);

// Training runs (speck train, speck finetune):
// OUT with its .gguf suffix replaced by ext (malloc'd; exits on no memory).
char *cli_derived_path(const char *out, const char *ext);
// The loss-curve CSV, keeping the rows of steps < keep (a resumed run rewrites what came after
// its checkpoint); extra_cols (e.g. ",aux_loss", or NULL) ends a new file's header; NULL if it
// cannot be written.
FILE *cli_open_csv(const char *path, int64_t keep, const char *extra_cols);
// Plot the CSV's train and validation loss into png with gnuplot; -1 (with a message) on failure.
int cli_plot(const char *csv, const char *png);
// "1h02m" / "3m05s" / "?".
void cli_fmt_time(double s, char *buf, size_t n);
// A training loop's bookkeeping (tools/cli_train.c): SIGINT / SIGTERM set cli_stop (the loop
// stops after the step and saves); the test hook SPECK_TRAIN_SIGNAL_AT=N:SIG raises SIG after
// step N, so tests of Ctrl-C and kill -9 do not depend on timing.
extern volatile sig_atomic_t cli_stop;
typedef struct {
    const char *cmd;
    FILE *csv; // the loss curve: step, loss, val (empty when none), lr, gnorm, tok/s[, aux]
    int steps;
    bool moe;   // a mixture of experts: the CSV's last column and the progress line show aux
    double aux; // the step's load-balancing loss (set before cli_train_record)
    bool quiet;
    int64_t step0, hook_step;
    int hook_sig;
    double t_start, tokens_done, last_val, last_print;
} cli_train_log;
void cli_train_begin(cli_train_log *L, const char *cmd, FILE *csv, int64_t step0, int steps,
                     bool quiet);
// After optimizer step `step` (0-based) of `tokens` tokens in dt seconds: the CSV row, the
// progress line (at most ~5 a second, always on validation steps; val NaN when none).
void cli_train_record(cli_train_log *L, int64_t step, double loss, double val, float lr,
                      float gnorm, double tokens, double dt);
// At the end of each step, after any checkpoint: the test hook's signal when it is due.
void cli_train_hook(const cli_train_log *L, int64_t steps_done);
// N:M sparse training options shared by speck train and speck finetune --full: --nm N:M,
// --nm-every K, --nm-lambda X. cli_nm_opt consumes argv[*i] (and its value) when it is one of
// them (exits 2 on a malformed value); cli_nm_apply starts SR-STE on tm when --nm was given
// (1 after printing the error: N >= M, rows not a multiple of M, ...).
typedef struct {
    speck_nm_params p;
    bool every_set, lambda_set;
} cli_nm;
void cli_nm_init(cli_nm *o);
bool cli_nm_opt(const char *cmd, int argc, char **argv, int *i, cli_nm *o);
int cli_nm_apply(const char *cmd, const cli_nm *o, speck_train_model *tm, bool quiet);
// After the loop and the final save: the interrupt message (status 130) and the --plot PNG.
int cli_train_end(cli_train_log *L, int rc, int64_t steps_done, bool plot, const char *out,
                  const char *csv);
int cmd_finetune(int argc, char **argv);
// speck finetune --init corda-*: the CorDA adapter (tools/finetune_init.c), with *m replaced by
// the residual base written to base_out (the caller then frees both models; *m is unchanged on
// error); NULL with the error shown.
typedef struct {
    const char *base_path, *calib, *base_out;
    const speck_vocab *voc;
    int64_t calib_tokens;
    int ctx, rank, type;
    float alpha;
    unsigned targets;
    bool kpm, quiet, reuse_base;
    // --init lq-lora (type: Q's; calib may be NULL): --imatrix, --bits, --lq-iters, --seed
    const char *imatrix;
    double bpw;
    int max_iter;
    uint64_t seed;
} ft_corda_opts;
speck_lora *ft_corda_init(const ft_corda_opts *o, speck_model **m);
// speck finetune --init lq-lora: the same contract, the base written being the quantized Q.
speck_lora *ft_lqlora_init(const ft_corda_opts *o, speck_model **m);

int cmd_adapter(int argc, char **argv);
int cmd_merge(int argc, char **argv);
int cmd_delta(int argc, char **argv);
int cmd_train_accept(int argc, char **argv); // cmd_train_accept.c: SpecDec++ head

#endif
