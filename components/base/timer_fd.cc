#include "components/base/timer_fd.h"

#include <sys/timerfd.h>
#include <unistd.h>

#include "components/base/status.h"

namespace xenkvm::base {

absl::StatusOr<TimerFd> TimerFd::Create(clockid_t clock) {
  int fd = ::timerfd_create(clock, TFD_NONBLOCK | TFD_CLOEXEC);
  if (fd < 0) return ErrnoStatus("timerfd_create");
  return TimerFd(Fd(fd));
}

absl::Status TimerFd::Arm(absl::Duration delay, absl::Duration interval) {
  if (delay <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("TimerFd::Arm: delay must be positive (use Disarm to stop)");
  }
  if (interval < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("TimerFd::Arm: interval must not be negative");
  }
  itimerspec spec{};
  spec.it_value = absl::ToTimespec(delay);
  spec.it_interval = absl::ToTimespec(interval);
  if (::timerfd_settime(fd_.get(), 0, &spec, nullptr) < 0) return ErrnoStatus("timerfd_settime");
  return absl::OkStatus();
}

absl::Status TimerFd::ArmAbsolute(uint64_t deadline_ns) {
  itimerspec spec{};
  // A zero it_value would disarm; the earliest real deadline is 1 ns.
  uint64_t when = deadline_ns == 0 ? 1 : deadline_ns;
  spec.it_value.tv_sec = static_cast<time_t>(when / 1000000000ull);
  spec.it_value.tv_nsec = static_cast<long>(when % 1000000000ull);
  if (::timerfd_settime(fd_.get(), TFD_TIMER_ABSTIME, &spec, nullptr) < 0) {
    return ErrnoStatus("timerfd_settime(TFD_TIMER_ABSTIME)");
  }
  return absl::OkStatus();
}

absl::Status TimerFd::Disarm() {
  itimerspec spec{};
  if (::timerfd_settime(fd_.get(), 0, &spec, nullptr) < 0) return ErrnoStatus("timerfd_settime");
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> TimerFd::ReadExpirations() const {
  uint64_t count = 0;
  ssize_t n;
  do {
    n = ::read(fd_.get(), &count, sizeof(count));
  } while (n < 0 && errno == EINTR);
  if (n != sizeof(count)) return ErrnoStatus("read(timerfd)");
  return count;
}

}  // namespace xenkvm::base
