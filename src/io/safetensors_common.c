/* The safetensors dtype table and the small UTF-8 / JSON helpers the reader,
 * index and writer share. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/safetensors_internal.h"

static const struct {
    const char *name;
    int bits;
} dtypes[DVL_ST_NDTYPES] = {
    [DVL_ST_BOOL] = {"BOOL", 8},
    [DVL_ST_F4] = {"F4", 4},
    [DVL_ST_F6_E2M3] = {"F6_E2M3", 6},
    [DVL_ST_F6_E3M2] = {"F6_E3M2", 6},
    [DVL_ST_U8] = {"U8", 8},
    [DVL_ST_I8] = {"I8", 8},
    [DVL_ST_F8_E5M2] = {"F8_E5M2", 8},
    [DVL_ST_F8_E4M3] = {"F8_E4M3", 8},
    [DVL_ST_F8_E8M0] = {"F8_E8M0", 8},
    [DVL_ST_F8_E4M3FNUZ] = {"F8_E4M3FNUZ", 8},
    [DVL_ST_F8_E5M2FNUZ] = {"F8_E5M2FNUZ", 8},
    [DVL_ST_I16] = {"I16", 16},
    [DVL_ST_U16] = {"U16", 16},
    [DVL_ST_F16] = {"F16", 16},
    [DVL_ST_BF16] = {"BF16", 16},
    [DVL_ST_I32] = {"I32", 32},
    [DVL_ST_U32] = {"U32", 32},
    [DVL_ST_F32] = {"F32", 32},
    [DVL_ST_C64] = {"C64", 64},
    [DVL_ST_F64] = {"F64", 64},
    [DVL_ST_I64] = {"I64", 64},
    [DVL_ST_U64] = {"U64", 64},
};

const char *dvl_st_dtype_name(dvl_st_dtype t)
{
    return (unsigned)t < DVL_ST_NDTYPES ? dtypes[t].name : "?";
}

int dvl_st_dtype_bits(dvl_st_dtype t) { return (unsigned)t < DVL_ST_NDTYPES ? dtypes[t].bits : 0; }

bool dvl_st_dtype_parse(const char *s, dvl_st_dtype *out)
{
    for (int i = 0; i < DVL_ST_NDTYPES; i++)
        if (strcmp(s, dtypes[i].name) == 0) {
            *out = (dvl_st_dtype)i;
            return true;
        }
    return false;
}

bool dvl_st_dtype_to_dvl(dvl_st_dtype t, dvl_dtype *out)
{
    switch (t) {
    case DVL_ST_F32: *out = DVL_F32; return true;
    case DVL_ST_BF16: *out = DVL_BF16; return true;
    case DVL_ST_F16: *out = DVL_F16; return true;
    case DVL_ST_I32: *out = DVL_I32; return true;
    default: return false;
    }
}

dvl_st_dtype dvl_st_dtype_from_dvl(dvl_dtype t)
{
    switch (t) {
    case DVL_F32: return DVL_ST_F32;
    case DVL_BF16: return DVL_ST_BF16;
    case DVL_F16: return DVL_ST_F16;
    case DVL_I32: return DVL_ST_I32;
    }
    return DVL_ST_NDTYPES;
}

/* RFC 3629 section 4: the well-formed byte sequences. */
size_t dvl_st_utf8_valid_prefix(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t len;
        unsigned lo = 0x80, hi = 0xbf; /* allowed range of the second byte */
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xc2 && c <= 0xdf) {
            len = 2;
        } else if (c >= 0xe0 && c <= 0xef) {
            len = 3;
            if (c == 0xe0)
                lo = 0xa0; /* overlong */
            if (c == 0xed)
                hi = 0x9f; /* surrogates U+D800..DFFF */
        } else if (c >= 0xf0 && c <= 0xf4) {
            len = 4;
            if (c == 0xf0)
                lo = 0x90; /* overlong */
            if (c == 0xf4)
                hi = 0x8f; /* above U+10FFFF */
        } else {
            return i;
        }
        if (n - i < len || s[i + 1] < lo || s[i + 1] > hi)
            return i;
        for (size_t k = 2; k < len; k++)
            if (s[i + k] < 0x80 || s[i + k] > 0xbf)
                return i;
        i += len;
    }
    return n;
}

