/* PNG/JPEG decoding (libpng, libjpeg-turbo), PNG writing, and the SigLIP
 * preprocessing: expand2square, PIL's bicubic resize, normalisation.
 *
 * Both codecs report fatal errors by calling a handler that must not
 * return; ours copy the message and longjmp back into the decoder. All
 * state a longjmp must not lose (the codec structs, the buffers to free)
 * lives in a job struct reached through a pointer, so nothing is held in a
 * local variable that setjmp/longjmp could clobber, and the cleanup after
 * an error is the same code as after success. */
#include "io/image.h"

#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdio.h> /* before jpeglib.h, which uses FILE */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jerror.h>
#include <jpeglib.h>
#include <png.h>

const float dvl_siglip_mean[3] = {0.5f, 0.5f, 0.5f};
const float dvl_siglip_std[3] = {0.5f, 0.5f, 0.5f};

int dvl_image_alloc(dvl_image *img, int w, int h, dvl_err *err)
{
    img->w = img->h = 0;
    img->data = NULL;
    if (w <= 0 || h <= 0 || (int64_t)w * h > DVL_IMAGE_MAX_PIXELS)
        return dvl_errf(err, DVL_EINVAL, "image: size %d x %d out of range (at most %lld pixels)",
                        w, h, (long long)DVL_IMAGE_MAX_PIXELS);
    img->data = malloc((size_t)w * h * 3);
    if (!img->data)
        return dvl_errf(err, DVL_ENOMEM, "image: out of memory for %d x %d pixels", w, h);
    img->w = w;
    img->h = h;
    return DVL_OK;
}

void dvl_image_free(dvl_image *img)
{
    if (!img)
        return;
    free(img->data);
    img->data = NULL;
    img->w = img->h = 0;
}

static int check_image(const dvl_image *img, const char *what, dvl_err *err)
{
    if (!img || !img->data || img->w <= 0 || img->h <= 0)
        return dvl_errf(err, DVL_EINVAL, "%s: empty image", what);
    return DVL_OK;
}

/* Alpha over white, rounded to nearest: c * a / 255 + (255 - a). 255 is
 * odd, so the sum divided by 255 never lies exactly halfway. */
static uint8_t over_white(unsigned c, unsigned a)
{
    return (uint8_t)((c * a + 255u * (255u - a) + 127u) / 255u);
}

/* ---------------------------------------------------------------- PNG */

typedef struct png_job {
    png_structp png;
    png_infop info;
    const uint8_t *src; /* the encoded file */
    size_t n, off;
    uint8_t *px;     /* decoded rows, 3 or 4 channels */
    png_bytep *rows;
    dvl_image out;
    char msg[256];
    int code; /* set when an error is raised outside libpng */
} png_job;

static void png_on_error(png_structp png, png_const_charp msg)
{
    png_job *j = png_get_error_ptr(png);
    snprintf(j->msg, sizeof j->msg, "%s", msg);
    png_longjmp(png, 1);
}

/* Warnings (unknown sRGB profiles, CRC errors in ancillary chunks that
 * libpng then drops) do not change the pixels; stay quiet. */
static void png_on_warning(png_structp png, png_const_charp msg) {}

static void png_read_mem(png_structp png, png_bytep dst, size_t len)
{
    png_job *j = png_get_io_ptr(png);
    if (len > j->n - j->off)
        png_error(png, "truncated file (read past the end of the data)");
    memcpy(dst, j->src + j->off, len);
    j->off += len;
}

