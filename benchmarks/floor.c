/*
 * floor.c - raw KVM floors for the aionub benchmarks.
 *
 * Measures what the hardware and kernel cost with nothing of aionub in the
 * way, so that every aionub benchmark can report a ratio to the floor taken in
 * the same run on the same machine:
 *
 *   floor roundtrip N          N KVM_RUN round trips (guest `out`) on this thread
 *   floor roundtrip-thread N   the same through a dedicated vCPU thread
 *                              (futex request, eventfd completion)
 *   floor threads T N          T threads, one VM each, N round trips each
 *   floor create N [MEM_MIB]   VM creation up to the first guest `out`
 *   floor kill N               pthread_kill -> KVM_RUN returning EINTR
 *
 * Each subcommand prints one line of JSON on stdout. Latencies are
 * per-iteration samples from clock_gettime(CLOCK_MONOTONIC), summarised by
 * nearest-rank percentiles.
 *
 * The guest runs at CPL3, as aionub's guests do: on nested "pagetable-based"
 * KVM (kvm_pvm) CPL0 code is emulated, so a CPL0 floor would be meaningless.
 * The setup mirrors aionub's layout (docs/abi.md) without its IDT, which no
 * floor needs: a guest exception here is a triple fault (KVM_EXIT_SHUTDOWN)
 * and is reported as an error.
 *
 * Build: gcc -O2 -o floor floor.c -lpthread
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <linux/kvm.h>

/* ------------------------------------------------------------------------ */
/* Guest memory layout (guest physical == guest virtual)                    */
/* ------------------------------------------------------------------------ */

#define PAGE_SIZE_4K    0x1000ull
#define MIB             (1ull << 20)
#define LARGE_PAGE      (2 * MIB)          /* memory covered by one page table */

#define PML4_ADDR       0x001000ull
#define PDPT_ADDR       0x002000ull
#define PD_ADDR         0x003000ull
#define PT_ADDR         0x004000ull        /* one page table per 2 MiB */
#define MAX_PTS         128ull             /* => at most 256 MiB of guest memory */
#define GDT_ADDR        0x084000ull
#define TSS_ADDR        0x086000ull        /* TSS + I/O bitmap: 3 pages */
#define KSTACK_TOP      0x08c000ull        /* CPL0 stack top (TSS.RSP0) */
#define SYSTEM_END      0x100000ull        /* below: supervisor-only pages */
#define CODE_ADDR       0x100000ull        /* user code page, read + execute */

#define DEFAULT_MEM_MIB 8ull
#define MAX_MEM_MIB     (MAX_PTS * LARGE_PAGE / MIB)

/* Page-table entry bits. */
#define PTE_P  (1ull << 0)
#define PTE_W  (1ull << 1)
#define PTE_U  (1ull << 2)
#define PTE_NX (1ull << 63)

/* GDT selectors. User selectors carry RPL 3. */
#define SEL_KCODE 0x08
#define SEL_KDATA 0x10
#define SEL_UDATA (0x18 | 3)
#define SEL_UCODE (0x20 | 3)
#define SEL_TSS   0x28
#define GDT_ENTRIES 7                      /* null, 4 segments, 16-byte TSS */

/* 64-bit TSS: RSP0 at offset 4, I/O map base at offset 102. The I/O
 * permission bitmap (one bit per port, 1 = denied) follows the 104-byte TSS
 * and must be followed by a 0xff byte that the TSS limit still covers. */
#define TSS_SIZE        104u
#define TSS_RSP0_OFF    4u
#define TSS_IOMAP_OFF   102u
#define IOPB_BYTES      (65536u / 8u)
#define TSS_LIMIT       (TSS_SIZE + IOPB_BYTES) /* offset of the 0xff byte */

/* The only ports CPL3 may use: aionub's hypercall block. The CPU checks one
 * bitmap bit per byte accessed, so a 4-byte `out 0xE4, eax` needs 0xE4-0xE7
 * open; 0xE0-0xE7 lets a 4-byte `out` reach each hypercall port 0xE0-0xE4. */
#define PORT_OPEN_FIRST 0xE0
#define PORT_OPEN_LAST  0xE7
#define PORT_FLOOR      0xE1

/* Control registers. */
#define CR0_PE (1ull << 0)
#define CR0_MP (1ull << 1)
#define CR0_NE (1ull << 5)
#define CR0_WP (1ull << 16)
#define CR0_PG (1ull << 31)
#define CR4_PAE        (1ull << 5)
#define CR4_OSFXSR     (1ull << 9)
#define CR4_OSXMMEXCPT (1ull << 10)
#define EFER_LME (1ull << 8)
#define EFER_LMA (1ull << 10)
#define EFER_NXE (1ull << 11)

/*
 * Guest code at CODE_ADDR:
 *
 *   loop: inc eax            ; counts round trips, checked by the host
 *         out 0xE1, eax      ; one VM exit
 *         jmp loop
 *   spin: jmp spin           ; CPL3 busy loop for `kill`
 */
