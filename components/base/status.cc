#include "components/base/status.h"

#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"

namespace xenkvm::base {

absl::StatusCode ErrnoToStatusCode(int err) {
  switch (err) {
    case 0:
      return absl::StatusCode::kOk;
    case EINVAL:
    case E2BIG:
    case EBADF:
    case ERANGE:
    case EDOM:
    case EFAULT:
    case ENAMETOOLONG:
    case ENOEXEC:
      return absl::StatusCode::kInvalidArgument;
    case ENOENT:
    case ENODEV:
    case ENXIO:
    case ESRCH:
      return absl::StatusCode::kNotFound;
    case EEXIST:
      return absl::StatusCode::kAlreadyExists;
    case EPERM:
    case EACCES:
    case EROFS:
      return absl::StatusCode::kPermissionDenied;
    case ENOMEM:
    case ENOSPC:
    case EMFILE:
    case ENFILE:
    case EDQUOT:
      return absl::StatusCode::kResourceExhausted;
    case EAGAIN:
    case EINTR:
    case EBUSY:
    case ECONNREFUSED:
    case ECONNRESET:
    case EPIPE:
      return absl::StatusCode::kUnavailable;
    case ENOSYS:
    case ENOTTY:
    case EOPNOTSUPP:
      return absl::StatusCode::kUnimplemented;
    case ETIMEDOUT:
      return absl::StatusCode::kDeadlineExceeded;
    case ECANCELED:
      return absl::StatusCode::kCancelled;
    case EOVERFLOW:
      return absl::StatusCode::kOutOfRange;
    default:
      return absl::StatusCode::kInternal;
  }
}

absl::Status ErrnoStatus(absl::string_view call, int err) {
  if (err == 0) {
    return absl::InternalError(absl::StrCat(call, ": failed without setting errno"));
  }
  char buffer[256];
  // GNU strerror_r returns the message, which may or may not be `buffer`.
  const char* text = strerror_r(err, buffer, sizeof(buffer));
  return absl::Status(ErrnoToStatusCode(err), absl::StrCat(call, ": ", text, " (errno ", err, ")"));
}

absl::Status Annotate(const absl::Status& status, absl::string_view context) {
  if (status.ok()) return status;
  return absl::Status(status.code(), absl::StrCat(context, ": ", status.message()));
}

}  // namespace xenkvm::base
