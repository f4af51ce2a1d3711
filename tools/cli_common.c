// Helpers shared by the CLI subcommands: option parsing, errors, timing.
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

bool cli_flag(const char *arg, const char *name, const char *alias) {
    return !strcmp(arg, name) || (alias && !strcmp(arg, alias));
}

bool cli_opt(int argc, char **argv, int *i, const char *name, const char *alias, const char **val) {
    const char *a = argv[*i];
    size_t n = strlen(name);
    if (!strncmp(a, name, n) && a[n] == '=') {
        *val = a + n + 1;
        return true;
    }
    if (!cli_flag(a, name, alias)) return false;
    if (*i + 1 >= argc) {
        fprintf(stderr, "speck: option %s needs a value\n", name);
        exit(2);
    }
    *val = argv[++*i];
    return true;
}

long long cli_int(const char *cmd, const char *opt, const char *s, long long lo, long long hi) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "speck %s: %s: '%s' is not an integer in [%lld, %lld]\n", cmd, opt, s, lo,
                hi);
        exit(2);
    }
    return v;
}

double cli_float(const char *cmd, const char *opt, const char *s) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end) {
        fprintf(stderr, "speck %s: %s: '%s' is not a number\n", cmd, opt, s);
        exit(2);
    }
    return v;
}

int cli_fail(const char *cmd) {
    fprintf(stderr, "speck %s: %s\n", cmd, speck_last_error());
    return 1;
}

int cli_parse_ids(const char *s, int32_t **ids) {
    int cap = 16, n = 0;
    int32_t *v = malloc((size_t)cap * sizeof *v);
    const char *p = s;
    while (v && *p) {
        char *end;
        errno = 0;
        long x = strtol(p, &end, 10);
        if (end == p || errno || x < 0 || x > INT32_MAX) {
            free(v);
            return -1;
        }
        if (n == cap) {
            int32_t *w = realloc(v, (size_t)(cap *= 2) * sizeof *v);
            if (!w) break;
            v = w;
        }
        v[n++] = (int32_t)x;
        p = end;
        while (*p == ',' || *p == ' ') p++;
    }
    *ids = v;
    return v ? n : -1;
}

// Where a shipped model (models/FILE) may be: the working directory's models/ (a checkout), then
// relative to the executable: build/speck in a checkout ("../models"), an install under PREFIX/bin
// ("../share/speck/models", where `cmake --install` puts it).
static const char *find_shipped(const char *file) {
    static char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "models/%s", file);
    if (access(path, R_OK) == 0) return path;
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) return NULL;
    exe[n] = 0;
    char *slash = strrchr(exe, '/');
    if (!slash) return NULL;
    *slash = 0;
    static const char *rel[] = {"../models", "../share/speck/models"};
    for (size_t i = 0; i < sizeof rel / sizeof rel[0]; i++) {
        snprintf(path, sizeof path, "%s/%s/%s", exe, rel[i], file);
        if (access(path, R_OK) == 0) return path;
    }
    return NULL;
}

const char *cli_default_model(void) {
    const char *env = getenv("SPECK_MODEL");
    if (env && *env) return env;
    return find_shipped("default.gguf");
}

// chat and serve answer requests: the chat-tuned model (models/chat.gguf, docs/adaptation.md)
// when it is there, else the code model.
const char *cli_default_chat_model(void) {
    const char *env = getenv("SPECK_MODEL");
    if (env && *env) return env;
    const char *p = find_shipped("chat.gguf");
    return p ? p : find_shipped("default.gguf");
}

double cli_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

unsigned cli_load_flags = 0;
// f16 like llama.cpp: half the memory, and at depth faster (tinyllama-1.1b Q4_0 at 1024 cached
// tokens: 0.91x the time of an f32 cache per token; docs/engine.md).
speck_type cli_kv_type = SPECK_TYPE_F16;

