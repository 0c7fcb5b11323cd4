/*
 * A guest that makes raw system requests (AB_PORT_SYS) for
 * tests/test_syscalls.py, bypassing any libc: the test builds each request
 * in Python, the guest copies it into the output buffer, does
 * `out AB_PORT_SYS, eax` with whatever length the test chooses (so it can
 * lie), and hands back the first bytes of the reply.
 */
#include <aionub_guest.h>

static const struct ab_boot_info *boot(void) {
    return (const struct ab_boot_info *)(uintptr_t)AB_BOOT_INFO_ADDR;
}

static uint8_t *out_buf(void) { return (uint8_t *)(uintptr_t)boot()->output_addr; }

static void sys_out(uint32_t length) {
    __asm__ volatile("outl %0, %w1" : : "a"(length), "d"((uint16_t)AB_PORT_SYS) : "memory");
}

#define MAX_REPLY 16384
static uint8_t reply[MAX_REPLY];

/* Send `req` as a system request of `length` bytes (-1: its own length)
 * and return the first `reply_len` bytes of the output buffer after it. */
static ab_bytes sys_raw(const uint8_t *req, size_t len, int64_t length, int64_t reply_len) {
    if (reply_len < 0 || reply_len > MAX_REPLY || (uint64_t)reply_len > boot()->output_size)
        ab_abort(2, "sys_raw: bad reply_len");
    if (len > boot()->output_size)
        ab_abort(2, "sys_raw: request larger than the output buffer");
    memcpy(out_buf(), req, len);
    sys_out(length < 0 ? (uint32_t)len : (uint32_t)length);
    memcpy(reply, out_buf(), (size_t)reply_len);
    return (ab_bytes){reply, (size_t)reply_len};
}
AB_EXPORT(sys_raw, AB_BYTES, AB_BYTES, AB_INT, AB_INT);

/* The same request `n` times; the result field of the last reply. */
static int64_t sys_repeat(const uint8_t *req, size_t len, int64_t n) {
    int64_t result = 0;
    for (int64_t i = 0; i < n; i++) {
        memcpy(out_buf(), req, len);
        sys_out((uint32_t)len);
        memcpy(&result, out_buf(), sizeof result);
    }
    return result;
}
AB_EXPORT(sys_repeat, AB_INT, AB_BYTES, AB_INT);

/* The boot info's flags (AB_BOOT_FSGSBASE). */
static int64_t boot_flags(void) { return boot()->flags; }
AB_EXPORT(boot_flags, AB_INT);

/* The FS base as the CPU sees it (rdfsbase: needs CR4.FSGSBASE). */
static int64_t read_fs_base(void) {
    uint64_t base;
    __asm__ volatile("rdfsbase %0" : "=r"(base));
    return (int64_t)base;
}
AB_EXPORT(read_fs_base, AB_INT);

/* wrfsbase at CPL3, then read a word through %fs. */
static int64_t fs_roundtrip(int64_t base) {
    __asm__ volatile("wrfsbase %0" : : "r"((uint64_t)base) : "memory");
    int64_t v;
    __asm__ volatile("movq %%fs:0, %0" : "=r"(v));
    return v;
}
AB_EXPORT(fs_roundtrip, AB_INT, AB_INT);

/* Something to check that the sandbox still works. */
static int64_t add(int64_t a, int64_t b) { return a + b; }
AB_EXPORT(add, AB_INT, AB_INT, AB_INT);

static int64_t counter_value;
static int64_t counter(void) { return ++counter_value; }
AB_EXPORT(counter, AB_INT);
