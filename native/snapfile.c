/* A snapshot's parts as bytes, for snapshot files (the file format itself,
 * its header and its checksum are Python's: src/aionub/_snapfile.py).
 *
 * The vCPU state travels as one record of KVM's own structures, which are
 * the kernel's fixed x86-64 ABI:
 *
 *   u32 xsave_size, u32 nmsrs,
 *   kvm_regs, kvm_sregs, kvm_fpu, kvm_xcrs, kvm_debugregs,
 *   kvm_vcpu_events, kvm_mp_state, kvm_msr_entry[nmsrs], xsave[xsave_size]
 *
 * Import treats every byte as hostile input: it checks each count and
 * size, that the MSRs are exactly the ones restore writes back, and that
 * the vCPU state is one a snapshot of ours can have (user mode, our page
 * tables and descriptor tables, runnable, not in SMM). Whatever else KVM
 * refuses when the state is loaded into a vCPU is an error then (spawn.c),
 * and whatever it accepts stays inside the VM. Guest memory is not checked:
 * like the guest code, it is the guest's (docs/security.md).
 */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE AB_PAGE_SIZE
#define MAX_XSAVE (1u << 20)
#define CR0_PE (1ull << 0)
#define CR0_PG (1ull << 31)
#define EFER_LMA (1ull << 10)

struct state_head {
    uint32_t xsave_size, nmsrs;
};

static size_t state_size(uint32_t xsave_size, uint32_t nmsrs)
{
    return sizeof(struct state_head) + sizeof(struct kvm_regs) +
           sizeof(struct kvm_sregs) + sizeof(struct kvm_fpu) +
           sizeof(struct kvm_xcrs) + sizeof(struct kvm_debugregs) +
           sizeof(struct kvm_vcpu_events) + sizeof(struct kvm_mp_state) +
           (size_t)nmsrs * sizeof(struct kvm_msr_entry) + xsave_size;
}

size_t ab_snapshot_state_size(const ab_snapshot *s)
{
    return state_size(s->vcpu.xsave_size, s->vcpu.msrs.header.nmsrs);
}

#define PUT(field)                                                            \
    do {                                                                      \
        memcpy(p, &(field), sizeof(field));                                   \
        p += sizeof(field);                                                   \
    } while (0)
#define GET(field)                                                            \
    do {                                                                      \
        memcpy(&(field), p, sizeof(field));                                   \
        p += sizeof(field);                                                   \
    } while (0)

int ab_snapshot_export_state(const ab_snapshot *s, uint8_t *out, size_t len)
{
    const struct vcpu_state *st = &s->vcpu;
    if (len != ab_snapshot_state_size(s))
        return -EINVAL;
    uint8_t *p = out;
    struct state_head head = {st->xsave_size, st->msrs.header.nmsrs};
    PUT(head);
    PUT(st->regs);
    PUT(st->sregs);
    PUT(st->fpu);
    PUT(st->xcrs);
    PUT(st->debugregs);
    PUT(st->events);
    PUT(st->mp_state);
    memcpy(p, st->msrs.entries, head.nmsrs * sizeof(struct kvm_msr_entry));
    p += head.nmsrs * sizeof(struct kvm_msr_entry);
    memcpy(p, st->xsave, st->xsave_size);
    return 0;
}

size_t ab_snapshot_present_size(const ab_snapshot *s)
{
    return map_words(s->npages) * sizeof(uint64_t);
}

void ab_snapshot_present(const ab_snapshot *s, uint8_t *out)
{
    memcpy(out, s->present, ab_snapshot_present_size(s));
}

const uint8_t *ab_snapshot_memory(const ab_snapshot *s) { return s->mem; }

void ab_snapshot_layout(const ab_snapshot *s, struct ab_layout *out)
{
    *out = s->layout;
}

static bool user_segment(const struct kvm_segment *seg)
{
    return seg->present && seg->dpl == 3 && (seg->selector & 3) == 3;
}

static int check_state(const struct vcpu_state *st, char *errbuf,
                       size_t errlen)
{
    uint32_t n;
    const uint32_t *indices = kvm_restore_msrs(&n);
    if (st->msrs.header.nmsrs != n)
        return ab_fail(errbuf, errlen, EINVAL, "the vCPU state holds %u "
                       "MSRs; this host restores %u", st->msrs.header.nmsrs, n);
    for (uint32_t i = 0; i < n; i++)
        if (st->msrs.entries[i].index != indices[i] ||
            st->msrs.entries[i].reserved)
            return ab_fail(errbuf, errlen, EINVAL, "MSR %u of the vCPU state "
                           "is 0x%x; this host restores 0x%x", i,
                           st->msrs.entries[i].index, indices[i]);
    if (st->xcrs.nr_xcrs > KVM_MAX_XCRS)
        return ab_fail(errbuf, errlen, EINVAL, "the vCPU state holds %u XCRs",
                       st->xcrs.nr_xcrs);
    if (st->mp_state.mp_state != KVM_MP_STATE_RUNNABLE)
        return ab_fail(errbuf, errlen, EINVAL, "the vCPU state is not "
                       "runnable (MP state %u)", st->mp_state.mp_state);
    if (st->events.smi.smm || st->events.smi.pending ||
        st->events.triple_fault.pending)
        return ab_fail(errbuf, errlen, EINVAL, "the vCPU state has SMM or a "
                       "triple fault pending");
    const struct kvm_sregs *sr = &st->sregs;
    if (!user_segment(&sr->cs) || !user_segment(&sr->ss) ||
        sr->cr3 != AB_PML4_ADDR || (sr->cr0 & (CR0_PE | CR0_PG)) !=
        (CR0_PE | CR0_PG) || !(sr->efer & EFER_LMA) ||
        sr->gdt.base != AB_GDT_ADDR || sr->idt.base != AB_IDT_ADDR ||
        sr->tr.base != AB_TSS_ADDR)
        return ab_fail(errbuf, errlen, EINVAL, "the vCPU state is not a "
                       "guest's at CPL3 on this layout's page and descriptor "
                       "tables");
    return 0;
}

