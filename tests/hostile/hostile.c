/*
 * A hostile guest for tests/test_hostile.py and tests/test_limits.py.
 *
 * Every exported function misbehaves in one way (or, for the limit tests,
 * uses a resource up to a bound the test chooses). Functions that break the
 * wire protocol bypass the SDK's encoder: they write the bytes of a record
 * into the output buffer themselves, taking its address from the boot info,
 * and exit with their own `out` instruction.
 */
#include <aionub_guest.h>

/* An empty asm that claims to change x: the optimiser can no longer see
 * the value, so it cannot fold or drop the code around it. */
#define OPAQUE(x) __asm__ volatile("" : "+r"(x))

/* The runtime's own state (native/guest/runtime/runtime.c): a hostile guest
 * can reach it like any other memory of its own. */
extern uint8_t *ab__in;
extern size_t ab__in_size;
extern uint8_t *ab__out;
extern size_t ab__out_size;

static const struct ab_boot_info *boot(void) {
    return (const struct ab_boot_info *)(uintptr_t)AB_BOOT_INFO_ADDR;
}

static bool is(const char *a, const char *b) { return strcmp(a, b) == 0; }

/* ---- addresses -------------------------------------------------------------- */

static void code_marker(void) {}
static const uint8_t rodata_ret[16] = {0xc3}; /* `ret`, in a read-only page */
static uint8_t data_ret[16] = {0xc3};         /* `ret`, in a writable page  */
static uint8_t bss_buf[64];

/* Where the image's parts are, for the tests (the host knows the rest of the
 * layout itself). */
static int64_t addr_of(const char *what) {
    if (is(what, "code"))
        return (int64_t)(uintptr_t)&code_marker;
    if (is(what, "rodata"))
        return (int64_t)(uintptr_t)rodata_ret;
    if (is(what, "data"))
        return (int64_t)(uintptr_t)data_ret;
    if (is(what, "bss"))
        return (int64_t)(uintptr_t)bss_buf;
    if (is(what, "exports")) {
        extern const struct ab_export __ab_exports_start[];
        return (int64_t)(uintptr_t)__ab_exports_start;
    }
    ab_abort(2, "addr_of: unknown %s", what);
}
AB_EXPORT(addr_of, AB_INT, AB_STR);

/* ---- touching memory -------------------------------------------------------- */

static int64_t read_at(int64_t addr) {
    int64_t v;
    __asm__ volatile("movq (%1), %0" : "=r"(v) : "r"(addr) : "memory");
    return v;
}
AB_EXPORT(read_at, AB_INT, AB_INT);

static void write_at(int64_t addr) {
    __asm__ volatile("movb $0xc3, (%0)" : : "r"(addr) : "memory");
}
AB_EXPORT(write_at, AB_VOID, AB_INT);

/* Call whatever is at addr. */
static int64_t exec_at(int64_t addr) {
    void (*fn)(void) = (void (*)(void))(uintptr_t)addr;
    OPAQUE(fn);
    fn();
    return addr;
}
AB_EXPORT(exec_at, AB_INT, AB_INT);

/* Put a `ret` instruction into writable memory of the given kind and call
 * it: were that memory executable, the call would simply return. */
static int64_t exec_written(const char *where) {
    uint8_t stack_buf[64];
    uint8_t *p;
    if (is(where, "stack"))
        p = stack_buf;
    else if (is(where, "data"))
        p = data_ret;
    else if (is(where, "bss"))
        p = bss_buf;
    else if (is(where, "heap"))
        p = malloc(64);
    else if (is(where, "input"))
        p = (uint8_t *)(uintptr_t)boot()->input_addr + boot()->input_size - 64;
    else if (is(where, "output"))
        p = (uint8_t *)(uintptr_t)boot()->output_addr + boot()->output_size - 64;
    else if (is(where, "rodata"))
        p = (uint8_t *)rodata_ret; /* already holds a `ret` */
    else
        ab_abort(2, "exec_written: unknown %s", where);
    if (p != rodata_ret)
        *(volatile uint8_t *)p = 0xc3;
    return exec_at((int64_t)(uintptr_t)p);
}
AB_EXPORT(exec_written, AB_INT, AB_STR);

/* ---- instructions that need CPL0 or a port the guest may not use ------------ */

static const uint8_t descriptor_zeros[16];

