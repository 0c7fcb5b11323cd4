/*
 * The guest heap: boundary-tag chunks with immediate coalescing and
 * segregated free lists (dlmalloc's layout, much simplified).
 *
 * A chunk starts 8 bytes before a 16-byte boundary so that its payload is
 * 16-byte aligned; sizes are multiples of 16, at least MIN_CHUNK.
 *
 *   in use:  [head: size|CINUSE|PINUSE] [payload ..................]
 *   free:    [head: size|PINUSE] [next] [prev] ........... [foot: size]
 *
 * CINUSE says whether this chunk is in use, PINUSE whether the chunk just
 * before it is; only free chunks carry a footer, which is how free() finds
 * the previous chunk to coalesce with. Two free chunks are never adjacent.
 * The heap ends with a zero-size sentinel marked in use.
 *
 * Free chunks live in 62 exact-size bins (32..1008 bytes, step 16) and then
 * four bins per power of two; a bitmap of non-empty bins makes finding the
 * next larger bin O(1). Small requests take the head of their exact bin;
 * larger ones use first fit within their bin, else the first chunk of the
 * next non-empty bin, splitting off the remainder.
 */
#include "internal.h"

#define CINUSE ((size_t)1)
#define PINUSE ((size_t)2)
#define FLAGS (CINUSE | PINUSE)
#define MIN_CHUNK ((size_t)32)
#define MAX_REQUEST (SIZE_MAX / 4)

#define NSMALL 62
#define NBINS (NSMALL + 4 * 54)
#define NWORDS ((NBINS + 63) / 64)

typedef struct chunk {
    size_t head;
    struct chunk *next; /* free chunks only */
    struct chunk *prev;
} chunk;

static chunk *bins[NBINS];
static uint64_t binmap[NWORDS];
static uintptr_t heap_lo, heap_end; /* first chunk, sentinel */

static inline size_t csize(const chunk *c) { return c->head & ~FLAGS; }
static inline chunk *at(const void *base, size_t off) { return (chunk *)((char *)base + off); }
static inline void set_foot(chunk *c, size_t s) { *(size_t *)((char *)c + s - 8) = s; }

static unsigned bin_index(size_t s) {
    if (s < 1024)
        return (unsigned)(s >> 4) - 2;
    unsigned b = 63u - (unsigned)__builtin_clzll(s); /* >= 10 */
    return NSMALL + (b - 10) * 4 + (unsigned)((s >> (b - 2)) & 3);
}

static void insert(chunk *c) {
    unsigned i = bin_index(csize(c));
    c->prev = NULL;
    c->next = bins[i];
    if (c->next)
        c->next->prev = c;
    bins[i] = c;
    binmap[i / 64] |= 1ull << (i % 64);
}

static void unlink_chunk(chunk *c) {
    unsigned i = bin_index(csize(c));
    if (c->prev)
        c->prev->next = c->next;
    else
        bins[i] = c->next;
    if (c->next)
        c->next->prev = c->prev;
    if (!bins[i])
        binmap[i / 64] &= ~(1ull << (i % 64));
}

/* First non-empty bin with index > i, or NBINS. */
static unsigned next_bin(unsigned i) {
    i++;
    for (unsigned w = i / 64; w < NWORDS; w++) {
        uint64_t m = binmap[w];
        if (w == i / 64)
            m &= ~0ull << (i % 64);
        if (m)
            return w * 64 + (unsigned)__builtin_ctzll(m);
    }
    return NBINS;
}

static inline size_t request_size(size_t n) {
    size_t s = (n + 8 + 15) & ~(size_t)15;
    return s < MIN_CHUNK ? MIN_CHUNK : s;
}

void ab__heap_init(void *base, size_t size) {
    uintptr_t lo = ((uintptr_t)base + 15) & ~(uintptr_t)15;
    uintptr_t hi = ((uintptr_t)base + size) & ~(uintptr_t)15;
    memset(bins, 0, sizeof bins);
    memset(binmap, 0, sizeof binmap);
    heap_lo = heap_end = 0;
    if (!base || hi < lo || hi - lo < 16 + MIN_CHUNK)
        return; /* no heap: malloc always returns NULL */
    chunk *first = (chunk *)(lo + 8);
    chunk *sentinel = (chunk *)(hi - 8);
    size_t s = (uintptr_t)sentinel - (uintptr_t)first;
    first->head = s | PINUSE;
    set_foot(first, s);
    sentinel->head = CINUSE;
    heap_lo = (uintptr_t)first;
    heap_end = (uintptr_t)sentinel;
    insert(first);
}

/* The chunk of a pointer handed to free()/realloc(), or an abort. */
static chunk *checked_chunk(void *p, const char *who) {
    uintptr_t a = (uintptr_t)p;
    chunk *c = (chunk *)(a - 8);
    if ((a & 15) || a < heap_lo + 8 || a >= heap_end)
        ab_abort(-1, "%s(): invalid pointer %p (not from malloc)", who, p);
    size_t s = csize(c);
    if (!(c->head & CINUSE) || s < MIN_CHUNK || (s & 15) || s > heap_end - (uintptr_t)c)
        ab_abort(-1, "%s(): invalid pointer %p (double free or heap corruption)", who, p);
    return c;
}

