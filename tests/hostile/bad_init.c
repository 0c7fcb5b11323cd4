/*
 * A guest that misbehaves before it is ready, for tests/test_hostile.py. A
 * constructor runs before the runtime sends its function table, so it can do
 * anything first: forge the table itself, exit through the wrong port,
 * fault, abort or never finish.
 *
 * Nothing reaches a guest before it is ready except the boot info, so the
 * test picks the behaviour through the one option it can vary freely: the
 * stack is BAD_INIT_BASE + n pages for behaviour n (building one image per
 * behaviour would cost a compile each).
 */
#include <aionub_guest.h>

#define TABLE_GARBAGE 1     /* random bytes instead of a function table     */
#define TABLE_LEN_LIE 2     /* READY claiming more bytes than the buffer     */
#define TABLE_BAD_TAG 3     /* a well-formed table with an invalid type tag  */
#define TABLE_DUPLICATE 4   /* the same name exported twice                  */
#define RESULT_FIRST 5      /* a RESULT exit before READY                    */
#define SPIN 6              /* never becomes ready                           */
#define FAULT 7             /* reads address 0                               */
#define ABORT 8             /* ab_abort()                                    */
#define PRIVILEGED 9        /* executes hlt                                  */
#define TABLE_HUGE_COUNT 10 /* count says 2^32-1 functions                   */
#define HOSTCALL 11         /* a host-call request before being ready        */
#define LOG 12              /* a log record before being ready (allowed)     */

#define BAD_INIT_BASE 32 /* pages */

static void out(uint16_t port, uint32_t n) {
    __asm__ volatile("outl %0, %w1" : : "a"(n), "d"(port) : "memory");
}

static uint8_t *output(void) {
    const struct ab_boot_info *bi = (const struct ab_boot_info *)(uintptr_t)AB_BOOT_INFO_ADDR;
    return (uint8_t *)(uintptr_t)bi->output_addr;
}

/* A function table of one function `name() -> int` with `tag` as its
 * return type, written at p; returns its length. */
static size_t one_function(uint8_t *p, const char *name, uint8_t tag) {
    uint32_t len = (uint32_t)strlen(name);
    memcpy(p, &len, 4);
    memcpy(p + 4, name, len + 1);
    p[5 + len] = tag;
    p[6 + len] = 0;
    return 7 + len;
}

__attribute__((constructor)) static void misbehave(void) {
    const struct ab_boot_info *bi = (const struct ab_boot_info *)(uintptr_t)AB_BOOT_INFO_ADDR;
    uint64_t behaviour = bi->stack_size / AB_PAGE_SIZE - BAD_INIT_BASE;
    uint8_t *o = output();
    uint32_t one = 1, two = 2, many = 0xffffffffu;
    size_t n;
    switch (behaviour) {
    case TABLE_GARBAGE:
        for (int i = 0; i < 100; i++)
            o[i] = (uint8_t)(i * 37 + 11);
        out(AB_PORT_READY, 100);
        break;
    case TABLE_LEN_LIE:
        memcpy(o, &one, 4);
        out(AB_PORT_READY, 0x7fffffffu);
        break;
    case TABLE_BAD_TAG:
        memcpy(o, &one, 4);
        n = 4 + one_function(o + 4, "f", 77);
        out(AB_PORT_READY, (uint32_t)n);
        break;
    case TABLE_DUPLICATE:
        memcpy(o, &two, 4);
        n = 4 + one_function(o + 4, "f", AB_TAG_INT);
        n += one_function(o + n, "f", AB_TAG_INT);
        out(AB_PORT_READY, (uint32_t)n);
        break;
    case RESULT_FIRST:
        o[0] = AB_STATUS_OK;
        o[1] = AB_TAG_NONE;
        out(AB_PORT_RESULT, 2);
        break;
    case SPIN:
        for (;;)
            __asm__ volatile("");
    case FAULT:
        __asm__ volatile("movq 0, %%rax" : : : "rax", "memory");
        break;
    case ABORT:
        ab_abort(99, "refusing to start");
    case PRIVILEGED:
        __asm__ volatile("hlt");
        break;
    case TABLE_HUGE_COUNT:
        memcpy(o, &many, 4);
        out(AB_PORT_READY, 4);
        break;
    case HOSTCALL:
        n = 0;
        memcpy(o, &(uint32_t){4}, 4);
        memcpy(o + 4, "ping", 5);
        o[9] = 0; /* no arguments */
        out(AB_PORT_HOSTCALL, 10);
        break;
    case LOG:
        ab_log(AB_LOG_INFO, "starting up");
        return; /* then start normally */
    default:
        return; /* start normally */
    }
    /* Only reached if the host resumed us: hang, and let the test see it. */
    for (;;)
        __asm__ volatile("");
}

static int64_t f(void) { return 1; }
AB_EXPORT(f, AB_INT);
