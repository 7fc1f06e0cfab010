/* The parameter store: every parameter a view into one flat f32 buffer, every
 * trainable parameter's gradient a view into one flat gradient buffer. */
#include <stdlib.h>
#include <string.h>

#include "tensor/tensor.h"

#ifdef DVL_HAVE_CUDA
#include "ops/cuda/cuda.h"
#endif

#define PARAM_ALIGN 64

dvl_params *dvl_params_new(void) { return calloc(1, sizeof(dvl_params)); }

void dvl_params_free(dvl_params *p)
{
    if (!p)
        return;
    for (int i = 0; i < p->n; i++) {
        free((char *)p->t[i]->name);
        free(p->t[i]);
    }
    free(p->t);
    free(p->grad_off);
#ifdef DVL_HAVE_CUDA
    if (p->device == DVL_CUDA) {
        dvl_cuda_free(p->bf16);
        dvl_cuda_free(p->data);
        dvl_cuda_free(p->grad);
        dvl_cuda_free(p->norm_scratch);
        free(p);
        return;
    }
#endif
    free(p->bf16);
    free(p->data);
    free(p->grad);
    free(p);
}

dvl_tensor *dvl_params_find(const dvl_params *p, const char *name)
{
    for (int i = 0; i < p->n; i++)
        if (strcmp(p->t[i]->name, name) == 0)
            return p->t[i];
    return NULL;
}

dvl_tensor *dvl_params_add(dvl_params *p, const char *name, int ndim, const int64_t *shape,
                           bool trainable, dvl_err *err)
{
    if (p->allocated) {
        dvl_errf(err, DVL_EINVAL, "parameter %s declared after the store was allocated", name);
        return NULL;
    }
    if (dvl_params_find(p, name)) {
        dvl_errf(err, DVL_EINVAL, "parameter %s declared twice", name);
        return NULL;
    }
    if (ndim < 1 || ndim > DVL_MAX_DIMS) {
        dvl_errf(err, DVL_EINVAL, "parameter %s has %d dimensions", name, ndim);
        return NULL;
    }
    int64_t numel = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] <= 0) {
            dvl_errf(err, DVL_EINVAL, "parameter %s has dimension %d of size %lld", name, i,
                     (long long)shape[i]);
            return NULL;
        }
        /* A shape from a config.json beyond any real model (and whose
         * element count or the store's total would overflow int64_t) is an
         * error here, not an overflow later. */
        if (shape[i] > DVL_PARAM_MAX_NUMEL / numel) {
            dvl_errf(err, DVL_EINVAL, "parameter %s: dimension %d of size %lld makes it more than "
                     "2^40 elements", name, i, (long long)shape[i]);
            return NULL;
        }
        numel *= shape[i];
    }
    if (p->n == p->cap) {
        int cap = p->cap ? p->cap * 2 : 64;
        dvl_tensor **t = realloc(p->t, (size_t)cap * sizeof *t);
        if (!t) {
            dvl_errf(err, DVL_ENOMEM, "out of memory declaring parameter %s", name);
            return NULL;
        }
        p->t = t;
        p->cap = cap;
    }
    dvl_tensor *t = calloc(1, sizeof *t);
    char *nm = strdup(name);
    if (!t || !nm) {
        free(t);
        free(nm);
        dvl_errf(err, DVL_ENOMEM, "out of memory declaring parameter %s", name);
        return NULL;
    }
    t->dtype = DVL_F32;
    t->device = DVL_CPU;
    t->ndim = ndim;
    memcpy(t->shape, shape, (size_t)ndim * sizeof *shape);
    t->requires_grad = trainable;
    t->is_param = true;
    t->name = nm;
    p->t[p->n++] = t;
    return t;
}

int dvl_params_set_trainable(dvl_params *p, const char *prefix, bool trainable)
{
    int k = 0;
    size_t n = strlen(prefix);
    for (int i = 0; i < p->n; i++)
        if (strncmp(p->t[i]->name, prefix, n) == 0) {
            p->t[i]->requires_grad = trainable;
            k++;
        }
    return k;
}

/* Each tensor starts on a 16-float (64-byte) boundary inside the buffers, so
 * SIMD kernels and device copies see aligned rows. */
static int64_t round16(int64_t n) { return (n + 15) / 16 * 16; }

