/* The first-byte guest, for tests/bench/boot_time.py: its second instruction writes a newline to the
 * debug port (0xe9), which the VMM passes straight to its stdout, so the VMM's first output byte
 * marks the guest's start; then it waits in HLT (interrupts on, none coming) for the benchmark to
 * stop the VMM, so the VMM is measured alive. Entered by the PVH note in 32-bit protected mode;
 * touches no memory. */
        .set    XEN_ELFNOTE_PHYS32_ENTRY, 18

        .pushsection .note.Xen, "a", @note
        .balign 4
        .long   4                       /* name size: "Xen\0" */
        .long   4                       /* value size */
        .long   XEN_ELFNOTE_PHYS32_ENTRY
        .asciz  "Xen"
        .long   pvh_start32
        .popsection

        .section .text.entry, "ax"
        .code32
        .globl  pvh_start32
pvh_start32:
        mov     $0x0a, %al
        out     %al, $0xe9
1:      sti
        hlt
        jmp     1b
