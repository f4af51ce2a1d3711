// LoRA adapters (src/adapt/): unmerged adapters equal merged ones, detaching restores the base,
// adapter GGUF <-> PEFT round trip is bit-identical and PEFT's q/k row order agrees with the
// Hugging Face model export, fine-tuning data masks exactly the prompt / non-assistant tokens,
// and bad input is refused with a clear error and no file written.
//
// usage: test_lora MODELS_DIR WORK_DIR   (MODELS_DIR holds default.gguf and draft.gguf)
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "speck.h"
#include "logits_util.h"
#include "test_util.h"

// An adapter for m with B drawn from a fixed pattern (a fresh one's B is 0: the base).
static speck_lora *make_adapter(speck_model *m, int rank, const char *targets, float amp) {
    unsigned mask;
    if (speck_lora_parse_targets(targets, &mask)) return NULL;
    speck_lora *a = speck_lora_new(m, rank, 2.0f * rank, mask, 9);
    for (int l = 0; a && l < speck_lora_n_layer(a); l++)
        for (int t = 0; t < SPECK_LORA_N_TARGETS; t++) {
            int64_t n;
            float *b = speck_lora_matrix(a, l, t, true, NULL, &n);
            for (int64_t j = 0; b && j < n; j++) b[j] = amp * sinf(0.61f * (float)j + (float)t);
        }
    return a;
}

// Unmerged (attached) adapters give the merged model's logits on both forward paths (the
// streaming one below 64 tokens, the batch one above); detaching gives the base's exactly.
static void test_merge_equals_unmerged(const char *base16) {
    // An f32 copy of the base (a merge of no adapter), so that both sides multiply by the same
    // weights and differ only in summation order.
    const char *base = test_path("base32.gguf"), *merged = test_path("merged32.gguf");
    CHECK(speck_lora_merge(base16, NULL, NULL, 0, SPECK_TYPE_F32, base) == 0, "f32 copy: %s",
          speck_last_error());
    speck_model *m = speck_model_load(base);
    if (!m) {
        CHECK(0, "load %s: %s", base, speck_last_error());
        return;
    }
    speck_lora *a1 = make_adapter(m, 8, "q,k,v,o,gate,up,down", 0.02f);
    speck_lora *a2 = make_adapter(m, 4, "q,v", -0.03f);
    float scales[2] = {1.0f, 0.5f};
    speck_lora *ads[2] = {a1, a2};
    CHECK(speck_lora_merge(base, ads, scales, 2, SPECK_TYPE_F32, merged) == 0, "merge: %s",
          speck_last_error());
    speck_model *mm = speck_model_load(merged);
    const int V = speck_model_hparams(m)->n_vocab;
    int32_t tok[80];
    for (int i = 0; i < 80; i++) tok[i] = (i * 37 + 11) % V;
    const int lens[2] = {12, 80};
    for (int k = 0; k < 2 && mm; k++) {
        int n = lens[k];
        float *l_base = run_logits(m, tok, n);
        CHECK(speck_model_lora_add(m, a1, 1.0f) == 0 && speck_model_lora_add(m, a2, 0.5f) == 0,
              "attach: %s", speck_last_error());
        CHECK(speck_model_lora_count(m) == 2, "2 adapters attached");
        float *l_un = run_logits(m, tok, n), *l_me = run_logits(mm, tok, n);
        speck_model_lora_clear(m);
        float *l_back = run_logits(m, tok, n);
        if (l_base && l_un && l_me && l_back) {
            double s, d = max_abs(l_un, l_me, (size_t)n * V, &s);
            double moved = max_abs(l_un, l_base, (size_t)n * V, NULL);
            // f32 both ways: the adapter term summed in another order than the merged
            // weights' products, ~1e-6 relative; a missing or wrongly scaled term moves the
            // logits by `moved` (>= 0.05 here).
            CHECK(d <= 1e-4 * (s > 1 ? s : 1), "%d tokens: unmerged vs merged max |diff| %.3g",
                  n, d);
            CHECK(moved > 0.05, "%d tokens: the adapters change the logits (%.3g)", n, moved);
            CHECK(memcmp(l_back, l_base, (size_t)n * V * sizeof(float)) == 0,
                  "%d tokens: detached model gives the base's logits bit for bit", n);
            printf("  %d tokens: unmerged vs merged %.2e (logits up to %.1f), adapters move "
                   "them by %.3f\n",
                   n, d, s, moved);
        }
        free(l_base);
        free(l_un);
        free(l_me);
        free(l_back);
    }
    speck_model_free(mm);
    speck_lora_free(a1);
    speck_lora_free(a2);
    speck_model_free(m);
}