static const uint8_t GUEST_CODE[] = {
    0xff, 0xc0,             /* inc eax      */
    0xe7, PORT_FLOOR,       /* out 0xE1,eax */
    0xeb, 0xfa,             /* jmp loop     */
    0xeb, 0xfe,             /* spin: jmp $  */
};
#define GUEST_LOOP_ADDR (CODE_ADDR + 0)
#define GUEST_SPIN_ADDR (CODE_ADDR + 6)

#define WARMUP_RUNS 1000
#define MAX_COUNT   10000000L
#define MAX_THREADS 64L
#define KILL_RESEND_NS 50000ull   /* re-send the signal every 50 us */
#define KILL_SETTLE_NS 1000000ull /* let the guest reach its loop: 1 ms */

/* ------------------------------------------------------------------------ */
/* Errors, time, futex                                                      */
/* ------------------------------------------------------------------------ */

static void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("floor: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

/* ioctl that must succeed; returns its (non-negative) result. */
static int xioctl(int fd, unsigned long request, void *arg, const char *name)
{
    int rc = ioctl(fd, request, arg);
    if (rc < 0)
        die("%s failed: %s", name, strerror(errno));
    return rc;
}

static inline uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void sleep_ns(uint64_t ns)
{
    struct timespec ts = { .tv_sec = ns / 1000000000ull, .tv_nsec = ns % 1000000000ull };
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* From <linux/futex.h>; spelled out to keep this file to libc + linux/kvm.h. */
#define FUTEX_WAIT_PRIVATE_OP 128 /* FUTEX_WAIT | FUTEX_PRIVATE_FLAG */
#define FUTEX_WAKE_PRIVATE_OP 129 /* FUTEX_WAKE | FUTEX_PRIVATE_FLAG */

/* Sleep while *word == expected (or until the relative timeout, if any). */
static void futex_wait(_Atomic uint32_t *word, uint32_t expected, uint64_t timeout_ns)
{
    struct timespec ts = { .tv_sec = timeout_ns / 1000000000ull,
                           .tv_nsec = timeout_ns % 1000000000ull };
    syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE_OP, expected,
            timeout_ns ? &ts : NULL, NULL, 0);
}

static void futex_wake(_Atomic uint32_t *word)
{
    syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE_OP, INT_MAX, NULL, NULL, 0);
}

/* ------------------------------------------------------------------------ */
/* /dev/kvm, opened once per process                                        */
/* ------------------------------------------------------------------------ */

static struct {
    int fd;
    size_t run_mmap_size;
    struct kvm_cpuid2 *cpuid; /* KVM_GET_SUPPORTED_CPUID, fetched once */
} kvm = { .fd = -1 };

static void kvm_fetch_supported_cpuid(void)
{
    for (uint32_t nent = 64; nent <= 4096; nent *= 2) {
        struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + nent * sizeof(c->entries[0]));
        if (!c)
            die("out of memory");
        c->nent = nent;
        if (ioctl(kvm.fd, KVM_GET_SUPPORTED_CPUID, c) == 0) {
            kvm.cpuid = c;
            return;
        }
        int err = errno;
        free(c);
        if (err != E2BIG)
            die("KVM_GET_SUPPORTED_CPUID failed: %s", strerror(err));
    }
    die("KVM_GET_SUPPORTED_CPUID failed: more than 4096 entries");
}

static void kvm_open(void)
{
    kvm.fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm.fd < 0)
        die("cannot open /dev/kvm: %s", strerror(errno));
    int version = xioctl(kvm.fd, KVM_GET_API_VERSION, NULL, "KVM_GET_API_VERSION");
    if (version != KVM_API_VERSION)
        die("KVM_GET_API_VERSION returned %d, expected %d", version, KVM_API_VERSION);
    if (ioctl(kvm.fd, KVM_CHECK_EXTENSION, KVM_CAP_IMMEDIATE_EXIT) <= 0)
        die("KVM_CHECK_EXTENSION: KVM_CAP_IMMEDIATE_EXIT is not supported");
    kvm.run_mmap_size = (size_t)xioctl(kvm.fd, KVM_GET_VCPU_MMAP_SIZE, NULL,
                                       "KVM_GET_VCPU_MMAP_SIZE");
    kvm_fetch_supported_cpuid();
}

/* ------------------------------------------------------------------------ */
/* One VM with one vCPU                                                     */
/* ------------------------------------------------------------------------ */

struct vm {
    int vm_fd;
    int vcpu_fd;
    uint8_t *mem;
    size_t mem_size;
    struct kvm_run *run;
};

