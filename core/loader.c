/* core/loader.c — the token data loader: producer pthreads, a bounded batch queue, an LRU
 * cache of decompressed shards.
 *
 * Promise:
 *  - Pull-style: nc_loader_next blocks on a condition variable until batch `cursor` is ready;
 *    nothing calls back into Lua. Producers claim batch indices in order and write batch k into
 *    slot k % prefetch; they never run more than `prefetch` batches ahead of the consumer.
 *  - Determinism: batch k depends only on (shards, B, T, sampling, seed, k): row r of batch k
 *    draws Philox4x32-10(seed, counter k*B + r) (the core's counter-based generator). Thread
 *    count, timing and cache state never change a batch, so resuming is nc_loader_seek(cursor).
 *  - Sampling spaces (see core/nanochat.h): random = every start p with p + T + 1 <= count of
 *    every shard (shards weighted by their number of starts, i.e. by size); doc = the BOS
 *    positions with the same condition; sequential = windows w*T .. w*T+T of the concatenated
 *    shards. A uniform 64-bit draw u maps to position floor(u * n / 2^64) of an n-position
 *    space (bias < n / 2^64).
 *  - Memory: decompressed shards stay in a cache capped at cache_bytes (least recently used
 *    unpinned shards are evicted first; pinned ones — being copied from — may exceed the cap
 *    briefly); the queue holds prefetch blocks of B*(T+1) int64.
 *  - Errors: configuration and header problems fail nc_loader_new; a producer error (corrupt
 *    payload, checksum, a shard that changed on disk) stops the producers and is returned by
 *    the nc_loader_next that needs the missing batch, with the message naming the file.
 */
#include "internal.h"
#include "shards_internal.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { SLOT_EMPTY = 0, SLOT_FILLING = 1, SLOT_READY = 2 };
enum { ENT_NONE = 0, ENT_LOADING = 1, ENT_LOADED = 2 };
#define LOADER_DEFAULT_CACHE (1LL << 30)

typedef struct {
    int32_t state;
    int64_t index;
    int64_t rows;
    int64_t *blk;            /* (B, T+1) */
} slot;

typedef struct {
    int32_t state;
    int32_t pins;
    uint64_t tick;
    void *tokens;            /* info.count ids of info.token_bytes bytes */
    int64_t *starts;         /* doc sampling: BOS positions p with p + T + 1 <= count */
    int64_t n_starts;
    int64_t bytes;
} cache_entry;

struct nc_loader {
    int32_t n_shards;
    char **paths;
    nc_shard_info *info;
    int64_t *prefix;         /* n_shards + 1: cumulative sampling positions per shard */
    int64_t *tok_prefix;     /* n_shards + 1: cumulative tokens */
    int64_t B, T;
    uint64_t seed;
    int32_t sampling, loop, threads, depth;
    int64_t cache_cap;
    int64_t bos_id;
    char tok_hash[24];
    int64_t total_tokens, positions, n_batches;

    pthread_mutex_t mu;
    pthread_cond_t cv_ready, cv_space, cv_cache;
    pthread_t *tids;
    int32_t running;         /* threads started */
    int32_t stop;
    int64_t cursor, claim;
    slot *slots;
    cache_entry *cache;
    int64_t cache_bytes;
    uint64_t tick;
    nc_status err;
    char errmsg[1024];
    int64_t wait_ns, batches_made, shard_loads;
};

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static inline int64_t tok_at(const void *tokens, int32_t width, int64_t i) {
    return width == 2 ? (int64_t)((const uint16_t *)tokens)[i] : (int64_t)((const uint32_t *)tokens)[i];
}

/* uniform position in [0, n) from Philox(seed, counter) */
static int64_t draw(uint64_t seed, uint64_t counter, int64_t n) {
    uint32_t r[4];
    nc_philox4x32(seed, counter, r);
    uint64_t u = (uint64_t)r[0] | ((uint64_t)r[1] << 32);
    return (int64_t)(((unsigned __int128)u * (uint64_t)n) >> 64);
}

/* the shard i with prefix[i] <= g < prefix[i+1] (prefix non-decreasing, prefix[0] = 0) */
static int32_t find_shard(const int64_t *prefix, int32_t n, int64_t g) {
    int32_t lo = 0, hi = n;   /* invariant: prefix[lo] <= g < prefix[hi] */
    while (hi - lo > 1) {
        int32_t mid = lo + (hi - lo) / 2;
        if (prefix[mid] <= g) lo = mid;
        else hi = mid;
    }
    return lo;
}

