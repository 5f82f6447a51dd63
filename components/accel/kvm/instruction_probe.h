// What the host's KVM can actually run for a guest. KVM_GET_SUPPORTED_CPUID says what KVM lets a
// guest see, not what runs: a host without VMX/SVM (KVM-PVM) executes guest code in KVM's
// instruction emulator, which stops at CMPXCHG16B, XRSTOR, POPCNT, every VEX instruction and more
// ("instruction emulation failed"). Each feature's instruction is therefore tried once in a
// throwaway VM (instruction_probes.S) and a feature whose instruction does not run is hidden from
// the guest's CPUID, with everything that depends on it. On hosts with hardware virtualisation
// every probe runs and nothing is hidden.
#ifndef XENKVM_COMPONENTS_ACCEL_KVM_INSTRUCTION_PROBE_H_
#define XENKVM_COMPONENTS_ACCEL_KVM_INSTRUCTION_PROBE_H_

#include <linux/kvm.h>

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "components/kvm/kvm.h"

namespace xenkvm::accel {

enum class CpuidRegister { kEax, kEbx, kEcx, kEdx };

struct CpuidFeature {
  const char* name;  // as /proc/cpuinfo spells it
  uint32_t leaf;
  uint32_t subleaf;
  CpuidRegister reg;
  uint8_t bit;
  const char* requires_feature;  // hidden whenever this one is (nullptr: none)
};

// Every feature the probes know: probed, or hidden through the feature it requires.
std::span<const CpuidFeature> KnownCpuidFeatures();

// Whether `cpuid` sets the feature named `name` (false for unknown names).
bool OffersFeature(std::span<const kvm_cpuid_entry2> cpuid, absl::string_view name);

// Clears the features named in `unrunnable` in `cpuid`, and every feature that requires one of
// them (transitively); returns the names of the features that were set and are now clear.
std::vector<std::string> HideFeatures(std::span<const std::string> unrunnable, std::vector<kvm_cpuid_entry2>& cpuid);

struct ProbeResult {
  std::vector<std::string> unrunnable;  // offered features whose instruction did not run
  std::vector<std::string> baseline;    // x86-64 baseline (SSE, FXSR) that did not run: no hiding helps
  std::vector<std::string> details;     // per failure: the probe and how it ended
};

// Runs the probe of every feature `offered` sets in a throwaway VM of `system` (64 KiB, one vCPU
// in 64-bit mode with `offered` as its CPUID). Errors only when the probe VM cannot be built.
absl::StatusOr<ProbeResult> ProbeInstructions(const kvm::Kvm& system, std::span<const kvm_cpuid_entry2> offered);

// The probe's code: its bytes from `name`'s label up to (not including) its OUT, for tests that
// run the user-mode probes natively. nullopt for a name without a probe.
std::optional<std::vector<uint8_t>> ProbeInstructionBytes(absl::string_view name);

}  // namespace xenkvm::accel

#endif  // XENKVM_COMPONENTS_ACCEL_KVM_INSTRUCTION_PROBE_H_
