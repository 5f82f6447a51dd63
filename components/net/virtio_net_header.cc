#include "components/net/virtio_net_header.h"

namespace xenkvm::net {
namespace {

// VIRTIO_NET_HDR_F_*, VIRTIO_NET_HDR_GSO_*.
constexpr uint8_t kNeedsChecksum = 1, kDataValid = 2;
constexpr uint8_t kGsoNone = 0, kGsoTcpV4 = 1, kGsoTcpV6 = 4, kGsoEcn = 0x80;
// flags, gso_type, hdr_len, gso_size, csum_start, csum_offset.
constexpr size_t kFlags = 0, kGsoType = 1, kGsoSize = 4, kChecksumStart = 6, kChecksumOffset = 8;

void PutLe16(uint8_t* p, uint16_t value) {
  p[0] = static_cast<uint8_t>(value);
  p[1] = static_cast<uint8_t>(value >> 8);
}
uint16_t Le16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }

}  // namespace

std::array<uint8_t, kVirtioNetHeaderSize> EncodeVirtioNetHeader(const FrameOffload& offload) {
  std::array<uint8_t, kVirtioNetHeaderSize> header{};  // hdr_len 0: the tap works it out
  if (offload.partial_checksum) {
    header[kFlags] = kNeedsChecksum;
    PutLe16(&header[kChecksumStart], offload.checksum_start);
    PutLe16(&header[kChecksumOffset], offload.checksum_offset);
  } else if (offload.checksum_verified) {
    header[kFlags] = kDataValid;
  }
  switch (offload.segmentation) {
    case FrameOffload::Segmentation::kTcpV4:
      header[kGsoType] = kGsoTcpV4;
      break;
    case FrameOffload::Segmentation::kTcpV6:
      header[kGsoType] = kGsoTcpV6;
      break;
    default:
      header[kGsoType] = kGsoNone;
      break;
  }
  if (header[kGsoType] != kGsoNone) PutLe16(&header[kGsoSize], offload.segment_size);
  return header;
}

FrameOffload DecodeVirtioNetHeader(std::span<const uint8_t, kVirtioNetHeaderSize> header) {
  FrameOffload offload;
  const uint8_t* h = header.data();
  offload.partial_checksum = (h[kFlags] & kNeedsChecksum) != 0;
  offload.checksum_verified = (h[kFlags] & kDataValid) != 0;
  if (offload.partial_checksum) {
    offload.checksum_start = Le16(h + kChecksumStart);
    offload.checksum_offset = Le16(h + kChecksumOffset);
  }
  // Xen's GSO has no ECN bit; netback drops it as well.
  switch (h[kGsoType] & ~kGsoEcn) {
    case kGsoNone:
      break;
    case kGsoTcpV4:
      offload.segmentation = FrameOffload::Segmentation::kTcpV4;
      break;
    case kGsoTcpV6:
      offload.segmentation = FrameOffload::Segmentation::kTcpV6;
      break;
    default:
      offload.segmentation = FrameOffload::Segmentation::kUnsupported;
      break;
  }
  if (offload.segmentation != FrameOffload::Segmentation::kNone) offload.segment_size = Le16(h + kGsoSize);
  return offload;
}

}  // namespace xenkvm::net
