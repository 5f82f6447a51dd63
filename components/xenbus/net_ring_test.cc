#include "components/xenbus/net_ring.h"

#include <array>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/frontends/netfront.h"
#include "tests/frontends/socket_pair_device.h"

namespace xenkvm::xenbus {
namespace {

using testing::GuestGrants;
using testing::Netfront;
using testing::SocketPairDevice;

constexpr uint64_t kTableGfn = 0x10;
constexpr uint64_t kTxRingGfn = 0x20, kRxRingGfn = 0x21;
constexpr uint64_t kDataGfn = 0x30;  // 0x30..0x4f: packet pages

class NetRingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    memory_ = std::make_unique<memory::GuestMemory>(
        std::move(memory::GuestMemory::Create({{memory::GuestAddress(0), 1 << 20}})).value());
    grants_ = std::make_unique<xen::GrantTable>(*memory_, 4);
    ASSERT_EQ(grants_->MapFrame(0, kTableGfn), 0);
    guest_grants_ = std::make_unique<GuestGrants>(*memory_, kTableGfn);
  }
  void Start(bool scatter_gather = false, NetRing::Options options = {}) {
    front_ = std::make_unique<Netfront>(*memory_, *guest_grants_, kTxRingGfn, kRxRingGfn);
    options.tx_ring_gref = front_->tx_ring_gref();
    options.rx_ring_gref = front_->rx_ring_gref();
    options.rx_scatter_gather = scatter_gather;
    auto ring = NetRing::Start(*memory_, *grants_, *device_, options, [this](bool transmit, bool receive) {
      ++notifications_;
      transmit_notifications_ += transmit;
      receive_notifications_ += receive;
    });
    ASSERT_TRUE(ring.ok()) << ring.status();
    ring_ = std::move(*ring);
  }
  void TearDown() override { ring_.reset(); }
  // Bytes `seed`, `seed`+1, ... at page `gfn`'s `offset`.
  void Fill(uint64_t gfn, uint16_t offset, size_t length, uint8_t seed) {
    std::vector<uint8_t> bytes(length);
    for (size_t i = 0; i < length; ++i) bytes[i] = static_cast<uint8_t>(seed + i);
    ASSERT_TRUE(memory_->Write(memory::GuestAddress((gfn << 12) + offset), bytes).ok());
  }
  std::vector<uint8_t> Page(uint64_t gfn, size_t length) {
    std::vector<uint8_t> bytes(length);
    EXPECT_TRUE(memory_->Read(memory::GuestAddress(gfn << 12), bytes).ok());
    return bytes;
  }
  NetRingStatistics Statistics() { return ring_->Statistics(); }

  std::unique_ptr<memory::GuestMemory> memory_;
  std::unique_ptr<xen::GrantTable> grants_;
  std::unique_ptr<GuestGrants> guest_grants_;
  std::unique_ptr<SocketPairDevice> device_ = std::make_unique<SocketPairDevice>();
  std::unique_ptr<Netfront> front_;
  std::unique_ptr<NetRing> ring_;
  std::atomic<int> notifications_{0};
  std::atomic<int> transmit_notifications_{0};  // calls that asked for the tx ring's channel
  std::atomic<int> receive_notifications_{0};
};

std::vector<uint8_t> Expected(size_t length, uint8_t seed) {
  std::vector<uint8_t> bytes(length);
  for (size_t i = 0; i < length; ++i) bytes[i] = static_cast<uint8_t>(seed + i);
  return bytes;
}

// Ethernet, IPv4 (10.0.0.1 to 10.0.0.2), TCP, then `payload` bytes; the TCP checksum blank.
std::vector<uint8_t> TcpV4Frame(size_t payload) {
  std::vector<uint8_t> frame(54 + payload);
  frame[12] = 0x08;
  frame[14] = 0x45;
  frame[16] = static_cast<uint8_t>((40 + payload) >> 8);
  frame[17] = static_cast<uint8_t>(40 + payload);
  frame[22] = 64;
  frame[23] = 6;
  const uint8_t addresses[] = {10, 0, 0, 1, 10, 0, 0, 2};
  std::copy(std::begin(addresses), std::end(addresses), frame.begin() + 26);
  frame[46] = 0x50;  // a 20-byte TCP header
  for (size_t i = 54; i < frame.size(); ++i) frame[i] = static_cast<uint8_t>(i * 3);
  return frame;
}

