// The PC's legacy devices a microVM keeps: a 16550A UART, the 0xe9 debug port, the i8042's reset
// line, and xenkvm's exit port for test guests. Devices do no I/O of their own: each reports
// through a callback the VMM wires (to the console log, to the VM's lifecycle).
#ifndef XENKVM_COMPONENTS_DEVICES_LEGACY_H_
#define XENKVM_COMPONENTS_DEVICES_LEGACY_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <optional>
#include <span>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "components/devices/bus.h"

namespace xenkvm::devices {

inline constexpr uint16_t kCom1Base = 0x3f8;
inline constexpr uint16_t kCom1Size = 8;
inline constexpr uint16_t kDebugPort = 0xe9;
inline constexpr uint16_t kI8042DataPort = 0x60;
inline constexpr uint16_t kI8042CommandPort = 0x64;
inline constexpr uint16_t kExitPort = 0xf4;

using ByteSink = std::function<void(uint8_t)>;

// A 16550A UART: transmitted bytes go to `output` at once (the transmitter is always empty),
// received bytes are queued by Enqueue(); `interrupt` follows the IRQ line (level).
class Serial final : public Device {
 public:
  explicit Serial(ByteSink output, std::function<void(bool)> interrupt = nullptr)
      : output_(std::move(output)), interrupt_(std::move(interrupt)) {}
  void Read(uint64_t offset, std::span<uint8_t> data) override;
  void Write(uint64_t offset, std::span<const uint8_t> data) override;
  // Console input for the guest. At most kInputLimit bytes wait; more are dropped (and counted).
  void Enqueue(std::span<const uint8_t> bytes);
  uint64_t dropped_input() const;

  static constexpr size_t kInputLimit = 4096;

 private:
  uint8_t InterruptIdentification() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Recomputes the IRQ line; returns the new level if it changed.
  std::optional<bool> UpdateLine() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void Receive(uint8_t byte) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  const ByteSink output_;
  const std::function<void(bool)> interrupt_;
  mutable absl::Mutex mutex_;
  std::deque<uint8_t> input_ ABSL_GUARDED_BY(mutex_);
  uint64_t dropped_ ABSL_GUARDED_BY(mutex_) = 0;
  uint8_t ier_ ABSL_GUARDED_BY(mutex_) = 0;
  uint8_t lcr_ ABSL_GUARDED_BY(mutex_) = 0;
  uint8_t mcr_ ABSL_GUARDED_BY(mutex_) = 0;
  uint8_t fcr_ ABSL_GUARDED_BY(mutex_) = 0;
  uint8_t scr_ ABSL_GUARDED_BY(mutex_) = 0;
  uint8_t divisor_low_ ABSL_GUARDED_BY(mutex_) = 0x0c;  // 9600 baud
  uint8_t divisor_high_ ABSL_GUARDED_BY(mutex_) = 0;
  bool thr_empty_interrupt_ ABSL_GUARDED_BY(mutex_) = false;
  bool line_ ABSL_GUARDED_BY(mutex_) = false;
};

// Port 0xe9 (Bochs/QEMU debugcon): each byte written goes to `output`; reads return 0xe9, which is
// how guests detect it.
class DebugPort final : public Device {
 public:
  explicit DebugPort(ByteSink output) : output_(std::move(output)) {}
  void Read(uint64_t offset, std::span<uint8_t> data) override;
  void Write(uint64_t offset, std::span<const uint8_t> data) override;

 private:
  const ByteSink output_;
};

// The i8042 keyboard controller, as far as a microVM needs it: command 0xfe on port 0x64 pulses
// the CPU reset line (`reset`). No keyboard: status reads 0 (nothing to read), data reads 0.
// Register it at kI8042DataPort with size 5 (0x60..0x64); port 0x61 etc. read 0 too.
class I8042 final : public Device {
 public:
  explicit I8042(std::function<void()> reset) : reset_(std::move(reset)) {}
  void Read(uint64_t offset, std::span<uint8_t> data) override;
  void Write(uint64_t offset, std::span<const uint8_t> data) override;

 private:
  const std::function<void()> reset_;
};

// xenkvm's exit port for test guests (0xf4, where QEMU's isa-debug-exit usually sits): a write of
// value V powers the VM off with status V (QEMU would exit with (V << 1) | 1; xenkvm keeps V).
class ExitPort final : public Device {
 public:
  explicit ExitPort(std::function<void(uint32_t)> power_off) : power_off_(std::move(power_off)) {}
  void Read(uint64_t offset, std::span<uint8_t> data) override;
  void Write(uint64_t offset, std::span<const uint8_t> data) override;

 private:
  const std::function<void(uint32_t)> power_off_;
};

// Hardware-reduced ACPI's sleep and reset registers, three byte-wide ports the FADT points at
// (components/acpi): offset 0 the sleep control register, where SLP_EN (bit 5) with SLP_TYP 5
// (bits 2-4, the DSDT's \_S5) powers the VM off; offset 1 the sleep status register (reads 0);
// offset 2 the reset register, where the FADT's reset value (1) resets the VM. Other writes are
// ignored, as other sleep states are not offered.
class AcpiSleepAndReset final : public Device {
 public:
  static constexpr uint8_t kSleepEnable = 1 << 5;
  static constexpr uint8_t kSleepTypeS5 = 5;
  static constexpr uint8_t kResetValue = 1;
  AcpiSleepAndReset(std::function<void()> power_off, std::function<void()> reset)
      : power_off_(std::move(power_off)), reset_(std::move(reset)) {}
  void Read(uint64_t offset, std::span<uint8_t> data) override;
  void Write(uint64_t offset, std::span<const uint8_t> data) override;

 private:
  const std::function<void()> power_off_;
  const std::function<void()> reset_;
};

}  // namespace xenkvm::devices

#endif  // XENKVM_COMPONENTS_DEVICES_LEGACY_H_
