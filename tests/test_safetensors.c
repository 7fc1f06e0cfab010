/* safetensors I/O: reading files written by the Python package (committed
 * fixtures from scripts/make-safetensors-fixtures), writing byte-identical
 * files, round trips, sharded checkpoints, atomic writes, and a table of
 * malformed inputs that must each fail with one message naming the file and
 * the fault. */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/safetensors.h"
#include "util.h"

/* ------------------------------------------------------------- helpers */

/* The fixture generator's values (keep in sync with lcg() there): 24 random
 * bits as a signed fixed-point number, exact in f32, in [-8, 8). */
static void lcg(uint32_t seed, int64_t n, float *out)
{
    uint32_t x = seed;
    for (int64_t i = 0; i < n; i++) {
        x = x * 1664525u + 1013904223u;
        out[i] = (float)((int32_t)(x >> 8) - (1 << 23)) * 0x1p-20f;
    }
}

/* SPECIAL_* of the generator, and what ml_dtypes (bf16) and numpy (f16)
 * round them to. */
static const uint32_t SPECIAL_BF16[] = {0x3F808000, 0x3F818000, 0x3F808001, 0x3F807FFF, 0xBF808000,
                                        0x7F7FFFFF, 0x7F7F7FFF, 0x00000001, 0x00018000, 0x80000000,
                                        0x7F800000, 0xFF800000, 0x7FC00000};
static const uint16_t SPECIAL_BF16_REF[] = {0x3f80, 0x3f82, 0x3f81, 0x3f80, 0xbf80, 0x7f80, 0x7f7f,
                                            0x0000, 0x0002, 0x8000, 0x7f80, 0xff80, 0x7fc0};
static const uint32_t SPECIAL_F16[] = {0x477FE000, 0x477FEFFF, 0x477FF000, 0x33800000, 0x33C00000,
                                       0x33000000, 0x38800000, 0x3F801000, 0x3F803000, 0x322BCC77,
                                       0xC2F6E979, 0x80000000, 0x7FC00000};
static const uint16_t SPECIAL_F16_REF[] = {0x7bff, 0x7bff, 0x7c00, 0x0001, 0x0002, 0x0000, 0x0400,
                                           0x3c00, 0x3c02, 0x0000, 0xd7b7, 0x8000, 0x7e00};
static const uint32_t SPECIAL_F32[] = {0x00000000, 0x80000000, 0x00000001, 0x007FFFFF, 0x7F7FFFFF,
                                       0x7F800000, 0xFF800000, 0x7FC00000, 0x3EAAAAAB};
#define NSPECIAL 13

/* The generator's sharded table: name, shape, dtype, seed, in insertion order. */
static const struct {
    const char *name;
    int ndim;
    int64_t shape[2];
    dvl_dtype dtype;
    uint32_t seed;
} SHARDED[] = {
    {"embed", 2, {4, 6}, DVL_F32, 10},     {"layers.0.w", 2, {6, 6}, DVL_BF16, 11},
    {"layers.0.b", 1, {6}, DVL_F32, 12},   {"layers.1.w", 2, {6, 6}, DVL_F16, 13},
    {"big", 1, {40}, DVL_F32, 14},         {"layers.1.b", 1, {6}, DVL_F32, 15},
    {"norm", 1, {6}, DVL_F32, 16},
};
#define NSHARDED 7

static const char *fixture(const char *name, char *buf, size_t n)
{
    char rel[256];
    snprintf(rel, sizeof rel, "safetensors/%s", name);
    return tu_data_path(rel, buf, n);
}

static bool exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

static void assert_same_file(const char *a, const char *b)
{
    size_t na, nb;
    unsigned char *x = tu_read_file(a, &na), *y = tu_read_file(b, &nb);
    ck_assert_msg(na == nb, "%s is %zu bytes, %s is %zu", a, na, b, nb);
    for (size_t i = 0; i < na; i++)
        ck_assert_msg(x[i] == y[i], "%s and %s differ at byte %zu", a, b, i);
    free(x);
    free(y);
}

typedef struct tmpdir {
    char path[64];
} tmpdir;

static void tmp_make(tmpdir *d)
{
    const char *base = getenv("TMPDIR");
    snprintf(d->path, sizeof d->path, "%s/dvl-st-XXXXXX", base && strlen(base) < 40 ? base : "/tmp");
    ck_assert_ptr_nonnull(mkdtemp(d->path));
}

static const char *tmp_file(const tmpdir *d, const char *name, char *buf, size_t n)
{
    snprintf(buf, n, "%s/%s", d->path, name);
    return buf;
}

/* Remove the folder and the files in it (the tests make no sub-folders). */
static void tmp_remove(tmpdir *d)
{
    DIR *dir = opendir(d->path);
    if (dir) {
        struct dirent *e;
        char p[512];
        while ((e = readdir(dir)))
            if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
                snprintf(p, sizeof p, "%s/%s", d->path, e->d_name);
                if (unlink(p) != 0)
                    rmdir(p);
            }
        closedir(dir);
    }
    rmdir(d->path);
}

static int count_files(const tmpdir *d)
{
    DIR *dir = opendir(d->path);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(dir)))
        n += e->d_name[0] != '.';
    closedir(dir);
    return n;
}

#define ASSERT_MSG_HAS(err, s)                                                                  \
    ck_assert_msg(strstr((err).msg, (s)) != NULL, "message \"%s\" lacks \"%s\"", (err).msg, (s))

/* ------------------------------------------- the Python-written fixture */

