// What a VM is made of: the input of the microVM assembler.
#ifndef XENKVM_VMM_VM_CONFIG_H_
#define XENKVM_VMM_VM_CONFIG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "components/accel/cpu_template.h"
#include "components/memory/guest_memory.h"
#include "components/xenbus/xen_disk.h"
#include "components/xenbus/xen_net.h"

namespace xenkvm::vmm {

enum class AcceleratorKind { kAuto, kKvm, kEmu };

// "auto", "kvm" or "emu"; anything else is an error that lists them.
absl::StatusOr<AcceleratorKind> ParseAcceleratorKind(const std::string& name);
const char* AcceleratorKindName(AcceleratorKind kind);

inline constexpr uint32_t kMaxVcpus = 32;  // the vcpu_info slots in Xen's shared_info

struct VmConfig {
  std::string name = "guest";  // the domain's name in XenStore
  uint64_t memory_mib = 256;
  memory::RamPages ram_pages = memory::RamPages::k4KiB;  // k2MiB: guest RAM on the host's huge pages
  uint32_t vcpus = 1;
  std::string kernel;  // path to a kernel with a PVH note: an ELF or a bzImage
  std::string initrd;  // path to an initial ramdisk, the first boot module; empty: none
  std::string cmdline;
  AcceleratorKind accelerator = AcceleratorKind::kAuto;
  accel::CpuTemplate cpu_template = accel::CpuTemplate::kHost;
  // Xen: XENVER_version form (major << 16 | minor); 0 runs the guest without the Xen interface.
  uint32_t xen_version = 0x40011;  // 4.17
  uint32_t xen_max_event_channels = 4096;
  uint32_t xen_gnttab_max_frames = 64;
  // Serve the VM's XenStore on this Unix socket too (xenstore-utils with XENSTORED_PATH); empty: no.
  std::string xenstore_socket;
  // xen-disk devices (they need the Xen interface).
  std::vector<xenbus::XenDiskConfig> disks;
  // xen-net devices (vif0, vif1, ... in order; they need the Xen interface).
  std::vector<xenbus::XenNetConfig> networks;
};

// Checks the values (not the files): memory and vCPU count in range (whole huge pages of memory
// on huge pages), a kernel named, disks only
// with the Xen interface and on distinct vdevs.
absl::Status Validate(const VmConfig& config);

// A --disk value, xl's disk syntax in key=value form: "target=PATH,vdev=xvda,access=rw" (path= for
// target=; access r, ro, w or rw, default rw), and features=flush+discard+persistent+indirect to
// offer only those (default: all). Errors name the key.
absl::StatusOr<xenbus::XenDiskConfig> ParseDiskSpec(const std::string& spec);


}  // namespace xenkvm::vmm

#endif  // XENKVM_VMM_VM_CONFIG_H_
