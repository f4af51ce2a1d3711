// `speck info`, `speck init`, `speck tokenize`.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const char *type_label(int t) {
    const char *n = speck_type_name(t);
    return n ? n : "(other)";
}

int cmd_info(int argc, char **argv) {
    const char *path = NULL;
    int max_items = 8;
    bool tensors = true;
    for (int i = 1; i < argc; i++) {
        const char *v;
        if (cli_flag(argv[i], "--help", "-h")) {
            printf("usage: speck info -m FILE.gguf [--no-tensors] [--items N]\n\n"
                   "Print a GGUF file's header, every key/value (arrays abbreviated to N items,\n"
                   "default 8), the tensor table, and the model's hyper-parameters when it is a\n"
                   "model speck can run.\n");
            return 0;
        } else if (cli_opt(argc, argv, &i, "--model", "-m", &v))
            path = v;
        else if (cli_opt(argc, argv, &i, "--items", NULL, &v))
            max_items = (int)cli_int("info", "--items", v, 0, 1 << 20);
        else if (cli_flag(argv[i], "--no-tensors", NULL))
            tensors = false;
        else if (argv[i][0] != '-' && !path)
            path = argv[i];
        else {
            fprintf(stderr, "speck info: unknown option '%s'\n", argv[i]);
            return 2;
        }
    }
    if (!(path = cli_model_path("info", path))) return 2;
    speck_gguf *g = speck_gguf_open(path);
    if (!g) return cli_fail("info");
    printf("file:       %s\n", path);
    printf("gguf:       version %u, %zu bytes, alignment %zu\n", speck_gguf_version(g),
           speck_gguf_file_size(g), speck_gguf_alignment(g));
    printf("metadata:   %lld keys\n", (long long)speck_gguf_n_kv(g));
    char buf[1024];
    for (int64_t i = 0; i < speck_gguf_n_kv(g); i++)
        printf("  %-44s = %s\n", speck_gguf_key(g, i),
               speck_gguf_value_str(g, i, buf, sizeof buf, max_items));
    int64_t nt = speck_gguf_n_tensors(g);
    size_t total = 0;
    for (int64_t i = 0; i < nt; i++) total += speck_gguf_tensor_at(g, i)->n_bytes;
    printf("tensors:    %lld, %.2f MiB of data\n", (long long)nt, total / 1048576.0);
    if (tensors) {
        printf("  %-36s %-6s %-26s %12s\n", "name", "type", "shape (ne0, ne1, ...)", "bytes");
        for (int64_t i = 0; i < nt; i++) {
            const speck_gguf_tensor *t = speck_gguf_tensor_at(g, i);
            char shape[64];
            int p = snprintf(shape, sizeof shape, "[%lld", (long long)t->ne[0]);
            for (int d = 1; d < t->n_dims; d++)
                p += snprintf(shape + p, sizeof shape - (size_t)p, ", %lld", (long long)t->ne[d]);
            snprintf(shape + p, sizeof shape - (size_t)p, "]");
            printf("  %-36s %-6s %-26s %12zu\n", t->name, type_label(t->type), shape, t->n_bytes);
        }
    }
    speck_gguf_close(g);
    speck_model *m = speck_model_load(path);
    if (!m) {
        printf("model:      not runnable by speck: %s\n", speck_last_error());
        return 0;
    }
    const speck_hparams *hp = speck_model_hparams(m);
    printf("model:      %s, %d layers, width %d, %d heads (%d kv, head dim %d), ffn %d, vocab %d, "
           "context %d\n",
           hp->arch, hp->n_layer, hp->n_embd, hp->n_head, hp->n_head_kv, hp->head_dim, hp->n_ff,
           hp->n_vocab, hp->n_ctx_train);
    printf("            rope %s base %g%s, rms eps %g, %s head%s, %s weights, %.1f MiB read per "
           "token\n",
           hp->rope_type == SPECK_ROPE_NEOX ? "neox" : "normal", hp->rope_freq_base,
           hp->rope_scaling == SPECK_ROPE_SCALING_LINEAR     ? " (linear scaling)"
           : hp->rope_scaling == SPECK_ROPE_SCALING_LLAMA3   ? " (llama3 scaling)"
           : hp->rope_scaling == SPECK_ROPE_SCALING_LONGROPE ? " (LongRoPE)"
                                                             : "",
           hp->norm_eps, hp->tied_output ? "tied" : "separate", hp->qkv_bias ? ", qkv bias" : "",
           type_label(speck_model_weight_type(m)), speck_model_bytes_per_token(m) / 1048576.0);
    // What the architecture adds to the Llama layer.
    char extra[512] = "";
    size_t k = 0;
#define ADD(...) (k += (size_t)snprintf(extra + k, sizeof extra - k, __VA_ARGS__))
    if (hp->ffn_act == SPECK_ACT_GELU_TANH) ADD(", GeGLU");
    if (hp->qk_norm) ADD(", q/k norm");
    if (hp->post_norms) ADD(", post-norms");
    if (hp->embd_scale != 1.0f) ADD(", embeddings x %g", hp->embd_scale);
    if (fabsf(hp->attn_scale * sqrtf((float)hp->head_dim) - 1.0f) > 1e-6f)
        ADD(", q.k x %g", hp->attn_scale);
    if (hp->attn_softcap > 0) ADD(", attention soft-cap %g", hp->attn_softcap);
    if (hp->final_softcap > 0) ADD(", output soft-cap %g", hp->final_softcap);
    if (hp->n_swa > 0) {
        int nw = 0;
        for (int l = 0; l < hp->n_layer; l++) nw += speck_hparams_layer_swa(hp, l);
        ADD(", window %d on %d of %d layers", hp->n_swa, nw, hp->n_layer);
        if (hp->rope_freq_base_swa != hp->rope_freq_base)
            ADD(" (rope base %g)", hp->rope_freq_base_swa);
    }
#undef ADD
    if (k) printf("            %s\n", extra + 2);
    speck_model_free(m);
    return 0;
}

