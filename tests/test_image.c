/* Image decoding, PNG writing and the SigLIP preprocessing, against the
 * fixtures scripts/make-image-fixtures wrote into tests/data/images/ (the
 * expected RGB of each decodes, and PIL's own resize outputs). */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io/image.h"
#include "util.h"

static uint8_t *read_all(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc(len > 0 ? (size_t)len : 1);
    ck_assert_int_eq(fread(buf, 1, (size_t)len, f), (size_t)len);
    fclose(f);
    *n = (size_t)len;
    return buf;
}

static void write_all(const char *path, const void *buf, size_t n)
{
    FILE *f = fopen(path, "wb");
    ck_assert_msg(f != NULL, "cannot create %s", path);
    ck_assert_int_eq(fwrite(buf, 1, n, f), n);
    fclose(f);
}

/* Expected RGB bytes for fixture NAME (extension replaced by .rgb). */
static uint8_t *expected_rgb(const char *name, size_t want)
{
    char base[256], path[512];
    snprintf(base, sizeof base, "images/%s", name);
    char *dot = strrchr(base, '.');
    strcpy(dot, ".rgb");
    size_t n;
    uint8_t *buf = read_all(tu_data_path(base, path, sizeof path), &n);
    ck_assert_msg(n == want, "%s: %zu bytes, expected %zu", path, n, want);
    return buf;
}

static int max_diff(const uint8_t *a, const uint8_t *b, size_t n, size_t *where)
{
    int m = 0;
    for (size_t i = 0; i < n; i++) {
        int d = abs((int)a[i] - (int)b[i]);
        if (d > m) {
            m = d;
            *where = i;
        }
    }
    return m;
}

static dvl_image load_fixture(const char *name)
{
    char rel[256], path[512];
    snprintf(rel, sizeof rel, "images/%s", name);
    dvl_image img;
    dvl_err err = {0};
    int rc = dvl_image_load(tu_data_path(rel, path, sizeof path), &img, &err);
    ck_assert_msg(rc == 0, "%s: %s", name, err.msg);
    return img;
}

static char tmpdir[256];

static void make_tmpdir(void)
{
    const char *t = getenv("TMPDIR");
    snprintf(tmpdir, sizeof tmpdir, "%s/dvl-test-image-XXXXXX", t ? t : "/tmp");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void remove_tmpdir(void)
{
    DIR *d = opendir(tmpdir);
    if (!d)
        return;
    struct dirent *e;
    char p[512];
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            snprintf(p, sizeof p, "%s/%s", tmpdir, e->d_name);
            unlink(p);
        }
    closedir(d);
    rmdir(tmpdir);
}

static int count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    ck_assert_ptr_nonnull(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    closedir(d);
    return n;
}

static const struct {
    const char *name;
    int w, h;
} fixtures[] = {
    {"gray1.png", 13, 7},       {"gray2.png", 13, 7},       {"gray4.png", 13, 7},
    {"gray8.png", 13, 7},       {"gray16.png", 13, 7},      {"gray2_adam7.png", 13, 7},
    {"gray8_trns.png", 13, 7},  {"graya8.png", 13, 7},      {"graya16.png", 13, 7},
    {"rgb8.png", 13, 7},        {"rgb16.png", 13, 7},       {"rgba8.png", 13, 7},
    {"rgba16.png", 13, 7},      {"rgb8_adam7.png", 13, 7},  {"rgb8_trns.png", 13, 7},
    {"pal1.png", 13, 7},        {"pal4.png", 13, 7},        {"pal8.png", 13, 7},
    {"pal8_trns.png", 13, 7},   {"rgb420.jpg", 19, 13},     {"rgb444.jpg", 19, 13},
    {"rgb_progressive.jpg", 19, 13}, {"gray.jpg", 19, 13},  {"cmyk.jpg", 19, 13},
};
#define N_FIXTURES ((int)(sizeof fixtures / sizeof fixtures[0]))

/* Every fixture decodes to exactly the RGB the generator recorded: for PNG
 * the encoded samples under dvl's rules, for JPEG PIL's decode (the same
 * libjpeg-turbo algorithms: islow IDCT, fancy upsampling). */
