// xen-net's data path against the frame device it serves, measured in the same run.
//
// Both directions move the same frames (64 and 1500 bytes) between an in-process netfront (rings
// in guest memory, pages granted, as xen-netfront does) and the host's end of a SOCK_SEQPACKET
// pair standing in for the tap. The reference is the device alone: a thread writing those frames
// into the backend's end while the host reads them (transmit), or the host writing while a thread
// reads them off the backend's end (receive) -- what any backend's traffic costs before xen-net
// adds its rings, grant copies and notifications. It prints frames/s and Gbit/s for each and the
// ratio xen-net / device. Not measured here: a guest's own driver and the VM exits of its kicks,
// and the host stack behind a real tap (tests/linux runs Linux's xen-netfront over a tap).
//
//   bazel run -c opt //tests/bench:xen_net_benchmark -- [--frames N]
#include <atomic>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/time/clock.h"
#include "components/memory/guest_memory.h"
#include "components/xen/grant_table.h"
#include "components/xenbus/net_ring.h"
#include "tests/frontends/netfront.h"
#include "tests/frontends/socket_pair_device.h"

namespace {

using namespace xenkvm;
using testing::Netfront;

constexpr uint64_t kTableGfn = 0x10, kTxRingGfn = 0x20, kRxRingGfn = 0x21, kDataGfn = 0x100;
constexpr uint32_t kPages = 256;  // one per ring slot
constexpr uint32_t kBatch = 128;  // transmit packets per kick

struct Rate {
  double frames_per_second;
  double gbits;
};
Rate RateOf(uint64_t frames, size_t size, absl::Duration took) {
  const double seconds = absl::ToDoubleSeconds(took);
  return {frames / seconds, frames * size * 8 / seconds / 1e9};
}

// The host's end drains frames until it has `expected` (which may be lowered meanwhile: frames the
// backend could not hand to a full device are dropped, as netback drops them).
std::thread Drain(const testing::SocketPairDevice& device, const std::atomic<uint64_t>& expected) {
  return std::thread([&device, &expected] {
    std::vector<uint8_t> buffer(70000);
    for (uint64_t got = 0; got < expected.load();) {
      if (read(device.host_fd(), buffer.data(), buffer.size()) >= 0) ++got;
    }
  });
}

struct Setup {
  Setup() : memory(std::move(memory::GuestMemory::Create({{memory::GuestAddress(0), 4 << 20}})).value()),
            grants(memory, 4), guest_grants(memory, kTableGfn) {
    (void)grants.MapFrame(0, kTableGfn);
    front = std::make_unique<Netfront>(memory, guest_grants, kTxRingGfn, kRxRingGfn);
    for (uint32_t i = 0; i < kPages; ++i) pages.push_back(guest_grants.Grant(kDataGfn + i, false));
    ring = std::move(xenbus::NetRing::Start(memory, grants, device, {front->tx_ring_gref(), front->rx_ring_gref(), false},
                                    [](bool, bool) {}).value());
  }
  memory::GuestMemory memory;
  xen::GrantTable grants;
  testing::GuestGrants guest_grants;
  testing::SocketPairDevice device;
  std::unique_ptr<Netfront> front;
  std::vector<uint32_t> pages;
  std::unique_ptr<xenbus::NetRing> ring;
};

Rate XenNetTransmit(uint64_t frames, uint16_t size) {
  Setup s;
  std::atomic<uint64_t> expected{frames};
  std::thread drain = Drain(s.device, expected);
  const absl::Time start = absl::Now();
  for (uint64_t sent = 0; sent < frames;) {
    const uint32_t batch = static_cast<uint32_t>(std::min<uint64_t>(kBatch, frames - sent));
    for (uint32_t i = 0; i < batch; ++i) {
      s.front->PutTx(Netfront::TxSlot(s.pages[(sent + i) % kPages], 0, 0, static_cast<uint16_t>(i), size));
    }
    s.front->PublishTx();
    s.ring->Kick();
    sent += s.front->TakeTx(batch).size();
  }
  expected = frames - s.ring->Statistics().tx_errors;
  drain.join();
  if (expected.load() != frames) {
    std::printf("  (xen-net: %llu of %llu frames found the device full and were dropped)\n",
                static_cast<unsigned long long>(frames - expected.load()), static_cast<unsigned long long>(frames));
  }
  return RateOf(expected.load(), size, absl::Now() - start);
}

Rate DeviceTransmit(uint64_t frames, uint16_t size) {
  testing::SocketPairDevice device;
  const std::atomic<uint64_t> expected{frames};
  std::thread drain = Drain(device, expected);
  std::vector<uint8_t> frame(size, 0x5a);
  const absl::Time start = absl::Now();
  for (uint64_t sent = 0; sent < frames;) {
    if (device.Write(frame).ok()) ++sent;
  }
  drain.join();
  return RateOf(frames, size, absl::Now() - start);
}

// The host writes `frames` frames as fast as the device takes them.
std::thread Feed(const testing::SocketPairDevice& device, uint64_t frames, uint16_t size) {
  return std::thread([&device, frames, size] {
    std::vector<uint8_t> frame(size, 0xa5);
    for (uint64_t sent = 0; sent < frames;) {
      if (device.Send(frame)) ++sent;
    }
  });
}

Rate XenNetReceive(uint64_t frames, uint16_t size) {
  Setup s;
  for (uint32_t i = 0; i < kPages; ++i) s.front->PostRx(static_cast<uint16_t>(i), s.pages[i]);
  s.front->PublishRx();
  s.ring->Kick();
  std::thread feed = Feed(s.device, frames, size);
  const absl::Time start = absl::Now();
  for (uint64_t received = 0; received < frames;) {
    std::vector<Netfront::RxResponse> responses = s.front->TakeRx(kPages, absl::Milliseconds(1));
    for (const Netfront::RxResponse& response : responses) s.front->PostRx(response.id, s.pages[response.id]);
    received += responses.size();
    if (!responses.empty()) {
      s.front->PublishRx();
      s.ring->Kick();
    }
  }
  feed.join();
  return RateOf(frames, size, absl::Now() - start);
}

Rate DeviceReceive(uint64_t frames, uint16_t size) {
  testing::SocketPairDevice device;
  std::thread feed = Feed(device, frames, size);
  std::vector<uint8_t> buffer(70000);
  const absl::Time start = absl::Now();
  for (uint64_t received = 0; received < frames;) {
    if (device.Read(buffer).ok()) ++received;
  }
  feed.join();
  return RateOf(frames, size, absl::Now() - start);
}

}  // namespace

