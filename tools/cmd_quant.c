// `speck quantize` (llama-quantize's file types, imatrix, GPTQ, bit budgets) and `speck imatrix`
// (collect an importance matrix from calibration text).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

// A tensor type named on the command line (speck_type), or -1 after saying what is accepted.
static int type_arg(const char *opt, const char *v) {
    int t = speck_type_from_name(v);
    if (t < 0)
        fprintf(stderr,
                "speck quantize: %s: unknown type '%s' (f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, "
                "q5_1, q2_k, q3_k, q4_k, q5_k, q6_k, iq4_nl, iq4_xs)\n",
                opt, v);
    return t;
}

typedef struct {
    bool report, quiet;
    size_t bytes_in, bytes_out;
    int64_t elements, mat_elements;
    size_t mat_bytes;
    double err_sum; // sum over matrices of err * elements
    int n_cand;
    bool header; // the tensor table's header is still to print
    double predicted; // the bit allocation's summed KL divergence of its choices
} report_state;

static void on_tensor(const speck_quant_tensor_info *ti, void *user) {
    report_state *r = user;
    const size_t in = speck_type_row_size((speck_type)ti->src_type, ti->ne0) *
                      (size_t)(ti->n_elements / ti->ne0);
    r->bytes_in += speck_type_name(ti->src_type) ? in : 0;
    r->bytes_out += ti->bytes;
    r->elements += ti->n_elements;
    if (ti->err >= 0) {
        r->mat_elements += ti->n_elements;
        r->mat_bytes += ti->bytes;
        r->err_sum += ti->err * (double)ti->n_elements;
    }
    // Like llama-quantize, a type whose block does not divide the rows is replaced, and said so.
    if (ti->wanted != ti->type && !r->quiet)
        fprintf(stderr,
                "%sspeck quantize: %s: rows of %lld values do not fit %s's %lld-value blocks: %s "
                "instead\n",
                isatty(2) ? "\r\033[K" : "\n", ti->name, (long long)ti->ne0, speck_type_name(ti->wanted),
                (long long)speck_type_block_size((speck_type)ti->wanted),
                speck_type_name(ti->type));
    if (r->report && r->header) {
        if (r->n_cand) printf("predicted KLD (sum of the chosen): %.4e\n", r->predicted);
        printf("%-32s %-7s %-7s %12s %10s %7s %11s\n", "tensor", "from", "to", "elements", "MiB",
               "bpw", "rel.err");
        r->header = false;
    }
    if (r->report) {
        char err[32] = "";
        if (ti->err >= 0) snprintf(err, sizeof err, "%.3e", ti->err);
        printf("%-32s %-7s %-7s %12lld %10.3f %7.3f %11s\n", ti->name,
               speck_type_name(ti->src_type) ? speck_type_name(ti->src_type) : "?",
               speck_type_name(ti->type) ? speck_type_name(ti->type) : "?",
               (long long)ti->n_elements, ti->bytes / 1048576.0,
               8.0 * (double)ti->bytes / (double)ti->n_elements, err);
    }
}

// --report with --target-bpw: the allocation's table (what each candidate type of each matrix
// costs in KL divergence and bytes; * the choice) and the predicted total.
static void on_candidate(const char *tensor, int type, int64_t bytes, double kld, bool chosen,
                         void *user) {
    report_state *r = user;
    if (!r->report) return;
    if (!r->n_cand++) printf("%-32s %-7s %10s %12s\n", "candidate", "type", "bytes", "KLD");
    printf("%-32s %-7s %10lld %12.4e%s\n", tensor, speck_type_name(type), (long long)bytes, kld,
           chosen ? " *" : "");
    if (chosen) r->predicted += kld;
}

