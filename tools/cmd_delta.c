// `speck delta`: fine-tuning deltas (tuned − base) extracted, compressed (DARE, DAREx-q,
// ComPEFT), applied onto a base, described. See docs/adaptation.md.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"

#define CLI_MAX_POS 18 // BASE and up to 17 deltas

static void usage(void) {
    printf(
        "usage: speck delta extract BASE.gguf TUNED.gguf -o DELTA.gguf [--values f32|f16|bf16]\n"
        "       speck delta compress DELTA.gguf -o OUT.gguf (--dare P [--seed S]\n"
        "                [--rescale dare|darex-q=Q] | --compeft [--density K] [--scale A|l2])\n"
        "                [--values f32|f16|bf16]\n"
        "       speck delta apply BASE.gguf DELTA.gguf [DELTA2.gguf...] -o MODEL.gguf [--type T]\n"
        "                [--scale S]\n"
        "       speck delta add DELTA.gguf DELTA2.gguf [...] -o SUM.gguf [--values f32|f16|bf16]\n"
        "       speck delta info DELTA.gguf\n\n"
        "extract: TUNED − BASE for every tensor that differs (same architecture and tensors;\n"
        "  values f32 by default, so that applying it to BASE gives TUNED bit for bit).\n"
        "compress (matrices; vectors stay dense):\n"
        "  --dare P      drop each element with probability P (seeded), the rest times 1/(1-P)\n"
        "  --rescale darex-q=Q   DAREx-q: times 1/Q instead (Q > 1-P tames high drop rates)\n"
        "  --compeft     keep the top K of elements by magnitude (--density, 0.1), store their\n"
        "                signs and one scale per tensor: A x std(delta) (--scale A) or the mean\n"
        "                kept magnitude (--scale l2, the default: least squared error)\n"
        "  --values      type of the stored values (bf16 default)\n"
        "apply: BASE + S x DELTA (S default 1); changed matrices written as --type (default:\n"
        "  each keeps its type), everything else copied. Several deltas are added first (LT-SFT\n"
        "  composition: sparse deltas with their own masks sum where the masks overlap).\n"
        "add: the sum of the deltas as one delta file (values f32 by default).\n");
}

static int parse_values(const char *v) {
    int t = speck_type_from_name(v);
    if (t != SPECK_TYPE_F32 && t != SPECK_TYPE_F16 && t != SPECK_TYPE_BF16) {
        fprintf(stderr, "speck delta: --values %s: want f32, f16 or bf16\n", v);
        exit(2);
    }
    return t;
}

static long long file_size(const char *path) {
    struct stat st;
    return stat(path, &st) ? -1 : (long long)st.st_size;
}

static int info(const char *path) {
    speck_delta *d = speck_delta_load(path);
    if (!d) return cli_fail("delta info");
    speck_delta_info in;
    speck_delta_get_info(d, &in);
    printf("%s: %s delta for %s, %d tensors, %lld elements, %lld stored (%.2f %%), %lld "
           "nonzero",
           path, speck_delta_method_name(in.method), in.arch, in.n_tensors,
           (long long)in.n_elements, (long long)in.n_stored,
           in.n_elements ? 100.0 * (double)in.n_stored / (double)in.n_elements : 0.0,
           (long long)in.n_nonzero);
    if (in.method == SPECK_DELTA_DARE || in.method == SPECK_DELTA_DAREX_Q)
        printf(", drop %g, seed %llu, rescale %g", in.p, (unsigned long long)in.seed,
               in.rescale);
    if (in.method == SPECK_DELTA_SFT) printf(", sparse fine-tuning (%s)", in.sft);
    if (in.base_fp) printf(", base fingerprint %016llx", (unsigned long long)in.base_fp);
    if (in.method == SPECK_DELTA_COMPEFT) {
        printf(", density %g, scale ", in.density);
        if (in.alpha > 0)
            printf("%g x std", in.alpha);
        else
            printf("l2");
    }
    const long long sz = file_size(path);
    printf(", %lld bytes (%.3f bits per element)\n", sz,
           in.n_elements ? 8.0 * (double)sz / (double)in.n_elements : 0.0);
    speck_delta_free(d);
    return 0;
}

