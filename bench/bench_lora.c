// Adapters' cost: decode with a rank-R LoRA adapter attached (unmerged) against the base model,
// and LoRA fine-tuning tokens/s. Base and adapter passes alternate inside one process (the
// adapter attached and detached between rounds), so machine load and memory-bandwidth drift hit
// both alike; times are the medians of many rounds. bench/bench_lora.sh runs it next to the
// PyTorch LoRA peer (bench/bench_lora_torch.py).
//
//   bench_lora MODEL.gguf [threads 1] [rank 16] [decode tokens 64] [rounds 15]
//              [finetune B 8] [T 256] [steps 6]
// Prints per-measurement lines; the last lines are machine-readable:
//   RESULT decode base_tok_s=... lora_tok_s=... ratio=...
//   RESULT finetune tokens_per_s=...
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "speck.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

// CPU seconds of the whole process (every thread): on a loaded machine the time this process
// ran, not the time it waited; with 1 thread the fairest comparison.
static double cpu(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Seconds per generated token of n greedy single-token passes after a 1-token prompt (wall;
// *cpu_s: CPU seconds per token).
static double decode_round(speck_model *m, int n, double *cpu_s) {
    const int V = speck_model_hparams(m)->n_vocab;
    speck_ctx *c = speck_ctx_new(m, n + 8);
    float *lg = malloc((size_t)V * sizeof(float));
    int32_t tok = 1;
    if (!c || !lg || speck_forward(c, 1, &tok, NULL, NULL, NULL, 0, lg)) exit(1);
    double t0 = now(), c0 = cpu();
    for (int i = 0; i < n; i++) {
        tok = speck_argmax(lg, V);
        if (speck_forward(c, 1, &tok, NULL, NULL, NULL, 0, lg)) exit(1);
    }
    double dt = (now() - t0) / n;
    if (cpu_s) *cpu_s = (cpu() - c0) / n;
    speck_ctx_free(c);
    free(lg);
    return dt;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: bench_lora MODEL [threads rank tokens rounds B T steps]\n");
        return 2;
    }
    int threads = argc > 2 ? atoi(argv[2]) : 1, rank = argc > 3 ? atoi(argv[3]) : 16;
    int n = argc > 4 ? atoi(argv[4]) : 64, rounds = argc > 5 ? atoi(argv[5]) : 15;
    int B = argc > 6 ? atoi(argv[6]) : 8, T = argc > 7 ? atoi(argv[7]) : 256;
    int steps = argc > 8 ? atoi(argv[8]) : 6;
    speck_set_threads(threads);
    speck_model *m = speck_model_load(argv[1]);
    unsigned targets;
    speck_lora *a = NULL;
    if (!m || speck_lora_parse_targets("q,k,v,o,gate,up,down", &targets) ||
        !(a = speck_lora_new(m, rank, (float)rank, targets, 1))) {
        fprintf(stderr, "bench_lora: %s\n", speck_last_error());
        return 1;
    }
    const speck_hparams *hp = speck_model_hparams(m);
    for (int l = 0; l < hp->n_layer; l++)
        for (int t = 0; t < SPECK_LORA_N_TARGETS; t++) {
            int64_t nb;
            float *b = speck_lora_matrix(a, l, t, true, NULL, &nb);
            for (int64_t j = 0; b && j < nb; j++) b[j] = 0.02f * sinf(0.7f * (float)j + (float)t);
        }
    printf("model %s: %s, %d layers, width %d; adapter rank %d on q,k,v,o,gate,up,down "
           "(%.3fM parameters); %d threads\n",
           argv[1], speck_type_name(speck_model_weight_type(m)), hp->n_layer, hp->n_embd, rank,
           speck_lora_n_params(a) / 1e6, threads);
    double *tb = malloc((size_t)rounds * sizeof *tb), *tl = malloc((size_t)rounds * sizeof *tl);
    double *cb = malloc((size_t)rounds * sizeof *cb), *cl = malloc((size_t)rounds * sizeof *cl);
    decode_round(m, n, NULL); // warm-up
    for (int r = 0; r < rounds; r++) {
        tb[r] = decode_round(m, n, &cb[r]);
        if (speck_model_lora_add(m, a, 1.0f)) return 1;
        tl[r] = decode_round(m, n, &cl[r]);
        speck_model_lora_clear(m);
    }
    double mb = median(tb, rounds), ml = median(tl, rounds);
    double mcb = median(cb, rounds), mcl = median(cl, rounds);
    printf("decode: base %.1f tok/s, with the adapter (unmerged) %.1f tok/s, ratio %.3f (wall; "
           "medians of %d alternating rounds of %d tokens)\n",
           1 / mb, 1 / ml, mb / ml, rounds, n);
    printf("decode CPU time: base %.1f us/token, adapter %.1f us/token, ratio %.3f\n", 1e6 * mcb,
           1e6 * mcl, mcb / mcl);
    // Fine-tuning: random tokens, all trained; the first step (allocation) is not timed.
    speck_model *fm = speck_model_load_ex(argv[1], SPECK_LOAD_NO_PANELS);
    speck_lora_trainer *tr = fm ? speck_lora_trainer_new(fm, a, 0.0f, 1) : NULL;
    if (!tr) {
        fprintf(stderr, "bench_lora: %s\n", speck_last_error());
        return 1;
    }
    int32_t *in = malloc((size_t)B * T * 4), *tg = malloc((size_t)B * T * 4);
    uint64_t s = 7;
    for (int i = 0; i < B * T; i++) {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        in[i] = (int32_t)((s >> 33) % (uint64_t)hp->n_vocab);
        tg[i] = (int32_t)((s >> 13) % (uint64_t)hp->n_vocab);
    }
    speck_adamw_params p = speck_adamw_default();
    p.total_steps = steps + 1;
    double *ts = malloc((size_t)steps * sizeof *ts);
    for (int st = 0; st <= steps; st++) {
        double t0 = now();
        float loss, gn;
        speck_lora_trainer_zero_grad(tr);
        if (speck_lora_trainer_step(tr, in, tg, B, T, 1.0f, (uint64_t)st, &loss) ||
            speck_lora_trainer_adamw(tr, &p, st, &gn))
            return 1;
        if (st) ts[st - 1] = now() - t0;
    }
    double mt = median(ts, steps);
    printf("finetune: batch %d x %d, %.0f tokens/s (median of %d steps)\n", B, T, B * T / mt,
           steps);
    printf("RESULT decode base_tok_s=%.1f lora_tok_s=%.1f ratio=%.3f cpu_ratio=%.3f\n", 1 / mb,
           1 / ml, mb / ml, mcb / mcl);
    printf("RESULT finetune tokens_per_s=%.1f\n", B * T / mt);
    speck_lora_trainer_free(tr);
    speck_model_free(fm);
    speck_lora_free(a);
    speck_model_free(m);
    free(tb), free(tl), free(cb), free(cl), free(in), free(tg), free(ts);
    return 0;
}