/* ---- shard cache --------------------------------------------------------------------------- */
static void entry_free(cache_entry *e, const nc_shard_info *info) {
    nc_shard_free_tokens(e->tokens, info);
    free(e->starts);
    e->tokens = NULL;
    e->starts = NULL;
    e->n_starts = 0;
    e->bytes = 0;
    e->state = ENT_NONE;
}

/* Called with mu held: drop least recently used unpinned shards (other than keep) while over the cap. */
static void evict(nc_loader *L, int32_t keep) {
    while (L->cache_bytes > L->cache_cap) {
        int32_t victim = -1;
        uint64_t oldest = UINT64_MAX;
        for (int32_t i = 0; i < L->n_shards; i++) {
            cache_entry *e = &L->cache[i];
            if (i != keep && e->state == ENT_LOADED && e->pins == 0 && e->tick < oldest) {
                oldest = e->tick;
                victim = i;
            }
        }
        if (victim < 0) return;
        L->cache_bytes -= L->cache[victim].bytes;
        entry_free(&L->cache[victim], &L->info[victim]);
    }
}

/* Load shard i outside the lock: tokens, and for doc sampling the valid BOS starts. The file
 * must still match the header the loader opened (count and checksum). */
static nc_status load_entry(nc_loader *L, int32_t i, cache_entry *out) {
    nc_shard_info info;
    void *tok;
    NC_TRY(nc_shard_load(L->paths[i], L->tok_hash, &info, &tok));
    const nc_shard_info *want = &L->info[i];
    if (info.count != want->count || info.checksum != want->checksum || info.token_bytes != want->token_bytes) {
        nc_shard_free_tokens(tok, &info);
        return nc_fail(NC_ERR_FORMAT, "shard %s: the file changed since the loader opened it (%lld tokens, "
                       "checksum %016llx; was %lld tokens, %016llx)", L->paths[i], (long long)info.count,
                       (unsigned long long)info.checksum, (long long)want->count, (unsigned long long)want->checksum);
    }
    out->tokens = tok;
    out->bytes = info.count * info.token_bytes;
    out->starts = NULL;
    out->n_starts = 0;
    if (L->sampling == NC_SAMPLE_DOC) {
        int64_t last = info.count - (L->T + 1);   /* largest start whose window fits */
        int64_t n = 0;
        for (int64_t p = 0; p <= last; p++) n += tok_at(tok, info.token_bytes, p) == L->bos_id;
        out->starts = malloc((size_t)(n > 0 ? n : 1) * sizeof(int64_t));
        if (!out->starts) {
            nc_shard_free_tokens(tok, &info);
            return nc_fail(NC_ERR_OOM, "shard %s: cannot allocate the BOS index (%lld entries)", L->paths[i], (long long)n);
        }
        int64_t j = 0;
        for (int64_t p = 0; p <= last; p++) {
            if (tok_at(tok, info.token_bytes, p) == L->bos_id) out->starts[j++] = p;
        }
        out->n_starts = n;
        out->bytes += n * (int64_t)sizeof(int64_t);
    }
    return NC_OK;
}

/* Pin shard i in the cache, loading it if needed. */
static nc_status cache_get(nc_loader *L, int32_t i, cache_entry **out) {
    cache_entry *e = &L->cache[i];
    pthread_mutex_lock(&L->mu);
    for (;;) {
        if (e->state == ENT_LOADED) {
            e->pins++;
            e->tick = ++L->tick;
            pthread_mutex_unlock(&L->mu);
            *out = e;
            return NC_OK;
        }
        if (e->state == ENT_NONE) break;
        pthread_cond_wait(&L->cv_cache, &L->mu);   /* another thread is loading it */
    }
    e->state = ENT_LOADING;
    pthread_mutex_unlock(&L->mu);

    cache_entry loaded = { 0 };
    nc_status s = load_entry(L, i, &loaded);

    pthread_mutex_lock(&L->mu);
    if (s != NC_OK) {
        e->state = ENT_NONE;
    } else {
        e->tokens = loaded.tokens;
        e->starts = loaded.starts;
        e->n_starts = loaded.n_starts;
        e->bytes = loaded.bytes;
        e->state = ENT_LOADED;
        e->pins = 1;
        e->tick = ++L->tick;
        L->cache_bytes += e->bytes;
        L->shard_loads++;
        evict(L, i);
        *out = e;
    }
    pthread_cond_broadcast(&L->cv_cache);
    pthread_mutex_unlock(&L->mu);
    return s;
}

