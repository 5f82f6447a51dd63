#include "components/xen/config.h"

#include "absl/strings/str_format.h"
#include "third_party/xen_public.h"

namespace xenkvm::xen {

absl::Status Validate(const XenConfig& config) {
  if (config.version < 0x30000 || (config.version >> 16) > 0xff) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "xen-version: %#x is not a Xen version in major << 16 | minor form (e.g. 0x4000a for 4.10)",
        config.version));
  }
  if (config.max_event_channels < 64 || config.max_event_channels > kMaxPortsFifo) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "max event channels: %u is out of range (64 to %u)", config.max_event_channels, kMaxPortsFifo));
  }
  if (config.gnttab_max_frames < 1 || config.gnttab_max_frames > 4096) {
    return absl::InvalidArgumentError(
        absl::StrFormat("xen-gnttab-max-frames: %u is out of range (1 to 4096)", config.gnttab_max_frames));
  }
  if (config.domid == 0 || config.domid >= DOMID_FIRST_RESERVED) {
    return absl::InvalidArgumentError(
        absl::StrFormat("domid: %u is out of range (1 to %u)", config.domid, DOMID_FIRST_RESERVED - 1));
  }
  if (config.vcpus < 1 || config.vcpus > kMaxLegacyVcpus) {
    return absl::InvalidArgumentError(
        absl::StrFormat("vcpus: %u is out of range (1 to %u)", config.vcpus, kMaxLegacyVcpus));
  }
  if (config.memory_map.size() > kMaxMemoryMapEntries) {
    return absl::InvalidArgumentError(absl::StrFormat("memory map: %u entries, more than Xen's %u",
                                                      config.memory_map.size(), kMaxMemoryMapEntries));
  }
  return absl::OkStatus();
}

uint32_t CpuidBase(const XenConfig& config) { return config.hyperv_leaves ? 0x40000100 : 0x40000000; }

uint32_t HypercallMsr(const XenConfig& config) { return config.hyperv_leaves ? 0x40000200 : 0x40000000; }

std::vector<accel::CpuidLeaf> CpuidLeaves(const XenConfig& config, uint32_t vcpu_id, uint64_t tsc_khz) {
  const uint32_t base = CpuidBase(config);
  uint32_t hvm_features = XEN_HVM_CPUID_IOMMU_MAPPINGS;
  if (config.xen_vapic) hvm_features |= XEN_HVM_CPUID_APIC_ACCESS_VIRT | XEN_HVM_CPUID_X2APIC_VIRT;
  if (config.version >= 0x40006) hvm_features |= XEN_HVM_CPUID_VCPU_ID_PRESENT | XEN_HVM_CPUID_DOMID_PRESENT;
  if (config.version >= 0x40011) hvm_features |= XEN_HVM_CPUID_UPCALL_VECTOR;
  const uint32_t khz = static_cast<uint32_t>(tsc_khz);
  return {
      {base + 0, std::nullopt, base + 4, XEN_CPUID_SIGNATURE_EBX, XEN_CPUID_SIGNATURE_ECX, XEN_CPUID_SIGNATURE_EDX},
      {base + 1, std::nullopt, config.version, 0, 0, 0},
      {base + 2, std::nullopt, 1, HypercallMsr(config), 0, 0},  // one hypercall page
      // Time: sub-leaf 0 (TSC mode "native", guest TSC kHz), 1 (no offset/scale), 2 (host TSC kHz).
      {base + 3, 0, 0, 0, khz, 0},
      {base + 3, 1, 0, 0, 0, 0},
      {base + 3, 2, 0, 0, khz, 0},
      {base + 4, 0, hvm_features, vcpu_id, config.domid, 0},
  };
}

}  // namespace xenkvm::xen