/* KVM_CREATE_VM, guest memory, memory slot, vCPU, kvm_run mapping, CPUID. */
static void vm_create(struct vm *vm, size_t mem_size)
{
    vm->mem_size = mem_size;
    vm->vm_fd = xioctl(kvm.fd, KVM_CREATE_VM, NULL, "KVM_CREATE_VM");

    vm->mem = mmap(NULL, mem_size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (vm->mem == MAP_FAILED)
        die("mmap of %zu bytes of guest memory failed: %s", mem_size, strerror(errno));

    struct kvm_userspace_memory_region region = {
        .slot = 0,
        .guest_phys_addr = 0,
        .memory_size = mem_size,
        .userspace_addr = (uint64_t)(uintptr_t)vm->mem,
    };
    xioctl(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &region, "KVM_SET_USER_MEMORY_REGION");

    vm->vcpu_fd = xioctl(vm->vm_fd, KVM_CREATE_VCPU, (void *)0, "KVM_CREATE_VCPU");
    vm->run = mmap(NULL, kvm.run_mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED,
                   vm->vcpu_fd, 0);
    if (vm->run == MAP_FAILED)
        die("mmap of the vCPU's kvm_run failed: %s", strerror(errno));

    xioctl(vm->vcpu_fd, KVM_SET_CPUID2, kvm.cpuid, "KVM_SET_CPUID2");
}

static void vm_destroy(struct vm *vm)
{
    munmap(vm->run, kvm.run_mmap_size);
    close(vm->vcpu_fd);
    close(vm->vm_fd);
    munmap(vm->mem, vm->mem_size);
}

/*
 * 4-level identity map with 4 KiB pages, one page table per 2 MiB.
 * The upper levels carry U|W so that the leaf entries alone decide access:
 *   page 0                       not present (null dereferences fault)
 *   [4 KiB, SYSTEM_END)          supervisor, RW, NX (tables, GDT, TSS, CPL0 stack)
 *   CODE_ADDR                    user, read-only, executable
 *   everything else              user, RW, NX
 */
static void guest_write_page_tables(uint8_t *mem, size_t mem_size)
{
    uint64_t *pml4 = (uint64_t *)(mem + PML4_ADDR);
    uint64_t *pdpt = (uint64_t *)(mem + PDPT_ADDR);
    uint64_t *pd = (uint64_t *)(mem + PD_ADDR);
    uint64_t *pt = (uint64_t *)(mem + PT_ADDR);
    const uint64_t table = PTE_P | PTE_W | PTE_U;

    pml4[0] = PDPT_ADDR | table;
    pdpt[0] = PD_ADDR | table;
    for (uint64_t i = 0; i < mem_size / LARGE_PAGE; i++)
        pd[i] = (PT_ADDR + i * PAGE_SIZE_4K) | table;

    for (uint64_t addr = 0; addr < mem_size; addr += PAGE_SIZE_4K) {
        uint64_t pte;
        if (addr == 0)
            pte = 0;
        else if (addr < SYSTEM_END)
            pte = addr | PTE_P | PTE_W | PTE_NX;
        else if (addr == CODE_ADDR)
            pte = addr | PTE_P | PTE_U;
        else
            pte = addr | PTE_P | PTE_W | PTE_U | PTE_NX;
        pt[addr / PAGE_SIZE_4K] = pte;
    }
}

/* A legacy GDT descriptor. access = P|DPL|S|type, flags = G|D/B|L. */
static uint64_t gdt_descriptor(uint32_t base, uint32_t limit, uint8_t access, uint8_t flags)
{
    return (uint64_t)(limit & 0xffff)
         | (uint64_t)(base & 0xffffff) << 16
         | (uint64_t)access << 40
         | (uint64_t)((limit >> 16) & 0xf) << 48
         | (uint64_t)(flags & 0xf) << 52
         | (uint64_t)(base >> 24) << 56;
}

/*
 * GDT: CPL0 code/data (for exception handlers, unused by the floor), DPL3
 * 64-bit code and DPL3 data for the guest, and a 64-bit TSS (16 bytes).
 * Flags: 0xa = G|L (64-bit code), 0xc = G|D/B (data).
 */
static void guest_write_gdt(uint8_t *mem)
{
    uint64_t *gdt = (uint64_t *)(mem + GDT_ADDR);
    gdt[0] = 0;
    gdt[SEL_KCODE >> 3] = gdt_descriptor(0, 0xfffff, 0x9b, 0xa); /* DPL0 code, 64-bit */
    gdt[SEL_KDATA >> 3] = gdt_descriptor(0, 0xfffff, 0x93, 0xc); /* DPL0 data */
    gdt[SEL_UDATA >> 3] = gdt_descriptor(0, 0xfffff, 0xf3, 0xc); /* DPL3 data */
    gdt[SEL_UCODE >> 3] = gdt_descriptor(0, 0xfffff, 0xfb, 0xa); /* DPL3 code, 64-bit */
    /* 0x8b: present, busy 64-bit TSS (it is loaded in TR from the start). */
    gdt[SEL_TSS >> 3] = gdt_descriptor((uint32_t)TSS_ADDR, TSS_LIMIT, 0x8b, 0x0);
    gdt[(SEL_TSS >> 3) + 1] = TSS_ADDR >> 32;
}

/*
 * TSS with RSP0 (the CPL0 stack an exception would switch to) and an I/O
 * permission bitmap that denies every port except PORT_OPEN_FIRST..LAST.
 * RFLAGS.IOPL stays 0, so this bitmap is what lets CPL3 execute `out`.
 */
static void guest_write_tss(uint8_t *mem)
{
    uint8_t *tss = mem + TSS_ADDR;
    uint64_t rsp0 = KSTACK_TOP;
    uint16_t iomap_base = TSS_SIZE;

    memset(tss, 0, TSS_SIZE);
    memcpy(tss + TSS_RSP0_OFF, &rsp0, sizeof(rsp0));
    memcpy(tss + TSS_IOMAP_OFF, &iomap_base, sizeof(iomap_base));

    uint8_t *iopb = tss + TSS_SIZE;
    memset(iopb, 0xff, IOPB_BYTES + 1); /* all denied, plus the 0xff terminator */
    for (unsigned port = PORT_OPEN_FIRST; port <= PORT_OPEN_LAST; port++)
        iopb[port / 8] &= (uint8_t)~(1u << (port % 8));
}

static void guest_write_code(uint8_t *mem)
{
    memcpy(mem + CODE_ADDR, GUEST_CODE, sizeof(GUEST_CODE));
}

static struct kvm_segment segment(uint16_t selector, uint8_t type, uint8_t dpl,
                                  uint8_t code_64)
{
    struct kvm_segment s = {
        .base = 0, .limit = 0xffffffff, .selector = selector, .type = type,
        .present = 1, .dpl = dpl, .s = 1, .g = 1,
        .l = code_64, .db = !code_64,
    };
    return s;
}

/*
 * Enter long mode directly at CPL3: CS is the DPL3 64-bit code segment
 * (CPL = CS.RPL = 3), SS and the data segments are DPL3 data, TR holds the
 * TSS. Paging, write protection (WP: supervisor writes honour read-only
 * pages), native FPU errors (NE|MP), SSE (OSFXSR|OSXMMEXCPT), NX.
 */
static void vcpu_set_sregs_cpl3(struct vm *vm)
{
    struct kvm_sregs sregs;
    xioctl(vm->vcpu_fd, KVM_GET_SREGS, &sregs, "KVM_GET_SREGS");

    sregs.cr0 = CR0_PE | CR0_MP | CR0_NE | CR0_WP | CR0_PG;
    sregs.cr3 = PML4_ADDR;
    sregs.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
    sregs.efer = EFER_LME | EFER_LMA | EFER_NXE;

    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = GDT_ENTRIES * 8 - 1;
    sregs.idt.base = 0; /* no IDT: an exception is a triple fault */
    sregs.idt.limit = 0;

    sregs.cs = segment(SEL_UCODE, 0xb, 3, 1); /* execute/read, accessed */
    sregs.ss = segment(SEL_UDATA, 0x3, 3, 0); /* read/write, accessed */
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss;

    struct kvm_segment tr = {
        .base = TSS_ADDR, .limit = TSS_LIMIT, .selector = SEL_TSS,
        .type = 0xb, /* busy 64-bit TSS */ .present = 1, .s = 0,
    };
    sregs.tr = tr;

    xioctl(vm->vcpu_fd, KVM_SET_SREGS, &sregs, "KVM_SET_SREGS");
}

static void vcpu_set_regs(struct vm *vm, uint64_t rip)
{
    struct kvm_regs regs;
    memset(&regs, 0, sizeof(regs));
    regs.rip = rip;
    regs.rsp = vm->mem_size; /* top of the user stack */
    regs.rflags = 0x2;       /* reserved bit 1; IF = 0, IOPL = 0 */
    xioctl(vm->vcpu_fd, KVM_SET_REGS, &regs, "KVM_SET_REGS");
}

/* Everything up to (not including) the first KVM_RUN. */
static void vm_setup(struct vm *vm, size_t mem_size)
{
    vm_create(vm, mem_size);
    guest_write_page_tables(vm->mem, mem_size);
    guest_write_gdt(vm->mem);
    guest_write_tss(vm->mem);
    guest_write_code(vm->mem);
    vcpu_set_sregs_cpl3(vm);
    vcpu_set_regs(vm, GUEST_LOOP_ADDR);
}

static const char *exit_reason_name(uint32_t reason)
{
    switch (reason) {
    case KVM_EXIT_IO: return "KVM_EXIT_IO";
    case KVM_EXIT_MMIO: return "KVM_EXIT_MMIO";
    case KVM_EXIT_HLT: return "KVM_EXIT_HLT";
    case KVM_EXIT_SHUTDOWN: return "KVM_EXIT_SHUTDOWN (triple fault: a guest exception)";
    case KVM_EXIT_FAIL_ENTRY: return "KVM_EXIT_FAIL_ENTRY";
    case KVM_EXIT_INTERNAL_ERROR: return "KVM_EXIT_INTERNAL_ERROR";
    case KVM_EXIT_INTR: return "KVM_EXIT_INTR";
    default: return "unexpected exit";
    }
}

static void die_bad_exit(const struct vm *vm)
{
    const struct kvm_run *run = vm->run;
    if (run->exit_reason == KVM_EXIT_IO)
        die("KVM_RUN: unexpected port I/O (port 0x%x, direction %u, size %u)",
            run->io.port, run->io.direction, run->io.size);
    if (run->exit_reason == KVM_EXIT_INTERNAL_ERROR)
        die("KVM_RUN: KVM_EXIT_INTERNAL_ERROR, suberror %u", run->internal.suberror);
    die("KVM_RUN: %s (exit reason %u)", exit_reason_name(run->exit_reason),
        run->exit_reason);
}

/* One KVM_RUN that must end with the guest's `out 0xE1, eax`. */
static inline void vm_run_expect_out(const struct vm *vm)
{
    if (ioctl(vm->vcpu_fd, KVM_RUN, NULL) < 0)
        die("KVM_RUN failed: %s", strerror(errno));
    const struct kvm_run *run = vm->run;
    if (__builtin_expect(run->exit_reason != KVM_EXIT_IO || run->io.port != PORT_FLOOR ||
                         run->io.direction != KVM_EXIT_IO_OUT, 0))
        die_bad_exit(vm);
}

/* eax of the last `out`: the guest's loop counter. */
static uint32_t vm_last_out_value(const struct vm *vm)
{
    uint32_t value;
    memcpy(&value, (const uint8_t *)vm->run + vm->run->io.data_offset, sizeof(value));
    return value;
}

/* Each KVM_RUN must have executed exactly one iteration of the guest loop. */
static void vm_check_counter(const struct vm *vm, uint64_t runs)
{
    uint32_t seen = vm_last_out_value(vm);
    if (seen != (uint32_t)runs)
        die("guest loop counter is %u after %llu KVM_RUN calls", seen,
            (unsigned long long)runs);
}

/* ------------------------------------------------------------------------ */
/* Statistics and JSON                                                      */
/* ------------------------------------------------------------------------ */

struct summary {
    double p50_us, p90_us, p99_us, mean_us, min_us, max_us;
};

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* Nearest-rank percentile of sorted samples, in microseconds. */
static double percentile_us(const uint64_t *sorted, size_t n, double q)
{
    size_t rank = (size_t)(q * (double)n + 0.999999);
    if (rank < 1)
        rank = 1;
    if (rank > n)
        rank = n;
    return (double)sorted[rank - 1] / 1000.0;
}

/* Sorts the samples in place. */
static struct summary summarise(uint64_t *ns, size_t n)
{
    struct summary s = { 0 };
    if (n == 0)
        return s;
    qsort(ns, n, sizeof(ns[0]), cmp_u64);
    double total = 0;
    for (size_t i = 0; i < n; i++)
        total += (double)ns[i];
    s.p50_us = percentile_us(ns, n, 0.50);
    s.p90_us = percentile_us(ns, n, 0.90);
    s.p99_us = percentile_us(ns, n, 0.99);
    s.mean_us = total / (double)n / 1000.0;
    s.min_us = (double)ns[0] / 1000.0;
    s.max_us = (double)ns[n - 1] / 1000.0;
    return s;
}

/* One JSON line; `extra` is empty or starts with ", " and holds more fields. */
static void print_summary(const char *name, size_t n, const struct summary *s, const char *extra)
{
    printf("{\"name\": \"%s\", \"n\": %zu, \"p50_us\": %.3f, \"p90_us\": %.3f, "
           "\"p99_us\": %.3f, \"mean_us\": %.3f, \"min_us\": %.3f, \"max_us\": %.3f%s}\n",
           name, n, s->p50_us, s->p90_us, s->p99_us, s->mean_us, s->min_us, s->max_us,
           extra ? extra : "");
    fflush(stdout);
}

static uint64_t *alloc_samples(size_t n)
{
    uint64_t *p = calloc(n, sizeof(uint64_t));
    if (!p)
        die("out of memory for %zu samples", n);
    return p;
}

/* ------------------------------------------------------------------------ */
/* roundtrip N: KVM_RUN on the calling thread                               */
/* ------------------------------------------------------------------------ */

static void cmd_roundtrip(size_t n)
{
    struct vm vm;
    uint64_t *samples = alloc_samples(n);
    vm_setup(&vm, DEFAULT_MEM_MIB * MIB);

    for (int i = 0; i < WARMUP_RUNS; i++)
        vm_run_expect_out(&vm);
    for (size_t i = 0; i < n; i++) {
        uint64_t t0 = now_ns();
        vm_run_expect_out(&vm);
        samples[i] = now_ns() - t0;
    }
    vm_check_counter(&vm, WARMUP_RUNS + n);

    struct summary s = summarise(samples, n);
    print_summary("roundtrip", n, &s, NULL);
    vm_destroy(&vm);
    free(samples);
}

/* ------------------------------------------------------------------------ */
/* roundtrip-thread N: request via futex, completion via eventfd            */
/* ------------------------------------------------------------------------ */

#define REQUEST_STOP UINT32_MAX

struct thread_channel {
    _Atomic uint32_t request; /* futex word: sequence number of the last request */
    int done_fd;              /* eventfd: one count per completed KVM_RUN */
    struct vm vm;
};

/* The vCPU thread: one KVM_RUN per request, no other syscalls on the way. */
static void *vcpu_thread_main(void *arg)
{
    struct thread_channel *ch = arg;
    uint32_t served = 0;
    for (;;) {
        uint32_t req;
        while ((req = atomic_load_explicit(&ch->request, memory_order_acquire)) == served)
            futex_wait(&ch->request, served, 0);
        if (req == REQUEST_STOP)
            return NULL;
        served = req;
        vm_run_expect_out(&ch->vm);
        uint64_t one = 1;
        if (write(ch->done_fd, &one, sizeof(one)) != sizeof(one))
            die("write to the completion eventfd failed: %s", strerror(errno));
    }
}

/* The caller's side of one request: post it, then block until completion. */
static void channel_call(struct thread_channel *ch, uint32_t seq)
{
    atomic_store_explicit(&ch->request, seq, memory_order_release);
    futex_wake(&ch->request);
    uint64_t count;
    if (read(ch->done_fd, &count, sizeof(count)) != sizeof(count))
        die("read from the completion eventfd failed: %s", strerror(errno));
}

static void cmd_roundtrip_thread(size_t n)
{
    struct thread_channel ch;
    uint64_t *samples = alloc_samples(n);
    atomic_init(&ch.request, 0);
    ch.done_fd = eventfd(0, EFD_CLOEXEC);
    if (ch.done_fd < 0)
        die("eventfd failed: %s", strerror(errno));
    vm_setup(&ch.vm, DEFAULT_MEM_MIB * MIB);

    pthread_t tid;
    int err = pthread_create(&tid, NULL, vcpu_thread_main, &ch);
    if (err)
        die("pthread_create failed: %s", strerror(err));

    uint32_t seq = 0;
    for (int i = 0; i < WARMUP_RUNS; i++)
        channel_call(&ch, ++seq);
    for (size_t i = 0; i < n; i++) {
        uint64_t t0 = now_ns();
        channel_call(&ch, ++seq);
        samples[i] = now_ns() - t0;
    }

    atomic_store_explicit(&ch.request, REQUEST_STOP, memory_order_release);
    futex_wake(&ch.request);
    pthread_join(tid, NULL);
    vm_check_counter(&ch.vm, seq);

    struct summary s = summarise(samples, n);
    print_summary("roundtrip-thread", n, &s, NULL);
    vm_destroy(&ch.vm);
    close(ch.done_fd);
    free(samples);
}

/* ------------------------------------------------------------------------ */
/* threads T N: aggregate throughput of T independent VMs                   */
/* ------------------------------------------------------------------------ */

struct worker {
    pthread_t tid;
    size_t n;
    pthread_barrier_t *start_line;
    uint64_t start_ns, end_ns;
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct vm vm;
    vm_setup(&vm, DEFAULT_MEM_MIB * MIB);
    for (int i = 0; i < WARMUP_RUNS; i++)
        vm_run_expect_out(&vm);

    pthread_barrier_wait(w->start_line);
    w->start_ns = now_ns();
    for (size_t i = 0; i < w->n; i++)
        vm_run_expect_out(&vm);
    w->end_ns = now_ns();

    vm_check_counter(&vm, WARMUP_RUNS + w->n);
    vm_destroy(&vm);
    return NULL;
}

static void cmd_threads(size_t threads, size_t n)
{
    struct worker *workers = calloc(threads, sizeof(*workers));
    pthread_barrier_t start_line;
    if (!workers)
        die("out of memory");
    pthread_barrier_init(&start_line, NULL, (unsigned)threads);

    for (size_t i = 0; i < threads; i++) {
        workers[i].n = n;
        workers[i].start_line = &start_line;
        int err = pthread_create(&workers[i].tid, NULL, worker_main, &workers[i]);
        if (err)
            die("pthread_create failed: %s", strerror(err));
    }
    uint64_t first_start = UINT64_MAX, last_end = 0;
    for (size_t i = 0; i < threads; i++) {
        pthread_join(workers[i].tid, NULL);
        if (workers[i].start_ns < first_start)
            first_start = workers[i].start_ns;
        if (workers[i].end_ns > last_end)
            last_end = workers[i].end_ns;
    }

    double elapsed_s = (double)(last_end - first_start) / 1e9;
    double calls = (double)threads * (double)n;
    printf("{\"name\": \"aggregate\", \"threads\": %zu, \"n\": %zu, \"calls_per_s\": %.1f, "
           "\"elapsed_s\": %.6f, \"per_thread_call_us\": %.3f}\n",
           threads, n, calls / elapsed_s, elapsed_s, elapsed_s * 1e6 / (double)n);
    fflush(stdout);
    pthread_barrier_destroy(&start_line);
    free(workers);
}

/* ------------------------------------------------------------------------ */
/* create N: VM creation up to the first `out`, then teardown               */
/* ------------------------------------------------------------------------ */

static void cmd_create(size_t n, size_t mem_mib)
{
    size_t mem_size = mem_mib * MIB;
    uint64_t *total = alloc_samples(n);
    uint64_t *setup = alloc_samples(n);
    uint64_t *first_entry = alloc_samples(n);
    uint64_t *teardown = alloc_samples(n);
    struct vm vm;

    /* Warm-up: page in the code paths and the kernel's caches. */
    vm_setup(&vm, mem_size);
    vm_run_expect_out(&vm);
    vm_destroy(&vm);

    for (size_t i = 0; i < n; i++) {
        uint64_t t0 = now_ns();
        vm_setup(&vm, mem_size);
        uint64_t t1 = now_ns();
        vm_run_expect_out(&vm);
        uint64_t t2 = now_ns();
        vm_check_counter(&vm, 1);
        uint64_t t3 = now_ns();
        vm_destroy(&vm);
        uint64_t t4 = now_ns();
        total[i] = t2 - t0;
        setup[i] = t1 - t0;
        first_entry[i] = t2 - t1;
        teardown[i] = t4 - t3;
    }

    struct summary s = summarise(total, n);
    struct summary prep = summarise(setup, n);
    struct summary entry = summarise(first_entry, n);
    struct summary down = summarise(teardown, n);
    char extra[256];
    snprintf(extra, sizeof(extra),
             ", \"mem_mib\": %zu, \"setup_p50_us\": %.3f, \"first_entry_p50_us\": %.3f, "
             "\"teardown_p50_us\": %.3f, \"teardown_p90_us\": %.3f",
             mem_mib, prep.p50_us, entry.p50_us, down.p50_us, down.p90_us);
    print_summary("create", n, &s, extra);
    free(total);
    free(setup);
    free(first_entry);
    free(teardown);
}

/* ------------------------------------------------------------------------ */
/* kill N: pthread_kill to a vCPU thread spinning at CPL3 -> EINTR          */
/* ------------------------------------------------------------------------ */

enum kill_state { KILL_IDLE, KILL_RUNNING, KILL_STOPPED };

struct kill_ctx {
    struct vm vm;
    _Atomic uint32_t state;   /* futex word, enum kill_state */
    uint64_t eintr_ns;        /* when KVM_RUN returned EINTR; read after STOPPED */
    size_t rounds;            /* warm-up + measured */
};

/* A no-op: its only job is to make KVM_RUN return EINTR. */
static void kick_handler(int sig, siginfo_t *info, void *ucontext)
{
    (void)sig;
    (void)info;
    (void)ucontext;
}

static void install_kick_handler(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = kick_handler;
    sa.sa_flags = SA_SIGINFO; /* deliberately no SA_RESTART */
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGRTMIN, &sa, NULL) != 0)
        die("sigaction(SIGRTMIN) failed: %s", strerror(errno));
}

