/* One probe per CPUID feature the kvm backend may offer a guest: the feature's instruction,
 * then `out %al, $0x80`. instruction_probe.cc runs each in a throwaway VM in 64-bit mode at CPL 0
 * with RSI = RDI = a 64-byte aligned, zeroed data page, RAX = 3 and RDX = 0 (the x87 and SSE
 * state for the XSAVE family); a probe that does not reach its OUT is a feature the host's KVM
 * cannot run for a guest. Position-independent: the bytes run wherever they are copied (the
 * tests also run the user-mode ones natively, up to each probe's _end label). */
        .code64
        .text
        .macro  PROBE name
        .globl  probe_\name
probe_\name:
        .endm
        .macro  END_PROBE name
        .globl  probe_\name\()_end
probe_\name\()_end:
        out     %al, $0x80
        ud2                             /* never reached: a triple fault if it is */
        .endm

/* ---- CPUID.1:ECX */
PROBE sse3
        movddup %xmm1, %xmm0
END_PROBE sse3
PROBE pclmulqdq
        pclmulqdq $0, %xmm1, %xmm0
END_PROBE pclmulqdq
PROBE ssse3
        pshufb  %xmm1, %xmm0
END_PROBE ssse3
PROBE fma
        vfmadd231ps %xmm2, %xmm1, %xmm0
END_PROBE fma
PROBE cx16
        cmpxchg16b (%rsi)
END_PROBE cx16
PROBE sse4_1
        ptest   %xmm1, %xmm0
END_PROBE sse4_1
PROBE sse4_2
        crc32q  %rcx, %rax
END_PROBE sse4_2
PROBE movbe
        movbe   (%rsi), %rcx
END_PROBE movbe
PROBE popcnt
        popcnt  %rcx, %rcx
END_PROBE popcnt
PROBE aes
        aesenc  %xmm1, %xmm0
END_PROBE aes
PROBE xsave
        xsave   (%rsi)
        xrstor  (%rsi)
END_PROBE xsave
PROBE avx
        vxorps  %ymm1, %ymm0, %ymm0
END_PROBE avx
PROBE f16c
        vcvtph2ps %xmm1, %xmm0
END_PROBE f16c
PROBE rdrand
        rdrand  %rcx
END_PROBE rdrand

/* ---- CPUID.7.0:EBX */
PROBE fsgsbase
        rdfsbase %rcx
END_PROBE fsgsbase
PROBE bmi1
        andn    %rcx, %rdx, %rcx
END_PROBE bmi1
PROBE avx2
        vpaddd  %ymm1, %ymm0, %ymm0
END_PROBE avx2
PROBE bmi2
        shlx    %rcx, %rdx, %rcx
END_PROBE bmi2
PROBE avx512f
        vpxord  %zmm1, %zmm0, %zmm0
END_PROBE avx512f
PROBE rdseed
        rdseed  %rcx
END_PROBE rdseed
PROBE adx
        adcx    %rcx, %rcx
END_PROBE adx
PROBE clflushopt
        clflushopt (%rsi)
END_PROBE clflushopt
PROBE clwb
        clwb    (%rsi)
END_PROBE clwb
PROBE sha_ni
        sha256msg1 %xmm1, %xmm0
END_PROBE sha_ni
PROBE avx512bw
        vpaddb  %zmm1, %zmm0, %zmm0
END_PROBE avx512bw
PROBE avx512vl
        vpxord  %xmm1, %xmm0, %xmm0
END_PROBE avx512vl

/* ---- CPUID.7.0:ECX */
PROBE gfni
        gf2p8mulb %xmm1, %xmm0
END_PROBE gfni
PROBE vaes
        vaesenc %ymm1, %ymm0, %ymm0
END_PROBE vaes
PROBE vpclmulqdq
        vpclmulqdq $0, %ymm1, %ymm0, %ymm0
END_PROBE vpclmulqdq
PROBE rdpid
        rdpid   %rcx
END_PROBE rdpid

/* ---- CPUID.0xD.1:EAX */
PROBE xsaveopt
        xsaveopt (%rsi)
END_PROBE xsaveopt
PROBE xsavec
        xsavec  (%rsi)
END_PROBE xsavec
PROBE xsaves                            /* CPL 0 only */
        xsaves  (%rsi)
        xrstors (%rsi)
END_PROBE xsaves

/* ---- CPUID.0x80000001 */
PROBE abm
        lzcnt   %rcx, %rcx
END_PROBE abm
PROBE rdtscp
        rdtscp
END_PROBE rdtscp

/* ---- The x86-64 baseline: nothing to hide, but a 64-bit guest stops where these fail. */
PROBE sse
        stmxcsr (%rsi)
        ldmxcsr (%rsi)
        addps   %xmm1, %xmm0
END_PROBE sse
PROBE fxsr
        fxsave  (%rsi)
        fxrstor (%rsi)
END_PROBE fxsr