/* Whether a store keeping `mode` copies keeps one of t. */
static bool has_copy(dvl_bf16_copies mode, const dvl_tensor *t)
{
    return mode == DVL_BF16_ALL || (mode == DVL_BF16_FROZEN && !t->requires_grad);
}

/* Point every tensor into the store's buffers (offsets as laid out by
 * dvl_params_alloc; bf16 copies at the offsets of bf16_copies), on the
 * store's device. */
static void bind_tensors(dvl_params *p)
{
    int64_t off = 0, off16 = 0;
    for (int i = 0; i < p->n; i++) {
        dvl_tensor *t = p->t[i];
        t->device = p->device;
        t->data = p->data + off;
        t->grad = p->grad_off[i] >= 0 ? p->grad + p->grad_off[i] : NULL;
        t->bf16 = p->bf16 && has_copy(p->bf16_mode, t) ? p->bf16 + off16 : NULL;
        off += round16(dvl_numel(t));
        if (has_copy(p->bf16_mode, t))
            off16 += round16(dvl_numel(t));
    }
}

/* ------------------------------------------------------------ bf16 copies */

static void free_on(dvl_device dev, void *b)
{
#ifdef DVL_HAVE_CUDA
    if (dev == DVL_CUDA) {
        dvl_cuda_free(b);
        return;
    }
#endif
    (void)dev;
    free(b);
}

/* dst[k] = bf16(src[k]), k < n, both on dev. On CUDA the bf16 products'
 * own rounding kernel (dvl_cuda_to_bf16), so a copy is what a product
 * would round. */
static int round_into(dvl_device dev, uint16_t *dst, const float *src, int64_t n, dvl_err *err)
{
#ifdef DVL_HAVE_CUDA
    if (dev == DVL_CUDA)
        return dvl_cuda_to_bf16(dst, src, n, err);
#endif
    (void)dev, (void)err;
    for (int64_t k = 0; k < n; k++)
        dst[k] = dvl_f32_to_bf16(src[k]);
    return DVL_OK;
}

/* The bf16 copies that a store keeping `mode` copies keeps, read from
 * `data` (laid out as p's data, on dev), into buf (NULL: a new buffer on
 * dev). Returns the buffer, NULL with err set on failure (a new buffer
 * freed) or when no parameter gets one (*n = 0). */
static uint16_t *bf16_copies(const dvl_params *p, dvl_bf16_copies mode, dvl_device dev,
                             const float *data, uint16_t *buf, int64_t *n, dvl_err *err)
{
    int64_t total = 0;
    for (int i = 0; i < p->n; i++)
        if (has_copy(mode, p->t[i]))
            total += round16(dvl_numel(p->t[i]));
    *n = total;
    if (total == 0)
        return NULL;
    uint16_t *b = buf;
    const size_t bytes = (size_t)total * sizeof *b;
#ifdef DVL_HAVE_CUDA
    if (!b && dev == DVL_CUDA && !(b = dvl_cuda_malloc(bytes, err)))
        return NULL;
#endif
    if (!b && dev == DVL_CPU && !(b = aligned_alloc(PARAM_ALIGN, (bytes + 63) / 64 * 64))) {
        dvl_errf(err, DVL_ENOMEM, "out of memory for bf16 copies of %lld parameters",
                 (long long)total);
        return NULL;
    }
    int64_t off = 0, off16 = 0;
    for (int i = 0; i < p->n; i++) {
        const int64_t m = dvl_numel(p->t[i]);
        if (has_copy(mode, p->t[i])) {
            if (round_into(dev, b + off16, data + off, m, err)) {
                if (b != buf)
                    free_on(dev, b);
                return NULL;
            }
            off16 += round16(m);
        }
        off += round16(m);
    }
    return b;
}

