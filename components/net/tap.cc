#include "components/net/tap.h"

#include <fcntl.h>
#include <net/if.h>
// After <net/if.h>, which defines what <linux/if.h> would.
#include <linux/if_tun.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "components/net/virtio_net_header.h"

namespace xenkvm::net {
namespace {

absl::Status Errno(const std::string& what) {
  return absl::Status(errno == EPERM || errno == EACCES ? absl::StatusCode::kPermissionDenied
                                                         : absl::StatusCode::kFailedPrecondition,
                      absl::StrCat(what, ": ", strerror(errno)));
}

// An interface request on a throwaway socket (SIOCGIFFLAGS and friends need one).
absl::Status InterfaceIoctl(unsigned long request, ifreq& ifr, const std::string& what) {
  base::Fd socket_fd(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!socket_fd.valid()) return Errno("socket(AF_INET)");
  if (::ioctl(socket_fd.get(), request, &ifr) != 0) return Errno(what);
  return absl::OkStatus();
}

}  // namespace

// One descriptor attached to the tap `name` (created when missing), multi-queue or not; on failure
// `error` is TUNSETIFF's errno (0 when opening /dev/net/tun failed).
absl::StatusOr<Tap> Tap::Attach(const std::string& name, bool multi_queue, int& error) {
  error = 0;
  base::Fd fd(::open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC));
  if (!fd.valid()) return Errno("open /dev/net/tun (the tun module, and root or CAP_NET_ADMIN, are needed)");
  ifreq ifr{};
  ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | (multi_queue ? IFF_MULTI_QUEUE : 0);
  std::strncpy(ifr.ifr_name, name.c_str(), IFNAMSIZ - 1);
  if (::ioctl(fd.get(), TUNSETIFF, &ifr) != 0) {
    error = errno;
    return Errno(absl::StrCat("attach to tap '", name,
                              "' (TUNSETIFF: is it a tap, not a tun, and owned by this user or group?)"));
  }
  // The header's size is the file's own setting: make it the one Read and Write use.
  int header_size = kVirtioNetHeaderSize;
  if (::ioctl(fd.get(), TUNSETVNETHDRSZ, &header_size) != 0) return Errno("set the tap's virtio_net_hdr size");
  return Tap(std::move(fd), std::string(ifr.ifr_name, strnlen(ifr.ifr_name, IFNAMSIZ)), /*vnet_header=*/true,
             multi_queue);
}

absl::StatusOr<std::vector<Tap>> Tap::OpenQueues(const std::string& name, uint32_t queues) {
  if (name.size() >= IFNAMSIZ) {
    return absl::InvalidArgumentError(absl::StrCat("tap name '", name, "' is longer than ", IFNAMSIZ - 1, " bytes"));
  }
  if (queues == 0) return absl::InvalidArgumentError("a tap needs at least one queue");
  // A tap that exists was made multi-queue or not and is attached only that way (EINVAL
  // otherwise): the other way is tried before giving up.
  bool multi_queue = queues > 1;
  int error = 0;
  absl::StatusOr<Tap> first = Attach(name, multi_queue, error);
  if (!first.ok() && error == EINVAL) {
    multi_queue = !multi_queue;
    first = Attach(name, multi_queue, error);
  }
  if (!first.ok()) return first.status();
  std::vector<Tap> taps;
  taps.push_back(std::move(*first));
  for (uint32_t queue = 1; multi_queue && queue < queues; ++queue) {
    absl::StatusOr<Tap> more = Attach(taps.front().name(), true, error);
    if (!more.ok()) return absl::Status(more.status().code(), absl::StrCat("queue ", queue, ": ", more.status().message()));
    taps.push_back(std::move(*more));
  }
  return taps;
}

absl::StatusOr<Tap> Tap::Open(const std::string& name) {
  absl::StatusOr<std::vector<Tap>> queues = OpenQueues(name, 1);
  if (!queues.ok()) return queues.status();
  return std::move(queues->front());
}

absl::Status Tap::SetQueueAttached(bool attached) {
  if (!multi_queue_) return absl::FailedPreconditionError(absl::StrCat("tap ", name_, " has one queue"));
  ifreq ifr{};
  ifr.ifr_flags = attached ? IFF_ATTACH_QUEUE : IFF_DETACH_QUEUE;
  if (::ioctl(fd_.get(), TUNSETQUEUE, &ifr) != 0) {
    return Errno(absl::StrCat(attached ? "attach" : "detach", " a queue of tap ", name_));
  }
  return absl::OkStatus();
}

