/* core/tokenizer.c — byte-level BPE tokenizer: training, encoding, decoding, one file format.
 *
 * Promise:
 *  - ids 0..255 are the raw bytes; merge k (0-based) creates id 256 + k from a pair of earlier
 *    ids; the special tokens follow the merges (vocab = 256 + merges + specials).
 *  - Text is pre-split with a PCRE2 regex (UTF + UCP, JIT; default: the GPT-4 cl100k pattern that
 *    llama.cpp calls `llama-bpe`). Each piece is encoded exactly as tiktoken does: a piece that
 *    is a whole token is emitted directly; otherwise its bytes are merged repeatedly at the
 *    adjacent pair whose concatenated bytes have the lowest rank (rank = id), leftmost first.
 *    So our ids equal tiktoken's for the same ranks and pattern.
 *  - Invalid UTF-8 (rule, documented in README "## Tokenizer"): the regex runs with
 *    PCRE2_MATCH_INVALID_UTF, so an invalid byte never belongs to a regex match; every maximal
 *    run of bytes between two matches (these are exactly the invalid bytes) is one piece of its
 *    own, BPE-encoded like any other. Nothing is rejected; decode(encode(x)) == x for all bytes.
 *  - Special tokens are never produced from text (text "<|bos|>" is plain bytes).
 *  - Training: pre-split pieces are counted per unique piece with hash maps (one per thread,
 *    merged), then BPE runs over the unique pieces weighted by their counts with incremental
 *    pair counts and a lazy max-heap. Ties: higher count first, then the smaller (left id,
 *    right id). A merge whose bytes already exist as a token is skipped (token bytes stay
 *    unique, as tiktoken and GGUF require). Counts are exact integers, so the merges do not
 *    depend on the thread count. NUL bytes separate documents and are never trained on.
 *  - File (little-endian): "NCTOKBPE", u32 version = 1, u32 n_merges, u32 n_specials,
 *    u32 pattern_len, pattern bytes, n_merges x (u32 left, u32 right), n_specials x (u32 len,
 *    name bytes), u64 FNV-1a-64 of every preceding byte. nc_tok_hash is that checksum.
 *  - Errors are nc_status + nc_fail messages naming the file or op; nothing aborts.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <omp.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#define TOK_MAX_THREADS 64
#define TOK_MAGIC "NCTOKBPE"
#define TOK_VERSION 1u
#define TOK_MAX_SPECIAL_LEN 256
#define CACHE_MAX_PIECE 128          /* pieces longer than this are not cached */
#define CACHE_MAX_ENTRIES (1 << 20)  /* a slot's cache is cleared past this */
#define SIMPLE_BPE_MAX 48            /* pieces up to this many bytes use the quadratic scan */

static const char *const default_pattern =
    "'(?i:[sdmt]|ll|ve|re)|[^\\r\\n\\p{L}\\p{N}]?+\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]++[\\r\\n]*"
    "|\\s*[\\r\\n]|\\s+(?!\\S)|\\s+";

static const char *const default_specials[] = {
    "<|bos|>", "<|user_start|>", "<|user_end|>", "<|assistant_start|>", "<|assistant_end|>",
    "<|code_start|>", "<|code_end|>", "<|output_start|>", "<|output_end|>",
};
#define N_DEFAULT_SPECIALS ((int32_t)(sizeof default_specials / sizeof default_specials[0]))

/* ---- hashing -------------------------------------------------------------------------------- */
static inline uint64_t mix64(uint64_t h) {
    h ^= h >> 31; h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 29; h *= 0x94d049bb133111ebull;
    h ^= h >> 32;
    return h;
}

/* Fast non-cryptographic hash of a byte string; never 0 (0 marks an empty map slot). */
static inline uint64_t hash_bytes(const uint8_t *p, int64_t n) {
    uint64_t h = 0x9E3779B97F4A7C15ull ^ ((uint64_t)n * 0xff51afd7ed558ccdull);
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = (h ^ w) * 0xbf58476d1ce4e5b9ull;
        h ^= h >> 29;
        p += 8;
        n -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, p, (size_t)n);
    return mix64(h ^ w) | 1;
}

static uint64_t fnv1a64(uint64_t h, const void *data, size_t n) {
    const uint8_t *p = data;
    for (size_t i = 0; i < n; i++) { h ^= p[i]; h *= 0x100000001b3ull; }
    return h;
}
#define FNV_INIT 0xcbf29ce484222325ull

/* ---- byte-string map: bytes -> (v, v2); keys live in the map's own arena ----------------------- */
typedef struct {
    uint64_t h;      /* 0 = empty */
    int64_t koff;
    int64_t v;
    int32_t klen;
    int32_t v2;
} bmap_ent;

typedef struct {
    bmap_ent *e;
    int64_t cap, n;      /* cap is a power of two */
    uint8_t *arena;
    int64_t alen, acap;
} bmap;

static void bmap_free(bmap *m) { free(m->e); free(m->arena); memset(m, 0, sizeof *m); }
static void bmap_clear(bmap *m) {
    if (m->e) memset(m->e, 0, (size_t)m->cap * sizeof *m->e);
    m->n = 0;
    m->alen = 0;
}

static bmap_ent *bmap_find(const bmap *m, const uint8_t *k, int32_t n, uint64_t h) {
    if (!m->cap) return NULL;
    uint64_t mask = (uint64_t)m->cap - 1;
    for (uint64_t i = h & mask;; i = (i + 1) & mask) {
        bmap_ent *e = &m->e[i];
        if (e->h == 0) return NULL;
        if (e->h == h && e->klen == n && memcmp(m->arena + e->koff, k, (size_t)n) == 0) return e;
    }
}

static int bmap_grow(bmap *m) {
    int64_t ncap = m->cap ? m->cap * 2 : 1024;
    bmap_ent *ne = calloc((size_t)ncap, sizeof *ne);
    if (!ne) return -1;
    uint64_t mask = (uint64_t)ncap - 1;
    for (int64_t i = 0; i < m->cap; i++) {
        if (!m->e[i].h) continue;
        uint64_t j = m->e[i].h & mask;
        while (ne[j].h) j = (j + 1) & mask;
        ne[j] = m->e[i];
    }
    free(m->e);
    m->e = ne;
    m->cap = ncap;
    return 0;
}

/* Finds or inserts key k; *created says which. NULL on out of memory. */
static bmap_ent *bmap_upsert(bmap *m, const uint8_t *k, int32_t n, uint64_t h, int *created) {
    if ((m->n + 1) * 4 > m->cap * 3 && bmap_grow(m) != 0) return NULL;
    uint64_t mask = (uint64_t)m->cap - 1;
    uint64_t i = h & mask;
    for (;; i = (i + 1) & mask) {
        bmap_ent *e = &m->e[i];
        if (e->h == 0) break;
        if (e->h == h && e->klen == n && memcmp(m->arena + e->koff, k, (size_t)n) == 0) {
            *created = 0;
            return e;
        }
    }
    if (m->alen + n > m->acap) {
        int64_t nc = m->acap ? m->acap : 4096;
        while (nc < m->alen + n) nc *= 2;
        uint8_t *na = realloc(m->arena, (size_t)nc);
        if (!na) return NULL;
        m->arena = na;
        m->acap = nc;
    }
    memcpy(m->arena + m->alen, k, (size_t)n);
    bmap_ent *e = &m->e[i];
    e->h = h;
    e->koff = m->alen;
    e->klen = n;
    e->v = 0;
    e->v2 = 0;
    m->alen += n;
    m->n++;
    *created = 1;
    return e;
}

/* ---- pair map: (a, b) -> int32 --------------------------------------------------------------- */
typedef struct {
    uint64_t *k;     /* 0 = empty; key = (a << 32 | b) | 1 << 63 */
    int32_t *v;
    int64_t cap, n;
} pmap;

static inline uint64_t pkey(int32_t a, int32_t b) {
    return ((uint64_t)(uint32_t)a << 32 | (uint32_t)b) | (1ull << 63);
}
static void pmap_free(pmap *m) { free(m->k); free(m->v); memset(m, 0, sizeof *m); }

/* The map works for any nonzero u64 key: pair keys (pkey) and short byte strings (skey). */
static inline int32_t pmap_get_key(const pmap *m, uint64_t key, int32_t missing) {
    if (!m->cap) return missing;
    uint64_t mask = (uint64_t)m->cap - 1;
    for (uint64_t i = mix64(key) & mask;; i = (i + 1) & mask) {
        if (m->k[i] == key) return m->v[i];
        if (m->k[i] == 0) return missing;
    }
}
static inline int32_t pmap_get(const pmap *m, int32_t a, int32_t b, int32_t missing) {
    return pmap_get_key(m, pkey(a, b), missing);
}
/* Byte strings of 1..7 bytes as one nonzero u64: the bytes, then the length in the top byte. */
#define SHORT_KEY_MAX 7
static inline uint64_t skey(const uint8_t *p, int64_t n) {
    uint64_t w = 0;
    memcpy(&w, p, (size_t)n);
    return w | (uint64_t)n << 56;
}

