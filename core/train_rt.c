/* core/train_rt.c — the training runtime's C helpers: a polled signal flag (Ctrl-C during
 * training), the file-system steps of atomic checkpoints, CRC-32C (TensorBoard record framing and
 * checkpoint checksums), clocks, and the global gradient norm / scale over a list of tensors.
 *
 * Promise:
 *  - Signals are pull-style (design.md: no C -> Lua callbacks). nc_signal_install(sig) saves the
 *    current handler (the launcher's REPL handler, or SIG_DFL in scripts) and installs one that
 *    only counts deliveries; nc_signal_pending polls the count; nc_signal_restore puts the saved
 *    handler back. Installs nest: only the outermost restore reinstates the saved handler.
 *  - File helpers return nc_status with the path and strerror in the message. nc_fs_write_file
 *    writes, fsyncs and closes; a short write or ENOSPC is an NC_ERR_IO naming the file.
 *    nc_fs_inject_failure(n, err) makes the n-th next nc_fs_write_file fail with errno err (tests
 *    simulate a full disk with it).
 *  - nc_crc32c is CRC-32C (Castagnoli, reflected 0x82F63B78): nc_crc32c(0, "123456789", 9) ==
 *    0xE3069283; chaining nc_crc32c(nc_crc32c(0, a, n), b, m) equals the CRC of a || b.
 *  - nc_sum_squares accumulates sum(x^2) over every element of n CPU f32 tensors in double (fixed
 *    order per tensor chunk, so the result does not depend on the thread count); nc_scale_tensors
 *    multiplies them in place. Both are one pass over the data.
 */
#include "internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- signals -------------------------------------------------------------------------------- */
#define NC_NSIG 65
static volatile sig_atomic_t g_pending[NC_NSIG];
static struct sigaction g_saved[NC_NSIG];
static int g_depth[NC_NSIG];

static void on_signal(int sig) {
    if (sig > 0 && sig < NC_NSIG) g_pending[sig] = g_pending[sig] + 1;
}

static nc_status check_sig(const char *op, int32_t sig) {
    if (sig <= 0 || sig >= NC_NSIG) return nc_fail(NC_ERR_ARG, "%s: signal number %d out of range [1, %d)", op, sig, NC_NSIG);
    return NC_OK;
}

nc_status nc_signal_install(int32_t sig) {
    NC_TRY(check_sig("signal_install", sig));
    if (g_depth[sig]++ > 0) return NC_OK;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;   /* a training step's read()/write() just continue */
    g_pending[sig] = 0;
    if (sigaction(sig, &sa, &g_saved[sig]) != 0) {
        int e = errno;
        g_depth[sig] = 0;
        return nc_fail(NC_ERR_ARG, "signal_install: sigaction(%d) failed: %s", sig, strerror(e));
    }
    return NC_OK;
}

int32_t nc_signal_pending(int32_t sig) {
    if (sig <= 0 || sig >= NC_NSIG) return 0;
    return (int32_t)g_pending[sig];
}

void nc_signal_clear(int32_t sig) {
    if (sig > 0 && sig < NC_NSIG) g_pending[sig] = 0;
}

nc_status nc_signal_restore(int32_t sig) {
    NC_TRY(check_sig("signal_restore", sig));
    if (g_depth[sig] == 0) return nc_fail(NC_ERR_ARG, "signal_restore: no handler installed for signal %d", sig);
    if (--g_depth[sig] > 0) return NC_OK;
    if (sigaction(sig, &g_saved[sig], NULL) != 0) {
        int e = errno;
        return nc_fail(NC_ERR_ARG, "signal_restore: sigaction(%d) failed: %s", sig, strerror(e));
    }
    return NC_OK;
}

nc_status nc_signal_raise(int32_t sig) {
    NC_TRY(check_sig("signal_raise", sig));
    if (raise(sig) != 0) return nc_fail(NC_ERR_ARG, "signal_raise: raise(%d) failed", sig);
    return NC_OK;
}

/* ---- files ----------------------------------------------------------------------------------- */
static int g_fail_after, g_fail_errno;

