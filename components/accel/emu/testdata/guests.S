/* Test guests for the accelerators: 32-bit code entered in the PVH state. Each label is an entry
 * point; the test loads all of .text at one address. Ports used to report: 0x10..0x1f. */
        .set    OPTION_SKIP_EXCEPTIONS, 1       /* interrupts32: straight to the interrupt part */
        .set    OPTION_SKIP_VMCALL, 4           /* long_mode: no inline VMCALL */
        .set    OPTION_PAE, 8                   /* user32: PAE paging instead of 32-bit paging */
        .set    OPTION_CMPXCHG16B, 16           /* long_mode: the CMPXCHG16B flags checks instead */
        .code32
        .text

        .globl port_io
port_io:
        mov     $0x42, %al
        out     %al, $0x10
        mov     $0x1234, %dx
        mov     $0xdeadbeef, %eax
        out     %eax, %dx
        in      $0x11, %al
        out     %al, $0x12
        in      $0x16, %eax
        out     %eax, $0x17
        hlt
        out     %al, $0x13
        hlt

        .globl pvh_state
pvh_state:
        mov     %ebx, %eax
        out     %eax, $0x14
        mov     %cr0, %eax
        out     %eax, $0x15
        mov     %cs, %ax
        out     %eax, $0x16
        hlt

        .globl hypercalls
hypercalls:
        mov     $17, %eax
        mov     $1, %ebx
        mov     $2, %ecx
        mov     $3, %edx
        mov     $4, %esi
        mov     $5, %edi
        mov     $6, %ebp
        vmcall
        out     %eax, $0x10
        mov     $18, %eax
        vmmcall
        out     %eax, $0x10
        mov     $0x7a5e0020, %eax       /* the emu's CPUID hypercall: number 0x20 */
        mov     $7, %ebx
        cpuid
        out     %eax, $0x10
        mov     %ebx, %eax              /* CPUID hypercalls leave the argument registers alone */
        out     %eax, $0x11
        hlt

        .globl cpuid_leaves
cpuid_leaves:
        mov     $0x40000000, %eax
        xor     %ecx, %ecx
        cpuid
        mov     %ebx, %eax
        out     %eax, $0x10
        mov     $0x40000004, %eax
        mov     $1, %ecx
        cpuid
        out     %eax, $0x11
        xor     %eax, %eax
        cpuid
        out     %eax, $0x12             /* leaf 0 from the CPU model */
        .globl cpuid_features
cpuid_features:                         /* reports leaf 1 ECX, leaf 7 EBX, 0x80000001 ECX */
        mov     $1, %eax
        xor     %ecx, %ecx
        cpuid
        mov     %ecx, %eax
        out     %eax, $0x13
        mov     $7, %eax
        xor     %ecx, %ecx
        cpuid
        mov     %ebx, %eax
        out     %eax, $0x14
        mov     $0x80000001, %eax
        cpuid
        mov     %ecx, %eax
        out     %eax, $0x15
        hlt

        .globl mmio
mmio:
        movl    $0xcafef00d, 0xfebf0000
        mov     0xfebf0008, %eax
        out     %eax, $0x10
        hlt

/* The top of 4 GiB is not RAM: MMIO there too (GRUB reads 0xfffffffc for coreboot's CBFS). */
        .globl top_of_4g
top_of_4g:
        mov     0xfffffffc, %eax
        out     %eax, $0x10
        hlt

/* A page the hypercall places outside RAM is there for the very next instruction. */
        .globl extra_page_after_hypercall
extra_page_after_hypercall:
        mov     $0x7a5e0021, %eax       /* CPUID hypercall 0x21 */
        cpuid
        mov     0x30000010, %eax
        out     %eax, $0x10
        hlt

        .globl spin
spin:
        jmp     spin

        .globl invalid
invalid:
        ud2

/* ---- Interrupts and exceptions through a 32-bit IDT. Reports: 0x18 external vector handled,
 * 0x19 #UD saved EIP, 0x1a #DE saved EIP, 0x1b #BP saved EIP. */
/* The local APIC software-enabled, the stack, the guest's own flat GDT (PVH leaves GDTR and the
 * selectors undefined). */
        .macro FLAT32_WITH_LAPIC
        movl    $0x1ff, 0xfee000f0
        mov     $stack_top, %esp
        lgdt    gdt64_descriptor
        ljmp    $0x08, $.Lflat\@
