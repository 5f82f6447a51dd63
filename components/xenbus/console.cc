#include "components/xenbus/console.h"

#include <array>
#include <cstddef>

#include "xen/io/console.h"

namespace xenkvm::xenbus {
namespace {

constexpr uint32_t kInSize = sizeof(xencons_interface::in);
constexpr uint32_t kOutSize = sizeof(xencons_interface::out);
constexpr uint64_t kIn = offsetof(xencons_interface, in);
constexpr uint64_t kOut = offsetof(xencons_interface, out);
constexpr uint64_t kInCons = offsetof(xencons_interface, in_cons);
constexpr uint64_t kInProd = offsetof(xencons_interface, in_prod);
constexpr uint64_t kOutCons = offsetof(xencons_interface, out_cons);
constexpr uint64_t kOutProd = offsetof(xencons_interface, out_prod);

}  // namespace

absl::StatusOr<std::unique_ptr<ConsoleBackend>> ConsoleBackend::Create(
    const memory::GuestMemory& memory, uint64_t ring_gpa, std::function<void(std::span<const uint8_t>)> output,
    std::function<void()> notify) {
  if (ring_gpa % 4096 != 0 || !memory.IsValidRange(memory::GuestAddress(ring_gpa), 4096)) {
    return absl::InvalidArgumentError("PV console: the ring must be a page of guest RAM");
  }
  if (absl::Status zeroed = memory.Zero(memory::GuestAddress(ring_gpa), 4096); !zeroed.ok()) return zeroed;
  return std::unique_ptr<ConsoleBackend>(new ConsoleBackend(memory, ring_gpa, std::move(output), std::move(notify)));
}

std::optional<uint32_t> ConsoleBackend::Load(uint64_t offset) const {
  absl::StatusOr<uint32_t> value = memory_.AtomicLoad<uint32_t>(memory::GuestAddress(ring_gpa_ + offset));
  return value.ok() ? std::optional<uint32_t>(*value) : std::nullopt;
}

void ConsoleBackend::Store(uint64_t offset, uint32_t value) const {
  (void)memory_.AtomicStore<uint32_t>(memory::GuestAddress(ring_gpa_ + offset), value);
}

void ConsoleBackend::Process() {
  std::optional<uint32_t> consumer = Load(kOutCons);
  std::optional<uint32_t> producer = Load(kOutProd);  // acquire: the bytes before it are visible
  if (!consumer || !producer) return;
  const uint32_t available = *producer - *consumer;
  if (available == 0) return;
  if (available > kOutSize) {
    ++statistics_.bad_indexes;  // as xenconsoled: nothing sensible to read; wait for sane indexes
    return;
  }
  // Copied once, then handed on.
  std::array<uint8_t, kOutSize> bytes;
  if (!memory_.ReadRing(memory::GuestAddress(ring_gpa_ + kOut), kOutSize, *consumer,
                        std::span<uint8_t>(bytes.data(), available))
           .ok()) {
    return;
  }
  Store(kOutCons, *consumer + available);
  statistics_.output_bytes += available;
  output_(std::span<const uint8_t>(bytes.data(), available));
  notify_();
}

size_t ConsoleBackend::Send(std::span<const uint8_t> bytes) {
  std::optional<uint32_t> consumer = Load(kInCons);
  std::optional<uint32_t> producer = Load(kInProd);
  if (!consumer || !producer) return 0;
  const uint32_t used = *producer - *consumer;
  if (used > kInSize) {
    ++statistics_.bad_indexes;
    return 0;
  }
  const uint32_t count = std::min<uint32_t>(kInSize - used, static_cast<uint32_t>(bytes.size()));
  if (count == 0) return 0;
  if (!memory_.WriteRing(memory::GuestAddress(ring_gpa_ + kIn), kInSize, *producer, bytes.first(count)).ok()) return 0;
  Store(kInProd, *producer + count);  // release: the bytes first
  statistics_.input_bytes += count;
  notify_();
  return count;
}

}  // namespace xenkvm::xenbus
