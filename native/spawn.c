/* Sandboxes spawned from a snapshot: no guest initialisation, no copy of
 * guest memory. The new sandbox's memory is the snapshot's shared backing
 * (backing.c) mapped copy-on-write, and its vCPU starts with the
 * snapshot's state, loaded on its own vCPU thread right after the VM is
 * created (the CREATE command, vcpu.c).
 *
 * Bookkeeping starts as if the snapshot had just been restored here:
 * `written` is the snapshot's set of held pages (the others are holes in
 * the backing, zero), `dirty` is empty and `base_id` is the snapshot's, so
 * restoring the spawning snapshot takes the fast path and copies back only
 * the pages written since. Copying was chosen over resetting them with
 * MADV_DONTNEED, which would hand them back to the shared backing and free
 * the private copies, but costs a page fault through KVM at the next touch
 * of each: measured here (a spawned demo sandbox, counter() then restore
 * then noop(), medians of 300), copying took 106-109 us for the restore and
 * 101-104 us for the next call, MADV_DONTNEED 127 and 126 us. A pool keeps
 * its sandboxes busy, so their written pages would soon be private again.
 */
#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define PAGE AB_PAGE_SIZE
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14 */
#endif
#define PTE_GUEST_WRITABLE 0x7ull /* present, writable, user */

/* Give the new sandbox its own copy, now, of every page the snapshot holds
 * that will be written: those the guest can write (the leaf page-table
 * entry is present, writable and user; the tables are at AB_PT_ADDR, one
 * 8-byte entry per page): data, bss, buffers, heap and stack; and the page
 * tables themselves, whose accessed and dirty bits change as the guest
 * touches pages. What stays shared is what nothing writes: code, read-only
 * data, the upper paging levels, descriptor tables and stubs.
 *
 * Why: once KVM has mapped a page of the shared image for a read, the
 * first write to it replaces a present host page-table entry
 * (copy-on-write), and the kernel announces that to the MMU notifier of
 * every VM in the process, holding up page faults in all of them. With
 * thousands of sandboxes in one process, first calls then take
 * milliseconds each (bench_scale.py --spawn measures it). Populating a
 * page that is not mapped yet replaces nothing, so it notifies nobody.
 * Best effort: without MADV_POPULATE_WRITE (Linux < 5.14) the pages are
 * copied at their first write. */
static bool written_soon(const struct ab_snapshot *s, uint64_t p)
{
    uint64_t npts = (s->layout.memory_size + 0x1fffff) / 0x200000;
    if (p >= AB_PT_ADDR / PAGE && p < AB_PT_ADDR / PAGE + npts)
        return true;
    /* SAFETY: the entries are read from the snapshot's own memory (a
     * loaded file may hold anything there: this only decides which pages
     * are copied early), within bounds: memory_check_config() guarantees
     * at least 2 MiB, and AB_PT_ADDR + 8 * npages is far below that. */
    uint64_t pte;
    memcpy(&pte, s->mem + AB_PT_ADDR + p * 8, sizeof pte);
    return (pte & PTE_GUEST_WRITABLE) == PTE_GUEST_WRITABLE;
}

static void copy_written_soon(struct ab_sandbox *sb,
                              const struct ab_snapshot *s)
{
    for (uint64_t p = 0; p < s->npages;) {
        uint64_t first = p;
        while (p < s->npages && test_bit(s->present, p) && written_soon(s, p))
            p++;
        if (p > first)
            madvise(sb->mem + first * PAGE, (p - first) * PAGE,
                    MADV_POPULATE_WRITE);
        else
            p++;
    }
}

int layout_check(const struct ab_config *cfg, const struct ab_layout *lay,
                 char *errbuf, size_t errlen)
{
    int rc = memory_check_config(cfg, errbuf, errlen);
    if (rc)
        return rc;
    /* The memory options a layout records must be the config's. */
    const struct { const char *name; uint64_t want, have; } fields[] = {
        {"memory_size", lay->memory_size, cfg->memory_size},
        {"stack_size", lay->stack_size, cfg->stack_size},
        {"input_size", lay->input_size, cfg->input_size},
        {"output_size", lay->output_size, cfg->output_size},
    };
    for (size_t i = 0; i < sizeof fields / sizeof *fields; i++)
        if (fields[i].want != fields[i].have)
            return ab_fail(errbuf, errlen, EINVAL,
                           "config: the snapshot was taken with %s=%llu, "
                           "not %llu", fields[i].name,
                           (unsigned long long)fields[i].want,
                           (unsigned long long)fields[i].have);
    /* The image span as elf_parse() would accept it, then every other
     * field exactly as memory_layout() derives it. */
    uint64_t limit = memory_image_limit(cfg);
    if (lay->image_start < AB_IMAGE_BASE || lay->image_start >= lay->image_end ||
        lay->image_end > limit || (lay->image_start & (PAGE - 1)) ||
        (lay->image_end & (PAGE - 1)) || lay->entry < lay->image_start ||
        lay->entry >= lay->image_end)
        return ab_fail(errbuf, errlen, EINVAL, "config: the snapshot's "
                       "image span [0x%llx, 0x%llx) or entry 0x%llx is not "
                       "valid for this memory layout",
                       (unsigned long long)lay->image_start,
                       (unsigned long long)lay->image_end,
                       (unsigned long long)lay->entry);
    struct ab_image img = {
        .entry = lay->entry, .start = lay->image_start, .end = lay->image_end,
    };
    struct ab_layout derived;
    rc = memory_layout(cfg, &img, &derived, errbuf, errlen);
    if (rc)
        return rc;
    if (memcmp(&derived, lay, sizeof derived) != 0)
        return ab_fail(errbuf, errlen, EINVAL, "config: the snapshot's memory "
                       "layout is not the one its options give");
    return 0;
}

