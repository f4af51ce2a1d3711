// Bounds on hostile input shared by several parsers, each far above what real files hold, so
// that a small file cannot make speck allocate gigabytes or loop for minutes. (Each format's own
// bounds sit in its reader: gguf.c, safetensors.c.)
#ifndef SPECK_LIMITS_H
#define SPECK_LIMITS_H

// JSON files read whole (config.json, tokenizer.json, tokenizer_config.json, index files): the
// largest published tokenizer.json is ~35 MB (262k-token Gemma 3). Nesting depth is bounded by
// cJSON itself (CJSON_NESTING_LIMIT, 1000 in Debian's build): deeper documents fail to parse.
#define SPECK_JSON_MAX_BYTES ((size_t)256 << 20)

// Tokens in a vocabulary: 64x the largest published one (262k). A tokenizer.json names ids
// sparsely, so its largest id also may not exceed its size in bytes (every entry takes more).
#define SPECK_MAX_VOCAB (1 << 24)

#endif
