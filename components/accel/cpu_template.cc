#include "components/accel/cpu_template.h"

#include "absl/strings/str_cat.h"

namespace xenkvm::accel {
namespace {

// Extension bits a template manages, per register, and the ones each level keeps. Bits not
// managed (APIC, TSC, hypervisor, PAE...) pass through.
struct LeafMasks {
  uint32_t managed;
  uint32_t v1, v2, v3;  // kept at each level
};

constexpr uint32_t Bit(int n) { return uint32_t{1} << n; }

// Leaf 1 ECX: SSE3 0, PCLMULQDQ 1, SSSE3 9, FMA 12, CX16 13, SSE4.1 19, SSE4.2 20, MOVBE 22,
// POPCNT 23, AES 25, XSAVE 26, OSXSAVE 27, AVX 28, F16C 29, RDRAND 30.
constexpr uint32_t kLeaf1EcxV2 = Bit(0) | Bit(9) | Bit(13) | Bit(19) | Bit(20) | Bit(23);
constexpr uint32_t kLeaf1EcxV3 = kLeaf1EcxV2 | Bit(12) | Bit(22) | Bit(26) | Bit(27) | Bit(28) | Bit(29);
constexpr LeafMasks kLeaf1Ecx{kLeaf1EcxV3 | Bit(1) | Bit(25) | Bit(30), 0, kLeaf1EcxV2, kLeaf1EcxV3};
// Leaf 7 EBX: BMI1 3, AVX2 5, BMI2 8, ERMS 9, AVX-512 (16, 17, 21, 26-28, 30, 31), RDSEED 18,
// ADX 19, SHA 29. ECX: AVX-512 VBMI and friends 1, 6, 11, 12, 14; VAES 9, VPCLMULQDQ 10, GFNI 8.
constexpr uint32_t kLeaf7EbxV3 = Bit(3) | Bit(5) | Bit(8);
constexpr LeafMasks kLeaf7Ebx{kLeaf7EbxV3 | Bit(9) | Bit(16) | Bit(17) | Bit(18) | Bit(19) | Bit(21) | Bit(26) |
                                  Bit(27) | Bit(28) | Bit(29) | Bit(30) | Bit(31),
                              0, 0, kLeaf7EbxV3};
constexpr LeafMasks kLeaf7Ecx{Bit(1) | Bit(6) | Bit(8) | Bit(9) | Bit(10) | Bit(11) | Bit(12) | Bit(14), 0, 0, 0};
// 0x80000001 ECX: LAHF/SAHF 0, ABM (LZCNT) 5, SSE4a 6, XOP 11, FMA4 16, TBM 21.
constexpr LeafMasks kExt1Ecx{Bit(0) | Bit(5) | Bit(6) | Bit(11) | Bit(16) | Bit(21), 0, Bit(0), Bit(0) | Bit(5)};

uint32_t Narrow(uint32_t value, const LeafMasks& masks, CpuTemplate cpu_template) {
  uint32_t kept = 0;
  switch (cpu_template) {
    case CpuTemplate::kHost:
      return value;
    case CpuTemplate::kX86_64V1:
      kept = masks.v1;
      break;
    case CpuTemplate::kX86_64V2:
      kept = masks.v2;
      break;
    case CpuTemplate::kX86_64V3:
      kept = masks.v3;
      break;
  }
  return value & (~masks.managed | kept);
}

}  // namespace

absl::StatusOr<CpuTemplate> ParseCpuTemplate(absl::string_view name) {
  if (name.empty() || name == "host") return CpuTemplate::kHost;
  if (name == "x86-64-v1") return CpuTemplate::kX86_64V1;
  if (name == "x86-64-v2") return CpuTemplate::kX86_64V2;
  if (name == "x86-64-v3") return CpuTemplate::kX86_64V3;
  return absl::InvalidArgumentError(
      absl::StrCat("cpu template \"", name, "\" is unknown: use host, x86-64-v1, x86-64-v2 or x86-64-v3"));
}

const char* CpuTemplateName(CpuTemplate cpu_template) {
  switch (cpu_template) {
    case CpuTemplate::kHost:
      return "host";
    case CpuTemplate::kX86_64V1:
      return "x86-64-v1";
    case CpuTemplate::kX86_64V2:
      return "x86-64-v2";
    case CpuTemplate::kX86_64V3:
      return "x86-64-v3";
  }
  return "?";
}

void ApplyCpuTemplate(CpuTemplate cpu_template, uint32_t function, uint32_t index, CpuidRegisters& registers) {
  if (function == 1) {
    registers.ecx = Narrow(registers.ecx, kLeaf1Ecx, cpu_template);
  } else if (function == 7 && index == 0) {
    registers.ebx = Narrow(registers.ebx, kLeaf7Ebx, cpu_template);
    registers.ecx = Narrow(registers.ecx, kLeaf7Ecx, cpu_template);
  } else if (function == 0x80000001) {
    registers.ecx = Narrow(registers.ecx, kExt1Ecx, cpu_template);
  }
}

}  // namespace xenkvm::accel
