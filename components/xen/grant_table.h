// Xen grant tables, versions 1 and 2: a guest grants a backend access to one of its frames by
// writing an entry into its grant table: v1 8 bytes {flags, domid, frame} (512 a frame); v2 16
// bytes {flags, domid, ..., frame} (256 a frame) whose GTF_reading/GTF_writing live apart, in
// status frames (2048 two-byte words a frame), and which may grant a sub-page or be transitive. The table's
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
inline constexpr uint32_t kGrantEntriesPerFrameV2 = 256;  // v2: 16-byte entries
inline constexpr uint32_t kGrantStatusPerFrame = 2048;    // v2: 2-byte status words
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
  // Whether one of the table's frames (or v2 status frames) is placed at guest frame `gfn`.
  bool HoldsFrameAt(uint64_t gfn) const;
  uint32_t max_frames() const { return max_frames_; }

  // GNTTABOP_set_version: 1 or 2 (-EINVAL otherwise); -EBUSY while a grant beyond the reserved
  // entries 0..7 is mapped (as Xen). The
  // reserved entries are rewritten in the new layout; other entries are the guest's to rewrite.
  int64_t SetVersion(uint32_t version);
  uint32_t version() const;
  // XENMAPSPACE_grant_table | XENMAPIDX_grant_table_status: status frame `index` (v2 only; within
  // the status frames max_frames would need) at guest frame `gfn`; -EINVAL otherwise.
  int64_t MapStatusFrame(uint32_t index, uint64_t gfn);
  // GNTTABOP_get_status_frames: where each of the first `count` status frames is (~0: not
  // placed); GNTST_general_error under v1 or beyond the table's current status frames.
  int16_t StatusFrames(uint32_t count, std::vector<uint64_t>* gfns);

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

  // GNTTABOP_copy's grant side, for backends: copies `bytes` into (`to_guest`) or out of the frame
  // grant `ref` gives `grantee` (the backend domain by default), at `offset`. The entry is checked
  // and pinned as for a mapping only while the copy runs; a v2 sub-page grant bounds the range
  // (GNTST_general_error outside it); GNTST_bad_copy_arg when the range crosses the page; a
  // transitive grant is refused (no other domain's grants exist here).
  int16_t Copy(uint32_t ref, uint32_t offset, std::span<uint8_t> bytes, bool to_guest);
  int16_t Copy(uint32_t ref, uint32_t offset, std::span<uint8_t> bytes, bool to_guest, uint16_t grantee);

  GrantTableStatistics Statistics() const;

 private:
  struct Active {
    uint64_t gfn = 0;       // the granted frame, read once at the first mapping
    uint32_t readers = 0;   // read-only mappings
    uint32_t writers = 0;   // writable mappings
  };
  // Where a grant's entry is, and where its GTF_reading/GTF_writing are (v1: the entry's flags;
  // v2: its status word).
  struct EntryAt {
    uint64_t entry = 0;
    uint64_t flags = 0;
  };
  // What a pinned grant gives: its frame (read once), and for a v2 sub-page grant the range.
  struct Granted {
    uint64_t gfn = 0;
    uint32_t offset = 0;
    uint32_t length = 4096;
  };
  enum class Use { kMap, kCopy };
  std::optional<EntryAt> EntryAtLocked(uint32_t ref) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Sets GTF_reading (and GTF_writing unless `readonly`) if the entry grants what is asked to
  // `grantee`; GNTST_*. `newly` gets the bits this pin set.
  int16_t PinLocked(const EntryAt& at, bool readonly, Use use, uint16_t grantee, uint16_t* newly)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  int16_t PinV1Locked(const EntryAt& at, bool readonly, uint16_t grantee, uint16_t* newly)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  int16_t PinV2Locked(const EntryAt& at, bool readonly, Use use, uint16_t grantee, uint16_t* newly)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // The pinned grant's frame and range; GNTST_general_error for a frame that is not guest RAM or
  // is one of the table's, GNTST_bad_page for one the guest gave back (then pinned in the
  // reservation until ReleaseFrameLocked).
  int16_t ReadGrantedLocked(const EntryAt& at, Granted* granted) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  bool IsTableFrameLocked(uint64_t gfn) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void ClearFlagsLocked(const EntryAt& at, uint16_t bits) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void WriteReservedLocked(uint64_t frame0_gpa) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  uint32_t StatusFramesForLocked(uint32_t grant_frames) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Places a frame (grant or status) of `frames` at `gfn`, moving its contents along.
  int64_t PlaceLocked(std::vector<std::optional<uint64_t>>& frames, uint32_t index, uint64_t gfn, bool is_frame0)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  const memory::GuestMemory& memory_;
  accel::Accelerator* accelerator_ = nullptr;
  MemoryReservation* reservation_ = nullptr;
  const uint32_t max_frames_;
  const uint16_t backend_domid_;
  mutable absl::Mutex mutex_;
  std::vector<std::optional<uint64_t>> frame_gfns_ ABSL_GUARDED_BY(mutex_);  // by frame index
  std::vector<std::optional<uint64_t>> status_gfns_ ABSL_GUARDED_BY(mutex_);  // v2, by status frame index
  uint32_t version_ ABSL_GUARDED_BY(mutex_) = 1;
  absl::flat_hash_map<uint32_t, Active> active_ ABSL_GUARDED_BY(mutex_);     // by grant reference
  std::optional<std::pair<uint64_t, uint64_t>> reserved_ ABSL_GUARDED_BY(mutex_);
  uint64_t maps_ ABSL_GUARDED_BY(mutex_) = 0;
  uint64_t refused_ ABSL_GUARDED_BY(mutex_) = 0;
};

}  // namespace xenkvm::xen

#endif  // XENKVM_COMPONENTS_XEN_GRANT_TABLE_H_
