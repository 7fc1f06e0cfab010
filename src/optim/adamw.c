#include "optim/adamw.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ops/cpu/par.h"
#ifdef DVL_HAVE_CUDA
#include "ops/cuda/cuda.h"
#endif

/* A store made by dvl_params_to_device(.., DVL_CUDA, ..) keeps data and grad
 * in device memory: the moments live there too and every loop below runs as
 * a CUDA kernel (ops/cuda/kernels.cu) with the same maths. */
static bool on_device(const dvl_params *p) { return p->device != DVL_CPU; }

static void moments_free(float *x, bool dev)
{
#ifdef DVL_HAVE_CUDA
    if (dev) {
        dvl_cuda_free(x);
        return;
    }
#endif
    (void)dev;
    free(x);
}

#ifdef DVL_HAVE_CUDA
static float *dev_zeros(size_t n, dvl_err *err)
{
    float *x = dvl_cuda_malloc(n * sizeof(float), err);
    if (x && dvl_cuda_memset_zero(x, n * sizeof(float), err)) {
        dvl_cuda_free(x);
        return NULL;
    }
    return x;
}
#endif

dvl_adamw *dvl_adamw_new_shard(dvl_params *p, int64_t lo, int64_t hi, float beta1, float beta2,
                               float eps, float weight_decay, dvl_err *err)
{
    if (!p->allocated) {
        dvl_errf(err, DVL_EINVAL, "adamw: parameter store not allocated");
        return NULL;
    }
    if (lo < 0 || lo > hi || hi > p->numel_grad) {
        dvl_errf(err, DVL_EINVAL, "adamw: shard [%lld, %lld) outside the %lld gradient elements",
                 (long long)lo, (long long)hi, (long long)p->numel_grad);
        return NULL;
    }
    dvl_adamw *o = calloc(1, sizeof *o);
    size_t n = (size_t)(hi > lo ? hi - lo : 1);
    if (o && on_device(p)) {
#ifdef DVL_HAVE_CUDA
        o->p = p; /* so dvl_adamw_free knows where m and v live */
        o->m = dev_zeros(n, err);
        o->v = o->m ? dev_zeros(n, err) : NULL;
        if (!o->m || !o->v) {
            dvl_adamw_free(o);
            return NULL; /* err names the failing cudaMalloc */
        }
#else
        free(o);
        dvl_errf(err, DVL_EINVAL, "adamw: device parameter store in a build without CUDA");
        return NULL;
#endif
    }
    if (o) {
        if (!o->m)
            o->m = calloc(n, sizeof(float));
        if (!o->v)
            o->v = calloc(n, sizeof(float));
        o->lr_mult = malloc((size_t)(p->n ? p->n : 1) * sizeof(float));
        o->decay = malloc((size_t)(p->n ? p->n : 1) * sizeof(bool));
    }
    if (!o || !o->m || !o->v || !o->lr_mult || !o->decay) {
        dvl_adamw_free(o);
        dvl_errf(err, DVL_ENOMEM, "adamw: out of memory for %lld moments", (long long)n);
        return NULL;
    }
    o->p = p;
    o->beta1 = beta1;
    o->beta2 = beta2;
    o->eps = eps;
    o->weight_decay = weight_decay;
    o->lo = lo;
    o->hi = hi;
    for (int i = 0; i < p->n; i++) {
        o->lr_mult[i] = 1.0f;
        o->decay[i] = p->t[i]->ndim >= 2;
    }
    return o;
}

dvl_adamw *dvl_adamw_new(dvl_params *p, float beta1, float beta2, float eps, float weight_decay,
                         dvl_err *err)
{
    if (!p->allocated) {
        dvl_errf(err, DVL_EINVAL, "adamw: parameter store not allocated");
        return NULL;
    }
    return dvl_adamw_new_shard(p, 0, p->numel_grad, beta1, beta2, eps, weight_decay, err);
}

void dvl_adamw_shard(int64_t n, int world, int rank, int64_t *lo, int64_t *hi)
{
    if (world < 1)
        world = 1;
    int64_t s = (n + world - 1) / world;
    s = (s + 15) / 16 * 16;
    int64_t a = (int64_t)rank * s;
    *lo = a < n ? a : n;
    *hi = a + s < n ? a + s : n;
}

size_t dvl_adamw_state_bytes(const dvl_adamw *o)
{
    return 2 * (size_t)(o->hi - o->lo) * sizeof(float);
}

