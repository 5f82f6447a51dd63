// The emu backend's local APIC, as pure state (no Unicorn, no threads, time passed in): the xAPIC
// register page a guest reads and writes at 0xfee00000, the IRR/ISR/TMR bookkeeping that decides
// which interrupt the CPU takes next and what an EOI ends, the timer (one-shot and periodic; no
// TSC-deadline mode, which needs an MSR Unicorn cannot hook), ESR, and the ICR, whose writes come
// back as IPI requests for the VM to route. The owner (EmuVcpu) serializes every call.
//
// Models the Intel SDM's xAPIC (Vol. 3, ch. 11) the way KVM presents it: version 0x14, six LVT
// entries, a 1 GHz timer clock before the divider. Not modelled: x2APIC (not offered: MSRs cannot
// be hooked), relocating the page through IA32_APIC_BASE, TPR through CR8, directed EOI, arbitration
// of lowest-priority delivery (the first destination takes it).
#ifndef XENKVM_COMPONENTS_ACCEL_EMU_LOCAL_APIC_H_
#define XENKVM_COMPONENTS_ACCEL_EMU_LOCAL_APIC_H_

#include <array>
#include <bit>
#include <cstdint>
#include <optional>

#include "absl/time/time.h"

namespace xenkvm::accel::emu {

inline constexpr uint64_t kLocalApicBase = 0xfee00000;
inline constexpr uint64_t kLocalApicSize = 0x1000;
// Timer clock ticks per nanosecond before the divide configuration (KVM's choice: 1 GHz).
inline constexpr uint64_t kApicTimerHz = 1'000'000'000;

// One bit per interrupt vector (the IRR, ISR and TMR), kept in 64-bit words so the highest set
// bit is found with a word scan: a halted vCPU's poll asks for it on every look, holding the lock
// an interrupt's sender needs (a bit-by-bit scan of std::bitset took ~0.5 us there).
class VectorBits {
 public:
  void Set(uint8_t vector) { words_[vector / 64] |= Bit(vector); }
  void Clear(uint8_t vector) { words_[vector / 64] &= ~Bit(vector); }
  void Assign(uint8_t vector, bool value) { value ? Set(vector) : Clear(vector); }
  bool Test(uint8_t vector) const { return (words_[vector / 64] & Bit(vector)) != 0; }
  void ClearAll() { words_ = {}; }
  bool Any() const { return (words_[0] | words_[1] | words_[2] | words_[3]) != 0; }
  // Vectors 32*index .. 32*index+31, as the APIC's register at that index shows them.
  uint32_t Word32(uint32_t index) const { return static_cast<uint32_t>(words_[index / 2] >> (32 * (index % 2))); }
  std::optional<uint8_t> Highest() const {
    for (int word = 3; word >= 0; --word) {
      if (words_[word] != 0) return static_cast<uint8_t>(64 * word + 63 - std::countl_zero(words_[word]));
    }
    return std::nullopt;
  }

 private:
  static uint64_t Bit(uint8_t vector) { return uint64_t{1} << (vector % 64); }
  std::array<uint64_t, 4> words_{};
};

// ICR delivery modes (bits 10:8).
enum class DeliveryMode : uint8_t {
  kFixed = 0,
  kLowestPriority = 1,
  kSmi = 2,
  kNmi = 4,
  kInit = 5,
  kStartup = 6,
  kExtInt = 7,
};

// An ICR write: what the VM delivers to which local APICs.
struct IpiRequest {
  enum class Shorthand : uint8_t { kNone = 0, kSelf = 1, kAllIncludingSelf = 2, kAllExcludingSelf = 3 };
  DeliveryMode mode = DeliveryMode::kFixed;
  uint8_t vector = 0;
  bool logical = false;      // destination mode
  uint8_t destination = 0;   // ICR bits 63:56
  Shorthand shorthand = Shorthand::kNone;
  bool level_triggered = false;
  bool assert = true;        // level: an INIT with assert clear is "INIT level de-assert", a no-op
};

// An EOI's effect outside the APIC: the vector it ended and whether it was level-triggered (then
// the IOAPIC's remote IRR for that vector must drop).
struct EndedInterrupt {
  uint8_t vector = 0;
  bool level_triggered = false;
};

class LocalApic {
 public:
  explicit LocalApic(uint8_t id);