START_TEST(decode_fixtures)
{
    int i = _i;
    dvl_image img = load_fixture(fixtures[i].name);
    ck_assert_int_eq(img.w, fixtures[i].w);
    ck_assert_int_eq(img.h, fixtures[i].h);
    size_t n = (size_t)img.w * img.h * 3, at = 0;
    uint8_t *want = expected_rgb(fixtures[i].name, n);
    int d = max_diff(img.data, want, n, &at);
    ck_assert_msg(d == 0, "%s: byte %zu (pixel %zu channel %zu) is %d, expected %d",
                  fixtures[i].name, at, at / 3, at % 3, img.data[at], want[at]);
    free(want);
    dvl_image_free(&img);
}
END_TEST

/* The format comes from the magic bytes: a PNG named .jpg loads, and
 * decode_mem gives the same pixels as load. */
START_TEST(format_by_magic_not_extension)
{
    make_tmpdir();
    char src[512], dst[512];
    size_t n;
    uint8_t *buf = read_all(tu_data_path("images/rgb8.png", src, sizeof src), &n);
    snprintf(dst, sizeof dst, "%s/actually_png.jpg", tmpdir);
    write_all(dst, buf, n);
    dvl_image a, b;
    dvl_err err = {0};
    ck_assert_int_eq(dvl_image_load(dst, &a, &err), 0);
    ck_assert_int_eq(dvl_image_decode_mem(buf, n, "mem", &b, &err), 0);
    ck_assert_int_eq(a.w, 13);
    ck_assert_mem_eq(a.data, b.data, (size_t)13 * 7 * 3);
    dvl_image_free(&a);
    dvl_image_free(&b);
    free(buf);
    remove_tmpdir();
}
END_TEST

START_TEST(unknown_missing_empty)
{
    make_tmpdir();
    char path[512];
    dvl_image img;
    dvl_err err = {0};
    snprintf(path, sizeof path, "%s/anim.gif", tmpdir);
    write_all(path, "GIF89a\x01\x00\x01\x00\x00\x00\x00;", 14);
    ck_assert_int_eq(dvl_image_load(path, &img, &err), DVL_EUNSUP);
    ck_assert_ptr_nonnull(strstr(err.msg, path));
    ck_assert_ptr_nonnull(strstr(err.msg, "unknown image format"));
    ck_assert_ptr_null(img.data);

    snprintf(path, sizeof path, "%s/empty.png", tmpdir);
    write_all(path, "", 0);
    ck_assert_int_eq(dvl_image_load(path, &img, &err), DVL_EIO);
    ck_assert_ptr_nonnull(strstr(err.msg, path));
    ck_assert_ptr_nonnull(strstr(err.msg, "empty"));

    snprintf(path, sizeof path, "%s/missing.png", tmpdir);
    ck_assert_int_eq(dvl_image_load(path, &img, &err), DVL_EIO);
    ck_assert_ptr_nonnull(strstr(err.msg, path));
    ck_assert_ptr_nonnull(strstr(err.msg, "No such file"));
    remove_tmpdir();
}
END_TEST

/* A file cut anywhere is an error naming the file and the codec's reason:
 * PNG through its CRCs and IEND, JPEG through libjpeg's premature-end
 * warning, which dvl promotes to an error (libjpeg would return gray). */
static const char *cut_files[] = {"rgb8.png",   "pal4.png",   "rgb8_adam7.png", "gray16.png",
                                  "rgb420.jpg", "rgb_progressive.jpg", "cmyk.jpg"};

START_TEST(truncated_files_fail)
{
    make_tmpdir();
    char src[512], rel[128], path[512];
    for (size_t f = 0; f < sizeof cut_files / sizeof cut_files[0]; f++) {
        size_t n;
        snprintf(rel, sizeof rel, "images/%s", cut_files[f]);
        uint8_t *buf = read_all(tu_data_path(rel, src, sizeof src), &n);
        size_t cuts[] = {1, 2, 7, 8, 20, 33, n / 4, n / 2, 3 * n / 4, n - 13, n - 2, n - 1};
        for (size_t c = 0; c < sizeof cuts / sizeof cuts[0]; c++) {
            snprintf(path, sizeof path, "%s/cut%zu_%s", tmpdir, cuts[c], cut_files[f]);
            write_all(path, buf, cuts[c]);
            dvl_image img = {.w = 5};
            dvl_err err = {0};
            int rc = dvl_image_load(path, &img, &err);
            ck_assert_msg(rc != 0, "%s cut at %zu of %zu decoded", cut_files[f], cuts[c], n);
            ck_assert_msg(strstr(err.msg, path) != NULL, "message lacks the path: %s", err.msg);
            ck_assert_ptr_null(img.data);
            ck_assert_int_eq(img.w, 0);
            unlink(path);
        }
        free(buf);
    }
    remove_tmpdir();
}
END_TEST

