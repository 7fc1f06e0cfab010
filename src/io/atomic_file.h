/* Replacing a file atomically: write PATH.tmp, fsync it, rename it over PATH
 * and fsync the folder. Readers see the old file or the complete new one,
 * never a partial write, and after a crash PATH is one or the other.
 *
 *   dvl_afile a;
 *   if (dvl_afile_open(&a, path, err)) return err->code;
 *   if (dvl_afile_write(&a, buf, n, err) || ...) { dvl_afile_abort(&a); return ...; }
 *   return dvl_afile_commit(&a, err);   // aborts by itself on failure
 */
#ifndef DVL_ATOMIC_FILE_H
#define DVL_ATOMIC_FILE_H

#include <stddef.h>

#include "core/err.h"

typedef struct dvl_afile {
    int fd;
    char *path; /* final name */
    char *tmp;  /* path + ".tmp" */
} dvl_afile;

/* Create (truncate) PATH.tmp for writing. */
int dvl_afile_open(dvl_afile *a, const char *path, dvl_err *err);
/* Write all n bytes (retrying short writes and EINTR). */
int dvl_afile_write(dvl_afile *a, const void *buf, size_t n, dvl_err *err);
/* fsync, close and rename into place; on any failure the tmp file is
 * removed and PATH is left as it was. Frees the handle's strings either way. */
int dvl_afile_commit(dvl_afile *a, dvl_err *err);
/* Give up: close and remove the tmp file; PATH is untouched. */
void dvl_afile_abort(dvl_afile *a);

#endif
