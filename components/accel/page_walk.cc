#include "components/accel/page_walk.h"

#include "absl/strings/str_format.h"

namespace xenkvm::accel {
namespace {

constexpr uint64_t kPresent = 1;
constexpr uint64_t kLargePage = 1 << 7;
constexpr uint64_t kCr0Pg = 1ull << 31;
constexpr uint64_t kCr4Pse = 1 << 4;
constexpr uint64_t kCr4Pae = 1 << 5;
constexpr uint64_t kEferLma = 1 << 10;
constexpr uint64_t kAddressMask = 0x000ffffffffff000ull;

absl::Status NotPresent(uint64_t linear, int level) {
  return absl::NotFoundError(
      absl::StrFormat("linear address %#x is not mapped (level-%d entry not present)", linear, level));
}

}  // namespace

absl::StatusOr<uint64_t> TranslateLinear(const memory::GuestMemory& memory, const PagingState& paging,
                                         uint64_t linear) {
  if (!(paging.cr0 & kCr0Pg)) return linear;
  using memory::GuestAddress;
  if (!(paging.cr4 & kCr4Pae)) {  // 32-bit paging
    uint32_t address = static_cast<uint32_t>(linear);
    absl::StatusOr<uint32_t> pde =
        memory.ReadObject<uint32_t>(GuestAddress((paging.cr3 & 0xfffff000) + ((address >> 22) << 2)));
    if (!pde.ok()) return pde.status();
    if (!(*pde & kPresent)) return NotPresent(linear, 2);
    if ((*pde & kLargePage) && (paging.cr4 & kCr4Pse)) {
      return (*pde & 0xffc00000) | (address & 0x3fffff);
    }
    absl::StatusOr<uint32_t> pte = memory.ReadObject<uint32_t>(
        GuestAddress((*pde & 0xfffff000) + (((address >> 12) & 0x3ff) << 2)));
    if (!pte.ok()) return pte.status();
    if (!(*pte & kPresent)) return NotPresent(linear, 1);
    return (*pte & 0xfffff000) | (address & 0xfff);
  }
  int levels = (paging.efer & kEferLma) ? 4 : 3;
  uint64_t table = levels == 4 ? (paging.cr3 & kAddressMask) : (paging.cr3 & 0xffffffe0);
  if (levels == 3) linear &= 0xffffffff;
  for (int level = levels; level >= 1; --level) {
    unsigned shift = 12 + 9 * (level - 1);
    uint64_t index = level == 3 && levels == 3 ? (linear >> 30) & 3 : (linear >> shift) & 0x1ff;
    absl::StatusOr<uint64_t> entry = memory.ReadObject<uint64_t>(GuestAddress(table + index * 8));
    if (!entry.ok()) return entry.status();
    if (!(*entry & kPresent)) return NotPresent(linear, level);
    if (level == 1 || ((level == 2 || level == 3) && (*entry & kLargePage) && !(levels == 3 && level == 3))) {
      uint64_t page_mask = (uint64_t{1} << shift) - 1;
      return (*entry & kAddressMask & ~page_mask) | (linear & page_mask);
    }
    table = *entry & kAddressMask;
  }
  return absl::InternalError("TranslateLinear: walk ended without a page");
}

}  // namespace xenkvm::accel
