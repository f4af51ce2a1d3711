// Weights holding inf and NaN (a damaged or hostile file) must give defined behaviour: the exp of
// SwiGLU and softmax, the activation quantizers, the forward pass on every weight type and kernel
// path, sampling and speculative decoding all run to completion with valid token ids. Run under
// ASan + UBSan (float-cast-overflow included) by scripts/test.sh, which is where a float-to-int
// conversion of NaN or a shift of a negative exponent fails this test.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/simd_math.h"
#include "fuzz_common.h"
#include "kernels/kernels.h"
#include "kernels/kernels_internal.h"
#include "speck.h"
#include "test_util.h"

static float float_of(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static void test_exp(void) {
    CHECK(isnan(speck_exp_poly(NAN)) && isnan(speck_exp_poly(-NAN)), "exp(NaN) is NaN");
    CHECK(speck_exp_poly(INFINITY) == INFINITY && speck_exp_poly(1000.0f) == INFINITY &&
              speck_exp_poly(88.8f) == INFINITY,
          "exp(+inf), exp(1000), exp(88.8) overflow to inf");
    CHECK(speck_exp_poly(-INFINITY) == 0.0f && speck_exp_poly(-1000.0f) == 0.0f &&
              speck_exp_poly(-87.5f) == 0.0f,
          "exp(-inf), exp(-1000), exp(-87.5) are 0");
    CHECK(speck_exp_poly(0.0f) == 1.0f, "exp(0) = 1");
    // Accuracy where the result is a normal float (the Cephes polynomial: about 1 ulp).
    double worst = 0;
    for (float x = -87.0f; x <= 88.0f; x += 0.00390625f) {
        const double e = exp((double)x), rel = fabs((double)speck_exp_poly(x) - e) / e;
        if (rel > worst) worst = rel;
    }
    CHECK(worst < 3e-7, "exp on [-87, 88]: worst relative error %.2e (< 3e-7)", worst);
    // Every 65537th bit pattern (NaN payloads, subnormals, the largest floats, both signs): a
    // defined, non-negative result, NaN exactly for NaN.
    bool ok = true;
    for (uint64_t u = 0; u <= 0xFFFFFFFFu && ok; u += 65537) {
        const float x = float_of((uint32_t)u), y = speck_exp_poly(x);
        ok = isnan(x) ? isnan(y) : !isnan(y) && y >= 0.0f;
        if (!ok) printf("  exp(%a = 0x%08x) = %a\n", x, (unsigned)u, y);
    }
    CHECK(ok, "exp over the float bit patterns");
}

// A row with inf, -inf, NaN and huge values among ordinary ones, quantized to Q8_0 / Q4_0. The
// reference code's conversions are defined for them (the sanitizers check): an inf makes its
// block's scale inf and the block's finite values quantize to zero (Q8_0) / the middle code 8
// (Q4_0); a NaN value takes the lowest code. A block of finite values, however large, quantizes
// bit for bit alike on this CPU's kernels.
static void test_quantize(void) {
    float x[128];
    for (int i = 0; i < 128; i++) x[i] = (float)(i % 17) / 4 - 2;
    x[3] = INFINITY, x[40] = -INFINITY, x[70] = NAN, x[100] = 3e38f, x[101] = -3e38f;
    speck_block_q8_0 q8[4], q8r[4];
    speck_block_q4_0 q4[4], q4r[4];
    speck_quantize_row_q8_0_ref(x, q8r, 128);
    speck_quantize_row_q4_0_ref(x, q4r, 128);
    speck_quantize_row(SPECK_TYPE_Q8_0, x, q8, 128);
    speck_quantize_row(SPECK_TYPE_Q4_0, x, q4, 128);
    bool q8_ok = q8r[1].d == speck_fp32_to_fp16(INFINITY) && q8r[1].qs[8] == -128, q4_ok = true;
    for (int j = 0; j < 32; j++) {
        q8_ok &= j == 8 || q8r[1].qs[j] == 0;
        const int lo = q4r[1].qs[j % 16] & 15, hi = q4r[1].qs[j % 16] >> 4;
        q4_ok &= (j < 16 ? lo : hi) == (j == 8 ? 0 : 8);
    }
    CHECK(q8_ok, "Q8_0 block with -inf: scale inf, finite values 0, the inf -128");
    CHECK(q4_ok, "Q4_0 block with -inf: finite values the middle code 8, the inf 0");
    CHECK(q8r[2].qs[70 - 64] == -128, "Q8_0: NaN takes the lowest code (%d)", q8r[2].qs[6]);
    CHECK(!memcmp(&q8[3], &q8r[3], sizeof q8[3]) && !memcmp(&q4[3], &q4r[3], sizeof q4[3]),
          "a block with +-3e38 quantizes alike on the %s kernels", speck_isa());
}

// Forward passes, sampling and speculative decoding on a micro model with inf / NaN planted in
// every tensor (fuzz_micro_model), for each weight type and architecture, on the kernel path
// named by isa.
static void run_model(const char *path, const char *label) {
    speck_model *m = speck_model_load(path);
    CHECK(m != NULL, "%s: loads: %s", label, m ? "" : speck_last_error());
    if (!m) return;
    const int V = speck_model_hparams(m)->n_vocab;
    float *logits = malloc((size_t)V * 24 * sizeof *logits);
    int32_t toks[24];
    for (int i = 0; i < 24; i++) toks[i] = (i * 5 + 3) % V;
    for (int kv = 0; kv < 2; kv++) {
        speck_ctx *c = speck_ctx_new_kv(m, 32, kv ? SPECK_TYPE_F16 : SPECK_TYPE_F32);
        // A 20-token prefill (the attention GEMM path), then decode steps one token at a time.
        bool ok = c && speck_forward(c, 20, toks, NULL, NULL, NULL, 0, logits) == 0;
        for (int i = 20; ok && i < 24; i++)
            ok = speck_forward(c, 1, toks + i, NULL, NULL, NULL, 0, logits) == 0;
        CHECK(ok, "%s (%s cache): forward passes run: %s", label, kv ? "f16" : "f32",
              speck_last_error());
        int nonfinite = 0;
        for (int j = 0; j < V; j++) nonfinite += !isfinite(logits[j]);
        speck_sampler_params sp = speck_sampler_default();
        sp.temperature = 0.7f, sp.top_k = 8, sp.top_p = 0.9f, sp.min_p = 0.02f;
        sp.repeat_penalty = 1.2f, sp.repeat_last_n = 8;
        speck_sampler *s = speck_sampler_new(&sp, V);
        bool in_range = true;
        for (int k = 0; k < 8; k++) {
            const int32_t id = speck_sampler_sample(s, logits);
            in_range &= id >= 0 && id < V;
            speck_sampler_accept(s, id < 0 || id >= V ? 0 : id);
        }
        const int32_t best = speck_argmax(logits, V);
        CHECK(in_range && best >= 0 && best < V,
              "%s: sampling %d non-finite logits of %d gives valid ids", label, nonfinite, V);
        speck_sampler_free(s);
        speck_ctx_free(c);
    }
    // Speculative decoding (ADED drafts, the measured candidate budget): the NaN confidences
    // and probabilities must not break the verification loop.
    speck_ctx *c = speck_ctx_new(m, 64);
    speck_spec_params p = speck_spec_default();
    speck_spec_parse_kinds("prompt,aded", p.kinds);
    p.auto_budget = true;
    p.max_nodes = 6;
    speck_decoder *d = c ? speck_decoder_new(m, c, &p) : NULL;
    speck_sampler_params sp = speck_sampler_default();
    sp.temperature = 0.9f;
    speck_sampler *s = speck_sampler_new(&sp, V);
    speck_spec_stats st;
    const int rc = d ? speck_decode(d, toks, 8, 12, s, NULL, NULL, NULL, &st) : -1;
    CHECK(rc == 0 && st.n_generated <= 12, "%s: speculative decoding runs: %s", label,
          rc ? speck_last_error() : "");
    speck_sampler_free(s);
    speck_decoder_free(d);
    speck_ctx_free(c);
    free(logits);
    speck_model_free(m);
    // Training loads the weights as f32 and runs its own forward / backward.
    speck_train_model *tm = speck_train_model_load(path);
    if (tm) {
        int32_t in[4] = {1, 2, 3, 4}, tg[4] = {2, 3, 4, 5};
        float loss;
        CHECK(speck_train_step(tm, in, tg, 1, 4, 1.0f, &loss) == 0, "%s: a training step runs",
              label);
        speck_train_model_free(tm);
    }
}

int main(int argc, char **argv) {
    const char *dir = argc > 1 ? argv[1] : "/tmp";
    char path[1024];
    snprintf(path, sizeof path, "%s/nonfinite-%d.gguf", dir, (int)getpid());
    speck_set_threads(2);
    test_exp();
    test_quantize();
    static const speck_type types[] = {SPECK_TYPE_F32, SPECK_TYPE_F16, SPECK_TYPE_BF16,
                                       SPECK_TYPE_Q8_0, SPECK_TYPE_Q4_0};
    static const char *const isas[] = {"avx512", "avx2", "scalar"};
    const char *best = speck_isa();
    for (int i = 0; i < 3; i++) {
        if (speck_set_isa(isas[i])) {
            printf("SKIP the %s kernels (this CPU lacks them)\n", isas[i]);
            continue;
        }
        for (int t = 0; t < 5; t++)
            for (int a = 0; a < 2; a++) {
                fuzz_model_spec spec = {
                    a ? "qwen2" : "llama", types[t], a == 1, 0, NULL, false, true};
                char label[64];
                snprintf(label, sizeof label, "%s %s %s", isas[i], spec.arch,
                         speck_type_name(types[t]));
                CHECK(fuzz_micro_model(path, &spec, 1 + (uint64_t)t) == 0, "%s: write: %s", label,
                      speck_last_error());
                run_model(path, label);
            }
    }
    speck_set_isa(best);
    unlink(path);
    return test_summary();
}
