// Xen system time: nanoseconds since the VM started (CLOCK_MONOTONIC), the clock behind pvclock,
// timers and poll deadlines.
#ifndef XENKVM_COMPONENTS_XEN_SYSTEM_CLOCK_H_
#define XENKVM_COMPONENTS_XEN_SYSTEM_CLOCK_H_

#include <time.h>

#include <cstdint>

namespace xenkvm::xen {

class SystemClock {
 public:
  SystemClock() : start_ns_(MonotonicNs()) {}
  uint64_t NowNs() const { return MonotonicNs() - start_ns_; }

 private:
  static uint64_t MonotonicNs() {
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
  }
  const uint64_t start_ns_;
};

}  // namespace xenkvm::xen

#endif  // XENKVM_COMPONENTS_XEN_SYSTEM_CLOCK_H_