  // The state after RESET or INIT: everything but the ID (and the page's location).
  void Reset();

  uint8_t id() const { return static_cast<uint8_t>(id_ >> 24); }
  // SVR bit 8: a software-disabled APIC accepts no fixed interrupts (as KVM's).
  bool software_enabled() const { return (svr_ & 0x100) != 0; }

  // One aligned access of 1..8 bytes at `offset` in the page. Registers are 32 bits wide at 16-byte
  // strides; other bytes read 0 and take no writes.
  uint64_t Read(uint64_t offset, unsigned size, absl::Time now);
  struct WriteEffects {
    std::optional<EndedInterrupt> ended;  // the EOI register was written with an interrupt in service
    std::optional<IpiRequest> ipi;        // the ICR's low word was written
    bool timer_changed = false;           // the timer's deadline may have moved
  };
  WriteEffects Write(uint64_t offset, unsigned size, uint64_t value, absl::Time now);

  // A fixed or lowest-priority interrupt arrives: into the IRR (TMR set for level). False when the
  // APIC is software-disabled (the interrupt is lost, as on KVM). Vectors below 16 are illegal: ESR
  // records it and nothing is taken.
  bool Accept(uint8_t vector, bool level_triggered);
  // The vector the CPU would take now (highest IRR whose priority class beats the PPR), if any.
  std::optional<uint8_t> Deliverable() const;
  // The CPU takes `vector` (as Deliverable() named it): IRR -> ISR.
  void Acknowledge(uint8_t vector);

  // Whether this APIC is a destination of `request` sent by APIC `sender` (shorthands included).
  bool IsDestination(const IpiRequest& request, uint8_t sender) const;

  // When the timer next fires, if it is counting.
  std::optional<absl::Time> TimerDeadline() const { return timer_deadline_; }
  // Fires the timer if its deadline has passed (the LVT's vector into the IRR unless masked); a
  // periodic timer rearms from its previous deadline, so it does not drift.
  void ExpireTimer(absl::Time now);

 private:
  uint32_t RegisterValue(uint32_t index, absl::Time now) const;
  WriteEffects WriteRegister(uint32_t index, uint32_t value, absl::Time now);
  uint32_t ProcessorPriority() const;
  std::optional<uint8_t> HighestInService() const;
  void StartTimer(absl::Time now);
  uint64_t Divisor() const;
  absl::Duration TimerPeriod() const;
  void RaiseError(uint32_t bits);
  uint32_t& Lvt(uint32_t index) { return lvt_[index - kLvtFirst]; }
  uint32_t Lvt(uint32_t index) const { return lvt_[index - kLvtFirst]; }

  static constexpr uint32_t kLvtFirst = 0x32;  // register index (offset / 16) of LVT timer
  static constexpr uint32_t kLvtCount = 6;     // timer, thermal, performance, LINT0, LINT1, error

  uint32_t id_;
  uint32_t tpr_ = 0;
  uint32_t ldr_ = 0;
  uint32_t dfr_ = 0xffffffff;
  uint32_t svr_ = 0xff;
  uint32_t esr_ = 0;          // what the guest reads
  uint32_t esr_pending_ = 0;  // errors since the last ESR write
  uint32_t icr_low_ = 0, icr_high_ = 0;
  uint32_t lvt_[kLvtCount];
  uint32_t timer_initial_ = 0;
  uint32_t timer_divide_ = 0;  // the register's bits 0, 1 and 3
  std::optional<absl::Time> timer_start_;     // when the current count last equalled the initial
  std::optional<absl::Time> timer_deadline_;  // the next expiry while counting
  VectorBits irr_, isr_, tmr_;
};

}  // namespace xenkvm::accel::emu

#endif  // XENKVM_COMPONENTS_ACCEL_EMU_LOCAL_APIC_H_