.Lflat\@:
        mov     $0x10, %ax
        mov     %ax, %ds
        mov     %ax, %es
        mov     %ax, %ss
        .endm

        .macro GATE32 vector, handler
        mov     $\handler, %eax
        mov     %ax, idt32 + \vector * 8
        movw    $0x08, idt32 + \vector * 8 + 2
        movw    $0x8e00, idt32 + \vector * 8 + 4
        shr     $16, %eax
        mov     %ax, idt32 + \vector * 8 + 6
        .endm

        .globl interrupts32
interrupts32:
        movl    $0x1ff, 0xfee000f0      /* software-enable the local APIC: fixed interrupts need it */
        mov     $stack_top, %esp
        lgdt    gdt64_descriptor        /* PVH leaves GDTR and the selectors undefined */
        ljmp    $0x08, $1f
1:      mov     $0x10, %ax
        mov     %ax, %ds
        mov     %ax, %es
        mov     %ax, %ss
        GATE32  0x30, external32
        GATE32  0x31, external32
        GATE32  6, ud32
        GATE32  0, de32
        GATE32  3, bp32
        lidt    idt32_descriptor
        testl   $OPTION_SKIP_EXCEPTIONS, guest_options
        jnz     after_int3_32
        .globl ud_instruction32
ud_instruction32:
        ud2
        xor     %ecx, %ecx
        xor     %edx, %edx
        mov     $1, %eax
        .globl de_instruction32
de_instruction32:
        div     %ecx
        .globl de_instruction32_again
de_instruction32_again:
        div     %ecx
        int3
        .globl after_int3_32
after_int3_32:
        sti
        out     %al, $0x10              /* about to halt with interrupts on */
        hlt
        out     %al, $0x11              /* woken */
        movl    $0, handled
        out     %al, $0x12              /* spinning */
1:      cmpl    $0, handled
        je      1b
        out     %al, $0x13
        cli
        movl    $0, handled
        out     %al, $0x14              /* interrupts off */
        mov     $200000, %ecx
2:      loop    2b
        mov     handled, %eax
        out     %eax, $0x15             /* still 0: a masked interrupt waits */
        sti
3:      cmpl    $0, handled
        je      3b
        out     %al, $0x16
        cli
        hlt                             /* interrupts off: HaltExit */
        out     %al, $0x17
        hlt

external32:
        push    %eax
        incl    handled
        mov     %esp, %eax
        out     %eax, $0x18             /* the handler's stack pointer, to check the frame */
        movl    $0, 0xfee000b0          /* EOI */
        pop     %eax
        iret
ud32:
        push    %eax
        mov     4(%esp), %eax
        out     %eax, $0x19
        addl    $2, 4(%esp)
        pop     %eax
        iret
de32:
        push    %eax
        mov     4(%esp), %eax
        out     %eax, $0x1a
        addl    $2, 4(%esp)
        pop     %eax
        iret
bp32:
        push    %eax
        mov     4(%esp), %eax
        out     %eax, $0x1b
        pop     %eax
        iret

/* ---- User mode in 32-bit protected mode, with 32-bit (4 MiB pages) or PAE (2 MiB pages) paging:
 * a TSS (SS0:ESP0), INT 0x80 through a DPL-3 gate, a page fault from CPL 3, SYSENTER/SYSEXIT, and
 * HLT at CPL 3 (#GP). Reports: 0x10 the frame's CS, 0x11 its SS, 0x12 the handler's ESP, 0x13 the
 * handler's CS; 0x14 the #PF error code, 0x15 CR2; 0x18 CS after SYSENTER, 0x19 its ESP; 0x16 the
 * #GP error code, 0x17 the #GP frame's EIP; then HLT with interrupts off. */
        .globl user32
user32:
        mov     $stack_top, %esp
        mov     $tss32, %eax                    /* the TSS descriptor's base */
        mov     %ax, gdt_user32 + 0x28 + 2
        shr     $16, %eax
        mov     %al, gdt_user32 + 0x28 + 4
        mov     %ah, gdt_user32 + 0x28 + 7
        lgdt    gdt_user32_descriptor
        ljmp    $0x08, $1f
