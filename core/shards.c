/* core/shards.c — token shards: a small fixed header + one zstd frame of token ids.
 *
 * Promise:
 *  - Byte layout (version 1, all integers little-endian):
 *
 *      offset size  field
 *      0      8     magic "NCSHARD\0"            (4E 43 53 48 41 52 44 00)
 *      8      4     u32 version = 1
 *      12     4     u32 token_bytes: 2 (uint16 ids) or 4 (uint32 ids)
 *      16     8     u64 token_count
 *      24     8     u64 doc_count: how many tokens equal bos_id (0 when bos_id is unknown)
 *      32     4     i32 bos_id (-1 = unknown)
 *      36     4     u32 vocab_size (0 = unknown); every id is < vocab_size when it is known
 *      40     16    tokenizer hash: 16 lowercase ASCII hex digits, or 16 zero bytes = none
 *      56     8     u64 checksum = XXH64 (seed 0) of the uncompressed token array
 *                   (token_count * token_bytes bytes, little-endian ids)
 *      64     8     u64 compressed_size: bytes of the zstd frame that follows
 *      72     8     u64 header_check = XXH64 (seed 0) of bytes 0..71
 *      80     ...   one zstd frame (content size recorded) holding the token array
 *
 *    File size is exactly 80 + compressed_size. Documents are separated by BOS: the tokenizer's
 *    encode_docs(..., {bos = true}) puts bos_id before every document.
 *  - Writing is atomic (path.tmp.<pid>, fsync, rename, fsync of the directory); ids are checked
 *    against vocab_size and the token width before anything is written.
 *  - Reading validates, in this order, and fails with a message that starts "shard <path>:":
 *    open/short read (NC_ERR_IO), file shorter than a header ("truncated"), magic ("wrong
 *    magic"), version, header_check ("corrupt header"), token_bytes, file size vs
 *    compressed_size ("truncated" / "trailing bytes"), tokenizer hash when one is expected
 *    ("tokenizer hash mismatch"), zstd errors and content size ("corrupt payload") and finally
 *    the checksum ("checksum mismatch ... corrupt"). Nothing crashes on any byte sequence.
 *  - XXH64 is our own implementation of the published algorithm (Yann Collet's xxHash spec);
 *    spec/data_spec.lua checks it against known values.
 */
#include "internal.h"
#include "shards_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "shards.c assumes a little-endian host (the format is little-endian)"
#endif

static const unsigned char SHARD_MAGIC[8] = { 'N', 'C', 'S', 'H', 'A', 'R', 'D', 0 };
/* A shard larger than this (uncompressed) is treated as corruption: 2^36 bytes = 64 GiB. */
#define SHARD_MAX_BYTES (1LL << 36)

/* ---- XXH64 ------------------------------------------------------------------------------- */
static const uint64_t XP1 = 11400714785074694791ULL, XP2 = 14029467366897019727ULL,
                      XP3 = 1609587929392839161ULL, XP4 = 9650029242287828579ULL,
                      XP5 = 2870177450012600261ULL;

static inline uint64_t rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
static inline uint64_t rd64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline uint32_t rd32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t xround(uint64_t acc, uint64_t in) {
    acc += in * XP2;
    return rotl64(acc, 31) * XP1;
}
static inline uint64_t xmerge(uint64_t h, uint64_t v) {
    h ^= xround(0, v);
    return h * XP1 + XP4;
}

