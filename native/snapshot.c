/* Snapshots and restore.
 *
 * A snapshot holds the vCPU state and a copy of every guest page that may be
 * non-zero. Pages never written are known to be zero: `written` tracks the
 * pages the host filled at creation, every page KVM's dirty log reports,
 * and the host's own writes to the input/output buffers.
 *
 * Restore has two paths:
 *   - fast: the sandbox's memory still equals snapshot `base_id` except for
 *     the pages in `dirty` (plus what the dirty log reports now): copy back
 *     only those. This is the pool case: snapshot once, restore after each use.
 *   - full: any other snapshot of the same image and layout: copy back every
 *     page either side may have written.
 * Either way the snapshot becomes the new base and `dirty` starts empty.
 *
 * KVM completes a port-I/O exit only on the next KVM_RUN (depending on the
 * implementation, rip still points at the `out` until then). So both run on
 * the vCPU thread and first "settle" the vCPU: one KVM_RUN with
 * immediate_exit set, which completes the pending exit and returns EINTR
 * without entering the guest. Only then is the vCPU state consistent to
 * read, or safe to overwrite.
 */
#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

#define PAGE AB_PAGE_SIZE
#define BITS 64

struct ab_snapshot {
    uint64_t id;        /* unique per process; never reused              */
    uint64_t image_id;
    struct ab_layout layout;
    uint64_t npages;
    uint64_t *present;  /* pages held in `mem` (others are zero)         */
    uint8_t *mem;       /* layout.memory_size bytes, MAP_NORESERVE       */
    uint64_t bytes;     /* pages held, in bytes                          */
    struct kvm_regs regs;
    struct kvm_sregs sregs;
    struct kvm_fpu fpu;
    struct kvm_vcpu_events events;
};

static _Atomic uint64_t next_snapshot_id = 1;

static bool test_bit(const uint64_t *map, uint64_t i)
{
    return (map[i / BITS] >> (i % BITS)) & 1;
}

static void set_bit(uint64_t *map, uint64_t i)
{
    map[i / BITS] |= 1ull << (i % BITS);
}

static void set_range(uint64_t *map, uint64_t addr, uint64_t len)
{
    for (uint64_t a = addr & ~(PAGE - 1); a < addr + len; a += PAGE)
        set_bit(map, a / PAGE);
}

static size_t map_words(uint64_t npages) { return (npages + BITS - 1) / BITS; }

static uint64_t fnv1a(const uint8_t *data, size_t len)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < len; i++)
        h = (h ^ data[i]) * 0x100000001b3ull;
    return h;
}

int snapshot_init_tracking(struct ab_sandbox *sb, const struct ab_image *img,
                           const uint8_t *elf, size_t elf_len)
{
    sb->image_id = fnv1a(elf, elf_len);
    sb->npages = sb->layout.memory_size / PAGE;
    size_t words = map_words(sb->npages);
    sb->written = calloc(words, sizeof(uint64_t));
    sb->dirty = calloc(words, sizeof(uint64_t));
    if (!sb->written || !sb->dirty)
        return -ENOMEM;
    sb->dirty_log = true;
    /* Everything memory_build() wrote: paging structures (only the page
     * tables in use), descriptor tables, TSS, stubs, boot info, image. */
    uint64_t npts = (sb->layout.memory_size + 0x1fffff) / 0x200000;
    set_range(sb->written, AB_PML4_ADDR, AB_PT_ADDR + npts * PAGE - AB_PML4_ADDR);
    set_range(sb->written, AB_GDT_ADDR, AB_KSTACK_ADDR - AB_GDT_ADDR);
    set_range(sb->written, AB_BOOT_INFO_ADDR, PAGE);
    for (unsigned i = 0; i < img->nsegments; i++)
        set_range(sb->written, img->segments[i].vaddr, img->segments[i].memsz);
    return 0;
}

