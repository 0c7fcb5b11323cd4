/*
 * aionub guest ABI: the single source of truth shared by the host core
 * (native/ C files), the guest SDK (native/guest/) and, through constants mirrored
 * in src/aionub/_abi.py, the Python layer. docs/abi.md explains it in prose.
 *
 * Guest physical addresses equal guest virtual addresses (identity mapping,
 * 4 KiB pages). The guest runs at CPL3; everything in the system area is
 * supervisor-only except the boot-info page.
 */
#ifndef AIONUB_ABI_H
#define AIONUB_ABI_H

#include <stdint.h>

#define AB_ABI_VERSION 2u
#define AB_PAGE_SIZE 0x1000ull

/* ---- memory layout ------------------------------------------------------ */
/* 0x0000-0x0fff is never mapped: a null dereference always faults.          */
#define AB_PML4_ADDR      0x001000ull
#define AB_PDPT_ADDR      0x002000ull
#define AB_PD_ADDR        0x003000ull
#define AB_PT_ADDR        0x004000ull /* AB_MAX_PTS page tables, one per 2 MiB */
#define AB_MAX_PTS        128ull      /* => guest memory of at most 256 MiB    */
#define AB_GDT_ADDR       0x084000ull
#define AB_IDT_ADDR       0x085000ull
#define AB_TSS_ADDR       0x086000ull /* 104-byte TSS + 8 KiB I/O bitmap + 0xff */
#define AB_TSS_PAGES      3ull
#define AB_STUBS_ADDR     0x089000ull /* CPL0 exception stubs (host-written)   */
#define AB_KSTACK_ADDR    0x08a000ull /* CPL0 stack, 2 pages; TSS.RSP0 = top    */
#define AB_KSTACK_PAGES   2ull
#define AB_BOOT_INFO_ADDR 0x08d000ull /* struct ab_boot_info, user read-only    */
#define AB_IMAGE_BASE     0x100000ull /* lowest address a guest ELF may load at */
#define AB_MAX_MEMORY     (AB_MAX_PTS * 0x200000ull)

/* ---- hypercall ports ---------------------------------------------------- */
/* The guest does `out PORT, eax` with eax = number of bytes it wrote at the
 * start of the output buffer. The TSS I/O bitmap opens the block
 * AB_IOMAP_FIRST..AB_IOMAP_LAST: a 4-byte `out` checks the bits of all four
 * ports it touches, so `out AB_PORT_SYS, eax` needs 0xE5-0xE8 open; any
 * other port I/O from CPL3 raises #GP, and the host rejects anything but a
 * 4-byte `out` to AB_PORT_FIRST..AB_PORT_LAST. */
#define AB_PORT_READY     0xE0 /* init done; output = function table          */
#define AB_PORT_RESULT    0xE1 /* call done; output = result record           */
#define AB_PORT_HOSTCALL  0xE2 /* output = host-call request; on resume the
                                  output buffer holds the host's reply        */
#define AB_PORT_LOG       0xE3 /* output = log record; resumed afterwards     */
#define AB_PORT_ABORT     0xE4 /* output = abort record; never resumed        */
#define AB_PORT_SYS       0xE5 /* output = system request (AB_SYS_*); on resume
                                  the output buffer holds the reply           */
#define AB_PORT_FIRST     AB_PORT_READY
#define AB_PORT_LAST      AB_PORT_SYS
#define AB_IOMAP_FIRST    0xE0
#define AB_IOMAP_LAST     0xE8
/* Written by the CPL0 exception stubs only (closed to CPL3). At the exit
 * rsp points at: vector, error code, then the CPU's interrupt frame (rip,
 * cs, rflags, rsp, ss); the other general registers are the guest's, and
 * CR2 is the faulting address of a #PF. */
#define AB_PORT_FAULT     0xEF

/* ---- value tags (wire format and signatures) --------------------------- */
#define AB_TAG_NONE   0 /* nothing follows                                  */
#define AB_TAG_BOOL   1 /* u8, 0 or 1                                        */
#define AB_TAG_INT    2 /* i64                                               */
#define AB_TAG_FLOAT  3 /* f64                                               */
#define AB_TAG_STR    4 /* u32 len, len bytes of UTF-8, one NUL byte          */
#define AB_TAG_BYTES  5 /* u32 len, len bytes, one NUL byte                  */
#define AB_TAG_LIST   6 /* u32 count, count values                           */
#define AB_TAG_DICT   7 /* u32 count, count x (key: u32 len, len bytes of
                           UTF-8, one NUL byte; value). Keys are unique      */