/* Runs the decoder; returns 0, or -1 after a longjmp with j->msg set. */
static int png_run(png_job *j)
{
    if (setjmp(png_jmpbuf(j->png)))
        return -1;
    png_set_read_fn(j->png, j, png_read_mem);
    /* A bad CRC in an ancillary chunk is fatal too, as in PIL: tRNS is
     * ancillary and changes the pixels. */
    png_set_crc_action(j->png, PNG_CRC_DEFAULT, PNG_CRC_ERROR_QUIT);
    png_read_info(j->png, j->info);
    png_uint_32 w = png_get_image_width(j->png, j->info);
    png_uint_32 h = png_get_image_height(j->png, j->info);
    if ((int64_t)w * h > DVL_IMAGE_MAX_PIXELS) {
        snprintf(j->msg, sizeof j->msg, "%u x %u pixels is more than the %lld allowed", w, h,
                 (long long)DVL_IMAGE_MAX_PIXELS);
        j->code = DVL_EUNSUP;
        return -1;
    }
    int color = png_get_color_type(j->png, j->info);
    /* Everything to 8-bit RGB or RGBA. 16-bit keeps the high byte, which
     * is what PIL's "RGB;16B" unpacker does. */
    if (color == PNG_COLOR_TYPE_PALETTE)
        png_set_palette_to_rgb(j->png);
    if (color == PNG_COLOR_TYPE_GRAY && png_get_bit_depth(j->png, j->info) < 8)
        png_set_expand_gray_1_2_4_to_8(j->png);
    if (png_get_valid(j->png, j->info, PNG_INFO_tRNS))
        png_set_tRNS_to_alpha(j->png);
    png_set_strip_16(j->png);
    if (color == PNG_COLOR_TYPE_GRAY || color == PNG_COLOR_TYPE_GRAY_ALPHA)
        png_set_gray_to_rgb(j->png);
    png_set_interlace_handling(j->png);
    png_read_update_info(j->png, j->info);

    int ch = png_get_channels(j->png, j->info);
    size_t rowbytes = png_get_rowbytes(j->png, j->info);
    if ((ch != 3 && ch != 4) || rowbytes != (size_t)w * ch) {
        snprintf(j->msg, sizeof j->msg, "unexpected layout after conversion (%d channels)", ch);
        return -1;
    }
    j->px = malloc(rowbytes * h);
    j->rows = malloc(sizeof(png_bytep) * h);
    if (!j->px || !j->rows) {
        snprintf(j->msg, sizeof j->msg, "out of memory for %u x %u pixels", w, h);
        j->code = DVL_ENOMEM;
        return -1;
    }
    for (png_uint_32 y = 0; y < h; y++)
        j->rows[y] = j->px + rowbytes * y;
    png_read_image(j->png, j->rows);
    /* Reading through IEND also checks the CRCs of the trailing chunks,
     * so a file cut anywhere is an error. */
    png_read_end(j->png, NULL);

    if (dvl_image_alloc(&j->out, (int)w, (int)h, NULL)) {
        snprintf(j->msg, sizeof j->msg, "out of memory for %u x %u pixels", w, h);
        j->code = DVL_ENOMEM;
        return -1;
    }
    size_t npx = (size_t)w * h;
    if (ch == 3) {
        memcpy(j->out.data, j->px, npx * 3);
    } else {
        for (size_t i = 0; i < npx; i++)
            for (int c = 0; c < 3; c++)
                j->out.data[i * 3 + c] = over_white(j->px[i * 4 + c], j->px[i * 4 + 3]);
    }
    return 0;
}

static int decode_png(const uint8_t *buf, size_t n, const char *name, dvl_image *out,
                      dvl_err *err)
{
    png_job j = {.src = buf, .n = n};
    j.png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &j, png_on_error, png_on_warning);
    if (j.png)
        j.info = png_create_info_struct(j.png);
    if (!j.png || !j.info) {
        png_destroy_read_struct(&j.png, NULL, NULL);
        return dvl_errf(err, DVL_ENOMEM, "%s: out of memory creating the PNG decoder", name);
    }
    int rc = png_run(&j);
    png_destroy_read_struct(&j.png, &j.info, NULL);
    free(j.rows);
    free(j.px);
    if (rc) {
        dvl_image_free(&j.out);
        return dvl_errf(err, j.code ? j.code : DVL_EIO, "%s: bad PNG: %s", name, j.msg);
    }
    *out = j.out;
    return DVL_OK;
}

