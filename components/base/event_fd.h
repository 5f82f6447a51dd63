// EventFd: a counter the kernel can wait on (eventfd(2)); used to wake event loops and, later, as the
// KVM irqfd/ioeventfd endpoint.
#ifndef XENKVM_COMPONENTS_BASE_EVENT_FD_H_
#define XENKVM_COMPONENTS_BASE_EVENT_FD_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "components/base/fd.h"

namespace xenkvm::base {

class EventFd {
 public:
  // Non-blocking and close-on-exec. `semaphore` makes each Read() take one unit instead of all.
  static absl::StatusOr<EventFd> Create(uint64_t initial = 0, bool semaphore = false);

  // Adds `value` to the counter. Safe from any thread.
  absl::Status Write(uint64_t value = 1) const;

  // Takes the counter (or one unit, in semaphore mode). kUnavailable when it is zero.
  absl::StatusOr<uint64_t> Read() const;

  int fd() const { return fd_.get(); }

 private:
  explicit EventFd(Fd fd) : fd_(std::move(fd)) {}
  Fd fd_;
};

}  // namespace xenkvm::base

#endif  // XENKVM_COMPONENTS_BASE_EVENT_FD_H_