uint64_t nc_xxh64(const void *data, int64_t n, uint64_t seed) {
    const unsigned char *p = data, *end = p + (n > 0 ? n : 0);
    uint64_t h;
    if (n >= 32) {
        uint64_t v1 = seed + XP1 + XP2, v2 = seed + XP2, v3 = seed, v4 = seed - XP1;
        const unsigned char *limit = end - 32;
        do {
            v1 = xround(v1, rd64(p));
            v2 = xround(v2, rd64(p + 8));
            v3 = xround(v3, rd64(p + 16));
            v4 = xround(v4, rd64(p + 24));
            p += 32;
        } while (p <= limit);
        h = rotl64(v1, 1) + rotl64(v2, 7) + rotl64(v3, 12) + rotl64(v4, 18);
        h = xmerge(h, v1);
        h = xmerge(h, v2);
        h = xmerge(h, v3);
        h = xmerge(h, v4);
    } else {
        h = seed + XP5;
    }
    h += (uint64_t)(n > 0 ? n : 0);
    while (p + 8 <= end) {
        h ^= xround(0, rd64(p));
        h = rotl64(h, 27) * XP1 + XP4;
        p += 8;
    }
    if (p + 4 <= end) {
        h ^= (uint64_t)rd32(p) * XP1;
        h = rotl64(h, 23) * XP2 + XP3;
        p += 4;
    }
    while (p < end) {
        h ^= (uint64_t)(*p) * XP5;
        h = rotl64(h, 11) * XP1;
        p++;
    }
    h ^= h >> 33;
    h *= XP2;
    h ^= h >> 29;
    h *= XP3;
    h ^= h >> 32;
    return h;
}

/* ---- header ------------------------------------------------------------------------------ */
static void put32(unsigned char *p, uint32_t v) { memcpy(p, &v, 4); }
static void put64(unsigned char *p, uint64_t v) { memcpy(p, &v, 8); }

