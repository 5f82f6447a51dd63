// A TAP device (/dev/net/tun, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR): Ethernet frames in and out of
// the host's network stack, one frame per read or write, each behind a virtio_net_hdr that carries
// its offload (segmentation still to do, a checksum to complete). Either an existing tap the operator made (`ip tuntap
// add`, possibly owned by another user) or one created here, optionally brought up and enslaved
// to a bridge, as xl's vif-bridge script does.
#ifndef XENKVM_COMPONENTS_NET_TAP_H_
#define XENKVM_COMPONENTS_NET_TAP_H_

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "components/base/fd.h"
#include "components/net/frame_device.h"

namespace xenkvm::net {

class Tap final : public FrameDevice {
 public:
  // Attaches to the tap `name` (created when it does not exist; the kernel names it when empty).
  // Non-blocking, close-on-exec. Errors say what to check (root or CAP_NET_ADMIN, the name).
  static absl::StatusOr<Tap> Open(const std::string& name);
  // Up to `queues` descriptors on the tap `name`, each a queue of its own (IFF_MULTI_QUEUE: the
  // kernel spreads the host's frames over the attached queues by flow). A tap that exists
  // without multi_queue gives one: the caller serves what it got.
  static absl::StatusOr<std::vector<Tap>> OpenQueues(const std::string& name, uint32_t queues);
  // A tap opened elsewhere (Open in another process, handed over): its name asked of the kernel
  // (TUNGETIFF); made non-blocking. kInvalidArgument when `fd` is not a tap. Opened without
  // IFF_VNET_HDR, it carries frames whole (offloads() is false).
  static absl::StatusOr<Tap> Adopt(base::Fd fd);

  // Whether the kernel gives this queue frames (TUNSETQUEUE; a multi-queue tap's descriptor). A
  // detached queue's waiting frames are dropped; one queue at least stays attached.
  absl::Status SetQueueAttached(bool attached);
  bool multi_queue() const { return multi_queue_; }

  // Up, with `mtu` when non-zero.
  absl::Status BringUp(uint32_t mtu);
  // Enslaves the tap to the Linux bridge `bridge` (SIOCBRADDIF).
  absl::Status AttachToBridge(const std::string& bridge);

  // What the host may hand this reader (TUNSETOFFLOAD): frames whose checksum is partial, and
  // TCP over IPv4 / IPv6 not yet segmented (both need partial checksums). With none, frames come
  // whole and complete. Only with offloads().
  absl::Status AcceptOffloads(bool partial_checksum, bool tcpv4, bool tcpv6);

  bool offloads() const override { return vnet_header_; }
  absl::StatusOr<size_t> Read(std::span<uint8_t> frame, FrameOffload& offload) const override;
  absl::Status Write(std::span<const uint8_t> frame, const FrameOffload& offload) const override;
  const std::string& name() const override { return name_; }
  int fd() const override { return fd_.get(); }

 private:
  Tap(base::Fd fd, std::string name, bool vnet_header, bool multi_queue)
      : fd_(std::move(fd)), name_(std::move(name)), vnet_header_(vnet_header), multi_queue_(multi_queue) {}
  static absl::StatusOr<Tap> Attach(const std::string& name, bool multi_queue, int& error);
  base::Fd fd_;
  std::string name_;
  bool vnet_header_;
  bool multi_queue_;
};

}  // namespace xenkvm::net

#endif  // XENKVM_COMPONENTS_NET_TAP_H_
