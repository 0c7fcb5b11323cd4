/*
 * Guest memory for musl's allocator: brk and anonymous mmap over the heap
 * region the host set aside ([heap_addr, heap_addr + heap_size) in the boot
 * info, which is what memory_size leaves after the image, the buffers and
 * the stack).
 *
 * The break grows up from the bottom of the region; mappings are placed
 * first-fit from the top down, so the two meet only when memory runs out
 * (then brk or mmap fails with ENOMEM, and malloc returns NULL). One bit
 * per page records the pages handed out by mmap.
 *
 * Invariant: every page that is neither below the break nor mapped holds
 * zeros. The host gives us zeroed memory, and munmap, madvise(DONTNEED)
 * and a shrinking break zero what they release, so a new mapping needs no
 * clearing: mmap returns zeroed pages as POSIX requires.
 *
 * Every page is readable and writable, none executable: the protections
 * are the host's page tables, which the guest cannot change.
 */
#include "internal.h"

#include <errno.h>
#include <sys/mman.h>

#define PAGE 4096ul
#define MAX_PAGES (AB_MAX_MEMORY / PAGE)

static uintptr_t lo, hi;         /* the region, page aligned */
static uintptr_t brk_end;        /* current break (byte granular) */
static uint64_t mapped[MAX_PAGES / 64];

static inline size_t page_of(uintptr_t a) { return (size_t)((a - lo) / PAGE); }
static inline bool is_mapped(size_t p) { return mapped[p / 64] >> (p % 64) & 1; }
static inline uintptr_t page_up(uintptr_t a) { return (a + PAGE - 1) & ~(PAGE - 1); }

static void mark(size_t first, size_t n, bool on) {
    for (size_t p = first; p < first + n; p++) {
        if (on)
            mapped[p / 64] |= 1ull << (p % 64);
        else
            mapped[p / 64] &= ~(1ull << (p % 64));
    }
}

static bool range_free(size_t first, size_t n) {
    for (size_t p = first; p < first + n; p++)
        if (is_mapped(p))
            return false;
    return true;
}

static bool range_mapped(size_t first, size_t n) {
    for (size_t p = first; p < first + n; p++)
        if (!is_mapped(p))
            return false;
    return true;
}

void ab__pages_init(uintptr_t base, size_t size) {
    lo = page_up(base);
    hi = (base + size) & ~(PAGE - 1);
    if (hi < lo || (hi - lo) / PAGE > MAX_PAGES)
        hi = lo;
    brk_end = lo;
    /* Zero at boot already; cleared for native tests that start over. Only
     * the words this region uses: each page of the bitmap touched costs
     * start-up time. */
    memset(mapped, 0, ((hi - lo) / PAGE + 63) / 64 * sizeof *mapped);
}

/* ---- brk ------------------------------------------------------------------------ */

long ab__sys_brk(uintptr_t addr) {
    if (addr == 0 || addr < lo || addr > hi)
        return (long)brk_end;
    uintptr_t old_top = page_up(brk_end), new_top = page_up(addr);
    if (new_top > old_top && !range_free(page_of(old_top), (new_top - old_top) / PAGE))
        return (long)brk_end; /* would run into a mapping: the caller sees ENOMEM */
    if (addr < brk_end)
        memset((void *)addr, 0, old_top - addr);
    brk_end = addr;
    return (long)brk_end;
}

/* ---- mmap and friends ------------------------------------------------------------ */

/* Finds n free pages above the break, as high as possible; 0 if there are
 * none. Words of 64 mapped pages are skipped whole. */
static uintptr_t find_free(size_t n) {
    size_t floor = page_of(page_up(brk_end));
    size_t p = (hi - lo) / PAGE; /* one past the page to look at next */
    size_t run = 0;
    while (p > floor) {
        if (p % 64 == 0 && p - 64 >= floor && mapped[(p - 64) / 64] == ~0ull) {
            p -= 64;
            run = 0;
            continue;
        }
        p--;
        run = is_mapped(p) ? 0 : run + 1;
        if (run == n)
            return lo + p * PAGE; /* pages p .. p + n - 1 */
    }
    return 0;
}

/* True if [addr, addr + len) is page aligned, non-empty and inside the region. */
static bool in_region(uintptr_t addr, size_t len) {
    return !(addr % PAGE) && len && addr >= lo && addr <= hi && len <= hi - addr;
}

