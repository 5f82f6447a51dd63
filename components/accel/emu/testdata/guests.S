/* Test guests for the emu accelerator: 32-bit code entered in the PVH state. Each label is an entry
 * point; the test loads all of .text at one address. Ports used to report: 0x10..0x1f. */
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
        hlt

        .globl mmio
mmio:
        movl    $0xcafef00d, 0xfebf0000
        mov     0xfebf0008, %eax
        out     %eax, $0x10
        hlt

        .globl spin
spin:
        jmp     spin

        .globl invalid
invalid:
        ud2
