/*
 * The guest as a process: musl's start-up, runs of main(), and the ways a
 * program ends.
 *
 * Start-up does what the kernel and crt1 do for a static program: it lays
 * out an (empty) environment and an auxiliary vector (the program headers,
 * so that musl finds the TLS segment; 16 random bytes from the host for
 * the stack-protector canary; the page size; ids of 0), and calls musl's
 * __init_libc (thread pointer, TLS, canary) and __libc_start_init
 * (constructors). Nothing else in the runtime may use TLS or the stack
 * protector before that, hence no_stack_protector on this path.
 *
 * A run (AB_REQ_RUN) calls main(argc, argv, envp) with copies of the
 * host's strings; main's return goes through exit(), which runs atexit
 * handlers and destructors and flushes stdio, then exit_group, which
 * comes back here (ab__exit) by longjmp with the status. A signal whose
 * default action ends the program comes back the same way, without the
 * flush, as a killed process loses its buffers.
 *
 * Outside a run (a call, or start-up), exit() or a fatal signal ends the
 * guest with an abort record: the function had no business ending the
 * process, and its state is no longer one a call can continue from.
 */
#include "internal.h"

#include <elf.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>

/* musl's start-up (src/env/__libc_start_main.c) and globals. */
void __init_libc(char **envp, char *pn);
void __libc_start_init(void);
extern char *__progname, *__progname_full;
extern char **__environ;

/* The program's main(), if it has one: weak, so a guest without it links. */
extern int ab__user_main(int, char **, char **) __asm__("main") __attribute__((weak));

/* The ELF header, which guest.ld loads with the program headers. */
extern const Elf64_Ehdr __ehdr_start;

const char *ab__current_call = "";

static struct {
    bool active;
    jmp_buf done;
    int code, sig;
} run;

bool ab__has_main(void) { return ab__user_main != NULL; }

__attribute__((no_stack_protector)) void ab__process_init(const struct ab_boot_info *bi) {
    static uint8_t random16[16];
    static const uint8_t zero[16];
    memcpy(random16, bi->random, sizeof random16);
    if (!memcmp(random16, zero, sizeof zero)) { /* the host could not provide them */
        ab__writer w = ab__sys_begin(AB_SYS_RANDOM);
        ab__put_u32(&w, sizeof random16);
        if (ab__sys_call(&w) != (int64_t)sizeof random16)
            ab_abort(-1, "the host did not provide random bytes at start-up");
        memcpy(random16, ab__sys_data(), sizeof random16);
    }

    /* envp (empty), then the auxiliary vector, as the kernel lays them out */
    static size_t vec[] = {
        0,          /* envp[0] = NULL */
        AT_PHDR,    0, AT_PHENT, sizeof(Elf64_Phdr), AT_PHNUM, 0,
        AT_PAGESZ,  4096,
        AT_RANDOM,  0,
        AT_UID,     0, AT_EUID, 0, AT_GID, 0, AT_EGID, 0, AT_SECURE, 0,
        AT_NULL,    0,
    };
    vec[2] = (size_t)&__ehdr_start + __ehdr_start.e_phoff;
    vec[6] = __ehdr_start.e_phnum;
    vec[10] = (size_t)random16;
    static char name[] = "guest";
    __init_libc((char **)vec, name);
    __libc_start_init();
}

void ab__flush_stdio(void) { fflush(NULL); }

_Noreturn void ab__exit(int code, int sig) {
    if (run.active) {
        run.active = false;
        run.code = code;
        run.sig = sig;
        longjmp(run.done, 1);
    }
    const char *where = *ab__current_call ? ab__current_call : "start-up";
    const char *paren = *ab__current_call ? "()" : "";
    if (sig == SIGABRT)
        ab_abort(-1, "abort() called during %s%s", where, paren);
    if (sig)
        ab_abort(-1, "ended by signal %d (%s) during %s%s", sig, strsignal(sig), where, paren);
    ab_abort(code, "exit(%d) called during %s%s", code, where, paren);
}

/* count:u32, count x string: copies onto the heap as a NULL-terminated
 * array. Returns NULL (with *err set) for a malformed list. */
static char **take_strings(ab__reader *r, uint32_t *count, const char **err) {
    uint32_t n = ab__get_u32(r);
    if (r->bad || n > (r->size - r->pos) / 5) {
        *err = "malformed run request: bad string count";
        return NULL;
    }
    char **v = calloc((size_t)n + 1, sizeof *v);
    if (!v) {
        *err = "out of memory for the run's arguments";
        return NULL;
    }
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *p;
        uint32_t len;
        if (!ab__get_lstr(r, &p, &len) || memchr(p, 0, len)) {
            *err = "malformed run request: bad string";
            return NULL; /* the heap is discarded with the run's process */
        }
        v[i] = malloc((size_t)len + 1);
        if (!v[i]) {
            *err = "out of memory for the run's arguments";
            return NULL;
        }
        memcpy(v[i], p, (size_t)len + 1);
    }
    *count = n;
    return v;
}

static size_t bad_run(const char *msg) {
    ab__out[0] = AB_STATUS_BAD_ARGS;
    return ab__put_messagef(1, "%s", msg);
}

size_t ab__run(ab__reader *r) {
    if (!ab__has_main())
        return bad_run("the guest has no main() to run");
    const char *err = NULL;
    uint32_t argc = 0, envc = 0;
    char **argv = take_strings(r, &argc, &err);
    char **envp = argv ? take_strings(r, &envc, &err) : NULL;
    if (!envp)
        return bad_run(err);
    if (argc == 0)
        return bad_run("malformed run request: argv is empty");

    __environ = envp;
    __progname_full = __progname = argv[0];
    for (char *c = argv[0]; *c; c++)
        if (*c == '/')
            __progname = c + 1;
    ab__current_call = "main";
    if (setjmp(run.done) == 0) {
        run.active = true;
        exit(ab__user_main((int)argc, argv, envp));
    }
    ab__current_call = "";
    int32_t code = run.sig ? -run.sig : run.code & 0xff;
    ab__writer w = {ab__out, ab__out_size, 0, false};
    ab__put_u8(&w, AB_STATUS_EXIT);
    ab__put_u32(&w, (uint32_t)code);
    return w.len;
}
