#include "components/xen/xenstore/connection.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "components/memory/guest_memory.h"
#include "components/xen/xenstore/ring_server.h"
#include "components/xen/xenstore/wire_client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "xen/io/xs_wire.h"

namespace xenkvm::xen::xenstore {
namespace {

using testing::Decode;
using testing::Encode;
using testing::Message;
using testing::Payload;
using ::testing::ElementsAre;

// One client on the wire, with its output collected.
class Wire {
 public:
  Wire(Store& store, uint32_t domid, bool privileged)
      : connection_(store, domid, privileged, [this] { ++output_ready_; }) {}

  // Sends `bytes`, collects everything the connection answered.
  std::vector<Message> Send(const std::string& bytes) {
    absl::StatusOr<size_t> taken = connection_.Receive(
        std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()));
    EXPECT_TRUE(taken.ok()) << taken.status();
    return Drain();
  }
  std::vector<Message> Drain() {
    std::span<const uint8_t> output = connection_.Output();
    stream_.append(reinterpret_cast<const char*>(output.data()), output.size());
    connection_.Consume(output.size());
    return Decode(stream_);
  }
  Message Ask(uint32_t type, const std::string& payload, uint32_t transaction = 0) {
    std::vector<Message> replies = Send(Encode(type, payload, ++request_id_, transaction));
    EXPECT_EQ(replies.size(), 1u);
    EXPECT_EQ(replies.empty() ? 0 : replies.back().request_id, request_id_);
    return replies.empty() ? Message{} : replies.back();
  }

  Connection connection_;
  std::string stream_;
  uint32_t request_id_ = 0;
  int output_ready_ = 0;
};

std::string ErrorPayload(const char* name) { return Payload({name}); }

class ConnectionTest : public ::testing::Test {
 protected:
  Store store_;
  Wire dom0_{store_, 0, true};
  Wire guest_{store_, 1, false};
};

TEST_F(ConnectionTest, AnswersTheBasicRequests) {
  Message reply = dom0_.Ask(XS_WRITE, Payload({"/local/domain/1/name", "guest"}, false));
  EXPECT_EQ(reply.type, XS_WRITE);
  EXPECT_EQ(reply.payload, Payload({"OK"}));
  EXPECT_EQ(dom0_.Ask(XS_READ, Payload({"/local/domain/1/name"})).payload, "guest");
  EXPECT_EQ(dom0_.Ask(XS_DIRECTORY, Payload({"/local/domain/1"})).payload, Payload({"name"}));
  EXPECT_EQ(dom0_.Ask(XS_GET_PERMS, Payload({"/local/domain/1/name"})).payload, Payload({"n0"}));
  EXPECT_EQ(dom0_.Ask(XS_SET_PERMS, Payload({"/local/domain/1/name", "n0", "r1"})).payload, Payload({"OK"}));
  EXPECT_EQ(guest_.Ask(XS_READ, Payload({"name"})).payload, "guest");
  EXPECT_EQ(guest_.Ask(XS_GET_DOMAIN_PATH, Payload({"1"})).payload, Payload({"/local/domain/1"}));
  EXPECT_EQ(dom0_.Ask(XS_MKDIR, Payload({"/x/y"})).payload, Payload({"OK"}));
  EXPECT_EQ(dom0_.Ask(XS_RM, Payload({"/x"})).payload, Payload({"OK"}));
  Message missing = dom0_.Ask(XS_READ, Payload({"/x/y"}));
  EXPECT_EQ(missing.type, XS_ERROR);
  EXPECT_EQ(missing.payload, ErrorPayload("ENOENT"));
}

TEST_F(ConnectionTest, RefusesMalformedRequestsWithEinval) {
  for (const std::string& bytes : {
           Encode(XS_READ, "no-nul"), Encode(XS_READ, Payload({"/a", "extra"})), Encode(XS_WATCH, Payload({"/a"})),
           Encode(XS_WRITE, "no-path-end"), Encode(XS_SET_PERMS, Payload({"/", "q0"})), Encode(XS_WATCH_EVENT, ""),
           Encode(XS_ERROR, ""), Encode(999, ""), Encode(XS_GET_DOMAIN_PATH, Payload({"abc"})),
           Encode(XS_GET_DOMAIN_PATH, Payload({"70000"})), Encode(XS_TRANSACTION_END, Payload({"maybe"}), 0, 1),
           Encode(XS_WATCH, Payload({"/a", "t"}), 0, 5)  // a transaction where none belongs (XSA-484)
       }) {
    std::vector<Message> replies = dom0_.Send(bytes);
    ASSERT_EQ(replies.size(), 1u);
    EXPECT_EQ(replies[0].type, XS_ERROR);
    EXPECT_EQ(replies[0].payload, ErrorPayload("EINVAL"));
  }
  // Toolstack requests: refused to guests, not provided to privileged clients.
  EXPECT_EQ(guest_.Ask(XS_INTRODUCE, Payload({"2", "0", "0"})).payload, ErrorPayload("EACCES"));
  EXPECT_EQ(dom0_.Ask(XS_INTRODUCE, Payload({"2", "0", "0"})).payload, ErrorPayload("ENOSYS"));
  EXPECT_EQ(guest_.Ask(XS_IS_DOMAIN_INTRODUCED, Payload({"1"})).payload, ErrorPayload("EACCES"));
}

TEST_F(ConnectionTest, TakesMessagesByteByByte) {
  std::string bytes = Encode(XS_WRITE, Payload({"/a", "b"}, false), 7) + Encode(XS_READ, Payload({"/a"}), 8);
  std::vector<Message> replies;
  for (char byte : bytes) {
    for (Message& m : dom0_.Send(std::string(1, byte))) replies.push_back(std::move(m));
  }
  ASSERT_EQ(replies.size(), 2u);
  EXPECT_EQ(replies[0].request_id, 7u);
  EXPECT_EQ(replies[1].payload, "b");
}

TEST_F(ConnectionTest, AnOversizedPayloadKillsTheConnection) {
  std::string header = Encode(XS_WRITE, "", 1, 0, kPayloadMax + 1);
  absl::StatusOr<size_t> taken = dom0_.connection_.Receive(
      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(header.data()), header.size()));
  EXPECT_FALSE(taken.ok());
  EXPECT_TRUE(dom0_.connection_.failed());
  EXPECT_FALSE(dom0_.connection_.WantsInput());
}