int dvl_params_keep_bf16(dvl_params *p, dvl_bf16_copies mode, dvl_err *err)
{
    if (!p->allocated)
        return dvl_errf(err, DVL_EINVAL, "params_keep_bf16: the store is not allocated");
    if (mode != DVL_BF16_NONE && mode != DVL_BF16_FROZEN && mode != DVL_BF16_ALL)
        return dvl_errf(err, DVL_EINVAL, "params_keep_bf16: unknown mode %d", (int)mode);
    if (mode == DVL_BF16_NONE) {
        dvl_params_drop_bf16(p);
        return DVL_OK;
    }
    /* The same mode refreshes in place; another one lays out anew. */
    uint16_t *reuse = mode == p->bf16_mode ? p->bf16 : NULL;
    int64_t n;
    uint16_t *b = bf16_copies(p, mode, p->device, p->data, reuse, &n, err);
    if (!b && n)
        return err ? err->code : DVL_EDEVICE;
    if (p->bf16 != b)
        free_on(p->device, p->bf16);
    p->bf16 = b;
    p->numel_bf16 = n;
    p->bf16_mode = mode;
    bind_tensors(p);
    return DVL_OK;
}

int dvl_params_refresh_bf16(dvl_params *p, dvl_err *err)
{
    if (p->bf16_mode != DVL_BF16_ALL || !p->bf16)
        return DVL_OK;
    /* With every parameter copied, the copies are laid out exactly as the
     * data (bind_tensors), so a run of consecutive trainable parameters is
     * one range of both buffers: one rounding pass (one launch on a GPU) per
     * run, a single one when everything trains, rather than one per tensor
     * (~300 at 7B). The padding between parameters is rounded too (nothing
     * reads it). The frozen ones' copies stay untouched: their weights do
     * not move. */
    int64_t off = 0, lo = -1;
    for (int i = 0; i <= p->n; i++) {
        const bool trains = i < p->n && p->t[i]->requires_grad;
        if (trains && lo < 0)
            lo = off;
        if (!trains && lo >= 0) {
            int rc = round_into(p->device, p->bf16 + lo, p->data + lo, off - lo, err);
            if (rc)
                return rc;
            lo = -1;
        }
        if (i < p->n)
            off += round16(dvl_numel(p->t[i]));
    }
    return DVL_OK;
}

void dvl_params_drop_bf16(dvl_params *p)
{
    free_on(p->device, p->bf16);
    p->bf16 = NULL;
    p->numel_bf16 = 0;
    p->bf16_mode = DVL_BF16_NONE;
    if (p->allocated)
        bind_tensors(p);
}

int dvl_params_alloc(dvl_params *p, dvl_err *err)
{
    if (p->allocated)
        return dvl_errf(err, DVL_EINVAL, "parameter store allocated twice");
    int64_t total = 0, total_grad = 0;
    p->grad_off = malloc((size_t)(p->n ? p->n : 1) * sizeof *p->grad_off);
    if (!p->grad_off)
        return dvl_errf(err, DVL_ENOMEM, "out of memory for parameter offsets");
    for (int i = 0; i < p->n; i++) {
        int64_t n = round16(dvl_numel(p->t[i]));
        total += n;
        p->grad_off[i] = p->t[i]->requires_grad ? total_grad : -1;
        if (p->t[i]->requires_grad)
            total_grad += n;
    }
    p->data = aligned_alloc(PARAM_ALIGN, (size_t)(total ? total : 16) * sizeof(float));
    p->grad = total_grad ? aligned_alloc(PARAM_ALIGN, (size_t)total_grad * sizeof(float)) : NULL;
    if (!p->data || (total_grad && !p->grad))
        return dvl_errf(err, DVL_ENOMEM,
                        "out of memory for %lld parameters (%.3g GiB of weights + %.3g GiB of "
                        "gradients)",
                        (long long)total, (double)total * 4 / (1 << 30),
                        (double)total_grad * 4 / (1 << 30));
    memset(p->data, 0, (size_t)(total ? total : 16) * sizeof(float));
    if (p->grad)
        memset(p->grad, 0, (size_t)total_grad * sizeof(float));
    bind_tensors(p);
    p->numel = total;
    p->numel_grad = total_grad;
    p->allocated = true;
    return DVL_OK;
}

void dvl_params_zero_grad(dvl_params *p)
{
#ifdef DVL_HAVE_CUDA
    if (p->device == DVL_CUDA) {
        if (p->grad)
            dvl_cuda_memset_zero(p->grad, (size_t)p->numel_grad * sizeof(float), NULL);
        return;
    }
#endif
    if (p->grad)
        memset(p->grad, 0, (size_t)p->numel_grad * sizeof(float));
}

