// Status helpers: turning a failed system call into an absl::Status that names the call, and the
// early-return macros used across xenkvm.
#ifndef XENKVM_COMPONENTS_BASE_STATUS_H_
#define XENKVM_COMPONENTS_BASE_STATUS_H_

#include <cerrno>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace xenkvm::base {

// The absl::StatusCode that best describes `err` (ENOENT -> kNotFound, EINVAL -> kInvalidArgument...).
absl::StatusCode ErrnoToStatusCode(int err);

// A status for a failed call: "<call>: <strerror> (errno N)". `err` 0 gives an Internal error saying
// that the call failed without an errno, so a caller bug never turns into an OK status.
absl::Status ErrnoStatus(absl::string_view call, int err);

// As above with the current errno; call it right after the failing call.
inline absl::Status ErrnoStatus(absl::string_view call) { return ErrnoStatus(call, errno); }

// Prefixes a status's message with what the caller was doing, keeping the code.
absl::Status Annotate(const absl::Status& status, absl::string_view context);

}  // namespace xenkvm::base

#define XENKVM_STATUS_CONCAT_INNER_(a, b) a##b
#define XENKVM_STATUS_CONCAT_(a, b) XENKVM_STATUS_CONCAT_INNER_(a, b)

// Returns from the enclosing function if `expr` (an absl::Status) is not OK.
#define XENKVM_RETURN_IF_ERROR(expr)                 \
  do {                                               \
    if (absl::Status xenkvm_status_ = (expr); !xenkvm_status_.ok()) { \
      return xenkvm_status_;                         \
    }                                                \
  } while (0)

// `lhs = value of expr` where expr is an absl::StatusOr; returns its status if it is an error.
#define XENKVM_ASSIGN_OR_RETURN(lhs, expr) \
  XENKVM_ASSIGN_OR_RETURN_IMPL_(XENKVM_STATUS_CONCAT_(xenkvm_statusor_, __LINE__), lhs, expr)

#define XENKVM_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr) \
  auto statusor = (expr);                                  \
  if (!statusor.ok()) return std::move(statusor).status(); \
  lhs = std::move(statusor).value()

#endif  // XENKVM_COMPONENTS_BASE_STATUS_H_
