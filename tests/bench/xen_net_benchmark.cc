// xen-net's data path against the host path it serves, measured in the same run.
//
// Frames (64 and 1500 bytes) move each way between an in-process netfront (rings in guest memory,
// pages granted, as xen-netfront does) and the host, through one of two host paths:
//   pair  the backend's end of a SOCK_SEQPACKET pair, the host holding the other end. Reference:
//         the pair alone (a thread writing into the backend's end while the host reads, and back).
//   tap   a real tap in a network namespace of the benchmark's own (root), the host's end an
//         AF_PACKET socket on the tap. Reference: the same frames over a veth pair in that
//         namespace, AF_PACKET on both ends -- the host stack's own limit for a virtual link.
// Each prints frames/s and Gbit/s and the ratio xen-net / reference; frames a full queue dropped
// (a socket's, the tap's, the backlog's) are counted, not waited for. Not measured: a guest's
// own driver and the VM exits of its kicks (tests/linux runs Linux's xen-netfront over a tap).
//
//   bazel run -c opt //tests/bench:xen_net_benchmark -- [--frames N] [--host pair|tap]   (--help: the flags)
#include <arpa/inet.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/time/clock.h"
#include "components/base/lock_checks.h"
#include "components/memory/guest_memory.h"
#include "components/net/tap.h"
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
constexpr absl::Duration kIdle = absl::Milliseconds(500);  // no frame for this long: the rest were dropped

struct Rate {
  uint64_t frames;
  absl::Duration took;
  double per_second() const { return frames / absl::ToDoubleSeconds(took); }
  double gbits(size_t size) const { return per_second() * size * 8 / 1e9; }
};

// Frames of `size` read from `fd` until `expected` came or none came for kIdle; returns the count
// and when the last one arrived. Frames of another size (the stack's own) are not counted.
std::pair<uint64_t, absl::Time> Drain(int fd, uint64_t expected, size_t size) {
  std::vector<uint8_t> buffer(70000);
  uint64_t got = 0;
  absl::Time last = absl::Now();
  while (got < expected) {
    pollfd ready{fd, POLLIN, 0};
    if (poll(&ready, 1, static_cast<int>(absl::ToInt64Milliseconds(kIdle))) <= 0) break;
    while (got < expected) {
      const ssize_t n = read(fd, buffer.data(), buffer.size());
      if (n < 0) break;
      if (static_cast<size_t>(n) == size) ++got;
    }
    last = absl::Now();
  }
  return {got, last};
}

// Writes `frames` frames to `fd`, retrying while it is full.
void Feed(int fd, uint64_t frames, size_t size) {
  std::vector<uint8_t> frame(size, 0x5a);
  for (uint64_t sent = 0; sent < frames;) {
    if (write(fd, frame.data(), size) == static_cast<ssize_t>(size)) {
      ++sent;
    } else {
      pollfd ready{fd, POLLOUT, 0};
      poll(&ready, 1, 10);
    }
  }
}

// The reference: `frames` written to `from` while another thread reads them from `to`.
Rate Transfer(int from, int to, uint64_t frames, size_t size) {
  std::pair<uint64_t, absl::Time> drained;
  const absl::Time start = absl::Now();
  std::thread reader([&] { drained = Drain(to, frames, size); });
  Feed(from, frames, size);
  reader.join();
  return {drained.first, drained.second - start};
}

