/* core/safetensors.c — reading and writing the safetensors format.
 *
 * Promise:
 *  - Layout (the Hugging Face format, little-endian): u64 header length N, N bytes of JSON
 *    header, then the tensor data. The header maps each name to
 *    {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]} (byte offsets relative to
 *    the start of the data, tensors packed back to back in header order) plus an optional
 *    "__metadata__" object of string values. We pad the header with spaces so that 8 + N is a
 *    multiple of 8 (the data start stays aligned).
 *  - Save is atomic: everything goes to "<path>.tmp.<pid>", which is fsync'ed, renamed over
 *    path, and the directory is fsync'ed. On any failure (open, ENOSPC, EIO, short write,
 *    fsync, rename) the temp file is removed, a file already at path is left untouched, and
 *    NC_ERR_IO names the path and strerror. Tensors of any layout and device are written in
 *    logical (row-major) order.
 *  - Reading validates sizes against the file (header length, offsets, byte counts) and reports
 *    NC_ERR_FORMAT with the numbers involved; the JSON header itself is parsed and checked by
 *    the caller (lua/nanochat/io.lua).
 * Packed dtypes (TQ2/TQ1) have no safetensors name: NC_ERR_UNSUPPORTED.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c assumes a little-endian host (the format is little-endian)"
#endif

/* A header larger than this is treated as corruption (the reference implementation uses the same bound). */
#define NC_ST_MAX_HEADER (100LL * 1024 * 1024)

static const char *st_dtype_name(int32_t dtype) {
    switch (dtype) {
    case NC_F32: return "F32";
    case NC_BF16: return "BF16";
    case NC_F16: return "F16";
    case NC_I8: return "I8";
    case NC_I32: return "I32";
    case NC_I64: return "I64";
    case NC_U8: return "U8";
    case NC_F64: return "F64";
    default: return NULL;
    }
}

void nc_free(void *p) { free(p); }

/* ---- a growable string buffer for the header ---------------------------------------------- */
typedef struct { char *p; size_t len, cap; int oom; } sbuf;

static void sb_put(sbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *q = realloc(b->p, cap);
        if (!q) { b->oom = 1; return; }
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}
static void sb_str(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }
static void sb_i64(sbuf *b, int64_t v) {
    char tmp[32];
    int n = snprintf(tmp, sizeof tmp, "%lld", (long long)v);
    sb_put(b, tmp, (size_t)n);
}
/* JSON string literal: quotes, backslashes and control characters escaped; other bytes
 * (UTF-8) pass through. */
static void sb_json_string(sbuf *b, const char *s) {
    sb_put(b, "\"", 1);
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        switch (*c) {
        case '"': sb_put(b, "\\\"", 2); break;
        case '\\': sb_put(b, "\\\\", 2); break;
        case '\n': sb_put(b, "\\n", 2); break;
        case '\r': sb_put(b, "\\r", 2); break;
        case '\t': sb_put(b, "\\t", 2); break;
        case '\b': sb_put(b, "\\b", 2); break;
        case '\f': sb_put(b, "\\f", 2); break;
        default:
            if (*c < 0x20) {
                char tmp[8];
                snprintf(tmp, sizeof tmp, "\\u%04x", *c);
                sb_put(b, tmp, 6);
            } else {
                sb_put(b, (const char *)c, 1);
            }
        }
    }
    sb_put(b, "\"", 1);
}

/* ---- low-level file helpers ---------------------------------------------------------------- */
/* Write all n bytes; on failure returns -1 with errno set (a write that makes no progress is
 * reported as ENOSPC). */
static int write_all(int fd, const void *data, int64_t n) {
    const char *p = data;
    while (n > 0) {
        size_t chunk = n > (1 << 30) ? (size_t)1 << 30 : (size_t)n;
        ssize_t w = write(fd, p, chunk);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (w == 0) { errno = ENOSPC; return -1; }
        p += w;
        n -= w;
    }
    return 0;
}

/* fsync the directory holding path so the rename is durable. Filesystems that cannot sync a
 * directory (EINVAL) are not an error. */
