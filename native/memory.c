/* Guest memory: the layout of a sandbox and everything the host writes into
 * memory before the first entry (page tables, GDT, IDT, TSS with its I/O
 * bitmap, the CPL0 exception stubs, boot info and the guest image).
 * docs/abi.md draws the layout. */
#include "internal.h"

#include <sys/random.h>

#include <errno.h>
#include <signal.h>
#include <string.h>

#define PAGE AB_PAGE_SIZE
#define MIN_HEAP (64 * 1024ull)
#define MiB (1024ull * 1024ull)

/* Page-table entry bits. */
#define PTE_P (1ull << 0)
#define PTE_RW (1ull << 1)
#define PTE_US (1ull << 2)
#define PTE_NX (1ull << 63)

/* GDT selectors; docs/abi.md lists the descriptors. */
#define SEL_KCODE 0x08
#define SEL_KDATA 0x10
#define SEL_UDATA 0x18
#define SEL_UCODE 0x20
#define SEL_TSS 0x28

#define TSS_IOMAP_OFFSET 104u
#define TSS_LIMIT (TSS_IOMAP_OFFSET + 8192u) /* bitmap + trailing 0xff byte */
#define KSTACK_TOP (AB_KSTACK_ADDR + AB_KSTACK_PAGES * PAGE)

static uint64_t align_up(uint64_t v) { return (v + PAGE - 1) & ~(PAGE - 1); }
static bool aligned(uint64_t v) { return (v & (PAGE - 1)) == 0; }

int memory_layout(const struct ab_config *cfg, const struct ab_image *img,
                  struct ab_layout *out, char *errbuf, size_t errlen)
{
    memset(out, 0, sizeof *out);
    out->memory_size = cfg->memory_size;
    out->image_start = img->start;
    out->image_end = img->end;
    out->entry = img->entry;
    out->input_addr = align_up(img->end);
    out->input_size = cfg->input_size;
    out->output_addr = out->input_addr + cfg->input_size;
    out->output_size = cfg->output_size;
    out->heap_addr = out->output_addr + cfg->output_size;
    out->stack_size = cfg->stack_size;
    out->stack_addr = cfg->memory_size - cfg->stack_size;
    out->guard_addr = out->stack_addr - PAGE;
    if (out->guard_addr < out->heap_addr + MIN_HEAP)
        return ab_fail(errbuf, errlen, EINVAL,
                       "config: memory_size %llu is too small for a %llu-byte "
                       "image, %llu-byte buffers, a %llu-byte stack and a "
                       "%llu-byte minimum heap",
                       (unsigned long long)cfg->memory_size,
                       (unsigned long long)(img->end - img->start),
                       (unsigned long long)(cfg->input_size + cfg->output_size),
                       (unsigned long long)cfg->stack_size,
                       (unsigned long long)MIN_HEAP);
    out->heap_size = out->guard_addr - out->heap_addr;
    return 0;
}

/* Check sizes before the ELF is parsed: the ELF's limit depends on them. */
int memory_check_config(const struct ab_config *cfg, char *errbuf,
                        size_t errlen)
{
    const struct { const char *name; uint64_t value, min, max; } fields[] = {
        {"memory_size", cfg->memory_size, 2 * MiB, AB_MAX_MEMORY},
        {"stack_size", cfg->stack_size, 4 * PAGE, AB_MAX_MEMORY / 2},
        {"input_size", cfg->input_size, PAGE, AB_MAX_MEMORY / 2},
        {"output_size", cfg->output_size, PAGE, AB_MAX_MEMORY / 2},
    };
    for (size_t i = 0; i < sizeof fields / sizeof *fields; i++) {
        if (fields[i].value < fields[i].min || fields[i].value > fields[i].max)
            return ab_fail(errbuf, errlen, EINVAL,
                           "config: %s must be between %llu and %llu bytes, "
                           "got %llu", fields[i].name,
                           (unsigned long long)fields[i].min,
                           (unsigned long long)fields[i].max,
                           (unsigned long long)fields[i].value);
        if (!aligned(fields[i].value))
            return ab_fail(errbuf, errlen, EINVAL,
                           "config: %s must be a multiple of %llu, got %llu",
                           fields[i].name, (unsigned long long)PAGE,
                           (unsigned long long)fields[i].value);
    }
    uint64_t reserved = cfg->input_size + cfg->output_size + MIN_HEAP + PAGE +
                        cfg->stack_size;
    if (cfg->memory_size < AB_IMAGE_BASE + reserved + PAGE)
        return ab_fail(errbuf, errlen, EINVAL,
                       "config: memory_size %llu is too small for %llu bytes "
                       "of buffers, stack and minimum heap above the image "
                       "base 0x%llx",
                       (unsigned long long)cfg->memory_size,
                       (unsigned long long)reserved,
                       (unsigned long long)AB_IMAGE_BASE);
    /* The kick signal SIGRTMIN + offset must be a real-time signal. */
    int max_offset = SIGRTMAX - SIGRTMIN;
    if (cfg->sig_rt_min_offset > (uint32_t)max_offset)
        return ab_fail(errbuf, errlen, EINVAL,
                       "config: sig_rt_min_offset must be between 0 and %d, "
                       "got %u", max_offset, cfg->sig_rt_min_offset);
    return 0;
}

