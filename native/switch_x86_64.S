/* switch_x86_64.S: context switch for x86-64 System V.
 *
 * A saved context is, from the saved stack pointer upwards:
 *   +0  MXCSR (4 bytes) and the x87 control word (2 bytes, +4)
 *   +8  r15, r14, r13, r12, rbx, rbp
 *   +56 return address
 * Only callee-saved state needs saving: the switch is an ordinary call. */

        .text

/* void ip__switch(void **save_sp, void *new_sp) */
        .globl  ip__switch
        .hidden ip__switch
        .type   ip__switch, @function
ip__switch:
        .cfi_startproc
        pushq   %rbp
        .cfi_adjust_cfa_offset 8
        pushq   %rbx
        .cfi_adjust_cfa_offset 8
        pushq   %r12
        .cfi_adjust_cfa_offset 8
        pushq   %r13
        .cfi_adjust_cfa_offset 8
        pushq   %r14
        .cfi_adjust_cfa_offset 8
        pushq   %r15
        .cfi_adjust_cfa_offset 8
        subq    $8, %rsp
        .cfi_adjust_cfa_offset 8
        stmxcsr (%rsp)
        fnstcw  4(%rsp)
        movq    %rsp, (%rdi)
        movq    %rsi, %rsp
        ldmxcsr (%rsp)
        fldcw   4(%rsp)
        addq    $8, %rsp
        .cfi_adjust_cfa_offset -8
        popq    %r15
        .cfi_adjust_cfa_offset -8
        popq    %r14
        .cfi_adjust_cfa_offset -8
        popq    %r13
        .cfi_adjust_cfa_offset -8
        popq    %r12
        .cfi_adjust_cfa_offset -8
        popq    %rbx
        .cfi_adjust_cfa_offset -8
        popq    %rbp
        .cfi_adjust_cfa_offset -8
        ret
        .cfi_endproc
        .size   ip__switch, .-ip__switch

/* First code run on a fresh stack: r12 = arg, r13 = fn.  At entry the
 * stack pointer is 16-byte aligned, as a call requires. */
        .type   ip__trampoline, @function
ip__trampoline:
        .cfi_startproc
        .cfi_undefined rip
        movq    %r12, %rdi
        callq   *%r13
        ud2
        .cfi_endproc
        .size   ip__trampoline, .-ip__trampoline

/* void *ip__context_init(void *stack_top, void (*fn)(void *), void *arg) */
        .globl  ip__context_init
        .hidden ip__context_init
        .type   ip__context_init, @function
ip__context_init:
        .cfi_startproc
        andq    $-16, %rdi
        leaq    -80(%rdi), %rax
        movabsq $0x037F00001F80, %rcx   /* default MXCSR and x87 CW */
        movq    %rcx, 0(%rax)
        movq    $0, 8(%rax)             /* r15 */
        movq    $0, 16(%rax)            /* r14 */
        movq    %rsi, 24(%rax)          /* r13 = fn */
        movq    %rdx, 32(%rax)          /* r12 = arg */
        movq    $0, 40(%rax)            /* rbx */
        movq    $0, 48(%rax)            /* rbp */
        leaq    ip__trampoline(%rip), %rcx
        movq    %rcx, 56(%rax)
        ret
        .cfi_endproc
        .size   ip__context_init, .-ip__context_init

        .section .note.GNU-stack,"",@progbits
