// The instruction probes' result (instruction_probe.h) kept between VMM starts on one host boot, so
// only the first VMM pays for the throwaway VM. An entry is used only where its key matches: the
// host's boot (/proc/sys/kernel/random/boot_id), the KVM modules loaded, and the features the CPUID
// the probes ran against offers. Reloading KVM's modules with other code within one boot is not seen:
// delete the file then. Anything unreadable or malformed is a miss, never an error.
#ifndef XENKVM_COMPONENTS_ACCEL_KVM_PROBE_CACHE_H_
#define XENKVM_COMPONENTS_ACCEL_KVM_PROBE_CACHE_H_

#include <linux/kvm.h>

#include <optional>
#include <span>
#include <string>

#include "absl/status/status.h"
#include "components/accel/kvm/instruction_probe.h"

namespace xenkvm::accel {

// Where the cache lives: /run/xenkvm/ for root, $XDG_RUNTIME_DIR otherwise; nullopt without either.
std::optional<std::string> DefaultProbeCachePath();

// This host boot's key for probes run against `offered`; nullopt where the boot ID is unreadable.
std::optional<std::string> ProbeCacheKey(std::span<const kvm_cpuid_entry2> offered);

// The result stored at `path` under `key`, if that is what the file holds.
std::optional<ProbeResult> LoadProbeResult(const std::string& path, const std::string& key);

// Replaces the file at `path` (written aside and renamed, so a concurrent reader sees all or nothing).
absl::Status StoreProbeResult(const std::string& path, const std::string& key, const ProbeResult& result);

}  // namespace xenkvm::accel

#endif  // XENKVM_COMPONENTS_ACCEL_KVM_PROBE_CACHE_H_
