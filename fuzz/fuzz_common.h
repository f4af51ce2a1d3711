// Helpers shared by the fuzz targets, the seed generator and tests/test_nonfinite.c
// (docs/fuzzing.md).
#ifndef SPECK_FUZZ_COMMON_H
#define SPECK_FUZZ_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "speck.h"

// libFuzzer's entry points; fuzz/replay.c calls the same ones without libFuzzer.
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

// An invariant of the code under test: a violation aborts, so libFuzzer (and the replay tests)
// report it as a crash with this message.
#define FUZZ_CHECK(cond, ...)                                                                      \
    do {                                                                                           \
        if (!(cond)) fuzz_fail(__FILE__, __LINE__, #cond, __VA_ARGS__);                            \
    } while (0)
void fuzz_fail(const char *file, int line, const char *cond, const char *fmt, ...)
    __attribute__((noreturn, format(printf, 4, 5)));

// Single-threaded speck (the fuzzer runs one input at a time; threads only cost start-up).
void fuzz_setup(void);

// The bytes as an anonymous in-memory file, for APIs that take a path: path receives
// "/proc/self/fd/N". Returns the descriptor (close it when done), or -1.
int fuzz_memfile(const void *data, size_t size, char *path, size_t path_size);

// A private scratch directory for this process (in /dev/shm when present, else $TMPDIR or /tmp),
// created on first use and removed with its contents at exit.
const char *fuzz_scratch(void);
// dir/name := data (dir/name's parent must exist). Returns 0 or -1.
int fuzz_write(const char *dir, const char *name, const void *data, size_t size);
// Remove dir/name (a file, or a directory with everything in it).
void fuzz_remove(const char *dir, const char *name);
// dir/name as a malloc'd string.
char *fuzz_path(const char *dir, const char *name);
// The whole file (NUL-terminated, *size without the NUL), or NULL.
uint8_t *fuzz_read(const char *path, size_t *size);

// Split data at the first `sep` byte: the part before it, and what follows (NULL when absent).
typedef struct {
    const uint8_t *p;
    size_t n;
} fuzz_span;
fuzz_span fuzz_split(fuzz_span *rest, uint8_t sep);
// A span as a NUL-terminated malloc'd string (embedded NULs stay, truncating it for C readers).
char *fuzz_strdup(fuzz_span s);

// speck_hf_convert(dir -> out, type); when it succeeds the output must load and run one token
// (what the converter writes, the loader accepts), when it fails no file may be left.
void fuzz_convert_and_run(const char *dir, const char *out, int type);

// Tokenize, then decode (in one call, streamed and piece by piece), checking what any input must
// satisfy: ids in range, sizes consistent, the streamed text equal to the one-call text. With
// round_trip the decoded text must equal the input (byte-level vocabularies, no special parsing).
void fuzz_tokenize_check(const speck_vocab *v, const char *text, size_t len, bool add_special,
                         bool parse_special, bool round_trip);
// Set by targets whose vocabularies bring their own regexes (tokenizer.json): a pattern that
// exhausts PCRE2's match limit makes tokenizing fail, with a message, which is then allowed.
extern bool fuzz_tokenize_may_fail;

// Vocabularies for the tokenizer targets: a micro one built from fuzz_micro_vocab / a
// fuzz_micro_tokenizer_json variant (written to the scratch directory and loaded), or a real one
// from ../shared/vocab (llama.cpp's test vocabularies; NULL when absent, e.g. outside CI).
speck_vocab *fuzz_vocab_micro(int kind, const char *pre, bool add_prefix);
speck_vocab *fuzz_vocab_micro_hf(int variant);
speck_vocab *fuzz_vocab_shared(const char *file);
// Whether decode(encode(text)) must give text back: a byte-level vocabulary without
// normalisation, when neither BOS/EOS nor special-token text is involved.
bool fuzz_vocab_round_trips(const speck_vocab *v);

/* ---- micro artifacts (fuzz_micro.c): the seeds, and the fixed parts of multi-file targets ---- */

enum { FUZZ_VOCAB_NONE = 0, FUZZ_VOCAB_SPM = 1, FUZZ_VOCAB_BPE = 2 };

// Micro model geometry: every weight type's block (32) divides every row.
#define FUZZ_EMBD 32
#define FUZZ_HEADS 2
#define FUZZ_HEADS_KV 1
#define FUZZ_HEAD_DIM 16
#define FUZZ_FF 32
#define FUZZ_LAYERS 1
#define FUZZ_VOCAB_BARE 16 // rows of the embedding when the file carries no vocabulary

typedef struct {
    const char *arch;         // "llama" or "qwen2" (qwen2: q/k/v biases)
    speck_type type;          // the matrices' type (norms and biases f32)
    bool tied;                // no output.weight
    int vocab;                // FUZZ_VOCAB_*: tokenizer.ggml.* keys, embedding rows to match
    const char *rope_scaling; // NULL, "linear" or "llama3"
    bool rope_freqs;          // a rope_freqs.weight tensor (llama.cpp's Llama 3.1 export)
    bool nonfinite;           // plant inf and NaN in the weights (the forward pass must cope)
} fuzz_model_spec;

// Write a 1-layer model with seeded random weights. Returns 0 or a speck_err.
int fuzz_micro_model(const char *path, const fuzz_model_spec *spec, uint64_t seed);
// Write a GGUF holding only a vocabulary: SPM ("llama" model, byte fallback) or byte-level BPE
// with tokenizer.ggml.pre = pre (NULL: none). add_prefix: SPM's add_space_prefix.
int fuzz_micro_vocab(const char *path, int kind, const char *pre, bool add_prefix);
// The same tokens as a Hugging Face tokenizer.json: variant 0 byte-level BPE (Llama 3 style
// Split + ByteLevel, merges as "a b"), 1 SentencePiece-style BPE with byte fallback (Metaspace,
// merges as pairs), 2 Gemma style (normalizer Replace, Split on " "). malloc'd text.
char *fuzz_micro_tokenizer_json(int variant);
// Number of model.vocab entries of fuzz_micro_tokenizer_json(variant) plus its added tokens.
int fuzz_micro_tokenizer_n(int variant);
// A tokenizer_config.json (variant 0: string tokens + chat template string, 1: object tokens +
// template list). malloc'd text.
char *fuzz_micro_tokenizer_config(int variant);

// A Hugging Face checkpoint of the micro model shape (LlamaForCausalLM, or Qwen2ForCausalLM
// with biases) with n_vocab embedding rows: its config.json text and the safetensors file bytes
// (dtype F32, F16 or BF16). shards > 1 splits the tensors over that many files
// (model-0000i-of-0000n.safetensors) plus an index, written into dir.
char *fuzz_micro_config_json(bool qwen2, int n_vocab, const char *rope_scaling);
uint8_t *fuzz_micro_safetensors(bool qwen2, int n_vocab, speck_type dtype, int shard, int n_shards,
                                size_t *size);
char *fuzz_micro_st_index(bool qwen2, int n_shards);

#endif
