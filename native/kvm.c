/* The process-wide /dev/kvm handle: opened once, shared by all sandboxes. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#define MAX_CPUID_ENTRIES 256

static pthread_once_t once = PTHREAD_ONCE_INIT;
static int kvm = -1;
static int open_error;          /* errno of the failure, or 0             */
static char open_message[160];  /* what failed, for KvmUnavailable          */
static int mmap_size;
static struct {
    struct kvm_cpuid2 header;
    struct kvm_cpuid_entry2 entries[MAX_CPUID_ENTRIES];
} cpuid;
static bool have_xsave2;        /* KVM_GET_XSAVE2 exists                    */
static bool have_sync_regs;     /* kvm_run.s.regs takes regs, sregs, events */
static bool have_fsgsbase;      /* supported CPUID.(7,0):EBX bit 0            */
static struct {
    struct kvm_msr_list header;
    uint32_t indices[AB_MAX_MSRS];
} msr_list;
static uint32_t restore_msrs[AB_MAX_RESTORE_MSRS];
static uint32_t nrestore_msrs;

/* The MSRs a snapshot saves and restore writes back (besides the ones that
 * travel in kvm_sregs: EFER, and the FS/GS bases, which sregs carries as
 * fs.base/gs.base and which is also what wrfsbase/wrgsbase change here).
 *
 * A guest runs at CPL3 where rdmsr/wrmsr raise #GP, so it cannot write any
 * MSR directly; the only MSR-held state CPL3 code changes is the FS/GS
 * base (wrfsbase/wrgsbase). The list below is what it can observe or
 * what CPL0 code would use on its behalf, restored as defence in depth so
 * that no earlier user's value can survive even if a future KVM or a
 * future stub let one be written:
 *   KERNEL_GS_BASE        swapgs (#GP at CPL3 here, but the value swaps in)
 *   STAR, LSTAR, CSTAR,   syscall/sysret targets and flag mask (kvm_pvm
 *   SFMASK                 transfers a CPL3 `syscall` to LSTAR)
 *   SYSENTER_CS/ESP/EIP   sysenter targets
 *   PAT                   memory types of every guest mapping
 *   TSC_AUX               read by rdtscp/rdpid
 * Only those KVM lists in KVM_GET_MSR_INDEX_LIST are handled: KVM omits
 * the ones its vCPU model lacks (here TSC_AUX: the supported CPUID has no
 * RDTSCP; kvm_pvm nevertheless runs rdtscp natively and returns the host's
 * own TSC_AUX, see docs/security.md). IA32_TSC is deliberately not
 * restored: guest time keeps moving forward across a restore. */
static const uint32_t restore_msr_candidates[] = {
    0xc0000100, /* FS_BASE (sregs carries it too)                          */
    0xc0000101, /* GS_BASE (likewise)                                      */
    0xc0000102, /* KERNEL_GS_BASE                                          */
    0xc0000081, /* STAR                                                    */
    0xc0000082, /* LSTAR                                                   */
    0xc0000083, /* CSTAR                                                   */
    0xc0000084, /* SFMASK                                                  */
    0x00000174, /* SYSENTER_CS                                             */
    0x00000175, /* SYSENTER_ESP                                            */
    0x00000176, /* SYSENTER_EIP                                            */
    0x00000277, /* PAT                                                     */
    0xc0000103, /* TSC_AUX                                                 */
};
_Static_assert(sizeof restore_msr_candidates / sizeof *restore_msr_candidates
                   <= AB_MAX_RESTORE_MSRS, "AB_MAX_RESTORE_MSRS is too small");

int ab_fail(char *buf, size_t len, int err, const char *fmt, ...)
{
    if (buf && len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(buf, len, fmt, ap);
        va_end(ap);
    }
    return -err;
}

/* AIONUB_KVM_DEVICE overrides the device path (tests use it to check the
 * error for a missing device). */
static const char *device_path(void)
{
    const char *path = getenv("AIONUB_KVM_DEVICE");
    return path && *path ? path : "/dev/kvm";
}

