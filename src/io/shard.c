/* Shard files (HDF5): see shard.h for the layout. */
#include "io/shard.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <hdf5.h>

/* Bound on a shard's samples, images and tokens attributes: far beyond any
 * shard dvl-prep writes, and low enough that the arrays sized from them
 * (samples + 1 offsets) cannot overflow. */
#define SHARD_MAX_COUNT ((int64_t)1 << 40)

/* ---- FNV-1a ---- */

uint64_t dvl_fnv1a64(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= UINT64_C(0x100000001b3);
    }
    return h;
}

int dvl_fnv1a64_file(const char *path, uint64_t *hash, int64_t *bytes, dvl_err *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return dvl_errf(err, DVL_EIO, "%s: %s", path, strerror(errno));
    enum { BLOCK = 1 << 20 };
    unsigned char *buf = malloc(BLOCK);
    if (!buf) {
        close(fd);
        return dvl_errf(err, DVL_ENOMEM, "%s: out of memory", path);
    }
    uint64_t h = DVL_FNV1A64_INIT;
    int64_t total = 0;
    int rc = DVL_OK;
    for (;;) {
        ssize_t r = read(fd, buf, BLOCK);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            rc = dvl_errf(err, DVL_EIO, "%s: read: %s", path, strerror(errno));
            break;
        }
        if (r == 0)
            break;
        h = dvl_fnv1a64(h, buf, (size_t)r);
        total += r;
    }
    free(buf);
    close(fd);
    if (!rc) {
        *hash = h;
        if (bytes)
            *bytes = total;
    }
    return rc;
}

/* ---- the HDF5 lock ---- */

/* The serial HDF5 library keeps global state (ids, caches, the error
 * stack) and must not be entered by two threads at once. The error stack's
 * automatic printing is switched off inside, so failures come back only as
 * our messages. */
static pthread_mutex_t h5_mutex = PTHREAD_MUTEX_INITIALIZER;
/* The first HDF5 message of the current call (under h5_mutex): cleanup
 * calls after a failure reset HDF5's error stack, so it is noted first. */
static char h5_last[160];

typedef struct h5_saved {
    H5E_auto2_t func;
    void *data;
} h5_saved;

static void h5_enter(h5_saved *s)
{
    pthread_mutex_lock(&h5_mutex);
    h5_last[0] = '\0';
    H5Eget_auto2(H5E_DEFAULT, &s->func, &s->data);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
}

static void h5_leave(const h5_saved *s)
{
    H5Eclear2(H5E_DEFAULT);
    H5Eset_auto2(H5E_DEFAULT, s->func, s->data);
    pthread_mutex_unlock(&h5_mutex);
}

static herr_t innermost(unsigned n, const H5E_error2_t *e, void *data)
{
    if (n == 0 && e->desc)
        snprintf(data, 160, "%s", e->desc);
    return 0;
}

/* The innermost message of HDF5's error stack ("" when empty). */
static const char *h5_why(char buf[160])
{
    buf[0] = '\0';
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, innermost, buf);
    return buf;
}

/* Note the error stack's message if none is noted yet; returns ok. */
static bool h5_note(bool ok)
{
    if (!ok && !h5_last[0])
        h5_why(h5_last);
    return ok;
}

static int h5_fail(dvl_err *err, const char *path, const char *what)
{
    char why[160];
    if (h5_last[0])
        snprintf(why, sizeof why, "%s", h5_last);
    else
        h5_why(why);
    return dvl_errf(err, DVL_EIO, "%s: %s%s%s", path, what, why[0] ? ": " : "", why);
}

/* Dataset creation properties shared by every dataset: no timestamps (so
 * equal content gives equal bytes) and no fill values written. */
static hid_t base_dcpl(void)
{
    hid_t p = H5Pcreate(H5P_DATASET_CREATE);
    if (p >= 0 && (H5Pset_obj_track_times(p, 0) < 0 || H5Pset_fill_time(p, H5D_FILL_TIME_NEVER) < 0)) {
        H5Pclose(p);
        return -1;
    }
    return p;
}

