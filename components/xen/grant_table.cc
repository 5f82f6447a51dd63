#include "components/xen/grant_table.h"

#include <algorithm>
#include <cstring>

#include "third_party/xen_public.h"

namespace xenkvm::xen {
namespace {

constexpr uint64_t kPageSize = 4096;
constexpr uint64_t kInvalidGfn = ~uint64_t{0};
constexpr int kPinAttempts = 5;  // as Xen: a guest rewriting its entry in a loop gets an error

memory::GuestAddress FrameAddress(uint64_t gfn) { return memory::GuestAddress(gfn << 12); }

}  // namespace

GrantTable::GrantTable(const memory::GuestMemory& memory, uint32_t max_frames, uint16_t backend_domid)
    : memory_(memory), max_frames_(max_frames), backend_domid_(backend_domid) {}

int64_t GrantTable::MapFrame(uint32_t index, uint64_t gfn) {
  if (index >= max_frames_) return -XEN_EINVAL;
  absl::MutexLock lock(&mutex_);
  return PlaceLocked(frame_gfns_, index, gfn, index == 0);
}

int64_t GrantTable::MapStatusFrame(uint32_t index, uint64_t gfn) {
  absl::MutexLock lock(&mutex_);
  if (version_ != 2 || index >= StatusFramesForLocked(max_frames_)) return -XEN_EINVAL;
  return PlaceLocked(status_gfns_, index, gfn, false);
}

uint32_t GrantTable::StatusFramesForLocked(uint32_t grant_frames) const {
  const uint64_t entries = uint64_t{grant_frames} * kGrantEntriesPerFrameV2;
  return static_cast<uint32_t>((entries + kGrantStatusPerFrame - 1) / kGrantStatusPerFrame);
}

int64_t GrantTable::PlaceLocked(std::vector<std::optional<uint64_t>>& frames, uint32_t index, uint64_t gfn,
                                bool is_frame0) {
  if (gfn > (~uint64_t{0} >> 12)) return -XEN_EINVAL;
  absl::StatusOr<uint8_t*> destination = memory_.HostAddress(FrameAddress(gfn), kPageSize);
  if (!destination.ok()) return -XEN_EINVAL;
  if (frames.size() <= index) frames.resize(index + 1);
  const std::optional<uint64_t> old = frames[index];
  if (old == gfn) return 0;
  if (old) {
    absl::StatusOr<uint8_t*> source = memory_.HostAddress(FrameAddress(*old), kPageSize);
    if (source.ok()) std::memmove(*destination, *source, kPageSize);
  } else {
    std::memset(*destination, 0, kPageSize);
    if (is_frame0) WriteReservedLocked(gfn << 12);
  }
  // A frame already at that gfn is displaced: the page now holds this one.
  for (std::vector<std::optional<uint64_t>>* list : {&frame_gfns_, &status_gfns_}) {
    for (std::optional<uint64_t>& other : *list) {
      if (other == gfn) other.reset();
    }
  }
  frames[index] = gfn;
  return 0;
}

int16_t GrantTable::Setup(uint32_t count, std::vector<uint64_t>* gfns) {
  if (count > max_frames_) return GNTST_general_error;
  absl::MutexLock lock(&mutex_);
  if (frame_gfns_.size() < count) frame_gfns_.resize(count);
  gfns->clear();
  for (uint32_t i = 0; i < count; ++i) gfns->push_back(frame_gfns_[i].value_or(kInvalidGfn));
  return GNTST_okay;
}

int16_t GrantTable::StatusFrames(uint32_t count, std::vector<uint64_t>* gfns) {
  absl::MutexLock lock(&mutex_);
  if (version_ != 2 || count > StatusFramesForLocked(static_cast<uint32_t>(frame_gfns_.size()))) {
    return GNTST_general_error;
  }
  if (status_gfns_.size() < count) status_gfns_.resize(count);
  gfns->clear();
  for (uint32_t i = 0; i < count; ++i) gfns->push_back(status_gfns_[i].value_or(kInvalidGfn));
  return GNTST_okay;
}

int64_t GrantTable::SetVersion(uint32_t version) {
  if (version != 1 && version != 2) return -XEN_EINVAL;
  absl::MutexLock lock(&mutex_);
  if (version == version_) return 0;
  // A backend holding a grant beyond the toolstack's reserved entries (0..7, as Xen) keeps the
  // version: its flags live in this layout.
  for (const auto& [ref, active] : active_) {
    if (ref >= 8) return -XEN_EBUSY;
  }
  version_ = version;
  if (version == 1) status_gfns_.clear();  // the status frames go (extra pages are released by the caller)
  if (!frame_gfns_.empty() && frame_gfns_[0]) WriteReservedLocked(*frame_gfns_[0] << 12);
  return 0;
}

uint32_t GrantTable::version() const {
  absl::MutexLock lock(&mutex_);
  return version_;
}

bool GrantTable::IsTableFrameLocked(uint64_t gfn) const {
  const std::optional<uint64_t> wanted(gfn);
  return std::find(frame_gfns_.begin(), frame_gfns_.end(), wanted) != frame_gfns_.end() ||
         std::find(status_gfns_.begin(), status_gfns_.end(), wanted) != status_gfns_.end();
}

bool GrantTable::HoldsFrameAt(uint64_t gfn) const {
  absl::MutexLock lock(&mutex_);
  return IsTableFrameLocked(gfn);
}

uint32_t GrantTable::frames() const {
  absl::MutexLock lock(&mutex_);
  return static_cast<uint32_t>(frame_gfns_.size());
}

void GrantTable::SetReservedEntries(uint64_t console_gfn, uint64_t xenstore_gfn) {
  absl::MutexLock lock(&mutex_);
  reserved_ = std::make_pair(console_gfn, xenstore_gfn);
  if (!frame_gfns_.empty() && frame_gfns_[0]) WriteReservedLocked(*frame_gfns_[0] << 12);
}

void GrantTable::WriteReservedLocked(uint64_t frame0_gpa) {
  if (!reserved_) return;
  const uint64_t frames[] = {reserved_->first, reserved_->second};  // GNTTAB_RESERVED_CONSOLE, _XENSTORE
  for (uint32_t ref = 0; ref < 2; ++ref) {
    if (version_ == 1) {
      grant_entry_v1_t entry{GTF_permit_access, backend_domid_, static_cast<uint32_t>(frames[ref])};
      (void)memory_.WriteObject(memory::GuestAddress(frame0_gpa + ref * sizeof(entry)), entry);
    } else {
      grant_entry_v2_t entry{};
      entry.full_page.hdr = {GTF_permit_access, backend_domid_};
      entry.full_page.frame = frames[ref];
      (void)memory_.WriteObject(memory::GuestAddress(frame0_gpa + ref * sizeof(entry)), entry);
    }
  }
}

std::optional<GrantTable::EntryAt> GrantTable::EntryAtLocked(uint32_t ref) const {
  const uint32_t per_frame = version_ == 1 ? kGrantEntriesPerFrame : kGrantEntriesPerFrameV2;
  const uint32_t frame = ref / per_frame;
  if (frame >= frame_gfns_.size() || !frame_gfns_[frame]) return std::nullopt;
  const uint64_t entry_size = version_ == 1 ? sizeof(grant_entry_v1_t) : sizeof(grant_entry_v2_t);
  const uint64_t entry = (*frame_gfns_[frame] << 12) + uint64_t{ref % per_frame} * entry_size;
  if (version_ == 1) return EntryAt{entry, entry};
  const uint32_t status_frame = ref / kGrantStatusPerFrame;
  if (status_frame >= status_gfns_.size() || !status_gfns_[status_frame]) return std::nullopt;
  return EntryAt{entry, (*status_gfns_[status_frame] << 12) + uint64_t{ref % kGrantStatusPerFrame} * 2};
}

int16_t GrantTable::PinLocked(const EntryAt& at, bool readonly, Use use, uint16_t grantee, uint16_t* newly) {
  *newly = 0;
  const std::unique_ptr<accel::GuestAtomicsExclusion> exclusion =
      accelerator_ != nullptr ? accelerator_->ExcludeGuestAtomics() : nullptr;
  return version_ == 1 ? PinV1Locked(at, readonly, grantee, newly) : PinV2Locked(at, readonly, use, grantee, newly);
}

int16_t GrantTable::PinV1Locked(const EntryAt& at, bool readonly, uint16_t grantee, uint16_t* newly) {
  // flags and domid are one 32-bit word: checked and updated together, so that the guest cannot
  // slip a different domain in between.
  const memory::GuestAddress address(at.entry);
  for (int attempt = 0; attempt < kPinAttempts; ++attempt) {
    absl::StatusOr<uint32_t> combined = memory_.AtomicLoad<uint32_t>(address);
    if (!combined.ok()) return GNTST_general_error;
    const uint16_t flags = static_cast<uint16_t>(*combined);
    const uint16_t domid = static_cast<uint16_t>(*combined >> 16);
    if ((flags & GTF_type_mask) != GTF_permit_access || domid != grantee) return GNTST_general_error;
    if (!readonly && (flags & GTF_readonly)) return GNTST_general_error;
    const uint16_t wanted = flags | GTF_reading | (readonly ? 0 : GTF_writing);
    if (wanted == flags) return GNTST_okay;
    uint32_t expected = *combined;
    absl::StatusOr<bool> swapped =
        memory_.AtomicCompareExchange<uint32_t>(address, expected, (*combined & 0xffff0000u) | wanted);
    if (!swapped.ok()) return GNTST_general_error;
    if (*swapped) {
      *newly = wanted & ~flags;
      return GNTST_okay;
    }
  }
  return GNTST_general_error;
}

// v2: the header is checked, the status word's bits set, then the header checked again (the guest
// may have revoked the grant meanwhile: the bits it would then see must not stay), as Xen does.
int16_t GrantTable::PinV2Locked(const EntryAt& at, bool readonly, Use use, uint16_t grantee, uint16_t* newly) {
  auto grants = [&](uint32_t header) {
    const uint16_t flags = static_cast<uint16_t>(header);
    const uint16_t domid = static_cast<uint16_t>(header >> 16);
    if ((flags & GTF_type_mask) != GTF_permit_access || domid != grantee) return false;  // transitive too
    if (use == Use::kMap && (flags & GTF_sub_page)) return false;  // a sub-page cannot be mapped
    return readonly || !(flags & GTF_readonly);
  };
  absl::StatusOr<uint32_t> header = memory_.AtomicLoad<uint32_t>(memory::GuestAddress(at.entry));
  if (!header.ok() || !grants(*header)) return GNTST_general_error;
  const uint16_t bits = GTF_reading | (readonly ? 0 : GTF_writing);
  absl::StatusOr<uint16_t> before = memory_.AtomicFetchOr<uint16_t>(memory::GuestAddress(at.flags), bits);
  if (!before.ok()) return GNTST_general_error;
  *newly = bits & ~*before;
  header = memory_.AtomicLoad<uint32_t>(memory::GuestAddress(at.entry));
  if (!header.ok() || !grants(*header)) {
    if (*newly) (void)memory_.AtomicFetchAnd<uint16_t>(memory::GuestAddress(at.flags), static_cast<uint16_t>(~*newly));
    *newly = 0;
    return GNTST_general_error;
  }
  return GNTST_okay;
}

void GrantTable::ClearFlagsLocked(const EntryAt& at, uint16_t bits) {
  if (bits == 0) return;
  const std::unique_ptr<accel::GuestAtomicsExclusion> exclusion =
      accelerator_ != nullptr ? accelerator_->ExcludeGuestAtomics() : nullptr;
  (void)memory_.AtomicFetchAnd<uint16_t>(memory::GuestAddress(at.flags), static_cast<uint16_t>(~bits));
}

int16_t GrantTable::ReadGrantedLocked(const EntryAt& at, Granted* granted) {
  // The frame is read once, after the pin; later rewrites of the entry do not move the mapping.
  uint64_t gfn = 0;
  if (version_ == 1) {
    absl::StatusOr<uint32_t> frame =
        memory_.AtomicLoad<uint32_t>(memory::GuestAddress(at.entry + offsetof(grant_entry_v1_t, frame)));
    if (!frame.ok()) return GNTST_general_error;
    gfn = *frame;
    *granted = Granted{gfn, 0, kPageSize};
  } else {
    absl::StatusOr<uint64_t> frame = memory_.AtomicLoad<uint64_t>(memory::GuestAddress(at.entry + 8));
    absl::StatusOr<uint32_t> header = memory_.AtomicLoad<uint32_t>(memory::GuestAddress(at.entry));
    absl::StatusOr<uint32_t> range = memory_.AtomicLoad<uint32_t>(memory::GuestAddress(at.entry + 4));
    if (!frame.ok() || !header.ok() || !range.ok()) return GNTST_general_error;
    gfn = *frame;
    *granted = Granted{gfn, 0, kPageSize};
    if (*header & GTF_sub_page) {
      const uint32_t offset = *range & 0xffff, length = *range >> 16;
      if (offset + length > kPageSize) return GNTST_general_error;
      *granted = Granted{gfn, offset, length};
    }
  }
  // The grant table itself is not the guest's to grant.
  if (gfn > (~uint64_t{0} >> 12) || !memory_.IsValidRange(FrameAddress(gfn), kPageSize) || IsTableFrameLocked(gfn)) {
    return GNTST_general_error;
  }
  if (reservation_ != nullptr && !reservation_->Pin(gfn)) return GNTST_bad_page;
  return GNTST_okay;
}

int16_t GrantTable::Map(uint32_t ref, bool readonly, Mapping* mapping) {
  absl::MutexLock lock(&mutex_);
  auto refuse = [this](int16_t status) {
    ++refused_;
    return status;
  };
  const std::optional<EntryAt> at = EntryAtLocked(ref);
  if (!at) return refuse(GNTST_bad_gntref);
  auto found = active_.find(ref);
  const bool first = found == active_.end();
  if (!first && found->second.readers + found->second.writers >= kMaxMappingsPerGrant) {
    return refuse(GNTST_no_space);
  }
  uint16_t newly = 0;
  if (int16_t pinned = PinLocked(*at, readonly, Use::kMap, backend_domid_, &newly); pinned != GNTST_okay) {
    return refuse(pinned);
  }
  uint64_t gfn;
  if (first) {
    Granted granted;
    if (int16_t read = ReadGrantedLocked(*at, &granted); read != GNTST_okay) {
      ClearFlagsLocked(*at, GTF_reading | GTF_writing);
      return refuse(read);
    }
    gfn = granted.gfn;
    found = active_.emplace(ref, Active{gfn, 0, 0}).first;
  } else {
    gfn = found->second.gfn;
  }
  Active& active = found->second;
  (readonly ? active.readers : active.writers) += 1;
  ++maps_;
  absl::StatusOr<std::span<uint8_t>> page = memory_.Span(FrameAddress(gfn), kPageSize);
  *mapping = Mapping{ref, readonly, gfn, page.ok() ? *page : std::span<uint8_t>()};
  return GNTST_okay;
}

void GrantTable::Unmap(const Mapping& mapping) {
  absl::MutexLock lock(&mutex_);
  auto found = active_.find(mapping.ref);
  if (found == active_.end()) return;
  Active& active = found->second;
  uint32_t& count = mapping.readonly ? active.readers : active.writers;
  if (count == 0) return;  // not a mapping this table gave
  --count;
  // A flag goes only with the last mapping it stands for (XSA-230): until then the guest must
  // not reuse the frame.
  uint16_t release = 0;
  if (!mapping.readonly && active.writers == 0) release |= GTF_writing;
  if (active.readers + active.writers == 0) release |= GTF_reading | GTF_writing;
  const std::optional<EntryAt> at = EntryAtLocked(mapping.ref);
  if (at) ClearFlagsLocked(*at, release);
  if (active.readers + active.writers == 0) {
    if (reservation_ != nullptr) reservation_->Unpin(active.gfn);
    active_.erase(found);
  }
}

int16_t GrantTable::Copy(uint32_t ref, uint32_t offset, std::span<uint8_t> bytes, bool to_guest) {
  return Copy(ref, offset, bytes, to_guest, backend_domid_);
}

int16_t GrantTable::Copy(uint32_t ref, uint32_t offset, std::span<uint8_t> bytes, bool to_guest, uint16_t grantee) {
  if (offset > kPageSize || bytes.size() > kPageSize - offset) return GNTST_bad_copy_arg;
  absl::MutexLock lock(&mutex_);
  const std::optional<EntryAt> at = EntryAtLocked(ref);
  if (!at) return GNTST_bad_gntref;
  uint16_t newly = 0;
  if (int16_t pinned = PinLocked(*at, /*readonly=*/!to_guest, Use::kCopy, grantee, &newly); pinned != GNTST_okay) {
    return pinned;
  }
  Granted granted;
  int16_t status = ReadGrantedLocked(*at, &granted);
  if (status == GNTST_okay) {
    if (offset < granted.offset || offset + bytes.size() > granted.offset + granted.length) {
      status = GNTST_general_error;  // outside the sub-page the grant gives
    } else {
      const memory::GuestAddress where = FrameAddress(granted.gfn).Unchecked(offset);
      const absl::Status copied = to_guest ? memory_.Write(where, bytes) : memory_.Read(where, bytes);
      status = copied.ok() ? GNTST_okay : GNTST_general_error;
    }
    if (reservation_ != nullptr) reservation_->Unpin(granted.gfn);
  }
  ClearFlagsLocked(*at, newly);  // only what this copy set: a mapping's bits stay
  return status;
}

GrantTableStatistics GrantTable::Statistics() const {
  absl::MutexLock lock(&mutex_);
  GrantTableStatistics statistics;
  statistics.frames = static_cast<uint32_t>(frame_gfns_.size());
  statistics.max_frames = max_frames_;
  statistics.maps = maps_;
  statistics.refused = refused_;
  statistics.active = static_cast<uint32_t>(active_.size());
  return statistics;
}

}  // namespace xenkvm::xen
