#include "api/lifecycle_policy.h"

namespace xenkvm::api {
namespace {

EndAction Parse(const std::string& value, EndAction unset) {
  if (value.empty()) return unset;
  return value == "restart" ? EndAction::kRestart : EndAction::kDestroy;
}

}  // namespace

EndPolicy PolicyFor(const v1::VmConfig& config, const RunEnd& end) {
  if (end.destroyed || end.signal || !end.exit_status) return {};
  switch (*end.exit_status) {
    case 0:
    case 3:
      return {Parse(config.on_poweroff(), EndAction::kDestroy), "on_poweroff"};
    case 4:
      return {Parse(config.on_reboot(), EndAction::kRestart), "on_reboot"};
    case 5:
    case 6:
      return {Parse(config.on_crash(), EndAction::kDestroy), "on_crash"};
    default:
      return {};  // could not build the VM (2), stopped by a signal (7), bad usage (1)
  }
}

bool RestartBudget::Take(absl::Time now) {
  while (!recent_.empty() && now - recent_.front() > kRestartWindow) recent_.pop_front();
  if (recent_.size() >= static_cast<size_t>(kMaxRestarts)) return false;
  recent_.push_back(now);
  return true;
}

}  // namespace xenkvm::api
