// The emu vCPU's local APIC: the register page served on the emulation thread (no exit to the
// VMM but a level-triggered EOI), IPIs routed between the VM's vCPUs, INIT and start-up IPIs, the
// timer thread, and the choice of the interrupt the vCPU takes next.
#include "absl/strings/str_format.h"
#include "components/accel/emu/emu_vcpu.h"
#include "components/accel/emu/trampolines.h"
#include "components/accel/emu/x86_events.h"
#include "components/base/status.h"
#include "spdlog/spdlog.h"

namespace xenkvm::accel::emu {
namespace {

constexpr uint64_t kCr0Pe = 1 << 0;

}  // namespace

absl::Status EmuVcpu::InjectInterrupt(uint8_t vector) { return AcceptInterrupt(vector, false); }

absl::Status EmuVcpu::InjectLevelInterrupt(uint8_t vector) { return AcceptInterrupt(vector, true); }

absl::Status EmuVcpu::InjectXenCallback(uint8_t vector) {
  XENKVM_RETURN_IF_ERROR(CheckExternalVector(vector));
  {
    absl::MutexLock lock(&mutex_);
    xen_callbacks_.Set(vector);
  }
  RequestStop();
  return absl::OkStatus();
}

absl::Status EmuVcpu::AcceptInterrupt(uint8_t vector, bool level_triggered) {
  XENKVM_RETURN_IF_ERROR(CheckExternalVector(vector));
  {
    absl::MutexLock lock(&mutex_);
    if (!lapic_.Accept(vector, level_triggered)) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "emu vCPU %u: interrupt %#x not accepted: the guest has not enabled its local APIC", id_, vector));
    }
  }
  RequestStop();
  return absl::OkStatus();
}

uint64_t EmuVcpu::ApicRead(uint64_t offset, unsigned size) {
  absl::MutexLock lock(&mutex_);
  return lapic_.Read(offset, size, absl::Now());
}

void EmuVcpu::ApicWrite(uint64_t offset, unsigned size, uint64_t value) {
  LocalApic::WriteEffects effects;
  {
    absl::MutexLock lock(&mutex_);
    effects = lapic_.Write(offset, size, value, absl::Now());
    if (effects.timer_changed) ++timer_generation_;
    // An EOI or a lower TPR may let a waiting interrupt through: stop at the next block to take it.
    if (lapic_.Deliverable()) RequestStop();
  }
  if (effects.timer_changed && !timer_thread_.joinable()) timer_thread_ = std::thread([this] { TimerLoop(); });
  if (effects.ipi) SendIpi(*effects.ipi);
  if (effects.ended && effects.ended->level_triggered) Deliver(EoiExit{effects.ended->vector}, false);
}

void EmuVcpu::SendIpi(const IpiRequest& ipi) {
  uint8_t sender;
  {
    absl::MutexLock lock(&mutex_);
    sender = lapic_.id();
  }
  absl::ReaderMutexLock lock(&vm_.vcpus_mutex);
  for (const auto& [id, target] : vm_.vcpus) {
    // Lowest priority: the first destination takes it (no arbitration).
    if (target->ReceiveIpi(ipi, sender) && ipi.mode == DeliveryMode::kLowestPriority) return;
  }
}

