#include "core/rng.h"

#include <math.h>

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void dvl_rng_seed(dvl_rng *r, uint64_t seed)
{
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&seed);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t dvl_rng_u64(dvl_rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

float dvl_rng_uniform(dvl_rng *r) { return (float)(dvl_rng_u64(r) >> 40) * 0x1.0p-24f; }

double dvl_rng_uniform_f64(dvl_rng *r) { return (double)(dvl_rng_u64(r) >> 11) * 0x1.0p-53; }

float dvl_rng_normal(dvl_rng *r)
{
    /* 1 - u keeps the log argument in (0, 1]. */
    double u1 = 1.0 - dvl_rng_uniform_f64(r);
    double u2 = dvl_rng_uniform_f64(r);
    return (float)(sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2));
}

void dvl_rng_fill_normal(dvl_rng *r, float *x, int64_t n, float std)
{
    for (int64_t i = 0; i < n; i++)
        x[i] = std * dvl_rng_normal(r);
}

void dvl_rng_fill_uniform(dvl_rng *r, float *x, int64_t n, float lo, float hi)
{
    for (int64_t i = 0; i < n; i++)
        x[i] = lo + (hi - lo) * dvl_rng_uniform(r);
}
