// Where a network backend's frames go and come from: one Ethernet frame per Read or Write, and a
// descriptor to poll for frames waiting. A Tap is one; tests use a socket pair.
#ifndef XENKVM_COMPONENTS_NET_FRAME_DEVICE_H_
#define XENKVM_COMPONENTS_NET_FRAME_DEVICE_H_

#include <cstdint>
#include <span>
#include <string>

#include "absl/status/statusor.h"

namespace xenkvm::net {

// What is left to do to a frame, or already done, beside its bytes (a tap's virtio_net_hdr with
// IFF_VNET_HDR): a TCP segmentation (GSO) and a checksum to complete, or a checksum the sender
// verified.
struct FrameOffload {
  enum class Segmentation : uint8_t {
    kNone,
    kTcpV4,
    kTcpV6,
    kUnsupported,  // another kind (UDP, ...): the frame cannot be passed on as it is
  };
  Segmentation segmentation = Segmentation::kNone;
  uint16_t segment_size = 0;  // TCP payload bytes a segment
  // The checksum field (`checksum_offset` bytes past `checksum_start`) holds the pseudo-header's
  // sum; the sum from checksum_start to the end is still to be added into it.
  bool partial_checksum = false;
  uint16_t checksum_start = 0, checksum_offset = 0;
  bool checksum_verified = false;  // the sender checked the frame's checksums
};

class FrameDevice {
 public:
  virtual ~FrameDevice() = default;
  // Whether frames carry an offload beside them. A device without gives and takes frames whole:
  // no segmentation, every checksum complete.
  virtual bool offloads() const = 0;
  // One frame and its offload; kUnavailable when none is waiting (the descriptor is non-blocking).
  virtual absl::StatusOr<size_t> Read(std::span<uint8_t> frame, FrameOffload& offload) const = 0;
  virtual absl::Status Write(std::span<const uint8_t> frame, const FrameOffload& offload) const = 0;
  // Readable when a frame waits.
  virtual int fd() const = 0;
  // For messages.
  virtual const std::string& name() const = 0;
};

}  // namespace xenkvm::net

#endif  // XENKVM_COMPONENTS_NET_FRAME_DEVICE_H_
