#include "vmm/control_protocol.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <vector>

#include "absl/synchronization/notification.h"
#include "components/base/unix_socket.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace xenkvm::vmm {
namespace {

using ::testing::HasSubstr;

class ControlProtocolTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char directory[] = "/tmp/control_protocol_test.XXXXXX";
    ASSERT_NE(mkdtemp(directory), nullptr);
    directory_ = directory;
    path_ = directory_ + "/vmm.sock";
  }
  void TearDown() override {
    server_.reset();
    unlink(path_.c_str());
    rmdir(directory_.c_str());
  }

  // A server that answers "Status" (paused, accelerator "emu"), "Fail" with FAILED_PRECONDITION,
  // "Slow" after `release_slow_`, and anything else UNIMPLEMENTED.
  void StartServer() {
    auto started = ControlSocketServer::Start(
        path_, [this](const std::string& method, const std::string& request, std::string* reply) -> absl::Status {
          if (method == "Status") {
            v1::VmmStatusRequest parsed;
            if (!parsed.ParseFromString(request)) return absl::InvalidArgumentError("bad request");
            v1::VmmStatus status;
            status.set_paused(true);
            status.set_accelerator("emu");
            status.SerializeToString(reply);
            return absl::OkStatus();
          }
          if (method == "Fail") return absl::FailedPreconditionError("the guest has no PV drivers");
          if (method == "Slow") {
            slow_started_.Notify();
            release_slow_.WaitForNotification();
            return absl::OkStatus();
          }
          return absl::UnimplementedError("no such call");
        });
    ASSERT_TRUE(started.ok()) << started.status();
    server_ = std::move(started).value();
  }

  std::string directory_;
  std::string path_;
  absl::Notification slow_started_;
  absl::Notification release_slow_;
  std::unique_ptr<ControlSocketServer> server_;
};

TEST_F(ControlProtocolTest, CallIsAnsweredWithTheTypedReply) {
  StartServer();
  VmmControlClient client(path_);
  v1::VmmStatus status;
  ASSERT_TRUE(client.Status(v1::VmmStatusRequest(), &status, absl::Seconds(5)).ok());
  EXPECT_TRUE(status.paused());
  EXPECT_EQ(status.accelerator(), "emu");
}

TEST_F(ControlProtocolTest, SocketIsOwnerOnlyAndRemovedWithTheServer) {
  StartServer();
  struct stat info {};
  ASSERT_EQ(stat(path_.c_str(), &info), 0);
  EXPECT_EQ(info.st_mode & 0777, 0600u);
  server_.reset();
  EXPECT_NE(access(path_.c_str(), F_OK), 0);
}