bool cli_kv_opt(const char *cmd, int argc, char **argv, int *i) {
    // --kv-type sets keys and values; llama.cpp's --cache-type-k / -ctk and --cache-type-v / -ctv
    // are accepted too, but speck keeps both in one type, so they must agree.
    static const char *names[3] = {"--kv-type", "--cache-type-k", "--cache-type-v"};
    static int given[3] = {-1, -1, -1}; // the type each option last set
    const char *v = NULL;
    int o = 0;
    if (cli_opt(argc, argv, i, "--kv-type", NULL, &v))
        o = 0;
    else if (cli_opt(argc, argv, i, "--cache-type-k", "-ctk", &v))
        o = 1;
    else if (cli_opt(argc, argv, i, "--cache-type-v", "-ctv", &v))
        o = 2;
    else
        return false;
    const int t = speck_type_from_name(v);
    if (t != SPECK_TYPE_F32 && t != SPECK_TYPE_F16 && t != SPECK_TYPE_Q8_0 &&
        t != SPECK_TYPE_Q4_0) {
        fprintf(stderr, "speck %s: %s: '%s' is not a KV cache type (f32, f16, q8_0, q4_0)\n", cmd,
                names[o], v);
        exit(2);
    }
    given[o] = t;
    if (o && given[3 - o] >= 0 && given[3 - o] != t) {
        fprintf(stderr,
                "speck %s: %s %s and %s %s differ: speck stores keys and values in one type "
                "(--kv-type)\n",
                cmd, names[1], speck_type_name(given[1]), names[2], speck_type_name(given[2]));
        exit(2);
    }
    cli_kv_type = (speck_type)t;
    return true;
}

static const char *model_path(const char *cmd, const char *path, const char *(*dflt)(void)) {
    if (!path) path = dflt();
    if (!path)
        fprintf(stderr, "speck %s: no model: pass -m FILE.gguf (no default model found)\n", cmd);
    return path;
}

const char *cli_model_path(const char *cmd, const char *path) {
    return model_path(cmd, path, cli_default_model);
}

const char *cli_chat_model_path(const char *cmd, const char *path) {
    return model_path(cmd, path, cli_default_chat_model);
}

#define CLI_MAX_LORA 16
static const char *g_lora_path[CLI_MAX_LORA];
static float g_lora_scale[CLI_MAX_LORA];
static int g_n_lora;

bool cli_lora_opt(const char *cmd, int argc, char **argv, int *i) {
    const char *v;
    if (!cli_opt(argc, argv, i, "--lora", NULL, &v)) return false;
    if (g_n_lora == CLI_MAX_LORA) {
        fprintf(stderr, "speck %s: --lora: at most %d adapters\n", cmd, CLI_MAX_LORA);
        exit(2);
    }
    // FILE or FILE:SCALE (a path may hold ':' itself: only a number after the last one is a scale)
    float scale = 1.0f;
    const char *colon = strrchr(v, ':');
    size_t n = strlen(v);
    if (colon && colon[1]) {
        char *end;
        double d = strtod(colon + 1, &end);
        if (*end == 0) scale = (float)d, n = (size_t)(colon - v);
    }
    char *p = strndup(v, n);
    if (!p) exit(1);
    g_lora_path[g_n_lora] = p;
    g_lora_scale[g_n_lora++] = scale;
    return true;
}

static const char *g_delta_path[CLI_MAX_LORA];
static int g_n_delta;

bool cli_delta_opt(const char *cmd, int argc, char **argv, int *i) {
    const char *v;
    if (!cli_opt(argc, argv, i, "--delta", NULL, &v)) return false;
    if (g_n_delta == CLI_MAX_LORA) {
        fprintf(stderr, "speck %s: --delta: at most %d deltas\n", cmd, CLI_MAX_LORA);
        exit(2);
    }
    g_delta_path[g_n_delta++] = v;
    return true;
}

speck_model *cli_load_model(const char *path) {
    // A directory is a Hugging Face checkpoint: converted on the fly (speck_model_load_hf).
    struct stat st;
    speck_model *m = stat(path, &st) == 0 && S_ISDIR(st.st_mode)
                         ? speck_model_load_hf(path)
                         : speck_model_load_deltas(path, g_delta_path, g_n_delta, cli_load_flags);
    for (int i = 0; m && i < g_n_lora; i++) {
        speck_lora *a = speck_lora_load(g_lora_path[i]);
        int err = a ? speck_model_lora_add(m, a, g_lora_scale[i]) : -1;
        if (err && a) {
            char msg[512];
            snprintf(msg, sizeof msg, "%s", speck_last_error());
            speck_set_error(SPECK_ERR_ARG, "--lora %s: %s", g_lora_path[i], msg);
        }
        speck_lora_free(a);
        if (err) {
            speck_model_free(m);
            return NULL;
        }
    }
    return m;
}

