// The kvm accelerator: guest vCPUs on Linux KVM (components/kvm), the product path.
//
// Hypercalls: when the kernel intercepts Xen hypercalls (KVM_CAP_XEN_HVM INTERCEPT_HCALL), KVM
// fills the hypercall page and every VMCALL/VMMCALL becomes a HypercallExit. On a kernel built
// without CONFIG_KVM_XEN, the guest's write of the hypercall MSR reaches userspace
// (KVM_CAP_X86_USER_SPACE_MSR) and the page is filled with stubs that exit through an OUT to
// kKvmHypercallPort; the vCPU's registers carry the arguments. Inline VMCALLs outside the page are
// then KVM's own hypercalls (answered -KVM_ENOSYS by the kernel) and never reach xenkvm.
#ifndef XENKVM_COMPONENTS_ACCEL_KVM_KVM_ACCELERATOR_H_
#define XENKVM_COMPONENTS_ACCEL_KVM_KVM_ACCELERATOR_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "components/accel/accelerator.h"
#include "components/memory/guest_memory.h"

namespace xenkvm::accel {

// The port the fallback hypercall stubs write the hypercall number to: `mov $n, %eax;
// out %eax, $kKvmHypercallPort; ret`. No PC device lives there.
inline constexpr uint16_t kKvmHypercallPort = 0x5e;

// `memory` must outlive the accelerator and its vCPUs. `device` is normally /dev/kvm.
absl::StatusOr<std::unique_ptr<Accelerator>> CreateKvmAccelerator(const memory::GuestMemory& memory,
                                                                  const std::string& device = "/dev/kvm");

}  // namespace xenkvm::accel

#endif  // XENKVM_COMPONENTS_ACCEL_KVM_KVM_ACCELERATOR_H_