#ifdef DVL_HAVE_CUDA
/* What the one-launch step's tables were made from, and the tables. */
struct adamw_tables {
    float *lr_mult; /* p->n */
    bool *decay;
    const float *data, *grad, *m, *v;
    dvl_cuda_adamw_seg *segs;       /* device */
    dvl_cuda_adamw_piece *pieces;   /* device */
    int64_t npieces;
};

static void tables_free(struct adamw_tables *t)
{
    if (!t)
        return;
    free(t->lr_mult);
    free(t->decay);
    dvl_cuda_free(t->segs);
    dvl_cuda_free(t->pieces);
    free(t);
}
#endif

void dvl_adamw_free(dvl_adamw *o)
{
    if (!o)
        return;
#ifdef DVL_HAVE_CUDA
    tables_free(o->tables);
#endif
    const bool dev = o->p && on_device(o->p);
    moments_free(o->m, dev);
    moments_free(o->v, dev);
    free(o->lr_mult);
    free(o->decay);
    free(o);
}

int dvl_adamw_copy_state(dvl_adamw *dst, const dvl_adamw *src, dvl_err *err)
{
    if (dst->p->numel_grad != src->p->numel_grad || dst->p->n != src->p->n)
        return dvl_errf(err, DVL_EINVAL,
                        "adamw: copying moments between stores of %lld and %lld trainable "
                        "parameters",
                        (long long)src->p->numel_grad, (long long)dst->p->numel_grad);
    if (dst->lo < src->lo || dst->hi > src->hi)
        return dvl_errf(err, DVL_EINVAL,
                        "adamw: copying the moments of gradient elements [%lld, %lld) from an "
                        "optimizer holding [%lld, %lld)",
                        (long long)dst->lo, (long long)dst->hi, (long long)src->lo,
                        (long long)src->hi);
    size_t bytes = (size_t)(dst->hi - dst->lo) * sizeof(float);
    const float *sm = src->m + (dst->lo - src->lo), *sv = src->v + (dst->lo - src->lo);
    const bool dd = on_device(dst->p), sd = on_device(src->p);
    int rc = DVL_OK;
    if ((rc = dvl_memcpy_any(dst->m, dd, sm, sd, bytes, err)) ||
        (rc = dvl_memcpy_any(dst->v, dd, sv, sd, bytes, err)))
        return rc;
    dst->step = src->step;
    return rc;
}

int dvl_adamw_set_group(dvl_adamw *o, const char *prefix, float lr_mult, bool decay)
{
    int k = 0;
    size_t n = strlen(prefix);
    for (int i = 0; i < o->p->n; i++)
        if (strncmp(o->p->t[i]->name, prefix, n) == 0) {
            o->lr_mult[i] = lr_mult;
            o->decay[i] = decay;
            k++;
        }
    return k;
}

/* The part [*a, *b) of trainable parameter i's gradient slot that lies in
 * the optimizer's range; false when none does. Unsharded, the whole
 * parameter. */
static bool in_range(const dvl_adamw *o, int i, int64_t *a, int64_t *b)
{
    const int64_t off = o->p->grad_off[i];
    if (off < 0)
        return false;
    const int64_t end = off + dvl_numel(o->p->t[i]);
    *a = off > o->lo ? off : o->lo;
    *b = end < o->hi ? end : o->hi;
    return *a < *b;
}

#ifdef DVL_HAVE_CUDA
static bool tables_current(const dvl_adamw *o)
{
    const struct adamw_tables *t = o->tables;
    const dvl_params *p = o->p;
    return t && t->data == p->data && t->grad == p->grad && t->m == o->m && t->v == o->v &&
           memcmp(t->lr_mult, o->lr_mult, (size_t)p->n * sizeof(float)) == 0 &&
           memcmp(t->decay, o->decay, (size_t)p->n * sizeof(bool)) == 0;
}

/* The segments (one per parameter part in range, as the per-parameter loop
 * below cuts them) and pieces of dvl_cuda_adamw_multi, copied to the device
 * (a synchronous copy: at the first step, and after a group changes). NULL
 * when memory is short: the step then launches per parameter. */
