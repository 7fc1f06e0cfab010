/* The generation tests' fixtures (gen_fixture.h). */
#include "gen_fixture.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"

void tg_tiny_model(dvl_model *m, uint64_t seed)
{
    dvl_model_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.arch = DVL_ARCH_QWEN2;
    cfg.lm = (dvl_lm_config){.arch = DVL_ARCH_QWEN2, .hidden = 32, .layers = 2, .heads = 4,
                             .kv_heads = 2, .head_dim = 8, .intermediate = 48, .vocab = TG_VOCAB,
                             .rms_eps = 1e-6f, .rope_theta = 10000.0f, .tied = false,
                             .qkv_bias = true, .max_positions = 512, .mask_token_id = TG_MASK};
    dvl_err err = {0, ""};
    ck_assert_msg(dvl_model_init(m, &cfg, &err) == 0, "%s", err.msg);
    ck_assert_msg(dvl_params_alloc(m->params, &err) == 0, "%s", err.msg);
    dvl_lm_init_random(&m->lm, seed, 0.3f);
}

int32_t *tg_prompt(int64_t P, uint64_t seed)
{
    dvl_rng r;
    dvl_rng_seed(&r, seed);
    int32_t *p = malloc((size_t)P * sizeof *p);
    ck_assert_ptr_nonnull(p);
    for (int64_t i = 0; i < P; i++)
        p[i] = (int32_t)(dvl_rng_u64(&r) % TG_MASK);
    return p;
}

void tg_vlm_open(tg_vlm *f)
{
    const char *data = getenv("DVL_TEST_DATA");
    ck_assert_msg(data != NULL, "DVL_TEST_DATA is not set");
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/ref/vlm", data);
    dvl_err err = {0, ""};
    ck_assert_msg(dvl_model_open(&f->m, dir, false, NULL, &err) == 0, "%s", err.msg);
    dvl_lm_init_random(&f->m.vlm.lm, 17, 0.3f);
    const dvl_vlm_config *vc = &f->m.cfg.vlm;
    const int64_t G2 = dvl_siglip_patches(&vc->vision);
    const int64_t per = vc->vision.channels * vc->vision.image_size * vc->vision.image_size;
    f->P = 3 + G2 + 2;
    f->prompt = tg_prompt(f->P, 18);
    for (int64_t i = 0; i < f->P; i++) {
        if (f->prompt[i] == vc->image_token_index)
            f->prompt[i] = 1;
        if (i >= 3 && i < 3 + G2)
            f->prompt[i] = vc->image_token_index;
    }
    f->px = malloc((size_t)per * sizeof *f->px);
    ck_assert_ptr_nonnull(f->px);
    dvl_rng r;
    dvl_rng_seed(&r, 19);
    dvl_rng_fill_uniform(&r, f->px, per, -1.0f, 1.0f);
}

void tg_vlm_free(tg_vlm *f)
{
    free(f->prompt);
    free(f->px);
    dvl_model_free(&f->m);
}
