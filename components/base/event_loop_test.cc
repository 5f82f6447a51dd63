#include "components/base/event_loop.h"

#include <sys/epoll.h>
#include <unistd.h>

#include <atomic>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "components/base/event_fd.h"
#include "gtest/gtest.h"

namespace xenkvm::base {
namespace {

std::unique_ptr<EventLoop> NewLoop() {
  absl::StatusOr<std::unique_ptr<EventLoop>> loop = EventLoop::Create();
  EXPECT_TRUE(loop.ok()) << loop.status();
  return std::move(loop).value();
}

TEST(EventLoopTest, DispatchesReadyFdToItsHandler) {
  auto loop = NewLoop();
  absl::StatusOr<EventFd> event = EventFd::Create();
  ASSERT_TRUE(event.ok());
  absl::Notification handled;
  uint64_t seen_value = 0;
  uint32_t seen_events = 0;
  ASSERT_TRUE(loop->Register(event->fd(), EPOLLIN, [&](uint32_t events) {
                    seen_events = events;
                    seen_value = *event->Read();
                    handled.Notify();
                  }).ok());
  ASSERT_TRUE(loop->Start().ok());
  ASSERT_TRUE(event->Write(42).ok());
  ASSERT_TRUE(handled.WaitForNotificationWithTimeout(absl::Seconds(5)));
  EXPECT_EQ(seen_value, 42u);
  EXPECT_TRUE(seen_events & EPOLLIN);
  loop->Stop();
  loop->Join();
}

TEST(EventLoopTest, PostFromManyThreadsRunsEverythingOnTheLoopThread) {
  auto loop = NewLoop();
  ASSERT_TRUE(loop->Start().ok());
  constexpr int kThreads = 4;
  constexpr int kPerThread = 500;
  std::atomic<int> ran{0};
  std::atomic<int> off_loop{0};
  absl::Notification all_done;
  std::vector<std::thread> posters;
  for (int t = 0; t < kThreads; ++t) {
    posters.emplace_back([&] {
      for (int i = 0; i < kPerThread; ++i) {
        ASSERT_TRUE(loop->Post([&] {
                          if (!loop->IsLoopThread()) off_loop++;
                          if (++ran == kThreads * kPerThread) all_done.Notify();
                        }).ok());
      }
    });
  }
  for (auto& poster : posters) poster.join();
  ASSERT_TRUE(all_done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_EQ(ran.load(), kThreads * kPerThread);
  EXPECT_EQ(off_loop.load(), 0);
  EXPECT_FALSE(loop->IsLoopThread());
}

TEST(EventLoopTest, PostKeepsOrderFromOneThread) {
  auto loop = NewLoop();
  std::vector<int> order;
  for (int i = 0; i < 100; ++i) {
    ASSERT_TRUE(loop->Post([&order, i] { order.push_back(i); }).ok());
  }
  ASSERT_TRUE(loop->Post([&] { loop->Stop(); }).ok());
  ASSERT_TRUE(loop->Run().ok());  // on this thread
  ASSERT_EQ(order.size(), 100u);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(order[i], i);
}

TEST(EventLoopTest, StopWhileBusyReturnsAfterTheRunningHandler) {
  auto loop = NewLoop();
  ASSERT_TRUE(loop->Start().ok());
  absl::Notification busy;
  absl::Notification release;
  std::atomic<bool> finished_handler{false};
  std::atomic<bool> later_closure_ran{false};
  ASSERT_TRUE(loop->Post([&] {
                    busy.Notify();
                    release.WaitForNotification();
                    finished_handler = true;
                  }).ok());
  ASSERT_TRUE(loop->Post([&] { later_closure_ran = true; }).ok());
  busy.WaitForNotification();
  loop->Stop();  // while the first closure is still running
  EXPECT_EQ(loop->Post([] {}).code(), absl::StatusCode::kFailedPrecondition);
  release.Notify();
  loop->Join();
  EXPECT_TRUE(finished_handler.load());
  EXPECT_FALSE(later_closure_ran.load());
  EXPECT_TRUE(loop->stopped());
  EXPECT_EQ(loop->Run().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(EventLoopTest, DestructorStopsARunningLoop) {
  auto loop = NewLoop();
  ASSERT_TRUE(loop->Start().ok());
  absl::Notification ran;
  ASSERT_TRUE(loop->Post([&] { ran.Notify(); }).ok());
  ASSERT_TRUE(ran.WaitForNotificationWithTimeout(absl::Seconds(5)));
  loop.reset();  // must not hang
}

TEST(EventLoopTest, UnregisterFromAHandlerDropsPendingEventsForThatFd) {
  auto loop = NewLoop();
  absl::StatusOr<EventFd> first = EventFd::Create();
  absl::StatusOr<EventFd> second = EventFd::Create();
  ASSERT_TRUE(first.ok() && second.ok());
  int calls = 0;
  // Both become ready in the same epoll_wait; whichever runs first removes the other.
  auto handler = [&](uint32_t) {
    ++calls;
    (void)first->Read();
    (void)second->Read();
    (void)loop->Unregister(first->fd());
    (void)loop->Unregister(second->fd());
    (void)loop->Post([&] { loop->Stop(); });
  };
  ASSERT_TRUE(loop->Register(first->fd(), EPOLLIN, handler).ok());
  ASSERT_TRUE(loop->Register(second->fd(), EPOLLIN, handler).ok());
  ASSERT_TRUE(first->Write().ok());
  ASSERT_TRUE(second->Write().ok());
  ASSERT_TRUE(loop->Run().ok());
  EXPECT_EQ(calls, 1);
}

TEST(EventLoopTest, ModifyChangesTheWatchedEvents) {
  auto loop = NewLoop();
  int pipe_fds[2];
  ASSERT_EQ(::pipe(pipe_fds), 0);
  Fd read_end(pipe_fds[0]);
  Fd write_end(pipe_fds[1]);
  int writable_calls = 0;
  // A pipe's write end is writable at once; with no events watched, nothing fires.
  ASSERT_TRUE(loop->Register(write_end.get(), 0, [&](uint32_t events) {
                    if (events & EPOLLOUT) ++writable_calls;
                    (void)loop->Modify(write_end.get(), 0);
                    loop->Stop();
                  }).ok());
  ASSERT_TRUE(loop->Start().ok());
  absl::SleepFor(absl::Milliseconds(20));
  EXPECT_EQ(writable_calls, 0);
  ASSERT_TRUE(loop->Modify(write_end.get(), EPOLLOUT).ok());
  loop->Join();
  EXPECT_EQ(writable_calls, 1);
}

TEST(EventLoopTest, RegistrationErrors) {
  auto loop = NewLoop();
  absl::StatusOr<EventFd> event = EventFd::Create();
  ASSERT_TRUE(event.ok());
  EXPECT_EQ(loop->Register(-1, EPOLLIN, [](uint32_t) {}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(loop->Register(event->fd(), EPOLLIN, nullptr).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(loop->Register(event->fd(), EPOLLIN, [](uint32_t) {}).ok());
  EXPECT_EQ(loop->Register(event->fd(), EPOLLIN, [](uint32_t) {}).code(),
            absl::StatusCode::kAlreadyExists);
  ASSERT_TRUE(loop->Unregister(event->fd()).ok());
  EXPECT_EQ(loop->Unregister(event->fd()).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(loop->Modify(event->fd(), EPOLLIN).code(), absl::StatusCode::kNotFound);
  // A closed descriptor number is refused by epoll itself, with the call named.
  absl::Status bad = loop->Register(987654, EPOLLIN, [](uint32_t) {});
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.message().find("epoll_ctl"), std::string::npos);
  EXPECT_EQ(loop->Post(nullptr).code(), absl::StatusCode::kInvalidArgument);
}

TEST(EventLoopTest, SecondRunIsRefusedWhileRunning) {
  auto loop = NewLoop();
  ASSERT_TRUE(loop->Start().ok());
  absl::Notification started;
  ASSERT_TRUE(loop->Post([&] { started.Notify(); }).ok());
  started.WaitForNotification();
  EXPECT_EQ(loop->Run().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(loop->Start().code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace xenkvm::base
