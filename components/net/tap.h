// A TAP device (/dev/net/tun, IFF_TAP | IFF_NO_PI): Ethernet frames in and out of the host's
// network stack, one frame per read or write. Either an existing tap the operator made (`ip tuntap
// add`, possibly owned by another user) or one created here, optionally brought up and enslaved
// to a bridge, as xl's vif-bridge script does.
#ifndef XENKVM_COMPONENTS_NET_TAP_H_
#define XENKVM_COMPONENTS_NET_TAP_H_

#include <cstdint>
#include <span>
#include <string>

#include "absl/status/statusor.h"
#include "components/base/fd.h"
#include "components/net/frame_device.h"

namespace xenkvm::net {

class Tap final : public FrameDevice {
 public:
  // Attaches to the tap `name` (created when it does not exist; the kernel names it when empty).
  // Non-blocking, close-on-exec. Errors say what to check (root or CAP_NET_ADMIN, the name).
  static absl::StatusOr<Tap> Open(const std::string& name);
  // A tap opened elsewhere (Open in another process, handed over): its name asked of the kernel
  // (TUNGETIFF); made non-blocking. kInvalidArgument when `fd` is not a tap.
  static absl::StatusOr<Tap> Adopt(base::Fd fd);

  // Up, with `mtu` when non-zero.
  absl::Status BringUp(uint32_t mtu);
  // Enslaves the tap to the Linux bridge `bridge` (SIOCBRADDIF).
  absl::Status AttachToBridge(const std::string& bridge);

  absl::StatusOr<size_t> Read(std::span<uint8_t> frame) const override;
  absl::Status Write(std::span<const uint8_t> frame) const override;
  const std::string& name() const override { return name_; }
  int fd() const override { return fd_.get(); }

 private:
  Tap(base::Fd fd, std::string name) : fd_(std::move(fd)), name_(std::move(name)) {}
  base::Fd fd_;
  std::string name_;
};

}  // namespace xenkvm::net

#endif  // XENKVM_COMPONENTS_NET_TAP_H_