1:      mov     $0x10, %ax
        mov     %ax, %ds
        mov     %ax, %es
        mov     %ax, %ss
        mov     $0x28, %ax
        ltr     %ax
        GATE32  0x80, int80_32
        movw    $0xee00, idt32 + 0x80 * 8 + 4   /* DPL 3 */
        GATE32  14, pf32
        GATE32  13, gp32
        lidt    idt32_descriptor
        mov     $0x174, %ecx                    /* SYSENTER_CS: CS 0x08, SS 0x10; SYSEXIT: 0x1b, 0x23 */
        mov     $0x08, %eax
        xor     %edx, %edx
        wrmsr
        mov     $0x175, %ecx
        mov     $kstack32_top, %eax
        wrmsr
        mov     $0x176, %ecx
        mov     $sysenter32, %eax
        wrmsr
        testl   $OPTION_PAE, guest_options
        jnz     2f
        movl    $0x87, pd32                     /* 0..4 MiB: present, writable, user, 4 MiB */
        mov     %cr4, %eax
        or      $0x10, %eax                     /* PSE */
        mov     %eax, %cr4
        mov     $pd32, %eax
        jmp     3f
2:      movl    $pd_pae + 1, pdpt_pae           /* PDPTEs carry no rights */
        movl    $0x87, pd_pae                   /* 0..2 MiB: present, writable, user, 2 MiB */
        mov     %cr4, %eax
        or      $0x20, %eax                     /* PAE */
        mov     %eax, %cr4
        mov     $pdpt_pae, %eax
3:      mov     %eax, %cr3
        mov     %cr0, %eax
        or      $0x80000000, %eax
        mov     %eax, %cr0
        pushl   $0x23                           /* to CPL 3 */
        pushl   $ustack32_top
        pushl   $0x2
        pushl   $0x1b
        pushl   $user32_code
        iret
user32_code:
        int     $0x80
        .globl user32_fault
user32_fault:
        mov     0x40000000, %eax                /* not mapped: #PF, skipped by the handler (5 bytes) */
        mov     %esp, %ecx
        mov     $1f, %edx
        sysenter
1:      .globl user32_hlt
user32_hlt:
        hlt                                     /* CPL 3: #GP(0) */
int80_32:
        mov     4(%esp), %eax
        out     %eax, $0x10
        mov     16(%esp), %eax
        out     %eax, $0x11
        mov     %esp, %eax
        out     %eax, $0x12
        mov     %cs, %eax
        out     %eax, $0x13
        iret
pf32:
        mov     (%esp), %eax
        out     %eax, $0x14
        mov     %cr2, %eax
        out     %eax, $0x15
        add     $4, %esp
        addl    $5, (%esp)
        iret
sysenter32:
        mov     %cs, %eax
        out     %eax, $0x18
        mov     %esp, %eax
        out     %eax, $0x19
        sysexit
gp32:
        mov     (%esp), %eax
        out     %eax, $0x16
        mov     4(%esp), %eax
        out     %eax, $0x17
        cli
        hlt

/* ---- Stale code: the test rewrites the INT3 at stale_int3_site into a NOP while the guest waits
 * in the OUT before it, after that block was translated; the guest must run the NOP (0x11). */
        .globl stale_int3
stale_int3:
        out     %al, $0x10
        .globl stale_int3_site
stale_int3_site:
        int3
        out     %al, $0x11
        hlt

/* ---- IA32_APIC_BASE on the boot vCPU: read (0x10), written with the enable flag clear, read
 * again (0x11). */
        .globl apic_base
apic_base:
        mov     $0x1b, %ecx
        rdmsr
        out     %eax, $0x10
        mov     %edx, %eax
        out     %eax, $0x12
        mov     $0x1b, %ecx
        mov     $0xfee00100, %eax
        xor     %edx, %edx
        wrmsr
        rdmsr
        out     %eax, $0x11
        hlt

/* ---- Hypercall page: read the MSR from CPUID 0x40000002, write the page address to it, call
 * hypercall 17 through the page. `hypercall_page_adjacent` has CPUID and WRMSR in one block. */
        .globl hypercall_page_adjacent
