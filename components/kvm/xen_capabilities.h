// XenCapabilities: what the running kernel's KVM can do for Xen guests, as probed from
// KVM_CAP_XEN_HVM. Every Xen call in this component asks it first and refuses, before any ioctl,
// what the kernel cannot do.
#ifndef XENKVM_COMPONENTS_KVM_XEN_CAPABILITIES_H_
#define XENKVM_COMPONENTS_KVM_XEN_CAPABILITIES_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace xenkvm::kvm {

enum class XenCapability : uint32_t {
  kHypercallMsr = 1u << 0,
  kInterceptHypercall = 1u << 1,
  kSharedInfo = 1u << 2,
  kRunstate = 1u << 3,
  kEvtchn2Level = 1u << 4,
  kEvtchnSend = 1u << 5,
  kRunstateUpdateFlag = 1u << 6,
  kPvclockTscUnstable = 1u << 7,
  kSharedInfoHva = 1u << 8,
};

class XenCapabilities {
 public:
  constexpr XenCapabilities() = default;
  constexpr explicit XenCapabilities(uint32_t bits) : bits_(bits) {}

  constexpr uint32_t bits() const { return bits_; }
  constexpr bool Has(XenCapability capability) const {
    return (bits_ & static_cast<uint32_t>(capability)) != 0;
  }
  // Nothing at all: the kernel was built without CONFIG_KVM_XEN.
  constexpr bool empty() const { return bits_ == 0; }

  // OK, or kFailedPrecondition naming `what`, the missing capability and the Linux version that
  // added it.
  absl::Status Require(XenCapability capability, absl::string_view what) const;

  // The flags to pass in kvm_xen_hvm_config: the probed bits the kernel accepts there.
  uint32_t ConfigFlags() const;

  // "HYPERCALL_MSR|INTERCEPT_HCALL|..." or "none".
  std::string ToString() const;

  static absl::string_view Name(XenCapability capability);
  // The first Linux version that reports `capability`, e.g. "5.19".
  static absl::string_view MinimumLinux(XenCapability capability);

 private:
  uint32_t bits_ = 0;
};

}  // namespace xenkvm::kvm

#endif  // XENKVM_COMPONENTS_KVM_XEN_CAPABILITIES_H_
