/* A 64-bit content hash for large buffers: cross-rank parameter checks
 * (are all ranks' weights bit-identical?) and quick fingerprints.
 *
 * XXH64 (https://github.com/Cyan4973/xxHash/blob/dev/doc/xxhash_spec.md) of
 * each 1 MiB chunk (seeded with the chunk's index), computed in parallel;
 * the chunk hashes, as little-endian words, are folded 256 at a time by
 * acc = XXH64(group, seed = acc) starting from acc = n. The chunking is
 * fixed, so the value does not depend on the thread count. It is not plain
 * XXH64 of the buffer and is only ever compared with itself. */
#ifndef DVL_HASH_H
#define DVL_HASH_H

#include <stddef.h>
#include <stdint.h>

/* XXH64 of n bytes with a seed, exactly as the reference (one thread). */
uint64_t dvl_xxh64(const void *buf, size_t n, uint64_t seed);

/* The chunked parallel hash above. */
uint64_t dvl_hash64(const void *buf, size_t n);

#endif