int ab_sandbox_spawn(const struct ab_config *config, ab_snapshot *snap,
                     ab_sandbox **out, char *errbuf, size_t errlen)
{
    *out = NULL;
    int rc = kvm_fd(errbuf, errlen);
    if (rc < 0)
        return rc;
    rc = layout_check(config, &snap->layout, errbuf, errlen);
    if (rc)
        return rc;
    rc = snapshot_share(snap);
    if (rc)
        return ab_fail(errbuf, errlen, -rc, "cannot share the snapshot's "
                       "memory: %s", strerror(-rc));
    struct ab_sandbox *sb;
    rc = sandbox_alloc(config, &snap->layout, &sb, errbuf, errlen);
    if (rc)
        return rc;
    /* SAFETY: the backing is sealed (never changes size or contents), so
     * the private mapping sees the snapshot until the guest writes a page,
     * and from then on its own copy. The mapping keeps the memfd alive
     * after the snapshot closes it. */
    void *mem = mmap(NULL, snap->layout.memory_size, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_NORESERVE, snap->backing_fd, 0);
    if (mem == MAP_FAILED) {
        rc = ab_fail(errbuf, errlen, errno, "cannot map %llu bytes of guest "
                     "memory: %s", (unsigned long long)snap->layout.memory_size,
                     strerror(errno));
        goto fail;
    }
    sb->mem = mem;
    copy_written_soon(sb, snap);
    memcpy(sb->image_sha256, snap->image_sha256, sizeof sb->image_sha256);
    sb->npages = snap->npages;
    size_t words = map_words(sb->npages);
    sb->written = malloc(words * sizeof(uint64_t));
    sb->dirty = calloc(words, sizeof(uint64_t));
    if (!sb->written || !sb->dirty) {
        rc = ab_fail(errbuf, errlen, ENOMEM, "out of memory");
        goto fail;
    }
    memcpy(sb->written, snap->present, words * sizeof(uint64_t));
    sb->dirty_log = true;
    sb->base_id = snap->id;
    /* Read by the vCPU thread at CREATE (after ab_sandbox_start's seq_cst
     * store); the caller keeps the snapshot alive until that event. */
    sb->spawn_from = snap;
    rc = sandbox_start_thread(sb, errbuf, errlen);
    if (rc)
        goto fail;
    *out = sb;
    return 0;
fail:
    sandbox_free(sb);
    return rc;
}

/* On the vCPU thread, right after vm_create() for a spawned sandbox. */
void spawn_load_state(struct ab_sandbox *sb, struct ab_event *ev)
{
    const struct ab_snapshot *s = sb->spawn_from;
    sb->spawn_from = NULL;
    memset(ev, 0, sizeof *ev);
    ev->kind = AB_EV_SPAWNED;
    int rc = 0;
    const char *what = "";
    if (s->vcpu.xsave_size != sb->xsave_size) {
        rc = -EINVAL;
        snprintf(ev->message, sizeof ev->message, "the snapshot's XSAVE area "
                 "is %u bytes, this vCPU's %u", s->vcpu.xsave_size,
                 sb->xsave_size);
    } else {
        rc = vcpu_state_set(sb, &s->vcpu, &what);
        if (rc < 0)
            snprintf(ev->message, sizeof ev->message,
                     "KVM refused the snapshot's vCPU state: %s: %s", what,
                     strerror(-rc));
    }
    if (rc < 0) {
        /* No call may run on a vCPU in a state nobody chose: without a
         * VM, every later command reports that it does not exist. */
        vm_destroy(sb);
        ev->kind = AB_EV_CREATE_FAILED;
        ev->error = rc;
    }
}