static int pmap_grow(pmap *m) {
    int64_t ncap = m->cap ? m->cap * 2 : 1024;
    uint64_t *nk = calloc((size_t)ncap, sizeof *nk);
    int32_t *nv = malloc((size_t)ncap * sizeof *nv);
    if (!nk || !nv) { free(nk); free(nv); return -1; }
    uint64_t mask = (uint64_t)ncap - 1;
    for (int64_t i = 0; i < m->cap; i++) {
        if (!m->k[i]) continue;
        uint64_t j = mix64(m->k[i]) & mask;
        while (nk[j]) j = (j + 1) & mask;
        nk[j] = m->k[i];
        nv[j] = m->v[i];
    }
    free(m->k); free(m->v);
    m->k = nk; m->v = nv; m->cap = ncap;
    return 0;
}

/* Returns a pointer to the value of (a, b), inserting `init` if absent; NULL on OOM. */
static int32_t *pmap_slot_key(pmap *m, uint64_t key, int32_t init, int *created) {
    if ((m->n + 1) * 2 > m->cap && pmap_grow(m) != 0) return NULL;
    uint64_t mask = (uint64_t)m->cap - 1;
    uint64_t i = mix64(key) & mask;
    while (m->k[i] && m->k[i] != key) i = (i + 1) & mask;
    if (m->k[i] == key) { *created = 0; return &m->v[i]; }
    m->k[i] = key;
    m->v[i] = init;
    m->n++;
    *created = 1;
    return &m->v[i];
}
static int32_t *pmap_slot(pmap *m, int32_t a, int32_t b, int32_t init, int *created) {
    return pmap_slot_key(m, pkey(a, b), init, created);
}

/* ---- the tokenizer object ---------------------------------------------------------------------- */
typedef struct {
    pcre2_match_data *md;
    pcre2_jit_stack *jstack;
    pcre2_match_context *mctx;
    bmap cache;              /* piece bytes -> (v = offset into ids, v2 = count) */
    pmap short_cache;        /* pieces of 2..7 bytes: skey -> offset of (count, ids...) in ids */
    int32_t *ids; int64_t nids, cids;
    int32_t *scratch; int64_t cscratch;   /* BPE work arrays for long pieces */
} tok_slot;

struct nc_tok {
    char *pattern;
    pcre2_code *re;
    int32_t jit;
    int32_t n_merges, n_specials, vocab;
    int32_t *merges;          /* 2 * n_merges */
    char **specials;
    int64_t *off;             /* vocab + 1 offsets into bytes */
    uint8_t *bytes;           /* concatenated token bytes (specials: their names) */
    bmap vocab_map;           /* token bytes -> id, ordinary tokens only */
    pmap short_map;           /* the same for tokens of 2..7 bytes, keyed by skey (fast path) */
    pmap pair_map;            /* (a, b) -> id of bytes(a) ++ bytes(b), when a token */
    uint64_t hash;
    tok_slot slots[TOK_MAX_THREADS];
    nc_tok_stats stats;
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static nc_status compile_pattern(const char *op, const char *pattern, pcre2_code **re_out, int32_t *jit_out) {
    int err;
    PCRE2_SIZE erroff;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED,
                                   PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &erroff, NULL);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        return nc_fail(NC_ERR_ARG, "%s: the split pattern does not compile at offset %zu: %s", op,
                       (size_t)erroff, (const char *)msg);
    }
    *jit_out = pcre2_jit_compile(re, PCRE2_JIT_COMPLETE) == 0;
    *re_out = re;
    return NC_OK;
}

static void slot_free(tok_slot *s) {
    if (s->md) pcre2_match_data_free(s->md);
    if (s->mctx) pcre2_match_context_free(s->mctx);
    if (s->jstack) pcre2_jit_stack_free(s->jstack);
    bmap_free(&s->cache);
    pmap_free(&s->short_cache);
    free(s->ids);
    free(s->scratch);
    memset(s, 0, sizeof *s);
}

/* Match data and a JIT stack large enough for long whitespace/letter runs. 0 or -1 (OOM). */
static int slot_ready(nc_tok *t, tok_slot *s) {
    if (s->md) return 0;
    s->md = pcre2_match_data_create_from_pattern(t->re, NULL);
    s->mctx = pcre2_match_context_create(NULL);
    if (!s->md || !s->mctx) return -1;
    /* whitespace runs make `\s*[\r\n]` backtrack once over the whole run: linear, but past
     * PCRE2's default limit of 10^7 steps for multi-megabyte runs */
    pcre2_set_match_limit(s->mctx, UINT32_MAX);
    if (t->jit) {
        s->jstack = pcre2_jit_stack_create(64 * 1024, 64 * 1024 * 1024, NULL);
        if (!s->jstack) return -1;
        pcre2_jit_stack_assign(s->mctx, NULL, s->jstack);
    }
    return 0;
}

void nc_tok_release(nc_tok *t) {
    if (!t) return;
    for (int i = 0; i < TOK_MAX_THREADS; i++) slot_free(&t->slots[i]);
    if (t->re) pcre2_code_free(t->re);
    free(t->pattern);
    free(t->merges);
    if (t->specials) for (int32_t i = 0; i < t->n_specials; i++) free(t->specials[i]);
    free(t->specials);
    free(t->off);
    free(t->bytes);
    bmap_free(&t->vocab_map);
    pmap_free(&t->short_map);
    pmap_free(&t->pair_map);
    free(t);
}

const char *nc_tok_default_pattern(void) { return default_pattern; }
int32_t nc_tok_default_special_count(void) { return N_DEFAULT_SPECIALS; }
const char *nc_tok_default_special(int32_t i) {
    return i >= 0 && i < N_DEFAULT_SPECIALS ? default_specials[i] : NULL;
}

/* Serialized content (everything but the trailing checksum) appended to a growable buffer. */
typedef struct { uint8_t *p; size_t len, cap; int oom; } wbuf;
static void wb_put(wbuf *b, const void *d, size_t n) {
    if (b->oom) return;
    if (b->len + n > b->cap) {
        size_t nc = b->cap ? b->cap : 4096;
        while (nc < b->len + n) nc *= 2;
        uint8_t *np = realloc(b->p, nc);
        if (!np) { b->oom = 1; return; }
        b->p = np;
        b->cap = nc;
    }
    memcpy(b->p + b->len, d, n);
    b->len += n;
}
static void wb_u32(wbuf *b, uint32_t v) {
    uint8_t x[4] = { (uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24) };
    wb_put(b, x, 4);
}
static void serialize(const nc_tok *t, wbuf *b) {
    wb_put(b, TOK_MAGIC, 8);
    wb_u32(b, TOK_VERSION);
    wb_u32(b, (uint32_t)t->n_merges);
    wb_u32(b, (uint32_t)t->n_specials);
    uint32_t plen = (uint32_t)strlen(t->pattern);
    wb_u32(b, plen);
    wb_put(b, t->pattern, plen);
    for (int32_t i = 0; i < 2 * t->n_merges; i++) wb_u32(b, (uint32_t)t->merges[i]);
    for (int32_t i = 0; i < t->n_specials; i++) {
        uint32_t n = (uint32_t)strlen(t->specials[i]);
        wb_u32(b, n);
        wb_put(b, t->specials[i], n);
    }
}

/* Builds a tokenizer from merges (pairs of earlier ids) and specials. `op` names the caller
 * (and the file, for load) in messages. */
