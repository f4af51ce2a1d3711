// speck_grammar.h — constrained output (src/grammar/): GBNF grammars, JSON Schema -> grammar,
// and a matcher that masks the vocabulary at each decoding step (docs/grammar.md).
// Included by speck.h; needs its speck_vocab and error codes.
#ifndef SPECK_GRAMMAR_H
#define SPECK_GRAMMAR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------------------------ */
/* Constrained output: grammars over Unicode code points                                       */
/* ------------------------------------------------------------------------------------------ */

// A compiled grammar: rules of code-point terminals, immutable once built. The syntax is GBNF as
// llama.cpp users write it: `name ::= alternatives`, "literals" with \n \t \\ \" \xXX \uXXXX
// \UXXXXXXXX escapes, classes [a-z] / [^"\\], `.` (any code point), ( groups ), `|`, `* + ?`,
// {m} {m,} {m,n}, `#` comments; a rule ends at a newline unless inside parentheses or after `|`.
// Left recursion (and repeating something that can match nothing) is rejected at parse time,
// which keeps every matcher step finite. Token references (<[id]>, <think>) are not supported.
typedef struct speck_grammar speck_grammar;

// Parse len bytes of GBNF; the start rule is `root`. NULL with SPECK_ERR_ARG and an error
// naming line:column (or the rule) on bad input.
speck_grammar *speck_grammar_parse(const char *text, size_t len);
// Any JSON object (OpenAI's response_format {"type":"json_object"}), whitespace bounded so a
// model cannot pad forever.
speck_grammar *speck_grammar_json_object(void);
// JSON Schema (len bytes of JSON) -> GBNF text (malloc'd, NUL-terminated), or NULL with
// SPECK_ERR_ARG naming the keyword or path that is wrong or unsupported. Covers type (incl.
// ["string","null"]), properties / required / additionalProperties false, items, enum, const,
// anyOf / oneOf, allOf of one schema, minItems / maxItems, minLength / maxLength, local $ref
// into $defs / definitions; annotations (description, title, default, examples, $schema, $id,
// $comment, ...) are ignored; any other keyword (pattern, format, minimum, ...) is an error, since
// it would not be enforced. Objects keep the properties' order; optional ones may be left out.
char *speck_json_schema_to_gbnf(const char *schema, size_t len);
// The same straight to a grammar.
speck_grammar *speck_grammar_from_json_schema(const char *schema, size_t len);
void speck_grammar_free(speck_grammar *g);
int speck_grammar_n_rules(const speck_grammar *g);

// A vocabulary's token bytes in a trie, built once and shared by every matcher over it (read
// only). End-of-generation tokens are kept apart (allowed only where the grammar may end);
// other control tokens and empty pieces are never allowed.
typedef struct speck_token_trie speck_token_trie;
speck_token_trie *speck_token_trie_new(const speck_vocab *v);
void speck_token_trie_free(speck_token_trie *t);

// The state of one generation under a grammar: a set of parse stacks (a pushdown automaton, the
// stacks shared as persistent lists) plus a pending partial UTF-8 sequence. It keeps its own
// copy of the grammar; the trie must outlive it.
typedef struct speck_gmatch speck_gmatch;
speck_gmatch *speck_gmatch_new(const speck_grammar *g, const speck_token_trie *t);
void speck_gmatch_free(speck_gmatch *m);
// logits: (n_vocab) tokens the grammar does not allow next become -INFINITY. Returns how many
// stay allowed (0: a dead end, e.g. the vocabulary cannot spell what the grammar needs next).
int speck_gmatch_mask(speck_gmatch *m, float *logits);
// Advance by a token: 0, or SPECK_ERR_ARG (state unchanged) when the grammar rejects it. An
// end-of-generation token is accepted only where the grammar may end.
int speck_gmatch_accept(speck_gmatch *m, int32_t token);
// How many of toks, in order from the current state, the grammar accepts (state unchanged):
// drafts are cut there before verification.
int speck_gmatch_check(speck_gmatch *m, const int32_t *toks, int n);
// The output so far is a complete sentence (end of generation allowed).
bool speck_gmatch_complete(const speck_gmatch *m);
// Complete and nothing more can follow: generation stops here.
bool speck_gmatch_done(const speck_gmatch *m);

// Accelerated decoding under a grammar: every step's logits are masked, and draft candidates
// the grammar rejects are cut before verification, so greedy output equals plain constrained
// greedy decoding token for token. The decoder stops ("grammar complete") once the grammar is
// done. g (NULL: unconstrained) is advanced by speck_decode and must outlive it; give a fresh
// matcher per generation.
void speck_decoder_set_grammar(speck_decoder *d, speck_gmatch *g);

#ifdef __cplusplus
}
#endif
#endif
