// `speck prune`: one-shot pruning (magnitude, Wanda, SparseGPT; unstructured or N:M; DSnoT
// prune-and-grow on top of magnitude or Wanda; ECoFLaP / Tyr per-block ratios; CFSP structured
// pruning to a smaller dense model).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

// --method cfsp: structured, its own options (src/sparse/cfsp.c).
static int prune_cfsp(const char *pos[2], const char *ratio, const char *heads, int align,
                      const char *calib, const speck_prune_opts *po, int64_t calib_max,
                      const char *sparsity, bool quiet) {
    speck_prune_opts r = {0}, hr = {0};
    if (sparsity || !ratio || !calib) {
        fprintf(stderr, "speck prune: --method cfsp takes --ratio R (not --sparsity) and "
                        "--calib TEXT\n");
        return 2;
    }
    if (speck_prune_parse_sparsity(ratio, &r) || r.nm_m > 0) {
        fprintf(stderr, "speck prune: --ratio: '%s' is not a fraction in (0, 1) (25%%, 0.3)\n",
                ratio);
        return 2;
    }
    if (heads && (speck_prune_parse_sparsity(heads, &hr) || hr.nm_m > 0)) {
        fprintf(stderr, "speck prune: --heads: '%s' is not a fraction in (0, 1) (25%%, 0.5)\n",
                heads);
        return 2;
    }
    int32_t *ids = NULL;
    const int64_t n = cli_tokenize_file("prune", pos[0], calib, false, &ids);
    if (n < 0) return 1;
    speck_cfsp_opts o = {.ratio = r.sparsity,
                         .align = align,
                         .calib = ids,
                         .n_calib = calib_max > 0 && calib_max < n ? calib_max : n,
                         .calib_ctx = po->calib_ctx,
                         .head_ratio = hr.sparsity};
    const int rc = speck_gguf_prune_cfsp(pos[0], pos[1], &o, !quiet);
    free(ids);
    if (rc) return cli_fail("prune");
    if (!quiet) fprintf(stderr, "speck prune: wrote %s\n", pos[1]);
    return 0;
}

