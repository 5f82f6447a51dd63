// Logging: spdlog, to stderr (stdout belongs to the guest console), with one level for the process.
// Components log with spdlog::info(...) and friends.
#ifndef XENKVM_COMPONENTS_BASE_LOG_H_
#define XENKVM_COMPONENTS_BASE_LOG_H_

#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "spdlog/spdlog.h"

namespace xenkvm::base {

// The environment variable read when no level is given on the command line.
inline constexpr char kLogLevelEnv[] = "XENKVM_LOG";

// "trace", "debug", "info", "warn", "error", "critical" or "off".
absl::StatusOr<spdlog::level::level_enum> ParseLogLevel(absl::string_view name);

// Sends the default logger to stderr at `level`; an empty `level` means $XENKVM_LOG, else "info".
// An unknown level is an error that lists the valid ones; logging is then left unchanged.
absl::Status InitLogging(absl::string_view level);

}  // namespace xenkvm::base

#endif  // XENKVM_COMPONENTS_BASE_LOG_H_
