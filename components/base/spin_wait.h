// Busy-waiting for something that usually comes within microseconds, sooner than a sleeping
// thread wakes (a ring's next request, a completion, a vCPU's turn or interrupt): the callers
// spin for a bounded window, then sleep.
#ifndef XENKVM_COMPONENTS_BASE_SPIN_WAIT_H_
#define XENKVM_COMPONENTS_BASE_SPIN_WAIT_H_

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

}  // namespace xenkvm::base

#endif  // XENKVM_COMPONENTS_BASE_SPIN_WAIT_H_
