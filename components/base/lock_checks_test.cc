#include "components/base/lock_checks.h"

#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"

namespace xenkvm::base {
namespace {

// Takes two locks in one order, then in the other: an inversion Abseil's checks abort on.
void InvertLockOrder() {
  absl::Mutex first, second;
  {
    absl::MutexLock a(&first);
    absl::MutexLock b(&second);
  }
  absl::MutexLock b(&second);
  absl::MutexLock a(&first);
}

// The premise: this build's Abseil checks lock order (Debian's is built without NDEBUG). If a
// later Abseil stops checking by default, this fails and lock_checks.h's reason is gone.
TEST(LockChecksDeathTest, AbseilChecksLockOrderByDefault) {
  EXPECT_DEATH(InvertLockOrder(), "deadlock");
}

TEST(LockChecksTest, OffTheInversionPasses) {
  DisableLockOrderChecks();
  InvertLockOrder();
}

}  // namespace
}  // namespace xenkvm::base
