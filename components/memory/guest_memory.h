// GuestMemory: the guest's physical memory, made of non-overlapping regions each backed by a memfd
// (so that another process, such as a PV backend, can map the same pages later).
//
// Every access is bounds-checked: it must lie wholly inside one region (an access that crosses a
// region's end fails even when the next region starts right there), must not be empty and must
// not wrap past 2^64. Failures are absl::Status values that name the address and length.
//
// Thread-safety: the set of regions is fixed at creation, so every method may be called from any
// thread at once. Plain reads and writes are byte copies with no ordering: the guest may change the
// bytes at the same time, so callers copy a request out once and validate the copy (DESIGN.md,
// "Guest-facing code"). Shared rings and bitmaps use the atomic accessors, which require natural
// alignment and use the memory order given.
#ifndef XENKVM_COMPONENTS_MEMORY_GUEST_MEMORY_H_
#define XENKVM_COMPONENTS_MEMORY_GUEST_MEMORY_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "components/base/fd.h"
#include "components/memory/guest_address.h"

namespace xenkvm::memory {

// The host pages under guest RAM. k2MiB: hugetlb pages (as Firecracker's huge_pages "2M" and
// QEMU's hugetlb memory backends): the guest's TLB reach, and physically contiguous 2 MiB for
// I/O (a disk's large direct transfers reach the device as a few segments, not one a page). They
// come from the host's pool (/proc/sys/vm/nr_hugepages), reserved when the memory is created.
enum class RamPages { k4KiB, k2MiB };
inline constexpr uint64_t kHugePageSize = uint64_t{2} << 20;

// The huge-pages setting's values (xenkvm-vmm --huge-pages, the API's huge_pages): "none"
// (4 KiB pages) or "2M" (Firecracker's name); anything else is an error that lists them.
absl::StatusOr<RamPages> ParseHugePages(const std::string& name);

// The host pool's 2 MiB pages that nobody uses or has reserved (HugePages_Free less
// HugePages_Rsvd in /proc/meminfo), or -1 when the kernel does not say.
int64_t AvailableHugePages();

// What a caller asks for: `size` bytes of RAM at `start`; both page-aligned, size > 0.
struct RegionSpec {
  GuestAddress start;
  uint64_t size = 0;
};

// One mapped region. Owned by GuestMemory.
class GuestRegion {
 public:
  GuestRegion(GuestRegion&& other) noexcept;
  GuestRegion& operator=(GuestRegion&&) = delete;
  GuestRegion(const GuestRegion&) = delete;
  ~GuestRegion();

  GuestAddress start() const { return start_; }
  uint64_t size() const { return size_; }
  // The last byte's address (start + size - 1): never wraps, unlike start + size.
  GuestAddress last() const { return start_.Unchecked(size_ - 1); }
  uint8_t* host_address() const { return host_; }
  // The memfd holding this region's bytes, from offset 0; for sharing with another process.
  int memfd() const { return memfd_.get(); }
  // Whether the region is on 2 MiB huge pages.
  bool huge_pages() const { return huge_pages_; }

  bool Contains(GuestAddress address) const { return address >= start_ && address <= last(); }

 private:
  friend class GuestMemory;
  GuestRegion(GuestAddress start, uint64_t size, base::Fd memfd, uint8_t* host, bool huge_pages)
      : start_(start), size_(size), memfd_(std::move(memfd)), host_(host), huge_pages_(huge_pages) {}

  GuestAddress start_;
  uint64_t size_;
  base::Fd memfd_;
  uint8_t* host_;
  bool huge_pages_;
};

// Integer types the atomic accessors take.
template <typename T>
concept GuestAtomic = std::is_same_v<T, uint16_t> || std::is_same_v<T, uint32_t> ||
                      std::is_same_v<T, uint64_t>;

class GuestMemory {
 public:
  // Regions may be given in any order; they are kept sorted by address. Refuses empty lists,
  // unaligned or zero sizes, wrapping ends and overlaps, naming the offending region. With
  // RamPages::k2MiB every region whose start and size are multiples of 2 MiB is on huge pages
  // (smaller ones, such as the few reserved Xen pages, stay on 4 KiB pages); too few free huge
  // pages in the host's pool is kResourceExhausted saying how many more to reserve.
  static absl::StatusOr<GuestMemory> Create(const std::vector<RegionSpec>& regions,
                                            RamPages pages = RamPages::k4KiB);

  GuestMemory(GuestMemory&&);
  GuestMemory& operator=(GuestMemory&&);
  ~GuestMemory();

  const std::vector<GuestRegion>& regions() const { return regions_; }
  // Sum of all region sizes.
  uint64_t total_size() const;
  // The region holding `address`, or nullptr.
  const GuestRegion* FindRegion(GuestAddress address) const;

  // The host pointer for [address, address + length), which must lie inside one region.
  absl::StatusOr<uint8_t*> HostAddress(GuestAddress address, uint64_t length) const;
  // The same range as a span, for zero-copy I/O.
  absl::StatusOr<std::span<uint8_t>> Span(GuestAddress address, uint64_t length) const;
  // True when the range is wholly inside one region.
  bool IsValidRange(GuestAddress address, uint64_t length) const;

  absl::Status Read(GuestAddress address, std::span<uint8_t> destination) const;
  absl::Status Write(GuestAddress address, std::span<const uint8_t> source) const;
  // Fills [address, address + length) with zeros.
  absl::Status Zero(GuestAddress address, uint64_t length) const;
  // Gives the pages of [address, address + length) (page-aligned, inside one region) back to the
  // host: the memfd's hole is punched, the VMM's resident memory drops, and the range reads as
  // zeros (faulted in afresh) when next touched, by the guest or the host. On huge pages the
  // range is zeroed and its pages stay the guest's (reserved from the pool until the memory goes).
  absl::Status Discard(GuestAddress address, uint64_t length) const;