static void cache_put(nc_loader *L, cache_entry *e) {
    pthread_mutex_lock(&L->mu);
    e->pins--;
    pthread_mutex_unlock(&L->mu);
}

/* ---- batch assembly ------------------------------------------------------------------------ */
/* Copy n tokens of shard i from offset off into dst (as int64). */
static nc_status copy_tokens(nc_loader *L, int32_t i, int64_t off, int64_t n, int64_t *dst) {
    cache_entry *e;
    NC_TRY(cache_get(L, i, &e));
    int32_t w = L->info[i].token_bytes;
    if (w == 2) {
        const uint16_t *src = (const uint16_t *)e->tokens + off;
        for (int64_t t = 0; t < n; t++) dst[t] = src[t];
    } else {
        const uint32_t *src = (const uint32_t *)e->tokens + off;
        for (int64_t t = 0; t < n; t++) dst[t] = src[t];
    }
    cache_put(L, e);
    return NC_OK;
}

/* Sequential: window w = k*B + r starts at global token w*T and may span several shards. */
static nc_status fill_sequential(nc_loader *L, int64_t k, int64_t *blk, int64_t *rows) {
    const int64_t B = L->B, W = L->T + 1;
    for (int64_t r = 0; r < B; r++) {
        int64_t *dst = blk + r * W;
        int64_t w = k * B + r;
        if (L->loop) w %= L->positions;
        else if (w >= L->positions) break;
        int64_t g = w * L->T, need = W;          /* global token offset of the window */
        int32_t i = find_shard(L->tok_prefix, L->n_shards, g);
        while (need > 0) {
            while (g >= L->tok_prefix[i + 1]) i++;   /* skips empty shards too */
            int64_t off = g - L->tok_prefix[i];
            int64_t n = L->info[i].count - off;
            if (n > need) n = need;
            NC_TRY(copy_tokens(L, i, off, n, dst));
            dst += n;
            g += n;
            need -= n;
        }
        *rows = r + 1;
    }
    return NC_OK;
}

typedef struct { int64_t g, r; } draw_t;
static int cmp_draw(const void *a, const void *b) {
    const draw_t *x = a, *y = b;
    return x->g < y->g ? -1 : x->g > y->g ? 1 : (x->r > y->r) - (x->r < y->r);
}

/* Fill blk (B, T+1) with batch k; *rows = rows filled. Random/doc rows are drawn first and
 * then filled in position order, so each shard of the batch is pinned (or loaded, when the
 * cache is smaller than the data) once per run of rows instead of once per row; row r's
 * content depends only on its own draw. */
static nc_status fill_batch(nc_loader *L, int64_t k, int64_t *blk, int64_t *rows) {
    const int64_t B = L->B, W = L->T + 1;
    *rows = 0;
    if (L->sampling == NC_SAMPLE_SEQUENTIAL) return fill_sequential(L, k, blk, rows);
    draw_t *d = malloc((size_t)B * sizeof *d);
    if (!d) return nc_fail(NC_ERR_OOM, "nc_loader: out of memory for a batch of %lld rows", (long long)B);
    for (int64_t r = 0; r < B; r++) {
        d[r].g = draw(L->seed, (uint64_t)(k * B + r), L->positions);
        d[r].r = r;
    }
    qsort(d, (size_t)B, sizeof *d, cmp_draw);
    nc_status s = NC_OK;
    cache_entry *e = NULL;
    int32_t cur = -1;
    for (int64_t q = 0; q < B && s == NC_OK; q++) {
        int32_t i = find_shard(L->prefix, L->n_shards, d[q].g);
        int64_t j = d[q].g - L->prefix[i];
        if (i != cur) {
            if (e) cache_put(L, e);
            e = NULL;
            cur = i;
            s = cache_get(L, i, &e);
            if (s != NC_OK) break;
        }
        int64_t p = j;
        if (L->sampling == NC_SAMPLE_DOC) {
            if (j >= e->n_starts) {
                s = nc_fail(NC_ERR_FORMAT, "shard %s: BOS index out of date (corrupt or changed file)", L->paths[i]);
                break;
            }
            p = e->starts[j];
        }
        int64_t *dst = blk + d[q].r * W;
        if (L->info[i].token_bytes == 2) {
            const uint16_t *src = (const uint16_t *)e->tokens + p;
            for (int64_t t = 0; t < W; t++) dst[t] = src[t];
        } else {
            const uint32_t *src = (const uint32_t *)e->tokens + p;
            for (int64_t t = 0; t < W; t++) dst[t] = src[t];
        }
    }
    if (e) cache_put(L, e);
    free(d);
    if (s == NC_OK) *rows = B;
    return s;
}