int cmd_quantize(int argc, char **argv) {
    const char *pos[3] = {NULL, NULL, NULL}, *imatrix = NULL, *calib = NULL;
    int n_pos = 0;
    speck_quantize_opts o = {.embd_type = -1, .output_type = -1};
    report_state rep = {0};
    bool pure = false;
    int64_t calib_max = 0;
    for (int i = 1; i < argc; i++) {
        const char *v;
        if (cli_flag(argv[i], "--help", "-h")) {
            printf(
                "usage: speck quantize IN OUT TYPE [--imatrix FILE] [--method rtn|gptq|recon]\n"
                "         [--calib TEXT] [--calib-ctx N] [--calib-tokens N] [--target-bpw X]\n"
                "         [--output-tensor-type T] [--token-embedding-type T] [--pure]\n"
                "         [--allow-requantize] [--report] [--threads N] [--quiet]\n\n"
                "Write IN (a GGUF file or a Hugging Face directory) with its matrices quantized\n"
                "as llama.cpp's llama-quantize does for file type TYPE: %s.\n"
                "Each type's mix gives some tensors more bits (docs/convert.md); --pure puts\n"
                "every matrix in TYPE's base type. Rows a type's block does not divide fall back\n"
                "(Q4_K -> Q5_0, ...; said per tensor). Norms, biases and metadata are copied.\n"
                "  --imatrix FILE     importance matrix (llama-imatrix's or speck imatrix's, GGUF\n"
                "                     or .dat) weighting the scale searches\n"
                "  --method gptq      GPTQ: round columns in order, feeding the error forward\n"
                "                     under a Hessian from the calibration text (--calib)\n"
                "  --method recon     GPTQ in forward order, each matrix retargeted so that its\n"
                "                     output from the quantized model's inputs matches the\n"
                "                     unquantized model's (errors of earlier layers compensated)\n"
                "  --target-bpw X     choose per-tensor types to minimize the measured error at\n"
                "                     X bits per weight over all tensors (needs --calib)\n"
                "  --calib TEXT       calibration text; --calib-ctx window (default the model's\n"
                "                     context, at most 512), --calib-tokens N uses the first N\n"
                "  --report           per-tensor table: types, MiB, bits per weight, relative\n"
                "                     squared error (imatrix-weighted when given)\n"
                "  --output-tensor-type / --token-embedding-type T: those tensors' own type\n"
                "  --allow-requantize convert already-quantized tensors to other types\n"
                "OUT appears only when complete (temporary file + rename).\n",
                speck_ftype_list());
            return 0;
        } else if (cli_opt(argc, argv, &i, "--output-tensor-type", NULL, &v)) {
            if ((o.output_type = type_arg("--output-tensor-type", v)) < 0) return 2;
        } else if (cli_opt(argc, argv, &i, "--token-embedding-type", NULL, &v)) {
            if ((o.embd_type = type_arg("--token-embedding-type", v)) < 0) return 2;
        } else if (cli_opt(argc, argv, &i, "--imatrix", NULL, &v))
            imatrix = v;
        else if (cli_opt(argc, argv, &i, "--calib", NULL, &v))
            calib = v;
        else if (cli_opt(argc, argv, &i, "--calib-ctx", NULL, &v))
            o.calib_ctx = (int)cli_int("quantize", "--calib-ctx", v, 16, 1 << 16);
        else if (cli_opt(argc, argv, &i, "--calib-tokens", NULL, &v))
            calib_max = cli_int("quantize", "--calib-tokens", v, 16, INT64_MAX);
        else if (cli_opt(argc, argv, &i, "--target-bpw", NULL, &v)) {
            o.target_bpw = cli_float("quantize", "--target-bpw", v);
            if (!(o.target_bpw > 0 && o.target_bpw <= 32)) {
                fprintf(stderr, "speck quantize: --target-bpw: '%s' is not in (0, 32]\n", v);
                return 2;
            }
        } else if (cli_opt(argc, argv, &i, "--method", NULL, &v)) {
            if (!strcmp(v, "rtn"))
                o.method = SPECK_QMETHOD_RTN;
            else if (!strcmp(v, "gptq"))
                o.method = SPECK_QMETHOD_GPTQ;
            else if (!strcmp(v, "recon"))
                o.method = SPECK_QMETHOD_RECON;
            else {
                fprintf(stderr, "speck quantize: --method: '%s' is not rtn, gptq or recon\n", v);
                return 2;
            }
        } else if (cli_opt(argc, argv, &i, "--threads", "-t", &v))
            speck_set_threads((int)cli_int("quantize", "--threads", v, 1, 4096));
        else if (cli_flag(argv[i], "--allow-requantize", NULL))
            o.allow_requantize = true;
        else if (cli_flag(argv[i], "--pure", NULL))
            pure = true;
        else if (cli_flag(argv[i], "--report", NULL))
            rep.report = true;
        else if (cli_flag(argv[i], "--quiet", "-q"))
            rep.quiet = true;
        else if (argv[i][0] != '-' && n_pos < 3)
            pos[n_pos++] = argv[i];
        else {
            fprintf(stderr, "speck quantize: unknown option '%s'\n", argv[i]);
            return 2;
        }
    }
    if (n_pos != 3) {
        fprintf(stderr, "speck quantize: need IN OUT TYPE (speck quantize --help)\n");
        return 2;
    }
    const int ftype = speck_ftype_from_name(pos[2]);
    if (ftype < 0) {
        fprintf(stderr, "speck quantize: TYPE: unknown type '%s' (%s)\n", pos[2],
                speck_ftype_list());
        return 2;
    }
    if ((o.method != SPECK_QMETHOD_RTN || o.target_bpw > 0) && !calib) {
        fprintf(stderr, "speck quantize: --method gptq/recon and --target-bpw need --calib TEXT\n");
        return 2;
    }
    o.type = (speck_type)speck_ftype_base(ftype);
    o.ftype = pure ? 0 : ftype;
    o.measure = rep.report;
    o.on_tensor = on_tensor;
    o.on_candidate = on_candidate;
    o.user = &rep;
    speck_imatrix *im = NULL;
    int32_t *calib_ids = NULL;
    if (imatrix && !(im = speck_imatrix_load(imatrix))) return cli_fail("quantize");
    o.imatrix = im;
    if (calib) {
        int64_t n = cli_tokenize_file("quantize", pos[0], calib, false, &calib_ids);
        if (n < 0) return 1;
        o.calib = calib_ids;
        o.n_calib = calib_max > 0 && calib_max < n ? calib_max : n;
    }
    // The table's header comes with its first row: the allocation's candidates print first.
    rep.header = rep.report;
    const int rc = speck_gguf_quantize(pos[0], pos[1], &o, !rep.quiet);
    speck_imatrix_free(im);
    free(calib_ids);
    if (rc) return cli_fail("quantize");
    if (rep.report) {
        printf("total: %.2f MiB -> %.2f MiB, %.4f bits per weight (%lld weights)\n",
               rep.bytes_in / 1048576.0, rep.bytes_out / 1048576.0,
               8.0 * (double)rep.bytes_out / (double)rep.elements, (long long)rep.elements);
        if (rep.mat_elements)
            printf("matrices: %.4f bits per weight, mean relative squared error %.4e\n",
                   8.0 * (double)rep.mat_bytes / (double)rep.mat_elements,
                   rep.err_sum / (double)rep.mat_elements);
    }
    if (!rep.quiet) fprintf(stderr, "speck quantize: wrote %s\n", pos[1]);
    return 0;
}