/* Any single flipped byte of a PNG is caught (signature check, chunk CRCs,
 * zlib's adler32): every position, with the libpng message. */
START_TEST(png_any_flipped_byte_fails)
{
    char src[512];
    size_t n;
    uint8_t *buf = read_all(tu_data_path("images/pal8_trns.png", src, sizeof src), &n);
    for (size_t i = 0; i < n; i++) {
        buf[i] ^= 0x10;
        dvl_image img;
        dvl_err err = {0};
        int rc = dvl_image_decode_mem(buf, n, "flip.png", &img, &err);
        ck_assert_msg(rc != 0, "byte %zu flipped still decodes", i);
        ck_assert_ptr_nonnull(strstr(err.msg, "flip.png"));
        if (i >= 8)
            ck_assert_msg(strstr(err.msg, "bad PNG: ") != NULL && strlen(err.msg) > 20,
                          "byte %zu: %s", i, err.msg);
        ck_assert_ptr_null(img.data);
        buf[i] ^= 0x10;
    }
    free(buf);
}
END_TEST

/* JPEG has no checksums: a flipped byte in the entropy-coded data may
 * decode to other pixels. Every position must either fail cleanly (no
 * crash, nothing leaked: this suite also runs under ASan/LSan) or give an
 * image of the stated size; damaged markers must fail. */
START_TEST(jpeg_flipped_bytes_no_crash)
{
    const char *names[] = {"rgb420.jpg", "rgb_progressive.jpg", "gray.jpg"};
    char rel[128], src[512];
    for (int f = 0; f < 3; f++) {
        size_t n;
        snprintf(rel, sizeof rel, "images/%s", names[f]);
        uint8_t *buf = read_all(tu_data_path(rel, src, sizeof src), &n);
        int failed = 0;
        for (size_t i = 0; i < n; i++) {
            buf[i] ^= 0x5a;
            dvl_image img;
            dvl_err err = {0};
            int rc = dvl_image_decode_mem(buf, n, names[f], &img, &err);
            if (rc) {
                failed++;
                ck_assert_ptr_null(img.data);
                ck_assert_ptr_nonnull(strstr(err.msg, names[f]));
            } else {
                ck_assert(img.w > 0 && img.h > 0 && img.data);
                dvl_image_free(&img);
            }
            if (i < 4 || i == n - 1 || i == n - 2) /* SOI, APP0 marker, EOI */
                ck_assert_msg(rc != 0, "%s: flipped marker byte %zu decodes", names[f], i);
            buf[i] ^= 0x5a;
        }
        ck_assert_int_gt(failed, 10);
        free(buf);
    }
}
END_TEST

START_TEST(jpeg_error_names_libjpeg_reason)
{
    char src[512];
    size_t n;
    uint8_t *buf = read_all(tu_data_path("images/rgb420.jpg", src, sizeof src), &n);
    dvl_image img;
    dvl_err err = {0};
    ck_assert_int_ne(dvl_image_decode_mem(buf, n / 2, "half.jpg", &img, &err), 0);
    ck_assert_msg(strstr(err.msg, "half.jpg: bad JPEG: Premature end of JPEG file") != NULL,
                  "%s", err.msg);
    free(buf);
}
END_TEST

START_TEST(write_png_roundtrip_atomic)
{
    make_tmpdir();
    dvl_image img;
    dvl_err err = {0};
    ck_assert_int_eq(dvl_image_alloc(&img, 37, 21, &err), 0);
    dvl_rng r;
    dvl_rng_seed(&r, 7);
    for (int i = 0; i < 37 * 21 * 3; i++)
        img.data[i] = (uint8_t)dvl_rng_u64(&r);
    char path[512];
    snprintf(path, sizeof path, "%s/out.png", tmpdir);
    ck_assert_int_eq(dvl_image_write_png(path, &img, &err), 0);
    /* Overwriting replaces the file in one rename; no temporary stays. */
    img.data[0] ^= 1;
    ck_assert_int_eq(dvl_image_write_png(path, &img, &err), 0);
    ck_assert_int_eq(count_entries(tmpdir), 1);
    dvl_image back;
    ck_assert_int_eq(dvl_image_load(path, &back, &err), 0);
    ck_assert_int_eq(back.w, 37);
    ck_assert_int_eq(back.h, 21);
    ck_assert_mem_eq(back.data, img.data, (size_t)37 * 21 * 3);
    dvl_image_free(&back);

    snprintf(path, sizeof path, "%s/no/such/dir/out.png", tmpdir);
    ck_assert_int_eq(dvl_image_write_png(path, &img, &err), DVL_EIO);
    ck_assert_ptr_nonnull(strstr(err.msg, "no/such/dir/out.png"));
    dvl_image empty = {0};
    ck_assert_int_eq(dvl_image_write_png(path, &empty, &err), DVL_EINVAL);
    dvl_image_free(&img);
    ck_assert_int_eq(count_entries(tmpdir), 1);
    remove_tmpdir();
}
END_TEST

