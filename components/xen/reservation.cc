#include "components/xen/reservation.h"

#include "spdlog/spdlog.h"

namespace xenkvm::xen {
namespace {

constexpr uint64_t kPageShift = 12;

}  // namespace

std::vector<MemoryReservation::RamRange> MemoryReservation::RamOf(const std::vector<MemoryMapEntry>& memory_map) {
  constexpr uint32_t kE820Ram = 1;
  std::vector<RamRange> ram;
  for (const MemoryMapEntry& entry : memory_map) {
    const uint64_t first = (entry.address + (1u << kPageShift) - 1) >> kPageShift;  // whole frames only
    const uint64_t end = (entry.address + entry.size) >> kPageShift;
    if (entry.type == kE820Ram && end > first) ram.push_back({first, end - first});
  }
  return ram;
}

MemoryReservation::MemoryReservation(const memory::GuestMemory& memory, const std::vector<RamRange>& ram,
                                     uint64_t max_pages)
    : memory_(memory) {
  std::vector<RamRange> ranges = ram;
  if (ranges.empty()) {
    for (const memory::GuestRegion& region : memory.regions()) {
      ranges.push_back({region.start().value() >> kPageShift, region.size() >> kPageShift});
    }
  }
  for (const RamRange& range : ranges) {
    regions_.push_back(Region{range.first_gfn, range.pages, std::vector<bool>(range.pages, false)});
    ram_pages_ += range.pages;
  }
  max_pages_ = max_pages == 0 || max_pages > ram_pages_ ? ram_pages_ : max_pages;
}

uint64_t MemoryReservation::current_pages() const {
  absl::MutexLock lock(&mutex_);
  return ram_pages_ - given_back_;
}

MemoryReservation::Region* MemoryReservation::RegionOfLocked(uint64_t gfn, uint64_t count) {
  for (Region& region : regions_) {
    if (gfn >= region.first_gfn && gfn - region.first_gfn < region.pages &&
        count <= region.pages - (gfn - region.first_gfn)) {
      return &region;
    }
  }
  return nullptr;
}

bool MemoryReservation::AnyPinnedLocked(uint64_t gfn, uint64_t count) const {
  for (uint64_t frame = gfn; frame < gfn + count; ++frame) {
    if (pins_.contains(frame)) return true;
  }
  return false;
}

bool MemoryReservation::GiveBack(uint64_t gfn, uint64_t count) {
  absl::MutexLock lock(&mutex_);
  Region* region = RegionOfLocked(gfn, count);
  if (region == nullptr || count == 0 || AnyPinnedLocked(gfn, count)) return false;
  for (uint64_t frame = gfn; frame < gfn + count; ++frame) {
    if (region->given_back[frame - region->first_gfn]) return false;
  }
  if (absl::Status discarded = memory_.Discard(memory::GuestAddress(gfn << kPageShift), count << kPageShift);
      !discarded.ok()) {
    spdlog::warn("Xen shim: giving back frames {:#x}+{}: {}", gfn, count, std::string(discarded.message()));
    return false;
  }
  for (uint64_t frame = gfn; frame < gfn + count; ++frame) region->given_back[frame - region->first_gfn] = true;
  given_back_ += count;
  return true;
}

bool MemoryReservation::Refill(uint64_t gfn, uint64_t count) {
  absl::MutexLock lock(&mutex_);
  Region* region = RegionOfLocked(gfn, count);
  if (region == nullptr || count == 0 || AnyPinnedLocked(gfn, count)) return false;
  uint64_t refilled = 0;
  for (uint64_t frame = gfn; frame < gfn + count; ++frame) refilled += region->given_back[frame - region->first_gfn];
  if (ram_pages_ - given_back_ + refilled > max_pages_) return false;
  // A fresh frame: whatever the guest wrote into a given-back frame (it reads zeros, but may
  // write) goes too.
  if (absl::Status discarded = memory_.Discard(memory::GuestAddress(gfn << kPageShift), count << kPageShift);
      !discarded.ok()) {
    spdlog::warn("Xen shim: refilling frames {:#x}+{}: {}", gfn, count, std::string(discarded.message()));
    return false;
  }
  for (uint64_t frame = gfn; frame < gfn + count; ++frame) region->given_back[frame - region->first_gfn] = false;
  given_back_ -= refilled;
  return true;
}

bool MemoryReservation::IsGivenBack(uint64_t gfn) const {
  absl::MutexLock lock(&mutex_);
  for (const Region& region : regions_) {
    if (gfn >= region.first_gfn && gfn - region.first_gfn < region.pages) return region.given_back[gfn - region.first_gfn];
  }
  return false;
}

bool MemoryReservation::Pin(uint64_t gfn) {
  absl::MutexLock lock(&mutex_);
  for (const Region& region : regions_) {
    if (gfn >= region.first_gfn && gfn - region.first_gfn < region.pages && region.given_back[gfn - region.first_gfn]) {
      return false;
    }
  }
  ++pins_[gfn];
  return true;
}

void MemoryReservation::Unpin(uint64_t gfn) {
  absl::MutexLock lock(&mutex_);
  auto found = pins_.find(gfn);
  if (found == pins_.end()) return;
  if (--found->second == 0) pins_.erase(found);
}

}  // namespace xenkvm::xen
