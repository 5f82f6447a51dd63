// What a Xen guest is told about its hypervisor, and the shim's limits.
#ifndef XENKVM_COMPONENTS_XEN_CONFIG_H_
#define XENKVM_COMPONENTS_XEN_CONFIG_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "components/accel/accelerator.h"

namespace xenkvm::xen {

inline constexpr uint32_t kMaxPorts64 = 4096;  // 2-level ABI: 64 words of 64 bits
inline constexpr uint32_t kMaxPorts32 = 1024;  // 32 words of 32 bits
inline constexpr uint32_t kMaxPortsFifo = 131072;  // FIFO ABI: 17-bit links
inline constexpr uint32_t kMaxLegacyVcpus = 32;  // vcpu_info slots in shared_info

inline constexpr uint32_t kMaxMemoryMapEntries = 128;  // Xen's E820MAX for a domain's map

// One entry of the guest's memory map, as XENMEM_memory_map returns it (Xen's struct e820entry).
struct MemoryMapEntry {
  uint64_t address = 0;
  uint64_t size = 0;
  uint32_t type = 0;  // E820 numbering: 1 RAM, 2 reserved, 3 ACPI...
};

struct XenConfig {
  // XENVER_version form: major << 16 | minor. Decides the CPUID features shown (VCPU_ID_PRESENT
  // from 4.6, UPCALL_VECTOR from 4.17).
  uint32_t version = 0x40011;
  // Advertise APIC and x2APIC access virtualisation (QEMU's +xen-vapic).
  bool xen_vapic = false;
  // Hyper-V's leaves are also shown: Xen's move to 0x40000100 and the MSR to 0x40000200.
  bool hyperv_leaves = false;
  // Event channels: a limit below the ABI's (2-level: 4096 for 64-bit guests, 1024 for 32-bit;
  // FIFO: 131072) when smaller.
  uint32_t max_event_channels = kMaxPorts64;
  // Grant-table frames the guest may map (add_to_physmap of XENMAPSPACE_grant_table).
  uint32_t gnttab_max_frames = 64;
  uint16_t domid = 1;
  uint32_t vcpus = 1;
  // What XENMEM_memory_map answers (the map the domain builder gave the guest). Empty: -ENOSYS,
  // as Xen answers a domain that has none.
  std::vector<MemoryMapEntry> memory_map;
};

absl::Status Validate(const XenConfig& config);

// The first hypervisor CPUID leaf (0x40000000, or 0x40000100 beside Hyper-V's).
uint32_t CpuidBase(const XenConfig& config);
// The MSR the guest writes the hypercall page's address to (CPUID base + 2 names it).
uint32_t HypercallMsr(const XenConfig& config);
// Xen's hypervisor leaves for `vcpu_id`, for Vcpu::SetCpuid.
std::vector<accel::CpuidLeaf> CpuidLeaves(const XenConfig& config, uint32_t vcpu_id, uint64_t tsc_khz);

}  // namespace xenkvm::xen

#endif  // XENKVM_COMPONENTS_XEN_CONFIG_H_
