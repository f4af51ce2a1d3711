// `speck bench`: prefill and decode throughput (median of runs) and the memory roofline.
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <string.h>
#include <sys/resource.h>

#include "cli.h"
#include "kernels/kernels.h"

// Sum of `streams` consecutive parts of part 64-bit words each, read in step: a core keeps more
// DRAM requests in flight on several streams (this project's VM, 2 threads: one stream each
// ~55 GB/s, four ~70-75 GB/s; eight no better). `streams` must be a constant after inlining: with
// a run-time stream count GCC's AVX-512 clone moved the eight sums between scalar registers and a
// vector at every 64-byte line and measured 19 GB/s (one stream) and ~57 GB/s (four) on this
// machine, under-reading the roofline by ~20 % until stop 14. Integer adds vectorize without
// reassociation flags, and the clones let the generic binary stream at full vector width.
static inline __attribute__((always_inline)) uint64_t sum_parts(const uint64_t *p, size_t part,
                                                                const int streams) {
    uint64_t acc[8] = {0};
    for (size_t i = 0; i < part; i += 8)
        for (int s = 0; s < streams; s++)
            for (int k = 0; k < 8; k++) acc[k] += p[(size_t)s * part + i + k];
    return acc[0] + acc[1] + acc[2] + acc[3] + acc[4] + acc[5] + acc[6] + acc[7];
}

// Sum of the first n words (all but fewer than 32 at the end), as one stream or four.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) &&                             \
    !defined(__SANITIZE_ADDRESS__)
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif
static uint64_t
sum_words(const uint64_t *p, size_t n, bool four) {
    return four ? sum_parts(p, n / 4 / 8 * 8, 4) : sum_parts(p, n / 8 * 8, 1);
}

// The read-bandwidth probe: a buffer far larger than the caches, advised as transparent huge
// pages like the quantized weights' panels (advice only), its pages touched once here.
typedef struct {
    uint64_t *buf;
    size_t n; // words
} bw_probe;

static bool bw_probe_init(bw_probe *p) {
    p->n = (size_t)128 << 20; // 1 GiB
    p->buf = aligned_alloc((size_t)2 << 20, p->n * sizeof *p->buf);
    if (!p->buf) return false;
#ifdef MADV_HUGEPAGE
    madvise(p->buf, p->n * sizeof *p->buf, MADV_HUGEPAGE);
#endif
    uint64_t *buf = p->buf;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < p->n; i++) buf[i] = i;
    return true;
}

// Read bandwidth (GB/s): all threads stream their slice of the buffer, as one and as four
// streams each, alternately; the best of `passes`. The roofline is a ceiling, so it takes the
// best reading pattern measured.
static double bw_probe_run(const bw_probe *p, int passes) {
    double best = 0;
    volatile uint64_t sink = 0;
    for (int rep = 0; rep < passes; rep++) {
        const bool four = rep % 2;
        double t0 = cli_now();
        uint64_t total = 0;
#pragma omp parallel reduction(+ : total)
        {
            size_t nt = (size_t)omp_get_num_threads(), id = (size_t)omp_get_thread_num();
            size_t chunk = p->n / nt / 8 * 8;
            total += sum_words(p->buf + chunk * id, chunk, four);
        }
        double t = cli_now() - t0;
        sink += total;
        double gbs = (double)p->n * sizeof *p->buf / t / 1e9; // each thread leaves < 32 words
        if (gbs > best) best = gbs;
    }
    (void)sink;
    return best;
}

