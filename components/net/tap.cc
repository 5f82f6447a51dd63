#include "components/net/tap.h"

#include <fcntl.h>
#include <net/if.h>
// After <net/if.h>, which defines what <linux/if.h> would.
#include <linux/if_tun.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

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

absl::StatusOr<Tap> Tap::Open(const std::string& name) {
  if (name.size() >= IFNAMSIZ) {
    return absl::InvalidArgumentError(absl::StrCat("tap name '", name, "' is longer than ", IFNAMSIZ - 1, " bytes"));
  }
  base::Fd fd(::open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC));
  if (!fd.valid()) return Errno("open /dev/net/tun (the tun module, and root or CAP_NET_ADMIN, are needed)");
  ifreq ifr{};
  ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
  std::strncpy(ifr.ifr_name, name.c_str(), IFNAMSIZ - 1);
  if (::ioctl(fd.get(), TUNSETIFF, &ifr) != 0) {
    return Errno(absl::StrCat("attach to tap '", name,
                              "' (TUNSETIFF: is it a tap, not a tun, and owned by this user or group?)"));
  }
  return Tap(std::move(fd), std::string(ifr.ifr_name, strnlen(ifr.ifr_name, IFNAMSIZ)));
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
  return Tap(std::move(fd), std::string(ifr.ifr_name, strnlen(ifr.ifr_name, IFNAMSIZ)));
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

absl::StatusOr<size_t> Tap::Read(std::span<uint8_t> frame) const {
  const ssize_t got = ::read(fd_.get(), frame.data(), frame.size());
  if (got < 0) {
    if (errno == EAGAIN || errno == EINTR) return absl::UnavailableError("no frame waiting");
    return Errno(absl::StrCat("read from tap ", name_));
  }
  return static_cast<size_t>(got);
}

absl::Status Tap::Write(std::span<const uint8_t> frame) const {
  const ssize_t put = ::write(fd_.get(), frame.data(), frame.size());
  if (put < 0) return Errno(absl::StrCat("write to tap ", name_));
  return absl::OkStatus();
}

}  // namespace xenkvm::net
