#include "components/memory/guest_memory.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/strings/str_format.h"
#include "components/base/status.h"

namespace xenkvm::memory {

std::string GuestAddress::ToString() const { return absl::StrFormat("%#x", value_); }

absl::StatusOr<RamPages> ParseHugePages(const std::string& name) {
  if (name == "none") return RamPages::k4KiB;
  if (name == "2M") return RamPages::k2MiB;
  return absl::InvalidArgumentError(absl::StrCat("huge-pages: unknown page size \"", name, "\"; use none or 2M"));
}

int64_t AvailableHugePages() {
  FILE* meminfo = std::fopen("/proc/meminfo", "re");
  if (meminfo == nullptr) return -1;
  long long free_pages = -1, reserved = -1;
  char line[256];
  while (std::fgets(line, sizeof(line), meminfo) != nullptr) {
    (void)std::sscanf(line, "HugePages_Free: %lld", &free_pages);
    (void)std::sscanf(line, "HugePages_Rsvd: %lld", &reserved);
  }
  std::fclose(meminfo);
  return free_pages < 0 || reserved < 0 ? -1 : free_pages - reserved;
}

namespace {

std::string RangeText(GuestAddress address, uint64_t length) {
  return absl::StrFormat("guest range [%#x, +%#x)", address.value(), length);
}

struct MappedRegion {
  base::Fd memfd;
  uint8_t* host = nullptr;
};

// One region's memfd and mapping. On huge pages the mapping reserves its pages from the pool at
// once (no MAP_NORESERVE): a shortage is an error now, not a SIGBUS when the guest touches them.
// `huge_pages_needed`: by all the memory's regions on huge pages, for the error.
absl::StatusOr<MappedRegion> MapRegion(const RegionSpec& spec, bool huge_pages, uint64_t huge_pages_needed) {
  constexpr unsigned kMfdHuge2MiB = 21u << 26;  // MFD_HUGE_2MB: log2(2 MiB) << MFD_HUGE_SHIFT (linux/memfd.h)
  const unsigned flags = MFD_CLOEXEC | (huge_pages ? MFD_HUGETLB | kMfdHuge2MiB : 0);
  int raw = ::memfd_create("xenkvm-guest-ram", flags);
  if (raw < 0 && huge_pages) {
    return base::ErrnoStatus("memfd_create(MFD_HUGETLB): this host's kernel offers no 2 MiB huge pages");
  }
  if (raw < 0) return base::ErrnoStatus("memfd_create");
  base::Fd memfd(raw);
  if (::ftruncate(memfd.get(), static_cast<off_t>(spec.size)) < 0) {
    return base::ErrnoStatus(absl::StrCat("ftruncate(guest RAM memfd, ", spec.size, " bytes)"));
  }
  // MAP_NORESERVE on small pages: guest RAM is touched lazily; a guest rarely uses all of it.
  void* host = ::mmap(nullptr, spec.size, PROT_READ | PROT_WRITE, MAP_SHARED | (huge_pages ? 0 : MAP_NORESERVE),
                      memfd.get(), 0);
  if (host == MAP_FAILED && huge_pages && errno == ENOMEM) {
    const int64_t available = AvailableHugePages();
    return absl::ResourceExhaustedError(absl::StrCat(
        "GuestMemory: guest RAM on 2 MiB huge pages needs ", huge_pages_needed, " of them free in the host's pool, which has ",
        available < 0 ? std::string("an unknown number") : absl::StrCat(available),
        " (HugePages_Free less HugePages_Rsvd in /proc/meminfo); reserve more with `echo N > /proc/sys/vm/nr_hugepages` "
        "as root, or run without huge pages"));
  }
  if (host == MAP_FAILED) return base::ErrnoStatus(absl::StrCat("mmap(guest RAM, ", spec.size, " bytes)"));
  return MappedRegion{std::move(memfd), static_cast<uint8_t*>(host)};
}

}  // namespace

struct GuestMemory::ExtraPages {
  ~ExtraPages() {
    if (host != nullptr) ::munmap(host, uint64_t{kMaxExtraPages} * kPageSize);
  }
  base::Fd memfd;
  uint8_t* host = nullptr;  // kMaxExtraPages pages of the memfd
  std::atomic<uint32_t> count{0};  // lets the common case (none) skip the lock
  mutable absl::Mutex mutex;
  absl::flat_hash_map<uint64_t, uint32_t> slot_of_page ABSL_GUARDED_BY(mutex);  // page number -> slot
  std::vector<uint32_t> free_slots ABSL_GUARDED_BY(mutex);
};

GuestMemory::GuestMemory(std::vector<GuestRegion> regions, std::unique_ptr<ExtraPages> extra)
    : regions_(std::move(regions)), extra_(std::move(extra)) {}
GuestMemory::GuestMemory(GuestMemory&&) = default;
GuestMemory& GuestMemory::operator=(GuestMemory&&) = default;
GuestMemory::~GuestMemory() = default;

GuestRegion::GuestRegion(GuestRegion&& other) noexcept
    : start_(other.start_),
      size_(other.size_),
      memfd_(std::move(other.memfd_)),
      host_(other.host_),
      huge_pages_(other.huge_pages_) {
  other.host_ = nullptr;
  other.size_ = 0;
}

GuestRegion::~GuestRegion() {
  if (host_ != nullptr) ::munmap(host_, size_);
}

absl::StatusOr<GuestMemory> GuestMemory::Create(const std::vector<RegionSpec>& specs, RamPages pages) {
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
  auto on_huge_pages = [pages](const RegionSpec& spec) {
    return pages == RamPages::k2MiB && spec.start.value() % kHugePageSize == 0 && spec.size % kHugePageSize == 0;
  };
  uint64_t huge_pages_needed = 0;
  for (const RegionSpec& spec : sorted) huge_pages_needed += on_huge_pages(spec) ? spec.size / kHugePageSize : 0;
  for (const RegionSpec& spec : sorted) {
    const bool huge = on_huge_pages(spec);
    absl::StatusOr<MappedRegion> mapped = MapRegion(spec, huge, huge_pages_needed);
    if (!mapped.ok()) return mapped.status();
    regions.push_back(GuestRegion(spec.start, spec.size, std::move(mapped->memfd), mapped->host, huge));
  }
  auto extra = std::make_unique<ExtraPages>();
  extra->memfd = base::Fd(::memfd_create("xenkvm-extra-pages", MFD_CLOEXEC));
  const uint64_t pool_size = uint64_t{kMaxExtraPages} * kPageSize;
  if (!extra->memfd.valid() || ::ftruncate(extra->memfd.get(), static_cast<off_t>(pool_size)) < 0) {
    return base::ErrnoStatus("memfd for extra guest pages");
  }
  void* pool = ::mmap(nullptr, pool_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, extra->memfd.get(), 0);
  if (pool == MAP_FAILED) return base::ErrnoStatus("mmap(extra guest pages)");
  extra->host = static_cast<uint8_t*>(pool);
  {
    absl::MutexLock lock(&extra->mutex);
    for (uint32_t slot = kMaxExtraPages; slot > 0; --slot) extra->free_slots.push_back(slot - 1);
  }
  return GuestMemory(std::move(regions), std::move(extra));
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
  if (!region.ok()) {
    if (uint8_t* extra = ExtraPageHost(address, length)) return extra;
    return region.status();
  }
  return (*region)->host_address() + (address.value() - (*region)->start().value());
}

absl::StatusOr<std::span<uint8_t>> GuestMemory::Span(GuestAddress address, uint64_t length) const {
  absl::StatusOr<uint8_t*> host = HostAddress(address, length);
  if (!host.ok()) return host.status();
  return std::span<uint8_t>(*host, length);
}

bool GuestMemory::IsValidRange(GuestAddress address, uint64_t length) const {
  return Locate(address, length).ok() || ExtraPageHost(address, length) != nullptr;
}

uint8_t* GuestMemory::ExtraPageHost(GuestAddress address, uint64_t length) const {
  if (extra_ == nullptr || extra_->count.load(std::memory_order_acquire) == 0 || length == 0) return nullptr;
  const uint64_t offset = address.page_offset();
  if (length > kPageSize - offset) return nullptr;
  absl::ReaderMutexLock lock(&extra_->mutex);
  auto found = extra_->slot_of_page.find(address.value() / kPageSize);
  if (found == extra_->slot_of_page.end()) return nullptr;
  return extra_->host + uint64_t{found->second} * kPageSize + offset;
}

absl::StatusOr<uint8_t*> GuestMemory::MapExtraPage(GuestAddress page) {
  if (page.page_offset() != 0 || FindRegion(page) != nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("extra page at ", page.ToString(), ": not page-aligned or inside guest RAM"));
  }
  absl::MutexLock lock(&extra_->mutex);
  if (auto found = extra_->slot_of_page.find(page.value() / kPageSize); found != extra_->slot_of_page.end()) {
    return extra_->host + uint64_t{found->second} * kPageSize;
  }
  if (extra_->free_slots.empty()) {
    return absl::ResourceExhaustedError(
        absl::StrFormat("extra page at %s: all %u extra pages are in use", page.ToString(), kMaxExtraPages));
  }
  const uint32_t slot = extra_->free_slots.back();
  extra_->free_slots.pop_back();
  uint8_t* host = extra_->host + uint64_t{slot} * kPageSize;
  std::memset(host, 0, kPageSize);
  extra_->slot_of_page[page.value() / kPageSize] = slot;
  extra_->count.fetch_add(1, std::memory_order_release);
  return host;
}