START_TEST(reads_python_fixture)
{
    char path[512];
    dvl_err err = {0};
    dvl_st_file *f = dvl_st_open(fixture("python.safetensors", path, sizeof path), &err);
    ck_assert_msg(f != NULL, "%s", err.msg);
    ck_assert_int_eq(dvl_st_count(f), 9);
    ck_assert_str_eq(dvl_st_meta(f, "format"), "np");
    ck_assert_int_eq(dvl_st_meta_count(f), 1);
    /* Sorted by name. */
    for (int i = 1; i < dvl_st_count(f); i++)
        ck_assert(strcmp(dvl_st_tensor_at(f, i - 1)->name, dvl_st_tensor_at(f, i)->name) < 0);

    float src[64], got[64];
    /* F32: bit-exact, including -0, subnormals, infinities and NaN. */
    const dvl_st_tensor *t = dvl_st_find(f, "f32.rand", &err);
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(t->dtype, DVL_ST_F32);
    ck_assert_int_eq(t->ndim, 2);
    ck_assert_int_eq(t->shape[0], 3);
    ck_assert_int_eq(t->shape[1], 5);
    lcg(1, 15, src);
    ck_assert_int_eq(dvl_st_read_f32(f, "f32.rand", got, 15, &err), DVL_OK);
    for (int i = 0; i < 15; i++)
        ck_assert_uint_eq(tu_f32_bits(got[i]), tu_f32_bits(src[i]));
    ck_assert_int_eq(dvl_st_read_f32(f, "f32.special", got, 9, &err), DVL_OK);
    for (int i = 0; i < 9; i++)
        ck_assert_uint_eq(tu_f32_bits(got[i]), SPECIAL_F32[i]);

    /* BF16 written by ml_dtypes: dvl's round-to-nearest-even must give the
     * same bits, and reading widens them exactly. */
    int64_t nb;
    const uint16_t *raw = dvl_st_raw(f, "bf16.rand", &nb, &err);
    ck_assert_ptr_nonnull(raw);
    ck_assert_int_eq(nb, 84);
    t = dvl_st_find(f, "bf16.rand", &err);
    ck_assert_int_eq(t->dtype, DVL_ST_BF16);
    ck_assert_int_eq(t->ndim, 3);
    ck_assert_int_eq(t->shape[2], 7);
    lcg(2, 42, src);
    ck_assert_int_eq(dvl_st_read_f32(f, "bf16.rand", got, 42, &err), DVL_OK);
    for (int i = 0; i < 42; i++) {
        ck_assert_uint_eq(raw[i], dvl_f32_to_bf16(src[i]));
        ck_assert_uint_eq(tu_f32_bits(got[i]), (uint32_t)raw[i] << 16);
    }
    raw = dvl_st_raw(f, "bf16.special", NULL, &err);
    ck_assert_int_eq(dvl_st_read_f32(f, "bf16.special", got, NSPECIAL, &err), DVL_OK);
    for (int i = 0; i < NSPECIAL; i++) {
        ck_assert_uint_eq(raw[i], SPECIAL_BF16_REF[i]);
        ck_assert_uint_eq(dvl_f32_to_bf16(tu_f32_from_bits(SPECIAL_BF16[i])), SPECIAL_BF16_REF[i]);
        ck_assert_uint_eq(tu_f32_bits(got[i]), (uint32_t)raw[i] << 16);
    }

    /* F16 written by numpy. */
    raw = dvl_st_raw(f, "f16.rand", NULL, &err);
    lcg(3, 13, src);
    ck_assert_int_eq(dvl_st_read_f32(f, "f16.rand", got, 13, &err), DVL_OK);
    for (int i = 0; i < 13; i++) {
        ck_assert_uint_eq(raw[i], dvl_f32_to_f16(src[i]));
        ck_assert_uint_eq(tu_f32_bits(got[i]), tu_f32_bits(dvl_f16_to_f32(raw[i])));
        ck_assert(fabsf(got[i] - src[i]) <= 0x1p-8f); /* |x| < 8: half an ulp is 2^-8 */
    }
    raw = dvl_st_raw(f, "f16.special", NULL, &err);
    ck_assert_int_eq(dvl_st_read_f32(f, "f16.special", got, NSPECIAL, &err), DVL_OK);
    for (int i = 0; i < NSPECIAL; i++) {
        ck_assert_uint_eq(raw[i], SPECIAL_F16_REF[i]);
        ck_assert_uint_eq(dvl_f32_to_f16(tu_f32_from_bits(SPECIAL_F16[i])), SPECIAL_F16_REF[i]);
    }
    ck_assert_float_eq(got[0], 65504.0f);
    ck_assert_float_eq(got[3], 0x1p-24f);
    ck_assert_float_eq(got[4], 0x1p-23f);
    ck_assert_float_eq(got[6], 0x1p-14f);
    ck_assert(isinf(got[2]) && isnan(got[12]));

    /* I32 is listed and raw-readable, not readable as f32. */
    const int32_t *ids = dvl_st_raw(f, "i32", &nb, &err);
    ck_assert_int_eq(nb, 16);
    ck_assert_int_eq(ids[2], 2147483647);
    ck_assert_int_eq(ids[3], -2147483647 - 1);
    ck_assert_int_eq(dvl_st_read_f32(f, "i32", got, 4, &err), DVL_EUNSUP);
    ASSERT_MSG_HAS(err, "python.safetensors");
    ASSERT_MSG_HAS(err, "\"i32\" has dtype I32");

    /* A scalar and an empty tensor. */
    t = dvl_st_find(f, "scalar", &err);
    ck_assert_int_eq(t->ndim, 0);
    ck_assert_int_eq(t->numel, 1);
    ck_assert_int_eq(dvl_st_read_f32(f, "scalar", got, 1, &err), DVL_OK);
    ck_assert_float_eq(got[0], 3.25f);
    t = dvl_st_find(f, "empty", &err);
    ck_assert_int_eq(t->ndim, 2);
    ck_assert_int_eq(t->shape[0], 0);
    ck_assert_int_eq(t->numel, 0);
    ck_assert_int_eq(t->nbytes, 0);
    ck_assert_int_eq(dvl_st_read_f32(f, "empty", NULL, 0, &err), DVL_OK);

    /* Lookup and count errors name the file and the tensor. */
    ck_assert_ptr_null(dvl_st_find(f, "nope", &err));
    ASSERT_MSG_HAS(err, "python.safetensors");
    ASSERT_MSG_HAS(err, "no tensor named \"nope\"");
    ck_assert_int_eq(dvl_st_read_f32(f, "f32.rand", got, 16, &err), DVL_EINVAL);
    ASSERT_MSG_HAS(err, "\"f32.rand\" [3, 5] has 15 elements but the caller expects 16");
    dvl_st_close(f);
}
END_TEST

/* The writer given the fixture's f32 values produces the Python package's
 * file byte for byte: order, JSON, padding, BF16/F16 rounding. */
static dvl_st_writer *fixture_writer(float *buf)
{
    dvl_err err = {0};
    dvl_st_writer *w = dvl_st_writer_new();
    float *rand32 = buf, *randbf = buf + 16, *randh = buf + 64, *sp32 = buf + 80,
          *spbf = buf + 96, *sph = buf + 112, *scalar = buf + 128;
    lcg(1, 15, rand32);
    lcg(2, 42, randbf);
    lcg(3, 13, randh);
    for (int i = 0; i < 9; i++)
        sp32[i] = tu_f32_from_bits(SPECIAL_F32[i]);
    for (int i = 0; i < NSPECIAL; i++) {
        spbf[i] = tu_f32_from_bits(SPECIAL_BF16[i]);
        sph[i] = tu_f32_from_bits(SPECIAL_F16[i]);
    }
    scalar[0] = 3.25f;
    static const int32_t ids[4] = {0, -1, 2147483647, -2147483647 - 1};
    int64_t s35[2] = {3, 5}, s9 = 9, s237[3] = {2, 3, 7}, s13 = 13, s4 = 4, s03[2] = {0, 3};
    /* Added in an order unlike the file's, to check the writer sorts. */
    ck_assert_int_eq(dvl_st_writer_add(w, "f16.special", DVL_F16, 1, &s13, sph, &err), DVL_OK);
    ck_assert_int_eq(dvl_st_writer_add(w, "bf16.rand", DVL_BF16, 3, s237, randbf, &err), DVL_OK);
    ck_assert_int_eq(dvl_st_writer_add(w, "scalar", DVL_F32, 0, NULL, scalar, &err), DVL_OK);
    ck_assert_int_eq(dvl_st_writer_add_raw(w, "i32", DVL_I32, 1, &s4, ids, &err), DVL_OK);
    ck_assert_int_eq(dvl_st_writer_add(w, "f32.special", DVL_F32, 1, &s9, sp32, &err), DVL_OK);
    ck_assert_int_eq(dvl_st_writer_add(w, "f16.rand", DVL_F16, 1, &s13, randh, &err), DVL_OK);
    ck_assert_int_eq(dvl_st_writer_add(w, "empty", DVL_F32, 2, s03, NULL, &err), DVL_OK);
    ck_assert_int_eq(dvl_st_writer_add(w, "bf16.special", DVL_BF16, 1, &s13, spbf, &err), DVL_OK);
    ck_assert_int_eq(dvl_st_writer_add(w, "f32.rand", DVL_F32, 2, s35, rand32, &err), DVL_OK);
    ck_assert_int_eq(dvl_st_writer_meta(w, "format", "pt", &err), DVL_OK);
    ck_assert_int_eq(dvl_st_writer_meta(w, "format", "np", &err), DVL_OK); /* replaces */
    return w;
}

