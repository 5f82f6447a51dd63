#include "components/base/fd_handover.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace xenkvm::base {
namespace {

using ::testing::HasSubstr;

// Under /tmp: the test's own temporary directory can be longer than a socket path may be.
std::string SocketPath(const std::string& name) {
  static const std::string dir = [] {
    char pattern[] = "/tmp/xenkvm-handover-XXXXXX";
    return std::string(mkdtemp(pattern));
  }();
  return absl::StrCat(dir, "/", name);
}

Fd Pipe(Fd* write_end) {
  int ends[2];
  EXPECT_EQ(pipe2(ends, O_CLOEXEC), 0);
  write_end->Reset(ends[1]);
  return Fd(ends[0]);
}

TEST(FdHandoverTest, TheReceiverGetsTheSameOpenFileUnderItsToken) {
  const std::string path = SocketPath("handover-same.sock");
  absl::StatusOr<std::unique_ptr<FdHandoverServer>> server = FdHandoverServer::Start(path);
  ASSERT_TRUE(server.ok()) << server.status();
  struct stat info {};
  ASSERT_EQ(stat(path.c_str(), &info), 0);
  EXPECT_EQ(info.st_mode & 0777, 0600u);

  Fd write_end;
  Fd read_end = Pipe(&write_end);
  const std::string token = NewHandoverToken();
  EXPECT_EQ(token.size(), 32u);
  ASSERT_TRUE(HandOverFd(path, token, write_end.get()).ok());
  write_end.Reset();  // the receiver's copy keeps the pipe open

  EXPECT_EQ((*server)->Take("some-other-token").status().code(), absl::StatusCode::kNotFound);
  absl::StatusOr<Fd> taken = (*server)->Take(token);
  ASSERT_TRUE(taken.ok()) << taken.status();
  ASSERT_EQ(write(taken->get(), "x", 1), 1);
  char byte = 0;
  ASSERT_EQ(read(read_end.get(), &byte, 1), 1);
  EXPECT_EQ(byte, 'x');
  EXPECT_NE(fcntl(taken->get(), F_GETFD) & FD_CLOEXEC, 0);
  EXPECT_EQ((*server)->Take(token).status().code(), absl::StatusCode::kNotFound);  // taken once
}

TEST(FdHandoverTest, OnlyTheNewestFilesAreKept) {
  const std::string path = SocketPath("handover-bounded.sock");
  absl::StatusOr<std::unique_ptr<FdHandoverServer>> server = FdHandoverServer::Start(path);
  ASSERT_TRUE(server.ok()) << server.status();
  Fd file(open("/dev/null", O_RDONLY | O_CLOEXEC));
  for (size_t i = 0; i < FdHandoverServer::kMaxPending + 2; ++i) {
    ASSERT_TRUE(HandOverFd(path, absl::StrCat("token", i), file.get()).ok());
  }
  EXPECT_EQ((*server)->Take("token0").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ((*server)->Take("token1").status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE((*server)->Take("token2").ok());
  EXPECT_TRUE((*server)->Take(absl::StrCat("token", FdHandoverServer::kMaxPending + 1)).ok());
}

TEST(FdHandoverTest, BadTokensAndMissingServersAreClearErrors) {
  Fd file(open("/dev/null", O_RDONLY | O_CLOEXEC));
  EXPECT_EQ(HandOverFd(SocketPath("handover-none.sock"), "t", file.get()).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(HandOverFd(SocketPath("x.sock"), "", file.get()).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(HandOverFd(SocketPath("x.sock"), std::string(65, 'a'), file.get()).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(HandOverFd(SocketPath("x.sock"), "has space", file.get()).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(FdHandoverServer::Start(std::string(200, 'a')).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(FdHandoverTest, StopsPromptlyWithConnectionsInFlight) {
  const std::string path = SocketPath("handover-stop.sock");
  absl::StatusOr<std::unique_ptr<FdHandoverServer>> server = FdHandoverServer::Start(path);
  ASSERT_TRUE(server.ok()) << server.status();
  Fd file(open("/dev/null", O_RDONLY | O_CLOEXEC));
  std::vector<std::thread> senders;
  for (int i = 0; i < 4; ++i) {
    senders.emplace_back([&, i] { (void)HandOverFd(path, absl::StrCat("t", i), file.get()); });
  }
  for (std::thread& sender : senders) sender.join();
  server->reset();  // joins its thread
  EXPECT_FALSE(HandOverFd(path, "late", file.get()).ok());
}

}  // namespace
}  // namespace xenkvm::base