static nc_tok *build(const char *op, const char *pattern, int32_t n_merges, const int32_t *pairs,
                     int32_t n_specials, const char *const *specials) {
    if (!pattern) pattern = default_pattern;
    if (n_merges < 0 || (n_merges > 0 && !pairs)) { nc_fail(NC_ERR_ARG, "%s: bad merges (n = %d)", op, n_merges); return NULL; }
    if (n_specials < 0 || (n_specials > 0 && !specials)) { nc_fail(NC_ERR_ARG, "%s: bad specials (n = %d)", op, n_specials); return NULL; }
    if ((int64_t)256 + n_merges + n_specials > INT32_MAX / 2) { nc_fail(NC_ERR_ARG, "%s: vocabulary too large", op); return NULL; }
    nc_tok *t = calloc(1, sizeof *t);
    if (!t) { nc_fail(NC_ERR_OOM, "%s: out of memory", op); return NULL; }
    t->n_merges = n_merges;
    t->n_specials = n_specials;
    t->vocab = 256 + n_merges + n_specials;
    t->pattern = strdup(pattern);
    t->merges = malloc(sizeof(int32_t) * (size_t)(2 * n_merges + 1));
    t->specials = calloc((size_t)n_specials + 1, sizeof(char *));
    t->off = malloc(sizeof(int64_t) * (size_t)(t->vocab + 1));
    if (!t->pattern || !t->merges || !t->specials || !t->off) goto oom;
    if (compile_pattern(op, pattern, &t->re, &t->jit) != NC_OK) goto fail;

    /* token bytes: lengths first, then fill */
    int64_t *len = t->off;   /* reuse: len[i] then prefix sums */
    for (int32_t i = 0; i < 256; i++) len[i] = 1;
    for (int32_t k = 0; k < n_merges; k++) {
        int32_t a = pairs[2 * k], b = pairs[2 * k + 1], id = 256 + k;
        if (a < 0 || b < 0 || a >= id || b >= id) {
            nc_fail(NC_ERR_FORMAT, "%s: merge %d refers to ids (%d, %d); expected ids below %d", op, k, a, b, id);
            goto fail;
        }
        t->merges[2 * k] = a;
        t->merges[2 * k + 1] = b;
        len[id] = len[a] + len[b];
    }
    for (int32_t i = 0; i < n_specials; i++) {
        size_t n = specials[i] ? strlen(specials[i]) : 0;
        if (n == 0 || n > TOK_MAX_SPECIAL_LEN) {
            nc_fail(NC_ERR_FORMAT, "%s: special token %d is empty or longer than %d bytes", op, i, TOK_MAX_SPECIAL_LEN);
            goto fail;
        }
        for (int32_t j = 0; j < i; j++)
            if (strcmp(specials[j], specials[i]) == 0) {
                nc_fail(NC_ERR_FORMAT, "%s: special token '%s' appears twice", op, specials[i]);
                goto fail;
            }
        if (!(t->specials[i] = strdup(specials[i]))) goto oom;
        len[256 + n_merges + i] = (int64_t)n;
    }
    int64_t total = 0;
    for (int32_t i = 0; i < t->vocab; i++) { int64_t l = len[i]; len[i] = total; total += l; }
    t->off[t->vocab] = total;
    t->bytes = malloc((size_t)total + 1);
    if (!t->bytes) goto oom;
    for (int32_t i = 0; i < 256; i++) t->bytes[t->off[i]] = (uint8_t)i;
    for (int32_t k = 0; k < n_merges; k++) {
        int32_t a = t->merges[2 * k], b = t->merges[2 * k + 1], id = 256 + k;
        int64_t la = t->off[a + 1] - t->off[a];
        memcpy(t->bytes + t->off[id], t->bytes + t->off[a], (size_t)la);
        memcpy(t->bytes + t->off[id] + la, t->bytes + t->off[b], (size_t)(t->off[b + 1] - t->off[b]));
    }
    for (int32_t i = 0; i < n_specials; i++)
        memcpy(t->bytes + t->off[256 + n_merges + i], t->specials[i], strlen(t->specials[i]));

    /* bytes -> id for ordinary tokens; token bytes must be unique */
    for (int32_t id = 0; id < 256 + n_merges; id++) {
        const uint8_t *p = t->bytes + t->off[id];
        int32_t n = (int32_t)(t->off[id + 1] - t->off[id]);
        int created;
        bmap_ent *e = bmap_upsert(&t->vocab_map, p, n, hash_bytes(p, n), &created);
        if (!e) goto oom;
        if (!created) {
            nc_fail(NC_ERR_FORMAT, "%s: token %d has the same bytes as token %d (token bytes must be unique)",
                    op, id, e->v2);
            goto fail;
        }
        e->v2 = id;
        if (n <= SHORT_KEY_MAX && !pmap_slot_key(&t->short_map, skey(p, n), id, &created)) goto oom;
    }
    /* (a, b) -> t whenever bytes(a) ++ bytes(b) == bytes(t): every split of every merged token */
    for (int32_t id = 256; id < 256 + n_merges; id++) {
        const uint8_t *p = t->bytes + t->off[id];
        int32_t n = (int32_t)(t->off[id + 1] - t->off[id]);
        for (int32_t s = 1; s < n; s++) {
            bmap_ent *l = bmap_find(&t->vocab_map, p, s, hash_bytes(p, s));
            if (!l) continue;
            bmap_ent *r = bmap_find(&t->vocab_map, p + s, n - s, hash_bytes(p + s, n - s));
            if (!r) continue;
            int created;
            int32_t *v = pmap_slot(&t->pair_map, l->v2, r->v2, id, &created);
            if (!v) goto oom;
        }
    }
    wbuf b = { 0 };
    serialize(t, &b);
    if (b.oom) { free(b.p); goto oom; }
    t->hash = fnv1a64(FNV_INIT, b.p, b.len);
    free(b.p);
    return t;
oom:
    nc_fail(NC_ERR_OOM, "%s: out of memory", op);
fail:
    nc_tok_release(t);
    return NULL;
}

nc_tok *nc_tok_new_from_merges(const char *pattern, int32_t n_merges, const int32_t *pairs,
                               int32_t n_specials, const char *const *specials) {
    if (n_specials < 0) { n_specials = N_DEFAULT_SPECIALS; specials = default_specials; }
    return build("tok_new_from_merges", pattern, n_merges, pairs, n_specials, specials);
}

/* ---- accessors --------------------------------------------------------------------------------- */
int32_t nc_tok_vocab_size(const nc_tok *t) { return t->vocab; }
int32_t nc_tok_n_merges(const nc_tok *t) { return t->n_merges; }
int32_t nc_tok_n_specials(const nc_tok *t) { return t->n_specials; }
const char *nc_tok_pattern(const nc_tok *t) { return t->pattern; }
uint64_t nc_tok_hash(const nc_tok *t) { return t->hash; }
void nc_tok_get_stats(const nc_tok *t, nc_tok_stats *out) { *out = t->stats; }

nc_status nc_tok_get_merges(const nc_tok *t, int32_t *pairs) {
    if (!pairs) return nc_fail(NC_ERR_ARG, "tok_get_merges: output is NULL");
    memcpy(pairs, t->merges, sizeof(int32_t) * 2 * (size_t)t->n_merges);
    return NC_OK;
}

int32_t nc_tok_special_id(const nc_tok *t, const char *name) {
    if (!name) return -1;
    for (int32_t i = 0; i < t->n_specials; i++)
        if (strcmp(t->specials[i], name) == 0) return 256 + t->n_merges + i;
    return -1;
}

const char *nc_tok_token_bytes(const nc_tok *t, int32_t id, int32_t *len) {
    if (id < 0 || id >= t->vocab) { nc_fail(NC_ERR_INDEX, "tok_token_bytes: id %d out of range [0, %d)", id, t->vocab); return NULL; }
    *len = (int32_t)(t->off[id + 1] - t->off[id]);
    return (const char *)t->bytes + t->off[id];
}

nc_status nc_tok_token_lengths(const nc_tok *t, int32_t *out) {
    if (!out) return nc_fail(NC_ERR_ARG, "tok_token_lengths: output is NULL");
    int32_t ordinary = 256 + t->n_merges;
    for (int32_t i = 0; i < t->vocab; i++) out[i] = i < ordinary ? (int32_t)(t->off[i + 1] - t->off[i]) : 0;
    return NC_OK;
}

/* ---- pre-split ------------------------------------------------------------------------------- */
/* Iterates the pieces of s[0, n): regex matches, and the runs of bytes between them (invalid
 * UTF-8) as pieces of their own. An empty match, which the default pattern cannot produce,
 * adds one byte to the gap so the scan always advances. */
typedef struct {
    const nc_tok *t;
    tok_slot *slot;
    const uint8_t *s;
    size_t n, pos;
    size_t ms, me;     /* a found match not yet returned (ms > pos means a gap comes first) */
    int has_match, done_matching, err;
} splitter;

static void split_init(splitter *sp, const nc_tok *t, tok_slot *slot, const uint8_t *s, size_t n) {
    memset(sp, 0, sizeof *sp);
    sp->t = t; sp->slot = slot; sp->s = s; sp->n = n;
}

static int split_find(splitter *sp, size_t from) {
    const nc_tok *t = sp->t;
    int rc;
    size_t start = from;
    for (;;) {
        if (start >= sp->n) { sp->done_matching = 1; return 0; }
        if (t->jit)
            rc = pcre2_jit_match(t->re, sp->s, sp->n, start, 0, sp->slot->md, sp->slot->mctx);
        else
            rc = pcre2_match(t->re, sp->s, sp->n, start, 0, sp->slot->md, sp->slot->mctx);
        if (rc == PCRE2_ERROR_NOMATCH) { sp->done_matching = 1; return 0; }
        if (rc < 0) { sp->err = rc; sp->done_matching = 1; return 0; }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(sp->slot->md);
        if (ov[1] > ov[0]) { sp->ms = ov[0]; sp->me = ov[1]; sp->has_match = 1; return 1; }
        start = ov[0] + 1;     /* empty match: skip a byte (it joins the gap) */
    }
}

/* Next piece into [*ps, *pe); 0 at the end. */
static int split_next(splitter *sp, size_t *ps, size_t *pe) {
    if (sp->pos >= sp->n) return 0;
    if (!sp->has_match && !sp->done_matching) split_find(sp, sp->pos);
    if (sp->has_match) {
        if (sp->ms > sp->pos) { *ps = sp->pos; *pe = sp->ms; sp->pos = sp->ms; return 1; }
        *ps = sp->ms; *pe = sp->me; sp->pos = sp->me; sp->has_match = 0;
        return 1;
    }
    *ps = sp->pos; *pe = sp->n; sp->pos = sp->n;
    return 1;
}

/* ---- BPE of one piece (tiktoken semantics) --------------------------------------------------- */
#define NO_RANK INT32_MAX

static inline int32_t pair_rank(const nc_tok *t, int32_t a, int32_t b) {
    return pmap_get(&t->pair_map, a, b, NO_RANK);
}

