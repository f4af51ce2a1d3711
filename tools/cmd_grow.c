// `speck grow`: a model widened and deepened to larger shapes, computing the same function.
#include <stdio.h>
#include <string.h>

#include "cli.h"

static void grow_usage(void) {
    printf(
        "usage: speck grow [-m SMALL.gguf] (--preset NAME | shape flags) -o BIG.gguf [options]\n\n"
        "Write the model grown to larger shapes so that it computes the same function (the\n"
        "same logits up to float rounding, the same greedy text): residual, FFN units and\n"
        "heads duplicated with their outgoing weights split (Net2Net-style), each head's RoPE\n"
        "pairs moved to the pair of the same frequency in a larger head, and new layers that\n"
        "start as the identity. A cheap start for training a larger model, and a model with\n"
        "the trained one's behaviour and a large one's cost (docs/training.md).\n\n"
        "  -m FILE            the source model (default: the default model)\n"
        "  --preset NAME      the target's n_embd, n_layer, heads, n_ff and head tying (speck\n"
        "                     init --help lists presets); vocabulary, tokenizer, architecture,\n"
        "                     context length, RoPE and biases stay the source's\n"
        "  --n-embd N --n-layer N --n-head N --n-head-kv N --n-ff N\n"
        "                     set single target shapes (over the preset's, or the source's)\n"
        "  --untied           give a source with a tied head a separate output matrix\n"
        "  --type T           matrices' type: f32, f16, bf16, q8_0, q4_0 (default: the\n"
        "                     source's; only f32 keeps the function to float rounding)\n"
        "  --seed S           the copies' shares and the weights that do not reach the output\n"
        "                     (default 1)\n"
        "  --dry-run          check the target and describe the construction; write nothing\n"
        "  --quiet            no progress bar\n\n"
        "Reachable targets: every size at least the source's; the head size (n_embd / n_head)\n"
        "a multiple of the source's; n_head_kv >= the source's n_head_kv x ceil(G / G'), where\n"
        "G, G' are the query heads per kv head of source and target (each source kv head needs\n"
        "kv heads of its own). A width that is not a multiple of the source's is padded with\n"
        "zero units and RMSNorm's epsilon scaled to match.\n");
}

int cmd_grow(int argc, char **argv) {
    const char *src = NULL, *out = NULL, *preset = NULL;
    speck_preset set = {0}; // shapes given by flags (0: not given)
    int type = -1;
    unsigned long long seed = 1;
    bool untied = false, dry = false, quiet = false;
    for (int i = 1; i < argc; i++) {
        const char *v;
        if (cli_flag(argv[i], "--help", "-h")) {
            grow_usage();
            return 0;
        } else if (cli_opt(argc, argv, &i, "--model", "-m", &v))
            src = v;
        else if (cli_opt(argc, argv, &i, "--output", "-o", &v))
            out = v;
        else if (cli_opt(argc, argv, &i, "--preset", NULL, &v))
            preset = v;
        else if (cli_shape_opt("grow", argc, argv, &i, &set))
            continue;
        else if (cli_opt(argc, argv, &i, "--seed", NULL, &v))
            seed = (unsigned long long)cli_int("grow", "--seed", v, 0, INT64_MAX);
        else if (cli_opt(argc, argv, &i, "--type", NULL, &v)) {
            if ((type = speck_type_from_name(v)) < 0) {
                fprintf(stderr,
                        "speck grow: --type: unknown type '%s' (f32, f16, bf16, q8_0, q4_0)\n", v);
                return 2;
            }
        } else if (cli_flag(argv[i], "--untied", NULL))
            untied = true;
        else if (cli_flag(argv[i], "--dry-run", NULL))
            dry = true;
        else if (cli_flag(argv[i], "--quiet", "-q"))
            quiet = true;
        else {
            fprintf(stderr, "speck grow: unknown option '%s'\n", argv[i]);
            return 2;
        }
    }
    const bool shaped = set.n_embd || set.n_layer || set.n_head || set.n_head_kv || set.n_ff;
    if (!preset && !shaped && !untied) {
        fprintf(stderr, "speck grow: give the target: --preset NAME or shape flags (speck grow "
                        "--help)\n");
        return 2;
    }
    if (!out && !dry) {
        fprintf(stderr, "speck grow: -o BIG.gguf is required (or --dry-run)\n");
        return 2;
    }
    if (!(src = cli_model_path("grow", src))) return 2;
    speck_model *m = speck_model_load_ex(src, SPECK_LOAD_NO_PANELS);
    if (!m) return cli_fail("grow");
    const speck_hparams hp = *speck_model_hparams(m);
    if (type < 0) type = speck_model_weight_type(m);
    speck_model_free(m);

    speck_preset t = {.name = "custom shape",
                      .n_embd = hp.n_embd,
                      .n_layer = hp.n_layer,
                      .n_head = hp.n_head,
                      .n_head_kv = hp.n_head_kv,
                      .n_ff = hp.n_ff,
                      .tied_output = hp.tied_output};
    if (preset) {
        const speck_preset *p = speck_preset_find(preset);
        if (!p) {
            fprintf(stderr, "speck grow: unknown preset '%s' (speck init --help lists them)\n",
                    preset);
            return 2;
        }
        t = *p;
        if (shaped) t.name = "custom shape";
    }
    if (set.n_embd) t.n_embd = set.n_embd;
    if (set.n_layer) t.n_layer = set.n_layer;
    if (set.n_head) t.n_head = set.n_head;
    if (set.n_head_kv) t.n_head_kv = set.n_head_kv;
    if (set.n_ff) t.n_ff = set.n_ff;
    if (untied) t.tied_output = false;

    char desc[512];
    if (speck_grow_check(&hp, &t, desc, sizeof desc)) {
        fprintf(stderr, "speck grow: %s: %s\n", src, speck_last_error());
        return 1;
    }
    fprintf(stderr, "speck grow: %s -> %s: %s\n", src, t.name, desc);
    if (t.tied_output && !hp.tied_output)
        fprintf(stderr,
                "speck grow: note: the source's output head is separate from its "
                "embedding, so the grown one is too (%s ties them)\n",
                t.name);
    if (dry) return 0;
    if (speck_grow_model(src, &t, (speck_type)type, seed, !quiet, out)) return cli_fail("grow");
    fprintf(stderr, "speck grow: wrote %s (%s, seed %llu)\n", out, speck_type_name(type), seed);
    return 0;
}
