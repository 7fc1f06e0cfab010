/* XXH64 as in the xxHash specification, and the chunked hash over it. */
#include "core/hash.h"

#include <string.h>

#define P1 0x9E3779B185EBCA87ULL
#define P2 0xC2B2AE3D27D4EB4FULL
#define P3 0x165667B19E3779F9ULL
#define P4 0x85EBCA77C2B2AE63ULL
#define P5 0x27D4EB2F165667C5ULL

#define CHUNK ((size_t)1 << 20)

static uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

/* Unaligned little-endian loads (x86 and the usual ARM are little-endian;
 * memcpy compiles to a plain load). */
static uint64_t load64(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static uint32_t load32(const unsigned char *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static uint64_t round64(uint64_t acc, uint64_t lane)
{
    acc += lane * P2;
    acc = rotl(acc, 31);
    return acc * P1;
}

static uint64_t merge(uint64_t acc, uint64_t v)
{
    acc ^= round64(0, v);
    return acc * P1 + P4;
}

uint64_t dvl_xxh64(const void *buf, size_t n, uint64_t seed)
{
    const unsigned char *p = buf, *end = p + n;
    uint64_t h;
    if (n >= 32) {
        /* Four independent lanes over 32-byte stripes. */
        uint64_t v1 = seed + P1 + P2, v2 = seed + P2, v3 = seed, v4 = seed - P1;
        const unsigned char *limit = end - 32;
        do {
            v1 = round64(v1, load64(p));
            v2 = round64(v2, load64(p + 8));
            v3 = round64(v3, load64(p + 16));
            v4 = round64(v4, load64(p + 24));
            p += 32;
        } while (p <= limit);
        h = rotl(v1, 1) + rotl(v2, 7) + rotl(v3, 12) + rotl(v4, 18);
        h = merge(h, v1);
        h = merge(h, v2);
        h = merge(h, v3);
        h = merge(h, v4);
    } else {
        h = seed + P5;
    }
    h += (uint64_t)n;
    for (; p + 8 <= end; p += 8) {
        h ^= round64(0, load64(p));
        h = rotl(h, 27) * P1 + P4;
    }
    if (p + 4 <= end) {
        h ^= (uint64_t)load32(p) * P1;
        h = rotl(h, 23) * P2 + P3;
        p += 4;
    }
    for (; p < end; p++) {
        h ^= (uint64_t)(*p) * P5;
        h = rotl(h, 11) * P1;
    }
    /* Avalanche. */
    h ^= h >> 33;
    h *= P2;
    h ^= h >> 29;
    h *= P3;
    h ^= h >> 32;
    return h;
}

uint64_t dvl_hash64(const void *buf, size_t n)
{
    const unsigned char *p = buf;
    size_t nchunks = n ? (n + CHUNK - 1) / CHUNK : 0;
    /* Chunk hashes are folded GROUP at a time, so no table of all of them
     * is needed (no malloc) and a group still feeds every thread. */
    enum { GROUP = 256 };
    uint64_t h[GROUP];
    uint64_t acc = (uint64_t)n;
    for (size_t g = 0; g < nchunks; g += GROUP) {
        size_t k = nchunks - g < GROUP ? nchunks - g : GROUP;
        #pragma omp parallel for schedule(static) if (k > 1)
        for (size_t j = 0; j < k; j++) {
            size_t c = g + j;
            size_t len = c + 1 < nchunks ? CHUNK : n - c * CHUNK;
            /* Seeding with the chunk index makes swapped chunks hash apart. */
            h[j] = dvl_xxh64(p + c * CHUNK, len, c);
        }
        acc = dvl_xxh64(h, k * sizeof *h, acc);
    }
    return acc;
}