/* --------------------------------------------------------------- JPEG */

typedef struct jpeg_job {
    struct jpeg_error_mgr pub; /* first, so cinfo->err points at the job */
    jmp_buf jb;
    struct jpeg_decompress_struct cinfo;
    int created;
    uint8_t *row; /* one scanline of gray or CMYK samples */
    dvl_image out;
    char msg[JMSG_LENGTH_MAX];
    int code;
} jpeg_job;

/* libjpeg's default error_exit calls exit(); ours returns to jpeg_run. */
static void jpeg_on_error(j_common_ptr cinfo)
{
    jpeg_job *j = (jpeg_job *)cinfo->err;
    cinfo->err->format_message(cinfo, j->msg);
    longjmp(j->jb, 1);
}

/* level -1 is a warning. libjpeg warns, instead of failing, on truncated
 * files and corrupt entropy-coded data, then makes up the missing pixels
 * (gray, or smeared blocks); treat those as errors. The few warnings that
 * leave the pixels intact (junk between markers, odd JFIF/Adobe header
 * fields, a bad ICC marker) are ignored, as PIL ignores them. Trace
 * messages (level >= 0) are ignored. */
static void jpeg_on_message(j_common_ptr cinfo, int level)
{
    if (level >= 0)
        return;
    switch (cinfo->err->msg_code) {
    case JWRN_EXTRANEOUS_DATA:
    case JWRN_ADOBE_XFORM:
    case JWRN_JFIF_MAJOR:
    case JWRN_BOGUS_ICC:
        return;
    default:
        jpeg_on_error(cinfo);
    }
}

/* PIL's CMYK -> RGB (Convert.c cmyk2rgb): R = (255 - K) - C * (255 - K) / 255
 * with MULDIV255's rounding. PIL reads 4-channel JPEGs with the Adobe
 * convention ("CMYK;I": stored samples are 255 - ink), so with s the
 * samples libjpeg returns, C = 255 - s_c and 255 - K = s_k. */
static uint8_t cmyk_channel(unsigned s_c, unsigned s_k)
{
    unsigned c = 255u - s_c, nk = s_k;
    unsigned t = c * nk + 128u;
    return (uint8_t)(nk - (((t >> 8) + t) >> 8));
}

static int jpeg_run(jpeg_job *j, const uint8_t *buf, size_t n)
{
    struct jpeg_decompress_struct *ci = &j->cinfo;
    if (setjmp(j->jb))
        return -1;
    jpeg_create_decompress(ci);
    j->created = 1;
    jpeg_mem_src(ci, buf, (unsigned long)n);
    jpeg_read_header(ci, TRUE);
    int gray = 0, cmyk = 0;
    switch (ci->jpeg_color_space) {
    case JCS_GRAYSCALE:
        ci->out_color_space = JCS_GRAYSCALE;
        gray = 1;
        break;
    case JCS_YCbCr:
    case JCS_RGB:
        ci->out_color_space = JCS_RGB;
        break;
    case JCS_CMYK:
    case JCS_YCCK:
        ci->out_color_space = JCS_CMYK;
        cmyk = 1;
        break;
    default:
        snprintf(j->msg, sizeof j->msg, "unsupported colour space (%d components)",
                 ci->num_components);
        j->code = DVL_EUNSUP;
        return -1;
    }
    int64_t w = ci->image_width, h = ci->image_height;
    if (w * h > DVL_IMAGE_MAX_PIXELS) {
        snprintf(j->msg, sizeof j->msg, "%lld x %lld pixels is more than the %lld allowed",
                 (long long)w, (long long)h, (long long)DVL_IMAGE_MAX_PIXELS);
        j->code = DVL_EUNSUP;
        return -1;
    }
    jpeg_start_decompress(ci);
    if (dvl_image_alloc(&j->out, (int)w, (int)h, NULL) ||
        ((gray || cmyk) && !(j->row = malloc((size_t)w * 4)))) {
        snprintf(j->msg, sizeof j->msg, "out of memory for %lld x %lld pixels", (long long)w,
                 (long long)h);
        j->code = DVL_ENOMEM;
        return -1;
    }
    while (ci->output_scanline < ci->output_height) {
        uint8_t *dst = j->out.data + (size_t)ci->output_scanline * w * 3;
        JSAMPROW r = (gray || cmyk) ? j->row : dst;
        jpeg_read_scanlines(ci, &r, 1);
        if (gray) {
            for (int64_t x = 0; x < w; x++)
                dst[3 * x] = dst[3 * x + 1] = dst[3 * x + 2] = j->row[x];
        } else if (cmyk) {
            for (int64_t x = 0; x < w; x++)
                for (int c = 0; c < 3; c++)
                    dst[3 * x + c] = cmyk_channel(j->row[4 * x + c], j->row[4 * x + 3]);
        }
    }
    /* Reads up to EOI, so a file cut after the last scanline still fails. */
    jpeg_finish_decompress(ci);
    return 0;
}

