/* Storage dtypes and their conversion to and from f32, the compute dtype.
 * bf16 is the top half of an IEEE f32; rounding to it is round-to-nearest-
 * even, as torch does. f16 is IEEE binary16. */
#ifndef DVL_DTYPE_H
#define DVL_DTYPE_H

#include <stddef.h>
#include <stdint.h>

typedef enum dvl_dtype { DVL_F32 = 0, DVL_BF16, DVL_F16, DVL_I32 } dvl_dtype;

size_t dvl_dtype_size(dvl_dtype t);
const char *dvl_dtype_name(dvl_dtype t);

float dvl_bf16_to_f32(uint16_t h);
uint16_t dvl_f32_to_bf16(float f);
float dvl_f16_to_f32(uint16_t h);
uint16_t dvl_f32_to_f16(float f);

/* Convert n elements of src (dtype t) into f32 dst. */
void dvl_to_f32(float *dst, const void *src, dvl_dtype t, int64_t n);
/* Convert n f32 elements into dst of dtype t (not I32). */
void dvl_from_f32(void *dst, dvl_dtype t, const float *src, int64_t n);

#endif
