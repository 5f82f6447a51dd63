#include "components/base/fd.h"

#include <fcntl.h>
#include <unistd.h>

#include "components/base/status.h"

namespace xenkvm::base {

void Fd::Reset(int fd) {
  if (fd_ >= 0) {
    // Linux releases the descriptor even when close() reports EINTR, so it is never retried.
    ::close(fd_);
  }
  fd_ = fd;
}

absl::StatusOr<Fd> Fd::Duplicate() const {
  if (!valid()) return absl::FailedPreconditionError("Fd::Duplicate: no descriptor held");
  int fd = ::fcntl(fd_, F_DUPFD_CLOEXEC, 0);
  if (fd < 0) return ErrnoStatus("fcntl(F_DUPFD_CLOEXEC)");
  return Fd(fd);
}

}  // namespace xenkvm::base