hypercall_page_adjacent:
        mov     $0x40000002, %eax
        xor     %ecx, %ecx
        cpuid
        mov     %ebx, %ecx
        mov     $hcall_page, %eax
        xor     %edx, %edx
        wrmsr
        jmp     call_page
        .globl hypercall_page_later
hypercall_page_later:
        mov     $0x40000002, %eax
        xor     %ecx, %ecx
        cpuid
        jmp     1f
1:      mov     %ebx, %ecx
        mov     $hcall_page, %eax
        xor     %edx, %edx
        wrmsr
call_page:
        mov     $stack_top, %esp
        mov     $1, %ebx
        mov     $2, %ecx
        mov     $3, %edx
        mov     $4, %esi
        mov     $5, %edi
        mov     $6, %ebp
        call    hcall_page + 17 * 32
        out     %eax, $0x10
        hlt

/* ---- Two vCPUs: the second writes a flag the first waits for, and reports its IA32_APIC_BASE. */
        .globl ap_entry
ap_entry:
        movl    $0x1234, shared_flag
        mov     $0x1b, %ecx
        rdmsr
        out     %eax, $0x1c
        hlt
        .globl bsp_wait
bsp_wait:
1:      cmpl    $0x1234, shared_flag
        jne     1b
        out     %al, $0x10
        hlt

/* ---- Long mode: the guest enters it itself from the PVH state, then makes a 64-bit hypercall,
 * takes #UD and an external interrupt through a 64-bit IDT. */
        .globl long_mode
long_mode:
        mov     $stack_top, %esp
        movl    $0x1ff, 0xfee000f0      /* the local APIC, before paging (only 1 GiB is mapped) */
        mov     $pml4, %eax
        mov     %eax, %cr3
        mov     %cr4, %eax
        or      $0x20, %eax             /* PAE */
        mov     %eax, %cr4
        mov     $0xc0000080, %ecx
        rdmsr
        or      $0x100, %eax            /* EFER.LME */
        wrmsr
        mov     %cr0, %eax
        or      $0x80000000, %eax
        mov     %eax, %cr0
        lgdt    gdt64_descriptor
        ljmp    $0x18, $long_mode64
        .code64
long_mode64:
        mov     $0x10, %ax
        mov     %ax, %ds
        mov     %ax, %ss
        mov     $stack_top, %rsp
        lea     external64(%rip), %rax
        mov     $0x30, %rdi
        call    gate64
        lea     ud64(%rip), %rax
        mov     $6, %rdi
        call    gate64
        lidt    idt64_descriptor
        testl   $OPTION_CMPXCHG16B, guest_options(%rip)
        jnz     cmpxchg16b_flags64
        testl   $OPTION_SKIP_VMCALL, guest_options(%rip)
        jnz     ud_instruction64
        mov     $0x18, %rax             /* the 64-bit ABI: rdi rsi rdx r10 r8 r9 */
        movabs  $0x100000001, %rdi
        mov     $2, %rsi
        mov     $3, %rdx
        mov     $4, %r10
        mov     $5, %r8
        movabs  $0x600000000, %r9
        vmcall
        out     %eax, $0x10
        shr     $32, %rax
        out     %eax, $0x11
        .globl ud_instruction64
ud_instruction64:
        ud2
        sti
        out     %al, $0x12
        hlt
        out     %al, $0x13
        cli
        hlt
gate64:                                 /* rax = handler, rdi = vector */
        shl     $4, %rdi
        lea     idt64(%rip), %rcx
        add     %rcx, %rdi
        mov     %ax, (%rdi)
        movw    $0x18, 2(%rdi)
        movw    $0x8e00, 4(%rdi)
        shr     $16, %rax
        mov     %ax, 6(%rdi)
        shr     $16, %rax
        mov     %eax, 8(%rdi)
        movl    $0, 12(%rdi)
        ret
external64:
        push    %rax
        mov     %rsp, %rax
        out     %eax, $0x18             /* the handler's stack pointer */
        mov     8+8(%rsp), %rax         /* saved CS */
        out     %eax, $0x1d                 /* (no EOI: the LAPIC is not mapped; one interrupt is all) */
        pop     %rax
        iretq
ud64:
        push    %rax
        mov     8(%rsp), %rax
        out     %eax, $0x19
        addq    $2, 8(%rsp)
        pop     %rax
        iretq