START_TEST(writer_matches_python_bytes)
{
    tmpdir d;
    tmp_make(&d);
    char out[512], ref[512];
    float buf[160];
    dvl_err err = {0};
    dvl_st_writer *w = fixture_writer(buf);
    tmp_file(&d, "python.safetensors", out, sizeof out);
    ck_assert_msg(dvl_st_writer_save(w, out, &err) == DVL_OK, "%s", err.msg);
    assert_same_file(out, fixture("python.safetensors", ref, sizeof ref));
    ck_assert_int_eq(count_files(&d), 1); /* no .tmp left behind */
    dvl_st_writer_free(w);
    tmp_remove(&d);
}
END_TEST

/* ----------------------------------------------------------- round trip */

START_TEST(roundtrip_odd_shapes)
{
    static const int64_t shapes[][3] = {{7, 0, 0}, {13, 3, 0}, {3, 1, 5}, {1, 0, 0}, {0, 0, 0}};
    static const int ndims[] = {1, 2, 3, 1, 0};
    static const dvl_dtype stores[] = {DVL_F32, DVL_BF16, DVL_F16};
    /* Names and metadata that need JSON escaping and are not ASCII. */
    static const char *const names[] = {"w \"q\"\\", "tab\there", "ctl\x01\x1f", "caf\xc3\xa9",
                                        "emoji \xf0\x9f\x98\x80"};
    tmpdir d;
    tmp_make(&d);
    char path[512];
    tmp_file(&d, "rt.safetensors", path, sizeof path);
    dvl_err err = {0};
    float src[3][5][64], got[64];
    dvl_st_writer *w = dvl_st_writer_new();
    char name[64];
    for (int s = 0; s < 3; s++)
        for (int k = 0; k < 5; k++) {
            lcg((uint32_t)(100 + 10 * s + k), 64, src[s][k]);
            for (int i = 0; i < 64; i++) /* spread the exponents */
                src[s][k][i] = ldexpf(src[s][k][i], (i % 9) - 4);
            snprintf(name, sizeof name, "%s.%s", dvl_dtype_name(stores[s]), names[k]);
            ck_assert_msg(dvl_st_writer_add(w, name, stores[s], ndims[k], shapes[k], src[s][k],
                                            &err) == DVL_OK,
                          "%s", err.msg);
        }
    ck_assert_int_eq(dvl_st_writer_meta(w, "note \"x\"\n", "v\\al\x02 \xc3\xa9", &err), DVL_OK);
    ck_assert_int_eq(dvl_st_writer_meta(w, "a", "first", &err), DVL_OK);
    ck_assert_int_eq(dvl_st_writer_save(w, path, &err), DVL_OK);
    dvl_st_writer_free(w);

    /* The header is padded so the data buffer starts 8-byte aligned. */
    size_t n;
    unsigned char *bytes = tu_read_file(path, &n);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | bytes[i];
    ck_assert_uint_eq(hlen % 8, 0);
    ck_assert(bytes[8 + hlen - 1] == '}' || bytes[8 + hlen - 1] == ' ');
    free(bytes);

    dvl_st_file *f = dvl_st_open(path, &err);
    ck_assert_msg(f != NULL, "%s", err.msg);
    ck_assert_int_eq(dvl_st_count(f), 15);
    ck_assert_str_eq(dvl_st_meta(f, "note \"x\"\n"), "v\\al\x02 \xc3\xa9");
    const char *k0, *v0;
    dvl_st_meta_at(f, 0, &k0, &v0);
    ck_assert_str_eq(k0, "a");
    ck_assert_str_eq(v0, "first");
    for (int s = 0; s < 3; s++)
        for (int k = 0; k < 5; k++) {
            snprintf(name, sizeof name, "%s.%s", dvl_dtype_name(stores[s]), names[k]);
            const dvl_st_tensor *t = dvl_st_find(f, name, &err);
            ck_assert_msg(t != NULL, "%s", err.msg);
            ck_assert_int_eq(t->ndim, ndims[k]);
            int64_t numel = 1;
            for (int i = 0; i < ndims[k]; i++) {
                ck_assert_int_eq(t->shape[i], shapes[k][i]);
                numel *= shapes[k][i];
            }
            ck_assert_int_eq(t->numel, numel);
            ck_assert_int_eq(dvl_st_read_f32(f, name, got, numel, &err), DVL_OK);
            for (int64_t i = 0; i < numel; i++) {
                float x = src[s][k][i];
                float want = stores[s] == DVL_F32    ? x
                             : stores[s] == DVL_BF16 ? dvl_bf16_to_f32(dvl_f32_to_bf16(x))
                                                     : dvl_f16_to_f32(dvl_f32_to_f16(x));
                ck_assert_uint_eq(tu_f32_bits(got[i]), tu_f32_bits(want));
                /* Round to nearest: within half an ulp of the stored type
                 * (8 and 11 significant bits; f16 spacing is 2^-24 at
                 * least, in its subnormals). */
                float ulp = stores[s] == DVL_BF16 ? 0x1p-7f : stores[s] == DVL_F16 ? 0x1p-10f : 0;
                float spacing = x == 0 ? 0 : ulp * ldexpf(1.0f, ilogbf(x));
                if (stores[s] == DVL_F16 && spacing < 0x1p-24f)
                    spacing = 0x1p-24f;
                ck_assert(fabsf(got[i] - x) <= 0.5f * spacing);
            }
        }
    dvl_st_close(f);
    tmp_remove(&d);
}
END_TEST

/* bf16 rounding through the writer, against hand-derived bits. */
START_TEST(writer_bf16_rounds_to_nearest_even)
{
    static const uint32_t in[] = {0x3f808000, 0x3f818000, 0x3f80ffff, 0x3f7fffff, 0xc0008000,
                                  0x7f7fffff, 0x00008000, 0x00018000};
    static const uint16_t want[] = {0x3f80, 0x3f82, 0x3f81, 0x3f80, 0xc000, 0x7f80, 0x0000, 0x0002};
    float x[8];
    for (int i = 0; i < 8; i++)
        x[i] = tu_f32_from_bits(in[i]);
    tmpdir d;
    tmp_make(&d);
    char path[512];
    tmp_file(&d, "bf.safetensors", path, sizeof path);
    dvl_err err = {0};
    dvl_st_writer *w = dvl_st_writer_new();
    int64_t n = 8;
    ck_assert_int_eq(dvl_st_writer_add(w, "x", DVL_BF16, 1, &n, x, &err), DVL_OK);
    ck_assert_int_eq(dvl_st_writer_save(w, path, &err), DVL_OK);
    dvl_st_writer_free(w);
    dvl_st_file *f = dvl_st_open(path, &err);
    const uint16_t *raw = dvl_st_raw(f, "x", NULL, &err);
    for (int i = 0; i < 8; i++)
        ck_assert_msg(raw[i] == want[i], "0x%08x -> 0x%04x, want 0x%04x", in[i], raw[i], want[i]);
    dvl_st_close(f);
    tmp_remove(&d);
}
END_TEST

