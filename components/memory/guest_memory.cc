#include "components/memory/guest_memory.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "components/base/status.h"

namespace xenkvm::memory {

std::string GuestAddress::ToString() const { return absl::StrFormat("%#x", value_); }

namespace {

std::string RangeText(GuestAddress address, uint64_t length) {
  return absl::StrFormat("guest range [%#x, +%#x)", address.value(), length);
}

}  // namespace

GuestRegion::GuestRegion(GuestRegion&& other) noexcept
    : start_(other.start_), size_(other.size_), memfd_(std::move(other.memfd_)), host_(other.host_) {
  other.host_ = nullptr;
  other.size_ = 0;
}

GuestRegion::~GuestRegion() {
  if (host_ != nullptr) ::munmap(host_, size_);
}

absl::StatusOr<GuestMemory> GuestMemory::Create(const std::vector<RegionSpec>& specs) {
  if (specs.empty()) return absl::InvalidArgumentError("GuestMemory: no regions given");
  std::vector<RegionSpec> sorted = specs;
  std::sort(sorted.begin(), sorted.end(),
            [](const RegionSpec& a, const RegionSpec& b) { return a.start < b.start; });
  for (size_t i = 0; i < sorted.size(); ++i) {
    const RegionSpec& spec = sorted[i];
    std::string name = RangeText(spec.start, spec.size);
    if (spec.size == 0) return absl::InvalidArgumentError(absl::StrCat("GuestMemory: ", name, " is empty"));
    if (spec.start.page_offset() != 0 || spec.size % kPageSize != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("GuestMemory: ", name, " is not aligned to the 4 KiB page size"));
    }
    if (!spec.start.CheckedAdd(spec.size - 1)) {
      return absl::InvalidArgumentError(absl::StrCat("GuestMemory: ", name, " wraps past 2^64"));
    }
    if (i > 0) {
      const RegionSpec& previous = sorted[i - 1];
      if (spec.start.value() <= previous.start.value() + (previous.size - 1)) {
        return absl::InvalidArgumentError(absl::StrCat("GuestMemory: ", name, " overlaps ",
                                                       RangeText(previous.start, previous.size)));
      }
    }
  }

  std::vector<GuestRegion> regions;
  regions.reserve(sorted.size());
  for (const RegionSpec& spec : sorted) {
    int raw = ::memfd_create("xenkvm-guest-ram", MFD_CLOEXEC);
    if (raw < 0) return base::ErrnoStatus("memfd_create");
    base::Fd memfd(raw);
    if (::ftruncate(memfd.get(), static_cast<off_t>(spec.size)) < 0) {
      return base::ErrnoStatus(absl::StrCat("ftruncate(guest RAM memfd, ", spec.size, " bytes)"));
    }
    // MAP_NORESERVE: guest RAM is touched lazily; a guest rarely uses all of it.
    void* host = ::mmap(nullptr, spec.size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE,
                        memfd.get(), 0);
    if (host == MAP_FAILED) {
      return base::ErrnoStatus(absl::StrCat("mmap(guest RAM, ", spec.size, " bytes)"));
    }
    regions.push_back(GuestRegion(spec.start, spec.size, std::move(memfd), static_cast<uint8_t*>(host)));
  }
  return GuestMemory(std::move(regions));
}

uint64_t GuestMemory::total_size() const {
  uint64_t total = 0;
  for (const GuestRegion& region : regions_) total += region.size();
  return total;
}

const GuestRegion* GuestMemory::FindRegion(GuestAddress address) const {
  // The first region starting after `address`; the one before it is the only candidate.
  auto after = std::upper_bound(regions_.begin(), regions_.end(), address,
                                [](GuestAddress a, const GuestRegion& r) { return a < r.start(); });
  if (after == regions_.begin()) return nullptr;
  const GuestRegion& candidate = *(after - 1);
  return candidate.Contains(address) ? &candidate : nullptr;
}

