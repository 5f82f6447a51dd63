#include "components/xen/guest_access.h"

namespace xenkvm::xen {

template <typename Access>
bool GuestAccess::ForEachPage(uint64_t linear, size_t length, Access access) {
  if (linear + length < linear) return false;  // wraps
  size_t done = 0;
  while (done < length) {
    const uint64_t address = linear + done;
    const size_t chunk = std::min<size_t>(length - done, 0x1000 - (address & 0xfff));
    absl::StatusOr<uint64_t> physical = vcpu_.TranslateLinear(address);
    if (!physical.ok() || !access(memory::GuestAddress(*physical), done, chunk)) return false;
    done += chunk;
  }
  return true;
}

bool GuestAccess::Read(uint64_t linear, std::span<uint8_t> bytes) {
  return ForEachPage(linear, bytes.size(), [&](memory::GuestAddress physical, size_t at, size_t n) {
    return memory_.Read(physical, bytes.subspan(at, n)).ok();
  });
}

bool GuestAccess::Write(uint64_t linear, std::span<const uint8_t> bytes) {
  return ForEachPage(linear, bytes.size(), [&](memory::GuestAddress physical, size_t at, size_t n) {
    return memory_.Write(physical, bytes.subspan(at, n)).ok();
  });
}

std::optional<uint64_t> GuestAccess::Translate(uint64_t linear) {
  absl::StatusOr<uint64_t> physical = vcpu_.TranslateLinear(linear);
  if (!physical.ok()) return std::nullopt;
  return *physical;
}

}  // namespace xenkvm::xen
