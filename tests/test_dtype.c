/* Storage dtype conversions: bf16 and f16 against their definitions. */
#include <math.h>
#include <string.h>

#include "util.h"

/* bf16 round-to-nearest-even checked against a slow definition: of the two
 * bf16 neighbours, the nearer; on a tie the one with an even mantissa. */
static uint16_t bf16_reference(float f)
{
    uint32_t u = tu_f32_bits(f);
    uint16_t lo = (uint16_t)(u >> 16), hi = (uint16_t)(lo + 1);
    double d = f, dlo = tu_f32_from_bits((uint32_t)lo << 16);
    double dhi = tu_f32_from_bits((uint32_t)hi << 16);
    if (fabs(d - dlo) < fabs(dhi - d))
        return lo;
    if (fabs(d - dlo) > fabs(dhi - d))
        return hi;
    return (lo & 1) ? hi : lo;
}

START_TEST(bf16_round_to_nearest_even)
{
    dvl_rng r;
    dvl_rng_seed(&r, 1);
    for (int i = 0; i < 200000; i++) {
        float f = tu_f32_from_bits((uint32_t)dvl_rng_u64(&r));
        if (!isfinite(f) || fabsf(f) > 1e38f)
            continue;
        ck_assert_uint_eq(dvl_f32_to_bf16(f), bf16_reference(f));
    }
    /* Exact ties: 1 + 2^-8 lies halfway between 1 and 1 + 2^-7. */
    ck_assert_uint_eq(dvl_f32_to_bf16(1.0f + 0x1.0p-8f), 0x3f80);
    ck_assert_uint_eq(dvl_f32_to_bf16(1.0f + 3 * 0x1.0p-8f), 0x3f82);
    ck_assert_uint_eq(dvl_f32_to_bf16(NAN), 0x7fc0);
    ck_assert_uint_eq(dvl_f32_to_bf16(-NAN), 0x7fc0);
    ck_assert_float_eq(dvl_bf16_to_f32(dvl_f32_to_bf16(-2.5f)), -2.5f);
}
END_TEST

START_TEST(f16_all_values_round_trip)
{
    /* Every finite f16 converts to f32 and back to itself. */
    for (uint32_t h = 0; h < 0x10000; h++) {
        if ((h & 0x7c00) == 0x7c00)
            continue;
        float f = dvl_f16_to_f32((uint16_t)h);
        ck_assert_uint_eq(dvl_f32_to_f16(f), h);
    }
    ck_assert_float_eq(dvl_f16_to_f32(0x3c00), 1.0f);
    ck_assert_float_eq(dvl_f16_to_f32(0x0001), 0x1.0p-24f);
    ck_assert_float_eq(dvl_f16_to_f32(0xc000), -2.0f);
    ck_assert_uint_eq(dvl_f32_to_f16(65504.0f), 0x7bff);
    ck_assert_uint_eq(dvl_f32_to_f16(1e6f), 0x7c00);
    /* Halfway between 1 and the next f16 (1 + 2^-10): ties to even (1). */
    ck_assert_uint_eq(dvl_f32_to_f16(1.0f + 0x1.0p-11f), 0x3c00);
    ck_assert_uint_eq(dvl_f32_to_f16(1.0f + 0x1.8p-11f), 0x3c01);
}
END_TEST

START_TEST(bulk_conversion)
{
    float src[5] = {1.0f, -0.5f, 3.25f, 0.0f, 1024.0f}, back[5];
    uint16_t h[5];
    dvl_from_f32(h, DVL_BF16, src, 5);
    dvl_to_f32(back, h, DVL_BF16, 5);
    ck_assert_mem_eq(src, back, sizeof src);
    dvl_from_f32(h, DVL_F16, src, 5);
    dvl_to_f32(back, h, DVL_F16, 5);
    ck_assert_mem_eq(src, back, sizeof src);
    ck_assert_int_eq(dvl_dtype_size(DVL_BF16), 2);
    ck_assert_str_eq(dvl_dtype_name(DVL_I32), "i32");
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("dtype");
    TCase *tc = tcase_create("dtype");
    tcase_add_test(tc, bf16_round_to_nearest_even);
    tcase_add_test(tc, f16_all_values_round_trip);
    tcase_add_test(tc, bulk_conversion);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return tu_run(suite()); }