static void set_state(struct kill_ctx *k, enum kill_state s)
{
    atomic_store_explicit(&k->state, s, memory_order_release);
    futex_wake(&k->state);
}

static enum kill_state get_state(struct kill_ctx *k)
{
    return atomic_load_explicit(&k->state, memory_order_acquire);
}

/* Wait while the state is `from`. */
static void wait_state_change(struct kill_ctx *k, enum kill_state from)
{
    while (get_state(k) == from)
        futex_wait(&k->state, from, 0);
}

/* The vCPU thread: enter the spin loop, return on EINTR, repeat. */
static void *kill_vcpu_main(void *arg)
{
    struct kill_ctx *k = arg;
    for (size_t i = 0; i < k->rounds; i++) {
        vcpu_set_regs(&k->vm, GUEST_SPIN_ADDR);
        __atomic_store_n(&k->vm.run->immediate_exit, 0, __ATOMIC_RELAXED);
        set_state(k, KILL_RUNNING);
        int rc = ioctl(k->vm.vcpu_fd, KVM_RUN, NULL);
        uint64_t t = now_ns();
        if (rc == 0)
            die_bad_exit(&k->vm);
        if (errno != EINTR)
            die("KVM_RUN failed: %s", strerror(errno));
        k->eintr_ns = t;
        set_state(k, KILL_STOPPED);
        wait_state_change(k, KILL_STOPPED);
    }
    return NULL;
}