TEST_F(ControlProtocolTest, ErrorsKeepTheirCodeAndMessage) {
  StartServer();
  VmmControlClient client(path_);
  v1::VmmReply reply;
  absl::Status failed = client.Call("Fail", v1::VmmPauseRequest(), &reply, absl::Seconds(5));
  EXPECT_EQ(failed.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(failed.message(), "the guest has no PV drivers");
  EXPECT_EQ(client.Call("Unknown", v1::VmmPauseRequest(), &reply, absl::Seconds(5)).code(),
            absl::StatusCode::kUnimplemented);
}

TEST_F(ControlProtocolTest, NoServerIsUnavailableAndNamesTheSocket) {
  VmmControlClient client(path_);
  v1::VmmStatus status;
  absl::Status failed = client.Status(v1::VmmStatusRequest(), &status, absl::Seconds(1));
  EXPECT_EQ(failed.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(failed.message(), HasSubstr(path_));
}

TEST_F(ControlProtocolTest, SlowAnswerIsADeadlineAndOtherCallsGoOnMeanwhile) {
  StartServer();
  VmmControlClient client(path_);
  const absl::Time start = absl::Now();
  absl::Status late = client.Call("Slow", v1::VmmPauseRequest(), nullptr, absl::Milliseconds(100));
  EXPECT_EQ(late.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(late.message(), HasSubstr("Slow"));
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
  ASSERT_TRUE(slow_started_.HasBeenNotified());
  v1::VmmStatus status;  // the slow call still holds its connection's thread
  EXPECT_TRUE(client.Status(v1::VmmStatusRequest(), &status, absl::Seconds(5)).ok());
  release_slow_.Notify();
}

TEST_F(ControlProtocolTest, ServerStopsWithACallInProgressAndIdleConnections) {
  StartServer();
  absl::StatusOr<base::Fd> idle = base::ConnectUnix(path_, SOCK_STREAM, "test");
  ASSERT_TRUE(idle.ok());
  std::atomic<bool> answered{false};
  std::thread caller([&] {
    (void)VmmControlClient(path_).Call("Slow", v1::VmmPauseRequest(), nullptr, absl::Seconds(30));
    answered = true;
  });
  slow_started_.WaitForNotification();
  std::thread stopper([&] { server_.reset(); });
  absl::SleepFor(absl::Milliseconds(50));
  release_slow_.Notify();  // the destructor waits for the call in progress, not for the idle one
  stopper.join();
  caller.join();
  EXPECT_TRUE(answered);
  char byte;
  EXPECT_EQ(recv(idle->get(), &byte, 1, 0), 0);  // closed by the server
}

TEST_F(ControlProtocolTest, OversizedFrameClosesTheConnection) {
  StartServer();
  absl::StatusOr<base::Fd> raw = base::ConnectUnix(path_, SOCK_STREAM, "test");
  ASSERT_TRUE(raw.ok());
  const unsigned char header[4] = {0xff, 0xff, 0xff, 0x7f};
  ASSERT_EQ(send(raw->get(), header, sizeof(header), MSG_NOSIGNAL), 4);
  char byte;
  EXPECT_EQ(recv(raw->get(), &byte, 1, 0), 0);
  v1::VmmStatus status;  // the server itself goes on
  EXPECT_TRUE(VmmControlClient(path_).Status(v1::VmmStatusRequest(), &status, absl::Seconds(5)).ok());
}

TEST_F(ControlProtocolTest, ConnectionsBeyondTheLimitAreRefused) {
  StartServer();
  std::vector<base::Fd> idle;
  for (size_t i = 0; i < ControlSocketServer::kMaxConnections; ++i) {
    absl::StatusOr<base::Fd> connection = base::ConnectUnix(path_, SOCK_STREAM, "test");
    ASSERT_TRUE(connection.ok());
    idle.push_back(std::move(connection).value());
  }
  v1::VmmStatus status;
  absl::Status refused = VmmControlClient(path_).Status(v1::VmmStatusRequest(), &status, absl::Seconds(5));
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted);
  idle.clear();  // their threads end; the next call is served again
  absl::Status served;
  for (int attempt = 0; attempt < 100; ++attempt) {
    served = VmmControlClient(path_).Status(v1::VmmStatusRequest(), &status, absl::Seconds(5));
    if (served.ok()) break;
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_TRUE(served.ok()) << served;
}

TEST(ControlFrameTest, FramesCrossAStreamAndItsEndsAreTold) {
  int ends[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ends), 0);
  base::Fd writer(ends[0]), reader(ends[1]);
  v1::VmmConsoleInput input;
  input.set_data(std::string(300000, 'x'));  // beyond the socket's buffer: sent in pieces
  std::thread send_thread(
      [&] { EXPECT_TRUE(WriteControlFrame(writer.get(), input, absl::Now() + absl::Seconds(10)).ok()); });
  v1::VmmConsoleInput received;
  ASSERT_TRUE(ReadControlFrame(reader.get(), received, absl::Now() + absl::Seconds(10)).ok());
  send_thread.join();
  EXPECT_EQ(received.data(), input.data());

  EXPECT_EQ(ReadControlFrame(reader.get(), received, absl::Now() + absl::Milliseconds(20)).code(),
            absl::StatusCode::kDeadlineExceeded);
  const unsigned char partial[6] = {10, 0, 0, 0, 0x0a, 0x01};  // 10 bytes announced, 2 sent
  ASSERT_EQ(send(writer.get(), partial, sizeof(partial), MSG_NOSIGNAL), 6);
  writer.Reset();
  EXPECT_EQ(ReadControlFrame(reader.get(), received, absl::Now() + absl::Seconds(5)).code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(ReadControlFrame(reader.get(), received, absl::Now() + absl::Seconds(5)).code(),
            absl::StatusCode::kOutOfRange);
}

TEST(ControlFrameTest, UnknownResultCodeIsUnknownAndMalformedReplyIsAnError) {
  char directory[] = "/tmp/control_frame_test.XXXXXX";
  ASSERT_NE(mkdtemp(directory), nullptr);
  const std::string path = std::string(directory) + "/vmm.sock";
  absl::StatusOr<base::Fd> listener = base::ListenUnix(path, SOCK_STREAM, 4, "test");
  ASSERT_TRUE(listener.ok());
  std::thread peer([&] {
    for (int round = 0; round < 2; ++round) {
      base::Fd connection(accept4(listener->get(), nullptr, nullptr, SOCK_CLOEXEC));
      v1::VmmCall call;
      ASSERT_TRUE(ReadControlFrame(connection.get(), call, absl::Now() + absl::Seconds(5)).ok());
      v1::VmmCallResult result;
      if (round == 0) {
        result.set_code(99);
        result.set_message("from a newer VMM");
      } else {
        result.set_reply("\xff\xff\xff");  // not a VmmStatus
      }
      ASSERT_TRUE(WriteControlFrame(connection.get(), result, absl::Now() + absl::Seconds(5)).ok());
    }
  });
  VmmControlClient client(path);
  v1::VmmStatus status;
  absl::Status unknown = client.Status(v1::VmmStatusRequest(), &status, absl::Seconds(5));
  EXPECT_EQ(unknown.code(), absl::StatusCode::kUnknown);
  EXPECT_EQ(unknown.message(), "from a newer VMM");
  EXPECT_EQ(client.Status(v1::VmmStatusRequest(), &status, absl::Seconds(5)).code(), absl::StatusCode::kInternal);
  peer.join();
  unlink(path.c_str());
  rmdir(directory);
}

}  // namespace
}  // namespace xenkvm::vmm