absl::Status GuestMemory::UnmapExtraPage(GuestAddress page) {
  absl::MutexLock lock(&extra_->mutex);
  auto found = extra_->slot_of_page.find(page.value() / kPageSize);
  if (page.page_offset() != 0 || found == extra_->slot_of_page.end()) {
    return absl::NotFoundError(absl::StrCat("no extra page at ", page.ToString()));
  }
  const uint32_t slot = found->second;
  extra_->slot_of_page.erase(found);
  extra_->count.fetch_sub(1, std::memory_order_release);
  // Give the bytes back to the host; the pool's mapping stays, reading zeros until reused.
  (void)::fallocate(extra_->memfd.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                    static_cast<off_t>(uint64_t{slot} * kPageSize), static_cast<off_t>(kPageSize));
  extra_->free_slots.push_back(slot);
  return absl::OkStatus();
}

bool GuestMemory::IsExtraPage(GuestAddress page) const {
  if (extra_ == nullptr) return false;
  absl::ReaderMutexLock lock(&extra_->mutex);
  return page.page_offset() == 0 && extra_->slot_of_page.contains(page.value() / kPageSize);
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

absl::Status GuestMemory::Discard(GuestAddress address, uint64_t length) const {
  if (address.page_offset() != 0 || length % kPageSize != 0 || length == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("discard of ", length, " bytes at ", address.ToString(), ": not whole pages"));
  }
  const GuestRegion* region = FindRegion(address);
  if (region == nullptr || !IsValidRange(address, length)) {
    return absl::InvalidArgumentError(absl::StrCat("discard at ", address.ToString(), ": not inside one RAM region"));
  }
  if (region->huge_pages()) {
    // Kept: a huge page given back to the pool could be taken by then when the guest repopulates
    // it, and the guest's next touch would be a SIGBUS.
    std::memset(region->host_address() + (address.value() - region->start().value()), 0, length);
    return absl::OkStatus();
  }
  const uint64_t offset = address.value() - region->start().value();
  if (::fallocate(region->memfd(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset),
                  static_cast<off_t>(length)) != 0) {
    return base::ErrnoStatus(absl::StrCat("discard at ", address.ToString(), ": fallocate"));
  }
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