static int valid_hash(const char *h) {
    if (!h || strlen(h) != 16) return 0;
    for (int i = 0; i < 16; i++) {
        char c = h[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return 0;
    }
    return 1;
}

static void pack_header(unsigned char hdr[NC_SHARD_HEADER_BYTES], const nc_shard_info *in) {
    memset(hdr, 0, NC_SHARD_HEADER_BYTES);
    memcpy(hdr, SHARD_MAGIC, 8);
    put32(hdr + 8, (uint32_t)in->version);
    put32(hdr + 12, (uint32_t)in->token_bytes);
    put64(hdr + 16, (uint64_t)in->count);
    put64(hdr + 24, (uint64_t)in->docs);
    put32(hdr + 32, (uint32_t)(int32_t)in->bos_id);
    put32(hdr + 36, (uint32_t)in->vocab);
    if (in->tok_hash[0]) memcpy(hdr + 40, in->tok_hash, 16);
    put64(hdr + 56, in->checksum);
    put64(hdr + 64, (uint64_t)in->compressed_bytes);
    put64(hdr + 72, nc_xxh64(hdr, 72, 0));
}

/* Parse and validate a header against the file size. */
static nc_status parse_header(const char *path, const unsigned char *hdr, int64_t file_size,
                              nc_shard_info *out) {
    memset(out, 0, sizeof *out);
    if (memcmp(hdr, SHARD_MAGIC, 8) != 0) {
        return nc_fail(NC_ERR_FORMAT, "shard %s: wrong magic (not a nanochat token shard): first bytes "
                       "%02x %02x %02x %02x %02x %02x %02x %02x, expected 4e 43 53 48 41 52 44 00 (\"NCSHARD\")",
                       path, hdr[0], hdr[1], hdr[2], hdr[3], hdr[4], hdr[5], hdr[6], hdr[7]);
    }
    uint32_t version = rd32(hdr + 8);
    if (version != NC_SHARD_VERSION) {
        return nc_fail(NC_ERR_FORMAT, "shard %s: version %u is not supported (this build reads version %d)",
                       path, version, NC_SHARD_VERSION);
    }
    uint64_t want = nc_xxh64(hdr, 72, 0), got = rd64(hdr + 72);
    if (want != got) {
        return nc_fail(NC_ERR_FORMAT, "shard %s: corrupt header (header checksum %016llx, the header bytes hash to %016llx)",
                       path, (unsigned long long)got, (unsigned long long)want);
    }
    uint32_t tb = rd32(hdr + 12);
    if (tb != 2 && tb != 4) {
        return nc_fail(NC_ERR_FORMAT, "shard %s: token width %u bytes is not supported (2 or 4)", path, tb);
    }
    uint64_t count = rd64(hdr + 16), csize = rd64(hdr + 64);
    if (count > (uint64_t)(SHARD_MAX_BYTES / tb)) {
        return nc_fail(NC_ERR_FORMAT, "shard %s: token count %llu is implausible (corrupt header)", path,
                       (unsigned long long)count);
    }
    if (csize > (uint64_t)SHARD_MAX_BYTES || (int64_t)csize + NC_SHARD_HEADER_BYTES > file_size) {
        return nc_fail(NC_ERR_FORMAT, "shard %s: truncated: the header announces %llu payload bytes but the file "
                       "holds %lld after the %d-byte header", path, (unsigned long long)csize,
                       (long long)(file_size - NC_SHARD_HEADER_BYTES), NC_SHARD_HEADER_BYTES);
    }
    if ((int64_t)csize + NC_SHARD_HEADER_BYTES < file_size) {
        return nc_fail(NC_ERR_FORMAT, "shard %s: %lld trailing bytes after the %llu-byte payload (corrupt or "
                       "concatenated file)", path, (long long)(file_size - NC_SHARD_HEADER_BYTES - (int64_t)csize),
                       (unsigned long long)csize);
    }
    out->version = (int32_t)version;
    out->token_bytes = (int32_t)tb;
    out->count = (int64_t)count;
    out->docs = (int64_t)rd64(hdr + 24);
    out->bos_id = (int32_t)rd32(hdr + 32);
    out->vocab = rd32(hdr + 36);
    out->checksum = rd64(hdr + 56);
    out->compressed_bytes = (int64_t)csize;
    out->file_bytes = file_size;
    if (hdr[40] != 0) {
        memcpy(out->tok_hash, hdr + 40, 16);
        out->tok_hash[16] = 0;
        if (!valid_hash(out->tok_hash)) {
            return nc_fail(NC_ERR_FORMAT, "shard %s: tokenizer hash field is not 16 lowercase hex digits (corrupt header)", path);
        }
    }
    return NC_OK;
}

static nc_status check_hash(const char *path, const nc_shard_info *info, const char *expect) {
    if (!expect || !expect[0]) return NC_OK;
    if (strcmp(info->tok_hash, expect) != 0) {
        return nc_fail(NC_ERR_FORMAT, "shard %s: tokenizer hash mismatch: the shard was written with tokenizer %s, "
                       "expected %s (re-tokenize the corpus with this tokenizer)", path,
                       info->tok_hash[0] ? info->tok_hash : "(none)", expect);
    }
    return NC_OK;
}

/* read exactly n bytes at the current position */
static nc_status read_exact(const char *path, int fd, void *buf, int64_t n, const char *what) {
    char *p = buf;
    while (n > 0) {
        size_t chunk = n > (1 << 30) ? (size_t)1 << 30 : (size_t)n;
        ssize_t r = read(fd, p, chunk);
        if (r < 0) {
            if (errno == EINTR) continue;
            return nc_fail(NC_ERR_IO, "shard %s: reading the %s failed: %s", path, what, strerror(errno));
        }
        if (r == 0) return nc_fail(NC_ERR_FORMAT, "shard %s: truncated while reading the %s", path, what);
        p += r;
        n -= r;
    }
    return NC_OK;
}

/* Open path and validate its header; returns the fd positioned at the payload. */
static nc_status open_shard(const char *path, int *fd_out, nc_shard_info *info) {
    *fd_out = -1;
    if (!path) return nc_fail(NC_ERR_ARG, "shard: path is NULL");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return nc_fail(NC_ERR_IO, "shard %s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return nc_fail(NC_ERR_IO, "shard %s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return nc_fail(NC_ERR_IO, "shard %s: not a regular file", path);
    }
    if (st.st_size < NC_SHARD_HEADER_BYTES) {
        close(fd);
        return nc_fail(NC_ERR_FORMAT, "shard %s: truncated: the file has %lld bytes, a shard header needs %d",
                       path, (long long)st.st_size, NC_SHARD_HEADER_BYTES);
    }
    unsigned char hdr[NC_SHARD_HEADER_BYTES];
    nc_status s = read_exact(path, fd, hdr, NC_SHARD_HEADER_BYTES, "header");
    if (s == NC_OK) s = parse_header(path, hdr, (int64_t)st.st_size, info);
    if (s != NC_OK) { close(fd); return s; }
    *fd_out = fd;
    return NC_OK;
}

nc_status nc_shard_read_info(const char *path, nc_shard_info *out) {
    if (!out) return nc_fail(NC_ERR_ARG, "nc_shard_read_info: out is NULL");
    int fd;
    NC_TRY(open_shard(path, &fd, out));
    close(fd);
    return NC_OK;
}

nc_status nc_shard_load(const char *path, const char *expect_hash, nc_shard_info *info, void **tokens_out) {
    *tokens_out = NULL;
    int fd;
    NC_TRY(open_shard(path, &fd, info));
    nc_status s = check_hash(path, info, expect_hash);
    if (s != NC_OK) { close(fd); return s; }
    int64_t nbytes = info->count * info->token_bytes;
    void *comp = malloc(info->compressed_bytes > 0 ? (size_t)info->compressed_bytes : 1);
    if (!comp) {
        close(fd);
        return nc_fail(NC_ERR_OOM, "shard %s: cannot allocate %lld bytes for the payload", path,
                       (long long)info->compressed_bytes);
    }
    s = read_exact(path, fd, comp, info->compressed_bytes, "payload");
    close(fd);
    if (s != NC_OK) { free(comp); return s; }
    unsigned long long fcs = ZSTD_getFrameContentSize(comp, (size_t)info->compressed_bytes);
    if (fcs == ZSTD_CONTENTSIZE_ERROR || fcs == ZSTD_CONTENTSIZE_UNKNOWN || fcs != (unsigned long long)nbytes) {
        free(comp);
        if (fcs == ZSTD_CONTENTSIZE_ERROR || fcs == ZSTD_CONTENTSIZE_UNKNOWN) {
            return nc_fail(NC_ERR_FORMAT, "shard %s: corrupt payload: not a zstd frame with a recorded size", path);
        }
        return nc_fail(NC_ERR_FORMAT, "shard %s: corrupt payload: the zstd frame holds %llu bytes, the header "
                       "announces %lld tokens x %d bytes", path, fcs, (long long)info->count, info->token_bytes);
    }
    void *tok = nc_host_alloc(nbytes > 0 ? nbytes : 1);
    if (!tok) { free(comp); return NC_ERR_OOM; }
    size_t got = ZSTD_decompress(tok, (size_t)nbytes, comp, (size_t)info->compressed_bytes);
    free(comp);
    if (ZSTD_isError(got) || (int64_t)got != nbytes) {
        nc_host_free(tok, nbytes > 0 ? nbytes : 1);
        if (ZSTD_isError(got)) {
            return nc_fail(NC_ERR_FORMAT, "shard %s: corrupt payload: zstd: %s", path, ZSTD_getErrorName(got));
        }
        return nc_fail(NC_ERR_FORMAT, "shard %s: corrupt payload: decompressed %zu bytes, expected %lld", path, got,
                       (long long)nbytes);
    }
    uint64_t h = nc_xxh64(tok, nbytes, 0);
    if (h != info->checksum) {
        nc_host_free(tok, nbytes > 0 ? nbytes : 1);
        return nc_fail(NC_ERR_FORMAT, "shard %s: checksum mismatch: the tokens hash to %016llx but the header says "
                       "%016llx (corrupt shard)", path, (unsigned long long)h, (unsigned long long)info->checksum);
    }
    *tokens_out = tok;
    return NC_OK;
}

void nc_shard_free_tokens(void *tokens, const nc_shard_info *info) {
    if (!tokens) return;
    int64_t nbytes = info->count * info->token_bytes;
    nc_host_free(tokens, nbytes > 0 ? nbytes : 1);
}

nc_tensor *nc_shard_read_new(const char *path, const char *expect_tok_hash, nc_shard_info *info_out) {
    nc_shard_info local;
    nc_shard_info *info = info_out ? info_out : &local;
    void *tok;
    if (nc_shard_load(path, expect_tok_hash, info, &tok) != NC_OK) return NULL;
    int64_t shape[1] = { info->count };
    nc_tensor *t = nc_tensor_new(NC_I32, NC_CPU, 1, shape);
    if (!t) { nc_shard_free_tokens(tok, info); return NULL; }
    int32_t *dst = nc_tensor_data(t);
    if (info->token_bytes == 2) {
        const uint16_t *src = tok;
        for (int64_t i = 0; i < info->count; i++) dst[i] = src[i];
    } else {
        const uint32_t *src = tok;
        for (int64_t i = 0; i < info->count; i++) {
            if (src[i] > INT32_MAX) {
                nc_shard_free_tokens(tok, info);
                nc_tensor_release(t);
                nc_fail(NC_ERR_FORMAT, "shard %s: token %lld has id %u, which does not fit an i32 tensor", path,
                        (long long)i, src[i]);
                return NULL;
            }
            dst[i] = (int32_t)src[i];
        }
    }
    nc_shard_free_tokens(tok, info);
    return t;
}

/* ---- writing ----------------------------------------------------------------------------- */
static int write_all_fd(int fd, const void *data, int64_t n) {
    const char *p = data;
    while (n > 0) {
        ssize_t w = write(fd, p, n > (1 << 30) ? (size_t)1 << 30 : (size_t)n);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) return -1;
        if (w == 0) { errno = ENOSPC; return -1; }
        p += w;
        n -= w;
    }
    return 0;
}