bool EmuVcpu::ReceiveIpi(const IpiRequest& ipi, uint8_t sender) {
  absl::MutexLock lock(&mutex_);
  if (!lapic_.IsDestination(ipi, sender)) return false;
  switch (ipi.mode) {
    case DeliveryMode::kFixed:
    case DeliveryMode::kLowestPriority:
      if (!lapic_.Accept(ipi.vector, ipi.level_triggered)) return false;
      break;
    case DeliveryMode::kNmi:
      nmi_pending_ = true;
      break;
    case DeliveryMode::kInit:
      if (ipi.level_triggered && !ipi.assert) return true;  // INIT level de-assert: nothing
      // The APIC and what the vCPU accepts change now (a start-up IPI may follow at once); the
      // engine stops and resets on its own thread (CarryOutInitLocked).
      init_pending_ = true;
      awaiting_sipi_ = true;
      start_request_.reset();
      lapic_.Reset();
      xen_callbacks_.ClearAll();
      nmi_pending_ = false;
      ++timer_generation_;  // the timer stopped
      break;
    case DeliveryMode::kStartup:
      // Only a processor waiting for it after RESET or INIT takes a start-up IPI; later ones are
      // ignored (Linux sends two).
      if (!awaiting_sipi_ || start_request_) return true;
      awaiting_sipi_ = false;
      start_request_ = StartRequest{.sipi_vector = ipi.vector};
      return true;
    case DeliveryMode::kSmi:
    case DeliveryMode::kExtInt:
      spdlog::warn("emu vCPU {}: an IPI with delivery mode {} (SMI or ExtINT) is ignored", id_,
                   static_cast<int>(ipi.mode));
      return true;
  }
  RequestStop();
  return true;
}

void EmuVcpu::TimerLoop() {
  absl::MutexLock lock(&mutex_);
  while (!exiting_) {
    const uint64_t generation = timer_generation_;
    auto reprogrammed = [this, generation]() ABSL_NO_THREAD_SAFETY_ANALYSIS {
      return exiting_ || timer_generation_ != generation;
    };
    mutex_.AwaitWithDeadline(absl::Condition(&reprogrammed), lapic_.TimerDeadline().value_or(absl::InfiniteFuture()));
    if (exiting_) return;
    lapic_.ExpireTimer(absl::Now());
    if (lapic_.Deliverable()) RequestStop();
  }
}

std::optional<PendingEvent> EmuVcpu::TakeInterrupt(bool interrupts_enabled, bool& waiting) {
  absl::MutexLock lock(&mutex_);
  if (std::exchange(nmi_pending_, false)) return PendingEvent{.vector = kVectorNmi, .external = true};
  const std::optional<uint8_t> callback = xen_callbacks_.Highest();
  const std::optional<uint8_t> lapic = lapic_.Deliverable();
  waiting = callback.has_value() || lapic.has_value();
  if (!interrupts_enabled) return std::nullopt;
  // Xen checks its callback vector before the LAPIC (hvm_vcpu_has_pending_irq).
  if (callback) {
    xen_callbacks_.Clear(*callback);
    return PendingEvent{.vector = *callback, .external = true};
  }
  if (lapic) {
    lapic_.Acknowledge(*lapic);
    return PendingEvent{.vector = *lapic, .external = true};
  }
  return std::nullopt;
}

bool EmuVcpu::InterruptReadyLocked() const {
  return nmi_pending_ || xen_callbacks_.Any() || lapic_.Deliverable().has_value();
}

void EmuVcpu::CarryOutInitLocked() {
  init_pending_ = false;
  started_ = false;  // a start-up IPI that came after the INIT (start_request_) starts it again
}

std::optional<uint64_t> EmuVcpu::CodeSegmentBase() {
  if (LongMode()) return 0;  // 64-bit code has no base; compatibility mode runs flat (PVH, Linux)
  if (!(ReadRegister(UC_X86_REG_CR0) & kCr0Pe)) return std::nullopt;
  const uint16_t cs = static_cast<uint16_t>(ReadRegister(UC_X86_REG_CS));
  absl::StatusOr<uint64_t> descriptor = ReadDescriptor(cs);
  if (descriptor.ok()) return DecodeSegment(*descriptor).base;
  // Still the boot trampoline's GDT (PVH leaves GDTR undefined; it is gone with the window): its
  // selector 0x08 is flat 32-bit code.
  uc_x86_mmr gdtr{};
  uc_reg_read(uc_, UC_X86_REG_GDTR, &gdtr);
  if (gdtr.base - kWindowBase < kWindowSize && cs == 0x08) return 0;
  return std::nullopt;  // e.g. protection just enabled, CS still a real-mode segment
}

}  // namespace xenkvm::accel::emu