int main(int argc, char** argv) {
  uint64_t frames = 500000;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--frames") == 0 && !absl::SimpleAtoi(argv[i + 1], &frames)) {
      std::fprintf(stderr, "--frames: %s is not a number\n", argv[i + 1]);
      return 2;
    }
  }
  setvbuf(stdout, nullptr, _IOLBF, 0);
  std::printf("%llu frames each way, device = the backend's end of a SOCK_SEQPACKET pair\n",
              static_cast<unsigned long long>(frames));
  for (uint16_t size : {64, 1500}) {
    const Rate tx_device = DeviceTransmit(frames, size), tx = XenNetTransmit(frames, size);
    const Rate rx_device = DeviceReceive(frames, size), rx = XenNetReceive(frames, size);
    std::printf("%4u-byte frames  transmit: device %9.0f/s %6.2f Gbit/s | xen-net %9.0f/s %6.2f Gbit/s (ratio %.2f)\n",
                size, tx_device.frames_per_second, tx_device.gbits, tx.frames_per_second, tx.gbits,
                tx.frames_per_second / tx_device.frames_per_second);
    std::printf("%4u-byte frames  receive:  device %9.0f/s %6.2f Gbit/s | xen-net %9.0f/s %6.2f Gbit/s (ratio %.2f)\n",
                size, rx_device.frames_per_second, rx_device.gbits, rx.frames_per_second, rx.gbits,
                rx.frames_per_second / rx_device.frames_per_second);
  }
  return 0;
}