long ab__sys_mmap(uintptr_t addr, size_t len, int prot, int flags, int fd, long off) {
    (void)off;
    if (!len)
        return -EINVAL;
    if (!(flags & MAP_ANONYMOUS))
        return fd < 0 ? -EBADF : -ENODEV; /* no file can be mapped */
    if (prot & PROT_EXEC)
        return -EACCES; /* guest data pages are never executable */
    if (len > hi - lo)
        return -ENOMEM;
    len = page_up(len);
    size_t n = len / PAGE;
    if (flags & (MAP_FIXED | MAP_FIXED_NOREPLACE)) {
        if (addr % PAGE)
            return -EINVAL;
        if (!in_region(addr, len) || addr < page_up(brk_end))
            return (flags & MAP_FIXED_NOREPLACE) ? -EEXIST : -ENOMEM;
        size_t first = page_of(addr);
        if (!range_free(first, n)) {
            if (flags & MAP_FIXED_NOREPLACE)
                return -EEXIST;
            memset((void *)addr, 0, len); /* replaces what was there */
        }
        mark(first, n, true);
        return (long)addr;
    }
    uintptr_t at = find_free(n);
    if (!at)
        return -ENOMEM;
    mark(page_of(at), n, true);
    return (long)at;
}

long ab__sys_munmap(uintptr_t addr, size_t len) {
    if (addr % PAGE || !len)
        return -EINVAL;
    len = page_up(len);
    /* Unmapping what is not mapped is not an error; clip to the region. */
    uintptr_t start = addr < lo ? lo : addr;
    uintptr_t end = len > UINTPTR_MAX - addr ? UINTPTR_MAX : addr + len;
    if (end > hi)
        end = hi;
    for (uintptr_t a = start; a < end; a += PAGE) {
        size_t p = page_of(a);
        if (is_mapped(p)) {
            memset((void *)a, 0, PAGE);
            mark(p, 1, false);
        }
    }
    return 0;
}

long ab__sys_mremap(uintptr_t old, size_t old_len, size_t new_len, int flags, uintptr_t new_addr) {
    (void)new_addr;
    if (old % PAGE || !new_len || (flags & ~MREMAP_MAYMOVE))
        return -EINVAL; /* MREMAP_FIXED and DONTUNMAP are not supported */
    if (old_len > hi - lo)
        return -EFAULT;
    if (new_len > hi - lo)
        return -ENOMEM; /* before rounding, which would wrap to 0 near SIZE_MAX */
    old_len = page_up(old_len);
    new_len = page_up(new_len);
    if (!old_len || !in_region(old, old_len) || !range_mapped(page_of(old), old_len / PAGE))
        return -EFAULT;
    if (new_len <= old_len) {
        if (new_len < old_len)
            ab__sys_munmap(old + new_len, old_len - new_len);
        return (long)old;
    }
    size_t grow = (new_len - old_len) / PAGE;
    uintptr_t tail = old + old_len;
    if (new_len <= hi - old && range_free(page_of(tail), grow)) {
        mark(page_of(tail), grow, true);
        return (long)old;
    }
    if (!(flags & MREMAP_MAYMOVE))
        return -ENOMEM;
    uintptr_t at = find_free(new_len / PAGE);
    if (!at)
        return -ENOMEM;
    mark(page_of(at), new_len / PAGE, true);
    memcpy((void *)at, (const void *)old, old_len);
    ab__sys_munmap(old, old_len);
    return (long)at;
}

long ab__sys_madvise(uintptr_t addr, size_t len, int advice) {
    if (addr % PAGE)
        return -EINVAL;
    if (advice != MADV_DONTNEED)
        return 0; /* advice only: nothing to do */
    if (!len)
        return 0;
    if (len > hi - lo)
        return -ENOMEM; /* before rounding, which would wrap to 0 near SIZE_MAX */
    len = page_up(len);
    /* Pages below the break are mapped too (Linux allows DONTNEED on the
     * heap); the page holding the break counts whole. */
    if (!in_region(addr, len))
        return -ENOMEM;
    uintptr_t heap_top = page_up(brk_end);
    uintptr_t from = addr < heap_top ? heap_top : addr;
    if (from < addr + len && !range_mapped(page_of(from), (addr + len - from) / PAGE))
        return -ENOMEM;
    memset((void *)addr, 0, len); /* anonymous pages read back as zeros */
    return 0;
}

long ab__sys_mprotect(uintptr_t addr, size_t len, int prot) {
    (void)len;
    if (addr % PAGE)
        return -EINVAL;
    return (prot & PROT_EXEC) ? -EACCES : 0;
}
