// `speck convert` (Hugging Face directory -> GGUF), `speck export` (GGUF -> Hugging Face) and
// `speck quantize` (GGUF -> GGUF with the matrices in another type).
#include <stdio.h>
#include <string.h>

#include "cli.h"

// A weight type named on the command line (speck_type), or -1 after saying what is accepted.
static int type_arg(const char *cmd, const char *opt, const char *v) {
    int t = speck_type_from_name(v);
    if (t < 0)
        fprintf(stderr, "speck %s: %s: unknown type '%s' (%s)\n", cmd, opt, v, CLI_TYPES);
    return t;
}

int cmd_convert(int argc, char **argv) {
    const char *in = NULL, *out = NULL;
    int type = -1;
    bool quiet = false;
    for (int i = 1; i < argc; i++) {
        const char *v;
        if (cli_flag(argv[i], "--help", "-h")) {
            printf(
                "usage: speck convert HF_DIR -o OUT.gguf [--type T] [--quiet]\n\n"
                "Convert a Hugging Face checkpoint directory (config.json, model.safetensors or\n"
                "a sharded model.safetensors.index.json, tokenizer.json, tokenizer_config.json)\n"
                "of a LlamaForCausalLM, MistralForCausalLM or Qwen2ForCausalLM model to GGUF\n"
                "with llama.cpp's keys and tensor names. --type sets the matrices' type\n"
                "(" CLI_TYPES ";\n"
                "default: keep the checkpoint's f32/f16/bf16); norms and biases stay f32.\n"
                "The output appears only when complete (temporary file + rename).\n");
            return 0;
        } else if (cli_opt(argc, argv, &i, "--output", "-o", &v))
            out = v;
        else if (cli_opt(argc, argv, &i, "--type", NULL, &v)) {
            if ((type = type_arg("convert", "--type", v)) < 0) return 2;
        } else if (cli_flag(argv[i], "--quiet", "-q"))
            quiet = true;
        else if (argv[i][0] != '-' && !in)
            in = argv[i];
        else {
            fprintf(stderr, "speck convert: unknown option '%s'\n", argv[i]);
            return 2;
        }
    }
    if (!in || !out) {
        fprintf(stderr, "speck convert: need HF_DIR and -o OUT.gguf (speck convert --help)\n");
        return 2;
    }
    if (speck_hf_convert(in, out, type, !quiet)) return cli_fail("convert");
    if (!quiet) fprintf(stderr, "speck convert: wrote %s\n", out);
    return 0;
}

int cmd_export(int argc, char **argv) {
    const char *in = NULL, *out = NULL;
    int type = SPECK_TYPE_F32;
    bool quiet = false;
    for (int i = 1; i < argc; i++) {
        const char *v;
        if (cli_flag(argv[i], "--help", "-h")) {
            printf(
                "usage: speck export -m MODEL.gguf --hf OUT_DIR [--dtype f32|f16|bf16] "
                "[--quiet]\n\n"
                "Write a Hugging Face directory (config.json, model.safetensors, tokenizer.json,\n"
                "tokenizer_config.json) that transformers loads, from a llama or qwen2 GGUF.\n"
                "Quantized weights are dequantized to --dtype (default f32). OUT_DIR must not\n"
                "exist (or be empty); it appears only when complete.\n");
            return 0;
        } else if (cli_opt(argc, argv, &i, "--model", "-m", &v))
            in = v;
        else if (cli_opt(argc, argv, &i, "--hf", "-o", &v))
            out = v;
        else if (cli_opt(argc, argv, &i, "--dtype", NULL, &v)) {
            type = speck_type_from_name(v);
            if (type != SPECK_TYPE_F32 && type != SPECK_TYPE_F16 && type != SPECK_TYPE_BF16) {
                fprintf(stderr, "speck export: --dtype: '%s' is not f32, f16 or bf16\n", v);
                return 2;
            }
        } else if (cli_flag(argv[i], "--quiet", "-q"))
            quiet = true;
        else if (argv[i][0] != '-' && !in)
            in = argv[i];
        else {
            fprintf(stderr, "speck export: unknown option '%s'\n", argv[i]);
            return 2;
        }
    }
    if (!in || !out) {
        fprintf(stderr,
                "speck export: need -m MODEL.gguf and --hf OUT_DIR (speck export --help)\n");
        return 2;
    }
    if (speck_hf_export(in, out, (speck_type)type, !quiet)) return cli_fail("export");
    if (!quiet) fprintf(stderr, "speck export: wrote %s\n", out);
    return 0;
}

int cmd_quantize(int argc, char **argv) {
    const char *pos[3] = {NULL, NULL, NULL};
    int n_pos = 0;
    speck_quantize_opts o = {.embd_type = -1, .output_type = -1};
    bool quiet = false;
    for (int i = 1; i < argc; i++) {
        const char *v;
        if (cli_flag(argv[i], "--help", "-h")) {
            printf("usage: speck quantize IN.gguf OUT.gguf TYPE [--output-tensor-type T]\n"
                   "                      [--token-embedding-type T] [--allow-requantize] "
                   "[--quiet]\n\n"
                   "Write IN's matrices in TYPE (" CLI_TYPES "),\n"
                   "like llama.cpp's llama-quantize, with its algorithms (the same bytes): norms,\n"
                   "biases and metadata are copied, general.file_type is updated, and rows that\n"
                   "TYPE's blocks do not divide take llama-quantize's fallback (q4_k -> q5_0,\n"
                   "q5_k -> q5_1, q6_k -> q8_0, q2_k/q3_k -> q4_0, iq4_xs -> iq4_nl; f16 when no\n"
                   "block fits). --output-tensor-type / --token-embedding-type give output.weight /\n"
                   "token_embd.weight their own type (e.g. q6_k beside q4_k matrices). Tensors\n"
                   "already quantized go to another quantized type only with --allow-requantize\n"
                   "(f32/f16/bf16 dequantize them). OUT appears only when complete (temporary\n"
                   "file + rename).\n");
            return 0;
        } else if (cli_opt(argc, argv, &i, "--output-tensor-type", NULL, &v)) {
            if ((o.output_type = type_arg("quantize", "--output-tensor-type", v)) < 0) return 2;
        } else if (cli_opt(argc, argv, &i, "--token-embedding-type", NULL, &v)) {
            if ((o.embd_type = type_arg("quantize", "--token-embedding-type", v)) < 0) return 2;
        } else if (cli_flag(argv[i], "--allow-requantize", NULL))
            o.allow_requantize = true;
        else if (cli_flag(argv[i], "--quiet", "-q"))
            quiet = true;
        else if (argv[i][0] != '-' && n_pos < 3)
            pos[n_pos++] = argv[i];
        else {
            fprintf(stderr, "speck quantize: unknown option '%s'\n", argv[i]);
            return 2;
        }
    }
    if (n_pos != 3) {
        fprintf(stderr, "speck quantize: need IN.gguf OUT.gguf TYPE (speck quantize --help)\n");
        return 2;
    }
    int t = type_arg("quantize", "TYPE", pos[2]);
    if (t < 0) return 2;
    o.type = (speck_type)t;
    if (speck_gguf_quantize(pos[0], pos[1], &o, !quiet)) return cli_fail("quantize");
    if (!quiet) fprintf(stderr, "speck quantize: wrote %s\n", pos[1]);
    return 0;
}