static int decode_jpeg(const uint8_t *buf, size_t n, const char *name, dvl_image *out,
                       dvl_err *err)
{
    jpeg_job *j = calloc(1, sizeof *j);
    if (!j)
        return dvl_errf(err, DVL_ENOMEM, "%s: out of memory creating the JPEG decoder", name);
    j->cinfo.err = jpeg_std_error(&j->pub);
    j->pub.error_exit = jpeg_on_error;
    j->pub.emit_message = jpeg_on_message;
    int rc = jpeg_run(j, buf, n);
    if (j->created)
        jpeg_destroy_decompress(&j->cinfo);
    free(j->row);
    if (rc) {
        dvl_image_free(&j->out);
        rc = dvl_errf(err, j->code ? j->code : DVL_EIO, "%s: bad JPEG: %s", name, j->msg);
    } else {
        *out = j->out;
    }
    free(j);
    return rc;
}

/* ------------------------------------------------------------ loading */

int dvl_image_decode_mem(const void *buf, size_t n, const char *name, dvl_image *out,
                         dvl_err *err)
{
    static const uint8_t png_sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    const uint8_t *b = buf;
    out->w = out->h = 0;
    out->data = NULL;
    if (!name)
        name = "(memory)";
    if (!b || n == 0)
        return dvl_errf(err, DVL_EIO, "%s: empty file", name);
    if (n >= 8 && memcmp(b, png_sig, 8) == 0)
        return decode_png(b, n, name, out, err);
    if (n >= 3 && b[0] == 0xff && b[1] == 0xd8 && b[2] == 0xff)
        return decode_jpeg(b, n, name, out, err);
    return dvl_errf(err, DVL_EUNSUP,
                    "%s: unknown image format (not PNG or JPEG; first bytes %02x %02x %02x %02x)",
                    name, b[0], n > 1 ? b[1] : 0, n > 2 ? b[2] : 0, n > 3 ? b[3] : 0);
}

int dvl_image_load(const char *path, dvl_image *out, dvl_err *err)
{
    out->w = out->h = 0;
    out->data = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return dvl_errf(err, DVL_EIO, "%s: cannot open: %s", path, strerror(errno));
    uint8_t *buf = NULL;
    long n = -1;
    if (fseek(f, 0, SEEK_END) == 0)
        n = ftell(f);
    if (n < 0 || fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        return dvl_errf(err, DVL_EIO, "%s: cannot seek: %s", path, strerror(errno));
    }
    if (n > ((long)1 << 30)) {
        fclose(f);
        return dvl_errf(err, DVL_EUNSUP, "%s: %ld bytes is too large for an image", path, n);
    }
    buf = malloc(n ? (size_t)n : 1);
    if (!buf) {
        fclose(f);
        return dvl_errf(err, DVL_ENOMEM, "%s: out of memory reading %ld bytes", path, n);
    }
    size_t got = fread(buf, 1, (size_t)n, f);
    int rerr = ferror(f);
    fclose(f);
    int rc;
    if (rerr || got != (size_t)n)
        rc = dvl_errf(err, DVL_EIO, "%s: read error", path);
    else
        rc = dvl_image_decode_mem(buf, (size_t)n, path, out, err);
    free(buf);
    return rc;
}

