#include "vmm/control_protocol.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <vector>

#include "absl/strings/str_cat.h"
#include "components/base/status.h"
#include "components/base/unix_socket.h"
#include "spdlog/spdlog.h"

namespace xenkvm::vmm {
namespace {

constexpr size_t kFrameHeaderSize = 4;
// How long the VMM gives xenkvmd to take an answer.
constexpr absl::Duration kAnswerTimeout = absl::Seconds(10);

// Waits until `fd` is ready for `events` (or reports an error or hang-up, which the following
// send or receive then names).
absl::Status WaitReady(int fd, short events, absl::Time deadline) {
  while (true) {
    int timeout_ms = -1;
    if (deadline != absl::InfiniteFuture()) {
      const absl::Duration left = deadline - absl::Now();
      if (left <= absl::ZeroDuration()) return absl::DeadlineExceededError("the peer did not keep up in time");
      timeout_ms = static_cast<int>(
          std::min<int64_t>(absl::ToInt64Milliseconds(absl::Ceil(left, absl::Milliseconds(1))), INT_MAX));
    }
    pollfd ready{fd, events, 0};
    const int polled = poll(&ready, 1, timeout_ms);
    if (polled > 0) return absl::OkStatus();
    if (polled < 0 && errno != EINTR) return base::ErrnoStatus("control: poll");
  }
}

absl::Status SendAll(int fd, const std::string& bytes, absl::Time deadline) {
  size_t sent = 0;
  while (sent < bytes.size()) {
    XENKVM_RETURN_IF_ERROR(WaitReady(fd, POLLOUT, deadline));
    const ssize_t now = send(fd, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (now < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return base::ErrnoStatus("control: send");
    }
    sent += static_cast<size_t>(now);
  }
  return absl::OkStatus();
}

// Fills `buffer`; kOutOfRange if the stream ends before its first byte.
absl::Status ReceiveAll(int fd, char* buffer, size_t size, absl::Time deadline) {
  size_t received = 0;
  while (received < size) {
    XENKVM_RETURN_IF_ERROR(WaitReady(fd, POLLIN, deadline));
    const ssize_t now = recv(fd, buffer + received, size - received, MSG_DONTWAIT);
    if (now < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return base::ErrnoStatus("control: receive");
    }
    if (now == 0) {
      return received == 0 ? absl::OutOfRangeError("the connection was closed")
                           : absl::UnavailableError("the connection was closed within a message");
    }
    received += static_cast<size_t>(now);
  }
  return absl::OkStatus();
}

absl::StatusCode KnownCode(int32_t code) {
  return code >= 0 && code <= static_cast<int32_t>(absl::StatusCode::kUnauthenticated)
             ? static_cast<absl::StatusCode>(code)
             : absl::StatusCode::kUnknown;
}

}  // namespace

absl::Status WriteControlFrame(int fd, const google::protobuf::MessageLite& message, absl::Time deadline) {
  const size_t size = message.ByteSizeLong();
  if (size > kMaxControlFrame) {
    return absl::InvalidArgumentError(
        absl::StrCat("control: a message of ", size, " bytes (at most ", kMaxControlFrame, ")"));
  }
  std::string frame(kFrameHeaderSize, '\0');
  for (size_t i = 0; i < kFrameHeaderSize; ++i) frame[i] = static_cast<char>((size >> (8 * i)) & 0xff);
  if (!message.AppendToString(&frame)) return absl::InternalError("control: a message could not be serialized");
  return SendAll(fd, frame, deadline);
}

absl::Status ReadControlFrame(int fd, google::protobuf::MessageLite& message, absl::Time deadline) {
  unsigned char header[kFrameHeaderSize];
  XENKVM_RETURN_IF_ERROR(ReceiveAll(fd, reinterpret_cast<char*>(header), sizeof(header), deadline));
  size_t size = 0;
  for (size_t i = 0; i < kFrameHeaderSize; ++i) size |= static_cast<size_t>(header[i]) << (8 * i);
  if (size > kMaxControlFrame) {
    return absl::InvalidArgumentError(
        absl::StrCat("control: a frame of ", size, " bytes (at most ", kMaxControlFrame, ")"));
  }
  std::string payload(size, '\0');
  absl::Status received = ReceiveAll(fd, payload.data(), size, deadline);
  if (received.code() == absl::StatusCode::kOutOfRange)
    return absl::UnavailableError("the connection was closed within a message");
  XENKVM_RETURN_IF_ERROR(received);
  if (!message.ParseFromString(payload)) return absl::InvalidArgumentError("control: a malformed message");
  return absl::OkStatus();
}

absl::Status VmmControlClient::Call(const std::string& method, const google::protobuf::MessageLite& request,
                                    google::protobuf::MessageLite* reply, absl::Duration timeout) const {
  const absl::Time deadline = absl::Now() + timeout;
  auto failed = [&](const absl::Status& why) {
    if (why.code() == absl::StatusCode::kDeadlineExceeded) {
      return absl::DeadlineExceededError(
          absl::StrCat("the VMM did not answer ", method, " within ", absl::FormatDuration(timeout)));
    }
    return absl::UnavailableError(absl::StrCat("the VMM's control socket ", socket_path_, ": ", why.message()));
  };
  // Non-blocking: a full backlog is an error now, not a wait past the deadline.
  absl::StatusOr<base::Fd> connection = base::ConnectUnix(socket_path_, SOCK_STREAM | SOCK_NONBLOCK, "control");
  if (!connection.ok()) return failed(connection.status());
  v1::VmmCall call;
  call.set_method(method);
  if (!request.SerializeToString(call.mutable_request()))
    return absl::InternalError("control: a request could not be serialized");
  if (absl::Status sent = WriteControlFrame(connection->get(), call, deadline); !sent.ok()) return failed(sent);
  v1::VmmCallResult result;
  if (absl::Status read = ReadControlFrame(connection->get(), result, deadline); !read.ok()) {
    return failed(read.code() == absl::StatusCode::kOutOfRange
                      ? absl::UnavailableError(absl::StrCat("the VMM closed the connection before answering ", method))
                      : read);
  }
  if (result.code() != 0) return absl::Status(KnownCode(result.code()), result.message());
  if (reply != nullptr && !reply->ParseFromString(result.reply())) {
    return absl::InternalError(absl::StrCat("the VMM's answer to ", method, " is malformed"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<ControlSocketServer>> ControlSocketServer::Start(const std::string& socket_path,
                                                                                Handler handler) {
  XENKVM_ASSIGN_OR_RETURN(base::Fd listener, base::ListenUnix(socket_path, SOCK_STREAM, kMaxConnections, "control"));
  auto server = std::unique_ptr<ControlSocketServer>(
      new ControlSocketServer(socket_path, std::move(listener), geteuid(), std::move(handler)));
  server->acceptor_ = std::thread([raw = server.get()] { raw->Accept(); });
  return server;
}

ControlSocketServer::~ControlSocketServer() {
  {
    absl::MutexLock lock(&mutex_);
    stopping_ = true;
  }
  shutdown(listener_.get(), SHUT_RDWR);  // wakes accept()
  if (acceptor_.joinable()) acceptor_.join();
  std::vector<std::thread*> threads;
  {
    absl::MutexLock lock(&mutex_);
    for (Connection& connection : connections_) {
      if (connection.fd.valid()) shutdown(connection.fd.get(), SHUT_RDWR);  // wakes one waiting for its next call
      threads.push_back(&connection.thread);
    }
  }
  for (std::thread* thread : threads) thread->join();  // without the lock: a finishing thread takes it
  unlink(socket_path_.c_str());
}

void ControlSocketServer::Accept() {
  while (true) {
    base::Fd fd(accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!fd.valid()) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EMFILE || errno == ENFILE || errno == ENOMEM || errno == ENOBUFS) {
        absl::SleepFor(absl::Milliseconds(10));  // the connection waits in the backlog
        continue;
      }
      return;  // shut down
    }
    if (!base::PeerIsRootOr(fd, owner_)) {
      spdlog::warn("control: refused a connection from another user");
      continue;
    }
    {
      absl::MutexLock lock(&mutex_);
      if (stopping_) return;
      JoinFinished();
      if (connections_.size() < kMaxConnections) {
        Connection& connection = connections_.emplace_back();
        connection.fd = std::move(fd);
        connection.thread = std::thread([this, &connection] { Serve(connection); });
        continue;
      }
    }
    // Refused without the lock held: a slow peer must not keep finishing connections waiting.
    v1::VmmCallResult busy;
    busy.set_code(static_cast<int>(absl::StatusCode::kResourceExhausted));
    busy.set_message(absl::StrCat("the VMM is already serving ", kMaxConnections, " control connections"));
    (void)WriteControlFrame(fd.get(), busy, absl::Now() + absl::Milliseconds(100));
  }
}

void ControlSocketServer::Serve(Connection& connection) {
  const int fd = connection.fd.get();
  while (true) {
    v1::VmmCall call;
    absl::Status read = ReadControlFrame(fd, call, absl::InfiniteFuture());
    if (!read.ok()) {
      if (read.code() != absl::StatusCode::kOutOfRange)
        spdlog::warn("{}; connection closed", std::string(read.message()));
      break;
    }
    std::string reply;
    const absl::Status answered = handler_(call.method(), call.request(), &reply);
    v1::VmmCallResult result;
    result.set_code(static_cast<int>(answered.code()));
    if (answered.ok()) {
      result.set_reply(std::move(reply));
    } else {
      result.set_message(std::string(answered.message()));
    }
    if (!WriteControlFrame(fd, result, absl::Now() + kAnswerTimeout).ok()) break;
  }
  absl::MutexLock lock(&mutex_);
  connection.fd.Reset();  // the peer sees the end now, not when the thread is joined
  connection.finished = true;
}

void ControlSocketServer::JoinFinished() {
  for (auto connection = connections_.begin(); connection != connections_.end();) {
    if (!connection->finished) {
      ++connection;
      continue;
    }
    connection->thread.join();  // it only returns from here on
    connection = connections_.erase(connection);
  }
}

}  // namespace xenkvm::vmm