static int fsync_parent_dir(const char *path) {
    const char *slash = strrchr(path, '/');
    char *dir;
    if (!slash) dir = strdup(".");
    else if (slash == path) dir = strdup("/");
    else dir = strndup(path, (size_t)(slash - path));
    if (!dir) { errno = ENOMEM; return -1; }
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    free(dir);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    int e = errno;
    close(fd);
    if (rc != 0 && (e == EINVAL || e == EROFS)) return 0;
    errno = e;
    return rc;
}

/* ---- save ----------------------------------------------------------------------------------- */
/* Checks the arguments and builds the padded header; *sizes receives each tensor's byte count. */
static nc_status build_header(sbuf *hb, int32_t n, const char *const *names, const nc_tensor *const *tensors,
                              const char *metadata_json, int64_t *sizes) {
    sb_put(hb, "{", 1);
    int first = 1;
    if (metadata_json) {
        const char *s = metadata_json;
        while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r') s++;
        size_t len = strlen(s);
        while (len > 0 && (s[len - 1] == ' ' || s[len - 1] == '\t' || s[len - 1] == '\n' || s[len - 1] == '\r')) len--;
        if (len < 2 || s[0] != '{' || s[len - 1] != '}')
            return nc_fail(NC_ERR_ARG, "safetensors_save: metadata must be a JSON object, got '%.60s'", metadata_json);
        sb_str(hb, "\"__metadata__\":");
        sb_put(hb, s, len);
        first = 0;
    }
    int64_t off = 0;
    char desc[NC_DESC_LEN];
    for (int32_t i = 0; i < n; i++) {
        const char *name = names[i];
        const nc_tensor *t = tensors[i];
        if (!name) return nc_fail(NC_ERR_ARG, "safetensors_save: name %d is NULL", i);
        if (!*name) return nc_fail(NC_ERR_ARG, "safetensors_save: name %d is empty", i);
        if (strcmp(name, "__metadata__") == 0)
            return nc_fail(NC_ERR_ARG, "safetensors_save: '__metadata__' is reserved and cannot name a tensor");
        if (!t) return nc_fail(NC_ERR_ARG, "safetensors_save: tensor '%s' is NULL", name);
        for (int32_t j = 0; j < i; j++)
            if (strcmp(names[j], name) == 0)
                return nc_fail(NC_ERR_ARG, "safetensors_save: duplicate tensor name '%s'", name);
        const char *dn = st_dtype_name(t->dtype);
        if (!dn)
            return nc_fail(NC_ERR_UNSUPPORTED, "safetensors_save: tensor '%s' %s: dtype %s has no safetensors name "
                           "(supported: f32, bf16, f16, i8, i32, i64, u8, f64)", name, nc_describe(t, desc, sizeof desc),
                           nc_dtype_info(t->dtype) ? nc_dtype_info(t->dtype)->name : "?");
        int64_t nbytes = nc_tensor_numel(t) * nc_dtype_info(t->dtype)->elem_size;
        sizes[i] = nbytes;
        if (!first) sb_put(hb, ",", 1);
        first = 0;
        sb_json_string(hb, name);
        sb_str(hb, ":{\"dtype\":\"");
        sb_str(hb, dn);
        sb_str(hb, "\",\"shape\":[");
        for (int32_t d = 0; d < t->ndim; d++) {
            if (d) sb_put(hb, ",", 1);
            sb_i64(hb, t->shape[d]);
        }
        sb_str(hb, "],\"data_offsets\":[");
        sb_i64(hb, off);
        sb_put(hb, ",", 1);
        sb_i64(hb, off + nbytes);
        sb_str(hb, "]}");
        off += nbytes;
    }
    sb_put(hb, "}", 1);
    while ((8 + hb->len) % 8) sb_put(hb, " ", 1);
    if (hb->oom) return nc_fail(NC_ERR_OOM, "safetensors_save: out of memory building the header");
    return NC_OK;
}

