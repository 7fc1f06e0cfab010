/* Seeded parameter initialisation (init.h). */
#include <math.h>

#include "core/rng.h"
#include "models/init.h"

#define PIECE ((int64_t)1 << 20)

/* FNV-1a: the parameter's name folded into its stream's seed. */
static uint64_t name_hash(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (; s && *s; s++)
        h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return h;
}

static void fill(dvl_tensor *t, uint64_t seed, float a, int normal)
{
    float *x = dvl_f32(t);
    int64_t n = dvl_numel(t), pieces = (n + PIECE - 1) / PIECE;
    uint64_t base = seed ^ name_hash(t->name);
#pragma omp parallel for schedule(static)
    for (int64_t k = 0; k < pieces; k++) {
        dvl_rng r;
        dvl_rng_seed(&r, base + 0x9e3779b97f4a7c15ull * (uint64_t)k);
        int64_t i0 = k * PIECE, m = n - i0 < PIECE ? n - i0 : PIECE;
        if (normal)
            dvl_rng_fill_normal(&r, x + i0, m, a);
        else
            dvl_rng_fill_uniform(&r, x + i0, m, -a, a);
    }
}

void dvl_init_normal(dvl_tensor *t, uint64_t seed, float std) { fill(t, seed, std, 1); }

void dvl_init_uniform(dvl_tensor *t, uint64_t seed, float bound) { fill(t, seed, bound, 0); }

void dvl_init_const(dvl_tensor *t, float v)
{
    float *x = dvl_f32(t);
    int64_t n = dvl_numel(t);
    for (int64_t i = 0; i < n; i++)
        x[i] = v;
}

void dvl_init_linear_torch(dvl_tensor *w, dvl_tensor *b, uint64_t seed)
{
    /* kaiming_uniform_(a=sqrt(5)): gain sqrt(2 / (1 + 5)), bound
     * gain * sqrt(3 / fan_in) = 1 / sqrt(fan_in); the bias uses the same. */
    float bound = 1.0f / sqrtf((float)w->shape[1]);
    dvl_init_uniform(w, seed, bound);
    if (b)
        dvl_init_uniform(b, seed, bound);
}