/* A writer other than the reference one may leave the data unaligned (no
 * padding): reading must still be exact (and UBSan-clean). */
START_TEST(reads_unaligned_data)
{
    const char *hdr = "{\"b\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[0,6]},"
                      "\"f\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[6,14]},"
                      "\"h\":{\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[14,16]}} ";
    size_t hl = strlen(hdr);
    ck_assert_uint_ne(hl % 2, 0); /* odd: every tensor is misaligned */
    unsigned char buf[512] = {0};
    for (int i = 0; i < 8; i++)
        buf[i] = (unsigned char)((uint64_t)hl >> (8 * i));
    memcpy(buf + 8, hdr, hl);
    unsigned char *data = buf + 8 + hl;
    uint16_t b[3] = {0x3f80, 0xc040, 0x0001};
    float fv[2] = {1.5f, -0x1p-130f};
    uint16_t h = 0x3c01;
    memcpy(data, b, 6);
    memcpy(data + 6, fv, 8);
    memcpy(data + 14, &h, 2);
    tmpdir d;
    tmp_make(&d);
    char path[512];
    tu_write_file(tmp_file(&d, "unaligned.safetensors", path, sizeof path), buf, 8 + hl + 16);
    dvl_err err = {0};
    dvl_st_file *f = dvl_st_open(path, &err);
    ck_assert_msg(f != NULL, "%s", err.msg);
    float got[3];
    ck_assert_int_eq(dvl_st_read_f32(f, "b", got, 3, &err), DVL_OK);
    ck_assert_float_eq(got[0], 1.0f);
    ck_assert_float_eq(got[1], -3.0f);
    ck_assert_uint_eq(tu_f32_bits(got[2]), 0x00010000u);
    ck_assert_int_eq(dvl_st_read_f32(f, "f", got, 2, &err), DVL_OK);
    ck_assert_float_eq(got[0], 1.5f);
    ck_assert_float_eq(got[1], -0x1p-130f);
    ck_assert_int_eq(dvl_st_read_f32(f, "h", got, 1, &err), DVL_OK);
    ck_assert_float_eq(got[0], 1.0f + 0x1p-10f);
    dvl_st_close(f);
    tmp_remove(&d);
}
END_TEST

/* Large tensors go through the blocked, parallel conversion paths. */
START_TEST(roundtrip_large_blocks)
{
    int64_t n = 3 * 8192 * 17 + 5; /* many read blocks, not a multiple of any */
    float *x = malloc((size_t)n * sizeof *x), *y = malloc((size_t)n * sizeof *y);
    lcg(7, n, x);
    tmpdir d;
    tmp_make(&d);
    char path[512];
    tmp_file(&d, "large.safetensors", path, sizeof path);
    dvl_err err = {0};
    dvl_st_writer *w = dvl_st_writer_new();
    ck_assert_int_eq(dvl_st_writer_add(w, "bf", DVL_BF16, 1, &n, x, &err), DVL_OK);
    ck_assert_int_eq(dvl_st_writer_add(w, "h", DVL_F16, 1, &n, x, &err), DVL_OK);
    ck_assert_int_eq(dvl_st_writer_save(w, path, &err), DVL_OK);
    dvl_st_writer_free(w);
    dvl_st_file *f = dvl_st_open(path, &err);
    /* Count mismatches and assert once: every ck_assert costs a syscall. */
    int64_t bad = 0;
    ck_assert_int_eq(dvl_st_read_f32(f, "bf", y, n, &err), DVL_OK);
    for (int64_t i = 0; i < n; i++)
        bad += tu_f32_bits(y[i]) != tu_f32_bits(dvl_bf16_to_f32(dvl_f32_to_bf16(x[i])));
    ck_assert_int_eq(dvl_st_read_f32(f, "h", y, n, &err), DVL_OK);
    for (int64_t i = 0; i < n; i++)
        bad += tu_f32_bits(y[i]) != tu_f32_bits(dvl_f16_to_f32(dvl_f32_to_f16(x[i])));
    ck_assert_int_eq(bad, 0);
    dvl_st_close(f);
    tmp_remove(&d);
    free(x);
    free(y);
}
END_TEST

/* Every dtype of the format is recognised and sized; only F32/BF16/F16 read
 * as f32. */
START_TEST(all_dtypes_listed)
{
    char hdr[2048] = "{";
    int64_t off = 0;
    for (int t = 0; t < DVL_ST_NDTYPES; t++) {
        int64_t nb = 4 * dvl_st_dtype_bits((dvl_st_dtype)t) / 8; /* 4 elements */
        snprintf(hdr + strlen(hdr), sizeof hdr - strlen(hdr),
                 "%s\"t%02d\":{\"dtype\":\"%s\",\"shape\":[2,2],\"data_offsets\":[%lld,%lld]}",
                 t ? "," : "", t, dvl_st_dtype_name((dvl_st_dtype)t), (long long)off,
                 (long long)(off + nb));
        off += nb;
    }
    strcat(hdr, "}");
    size_t hl = strlen(hdr);
    unsigned char *buf = calloc(1, 8 + hl + (size_t)off);
    for (int i = 0; i < 8; i++)
        buf[i] = (unsigned char)((uint64_t)hl >> (8 * i));
    memcpy(buf + 8, hdr, hl);
    tmpdir d;
    tmp_make(&d);
    char path[512];
    tu_write_file(tmp_file(&d, "dtypes.safetensors", path, sizeof path), buf, 8 + hl + (size_t)off);
    free(buf);
    dvl_err err = {0};
    dvl_st_file *f = dvl_st_open(path, &err);
    ck_assert_msg(f != NULL, "%s", err.msg);
    ck_assert_int_eq(dvl_st_count(f), DVL_ST_NDTYPES);
    float got[4];
    for (int t = 0; t < DVL_ST_NDTYPES; t++) {
        const dvl_st_tensor *x = dvl_st_tensor_at(f, t);
        ck_assert_int_eq(x->dtype, t);
        ck_assert_int_eq(x->numel, 4);
        int rc = dvl_st_tensor_read_f32(x, got, 4, &err);
        bool f32able = t == DVL_ST_F32 || t == DVL_ST_BF16 || t == DVL_ST_F16;
        ck_assert_int_eq(rc, f32able ? DVL_OK : DVL_EUNSUP);
        if (!f32able)
            ASSERT_MSG_HAS(err, dvl_st_dtype_name((dvl_st_dtype)t));
    }
    dvl_st_close(f);
    tmp_remove(&d);
}
END_TEST