dvl_params *dvl_params_to_device(const dvl_params *src, dvl_device device, dvl_err *err)
{
    if (!src->allocated) {
        dvl_errf(err, DVL_EINVAL, "params_to_device: the source store is not allocated");
        return NULL;
    }
    dvl_params *p = dvl_params_new();
    if (!p) {
        dvl_errf(err, DVL_ENOMEM, "params_to_device: out of memory");
        return NULL;
    }
    for (int i = 0; i < src->n; i++) {
        const dvl_tensor *t = src->t[i];
        if (!dvl_params_add(p, t->name, t->ndim, t->shape, t->requires_grad, err)) {
            dvl_params_free(p);
            return NULL;
        }
    }
    if (device == DVL_CPU) {
        if (dvl_params_alloc(p, err) != DVL_OK) {
            dvl_params_free(p);
            return NULL;
        }
        if (src->device == DVL_CPU)
            memcpy(p->data, src->data, (size_t)src->numel * sizeof(float));
        else if (dvl_params_data_to_host(src, p->data, err) != DVL_OK) {
            dvl_params_free(p);
            return NULL;
        }
        if (src->bf16_mode && dvl_params_keep_bf16(p, src->bf16_mode, err)) {
            dvl_params_free(p);
            return NULL;
        }
        return p;
    }
#ifdef DVL_HAVE_CUDA
    /* The same layout as dvl_params_alloc (offsets, 16-float rounding), with
     * device buffers. */
    int64_t total = 0, total_grad = 0;
    p->grad_off = malloc((size_t)(p->n ? p->n : 1) * sizeof *p->grad_off);
    if (!p->grad_off) {
        dvl_errf(err, DVL_ENOMEM, "out of memory for parameter offsets");
        dvl_params_free(p);
        return NULL;
    }
    for (int i = 0; i < p->n; i++) {
        int64_t n = round16(dvl_numel(p->t[i]));
        total += n;
        p->grad_off[i] = p->t[i]->requires_grad ? total_grad : -1;
        if (p->t[i]->requires_grad)
            total_grad += n;
    }
    p->device = DVL_CUDA;
    p->data = dvl_cuda_malloc((size_t)(total ? total : 16) * sizeof(float), err);
    p->grad = total_grad ? dvl_cuda_malloc((size_t)total_grad * sizeof(float), err) : NULL;
    p->norm_scratch = dvl_cuda_malloc(DVL_CUDA_SUMSQ_MAX_PARTS * sizeof(double), err);
    if (!p->data || (total_grad && !p->grad) || !p->norm_scratch) {
        dvl_params_free(p);
        return NULL;
    }
    float *hd = NULL;
    if (src->device != DVL_CPU) {
        /* Not needed by anything yet: device -> device goes through the host. */
        hd = malloc((size_t)(total ? total : 1) * sizeof(float));
        if (!hd || dvl_params_data_to_host(src, hd, err) != DVL_OK) {
            free(hd);
            dvl_params_free(p);
            return NULL;
        }
    }
    if (dvl_cuda_memcpy_h2d(p->data, hd ? hd : src->data, (size_t)total * sizeof(float), err) ||
        (p->grad && dvl_cuda_memset_zero(p->grad, (size_t)total_grad * sizeof(float), err))) {
        free(hd);
        dvl_params_free(p);
        return NULL;
    }
    free(hd);
    bind_tensors(p);
    p->numel = total;
    p->numel_grad = total_grad;
    p->allocated = true;
    if (src->bf16_mode && dvl_params_keep_bf16(p, src->bf16_mode, err)) {
        dvl_params_free(p);
        return NULL;
    }
    return p;
#else
    dvl_errf(err, DVL_EDEVICE, "params_to_device: dvl was built without CUDA");
    dvl_params_free(p);
    return NULL;
#endif
}

