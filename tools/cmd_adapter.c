// `speck adapter` (PEFT export/import, info, a random adapter) and `speck merge` (adapters baked
// into the base). See docs/adaptation.md.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static void adapter_usage(void) {
    printf("usage: speck adapter info ADAPTER.gguf\n"
           "       speck adapter export ADAPTER.gguf --peft DIR [-m BASE]\n"
           "       speck adapter import DIR -o ADAPTER.gguf [-m BASE]\n"
           "       speck adapter init [-m BASE] -o ADAPTER.gguf [--rank R] [--alpha A]\n"
           "                          [--targets LIST] [--seed N] [--b-std X]\n\n"
           "export writes a Hugging Face PEFT directory (adapter_config.json +\n"
           "adapter_model.safetensors, f32); import reads one into llama.cpp's adapter GGUF.\n"
           "Llama's q/k rows differ between the two layouts, so both need the base model\n"
           "(default model when -m is omitted); both check the adapter fits it. init writes a\n"
           "fresh adapter as finetune starts one (B = 0, the base's function), or with --b-std\n"
           "X > 0 B drawn from N(0, X²) (for tests and benchmarks of running adapters).\n");
}

static speck_model *load_base(const char *cmd, const char *path) {
    const char *p = cli_model_path(cmd, path);
    if (!p) return NULL;
    speck_model *m = speck_model_load_ex(p, SPECK_LOAD_NO_PANELS);
    if (!m) cli_fail(cmd);
    return m;
}

static int info(const char *path) {
    speck_lora *a = speck_lora_load(path);
    if (!a) return cli_fail("adapter");
    int r_min = 0, r_max = 0;
    unsigned targets = 0;
    for (int l = 0; l < speck_lora_n_layer(a); l++)
        for (int t = 0; t < SPECK_LORA_N_TARGETS; t++) {
            int r;
            if (!speck_lora_matrix(a, l, t, false, &r, NULL)) continue;
            targets |= 1u << t;
            r_min = r_min && r_min < r ? r_min : r;
            r_max = r_max > r ? r_max : r;
        }
    printf("%s: LoRA adapter, alpha %g, rank %d", path, speck_lora_alpha(a), r_max);
    if (r_min != r_max) printf(" (%d-%d)", r_min, r_max);
    printf(", %d layers, targets", speck_lora_n_layer(a));
    static const char *names[] = {"q", "k", "v", "o", "gate", "up", "down"};
    for (int t = 0, first = 1; t < SPECK_LORA_N_TARGETS; t++)
        if (targets >> t & 1) printf("%s%s", first ? " " : ",", names[t]), first = 0;
    printf(", %lld parameters\n", (long long)speck_lora_n_params(a));
    speck_lora_free(a);
    return 0;
}

