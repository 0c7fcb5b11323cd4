/* The guest SDK's musl (its libc.a) in a plain Linux process, for the
 * benchmarks that compare a guest with the same machine code and the same C
 * library outside the VM (floatstr_musl.c, scripts_native.c).
 *
 * The SDK's musl makes every system call through ab__syscall (its
 * syscall_arch.h); here that is the real `syscall` instruction, with
 * set_thread_area (which the guest runtime takes as "set the FS base")
 * turned into arch_prctl(ARCH_SET_FS), its meaning on x86-64 Linux. _start
 * does what musl's crt1 does. Link with -static -nostdlib, libc.a, -lgcc.
 *
 * Both run before musl has set up the thread pointer (and with it the
 * stack-protector canary at fs:0x28), so they are built without the stack
 * protector, whatever the flags of the rest of the program.
 */
#define SYS_arch_prctl 158
#define SYS_set_thread_area 205
#define ARCH_SET_FS 0x1002

__attribute__((no_stack_protector)) long ab__syscall(long n, long a1, long a2, long a3, long a4, long a5, long a6) {
    if (n == SYS_set_thread_area) {
        a2 = a1;
        a1 = ARCH_SET_FS;
        n = SYS_arch_prctl;
    }
    unsigned long ret;
    register long r10 __asm__("r10") = a4;
    register long r8 __asm__("r8") = a5;
    register long r9 __asm__("r9") = a6;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(n), "D"(a1), "S"(a2), "d"(a3), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return (long)ret;
}

int __libc_start_main(int (*)(int, char **, char **), int, char **, void (*)(void),
                      void (*)(void), void (*)(void));
int main(int, char **);
void start_c(long *sp);

__attribute__((no_stack_protector)) void start_c(long *sp) {
    __libc_start_main((int (*)(int, char **, char **))main, (int)sp[0], (char **)(sp + 1), 0, 0, 0);
}
__asm__(".text\n.global _start\n_start:\n\txor %rbp, %rbp\n\tmov %rsp, %rdi\n"
        "\tandq $-16, %rsp\n\tcall start_c\n\thlt\n");
