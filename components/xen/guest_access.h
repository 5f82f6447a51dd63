// Copies between the VMM and guest memory at the guest-linear addresses HVM guests pass in hypercall
// arguments (Xen's copy_from_guest / copy_to_guest): each page is translated through the calling
// vCPU's page tables, then checked against guest RAM. Every failure is the guest's: -EFAULT.
#ifndef XENKVM_COMPONENTS_XEN_GUEST_ACCESS_H_
#define XENKVM_COMPONENTS_XEN_GUEST_ACCESS_H_

#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <type_traits>

#include "components/accel/accelerator.h"
#include "components/memory/guest_memory.h"

namespace xenkvm::xen {

class GuestAccess {
 public:
  GuestAccess(const memory::GuestMemory& memory, accel::Vcpu& vcpu) : memory_(memory), vcpu_(vcpu) {}

  bool Read(uint64_t linear, std::span<uint8_t> bytes);
  bool Write(uint64_t linear, std::span<const uint8_t> bytes);

  // One object, copied once (never read twice from guest memory).
  template <typename T>
    requires std::is_trivially_copyable_v<T>
  std::optional<T> ReadObject(uint64_t linear) {
    T object;
    if (!Read(linear, std::span(reinterpret_cast<uint8_t*>(&object), sizeof(T)))) return std::nullopt;
    return object;
  }
  template <typename T>
    requires std::is_trivially_copyable_v<T>
  bool WriteObject(uint64_t linear, const T& object) {
    return Write(linear, std::span(reinterpret_cast<const uint8_t*>(&object), sizeof(T)));
  }

  // The guest-physical address of `linear` (for areas the guest registers: runstate, time info).
  std::optional<uint64_t> Translate(uint64_t linear);

 private:
  template <typename Access>
  bool ForEachPage(uint64_t linear, size_t length, Access access);

  const memory::GuestMemory& memory_;
  accel::Vcpu& vcpu_;
};

}  // namespace xenkvm::xen

#endif  // XENKVM_COMPONENTS_XEN_GUEST_ACCESS_H_
