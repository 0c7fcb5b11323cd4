/* Snapshots and restore.
 *
 * A snapshot holds the whole vCPU state (struct vcpu_state: registers, the
 * XSAVE area, XCR0, debug registers, pending events, MP state, MSRs) and a
 * copy of every guest page that may be non-zero. Pages never written are
 * known to be zero: `written` tracks the pages the host filled at creation,
 * every page KVM's dirty log reports, and the host's own writes to the
 * input/output buffers.
 *
 * Restore has two paths:
 *   - fast: the sandbox's memory still equals snapshot `base_id` except for
 *     the pages in `dirty` (plus what the dirty log reports now): copy back
 *     only those. This is the pool case: snapshot once, restore after each use.
 *   - full: any other snapshot of the same image and layout, or a rebuilt VM
 *     (below): copy back every page either side may have written.
 * Either way the snapshot becomes the new base and `dirty` starts empty.
 *
 * Settling. KVM completes an I/O exit only on the next KVM_RUN: until then
 * rip may still point at the instruction, and for port input (a guest's
 * `in`/`rep ins` on a hypercall port, which the host refuses) the data has
 * not been written to guest memory yet. So both commands run on the vCPU
 * thread and first settle the vCPU: KVM_RUN with immediate_exit set, which
 * completes the pending exit (writing memory through KVM's instruction
 * emulator, page-table accessed/dirty bits included) and returns EINTR
 * without entering the guest. Only then is the vCPU state consistent to
 * read or safe to overwrite, and only then may the dirty log be collected:
 * the settle's own writes must be in it. [S1] settle, [S2] collect.
 *
 * A settle may end in another exit instead (a string instruction whose
 * completion needs more input, which a guest can repeat about rcx times).
 * After SETTLE_TRIES of those, restore gives up on the vCPU and rebuilds
 * the VM and vCPU over the same guest memory (vm_rebuild), so that no
 * KVM-internal pending state can survive, and takes the full path (the
 * new VM's dirty log starts empty). kvm_pvm here always settles in one
 * KVM_RUN, even for `rep insl` with rcx = 2^40 or DF = 1; the fallback is
 * exercised through ab_sandbox_inject_unsettled().
 */
#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE AB_PAGE_SIZE
#define BITS 64
#define SETTLE_TRIES 4
#define MSR_IA32_TSC 0x10

static _Atomic uint64_t next_snapshot_id = 1;

uint64_t snapshot_new_id(void) { return atomic_fetch_add(&next_snapshot_id, 1); }


static void set_range(uint64_t *map, uint64_t addr, uint64_t len)
{
    for (uint64_t a = addr & ~(PAGE - 1); a < addr + len; a += PAGE)
        set_bit(map, a / PAGE);
}


int snapshot_init_tracking(struct ab_sandbox *sb, const struct ab_image *img,
                           const uint8_t image_sha256[32])
{
    memcpy(sb->image_sha256, image_sha256, sizeof sb->image_sha256);
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
    /* The C core's replies to fast system requests (sysfast.c), on this
     * same thread; bounded by the output buffer by construction. */
    uint64_t output_used = sb->output_used > sb->sys_output_used
                               ? sb->output_used
                               : sb->sys_output_used;
    set_range(sb->dirty, sb->layout.input_addr, sb->input_used);
    set_range(sb->written, sb->layout.input_addr, sb->input_used);
    set_range(sb->dirty, sb->layout.output_addr, output_used);
    set_range(sb->written, sb->layout.output_addr, output_used);
    /* Folded into the maps: from here on only newer replies count. */
    sb->sys_output_used = 0;
    return 0;
}