static int64_t insn(const char *kind) {
    uint64_t rax = 0;
    if (is(kind, "hlt"))
        __asm__ volatile("hlt");
    else if (is(kind, "cli"))
        __asm__ volatile("cli");
    else if (is(kind, "sti"))
        __asm__ volatile("sti");
    else if (is(kind, "syscall"))
        __asm__ volatile("syscall" : "+a"(rax) : : "rcx", "r11", "memory");
    else if (is(kind, "syscall_bad_rsp")) /* no stack to switch from, either */
        __asm__ volatile("movabs $0x8000000000000000, %%rsp\n\tsyscall" : "+a"(rax) : : "rcx", "r11", "memory");
    else if (is(kind, "sysenter"))
        __asm__ volatile("sysenter" : : : "rcx", "rdx", "memory");
    else if (is(kind, "sysret"))
        __asm__ volatile("sysretq" : : : "memory");
    else if (is(kind, "int3"))
        __asm__ volatile("int3");
    else if (is(kind, "int1"))
        __asm__ volatile(".byte 0xf1"); /* icebp: #DB without a DPL check */
    else if (is(kind, "int14"))
        __asm__ volatile("int $14");
    else if (is(kind, "int32"))
        __asm__ volatile("int $32");
    else if (is(kind, "int128"))
        __asm__ volatile("int $0x80");
    else if (is(kind, "into"))
        __asm__ volatile(".byte 0xce"); /* invalid in 64-bit mode */
    else if (is(kind, "ud2"))
        __asm__ volatile("ud2");
    else if (is(kind, "rdmsr"))
        __asm__ volatile("rdmsr" : "=a"(rax) : "c"(0xc0000080u) : "rdx");
    else if (is(kind, "wrmsr"))
        __asm__ volatile("wrmsr" : : "c"(0xc0000080u), "a"(0), "d"(0));
    else if (is(kind, "rdpmc"))
        __asm__ volatile("rdpmc" : "=a"(rax) : "c"(0) : "rdx");
    else if (is(kind, "xsetbv"))
        __asm__ volatile("xsetbv" : : "c"(0), "a"(1), "d"(0));
    else if (is(kind, "lgdt"))
        __asm__ volatile("lgdt %0" : : "m"(descriptor_zeros));
    else if (is(kind, "lidt"))
        __asm__ volatile("lidt %0" : : "m"(descriptor_zeros));
    else if (is(kind, "ltr"))
        __asm__ volatile("ltr %w0" : : "r"(0x28));
    else if (is(kind, "read_cr0"))
        __asm__ volatile("mov %%cr0, %0" : "=r"(rax));
    else if (is(kind, "write_cr3"))
        __asm__ volatile("mov %0, %%cr3" : : "r"((uint64_t)0));
    else if (is(kind, "write_dr7"))
        __asm__ volatile("mov %0, %%dr7" : : "r"((uint64_t)0x3ff));
    else if (is(kind, "invlpg"))
        __asm__ volatile("invlpg (%0)" : : "r"((uint64_t)0x100000) : "memory");
    else if (is(kind, "wbinvd"))
        __asm__ volatile("wbinvd");
    else if (is(kind, "clts"))
        __asm__ volatile("clts");
    else if (is(kind, "swapgs"))
        __asm__ volatile("swapgs");
    else if (is(kind, "kernel_ds")) /* load the DPL0 data selector */
        __asm__ volatile("mov %w0, %%ds" : : "r"(0x10));
    else if (is(kind, "kernel_ss"))
        __asm__ volatile("mov %w0, %%ss" : : "r"(0x10));
    else if (is(kind, "null_ss"))
        __asm__ volatile("mov %w0, %%ss" : : "r"(0));
    else if (is(kind, "far_call_kernel")) {
        /* lcall through a far pointer to the DPL0 code segment */
        static const struct __attribute__((packed)) {
            uint64_t offset;
            uint16_t selector;
        } target = {0x89000, 0x08};
        __asm__ volatile("rex64 lcall *%0" : : "m"(target) : "memory");
    } else if (is(kind, "iret_to_kernel")) {
        /* an interrupt frame that returns to CPL0 at the exception stubs */
        __asm__ volatile("mov %%rsp, %%rax\n\t"
                         "pushq $0x10\n\t" /* ss  */
                         "pushq %%rax\n\t" /* rsp */
                         "pushq $0x2\n\t"  /* rflags */
                         "pushq $0x08\n\t" /* cs: DPL0 code */
                         "pushq $0x89000\n\t"
                         "iretq"
                         :
                         :
                         : "rax", "memory");
    } else if (is(kind, "popf_iopl")) {
        /* try to raise IOPL to 3 and set IF (CPL3 cannot: silently
         * ignored), then use port I/O as if it had worked */
        __asm__ volatile("pushq $0x3202\n\tpopfq\n\toutb %%al, $0x80" : : "a"(0) : "memory", "cc");
    } else if (is(kind, "trap_flag")) {
        /* single-stepping is allowed at CPL3; the #DB after the next
         * instruction is a fault like any other */
        __asm__ volatile("pushfq\n\torq $0x100, (%%rsp)\n\tpopfq\n\tnop" : : : "memory", "cc");
    } else if (is(kind, "lmsw")) {
        __asm__ volatile("lmsw %w0" : : "r"(1));
    } else if (is(kind, "monitor")) {
        __asm__ volatile("monitor" : : "a"(AB_BOOT_INFO_ADDR), "c"(0), "d"(0));
    } else if (is(kind, "xgetbv")) {
        uint32_t lo, hi;
        __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
        rax = lo;
    } else if (is(kind, "rdtscp")) { /* returns TSC_AUX (ecx) */
        uint32_t lo, hi, aux;
        __asm__ volatile("rdtscp" : "=a"(lo), "=d"(hi), "=c"(aux));
        rax = aux;
    } else if (is(kind, "vmcall")) {
        rax = 0;
        __asm__ volatile("vmcall" : "+a"(rax) : : "memory");
    } else if (is(kind, "vmmcall")) {
        rax = 0;
        __asm__ volatile("vmmcall" : "+a"(rax) : : "memory");
    } else if (is(kind, "null_segments")) {
        /* null data segments are legal at CPL3; exception delivery must not
         * depend on them */
        __asm__ volatile("mov %w0, %%ds\n\tmov %w0, %%es\n\tmov %w0, %%fs\n\tmov %w0, %%gs\n\tud2"
                         :
                         : "r"(0));
    } else
        ab_abort(2, "insn: unknown %s", kind);
    return (int64_t)rax;
}
AB_EXPORT(insn, AB_INT, AB_STR);

