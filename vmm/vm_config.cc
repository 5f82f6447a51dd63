#include "vmm/vm_config.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace xenkvm::vmm {

absl::StatusOr<AcceleratorKind> ParseAcceleratorKind(const std::string& name) {
  if (name == "auto") return AcceleratorKind::kAuto;
  if (name == "kvm") return AcceleratorKind::kKvm;
  if (name == "emu") return AcceleratorKind::kEmu;
  return absl::InvalidArgumentError(
      absl::StrCat("accelerator: unknown accelerator \"", name, "\"; use kvm, emu or auto"));
}

const char* AcceleratorKindName(AcceleratorKind kind) {
  switch (kind) {
    case AcceleratorKind::kAuto:
      return "auto";
    case AcceleratorKind::kKvm:
      return "kvm";
    case AcceleratorKind::kEmu:
      return "emu";
  }
  return "?";
}

absl::Status Validate(const VmConfig& config) {
  if (config.kernel.empty()) return absl::InvalidArgumentError("kernel: no kernel given (an ELF file with a PVH note)");
  if (config.memory_mib < 2 || config.memory_mib > 1024 * 1024) {
    return absl::InvalidArgumentError(
        absl::StrFormat("memory: %u MiB is out of range (2 MiB to 1 TiB)", config.memory_mib));
  }
  if (config.vcpus < 1 || config.vcpus > kMaxVcpus) {
    return absl::InvalidArgumentError(
        absl::StrFormat("vcpus: %u is out of range (1 to %u)", config.vcpus, kMaxVcpus));
  }
  if (config.xen_version != 0 && (config.xen_version < 0x30000 || (config.xen_version >> 16) > 0xff)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "xen-version: %#x is not major << 16 | minor (e.g. 0x40011 for 4.17)", config.xen_version));
  }
  if (config.xen_max_event_channels < 64 || config.xen_max_event_channels > 4096) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "xen-max-evtchn: %u is out of range (64 to 4096)", config.xen_max_event_channels));
  }
  return absl::OkStatus();
}

}  // namespace xenkvm::vmm