/* ---- producer threads ---------------------------------------------------------------------- */
static void *worker_main(void *arg) {
    nc_loader *L = arg;
    pthread_mutex_lock(&L->mu);
    for (;;) {
        while (!L->stop && !L->err &&
               (L->claim >= L->cursor + L->depth || (L->n_batches >= 0 && L->claim >= L->n_batches))) {
            pthread_cond_wait(&L->cv_space, &L->mu);
        }
        if (L->stop || L->err) break;
        int64_t k = L->claim++;
        slot *s = &L->slots[k % L->depth];
        s->state = SLOT_FILLING;
        s->index = k;
        pthread_mutex_unlock(&L->mu);

        int64_t rows = 0;
        nc_status st = fill_batch(L, k, s->blk, &rows);

        pthread_mutex_lock(&L->mu);
        if (st != NC_OK) {
            if (!L->err) {
                L->err = st;
                snprintf(L->errmsg, sizeof L->errmsg, "%s", nc_last_error());
            }
            s->state = SLOT_EMPTY;
            pthread_cond_broadcast(&L->cv_ready);
            pthread_cond_broadcast(&L->cv_space);
            break;
        }
        s->rows = rows;
        s->state = SLOT_READY;
        L->batches_made++;
        pthread_cond_broadcast(&L->cv_ready);
    }
    pthread_mutex_unlock(&L->mu);
    return NULL;
}

static nc_status start_threads(nc_loader *L) {
    L->stop = 0;
    for (int32_t t = 0; t < L->threads; t++) {
        int rc = pthread_create(&L->tids[t], NULL, worker_main, L);
        if (rc != 0) {
            pthread_mutex_lock(&L->mu);
            L->stop = 1;
            pthread_cond_broadcast(&L->cv_space);
            pthread_mutex_unlock(&L->mu);
            for (int32_t u = 0; u < t; u++) pthread_join(L->tids[u], NULL);
            L->running = 0;
            return nc_fail(NC_ERR_OOM, "nc_loader: cannot start producer thread %d: %s", t, strerror(rc));
        }
        L->running = t + 1;
    }
    return NC_OK;
}

static void stop_threads(nc_loader *L) {
    if (!L->running) return;
    pthread_mutex_lock(&L->mu);
    L->stop = 1;
    pthread_cond_broadcast(&L->cv_space);
    pthread_cond_broadcast(&L->cv_cache);
    pthread_mutex_unlock(&L->mu);
    for (int32_t t = 0; t < L->running; t++) pthread_join(L->tids[t], NULL);
    L->running = 0;
}

/* ---- public API ---------------------------------------------------------------------------- */
void nc_loader_free(nc_loader *L) {
    if (!L) return;
    stop_threads(L);
    if (L->cache) {
        for (int32_t i = 0; i < L->n_shards; i++) {
            if (L->cache[i].state == ENT_LOADED) entry_free(&L->cache[i], &L->info[i]);
        }
    }
    if (L->slots) {
        for (int32_t d = 0; d < L->depth; d++) free(L->slots[d].blk);
    }
    if (L->paths) {
        for (int32_t i = 0; i < L->n_shards; i++) free(L->paths[i]);
    }
    pthread_mutex_destroy(&L->mu);
    pthread_cond_destroy(&L->cv_ready);
    pthread_cond_destroy(&L->cv_space);
    pthread_cond_destroy(&L->cv_cache);
    free(L->paths);
    free(L->info);
    free(L->prefix);
    free(L->tok_prefix);
    free(L->tids);
    free(L->slots);
    free(L->cache);
    free(L);
}