/* Port I/O: in/out of each width to any port, and string output. */
static int64_t port_io(const char *kind, int64_t port) {
    uint16_t p = (uint16_t)port;
    uint32_t v = 0;
    if (is(kind, "outb"))
        __asm__ volatile("outb %b0, %w1" : : "a"(v), "d"(p) : "memory");
    else if (is(kind, "outw"))
        __asm__ volatile("outw %w0, %w1" : : "a"(v), "d"(p) : "memory");
    else if (is(kind, "outl"))
        __asm__ volatile("outl %0, %w1" : : "a"(v), "d"(p) : "memory");
    else if (is(kind, "inb"))
        __asm__ volatile("inb %w1, %b0" : "+a"(v) : "d"(p) : "memory");
    else if (is(kind, "inl"))
        __asm__ volatile("inl %w1, %0" : "=a"(v) : "d"(p) : "memory");
    else if (is(kind, "rep_outsl")) {
        static const uint32_t words[2] = {0xffffffffu, 0xffffffffu};
        const void *src = words;
        uint64_t count = 2;
        __asm__ volatile("rep outsl" : "+S"(src), "+c"(count) : "d"(p) : "memory");
    } else if (is(kind, "rep_outsl_result")) {
        /* a well-formed result (int 7), announced by a string out of two
         * elements, each a valid length */
        uint8_t *o = (uint8_t *)(uintptr_t)boot()->output_addr;
        int64_t seven = 7;
        o[0] = AB_STATUS_OK;
        o[1] = AB_TAG_INT;
        memcpy(o + 2, &seven, 8);
        static const uint32_t lengths[2] = {10, 10};
        const void *src = lengths;
        uint64_t count = 2;
        __asm__ volatile("rep outsl" : "+S"(src), "+c"(count) : "d"(p) : "memory");
    } else
        ab_abort(2, "port_io: unknown %s", kind);
    return v;
}
AB_EXPORT(port_io, AB_INT, AB_STR, AB_INT);

/* ---- the stack -------------------------------------------------------------- */

/* Load rsp with an address and push. The CPU delivers the exception on the
 * CPL0 stack from the TSS, whatever the guest did to its own rsp. */
static void stack_at(int64_t addr) {
    __asm__ volatile("mov %0, %%rsp\n\tpushq $0" : : "r"(addr) : "memory");
}
AB_EXPORT(stack_at, AB_VOID, AB_INT);

/* Fill the stack from the current rsp to its top with `fill` (every frame
 * up to the entry point: return addresses, saved registers, the runtime's
 * locals), then return through the garbage. */
static void smash_stack(int64_t fill) {
    uint64_t top = boot()->stack_addr + boot()->stack_size;
    __asm__ volatile("mov %%rsp, %%rdi\n\t"
                     "mov %0, %%rcx\n\t"
                     "sub %%rsp, %%rcx\n\t"
                     "rep stosb\n\t"
                     "ret"
                     :
                     : "r"(top), "a"(fill)
                     : "rdi", "rcx", "memory");
}
AB_EXPORT(smash_stack, AB_VOID, AB_INT);

/* Recursion `depth` levels deep with a 256-byte frame each; returns the
 * depth reached. */
__attribute__((noinline)) static int64_t recurse_(int64_t depth) {
    volatile uint8_t frame[256];
    frame[0] = (uint8_t)depth;
    if (depth <= 0)
        return 0;
    int64_t r = recurse_(depth - 1);
    OPAQUE(r);
    return r + 1 + (frame[0] & 0);
}
static int64_t recurse(int64_t depth) { return recurse_(depth); }
AB_EXPORT(recurse, AB_INT, AB_INT);

