// TimerFd: a kernel timer delivered as a readable descriptor (timerfd_create(2)); the event loop's
// timers (Xen singleshot/periodic timers, deadlines) are built on it.
#ifndef XENKVM_COMPONENTS_BASE_TIMER_FD_H_
#define XENKVM_COMPONENTS_BASE_TIMER_FD_H_

#include <time.h>

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "components/base/fd.h"

namespace xenkvm::base {

class TimerFd {
 public:
  // Non-blocking and close-on-exec, on CLOCK_MONOTONIC unless told otherwise.
  static absl::StatusOr<TimerFd> Create(clockid_t clock = CLOCK_MONOTONIC);

  // Fires once after `delay` (which must be > 0), then every `interval` if it is > 0.
  absl::Status Arm(absl::Duration delay, absl::Duration interval = absl::ZeroDuration());

  // Fires once when the timer's clock reaches `deadline_ns` (nanoseconds); a deadline in the past
  // fires at once.
  absl::Status ArmAbsolute(uint64_t deadline_ns);

  absl::Status Disarm();

  // How many times the timer fired since the last read; kUnavailable when it has not fired.
  absl::StatusOr<uint64_t> ReadExpirations() const;

  int fd() const { return fd_.get(); }

 private:
  explicit TimerFd(Fd fd) : fd_(std::move(fd)) {}
  Fd fd_;
};

}  // namespace xenkvm::base

#endif  // XENKVM_COMPONENTS_BASE_TIMER_FD_H_