static void help(void) {
    printf("usage: speck bench -m MODEL.gguf [-p 512] [-n 128] [-d 0] [-r 5] [-t THREADS]\n"
           "                   [--kv-type f32|f16|q8_0|q4_0] [--json] [--hugepages]\n"
           "                   [--lora FILE[:SCALE]]... [--delta FILE]...\n\n"
           "Measures prompt processing (one forward over -p tokens) and text generation (-n\n"
           "single-token forwards), each from a cache holding -d tokens already (0: empty),\n"
           "reporting the median of -r runs after one warm-up, like llama-bench's pp/tg tests\n"
           "and its -d. Also measures this machine's memory read bandwidth after each run and\n"
           "prints the decode roofline: bandwidth / bytes read per generated token (the\n"
           "weights, plus the KV cache at the run's mean depth), and the median fraction of it\n"
           "reached, each run against its own bandwidth reading. --hugepages\n"
           "reads the weights into transparent huge pages instead of mapping the file; --kv-type\n"
           "(or llama-bench's -ctk/-ctv names) stores the KV cache in f32, f16 (the default, as\n"
           "llama-bench), q8_0 or q4_0 blocks. --lora applies adapters unmerged; --delta adds\n"
           "fine-tuning deltas (`speck delta`, sparse fine-tuning) to the weights at load.\n");
}

// The cache back to the first `depth` tokens (untimed): truncated, or, when sliding-window
// rings no longer hold the window there, filled again.
static int back_to_depth(speck_ctx *ctx, int depth, const int32_t *toks, float *logits) {
    if (speck_ctx_truncate(ctx, depth) == 0) return 0;
    int none = 0;
    speck_ctx_truncate(ctx, 0);
    return depth > 0 ? speck_forward(ctx, depth, toks, NULL, NULL, &none, 0, logits) : 0;
}