/* Heap entries for long pieces: (rank, left part index, right part index), min-heap on
 * (rank, left), i.e. the lowest rank and, among equal ranks, the leftmost pair. */
typedef struct { int32_t rank, i, j; } bpe_ent;
static inline int bpe_less(bpe_ent x, bpe_ent y) { return x.rank < y.rank || (x.rank == y.rank && x.i < y.i); }
static void bpe_push(bpe_ent *h, int64_t *n, bpe_ent x) {
    int64_t i = (*n)++;
    while (i > 0) {
        int64_t p = (i - 1) / 2;
        if (!bpe_less(x, h[p])) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = x;
}
static bpe_ent bpe_pop(bpe_ent *h, int64_t *n) {
    bpe_ent top = h[0], x = h[--(*n)];
    int64_t i = 0;
    for (;;) {
        int64_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && bpe_less(h[c + 1], h[c])) c++;
        if (!bpe_less(h[c], x)) break;
        h[i] = h[c];
        i = c;
    }
    if (*n > 0) h[i] = x;
    return top;
}

/* Encodes piece p[0, n) (n >= 2, not a whole token) into out; returns the count, -1 on OOM. */
static int64_t bpe_piece(const nc_tok *t, tok_slot *slot, const uint8_t *p, int64_t n, int32_t *out) {
    if (n <= SIMPLE_BPE_MAX) {
        int32_t ids[SIMPLE_BPE_MAX], ranks[SIMPLE_BPE_MAX];
        int64_t m = n;
        for (int64_t i = 0; i < n; i++) ids[i] = p[i];
        for (int64_t i = 0; i + 1 < n; i++) ranks[i] = pair_rank(t, ids[i], ids[i + 1]);
        while (m > 1) {
            int32_t best = NO_RANK;
            int64_t bi = -1;
            for (int64_t i = 0; i + 1 < m; i++)
                if (ranks[i] < best) { best = ranks[i]; bi = i; }
            if (bi < 0) break;
            ids[bi] = best;
            memmove(ids + bi + 1, ids + bi + 2, sizeof(int32_t) * (size_t)(m - bi - 2));
            memmove(ranks + bi + 1, ranks + bi + 2, sizeof(int32_t) * (size_t)(m > bi + 2 ? m - bi - 2 : 0));
            m--;
            if (bi + 1 < m) ranks[bi] = pair_rank(t, ids[bi], ids[bi + 1]);
            if (bi > 0) ranks[bi - 1] = pair_rank(t, ids[bi - 1], ids[bi]);
        }
        memcpy(out, ids, sizeof(int32_t) * (size_t)m);
        return m;
    }
    /* long piece: doubly linked parts + lazy heap, O(n log n) */
    int64_t need = 3 * n + 3 * n;   /* ids, prev, next (int32 each) + heap (3 int32 per entry, <= 2n entries) */
    if (slot->cscratch < need) {
        int32_t *ns = realloc(slot->scratch, sizeof(int32_t) * (size_t)need);
        if (!ns) return -1;
        slot->scratch = ns;
        slot->cscratch = need;
    }
    int32_t *ids = slot->scratch, *prev = ids + n, *next = prev + n;
    bpe_ent *heap = (bpe_ent *)(next + n);
    int64_t hn = 0;
    for (int64_t i = 0; i < n; i++) { ids[i] = p[i]; prev[i] = (int32_t)i - 1; next[i] = i + 1 < n ? (int32_t)i + 1 : -1; }
    for (int64_t i = 0; i + 1 < n; i++) {
        int32_t r = pair_rank(t, ids[i], ids[i + 1]);
        if (r != NO_RANK) bpe_push(heap, &hn, (bpe_ent){ r, (int32_t)i, (int32_t)i + 1 });
    }
    while (hn > 0) {
        bpe_ent e = bpe_pop(heap, &hn);
        if (ids[e.i] < 0 || next[e.i] != e.j || pair_rank(t, ids[e.i], ids[e.j]) != e.rank) continue;
        ids[e.i] = e.rank;
        ids[e.j] = -1;                    /* removed */
        int32_t k = next[e.j];
        next[e.i] = k;
        if (k >= 0) prev[k] = e.i;
        if (k >= 0) {
            int32_t r = pair_rank(t, ids[e.i], ids[k]);
            if (r != NO_RANK) bpe_push(heap, &hn, (bpe_ent){ r, e.i, k });
        }
        int32_t q = prev[e.i];
        if (q >= 0) {
            int32_t r = pair_rank(t, ids[q], ids[e.i]);
            if (r != NO_RANK) bpe_push(heap, &hn, (bpe_ent){ r, q, e.i });
        }
    }
    int64_t m = 0;
    for (int32_t i = 0; i >= 0; i = next[i]) out[m++] = ids[i];
    return m;
}

/* Room for m more cached ids; clears both caches when they are full. 0, or -1 (no memory). */
static int cache_room(tok_slot *slot, int64_t m) {
    if (slot->cache.n + slot->short_cache.n >= CACHE_MAX_ENTRIES || slot->nids + m > INT32_MAX / 2) {
        bmap_clear(&slot->cache);
        pmap_free(&slot->short_cache);
        slot->nids = 0;
    }
    if (slot->nids + m > slot->cids) {
        int64_t nc = slot->cids ? slot->cids * 2 : 65536;
        while (nc < slot->nids + m) nc *= 2;
        int32_t *ni = realloc(slot->ids, sizeof(int32_t) * (size_t)nc);
        if (!ni) return -1;
        slot->ids = ni;
        slot->cids = nc;
    }
    return 0;
}

/* Encodes one piece into out (room for n ids); -1 on OOM. */
static int64_t encode_piece(const nc_tok *t, tok_slot *slot, const uint8_t *p, int64_t n, int32_t *out) {
    if (n == 1) { out[0] = p[0]; return 1; }
    if (n <= SHORT_KEY_MAX) {    /* short pieces: integer-keyed probes (vocab, then cache) */
        uint64_t key = skey(p, n);
        int32_t id = pmap_get_key(&t->short_map, key, -1);
        if (id >= 0) { out[0] = id; return 1; }
        int32_t off = pmap_get_key(&slot->short_cache, key, -1);
        if (off >= 0) {              /* ids[off] = count, then the ids */
            memcpy(out, slot->ids + off + 1, sizeof(int32_t) * (size_t)slot->ids[off]);
            return slot->ids[off];
        }
        int64_t m = bpe_piece(t, slot, p, n, out);
        if (m > 0 && cache_room(slot, m + 1) == 0) {
            int created;
            int32_t *v = pmap_slot_key(&slot->short_cache, key, (int32_t)slot->nids, &created);
            if (v) {
                slot->ids[slot->nids] = (int32_t)m;
                memcpy(slot->ids + slot->nids + 1, out, sizeof(int32_t) * (size_t)m);
                slot->nids += m + 1;
            }
        }
        return m;
    }
    uint64_t h = hash_bytes(p, n);
    if (n <= INT32_MAX) {
        bmap_ent *e = bmap_find(&t->vocab_map, p, (int32_t)n, h);
        if (e) { out[0] = e->v2; return 1; }
    }
    if (n > CACHE_MAX_PIECE) return bpe_piece(t, slot, p, n, out);
    bmap_ent *c = bmap_find(&slot->cache, p, (int32_t)n, h);
    if (c) {
        memcpy(out, slot->ids + c->v, sizeof(int32_t) * (size_t)c->v2);
        return c->v2;
    }
    int64_t m = bpe_piece(t, slot, p, n, out);
    if (m < 0) return -1;
    if (cache_room(slot, m) != 0) return m;      /* caching is optional */
    int created;
    bmap_ent *e = bmap_upsert(&slot->cache, p, (int32_t)n, h, &created);
    if (e) {
        memcpy(slot->ids + slot->nids, out, sizeof(int32_t) * (size_t)m);
        e->v = slot->nids;
        e->v2 = (int32_t)m;
        slot->nids += m;
    }
    return m;
}

/* Encodes s[0, n) into out (room for n ids); returns the count or -1 with the error set. */
static int64_t encode_text(nc_tok *t, tok_slot *slot, const uint8_t *s, int64_t n, int32_t *out) {
    if (slot_ready(t, slot) != 0) { nc_fail(NC_ERR_OOM, "tok_encode: out of memory"); return -1; }
    splitter sp;
    split_init(&sp, t, slot, s, (size_t)n);
    size_t ps, pe;
    int64_t m = 0;
    while (split_next(&sp, &ps, &pe)) {
        int64_t k = encode_piece(t, slot, s + ps, (int64_t)(pe - ps), out + m);
        if (k < 0) { nc_fail(NC_ERR_OOM, "tok_encode: out of memory"); return -1; }
        m += k;
    }
    if (sp.err) {
        /* PCRE2 resource limits: the unmatched rest was encoded as one gap piece; say so */
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(sp.err, msg, sizeof msg);
        nc_fail(NC_ERR_UNSUPPORTED, "tok_encode: the split regex failed (%s)", (const char *)msg);
        return -1;
    }
    return m;
}