/* ------------------------------------------------------------ writing */

typedef struct png_wjob {
    png_structp png;
    png_infop info;
    FILE *f;
    char msg[256];
} png_wjob;

static int png_write_run(png_wjob *j, const dvl_image *img)
{
    if (setjmp(png_jmpbuf(j->png)))
        return -1;
    png_init_io(j->png, j->f);
    png_set_IHDR(j->png, j->info, (png_uint_32)img->w, (png_uint_32)img->h, 8,
                 PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
                 PNG_FILTER_TYPE_DEFAULT);
    png_write_info(j->png, j->info);
    for (int y = 0; y < img->h; y++)
        png_write_row(j->png, img->data + (size_t)y * img->w * 3);
    png_write_end(j->png, NULL);
    return 0;
}

int dvl_image_write_png(const char *path, const dvl_image *img, dvl_err *err)
{
    int crc = check_image(img, path, err);
    if (crc)
        return crc;
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp%ld", path, (long)getpid()) >= (int)sizeof tmp)
        return dvl_errf(err, DVL_EINVAL, "%s: path too long", path);
    png_wjob j = {0};
    j.f = fopen(tmp, "wb");
    if (!j.f)
        return dvl_errf(err, DVL_EIO, "%s: cannot create: %s", tmp, strerror(errno));
    j.png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &j, png_on_error, png_on_warning);
    if (j.png)
        j.info = png_create_info_struct(j.png);
    int rc;
    if (!j.png || !j.info) {
        snprintf(j.msg, sizeof j.msg, "out of memory creating the PNG encoder");
        rc = -1;
    } else {
        rc = png_write_run(&j, img);
    }
    png_destroy_write_struct(&j.png, &j.info);
    if (fclose(j.f) != 0 && rc == 0) {
        snprintf(j.msg, sizeof j.msg, "%s", strerror(errno));
        rc = -1;
    }
    if (rc == 0 && rename(tmp, path) != 0) {
        snprintf(j.msg, sizeof j.msg, "rename from the temporary file: %s", strerror(errno));
        rc = -1;
    }
    if (rc) {
        unlink(tmp);
        return dvl_errf(err, DVL_EIO, "%s: writing PNG failed: %s", path, j.msg);
    }
    return DVL_OK;
}

/* ------------------------------------------------------ preprocessing */

int dvl_image_expand2square(const dvl_image *img, const uint8_t bg[3], dvl_image *out,
                            dvl_err *err)
{
    out->w = out->h = 0;
    out->data = NULL;
    int crc = check_image(img, "expand2square", err);
    if (crc)
        return crc;
    int side = img->w > img->h ? img->w : img->h;
    int rc = dvl_image_alloc(out, side, side, err);
    if (rc)
        return rc;
    int x0 = (side - img->w) / 2, y0 = (side - img->h) / 2;
    for (int y = 0; y < side; y++) {
        uint8_t *row = out->data + (size_t)y * side * 3;
        for (int x = 0; x < side; x++)
            memcpy(row + 3 * x, bg, 3);
        if (y >= y0 && y < y0 + img->h)
            memcpy(row + 3 * x0, img->data + (size_t)(y - y0) * img->w * 3, (size_t)img->w * 3);
    }
    return DVL_OK;
}

/* Keys' cubic convolution kernel with a = -0.5 (PIL's bicubic_filter). */
static double bicubic(double x)
{
    const double a = -0.5;
    if (x < 0.0)
        x = -x;
    if (x < 1.0)
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0)
        return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