void nc_fs_inject_failure(int32_t after_n_writes, int32_t err) {
    g_fail_after = after_n_writes > 0 ? after_n_writes : 0;
    g_fail_errno = err ? err : ENOSPC;
}

int32_t nc_fs_kind(const char *path) {
    struct stat st;
    if (!path || stat(path, &st) != 0) return 0;
    if (S_ISREG(st.st_mode)) return 1;
    if (S_ISDIR(st.st_mode)) return 2;
    return 3;
}

nc_status nc_fs_mkdir(const char *path) {
    if (!path || !*path) return nc_fail(NC_ERR_ARG, "fs_mkdir: empty path");
    if (mkdir(path, 0777) == 0) return NC_OK;
    int e = errno;
    if (e == EEXIST && nc_fs_kind(path) == 2) return NC_OK;
    return nc_fail(NC_ERR_IO, "fs_mkdir: cannot create directory '%s': %s", path, strerror(e));
}

nc_status nc_fs_rename(const char *from, const char *to) {
    if (!from || !to) return nc_fail(NC_ERR_ARG, "fs_rename: NULL path");
    if (rename(from, to) == 0) return NC_OK;
    int e = errno;
    return nc_fail(NC_ERR_IO, "fs_rename: cannot rename '%s' to '%s': %s", from, to, strerror(e));
}

nc_status nc_fs_fsync(const char *path) {
    if (!path) return nc_fail(NC_ERR_ARG, "fs_fsync: NULL path");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        return nc_fail(NC_ERR_IO, "fs_fsync: cannot open '%s': %s", path, strerror(e));
    }
    int rc = fsync(fd);
    int e = errno;
    close(fd);
    /* some file systems cannot fsync a directory (EINVAL); the data itself was synced already */
    if (rc != 0 && e != EINVAL && e != EROFS) return nc_fail(NC_ERR_IO, "fs_fsync: fsync of '%s' failed: %s", path, strerror(e));
    return NC_OK;
}

nc_status nc_fs_write_file(const char *path, const void *data, int64_t n) {
    if (!path || (n > 0 && !data) || n < 0) return nc_fail(NC_ERR_ARG, "fs_write_file: bad arguments");
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (fd < 0) {
        int e = errno;
        return nc_fail(NC_ERR_IO, "fs_write_file: cannot create '%s': %s", path, strerror(e));
    }
    int inject = 0;
    if (g_fail_after > 0 && --g_fail_after == 0) inject = g_fail_errno;
    const char *p = data;
    int64_t left = n;
    while (left > 0 && !inject) {
        ssize_t w = write(fd, p, (size_t)(left > (1 << 30) ? (1 << 30) : left));
        if (w < 0) {
            if (errno == EINTR) continue;
            inject = errno;
            break;
        }
        if (w == 0) { inject = ENOSPC; break; }
        p += w;
        left -= w;
    }
    if (inject) {
        close(fd);
        unlink(path);
        return nc_fail(NC_ERR_IO, "fs_write_file: writing '%s' failed after %lld of %lld bytes: %s", path,
                       (long long)(n - left), (long long)n, strerror(inject));
    }
    if (fsync(fd) != 0) {
        int e = errno;
        close(fd);
        unlink(path);
        return nc_fail(NC_ERR_IO, "fs_write_file: fsync of '%s' failed: %s", path, strerror(e));
    }
    if (close(fd) != 0) {
        int e = errno;
        unlink(path);
        return nc_fail(NC_ERR_IO, "fs_write_file: close of '%s' failed: %s", path, strerror(e));
    }
    return NC_OK;
}

nc_status nc_fs_list_dir(const char *path, char **names_out) {
    if (!path || !names_out) return nc_fail(NC_ERR_ARG, "fs_list_dir: NULL argument");
    *names_out = NULL;
    DIR *d = opendir(path);
    if (!d) {
        int e = errno;
        return nc_fail(NC_ERR_IO, "fs_list_dir: cannot open directory '%s': %s", path, strerror(e));
    }
    size_t cap = 256, len = 0;
    char *buf = malloc(cap);
    if (!buf) { closedir(d); return nc_fail(NC_ERR_OOM, "fs_list_dir: out of memory"); }
    buf[0] = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        size_t l = strlen(de->d_name);
        if (len + l + 2 > cap) {
            while (len + l + 2 > cap) cap *= 2;
            char *nb = realloc(buf, cap);
            if (!nb) { free(buf); closedir(d); return nc_fail(NC_ERR_OOM, "fs_list_dir: out of memory"); }
            buf = nb;
        }
        memcpy(buf + len, de->d_name, l);
        len += l;
        buf[len++] = '\n';
        buf[len] = 0;
    }
    closedir(d);
    *names_out = buf;
    return NC_OK;
}