/* Writes tensor t's elements in logical order (contiguous host copy when needed). */
static nc_status write_tensor(int fd, const char *tmp, const char *name, const nc_tensor *t, int64_t nbytes) {
    if (nbytes == 0) return NC_OK;
    nc_tensor *h = NULL;
    const nc_tensor *src = t;
    if (t->device != NC_CPU) {
        h = nc_tensor_new_to(t, t->dtype, NC_CPU);
        if (!h) {
            char why[512];   /* nc_fail overwrites the message it would read */
            snprintf(why, sizeof why, "%s", nc_last_error());
            return nc_fail(NC_ERR_DEVICE, "safetensors_save: copying tensor '%s' to the host failed: %s", name, why);
        }
        src = h;
    }
    if (!nc_tensor_is_contiguous(src)) {
        nc_tensor *c = nc_tensor_new_clone(src);
        if (h) nc_tensor_release(h);
        if (!c) {
            char why[512];
            snprintf(why, sizeof why, "%s", nc_last_error());
            return nc_fail(NC_ERR_OOM, "safetensors_save: contiguous copy of tensor '%s' failed: %s", name, why);
        }
        h = c;
        src = c;
    }
    int rc = write_all(fd, nc_tensor_data(src), nbytes);
    int e = errno;
    if (h) nc_tensor_release(h);
    if (rc != 0)
        return nc_fail(NC_ERR_IO, "safetensors_save: writing tensor '%s' (%lld bytes) to '%s' failed: %s", name,
                       (long long)nbytes, tmp, strerror(e));
    return NC_OK;
}

nc_status nc_safetensors_save(const char *path, int32_t n, const char *const *names,
                              const nc_tensor *const *tensors, const char *metadata_json) {
    if (!path || !*path) return nc_fail(NC_ERR_ARG, "safetensors_save: path is NULL or empty");
    if (n < 0) return nc_fail(NC_ERR_ARG, "safetensors_save: expected n >= 0 tensors, got %d", n);
    if (n > 0 && (!names || !tensors))
        return nc_fail(NC_ERR_ARG, "safetensors_save: names or tensors is NULL for %d tensors", n);

    int64_t *sizes = calloc((size_t)(n > 0 ? n : 1), sizeof *sizes);
    if (!sizes) return nc_fail(NC_ERR_OOM, "safetensors_save: out of memory");
    sbuf hb = { 0 };
    nc_status st = build_header(&hb, n, names, tensors, metadata_json, sizes);
    if (st != NC_OK) { free(hb.p); free(sizes); return st; }

    size_t plen = strlen(path);
    char *tmp = malloc(plen + 32);
    if (!tmp) { free(hb.p); free(sizes); return nc_fail(NC_ERR_OOM, "safetensors_save: out of memory"); }
    snprintf(tmp, plen + 32, "%s.tmp.%ld", path, (long)getpid());

    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        int e = errno;
        st = nc_fail(NC_ERR_IO, "safetensors_save: cannot create '%s' (to save '%s'): %s", tmp, path, strerror(e));
        goto done;
    }
    uint64_t hlen = (uint64_t)hb.len;
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)(hlen >> (8 * i));
    if (write_all(fd, len8, 8) != 0 || write_all(fd, hb.p, (int64_t)hb.len) != 0) {
        int e = errno;
        st = nc_fail(NC_ERR_IO, "safetensors_save: writing the header to '%s' failed: %s", tmp, strerror(e));
        goto fail_fd;
    }
    for (int32_t i = 0; i < n; i++) {
        st = write_tensor(fd, tmp, names[i], tensors[i], sizes[i]);
        if (st != NC_OK) goto fail_fd;
    }
    if (fsync(fd) != 0) {
        int e = errno;
        st = nc_fail(NC_ERR_IO, "safetensors_save: fsync of '%s' failed: %s", tmp, strerror(e));
        goto fail_fd;
    }
    if (close(fd) != 0) {
        int e = errno;
        fd = -1;
        st = nc_fail(NC_ERR_IO, "safetensors_save: closing '%s' failed: %s", tmp, strerror(e));
        goto fail_unlink;
    }
    fd = -1;
    if (rename(tmp, path) != 0) {
        int e = errno;
        st = nc_fail(NC_ERR_IO, "safetensors_save: renaming '%s' to '%s' failed: %s", tmp, path, strerror(e));
        goto fail_unlink;
    }
    if (fsync_parent_dir(path) != 0) {
        int e = errno;
        /* the new file is in place; only its durability across a crash is in doubt */
        st = nc_fail(NC_ERR_IO, "safetensors_save: '%s' was written but fsync of its directory failed: %s", path,
                     strerror(e));
        goto done;
    }
    st = NC_OK;
    goto done;

