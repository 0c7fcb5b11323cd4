/*
 * aionub guest entry point. The host enters here at CPL3 with rsp = top of
 * the stack and rdi = address of struct ab_boot_info; ab__main never returns.
 */
    .section .text.ab_start, "ax", @progbits
    .globl _start
    .type _start, @function
_start:
    xorl    %ebp, %ebp              /* end of the frame-pointer chain */
    andq    $-16, %rsp              /* SysV: 16-byte aligned before the call */
    fninit                          /* x87 and SSE control words to defaults */
    pushq   $0x1f80
    ldmxcsr (%rsp)
    popq    %rax
    call    ab__main                /* rdi = boot info */
    ud2
    .size _start, . - _start

    .section .note.GNU-stack, "", @progbits