/* File access without HDF5's flock: shards are written under a temporary
 * name and never changed after the rename, so readers need no lock, and
 * flock fails on some cluster file systems (the HDF5_USE_FILE_LOCKING=FALSE
 * problem). H5Pset_file_locking exists from 1.10.7 (not in 1.12.0). */
static hid_t file_access(void)
{
    hid_t p = H5Pcreate(H5P_FILE_ACCESS);
#if H5_VERSION_GE(1, 10, 7) && !(H5_VERS_MINOR == 12 && H5_VERS_RELEASE == 0)
    if (p >= 0 && H5Pset_file_locking(p, 0, 1) < 0) {
        H5Pclose(p);
        return -1;
    }
#endif
    return p;
}

static hid_t string_type(void)
{
    hid_t t = H5Tcopy(H5T_C_S1);
    if (t >= 0 && (H5Tset_size(t, H5T_VARIABLE) < 0 || H5Tset_cset(t, H5T_CSET_UTF8) < 0)) {
        H5Tclose(t);
        return -1;
    }
    return t;
}

/* ---- writing ---- */

struct dvl_shard_writer {
    char *path, *tmp;
    hid_t file, images;
    int size;
    int64_t n_img;
    int32_t *ids, *labels;
    int64_t nt, cap_t;
    int64_t *offsets;
    int32_t *img_index, *img_pos;
    char **sids;
    int64_t ns, cap_s, cap_o;
};

static void writer_free(dvl_shard_writer *w)
{
    if (!w)
        return;
    for (int64_t i = 0; i < w->ns; i++)
        free(w->sids[i]);
    free(w->sids);
    free(w->offsets);
    free(w->img_index);
    free(w->img_pos);
    free(w->ids);
    free(w->labels);
    free(w->path);
    free(w->tmp);
    free(w);
}

dvl_shard_writer *dvl_shard_create(const char *path, int image_size, int deflate, dvl_err *err)
{
    if (!path || image_size < 1 || image_size > 16384 || deflate < 0 || deflate > 9) {
        dvl_errf(err, DVL_EINVAL, "shard create %s: image size %d or deflate level %d out of range",
                 path ? path : "(null)", image_size, deflate);
        return NULL;
    }
    dvl_shard_writer *w = calloc(1, sizeof *w);
    size_t n = strlen(path);
    if (!w || !(w->path = strdup(path)) || !(w->tmp = malloc(n + 5)) ||
        !(w->offsets = malloc(sizeof *w->offsets))) {
        writer_free(w);
        dvl_errf(err, DVL_ENOMEM, "shard create %s: out of memory", path);
        return NULL;
    }
    memcpy(w->tmp, path, n);
    memcpy(w->tmp + n, ".tmp", 5);
    w->offsets[0] = 0;
    w->cap_o = 1;
    w->size = image_size;
    w->file = w->images = -1;

    h5_saved sv;
    h5_enter(&sv);
    hid_t fcpl = H5Pcreate(H5P_FILE_CREATE), fapl = file_access(), dcpl = base_dcpl(), space = -1;
    hsize_t dims[4] = {0, (hsize_t)image_size, (hsize_t)image_size, 3};
    hsize_t maxd[4] = {H5S_UNLIMITED, dims[1], dims[2], 3};
    hsize_t chunk[4] = {1, dims[1], dims[2], 3};
    const char *what = "cannot create the file";
    if (fcpl < 0 || fapl < 0 || H5Pset_obj_track_times(fcpl, 0) < 0)
        goto fail;
    unlink(w->tmp);
    if ((w->file = H5Fcreate(w->tmp, H5F_ACC_TRUNC, fcpl, fapl)) < 0)
        goto fail;
    what = "cannot create dataset images";
    if (dcpl < 0 || H5Pset_chunk(dcpl, 4, chunk) < 0 || (deflate && H5Pset_deflate(dcpl, (unsigned)deflate) < 0))
        goto fail;
    if ((space = H5Screate_simple(4, dims, maxd)) < 0 ||
        (w->images = H5Dcreate2(w->file, "images", H5T_STD_U8LE, space, H5P_DEFAULT, dcpl,
                                H5P_DEFAULT)) < 0)
        goto fail;
    H5Sclose(space);
    H5Pclose(dcpl);
    H5Pclose(fapl);
    H5Pclose(fcpl);
    h5_leave(&sv);
    return w;
fail:
    h5_fail(err, w->tmp, what);
    if (space >= 0)
        H5Sclose(space);
    if (dcpl >= 0)
        H5Pclose(dcpl);
    if (fapl >= 0)
        H5Pclose(fapl);
    if (fcpl >= 0)
        H5Pclose(fcpl);
    if (w->images >= 0)
        H5Dclose(w->images);
    if (w->file >= 0)
        H5Fclose(w->file);
    h5_leave(&sv);
    unlink(w->tmp);
    writer_free(w);
    return NULL;
}

