/* dvl-bench loader [--data DIR] [--samples N] [--batch B] [--size S]
 *                  [--epochs E] [--keep]
 *
 * Samples/s of the training loader reading shards and decoding their
 * images (inflate, HWC uint8 -> CHW float normalised) on its one prefetch
 * thread, while the calling thread only takes the batches: the figure is
 * what one core delivers. Without --data a temporary dataset is built
 * first: N (default 256) synthetic photo-like JPEGs of 480 x 360 (smooth
 * gradients, discs and sensor-like noise, quality 90, as most LLaVA images
 * are JPEGs), one-round conversations, a byte-level tokenizer written
 * alongside, images stored at S (default 384) with deflate level D
 * (default 1, the build's default). Also prints the build speed, the
 * checksum verification speed and the stored bytes per image. */
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <jpeglib.h>

#include "bench.h"
#include "core/rng.h"
#include "io/dataset.h"
#include "io/image.h"
#include "io/loader.h"

static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *f)
{
    return remove(p);
}

static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* GPT-2's byte-to-unicode table for one byte, as UTF-8. */
static void byte_level(unsigned b, char *out)
{
    unsigned cp = b, extra = 0;
    if (!((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE)) {
        for (unsigned c = 0; c < b; c++)
            if (!((c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || c >= 0xAE))
                extra++;
        cp = 256 + extra;
    }
    if (cp < 0x80) {
        out[0] = (char)cp;
        out[1] = '\0';
    } else {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        out[2] = '\0';
    }
}

/* A byte-level tokenizer (one id per byte) with the ChatML markers: enough
 * for the qwen template without shipping a vocabulary. */
static int write_tokenizer(const char *dir)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *added = cJSON_AddArrayToObject(root, "added_tokens");
    const char *marks[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
    for (int i = 0; i < 3; i++) {
        cJSON *a = cJSON_CreateObject();
        cJSON_AddNumberToObject(a, "id", 256 + i);
        cJSON_AddStringToObject(a, "content", marks[i]);
        cJSON_AddBoolToObject(a, "special", true);
        cJSON_AddItemToArray(added, a);
    }
    cJSON *pre = cJSON_AddObjectToObject(root, "pre_tokenizer");
    cJSON_AddStringToObject(pre, "type", "ByteLevel");
    cJSON_AddBoolToObject(pre, "add_prefix_space", false);
    cJSON_AddBoolToObject(pre, "use_regex", false);
    cJSON *dec = cJSON_AddObjectToObject(root, "decoder");
    cJSON_AddStringToObject(dec, "type", "ByteLevel");
    cJSON *model = cJSON_AddObjectToObject(root, "model");
    cJSON_AddStringToObject(model, "type", "BPE");
    cJSON *vocab = cJSON_AddObjectToObject(model, "vocab");
    char bl[4];
    for (unsigned b = 0; b < 256; b++) {
        byte_level(b, bl);
        cJSON_AddNumberToObject(vocab, bl, b);
    }
    cJSON_AddArrayToObject(model, "merges");
    char *json = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    char path[4200];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    FILE *f = fopen(path, "w");
    int rc = f && json && fputs(json, f) >= 0 ? 0 : -1;
    if (f)
        fclose(f);
    free(json);
    return rc;
}

/* A photo-like image: two smooth gradients, a few flat shapes, and noise
 * of a few levels. */
static void draw(dvl_image *img, dvl_rng *r)
{
    int w = img->w, h = img->h;
    float base[3], gx[3], gy[3];
    for (int c = 0; c < 3; c++) {
        base[c] = 40 + 150 * dvl_rng_uniform(r);
        gx[c] = (dvl_rng_uniform(r) - 0.5f) * 120 / (float)w;
        gy[c] = (dvl_rng_uniform(r) - 0.5f) * 120 / (float)h;
    }
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int c = 0; c < 3; c++) {
                float v = base[c] + gx[c] * (float)x + gy[c] * (float)y +
                          (float)(dvl_rng_u64(r) % 7) - 3.0f;
                img->data[(y * w + x) * 3 + c] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
            }
    for (int s = 0; s < 4; s++) {
        int cx = (int)(dvl_rng_u64(r) % (uint64_t)w), cy = (int)(dvl_rng_u64(r) % (uint64_t)h);
        int rad = 10 + (int)(dvl_rng_u64(r) % 60);
        uint8_t col[3];
        for (int c = 0; c < 3; c++)
            col[c] = (uint8_t)(dvl_rng_u64(r) >> 56);
        for (int y = cy - rad; y < cy + rad; y++)
            for (int x = cx - rad; x < cx + rad; x++)
                if (x >= 0 && y >= 0 && x < w && y < h &&
                    (x - cx) * (x - cx) + (y - cy) * (y - cy) < rad * rad)
                    for (int c = 0; c < 3; c++)
                        img->data[(y * w + x) * 3 + c] =
                            (uint8_t)(col[c] + (int)(dvl_rng_u64(r) % 5) - 2);
            }
}

/* Baseline JPEG at quality 90 through libjpeg. */
static int write_jpeg(const char *path, const dvl_image *img, dvl_err *err)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return dvl_errf(err, DVL_EIO, "%s: cannot create", path);
    struct jpeg_compress_struct c;
    struct jpeg_error_mgr jerr;
    c.err = jpeg_std_error(&jerr);
    jpeg_create_compress(&c);
    jpeg_stdio_dest(&c, f);
    c.image_width = (JDIMENSION)img->w;
    c.image_height = (JDIMENSION)img->h;
    c.input_components = 3;
    c.in_color_space = JCS_RGB;
    jpeg_set_defaults(&c);
    jpeg_set_quality(&c, 90, TRUE);
    jpeg_start_compress(&c, TRUE);
    while (c.next_scanline < c.image_height) {
        JSAMPROW row = img->data + (size_t)c.next_scanline * (size_t)img->w * 3;
        jpeg_write_scanlines(&c, &row, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    return fclose(f) ? dvl_errf(err, DVL_EIO, "%s: write error", path) : 0;
}

static int make_dataset(const char *tmp, const char *out, int64_t n, int size, int deflate,
                        dvl_err *err)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/images", tmp);
    if (mkdir(path, 0777))
        return dvl_errf(err, DVL_EIO, "%s: cannot create", path);
    if (write_tokenizer(tmp))
        return dvl_errf(err, DVL_EIO, "%s: cannot write tokenizer.json", tmp);
    snprintf(path, sizeof path, "%s/data.jsonl", tmp);
    FILE *f = fopen(path, "w");
    if (!f)
        return dvl_errf(err, DVL_EIO, "%s: cannot create", path);
    dvl_rng r;
    dvl_rng_seed(&r, 2024);
    dvl_image img;
    int rc = dvl_image_alloc(&img, 480, 360, err);
    for (int64_t i = 0; i < n && !rc; i++) {
        draw(&img, &r);
        char name[4200];
        snprintf(name, sizeof name, "%s/images/%06lld.jpg", tmp, (long long)i);
        rc = write_jpeg(name, &img, err);
        fprintf(f,
                "{\"id\":\"s%lld\",\"image\":\"%06lld.jpg\",\"conversations\":[{\"from\":\"human\","
                "\"value\":\"<image>\\nWhat is in the picture?\"},{\"from\":\"gpt\",\"value\":"
                "\"Some coloured discs on a gradient.\"}]}\n",
                (long long)i, (long long)i);
    }
    dvl_image_free(&img);
    fclose(f);
    if (rc)
        return rc;
    dvl_build_opts o;
    dvl_build_opts_default(&o);
    char images[4200];
    snprintf(images, sizeof images, "%s/images", tmp);
    o.json = path;
    o.images = images;
    o.tokenizer = tmp;
    o.out = out;
    o.shard_size = 128;
    o.image_size = size;
    o.deflate = deflate;
    dvl_build_stats st;
    double t0 = bench_now();
    rc = dvl_dataset_build(&o, &st, err);
    if (!rc)
        printf("built %lld samples in %lld shards with %d threads in %.2f s (%.1f samples/s)\n",
               (long long)st.samples, (long long)st.shards, o.threads, bench_now() - t0,
               (double)st.samples / (bench_now() - t0));
    return rc;
}

static const bench_opt LOADER_OPTS[] = {
    {"--data", 's'}, {"--samples", 'i'}, {"--batch", 'i'}, {"--epochs", 'i'}, {"--size", 'i'},
    {"--deflate", 'i'}, {"--keep", 0}, {NULL, 0}};

int bench_loader(int argc, char **argv)
{
    bench_args args, *a = &args;
    int code;
    if (!bench_args_parse("loader",
                          "usage: dvl-bench loader [--data DIR] [--samples N] [--batch B] "
                          "[--size S] [--deflate D] [--epochs E] [--keep]\n",
                          argc, argv, LOADER_OPTS, a, &code))
        return code;
    const char *data = bench_str(a, "--data", NULL);
    int64_t n = bench_int(a, "--samples", 256), batch = bench_int(a, "--batch", 16);
    int64_t epochs = bench_int(a, "--epochs", 2);
    int size = bench_int(a, "--size", DVL_SIGLIP_SIZE), deflate = bench_int(a, "--deflate", 1);
    int keep = bench_flag(a, "--keep");
    if (n < 1 || batch < 1 || epochs < 1 || size < 1 || deflate < 0 || deflate > 9) {
        fprintf(stderr, "dvl-bench loader: --samples, --batch, --epochs, --size must be >= 1, "
                        "--deflate 0..9\n");
        return 2;
    }
    dvl_err err = {0};
    char tmp[64] = "", out[4200];
    if (!data) {
        strcpy(tmp, "/tmp/dvl_bench_loader_XXXXXX");
        if (!mkdtemp(tmp)) {
            perror("dvl-bench loader: mkdtemp");
            return 1;
        }
        snprintf(out, sizeof out, "%s/dataset", tmp);
        if (make_dataset(tmp, out, n, size, deflate, &err)) {
            fprintf(stderr, "dvl-bench loader: %s\n", err.msg);
            nftw(tmp, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
            return 1;
        }
        data = out;
    }
    int status = 0;
    dvl_manifest m;
    if (dvl_manifest_read(data, &m, &err)) {
        fprintf(stderr, "dvl-bench loader: %s\n", err.msg);
        status = 1;
        goto done;
    }
    int64_t bytes = 0;
    for (int64_t k = 0; k < m.n_shards; k++)
        bytes += m.shards[k].bytes;
    double t0 = bench_now();
    if (dvl_manifest_verify(&m, &err)) {
        fprintf(stderr, "dvl-bench loader: %s\n", err.msg);
        dvl_manifest_free(&m);
        status = 1;
        goto done;
    }
    double tv = bench_now() - t0;
    printf("dataset %s: %lld samples, %lld images of %d px, %.1f MB in %lld shards "
           "(%.0f KB an image stored, %.0f KB raw)\n",
           data, (long long)m.samples, (long long)m.images, m.image_size, (double)bytes / 1e6,
           (long long)m.n_shards, m.images ? (double)bytes / 1e3 / (double)m.images : 0.0,
           3.0 * m.image_size * m.image_size / 1e3);
    printf("checksum verification: %.0f MB/s\n", (double)bytes / 1e6 / tv);
    dvl_manifest_free(&m);

    dvl_loader_opts lo;
    dvl_loader_opts_default(&lo);
    lo.dir = data;
    lo.batch_size = batch;
    lo.skip_verify = true;
    lo.seed = 1;
    dvl_loader *l = dvl_loader_open(&lo, &err);
    if (!l) {
        fprintf(stderr, "dvl-bench loader: %s\n", err.msg);
        status = 1;
        goto done;
    }
    for (int64_t e = 0; e < epochs && !status; e++) {
        int64_t samples = 0, images = 0, nb = dvl_loader_batches_per_epoch(l, 0);
        double w0 = bench_now(), c0 = cpu_now();
        for (int64_t k = 0; k < nb; k++) {
            const dvl_batch *b;
            if (dvl_loader_next(l, &b, &err)) {
                fprintf(stderr, "dvl-bench loader: %s\n", err.msg);
                status = 1;
                break;
            }
            samples += b->n;
            images += b->n_images;
        }
        double w = bench_now() - w0, c = cpu_now() - c0;
        /* The caller only waits, so the process's CPU time is the prefetch
         * thread's: samples per CPU-second is the one-core rate even when
         * other programs share the cores. */
        printf("epoch %lld: %lld samples (%lld images) in %.3f s: %.0f samples/s wall, "
               "%.0f samples per CPU-second\n",
               (long long)e, (long long)samples, (long long)images, w, (double)samples / w,
               (double)samples / c);
    }
    dvl_loader_free(l);
done:
    if (tmp[0] && !keep)
        nftw(tmp, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    else if (tmp[0])
        printf("kept %s\n", tmp);
    return status;
}
