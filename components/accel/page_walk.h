// Linear -> guest-physical translation by walking the guest's page tables in GuestMemory: how both
// backends implement Vcpu::TranslateLinear (the Xen shim reads hypercall arguments, which HVM guests
// pass as linear addresses), how the emu backend reads guest code and stacks, and how it works out a
// page fault's error code (WalkLinear reports the rights the walk found).
#ifndef XENKVM_COMPONENTS_ACCEL_PAGE_WALK_H_
#define XENKVM_COMPONENTS_ACCEL_PAGE_WALK_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "components/memory/guest_memory.h"

namespace xenkvm::accel {

struct PagingState {
  uint64_t cr0 = 0, cr3 = 0, cr4 = 0, efer = 0;
};

// One walk's outcome. `present` false: an entry on the way was not present (`physical` unset).
// The rights are the intersection over every level, as the CPU combines them.
struct PageWalk {
  bool present = false;
  uint64_t physical = 0;
  bool writable = true;     // R/W set at every level
  bool user = true;         // U/S set at every level
  bool executable = true;   // no XD bit at any level (with EFER.NXE)
  bool reserved_bit = false;  // a reserved bit set in an entry (XD without EFER.NXE, PS at level 4...)
};

// Paging off: the linear address itself, every right. Otherwise a walk of 32-bit, PAE or 4-level
// tables (large pages included); kOutOfRange for tables outside RAM.
absl::StatusOr<PageWalk> WalkLinear(const memory::GuestMemory& memory, const PagingState& paging,
                                    uint64_t linear);

// WalkLinear's address; kNotFound where the walk found a non-present entry.
absl::StatusOr<uint64_t> TranslateLinear(const memory::GuestMemory& memory, const PagingState& paging,
                                         uint64_t linear);

}  // namespace xenkvm::accel

#endif  // XENKVM_COMPONENTS_ACCEL_PAGE_WALK_H_