static void fsync_parent_dir(const char *path) {
    char dir[4096];
    size_t n = strlen(path);
    if (n >= sizeof dir) return;
    memcpy(dir, path, n + 1);
    char *slash = strrchr(dir, '/');
    if (slash == dir) slash[1] = 0;
    else if (slash) *slash = 0;
    else strcpy(dir, ".");
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) { fsync(fd); close(fd); }
}

nc_status nc_shard_write(const char *path, const nc_tensor *ids, int32_t token_bytes, int64_t vocab,
                         int64_t bos_id, const char *tok_hash, int32_t zstd_level) {
    static const char *op = "nc_shard_write";
    if (!path || !path[0]) return nc_fail(NC_ERR_ARG, "%s: path is empty", op);
    NC_TRY(nc_check_not_null(op, "ids", ids));
    NC_TRY(nc_check_cpu(op, "ids", ids));
    NC_TRY(nc_check_dtype(op, "ids", ids, NC_I32));
    NC_TRY(nc_check_ndim(op, "ids", ids, 1));
    NC_TRY(nc_check_contiguous(op, "ids", ids));
    if (token_bytes != 2 && token_bytes != 4) {
        return nc_fail(NC_ERR_ARG, "%s: %s: token_bytes must be 2 or 4, got %d", op, path, token_bytes);
    }
    if (vocab < 0 || vocab > (int64_t)UINT32_MAX) return nc_fail(NC_ERR_ARG, "%s: %s: vocab %lld out of range", op, path, (long long)vocab);
    if (token_bytes == 2 && vocab > 65536) {
        return nc_fail(NC_ERR_ARG, "%s: %s: vocab %lld does not fit uint16 tokens (use token_bytes = 4)", op, path,
                       (long long)vocab);
    }
    if (bos_id < -1 || bos_id > INT32_MAX || (vocab > 0 && bos_id >= vocab)) {
        return nc_fail(NC_ERR_ARG, "%s: %s: bos_id %lld out of range (vocab %lld)", op, path, (long long)bos_id,
                       (long long)vocab);
    }
    if (tok_hash && tok_hash[0] && !valid_hash(tok_hash)) {
        return nc_fail(NC_ERR_ARG, "%s: %s: tokenizer hash must be 16 lowercase hex digits, got '%s'", op, path, tok_hash);
    }
    if (zstd_level < 1 || zstd_level > ZSTD_maxCLevel()) {
        return nc_fail(NC_ERR_ARG, "%s: %s: zstd level %d out of range 1..%d", op, path, zstd_level, ZSTD_maxCLevel());
    }
    int64_t n = ids->shape[0];
    const int32_t *src = nc_tensor_data(ids);
    int64_t limit = vocab > 0 ? vocab : (token_bytes == 2 ? 65536 : (int64_t)INT32_MAX + 1);
    int64_t docs = 0;
    int64_t nbytes = n * token_bytes;
    void *packed = nc_host_alloc(nbytes > 0 ? nbytes : 1);
    if (!packed) return NC_ERR_OOM;
    for (int64_t i = 0; i < n; i++) {
        int32_t v = src[i];
        if (v < 0 || (int64_t)v >= limit) {
            nc_host_free(packed, nbytes > 0 ? nbytes : 1);
            return nc_fail(NC_ERR_ARG, "%s: %s: token %lld has id %d, outside [0, %lld)%s", op, path, (long long)i, v,
                           (long long)limit, vocab > 0 ? " (the vocab)" : " (the token width)");
        }
        if (v == bos_id) docs++;
        if (token_bytes == 2) ((uint16_t *)packed)[i] = (uint16_t)v;
        else ((uint32_t *)packed)[i] = (uint32_t)v;
    }
    nc_shard_info info;
    memset(&info, 0, sizeof info);
    info.version = NC_SHARD_VERSION;
    info.token_bytes = token_bytes;
    info.count = n;
    info.docs = bos_id >= 0 ? docs : 0;
    info.bos_id = (int32_t)bos_id;
    info.vocab = vocab;
    if (tok_hash && tok_hash[0]) memcpy(info.tok_hash, tok_hash, 16);
    info.checksum = nc_xxh64(packed, nbytes, 0);

    size_t bound = ZSTD_compressBound((size_t)nbytes);
    void *comp = malloc(bound);
    if (!comp) {
        nc_host_free(packed, nbytes > 0 ? nbytes : 1);
        return nc_fail(NC_ERR_OOM, "%s: %s: cannot allocate %zu bytes for compression", op, path, bound);
    }
    size_t csize = ZSTD_compress(comp, bound, packed, (size_t)nbytes, zstd_level);
    nc_host_free(packed, nbytes > 0 ? nbytes : 1);
    if (ZSTD_isError(csize)) {
        free(comp);
        return nc_fail(NC_ERR_IO, "%s: %s: zstd: %s", op, path, ZSTD_getErrorName(csize));
    }
    info.compressed_bytes = (int64_t)csize;
    unsigned char hdr[NC_SHARD_HEADER_BYTES];
    pack_header(hdr, &info);

    char tmp[4200];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid()) >= (int)sizeof tmp) {
        free(comp);
        return nc_fail(NC_ERR_ARG, "%s: path too long: %s", op, path);
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        int e = errno;
        free(comp);
        return nc_fail(NC_ERR_IO, "%s: cannot create %s: %s", op, tmp, strerror(e));
    }
    int bad = write_all_fd(fd, hdr, NC_SHARD_HEADER_BYTES) || write_all_fd(fd, comp, (int64_t)csize) || fsync(fd);
    int e = errno;
    free(comp);
    if (close(fd) != 0 && !bad) { bad = 1; e = errno; }
    if (!bad && rename(tmp, path) != 0) { bad = 1; e = errno; }
    if (bad) {
        unlink(tmp);
        return nc_fail(NC_ERR_IO, "%s: writing %s failed: %s", op, path, strerror(e));
    }
    fsync_parent_dir(path);
    return NC_OK;
}