/* Highest address a guest image may occupy under this config. */
uint64_t memory_image_limit(const struct ab_config *cfg)
{
    /* memory_check_config() guarantees this stays above AB_IMAGE_BASE. */
    return cfg->memory_size - (cfg->input_size + cfg->output_size + MIN_HEAP +
                               PAGE + cfg->stack_size);
}

/* ---- page tables -------------------------------------------------------- */

static void map_range(uint8_t *mem, uint64_t addr, uint64_t size,
                      uint64_t flags)
{
    uint64_t *pts = (uint64_t *)(mem + AB_PT_ADDR);
    for (uint64_t a = addr; a < addr + size; a += PAGE)
        pts[a / PAGE] = a | PTE_P | flags;
}

static void build_page_tables(uint8_t *mem, const struct ab_layout *lay,
                              const struct ab_image *img)
{
    uint64_t *pml4 = (uint64_t *)(mem + AB_PML4_ADDR);
    uint64_t *pdpt = (uint64_t *)(mem + AB_PDPT_ADDR);
    uint64_t *pd = (uint64_t *)(mem + AB_PD_ADDR);
    /* Upper levels allow everything; each leaf decides. */
    pml4[0] = AB_PDPT_ADDR | PTE_P | PTE_RW | PTE_US;
    pdpt[0] = AB_PD_ADDR | PTE_P | PTE_RW | PTE_US;
    uint64_t npts = (lay->memory_size + 0x1fffff) / 0x200000;
    for (uint64_t i = 0; i < npts; i++)
        pd[i] = (AB_PT_ADDR + i * PAGE) | PTE_P | PTE_RW | PTE_US;

    /* System area: supervisor only; the stubs are the only CPL0 code. */
    map_range(mem, AB_PML4_ADDR, AB_STUBS_ADDR - AB_PML4_ADDR, PTE_RW | PTE_NX);
    map_range(mem, AB_STUBS_ADDR, PAGE, 0);
    map_range(mem, AB_KSTACK_ADDR, AB_KSTACK_PAGES * PAGE, PTE_RW | PTE_NX);
    map_range(mem, AB_BOOT_INFO_ADDR, PAGE, PTE_US | PTE_NX);
    /* The image, with its segments' permissions (W^X checked by elf.c). */
    for (unsigned i = 0; i < img->nsegments; i++) {
        const struct ab_segment *s = &img->segments[i];
        map_range(mem, s->vaddr, s->memsz,
                  PTE_US | (s->writable ? PTE_RW : 0) |
                      (s->executable ? 0 : PTE_NX));
    }
    /* Buffers and heap, then (after the unmapped guard page) the stack. */
    map_range(mem, lay->input_addr, lay->guard_addr - lay->input_addr,
              PTE_US | PTE_RW | PTE_NX);
    map_range(mem, lay->stack_addr, lay->stack_size, PTE_US | PTE_RW | PTE_NX);
}

/* ---- descriptor tables ---------------------------------------------------- */

static void build_gdt(uint8_t *mem)
{
    uint64_t *gdt = (uint64_t *)(mem + AB_GDT_ADDR);
    gdt[0] = 0;
    gdt[SEL_KCODE / 8] = 0x00af9a000000ffffull; /* 64-bit code, DPL0 */
    gdt[SEL_KDATA / 8] = 0x00cf92000000ffffull; /* data, DPL0        */
    gdt[SEL_UDATA / 8] = 0x00cff2000000ffffull; /* data, DPL3        */
    gdt[SEL_UCODE / 8] = 0x00affa000000ffffull; /* 64-bit code, DPL3 */
    uint64_t base = AB_TSS_ADDR, limit = TSS_LIMIT;
    gdt[SEL_TSS / 8] = (limit & 0xffff) | ((base & 0xffffff) << 16) |
                       (0x89ull << 40) | (((limit >> 16) & 0xf) << 48) |
                       (((base >> 24) & 0xff) << 56); /* available 64-bit TSS */
    gdt[SEL_TSS / 8 + 1] = base >> 32;
}

