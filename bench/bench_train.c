// Training throughput: tokens/s of full optimizer steps (forward + backward + AdamW) of a
// Llama-architecture model, model FLOP/s, and OpenBLAS sgemm peak on this machine for scale.
// bench/bench_train.sh runs it next to bench/bench_train_torch.py (PyTorch, same model, batch
// and threads) and prints the ratio.
//
//   bench_train [threads] [n_layer n_embd n_head n_head_kv n_ff n_vocab T B] [steps]
//               [n_expert n_expert_used] [arch [n_ff_shexp]]
// With experts every FFN is a mixture of n_expert experts of width n_ff, n_expert_used per
// token (model FLOPs count the active ones and the router). arch: the layer of another family
// (qwen2: q/k/v biases; qwen3, qwen3moe: per-head q/k norms; olmoe: whole-row q/k norms;
// qwen2moe: biases and a shared expert of n_ff_shexp); model FLOPs count the llama layer's
// matrices plus the shared expert.
// Prints one line per measurement; the last line is machine-readable:
//   RESULT speck tokens_per_s=... gflops=... sgemm_gflops=... flops_per_token=...
//          cpu_tokens_per_s=... (per second of process CPU time)
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "speck.h"

static double clock_s(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double now(void) {
    return clock_s(CLOCK_MONOTONIC);
}

// GFLOP/s of one square sgemm (the best of 5), with n threads.
static double sgemm_peak(int n_threads) {
    const int n = 1024;
    float *a = malloc((size_t)n * n * 4), *b = malloc((size_t)n * n * 4),
          *c = malloc((size_t)n * n * 4);
    for (int i = 0; i < n * n; i++) a[i] = b[i] = (float)(i % 7) * 0.1f;
    openblas_set_num_threads(n_threads);
    double best = 0;
    for (int r = 0; r < 5; r++) {
        double t = now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
        t = now() - t;
        double g = 2.0 * n * n * n / t / 1e9;
        if (g > best) best = g;
    }
    free(a), free(b), free(c);
    return best;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 2;
    speck_train_config c = {.n_vocab = 4096, .n_ctx = 256, .n_embd = 256, .n_layer = 4,
                            .n_head = 8, .n_head_kv = 4, .n_ff = 768, .norm_eps = 1e-5f,
                            .rope_freq_base = 10000.0f};
    int T = 128, B = 8, steps = 10;
    if (argc >= 10) {
        c.n_layer = atoi(argv[2]), c.n_embd = atoi(argv[3]), c.n_head = atoi(argv[4]);
        c.n_head_kv = atoi(argv[5]), c.n_ff = atoi(argv[6]), c.n_vocab = atoi(argv[7]);
        T = atoi(argv[8]), B = atoi(argv[9]);
        c.n_ctx = T;
    }
    if (argc >= 11) steps = atoi(argv[10]);
    if (argc >= 13)
        c.n_expert = atoi(argv[11]), c.n_expert_used = atoi(argv[12]), c.moe_norm = true;
    if (argc >= 14) { // the architecture's layer: biases, q/k norms, a shared expert
        snprintf(c.arch, sizeof c.arch, "%s", argv[13]);
        c.qkv_bias = !strcmp(c.arch, "qwen2") || !strcmp(c.arch, "qwen2moe");
        c.moe_norm = c.n_expert && strcmp(c.arch, "qwen2moe") && strcmp(c.arch, "olmoe");
    }
    if (argc >= 15) c.n_ff_shexp = atoi(argv[14]);
    speck_set_threads(threads);
    speck_train_model *tm = speck_train_model_new(&c, 1);
    if (!tm) {
        fprintf(stderr, "bench_train: %s\n", speck_last_error());
        return 1;
    }
    int32_t *in = malloc((size_t)B * T * 4), *tg = malloc((size_t)B * T * 4);
    uint64_t s = 1;
    for (int i = 0; i < B * T; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        in[i] = (int32_t)((s >> 33) % (uint64_t)c.n_vocab);
        tg[i] = (int32_t)((s >> 13) % (uint64_t)c.n_vocab);
    }
    speck_adamw_params p = speck_adamw_default();
    double best = 1e30, total = 0, cpu = 0;
    for (int i = 0; i < steps + 2; i++) {
        double t = now(), c0 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
        float loss;
        speck_train_zero_grad(tm);
        if (speck_train_step(tm, in, tg, B, T, 1.0f, &loss) || speck_adamw_step(tm, &p, i, NULL)) {
            fprintf(stderr, "bench_train: %s\n", speck_last_error());
            return 1;
        }
        t = now() - t;
        if (i >= 2) { // 2 warm-up steps
            total += t;
            cpu += clock_s(CLOCK_PROCESS_CPUTIME_ID) - c0;
            if (t < best) best = t;
        }
    }
    // Model FLOPs per token: 6 x (matmul parameters incl. the head) + causal attention
    // (QKᵀ and PV: 2·T·C multiply-adds per token and layer on average, x3 for fwd+bwd).
    int64_t C = c.n_embd, hd = C / c.n_head, kv = (int64_t)c.n_head_kv * hd;
    const double ffn = (c.n_expert ? 3.0 * C * c.n_ff * c.n_expert_used + (double)C * c.n_expert
                                   : 3.0 * C * c.n_ff) +
                       3.0 * C * c.n_ff_shexp;
    double mat = (double)c.n_layer * (C * C * 2 + 2 * C * kv + ffn) + (double)c.n_vocab * C;
    double flops_tok = 6.0 * mat + 6.0 * c.n_layer * T * C;
    double tps_med = B * T * steps / total, tps_best = B * T / best;
    double peak = sgemm_peak(threads);
    printf("model: %d layers, width %d, %d heads (%d kv), ffn %d", c.n_layer, c.n_embd, c.n_head,
           c.n_head_kv, c.n_ff);
    if (c.n_expert) printf(" x %d experts (%d per token)", c.n_expert, c.n_expert_used);
    if (c.n_ff_shexp) printf(" + shared %d", c.n_ff_shexp);
    if (c.arch[0]) printf(", %s layer", c.arch);
    printf(", vocab %d; %.2fM params; batch %d x %d; %d threads\n", c.n_vocab,
           speck_train_n_params(tm) / 1e6, B, T, threads);
    printf("speck: %.0f tokens/s (mean of %d steps), %.0f best; %.2f GFLOP/s model FLOPs "
           "(%.1f%% of sgemm peak %.1f GFLOP/s)\n",
           tps_med, steps, tps_best, tps_med * flops_tok / 1e9,
           100.0 * tps_med * flops_tok / 1e9 / peak, peak);
    // Tokens per second of CPU time (all threads' together): on a loaded shared machine the
    // wall-clock figure mostly measures the other processes; this one much less.
    printf("RESULT speck tokens_per_s=%.1f gflops=%.2f sgemm_gflops=%.1f flops_per_token=%.0f "
           "cpu_tokens_per_s=%.1f\n",
           tps_med, tps_med * flops_tok / 1e9, peak, flops_tok, B * T * steps / cpu);
    free(in), free(tg);
    speck_train_model_free(tm);
    return 0;
}
