#include "components/base/spin_wait.h"

#include "gtest/gtest.h"

namespace xenkvm::base {
namespace {

using std::chrono::microseconds;
using std::chrono::milliseconds;
using std::chrono::nanoseconds;

TEST(PollWindowTest, GrowsWhileWakeUpsComeSoonAndShrinksAfterLongWaits) {
  PollWindow poll;
  EXPECT_EQ(poll.window(), nanoseconds::zero());  // no polling until a short wait is seen
  poll.Update(microseconds(30));
  EXPECT_EQ(poll.window(), PollWindow::kStart);
  for (nanoseconds expected : {microseconds(20), microseconds(40), microseconds(80), microseconds(160),
                               microseconds(200), microseconds(200)}) {
    poll.Update(microseconds(190));  // slept, but woke within the longest window
    EXPECT_EQ(poll.window(), expected);
  }
  poll.Update(microseconds(150));  // caught while polling: left as it is
  EXPECT_EQ(poll.window(), microseconds(200));
  poll.Update(milliseconds(4));  // an idle thread's wait
  EXPECT_EQ(poll.window(), microseconds(100));
  for (int i = 0; i < 4; ++i) poll.Update(milliseconds(4));
  EXPECT_EQ(poll.window(), nanoseconds::zero());  // 50, 25, 12.5, then below the start: off
  poll.Update(milliseconds(4));
  EXPECT_EQ(poll.window(), nanoseconds::zero());
}

TEST(SpinForTest, ReturnsWhenReadyOrWhenTheWindowHasPassed) {
  int looks = 0;
  EXPECT_TRUE(SpinFor(milliseconds(1000), [&] { return ++looks == 100; }));
  EXPECT_EQ(looks, 100);
  const auto start = std::chrono::steady_clock::now();
  EXPECT_FALSE(SpinFor(microseconds(300), [] { return false; }));
  EXPECT_GE(std::chrono::steady_clock::now() - start, microseconds(300));
}

}  // namespace
}  // namespace xenkvm::base
