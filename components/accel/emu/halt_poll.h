// How long a halted emu vCPU polls for its wake-up before it sleeps: KVM's halt polling rule
// with its defaults (Documentation/virt/kvm/halt-polling.rst). Polling spares both sides a sleep
// and a wake-up when the interrupt comes within microseconds (a disk's response to a guest
// waiting on it: 11.5 k -> 38-88 k reads/s at depth 1 through a guest on emu here). A halt that
// ended within kMax doubles the window (from kStart), one that lasted longer halves it (below
// kStart: no polling), so an idle guest, whose halts last milliseconds, does not poll.
#ifndef XENKVM_COMPONENTS_ACCEL_EMU_HALT_POLL_H_
#define XENKVM_COMPONENTS_ACCEL_EMU_HALT_POLL_H_

#include <algorithm>

#include "absl/time/time.h"

namespace xenkvm::accel::emu {

class HaltPollWindow {
 public:
  static constexpr absl::Duration kStart = absl::Microseconds(10);
  static constexpr absl::Duration kMax = absl::Microseconds(200);

  absl::Duration window() const { return window_; }

  // After a halt that lasted `halted` (polling included).
  void Update(absl::Duration halted) {
    if (halted <= window_) return;  // the poll caught it: the window is right
    if (halted > kMax) {
      window_ /= 2;
      if (window_ < kStart) window_ = absl::ZeroDuration();
    } else if (window_ < kMax) {
      window_ = std::clamp(2 * window_, kStart, kMax);
    }
  }

 private:
  absl::Duration window_ = absl::ZeroDuration();
};

}  // namespace xenkvm::accel::emu

#endif  // XENKVM_COMPONENTS_ACCEL_EMU_HALT_POLL_H_