absl::StatusOr<Tap> Tap::Adopt(base::Fd fd) {
  ifreq ifr{};
  if (::ioctl(fd.get(), TUNGETIFF, &ifr) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("the file handed over is not an attached tap (TUNGETIFF: ",
                                                   strerror(errno), ")"));
  }
  if ((ifr.ifr_flags & IFF_TAP) == 0 || (ifr.ifr_flags & IFF_NO_PI) == 0) {
    return absl::InvalidArgumentError("the file handed over is a tun, or a tap with packet information");
  }
  const int flags = ::fcntl(fd.get(), F_GETFL);
  if (flags < 0 || ::fcntl(fd.get(), F_SETFL, flags | O_NONBLOCK) != 0) return Errno("make the tap non-blocking");
  const bool vnet_header = (ifr.ifr_flags & IFF_VNET_HDR) != 0;
  int header_size = kVirtioNetHeaderSize;
  if (vnet_header && ::ioctl(fd.get(), TUNSETVNETHDRSZ, &header_size) != 0) {
    return Errno("set the tap's virtio_net_hdr size");
  }
  return Tap(std::move(fd), std::string(ifr.ifr_name, strnlen(ifr.ifr_name, IFNAMSIZ)), vnet_header,
             (ifr.ifr_flags & IFF_MULTI_QUEUE) != 0);
}

absl::Status Tap::BringUp(uint32_t mtu) {
  ifreq ifr{};
  std::strncpy(ifr.ifr_name, name_.c_str(), IFNAMSIZ - 1);
  if (mtu != 0) {
    ifr.ifr_mtu = static_cast<int>(mtu);
    if (absl::Status set = InterfaceIoctl(SIOCSIFMTU, ifr, absl::StrCat("set the MTU of ", name_, " to ", mtu));
        !set.ok()) {
      return set;
    }
  }
  if (absl::Status got = InterfaceIoctl(SIOCGIFFLAGS, ifr, absl::StrCat("read the flags of ", name_)); !got.ok()) {
    return got;
  }
  ifr.ifr_flags |= IFF_UP;
  return InterfaceIoctl(SIOCSIFFLAGS, ifr, absl::StrCat("bring ", name_, " up"));
}

absl::Status Tap::AttachToBridge(const std::string& bridge) {
  if (bridge.empty() || bridge.size() >= IFNAMSIZ) {
    return absl::InvalidArgumentError(absl::StrCat("bridge name '", bridge, "' is empty or too long"));
  }
  const unsigned index = ::if_nametoindex(name_.c_str());
  if (index == 0) return Errno(absl::StrCat("find tap ", name_));
  ifreq ifr{};
  std::strncpy(ifr.ifr_name, bridge.c_str(), IFNAMSIZ - 1);
  ifr.ifr_ifindex = static_cast<int>(index);
  return InterfaceIoctl(SIOCBRADDIF, ifr, absl::StrCat("add ", name_, " to bridge ", bridge, " (does it exist?)"));
}

absl::Status Tap::AcceptOffloads(bool partial_checksum, bool tcpv4, bool tcpv6) {
  if (!vnet_header_) return absl::FailedPreconditionError(absl::StrCat("tap ", name_, " was opened without IFF_VNET_HDR"));
  unsigned long offloads = 0;
  if (partial_checksum) {
    offloads = TUN_F_CSUM | (tcpv4 ? TUN_F_TSO4 : 0) | (tcpv6 ? TUN_F_TSO6 : 0);
  }
  if (::ioctl(fd_.get(), TUNSETOFFLOAD, offloads) != 0) return Errno(absl::StrCat("set the offloads of tap ", name_));
  return absl::OkStatus();
}

absl::StatusOr<size_t> Tap::Read(std::span<uint8_t> frame, FrameOffload& offload) const {
  std::array<uint8_t, kVirtioNetHeaderSize> header{};
  iovec parts[2] = {{header.data(), header.size()}, {frame.data(), frame.size()}};
  const ssize_t got = vnet_header_ ? ::readv(fd_.get(), parts, 2) : ::read(fd_.get(), frame.data(), frame.size());
  if (got < 0) {
    if (errno == EAGAIN || errno == EINTR) return absl::UnavailableError("no frame waiting");
    return Errno(absl::StrCat("read from tap ", name_));
  }
  if (!vnet_header_) {
    offload = FrameOffload{};
    return static_cast<size_t>(got);
  }
  if (static_cast<size_t>(got) < header.size()) {
    return absl::DataLossError(absl::StrCat("tap ", name_, " gave ", got, " bytes, less than its header"));
  }
  offload = DecodeVirtioNetHeader(header);
  return static_cast<size_t>(got) - header.size();
}

absl::Status Tap::Write(std::span<const uint8_t> frame, const FrameOffload& offload) const {
  if (!vnet_header_ && (offload.partial_checksum || offload.segmentation != FrameOffload::Segmentation::kNone)) {
    return absl::InvalidArgumentError(absl::StrCat("tap ", name_, " takes whole frames only (no IFF_VNET_HDR)"));
  }
  std::array<uint8_t, kVirtioNetHeaderSize> header = EncodeVirtioNetHeader(offload);
  iovec parts[2] = {{header.data(), header.size()}, {const_cast<uint8_t*>(frame.data()), frame.size()}};
  const ssize_t put = vnet_header_ ? ::writev(fd_.get(), parts, 2) : ::write(fd_.get(), frame.data(), frame.size());
  if (put < 0) return Errno(absl::StrCat("write to tap ", name_));
  return absl::OkStatus();
}

}  // namespace xenkvm::net