/* -------------------------------------------------------- malformed input */

typedef struct bad_case {
    const char *name;
    const char *header;
    size_t header_len; /* 0: strlen(header) */
    uint64_t len_field; /* 0: the header's length */
    size_t data_len;
    const char *phrase;
} bad_case;

#define T1(dt, shape, off) "{\"a\":{\"dtype\":" dt ",\"shape\":" shape ",\"data_offsets\":" off "}}"
static const bad_case BAD[] = {
    {"not-json", "this is not json", 0, 0, 0, "header is not valid JSON"},
    {"empty-header", "", 0, 0, 0, "header is not valid JSON"},
    {"unterminated", "{\"a\":{\"dtype\":\"F32\"", 0, 0, 0, "header is not valid JSON"},
    {"not-object", "[1, 2]", 0, 0, 0, "header is not a JSON object"},
    {"after-object", "{} x", 0, 0, 0, "data after the object"},
    {"nul-after-object", "{}\0\0\0\0\0\0", 8, 0, 0, "control byte 0x00"},
    {"control-in-name", "{\"a\x01\":{}}", 0, 0, 0, "control byte 0x01"},
    {"bad-utf8", "{\"\xff\":{}}", 0, 0, 0, "not valid UTF-8"},
    {"surrogate-utf8", "{\"\xed\xa0\x80\":{}}", 0, 0, 0, "not valid UTF-8"},
    {"header-too-large", "{}", 0, 100000001ull, 0, "exceeds the format's limit"},
    {"header-past-eof", "{}", 0, 3000, 0, "truncated"},
    {"header-len-huge", "{}", 0, 0xffffffffffffffffull, 0, "exceeds the format's limit"},
    {"bad-dtype", T1("\"F33\"", "[2]", "[0,8]"), 0, 0, 8, "tensor \"a\": unknown dtype \"F33\""},
    {"lowercase-dtype", T1("\"f32\"", "[2]", "[0,8]"), 0, 0, 8, "unknown dtype \"f32\""},
    {"dtype-not-string", T1("32", "[2]", "[0,8]"), 0, 0, 8, "tensor \"a\": dtype is not a string"},
    {"missing-dtype", "{\"a\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 0, 0, 8,
     "tensor \"a\": missing \"dtype\""},
    {"missing-shape", "{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", 0, 0, 8,
     "tensor \"a\": missing \"shape\""},
    {"missing-offsets", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", 0, 0, 8,
     "tensor \"a\": missing \"data_offsets\""},
    {"entry-not-object", "{\"a\":[1]}", 0, 0, 0, "tensor \"a\": entry is not a JSON object"},
    {"negative-shape", T1("\"F32\"", "[-2]", "[0,8]"), 0, 0, 8,
     "tensor \"a\": shape[0] is not a non-negative integer"},
    {"fractional-shape", T1("\"F32\"", "[2, 1.5]", "[0,8]"), 0, 0, 8,
     "tensor \"a\": shape[1] is not a non-negative integer"},
    {"string-shape", T1("\"F32\"", "[\"2\"]", "[0,8]"), 0, 0, 8, "shape[0] is not a non-negative"},
    {"shape-not-array", T1("\"F32\"", "2", "[0,8]"), 0, 0, 8, "tensor \"a\": shape is not an array"},
    {"shape-overflow", T1("\"F32\"", "[4294967296,4294967296,4]", "[0,8]"), 0, 0, 8,
     "more elements than fit in 64 bits"},
    {"offsets-single", T1("\"F32\"", "[2]", "[8]"), 0, 0, 8, "data_offsets is not a pair"},
    {"offsets-triple", T1("\"F32\"", "[2]", "[0,8,8]"), 0, 0, 8, "data_offsets is not a pair"},
    {"offsets-negative", T1("\"F32\"", "[2]", "[-8,0]"), 0, 0, 8, "data_offsets is not a pair"},
    {"offsets-out-of-range", T1("\"F32\"", "[2]", "[0,1000]"), 0, 0, 8,
     "tensor \"a\": data_offsets [0, 1000] run past the end of the 8-byte data buffer"},
    {"offsets-reversed", T1("\"F32\"", "[2]", "[8,0]"), 0, 0, 8, "end before they begin"},
    {"size-mismatch", T1("\"F32\"", "[3]", "[0,8]"), 0, 0, 8,
     "tensor \"a\": size mismatch: F32 [3] needs 12 bytes but data_offsets [0, 8] hold 8"},
    {"subbyte-odd", T1("\"F4\"", "[3]", "[0,2]"), 0, 0, 2, "not a whole number of bytes"},
    {"overlap",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
     "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
     0, 0, 12, "tensors \"a\" [0, 8] and \"b\" [4, 12] overlap"},
    {"same-offsets",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
     "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
     0, 0, 8, "overlap"},
    {"gap", T1("\"F32\"", "[2]", "[4,12]"), 0, 0, 12, "bytes [0, 4) before tensor \"a\""},
    {"trailing-bytes", T1("\"F32\"", "[2]", "[0,8]"), 0, 0, 12, "4 trailing bytes"},
    {"duplicate-key",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
     "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}",
     0, 0, 16, "duplicate key \"a\" in the header"},
    {"duplicate-field", "{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F16\",\"shape\":[2],"
                        "\"data_offsets\":[0,8]}}",
     0, 0, 8, "tensor \"a\": duplicate key \"dtype\""},
    {"duplicate-metadata", "{\"__metadata__\":{},\"__metadata__\":{}}", 0, 0, 0,
     "duplicate key \"__metadata__\""},
    {"metadata-dup-key", "{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}}", 0, 0, 0,
     "\"__metadata__\" has the key \"k\" twice"},
    {"metadata-not-string", "{\"__metadata__\":{\"k\":1}}", 0, 0, 0,
     "\"__metadata__\" value of \"k\" is not a string"},
    {"metadata-not-object", "{\"__metadata__\":[\"k\"]}", 0, 0, 0,
     "\"__metadata__\" is not an object"},
};
#undef T1

START_TEST(malformed_headers)
{
    tmpdir d;
    tmp_make(&d);
    for (size_t c = 0; c < sizeof BAD / sizeof BAD[0]; c++) {
        const bad_case *b = &BAD[c];
        size_t hl = b->header_len ? b->header_len : strlen(b->header);
        uint64_t lf = b->len_field ? b->len_field : hl;
        size_t n = 8 + hl + b->data_len;
        unsigned char *buf = calloc(1, n);
        for (int i = 0; i < 8; i++)
            buf[i] = (unsigned char)(lf >> (8 * i));
        memcpy(buf + 8, b->header, hl);
        char file[96], path[512];
        snprintf(file, sizeof file, "bad-%s.safetensors", b->name);
        tu_write_file(tmp_file(&d, file, path, sizeof path), buf, n);
        free(buf);
        dvl_err err = {0};
        dvl_st_file *f = dvl_st_open(path, &err);
        ck_assert_msg(f == NULL, "%s: opened", b->name);
        ck_assert_msg(err.code == DVL_EIO, "%s: code %d (%s)", b->name, err.code, err.msg);
        ck_assert_msg(strstr(err.msg, file) && strstr(err.msg, b->phrase),
                      "%s: message \"%s\" lacks the file name or \"%s\"", b->name, err.msg,
                      b->phrase);
        ck_assert_msg(!strchr(err.msg, '\n'), "%s: message is not one line", b->name);
        /* The checkpoint view reports the same. */
        dvl_err err2 = {0};
        ck_assert_ptr_null(dvl_st_index_open(path, &err2));
        ck_assert_str_eq(err2.msg, err.msg);
    }
    tmp_remove(&d);
}
END_TEST

