// Internal: buffers for the KVM structs that end in a flexible array.
//
// Linux 6.1's uapi headers (Debian 12) declare those arrays with __DECLARE_FLEX_ARRAY, which in C++
// puts an empty struct before the array: `entries` then sits at offset 16 in kvm_msrs and
// kvm_irq_routing, 12 in kvm_cpuid2 and 8 in kvm_msr_list, where the kernel reads 8, 8, 8 and 4.
// Worse, the struct size is part of the ioctl number, so the headers' KVM_GET_MSRS and friends are
// numbers the kernel does not know (EINVAL). So neither the `entries` members nor those ioctl macros
// are used; the offsets and numbers the kernel ABI fixes are spelled out here (and checked in
// layout_test.cc).
#ifndef XENKVM_COMPONENTS_KVM_FLEX_ARRAY_H_
#define XENKVM_COMPONENTS_KVM_FLEX_ARRAY_H_

#include <linux/kvm.h>
#include <sys/ioctl.h>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace xenkvm::kvm::internal {

// Kernel ABI offsets of the first array element.
inline constexpr size_t kMsrsEntriesOffset = 8;        // kvm_msrs {u32 nmsrs; u32 pad; entries}
inline constexpr size_t kIrqRoutingEntriesOffset = 8;  // kvm_irq_routing {u32 nr; u32 flags; entries}
inline constexpr size_t kCpuid2EntriesOffset = 8;      // kvm_cpuid2 {u32 nent; u32 padding; entries}
inline constexpr size_t kMsrListIndicesOffset = 4;     // kvm_msr_list {u32 nmsrs; indices}

// Ioctl numbers with the C sizes of the headers (what the kernel was built with).
inline constexpr unsigned long kKvmGetMsrIndexList = _IOC(_IOC_READ | _IOC_WRITE, KVMIO, 0x02, 4);
inline constexpr unsigned long kKvmGetSupportedCpuid = _IOC(_IOC_READ | _IOC_WRITE, KVMIO, 0x05, 8);
inline constexpr unsigned long kKvmSetGsiRouting = _IOC(_IOC_WRITE, KVMIO, 0x6a, 8);
inline constexpr unsigned long kKvmGetMsrs = _IOC(_IOC_READ | _IOC_WRITE, KVMIO, 0x88, 8);
inline constexpr unsigned long kKvmSetMsrs = _IOC(_IOC_WRITE, KVMIO, 0x89, 8);
inline constexpr unsigned long kKvmSetCpuid2 = _IOC(_IOC_WRITE, KVMIO, 0x90, 8);
inline constexpr unsigned long kKvmGetCpuid2 = _IOC(_IOC_READ | _IOC_WRITE, KVMIO, 0x91, 8);

// An 8-byte-aligned, zeroed buffer: a header whose first field is the u32 element count, then
// `capacity` elements at `entries_offset`.
template <typename Entry>
class FlexArrayBuffer {
 public:
  FlexArrayBuffer(size_t entries_offset, size_t capacity)
      : entries_offset_(entries_offset),
        words_((entries_offset + capacity * sizeof(Entry) + 7) / 8, 0) {}

  void* data() { return words_.data(); }
  uint32_t& count() { return *reinterpret_cast<uint32_t*>(words_.data()); }
  Entry* entries() {
    return reinterpret_cast<Entry*>(reinterpret_cast<uint8_t*>(words_.data()) + entries_offset_);
  }
  size_t size_bytes() const { return words_.size() * 8; }

 private:
  size_t entries_offset_;
  std::vector<uint64_t> words_;
};

}  // namespace xenkvm::kvm::internal

#endif  // XENKVM_COMPONENTS_KVM_FLEX_ARRAY_H_