/* Removes a file, or a directory with everything under it (symlinks are removed, never followed). */
nc_status nc_fs_remove_tree(const char *path) {
    if (!path || !*path) return nc_fail(NC_ERR_ARG, "fs_remove_tree: empty path");
    struct stat st;
    if (lstat(path, &st) != 0) {
        if (errno == ENOENT) return NC_OK;
        int e = errno;
        return nc_fail(NC_ERR_IO, "fs_remove_tree: cannot stat '%s': %s", path, strerror(e));
    }
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(path);
        if (!d) {
            int e = errno;
            return nc_fail(NC_ERR_IO, "fs_remove_tree: cannot open '%s': %s", path, strerror(e));
        }
        struct dirent *de;
        nc_status s = NC_OK;
        while (s == NC_OK && (de = readdir(d)) != NULL) {
            if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
            size_t n = strlen(path) + strlen(de->d_name) + 2;
            char *child = malloc(n);
            if (!child) { s = nc_fail(NC_ERR_OOM, "fs_remove_tree: out of memory"); break; }
            snprintf(child, n, "%s/%s", path, de->d_name);
            s = nc_fs_remove_tree(child);
            free(child);
        }
        closedir(d);
        if (s != NC_OK) return s;
        if (rmdir(path) != 0) {
            int e = errno;
            return nc_fail(NC_ERR_IO, "fs_remove_tree: cannot remove directory '%s': %s", path, strerror(e));
        }
        return NC_OK;
    }
    if (unlink(path) != 0) {
        int e = errno;
        return nc_fail(NC_ERR_IO, "fs_remove_tree: cannot remove '%s': %s", path, strerror(e));
    }
    return NC_OK;
}

/* ---- CRC-32C (slicing by 8) ------------------------------------------------------------------ */
static uint32_t crc_table[8][256];
static int crc_ready;

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
        crc_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int s = 1; s < 8; s++) crc_table[s][i] = (crc_table[s - 1][i] >> 8) ^ crc_table[0][crc_table[s - 1][i] & 0xFF];
    __atomic_store_n(&crc_ready, 1, __ATOMIC_RELEASE);
}

uint32_t nc_crc32c(uint32_t crc, const void *data, int64_t n) {
    if (!__atomic_load_n(&crc_ready, __ATOMIC_ACQUIRE)) crc_init();   /* idempotent: same table */
    const unsigned char *p = data;
    uint32_t c = ~crc;
    while (n >= 8) {
        uint32_t lo = c ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
        c = crc_table[7][lo & 0xFF] ^ crc_table[6][(lo >> 8) & 0xFF] ^ crc_table[5][(lo >> 16) & 0xFF] ^
            crc_table[4][lo >> 24] ^ crc_table[3][p[4]] ^ crc_table[2][p[5]] ^ crc_table[1][p[6]] ^ crc_table[0][p[7]];
        p += 8;
        n -= 8;
    }
    while (n-- > 0) c = (c >> 8) ^ crc_table[0][(c ^ *p++) & 0xFF];
    return ~c;
}

nc_status nc_fs_checksum(const char *path, uint32_t *crc_out, int64_t *size_out) {
    if (!path || !crc_out || !size_out) return nc_fail(NC_ERR_ARG, "fs_checksum: NULL argument");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        return nc_fail(NC_ERR_IO, "fs_checksum: cannot open '%s': %s", path, strerror(e));
    }
    enum { BUF = 1 << 20 };
    char *buf = malloc(BUF);
    if (!buf) { close(fd); return nc_fail(NC_ERR_OOM, "fs_checksum: out of memory"); }
    uint32_t crc = 0;
    int64_t total = 0;
    for (;;) {
        ssize_t r = read(fd, buf, BUF);
        if (r < 0) {
            if (errno == EINTR) continue;
            int e = errno;
            free(buf);
            close(fd);
            return nc_fail(NC_ERR_IO, "fs_checksum: reading '%s' failed: %s", path, strerror(e));
        }
        if (r == 0) break;
        crc = nc_crc32c(crc, buf, r);
        total += r;
    }
    free(buf);
    close(fd);
    *crc_out = crc;
    *size_out = total;
    return NC_OK;
}