/* PIL uses 32 - 8 - 2 bits: 8 for the pixel value, 2 of headroom for the
 * negative lobes (sums can exceed 255 or drop below 0 before clipping). */
#define RS_BITS 22

/* One axis of PIL's resampling (Resample.c precompute_coeffs +
 * normalize_coeffs_8bpc): output sample i reads input samples
 * [lo[i], lo[i] + cnt[i]) with fixed-point weights k[i * ksize + t]. When
 * shrinking, the kernel is stretched by the scale factor (support 2 *
 * scale), which is the antialiasing. */
typedef struct rs_axis {
    int ksize;
    int *lo, *cnt;
    int32_t *k;
} rs_axis;

static void rs_axis_free(rs_axis *a)
{
    free(a->lo);
    free(a->cnt);
    free(a->k);
}

static int rs_axis_init(rs_axis *a, int in_size, int out_size)
{
    double scale = (double)in_size / out_size;
    double filterscale = scale < 1.0 ? 1.0 : scale;
    double support = 2.0 * filterscale;
    a->ksize = (int)ceil(support) * 2 + 1;
    a->lo = malloc(sizeof(int) * out_size);
    a->cnt = malloc(sizeof(int) * out_size);
    a->k = calloc((size_t)out_size * a->ksize, sizeof(int32_t));
    double *w = malloc(sizeof(double) * a->ksize);
    if (!a->lo || !a->cnt || !a->k || !w) {
        free(w);
        rs_axis_free(a);
        return -1;
    }
    for (int i = 0; i < out_size; i++) {
        double center = (i + 0.5) * scale;
        double ss = 1.0 / filterscale, ww = 0.0;
        /* (int) truncates like PIL's "round the value" casts. */
        int lo = (int)(center - support + 0.5);
        if (lo < 0)
            lo = 0;
        int hi = (int)(center + support + 0.5);
        if (hi > in_size)
            hi = in_size;
        int cnt = hi - lo;
        for (int t = 0; t < cnt; t++) {
            w[t] = bicubic((t + lo - center + 0.5) * ss);
            ww += w[t];
        }
        for (int t = 0; t < cnt; t++) {
            double v = ww != 0.0 ? w[t] / ww : w[t];
            a->k[(size_t)i * a->ksize + t] =
                (int32_t)(v < 0 ? -0.5 + v * (1 << RS_BITS) : 0.5 + v * (1 << RS_BITS));
        }
        a->lo[i] = lo;
        a->cnt[i] = cnt;
    }
    free(w);
    return 0;
}