/* Kick the running vCPU until it reports STOPPED; returns signals sent. */
static unsigned kick_until_stopped(struct kill_ctx *k, pthread_t vcpu, uint64_t *t0)
{
    unsigned signals = 0;
    *t0 = now_ns();
    __atomic_store_n(&k->vm.run->immediate_exit, 1, __ATOMIC_RELEASE);
    for (;;) {
        int err = pthread_kill(vcpu, SIGRTMIN);
        if (err)
            die("pthread_kill failed: %s", strerror(err));
        signals++;
        uint64_t deadline = now_ns() + KILL_RESEND_NS;
        uint64_t t;
        while (get_state(k) == KILL_RUNNING && (t = now_ns()) < deadline)
            futex_wait(&k->state, KILL_RUNNING, deadline - t);
        if (get_state(k) == KILL_STOPPED)
            return signals;
    }
}

static void cmd_kill(size_t n)
{
    const size_t warmup = 3;
    struct kill_ctx k;
    uint64_t *samples = alloc_samples(n);
    unsigned max_signals = 0;
    uint64_t total_signals = 0;

    install_kick_handler();
    memset(&k, 0, sizeof(k));
    atomic_init(&k.state, KILL_IDLE);
    k.rounds = warmup + n;
    vm_setup(&k.vm, DEFAULT_MEM_MIB * MIB);
    vm_run_expect_out(&k.vm); /* first entry, so every round is a re-entry */

    pthread_t tid;
    int err = pthread_create(&tid, NULL, kill_vcpu_main, &k);
    if (err)
        die("pthread_create failed: %s", strerror(err));

    for (size_t i = 0; i < k.rounds; i++) {
        wait_state_change(&k, KILL_IDLE);
        sleep_ns(KILL_SETTLE_NS); /* the guest is now really in its loop */
        uint64_t t0;
        unsigned signals = kick_until_stopped(&k, tid, &t0);
        if (i >= warmup) {
            samples[i - warmup] = k.eintr_ns - t0;
            total_signals += signals;
            if (signals > max_signals)
                max_signals = signals;
        }
        set_state(&k, KILL_IDLE);
    }
    pthread_join(tid, NULL);

    struct summary s = summarise(samples, n);
    char extra[128];
    snprintf(extra, sizeof(extra), ", \"max_signals\": %u, \"mean_signals\": %.3f",
             max_signals, (double)total_signals / (double)n);
    print_summary("kill", n, &s, extra);
    vm_destroy(&k.vm);
    free(samples);
}

