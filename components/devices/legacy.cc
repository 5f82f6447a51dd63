#include "components/devices/legacy.h"

#include <algorithm>

namespace xenkvm::devices {
namespace {

// 16550A register offsets and bits.
constexpr uint64_t kData = 0, kInterruptEnable = 1, kInterruptId = 2, kLineControl = 3, kModemControl = 4,
                   kLineStatus = 5, kModemStatus = 6, kScratch = 7;
constexpr uint8_t kLcrDlab = 0x80;
constexpr uint8_t kIerReceived = 0x01, kIerTransmitEmpty = 0x02;
constexpr uint8_t kIirNone = 0x01, kIirTransmitEmpty = 0x02, kIirReceived = 0x04, kIirFifos = 0xc0;
constexpr uint8_t kLsrDataReady = 0x01, kLsrTransmitEmpty = 0x20, kLsrIdle = 0x40;
constexpr uint8_t kMcrOut2 = 0x08, kMcrLoopback = 0x10;
constexpr uint8_t kMsrCts = 0x10, kMsrDsr = 0x20, kMsrDcd = 0x80;

}  // namespace

uint8_t Serial::InterruptIdentification() const {
  uint8_t fifo = (fcr_ & 1) ? kIirFifos : 0;
  if ((ier_ & kIerReceived) && !input_.empty()) return kIirReceived | fifo;
  if ((ier_ & kIerTransmitEmpty) && thr_empty_interrupt_) return kIirTransmitEmpty | fifo;
  return kIirNone | fifo;
}

std::optional<bool> Serial::UpdateLine() {
  bool level = (InterruptIdentification() & kIirNone) == 0;
  if (level == line_) return std::nullopt;
  line_ = level;
  return level;
}

void Serial::Receive(uint8_t byte) {
  if (input_.size() >= kInputLimit) {
    ++dropped_;
    return;
  }
  input_.push_back(byte);
}

void Serial::Read(uint64_t offset, std::span<uint8_t> data) {
  std::fill(data.begin(), data.end(), 0);
  if (data.empty()) return;
  std::optional<bool> changed;
  {
    absl::MutexLock lock(&mutex_);
    uint8_t value = 0;
    switch (offset) {
      case kData:
        if (lcr_ & kLcrDlab) {
          value = divisor_low_;
        } else if (!input_.empty()) {
          value = input_.front();
          input_.pop_front();
        }
        break;
      case kInterruptEnable:
        value = (lcr_ & kLcrDlab) ? divisor_high_ : ier_;
        break;
      case kInterruptId:
        value = InterruptIdentification();
        // Reading the IIR that reports "transmitter empty" acknowledges it.
        if ((value & 0x0f) == kIirTransmitEmpty) thr_empty_interrupt_ = false;
        break;
      case kLineControl:
        value = lcr_;
        break;
      case kModemControl:
        value = mcr_;
        break;
      case kLineStatus:
        value = kLsrTransmitEmpty | kLsrIdle | (input_.empty() ? 0 : kLsrDataReady);
        break;
      case kModemStatus:
        if (mcr_ & kMcrLoopback) {
          // Loopback: DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD.
          value = static_cast<uint8_t>(((mcr_ & 0x01) << 5) | ((mcr_ & 0x02) << 3) | ((mcr_ & 0x04) << 4) |
                                       ((mcr_ & kMcrOut2) << 4));
        } else {
          value = kMsrDcd | kMsrDsr | kMsrCts;
        }
        break;
      case kScratch:
        value = scr_;
        break;
    }
    data[0] = value;
    changed = UpdateLine();
  }
  if (changed && interrupt_) interrupt_(*changed);
}

void Serial::Write(uint64_t offset, std::span<const uint8_t> data) {
  if (data.empty()) return;
  const uint8_t value = data[0];
  std::optional<bool> changed;
  std::optional<uint8_t> transmitted;
  {
    absl::MutexLock lock(&mutex_);
    switch (offset) {
      case kData:
        if (lcr_ & kLcrDlab) {
          divisor_low_ = value;
        } else if (mcr_ & kMcrLoopback) {
          Receive(value);
        } else {
          transmitted = value;
          thr_empty_interrupt_ = true;  // sent at once: the holding register is empty again
        }
        break;
      case kInterruptEnable:
        if (lcr_ & kLcrDlab) {
          divisor_high_ = value;
        } else {
          // Enabling the "transmitter empty" interrupt raises it at once (the THR is empty).
          if ((value & kIerTransmitEmpty) && !(ier_ & kIerTransmitEmpty)) thr_empty_interrupt_ = true;
          ier_ = value & 0x0f;
        }
        break;
      case kInterruptId:
        fcr_ = value;
        if (value & 0x02) input_.clear();  // reset the receive FIFO
        break;
      case kLineControl:
        lcr_ = value;
        break;
      case kModemControl:
        mcr_ = value & 0x1f;
        break;
      case kScratch:
        scr_ = value;
        break;
      default:  // LSR and MSR are read-only
        break;
    }
    changed = UpdateLine();
  }
  if (transmitted) output_(*transmitted);
  if (changed && interrupt_) interrupt_(*changed);
}

void Serial::Enqueue(std::span<const uint8_t> bytes) {
  std::optional<bool> changed;
  {
    absl::MutexLock lock(&mutex_);
    for (uint8_t byte : bytes) Receive(byte);
    changed = UpdateLine();
  }
  if (changed && interrupt_) interrupt_(*changed);
}

uint64_t Serial::dropped_input() const {
  absl::MutexLock lock(&mutex_);
  return dropped_;
}

void DebugPort::Read(uint64_t, std::span<uint8_t> data) {
  std::fill(data.begin(), data.end(), 0);
  if (!data.empty()) data[0] = kDebugPort;
}

void DebugPort::Write(uint64_t, std::span<const uint8_t> data) {
  if (!data.empty()) output_(data[0]);
}

void I8042::Read(uint64_t, std::span<uint8_t> data) { std::fill(data.begin(), data.end(), 0); }

void I8042::Write(uint64_t offset, std::span<const uint8_t> data) {
  constexpr uint8_t kPulseResetLine = 0xfe;
  if (offset == kI8042CommandPort - kI8042DataPort && !data.empty() && data[0] == kPulseResetLine) reset_();
}

void ExitPort::Read(uint64_t, std::span<uint8_t> data) { std::fill(data.begin(), data.end(), 0); }

void ExitPort::Write(uint64_t, std::span<const uint8_t> data) {
  power_off_(static_cast<uint32_t>(LoadLittleEndian(data)));
}

void AcpiSleepAndReset::Read(uint64_t, std::span<uint8_t> data) { std::fill(data.begin(), data.end(), 0); }

void AcpiSleepAndReset::Write(uint64_t offset, std::span<const uint8_t> data) {
  if (data.empty()) return;
  const uint8_t value = data[0];
  if (offset == 0 && (value & kSleepEnable) && ((value >> 2) & 7) == kSleepTypeS5) {
    power_off_();
  } else if (offset == 2 && value == kResetValue) {
    reset_();
  }
}

}  // namespace xenkvm::devices
