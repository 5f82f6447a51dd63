// Stopping an emu vCPU's guest run from other threads (kicks, interrupts, IPIs, the LAPIC timer, a
// host thread that needs the guest still), and the block hook that only runs where it is needed.
//
// With Unicorn's mid-block exits gone (third_party/unicorn/block_exits.cc) uc_emu_stop from any
// thread ends the run at the next block's start with RIP right, so a stop needs no hook. Two
// things remain: uc_emu_start forgets a stop that lands before its first block (it clears the
// request on the way in), so a watchdog sends the stop again while the same run goes on; and an
// interrupt waiting for RFLAGS.IF must be taken as soon as the guest sets IF: the instructions
// that can (STI, POPF, IRET, SYSRET, SYSEXIT) stop the run right after them
// (BeforeInterruptFlagWrite, through instruction_intercept.h), the block hook looks at every block
// when the VM has more than one vCPU (it also ends time slices and spin-waits there), and the
// watchdog looks every kStopRetry as a fallback for anything else that sets IF. A one-vCPU guest's
// blocks thus run without any call out of the translated code, which is most of Unicorn's compute
// speed (components/accel/README.md).
#include "components/accel/emu/emu_vcpu.h"
#include "components/accel/emu/trampolines.h"

namespace xenkvm::accel::emu {

void EmuVmState::StopEngines() {
  absl::ReaderMutexLock lock(&vcpus_mutex);
  for (const auto& [id, vcpu] : vcpus) vcpu->RequestStop();
}

void EmuVcpu::RequestStop() {
  stop_wanted_.store(true);  // a run about to begin does not (BeginGuestRun)
  absl::MutexLock lock(&engine_mutex_);
  if (!guest_running_) return;
  uc_emu_stop(uc_);
  stopped_serial_ = run_serial_;
  StartWatchdogLocked();
}

bool EmuVcpu::BeginGuestRun(bool interrupt_waiting) {
  interrupt_window_wanted_.store(interrupt_waiting);
  {
    absl::MutexLock lock(&engine_mutex_);
    guest_running_ = true;
    ++run_serial_;
    poll_window_ = interrupt_waiting && !block_hook_everywhere_;
    if (poll_window_) StartWatchdogLocked();
  }
  // A stop asked for before guest_running_ was set found no run to stop: the loop looks first.
  if (!stop_wanted_.exchange(false)) return true;
  EndGuestRun();
  return false;
}

void EmuVcpu::EndGuestRun() {
  {
    absl::MutexLock lock(&engine_mutex_);
    guest_running_ = false;
    poll_window_ = false;
  }
  // The run loop looks at everything a stop is asked for (kicks, interrupts) before the next run.
  stop_wanted_.store(false);
}

void EmuVcpu::BeforeHalt() { halt_executed_ = true; }

void EmuVcpu::BeforePause() {
  // PAUSE is a spin-wait's hint (Linux's cpu_relax): with another vCPU waiting for the run token,
  // this one gives its turn up here, as QEMU's round-robin TCG does at PAUSE. A wait loop of many
  // blocks (stop_machine's) escapes the block hook's spin detection, and spun its whole slice.
  if (!vm_.run_token.contended()) return;
  stop_requested_ = true;
  uc_emu_stop(uc_);
}

// Started by the first stop or polled window; joined by the destructor.
void EmuVcpu::StartWatchdogLocked() {
  if (!watchdog_thread_.joinable()) watchdog_thread_ = std::thread([this] { StopWatchdogLoop(); });
}

void EmuVcpu::StopWatchdogLoop() {
  absl::MutexLock lock(&engine_mutex_);
  while (true) {
    auto wanted = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(engine_mutex_) {
      return watchdog_exit_ || (guest_running_ && (stopped_serial_ == run_serial_ || poll_window_));
    };
    engine_mutex_.Await(absl::Condition(&wanted));
    if (watchdog_exit_) return;
    const uint64_t serial = run_serial_;
    auto run_ended = [this, serial]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(engine_mutex_) {
      return watchdog_exit_ || !guest_running_ || run_serial_ != serial;
    };
    // A run that outlives its stop is most often in an exit (the VMM handling it, a blocked
    // hypercall), where the stop is kept and takes effect on return: the retries back off.
    for (absl::Duration wait = kStopRetry; !engine_mutex_.AwaitWithTimeout(absl::Condition(&run_ended), wait);
         wait = std::min(wait * 2, kStopRetryLongest)) {
      uc_emu_stop(uc_);  // the same run, still going: its stop was lost, or IF is to be looked at
      stopped_serial_ = serial;
    }
  }
}

void EmuVcpu::BeforeInterruptFlagWrite() {
  if (!interrupt_window_wanted_.load(std::memory_order_relaxed)) return;
  // The instruction ends its block: the stop lands before the next one, where the run loop
  // delivers the interrupt if IF is now set (past a HLT that follows an STI, as the CPU wakes
  // from it) and runs on otherwise.
  stop_requested_ = true;
  uc_emu_stop(uc_);
}

absl::Status EmuVcpu::InstallBlockHook() {
  const bool everywhere = vm_.vcpus_created.load() > 1;
  if (block_hook_ != 0 && everywhere == block_hook_everywhere_) return absl::OkStatus();
  if (block_hook_ != 0) {
    uc_hook_del(uc_, block_hook_);
    block_hook_ = 0;
    uc_ctl_flush_tb(uc_);  // code translated so far carries the old hook's calls (or none)
  }
  const uint64_t begin = everywhere ? 1 : kWindowBase;
  const uint64_t end = everywhere ? 0 : kWindowBase + kWindowSize - 1;
  if (uc_err err = uc_hook_add(uc_, &block_hook_, UC_HOOK_BLOCK, reinterpret_cast<void*>(&EmuVcpu::OnBlock), this,
                               begin, end);
      err != UC_ERR_OK) {
    block_hook_ = 0;
    return UcError(err, "uc_hook_add(BLOCK)");
  }
  absl::MutexLock lock(&engine_mutex_);
  block_hook_everywhere_ = everywhere;
  return absl::OkStatus();
}

}  // namespace xenkvm::accel::emu