/* CMPXCHG16B right after a flags-setting instruction in the same block, entered with POPF's flags
 * (Unicorn 2.1's helper read a stale cc_op and made the CMP's operand, 0x4700, RFLAGS). Reports:
 * 0x10 RFLAGS after a failed compare, 0x11 after a successful one, 0x12 the RIP and 0x13 the
 * RFLAGS of the #GP an unaligned operand raises, 0x14 the CMP's carry seen after that #GP. */
cmpxchg16b_flags64:
        lea     gp64(%rip), %rax
        mov     $13, %rdi
        call    gate64
        lea     cx16_slot(%rip), %rsi
        mov     $0x4700, %rbx
        xor     %ecx, %ecx
        xor     %edx, %edx
        mov     $1, %eax                /* RDX:RAX = 0:1, the slot holds 0:0: a failed compare */
        mov     $0x1000, %rdi
        push    $2
        popfq                           /* ends the block with the flags known */
        cmp     %rbx, %rdi
        cmpxchg16b (%rsi)
        pushfq
        pop     %rax
        out     %eax, $0x10
        xor     %eax, %eax              /* RDX:RAX = 0:0 now matches: RCX:RBX is stored */
        push    $2
        popfq
        cmp     %rbx, %rdi
        cmpxchg16b (%rsi)
        pushfq
        pop     %rax
        out     %eax, $0x11
        push    $2
        popfq
        cmp     %rbx, %rdi              /* 0x1000 - 0x4700 borrows: CF set */
        .globl cmpxchg16b_unaligned
cmpxchg16b_unaligned:
        cmpxchg16b 8(%rsi)
cmpxchg16b_resume:
        setc    %al
        out     %al, $0x14
        hlt
gp64:
        mov     0x8(%rsp), %rax         /* the saved RIP (after the error code) */
        out     %eax, $0x12
        mov     0x18(%rsp), %rax        /* the saved RFLAGS */
        out     %eax, $0x13
        lea     cmpxchg16b_resume(%rip), %rax
        mov     %rax, 0x8(%rsp)
        add     $8, %rsp                /* the error code */
        iretq
        .code32

/* ---- The local APIC timer: one-shot (2 ms), then periodic (0.5 ms) for three more ticks.
 * Reports: 0x10 the current count while counting, 0x11 after the one-shot fired, 0x12 ticks taken. */
        .globl lapic_timer
lapic_timer:
        FLAT32_WITH_LAPIC
        GATE32  0x40, timer32
        lidt    idt32_descriptor
        movl    $0xb, 0xfee003e0                /* divide by 1: 1 GHz */
        movl    $0x40, 0xfee00320               /* one-shot, vector 0x40 */
        movl    $2000000, 0xfee00380
        mov     0xfee00390, %eax
        out     %eax, $0x10
        sti
2:      hlt
        cmpl    $1, handled
        jb      2b
        mov     0xfee00390, %eax
        out     %eax, $0x11
        movl    $0x20040, 0xfee00320            /* periodic */
        movl    $5000000, 0xfee00380        /* 5 ms: a loaded host can delay a handler past 0.5 ms */
3:      hlt
        cmpl    $4, handled
        jb      3b
        cli
        mov     handled, %eax
        out     %eax, $0x12
        hlt
timer32:
        incl    handled
        cmpl    $4, handled                     /* the fourth tick stops the timer, before its EOI: */
        jb      1f                              /* no fifth can come in after the guest wakes slowly */
        movl    $0, 0xfee00380
1:      movl    $0, 0xfee000b0
        iret

/* ---- INIT and start-up IPIs: vCPU 0 copies a real-mode payload to 0x8000 and starts vCPU 1 there
 * (INIT, INIT de-assert, two start-up IPIs with vector 0x08, as Linux sends them); vCPU 1 takes an
 * INT 0x31 through its real-mode IVT (0x1d), reports its CS (0x1e), enters protected mode, sends a fixed IPI (0x31) back and reports 0x1c; vCPU 0
 * reports 0x10 once its handler ran. */
        .globl smp_bsp