/* ---- clocks, host, tty ----------------------------------------------------------------------- */
double nc_wall_time(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

double nc_monotonic_time(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int32_t nc_isatty(int32_t fd) { return isatty(fd) ? 1 : 0; }
int32_t nc_getpid(void) { return (int32_t)getpid(); }

nc_status nc_hostname(char *buf, int64_t n) {
    if (!buf || n < 2) return nc_fail(NC_ERR_ARG, "hostname: buffer too small");
    if (gethostname(buf, (size_t)n - 1) != 0) snprintf(buf, (size_t)n, "localhost");
    buf[n - 1] = 0;
    return NC_OK;
}

/* ---- gradient norm and scaling --------------------------------------------------------------- */
static nc_status check_grads(const char *op, int32_t n, const nc_tensor *const *ts) {
    if (n < 0 || (n > 0 && !ts)) return nc_fail(NC_ERR_ARG, "%s: bad tensor list (n = %d)", op, n);
    for (int32_t i = 0; i < n; i++) {
        char arg[32];
        snprintf(arg, sizeof arg, "tensor %d", i);
        NC_TRY(nc_check_not_null(op, arg, ts[i]));
        NC_TRY(nc_check_dtype(op, arg, ts[i], NC_F32));
        NC_TRY(nc_check_cpu(op, arg, ts[i]));
        NC_TRY(nc_check_contiguous(op, arg, ts[i]));
    }
    return NC_OK;
}

/* Chunks of fixed size: each chunk sums in double, chunk sums are added in order, so the result
 * is the same for any thread count. */
#define NC_SQ_CHUNK 16384
nc_status nc_sum_squares(double *out, int32_t n, const nc_tensor *const *ts) {
    if (!out) return nc_fail(NC_ERR_ARG, "sum_squares: out is NULL");
    NC_TRY(check_grads("sum_squares", n, ts));
    double total = 0;
    for (int32_t i = 0; i < n; i++) {
        const float *x = nc_f32p(ts[i]);
        int64_t m = nc_tensor_numel(ts[i]);
        int64_t nch = (m + NC_SQ_CHUNK - 1) / NC_SQ_CHUNK;
        if (nch <= 1) {
            double s = 0;
            for (int64_t j = 0; j < m; j++) s += (double)x[j] * x[j];
            total += s;
            continue;
        }
        double *part = malloc((size_t)nch * sizeof *part);
        if (!part) return nc_fail(NC_ERR_OOM, "sum_squares: out of memory");
        #pragma omp parallel for schedule(static) num_threads(nc_threads()) if (m >= NC_PAR_MIN)
        for (int64_t c = 0; c < nch; c++) {
            int64_t b = c * NC_SQ_CHUNK, e = b + NC_SQ_CHUNK < m ? b + NC_SQ_CHUNK : m;
            double s = 0;
            for (int64_t j = b; j < e; j++) s += (double)x[j] * x[j];
            part[c] = s;
        }
        for (int64_t c = 0; c < nch; c++) total += part[c];
        free(part);
    }
    *out = total;
    return NC_OK;
}

nc_status nc_scale_tensors(int32_t n, nc_tensor *const *ts, double s) {
    NC_TRY(check_grads("scale_tensors", n, (const nc_tensor *const *)ts));
    float f = (float)s;
    for (int32_t i = 0; i < n; i++) {
        float *x = nc_f32p(ts[i]);
        int64_t m = nc_tensor_numel(ts[i]);
        #pragma omp parallel for schedule(static) num_threads(nc_threads()) if (m >= NC_PAR_MIN)
        for (int64_t j = 0; j < m; j++) x[j] *= f;
    }
    return NC_OK;
}
