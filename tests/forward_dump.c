// Test driver for tests/reference/test_forward.py: runs speck's forward pass in one of several
// modes and writes the logits as raw little-endian f32 (rows, n_vocab).
//
//   forward_dump MODEL.gguf MODE OUT.f32 TOKENS(comma-separated)
//   MODE: prefill | decode | chunks:K | truncate:K | rows:STEP | tree:P:parents
// Env SPECK_TEST_ISA=scalar|avx2|avx512 runs on that kernel path (exit 3 if the CPU lacks it);
// SPECK_TEST_NO_PANELS=1 loads with SPECK_LOAD_NO_PANELS (the row-layout kernels);
// SPECK_TEST_KV=f16 (q8_0, q4_0) gives the context a KV cache of that type; SPECK_TEST_CTX=N a
// context of N positions.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "speck.h"

static int parse_list(const char *s, int32_t *out, int max) {
    int n = 0;
    while (*s && n < max) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s) return -1;
        out[n++] = (int32_t)v;
        s = *end == ',' ? end + 1 : end;
    }
    return n;
}

static int die(const char *what) {
    fprintf(stderr, "forward_dump: %s: %s\n", what, speck_last_error());
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: forward_dump MODEL MODE OUT TOKENS\n");
        return 2;
    }
    const char *isa = getenv("SPECK_TEST_ISA");
    if (isa && *isa && speck_kernels_force_isa(isa) != 0) {
        fprintf(stderr, "forward_dump: this CPU cannot run the %s kernels\n", isa);
        return 3;
    }
    const char *np = getenv("SPECK_TEST_NO_PANELS");
    speck_model *m = speck_model_load_ex(argv[1], np && *np == '1' ? SPECK_LOAD_NO_PANELS : 0);
    if (!m) return die("load");
    int V = speck_model_hparams(m)->n_vocab;
    int32_t toks[4096];
    int n = parse_list(argv[4], toks, 4096);
    if (n <= 0) return die("tokens");
    const char *kv = getenv("SPECK_TEST_KV"); // "f16", "q8_0", "q4_0": the KV cache's type
    // 1024 positions: make_model.DUMP_CTX (LongRoPE's factors depend on the context size), or
    // SPECK_TEST_CTX.
    const char *nc = getenv("SPECK_TEST_CTX");
    const int kvt = kv && *kv ? speck_type_from_name(kv) : SPECK_TYPE_F32;
    if (kvt < 0) return die("SPECK_TEST_KV");
    speck_ctx *c = speck_ctx_new_kv(m, nc && *nc ? atoi(nc) : 1024, (speck_type)kvt);
    if (!c) return die("context");
    float *out = calloc((size_t)n * V, sizeof(float));
    int rows = n;
    const char *mode = argv[2];
    if (!strcmp(mode, "prefill")) {
        if (speck_forward(c, n, toks, NULL, NULL, NULL, 0, out)) return die("prefill");
    } else if (!strcmp(mode, "decode") || !strncmp(mode, "chunks:", 7)) {
        int k = mode[0] == 'd' ? 1 : atoi(mode + 7);
        for (int i = 0; i < n; i += k) {
            int len = i + k <= n ? k : n - i;
            if (speck_forward(c, len, toks + i, NULL, NULL, NULL, 0, out + (size_t)i * V))
                return die("chunk");
        }
    } else if (!strncmp(mode, "truncate:", 9)) {
        int k = atoi(mode + 9);
        float *junk = calloc((size_t)n * V, sizeof(float));
        // Prefill everything, then pretend tokens k.. were rejected and decode them again.
        if (speck_forward(c, n, toks, NULL, NULL, NULL, 0, junk)) return die("prefill");
        memcpy(out, junk, (size_t)k * V * sizeof(float));
        if (speck_ctx_truncate(c, k)) return die("truncate");
        for (int i = k; i < n; i++)
            if (speck_forward(c, 1, toks + i, NULL, NULL, NULL, 0, out + (size_t)i * V))
                return die("redecode");
        free(junk);
    } else if (!strncmp(mode, "rows:", 5)) {
        // One prefill returning every STEP-th row only (out_rows), in order.
        int step = atoi(mode + 5), idx[4096];
        if (step < 1) return 2;
        rows = 0;
        for (int i = 0; i < n; i += step) idx[rows++] = i;
        if (speck_forward(c, n, toks, NULL, NULL, idx, rows, out)) return die("rows");
    } else if (!strncmp(mode, "tree:", 5)) {
        int P = atoi(mode + 5);
        const char *ps = strchr(mode + 5, ':');
        int32_t parent[4096];
        int nt = ps ? parse_list(ps + 1, parent, 4096) : -1;
        if (nt != n - P || P < 1) {
            fprintf(stderr, "forward_dump: tree spec needs %d parents\n", n - P);
            return 2;
        }
        if (speck_forward(c, P, toks, NULL, NULL, NULL, 0, out)) return die("prefix");
        // Tree mask: node i sees the prefix, its ancestors and itself; position = P + depth.
        int total = P + nt;
        uint8_t *mask = calloc((size_t)nt * total, 1);
        int32_t pos[4096];
        for (int i = 0; i < nt; i++) {
            uint8_t *mi = mask + (size_t)i * total;
            memset(mi, 1, (size_t)P);
            int depth = 0;
            for (int a = i; a >= 0; a = parent[a]) {
                if (a >= i && a != i) return 2; // parents must precede children
                mi[P + a] = 1;
                if (a != i) depth++;
            }
            pos[i] = P + depth;
        }
        if (speck_forward(c, nt, toks + P, pos, mask, NULL, 0, out)) return die("tree");
        rows = nt;
        free(mask);
    } else {
        fprintf(stderr, "forward_dump: unknown mode %s\n", mode);
        return 2;
    }
    FILE *f = fopen(argv[3], "wb");
    if (!f || fwrite(out, sizeof(float), (size_t)rows * V, f) != (size_t)rows * V) return 1;
    fclose(f);
    free(out);
    speck_ctx_free(c);
    speck_model_free(m);
    return 0;
}