// The TCP checksum of a frame as the host would complete it.
std::pair<uint8_t, uint8_t> CompletedChecksum(std::vector<uint8_t> frame) {
  EXPECT_TRUE(netif::CompleteChecksum(frame));
  return {frame[50], frame[51]};
}

TEST_F(NetRingTest, TransmitsAPacketFromGrantedPages) {
  Start();
  Fill(kDataGfn, 100, 60, 7);
  front_->PutTx(Netfront::TxSlot(guest_grants_->Grant(kDataGfn, true), 100, 0, 5, 60));
  front_->PublishTx();
  ring_->Kick();
  std::vector<Netfront::TxResponse> responses = front_->TakeTx(1);
  ASSERT_EQ(responses.size(), 1u);
  EXPECT_EQ(responses[0].id, 5);
  EXPECT_EQ(responses[0].status, netif::kRspOkay);
  std::optional<std::vector<uint8_t>> frame = device_->Receive();
  ASSERT_TRUE(frame.has_value());
  EXPECT_EQ(*frame, Expected(60, 7));
  EXPECT_EQ(Statistics().tx_packets, 1u);
  EXPECT_EQ(Statistics().tx_bytes, 60u);
  EXPECT_GT(notifications_.load(), 0);
  EXPECT_GT(transmit_notifications_.load(), 0);
  EXPECT_EQ(receive_notifications_.load(), 0);
}

// Three slots across pages, an extra-info slot answered NULL, the first slot holding what the
// rest do not.
TEST_F(NetRingTest, TransmitsAPacketSpreadOverSlots) {
  Start();
  Fill(kDataGfn, 4000, 96, 1);
  Fill(kDataGfn + 1, 0, 4096, 97);
  Fill(kDataGfn + 2, 0, 8, static_cast<uint8_t>(97 + 4096));
  front_->PutTx(Netfront::TxSlot(guest_grants_->Grant(kDataGfn, true), 4000, netif::kTxMoreData, 1, 96 + 4096 + 8));
  front_->PutTx(Netfront::TxSlot(guest_grants_->Grant(kDataGfn + 1, true), 0, netif::kTxMoreData, 2, 4096));
  front_->PutTx(Netfront::TxSlot(guest_grants_->Grant(kDataGfn + 2, true), 0, 0, 3, 8));
  front_->PublishTx();
  ring_->Kick();
  std::vector<Netfront::TxResponse> responses = front_->TakeTx(3);
  ASSERT_EQ(responses.size(), 3u);
  for (const auto& response : responses) EXPECT_EQ(response.status, netif::kRspOkay);
  std::optional<std::vector<uint8_t>> frame = device_->Receive();
  ASSERT_TRUE(frame.has_value());
  EXPECT_EQ(*frame, Expected(96 + 4096 + 8, 1));
}

// An ungranted page, a page granted to another domain, a malformed packet: answered with errors,
// nothing sent, the ring still served.
TEST_F(NetRingTest, BadGrantsAndMalformedPacketsAreAnsweredWithErrors) {
  Start();
  front_->PutTx(Netfront::TxSlot(999, 0, 0, 1, 60));
  front_->PutTx(Netfront::TxSlot(guest_grants_->Grant(kDataGfn, true, /*domid=*/7), 0, 0, 2, 60));
  front_->PutTx(Netfront::TxSlot(guest_grants_->Grant(kDataGfn, true), 0, netif::kTxMoreData, 3, 10));
  front_->PutTx(Netfront::TxSlot(guest_grants_->Grant(kDataGfn, true), 0, 0, 4, 20));  // more than the packet
  Fill(kDataGfn + 1, 0, 60, 3);
  front_->PutTx(Netfront::TxSlot(guest_grants_->Grant(kDataGfn + 1, true), 0, 0, 5, 60));
  front_->PublishTx();
  ring_->Kick();
  std::vector<Netfront::TxResponse> responses = front_->TakeTx(5);
  ASSERT_EQ(responses.size(), 5u);
  EXPECT_EQ(responses[0].status, netif::kRspError);
  EXPECT_EQ(responses[1].status, netif::kRspError);
  EXPECT_EQ(responses[2].status, netif::kRspError);
  EXPECT_EQ(responses[3].status, netif::kRspError);
  EXPECT_EQ(responses[4].status, netif::kRspOkay);
  std::optional<std::vector<uint8_t>> frame = device_->Receive();
  ASSERT_TRUE(frame.has_value());
  EXPECT_EQ(*frame, Expected(60, 3));  // only the good one
  EXPECT_FALSE(device_->Receive(absl::Milliseconds(50)).has_value());
  EXPECT_EQ(Statistics().tx_errors, 2u);
  EXPECT_EQ(Statistics().tx_dropped, 1u);
  EXPECT_FALSE(Statistics().broken);
}

