/*
 * aionub guest runtime: private declarations shared by the runtime sources.
 * Everything here is prefixed ab__ and is not part of the guest API.
 */
#ifndef AB_RUNTIME_INTERNAL_H
#define AB_RUNTIME_INTERNAL_H

#define _GNU_SOURCE 1 /* musl's full API (MREMAP_MAYMOVE, strsignal, ...) */

#include <aionub_guest.h>

/* One hypercall: `out port, eax` with eax = bytes written at the start of the
 * output buffer. The "memory" clobber orders the buffer writes before the exit
 * and makes the compiler re-read memory the host wrote while we were stopped. */
#ifndef AB__OUT /* native tests of the runtime replace it */
#define AB__OUT(port, nbytes) \
    __asm__ volatile("outl %0, %1" : : "a"((uint32_t)(nbytes)), "N"(port) : "memory")
#endif

/* The buffers from the boot info, copied once at start-up. */
extern uint8_t *ab__in;
extern size_t ab__in_size;
extern uint8_t *ab__out;
extern size_t ab__out_size;
/* True while a guest call is being served (host calls are allowed). */
extern bool ab__in_call;
/* AB_BOOT_* flags from the boot info. */
extern uint32_t ab__boot_flags;

/* ---- encoding into the output buffer ------------------------------------- */

typedef struct {
    uint8_t *buf;
    size_t cap;
    size_t len;
    bool full; /* something did not fit; len stops growing */
} ab__writer;

static inline void ab__put(ab__writer *w, const void *p, size_t n) {
    if (w->full || n > w->cap - w->len) {
        w->full = true;
        return;
    }
    memmove(w->buf + w->len, p, n);
    w->len += n;
}
static inline void ab__put_u8(ab__writer *w, uint8_t v) { ab__put(w, &v, 1); }
static inline void ab__put_u32(ab__writer *w, uint32_t v) { ab__put(w, &v, 4); }
static inline void ab__put_u64(ab__writer *w, uint64_t v) { ab__put(w, &v, 8); }
/* string / str / bytes payload: len:u32, bytes, NUL */
static inline void ab__put_lstr(ab__writer *w, const void *p, size_t n) {
    if (n > UINT32_MAX) {
        w->full = true;
        return;
    }
    ab__put_u32(w, (uint32_t)n);
    ab__put(w, p, n);
    ab__put_u8(w, 0);
}

/* ---- decoding from a buffer the host wrote --------------------------------- */

typedef struct {
    const uint8_t *buf;
    size_t size;
    size_t pos;
    bool bad; /* truncated or malformed; every later read yields zero */
} ab__reader;

static inline bool ab__get(ab__reader *r, void *p, size_t n) {
    if (r->bad || n > r->size - r->pos) {
        r->bad = true;
        memset(p, 0, n);
        return false;
    }
    memcpy(p, r->buf + r->pos, n);
    r->pos += n;
    return true;
}
static inline uint8_t ab__get_u8(ab__reader *r) {
    uint8_t v;
    ab__get(r, &v, 1);
    return v;
}
static inline uint32_t ab__get_u32(ab__reader *r) {
    uint32_t v;
    ab__get(r, &v, 4);
    return v;
}
static inline uint64_t ab__get_u64(ab__reader *r) {
    uint64_t v;
    ab__get(r, &v, 8);
    return v;
}
/* len:u32, bytes, NUL. Points into the buffer (no copy); checks the NUL. */
static inline bool ab__get_lstr(ab__reader *r, const uint8_t **p, uint32_t *n) {
    uint32_t len = ab__get_u32(r);
    if (r->bad || (size_t)len >= r->size - r->pos || r->buf[r->pos + len] != 0) {
        r->bad = true;
        *p = NULL;
        *n = 0;
        return false;
    }
    *p = r->buf + r->pos;
    *n = len;
    r->pos += (size_t)len + 1;
    return true;
}

/* ---- values (values.c) ------------------------------------------------------ */

/* Why ab__put_value() refused a value: the path to the bad part ("[3]['k']",
 * empty for the value itself) and the problem. */
typedef struct {
    char path[256];
    char problem[160];
} ab__value_error;