/* Validate the options and read every header; fills L's shard tables. */
static nc_status loader_setup(nc_loader *L, int32_t n_shards, const char *const *paths, const nc_loader_opts *o) {
    static const char *op = "nc_loader_new";
    if (n_shards <= 0 || !paths) return nc_fail(NC_ERR_ARG, "%s: no shards given (an empty shard list or directory)", op);
    if (o->B < 1 || o->T < 1) return nc_fail(NC_ERR_ARG, "%s: B and T must be >= 1, got B=%lld T=%lld", op, (long long)o->B, (long long)o->T);
    if (o->B > (1LL << 20) || o->T > (1LL << 24) || o->B * (o->T + 1) > (1LL << 31)) {
        return nc_fail(NC_ERR_ARG, "%s: batch B=%lld x T=%lld is too large", op, (long long)o->B, (long long)o->T);
    }
    if (o->sampling < NC_SAMPLE_RANDOM || o->sampling > NC_SAMPLE_SEQUENTIAL) {
        return nc_fail(NC_ERR_ARG, "%s: unknown sampling %d (random 0, doc 1, sequential 2)", op, o->sampling);
    }
    if (o->threads < 1 || o->threads > 64) return nc_fail(NC_ERR_ARG, "%s: threads must be 1..64, got %d", op, o->threads);
    if (o->prefetch < 1 || o->prefetch > 1024) return nc_fail(NC_ERR_ARG, "%s: prefetch must be 1..1024, got %d", op, o->prefetch);
    if (o->tok_hash && o->tok_hash[0] && strlen(o->tok_hash) != 16) {
        return nc_fail(NC_ERR_ARG, "%s: tok_hash must be 16 hex digits, got '%s'", op, o->tok_hash);
    }
    L->n_shards = n_shards;
    L->B = o->B;
    L->T = o->T;
    L->seed = o->seed;
    L->sampling = o->sampling;
    L->loop = o->loop ? 1 : 0;
    L->threads = o->threads;
    L->depth = o->prefetch;
    L->cache_cap = o->cache_bytes > 0 ? o->cache_bytes : LOADER_DEFAULT_CACHE;
    L->bos_id = o->bos_id;
    if (o->tok_hash) snprintf(L->tok_hash, sizeof L->tok_hash, "%s", o->tok_hash);

    L->paths = calloc((size_t)n_shards, sizeof(char *));
    L->info = calloc((size_t)n_shards, sizeof(nc_shard_info));
    L->prefix = calloc((size_t)n_shards + 1, sizeof(int64_t));
    L->tok_prefix = calloc((size_t)n_shards + 1, sizeof(int64_t));
    L->cache = calloc((size_t)n_shards, sizeof(cache_entry));
    L->tids = calloc((size_t)L->threads, sizeof(pthread_t));
    L->slots = calloc((size_t)L->depth, sizeof(slot));
    if (!L->paths || !L->info || !L->prefix || !L->tok_prefix || !L->cache || !L->tids || !L->slots) {
        return nc_fail(NC_ERR_OOM, "%s: out of memory for %d shards", op, n_shards);
    }
    for (int32_t d = 0; d < L->depth; d++) {
        L->slots[d].blk = malloc((size_t)(L->B * (L->T + 1)) * sizeof(int64_t));
        if (!L->slots[d].blk) return nc_fail(NC_ERR_OOM, "%s: out of memory for the batch queue", op);
    }
    for (int32_t i = 0; i < n_shards; i++) {
        if (!paths[i]) return nc_fail(NC_ERR_ARG, "%s: shard path %d is NULL", op, i);
        L->paths[i] = strdup(paths[i]);
        if (!L->paths[i]) return nc_fail(NC_ERR_OOM, "%s: out of memory", op);
        nc_shard_info *in = &L->info[i];
        NC_TRY(nc_shard_read_info(paths[i], in));
        if (L->tok_hash[0] && strcmp(in->tok_hash, L->tok_hash) != 0) {
            return nc_fail(NC_ERR_FORMAT, "shard %s: tokenizer hash mismatch: the shard was written with tokenizer %s, "
                           "expected %s (re-tokenize the corpus with this tokenizer)", paths[i],
                           in->tok_hash[0] ? in->tok_hash : "(none)", L->tok_hash);
        }
        if (i > 0 && strcmp(in->tok_hash, L->info[0].tok_hash) != 0) {
            return nc_fail(NC_ERR_FORMAT, "shard %s: written with tokenizer %s but shard %s with %s (mixed tokenizers)",
                           paths[i], in->tok_hash[0] ? in->tok_hash : "(none)", paths[0],
                           L->info[0].tok_hash[0] ? L->info[0].tok_hash : "(none)");
        }
        if (L->sampling == NC_SAMPLE_DOC && o->bos_id < 0) {
            if (in->bos_id < 0) {
                return nc_fail(NC_ERR_ARG, "shard %s: doc sampling needs the BOS id, and the shard header has none "
                               "(pass bos_id)", paths[i]);
            }
            if (i > 0 && in->bos_id != L->info[0].bos_id) {
                return nc_fail(NC_ERR_FORMAT, "shard %s: BOS id %lld differs from %lld in %s", paths[i],
                               (long long)in->bos_id, (long long)L->info[0].bos_id, paths[0]);
            }
            L->bos_id = in->bos_id;
        }
        L->tok_prefix[i + 1] = L->tok_prefix[i] + in->count;
    }
    L->total_tokens = L->tok_prefix[n_shards];
    if (L->tok_hash[0] == 0) snprintf(L->tok_hash, sizeof L->tok_hash, "%s", L->info[0].tok_hash);

    const int64_t W = L->T + 1;
    int64_t largest = 0;
    for (int32_t i = 0; i < n_shards; i++) if (L->info[i].count > largest) largest = L->info[i].count;
    if (L->sampling == NC_SAMPLE_SEQUENTIAL) {
        L->positions = L->total_tokens >= W ? (L->total_tokens - 1) / L->T : 0;
        if (L->positions == 0) {
            return nc_fail(NC_ERR_ARG, "%s: the %d shard(s) (first: %s) hold %lld tokens, fewer than T+1 = %lld",
                           op, n_shards, paths[0], (long long)L->total_tokens, (long long)W);
        }
        L->n_batches = L->loop ? -1 : (L->positions + L->B - 1) / L->B;
    } else if (L->sampling == NC_SAMPLE_RANDOM) {
        for (int32_t i = 0; i < n_shards; i++) {
            int64_t c = L->info[i].count;
            L->prefix[i + 1] = L->prefix[i] + (c >= W ? c - L->T : 0);
        }
        L->positions = L->prefix[n_shards];
        L->n_batches = -1;
        if (L->positions == 0) {
            return nc_fail(NC_ERR_ARG, "%s: no shard holds T+1 = %lld tokens (the largest, of %d, has %lld; first: %s)",
                           op, (long long)W, n_shards, (long long)largest, paths[0]);
        }
    } else {
        /* doc: index every shard's BOS tokens now (this also verifies every checksum) */
        for (int32_t i = 0; i < n_shards; i++) {
            cache_entry *e;
            NC_TRY(cache_get(L, i, &e));
            L->prefix[i + 1] = L->prefix[i] + e->n_starts;
            cache_put(L, e);
        }
        L->positions = L->prefix[n_shards];
        L->n_batches = -1;
        if (L->positions == 0) {
            return nc_fail(NC_ERR_ARG, "%s: no BOS token (id %lld) in %d shard(s) (first: %s) starts a window of "
                           "T+1 = %lld tokens", op, (long long)L->bos_id, n_shards, paths[0], (long long)W);
        }
    }
    return NC_OK;
}

