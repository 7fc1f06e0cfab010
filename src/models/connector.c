/* The mlp2x_gelu connector (connector.h). */
#include <stdio.h>
#include <string.h>

#include "models/connector.h"
#include "models/init.h"

int dvl_connector_declare(dvl_connector *m, int64_t in, int64_t out, dvl_params *p,
                          const char *prefix, dvl_err *err)
{
    memset(m, 0, sizeof *m);
    m->in = in;
    m->out = out;
    struct {
        dvl_tensor **t;
        const char *name;
        int nd;
        int64_t a, b;
    } tab[] = {{&m->w0, "0.weight", 2, out, in},
               {&m->b0, "0.bias", 1, out, 0},
               {&m->w2, "2.weight", 2, out, out},
               {&m->b2, "2.bias", 1, out, 0}};
    char n[512];
    for (size_t k = 0; k < sizeof tab / sizeof *tab; k++) {
        snprintf(n, sizeof n, "%s%s", prefix, tab[k].name);
        int64_t s[2] = {tab[k].a, tab[k].b};
        *tab[k].t = dvl_params_add(p, n, tab[k].nd, s, true, err);
        if (!*tab[k].t)
            return err ? err->code : DVL_EINVAL;
    }
    return DVL_OK;
}

void dvl_connector_init_random(dvl_connector *m, uint64_t seed)
{
    dvl_init_linear_torch(m->w0, m->b0, seed);
    dvl_init_linear_torch(m->w2, m->b2, seed);
}

dvl_tensor *dvl_connector_forward(dvl_ctx *ctx, const dvl_connector *m, dvl_tensor *x)
{
    dvl_tensor *h = dvl_gelu(ctx, dvl_linear(ctx, x, m->w0, m->b0), DVL_GELU_ERF);
    return dvl_linear(ctx, h, m->w2, m->b2);
}
