#include "core/file.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

char *dvl_read_file(const char *path, size_t *len, dvl_err *err)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        int e = errno;
        dvl_errf(err, DVL_EIO, "%s: cannot open: %s", path, strerror(e));
        errno = e;
        return NULL;
    }
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (cap - n < 65536) { /* room for a full read and the NUL */
            cap = cap ? 2 * cap : 1 << 17;
            char *p = realloc(buf, cap);
            if (!p) {
                free(buf);
                fclose(f);
                dvl_errf(err, DVL_ENOMEM, "%s: out of memory reading the file", path);
                return NULL;
            }
            buf = p;
        }
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0)
            break;
    }
    bool bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        dvl_errf(err, DVL_EIO, "%s: read error", path);
        return NULL;
    }
    buf[n] = '\0';
    if (len)
        *len = n;
    return buf;
}
