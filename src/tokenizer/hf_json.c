#include "tokenizer_internal.h"
speck_vocab *tok_vocab_from_hf(const char *json_path, const char *config_path) {
    (void)config_path;
    speck_set_error(SPECK_ERR_UNSUPPORTED, "%s: not yet", json_path);
    return NULL;
}
int tok_nfc(const char *in, size_t len, char **out, size_t *out_len) { (void)in;(void)len;(void)out;(void)out_len; return SPECK_ERR_UNSUPPORTED; }
