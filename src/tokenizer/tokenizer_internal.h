// Internal representation shared by the tokenizer files. One in-memory vocabulary serves both
// sources (GGUF tokenizer.ggml.* keys and Hugging Face tokenizer.json) and both algorithms
// (score-driven SentencePiece merges and rank-driven BPE merges).
#ifndef SPECK_TOKENIZER_INTERNAL_H
#define SPECK_TOKENIZER_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <pthread.h>
#include <stdint.h>

#include "speck.h"

// Token types as numbered by GGUF's tokenizer.ggml.token_type (= SentencePiece piece types).
enum {
    TOK_NORMAL = 1,
    TOK_UNKNOWN = 2,
    TOK_CONTROL = 3,
    TOK_USER_DEFINED = 4,
    TOK_UNUSED = 5,
    TOK_BYTE = 6,
};

// Which merge rule drives encoding.
typedef enum {
    ALGO_SPM_SCORES = 0, // merge the adjacent pair whose concatenation is the best-scoring token
    ALGO_BPE_RANKS = 1,  // merge the adjacent pair with the lowest merge rank
} tok_algo;

#define TOK_MAX_REGEX 8

typedef struct {
    int n;
    pcre2_code *re[TOK_MAX_REGEX];
} tok_pretok;

// String -> id map (open addressing; keys are the vocabulary's own token texts). A slot holds
// the text pointer itself, and every text is stored right after its length (see tok_text_len),
// so a lookup touches the slot and the text only: loading a 150k vocabulary does ~450k lookups,
// and each extra dependent cache miss per lookup costs milliseconds.
typedef struct {
    struct tok_slot {
        const char *s; // the token's text
        uint32_t tag;  // high hash bits: most mismatches are rejected without touching the text
        int32_t id;    // -1 = empty
    } * slots;
    uint32_t mask;
} tok_strmap;

// Token texts are carved out of large chunks (no per-token malloc). Each entry is laid out as
// [uint32 length][bytes][NUL]; text pointers point at the bytes.
typedef struct tok_chunk {
    struct tok_chunk *next;
    size_t used, cap;
    char data[];
} tok_chunk;

// (left id, right id) -> merge rank and merged id.
typedef struct {
    uint64_t key; // (left << 32 | right) + 1; 0 = empty
    int32_t rank;
    int32_t id;
} tok_pair;

typedef struct {
    tok_pair *slots;
    uint32_t mask;
    int64_t n;
} tok_pairmap;

// Word cache for BPE: byte-level word text -> ids. Bounded; cleared when full.
typedef struct {
    pthread_mutex_t lock;
    struct tok_cache_entry *slots;
    uint32_t mask;
    uint32_t used;
    char *arena; // key bytes and id arrays
    size_t arena_used, arena_cap;
} tok_cache;

struct speck_vocab {
    speck_vocab_type kind;
    tok_algo algo;
    int32_t n_tokens;
    char **text; // NUL-terminated token texts, each preceded by its length (tok_chunk)
    uint32_t *text_len;
    float *scores;
    uint8_t *type;       // TOK_*
    tok_chunk *chunks;   // storage of the texts
    tok_strmap map;      // text -> id over every token
    bool dup_texts;      // some text names several ids (the map holds the last)
    tok_pairmap merges;  // ALGO_BPE_RANKS only
    int64_t merge_delta; // id - rank of the last merge result (they usually run in step)

    int32_t bos, eos, unk, pad, eot, eom;
    bool add_bos, add_eos;

    // Text processing before the merge step.
    bool byte_level;       // GPT-2 byte<->unicode mapping of every byte
    bool byte_fallback;    // unknown pieces become <0xXX> tokens
    bool fuse_unk;         // consecutive unknowns become one unk (HF)
    bool space_to_meta;    // ' ' -> U+2581 (SentencePiece)
    bool prefix_meta;      // prepend U+2581 (dummy prefix) to each text segment
    bool meta_split;       // split words before each U+2581 (HF Metaspace split=true)
    bool ignore_merges;    // a word that is a whole token is emitted as is (Llama 3)
    bool nfc;              // NFC-normalise text segments (Qwen2/3)
    bool strip_lead_space; // decoding: drop the first piece's leading space
    tok_pretok pre;