nc_status nc_tok_encode(nc_tok *t, const char *text, int64_t len, int32_t *out, int64_t cap, int64_t *n_out) {
    if (len < 0 || (len > 0 && !text)) return nc_fail(NC_ERR_ARG, "tok_encode: bad text (len %lld)", (long long)len);
    if (cap < len || (len > 0 && !out))
        return nc_fail(NC_ERR_ARG, "tok_encode: output room %lld is below the text length %lld", (long long)cap, (long long)len);
    int64_t m = encode_text(t, &t->slots[0], (const uint8_t *)text, len, out);
    if (m < 0) return NC_ERR_OOM;
    *n_out = m;
    return NC_OK;
}

static int32_t pick_threads(int32_t threads) {
    if (threads <= 0) threads = nc_threads();
    if (threads < 1) threads = 1;
    if (threads > TOK_MAX_THREADS) threads = TOK_MAX_THREADS;
    return threads;
}

nc_tensor *nc_tok_encode_docs_new(nc_tok *t, int64_t n_docs, const char *const *docs, const int64_t *lens,
                                  int32_t bos, int32_t threads) {
    if (n_docs < 0 || (n_docs > 0 && (!docs || !lens))) {
        nc_fail(NC_ERR_ARG, "tok_encode_docs: bad document list (n = %lld)", (long long)n_docs);
        return NULL;
    }
    int32_t bos_id = nc_tok_special_id(t, "<|bos|>");
    if (bos && bos_id < 0) { nc_fail(NC_ERR_ARG, "tok_encode_docs: bos requested but the tokenizer has no <|bos|>"); return NULL; }
    int64_t *start = malloc(sizeof(int64_t) * (size_t)(n_docs + 1));
    int64_t *count = malloc(sizeof(int64_t) * (size_t)(n_docs + 1));
    if (!start || !count) { free(start); free(count); nc_fail(NC_ERR_OOM, "tok_encode_docs: out of memory"); return NULL; }
    int64_t total = 0;
    for (int64_t i = 0; i < n_docs; i++) {
        if (lens[i] < 0 || (lens[i] > 0 && !docs[i])) {
            free(start); free(count);
            nc_fail(NC_ERR_ARG, "tok_encode_docs: document %lld is NULL or has length %lld", (long long)i, (long long)lens[i]);
            return NULL;
        }
        start[i] = total;
        total += lens[i] + (bos ? 1 : 0);
    }
    int32_t *buf = malloc(sizeof(int32_t) * (size_t)(total > 0 ? total : 1));
    if (!buf) { free(start); free(count); nc_fail(NC_ERR_OOM, "tok_encode_docs: out of memory (%lld ids)", (long long)total); return NULL; }
    threads = pick_threads(threads);
    if (n_docs < threads) threads = n_docs > 0 ? (int32_t)n_docs : 1;
    volatile int failed = 0;
    char errmsg[512] = "";
#pragma omp parallel num_threads(threads)
    {
        tok_slot *slot = &t->slots[omp_get_thread_num()];
#pragma omp for schedule(dynamic, 1)
        for (int64_t i = 0; i < n_docs; i++) {
            if (failed) continue;
            int32_t *o = buf + start[i];
            int64_t m = 0;
            if (bos) o[m++] = bos_id;
            int64_t k = encode_text(t, slot, (const uint8_t *)docs[i], lens[i], o + m);
            if (k < 0) {
#pragma omp critical
                { failed = 1; snprintf(errmsg, sizeof errmsg, "%s", nc_last_error()); }
                continue;
            }
            count[i] = m + k;
        }
    }
    if (failed) {
        free(buf); free(start); free(count);
        nc_fail(NC_ERR_OOM, "%s", errmsg);
        return NULL;
    }
    int64_t n_ids = 0;
    for (int64_t i = 0; i < n_docs; i++) {
        if (start[i] != n_ids) memmove(buf + n_ids, buf + start[i], sizeof(int32_t) * (size_t)count[i]);
        n_ids += count[i];
    }
    nc_tensor *out = nc_tensor_new(NC_I32, NC_CPU, 1, &n_ids);
    if (out && n_ids > 0) memcpy(nc_tensor_data(out), buf, sizeof(int32_t) * (size_t)n_ids);
    free(buf); free(start); free(count);
    return out;
}

/* ---- decode ----------------------------------------------------------------------------------- */
nc_status nc_tok_decode(const nc_tok *t, const int32_t *ids, int64_t n, char *out, int64_t cap, int64_t *n_out) {
    if (n < 0 || (n > 0 && !ids)) return nc_fail(NC_ERR_ARG, "tok_decode: bad id list (n = %lld)", (long long)n);
    int64_t need = 0;
    for (int64_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= t->vocab)
            return nc_fail(NC_ERR_INDEX, "tok_decode: id %d at position %lld is out of range [0, %d)", id,
                           (long long)i + 1, t->vocab);
        need += t->off[id + 1] - t->off[id];
    }
    *n_out = need;
    if (!out) return NC_OK;
    if (cap < need) return nc_fail(NC_ERR_ARG, "tok_decode: output room %lld is below the %lld bytes needed", (long long)cap, (long long)need);
    char *o = out;
    for (int64_t i = 0; i < n; i++) {
        int64_t l = t->off[ids[i] + 1] - t->off[ids[i]];
        memcpy(o, t->bytes + t->off[ids[i]], (size_t)l);
        o += l;
    }
    return NC_OK;
}

/* Length of the longest prefix of s[0, n) that does not end inside a UTF-8 sequence that could
 * still become valid with more bytes. Bytes that can never be valid are not held back. */
int64_t nc_utf8_complete_len(const char *s, int64_t n) {
    const uint8_t *u = (const uint8_t *)s;
    for (int64_t i = n - 1; i >= 0 && i >= n - 3; i--) {
        uint8_t c = u[i];
        if ((c & 0xC0) == 0x80) continue;       /* continuation: keep looking for the lead */
        int64_t need = c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
        int64_t have = n - i;
        if (need == 0 || have >= need) return n;
        if (have >= 2) {                        /* second-byte ranges (RFC 3629) */
            uint8_t d = u[i + 1];
            if ((c == 0xE0 && d < 0xA0) || (c == 0xED && d > 0x9F) || (c == 0xF0 && d < 0x90) || (c == 0xF4 && d > 0x8F))
                return n;
        }
        return i;
    }
    return n;
}

/* ---- file format ------------------------------------------------------------------------------ */
nc_status nc_tok_save(const nc_tok *t, const char *path) {
    if (!path || !*path) return nc_fail(NC_ERR_ARG, "tok_save: path is NULL or empty");
    wbuf b = { 0 };
    serialize(t, &b);
    uint64_t h = fnv1a64(FNV_INIT, b.p, b.len);
    uint8_t h8[8];
    for (int i = 0; i < 8; i++) h8[i] = (uint8_t)(h >> (8 * i));
    wb_put(&b, h8, 8);
    if (b.oom) { free(b.p); return nc_fail(NC_ERR_OOM, "tok_save: out of memory"); }
    size_t plen = strlen(path);
    char *tmp = malloc(plen + 32);
    if (!tmp) { free(b.p); return nc_fail(NC_ERR_OOM, "tok_save: out of memory"); }
    snprintf(tmp, plen + 32, "%s.tmp.%ld", path, (long)getpid());
    FILE *f = fopen(tmp, "wb");
    nc_status st = NC_OK;
    if (!f) {
        st = nc_fail(NC_ERR_IO, "tok_save: cannot create '%s' (to save '%s'): %s", tmp, path, strerror(errno));
    } else {
        int ok = fwrite(b.p, 1, b.len, f) == b.len && fflush(f) == 0 && fsync(fileno(f)) == 0;
        int e = errno;
        if (fclose(f) != 0 && ok) { ok = 0; e = errno; }
        if (!ok) st = nc_fail(NC_ERR_IO, "tok_save: writing '%s' failed: %s", tmp, strerror(e));
        else if (rename(tmp, path) != 0)
            st = nc_fail(NC_ERR_IO, "tok_save: renaming '%s' to '%s' failed: %s", tmp, path, strerror(errno));
        if (st != NC_OK) unlink(tmp);
    }
    free(tmp);
    free(b.p);
    return st;
}

static uint32_t rd_u32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Reads a whole file into a malloc'd buffer (+1 NUL). */
static nc_status read_file(const char *op, const char *path, uint8_t **data, int64_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) return nc_fail(NC_ERR_IO, "%s: cannot open '%s': %s", op, path, strerror(errno));
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0 || S_ISDIR(sb.st_mode)) {
        fclose(f);
        return nc_fail(NC_ERR_IO, "%s: '%s' is not a readable file", op, path);
    }
    int64_t n = (int64_t)sb.st_size;
    uint8_t *buf = malloc((size_t)n + 1);
    if (!buf) { fclose(f); return nc_fail(NC_ERR_OOM, "%s: out of memory reading '%s' (%lld bytes)", op, path, (long long)n); }
    int64_t got = (int64_t)fread(buf, 1, (size_t)n, f);
    int e = ferror(f) ? errno : 0;
    fclose(f);
    if (got != n) { free(buf); return nc_fail(NC_ERR_IO, "%s: short read of '%s' (%lld of %lld bytes): %s", op, path, (long long)got, (long long)n, e ? strerror(e) : "file changed"); }
    buf[n] = 0;
    *data = buf;
    *size = n;
    return NC_OK;
}

