#include "components/base/lock_checks.h"

#include "absl/synchronization/mutex.h"

namespace xenkvm::base {

void DisableLockOrderChecks() { absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore); }

}  // namespace xenkvm::base
