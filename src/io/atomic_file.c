/* Atomic file replacement by write-to-tmp, fsync, rename (POSIX rename(2)
 * replaces the target atomically within one file system). */
#include "io/atomic_file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void afile_release(dvl_afile *a)
{
    free(a->path);
    free(a->tmp);
    a->path = a->tmp = NULL;
    a->fd = -1;
}

int dvl_afile_open(dvl_afile *a, const char *path, dvl_err *err)
{
    size_t n = strlen(path);
    a->fd = -1;
    a->path = strdup(path);
    a->tmp = malloc(n + 5);
    if (!a->path || !a->tmp) {
        afile_release(a);
        return dvl_errf(err, DVL_ENOMEM, "%s: out of memory", path);
    }
    memcpy(a->tmp, path, n);
    memcpy(a->tmp + n, ".tmp", 5);
    a->fd = open(a->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (a->fd < 0) {
        int rc = dvl_errf(err, DVL_EIO, "%s: cannot create: %s", a->tmp, strerror(errno));
        afile_release(a);
        return rc;
    }
    return DVL_OK;
}

int dvl_afile_write(dvl_afile *a, const void *buf, size_t n, dvl_err *err)
{
    const char *p = buf;
    while (n > 0) {
        ssize_t k = write(a->fd, p, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return dvl_errf(err, DVL_EIO, "%s: write failed: %s", a->tmp,
                            k < 0 ? strerror(errno) : "no progress");
        p += k;
        n -= (size_t)k;
    }
    return DVL_OK;
}

void dvl_afile_abort(dvl_afile *a)
{
    if (a->fd >= 0)
        close(a->fd);
    if (a->tmp)
        unlink(a->tmp);
    afile_release(a);
}

int dvl_afile_commit(dvl_afile *a, dvl_err *err)
{
    int rc = DVL_OK;
    /* Data first, then the name: without the fsync a crash after the rename
     * could leave PATH naming a file whose blocks never reached the disk. */
    if (fsync(a->fd) != 0)
        rc = dvl_errf(err, DVL_EIO, "%s: fsync failed: %s", a->tmp, strerror(errno));
    int fd = a->fd;
    a->fd = -1;
    if (close(fd) != 0 && rc == DVL_OK)
        rc = dvl_errf(err, DVL_EIO, "%s: close failed: %s", a->tmp, strerror(errno));
    if (rc == DVL_OK && rename(a->tmp, a->path) != 0)
        rc = dvl_errf(err, DVL_EIO, "%s: cannot rename to %s: %s", a->tmp, a->path,
                      strerror(errno));
    if (rc != DVL_OK) {
        dvl_afile_abort(a);
        return rc;
    }
    /* Make the rename itself durable. Best effort: some file systems refuse
     * fsync on a directory, and the new file is complete either way. */
    char *slash = strrchr(a->path, '/');
    if (slash)
        *slash = '\0';
    int dfd = open(slash ? (slash == a->path ? "/" : a->path) : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    afile_release(a);
    return DVL_OK;
}