TEST_F(ConnectionTest, AWatchRepliesThenFiresOnceThenOnChanges) {
  dom0_.Ask(XS_WRITE, Payload({"/local/domain/1/control/shutdown", ""}, false));
  dom0_.Ask(XS_SET_PERMS, Payload({"/local/domain/1/control/shutdown", "n1"}));
  std::vector<Message> messages = guest_.Send(Encode(XS_WATCH, Payload({"control/shutdown", "tok"}), 3));
  ASSERT_EQ(messages.size(), 2u);
  EXPECT_EQ(messages[0].type, XS_WATCH);
  EXPECT_EQ(messages[1].type, XS_WATCH_EVENT);
  EXPECT_EQ(messages[1].payload, Payload({"control/shutdown", "tok"}));
  EXPECT_EQ(guest_.output_ready_, 0);  // queued while answering: the transport sends it anyway
  dom0_.Ask(XS_WRITE, Payload({"/local/domain/1/control/shutdown", "poweroff"}, false));
  EXPECT_EQ(guest_.output_ready_, 1);
  messages = guest_.Drain();
  ASSERT_EQ(messages.size(), 1u);
  EXPECT_EQ(messages[0].payload, Payload({"control/shutdown", "tok"}));
}

TEST_F(ConnectionTest, TransactionsOverTheWire) {
  Message started = dom0_.Ask(XS_TRANSACTION_START, Payload({""}));
  ASSERT_EQ(started.type, XS_TRANSACTION_START);
  uint32_t tx = std::stoul(started.Strings().at(0));
  EXPECT_NE(tx, 0u);
  EXPECT_EQ(dom0_.Ask(XS_WRITE, Payload({"/t", "1"}, false), tx).payload, Payload({"OK"}));
  EXPECT_EQ(dom0_.Ask(XS_READ, Payload({"/t"})).payload, ErrorPayload("ENOENT"));
  EXPECT_EQ(dom0_.Ask(XS_TRANSACTION_END, Payload({"T"}), tx).payload, Payload({"OK"}));
  EXPECT_EQ(dom0_.Ask(XS_READ, Payload({"/t"})).payload, "1");
}