void *malloc(size_t n) {
    if (n > MAX_REQUEST)
        return NULL;
    size_t need = request_size(n);
    unsigned i = bin_index(need);
    chunk *c = NULL;
    if (i < NSMALL) {
        c = bins[i]; /* exact size */
    } else {
        for (chunk *p = bins[i]; p; p = p->next)
            if (csize(p) >= need) {
                c = p;
                break;
            }
    }
    if (!c) {
        unsigned j = next_bin(i);
        if (j == NBINS)
            return NULL;
        c = bins[j]; /* every chunk there is larger than need */
    }
    unlink_chunk(c);
    size_t s = csize(c);
    if (s - need >= MIN_CHUNK) {
        chunk *rest = at(c, need);
        rest->head = (s - need) | PINUSE;
        set_foot(rest, s - need);
        insert(rest); /* the chunk after it already has PINUSE clear */
        c->head = need | (c->head & PINUSE) | CINUSE;
    } else {
        c->head |= CINUSE;
        at(c, s)->head |= PINUSE;
    }
    return (char *)c + 8;
}

void free(void *p) {
    if (!p)
        return;
    chunk *c = checked_chunk(p, "free");
    size_t s = csize(c);
    chunk *next = at(c, s);
    if (!(c->head & PINUSE)) {
        chunk *prev = (chunk *)((char *)c - ((size_t *)c)[-1]);
        unlink_chunk(prev);
        s += csize(prev);
        c = prev;
    }
    if (!(next->head & CINUSE)) {
        unlink_chunk(next);
        s += csize(next);
    }
    c->head = s | PINUSE; /* the chunk before a free chunk is always in use */
    set_foot(c, s);
    at(c, s)->head &= ~PINUSE;
    insert(c);
}

void *calloc(size_t nmemb, size_t size) {
    size_t n;
    if (__builtin_mul_overflow(nmemb, size, &n))
        return NULL;
    void *p = malloc(n);
    if (p)
        memset(p, 0, n);
    return p;
}

void *realloc(void *p, size_t n) {
    if (!p)
        return malloc(n);
    if (n == 0) {
        free(p);
        return NULL;
    }
    chunk *c = checked_chunk(p, "realloc");
    if (n > MAX_REQUEST)
        return NULL;
    size_t need = request_size(n);
    size_t s = csize(c);
    if (s < need) {
        chunk *next = at(c, s);
        if (!(next->head & CINUSE) && s + csize(next) >= need) {
            /* grow in place into the free chunk after us */
            unlink_chunk(next);
            s += csize(next);
            c->head = s | (c->head & FLAGS);
            at(c, s)->head |= PINUSE;
        } else {
            void *q = malloc(n);
            if (!q)
                return NULL;
            memcpy(q, p, s - 8);
            free(p);
            return q;
        }
    }
    if (s - need >= MIN_CHUNK) {
        /* give the tail back: make it an in-use chunk and free it, which
         * coalesces it with a free chunk after it */
        chunk *tail = at(c, need);
        c->head = need | (c->head & FLAGS);
        tail->head = (s - need) | PINUSE | CINUSE;
        free((char *)tail + 8);
    }
    return p;
}

#ifdef AB_HEAP_CHECK
/* Walks the whole heap and the bins and aborts on any inconsistency; returns
 * the number of bytes in free chunks. For the runtime's native tests. */
size_t ab__heap_check(void);
size_t ab__heap_check(void) {
    if (!heap_end)
        return 0;
    size_t free_bytes = 0, free_chunks = 0;
    bool prev_inuse = true;
    chunk *c = (chunk *)heap_lo;
    while ((uintptr_t)c < heap_end) {
        size_t s = csize(c);
        if (s < MIN_CHUNK || (s & 15) || s > heap_end - (uintptr_t)c)
            ab_abort(-1, "heap check: bad size %zu at %p", s, (void *)c);
        if (!!(c->head & PINUSE) != prev_inuse)
            ab_abort(-1, "heap check: PINUSE wrong at %p", (void *)c);
        bool inuse = c->head & CINUSE;
        if (!inuse) {
            if (!prev_inuse)
                ab_abort(-1, "heap check: two adjacent free chunks at %p", (void *)c);
            if (*(size_t *)((char *)c + s - 8) != s)
                ab_abort(-1, "heap check: bad footer at %p", (void *)c);
            free_bytes += s;
            free_chunks++;
        }
        prev_inuse = inuse;
        c = at(c, s);
    }
    if ((uintptr_t)c != heap_end || !(c->head & CINUSE) || !!(c->head & PINUSE) != prev_inuse)
        ab_abort(-1, "heap check: bad sentinel");
    size_t binned = 0;
    for (unsigned i = 0; i < NBINS; i++) {
        if (!!bins[i] != !!(binmap[i / 64] & (1ull << (i % 64))))
            ab_abort(-1, "heap check: bitmap wrong for bin %u", i);
        for (chunk *p = bins[i]; p; p = p->next) {
            if (p->head & CINUSE || bin_index(csize(p)) != i || (p->next && p->next->prev != p))
                ab_abort(-1, "heap check: bad free list %u", i);
            binned++;
        }
    }
    if (binned != free_chunks)
        ab_abort(-1, "heap check: %zu free chunks but %zu in bins", free_chunks, binned);
    return free_bytes;
}
#endif