static int cmp_str_ptr(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

const char *dvl_st_json_duplicate_key(const cJSON *obj)
{
    int n = cJSON_GetArraySize(obj);
    if (n < 2)
        return NULL;
    /* Sort the member names and compare neighbours: O(n log n) for headers
     * with thousands of tensors. */
    const char **names = malloc((size_t)n * sizeof *names);
    if (!names) { /* fall back to the quadratic scan rather than fail */
        for (const cJSON *a = obj->child; a; a = a->next)
            for (const cJSON *b = a->next; b; b = b->next)
                if (strcmp(a->string, b->string) == 0)
                    return a->string;
        return NULL;
    }
    int k = 0;
    for (const cJSON *c = obj->child; c; c = c->next)
        names[k++] = c->string;
    qsort(names, (size_t)k, sizeof *names, cmp_str_ptr);
    const char *dup = NULL;
    for (int i = 1; i < k && !dup; i++)
        if (strcmp(names[i - 1], names[i]) == 0)
            dup = names[i];
    free(names);
    return dup;
}

bool dvl_st_json_uint(const cJSON *v, int64_t *out)
{
    if (!cJSON_IsNumber(v))
        return false;
    double d = v->valuedouble;
    /* The comparisons are false for NaN, so it is rejected too. */
    if (!(d >= 0.0 && d <= 9007199254740992.0))
        return false;
    int64_t i = (int64_t)d;
    if ((double)i != d)
        return false;
    *out = i;
    return true;
}

static void buf_reserve(dvl_st_buf *b, size_t extra)
{
    if (b->failed || b->len + extra + 1 <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra + 1)
        cap *= 2;
    char *s = realloc(b->s, cap);
    if (!s) {
        b->failed = true;
        return;
    }
    b->s = s;
    b->cap = cap;
}

void dvl_st_buf_put(dvl_st_buf *b, const char *s, size_t n)
{
    buf_reserve(b, n);
    if (b->failed)
        return;
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = '\0';
}

void dvl_st_buf_puts(dvl_st_buf *b, const char *s) { dvl_st_buf_put(b, s, strlen(s)); }

void dvl_st_buf_printf(dvl_st_buf *b, const char *fmt, ...)
{
    char tmp[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof tmp) { /* only short numbers are printed */
        b->failed = true;
        return;
    }
    dvl_st_buf_put(b, tmp, (size_t)n);
}

void dvl_st_buf_json_string(dvl_st_buf *b, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    dvl_st_buf_put(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char esc[6];
        switch (*p) {
        case '"': dvl_st_buf_put(b, "\\\"", 2); break;
        case '\\': dvl_st_buf_put(b, "\\\\", 2); break;
        case '\b': dvl_st_buf_put(b, "\\b", 2); break;
        case '\f': dvl_st_buf_put(b, "\\f", 2); break;
        case '\n': dvl_st_buf_put(b, "\\n", 2); break;
        case '\r': dvl_st_buf_put(b, "\\r", 2); break;
        case '\t': dvl_st_buf_put(b, "\\t", 2); break;
        default:
            if (*p < 0x20) {
                memcpy(esc, "\\u00", 4);
                esc[4] = hex[*p >> 4];
                esc[5] = hex[*p & 15];
                dvl_st_buf_put(b, esc, 6);
            } else {
                dvl_st_buf_put(b, (const char *)p, 1);
            }
        }
    }
    dvl_st_buf_put(b, "\"", 1);
}

void dvl_st_buf_free(dvl_st_buf *b)
{
    free(b->s);
    *b = (dvl_st_buf){0};
}

char *dvl_st_join(const char *dir, const char *name)
{
    size_t a = strlen(dir), n = strlen(name);
    bool slash = a > 0 && dir[a - 1] != '/';
    char *s = malloc(a + slash + n + 1);
    if (!s)
        return NULL;
    memcpy(s, dir, a);
    if (slash)
        s[a] = '/';
    memcpy(s + a + slash, name, n + 1);
    return s;
}