/* Appends the value (tag and payload) to w. Returns false, with *err filled
 * in, for a value that is not valid; stops early (w->full) once it cannot
 * fit. */
bool ab__put_value(ab__writer *w, const ab_value *v, ab__value_error *err);

/* What building decoded values takes: list items, dict entries, and bytes
 * of strings, byte strings and keys with their NULs. */
typedef struct {
    size_t values, entries, bytes;
} ab__value_size;

/* Validates the value at r (tag, payload; counts against the bytes left,
 * nesting at most AB_MAX_DEPTH) and adds what building it takes to *size.
 * Returns false (r->bad) for a malformed value. */
bool ab__value_measure(ab__reader *r, ab__value_size *size);

/* The size of the block that ab__value_build() needs for what was measured. */
size_t ab__value_block_size(const ab__value_size *size, bool copy);

/* Where ab__value_build() takes memory from: arrays from `nodes` (8-byte
 * aligned), and with `copy` strings from `strs`; without `copy` strings and
 * keys point into the reader's buffer. */
typedef struct {
    uint8_t *nodes;
    char *strs;
    bool copy;
} ab__value_mem;

/* Builds a value that ab__value_measure() accepted, from the same bytes.
 * Nothing it builds is marked owned. */
void ab__value_build(ab__reader *r, ab_value *out, ab__value_mem *m);

/* ---- helpers implemented in the runtime ------------------------------------ */

/* Writes len:u32, a formatted message and its NUL at ab__out + offset, cutting
 * the message to fit (on a UTF-8 character boundary) and replacing invalid
 * UTF-8 by '?'. Returns the record size (offset + 4 + len + 1), or 0 when the
 * output buffer cannot even hold an empty message. */
size_t ab__put_message(size_t offset, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));
size_t ab__put_messagef(size_t offset, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Length of the longest valid UTF-8 prefix of s[0..n). */
size_t ab__utf8_valid_prefix(const uint8_t *s, size_t n);

/* ---- the pieces of the system-call layer (syscall.c dispatches) ----------- */

/* A system request to the host (AB_PORT_SYS): ab__sys_begin() starts the
 * request in the output buffer; ab__sys_call() sends it and returns the
 * result (>= 0 or -errno). Reply data, if any, is at ab__sys_data(). */
ab__writer ab__sys_begin(uint32_t op);
int64_t ab__sys_call(ab__writer *w);
static inline const uint8_t *ab__sys_data(void) { return ab__out + AB_SYS_REPLY_HEADER; }
/* The most reply data that fits the output buffer. */
static inline size_t ab__sys_room(void) {
    return ab__out_size > AB_SYS_REPLY_HEADER ? ab__out_size - AB_SYS_REPLY_HEADER : 0;
}

/* pages.c: brk and anonymous mmap over the heap region. */
void ab__pages_init(uintptr_t base, size_t size);
long ab__sys_brk(uintptr_t addr);
long ab__sys_mmap(uintptr_t addr, size_t len, int prot, int flags, int fd, long off);
long ab__sys_munmap(uintptr_t addr, size_t len);
long ab__sys_mremap(uintptr_t old, size_t old_len, size_t new_len, int flags, uintptr_t new_addr);
long ab__sys_madvise(uintptr_t addr, size_t len, int advice);
long ab__sys_mprotect(uintptr_t addr, size_t len, int prot);

/* files.c: the descriptor table, stdio fds and the host's read-only files. */
long ab__file_syscall(long n, long a1, long a2, long a3, long a4, long a5, long a6, bool *handled);

/* signals.c: dispositions, the mask and synchronous delivery to ourselves. */
long ab__signal_syscall(long n, long a1, long a2, long a3, long a4, bool *handled);

/* process.c: libc start-up, runs of main() and the ways they end. */
void ab__process_init(const struct ab_boot_info *bi);
bool ab__has_main(void);
size_t ab__run(ab__reader *r);
/* exit_group(code), or termination by signal `sig` (code ignored) */
_Noreturn void ab__exit(int code, int sig);
/* Flush stdio so that buffered output reaches the host. */
void ab__flush_stdio(void);
/* The name of the call being served ("" outside calls), for messages. */
extern const char *ab__current_call;

/* Python's name for a tag, for error messages. */
const char *ab__type_name(unsigned tag);

#endif