// An AF_PACKET socket on interface `name` (every protocol), non-blocking, with a large buffer.
int PacketSocket(const std::string& name) {
  const int fd = socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, htons(ETH_P_ALL));
  if (fd < 0) return -1;
  sockaddr_ll address{};
  address.sll_family = AF_PACKET;
  address.sll_protocol = htons(ETH_P_ALL);
  address.sll_ifindex = static_cast<int>(if_nametoindex(name.c_str()));
  const int buffer = 64 << 20;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &buffer, sizeof(buffer));
  setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &buffer, sizeof(buffer));
  if (address.sll_ifindex == 0 || bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

// What a run goes through: the device the backend serves and the host's end of it, and the
// reference's two ends.
struct HostPath {
  std::string name;
  const net::FrameDevice* device = nullptr;
  int host_fd = -1;
  int reference_a = -1, reference_b = -1;  // frames written to a arrive at b, and back
  std::string reference_name;
};

struct Setup {
  explicit Setup(const net::FrameDevice& device)
      : memory(std::move(memory::GuestMemory::Create({{memory::GuestAddress(0), 4 << 20}})).value()),
        grants(memory, 4), guest_grants(memory, kTableGfn) {
    (void)grants.MapFrame(0, kTableGfn);
    front = std::make_unique<Netfront>(memory, guest_grants, kTxRingGfn, kRxRingGfn);
    for (uint32_t i = 0; i < kPages; ++i) pages.push_back(guest_grants.Grant(kDataGfn + i, false));
    ring = std::move(xenbus::NetRing::Start(memory, grants, device, {front->tx_ring_gref(), front->rx_ring_gref(), false},
                                            [](bool, bool) {})
                         .value());
  }
  memory::GuestMemory memory;
  xen::GrantTable grants;
  testing::GuestGrants guest_grants;
  std::unique_ptr<Netfront> front;
  std::vector<uint32_t> pages;
  std::unique_ptr<xenbus::NetRing> ring;
};

Rate XenNetTransmit(const HostPath& path, uint64_t frames, uint16_t size) {
  Setup s(*path.device);
  std::pair<uint64_t, absl::Time> drained;
  const absl::Time start = absl::Now();
  std::thread reader([&] { drained = Drain(path.host_fd, frames, size); });
  for (uint64_t sent = 0; sent < frames;) {
    const uint32_t batch = static_cast<uint32_t>(std::min<uint64_t>(kBatch, frames - sent));
    for (uint32_t i = 0; i < batch; ++i) {
      s.front->PutTx(Netfront::TxSlot(s.pages[(sent + i) % kPages], 0, 0, static_cast<uint16_t>(i), size));
    }
    s.front->PublishTx();
    s.ring->Kick();
    sent += s.front->TakeTx(batch).size();
  }
  reader.join();
  return {drained.first, drained.second - start};
}

Rate XenNetReceive(const HostPath& path, uint64_t frames, uint16_t size) {
  Setup s(*path.device);
  for (uint32_t i = 0; i < kPages; ++i) s.front->PostRx(static_cast<uint16_t>(i), s.pages[i]);
  s.front->PublishRx();
  s.ring->Kick();
  const absl::Time start = absl::Now();
  std::thread feeder([&] { Feed(path.host_fd, frames, size); });
  uint64_t received = 0;
  absl::Time last = start;
  while (received < frames) {
    // TakeRx waits for all it asks for: asked briefly, and over again until kIdle passed empty.
    std::vector<Netfront::RxResponse> responses = s.front->TakeRx(kPages, absl::Milliseconds(1));
    if (responses.empty()) {
      if (absl::Now() - last > kIdle) break;  // the rest were dropped on the way
      continue;
    }
    for (const Netfront::RxResponse& response : responses) {
      s.front->PostRx(response.id, s.pages[response.id]);
      if (response.status == size) ++received;
    }
    last = absl::Now();
    s.front->PublishRx();
    s.ring->Kick();
  }
  feeder.join();
  return {received, last - start};
}

void Print(const char* direction, const HostPath& path, uint16_t size, uint64_t frames, const Rate& reference,
           const Rate& xen_net) {
  std::printf("%4u-byte frames  %-8s %s %9.0f/s %6.2f Gbit/s | xen-net %9.0f/s %6.2f Gbit/s (ratio %.2f)", size,
              direction, path.reference_name.c_str(), reference.per_second(), reference.gbits(size),
              xen_net.per_second(), xen_net.gbits(size), xen_net.per_second() / reference.per_second());
  if (reference.frames < frames || xen_net.frames < frames) {
    std::printf("  [delivered: reference %llu, xen-net %llu of %llu]", static_cast<unsigned long long>(reference.frames),
                static_cast<unsigned long long>(xen_net.frames), static_cast<unsigned long long>(frames));
  }
  std::printf("\n");
}

// The tap host path: a namespace of this process's own, the tap, and a veth pair beside it.
bool EnterBenchNamespace(std::string* error) {
  if (unshare(CLONE_NEWNET) != 0) {
    *error = std::string("unshare(CLONE_NEWNET): ") + std::strerror(errno) + " (run as root)";
    return false;
  }
  std::ofstream("/proc/sys/net/ipv6/conf/default/disable_ipv6") << "1";  // no router solicitations
  for (const char* command : {"ip link set lo up", "ip link add xkbv0 type veth peer name xkbv1",
                              "ip link set xkbv0 up", "ip link set xkbv1 up"}) {
    if (std::system(command) != 0) {
      *error = std::string("`") + command + "` failed";
      return false;
    }
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  base::DisableLockOrderChecks();  // as in xenkvm-vmm
  uint64_t frames = 500000;
  std::string host = "pair";
  CLI::App app("xen-net's data path (in-process netfront, NetRing) against the host path it serves", "xen_net_benchmark");
  app.add_option("--frames", frames, "frames each way, each size (default 500000)")->check(CLI::Range(1000, 100000000));
  app.add_option("--host", host,
                 "pair: a SOCK_SEQPACKET pair; tap: a tap in a network namespace of the benchmark's own (root) "
                 "(default pair)")
      ->check(CLI::IsMember({"pair", "tap"}));
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& error) {
    const int status = app.exit(error);  // prints --help, or what was wrong with the flags
    return status == 0 ? 0 : 2;
  }
  setvbuf(stdout, nullptr, _IOLBF, 0);
  HostPath path;
  testing::SocketPairDevice pair;
  std::unique_ptr<net::Tap> tap;
  if (host == "pair") {
    path = {"pair", &pair, pair.host_fd(), pair.fd(), pair.host_fd(), "pair  "};
  } else {
    std::string error;
    if (!EnterBenchNamespace(&error)) {
      std::fprintf(stderr, "--host tap: %s\n", error.c_str());
      return 1;
    }
    absl::StatusOr<net::Tap> opened = net::Tap::Open("xkbt0");
    if (!opened.ok() || !opened->BringUp(0).ok()) {
      std::fprintf(stderr, "--host tap: %s\n", std::string(opened.status().message()).c_str());
      return 1;
    }
    tap = std::make_unique<net::Tap>(std::move(*opened));
    path = {"tap", tap.get(), PacketSocket("xkbt0"), PacketSocket("xkbv0"), PacketSocket("xkbv1"), "veth  "};
    if (path.host_fd < 0 || path.reference_a < 0 || path.reference_b < 0) {
      std::fprintf(stderr, "--host tap: AF_PACKET sockets: %s\n", std::strerror(errno));
      return 1;
    }
  }
  std::printf("%llu frames each way; xen-net's host path: %s; reference: %s\n", static_cast<unsigned long long>(frames),
              host == "pair" ? "the backend's end of a SOCK_SEQPACKET pair" : "a tap, AF_PACKET on the host's side",
              host == "pair" ? "the pair alone" : "a veth pair, AF_PACKET on both ends");
  for (uint16_t size : {64, 1500}) {
    const Rate tx_reference = Transfer(path.reference_a, path.reference_b, frames, size);
    const Rate tx = XenNetTransmit(path, frames, size);
    Print("transmit", path, size, frames, tx_reference, tx);
    const Rate rx_reference = Transfer(path.reference_b, path.reference_a, frames, size);
    const Rate rx = XenNetReceive(path, frames, size);
    Print("receive", path, size, frames, rx_reference, rx);
  }
  return 0;
}
