#include "components/accel/page_walk.h"

#include "absl/strings/str_format.h"

namespace xenkvm::accel {
namespace {

constexpr uint64_t kPresent = 1;
constexpr uint64_t kWritable = 1 << 1;
constexpr uint64_t kUser = 1 << 2;
constexpr uint64_t kLargePage = 1 << 7;
constexpr uint64_t kExecuteDisable = 1ull << 63;
constexpr uint64_t kCr0Pg = 1ull << 31;
constexpr uint64_t kCr4Pse = 1 << 4;
constexpr uint64_t kCr4Pae = 1 << 5;
constexpr uint64_t kEferNxe = 1 << 11;
constexpr uint64_t kEferLma = 1 << 10;
constexpr uint64_t kAddressMask = 0x000ffffffffff000ull;

void Combine(PageWalk& walk, uint64_t entry, bool nx_enabled) {
  walk.writable &= (entry & kWritable) != 0;
  walk.user &= (entry & kUser) != 0;
  if (entry & kExecuteDisable) {
    if (nx_enabled) {
      walk.executable = false;
    } else {
      walk.reserved_bit = true;
    }
  }
}

absl::StatusOr<PageWalk> WalkThirtyTwoBit(const memory::GuestMemory& memory, const PagingState& paging,
                                          uint32_t address) {
  using memory::GuestAddress;
  PageWalk walk;
  absl::StatusOr<uint32_t> pde =
      memory.ReadObject<uint32_t>(GuestAddress((paging.cr3 & 0xfffff000) + ((address >> 22) << 2)));
  if (!pde.ok()) return pde.status();
  if (!(*pde & kPresent)) return walk;
  Combine(walk, *pde, false);
  if ((*pde & kLargePage) && (paging.cr4 & kCr4Pse)) {
    walk.present = true;
    walk.physical = (*pde & 0xffc00000) | (address & 0x3fffff);
    return walk;
  }
  absl::StatusOr<uint32_t> pte = memory.ReadObject<uint32_t>(
      GuestAddress((*pde & 0xfffff000) + (((address >> 12) & 0x3ff) << 2)));
  if (!pte.ok()) return pte.status();
  if (!(*pte & kPresent)) return walk;
  Combine(walk, *pte, false);
  walk.present = true;
  walk.physical = (*pte & 0xfffff000) | (address & 0xfff);
  return walk;
}

}  // namespace

absl::StatusOr<PageWalk> WalkLinear(const memory::GuestMemory& memory, const PagingState& paging,
                                    uint64_t linear) {
  if (!(paging.cr0 & kCr0Pg)) return PageWalk{true, linear};
  if (!(paging.cr4 & kCr4Pae)) return WalkThirtyTwoBit(memory, paging, static_cast<uint32_t>(linear));
  using memory::GuestAddress;
  const bool nx_enabled = (paging.efer & kEferNxe) != 0;
  const int levels = (paging.efer & kEferLma) ? 4 : 3;
  uint64_t table = levels == 4 ? (paging.cr3 & kAddressMask) : (paging.cr3 & 0xffffffe0);
  if (levels == 3) linear &= 0xffffffff;
  PageWalk walk;
  for (int level = levels; level >= 1; --level) {
    const unsigned shift = 12 + 9 * (level - 1);
    const bool pdpte = levels == 3 && level == 3;  // PAE's PDPTEs carry no rights
    const uint64_t index = pdpte ? (linear >> 30) & 3 : (linear >> shift) & 0x1ff;
    absl::StatusOr<uint64_t> entry = memory.ReadObject<uint64_t>(GuestAddress(table + index * 8));
    if (!entry.ok()) return entry.status();
    if (!(*entry & kPresent)) return walk;
    if (!pdpte) Combine(walk, *entry, nx_enabled);
    const bool large = (level == 2 || level == 3) && !pdpte && (*entry & kLargePage);
    if (level == 4 && (*entry & kLargePage)) walk.reserved_bit = true;
    if (level == 1 || large) {
      const uint64_t page_mask = (uint64_t{1} << shift) - 1;
      walk.present = true;
      walk.physical = (*entry & kAddressMask & ~page_mask) | (linear & page_mask);
      return walk;
    }
    table = *entry & kAddressMask;
  }
  return absl::InternalError("WalkLinear: walk ended without a page");
}

absl::StatusOr<uint64_t> TranslateLinear(const memory::GuestMemory& memory, const PagingState& paging,
                                         uint64_t linear) {
  absl::StatusOr<PageWalk> walk = WalkLinear(memory, paging, linear);
  if (!walk.ok()) return walk.status();
  if (!walk->present) {
    return absl::NotFoundError(absl::StrFormat("linear address %#x is not mapped (an entry is not present)", linear));
  }
  return walk->physical;
}

}  // namespace xenkvm::accel