static int import_state(struct vcpu_state *st, const uint8_t *state,
                        size_t len, char *errbuf, size_t errlen)
{
    struct state_head head;
    if (len < sizeof head)
        return ab_fail(errbuf, errlen, EINVAL, "the vCPU state is truncated");
    memcpy(&head, state, sizeof head);
    if (head.xsave_size < sizeof(struct kvm_xsave) || head.xsave_size > MAX_XSAVE)
        return ab_fail(errbuf, errlen, EINVAL, "the vCPU state's XSAVE area "
                       "size %u is not between %zu and %u", head.xsave_size,
                       sizeof(struct kvm_xsave), MAX_XSAVE);
    if (head.nmsrs > AB_MAX_RESTORE_MSRS)
        return ab_fail(errbuf, errlen, EINVAL, "the vCPU state holds %u MSRs",
                       head.nmsrs);
    if (len != state_size(head.xsave_size, head.nmsrs))
        return ab_fail(errbuf, errlen, EINVAL, "the vCPU state is %zu bytes, "
                       "not %zu", len, state_size(head.xsave_size, head.nmsrs));
    if (vcpu_state_alloc(st, head.xsave_size) < 0)
        return ab_fail(errbuf, errlen, ENOMEM, "out of memory");
    const uint8_t *p = state + sizeof head;
    GET(st->regs);
    GET(st->sregs);
    GET(st->fpu);
    GET(st->xcrs);
    GET(st->debugregs);
    GET(st->events);
    GET(st->mp_state);
    st->msrs.header.nmsrs = head.nmsrs;
    st->msrs.header.pad = 0;
    memcpy(st->msrs.entries, p, head.nmsrs * sizeof(struct kvm_msr_entry));
    p += head.nmsrs * sizeof(struct kvm_msr_entry);
    memcpy(st->xsave, p, head.xsave_size);
    return check_state(st, errbuf, errlen);
}

int ab_snapshot_import(const struct ab_layout *layout,
                       const uint8_t image_sha256[32], const uint8_t *state,
                       size_t state_len, const uint8_t *present,
                       size_t present_len, const uint8_t *pages,
                       size_t pages_len, ab_snapshot **out, char *errbuf,
                       size_t errlen)
{
    *out = NULL;
    int rc = kvm_fd(errbuf, errlen);
    if (rc < 0)
        return rc;
    struct ab_config cfg = {
        .memory_size = layout->memory_size, .stack_size = layout->stack_size,
        .input_size = layout->input_size, .output_size = layout->output_size,
    };
    rc = layout_check(&cfg, layout, errbuf, errlen);
    if (rc)
        return rc;
    uint64_t npages = layout->memory_size / PAGE;
    size_t words = map_words(npages);
    if (present_len != words * sizeof(uint64_t))
        return ab_fail(errbuf, errlen, EINVAL, "the page map is %zu bytes, "
                       "not %zu", present_len, words * sizeof(uint64_t));
    struct ab_snapshot *s = calloc(1, sizeof *s);
    if (!s)
        return ab_fail(errbuf, errlen, ENOMEM, "out of memory");
    s->backing_fd = -1;
    s->present = malloc(present_len);
    if (!s->present) {
        rc = ab_fail(errbuf, errlen, ENOMEM, "out of memory");
        goto fail;
    }
    memcpy(s->present, present, present_len);
    uint64_t held = 0;
    for (size_t w = 0; w < words; w++)
        held += (uint64_t)__builtin_popcountll(s->present[w]);
    if (npages % AB_BITS &&
        (s->present[words - 1] >> (npages % AB_BITS)) != 0) {
        rc = ab_fail(errbuf, errlen, EINVAL, "the page map marks pages beyond "
                     "the end of guest memory");
        goto fail;
    }
    if (pages_len != held * PAGE) {
        rc = ab_fail(errbuf, errlen, EINVAL, "the page map marks %llu pages "
                     "but %zu bytes of pages follow",
                     (unsigned long long)held, pages_len);
        goto fail;
    }
    rc = import_state(&s->vcpu, state, state_len, errbuf, errlen);
    if (rc)
        goto fail;
    memcpy(s->image_sha256, image_sha256, sizeof s->image_sha256);
    s->layout = *layout;
    s->npages = npages;
    s->bytes = held * PAGE;
    /* The pages go straight into the shared backing, in page order. */
    int fd = -1;
    rc = backing_create(layout->memory_size, &fd);
    const uint8_t *next = pages;
    for (uint64_t p = 0; rc == 0 && p < npages;) {
        if (!test_bit(s->present, p)) {
            p++;
            continue;
        }
        uint64_t first = p;
        while (p < npages && test_bit(s->present, p))
            p++;
        rc = backing_write(fd, next, (p - first) * PAGE, first * PAGE);
        next += (p - first) * PAGE;
    }
    if (rc == 0)
        rc = backing_seal_and_view(s, fd);
    if (rc) {
        if (fd >= 0)
            close(fd);
        ab_fail(errbuf, errlen, -rc, "cannot build the snapshot's memory: %s",
                strerror(-rc));
        goto fail;
    }
    s->id = snapshot_new_id();
    *out = s;
    return 0;
fail:
    ab_snapshot_free(s);
    return rc;
}
