/* The mlp2x_gelu connector of LLaVA (llava/model/multimodal_projector):
 *   y = Linear2(GELU(Linear0(x))),  Linear0: vision d_v -> d, Linear2: d -> d,
 * GELU the exact erf form (torch.nn.GELU()), x the vision features. The
 * checkpoint names are those of nn.Sequential inside the LLaVA model:
 * PREFIX "0.weight" [d, d_v], "0.bias", "2.weight" [d, d], "2.bias", with
 * PREFIX "model.mm_projector." in a LLaVA checkpoint. */
#ifndef DVL_MODELS_CONNECTOR_H
#define DVL_MODELS_CONNECTOR_H

#include "ops/ops.h"

typedef struct dvl_connector {
    int64_t in, out;
    dvl_tensor *w0, *b0; /* [out, in], [out] */
    dvl_tensor *w2, *b2; /* [out, out], [out] */
} dvl_connector;

int dvl_connector_declare(dvl_connector *m, int64_t in, int64_t out, dvl_params *p,
                          const char *prefix, dvl_err *err);
/* torch.nn.Linear's default initialisation for both layers (weights and
 * biases U(+-1/sqrt(fan_in)); init.h), seeded: what a fresh LLaVA stage 1
 * starts from. */
void dvl_connector_init_random(dvl_connector *m, uint64_t seed);
/* x [rows, in] -> [rows, out]. */
dvl_tensor *dvl_connector_forward(dvl_ctx *ctx, const dvl_connector *m, dvl_tensor *x);

#endif
