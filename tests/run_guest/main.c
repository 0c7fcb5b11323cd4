/*
 * A guest with main(), written against the guest SDK's libc (musl), for
 * tests/test_run_e2e.py. argv[1] picks what it does.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

static __thread int tls_value = 41; /* needs a working FS base */
static int runs;                     /* 1 in every run: each starts afresh */

static int is(const char *a, const char *b) { return strcmp(a, b) == 0; }

int main(int argc, char **argv) {
    runs++;
    const char *what = argc > 1 ? argv[1] : "";
    if (is(what, "echo")) {
        for (int i = 2; i < argc; i++)
            printf("%s%s", argv[i], i + 1 < argc ? " " : "\n");
        return 0;
    }
    if (is(what, "argv0")) {
        fputs(argv[0], stdout);
        return 0;
    }
    if (is(what, "getenv")) {
        const char *v = getenv(argv[2]);
        printf("%s\n", v ? v : "(unset)");
        return 0;
    }
    if (is(what, "cat")) {
        int c;
        while ((c = getchar()) != EOF)
            putchar(c);
        return 0;
    }
    if (is(what, "exit"))
        exit(atoi(argv[2]));
    if (is(what, "return"))
        return atoi(argv[2]);
    if (is(what, "abort"))
        abort();
    if (is(what, "stderr")) {
        fprintf(stderr, "oops\n");
        puts("out");
        return 3;
    }
    if (is(what, "runs"))
        return runs;
    if (is(what, "tls"))
        return ++tls_value; /* 42 */
    if (is(what, "clock")) {
        struct timespec t;
        if (clock_gettime(CLOCK_MONOTONIC, &t) != 0)
            return 1;
        printf("%lld %ld\n", (long long)t.tv_sec, t.tv_nsec);
        return 0;
    }
    if (is(what, "random")) {
        unsigned char b[16];
        if (getrandom(b, sizeof b, 0) != (ssize_t)sizeof b)
            return 1;
        for (size_t i = 0; i < sizeof b; i++)
            printf("%02x", b[i]);
        putchar('\n');
        return 0;
    }
    if (is(what, "sleep")) {
        struct timespec t = {atoi(argv[2]), 0};
        return nanosleep(&t, NULL) == 0 ? 0 : 1;
    }
    if (is(what, "file")) {
        FILE *f = fopen(argv[2], "rb");
        if (!f) {
            perror(argv[2]);
            return 1;
        }
        char buf[4096];
        size_t n;
        while ((n = fread(buf, 1, sizeof buf, f)) > 0)
            fwrite(buf, 1, n, stdout);
        fclose(f);
        return 0;
    }
    if (is(what, "spin"))
        for (;;)
            __asm__ volatile("");
    if (is(what, "segv"))
        return *(volatile int *)0;
    if (is(what, "flood")) {
        for (long i = atol(argv[2]); i > 0; i--)
            putchar('x');
        return 0;
    }
    fprintf(stderr, "unknown behaviour %s\n", what);
    return 2;
}
