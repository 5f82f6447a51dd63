// Where a network backend's frames go and come from: one Ethernet frame per Read or Write, and a
// descriptor to poll for frames waiting. A Tap is one; tests use a socket pair.
#ifndef XENKVM_COMPONENTS_NET_FRAME_DEVICE_H_
#define XENKVM_COMPONENTS_NET_FRAME_DEVICE_H_

#include <cstdint>
#include <span>
#include <string>

#include "absl/status/statusor.h"

namespace xenkvm::net {

class FrameDevice {
 public:
  virtual ~FrameDevice() = default;
  // One frame; kUnavailable when none is waiting (the descriptor is non-blocking).
  virtual absl::StatusOr<size_t> Read(std::span<uint8_t> frame) const = 0;
  virtual absl::Status Write(std::span<const uint8_t> frame) const = 0;
  // Readable when a frame waits.
  virtual int fd() const = 0;
  // For messages.
  virtual const std::string& name() const = 0;
};

}  // namespace xenkvm::net

#endif  // XENKVM_COMPONENTS_NET_FRAME_DEVICE_H_
