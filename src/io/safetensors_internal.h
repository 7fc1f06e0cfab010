/* Pieces shared by the safetensors reader, index and writer: the dtype
 * table, UTF-8 and JSON helpers, a growable text buffer. Not public API. */
#ifndef DVL_SAFETENSORS_INTERNAL_H
#define DVL_SAFETENSORS_INTERNAL_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "io/safetensors.h"

/* The reference crate rejects headers above 100 MB (MAX_HEADER_SIZE). */
#define DVL_ST_MAX_HEADER 100000000ull

/* Dtype from its header spelling; false if the format has no such dtype. */
bool dvl_st_dtype_parse(const char *s, dvl_st_dtype *out);
dvl_st_dtype dvl_st_dtype_from_dvl(dvl_dtype t);

/* Length of the longest valid UTF-8 prefix of s[0..n) (n when all valid):
 * the JSON text of a header must be UTF-8. Rejects overlong forms,
 * surrogates and code points above U+10FFFF, as Rust's str::from_utf8. */
size_t dvl_st_utf8_valid_prefix(const unsigned char *s, size_t n);

/* The first key that appears twice among obj's members, or NULL. cJSON keeps
 * duplicates as siblings and a lookup would silently see only the first. */
const char *dvl_st_json_duplicate_key(const cJSON *obj);

/* A cJSON number that is an exact non-negative integer no larger than 2^53
 * (beyond which doubles skip integers, and no offset into a real file). */
bool dvl_st_json_uint(const cJSON *v, int64_t *out);

/* Growable text buffer; on allocation failure `failed` is set and further
 * appends do nothing, so callers check once at the end. */
typedef struct dvl_st_buf {
    char *s;
    size_t len, cap;
    bool failed;
} dvl_st_buf;

void dvl_st_buf_put(dvl_st_buf *b, const char *s, size_t n);
void dvl_st_buf_puts(dvl_st_buf *b, const char *s);
void dvl_st_buf_printf(dvl_st_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* s as a JSON string literal, escaped exactly as serde_json does (", \, the
 * short escapes \b \f \n \r \t, other control bytes as \u00xx, everything
 * else verbatim), so headers match the Python package byte for byte. */
void dvl_st_buf_json_string(dvl_st_buf *b, const char *s);
void dvl_st_buf_free(dvl_st_buf *b);

/* "dir/name" in a new string (NULL when out of memory). */
char *dvl_st_join(const char *dir, const char *name);

#endif
