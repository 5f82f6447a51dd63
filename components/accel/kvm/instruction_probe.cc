#include "components/accel/kvm/instruction_probe.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <variant>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "components/accel/kvm/instruction_probes.h"
#include "components/base/status.h"

namespace xenkvm::accel {
namespace {

using R = CpuidRegister;

constexpr CpuidFeature kFeatures[] = {
    {"sse3", 1, 0, R::kEcx, 0, nullptr},
    {"pclmulqdq", 1, 0, R::kEcx, 1, nullptr},
    {"ssse3", 1, 0, R::kEcx, 9, nullptr},
    {"fma", 1, 0, R::kEcx, 12, "avx"},
    {"cx16", 1, 0, R::kEcx, 13, nullptr},
    {"sse4_1", 1, 0, R::kEcx, 19, nullptr},
    {"sse4_2", 1, 0, R::kEcx, 20, nullptr},
    {"movbe", 1, 0, R::kEcx, 22, nullptr},
    {"popcnt", 1, 0, R::kEcx, 23, nullptr},
    {"aes", 1, 0, R::kEcx, 25, nullptr},
    {"xsave", 1, 0, R::kEcx, 26, nullptr},
    {"osxsave", 1, 0, R::kEcx, 27, "xsave"},
    {"avx", 1, 0, R::kEcx, 28, "xsave"},
    {"f16c", 1, 0, R::kEcx, 29, "avx"},
    {"rdrand", 1, 0, R::kEcx, 30, nullptr},
    {"fsgsbase", 7, 0, R::kEbx, 0, nullptr},
    {"bmi1", 7, 0, R::kEbx, 3, nullptr},
    {"avx2", 7, 0, R::kEbx, 5, "avx"},
    {"bmi2", 7, 0, R::kEbx, 8, nullptr},
    {"avx512f", 7, 0, R::kEbx, 16, "avx"},
    {"avx512dq", 7, 0, R::kEbx, 17, "avx512f"},
    {"rdseed", 7, 0, R::kEbx, 18, nullptr},
    {"adx", 7, 0, R::kEbx, 19, nullptr},
    {"avx512ifma", 7, 0, R::kEbx, 21, "avx512f"},
    {"clflushopt", 7, 0, R::kEbx, 23, nullptr},
    {"clwb", 7, 0, R::kEbx, 24, nullptr},
    {"avx512cd", 7, 0, R::kEbx, 28, "avx512f"},
    {"sha_ni", 7, 0, R::kEbx, 29, nullptr},
    {"avx512bw", 7, 0, R::kEbx, 30, "avx512f"},
    {"avx512vl", 7, 0, R::kEbx, 31, "avx512f"},
    {"avx512vbmi", 7, 0, R::kEcx, 1, "avx512f"},
    {"avx512_vbmi2", 7, 0, R::kEcx, 6, "avx512f"},
    {"gfni", 7, 0, R::kEcx, 8, nullptr},
    {"vaes", 7, 0, R::kEcx, 9, "avx"},
    {"vpclmulqdq", 7, 0, R::kEcx, 10, "avx"},
    {"avx512_vnni", 7, 0, R::kEcx, 11, "avx512f"},
    {"avx512_bitalg", 7, 0, R::kEcx, 12, "avx512f"},
    {"avx512_vpopcntdq", 7, 0, R::kEcx, 14, "avx512f"},
    {"rdpid", 7, 0, R::kEcx, 22, nullptr},
    {"avx512_vp2intersect", 7, 0, R::kEdx, 8, "avx512f"},
    {"amx_bf16", 7, 0, R::kEdx, 22, "xsave"},
    {"avx512_fp16", 7, 0, R::kEdx, 23, "avx512f"},
    {"amx_tile", 7, 0, R::kEdx, 24, "xsave"},
    {"amx_int8", 7, 0, R::kEdx, 25, "xsave"},
    {"avx_vnni", 7, 1, R::kEax, 4, "avx"},
    {"avx512_bf16", 7, 1, R::kEax, 5, "avx512f"},
    {"xsaveopt", 0xd, 1, R::kEax, 0, "xsave"},
    {"xsavec", 0xd, 1, R::kEax, 1, "xsave"},
    {"xsaves", 0xd, 1, R::kEax, 3, "xsave"},
    {"abm", 0x80000001, 0, R::kEcx, 5, nullptr},
    {"rdtscp", 0x80000001, 0, R::kEdx, 27, nullptr},
};

struct Probe {
  const char* name;
  unsigned start;  // offsets into instruction_probes::kText
  unsigned end;    // the probe's OUT
};

#define XENKVM_PROBE(name) {#name, instruction_probes::k_probe_##name, instruction_probes::k_probe_##name##_end}
constexpr Probe kProbes[] = {
    XENKVM_PROBE(sse3),     XENKVM_PROBE(pclmulqdq), XENKVM_PROBE(ssse3),    XENKVM_PROBE(fma),
    XENKVM_PROBE(cx16),     XENKVM_PROBE(sse4_1),    XENKVM_PROBE(sse4_2),   XENKVM_PROBE(movbe),
    XENKVM_PROBE(popcnt),   XENKVM_PROBE(aes),       XENKVM_PROBE(xsave),    XENKVM_PROBE(avx),
    XENKVM_PROBE(f16c),     XENKVM_PROBE(rdrand),    XENKVM_PROBE(fsgsbase), XENKVM_PROBE(bmi1),
    XENKVM_PROBE(avx2),     XENKVM_PROBE(bmi2),      XENKVM_PROBE(avx512f),  XENKVM_PROBE(rdseed),
    XENKVM_PROBE(adx),      XENKVM_PROBE(clflushopt), XENKVM_PROBE(clwb),    XENKVM_PROBE(sha_ni),
    XENKVM_PROBE(avx512bw), XENKVM_PROBE(avx512vl),  XENKVM_PROBE(gfni),     XENKVM_PROBE(vaes),
    XENKVM_PROBE(vpclmulqdq), XENKVM_PROBE(rdpid),   XENKVM_PROBE(xsaveopt), XENKVM_PROBE(xsavec),
    XENKVM_PROBE(xsaves),   XENKVM_PROBE(abm),       XENKVM_PROBE(rdtscp),
};
// The x86-64 baseline: never offered optionally, only reported.
constexpr Probe kBaselineProbes[] = {XENKVM_PROBE(sse), XENKVM_PROBE(fxsr)};
#undef XENKVM_PROBE

const CpuidFeature* FindFeature(absl::string_view name) {
  for (const CpuidFeature& feature : kFeatures) {
    if (name == feature.name) return &feature;
  }
  return nullptr;
}

const kvm_cpuid_entry2* FindLeaf(std::span<const kvm_cpuid_entry2> cpuid, uint32_t leaf, uint32_t subleaf) {
  for (const kvm_cpuid_entry2& entry : cpuid) {
    const bool indexed = entry.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
    if (entry.function == leaf && (!indexed || entry.index == subleaf)) return &entry;
  }
  return nullptr;
}

uint32_t Register(const kvm_cpuid_entry2& entry, CpuidRegister reg) {
  switch (reg) {
    case R::kEax: return entry.eax;
    case R::kEbx: return entry.ebx;
    case R::kEcx: return entry.ecx;
    case R::kEdx: return entry.edx;
  }
  return 0;
}

uint32_t& Register(kvm_cpuid_entry2& entry, CpuidRegister reg) {
  switch (reg) {
    case R::kEax: return entry.eax;
    case R::kEbx: return entry.ebx;
    case R::kEcx: return entry.ecx;
    case R::kEdx: break;
  }
  return entry.edx;
}

bool Requires(const CpuidFeature& feature, absl::string_view other) {
  for (const CpuidFeature* at = &feature; at->requires_feature != nullptr;) {
    if (other == at->requires_feature) return true;
    at = FindFeature(at->requires_feature);
    if (at == nullptr) return false;
  }
  return false;
}

// ---- The probe VM: identity-mapped 2 MiB page, page tables, code and data in 64 KiB.
constexpr uint64_t kMemorySize = 64 * 1024;
constexpr uint64_t kPml4 = 0x1000, kPdpt = 0x2000, kPd = 0x3000, kCode = 0x4000, kStackTop = 0x7ff0;
constexpr uint64_t kData = 0x8000, kDataSize = kMemorySize - kData;
constexpr uint16_t kDonePort = 0x80;
constexpr uint64_t kCr0 = 0x80050033;  // PG, WP, NE, ET, MP, PE
constexpr uint64_t kCr4Pae = 1 << 5, kCr4Osfxsr = 1 << 9, kCr4Osxmmexcpt = 1 << 10;
constexpr uint64_t kCr4Fsgsbase = 1 << 16, kCr4Osxsave = 1 << 18;
constexpr uint64_t kEferLme = 1 << 8, kEferLma = 1 << 10;
// XCR0: x87, SSE, AVX, and AVX-512's opmask, ZMM_Hi256 and Hi16_ZMM.
constexpr uint64_t kXcr0Sse = 0x3, kXcr0Avx = 0x4, kXcr0Avx512 = 0xe0;

kvm_segment Segment(uint16_t selector, uint8_t type, bool code64) {
  kvm_segment segment{};
  segment.limit = 0xffffffff;
  segment.selector = selector;
  segment.type = type;
  segment.present = 1;
  segment.s = 1;
  segment.g = 1;
  segment.l = code64;
  segment.db = !code64;
  return segment;
}

class ProbeVm {
 public:
  static absl::StatusOr<ProbeVm> Create(const kvm::Kvm& system, std::span<const kvm_cpuid_entry2> offered) {
    XENKVM_ASSIGN_OR_RETURN(kvm::Vm vm, system.CreateVm());
    XENKVM_RETURN_IF_ERROR(vm.EnableSplitIrqchip());
    void* memory = mmap(nullptr, kMemorySize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (memory == MAP_FAILED) return base::ErrnoStatus("kvm probe: mmap of its memory");
    ProbeVm probe(std::move(vm), static_cast<uint8_t*>(memory), offered);
    XENKVM_RETURN_IF_ERROR(probe.vm_.SetUserMemoryRegion(0, 0, kMemorySize, memory));
    probe.WriteTables();
    return probe;
  }

  ProbeVm(ProbeVm&& other) noexcept
      : vm_(std::move(other.vm_)), memory_(std::exchange(other.memory_, nullptr)),
        offered_(std::move(other.offered_)), vcpu_(std::move(other.vcpu_)), next_id_(other.next_id_) {}
  ~ProbeVm() {
    vcpu_.reset();
    if (memory_ != nullptr) munmap(memory_, kMemorySize);
  }

  // Empty when the probe reached its OUT; otherwise how it ended.
  absl::StatusOr<std::string> Run(const Probe& probe) {
    if (!vcpu_) XENKVM_RETURN_IF_ERROR(CreateVcpu());
    std::memset(memory_ + kData, 0, kDataSize);
    std::memcpy(memory_ + kCode, instruction_probes::kText, sizeof(instruction_probes::kText));
    kvm_regs regs{};
    regs.rip = kCode + probe.start;
    regs.rsp = kStackTop;
    regs.rsi = regs.rdi = kData;
    regs.rax = 3;  // the XSAVE family's component mask: x87 and SSE
    regs.rflags = 2;
    XENKVM_RETURN_IF_ERROR(vcpu_->SetRegs(regs));
    XENKVM_ASSIGN_OR_RETURN(kvm::VcpuExit exit, vcpu_->Run());
    std::string failure = Describe(exit, kCode + probe.end);
    if (!failure.empty()) vcpu_.reset();  // a fresh vCPU for the next probe
    return failure;
  }

 private:
  ProbeVm(kvm::Vm vm, uint8_t* memory, std::span<const kvm_cpuid_entry2> offered)
      : vm_(std::move(vm)), memory_(memory), offered_(offered.begin(), offered.end()) {}

  void WriteTables() {
    auto entry = [&](uint64_t table, uint64_t value) { std::memcpy(memory_ + table, &value, sizeof(value)); };
    entry(kPml4, kPdpt | 0x3);
    entry(kPdpt, kPd | 0x3);
    entry(kPd, 0x83);  // a 2 MiB page at 0, present and writable
  }

  absl::Status CreateVcpu() {
    XENKVM_ASSIGN_OR_RETURN(kvm::Vcpu vcpu, vm_.CreateVcpu(next_id_++));
    XENKVM_RETURN_IF_ERROR(vcpu.SetCpuid(offered_));
    XENKVM_ASSIGN_OR_RETURN(kvm_sregs sregs, vcpu.GetSregs());
    sregs.cs = Segment(0x08, 0xb, true);
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = Segment(0x10, 0x3, false);
    sregs.tr = Segment(0x18, 0xb, false);  // a busy TSS, as VMX requires
    sregs.tr.s = 0;
    sregs.tr.limit = 0x67;
    sregs.tr.g = 0;
    sregs.cr0 = kCr0;
    sregs.cr3 = kPml4;
    sregs.cr4 = kCr4Pae | kCr4Osfxsr | kCr4Osxmmexcpt;
    if (OffersFeature(offered_, "xsave")) sregs.cr4 |= kCr4Osxsave;
    if (OffersFeature(offered_, "fsgsbase")) sregs.cr4 |= kCr4Fsgsbase;
    sregs.efer = kEferLme | kEferLma;
    XENKVM_RETURN_IF_ERROR(vcpu.SetSregs(sregs));
    if (sregs.cr4 & kCr4Osxsave) {
      kvm_xcrs xcrs{};
      xcrs.nr_xcrs = 1;
      xcrs.xcrs[0].xcr = 0;
      xcrs.xcrs[0].value = kXcr0Sse | SupportedXcr0(kXcr0Avx | kXcr0Avx512);
      XENKVM_RETURN_IF_ERROR(vcpu.SetXcrs(xcrs));
    }
    XENKVM_RETURN_IF_ERROR(vcpu.SetMpState(KVM_MP_STATE_RUNNABLE));  // an AP would wait for a SIPI
    vcpu_.emplace(std::move(vcpu));
    return absl::OkStatus();
  }

  // The state components of `wanted` that leaf 0xD.0 offers, AVX-512's only as a whole.
  uint64_t SupportedXcr0(uint64_t wanted) const {
    const kvm_cpuid_entry2* leaf = FindLeaf(offered_, 0xd, 0);
    uint64_t supported = leaf == nullptr ? 0 : ((uint64_t{leaf->edx} << 32) | leaf->eax) & wanted;
    if ((supported & kXcr0Avx512) != kXcr0Avx512) supported &= ~kXcr0Avx512;
    return supported;
  }

  static std::string Describe(const kvm::VcpuExit& exit, uint64_t done_rip) {
    if (const auto* io = std::get_if<kvm::IoExit>(&exit); io != nullptr && io->is_write && io->port == kDonePort) {
      return "";
    }
    if (const auto* internal = std::get_if<kvm::InternalErrorExit>(&exit)) {
      return internal->suberror == KVM_INTERNAL_ERROR_EMULATION
                 ? "instruction emulation failed"
                 : absl::StrCat("internal error ", internal->suberror);
    }
    if (std::holds_alternative<kvm::ShutdownExit>(exit)) {
      return "a fault (no IDT: triple fault)";
    }
    return absl::StrFormat("exit #%d instead of the OUT at %#x", exit.index(), done_rip);
  }

  kvm::Vm vm_;
  uint8_t* memory_;
  std::vector<kvm_cpuid_entry2> offered_;
  std::optional<kvm::Vcpu> vcpu_;
  uint32_t next_id_ = 0;
};

}  // namespace

std::span<const CpuidFeature> KnownCpuidFeatures() { return kFeatures; }

bool OffersFeature(std::span<const kvm_cpuid_entry2> cpuid, absl::string_view name) {
  const CpuidFeature* feature = FindFeature(name);
  if (feature == nullptr) return false;
  const kvm_cpuid_entry2* entry = FindLeaf(cpuid, feature->leaf, feature->subleaf);
  return entry != nullptr && (Register(*entry, feature->reg) >> feature->bit & 1) != 0;
}

std::vector<std::string> HideFeatures(std::span<const std::string> unrunnable, std::vector<kvm_cpuid_entry2>& cpuid) {
  std::vector<std::string> hidden;
  for (const CpuidFeature& feature : kFeatures) {
    const bool hide = std::any_of(unrunnable.begin(), unrunnable.end(), [&](const std::string& name) {
      return name == feature.name || Requires(feature, name);
    });
    if (!hide || !OffersFeature(cpuid, feature.name)) continue;
    for (kvm_cpuid_entry2& entry : cpuid) {
      const bool indexed = entry.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
      if (entry.function == feature.leaf && (!indexed || entry.index == feature.subleaf)) {
        Register(entry, feature.reg) &= ~(uint32_t{1} << feature.bit);
      }
    }
    hidden.emplace_back(feature.name);
  }
  return hidden;
}

absl::StatusOr<ProbeResult> ProbeInstructions(const kvm::Kvm& system, std::span<const kvm_cpuid_entry2> offered) {
  XENKVM_ASSIGN_OR_RETURN(ProbeVm vm, ProbeVm::Create(system, offered));
  ProbeResult result;
  auto failed = [&](const Probe& probe) -> absl::StatusOr<bool> {
    XENKVM_ASSIGN_OR_RETURN(std::string failure, vm.Run(probe));
    if (failure.empty()) return false;
    result.details.push_back(absl::StrCat(probe.name, ": ", failure));
    return true;
  };
  for (const Probe& probe : kProbes) {
    if (!OffersFeature(offered, probe.name)) continue;
    const CpuidFeature* feature = FindFeature(probe.name);
    // Not run when what it needs is already known to fail (an AVX probe without XSAVE state).
    if (std::any_of(result.unrunnable.begin(), result.unrunnable.end(),
                    [&](const std::string& name) { return Requires(*feature, name); })) {
      continue;
    }
    XENKVM_ASSIGN_OR_RETURN(bool did_fail, failed(probe));
    if (did_fail) result.unrunnable.emplace_back(probe.name);
  }
  for (const Probe& probe : kBaselineProbes) {
    XENKVM_ASSIGN_OR_RETURN(bool did_fail, failed(probe));
    if (did_fail) result.baseline.emplace_back(probe.name);
  }
  return result;
}

std::optional<std::vector<uint8_t>> ProbeInstructionBytes(absl::string_view name) {
  for (std::span<const Probe> probes : {std::span<const Probe>(kProbes), std::span<const Probe>(kBaselineProbes)}) {
    for (const Probe& probe : probes) {
      if (name == probe.name) {
        return std::vector<uint8_t>(instruction_probes::kText + probe.start, instruction_probes::kText + probe.end);
      }
    }
  }
  return std::nullopt;
}

}  // namespace xenkvm::accel