fail_fd:
    close(fd);
fail_unlink:
    unlink(tmp);
done:
    free(tmp);
    free(hb.p);
    free(sizes);
    return st;
}

/* ---- read ----------------------------------------------------------------------------------- */
/* pread exactly n bytes at off; returns bytes read (< n at end of file) or -1 with errno. */
static int64_t pread_all(int fd, void *buf, int64_t n, int64_t off) {
    char *p = buf;
    int64_t got = 0;
    while (got < n) {
        int64_t want = n - got;
        size_t chunk = want > (1 << 30) ? (size_t)1 << 30 : (size_t)want;
        ssize_t r = pread(fd, p + got, chunk, (off_t)(off + got));
        if (r < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (r == 0) break;
        got += r;
    }
    return got;
}

static nc_status open_sized(const char *op, const char *path, int *fd_out, int64_t *size_out) {
    if (!path || !*path) return nc_fail(NC_ERR_ARG, "%s: path is NULL or empty", op);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        return nc_fail(NC_ERR_IO, "%s: cannot open '%s': %s", op, path, strerror(e));
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return nc_fail(NC_ERR_IO, "%s: cannot stat '%s': %s", op, path, strerror(e));
    }
    if (S_ISDIR(sb.st_mode)) {
        close(fd);
        return nc_fail(NC_ERR_IO, "%s: '%s' is a directory, not a file", op, path);
    }
    *fd_out = fd;
    *size_out = (int64_t)sb.st_size;
    return NC_OK;
}

nc_status nc_safetensors_read_header(const char *path, char **json_out, int64_t *data_start, int64_t *file_size) {
    if (!json_out) return nc_fail(NC_ERR_ARG, "safetensors: json_out is NULL");
    *json_out = NULL;
    int fd;
    int64_t size;
    NC_TRY(open_sized("safetensors", path, &fd, &size));
    nc_status st = NC_OK;
    unsigned char len8[8];
    int64_t got = pread_all(fd, len8, 8, 0);
    if (got < 0) {
        int e = errno;
        st = nc_fail(NC_ERR_IO, "safetensors: reading '%s' failed: %s", path, strerror(e));
        goto out;
    }
    if (got < 8) {
        st = nc_fail(NC_ERR_FORMAT, "safetensors: file is %lld bytes, too short for the 8-byte header length ('%s')",
                     (long long)size, path);
        goto out;
    }
    uint64_t n = 0;
    for (int i = 0; i < 8; i++) n |= (uint64_t)len8[i] << (8 * i);
    if (n > (uint64_t)(size - 8) || n > (uint64_t)NC_ST_MAX_HEADER) {
        if (n > (uint64_t)(size - 8))
            st = nc_fail(NC_ERR_FORMAT, "safetensors: header length %llu exceeds file size %lld ('%s')",
                         (unsigned long long)n, (long long)size, path);
        else
            st = nc_fail(NC_ERR_FORMAT, "safetensors: header length %llu exceeds the 100 MB limit ('%s')",
                         (unsigned long long)n, path);
        goto out;
    }
    if (n < 2) {
        st = nc_fail(NC_ERR_FORMAT, "safetensors: header length %llu is too small for a JSON object ('%s')",
                     (unsigned long long)n, path);
        goto out;
    }
    char *json = malloc((size_t)n + 1);
    if (!json) {
        st = nc_fail(NC_ERR_OOM, "safetensors: out of memory for a %llu-byte header", (unsigned long long)n);
        goto out;
    }
    got = pread_all(fd, json, (int64_t)n, 8);
    if (got != (int64_t)n) {
        int e = errno;
        free(json);
        if (got < 0) st = nc_fail(NC_ERR_IO, "safetensors: reading the header of '%s' failed: %s", path, strerror(e));
        else st = nc_fail(NC_ERR_FORMAT, "safetensors: file ended after %lld of %llu header bytes ('%s')",
                          (long long)got, (unsigned long long)n, path);
        goto out;
    }
    json[n] = 0;
    if (memchr(json, 0, (size_t)n)) {
        free(json);
        st = nc_fail(NC_ERR_FORMAT, "safetensors: header contains a NUL byte ('%s')", path);
        goto out;
    }
    *json_out = json;
    if (data_start) *data_start = 8 + (int64_t)n;
    if (file_size) *file_size = size;
out:
    close(fd);
    return st;
}

