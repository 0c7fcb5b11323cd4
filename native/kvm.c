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

int ab_kvm_probe(char *errbuf, size_t errlen)
{
    int fd = kvm_fd(errbuf, errlen);
    return fd < 0 ? fd : 0;
}