int dvl_params_move(dvl_params *p, dvl_device device, dvl_err *err)
{
    if (!p->allocated)
        return dvl_errf(err, DVL_EINVAL, "params_move: the store is not allocated");
    if (device != DVL_CPU && device != DVL_CUDA)
        return dvl_errf(err, DVL_EINVAL, "params_move: unknown device %d", (int)device);
    if (device == p->device)
        return DVL_OK;
#ifdef DVL_HAVE_CUDA
    /* Sizes as dvl_params_alloc made them (multiples of 16 floats, so also
     * of aligned_alloc's 64 bytes). New buffers first: on failure the store
     * is as it was. */
    const size_t nd = (size_t)(p->numel ? p->numel : 16) * sizeof(float);
    const size_t ng = (size_t)p->numel_grad * sizeof(float);
    float *data = NULL, *grad = NULL;
    void *scratch = NULL;
    uint16_t *b16 = NULL; /* the bf16 copies made again from the moved data */
    int64_t n16 = 0;
    int rc = DVL_OK;
    if (device == DVL_CUDA) {
        if (!(data = dvl_cuda_malloc(nd, err)) || (ng && !(grad = dvl_cuda_malloc(ng, err))) ||
            !(scratch = dvl_cuda_malloc(DVL_CUDA_SUMSQ_MAX_PARTS * sizeof(double), err)) ||
            (rc = dvl_cuda_memcpy_h2d(data, p->data, nd, err)) ||
            (ng && (rc = dvl_cuda_memcpy_h2d(grad, p->grad, ng, err))) ||
            (p->bf16_mode && !(b16 = bf16_copies(p, p->bf16_mode, device, data, NULL, &n16, err)) &&
             n16)) {
            dvl_cuda_free(data);
            dvl_cuda_free(grad);
            dvl_cuda_free(scratch);
            return rc ? rc : err ? err->code : DVL_EDEVICE;
        }
        free(p->data);
        free(p->grad);
    } else {
        data = aligned_alloc(PARAM_ALIGN, nd);
        grad = ng ? aligned_alloc(PARAM_ALIGN, ng) : NULL;
        if (!data || (ng && !grad)) {
            free(data);
            free(grad);
            return dvl_errf(err, DVL_ENOMEM, "params_move: out of memory for %lld parameters",
                            (long long)p->numel);
        }
        if ((rc = dvl_cuda_memcpy_d2h(data, p->data, nd, err)) ||
            (ng && (rc = dvl_cuda_memcpy_d2h(grad, p->grad, ng, err))) ||
            (p->bf16_mode && !(b16 = bf16_copies(p, p->bf16_mode, device, data, NULL, &n16, err)) &&
             n16)) {
            free(data);
            free(grad);
            return rc ? rc : err ? err->code : DVL_ENOMEM;
        }
        dvl_cuda_free(p->data);
        dvl_cuda_free(p->grad);
        dvl_cuda_free(p->norm_scratch);
    }
    free_on(p->device, p->bf16);
    p->bf16 = b16;
    p->numel_bf16 = n16;
    p->data = data;
    p->grad = grad;
    p->norm_scratch = scratch;
    p->device = device;
    bind_tensors(p);
    return DVL_OK;
#else
    return dvl_errf(err, DVL_EDEVICE, "params_move: dvl was built without CUDA (nvcc not found "
                                      "at configure time, or -Dcuda=disabled)");
#endif
}

static int to_host(const dvl_params *p, float *host, const float *buf, int64_t n, dvl_err *err)
{
    if (n == 0)
        return DVL_OK;
#ifdef DVL_HAVE_CUDA
    if (p->device == DVL_CUDA)
        return dvl_cuda_memcpy_d2h(host, buf, (size_t)n * sizeof(float), err);
#endif
    memcpy(host, buf, (size_t)n * sizeof(float));
    return DVL_OK;
}

int dvl_params_data_to_host(const dvl_params *p, float *host, dvl_err *err)
{
    return to_host(p, host, p->data, p->numel, err);
}

int dvl_params_grad_to_host(const dvl_params *p, float *host, dvl_err *err)
{
    return to_host(p, host, p->grad, p->numel_grad, err);
}

int dvl_params_data_from_host(dvl_params *p, const float *host, dvl_err *err)
{
    if (p->numel == 0)
        return DVL_OK;
#ifdef DVL_HAVE_CUDA
    if (p->device == DVL_CUDA) {
        int rc = dvl_cuda_memcpy_h2d(p->data, host, (size_t)p->numel * sizeof(float), err);
        return rc ? rc : p->bf16_mode ? dvl_params_keep_bf16(p, p->bf16_mode, err) : DVL_OK;
    }
#endif
    memcpy(p->data, host, (size_t)p->numel * sizeof(float));
    return p->bf16_mode ? dvl_params_keep_bf16(p, p->bf16_mode, err) : DVL_OK;
}
