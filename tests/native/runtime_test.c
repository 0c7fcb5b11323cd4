/*
 * Native tests of the guest runtime's pure-C parts, on the host with glibc:
 *
 *   messages.c  the message encoding (UTF-8 validation and sanitising,
 *               truncation on a character boundary), log and abort records
 *   hostcall.c  the host-call codec: requests as encoded, every kind of
 *               reply, malformed replies, limits, out of memory
 *   pages.c     brk and mmap over the heap region: placement first-fit from
 *               the top, brk/mmap collisions, MAP_FIXED(_NOREPLACE), mremap,
 *               madvise, and the zero invariant, against a model
 *
 * tests/test_guest_sdk.py compiles those three sources against glibc's
 * headers with AB__OUT redirected to ab__test_out() and malloc/free to
 * ab__test_malloc/ab__test_free (which can fail on demand and count what is
 * live), and links this file. Exit status 0 and "N checks, 0 failures".
 */
#include "internal.h"

#include <errno.h>
#include <setjmp.h>
#include <stdio.h>
#include <sys/mman.h>

/* ---- what runtime.c (not linked here) would provide ---------------------------- */

uint8_t *ab__in, *ab__out;
size_t ab__in_size, ab__out_size;
bool ab__in_call;
uint32_t ab__boot_flags;
const char *ab__type_name(unsigned t) {
    static const char *names[] = {"None", "bool", "int", "float", "str", "bytes"};
    return t < 6 ? names[t] : "?";
}

/* ---- malloc that can fail, and counts ---------------------------------------------- */

static long live_blocks;
static int fail_next; /* the next n allocations fail */
void *ab__test_malloc(size_t n) {
    if (fail_next > 0) {
        fail_next--;
        return NULL;
    }
    void *p = malloc(n);
    if (p)
        live_blocks++;
    return p;
}
void ab__test_free(void *p) {
    if (p)
        live_blocks--;
    free(p);
}

/* ---- checks ----------------------------------------------------------------------- */

static long failures, checks;
#define CHECK(cond, ...)                                                                 \
    do {                                                                                 \
        checks++;                                                                        \
        if (!(cond)) {                                                                   \
            failures++;                                                                  \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);                                  \
            printf(__VA_ARGS__);                                                         \
            printf("\n");                                                                \
        }                                                                                \
    } while (0)

static uint64_t rng_state = 88172645463325252ull;
static uint64_t rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* ---- the fake host --------------------------------------------------------------------- */

static jmp_buf abort_jmp;
static bool expect_abort;
static unsigned last_port, last_n, outs;
static uint8_t sent[8192];      /* the output buffer as the guest left it at the last exit */
static uint8_t reply[8192];     /* copied into the output buffer on a host call */
static size_t reply_len;

void ab__test_out(unsigned port, unsigned n) {
    last_port = port;
    last_n = n;
    outs++;
    memcpy(sent, ab__out, ab__out_size < sizeof sent ? ab__out_size : sizeof sent);
    if (port == AB_PORT_ABORT) {
        if (expect_abort)
            longjmp(abort_jmp, 1);
        printf("unexpected abort\n");
        exit(2);
    }
    if (port == AB_PORT_HOSTCALL)
        memcpy(ab__out, reply, reply_len);
}

#define ABORTS(stmt)                                                                     \
    ({                                                                                   \
        expect_abort = true;                                                             \
        int aborted_ = setjmp(abort_jmp);                                                \
        if (!aborted_) {                                                                 \
            stmt;                                                                        \
        }                                                                                \
        expect_abort = false;                                                            \
        aborted_;                                                                        \
    })

static uint32_t get32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}
static void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }

/* ================================================================================ */
/* messages.c                                                                        */
/* ================================================================================ */

/* Unicode Table 3-7, the well-formed byte sequences: an oracle written
 * independently of ab__utf8_valid_prefix. */
static size_t oracle_valid_prefix(const uint8_t *s, size_t n) {
    static const struct {
        uint8_t lo[4], hi[4];
        int len;
    } rows[] = {
        {{0x00}, {0x7f}, 1},
        {{0xc2, 0x80}, {0xdf, 0xbf}, 2},
        {{0xe0, 0xa0, 0x80}, {0xe0, 0xbf, 0xbf}, 3},
        {{0xe1, 0x80, 0x80}, {0xec, 0xbf, 0xbf}, 3},
        {{0xed, 0x80, 0x80}, {0xed, 0x9f, 0xbf}, 3},
        {{0xee, 0x80, 0x80}, {0xef, 0xbf, 0xbf}, 3},
        {{0xf0, 0x90, 0x80, 0x80}, {0xf0, 0xbf, 0xbf, 0xbf}, 4},
        {{0xf1, 0x80, 0x80, 0x80}, {0xf3, 0xbf, 0xbf, 0xbf}, 4},
        {{0xf4, 0x80, 0x80, 0x80}, {0xf4, 0x8f, 0xbf, 0xbf}, 4},
    };
    size_t i = 0;
    while (i < n) {
        int found = 0;
        for (size_t r = 0; r < sizeof rows / sizeof *rows && !found; r++) {
            int len = rows[r].len;
            if ((size_t)len > n - i)
                continue;
            int ok = 1;
            for (int k = 0; k < len; k++)
                ok &= s[i + k] >= rows[r].lo[k] && s[i + k] <= rows[r].hi[k];
            found = ok ? len : 0;
        }
        if (!found)
            return i;
        i += (size_t)found;
    }
    return n;
}

