#include "components/xenbus/netif.h"

#include <cstring>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "third_party/xen_public.h"
// After xen_public.h (grant_ref_t, the ring macros' types).
#include <xen/io/netif.h>

namespace xenkvm::xenbus::netif {
namespace {

using Slot = std::array<uint8_t, kTxSlotSize>;

Slot TxSlot(uint32_t gref, uint16_t offset, uint16_t flags, uint16_t id, uint16_t size) {
  netif_tx_request_t request{gref, offset, flags, id, size};
  Slot slot{};
  std::memcpy(slot.data(), &request, sizeof(request));
  return slot;
}

Slot ExtraSlot(uint8_t type, uint8_t flags, uint16_t gso_size) {
  netif_extra_info_t extra{};
  extra.type = type;
  extra.flags = flags;
  extra.u.gso.size = gso_size;
  extra.u.gso.type = XEN_NETIF_GSO_TYPE_TCPV4;
  Slot slot{};
  std::memcpy(slot.data(), &extra, sizeof(extra));
  return slot;
}

TxPacket Parse(const std::vector<Slot>& slots) {
  return ParseTxPacket([&](uint32_t i) -> std::optional<Slot> {
    if (i >= slots.size()) return std::nullopt;
    return slots[i];
  });
}

TEST(NetifTest, LayoutsAreXens) {
  static_assert(sizeof(netif_tx_request_t) == kTxSlotSize);
  static_assert(sizeof(netif_rx_request_t) == kRxSlotSize);
  static_assert(sizeof(netif_rx_response_t) == kRxSlotSize);
  static_assert(sizeof(netif_extra_info_t) <= kTxSlotSize);
  EXPECT_EQ(NETTXF_csum_blank, kTxCsumBlank);
  EXPECT_EQ(NETTXF_more_data, kTxMoreData);
  EXPECT_EQ(NETTXF_extra_info, kTxExtraInfo);
  EXPECT_EQ(NETRXF_more_data, kRxMoreData);
  EXPECT_EQ(XEN_NETIF_NR_SLOTS_MIN, static_cast<int>(kMaxDataSlots));
  EXPECT_EQ(__CONST_RING_SIZE(netif_tx, 4096), static_cast<int>(kTxSlots));
  EXPECT_EQ(__CONST_RING_SIZE(netif_rx, 4096), static_cast<int>(kRxSlots));

  const TxRequest request = DecodeTxRequest(TxSlot(0x12345678, 100, kTxMoreData, 7, 1500));
  EXPECT_EQ(request.gref, 0x12345678u);
  EXPECT_EQ(request.offset, 100);
  EXPECT_EQ(request.flags, kTxMoreData);
  EXPECT_EQ(request.id, 7);
  EXPECT_EQ(request.size, 1500);

  netif_tx_response_t tx_response;
  const auto tx_bytes = EncodeTxResponse(9, kRspError);
  std::memcpy(&tx_response, tx_bytes.data(), sizeof(tx_response));
  EXPECT_EQ(tx_response.id, 9);
  EXPECT_EQ(tx_response.status, NETIF_RSP_ERROR);
  EXPECT_THAT(std::vector<uint8_t>(tx_bytes.begin() + 4, tx_bytes.end()), ::testing::Each(0));

  netif_rx_request_t rx_request{3, 0, 0xabcdef};
  std::array<uint8_t, kRxSlotSize> rx_slot;
  std::memcpy(rx_slot.data(), &rx_request, sizeof(rx_request));
  EXPECT_EQ(DecodeRxRequest(rx_slot).id, 3);
  EXPECT_EQ(DecodeRxRequest(rx_slot).gref, 0xabcdefu);
  netif_rx_response_t rx_response;
  const auto rx_bytes = EncodeRxResponse(3, 0, kRxMoreData, 4096);
  std::memcpy(&rx_response, rx_bytes.data(), sizeof(rx_response));
  EXPECT_EQ(rx_response.id, 3);
  EXPECT_EQ(rx_response.flags, NETRXF_more_data);
  EXPECT_EQ(rx_response.status, 4096);
}

TEST(NetifTest, OneSlotPacket) {
  TxPacket packet = Parse({TxSlot(5, 64, kTxCsumBlank, 1, 60)});
  ASSERT_EQ(packet.verdict, TxVerdict::kSend) << packet.reason;
  EXPECT_EQ(packet.slots, 1u);
  EXPECT_EQ(packet.size, 60u);
  ASSERT_EQ(packet.pieces.size(), 1u);
  EXPECT_EQ(packet.pieces[0].gref, 5u);
  EXPECT_EQ(packet.pieces[0].offset, 64);
  EXPECT_EQ(packet.pieces[0].length, 60);
  EXPECT_EQ(packet.flags, kTxCsumBlank);
}

// The first request's size is the whole packet's; the first piece holds what the rest do not.
TEST(NetifTest, ChainedSlotsWithAnExtra) {
  TxPacket packet = Parse({TxSlot(1, 0, kTxMoreData | kTxExtraInfo, 1, 5000), ExtraSlot(kExtraGso, 0, 1448),
                           TxSlot(2, 0, kTxMoreData, 2, 4096), TxSlot(3, 0, 0, 3, 800)});
  ASSERT_EQ(packet.verdict, TxVerdict::kSend) << packet.reason;
  EXPECT_EQ(packet.slots, 4u);
  ASSERT_EQ(packet.requests.size(), 4u);
  EXPECT_FALSE(packet.requests[1].has_value());  // the extra slot: answered NULL
  ASSERT_TRUE(packet.gso.has_value());
  EXPECT_EQ(packet.gso->gso_size, 1448);
  ASSERT_EQ(packet.pieces.size(), 3u);
  EXPECT_EQ(packet.pieces[0].length, 5000 - 4096 - 800);
  EXPECT_EQ(packet.pieces[1].length, 4096);
  EXPECT_EQ(packet.pieces[2].length, 800);
}

// MCAST_ADD/DEL as Xen's header lays the address out (the union's mcast.addr), on a slot that
// carries no data: a control request, whatever its size says.
TEST(NetifTest, MulticastControlRequests) {
  netif_extra_info_t extra{};
  extra.type = XEN_NETIF_EXTRA_TYPE_MCAST_ADD;
  const uint8_t group[6] = {0x01, 0x00, 0x5e, 0x7f, 0xff, 0xfa};
  std::memcpy(extra.u.mcast.addr, group, 6);
  Slot extra_slot{};
  std::memcpy(extra_slot.data(), &extra, sizeof(extra));
  TxPacket packet = Parse({TxSlot(0, 0, kTxExtraInfo, 9, 0), extra_slot});
  ASSERT_EQ(packet.verdict, TxVerdict::kControl) << packet.reason;
  EXPECT_EQ(packet.slots, 2u);
  ASSERT_TRUE(packet.multicast.has_value());
  EXPECT_EQ(packet.multicast->type, kExtraMcastAdd);
  EXPECT_EQ(std::memcmp(packet.multicast->mcast_address.data(), group, 6), 0);
  EXPECT_EQ(kExtraMcastAdd, XEN_NETIF_EXTRA_TYPE_MCAST_ADD);
  EXPECT_EQ(kExtraMcastDel, XEN_NETIF_EXTRA_TYPE_MCAST_DEL);
}

TEST(NetifTest, IncompletePacketsWait) {
  EXPECT_EQ(Parse({}).verdict, TxVerdict::kIncomplete);
  EXPECT_EQ(Parse({TxSlot(1, 0, kTxMoreData, 1, 2000)}).verdict, TxVerdict::kIncomplete);
  EXPECT_EQ(Parse({TxSlot(1, 0, kTxExtraInfo, 1, 2000)}).verdict, TxVerdict::kIncomplete);
}

TEST(NetifTest, TooManySlotsAreDroppedThenFatal) {
  auto chain = [](uint32_t count) {
    std::vector<Slot> slots;
    for (uint32_t i = 0; i < count; ++i) {
      slots.push_back(TxSlot(i, 0, i + 1 < count ? kTxMoreData : 0, static_cast<uint16_t>(i), i == 0 ? 2000 : 10));
    }
    return slots;
  };
  EXPECT_EQ(Parse(chain(kMaxDataSlots)).verdict, TxVerdict::kSend);
  TxPacket dropped = Parse(chain(kMaxDataSlots + 1));
  EXPECT_EQ(dropped.verdict, TxVerdict::kDrop);
  EXPECT_EQ(dropped.slots, kMaxDataSlots + 1);  // all of it taken off the ring, each answered
  EXPECT_EQ(dropped.requests.size(), kMaxDataSlots + 1);
  EXPECT_EQ(Parse(chain(kFatalDataSlots + 1)).verdict, TxVerdict::kFatal);
}

TEST(NetifTest, MalformedPackets) {
  // A piece crossing its page: fatal, as netback has it.
  EXPECT_EQ(Parse({TxSlot(1, 4000, 0, 1, 200)}).verdict, TxVerdict::kFatal);
  EXPECT_EQ(Parse({TxSlot(1, 0, kTxMoreData, 1, 3000), TxSlot(2, 4000, 0, 2, 200)}).verdict, TxVerdict::kFatal);
  // The rest larger than the packet: dropped.
  EXPECT_EQ(Parse({TxSlot(1, 0, kTxMoreData, 1, 100), TxSlot(2, 0, 0, 2, 200)}).verdict, TxVerdict::kDrop);
  // Shorter than an Ethernet header: dropped.
  EXPECT_EQ(Parse({TxSlot(1, 0, 0, 1, 10)}).verdict, TxVerdict::kDrop);
  // Extra-info of no known type, or more of them than there are types: fatal.
  EXPECT_EQ(Parse({TxSlot(1, 0, kTxExtraInfo, 1, 100), ExtraSlot(0, 0, 0)}).verdict, TxVerdict::kFatal);
  EXPECT_EQ(Parse({TxSlot(1, 0, kTxExtraInfo, 1, 100), ExtraSlot(9, 0, 0)}).verdict, TxVerdict::kFatal);
  std::vector<Slot> endless = {TxSlot(1, 0, kTxExtraInfo, 1, 100)};
  for (int i = 0; i < 8; ++i) endless.push_back(ExtraSlot(kExtraGso, kExtraFlagMore, 1448));
  EXPECT_EQ(Parse(endless).verdict, TxVerdict::kFatal);
  // GSO that cannot be segmented (no segment size, not TCP): fatal, as netback has it.
  EXPECT_EQ(Parse({TxSlot(1, 0, kTxExtraInfo, 1, 100), ExtraSlot(kExtraGso, 0, 0)}).verdict, TxVerdict::kFatal);
  Slot udp_gso = ExtraSlot(kExtraGso, 0, 1448);
  udp_gso[4] = 3;
  TxPacket bad_type = Parse({TxSlot(1, 0, kTxExtraInfo, 1, 100), udp_gso});
  EXPECT_EQ(bad_type.verdict, TxVerdict::kFatal);
  EXPECT_THAT(bad_type.reason, ::testing::HasSubstr("GSO type 3"));
}

// The GSO extra-info slot of a received packet, as Xen's header lays it out over a response.
TEST(NetifTest, ReceiveGsoExtraIsXens) {
  const std::array<uint8_t, kRxSlotSize> slot = EncodeRxGsoExtra(kGsoTcpV6, 1428);
  netif_extra_info_t extra{};
  std::memcpy(&extra, slot.data(), sizeof(extra));
  EXPECT_EQ(extra.type, XEN_NETIF_EXTRA_TYPE_GSO);
  EXPECT_EQ(extra.flags, 0);
  EXPECT_EQ(extra.u.gso.size, 1428);
  EXPECT_EQ(extra.u.gso.type, XEN_NETIF_GSO_TYPE_TCPV6);
  EXPECT_EQ(extra.u.gso.features, 0);
  EXPECT_EQ(kGsoTcpV4, XEN_NETIF_GSO_TYPE_TCPV4);
  EXPECT_EQ(NETRXF_extra_info, kRxExtraInfo);
  EXPECT_EQ(NETRXF_csum_blank, kRxCsumBlank);
  EXPECT_EQ(NETRXF_data_validated, kRxDataValidated);
}

// The one's-complement sum over the pseudo-header and the L4 segment of a packet with a correct
// checksum is 0xffff.
uint16_t VerifySum(const std::vector<uint8_t>& frame, size_t l4, size_t length, const uint8_t* addresses,
                   size_t address_bytes, uint8_t protocol) {
  uint32_t sum = protocol + length;
  for (size_t i = 0; i < address_bytes; i += 2) sum += (addresses[i] << 8) | addresses[i + 1];
  for (size_t i = 0; i < length; i += 2) {
    sum += (frame[l4 + i] << 8) | (i + 1 < length ? frame[l4 + i + 1] : 0);
  }
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return static_cast<uint16_t>(sum);
}

std::vector<uint8_t> Frame(uint16_t ethertype, size_t l3_header, size_t l4_length) {
  std::vector<uint8_t> frame(14 + l3_header + l4_length, 0);
  frame[12] = static_cast<uint8_t>(ethertype >> 8);
  frame[13] = static_cast<uint8_t>(ethertype);
  for (size_t i = 14 + l3_header; i < frame.size(); ++i) frame[i] = static_cast<uint8_t>(i * 7 + 3);
  return frame;
}

TEST(NetifTest, BlankChecksumsAreFilledIn) {
  for (uint8_t protocol : {6, 17}) {
    const size_t l4_length = 101;  // odd: the last byte padded
    std::vector<uint8_t> v4 = Frame(0x0800, 20, l4_length);
    v4[14] = 0x45;
    v4[16] = 0;
    v4[17] = static_cast<uint8_t>(20 + l4_length);
    v4[23] = protocol;
    const uint8_t v4_addresses[] = {10, 0, 2, 2, 10, 0, 2, 1};
    std::memcpy(&v4[26], v4_addresses, 8);
    ASSERT_TRUE(CompleteChecksum(v4));
    EXPECT_EQ(VerifySum(v4, 34, l4_length, v4_addresses, 8, protocol), 0xffff) << int{protocol};

    std::vector<uint8_t> v6 = Frame(0x86dd, 40, l4_length);
    v6[14] = 0x60;
    v6[19] = static_cast<uint8_t>(l4_length);
    v6[20] = protocol;
    for (int i = 0; i < 32; ++i) v6[22 + i] = static_cast<uint8_t>(0xfd + i);
    ASSERT_TRUE(CompleteChecksum(v6));
    EXPECT_EQ(VerifySum(v6, 54, l4_length, &v6[22], 32, protocol), 0xffff) << int{protocol};

    // Behind a hop-by-hop options header (8 bytes): summed from where TCP or UDP starts.
    std::vector<uint8_t> options = Frame(0x86dd, 48, l4_length);
    options[14] = 0x60;
    options[19] = static_cast<uint8_t>(8 + l4_length);
    options[20] = 0;  // hop-by-hop
    options[54] = protocol;
    options[55] = 0;  // (0 + 1) * 8 bytes
    for (int i = 0; i < 32; ++i) options[22 + i] = static_cast<uint8_t>(0x20 + i);
    ASSERT_TRUE(CompleteChecksum(options));
    EXPECT_EQ(VerifySum(options, 62, l4_length, &options[22], 32, protocol), 0xffff) << int{protocol};
    options[20] = 43;  // a routing header instead: not completed
    EXPECT_FALSE(CompleteChecksum(options));
    options[20] = 0;
    options[55] = 200;  // an options header longer than the packet
    EXPECT_FALSE(CompleteChecksum(options));
  }
  std::vector<uint8_t> arp = Frame(0x0806, 28, 0);
  EXPECT_FALSE(CompleteChecksum(arp));
  std::vector<uint8_t> truncated = Frame(0x0800, 20, 8);
  truncated[14] = 0x45;
  truncated[17] = 200;  // longer than the frame
  truncated[23] = 17;
  EXPECT_FALSE(CompleteChecksum(truncated));
  EXPECT_FALSE(CompleteChecksum(std::span<uint8_t>()));
}

// A partial checksum (what a tap with offloads takes): the pseudo-header's sum in the field, and
// where the sum starts; completing it later gives what CompleteChecksum gives at once, whatever
// the frontend had left in the field. Ethernet padding past the IP packet is not summed.
TEST(NetifTest, PartialChecksumsArePreparedAndCompleted) {
  for (uint8_t protocol : {6, 17}) {
    const size_t l4_length = 33;
    std::vector<uint8_t> frame = Frame(0x0800, 20, l4_length);
    frame[14] = 0x45;
    frame[17] = static_cast<uint8_t>(20 + l4_length);
    frame[23] = protocol;
    const uint8_t addresses[] = {192, 168, 7, 1, 192, 168, 7, 2};
    std::memcpy(&frame[26], addresses, 8);
    std::vector<uint8_t> whole = frame;
    ASSERT_TRUE(CompleteChecksum(whole));

    const size_t field = 34 + (protocol == 6 ? 16 : 6);
    frame[field] = 0x12;  // whatever was there
    frame[field + 1] = 0x34;
    frame.resize(frame.size() + 5, 0xee);  // padding
    std::optional<ChecksumPlace> place = PreparePartialChecksum(frame);
    ASSERT_TRUE(place.has_value());
    EXPECT_EQ(place->start, 34u);
    EXPECT_EQ(place->offset, protocol == 6 ? 16u : 6u);
    EXPECT_EQ(place->end, 34 + l4_length);
    EXPECT_EQ(place->protocol, protocol);
    EXPECT_FALSE(place->ipv6);
    uint32_t pseudo = protocol + l4_length;
    for (size_t i = 0; i < 8; i += 2) pseudo += (addresses[i] << 8) | addresses[i + 1];
    while (pseudo >> 16) pseudo = (pseudo & 0xffff) + (pseudo >> 16);
    EXPECT_EQ((frame[field] << 8) | frame[field + 1], pseudo);

    ASSERT_TRUE(CompletePartialChecksum(std::span<uint8_t>(frame).first(place->end), place->start, place->offset));
    EXPECT_EQ(frame[field], whole[field]);
    EXPECT_EQ(frame[field + 1], whole[field + 1]);
  }
  std::vector<uint8_t> small(20);
  EXPECT_FALSE(CompletePartialChecksum(small, 10, 9));  // the field past the end
  EXPECT_FALSE(CompletePartialChecksum(small, 30, 0));
  EXPECT_TRUE(CompletePartialChecksum(small, 10, 8));
}

}  // namespace
}  // namespace xenkvm::xenbus::netif
