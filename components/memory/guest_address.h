// GuestAddress: a guest-physical address (GPA), kept apart from host pointers and plain integers.
#ifndef XENKVM_COMPONENTS_MEMORY_GUEST_ADDRESS_H_
#define XENKVM_COMPONENTS_MEMORY_GUEST_ADDRESS_H_

#include <compare>
#include <cstdint>
#include <optional>
#include <string>

namespace xenkvm::memory {

inline constexpr uint64_t kPageSize = 4096;
inline constexpr unsigned kPageShift = 12;

class GuestAddress {
 public:
  constexpr GuestAddress() = default;
  constexpr explicit GuestAddress(uint64_t value) : value_(value) {}

  // The address of a guest frame number.
  static constexpr GuestAddress FromGfn(uint64_t gfn) { return GuestAddress(gfn << kPageShift); }

  constexpr uint64_t value() const { return value_; }
  constexpr uint64_t gfn() const { return value_ >> kPageShift; }
  constexpr uint64_t page_offset() const { return value_ & (kPageSize - 1); }

  // value + offset, or nothing when that wraps past 2^64.
  constexpr std::optional<GuestAddress> CheckedAdd(uint64_t offset) const {
    if (offset > UINT64_MAX - value_) return std::nullopt;
    return GuestAddress(value_ + offset);
  }
  // Callers use this only with offsets already known to fit (e.g. inside a region).
  constexpr GuestAddress Unchecked(uint64_t offset) const { return GuestAddress(value_ + offset); }

  constexpr auto operator<=>(const GuestAddress&) const = default;

  // "0x..." for messages.
  std::string ToString() const;

 private:
  uint64_t value_ = 0;
};

}  // namespace xenkvm::memory

#endif  // XENKVM_COMPONENTS_MEMORY_GUEST_ADDRESS_H_
