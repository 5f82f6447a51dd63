// A network backend's frame device for tests and benchmarks, without root or a tap.
#ifndef XENKVM_TESTS_FRONTENDS_SOCKET_PAIR_DEVICE_H_
#define XENKVM_TESTS_FRONTENDS_SOCKET_PAIR_DEVICE_H_

#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "components/net/frame_device.h"
#include "components/net/virtio_net_header.h"

namespace xenkvm::testing {

// A frame device over a SOCK_SEQPACKET pair: the backend's end, and the host's end the test or
// benchmark holds (one frame per message, as a tap gives them). With `offloads`, each message is
// a virtio_net_hdr and the frame, as a tap with IFF_VNET_HDR has them.
class SocketPairDevice final : public net::FrameDevice {
 public:
  explicit SocketPairDevice(bool offloads = false) : offloads_(offloads) {
    int fds[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds) != 0) std::abort();
    backend_ = fds[0];
    host_ = fds[1];
  }
  ~SocketPairDevice() override {
    close(backend_);
    close(host_);
  }
  bool offloads() const override { return offloads_; }
  // Header and frame in one message, scattered and gathered (no copy on the benchmarks' path).
  absl::StatusOr<size_t> Read(std::span<uint8_t> frame, net::FrameOffload& offload) const override {
    std::array<uint8_t, net::kVirtioNetHeaderSize> header{};
    iovec parts[2] = {{header.data(), Header()}, {frame.data(), frame.size()}};
    const ssize_t got = readv(backend_, parts, 2);
    if (got < 0) return absl::UnavailableError(strerror(errno));
    if (static_cast<size_t>(got) < Header()) return absl::DataLossError("a message shorter than its header");
    offload = offloads_ ? net::DecodeVirtioNetHeader(header) : net::FrameOffload{};
    return static_cast<size_t>(got) - Header();
  }
  absl::Status Write(std::span<const uint8_t> frame, const net::FrameOffload& offload) const override {
    std::array<uint8_t, net::kVirtioNetHeaderSize> header = net::EncodeVirtioNetHeader(offload);
    iovec parts[2] = {{header.data(), Header()}, {const_cast<uint8_t*>(frame.data()), frame.size()}};
    if (writev(backend_, parts, 2) < 0) return absl::InternalError(strerror(errno));
    return absl::OkStatus();
  }
  int fd() const override { return backend_; }
  const std::string& name() const override { return name_; }

  // The host's side.
  // False when the socket's buffer is full. `offload` only with offloads.
  bool Send(std::span<const uint8_t> frame, const net::FrameOffload& offload = {}) const {
    const size_t size = frame.size() + Header();
    return write(host_, Message(frame, offload).data(), size) == static_cast<ssize_t>(size);
  }
  int host_fd() const { return host_; }
  // A frame the backend wrote, and with offloads what its header said.
  std::optional<std::vector<uint8_t>> Receive(absl::Duration timeout = absl::Seconds(5),
                                              net::FrameOffload* offload = nullptr) const {
    const absl::Time deadline = absl::Now() + timeout;
    std::vector<uint8_t> frame(70000 + Header());
    while (absl::Now() < deadline) {
      const ssize_t got = read(host_, frame.data(), frame.size());
      if (got >= static_cast<ssize_t>(Header())) {
        if (offload && offloads_) {
          *offload = net::DecodeVirtioNetHeader(
              std::span<const uint8_t, net::kVirtioNetHeaderSize>(frame.data(), net::kVirtioNetHeaderSize));
        }
        frame.resize(static_cast<size_t>(got));
        frame.erase(frame.begin(), frame.begin() + static_cast<ptrdiff_t>(Header()));
        return frame;
      }
      absl::SleepFor(absl::Milliseconds(1));
    }
    return std::nullopt;
  }

 private:
  size_t Header() const { return offloads_ ? net::kVirtioNetHeaderSize : 0; }
  std::vector<uint8_t> Message(std::span<const uint8_t> frame, const net::FrameOffload& offload) const {
    std::vector<uint8_t> message;
    if (offloads_) {
      const auto header = net::EncodeVirtioNetHeader(offload);
      message.assign(header.begin(), header.end());
    }
    message.insert(message.end(), frame.begin(), frame.end());
    return message;
  }

  bool offloads_;
  int backend_ = -1, host_ = -1;
  std::string name_ = "pair";
};

}  // namespace xenkvm::testing

#endif  // XENKVM_TESTS_FRONTENDS_SOCKET_PAIR_DEVICE_H_
