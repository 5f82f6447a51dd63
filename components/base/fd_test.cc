#include <fcntl.h>
#include <unistd.h>

#include "absl/time/clock.h"
#include "components/base/event_fd.h"
#include "components/base/fd.h"
#include "components/base/timer_fd.h"
#include "gtest/gtest.h"

namespace xenkvm::base {
namespace {

bool IsOpen(int fd) { return ::fcntl(fd, F_GETFD) >= 0; }

TEST(FdTest, ClosesOnDestruction) {
  int raw[2];
  ASSERT_EQ(::pipe(raw), 0);
  {
    Fd read_end(raw[0]);
    Fd write_end(raw[1]);
    EXPECT_TRUE(IsOpen(raw[0]));
  }
  EXPECT_FALSE(IsOpen(raw[0]));
  EXPECT_FALSE(IsOpen(raw[1]));
}

TEST(FdTest, MoveTransfersOwnership) {
  int raw[2];
  ASSERT_EQ(::pipe(raw), 0);
  Fd keep(raw[1]);
  Fd first(raw[0]);
  Fd second(std::move(first));
  EXPECT_FALSE(first.valid());  // NOLINT(bugprone-use-after-move): checking the moved-from state
  EXPECT_EQ(second.get(), raw[0]);
  Fd third;
  third = std::move(second);
  EXPECT_EQ(third.get(), raw[0]);
  EXPECT_TRUE(IsOpen(raw[0]));
  third.Reset();
  EXPECT_FALSE(IsOpen(raw[0]));
}

TEST(FdTest, ReleaseDoesNotClose) {
  int raw[2];
  ASSERT_EQ(::pipe(raw), 0);
  Fd keep(raw[1]);
  int released;
  {
    Fd fd(raw[0]);
    released = fd.Release();
  }
  EXPECT_TRUE(IsOpen(released));
  ::close(released);
}

TEST(FdTest, Duplicate) {
  Fd empty;
  EXPECT_EQ(empty.Duplicate().status().code(), absl::StatusCode::kFailedPrecondition);
  absl::StatusOr<EventFd> event = EventFd::Create();
  ASSERT_TRUE(event.ok());
  Fd borrowed(event->fd());
  absl::StatusOr<Fd> copy = borrowed.Duplicate();
  borrowed.Release();
  ASSERT_TRUE(copy.ok()) << copy.status();
  EXPECT_NE(copy->get(), event->fd());
  ASSERT_TRUE(event->Write(5).ok());
  uint64_t value = 0;
  ASSERT_EQ(::read(copy->get(), &value, sizeof(value)), 8);
  EXPECT_EQ(value, 5u);
}

TEST(EventFdTest, CountsAndDrains) {
  absl::StatusOr<EventFd> event = EventFd::Create();
  ASSERT_TRUE(event.ok()) << event.status();
  EXPECT_EQ(event->Read().status().code(), absl::StatusCode::kUnavailable);
  ASSERT_TRUE(event->Write(2).ok());
  ASSERT_TRUE(event->Write(3).ok());
  EXPECT_EQ(*event->Read(), 5u);
  EXPECT_EQ(event->Read().status().code(), absl::StatusCode::kUnavailable);
}

TEST(EventFdTest, SemaphoreModeTakesOneUnit) {
  absl::StatusOr<EventFd> event = EventFd::Create(2, /*semaphore=*/true);
  ASSERT_TRUE(event.ok());
  EXPECT_EQ(*event->Read(), 1u);
  EXPECT_EQ(*event->Read(), 1u);
  EXPECT_FALSE(event->Read().ok());
}

TEST(EventFdTest, RefusesOversizedInitialValue) {
  EXPECT_EQ(EventFd::Create(uint64_t{1} << 33).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(TimerFdTest, FiresOnceAndPeriodically) {
  absl::StatusOr<TimerFd> timer = TimerFd::Create();
  ASSERT_TRUE(timer.ok()) << timer.status();
  EXPECT_EQ(timer->ReadExpirations().status().code(), absl::StatusCode::kUnavailable);
  ASSERT_TRUE(timer->Arm(absl::Milliseconds(1)).ok());
  absl::SleepFor(absl::Milliseconds(20));
  EXPECT_EQ(*timer->ReadExpirations(), 1u);
  ASSERT_TRUE(timer->Arm(absl::Milliseconds(1), absl::Milliseconds(1)).ok());
  absl::SleepFor(absl::Milliseconds(30));
  EXPECT_GE(*timer->ReadExpirations(), 2u);
  ASSERT_TRUE(timer->Disarm().ok());
  (void)timer->ReadExpirations();
  absl::SleepFor(absl::Milliseconds(10));
  EXPECT_FALSE(timer->ReadExpirations().ok());
}

TEST(TimerFdTest, AbsoluteDeadlineInThePastFiresAtOnce) {
  absl::StatusOr<TimerFd> timer = TimerFd::Create();
  ASSERT_TRUE(timer.ok());
  ASSERT_TRUE(timer->ArmAbsolute(1).ok());
  absl::SleepFor(absl::Milliseconds(5));
  EXPECT_EQ(*timer->ReadExpirations(), 1u);
}

TEST(TimerFdTest, RefusesNonPositiveDelay) {
  absl::StatusOr<TimerFd> timer = TimerFd::Create();
  ASSERT_TRUE(timer.ok());
  EXPECT_EQ(timer->Arm(absl::ZeroDuration()).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(timer->Arm(absl::Milliseconds(1), absl::Milliseconds(-1)).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace xenkvm::base