nc_tensor *nc_tensor_new_from_file(const char *path, int64_t offset, int64_t nbytes,
                                   int32_t dtype, int32_t ndim, const int64_t *shape) {
    const nc_dtype_traits *tr = nc_dtype_info(dtype);
    if (!tr) { nc_fail(NC_ERR_DTYPE, "from_file: unknown dtype %d", dtype); return NULL; }
    if (ndim < 0 || ndim > NC_MAX_DIMS) {
        nc_fail(NC_ERR_SHAPE, "from_file: ndim must be in [0, %d], got %d", NC_MAX_DIMS, ndim);
        return NULL;
    }
    if (ndim > 0 && !shape) { nc_fail(NC_ERR_ARG, "from_file: shape is NULL"); return NULL; }
    int64_t numel = 1;
    for (int32_t d = 0; d < ndim; d++) {
        if (shape[d] < 0) {
            nc_fail(NC_ERR_SHAPE, "from_file: dim %d has negative size %lld", d, (long long)shape[d]);
            return NULL;
        }
        if (shape[d] && numel > INT64_MAX / 16 / shape[d]) {
            nc_fail(NC_ERR_SHAPE, "from_file: shape is too large");
            return NULL;
        }
        numel *= shape[d];
    }
    int64_t expect = (numel + tr->block_elems - 1) / tr->block_elems * tr->block_bytes;
    if (nbytes != expect) {
        nc_fail(NC_ERR_FORMAT, "from_file: %lld elements of %s need %lld bytes, got %lld ('%s')", (long long)numel,
                tr->name, (long long)expect, (long long)nbytes, path ? path : "NULL");
        return NULL;
    }
    if (offset < 0) {
        nc_fail(NC_ERR_FORMAT, "from_file: negative offset %lld ('%s')", (long long)offset, path ? path : "NULL");
        return NULL;
    }
    int fd;
    int64_t size;
    if (open_sized("from_file", path, &fd, &size) != NC_OK) return NULL;
    if (offset > size || nbytes > size - offset) {
        close(fd);
        nc_fail(NC_ERR_FORMAT, "from_file: bytes [%lld, %lld) lie outside the file of %lld bytes ('%s')",
                (long long)offset, (long long)offset + nbytes, (long long)size, path);
        return NULL;
    }
    nc_tensor *t = nc_tensor_new(dtype, NC_CPU, ndim, shape);
    if (!t) { close(fd); return NULL; }
    if (nbytes > 0) {
        int64_t got = pread_all(fd, nc_tensor_data(t), nbytes, offset);
        if (got != nbytes) {
            int e = errno;
            close(fd);
            nc_tensor_release(t);
            if (got < 0)
                nc_fail(NC_ERR_IO, "from_file: reading %lld bytes at offset %lld of '%s' failed: %s", (long long)nbytes,
                        (long long)offset, path, strerror(e));
            else
                nc_fail(NC_ERR_FORMAT, "from_file: file ended after %lld of %lld bytes at offset %lld ('%s')",
                        (long long)got, (long long)nbytes, (long long)offset, path);
            return NULL;
        }
    }
    close(fd);
    return t;
}