static void free_snapshot(struct ab_snapshot *s)
{
    vcpu_state_free(&s->vcpu);
    if (s->mem)
        munmap(s->mem, s->layout.memory_size);
    if (s->backing_fd >= 0)
        close(s->backing_fd);
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

/* [S1] Complete the last exit without running the guest: 0 once KVM_RUN
 * returns EINTR (settled), -EAGAIN if it kept exiting SETTLE_TRIES times,
 * another -errno if it failed. */
static int settle(struct ab_sandbox *sb)
{
    if (sb->inject_unsettled) { /* tests: as if KVM never settled */
        sb->inject_unsettled--;
        return -EAGAIN;
    }
    struct kvm_run *run = sb->run;
    _Atomic uint8_t *immediate_exit = (_Atomic uint8_t *)&run->immediate_exit;
    for (int i = 0; i < SETTLE_TRIES; i++) {
        /* Pending port input is completed from kvm_run's data area, which
         * still holds whatever an earlier exit left there: hand the guest
         * zeros instead. (It never runs again before restore overwrites
         * the memory, but nothing of an earlier exit should flow back.) */
        if (run->exit_reason == KVM_EXIT_IO &&
            run->io.direction == KVM_EXIT_IO_IN) {
            uint64_t n = (uint64_t)run->io.size * run->io.count;
            if (run->io.data_offset <= (uint64_t)sb->run_size &&
                n <= (uint64_t)sb->run_size - run->io.data_offset)
                memset((uint8_t *)run + run->io.data_offset, 0, n);
        }
        atomic_store(immediate_exit, 1);
        int rc = ioctl(sb->vcpu_fd, KVM_RUN, 0);
        int err = errno;
        atomic_store(immediate_exit, 0);
        if (rc < 0)
            return err == EINTR ? 0 : -err;
    }
    return -EAGAIN;
}

void snapshot_take(struct ab_sandbox *sb, struct ab_event *ev)
{
    ev->kind = AB_EV_SNAPSHOT;
    if (!sb->run)
        return fail_event(ev, AB_EV_SNAPSHOT, ENODEV, "no VM");
    /* [S1] A snapshot is only taken of a sandbox whose last exit was a
     * well-formed hypercall (Python refuses poisoned ones), which always
     * settles; if it does not, refuse rather than save a state that KVM
     * has not finished. */
    int rc = settle(sb);
    if (rc < 0)
        return fail_event(ev, AB_EV_SNAPSHOT, rc == -EAGAIN ? EIO : -rc,
                          "settling the vCPU");
    struct ab_snapshot *s = calloc(1, sizeof *s);
    if (!s)
        return fail_event(ev, AB_EV_SNAPSHOT, ENOMEM, "snapshot");
    s->backing_fd = -1;
    memcpy(s->image_sha256, sb->image_sha256, sizeof s->image_sha256);
    s->layout = sb->layout;
    s->npages = sb->npages;
    s->present = calloc(map_words(sb->npages), sizeof(uint64_t));
    void *mem = mmap(NULL, sb->layout.memory_size, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    s->mem = mem == MAP_FAILED ? NULL : mem;
    /* [S2] */
    if (!s->present || !s->mem ||
        vcpu_state_alloc(&s->vcpu, sb->xsave_size) < 0 ||
        collect_dirty(sb) < 0 || note_host_writes(sb) < 0) {
        free_snapshot(s);
        return fail_event(ev, AB_EV_SNAPSHOT, ENOMEM, "snapshot");
    }
    const char *what = "";
    rc = vcpu_state_get(sb, &s->vcpu, &what);
    if (rc < 0) {
        free_snapshot(s);
        return fail_event(ev, AB_EV_SNAPSHOT, -rc, what);
    }
    for (uint64_t p = 0; p < sb->npages; p++) {
        if (!test_bit(sb->written, p))
            continue;
        memcpy(s->mem + p * PAGE, sb->mem + p * PAGE, PAGE);
        set_bit(s->present, p);
        s->bytes += PAGE;
    }
    s->id = snapshot_new_id();
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

static int read_tsc(struct ab_sandbox *sb, uint64_t *tsc)
{
    struct {
        struct kvm_msrs header;
        struct kvm_msr_entry entry;
    } m = {.header.nmsrs = 1, .entry.index = MSR_IA32_TSC};
    if (ioctl(sb->vcpu_fd, KVM_GET_MSRS, &m) != 1)
        return -EIO;
    *tsc = m.entry.data;
    return 0;
}

static int write_tsc(struct ab_sandbox *sb, uint64_t tsc)
{
    struct {
        struct kvm_msrs header;
        struct kvm_msr_entry entry;
    } m = {.header.nmsrs = 1, .entry = {.index = MSR_IA32_TSC, .data = tsc}};
    return ioctl(sb->vcpu_fd, KVM_SET_MSRS, &m) == 1 ? 0 : -EIO;
}

void snapshot_restore(struct ab_sandbox *sb, struct ab_event *ev)
{
    const struct ab_snapshot *s = sb->restore_from;
    ev->kind = AB_EV_RESTORED;
    if (!sb->run)
        return fail_event(ev, AB_EV_RESTORED, ENODEV, "no VM");
    bool same_image = memcmp(s->image_sha256, sb->image_sha256,
                             sizeof s->image_sha256) == 0;
    if (!same_image ||
        memcmp(&s->layout, &sb->layout, sizeof s->layout) != 0 ||
        s->vcpu.xsave_size != sb->xsave_size) {
        ev->error = -EINVAL;
        snprintf(ev->message, sizeof ev->message, "the snapshot was taken "
                 "from a %s", !same_image ? "different guest image"
                 : s->vcpu.xsave_size != sb->xsave_size
                     ? "vCPU with a different XSAVE area size"
                     : "sandbox with a different memory layout");
        return;
    }
    /* [S1] then [S2]: the settle's writes to guest memory are in the log. */
    int rc = settle(sb);
    if (collect_dirty(sb) < 0 || note_host_writes(sb) < 0)
        return fail_event(ev, AB_EV_RESTORED, ENOMEM, "restore");
    bool rebuilt = false;
    uint64_t tsc = 0;
    bool have_tsc = false;
    if (rc < 0) {
        /* KVM still holds an unfinished exit: replace the VM and vCPU.
         * Guest time carries on from where the old vCPU was (a new vCPU's
         * TSC would start near 0). */
        have_tsc = read_tsc(sb, &tsc) == 0;
        rc = vm_rebuild(sb, ev->message, sizeof ev->message);
        if (rc) {
            sb->base_id = 0;
            ev->error = rc;
            return;
        }
        sb->rebuilds++;
        rebuilt = true;
    }
    bool fast = !rebuilt && sb->base_id == s->id;
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
    /* The guest has not run since collect_dirty() reset KVM's log (or the
     * VM is new), and the pages just copied equal the snapshot: the log
     * starts clean. */
    memset(sb->dirty, 0, words * sizeof(uint64_t));
    const char *what = "";
    rc = vcpu_state_set(sb, &s->vcpu, &what);
    if (rc == 0 && have_tsc && write_tsc(sb, tsc) < 0) {
        rc = -EIO;
        what = "KVM_SET_MSRS(IA32_TSC)";
    }
    if (rc < 0) {
        sb->base_id = 0; /* memory is restored but the vCPU may not be */
        return fail_event(ev, AB_EV_RESTORED, -rc, what);
    }
    sb->base_id = s->id;
}

void ab_sandbox_inject_unsettled(ab_sandbox *sb, uint32_t n)
{
    sb->inject_unsettled = n;
}

uint64_t ab_sandbox_rebuilds(ab_sandbox *sb) { return sb->rebuilds; }

void ab_snapshot_free(ab_snapshot *s)
{
    if (s)
        free_snapshot(s);
}

uint64_t ab_snapshot_bytes(const ab_snapshot *s) { return s->bytes; }

void ab_snapshot_image_sha256(const ab_snapshot *s, uint8_t out[32])
{
    memcpy(out, s->image_sha256, sizeof s->image_sha256);
}