/* Round the fixed-point sum (which started at half an LSB) to uint8. */
static uint8_t rs_clip8(int32_t s)
{
    int32_t v = s >> RS_BITS;
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

int dvl_image_resize_bicubic(const dvl_image *img, int w, int h, dvl_image *out, dvl_err *err)
{
    out->w = out->h = 0;
    out->data = NULL;
    int crc = check_image(img, "resize", err);
    if (crc)
        return crc;
    int rc = dvl_image_alloc(out, w, h, err);
    if (rc)
        return rc;
    if (w == img->w && h == img->h) { /* PIL copies */
        memcpy(out->data, img->data, (size_t)w * h * 3);
        return DVL_OK;
    }
    rs_axis ax = {0}, ay = {0};
    uint8_t *tmp = NULL;
    if (rs_axis_init(&ax, img->w, w) || rs_axis_init(&ay, img->h, h))
        goto oom;

    /* Horizontal pass over the input rows the vertical pass reads
     * (PIL's ybox_first .. ybox_last), rounded to uint8 as PIL does; a
     * width that does not change skips it. */
    int need_h = w != img->w, need_v = h != img->h;
    int y_first = ay.lo[0], y_last = ay.lo[h - 1] + ay.cnt[h - 1];
    const uint8_t *src = img->data;
    int src_y0 = 0; /* input row that row 0 of src holds */
    if (need_h) {
        tmp = malloc((size_t)w * (y_last - y_first) * 3);
        if (!tmp)
            goto oom;
#pragma omp parallel for schedule(static)
        for (int y = y_first; y < y_last; y++) {
            const uint8_t *in = img->data + (size_t)y * img->w * 3;
            uint8_t *o = tmp + (size_t)(y - y_first) * w * 3;
            for (int x = 0; x < w; x++) {
                const int32_t *k = ax.k + (size_t)x * ax.ksize;
                const uint8_t *p = in + (size_t)ax.lo[x] * 3;
                int32_t s0 = 1 << (RS_BITS - 1), s1 = s0, s2 = s0;
                for (int t = 0; t < ax.cnt[x]; t++) {
                    s0 += p[3 * t + 0] * k[t];
                    s1 += p[3 * t + 1] * k[t];
                    s2 += p[3 * t + 2] * k[t];
                }
                o[3 * x + 0] = rs_clip8(s0);
                o[3 * x + 1] = rs_clip8(s1);
                o[3 * x + 2] = rs_clip8(s2);
            }
        }
        src = tmp;
        src_y0 = y_first;
    }
    if (need_v) {
#pragma omp parallel for schedule(static)
        for (int y = 0; y < h; y++) {
            const int32_t *k = ay.k + (size_t)y * ay.ksize;
            const uint8_t *in = src + (size_t)(ay.lo[y] - src_y0) * w * 3;
            uint8_t *o = out->data + (size_t)y * w * 3;
            for (int x = 0; x < 3 * w; x++) {
                int32_t s = 1 << (RS_BITS - 1);
                for (int t = 0; t < ay.cnt[y]; t++)
                    s += in[(size_t)t * w * 3 + x] * k[t];
                o[x] = rs_clip8(s);
            }
        }
    } else {
        memcpy(out->data, src, (size_t)w * h * 3);
    }
    free(tmp);
    rs_axis_free(&ax);
    rs_axis_free(&ay);
    return DVL_OK;
oom:
    free(tmp);
    rs_axis_free(&ax);
    rs_axis_free(&ay);
    dvl_image_free(out);
    return dvl_errf(err, DVL_ENOMEM, "resize: out of memory for %d x %d -> %d x %d", img->w,
                    img->h, w, h);
}

void dvl_image_normalize(const uint8_t *rgb, int w, int h, const float mean[3],
                         const float std[3], float *chw)
{
    int64_t n = (int64_t)w * h;
    /* transformers: rescale multiplies in float64 then casts to float32;
     * normalize subtracts and divides in float32. */
    for (int c = 0; c < 3; c++)
        for (int64_t i = 0; i < n; i++) {
            float v = (float)(rgb[i * 3 + c] * (1.0 / 255.0));
            chw[c * n + i] = (v - mean[c]) / std[c];
        }
}

int dvl_siglip_pixels(const dvl_image *img, int size, dvl_image *out, dvl_err *err)
{
    out->w = out->h = 0;
    out->data = NULL;
    if (size <= 0)
        return dvl_errf(err, DVL_EINVAL, "siglip: size %d must be positive", size);
    /* tuple(int(x * 255) for x in image_mean): int(127.5) = 127. */
    uint8_t bg[3];
    for (int c = 0; c < 3; c++)
        bg[c] = (uint8_t)(int)(dvl_siglip_mean[c] * 255.0);
    dvl_image sq;
    int rc = dvl_image_expand2square(img, bg, &sq, err);
    if (rc)
        return rc;
    rc = dvl_image_resize_bicubic(&sq, size, size, out, err);
    dvl_image_free(&sq);
    return rc;
}

int dvl_siglip_preprocess(const dvl_image *img, int size, float *out, dvl_err *err)
{
    dvl_image px;
    int rc = dvl_siglip_pixels(img, size, &px, err);
    if (rc)
        return rc;
    dvl_image_normalize(px.data, size, size, dvl_siglip_mean, dvl_siglip_std, out);
    dvl_image_free(&px);
    return DVL_OK;
}