/* ---- the runtime's structures ------------------------------------------------ */

/* Damage the runtime's state. Some damage shows in this call, some only in
 * the next one (the dispatcher has read its pointers already). */
static int64_t corrupt(const char *what) {
    if (is(what, "in_null")) {
        ab__in = NULL; /* the next call's request is read from address 0 */
    } else if (is(what, "out_tss")) {
        ab__out = (uint8_t *)(uintptr_t)AB_TSS_ADDR; /* this result goes to the TSS */
    } else if (is(what, "out_size")) {
        /* the runtime now believes the output buffer is 1 GiB: the next
         * large result is written past the real buffer (into the guest's own
         * heap) and its record claims more bytes than the buffer has */
        ab__out_size = (size_t)1 << 30;
    } else if (is(what, "heap")) {
        /* scribble over an allocation's in-band header (and its group's
         * header before it), then free it */
        uint8_t *p = malloc(100);
        OPAQUE(p);
        memset(p - 16, 0x5a, 16);
        OPAQUE(p);
        free(p);
    } else if (is(what, "exports")) {
        extern const struct ab_export __ab_exports_start[];
        *(volatile uint64_t *)(uintptr_t)__ab_exports_start = 0; /* read-only page */
    } else if (is(what, "boot_info")) {
        *(volatile uint64_t *)(uintptr_t)AB_BOOT_INFO_ADDR = 0; /* read-only page */
    } else {
        ab_abort(2, "corrupt: unknown %s", what);
    }
    return 1;
}
AB_EXPORT(corrupt, AB_INT, AB_STR);


/* ---- forged records -------------------------------------------------------- */

typedef struct {
    uint8_t *p;
    size_t n;
} rec;

static rec rec_start(void) { return (rec){(uint8_t *)(uintptr_t)boot()->output_addr, 0}; }
static void put(rec *r, const void *d, size_t n) {
    memcpy(r->p + r->n, d, n);
    r->n += n;
}
static void put8(rec *r, uint8_t v) { put(r, &v, 1); }
static void put32(rec *r, uint32_t v) { put(r, &v, 4); }
static void put64(rec *r, uint64_t v) { put(r, &v, 8); }
static void put_str(rec *r, const char *s, size_t n) {
    put32(r, (uint32_t)n);
    put(r, s, n);
    put8(r, 0);
}
static void out(uint16_t port, uint32_t n) {
    __asm__ volatile("outl %0, %w1" : : "a"(n), "d"(port) : "memory");
}

