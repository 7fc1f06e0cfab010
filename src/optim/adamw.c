#include "optim/adamw.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ops/cpu/par.h"

dvl_adamw *dvl_adamw_new(dvl_params *p, float beta1, float beta2, float eps, float weight_decay,
                         dvl_err *err)
{
    if (!p->allocated) {
        dvl_errf(err, DVL_EINVAL, "adamw: parameter store not allocated");
        return NULL;
    }
    dvl_adamw *o = calloc(1, sizeof *o);
    size_t n = (size_t)(p->numel_grad ? p->numel_grad : 1);
    if (o) {
        o->m = calloc(n, sizeof(float));
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
    for (int i = 0; i < p->n; i++) {
        o->lr_mult[i] = 1.0f;
        o->decay[i] = p->t[i]->ndim >= 2;
    }
    return o;
}

void dvl_adamw_free(dvl_adamw *o)
{
    if (!o)
        return;
    free(o->m);
    free(o->v);
    free(o->lr_mult);
    free(o->decay);
    free(o);
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

void dvl_adamw_step(dvl_adamw *o, float lr)
{
    dvl_params *p = o->p;
    o->step++;
    const double bc1 = 1.0 - pow(o->beta1, (double)o->step);
    const double bc2 = 1.0 - pow(o->beta2, (double)o->step);
    const float b1 = o->beta1, b2 = o->beta2, eps = o->eps;
    const float sqrt_bc2 = (float)sqrt(bc2);
    for (int i = 0; i < p->n; i++) {
        int64_t off = p->grad_off[i];
        if (off < 0)
            continue;
        dvl_tensor *t = p->t[i];
        const float plr = lr * o->lr_mult[i];
        const float decay = o->decay[i] ? 1.0f - plr * o->weight_decay : 1.0f;
        const float step_size = (float)(plr / bc1);
        float *w = dvl_f32(t), *g = p->grad + off, *m = o->m + off, *v = o->v + off;
        int64_t n = dvl_numel(t);
#pragma omp parallel for schedule(static) if (dvl_par(n))
        for (int64_t j = 0; j < n; j++) {
            w[j] *= decay;
            m[j] = b1 * m[j] + (1.0f - b1) * g[j];
            v[j] = b2 * v[j] + (1.0f - b2) * g[j] * g[j];
            w[j] -= step_size * m[j] / (sqrtf(v[j]) / sqrt_bc2 + eps);
        }
    }
}

/* Fixed 4096-element chunks summed in order: the result does not depend on
 * how many threads computed the chunk sums. */
#define NORM_CHUNK 4096

double dvl_grad_norm(const dvl_params *p)
{
    int64_t n = p->numel_grad, nc = (n + NORM_CHUNK - 1) / NORM_CHUNK;
    double total = 0;
#pragma omp parallel for ordered schedule(static) if (dvl_par(n))
    for (int64_t c = 0; c < nc; c++) {
        const float *g = p->grad + c * NORM_CHUNK;
        int64_t len = (c == nc - 1) ? n - c * NORM_CHUNK : NORM_CHUNK;
        double s = 0;
        for (int64_t j = 0; j < len; j++)
            s += (double)g[j] * g[j];
#pragma omp ordered
        total += s;
    }
    return sqrt(total);
}

void dvl_grad_scale(dvl_params *p, float s)
{
    int64_t n = p->numel_grad;
#pragma omp parallel for schedule(static) if (dvl_par(n))
    for (int64_t j = 0; j < n; j++)
        p->grad[j] *= s;
}

bool dvl_grad_nonfinite(const dvl_params *p)
{
    int bad = 0;
    int64_t n = p->numel_grad;
#pragma omp parallel for reduction(| : bad) schedule(static) if (dvl_par(n))
    for (int64_t j = 0; j < n; j++)
        bad |= !isfinite(p->grad[j]);
    return bad != 0;
}
