// xl's vif syntax, for every front end (xl.cfg's vif = [...], xenkvm-vmm --net, the API's
// networks, xenkvmctl network-attach): "mac=00:16:3e:01:02:03,bridge=br0,vifname=tap0,mtu=1500,
// rate=10Mb/s@50ms,type=vif", every key optional. `rate` limits what the guest sends, as xl's does;
// `rx-rate` (xenkvm's own) what it receives.
#ifndef XENKVM_COMPONENTS_XENBUS_VIF_SPEC_H_
#define XENKVM_COMPONENTS_XENBUS_VIF_SPEC_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "components/base/fd.h"
#include "components/net/mac_address.h"

namespace xenkvm::xenbus {

// Bytes a second, replenished every `interval` (so a burst of at most rate x interval).
struct RateLimit {
  uint64_t bytes_per_second = 0;
  absl::Duration interval = absl::Milliseconds(50);
  uint64_t burst_bytes() const;
};

// Queues a vif offers when its tap is multi-queue (Linux's netfront takes one a vCPU, up to it).
inline constexpr uint32_t kMaxVifQueues = 4;

struct XenNetConfig {
  uint32_t devid = 0;          // the vif's index in the guest (vif/<devid>; Linux's eth<devid> on its own)
  std::string tap;             // the host's tap: attached to, created when missing (empty: named by the kernel)
  std::string bridge;          // when set, the tap joins this Linux bridge
  net::MacAddress mac{};       // the guest's address
  uint32_t mtu = 0;            // the tap's MTU; 0 leaves it
  std::optional<RateLimit> tx_rate;  // what the guest sends (xl's rate)
  std::optional<RateLimit> rx_rate;  // what it receives
  // The tap opened (and brought up, bridged) by another process (xenkvmd) and handed over, a
  // descriptor a queue: used as it is instead of `tap`, `mtu` and `bridge`.
  std::vector<std::shared_ptr<base::Fd>> opened_tap;
};

// The MAC generated in Xen's OUI when absent, the tap named by the kernel when vifname is, no
// bridge, no limit. `devid` is the vif's index. Errors name the spec and the key.
absl::StatusOr<XenNetConfig> ParseVifSpec(const std::string& spec, uint32_t devid);

// xl's RATE/s[@INTERVAL]: RATE in bytes with B, KB, MB, GB (or bits with b, Kb, Mb, Gb; K, M, G
// are powers of 1000), INTERVAL with us, ms or s (default 50ms), e.g. "10Mb/s@20ms".
absl::StatusOr<RateLimit> ParseVifRate(const std::string& text);
// The same syntax back, in bytes and microseconds ("1250000B/s@20000us").
std::string FormatVifRate(const RateLimit& rate);

}  // namespace xenkvm::xenbus

#endif  // XENKVM_COMPONENTS_XENBUS_VIF_SPEC_H_
