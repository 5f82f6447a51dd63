// A network backend's frame device for tests and benchmarks, without root or a tap.
#ifndef XENKVM_TESTS_FRONTENDS_SOCKET_PAIR_DEVICE_H_
#define XENKVM_TESTS_FRONTENDS_SOCKET_PAIR_DEVICE_H_

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "components/net/frame_device.h"

namespace xenkvm::testing {

// A frame device over a SOCK_SEQPACKET pair: the backend's end, and the host's end the test or
// benchmark holds (one frame per message, as a tap gives them).
class SocketPairDevice final : public net::FrameDevice {
 public:
  SocketPairDevice() {
    int fds[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds) != 0) std::abort();
    backend_ = fds[0];
    host_ = fds[1];
  }
  ~SocketPairDevice() override {
    close(backend_);
    close(host_);
  }
  absl::StatusOr<size_t> Read(std::span<uint8_t> frame) const override {
    const ssize_t got = read(backend_, frame.data(), frame.size());
    if (got < 0) return absl::UnavailableError(strerror(errno));
    return static_cast<size_t>(got);
  }
  absl::Status Write(std::span<const uint8_t> frame) const override {
    if (write(backend_, frame.data(), frame.size()) < 0) return absl::InternalError(strerror(errno));
    return absl::OkStatus();
  }
  int fd() const override { return backend_; }
  const std::string& name() const override { return name_; }

  // The host's side.
  // False when the socket's buffer is full.
  bool Send(std::span<const uint8_t> frame) const {
    return write(host_, frame.data(), frame.size()) == static_cast<ssize_t>(frame.size());
  }
  int host_fd() const { return host_; }
  std::optional<std::vector<uint8_t>> Receive(absl::Duration timeout = absl::Seconds(5)) const {
    const absl::Time deadline = absl::Now() + timeout;
    std::vector<uint8_t> frame(70000);
    while (absl::Now() < deadline) {
      const ssize_t got = read(host_, frame.data(), frame.size());
      if (got >= 0) {
        frame.resize(static_cast<size_t>(got));
        return frame;
      }
      absl::SleepFor(absl::Milliseconds(1));
    }
    return std::nullopt;
  }

 private:
  int backend_ = -1, host_ = -1;
  std::string name_ = "pair";
};

}  // namespace xenkvm::testing

#endif  // XENKVM_TESTS_FRONTENDS_SOCKET_PAIR_DEVICE_H_
