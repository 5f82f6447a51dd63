// Xen grant tables, version 1: a guest grants a backend access to one of its frames by writing an
// 8-byte entry {flags, domid, frame} into its grant table (512 entries per 4 KiB frame). The table's
// frames live in guest RAM wherever the guest maps them (XENMAPSPACE_grant_table), as the
// shared_info page does. The backends' side maps a granted frame: the entry is checked and pinned
// with GTF_reading/GTF_writing by compare-and-exchange (the guest may rewrite it at any moment),
// its frame is read once and kept while mapped, and the pin is released only with the last
// mapping (XSA-230). Everything a backend does goes through this class, so it never touches a frame
// the guest did not grant.
//
// Thread-safe: the shim calls it from vCPU threads, backends from their event loop.
#ifndef XENKVM_COMPONENTS_XEN_GRANT_TABLE_H_
#define XENKVM_COMPONENTS_XEN_GRANT_TABLE_H_

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "components/accel/accelerator.h"
#include "components/memory/guest_memory.h"
#include "components/xen/reservation.h"

namespace xenkvm::xen {

inline constexpr uint32_t kGrantEntriesPerFrame = 512;  // v1: 8-byte entries
inline constexpr uint32_t kMaxMappingsPerGrant = 255;   // QEMU's bound, per grant reference

struct GrantTableStatistics {
  uint32_t frames = 0;       // the table's current size
  uint32_t max_frames = 0;
  uint64_t maps = 0;         // successful backend mappings
  uint64_t refused = 0;      // mappings refused (bad reference, flags, domain, frame)
  uint32_t active = 0;       // grant references mapped right now
};

class GrantTable {
 public:
  // `max_frames`: the most frames the guest may have (xen-gnttab-max-frames). `backend_domid`:
  // the domain the VMM's backends act as (0).
  GrantTable(const memory::GuestMemory& memory, uint32_t max_frames, uint16_t backend_domid = 0);
  GrantTable(const GrantTable&) = delete;
  GrantTable& operator=(const GrantTable&) = delete;
  // The guest's vCPUs, whose emulated atomics the flag updates must not interleave with
  // (Accelerator::ExcludeGuestAtomics: the guest ends a grant with a cmpxchg of its flags).
  void SynchronizeWith(accel::Accelerator& accelerator) { accelerator_ = &accelerator; }
  // The guest's memory reservation: a mapped frame is pinned there (the guest cannot give it
  // back), and a frame the guest gave back cannot be mapped (GNTST_bad_page).
  void TrackPinsIn(MemoryReservation& reservation) { reservation_ = &reservation; }

  // ---- The guest's side (under its hypercalls). Results are 0 or a negative Xen errno.
  // XENMAPSPACE_grant_table: frame `index` now lives at guest frame `gfn`; its entries move
  // there (a frame mapped for the first time starts empty, frame 0 with the reserved entries).
  // Grows the table to index + 1 frames. -EINVAL for an index beyond the limit or a gfn that is
  // not guest RAM.
  int64_t MapFrame(uint32_t index, uint64_t gfn);
  // GNTTABOP_setup_table: grows the table to `count` frames; returns GNTST_* and where each frame
  // is (its gfn, or ~0 when the guest has not mapped it).
  int16_t Setup(uint32_t count, std::vector<uint64_t>* gfns);
  uint32_t frames() const;
  // Whether one of the table's frames is placed at guest frame `gfn`.
  bool HoldsFrameAt(uint64_t gfn) const;
  uint32_t max_frames() const { return max_frames_; }

  // The toolstack's reserved entries: 0 the console ring's frame, 1 XenStore's, both granted to
  // the backend domain (written into frame 0 when the guest maps it).
  void SetReservedEntries(uint64_t console_gfn, uint64_t xenstore_gfn);

  // ---- The backends' side.
  struct Mapping {
    uint32_t ref = 0;
    bool readonly = true;
    uint64_t gfn = 0;
    std::span<uint8_t> page;  // the granted frame; a read-only mapping must not be written
  };
  // Maps grant `ref` for reading (and writing unless `readonly`). GNTST_bad_gntref for a ref
  // outside the table or in a frame the guest has not mapped; GNTST_general_error for an entry
  // that does not grant this backend access (type, domain, read-only), cannot be pinned, or names
  // a frame outside guest RAM; GNTST_bad_page for a frame the guest gave back (ballooned out);
  // GNTST_no_space beyond kMaxMappingsPerGrant mappings.
  int16_t Map(uint32_t ref, bool readonly, Mapping* mapping);
  // Releases a mapping Map() gave; the last one for a reference clears its GTF_reading/writing.
  void Unmap(const Mapping& mapping);

  GrantTableStatistics Statistics() const;

 private:
  struct Active {
    uint64_t gfn = 0;       // the granted frame, read once at the first mapping
    uint32_t readers = 0;   // read-only mappings
    uint32_t writers = 0;   // writable mappings
  };
  std::optional<uint64_t> EntryGpaLocked(uint32_t ref) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Sets `bits` in the entry's flags if it grants what is asked; GNTST_*.
  int16_t PinLocked(uint64_t entry_gpa, bool readonly) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void ClearFlagsLocked(uint64_t entry_gpa, uint16_t bits) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void WriteReservedLocked(uint64_t frame0_gpa) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  const memory::GuestMemory& memory_;
  accel::Accelerator* accelerator_ = nullptr;
  MemoryReservation* reservation_ = nullptr;
  const uint32_t max_frames_;
  const uint16_t backend_domid_;
  mutable absl::Mutex mutex_;
  std::vector<std::optional<uint64_t>> frame_gfns_ ABSL_GUARDED_BY(mutex_);  // by frame index
  absl::flat_hash_map<uint32_t, Active> active_ ABSL_GUARDED_BY(mutex_);     // by grant reference
  std::optional<std::pair<uint64_t, uint64_t>> reserved_ ABSL_GUARDED_BY(mutex_);
  uint64_t maps_ ABSL_GUARDED_BY(mutex_) = 0;
  uint64_t refused_ ABSL_GUARDED_BY(mutex_) = 0;
};

}  // namespace xenkvm::xen

#endif  // XENKVM_COMPONENTS_XEN_GRANT_TABLE_H_
