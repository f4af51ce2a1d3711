// Test driver for tests/reference/lora_ref.py: LoRA gradients through a frozen base.
//
//   lora_dump MODEL.gguf TOKENS.i32 B T OUTDIR RANK ALPHA TARGETS [mask|share=K]
//
// Creates an adapter (speck_lora_new, seed 5) whose B is set to a fixed non-zero pattern (a
// fresh adapter's B is 0, which would make every A gradient 0), saves it as OUTDIR/adapter.gguf,
// runs one forward + backward of the mean next-token cross-entropy (TOKENS: B rows of T+1 ids),
// and writes OUTDIR/<blk.N.name.weight.lora_a|b>.f32 (raw little-endian f32) and OUTDIR/loss.txt.
// "mask" masks targets (no loss): row 0's first T/2 positions, and every odd position of row 1.
// "share=K": Block-LoRA, A's K blocks tied (speck_lora_trainer_set_block_share); the gradients
// are folded (speck_lora_block_fold) and each lora_a file holds the shared block's (rank/K rows).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dump_util.h"
#include "speck.h"

static const char *const GG[SPECK_LORA_N_TARGETS] = {
    "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"};

int main(int argc, char **argv) {
    if (argc != 9 && argc != 10) {
        fprintf(stderr, "usage: lora_dump MODEL TOKENS B T OUTDIR RANK ALPHA TARGETS [mask]\n");
        return 2;
    }
    int B = atoi(argv[3]), T = atoi(argv[4]), rank = atoi(argv[6]);
    const char *dir = argv[5];
    float alpha = (float)atof(argv[7]);
    bool mask = argc == 10 && !strcmp(argv[9], "mask");
    int share = argc == 10 && !strncmp(argv[9], "share=", 6) ? atoi(argv[9] + 6) : 1;
    speck_set_threads(2);
    speck_model *m = speck_model_load_ex(argv[1], SPECK_LOAD_NO_PANELS);
    if (!m) return dump_die("lora_dump", argv[1]);
    unsigned targets;
    if (speck_lora_parse_targets(argv[8], &targets)) return dump_die("lora_dump", "targets");
    speck_lora *a = speck_lora_new(m, rank, alpha, targets, 5);
    if (!a) return dump_die("lora_dump", "adapter");
    if (share > 1 && speck_lora_block_check(a, share)) return dump_die("lora_dump", "share");
    speck_lora_block_tie(a, share);
    const int L = speck_model_hparams(m)->n_layer;
    for (int l = 0; l < L; l++)
        for (int t = 0; t < SPECK_LORA_N_TARGETS; t++) {
            int64_t n;
            float *b = speck_lora_matrix(a, l, t, true, NULL, &n);
            for (int64_t j = 0; b && j < n; j++)
                b[j] = 0.05f * sinf(0.37f * (float)j + (float)(l * 7 + t));
        }
    char path[1024];
    snprintf(path, sizeof path, "%s/adapter.gguf", dir);
    if (speck_lora_save(a, path)) return dump_die("lora_dump", "save");
    FILE *f = fopen(argv[2], "rb");
    int32_t *tok = malloc((size_t)B * (T + 1) * sizeof *tok);
    int32_t *in = malloc((size_t)B * T * sizeof *in), *tg = malloc((size_t)B * T * sizeof *tg);
    if (!f || !tok || !in || !tg ||
        fread(tok, sizeof *tok, (size_t)B * (T + 1), f) != (size_t)B * (T + 1)) {
        fprintf(stderr, "lora_dump: cannot read %s\n", argv[2]);
        return 1;
    }
    fclose(f);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            in[b * T + t] = tok[b * (T + 1) + t];
            tg[b * T + t] = tok[b * (T + 1) + t + 1];
            if (mask && ((b == 0 && t < T / 2) || (b == 1 && t % 2)))
                tg[b * T + t] = -1;
        }
    speck_lora_trainer *tr = speck_lora_trainer_new(m, a, 0.0f, 1);
    if (!tr || speck_lora_trainer_set_block_share(tr, share)) return dump_die("lora_dump", "trainer");
    float loss;
    if (speck_lora_trainer_step(tr, in, tg, B, T, 1.0f, 0, &loss)) return dump_die("lora_dump", "step");
    float *g = speck_lora_trainer_grads(tr);
    const float *base = speck_lora_params(a);
    speck_lora_block_fold(a, share, g);
    for (int l = 0; l < L; l++)
        for (int t = 0; t < SPECK_LORA_N_TARGETS; t++)
            for (int k = 0; k < 2; k++) {
                int64_t n;
                float *p = speck_lora_matrix(a, l, t, k, NULL, &n);
                if (!p) continue;
                if (!k) n /= share; // the shared block
                char name[96];
                snprintf(name, sizeof name, "blk.%d.%s.weight.lora_%c", l, GG[t], k ? 'b' : 'a');
                if (dump_write_f32(dir, name, g + (p - base), n)) return dump_die("lora_dump", name);
            }
    snprintf(path, sizeof path, "%s/loss.txt", dir);
    f = fopen(path, "w");
    if (!f) return dump_die("lora_dump", path);
    fprintf(f, "%.9g\n", loss);
    fclose(f);
    speck_lora_trainer_free(tr);
    speck_lora_free(a);
    speck_model_free(m);
    free(tok);
    free(in);
    free(tg);
    return 0;
}
