// Many sequences in one forward pass (speck_mctx) equal single-sequence decoding: greedy tokens
// and logits of several sequences of different lengths, run together with chunked prompts,
// sequences joining late, one freed mid-way and its blocks reused by a new one, and a prompt
// prefix shared through attached blocks, against speck_forward on a speck_ctx fed one token at a
// time. Both use the few-token kernels and the same attention kernel, so the logits must be
// bit-identical (tolerance 0: any difference means a token saw something else than its own
// sequence, or the batch changed its arithmetic).
//
// usage: test_mctx MODEL.gguf [quick]   (quick, for the sanitizer build: shorter prompts)
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "speck.h"
#include "test_util.h"

#define NS 6     // sequences
#define NPRED 12 // generated tokens each
#define MAXP 80

typedef struct {
    int32_t prompt[MAXP + NPRED];
    int np;
    int32_t ref[NPRED]; // reference greedy tokens
    float *ref_lg;      // (NPRED, V) reference logits
} job;

// Reference: a fresh speck_ctx, prompt fed one token per pass, then greedy.
static void reference(const speck_model *m, job *j, int V) {
    speck_ctx *c = speck_ctx_new(m, 256);
    float *lg = malloc((size_t)V * sizeof(float));
    for (int i = 0; i < j->np; i++) speck_forward(c, 1, &j->prompt[i], NULL, NULL, NULL, 0, lg);
    for (int k = 0; k < NPRED; k++) {
        memcpy(j->ref_lg + (size_t)k * V, lg, (size_t)V * sizeof(float));
        j->ref[k] = speck_argmax(lg, V);
        if (k + 1 < NPRED) speck_forward(c, 1, &j->ref[k], NULL, NULL, NULL, 0, lg);
    }
    free(lg);
    speck_ctx_free(c);
}

