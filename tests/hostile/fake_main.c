/*
 * A stand-in for a guest with main(), for tests/test_run.py: it speaks the
 * run protocol of ABI version 2 (READY with AB_READY_HAS_MAIN, AB_REQ_RUN,
 * system requests, an AB_STATUS_EXIT result) with its own few lines of
 * freestanding C instead of the SDK runtime, so that the host side of
 * Sandbox.run() can be tested before the real runtime exists. It is not
 * built with the SDK (tests/hostile/__init__.py compiles it directly).
 *
 * argv[1] picks the behaviour ("echo", "env", "cat", "exit N", ...).
 */
#include <stddef.h>
#include <stdint.h>

#include "aionub/abi.h"

__asm__(".section .text.ab_start, \"ax\"\n"
        ".globl _start\n"
        "_start:\n"
        "    and $-16, %rsp\n"
        "    call start_c\n"
        "1:  hlt\n"
        "    jmp 1b\n"
        ".text\n");

void *memcpy(void *d, const void *s, size_t n) {
    uint8_t *dp = d;
    const uint8_t *sp = s;
    while (n--)
        *dp++ = *sp++;
    return d;
}

void *memset(void *d, int c, size_t n) {
    uint8_t *dp = d;
    while (n--)
        *dp++ = (uint8_t)c;
    return d;
}

static const struct ab_boot_info *bi;
static uint8_t *in, *out;

static void port_out(uint16_t port, uint32_t n) {
    __asm__ volatile("outl %0, %w1" : : "a"(n), "d"(port) : "memory");
}

