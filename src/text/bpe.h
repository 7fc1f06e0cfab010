/* The BPE model: vocabulary (raw bytes -> id), merge table ((left id, right
 * id) -> rank, merged id) and the merge loop that turns one pre-token into
 * ids. Built once by the tokenizer loader, then read-only, so any number of
 * threads may call dvl_bpe_word at once, each with its own scratch. */
#ifndef DVL_TEXT_BPE_H
#define DVL_TEXT_BPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "core/err.h"

typedef struct dvl_bpe_merge {
    uint64_t key; /* (left id << 32) | right id; UINT64_MAX marks a free slot */
    int32_t rank; /* position in the merges list: lower merges first */
    int32_t id;   /* id of the merged token */
} dvl_bpe_merge;

typedef struct dvl_bpe {
    int32_t n_ids;    /* ids are 0 .. n_ids-1; an id may be absent (len -1) */
    char *pool;       /* the raw bytes of every token, back to back */
    int64_t *off;     /* [n_ids] start of each token in pool */
    int32_t *len;     /* [n_ids] byte length, -1 for an id with no token */
    int32_t *slots;   /* bytes -> id hash, open addressing; -1 = free */
    uint32_t *slot_h; /* [slot] low 32 bits of the key's hash */
    uint64_t smask;
    dvl_bpe_merge *merges; /* pair -> merge hash, open addressing */
    uint64_t mmask;
    int64_t n_merges;
    int32_t byte_id[256]; /* id of each single byte: the starting symbols */
    bool ignore_merges;   /* a pre-token that is a whole vocab entry is kept as is */
} dvl_bpe;

/* One vocabulary entry for dvl_bpe_init. */
typedef struct dvl_bpe_entry {
    const char *bytes;
    size_t len;
    int32_t id;
} dvl_bpe_entry;

/* Per-thread scratch for dvl_bpe_word (zero-initialise; grows as needed). */
typedef struct dvl_bpe_scratch {
    struct dvl_bpe_sym *sym;
    struct dvl_bpe_cand *heap;
    size_t cap;
} dvl_bpe_scratch;

/* Build the vocabulary from n entries (ids need not be dense) and make room
 * for max_merges merges. Fails on a duplicate id or duplicate token
 * (what names the source, e.g. "tok/tokenizer.json: model.vocab"). */
int dvl_bpe_init(dvl_bpe *b, const dvl_bpe_entry *e, int64_t n, int64_t max_merges,
                 const char *what, dvl_err *err);
void dvl_bpe_free(dvl_bpe *b);

/* Id of the token with these raw bytes, -1 if none. */
int32_t dvl_bpe_lookup(const dvl_bpe *b, const char *s, size_t n);

/* Add merge number rank: left + right -> their concatenation. All three
 * must be in the vocabulary (what/rank name the merge in errors). A pair
 * listed twice keeps the later rank, as a Hugging Face HashMap collect does. */
int dvl_bpe_add_merge(dvl_bpe *b, const char *l, size_t ln, const char *r, size_t rn,
                      int32_t rank, const char *what, dvl_err *err);

/* Check that every single byte is a token (byte-level BPE can then encode
 * any input without an unknown token) and fill byte_id. */
int dvl_bpe_check_bytes(dvl_bpe *b, const char *what, dvl_err *err);

/* BPE of one pre-token of n >= 1 raw bytes: writes at most n ids to out and
 * returns how many, or -1 when out of memory. */
int64_t dvl_bpe_word(const dvl_bpe *b, dvl_bpe_scratch *sc, const char *w, size_t n, int32_t *out);
void dvl_bpe_scratch_free(dvl_bpe_scratch *sc);

/* A fast hash for short byte strings (8 bytes a step, then a murmur3-style
 * finaliser so every input bit reaches the low bits used as slot index). */
static inline uint64_t dvl_text_hash(const void *p, size_t n)
{
    const unsigned char *s = (const unsigned char *)p;
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (uint64_t)n;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        h = ((h << 5) | (h >> 59)) ^ w;
        h *= 0x517CC1B727220A95ull;
        s += 8;
        n -= 8;
    }
    if (n) {
        uint64_t w = 0;
        memcpy(&w, s, n);
        h = ((h << 5) | (h >> 59)) ^ w;
        h *= 0x517CC1B727220A95ull;
    }
    h ^= h >> 33;
    h *= 0xFF51AFD7ED558CCDull;
    h ^= h >> 33;
    return h;
}

#endif