nc_tok *nc_tok_new_load(const char *path) {
    if (!path || !*path) { nc_fail(NC_ERR_ARG, "tok_load: path is NULL or empty"); return NULL; }
    uint8_t *d;
    int64_t n;
    if (read_file("tok_load", path, &d, &n) != NC_OK) return NULL;
    char op[1200];
    snprintf(op, sizeof op, "tok_load: '%s'", path);
    nc_tok *t = NULL;
    char **specials = NULL;
    uint32_t ns = 0;
    int64_t pos = 24;
    if (n < 8 || memcmp(d, TOK_MAGIC, 8) != 0) { nc_fail(NC_ERR_FORMAT, "%s is not a nanochat tokenizer file (bad magic)", op); goto done; }
    if (n < 24 + 8) { nc_fail(NC_ERR_FORMAT, "%s is truncated (%lld bytes, header needs 32)", op, (long long)n); goto done; }
    uint32_t ver = rd_u32(d + 8), nm = rd_u32(d + 12), plen = rd_u32(d + 20);
    ns = rd_u32(d + 16);
    if (ver != TOK_VERSION) { nc_fail(NC_ERR_FORMAT, "%s has format version %u; this build reads version %u", op, ver, TOK_VERSION); goto done; }
    uint64_t want = fnv1a64(FNV_INIT, d, (size_t)(n - 8)), got = 0;
    for (int i = 0; i < 8; i++) got |= (uint64_t)d[n - 8 + i] << (8 * i);
    if (nm > (1u << 24) || ns > 4096 || plen > (1u << 20) ||
        24 + (int64_t)plen + 8 * (int64_t)nm + 4 * (int64_t)ns + 8 > n) {
        nc_fail(NC_ERR_FORMAT, "%s is truncated or corrupt (%u merges, %u specials, pattern of %u bytes do not fit in %lld bytes)",
                op, nm, ns, plen, (long long)n);
        goto done;
    }
    if (want != got) {
        nc_fail(NC_ERR_FORMAT, "%s is corrupt: checksum %016llx, stored %016llx", op, (unsigned long long)want, (unsigned long long)got);
        goto done;
    }
    char *pattern = malloc(plen + 1);
    int32_t *pairs = malloc(sizeof(int32_t) * (2 * (size_t)nm + 1));
    specials = calloc(ns + 1, sizeof(char *));
    if (!pattern || !pairs || !specials) { free(pattern); free(pairs); nc_fail(NC_ERR_OOM, "%s: out of memory", op); goto done; }
    memcpy(pattern, d + pos, plen);
    pattern[plen] = 0;
    pos += plen;
    if (strlen(pattern) != plen) { free(pattern); free(pairs); nc_fail(NC_ERR_FORMAT, "%s is corrupt: NUL inside the pattern", op); goto done; }
    for (uint32_t k = 0; k < 2 * nm; k++, pos += 4) pairs[k] = (int32_t)rd_u32(d + pos);
    for (uint32_t i = 0; i < ns; i++) {
        if (pos + 4 > n - 8) break;
        uint32_t l = rd_u32(d + pos);
        pos += 4;
        if (l > TOK_MAX_SPECIAL_LEN || pos + l > n - 8) break;
        specials[i] = strndup((const char *)d + pos, l);
        pos += l;
        if (!specials[i]) break;
    }
    if (pos != n - 8 || (ns > 0 && !specials[ns - 1])) {
        free(pattern); free(pairs);
        nc_fail(NC_ERR_FORMAT, "%s is corrupt: the special tokens do not end where the checksum begins", op);
        goto done;
    }
    t = build(op, pattern, (int32_t)nm, pairs, (int32_t)ns, (const char *const *)specials);
    free(pattern);
    free(pairs);
done:
    if (specials) for (uint32_t i = 0; i < ns; i++) free(specials[i]);
    free(specials);
    free(d);
    return t;
}

/* ---- training: inputs ------------------------------------------------------------------------ */
typedef struct { const uint8_t *p; int64_t n; } span;
typedef struct {
    span *v; int64_t n, cap;
    uint8_t **bufs; int64_t nbufs, cbufs;    /* file contents we own */
    char **files; int64_t nfiles, cfiles;
    int64_t bytes;
} inputs;

static int push_span(inputs *in, const uint8_t *p, int64_t n) {
    if (in->n == in->cap) {
        int64_t nc = in->cap ? in->cap * 2 : 1024;
        span *nv = realloc(in->v, sizeof(span) * (size_t)nc);
        if (!nv) return -1;
        in->v = nv; in->cap = nc;
    }
    in->v[in->n++] = (span){ p, n };
    return 0;
}

/* Splits text at NUL bytes (document separators) and long documents at safe points (after a
 * '\n' followed by an ASCII letter: no split-pattern piece crosses such a point), so threads
 * get pieces of about 1 MB. Stops adding once `limit` bytes were taken (limit < 0: no limit). */
static int add_text(inputs *in, const uint8_t *p, int64_t n, int64_t limit) {
    int64_t i = 0;
    while (i < n) {
        if (limit >= 0 && in->bytes >= limit) return 0;
        const uint8_t *z = memchr(p + i, 0, (size_t)(n - i));
        int64_t e = z ? (int64_t)(z - p) : n;
        if (limit >= 0 && in->bytes + (e - i) > limit) {   /* cut at the last newline that fits */
            int64_t cut = i + (limit - in->bytes);
            while (cut > i && p[cut - 1] != '\n') cut--;
            e = cut > i ? cut : i + (limit - in->bytes);
        }
        int64_t s = i;
        while (e - s > (1 << 20)) {
            int64_t c = s + (1 << 20);
            while (c < e && !(p[c - 1] == '\n' && ((p[c] | 0x20) >= 'a' && (p[c] | 0x20) <= 'z'))) c++;
            if (c >= e) break;
            if (push_span(in, p + s, c - s) != 0) return -1;
            s = c;
        }
        if (e > s && push_span(in, p + s, e - s) != 0) return -1;
        in->bytes += e - i;
        i = e + 1;
        if (limit >= 0 && in->bytes >= limit) return 0;
    }
    return 0;
}

static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

static int add_file_name(inputs *in, const char *path) {
    if (in->nfiles == in->cfiles) {
        int64_t nc = in->cfiles ? in->cfiles * 2 : 64;
        char **nf = realloc(in->files, sizeof(char *) * (size_t)nc);
        if (!nf) return -1;
        in->files = nf; in->cfiles = nc;
    }
    if (!(in->files[in->nfiles] = strdup(path))) return -1;
    in->nfiles++;
    return 0;
}

