// The virtio_net_hdr a tap with IFF_VNET_HDR puts before each frame (10 bytes, the legacy
// layout, little-endian on the hosts we run on), to and from FrameOffload. Facts from Linux's
// include/uapi/linux/virtio_net.h.
#ifndef XENKVM_COMPONENTS_NET_VIRTIO_NET_HEADER_H_
#define XENKVM_COMPONENTS_NET_VIRTIO_NET_HEADER_H_

#include <array>
#include <cstddef>
#include <span>

#include "components/net/frame_device.h"

namespace xenkvm::net {

inline constexpr size_t kVirtioNetHeaderSize = 10;

std::array<uint8_t, kVirtioNetHeaderSize> EncodeVirtioNetHeader(const FrameOffload& offload);
FrameOffload DecodeVirtioNetHeader(std::span<const uint8_t, kVirtioNetHeaderSize> header);

}  // namespace xenkvm::net

#endif  // XENKVM_COMPONENTS_NET_VIRTIO_NET_HEADER_H_