static struct adamw_tables *tables_make(const dvl_adamw *o)
{
    const dvl_params *p = o->p;
    struct adamw_tables *t = calloc(1, sizeof *t);
    dvl_cuda_adamw_seg *segs = malloc((size_t)(p->n ? p->n : 1) * sizeof *segs);
    dvl_cuda_adamw_piece *pieces = NULL;
    int64_t nseg = 0, npieces = 0;
    dvl_err e = {0, ""};
    if (!t || !segs)
        goto fail;
    for (int i = 0; i < p->n; i++) {
        int64_t a, b;
        if (!in_range(o, i, &a, &b))
            continue;
        const int64_t off = p->grad_off[i];
        segs[nseg++] = (dvl_cuda_adamw_seg){
            .p = dvl_f32(p->t[i]) + (a - off), .m = o->m + (a - o->lo), .v = o->v + (a - o->lo),
            .g = p->grad + a, .n = b - a, .lr_mult = o->lr_mult[i],
            .wd = o->decay[i] ? o->weight_decay : 0.0f};
        npieces += (b - a + DVL_CUDA_ADAMW_PIECE - 1) / DVL_CUDA_ADAMW_PIECE;
    }
    if (npieces > INT32_MAX || !(pieces = malloc((size_t)(npieces ? npieces : 1) * sizeof *pieces)))
        goto fail;
    for (int64_t s = 0, k = 0; s < nseg; s++)
        for (int64_t start = 0; start < segs[s].n; start += DVL_CUDA_ADAMW_PIECE)
            pieces[k++] = (dvl_cuda_adamw_piece){s, start};
    t->lr_mult = malloc((size_t)(p->n ? p->n : 1) * sizeof(float));
    t->decay = malloc((size_t)(p->n ? p->n : 1) * sizeof(bool));
    if (!t->lr_mult || !t->decay ||
        !(t->segs = dvl_cuda_malloc((size_t)(nseg ? nseg : 1) * sizeof *segs, &e)) ||
        !(t->pieces = dvl_cuda_malloc((size_t)(npieces ? npieces : 1) * sizeof *pieces, &e)) ||
        dvl_cuda_memcpy_h2d(t->segs, segs, (size_t)nseg * sizeof *segs, &e) ||
        dvl_cuda_memcpy_h2d(t->pieces, pieces, (size_t)npieces * sizeof *pieces, &e))
        goto fail;
    memcpy(t->lr_mult, o->lr_mult, (size_t)p->n * sizeof(float));
    memcpy(t->decay, o->decay, (size_t)p->n * sizeof(bool));
    t->data = p->data, t->grad = p->grad, t->m = o->m, t->v = o->v;
    t->npieces = npieces;
    free(segs);
    free(pieces);
    return t;
fail:
    tables_free(t);
    free(segs);
    free(pieces);
    return NULL;
}
#endif

void dvl_adamw_step(dvl_adamw *o, float lr, float gscale)
{
    dvl_params *p = o->p;
    o->step++;
    /* Per parameter (its own lr multiplier and decay switch), over the
     * elements [a, b) of its slot in the range: the whole parameter unless
     * a ZeRO-1 shard boundary cuts it. A parameter's data and gradient have
     * the same layout, so element j of the slot is element j - off of the
     * tensor (data offsets differ from gradient offsets: frozen parameters
     * sit between trainable ones in p->data only). */
#ifdef DVL_HAVE_CUDA
    if (on_device(p)) {
        /* One launch for every parameter (kernels.cu: adamw_multi_k), the
         * per-parameter launches below only if its tables cannot be made.
         * wd 0 for the undecayed parameters, the kernels asynchronous on the
         * default stream like the ops that produced p->grad. */
        if (!tables_current(o)) {
            tables_free(o->tables);
            o->tables = tables_make(o);
        }
        if (o->tables) {
            dvl_cuda_adamw_multi(o->tables->segs, o->tables->pieces, o->tables->npieces, gscale,
                                 lr, o->beta1, o->beta2, o->eps, o->step);
            return;
        }
        for (int i = 0; i < p->n; i++) {
            int64_t a, b;
            if (!in_range(o, i, &a, &b))
                continue;
            const int64_t off = p->grad_off[i];
            dvl_cuda_adamw(dvl_f32(p->t[i]) + (a - off), p->grad + a, gscale, o->m + (a - o->lo),
                           o->v + (a - o->lo), b - a, lr * o->lr_mult[i], o->beta1, o->beta2,
                           o->eps, o->decay[i] ? o->weight_decay : 0.0f, o->step);
        }
        return;
    }
#endif
    const double bc1 = 1.0 - pow(o->beta1, (double)o->step);
    const double bc2 = 1.0 - pow(o->beta2, (double)o->step);
    const float b1 = o->beta1, b2 = o->beta2, eps = o->eps;
    const float sqrt_bc2 = (float)sqrt(bc2);
    for (int i = 0; i < p->n; i++) {
        int64_t a, b;
        if (!in_range(o, i, &a, &b))
            continue;
        const int64_t off = p->grad_off[i];
        const float plr = lr * o->lr_mult[i];
        const float decay = o->decay[i] ? 1.0f - plr * o->weight_decay : 1.0f;
        const float step_size = (float)(plr / bc1);
        float *w = dvl_f32(p->t[i]) + (a - off), *g = p->grad + a;
        float *m = o->m + (a - o->lo), *v = o->v + (a - o->lo);
        int64_t n = b - a;
#pragma omp parallel for schedule(static) if (dvl_par(n))
        for (int64_t j = 0; j < n; j++) {
            const float gj = g[j] * gscale;
            w[j] *= decay;
            m[j] = b1 * m[j] + (1.0f - b1) * gj;
            v[j] = b2 * v[j] + (1.0f - b2) * gj * gj;
            w[j] -= step_size * m[j] / (sqrtf(v[j]) / sqrt_bc2 + eps);
        }
    }
}

