#include "components/loader/layout.h"

#include <algorithm>

#include "absl/strings/str_format.h"
#include "third_party/xen_public.h"

namespace xenkvm::loader {

absl::StatusOr<std::vector<memory::RegionSpec>> RamRegions(uint64_t ram_bytes) {
  if (ram_bytes % kMiB != 0 || ram_bytes < kMinimumRamBytes) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "guest memory must be a whole number of MiB and at least %u MiB (asked for %u bytes)",
        kMinimumRamBytes / kMiB, ram_bytes));
  }
  std::vector<memory::RegionSpec> regions;
  uint64_t low = std::min(ram_bytes, kMmioHoleStart);
  regions.push_back({memory::GuestAddress(0), low});
  regions.push_back({memory::GuestAddress(kXenReservedBase), kXenReservedSize});
  if (ram_bytes > low) regions.push_back({memory::GuestAddress(kFourGiB), ram_bytes - low});
  return regions;
}

std::vector<ReservedRange> ReservedRanges() {
  return {
      {kBootInfoAddress, kBootInfoAddress + kBootInfoSize, "the boot information page"},
      {kCommandLineAddress, kCommandLineAddress + kCommandLineMax, "the command line"},
      {kLegacyHoleStart, kLegacyHoleEnd, "the legacy VGA/BIOS hole"},
      {kXenReservedBase, kXenReservedBase + kXenReservedSize, "the reserved Xen pages"},
  };
}

std::vector<E820Entry> BuildE820(const memory::GuestMemory& memory) {
  std::vector<E820Entry> map;
  for (const memory::GuestRegion& region : memory.regions()) {
    uint64_t start = region.start().value();
    uint64_t end = region.last().value() + 1;
    if (start == kXenReservedBase && end == kXenReservedBase + kXenReservedSize) {
      map.push_back({start, end - start, XEN_HVM_MEMMAP_TYPE_RESERVED});
      continue;
    }
    if (start < kLegacyHoleStart && end > kLegacyHoleEnd) {
      map.push_back({start, kLegacyHoleStart - start, XEN_HVM_MEMMAP_TYPE_RAM});
      map.push_back({kLegacyHoleStart, kLegacyHoleEnd - kLegacyHoleStart, XEN_HVM_MEMMAP_TYPE_RESERVED});
      map.push_back({kLegacyHoleEnd, end - kLegacyHoleEnd, XEN_HVM_MEMMAP_TYPE_RAM});
      continue;
    }
    map.push_back({start, end - start, XEN_HVM_MEMMAP_TYPE_RAM});
  }
  return map;
}

}  // namespace xenkvm::loader