static void test_utf8(void) {
    uint8_t s[4];
    long bad = 0;
    /* every string of 1 to 3 bytes */
    for (uint32_t v = 0; v < 1u << 24; v++) {
        s[0] = (uint8_t)(v >> 16), s[1] = (uint8_t)(v >> 8), s[2] = (uint8_t)v;
        for (size_t n = 1; n <= 3; n++)
            if (n == 3 || (v & ((1u << (8 * (3 - n))) - 1)) == 0)
                bad += ab__utf8_valid_prefix(s, n) != oracle_valid_prefix(s, n);
    }
    CHECK(bad == 0, "valid prefix differs from Table 3-7 for %ld strings of 1-3 bytes", bad);
    /* four-byte strings: every lead byte from 0xe0 up with random continuations */
    bad = 0;
    for (long k = 0; k < 4000000; k++) {
        uint64_t r = rnd();
        s[0] = (uint8_t)(0xe0 + r % 32);
        for (int j = 1; j < 4; j++)
            s[j] = (r >> (8 * j)) & 0x100 ? (uint8_t)(r >> (8 * j + 8)) : (uint8_t)(0x80 | ((r >> (8 * j + 8)) & 0x3f));
        bad += ab__utf8_valid_prefix(s, 4) != oracle_valid_prefix(s, 4);
    }
    CHECK(bad == 0, "valid prefix differs from Table 3-7 for %ld strings of 4 bytes", bad);

    static const char *valid[] = {"", "abc", "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80",
                                  "\xf4\x8f\xbf\xbf", "\xed\x9f\xbf", "\xee\x80\x80"};
    static const char *invalid[] = {"\x80", "\xc0\x80", "\xc1\xbf", "\xe0\x80\x80", "\xe0\x9f\xbf",
                                    "\xed\xa0\x80", "\xed\xbf\xbf", "\xf0\x8f\xbf\xbf",
                                    "\xf4\x90\x80\x80", "\xf5\x80\x80\x80", "\xc3", "\xe2\x82",
                                    "\xf0\x9f\x98", "\xff", "\xfe"};
    for (size_t i = 0; i < sizeof valid / sizeof *valid; i++)
        CHECK(ab__utf8_valid_prefix((const uint8_t *)valid[i], strlen(valid[i])) == strlen(valid[i]),
              "valid UTF-8 #%zu", i);
    for (size_t i = 0; i < sizeof invalid / sizeof *invalid; i++)
        CHECK(ab__utf8_valid_prefix((const uint8_t *)invalid[i], strlen(invalid[i])) == 0,
              "invalid UTF-8 #%zu", i);
    CHECK(ab__utf8_valid_prefix((const uint8_t *)"ab\xc3\xa9\xff", 5) == 4, "prefix stops at the bad byte");
}

static void test_messages(void) {
    static uint8_t out[64];
    ab__out = out;
    ab__out_size = sizeof out;
    size_t n = ab__put_messagef(1, "%s", "hi");
    CHECK(n == 8 && get32(out + 1) == 2 && !memcmp(out + 5, "hi", 3), "message record");
    n = ab__put_messagef(3, "%d-%s", 42, "x");
    CHECK(n == 3 + 4 + 4 + 1 && get32(out + 3) == 4 && !memcmp(out + 7, "42-x", 5), "at an offset");

    /* 58 bytes fit (64 - 1 - 4 - NUL) */
    char s[400];
    memset(s, 'a', 200);
    s[200] = 0;
    n = ab__put_messagef(1, "%s", s);
    CHECK(n == 64 && get32(out + 1) == 58 && out[63] == 0, "cut to fit: %zu %u", n, get32(out + 1));
    /* a 2-byte character at 57..58 is cut whole */
    memset(s, 'a', 57);
    strcpy(s + 57, "\xc3\xa9\xc3\xa9");
    ab__put_messagef(1, "%s", s);
    CHECK(get32(out + 1) == 57 && out[5 + 57] == 0, "truncated on a character boundary: %u", get32(out + 1));
    /* a 4-byte character starting at 56 is cut whole; one starting at 54 fits */
    memset(s, 'a', 56);
    strcpy(s + 56, "\xf0\x9f\x98\x80z");
    ab__put_messagef(1, "%s", s);
    CHECK(get32(out + 1) == 56, "4-byte character cut: %u", get32(out + 1));
    memset(s, 'a', 54);
    strcpy(s + 54, "\xf0\x9f\x98\x80z");
    ab__put_messagef(1, "%s", s);
    CHECK(get32(out + 1) == 58 && !memcmp(out + 5 + 54, "\xf0\x9f\x98\x80", 4), "4-byte character fits: %u",
          get32(out + 1));
    ab__put_messagef(1, "a\xff" "b\xc3(\xed\xa0\x80z");
    CHECK(get32(out + 1) == 9 && !memcmp(out + 5, "a?b?(???z", 10), "invalid UTF-8 replaced: [%.*s]",
          (int)get32(out + 1), out + 5);
    CHECK(ab__put_messagef(59, "%s", "abc") == 64 && get32(out + 59) == 0 && out[63] == 0,
          "room for an empty message only");
    CHECK(ab__put_messagef(60, "%s", "abc") == 0, "no room for a record");
    CHECK(ab__put_messagef(1000, "x") == 0, "offset past the buffer");

    /* properties on random byte strings, cut or not */
    static uint8_t big[300];
    ab__out = big;
    for (int k = 0; k < 200000; k++) {
        size_t len = rnd() % 120, cap = 6 + rnd() % 120;
        for (size_t i = 0; i < len; i++) {
            uint64_t r = rnd();
            s[i] = (char)(r % 4 == 0 ? 0x80 | (r >> 8) % 64 : r % 4 == 1 ? 0xc0 + (r >> 8) % 64 : r % 4 == 2 ? 'a' : (r >> 8) | 1);
        }
        s[len] = 0;
        len = strlen(s);
        ab__out_size = cap;
        memset(big, 0x55, sizeof big);
        n = ab__put_messagef(1, "%s", s);
        uint32_t got = get32(big + 1);
        const uint8_t *m = big + 5;
        bool ok = n == 1 + 4 + got + 1 && n <= cap && m[got] == 0 && ab__utf8_valid_prefix(m, got) == got &&
                  strlen((const char *)m) == got;
        /* one for one: each byte kept or replaced by '?' */
        for (size_t i = 0; ok && i < got; i++)
            ok = m[i] == (uint8_t)s[i] || m[i] == '?';
        /* a kept valid character stays; only '?' where the input is invalid there */
        size_t i = 0;
        while (ok && i < got) {
            size_t v = ab__utf8_valid_prefix((const uint8_t *)s + i, len - i);
            if (v == 0) {
                /* an invalid byte, or a character cut off by the truncation */
                ok = m[i] == '?' || i + 4 > got;
                i++;
            } else {
                size_t take = v < got - i ? v : got - i;
                ok = !memcmp(m + i, s + i, take) || i + take + 4 > got;
                i += take;
            }
        }
        if (len <= cap - 6)
            ok = ok && got == len; /* fits: nothing cut */
        else
            ok = ok && got + 4 > cap - 6 && got <= cap - 6; /* cut: at most a character short */
        if (!ok) {
            CHECK(0, "random message #%d (len %zu, cap %zu): got %u", k, len, cap, got);
            break;
        }
    }
    checks++;

    ab__out = out;
    ab__out_size = sizeof out;
    ab_log(AB_LOG_INFO, "x=%d", 5);
    CHECK(last_port == AB_PORT_LOG && last_n == 9 && sent[0] == 20 && get32(sent + 1) == 3 &&
              !memcmp(sent + 5, "x=5", 4),
          "log record");
    static const int levels[][2] = {{-5, 10}, {0, 10}, {10, 10}, {15, 10}, {20, 20}, {25, 20},
                                    {30, 30}, {39, 30}, {40, 40}, {99, 40}, {INT32_MIN, 10}, {INT32_MAX, 40}};
    for (size_t i = 0; i < sizeof levels / sizeof *levels; i++) {
        ab_log(levels[i][0], "x");
        CHECK(sent[0] == levels[i][1], "level %d sent as %d", levels[i][0], sent[0]);
    }
    ab_log(AB_LOG_WARNING, "%s", "bad \xff here");
    CHECK(!memcmp(sent + 5, "bad ? here", 11), "log record sanitised: %s", sent + 5);
    unsigned before = outs;
    ab__out_size = 5;
    ab_log(AB_LOG_INFO, "x");
    CHECK(outs == before, "no log record without room for one");
    ab__out_size = 6;
    ab_log(AB_LOG_INFO, "xyz");
    CHECK(outs == before + 1 && last_n == 6 && get32(sent + 1) == 0, "an empty log record fits in 6 bytes");

    ab__out_size = sizeof out;
    CHECK(ABORTS(ab_abort(-7, "boom %s", "here")), "ab_abort exits");
    int64_t code;
    memcpy(&code, sent, 8);
    CHECK(last_port == AB_PORT_ABORT && code == -7 && get32(sent + 8) == 9 && !memcmp(sent + 12, "boom here", 10) &&
              last_n == 8 + 4 + 9 + 1,
          "abort record");
    memset(s, 'b', 300);
    s[300] = 0;
    CHECK(ABORTS(ab_abort(INT64_MAX, "%s", s)), "long abort");
    memcpy(&code, sent, 8);
    CHECK(code == INT64_MAX && last_n == 64 && get32(sent + 8) == 64 - 13, "long abort message cut to fit");
    ab__out_size = 12;
    CHECK(ABORTS(ab_abort(1, "x")) && last_n == 0, "an abort without room for a record is empty");
}