#define AB_TAG_LAST   AB_TAG_DICT /* the last tag a value on the wire may carry */
#define AB_TAG_ANY    8 /* signatures only: a parameter or return value of
                           any type (never on the wire as a value's tag)      */

/* Lists and dicts nest at most AB_MAX_DEPTH deep: a list or dict at the top
 * of a value is at depth 1, a container inside it at depth 2, and so on.
 * Every count is bounded by the bytes left in its record: a value takes at
 * least AB_MIN_VALUE_SIZE bytes and a dict entry AB_MIN_ENTRY_SIZE. */
#define AB_MAX_DEPTH      64
#define AB_MIN_VALUE_SIZE 1 /* a tag                                          */
#define AB_MIN_ENTRY_SIZE 6 /* key length, its NUL, the value's tag           */

/* ---- result statuses (first byte of a RESULT record) -------------------- */
#define AB_STATUS_OK        0 /* value follows                               */
#define AB_STATUS_NOT_FOUND 1 /* str follows: the unknown function name      */
#define AB_STATUS_BAD_ARGS  2 /* str follows: what was wrong                 */

#define AB_STATUS_EXIT      3 /* i32 follows: a run ended (see AB_REQ_RUN)   */

/* ---- requests (input buffer, first byte) --------------------------------- */
/* call := AB_REQ_CALL, name:string, nargs:u8, nargs x (tag, value)
 * run  := AB_REQ_RUN, argc:u32, argc x string, envc:u32, envc x string
 *         (strings as AB_TAG_STR values, without the tag; no NUL inside)
 * A run calls main(argc, argv, envp) and ends with an AB_STATUS_EXIT result:
 * code 0..255 is exit()'s status (or main's return value & 0xff), code
 * -1..-64 means the program was ended by that signal (abort(): -6). */
#define AB_REQ_CALL 0
#define AB_REQ_RUN  1

/* ---- the READY record ----------------------------------------------------- */
/* ready := function table (count:u32, count x (name:string, ret:u8,
 *          nparams:u8, tags)), flags:u32                                    */
#define AB_READY_HAS_MAIN 1u /* the guest defines main(): it can be run      */

/* ---- system requests (AB_PORT_SYS) ------------------------------------------ */
/* request := op:u32, operands; reply := result:i64 (>= 0, or -errno), data,
 * written at the start of the output buffer before the guest is resumed.
 * The C core answers the "fast" ops itself on the vCPU thread; the others
 * reach Python. The guest runtime turns musl's system calls into these
 * (docs/abi.md has the table). Every operand is checked by the host: a
 * request shorter or longer than its operands, or with an operand that is
 * malformed (a length past the record, a path that is not UTF-8 or holds a
 * NUL), ends the call with GuestProtocolError; an unknown op gets -ENOSYS.
 * Data in a reply is at most output_size - AB_SYS_REPLY_HEADER bytes.    */
#define AB_SYS_CLOCK     1  /* fast. clock:u32 (a Linux clock id, 0-7; the
                               CPU-time clocks are the vCPU thread's) ->
                               result 0, sec:i64, nsec:i64, or -EINVAL      */
#define AB_SYS_RANDOM    2  /* fast. len:u32 -> result n (<= len and <=
                               output_size - 8), n bytes from the host's
                               CSPRNG                                        */
#define AB_SYS_SET_FS    3  /* fast. base:u64 -> result 0: sets the FS base
                               (needed only without AB_BOOT_FSGSBASE), or
                               -EINVAL for a non-canonical address          */
#define AB_SYS_CLOCK_ANCHOR 4 /* fast. no operands -> result 0, tsc:u64 (the
                               guest's TSC), mono_ns:i64, real_ns:i64 (the host's
                               CLOCK_MONOTONIC and CLOCK_REALTIME at that TSC):
                               with boot info tsc_khz, the guest reads clocks
                               from its TSC between anchors, without exits     */
#define AB_SYS_WRITE     16 /* fd:u32, len:u32, len bytes -> result len.
                               fd 1/2: a run's stdout/stderr; in a call a
                               log record per line (INFO / WARNING); other
                               fds -EBADF                                    */
#define AB_SYS_READ      17 /* max:u32 -> result n, n bytes of the run's
                               stdin (0 = end of input)                      */
#define AB_SYS_STAT      18 /* path:string -> result 0, size:u64, or
                               -ENOENT / -ENAMETOOLONG / -EINVAL (relative
                               path): the files= of Sandbox.create, never
                               the host's own                                */
#define AB_SYS_PREAD     19 /* offset:u64, max:u32, path:string -> result n,
                               n bytes of a host file from offset            */
#define AB_SYS_SLEEP     20 /* ns:u64 -> result 0 after that long (deadlines
                               and cancellation still apply)                 */
#define AB_SYS_REPLY_HEADER 8 /* bytes of result before the data            */

/* ---- host-call reply statuses ------------------------------------------ */
#define AB_REPLY_OK    0 /* value follows                                    */
#define AB_REPLY_ERROR 1 /* str follows: error message                       */

#define AB_MAX_PARAMS 16 /* limit on parameters/arguments on the wire        */
#define AB_MAX_NAME   255 /* longest function name in bytes                  */

/* Written by the host at AB_BOOT_INFO_ADDR before the first entry; the
 * guest's entry point also receives its address in rdi. */
struct ab_boot_info {
    uint64_t magic; /* AB_BOOT_MAGIC */
    uint32_t abi_version;
    uint32_t flags; /* AB_BOOT_* */
    uint64_t memory_size;
    uint64_t input_addr, input_size;   /* host -> guest                      */
    uint64_t output_addr, output_size; /* guest -> host                      */
    uint64_t heap_addr, heap_size;
    uint64_t stack_addr, stack_size;   /* initial rsp = stack_addr+stack_size */
    uint64_t tsc_khz; /* the guest TSC's frequency (KVM_GET_TSC_KHZ), 0 if unknown */
    uint8_t random[16]; /* from the host's CSPRNG at creation (AT_RANDOM: the
                           stack-protector canary), so start-up needs no exit */
};
#define AB_BOOT_FSGSBASE 1u /* CR4.FSGSBASE is set: wrfsbase works at CPL3 */
#define AB_BOOT_MAGIC 0x31425553414e4f49ull /* "IONASUB1" little-endian */

#endif