/* ------------------------------------------------------------------------ */
/* Command line                                                             */
/* ------------------------------------------------------------------------ */

static void usage(void)
{
    fprintf(stderr,
            "usage: floor roundtrip N\n"
            "       floor roundtrip-thread N\n"
            "       floor threads T N\n"
            "       floor create N [MEM_MIB]   (MEM_MIB: multiple of 2, default %llu)\n"
            "       floor kill N\n",
            DEFAULT_MEM_MIB);
    exit(2);
}

static size_t parse_count(const char *text, const char *what, long min, long max)
{
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || end == text || *end != '\0' || v < min || v > max) {
        fprintf(stderr, "floor: %s must be an integer in [%ld, %ld], got '%s'\n",
                what, min, max, text);
        usage();
    }
    return (size_t)v;
}

static void expect_argc(int argc, int min, int max)
{
    if (argc < min || argc > max)
        usage();
}

int main(int argc, char **argv)
{
    if (argc < 2)
        usage();
    const char *cmd = argv[1];

    if (strcmp(cmd, "roundtrip") == 0) {
        expect_argc(argc, 3, 3);
        size_t n = parse_count(argv[2], "N", 1, MAX_COUNT);
        kvm_open();
        cmd_roundtrip(n);
    } else if (strcmp(cmd, "roundtrip-thread") == 0) {
        expect_argc(argc, 3, 3);
        size_t n = parse_count(argv[2], "N", 1, MAX_COUNT);
        kvm_open();
        cmd_roundtrip_thread(n);
    } else if (strcmp(cmd, "threads") == 0) {
        expect_argc(argc, 4, 4);
        size_t t = parse_count(argv[2], "T", 1, MAX_THREADS);
        size_t n = parse_count(argv[3], "N", 1, MAX_COUNT);
        kvm_open();
        cmd_threads(t, n);
    } else if (strcmp(cmd, "create") == 0) {
        expect_argc(argc, 3, 4);
        size_t n = parse_count(argv[2], "N", 1, 100000);
        size_t mib = argc == 4 ? parse_count(argv[3], "MEM_MIB", 2, (long)MAX_MEM_MIB)
                               : DEFAULT_MEM_MIB;
        if (mib % 2 != 0) {
            fprintf(stderr, "floor: MEM_MIB must be a multiple of 2, got %zu\n", mib);
            usage();
        }
        kvm_open();
        cmd_create(n, mib);
    } else if (strcmp(cmd, "kill") == 0) {
        expect_argc(argc, 3, 3);
        size_t n = parse_count(argv[2], "N", 1, 100000);
        kvm_open();
        cmd_kill(n);
    } else {
        fprintf(stderr, "floor: unknown subcommand '%s'\n", cmd);
        usage();
    }
    return 0;
}
