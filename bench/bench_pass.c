// Pass harness: times speck_forward over n new tokens at a cache depth for several configurations
// (KV cache type, panels, huge pages, model file) alternated pass by pass in one process.
//
// Why in one process, pass by pass: this project's VM changes its memory bandwidth by tens of
// percent from minute to minute, so two configurations timed one after the other compare two
// machines. Here every round times each configuration once (the order rotated each round, so
// none is always first), and each configuration is compared with the first through the median
// of the per-round ratios, which cancels the drift both saw.
//
// Built by CMake as `bench_pass`; run with `env -u OPENBLAS_CORETYPE` (this VM's environment
// sets it to Haswell, which halves OpenBLAS sgemm, used by passes of 16+ tokens). `--help` has
// the options. bench/bench_pass_builds.sh compiles this file against another revision's library
// to compare two builds; BENCH_PASS_OLD_API then drops what older libraries lack.
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "speck.h"

#ifndef SPECK_LOAD_HUGEPAGES
#define BENCH_PASS_NO_LOAD_FLAGS 1
#endif

#define MAX_CONFIGS 16
#define MAX_NS 32

typedef struct {
    char name[160];
    const char *path;
    int kv_f16; // KV cache stored as f16
    int panels; // panel copies (the loader's default)
    int hugepages;
    speck_model *model; // shared between configurations with the same file and load flags
    speck_ctx *ctx;
} config;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

// Quantile q of v[0..n) by linear interpolation between order statistics (v is sorted here).
static double quantile(double *v, int n, double q) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    double p = q * (n - 1);
    int i = (int)p;
    if (i + 1 >= n) return v[n - 1];
    return v[i] + (p - i) * (v[i + 1] - v[i]);
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: bench_pass [-m MODEL] [-c CONFIG]... [-d DEPTH] [-n N[,N...]] [-r ROUNDS]\n"
            "                  [-w WARMUP] [-k INNER] [-t THREADS] [--last] [--seed S] [--isa NAME] [--json]\n"
            "\n"
            "Fills a KV cache with DEPTH random tokens, then times speck_forward over N new tokens\n"
            "(truncated back to DEPTH after each pass) for every configuration, alternated pass by\n"
            "pass (round r starts at configuration r mod C). Reports per configuration and N the\n"
            "median time, and its time over the first configuration's as the median of the\n"
            "per-round ratios with their 25th-75th percentiles (< 1: faster than the first), and\n"
            "the ratio of the fastest passes (steadier when other processes interrupt most passes).\n"
            "\n"
            "  -m, --model PATH    the model of every configuration that names none\n"
            "                      (default: $SPECK_MODEL, else models/default.gguf)\n"
            "  -c, --config SPEC   a configuration, repeatable; the first is the baseline. SPEC is\n"
            "                      comma-separated key=value:\n"
            "                        kv=f32|f16          KV cache type (default f16, as the CLI)\n"
            "                        panels=on|off       off: SPECK_LOAD_NO_PANELS (default on)\n"
            "                        hugepages=on|off    on: SPECK_LOAD_HUGEPAGES (default off)\n"
            "                        model=PATH          another file\n"
            "                      Configurations with the same file and load flags share one\n"
            "                      loaded model (each has its own context).\n"
            "                      Default: -c kv=f32 -c kv=f16.\n"
            "  -d, --depth D       cached tokens before each pass (default 128)\n"
            "  -n, --tokens LIST   new tokens per pass, e.g. 1,2,4,8 (default 1)\n"
            "  -r, --reps R        timed rounds (default 15)\n"
            "  -w, --warmup W      untimed rounds first (default 2)\n"
            "  -k, --inner K       passes per timed sample, their mean (default 1; for passes of\n"
            "                      well under a millisecond, which a timer tick or an interrupt\n"
            "                      would otherwise dominate)\n"
            "  -t, --threads T     threads (default: all cores)\n"
            "  --last              logits of the last row only (decoding) instead of all N rows\n"
            "                      (a verification pass, the default)\n"
            "  --seed S            seed of the random tokens (default 1)\n"
            "  --isa NAME          kernel path, as SPECK_ISA (avx2, scalar; also read from it)\n"
            "  --json              JSON on stdout instead of the table\n");
}

static int parse_onoff(const char *v, int *out) {
    if (!strcmp(v, "on") || !strcmp(v, "1")) return *out = 1, 0;
    if (!strcmp(v, "off") || !strcmp(v, "0")) return *out = 0, 0;
    return -1;
}

