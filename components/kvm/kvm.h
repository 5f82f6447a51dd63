// Kvm: the /dev/kvm system handle, root of the kernel object tree Kvm -> Vm -> Vcpu.
#ifndef XENKVM_COMPONENTS_KVM_KVM_H_
#define XENKVM_COMPONENTS_KVM_KVM_H_

#include <linux/kvm.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "components/base/fd.h"
#include "components/kvm/vm.h"
#include "components/kvm/xen_capabilities.h"

namespace xenkvm::kvm {

inline constexpr char kDefaultKvmPath[] = "/dev/kvm";

class Kvm {
 public:
  // Opens the device and checks the API version (12). A missing device is kNotFound and an
  // inaccessible one kPermissionDenied, each saying what to do.
  static absl::StatusOr<Kvm> Open(const std::string& path = kDefaultKvmPath);

  int fd() const { return fd_.get(); }

  // KVM_CHECK_EXTENSION on the system handle: 0 when absent, else a capability-specific value.
  absl::StatusOr<int> CheckExtension(int capability) const;
  // Size of each vCPU's kvm_run mapping.
  absl::StatusOr<size_t> VcpuMmapSize() const;
  // CPUID leaves the host can give a guest (KVM_GET_SUPPORTED_CPUID).
  absl::StatusOr<std::vector<kvm_cpuid_entry2>> SupportedCpuid() const;
  // MSRs KVM saves and restores (KVM_GET_MSR_INDEX_LIST).
  absl::StatusOr<std::vector<uint32_t>> MsrIndexList() const;
  // KVM_CAP_XEN_HVM as a typed set (empty when the kernel has no CONFIG_KVM_XEN).
  absl::StatusOr<XenCapabilities> ProbeXen() const;

  // A new VM, which knows this host's vCPU mmap size and Xen capabilities.
  absl::StatusOr<Vm> CreateVm() const;

 private:
  explicit Kvm(base::Fd fd) : fd_(std::move(fd)) {}
  base::Fd fd_;
};

// OK when KVM can run a VM here (the device opens and KVM_CREATE_VM works); otherwise the reason.
// Tests use it to skip, the accelerator to choose.
absl::Status KvmUsable(const std::string& path = kDefaultKvmPath);

}  // namespace xenkvm::kvm

#endif  // XENKVM_COMPONENTS_KVM_KVM_H_
