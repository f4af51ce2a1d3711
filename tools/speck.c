// speck — command-line interface: thin subcommands over libspeck.
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "cli.h"
#include "speck.h"

static void usage(FILE *f) {
    fprintf(f,
            "speck %s — run, benchmark and build language models on CPU\n\n"
            "usage: speck <command> [options]   (speck <command> --help for details)\n\n"
            "commands:\n"
            "  generate   generate text from a prompt (default model when -m is omitted)\n"
            "  chat       interactive multi-turn chat using the model's chat template\n"
            "  serve      OpenAI-compatible HTTP server with continuous batching (docs/serving.md)\n"
            "  bench      prefill/decode speed, median of runs, against the memory roofline\n"
            "  bench-decode  plain vs accelerated decoding strategies on a prompt set\n"
            "  info       print a GGUF file's metadata and tensor table\n"
            "  init       write a model with a real checkpoint's shapes and random weights\n"
            "  tokenize   print the token ids / pieces of a text\n"
            "  convert    convert a Hugging Face checkpoint directory to GGUF\n"
            "  export     write a GGUF model as a Hugging Face directory\n"
            "  quantize   write a model with its matrices quantized (Q4_K_M, Q8_0, ..., GPTQ)\n"
            "  prune      zero weights (magnitude, Wanda, SparseGPT; 50%%, 2:4) or FFN channels (CFSP)\n"
            "  grow       widen and deepen a model to larger shapes, computing the same function\n"
            "  imatrix    importance matrix from calibration text (llama.cpp's file format)\n"
            "  train      train a model on a directory of text files (docs/training.md)\n"
            "  tokenizer-train  train a byte-level BPE vocabulary on text files\n"
            "  eval       perplexity and bits per byte of a model on a text file\n"
            "  finetune   train a LoRA adapter (QLoRA on a quantized base) or every weight (--full)\n"
            "  adapter    adapter files: PEFT export/import, info, a random adapter for tests\n"
            "  merge      bake LoRA adapters into a copy of the base model\n"
            "  delta      fine-tuning deltas: extract, compress (DARE, ComPEFT), apply, info\n"
            "  train-accept  SpecDec++ acceptance head for a draft model (docs/decoding.md)\n\n"
            "environment:\n"
            "  SPECK_ISA=avx2|scalar  use a narrower kernel path than this CPU's best (%s)\n",
            speck_version(), speck_isa());
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(cmd, "--version")) {
        printf("speck %s\n", speck_version());
        return 0;
    }
    const char *isa = getenv("SPECK_ISA");
    if (isa && *isa && speck_set_isa(isa)) {
        fprintf(stderr, "speck: SPECK_ISA: %s\n", speck_last_error());
        return 2;
    }
    static const struct {
        const char *name;
        int (*fn)(int, char **);
    } cmds[] = {{"generate", cmd_generate}, {"chat", cmd_chat},
                {"bench", cmd_bench},       {"bench-decode", cmd_bench_decode},
                {"info", cmd_info},         {"init", cmd_init},
                {"tokenize", cmd_tokenize}, {"convert", cmd_convert},
                {"export", cmd_export},     {"quantize", cmd_quantize}, {"prune", cmd_prune},
                {"imatrix", cmd_imatrix},
                {"train", cmd_train},       {"tokenizer-train", cmd_tokenizer_train},
                {"eval", cmd_eval},         {"grow", cmd_grow},
                {"serve", cmd_serve},
                {"finetune", cmd_finetune}, {"adapter", cmd_adapter},
                {"merge", cmd_merge}, {"delta", cmd_delta},
                {"train-accept", cmd_train_accept}};
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
        if (!strcmp(cmd, cmds[i].name)) return cmds[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "speck: unknown command '%s'\n\n", cmd);
    usage(stderr);
    return 2;
}
