/*
 * rawkvm.c - the raw KVM round trip of floor.c as a shared library.
 *
 * What a user of a *synchronous* sandbox does from async code is
 * `await asyncio.to_thread(sandbox.call, ...)`: a worker thread blocks in
 * KVM_RUN while the event loop waits for it. bench_call.py loads this library
 * with ctypes and times `await asyncio.to_thread(lib.rk_roundtrip)`, the best
 * such a design can do: one KVM_RUN per call and nothing else.
 *
 *   int  rk_open(char *err, size_t errlen)  create the VM (floor_vm.h) and
 *                                           enter it once; 0 or -1 (+ message)
 *   int  rk_roundtrip(void)                 one KVM_RUN ending in the guest's
 *                                           `out`; 0, or -errno / -1000-exit_reason
 *   void rk_close(void)                     tear the VM down
 *
 * One VM per process. rk_roundtrip may be called from any thread, one call at
 * a time (KVM serialises a vCPU's ioctls anyway).
 *
 * Build: gcc -O2 -shared -fPIC -o librawkvm.so rawkvm.c   (floor_vm.h beside it)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "floor_vm.h"

#define RK_EXPORT __attribute__((visibility("default")))

static jmp_buf setup_failed;       /* only used by rk_open, on its own thread */
static char setup_error[256];
static struct vm the_vm;
static int is_open;

/* floor_vm.h's error hook: only the setup path in rk_open can reach it. */
static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(setup_error, sizeof(setup_error), fmt, ap);
    va_end(ap);
    longjmp(setup_failed, 1);
}

RK_EXPORT int rk_roundtrip(void)
{
    if (ioctl(the_vm.vcpu_fd, KVM_RUN, NULL) < 0)
        return -errno;
    const struct kvm_run *run = the_vm.run;
    if (run->exit_reason != KVM_EXIT_IO || run->io.port != PORT_FLOOR ||
        run->io.direction != KVM_EXIT_IO_OUT)
        return -1000 - (int)run->exit_reason;
    return 0;
}

RK_EXPORT int rk_open(char *err, size_t errlen)
{
    if (is_open) {
        snprintf(err, errlen, "rawkvm: already open");
        return -1;
    }
    if (setjmp(setup_failed)) {
        snprintf(err, errlen, "rawkvm: %s", setup_error);
        return -1;
    }
    if (kvm.fd < 0)
        kvm_open();
    vm_setup(&the_vm, DEFAULT_MEM_MIB * MIB);
    is_open = 1;
    int rc = rk_roundtrip(); /* the first entry, which is much slower */
    if (rc < 0) {
        snprintf(err, errlen, "rawkvm: first KVM_RUN failed (%d)", rc);
        return -1;
    }
    return 0;
}

RK_EXPORT void rk_close(void)
{
    if (is_open) {
        vm_destroy(&the_vm);
        is_open = 0;
    }
}