int cmd_init(int argc, char **argv) {
    const char *preset = NULL, *out = NULL;
    int type = SPECK_TYPE_F32;
    unsigned long long seed = 1;
    for (int i = 1; i < argc; i++) {
        const char *v;
        if (cli_flag(argv[i], "--help", "-h")) {
            printf(
                "usage: speck init --preset NAME [--type T] [--seed S] -o FILE.gguf\n\n"
                "Write a model with the exact shapes of a real checkpoint and random weights\n"
                "(uniform, std 0.02; norms 1) from a seeded generator: the same seed gives the\n"
                "same file on any machine and thread count. T: the matrices' type, f32 (default)\n"
                "or " CLI_TYPES ";\n"
                "rows T's blocks do not divide take llama-quantize's fallback type (q4_k on\n"
                "smollm2's 576-wide rows: q5_0); norms and biases stay f32. The file carries a\n"
                "byte-level BPE vocabulary of the preset's size, so llama.cpp loads it too.\n\n"
                "presets:\n");
            for (const speck_preset *p = speck_presets(); p->name; p++)
                printf("  %-16s %-6s vocab %6d, %2d layers, width %4d, %2d heads (%d kv), ffn "
                       "%5d%s%s\n",
                       p->name, p->arch, p->n_vocab, p->n_layer, p->n_embd, p->n_head, p->n_head_kv,
                       p->n_ff, p->tied_output ? ", tied" : "", p->qkv_bias ? ", qkv bias" : "");
            return 0;
        } else if (cli_opt(argc, argv, &i, "--preset", NULL, &v))
            preset = v;
        else if (cli_opt(argc, argv, &i, "--output", "-o", &v))
            out = v;
        else if (cli_opt(argc, argv, &i, "--seed", NULL, &v))
            seed = (unsigned long long)cli_int("init", "--seed", v, 0, INT64_MAX);
        else if (cli_opt(argc, argv, &i, "--type", NULL, &v)) {
            type = speck_type_from_name(v);
            if (type < 0) {
                fprintf(stderr, "speck init: --type: unknown type '%s' (%s)\n", v, CLI_TYPES);
                return 2;
            }
        } else {
            fprintf(stderr, "speck init: unknown option '%s'\n", argv[i]);
            return 2;
        }
    }
    if (!preset || !out) {
        fprintf(stderr, "speck init: --preset and -o are required (speck init --help)\n");
        return 2;
    }
    const speck_preset *p = speck_preset_find(preset);
    if (!p) {
        fprintf(stderr, "speck init: unknown preset '%s' (speck init --help lists them)\n", preset);
        return 2;
    }
    if (speck_init_model(p, (speck_type)type, seed, out)) return cli_fail("init");
    fprintf(stderr, "speck init: wrote %s (%s, %s, seed %llu)\n", out, p->name,
            speck_type_name(type), seed);
    return 0;
}

int cmd_tokenize(int argc, char **argv) {
    const char *path = NULL, *text = NULL;
    bool pieces = false, special = false, no_bos = false;
    for (int i = 1; i < argc; i++) {
        const char *v;
        if (cli_flag(argv[i], "--help", "-h")) {
            printf("usage: speck tokenize [-m MODEL|tokenizer.json] [--ids|--pieces] "
                   "[--parse-special] [--no-bos] TEXT\n\n"
                   "Print the token ids (default) or id + piece per line of TEXT.\n");
            return 0;
        } else if (cli_opt(argc, argv, &i, "--model", "-m", &v))
            path = v;
        else if (cli_flag(argv[i], "--ids", NULL))
            pieces = false;
        else if (cli_flag(argv[i], "--pieces", NULL))
            pieces = true;
        else if (cli_flag(argv[i], "--parse-special", NULL))
            special = true;
        else if (cli_flag(argv[i], "--no-bos", NULL))
            no_bos = true;
        else if (argv[i][0] != '-' && !text)
            text = argv[i];
        else {
            fprintf(stderr, "speck tokenize: unknown option '%s'\n", argv[i]);
            return 2;
        }
    }
    if (!(path = cli_model_path("tokenize", path))) return 2;
    if (!text) {
        fprintf(stderr, "speck tokenize: need TEXT\n");
        return 2;
    }
    speck_vocab *v = speck_vocab_load(path);
    if (!v) return cli_fail("tokenize");
    size_t len = strlen(text);
    int64_t cap = (int64_t)len + 8;
    int32_t *ids = malloc((size_t)cap * sizeof *ids);
    int64_t n = ids ? speck_tokenize(v, text, len, !no_bos, special, ids, cap) : SPECK_ERR_NOMEM;
    if (n < 0) {
        free(ids);
        speck_vocab_free(v);
        return cli_fail("tokenize");
    }
    for (int64_t i = 0; i < n && i < cap; i++) {
        if (pieces) {
            char buf[256];
            int b = speck_token_to_piece(v, ids[i], buf, sizeof buf - 1);
            buf[b < 0 ? 0 : (b < (int)sizeof buf - 1 ? b : (int)sizeof buf - 1)] = 0;
            printf("%6d  %-20s  '%s'\n", ids[i], speck_vocab_token_text(v, ids[i]), buf);
        } else {
            printf(i ? " %d" : "%d", ids[i]);
        }
    }
    if (!pieces) printf("\n");
    free(ids);
    speck_vocab_free(v);
    return 0;
}
