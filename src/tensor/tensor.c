/* Tensor construction, shapes and views. */
#include <stdio.h>
#include <string.h>

#include "tensor/tensor.h"

int64_t dvl_numel(const dvl_tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= t->shape[i];
    return n;
}

int64_t dvl_cols(const dvl_tensor *t) { return t->ndim ? t->shape[t->ndim - 1] : 1; }

int64_t dvl_rows(const dvl_tensor *t) { return t->ndim ? dvl_numel(t) / t->shape[t->ndim - 1] : 1; }

const char *dvl_shape_str(const dvl_tensor *t, char *buf, size_t n)
{
    size_t k = 0;
    k += (size_t)snprintf(buf + k, n - k, "[");
    for (int i = 0; i < t->ndim && k < n; i++)
        k += (size_t)snprintf(buf + k, n - k, i ? ", %lld" : "%lld", (long long)t->shape[i]);
    if (k < n)
        snprintf(buf + k, n - k, "]");
    return buf;
}

const char *dvl_tname(const dvl_tensor *t) { return t && t->name ? t->name : "(unnamed)"; }

static bool shape_ok(dvl_ctx *ctx, int ndim, const int64_t *shape)
{
    if (ndim < 0 || ndim > DVL_MAX_DIMS) {
        dvl_fail(ctx, "tensor with %d dimensions (at most %d)", ndim, DVL_MAX_DIMS);
        return false;
    }
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 0) {
            dvl_fail(ctx, "tensor dimension %d is negative (%lld)", i, (long long)shape[i]);
            return false;
        }
    return true;
}

static dvl_tensor *header(dvl_ctx *ctx, dvl_dtype dtype, int ndim, const int64_t *shape)
{
    if (!shape_ok(ctx, ndim, shape))
        return NULL;
    dvl_tensor *t = dvl_calloc(ctx, sizeof *t);
    if (!t)
        return NULL;
    t->dtype = dtype;
    t->device = dvl_ctx_device(ctx);
    t->ndim = ndim;
    if (ndim)
        memcpy(t->shape, shape, (size_t)ndim * sizeof *shape);
    return t;
}

dvl_tensor *dvl_new(dvl_ctx *ctx, dvl_dtype dtype, int ndim, const int64_t *shape)
{
    dvl_tensor *t = header(ctx, dtype, ndim, shape);
    if (!t)
        return NULL;
    /* Data on the context's device (the host arena on a CPU context). */
    t->data = dvl_alloc_dev(ctx, (size_t)dvl_numel(t) * dvl_dtype_size(dtype));
    return t->data ? t : NULL;
}

dvl_tensor *dvl_zeros(dvl_ctx *ctx, dvl_dtype dtype, int ndim, const int64_t *shape)
{
    if (dvl_ctx_device(ctx) != DVL_CPU) {
        dvl_tensor *t = header(ctx, dtype, ndim, shape);
        if (!t)
            return NULL;
        t->data = dvl_calloc_dev(ctx, (size_t)dvl_numel(t) * dvl_dtype_size(dtype));
        return t->data ? t : NULL;
    }
    dvl_tensor *t = dvl_new(ctx, dtype, ndim, shape);
    if (t)
        memset(t->data, 0, (size_t)dvl_numel(t) * dvl_dtype_size(dtype));
    return t;
}

dvl_tensor *dvl_new2(dvl_ctx *ctx, int64_t rows, int64_t cols)
{
    int64_t s[2] = {rows, cols};
    return dvl_new(ctx, DVL_F32, 2, s);
}

dvl_tensor *dvl_wrap(dvl_ctx *ctx, dvl_dtype dtype, int ndim, const int64_t *shape, void *data)
{
    dvl_tensor *t = header(ctx, dtype, ndim, shape);
    if (t)
        t->data = data;
    return t;
}

dvl_tensor *dvl_view(dvl_ctx *ctx, dvl_tensor *t, int ndim, const int64_t *shape, int64_t offset)
{
    if (!t)
        return NULL;
    dvl_tensor *v = header(ctx, t->dtype, ndim, shape);
    if (!v)
        return NULL;
    char a[64], b[64];
    if (offset < 0 || offset + dvl_numel(v) > dvl_numel(t))
        return dvl_fail(ctx, "view %s at offset %lld does not fit in %s of shape %s",
                        dvl_shape_str(v, a, sizeof a), (long long)offset, dvl_tname(t),
                        dvl_shape_str(t, b, sizeof b));
    dvl_tensor *base = t->base ? t->base : t;
    v->device = t->device;
    v->base = base;
    v->offset = t->offset + offset;
    v->data = (char *)base->data + (size_t)v->offset * dvl_dtype_size(t->dtype);
    v->requires_grad = t->requires_grad;
    v->is_param = t->is_param;
    v->name = t->name;
    if (base->grad)
        v->grad = base->grad + v->offset;
    return v;
}

dvl_tensor *dvl_reshape(dvl_ctx *ctx, dvl_tensor *t, int ndim, const int64_t *shape)
{
    if (!t)
        return NULL;
    int64_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= shape[i];
    if (n != dvl_numel(t)) {
        char s[64];
        return dvl_fail(ctx, "reshape of %s %s to %lld elements", dvl_tname(t),
                        dvl_shape_str(t, s, sizeof s), (long long)n);
    }
    return dvl_view(ctx, t, ndim, shape, 0);
}

/* ------------------------------------------------------- host copies */

static size_t tensor_bytes(const dvl_tensor *t)
{
    return (size_t)dvl_numel(t) * dvl_dtype_size(t->dtype);
}

/* Copies go by the tensor's device (a CPU tensor in a CUDA context is plain
 * host memory, e.g. dvl_wrap'd caller data). */
int dvl_tensor_upload(dvl_ctx *ctx, dvl_tensor *t, const void *host)
{
    if (t->device == DVL_CPU) {
        if (tensor_bytes(t))
            memcpy(t->data, host, tensor_bytes(t));
        return DVL_OK;
    }
    return dvl_ctx_memcpy_h2d(ctx, t->data, host, tensor_bytes(t));
}

int dvl_tensor_to_host(dvl_ctx *ctx, const dvl_tensor *t, void *host)
{
    if (t->device == DVL_CPU) {
        if (tensor_bytes(t))
            memcpy(host, t->data, tensor_bytes(t));
        return DVL_OK;
    }
    return dvl_ctx_memcpy_d2h(ctx, host, t->data, tensor_bytes(t));
}

int dvl_tensor_grad_to_host(dvl_ctx *ctx, const dvl_tensor *t, float *host)
{
    size_t bytes = (size_t)dvl_numel(t) * sizeof(float);
    const dvl_tensor *b = t->base ? t->base : t;
    const float *g = t->grad ? t->grad : b->grad ? b->grad + t->offset : NULL;
    if (!g) {
        memset(host, 0, bytes);
        return DVL_OK;
    }
    if (t->device == DVL_CPU) {
        memcpy(host, g, bytes);
        return DVL_OK;
    }
    return dvl_ctx_memcpy_d2h(ctx, host, g, bytes);
}

dvl_tensor *dvl_from_host(dvl_ctx *ctx, dvl_dtype dtype, int ndim, const int64_t *shape,
                          const void *host)
{
    dvl_tensor *t = dvl_new(ctx, dtype, ndim, shape);
    if (!t || dvl_tensor_upload(ctx, t, host) != DVL_OK)
        return NULL;
    return t;
}
