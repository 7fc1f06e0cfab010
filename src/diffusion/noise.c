#include "diffusion/noise.h"

#include "ops/ops.h"

/* Cell i of n: (v/n + i/n) % 1. In exact arithmetic this is below
 * (i+1)/n <= 1; the wrap only catches a rounding up to 1.0, as torch's %
 * would. */
static double stratify(double v, int64_t i, int64_t n)
{
    double u = v / (double)n + (double)i / (double)n;
    return u >= 1.0 ? u - 1.0 : u;
}

uint64_t dvl_diff_sample_seed(uint64_t step_seed, int64_t g)
{
    /* splitmix64's finaliser over the step seed offset by g golden-ratio
     * increments (dvl_rng_seed then expands the result through splitmix64
     * again). */
    uint64_t z = step_seed + 0x9e3779b97f4a7c15ULL * ((uint64_t)g + 1);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void dvl_diff_sample_u(dvl_rng *rng, int64_t g, int64_t G, int64_t nb, bool antithetic,
                       double *u)
{
    for (int64_t b = 0; b < nb; b++) {
        double v = dvl_rng_uniform_f64(rng);
        u[b] = antithetic ? stratify(v, g * nb + b, G * nb) : v;
    }
}

void dvl_diff_sample_t(dvl_rng *rng, int64_t g, int64_t G, int64_t nb, bool antithetic,
                       double eps_min, double eps_max, float *t)
{
    for (int64_t b = 0; b < nb; b++) {
        double v = dvl_rng_uniform_f64(rng);
        double u = antithetic ? stratify(v, g * nb + b, G * nb) : v;
        t[b] = (float)(eps_min + (eps_max - eps_min) * u);
    }
}

int64_t dvl_diff_mask(dvl_rng *rng, const int32_t *x0, const int32_t *labels, int64_t len,
                      const float *t, int block_size, int32_t mask_id, int32_t *xt,
                      uint8_t *masked)
{
    int64_t count = 0;
    for (int64_t i = 0; i < len; i++) {
        bool m = false;
        /* Only supervised tokens are noised: the prompt and image stay clean
         * context (DiffusionVL: move_indices &= labels != IGNORE_INDEX). */
        if (labels[i] != DVL_IGNORE_INDEX)
            m = dvl_rng_uniform(rng) <= t[i / block_size];
        masked[i] = m;
        xt[i] = m ? mask_id : x0[i];
        count += m;
    }
    return count;
}
