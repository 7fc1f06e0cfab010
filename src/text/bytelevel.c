#include "text/bytelevel.h"

void dvl_bytelevel_init(dvl_bytelevel *bl)
{
    for (int c = 0; c < DVL_BYTELEVEL_NCP; c++)
        bl->byte[c] = -1;
    int extra = 0;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        bl->cp[b] = (uint16_t)(printable ? b : 256 + extra++);
        bl->byte[bl->cp[b]] = (int16_t)b;
    }
}

bool dvl_bytelevel_to_bytes(const dvl_bytelevel *bl, const char *str, size_t n, dvl_strbuf *out)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t n0 = out->n;
    /* Every table character is one or two bytes of UTF-8 and gives one byte. */
    if (!dvl_strbuf_reserve(out, n))
        return false;
    for (size_t i = 0; i < n;) {
        unsigned cp;
        if (s[i] < 0x80) {
            cp = s[i];
            i += 1;
        } else if ((s[i] & 0xE0) == 0xC0 && i + 1 < n && (s[i + 1] & 0xC0) == 0x80) {
            cp = ((unsigned)(s[i] & 0x1F) << 6) | (s[i + 1] & 0x3F);
            i += 2;
            if (cp < 0x80) { /* overlong form */
                out->n = n0;
                return false;
            }
        } else {
            out->n = n0;
            return false;
        }
        if (cp >= DVL_BYTELEVEL_NCP || bl->byte[cp] < 0) {
            out->n = n0;
            return false;
        }
        out->p[out->n++] = (char)bl->byte[cp];
    }
    return true;
}

bool dvl_bytelevel_from_bytes(const dvl_bytelevel *bl, const char *str, size_t n, dvl_strbuf *out)
{
    const unsigned char *s = (const unsigned char *)str;
    if (!dvl_strbuf_reserve(out, 2 * n))
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned cp = bl->cp[s[i]];
        if (cp < 0x80) {
            out->p[out->n++] = (char)cp;
        } else {
            out->p[out->n++] = (char)(0xC0 | (cp >> 6));
            out->p[out->n++] = (char)(0x80 | (cp & 0x3F));
        }
    }
    return true;
}