int cmd_adapter(int argc, char **argv) {
    if (argc < 2 || cli_flag(argv[1], "--help", "-h")) {
        adapter_usage();
        return argc < 2 ? 2 : 0;
    }
    const char *sub = argv[1], *model = NULL, *out = NULL, *peft = NULL, *in = NULL;
    const char *targets = "q,k,v,o,gate,up,down";
    int rank = 16;
    float alpha = -1, b_std = 0;
    uint64_t seed = 1;
    for (int i = 2; i < argc; i++) {
        const char *v;
        if (cli_opt(argc, argv, &i, "--model", "-m", &v)) model = v;
        else if (cli_opt(argc, argv, &i, "--output", "-o", &v)) out = v;
        else if (cli_opt(argc, argv, &i, "--peft", NULL, &v)) peft = v;
        else if (cli_opt(argc, argv, &i, "--targets", NULL, &v)) targets = v;
        else if (cli_opt(argc, argv, &i, "--rank", NULL, &v))
            rank = (int)cli_int("adapter", "--rank", v, INT32_MIN, INT32_MAX);
        else if (cli_opt(argc, argv, &i, "--alpha", NULL, &v))
            alpha = (float)cli_float("adapter", "--alpha", v);
        else if (cli_opt(argc, argv, &i, "--b-std", NULL, &v))
            b_std = (float)cli_float("adapter", "--b-std", v);
        else if (cli_opt(argc, argv, &i, "--seed", NULL, &v))
            seed = (uint64_t)cli_int("adapter", "--seed", v, 0, INT64_MAX);
        else if (argv[i][0] != '-' && !in) in = argv[i];
        else {
            fprintf(stderr, "speck adapter: unknown option '%s'\n", argv[i]);
            return 2;
        }
    }
    if (!strcmp(sub, "info")) {
        if (!in) return fprintf(stderr, "speck adapter info: which adapter?\n"), 2;
        return info(in);
    }
    if (!strcmp(sub, "export")) {
        if (!in || !peft)
            return fprintf(stderr, "speck adapter export: ADAPTER.gguf --peft DIR\n"), 2;
        speck_lora *a = speck_lora_load(in);
        if (!a) return cli_fail("adapter export");
        speck_model *m = load_base("adapter export", model);
        int rc = m && !speck_lora_export_peft(a, m, peft) ? 0 : (m ? cli_fail("adapter export") : 1);
        speck_model_free(m);
        speck_lora_free(a);
        return rc;
    }
    if (!strcmp(sub, "import")) {
        if (!in || !out) return fprintf(stderr, "speck adapter import: DIR -o ADAPTER.gguf\n"), 2;
        speck_model *m = load_base("adapter import", model);
        if (!m) return 1;
        speck_lora *a = speck_lora_import_peft(in, m);
        int rc = a && !speck_lora_save(a, out) ? 0 : cli_fail("adapter import");
        speck_lora_free(a);
        speck_model_free(m);
        return rc;
    }
    if (!strcmp(sub, "init")) {
        if (!out) return fprintf(stderr, "speck adapter init: -o ADAPTER.gguf is required\n"), 2;
        unsigned mask;
        if (speck_lora_parse_targets(targets, &mask)) return cli_fail("adapter init");
        speck_model *m = load_base("adapter init", model);
        if (!m) return 1;
        speck_lora *a = speck_lora_new(m, rank, alpha < 0 ? (float)rank : alpha, mask, seed);
        int rc = 0;
        if (!a) rc = cli_fail("adapter init");
        if (a && b_std > 0) { // B ~ N(0, b_std²), Box-Muller from the seed
            uint64_t st = seed ^ 0x5bd1e995ULL;
            for (int l = 0; l < speck_lora_n_layer(a); l++)
                for (int t = 0; t < SPECK_LORA_N_TARGETS; t++) {
                    int64_t nb;
                    float *b = speck_lora_matrix(a, l, t, true, NULL, &nb);
                    for (int64_t j = 0; b && j < nb; j += 2) {
                        uint64_t x = (st += 0x9e3779b97f4a7c15ULL);
                        x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
                        x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
                        x ^= x >> 31;
                        double u1 = ((double)(x >> 11) + 1.0) * 0x1.0p-53;
                        double u2 = (double)(x & 0xFFFFF) / 1048576.0;
                        double rr = b_std * sqrt(-2.0 * log(u1));
                        b[j] = (float)(rr * cos(6.283185307179586 * u2));
                        if (j + 1 < nb) b[j + 1] = (float)(rr * sin(6.283185307179586 * u2));
                    }
                }
        }
        if (a && !rc && speck_lora_save(a, out)) rc = cli_fail("adapter init");
        speck_lora_free(a);
        speck_model_free(m);
        return rc;
    }
    fprintf(stderr, "speck adapter: unknown subcommand '%s' (info, export, import, init)\n", sub);
    return 2;
}

int cmd_merge(int argc, char **argv) {
    const char *base = NULL, *out = NULL, *paths[16];
    float scales[16];
    int n = 0, type = -1;
    for (int i = 1; i < argc; i++) {
        const char *v;
        if (cli_flag(argv[i], "--help", "-h")) {
            printf("usage: speck merge BASE.gguf ADAPTER.gguf[:SCALE]... -o OUT.gguf [--type T]\n\n"
                   "Write BASE with each adapter's s·B·A added to its matrices (s = SCALE (1) x\n"
                   "alpha / rank). Merged matrices keep their type (a quantized one is\n"
                   "requantized) unless --type T (" CLI_TYPES ") sets the type of every matrix.\n");
            return 0;
        } else if (cli_opt(argc, argv, &i, "--output", "-o", &v)) {
            out = v;
        } else if (cli_opt(argc, argv, &i, "--type", NULL, &v)) {
            type = speck_type_from_name(v);
            if (type < 0) {
                fprintf(stderr, "speck merge: --type: unknown type '%s' (%s)\n", v, CLI_TYPES);
                return 2;
            }
        } else if (argv[i][0] != '-' && !base) {
            base = argv[i];
        } else if (argv[i][0] != '-' && n < 16) {
            const char *c = strrchr(argv[i], ':');
            char *end = NULL;
            double s = c ? strtod(c + 1, &end) : 1.0;
            bool has = c && c[1] && end && *end == 0;
            paths[n] = has ? strndup(argv[i], (size_t)(c - argv[i])) : strdup(argv[i]);
            scales[n++] = has ? (float)s : 1.0f;
        } else {
            fprintf(stderr, "speck merge: unknown option '%s'\n", argv[i]);
            return 2;
        }
    }
    if (!base || !n || !out) {
        fprintf(stderr, "speck merge: BASE.gguf ADAPTER.gguf... -o OUT.gguf (speck merge --help)\n");
        return 2;
    }
    speck_lora *ad[16] = {0};
    int rc = 0;
    for (int i = 0; i < n && !rc; i++)
        if (!(ad[i] = speck_lora_load(paths[i]))) rc = cli_fail("merge");
    if (!rc && speck_lora_merge(base, ad, scales, n, type, out)) rc = cli_fail("merge");
    for (int i = 0; i < n; i++) {
        speck_lora_free(ad[i]);
        free((char *)paths[i]);
    }
    if (!rc) fprintf(stderr, "speck merge: %s + %d adapter%s -> %s\n", base, n, n > 1 ? "s" : "", out);
    return rc;
}