static int grow(void **p, int64_t *cap, int64_t need, size_t elem)
{
    if (*cap >= need)
        return 0;
    int64_t c = *cap ? *cap : 64;
    while (c < need)
        c *= 2;
    void *q = realloc(*p, (size_t)c * elem);
    if (!q)
        return -1;
    *p = q;
    *cap = c;
    return 0;
}

int dvl_shard_add(dvl_shard_writer *w, const char *id, const int32_t *ids, const int32_t *labels,
                  int64_t n, const uint8_t *pixels, int64_t image_pos, dvl_err *err)
{
    if (!w || !id || n < 0 || (n && (!ids || !labels)))
        return dvl_errf(err, DVL_EINVAL, "shard add: NULL argument");
    if (pixels ? image_pos < 0 || image_pos >= n : image_pos != -1)
        return dvl_errf(err, DVL_EINVAL, "shard add %s: image slot %lld with %s image and %lld ids",
                        id, (long long)image_pos, pixels ? "an" : "no", (long long)n);
    char *sid = strdup(id);
    int64_t ct = w->cap_t, cs = w->cap_s, co = w->cap_o, cp = w->cap_s;
    /* Each pair shares one capacity: grow both, then record it. */
    bool ok = sid && !grow((void **)&w->ids, &ct, w->nt + n, sizeof *w->ids) &&
              !grow((void **)&w->labels, &w->cap_t, ct, sizeof *w->labels) &&
              !grow((void **)&w->sids, &cs, w->ns + 1, sizeof *w->sids) &&
              !grow((void **)&w->img_index, &w->cap_s, cs, sizeof *w->img_index) &&
              !grow((void **)&w->img_pos, &cp, cs, sizeof *w->img_pos) &&
              !grow((void **)&w->offsets, &co, w->ns + 2, sizeof *w->offsets);
    if (!ok) {
        free(sid);
        return dvl_errf(err, DVL_ENOMEM, "%s: out of memory for sample %s", w->tmp, id);
    }
    w->cap_o = co;
    int32_t row = -1;
    if (pixels) {
        h5_saved sv;
        h5_enter(&sv);
        hsize_t dims[4] = {(hsize_t)w->n_img + 1, (hsize_t)w->size, (hsize_t)w->size, 3};
        hsize_t start[4] = {(hsize_t)w->n_img, 0, 0, 0}, count[4] = {1, dims[1], dims[2], 3};
        hid_t fs = -1, ms = -1;
        bool ok = h5_note(H5Dset_extent(w->images, dims) >= 0 && (fs = H5Dget_space(w->images)) >= 0 &&
                          H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL) >= 0 &&
                          (ms = H5Screate_simple(4, count, NULL)) >= 0 &&
                          H5Dwrite(w->images, H5T_NATIVE_UINT8, ms, fs, H5P_DEFAULT, pixels) >= 0);
        int rc = ok ? DVL_OK : h5_fail(err, w->tmp, "cannot write an image");
        if (ms >= 0)
            H5Sclose(ms);
        if (fs >= 0)
            H5Sclose(fs);
        h5_leave(&sv);
        if (rc) {
            free(sid);
            return rc;
        }
        row = (int32_t)w->n_img++;
    }
    if (n) {
        memcpy(w->ids + w->nt, ids, sizeof *ids * (size_t)n);
        memcpy(w->labels + w->nt, labels, sizeof *labels * (size_t)n);
    }
    w->nt += n;
    w->sids[w->ns] = sid;
    w->img_index[w->ns] = row;
    w->img_pos[w->ns] = (int32_t)image_pos;
    w->ns++;
    w->offsets[w->ns] = w->nt;
    return DVL_OK;
}