// Parses SPEC into c (defaults first). spec is modified (strtok).
static int parse_config(char *spec, config *c) {
    memset(c, 0, sizeof *c);
    c->kv_f16 = 1, c->panels = 1;
    snprintf(c->name, sizeof c->name, "%s", spec);
    for (char *save = NULL, *kv = strtok_r(spec, ",", &save); kv; kv = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(kv, '=');
        if (!eq) {
            fprintf(stderr, "bench_pass: config item '%s' is not key=value\n", kv);
            return -1;
        }
        *eq = 0;
        const char *k = kv, *v = eq + 1;
        int bad = 0;
        if (!strcmp(k, "kv")) {
            if (!strcmp(v, "f16")) c->kv_f16 = 1;
            else if (!strcmp(v, "f32")) c->kv_f16 = 0;
            else bad = 1;
        } else if (!strcmp(k, "panels")) bad = parse_onoff(v, &c->panels);
        else if (!strcmp(k, "hugepages")) bad = parse_onoff(v, &c->hugepages);
        else if (!strcmp(k, "model")) c->path = v;
        else {
            fprintf(stderr, "bench_pass: unknown config key '%s' (kv, panels, hugepages, model)\n", k);
            return -1;
        }
        if (bad) {
            fprintf(stderr, "bench_pass: bad value '%s' for config key '%s'\n", v, k);
            return -1;
        }
    }
    return 0;
}

static unsigned load_flags(const config *c) {
    unsigned f = 0;
#ifndef BENCH_PASS_NO_LOAD_FLAGS
    if (c->hugepages) f |= SPECK_LOAD_HUGEPAGES;
#ifdef SPECK_LOAD_NO_PANELS
    if (!c->panels) f |= SPECK_LOAD_NO_PANELS;
#endif
#endif
    return f;
}

static speck_model *load(const config *c) {
#ifdef BENCH_PASS_NO_LOAD_FLAGS
    return speck_model_load(c->path);
#else
    return speck_model_load_ex(c->path, load_flags(c));
#endif
}

static speck_ctx *new_ctx(const config *c, int n_ctx) {
#ifdef BENCH_PASS_OLD_API
    (void)c;
    return speck_ctx_new(c->model, n_ctx);
#else
    return speck_ctx_new_kv(c->model, n_ctx, c->kv_f16 ? SPECK_TYPE_F16 : SPECK_TYPE_F32);
#endif
}

static uint64_t rng_next(uint64_t *s) {
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return *s >> 33;
}

static void json_str(const char *s) {
    putchar('"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') putchar('\\');
        putchar(*s);
    }
    putchar('"');
}

