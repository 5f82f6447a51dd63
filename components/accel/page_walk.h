// Linear -> guest-physical translation by walking the guest's page tables in GuestMemory: how both
// backends implement Vcpu::TranslateLinear (the Xen shim reads hypercall arguments, which HVM guests
// pass as linear addresses), and how the emu backend reads guest code and stacks.
#ifndef XENKVM_COMPONENTS_ACCEL_PAGE_WALK_H_
#define XENKVM_COMPONENTS_ACCEL_PAGE_WALK_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "components/memory/guest_memory.h"

namespace xenkvm::accel {

struct PagingState {
  uint64_t cr0 = 0, cr3 = 0, cr4 = 0, efer = 0;
};

// Paging off: the linear address itself. Otherwise a walk of 32-bit, PAE or 4-level tables
// (large pages included); kNotFound for a non-present entry, kOutOfRange for tables outside RAM.
absl::StatusOr<uint64_t> TranslateLinear(const memory::GuestMemory& memory, const PagingState& paging,
                                         uint64_t linear);

}  // namespace xenkvm::accel

#endif  // XENKVM_COMPONENTS_ACCEL_PAGE_WALK_H_