// GGUF -> PEFT -> GGUF is bit-identical; PEFT's lora_B rows are in the Hugging Face export's row
// order (W_hf(merged) = W_hf(base) + s B_hf A_hf, the base exported by speck_hf_export).
static void test_peft(const char *base16) {
    speck_model *m = speck_model_load(base16);
    speck_lora *a = make_adapter(m, 8, "q,k,v,o,gate,up,down", 0.02f);
    const char *g1 = test_path("a.gguf"), *dir = test_path("a_peft"), *g2 = test_path("a2.gguf");
    CHECK(speck_lora_save(a, g1) == 0, "save: %s", speck_last_error());
    CHECK(speck_lora_export_peft(a, m, dir) == 0, "export: %s", speck_last_error());
    speck_lora *b = speck_lora_import_peft(dir, m);
    CHECK(b != NULL, "import: %s", speck_last_error());
    if (b) {
        CHECK(speck_lora_save(b, g2) == 0, "save: %s", speck_last_error());
        CHECK(speck_lora_n_params(a) == speck_lora_n_params(b) &&
                  !memcmp(speck_lora_params(a), speck_lora_params(b),
                          (size_t)speck_lora_n_params(a) * sizeof(float)) &&
                  speck_lora_alpha(a) == speck_lora_alpha(b),
              "round trip is bit-identical");
        size_t n1, n2;
        char *f1 = test_read_file(g1, &n1), *f2 = test_read_file(g2, &n2);
        CHECK(f1 && f2 && n1 == n2 && !memcmp(f1, f2, n1), "the two adapter files are identical");
        free(f1);
        free(f2);
    }
    // Against the Hugging Face export of the base and of the merged model.
    const char *merged = test_path("merged_peft.gguf"), *hb = test_path("hf_base"), *hm = test_path("hf_m");
    float one = 1.0f;
    CHECK(speck_lora_merge(base16, &a, &one, 1, SPECK_TYPE_F32, merged) == 0, "merge: %s",
          speck_last_error());
    CHECK(speck_hf_export(base16, hb, SPECK_TYPE_F32, false) == 0, "hf export: %s",
          speck_last_error());
    CHECK(speck_hf_export(merged, hm, SPECK_TYPE_F32, false) == 0, "hf export: %s",
          speck_last_error());
    char fb[1300], fm[1300], fp[1300];
    snprintf(fb, sizeof fb, "%s/model.safetensors", hb);
    snprintf(fm, sizeof fm, "%s/model.safetensors", hm);
    snprintf(fp, sizeof fp, "%s/adapter_model.safetensors", dir);
    speck_st *sb = speck_st_open(fb), *sm = speck_st_open(fm), *sp = speck_st_open(fp);
    CHECK(sb && sm && sp, "open the exports: %s", speck_last_error());
    const char *mods[] = {"self_attn.q_proj", "self_attn.k_proj", "mlp.down_proj"};
    const float s = speck_lora_alpha(a) / 8.0f;
    for (int i = 0; sb && sm && sp && i < 3; i++) {
        char n[160];
        snprintf(n, sizeof n, "model.layers.1.%s.weight", mods[i]);
        const speck_st_tensor *wb = speck_st_find(sb, n), *wm = speck_st_find(sm, n);
        snprintf(n, sizeof n, "base_model.model.model.layers.1.%s.lora_A.weight", mods[i]);
        const speck_st_tensor *ta = speck_st_find(sp, n);
        snprintf(n, sizeof n, "base_model.model.model.layers.1.%s.lora_B.weight", mods[i]);
        const speck_st_tensor *tb = speck_st_find(sp, n);
        if (!wb || !wm || !ta || !tb) {
            CHECK(0, "tensors of %s missing (%d %d %d %d)", mods[i], !wb, !wm, !ta, !tb);
            continue;
        }
        const float *W0 = wb->data, *W1 = wm->data, *A = ta->data, *B = tb->data;
        int64_t rows = wb->shape[0], cols = wb->shape[1], r = ta->shape[0];
        double err = 0;
        for (int64_t o = 0; o < rows; o++)
            for (int64_t j = 0; j < cols; j++) {
                double d = 0;
                for (int64_t k = 0; k < r; k++) d += (double)B[o * r + k] * A[k * cols + j];
                err = fmax(err, fabs(W0[o * cols + j] + s * d - W1[o * cols + j]));
            }
        // f32 rounding of W + sBA (|W| < 1): ~1e-7; a row permuted the wrong way: ~1e-2.
        CHECK(err < 1e-5, "%s: HF merged = HF base + s B A (max err %.2e)", mods[i], err);
    }
    speck_st_close(sb);
    speck_st_close(sm);
    speck_st_close(sp);
    speck_lora_free(b);
    speck_lora_free(a);
    speck_model_free(m);
}

