/* Whole small files (JSON configs, manifests, indexes) read into memory. */
#ifndef DVL_FILE_H
#define DVL_FILE_H

#include <stddef.h>

#include "core/err.h"

/* The file's bytes plus a terminating NUL, malloc'd; its length (without
 * the NUL) in *len when len is not NULL. NULL with err set ("PATH: cannot
 * open: REASON", "PATH: read error", out of memory); errno is left as
 * fopen set it, so callers can tell a missing file (ENOENT). */
char *dvl_read_file(const char *path, size_t *len, dvl_err *err);

#endif