typedef struct {
    int job, seq, fed, ngen, start_step, stop_at; // stop_at: freed after this many tokens
    int32_t gen[NPRED];
    int32_t next; // token to feed next once the prompt is in
    bool done;
} run;

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : "models/default.gguf";
    speck_model *m = speck_model_load(path);
    if (!m) {
        test_missing(path, "the default model ships in models/");
        return test_summary();
    }
    const int V = speck_model_hparams(m)->n_vocab;
    static job jobs[NS + 1];
    const bool quick = argc > 2 && !strcmp(argv[2], "quick");
    const int lens_full[NS + 1] = {3, 17, 33, 50, 70, 16, 40}, lens_quick[NS + 1] = {3, 9, 17,
                                                                                    34, 20, 16, 36};
    const int *lens = quick ? lens_quick : lens_full;
    uint64_t r = 12345;
    for (int j = 0; j <= NS; j++) {
        jobs[j].np = lens[j];
        for (int i = 0; i < lens[j]; i++) {
            r = r * 6364136223846793005ull + 1442695040888963407ull;
            jobs[j].prompt[i] = (int32_t)((r >> 33) % (uint64_t)V);
        }
        jobs[j].ref_lg = malloc((size_t)NPRED * V * sizeof(float));
    }
    // Job 6 shares job 3's first 32 tokens (two blocks of 16): attached, not recomputed.
    memcpy(jobs[6].prompt, jobs[3].prompt, 32 * sizeof(int32_t));
    for (int j = 0; j <= NS; j++) reference(m, &jobs[j], V);

    const int BS = 16;
    // Blocks: enough for the live sequences, not for all of them at their worst case at once.
    speck_mctx *mc = speck_mctx_new(m, 40, BS, 8, 256);
    CHECK(mc != NULL, "speck_mctx_new: %s", speck_last_error());
    if (!mc) return test_summary();
    // Runs: job 5 starts after job 1 is freed (after 5 tokens) and takes its blocks; job 6 starts
    // late and attaches job 3's first two blocks.
    run runs[NS + 1];
    for (int j = 0; j <= NS; j++)
        runs[j] = (run){.job = j, .seq = -1, .start_step = j < 5 ? j * 2 : 1000, .stop_at = NPRED};
    runs[1].stop_at = 5;
    int *out_rows = malloc(512 * sizeof(int));
    int32_t *tok = malloc(512 * sizeof(int32_t)), *sq = malloc(512 * sizeof(int32_t)),
            *ps = malloc(512 * sizeof(int32_t));
    int *out_run = malloc(512 * sizeof(int));
    float *lg = malloc((size_t)(NS + 1) * V * sizeof(float));
    double maxdiff = 0;
    int mismatches = 0, steps = 0, freed_blocks_reused = 0;
    bool all_done = false;
    for (int step = 0; !all_done && step < 400; step++) {
        int n = 0, n_out = 0;
        for (int k = 0; k <= NS; k++) {
            run *u = &runs[k];
            if (u->done) continue;
            if (k == 5 && runs[1].done && u->start_step == 1000) u->start_step = step;
            if (k == 6 && runs[3].ngen >= 2 && u->start_step == 1000) u->start_step = step;
            if (step < u->start_step) continue;
            job *j = &jobs[u->job];
            if (u->seq < 0) {
                const int free_before = speck_mctx_n_free_blocks(mc);
                u->seq = speck_mctx_seq_new(mc);
                CHECK(u->seq >= 0, "seq_new: %s", speck_last_error());
                if (k == 5) freed_blocks_reused = free_before;
                if (k == 6) {
                    const int b[2] = {speck_mctx_seq_block(mc, runs[3].seq, 0),
                                      speck_mctx_seq_block(mc, runs[3].seq, 1)};
                    CHECK(speck_mctx_seq_attach(mc, u->seq, b, 2) == 0, "attach: %s",
                          speck_last_error());
                    CHECK(speck_mctx_block_refs(mc, b[0]) == 2, "shared block refs %d",
                          speck_mctx_block_refs(mc, b[0]));
                    u->fed = 32;
                }
            }
            const int base = speck_mctx_seq_len(mc, u->seq);
            if (u->fed < j->np) { // chunked prompt: up to 7 tokens a pass
                int c = j->np - u->fed < 7 ? j->np - u->fed : 7;
                for (int i = 0; i < c; i++) {
                    tok[n] = j->prompt[u->fed + i], sq[n] = u->seq, ps[n] = base + i;
                    n++;
                }
                u->fed += c;
                if (u->fed == j->np) out_rows[n_out] = n - 1, out_run[n_out++] = k;
            } else {
                tok[n] = u->next, sq[n] = u->seq, ps[n] = base;
                out_rows[n_out] = n, out_run[n_out++] = k;
                n++;
            }
        }
        if (n == 0) {
            all_done = true;
            for (int k = 0; k <= NS; k++) all_done &= runs[k].done;
            continue;
        }
        int rc = speck_mctx_forward(mc, n, tok, sq, ps, out_rows, n_out, lg);
        CHECK(rc == 0, "forward: %s", speck_last_error());
        if (rc) break;
        steps++;
        for (int o = 0; o < n_out; o++) {
            run *u = &runs[out_run[o]];
            job *j = &jobs[u->job];
            const float *l = lg + (size_t)o * V, *rl = j->ref_lg + (size_t)u->ngen * V;
            for (int v = 0; v < V; v++) {
                double d = fabs((double)l[v] - rl[v]);
                if (d > maxdiff) maxdiff = d;
            }
            int32_t t = speck_argmax(l, V);
            u->gen[u->ngen] = t;
            if (t != j->ref[u->ngen]) mismatches++;
            u->next = t;
            if (++u->ngen >= u->stop_at) {
                speck_mctx_seq_free(mc, u->seq);
                u->done = true;
            }
        }
    }
    CHECK(all_done, "not every run finished");
    CHECK(mismatches == 0, "%d greedy tokens differ from single-sequence decoding", mismatches);
    CHECK(maxdiff == 0.0, "logits differ from single-sequence decoding by up to %g", maxdiff);
    CHECK(freed_blocks_reused > 0, "no freed blocks when the late sequence started");
    CHECK(speck_mctx_n_free_blocks(mc) == speck_mctx_n_blocks(mc),
          "%d of %d blocks free after every sequence ended", speck_mctx_n_free_blocks(mc),
          speck_mctx_n_blocks(mc));
    printf("%d passes, max |logit diff| %g\n", steps, maxdiff);

    // Bad input: nothing changes.
    int s = speck_mctx_seq_new(mc);
    int32_t t0 = 1, p_bad = 5;
    CHECK(speck_mctx_forward(mc, 1, &t0, &s, &p_bad, NULL, 0, lg) != 0, "wrong position accepted");
    int32_t bad_tok = V;
    int32_t p0 = 0;
    CHECK(speck_mctx_forward(mc, 1, &bad_tok, &s, &p0, NULL, 0, lg) != 0, "bad token accepted");
    CHECK(speck_mctx_seq_len(mc, s) == 0, "failed pass changed the sequence");
    // Pool exhaustion: a sequence that needs more blocks than exist fails cleanly.
    speck_mctx *small = speck_mctx_new(m, 2, 4, 2, 64);
    int s2 = speck_mctx_seq_new(small);
    int32_t tk[9], sqs[9], pp[9];
    for (int i = 0; i < 9; i++) tk[i] = 1, sqs[i] = s2, pp[i] = i;
    CHECK(speck_mctx_forward(small, 9, tk, sqs, pp, NULL, 0, lg) == SPECK_ERR_NOMEM,
          "pool overflow not reported");
    CHECK(speck_mctx_n_free_blocks(small) == 2, "failed pass took blocks");
    speck_mctx_free(small);

    speck_mctx_free(mc);
    for (int j = 0; j <= NS; j++) free(jobs[j].ref_lg);
    free(out_rows), free(tok), free(sq), free(ps), free(out_run), free(lg);
    speck_model_free(m);
    return test_summary();
}
