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

void dvl_diff_sample_u(dvl_rng *rng, int64_t n, bool antithetic, double *u)
{
    for (int64_t i = 0; i < n; i++) {
        double v = dvl_rng_uniform_f64(rng);
        u[i] = antithetic ? stratify(v, i, n) : v;
    }
}

void dvl_diff_sample_t(dvl_rng *rng, int64_t n, bool antithetic, double eps_min, double eps_max,
                       float *t)
{
    for (int64_t i = 0; i < n; i++) {
        double v = dvl_rng_uniform_f64(rng);
        double u = antithetic ? stratify(v, i, n) : v;
        t[i] = (float)(eps_min + (eps_max - eps_min) * u);
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
