// The OpenAI-compatible API's request bodies and response bodies (JSON), independent of the HTTP
// library: parsing and validating a request into a prompt and settings, stop-string scanning,
// and the JSON of completions, chunks and errors. The server (tools/cmd_serve.c) is glue.
#ifndef SPECK_SERVE_API_H
#define SPECK_SERVE_API_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "speck.h"

#define SPECK_API_MAX_STOP 4

typedef enum { SPECK_API_COMPLETION, SPECK_API_CHAT } speck_api_kind;

typedef struct {
    const speck_vocab *vocab;
    const char *tmpl;     // chat format (speck_chat_template_name)
    const char *model_id; // the one model served
    int max_len;          // positions per request
    int default_max_tokens;
} speck_api_cfg;

typedef struct {
    speck_api_kind kind;
    int32_t *prompt; // (n_prompt) malloc'd
    int n_prompt;
    int max_tokens;
    speck_sampler_params sp;
    bool has_seed;
    bool stream, include_usage;
    bool ignore_eos; // llama-server's extension: generate max_tokens whatever comes
    int logprobs; // completions: 0..5 (only the sampled token's is given); chat: 0/1
    char *stop[SPECK_API_MAX_STOP];
    int n_stop;
    // Constrained output, or NULL: from response_format {"type": "json_object"} or
    // {"type": "json_schema", "json_schema": {"schema": ...}}, llama-server's "grammar" (GBNF)
    // or "json_schema" fields. A bad grammar or schema is a 400 naming what is wrong.
    speck_grammar *grammar;
} speck_api_req;

// body (len bytes, not NUL-terminated) -> r. Returns the HTTP status: 200, or 400 / 404 with the
// reason in err (errsz bytes). r is cleared first; free it with speck_api_req_free whatever the
// outcome.
int speck_api_parse(const speck_api_cfg *cfg, speck_api_kind kind, const char *body, size_t len,
                    speck_api_req *r, char *err, size_t errsz);
void speck_api_req_free(speck_api_req *r);

// /tokenize {"content": str, "add_special"?: bool} -> {"tokens": [...]};
// /detokenize {"tokens": [int]} -> {"content": str}. Returns the HTTP status; *out is the
// response body (malloc'd) on 200, the reason in err otherwise.
int speck_api_tokenize(const speck_vocab *v, const char *body, size_t len, char **out, char *err,
                       size_t errsz);
int speck_api_detokenize(const speck_vocab *v, const char *body, size_t len, char **out,
                         char *err, size_t errsz);

// Where the first stop string starts in text (len bytes), or -1; when none does, *safe is how
// many bytes can be passed on (the rest might begin a stop string the next tokens complete).
long speck_api_stop_scan(const char *text, size_t len, char *const *stop, int n_stop,
                         size_t *safe);

// {"error": {"message", "type", "code"}} for an HTTP status (malloc'd).
char *speck_api_error_json(int status, const char *msg);

// The response of a finished request (malloc'd). finish: "stop" / "length" / NULL (streams).
// lp: (n_lp) log probabilities of the generated tokens, toks their pieces (NULL: no logprobs).
typedef struct {
    speck_api_kind kind;
    const char *id, *model;
    long long created;
    const char *text; // the output (or a chunk's delta)
    size_t text_len;
    const char *finish;
    int prompt_tokens, completion_tokens, cached_tokens;
    const float *lp;
    const char *const *lp_tok;
    int n_lp;
    bool chunk, usage, first; // a stream chunk; with usage; the first (chat: role delta)
} speck_api_out;
char *speck_api_response_json(const speck_api_out *o);

#endif