/* Declared to return an int; each kind writes something else and exits. */
static int64_t forge(const char *kind) {
    rec r = rec_start();
    uint32_t out_size = (uint32_t)boot()->output_size;
    uint16_t port = AB_PORT_RESULT;
    uint32_t n;
    if (is(kind, "bad_tag")) { /* OK, then a tag no value has */
        put8(&r, AB_STATUS_OK);
        put8(&r, 9);
        put64(&r, 42);
    } else if (is(kind, "bad_status")) {
        put8(&r, 7);
        put8(&r, AB_TAG_INT);
        put64(&r, 42);
    } else if (is(kind, "wrong_type")) { /* a str from a function declared int */
        put8(&r, AB_STATUS_OK);
        put8(&r, AB_TAG_STR);
        put_str(&r, "not an int", 10);
    } else if (is(kind, "none_for_int")) { /* returns, but without its value */
        put8(&r, AB_STATUS_OK);
        put8(&r, AB_TAG_NONE);
    } else if (is(kind, "empty")) { /* a RESULT exit with no record at all */
    } else if (is(kind, "truncated_int")) {
        put8(&r, AB_STATUS_OK);
        put8(&r, AB_TAG_INT);
        put32(&r, 42); /* 4 of the 8 bytes */
    } else if (is(kind, "trailing")) {
        put8(&r, AB_STATUS_OK);
        put8(&r, AB_TAG_INT);
        put64(&r, 42);
        put(&r, "junk", 4);
    } else if (is(kind, "bad_bool")) {
        put8(&r, AB_STATUS_OK);
        put8(&r, AB_TAG_BOOL);
        put8(&r, 2);
    } else if (is(kind, "str_len_lie")) { /* claims 1000 bytes, has 5 */
        put8(&r, AB_STATUS_OK);
        put8(&r, AB_TAG_STR);
        put32(&r, 1000);
        put(&r, "hello", 6);
    } else if (is(kind, "str_len_huge")) {
        put8(&r, AB_STATUS_OK);
        put8(&r, AB_TAG_BYTES);
        put32(&r, 0xffffffffu);
        put(&r, "abc", 4);
    } else if (is(kind, "bad_utf8")) {
        put8(&r, AB_STATUS_OK);
        put8(&r, AB_TAG_STR);
        put_str(&r, "\xff\xfe\xc0\x80", 4);
    } else if (is(kind, "surrogate")) { /* UTF-8 of U+D800, which UTF-8 excludes */
        put8(&r, AB_STATUS_OK);
        put8(&r, AB_TAG_STR);
        put_str(&r, "\xed\xa0\x80", 3);
    } else if (is(kind, "no_nul")) {
        put8(&r, AB_STATUS_OK);
        put8(&r, AB_TAG_BYTES);
        put32(&r, 3);
        put(&r, "abcX", 4);
    } else if (is(kind, "len_past_buffer")) { /* eax larger than the buffer */
        put8(&r, AB_STATUS_OK);
        put8(&r, AB_TAG_NONE);
        out(port, out_size + 1);
        return 0;
    } else if (is(kind, "len_huge")) {
        out(port, 0xffffffffu);
        return 0;
    } else if (is(kind, "not_found_lie")) { /* a clean error for a function that exists */
        put8(&r, AB_STATUS_NOT_FOUND);
        put_str(&r, "forge", 5);
    } else if (is(kind, "not_found_bad_utf8")) {
        put8(&r, AB_STATUS_NOT_FOUND);
        put_str(&r, "\xff", 1);
    } else if (is(kind, "ready_in_call")) { /* READY again, in the middle of a call */
        put32(&r, 0);
        port = AB_PORT_READY;
    } else if (is(kind, "log_bad_level")) {
        put8(&r, 99);
        put_str(&r, "hi", 2);
        port = AB_PORT_LOG;
    } else if (is(kind, "log_bad_utf8")) {
        put8(&r, 20);
        put_str(&r, "\x80", 1);
        port = AB_PORT_LOG;
    } else if (is(kind, "log_len_lie")) {
        put8(&r, 20);
        put32(&r, 60000);
        put(&r, "hi", 3);
        port = AB_PORT_LOG;
    } else if (is(kind, "log_len_past_buffer")) {
        put8(&r, 20);
        put_str(&r, "hi", 2);
        out(AB_PORT_LOG, out_size + 4096);
        return 0;
    } else if (is(kind, "abort_truncated")) {
        put32(&r, 7); /* half of the i64 code */
        port = AB_PORT_ABORT;
    } else if (is(kind, "abort_bad_utf8")) {
        put64(&r, 7);
        put_str(&r, "\xc3\x28", 2);
        port = AB_PORT_ABORT;
    } else if (is(kind, "abort_empty")) {
        port = AB_PORT_ABORT;
    } else if (is(kind, "hostcall_bad_name")) {
        put_str(&r, "\xff\xff", 2);
        put8(&r, 0);
        port = AB_PORT_HOSTCALL;
    } else if (is(kind, "hostcall_too_many_args")) {
        put_str(&r, "ping", 4);
        put8(&r, 200);
        for (int i = 0; i < 200; i++)
            put8(&r, AB_TAG_NONE);
        port = AB_PORT_HOSTCALL;
    } else if (is(kind, "hostcall_bad_tag")) {
        put_str(&r, "ping", 4);
        put8(&r, 1);
        put8(&r, 0x42);
        port = AB_PORT_HOSTCALL;
    } else if (is(kind, "hostcall_arg_len_lie")) {
        put_str(&r, "ping", 4);
        put8(&r, 1);
        put8(&r, AB_TAG_BYTES);
        put32(&r, 0x7fffffff);
        put(&r, "x", 2);
        port = AB_PORT_HOSTCALL;
    } else if (is(kind, "hostcall_trailing")) {
        put_str(&r, "ping", 4);
        put8(&r, 0);
        put(&r, "junk", 4);
        port = AB_PORT_HOSTCALL;
    } else if (is(kind, "hostcall_unknown")) { /* well formed, no such function */
        put_str(&r, "no_such_function", 16);
        put8(&r, 0);
        port = AB_PORT_HOSTCALL;
    } else if (is(kind, "hostcall_long_name")) { /* 1000 bytes: longer than any name */
        put32(&r, 1000);
        memset(r.p + r.n, 'a', 1000);
        r.n += 1000;
        put8(&r, 0);
        put8(&r, 0);
        port = AB_PORT_HOSTCALL;
    } else {
        ab_abort(2, "forge: unknown %s", kind);
    }
    n = (uint32_t)r.n;
    out(port, n);
    /* Resumed only after a host call or a clean error: report the host's
     * reply status (host calls) or nothing. */
    return port == AB_PORT_HOSTCALL ? (int64_t)r.p[0] : 0;
}
AB_EXPORT(forge, AB_INT, AB_STR);

/* The same, from functions declared to return other types, so that the
 * host's decoder (not just its check of the declared type) sees the value. */
static bool forge_bool(const char *kind) { return forge(kind) != 0; }
AB_EXPORT(forge_bool, AB_BOOL, AB_STR);
static const char *forge_str(const char *kind) { return forge(kind) ? "" : ""; }
AB_EXPORT(forge_str, AB_STR, AB_STR);
static ab_bytes forge_bytes(const char *kind) { return (ab_bytes){NULL, (size_t)forge(kind) & 0}; }
AB_EXPORT(forge_bytes, AB_BYTES, AB_STR);

