// The netif shared rings (xen-netfront's transmit and receive rings, one page each), decoded from
// private copies of their slots and checked. Facts from xen/include/public/io/netif.h; the code is
// ours.
//
// A transmitted packet is one or more data requests (the first one's size is the whole packet's,
// NETTXF_more_data chains the rest) with optional extra-info slots after the first. ParseTxPacket
// reads them slot by slot and decides, before any data is touched: send, drop (answered with
// NETIF_RSP_ERROR, as netback does for a malformed packet), or fatal (the frontend broke the
// protocol: the backend stops serving it).
#ifndef XENKVM_COMPONENTS_XENBUS_NETIF_H_
#define XENKVM_COMPONENTS_XENBUS_NETIF_H_

#include <array>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace xenkvm::xenbus::netif {

inline constexpr uint64_t kRingHeaderSize = 64;  // {req_prod, req_event, rsp_prod, rsp_event, pad}
inline constexpr uint64_t kPageSize = 4096;
inline constexpr size_t kTxSlotSize = 12;  // netif_tx_request (netif_tx_response: 4 of them)
inline constexpr size_t kRxSlotSize = 8;   // netif_rx_request and netif_rx_response
// (4096 - 64) / slot size, rounded down to a power of two.
inline constexpr uint32_t kTxSlots = 256;
inline constexpr uint32_t kRxSlots = 256;

// NETTXF_*, NETRXF_*.
inline constexpr uint16_t kTxCsumBlank = 1, kTxDataValidated = 2, kTxMoreData = 4, kTxExtraInfo = 8;
inline constexpr uint16_t kRxDataValidated = 1, kRxCsumBlank = 2, kRxMoreData = 4, kRxExtraInfo = 8;
// NETIF_RSP_*.
inline constexpr int16_t kRspDropped = -2, kRspError = -1, kRspOkay = 0, kRspNull = 1;
// XEN_NETIF_EXTRA_TYPE_* (GSO .. HASH are valid), XEN_NETIF_EXTRA_FLAG_MORE, XEN_NETIF_GSO_TYPE_*.
inline constexpr uint8_t kExtraGso = 1, kExtraMcastAdd = 2, kExtraMcastDel = 3, kExtraTypeLimit = 5,
                         kExtraFlagMore = 1;
inline constexpr uint8_t kGsoTcpV4 = 1, kGsoTcpV6 = 2;

// Data slots a packet may use (XEN_NETIF_NR_SLOTS_MIN, what every backend must take); up to
// kFatalDataSlots is dropped, beyond is a broken frontend (netback's fatal_skb_slots).
inline constexpr uint32_t kMaxDataSlots = 18;
inline constexpr uint32_t kFatalDataSlots = 20;
inline constexpr uint32_t kMinPacketSize = 14;  // an Ethernet header

struct TxRequest {
  uint32_t gref = 0;
  uint16_t offset = 0;
  uint16_t flags = 0;
  uint16_t id = 0;
  uint16_t size = 0;
};
TxRequest DecodeTxRequest(std::span<const uint8_t, kTxSlotSize> slot);

struct ExtraInfo {
  uint8_t type = 0;
  uint8_t flags = 0;
  uint16_t gso_size = 0;  // GSO: the segment size
  uint8_t gso_type = 0;
  std::array<uint8_t, 6> mcast_address{};  // MCAST_ADD, MCAST_DEL: the Ethernet multicast address
};
ExtraInfo DecodeExtraInfo(std::span<const uint8_t, kTxSlotSize> slot);

enum class TxVerdict {
  kIncomplete,  // the frontend has not produced the whole packet yet
  kSend,
  kControl,  // a multicast-control request (MCAST_ADD/DEL extra): nothing to send, answered
  kDrop,   // answer every slot with NETIF_RSP_ERROR
  kFatal,  // stop serving the ring
};

struct TxPacket {
  TxVerdict verdict = TxVerdict::kIncomplete;
  std::string reason;     // kDrop, kFatal: what was wrong
  uint32_t slots = 0;     // the requests it takes off the ring (data and extras)
  // Every slot in ring order: a data request, or nullopt for an extra-info slot (answered NULL).
  std::vector<std::optional<TxRequest>> requests;
  // The data pieces in order; their lengths add up to `size` (the first request's size less the rest).
  struct Piece {
    uint32_t gref;
    uint16_t offset;
    uint16_t length;
  };
  std::vector<Piece> pieces;
  uint32_t size = 0;
  uint16_t flags = 0;  // the first request's
  std::optional<ExtraInfo> gso;
  std::optional<ExtraInfo> multicast;  // kControl: the MCAST_ADD or MCAST_DEL extra
};

// `slot(i)`: the i-th request from the consumer index, copied once, or nullopt while not produced.
using SlotReader = std::function<std::optional<std::array<uint8_t, kTxSlotSize>>(uint32_t index)>;
TxPacket ParseTxPacket(const SlotReader& slot);

// A response for each of the packet's slots, in ring order (NULL for extra-info slots).
std::array<uint8_t, kTxSlotSize> EncodeTxResponse(uint16_t id, int16_t status);

struct RxRequest {
  uint16_t id = 0;
  uint32_t gref = 0;
};
RxRequest DecodeRxRequest(std::span<const uint8_t, kRxSlotSize> slot);
// `status`: the bytes in the slot's page, or a NETIF_RSP_* error.
std::array<uint8_t, kRxSlotSize> EncodeRxResponse(uint16_t id, uint16_t offset, uint16_t flags, int16_t status);

// The extra-info slot that follows a received packet's first response (NETRXF_extra_info): its
// GSO type (kGsoTcpV4, kGsoTcpV6) and segment size.
std::array<uint8_t, kRxSlotSize> EncodeRxGsoExtra(uint8_t gso_type, uint16_t gso_size);

// Where an Ethernet frame's TCP or UDP checksum is: over IPv4 (not a fragment) or IPv6 (behind
// hop-by-hop and destination options at most), one VLAN tag at most.
struct ChecksumPlace {
  size_t start = 0;   // the TCP or UDP header
  size_t offset = 0;  // its checksum field, from `start`
  size_t end = 0;     // where the IP packet ends (padding may follow)
  uint8_t protocol = 0;  // 6 (TCP) or 17 (UDP)
  bool ipv6 = false;
};
// Writes the pseudo-header's sum (over the IP packet's own length) into the checksum field, as a
// partial checksum has it, and says where it is; nullopt, the frame untouched, when it is none of
// the above. What a frontend left in the field (blank or already partial) does not matter.
std::optional<ChecksumPlace> PreparePartialChecksum(std::span<uint8_t> frame);
// Completes a partial checksum: the sum from `start` to the end of `frame` into the field at
// `start` + `offset`. False (nothing written) when the field is not inside the frame.
bool CompletePartialChecksum(std::span<uint8_t> frame, size_t start, size_t offset);
// Fills in a TCP or UDP checksum the frontend left blank (NETTXF_csum_blank) or partial: the two
// above in one. False when the frame is none of those (left alone).
bool CompleteChecksum(std::span<uint8_t> frame);

}  // namespace xenkvm::xenbus::netif

#endif  // XENKVM_COMPONENTS_XENBUS_NETIF_H_