void snapshot_free_tracking(struct ab_sandbox *sb)
{
    free(sb->written);
    free(sb->dirty);
    sb->written = sb->dirty = NULL;
}

/* Fold KVM's dirty log (which the ioctl also resets) into `written` and
 * `dirty`. Without a usable log every page counts as dirty. */
static int collect_dirty(struct ab_sandbox *sb)
{
    size_t words = map_words(sb->npages);
    uint64_t *log = calloc(words, sizeof(uint64_t));
    if (!log)
        return -ENOMEM;
    struct kvm_dirty_log d = {.slot = 0, .dirty_bitmap = log};
    if (!sb->dirty_log || ioctl(sb->vm_fd, KVM_GET_DIRTY_LOG, &d) < 0)
        memset(log, 0xff, words * sizeof(uint64_t));
    for (size_t w = 0; w < words; w++) {
        sb->written[w] |= log[w];
        sb->dirty[w] |= log[w];
    }
    free(log);
    return 0;
}

/* The host's own writes to the buffers are not in KVM's log: Python
 * reports how far into each buffer it wrote since the last snapshot or
 * restore. */
static int note_host_writes(struct ab_sandbox *sb)
{
    if (sb->input_used > sb->layout.input_size ||
        sb->output_used > sb->layout.output_size)
        return -EINVAL;
    set_range(sb->dirty, sb->layout.input_addr, sb->input_used);
    set_range(sb->written, sb->layout.input_addr, sb->input_used);
    set_range(sb->dirty, sb->layout.output_addr, sb->output_used);
    set_range(sb->written, sb->layout.output_addr, sb->output_used);
    return 0;
}

static void free_snapshot(struct ab_snapshot *s)
{
    if (s->mem)
        munmap(s->mem, s->layout.memory_size);
    free(s->present);
    free(s);
}

static void fail_event(struct ab_event *ev, uint32_t kind, int err,
                       const char *what)
{
    ev->kind = kind;
    ev->error = -err;
    snprintf(ev->message, sizeof ev->message, "%s: %s", what, strerror(err));
}

/* Complete the last exit's I/O without running the guest. */
static int settle(struct ab_sandbox *sb)
{
    _Atomic uint8_t *immediate_exit =
        (_Atomic uint8_t *)&sb->run->immediate_exit;
    atomic_store(immediate_exit, 1);
    int rc = ioctl(sb->vcpu_fd, KVM_RUN, 0);
    int err = errno;
    atomic_store(immediate_exit, 0);
    if (rc == 0 || err != EINTR)
        return rc == 0 ? -EPROTO : -err;
    return 0;
}

