// Linear -> guest-physical translation by walking the guest's page tables in GuestMemory, for the
// emu accelerator's own reads of guest code (Unicorn 2.0.1 has no virtual-memory read API).
#ifndef XENKVM_COMPONENTS_ACCEL_EMU_PAGE_WALK_H_
#define XENKVM_COMPONENTS_ACCEL_EMU_PAGE_WALK_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "components/memory/guest_memory.h"

namespace xenkvm::accel::emu {

struct PagingState {
  uint64_t cr0 = 0, cr3 = 0, cr4 = 0, efer = 0;
};

// Paging off: the linear address itself. Otherwise a walk of 32-bit, PAE or 4-level tables
// (large pages included); kNotFound for a non-present entry, kOutOfRange for tables outside RAM.
absl::StatusOr<uint64_t> TranslateLinear(const memory::GuestMemory& memory, const PagingState& paging,
                                         uint64_t linear);

}  // namespace xenkvm::accel::emu

#endif  // XENKVM_COMPONENTS_ACCEL_EMU_PAGE_WALK_H_