bool cli_sampler_opt(const char *cmd, int argc, char **argv, int *i, speck_sampler_params *sp) {
    const char *v;
    if (cli_opt(argc, argv, i, "--temp", NULL, &v))
        sp->temperature = (float)cli_float(cmd, "--temp", v);
    else if (cli_opt(argc, argv, i, "--top-k", NULL, &v))
        sp->top_k = (int)cli_int(cmd, "--top-k", v, 0, 1 << 30);
    else if (cli_opt(argc, argv, i, "--top-p", NULL, &v))
        sp->top_p = (float)cli_float(cmd, "--top-p", v);
    else if (cli_opt(argc, argv, i, "--min-p", NULL, &v))
        sp->min_p = (float)cli_float(cmd, "--min-p", v);
    else if (cli_opt(argc, argv, i, "--repeat-penalty", NULL, &v))
        sp->repeat_penalty = (float)cli_float(cmd, "--repeat-penalty", v);
    else if (cli_opt(argc, argv, i, "--repeat-last-n", NULL, &v))
        sp->repeat_last_n = (int)cli_int(cmd, "--repeat-last-n", v, 0, 1 << 20);
    else if (cli_opt(argc, argv, i, "--seed", NULL, &v))
        sp->seed = (uint64_t)cli_int(cmd, "--seed", v, 0, INT64_MAX);
    else if (cli_opt(argc, argv, i, "--threads", "-t", &v))
        speck_set_threads((int)cli_int(cmd, "--threads", v, 1, 4096));
    else if (cli_flag(argv[*i], "--hugepages", NULL))
        cli_load_flags |= SPECK_LOAD_HUGEPAGES;
    else if (cli_kv_opt(cmd, argc, argv, i) || cli_lora_opt(cmd, argc, argv, i) ||
             cli_delta_opt(cmd, argc, argv, i))
        return true;
    else
        return false;
    return true;
}

bool cli_scmoe_opt(const char *cmd, int argc, char **argv, int *i, cli_scmoe *o) {
    const char *v;
    if (!o->on && !o->p.weak_rank) o->p = speck_scmoe_default();
    if (cli_flag(argv[*i], "--scmoe", NULL))
        ;
    else if (cli_opt(argc, argv, i, "--scmoe-beta", NULL, &v))
        o->p.beta = (float)cli_float(cmd, "--scmoe-beta", v);
    else if (cli_opt(argc, argv, i, "--scmoe-alpha", NULL, &v))
        o->p.alpha = (float)cli_float(cmd, "--scmoe-alpha", v);
    else if (cli_opt(argc, argv, i, "--scmoe-weak", NULL, &v))
        o->p.weak_rank = (int)cli_int(cmd, "--scmoe-weak", v, 1, 1 << 16);
    else
        return false;
    o->on = true;
    return true;
}

bool cli_grammar_opt(const char *cmd, int argc, char **argv, int *i, cli_grammar_src *g) {
    (void)cmd;
    const char *v;
    if (cli_opt(argc, argv, i, "--grammar", NULL, &v))
        g->file = v;
    else if (cli_opt(argc, argv, i, "--grammar-text", NULL, &v))
        g->text = v;
    else if (cli_opt(argc, argv, i, "--json-schema", NULL, &v))
        g->schema = v;
    else if (cli_flag(argv[*i], "--json", NULL))
        g->json = true;
    else
        return false;
    return true;
}

speck_grammar *cli_grammar_load(const cli_grammar_src *g, bool *err) {
    *err = false;
    int n = (g->file != NULL) + (g->text != NULL) + (g->schema != NULL) + g->json;
    if (n == 0) return NULL;
    *err = true;
    if (n > 1) {
        speck_set_error(SPECK_ERR_ARG,
                        "--grammar, --grammar-text, --json-schema and --json: give one");
        return NULL;
    }
    if (g->json) {
        speck_grammar *gr = speck_grammar_json_object();
        *err = gr == NULL;
        return gr;
    }
    if (g->text) {
        speck_grammar *gr = speck_grammar_parse(g->text, strlen(g->text));
        *err = gr == NULL;
        return gr;
    }
    const char *path = g->file ? g->file : g->schema;
    size_t len;
    char *txt = cli_read_file(path, &len);
    if (!txt) return NULL;
    speck_grammar *gr = g->file ? speck_grammar_parse(txt, len)
                                : speck_grammar_from_json_schema(txt, len);
    free(txt);
    if (!gr) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", speck_last_error());
        speck_set_error(SPECK_ERR_ARG, "%s: %s", path, msg);
        return NULL;
    }
    *err = false;
    return gr;
}

