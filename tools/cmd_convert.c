// `speck convert` (Hugging Face directory -> GGUF) and `speck export` (GGUF -> Hugging Face).
#include <stdio.h>
#include <string.h>

#include "cli.h"

int cmd_convert(int argc, char **argv) {
    const char *in = NULL, *out = NULL;
    int ftype = -1;
    bool quiet = false;
    for (int i = 1; i < argc; i++) {
        const char *v;
        if (cli_flag(argv[i], "--help", "-h")) {
            printf(
                "usage: speck convert HF_DIR -o OUT.gguf [--type TYPE] [--quiet]\n\n"
                "Convert a Hugging Face checkpoint directory (config.json, model.safetensors or\n"
                "a sharded model.safetensors.index.json, tokenizer.json, tokenizer_config.json)\n"
                "of a LlamaForCausalLM, MistralForCausalLM or Qwen2ForCausalLM model to GGUF\n"
                "with llama.cpp's keys and tensor names. --type takes llama-quantize's file\n"
                "types (F32, F16, BF16, Q8_0, Q4_0, Q4_K_M, ...: speck quantize --help) with\n"
                "their per-tensor mixes (default: keep the checkpoint's f32/f16/bf16); norms\n"
                "and biases stay f32. The output appears only when complete (temporary file +\n"
                "rename).\n");
            return 0;
        } else if (cli_opt(argc, argv, &i, "--output", "-o", &v))
            out = v;
        else if (cli_opt(argc, argv, &i, "--type", NULL, &v)) {
            if ((ftype = speck_ftype_from_name(v)) < 0) {
                fprintf(stderr, "speck convert: --type: unknown type '%s' (%s)\n", v,
                        speck_ftype_list());
                return 2;
            }
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
    // Float and Q8_0 types (every matrix alike) stream straight from the checkpoint; the mixes
    // go through speck_gguf_quantize, which converts to a temporary file first.
    const int base = ftype >= 0 ? speck_ftype_base(ftype) : -1;
    if (base < 0 || speck_type_block_size((speck_type)base) == 1 || base == SPECK_TYPE_Q8_0) {
        if (speck_hf_convert(in, out, base, !quiet)) return cli_fail("convert");
    } else {
        const speck_quantize_opts o = {.ftype = ftype, .embd_type = -1, .output_type = -1};
        if (speck_gguf_quantize(in, out, &o, !quiet)) return cli_fail("convert");
    }
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
