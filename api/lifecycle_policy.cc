#include "api/lifecycle_policy.h"

namespace xenkvm::api {
namespace {

EndAction Parse(const std::string& value, EndAction unset) {
  if (value.empty()) return unset;
  return value == "restart" ? EndAction::kRestart : EndAction::kDestroy;
}

}  // namespace

// The VM's state after a run's end. xenkvm-vmm's statuses (vmm/README.md): 0 powered off, 2 could
// not build the VM, 3 powered off reporting failure, 4 reset, 5 crashed, 6 halted, 7 stopped.
void ApplyRunEnd(const RunEnd& end, v1::Vm& vm) {
  vm.set_exit_status(end.exit_status.value_or(-1));
  vm.set_end_reason(end.destroyed ? "destroyed" : end.message);
  if (end.destroyed) {
    vm.set_state(v1::VM_STATE_SHUTDOWN);
  } else if (end.signal || !end.exit_status) {
    vm.set_state(v1::VM_STATE_CRASHED);
  } else {
    switch (*end.exit_status) {
      case 0:
      case 3:
      case 4:
      case 7:
        vm.set_state(v1::VM_STATE_SHUTDOWN);
        break;
      case 2:
        vm.set_state(v1::VM_STATE_CREATED);
        break;
      default:
        vm.set_state(v1::VM_STATE_CRASHED);
    }
  }
}

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