/* Collects training files under dir: *.docs, *.rs, *.txt, recursively (hidden entries skipped). */
static nc_status walk_dir(inputs *in, const char *dir, int depth) {
    if (depth > 32) return NC_OK;
    DIR *d = opendir(dir);
    if (!d) return nc_fail(NC_ERR_IO, "tok_train: cannot open directory '%s': %s", dir, strerror(errno));
    struct dirent *de;
    nc_status st = NC_OK;
    while ((de = readdir(d)) && st == NC_OK) {
        if (de->d_name[0] == '.') continue;
        size_t l = strlen(dir) + strlen(de->d_name) + 2;
        char *p = malloc(l);
        if (!p) { st = nc_fail(NC_ERR_OOM, "tok_train: out of memory"); break; }
        snprintf(p, l, "%s/%s", dir, de->d_name);
        struct stat sb;
        if (stat(p, &sb) == 0) {
            if (S_ISDIR(sb.st_mode)) st = walk_dir(in, p, depth + 1);
            else if (S_ISREG(sb.st_mode) && (ends_with(p, ".docs") || ends_with(p, ".rs") || ends_with(p, ".txt")))
                if (add_file_name(in, p) != 0) st = nc_fail(NC_ERR_OOM, "tok_train: out of memory");
        }
        free(p);
    }
    closedir(d);
    return st;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static void inputs_free(inputs *in) {
    for (int64_t i = 0; i < in->nbufs; i++) free(in->bufs[i]);
    for (int64_t i = 0; i < in->nfiles; i++) free(in->files[i]);
    free(in->bufs); free(in->files); free(in->v);
    memset(in, 0, sizeof *in);
}

/* A path is a file, a corpus directory (DIR/train/ exists: its files are used, never DIR/val/),
 * or any directory (walked recursively). Files are read in sorted path order. */
static nc_status gather_files(inputs *in, int32_t n_paths, const char *const *paths) {
    for (int32_t i = 0; i < n_paths; i++) {
        struct stat sb;
        if (!paths[i] || stat(paths[i], &sb) != 0)
            return nc_fail(NC_ERR_IO, "tok_train: cannot read '%s': %s", paths[i] ? paths[i] : "(null)", strerror(errno));
        if (S_ISDIR(sb.st_mode)) {
            size_t l = strlen(paths[i]) + 8;
            char *tr = malloc(l);
            if (!tr) return nc_fail(NC_ERR_OOM, "tok_train: out of memory");
            snprintf(tr, l, "%s/train", paths[i]);
            int corpus = stat(tr, &sb) == 0 && S_ISDIR(sb.st_mode);
            int64_t before = in->nfiles;
            nc_status st = walk_dir(in, corpus ? tr : paths[i], 0);
            free(tr);
            if (st != NC_OK) return st;
            qsort(in->files + before, (size_t)(in->nfiles - before), sizeof(char *), cmp_str);
        } else if (add_file_name(in, paths[i]) != 0) {
            return nc_fail(NC_ERR_OOM, "tok_train: out of memory");
        }
    }
    return NC_OK;
}

/* ---- training: BPE ----------------------------------------------------------------------------- */
typedef struct {
    int32_t a, b;
    int64_t count;           /* < 0: banned (its bytes already are a token) */
    int32_t *words; int32_t nw, cw;
    int32_t last_word;
    int32_t touched;         /* merge step that last created occurrences of it */
} tr_pair;

typedef struct { int64_t count; int32_t a, b, idx; } tr_heap_ent;

typedef struct {
    int32_t *sym; int64_t *woff; int32_t *wlen; int64_t *wcount; int64_t nwords;
    tr_pair *pairs; int32_t npairs, cpairs;
    pmap pidx;               /* (a, b) -> index into pairs */
    tr_heap_ent *heap; int64_t hn, hcap;
    int32_t *touched; int64_t ntouched, ctouched;
} trainer;

static inline int heap_above(tr_heap_ent x, tr_heap_ent y) {   /* x has priority over y */
    if (x.count != y.count) return x.count > y.count;
    if (x.a != y.a) return x.a < y.a;
    return x.b < y.b;
}

static int heap_push(trainer *tr, tr_heap_ent x) {
    if (tr->hn == tr->hcap) {
        int64_t nc = tr->hcap ? tr->hcap * 2 : 4096;
        tr_heap_ent *nh = realloc(tr->heap, sizeof *nh * (size_t)nc);
        if (!nh) return -1;
        tr->heap = nh; tr->hcap = nc;
    }
    int64_t i = tr->hn++;
    while (i > 0) {
        int64_t p = (i - 1) / 2;
        if (!heap_above(x, tr->heap[p])) break;
        tr->heap[i] = tr->heap[p];
        i = p;
    }
    tr->heap[i] = x;
    return 0;
}

static tr_heap_ent heap_pop(trainer *tr) {
    tr_heap_ent top = tr->heap[0], x = tr->heap[--tr->hn];
    int64_t i = 0, n = tr->hn;
    for (;;) {
        int64_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && heap_above(tr->heap[c + 1], tr->heap[c])) c++;
        if (!heap_above(tr->heap[c], x)) break;
        tr->heap[i] = tr->heap[c];
        i = c;
    }
    if (n > 0) tr->heap[i] = x;
    return top;
}

/* Adds delta occurrences of (a, b) in word w; returns the pair index or -1 on OOM. */
static int32_t add_pair(trainer *tr, int32_t a, int32_t b, int64_t delta, int32_t w) {
    int created;
    int32_t *slot = pmap_slot(&tr->pidx, a, b, tr->npairs, &created);
    if (!slot) return -1;
    int32_t idx = *slot;
    if (created) {
        if (tr->npairs == tr->cpairs) {
            int32_t nc = tr->cpairs ? tr->cpairs * 2 : 4096;
            tr_pair *np = realloc(tr->pairs, sizeof *np * (size_t)nc);
            if (!np) return -1;
            tr->pairs = np; tr->cpairs = nc;
        }
        tr->pairs[tr->npairs++] = (tr_pair){ .a = a, .b = b, .last_word = -1, .touched = -1 };
    }
    tr_pair *p = &tr->pairs[idx];
    if (p->count >= 0) p->count += delta;
    if (delta > 0 && p->last_word != w) {
        if (p->nw == p->cw) {
            int32_t nc = p->cw ? p->cw * 2 : 4;
            int32_t *nw = realloc(p->words, sizeof(int32_t) * (size_t)nc);
            if (!nw) return -1;
            p->words = nw; p->cw = nc;
        }
        p->words[p->nw++] = w;
        p->last_word = w;
    }
    return idx;
}

static int note_touched(trainer *tr, int32_t idx, int32_t step) {
    if (tr->pairs[idx].touched == step) return 0;
    tr->pairs[idx].touched = step;
    if (tr->ntouched == tr->ctouched) {
        int64_t nc = tr->ctouched ? tr->ctouched * 2 : 1024;
        int32_t *nt = realloc(tr->touched, sizeof(int32_t) * (size_t)nc);
        if (!nt) return -1;
        tr->touched = nt; tr->ctouched = nc;
    }
    tr->touched[tr->ntouched++] = idx;
    return 0;
}

/* Replaces (a, b) by c in word w left to right, updating pair counts locally. 0 or -1 (OOM). */
static int merge_word(trainer *tr, int32_t w, int32_t a, int32_t b, int32_t c, int32_t step) {
    int32_t *s = tr->sym + tr->woff[w];
    int64_t n = tr->wlen[w], cnt = tr->wcount[w], i = 0, j = 0;
    while (i < n) {
        if (i + 1 < n && s[i] == a && s[i + 1] == b) {
            if (j > 0) {
                if (add_pair(tr, s[j - 1], a, -cnt, w) < 0) return -1;
                int32_t x = add_pair(tr, s[j - 1], c, cnt, w);
                if (x < 0 || note_touched(tr, x, step) != 0) return -1;
            }
            if (i + 2 < n) {
                if (add_pair(tr, b, s[i + 2], -cnt, w) < 0) return -1;
                int32_t x = add_pair(tr, c, s[i + 2], cnt, w);
                if (x < 0 || note_touched(tr, x, step) != 0) return -1;
            }
            s[j++] = c;
            i += 2;
        } else {
            s[j++] = s[i++];
        }
    }
    tr->wlen[w] = (int32_t)j;
    return 0;
}

static void trainer_free(trainer *tr) {
    for (int32_t i = 0; i < tr->npairs; i++) free(tr->pairs[i].words);
    free(tr->pairs); free(tr->sym); free(tr->woff); free(tr->wlen); free(tr->wcount);
    free(tr->heap); free(tr->touched);
    pmap_free(&tr->pidx);
}

/* Runs BPE over the unique pieces in `words` (keys = piece bytes, v = count). Fills merges
 * (2 per merge) and returns how many were made (<= n_merges), or -1 with the error set. */
