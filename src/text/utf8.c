#include "text/utf8.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

bool dvl_strbuf_reserve(dvl_strbuf *b, size_t extra)
{
    if (b->cap - b->n >= extra)
        return true;
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->n < extra)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p)
        return false;
    b->p = p;
    b->cap = cap;
    return true;
}

bool dvl_strbuf_append(dvl_strbuf *b, const void *s, size_t n)
{
    if (!dvl_strbuf_reserve(b, n))
        return false;
    if (n)
        memcpy(b->p + b->n, s, n);
    b->n += n;
    return true;
}

void dvl_strbuf_free(dvl_strbuf *b)
{
    free(b->p);
    b->p = NULL;
    b->n = b->cap = 0;
}

/* Inspect the sequence starting at s[0] (n >= 1 bytes left). Returns its
 * length when it is well formed, else 0 and sets *bad to the length of the
 * maximal subpart: the longest prefix that could still begin a well-formed
 * sequence (at least 1). The bounds on the second byte are Table 3-7 of the
 * Unicode standard; they exclude overlongs, surrogates and > U+10FFFF. */
static size_t utf8_seq(const unsigned char *s, size_t n, size_t *bad)
{
    unsigned b0 = s[0];
    size_t need;
    unsigned lo = 0x80, hi = 0xBF;
    if (b0 < 0x80)
        return 1;
    if (b0 >= 0xC2 && b0 <= 0xDF) {
        need = 2;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
        need = 3;
        if (b0 == 0xE0)
            lo = 0xA0;
        else if (b0 == 0xED)
            hi = 0x9F;
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
        need = 4;
        if (b0 == 0xF0)
            lo = 0x90;
        else if (b0 == 0xF4)
            hi = 0x8F;
    } else {
        *bad = 1;
        return 0;
    }
    for (size_t k = 1; k < need; k++) {
        if (k >= n || s[k] < lo || s[k] > hi) {
            *bad = k;
            return 0;
        }
        lo = 0x80;
        hi = 0xBF;
    }
    return need;
}

size_t dvl_utf8_valid_prefix(const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < n) {
        /* ASCII eight bytes at a time: the common case for English and code. */
        while (i + 8 <= n) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (w & 0x8080808080808080ull)
                break;
            i += 8;
        }
        if (i >= n)
            break;
        size_t bad = 1, k = utf8_seq(s + i, n - i, &bad);
        if (!k)
            return i;
        i += k;
    }
    return n;
}

bool dvl_utf8_lossy(dvl_strbuf *out, const char *str, size_t n)
{
    static const char fffd[3] = {(char)0xEF, (char)0xBF, (char)0xBD};
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < n) {
        size_t ok = dvl_utf8_valid_prefix(str + i, n - i);
        if (!dvl_strbuf_append(out, s + i, ok))
            return false;
        i += ok;
        if (i >= n)
            break;
        size_t bad = 1;
        utf8_seq(s + i, n - i, &bad);
        if (!dvl_strbuf_append(out, fffd, 3))
            return false;
        i += bad;
    }
    return true;
}

/* NFC of one chunk through utf8proc (STABLE|COMPOSE is utf8proc_NFC without
 * the NUL-termination flag, so embedded NULs survive). */
static int nfc_chunk(dvl_strbuf *out, const char *s, size_t n)
{
    utf8proc_uint8_t *dst = NULL;
    utf8proc_ssize_t m = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &dst,
                                      UTF8PROC_STABLE | UTF8PROC_COMPOSE);
    if (m < 0)
        return (int)m;
    bool ok = dvl_strbuf_append(out, dst, (size_t)m);
    free(dst);
    return ok ? 0 : UTF8PROC_ERROR_NOMEM;
}

/* ASCII characters are starters (combining class 0) that never decompose and
 * are never the second half of a canonical composition, so the text can be
 * cut before any ASCII character without changing its NFC form. Each run of
 * non-ASCII bytes is normalised together with the one ASCII character before
 * it (which a combining mark in the run may compose with, "e\u0301" -> "é");
 * everything else is copied. This keeps mostly-ASCII text out of utf8proc. */
int dvl_utf8_nfc(dvl_strbuf *out, const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t copied = 0, i = 0;
    while (i < n) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        size_t start = (i > copied) ? i - 1 : i;
        size_t end = i;
        while (end < n && s[end] >= 0x80)
            end++;
        if (!dvl_strbuf_append(out, s + copied, start - copied))
            return UTF8PROC_ERROR_NOMEM;
        int rc = nfc_chunk(out, str + start, end - start);
        if (rc)
            return rc;
        copied = i = end;
    }
    return dvl_strbuf_append(out, s + copied, n - copied) ? 0 : UTF8PROC_ERROR_NOMEM;
}
