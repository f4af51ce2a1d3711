// The bookkeeping of a training loop shared by `speck train` and `speck finetune`: stop signals,
// the test hook, the loss-curve CSV, the progress line, the final plot, N:M training's options.
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

void cli_nm_init(cli_nm *o) {
    *o = (cli_nm){.p = {.n = 0, .m = 0, .every = 1, .lambda = 2e-4f}};
}

bool cli_nm_opt(const char *cmd, int argc, char **argv, int *i, cli_nm *o) {
    const char *v;
    if (cli_opt(argc, argv, i, "--nm", NULL, &v)) {
        int n, m, used = 0;
        if (sscanf(v, "%d:%d%n", &n, &m, &used) != 2 || v[used]) {
            fprintf(stderr, "speck %s: --nm '%s': expected N:M (e.g. 2:4: 2 weights kept of every "
                            "4 consecutive inputs)\n", cmd, v);
            exit(2);
        }
        o->p.n = n, o->p.m = m;
        return true;
    }
    if (cli_opt(argc, argv, i, "--nm-every", NULL, &v)) {
        o->p.every = (int)cli_int(cmd, "--nm-every", v, 1, 1 << 30);
        o->every_set = true;
        return true;
    }
    if (cli_opt(argc, argv, i, "--nm-lambda", NULL, &v)) {
        o->p.lambda = (float)cli_float(cmd, "--nm-lambda", v);
        o->lambda_set = true;
        return true;
    }
    return false;
}

int cli_nm_apply(const char *cmd, const cli_nm *o, speck_train_model *tm, bool quiet) {
    if (!o->p.m) {
        if (o->every_set || o->lambda_set) {
            fprintf(stderr, "speck %s: --nm-every and --nm-lambda need --nm N:M\n", cmd);
            return 1;
        }
        return 0;
    }
    if (speck_train_set_nm(tm, &o->p)) {
        fprintf(stderr, "speck %s: --nm: %s\n", cmd, speck_last_error());
        return 1;
    }
    if (!quiet)
        fprintf(stderr,
                "N:M sparse training (SR-STE): %d:%d in every layer matrix, masks recomputed "
                "every %d step%s, lambda %g\n",
                o->p.n, o->p.m, o->p.every, o->p.every == 1 ? "" : "s", (double)o->p.lambda);
    return 0;
}