static void open_kvm(void)
{
    const char *path = device_path();
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        open_error = errno;
        snprintf(open_message, sizeof open_message, "cannot open %s: %s", path,
                 strerror(errno));
        return;
    }
    int version = ioctl(fd, KVM_GET_API_VERSION, 0);
    if (version != KVM_API_VERSION) {
        open_error = ENOTSUP;
        snprintf(open_message, sizeof open_message,
                 "%s speaks KVM API version %d, aionub needs %d", path, version,
                 KVM_API_VERSION);
        close(fd);
        return;
    }
    if (ioctl(fd, KVM_CHECK_EXTENSION, KVM_CAP_IMMEDIATE_EXIT) <= 0) {
        open_error = ENOTSUP;
        snprintf(open_message, sizeof open_message,
                 "%s lacks KVM_CAP_IMMEDIATE_EXIT", path);
        close(fd);
        return;
    }
    mmap_size = ioctl(fd, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (mmap_size < (int)sizeof(struct kvm_run)) {
        open_error = errno ? errno : EINVAL;
        snprintf(open_message, sizeof open_message,
                 "KVM_GET_VCPU_MMAP_SIZE failed: %s", strerror(open_error));
        close(fd);
        return;
    }
    cpuid.header.nent = MAX_CPUID_ENTRIES;
    if (ioctl(fd, KVM_GET_SUPPORTED_CPUID, &cpuid) < 0) {
        open_error = errno;
        snprintf(open_message, sizeof open_message,
                 "KVM_GET_SUPPORTED_CPUID failed: %s", strerror(errno));
        close(fd);
        return;
    }
    for (uint32_t i = 0; i < cpuid.header.nent; i++) {
        const struct kvm_cpuid_entry2 *e = &cpuid.entries[i];
        if (e->function == 7 && e->index == 0)
            have_fsgsbase = e->ebx & 1u;
    }
    have_xsave2 = ioctl(fd, KVM_CHECK_EXTENSION, KVM_CAP_XSAVE2) > 0;
    int sync = ioctl(fd, KVM_CHECK_EXTENSION, KVM_CAP_SYNC_REGS);
    const int sync_wanted =
        KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS | KVM_SYNC_X86_EVENTS;
    have_sync_regs = sync > 0 && (sync & sync_wanted) == sync_wanted;
    /* Everything restore needs to read and write the whole vCPU state. */
    static const struct { int cap; const char *name; } needed[] = {
        {KVM_CAP_XSAVE, "KVM_CAP_XSAVE"},
        {KVM_CAP_XCRS, "KVM_CAP_XCRS"},
        {KVM_CAP_DEBUGREGS, "KVM_CAP_DEBUGREGS"},
        {KVM_CAP_VCPU_EVENTS, "KVM_CAP_VCPU_EVENTS"},
        {KVM_CAP_MP_STATE, "KVM_CAP_MP_STATE"},
    };
    for (size_t i = 0; i < sizeof needed / sizeof *needed; i++) {
        if (ioctl(fd, KVM_CHECK_EXTENSION, needed[i].cap) <= 0) {
            open_error = ENOTSUP;
            snprintf(open_message, sizeof open_message, "%s lacks %s", path,
                     needed[i].name);
            close(fd);
            return;
        }
    }
    msr_list.header.nmsrs = AB_MAX_MSRS;
    if (ioctl(fd, KVM_GET_MSR_INDEX_LIST, &msr_list) < 0) {
        open_error = errno;
        snprintf(open_message, sizeof open_message,
                 "KVM_GET_MSR_INDEX_LIST failed: %s", strerror(errno));
        close(fd);
        return;
    }
    for (size_t c = 0; c < sizeof restore_msr_candidates /
                               sizeof *restore_msr_candidates; c++)
        for (uint32_t i = 0; i < msr_list.header.nmsrs; i++)
            if (msr_list.indices[i] == restore_msr_candidates[c])
                restore_msrs[nrestore_msrs++] = restore_msr_candidates[c];
    kvm = fd;
}

int kvm_fd(char *errbuf, size_t errlen)
{
    pthread_once(&once, open_kvm);
    if (kvm < 0)
        return ab_fail(errbuf, errlen, open_error, "%s", open_message);
    return kvm;
}

int kvm_vcpu_mmap_size(void) { return mmap_size; }

const struct kvm_cpuid2 *kvm_supported_cpuid(void) { return &cpuid.header; }

bool kvm_have_xsave2(void) { return have_xsave2; }

bool kvm_have_sync_regs(void) { return have_sync_regs; }

bool kvm_have_fsgsbase(void) { return have_fsgsbase; }

const uint32_t *kvm_msr_index_list(uint32_t *n)
{
    *n = msr_list.header.nmsrs;
    return msr_list.indices;
}

const uint32_t *kvm_restore_msrs(uint32_t *n)
{
    *n = nrestore_msrs;
    return restore_msrs;
}

static int copy_list(const uint32_t *list, uint32_t n, uint32_t *out,
                     uint32_t max)
{
    if (n > max)
        return -ENOSPC;
    memcpy(out, list, n * sizeof *list);
    return (int)n;
}

int ab_msr_index_list(uint32_t *out, uint32_t max)
{
    int rc = kvm_fd(NULL, 0);
    if (rc < 0)
        return rc;
    return copy_list(msr_list.indices, msr_list.header.nmsrs, out, max);
}

int ab_restore_msr_list(uint32_t *out, uint32_t max)
{
    int rc = kvm_fd(NULL, 0);
    if (rc < 0)
        return rc;
    return copy_list(restore_msrs, nrestore_msrs, out, max);
}

/* The XSAVE components the guest's CPUID (the supported one, which every
 * vCPU gets) describes: leaf 0xD sub-leaf i gives component i's size (eax)
 * and its offset in the standard format (ebx); ecx bit 0 marks supervisor
 * components, which the user-format buffer of KVM_GET_XSAVE2 never holds. */
int ab_xsave_components(struct ab_xsave_component *out, uint32_t max)
{
    int rc = kvm_fd(NULL, 0);
    if (rc < 0)
        return rc;
    uint32_t n = 0;
    for (uint32_t i = 0; i < cpuid.header.nent; i++) {
        const struct kvm_cpuid_entry2 *e = &cpuid.entries[i];
        if (e->function != 0xd || e->index < 2 || e->index > 63 ||
            e->eax == 0 || (e->ecx & 1))
            continue;
        if (n == max)
            return -ENOSPC;
        out[n++] = (struct ab_xsave_component){
            .index = e->index, .offset = e->ebx, .size = e->eax};
    }
    return (int)n;
}

int ab_kvm_probe(char *errbuf, size_t errlen)
{
    int fd = kvm_fd(errbuf, errlen);
    return fd < 0 ? fd : 0;
}
