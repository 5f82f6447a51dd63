// The vCPU making one hypercall, and how it reads its arguments: every subsystem's handler takes
// one. Guest handles are guest-linear addresses in the caller's ABI (64- or 32-bit words).
#ifndef XENKVM_COMPONENTS_XEN_HYPERCALL_CALLER_H_
#define XENKVM_COMPONENTS_XEN_HYPERCALL_CALLER_H_

#include <cstdint>
#include <optional>

#include "components/accel/accelerator.h"
#include "components/xen/guest_access.h"
#include "third_party/xen_public.h"

namespace xenkvm::xen {

struct HypercallCaller {
  uint32_t vcpu;
  bool long_mode;
  accel::Vcpu& accel_vcpu;
  GuestAccess access;

  size_t word_size() const { return long_mode ? 8 : 4; }
  // A guest handle or xen_ulong_t field of the caller's ABI at `linear`.
  std::optional<uint64_t> ReadWord(uint64_t linear) {
    if (long_mode) return access.ReadObject<uint64_t>(linear);
    std::optional<uint32_t> word = access.ReadObject<uint32_t>(linear);
    if (!word) return std::nullopt;
    return *word;
  }
};

// A hypercall's result for Xen's error `error` (negative errno in the return register).
constexpr int64_t XenError(xen_errno error) { return -static_cast<int64_t>(error); }

}  // namespace xenkvm::xen

#endif  // XENKVM_COMPONENTS_XEN_HYPERCALL_CALLER_H_
