#include "components/devices/ioapic.h"

namespace xenkvm::devices {
namespace {

constexpr uint64_t kSelect = 0x00, kWindow = 0x10, kEoi = 0x40;
constexpr uint32_t kVersion = 0x20 | ((kIoapicPins - 1) << 16);
constexpr uint64_t kMasked = 1 << 16, kLevel = 1 << 15, kRemoteIrr = 1 << 14, kLogical = 1 << 11;
// Bits the guest may write: vector, delivery mode, destination mode, polarity, trigger, mask, dest.
constexpr uint64_t kWritable = 0xff000000000100ffull | (7 << 8) | kLogical | (1 << 13) | kLevel | kMasked;

}  // namespace

uint64_t Ioapic::redirection(uint32_t pin) const {
  absl::MutexLock lock(&mutex_);
  return pin < kIoapicPins ? table_[pin] : 0;
}

uint32_t Ioapic::ReadRegisterLocked(uint32_t index) const {
  switch (index) {
    case 0:
      return id_ << 24;
    case 1:
      return kVersion;
    case 2:
      return id_ << 24;  // arbitration ID
    default:
      break;
  }
  if (index >= 0x10 && index < 0x10 + 2 * kIoapicPins) {
    const uint64_t entry = table_[(index - 0x10) / 2];
    return index % 2 == 0 ? static_cast<uint32_t>(entry) : static_cast<uint32_t>(entry >> 32);
  }
  return 0;
}

Ioapic::Ioapic(Deliver deliver, bool eoi_tracking) : deliver_(std::move(deliver)), eoi_tracking_(eoi_tracking) {
  table_.fill(kMasked);  // the reset state: every pin masked
}

void Ioapic::WriteRegisterLocked(uint32_t index, uint32_t value) {
  if (index == 0) {
    id_ = (value >> 24) & 0xf;
    return;
  }
  if (index < 0x10 || index >= 0x10 + 2 * kIoapicPins) return;
  const uint32_t pin = (index - 0x10) / 2;
  uint64_t entry = table_[pin];
  if (index % 2 == 0) {
    entry = (entry & ~(kWritable & 0xffffffffull)) | (value & kWritable);
  } else {
    entry = (entry & 0xffffffffull) | (static_cast<uint64_t>(value) << 32 & kWritable);
  }
  if (!(entry & kLevel)) entry &= ~kRemoteIrr;
  table_[pin] = entry;
  if (entry & kLevel) TryDeliverLocked(pin);  // an asserted level pin fires when unmasked
}

void Ioapic::Read(uint64_t offset, std::span<uint8_t> data) {
  absl::MutexLock lock(&mutex_);
  uint32_t value = 0;
  if (offset == kSelect) value = select_;
  if (offset == kWindow) value = ReadRegisterLocked(select_);
  StoreLittleEndian(value, data);
}

void Ioapic::Write(uint64_t offset, std::span<const uint8_t> data) {
  const uint32_t value = static_cast<uint32_t>(LoadLittleEndian(data));
  if (offset == kEoi) {
    EndOfInterrupt(static_cast<uint8_t>(value));
    return;
  }
  absl::MutexLock lock(&mutex_);
  if (offset == kSelect) select_ = value & 0xff;
  if (offset == kWindow) WriteRegisterLocked(select_, value);
}

// Sends the pin's interrupt if it may: unmasked, and for a level pin, asserted and not in service.
void Ioapic::TryDeliverLocked(uint32_t pin) {
  uint64_t& entry = table_[pin];
  const bool level = entry & kLevel;
  if ((entry & kMasked) || !level_[pin] || (level && (entry & kRemoteIrr))) return;
  uint8_t destination = static_cast<uint8_t>(entry >> 56);
  if (entry & kLogical) destination = destination == 0 ? 0 : static_cast<uint8_t>(__builtin_ctz(destination));
  if (deliver_(destination, static_cast<uint8_t>(entry & 0xff), level) && level && eoi_tracking_) entry |= kRemoteIrr;
}

void Ioapic::SetLevel(uint32_t pin, bool asserted) {
  absl::MutexLock lock(&mutex_);
  if (pin >= kIoapicPins) return;
  const bool rising = asserted && !level_[pin];
  level_[pin] = asserted;
  // Edge pins fire on the rising edge only (an edge while masked is lost, as on hardware).
  if ((table_[pin] & kLevel) ? asserted : rising) TryDeliverLocked(pin);
}

void Ioapic::EndOfInterrupt(uint8_t vector) {
  absl::MutexLock lock(&mutex_);
  for (uint32_t pin = 0; pin < kIoapicPins; ++pin) {
    uint64_t& entry = table_[pin];
    if (!(entry & kRemoteIrr) || (entry & 0xff) != vector) continue;
    entry &= ~kRemoteIrr;
    TryDeliverLocked(pin);  // still asserted: again
  }
}

}  // namespace xenkvm::devices