  // Extra pages: single pages given backing at run time where no region is, as Xen gives a
  // grant-table or shared-info frame that a guest maps at an unpopulated address
  // (XENMAPSPACE_*). Every accessor above reaches them too (an access may not cross one's end).
  // Their bytes come from a pool made with the memory, so a host pointer once handed out stays
  // valid memory for the GuestMemory's life. At most kMaxExtraPages at a time.
  static constexpr uint32_t kMaxExtraPages = 4160;
  // Backs the page at `page` (page-aligned, outside every region) with a zeroed page and returns
  // it; the page already there if it is one. kInvalidArgument inside a region or unaligned,
  // kResourceExhausted when the pool is used up.
  absl::StatusOr<uint8_t*> MapExtraPage(GuestAddress page);
  // Takes the backing away again (its bytes are discarded). kNotFound when `page` is not one.
  absl::Status UnmapExtraPage(GuestAddress page);
  // Whether `page` (page-aligned) is an extra page now.
  bool IsExtraPage(GuestAddress page) const;

  // A byte ring of `ring_size` bytes at `ring` (a shared-memory ring's data area): copies
  // destination.size() bytes starting at free-running index `index`, wrapping at the end. The
  // size of the copy must not exceed the ring's.
  absl::Status ReadRing(GuestAddress ring, uint32_t ring_size, uint32_t index, std::span<uint8_t> destination) const;
  absl::Status WriteRing(GuestAddress ring, uint32_t ring_size, uint32_t index, std::span<const uint8_t> source) const;

  template <typename T>
    requires std::is_trivially_copyable_v<T>
  absl::StatusOr<T> ReadObject(GuestAddress address) const {
    T object;
    absl::Status status =
        Read(address, std::span<uint8_t>(reinterpret_cast<uint8_t*>(&object), sizeof(T)));
    if (!status.ok()) return status;
    return object;
  }

  template <typename T>
    requires std::is_trivially_copyable_v<T>
  absl::Status WriteObject(GuestAddress address, const T& object) const {
    return Write(address,
                 std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(&object), sizeof(T)));
  }

  // Atomic access to naturally aligned 16/32/64-bit words, for rings and bitmaps shared with the
  // guest or another thread.
  template <GuestAtomic T>
  absl::StatusOr<T> AtomicLoad(GuestAddress address,
                               std::memory_order order = std::memory_order_acquire) const {
    absl::StatusOr<T*> word = AtomicWord<T>(address);
    if (!word.ok()) return word.status();
    return std::atomic_ref<T>(**word).load(order);
  }

  template <GuestAtomic T>
  absl::Status AtomicStore(GuestAddress address, T value,
                           std::memory_order order = std::memory_order_release) const {
    absl::StatusOr<T*> word = AtomicWord<T>(address);
    if (!word.ok()) return word.status();
    std::atomic_ref<T>(**word).store(value, order);
    return absl::OkStatus();
  }

  // Stores `desired` if the word equals `expected` and returns true; otherwise loads the word into
  // `expected` and returns false.
  template <GuestAtomic T>
  absl::StatusOr<bool> AtomicCompareExchange(
      GuestAddress address, T& expected, T desired,
      std::memory_order order = std::memory_order_acq_rel) const {
    absl::StatusOr<T*> word = AtomicWord<T>(address);
    if (!word.ok()) return word.status();
    return std::atomic_ref<T>(**word).compare_exchange_strong(expected, desired, order);
  }

  // word |= bits, returning the old value (sets event-channel pending bits and the like).
  template <GuestAtomic T>
  absl::StatusOr<T> AtomicFetchOr(GuestAddress address, T bits,
                                  std::memory_order order = std::memory_order_acq_rel) const {
    absl::StatusOr<T*> word = AtomicWord<T>(address);
    if (!word.ok()) return word.status();
    return std::atomic_ref<T>(**word).fetch_or(bits, order);
  }

  // word &= bits, returning the old value.
  template <GuestAtomic T>
  absl::StatusOr<T> AtomicFetchAnd(GuestAddress address, T bits,
                                   std::memory_order order = std::memory_order_acq_rel) const {
    absl::StatusOr<T*> word = AtomicWord<T>(address);
    if (!word.ok()) return word.status();
    return std::atomic_ref<T>(**word).fetch_and(bits, order);
  }

 private:
  struct ExtraPages;
  GuestMemory(std::vector<GuestRegion> regions, std::unique_ptr<ExtraPages> extra);

  // The region wholly holding the range, or an error naming the range and what is wrong with it.
  absl::StatusOr<const GuestRegion*> Locate(GuestAddress address, uint64_t length) const;

  template <GuestAtomic T>
  absl::StatusOr<T*> AtomicWord(GuestAddress address) const {
    if (address.value() % sizeof(T) != 0) return MisalignedAtomic(address, sizeof(T));
    absl::StatusOr<uint8_t*> host = HostAddress(address, sizeof(T));
    if (!host.ok()) return host.status();
    return reinterpret_cast<T*>(*host);
  }
  static absl::Status MisalignedAtomic(GuestAddress address, size_t size);
  // The host pointer for a range inside one extra page, or nullptr.
  uint8_t* ExtraPageHost(GuestAddress address, uint64_t length) const;

  std::vector<GuestRegion> regions_;
  std::unique_ptr<ExtraPages> extra_;  // behind a pointer: GuestMemory moves, its mutex cannot
};

}  // namespace xenkvm::memory

#endif  // XENKVM_COMPONENTS_MEMORY_GUEST_MEMORY_H_
