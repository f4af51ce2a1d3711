// The bookkeeping of a training loop shared by `speck train` and `speck finetune`: stop signals,
// the test hook, the loss-curve CSV, the progress line and the final plot.
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

#include "cli.h"

volatile sig_atomic_t cli_stop;

static void on_signal(int sig) {
    cli_stop = sig;
}

void cli_train_begin(cli_train_log *L, const char *cmd, FILE *csv, int64_t step0, int steps,
                     bool quiet) {
    *L = (cli_train_log){.cmd = cmd, .csv = csv, .steps = steps, .quiet = quiet, .step0 = step0,
                         .hook_step = -1, .t_start = cli_now(), .last_val = NAN};
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    const char *hook = getenv("SPECK_TRAIN_SIGNAL_AT");
    long long hs;
    if (hook && sscanf(hook, "%lld:%d", &hs, &L->hook_sig) == 2) L->hook_step = hs;
}

void cli_train_record(cli_train_log *L, int64_t step, double loss, double val, float lr,
                      float gnorm, double tokens, double dt) {
    const int64_t done = step + 1;
    L->tokens_done += tokens;
    if (val == val) L->last_val = val;
    fprintf(L->csv, "%lld,%.6f,", (long long)step, loss);
    if (val == val) fprintf(L->csv, "%.6f", val);
    fprintf(L->csv, ",%.6g,%.4f,%.1f", lr, gnorm, tokens / dt);
    if (L->moe) fprintf(L->csv, ",%.5f", L->aux);
    fputc('\n', L->csv);
    fflush(L->csv);
    // At most ~5 updates a second keeps logs of redirected runs small.
    if (!L->quiet && (val == val || done == L->steps || cli_now() - L->last_print > 0.2)) {
        L->last_print = cli_now();
        const double el = cli_now() - L->t_start;
        char etas[32], bar[32];
        cli_fmt_time(el / (double)(done - L->step0) * (double)(L->steps - done), etas,
                     sizeof etas);
        const int filled = (int)(20.0 * (double)done / L->steps);
        for (int j = 0; j < 20; j++) bar[j] = j < filled ? '#' : '.';
        bar[20] = 0;
        fprintf(stderr, "\rstep %lld/%d [%s] loss %.4f", (long long)done, L->steps, bar, loss);
        if (L->moe) fprintf(stderr, " aux %.3f", L->aux);
        if (L->last_val == L->last_val) fprintf(stderr, " val %.4f", L->last_val);
        fprintf(stderr, " | lr %.2e | %.0f tok/s | ETA %s   ", lr, L->tokens_done / el, etas);
        if (val == val) fprintf(stderr, "\n");
    }
}

void cli_train_hook(const cli_train_log *L, int64_t steps_done) {
    if (L->hook_step >= 0 && steps_done == L->hook_step) raise(L->hook_sig);
}

int cli_train_end(cli_train_log *L, int rc, int64_t steps_done, bool plot, const char *out,
                  const char *csv) {
    if (!rc && cli_stop) {
        fprintf(stderr, "speck %s: interrupted at step %lld; resume with --resume\n", L->cmd,
                (long long)steps_done);
        rc = 130;
    }
    if (!rc && plot) {
        char *png = cli_derived_path(out, ".png");
        if (cli_plot(csv, png) == 0 && !L->quiet) fprintf(stderr, "plot: %s\n", png);
        free(png);
    }
    return rc;
}
