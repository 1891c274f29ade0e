/* switch_aarch64.S: context switch for AArch64 (AAPCS64).
 *
 * A saved context is 176 bytes from the saved stack pointer upwards:
 *   +0   x19..x28
 *   +80  x29 (frame pointer), x30 (return address)
 *   +96  d8..d15 (the callee-saved low halves of v8..v15)
 *   +160 FPCR
 * Only callee-saved state needs saving: the switch is an ordinary call. */

        .text

/* void ip__switch(void **save_sp, void *new_sp) */
        .globl  ip__switch
        .hidden ip__switch
        .type   ip__switch, %function
ip__switch:
        .cfi_startproc
        sub     sp, sp, #176
        .cfi_adjust_cfa_offset 176
        stp     x19, x20, [sp, #0]
        stp     x21, x22, [sp, #16]
        stp     x23, x24, [sp, #32]
        stp     x25, x26, [sp, #48]
        stp     x27, x28, [sp, #64]
        stp     x29, x30, [sp, #80]
        stp     d8, d9, [sp, #96]
        stp     d10, d11, [sp, #112]
        stp     d12, d13, [sp, #128]
        stp     d14, d15, [sp, #144]
        mrs     x9, fpcr
        str     x9, [sp, #160]
        mov     x9, sp
        str     x9, [x0]
        mov     sp, x1
        ldr     x9, [sp, #160]
        mrs     x10, fpcr               /* writing FPCR is slow on some */
        cmp     x9, x10                 /* cores: skip it when unchanged */
        b.eq    1f
        msr     fpcr, x9
1:
        ldp     d14, d15, [sp, #144]
        ldp     d12, d13, [sp, #128]
        ldp     d10, d11, [sp, #112]
        ldp     d8, d9, [sp, #96]
        ldp     x29, x30, [sp, #80]
        ldp     x27, x28, [sp, #64]
        ldp     x25, x26, [sp, #48]
        ldp     x23, x24, [sp, #32]
        ldp     x21, x22, [sp, #16]
        ldp     x19, x20, [sp, #0]
        add     sp, sp, #176
        .cfi_adjust_cfa_offset -176
        ret
        .cfi_endproc
        .size   ip__switch, .-ip__switch

/* First code run on a fresh stack: x19 = arg, x20 = fn. */
        .type   ip__trampoline, %function
ip__trampoline:
        .cfi_startproc
        .cfi_undefined x30
        mov     x0, x19
        blr     x20
        brk     #0
        .cfi_endproc
        .size   ip__trampoline, .-ip__trampoline

/* void *ip__context_init(void *stack_top, void (*fn)(void *), void *arg) */
        .globl  ip__context_init
        .hidden ip__context_init
        .type   ip__context_init, %function
ip__context_init:
        .cfi_startproc
        and     x0, x0, #~15
        sub     x0, x0, #176
        mov     x9, #0
        mov     x10, #0
        stp     x2, x1, [x0, #0]        /* x19 = arg, x20 = fn */
        stp     x9, x10, [x0, #16]
        stp     x9, x10, [x0, #32]
        stp     x9, x10, [x0, #48]
        stp     x9, x10, [x0, #64]
        adr     x11, ip__trampoline
        stp     x9, x11, [x0, #80]      /* x29 = 0, x30 = trampoline */
        stp     x9, x10, [x0, #96]
        stp     x9, x10, [x0, #112]
        stp     x9, x10, [x0, #128]
        stp     x9, x10, [x0, #144]
        str     x9, [x0, #160]          /* FPCR = 0: IEEE defaults */
        ret
        .cfi_endproc
        .size   ip__context_init, .-ip__context_init

        .section .note.GNU-stack,"",%progbits