/* The Python fixture cut short at every length fails cleanly; at the three
 * kinds of place (inside the length field, the header, the data) the
 * message says it is truncated. */
START_TEST(truncated_files)
{
    char ref[512], path[512];
    size_t n;
    unsigned char *bytes = tu_read_file(fixture("python.safetensors", ref, sizeof ref), &n);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--)
        hl = hl << 8 | bytes[i];
    tmpdir d;
    tmp_make(&d);
    tmp_file(&d, "cut.safetensors", path, sizeof path);
    for (size_t cut = 0; cut < n; cut++) {
        tu_write_file(path, bytes, cut);
        dvl_err err = {0};
        dvl_st_file *f = dvl_st_open(path, &err);
        ck_assert_msg(f == NULL, "cut at %zu of %zu opened", cut, n);
        ck_assert_msg(strstr(err.msg, "cut.safetensors") != NULL, "cut %zu: %s", cut, err.msg);
        ck_assert_msg(strstr(err.msg, "truncated") != NULL, "cut %zu: %s", cut, err.msg);
    }
    static const char *const where[] = {"too short for the 8-byte header length",
                                        "after the length field", "run past the end"};
    size_t cuts[] = {3, 8 + hl / 2, n - 1};
    for (int k = 0; k < 3; k++) {
        tu_write_file(path, bytes, cuts[k]);
        dvl_err err = {0};
        ck_assert_ptr_null(dvl_st_open(path, &err));
        ASSERT_MSG_HAS(err, where[k]);
    }
    /* The whole file opens. */
    tu_write_file(path, bytes, n);
    dvl_err err = {0};
    dvl_st_file *f = dvl_st_open(path, &err);
    ck_assert_msg(f != NULL, "%s", err.msg);
    dvl_st_close(f);
    free(bytes);
    tmp_remove(&d);
}
END_TEST

START_TEST(open_errors)
{
    tmpdir d;
    tmp_make(&d);
    char path[512];
    dvl_err err = {0};
    ck_assert_ptr_null(dvl_st_open(tmp_file(&d, "absent.safetensors", path, sizeof path), &err));
    ck_assert_int_eq(err.code, DVL_EIO);
    ASSERT_MSG_HAS(err, "absent.safetensors: cannot open: No such file");
    ck_assert_ptr_null(dvl_st_open(d.path, &err));
    ASSERT_MSG_HAS(err, "not a regular file");
    tmp_remove(&d);
}
END_TEST

/* ------------------------------------------------------------- sharded */

static void check_sharded_values(dvl_st_index *ix)
{
    dvl_err err = {0};
    float src[64], got[64];
    for (int k = 0; k < NSHARDED; k++) {
        int64_t n = SHARDED[k].shape[0] * (SHARDED[k].ndim == 2 ? SHARDED[k].shape[1] : 1);
        lcg(SHARDED[k].seed, n, src);
        const dvl_st_tensor *t = dvl_st_index_find(ix, SHARDED[k].name, &err);
        ck_assert_msg(t != NULL, "%s", err.msg);
        ck_assert_int_eq(t->ndim, SHARDED[k].ndim);
        ck_assert_int_eq(dvl_st_index_read_f32(ix, SHARDED[k].name, got, n, &err), DVL_OK);
        for (int64_t i = 0; i < n; i++) {
            float x = src[i];
            float want = SHARDED[k].dtype == DVL_F32    ? x
                         : SHARDED[k].dtype == DVL_BF16 ? dvl_bf16_to_f32(dvl_f32_to_bf16(x))
                                                        : dvl_f16_to_f32(dvl_f32_to_f16(x));
            ck_assert_uint_eq(tu_f32_bits(got[i]), tu_f32_bits(want));
        }
    }
}

START_TEST(reads_sharded_fixture)
{
    char dir[512];
    dvl_err err = {0};
    dvl_st_index *ix = dvl_st_open_dir(fixture("sharded", dir, sizeof dir), &err);
    ck_assert_msg(ix != NULL, "%s", err.msg);
    ck_assert(dvl_st_index_is_sharded(ix));
    ck_assert_int_eq(dvl_st_index_count(ix), NSHARDED);
    ck_assert_str_eq(dvl_st_index_name(ix, 0), "big");
    ck_assert_str_eq(dvl_st_index_name(ix, 6), "norm");
    const char *file = dvl_st_index_file_of(ix, "big");
    ck_assert_ptr_nonnull(strstr(file, "/model-00003-of-00004.safetensors"));
    ck_assert_ptr_null(dvl_st_index_file_of(ix, "nope"));
    check_sharded_values(ix);
    ck_assert_int_eq(dvl_st_index_verify(ix, &err), DVL_OK);
    ck_assert_ptr_null(dvl_st_index_find(ix, "nope", &err));
    ASSERT_MSG_HAS(err, "model.safetensors.index.json: no tensor named \"nope\"");
    dvl_st_index_close(ix);
}
END_TEST

static dvl_st_writer *sharded_writer(float buf[][64])
{
    dvl_err err = {0};
    dvl_st_writer *w = dvl_st_writer_new();
    for (int k = 0; k < NSHARDED; k++) {
        lcg(SHARDED[k].seed, 64, buf[k]);
        ck_assert_int_eq(dvl_st_writer_add(w, SHARDED[k].name, SHARDED[k].dtype, SHARDED[k].ndim,
                                           SHARDED[k].shape, buf[k], &err),
                         DVL_OK);
    }
    ck_assert_int_eq(dvl_st_writer_meta(w, "format", "np", &err), DVL_OK);
    return w;
}

/* Same split as huggingface_hub (with a tensor above the limit), same shard
 * bytes as the Python package, same index text as transformers. */
START_TEST(sharded_writer_matches_python)
{
    static const char *const files[] = {
        "model-00001-of-00004.safetensors", "model-00002-of-00004.safetensors",
        "model-00003-of-00004.safetensors", "model-00004-of-00004.safetensors",
        "model.safetensors.index.json"};
    float buf[NSHARDED][64];
    dvl_st_writer *w = sharded_writer(buf);
    tmpdir d;
    tmp_make(&d);
    dvl_err err = {0};
    ck_assert_msg(dvl_st_writer_save_sharded(w, d.path, 128, &err) == DVL_OK, "%s", err.msg);
    ck_assert_int_eq(count_files(&d), 5);
    for (int i = 0; i < 5; i++) {
        char a[512], b[512], rel[128];
        snprintf(rel, sizeof rel, "sharded/%s", files[i]);
        assert_same_file(tmp_file(&d, files[i], a, sizeof a), fixture(rel, b, sizeof b));
    }
    dvl_st_index *ix = dvl_st_open_dir(d.path, &err);
    ck_assert_msg(ix != NULL, "%s", err.msg);
    check_sharded_values(ix);
    dvl_st_index_close(ix);
    dvl_st_writer_free(w);
    tmp_remove(&d);
}
END_TEST