static void build_tss(uint8_t *mem)
{
    uint8_t *tss = mem + AB_TSS_ADDR;
    uint64_t rsp0 = KSTACK_TOP;
    uint16_t iomap = TSS_IOMAP_OFFSET;
    memcpy(tss + 4, &rsp0, sizeof rsp0);
    memcpy(tss + 102, &iomap, sizeof iomap);
    /* I/O permission bitmap: a set bit denies the port. Open only the
     * hypercall block; the byte after the bitmap must be 0xff. */
    uint8_t *bitmap = tss + TSS_IOMAP_OFFSET;
    memset(bitmap, 0xff, 8192 + 1);
    for (unsigned port = AB_IOMAP_FIRST; port <= AB_IOMAP_LAST; port++)
        bitmap[port / 8] &= (uint8_t)~(1u << (port % 8));
}

/* CPU exceptions (vectors 0-31) go to tiny CPL0 stubs that normalise the
 * stack to [vector, error code, rip, cs, rflags, rsp, ss] and report to the
 * host with one `out AB_PORT_FAULT`. CPL0 code is emulated
 * instruction by instruction here, so the stubs stay a handful of general
 * register instructions. They are never resumed: a fault poisons the
 * sandbox (a #BP or #DB in a sandbox with debugging on is a pause instead:
 * debug.c puts the vCPU back at CPL3 from the frame). */
static bool pushes_error_code(unsigned vector)
{
    return vector == 8 || (vector >= 10 && vector <= 14) || vector == 17 ||
           vector == 21 || vector == 29 || vector == 30;
}

static void build_idt_and_stubs(uint8_t *mem)
{
    uint8_t *stubs = mem + AB_STUBS_ADDR;
    uint64_t *idt = (uint64_t *)(mem + AB_IDT_ADDR);
    const unsigned common = 32 * 16;
    for (unsigned v = 0; v < 32; v++) {
        uint8_t *p = stubs + v * 16;
        unsigned k = 0;
        if (!pushes_error_code(v)) {
            p[k++] = 0x6a; /* push 0 (no error code) */
            p[k++] = 0x00;
        }
        p[k++] = 0x6a; /* push vector */
        p[k++] = (uint8_t)v;
        p[k++] = 0xe9; /* jmp rel32 common */
        int32_t rel = (int32_t)common - (int32_t)(v * 16 + k + 4);
        memcpy(p + k, &rel, 4);
        uint64_t handler = AB_STUBS_ADDR + v * 16;
        idt[v * 2] = (handler & 0xffff) | ((uint64_t)SEL_KCODE << 16) |
                     (0x8eull << 40) | (((handler >> 16) & 0xffff) << 48);
        idt[v * 2 + 1] = handler >> 32;
    }
    /* `out imm8, al` only reads al: every general register but rsp still
     * holds the guest's value at the exit (crash dumps and the debugger
     * show them); the host reads CR2 with KVM_GET_SREGS. */
    static const uint8_t tail[] = {
        0xe6, AB_PORT_FAULT,     /* out AB_PORT_FAULT, al */
        0xf4,                    /* hlt                 */
        0xeb, 0xfd,              /* jmp hlt             */
    };
    memcpy(stubs + common, tail, sizeof tail);
}

static void build_boot_info(uint8_t *mem, const struct ab_layout *lay)
{
    struct ab_boot_info bi = {
        .magic = AB_BOOT_MAGIC,
        .abi_version = AB_ABI_VERSION,
        /* vm.c sets CR4.FSGSBASE under the same condition. */
        .flags = kvm_have_fsgsbase() ? AB_BOOT_FSGSBASE : 0,
        .memory_size = lay->memory_size,
        .input_addr = lay->input_addr,
        .input_size = lay->input_size,
        .output_addr = lay->output_addr,
        .output_size = lay->output_size,
        .heap_addr = lay->heap_addr,
        .heap_size = lay->heap_size,
        .stack_addr = lay->stack_addr,
        .stack_size = lay->stack_size,
    };
    /* getrandom(2) returns up to 256 bytes whole and, once the pool is
     * initialised (long before anyone runs a sandbox), never fails; if it
     * ever did, the guest runtime asks again with AB_SYS_RANDOM. */
    if (getrandom(bi.random, sizeof bi.random, 0) != (ssize_t)sizeof bi.random)
        memset(bi.random, 0, sizeof bi.random);
    memcpy(mem + AB_BOOT_INFO_ADDR, &bi, sizeof bi);
}

void memory_build(uint8_t *mem, const struct ab_layout *lay,
                  const struct ab_image *img, const uint8_t *elf)
{
    build_page_tables(mem, lay, img);
    build_gdt(mem);
    build_tss(mem);
    build_idt_and_stubs(mem);
    build_boot_info(mem, lay);
    /* SAFETY: elf_parse checked every segment's file range against the file
     * and its memory range against [AB_IMAGE_BASE, limit <= memory_size). */
    for (unsigned i = 0; i < img->nsegments; i++) {
        const struct ab_segment *s = &img->segments[i];
        memcpy(mem + s->file_vaddr, elf + s->offset, s->filesz);
    }
}
