/* zlib in a guest: compress, uncompress and crc32 through zlib's own API.
 * Built by tests/test_thirdparty.py with zlib's sources (aionub._sources "zlib"). */
#include <aionub_guest.h>
#include <stdlib.h>
#include <string.h>

#include "zlib.h"

static uint8_t *result; /* the last result; freed on the next call */

static uint8_t *fresh(size_t n) {
    free(result);
    result = malloc(n ? n : 1);
    if (result == NULL)
        ab_abort(12, "no memory for %zu bytes", n);
    return result;
}

/* compress(data, level) == zlib.compress(data, level) */
static ab_bytes zcompress(const uint8_t *data, size_t len, int64_t level) {
    uLongf n = compressBound(len);
    uint8_t *out = fresh(n);
    int rc = compress2(out, &n, data, len, (int)level);
    if (rc != Z_OK)
        ab_abort(rc, "compress2: %s", zError(rc));
    return (ab_bytes){out, n};
}
AB_EXPORT_AS("compress", zcompress, AB_BYTES, AB_BYTES, AB_INT);

/* uncompress(zlib.compress(x), len(x)) == x */
static ab_bytes zuncompress(const uint8_t *data, size_t len, int64_t size) {
    uLongf n = (uLongf)size;
    uint8_t *out = fresh(n);
    int rc = uncompress(out, &n, data, len);
    if (rc != Z_OK)
        ab_abort(rc, "uncompress: %s", zError(rc));
    return (ab_bytes){out, n};
}
AB_EXPORT_AS("uncompress", zuncompress, AB_BYTES, AB_BYTES, AB_INT);

/* roundtrip(x, level) == x: both directions inside the guest */
static ab_bytes roundtrip(const uint8_t *data, size_t len, int64_t level) {
    uLongf n = compressBound(len);
    uint8_t *packed = malloc(n);
    if (packed == NULL)
        ab_abort(12, "no memory for %lu bytes", (unsigned long)n);
    int rc = compress2(packed, &n, data, len, (int)level);
    if (rc != Z_OK)
        ab_abort(rc, "compress2: %s", zError(rc));
    uLongf m = len;
    uint8_t *out = fresh(m);
    rc = uncompress(out, &m, packed, n);
    free(packed);
    if (rc != Z_OK)
        ab_abort(rc, "uncompress: %s", zError(rc));
    return (ab_bytes){out, m};
}
AB_EXPORT(roundtrip, AB_BYTES, AB_BYTES, AB_INT);

/* crc(data) == zlib.crc32(data) */
static int64_t crc(const uint8_t *data, size_t len) {
    return (int64_t)crc32(crc32(0L, Z_NULL, 0), data, (uInt)len);
}
AB_EXPORT(crc, AB_INT, AB_BYTES);

static const char *version(void) { return zlibVersion(); }
AB_EXPORT(version, AB_STR);