// A progress line, redrawn at most ~5 times a second (user: the time of the last redraw).
static void imatrix_progress(int64_t done, int64_t total, void *user) {
    double *last = user, t = cli_now();
    if (done < total && t - *last < 0.2) return;
    *last = t;
    fprintf(stderr, "\rspeck imatrix: window %lld/%lld", (long long)done, (long long)total);
    if (done == total) fprintf(stderr, "\n");
}

int cmd_imatrix(int argc, char **argv) {
    const char *model = NULL, *text = NULL, *out = NULL, *in_file = NULL;
    int ctx = 512;
    int64_t chunks = 0;
    bool dat = false, with_output = false, quiet = false;
    for (int i = 1; i < argc; i++) {
        const char *v;
        if (cli_flag(argv[i], "--help", "-h")) {
            printf("usage: speck imatrix -m MODEL -f TEXT -o FILE [--ctx N] [--chunks N]\n"
                   "         [--process-output] [--output-format gguf|dat] [--threads N]\n"
                   "       speck imatrix --in-file FILE -o FILE2 [--output-format gguf|dat]\n\n"
                   "Importance matrix for `speck quantize --imatrix` and llama-quantize: per input\n"
                   "column of every matrix of the layers, the sum of its squared activation over\n"
                   "TEXT, run in windows of N tokens (default 512, capped at the model's context;\n"
                   "each from an empty cache, the remainder dropped, as llama-imatrix does).\n"
                   "--process-output also records the output head's input. The file is\n"
                   "llama.cpp's GGUF imatrix format (or its legacy .dat): either tool reads what\n"
                   "the other writes. --in-file converts an existing file between the formats.\n");
            return 0;
        } else if (cli_opt(argc, argv, &i, "--model", "-m", &v))
            model = v;
        else if (cli_opt(argc, argv, &i, "--file", "-f", &v))
            text = v;
        else if (cli_opt(argc, argv, &i, "--output", "-o", &v))
            out = v;
        else if (cli_opt(argc, argv, &i, "--in-file", NULL, &v))
            in_file = v;
        else if (cli_opt(argc, argv, &i, "--ctx", "-c", &v))
            ctx = (int)cli_int("imatrix", "--ctx", v, 16, 1 << 16);
        else if (cli_opt(argc, argv, &i, "--chunks", NULL, &v))
            chunks = cli_int("imatrix", "--chunks", v, 1, INT64_MAX);
        else if (cli_opt(argc, argv, &i, "--threads", "-t", &v))
            speck_set_threads((int)cli_int("imatrix", "--threads", v, 1, 4096));
        else if (cli_opt(argc, argv, &i, "--output-format", NULL, &v)) {
            if (strcmp(v, "gguf") && strcmp(v, "dat")) {
                fprintf(stderr, "speck imatrix: --output-format: '%s' is not gguf or dat\n", v);
                return 2;
            }
            dat = !strcmp(v, "dat");
        } else if (cli_flag(argv[i], "--process-output", NULL))
            with_output = true;
        else if (cli_flag(argv[i], "--quiet", "-q"))
            quiet = true;
        else {
            fprintf(stderr, "speck imatrix: unknown option '%s'\n", argv[i]);
            return 2;
        }
    }
    if (!out || (!in_file && !text)) {
        fprintf(stderr, "speck imatrix: need -f TEXT (or --in-file FILE) and -o FILE "
                        "(speck imatrix --help)\n");
        return 2;
    }
    speck_imatrix *im = NULL;
    if (in_file) {
        if (!(im = speck_imatrix_load(in_file))) return cli_fail("imatrix");
    } else {
        if (!(model = cli_model_path("imatrix", model))) return 2;
        speck_model *m = speck_model_load(model);
        if (!m) return cli_fail("imatrix");
        if (ctx > speck_model_hparams(m)->n_ctx_train) ctx = speck_model_hparams(m)->n_ctx_train;
        int32_t *ids = NULL;
        int64_t n = cli_tokenize_file("imatrix", model, text, true, &ids);
        if (n < 0) return 1;
        // llama-imatrix starts every window with BOS when the vocabulary adds one.
        speck_vocab *voc = speck_vocab_from_gguf(speck_model_gguf(m));
        if (voc && speck_vocab_add_bos(voc) && speck_vocab_bos(voc) >= 0)
            for (int64_t w = 0; w + ctx <= n; w += ctx) ids[w] = speck_vocab_bos(voc);
        speck_vocab_free(voc);
        if (chunks > 0 && chunks * ctx < n) n = chunks * ctx;
        double last = 0;
        im = speck_imatrix_compute(m, ids, n, ctx, with_output, text,
                                   quiet ? NULL : imatrix_progress, &last);
        free(ids);
        speck_model_free(m);
        if (!im) return cli_fail("imatrix");
    }
    const int rc = speck_imatrix_save(im, out, dat);
    const int entries = speck_imatrix_n_entries(im);
    speck_imatrix_free(im);
    if (rc) return cli_fail("imatrix");
    if (!quiet)
        fprintf(stderr, "speck imatrix: wrote %s (%d entries, %s)\n", out, entries,
                dat ? "legacy .dat" : "GGUF");
    return 0;
}
