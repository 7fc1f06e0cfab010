/* Parameters <-> safetensors checkpoints (load.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "models/load.h"

/* Elements converted between two releases: big enough for the parallel
 * conversion to pay off, small enough that the source pages in flight stay
 * a rounding error next to the parameters (8 MiB of bf16). */
#define PIECE ((int64_t)4 << 20)

/* Drop the pages holding [p, p + n) from this process. The mapping is a
 * read-only private file mapping that is never written, so its pages are
 * clean copies of the file: MADV_DONTNEED only unmaps them, and touching
 * them again reads the file anew. Rounding outward may drop a neighbour's
 * page early, which costs at most a re-read, never a wrong value. */
static void release_pages(const void *p, size_t n)
{
    long page = sysconf(_SC_PAGESIZE);
    uintptr_t a = (uintptr_t)p / (uintptr_t)page * (uintptr_t)page;
    uintptr_t b = ((uintptr_t)p + n + (uintptr_t)page - 1) / (uintptr_t)page * (uintptr_t)page;
    /* Advice only: failure leaves the pages resident, nothing else. */
    (void)madvise((void *)a, b - a, MADV_DONTNEED);
}

int dvl_ckpt_read_release(const dvl_st_tensor *t, float *dst, int64_t numel, dvl_err *err)
{
    if (numel != t->numel)
        return dvl_st_tensor_read_f32(t, dst, numel, err); /* reports the mismatch */
    int64_t es = t->numel ? t->nbytes / t->numel : 0;
    for (int64_t i0 = 0; i0 < numel; i0 += PIECE) {
        int64_t n = numel - i0 < PIECE ? numel - i0 : PIECE;
        /* A piece is a tensor of its own to the converter. */
        dvl_st_tensor piece = *t;
        piece.data = (const char *)t->data + i0 * es;
        piece.numel = n;
        piece.nbytes = n * es;
        int rc = dvl_st_tensor_read_f32(&piece, dst + i0, n, err);
        if (rc)
            return rc;
        release_pages(piece.data, (size_t)piece.nbytes);
    }
    return DVL_OK;
}

bool dvl_ckpt_has(const dvl_st_index *ix, const char *name)
{
    return dvl_st_index_file_of(ix, name) != NULL;
}

static const char *shape_str(const int64_t *s, int nd, char *buf, size_t n)
{
    size_t k = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < nd && k < n; i++)
        k += (size_t)snprintf(buf + k, n - k, i ? ", %lld" : "%lld", (long long)s[i]);
    if (k < n)
        snprintf(buf + k, n - k, "]");
    return buf;
}

int dvl_param_load(dvl_tensor *par, dvl_st_index *ix, const char *ckpt, const char *const *names,
                   int n_names, dvl_err *err)
{
    int k = 0;
    while (k < n_names && !dvl_ckpt_has(ix, names[k]))
        k++;
    if (k == n_names)
        return dvl_errf(err, DVL_EINVAL, "%s: missing tensor \"%s\" (parameter %s)", ckpt,
                        names[0], par->name);
    const dvl_st_tensor *t = dvl_st_index_find(ix, names[k], err);
    if (!t)
        return err ? err->code : DVL_EIO;
    bool same = t->ndim == par->ndim;
    for (int d = 0; same && d < t->ndim; d++)
        same = t->shape[d] == par->shape[d];
    if (!same) {
        char a[128], b[128];
        return dvl_errf(err, DVL_EINVAL,
                        "%s: tensor \"%s\" has shape %s but the config gives parameter %s shape %s",
                        t->path, names[k], shape_str(t->shape, t->ndim, a, sizeof a), par->name,
                        shape_str(par->shape, par->ndim, b, sizeof b));
    }
    return dvl_ckpt_read_release(t, dvl_f32(par), dvl_numel(par), err);
}

int dvl_params_load(dvl_params *p, dvl_st_index *ix, const char *ckpt, const char *prefix,
                    const char *const *src, int n_src, dvl_err *err)
{
    if (!p->allocated)
        return dvl_errf(err, DVL_EINVAL, "loading %s: parameter store not allocated", ckpt);
    enum { MAX_SRC = 8 };
    if (n_src > MAX_SRC)
        return dvl_errf(err, DVL_EINVAL, "loading %s: more than %d name prefixes", ckpt, MAX_SRC);
    size_t plen = strlen(prefix);
    char buf[MAX_SRC][1024];
    const char *names[MAX_SRC];
    for (int i = 0; i < p->n; i++) {
        dvl_tensor *par = p->t[i];
        if (strncmp(par->name, prefix, plen) != 0)
            continue;
        const char *rest = par->name + plen;
        int n = n_src ? n_src : 1;
        for (int k = 0; k < n; k++) {
            snprintf(buf[k], sizeof buf[k], "%s%s", n_src ? src[k] : prefix, rest);
            names[k] = buf[k];
        }
        int rc = dvl_param_load(par, ix, ckpt, names, n, err);
        if (rc)
            return rc;
    }
    return DVL_OK;
}

int dvl_params_to_writer(const dvl_params *p, dvl_st_writer *w, dvl_dtype store, dvl_err *err)
{
    if (!p->allocated)
        return dvl_errf(err, DVL_EINVAL, "saving: parameter store not allocated");
    for (int i = 0; i < p->n; i++) {
        const dvl_tensor *t = p->t[i];
        int rc = dvl_st_writer_add(w, t->name, store, t->ndim, t->shape, dvl_f32(t), err);
        if (rc)
            return rc;
    }
    return DVL_OK;
}
