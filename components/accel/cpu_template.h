// Named CPU templates: what a guest is offered in CPUID narrowed to a known feature set, so that
// an image runs the same on every host of a fleet (QEMU's -cpu x86-64-vN models and Firecracker's
// templates are the anchors). A template only removes instruction-set extensions from leaves 1,
// 7 (sub-leaf 0) and 0x80000001; the topology, APIC, hypervisor and Xen leaves are untouched, and
// features the accelerator cannot run are never offered whatever the template.
//
// The levels are the x86-64 psABI's microarchitecture levels:
//   x86-64-v1  the baseline: x87, CMOV, CX8, MMX, FXSR, SSE, SSE2, SYSCALL, NX, LM
//   x86-64-v2  v1 + CMPXCHG16B, LAHF/SAHF, POPCNT, SSE3, SSSE3, SSE4.1, SSE4.2
//   x86-64-v3  v2 + AVX, AVX2, BMI1, BMI2, F16C, FMA, LZCNT, MOVBE, XSAVE/OSXSAVE
//   host       no narrowing: everything the accelerator offers (the default)
#ifndef XENKVM_COMPONENTS_ACCEL_CPU_TEMPLATE_H_
#define XENKVM_COMPONENTS_ACCEL_CPU_TEMPLATE_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace xenkvm::accel {

enum class CpuTemplate { kHost, kX86_64V1, kX86_64V2, kX86_64V3 };

// "host", "x86-64-v1", "x86-64-v2", "x86-64-v3"; kInvalidArgument naming them otherwise.
absl::StatusOr<CpuTemplate> ParseCpuTemplate(absl::string_view name);
const char* CpuTemplateName(CpuTemplate cpu_template);

// Clears, in one CPUID answer, the extensions `cpu_template` does not include.
struct CpuidRegisters {
  uint32_t eax = 0, ebx = 0, ecx = 0, edx = 0;
};
void ApplyCpuTemplate(CpuTemplate cpu_template, uint32_t function, uint32_t index, CpuidRegisters& registers);

}  // namespace xenkvm::accel

#endif  // XENKVM_COMPONENTS_ACCEL_CPU_TEMPLATE_H_