/* A 1-D dataset of n elements written from data (nothing written when n is 0). */
static bool write_1d(hid_t file, const char *name, hid_t ftype, hid_t mtype, int64_t n,
                     const void *data)
{
    hsize_t d = (hsize_t)n;
    hid_t space = H5Screate_simple(1, &d, NULL), dcpl = base_dcpl(), ds = -1;
    /* Variable-length data must have its fill value written (HDF5 refuses
     * H5D_FILL_TIME_NEVER for it). */
    if (dcpl >= 0 && H5Tis_variable_str(ftype) > 0)
        H5Pset_fill_time(dcpl, H5D_FILL_TIME_IFSET);
    bool ok = h5_note(space >= 0 && dcpl >= 0 &&
                      (ds = H5Dcreate2(file, name, ftype, space, H5P_DEFAULT, dcpl, H5P_DEFAULT)) >= 0 &&
                      (n == 0 || H5Dwrite(ds, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) >= 0));
    if (ds >= 0)
        H5Dclose(ds);
    if (dcpl >= 0)
        H5Pclose(dcpl);
    if (space >= 0)
        H5Sclose(space);
    return ok;
}

static bool write_attr_i64(hid_t obj, const char *name, int64_t v)
{
    hid_t space = H5Screate(H5S_SCALAR), a = -1;
    bool ok = h5_note(space >= 0 &&
                      (a = H5Acreate2(obj, name, H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT)) >= 0 &&
                      H5Awrite(a, H5T_NATIVE_INT64, &v) >= 0);
    if (a >= 0)
        H5Aclose(a);
    if (space >= 0)
        H5Sclose(space);
    return ok;
}

static bool write_attr_str(hid_t obj, const char *name, const char *v)
{
    hid_t space = H5Screate(H5S_SCALAR), t = H5Tcopy(H5T_C_S1), a = -1;
    bool ok = h5_note(space >= 0 && t >= 0 && H5Tset_size(t, strlen(v) + 1) >= 0 &&
                      (a = H5Acreate2(obj, name, t, space, H5P_DEFAULT, H5P_DEFAULT)) >= 0 &&
                      H5Awrite(a, t, v) >= 0);
    if (a >= 0)
        H5Aclose(a);
    if (t >= 0)
        H5Tclose(t);
    if (space >= 0)
        H5Sclose(space);
    return ok;
}

