/* Byte-level BPE tokenizer read from a Hugging Face tokenizer.json (the
 * Qwen2/Qwen2.5/Qwen3 tokenizer and others of the same shape), giving the
 * ids the Hugging Face `tokenizers` library gives with
 * add_special_tokens=False.
 *
 * Encoding pipeline (the order of tokenizers' TokenizerImpl::encode):
 *  1. added tokens (special or not) are cut out of the raw text whole,
 *     leftmost first and longest first at one position (for tokens with
 *     "normalized": true this happens after step 2 instead);
 *  2. each piece in between is normalised (NFC, if the file asks for it);
 *  3. pre-tokenised by the Split regex(es) of the file ("Isolated": matches
 *     and the text between them are both pieces), compiled with PCRE2 in
 *     UTF + UCP mode, with \s and \S spelled out as Unicode White_Space
 *     (what tokenizers' Oniguruma means by \s; PCRE2 alone adds U+180E);
 *  4. each pre-token's bytes go through BPE (ByteLevel: every byte is a
 *     starting symbol; merges apply lowest rank first, leftmost first).
 * Nothing is added at either end (no BOS/EOS; the post_processor is not
 * applied).
 *
 * Supported tokenizer.json: model.type "BPE" (merges as "a b" strings or
 * ["a", "b"] pairs, no dropout, no subword prefix/suffix, no byte_fallback),
 * normalizer null / "NFC" / a Sequence of "NFC", pre_tokenizer a "Split"
 * (behavior "Isolated", invert false), "ByteLevel" (add_prefix_space false)
 * or a Sequence of Splits ending in one ByteLevel, decoder "ByteLevel".
 * Anything else fails to load with DVL_EUNSUP naming the field.
 *
 * Input text must be valid UTF-8: encode fails with DVL_EINVAL naming the
 * byte offset of the first ill-formed sequence (it never reads past len and
 * never crashes). Decoding never fails: ids that spell ill-formed UTF-8
 * come out with U+FFFD in place of each maximal ill-formed subpart.
 *
 * Threads: a loaded dvl_tokenizer is read-only, so any number of threads
 * may encode and decode with it at once. Encoding needs per-thread scratch
 * (regex match data, BPE buffers and a cache of recent words):
 * dvl_tokenizer_encode makes and frees it on each call; callers that
 * encode many texts keep one dvl_tokenizer_state per thread and call
 * dvl_tokenizer_encode_into, which is much faster for short texts. */
#ifndef DVL_TEXT_TOKENIZER_H
#define DVL_TEXT_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/err.h"

typedef struct dvl_tokenizer dvl_tokenizer;
typedef struct dvl_tokenizer_state dvl_tokenizer_state;

/* A growable list of ids; zero-initialise, free with dvl_ids_free. */
typedef struct dvl_ids {
    int32_t *v;
    int64_t n, cap;
} dvl_ids;

void dvl_ids_free(dvl_ids *ids);

/* Load DIR/tokenizer.json and, if present, DIR/tokenizer_config.json (for
 * bos/eos/pad token names). NULL with err set (naming the file and the
 * field at fault) on failure. */
dvl_tokenizer *dvl_tokenizer_load(const char *dir, dvl_err *err);
void dvl_tokenizer_free(dvl_tokenizer *tok);

/* Encode text[0..len) into a new malloc'd array *ids of *n ids (free() it;
 * non-NULL even for 0 ids). Returns DVL_OK, or an error code with *ids
 * NULL and *n 0. */
int dvl_tokenizer_encode(const dvl_tokenizer *tok, const char *text, size_t len, int32_t **ids,
                         int64_t *n, dvl_err *err);

/* Per-thread encoding scratch: one state must not be used by two threads
 * at once. The word cache inside is bounded (65536 words, a few MB; it is
 * emptied when full and refills with the words in use). */
dvl_tokenizer_state *dvl_tokenizer_state_new(const dvl_tokenizer *tok, dvl_err *err);
void dvl_tokenizer_state_free(dvl_tokenizer_state *st);

/* Encode text[0..len) and append the ids to out (out->n grows; set
 * out->n = 0 first to reuse the buffer). On error out->n is left as it was
 * before the call. st must come from the same tokenizer. */
int dvl_tokenizer_encode_into(const dvl_tokenizer *tok, dvl_tokenizer_state *st,
                              const char *text, size_t len, dvl_ids *out, dvl_err *err);

/* The text of n ids as a malloc'd NUL-terminated UTF-8 string (free() it).
 * Ids outside the vocabulary are skipped, as tokenizers' decode does.
 * NULL only when out of memory. Special tokens are included. */
char *dvl_tokenizer_decode(const dvl_tokenizer *tok, const int32_t *ids, int64_t n);

/* Id of a token given as it is written in tokenizer.json: an added token's
 * content ("<|im_start|>") or a vocabulary entry in byte-level form ("Ġthe"
 * for " the"). -1 if there is none. */
int32_t dvl_tokenizer_token_id(const dvl_tokenizer *tok, const char *token);

/* The raw bytes a token decodes to (not NUL-terminated), NULL for an id
 * outside the vocabulary. */
const char *dvl_tokenizer_token_bytes(const dvl_tokenizer *tok, int32_t id, size_t *len);

/* One past the largest id (vocabulary plus added tokens). */
int64_t dvl_tokenizer_vocab_size(const dvl_tokenizer *tok);

/* Whether id is an added token marked "special" (e.g. <|im_end|>). */
bool dvl_tokenizer_is_special(const dvl_tokenizer *tok, int32_t id);

/* Ids of bos_token / eos_token / pad_token from tokenizer_config.json, -1
 * when the file or the entry is missing or null. */
int32_t dvl_tokenizer_bos_id(const dvl_tokenizer *tok);
int32_t dvl_tokenizer_eos_id(const dvl_tokenizer *tok);
int32_t dvl_tokenizer_pad_id(const dvl_tokenizer *tok);

#endif
