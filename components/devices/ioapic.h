// An IOAPIC (82093AA-style, version 0x20, 24 pins) at 0xfec00000: the redirection table a guest
// programs, and interrupt lines the VMM raises and lowers. Level-triggered pins hold a remote IRR
// until the local APIC's EOI, then fire again if still asserted. Delivery goes through a callback
// (the VMM injects the vector into the destination vCPU).
#ifndef XENKVM_COMPONENTS_DEVICES_IOAPIC_H_
#define XENKVM_COMPONENTS_DEVICES_IOAPIC_H_

#include <array>
#include <cstdint>
#include <functional>
#include <optional>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "components/devices/bus.h"

namespace xenkvm::devices {

inline constexpr uint64_t kIoapicBase = 0xfec00000;
inline constexpr uint64_t kIoapicSize = 0x1000;
inline constexpr uint32_t kIoapicPins = 24;

class Ioapic final : public Device {
 public:
  // `deliver(destination APIC ID, vector, level-triggered)`: true when the destination took it (a
  // refused level interrupt holds no remote IRR). Physical destination mode; a logical destination
  // goes to the lowest APIC ID its mask names.
  using Deliver = std::function<bool(uint8_t destination, uint8_t vector, bool level)>;
  // `eoi_tracking`: the VMM reports EOIs (EndOfInterrupt). Without it (the local APIC is in the
  // kernel and says nothing), level-triggered pins hold no remote IRR: each assertion delivers.
  Ioapic(Deliver deliver, bool eoi_tracking);

  void Read(uint64_t offset, std::span<uint8_t> data) override;
  void Write(uint64_t offset, std::span<const uint8_t> data) override;

  // Drives input `pin`. Pins beyond the table are ignored.
  void SetLevel(uint32_t pin, bool asserted);
  // The local APIC's EOI for level-triggered `vector` (or the guest's write to the EOI register).
  void EndOfInterrupt(uint8_t vector);

  uint64_t redirection(uint32_t pin) const;

 private:
  void TryDeliverLocked(uint32_t pin) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  uint32_t ReadRegisterLocked(uint32_t index) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void WriteRegisterLocked(uint32_t index, uint32_t value) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  const Deliver deliver_;
  const bool eoi_tracking_;
  mutable absl::Mutex mutex_;
  uint32_t select_ ABSL_GUARDED_BY(mutex_) = 0;
  uint32_t id_ ABSL_GUARDED_BY(mutex_) = 0;
  std::array<uint64_t, kIoapicPins> table_ ABSL_GUARDED_BY(mutex_);
  std::array<bool, kIoapicPins> level_ ABSL_GUARDED_BY(mutex_){};
};

}  // namespace xenkvm::devices

#endif  // XENKVM_COMPONENTS_DEVICES_IOAPIC_H_
