#include "components/base/event_fd.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include "components/base/status.h"

namespace xenkvm::base {

absl::StatusOr<EventFd> EventFd::Create(uint64_t initial, bool semaphore) {
  if (initial > UINT32_MAX) {
    return absl::InvalidArgumentError("EventFd::Create: initial value must fit in 32 bits");
  }
  int flags = EFD_NONBLOCK | EFD_CLOEXEC | (semaphore ? EFD_SEMAPHORE : 0);
  int fd = ::eventfd(static_cast<unsigned>(initial), flags);
  if (fd < 0) return ErrnoStatus("eventfd");
  return EventFd(Fd(fd));
}

absl::Status EventFd::Write(uint64_t value) const {
  ssize_t n;
  do {
    n = ::write(fd_.get(), &value, sizeof(value));
  } while (n < 0 && errno == EINTR);
  if (n != sizeof(value)) return ErrnoStatus("write(eventfd)");
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> EventFd::Read() const {
  uint64_t value = 0;
  ssize_t n;
  do {
    n = ::read(fd_.get(), &value, sizeof(value));
  } while (n < 0 && errno == EINTR);
  if (n != sizeof(value)) return ErrnoStatus("read(eventfd)");
  return value;
}

}  // namespace xenkvm::base