// Tokens whose prediction is trained, as text.
static char *trained_text(const speck_vocab *v, const speck_ft_data *d, int ex) {
    int32_t ids[4096];
    int n = 0;
    for (int64_t i = d->start[ex]; i < d->start[ex + 1] && n < 4096; i++)
        if (d->train[i]) ids[n++] = d->tok[i];
    char *s = calloc(1, 8192);
    speck_detokenize(v, ids, n, s, 8191);
    return s;
}

static void test_data(const char *base16) {
    speck_vocab *v = speck_vocab_load(base16);
    if (!v) {
        CHECK(0, "vocab: %s", speck_last_error());
        return;
    }
    const char *jl =
        "{\"prompt\": \"def add(a, b):\\n\", \"completion\": \"    return a + b\\n\"}\n"
        "\n"
        "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", "
        "\"content\": \"Say hi\"}, {\"role\": \"assistant\", \"content\": \"hi there\"}, "
        "{\"role\": \"user\", \"content\": \"Again\"}, {\"role\": \"assistant\", \"content\": "
        "\"hello\"}]}\n"
        "{\"text\": \"x = 1\\n\"}\n";
    speck_ft_data d;
    int err = speck_ft_data_parse(jl, strlen(jl), "t.jsonl", v, "chatml", &d);
    CHECK(err == 0, "parse: %s", speck_last_error());
    if (!err) {
        CHECK(d.n_examples == 3, "3 examples (got %d)", d.n_examples);
        char eos[64] = "";
        speck_token_to_piece(v, speck_vocab_eos(v), eos, sizeof eos - 1);
        char want[256];
        char *t0 = trained_text(v, &d, 0), *t1 = trained_text(v, &d, 1), *t2 = trained_text(v, &d, 2);
        snprintf(want, sizeof want, "    return a + b\n%s", eos);
        CHECK(!strcmp(t0, want), "prompt/completion: only the completion + EOS trained: '%s'", t0);
        // chatml: each assistant turn's text and its closing marker, nothing of the system or
        // user turns or of the "<|im_start|>assistant\n" openings.
        CHECK(!strcmp(t1, "hi there<|im_end|>\nhello<|im_end|>\n"),
              "chat: only the assistant turns trained: '%s'", t1);
        snprintf(want, sizeof want, "x = 1\n%s", eos);
        // A text example's first token is not predicted (it follows the previous example).
        CHECK(strstr(want, t2) && strlen(t2) + 2 >= strlen(want) - strlen(eos),
              "text: all trained after the first token: '%s'", t2);
        free(t0);
        free(t1);
        free(t2);
        speck_ft_data_free(&d);
    }
    // Malformed lines are named by number.
    const char *bad[] = {"{\"text\": \"a\"}\n{\"text\": \"b\"}\n{\"text\": oops}\n",
                         "{\"text\": \"a\"}\n\n{\"prompt\": \"only a prompt\"}\n",
                         "{\"messages\": [{\"role\": \"user\", \"content\": \"no answer\"}]}\n"};
    const char *where[] = {"t.jsonl:3:", "t.jsonl:3:", "t.jsonl:1:"};
    for (int i = 0; i < 3; i++) {
        err = speck_ft_data_parse(bad[i], strlen(bad[i]), "t.jsonl", v, "chatml", &d);
        CHECK(err != 0 && strstr(speck_last_error(), where[i]), "bad data %d: '%s'", i,
              speck_last_error());
    }
    speck_vocab_free(v);
}

