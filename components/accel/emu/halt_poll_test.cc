#include "components/accel/emu/halt_poll.h"

#include "gtest/gtest.h"

namespace xenkvm::accel::emu {
namespace {

using absl::Microseconds;

TEST(HaltPollWindowTest, GrowsWhileWakeUpsComeSoonAndShrinksAfterLongHalts) {
  HaltPollWindow poll;
  EXPECT_EQ(poll.window(), absl::ZeroDuration());  // no polling until a short halt is seen
  poll.Update(Microseconds(30));
  EXPECT_EQ(poll.window(), HaltPollWindow::kStart);
  for (absl::Duration expected : {Microseconds(20), Microseconds(40), Microseconds(80), Microseconds(160),
                                  Microseconds(200), Microseconds(200)}) {
    poll.Update(Microseconds(190));  // slept, but woke within the longest window
    EXPECT_EQ(poll.window(), expected);
  }
  poll.Update(Microseconds(150));  // caught while polling: left as it is
  EXPECT_EQ(poll.window(), Microseconds(200));
  poll.Update(absl::Milliseconds(4));  // an idle guest's halt
  EXPECT_EQ(poll.window(), Microseconds(100));
  for (int i = 0; i < 4; ++i) poll.Update(absl::Milliseconds(4));
  EXPECT_EQ(poll.window(), absl::ZeroDuration());  // 50, 25, 12.5, then below the start: off
  poll.Update(absl::Milliseconds(4));
  EXPECT_EQ(poll.window(), absl::ZeroDuration());
}

}  // namespace
}  // namespace xenkvm::accel::emu
