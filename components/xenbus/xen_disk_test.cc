#include "components/xenbus/xen_disk.h"

#include <cstdlib>
#include <fstream>
#include <future>

#include "components/accel/emu/emu_accelerator.h"
#include "components/xen/shim.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/frontends/blkfront.h"
#include "third_party/xen_public.h"

namespace xenkvm::xenbus {
namespace {

using ::testing::HasSubstr;
using xen::xenstore::Store;

constexpr uint64_t kArg = 0x8000;      // hypercall arguments
constexpr uint64_t kTableGfn = 0x10;   // grant-table frame 0
constexpr uint64_t kRingGfn = 0x20;
constexpr uint64_t kDataGfn = 0x30;
constexpr uint32_t kXvda = 51712;

TEST(VirtualDeviceTest, ParsesXlForms) {
  EXPECT_EQ(*ParseVirtualDevice("xvda"), kXvda);
  EXPECT_EQ(*ParseVirtualDevice("xvdb"), 51728u);
  EXPECT_EQ(*ParseVirtualDevice("xvdq"), (1u << 28) | (16u << 8));  // past xvdp: the extended form
  EXPECT_EQ(*ParseVirtualDevice("hda"), 768u);
  EXPECT_EQ(*ParseVirtualDevice("hdc"), 22u << 8);
  EXPECT_EQ(*ParseVirtualDevice("sdb"), (8u << 8) | 16u);
  EXPECT_EQ(*ParseVirtualDevice("d3"), (1u << 28) | (3u << 8));
  EXPECT_EQ(*ParseVirtualDevice("51728"), 51728u);
  for (const char* bad : {"", "xvd", "xvdA", "hde", "vda", "xvda1", "0", "d"}) {
    EXPECT_THAT(ParseVirtualDevice(bad).status().message(), HasSubstr("use xvd<letters>")) << bad;
  }
}

class XenDiskTest : public ::testing::Test {
 protected:
  // The store belongs to the loop's thread.
  template <typename F>
  auto OnLoop(F work) {
    std::promise<decltype(work())> done;
    EXPECT_TRUE(loop_->Post([&] { done.set_value(work()); }).ok());
    return done.get_future().get();
  }
  void SetUp() override {
    memory_ = std::make_unique<memory::GuestMemory>(
        std::move(memory::GuestMemory::Create({{memory::GuestAddress(0), 1 << 20}})).value());
    accelerator_ = std::move(accel::CreateEmuAccelerator(*memory_)).value();
    loop_ = std::move(base::EventLoop::Create()).value();
    shim_ = std::move(xen::Shim::Create(xen::XenConfig{}, *memory_, *accelerator_, {}, loop_.get())).value();
    vcpu_ = std::move(accelerator_->CreateVcpu(0, accel::PvhEntry{0x100000, 0, 0})).value();
    ASSERT_TRUE(shim_->AttachVcpu(*vcpu_).ok());
    ASSERT_TRUE(loop_->Start().ok());
    ASSERT_EQ(shim_->grant_table().MapFrame(0, kTableGfn), 0);
    path_ = std::string(std::getenv("TEST_TMPDIR")) + "/xvda.img";
    std::vector<char> data(1 << 20, 0);
    for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>((i / 512) % 251);
    std::ofstream(path_, std::ios::binary).write(data.data(), static_cast<std::streamsize>(data.size()));
    OnLoop([&] {
      guest_ = store_.Connect(1, false, nullptr);
      return 0;
    });
  }
  void TearDown() override {
    OnLoop([&] {
      disk_.reset();
      return 0;
    });
    loop_->Stop();
    loop_->Join();
    vcpu_.reset();
    shim_.reset();
  }
  absl::Status Create(XenDiskConfig config) {
    return OnLoop([&]() -> absl::Status {
      XenDisk::Environment environment{&store_, memory_.get(), &shim_->event_channels(), &shim_->grant_table(),
                                       loop_.get(), 1};
      auto disk = XenDisk::Create(environment, config);
      if (!disk.ok()) return disk.status();
      disk_ = std::move(*disk);
      return absl::OkStatus();
    });
  }
  std::string Read(const std::string& path, Store::ClientId client = 0) {
    return OnLoop([&] {
      auto value = store_.Read(client ? client : guest_, 0, path);
      return value.ok() ? value.value() : std::string("<") + xen::xenstore::ErrorName(value.error()) + ">";
    });
  }
  void GuestWrite(const std::string& relative, const std::string& value) {
    ASSERT_TRUE(OnLoop([&] { return store_.Write(guest_, 0, relative, value).ok(); })) << relative;
  }
  std::string BackendState() { return Read("/local/domain/0/backend/vbd/1/51712/state"); }
  bool WaitForBackendState(const std::string& state) {
    for (int i = 0; i < 2000 && BackendState() != state; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    return BackendState() == state;
  }
  // EVTCHNOP_alloc_unbound(remote 0), as the guest does for its device.
  uint32_t AllocatePortForBackend() {
    EXPECT_TRUE(memory_->WriteObject(memory::GuestAddress(kArg), evtchn_alloc_unbound_t{DOMID_SELF, 0, 0}).ok());
    accel::HypercallExit call{__HYPERVISOR_event_channel_op, {EVTCHNOP_alloc_unbound, kArg}, true, 0};
    EXPECT_EQ(shim_->Hypercall(*vcpu_, call), 0u);
    return memory_->ReadObject<evtchn_alloc_unbound_t>(memory::GuestAddress(kArg))->port;
  }
  void Send(uint32_t port) {
    EXPECT_TRUE(memory_->WriteObject(memory::GuestAddress(kArg), evtchn_send_t{port}).ok());
    accel::HypercallExit call{__HYPERVISOR_event_channel_op, {EVTCHNOP_send, kArg}, true, 0};
    EXPECT_EQ(shim_->Hypercall(*vcpu_, call), 0u);
  }
  // blkfront's talk_to_blkback: ring, port, protocol, persistent grants, then Initialised.
  void FrontendConnects(int grant_version = 1) {
    front_ = std::make_unique<testing::Blkfront>(*memory_, kTableGfn, kRingGfn, blkif::Abi::k64, grant_version);
    port_ = AllocatePortForBackend();
    const std::string dir = "device/vbd/51712/";
    GuestWrite(dir + "ring-ref", std::to_string(front_->ring_gref()));
    GuestWrite(dir + "event-channel", std::to_string(port_));
    GuestWrite(dir + "protocol", "x86_64-abi");
    GuestWrite(dir + "feature-persistent", "1");
    GuestWrite(dir + "state", "3");
  }

  Store store_;
  Store::ClientId guest_ = 0;
  std::unique_ptr<memory::GuestMemory> memory_;
  std::unique_ptr<accel::Accelerator> accelerator_;
  std::unique_ptr<base::EventLoop> loop_;
  std::unique_ptr<xen::Shim> shim_;
  std::unique_ptr<accel::Vcpu> vcpu_;
  std::string path_;
  std::unique_ptr<XenDisk> disk_;
  std::unique_ptr<testing::Blkfront> front_;
  uint32_t port_ = 0;
};

TEST_F(XenDiskTest, AnnouncesItselfAsLibxlDoes) {
  ASSERT_TRUE(Create({path_, "xvda", false}).ok());
  EXPECT_EQ(BackendState(), "2");  // InitWait
  EXPECT_EQ(Read("device/vbd/51712/state"), "1");
  EXPECT_EQ(Read("device/vbd/51712/backend"), "/local/domain/0/backend/vbd/1/51712");
  EXPECT_EQ(Read("device/vbd/51712/backend-id"), "0");
  EXPECT_EQ(Read("/local/domain/0/backend/vbd/1/51712/mode"), "w");
  EXPECT_EQ(Read("/local/domain/0/backend/vbd/1/51712/feature-max-indirect-segments"), "256");
  // The guest may read the backend's nodes but not change them; the frontend's are its own.
  EXPECT_EQ(OnLoop([&] { return store_.Write(guest_, 0, "/local/domain/0/backend/vbd/1/51712/mode", "r").ok(); }),
            false);
  EXPECT_EQ(OnLoop([&] { return store_.Write(guest_, 0, "device/vbd/51712/state", "1").ok(); }), true);
}

TEST_F(XenDiskTest, ConnectsServesClosesAndReconnects) {
  ASSERT_TRUE(Create({path_, "xvda", false}).ok());
  FrontendConnects();
  ASSERT_TRUE(WaitForBackendState("4")) << Read("/local/domain/0/backend/vbd/1/51712/error");
  const std::string backend = "/local/domain/0/backend/vbd/1/51712/";
  EXPECT_EQ(Read(backend + "sectors"), "2048");
  EXPECT_EQ(Read(backend + "info"), "0");
  EXPECT_EQ(Read(backend + "sector-size"), "512");
  EXPECT_EQ(Read(backend + "feature-flush-cache"), "1");
  EXPECT_EQ(Read(backend + "feature-discard"), "1");
  EXPECT_EQ(Read(backend + "feature-persistent"), "1");

  // I/O through the event channel: the guest's send reaches the ring through the shim.
  const uint32_t page = front_->Grant(kDataGfn, false);
  front_->Put(front_->ReadWrite(blkif::kOpRead, 1, 7, {{page, 0, 0}}));
  front_->Publish();
  Send(port_);
  auto responses = front_->Take(1);
  ASSERT_EQ(responses.size(), 1u);
  EXPECT_EQ(responses[0].status, blkif::kStatusOkay);
  EXPECT_EQ(*memory_->ReadObject<uint8_t>(memory::GuestAddress(kDataGfn << 12)), 7);
  EXPECT_EQ(OnLoop([&] { return disk_->ring_statistics()->requests; }), 1u);

  // The frontend closes: the backend follows, the port goes back to unbound.
  GuestWrite("device/vbd/51712/state", "5");
  ASSERT_TRUE(WaitForBackendState("5"));
  GuestWrite("device/vbd/51712/state", "6");
  ASSERT_TRUE(WaitForBackendState("6"));
  EXPECT_FALSE(OnLoop([&] { return disk_->ring_statistics().has_value(); }));
  // And starts over: offered again, connected again.
  GuestWrite("device/vbd/51712/state", "1");
  ASSERT_TRUE(WaitForBackendState("2"));
  GuestWrite("device/vbd/51712/state", "3");
  ASSERT_TRUE(WaitForBackendState("4"));
}

// The backend under grant tables version 2: its grants' pins live in the status frame.
TEST_F(XenDiskTest, ServesUnderGrantTableVersionTwo) {
  constexpr uint64_t kStatusGfn = 0x40;
  ASSERT_EQ(shim_->grant_table().SetVersion(2), 0);
  ASSERT_EQ(shim_->grant_table().MapStatusFrame(0, kStatusGfn), 0);
  ASSERT_TRUE(Create({path_, "xvda", false}).ok());
  FrontendConnects(/*grant_version=*/2);
  ASSERT_TRUE(WaitForBackendState("4")) << Read("/local/domain/0/backend/vbd/1/51712/error");
  const uint32_t page = front_->Grant(kDataGfn, false);
  front_->Put(front_->ReadWrite(blkif::kOpRead, 1, 9, {{page, 0, 0}}));
  front_->Publish();
  Send(port_);
  auto responses = front_->Take(1);
  ASSERT_EQ(responses.size(), 1u);
  EXPECT_EQ(responses[0].status, blkif::kStatusOkay);
  EXPECT_EQ(*memory_->ReadObject<uint8_t>(memory::GuestAddress(kDataGfn << 12)), 9);
  // The ring stays mapped (and the data page, a persistent grant): their status words say so.
  EXPECT_NE(*memory_->ReadObject<uint16_t>(memory::GuestAddress((kStatusGfn << 12) + front_->ring_gref() * 2)) &
                GTF_reading,
            0);
}

TEST_F(XenDiskTest, HotUnplugWaitsForTheFrontendToClose) {
  ASSERT_TRUE(Create({path_, "xvda", true}).ok());
  FrontendConnects();
  ASSERT_TRUE(WaitForBackendState("4"));
  EXPECT_EQ(Read("/local/domain/0/backend/vbd/1/51712/info"), "4");  // read-only
  std::atomic<bool> closed{false};
  OnLoop([&] {
    disk_->RequestRemoval([&] { closed = true; });
    return 0;
  });
  EXPECT_EQ(Read("/local/domain/0/backend/vbd/1/51712/online"), "0");
  EXPECT_EQ(BackendState(), "5");
  EXPECT_FALSE(closed.load());
  GuestWrite("device/vbd/51712/state", "6");  // blkfront lets go
  for (int i = 0; i < 2000 && !closed.load(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  EXPECT_TRUE(closed.load());
  OnLoop([&] {
    disk_.reset();
    return 0;
  });
  EXPECT_EQ(Read("/local/domain/0/backend/vbd/1/51712/state"), "<ENOENT>");  // both sides gone
  EXPECT_EQ(Read("device/vbd/51712/state"), "<ENOENT>");
}

TEST_F(XenDiskTest, RefusesWhatItCannotServe) {
  EXPECT_EQ(Create({"/no/such.img", "xvda", false}).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Create({path_, "vda", false}).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(Create({path_, "xvda", false}).ok());
  // A ring larger than offered (max-ring-page-order 4): the backend says why and closes.
  GuestWrite("device/vbd/51712/ring-page-order", "5");
  GuestWrite("device/vbd/51712/ring-ref0", "8");
  GuestWrite("device/vbd/51712/event-channel", "5");
  GuestWrite("device/vbd/51712/state", "3");
  ASSERT_TRUE(WaitForBackendState("5"));
  EXPECT_THAT(Read("/local/domain/0/backend/vbd/1/51712/error"), HasSubstr("max-ring-page-order is 4"));
}

TEST_F(XenDiskTest, RefusesMoreQueuesThanOffered) {
  ASSERT_TRUE(Create({path_, "xvda", false}).ok());
  GuestWrite("device/vbd/51712/multi-queue-num-queues", "5");
  GuestWrite("device/vbd/51712/state", "3");
  ASSERT_TRUE(WaitForBackendState("5"));
  EXPECT_THAT(Read("/local/domain/0/backend/vbd/1/51712/error"), HasSubstr("multi-queue-max-queues is 4"));
}

// blkfront with two queues of two-page rings (multi-queue-num-queues, ring-page-order and
// queue-N/ring-refM, queue-N/event-channel): each queue served on its own, through its own port.
TEST_F(XenDiskTest, ServesSeveralQueuesOfMultiPageRings) {
  ASSERT_TRUE(Create({path_, "xvda", false}).ok());
  const std::string backend = "/local/domain/0/backend/vbd/1/51712/";
  EXPECT_EQ(Read(backend + "multi-queue-max-queues"), "4");
  EXPECT_EQ(Read(backend + "max-ring-page-order"), "4");
  std::vector<std::unique_ptr<testing::Blkfront>> queues;
  std::vector<uint32_t> ports;
  const std::string dir = "device/vbd/51712/";
  GuestWrite(dir + "multi-queue-num-queues", "2");
  GuestWrite(dir + "ring-page-order", "1");
  for (uint32_t q = 0; q < 2; ++q) {
    queues.push_back(std::make_unique<testing::Blkfront>(*memory_, kTableGfn, kRingGfn + 4 * q, blkif::Abi::k64, 1,
                                                         /*ring_pages=*/2, /*first_ref=*/8 + 100 * q));
    ports.push_back(AllocatePortForBackend());
    const std::string queue = dir + "queue-" + std::to_string(q) + "/";
    GuestWrite(queue + "ring-ref0", std::to_string(queues[q]->ring_grefs()[0]));
    GuestWrite(queue + "ring-ref1", std::to_string(queues[q]->ring_grefs()[1]));
    GuestWrite(queue + "event-channel", std::to_string(ports[q]));
  }
  GuestWrite(dir + "protocol", "x86_64-abi");
  GuestWrite(dir + "state", "3");
  ASSERT_TRUE(WaitForBackendState("4")) << Read(backend + "error");
  EXPECT_EQ(queues[0]->slots(), 64u);
  // More requests than one page holds, on each queue: slots past the first page, and slots that
  // straddle the pages, are read and answered.
  for (uint32_t q = 0; q < 2; ++q) {
    const uint32_t page = queues[q]->Grant(kDataGfn + q, false);
    for (uint32_t round = 0; round < 2; ++round) {
      for (uint64_t i = 0; i < 40; ++i) queues[q]->Put(queues[q]->ReadWrite(blkif::kOpRead, i, 100 + q, {{page, 0, 0}}));
      queues[q]->Publish();
      Send(ports[q]);
      auto responses = queues[q]->Take(40);
      ASSERT_EQ(responses.size(), 40u) << "queue " << q;
      for (const auto& response : responses) EXPECT_EQ(response.status, blkif::kStatusOkay);
    }
    EXPECT_EQ(*memory_->ReadObject<uint8_t>(memory::GuestAddress((kDataGfn + q) << 12)), 100 + q);
  }
  EXPECT_EQ(OnLoop([&] { return disk_->ring_statistics()->requests; }), 160u);
}

TEST_F(XenDiskTest, ABadRingRefOrPortIsRefusedNotFollowed) {
  ASSERT_TRUE(Create({path_, "xvda", false}).ok());
  GuestWrite("device/vbd/51712/ring-ref", "4000");  // not granted
  GuestWrite("device/vbd/51712/event-channel", "9");
  GuestWrite("device/vbd/51712/state", "3");
  ASSERT_TRUE(WaitForBackendState("5"));
  EXPECT_THAT(Read("/local/domain/0/backend/vbd/1/51712/error"), HasSubstr("ring-ref 4000"));
}

}  // namespace
}  // namespace xenkvm::xenbus
