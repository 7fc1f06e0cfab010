/* UTF-8 helpers for the tokenizer: strict validation, lossy repair with
 * U+FFFD, and NFC normalisation that leaves ASCII runs untouched. */
#ifndef DVL_TEXT_UTF8_H
#define DVL_TEXT_UTF8_H

#include <stdbool.h>
#include <stddef.h>

/* A growable byte buffer; p is malloc'd (or NULL while cap is 0). */
typedef struct dvl_strbuf {
    char *p;
    size_t n, cap;
} dvl_strbuf;

/* Make room for extra more bytes; false when out of memory. */
bool dvl_strbuf_reserve(dvl_strbuf *b, size_t extra);
bool dvl_strbuf_append(dvl_strbuf *b, const void *s, size_t n);
void dvl_strbuf_free(dvl_strbuf *b);

/* Length of the longest valid UTF-8 prefix of s (so == n when all of s is
 * valid). Valid means RFC 3629: no overlong forms, no surrogates, nothing
 * above U+10FFFF -- what PCRE2_UTF and Rust's str accept. */
size_t dvl_utf8_valid_prefix(const char *s, size_t n);

/* Append s to out with every ill-formed subsequence replaced by U+FFFD, one
 * replacement per maximal subpart (Unicode ch. 3 "U+FFFD substitution of
 * maximal subparts", the rule Rust's String::from_utf8_lossy follows, which
 * the Hugging Face ByteLevel decoder uses). False when out of memory. */
bool dvl_utf8_lossy(dvl_strbuf *out, const char *s, size_t n);

/* Append the NFC form of valid UTF-8 s to out. Returns 0, or a
 * UTF8PROC_ERROR_* code (negative) from utf8proc. */
int dvl_utf8_nfc(dvl_strbuf *out, const char *s, size_t n);

#endif
