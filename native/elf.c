/* Validated parsing of a guest ELF image. Nothing in the file is trusted:
 * every header field, offset and address is checked before use, so a
 * malformed or hostile file yields -EINVAL with a message, never a read
 * outside the buffer or a write outside guest memory. */
#include "internal.h"

#include <elf.h>
#include <errno.h>
#include <string.h>

#define PAGE AB_PAGE_SIZE
#define ELF_FAIL(...) ab_fail(errbuf, errlen, EINVAL, "elf: " __VA_ARGS__)

static bool add_overflows(uint64_t a, uint64_t b, uint64_t *sum)
{
    return __builtin_add_overflow(a, b, sum);
}

static int check_header(const Elf64_Ehdr *eh, size_t len, char *errbuf,
                        size_t errlen)
{
    if (memcmp(eh->e_ident, ELFMAG, SELFMAG) != 0)
        return ELF_FAIL("not an ELF file (bad magic)");
    if (eh->e_ident[EI_CLASS] != ELFCLASS64)
        return ELF_FAIL("not a 64-bit ELF file");
    if (eh->e_ident[EI_DATA] != ELFDATA2LSB)
        return ELF_FAIL("not a little-endian ELF file");
    if (eh->e_ident[EI_VERSION] != EV_CURRENT || eh->e_version != EV_CURRENT)
        return ELF_FAIL("unsupported ELF version");
    if (eh->e_machine != EM_X86_64)
        return ELF_FAIL("not an x86-64 ELF file (e_machine %u)", eh->e_machine);
    if (eh->e_type != ET_EXEC)
        return ELF_FAIL("not a static executable (e_type %u; build the guest "
                        "with aionub.build_guest)", eh->e_type);
    if (eh->e_ehsize < sizeof(Elf64_Ehdr))
        return ELF_FAIL("ELF header size %u is too small", eh->e_ehsize);
    if (eh->e_phentsize != sizeof(Elf64_Phdr))
        return ELF_FAIL("program header entry size %u, expected %zu",
                        eh->e_phentsize, sizeof(Elf64_Phdr));
    if (eh->e_phnum == 0 || eh->e_phnum == PN_XNUM)
        return ELF_FAIL("no program headers");
    uint64_t table_end;
    if (add_overflows(eh->e_phoff, (uint64_t)eh->e_phnum * sizeof(Elf64_Phdr),
                      &table_end) ||
        table_end > len)
        return ELF_FAIL("program header table (offset %llu, %u entries) is "
                        "outside the %zu-byte file",
                        (unsigned long long)eh->e_phoff, eh->e_phnum, len);
    if (eh->e_phoff % 8 != 0)
        return ELF_FAIL("program header table offset is misaligned");
    return 0;
}

/* Add one PT_LOAD segment after checking it against the file, the allowed
 * address range and the segments already accepted. */
static int add_segment(struct ab_image *img, const Elf64_Phdr *ph, size_t len,
                       uint64_t limit, char *errbuf, size_t errlen)
{
    uint64_t file_end, mem_end;
    if (img->nsegments == AB_MAX_SEGMENTS)
        return ELF_FAIL("more than %d loadable segments", AB_MAX_SEGMENTS);
    if (ph->p_filesz > ph->p_memsz)
        return ELF_FAIL("segment at 0x%llx: file size exceeds memory size",
                        (unsigned long long)ph->p_vaddr);
    if (add_overflows(ph->p_offset, ph->p_filesz, &file_end) || file_end > len)
        return ELF_FAIL("segment at 0x%llx: file bytes [%llu, +%llu) are "
                        "outside the %zu-byte file",
                        (unsigned long long)ph->p_vaddr,
                        (unsigned long long)ph->p_offset,
                        (unsigned long long)ph->p_filesz, len);
    if (add_overflows(ph->p_vaddr, ph->p_memsz, &mem_end) ||
        ph->p_vaddr < AB_IMAGE_BASE || mem_end > limit)
        return ELF_FAIL("segment [0x%llx, 0x%llx) is outside guest image "
                        "memory [0x%llx, 0x%llx)",
                        (unsigned long long)ph->p_vaddr,
                        (unsigned long long)(ph->p_vaddr + ph->p_memsz),
                        (unsigned long long)AB_IMAGE_BASE,
                        (unsigned long long)limit);
    if ((ph->p_flags & PF_W) && (ph->p_flags & PF_X))
        return ELF_FAIL("segment at 0x%llx is both writable and executable",
                        (unsigned long long)ph->p_vaddr);
    if (ph->p_memsz == 0)
        return 0;

    struct ab_segment seg = {
        .vaddr = ph->p_vaddr & ~(PAGE - 1),
        .file_vaddr = ph->p_vaddr,
        .offset = ph->p_offset,
        .filesz = ph->p_filesz,
        .writable = (ph->p_flags & PF_W) != 0,
        .executable = (ph->p_flags & PF_X) != 0,
    };
    uint64_t end = (mem_end + PAGE - 1) & ~(PAGE - 1);
    if (end > limit)
        return ELF_FAIL("segment at 0x%llx ends past guest image memory",
                        (unsigned long long)ph->p_vaddr);
    seg.memsz = end - seg.vaddr;
    /* Pages carry one set of permissions, so segments may not share one. */
    for (unsigned i = 0; i < img->nsegments; i++) {
        const struct ab_segment *o = &img->segments[i];
        if (seg.vaddr < o->vaddr + o->memsz && o->vaddr < seg.vaddr + seg.memsz)
            return ELF_FAIL("segments at 0x%llx and 0x%llx share a page",
                            (unsigned long long)o->file_vaddr,
                            (unsigned long long)seg.file_vaddr);
    }
    img->segments[img->nsegments++] = seg;
    if (img->nsegments == 1 || seg.vaddr < img->start)
        img->start = seg.vaddr;
    if (seg.vaddr + seg.memsz > img->end)
        img->end = seg.vaddr + seg.memsz;
    return 0;
}

int elf_parse(const uint8_t *elf, size_t len, uint64_t limit,
              struct ab_image *out, char *errbuf, size_t errlen)
{
    memset(out, 0, sizeof *out);
    if (len == 0)
        return ELF_FAIL("the guest image is empty");
    if (len < sizeof(Elf64_Ehdr))
        return ELF_FAIL("truncated: %zu bytes is smaller than an ELF header",
                        len);
    Elf64_Ehdr eh;
    memcpy(&eh, elf, sizeof eh); /* the caller's buffer may be unaligned */
    int rc = check_header(&eh, len, errbuf, errlen);
    if (rc)
        return rc;
    for (unsigned i = 0; i < eh.e_phnum; i++) {
        Elf64_Phdr ph;
        memcpy(&ph, elf + eh.e_phoff + i * sizeof ph, sizeof ph);
        if (ph.p_type == PT_INTERP || ph.p_type == PT_DYNAMIC)
            return ELF_FAIL("dynamically linked images are not supported");
        if (ph.p_type != PT_LOAD)
            continue;
        rc = add_segment(out, &ph, len, limit, errbuf, errlen);
        if (rc)
            return rc;
    }
    if (out->nsegments == 0)
        return ELF_FAIL("no loadable segments");
    for (unsigned i = 0; i < out->nsegments; i++) {
        const struct ab_segment *s = &out->segments[i];
        if (s->executable && eh.e_entry >= s->file_vaddr &&
            eh.e_entry < s->vaddr + s->memsz) {
            out->entry = eh.e_entry;
            return 0;
        }
    }
    return ELF_FAIL("entry point 0x%llx is not in an executable segment",
                    (unsigned long long)eh.e_entry);
}