nc_loader *nc_loader_new(int32_t n_shards, const char *const *paths, const nc_loader_opts *opts) {
    if (!opts) { nc_fail(NC_ERR_ARG, "nc_loader_new: opts is NULL"); return NULL; }
    nc_loader *L = calloc(1, sizeof *L);
    if (!L) { nc_fail(NC_ERR_OOM, "nc_loader_new: out of memory"); return NULL; }
    pthread_mutex_init(&L->mu, NULL);
    pthread_cond_init(&L->cv_ready, NULL);
    pthread_cond_init(&L->cv_space, NULL);
    pthread_cond_init(&L->cv_cache, NULL);
    if (loader_setup(L, n_shards, paths, opts) != NC_OK) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", nc_last_error());
        nc_loader_free(L);
        nc_fail(NC_ERR_ARG, "%s", msg);
        return NULL;
    }
    return L;
}

nc_status nc_loader_next(nc_loader *L, nc_tensor *x, nc_tensor *y, int64_t *rows_out) {
    static const char *op = "nc_loader_next";
    if (!L) return nc_fail(NC_ERR_ARG, "%s: loader is NULL (closed?)", op);
    int64_t shape[2] = { L->B, L->T };
    NC_TRY(nc_check_not_null(op, "x", x));
    NC_TRY(nc_check_not_null(op, "y", y));
    NC_TRY(nc_check_cpu(op, "x", x));
    NC_TRY(nc_check_cpu(op, "y", y));
    NC_TRY(nc_check_dtype(op, "x", x, NC_I64));
    NC_TRY(nc_check_dtype(op, "y", y, NC_I64));
    NC_TRY(nc_check_contiguous(op, "x", x));
    NC_TRY(nc_check_contiguous(op, "y", y));
    NC_TRY(nc_check_shape(op, "x", x, 2, shape));
    NC_TRY(nc_check_shape(op, "y", y, 2, shape));
    if (rows_out) *rows_out = 0;
    if (!L->running) NC_TRY(start_threads(L));

    pthread_mutex_lock(&L->mu);
    if (L->n_batches >= 0 && L->cursor >= L->n_batches) {
        pthread_mutex_unlock(&L->mu);
        return NC_OK;
    }
    slot *s = &L->slots[L->cursor % L->depth];
    if (!(s->state == SLOT_READY && s->index == L->cursor)) {
        int64_t t0 = now_ns();
        while (!(s->state == SLOT_READY && s->index == L->cursor)) {
            if (L->err) {
                L->wait_ns += now_ns() - t0;
                nc_status e = L->err;
                char msg[1024];
                snprintf(msg, sizeof msg, "%s", L->errmsg);
                pthread_mutex_unlock(&L->mu);
                return nc_fail(e, "%s", msg);
            }
            pthread_cond_wait(&L->cv_ready, &L->mu);
        }
        L->wait_ns += now_ns() - t0;
    }
    pthread_mutex_unlock(&L->mu);

    /* the slot stays READY (so no producer reuses it) until the copy is done */
    const int64_t T = L->T, W = T + 1, rows = s->rows;
    int64_t *xp = nc_tensor_data(x), *yp = nc_tensor_data(y);
    for (int64_t r = 0; r < rows; r++) {
        const int64_t *src = s->blk + r * W;
        memcpy(xp + r * T, src, (size_t)T * sizeof(int64_t));
        memcpy(yp + r * T, src + 1, (size_t)T * sizeof(int64_t));
    }
    if (rows_out) *rows_out = rows;

    pthread_mutex_lock(&L->mu);
    s->state = SLOT_EMPTY;
    L->cursor++;
    pthread_cond_broadcast(&L->cv_space);
    pthread_mutex_unlock(&L->mu);
    return NC_OK;
}