/* Saving into a folder leaves exactly one checkpoint that open_dir finds:
 * a single file replaces an index and its shards and the other way round;
 * files with other names are left alone. */
START_TEST(sharded_save_replaces_previous)
{
    float buf[NSHARDED][64];
    dvl_st_writer *w = sharded_writer(buf);
    tmpdir d;
    tmp_make(&d);
    char p[512];
    tu_write_file(tmp_file(&d, "notes.txt", p, sizeof p), "x", 1);
    tu_write_file(tmp_file(&d, "model-00001-of-00004.safetensors.bak", p, sizeof p), "x", 1);
    dvl_err err = {0};
    ck_assert_int_eq(dvl_st_writer_save_sharded(w, d.path, 1 << 20, &err), DVL_OK);
    ck_assert(exists(tmp_file(&d, "model.safetensors", p, sizeof p)));
    ck_assert_int_eq(count_files(&d), 3);
    dvl_st_index *ix = dvl_st_open_dir(d.path, &err);
    ck_assert(!dvl_st_index_is_sharded(ix));
    check_sharded_values(ix);
    dvl_st_index_close(ix);

    /* A stale shard of another split is removed too. */
    tu_write_file(tmp_file(&d, "model-00007-of-00009.safetensors", p, sizeof p), "x", 1);
    ck_assert_int_eq(dvl_st_writer_save_sharded(w, d.path, 128, &err), DVL_OK);
    ck_assert(!exists(tmp_file(&d, "model.safetensors", p, sizeof p)));
    ck_assert(!exists(tmp_file(&d, "model-00007-of-00009.safetensors", p, sizeof p)));
    ck_assert_int_eq(count_files(&d), 7);
    ix = dvl_st_open_dir(d.path, &err);
    ck_assert(dvl_st_index_is_sharded(ix));
    check_sharded_values(ix);
    dvl_st_index_close(ix);

    ck_assert_int_eq(dvl_st_writer_save_sharded(w, d.path, 1 << 20, &err), DVL_OK);
    ck_assert(!exists(tmp_file(&d, "model.safetensors.index.json", p, sizeof p)));
    ck_assert_int_eq(count_files(&d), 3);
    ck_assert(exists(tmp_file(&d, "model-00001-of-00004.safetensors.bak", p, sizeof p)));

    ck_assert_int_eq(dvl_st_writer_save_sharded(w, d.path, 0, &err), DVL_EINVAL);
    ASSERT_MSG_HAS(err, "max shard size 0");
    dvl_st_writer_free(w);
    tmp_remove(&d);
}
END_TEST

/* Copy the fixture shards (except `skip`) into d and write index text. */
static void sharded_copy(const tmpdir *d, const char *skip, const char *index)
{
    for (int s = 1; s <= 4; s++) {
        char name[64], rel[96], src[512], dst[512];
        snprintf(name, sizeof name, "model-%05d-of-00004.safetensors", s);
        if (skip && strcmp(name, skip) == 0)
            continue;
        snprintf(rel, sizeof rel, "sharded/%s", name);
        size_t n;
        unsigned char *b = tu_read_file(fixture(rel, src, sizeof src), &n);
        tu_write_file(tmp_file(d, name, dst, sizeof dst), b, n);
        free(b);
    }
    char p[512];
    tu_write_file(tmp_file(d, "model.safetensors.index.json", p, sizeof p), index, strlen(index));
}