static void test_bad_input(const char *base16, const char *draft) {
    speck_model *m = speck_model_load(base16), *dm = speck_model_load(draft);
    if (!m || !dm) {
        CHECK(0, "load: %s", speck_last_error());
        speck_model_free(m);
        speck_model_free(dm);
        return;
    }
    unsigned mask;
    CHECK(speck_lora_parse_targets("q,v,mlp", &mask) != 0 && strstr(speck_last_error(), "'mlp'"),
          "unknown target named: %s", speck_last_error());
    CHECK(speck_lora_new(m, 0, 1.0f, 1, 1) == NULL && strstr(speck_last_error(), "rank 0"),
          "rank 0 refused: %s", speck_last_error());
    speck_lora *a = make_adapter(dm, 4, "q,v", 0.01f);
    CHECK(speck_model_lora_add(m, a, 1.0f) != 0 && strstr(speck_last_error(), "another base"),
          "adapter of the draft on the default model refused: %s", speck_last_error());
    CHECK(speck_model_lora_count(m) == 0, "nothing attached after the refusal");
    const char *out = test_path("never.gguf");
    float one = 1.0f;
    CHECK(speck_lora_merge(base16, &a, &one, 1, -1, out) != 0 && !test_file_exists(out),
          "merge with the wrong base fails and writes nothing: %s", speck_last_error());
    const char *dir = test_path("never_peft");
    CHECK(speck_lora_export_peft(a, m, dir) != 0 && !test_file_exists(dir),
          "PEFT export against the wrong base fails and writes nothing");
    // An adapter GGUF of another architecture.
    const char *p = test_path("arch.gguf");
    speck_gguf_writer *w = speck_gguf_writer_new();
    float z[64 * 4] = {0};
    int64_t nea[2] = {64, 4}, neb[2] = {4, 64};
    speck_gguf_set_str(w, "general.architecture", "gemma2");
    speck_gguf_set_str(w, "general.type", "adapter");
    speck_gguf_set_str(w, "adapter.type", "lora");
    speck_gguf_set_f32(w, "adapter.lora.alpha", 8);
    speck_gguf_add_tensor(w, "blk.0.attn_q.weight.lora_a", SPECK_TYPE_F32, 2, nea, z);
    speck_gguf_add_tensor(w, "blk.0.attn_q.weight.lora_b", SPECK_TYPE_F32, 2, neb, z);
    speck_gguf_writer_save(w, p);
    speck_gguf_writer_free(w);
    speck_lora *g = speck_lora_load(p);
    CHECK(g && speck_lora_check(g, m) != 0 && strstr(speck_last_error(), "gemma2"),
          "another architecture refused: %s", speck_last_error());
    speck_lora_free(g);
    // A model file is not an adapter.
    CHECK(speck_lora_load(base16) == NULL && strstr(speck_last_error(), "not 'adapter'"),
          "a model is not an adapter: %s", speck_last_error());
    speck_lora_free(a);
    speck_model_free(dm);
    speck_model_free(m);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: test_lora MODELS_DIR WORK_DIR\n");
        return 2;
    }
    char base[1024], draft[1024];
    snprintf(base, sizeof base, "%s/default.gguf", argv[1]);
    snprintf(draft, sizeof draft, "%s/draft.gguf", argv[1]);
    snprintf(test_work, sizeof test_work, "%s", argv[2]);
    mkdir(test_work, 0755);
    if (!test_file_exists(base) || !test_file_exists(draft)) {
        test_missing(base, "the default models ship in models/");
        return test_summary();
    }
    speck_set_threads(2);
    // Leftovers of an earlier run (exports refuse to replace non-empty directories).
    char cmd[3200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'/a_peft '%s'/hf_base '%s'/hf_m", test_work, test_work, test_work);
    if (system(cmd) != 0) return 1;
    test_merge_equals_unmerged(base);
    test_peft(base);
    test_data(base);
    test_bad_input(base, draft);
    return test_summary();
}