/* A pseudo-random record of pseudo-random length (xorshift64 from seed). */
static int64_t garbage(int64_t seed) {
    uint64_t x = (uint64_t)seed * 0x9e3779b97f4a7c15ull + 1;
    uint8_t *o = (uint8_t *)(uintptr_t)boot()->output_addr;
    uint32_t size = (uint32_t)boot()->output_size;
#define NEXT() (x ^= x << 13, x ^= x >> 7, x ^= x << 17, x)
    uint32_t n = (uint32_t)(NEXT() % 64) + 1;
    for (uint32_t i = 0; i < n && i < size; i++)
        o[i] = (uint8_t)NEXT();
    out(AB_PORT_RESULT, n);
    return 0;
}
AB_EXPORT(garbage, AB_INT, AB_INT);

/* ---- host calls and logs ----------------------------------------------------- */

static int64_t host_loop(void) {
    for (int64_t i = 0;; i++) {
        int err;
        ab_call_host_int("ping", i, &err);
    }
}
AB_EXPORT(host_loop, AB_INT);

static int64_t call_missing(void) {
    ab_value result;
    int rc = ab_call_host("no_such_function", NULL, 0, &result);
    ab_value_free(&result);
    return rc; /* the guest carries on regardless */
}
AB_EXPORT(call_missing, AB_INT);

/* Log `total` bytes in records of `chunk` bytes; returns the record count. */
static int64_t flood_log(int64_t total, int64_t chunk) {
    static char line[4096];
    if (chunk < 1 || chunk >= (int64_t)sizeof line)
        ab_abort(2, "flood_log: chunk %lld", (long long)chunk);
    memset(line, 'L', (size_t)chunk);
    line[chunk] = 0;
    int64_t records = 0;
    for (int64_t sent = 0; sent < total; sent += chunk, records++)
        ab_log(AB_LOG_WARNING, "%s", line);
    return records;
}
AB_EXPORT(flood_log, AB_INT, AB_INT, AB_INT);

static void flood_log_forever(void) {
    for (;;)
        ab_log(AB_LOG_ERROR, "flood");
}
AB_EXPORT(flood_log_forever, AB_VOID);

/* ---- resources (tests/test_limits.py) ---------------------------------------- */

/* malloc n bytes and touch every page; n if that worked, -1 if the heap
 * said no. */
static int64_t alloc(int64_t n) {
    if (n < 0)
        return -1;
    uint8_t *p = malloc((size_t)n);
    if (!p)
        return -1;
    for (int64_t i = 0; i < n; i += 4096)
        p[i] = 1;
    if (n)
        p[n - 1] = 1;
    OPAQUE(p);
    free(p);
    return n;
}
AB_EXPORT(alloc, AB_INT, AB_INT);

/* Touch every page from the heap start up to `n` bytes, bypassing malloc. */
static int64_t touch_heap(int64_t n) {
    volatile uint8_t *base = (volatile uint8_t *)(uintptr_t)boot()->heap_addr;
    for (int64_t i = 0; i < n; i += 4096)
        base[i] = 1;
    return n;
}
AB_EXPORT(touch_heap, AB_INT, AB_INT);

static ab_bytes result_of_size(int64_t n) {
    uint8_t *p = malloc((size_t)n + 1);
    if (!p)
        ab_abort(2, "result_of_size: no heap for %lld bytes", (long long)n);
    memset(p, 'r', (size_t)n);
    return (ab_bytes){p, (size_t)n}; /* leaked: the test only calls it a few times */
}
AB_EXPORT(result_of_size, AB_BYTES, AB_INT);

static int64_t arg_size(const uint8_t *data, size_t len) {
    (void)data;
    return (int64_t)len;
}
AB_EXPORT(arg_size, AB_INT, AB_BYTES);

static int64_t host_result_size(int64_t n) {
    ab_value arg = ab_int(n), result;
    if (ab_call_host("sized", &arg, 1, &result) != 0) {
        ab_value_free(&result);
        return -1;
    }
    int64_t len = (int64_t)result.buf.len;
    ab_value_free(&result);
    return len;
}
AB_EXPORT(host_result_size, AB_INT, AB_INT);

/* ---- state a call leaves behind (tests/test_restore_exact.py) ---------------
 *
 * Each of these writes one class of guest-visible register (or, with string
 * input from a hypercall port, memory through KVM's instruction emulator)
 * and leaves it so: restore must bring every one of them back. The AVX and
 * AVX-512 code is enabled per function (target attributes): the rest of
 * the guest is compiled for the baseline x86-64 only. */

static int64_t canary = 0x1122334455667788; /* a global in .data */