static int32_t bpe_train(const bmap *words, int32_t n_merges, int32_t *merges) {
    trainer tr = { 0 };
    bmap vocab = { 0 };             /* token bytes -> id, to skip merges that would duplicate */
    uint8_t *tb = NULL;             /* token bytes arena */
    int64_t *toff = malloc(sizeof(int64_t) * (size_t)(256 + n_merges + 1));
    int64_t tbcap = 4096, tblen = 256;
    int32_t made = -1;
    tb = malloc((size_t)tbcap);
    if (!toff || !tb) goto oom;
    for (int i = 0; i < 256; i++) { tb[i] = (uint8_t)i; toff[i] = i; }
    toff[256] = 256;
    for (int i = 0; i < 256; i++) {
        int created;
        bmap_ent *e = bmap_upsert(&vocab, tb + i, 1, hash_bytes(tb + i, 1), &created);
        if (!e) goto oom;
        e->v2 = i;
    }

    /* words: symbols = bytes of each unique piece (pieces of one byte have no pairs: skipped) */
    int64_t nsym = 0, nw = 0;
    for (int64_t i = 0; i < words->cap; i++)
        if (words->e[i].h && words->e[i].klen >= 2) { nsym += words->e[i].klen; nw++; }
    if (nw > INT32_MAX) { nc_fail(NC_ERR_UNSUPPORTED, "tok_train: too many unique pieces (%lld)", (long long)nw); goto done; }
    tr.sym = malloc(sizeof(int32_t) * (size_t)(nsym + 1));
    tr.woff = malloc(sizeof(int64_t) * (size_t)(nw + 1));
    tr.wlen = malloc(sizeof(int32_t) * (size_t)(nw + 1));
    tr.wcount = malloc(sizeof(int64_t) * (size_t)(nw + 1));
    if (!tr.sym || !tr.woff || !tr.wlen || !tr.wcount) goto oom;
    int64_t o = 0;
    for (int64_t i = 0; i < words->cap; i++) {
        const bmap_ent *e = &words->e[i];
        if (!e->h || e->klen < 2) continue;
        int64_t w = tr.nwords++;
        tr.woff[w] = o;
        tr.wlen[w] = e->klen;
        tr.wcount[w] = e->v;
        for (int32_t k = 0; k < e->klen; k++) tr.sym[o + k] = words->arena[e->koff + k];
        o += e->klen;
    }
    for (int64_t w = 0; w < tr.nwords; w++) {
        const int32_t *s = tr.sym + tr.woff[w];
        for (int32_t k = 0; k + 1 < tr.wlen[w]; k++)
            if (add_pair(&tr, s[k], s[k + 1], tr.wcount[w], (int32_t)w) < 0) goto oom;
    }
    for (int32_t i = 0; i < tr.npairs; i++)
        if (tr.pairs[i].count > 0 &&
            heap_push(&tr, (tr_heap_ent){ tr.pairs[i].count, tr.pairs[i].a, tr.pairs[i].b, i }) != 0) goto oom;

    made = 0;
    while (made < n_merges && tr.hn > 0) {
        tr_heap_ent top = heap_pop(&tr);
        tr_pair *p = &tr.pairs[top.idx];
        if (p->count <= 0) continue;
        if (p->count != top.count) {       /* stale: counts only fall; requeue at the true count */
            top.count = p->count;
            if (heap_push(&tr, top) != 0) goto oom;
            continue;
        }
        int32_t a = p->a, b = p->b, c = 256 + made;
        int64_t la = toff[a + 1] - toff[a], lb = toff[b + 1] - toff[b];
        if (tblen + la + lb > tbcap) {
            while (tblen + la + lb > tbcap) tbcap *= 2;
            uint8_t *nb = realloc(tb, (size_t)tbcap);
            if (!nb) goto oom;
            tb = nb;
        }
        memcpy(tb + tblen, tb + toff[a], (size_t)la);
        memcpy(tb + tblen + la, tb + toff[b], (size_t)lb);
        int created;
        bmap_ent *ve = bmap_upsert(&vocab, tb + tblen, (int32_t)(la + lb), hash_bytes(tb + tblen, la + lb), &created);
        if (!ve) goto oom;
        if (!created) { p->count = -1; continue; }   /* same bytes as an existing token: banned */
        ve->v2 = c;
        /* the arena may move on later growth; the map keeps its own copy of the key */
        tblen += la + lb;
        toff[c + 1] = tblen;
        merges[2 * made] = a;
        merges[2 * made + 1] = b;

        int32_t *ws = p->words, nws = p->nw;
        p->words = NULL; p->nw = p->cw = 0;
        tr.ntouched = 0;
        for (int32_t k = 0; k < nws; k++)
            if (merge_word(&tr, ws[k], a, b, c, made) != 0) { free(ws); goto oom; }
        free(ws);
        tr.pairs[top.idx].count = 0;
        for (int64_t k = 0; k < tr.ntouched; k++) {
            tr_pair *q = &tr.pairs[tr.touched[k]];
            if (q->count > 0 && heap_push(&tr, (tr_heap_ent){ q->count, q->a, q->b, tr.touched[k] }) != 0) goto oom;
        }
        made++;
    }
    goto done;
oom:
    nc_fail(NC_ERR_OOM, "tok_train: out of memory");
    made = -1;
done:
    trainer_free(&tr);
    bmap_free(&vocab);
    free(tb);
    free(toff);
    return made;
}

/* Counts unique pieces of every input span; one map per thread, merged in thread order. */
static nc_status count_pieces(nc_tok *proto, const inputs *in, int32_t threads, bmap *out, int64_t *total_pieces) {
    bmap *maps = calloc((size_t)threads, sizeof(bmap));
    int64_t *npieces = calloc((size_t)threads, sizeof(int64_t));
    if (!maps || !npieces) { free(maps); free(npieces); return nc_fail(NC_ERR_OOM, "tok_train: out of memory"); }
    volatile int failed = 0;
#pragma omp parallel num_threads(threads)
    {
        int tid = omp_get_thread_num();
        tok_slot *slot = &proto->slots[tid];
        if (slot_ready(proto, slot) != 0) failed = 1;
#pragma omp for schedule(dynamic, 1)
        for (int64_t i = 0; i < in->n; i++) {
            if (failed) continue;
            splitter sp;
            split_init(&sp, proto, slot, in->v[i].p, (size_t)in->v[i].n);
            size_t ps, pe;
            while (split_next(&sp, &ps, &pe)) {
                const uint8_t *p = in->v[i].p + ps;
                int32_t n = (int32_t)(pe - ps);
                int created;
                bmap_ent *e = bmap_upsert(&maps[tid], p, n, hash_bytes(p, n), &created);
                if (!e) { failed = 1; break; }
                e->v++;
                npieces[tid]++;
            }
            if (sp.err) failed = 2;
        }
    }
    nc_status st = NC_OK;
    if (failed) st = nc_fail(failed == 2 ? NC_ERR_UNSUPPORTED : NC_ERR_OOM,
                             failed == 2 ? "tok_train: the split regex failed (resource limit)" : "tok_train: out of memory");
    *total_pieces = 0;
    for (int32_t k = 0; k < threads && st == NC_OK; k++) {
        *total_pieces += npieces[k];
        for (int64_t i = 0; i < maps[k].cap; i++) {
            const bmap_ent *e = &maps[k].e[i];
            if (!e->h) continue;
            int created;
            bmap_ent *g = bmap_upsert(out, maps[k].arena + e->koff, e->klen, e->h, &created);
            if (!g) { st = nc_fail(NC_ERR_OOM, "tok_train: out of memory"); break; }
            g->v += e->v;
        }
        bmap_free(&maps[k]);
    }
    for (int32_t k = 0; k < threads; k++) bmap_free(&maps[k]);
    free(maps);
    free(npieces);
    return st;
}

nc_tok *nc_tok_new_train(int32_t n_paths, const char *const *paths, int64_t n_texts, const char *const *texts,
                         const int64_t *text_lens, int32_t vocab_size, const char *pattern, int32_t threads,
                         int64_t max_bytes) {
    double t0 = now_s();
    int32_t n_merges = vocab_size - 256 - N_DEFAULT_SPECIALS;
    if (n_merges < 0) {
        nc_fail(NC_ERR_ARG, "tok_train: vocab %d is below 256 bytes + %d special tokens", vocab_size, N_DEFAULT_SPECIALS);
        return NULL;
    }
    if (n_paths < 0 || n_texts < 0 || (n_paths > 0 && !paths) || (n_texts > 0 && (!texts || !text_lens))) {
        nc_fail(NC_ERR_ARG, "tok_train: bad input lists");
        return NULL;
    }
    threads = pick_threads(threads);
    /* a prototype (no merges) carries the compiled pattern and the per-thread match state */
    nc_tok *proto = build("tok_train", pattern, 0, NULL, 0, NULL);
    if (!proto) return NULL;
    inputs in = { 0 };
    bmap counts = { 0 };
    int32_t *merges = NULL;
    nc_tok *t = NULL;
    int64_t limit = max_bytes > 0 ? max_bytes : -1;
    if (gather_files(&in, n_paths, paths) != NC_OK) goto done;
    for (int64_t i = 0; i < in.nfiles && (limit < 0 || in.bytes < limit); i++) {
        uint8_t *d;
        int64_t n;
        if (read_file("tok_train", in.files[i], &d, &n) != NC_OK) goto done;
        if (in.nbufs == in.cbufs) {
            int64_t nc = in.cbufs ? in.cbufs * 2 : 64;
            uint8_t **nb = realloc(in.bufs, sizeof(uint8_t *) * (size_t)nc);
            if (!nb) { free(d); nc_fail(NC_ERR_OOM, "tok_train: out of memory"); goto done; }
            in.bufs = nb; in.cbufs = nc;
        }
        in.bufs[in.nbufs++] = d;
        if (add_text(&in, d, n, limit) != 0) { nc_fail(NC_ERR_OOM, "tok_train: out of memory"); goto done; }
    }
    for (int64_t i = 0; i < n_texts && (limit < 0 || in.bytes < limit); i++) {
        if (text_lens[i] < 0 || (text_lens[i] > 0 && !texts[i])) { nc_fail(NC_ERR_ARG, "tok_train: text %lld is NULL", (long long)i + 1); goto done; }
        if (add_text(&in, (const uint8_t *)texts[i], text_lens[i], limit) != 0) { nc_fail(NC_ERR_OOM, "tok_train: out of memory"); goto done; }
    }
    if (in.bytes == 0) {
        nc_fail(NC_ERR_ARG, "tok_train: no training text (%d paths gave %lld files, %lld texts)", n_paths,
                (long long)in.nfiles, (long long)n_texts);
        goto done;
    }
    int64_t total_pieces = 0;
    if (count_pieces(proto, &in, threads, &counts, &total_pieces) != NC_OK) goto done;
    double t1 = now_s();
    merges = malloc(sizeof(int32_t) * (size_t)(2 * n_merges + 1));
    if (!merges) { nc_fail(NC_ERR_OOM, "tok_train: out of memory"); goto done; }
    int32_t made = bpe_train(&counts, n_merges, merges);
    if (made < 0) goto done;
    t = build("tok_train", pattern, made, merges, N_DEFAULT_SPECIALS, default_specials);
    if (t) {
        t->stats.bytes = in.bytes;
        t->stats.files = in.nfiles;
        t->stats.spans = in.n;
        t->stats.pieces = total_pieces;
        t->stats.unique_pieces = counts.n;
        t->stats.threads = threads;
        t->stats.seconds_count = t1 - t0;
        t->stats.seconds_merge = now_s() - t1;
    }
done:
    inputs_free(&in);
    bmap_free(&counts);
    free(merges);
    nc_tok_release(proto);
    return t;
}
