/* The test-guest kit's entry: a Xen PVH note naming pvh_start32, which the loader jumps to in 32-bit
 * protected mode with paging off and EBX = hvm_start_info. It builds page tables identity-mapping
 * the first 4 GiB with 2 MiB pages, enters long mode, and calls kit_start(start_info). */
#include "pvh_note.inc"

/* Loads the kit's GDT and flat 32-bit segments (PVH leaves GDTR and the selectors undefined). */
        .macro LOAD_FLAT_SEGMENTS
        lgdt    gdt_descriptor
        ljmp    $0x08, $1f
1:      mov     $0x10, %ax
        mov     %ax, %ds
        mov     %ax, %es
        mov     %ax, %ss
        mov     %ax, %fs
        mov     %ax, %gs
        .endm

/* With the page tables built: PAE, OSFXSR, OSXMMEXCPT, EFER.LME, paging on, into 64-bit code. */
        .macro ENTER_LONG_MODE target
        mov     $pml4, %eax
        mov     %eax, %cr3
        mov     %cr4, %eax
        or      $0x620, %eax
        mov     %eax, %cr4
        mov     $0xc0000080, %ecx
        rdmsr
        or      $0x100, %eax
        wrmsr
        mov     %cr0, %eax
        or      $0x80000000, %eax
        mov     %eax, %cr0
        ljmp    $0x18, $\target
        .endm

        .section .text.entry, "ax"
        .code32
        .globl  pvh_start32
pvh_start32:
        cli
        cld
        mov     %ebx, %esi              /* keep start_info */
        LOAD_FLAT_SEGMENTS
        mov     $boot_stack_top, %esp

        /* PML4[0] -> PDPT; PDPT[0..3] -> four page directories of 2 MiB pages: 0..4 GiB. */
        mov     $pdpt + 3, %eax
        mov     %eax, pml4
        xor     %ecx, %ecx
2:      mov     %ecx, %eax
        shl     $12, %eax
        add     $page_directories + 3, %eax
        mov     %eax, pdpt(, %ecx, 8)
        inc     %ecx
        cmp     $4, %ecx
        jne     2b
        xor     %ecx, %ecx
3:      mov     %ecx, %eax
        shl     $21, %eax
        or      $0x83, %eax             /* present, writable, 2 MiB */
        mov     %eax, page_directories(, %ecx, 8)
        mov     %ecx, %eax
        shr     $11, %eax               /* bits 32+ of the address: entry / 2048 */
        mov     %eax, page_directories + 4(, %ecx, 8)
        inc     %ecx
        cmp     $2048, %ecx
        jne     3b

        ENTER_LONG_MODE long_mode

/* A secondary vCPU (started by VCPUOP_initialise + VCPUOP_up): EBX = its id, ESP = its stack. It
 * reuses the page tables vCPU 0 built. */
        .code32
        .globl  kit_ap_start32
kit_ap_start32:
        cli
        LOAD_FLAT_SEGMENTS
        ENTER_LONG_MODE ap_long_mode

        .code64
ap_long_mode:
        mov     %esp, %esp              /* zero-extends the 32-bit stack pointer */
        mov     %ebx, %edi
        call    kit_ap_entry
2:      cli
        hlt
        jmp     2b

long_mode:
        mov     $boot_stack_top, %rsp
        mov     %esi, %edi              /* kit_start(start_info) */
        call    kit_start
4:      cli
        hlt
        jmp     4b

        .section .rodata
        .balign 8
gdt:
        .quad   0
        .quad   0x00cf9b000000ffff      /* 0x08: flat 32-bit code */
        .quad   0x00cf93000000ffff      /* 0x10: flat data */
        .quad   0x00af9b000000ffff      /* 0x18: 64-bit code */
gdt_end:
gdt_descriptor:
        .word   gdt_end - gdt - 1
        .quad   gdt

        .section .bss
        .balign 4096
pml4:   .skip   4096
pdpt:   .skip   4096
page_directories:
        .skip   4 * 4096
        .skip   16384
boot_stack_top:
        .section .note.GNU-stack, "", @progbits