int main(int argc, char **argv) {
    config cfg[MAX_CONFIGS];
    char *specs[MAX_CONFIGS];
    int n_cfg = 0, ns[MAX_NS], n_ns = 0, depth = 128, reps = 15, warmup = 2, threads = 0, inner = 1;
    int last_only = 0, json = 0;
    uint64_t seed = 1;
    const char *model_path = getenv("SPECK_MODEL"), *isa = getenv("SPECK_ISA");
    if (!model_path || !*model_path) model_path = "models/default.gguf";

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--last")) {
            last_only = 1;
            continue;
        } else if (!strcmp(a, "--json")) {
            json = 1;
            continue;
        }
        // Every other option takes a value.
        char *v = i + 1 < argc ? argv[++i] : NULL;
        if (!v) {
            fprintf(stderr, "bench_pass: %s needs a value (see --help)\n", a);
            return 2;
        }
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) model_path = v;
        else if (!strcmp(a, "-c") || !strcmp(a, "--config")) {
            if (n_cfg == MAX_CONFIGS) {
                fprintf(stderr, "bench_pass: at most %d configurations\n", MAX_CONFIGS);
                return 2;
            }
            specs[n_cfg++] = v;
        } else if (!strcmp(a, "-d") || !strcmp(a, "--depth")) depth = atoi(v);
        else if (!strcmp(a, "-r") || !strcmp(a, "--reps")) reps = atoi(v);
        else if (!strcmp(a, "-w") || !strcmp(a, "--warmup")) warmup = atoi(v);
        else if (!strcmp(a, "-k") || !strcmp(a, "--inner")) inner = atoi(v);
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) threads = atoi(v);
        else if (!strcmp(a, "--seed")) seed = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--isa")) isa = v;
        else if (!strcmp(a, "-n") || !strcmp(a, "--tokens")) {
            for (char *save = NULL, *t = strtok_r(v, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
                if (n_ns == MAX_NS || atoi(t) < 1) {
                    fprintf(stderr, "bench_pass: -n takes up to %d counts >= 1\n", MAX_NS);
                    return 2;
                }
                ns[n_ns++] = atoi(t);
            }
        } else {
            fprintf(stderr, "bench_pass: unknown argument '%s' (see --help)\n", a);
            return 2;
        }
    }
    if (depth < 0 || reps < 1 || warmup < 0 || inner < 1) {
        fprintf(stderr, "bench_pass: need depth >= 0, reps >= 1, warmup >= 0, inner >= 1\n");
        return 2;
    }
    if (!n_ns) ns[n_ns++] = 1;
    static char def0[] = "kv=f32", def1[] = "kv=f16";
    if (!n_cfg) specs[n_cfg++] = def0, specs[n_cfg++] = def1;
    for (int c = 0; c < n_cfg; c++) {
        if (parse_config(specs[c], &cfg[c])) return 2;
        if (!cfg[c].path) cfg[c].path = model_path;
#ifdef BENCH_PASS_OLD_API
        if (cfg[c].kv_f16) {
            fprintf(stderr, "bench_pass: this build's library has no f16 KV cache: use kv=f32\n");
            return 2;
        }
#endif
    }
    if (isa && *isa) {
#ifdef BENCH_PASS_NO_SET_ISA
        fprintf(stderr, "bench_pass: this build's library cannot change the kernel path\n");
        return 2;
#else
        if (speck_set_isa(isa)) {
            fprintf(stderr, "bench_pass: %s\n", speck_last_error());
            return 2;
        }
#endif
    }
    if (threads > 0) speck_set_threads(threads);

    int max_n = 0;
    for (int j = 0; j < n_ns; j++)
        if (ns[j] > max_n) max_n = ns[j];
    const int n_ctx = depth + max_n;

    // Models (shared where file and flags match), then one context each, filled alike.
    int n_vocab = 0;
    for (int c = 0; c < n_cfg; c++) {
        for (int p = 0; p < c && !cfg[c].model; p++)
            if (!strcmp(cfg[p].path, cfg[c].path) && load_flags(&cfg[p]) == load_flags(&cfg[c]))
                cfg[c].model = cfg[p].model;
        if (!cfg[c].model && !(cfg[c].model = load(&cfg[c]))) {
            fprintf(stderr, "bench_pass: %s\n", speck_last_error());
            return 1;
        }
        int v = speck_model_hparams(cfg[c].model)->n_vocab;
        if (n_vocab && v != n_vocab) {
            fprintf(stderr, "bench_pass: configurations need models with one vocabulary size\n");
            return 1;
        }
        n_vocab = v;
        if (!(cfg[c].ctx = new_ctx(&cfg[c], n_ctx))) {
            fprintf(stderr, "bench_pass: %s\n", speck_last_error());
            return 1;
        }
    }
    int32_t *fill = malloc(sizeof(int32_t) * (size_t)(depth + 1));
    int32_t *toks = malloc(sizeof(int32_t) * (size_t)max_n);
    float *logits = malloc(sizeof(float) * (size_t)max_n * (size_t)n_vocab);
    int *out_rows = malloc(sizeof(int) * (size_t)max_n);
    double *times = malloc(sizeof(double) * (size_t)n_cfg * n_ns * reps);
    double *scratch = malloc(sizeof(double) * (size_t)reps);
    if (!fill || !toks || !logits || !out_rows || !times || !scratch) {
        fprintf(stderr, "bench_pass: out of memory\n");
        return 1;
    }
    uint64_t s = seed;
    for (int i = 0; i < depth; i++) fill[i] = (int32_t)(rng_next(&s) % (uint64_t)n_vocab);
    for (int i = 0; i < max_n; i++) toks[i] = (int32_t)(rng_next(&s) % (uint64_t)n_vocab);
    for (int c = 0; c < n_cfg; c++) {
        int last = depth - 1;
        if (depth && speck_forward(cfg[c].ctx, depth, fill, NULL, NULL, &last, 1, logits)) {
            fprintf(stderr, "bench_pass: filling the cache: %s\n", speck_last_error());
            return 1;
        }
    }

    for (int round = -warmup; round < reps; round++) {
        for (int j = 0; j < n_ns; j++) {
            const int n = ns[j];
            for (int k = 0; k < n_cfg; k++) {
                const int c = (k + (round < 0 ? 0 : round)) % n_cfg;
                int n_out = last_only ? 1 : n;
                for (int r = 0; r < n_out; r++) out_rows[r] = last_only ? n - 1 : r;
                double t = 0;
                for (int q = 0; q < inner; q++) {
                    double t1 = now();
                    int rc = speck_forward(cfg[c].ctx, n, toks, NULL, NULL, out_rows, n_out, logits);
                    t += now() - t1; // the truncation is not part of a pass
                    if (rc || speck_ctx_truncate(cfg[c].ctx, depth)) {
                        fprintf(stderr, "bench_pass: %s\n", speck_last_error());
                        return 1;
                    }
                }
                if (round >= 0) times[((size_t)c * n_ns + j) * reps + round] = t / inner;
            }
        }
    }

    // Summaries: median time, min / max, and the paired ratio against configuration 0.
    const char *isa_used = speck_isa();
    if (json) {
        printf("{\"depth\": %d, \"reps\": %d, \"warmup\": %d, \"inner\": %d, \"threads\": %d, "
               "\"isa\": ",
               depth, reps, warmup, inner, speck_get_threads());
        json_str(isa_used);
        printf(", \"logits\": \"%s\", \"configs\": [", last_only ? "last" : "all");
        for (int c = 0; c < n_cfg; c++) {
            printf("%s{\"name\": ", c ? ", " : "");
            json_str(cfg[c].name);
            printf(", \"model\": ");
            json_str(cfg[c].path);
            printf(", \"kv\": \"%s\", \"panels\": %s, \"hugepages\": %s}", cfg[c].kv_f16 ? "f16" : "f32",
                   cfg[c].panels ? "true" : "false", cfg[c].hugepages ? "true" : "false");
        }
        printf("], \"results\": [");
    } else {
        printf("bench_pass: depth %d, %d rounds after %d untimed, %d pass(es) per sample, %d threads, "
               "%s path, logits of %s\n",
               depth, reps, warmup, inner, speck_get_threads(), isa_used,
               last_only ? "the last row" : "every row");
        for (int c = 0; c < n_cfg; c++)
            printf("  config %d: %s (model %s)\n", c, cfg[c].name, cfg[c].path);
    }
    int first = 1;
    for (int j = 0; j < n_ns; j++) {
        if (!json) {
            printf("\nn = %d\n| config | median ms | min-max ms | tok/s | time / config 0 (paired median) "
                   "| p25-p75 | best / config 0 best |\n|---|---:|---:|---:|---:|---:|---:|\n",
                   ns[j]);
        }
        for (int c = 0; c < n_cfg; c++) {
            const double *t = &times[((size_t)c * n_ns + j) * reps];
            const double *t0 = &times[(size_t)j * reps];
            // Under heavy load from other processes most passes are interrupted; the fastest
            // pass of each configuration is then the steadier estimate of what it costs.
            double lo0 = t0[0];
            for (int r = 1; r < reps; r++)
                if (t0[r] < lo0) lo0 = t0[r];
            for (int r = 0; r < reps; r++) scratch[r] = t[r];
            double med = quantile(scratch, reps, 0.5), lo = scratch[0], hi = scratch[reps - 1];
            for (int r = 0; r < reps; r++) scratch[r] = t[r] / t0[r];
            double rmed = quantile(scratch, reps, 0.5), r25 = quantile(scratch, reps, 0.25),
                   r75 = quantile(scratch, reps, 0.75);
            if (json) {
                printf("%s{\"n\": %d, \"config\": ", first ? "" : ", ", ns[j]);
                json_str(cfg[c].name);
                printf(", \"median_ms\": %.4f, \"min_ms\": %.4f, \"max_ms\": %.4f, \"tok_s\": %.2f, "
                       "\"ratio_median\": %.4f, \"ratio_p25\": %.4f, \"ratio_p75\": %.4f, "
                       "\"ratio_best\": %.4f, \"times_ms\": [",
                       med * 1e3, lo * 1e3, hi * 1e3, ns[j] / med, rmed, r25, r75, lo / lo0);
                for (int r = 0; r < reps; r++) printf("%s%.4f", r ? ", " : "", t[r] * 1e3);
                printf("]}");
                first = 0;
            } else {
                printf("| %s | %.3f | %.3f-%.3f | %.1f | %.3fx | %.3f-%.3f | %.3fx |\n", cfg[c].name,
                       med * 1e3, lo * 1e3, hi * 1e3, ns[j] / med, rmed, r25, r75, lo / lo0);
            }
        }
    }
    if (json) printf("]}\n");

    for (int c = 0; c < n_cfg; c++) speck_ctx_free(cfg[c].ctx);
    for (int c = 0; c < n_cfg; c++) {
        int shared = 0;
        for (int p = 0; p < c; p++) shared |= cfg[p].model == cfg[c].model;
        if (!shared) speck_model_free(cfg[c].model);
    }
    free(fill), free(toks), free(logits), free(out_rows), free(times), free(scratch);
    return 0;
}