/* PIL's Image.resize(BICUBIC) outputs, byte for byte: shrinking
 * (antialiased support), enlarging, one axis only, extreme ratios, one axis
 * up and the other down. (The fixtures hold Pillow's horizontal-then-
 * vertical result; see scripts/make-image-fixtures on Pillow 13.) */
static const int resize_sizes[][2] = {{17, 12}, {64, 50}, {41, 60}, {20, 28}, {5, 3}, {90, 7}};

START_TEST(resize_matches_pil)
{
    dvl_image src = load_fixture("resize_src.png");
    ck_assert_int_eq(src.w, 41);
    ck_assert_int_eq(src.h, 28);
    int w = resize_sizes[_i][0], h = resize_sizes[_i][1];
    dvl_image out;
    dvl_err err = {0};
    ck_assert_int_eq(dvl_image_resize_bicubic(&src, w, h, &out, &err), 0);
    char name[64];
    snprintf(name, sizeof name, "resize_%dx%d.rgb", w, h);
    size_t n = (size_t)w * h * 3, at = 0;
    uint8_t *want = expected_rgb(name, n);
    int d = max_diff(out.data, want, n, &at);
    ck_assert_msg(d == 0, "%s: byte %zu is %d, PIL gives %d", name, at, out.data[at], want[at]);
    free(want);
    dvl_image_free(&out);
    dvl_image_free(&src);
}
END_TEST

/* LLaVA's expand2square (pasted at floor((side - w) / 2)) with the SigLIP
 * background (127,127,127), then the 32 x 32 resize: equal to the Python
 * reference for a wide and a tall image (odd size differences). */
START_TEST(expand2square_and_siglip_pixels_match_llava)
{
    const char *src_names[] = {"resize_src.png", "resize_tall.png"};
    const char *tags[] = {"wide", "tall"};
    for (int i = 0; i < 2; i++) {
        dvl_image src = load_fixture(src_names[i]);
        dvl_image sq, px;
        dvl_err err = {0};
        const uint8_t bg[3] = {127, 127, 127};
        ck_assert_int_eq(dvl_image_expand2square(&src, bg, &sq, &err), 0);
        ck_assert_int_eq(sq.w, 41);
        ck_assert_int_eq(sq.h, 41);
        char name[64];
        snprintf(name, sizeof name, "square_%s.rgb", tags[i]);
        uint8_t *want = expected_rgb(name, (size_t)41 * 41 * 3);
        ck_assert_mem_eq(sq.data, want, (size_t)41 * 41 * 3);
        free(want);
        ck_assert_int_eq(dvl_siglip_pixels(&src, 32, &px, &err), 0);
        snprintf(name, sizeof name, "siglip32_%s.rgb", tags[i]);
        want = expected_rgb(name, (size_t)32 * 32 * 3);
        ck_assert_mem_eq(px.data, want, (size_t)32 * 32 * 3);
        free(want);
        dvl_image_free(&px);
        dvl_image_free(&sq);
        dvl_image_free(&src);
    }
}
END_TEST

/* The geometry spelled out on a 5 x 2 image: side 5, rows 1-2 hold the
 * image ((5 - 2) // 2 = 1), rows 0, 3, 4 are background. */
