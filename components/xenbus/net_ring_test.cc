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
    auto ring = NetRing::Start(*memory_, *grants_, device_, options, [this](bool transmit, bool receive) {
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
  SocketPairDevice device_;
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
  std::optional<std::vector<uint8_t>> frame = device_.Receive();
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
  std::optional<std::vector<uint8_t>> frame = device_.Receive();
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
  std::optional<std::vector<uint8_t>> frame = device_.Receive();
  ASSERT_TRUE(frame.has_value());
  EXPECT_EQ(*frame, Expected(60, 3));  // only the good one
  EXPECT_FALSE(device_.Receive(absl::Milliseconds(50)).has_value());
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
  ASSERT_TRUE(device_.Send(Expected(100, 9)));  // nothing posted yet: held
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
  ASSERT_TRUE(device_.Send(Expected(80, 1)));
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
  EXPECT_FALSE(device_.Receive(absl::Milliseconds(20)).has_value());  // nothing was sent

  for (uint16_t id = 0; id < 8; ++id) front_->PostRx(id, guest_grants_->Grant(kDataGfn + id, false));
  front_->PublishRx();
  ring_->Kick();
  auto frame_to = [](std::array<uint8_t, 6> destination, uint8_t marker) {
    std::vector<uint8_t> frame(60, marker);
    std::copy(destination.begin(), destination.end(), frame.begin());
    return frame;
  };
  ASSERT_TRUE(device_.Send(frame_to({0x01, 0x00, 0x5e, 0x00, 0x00, 0x01}, 1)));  // not added: dropped
  ASSERT_TRUE(device_.Send(frame_to(group, 2)));
  ASSERT_TRUE(device_.Send(frame_to({0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, 3)));
  ASSERT_TRUE(device_.Send(frame_to({0x00, 0x16, 0x3e, 0, 0, 1}, 4)));
  std::vector<Netfront::RxResponse> received = front_->TakeRx(3);
  ASSERT_EQ(received.size(), 3u);
  EXPECT_EQ(Page(kDataGfn, 60)[59], 2);
  EXPECT_EQ(Page(kDataGfn + 1, 60)[59], 3);
  EXPECT_EQ(Page(kDataGfn + 2, 60)[59], 4);
  EXPECT_EQ(Statistics().rx_dropped, 1u);

  ASSERT_EQ(control(netif::kExtraMcastDel, group, 3).at(0).status, netif::kRspOkay);
  ASSERT_TRUE(device_.Send(frame_to(group, 5)));
  ASSERT_TRUE(device_.Send(frame_to({0x00, 0x16, 0x3e, 0, 0, 1}, 6)));
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
  ASSERT_TRUE(device_.Send(Expected(6000, 5)));
  for (int i = 0; i < 500 && Statistics().rx_dropped == 0; ++i) absl::SleepFor(absl::Milliseconds(2));
  EXPECT_EQ(Statistics().rx_dropped, 1u);

  ring_.reset();
  Start(/*scatter_gather=*/true);
  front_->PostRx(1, guest_grants_->Grant(kDataGfn, false));
  front_->PostRx(2, guest_grants_->Grant(kDataGfn + 1, false));
  front_->PublishRx();
  ring_->Kick();
  ASSERT_TRUE(device_.Send(Expected(6000, 5)));
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
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(device_.Receive().has_value()) << i;
  EXPECT_EQ(Statistics().tx_packets, 20u);

  for (uint16_t id = 0; id < 20; ++id) front_->PostRx(id, guest_grants_->Grant(kDataGfn + 1 + id, false));
  front_->PublishRx();
  ring_->Kick();
  start = absl::Now();
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(device_.Send(Expected(1000, 2)));
  EXPECT_EQ(front_->TakeRx(20).size(), 20u);
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(250));
  EXPECT_EQ(Statistics().rx_packets, 20u);
}

}  // namespace
}  // namespace xenkvm::xenbus