int cmd_bench(int argc, char **argv) {
    const char *path = NULL;
    int n_pp = 512, n_tg = 128, depth = 0, reps = 5;
    bool json = false;
    for (int i = 1; i < argc; i++) {
        const char *v;
        if (cli_flag(argv[i], "--help", "-h")) {
            help();
            return 0;
        } else if (cli_opt(argc, argv, &i, "--model", "-m", &v))
            path = v;
        else if (cli_opt(argc, argv, &i, "--n-prompt", "-p", &v))
            n_pp = (int)cli_int("bench", "-p", v, 0, 1 << 20);
        else if (cli_opt(argc, argv, &i, "--n-gen", "-n", &v))
            n_tg = (int)cli_int("bench", "-n", v, 0, 1 << 20);
        else if (cli_opt(argc, argv, &i, "--n-depth", "-d", &v))
            depth = (int)cli_int("bench", "-d", v, 0, 1 << 20);
        else if (cli_opt(argc, argv, &i, "--repetitions", "-r", &v))
            reps = (int)cli_int("bench", "-r", v, 1, 1000);
        else if (cli_opt(argc, argv, &i, "--threads", "-t", &v))
            speck_set_threads((int)cli_int("bench", "-t", v, 1, 4096));
        else if (cli_flag(argv[i], "--json", NULL))
            json = true;
        else if (cli_kv_opt("bench", argc, argv, &i) || cli_lora_opt("bench", argc, argv, &i) ||
                 cli_delta_opt("bench", argc, argv, &i))
            ;
        else if (cli_flag(argv[i], "--hugepages", NULL))
            cli_load_flags |= SPECK_LOAD_HUGEPAGES;
        else {
            fprintf(stderr, "speck bench: unknown option '%s'\n", argv[i]);
            return 2;
        }
    }
    if (!(path = cli_model_path("bench", path))) return 2;
    speck_model *m = cli_load_model(path);
    if (!m) return cli_fail("bench");
    const speck_hparams *hp = speck_model_hparams(m);
    const int n_new = n_pp > n_tg ? n_pp : n_tg, n_ctx = depth + n_new + 1;
    speck_ctx *ctx = speck_ctx_new_kv(m, n_ctx, cli_kv_type);
    int32_t *toks = malloc((size_t)(depth + n_new) * sizeof *toks + 4);
    float *logits = malloc((size_t)hp->n_vocab * sizeof(float));
    double *t_pp = calloc((size_t)reps, sizeof(double)),
           *t_tg = calloc((size_t)reps, sizeof(double));
    if (!ctx || !toks || !logits || !t_pp || !t_tg) return cli_fail("bench");
    uint64_t s = 12345;
    for (int i = 0; i < depth + n_new; i++) {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        toks[i] = (int32_t)((s >> 33) % (uint64_t)hp->n_vocab);
    }
    // The depth is filled once (untimed); each test truncates back to it.
    int none = 0;
    if (depth > 0 && speck_forward(ctx, depth, toks, NULL, NULL, &none, 0, logits))
        return cli_fail("bench");
    // This machine's bandwidth drifts by tens of percent within minutes (other tenants, clocks),
    // so the probe runs right after each decode run and each run's fraction of the roofline is
    // taken against its own probe; the report gives the medians of both.
    double *bw = calloc((size_t)reps, sizeof(double)), *frac = calloc((size_t)reps, sizeof(double));
    if (!bw || !frac) return cli_fail("bench");
    // Each generated token also reads the cached keys and values of every layer: at depth 1024
    // that is 45 MB (f32) for tinyllama-1.1b, 8 % of its Q4_0 weights; a sliding-window layer
    // reads its window at most.
    const double mean_ctx = depth + (n_tg > 0 ? (n_tg - 1) / 2.0 : 0.0);
    const double kv_bytes = (double)speck_type_row_size(cli_kv_type, 32) / 32; // per value
    double kv_rows = 0;
    for (int l = 0; l < hp->n_layer; l++)
        kv_rows += speck_hparams_layer_swa(hp, l) && hp->n_swa < mean_ctx ? hp->n_swa : mean_ctx;
    double bpt = (double)speck_model_bytes_per_token(m) +
                 2.0 * hp->n_head_kv * hp->head_dim * kv_bytes * kv_rows;
    const double kv_mib = speck_ctx_kv_bytes(ctx) / 1048576.0;
    bw_probe probe = {0};
    double rss_mib = 0;
    for (int r = -1; r < reps; r++) { // r = -1: warm-up (page-in of the mapping, caches)
        if (n_pp > 0) {
            if (back_to_depth(ctx, depth, toks, logits)) return cli_fail("bench");
            int last = n_pp - 1;
            double t0 = cli_now();
            if (speck_forward(ctx, n_pp, toks + depth, NULL, NULL, &last, 1, logits))
                return cli_fail("bench");
            if (r >= 0) t_pp[r] = cli_now() - t0;
        }
        if (n_tg > 0) {
            if (back_to_depth(ctx, depth, toks, logits)) return cli_fail("bench");
            double t0 = cli_now();
            for (int i = 0; i < n_tg; i++)
                if (speck_forward(ctx, 1, &toks[depth + i], NULL, NULL, NULL, 0, logits))
                    return cli_fail("bench");
            if (r >= 0) t_tg[r] = cli_now() - t0;
        }
        if (r < 0) {
            // The warm-up did all the runs' work, so the peak RSS is the runs' own; read it
            // before the probe's 1 GiB buffer exists.
            struct rusage ru;
            getrusage(RUSAGE_SELF, &ru);
            rss_mib = ru.ru_maxrss / 1024.0;
            if (!bw_probe_init(&probe)) return cli_fail("bench");
        } else {
            bw[r] = bw_probe_run(&probe, 4);
            frac[r] = n_tg > 0 ? n_tg / t_tg[r] / (bw[r] * 1e9 / bpt) : 0;
        }
    }
    free(probe.buf);
    double pp = n_pp > 0 ? n_pp / cli_median(t_pp, reps) : 0;
    double tg = n_tg > 0 ? n_tg / cli_median(t_tg, reps) : 0;
    const double bw_med = cli_median(bw, reps), frac_med = cli_median(frac, reps);
    double roof = bw_med * 1e9 / bpt;
    const char *wt = speck_type_name(speck_model_weight_type(m));
    // Mixture of experts: how often each expert was chosen over every pass above (prefill,
    // decode, warm-up), summed over the layers; the roofline above counts the chosen experts'
    // bytes only (speck_model_bytes_per_token).
    const int64_t *ec = speck_ctx_expert_counts(ctx);
    int64_t e_total = 0, e_min = INT64_MAX, e_max = 0;
    for (int e = 0; ec && e < hp->n_expert; e++) {
        int64_t c = 0;
        for (int l = 0; l < hp->n_layer; l++) c += ec[(size_t)l * hp->n_expert + e];
        e_total += c;
        e_min = c < e_min ? c : e_min;
        e_max = c > e_max ? c : e_max;
    }
    if (json) {
        printf("{\"model\": \"%s\", \"arch\": \"%s\", \"type\": \"%s\", \"file_bytes\": %zu, "
               "\"threads\": %d, \"isa\": \"%s\", \"n_prompt\": %d, \"n_gen\": %d, \"n_depth\": "
               "%d, \"kv_type\": \"%s\", "
               "\"repetitions\": %d, \"pp_tok_s\": %.3f, \"tg_tok_s\": %.3f, "
               "\"bandwidth_gb_s\": %.2f, \"bytes_per_token\": %.0f, \"roofline_tok_s\": %.3f, "
               "\"roofline_fraction\": %.4f, \"kv_cache_mib\": %.2f, \"peak_rss_mib\": %.1f",
               path, hp->arch, wt, speck_gguf_file_size(speck_model_gguf(m)), speck_get_threads(),
               speck_kernels_isa(), n_pp, n_tg, depth, speck_type_name(cli_kv_type), reps, pp, tg,
               bw_med, bpt, roof, frac_med, kv_mib, rss_mib);
        if (ec) { // per layer, per expert: tokens routed to it
            printf(", \"n_expert\": %d, \"n_expert_used\": %d, \"expert_counts\": [", hp->n_expert,
                   hp->n_expert_used);
            for (int l = 0; l < hp->n_layer; l++) {
                printf("%s[", l ? ", " : "");
                for (int e = 0; e < hp->n_expert; e++)
                    printf("%s%lld", e ? ", " : "", (long long)ec[(size_t)l * hp->n_expert + e]);
                printf("]");
            }
            printf("]");
        }
        printf("}\n");
    } else {
        printf("| model | type | size | threads | isa | test | t/s |\n");
        printf("| --- | --- | ---: | ---: | --- | --- | ---: |\n");
        double mib = speck_gguf_file_size(speck_model_gguf(m)) / 1048576.0;
        char at[32] = ""; // llama-bench's label for a test run at a depth
        if (depth > 0) snprintf(at, sizeof at, " @ d%d", depth);
        if (n_pp > 0)
            printf("| %s | %s | %.1f MiB | %d | %s | pp%d%s | %.2f |\n",
                   hp->name[0] ? hp->name : path, wt, mib, speck_get_threads(), speck_kernels_isa(),
                   n_pp, at, pp);
        if (n_tg > 0)
            printf("| %s | %s | %.1f MiB | %d | %s | tg%d%s | %.2f |\n",
                   hp->name[0] ? hp->name : path, wt, mib, speck_get_threads(), speck_kernels_isa(),
                   n_tg, at, tg);
        printf("\nmedians of %d runs; %s KV cache of %.1f MiB (%d positions); memory read "
               "bandwidth %.1f GB/s (probed after each run);\n%.1f MiB read per token; decode "
               "roofline %.1f tok/s",
               reps, speck_type_name(cli_kv_type), kv_mib, speck_ctx_n_ctx(ctx), bw_med,
               bpt / 1048576.0, roof);
        if (n_tg > 0)
            printf("; reached %.1f %% (each run against its own probe)", 100.0 * frac_med);
        printf("; peak RSS %.1f MiB\n", rss_mib);
        if (ec && e_total > 0)
            printf("experts: %d of %d per token (the roofline counts their bytes only); choices "
                   "over all layers and passes: most-used expert %.2f %%, least-used %.2f %% "
                   "(uniform %.2f %%)\n",
                   hp->n_expert_used, hp->n_expert, 100.0 * e_max / e_total,
                   100.0 * e_min / e_total, 100.0 / hp->n_expert);
        if (n_tg > 0 && frac_med > 1)
            printf("(above 100 %%: what a token reads fits in the CPU caches, so memory bandwidth "
                   "does not bound this model's decoding)\n");
    }
    free(t_pp);
    free(t_tg);
    free(bw);
    free(frac);
    free(toks);
    free(logits);
    speck_ctx_free(ctx);
    speck_model_free(m);
    return 0;
}
