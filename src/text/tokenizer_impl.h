/* The inside of dvl_tokenizer, shared by the loader (tokenizer_load.c) and
 * the encoder/decoder (tokenizer.c). Not part of the public API. */
#ifndef DVL_TEXT_TOKENIZER_IMPL_H
#define DVL_TEXT_TOKENIZER_IMPL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "text/bpe.h"
#include "text/bytelevel.h"
#include "text/tokenizer.h"

/* An entry of tokenizer.json's added_tokens. */
typedef struct dvl_added_token {
    char *content; /* matched verbatim in the text */
    size_t len;
    int32_t id;
    bool special, lstrip, rstrip, normalized;
} dvl_added_token;

/* The added tokens matched in one pass (normalized=false ones on the raw
 * text, normalized=true ones on the normalised text), grouped by first byte
 * and longest first within a group, so the first hit at a position is the
 * longest there. */
typedef struct dvl_added_set {
    int n;
    int32_t *order;     /* indices into dvl_tokenizer.added */
    int32_t first[257]; /* order[first[c] .. first[c+1]) start with byte c */
} dvl_added_set;

#define DVL_TOK_MAX_SPLITS 8

struct dvl_tokenizer {
    dvl_bpe bpe;
    dvl_bytelevel bl;
    bool nfc;
    int n_splits; /* Split pre-tokenizers, applied in order */
    pcre2_code *splits[DVL_TOK_MAX_SPLITS];
    dvl_added_token *added;
    int n_added;
    dvl_added_set raw, norm;
    int64_t vocab_size;
    /* Decoding: the raw bytes of each id (vocabulary or added token). */
    char *dec_pool;
    int64_t *dec_off;  /* [vocab_size] */
    int32_t *dec_len;  /* [vocab_size], -1 for an unused id */
    uint8_t *special;  /* [vocab_size] */
    int32_t bos_id, eos_id, pad_id;
};

#endif