static int fsync_path(const char *path, bool dir)
{
    int fd = open(path, (dir ? O_DIRECTORY : 0) | O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

int dvl_shard_finish(dvl_shard_writer *w, dvl_err *err)
{
    if (!w)
        return dvl_errf(err, DVL_EINVAL, "shard finish: NULL writer");
    h5_saved sv;
    h5_enter(&sv);
    hid_t st = string_type();
    const char *what = NULL;
    if (!write_1d(w->file, "input_ids", H5T_STD_I32LE, H5T_NATIVE_INT32, w->nt, w->ids))
        what = "cannot write input_ids";
    else if (!write_1d(w->file, "labels", H5T_STD_I32LE, H5T_NATIVE_INT32, w->nt, w->labels))
        what = "cannot write labels";
    else if (!write_1d(w->file, "offsets", H5T_STD_I64LE, H5T_NATIVE_INT64, w->ns + 1, w->offsets))
        what = "cannot write offsets";
    else if (!write_1d(w->file, "image_index", H5T_STD_I32LE, H5T_NATIVE_INT32, w->ns,
                       w->img_index))
        what = "cannot write image_index";
    else if (!write_1d(w->file, "image_pos", H5T_STD_I32LE, H5T_NATIVE_INT32, w->ns, w->img_pos))
        what = "cannot write image_pos";
    else if (st < 0 || !write_1d(w->file, "sample_id", st, st, w->ns, w->sids))
        what = "cannot write sample_id";
    else if (!write_attr_str(w->file, "format", "dvl-shard") ||
             !write_attr_i64(w->file, "version", DVL_SHARD_VERSION) ||
             !write_attr_i64(w->file, "samples", w->ns) ||
             !write_attr_i64(w->file, "images", w->n_img) ||
             !write_attr_i64(w->file, "tokens", w->nt) ||
             !write_attr_i64(w->file, "image_size", w->size))
        what = "cannot write the attributes";
    int rc = what ? h5_fail(err, w->tmp, what) : DVL_OK;
    if (st >= 0)
        H5Tclose(st);
    if (H5Dclose(w->images) < 0 && !rc)
        rc = h5_fail(err, w->tmp, "cannot close dataset images");
    if (H5Fclose(w->file) < 0 && !rc)
        rc = h5_fail(err, w->tmp, "cannot close the file");
    h5_leave(&sv);
    if (!rc && fsync_path(w->tmp, false))
        rc = dvl_errf(err, DVL_EIO, "%s: fsync: %s", w->tmp, strerror(errno));
    if (!rc && rename(w->tmp, w->path))
        rc = dvl_errf(err, DVL_EIO, "rename %s -> %s: %s", w->tmp, w->path, strerror(errno));
    if (!rc) {
        /* Make the rename itself durable. */
        char *d = strdup(w->path);
        if (d)
            fsync_path(dirname(d), true);
        free(d);
    } else {
        unlink(w->tmp);
    }
    writer_free(w);
    return rc;
}

void dvl_shard_abort(dvl_shard_writer *w)
{
    if (!w)
        return;
    h5_saved sv;
    h5_enter(&sv);
    H5Dclose(w->images);
    H5Fclose(w->file);
    h5_leave(&sv);
    unlink(w->tmp);
    writer_free(w);
}

/* ---- reading ---- */

struct dvl_shard {
    char *path;
    hid_t file, ids, labels, images, sid;
    int64_t n, m, t;
    int size;
    int64_t *offsets;
    int32_t *img, *img_pos;
};

void dvl_shard_close(dvl_shard *s)
{
    if (!s)
        return;
    h5_saved sv;
    h5_enter(&sv);
    hid_t ds[] = {s->ids, s->labels, s->images, s->sid};
    for (int i = 0; i < 4; i++)
        if (ds[i] >= 0)
            H5Dclose(ds[i]);
    if (s->file >= 0)
        H5Fclose(s->file);
    h5_leave(&sv);
    free(s->offsets);
    free(s->img);
    free(s->img_pos);
    free(s->path);
    free(s);
}

static bool read_attr_i64(hid_t obj, const char *name, int64_t *v)
{
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    bool ok = a >= 0 && H5Aread(a, H5T_NATIVE_INT64, v) >= 0;
    if (a >= 0)
        H5Aclose(a);
    return ok;
}

/* Open dataset name and check its rank, shape (-1: any) and type class. */
static hid_t open_ds(dvl_shard *s, const char *name, int rank, const int64_t *shape,
                     H5T_class_t cls, size_t elem, dvl_err *err, hid_t dapl)
{
    hid_t ds = H5Dopen2(s->file, name, dapl);
    if (!h5_note(ds >= 0)) {
        h5_fail(err, s->path, name);
        return -1;
    }
    hid_t sp = H5Dget_space(ds), ty = H5Dget_type(ds);
    hsize_t dims[4] = {0};
    int r = sp >= 0 ? H5Sget_simple_extent_ndims(sp) : -1;
    bool ok = r == rank && H5Sget_simple_extent_dims(sp, dims, NULL) == rank;
    for (int i = 0; ok && i < rank; i++)
        ok = shape[i] < 0 || (int64_t)dims[i] == shape[i];
    bool tok = ty >= 0 && H5Tget_class(ty) == cls && (elem == 0 || H5Tget_size(ty) == elem);
    if (sp >= 0)
        H5Sclose(sp);
    if (ty >= 0)
        H5Tclose(ty);
    if (!ok || !tok) {
        char got[96] = "";
        for (int i = 0, k = 0; i < r && i < 4; i++)
            k += snprintf(got + k, sizeof got - (size_t)k, "%s%llu", i ? ", " : "",
                          (unsigned long long)dims[i]);
        dvl_errf(err, DVL_EIO, "%s: dataset %s has %s [%s]; expected rank %d%s", s->path, name,
                 tok ? "shape" : "the wrong type and shape", got, rank,
                 tok ? " with the shape the attributes give" : "");
        H5Dclose(ds);
        return -1;
    }
    return ds;
}

dvl_shard *dvl_shard_open(const char *path, dvl_err *err)
{
    dvl_shard *s = calloc(1, sizeof *s);
    if (!s || !(s->path = strdup(path))) {
        free(s);
        dvl_errf(err, DVL_ENOMEM, "%s: out of memory", path);
        return NULL;
    }
    s->file = s->ids = s->labels = s->images = s->sid = -1;
    h5_saved sv;
    h5_enter(&sv);
    int rc = DVL_OK;
    int64_t version = 0, size = 0;
    char fmt[16] = "";
    hid_t a = -1, at = -1, dapl = -1, fapl = file_access();
    if (fapl < 0 || (s->file = H5Fopen(path, H5F_ACC_RDONLY, fapl)) < 0) {
        rc = h5_fail(err, path, "cannot open as HDF5");
        goto done;
    }
    a = H5Aopen(s->file, "format", H5P_DEFAULT);
    at = H5Tcopy(H5T_C_S1);
    if (a < 0 || at < 0 || H5Tset_size(at, sizeof fmt) < 0 || H5Aread(a, at, fmt) < 0 ||
        strncmp(fmt, "dvl-shard", sizeof fmt)) {
        rc = dvl_errf(err, DVL_EIO, "%s: not a dvl shard (attribute format is not \"dvl-shard\")",
                      path);
        goto done;
    }
    if (!read_attr_i64(s->file, "version", &version) || version != DVL_SHARD_VERSION ||
        !read_attr_i64(s->file, "samples", &s->n) || !read_attr_i64(s->file, "images", &s->m) ||
        !read_attr_i64(s->file, "tokens", &s->t) ||
        !read_attr_i64(s->file, "image_size", &size) || s->n < 0 || s->m < 0 || s->t < 0 ||
        s->n > SHARD_MAX_COUNT || s->m > SHARD_MAX_COUNT || s->t > SHARD_MAX_COUNT ||
        size < 1 || size > 16384) {
        rc = dvl_errf(err, DVL_EIO,
                      "%s: bad attributes (version %lld, want %d; samples, images, tokens, "
                      "image_size must be set and in range)",
                      path, (long long)version, DVL_SHARD_VERSION);
        goto done;
    }
    s->size = (int)size;
    /* A chunk cache that holds one image (HDF5's default 1 MiB): without
     * it HDF5 mallocs and frees a fresh chunk buffer per read, and glibc
     * hands such large blocks back to the kernel, so every image paid ~110
     * page faults of zeroing (18% of the load time, measured); cached, the
     * buffer memory is reused. */
    dapl = H5Pcreate(H5P_DATASET_ACCESS);
    if (dapl < 0 || H5Pset_chunk_cache(dapl, 521, (size_t)1 << 20, 1.0) < 0) {
        rc = h5_fail(err, path, "cannot make access properties");
        goto done;
    }
    int64_t tshape[1] = {s->t}, oshape[1] = {s->n + 1}, nshape[1] = {s->n};
    int64_t ishape[4] = {s->m, size, size, 3};
    if ((s->ids = open_ds(s, "input_ids", 1, tshape, H5T_INTEGER, 4, err, H5P_DEFAULT)) < 0 ||
        (s->labels = open_ds(s, "labels", 1, tshape, H5T_INTEGER, 4, err, H5P_DEFAULT)) < 0 ||
        (s->sid = open_ds(s, "sample_id", 1, nshape, H5T_STRING, 0, err, H5P_DEFAULT)) < 0 ||
        (s->images = open_ds(s, "images", 4, ishape, H5T_INTEGER, 1, err, dapl)) < 0) {
        rc = err ? err->code : DVL_EIO;
        goto done;
    }
    hid_t off = open_ds(s, "offsets", 1, oshape, H5T_INTEGER, 8, err, H5P_DEFAULT);
    hid_t img = off >= 0 ? open_ds(s, "image_index", 1, nshape, H5T_INTEGER, 4, err, H5P_DEFAULT)
                         : -1;
    hid_t ipos = img >= 0 ? open_ds(s, "image_pos", 1, nshape, H5T_INTEGER, 4, err, H5P_DEFAULT)
                          : -1;
    s->offsets = malloc(sizeof *s->offsets * (size_t)(s->n + 1));
    s->img = malloc(sizeof *s->img * (size_t)(s->n + 1));
    s->img_pos = malloc(sizeof *s->img_pos * (size_t)(s->n + 1));
    bool ok = ipos >= 0 && s->offsets && s->img && s->img_pos &&
              h5_note(H5Dread(off, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, s->offsets) >= 0 &&
                      (s->n == 0 ||
                       (H5Dread(img, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, s->img) >= 0 &&
                        H5Dread(ipos, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, s->img_pos) >= 0)));
    if (off >= 0)
        H5Dclose(off);
    if (img >= 0)
        H5Dclose(img);
    if (ipos >= 0)
        H5Dclose(ipos);
    if (!ok) {
        if (ipos >= 0)
            rc = h5_fail(err, path, "cannot read offsets, image_index and image_pos");
        else
            rc = err ? err->code : DVL_EIO;
        goto done;
    }
    if (s->offsets[0] != 0 || s->offsets[s->n] != s->t) {
        rc = dvl_errf(err, DVL_EIO, "%s: offsets run from %lld to %lld; expected 0 to %lld", path,
                      (long long)s->offsets[0], (long long)s->offsets[s->n], (long long)s->t);
        goto done;
    }
    for (int64_t i = 0; i < s->n; i++) {
        if (s->offsets[i + 1] < s->offsets[i]) {
            rc = dvl_errf(err, DVL_EIO, "%s: offsets[%lld] = %lld < offsets[%lld] = %lld", path,
                          (long long)i + 1, (long long)s->offsets[i + 1], (long long)i,
                          (long long)s->offsets[i]);
            goto done;
        }
        if (s->img[i] < -1 || s->img[i] >= s->m) {
            rc = dvl_errf(err, DVL_EIO, "%s: image_index[%lld] = %d is outside [-1, %lld)", path,
                          (long long)i, s->img[i], (long long)s->m);
            goto done;
        }
        int64_t len = s->offsets[i + 1] - s->offsets[i];
        if (s->img[i] < 0 ? s->img_pos[i] != -1 : s->img_pos[i] < 0 || s->img_pos[i] >= len) {
            rc = dvl_errf(err, DVL_EIO, "%s: image_pos[%lld] = %d does not fit image row %d and "
                          "%lld ids", path, (long long)i, s->img_pos[i], s->img[i], (long long)len);
            goto done;
        }
    }
done:
    if (fapl >= 0)
        H5Pclose(fapl);
    if (dapl >= 0)
        H5Pclose(dapl);
    if (at >= 0)
        H5Tclose(at);
    if (a >= 0)
        H5Aclose(a);
    h5_leave(&sv);
    if (rc) {
        dvl_shard_close(s);
        return NULL;
    }
    return s;
}

int64_t dvl_shard_samples(const dvl_shard *s)
{
    return s->n;
}

int64_t dvl_shard_images(const dvl_shard *s)
{
    return s->m;
}

int64_t dvl_shard_tokens(const dvl_shard *s)
{
    return s->t;
}

int dvl_shard_image_size(const dvl_shard *s)
{
    return s->size;
}

int64_t dvl_shard_sample_len(const dvl_shard *s, int64_t i)
{
    return s->offsets[i + 1] - s->offsets[i];
}

int32_t dvl_shard_sample_image(const dvl_shard *s, int64_t i)
{
    return s->img[i];
}

int32_t dvl_shard_sample_image_pos(const dvl_shard *s, int64_t i)
{
    return s->img_pos[i];
}

/* Read count elements from start of a 1-D dataset. */
static bool read_range(hid_t ds, hid_t mtype, int64_t start, int64_t count, void *out)
{
    hsize_t st = (hsize_t)start, n = (hsize_t)count;
    hid_t fs = H5Dget_space(ds), ms = -1;
    bool ok = h5_note(fs >= 0 && H5Sselect_hyperslab(fs, H5S_SELECT_SET, &st, NULL, &n, NULL) >= 0 &&
                      (ms = H5Screate_simple(1, &n, NULL)) >= 0 &&
                      H5Dread(ds, mtype, ms, fs, H5P_DEFAULT, out) >= 0);
    if (ms >= 0)
        H5Sclose(ms);
    if (fs >= 0)
        H5Sclose(fs);
    return ok;
}

int dvl_shard_read_tokens(dvl_shard *s, int64_t i, int32_t *ids, int32_t *labels, dvl_err *err)
{
    if (i < 0 || i >= s->n)
        return dvl_errf(err, DVL_EINVAL, "%s: sample %lld of %lld", s->path, (long long)i,
                        (long long)s->n);
    int64_t a = s->offsets[i], n = s->offsets[i + 1] - a;
    if (n == 0)
        return DVL_OK;
    h5_saved sv;
    h5_enter(&sv);
    int rc = DVL_OK;
    if (ids && !read_range(s->ids, H5T_NATIVE_INT32, a, n, ids))
        rc = h5_fail(err, s->path, "cannot read input_ids");
    else if (labels && !read_range(s->labels, H5T_NATIVE_INT32, a, n, labels))
        rc = h5_fail(err, s->path, "cannot read labels");
    h5_leave(&sv);
    return rc;
}

int dvl_shard_read_image(dvl_shard *s, int64_t r, uint8_t *pixels, dvl_err *err)
{
    if (r < 0 || r >= s->m)
        return dvl_errf(err, DVL_EINVAL, "%s: image %lld of %lld", s->path, (long long)r,
                        (long long)s->m);
    h5_saved sv;
    h5_enter(&sv);
    hsize_t start[4] = {(hsize_t)r, 0, 0, 0};
    hsize_t count[4] = {1, (hsize_t)s->size, (hsize_t)s->size, 3};
    hid_t fs = H5Dget_space(s->images), ms = -1;
    bool ok = h5_note(fs >= 0 && H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL) >= 0 &&
                      (ms = H5Screate_simple(4, count, NULL)) >= 0 &&
                      H5Dread(s->images, H5T_NATIVE_UINT8, ms, fs, H5P_DEFAULT, pixels) >= 0);
    int rc = ok ? DVL_OK : h5_fail(err, s->path, "cannot read an image");
    if (ms >= 0)
        H5Sclose(ms);
    if (fs >= 0)
        H5Sclose(fs);
    h5_leave(&sv);
    return rc;
}

char *dvl_shard_sample_id(dvl_shard *s, int64_t i, dvl_err *err)
{
    if (i < 0 || i >= s->n) {
        dvl_errf(err, DVL_EINVAL, "%s: sample %lld of %lld", s->path, (long long)i,
                 (long long)s->n);
        return NULL;
    }
    h5_saved sv;
    h5_enter(&sv);
    char *v = NULL, *out = NULL;
    hid_t st = string_type();
    bool ok = st >= 0 && read_range(s->sid, st, i, 1, &v);
    if (ok && v && !(out = strdup(v)))
        dvl_errf(err, DVL_ENOMEM, "%s: out of memory", s->path);
    else if (!ok)
        h5_fail(err, s->path, "cannot read sample_id");
    if (v)
        H5free_memory(v);
    if (st >= 0)
        H5Tclose(st);
    h5_leave(&sv);
    return out;
}