    int32_t byte_tok[256]; // byte -> <0xXX> token (or single-byte token), -1 if none
    int32_t bl_id[256];    // byte-level: byte -> id of its mapped character, -1 if none

    // Tokens matched in raw text before pre-tokenisation: control/unknown ones only when the
    // caller asks (parse_special), user-defined ones always (as HF and llama.cpp do).
    int32_t *special;
    int n_special, n_user_defined;
    tok_strmap sp_map;              // text -> id over special[]
    uint32_t *sp_lens;              // distinct lengths per first byte, longest first
    int32_t sp_lens_start[257];     // sp_lens index range of first byte b
    uint8_t *sp_lstrip, *sp_rstrip; // per token id flags (HF added_tokens), may be NULL

    int32_t *eog;
    int n_eog;

    char *chat_template;
    tok_cache cache;
};

// vocab.c
speck_vocab *tok_vocab_alloc(int32_t n_tokens);
int tok_set_token(speck_vocab *v, int32_t id, const char *s, size_t len);
int tok_vocab_finish(speck_vocab *v, const char *src); // maps, special lists, byte tokens
int32_t tok_find(const speck_vocab *v, const char *s, size_t len); // -1 if absent
int32_t tok_find_special(const speck_vocab *v, const char *s, size_t len);
int tok_build_text_map(speck_vocab *v, const char *src);
int tok_merges_init(speck_vocab *v, int64_t n);
int tok_add_merge(speck_vocab *v, const char *a, size_t alen, const char *b, size_t blen,
                  int32_t rank);
// Many merges at once (ranks first_rank, first_rank + 1, ...): much faster than one by one.
typedef struct {
    const char *a, *b; // halves, not necessarily NUL-terminated
    uint32_t alen, blen;
} tok_merge_text;
int tok_add_merges(speck_vocab *v, const tok_merge_text *m, int n, int32_t first_rank);
const tok_pair *tok_pair_find(const tok_pairmap *m, int32_t left, int32_t right);
speck_vocab *tok_vocab_from_hf(const char *json_path, const char *config_path);

// pretok.c
int tok_pretok_set_named(tok_pretok *p, const char *pre_name, const char *src);
int tok_pretok_add(tok_pretok *p, const char *pattern, const char *src);
void tok_pretok_free(tok_pretok *p);
// Split text into pieces (offset/length pairs appended to *pieces, 2 per piece).
int tok_pretok_split(const tok_pretok *p, const char *text, size_t len, size_t **pieces,
                     size_t *n_pieces, size_t *cap);
// GPT-2 byte->unicode mapping: UTF-8 bytes of the char for byte b (1 or 2) written to out.
int tok_byte_to_unicode(uint8_t b, char out[2]);
// Reverse mapping of one code point; -1 if cp is not a mapped byte.
int tok_unicode_to_byte(uint32_t cp);
// Decode one UTF-8 code point; returns its length (1 for an invalid byte, with *cp = 0xFFFFFFFF).
int tok_utf8_next(const char *s, size_t len, uint32_t *cp);
int tok_nfc(const char *in, size_t len, char **out, size_t *out_len); // 0 or speck_err

// Output buffer of ids growing as needed.
typedef struct {
    int32_t *ids;
    int64_t n, cap;
} tok_out;
int tok_out_push(tok_out *o, int32_t id);

// spm.c / bpe.c: encode one raw-text segment (no special tokens inside).
int tok_spm_encode(const speck_vocab *v, const char *text, size_t len, tok_out *out);
int tok_bpe_encode(const speck_vocab *v, const char *text, size_t len, tok_out *out);
void tok_cache_init(tok_cache *c);
void tok_cache_free(tok_cache *c);

#endif
