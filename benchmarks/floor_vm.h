/*
 * floor_vm.h - one CPL3 KVM micro-VM with nothing of aionub in it.
 *
 * Shared by floor.c (the raw KVM floors) and rawkvm.c (the same round trip as
 * a shared library, for `await asyncio.to_thread(...)`). Header-only: every
 * function is static. The including file defines
 *
 *     static void die(const char *fmt, ...);   (must not return)
 *
 * which is called on any KVM error.
 *
 * The guest runs at CPL3, as aionub's guests do: on nested "pagetable-based"
 * KVM (kvm_pvm) CPL0 code is emulated, so a CPL0 floor would be meaningless.
 * The setup mirrors aionub's layout (docs/abi.md) without its IDT, which no
 * floor needs: a guest exception here is a triple fault (KVM_EXIT_SHUTDOWN)
 * and is reported as an error.
 */
#ifndef AIONUB_BENCH_FLOOR_VM_H
#define AIONUB_BENCH_FLOOR_VM_H

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <linux/kvm.h>

/* Every function here is static; not every includer uses every one. */
#define FLOOR_FN static __attribute__((unused))

static void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));

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
 *   entry: test ecx, ecx         ; ecx = pages to touch first (set by the host)
 *          jz loop
 *          mov rdi, TOUCH_ADDR
 *   touch: mov [rdi], al         ; first write to each page: what a real guest
 *          add rdi, 0x1000       ; does to its data, stack and buffers while
 *          dec ecx               ; it initialises (each first touch costs a
 *          jnz touch             ; few us on nested KVM)
 *   loop:  inc eax               ; counts round trips, checked by the host
 *          out 0xE1, eax         ; one VM exit
 *          jmp loop
 *   spin:  jmp spin              ; CPL3 busy loop for `kill`
 */
#define TOUCH_ADDR 0x200000ull
static const uint8_t GUEST_CODE[] = {
    0x85, 0xc9,                               /*  0: test ecx,ecx      */
    0x74, 0x14,                               /*  2: jz loop (24)      */
    0x48, 0xc7, 0xc7, 0x00, 0x00, 0x20, 0x00, /*  4: mov rdi,0x200000  */
    0x88, 0x07,                               /* 11: mov [rdi],al      */
    0x48, 0x81, 0xc7, 0x00, 0x10, 0x00, 0x00, /* 13: add rdi,0x1000    */
    0xff, 0xc9,                               /* 20: dec ecx           */
    0x75, 0xf3,                               /* 22: jnz touch (11)    */
    0xff, 0xc0,                               /* 24: inc eax           */
    0xe7, PORT_FLOOR,                         /* 26: out 0xE1,eax      */
    0xeb, 0xfa,                               /* 28: jmp loop (24)     */
    0xeb, 0xfe,                               /* 30: spin: jmp $       */
};
#define GUEST_LOOP_ADDR (CODE_ADDR + 0)
#define GUEST_SPIN_ADDR (CODE_ADDR + 30)

/* ------------------------------------------------------------------------ */
/* Errors and time                                                          */
/* ------------------------------------------------------------------------ */

/* ioctl that must succeed; returns its (non-negative) result. */
FLOOR_FN int xioctl(int fd, unsigned long request, void *arg, const char *name)
{
    int rc = ioctl(fd, request, arg);
    if (rc < 0)
        die("%s failed: %s", name, strerror(errno));
    return rc;
}

static inline __attribute__((unused)) uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ------------------------------------------------------------------------ */
/* /dev/kvm, opened once per process                                        */
/* ------------------------------------------------------------------------ */

static struct {
    int fd;
    size_t run_mmap_size;
    struct kvm_cpuid2 *cpuid; /* KVM_GET_SUPPORTED_CPUID, fetched once */
} kvm = { .fd = -1 };

FLOOR_FN void kvm_fetch_supported_cpuid(void)
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

FLOOR_FN void kvm_open(void)
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
FLOOR_FN void vm_create(struct vm *vm, size_t mem_size)
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