char *cli_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        speck_set_error(SPECK_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    size_t got;
    while (buf && (got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            char *b = realloc(buf, (cap *= 2) + 1);
            if (!b) {
                free(buf);
                buf = NULL;
            }
            buf = b;
        }
    }
    int bad = ferror(f);
    fclose(f);
    if (!buf || bad) {
        free(buf);
        speck_set_error(SPECK_ERR_IO, "%s: read failed", path);
        return NULL;
    }
    buf[n] = 0;
    *len = n;
    return buf;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

double cli_median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

bool cli_shape_opt(const char *cmd, int argc, char **argv, int *i, speck_preset *p) {
    const struct {
        const char *flag;
        int *dst;
    } opts[] = {{"--n-embd", &p->n_embd},
                {"--n-layer", &p->n_layer},
                {"--n-head", &p->n_head},
                {"--n-head-kv", &p->n_head_kv},
                {"--n-ff", &p->n_ff}};
    for (size_t k = 0; k < sizeof opts / sizeof opts[0]; k++) {
        const char *v;
        if (cli_opt(argc, argv, i, opts[k].flag, NULL, &v)) {
            *opts[k].dst = (int)cli_int(cmd, opts[k].flag, v, 1, 1 << 20);
            return true;
        }
    }
    return false;
}

int64_t cli_tokenize_file(const char *cmd, const char *vocab_path, const char *text, bool add_special,
                          int32_t **ids) {
    *ids = NULL;
    size_t len = 0;
    char *buf = cli_read_file(text, &len);
    speck_vocab *v = buf ? speck_vocab_load(vocab_path) : NULL;
    int64_t n = -1;
    if (v && (*ids = malloc((len + 2) * sizeof **ids)))
        n = speck_tokenize(v, buf, len, add_special, false, *ids, (int64_t)len + 2);
    else if (v)
        speck_set_error(SPECK_ERR_NOMEM, "out of memory");
    speck_vocab_free(v);
    free(buf);
    if (n < 0) {
        cli_fail(cmd);
    } else if (n < 2) {
        fprintf(stderr, "speck %s: %s: fewer than 2 tokens of text\n", cmd, text);
        n = -1;
    }
    if (n < 0) {
        free(*ids);
        *ids = NULL;
    }
    return n;
}

/* ---- training runs (speck train, speck finetune) ---- */

char *cli_derived_path(const char *out, const char *ext) {
    size_t n = strlen(out);
    const char *dot = n > 5 && !strcmp(out + n - 5, ".gguf") ? out + n - 5 : out + n;
    char *s = malloc((size_t)(dot - out) + strlen(ext) + 1);
    if (!s) exit(1);
    memcpy(s, out, (size_t)(dot - out));
    strcpy(s + (dot - out), ext);
    return s;
}

// Keep the CSV rows of steps < keep (a resumed run rewrites what came after its checkpoint).
FILE *cli_open_csv(const char *path, int64_t keep, const char *extra_cols) {
    FILE *in = keep > 0 ? fopen(path, "r") : NULL;
    char *kept = NULL;
    size_t kn = 0;
    if (in) {
        FILE *m = open_memstream(&kept, &kn);
        char line[512];
        while (fgets(line, sizeof line, in))
            if (!strncmp(line, "step,", 5) || atoll(line) < keep) fputs(line, m);
        fclose(m);
        fclose(in);
    }
    FILE *f = fopen(path, "w");
    if (!f) return NULL;
    if (kept && kn)
        fwrite(kept, 1, kn, f);
    else
        fprintf(f, "step,train_loss,val_loss,lr,grad_norm,tokens_per_s%s\n",
                extra_cols ? extra_cols : "");
    free(kept);
    fflush(f);
    return f;
}

int cli_plot(const char *csv, const char *png) {
    char *gp = cli_derived_path(png, ".gp");
    FILE *f = fopen(gp, "w");
    if (!f) return -1;
    fprintf(f,
            "set terminal png size 900,540\nset output '%s'\nset datafile separator ','\n"
            "set key autotitle columnhead\nset xlabel 'step'\nset ylabel 'loss (nats/token)'\n"
            "set grid\nplot '%s' using 1:2 with lines title 'train', "
            "'' using 1:($3 == $3 ? $3 : 1/0) with linespoints title 'validation'\n",
            png, csv);
    fclose(f);
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "gnuplot '%s' 2>&1", gp);
    int rc = system(cmd);
    unlink(gp);
    free(gp);
    if (rc != 0) {
        fprintf(stderr, "speck: --plot: gnuplot failed or is not installed "
                        "(apt-get install gnuplot-nox)\n");
        return -1;
    }
    return 0;
}

void cli_fmt_time(double s, char *buf, size_t n) {
    if (!(s >= 0) || s > 1e7)
        snprintf(buf, n, "?");
    else if (s >= 3600)
        snprintf(buf, n, "%dh%02dm", (int)(s / 3600), (int)(s / 60) % 60);
    else
        snprintf(buf, n, "%dm%02ds", (int)(s / 60), (int)s % 60);
}
