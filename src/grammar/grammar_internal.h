// Shared between the GBNF parser, the matcher and the token trie: the flat rule layout.
#ifndef SPECK_GRAMMAR_INTERNAL_H
#define SPECK_GRAMMAR_INTERNAL_H

#include <stdint.h>

#include "speck.h"

// Every rule is its alternatives one after another, each ended by GE_ALT except the last, which
// GE_END ends: a position (an index into elems) inside an alternative is "what to match next".
enum { GE_END = 0, GE_ALT, GE_REF, GE_CHAR, GE_CHAR_NOT, GE_ANY };

typedef struct {
    uint8_t type;
    int32_t val; // GE_REF: rule id; GE_CHAR(_NOT): offset of the first range in ranges
    int32_t n;   // GE_CHAR(_NOT): number of ranges
} speck_gelem;

struct speck_grammar {
    speck_gelem *elems;  // (n_elems)
    int32_t *ranges;     // (2 * n_ranges) inclusive [lo, hi] code point pairs
    int32_t *rule_start; // (n_rules) first element of each rule
    int n_elems, n_ranges, n_rules, root;
};

// The bounds that keep a grammar (and so a fuzzer or a hostile request) small.
#define SPECK_GRAMMAR_MAX_ELEMS (1 << 20)
#define SPECK_GRAMMAR_MAX_REPEAT 10000

#endif