// What netback calls fatal, and a producer index beyond the ring: the ring is no longer served.
TEST_F(NetRingTest, AProtocolBreachStopsTheRing) {
  Start();
  front_->PutTx(Netfront::TxSlot(guest_grants_->Grant(kDataGfn, true), 4000, 0, 1, 200));  // crosses its page
  front_->PublishTx();
  ring_->Kick();
  for (int i = 0; i < 500 && !Statistics().broken; ++i) absl::SleepFor(absl::Milliseconds(2));
  EXPECT_TRUE(Statistics().broken);
  EXPECT_THAT(Statistics().broken_reason, ::testing::HasSubstr("crosses its page"));

  ring_.reset();
  Start();
  front_->SetTxProducer(netif::kTxSlots + 1);
  ring_->Kick();
  for (int i = 0; i < 500 && !Statistics().broken; ++i) absl::SleepFor(absl::Milliseconds(2));
  EXPECT_THAT(Statistics().broken_reason, ::testing::HasSubstr("index out of range"));
}

TEST_F(NetRingTest, ReceivesIntoPostedPagesAndHoldsFramesUntilThereAreSome) {
  Start();
  ASSERT_TRUE(device_->Send(Expected(100, 9)));  // nothing posted yet: held
  absl::SleepFor(absl::Milliseconds(20));
  EXPECT_EQ(Statistics().rx_packets, 0u);
  front_->PostRx(3, guest_grants_->Grant(kDataGfn, false));
  front_->PublishRx();
  ring_->Kick();
  std::vector<Netfront::RxResponse> responses = front_->TakeRx(1);
  ASSERT_EQ(responses.size(), 1u);
  EXPECT_EQ(responses[0].id, 3);
  EXPECT_EQ(responses[0].status, 100);
  EXPECT_EQ(responses[0].offset, 0);
  EXPECT_EQ(responses[0].flags, 0);
  EXPECT_EQ(Page(kDataGfn, 100), Expected(100, 9));
  EXPECT_EQ(Statistics().rx_packets, 1u);
  // Only the receive ring had responses: only its channel was asked for (split channels).
  EXPECT_GT(receive_notifications_.load(), 0);
  EXPECT_EQ(transmit_notifications_.load(), 0);
  // A page granted read-only cannot take a frame: an error response, the page untouched.
  front_->PostRx(4, guest_grants_->Grant(kDataGfn + 1, true));
  front_->PublishRx();
  ring_->Kick();
  ASSERT_TRUE(device_->Send(Expected(80, 1)));
  responses = front_->TakeRx(1);
  ASSERT_EQ(responses.size(), 1u);
  EXPECT_EQ(responses[0].status, netif::kRspError);
  EXPECT_EQ(Page(kDataGfn + 1, 80), std::vector<uint8_t>(80, 0));
  EXPECT_EQ(Statistics().rx_errors, 1u);
}