/* Fixed 4096-element chunks summed in order: the result does not depend on
 * how many threads computed the chunk sums. */
#define NORM_CHUNK 4096

#ifdef DVL_HAVE_CUDA
/* Sum of squares of the device gradient elements [lo, hi) in double:
 * per-block partial sums on the GPU (a split fixed by hi - lo) into the
 * store's preallocated scratch, added in order here, so the result does not
 * depend on scheduling either. Device errors give NaN (a caller that clips
 * or checks finiteness then skips the step rather than using junk); so does
 * a device store without scratch, which dvl_params_to_device and
 * dvl_params_move never make. */
static double dev_sumsq(const dvl_params *p, int64_t lo, int64_t hi)
{
    dvl_err err = {0};
    int64_t parts = dvl_cuda_sumsq_parts(hi - lo);
    double host[DVL_CUDA_SUMSQ_MAX_PARTS];
    double *part = p->norm_scratch;
    if (!part)
        return NAN;
    dvl_cuda_sumsq_partial(part, p->grad + lo, hi - lo);
    if (dvl_cuda_memcpy_d2h(host, part, (size_t)parts * sizeof(double), &err))
        return NAN;
    double total = 0;
    for (int64_t b = 0; b < parts; b++)
        total += host[b];
    return total;
}
#endif

double dvl_grad_sumsq_range(const dvl_params *p, int64_t lo, int64_t hi)
{
    if (hi <= lo)
        return 0.0;
#ifdef DVL_HAVE_CUDA
    if (on_device(p))
        return dev_sumsq(p, lo, hi);
#endif
    int64_t n = hi - lo, nc = (n + NORM_CHUNK - 1) / NORM_CHUNK;
    double total = 0;
#pragma omp parallel for ordered schedule(static) if (dvl_par(n))
    for (int64_t c = 0; c < nc; c++) {
        const float *g = p->grad + lo + c * NORM_CHUNK;
        int64_t len = (c == nc - 1) ? n - c * NORM_CHUNK : NORM_CHUNK;
        double s = 0;
        for (int64_t j = 0; j < len; j++)
            s += (double)g[j] * g[j];
#pragma omp ordered
        total += s;
    }
    return total;
}

double dvl_grad_norm(const dvl_params *p)
{
    return sqrt(dvl_grad_sumsq_range(p, 0, p->numel_grad));
}

void dvl_grad_scale_range(dvl_params *p, int64_t lo, int64_t hi, float s)
{
    if (hi <= lo)
        return;
    int64_t n = hi - lo;
    float *g = p->grad + lo;
#ifdef DVL_HAVE_CUDA
    if (on_device(p)) {
        dvl_cuda_scale_fwd(g, g, s, n); /* elementwise, in place */
        return;
    }
#endif
#pragma omp parallel for schedule(static) if (dvl_par(n))
    for (int64_t j = 0; j < n; j++)
        g[j] *= s;
}

void dvl_grad_scale(dvl_params *p, float s) { dvl_grad_scale_range(p, 0, p->numel_grad, s); }

bool dvl_grad_nonfinite_range(const dvl_params *p, int64_t lo, int64_t hi)
{
    if (hi <= lo)
        return false;
#ifdef DVL_HAVE_CUDA
    /* A double sum of float squares overflows only through an Inf or NaN
     * element (at most ~1.2e77 per term), so non-finite sum <=> bad grad. */
    if (on_device(p))
        return !isfinite(dev_sumsq(p, lo, hi));
#endif
    int bad = 0;
    int64_t n = hi - lo;
    const float *g = p->grad + lo;
#pragma omp parallel for reduction(| : bad) schedule(static) if (dvl_par(n))
    for (int64_t j = 0; j < n; j++)
        bad |= !isfinite(g[j]);
    return bad != 0;
}

bool dvl_grad_nonfinite(const dvl_params *p)
{
    return dvl_grad_nonfinite_range(p, 0, p->numel_grad);
}
