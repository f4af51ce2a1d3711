// Fuzz target: the OpenAI-compatible API's request handling (src/serve/api.c) — the JSON body of
// /v1/completions, /v1/chat/completions, /tokenize and /detokenize validated into a prompt and
// settings (or a 4xx reason), the response JSON built from what was accepted, and the stop-string
// scan. Input: a selector byte (low 3 bits: 0 completion, 1 chat, 2 tokenize, 3 detokenize,
// 4 stop scan), then the body (for the stop scan: text NUL stop NUL stop ...).
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "serve/api.h"

static speck_vocab *g_vocab;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    fuzz_setup();
    g_vocab = fuzz_vocab_micro(FUZZ_VOCAB_BPE, "llama-bpe", false);
    return 0;
}

static void check_json(char *s, const char *what) {
    FUZZ_CHECK(s != NULL, "%s: no JSON", what);
    cJSON *j = cJSON_Parse(s);
    FUZZ_CHECK(j != NULL, "%s: output is not JSON: %.200s", what, s);
    cJSON_Delete(j);
    free(s);
}

static void stop_scan(const uint8_t *data, size_t size) {
    fuzz_span rest = {data, size};
    fuzz_span text = fuzz_split(&rest, 0);
    char *stop[SPECK_API_MAX_STOP];
    int n = 0;
    while (rest.p && n < SPECK_API_MAX_STOP) stop[n++] = fuzz_strdup(fuzz_split(&rest, 0));
    size_t safe = 0;
    const char *t = (const char *)text.p;
    long at = speck_api_stop_scan(t, text.n, stop, n, &safe);
    FUZZ_CHECK(safe <= text.n, "safe %zu > length %zu", safe, text.n);
    // Nothing before the reported stop (or before `safe` when none was found) starts a stop
    // string: no whole one, and, when none was found, no tail of the text that a stop string
    // begins with (the next tokens could complete it).
    const size_t lim = at >= 0 ? (size_t)at : safe;
    for (int s = 0; s < n; s++) {
        const size_t sl = strlen(stop[s]);
        for (size_t i = 0; sl && i < lim; i++) {
            const size_t k = text.n - i < sl ? text.n - i : sl;
            if (k == sl || at < 0)
                FUZZ_CHECK(memcmp(t + i, stop[s], k) != 0, "stop string %d starts at %zu < %zu",
                           s, i, lim);
        }
    }
    if (at >= 0) {
        bool hit = false;
        for (int s = 0; s < n; s++) {
            const size_t sl = strlen(stop[s]);
            hit |= sl && (size_t)at + sl <= text.n && !memcmp(t + at, stop[s], sl);
        }
        FUZZ_CHECK(hit, "no stop string at the reported offset %ld", at);
    }
    for (int s = 0; s < n; s++) free(stop[s]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0 || !g_vocab) return 0;
    const int sel = data[0] & 7;
    const char *body = (const char *)data + 1;
    const size_t len = size - 1;
    char err[512];
    if (sel == 4) {
        stop_scan(data + 1, len);
        return 0;
    }
    if (sel == 2 || sel == 3) {
        char *out = NULL;
        int st = sel == 2 ? speck_api_tokenize(g_vocab, body, len, &out, err, sizeof err)
                          : speck_api_detokenize(g_vocab, body, len, &out, err, sizeof err);
        FUZZ_CHECK(st == 200 || st == 400 || st == 500, "status %d", st);
        if (st == 200) check_json(out, "tokenize");
        else check_json(speck_api_error_json(st, err), "error");
        return 0;
    }
    const speck_api_cfg cfg = {.vocab = g_vocab, .tmpl = "chatml", .model_id = "m",
                               .max_len = 64, .default_max_tokens = 16};
    speck_api_req r;
    const speck_api_kind kind = sel == 1 ? SPECK_API_CHAT : SPECK_API_COMPLETION;
    int st = speck_api_parse(&cfg, kind, body, len, &r, err, sizeof err);
    FUZZ_CHECK(st == 200 || st == 400 || st == 404 || st == 500, "status %d", st);
    FUZZ_CHECK(memchr(err, 0, sizeof err) != NULL, "reason not terminated");
    if (st == 200) {
        FUZZ_CHECK(r.n_prompt >= 1 && r.max_tokens >= 1 && r.n_prompt + r.max_tokens <= 64,
                   "accepted %d prompt tokens + %d max_tokens in a 64-token context", r.n_prompt,
                   r.max_tokens);
        FUZZ_CHECK(r.sp.temperature >= 0 && r.sp.temperature <= 2 && r.sp.top_p > 0 &&
                       r.sp.top_p <= 1,
                   "accepted temperature %g top_p %g", r.sp.temperature, r.sp.top_p);
        for (int i = 0; i < r.n_prompt; i++)
            FUZZ_CHECK(r.prompt[i] >= 0 && r.prompt[i] < speck_vocab_n_tokens(g_vocab),
                       "prompt token %d out of range", r.prompt[i]);
        for (int i = 0; i < r.n_stop; i++) FUZZ_CHECK(r.stop[i][0], "empty stop string");
        float lp[2] = {-0.5f, -1.0f};
        const char *lt[2] = {"a", "\"b\n"};
        speck_api_out o = {.kind = kind, .id = "x", .model = "m", .created = 1, .text = body,
                           .text_len = len < 40 ? len : 40, .finish = "stop",
                           .prompt_tokens = r.n_prompt, .completion_tokens = 2,
                           .lp = r.logprobs ? lp : NULL, .lp_tok = lt, .n_lp = 2,
                           .chunk = r.stream, .usage = !r.stream || r.include_usage};
        check_json(speck_api_response_json(&o), "response");
    } else {
        check_json(speck_api_error_json(st, err), "error");
    }
    speck_api_req_free(&r);
    return 0;
}