// Multicast control (request-multicast-control): the frontend adds and removes addresses with
// MCAST_ADD/DEL extras on a slot of no data; frames to other multicast addresses are not
// delivered, broadcast and unicast always are.
TEST_F(NetRingTest, MulticastControlFiltersWhatTheFrontendDidNotAdd) {
  NetRing::Options options;
  options.multicast_control = true;
  Start(false, options);
  const std::array<uint8_t, 6> group = {0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb};  // mDNS's
  auto control = [&](uint8_t type, const std::array<uint8_t, 6>& address, uint16_t id) {
    front_->PutTx(Netfront::TxSlot(0, 0, netif::kTxExtraInfo, id, 0));
    std::array<uint8_t, netif::kTxSlotSize> extra{};
    extra[0] = type;
    std::copy(address.begin(), address.end(), extra.begin() + 2);
    front_->PutTx(extra);
    front_->PublishTx();
    ring_->Kick();
    return front_->TakeTx(2);
  };
  std::vector<Netfront::TxResponse> responses = control(netif::kExtraMcastAdd, group, 1);
  ASSERT_EQ(responses.size(), 2u);
  EXPECT_EQ(responses[0].status, netif::kRspOkay);
  EXPECT_EQ(responses[1].status, netif::kRspNull);
  EXPECT_EQ(control(netif::kExtraMcastAdd, {0x02, 0, 0, 0, 0, 1}, 2).at(0).status, netif::kRspError);  // unicast
  EXPECT_FALSE(device_->Receive(absl::Milliseconds(20)).has_value());  // nothing was sent

  for (uint16_t id = 0; id < 8; ++id) front_->PostRx(id, guest_grants_->Grant(kDataGfn + id, false));
  front_->PublishRx();
  ring_->Kick();
  auto frame_to = [](std::array<uint8_t, 6> destination, uint8_t marker) {
    std::vector<uint8_t> frame(60, marker);
    std::copy(destination.begin(), destination.end(), frame.begin());
    return frame;
  };
  ASSERT_TRUE(device_->Send(frame_to({0x01, 0x00, 0x5e, 0x00, 0x00, 0x01}, 1)));  // not added: dropped
  ASSERT_TRUE(device_->Send(frame_to(group, 2)));
  ASSERT_TRUE(device_->Send(frame_to({0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, 3)));
  ASSERT_TRUE(device_->Send(frame_to({0x00, 0x16, 0x3e, 0, 0, 1}, 4)));
  std::vector<Netfront::RxResponse> received = front_->TakeRx(3);
  ASSERT_EQ(received.size(), 3u);
  EXPECT_EQ(Page(kDataGfn, 60)[59], 2);
  EXPECT_EQ(Page(kDataGfn + 1, 60)[59], 3);
  EXPECT_EQ(Page(kDataGfn + 2, 60)[59], 4);
  EXPECT_EQ(Statistics().rx_dropped, 1u);

  ASSERT_EQ(control(netif::kExtraMcastDel, group, 3).at(0).status, netif::kRspOkay);
  ASSERT_TRUE(device_->Send(frame_to(group, 5)));
  ASSERT_TRUE(device_->Send(frame_to({0x00, 0x16, 0x3e, 0, 0, 1}, 6)));
  received = front_->TakeRx(1);
  ASSERT_EQ(received.size(), 1u);
  EXPECT_EQ(Page(kDataGfn + 3, 60)[59], 6);  // the group's frame no longer came
  EXPECT_EQ(Statistics().rx_dropped, 2u);
}

// A frame over a page: dropped when the frontend takes one slot a frame, spread over slots with
// NETRXF_more_data when it offers feature-sg.
TEST_F(NetRingTest, FramesOverAPageNeedScatterGather) {
  Start(/*scatter_gather=*/false);
  front_->PostRx(1, guest_grants_->Grant(kDataGfn, false));
  front_->PostRx(2, guest_grants_->Grant(kDataGfn + 1, false));
  front_->PublishRx();
  ring_->Kick();
  ASSERT_TRUE(device_->Send(Expected(6000, 5)));
  for (int i = 0; i < 500 && Statistics().rx_dropped == 0; ++i) absl::SleepFor(absl::Milliseconds(2));
  EXPECT_EQ(Statistics().rx_dropped, 1u);

  ring_.reset();
  Start(/*scatter_gather=*/true);
  front_->PostRx(1, guest_grants_->Grant(kDataGfn, false));
  front_->PostRx(2, guest_grants_->Grant(kDataGfn + 1, false));
  front_->PublishRx();
  ring_->Kick();
  ASSERT_TRUE(device_->Send(Expected(6000, 5)));
  std::vector<Netfront::RxResponse> responses = front_->TakeRx(2);
  ASSERT_EQ(responses.size(), 2u);
  EXPECT_EQ(responses[0].status, 4096);
  EXPECT_EQ(responses[0].flags, netif::kRxMoreData);
  EXPECT_EQ(responses[1].status, 6000 - 4096);
  EXPECT_EQ(responses[1].flags, 0);
  std::vector<uint8_t> joined = Page(kDataGfn, 4096);
  const std::vector<uint8_t> rest = Page(kDataGfn + 1, 6000 - 4096);
  joined.insert(joined.end(), rest.begin(), rest.end());
  EXPECT_EQ(joined, Expected(6000, 5));
}

// With a device that offloads (a tap with IFF_VNET_HDR): a blank checksum goes to it partial (the
// pseudo-header's sum in the field), a GSO packet with its segmentation; GSO that does not match
// its headers is an error response.
TEST_F(NetRingTest, TransmittedOffloadsGoToTheDevice) {
  device_ = std::make_unique<SocketPairDevice>(/*offloads=*/true);
  Start(/*scatter_gather=*/true);
  const std::vector<uint8_t> small = TcpV4Frame(100);
  ASSERT_TRUE(memory_->Write(memory::GuestAddress(kDataGfn << 12), small).ok());
  front_->PutTx(Netfront::TxSlot(guest_grants_->Grant(kDataGfn, true), 0, netif::kTxCsumBlank, 1,
                                 static_cast<uint16_t>(small.size())));
  front_->PublishTx();
  ring_->Kick();
  ASSERT_EQ(front_->TakeTx(1).at(0).status, netif::kRspOkay);
  net::FrameOffload offload;
  std::optional<std::vector<uint8_t>> sent = device_->Receive(absl::Seconds(5), &offload);
  ASSERT_TRUE(sent.has_value());
  EXPECT_TRUE(offload.partial_checksum);
  EXPECT_EQ(offload.checksum_start, 34);
  EXPECT_EQ(offload.checksum_offset, 16);
  EXPECT_EQ(offload.segmentation, net::FrameOffload::Segmentation::kNone);
  ASSERT_TRUE(netif::CompletePartialChecksum(*sent, 34, 16));
  EXPECT_EQ(std::make_pair((*sent)[50], (*sent)[51]), CompletedChecksum(small));

  // 9000 bytes in three slots behind a GSO extra: one frame to the device, to be segmented.
  const std::vector<uint8_t> large = TcpV4Frame(9000 - 54);
  ASSERT_TRUE(memory_->Write(memory::GuestAddress((kDataGfn + 1) << 12), large).ok());
  auto gso_extra = [](uint8_t type) {
    std::array<uint8_t, netif::kTxSlotSize> extra{};
    extra[0] = netif::kExtraGso;
    extra[2] = 1448 & 0xff;
    extra[3] = 1448 >> 8;
    extra[4] = type;
    return extra;
  };
  auto put_large = [&](uint16_t id, uint8_t gso_type) {
    front_->PutTx(Netfront::TxSlot(guest_grants_->Grant(kDataGfn + 1, true), 0,
                                   netif::kTxCsumBlank | netif::kTxExtraInfo | netif::kTxMoreData, id, 9000));
    front_->PutTx(gso_extra(gso_type));
    front_->PutTx(Netfront::TxSlot(guest_grants_->Grant(kDataGfn + 2, true), 0, netif::kTxMoreData, id + 1, 4096));
    front_->PutTx(Netfront::TxSlot(guest_grants_->Grant(kDataGfn + 3, true), 0, 0, id + 2, 9000 - 8192));
    front_->PublishTx();
    ring_->Kick();
    return front_->TakeTx(4);
  };
  std::vector<Netfront::TxResponse> responses = put_large(2, netif::kGsoTcpV4);
  ASSERT_EQ(responses.size(), 4u);
  EXPECT_EQ(responses[0].status, netif::kRspOkay);
  EXPECT_EQ(responses[1].status, netif::kRspNull);
  sent = device_->Receive(absl::Seconds(5), &offload);
  ASSERT_TRUE(sent.has_value());
  EXPECT_EQ(sent->size(), 9000u);
  EXPECT_EQ(offload.segmentation, net::FrameOffload::Segmentation::kTcpV4);
  EXPECT_EQ(offload.segment_size, 1448);
  EXPECT_TRUE(offload.partial_checksum);
  EXPECT_EQ(std::vector<uint8_t>(sent->begin() + 54, sent->begin() + 4096), std::vector<uint8_t>(large.begin() + 54, large.begin() + 4096));

  // TCPv6 segmentation over IPv4: an error, nothing sent.
  responses = put_large(5, netif::kGsoTcpV6);
  ASSERT_EQ(responses.size(), 4u);
  EXPECT_EQ(responses[0].status, netif::kRspError);
  EXPECT_FALSE(device_->Receive(absl::Milliseconds(50)).has_value());
  EXPECT_EQ(Statistics().tx_errors, 1u);
  EXPECT_EQ(Statistics().tx_packets, 2u);
  EXPECT_EQ(Statistics().tx_segmentation_offloaded, 1u);
}

// Without offloads on the device, a blank checksum is filled in here and GSO (not offered) is an
// error.
TEST_F(NetRingTest, WithoutDeviceOffloadsChecksumsAreCompletedAndGsoRefused) {
  Start(/*scatter_gather=*/true);
  const std::vector<uint8_t> small = TcpV4Frame(100);
  ASSERT_TRUE(memory_->Write(memory::GuestAddress(kDataGfn << 12), small).ok());
  const uint32_t page = guest_grants_->Grant(kDataGfn, true);
  front_->PutTx(Netfront::TxSlot(page, 0, netif::kTxCsumBlank, 1, static_cast<uint16_t>(small.size())));
  front_->PutTx(Netfront::TxSlot(page, 0, netif::kTxCsumBlank | netif::kTxExtraInfo, 2,
                                 static_cast<uint16_t>(small.size())));
  std::array<uint8_t, netif::kTxSlotSize> extra{netif::kExtraGso, 0, 100, 0, netif::kGsoTcpV4};
  front_->PutTx(extra);
  front_->PublishTx();
  ring_->Kick();
  std::vector<Netfront::TxResponse> responses = front_->TakeTx(3);
  ASSERT_EQ(responses.size(), 3u);
  EXPECT_EQ(responses[0].status, netif::kRspOkay);
  EXPECT_EQ(responses[1].status, netif::kRspError);
  std::optional<std::vector<uint8_t>> sent = device_->Receive();
  ASSERT_TRUE(sent.has_value());
  EXPECT_EQ(std::make_pair((*sent)[50], (*sent)[51]), CompletedChecksum(small));
  EXPECT_FALSE(device_->Receive(absl::Milliseconds(50)).has_value());
}

// A segmentation-pending frame from the device (a tap that was told the frontend takes TSO):
// NETRXF_extra_info, csum_blank and data_validated on its first response, the GSO extra in the
// next slot (its request's page left alone), the data in the slots after. A frontend that takes
// no GSO gets none (dropped); one that takes no partial checksums gets the checksum completed.
TEST_F(NetRingTest, ReceivedOffloadsReachTheFrontendAsItTakesThem) {
  device_ = std::make_unique<SocketPairDevice>(/*offloads=*/true);
  NetRing::Options options;
  options.rx_partial_checksum = options.rx_gso_tcpv4 = true;
  Start(/*scatter_gather=*/true, options);
  for (uint16_t id = 0; id < 4; ++id) front_->PostRx(id, guest_grants_->Grant(kDataGfn + id, false));
  front_->PublishRx();
  ring_->Kick();
  std::vector<uint8_t> large = TcpV4Frame(10000 - 54);
  std::vector<uint8_t> partial = large;
  ASSERT_TRUE(netif::PreparePartialChecksum(partial).has_value());
  net::FrameOffload offload;
  offload.segmentation = net::FrameOffload::Segmentation::kTcpV4;
  offload.segment_size = 1448;
  offload.partial_checksum = true;
  offload.checksum_start = 34;
  offload.checksum_offset = 16;
  ASSERT_TRUE(device_->Send(partial, offload));
  std::vector<Netfront::RxResponse> responses = front_->TakeRx(4);
  ASSERT_EQ(responses.size(), 4u);
  EXPECT_EQ(responses[0].id, 0);
  EXPECT_EQ(responses[0].status, 4096);
  EXPECT_EQ(responses[0].flags,
            netif::kRxExtraInfo | netif::kRxMoreData | netif::kRxCsumBlank | netif::kRxDataValidated);
  // The extra-info slot, read as a response: type GSO, no flags; its size where the offset is,
  // its GSO type in the flags' low byte.
  EXPECT_EQ(responses[1].id, netif::kExtraGso);
  EXPECT_EQ(responses[1].offset, 1448);
  EXPECT_EQ(responses[1].flags, netif::kGsoTcpV4);
  EXPECT_EQ(responses[2].id, 2);
  EXPECT_EQ(responses[2].status, 4096);
  EXPECT_EQ(responses[2].flags, netif::kRxMoreData);
  EXPECT_EQ(responses[3].status, 10000 - 8192);
  EXPECT_EQ(responses[3].flags, 0);
  std::vector<uint8_t> joined = Page(kDataGfn, 4096);
  for (uint64_t gfn : {kDataGfn + 2, kDataGfn + 3}) {
    const std::vector<uint8_t> rest = Page(gfn, gfn == kDataGfn + 2 ? 4096 : 10000 - 8192);
    joined.insert(joined.end(), rest.begin(), rest.end());
  }
  EXPECT_EQ(joined, partial);
  EXPECT_EQ(Page(kDataGfn + 1, 16), std::vector<uint8_t>(16, 0));
  EXPECT_EQ(Statistics().rx_segmentation_offloaded, 1u);

  ring_.reset();
  options.rx_partial_checksum = options.rx_gso_tcpv4 = false;
  Start(/*scatter_gather=*/true, options);
  ASSERT_TRUE(device_->Send(partial, offload));  // GSO: not taken, dropped
  offload.segmentation = net::FrameOffload::Segmentation::kNone;
  std::vector<uint8_t> small = large;
  small.resize(54 + 200);
  small[16] = 0;  // the IP length of the shorter packet
  small[17] = 240;
  std::vector<uint8_t> small_sent = small;
  ASSERT_TRUE(netif::PreparePartialChecksum(small_sent).has_value());
  // Held while no slot is posted, looked at again and again (an even and an odd number of times:
  // completing a checksum twice gives back the partial one): completed once only.
  for (int kicks : {4, 5}) {
    ASSERT_TRUE(device_->Send(small_sent, offload));
    for (int i = 0; i < kicks; ++i) {
      ring_->Kick();
      absl::SleepFor(absl::Milliseconds(5));
    }
    const uint64_t gfn = kDataGfn + 4 + static_cast<uint64_t>(kicks);
    front_->PostRx(static_cast<uint16_t>(kicks), guest_grants_->Grant(gfn, false));
    front_->PublishRx();
    ring_->Kick();
    responses = front_->TakeRx(1);
    ASSERT_EQ(responses.size(), 1u);
    EXPECT_EQ(responses[0].status, 254);
    EXPECT_EQ(responses[0].flags, netif::kRxDataValidated);  // completed here
    const std::vector<uint8_t> delivered = Page(gfn, 254);
    EXPECT_EQ(std::make_pair(delivered[50], delivered[51]), CompletedChecksum(small)) << kicks << " kicks";
  }
  EXPECT_EQ(Statistics().rx_dropped, 1u);
}

// 20 KB each way at 50 KB/s with 5 KB at once: the first 5 KB at once, the rest over ~300 ms,
// every byte delivered.
TEST_F(NetRingTest, RateLimitsHoldPacketsUntilTheirBytesAreThere) {
  NetRing::Options options;
  options.tx_bytes_per_second = options.rx_bytes_per_second = 50'000;
  options.tx_burst = options.rx_burst = 5'000;
  Start(false, options);
  Fill(kDataGfn, 0, 1000, 1);
  const uint32_t page = guest_grants_->Grant(kDataGfn, true);
  absl::Time start = absl::Now();
  for (uint16_t id = 0; id < 20; ++id) front_->PutTx(Netfront::TxSlot(page, 0, 0, id, 1000));
  front_->PublishTx();
  ring_->Kick();
  EXPECT_EQ(front_->TakeTx(20).size(), 20u);
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(250));
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(device_->Receive().has_value()) << i;
  EXPECT_EQ(Statistics().tx_packets, 20u);

  for (uint16_t id = 0; id < 20; ++id) front_->PostRx(id, guest_grants_->Grant(kDataGfn + 1 + id, false));
  front_->PublishRx();
  ring_->Kick();
  start = absl::Now();
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(device_->Send(Expected(1000, 2)));
  EXPECT_EQ(front_->TakeRx(20).size(), 20u);
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(250));
  EXPECT_EQ(Statistics().rx_packets, 20u);
}

}  // namespace
}  // namespace xenkvm::xenbus