int cmd_delta(int argc, char **argv) {
    if (argc < 2 || cli_flag(argv[1], "--help", "-h")) {
        usage();
        return argc < 2 ? 2 : 0;
    }
    const char *sub = argv[1], *out = NULL, *pos[CLI_MAX_POS] = {0};
    int npos = 0, type = -1, values = -1;
    float p = -1, rescale = 0, density = 0.1f, alpha = 0, scale = 1;
    uint64_t seed = 1;
    bool compeft = false;
    char cmd[32];
    snprintf(cmd, sizeof cmd, "delta %s", sub);
    for (int i = 2; i < argc; i++) {
        const char *v;
        if (cli_flag(argv[i], "--help", "-h")) {
            usage();
            return 0;
        } else if (cli_opt(argc, argv, &i, "--output", "-o", &v)) {
            out = v;
        } else if (cli_opt(argc, argv, &i, "--values", NULL, &v)) {
            values = parse_values(v);
        } else if (cli_opt(argc, argv, &i, "--dare", NULL, &v)) {
            p = (float)cli_float(cmd, "--dare", v);
        } else if (cli_opt(argc, argv, &i, "--seed", NULL, &v)) {
            seed = (uint64_t)cli_int(cmd, "--seed", v, 0, INT64_MAX);
        } else if (cli_opt(argc, argv, &i, "--rescale", NULL, &v)) {
            if (!strcmp(v, "dare"))
                rescale = 0;
            else if (!strncmp(v, "darex-q=", 8) && cli_float(cmd, "--rescale", v + 8) > 0)
                rescale = 1.0f / (float)cli_float(cmd, "--rescale", v + 8);
            else {
                fprintf(stderr, "speck %s: --rescale %s: want dare or darex-q=Q (Q > 0)\n", cmd,
                        v);
                return 2;
            }
        } else if (cli_flag(argv[i], "--compeft", NULL)) {
            compeft = true;
        } else if (cli_opt(argc, argv, &i, "--density", NULL, &v)) {
            density = (float)cli_float(cmd, "--density", v);
        } else if (cli_opt(argc, argv, &i, "--scale", NULL, &v)) {
            if (!strcmp(sub, "compress"))
                alpha = strcmp(v, "l2") ? (float)cli_float(cmd, "--scale", v) : 0;
            else
                scale = (float)cli_float(cmd, "--scale", v);
        } else if (cli_opt(argc, argv, &i, "--type", NULL, &v)) {
            type = speck_type_from_name(v);
            if (type < 0) {
                fprintf(stderr, "speck %s: --type: unknown type '%s' (%s)\n", cmd, v, CLI_TYPES);
                return 2;
            }
        } else if (argv[i][0] == '-' && argv[i][1]) {
            fprintf(stderr, "speck %s: unknown option '%s'\n", cmd, argv[i]);
            return 2;
        } else if (npos < CLI_MAX_POS) {
            pos[npos++] = argv[i];
        } else {
            fprintf(stderr, "speck %s: too many arguments (speck delta --help)\n", cmd);
            return 2;
        }
    }
    if (!strcmp(sub, "info")) {
        if (npos != 1) {
            fprintf(stderr, "speck delta info: one DELTA.gguf (speck delta --help)\n");
            return 2;
        }
        return info(pos[0]);
    }
    const int want = !strcmp(sub, "compress") ? 1 : 2;
    const bool many = !strcmp(sub, "apply") || !strcmp(sub, "add"); // want or more
    if (strcmp(sub, "extract") && strcmp(sub, "compress") && strcmp(sub, "apply") &&
        strcmp(sub, "add")) {
        fprintf(stderr, "speck delta: unknown subcommand '%s' (speck delta --help)\n", sub);
        return 2;
    }
    if ((many ? npos < want : npos != want) || !out) {
        fprintf(stderr, "speck %s: %s and -o are required (speck delta --help)\n", cmd,
                want == 1 ? "DELTA.gguf" : "two files");
        return 2;
    }
    if (!strcmp(sub, "compress") && (p >= 0) == compeft) {
        fprintf(stderr, "speck delta compress: give one of --dare P and --compeft\n");
        return 2;
    }
    int rc = 0;
    if (!strcmp(sub, "extract")) {
        int64_t inexact = 0;
        speck_delta *d = speck_delta_extract(pos[0], pos[1], &inexact);
        if (!d || speck_delta_save(d, out, values < 0 ? SPECK_TYPE_F32 : (speck_type)values))
            rc = cli_fail(cmd);
        if (!rc) {
            speck_delta_info in;
            speck_delta_get_info(d, &in);
            fprintf(stderr, "speck delta extract: %d tensors changed, %lld elements -> %s (%lld "
                            "bytes)\n",
                    in.n_tensors, (long long)in.n_elements, out, file_size(out));
            if (inexact)
                fprintf(stderr, "speck delta extract: %lld elements have no f32 difference that "
                                "restores them exactly (within two ulps of their step)\n",
                        (long long)inexact);
        }
        speck_delta_free(d);
        return rc;
    }
    if (!strcmp(sub, "compress")) {
        speck_delta *d = speck_delta_load(pos[0]);
        if (!d) return cli_fail(cmd);
        rc = compeft ? speck_delta_compeft(d, density, alpha) : speck_delta_dare(d, p, seed, rescale);
        if (rc || speck_delta_save(d, out, values < 0 ? SPECK_TYPE_BF16 : (speck_type)values))
            rc = cli_fail(cmd);
        else
            fprintf(stderr, "speck delta compress: %s (%lld bytes) -> %s (%lld bytes)\n", pos[0],
                    file_size(pos[0]), out, file_size(out));
        speck_delta_free(d);
        return rc;
    }
    // apply, add: the deltas (apply: after BASE), summed when there are several.
    const bool add = !strcmp(sub, "add");
    speck_delta *d = NULL;
    for (int k = add ? 0 : 1; k < npos && !rc; k++) {
        speck_delta *x = speck_delta_load(pos[k]);
        if (!x) return speck_delta_free(d), cli_fail(cmd);
        if (!d) {
            d = x;
            continue;
        }
        if (speck_delta_add(d, x)) {
            char msg[512];
            snprintf(msg, sizeof msg, "%s", speck_last_error());
            fprintf(stderr, "speck %s: %s: %s\n", cmd, pos[k], msg);
            rc = 1;
        }
        speck_delta_free(x);
    }
    if (!rc && add) {
        if (speck_delta_save(d, out, values < 0 ? SPECK_TYPE_F32 : (speck_type)values))
            rc = cli_fail(cmd);
        else
            fprintf(stderr, "speck delta add: %d deltas -> %s (%lld bytes)\n", npos, out,
                    file_size(out));
    } else if (!rc) {
        if (speck_delta_apply(pos[0], d, scale, type, out))
            rc = cli_fail(cmd);
        else
            fprintf(stderr, "speck delta apply: %s + %g x %d delta%s -> %s\n", pos[0], scale,
                    npos - 1, npos > 2 ? "s (summed)" : "", out);
    }
    speck_delta_free(d);
    return rc;
}