static size_t slen(const char *s) {
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

static int streq(const char *a, const char *b) {
    while (*a && *a == *b)
        a++, b++;
    return *a == *b;
}

static int64_t sys(uint32_t len) {
    port_out(AB_PORT_SYS, len);
    int64_t r;
    memcpy(&r, out, sizeof r);
    return r;
}

static int64_t sys_write(uint32_t fd, const void *data, uint32_t n) {
    uint32_t hdr[3] = {AB_SYS_WRITE, fd, n};
    memcpy(out, hdr, sizeof hdr);
    memcpy(out + sizeof hdr, data, n);
    return sys(sizeof hdr + n);
}

static void puts_fd(uint32_t fd, const char *s) { sys_write(fd, s, (uint32_t)slen(s)); }

static _Noreturn void exit_with(int32_t code) {
    out[0] = AB_STATUS_EXIT;
    memcpy(out + 1, &code, sizeof code);
    port_out(AB_PORT_RESULT, 5);
    for (;;) /* the host never resumes a finished run; the next request restarts here */
        ;
}

static int64_t parse_int(const char *s) {
    int neg = *s == '-';
    s += neg;
    int64_t v = 0;
    while (*s >= '0' && *s <= '9')
        v = v * 10 + (*s++ - '0');
    return neg ? -v : v;
}

#define MAX_STRINGS 64
static char strbuf[65536];

/* Copy `count` wire strings from the request into strbuf. */
static size_t get_strings(size_t *pos, char **list, size_t *used) {
    uint32_t count;
    memcpy(&count, in + *pos, 4);
    *pos += 4;
    for (uint32_t i = 0; i < count; i++) {
        uint32_t n;
        memcpy(&n, in + *pos, 4);
        *pos += 4;
        if (i < MAX_STRINGS) {
            list[i] = strbuf + *used;
            memcpy(strbuf + *used, in + *pos, n + 1);
            *used += n + 1;
        }
        *pos += n + 1;
    }
    list[count < MAX_STRINGS ? count : MAX_STRINGS] = 0;
    return count < MAX_STRINGS ? count : MAX_STRINGS;
}

static int runs; /* how many runs this guest state has seen */

static _Noreturn void run(void) {
    char *argv[MAX_STRINGS + 1], *envp[MAX_STRINGS + 1];
    size_t pos = 1, used = 0;
    size_t argc = get_strings(&pos, argv, &used);
    get_strings(&pos, envp, &used);
    runs++;
    const char *what = argc > 1 ? argv[1] : "";
    if (streq(what, "echo")) {
        for (size_t i = 2; i < argc; i++) {
            puts_fd(1, argv[i]);
            puts_fd(1, i + 1 < argc ? " " : "\n");
        }
        exit_with(0);
    } else if (streq(what, "argv0")) {
        puts_fd(1, argv[0]);
        exit_with(0);
    } else if (streq(what, "env")) {
        for (char **e = envp; *e; e++) {
            puts_fd(1, *e);
            puts_fd(1, "\n");
        }
        exit_with(0);
    } else if (streq(what, "cat")) {
        for (;;) {
            uint32_t r[2] = {AB_SYS_READ, argc > 2 ? (uint32_t)parse_int(argv[2]) : 1000};
            memcpy(out, r, sizeof r);
            int64_t n = sys(sizeof r);
            if (n <= 0)
                exit_with(n < 0 ? 1 : 0);
            static uint8_t chunk[65536];
            memcpy(chunk, out + 8, (size_t)n);
            sys_write(1, chunk, (uint32_t)n);
        }
    } else if (streq(what, "exit")) {
        exit_with((int32_t)parse_int(argv[2]));
    } else if (streq(what, "stderr")) {
        puts_fd(2, argv[2]);
        puts_fd(1, "out");
        exit_with(3);
    } else if (streq(what, "flood")) {
        static char xs[4096];
        memset(xs, 'x', sizeof xs);
        for (int64_t left = parse_int(argv[2]); left > 0; left -= 4096)
            sys_write(argc > 3 ? 2 : 1, xs, left < 4096 ? (uint32_t)left : 4096);
        exit_with(0);
    } else if (streq(what, "runs")) {
        exit_with(runs); /* 1 in a fresh process */
    } else if (streq(what, "spin")) {
        for (;;)
            __asm__ volatile("");
    } else if (streq(what, "sleep")) {
        uint32_t op = AB_SYS_SLEEP;
        uint64_t ns = 10000000000ull;
        memcpy(out, &op, 4);
        memcpy(out + 4, &ns, 8);
        sys(12);
        exit_with(0);
    } else if (streq(what, "fault")) {
        exit_with(*(volatile int32_t *)0);
    } else if (streq(what, "bad_status")) {
        out[0] = AB_STATUS_OK;
        out[1] = AB_TAG_INT;
        port_out(AB_PORT_RESULT, 10);
    } else if (streq(what, "trailing")) {
        int32_t zero = 0;
        out[0] = AB_STATUS_EXIT;
        memcpy(out + 1, &zero, 4);
        port_out(AB_PORT_RESULT, 6);
    } else if (streq(what, "short")) {
        out[0] = AB_STATUS_EXIT;
        port_out(AB_PORT_RESULT, 3);
    } else if (streq(what, "refuse")) {
        out[0] = AB_STATUS_BAD_ARGS;
        uint32_t n = 4;
        memcpy(out + 1, &n, 4);
        memcpy(out + 5, "nope", 5);
        port_out(AB_PORT_RESULT, 10);
    }
    puts_fd(2, "fake_main: unknown behaviour\n");
    exit_with(2);
}

void start_c(const struct ab_boot_info *boot) {
    bi = boot;
    in = (uint8_t *)(uintptr_t)bi->input_addr;
    out = (uint8_t *)(uintptr_t)bi->output_addr;
    uint32_t ready[2] = {0, AB_READY_HAS_MAIN}; /* no functions; has main */
    memcpy(out, ready, sizeof ready);
    port_out(AB_PORT_READY, sizeof ready);
    for (;;) {
        if (in[0] == AB_REQ_RUN)
            run();
        out[0] = AB_STATUS_BAD_ARGS; /* calls: there are no functions */
        uint32_t n = 0;
        memcpy(out + 1, &n, 4);
        out[5] = 0;
        port_out(AB_PORT_RESULT, 6);
    }
}
