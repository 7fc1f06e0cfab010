/* The GPT-2 byte <-> unicode table behind byte-level BPE: every byte value
 * is shown as one printable character so that vocab and merges can be
 * written as text ("Ġthe" is the bytes " the"). dvl keeps tokens as raw
 * bytes internally and uses this table only at the file boundary. */
#ifndef DVL_TEXT_BYTELEVEL_H
#define DVL_TEXT_BYTELEVEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "text/utf8.h"

/* The table's characters are all below U+0144 (256 + 68 remapped bytes). */
#define DVL_BYTELEVEL_NCP 324

typedef struct dvl_bytelevel {
    uint16_t cp[256];                   /* byte -> code point */
    int16_t byte[DVL_BYTELEVEL_NCP];    /* code point -> byte, -1 if none */
} dvl_bytelevel;

/* bytes_to_unicode() of GPT-2's encoder.py: the printable bytes '!'..'~',
 * '¡'..'¬', '®'..'ÿ' stand for themselves, the other 68 bytes (controls,
 * space, DEL, NBSP, soft hyphen, ...) map in order to U+0100, U+0101, ... */
void dvl_bytelevel_init(dvl_bytelevel *bl);

/* Append the raw bytes that byte-level text s stands for. False (out left
 * as it was) when s is not valid UTF-8 or has a character outside the
 * table, or when out of memory. */
bool dvl_bytelevel_to_bytes(const dvl_bytelevel *bl, const char *s, size_t n, dvl_strbuf *out);

/* Append the byte-level text for raw bytes s (two bytes of UTF-8 for each
 * byte that is not printable ASCII). False when out of memory. */
bool dvl_bytelevel_from_bytes(const dvl_bytelevel *bl, const char *s, size_t n, dvl_strbuf *out);

#endif