nc_status nc_loader_seek(nc_loader *L, int64_t cursor, uint64_t seed) {
    if (!L) return nc_fail(NC_ERR_ARG, "nc_loader_seek: loader is NULL (closed?)");
    if (cursor < 0) return nc_fail(NC_ERR_ARG, "nc_loader_seek: cursor must be >= 0, got %lld", (long long)cursor);
    int was_running = L->running;
    stop_threads(L);
    L->cursor = L->claim = cursor;
    L->seed = seed;
    L->err = NC_OK;
    L->errmsg[0] = 0;
    for (int32_t d = 0; d < L->depth; d++) L->slots[d].state = SLOT_EMPTY;
    if (was_running) NC_TRY(start_threads(L));
    return NC_OK;
}

void nc_loader_get_stats(nc_loader *L, nc_loader_stats *out) {
    memset(out, 0, sizeof *out);
    if (!L) return;
    pthread_mutex_lock(&L->mu);
    out->wait_seconds = (double)L->wait_ns * 1e-9;
    out->cursor = L->cursor;
    out->batches_total = L->n_batches;
    out->batches_made = L->batches_made;
    out->shard_loads = L->shard_loads;
    out->cache_bytes = L->cache_bytes;
    out->total_tokens = L->total_tokens;
    out->positions = L->positions;
    out->n_shards = L->n_shards;
    out->threads = L->threads;
    pthread_mutex_unlock(&L->mu);
}