/* ================================================================================ */
/* hostcall.c                                                                        */
/* ================================================================================ */

static size_t ok_reply(uint8_t tag) {
    reply[0] = AB_REPLY_OK;
    reply[1] = tag;
    return 2;
}

static void test_hostcall(void) {
    static uint8_t buf[4096];
    ab__out = buf;
    ab__out_size = sizeof buf;
    ab_value r;
    long live = live_blocks;

    ab__in_call = false;
    CHECK(ab_call_host("f", NULL, 0, &r) == -1 && r.type == AB_STR && strstr(r.buf.ptr, "outside"),
          "no host calls outside a guest call");
    ab_value_free(&r);
    ab__in_call = true;

    /* the request as encoded */
    reply_len = ok_reply(AB_TAG_INT) + 8;
    put64(reply + 2, 42);
    ab_value args[6] = {ab_int(-7), ab_str("h\xc3\xa9llo"), ab_float(1.5), ab_bool(true),
                        ab_bytes_value("a\0b", 3), ab_none()};
    uint8_t want[128];
    size_t w = 0;
    put32(want, 3);
    memcpy(want + 4, "add", 4);
    w = 8;
    want[w++] = 6;
    want[w++] = AB_TAG_INT;
    put64(want + w, (uint64_t)-7);
    w += 8;
    want[w++] = AB_TAG_STR;
    put32(want + w, 6);
    memcpy(want + w + 4, "h\xc3\xa9llo", 7);
    w += 11;
    want[w++] = AB_TAG_FLOAT;
    memcpy(want + w, &(double){1.5}, 8);
    w += 8;
    want[w++] = AB_TAG_BOOL;
    want[w++] = 1;
    want[w++] = AB_TAG_BYTES;
    put32(want + w, 3);
    memcpy(want + w + 4, "a\0b\0", 4);
    w += 8;
    want[w++] = AB_TAG_NONE;
    CHECK(ab_call_host("add", args, 6, &r) == 0 && r.type == AB_INT && r.i == 42, "int reply");
    CHECK(last_port == AB_PORT_HOSTCALL && last_n == w && !memcmp(sent, want, w), "request encoding");

    /* every type of reply */
    reply_len = ok_reply(AB_TAG_NONE);
    CHECK(ab_call_host("f", NULL, 0, &r) == 0 && r.type == AB_VOID, "None reply");
    reply_len = ok_reply(AB_TAG_BOOL) + 1;
    reply[2] = 1;
    CHECK(ab_call_host("f", NULL, 0, &r) == 0 && r.type == AB_BOOL && r.b, "bool reply");
    reply_len = ok_reply(AB_TAG_FLOAT) + 8;
    memcpy(reply + 2, &(double){-0.25}, 8);
    CHECK(ab_call_host("f", NULL, 0, &r) == 0 && r.type == AB_FLOAT && r.f == -0.25, "float reply");
    reply_len = ok_reply(AB_TAG_STR) + 8;
    put32(reply + 2, 3);
    memcpy(reply + 6, "abc", 4);
    CHECK(ab_call_host("s", NULL, 0, &r) == 0 && r.type == AB_STR && r.buf.len == 3 && !strcmp(r.buf.ptr, "abc") &&
              ((const uint8_t *)r.buf.ptr < buf || (const uint8_t *)r.buf.ptr >= buf + sizeof buf) &&
              live_blocks == live + 1,
          "str reply copied to the heap");
    ab_value_free(&r);
    CHECK(r.type == AB_VOID && live_blocks == live, "ab_value_free frees and resets the value");
    reply_len = ok_reply(AB_TAG_BYTES) + 9;
    put32(reply + 2, 4);
    memcpy(reply + 6, "\0x\0y\0", 5);
    CHECK(ab_call_host("b", NULL, 0, &r) == 0 && r.type == AB_BYTES && r.buf.len == 4 &&
              !memcmp(r.buf.ptr, "\0x\0y\0", 5),
          "bytes reply with NULs, NUL-terminated");
    ab_value_free(&r);

    /* errors from the host */
    reply[0] = AB_REPLY_ERROR;
    put32(reply + 1, 4);
    memcpy(reply + 5, "boom", 5);
    reply_len = 10;
    CHECK(ab_call_host("e", NULL, 0, &r) == -1 && r.type == AB_STR && !strcmp(r.buf.ptr, "boom"), "error reply");
    ab_value_free(&r);
    reply[9] = 'X';
    CHECK(ab_call_host("e", NULL, 0, &r) == -1 && strstr(r.buf.ptr, "malformed error reply"),
          "an error message without its NUL");
    ab_value_free(&r);

    /* malformed replies */
    struct {
        uint8_t bytes[16];
        size_t len;
        const char *what;
    } bad[] = {
        {{0, 4, 3, 0, 0, 0, 'a', 'b', 'c', 'X'}, 10, "a str without its NUL"},
        {{0, 1, 2}, 3, "a bool of 2"},
        {{0, 9}, 2, "an unknown tag"},
        {{0, 4, 0xff, 0xff, 0xff, 0xff}, 6, "a length past the buffer"},
        {{0, 5, 0x00, 0x10, 0, 0}, 6, "a bytes length past the buffer"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        memcpy(reply, bad[i].bytes, bad[i].len);
        reply_len = bad[i].len;
        CHECK(ab_call_host("m", NULL, 0, &r) == -1 && r.type == AB_STR &&
                  !strcmp(r.buf.ptr, "malformed reply from host function m"),
              "%s: %s", bad[i].what, (const char *)r.buf.ptr);
        ab_value_free(&r);
    }
    reply[0] = 7;
    reply_len = 1;
    CHECK(ab_call_host("m", NULL, 0, &r) == -1 && strstr(r.buf.ptr, "status 7"), "unknown reply status");
    ab_value_free(&r);
    /* a reply at the very end of the buffer: the length leaves no room for the NUL */
    ab__out_size = 10;
    reply_len = ok_reply(AB_TAG_STR) + 8;
    put32(reply + 2, 4);
    memcpy(reply + 6, "abcd", 4);
    CHECK(ab_call_host("m", NULL, 0, &r) == -1 && strstr(r.buf.ptr, "malformed"), "str running off the buffer");
    ab_value_free(&r);
    ab__out_size = sizeof buf;

    /* ab_call_host_int */
    int err = 5;
    reply_len = ok_reply(AB_TAG_BOOL) + 1;
    reply[2] = 1;
    CHECK(ab_call_host_int("b", 3, &err) == 1 && err == 0, "bool reply counts as an int");
    CHECK(sent[6] == 1 && sent[7] == AB_TAG_INT && get32(sent + 8) == 3, "ab_call_host_int sends one int");
    reply_len = ok_reply(AB_TAG_INT) + 8;
    put64(reply + 2, (uint64_t)INT64_MIN);
    CHECK(ab_call_host_int("i", 3, &err) == INT64_MIN && err == 0, "int reply");
    CHECK(ab_call_host_int("i", 3, NULL) == INT64_MIN, "err may be NULL");
    reply_len = ok_reply(AB_TAG_NONE);
    CHECK(ab_call_host_int("n", 3, &err) == 0 && err == 1, "None is not an int");
    reply_len = ok_reply(AB_TAG_STR) + 6;
    put32(reply + 2, 0);
    reply[6] = 0;
    CHECK(ab_call_host_int("s", 3, &err) == 0 && err == 1 && live_blocks == live, "a str is not an int, and is freed");

    /* the guest's mistakes */
    unsigned before = outs;
    CHECK(ab_call_host(NULL, NULL, 0, &r) == -1 && strstr(r.buf.ptr, "NULL"), "NULL name");
    ab_value_free(&r);
    CHECK(ab_call_host("", NULL, 0, &r) == -1 && strstr(r.buf.ptr, "1 to 255"), "empty name");
    ab_value_free(&r);
    char name[300];
    memset(name, 'n', 256);
    name[256] = 0;
    CHECK(ab_call_host(name, NULL, 0, &r) == -1 && strstr(r.buf.ptr, "1 to 255"), "256-byte name");
    ab_value_free(&r);
    name[255] = 0;
    reply_len = ok_reply(AB_TAG_NONE);
    CHECK(ab_call_host(name, NULL, 0, &r) == 0 && get32(sent) == 255, "255-byte name");
    before = outs;
    CHECK(ab_call_host("bad\xff", NULL, 0, &r) == -1 && r.type == AB_STR && strstr(r.buf.ptr, "UTF-8") &&
              ab__utf8_valid_prefix(r.buf.ptr, r.buf.len) == r.buf.len,
          "a name that is not UTF-8 is not sent: %s", (const char *)r.buf.ptr);
    ab_value_free(&r);
    ab_value badstr = ab_strn("ok\xc3(", 4);
    CHECK(ab_call_host("x", &badstr, 1, &r) == -1 && strstr(r.buf.ptr, "argument 1: str is not valid UTF-8"),
          "a str argument that is not UTF-8 is not sent");
    ab_value_free(&r);
    ab_value many[17];
    for (int i = 0; i < 17; i++)
        many[i] = ab_int(i);
    CHECK(ab_call_host("x", many, 17, &r) == -1 && strstr(r.buf.ptr, "too many"), "more than 16 arguments");
    ab_value_free(&r);
    CHECK(ab_call_host("x", NULL, 2, &r) == -1 && strstr(r.buf.ptr, "args is NULL"), "NULL args");
    ab_value_free(&r);
    ab_value odd = {.type = (ab_type)9};
    CHECK(ab_call_host("x", &odd, 1, &r) == -1 && strstr(r.buf.ptr, "argument 1: invalid ab_value type"), "bad type");
    ab_value_free(&r);
    ab_value nullstr = {.type = AB_STR, .buf = {NULL, 3}};
    CHECK(ab_call_host("x", &nullstr, 1, &r) == -1 && strstr(r.buf.ptr, "str with a NULL pointer"), "NULL str with a length");
    ab_value_free(&r);
    static char huge[5000];
    memset(huge, 'a', sizeof huge - 1);
    ab_value hv = ab_strn(huge, sizeof huge - 1);
    CHECK(ab_call_host("x", &hv, 1, &r) == -1 && strstr(r.buf.ptr, "do not fit"), "arguments larger than the buffer");
    ab_value_free(&r);
    CHECK(outs == before, "none of the guest's mistakes reached the host");
    hv.buf.len = sizeof buf - 13; /* name, nargs, tag, length, bytes, NUL: exactly the buffer */
    reply_len = ok_reply(AB_TAG_NONE);
    CHECK(ab_call_host("x", &hv, 1, &r) == 0 && last_n == sizeof buf, "arguments that exactly fit");

    /* a NULL result: the reply is still decoded, and freed */
    reply_len = ok_reply(AB_TAG_STR) + 8;
    put32(reply + 2, 3);
    memcpy(reply + 6, "abc", 4);
    CHECK(ab_call_host("s", NULL, 0, NULL) == 0 && live_blocks == live, "a str result nobody wants is freed");
    reply[0] = AB_REPLY_ERROR;
    put32(reply + 1, 2);
    memcpy(reply + 5, "no", 3);
    reply_len = 8;
    CHECK(ab_call_host("s", NULL, 0, NULL) == -1 && live_blocks == live, "an error nobody wants is freed");

    /* out of memory in the guest */
    reply_len = ok_reply(AB_TAG_STR) + 8;
    put32(reply + 2, 3);
    memcpy(reply + 6, "abc", 4);
    fail_next = 1;
    CHECK(ab_call_host("s", NULL, 0, &r) == -1 && r.type == AB_STR && strstr(r.buf.ptr, "out of memory for the result of host function s"),
          "no memory for the result: %s", (const char *)r.buf.ptr);
    ab_value_free(&r);
    fail_next = 2; /* the copy fails, then the message's copy too */
    CHECK(ab_call_host("s", NULL, 0, &r) == -1 && r.type == AB_STR && strstr(r.buf.ptr, "out of memory in the guest"),
          "no memory for the message either");
    ab_value_free(&r); /* must not free the static message */
    reply[0] = AB_REPLY_ERROR;
    put32(reply + 1, 4);
    memcpy(reply + 5, "boom", 5);
    reply_len = 10;
    fail_next = 1;
    CHECK(ab_call_host("e", NULL, 0, &r) == -1 && strstr(r.buf.ptr, "out of memory in the guest"),
          "no memory for the host's error message");
    ab_value_free(&r);
    CHECK(fail_next == 0, "every planned failure happened");
    CHECK(live_blocks == live, "host calls leak nothing (%ld blocks)", live_blocks - live);
    ab_value_free(NULL);
}

/* ================================================================================ */
/* pages.c                                                                           */
/* ================================================================================ */

#define PAGE 4096ul

/* A model of the region: which pages are mapped, where the break is, and a
 * shadow of the contents, updated by the specification of each call. */
static struct {
    uint8_t *mem, *shadow;
    size_t npages;
    uintptr_t brk; /* offset from mem */
    bool *mapped;
} M;

static size_t up(size_t a) { return (a + PAGE - 1) & ~(PAGE - 1); }
static uintptr_t A(size_t off) { return (uintptr_t)M.mem + off; }

static void model_init(size_t npages) {
    M.npages = npages;
    M.mem = mmap(NULL, npages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    M.shadow = calloc(npages, PAGE);
    M.mapped = calloc(npages, 1);
    M.brk = 0;
    ab__pages_init((uintptr_t)M.mem, npages * PAGE);
}

static void model_free(void) {
    munmap(M.mem, M.npages * PAGE);
    free(M.shadow);
    free(M.mapped);
}

static bool model_range_free(size_t first, size_t n) {
    for (size_t p = first; p < first + n; p++)
        if (M.mapped[p])
            return false;
    return true;
}

/* the highest start of n free pages above the break, or -1 */
static long model_find(size_t n) {
    size_t floor = up(M.brk) / PAGE;
    if (n > M.npages - floor)
        return -1;
    for (long p = (long)(M.npages - n); p >= (long)floor; p--)
        if (model_range_free((size_t)p, n))
            return p;
    return -1;
}

static void model_scribble(size_t off, size_t len) {
    for (size_t i = 0; i < len; i++)
        M.shadow[off + i] = M.mem[off + i] = (uint8_t)(rnd() | 1);
}

static void model_unmap(size_t first, size_t n) {
    for (size_t p = first; p < first + n && p < M.npages; p++)
        if (M.mapped[p]) {
            M.mapped[p] = false;
            memset(M.shadow + p * PAGE, 0, PAGE);
        }
}

/* memory matches the shadow, and the zero invariant holds */
static bool model_check(const char *what, long step) {
    if (memcmp(M.mem, M.shadow, M.npages * PAGE) != 0) {
        size_t i = 0;
        while (M.mem[i] == M.shadow[i])
            i++;
        CHECK(0, "%s (step %ld): memory differs from the model at page %zu byte %zu", what, step, i / PAGE,
              i % PAGE);
        return false;
    }
    static const uint8_t zero[PAGE];
    for (size_t p = up(M.brk) / PAGE; p < M.npages; p++)
        if (!M.mapped[p] && memcmp(M.mem + p * PAGE, zero, PAGE)) {
            CHECK(0, "%s (step %ld): free page %zu is not zero", what, step, p);
            return false;
        }
    return true;
}

static void test_pages_basics(void) {
    model_init(100); /* not a multiple of 64 pages: the bitmap's last word is partial */
    uintptr_t lo = A(0), hi = A(100 * PAGE);

    CHECK(ab__sys_brk(0) == (long)lo, "the break starts at the bottom");
    CHECK(ab__sys_brk(lo - 1) == (long)lo && ab__sys_brk(hi + 1) == (long)lo, "a break outside the region is refused");
    CHECK(ab__sys_brk(lo + 10) == (long)lo + 10, "byte-granular break");
    CHECK(ab__sys_brk(hi) == (long)hi, "the break can take the whole region");
    CHECK(ab__sys_mmap(0, 1, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) == -ENOMEM, "then no room to map");
    memset((void *)lo, 0xaa, 100 * PAGE);
    CHECK(ab__sys_brk(lo + 5) == (long)lo + 5, "shrink");
    CHECK(((uint8_t *)lo)[4] == 0xaa && ((uint8_t *)lo)[5] == 0 && ((uint8_t *)hi)[-1] == 0,
          "shrinking zeroes what is released");

    /* first fit from the top */
    long a = ab__sys_mmap(0, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    long b = ab__sys_mmap(0, 3 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    long c = ab__sys_mmap(0, 10, PROT_READ, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    CHECK(a == (long)(hi - PAGE) && b == (long)(hi - 4 * PAGE) && c == (long)(hi - 5 * PAGE),
          "mappings go down from the top: %lx %lx %lx", a, b, c);
    CHECK(ab__sys_munmap((uintptr_t)b, 3 * PAGE) == 0, "munmap");
    CHECK(ab__sys_mmap(0, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) == (long)(hi - 3 * PAGE),
          "a hole is reused, as high as possible");
    CHECK(ab__sys_mmap(0, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) == (long)(hi - 7 * PAGE),
          "a hole too small is skipped");

    /* brk and mmap meet */
    CHECK(ab__sys_brk(hi - 7 * PAGE) == (long)(hi - 7 * PAGE), "the break grows up to the lowest mapping");
    CHECK(ab__sys_brk(hi - 7 * PAGE + 1) == (long)(hi - 7 * PAGE), "but not into it");
    CHECK(ab__sys_mmap(0, PAGE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) == (long)(hi - 4 * PAGE),
          "the one free page left");
    CHECK(ab__sys_mmap(0, PAGE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) == -ENOMEM, "full: ENOMEM");
    CHECK(ab__sys_brk(lo + 1) == (long)lo + 1, "shrink the break");
    CHECK(ab__sys_mmap(0, PAGE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) == (long)(hi - 8 * PAGE),
          "room again below the mappings");
    CHECK(ab__sys_mmap(0, 92 * PAGE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) == -ENOMEM,
          "the page of the break is not free");
    CHECK(ab__sys_mmap(0, 91 * PAGE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) == (long)(lo + PAGE),
          "everything above it is");
    CHECK(ab__sys_munmap(lo, 100 * PAGE) == 0, "unmap everything");

    /* what mmap refuses */
    CHECK(ab__sys_mmap(0, 0, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) == -EINVAL, "length 0");
    CHECK(ab__sys_mmap(0, PAGE, PROT_READ, MAP_PRIVATE, 3, 0) == -ENODEV, "a file");
    CHECK(ab__sys_mmap(0, PAGE, PROT_READ, MAP_PRIVATE, -1, 0) == -EBADF, "a file without a descriptor");
    CHECK(ab__sys_mmap(0, PAGE, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) == -EACCES, "PROT_EXEC");
    CHECK(ab__sys_mmap(0, 101 * PAGE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) == -ENOMEM, "too large");
    CHECK(ab__sys_mmap(0, SIZE_MAX, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) == -ENOMEM, "SIZE_MAX");
    CHECK(ab__sys_mmap(0, SIZE_MAX - 100, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) == -ENOMEM, "near SIZE_MAX");
    CHECK(ab__sys_mmap(0, 98 * PAGE + 1, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) == (long)(lo + PAGE),
          "rounded up to whole pages");
    CHECK(ab__sys_munmap(lo + PAGE, 99 * PAGE) == 0, "unmap it");

    /* MAP_FIXED and MAP_FIXED_NOREPLACE */
    ab__sys_brk(lo + 2 * PAGE);
    int fixed = MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, noreplace = MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE;
    CHECK(ab__sys_mmap(lo + 50 * PAGE, 2 * PAGE, PROT_READ, fixed, -1, 0) == (long)(lo + 50 * PAGE), "MAP_FIXED");
    memset((void *)(lo + 50 * PAGE), 0x77, 2 * PAGE);
    CHECK(ab__sys_mmap(lo + 51 * PAGE, 2 * PAGE, PROT_READ, noreplace, -1, 0) == -EEXIST, "NOREPLACE over a mapping");
    CHECK(((uint8_t *)lo)[51 * PAGE] == 0x77, "which is left alone");
    CHECK(ab__sys_mmap(lo + 52 * PAGE, PAGE, PROT_READ, noreplace, -1, 0) == (long)(lo + 52 * PAGE),
          "NOREPLACE next to it");
    CHECK(ab__sys_mmap(lo + 51 * PAGE, 2 * PAGE, PROT_READ, fixed, -1, 0) == (long)(lo + 51 * PAGE),
          "MAP_FIXED over a mapping");
    CHECK(((uint8_t *)lo)[50 * PAGE] == 0x77 && ((uint8_t *)lo)[51 * PAGE] == 0 && ((uint8_t *)lo)[52 * PAGE - 1] == 0,
          "replaces it with zeros, and only it");
    CHECK(ab__sys_mmap(lo + 50 * PAGE + 1, PAGE, PROT_READ, fixed, -1, 0) == -EINVAL &&
              ab__sys_mmap(lo + 50 * PAGE + 1, PAGE, PROT_READ, noreplace, -1, 0) == -EINVAL,
          "MAP_FIXED misaligned");
    CHECK(ab__sys_mmap(lo + PAGE, PAGE, PROT_READ, fixed, -1, 0) == -ENOMEM, "MAP_FIXED below the break");
    CHECK(ab__sys_mmap(lo + PAGE, PAGE, PROT_READ, noreplace, -1, 0) == -EEXIST, "NOREPLACE below the break");
    CHECK(ab__sys_mmap(hi, PAGE, PROT_READ, fixed, -1, 0) == -ENOMEM, "MAP_FIXED past the region");
    CHECK(ab__sys_mmap(hi - PAGE, 2 * PAGE, PROT_READ, fixed, -1, 0) == -ENOMEM, "MAP_FIXED across its end");
    CHECK(ab__sys_mmap(lo - PAGE, PAGE, PROT_READ, fixed, -1, 0) == -ENOMEM, "MAP_FIXED below the region");
    CHECK(ab__sys_mmap(hi - PAGE, PAGE, PROT_READ, fixed, -1, 0) == (long)(hi - PAGE), "MAP_FIXED at the top");
    CHECK(ab__sys_mmap(0, PAGE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) == (long)(hi - 2 * PAGE),
          "first fit skips fixed mappings");
    CHECK(ab__sys_brk(lo + 51 * PAGE) == (long)(lo + 2 * PAGE), "the break does not grow over a fixed mapping");

    /* munmap */
    CHECK(ab__sys_munmap(lo + 1, PAGE) == -EINVAL && ab__sys_munmap(lo, 0) == -EINVAL, "munmap EINVAL");
    memset((void *)(lo + 50 * PAGE), 0x66, 3 * PAGE);
    CHECK(ab__sys_munmap(lo + 51 * PAGE, 1) == 0 && ((uint8_t *)lo)[51 * PAGE + PAGE - 1] == 0 &&
              ((uint8_t *)lo)[52 * PAGE] == 0x66 && ((uint8_t *)lo)[51 * PAGE - 1] == 0x66,
          "munmap of one byte releases (and zeroes) its page");
    CHECK(ab__sys_munmap(lo - 10 * PAGE, 20 * PAGE) == 0 && ab__sys_munmap(hi, PAGE) == 0 &&
              ab__sys_munmap(lo, SIZE_MAX & ~(PAGE - 1)) == 0,
          "munmap outside the region, or of nothing mapped, succeeds");
    CHECK(((uint8_t *)lo)[0] == 0xaa, "and leaves the memory below the break alone");
    CHECK(ab__sys_mmap(0, 98 * PAGE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) == (long)(lo + 2 * PAGE),
          "all of it was released");
    ab__sys_munmap(lo, 100 * PAGE);

    /* mremap */
    long m = ab__sys_mmap(0, 2 * PAGE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memset((void *)m, 0x11, 2 * PAGE);
    CHECK(ab__sys_mremap((uintptr_t)m, 2 * PAGE, 3 * PAGE, 0, 0) == -ENOMEM, "no room above the top mapping");
    long m2 = ab__sys_mremap((uintptr_t)m, 2 * PAGE, 3 * PAGE, MREMAP_MAYMOVE, 0);
    CHECK(m2 == (long)(hi - 5 * PAGE) && ((uint8_t *)m2)[2 * PAGE - 1] == 0x11 && ((uint8_t *)m2)[2 * PAGE] == 0 &&
              ((uint8_t *)m)[0] == 0,
          "MAYMOVE moves it, copies it, zeroes the tail and the old place: %lx", m2);
    CHECK(ab__sys_mremap((uintptr_t)m2, 3 * PAGE, 5 * PAGE, 0, 0) == m2, "grows in place into free pages");
    CHECK(ab__sys_mremap((uintptr_t)m2, 5 * PAGE, PAGE + 1, 0, 0) == m2 && ((uint8_t *)m2)[2 * PAGE - 1] == 0x11 &&
              ((uint8_t *)m2)[2 * PAGE] == 0,
          "shrinks in place, zeroing what it gives back");
    CHECK(ab__sys_mmap(0, 3 * PAGE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) == (long)(hi - 3 * PAGE),
          "which is free again");
    CHECK(ab__sys_mremap((uintptr_t)m2, 2 * PAGE, 2 * PAGE, 0, 0) == m2, "same size");
    CHECK(ab__sys_mremap((uintptr_t)m2 + 1, PAGE, 2 * PAGE, 0, 0) == -EINVAL, "misaligned");
    CHECK(ab__sys_mremap((uintptr_t)m2, PAGE, 0, 0, 0) == -EINVAL, "to nothing");
    CHECK(ab__sys_mremap((uintptr_t)m2, PAGE, 2 * PAGE, 2 /* MREMAP_FIXED */, 0) == -EINVAL, "MREMAP_FIXED");
    CHECK(ab__sys_mremap((uintptr_t)m2 - PAGE, 2 * PAGE, 4 * PAGE, MREMAP_MAYMOVE, 0) == -EFAULT, "not all mapped");
    CHECK(ab__sys_mremap(lo, PAGE, 2 * PAGE, MREMAP_MAYMOVE, 0) == -EFAULT, "not mapped");
    CHECK(ab__sys_mremap((uintptr_t)m2, 2 * PAGE, 101 * PAGE, MREMAP_MAYMOVE, 0) == -ENOMEM, "larger than the region");
    CHECK(ab__sys_mremap((uintptr_t)m2, 2 * PAGE, SIZE_MAX - 10, MREMAP_MAYMOVE, 0) == -ENOMEM &&
              ab__sys_mremap((uintptr_t)m2, 2 * PAGE, SIZE_MAX & ~(PAGE - 1), MREMAP_MAYMOVE, 0) == -ENOMEM,
          "a size near SIZE_MAX");
    memset((void *)m2, 0x22, 2 * PAGE);
    CHECK(((uint8_t *)m2)[PAGE] == 0x22 && ab__sys_mremap((uintptr_t)m2, 2 * PAGE, 2 * PAGE, 0, 0) == m2,
          "which leaves the mapping whole");

    /* madvise */
    CHECK(ab__sys_madvise((uintptr_t)m2, PAGE, MADV_WILLNEED) == 0 && ((uint8_t *)m2)[0] == 0x22, "advice only");
    CHECK(ab__sys_madvise((uintptr_t)m2, PAGE, MADV_DONTNEED) == 0 && ((uint8_t *)m2)[0] == 0 &&
              ((uint8_t *)m2)[PAGE] == 0x22,
          "DONTNEED zeroes the page");
    CHECK(ab__sys_madvise((uintptr_t)m2 + 1, PAGE, MADV_DONTNEED) == -EINVAL, "madvise misaligned");
    CHECK(ab__sys_madvise((uintptr_t)m2 - PAGE, 2 * PAGE, MADV_DONTNEED) == -ENOMEM &&
              ((uint8_t *)m2)[PAGE] == 0x22,
          "DONTNEED of a range not all mapped");
    CHECK(ab__sys_madvise((uintptr_t)m2, 0, MADV_DONTNEED) == 0, "DONTNEED of nothing");
    CHECK(ab__sys_madvise((uintptr_t)m2, SIZE_MAX - 10, MADV_DONTNEED) != 0 && ((uint8_t *)m2)[PAGE] == 0x22,
          "DONTNEED of SIZE_MAX bytes fails");
    ab__sys_brk(lo + 3 * PAGE + 5);
    memset((void *)lo, 0x33, 3 * PAGE + 5);
    CHECK(ab__sys_madvise(lo + PAGE, PAGE, MADV_DONTNEED) == 0 && ((uint8_t *)lo)[PAGE] == 0 &&
              ((uint8_t *)lo)[2 * PAGE] == 0x33,
          "DONTNEED below the break zeroes the page (as Linux does for the heap)");
    CHECK(ab__sys_madvise(lo + 3 * PAGE, PAGE, MADV_DONTNEED) == 0 && ((uint8_t *)lo)[3 * PAGE] == 0,
          "the page of the break counts");
    CHECK(ab__sys_madvise(lo + 4 * PAGE, PAGE, MADV_DONTNEED) == -ENOMEM, "not the page above");

    CHECK(ab__sys_mprotect((uintptr_t)m2, PAGE, PROT_READ) == 0 && ab__sys_mprotect((uintptr_t)m2, PAGE, PROT_NONE) == 0,
          "mprotect accepts and ignores");
    CHECK(ab__sys_mprotect((uintptr_t)m2, PAGE, PROT_READ | PROT_EXEC) == -EACCES, "but never PROT_EXEC");
    CHECK(ab__sys_mprotect((uintptr_t)m2 + 1, PAGE, PROT_READ) == -EINVAL, "mprotect misaligned");
    model_free();

    /* the region itself */
    uint8_t *raw = mmap(NULL, 20 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ab__pages_init((uintptr_t)raw + 100, 10 * PAGE);
    CHECK(ab__sys_brk(0) == (long)(raw + PAGE), "an unaligned base is rounded up");
    CHECK(ab__sys_mmap(0, PAGE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) == (long)(raw + 9 * PAGE),
          "and the end down");
    CHECK(ab__sys_mmap(0, 10 * PAGE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) == -ENOMEM, "9 pages in all");
    CHECK(ab__sys_mmap(0, 8 * PAGE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) == (long)(raw + PAGE), "8 left");
    ab__pages_init((uintptr_t)raw + 100, 100);
    CHECK(ab__sys_brk(0) == ab__sys_brk((uintptr_t)raw + PAGE + 1) &&
              ab__sys_mmap(0, 1, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) == -ENOMEM,
          "a region smaller than a page is empty");
    munmap(raw, 20 * PAGE);

    /* the largest region: AB_MAX_MEMORY (not touched: only placement) */
    size_t max = (size_t)AB_MAX_MEMORY;
    raw = mmap(NULL, max + PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    ab__pages_init((uintptr_t)raw, max);
    CHECK(ab__sys_mmap(0, PAGE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) == (long)(raw + max - PAGE),
          "AB_MAX_MEMORY: the top page");
    CHECK(ab__sys_mmap(0, max - PAGE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) == (long)raw, "and the rest");
    CHECK(ab__sys_mmap(0, PAGE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) == -ENOMEM, "then nothing");
    /* a free run that starts in one 64-page word and ends in the next, below a full word
     * (which the search skips whole) */
    ab__sys_munmap((uintptr_t)raw + 60 * PAGE, 65 * PAGE);
    CHECK(ab__sys_mmap(0, 66 * PAGE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) == -ENOMEM, "no 66-page run");
    CHECK(ab__sys_mmap(0, 65 * PAGE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) == (long)(raw + 60 * PAGE),
          "a 65-page run across two words");
    ab__pages_init((uintptr_t)raw, max + PAGE);
    CHECK(ab__sys_mmap(0, PAGE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) == -ENOMEM,
          "a region larger than AB_MAX_MEMORY is refused whole");
    munmap(raw, max + PAGE);
}

/* Random operations against the model. */
static void test_pages_model(size_t npages, long steps) {
    model_init(npages);
    int base_flags = MAP_PRIVATE | MAP_ANONYMOUS;
    for (long step = 0; step < steps; step++) {
        int op = (int)(rnd() % 100);
        size_t n = 1 + (rnd() % 4 == 0 ? rnd() % (npages / 2) : rnd() % 6);
        size_t at = rnd() % npages;
        if (op < 30) { /* mmap */
            long want = model_find(n);
            long got = ab__sys_mmap(0, n * PAGE - rnd() % PAGE, PROT_READ | PROT_WRITE, base_flags, -1, 0);
            if (want < 0 ? got != -ENOMEM : got != (long)A((size_t)want * PAGE)) {
                CHECK(0, "step %ld: mmap(%zu pages) = %lx, expected page %ld", step, n, got, want);
                break;
            }
            if (want >= 0) {
                memset(M.mapped + want, 1, n);
                if (!model_check("mmap gives zeroed pages", step))
                    break;
                model_scribble((size_t)want * PAGE, n * PAGE);
            }
        } else if (op < 38) { /* MAP_FIXED or MAP_FIXED_NOREPLACE */
            bool noreplace = rnd() % 2;
            if (at + n > npages)
                n = npages - at;
            long want;
            if (at * PAGE < up(M.brk))
                want = noreplace ? -EEXIST : -ENOMEM;
            else if (noreplace && !model_range_free(at, n))
                want = -EEXIST;
            else
                want = (long)A(at * PAGE);
            long got = ab__sys_mmap(A(at * PAGE), n * PAGE, PROT_READ, base_flags | (noreplace ? MAP_FIXED_NOREPLACE : MAP_FIXED), -1, 0);
            if (got != want) {
                CHECK(0, "step %ld: mmap(fixed at %zu, %zu pages, noreplace %d) = %ld, expected %ld", step, at, n,
                      noreplace, got, want);
                break;
            }
            if (want > 0) {
                model_unmap(at, n);
                memset(M.mapped + at, 1, n);
                model_scribble(at * PAGE, n * PAGE);
            }
        } else if (op < 60) { /* munmap of a random range */
            size_t len = n * PAGE - (rnd() % 2 ? rnd() % PAGE : 0);
            CHECK(ab__sys_munmap(A(at * PAGE), len) == 0, "munmap");
            model_unmap(at, n);
        } else if (op < 75) { /* mremap of a random mapped range */
            size_t first = at;
            while (first < npages && !M.mapped[first])
                first++;
            if (first == npages)
                continue;
            size_t old_n = 1;
            while (first + old_n < npages && M.mapped[first + old_n] && old_n < 1 + rnd() % 8)
                old_n++;
            size_t new_n = 1 + rnd() % (2 * old_n + 4);
            bool maymove = rnd() % 4 != 0;
            long want;
            size_t moved_to = 0;
            if (new_n <= old_n)
                want = (long)A(first * PAGE);
            else if (first + new_n <= npages && model_range_free(first + old_n, new_n - old_n))
                want = (long)A(first * PAGE);
            else if (!maymove)
                want = -ENOMEM;
            else {
                long p = model_find(new_n);
                want = p < 0 ? -ENOMEM : (long)A((size_t)p * PAGE);
                moved_to = p < 0 ? 0 : (size_t)p;
            }
            long got = ab__sys_mremap(A(first * PAGE), old_n * PAGE, new_n * PAGE - rnd() % PAGE,
                                      maymove ? MREMAP_MAYMOVE : 0, 0);
            if (got != want) {
                CHECK(0, "step %ld: mremap(page %zu, %zu -> %zu pages) = %lx, expected %lx", step, first, old_n,
                      new_n, got, want);
                break;
            }
            if (want < 0)
                continue;
            if (new_n <= old_n) {
                model_unmap(first + new_n, old_n - new_n);
            } else if (want == (long)A(first * PAGE)) {
                memset(M.mapped + first + old_n, 1, new_n - old_n);
                model_scribble((first + old_n) * PAGE, (new_n - old_n) * PAGE);
            } else {
                memset(M.mapped + moved_to, 1, new_n);
                memcpy(M.shadow + moved_to * PAGE, M.shadow + first * PAGE, old_n * PAGE);
                model_unmap(first, old_n);
                model_scribble((moved_to + old_n) * PAGE, (new_n - old_n) * PAGE);
            }
        } else if (op < 82) { /* madvise(DONTNEED) */
            if (at + n > npages)
                n = npages - at;
            bool ok = true;
            for (size_t p = at; p < at + n; p++)
                ok &= M.mapped[p] || p * PAGE < up(M.brk);
            long got = ab__sys_madvise(A(at * PAGE), n * PAGE, MADV_DONTNEED);
            if (got != (ok ? 0 : -ENOMEM)) {
                CHECK(0, "step %ld: madvise(page %zu, %zu pages) = %ld", step, at, n, got);
                break;
            }
            if (ok)
                memset(M.shadow + at * PAGE, 0, n * PAGE);
        } else { /* brk */
            size_t target = rnd() % 3 == 0 ? M.brk + rnd() % (3 * PAGE) : (rnd() % npages) * PAGE + rnd() % PAGE;
            if (rnd() % 3 == 0 && M.brk > 0)
                target = M.brk - rnd() % (M.brk < 3 * PAGE ? M.brk : 3 * PAGE);
            if (target > npages * PAGE)
                target = npages * PAGE;
            size_t want = target;
            if (up(target) > up(M.brk) && !model_range_free(up(M.brk) / PAGE, (up(target) - up(M.brk)) / PAGE))
                want = M.brk;
            long got = ab__sys_brk(A(target));
            if (got != (long)A(want)) {
                CHECK(0, "step %ld: brk(%zx) = %lx, expected %zx (old %zx)", step, target, got - (long)A(0), want,
                      M.brk);
                break;
            }
            if (want < M.brk)
                memset(M.shadow + want, 0, up(M.brk) - want);
            size_t old = M.brk;
            M.brk = want;
            if (want > old && !model_check("brk grows over zeroed pages", step))
                break;
            if (want > old)
                model_scribble(old, want - old);
        }
        if (!model_check("after each step", step))
            break;
    }
    checks++;
    model_free();
}

int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    test_utf8();
    test_messages();
    test_hostcall();
    test_pages_basics();
    test_pages_model(100, 40000);
    test_pages_model(130, 20000);
    test_pages_model(20, 20000);
    printf("%ld checks, %ld failures\n", checks, failures);
    return failures != 0;
}
