#include "components/accel/emu/local_apic.h"

#include <algorithm>
#include <utility>

namespace xenkvm::accel::emu {
namespace {

// Register indexes (offset / 16).
constexpr uint32_t kId = 0x02;
constexpr uint32_t kVersion = 0x03;
constexpr uint32_t kTpr = 0x08;
constexpr uint32_t kApr = 0x09;
constexpr uint32_t kPpr = 0x0a;
constexpr uint32_t kEoi = 0x0b;
constexpr uint32_t kRrd = 0x0c;
constexpr uint32_t kLdr = 0x0d;
constexpr uint32_t kDfr = 0x0e;
constexpr uint32_t kSvr = 0x0f;
constexpr uint32_t kIsr = 0x10;  // eight registers each: ISR, TMR, IRR
constexpr uint32_t kTmr = 0x18;
constexpr uint32_t kIrr = 0x20;
constexpr uint32_t kEsr = 0x28;
constexpr uint32_t kIcrLow = 0x30;
constexpr uint32_t kIcrHigh = 0x31;
constexpr uint32_t kLvtTimer = 0x32;
constexpr uint32_t kLvtThermal = 0x33;
constexpr uint32_t kLvtPerformance = 0x34;
constexpr uint32_t kLvtLint0 = 0x35;
constexpr uint32_t kLvtLint1 = 0x36;
constexpr uint32_t kLvtError = 0x37;
constexpr uint32_t kTimerInitial = 0x38;
constexpr uint32_t kTimerCurrent = 0x39;
constexpr uint32_t kTimerDivide = 0x3e;

// Version 0x14 (an integrated xAPIC), highest LVT entry 5 (six entries).
constexpr uint32_t kVersionValue = 0x14 | (5u << 16);
constexpr uint32_t kLvtMasked = 1u << 16;
constexpr uint32_t kLvtPeriodic = 1u << 17;
constexpr uint32_t kEsrSendIllegalVector = 1u << 5;
constexpr uint32_t kEsrReceiveIllegalVector = 1u << 6;
constexpr uint32_t kEsrIllegalRegister = 1u << 7;
// The shortest periodic timer period (KVM's min_timer_period_us): a guest cannot make the
// emulator do nothing but take timer interrupts.
constexpr absl::Duration kMinPeriodicPeriod = absl::Microseconds(200);

// The bits each LVT entry keeps (delivery status and remote IRR read 0: sending is immediate).
uint32_t LvtWritableBits(uint32_t index) {
  switch (index) {
    case kLvtTimer:
      return 0xff | kLvtMasked | kLvtPeriodic;
    case kLvtLint0:
    case kLvtLint1:
      return 0xff | 0x700 | (1u << 13) | (1u << 15) | kLvtMasked;
    case kLvtError:
      return 0xff | kLvtMasked;
    default:  // thermal, performance
      return 0xff | 0x700 | kLvtMasked;
  }
}

}  // namespace

LocalApic::LocalApic(uint8_t id) : id_(uint32_t{id} << 24) { Reset(); }

void LocalApic::Reset() {
  tpr_ = 0;
  ldr_ = 0;
  dfr_ = 0xffffffff;
  svr_ = 0xff;
  esr_ = esr_pending_ = 0;
  icr_low_ = icr_high_ = 0;
  std::fill(std::begin(lvt_), std::end(lvt_), kLvtMasked);
  timer_initial_ = timer_divide_ = 0;
  timer_start_.reset();
  timer_deadline_.reset();
  irr_.ClearAll();
  isr_.ClearAll();
  tmr_.ClearAll();
}

uint64_t LocalApic::Read(uint64_t offset, unsigned size, absl::Time now) {
  const uint32_t within = offset & 0xf;
  if (within >= 4 || offset >= kLocalApicSize) return 0;
  const uint64_t value = RegisterValue(static_cast<uint32_t>(offset >> 4), now) >> (8 * within);
  return size >= 8 ? value : value & ((uint64_t{1} << (8 * size)) - 1);
}

LocalApic::WriteEffects LocalApic::Write(uint64_t offset, unsigned size, uint64_t value, absl::Time now) {
  if ((offset & 0xf) != 0 || offset >= kLocalApicSize) return {};
  const uint32_t index = static_cast<uint32_t>(offset >> 4);
  uint32_t value32 = static_cast<uint32_t>(value);
  if (size < 4) {  // a partial write keeps the register's other bytes
    const uint32_t mask = (1u << (8 * size)) - 1;
    value32 = (RegisterValue(index, now) & ~mask) | (value32 & mask);
  }
  return WriteRegister(index, value32, now);
}

uint32_t LocalApic::RegisterValue(uint32_t index, absl::Time now) const {
  switch (index) {
    case kId:
      return id_;
    case kVersion:
      return kVersionValue;
    case kTpr:
      return tpr_;
    case kApr:
    case kRrd:
      return 0;
    case kPpr:
      return ProcessorPriority();
    case kEoi:
      return 0;
    case kLdr:
      return ldr_;
    case kDfr:
      return dfr_;
    case kSvr:
      return svr_;
    case kEsr:
      return esr_;
    case kIcrLow:
      return icr_low_;  // delivery status (bit 12) idle: every IPI is sent at once
    case kIcrHigh:
      return icr_high_;
    case kTimerInitial:
      return timer_initial_;
    case kTimerCurrent: {
      if (!timer_start_ || timer_initial_ == 0) return 0;
      const uint64_t ns_per_tick = Divisor() * 1'000'000'000 / kApicTimerHz;
      const uint64_t ticks = absl::ToInt64Nanoseconds(now - *timer_start_) / std::max<uint64_t>(ns_per_tick, 1);
      if (Lvt(kLvtTimer) & kLvtPeriodic) return timer_initial_ - static_cast<uint32_t>(ticks % timer_initial_);
      return ticks >= timer_initial_ ? 0 : timer_initial_ - static_cast<uint32_t>(ticks);
    }
    case kTimerDivide:
      return timer_divide_;
    default:
      break;
  }
  if (index >= kIsr && index < kIsr + 8) return isr_.Word32(index - kIsr);
  if (index >= kTmr && index < kTmr + 8) return tmr_.Word32(index - kTmr);
  if (index >= kIrr && index < kIrr + 8) return irr_.Word32(index - kIrr);
  if (index >= kLvtFirst && index < kLvtFirst + kLvtCount) return lvt_[index - kLvtFirst];
  return 0;
}

LocalApic::WriteEffects LocalApic::WriteRegister(uint32_t index, uint32_t value, absl::Time now) {
  WriteEffects effects;
  switch (index) {
    case kId:
      id_ = value & 0xff000000;
      return effects;
    case kTpr:
      tpr_ = value & 0xff;
      return effects;
    case kEoi:
      if (std::optional<uint8_t> vector = HighestInService()) {
        isr_.Clear(*vector);
        effects.ended = EndedInterrupt{*vector, tmr_.Test(*vector)};
      }
      return effects;
    case kLdr:
      ldr_ = value & 0xff000000;
      return effects;
    case kDfr:
      dfr_ = value | 0x0fffffff;
      return effects;
    case kSvr:
      svr_ = value & 0x1ff;  // vector and APIC enable; no focus checking or EOI suppression
      if (!software_enabled()) {
        for (uint32_t& entry : lvt_) entry |= kLvtMasked;
      }
      return effects;
    case kEsr:
      esr_ = std::exchange(esr_pending_, 0);
      return effects;
    case kIcrHigh:
      icr_high_ = value & 0xff000000;
      return effects;
    case kIcrLow: {
      icr_low_ = value & 0x000ccfff;  // vector, mode, destination mode, level, trigger, shorthand
      IpiRequest ipi;
      ipi.vector = static_cast<uint8_t>(value & 0xff);
      ipi.mode = static_cast<DeliveryMode>((value >> 8) & 7);
      ipi.logical = (value & (1u << 11)) != 0;
      ipi.assert = (value & (1u << 14)) != 0;
      ipi.level_triggered = (value & (1u << 15)) != 0;
      ipi.shorthand = static_cast<IpiRequest::Shorthand>((value >> 18) & 3);
      ipi.destination = static_cast<uint8_t>(icr_high_ >> 24);
      if ((ipi.mode == DeliveryMode::kFixed || ipi.mode == DeliveryMode::kLowestPriority) && ipi.vector < 16) {
        RaiseError(kEsrSendIllegalVector);
        return effects;
      }
      effects.ipi = ipi;
      return effects;
    }
    case kTimerInitial:
      timer_initial_ = value;
      StartTimer(now);
      effects.timer_changed = true;
      return effects;
    case kTimerDivide:
      timer_divide_ = value & 0xb;
      if (timer_start_) StartTimer(now);
      effects.timer_changed = true;
      return effects;
    case kVersion:
    case kApr:
    case kPpr:
    case kRrd:
    case kTimerCurrent:
      return effects;  // read-only
    default:
      break;
  }
  if (index >= kLvtFirst && index < kLvtFirst + kLvtCount) {
    uint32_t entry = value & LvtWritableBits(index);
    if (!software_enabled()) entry |= kLvtMasked;
    const bool mode_changed = index == kLvtTimer && ((Lvt(index) ^ entry) & kLvtPeriodic) != 0;
    Lvt(index) = entry;
    if (mode_changed && timer_start_) {
      StartTimer(now);
      effects.timer_changed = true;
    }
    return effects;
  }
  if (!(index >= kIsr && index < kIrr + 8)) RaiseError(kEsrIllegalRegister);  // ISR/TMR/IRR: read-only
  return effects;
}

bool LocalApic::Accept(uint8_t vector, bool level_triggered) {
  if (vector < 16) {
    RaiseError(kEsrReceiveIllegalVector);
    return true;  // taken, and dropped: the error is the APIC's answer
  }
  if (!software_enabled()) return false;
  irr_.Set(vector);
  tmr_.Assign(vector, level_triggered);
  return true;
}

std::optional<uint8_t> LocalApic::Deliverable() const {
  std::optional<uint8_t> vector = irr_.Highest();
  if (!vector || (*vector & 0xf0) <= (ProcessorPriority() & 0xf0)) return std::nullopt;
  return vector;
}

void LocalApic::Acknowledge(uint8_t vector) {
  irr_.Clear(vector);
  isr_.Set(vector);
}

bool LocalApic::IsDestination(const IpiRequest& request, uint8_t sender) const {
  switch (request.shorthand) {
    case IpiRequest::Shorthand::kSelf:
      return id() == sender;
    case IpiRequest::Shorthand::kAllIncludingSelf:
      return true;
    case IpiRequest::Shorthand::kAllExcludingSelf:
      return id() != sender;
    case IpiRequest::Shorthand::kNone:
      break;
  }
  if (request.destination == 0xff) return true;  // broadcast in either destination mode
  if (!request.logical) return request.destination == id();
  const uint8_t logical_id = static_cast<uint8_t>(ldr_ >> 24);
  if ((dfr_ >> 28) == 0xf) return (logical_id & request.destination) != 0;  // flat
  // Cluster: the high nibble names the cluster, the low one a mask within it.
  return (logical_id >> 4) == (request.destination >> 4) && (logical_id & request.destination & 0xf) != 0;
}

void LocalApic::ExpireTimer(absl::Time now) {
  if (!timer_deadline_ || now < *timer_deadline_) return;
  const uint32_t lvt = Lvt(kLvtTimer);
  if (!(lvt & kLvtMasked)) Accept(static_cast<uint8_t>(lvt & 0xff), false);
  if (!(lvt & kLvtPeriodic)) {
    timer_deadline_.reset();
    return;
  }
  const absl::Duration period = std::max(TimerPeriod(), kMinPeriodicPeriod);
  const int64_t missed = (now - *timer_deadline_) / period;  // ticks a slow host let pass: one interrupt
  *timer_deadline_ += period * (missed + 1);
}

uint32_t LocalApic::ProcessorPriority() const {
  const uint32_t in_service = HighestInService().value_or(0);
  return (tpr_ & 0xf0) >= (in_service & 0xf0) ? tpr_ : (in_service & 0xf0);
}

std::optional<uint8_t> LocalApic::HighestInService() const { return isr_.Highest(); }

void LocalApic::StartTimer(absl::Time now) {
  if (timer_initial_ == 0) {
    timer_start_.reset();
    timer_deadline_.reset();
    return;
  }
  timer_start_ = now;
  absl::Duration period = TimerPeriod();
  if (Lvt(kLvtTimer) & kLvtPeriodic) period = std::max(period, kMinPeriodicPeriod);
  timer_deadline_ = now + period;
}

// The divide configuration: bits 0, 1 and 3 select 2, 4, 8, 16, 32, 64, 128, or 1 (0b111).
uint64_t LocalApic::Divisor() const {
  const uint32_t select = (timer_divide_ & 3) | ((timer_divide_ >> 1) & 4);
  return select == 7 ? 1 : uint64_t{2} << select;
}

absl::Duration LocalApic::TimerPeriod() const {
  return absl::Nanoseconds(static_cast<int64_t>(uint64_t{timer_initial_} * Divisor() * 1'000'000'000 / kApicTimerHz));
}

void LocalApic::RaiseError(uint32_t bits) {
  esr_pending_ |= bits;
  const uint32_t lvt = Lvt(kLvtError);
  const uint8_t vector = static_cast<uint8_t>(lvt & 0xff);
  if (!(lvt & kLvtMasked) && vector >= 16 && software_enabled()) {
    irr_.Set(vector);
    tmr_.Clear(vector);
  }
}

}  // namespace xenkvm::accel::emu