static int64_t get_canary(void) { return canary; }
AB_EXPORT(get_canary, AB_INT);

static double fdiv(double a, double b) { return a / b; }
AB_EXPORT(fdiv, AB_FLOAT, AB_FLOAT, AB_FLOAT);

/* No target attribute here: with AVX enabled the compiler ends the
 * function with vzeroupper, which would undo the write. The assembler
 * takes the VEX instructions anyway. */
static void set_ymm15(int64_t v) {
    __asm__ volatile("vmovq %0, %%xmm15\n\tvpbroadcastq %%xmm15, %%ymm15" : : "r"(v) : "xmm15");
}
static int64_t get_ymm15_hi(void) {
    int64_t v;
    __asm__ volatile("vextracti128 $1, %%ymm15, %%xmm0\n\tvmovq %%xmm0, %0" : "=r"(v) : : "xmm0");
    return v;
}
__attribute__((target("avx512f"))) static void set_zmm31(int64_t v) {
    __asm__ volatile("vpbroadcastq %0, %%zmm31" : : "r"(v) : "xmm31");
}
/* Lane 6 of zmm31: in its upper 256 bits. */
__attribute__((target("avx512f"))) static int64_t get_zmm31_hi(void) {
    int64_t v;
    __asm__ volatile("vextracti64x4 $1, %%zmm31, %%ymm0\n\t"
                     "vextracti128 $1, %%ymm0, %%xmm0\n\t"
                     "vmovq %%xmm0, %0"
                     : "=r"(v)
                     :
                     : "xmm0");
    return v;
}
__attribute__((target("avx512bw"))) static void set_k7(int64_t v) {
    __asm__ volatile("kmovq %0, %%k7" : : "r"(v) : "k7");
}
__attribute__((target("avx512bw"))) static int64_t get_k7(void) {
    int64_t v;
    __asm__ volatile("kmovq %%k7, %0" : "=r"(v));
    return v;
}

/* Set the flags in `bits` and report a result of 7 straight away with an
 * `out` of a well-formed record, so that no compiled code runs with them
 * (DF=1 or AC=1 breaks the ABI). The call returns 7; the vCPU keeps the
 * flags. */
static int64_t set_flags_and_report(uint64_t bits) {
    uint8_t *o = (uint8_t *)(uintptr_t)boot()->output_addr;
    int64_t seven = 7;
    o[0] = AB_STATUS_OK;
    o[1] = AB_TAG_INT;
    memcpy(o + 2, &seven, 8);
    __asm__ volatile("pushfq\n\t"
                     "orq %0, (%%rsp)\n\t"
                     "popfq\n\t"
                     "outl %%eax, %w1\n\t"
                     "pushfq\n\t"
                     "andq %2, (%%rsp)\n\t"
                     "popfq"
                     :
                     : "r"(bits), "d"((uint16_t)AB_PORT_RESULT), "r"(~bits), "a"(10)
                     : "memory", "cc");
    return 7;
}

static void load_selector(const char *seg, uint16_t sel) {
    if (is(seg, "ds"))
        __asm__ volatile("mov %w0, %%ds" : : "r"(sel));
    else if (is(seg, "es"))
        __asm__ volatile("mov %w0, %%es" : : "r"(sel));
    else if (is(seg, "fs"))
        __asm__ volatile("mov %w0, %%fs" : : "r"(sel));
    else if (is(seg, "gs"))
        __asm__ volatile("mov %w0, %%gs" : : "r"(sel));
    else
        ab_abort(2, "load_selector: unknown %s", seg);
}

/* The FS base is musl's thread pointer (the stack-protector canary and
 * errno live there), so a guest that points it anywhere else faults at its
 * next use. fsbase 0 moves it legitimately instead: the thread block and
 * the TLS below it are copied to a new place, the copy's self-pointer
 * fixed, and FS pointed at the copy. */
static uint8_t moved_tls[16384] __attribute__((aligned(4096)));

static void move_thread_pointer(void) {
    uint8_t *tp;
    __asm__ volatile("movq %%fs:0, %0" : "=r"(tp)); /* musl: self-pointer at 0 */
    uint8_t *to = moved_tls + sizeof moved_tls / 2;
    memcpy(moved_tls, tp - sizeof moved_tls / 2, sizeof moved_tls);
    memcpy(to, &to, sizeof to);
    __asm__ volatile("wrfsbase %0" : : "r"(to) : "memory");
}