smp_bsp:
        FLAT32_WITH_LAPIC
        GATE32  0x31, ipi32
        lidt    idt32_descriptor
        mov     $rm_payload, %esi
        mov     $0x8000, %edi
        mov     $(rm_payload_end - rm_payload), %ecx
        cld
        rep movsb
        movl    $0x01000000, 0xfee00310         /* destination: APIC 1 */
        movl    $0x0000c500, 0xfee00300         /* INIT, level, assert */
        movl    $0x00008500, 0xfee00300         /* INIT, level, de-assert: nothing */
        movl    $0x00000608, 0xfee00300         /* start-up, vector 0x08 */
        movl    $0x00000608, 0xfee00300         /* the second is ignored */
        sti
2:      hlt
        cmpl    $0, handled
        je      2b
        out     %al, $0x10
        cli
        hlt
ipi32:
        incl    handled
        movl    $0, 0xfee000b0
        iret

        .code16
rm_payload:                                     /* runs at 0x0800:0000, DS = SS = SP = 0 */
        movw    $(rm_int31 - rm_payload), 0x31 * 4      /* IVT[0x31] = 0x0800:rm_int31 */
        movw    $0x0800, 0x31 * 4 + 2
        int     $0x31                           /* delivered through the IVT: reports 0x1d */
        mov     %cs, %ax
        out     %ax, $0x1e
        mov     %ax, %ds
        lgdtl   rm_gdt_descriptor - rm_payload
        mov     %cr0, %eax
        or      $1, %eax
        mov     %eax, %cr0
        ljmpl   $0x08, $(0x8000 + rm_pm32 - rm_payload)
rm_int31:
        out     %al, $0x1d
        iret
        .code32
rm_pm32:
        mov     $0x10, %ax
        mov     %ax, %ds
        movl    $0, 0xfee00310                  /* to APIC 0 */
        movl    $0x00004031, 0xfee00300         /* fixed, vector 0x31 */
        out     %al, $0x1c
        cli
        hlt
        .balign 8
rm_gdt: .quad   0, 0x00cf9b000000ffff, 0x00cf93000000ffff
rm_gdt_descriptor:
        .word   3 * 8 - 1
        .long   0x8000 + rm_gdt - rm_payload
rm_payload_end:

/* ---- An NMI to itself (the ICR's self shorthand) is taken with interrupts off. Reports 0x10. */
        .globl nmi_self
nmi_self:
        FLAT32_WITH_LAPIC
        GATE32  2, ipi32
        lidt    idt32_descriptor
        cli
        movl    $0x00040400, 0xfee00300         /* NMI, to self */
2:      cmpl    $0, handled
        je      2b
        out     %al, $0x10
        hlt

/* ---- String port I/O: three bytes out, two in. */
        .globl string_io
string_io:
        mov     $stack_top, %esp
        mov     $string_out, %esi
        mov     $3, %ecx
        mov     $0x10, %dx
        cld
        rep outsb
        mov     $string_in, %edi
        mov     $2, %ecx
        mov     $0x11, %dx
        rep insb
        mov     string_in, %eax
        out     %eax, $0x12
        hlt

/* ---- Interrupts taken while a loop reports a counter (an instruction run twice shows as a gap). */
        .globl stress_loop
stress_loop:
        FLAT32_WITH_LAPIC
        GATE32  0x30, stress_handler
        lidt    idt32_descriptor
        sti
        movl    $0, 0x180000            /* the counter lives away from the code's pages (a page */
2:      incl    0x180000                /* of code written to often makes Unicorn track writes to */
        mov     0x180000, %eax          /* it, in memory it never frees) */
        out     %eax, $0x10
        jmp     2b
stress_handler:
        movl    $0, 0xfee000b0
        iret

/* Hypercalls through the CPUID stub, each result sent out: every OUT must carry the value the
 * VMM answered the hypercall before it with (none may be answered by the CPU model). */
        .globl hypercall_stress_loop
hypercall_stress_loop:
1:      mov     $0x7a5e0001, %eax
        cpuid
        out     %eax, $0x10
        jmp     1b

/* An interrupt injected while IF = 0 is taken as soon as STI, and then POPF, set IF: the
 * counter its handler bumps is read two instructions later. */
        .globl interrupt_window