absl::StatusOr<const GuestRegion*> GuestMemory::Locate(GuestAddress address, uint64_t length) const {
  if (length == 0) {
    return absl::InvalidArgumentError(absl::StrCat("zero-length access at guest address ", address.ToString()));
  }
  if (!address.CheckedAdd(length - 1)) {
    return absl::OutOfRangeError(absl::StrCat(RangeText(address, length), " wraps past 2^64"));
  }
  const GuestRegion* region = FindRegion(address);
  if (region == nullptr) {
    return absl::OutOfRangeError(
        absl::StrCat(RangeText(address, length), " starts outside guest memory"));
  }
  // Both sides are inclusive ends, so neither computation can wrap.
  if (address.value() + (length - 1) > region->last().value()) {
    return absl::OutOfRangeError(absl::StrCat(RangeText(address, length),
                                              " crosses the end of the guest RAM region ending at ",
                                              region->last().ToString()));
  }
  return region;
}

absl::StatusOr<uint8_t*> GuestMemory::HostAddress(GuestAddress address, uint64_t length) const {
  absl::StatusOr<const GuestRegion*> region = Locate(address, length);
  if (!region.ok()) return region.status();
  return (*region)->host_address() + (address.value() - (*region)->start().value());
}

absl::StatusOr<std::span<uint8_t>> GuestMemory::Span(GuestAddress address, uint64_t length) const {
  absl::StatusOr<uint8_t*> host = HostAddress(address, length);
  if (!host.ok()) return host.status();
  return std::span<uint8_t>(*host, length);
}

bool GuestMemory::IsValidRange(GuestAddress address, uint64_t length) const {
  return Locate(address, length).ok();
}

absl::Status GuestMemory::Read(GuestAddress address, std::span<uint8_t> destination) const {
  absl::StatusOr<uint8_t*> host = HostAddress(address, destination.size());
  if (!host.ok()) return host.status();
  std::memcpy(destination.data(), *host, destination.size());
  return absl::OkStatus();
}

absl::Status GuestMemory::Write(GuestAddress address, std::span<const uint8_t> source) const {
  absl::StatusOr<uint8_t*> host = HostAddress(address, source.size());
  if (!host.ok()) return host.status();
  std::memcpy(*host, source.data(), source.size());
  return absl::OkStatus();
}

absl::Status GuestMemory::Zero(GuestAddress address, uint64_t length) const {
  absl::StatusOr<uint8_t*> host = HostAddress(address, length);
  if (!host.ok()) return host.status();
  std::memset(*host, 0, length);
  return absl::OkStatus();
}

namespace {

// Calls copy(offset in the ring, offset in the buffer, length) for the one or two pieces `length`
// bytes from free-running `index` take in a ring of `ring_size` bytes.
template <typename Copy>
absl::Status ForRingPieces(uint32_t ring_size, uint32_t index, size_t length, Copy copy) {
  if (ring_size == 0 || length > ring_size) {
    return absl::InvalidArgumentError(absl::StrCat(length, " bytes do not fit a ", ring_size, "-byte ring"));
  }
  for (size_t done = 0; done < length;) {
    const uint32_t position = static_cast<uint32_t>((index + done) % ring_size);
    const size_t piece = std::min<size_t>(length - done, ring_size - position);
    if (absl::Status copied = copy(position, done, piece); !copied.ok()) return copied;
    done += piece;
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status GuestMemory::ReadRing(GuestAddress ring, uint32_t ring_size, uint32_t index,
                                   std::span<uint8_t> destination) const {
  return ForRingPieces(ring_size, index, destination.size(), [&](uint32_t position, size_t done, size_t piece) {
    return Read(ring.Unchecked(position), destination.subspan(done, piece));
  });
}

absl::Status GuestMemory::WriteRing(GuestAddress ring, uint32_t ring_size, uint32_t index,
                                    std::span<const uint8_t> source) const {
  return ForRingPieces(ring_size, index, source.size(), [&](uint32_t position, size_t done, size_t piece) {
    return Write(ring.Unchecked(position), source.subspan(done, piece));
  });
}

absl::Status GuestMemory::MisalignedAtomic(GuestAddress address, size_t size) {
  return absl::InvalidArgumentError(absl::StrCat("atomic ", size * 8, "-bit access at guest address ",
                                                 address.ToString(), " is not naturally aligned"));
}

}  // namespace xenkvm::memory