START_TEST(expand2square_geometry)
{
    dvl_image img, sq;
    dvl_err err = {0};
    ck_assert_int_eq(dvl_image_alloc(&img, 5, 2, &err), 0);
    memset(img.data, 200, 5 * 2 * 3);
    const uint8_t bg[3] = {1, 2, 3};
    ck_assert_int_eq(dvl_image_expand2square(&img, bg, &sq, &err), 0);
    ck_assert_int_eq(sq.w, 5);
    ck_assert_int_eq(sq.h, 5);
    for (int y = 0; y < 5; y++)
        for (int x = 0; x < 5; x++)
            for (int c = 0; c < 3; c++) {
                int want = (y == 1 || y == 2) ? 200 : c + 1;
                ck_assert_int_eq(sq.data[(y * 5 + x) * 3 + c], want);
            }
    dvl_image_free(&sq);
    /* Transposed: 2 x 5 goes to columns 1-2. */
    img.w = 2;
    img.h = 5;
    ck_assert_int_eq(dvl_image_expand2square(&img, bg, &sq, &err), 0);
    for (int y = 0; y < 5; y++)
        for (int x = 0; x < 5; x++)
            ck_assert_int_eq(sq.data[(y * 5 + x) * 3], (x == 1 || x == 2) ? 200 : 1);
    dvl_image_free(&sq);
    dvl_image_free(&img);
}
END_TEST

/* Normalisation: (x / 255 - 0.5) / 0.5, CHW; 0 -> -1, 255 -> 1, and
 * preprocess = pixels + normalize. */
START_TEST(siglip_preprocess_normalizes_chw)
{
    dvl_image src = load_fixture("resize_src.png");
    dvl_image px;
    dvl_err err = {0};
    ck_assert_int_eq(dvl_siglip_pixels(&src, 32, &px, &err), 0);
    float *out = malloc(sizeof(float) * 3 * 32 * 32);
    ck_assert_int_eq(dvl_siglip_preprocess(&src, 32, out, &err), 0);
    for (int c = 0; c < 3; c++)
        for (int i = 0; i < 32 * 32; i++) {
            double want = ((double)px.data[i * 3 + c] / 255.0 - 0.5) / 0.5;
            ck_assert_double_eq_tol(out[c * 32 * 32 + i], want, 1e-6);
        }
    uint8_t ends[6] = {0, 255, 127, 0, 0, 0};
    float e[6];
    dvl_image_normalize(ends, 2, 1, dvl_siglip_mean, dvl_siglip_std, e);
    /* CHW: R0 R1 G0 G1 B0 B1. */
    ck_assert_float_eq(e[0], -1.0f);
    ck_assert_float_eq(e[1], -1.0f);
    ck_assert_float_eq(e[2], 1.0f);
    ck_assert_float_eq(e[3], -1.0f);
    ck_assert_float_eq_tol(e[4], -1.0f / 255.0f, 1e-7f);
    free(out);
    dvl_image_free(&px);
    dvl_image_free(&src);
}
END_TEST

START_TEST(bad_arguments)
{
    dvl_image src = load_fixture("rgb8.png"), out = {.w = 3};
    dvl_err err = {0};
    ck_assert_int_eq(dvl_image_resize_bicubic(&src, 0, 5, &out, &err), DVL_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "0 x 5"));
    ck_assert_ptr_null(out.data);
    ck_assert_int_eq(dvl_siglip_pixels(&src, -1, &out, &err), DVL_EINVAL);
    dvl_image empty = {0};
    const uint8_t bg[3] = {0, 0, 0};
    ck_assert_int_eq(dvl_image_expand2square(&empty, bg, &out, &err), DVL_EINVAL);
    ck_assert_int_eq(dvl_image_alloc(&out, 1 << 15, 1 << 15, &err), DVL_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "out of range"));
    dvl_image_free(&src);
    dvl_image_free(&empty); /* zeroed: no-op */
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("image");
    TCase *tc = tcase_create("image");
    tcase_add_loop_test(tc, decode_fixtures, 0, N_FIXTURES);
    tcase_add_test(tc, format_by_magic_not_extension);
    tcase_add_test(tc, unknown_missing_empty);
    tcase_add_test(tc, truncated_files_fail);
    tcase_add_test(tc, png_any_flipped_byte_fails);
    tcase_add_test(tc, jpeg_flipped_bytes_no_crash);
    tcase_add_test(tc, jpeg_error_names_libjpeg_reason);
    tcase_add_test(tc, write_png_roundtrip_atomic);
    tcase_add_loop_test(tc, resize_matches_pil, 0,
                        (int)(sizeof resize_sizes / sizeof resize_sizes[0]));
    tcase_add_test(tc, expand2square_and_siglip_pixels_match_llava);
    tcase_add_test(tc, expand2square_geometry);
    tcase_add_test(tc, siglip_preprocess_normalizes_chw);
    tcase_add_test(tc, bad_arguments);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return tu_run(suite()); }
