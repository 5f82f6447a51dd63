#include "components/base/log.h"

#include <cstdlib>
#include <string>

#include "absl/strings/str_cat.h"
#include "spdlog/sinks/stdout_color_sinks.h"

namespace xenkvm::base {

absl::StatusOr<spdlog::level::level_enum> ParseLogLevel(absl::string_view name) {
  static constexpr std::pair<absl::string_view, spdlog::level::level_enum> kLevels[] = {
      {"trace", spdlog::level::trace}, {"debug", spdlog::level::debug},
      {"info", spdlog::level::info},   {"warn", spdlog::level::warn},
      {"error", spdlog::level::err},   {"critical", spdlog::level::critical},
      {"off", spdlog::level::off},
  };
  for (const auto& [text, level] : kLevels) {
    if (name == text) return level;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown log level '", name, "': use trace, debug, info, warn, error, critical or off"));
}

absl::Status InitLogging(absl::string_view level) {
  std::string chosen(level);
  std::string source = "--log-level";
  if (chosen.empty()) {
    const char* env = std::getenv(kLogLevelEnv);
    chosen = env != nullptr && *env != '\0' ? env : "info";
    source = env != nullptr && *env != '\0' ? kLogLevelEnv : "default";
  }
  absl::StatusOr<spdlog::level::level_enum> parsed = ParseLogLevel(chosen);
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", parsed.status().message()));
  }
  std::shared_ptr<spdlog::logger> logger = spdlog::get("xenkvm");
  if (logger == nullptr) logger = spdlog::stderr_color_mt("xenkvm");  // once per process
  spdlog::set_default_logger(logger);
  spdlog::set_level(*parsed);
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
  return absl::OkStatus();
}

}  // namespace xenkvm::base