void snapshot_take(struct ab_sandbox *sb, struct ab_event *ev)
{
    ev->kind = AB_EV_SNAPSHOT;
    if (!sb->run)
        return fail_event(ev, AB_EV_SNAPSHOT, ENODEV, "no VM");
    struct ab_snapshot *s = calloc(1, sizeof *s);
    if (!s)
        return fail_event(ev, AB_EV_SNAPSHOT, ENOMEM, "snapshot");
    s->image_id = sb->image_id;
    s->layout = sb->layout;
    s->npages = sb->npages;
    s->present = calloc(map_words(sb->npages), sizeof(uint64_t));
    void *mem = mmap(NULL, sb->layout.memory_size, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    s->mem = mem == MAP_FAILED ? NULL : mem;
    if (!s->present || !s->mem || collect_dirty(sb) < 0 ||
        note_host_writes(sb) < 0) {
        free_snapshot(s);
        return fail_event(ev, AB_EV_SNAPSHOT, ENOMEM, "snapshot");
    }
    int rc = settle(sb);
    if (rc < 0) {
        free_snapshot(s);
        return fail_event(ev, AB_EV_SNAPSHOT, -rc, "settling the vCPU");
    }
    if (ioctl(sb->vcpu_fd, KVM_GET_REGS, &s->regs) < 0 ||
        ioctl(sb->vcpu_fd, KVM_GET_SREGS, &s->sregs) < 0 ||
        ioctl(sb->vcpu_fd, KVM_GET_FPU, &s->fpu) < 0 ||
        ioctl(sb->vcpu_fd, KVM_GET_VCPU_EVENTS, &s->events) < 0) {
        int err = errno;
        free_snapshot(s);
        return fail_event(ev, AB_EV_SNAPSHOT, err, "reading vCPU state");
    }
    for (uint64_t p = 0; p < sb->npages; p++) {
        if (!test_bit(sb->written, p))
            continue;
        memcpy(s->mem + p * PAGE, sb->mem + p * PAGE, PAGE);
        set_bit(s->present, p);
        s->bytes += PAGE;
    }
    s->id = atomic_fetch_add(&next_snapshot_id, 1);
    sb->base_id = s->id;
    memset(sb->dirty, 0, map_words(sb->npages) * sizeof(uint64_t));
    sb->snapshot_result = s;
}

static void restore_page(struct ab_sandbox *sb, const struct ab_snapshot *s,
                         uint64_t p)
{
    if (test_bit(s->present, p))
        memcpy(sb->mem + p * PAGE, s->mem + p * PAGE, PAGE);
    else
        memset(sb->mem + p * PAGE, 0, PAGE);
}

void snapshot_restore(struct ab_sandbox *sb, struct ab_event *ev)
{
    const struct ab_snapshot *s = sb->restore_from;
    ev->kind = AB_EV_RESTORED;
    if (!sb->run)
        return fail_event(ev, AB_EV_RESTORED, ENODEV, "no VM");
    if (s->image_id != sb->image_id || memcmp(&s->layout, &sb->layout,
                                              sizeof s->layout) != 0) {
        ev->error = -EINVAL;
        snprintf(ev->message, sizeof ev->message, "the snapshot was taken "
                 "from a %s", s->image_id != sb->image_id
                                  ? "different guest image"
                                  : "sandbox with a different memory layout");
        return;
    }
    if (collect_dirty(sb) < 0 || note_host_writes(sb) < 0)
        return fail_event(ev, AB_EV_RESTORED, ENOMEM, "restore");
    int rc = settle(sb);
    if (rc < 0)
        return fail_event(ev, AB_EV_RESTORED, -rc, "settling the vCPU");
    bool fast = sb->base_id == s->id;
    size_t words = map_words(sb->npages);
    for (size_t w = 0; w < words; w++) {
        uint64_t todo = fast ? sb->dirty[w] : (sb->written[w] | s->present[w]);
        while (todo) {
            unsigned bit = (unsigned)__builtin_ctzll(todo);
            todo &= todo - 1;
            restore_page(sb, s, w * BITS + bit);
        }
        if (!fast)
            sb->written[w] |= s->present[w];
    }
    /* The guest has not run since collect_dirty() reset KVM's log, and the
     * pages just copied equal the snapshot: the log starts clean. */
    memset(sb->dirty, 0, words * sizeof(uint64_t));
    if (ioctl(sb->vcpu_fd, KVM_SET_SREGS, &s->sregs) < 0 ||
        ioctl(sb->vcpu_fd, KVM_SET_REGS, &s->regs) < 0 ||
        ioctl(sb->vcpu_fd, KVM_SET_FPU, &s->fpu) < 0 ||
        ioctl(sb->vcpu_fd, KVM_SET_VCPU_EVENTS, &s->events) < 0) {
        sb->base_id = 0; /* memory is restored but the vCPU may not be */
        return fail_event(ev, AB_EV_RESTORED, errno, "writing vCPU state");
    }
    sb->base_id = s->id;
}

void ab_snapshot_free(ab_snapshot *s)
{
    if (s)
        free_snapshot(s);
}

uint64_t ab_snapshot_bytes(const ab_snapshot *s) { return s->bytes; }
