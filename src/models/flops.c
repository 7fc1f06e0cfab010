/* Model FLOPs (flops.h): each product's multiply-adds times 2 forward, plus
 * 2 for each gradient it produces backward. */
#include "models/flops.h"

/* `rows` rows of `macs` multiply-adds each: forward, then dx, then dW. */
static double product(double rows, double macs, bool dx, bool dw)
{
    return 2.0 * rows * macs * (1.0 + dx + dw);
}

/* `pairs` allowed pairs over heads x head_dim = hd: QK^T and PV forward;
 * backward dS = dO V^T, dV = P^T dO, dQ = dS K, dK = dS^T Q. */
static double attention(double pairs, double hd, bool back)
{
    return 4.0 * hd * pairs * (back ? 3.0 : 1.0);
}

double dvl_model_flops(const dvl_model *m, const dvl_flops_work *w)
{
    const bool vlm = m->cfg.arch == DVL_ARCH_VLM;
    if (!vlm && m->cfg.arch == DVL_ARCH_SIGLIP)
        return 0;
    double f = 0;
    bool up = false; /* something before this point needs a gradient */
    if (vlm && w->images > 0) {
        const dvl_siglip *s = &m->vlm.vision;
        const dvl_siglip_config *v = &s->cfg;
        const double P = (double)dvl_siglip_patches(v), rows = (double)w->images * P;
        const double d = (double)v->hidden, I = (double)v->intermediate;
        const bool t = dvl_siglip_trainable(s);
        /* The patch embedding is a product over C P^2 pixels per patch. */
        f += product(rows, (double)(v->channels * v->patch_size * v->patch_size) * d, false, t);
        for (int64_t l = 0; l < s->n_layers; l++)
            f += product(rows, 4 * d * d, t, t) + attention((double)w->images * P * P, d, t) +
                 product(rows, 2 * d * I, t, t);
        const dvl_connector *c = &m->vlm.connector;
        const bool ct = c->w0->requires_grad;
        f += product(rows, (double)(c->in * c->out + c->out * c->out), t, ct);
        up = t || ct;
    }
    const dvl_lm *lm = vlm ? &m->vlm.lm : &m->lm;
    const dvl_lm_config *c = &lm->cfg;
    double rows = 0, pairs = 0;
    for (int64_t s = 0; s < w->n; s++) {
        dvl_mask m = *w->mask;
        int64_t T = w->len[s];
        if (m.kind == DVL_MASK_BLOCK_DIFF) { /* the sample alone: same blocks, same rule */
            m.half = T;
            T *= 2;
        }
        rows += (double)T;
        pairs += (double)dvl_mask_pairs(&m, T, T);
    }
    const double d = (double)c->hidden;
    const double qd = (double)(c->heads * c->head_dim), kvd = (double)(c->kv_heads * c->head_dim);
    up = up || lm->embed->requires_grad;
    for (int64_t l = 0; l < c->layers; l++) {
        const bool t = lm->layer[l].wq->requires_grad;
        f += product(rows, d * (qd + 2 * kvd), up, t) + attention(pairs, qd, up || t) +
             product(rows, qd * d + 3 * d * (double)c->intermediate, up || t, t);
        up = up || t;
    }
    return f + product((double)w->head_rows, d * (double)c->vocab, up, lm->head->requires_grad);
}