FLOOR_FN void vm_destroy(struct vm *vm)
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
FLOOR_FN void guest_write_page_tables(uint8_t *mem, size_t mem_size)
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
FLOOR_FN uint64_t gdt_descriptor(uint32_t base, uint32_t limit, uint8_t access, uint8_t flags)
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
FLOOR_FN void guest_write_gdt(uint8_t *mem)
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
FLOOR_FN void guest_write_tss(uint8_t *mem)
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

FLOOR_FN void guest_write_code(uint8_t *mem)
{
    memcpy(mem + CODE_ADDR, GUEST_CODE, sizeof(GUEST_CODE));
}

FLOOR_FN struct kvm_segment segment(uint16_t selector, uint8_t type, uint8_t dpl,
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
FLOOR_FN void vcpu_set_sregs_cpl3(struct vm *vm)
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

FLOOR_FN void vcpu_set_regs(struct vm *vm, uint64_t rip, uint64_t touch_pages)
{
    struct kvm_regs regs;
    memset(&regs, 0, sizeof(regs));
    regs.rip = rip;
    regs.rcx = touch_pages;
    regs.rsp = vm->mem_size; /* top of the user stack */
    regs.rflags = 0x2;       /* reserved bit 1; IF = 0, IOPL = 0 */
    xioctl(vm->vcpu_fd, KVM_SET_REGS, &regs, "KVM_SET_REGS");
}

/* Everything up to (not including) the first KVM_RUN. The guest's first
 * entry writes to touch_pages pages from TOUCH_ADDR before its first `out`;
 * at most (mem_size - TOUCH_ADDR) / 4 KiB. */
FLOOR_FN void vm_setup_touching(struct vm *vm, size_t mem_size, uint64_t touch_pages)
{
    if (touch_pages > (mem_size - TOUCH_ADDR) / PAGE_SIZE_4K)
        die("cannot touch %llu pages in %zu bytes of guest memory",
            (unsigned long long)touch_pages, mem_size);
    vm_create(vm, mem_size);
    guest_write_page_tables(vm->mem, mem_size);
    guest_write_gdt(vm->mem);
    guest_write_tss(vm->mem);
    guest_write_code(vm->mem);
    vcpu_set_sregs_cpl3(vm);
    vcpu_set_regs(vm, GUEST_LOOP_ADDR, touch_pages);
}

FLOOR_FN void vm_setup(struct vm *vm, size_t mem_size)
{
    vm_setup_touching(vm, mem_size, 0);
}

FLOOR_FN const char *exit_reason_name(uint32_t reason)
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

FLOOR_FN void die_bad_exit(const struct vm *vm)
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
static inline __attribute__((unused)) void vm_run_expect_out(const struct vm *vm)
{
    if (ioctl(vm->vcpu_fd, KVM_RUN, NULL) < 0)
        die("KVM_RUN failed: %s", strerror(errno));
    const struct kvm_run *run = vm->run;
    if (__builtin_expect(run->exit_reason != KVM_EXIT_IO || run->io.port != PORT_FLOOR ||
                         run->io.direction != KVM_EXIT_IO_OUT, 0))
        die_bad_exit(vm);
}

/* eax of the last `out`: the guest's loop counter. */
FLOOR_FN uint32_t vm_last_out_value(const struct vm *vm)
{
    uint32_t value;
    memcpy(&value, (const uint8_t *)vm->run + vm->run->io.data_offset, sizeof(value));
    return value;
}

/* Each KVM_RUN must have executed exactly one iteration of the guest loop. */
FLOOR_FN void vm_check_counter(const struct vm *vm, uint64_t runs)
{
    uint32_t seen = vm_last_out_value(vm);
    if (seen != (uint32_t)runs)
        die("guest loop counter is %u after %llu KVM_RUN calls", seen,
            (unsigned long long)runs);
}

#endif /* AIONUB_BENCH_FLOOR_VM_H */