TEST_F(ConnectionTest, BigDirectoriesComeInParts) {  // XSA-72
  for (int i = 0; i < 400; ++i) dom0_.Ask(XS_WRITE, Payload({absl::StrCat("/big/child-number-", i), ""}, false));
  EXPECT_EQ(dom0_.Ask(XS_DIRECTORY, Payload({"/big"})).payload, ErrorPayload("E2BIG"));
  std::vector<std::string> names;
  std::string generation;
  size_t offset = 0;
  for (int part = 0; part < 10; ++part) {
    Message reply = dom0_.Ask(XS_DIRECTORY_PART, Payload({"/big", absl::StrCat(offset)}));
    ASSERT_EQ(reply.type, XS_DIRECTORY_PART) << reply.payload;
    ASSERT_LE(reply.payload.size(), kPayloadMax);
    std::vector<std::string> strings = reply.Strings();
    if (generation.empty()) generation = strings[0];
    EXPECT_EQ(strings[0], generation);
    bool complete = reply.payload.size() >= 2 && reply.payload.substr(reply.payload.size() - 2) == std::string(2, '\0');
    for (size_t i = 1; i < strings.size(); ++i) {
      if (strings[i].empty()) continue;
      names.push_back(strings[i]);
      offset += strings[i].size() + 1;
    }
    if (complete) break;
  }
  EXPECT_EQ(names.size(), 400u);
}

TEST_F(ConnectionTest, AHugeTokenIsServedWithinThePayloadLimit) {  // XSA-324
  std::string token(4000, 't');
  std::vector<Message> messages = dom0_.Send(Encode(XS_WATCH, Payload({"/w", token}), 1));
  ASSERT_EQ(messages.size(), 2u);
  EXPECT_EQ(messages[0].payload, Payload({"OK"}));
  // An event whose path plus token exceeds 4096 bytes is dropped, never sent oversized.
  dom0_.Ask(XS_WRITE, Payload({absl::StrCat("/w/", std::string(200, 'p')), ""}, false));
  EXPECT_EQ(dom0_.connection_.dropped_events(), 1u);
}

TEST_F(ConnectionTest, ANeverReadingWatcherCostsBoundedMemory) {  // XSA-326
  Wire lazy(store_, 0, true);
  lazy.Send(Encode(XS_WATCH, Payload({"/flood", "t"}), 1));
  for (int i = 0; i < 20000; ++i) dom0_.Ask(XS_WRITE, Payload({"/flood/x", absl::StrCat(i)}, false));
  EXPECT_LE(lazy.connection_.Output().size(), kOutputBudget + kHeaderSize + kPayloadMax);
  EXPECT_GT(lazy.connection_.dropped_events(), 0u);
  EXPECT_FALSE(lazy.connection_.WantsInput());
  // Once it reads, it is served again.
  lazy.Drain();
  EXPECT_TRUE(lazy.connection_.WantsInput());
  EXPECT_EQ(lazy.Ask(XS_READ, Payload({"/flood/x"})).payload, "19999");
}

// ---- The guest ring, on real guest memory.

constexpr uint64_t kRingGpa = 0x3000;

class RingServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<memory::GuestMemory> memory = memory::GuestMemory::Create({{memory::GuestAddress(0), 0x10000}});
    ASSERT_TRUE(memory.ok());
    memory_ = std::make_unique<memory::GuestMemory>(std::move(*memory));
    absl::StatusOr<std::unique_ptr<RingServer>> ring = RingServer::Create(
        store_, *memory_, kRingGpa, 1, [this] { ++notifications_; }, [this] { ++scheduled_; });
    ASSERT_TRUE(ring.ok()) << ring.status();
    ring_ = std::move(*ring);
  }
  uint32_t Index(size_t offset) { return *memory_->AtomicLoad<uint32_t>(memory::GuestAddress(kRingGpa + offset)); }
  void SetIndex(size_t offset, uint32_t value) {
    ASSERT_TRUE(memory_->AtomicStore<uint32_t>(memory::GuestAddress(kRingGpa + offset), value).ok());
  }
  // The guest's side: put bytes in req[] and move req_prod.
  void Produce(const std::string& bytes) {
    uint32_t producer = Index(offsetof(xenstore_domain_interface, req_prod));
    for (char byte : bytes) {
      uint8_t b = static_cast<uint8_t>(byte);
      ASSERT_TRUE(memory_->Write(memory::GuestAddress(kRingGpa + (producer++ % XENSTORE_RING_SIZE)), {&b, 1}).ok());
    }
    SetIndex(offsetof(xenstore_domain_interface, req_prod), producer);
  }
  // The guest's side: take everything in rsp[].
  std::vector<Message> Consume() {
    uint32_t consumer = Index(offsetof(xenstore_domain_interface, rsp_cons));
    uint32_t producer = Index(offsetof(xenstore_domain_interface, rsp_prod));
    for (; consumer != producer; ++consumer) {
      uint8_t b;
      EXPECT_TRUE(memory_->Read(memory::GuestAddress(kRingGpa + 1024 + consumer % XENSTORE_RING_SIZE), {&b, 1}).ok());
      stream_.push_back(static_cast<char>(b));
    }
    SetIndex(offsetof(xenstore_domain_interface, rsp_cons), consumer);
    return Decode(stream_);
  }

  Store store_;
  std::unique_ptr<memory::GuestMemory> memory_;
  std::unique_ptr<RingServer> ring_;
  std::string stream_;
  int notifications_ = 0;
  int scheduled_ = 0;
};

