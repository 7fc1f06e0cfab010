/* Images: PNG/JPEG decoding to RGB8, PNG writing, and the SigLIP /
 * LLaVA-OneVision preprocessing (pad to square, bicubic resize, normalise).
 *
 * Decoding follows what `PIL.Image.open(path).convert("RGB")` gives in the
 * LLaVA data pipelines, except for transparency: alpha is composited on
 * white (PIL drops it). The resize reproduces PIL's Image.resize(BICUBIC)
 * bit for bit, including its fixed-point rounding to uint8 between the
 * horizontal and the vertical pass, so a pixel cache of resized uint8 images
 * matches the reference preprocessor exactly and normalisation can run at
 * load time. */
#ifndef DVL_IO_IMAGE_H
#define DVL_IO_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#include "core/err.h"

/* Row-major RGB, 3 bytes a pixel: data[(y * w + x) * 3 + c]. */
typedef struct dvl_image {
    int w, h;
    uint8_t *data;
} dvl_image;

/* Largest image accepted, in pixels (a 16384 x 16384 square): bigger
 * headers are refused before any allocation, so a corrupt or hostile
 * header cannot ask for gigabytes. */
#define DVL_IMAGE_MAX_PIXELS ((int64_t)1 << 28)

/* Allocate a w x h image (contents undefined). */
int dvl_image_alloc(dvl_image *img, int w, int h, dvl_err *err);
/* Free the pixels and zero the struct; safe on a zeroed struct. */
void dvl_image_free(dvl_image *img);

/* Decode a PNG or JPEG file, recognised by its magic bytes (not its
 * extension), to RGB8. PNG: any bit depth (16-bit keeps the high byte, as
 * PIL does), palette, grayscale (+alpha), tRNS, interlaced; alpha is
 * composited on white. JPEG: YCbCr, grayscale, CMYK/YCCK (Adobe inverted
 * convention, converted as PIL does), progressive. Corrupt or truncated
 * data is an error naming the path and the codec's message; libjpeg's
 * corrupt-data warnings count as errors (it would otherwise return
 * made-up pixels). On error *out is zeroed. */
int dvl_image_load(const char *path, dvl_image *out, dvl_err *err);
/* The same from memory; name is used in error messages. */
int dvl_image_decode_mem(const void *buf, size_t n, const char *name, dvl_image *out,
                         dvl_err *err);

/* Write img as an 8-bit RGB PNG. Atomic: written to a temporary file in
 * the same directory and renamed over path, so readers never see half a
 * file. */
int dvl_image_write_png(const char *path, const dvl_image *img, dvl_err *err);

/* LLaVA's expand2square: a square of side max(w, h) filled with bg, with
 * img pasted at ((side - w) / 2, (side - h) / 2) (floor), exactly as
 * `result.paste(pil_img, ((height - width) // 2, 0))`. A square input is
 * copied unchanged. */
int dvl_image_expand2square(const dvl_image *img, const uint8_t bg[3], dvl_image *out,
                            dvl_err *err);

/* PIL's Image.resize((w, h), Image.BICUBIC) on an RGB image: separable
 * cubic convolution with a = -0.5, support scaled by the downscale factor
 * (antialiasing when shrinking), 22-bit fixed-point coefficients, the
 * horizontal pass rounded to uint8 before the vertical pass. Bit-exact. */
int dvl_image_resize_bicubic(const dvl_image *img, int w, int h, dvl_image *out,
                             dvl_err *err);

/* HWC uint8 RGB -> CHW float: (x * (1/255) - mean[c]) / std[c], in the
 * float32 arithmetic of transformers' rescale + normalize. */
void dvl_image_normalize(const uint8_t *rgb, int w, int h, const float mean[3],
                         const float std[3], float *chw);

/* SigLIP (google/siglip-so400m-patch14-384) image processor constants. */
#define DVL_SIGLIP_SIZE 384
extern const float dvl_siglip_mean[3]; /* 0.5, 0.5, 0.5 */
extern const float dvl_siglip_std[3];  /* 0.5, 0.5, 0.5 */

/* expand2square with background tuple(int(m * 255) for m in image_mean) =
 * (127, 127, 127), then the bicubic resize to size x size: the uint8 image
 * a pixel cache stores. */
int dvl_siglip_pixels(const dvl_image *img, int size, dvl_image *out, dvl_err *err);

/* The whole preprocessing: dvl_siglip_pixels, then normalise with mean and
 * std 0.5 into out[3 * size * size] (CHW). */
int dvl_siglip_preprocess(const dvl_image *img, int size, float *out, dvl_err *err);

#endif
