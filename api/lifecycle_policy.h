// What xenkvmd does when a VM's run ends, after xl's on_poweroff / on_reboot / on_crash: the
// guest's own end (powered off, rebooted, crashed) picks a policy from the VM's config; a run the
// operator ended (destroy, shutdown's deadline) or a VMM that died picks none.
#ifndef XENKVM_API_LIFECYCLE_POLICY_H_
#define XENKVM_API_LIFECYCLE_POLICY_H_

#include <deque>
#include <string>

#include "absl/time/time.h"
#include "api/vmm_process.h"
#include "proto/xenkvm/v1/vm.pb.h"

namespace xenkvm::api {

enum class EndAction { kNone, kDestroy, kRestart };

struct EndPolicy {
  EndAction action = EndAction::kNone;
  const char* key = "";  // "on_poweroff", "on_reboot" or "on_crash"
};

// The VM's state, exit status and end reason after a run's `end` (SHUTDOWN, CRASHED, or CREATED
// for a VMM that could not build the VM).
void ApplyRunEnd(const RunEnd& end, v1::Vm& vm);

// The policy for `end` (xenkvm-vmm's exit statuses, vmm/README.md: 0 and 3 powered off, 4 reset,
// 5 crashed, 6 halted for good), with xl's defaults for unset fields: destroy, restart, destroy.
EndPolicy PolicyFor(const v1::VmConfig& config, const RunEnd& end);

// Restarts allowed per VM: at most kMaxRestarts within kRestartWindow, so a guest that crashes at
// once is not restarted forever (xl has no such guard; systemd's StartLimitBurst is the anchor).
class RestartBudget {
 public:
  static constexpr int kMaxRestarts = 5;
  static constexpr absl::Duration kRestartWindow = absl::Seconds(60);
  // Whether another restart fits at `now`; if so it is counted.
  bool Take(absl::Time now);

 private:
  std::deque<absl::Time> recent_;
};

}  // namespace xenkvm::api

#endif  // XENKVM_API_LIFECYCLE_POLICY_H_
