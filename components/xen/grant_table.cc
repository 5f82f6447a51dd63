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
  if (index >= max_frames_ || gfn > (~uint64_t{0} >> 12)) return -XEN_EINVAL;
  absl::StatusOr<uint8_t*> destination = memory_.HostAddress(FrameAddress(gfn), kPageSize);
  if (!destination.ok()) return -XEN_EINVAL;
  absl::MutexLock lock(&mutex_);
  if (frame_gfns_.size() <= index) frame_gfns_.resize(index + 1);
  const std::optional<uint64_t> old = frame_gfns_[index];
  if (old == gfn) return 0;
  if (old) {
    absl::StatusOr<uint8_t*> source = memory_.HostAddress(FrameAddress(*old), kPageSize);
    if (source.ok()) std::memmove(*destination, *source, kPageSize);
  } else {
    std::memset(*destination, 0, kPageSize);
    if (index == 0) WriteReservedLocked(gfn << 12);
  }
  // A frame already at that gfn is displaced: the page now holds this one.
  for (std::optional<uint64_t>& other : frame_gfns_) {
    if (other == gfn) other.reset();
  }
  frame_gfns_[index] = gfn;
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

bool GrantTable::HoldsFrameAt(uint64_t gfn) const {
  absl::MutexLock lock(&mutex_);
  return std::find(frame_gfns_.begin(), frame_gfns_.end(), std::optional<uint64_t>(gfn)) != frame_gfns_.end();
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
    grant_entry_v1_t entry{GTF_permit_access, backend_domid_, static_cast<uint32_t>(frames[ref])};
    (void)memory_.WriteObject(memory::GuestAddress(frame0_gpa + ref * sizeof(entry)), entry);
  }
}

std::optional<uint64_t> GrantTable::EntryGpaLocked(uint32_t ref) const {
  const uint32_t frame = ref / kGrantEntriesPerFrame;
  if (frame >= frame_gfns_.size() || !frame_gfns_[frame]) return std::nullopt;
  return (*frame_gfns_[frame] << 12) + uint64_t{ref % kGrantEntriesPerFrame} * sizeof(grant_entry_v1_t);
}

int16_t GrantTable::PinLocked(uint64_t entry_gpa, bool readonly) {
  // flags and domid are one 32-bit word: checked and updated together, so that the guest cannot
  // slip a different domain in between.
  const memory::GuestAddress address(entry_gpa);
  const std::unique_ptr<accel::GuestAtomicsExclusion> exclusion =
      accelerator_ != nullptr ? accelerator_->ExcludeGuestAtomics() : nullptr;
  for (int attempt = 0; attempt < kPinAttempts; ++attempt) {
    absl::StatusOr<uint32_t> combined = memory_.AtomicLoad<uint32_t>(address);
    if (!combined.ok()) return GNTST_general_error;
    const uint16_t flags = static_cast<uint16_t>(*combined);
    const uint16_t domid = static_cast<uint16_t>(*combined >> 16);
    if ((flags & GTF_type_mask) != GTF_permit_access || domid != backend_domid_) return GNTST_general_error;
    if (!readonly && (flags & GTF_readonly)) return GNTST_general_error;
    const uint16_t wanted = flags | GTF_reading | (readonly ? 0 : GTF_writing);
    if (wanted == flags) return GNTST_okay;
    uint32_t expected = *combined;
    absl::StatusOr<bool> swapped =
        memory_.AtomicCompareExchange<uint32_t>(address, expected, (*combined & 0xffff0000u) | wanted);
    if (!swapped.ok()) return GNTST_general_error;
    if (*swapped) return GNTST_okay;
  }
  return GNTST_general_error;
}

void GrantTable::ClearFlagsLocked(uint64_t entry_gpa, uint16_t bits) {
  const std::unique_ptr<accel::GuestAtomicsExclusion> exclusion =
      accelerator_ != nullptr ? accelerator_->ExcludeGuestAtomics() : nullptr;
  (void)memory_.AtomicFetchAnd<uint16_t>(memory::GuestAddress(entry_gpa), static_cast<uint16_t>(~bits));
}

int16_t GrantTable::Map(uint32_t ref, bool readonly, Mapping* mapping) {
  absl::MutexLock lock(&mutex_);
  auto refuse = [this](int16_t status) {
    ++refused_;
    return status;
  };
  const std::optional<uint64_t> entry = EntryGpaLocked(ref);
  if (!entry) return refuse(GNTST_bad_gntref);
  auto found = active_.find(ref);
  const bool first = found == active_.end();
  if (!first && found->second.readers + found->second.writers >= kMaxMappingsPerGrant) {
    return refuse(GNTST_no_space);
  }
  if (int16_t pinned = PinLocked(*entry, readonly); pinned != GNTST_okay) return refuse(pinned);
  uint64_t gfn;
  if (first) {
    // The frame is read once, after the pin; later rewrites of the entry do not move the mapping.
    absl::StatusOr<uint32_t> frame =
        memory_.AtomicLoad<uint32_t>(memory::GuestAddress(*entry + offsetof(grant_entry_v1_t, frame)));
    bool usable = frame.ok() && memory_.IsValidRange(FrameAddress(*frame), kPageSize);
    for (const std::optional<uint64_t>& table_frame : frame_gfns_) {
      if (usable && table_frame == *frame) usable = false;  // the grant table itself is not the guest's to grant
    }
    if (!usable) {
      ClearFlagsLocked(*entry, GTF_reading | GTF_writing);
      return refuse(GNTST_general_error);
    }
    if (reservation_ != nullptr && !reservation_->Pin(*frame)) {
      ClearFlagsLocked(*entry, GTF_reading | GTF_writing);
      return refuse(GNTST_bad_page);
    }
    gfn = *frame;
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
  const std::optional<uint64_t> entry = EntryGpaLocked(mapping.ref);
  if (entry && release != 0) ClearFlagsLocked(*entry, release);
  if (active.readers + active.writers == 0) {
    if (reservation_ != nullptr) reservation_->Unpin(active.gfn);
    active_.erase(found);
  }
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