START_TEST(index_errors)
{
    char ixpath[512];
    size_t n;
    char *good =
        tu_read_file(fixture("sharded/model.safetensors.index.json", ixpath, sizeof ixpath), &n);
    good[n] = '\0';
    static const struct {
        const char *index; /* NULL: the fixture's */
        const char *skip;  /* shard file not copied */
        const char *phrase;
    } cases[] = {
        {NULL, "model-00002-of-00004.safetensors",
         "shard model-00002-of-00004.safetensors (holding \"layers.0.b\" and 1 more tensors) is "
         "missing: No such file"},
        {"{\"weight_map\": {\"a\": \"model-00001-of-00004.safetensors\"", NULL, "not valid JSON"},
        {"[]", NULL, "not a JSON object"},
        {"{\"metadata\": {}}", NULL, "missing \"weight_map\" object"},
        {"{\"weight_map\": {\"a\": \"../model-00001-of-00004.safetensors\"}}", NULL,
         "weight map entry \"a\" is not the file name of a shard"},
        {"{\"weight_map\": {\"a\": 3}}", NULL, "weight map entry \"a\""},
        {"{\"weight_map\": {\"a\": \"model-00001-of-00004.safetensors\", "
         "\"a\": \"model-00002-of-00004.safetensors\"}}",
         NULL, "duplicate tensor \"a\" in the weight map"},
        {"{\"weight_map\": {}, \"weight_map\": {}}", NULL, "duplicate key \"weight_map\""},
        {"{\"weight_map\": {}} x", NULL, "data after the object"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        tmpdir d;
        tmp_make(&d);
        sharded_copy(&d, cases[c].skip, cases[c].index ? cases[c].index : good);
        dvl_err err = {0};
        ck_assert_ptr_null(dvl_st_open_dir(d.path, &err));
        ck_assert_int_eq(err.code, DVL_EIO);
        ck_assert_msg(strstr(err.msg, "model.safetensors.index.json: ") &&
                          strstr(err.msg, cases[c].phrase),
                      "case %zu: \"%s\" lacks \"%s\"", c, err.msg, cases[c].phrase);
        tmp_remove(&d);
    }

    /* Listed in the index but not in its shard; and a corrupt shard. */
    tmpdir d;
    tmp_make(&d);
    sharded_copy(&d, NULL,
                 "{\"weight_map\": {\"embed\": \"model-00001-of-00004.safetensors\", "
                 "\"ghost\": \"model-00001-of-00004.safetensors\", "
                 "\"norm\": \"model-00004-of-00004.safetensors\"}}");
    char p[512];
    tu_write_file(tmp_file(&d, "model-00004-of-00004.safetensors", p, sizeof p),
                  "\x03\0\0\0\0\0\0\0{}", 10);
    dvl_err err = {0};
    dvl_st_index *ix = dvl_st_open_dir(d.path, &err);
    ck_assert_msg(ix != NULL, "%s", err.msg);
    float x[24];
    ck_assert_int_eq(dvl_st_index_read_f32(ix, "embed", x, 24, &err), DVL_OK);
    ck_assert_ptr_null(dvl_st_index_find(ix, "ghost", &err));
    ASSERT_MSG_HAS(err, "model.safetensors.index.json: tensor \"ghost\" is listed for shard "
                        "model-00001-of-00004.safetensors, but the shard has no such tensor");
    ck_assert_int_eq(dvl_st_index_read_f32(ix, "norm", x, 6, &err), DVL_EIO);
    ASSERT_MSG_HAS(err, "model-00004-of-00004.safetensors: header length 3 exceeds");
    ck_assert_int_eq(dvl_st_index_verify(ix, &err), DVL_EIO);
    ASSERT_MSG_HAS(err, "ghost");
    dvl_st_index_close(ix);
    tmp_remove(&d);

    /* A folder with no checkpoint. */
    tmp_make(&d);
    ck_assert_ptr_null(dvl_st_open_dir(d.path, &err));
    ASSERT_MSG_HAS(err, "no model.safetensors or model.safetensors.index.json");
    tmp_remove(&d);
    free(good);
}
END_TEST

/* ------------------------------------------------------ atomic writing */

START_TEST(failed_save_leaves_old_file)
{
    tmpdir d;
    tmp_make(&d);
    char path[512], tmp[600], ref[512];
    tmp_file(&d, "ckpt.safetensors", path, sizeof path);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    float buf[160];
    dvl_err err = {0};
    dvl_st_writer *w = fixture_writer(buf);
    ck_assert_int_eq(dvl_st_writer_save(w, path, &err), DVL_OK);

    /* A write that fails half way (the file size limit stands in for a full
     * disk): the previous file stays, the tmp file goes. */
    int64_t n = 4096;
    float *big = calloc((size_t)n, sizeof *big);
    dvl_st_writer *w2 = dvl_st_writer_new();
    ck_assert_int_eq(dvl_st_writer_add(w2, "big", DVL_F32, 1, &n, big, &err), DVL_OK);
    struct rlimit old;
    getrlimit(RLIMIT_FSIZE, &old);
    struct rlimit lim = {2000, old.rlim_max};
    void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
    setrlimit(RLIMIT_FSIZE, &lim);
    int rc = dvl_st_writer_save(w2, path, &err);
    setrlimit(RLIMIT_FSIZE, &old);
    signal(SIGXFSZ, prev);
    ck_assert_int_eq(rc, DVL_EIO);
    ASSERT_MSG_HAS(err, "ckpt.safetensors.tmp: write failed");
    ck_assert(!exists(tmp));
    assert_same_file(path, fixture("python.safetensors", ref, sizeof ref));

    /* The rename fails (the target is a folder): nothing is left either. */
    char sub[512];
    tmp_file(&d, "folder", sub, sizeof sub);
    ck_assert_int_eq(mkdir(sub, 0755), 0);
    ck_assert_int_eq(dvl_st_writer_save(w, sub, &err), DVL_EIO);
    ASSERT_MSG_HAS(err, "cannot rename");
    snprintf(tmp, sizeof tmp, "%s.tmp", sub);
    ck_assert(!exists(tmp));
    rmdir(sub);

    /* The folder does not exist. */
    tmp_file(&d, "no/such/dir.safetensors", sub, sizeof sub);
    ck_assert_int_eq(dvl_st_writer_save(w, sub, &err), DVL_EIO);
    ASSERT_MSG_HAS(err, "no/such/dir.safetensors.tmp: cannot create");
    ck_assert_int_eq(count_files(&d), 1);

    dvl_st_writer_free(w);
    dvl_st_writer_free(w2);
    free(big);
    tmp_remove(&d);
}
END_TEST

START_TEST(writer_errors)
{
    dvl_err err = {0};
    dvl_st_writer *w = dvl_st_writer_new();
    float x[4] = {0};
    int64_t s = 4, neg = -1;
    ck_assert_int_eq(dvl_st_writer_add(w, "a", DVL_F32, 1, &s, x, &err), DVL_OK);
    ck_assert_int_eq(dvl_st_writer_add(w, "a", DVL_BF16, 1, &s, x, &err), DVL_EINVAL);
    ASSERT_MSG_HAS(err, "tensor \"a\" added twice");
    ck_assert_int_eq(dvl_st_writer_add(w, "__metadata__", DVL_F32, 1, &s, x, &err), DVL_EINVAL);
    ASSERT_MSG_HAS(err, "reserved");
    ck_assert_int_eq(dvl_st_writer_add(w, "b", DVL_F32, 1, &neg, x, &err), DVL_EINVAL);
    ASSERT_MSG_HAS(err, "tensor \"b\": shape[0] is negative");
    ck_assert_int_eq(dvl_st_writer_add(w, "c", DVL_I32, 1, &s, x, &err), DVL_EINVAL);
    ASSERT_MSG_HAS(err, "tensor \"c\": f32 data can be stored as F32, BF16 or F16, not i32");
    ck_assert_int_eq(dvl_st_writer_add(w, "d", DVL_F32, 1, &s, NULL, &err), DVL_EINVAL);
    ASSERT_MSG_HAS(err, "tensor \"d\": data is NULL");
    ck_assert_int_eq(dvl_st_writer_add(w, "e\xc3", DVL_F32, 1, &s, x, &err), DVL_EINVAL);
    ASSERT_MSG_HAS(err, "not valid UTF-8");
    ck_assert_int_eq(dvl_st_writer_meta(w, "k", "\xff", &err), DVL_EINVAL);
    ASSERT_MSG_HAS(err, "metadata key \"k\"");
    dvl_st_writer_free(w);
}
END_TEST

/* A single file opened as a checkpoint. */
START_TEST(index_of_single_file)
{
    char path[512];
    dvl_err err = {0};
    dvl_st_index *ix = dvl_st_index_open(fixture("python.safetensors", path, sizeof path), &err);
    ck_assert_msg(ix != NULL, "%s", err.msg);
    ck_assert(!dvl_st_index_is_sharded(ix));
    ck_assert_int_eq(dvl_st_index_count(ix), 9);
    ck_assert_str_eq(dvl_st_index_name(ix, 0), "bf16.rand");
    ck_assert_str_eq(dvl_st_index_file_of(ix, "i32"), path);
    float v;
    ck_assert_int_eq(dvl_st_index_read_f32(ix, "scalar", &v, 1, &err), DVL_OK);
    ck_assert_float_eq(v, 3.25f);
    ck_assert_int_eq(dvl_st_index_verify(ix, &err), DVL_OK);
    dvl_st_index_close(ix);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("safetensors");
    TCase *tc = tcase_create("all");
    tcase_add_test(tc, reads_python_fixture);
    tcase_add_test(tc, writer_matches_python_bytes);
    tcase_add_test(tc, roundtrip_odd_shapes);
    tcase_add_test(tc, writer_bf16_rounds_to_nearest_even);
    tcase_add_test(tc, reads_unaligned_data);
    tcase_add_test(tc, roundtrip_large_blocks);
    tcase_add_test(tc, all_dtypes_listed);
    tcase_add_test(tc, malformed_headers);
    tcase_add_test(tc, truncated_files);
    tcase_add_test(tc, open_errors);
    tcase_add_test(tc, reads_sharded_fixture);
    tcase_add_test(tc, sharded_writer_matches_python);
    tcase_add_test(tc, sharded_save_replaces_previous);
    tcase_add_test(tc, index_errors);
    tcase_add_test(tc, failed_save_leaves_old_file);
    tcase_add_test(tc, writer_errors);
    tcase_add_test(tc, index_of_single_file);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return tu_run(suite()); }
