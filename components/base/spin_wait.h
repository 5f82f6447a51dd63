// Busy-waiting for something that usually comes within microseconds, sooner than a sleeping
// thread wakes (a ring's next request, a completion, a vCPU's turn or interrupt): the callers
// spin for a bounded window, then sleep; PollWindow adapts the window to how long the waits are.
#ifndef XENKVM_COMPONENTS_BASE_SPIN_WAIT_H_
#define XENKVM_COMPONENTS_BASE_SPIN_WAIT_H_

#include <algorithm>
#include <chrono>
#include <cstdint>

namespace xenkvm::base {

// Looks at `ready()` until it is true or `window` has passed (the clock read every 64 looks,
// PAUSE between them); true if it was.
template <typename Ready>
bool SpinFor(std::chrono::nanoseconds window, const Ready& ready) {
  const auto deadline = std::chrono::steady_clock::now() + window;
  for (uint32_t looks = 1; !ready(); ++looks) {
    __builtin_ia32_pause();
    if (looks % 64 == 0 && std::chrono::steady_clock::now() >= deadline) return false;
  }
  return true;
}

// How long a waiting thread polls before it sleeps, adapted by KVM's halt-polling rule with its
// defaults (Documentation/virt/kvm/halt-polling.rst): a wait that outlasted the window but ended
// within kMax doubles it (from kStart: a longer poll would have caught it), one beyond kMax
// halves it (below kStart: no polling), one the poll caught leaves it. A thread whose wake-ups
// come within microseconds polls for them; an idle one does not. One rule for every poller, so
// two that wait on each other (a ring's thread and its frontend) grow and shrink together.
class PollWindow {
 public:
  static constexpr std::chrono::nanoseconds kStart = std::chrono::microseconds(10);
  static constexpr std::chrono::nanoseconds kMax = std::chrono::microseconds(200);

  std::chrono::nanoseconds window() const { return window_; }

  // After a wait that lasted `waited`, polling included.
  void Update(std::chrono::nanoseconds waited) {
    if (waited <= window_) return;
    if (waited > kMax) {
      window_ /= 2;
      if (window_ < kStart) window_ = std::chrono::nanoseconds::zero();
    } else if (window_ < kMax) {
      window_ = std::clamp(2 * window_, kStart, kMax);
    }
  }

 private:
  std::chrono::nanoseconds window_{};
};

}  // namespace xenkvm::base

#endif  // XENKVM_COMPONENTS_BASE_SPIN_WAIT_H_