/* Write register class `what` from `v` and return normally (leaving it so). */
static int64_t set_reg(const char *what, int64_t v) {
    uint64_t u = (uint64_t)v;
    if (is(what, "mxcsr")) {
        uint32_t m = (uint32_t)u;
        __asm__ volatile("ldmxcsr %0" : : "m"(m));
    } else if (is(what, "x87")) {
        /* a control word, and two values left on the register stack */
        uint16_t cw = (uint16_t)u;
        __asm__ volatile("fldcw %0\n\tfld1\n\tfldpi" : : "m"(cw) : "st", "st(1)");
    } else if (is(what, "xmm15")) {
        __asm__ volatile("movq %0, %%xmm15\n\tpunpcklqdq %%xmm15, %%xmm15" : : "r"(v) : "xmm15");
    } else if (is(what, "ymm15")) {
        set_ymm15(v);
    } else if (is(what, "zmm31")) {
        set_zmm31(v);
    } else if (is(what, "k7")) {
        set_k7(v);
    } else if (is(what, "fsbase")) {
        if (u == 0)
            move_thread_pointer();
        else
            __asm__ volatile("wrfsbase %0" : : "r"(u));
    } else if (is(what, "gsbase")) {
        __asm__ volatile("wrgsbase %0" : : "r"(u));
    } else if (is(what, "ds") || is(what, "es") || is(what, "fs") || is(what, "gs")) {
        load_selector(what, (uint16_t)u);
    } else if (is(what, "flags")) {
        return set_flags_and_report(u);
    } else {
        ab_abort(2, "set_reg: unknown %s", what);
    }
    return 1;
}
AB_EXPORT(set_reg, AB_INT, AB_STR, AB_INT);

static int64_t get_reg(const char *what) {
    uint64_t v = 0;
    if (is(what, "mxcsr")) {
        uint32_t m;
        __asm__ volatile("stmxcsr %0" : "=m"(m));
        v = m;
    } else if (is(what, "x87_cw")) {
        uint16_t cw;
        __asm__ volatile("fnstcw %0" : "=m"(cw));
        v = cw;
    } else if (is(what, "x87_sw")) {
        uint16_t sw;
        __asm__ volatile("fnstsw %0" : "=m"(sw));
        v = sw;
    } else if (is(what, "xmm15")) {
        __asm__ volatile("movq %%xmm15, %0" : "=r"(v));
    } else if (is(what, "ymm15")) {
        v = (uint64_t)get_ymm15_hi();
    } else if (is(what, "zmm31")) {
        v = (uint64_t)get_zmm31_hi();
    } else if (is(what, "k7")) {
        v = (uint64_t)get_k7();
    } else if (is(what, "fsbase")) {
        __asm__ volatile("rdfsbase %0" : "=r"(v));
    } else if (is(what, "gsbase")) {
        __asm__ volatile("rdgsbase %0" : "=r"(v));
    } else if (is(what, "ds")) {
        __asm__ volatile("mov %%ds, %w0" : "=r"(v));
    } else if (is(what, "fs")) {
        __asm__ volatile("mov %%fs, %w0" : "=r"(v));
    } else if (is(what, "flags")) {
        __asm__ volatile("pushfq\n\tpopq %0" : "=r"(v));
    } else {
        ab_abort(2, "get_reg: unknown %s", what);
    }
    return (int64_t)v;
}
AB_EXPORT(get_reg, AB_INT, AB_STR);

/* String input from a hypercall port, which the host refuses (a protocol
 * error): KVM has already started emulating the instruction, and completes
 * it (writing memory) on the next KVM_RUN, which is restore's. `where`:
 * the global `canary` in .data, a heap block, or the start of the heap,
 * where the runtime keeps its function table. `down` runs it with DF=1. */
static int64_t rep_ins(const char *kind, const char *where, int64_t count) {
    void *dst;
    if (is(where, "data"))
        dst = &canary;
    else if (is(where, "heap"))
        dst = malloc(64);
    else if (is(where, "table"))
        dst = (void *)(uintptr_t)boot()->heap_addr;
    else
        ab_abort(2, "rep_ins: unknown %s", where);
    uint16_t port = AB_PORT_RESULT;
    uint64_t n = (uint64_t)count;
    if (is(kind, "insb"))
        __asm__ volatile("rep insb" : "+D"(dst), "+c"(n) : "d"(port) : "memory");
    else if (is(kind, "insw"))
        __asm__ volatile("rep insw" : "+D"(dst), "+c"(n) : "d"(port) : "memory");
    else if (is(kind, "insl"))
        __asm__ volatile("rep insl" : "+D"(dst), "+c"(n) : "d"(port) : "memory");
    else if (is(kind, "insl_down"))
        __asm__ volatile("std\n\trep insl\n\tcld" : "+D"(dst), "+c"(n) : "d"(port) : "memory", "cc");
    else
        ab_abort(2, "rep_ins: unknown %s", kind);
    return (int64_t)n;
}
AB_EXPORT(rep_ins, AB_INT, AB_STR, AB_STR, AB_INT);

static int64_t add(int64_t a, int64_t b) { return (int64_t)((uint64_t)a + (uint64_t)b); }
AB_EXPORT(add, AB_INT, AB_INT, AB_INT);

static void spin(void) {
    for (;;)
        __asm__ volatile("");
}
AB_EXPORT(spin, AB_VOID);