interrupt_window:
        FLAT32_WITH_LAPIC
        GATE32  0x30, window_handler
        lidt    idt32_descriptor
        cli
        out     %al, $0x10              /* the test injects vector 0x30 here */
        mov     $100, %ecx
1:      loop    1b                      /* the injection's stop lands here, IF still 0 */
        sti
        nop
        mov     window_seen, %eax
        out     %eax, $0x11             /* 1 */
        cli
        out     %al, $0x10              /* and again */
        mov     $100, %ecx
1:      loop    1b
        pushf
        orl     $0x200, (%esp)
        popf
        nop
        mov     window_seen, %eax
        out     %eax, $0x11             /* 2 */
        cli
        hlt
window_handler:
        incl    window_seen
        movl    $0, 0xfee000b0
        iret

/* ---- Loops for the exits-per-second benchmark. */
        .globl pio_loop
pio_loop:
        out     %al, $0x10
        jmp     pio_loop
        .globl hypercall_cpuid_loop
hypercall_cpuid_loop:
        mov     $0x7a5e0001, %eax
        cpuid
        jmp     hypercall_cpuid_loop
/* The hypercall page at MSR 0x40000000 (the benchmark enables it there), then hypercall 17
 * through it, for ever. */
        .globl hypercall_page_loop
hypercall_page_loop:
        mov     $0x40000000, %ecx
        mov     $hcall_page, %eax
        xor     %edx, %edx
        wrmsr
        mov     $stack_top, %esp
1:      call    hcall_page + 17 * 32
        jmp     1b
/* The same instructions as a hypercall through the page (call, mov, out %eax, ret, jmp), to a
 * plain port: the floor a hypercall is compared against. */
        .globl pio_call_loop
pio_call_loop:
        mov     $stack_top, %esp
1:      call    pio_stub
        jmp     1b
pio_stub:
        mov     $17, %eax
        out     %eax, $0x10
        ret
        .globl vmcall_loop
vmcall_loop:
        mov     $1, %eax
        vmcall
        jmp     vmcall_loop

/* ---- Data (guest RAM is writable, so it lives in .text with the code). */
        .balign 8
handled:        .long 0
window_seen:    .long 0
        .globl guest_options
guest_options:  .long 0                 /* OPTION_* bits, set by a test before the vCPU starts */
string_out:     .byte 1, 2, 3, 0
string_in:      .long 0
shared_flag:    .long 0
idt32_descriptor:
        .word   256 * 8 - 1
        .long   idt32
        .balign 8
gdt64:
        .quad   0, 0x00cf9b000000ffff, 0x00cf93000000ffff, 0x00af9b000000ffff
gdt64_descriptor:
        .word   4 * 8 - 1
        .quad   gdt64
idt64_descriptor:
        .word   256 * 16 - 1
        .quad   idt64
        .balign 16
cx16_slot:      .quad 0, 0, 0
        .balign 8
gdt_user32:
        .quad   0, 0x00cf9b000000ffff, 0x00cf93000000ffff, 0x00cffb000000ffff, 0x00cff3000000ffff
        .quad   0x0000890000000067              /* 0x28: the TSS (base filled in) */
gdt_user32_descriptor:
        .word   6 * 8 - 1
        .long   gdt_user32
tss32:  .long   0, kstack32_top, 0x10           /* ESP0, SS0 */
        .fill   0x68 - 12, 1, 0
        .fill   1024, 1, 0
kstack32_top:
        .fill   1024, 1, 0
ustack32_top:
        .balign 16                              /* the 64-bit tests expect stack_top 16-aligned */
idt32:  .fill   256 * 8, 1, 0
idt64:  .fill   256 * 16, 1, 0
        .fill   4096, 1, 0
stack_top:
        .balign 4096
hcall_page:
        .fill   4096, 1, 0
pml4:   .quad   pdpt + 3
        .fill   511, 8, 0
pdpt:   .quad   pd + 3
        .fill   511, 8, 0
pd:
        .set    large_page, 0
        .rept   512
        .quad   (large_page << 21) | 0x83
        .set    large_page, large_page + 1
        .endr
        .balign 4096
pd32:   .fill   1024, 4, 0                      /* user32: 32-bit paging */
pdpt_pae:
        .fill   4, 8, 0                         /* user32: PAE */
        .balign 4096
pd_pae: .fill   512, 8, 0
