/* dvl-bench generate: the same prompts through each decoding mode.
 *
 *   dvl-bench generate --model DIR [--prompts N] [--prompt-len L]
 *                      [--max-new-tokens G] [--block-size B] [--mask-id ID]
 *                      [--threshold T] [--seed S] [--device cpu|cuda]
 *                      [--precision f32|bf16]
 *
 * N prompts (default 2) of L random token ids (default 32; never the mask
 * id), with one random image spliced in after the first two tokens for a
 * VLM, each generated to G tokens (default 256) with no stop id, so every
 * mode does the same amount of work. Modes: block diffusion with KV cache
 * (static and dynamic remasking, steps = B), diffusion recomputing the
 * whole sequence every step (full, bidirectional: LLaDA's way), and AR
 * with KV cache. Per mode: tokens/s, forward passes per generated token,
 * tokens per forward, and agreement with block-static (the fraction of
 * positions holding the same token). Greedy decoding throughout. With
 * several prompts, a last row runs them as one batch (block-static).
 * --device cuda: the model, loaded on the host, is moved to GPU 0 and every
 * mode runs there (the sampler stays on the host: each forward copies its
 * wanted logit rows back). --precision bf16 (cuda): bf16 products on bf16
 * copies of the weights (dvl_params_keep_bf16), as dvl-generate's. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "diffusion/generate.h"
#ifdef DVL_HAVE_CUDA
#include "ops/cuda/cuda.h"
#endif

static const char USAGE[] = "usage: dvl-bench generate --model DIR [--prompts N] [--prompt-len L]\n"
                            "           [--max-new-tokens G] [--block-size B] [--mask-id ID]\n"
                            "           [--threshold T] [--seed S] [--device cpu|cuda]\n"
                            "           [--precision f32|bf16 (cuda)]\n";

static const bench_opt GEN_OPTS[] = {
    {"--model", 's'}, {"--prompts", 'i'}, {"--prompt-len", 'i'}, {"--max-new-tokens", 'i'},
    {"--block-size", 'i'}, {"--mask-id", 'i'}, {"--threshold", 'f'}, {"--seed", 'i'},
    {"--device", 's'}, {"--precision", 's'}, {NULL, 0}};

int bench_generate(int argc, char **argv)
{
    bench_args args, *a = &args;
    int code;
    if (!bench_args_parse("generate", USAGE, argc, argv, GEN_OPTS, a, &code))
        return code;
    const char *model = bench_str(a, "--model", NULL);
    long n_prompts = bench_int(a, "--prompts", 2), plen = bench_int(a, "--prompt-len", 32);
    long G = bench_int(a, "--max-new-tokens", 256), B = bench_int(a, "--block-size", 8);
    long mask = bench_int(a, "--mask-id", -1), seed = bench_int(a, "--seed", 1);
    double tau = bench_num(a, "--threshold", 0.85);
    const char *dev = bench_str(a, "--device", "cpu"), *prec = bench_str(a, "--precision", "f32");
    if (!model || n_prompts < 1 || plen < 3 || G < 1 || B < 1) {
        fprintf(stderr, "dvl-bench generate: --model DIR is required; --prompts, "
                        "--max-new-tokens, --block-size >= 1; --prompt-len >= 3\n");
        return 2;
    }
    bool cuda = !strcmp(dev, "cuda"), bf16 = !strcmp(prec, "bf16");
    if ((!bf16 && strcmp(prec, "f32")) || (bf16 && !cuda)) {
        fprintf(stderr, "dvl-bench generate: --precision must be f32, or bf16 with --device cuda "
                        "(got %s on %s)\n", prec, dev);
        return 2;
    }
    if (!cuda && strcmp(dev, "cpu")) {
        fprintf(stderr, "dvl-bench generate: --device must be cpu or cuda, not '%s'\n", dev);
        return 2;
    }
    dvl_err err = {0};
    char desc[256] = "cpu";
    if (cuda) {
#ifdef DVL_HAVE_CUDA
        if (dvl_cuda_probe(&err) == 0) {
            fprintf(stderr, "dvl-bench generate: --device cuda: no usable CUDA device (%s)\n",
                    err.code ? err.msg : "0 devices");
            return 1;
        }
        if (dvl_cuda_init(0, &err) || dvl_cuda_describe(0, desc, sizeof desc, &err)) {
            fprintf(stderr, "dvl-bench generate: --device cuda: %s\n", err.msg);
            return 1;
        }
#else
        fprintf(stderr, "dvl-bench generate: --device cuda needs a CUDA build "
                        "(meson setup -Dcuda=enabled with nvcc installed)\n");
        return 1;
#endif
    }
    dvl_model m;
    if (dvl_model_open(&m, model, false, NULL, &err) ||
        (cuda && dvl_params_move(m.params, DVL_CUDA, &err)) ||
        (bf16 && dvl_params_keep_bf16(m.params, DVL_BF16_ALL, &err))) {
        fprintf(stderr, "dvl-bench generate: %s\n", err.msg);
        if (m.params)
            dvl_model_free(&m);
        return 1;
    }
    if (m.cfg.arch == DVL_ARCH_SIGLIP) {
        fprintf(stderr, "dvl-bench generate: %s is a vision tower\n", model);
        dvl_model_free(&m);
        return 1;
    }
    bool vlm = m.cfg.arch == DVL_ARCH_VLM;
    const dvl_lm_config *lc = vlm ? &m.cfg.vlm.lm : &m.cfg.lm;
    if (mask < 0)
        mask = lc->mask_token_id >= 0 ? lc->mask_token_id : lc->vocab - 1;
    int64_t patches = vlm ? dvl_siglip_patches(&m.cfg.vision) : 0;
    int64_t P = plen + patches;
    int64_t per = vlm ? m.cfg.vision.channels * m.cfg.vision.image_size * m.cfg.vision.image_size : 0;
    int32_t *ids = malloc((size_t)(n_prompts * P) * sizeof *ids);
    float *px = per ? malloc((size_t)(n_prompts * per) * sizeof *px) : NULL;
    dvl_rng rng;
    dvl_rng_seed(&rng, (uint64_t)seed);
    for (long p = 0; p < n_prompts; p++) {
        int32_t *x = ids + p * P;
        for (int64_t i = 0, k = 0; i < P; i++) {
            bool img = vlm && i >= 2 && i < 2 + patches;
            int32_t t;
            do
                t = (int32_t)(dvl_rng_u64(&rng) % (uint64_t)lc->vocab);
            while (t == mask || (vlm && t == m.cfg.vlm.image_token_index));
            x[i] = img ? m.cfg.vlm.image_token_index : t;
            k += img;
        }
        if (px)
            dvl_rng_fill_uniform(&rng, px + p * per, per, -1.0f, 1.0f);
    }
    struct {
        const char *name;
        dvl_gen_mode mode;
        dvl_remask remask;
    } rows[] = {{"block-static", DVL_GEN_BLOCK, DVL_REMASK_STATIC},
                {"block-dynamic", DVL_GEN_BLOCK, DVL_REMASK_DYNAMIC},
                {"full-static", DVL_GEN_FULL, DVL_REMASK_STATIC},
                {"full-dynamic", DVL_GEN_FULL, DVL_REMASK_DYNAMIC},
                {"ar", DVL_GEN_AR, DVL_REMASK_STATIC}};
    const int n_rows = sizeof rows / sizeof *rows;
    int32_t *ref = malloc((size_t)(n_prompts * G) * sizeof *ref);
    printf("model %s (%s) on %s%s, %ld prompt(s) of %lld positions, %ld new tokens, B %ld, "
           "steps %ld, tau %.2f\n",
           model, dvl_arch_name(m.cfg.arch), desc,
           bf16 ? " (bf16 products, bf16 weight copies)" : "",
           n_prompts, (long long)P, G, B, B, tau);
    printf("%-14s %10s %10s %12s %14s %10s\n", "mode", "tokens/s", "seconds", "fwd/token",
           "tokens/fwd", "agree");
    int rc = 0;
    double base = 0;
    for (int r = 0; r < n_rows && !rc; r++) {
        dvl_gen_opts o;
        dvl_gen_opts_default(&o);
        o.mode = rows[r].mode;
        o.block_size = (int)B;
        o.steps = (int)B;
        o.sampler.remask = rows[r].remask;
        o.sampler.tau = (float)tau;
        o.max_new = G;
        o.mask_id = (int32_t)mask;
        o.bf16 = bf16;
        int64_t toks = 0, fwd = 0, same = 0, cmp = 0;
        double sec = 0;
        for (long p = 0; p < n_prompts && !rc; p++) {
            dvl_gen_result res;
            rc = dvl_generate(&m, ids + p * P, P, px ? px + p * per : NULL, px ? 1 : 0, &o, &res,
                              &err);
            if (rc)
                break;
            toks += res.n;
            fwd += res.forwards;
            sec += res.seconds;
            for (int64_t i = 0; i < res.n; i++) {
                if (r == 0)
                    ref[p * G + i] = res.ids[i];
                else {
                    same += res.ids[i] == ref[p * G + i];
                    cmp++;
                }
            }
            dvl_gen_result_free(&res);
        }
        if (rc)
            break;
        double tps = (double)toks / sec;
        if (r == 0)
            base = tps;
        printf("%-14s %10.1f %10.3f %12.3f %14.2f %10.3f   (%.2fx block-static)\n", rows[r].name,
               tps, sec, (double)fwd / (double)toks, (double)toks / (double)fwd,
               r == 0 ? 1.0 : (double)same / (double)(cmp ? cmp : 1), tps / base);
        fflush(stdout);
    }
    if (!rc && n_prompts > 1 && n_prompts <= 64) {
        /* The same prompts as one batch (block-static): the batch's answers
         * are the singles' (agree 1.000), its forwards serve all prompts. */
        dvl_gen_opts o;
        dvl_gen_opts_default(&o);
        o.block_size = (int)B;
        o.steps = (int)B;
        o.max_new = G;
        o.mask_id = (int32_t)mask;
        o.bf16 = bf16;
        const int32_t *pp[64];
        const float *ppx[64];
        int64_t lens[64];
        dvl_gen_result res[64];
        for (long p = 0; p < n_prompts; p++) {
            pp[p] = ids + p * P;
            ppx[p] = px ? px + p * per : NULL;
            lens[p] = P;
        }
        rc = dvl_generate_batch(&m, (int)n_prompts, pp, lens, ppx, &o, res, &err);
        if (!rc) {
            int64_t toks = 0, same = 0;
            for (long p = 0; p < n_prompts; p++) {
                toks += res[p].n;
                for (int64_t i = 0; i < res[p].n; i++)
                    same += res[p].ids[i] == ref[p * G + i];
            }
            double tps = (double)toks / res[0].seconds;
            printf("%-14s %10.1f %10.3f %12.3f %14.2f %10.3f   (%.2fx block-static)\n",
                   "block-batch", tps, res[0].seconds, (double)res[0].forwards / (double)toks,
                   (double)toks / (double)res[0].forwards, (double)same / (double)toks, tps / base);
            for (long p = 0; p < n_prompts; p++)
                dvl_gen_result_free(&res[p]);
        }
    }
    if (rc)
        fprintf(stderr, "dvl-bench generate: %s\n", err.msg);
    free(ref);
    free(ids);
    free(px);
    dvl_model_free(&m);
    return rc ? 1 : 0;
}