int cmd_prune(int argc, char **argv) {
    const char *pos[2] = {NULL, NULL}, *calib = NULL, *sparsity = NULL, *method = "wanda",
               *ratio = NULL, *heads = NULL;
    int align = 0;
    int n_pos = 0;
    int64_t calib_max = 0;
    bool quiet = false;
    int dsnot_cycles = 0; // 0: the default (50) when the method asks for DSnoT
    speck_prune_opts o = {.out_type = -1};
    for (int i = 1; i < argc; i++) {
        const char *v;
        if (cli_flag(argv[i], "--help", "-h")) {
            printf("usage: speck prune IN OUT --sparsity 50%%|0.6|2:4\n"
                   "         [--method magnitude|wanda|sparsegpt|magnitude+dsnot|wanda+dsnot]\n"
                   "         [--dsnot-cycles N] [--dsnot-threshold E] [--calib TEXT]\n"
                   "         [--calib-ctx N] [--calib-tokens N] [--type T] [--dense FILE]\n"
                   "         [--embd-head] [--threads N] [--quiet]\n"
                   "         [--alloc uniform|ecoflap|tyr] [--max-layer-sparsity S]\n"
                   "         [--alloc-windows N]\n"
                   "       speck prune IN OUT --method cfsp --ratio 25%% --calib TEXT [--align N]\n"
                   "                   [--heads R]\n\n"
                   "Write IN (GGUF) with every layer matrix pruned: the given fraction of each\n"
                   "row zeroed, or N:M (at most N nonzeros in every M consecutive inputs).\n"
                   "  magnitude   the smallest |W| of each row (no calibration)\n"
                   "  wanda       the smallest |W_ij| * ||x_j|| of each row (default; --calib)\n"
                   "  sparsegpt   OBS masks per 128-column block with the error compensated on\n"
                   "              the remaining weights under the input Hessian (--calib)\n"
                   "  +dsnot      after a magnitude or wanda mask, swap pruned and kept weights\n"
                   "              per row (DSnoT: no training, no weight changes) to bring the\n"
                   "              row's expected output error toward 0 (--calib): at most\n"
                   "              --dsnot-cycles swaps per row (default 50), stopping once the\n"
                   "              error is within --dsnot-threshold (default 0.1)\n"
                   "The output is dense (zeros in place; llama.cpp runs it) in the source's type\n"
                   "when that stores zero exactly (f32, f16, bf16, q8_0, q4_0, q5_0), else f16.\n"
                   "--type s24_q8 (with --sparsity 2:4) stores speck's sparse 8-bit format\n"
                   "instead: 22 bytes per 32 weights, faster decoding, but llama.cpp cannot load\n"
                   "it; --dense FILE also writes the same pruned weights densely to FILE.\n"
                   "The embedding and output head stay dense unless --embd-head (the embedding\n"
                   "then by magnitude). Calibration: --calib-ctx window (default the model's\n"
                   "context, at most 512), --calib-tokens N uses the first N. Outputs appear\n"
                   "only when complete.\n"
                   "--alloc shares an unstructured --sparsity (of all the blocks' matrices\n"
                   "together) unevenly among the transformer blocks, each block then pruned by\n"
                   "--method at its own ratio (printed; --calib needed):\n"
                   "  ecoflap     keep shares in proportion to each block's importance, (w g)^2\n"
                   "              with g a zeroth-order (forward-only) gradient estimate\n"
                   "  tyr         an evolutionary search of block ratios, coarse to fine, for the\n"
                   "              lowest KL divergence from the dense model on calibration text\n"
                   "No block goes above --max-layer-sparsity (default max(0.8, S + 0.1));\n"
                   "--alloc-windows N calibration windows measure it (default 4).\n"
                   "--method cfsp removes the --ratio of every layer's FFN channels with the\n"
                   "lowest CFSP scores (activation-weighted relative weights, one calibration\n"
                   "pass): a smaller dense model, the same width in every layer, rounded to a\n"
                   "multiple of --align (default 32); --heads R also removes that fraction of\n"
                   "every layer's KV heads, each with its query heads (speck's extension).\n"
                   "See docs/sparsity.md.\n");
            return 0;
        } else if (cli_opt(argc, argv, &i, "--method", NULL, &v))
            method = v;
        else if (cli_opt(argc, argv, &i, "--dsnot-cycles", NULL, &v))
            dsnot_cycles = (int)cli_int("prune", "--dsnot-cycles", v, 1, 1 << 30);
        else if (cli_opt(argc, argv, &i, "--dsnot-threshold", NULL, &v)) {
            char *end;
            o.dsnot_threshold = strtod(v, &end);
            if (end == v || *end || !(o.dsnot_threshold > 0) || o.dsnot_threshold > 1e30) {
                fprintf(stderr, "speck prune: --dsnot-threshold: '%s' is not a number > 0\n", v);
                return 2;
            }
        } else if (cli_opt(argc, argv, &i, "--alloc", NULL, &v)) {
            if (!strcmp(v, "uniform"))
                o.alloc = SPECK_ALLOC_UNIFORM;
            else if (!strcmp(v, "ecoflap"))
                o.alloc = SPECK_ALLOC_ECOFLAP;
            else if (!strcmp(v, "tyr"))
                o.alloc = SPECK_ALLOC_TYR;
            else {
                fprintf(stderr, "speck prune: --alloc: '%s' is not uniform, ecoflap or tyr\n", v);
                return 2;
            }
        } else if (cli_opt(argc, argv, &i, "--max-layer-sparsity", NULL, &v)) {
            speck_prune_opts m = {0};
            if (speck_prune_parse_sparsity(v, &m) || m.nm_m > 0) {
                fprintf(stderr,
                        "speck prune: --max-layer-sparsity: '%s' is not a fraction in "
                        "(0, 1) (90%%, 0.85)\n",
                        v);
                return 2;
            }
            o.max_layer_sparsity = m.sparsity;
        } else if (cli_opt(argc, argv, &i, "--alloc-windows", NULL, &v))
            o.alloc_windows = (int)cli_int("prune", "--alloc-windows", v, 1, 1 << 20);
        else if (cli_opt(argc, argv, &i, "--ratio", NULL, &v))
            ratio = v;
        else if (cli_opt(argc, argv, &i, "--heads", NULL, &v))
            heads = v;
        else if (cli_opt(argc, argv, &i, "--align", NULL, &v))
            align = (int)cli_int("prune", "--align", v, 1, 1 << 20);
        else if (cli_opt(argc, argv, &i, "--sparsity", NULL, &v))
            sparsity = v;
        else if (cli_opt(argc, argv, &i, "--calib", NULL, &v))
            calib = v;
        else if (cli_opt(argc, argv, &i, "--calib-ctx", NULL, &v))
            o.calib_ctx = (int)cli_int("prune", "--calib-ctx", v, 16, 1 << 16);
        else if (cli_opt(argc, argv, &i, "--calib-tokens", NULL, &v))
            calib_max = cli_int("prune", "--calib-tokens", v, 16, INT64_MAX);
        else if (cli_opt(argc, argv, &i, "--type", NULL, &v)) {
            if ((o.out_type = speck_type_from_name(v)) < 0) {
                fprintf(stderr, "speck prune: --type: unknown type '%s'\n", v);
                return 2;
            }
        } else if (cli_flag(argv[i], "--embd-head", NULL))
            o.embd_head = true;
        else if (cli_opt(argc, argv, &i, "--dense", NULL, &v))
            o.dense_path = v;
        else if (cli_flag(argv[i], "--quiet", "-q"))
            quiet = true;
        else if (cli_opt(argc, argv, &i, "--threads", "-t", &v))
            speck_set_threads((int)cli_int("prune", "--threads", v, 1, 4096));
        else if (argv[i][0] == '-' && argv[i][1]) {
            fprintf(stderr, "speck prune: unknown option '%s' (see --help)\n", argv[i]);
            return 2;
        } else if (n_pos < 2)
            pos[n_pos++] = argv[i];
        else {
            fprintf(stderr, "speck prune: too many arguments ('%s')\n", argv[i]);
            return 2;
        }
    }
    if (!strcmp(method, "cfsp") && (o.alloc || o.max_layer_sparsity > 0 || o.alloc_windows)) {
        fprintf(stderr, "speck prune: --alloc / --max-layer-sparsity / --alloc-windows share an "
                        "unstructured sparsity, not with --method cfsp\n");
        return 2;
    }
    if (n_pos == 2 && !strcmp(method, "cfsp"))
        return prune_cfsp(pos, ratio, heads, align, calib, &o, calib_max, sparsity, quiet);
    if (ratio || align || heads) {
        fprintf(stderr, "speck prune: --ratio / --heads / --align need --method cfsp\n");
        return 2;
    }
    if (n_pos != 2 || !sparsity) {
        fprintf(stderr, "speck prune: usage: speck prune IN OUT --sparsity S [options] (--help)\n");
        return 2;
    }
    const char *plus = strchr(method, '+');
    const size_t base = plus ? (size_t)(plus - method) : strlen(method);
    const bool dsnot = plus && !strcmp(plus, "+dsnot");
    if (base == 9 && !strncmp(method, "magnitude", 9) && (!plus || dsnot))
        o.method = SPECK_PRUNE_MAGNITUDE;
    else if (base == 5 && !strncmp(method, "wanda", 5) && (!plus || dsnot))
        o.method = SPECK_PRUNE_WANDA;
    else if (!strcmp(method, "sparsegpt"))
        o.method = SPECK_PRUNE_SPARSEGPT;
    else {
        fprintf(stderr,
                "speck prune: --method: '%s' is not magnitude, wanda, sparsegpt, "
                "magnitude+dsnot or wanda+dsnot\n",
                method);
        return 2;
    }
    if (!dsnot && (dsnot_cycles || o.dsnot_threshold > 0)) {
        fprintf(stderr, "speck prune: --dsnot-cycles / --dsnot-threshold need --method "
                        "magnitude+dsnot or wanda+dsnot\n");
        return 2;
    }
    if (dsnot) o.dsnot_cycles = dsnot_cycles ? dsnot_cycles : 50;
    if (speck_prune_parse_sparsity(sparsity, &o)) {
        fprintf(stderr, "speck prune: --sparsity: %s\n", speck_last_error());
        return 2;
    }
    if (o.alloc == SPECK_ALLOC_UNIFORM && (o.max_layer_sparsity > 0 || o.alloc_windows)) {
        fprintf(stderr, "speck prune: --max-layer-sparsity / --alloc-windows need --alloc "
                        "ecoflap or tyr\n");
        return 2;
    }
    if (o.alloc != SPECK_ALLOC_UNIFORM && o.nm_m > 0) {
        fprintf(stderr,
                "speck prune: --alloc shares an unstructured --sparsity among the "
                "blocks; %s is N:M\n",
                sparsity);
        return 2;
    }
    if (o.alloc != SPECK_ALLOC_UNIFORM && o.max_layer_sparsity > 0 &&
        o.max_layer_sparsity < o.sparsity) {
        fprintf(stderr, "speck prune: --max-layer-sparsity %g is below --sparsity %g\n",
                o.max_layer_sparsity, o.sparsity);
        return 2;
    }
    if ((o.method != SPECK_PRUNE_MAGNITUDE || dsnot || o.alloc) && !calib) {
        fprintf(stderr, "speck prune: --method %s%s needs --calib TEXT\n", method,
                o.alloc ? " with --alloc" : "");
        return 2;
    }
    int32_t *ids = NULL;
    if (calib) {
        const int64_t n = cli_tokenize_file("prune", pos[0], calib, false, &ids);
        if (n < 0) return 1;
        o.calib = ids;
        o.n_calib = calib_max > 0 && calib_max < n ? calib_max : n;
    }
    const int rc = speck_gguf_prune(pos[0], pos[1], &o, !quiet);
    free(ids);
    if (rc) return cli_fail("prune");
    if (!quiet) fprintf(stderr, "speck prune: wrote %s\n", pos[1]);
    return 0;
}