TEST_F(RingServerTest, AdvertisesItsFeaturesAndAnswersThroughTheRing) {
  EXPECT_EQ(Index(offsetof(xenstore_domain_interface, server_features)),
            uint32_t{XENSTORE_SERVER_FEATURE_RECONNECTION | XENSTORE_SERVER_FEATURE_ERROR});
  Produce(Encode(XS_GET_DOMAIN_PATH, Payload({"1"}), 9));
  ring_->Process();
  EXPECT_EQ(notifications_, 1);
  std::vector<Message> replies = Consume();
  ASSERT_EQ(replies.size(), 1u);
  EXPECT_EQ(replies[0].request_id, 9u);
  EXPECT_EQ(replies[0].payload, Payload({"/local/domain/1"}));
  EXPECT_EQ(Index(offsetof(xenstore_domain_interface, req_cons)), Index(offsetof(xenstore_domain_interface, req_prod)));
}

TEST_F(RingServerTest, RepliesLargerThanTheRingGoOutAsTheGuestConsumes) {
  Store::ClientId dom0 = store_.Connect(0, true, nullptr);
  ASSERT_TRUE(store_.Write(dom0, 0, "/local/domain/1/big", std::string(2000, 'v')).ok());
  ASSERT_TRUE(store_.SetPermissions(dom0, 0, "/local/domain/1/big", {{1, Access::kNone}}).ok());
  // Each reply is twice the ring; five of them go around it ten times.
  for (int i = 0; i < 5; ++i) {
    Produce(Encode(XS_READ, Payload({"big"}), i));
    std::vector<Message> replies;
    for (int round = 0; round < 10 && replies.empty(); ++round) {
      ring_->Process();
      replies = Consume();
    }
    ASSERT_EQ(replies.size(), 1u);
    EXPECT_EQ(replies[0].payload, std::string(2000, 'v'));
  }
}

TEST_F(RingServerTest, AProducerTooFarAheadStopsTheRingUntilReconnection) {
  SetIndex(offsetof(xenstore_domain_interface, req_prod), 0x80000000u);  // cons + 2^31
  ring_->Process();
  EXPECT_EQ(ring_->error(), uint32_t{XENSTORE_ERROR_RINGIDX});
  EXPECT_EQ(Index(offsetof(xenstore_domain_interface, error)), uint32_t{XENSTORE_ERROR_RINGIDX});
  ring_->Process();  // stays stopped
  EXPECT_EQ(ring_->error(), uint32_t{XENSTORE_ERROR_RINGIDX});
  // The guest asks to reconnect: everything is reset and served again.
  SetIndex(offsetof(xenstore_domain_interface, connection), XENSTORE_RECONNECT);
  ring_->Process();
  EXPECT_EQ(ring_->error(), 0u);
  EXPECT_EQ(Index(offsetof(xenstore_domain_interface, connection)), uint32_t{XENSTORE_CONNECTED});
  EXPECT_EQ(Index(offsetof(xenstore_domain_interface, req_prod)), 0u);
  Produce(Encode(XS_GET_DOMAIN_PATH, Payload({"1"}), 1));
  ring_->Process();
  EXPECT_EQ(Consume().size(), 1u);
}

TEST_F(RingServerTest, AConsumerIndexOutOfRangeStopsTheRing) {
  Produce(Encode(XS_GET_DOMAIN_PATH, Payload({"1"}), 1));
  SetIndex(offsetof(xenstore_domain_interface, rsp_cons), 5000);
  ring_->Process();
  ring_->Process();
  EXPECT_EQ(ring_->error(), uint32_t{XENSTORE_ERROR_RINGIDX});
}

TEST_F(RingServerTest, AnOversizedPayloadIsAProtocolError) {
  Produce(Encode(XS_WRITE, "", 1, 0, 5000));
  ring_->Process();
  EXPECT_EQ(ring_->error(), uint32_t{XENSTORE_ERROR_PROTO});
}

TEST_F(RingServerTest, RefusesARingOutsideGuestMemory) {
  EXPECT_FALSE(RingServer::Create(store_, *memory_, 0x10000, 1, [] {}, [] {}).ok());
  EXPECT_FALSE(RingServer::Create(store_, *memory_, 0x3100, 1, [] {}, [] {}).ok());
}

}  // namespace
}  // namespace xenkvm::xen::xenstore
