// The guest's memory reservation, as Xen keeps tot_pages and max_pages: the RAM frames it holds,
// and the ones it gave back (XENMEM_decrease_reservation: Linux's balloon driver). A frame given
// back really returns to the host (the guest RAM memfd's hole is punched, so the VMM's resident
// memory drops) and reads as zeros if the guest touches it anyway; a refill (populate_physmap)
// hands out a fresh zeroed frame. Backends' grant mappings pin their frames: a pinned frame
// cannot be given back, and a given-back frame cannot be mapped.
//
// xenkvm's RAM is fixed when the VM is made: only frames inside it can be given back and refilled.
// Its lock is a leaf.
#ifndef XENKVM_COMPONENTS_XEN_RESERVATION_H_
#define XENKVM_COMPONENTS_XEN_RESERVATION_H_

#include <cstdint>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "components/memory/guest_memory.h"
#include "components/xen/config.h"

namespace xenkvm::xen {

class MemoryReservation {
 public:
  // The guest's RAM: whole frames [first_gfn, first_gfn + pages), each inside one region of `memory`.
  struct RamRange {
    uint64_t first_gfn = 0;
    uint64_t pages = 0;
  };
  // `ram`: the E820 map's RAM (empty: every region of `memory`). `max_pages`: the most the guest
  // may hold (maxmem); 0 or more than its RAM: all of its RAM.
  MemoryReservation(const memory::GuestMemory& memory, const std::vector<RamRange>& ram, uint64_t max_pages);
  // The RAM entries (E820 type 1) of a memory map, as whole frames.
  static std::vector<RamRange> RamOf(const std::vector<MemoryMapEntry>& memory_map);

  uint64_t current_pages() const;
  uint64_t max_pages() const { return max_pages_; }
  uint64_t ram_pages() const { return ram_pages_; }

  // Frames [gfn, gfn + count) go back to the host, all or none: false when one is outside RAM,
  // already given back or pinned. (Frames holding Xen's pages are the caller's to refuse.)
  bool GiveBack(uint64_t gfn, uint64_t count);
  // Frames [gfn, gfn + count) are refilled with fresh zeroed frames, all or none: false when one
  // is outside RAM or pinned, or the refill would exceed max_pages.
  bool Refill(uint64_t gfn, uint64_t count);
  bool IsGivenBack(uint64_t gfn) const;

  // A backend maps `gfn`: false if it was given back; otherwise it stays until Unpin.
  bool Pin(uint64_t gfn);
  void Unpin(uint64_t gfn);

 private:
  struct Region {
    uint64_t first_gfn = 0;
    uint64_t pages = 0;
    std::vector<bool> given_back;
  };
  // The region holding all of [gfn, gfn + count), or nullptr.
  Region* RegionOfLocked(uint64_t gfn, uint64_t count) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  bool AnyPinnedLocked(uint64_t gfn, uint64_t count) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  const memory::GuestMemory& memory_;
  uint64_t ram_pages_ = 0;
  uint64_t max_pages_ = 0;
  mutable absl::Mutex mutex_;
  std::vector<Region> regions_ ABSL_GUARDED_BY(mutex_);
  uint64_t given_back_ ABSL_GUARDED_BY(mutex_) = 0;
  absl::flat_hash_map<uint64_t, uint32_t> pins_ ABSL_GUARDED_BY(mutex_);  // by gfn
};

}  // namespace xenkvm::xen

#endif  // XENKVM_COMPONENTS_XEN_RESERVATION_H_
