/* The first-byte guest, for tests/bench/boot_time.py: its second instruction writes a newline to the
 * debug port (0xe9), which the VMM passes straight to its stdout, so the VMM's first output byte
 * marks the guest's start; then it waits in HLT (interrupts on, none coming) for the benchmark to
 * stop the VMM, so the VMM is measured alive. Entered by the PVH note in 32-bit protected mode;
 * touches no memory. */
#include "kit/pvh_note.inc"

        .section .text.entry, "ax"
        .code32
        .globl  pvh_start32
pvh_start32:
        mov     $0x0a, %al
        out     %al, $0xe9
1:      sti
        hlt
        jmp     1b
