/* The kit's IDT: a stub per vector that pushes the vector (and a dummy error code where the CPU
 * pushes none), saves the caller-saved registers (and RBX, which it uses) and calls kit_dispatch_interrupt(vector, frame). */
        .code64
        .altmacro
        .section .text

        .macro STUB vector
        .balign 16
stub_\vector:
        .if (\vector == 8) || (\vector >= 10 && \vector <= 14) || (\vector == 17) || (\vector == 21) || (\vector == 29) || (\vector == 30)
        .else
        pushq   $0
        .endif
        pushq   $\vector
        jmp     common_stub
        .endm

        .balign 16
        .globl  kit_interrupt_stubs
kit_interrupt_stubs:
        .set    vector, 0
        .rept   256
        STUB    %vector
        .set    vector, vector + 1
        .endr

common_stub:
        push    %rbx
        push    %rax
        push    %rcx
        push    %rdx
        push    %rsi
        push    %rdi
        push    %r8
        push    %r9
        push    %r10
        push    %r11
        mov     80(%rsp), %rdi          /* vector */
        lea     88(%rsp), %rsi          /* error code, then the CPU's frame (RIP, CS, RFLAGS...) */
        mov     %rsp, %rbx              /* keep the stack; rbx is callee-saved */
        and     $-16, %rsp
        call    kit_dispatch_interrupt
        mov     %rbx, %rsp
        pop     %r11
        pop     %r10
        pop     %r9
        pop     %r8
        pop     %rdi
        pop     %rsi
        pop     %rdx
        pop     %rcx
        pop     %rax
        pop     %rbx
        add     $16, %rsp               /* vector and error code */
        iretq
        .section .note.GNU-stack, "", @progbits
